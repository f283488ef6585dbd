//! `import`: Istio and App Mesh resources as this mesh's config, each
//! supported field carried over and every other one reported by resource,
//! field path, line and reason. The inputs are in `tests/import/`, written
//! here from the public API references.

use proxyless_core::config::{
    AuthzAction, Config, LoadBalancer, MtlsMode, PathMatch, Protocol, RetryOn, StringMatch,
};
use proxyless_core::import::{Imported, LossKind, Options, import};
use std::time::Duration;

fn istio() -> Imported {
    let text = include_str!("../import/istio.yaml");
    import(&[("istio.yaml", text)], &Options::default()).unwrap()
}

fn appmesh() -> Imported {
    let inputs = [
        (
            "appmesh-k8s.yaml",
            include_str!("../import/appmesh-k8s.yaml"),
        ),
        (
            "appmesh-node.json",
            include_str!("../import/appmesh-node.json"),
        ),
        (
            "appmesh-router.json",
            include_str!("../import/appmesh-router.json"),
        ),
        (
            "appmesh-route-all.json",
            include_str!("../import/appmesh-route-all.json"),
        ),
        (
            "appmesh-route-hello.json",
            include_str!("../import/appmesh-route-hello.json"),
        ),
        (
            "appmesh-service.json",
            include_str!("../import/appmesh-service.json"),
        ),
        (
            "appmesh-mesh.json",
            include_str!("../import/appmesh-mesh.json"),
        ),
    ];
    import(&inputs, &Options::default()).unwrap()
}

/// The loss at `path` (exactly one), its kind and reason.
fn loss(out: &Imported, path: &str) -> (LossKind, String) {
    let found: Vec<_> = out.losses.iter().filter(|l| l.path == path).collect();
    assert_eq!(found.len(), 1, "one loss at {path} in {:#?}", out.losses);
    (found[0].kind, found[0].reason.clone())
}

fn backend(out: &Imported, name: &str) -> proxyless_core::config::Backend {
    let found = out.config.backends.iter().find(|b| b.name == name);
    (**found.unwrap_or_else(|| panic!("no backend {name}"))).clone()
}

fn service<'o>(out: &'o Imported, name: &str) -> &'o proxyless_core::config::Service {
    let found = out.config.services.iter().find(|s| s.name == name);
    found.unwrap_or_else(|| panic!("no service {name}"))
}

/// What is written is what is read back: the config file a user keeps.
fn round_trips(out: &Imported) {
    let again = Config::from_yaml(&out.config.to_yaml()).unwrap();
    assert_eq!(again, out.config);
    let short = out.config.to_yaml_short();
    assert_eq!(Config::from_yaml(&short).unwrap(), out.config, "{short}");
}

