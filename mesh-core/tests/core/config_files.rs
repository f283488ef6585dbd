//! Every validation problem kind, each from a bad file whose header says
//! which problems (kind, path, line, words) it must produce.

use proxyless_core::config::{Config, ConfigError, ProblemKind};
use std::path::{Path, PathBuf};

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs")
}

#[derive(Debug)]
struct Expect {
    kind: String,
    path: String,
    line: Option<u32>,
    words: Option<String>,
}

/// `# expect: Kind path [line N] ["words"]`
fn expectations(text: &str) -> Vec<Expect> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .map(|rest| {
            let (head, words) = match rest.split_once('"') {
                Some((h, w)) => (h, Some(w.trim_end_matches('"').to_owned())),
                None => (rest, None),
            };
            let mut parts = head.split_whitespace();
            let kind = parts.next().unwrap().to_owned();
            let path = parts.next().unwrap().to_owned();
            let path = if path == "-" { String::new() } else { path };
            let line = match (parts.next(), parts.next()) {
                (Some("line"), Some(n)) => Some(n.parse().unwrap()),
                _ => None,
            };
            Expect {
                kind,
                path,
                line,
                words,
            }
        })
        .collect()
}

#[test]
fn every_bad_file_reports_exactly_its_problems() {
    let mut kinds_seen = std::collections::HashSet::new();
    let mut files = 0;
    for entry in std::fs::read_dir(configs().join("bad")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expected = expectations(&text);
        assert!(
            !expected.is_empty(),
            "{} has no expectations",
            path.display()
        );
        let err: ConfigError = Config::from_path(&path).expect_err(&path.display().to_string());
        assert_eq!(err.file.as_deref(), Some(path.as_path()));
        let shown = err.to_string();
        for e in &expected {
            let found = err.problems.iter().find(|p| {
                format!("{:?}", p.kind) == e.kind
                    && p.path == e.path
                    && (e.line.is_none() || p.line == e.line)
                    && e.words
                        .as_ref()
                        .is_none_or(|w| p.message.contains(w.as_str()))
            });
            assert!(
                found.is_some(),
                "{}: expected {e:?}\ngot:\n{shown}",
                path.display()
            );
            kinds_seen.insert(e.kind.clone());
        }
        assert_eq!(
            err.problems.len(),
            expected.len(),
            "{}: unexpected extra problems:\n{shown}",
            path.display()
        );
        files += 1;
    }
    assert!(files >= 14);
    for kind in [
        ProblemKind::Syntax,
        ProblemKind::UnknownField,
        ProblemKind::MissingField,
        ProblemKind::InvalidValue,
        ProblemKind::InvalidDuration,
        ProblemKind::InvalidRegex,
        ProblemKind::UndefinedReference,
        ProblemKind::ZeroWeight,
        ProblemKind::DuplicateName,
        ProblemKind::ConflictingHost,
        ProblemKind::InvalidSpiffeId,
        ProblemKind::InvalidAddress,
        ProblemKind::OutOfRange,
        ProblemKind::UnsupportedVersion,
    ] {
        assert!(
            kinds_seen.contains(&format!("{kind:?}")),
            "no bad file covers {kind:?}"
        );
    }
}

#[test]
fn the_design_example_loads_unchanged() {
    // The config of ../shared/DESIGN.md, copied byte for byte.
    let cfg = Config::from_path(configs().join("design.yaml")).unwrap();
    assert_eq!(cfg.trust_domain.as_deref(), Some("demo.local"));
    assert_eq!(cfg.defaults.timeout, std::time::Duration::from_secs(15));
    let reviews = &cfg.services[0];
    assert_eq!(reviews.hosts, ["reviews", "reviews.default.svc"]);
    let default = &reviews.routes[1];
    let retry = default.retry.as_ref().unwrap();
    assert_eq!(retry.attempts, 3);
    assert_eq!(
        retry.per_try_timeout,
        Some(std::time::Duration::from_millis(500))
    );
    assert_eq!(retry.on.len(), 3);
    assert_eq!(default.to[0].weight, 90);
    assert_eq!(
        cfg.backends[1]
            .tls
            .as_ref()
            .unwrap()
            .identity
            .as_ref()
            .unwrap()
            .path(),
        "/ns/default/sa/reviews"
    );
    assert_eq!(cfg.inbound[0].rules[0].to.methods, ["GET"]);
}

