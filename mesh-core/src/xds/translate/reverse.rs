//! The model -> xDS resources, for the development control plane.

use crate::config::{
    Name,
    Backend, Config, Fault, InboundPolicy, LoadBalancer, LocalityLb, PathMatch, RetryPolicy,
    Route, RouteMatch, Service, StringMatch,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action, route_match};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use prost::Message;
use std::time::Duration;

use super::cluster::tls_socket;
use super::{Held, Resources};

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, OutlierDetection as XOutlier, cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, Metadata, SocketAddress, address,
    config_source, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    Endpoint as XEndpoint, LbEndpoint, LocalityLbEndpoints, cluster_load_assignment, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::ApiListener;
use envoy_types::pb::envoy::config::route::v3::{
    RetryPolicy as XRetry, Route as XRoute, RouteAction, VirtualHost, WeightedCluster,
    retry_policy::RetryBackOff, route_action::RequestMirrorPolicy, weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, Rds, http_filter,
};
use envoy_types::pb::google::protobuf::{Any, Duration as PDuration, UInt32Value};

/// The other direction: the xDS resources that describe `cfg`, for the
/// development control plane. Per service host a listener (API listener
/// with RDS), per service a route configuration, per backend an EDS cluster
/// and its assignment, per inbound policy a socket listener.
pub fn from_config(cfg: &Config) -> Resources {
    let mut r = Resources::default();
    let parts = (cfg.services.iter().map(|s| Part::Service(s)))
        .chain(cfg.inbound.iter().map(Part::Inbound))
        .chain(cfg.backends.iter().map(|b| Part::Backend(b)));
    for part in parts {
        for (name, made) in made_of(part) {
            match made {
                Made::Listener(l) => {
                    r.listeners.insert(name, Held::new(&*l));
                }
                Made::Route(rc) => {
                    r.routes.insert(name, Held::new(&*rc));
                }
                Made::Cluster(c) => {
                    r.clusters.insert(name, Held::new(&*c));
                }
                Made::Endpoints(e) => {
                    r.endpoints.insert(name, Held::new(&*e));
                }
            }
        }
    }
    r
}

/// One part of a config (a service, a backend or an inbound policy) as the
/// resources [`from_config`] makes of it, each encoded, with its name.
pub fn part_resources(part: Part<'_>) -> Vec<(String, Any)> {
    let encoded = |made| match made {
        Made::Listener(l) => any(&*l),
        Made::Route(rc) => any(&*rc),
        Made::Cluster(c) => any(&*c),
        Made::Endpoints(e) => any(&*e),
    };
    let made = made_of(part).into_iter();
    made.map(|(name, m)| (name.to_string(), encoded(m)))
        .collect()
}

/// A part of a config that [`part_resources`] translates on its own.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Part<'a> {
    /// A service: its listeners and route configuration.
    Service(&'a Service),
    /// A backend: its cluster and endpoint assignment.
    Backend(&'a Backend),
    /// An inbound policy: its socket listener.
    Inbound(&'a InboundPolicy),
}

/// A resource made from a part of a config.
/// (Envoy's messages are large and of very different sizes: boxed.)
enum Made {
    Listener(Box<Listener>),
    Route(Box<RouteConfiguration>),
    Cluster(Box<Cluster>),
    Endpoints(Box<ClusterLoadAssignment>),
}

/// The resources `part` is served as, with their names: per service host a
/// listener (API listener with RDS) and per service a route configuration;
/// per backend an EDS cluster and its assignment; per inbound policy a
/// socket listener.
fn made_of(part: Part<'_>) -> Vec<(Name, Made)> {
    match part {
        Part::Service(s) => {
            let hcm = hcm_of(s);
            let hosts = s.host_names();
            let listeners = hosts
                .iter()
                .map(|h| (h.clone(), Made::Listener(Box::new(api_listener(h, &hcm)))));
            let routes = Made::Route(Box::new(route_config_of(
                s,
                hosts.iter().map(|h| h.to_string()).collect(),
            )));
            listeners.chain([(s.name.clone(), routes)]).collect()
        }
        Part::Backend(b) => vec![
            (b.name.clone(), Made::Cluster(Box::new(cluster_of(b)))),
            (b.name.clone(), Made::Endpoints(Box::new(assignment_of(b)))),
        ],
        Part::Inbound(p) => {
            let name = format!("{}{}", super::INBOUND_PREFIX, p.service);
            let l = super::inbound_listener(p, &name);
            vec![(name.into(), Made::Listener(Box::new(l)))]
        }
    }
}

fn any<M: Message + prost::Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn pdur(d: Duration) -> PDuration {
    PDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn u32v(v: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value: v })
}

/// Resources named in other resources come over the same ADS stream.
fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

/// A service's HTTP connection manager: RDS for its route configuration,
/// the fault filter when a route injects faults, the router.
fn hcm_of(s: &Service) -> HttpConnectionManager {
    let router = envoy_types::pb::envoy::extensions::filters::http::router::v3::Router::default();
    let mut http_filters = Vec::new();
    if s.routes.iter().any(|r| r.fault.is_some()) {
        // Present, with no fault of its own: routes say what they inject.
        http_filters.push(HttpFilter {
            name: FAULT_FILTER.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(
                &HttpFault::default(),
            ))),
            ..Default::default()
        });
    }
    if s.routes.iter().any(|r| r.rate_limit.is_some()) {
        // Present with no bucket of its own (no limit but the routes'),
        // optional: a client without it may go on.
        http_filters.push(HttpFilter {
            name: RATELIMIT_FILTER.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(
                &envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit {
                    stat_prefix: "mesh".into(),
                    ..Default::default()
                },
            ))),
            is_optional: true,
            ..Default::default()
        });
    }
    http_filters.push(HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(&router))),
        ..Default::default()
    });
    HttpConnectionManager {
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            route_config_name: s.name.to_string(),
            config_source: Some(ads()),
        })),
        http_filters,
        ..Default::default()
    }
}