#[test]
fn istio_virtual_services_become_services_with_their_routes() {
    let out = istio();
    round_trips(&out);
    let svc = service(&out, "reviews.shop.svc.cluster.local");
    assert_eq!(svc.hosts, ["reviews.shop.svc", "reviews.shop", "reviews"]);
    let canary = &svc.routes[0];
    assert_eq!(canary.name.as_deref(), Some("canary"));
    // Two of three match requests: the third's sourceLabels cannot be
    // expressed, so that request is dropped (matching less, never more).
    assert_eq!(canary.matches.len(), 2);
    assert_eq!(
        canary.matches[0].path,
        Some(PathMatch::Prefix("/reviews".into()))
    );
    assert_eq!(
        canary.matches[0].headers["end-user"],
        StringMatch::Exact("jason".into())
    );
    assert_eq!(canary.matches[1].methods, ["GET"]);
    assert_eq!(
        canary.matches[1].query["canary"],
        StringMatch::Exact("1".into())
    );
    assert_eq!(
        canary.matches[1].headers["x-legacy"],
        StringMatch::Present(false)
    );
    assert_eq!(
        loss(&out, "spec.http[0].match[2].sourceLabels").0,
        LossKind::Dropped
    );
    assert_eq!(canary.to.len(), 1);
    assert_eq!(
        (canary.to[0].backend.as_str(), canary.to[0].weight),
        ("reviews.shop.svc.cluster.local/v2", 100)
    );
    assert_eq!(canary.timeout, Some(Duration::from_millis(1500)));
    let retry = canary.retry.as_ref().unwrap();
    assert_eq!(retry.attempts, 3, "two retries and the first");
    assert_eq!(retry.per_try_timeout, Some(Duration::from_millis(500)));
    assert_eq!(
        retry.on,
        [
            RetryOn::FiveXx,
            RetryOn::ConnectFailure,
            RetryOn::Reset,
            RetryOn::RetriableStatusCodes
        ]
    );
    assert_eq!(retry.retriable_status_codes, [429]);
    let fault = canary.fault.as_ref().unwrap();
    let delay = fault.delay.as_ref().unwrap();
    assert_eq!(
        (delay.fixed, delay.percent),
        (Duration::from_millis(100), 10.0)
    );
    let abort = fault.abort.as_ref().unwrap();
    assert_eq!((abort.status, abort.percent), (503, 1.5));
    let mirror = canary.mirror.as_ref().unwrap();
    assert_eq!(
        (mirror.backend.as_str(), mirror.percent),
        ("reviews.shop.svc.cluster.local/v1", 25.0)
    );

    let default = &svc.routes[1];
    let split: Vec<(&str, u32)> = default
        .to
        .iter()
        .map(|w| (w.backend.as_str(), w.weight))
        .collect();
    assert_eq!(
        split,
        [
            ("reviews.shop.svc.cluster.local/v1", 90),
            ("reviews.shop.svc.cluster.local/v2", 10)
        ]
    );
    // No `retries`: Istio's default policy.
    let r = default.retry.as_ref().unwrap();
    assert_eq!(
        (r.attempts, r.retriable_status_codes.as_slice()),
        (3, &[503][..])
    );
    assert!(r.on.contains(&RetryOn::Unavailable) && r.on.contains(&RetryOn::Cancelled));
    for lost in ["spec.http[1].corsPolicy", "spec.http[1].rewrite"] {
        assert_eq!(
            loss(&out, lost),
            (LossKind::Dropped, "not supported by this mesh".into())
        );
    }
}

#[test]
fn istio_destination_rules_and_service_entries_become_backends() {
    let out = istio();
    let v1 = backend(&out, "reviews.shop.svc.cluster.local/v1");
    // The mirror names no port; the route's destination does.
    assert_eq!(
        v1.endpoints[0].address,
        "reviews.shop.svc.cluster.local:9080"
    );
    assert_eq!(v1.load_balancer, LoadBalancer::RoundRobin);
    let cb = v1.circuit_breaker.as_ref().unwrap();
    assert_eq!(
        (cb.max_pending, cb.max_requests, cb.max_retries),
        (10, 100, 5)
    );
    let od = v1.outlier_detection.as_deref().unwrap();
    assert_eq!(
        (
            od.consecutive_5xx,
            od.consecutive_gateway_errors,
            od.base_ejection,
            od.max_ejection_percent
        ),
        (3, 2, Duration::from_secs(60), 50)
    );
    let tls = v1.tls.as_deref().unwrap();
    assert_eq!(tls.identities, ["spiffe://cluster.local/ns/shop/*"]);
    assert_eq!(
        loss(&out, "spec.trafficPolicy.tls.mode").0,
        LossKind::Approximated
    );
    assert_eq!(out.config.trust_domain.as_deref(), Some("cluster.local"));
    // The subset's own policy over the rule's.
    let v2 = backend(&out, "reviews.shop.svc.cluster.local/v2");
    assert_eq!(
        v2.load_balancer,
        LoadBalancer::RingHash {
            header: "x-user".into()
        }
    );
    assert_eq!(v2.circuit_breaker, v1.circuit_breaker);
    let (kind, why) = loss(&out, "spec.subsets[1].labels");
    assert_eq!(kind, LossKind::Approximated);
    assert!(why.contains("version=v2"), "{why}");
    for lost in [
        "spec.trafficPolicy.connectionPool.http.idleTimeout",
        "spec.trafficPolicy.connectionPool.tcp",
    ] {
        assert_eq!(loss(&out, lost).0, LossKind::Dropped);
    }
    assert_eq!(
        loss(&out, "spec.trafficPolicy.outlierDetection.interval").0,
        LossKind::Approximated
    );

    // A ServiceEntry: its endpoints on the port (or the endpoint's own),
    // and a service claiming its host, since no virtual service does.
    let pay = backend(&out, "payments.example.com");
    let eps: Vec<&str> = pay.endpoints.iter().map(|e| e.address.as_str()).collect();
    assert_eq!(eps, ["10.0.0.1:8443", "10.0.0.2:9443"]);
    assert_eq!(pay.protocol, Protocol::Http1);
    let svc = service(&out, "payments.example.com");
    assert_eq!(svc.routes[0].to[0].backend, "payments.example.com");
}

