//! model -> YAML -> model (and JSON) is the identity, for generated configs.

use proptest::prelude::*;
use proxyless_core::config::*;
use proxyless_core::identity::SpiffeId;
use std::collections::BTreeMap;
use std::time::Duration;

fn dur() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (1u64..100_000).prop_map(Duration::from_millis),
        (1u64..7200).prop_map(Duration::from_secs),
        (1u64..1_000_000).prop_map(Duration::from_micros),
    ]
}

fn percent() -> impl Strategy<Value = f64> {
    (0u32..=1000).prop_map(|p| f64::from(p) / 10.0)
}

fn string_match() -> impl Strategy<Value = StringMatch> {
    prop_oneof![
        "[a-z0-9-]{1,8}".prop_map(StringMatch::Exact),
        "[a-z0-9-]{1,8}".prop_map(StringMatch::Prefix),
        "[a-z]{1,4}[0-9]?".prop_map(|s| StringMatch::Regex(format!("{s}.*"))),
        any::<bool>().prop_map(StringMatch::Present),
    ]
}

fn route_match() -> impl Strategy<Value = RouteMatch> {
    (
        prop::option::of(prop_oneof![
            "/[a-z]{0,6}".prop_map(PathMatch::Exact),
            "/[a-z]{0,6}".prop_map(PathMatch::Prefix),
            "/[a-z]{1,6}".prop_map(|s| PathMatch::Regex(format!("{s}/[0-9]+"))),
        ]),
        prop::sample::subsequence(vec!["GET", "POST", "PUT", "DELETE"], 0..3),
        prop::collection::btree_map("x-[a-z]{1,6}", string_match(), 0..3),
        prop::collection::btree_map("[a-z]{1,6}", string_match(), 0..2),
    )
        .prop_map(|(path, methods, headers, query)| RouteMatch {
            path,
            methods: methods.into_iter().map(str::to_owned).collect(),
            headers,
            query,
        })
}

fn retry() -> impl Strategy<Value = RetryPolicy> {
    (
        1u32..=10,
        prop::option::of(dur()),
        prop::sample::subsequence(
            vec![
                RetryOn::FiveXx,
                RetryOn::GatewayError,
                RetryOn::ConnectFailure,
                RetryOn::Reset,
                RetryOn::Unavailable,
            ],
            1..4,
        ),
        (1u64..100, 1u64..20),
        any::<bool>(),
        1u32..1_000_000,
    )
        .prop_map(
            |(attempts, per_try_timeout, on, (base, mult), non_idem, max_body)| RetryPolicy {
                attempts,
                per_try_timeout,
                on,
                retriable_status_codes: vec![],
                backoff: Backoff {
                    base: Duration::from_millis(base),
                    max: Duration::from_millis(base * mult),
                },
                retry_non_idempotent: non_idem,
                max_body_bytes: max_body,
            },
        )
}

fn route(n_backends: usize) -> impl Strategy<Value = Route> {
    (
        prop::option::of("[a-z]{1,6}"),
        prop::collection::vec(route_match(), 0..3),
        prop::collection::vec((0..n_backends, 1u32..100), 1..4),
        prop::option::of(dur()),
        prop::option::of(retry()),
        prop::option::of((
            prop::option::of((dur(), percent())),
            prop::option::of((200u16..600, percent())),
        )),
        (
            prop::option::of((0..n_backends, percent())),
            prop::option::of(rate_limit()),
        ),
    )
        .prop_map(
            |(name, matches, to, timeout, retry, fault, (mirror, rate_limit))| Route {
                // With no retry policy, a hedging one.
                hedge: retry.is_none().then(|| {
                    Box::new(HedgePolicy {
                        attempts: 3,
                        delay: HedgeDelay::Percentile(95.0),
                        budget_percent: 10.0,
                        hedge_non_idempotent: false,
                    })
                }),
                rate_limit: rate_limit.map(Box::new),
                name: name.map(Into::into),
                matches,
                to: to
                    .into_iter()
                    .map(|(b, weight)| WeightedBackend {
                        backend: format!("b{b}").into(),
                        weight,
                    })
                    .collect(),
                timeout,
                retry: retry.map(Into::into),
                fault: fault.map(|(delay, abort)| {
                    Box::new(Fault {
                        delay: delay.map(|(fixed, percent)| FaultDelay { fixed, percent }),
                        abort: abort.map(|(status, percent)| FaultAbort { status, percent }),
                    })
                }),
                mirror: mirror.map(|(b, percent)| {
                    Box::new(Mirror {
                        backend: format!("b{b}").into(),
                        percent,
                    })
                }),
                classifier: timeout.map(|_| "overloaded".to_owned()),
            },
        )
}