fn api_listener(host: &str, hcm: &HttpConnectionManager) -> Listener {
    Listener {
        name: host.to_owned(),
        api_listener: Some(ApiListener {
            api_listener: Some(any(hcm)),
        }),
        ..Default::default()
    }
}

/// A service's routes as one virtual host over its `hosts`.
fn route_config_of(s: &Service, hosts: Vec<String>) -> RouteConfiguration {
    let routes = s.routes.iter().flat_map(xroutes_of).collect();
    RouteConfiguration {
        name: s.name.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: s.name.to_string(),
            domains: hosts,
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// One route of the model: an xDS route per match alternative, all with
/// the same action.
fn xroutes_of(route: &Route) -> Vec<XRoute> {
    let cluster_specifier = match route.to.as_slice() {
        [one] if one.weight == 1 => {
            route_action::ClusterSpecifier::Cluster(one.backend.to_string())
        }
        many => route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: many
                .iter()
                .map(|wb| ClusterWeight {
                    name: wb.backend.to_string(),
                    weight: u32v(wb.weight),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    let mut action = RouteAction {
        cluster_specifier: Some(cluster_specifier),
        timeout: route.timeout.map(pdur),
        retry_policy: route.retry.as_deref().map(retry_of),
        request_mirror_policies: route.mirror.iter().map(|m| mirror_of(m)).collect(),
        ..Default::default()
    };
    let metadata = route
        .hedge
        .as_ref()
        .and_then(|h| hedge_into(h, &mut action));
    let alternatives: Vec<Option<&RouteMatch>> = if route.matches.is_empty() {
        vec![None]
    } else {
        route.matches.iter().map(Some).collect()
    };
    let mut typed_per_filter_config = std::collections::HashMap::new();
    if let Some(f) = &route.fault {
        typed_per_filter_config.insert(FAULT_FILTER.to_owned(), any(&http_fault(f)));
    }
    if let Some(l) = &route.rate_limit {
        typed_per_filter_config.insert(RATELIMIT_FILTER.to_owned(), local_rate_limit(l));
    }
    alternatives
        .into_iter()
        .map(|m| XRoute {
            name: route.name.as_deref().unwrap_or_default().to_owned(),
            r#match: Some(match_of(m)),
            action: Some(route::Action::Route(action.clone())),
            typed_per_filter_config: typed_per_filter_config.clone(),
            metadata: metadata.clone(),
            ..Default::default()
        })
        .collect()
}

/// A hedging policy as Envoy has it, where it can (a fixed delay: the
/// per-try timeout of a retry policy with no conditions, hedged on), and
/// whole in the route's metadata for this client (`proxyless.hedge`).
fn hedge_into(h: &crate::config::HedgePolicy, action: &mut RouteAction) -> Option<Metadata> {
    use envoy_types::pb::envoy::config::route::v3::HedgePolicy as XHedge;
    if let crate::config::HedgeDelay::Fixed(d) = h.delay {
        action.retry_policy = Some(XRetry {
            num_retries: u32v(h.attempts.saturating_sub(1)),
            per_try_timeout: Some(pdur(d)),
            ..Default::default()
        });
        action.hedge_policy = Some(XHedge {
            hedge_on_per_try_timeout: true,
            ..Default::default()
        });
    }
    super::json_metadata(super::routes::HEDGE_METADATA, h)
}

/// The name of Envoy's local rate limit filter.
pub(super) const RATELIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";

/// A rate limit as Envoy's `LocalRateLimit`: its token bucket, enabled
/// and enforced for every request. (A key, `per`, has no counterpart: a
/// descriptor names fixed values, not one bucket per value.)
pub(super) fn local_rate_limit(l: &crate::config::RateLimit) -> Any {
    use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
    use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
    use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, TokenBucket};
    let all = || {
        Some(RuntimeFractionalPercent {
            default_value: Some(FractionalPercent {
                numerator: 100,
                denominator: 0,
            }),
            runtime_key: String::new(),
        })
    };
    any(&LocalRateLimit {
        stat_prefix: "mesh".into(),
        token_bucket: Some(TokenBucket {
            max_tokens: l.max_tokens,
            tokens_per_fill: u32v(l.tokens_per_fill),
            fill_interval: Some(pdur(l.fill_interval)),
        }),
        filter_enabled: all(),
        filter_enforced: all(),
        ..Default::default()
    })
}

fn retry_of(p: &RetryPolicy) -> XRetry {
    XRetry {
        retry_on: p
            .on
            .iter()
            .map(|o| o.to_string())
            .collect::<Vec<_>>()
            .join(","),
        num_retries: u32v(p.attempts.saturating_sub(1)),
        per_try_timeout: p.per_try_timeout.map(pdur),
        retry_back_off: Some(RetryBackOff {
            base_interval: Some(pdur(p.backoff.base)),
            max_interval: Some(pdur(p.backoff.max)),
        }),
        retriable_status_codes: p
            .retriable_status_codes
            .iter()
            .map(|c| u32::from(*c))
            .collect(),
        ..Default::default()
    }
}

fn mirror_of(m: &crate::config::Mirror) -> RequestMirrorPolicy {
    RequestMirrorPolicy {
        cluster: m.backend.to_string(),
        runtime_fraction: Some(
            envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent {
                default_value: Some(envoy_types::pb::envoy::r#type::v3::FractionalPercent {
                    // Parts per ten thousand (TEN_THOUSAND); a percent is at most 100.
                    numerator: (m.percent.clamp(0.0, 100.0) * 100.0).round() as u32,
                    denominator: 1,
                }),
                ..Default::default()
            },
        ),
        ..Default::default()
    }
}

/// A backend's EDS cluster: balancer, limits, outlier detection, HTTP/2,
/// upstream mTLS.
fn cluster_of(b: &Backend) -> Cluster {
    let locality_lb = b.locality_lb.clone().unwrap_or_default();
    let lb_policy = match b.load_balancer {
        LoadBalancer::RoundRobin => LbPolicy::RoundRobin,
        LoadBalancer::Random => LbPolicy::Random,
        LoadBalancer::RingHash { .. } => LbPolicy::RingHash,
        LoadBalancer::Maglev { .. } => LbPolicy::Maglev,
        _ => LbPolicy::LeastRequest,
    };
    let mut c = Cluster {
        name: b.name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        lb_policy: lb_policy as i32,
        circuit_breakers: b.circuit_breaker.as_ref().map(|cb| CircuitBreakers {
            thresholds: vec![Thresholds {
                max_requests: u32v(cb.max_requests),
                max_pending_requests: u32v(cb.max_pending),
                max_retries: u32v(cb.max_retries),
                ..Default::default()
            }],
            ..Default::default()
        }),
        outlier_detection: b.outlier_detection.as_ref().map(|o| XOutlier {
            consecutive_5xx: u32v(o.consecutive_5xx),
            consecutive_gateway_failure: u32v(o.consecutive_gateway_errors),
            consecutive_local_origin_failure: u32v(o.consecutive_connect_failures),
            base_ejection_time: Some(pdur(o.base_ejection)),
            max_ejection_time: Some(pdur(o.max_ejection)),
            max_ejection_percent: u32v(o.max_ejection_percent),
            ..Default::default()
        }),
        typed_extension_protocol_options: protocol_options_of(b),
        transport_socket: b
            .tls
            .as_ref()
            .filter(|t| t.mode == crate::config::BackendTlsMode::Mutual)
            .map(|t| tls_socket(t)),
        common_lb_config: locality_specifier(&locality_lb).map(|specifier| {
            cluster::CommonLbConfig {
                locality_config_specifier: Some(specifier),
                ..Default::default()
            }
        }),
        metadata: locality_metadata(&locality_lb),
        ..Default::default()
    };
    if let Some(dns) = &b.dns {
        dns_cluster(&mut c, b, dns);
    }
    c
}

/// A DNS backend as a `STRICT_DNS` or `LOGICAL_DNS` cluster with its
/// names inline: TTLs respected, `dns_refresh_rate` the longest wait,
/// `dns_failure_refresh_rate` from the shortest to the longest (the
/// backoff after failures), the name servers as c-ares resolvers. The
/// classic form, as Istio sends it (its fields are deprecated in Envoy's
/// protos for the DNS cluster extension, which the client also reads).
#[allow(deprecated)]
fn dns_cluster(c: &mut Cluster, b: &Backend, dns: &crate::config::Dns) {
    use envoy_types::pb::envoy::extensions::network::dns_resolver::cares::v3::CaresDnsResolverConfig;
    let kind = match dns.mode {
        crate::config::DnsMode::Logical => DiscoveryType::LogicalDns,
        _ => DiscoveryType::StrictDns,
    };
    c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(kind as i32));
    c.eds_cluster_config = None;
    c.load_assignment = Some(assignment_of(b));
    c.respect_dns_ttl = true;
    c.dns_refresh_rate = Some(pdur(dns.max_refresh));
    c.dns_failure_refresh_rate = Some(cluster::RefreshRate {
        base_interval: Some(pdur(dns.min_refresh)),
        max_interval: Some(pdur(dns.max_refresh)),
    });
    let resolvers: Vec<envoy_types::pb::envoy::config::core::v3::Address> = dns
        .servers
        .iter()
        .filter_map(|s| s.parse::<std::net::SocketAddr>().ok())
        .map(|a| envoy_types::pb::envoy::config::core::v3::Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: a.ip().to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                    a.port(),
                ))),
                ..Default::default()
            })),
        })
        .collect();
    if !resolvers.is_empty() {
        let cares = CaresDnsResolverConfig {
            resolvers,
            ..Default::default()
        };
        c.typed_dns_resolver_config = Some(
            envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig {
                name: "envoy.network.dns_resolver.cares".into(),
                typed_config: Some(any(&cares)),
            },
        );
    }
}