#[test]
fn istio_security_policies_become_inbound_policies_fail_closed() {
    let out = istio();
    assert_eq!(out.config.inbound.len(), 1);
    let p = &out.config.inbound[0];
    assert_eq!((p.service.as_str(), p.mtls), ("reviews", MtlsMode::Strict));
    assert_eq!(loss(&out, "spec.portLevelMtls").0, LossKind::Dropped);
    // One allow rule per source (principal; namespace), the operation
    // kept; the rule needing request principals dropped (it would allow
    // more without them); the deny rule kept without its `when` (it
    // denies more).
    let allows: Vec<_> = p
        .rules
        .iter()
        .filter(|r| r.action == AuthzAction::Allow)
        .collect();
    assert_eq!(allows.len(), 2);
    assert_eq!(
        allows[0].from,
        ["spiffe://cluster.local/ns/shop/sa/productpage"]
    );
    assert_eq!(allows[1].from, ["spiffe://cluster.local/ns/admin/*"]);
    assert_eq!(allows[0].to.methods, ["GET"]);
    assert_eq!(allows[0].to.paths, ["/reviews/*", "/health"]);
    assert_eq!(
        loss(&out, "spec.rules[1].from[0].source.requestPrincipals").0,
        LossKind::Dropped
    );
    let deny: Vec<_> = p
        .rules
        .iter()
        .filter(|r| r.action == AuthzAction::Deny)
        .collect();
    assert_eq!(deny.len(), 1);
    assert_eq!(deny[0].to.paths, ["/admin*"]);
    assert!(deny[0].from.is_empty());
    let (kind, why) = loss(&out, "spec.rules[0].when");
    assert_eq!(kind, LossKind::Approximated);
    assert!(why.contains("denies more"), "{why}");
}

#[test]
fn every_loss_names_its_resource_file_line_and_reason() {
    let out = istio();
    assert!(out.lossy());
    for l in &out.losses {
        assert_eq!(l.file, "istio.yaml");
        assert!(l.line.is_some_and(|n| n > 0), "{l}");
        assert!(!l.reason.is_empty() && l.resource.contains("shop/"), "{l}");
    }
    let gateway = out
        .losses
        .iter()
        .find(|l| l.resource == "Gateway shop/ingress")
        .unwrap();
    assert_eq!(gateway.kind, LossKind::Dropped);
    let text = gateway.to_string();
    assert!(text.starts_with("istio.yaml:"), "{text}");
    // Sorted by where they are in the file.
    let lines: Vec<u32> = out.losses.iter().filter_map(|l| l.line).collect();
    assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{lines:?}");
    assert_eq!(out.read.len(), 7, "{:?}", out.read);
}

#[test]
fn resources_this_mesh_carries_whole_report_nothing() {
    let clean = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: api, namespace: prod }
spec:
  hosts: [api.internal]
  ports: [{ number: 8080, name: http, protocol: HTTP }]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: api, namespace: prod }
spec:
  hosts: [api.internal]
  http:
    - route: [{ destination: { host: api.internal } }]
      timeout: 2s
      retries: { attempts: 1, retryOn: 5xx }
";
    let out = import(&[("clean.yaml", clean)], &Options::default()).unwrap();
    assert!(!out.lossy(), "{:#?}", out.losses);
    let route = &out.config.services[0].routes[0];
    assert_eq!(route.to[0].backend, "api.internal");
    assert_eq!(
        out.config.backends[0].endpoints[0].address,
        "api.internal:8080"
    );
}

#[test]
fn a_file_that_is_not_yaml_is_refused_by_name() {
    let err = import(&[("bad.yaml", "kind: [unclosed")], &Options::default()).unwrap_err();
    assert!(err.to_string().starts_with("bad.yaml:"), "{err}");
    // A document of no known kind is reported, not refused.
    let out = import(
        &[(
            "k.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: x }\ndata: { a: b }\n",
        )],
        &Options::default(),
    )
    .unwrap();
    assert!(
        out.losses[0].reason.contains("ConfigMap"),
        "{:?}",
        out.losses
    );
}

