//! Span export over OTLP (feature `otlp`), for a service with no
//! OpenTelemetry pipeline of its own: an OpenTelemetry SDK tracer provider
//! with a batching OTLP/gRPC exporter (`opentelemetry-otlp` over tonic),
//! installed as the global provider, and the W3C trace context and baggage
//! propagator as the global propagator. A service that has its own
//! pipeline needs none of this: the mesh's spans go through whatever
//! provider is installed.
//!
//! Configured as the OpenTelemetry SDKs are: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//! or `OTEL_EXPORTER_OTLP_ENDPOINT` (a gRPC endpoint, `http://host:4317`),
//! `OTEL_SERVICE_NAME` for the `service.name` resource attribute, and the
//! SDK's own `OTEL_BSP_*` batch settings. Only
//! `OTEL_EXPORTER_OTLP_PROTOCOL=grpc` (the default here) is spoken; another
//! protocol is refused with an error at start. When the collector is slow
//! or away, spans beyond the batch queue are dropped by the SDK rather than
//! slowing requests.
//!
//! ```no_run
//! # async fn run() {
//! // OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 OTEL_SERVICE_NAME=reviews
//! let exporter = proxyless_hyper::otlp::install_from_env().expect("valid OTLP settings");
//! // ... traffic ...
//! if let Some(e) = exporter { e.flush().await; }
//! # }
//! ```

use opentelemetry::global;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::SdkTracerProvider;

/// Why OTLP export could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtlpError {
    /// The endpoint is not a usable URL.
    #[error("OTLP endpoint `{0}` is not an http:// or https:// URL")]
    Endpoint(String),
    /// A protocol this exporter does not speak.
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL={0} is not supported; use grpc")]
    Protocol(String),
    /// No tokio runtime to run the exporter on.
    #[error("OTLP export needs a tokio runtime")]
    NoRuntime,
    /// The exporter could not be built.
    #[error("OTLP exporter: {0}")]
    Build(String),
}

/// A running exporter: the SDK tracer provider it installed.
#[derive(Debug, Clone)]
pub struct Exporter {
    provider: SdkTracerProvider,
}

/// Starts an exporter if `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces
/// endpoint) is set, and installs it (see the module docs).
pub fn install_from_env() -> Result<Option<Exporter>, OtlpError> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let Some(endpoint) =
        var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
    else {
        return Ok(None);
    };
    if let Some(p) = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .filter(|p| p != "grpc")
    {
        return Err(OtlpError::Protocol(p));
    }
    let service = var("OTEL_SERVICE_NAME").unwrap_or_else(|| "unknown_service".to_owned());
    install(&endpoint, &service).map(Some)
}

/// Starts an exporter sending to the OTLP/gRPC `endpoint` as `service`,
/// installs its provider as the global one and W3C trace context and
/// baggage as the global propagator. Needs a tokio runtime.
pub fn install(endpoint: &str, service: &str) -> Result<Exporter, OtlpError> {
    let ok_scheme = endpoint.starts_with("http://") || endpoint.starts_with("https://");
    if !ok_scheme || endpoint.parse::<http::Uri>().is_err() {
        return Err(OtlpError::Endpoint(endpoint.to_owned()));
    }
    tokio::runtime::Handle::try_current().map_err(|_| OtlpError::NoRuntime)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| OtlpError::Build(e.to_string()))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build();
    global::set_tracer_provider(provider.clone());
    global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));
    tracing::info!(endpoint, service, "exporting spans over OTLP/gRPC");
    Ok(Exporter { provider })
}

impl Exporter {
    /// Exports what is queued now and waits for it.
    pub async fn flush(&self) {
        let provider = self.provider.clone();
        // The SDK's flush blocks until its batch thread has exported.
        let _ = tokio::task::spawn_blocking(move || provider.force_flush()).await;
    }

    /// Flushes and stops the exporter.
    pub async fn shutdown(&self) {
        let provider = self.provider.clone();
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }

    /// The SDK tracer provider, to add processors or make tracers from.
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }
}
