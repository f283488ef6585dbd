//! Trace context: W3C `traceparent` / `tracestate` (and B3, accepted on
//! the way in), the current inbound context of a task, and finished spans
//! handed to a [`SpanSink`] (an exporter).
//!
//! ```
//! use proxyless_tower::telemetry::trace::TraceContext;
//! let tc = TraceContext::parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
//! assert_eq!(tc.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
//! assert!(tc.sampled());
//! assert_eq!(tc.traceparent(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
//! ```

use arc_swap::ArcSwapOption;
use http::HeaderMap;
use std::sync::Arc;
use std::time::SystemTime;

/// A position in a trace: the trace, the current span, and flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace id (never 0).
    pub trace_id: u128,
    /// The span id (never 0).
    pub span_id: u64,
    /// W3C trace flags (bit 0: sampled).
    pub flags: u8,
    /// The `tracestate` header, passed along untouched.
    pub tracestate: Option<http::HeaderValue>,
}

/// The W3C trace context header.
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
/// The W3C vendor state header.
pub const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

fn nonzero_u64() -> u64 {
    loop {
        let v: u64 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

impl TraceContext {
    /// A new trace, sampled.
    pub fn new_root() -> Self {
        let mut trace_id: u128 = rand::random();
        if trace_id == 0 {
            trace_id = 1;
        }
        Self {
            trace_id,
            span_id: nonzero_u64(),
            flags: 1,
            tracestate: None,
        }
    }

    /// A child of this context: same trace and flags, a new span id.
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            span_id: nonzero_u64(),
            flags: self.flags,
            tracestate: self.tracestate.clone(),
        }
    }

    /// Whether the trace is sampled.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// Parses a `traceparent` header value (version 00, or a later version
    /// read as 00 as the spec asks).
    pub fn parse_traceparent(v: &str) -> Option<Self> {
        let mut parts = v.trim().split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2
            || version == "ff"
            || trace.len() != 32
            || span.len() != 16
            || flags.len() != 2
        {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
        let span_id = u64::from_str_radix(span, 16).ok().filter(|s| *s != 0)?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(Self {
            trace_id,
            span_id,
            flags,
            tracestate: None,
        })
    }

    /// The `traceparent` value for this context.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }

    /// The context a request carries: `traceparent` (+ `tracestate`), or B3
    /// (`b3` single header, or `x-b3-traceid` / `x-b3-spanid` /
    /// `x-b3-sampled`).
    pub fn extract(headers: &HeaderMap) -> Option<Self> {
        if let Some(tp) = headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()) {
            let mut tc = Self::parse_traceparent(tp)?;
            tc.tracestate = headers.get(TRACESTATE).cloned();
            return Some(tc);
        }
        if let Some(b3) = headers.get("b3").and_then(|v| v.to_str().ok()) {
            let mut parts = b3.split('-');
            let (trace, span) = (parts.next()?, parts.next()?);
            let sampled = parts.next().is_none_or(|s| s == "1" || s == "d");
            return Self::from_b3(trace, span, sampled);
        }
        let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
        let (trace, span) = (get("x-b3-traceid")?, get("x-b3-spanid")?);
        let sampled = get("x-b3-sampled").is_none_or(|s| s == "1" || s == "true")
            || get("x-b3-flags") == Some("1");
        Self::from_b3(trace, span, sampled)
    }

    fn from_b3(trace: &str, span: &str, sampled: bool) -> Option<Self> {
        // 64-bit B3 trace ids are left-padded to 128 bits.
        if !(trace.len() == 16 || trace.len() == 32) || span.len() != 16 {
            return None;
        }
        Some(Self {
            trace_id: u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?,
            span_id: u64::from_str_radix(span, 16).ok().filter(|s| *s != 0)?,
            flags: u8::from(sampled),
            tracestate: None,
        })
    }

    /// Writes this context into `headers` as W3C trace context.
    pub fn inject(&self, headers: &mut HeaderMap) {
        // Formatted on the stack: this runs on every request.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
        for i in 0..32 {
            buf[3 + i] = HEX[((self.trace_id >> (124 - 4 * i)) & 0xf) as usize];
        }
        for i in 0..16 {
            buf[36 + i] = HEX[((self.span_id >> (60 - 4 * i)) & 0xf) as usize];
        }
        buf[53] = HEX[usize::from(self.flags >> 4)];
        buf[54] = HEX[usize::from(self.flags & 0xf)];
        if let Ok(v) = http::HeaderValue::from_bytes(&buf) {
            headers.insert(TRACEPARENT, v);
        }
        match &self.tracestate {
            Some(ts) => {
                headers.insert(TRACESTATE, ts.clone());
            }
            None => {
                headers.remove(TRACESTATE);
            }
        }
    }

    /// The trace id as 32 hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// Runs `f` with `ctx` as the task's current trace context: outbound calls
/// made through the mesh inside it become its children. The server side
/// does this around every request it hands the application.
pub async fn scope<F: std::future::Future>(ctx: TraceContext, f: F) -> F::Output {
    CURRENT.scope(ctx, f).await
}

/// The task's current trace context, if it runs inside [`scope`].
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Client or server side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpanKind {
    /// An outbound request.
    Client,
    /// An inbound request.
    Server,
}

/// A finished span, for an exporter.
#[derive(Debug, Clone)]
pub struct FinishedSpan {
    /// Its name (`GET reviews` style: method and service or route).
    pub name: String,
    /// Client or server.
    pub kind: SpanKind,
    /// The trace.
    pub trace_id: u128,
    /// This span.
    pub span_id: u64,
    /// Its parent, if any.
    pub parent_span_id: Option<u64>,
    /// When it started.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// OpenTelemetry HTTP attributes and the mesh's own (`mesh.*`).
    pub attributes: Vec<(&'static str, String)>,
    /// Whether it ended in error (a 5xx or a failure).
    pub error: bool,
}

/// Where finished, sampled spans go (an OTLP exporter, a test collector).
pub trait SpanSink: Send + Sync + std::fmt::Debug {
    /// Takes one span; must not block.
    fn record(&self, span: FinishedSpan);
}

static SINK: ArcSwapOption<Box<dyn SpanSink>> = ArcSwapOption::const_empty();

/// Installs the process-wide span sink (replacing any earlier one).
pub fn set_span_sink(sink: Box<dyn SpanSink>) {
    SINK.store(Some(Arc::new(sink)));
}

/// Removes the span sink.
pub fn clear_span_sink() {
    SINK.store(None);
}

pub(crate) fn sink() -> Option<Arc<Box<dyn SpanSink>>> {
    SINK.load_full()
}

/// Hands a finished span to the sink, if one is installed.
pub fn record(span: FinishedSpan) {
    if let Some(s) = sink() {
        s.record(span);
    }
}

/// Whether a sink is installed (so spans are worth building).
pub fn has_sink() -> bool {
    SINK.load().is_some()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_malformed() {
        let tc = TraceContext::new_root();
        assert_eq!(
            TraceContext::parse_traceparent(&tc.traceparent()),
            Some(tc.clone())
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            assert_eq!(TraceContext::parse_traceparent(bad), None, "{bad}");
        }
        // A future version with more fields is read as version 00.
        assert!(
            TraceContext::parse_traceparent(
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz"
            )
            .is_some()
        );
    }

    #[test]
    fn b3_single_and_multi_headers_are_accepted() {
        let mut h = HeaderMap::new();
        h.insert(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"
                .parse()
                .unwrap(),
        );
        let tc = TraceContext::extract(&h).unwrap();
        assert_eq!(tc.trace_id, 0x80f198ee56343ba864fe8b2a57d3eff7);
        assert_eq!(tc.span_id, 0xe457b5a2e4d86bd1);
        assert!(tc.sampled());
        let mut h = HeaderMap::new();
        h.insert("x-b3-traceid", "a3ce929d0e0e4736".parse().unwrap());
        h.insert("x-b3-spanid", "00f067aa0ba902b7".parse().unwrap());
        h.insert("x-b3-sampled", "0".parse().unwrap());
        let tc = TraceContext::extract(&h).unwrap();
        assert_eq!(tc.trace_id, 0xa3ce929d0e0e4736);
        assert!(!tc.sampled());
    }

    #[test]
    fn children_keep_the_trace_and_inject_w3c() {
        let root = TraceContext::new_root();
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.span_id, root.span_id);
        let mut h = HeaderMap::new();
        child.inject(&mut h);
        assert_eq!(TraceContext::extract(&h), Some(child));
    }
}