#[test]
fn app_mesh_routers_become_services_in_priority_order() {
    let out = appmesh();
    round_trips(&out);
    let svc = service(&out, "ratings.shop.svc.cluster.local");
    let names: Vec<_> = svc
        .routes
        .iter()
        .map(|r| r.name.as_deref().unwrap())
        .collect();
    // Priority 10, then 20; `ranged` (a header range) and `raw` (TCP) lost.
    assert_eq!(names, ["testers", "default"]);
    assert_eq!(loss(&out, "spec.routes[2].httpRoute").0, LossKind::Dropped);
    assert_eq!(loss(&out, "spec.routes[3].tcpRoute").0, LossKind::Dropped);
    let t = &svc.routes[0];
    let m = &t.matches[0];
    assert_eq!(m.path, Some(PathMatch::Prefix("/ratings".into())));
    assert_eq!(m.methods, ["POST"]);
    assert_eq!(m.headers["x-tester"], StringMatch::Exact("yes".into()));
    assert_eq!(m.headers["x-legacy"], StringMatch::Present(false));
    assert_eq!(m.headers["x-build"], StringMatch::Regex(".*\\.beta".into()));
    assert_eq!(m.query["debug"], StringMatch::Exact("1".into()));
    let r = t.retry.as_ref().unwrap();
    assert_eq!(
        (r.attempts, r.per_try_timeout),
        (4, Some(Duration::from_millis(250)))
    );
    for on in [
        RetryOn::FiveXx,
        RetryOn::GatewayError,
        RetryOn::Reset,
        RetryOn::ConnectFailure,
        RetryOn::RetriableStatusCodes,
    ] {
        assert!(r.on.contains(&on), "{on}");
    }
    assert_eq!(r.retriable_status_codes, [409]);
    let d = &svc.routes[1];
    let split: Vec<(&str, u32)> =
        d.to.iter()
            .map(|w| (w.backend.as_str(), w.weight))
            .collect();
    assert_eq!(split, [("ratings-v1", 80), ("ratings-v2", 20)]);
    assert_eq!(d.timeout, Some(Duration::from_secs(3)));
    assert_eq!(
        loss(&out, "spec.routes[0].httpRoute.timeout.idle").0,
        LossKind::Dropped
    );
}

#[test]
fn app_mesh_nodes_become_backends() {
    let out = appmesh();
    let v1 = backend(&out, "ratings-v1");
    assert_eq!(
        v1.endpoints[0].address,
        "ratings-v1.shop.svc.cluster.local:9080"
    );
    let od = v1.outlier_detection.as_deref().unwrap();
    assert_eq!(
        (
            od.consecutive_5xx,
            od.max_ejection_percent,
            od.base_ejection
        ),
        (4, 50, Duration::from_secs(30))
    );
    assert_eq!(v1.circuit_breaker.as_ref().unwrap().max_pending, 20);
    assert_eq!(backend(&out, "ratings-v2").protocol, Protocol::Http2);
    let inbound = &out.config.inbound[0];
    assert_eq!(
        (inbound.service.as_str(), inbound.mtls),
        ("ratings-v1", MtlsMode::Strict)
    );
    for lost in [
        "spec.listeners[0].healthCheck",
        "spec.backends",
        "spec.listeners[0].connectionPool.http.maxConnections",
    ] {
        assert_eq!(loss(&out, lost).0, LossKind::Dropped, "{lost}");
    }
    assert_eq!(
        loss(&out, "spec.listeners[0].outlierDetection.interval").0,
        LossKind::Approximated
    );
}

