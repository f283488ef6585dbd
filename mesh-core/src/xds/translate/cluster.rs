//! Clusters and endpoint assignments -> the model's backends: load
//! balancing, circuit breakers, outlier detection, upstream mTLS.

use crate::config::{
    Backend, CircuitBreaker, Endpoint, LoadBalancer, Locality, LocalityLb, Name, OutlierDetection,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbPolicy,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use prost::Message;
use std::collections::BTreeSet;

use super::dur;
use crate::xds::error::{XdsError, at};

pub(super) fn is_eds(c: &Cluster) -> bool {
    matches!(c.cluster_discovery_type, Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32)
}

pub(super) fn eds_name(c: &Cluster) -> Name {
    let service = c
        .eds_cluster_config
        .as_ref()
        .map(|e| e.service_name.as_str());
    Name::new(service.filter(|n| !n.is_empty()).unwrap_or(&c.name))
}

/// A cluster and its endpoint assignment as a backend.
pub(super) fn backend_of(
    c: &Cluster,
    cla: &ClusterLoadAssignment,
    warnings: &mut Vec<String>,
) -> Result<Backend, XdsError> {
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
            let msg = format!("lb_policy {} is not supported", c.lb_policy);
            return Err(at("lb_policy", msg));
        }
    };
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
        name: Name::new(&c.name),
        endpoints: endpoints_of(&c.name, cla, warnings),
        protocol,
        load_balancer,
        circuit_breaker: breaker_of(c),
        outlier_detection: outlier_of(c).map(Box::new),
        tls: upstream_tls(c, warnings)
            .map_err(|e| e.at("transport_socket"))?
            .map(Box::new),
        locality_lb: locality_lb_of(c, cla)?.map(Box::new),
        dns: dns_of(c, warnings)?.map(Box::new),
        // Envoy configures it as an HTTP filter, not on a cluster.
        adaptive_concurrency: None,
    })
}

/// DNS discovery for `STRICT_DNS` and `LOGICAL_DNS` clusters, in their
/// classic form (Istio sends it; its fields are deprecated in Envoy's
/// protos) or as Envoy's DNS cluster extension (`envoy.cluster.dns`, whose
/// `all_addresses_in_single_endpoint` is logical DNS). With
/// `respect_dns_ttl`, a name is looked up again at its TTL, from
/// `dns_min_refresh_rate` (or the failure refresh's base interval) to
/// `dns_refresh_rate` (Envoy's default 5s); without, every
/// `dns_refresh_rate`. Name servers come from a c-ares resolver config,
/// `dns_resolution_config` or `dns_resolvers`.
#[allow(deprecated)]
fn dns_of(c: &Cluster, warnings: &mut Vec<String>) -> Result<Option<crate::config::Dns>, XdsError> {
    use crate::config::DnsMode;
    use envoy_types::pb::envoy::extensions::clusters::dns::v3::DnsCluster;
    let (mode, refresh) = match &c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) if *t == DiscoveryType::StrictDns as i32 => {
            (DnsMode::Strict, classic_refresh(c))
        }
        Some(ClusterDiscoveryType::Type(t)) if *t == DiscoveryType::LogicalDns as i32 => {
            (DnsMode::Logical, classic_refresh(c))
        }
        Some(ClusterDiscoveryType::ClusterType(custom))
            if custom.typed_config.as_ref().is_some_and(|a| {
                a.type_url
                    .ends_with("envoy.extensions.clusters.dns.v3.DnsCluster")
            }) =>
        {
            let any = custom
                .typed_config
                .as_ref()
                .map(|a| a.value.as_slice())
                .unwrap_or_default();
            let d = DnsCluster::decode(any)
                .map_err(|e| at("cluster_type", format!("DnsCluster: {e}")))?;
            let mode = if d.all_addresses_in_single_endpoint {
                DnsMode::Logical
            } else {
                DnsMode::Strict
            };
            let base = dur(&d.dns_min_refresh_rate).or_else(|| {
                d.dns_failure_refresh_rate
                    .as_ref()
                    .and_then(|r| dur(&r.base_interval))
            });
            let refresh = refresh_bounds(d.respect_dns_ttl, dur(&d.dns_refresh_rate), base);
            let mut servers = Vec::new();
            cares_servers(d.typed_dns_resolver_config.as_ref(), &mut servers)?;
            return Ok(Some(dns_settings(c, mode, refresh, servers, warnings)));
        }
        _ => return Ok(None),
    };
    let mut addresses = c.dns_resolvers.clone();
    if let Some(r) = &c.dns_resolution_config {
        addresses.extend(r.resolvers.iter().cloned());
    }
    cares_servers(c.typed_dns_resolver_config.as_ref(), &mut addresses)?;
    Ok(Some(dns_settings(c, mode, refresh, addresses, warnings)))
}

