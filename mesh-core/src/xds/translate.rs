//! xDS resources -> the mesh config model, the way gRPC's proxyless clients
//! read them: Listener (API listener with an HTTP connection manager) ->
//! RouteConfiguration -> Cluster -> ClusterLoadAssignment. Pure: the
//! ADS client feeds it the resources it holds and publishes what comes out.
//!
//! What the model cannot honour safely (redirects, direct responses, a route
//! to a cluster header) makes the resource an error, which the client
//! NACKs; fields it can ignore safely are reported as warnings.

use crate::config::{
    Backend, Backoff, CircuitBreaker, Config, Endpoint, LoadBalancer, OutlierDetection, PathMatch,
    RetryOn, RetryPolicy, Route, RouteMatch, Service, StringMatch, WeightedBackend,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action, route_match};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Type URLs of the resources the client subscribes to.
pub mod type_url {
    /// Listener.
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    /// RouteConfiguration.
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    /// Cluster.
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    /// ClusterLoadAssignment.
    pub const ENDPOINTS: &str =
        "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    /// HttpConnectionManager (inside an API listener).
    pub const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
}

/// The resources a client holds, by name.
#[derive(Debug, Default, Clone)]
pub struct Resources {
    /// Listeners.
    pub listeners: BTreeMap<String, Listener>,
    /// Route configurations.
    pub routes: BTreeMap<String, RouteConfiguration>,
    /// Clusters.
    pub clusters: BTreeMap<String, Cluster>,
    /// Endpoint assignments.
    pub endpoints: BTreeMap<String, ClusterLoadAssignment>,
}

/// What the held resources refer to: the names to subscribe to next.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// Route configurations named by listeners (RDS).
    pub routes: BTreeSet<String>,
    /// Clusters named by routes.
    pub clusters: BTreeSet<String>,
    /// Assignments named by EDS clusters.
    pub endpoints: BTreeSet<String>,
}

/// The HTTP connection manager of an API listener.
pub fn api_hcm(l: &Listener) -> Result<HttpConnectionManager, String> {
    let any = l
        .api_listener
        .as_ref()
        .and_then(|a| a.api_listener.as_ref())
        .ok_or_else(|| {
            format!(
                "listener `{}` has no API listener (only API listeners are supported)",
                l.name
            )
        })?;
    if any.type_url != type_url::HCM {
        return Err(format!(
            "listener `{}`: API listener of type {} is not supported",
            l.name, any.type_url
        ));
    }
    HttpConnectionManager::decode(any.value.as_slice()).map_err(|e| {
        format!(
            "listener `{}`: cannot decode its HttpConnectionManager: {e}",
            l.name
        )
    })
}

/// The route configuration of a listener: inline, or the RDS name.
enum RouteSource {
    Inline(Box<RouteConfiguration>),
    Rds(String),
}

fn route_source(l: &Listener) -> Result<RouteSource, String> {
    match api_hcm(l)?.route_specifier {
        Some(RouteSpecifier::Rds(r)) => Ok(RouteSource::Rds(r.route_config_name)),
        Some(RouteSpecifier::RouteConfig(rc)) => Ok(RouteSource::Inline(Box::new(rc))),
        _ => Err(format!(
            "listener `{}`: no route configuration (RDS or inline)",
            l.name
        )),
    }
}

