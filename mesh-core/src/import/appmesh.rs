//! AWS App Mesh's resources as this mesh's config: virtual nodes are
//! backends, a virtual service is a service whose routes are its router's
//! (or one route to its node), in the routes' priority order. Read from
//! the JSON of `aws appmesh describe-*` (`{"virtualNode": {...}}`) or from
//! the Kubernetes resources of the App Mesh controller
//! (`appmesh.k8s.aws/v1beta2`).

use super::tree::T;
use super::{Doc, Out};
use crate::config::{
    Backend, Endpoint, MtlsMode, PathMatch, Protocol, RetryOn, RetryPolicy, Route, RouteMatch,
    Service, StringMatch, WeightedBackend,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// The describe calls' top-level keys and the kinds they hold.
const DESCRIBED: [(&str, &str, &str); 6] = [
    ("virtualNode", "VirtualNode", "virtualNodeName"),
    ("virtualRouter", "VirtualRouter", "virtualRouterName"),
    ("route", "Route", "routeName"),
    ("virtualService", "VirtualService", "virtualServiceName"),
    ("virtualGateway", "VirtualGateway", "virtualGatewayName"),
    ("mesh", "Mesh", "meshName"),
];

/// The kind a describe call's output holds, if it is one.
pub(super) fn describe_kind(tree: &T) -> Option<&'static str> {
    DESCRIBED
        .iter()
        .find(|(key, _, _)| tree.peek(key).is_some_and(T::is_map))
        .map(|(_, kind, _)| *kind)
}

/// A describe call's output: its kind, mesh and name (not marked read).
pub(super) fn described(tree: &T) -> Option<(&'static str, String, String)> {
    let (key, kind, name_key) = DESCRIBED
        .iter()
        .find(|(k, _, _)| tree.peek(k).is_some_and(T::is_map))?;
    let inner = tree.peek(key)?;
    let text = |k: &str| inner.peek(k).and_then(T::text).unwrap_or_default();
    Some((kind, text("meshName"), text(name_key)))
}

/// A router's routes: priority, the resource, the route's spec and name.
type Routes<'d> = Vec<(Option<u32>, &'d Res<'d>, &'d T, String)>;

/// A resource, wherever it came from: kind, name, spec, and (for routes)
/// the router it belongs to.
struct Res<'d> {
    doc: &'d Doc,
    kind: &'static str,
    name: String,
    spec: Option<&'d T>,
    router: Option<String>,
}

fn resource(d: &Doc) -> Option<Res<'_>> {
    if let Some((key, kind, name_key)) = DESCRIBED.iter().find(|(k, _, _)| d.tree.peek(k).is_some())
    {
        let inner = d.tree.get(key)?;
        let name = inner.get(name_key).and_then(T::text).unwrap_or_default();
        inner.consume_fields(&["meshName", "metadata", "status"]);
        let router = inner.get("virtualRouterName").and_then(T::text);
        return Some(Res {
            doc: d,
            kind,
            name,
            spec: inner.get("spec"),
            router,
        });
    }
    let kind = match d.kind.as_deref()? {
        "VirtualNode" => "VirtualNode",
        "VirtualRouter" => "VirtualRouter",
        "VirtualService" => "VirtualService",
        "VirtualGateway" => "VirtualGateway",
        "GatewayRoute" => "GatewayRoute",
        "Mesh" => "Mesh",
        _ => "?",
    };
    let spec = d.tree.get("spec");
    let name = spec
        .and_then(|s| s.get("awsName"))
        .and_then(T::text)
        .filter(|n| kind == "VirtualService" && !n.is_empty())
        .unwrap_or_else(|| d.name.clone());
    Some(Res {
        doc: d,
        kind,
        name,
        spec,
        router: None,
    })
}