#[allow(deprecated)]
fn classic_refresh(c: &Cluster) -> (std::time::Duration, std::time::Duration) {
    let base = c
        .dns_failure_refresh_rate
        .as_ref()
        .and_then(|r| dur(&r.base_interval));
    refresh_bounds(c.respect_dns_ttl, dur(&c.dns_refresh_rate), base)
}

/// (min, max) between lookups: the TTL within `base` (or the default) and
/// `rate` when TTLs are respected, `rate` alone otherwise.
fn refresh_bounds(
    respect_ttl: bool,
    rate: Option<std::time::Duration>,
    base: Option<std::time::Duration>,
) -> (std::time::Duration, std::time::Duration) {
    // Envoy's default refresh rate.
    let rate = rate.unwrap_or(std::time::Duration::from_secs(5));
    if respect_ttl {
        let min = base.unwrap_or(crate::config::DEFAULT_DNS_MIN_REFRESH);
        (min, rate.max(min))
    } else {
        (rate, rate)
    }
}

/// The resolvers of a c-ares resolver config, if that is what `typed` is.
fn cares_servers(
    typed: Option<&envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig>,
    out: &mut Vec<envoy_types::pb::envoy::config::core::v3::Address>,
) -> Result<(), XdsError> {
    use envoy_types::pb::envoy::extensions::network::dns_resolver::cares::v3::CaresDnsResolverConfig;
    let Some(any) = typed
        .and_then(|t| t.typed_config.as_ref())
        .filter(|a| a.type_url.ends_with("CaresDnsResolverConfig"))
    else {
        return Ok(());
    };
    let cares = CaresDnsResolverConfig::decode(any.value.as_slice()).map_err(|e| {
        at(
            "typed_dns_resolver_config",
            format!("CaresDnsResolverConfig: {e}"),
        )
    })?;
    out.extend(cares.resolvers);
    Ok(())
}

/// The model's DNS settings; a resolver that is not an IP socket address
/// is named in a warning.
fn dns_settings(
    c: &Cluster,
    mode: crate::config::DnsMode,
    (min_refresh, max_refresh): (std::time::Duration, std::time::Duration),
    addresses: Vec<envoy_types::pb::envoy::config::core::v3::Address>,
    warnings: &mut Vec<String>,
) -> crate::config::Dns {
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
    let mut servers = Vec::new();
    for a in &addresses {
        let ip = match a.address.as_ref() {
            Some(address::Address::SocketAddress(sa)) => sa
                .address
                .parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| (ip, sa.port_specifier.clone())),
            _ => None,
        };
        let Some((ip, port)) = ip else {
            warnings.push(format!(
                "cluster `{}`: a DNS resolver that is not an IP socket address is ignored",
                c.name
            ));
            continue;
        };
        let port = match port {
            Some(socket_address::PortSpecifier::PortValue(p)) => u16::try_from(p).unwrap_or(0),
            _ => 53,
        };
        servers.push(std::net::SocketAddr::new(ip, port).to_string());
    }
    crate::config::Dns {
        mode,
        servers,
        min_refresh,
        max_refresh,
    }
}

/// The key of a cluster's `filter_metadata` that carries what Envoy's
/// cluster has no field for: `{"json": "<LocalityLb as JSON>"}` with
/// `prefer_local`, `failover` and `distribute` (the development control
/// plane sends it; Envoy ignores it).
pub(super) const LOCALITY_METADATA: &str = "proxyless.locality_lb";