fn backend(i: usize) -> impl Strategy<Value = Backend> {
    (
        prop::collection::btree_set(1u16..60000, 0..4),
        1u32..5,
        prop_oneof![Just(Protocol::Http1), Just(Protocol::Http2)],
        prop_oneof![
            Just(LoadBalancer::P2cEwma),
            Just(LoadBalancer::RoundRobin),
            Just(LoadBalancer::Random),
            "x-[a-z]{1,5}".prop_map(|header| LoadBalancer::RingHash { header }),
            "x-[a-z]{1,5}".prop_map(|header| LoadBalancer::Maglev { header }),
        ],
        prop::option::of((1u32..5000, 1u32..5000, 0u32..10)),
        prop::option::of((0u32..10, 0u32..10, 0u32..10, 1u64..60, 1u64..10, 0u32..=100)),
        prop::option::of("[a-z]{1,8}"),
        (
            prop::collection::vec(
                (
                    prop::option::of(prop::sample::select(vec!["r1/a", "r1/b", "r2/c/s"])),
                    0u32..3,
                    any::<bool>(),
                ),
                4,
            ),
            prop::option::of(locality_lb()),
            prop::option::of((any::<bool>(), 1u64..5, 5u64..120)),
        ),
    )
        .prop_map(
            move |(
                ports,
                weight,
                protocol,
                load_balancer,
                cb,
                od,
                tls,
                (places, locality_lb, dns),
            )| {
                let n = ports.len();
                // A DNS backend's endpoints are names, healthy; a logical
                // one has exactly one.
                let dns = dns.map(|(logical, min, max)| Dns {
                    mode: if logical && n == 1 {
                        DnsMode::Logical
                    } else {
                        DnsMode::Strict
                    },
                    servers: vec!["127.0.0.53:53".into()],
                    min_refresh: Duration::from_secs(min),
                    max_refresh: Duration::from_secs(max),
                });
                let host = if dns.is_some() {
                    "ratings.internal"
                } else {
                    "127.0.0.1"
                };
                Backend {
                    name: format!("b{i}").into(),
                    endpoints: ports
                        .into_iter()
                        .zip(places)
                        .map(|(p, (locality, priority, healthy))| Endpoint {
                            address: format!("{host}:{p}"),
                            weight,
                            locality: locality.map(|l| l.parse::<Locality>().unwrap().into()),
                            priority,
                            healthy: healthy || dns.is_some(),
                        })
                        .collect(),
                    locality_lb: locality_lb.map(Box::new),
                    dns: dns.map(Box::new),
                    protocol,
                    load_balancer,
                    circuit_breaker: cb.map(|(r, p, x)| CircuitBreaker {
                        max_requests: r,
                        max_pending: p,
                        max_retries: x,
                    }),
                    outlier_detection: od.map(|(a, b, c, base, mult, pct)| {
                        Box::new(OutlierDetection {
                            consecutive_5xx: a,
                            consecutive_gateway_errors: b,
                            consecutive_connect_failures: c,
                            base_ejection: Duration::from_secs(base),
                            max_ejection: Duration::from_secs(base * mult),
                            max_ejection_percent: pct,
                        })
                    }),
                    tls: tls.map(|sa| {
                        Box::new(BackendTls::mutual(
                            SpiffeId::new(&format!("spiffe://demo.local/sa/{sa}")).unwrap(),
                        ))
                    }),
                    // Derived from the breaker's draw: a limit between its
                    // bounds, a window in whole milliseconds.
                    adaptive_concurrency: cb.map(|(r, _, _)| {
                        Box::new(proxyless_core::config::AdaptiveConcurrency {
                            min_limit: 1,
                            max_limit: r.max(1),
                            initial_limit: 1,
                            tolerance: 1.25,
                            window: Duration::from_millis(u64::from(r % 1000 + 1)),
                            probe_interval: Duration::from_secs(90),
                        })
                    }),
                }
            },
        )
}