#[test]
fn app_mesh_describe_output_is_read_too() {
    let out = appmesh();
    let svc = service(&out, "greeter.apps.local");
    let hello = &svc.routes[0];
    assert_eq!(hello.name.as_deref(), Some("say-hello"));
    assert_eq!(
        hello.matches[0].path,
        Some(PathMatch::Exact("/helloworld.Greeter/SayHello".into()))
    );
    assert_eq!(
        hello.matches[0].headers["x-canary"],
        StringMatch::Exact("1".into())
    );
    let r = hello.retry.as_ref().unwrap();
    assert_eq!(r.attempts, 3);
    assert_eq!(
        r.on,
        [
            RetryOn::ConnectFailure,
            RetryOn::Unavailable,
            RetryOn::DeadlineExceeded
        ]
    );
    assert_eq!(hello.timeout, Some(Duration::from_secs(2)));
    assert_eq!(
        svc.routes[1].matches[0].path,
        Some(PathMatch::Prefix("/helloworld.Greeter/".into()))
    );
    let g = out
        .config
        .backends
        .iter()
        .find(|b| b.name == "greeter-v1")
        .unwrap();
    assert_eq!(g.protocol, Protocol::Grpc);
    assert_eq!(g.endpoints[0].address, "greeter-v1.apps.local:50051");
    assert_eq!(g.circuit_breaker.as_ref().unwrap().max_requests, 64);
    let logging: Vec<_> = out
        .losses
        .iter()
        .filter(|l| l.path == "virtualNode.spec.logging")
        .collect();
    assert_eq!(logging.len(), 1);
    assert_eq!(logging[0].resource, "VirtualNode apps/greeter-v1");
    assert!(out.losses.iter().any(|l| l.resource == "Mesh apps/apps"));
}

/// What an attacker or a typo puts in a resource is bounded and reported,
/// never a panic: counts at their limits, multibyte paths, wrong types.
#[test]
fn hostile_values_are_reported_not_panicked_on() {
    let text = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: x, namespace: a }
spec:
  hosts: [x]
  http:
    - route: [{ destination: { host: x, port: { number: 99999999 } }, weight: 4294967295 }]
      retries: { attempts: 4294967295, perTryTimeout: 99999999999h, retryOn: "éé,5xx" }
      timeout: [not, a, duration]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: p, namespace: a }
spec:
  selector: { matchLabels: { app: x } }
  rules: [{ to: [{ operation: { paths: ["/é*é", "/ü*"] } }] }]
"#;
    let out = import(&[("h.yaml", text)], &Options::default()).unwrap();
    let route = &out.config.services[0].routes[0];
    assert_eq!(route.retry.as_ref().unwrap().attempts, 10);
    assert!(
        out.losses
            .iter()
            .any(|l| l.path.ends_with("retries.attempts"))
    );
    assert!(
        out.losses
            .iter()
            .any(|l| l.path.ends_with("http[0].timeout"))
    );
    // The allow rule held a path with an inner `*`: dropped, and with it
    // the only thing the policy allowed, so everything is denied.
    let rules = &out.config.inbound[0].rules;
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].action, AuthzAction::Deny);
    assert!(rules[0].from.is_empty() && rules[0].to.paths.is_empty());
    assert!(out.losses.iter().any(|l| l.path.ends_with("paths[0]")));
}

/// Istio's allow semantics, failing closed: a workload under an allow
/// policy is allowed only what some allow rule allows (an empty allow
/// policy denies all, unless another allows something); a CUSTOM policy's
/// requests are denied.
#[test]
fn allow_policies_and_external_authorizers_fail_closed() {
    let policy = |name: &str, spec: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{ name: {name}, namespace: a }}\nspec: {spec}\n---\n"
        )
    };
    let empty = policy("nothing", "{ selector: { matchLabels: { app: x } } }");
    let some = policy(
        "some",
        "{ selector: { matchLabels: { app: x } }, rules: [{ to: [{ operation: { methods: [GET] } }] }] }",
    );
    let custom = policy(
        "ext",
        "{ selector: { matchLabels: { app: y } }, action: CUSTOM, provider: { name: opa }, rules: [{ to: [{ operation: { paths: [/admin*] } }] }] }",
    );
    let out = import(
        &[("p.yaml", &format!("{empty}{some}{custom}"))],
        &Options::default(),
    )
    .unwrap();
    let of = |s: &str| {
        out.config
            .inbound
            .iter()
            .find(|p| p.service == s)
            .unwrap()
            .rules
            .clone()
    };
    // x: the empty policy allows nothing, the other allows GET: GET only.
    let x = of("x");
    assert_eq!(x.len(), 1, "{x:?}");
    assert_eq!(
        (x[0].action, x[0].to.methods.as_slice()),
        (AuthzAction::Allow, &["GET".to_owned()][..])
    );
    // Alone, the empty policy denies all.
    let out2 = import(&[("p.yaml", &empty)], &Options::default()).unwrap();
    assert_eq!(out2.config.inbound[0].rules[0].action, AuthzAction::Deny);
    // y: what the external authorizer would judge is denied.
    let y = of("y");
    assert_eq!(
        (y[0].action, y[0].to.paths.as_slice()),
        (AuthzAction::Deny, &["/admin*".to_owned()][..])
    );
    assert_eq!(loss(&out, "spec.action").0, LossKind::Approximated);
}