/// A cluster's locality balancing: the overprovisioning factor from the
/// assignment's policy, locality weights when the cluster asks for
/// locality-weighted balancing, preference for the caller's zone when it
/// asks for zone-aware balancing, and the rest from the mesh's metadata.
/// `None` when all of it is the default.
fn locality_lb_of(
    c: &Cluster,
    cla: &ClusterLoadAssignment,
) -> Result<Option<LocalityLb>, XdsError> {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::common_lb_config::LocalityConfigSpecifier;
    let specifier = c
        .common_lb_config
        .as_ref()
        .and_then(|l| l.locality_config_specifier.as_ref());
    let mut lb = LocalityLb {
        prefer_local: matches!(
            specifier,
            Some(LocalityConfigSpecifier::ZoneAwareLbConfig(_))
        ),
        ..LocalityLb::default()
    };
    if let Some(f) = cla
        .policy
        .as_ref()
        .and_then(|p| p.overprovisioning_factor.as_ref())
    {
        lb.overprovisioning = f64::from(f.value) / 100.0;
    }
    if matches!(
        specifier,
        Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
    ) {
        for l in &cla.endpoints {
            let (Some(locality), Some(w)) = (locality_of(l), &l.load_balancing_weight) else {
                continue;
            };
            lb.weights.entry(locality.to_string()).or_insert(w.value);
        }
    }
    if let Some(json) = super::metadata_json(c.metadata.as_ref(), LOCALITY_METADATA) {
        let rules: LocalityLb = crate::config::part_from_json(json, "locality_lb")
            .map_err(|e| at("metadata", format!("{LOCALITY_METADATA}: {e}")))?;
        lb.prefer_local = rules.prefer_local;
        lb.failover = rules.failover;
        lb.distribute = rules.distribute;
    }
    Ok((lb != LocalityLb::default()).then_some(lb))
}

/// The locality of an assignment's group of endpoints, if it names one the
/// model can hold (parts free of `/`, `*` and spaces, and not too long).
fn locality_of(
    l: &envoy_types::pb::envoy::config::endpoint::v3::LocalityLbEndpoints,
) -> Option<Locality> {
    let x = l.locality.as_ref()?;
    let parts = [&x.region, &x.zone, &x.sub_zone];
    let fits = parts.iter().all(|p| {
        p.len() <= crate::config::MAX_LOCALITY_PART
            && !p.contains(|c: char| c == '/' || c == '*' || c.is_whitespace() || c.is_control())
    });
    let locality = Locality::new(&x.region, &x.zone, &x.sub_zone);
    (fits && !locality.is_empty()).then_some(locality)
}

fn breaker_of(c: &Cluster) -> Option<CircuitBreaker> {
    let t = c.circuit_breakers.as_ref()?.thresholds.first()?;
    let d = CircuitBreaker::default();
    Some(CircuitBreaker {
        max_requests: t.max_requests.as_ref().map_or(d.max_requests, |v| v.value),
        max_pending: t
            .max_pending_requests
            .as_ref()
            .map_or(d.max_pending, |v| v.value),
        max_retries: t.max_retries.as_ref().map_or(d.max_retries, |v| v.value),
    })
}

fn outlier_of(c: &Cluster) -> Option<OutlierDetection> {
    let o = c.outlier_detection.as_ref()?;
    let d = OutlierDetection::default();
    let value = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>, default: u32| {
        v.as_ref().map_or(default, |v| v.value)
    };
    Some(OutlierDetection {
        consecutive_5xx: value(&o.consecutive_5xx, d.consecutive_5xx),
        consecutive_gateway_errors: value(&o.consecutive_gateway_failure, 0),
        consecutive_connect_failures: value(&o.consecutive_local_origin_failure, 0),
        base_ejection: dur(&o.base_ejection_time).unwrap_or(d.base_ejection),
        max_ejection: dur(&o.max_ejection_time).unwrap_or(d.max_ejection),
        max_ejection_percent: value(&o.max_ejection_percent, d.max_ejection_percent),
    })
}