/// Locality-weighted balancing when the backend gives locality weights,
/// zone-aware (the caller's zone first) when it prefers the caller's
/// locality; Envoy's cluster holds one or the other.
fn locality_specifier(
    lb: &LocalityLb,
) -> Option<cluster::common_lb_config::LocalityConfigSpecifier> {
    use cluster::common_lb_config::{
        LocalityConfigSpecifier, LocalityWeightedLbConfig, ZoneAwareLbConfig,
    };
    if !lb.weights.is_empty() {
        Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(
            LocalityWeightedLbConfig::default(),
        ))
    } else if lb.prefer_local {
        Some(LocalityConfigSpecifier::ZoneAwareLbConfig(
            ZoneAwareLbConfig::default(),
        ))
    } else {
        None
    }
}

/// What the cluster has no field for (see `cluster::LOCALITY_METADATA`).
fn locality_metadata(lb: &LocalityLb) -> Option<Metadata> {
    // Zone-aware and locality-weighted exclude each other in Envoy's
    // cluster: preferring the caller's zone with weights needs the metadata.
    let native = lb.failover.is_empty()
        && lb.distribute.is_empty()
        && (!lb.prefer_local || lb.weights.is_empty());
    if native {
        return None;
    }
    let rules = LocalityLb {
        weights: Default::default(),
        ..lb.clone()
    };
    super::json_metadata(super::cluster::LOCALITY_METADATA, &rules)
}