fn rate_limit() -> impl Strategy<Value = RateLimit> {
    (
        1u32..1000,
        1u32..1000,
        50u64..10_000,
        prop_oneof![
            Just(None),
            Just(Some(RateLimitKey::Path)),
            "x-[a-z]{1,5}".prop_map(|h| Some(RateLimitKey::Header(h))),
        ],
        1u32..100_000,
    )
        .prop_map(
            |(max_tokens, tokens_per_fill, ms, per, max_keys)| RateLimit {
                max_tokens,
                tokens_per_fill,
                fill_interval: Duration::from_millis(ms),
                per,
                max_keys,
            },
        )
}

fn locality_lb() -> impl Strategy<Value = LocalityLb> {
    (
        any::<bool>(),
        prop::sample::select(vec![1.0, 1.4, 3.5]),
        any::<bool>(),
        prop::collection::btree_map(
            prop::sample::select(vec!["r1/a", "r1/b", "r2/c/s"]).prop_map(str::to_owned),
            1u32..10,
            0..3,
        ),
    )
        .prop_map(|(prefer_local, overprovisioning, failover, weights)| {
            let (failover, distribute) = if failover {
                let f = LocalityFailover {
                    from: "r1".into(),
                    to: "r2".into(),
                };
                (vec![f], vec![])
            } else {
                let to = [("r1/*".to_owned(), 60), ("r2/c/s".to_owned(), 40)];
                let d = LocalityDistribute {
                    from: "*".into(),
                    to: to.into_iter().collect(),
                };
                (vec![], vec![d])
            };
            LocalityLb {
                prefer_local,
                overprovisioning,
                failover,
                distribute,
                weights,
            }
        })
}