#[test]
fn json_reports_every_problem_of_every_stage() {
    let err = Config::from_path(configs().join("many_problems.json")).unwrap_err();
    let kinds: Vec<ProblemKind> = err.problems.iter().map(|p| p.kind).collect();
    assert!(kinds.contains(&ProblemKind::UnknownField), "{err}");
    assert!(kinds.contains(&ProblemKind::InvalidDuration), "{err}");
    assert!(
        err.to_string()
            .contains("backends[0].protocl: unknown field `protocl` (did you mean `protocol`?)"),
        "{err}"
    );
}

#[test]
fn json_and_yaml_read_the_same_model() {
    let yaml = Config::from_path(configs().join("design.yaml")).unwrap();
    let json = Config::from_json(&yaml.to_json()).unwrap();
    assert_eq!(yaml, json);
}

#[test]
fn shorthands_read_as_their_long_forms() {
    let short = Config::from_yaml(
        r#"
services:
  - name: s
    routes:
      - match: { headers: { x-user: tester }, methods: GET }
        to: [b]
        retry: { on: "5xx,reset" }
backends:
  - { name: b, endpoints: ["127.0.0.1:1"], load_balancer: { ring_hash: { header: x-user } } }
"#,
    )
    .unwrap();
    let long = Config::from_yaml(
        r#"
services:
  - name: s
    routes:
      - match: [{ headers: { x-user: { exact: tester } }, methods: [GET] }]
        to: [{ backend: b, weight: 1 }]
        retry: { on: [5xx, reset] }
backends:
  - name: b
    endpoints: [{ address: "127.0.0.1:1", weight: 1 }]
    load_balancer: { ring_hash: { header: x-user } }
"#,
    )
    .unwrap();
    assert_eq!(short, long);
}

#[test]
fn a_hash_balancer_without_a_key_is_refused() {
    let err = Config::from_yaml("backends: [{ name: b, endpoints: [], load_balancer: maglev }]")
        .unwrap_err();
    assert!(err.has(ProblemKind::MissingField), "{err}");
    assert!(err.to_string().contains("needs a key"), "{err}");
}

/// An adaptive concurrency limit's bounds are checked, each by its path.
#[test]
fn an_adaptive_limit_out_of_its_bounds_is_refused_by_field() {
    let err = Config::from_yaml(
        "backends: [{ name: b, endpoints: ['127.0.0.1:1'], adaptive_concurrency: { min_limit: 0, max_limit: 200000, initial_limit: 300000, tolerance: 0.5, window: 0s, probe_interval: 2d } }]",
    )
    .unwrap_err()
    .to_string();
    for field in [
        "min_limit",
        "max_limit",
        "initial_limit",
        "tolerance",
        "window",
        "probe_interval",
    ] {
        assert!(
            err.contains(&format!("backends[0].adaptive_concurrency.{field}")),
            "{field}: {err}"
        );
    }
    let ok = Config::from_yaml(
        "backends: [{ name: b, endpoints: ['127.0.0.1:1'], adaptive_concurrency: {} }]",
    )
    .unwrap();
    assert_eq!(
        ok.backends[0].adaptive_concurrency.as_deref(),
        Some(&proxyless_core::config::AdaptiveConcurrency::default())
    );
}