pub(super) fn import(docs: &[Doc], out: &mut Out<'_>) {
    let all: Vec<Res<'_>> = docs.iter().filter_map(resource).collect();
    for r in all.iter().filter(|r| r.kind == "VirtualNode") {
        virtual_node(r, out);
    }
    // Routes by router: those inside a Kubernetes router, and the
    // describe calls' routes naming theirs.
    let mut routers: BTreeMap<String, Routes<'_>> = BTreeMap::new();
    for r in &all {
        match r.kind {
            "VirtualRouter" => {
                let Some(spec) = r.spec else { continue };
                if let Some(l) = spec.get("listeners") {
                    l.consume();
                }
                spec.consume_fields(&["awsName", "meshRef"]);
                routers.entry(r.name.clone()).or_default();
                for rt in spec.get("routes").map(T::items).unwrap_or_default() {
                    let name = rt.get("name").and_then(T::text).unwrap_or_default();
                    let prio = rt.get("priority").and_then(T::u32);
                    routers
                        .entry(r.name.clone())
                        .or_default()
                        .push((prio, r, rt, name));
                }
            }
            "Route" => {
                let Some(spec) = r.spec else { continue };
                let prio = spec.get("priority").and_then(T::u32);
                let router = r.router.clone().unwrap_or_default();
                routers
                    .entry(router)
                    .or_default()
                    .push((prio, r, spec, r.name.clone()));
            }
            _ => {}
        }
    }
    // Lower priorities first; routes without one after all that have one.
    for list in routers.values_mut() {
        list.sort_by_key(|(p, _, _, _)| p.map_or(u64::MAX, u64::from));
    }
    for r in all.iter().filter(|r| r.kind == "VirtualService") {
        virtual_service(r, out, &routers);
    }
    for r in all.iter().filter(|r| {
        !matches!(
            r.kind,
            "VirtualNode" | "VirtualRouter" | "Route" | "VirtualService"
        )
    }) {
        let why = match r.kind {
            "Mesh" => "the mesh itself: its egress filter is `defaults.unknown_hosts` here",
            "VirtualGateway" | "GatewayRoute" => "gateways are proxies; this mesh has none",
            _ => "this kind has no equivalent here",
        };
        out.lose(r.doc, "", r.doc.tree.line(), format!("{}: {why}", r.kind));
        r.doc.tree.consume();
    }
}

/// An App Mesh duration, `{ unit: ms | s, value: N }`.
fn duration(t: &T) -> Option<Duration> {
    let value = t.get("value")?.number()?;
    let unit = match t.get("unit")?.text()?.as_str() {
        "ms" => 1e-3,
        "s" => 1.0,
        _ => return None,
    };
    let secs = value * unit;
    (secs.is_finite() && secs >= 0.0 && secs <= crate::config::MAX_DURATION.as_secs_f64())
        .then(|| Duration::from_secs_f64(secs))
}

/// Reports `r`, a second `what` of a name one already has, whole: the
/// first one read is used.
fn second(r: &Res<'_>, out: &mut Out<'_>, what: &str) {
    let why = format!("a second {what} `{}`: the first one read is used", r.name);
    out.lose(r.doc, "", r.doc.tree.line(), why);
    r.doc.tree.consume();
}

fn virtual_node(r: &Res<'_>, out: &mut Out<'_>) {
    let d = r.doc;
    if out.backends.contains_key(&r.name) {
        return second(r, out, "virtual node");
    }
    let mut b = Backend {
        name: r.name.clone().into(),
        ..Backend::default()
    };
    let Some(spec) = r.spec else {
        out.lose(d, "", d.tree.line(), "a virtual node without a spec".into());
        return;
    };
    spec.consume_fields(&["awsName", "meshRef"]);
    let listeners = spec.get("listeners").map(T::items).unwrap_or_default();
    let mut port = None;
    if let Some(l) = listeners.first() {
        listener(r, out, l, &mut b, &mut port);
    }
    for extra in listeners.iter().skip(1) {
        out.drop_field(
            d,
            extra,
            "a second listener: a backend here is one port; the first listener's is used",
        );
    }
    match spec.get("serviceDiscovery") {
        Some(sd) => match (sd.get("dns"), port) {
            (Some(dns), Some(port)) => {
                let host = dns.get("hostname").and_then(T::text).unwrap_or_default();
                dns.consume_fields(&["responseType", "ipPreference"]);
                b.endpoints.push(Endpoint::new(format!("{host}:{port}")));
                if let Some(p) = spec.get("podSelector") {
                    p.consume();
                }
            }
            (Some(dns), None) => out.drop_field(d, dns, "DNS discovery without a listener port: the node has no endpoint"),
            (None, _) => out.drop_field(d, sd, "Cloud Map discovery is not supported: list the node's endpoints, or use a control plane"),
        },
        None => out.lose(d, "spec.serviceDiscovery", spec.line(), "no service discovery: the node has no endpoint".into()),
    }
    out.drop_if(d, spec, "backends", "an allowlist of the services the node calls: a workload here may call any host (set `defaults.unknown_hosts: refuse` to refuse those no service claims)");
    out.drop_if(
        d,
        spec,
        "backendDefaults",
        "client policy for every backend: set `tls` on each backend (SPIFFE mutual TLS)",
    );
    out.drop_if(
        d,
        spec,
        "logging",
        "access logs are turned on by RUST_LOG=mesh::access=debug",
    );
    out.backends.insert(b.name.to_string(), b);
}

