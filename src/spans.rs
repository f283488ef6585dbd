//! Spans collected in process, as an application's own OpenTelemetry
//! pipeline would see them: an SDK tracer provider with an in-memory
//! exporter installed as the global provider, and W3C trace context and
//! baggage as the global propagator. For the demo and the tests.
//!
//! ```
//! let spans = mesh::spans::Collector::install();
//! // ... traffic through the mesh ...
//! let all = spans.finished();
//! # assert!(all.is_empty());
//! ```

use opentelemetry::global;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};

pub use opentelemetry::trace::SpanKind;

/// The installed provider and what it exported.
#[derive(Debug, Clone)]
pub struct Collector {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
}

impl Collector {
    /// Installs a provider that exports every span, as it ends, into
    /// memory (replacing any global provider and propagator).
    pub fn install() -> Self {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        global::set_tracer_provider(provider.clone());
        global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]));
        Self { exporter, provider }
    }

    /// The provider (to make the application's own tracers from).
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// Every span ended so far.
    pub fn finished(&self) -> Vec<SpanData> {
        self.exporter.get_finished_spans().unwrap_or_default()
    }

    /// The spans of one trace.
    pub fn trace(&self, id: TraceId) -> Vec<SpanData> {
        self.finished()
            .into_iter()
            .filter(|s| s.span_context.trace_id() == id)
            .collect()
    }

    /// Forgets what was collected.
    pub fn reset(&self) {
        self.exporter.reset();
    }
}

/// The span named `name` in `spans`.
pub fn named<'a>(spans: &'a [SpanData], name: &str) -> Option<&'a SpanData> {
    spans.iter().find(|s| s.name == name)
}

/// The children of span `parent`, by start time.
pub fn children(spans: &[SpanData], parent: SpanId) -> Vec<&SpanData> {
    let mut kids: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.parent_span_id == parent)
        .collect();
    kids.sort_by_key(|s| s.start_time);
    kids
}

/// An attribute's value as text.
pub fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// The trace under `root` as indented lines: name, kind and duration.
pub fn tree(spans: &[SpanData], root: &SpanData) -> Vec<String> {
    fn walk(spans: &[SpanData], span: &SpanData, depth: usize, out: &mut Vec<String>) {
        let kind = match span.span_kind {
            SpanKind::Server => "server",
            SpanKind::Client => "client",
            _ => "internal",
        };
        let ms = span
            .end_time
            .duration_since(span.start_time)
            .unwrap_or_default()
            .as_secs_f64()
            * 1000.0;
        out.push(format!(
            "{:indent$}{} [{kind}, {ms:.2} ms]",
            "",
            span.name,
            indent = depth * 2
        ));
        for kid in children(spans, span.span_context.span_id()) {
            walk(spans, kid, depth + 1, out);
        }
    }
    let mut out = Vec::new();
    walk(spans, root, 0, &mut out);
    out
}