/// The endpoints of an assignment, with their locality, priority and
/// health; an endpoint that is not a socket address is a warning.
fn endpoints_of(
    cluster: &str,
    cla: &ClusterLoadAssignment,
    warnings: &mut Vec<String>,
) -> Vec<Endpoint> {
    let count = cla.endpoints.iter().map(|l| l.lb_endpoints.len()).sum();
    let mut endpoints = Vec::with_capacity(count);
    let mut odd_locality = false;
    for group in &cla.endpoints {
        let locality = locality_of(group).map(crate::config::Shared::new);
        odd_locality |= locality.is_none()
            && group
                .locality
                .as_ref()
                .is_some_and(|l| !Locality::new(&l.region, &l.zone, &l.sub_zone).is_empty());
        for lb in &group.lb_endpoints {
            let Some(mut endpoint) = endpoint_of(cluster, lb, warnings) else {
                continue;
            };
            endpoint.locality = locality.clone();
            endpoint.priority = group.priority;
            endpoints.push(endpoint);
        }
    }
    if odd_locality {
        warnings.push(format!(
            "cluster `{cluster}`: a locality with `/`, `*`, a space or a part over {} bytes \
             is read as unknown",
            crate::config::MAX_LOCALITY_PART
        ));
    }
    endpoints
}

/// One endpoint of an assignment. HEALTHY (1) and UNKNOWN (0) serve;
/// UNHEALTHY, DRAINING, TIMEOUT and DEGRADED are kept as unhealthy: never
/// picked, but counted in their locality's capacity.
fn endpoint_of(
    cluster: &str,
    lb: &envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint,
    warnings: &mut Vec<String>,
) -> Option<Endpoint> {
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    let Some(HostIdentifier::Endpoint(ep)) = &lb.host_identifier else {
        return None;
    };
    let Some(address::Address::SocketAddress(sa)) =
        ep.address.as_ref().and_then(|a| a.address.as_ref())
    else {
        warnings.push(format!(
            "cluster `{cluster}`: an endpoint that is not a socket address is ignored"
        ));
        return None;
    };
    // A missing or named port reads as 0, so the one validator that
    // judges files refuses it here too (and the response is NACKed).
    let port = match sa.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(port)) => port,
        _ => 0,
    };
    let host = if sa.address.contains(':') {
        format!("[{}]", sa.address)
    } else {
        sa.address.clone()
    };
    let mut endpoint = Endpoint::new(format!("{host}:{port}"));
    endpoint.weight = lb
        .load_balancing_weight
        .as_ref()
        .map_or(1, |w| w.value.max(1));
    endpoint.healthy = matches!(lb.health_status, 0 | 1);
    Some(endpoint)
}

/// The type URL of the TLS transport socket's config.
pub(super) const UPSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

/// A cluster's transport socket as backend TLS. Upstream TLS becomes mutual
/// TLS with this workload's own identity, accepting the SPIFFE IDs the
/// context's URI SAN matchers name (exact, or prefix as Istio sends for
/// trust-domain aliases), with its SNI. Without such an ID the cluster is
/// refused: connecting in plaintext, or over TLS without checking who
/// answers, would weaken what the control plane asked for.
pub(super) fn upstream_tls(
    c: &Cluster,
    warnings: &mut Vec<String>,
) -> Result<Option<crate::config::BackendTls>, XdsError> {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
    let Some(socket) = &c.transport_socket else {
        return Ok(None);
    };
    let Some(ConfigType::TypedConfig(any)) = &socket.config_type else {
        return Ok(None);
    };
    if any.type_url.ends_with("RawBuffer") {
        return Ok(None);
    }
    if any.type_url != UPSTREAM_TLS {
        let msg = format!("transport socket {} is not supported", any.type_url);
        return Err(at("typed_config", msg));
    }
    let ctx = UpstreamTlsContext::decode(any.value.as_slice())
        .map_err(|e| at("typed_config", format!("UpstreamTlsContext: {e}")))?;
    let (patterns, ignored) = san_patterns(&ctx);
    if patterns.is_empty() {
        return Err(at(
            "typed_config.common_tls_context",
            "upstream TLS without an exact or prefix spiffe:// URI SAN to verify is not supported",
        ));
    }
    if ignored > 0 {
        warnings.push(format!(
            "cluster `{}`: {ignored} SAN matcher(s) that are not spiffe:// exact or prefix ignored",
            c.name
        ));
    }
    // Each pattern must stand alone (a prefix that does not pin the trust
    // domain is refused by name).
    let san_path = "typed_config.common_tls_context.validation_context";
    crate::identity::IdentityMatcher::new(patterns.iter().map(String::as_str))
        .map_err(|e| at(san_path, format!("SAN matcher: {e}")))?;
    let mut tls = crate::config::BackendTls {
        mode: crate::config::BackendTlsMode::Mutual,
        ..Default::default()
    };
    let mut patterns = patterns.into_iter();
    match (patterns.next(), patterns.next()) {
        (Some(one), None) if !one.ends_with('*') => {
            let id = one
                .parse()
                .map_err(|e| at(san_path, format!("SAN `{one}`: {e}")))?;
            tls.identity = Some(id);
        }
        (first, second) => {
            tls.identities = first.into_iter().chain(second).chain(patterns).collect()
        }
    }
    if !ctx.sni.is_empty() {
        tls.sni = Some(ctx.sni);
    }
    let (certificate, trust) = super::sources::sources_of(ctx.common_tls_context.as_ref())
        .map_err(|e| at("typed_config.common_tls_context", e.to_string()))?;
    tls.certificate = certificate;
    tls.trust = trust;
    Ok(Some(tls))
}