/// HTTP/2 to the endpoints, for `http2` and `grpc` backends.
fn protocol_options_of(b: &Backend) -> std::collections::HashMap<String, Any> {
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
        HttpProtocolOptions, http_protocol_options,
    };
    use http_protocol_options::explicit_http_config::ProtocolConfig;
    let mut options = std::collections::HashMap::new();
    if b.protocol.is_http2() {
        let opts = HttpProtocolOptions {
            upstream_protocol_options: Some(
                http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                    http_protocol_options::ExplicitHttpConfig {
                        protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                            Default::default(),
                        )),
                    },
                ),
            ),
            ..Default::default()
        };
        options.insert(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
            any(&opts),
        );
    }
    options
}

/// A backend's endpoints, grouped by locality and priority. An endpoint
/// with no locality goes in an empty one (gRPC's client needs one on
/// every group, and a weight). Priorities are numbered from 0 without
/// gaps, as Envoy and gRPC require; their order is the config's.
fn assignment_of(b: &Backend) -> ClusterLoadAssignment {
    let lb = b.locality_lb.clone().unwrap_or_default();
    let mut priorities: Vec<u32> = b.endpoints.iter().map(|e| e.priority).collect();
    priorities.sort_unstable();
    priorities.dedup();
    let mut groups: Vec<LocalityLbEndpoints> = Vec::new();
    let mut keys: Vec<(Option<&crate::config::Locality>, u32)> = Vec::new();
    for e in &b.endpoints {
        let Some(lb_endpoint) = lb_endpoint_of(e) else {
            continue;
        };
        let priority = priorities.binary_search(&e.priority).unwrap_or(0) as u32;
        let key = (e.locality.as_deref(), priority);
        let g = match keys.iter().position(|k| *k == key) {
            Some(g) => g,
            None => {
                let locality = e.locality.as_deref().cloned().unwrap_or_default();
                let weight = lb.weights.get(&locality.to_string()).copied().unwrap_or(1);
                keys.push(key);
                groups.push(LocalityLbEndpoints {
                    locality: Some(envoy_types::pb::envoy::config::core::v3::Locality {
                        region: locality.region,
                        zone: locality.zone,
                        sub_zone: locality.subzone,
                    }),
                    load_balancing_weight: u32v(weight),
                    priority,
                    ..Default::default()
                });
                groups.len() - 1
            }
        };
        groups[g].lb_endpoints.push(lb_endpoint);
    }
    let factor = (lb.overprovisioning * 100.0).round() as u32;
    ClusterLoadAssignment {
        cluster_name: b.name.to_string(),
        endpoints: groups,
        policy: (factor != 140).then(|| cluster_load_assignment::Policy {
            overprovisioning_factor: u32v(factor),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn lb_endpoint_of(e: &crate::config::Endpoint) -> Option<LbEndpoint> {
    let (host, port) = e.address.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some(LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(XEndpoint {
            address: Some(envoy_types::pb::envoy::config::core::v3::Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: host.to_owned(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(
                        port.parse().ok()?,
                    )),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        load_balancing_weight: u32v(e.weight),
        // UNHEALTHY: never picked, counted in its locality's capacity.
        health_status: if e.healthy { 0 } else { 2 },
        ..Default::default()
    })
}

/// A socket listener on `addr` for Envoy (which cannot take API
/// listeners over LDS), named `name`: one HTTP connection manager whose
/// route configuration `name` holds the virtual hosts of every service in
/// `r`, so Envoy routes what arrives on `addr` by Host the way the mesh's
/// clients route by authority.
pub fn envoy_listener(
    r: &Resources,
    name: &str,
    addr: std::net::SocketAddr,
) -> (Listener, RouteConfiguration) {
    use envoy_types::pb::envoy::config::core::v3::Address;
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, filter};
    let hcm = envoy_hcm(name);
    let listener = Listener {
        name: name.to_owned(),
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: addr.ip().to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                    addr.port(),
                ))),
                ..Default::default()
            })),
        }),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let routes = RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: r
            .routes
            .values()
            .flat_map(|rc| rc.get().virtual_hosts)
            .collect(),
        ..Default::default()
    };
    (listener, routes)
}