/// `grpc` is a protocol of its own name (HTTP/2 on the wire) and `h2c` is
/// read as `http2`, as users of Istio and Kuma write them; an unknown one
/// is refused with the list.
#[test]
fn grpc_and_h2c_are_protocols() {
    use proxyless_core::config::Protocol;
    let config = Config::from_yaml(
        "version: 1\nbackends:\n  - { name: a, endpoints: ['127.0.0.1:1'], protocol: grpc }\n  - { name: b, endpoints: ['127.0.0.1:2'], protocol: h2c }\n",
    )
    .unwrap();
    assert_eq!(config.backends[0].protocol, Protocol::Grpc);
    assert_eq!(config.backends[1].protocol, Protocol::Http2);
    assert!(Protocol::Grpc.is_http2() && Protocol::Http2.is_http2() && !Protocol::Http1.is_http2());
    let written = serde_json::to_string(&config.backends[0]).unwrap();
    assert!(written.contains(r#""protocol":"grpc""#), "{written}");
    let err = Config::from_yaml(
        "version: 1\nbackends:\n  - { name: a, endpoints: ['127.0.0.1:1'], protocol: grcp }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("one of http1, http2, grpc, h2c") && err.contains("did you mean `grpc`"),
        "{err}"
    );
}

/// A 10,000-service config (each with a 90/10 split over two backends of
/// three endpoints: ~2.8 MB of YAML, far over the YAML reader's default
/// budget of 250,000 nodes) is read and validated.
#[test]
fn ten_thousand_services_load() {
    use std::fmt::Write as _;
    let mut yaml = String::from("version: 1\nservices:\n");
    for i in 0..10_000 {
        let _ = writeln!(
            yaml,
            "  - name: svc-{i}\n    routes:\n      - to: [{{ backend: svc-{i}-a, weight: 90 }}, {{ backend: svc-{i}-b, weight: 10 }}]"
        );
    }
    yaml.push_str("backends:\n");
    for i in 0..10_000 {
        for side in ["a", "b"] {
            let _ = writeln!(
                yaml,
                "  - {{ name: svc-{i}-{side}, endpoints: ['10.0.0.1:80', '10.0.0.2:80', '10.0.0.3:80'] }}"
            );
        }
    }
    assert!(yaml.len() > 2_500_000, "{} bytes", yaml.len());
    let config = Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.services.len(), 10_000);
    assert_eq!(config.backends.len(), 20_000);
}

/// An alias bomb ("billion laughs") is refused, fast, with a problem
/// rather than expanded; so is text over the size limit.
#[test]
fn an_alias_bomb_and_an_oversized_text_are_refused() {
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    let mut prev = 'a';
    for c in "bcdefghij".chars() {
        let refs: Vec<String> = (0..9).map(|_| format!("*{prev}")).collect();
        bomb.push_str(&format!("{c}: &{c} [{}]\n", refs.join(",")));
        prev = c;
    }
    let started = std::time::Instant::now();
    let err = Config::from_yaml(&bomb).unwrap_err();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(!err.problems.is_empty());
    let huge = format!(
        "version: 1\n#{}\n",
        "x".repeat(proxyless_core::config::MAX_CONFIG_BYTES)
    );
    let err = Config::from_yaml(&huge).unwrap_err().to_string();
    assert!(err.contains("over the limit"), "{err}");
}

#[test]
fn locality_settings_are_checked_and_each_problem_named() {
    let err = Config::from_yaml(
        r#"
backends:
  - name: b
    endpoints:
      - { address: "10.0.0.1:80", locality: "a/b/c/d" }
      - { address: "10.0.0.2:80", locality: "us east", priority: 128 }
    locality_lb:
      overprovisioning: 0.5
      failover: [{ from: r1, to: r1 }, { from: r1, to: "r2/z" }]
      distribute: [{ from: "r1/*/x", to: { "r1/*": 60, "r2/*": 30 } }]
      weights: { "r1/a": 0, "r1/*": 2 }
"#,
    )
    .unwrap_err();
    let problems: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
    let expect = [
        "backends[0].endpoints[0].locality: `a/b/c/d` has more than three parts",
        "backends[0].endpoints[1].locality: `us east` has a space",
        "backends[0].endpoints[1].priority: 128 is above the highest priority, 127",
        "backends[0].locality_lb.overprovisioning: 0.5 is outside 1.0 to 10.0",
        "backends[0].locality_lb.failover[0]: a region cannot fail over to itself",
        "backends[0].locality_lb.failover[1].from: region `r1` has two failover targets",
        "backends[0].locality_lb.failover[1].to: `r2/z` is not a region name",
        "backends[0].locality_lb: `distribute` and `failover` exclude each other",
        "backends[0].locality_lb.distribute[0].from: `r1/*/x` has a space, a control character or `*`",
        "backends[0].locality_lb.distribute[0].to: the percents add up to 90, not 100",
        "backends[0].locality_lb.weights.r1/a: a locality weight must be at least 1",
        "backends[0].locality_lb.weights.r1/*: `r1/*` has a space, a control character or `*`",
    ];
    for e in expect {
        assert!(
            problems.iter().any(|p| p.contains(e)),
            "missing `{e}` in:\n{}",
            problems.join("\n")
        );
    }
    // Valid settings pass, and a locality reads back as written.
    let cfg = Config::from_yaml(
        r#"
backends:
  - name: b
    endpoints: [{ address: "10.0.0.1:80", locality: us-east1/us-east1-b, priority: 1, healthy: false }]
    locality_lb: { distribute: [{ from: "*", to: { "us-east1/*": 100 } }], weights: { us-east1/us-east1-b: 2 } }
"#,
    )
    .unwrap();
    let e = &cfg.backends[0].endpoints[0];
    assert_eq!(
        e.locality.as_ref().unwrap().to_string(),
        "us-east1/us-east1-b"
    );
    assert_eq!((e.priority, e.healthy), (1, false));
}

#[test]
fn rate_limits_are_checked_and_each_problem_named() {
    let err = Config::from_yaml(
        r#"
services:
  - name: s
    routes: [{ to: [b], rate_limit: { max_tokens: 0, fill_interval: 10ms, per: caller } }]
backends: [{ name: b, endpoints: ["10.0.0.1:80"] }]
inbound:
  - service: s
    rate_limit: { max_tokens: 5, tokens_per_fill: 0, max_keys: 2000000, per: { header: "bad header" } }
"#,
    )
    .unwrap_err();
    let problems: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
    for e in [
        "services[0].routes[0].rate_limit.max_tokens: must be at least 1",
        "services[0].routes[0].rate_limit.fill_interval: 10ms is shorter than 50ms",
        "services[0].routes[0].rate_limit.per: `caller` keys an inbound limit",
        "inbound[0].rate_limit.tokens_per_fill: must be at least 1",
        "inbound[0].rate_limit.max_keys: 2000000 is above the most, 1000000",
        "inbound[0].rate_limit.per: `bad header` is not a valid header name",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(e)),
            "missing `{e}` in:\n{}",
            problems.join("\n")
        );
    }
}

