//! The route decision: match kinds, precedence, hosts, and weighted choice.

use http::HeaderMap;
use proptest::prelude::*;
use proxyless_core::config::Config;
use proxyless_core::route::{Decision, NoRoute, RequestParts, decide};
use proxyless_core::snapshot::{Snapshot, Source};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn snapshot(yaml: &str) -> Snapshot {
    Snapshot::compile(Config::from_yaml(yaml).unwrap(), 1, Source::Code).unwrap()
}

/// The route name a request gets, or the error.
fn route_of(
    snap: &Snapshot,
    authority: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<String, NoRoute> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let req = RequestParts::new(authority, method, path, query, &map);
    Ok(match decide(snap, &req, 0)? {
        Decision::Route(d) => d.route.name().to_string(),
        Decision::Passthrough => "<passthrough>".to_owned(),
    })
}

const MATCHES: &str = r#"
services:
  - name: api
    hosts: [api, api.default.svc]
    routes:
      - { name: exact, match: { path: { exact: /exact } }, to: [b] }
      - { name: prefix, match: { path: { prefix: /ratings } }, to: [b] }
      - { name: regex, match: { path: { regex: "/items/[0-9]+" } }, to: [b] }
      - { name: post-only, match: { methods: [POST, PUT], path: { prefix: /write } }, to: [b] }
      - { name: hdr-exact, match: { headers: { x-user: { exact: tester } } }, to: [b] }
      - { name: hdr-prefix, match: { headers: { x-team: { prefix: core- } } }, to: [b] }
      - { name: hdr-regex, match: { headers: { x-ver: { regex: "v[0-9]" } } }, to: [b] }
      - { name: hdr-present, match: { headers: { x-debug: { present: true } } }, to: [b] }
      - name: hdr-absent
        match: { path: { prefix: /quiet }, headers: { x-noisy: { present: false } } }
        to: [b]
      - { name: query, match: { query: { canary: { exact: "1" } } }, to: [b] }
      - { name: query-present, match: { query: { trace: { present: true } } }, to: [b] }
      - name: either
        match: [{ path: { exact: /a } }, { path: { exact: /b } }]
        to: [b]
      - { name: fallback, to: [b] }
backends:
  - { name: b, endpoints: ["127.0.0.1:1"] }
"#;

#[test]
fn each_match_kind_matches_what_it_names_and_nothing_else() {
    let s = snapshot(MATCHES);
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("GET", "/exact", &[], "exact"),
        ("GET", "/exact/more", &[], "fallback"),
        ("GET", "/ratings", &[], "prefix"),
        ("GET", "/ratings/1", &[], "prefix"),
        ("GET", "/items/42", &[], "regex"),
        ("GET", "/items/42x", &[], "fallback"), // regexes match the whole path
        ("GET", "/x/items/42", &[], "fallback"),
        ("POST", "/write", &[], "post-only"),
        ("PUT", "/write/1", &[], "post-only"),
        ("GET", "/write", &[], "fallback"),
        ("GET", "/", &[("x-user", "tester")], "hdr-exact"),
        ("GET", "/", &[("x-user", "testerX")], "fallback"),
        (
            "GET",
            "/",
            &[("x-user", "other"), ("x-user", "tester")],
            "hdr-exact",
        ),
        ("GET", "/", &[("x-team", "core-net")], "hdr-prefix"),
        ("GET", "/", &[("x-team", "edge-net")], "fallback"),
        ("GET", "/", &[("x-ver", "v2")], "hdr-regex"),
        ("GET", "/", &[("x-ver", "v22")], "fallback"),
        ("GET", "/", &[("x-debug", "")], "hdr-present"),
        ("GET", "/quiet", &[], "hdr-absent"),
        ("GET", "/quiet", &[("x-noisy", "1")], "fallback"),
        ("GET", "/?canary=1", &[], "query"),
        ("GET", "/?a=b&canary=1", &[], "query"),
        ("GET", "/?canary=2", &[], "fallback"),
        ("GET", "/?trace", &[], "query-present"),
        ("GET", "/a", &[], "either"),
        ("GET", "/b", &[], "either"),
        ("GET", "/c", &[], "fallback"),
    ];
    for (method, target, headers, want) in cases {
        let got = route_of(&s, "api", method, target, headers).unwrap();
        assert_eq!(&got, want, "{method} {target} {headers:?}");
    }
}