fn config() -> impl Strategy<Value = Config> {
    (1usize..4, 1usize..4).prop_flat_map(|(n_services, n_backends)| {
        let backends: Vec<_> = (0..n_backends).map(backend).collect();
        let services: Vec<_> = (0..n_services)
            .map(|i| {
                (
                    prop::collection::vec("[a-z]{1,6}", 0..3),
                    prop::collection::vec(route(n_backends), 0..4),
                )
                    .prop_map(move |(hosts, mut routes)| {
                        // Route names must be unique within a service.
                        for (j, r) in routes.iter_mut().enumerate() {
                            if let Some(n) = &mut r.name {
                                *n = format!("{n}{j}").into();
                            }
                        }
                        let mut hosts: Vec<String> =
                            hosts.into_iter().map(|h| format!("{h}.s{i}")).collect();
                        hosts.dedup();
                        Service {
                            name: format!("s{i}").into(),
                            hosts: hosts.into_iter().map(Into::into).collect(),
                            routes,
                            classifier: (i % 2 == 0).then(|| "by-status".to_owned()),
                        }
                    })
            })
            .collect();
        (
            services,
            backends,
            prop::option::of(Just("demo.local".to_owned())),
            (1u64..100, 0u32..=100, 0u32..50, any::<bool>()),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just(MtlsMode::Strict),
                        Just(MtlsMode::Permissive),
                        Just(MtlsMode::Disabled)
                    ],
                    prop::collection::vec(
                        (
                            prop_oneof![Just(AuthzAction::Allow), Just(AuthzAction::Deny)],
                            prop::sample::subsequence(
                                vec!["*", "spiffe://demo.local/sa/a", "spiffe://demo.local/ns/*"],
                                0..3,
                            ),
                            prop::sample::subsequence(vec!["/x", "/y/*", "*"], 0..2),
                            prop::sample::subsequence(vec!["GET", "POST"], 0..2),
                        ),
                        0..3,
                    ),
                ),
                0..=1,
            ),
        )
            .prop_map(
                move |(
                    services,
                    backends,
                    trust_domain,
                    (timeout, ratio, min, refuse),
                    inbound,
                )| Config {
                    version: 1,
                    identity: refuse.then(|| IdentityFiles {
                        cert: "certs/web.pem".into(),
                        key: "certs/web-key.pem".into(),
                        ca: "certs/ca.pem".into(),
                    }),
                    trust_domain,
                    defaults: Defaults {
                        timeout: Duration::from_secs(timeout),
                        connect_timeout: Duration::from_millis(500),
                        retry_budget: RetryBudget {
                            ratio: f64::from(ratio) / 100.0,
                            min_per_second: min,
                            ttl: Duration::from_secs(10),
                        },
                        unknown_hosts: if refuse {
                            UnknownHosts::Refuse
                        } else {
                            UnknownHosts::Passthrough
                        },
                        path_normalization: proxyless_core::path::PathNormalization {
                            merge_slashes: !refuse,
                            escaped_slashes: if refuse {
                                proxyless_core::path::EscapedSlashes::Redirect
                            } else {
                                proxyless_core::path::EscapedSlashes::Keep
                            },
                            semicolons: proxyless_core::path::Semicolons::Keep,
                        },
                    },
                    inbound: inbound
                        .into_iter()
                        .map(|(mtls, rules)| InboundPolicy {
                            rate_limit: Some(RateLimit {
                                max_tokens: 50,
                                tokens_per_fill: 10,
                                fill_interval: Duration::from_millis(250),
                                per: Some(RateLimitKey::Caller),
                                max_keys: 100,
                            }),
                            service: "s0".to_owned(),
                            mtls,
                            certificate: refuse.then(|| "default".to_owned()),
                            trust: refuse.then(|| "sds:ROOTCA".to_owned()),
                            rules: rules
                                .into_iter()
                                .map(|(action, from, paths, methods)| AuthzRule {
                                    action,
                                    from: from.into_iter().map(str::to_owned).collect(),
                                    to: AuthzTarget {
                                        paths: paths.into_iter().map(str::to_owned).collect(),
                                        methods: methods.into_iter().map(str::to_owned).collect(),
                                    },
                                })
                                .collect(),
                        })
                        .collect(),
                    services: services.into_iter().map(Into::into).collect(),
                    backends: backends.into_iter().map(Into::into).collect(),
                },
            )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn yaml_round_trip_is_the_identity(cfg in config()) {
        cfg.validate().map_err(|e| TestCaseError::fail(format!("generated config invalid: {e}")))?;
        let yaml = cfg.to_yaml();
        let back = Config::from_yaml(&yaml).map_err(|e| TestCaseError::fail(format!("{e}\n---\n{yaml}")))?;
        prop_assert_eq!(&back, &cfg, "yaml was:\n{}", yaml);
        let json = Config::from_json(&cfg.to_json()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&json, &cfg);
        // Without what equals the defaults, the same config.
        let short = cfg.to_yaml_short();
        let back = Config::from_yaml(&short).map_err(|e| TestCaseError::fail(format!("{e}\n---\n{short}")))?;
        prop_assert_eq!(&back, &cfg, "short yaml was:\n{}", short);
        prop_assert!(short.len() <= yaml.len());
    }
}

#[test]
fn defaults_are_filled_in_and_written_out() {
    let cfg = Config::from_yaml("services: []").unwrap();
    assert_eq!(cfg, Config::default());
    assert_eq!(Config::from_yaml(&cfg.to_yaml()).unwrap(), cfg);
    let _: BTreeMap<String, StringMatch> = BTreeMap::new();
}
