//! xDS resources -> the mesh config model, the way gRPC's proxyless clients
//! read them: Listener (API listener with an HTTP connection manager) ->
//! RouteConfiguration -> Cluster -> ClusterLoadAssignment. Pure: the
//! ADS client feeds it the resources it holds and publishes what comes out.
//!
//! What the model cannot honour safely (redirects, direct responses, a route
//! to a cluster header) makes the resource an error, which the client
//! NACKs; fields it can ignore safely are reported as warnings.
//!
//! One file per concern: this one holds the resource store, what to
//! subscribe to and the listener-level assembly; `routes.rs` reads route
//! configurations, `cluster.rs` clusters and endpoint assignments,
//! `rbac.rs` inbound listeners; `reverse.rs` and `reverse_rbac.rs` go the
//! other way, model to resources, for the development control plane.

use crate::config::{Name, Service};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use prost::Message;
use std::collections::BTreeSet;
use std::time::Duration;

mod build;
mod cluster;
mod held;
mod rbac;
mod resources;
mod reverse;
mod reverse_rbac;
mod routes;
mod secret;
mod sources;

pub use build::{Built, Kept, to_config};
pub use held::{Held, Refer, Refers};
pub use rbac::{INBOUND_PREFIX, inbound_of};
pub use resources::{Changes, Resources, Saved};
pub use reverse::{Part, envoy_listener, from_config, part_resources};
pub use reverse_rbac::inbound_listener;
pub use secret::{SecretMaterial, secret_material};
pub use sources::{SDS_PREFIX, sources_of};

use crate::xds::error::{XdsError, at};
use cluster::{eds_name, is_eds};
use routes::{faults_in, hcm_fault, route_of};

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
    /// Secret (SDS): a certificate and key, or a validation context.
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
    /// HttpConnectionManager (inside an API listener).
    pub const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
}

/// What the held resources refer to: the names to subscribe to next.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// Route configurations named by listeners (RDS).
    pub routes: BTreeSet<Name>,
    /// Clusters named by routes.
    pub clusters: BTreeSet<Name>,
    /// Assignments named by EDS clusters.
    pub endpoints: BTreeSet<Name>,
}

/// The HTTP connection manager of an API listener.
pub fn api_hcm(l: &Listener) -> Result<HttpConnectionManager, XdsError> {
    let in_listener = |e: XdsError| e.in_resource("Listener", &l.name);
    let any = l
        .api_listener
        .as_ref()
        .and_then(|a| a.api_listener.as_ref())
        .ok_or_else(|| {
            in_listener(at(
                "api_listener",
                "no API listener (only API listeners are supported)",
            ))
        })?;
    if any.type_url != type_url::HCM {
        let msg = format!("an API listener of type {} is not supported", any.type_url);
        return Err(in_listener(at("api_listener", msg)));
    }
    HttpConnectionManager::decode(any.value.as_slice()).map_err(|e| {
        let msg = format!("cannot decode its HttpConnectionManager: {e}");
        in_listener(at("api_listener", msg))
    })
}

/// The route configuration of a listener: inline, or the RDS name.
enum RouteSource {
    Inline(Box<RouteConfiguration>),
    Rds(String),
}

fn route_source(l: &Listener) -> Result<RouteSource, XdsError> {
    match api_hcm(l)?.route_specifier {
        Some(RouteSpecifier::Rds(r)) => Ok(RouteSource::Rds(r.route_config_name)),
        Some(RouteSpecifier::RouteConfig(rc)) => Ok(RouteSource::Inline(Box::new(rc))),
        _ => Err(at(
            "api_listener.route_specifier",
            "no route configuration (RDS or inline)",
        )
        .in_resource("Listener", &l.name)),
    }
}