/// The names the held resources refer to.
pub fn wanted(r: &Resources) -> Wanted {
    let mut w = Wanted::default();
    let mut configs: Vec<&RouteConfiguration> = Vec::new();
    let mut inline = Vec::new();
    for l in r.listeners.values() {
        match route_source(l) {
            Ok(RouteSource::Rds(name)) => {
                if let Some(rc) = r.routes.get(&name) {
                    configs.push(rc);
                }
                w.routes.insert(name);
            }
            Ok(RouteSource::Inline(rc)) => inline.push(*rc),
            Err(_) => {}
        }
    }
    for rc in configs.into_iter().chain(inline.iter()) {
        for vh in &rc.virtual_hosts {
            for route in &vh.routes {
                if let Some(route::Action::Route(a)) = &route.action {
                    match &a.cluster_specifier {
                        Some(route_action::ClusterSpecifier::Cluster(c)) => {
                            w.clusters.insert(c.clone());
                        }
                        Some(route_action::ClusterSpecifier::WeightedClusters(wc)) => {
                            for c in &wc.clusters {
                                w.clusters.insert(c.name.clone());
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    for name in &w.clusters {
        if let Some(c) = r.clusters.get(name)
            && is_eds(c)
        {
            w.endpoints.insert(eds_name(c));
        }
    }
    w
}

fn is_eds(c: &Cluster) -> bool {
    matches!(c.cluster_discovery_type, Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32)
}

fn eds_name(c: &Cluster) -> String {
    c.eds_cluster_config
        .as_ref()
        .map(|e| e.service_name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| c.name.clone())
}

fn dur(d: &Option<envoy_types::pb::google::protobuf::Duration>) -> Option<Duration> {
    d.as_ref()
        .map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
}

/// The config the held resources describe, for the listeners `services`;
/// `Ok(None)` while something referenced has not arrived yet. Warnings list
/// what was ignored.
pub fn to_config(
    r: &Resources,
    services: &[String],
    warnings: &mut Vec<String>,
) -> Result<Option<Config>, String> {
    let mut cfg = Config::default();
    let mut clusters_used = BTreeSet::new();
    for name in services {
        let Some(l) = r.listeners.get(name) else {
            return Ok(None);
        };
        let rc = match route_source(l)? {
            RouteSource::Inline(rc) => *rc,
            RouteSource::Rds(n) => match r.routes.get(&n) {
                Some(rc) => rc.clone(),
                None => return Ok(None),
            },
        };
        let host = name.split(':').next().unwrap_or(name);
        let vh = rc
            .virtual_hosts
            .iter()
            .find(|vh| vh.domains.iter().any(|d| d == host || d == name))
            .or_else(|| {
                rc.virtual_hosts
                    .iter()
                    .find(|vh| vh.domains.iter().any(|d| d == "*"))
            })
            .ok_or_else(|| {
                format!(
                    "route configuration `{}` has no virtual host for `{name}`",
                    rc.name
                )
            })?;
        let mut routes = Vec::new();
        for (i, xr) in vh.routes.iter().enumerate() {
            routes.push(route_of(xr, i, &rc.name, &mut clusters_used, warnings)?);
        }
        cfg.services.push(Service {
            name: host.to_owned(),
            hosts: vec![host.to_owned()],
            routes,
        });
    }
    for name in &clusters_used {
        let Some(c) = r.clusters.get(name) else {
            return Ok(None);
        };
        let cla = if is_eds(c) {
            match r.endpoints.get(&eds_name(c)) {
                Some(cla) => cla.clone(),
                None => return Ok(None),
            }
        } else {
            c.load_assignment.clone().unwrap_or_default()
        };
        cfg.backends.push(backend_of(c, &cla, warnings)?);
    }
    Ok(Some(cfg))
}

fn route_of(
    xr: &envoy_types::pb::envoy::config::route::v3::Route,
    i: usize,
    rc_name: &str,
    clusters: &mut BTreeSet<String>,
    warnings: &mut Vec<String>,
) -> Result<Route, String> {
    let where_ = format!("route {i} of `{rc_name}`");
    let m = xr
        .r#match
        .as_ref()
        .ok_or_else(|| format!("{where_}: no match"))?;
    let path = match &m.path_specifier {
        Some(route_match::PathSpecifier::Prefix(p)) if p == "/" || p.is_empty() => None,
        Some(route_match::PathSpecifier::Prefix(p)) => Some(PathMatch::Prefix(p.clone())),
        Some(route_match::PathSpecifier::Path(p)) => Some(PathMatch::Exact(p.clone())),
        Some(route_match::PathSpecifier::SafeRegex(r)) => Some(PathMatch::Regex(r.regex.clone())),
        Some(_) => {
            return Err(format!(
                "{where_}: this kind of path match is not supported"
            ));
        }
        None => None,
    };
    let mut headers = BTreeMap::new();
    let mut methods = Vec::new();
    for h in &m.headers {
        use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier as H;
        // The deprecated forms are still what many control planes send.
        #[allow(deprecated)]
        let sm = match &h.header_match_specifier {
            Some(H::ExactMatch(v)) => StringMatch::Exact(v.clone()),
            Some(H::PrefixMatch(v)) => StringMatch::Prefix(v.clone()),
            Some(H::SafeRegexMatch(r)) => StringMatch::Regex(r.regex.clone()),
            Some(H::PresentMatch(p)) => StringMatch::Present(*p != h.invert_match),
            Some(H::StringMatch(s)) => string_match(s)
                .ok_or_else(|| format!("{where_}: header `{}` match not supported", h.name))?,
            _ => return Err(format!("{where_}: header `{}` match not supported", h.name)),
        };
        if h.invert_match && !matches!(h.header_match_specifier, Some(H::PresentMatch(_))) {
            return Err(format!(
                "{where_}: inverted header matches are not supported"
            ));
        }
        if h.name == ":method"
            && let StringMatch::Exact(m) = &sm
        {
            methods.push(m.clone());
            continue;
        }
        headers.insert(h.name.clone(), sm);
    }
    let mut query = BTreeMap::new();
    for q in &m.query_parameters {
        use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
        let sm = match &q.query_parameter_match_specifier {
            Some(Q::StringMatch(s)) => {
                string_match(s).ok_or_else(|| format!("{where_}: query match not supported"))?
            }
            Some(Q::PresentMatch(p)) => StringMatch::Present(*p),
            None => StringMatch::Present(true),
        };
        query.insert(q.name.clone(), sm);
    }
    let action = match &xr.action {
        Some(route::Action::Route(a)) => a,
        _ => {
            return Err(format!(
                "{where_}: only route actions are supported (not redirects or direct responses)"
            ));
        }
    };
    let to = match &action.cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) => {
            clusters.insert(c.clone());
            vec![WeightedBackend {
                backend: c.clone(),
                weight: 1,
            }]
        }
        Some(route_action::ClusterSpecifier::WeightedClusters(wc)) => wc
            .clusters
            .iter()
            .map(|c| {
                clusters.insert(c.name.clone());
                WeightedBackend {
                    backend: c.name.clone(),
                    weight: c.weight.as_ref().map_or(0, |w| w.value),
                }
            })
            .collect(),
        _ => {
            return Err(format!(
                "{where_}: route to a cluster header or plugin is not supported"
            ));
        }
    };
    let timeout = dur(&action.timeout)
        .or_else(|| {
            action
                .max_stream_duration
                .as_ref()
                .and_then(|m| dur(&m.max_stream_duration))
        })
        .filter(|d| !d.is_zero());
    let retry = match &action.retry_policy {
        None => None,
        Some(p) => {
            let mut on = Vec::new();
            for cond in p
                .retry_on
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
            {
                match RetryOn::ALL.iter().find(|(n, _)| *n == cond) {
                    Some((_, v)) => on.push(*v),
                    None => warnings.push(format!(
                        "{where_}: retry_on `{cond}` is not supported, ignored"
                    )),
                }
            }
            let d = Backoff::default();
            let back = p.retry_back_off.as_ref();
            let base = back.and_then(|b| dur(&b.base_interval)).unwrap_or(d.base);
            Some(RetryPolicy {
                attempts: p.num_retries.as_ref().map_or(1, |n| n.value) + 1,
                per_try_timeout: dur(&p.per_try_timeout),
                on,
                retriable_status_codes: p
                    .retriable_status_codes
                    .iter()
                    .map(|c| *c as u16)
                    .collect(),
                backoff: Backoff {
                    base,
                    max: back.and_then(|b| dur(&b.max_interval)).unwrap_or(base * 10),
                },
                ..RetryPolicy::default()
            })
        }
    };
    let mirror = action.request_mirror_policies.first().map(|m| {
        clusters.insert(m.cluster.clone());
        let percent = m
            .runtime_fraction
            .as_ref()
            .and_then(|f| f.default_value.as_ref())
            .map_or(100.0, |f| {
                let d = match f.denominator {
                    1 => 10_000.0,
                    2 => 1_000_000.0,
                    _ => 100.0,
                };
                f64::from(f.numerator) * 100.0 / d
            });
        crate::config::Mirror {
            backend: m.cluster.clone(),
            percent,
        }
    });
    if !xr.typed_per_filter_config.is_empty() {
        warnings.push(format!("{where_}: per-filter config is ignored"));
    }
    Ok(Route {
        name: Some(if xr.name.is_empty() {
            format!("route-{i}")
        } else {
            xr.name.clone()
        }),
        matches: if path.is_none() && headers.is_empty() && query.is_empty() && methods.is_empty() {
            Vec::new()
        } else {
            vec![RouteMatch {
                path,
                methods,
                headers,
                query,
            }]
        },
        to,
        timeout,
        retry,
        fault: None,
        mirror,
    })
}

fn string_match(
    s: &envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher,
) -> Option<StringMatch> {
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern as P;
    if s.ignore_case {
        return None;
    }
    Some(match s.match_pattern.as_ref()? {
        P::Exact(v) => StringMatch::Exact(v.clone()),
        P::Prefix(v) => StringMatch::Prefix(v.clone()),
        P::SafeRegex(r) => StringMatch::Regex(r.regex.clone()),
        _ => return None,
    })
}

fn backend_of(
    c: &Cluster,
    cla: &ClusterLoadAssignment,
    warnings: &mut Vec<String>,
) -> Result<Backend, String> {
    let load_balancer = match LbPolicy::try_from(c.lb_policy) {
        Ok(LbPolicy::RoundRobin) => LoadBalancer::RoundRobin,
        Ok(LbPolicy::LeastRequest) => LoadBalancer::P2cEwma,
        Ok(LbPolicy::Random) => LoadBalancer::Random,
        Ok(LbPolicy::RingHash) => LoadBalancer::RingHash {
            header: "x-mesh-hash-key".into(),
        },
        Ok(LbPolicy::Maglev) => LoadBalancer::Maglev {
            header: "x-mesh-hash-key".into(),
        },
        _ => {
            return Err(format!(
                "cluster `{}`: lb_policy {} is not supported",
                c.name, c.lb_policy
            ));
        }
    };
    let circuit_breaker = c
        .circuit_breakers
        .as_ref()
        .and_then(|cb| cb.thresholds.first())
        .map(|t| {
            let d = CircuitBreaker::default();
            CircuitBreaker {
                max_requests: t.max_requests.as_ref().map_or(d.max_requests, |v| v.value),
                max_pending: t
                    .max_pending_requests
                    .as_ref()
                    .map_or(d.max_pending, |v| v.value),
                max_retries: t.max_retries.as_ref().map_or(d.max_retries, |v| v.value),
            }
        });
    let outlier_detection = c.outlier_detection.as_ref().map(|o| {
        let d = OutlierDetection::default();
        OutlierDetection {
            consecutive_5xx: o
                .consecutive_5xx
                .as_ref()
                .map_or(d.consecutive_5xx, |v| v.value),
            consecutive_gateway_errors: o
                .consecutive_gateway_failure
                .as_ref()
                .map_or(0, |v| v.value),
            consecutive_connect_failures: o
                .consecutive_local_origin_failure
                .as_ref()
                .map_or(0, |v| v.value),
            base_ejection: dur(&o.base_ejection_time).unwrap_or(d.base_ejection),
            max_ejection: dur(&o.max_ejection_time).unwrap_or(d.max_ejection),
            max_ejection_percent: o
                .max_ejection_percent
                .as_ref()
                .map_or(d.max_ejection_percent, |v| v.value),
        }
    });
    if c.transport_socket.is_some() {
        warnings.push(format!(
            "cluster `{}`: transport_socket (upstream TLS) is not mapped yet; plaintext is used",
            c.name
        ));
    }
    let mut endpoints = Vec::new();
    for locality in &cla.endpoints {
        for lb in &locality.lb_endpoints {
            // HEALTHY (1) and UNKNOWN (0) serve; UNHEALTHY, DRAINING, TIMEOUT, DEGRADED do not.
            if !matches!(lb.health_status, 0 | 1) {
                continue;
            }
            use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
            let Some(HostIdentifier::Endpoint(ep)) = &lb.host_identifier else {
                continue;
            };
            use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
            let Some(address::Address::SocketAddress(sa)) =
                ep.address.as_ref().and_then(|a| a.address.as_ref())
            else {
                continue;
            };
            let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
                continue;
            };
            let host = if sa.address.contains(':') {
                format!("[{}]", sa.address)
            } else {
                sa.address.clone()
            };
            endpoints.push(Endpoint {
                address: format!("{host}:{port}"),
                weight: lb
                    .load_balancing_weight
                    .as_ref()
                    .map_or(1, |w| w.value.max(1)),
            });
        }
    }
    let protocol = if c
        .typed_extension_protocol_options
        .keys()
        .any(|k| k.contains("HttpProtocolOptions"))
    {
        crate::config::Protocol::Http2
    } else {
        crate::config::Protocol::Http1
    };
    Ok(Backend {
        name: c.name.clone(),
        endpoints,
        protocol,
        load_balancer,
        circuit_breaker,
        outlier_detection,
        tls: None,
    })
}
