//! Istio's networking and security resources as this mesh's config.
//!
//! Kubernetes hosts are named in full (`reviews` in namespace `default` is
//! the service `reviews.default.svc.cluster.local`, which also claims
//! `reviews`, `reviews.default` and `reviews.default.svc`); a destination
//! is a backend named by its host (and `/subset`), whose endpoint is the
//! host's DNS name (or a `ServiceEntry`'s endpoints) with the destination's
//! port, and which takes its `DestinationRule`'s traffic policy.

use super::tree::T;
use super::{Doc, Out, go_duration};
use crate::config::{
    AuthzAction, AuthzRule, AuthzTarget, Backend, BackendTls, BackendTlsMode, Endpoint, Fault,
    FaultAbort, FaultDelay, LoadBalancer, Mirror, MtlsMode, Name, PathMatch, Protocol, RetryOn,
    RetryPolicy, Route, RouteMatch, Service, StringMatch, WeightedBackend,
};
use std::collections::{BTreeMap, BTreeSet};

const KINDS: [&str; 5] = [
    "VirtualService",
    "DestinationRule",
    "ServiceEntry",
    "PeerAuthentication",
    "AuthorizationPolicy",
];

pub(super) fn import(docs: &[Doc], out: &mut Out<'_>) {
    let of = |kind: &'static str| docs.iter().filter(move |d| d.kind.as_deref() == Some(kind));
    let mut hosts = Hosts::default();
    for d in of("ServiceEntry") {
        service_entry(d, out, &mut hosts);
    }
    for d in of("DestinationRule") {
        let Some(spec) = d.tree.get("spec") else {
            continue;
        };
        let Some(host) = spec.get("host").and_then(T::text) else {
            out.lose(
                d,
                "spec.host",
                spec.line(),
                "no host: the rule applies to nothing".into(),
            );
            continue;
        };
        let host = fqdn(&host, &d.namespace, out);
        if hosts.rules.contains_key(&host) {
            out.drop_field(
                d,
                spec,
                format!("a second DestinationRule for `{host}`: the first one read is used"),
            );
            continue;
        }
        hosts.rules.insert(host, (d, spec));
    }
    // The port each host is called on, from the first destination that
    // names one (a mirror or a later route may leave it out).
    for d in of("VirtualService") {
        let http = d.tree.peek("spec").and_then(|s| s.peek("http"));
        for r in http.map(T::items_unread).unwrap_or_default() {
            let dests = r.peek("route").map(T::items_unread).unwrap_or_default();
            let dests = dests.into_iter().filter_map(|t| t.peek("destination"));
            for to in dests.chain(r.peek("mirror")) {
                let host = to.peek("host").and_then(T::peek_text);
                let port = to
                    .peek("port")
                    .and_then(|p| p.peek("number"))
                    .and_then(T::peek_text);
                if let (Some(h), Some(p)) = (host, port.and_then(|p| p.parse::<u16>().ok())) {
                    hosts.ports.entry(fqdn(&h, &d.namespace, out)).or_insert(p);
                }
            }
        }
    }
    for d in of("VirtualService") {
        virtual_service(d, out, &mut hosts);
    }
    // Hosts a rule or an entry configures and no virtual service routes:
    // a service with one route to the host's backend, so the policy applies
    // to calls of the host.
    let rules: Vec<(String, &Doc, &T)> = hosts
        .rules
        .iter()
        .map(|(h, (d, spec))| (h.clone(), *d, *spec))
        .collect();
    for (host, d, spec) in rules {
        if let Some(subsets) = spec.get("subsets") {
            for s in subsets.items() {
                if let Some(name) = s.get("name").and_then(T::text) {
                    hosts.backend(out, d, &host, Some(&name), None, s);
                }
            }
        }
        default_service(out, &mut hosts, d, &host, spec);
    }
    let entries: Vec<(String, &Doc, &T)> = hosts
        .entries
        .iter()
        .map(|(h, e)| (h.clone(), e.doc, e.at))
        .collect();
    for (host, d, at) in entries {
        default_service(out, &mut hosts, d, &host, at);
    }
    shared_aliases(out, &hosts);
    let known = known_workloads(docs);
    for d in of("PeerAuthentication") {
        peer_authentication(d, out, &known);
    }
    let mut under_allow = BTreeSet::new();
    for d in of("AuthorizationPolicy") {
        under_allow.extend(authorization_policy(d, out, &known));
    }
    deny_unless_allowed(out, &under_allow);
    for d in docs
        .iter()
        .filter(|d| !KINDS.contains(&d.kind.as_deref().unwrap_or("")))
    {
        let kind = d.kind.as_deref().unwrap_or("?");
        let why = match kind {
            "Gateway" => "ingress and egress gateways are proxies; this mesh has none",
            "Sidecar" => "sidecar scoping: a workload here is given the config it uses",
            "EnvoyFilter" | "WasmPlugin" => "Envoy extensions have no equivalent",
            _ => "this kind has no equivalent here",
        };
        out.lose(d, "", d.tree.line(), format!("{kind}: {why}"));
        d.tree.consume();
    }
}

/// What is known of hosts: `ServiceEntry` ports and endpoints, the
/// destination rules by host, and the backends made.
#[derive(Default)]
struct Hosts<'d> {
    entries: BTreeMap<String, Entry<'d>>,
    rules: BTreeMap<String, (&'d Doc, &'d T)>,
    /// The port each host is called on, from the first destination
    /// naming one.
    ports: BTreeMap<String, u16>,
    /// The backends made, and the port each is called on.
    made: BTreeMap<String, u16>,
    /// Hosts whose endpoints were said to be their DNS name.
    noted: BTreeSet<String>,
    /// The resource each service was made from.
    origin: BTreeMap<String, &'d Doc>,
}