/// The connection manager of Envoy's listener: RDS for route
/// configuration `name`, ports stripped from Host, the fault filter (with
/// no fault of its own: the routes' configs say what to inject), the router.
fn envoy_hcm(name: &str) -> HttpConnectionManager {
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::StripPortMode;
    let router = envoy_types::pb::envoy::extensions::filters::http::router::v3::Router::default();
    let typed = |name: &str, config: Any| HttpFilter {
        name: name.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    };
    HttpConnectionManager {
        stat_prefix: "mesh".into(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            route_config_name: name.to_owned(),
            config_source: Some(ads()),
        })),
        // `reviews:10000` is routed as `reviews`, as the mesh's clients do.
        strip_port_mode: Some(StripPortMode::StripAnyHostPort(true)),
        http_filters: vec![
            typed(FAULT_FILTER, any(&HttpFault::default())),
            typed("envoy.filters.http.router", any(&router)),
        ],
        ..Default::default()
    }
}

/// The name the fault filter goes by in connection managers and per-route
/// configs.
const FAULT_FILTER: &str = "envoy.filters.http.fault";

/// A fraction of a million from a percentage.
fn fraction(percent: f64) -> envoy_types::pb::envoy::r#type::v3::FractionalPercent {
    envoy_types::pb::envoy::r#type::v3::FractionalPercent {
        numerator: (percent * 10_000.0).round() as u32,
        denominator: 2, // MILLION
    }
}

