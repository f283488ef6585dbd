//! What a peer puts in a request: the deadline headers (`grpc-timeout`,
//! `x-mesh-timeout-ms`), trace context (`traceparent`, `b3`), the
//! authority, the path; and what a config names: durations, SPIFFE IDs,
//! identity patterns. None of their parsers panics, and path normalization
//! is idempotent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxyless_core::path::{PathNormalization, normalize};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(v) = http::HeaderValue::from_str(s) {
        let mut h = http::HeaderMap::new();
        for name in [
            "grpc-timeout",
            "traceparent",
            "b3",
            "x-b3-traceid",
            "x-b3-spanid",
            "tracestate",
            "baggage",
            "x-mesh-timeout-ms",
        ] {
            h.insert(name, v.clone());
        }
        if let Some(d) = proxyless_tower::grpc::parse_timeout(&h) {
            let _ = proxyless_tower::ext::deadline_after(d);
        }
        // What the mesh reads it writes back the same (W3C, and baggage
        // within its limits).
        use opentelemetry::trace::TraceContextExt;
        let cx = proxyless_tower::telemetry::trace::extract(&h);
        let mut out = http::HeaderMap::new();
        proxyless_tower::telemetry::trace::inject(&cx, &mut out);
        let again = proxyless_tower::telemetry::trace::extract(&out);
        assert_eq!(
            cx.span().span_context().trace_id(),
            again.span().span_context().trace_id()
        );
        assert_eq!(
            cx.span().span_context().span_id(),
            again.span().span_context().span_id()
        );
    }
    let _ = proxyless_tower::telemetry::trace::parse_traceparent(s);
    let _ = proxyless_core::route::host_of(s);
    let _ = proxyless_core::config::parse_duration(s);
    let _ = proxyless_core::identity::SpiffeId::new(s);
    let _ = proxyless_core::identity::IdentityMatcher::new(s.split(','));
    for how in [
        PathNormalization::default(),
        PathNormalization {
            merge_slashes: false,
            escaped_slashes: proxyless_core::path::EscapedSlashes::Decode,
            semicolons: proxyless_core::path::Semicolons::Keep,
        },
    ] {
        if let Ok(once) = normalize(s, &how) {
            let once = once.as_str().to_owned();
            let twice = normalize(&once, &how).expect("a normal path normalizes");
            assert_eq!(twice.as_str(), once, "not idempotent for {s:?}");
        }
    }
});