#[test]
fn hedging_policies_are_checked_and_each_problem_named() {
    let err = Config::from_yaml(
        r#"
services:
  - name: s
    routes:
      - to: [b]
        retry: { attempts: 2 }
        hedge: { attempts: 9, delay: p20, budget_percent: 0 }
      - { to: [b], hedge: { delay: 0s } }
      - { to: [b], hedge: { delay: soon } }
backends: [{ name: b, endpoints: ["10.0.0.1:80"] }]
"#,
    )
    .unwrap_err();
    let problems: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
    for e in [
        "services[0].routes[0].hedge.attempts: 9 attempts; a hedging policy makes 2 to 5",
        "services[0].routes[0].hedge.delay: p20 is outside p50 to p99.9",
        "services[0].routes[0].hedge.budget_percent: 0 is not a percentage above 0",
        "services[0].routes[0].hedge: a route has a retry policy or a hedging policy, not both",
        "services[0].routes[1].hedge.delay: must be greater than zero",
        "services[0].routes[2].hedge.delay: `soon` is neither a duration nor a percentile",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(e)),
            "missing `{e}` in:\n{}",
            problems.join("\n")
        );
    }
}

/// An inbound policy's service need not be among those the workload
/// calls; a near miss of one is refused as the typo it likely is, but a
/// workload named for a version or part of a service is not a typo.
#[test]
fn an_inbound_service_near_a_listed_one_is_a_typo_unless_it_extends_it() {
    let with = |inbound: &str| {
        Config::from_yaml(&format!(
            "services: [{{ name: reviews, routes: [{{ to: [b] }}] }}]\nbackends: [{{ name: b, endpoints: ['127.0.0.1:1'] }}]\ninbound: [{{ service: {inbound} }}]\n"
        ))
    };
    for fine in ["reviews", "reviews-v1", "reviews.canary", "ratings"] {
        assert!(with(fine).is_ok(), "{fine}: {:?}", with(fine).err());
    }
    for typo in ["reveiws", "review", "reviewz"] {
        let err = with(typo).unwrap_err().to_string();
        assert!(err.contains("did you mean `reviews`"), "{typo}: {err}");
    }
}