/// Shorter names two services would claim (`reviews` of namespaces `a`
/// and `b`) are claimed by neither: the full names stay.
fn shared_aliases(out: &mut Out<'_>, hosts: &Hosts<'_>) {
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for s in out.services.values() {
        for h in s.hosts.iter().chain(std::iter::once(&s.name)) {
            *count.entry(h.to_string()).or_default() += 1;
        }
    }
    let shared: BTreeSet<String> = count
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(h, _)| h)
        .collect();
    if shared.is_empty() {
        return;
    }
    let mut said = Vec::new();
    for s in out.services.values_mut() {
        let removed: Vec<String> = s
            .hosts
            .iter()
            .filter(|h| shared.contains(h.as_str()))
            .map(|h| h.to_string())
            .collect();
        if !removed.is_empty() {
            s.hosts.retain(|h| !shared.contains(h.as_str()));
            said.push((s.name.clone(), removed));
        }
    }
    for (name, removed) in said {
        if let Some(d) = hosts.origin.get(name.as_str()) {
            let line = d.tree.peek("spec").and_then(T::line);
            out.push_approximate(d, "spec", line, format!("`{name}` does not claim {}: another service would too; call it by its full name", removed.join(", ")));
        }
    }
}

struct Entry<'d> {
    doc: &'d Doc,
    at: &'d T,
    /// Port number and protocol, the first being the default.
    ports: Vec<(u16, Protocol, String)>,
    /// Endpoint addresses and their port by port name.
    endpoints: Vec<(String, BTreeMap<String, u16>)>,
}

/// `host` in full: a Kubernetes short name in `namespace` is
/// `name.namespace.svc.<cluster domain>`; anything with a dot is as written.
fn fqdn(host: &str, namespace: &str, out: &Out<'_>) -> String {
    let host = host.trim().to_ascii_lowercase();
    if host.contains('.') {
        host
    } else {
        format!("{host}.{namespace}.svc.{}", out.options.cluster_domain)
    }
}

/// The shorter names a Kubernetes host is called by in its namespace.
fn aliases(host: &str, out: &Out<'_>) -> Vec<String> {
    let suffix = format!(".svc.{}", out.options.cluster_domain);
    let Some(base) = host.strip_suffix(&suffix) else {
        return Vec::new();
    };
    let mut v = vec![format!("{base}.svc"), base.to_owned()];
    if let Some((name, _)) = base.split_once('.') {
        v.push(name.to_owned());
    }
    v
}

fn protocol_of(p: &str) -> Protocol {
    match p.to_ascii_uppercase().as_str() {
        "HTTP2" => Protocol::Http2,
        "GRPC" | "GRPC-WEB" => Protocol::Grpc,
        _ => Protocol::Http1,
    }
}

fn service_entry<'d>(d: &'d Doc, out: &mut Out<'_>, hosts: &mut Hosts<'d>) {
    let Some(spec) = d.tree.get("spec") else {
        return;
    };
    let mut ports = Vec::new();
    for p in spec.get("ports").map(T::items).unwrap_or_default() {
        let number = p
            .get("number")
            .and_then(T::u32)
            .and_then(|n| u16::try_from(n).ok());
        let protocol = p.get("protocol").and_then(T::text).unwrap_or_default();
        let name = p.get("name").and_then(T::text).unwrap_or_default();
        out.drop_if(
            d,
            p,
            "targetPort",
            "a target port different from the port: endpoints are called on the port",
        );
        match number {
            Some(n) if n > 0 => {
                if matches!(
                    protocol.to_ascii_uppercase().as_str(),
                    "TCP" | "TLS" | "MONGO" | "MYSQL" | "REDIS"
                ) {
                    out.approximate(d, p, format!("a {protocol} port: carried over as HTTP/1.1, the protocols this mesh speaks"));
                }
                ports.push((n, protocol_of(&protocol), name));
            }
            _ => out.lose(d, p.path(), p.line(), "no port number".into()),
        }
    }
    let mut endpoints = Vec::new();
    for e in spec.get("endpoints").map(T::items).unwrap_or_default() {
        let Some(address) = e.get("address").and_then(T::text) else {
            out.drop_field(
                d,
                e,
                "an endpoint without an address (a Unix socket or a network) is not carried over",
            );
            continue;
        };
        let mut by_name = BTreeMap::new();
        if let Some(ps) = e.get("ports") {
            for (name, t) in ps.entries() {
                if let Some(n) = t.u32().and_then(|n| u16::try_from(n).ok()) {
                    by_name.insert(name.to_owned(), n);
                }
            }
        }
        for key in ["labels", "locality", "weight", "network", "serviceAccount"] {
            if let Some(t) = e.get(key) {
                if key == "labels" {
                    t.consume();
                } else {
                    out.drop_field(d, t, format!("an endpoint's {key} is not carried over"));
                }
            }
        }
        endpoints.push((address, by_name));
    }
    if let Some(r) = spec.get("resolution") {
        let how = r.text().unwrap_or_default();
        if how == "NONE" && endpoints.is_empty() {
            out.approximate(d, r, "resolution NONE (pass through to the address called): the host's name is looked up instead");
        }
    }
    if let Some(l) = spec.get("location") {
        l.consume();
    }
    out.drop_if(
        d,
        spec,
        "exportTo",
        "visibility by namespace: every workload given this config sees it",
    );
    out.drop_if(
        d,
        spec,
        "workloadSelector",
        "endpoints selected by workload labels: list them",
    );
    out.drop_if(
        d,
        spec,
        "subjectAltNames",
        "set the backend's tls identities",
    );
    for h in spec.get("hosts").map(T::items).unwrap_or_default() {
        let Some(host) = h.text() else { continue };
        if host.contains('*') {
            out.drop_field(d, h, "wildcard hosts are not supported: name each host");
            continue;
        }
        let host = fqdn(&host, &d.namespace, out);
        if hosts.entries.contains_key(&host) {
            out.drop_field(
                d,
                h,
                format!("a second ServiceEntry for `{host}`: the first one read is used"),
            );
            continue;
        }
        hosts.entries.insert(
            host,
            Entry {
                doc: d,
                at: h,
                ports: ports.clone(),
                endpoints: endpoints.clone(),
            },
        );
    }
}