#[test]
fn the_first_matching_route_wins() {
    let s = snapshot(
        r#"
services:
  - name: api
    routes:
      - { name: first, match: { path: { prefix: /a } }, to: [b] }
      - { name: second, match: { path: { prefix: /a/b } }, to: [b] }
      - { name: third, to: [b] }
backends: [{ name: b, endpoints: ["127.0.0.1:1"] }]
"#,
    );
    assert_eq!(route_of(&s, "api", "GET", "/a/b/c", &[]).unwrap(), "first");
    assert_eq!(route_of(&s, "api", "GET", "/z", &[]).unwrap(), "third");
}

#[test]
fn hosts_match_by_alias_any_case_and_any_port() {
    let s = snapshot(MATCHES);
    for authority in ["api", "API", "api:8080", "Api.Default.Svc:80", "user@api:1"] {
        assert_eq!(
            route_of(&s, authority, "GET", "/exact", &[]).unwrap(),
            "exact",
            "{authority}"
        );
    }
}

#[test]
fn unknown_hosts_pass_through_unless_refused() {
    let s = snapshot(MATCHES);
    assert_eq!(
        route_of(&s, "example.com", "GET", "/", &[]).unwrap(),
        "<passthrough>"
    );
    let refuse = snapshot(
        "defaults: { unknown_hosts: refuse }\nservices: [{ name: api, routes: [{ match: { path: { exact: /x } }, to: [b] }] }]\nbackends: [{ name: b, endpoints: ['127.0.0.1:1'] }]",
    );
    assert_eq!(
        route_of(&refuse, "example.com:80", "GET", "/", &[]),
        Err(NoRoute::UnknownHost("example.com".into()))
    );
    assert!(
        matches!(route_of(&refuse, "api", "GET", "/y", &[]), Err(NoRoute::NoMatchingRoute(s)) if &*s == "api")
    );
}

#[test]
fn request_parts_take_the_host_header_for_origin_form_requests() {
    let req = http::Request::builder()
        .uri("/ratings/1?x=1")
        .header("host", "api:9000")
        .body(())
        .unwrap();
    let parts = RequestParts::of(&req);
    assert_eq!(
        (parts.host(), parts.path, parts.query),
        ("api", "/ratings/1", Some("x=1"))
    );
    let req = http::Request::builder()
        .uri("http://[::1]:80/")
        .body(())
        .unwrap();
    assert_eq!(RequestParts::of(&req).host(), "::1");
}

fn split_config(weights: &[u32]) -> String {
    let to: Vec<String> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| format!("{{ backend: b{i}, weight: {w} }}"))
        .collect();
    let backends: Vec<String> = (0..weights.len())
        .map(|i| format!("{{ name: b{i}, endpoints: ['127.0.0.1:{}'] }}", 1000 + i))
        .collect();
    format!(
        "services: [{{ name: api, routes: [{{ to: [{}] }}] }}]\nbackends: [{}]",
        to.join(", "),
        backends.join(", ")
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Over 100k decisions every backend's share is within one percentage
    /// point of its configured weight.
    #[test]
    fn weighted_choice_follows_the_weights(
        weights in prop::collection::vec(0u32..100, 2..6),
        seed in any::<u64>(),
    ) {
        prop_assume!(weights.iter().sum::<u32>() > 0);
        let snap = snapshot(&split_config(&weights));
        let headers = HeaderMap::new();
        let req = RequestParts::new("api", "GET", "/", None, &headers);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut counts = vec![0u32; weights.len()];
        const N: u32 = 100_000;
        for _ in 0..N {
            let Decision::Route(d) = decide(&snap, &req, rng.random()).unwrap() else { panic!() };
            counts[d.backend_index as usize] += 1;
        }
        let total: u32 = weights.iter().sum();
        for (i, (&w, &c)) in weights.iter().zip(&counts).enumerate() {
            let want = f64::from(w) / f64::from(total);
            let got = f64::from(c) / f64::from(N);
            prop_assert!((want - got).abs() < 0.01, "backend {i}: weight share {want:.4}, got {got:.4}");
            if w == 0 {
                prop_assert_eq!(c, 0);
            }
        }
    }
}