#[test]
fn istio_other_match_kinds_balancers_mirrors_and_namespace_policies() {
    let text = include_str!("../import/istio-more.yaml");
    let out = import(&[("istio-more.yaml", text)], &Options::default()).unwrap();
    round_trips(&out);
    let svc = service(&out, "search.rpc.svc.cluster.local");
    let r = &svc.routes[0];
    assert_eq!(r.matches[0].path, Some(PathMatch::Exact("/search".into())));
    assert_eq!(
        r.matches[0].headers["x-tier"],
        StringMatch::Prefix("gold".into())
    );
    assert_eq!(
        r.matches[0].headers["x-id"],
        StringMatch::Regex("[0-9]+".into())
    );
    assert_eq!(r.matches[0].query["q"], StringMatch::Regex(".+".into()));
    assert_eq!(
        r.matches[1].path,
        Some(PathMatch::Regex("/v[0-9]+/search".into()))
    );
    // The first mirror is kept, the second reported.
    let m = r.mirror.as_ref().unwrap();
    assert_eq!(
        (m.backend.as_str(), m.percent),
        ("search.rpc.svc.cluster.local", 5.0)
    );
    assert_eq!(loss(&out, "spec.http[0].mirrors[1]").0, LossKind::Dropped);
    // `attempts: 0` is no retry; `0s` is no timeout (the mesh's default).
    let rest = &svc.routes[1];
    assert!(rest.retry.is_none() && rest.timeout.is_none());
    assert_eq!(loss(&out, "spec.http[1].timeout").0, LossKind::Approximated);

    assert_eq!(
        backend(&out, "search.rpc.svc.cluster.local").load_balancer,
        LoadBalancer::Random
    );
    // The subset's LEAST_REQUEST over the rule's RANDOM: approximated.
    assert_eq!(
        backend(&out, "search.rpc.svc.cluster.local/fast").load_balancer,
        LoadBalancer::P2cEwma
    );
    assert_eq!(
        loss(&out, "spec.subsets[0].trafficPolicy.loadBalancer.simple").0,
        LossKind::Approximated
    );
    let g = backend(&out, "greeter.rpc.internal");
    assert_eq!(g.protocol, Protocol::Grpc);
    assert_eq!(g.endpoints[0].address, "greeter.rpc.internal:50051");
    assert_eq!(
        g.load_balancer,
        LoadBalancer::Maglev {
            header: "x-session".into()
        }
    );
    assert_eq!(
        g.outlier_detection
            .as_ref()
            .unwrap()
            .consecutive_connect_failures,
        4
    );
    let tls = g.tls.as_deref().unwrap();
    assert_eq!(tls.sni.as_deref(), Some("greeter.rpc.internal"));
    assert_eq!(tls.identities, ["spiffe://cluster.local/ns/rpc/sa/greeter"]);

    // Namespace-wide: every service the inputs know in `rpc` (the short
    // hosts routed to there), said as approximated.
    let strict: Vec<&str> = out
        .config
        .inbound
        .iter()
        .filter(|p| p.mtls == MtlsMode::Strict)
        .map(|p| p.service.as_str())
        .collect();
    assert_eq!(strict, ["search"]);
    let (kind, why) = loss(&out, "spec");
    assert_eq!(kind, LossKind::Approximated);
    assert!(why.contains("search"), "{why}");
}