fn listener(r: &Res<'_>, out: &mut Out<'_>, l: &T, b: &mut Backend, port: &mut Option<u16>) {
    let d = r.doc;
    if let Some(pm) = l.get("portMapping") {
        *port = pm
            .get("port")
            .and_then(T::u32)
            .and_then(|p| u16::try_from(p).ok());
        let proto = pm.get("protocol").and_then(T::text).unwrap_or_default();
        b.protocol = match proto.as_str() {
            "http2" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            "http" => Protocol::Http1,
            other => {
                if let Some(t) = pm.peek("protocol") {
                    out.approximate(d, t, format!("a {other} listener: carried over as HTTP/1.1, the protocols this mesh speaks"));
                }
                Protocol::Http1
            }
        };
    }
    if let Some(od) = l.get("outlierDetection") {
        let mut o = crate::config::OutlierDetection::default();
        for (k, v) in od.entries() {
            match k {
                "maxServerErrors" => o.consecutive_5xx = v.u32().unwrap_or(o.consecutive_5xx),
                "maxEjectionPercent" => {
                    o.max_ejection_percent = v.u32().unwrap_or(o.max_ejection_percent)
                }
                "baseEjectionDuration" => match duration(v) {
                    Some(t) => o.base_ejection = t,
                    None => out.drop_field(d, v, "not a duration"),
                },
                "interval" => {
                    v.consume();
                    out.approximate(
                        d,
                        v,
                        "endpoints are judged on every answer, not every interval",
                    );
                }
                _ => out.drop_field(d, v, "not carried over"),
            }
        }
        b.outlier_detection = Some(Box::new(o));
    }
    if let Some(cp) = l.get("connectionPool") {
        let mut cb = crate::config::CircuitBreaker::default();
        for (proto, pool) in cp.entries() {
            for (k, v) in pool.entries() {
                let n = v.u32();
                match (proto, k, n) {
                    ("http", "maxPendingRequests", Some(n)) => cb.max_pending = n,
                    ("http2" | "grpc", "maxRequests", Some(n)) => cb.max_requests = n,
                    _ => out.drop_field(d, v, "connections are not limited per backend here; requests are (circuit_breaker)"),
                }
            }
        }
        out.approximate(d, cp, "App Mesh limits the node's own inbound requests; here each caller limits its requests to the node");
        b.circuit_breaker = Some(cb);
    }
    if let Some(tls) = l.get("tls") {
        let mode = tls.get("mode").and_then(T::text).unwrap_or_default();
        let mtls = match mode.as_str() {
            "STRICT" => Some(MtlsMode::Strict),
            "PERMISSIVE" => Some(MtlsMode::Permissive),
            "DISABLED" => Some(MtlsMode::Disabled),
            _ => None,
        };
        if let Some(mtls) = mtls {
            out.inbound(d, &r.name).mtls = mtls;
            if mtls != MtlsMode::Disabled {
                out.trust_domain
                    .get_or_insert_with(|| out.options.trust_domain.clone());
            }
        }
        for (_, t) in tls.entries() {
            if t.path().ends_with(".mode") {
                continue;
            }
            out.approximate(d, t, format!("the node's certificate and validation are its SPIFFE identity here (run it with MESH_SERVICE={})", r.name));
            t.consume();
        }
    }
    out.drop_if(
        d,
        l,
        "healthCheck",
        "active health checks are not supported; outlier detection ejects endpoints that fail",
    );
    out.drop_if(
        d,
        l,
        "timeout",
        "the node's own inbound timeout: callers' route timeouts apply",
    );
}

