//! Traces through OpenTelemetry's API: the mesh's spans are made by the
//! globally installed tracer provider (the application's own pipeline, or
//! the one `proxyless_hyper::observe::init` installs), so they carry the
//! real ids and join the application's traces.
//!
//! - Outbound, the parent of the mesh's client span is, in order: an
//!   [`opentelemetry::Context`] the caller put in the request's extensions;
//!   the current `tracing` span's context when the application uses
//!   tracing-opentelemetry (feature `tracing-opentelemetry`); the current
//!   OpenTelemetry context ([`Context::current`]); trace headers the caller
//!   set on the request itself; else the span is a root.
//! - Inbound, the server span's parent is the context extracted from the
//!   request, and the application's handler runs with the server span as
//!   its current context, so its own spans continue the caller's trace.
//! - Headers are written and read by the globally configured propagator.
//!   While none is configured (OpenTelemetry's default is a no-op) the mesh
//!   uses [`MeshPropagator`]: W3C trace context and baggage, and B3 read on
//!   the way in.
//!
//! With no tracer provider installed the spans are OpenTelemetry's no-op
//! ones: nothing is recorded, and the caller's context passes through
//! unchanged to the next hop.
//!
//! ```
//! use opentelemetry::trace::TraceContextExt;
//! use proxyless_tower::telemetry::trace;
//! let mut headers = http::HeaderMap::new();
//! headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
//! let cx = trace::extract(&headers);
//! let remote = cx.span().span_context().clone();
//! assert_eq!(format!("{:032x}", remote.trace_id()), "4bf92f3577b34da6a3ce929d0e0e4736");
//! let mut out = http::HeaderMap::new();
//! trace::inject(&cx, &mut out);
//! assert_eq!(out["traceparent"], headers["traceparent"]);
//! ```

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::baggage::{Baggage, BaggageExt};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator, text_map_propagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, InstrumentationScope, global};
use std::str::FromStr;
use std::sync::OnceLock;

/// The W3C trace context header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The W3C vendor state header.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// The W3C baggage header.
pub const BAGGAGE: HeaderName = HeaderName::from_static("baggage");

const B3: HeaderName = HeaderName::from_static("b3");
const X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");

/// The instrumentation scope of the mesh's spans.
pub const SCOPE_NAME: &str = "proxyless";

/// The tracer the mesh's spans come from: the global provider's, asked
/// each time, so a provider installed after the mesh was built is used.
pub fn tracer() -> global::BoxedTracer {
    static SCOPE: OnceLock<InstrumentationScope> = OnceLock::new();
    let scope = SCOPE.get_or_init(|| {
        InstrumentationScope::builder(SCOPE_NAME)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build()
    });
    global::tracer_with_scope(scope.clone())
}

/// Writes `cx` into `headers` with the global propagator (or
/// [`MeshPropagator`] while none is configured).
pub fn inject(cx: &Context, headers: &mut HeaderMap) {
    with_propagator(|p| p.inject_context(cx, &mut HeaderInjector(headers)));
}

/// The context `headers` carry (on top of an empty one), read by the
/// global propagator (or [`MeshPropagator`] while none is configured).
pub fn extract(headers: &HeaderMap) -> Context {
    with_propagator(|p| p.extract_with_context(&Context::new(), &HeaderExtractor(headers)))
}

fn with_propagator<T>(mut f: impl FnMut(&dyn TextMapPropagator) -> T) -> T {
    // One read of the global: OpenTelemetry's default propagator is a
    // no-op with no fields, and stands aside for ours.
    global::get_text_map_propagator(|p| {
        if p.fields().next().is_some() {
            f(p)
        } else {
            f(&MeshPropagator)
        }
    })
}

/// The parent of an outbound request's span, in the order the module docs
/// give.
pub fn outbound_parent(extensions: &http::Extensions, headers: &HeaderMap) -> Context {
    if let Some(cx) = extensions.get::<Context>() {
        return cx.clone();
    }
    #[cfg(feature = "tracing-opentelemetry")]
    {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let cx = tracing::Span::current().context();
        if cx.span().span_context().is_valid() {
            return cx;
        }
    }
    let current = Context::current();
    if current.span().span_context().is_valid() {
        return current;
    }
    if carries_trace(headers) {
        return extract(headers);
    }
    current
}