impl<'d> Hosts<'d> {
    /// The backend for `host` (and `subset`, `port`), made if new with the
    /// host's destination rule applied; `at` (in `d`) is where it is named.
    fn backend(
        &mut self,
        out: &mut Out<'_>,
        d: &Doc,
        host: &str,
        subset: Option<&str>,
        port: Option<u16>,
        at: &T,
    ) -> String {
        let name = match subset {
            Some(s) => format!("{host}/{s}"),
            None => host.to_owned(),
        };
        let entry = self.entries.get(host);
        let port = port
            .or_else(|| entry.and_then(|e| e.ports.first().map(|p| p.0)))
            .or_else(|| self.ports.get(host).copied());
        if let Some(&made) = self.made.get(&name) {
            if port.is_some_and(|p| p != made) {
                out.approximate(
                    d,
                    at,
                    format!("another port of `{host}`: backend `{name}` is called on port {made}"),
                );
            }
            return name;
        }
        let port = port.unwrap_or_else(|| {
            let p = out.options.default_port;
            out.approximate(d, at, format!("no port given: port {p} is called"));
            p
        });
        self.made.insert(name.clone(), port);
        let mut b = Backend {
            name: name.clone().into(),
            ..Backend::default()
        };
        match entry.filter(|e| !e.endpoints.is_empty()) {
            Some(e) => {
                let port_name = e.ports.iter().find(|p| p.0 == port).map(|p| p.2.clone());
                for (address, by_name) in &e.endpoints {
                    let p = port_name
                        .as_ref()
                        .and_then(|n| by_name.get(n))
                        .copied()
                        .unwrap_or(port);
                    b.endpoints.push(endpoint(address, p));
                }
            }
            None => {
                b.endpoints.push(endpoint(host, port));
                if entry.is_none() && self.noted.insert(host.to_owned()) {
                    out.approximate(d, at, format!("endpoints of `{host}`: its DNS name (connections balanced by whatever answers it, as kube-proxy does), over HTTP/1.1; list the pods, or use a control plane, for per-request balancing"));
                }
            }
        }
        if let Some(p) = entry.and_then(|e| e.ports.iter().find(|p| p.0 == port)) {
            b.protocol = p.1;
        }
        if let Some((rd, spec)) = self.rules.get(host).copied() {
            if let Some(tp) = spec.get("trafficPolicy") {
                traffic_policy(out, rd, tp, &mut b);
            }
            if let Some(s) = subset {
                let found = spec
                    .peek("subsets")
                    .map(T::items)
                    .unwrap_or_default()
                    .into_iter()
                    .find(|t| t.peek("name").and_then(T::text).as_deref() == Some(s));
                match found {
                    Some(t) => {
                        t.get("name");
                        if let Some(labels) = t.get("labels") {
                            let l: Vec<String> = labels
                                .entries()
                                .map(|(k, v)| format!("{k}={}", v.text().unwrap_or_default()))
                                .collect();
                            out.approximate(rd, labels, format!("subset `{s}` selects pods by labels ({}): its backend `{name}` has the whole host's endpoints; list the subset's pods as its endpoints", l.join(", ")));
                        }
                        if let Some(tp) = t.get("trafficPolicy") {
                            traffic_policy(out, rd, tp, &mut b);
                        }
                    }
                    None => out.approximate(d, at, format!("no DestinationRule defines subset `{s}` of `{host}`: its backend has the whole host's endpoints")),
                }
            }
        } else if let Some(s) = subset {
            out.approximate(d, at, format!("no DestinationRule defines subset `{s}` of `{host}`: its backend has the whole host's endpoints"));
        }
        out.backends.insert(name.clone(), b);
        name
    }
}

fn endpoint(host: &str, port: u16) -> Endpoint {
    let address = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Endpoint::new(address)
}

/// A destination rule's (or subset's) traffic policy, onto `b`.
fn traffic_policy(out: &mut Out<'_>, d: &Doc, tp: &T, b: &mut Backend) {
    if let Some(lb) = tp.get("loadBalancer") {
        load_balancer(out, d, lb, b);
    }
    if let Some(cp) = tp.get("connectionPool") {
        let mut cb = b.circuit_breaker.clone().unwrap_or_default();
        if let Some(http) = cp.get("http") {
            for (k, v) in http.entries() {
                match k {
                    "http1MaxPendingRequests" => set(out, d, v, &mut cb.max_pending),
                    "http2MaxRequests" => set(out, d, v, &mut cb.max_requests),
                    "maxRetries" => set(out, d, v, &mut cb.max_retries),
                    _ => {
                        out.drop_field(d, v, "not carried over: this mesh pools connections itself")
                    }
                }
            }
        }
        out.drop_if(
            d,
            cp,
            "tcp",
            "TCP pool settings: requests are limited (circuit_breaker), connections are not",
        );
        b.circuit_breaker = Some(cb);
    }
    if let Some(od) = tp.get("outlierDetection") {
        let mut o = b.outlier_detection.as_deref().cloned().unwrap_or_default();
        for (k, v) in od.entries() {
            match k {
                "consecutive5xxErrors" => set(out, d, v, &mut o.consecutive_5xx),
                "consecutiveGatewayErrors" | "consecutiveErrors" => {
                    set(out, d, v, &mut o.consecutive_gateway_errors);
                }
                "consecutiveLocalOriginFailures" => {
                    set(out, d, v, &mut o.consecutive_connect_failures)
                }
                "splitExternalLocalOriginErrors" => {}
                "baseEjectionTime" => match v.text().as_deref().and_then(go_duration) {
                    Some(t) => o.base_ejection = t,
                    None => out.drop_field(d, v, "not a duration"),
                },
                "maxEjectionPercent" => set(out, d, v, &mut o.max_ejection_percent),
                "interval" => out.approximate(
                    d,
                    v,
                    "endpoints are judged on every answer, not every interval",
                ),
                _ => out.drop_field(d, v, "not carried over"),
            }
        }
        b.outlier_detection = Some(Box::new(o));
    }
    if let Some(tls) = tp.get("tls") {
        backend_tls(out, d, tls, b);
    }
    out.drop_if(
        d,
        tp,
        "portLevelSettings",
        "per-port policy: a backend here is one port; the rule's own policy applies",
    );
}