fn virtual_service(r: &Res<'_>, out: &mut Out<'_>, routers: &BTreeMap<String, Routes<'_>>) {
    let d = r.doc;
    let Some(spec) = r.spec else { return };
    if out.services.contains_key(&r.name) {
        return second(r, out, "virtual service");
    }
    spec.consume_fields(&["awsName", "meshRef"]);
    let provider = spec.get("provider");
    let named = |t: &T, api: &str, k8s: &str| {
        t.get(api)
            .and_then(T::text)
            .or_else(|| t.get(k8s).and_then(|r| r.get("name")).and_then(T::text))
    };
    let mut routes = Vec::new();
    if let Some(router) = provider.and_then(|p| p.get("virtualRouter")) {
        let name = named(router, "virtualRouterName", "virtualRouterRef").unwrap_or_default();
        let Some(list) = routers.get(&name) else {
            out.lose(
                d,
                router.path(),
                router.line(),
                format!("no virtual router `{name}` among the inputs: the service has no route"),
            );
            return;
        };
        let mut taken = std::collections::BTreeSet::new();
        for (i, (_, rd, rt, rname)) in list.iter().enumerate() {
            let Some(route) = route(rd.doc, out, rt, rname, i) else {
                continue;
            };
            if route
                .name
                .as_ref()
                .is_some_and(|n| !taken.insert(n.clone()))
            {
                let why =
                    format!("a second route `{rname}` of router `{name}`: the first one is used");
                out.lose(rd.doc, rt.path(), rt.line(), why);
                continue;
            }
            routes.push(route);
        }
    } else if let Some(node) = provider.and_then(|p| p.get("virtualNode")) {
        let name = named(node, "virtualNodeName", "virtualNodeRef").unwrap_or_default();
        if !out.backends.contains_key(&name) {
            out.lose(
                d,
                node.path(),
                node.line(),
                format!("no virtual node `{name}` among the inputs: the service has no route"),
            );
            return;
        }
        routes.push(Route {
            to: vec![WeightedBackend {
                backend: name.into(),
                weight: 100,
            }],
            ..Route::default()
        });
    } else {
        out.lose(
            d,
            "spec.provider",
            spec.line(),
            "no provider: nothing answers the service".into(),
        );
        return;
    }
    if routes.is_empty() {
        out.lose(
            d,
            "spec.provider",
            spec.line(),
            "no route of its router could be carried over: the service is not claimed".into(),
        );
        return;
    }
    out.services.insert(
        r.name.clone(),
        Service {
            name: r.name.clone().into(),
            hosts: Vec::new(),
            routes,
            classifier: None,
        },
    );
}

/// One route (`spec` of a route: `httpRoute`, `http2Route`, `grpcRoute`).
fn route(d: &Doc, out: &mut Out<'_>, rt: &T, name: &str, i: usize) -> Option<Route> {
    let (kind, body) = ["httpRoute", "http2Route", "grpcRoute"]
        .iter()
        .find_map(|k| rt.get(k).map(|b| (*k, b)))
        .or_else(|| {
            out.drop_if(d, rt, "tcpRoute", "TCP routes are not supported");
            None
        })?;
    let mut route = Route {
        name: (!name.is_empty())
            .then(|| name.into())
            .or_else(|| Some(format!("route-{i}").into())),
        ..Route::default()
    };
    if let Some(m) = body.get("match") {
        match route_match(d, out, m, kind == "grpcRoute") {
            Some(m) => route.matches.push(m),
            None => {
                out.lose(d, body.path(), body.line(), "its match holds a condition this mesh cannot express; matching everything instead would take others' traffic, so the route is dropped".into());
                body.consume();
                return None;
            }
        }
    }
    let action = body.get("action")?;
    for t in action
        .get("weightedTargets")
        .map(T::items)
        .unwrap_or_default()
    {
        let node = t.get("virtualNode").and_then(T::text).or_else(|| {
            t.get("virtualNodeRef")
                .and_then(|r| r.get("name"))
                .and_then(T::text)
        });
        let weight = t.get("weight").and_then(T::u32).unwrap_or(0);
        if let Some(p) = t.get("port") {
            p.consume();
        }
        match node {
            Some(n) if out.backends.contains_key(&n) => route.to.push(WeightedBackend {
                backend: n.into(),
                weight,
            }),
            Some(n) => out.lose(
                d,
                t.path(),
                t.line(),
                format!("no virtual node `{n}` among the inputs: the target is dropped"),
            ),
            None => out.drop_field(
                d,
                t,
                "a target named by ARN: import its virtual node and name it",
            ),
        }
    }
    if route.to.iter().all(|w| w.weight == 0) {
        out.lose(
            d,
            body.path(),
            body.line(),
            "no target with a weight: the route is dropped".into(),
        );
        body.consume();
        return None;
    }
    if let Some(rp) = body.get("retryPolicy") {
        route.retry = retry(d, out, rp).map(crate::config::Shared::new);
    }
    if let Some(to) = body.get("timeout") {
        if let Some(pr) = to.get("perRequest") {
            match duration(pr) {
                Some(z) if !z.is_zero() => route.timeout = Some(z),
                _ => out.approximate(d, pr, "no timeout: the mesh's default timeout applies"),
            }
        }
        out.drop_if(d, to, "idle", "idle timeouts of a route are not supported");
    }
    Some(route)
}