/// Shadow evaluation: the candidate is decided with the same draw; alike
/// decisions are counted only, each kind of difference (another route or
/// backend, a host only the candidate claims, a refusal) apart; a split
/// that moves weight differs on the share that moved.
#[test]
fn a_candidate_is_decided_with_the_same_draw_and_differences_are_filed_by_kind() {
    use proxyless_core::Mesh;
    use proxyless_core::shadow::Outcome;
    let live = "
services:
  - name: reviews
    routes:
      - { name: main, to: [{ backend: v1, weight: 90 }, { backend: v2, weight: 10 }] }
backends:
  - { name: v1, endpoints: ['127.0.0.1:1'] }
  - { name: v2, endpoints: ['127.0.0.1:2'] }
";
    let candidate = live.replace("weight: 90 }, { backend: v2, weight: 10", "weight: 50 }, { backend: v2, weight: 50")
        .replace("services:\n", "defaults: { unknown_hosts: refuse }\nservices:\n  - { name: ratings, routes: [{ name: r, to: [v1] }] }\n");
    let m = Mesh::from_config(Config::from_yaml(live).unwrap()).unwrap();
    m.set_candidate(Config::from_yaml(&candidate).unwrap(), Source::Code)
        .unwrap();
    let snap = m.snapshot();
    let c = snap.candidate().unwrap();
    let headers = HeaderMap::new();
    let mut rng = StdRng::seed_from_u64(7);
    let n = 10_000;
    let mut moved = 0;
    for _ in 0..n {
        let sample: u64 = rng.random();
        let req = RequestParts::new("reviews", "GET", "/", None, &headers);
        if proxyless_core::route::shadow(c, &decide(&snap, &req, sample), &req, sample).is_some() {
            moved += 1;
        }
    }
    // 40% of the weight moved from v1 to v2: a draw under both splits
    // lands apart about that often.
    assert!((3_600..=4_400).contains(&moved), "{moved}");
    let (d, _) = c.report().differences();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].live.backend_label(), "v1");
    assert_eq!(d[0].candidate.backend_label(), "v2");

    // A host only the candidate claims, and one it refuses.
    for host in ["ratings", "elsewhere"] {
        let req = RequestParts::new(host, "GET", "/", None, &headers);
        let live = decide(&snap, &req, 0);
        let (l, cand) = proxyless_core::route::shadow(c, &live, &req, 0).unwrap();
        assert_eq!(l, Outcome::Passthrough);
        match host {
            "ratings" => assert_eq!(cand.route_label(), "r"),
            _ => assert_eq!(cand, Outcome::UnknownHost),
        }
    }
    assert_eq!(c.report().evaluated(), n + 2);
    assert_eq!(c.report().differences().0.len(), 3);

    // A candidate changed in one backend shares the rest with the one
    // before (neither validated nor compiled again), and keeps counting.
    let before = m.candidate().unwrap();
    let moved = candidate.replace("127.0.0.1:2", "127.0.0.1:3");
    m.set_candidate(Config::from_yaml(&moved).unwrap(), Source::Code)
        .unwrap();
    let after = m.candidate().unwrap();
    let (b, a) = (before.snapshot(), after.snapshot());
    assert!(std::sync::Arc::ptr_eq(&b.services()[0], &a.services()[0]));
    assert!(std::sync::Arc::ptr_eq(&b.backends()[0], &a.backends()[0]));
    assert!(!std::sync::Arc::ptr_eq(&b.backends()[1], &a.backends()[1]));
    assert_eq!(after.report().evaluated(), n + 2);

    // Refused (its routes name backends it lacks): the one loaded stays.
    let mut bad = Config::from_yaml(live).unwrap();
    bad.backends.clear();
    let refused = m.set_candidate(bad, Source::Code).unwrap_err();
    assert!(refused.to_string().contains("v1"), "{refused}");
    assert_eq!(m.candidate().unwrap().report().evaluated(), n + 2);
}

#[test]
fn the_host_of_an_authority_drops_user_info_port_and_brackets() {
    use proxyless_core::route::host_of;
    for (authority, host) in [
        ("reviews", "reviews"),
        ("reviews:8080", "reviews"),
        ("user:pw@reviews:8080", "reviews"),
        ("a@b@reviews", "reviews"),
        ("[::1]:8080", "::1"),
        ("user@[fe80::1%25eth0]", "fe80::1%25eth0"),
        ("[::1", "::1"),
        ("", ""),
        ("@", ""),
        (":80", ""),
        ("réviews:80", "réviews"),
    ] {
        assert_eq!(host_of(authority), host, "{authority}");
    }
}

/// What `host_of` was written as before it became byte scans: the same
/// answer for every authority.
fn host_of_by_patterns(authority: &str) -> &str {
    let a = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(rest) = a.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    a.split_once(':').map_or(a, |(h, _)| h)
}

proptest! {
    #[test]
    fn the_host_of_any_authority_is_what_pattern_searches_give(
        authority in "[a-z0-9@:\\[\\]é.%-]{0,24}"
    ) {
        prop_assert_eq!(proxyless_core::route::host_of(&authority), host_of_by_patterns(&authority));
    }
}