fn set(out: &mut Out<'_>, d: &Doc, v: &T, to: &mut u32) {
    match v.u32() {
        Some(n) => *to = n,
        None => out.drop_field(d, v, "not a number from 0 to 4294967295"),
    }
}

fn load_balancer(out: &mut Out<'_>, d: &Doc, lb: &T, b: &mut Backend) {
    if let Some(simple) = lb.get("simple").and_then(|t| t.text().map(|s| (t, s))) {
        let (t, s) = simple;
        b.load_balancer = match s.as_str() {
            "ROUND_ROBIN" => LoadBalancer::RoundRobin,
            "RANDOM" => LoadBalancer::Random,
            "UNSPECIFIED" => LoadBalancer::P2cEwma,
            "LEAST_REQUEST" | "LEAST_CONN" => {
                out.approximate(d, t, format!("{s}: the power of two choices over latency (p2c_ewma), which also prefers the less loaded"));
                LoadBalancer::P2cEwma
            }
            other => {
                out.drop_field(d, t, format!("{other} has no equivalent: p2c_ewma is used"));
                LoadBalancer::P2cEwma
            }
        };
    }
    if let Some(ch) = lb.get("consistentHash") {
        let header = ch.get("httpHeaderName").and_then(T::text);
        let maglev = ch.get("maglev").is_some();
        for key in ["ringHash", "maglev", "minimumRingSize"] {
            if let Some(t) = ch.get(key) {
                if !t.is_empty() {
                    out.approximate(d, t, "the ring or table size is the mesh's own");
                }
                t.consume();
            }
        }
        match header {
            Some(header) if maglev => b.load_balancer = LoadBalancer::Maglev { header },
            Some(header) => b.load_balancer = LoadBalancer::RingHash { header },
            None => {
                for (_, t) in ch.entries() {
                    if !matches!(
                        t.path().rsplit('.').next(),
                        Some("ringHash" | "maglev" | "minimumRingSize")
                    ) {
                        out.drop_field(d, t, "hashing on a cookie, the source address or a query parameter is not supported (a header is)");
                    }
                }
            }
        }
    }
    for key in ["localityLbSetting", "warmupDurationSecs", "warmup"] {
        if let Some(t) = lb.get(key) {
            out.drop_field(d, t, "not carried over");
        }
    }
}

fn backend_tls(out: &mut Out<'_>, d: &Doc, tls: &T, b: &mut Backend) {
    let mode = tls.get("mode").and_then(T::text).unwrap_or_default();
    match mode.as_str() {
        "DISABLE" | "" => b.tls = None,
        "ISTIO_MUTUAL" => {
            let td = out.options.trust_domain.clone();
            let ns = b.endpoints.first().and_then(|e| {
                let host = e.address.rsplit_once(':')?.0;
                let rest = host.strip_suffix(&format!(".svc.{}", out.options.cluster_domain))?;
                Some(rest.split_once('.')?.1.to_owned())
            });
            let pattern = match &ns {
                Some(ns) => format!("spiffe://{td}/ns/{ns}/*"),
                None => format!("spiffe://{td}/*"),
            };
            // SPIFFE subject alt names, when given, say exactly who.
            let exact = tls
                .peek("subjectAltNames")
                .map(T::items_unread)
                .unwrap_or_default()
                .iter()
                .any(|s| s.peek_text().is_some_and(|s| s.starts_with("spiffe://")));
            if !exact {
                let t = tls.peek("mode").unwrap_or(tls);
                out.approximate(d, t, format!("ISTIO_MUTUAL: mutual TLS accepting any identity matching `{pattern}` (Istio checks the service's own accounts); narrow it to the server's SPIFFE ID"));
            }
            b.tls = Some(Box::new(BackendTls {
                mode: BackendTlsMode::Mutual,
                identities: vec![pattern],
                ..BackendTls::default()
            }));
            out.trust_domain = Some(td);
        }
        other => {
            if let Some(t) = tls.peek("mode") {
                out.drop_field(d, t, format!("{other}: TLS with certificate files toward a backend is not supported; only SPIFFE mutual TLS"));
            }
            tls.consume();
            return;
        }
    }
    if let Some(sni) = tls.get("sni").and_then(T::text)
        && let Some(t) = b.tls.as_mut()
    {
        t.sni = Some(sni);
    }
    if let Some(sans) = tls.get("subjectAltNames") {
        let mut ids = Vec::new();
        for s in sans.items() {
            match s.text() {
                Some(id) if id.starts_with("spiffe://") => ids.push(id),
                _ => out.drop_field(d, s, "only SPIFFE IDs are verified"),
            }
        }
        if let (false, Some(t)) = (ids.is_empty(), b.tls.as_mut()) {
            t.identities = ids;
        }
    }
}