#[test]
fn app_mesh_node_providers_and_paths() {
    let node = r#"{"virtualNode": {"meshName": "m", "virtualNodeName": "web-v1", "spec": {"listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}], "serviceDiscovery": {"dns": {"hostname": "web-v1.local"}}}}}"#;
    let provided = r#"{"virtualService": {"meshName": "m", "virtualServiceName": "web.local", "spec": {"provider": {"virtualNode": {"virtualNodeName": "web-v1"}}}}}"#;
    let router = "
apiVersion: appmesh.k8s.aws/v1beta2
kind: VirtualRouter
metadata: { name: api, namespace: m }
spec:
  routes:
    - { name: exact, httpRoute: { match: { path: { exact: /health } }, action: { weightedTargets: [{ virtualNodeRef: { name: web-v1 }, weight: 1 }] } } }
    - { name: regex, httpRoute: { match: { path: { regex: \"/v[0-9]+/.*\" } }, action: { weightedTargets: [{ virtualNodeRef: { name: web-v1 }, weight: 1 }] } } }
---
apiVersion: appmesh.k8s.aws/v1beta2
kind: VirtualService
metadata: { name: api.local, namespace: m }
spec: { provider: { virtualRouter: { virtualRouterRef: { name: api } } } }
";
    let inputs = [
        ("node.json", node),
        ("service.json", provided),
        ("router.yaml", router),
    ];
    let out = import(&inputs, &Options::default()).unwrap();
    assert!(!out.lossy(), "{:#?}", out.losses);
    let web = service(&out, "web.local");
    assert_eq!(web.routes[0].to[0].backend, "web-v1");
    let api = service(&out, "api.local");
    assert_eq!(
        api.routes[0].matches[0].path,
        Some(PathMatch::Exact("/health".into()))
    );
    assert_eq!(
        api.routes[1].matches[0].path,
        Some(PathMatch::Regex("/v[0-9]+/.*".into()))
    );
}

/// `reviews` in two namespaces: each service keeps its full names, neither
/// claims the short one (which would make the config invalid), and both
/// say so.
#[test]
fn a_short_name_two_namespaces_share_is_claimed_by_neither() {
    let vs = |ns: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{ name: reviews, namespace: {ns} }}\nspec:\n  hosts: [reviews]\n  http: [{{ route: [{{ destination: {{ host: reviews, port: {{ number: 9080 }} }} }}] }}]\n---\n"
        )
    };
    let text = format!("{}{}", vs("a"), vs("b"));
    let out = import(&[("two.yaml", &text)], &Options::default()).unwrap();
    assert_eq!(out.config.services.len(), 2);
    for s in &out.config.services {
        assert!(!s.hosts.iter().any(|h| h == "reviews"), "{:?}", s.hosts);
        assert!(s.hosts.iter().any(|h| h.ends_with(".svc")), "{:?}", s.hosts);
    }
    let said: Vec<_> = out
        .losses
        .iter()
        .filter(|l| l.reason.contains("does not claim reviews"))
        .collect();
    assert_eq!(said.len(), 2, "{:#?}", out.losses);
}

/// A workload named for a version of a service (`reviews-v1` beside
/// `reviews`) keeps its inbound policy; one a config would take for a
/// typo of a service's (`ratings-v1` beside `ratings-v2`) keeps the import
/// valid: its policy is left out and said.
#[test]
fn an_inbound_policy_a_config_would_take_for_a_typo_is_left_out_and_said() {
    let pair = |node: &str, service: &str| {
        format!(
            "
apiVersion: appmesh.k8s.aws/v1beta2
kind: VirtualNode
metadata: {{ name: {node}, namespace: m }}
spec:
  listeners: [{{ portMapping: {{ port: 9080, protocol: http }}, tls: {{ mode: STRICT }} }}]
  serviceDiscovery: {{ dns: {{ hostname: {node}.m.svc.cluster.local }} }}
---
apiVersion: appmesh.k8s.aws/v1beta2
kind: VirtualService
metadata: {{ name: {service}, namespace: m }}
spec: {{ provider: {{ virtualNode: {{ virtualNodeRef: {{ name: {node} }} }} }} }}
"
        )
    };
    let kept = import(
        &[("v.yaml", &pair("reviews-v1", "reviews"))],
        &Options::default(),
    )
    .unwrap();
    assert_eq!(kept.config.inbound[0].service, "reviews-v1");
    let out = import(
        &[("near.yaml", &pair("ratings-v1", "ratings-v2"))],
        &Options::default(),
    )
    .unwrap();
    assert!(out.config.inbound.is_empty());
    let said = out
        .losses
        .iter()
        .find(|l| l.reason.contains("inbound policy of `ratings-v1`"));
    let said = said.unwrap_or_else(|| panic!("{:#?}", out.losses));
    assert_eq!(
        (said.resource.as_str(), said.kind),
        ("VirtualNode m/ratings-v1", LossKind::Dropped)
    );
    assert!(said.reason.contains("`ratings-v2`"), "{}", said.reason);
}

/// The same resource twice (a file given twice, a copy in two files):
/// the first is used, each later one is reported, and the import stays
/// valid.
#[test]
fn a_resource_given_twice_is_used_once_and_the_second_said() {
    let istio = include_str!("../import/istio.yaml");
    let out = import(&[("a.yaml", istio), ("b.yaml", istio)], &Options::default()).unwrap();
    let once = import(&[("a.yaml", istio)], &Options::default()).unwrap();
    assert_eq!(out.config, once.config);
    let second: Vec<_> = out.losses.iter().filter(|l| l.file == "b.yaml").collect();
    // Every document of the second file, each said once, whole.
    assert_eq!(second.len(), once.read.len(), "{second:#?}");
    assert!(
        second
            .iter()
            .all(|l| l.path.is_empty() && l.reason.contains("the same resource as a.yaml:"))
    );
    let node = include_str!("../import/appmesh-node.json");
    let route = include_str!("../import/appmesh-route-hello.json");
    let inputs = [
        ("node.json", node),
        ("node-again.json", node),
        ("router.json", include_str!("../import/appmesh-router.json")),
        ("route.json", route),
        ("route-again.json", route),
        (
            "service.json",
            include_str!("../import/appmesh-service.json"),
        ),
        (
            "service-again.json",
            include_str!("../import/appmesh-service.json"),
        ),
    ];
    let out = import(&inputs, &Options::default()).unwrap();
    assert_eq!(service(&out, "greeter.apps.local").routes.len(), 1);
    for file in ["node-again.json", "route-again.json", "service-again.json"] {
        let l = out.losses.iter().find(|l| l.file == file);
        assert!(
            l.is_some_and(|l| l.reason.contains("the same resource as")),
            "{file}: {:#?}",
            out.losses
        );
    }
}

/// Two resources of different names claiming one host: the first read
/// configures it, the other's claim is reported.
#[test]
fn two_resources_claiming_one_host_the_first_wins_and_the_other_is_said() {
    let se = |name: &str, ip: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{ name: {name}, namespace: x }}\nspec: {{ hosts: [api.ext], ports: [{{ number: 80, name: http, protocol: HTTP }}], endpoints: [{{ address: {ip} }}] }}\n---\n"
        )
    };
    let text = format!("{}{}", se("one", "10.0.0.1"), se("two", "10.0.0.2"));
    let out = import(&[("se.yaml", &text)], &Options::default()).unwrap();
    assert_eq!(backend(&out, "api.ext").endpoints[0].address, "10.0.0.1:80");
    let said = out
        .losses
        .iter()
        .find(|l| l.resource == "ServiceEntry x/two");
    assert!(
        said.is_some_and(|l| l.path == "spec.hosts[0]" && l.reason.contains("second ServiceEntry"))
    );
}

/// One virtual node in both App Mesh forms (the controller's resource and
/// a describe call's output): the first read is the backend, the other
/// is reported whole.
#[test]
fn a_virtual_node_in_both_forms_is_one_backend() {
    let crd = "apiVersion: appmesh.k8s.aws/v1beta2\nkind: VirtualNode\nmetadata: { name: greeter-v1, namespace: apps }\nspec: { listeners: [{ portMapping: { port: 7000, protocol: http } }], serviceDiscovery: { dns: { hostname: crd.local } } }\n";
    let inputs = [
        ("node.yaml", crd),
        ("node.json", include_str!("../import/appmesh-node.json")),
    ];
    let out = import(&inputs, &Options::default()).unwrap();
    assert_eq!(
        backend(&out, "greeter-v1").endpoints[0].address,
        "crd.local:7000"
    );
    let said = out.losses.iter().find(|l| l.file == "node.json");
    assert!(
        said.is_some_and(|l| l.reason.contains("a second virtual node `greeter-v1`")),
        "{:#?}",
        out.losses
    );
}