/// Whether `headers` carry a trace context the application set. A few
/// headers are compared in one pass (three hash lookups cost more); a
/// large map is looked up.
fn carries_trace(headers: &HeaderMap) -> bool {
    const NAMES: [HeaderName; 3] = [TRACEPARENT, B3, X_B3_TRACEID];
    if headers.keys_len() <= 8 {
        headers.keys().any(|k| NAMES.contains(k))
    } else {
        NAMES.iter().any(|n| headers.contains_key(n))
    }
}

/// An [`Injector`] into an `http::HeaderMap` (a value that is not a valid
/// header is skipped).
#[derive(Debug)]
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The value's bytes are taken, not copied; the name every request
        // carries is made once.
        const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
        let name = match key {
            "traceparent" => Ok(TRACEPARENT),
            _ => HeaderName::from_str(key),
        };
        if let (Ok(name), Ok(value)) = (name, HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

/// An [`Extractor`] from an `http::HeaderMap` (values that are not text
/// read as absent).
#[derive(Debug)]
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// W3C trace context (`traceparent`, `tracestate`) and W3C baggage, both
/// ways, and B3 (single `b3` header, or `x-b3-*`) read on the way in: the
/// mesh's propagator while the application configured none.
#[derive(Debug, Default, Clone, Copy)]
pub struct MeshPropagator;

/// Baggage limits of the W3C spec: 180 entries, 8,192 bytes in all.
const MAX_BAGGAGE_ENTRIES: usize = 180;
const MAX_BAGGAGE_BYTES: usize = 8192;

fn fields() -> &'static [String] {
    static FIELDS: OnceLock<[String; 3]> = OnceLock::new();
    FIELDS.get_or_init(|| ["traceparent".into(), "tracestate".into(), "baggage".into()])
}

impl TextMapPropagator for MeshPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if sc.is_valid() {
            injector.set("traceparent", traceparent(sc));
            let state = sc.trace_state().header();
            if !state.is_empty() {
                injector.set("tracestate", state);
            }
        }
        let baggage = cx.baggage();
        if !baggage.is_empty() {
            let mut out = String::new();
            for (k, (v, meta)) in baggage.iter() {
                let entry = format!("{}={}", encode(k.as_str()), encode(v.as_str()));
                let entry = match meta.as_str() {
                    "" => entry,
                    m => format!("{entry};{m}"),
                };
                if out.len() + entry.len() + 1 > MAX_BAGGAGE_BYTES {
                    break;
                }
                if !out.is_empty() {
                    out.push(',');
                }
                out.push_str(&entry);
            }
            injector.set("baggage", out);
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let mut out = match extract_span_context(extractor) {
            Some(sc) => cx.with_remote_span_context(sc),
            None => cx.clone(),
        };
        if let Some(header) = extractor.get("baggage") {
            let baggage = parse_baggage(header);
            if !baggage.is_empty() {
                out = out.with_baggage(baggage);
            }
        }
        out
    }

    fn fields(&self) -> text_map_propagator::FieldIter<'_> {
        text_map_propagator::FieldIter::new(fields())
    }
}

/// The `traceparent` value of `sc`: `00-<trace id>-<span id>-<flags>` in
/// lower-case hex. Written byte by byte: one per request leaves the mesh,
/// and `format!`'s padded hex of a `u128` cost about 3,000 instructions.
pub fn traceparent(sc: &SpanContext) -> String {
    fn hex(out: &mut String, bytes: &[u8]) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for b in bytes {
            out.push(char::from(DIGITS[usize::from(b >> 4)]));
            out.push(char::from(DIGITS[usize::from(b & 0xf)]));
        }
    }
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    hex(&mut out, &sc.trace_id().to_bytes());
    out.push('-');
    hex(&mut out, &sc.span_id().to_bytes());
    out.push('-');
    hex(&mut out, &[sc.trace_flags().to_u8()]);
    out
}