fn virtual_service<'d>(d: &'d Doc, out: &mut Out<'_>, hosts: &mut Hosts<'d>) {
    let Some(spec) = d.tree.get("spec") else {
        return;
    };
    let mut names = Vec::new();
    for h in spec.get("hosts").map(T::items).unwrap_or_default() {
        match h.text() {
            Some(host) if host.contains('*') => {
                out.drop_field(d, h, "wildcard hosts are not supported: name each host");
            }
            Some(host) => names.push(fqdn(&host, &d.namespace, out)),
            None => {}
        }
    }
    let Some(name) = names.first().cloned() else {
        out.lose(
            d,
            "spec.hosts",
            spec.line(),
            "no host this mesh can claim: nothing routes to it".into(),
        );
        spec.consume();
        return;
    };
    if let Some(g) = spec.get("gateways") {
        let list: Vec<String> = g.items().iter().filter_map(|t| t.text()).collect();
        if list.iter().any(|g| g != "mesh") {
            out.drop_field(
                d,
                g,
                "routes for gateways are not carried over; those for the mesh (sidecars) are",
            );
        }
    }
    out.drop_if(
        d,
        spec,
        "exportTo",
        "visibility by namespace: every workload given this config sees it",
    );
    if out.services.contains_key(&name) {
        out.drop_field(
            d,
            spec,
            format!("a second VirtualService for `{name}`: the first one read is used"),
        );
        return;
    }
    let mut routes = Vec::new();
    let mut taken = BTreeSet::new();
    for r in spec.get("http").map(T::items).unwrap_or_default() {
        if let Some(route) = http_route(d, out, hosts, r) {
            if let Some(n) = &route.name
                && !taken.insert(n.clone())
            {
                out.drop_field(d, r, format!("a second route named `{n}`"));
                continue;
            }
            routes.push(route);
        }
    }
    if routes.is_empty() {
        out.lose(
            d,
            "spec.http",
            spec.line(),
            "no HTTP route could be carried over: the host is not claimed".into(),
        );
        return;
    }
    let mut claimed = Vec::new();
    for h in &names {
        claimed.push(h.clone());
        claimed.extend(aliases(h, out));
    }
    claimed.retain(|h| *h != name);
    claimed.dedup();
    hosts.origin.insert(name.clone(), d);
    out.services.insert(
        name.clone(),
        Service {
            name: name.into(),
            hosts: claimed.into_iter().map(Name::from).collect(),
            routes,
            classifier: None,
        },
    );
}

fn http_route(d: &Doc, out: &mut Out<'_>, hosts: &mut Hosts<'_>, r: &T) -> Option<Route> {
    let mut route = Route {
        name: r.get("name").and_then(T::text).map(Name::from),
        ..Route::default()
    };
    if let Some(ms) = r.get("match") {
        let written = ms.items();
        for m in &written {
            if let Some(m) = route_match(d, out, m) {
                route.matches.push(m);
            }
        }
        if !written.is_empty() && route.matches.is_empty() {
            out.lose(d, r.path(), r.line(), "none of the route's matches could be carried over; matching everything instead would take others' traffic, so the route is dropped".into());
            r.consume();
            return None;
        }
    }
    let Some(dests) = r.get("route") else {
        out.lose(d, r.path(), r.line(), "a route that sends nowhere (a redirect, a direct response, a delegate) is not carried over".into());
        r.consume();
        return None;
    };
    let dests = dests.items();
    for dest in &dests {
        let Some(to) = dest.get("destination") else {
            continue;
        };
        let backend = destination(d, out, hosts, to)?;
        let weight = match dest.get("weight") {
            Some(w) => w.u32().unwrap_or(0),
            None if dests.len() == 1 => 100,
            None => 0,
        };
        out.drop_if(d, dest, "headers", "header manipulation is not supported");
        route.to.push(WeightedBackend {
            backend: backend.into(),
            weight,
        });
    }
    if route.to.iter().all(|w| w.weight == 0) {
        out.lose(
            d,
            r.path(),
            r.line(),
            "no destination has a weight: the route is dropped".into(),
        );
        r.consume();
        return None;
    }
    if let Some(t) = r.get("timeout") {
        match t.text().as_deref().and_then(go_duration) {
            // Istio's `0s` is no timeout; this mesh always has one.
            Some(z) if z.is_zero() => {
                out.approximate(d, t, "no timeout: the mesh's default timeout applies")
            }
            Some(z) => route.timeout = Some(z),
            None => out.drop_field(d, t, "not a duration"),
        }
    }
    route.retry = match r.get("retries") {
        Some(t) => retries(d, out, t),
        None => Some(istio_default_retry()),
    }
    .map(crate::config::Shared::new);
    if let Some(f) = r.get("fault") {
        route.fault = fault(d, out, f).map(Box::new);
    }
    let mirror = r
        .get("mirror")
        .map(|m| (m, r.get("mirrorPercentage"), r.get("mirror_percent")))
        .or_else(|| {
            let all = r.get("mirrors")?.items();
            for extra in all.iter().skip(1) {
                out.drop_field(d, extra, "one mirror per route");
            }
            let first = *all.first()?;
            Some((first.get("destination")?, first.get("percentage"), None))
        });
    if let Some((m, pct, old_pct)) = mirror
        && let Some(backend) = destination(d, out, hosts, m)
    {
        let percent = pct
            .and_then(|p| p.get("value"))
            .and_then(T::number)
            .or_else(|| old_pct.and_then(T::number))
            .unwrap_or(100.0);
        route.mirror = Some(Box::new(Mirror {
            backend: backend.into(),
            percent,
        }));
    }
    out.drop_if(d, r, "headers", "header manipulation is not supported");
    Some(route)
}

/// Istio's retry policy for a route that sets none: two retries on
/// connect failures, refused streams, `unavailable`, `cancelled` and 503.
fn istio_default_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        on: vec![
            RetryOn::ConnectFailure,
            RetryOn::Reset,
            RetryOn::Unavailable,
            RetryOn::Cancelled,
            RetryOn::RetriableStatusCodes,
        ],
        retriable_status_codes: vec![503],
        ..RetryPolicy::default()
    }
}

fn destination(d: &Doc, out: &mut Out<'_>, hosts: &mut Hosts<'_>, to: &T) -> Option<String> {
    let Some(host) = to.get("host").and_then(T::text) else {
        out.lose(
            d,
            to.path(),
            to.line(),
            "a destination without a host".into(),
        );
        to.consume();
        return None;
    };
    let host = fqdn(&host, &d.namespace, out);
    let subset = to.get("subset").and_then(T::text);
    let port = to
        .get("port")
        .and_then(|p| p.get("number"))
        .and_then(T::u32)
        .and_then(|n| u16::try_from(n).ok());
    Some(hosts.backend(out, d, &host, subset.as_deref(), port, to))
}