/// Our fault as the fault filter's per-route config.
fn http_fault(
    f: &Fault,
) -> envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault {
    use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{
        FaultDelay as XDelay, fault_delay::FaultDelaySecifier,
    };
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
        FaultAbort as XAbort, HttpFault, fault_abort::ErrorType,
    };
    HttpFault {
        delay: f.delay.as_ref().map(|d| XDelay {
            percentage: Some(fraction(d.percent)),
            fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(
                envoy_types::pb::google::protobuf::Duration {
                    seconds: d.fixed.as_secs() as i64,
                    nanos: d.fixed.subsec_nanos() as i32,
                },
            )),
        }),
        abort: f.abort.as_ref().map(|a| XAbort {
            percentage: Some(fraction(a.percent)),
            error_type: Some(ErrorType::HttpStatus(u32::from(a.status))),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn match_of(m: Option<&RouteMatch>) -> envoy_types::pb::envoy::config::route::v3::RouteMatch {
    use envoy_types::pb::envoy::config::route::v3::{
        HeaderMatcher, QueryParameterMatcher, header_matcher, query_parameter_matcher,
    };
    use envoy_types::pb::envoy::r#type::matcher::v3::{
        RegexMatcher, StringMatcher, string_matcher,
    };
    let sm = |s: &StringMatch| -> Option<StringMatcher> {
        let p = match s {
            StringMatch::Exact(v) => string_matcher::MatchPattern::Exact(v.clone()),
            StringMatch::Prefix(v) => string_matcher::MatchPattern::Prefix(v.clone()),
            StringMatch::Regex(v) => string_matcher::MatchPattern::SafeRegex(RegexMatcher {
                regex: v.clone(),
                ..Default::default()
            }),
            StringMatch::Present(_) => return None,
        };
        Some(StringMatcher {
            match_pattern: Some(p),
            ignore_case: false,
        })
    };
    let mut out = envoy_types::pb::envoy::config::route::v3::RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
        ..Default::default()
    };
    let Some(m) = m else { return out };
    out.path_specifier = Some(match &m.path {
        None => route_match::PathSpecifier::Prefix("/".into()),
        Some(PathMatch::Prefix(p)) => route_match::PathSpecifier::Prefix(p.clone()),
        Some(PathMatch::Exact(p)) => route_match::PathSpecifier::Path(p.clone()),
        Some(PathMatch::Regex(r)) => route_match::PathSpecifier::SafeRegex(RegexMatcher {
            regex: r.clone(),
            ..Default::default()
        }),
    });
    for method in &m.methods {
        out.headers.push(HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                StringMatcher {
                    match_pattern: Some(string_matcher::MatchPattern::Exact(method.clone())),
                    ignore_case: false,
                },
            )),
            ..Default::default()
        });
    }
    for (name, s) in &m.headers {
        let spec = match s {
            StringMatch::Present(p) => header_matcher::HeaderMatchSpecifier::PresentMatch(*p),
            other => match sm(other) {
                Some(x) => header_matcher::HeaderMatchSpecifier::StringMatch(x),
                None => continue,
            },
        };
        out.headers.push(HeaderMatcher {
            name: name.clone(),
            header_match_specifier: Some(spec),
            ..Default::default()
        });
    }
    for (name, s) in &m.query {
        let spec = match s {
            StringMatch::Present(p) => {
                query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(*p)
            }
            other => match sm(other) {
                Some(x) => query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(x),
                None => continue,
            },
        };
        out.query_parameters.push(QueryParameterMatcher {
            name: name.clone(),
            query_parameter_match_specifier: Some(spec),
        });
    }
    out
}