/// Parses a `traceparent` value (version 00, or a later version read as
/// 00 as the spec asks) into a remote span context.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if version.len() != 2
        || version == "ff"
        || !hex(version)
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
        || !(hex(trace) && hex(span) && hex(flags))
    {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace_id = TraceId::from_hex(trace)
        .ok()
        .filter(|t| *t != TraceId::INVALID)?;
    let span_id = SpanId::from_hex(span)
        .ok()
        .filter(|s| *s != SpanId::INVALID)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

fn extract_span_context(extractor: &dyn Extractor) -> Option<SpanContext> {
    if let Some(tp) = extractor.get("traceparent") {
        let sc = parse_traceparent(tp)?;
        let state = extractor
            .get("tracestate")
            .and_then(|s| TraceState::from_str(s).ok())
            .unwrap_or_default();
        return Some(SpanContext::new(
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags(),
            true,
            state,
        ));
    }
    if let Some(b3) = extractor.get("b3") {
        let mut parts = b3.split('-');
        let (trace, span) = (parts.next()?, parts.next()?);
        let sampled = parts.next().is_none_or(|s| s == "1" || s == "d");
        return from_b3(trace, span, sampled);
    }
    let (trace, span) = (
        extractor.get("x-b3-traceid")?,
        extractor.get("x-b3-spanid")?,
    );
    let sampled = extractor
        .get("x-b3-sampled")
        .is_none_or(|s| s == "1" || s == "true")
        || extractor.get("x-b3-flags") == Some("1");
    from_b3(trace, span, sampled)
}

fn from_b3(trace: &str, span: &str, sampled: bool) -> Option<SpanContext> {
    // 64-bit B3 trace ids are left-padded to 128 bits.
    if !(trace.len() == 16 || trace.len() == 32) || span.len() != 16 {
        return None;
    }
    let trace_id = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
    let span_id = u64::from_str_radix(span, 16).ok().filter(|s| *s != 0)?;
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    Some(SpanContext::new(
        TraceId::from(trace_id),
        SpanId::from(span_id),
        flags,
        true,
        TraceState::default(),
    ))
}

/// Percent-encodes what W3C baggage does not allow bare.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let bare = b.is_ascii_alphanumeric() || b"!#$&'*+-.^_`|~/:?@[]".contains(&b);
        if bare {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Reads a `baggage` header, within the spec's limits; malformed entries
/// are skipped.
fn parse_baggage(header: &str) -> Baggage {
    let mut baggage = Baggage::new();
    if header.len() > MAX_BAGGAGE_BYTES {
        return baggage;
    }
    for entry in header.split(',').take(MAX_BAGGAGE_ENTRIES) {
        let (kv, meta) = entry.split_once(';').unwrap_or((entry, ""));
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        let (Some(k), Some(v)) = (decode(k.trim()), decode(v.trim())) else {
            continue;
        };
        if k.is_empty() {
            continue;
        }
        baggage.insert_with_metadata(k, v, meta.trim().to_owned());
    }
    baggage
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use opentelemetry::KeyValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    proptest::proptest! {
        /// The hand-written hex is what `format!` writes, for any ids and
        /// flags (small ids test the zero padding).
        #[test]
        fn traceparent_is_the_padded_hex_of_the_ids(
            trace in proptest::prop_oneof![1u128..1000, proptest::num::u128::ANY],
            span in proptest::prop_oneof![1u64..1000, proptest::num::u64::ANY],
            flags: u8,
        ) {
            let sc = SpanContext::new(
                opentelemetry::trace::TraceId::from(trace),
                opentelemetry::trace::SpanId::from(span),
                opentelemetry::trace::TraceFlags::new(flags),
                false,
                Default::default(),
            );
            let expected = format!("00-{trace:032x}-{span:016x}-{flags:02x}");
            proptest::prop_assert_eq!(traceparent(&sc), expected);
        }
    }

    #[test]
    fn traceparent_round_trips_and_rejects_malformed() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse_traceparent(tp).unwrap();
        assert!(sc.is_sampled() && sc.is_remote());
        assert_eq!(traceparent(&sc), tp);
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        // A future version with more fields is read as version 00.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
    }

    #[test]
    fn b3_single_and_multi_headers_are_read() {
        let cx = MeshPropagator.extract(&HeaderExtractor(&headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1",
        )])));
        let sc = cx.span().span_context().clone();
        assert_eq!(
            format!("{:032x}", sc.trace_id()),
            "80f198ee56343ba864fe8b2a57d3eff7"
        );
        assert_eq!(format!("{:016x}", sc.span_id()), "e457b5a2e4d86bd1");
        assert!(sc.is_sampled());
        let cx = MeshPropagator.extract(&HeaderExtractor(&headers(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "0"),
        ])));
        let sc = cx.span().span_context().clone();
        assert_eq!(
            format!("{:032x}", sc.trace_id()),
            "0000000000000000a3ce929d0e0e4736"
        );
        assert!(!sc.is_sampled());
    }

    #[test]
    fn tracestate_and_baggage_pass_through() {
        let h = headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "vendor=abc,other=x"),
            ("baggage", "user=alice%20b,tenant=t1;prop=1,bad"),
        ]);
        let cx = MeshPropagator.extract(&HeaderExtractor(&h));
        assert_eq!(
            cx.baggage().get("user").map(|v| v.as_str().to_owned()),
            Some("alice b".into())
        );
        assert_eq!(cx.baggage().len(), 2);
        let mut out = HeaderMap::new();
        MeshPropagator.inject_context(&cx, &mut HeaderInjector(&mut out));
        assert_eq!(out["traceparent"], h["traceparent"]);
        assert_eq!(out["tracestate"], "vendor=abc,other=x");
        let back = MeshPropagator.extract(&HeaderExtractor(&out));
        assert_eq!(
            back.baggage().get("user").map(|v| v.as_str().to_owned()),
            Some("alice b".into())
        );
        assert_eq!(
            back.baggage().get("tenant").map(|v| v.as_str().to_owned()),
            Some("t1".into())
        );
    }

    #[test]
    fn baggage_is_bounded() {
        let many: Vec<String> = (0..1000).map(|i| format!("k{i}=v")).collect();
        let cx =
            MeshPropagator.extract(&HeaderExtractor(&headers(&[("baggage", &many.join(","))])));
        assert!(cx.baggage().len() <= MAX_BAGGAGE_ENTRIES);
        let cx = Context::new()
            .with_baggage((0..2000).map(|i| KeyValue::new(format!("key{i}"), "value")));
        let mut out = HeaderMap::new();
        MeshPropagator.inject_context(&cx, &mut HeaderInjector(&mut out));
        assert!(out["baggage"].len() <= MAX_BAGGAGE_BYTES);
    }

    #[test]
    fn the_parent_is_an_attached_context_before_headers() {
        let sc =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let attached = Context::new().with_remote_span_context(sc.clone());
        let mut ext = http::Extensions::new();
        ext.insert(attached);
        let other = headers(&[(
            "traceparent",
            "00-11111111111111111111111111111111-2222222222222222-01",
        )]);
        let parent = outbound_parent(&ext, &other);
        assert_eq!(parent.span().span_context(), &sc);
        let parent = outbound_parent(&http::Extensions::new(), &other);
        assert_eq!(
            format!("{:032x}", parent.span().span_context().trace_id()),
            "11111111111111111111111111111111"
        );
        assert!(!outbound_parent(&http::Extensions::new(), &HeaderMap::new()).has_active_span());
    }

    #[test]
    fn a_trace_header_is_found_among_few_headers_and_among_many() {
        for name in ["traceparent", "b3", "x-b3-traceid"] {
            for extra in [0, 3, 20] {
                let mut map = HeaderMap::new();
                for i in 0..extra {
                    let filler = HeaderName::from_bytes(format!("x-filler-{i}").as_bytes());
                    map.insert(filler.unwrap(), HeaderValue::from_static("v"));
                }
                assert!(!carries_trace(&map), "{extra} fillers");
                map.insert(name, HeaderValue::from_static("x"));
                assert!(carries_trace(&map), "{name} among {extra}");
            }
        }
    }
}