fn string_match(m: &T) -> Option<StringMatch> {
    let (k, v) = m.entries().next()?;
    let s = v.text()?;
    match k {
        "exact" => Some(StringMatch::Exact(s)),
        "prefix" => Some(StringMatch::Prefix(s)),
        "suffix" => Some(StringMatch::Regex(format!(".*{}", regex::escape(&s)))),
        "regex" => Some(StringMatch::Regex(s)),
        _ => None,
    }
}

/// A route's match, or none when it holds a condition this mesh cannot
/// express (reported).
fn route_match(d: &Doc, out: &mut Out<'_>, m: &T, grpc: bool) -> Option<RouteMatch> {
    let mut rm = RouteMatch::default();
    let mut whole = true;
    let (mut service, mut method) = (None, None);
    for (k, v) in m.entries() {
        let ok = match (k, grpc) {
            ("prefix", false) => {
                rm.path = v.text().map(PathMatch::Prefix);
                rm.path.is_some()
            }
            ("path", false) => match v.entries().next() {
                Some(("exact", p)) => {
                    rm.path = p.text().map(PathMatch::Exact);
                    rm.path.is_some()
                }
                Some(("regex", p)) => {
                    rm.path = p.text().map(PathMatch::Regex);
                    rm.path.is_some()
                }
                _ => false,
            },
            ("method", false) => {
                rm.methods.extend(v.text());
                true
            }
            ("serviceName", true) => {
                service = v.text();
                true
            }
            ("methodName", true) => {
                method = v.text();
                true
            }
            ("headers", false) | ("metadata", true) => v.items().iter().all(|h| header(h, &mut rm)),
            ("queryParameters", false) => v.items().iter().all(|q| {
                let Some(name) = q.get("name").and_then(T::text) else {
                    return false;
                };
                match q.get("match").map(string_match) {
                    Some(Some(s @ StringMatch::Exact(_))) => {
                        rm.query.insert(name, s);
                        true
                    }
                    None => {
                        rm.query.insert(name, StringMatch::Present(true));
                        true
                    }
                    _ => false,
                }
            }),
            _ => false,
        };
        if !ok {
            v.consume();
            out.lose(
                d,
                v.path(),
                v.line(),
                "a match condition this mesh cannot express".into(),
            );
            whole = false;
        }
    }
    match (service, method) {
        (Some(s), Some(m)) => rm.path = Some(PathMatch::Exact(format!("/{s}/{m}"))),
        (Some(s), None) => rm.path = Some(PathMatch::Prefix(format!("/{s}/"))),
        _ => {}
    }
    whole.then_some(rm)
}

/// A header (or gRPC metadata) match into `rm`; false when it cannot be
/// expressed.
fn header(h: &T, rm: &mut RouteMatch) -> bool {
    let Some(name) = h.get("name").and_then(T::text) else {
        return false;
    };
    let invert = h.get("invert").and_then(T::bool).unwrap_or(false);
    let m = match h.get("match") {
        None => Some(StringMatch::Present(!invert)),
        Some(_) if invert => None,
        Some(t) => string_match(t),
    };
    match m {
        Some(m) => {
            rm.headers.insert(name.to_ascii_lowercase(), m);
            true
        }
        None => false,
    }
}

fn retry(d: &Doc, out: &mut Out<'_>, rp: &T) -> Option<RetryPolicy> {
    let retries = rp.get("maxRetries").and_then(T::u32).unwrap_or(0);
    let mut p = RetryPolicy {
        attempts: super::attempts(out, d, rp.peek("maxRetries"), retries),
        on: Vec::new(),
        ..RetryPolicy::default()
    };
    if let Some(t) = rp.get("perRetryTimeout") {
        p.per_try_timeout = duration(t).filter(|z| !z.is_zero());
    }
    for key in ["httpRetryEvents", "tcpRetryEvents", "grpcRetryEvents"] {
        for e in rp.get(key).map(T::items).unwrap_or_default() {
            let name = e.text().unwrap_or_default();
            let on = match name.as_str() {
                "server-error" => RetryOn::FiveXx,
                "gateway-error" => RetryOn::GatewayError,
                "stream-error" => RetryOn::Reset,
                "connection-error" => RetryOn::ConnectFailure,
                "client-error" => {
                    p.retriable_status_codes.push(409);
                    RetryOn::RetriableStatusCodes
                }
                other => match RetryOn::ALL.iter().find(|(n, _)| *n == other) {
                    Some((_, v)) => *v,
                    None => {
                        out.drop_field(
                            d,
                            e,
                            format!("`{other}` is not an event this mesh retries on"),
                        );
                        continue;
                    }
                },
            };
            if !p.on.contains(&on) {
                p.on.push(on);
            }
        }
    }
    (retries > 0 && !p.on.is_empty()).then_some(p)
}