fn string_match(t: &T) -> Option<StringMatch> {
    if t.is_empty() && t.is_map() {
        t.consume();
        return Some(StringMatch::Present(true));
    }
    let (k, v) = t.entries().next()?;
    let s = v.text()?;
    match k {
        "exact" => Some(StringMatch::Exact(s)),
        "prefix" => Some(StringMatch::Prefix(s)),
        "regex" => Some(StringMatch::Regex(s)),
        _ => None,
    }
}

/// One of a route's match requests, or none when it holds a condition
/// this mesh cannot express (reported): dropping only the condition would
/// widen the match.
fn route_match(d: &Doc, out: &mut Out<'_>, m: &T) -> Option<RouteMatch> {
    let mut rm = RouteMatch::default();
    let mut whole = true;
    for (k, v) in m.entries() {
        let ok = match k {
            "uri" => match string_match(v) {
                Some(StringMatch::Exact(p)) => {
                    rm.path = Some(PathMatch::Exact(p));
                    true
                }
                Some(StringMatch::Prefix(p)) => {
                    rm.path = Some(PathMatch::Prefix(p));
                    true
                }
                Some(StringMatch::Regex(p)) => {
                    rm.path = Some(PathMatch::Regex(p));
                    true
                }
                _ => false,
            },
            "method" => match string_match(v) {
                Some(StringMatch::Exact(method)) => {
                    rm.methods.push(method);
                    true
                }
                _ => false,
            },
            "headers" | "queryParams" => {
                let mut all = true;
                for (name, sm) in v.entries() {
                    match string_match(sm) {
                        Some(s) if k == "headers" => {
                            rm.headers.insert(name.to_ascii_lowercase(), s);
                        }
                        Some(StringMatch::Present(_)) | None => all = false,
                        Some(s) => {
                            rm.query.insert(name.to_owned(), s);
                        }
                    }
                }
                all
            }
            "withoutHeaders" => {
                let mut all = true;
                for (name, sm) in v.entries() {
                    match string_match(sm) {
                        Some(StringMatch::Present(true)) => {
                            rm.headers
                                .insert(name.to_ascii_lowercase(), StringMatch::Present(false));
                        }
                        _ => all = false,
                    }
                }
                all
            }
            "name" => true,
            "ignoreUriCase" => v.bool() == Some(false) || m.peek("uri").is_none(),
            _ => false,
        };
        if !ok {
            v.consume();
            out.lose(d, v.path(), v.line(), "a match condition this mesh cannot express: the match request is dropped (so the route matches less, never more)".into());
            whole = false;
        }
    }
    whole.then_some(rm)
}

fn retries(d: &Doc, out: &mut Out<'_>, t: &T) -> Option<RetryPolicy> {
    let retries = t.get("attempts").and_then(T::u32).unwrap_or(0);
    if retries == 0 {
        t.consume();
        return None;
    }
    let mut p = RetryPolicy {
        attempts: super::attempts(out, d, t.peek("attempts"), retries),
        on: Vec::new(),
        ..RetryPolicy::default()
    };
    if let Some(ptt) = t.get("perTryTimeout") {
        match ptt.text().as_deref().and_then(go_duration) {
            Some(z) if !z.is_zero() => p.per_try_timeout = Some(z),
            _ => {}
        }
    }
    match t.get("retryOn") {
        Some(on) => {
            for cond in on.text().unwrap_or_default().split(',').map(str::trim) {
                let c = match cond {
                    "refused-stream" => Some(RetryOn::Reset),
                    "" => continue,
                    other => RetryOn::ALL
                        .iter()
                        .find(|(n, _)| *n == other)
                        .map(|(_, v)| *v),
                };
                match (c, cond.parse::<u16>()) {
                    (Some(c), _) => {
                        if !p.on.contains(&c) {
                            p.on.push(c);
                        }
                    }
                    (None, Ok(code)) => {
                        p.retriable_status_codes.push(code);
                        if !p.on.contains(&RetryOn::RetriableStatusCodes) {
                            p.on.push(RetryOn::RetriableStatusCodes);
                        }
                    }
                    (None, Err(_)) => out.approximate(
                        d,
                        on,
                        format!("`{cond}` is not a condition this mesh retries on: left out"),
                    ),
                }
            }
        }
        // Istio's default conditions.
        None => p.on = istio_default_retry().on,
    }
    if p.on.contains(&RetryOn::RetriableStatusCodes) && p.retriable_status_codes.is_empty() {
        p.retriable_status_codes.push(503);
    }
    if p.on.is_empty() {
        return None;
    }
    if let Some(x) = t.get("retryRemoteLocalities") {
        x.consume();
    }
    Some(p)
}

fn percent(t: Option<&T>, old: Option<&T>) -> f64 {
    t.and_then(|p| p.get("value"))
        .and_then(T::number)
        .or_else(|| old.and_then(T::number))
        .unwrap_or(100.0)
}

fn fault(d: &Doc, out: &mut Out<'_>, f: &T) -> Option<Fault> {
    let mut fault = Fault::default();
    if let Some(dl) = f.get("delay") {
        match dl
            .get("fixedDelay")
            .and_then(T::text)
            .as_deref()
            .and_then(go_duration)
        {
            Some(fixed) => {
                fault.delay = Some(FaultDelay {
                    fixed,
                    percent: percent(dl.get("percentage"), dl.get("percent")),
                });
            }
            None => out.drop_field(d, dl, "only a fixed delay is supported"),
        }
    }
    if let Some(ab) = f.get("abort") {
        match ab
            .get("httpStatus")
            .and_then(T::u32)
            .and_then(|s| u16::try_from(s).ok())
        {
            Some(status) => {
                fault.abort = Some(FaultAbort {
                    status,
                    percent: percent(ab.get("percentage"), None),
                });
            }
            None => out.drop_field(d, ab, "only an HTTP status abort is supported"),
        }
    }
    (fault.delay.is_some() || fault.abort.is_some()).then_some(fault)
}