/// The names the held resources refer to (read when each was held: nothing
/// is decoded here).
pub fn wanted(r: &Resources) -> Wanted {
    // Gathered in vectors and made sets in bulk: a B-tree built from sorted
    // names has its nodes full, one filled name by name about half.
    let (mut clusters, mut routes) = (Vec::new(), Vec::new());
    let mut referred = |refers: &Refers| {
        if let Refers::Clusters(names) = refers {
            clusters.extend(names.iter().cloned());
        }
    };
    for l in r.listeners.values() {
        match l.refers() {
            Refers::Rds(name) => {
                if let Some(rc) = r.routes.get(name) {
                    referred(rc.refers());
                }
                routes.push(name.clone());
            }
            inline => referred(inline),
        }
    }
    let clusters: BTreeSet<Name> = clusters.into_iter().collect();
    let endpoints = clusters
        .iter()
        .filter_map(|name| match r.clusters.get(name).map(Held::refers) {
            Some(Refers::Eds(eds)) => Some(eds.clone()),
            _ => None,
        })
        .collect();
    Wanted {
        routes: routes.into_iter().collect(),
        clusters,
        endpoints,
    }
}

/// The clusters a route configuration's routes (and their mirrors) name,
/// in name order, each once.
fn clusters_named(rc: &RouteConfiguration) -> Vec<Name> {
    let mut out = Vec::new();
    for route in rc.virtual_hosts.iter().flat_map(|vh| &vh.routes) {
        if let Some(route::Action::Route(a)) = &route.action {
            out.extend(
                a.request_mirror_policies
                    .iter()
                    .map(|m| Name::new(&m.cluster)),
            );
            match &a.cluster_specifier {
                Some(route_action::ClusterSpecifier::Cluster(c)) => out.push(Name::new(c)),
                Some(route_action::ClusterSpecifier::WeightedClusters(wc)) => {
                    out.extend(wc.clusters.iter().map(|c| Name::new(&c.name)));
                }
                _ => {}
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

impl Refer for Listener {
    fn refers(&self) -> Refers {
        match route_source(self) {
            Ok(RouteSource::Rds(name)) => Refers::Rds(name.into()),
            Ok(RouteSource::Inline(rc)) => Refers::Clusters(clusters_named(&rc).into()),
            Err(_) => Refers::Nothing,
        }
    }
}

impl Refer for RouteConfiguration {
    fn refers(&self) -> Refers {
        Refers::Clusters(clusters_named(self).into())
    }
}

impl Refer for Cluster {
    fn refers(&self) -> Refers {
        if is_eds(self) {
            Refers::Eds(eds_name(self))
        } else {
            Refers::Nothing
        }
    }
}

impl Refer for ClusterLoadAssignment {
    fn refers(&self) -> Refers {
        Refers::Nothing
    }
}

impl Refer for envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret {
    fn refers(&self) -> Refers {
        Refers::Nothing
    }
}

/// Whether the cluster `name` is held with its endpoints (an EDS cluster's
/// assignment held too).
pub(super) fn cluster_complete(r: &Resources, name: &str) -> bool {
    match r.clusters.get(name).map(Held::refers) {
        Some(Refers::Eds(eds)) => r.endpoints.contains_key(eds),
        Some(_) => true,
        None => false,
    }
}

/// The most retries a route may make (attempts are at most 10, the first
/// included); a control plane's larger `num_retries` is clamped with a
/// warning, not NACKed (Istio allows more).
pub(super) const MAX_RETRIES: u32 = 9;

/// A protobuf duration, clamped to `0..=MAX_DURATION` (negative parts read
/// as zero), as Envoy and gRPC clamp what a control plane sends.
/// The JSON this mesh keeps under `key` in a resource's `filter_metadata`
/// (`{"json": "..."}`): what Envoy's messages have no field for.
pub(super) fn metadata_json<'a>(
    metadata: Option<&'a envoy_types::pb::envoy::config::core::v3::Metadata>,
    key: &str,
) -> Option<&'a str> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let v = metadata?.filter_metadata.get(key)?.fields.get("json")?;
    match &v.kind {
        Some(Kind::StringValue(s)) => Some(s),
        _ => None,
    }
}

/// `value` as JSON under `key` in a `filter_metadata` (read back by
/// [`metadata_json`]).
pub(super) fn json_metadata(
    key: &str,
    value: &impl serde::Serialize,
) -> Option<envoy_types::pb::envoy::config::core::v3::Metadata> {
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    let json = serde_json::to_string(value).ok()?;
    let fields = [(
        "json".to_owned(),
        Value {
            kind: Some(Kind::StringValue(json)),
        },
    )];
    let data = Struct {
        fields: fields.into_iter().collect(),
    };
    Some(envoy_types::pb::envoy::config::core::v3::Metadata {
        filter_metadata: [(key.to_owned(), data)].into_iter().collect(),
        ..Default::default()
    })
}

pub(super) fn dur(d: &Option<envoy_types::pb::google::protobuf::Duration>) -> Option<Duration> {
    d.as_ref().map(|d| {
        let secs = u64::try_from(d.seconds).unwrap_or(0);
        let nanos = u32::try_from(d.nanos).unwrap_or(0).min(999_999_999);
        Duration::new(secs, nanos).min(crate::config::MAX_DURATION)
    })
}

/// The service listener `l` (subscribed as `name`) describes, and the
/// clusters it uses; `None` while its route configuration, clusters or
/// endpoints have not all arrived.
pub(super) fn service_of(
    r: &Resources,
    name: &str,
    l: &Listener,
    warnings: &mut Vec<String>,
) -> Result<Option<(Service, BTreeSet<Name>)>, XdsError> {
    let rc: RouteConfiguration = match route_source(l)? {
        RouteSource::Inline(rc) => *rc,
        RouteSource::Rds(n) => match r.routes.get(n.as_str()) {
            Some(rc) => rc.get(),
            None => return Ok(None),
        },
    };
    let in_rc = |e: XdsError| e.in_resource("RouteConfiguration", &rc.name);
    let host = crate::route::host_of(name);
    let (v, vh) = rc
        .virtual_hosts
        .iter()
        .enumerate()
        .find(|(_, vh)| vh.domains.iter().any(|d| d == host || d == name))
        .or_else(|| {
            let mut all = rc.virtual_hosts.iter().enumerate();
            all.find(|(_, vh)| vh.domains.iter().any(|d| d == "*"))
        })
        .ok_or_else(|| in_rc(at("virtual_hosts", format!("no virtual host for `{name}`"))))?;
    // Fault config: the route's, else its virtual host's, else the
    // fault filter's own config in the connection manager.
    let where_vh = format!("virtual host `{}` of `{}`", vh.name, rc.name);
    let inherited =
        match faults_in(&vh.typed_per_filter_config, &where_vh, warnings).map_err(|e| {
            in_rc(
                e.at("typed_per_filter_config")
                    .at(format!("virtual_hosts[{v}]")),
            )
        })? {
            Some(f) => Some(f),
            None => hcm_fault(&api_hcm(l)?, &l.name, warnings).map_err(|e| {
                e.at("api_listener.http_filters")
                    .in_resource("Listener", &l.name)
            })?,
        };
    let mut routes = Vec::with_capacity(vh.routes.len());
    let mut uses = BTreeSet::new();
    for (i, xr) in vh.routes.iter().enumerate() {
        let mut route = route_of(xr, i, &rc.name, &mut uses, warnings).map_err(|e| {
            in_rc(
                e.at(format!("routes[{i}]"))
                    .at(format!("virtual_hosts[{v}]")),
            )
        })?;
        if route.fault.is_none() {
            route.fault = inherited.clone().map(Box::new);
        }
        routes.push(route);
    }
    if !uses.iter().all(|c| cluster_complete(r, c)) {
        return Ok(None);
    }
    let host = Name::new(host);
    let service = Service {
        name: host.clone(),
        hosts: vec![host],
        routes,
        classifier: None,
    };
    Ok(Some((service, uses)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::cluster::{UPSTREAM_TLS, tls_socket, upstream_tls};
    use super::*;
    use crate::config::Config;

    /// The config `r` describes for `services`, translated from nothing.
    fn fresh<'a>(
        r: &Resources,
        services: impl IntoIterator<Item = &'a Name>,
        warnings: &mut Vec<String>,
    ) -> Result<Built, XdsError> {
        to_config(
            r,
            services,
            &Changes::default(),
            warnings,
            &mut Kept::default(),
        )
    }

    /// model -> xDS -> model is the identity over what xDS carries.
    #[test]
    fn upstream_tls_is_mutual_tls_to_the_named_spiffe_id_or_refused() {
        use envoy_types::pb::envoy::config::core::v3::{
            TransportSocket, transport_socket::ConfigType,
        };
        use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
            CertificateValidationContext, CommonTlsContext, UpstreamTlsContext,
            common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
        };
        use envoy_types::pb::envoy::r#type::matcher::v3::{
            StringMatcher, string_matcher::MatchPattern,
        };
        let cluster = |ctx: Option<UpstreamTlsContext>| Cluster {
            name: "c".into(),
            transport_socket: ctx.map(|ctx| TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(ConfigType::TypedConfig(
                    envoy_types::pb::google::protobuf::Any {
                        type_url: UPSTREAM_TLS.into(),
                        value: ctx.encode_to_vec(),
                    },
                )),
            }),
            ..Default::default()
        };
        let sans = |names: &[&str]| {
            #[allow(deprecated)]
            let v = CertificateValidationContext {
                match_subject_alt_names: names
                    .iter()
                    .map(|n| StringMatcher {
                        match_pattern: Some(MatchPattern::Exact((*n).into())),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            UpstreamTlsContext {
                common_tls_context: Some(CommonTlsContext {
                    validation_context_type: Some(
                        ValidationContextType::CombinedValidationContext(
                            CombinedCertificateValidationContext {
                                default_validation_context: Some(v),
                                ..Default::default()
                            },
                        ),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            }
        };
        let mut warnings = Vec::new();
        assert_eq!(upstream_tls(&cluster(None), &mut warnings).unwrap(), None);
        // Istio's older field, inside a combined validation context.
        let tls = upstream_tls(
            &cluster(Some(sans(&["spiffe://td/ns/a/sa/reviews"]))),
            &mut warnings,
        )
        .unwrap()
        .unwrap();
        assert_eq!(tls.mode, crate::config::BackendTlsMode::Mutual);
        assert_eq!(
            tls.identity.unwrap().as_str(),
            "spiffe://td/ns/a/sa/reviews"
        );
        assert!(warnings.is_empty());
        // Two IDs: both accepted.
        let tls = upstream_tls(
            &cluster(Some(sans(&["spiffe://td/b", "spiffe://td/a"]))),
            &mut warnings,
        )
        .unwrap()
        .unwrap();
        assert_eq!(tls.identity, None);
        assert_eq!(tls.identities, ["spiffe://td/a", "spiffe://td/b"]);
        assert!(warnings.is_empty(), "{warnings:?}");
        // A prefix (Istio's trust-domain aliases) with an SNI; a DNS SAN
        // beside it is ignored and said.
        // `sans` with one more (older-field) matcher: a prefix.
        let with_prefix = |names: &[&str], prefix: &str| {
            let mut ctx = sans(names);
            if let Some(CommonTlsContext {
                validation_context_type: Some(ValidationContextType::CombinedValidationContext(c)),
                ..
            }) = &mut ctx.common_tls_context
            {
                #[allow(deprecated)]
                c.default_validation_context
                    .as_mut()
                    .unwrap()
                    .match_subject_alt_names
                    .push(StringMatcher {
                        match_pattern: Some(MatchPattern::Prefix(prefix.into())),
                        ..Default::default()
                    });
            }
            ctx
        };
        let mut ctx = with_prefix(&["reviews.default.svc"], "spiffe://td/ns/prod/");
        ctx.sni = "reviews.prod".into();
        let tls = upstream_tls(&cluster(Some(ctx.clone())), &mut warnings)
            .unwrap()
            .unwrap();
        assert_eq!(tls.identities, ["spiffe://td/ns/prod/*"]);
        assert_eq!(tls.sni.as_deref(), Some("reviews.prod"));
        assert!(warnings[0].contains("1 SAN matcher"), "{warnings:?}");
        // And back: the same matchers and SNI.
        let back = upstream_tls(
            &Cluster {
                name: "c".into(),
                transport_socket: Some(tls_socket(&tls)),
                ..Default::default()
            },
            &mut warnings,
        )
        .unwrap()
        .unwrap();
        assert_eq!(back, tls);
        // No SAN at all: refused.
        assert!(upstream_tls(&cluster(Some(sans(&[]))), &mut warnings).is_err());
        // A prefix that does not pin the trust domain: refused by name.
        let loose = with_prefix(&[], "spiffe://td");
        let e = upstream_tls(&cluster(Some(loose)), &mut warnings)
            .unwrap_err()
            .to_string();
        assert!(e.contains("trust domain"), "{e}");
        // TLS with nothing to verify, or only DNS names: refused, never plaintext.
        for ctx in [
            UpstreamTlsContext::default(),
            sans(&["reviews.default.svc"]),
        ] {
            let e = upstream_tls(&cluster(Some(ctx)), &mut warnings)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("spiffe://") && e.contains("common_tls_context"),
                "{e}"
            );
        }
    }

    /// A control plane's extreme durations and retry counts are clamped
    /// (with a warning for the count), never overflowed or NACKed.
    #[test]
    fn extreme_durations_and_retries_are_clamped() {
        use envoy_types::pb::envoy::config::route::v3::{
            Route as XRoute, RouteAction, RouteMatch as XMatch, retry_policy::RetryBackOff,
            route::Action, route_action::ClusterSpecifier, route_match::PathSpecifier,
        };
        use envoy_types::pb::google::protobuf::{Duration as PDuration, UInt32Value};
        let huge = PDuration {
            seconds: i64::MAX,
            nanos: i32::MAX,
        };
        for retries in [20, u32::MAX] {
            let xr = XRoute {
                r#match: Some(XMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster("c".into())),
                    timeout: Some(huge),
                    retry_policy: Some(envoy_types::pb::envoy::config::route::v3::RetryPolicy {
                        retry_on: "5xx".into(),
                        num_retries: Some(UInt32Value { value: retries }),
                        per_try_timeout: Some(huge),
                        retry_back_off: Some(RetryBackOff {
                            base_interval: Some(huge),
                            max_interval: None,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            };
            let mut warnings = Vec::new();
            let r = route_of(&xr, 0, "rc", &mut BTreeSet::new(), &mut warnings).unwrap();
            let max = crate::config::MAX_DURATION;
            assert_eq!(r.timeout, Some(max));
            let retry = r.retry.unwrap();
            assert_eq!(retry.attempts, 10, "num_retries {retries}");
            assert_eq!(retry.per_try_timeout, Some(max));
            assert_eq!((retry.backoff.base, retry.backoff.max), (max, max));
            assert!(
                warnings.iter().any(|w| w.contains("clamped")),
                "{warnings:?}"
            );
        }
    }

    #[test]
    fn the_two_directions_agree() {
        let cfg = Config::from_yaml(
            r#"
services:
  - name: reviews
    routes:
      - name: testers
        match: { path: { prefix: /ratings }, methods: [GET], headers: { x-user: tester, x-debug: { present: true }, x-ver: { regex: "v[0-9]" } }, query: { canary: { prefix: "1" } } }
        to: [reviews-v2]
      - name: exact
        match: { path: { exact: /health } }
        timeout: 250ms
        rate_limit: { max_tokens: 10, tokens_per_fill: 5, fill_interval: 500ms }
        fault: { delay: { fixed: 50ms, percent: 12.5 }, abort: { status: 503, percent: 0.5 } }
        to: [{ backend: reviews-v1, weight: 3 }]
      - name: default
        timeout: 2s
        retry: { attempts: 3, per_try_timeout: 500ms, on: [5xx, connect-failure, unavailable], backoff: { base: 10ms, max: 80ms } }
        mirror: { backend: shadow, percent: 12.5 }
        to: [{ backend: reviews-v1, weight: 90 }, { backend: reviews-v2, weight: 10 }]
  - name: ratings
    routes:
      - { name: all, match: { path: { regex: "/r/[0-9]+" } }, to: [ratings] }
  - name: zonal
    routes:
      - { name: all, to: [zonal, weighted, shares, named, single] }
  - name: search
    routes:
      - { name: fixed, match: { path: { prefix: /f } }, hedge: { attempts: 3, delay: 20ms }, to: [ratings] }
      - { name: tail, hedge: { delay: p99, budget_percent: 12.5, hedge_non_idempotent: true }, to: [ratings] }
backends:
  - name: named
    endpoints: ["ratings.internal:9080", "ratings-b.internal:9080"]
    dns: { servers: ["10.0.0.53:53", "[fd00::53]:5353"], min_refresh: 2s, max_refresh: 30s }
  - { name: single, endpoints: ["one.internal:80"], dns: { mode: logical } }
  - name: zonal
    endpoints:
      - { address: "127.0.0.1:9201", locality: r1/a }
      - { address: "127.0.0.1:9202", locality: r1/a, healthy: false, weight: 2 }
      - { address: "127.0.0.1:9203", locality: r1/b }
      - { address: "127.0.0.1:9204", locality: r2/c/s1, priority: 1 }
      - { address: "127.0.0.1:9205", priority: 1 }
    locality_lb: { overprovisioning: 2.0, failover: [{ from: r1, to: r2 }] }
  - name: weighted
    endpoints: [{ address: "127.0.0.1:9301", locality: r1/a }, { address: "127.0.0.1:9302", locality: r1/b }]
    locality_lb: { prefer_local: false, weights: { r1/a: 3, r1/b: 1 } }
  - name: shares
    endpoints: [{ address: "127.0.0.1:9401", locality: r1/a }, { address: "127.0.0.1:9402", locality: r1/b }]
    locality_lb: { weights: { r1/a: 1, r1/b: 2 }, distribute: [{ from: "r1/*", to: { "r1/a/*": 70, "r1/b/*": 30 } }] }
  - name: ratings
    endpoints: [{ address: "127.0.0.1:9100", weight: 3 }, "10.0.0.2:80"]
    protocol: http2
    load_balancer: random
  - name: reviews-v1
    endpoints: ["127.0.0.1:9001", "127.0.0.1:9002"]
    circuit_breaker: { max_requests: 100, max_pending: 10, max_retries: 5 }
    outlier_detection: { consecutive_5xx: 4, consecutive_gateway_errors: 2, consecutive_connect_failures: 1, base_ejection: 5s, max_ejection: 1m, max_ejection_percent: 30 }
  - { name: reviews-v2, endpoints: ["127.0.0.1:9003"], load_balancer: round_robin }
  - { name: shadow, endpoints: ["127.0.0.1:9009"], tls: { mode: mutual, identity: "spiffe://demo.local/shadow", certificate: default, trust: default } }
"#,
        )
        .unwrap();
        let resources = from_config(&cfg);
        let services: Vec<Name> = cfg.services.iter().map(|s| s.name.clone()).collect();
        let mut warnings = Vec::new();
        let built = fresh(&resources, &services, &mut warnings).unwrap();
        assert!(built.incomplete.is_empty() && built.missing.is_empty());
        let back = built.config;
        assert!(warnings.is_empty(), "{warnings:?}");
        back.validate().unwrap();
        let mut want = cfg.clone();
        for s in &mut want.services {
            s.hosts = vec![s.name.clone()];
        }
        want.backends.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(back.services, want.services);
        assert_eq!(back.backends, want.backends);
        // The endpoints of one locality hold it once.
        let zonal = back.backends.iter().find(|b| b.name == "zonal").unwrap();
        let locality = |i: usize| zonal.endpoints[i].locality.as_ref().unwrap();
        assert!(crate::config::Shared::same(locality(0), locality(1)));
        assert!(!crate::config::Shared::same(locality(0), locality(2)));
        // And what the client subscribes to follows what the listeners name.
        let w = wanted(&resources);
        assert_eq!(w.routes.len(), 4);
        assert_eq!(w.clusters.len(), 9);
        // DNS clusters carry their names inline: no assignment to follow.
        assert_eq!(w.endpoints.len(), 7);
    }

    #[test]
    fn envoys_hedge_on_per_try_timeout_is_a_fixed_delay_hedge() {
        use envoy_types::pb::envoy::config::route::v3::{
            HedgePolicy, RetryPolicy, Route as XRoute, RouteAction, route, route_action,
            route_match,
        };
        let xr = XRoute {
            r#match: Some(envoy_types::pb::envoy::config::route::v3::RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster("b".into())),
                retry_policy: Some(RetryPolicy {
                    retry_on: "5xx".into(),
                    num_retries: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 2 }),
                    per_try_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                        seconds: 0,
                        nanos: 30_000_000,
                    }),
                    ..Default::default()
                }),
                hedge_policy: Some(HedgePolicy {
                    hedge_on_per_try_timeout: true,
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        };
        let mut warnings = Vec::new();
        let r = routes::route_of(&xr, 0, "rc", &mut Default::default(), &mut warnings).unwrap();
        assert!(r.retry.is_none());
        let h = r.hedge.unwrap();
        assert_eq!(h.attempts, 3);
        assert_eq!(
            h.delay,
            crate::config::HedgeDelay::Fixed(Duration::from_millis(30))
        );
        assert!(
            warnings.iter().any(|w| w.contains("does not also retry")),
            "{warnings:?}"
        );
    }

    #[test]
    fn what_cannot_be_honoured_is_an_error_naming_it() {
        let cfg = Config::from_yaml(
            "services: [{ name: s, routes: [{ to: [b] }] }]\nbackends: [{ name: b, endpoints: ['127.0.0.1:1'] }]",
        )
        .unwrap();
        let mut r = from_config(&cfg);
        r.routes.get_mut("s").unwrap().update(|rc| {
            rc.virtual_hosts[0].routes[0].action =
                Some(route::Action::Redirect(Default::default()));
        });
        let err = fresh(&r, &["s".into()], &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("redirect"), "{err}");
        assert!(
            err.starts_with("RouteConfiguration `s`: virtual_hosts[0].routes[0].action: "),
            "{err}"
        );
        // A missing piece is not an error: the client waits for it, and
        // the service is named as incomplete, not served half-built.
        let mut r = from_config(&cfg);
        r.endpoints.clear();
        let built = fresh(&r, &["s".into(), "t".into()], &mut Vec::new()).unwrap();
        assert!(built.config.services.is_empty() && built.config.backends.is_empty());
        assert_eq!(built.incomplete, ["s"]);
        assert_eq!(built.missing, ["t"]);
    }

    #[test]
    fn faults_come_from_the_route_its_virtual_host_or_the_filter_and_the_rest_is_named() {
        use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
            FaultAbort as XAbort, HttpFault, fault_abort::ErrorType,
        };
        use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
        use envoy_types::pb::google::protobuf::Any;
        let any = |f: &HttpFault| Any {
            type_url: <HttpFault as prost::Name>::type_url(),
            value: f.encode_to_vec(),
        };
        let abort = |error_type| HttpFault {
            abort: Some(XAbort {
                percentage: Some(FractionalPercent {
                    numerator: 25,
                    denominator: 0, // HUNDRED
                }),
                error_type: Some(error_type),
                ..Default::default()
            }),
            ..Default::default()
        };
        let cfg = Config::from_yaml(
            "services: [{ name: s, routes: [{ to: [b] }] }]\nbackends: [{ name: b, endpoints: ['127.0.0.1:1'] }]",
        )
        .unwrap();
        let mut r = from_config(&cfg);
        r.routes.get_mut("s").unwrap().update(|rc| {
            rc.virtual_hosts[0].typed_per_filter_config.insert(
                "envoy.filters.http.fault".into(),
                any(&abort(ErrorType::HttpStatus(503))),
            );
        });
        let mut warnings = Vec::new();
        let built = fresh(&r, &["s".into()], &mut warnings).unwrap();
        let fault = built.config.services[0].routes[0].fault.clone().unwrap();
        let a = fault.abort.unwrap();
        assert_eq!((a.status, a.percent), (503, 25.0));
        assert!(warnings.is_empty(), "{warnings:?}");

        // What the model cannot say is named, not silently dropped.
        r.routes.get_mut("s").unwrap().update(|rc| {
            let route = &mut rc.virtual_hosts[0].routes[0];
            route.typed_per_filter_config.insert(
                "envoy.filters.http.fault".into(),
                any(&abort(ErrorType::GrpcStatus(14))),
            );
            route.typed_per_filter_config.insert(
                "envoy.filters.http.cors".into(),
                Any {
                    type_url:
                        "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
                            .into(),
                    value: Vec::new(),
                },
            );
        });
        let mut warnings = Vec::new();
        fresh(&r, &["s".into()], &mut warnings).unwrap();
        let all = warnings.join("\n");
        assert!(all.contains("gRPC status"), "{all}");
        assert!(all.contains("envoy.filters.http.cors"), "{all}");
    }
}