/// The SPIFFE ID patterns an upstream TLS context's URI SAN matchers name
/// (exact IDs, `prefix*`), and how many other matchers were ignored.
fn san_patterns(
    ctx: &envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext,
) -> (BTreeSet<String>, usize) {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
    let validation = match ctx
        .common_tls_context
        .as_ref()
        .and_then(|common| common.validation_context_type.as_ref())
    {
        Some(ValidationContextType::ValidationContext(v)) => Some(v),
        Some(ValidationContextType::CombinedValidationContext(v)) => {
            v.default_validation_context.as_ref()
        }
        _ => None,
    };
    let mut patterns = BTreeSet::new();
    let mut ignored = 0usize;
    if let Some(v) = validation {
        #[allow(deprecated)]
        let matchers = v
            .match_typed_subject_alt_names
            .iter()
            .filter(|m| m.san_type == 3) // URI
            .filter_map(|m| m.matcher.as_ref())
            .chain(&v.match_subject_alt_names);
        for m in matchers {
            match &m.match_pattern {
                Some(MatchPattern::Exact(x)) if x.starts_with("spiffe://") => {
                    patterns.insert(x.clone());
                }
                Some(MatchPattern::Prefix(x)) if x.starts_with("spiffe://") => {
                    patterns.insert(format!("{x}*"));
                }
                _ => ignored += 1,
            }
        }
    }
    (patterns, ignored)
}

/// The transport socket asking for mutual TLS that verifies what `tls`
/// names: each exact SPIFFE ID and each `prefix*` as a URI SAN matcher.
pub(super) fn tls_socket(
    tls: &crate::config::BackendTls,
) -> envoy_types::pb::envoy::config::core::v3::TransportSocket {
    use envoy_types::pb::envoy::config::core::v3::{TransportSocket, transport_socket::ConfigType};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CertificateValidationContext, CommonTlsContext, SubjectAltNameMatcher, UpstreamTlsContext,
    };
    use envoy_types::pb::envoy::r#type::matcher::v3::{
        StringMatcher, string_matcher::MatchPattern,
    };
    let san = |p: &str| SubjectAltNameMatcher {
        san_type: 3, // URI
        matcher: Some(StringMatcher {
            match_pattern: Some(match p.strip_suffix('*') {
                Some(prefix) => MatchPattern::Prefix(prefix.to_owned()),
                None => MatchPattern::Exact(p.to_owned()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let validation = CertificateValidationContext {
        match_typed_subject_alt_names: tls
            .identity
            .iter()
            .map(|i| i.as_str())
            .chain(tls.identities.iter().map(String::as_str))
            .map(san)
            .collect(),
        ..Default::default()
    };
    let mut common = CommonTlsContext::default();
    super::sources::name_sources(
        &mut common,
        tls.certificate.as_deref(),
        tls.trust.as_deref(),
        validation,
    );
    let ctx = UpstreamTlsContext {
        common_tls_context: Some(common),
        sni: tls.sni.clone().unwrap_or_default(),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(ConfigType::TypedConfig(
            envoy_types::pb::google::protobuf::Any {
                type_url: UPSTREAM_TLS.to_owned(),
                value: ctx.encode_to_vec(),
            },
        )),
    }
}