/// Which workloads each namespace has, as far as the inputs say (the hosts
/// routed to and the `app` labels policies select): who a namespace-wide
/// policy governs.
fn known_workloads(docs: &[Doc]) -> BTreeMap<String, BTreeSet<String>> {
    let mut known: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for d in docs {
        let Some(spec) = d.tree.peek("spec") else {
            continue;
        };
        match d.kind.as_deref() {
            Some("VirtualService") => {
                for h in spec.peek("hosts").map(T::items).unwrap_or_default() {
                    if let Some(h) = h.text().filter(|h| !h.contains('.') && !h.contains('*')) {
                        known.entry(d.namespace.clone()).or_default().insert(h);
                    }
                }
            }
            Some("DestinationRule") => {
                if let Some(h) = spec
                    .peek("host")
                    .and_then(T::text)
                    .filter(|h| !h.contains('.'))
                {
                    known.entry(d.namespace.clone()).or_default().insert(h);
                }
            }
            _ => {
                if let Some(app) = spec.peek("selector").and_then(|s| app_of(s, false)) {
                    known.entry(d.namespace.clone()).or_default().insert(app);
                }
            }
        }
    }
    known
}

/// The workload a selector's `matchLabels` names (`app`, or
/// `app.kubernetes.io/name`); reads it when `read`.
fn app_of(selector: &T, read: bool) -> Option<String> {
    let labels = if read {
        selector.get("matchLabels")?
    } else {
        selector.peek("matchLabels")?
    };
    for key in [
        "app",
        "app.kubernetes.io/name",
        "service.istio.io/canonical-name",
    ] {
        let t = if read {
            labels.get(key)
        } else {
            labels.peek(key)
        };
        if let Some(v) = t.and_then(T::text) {
            return Some(v);
        }
    }
    None
}

/// The services a policy governs: its selector's workload, or (without
/// one) every workload known in its namespace (all, in the root
/// namespace `istio-system`).
fn governed(
    d: &Doc,
    out: &mut Out<'_>,
    spec: &T,
    known: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    if let Some(sel) = spec.get("selector") {
        let Some(app) = app_of(sel, true) else {
            out.drop_field(d, sel, "a selector without an `app` label: the workload it governs is unknown; the policy is not carried over");
            return Vec::new();
        };
        let others: Vec<String> = sel
            .get("matchLabels")
            .map(|l| l.entries().map(|(k, _)| k.to_owned()).collect())
            .unwrap_or_default();
        let t = sel.peek("matchLabels").unwrap_or(sel);
        let more = if others.len() > 1 {
            format!(
                " (its other labels, {}, narrow nothing here)",
                others.join(", ")
            )
        } else {
            String::new()
        };
        out.approximate(
            d,
            t,
            format!("governs the service `{app}`: run its workloads with MESH_SERVICE={app}{more}"),
        );
        return vec![app];
    }
    let all: Vec<String> = if d.namespace == "istio-system" {
        known
            .values()
            .flatten()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    } else {
        known
            .get(&d.namespace)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    };
    if all.is_empty() {
        out.lose(d, "spec", spec.line(), format!("a policy for the whole namespace `{}`: no workload of it is known to these inputs, so it governs none here; give it a selector", d.namespace));
    } else {
        out.approximate(d, spec, format!("a policy for the whole namespace `{}`: carried over to each service these inputs know there ({})", d.namespace, all.join(", ")));
    }
    all
}

fn peer_authentication(d: &Doc, out: &mut Out<'_>, known: &BTreeMap<String, BTreeSet<String>>) {
    let Some(spec) = d.tree.get("spec") else {
        return;
    };
    let mode = spec
        .get("mtls")
        .and_then(|m| m.get("mode"))
        .and_then(T::text);
    let mode = match mode.as_deref() {
        Some("STRICT") => MtlsMode::Strict,
        Some("PERMISSIVE") => MtlsMode::Permissive,
        Some("DISABLE") => MtlsMode::Disabled,
        _ => {
            spec.consume();
            return;
        }
    };
    out.drop_if(
        d,
        spec,
        "portLevelMtls",
        "per-port mTLS: a service here has one listener mode",
    );
    for s in governed(d, out, spec, known) {
        // A workload's own policy wins over its namespace's, as in Istio.
        let p = out.inbound(d, &s);
        if spec.peek("selector").is_some() || p.mtls == MtlsMode::Permissive {
            p.mtls = mode;
        }
    }
    if mode != MtlsMode::Disabled {
        out.trust_domain = Some(out.options.trust_domain.clone());
    }
}

/// An Istio principal (`td/ns/x/sa/y`, with `*` at either end) as a
/// caller pattern here; `None` for a suffix pattern.
fn principal(p: &str) -> Option<String> {
    if p == "*" {
        return Some("*".into());
    }
    if p.starts_with('*') {
        return None;
    }
    Some(format!("spiffe://{p}"))
}

/// Returns the services it governs if it is an allow policy.
fn authorization_policy(
    d: &Doc,
    out: &mut Out<'_>,
    known: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let Some(spec) = d.tree.get("spec") else {
        return Vec::new();
    };
    let written = spec.get("action");
    let action = written.and_then(T::text).unwrap_or_else(|| "ALLOW".into());
    let action = match (action.as_str(), written) {
        ("ALLOW", _) => AuthzAction::Allow,
        ("DENY", _) => AuthzAction::Deny,
        // The requests an external authorizer would judge are denied:
        // failing closed.
        ("CUSTOM", Some(t)) => {
            if let Some(p) = spec.get("provider") {
                p.consume();
            }
            out.approximate(d, t, "CUSTOM: external authorizers are not supported; the requests this policy would send to one are denied (failing closed)");
            AuthzAction::Deny
        }
        (other, _) => {
            // AUDIT only logs: it decides nothing.
            out.lose(
                d,
                "spec.action",
                spec.line(),
                format!("{other} policies decide nothing here: not carried over"),
            );
            spec.consume();
            return Vec::new();
        }
    };
    let services = governed(d, out, spec, known);
    let mut rules = Vec::new();
    let written = spec.get("rules").map(T::items).unwrap_or_default();
    for r in &written {
        rules.extend(rule(d, out, r, action));
    }
    if let Some(t) = spec.get("provider") {
        t.consume();
    }
    out.trust_domain = Some(out.options.trust_domain.clone());
    for s in &services {
        out.inbound(d, s).rules.extend(rules.iter().cloned());
    }
    match action {
        AuthzAction::Allow => services,
        _ => Vec::new(),
    }
}

/// Istio: a workload under an allow policy is allowed only what some allow
/// rule allows. One whose allow rules are none (a policy without rules, or
/// whose rules could not be carried over) is denied everything, failing
/// closed.
fn deny_unless_allowed(out: &mut Out<'_>, under_allow: &BTreeSet<String>) {
    for s in under_allow {
        let Some(p) = out.inbound.get_mut(s) else {
            continue;
        };
        if !p.rules.iter().any(|r| r.action == AuthzAction::Allow) {
            p.rules.push(AuthzRule {
                action: AuthzAction::Deny,
                from: Vec::new(),
                to: AuthzTarget::default(),
            });
        }
    }
}

/// One Istio rule (sources × operations, under conditions) as rules here,
/// fail-closed: an allow rule with something this mesh cannot express is
/// dropped; a deny rule loses that condition only (denying more).
fn rule(d: &Doc, out: &mut Out<'_>, r: &T, action: AuthzAction) -> Vec<AuthzRule> {
    let mut unexpressed = Vec::new();
    let mut froms: Vec<Vec<String>> = Vec::new();
    for f in r.get("from").map(T::items).unwrap_or_default() {
        let Some(src) = f.get("source") else { continue };
        let mut ids = Vec::new();
        for (k, v) in src.entries() {
            match k {
                "principals" => {
                    for p in v.items() {
                        match p.text().as_deref().and_then(principal) {
                            Some(id) => ids.push(id),
                            None => unexpressed.push(p),
                        }
                    }
                }
                "namespaces" => {
                    for n in v.items() {
                        match n.text() {
                            Some(n) if !n.contains('*') => {
                                ids.push(format!("spiffe://{}/ns/{n}/*", out.options.trust_domain))
                            }
                            Some(n) if n == "*" => ids.push("*".into()),
                            _ => unexpressed.push(n),
                        }
                    }
                }
                _ => unexpressed.push(v),
            }
        }
        froms.push(ids);
    }
    let mut tos: Vec<AuthzTarget> = Vec::new();
    for t in r.get("to").map(T::items).unwrap_or_default() {
        let Some(op) = t.get("operation") else {
            continue;
        };
        let mut target = AuthzTarget::default();
        for (k, v) in op.entries() {
            match k {
                "methods" => target
                    .methods
                    .extend(v.items().iter().filter_map(|m| m.text())),
                "paths" => {
                    for p in v.items() {
                        match p.text() {
                            Some(p)
                                if p == "*"
                                    || (p.starts_with('/')
                                        && !p.strip_suffix('*').unwrap_or(&p).contains('*')) =>
                            {
                                target.paths.push(p)
                            }
                            _ => unexpressed.push(p),
                        }
                    }
                }
                _ => unexpressed.push(v),
            }
        }
        tos.push(target);
    }
    if let Some(w) = r.get("when")
        && !w.is_empty()
    {
        unexpressed.push(w);
    }
    if !unexpressed.is_empty() {
        let why = match action {
            AuthzAction::Allow => {
                "a condition this mesh cannot express: the allow rule is dropped (it allows less, never more)"
            }
            _ => {
                "a condition this mesh cannot express: the deny rule keeps its other conditions (it denies more, never less)"
            }
        };
        for u in &unexpressed {
            u.consume();
            match action {
                AuthzAction::Allow => out.lose(d, u.path(), u.line(), why.into()),
                _ => out.approximate(d, u, why),
            }
        }
        if action == AuthzAction::Allow {
            return Vec::new();
        }
    }
    if froms.is_empty() {
        froms.push(Vec::new());
    }
    if tos.is_empty() {
        tos.push(AuthzTarget::default());
    }
    let mut out_rules = Vec::new();
    for from in &froms {
        for to in &tos {
            out_rules.push(AuthzRule {
                action,
                from: from.clone(),
                to: to.clone(),
            });
        }
    }
    out_rules
}

/// A service with one route to `host`'s backend, for a host a rule or an
/// entry configures and no virtual service claims.
fn default_service<'d>(out: &mut Out<'_>, hosts: &mut Hosts<'d>, d: &'d Doc, host: &str, at: &T) {
    let claimed = out.services.contains_key(host)
        || out
            .services
            .values()
            .any(|s| s.hosts.iter().any(|h| h == host));
    if claimed {
        return;
    }
    let backend = hosts.backend(out, d, host, None, None, at);
    let mut hosts_of = aliases(host, out);
    hosts_of.retain(|h| h != host);
    hosts.origin.insert(host.to_owned(), d);
    out.services.insert(
        host.to_owned(),
        Service {
            name: host.into(),
            hosts: hosts_of.into_iter().map(Name::from).collect(),
            routes: vec![Route {
                to: vec![WeightedBackend {
                    backend: backend.into(),
                    weight: 100,
                }],
                retry: Some(istio_default_retry().into()),
                ..Route::default()
            }],
            classifier: None,
        },
    );
}
