//! Span export over OTLP/HTTP with protobuf bodies (feature `otlp`).
//!
//! Configured as the OpenTelemetry SDKs are: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//! (the full URL) or `OTEL_EXPORTER_OTLP_ENDPOINT` (plus `/v1/traces`), and
//! `OTEL_SERVICE_NAME` for the `service.name` resource attribute. Spans are
//! batched (up to 512, or every second) and posted by a background task;
//! when the collector is slow or away, spans beyond a bounded queue are
//! dropped and counted rather than slowing requests. Only
//! `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf` (the default here) is spoken;
//! `grpc` is refused with an error at start.
//!
//! ```no_run
//! # async fn run() {
//! // OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 OTEL_SERVICE_NAME=reviews
//! let exporter = proxyless_hyper::otlp::install_from_env().expect("valid OTLP settings");
//! // ... traffic ...
//! if let Some(e) = exporter { e.flush().await; }
//! # }
//! ```

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use proxyless_tower::telemetry::trace::{FinishedSpan, SpanKind, SpanSink, set_span_sink};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

const BATCH: usize = 512;
const QUEUE: usize = 4096;

/// Why OTLP export could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtlpError {
    /// The endpoint is not a usable URL.
    #[error("OTLP endpoint `{0}` is not an http:// URL")]
    Endpoint(String),
    /// A protocol this exporter does not speak.
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL={0} is not supported; use http/protobuf")]
    Protocol(String),
    /// No tokio runtime to run the exporter on.
    #[error("OTLP export needs a tokio runtime")]
    NoRuntime,
}

/// A running exporter.
#[derive(Debug, Clone)]
pub struct Exporter {
    tx: mpsc::Sender<Msg>,
    dropped: Arc<AtomicU64>,
    exported: Arc<AtomicU64>,
}

#[derive(Debug)]
enum Msg {
    Span(Box<FinishedSpan>),
    Flush(oneshot::Sender<()>),
}

#[derive(Debug)]
struct Sink(Exporter);

impl SpanSink for Sink {
    fn record(&self, span: FinishedSpan) {
        if self.0.tx.try_send(Msg::Span(Box::new(span))).is_err() {
            self.0.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Starts an exporter if `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces
/// endpoint) is set, and installs it as the span sink.
pub fn install_from_env() -> Result<Option<Exporter>, OtlpError> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let endpoint = match (
        var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        var("OTEL_EXPORTER_OTLP_ENDPOINT"),
    ) {
        (Some(full), _) => full,
        (None, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
        (None, None) => return Ok(None),
    };
    if let Some(p) = var("OTEL_EXPORTER_OTLP_PROTOCOL").filter(|p| p != "http/protobuf") {
        return Err(OtlpError::Protocol(p));
    }
    let service = var("OTEL_SERVICE_NAME").unwrap_or_else(|| "unknown_service".to_owned());
    install(&endpoint, &service).map(Some)
}

/// Starts an exporter posting to `endpoint` (a `/v1/traces` URL) as
/// `service`, and installs it as the span sink.
pub fn install(endpoint: &str, service: &str) -> Result<Exporter, OtlpError> {
    let uri: http::Uri = endpoint
        .parse()
        .ok()
        .filter(|u: &http::Uri| u.scheme_str() == Some("http"))
        .ok_or_else(|| OtlpError::Endpoint(endpoint.to_owned()))?;
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| OtlpError::NoRuntime)?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let exporter = Exporter {
        tx,
        dropped: Arc::new(AtomicU64::new(0)),
        exported: Arc::new(AtomicU64::new(0)),
    };
    runtime.spawn(run(rx, uri, service.to_owned(), exporter.exported.clone()));
    set_span_sink(Box::new(Sink(exporter.clone())));
    tracing::info!(endpoint, service, "exporting spans over OTLP/HTTP");
    Ok(exporter)
}

impl Exporter {
    /// Sends what is queued now and waits for it to be posted.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Spans dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Spans the collector accepted.
    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }
}

async fn run(
    mut rx: mpsc::Receiver<Msg>,
    uri: http::Uri,
    service: String,
    exported: Arc<AtomicU64>,
) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut batch: Vec<FinishedSpan> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let flush = tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Span(s)) => {
                    batch.push(*s);
                    if batch.len() < BATCH {
                        continue;
                    }
                    None
                }
                Some(Msg::Flush(done)) => Some(done),
                None => return,
            },
            _ = tick.tick() => None,
        };
        if !batch.is_empty() {
            let n = batch.len() as u64;
            let body = encode(&service, std::mem::take(&mut batch));
            let req = http::Request::post(uri.clone())
                .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                .body(Full::new(Bytes::from(body)));
            match req {
                Ok(req) => {
                    match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
                        Ok(Ok(resp)) if resp.status().is_success() => {
                            exported.fetch_add(n, Ordering::Relaxed);
                        }
                        Ok(Ok(resp)) => {
                            tracing::warn!(status = %resp.status(), "OTLP collector refused {n} spans")
                        }
                        Ok(Err(e)) => tracing::warn!("OTLP export of {n} spans failed: {e}"),
                        Err(_) => tracing::warn!("OTLP export of {n} spans timed out"),
                    }
                }
                Err(e) => tracing::warn!("OTLP request: {e}"),
            }
        }
        if let Some(done) = flush {
            let _ = done.send(());
        }
    }
}

/// The OTLP `ExportTraceServiceRequest` of `spans`, protobuf-encoded.
fn encode(service: &str, spans: Vec<FinishedSpan>) -> Vec<u8> {
    use prost::Message;
    let kv = |k: &str, v: String| pb::KeyValue {
        key: k.to_owned(),
        value: Some(pb::AnyValue { string_value: v }),
    };
    let nanos = |t: std::time::SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    };
    let request = pb::ExportTraceServiceRequest {
        resource_spans: vec![pb::ResourceSpans {
            resource: Some(pb::Resource {
                attributes: vec![kv("service.name", service.to_owned())],
            }),
            scope_spans: vec![pb::ScopeSpans {
                scope: Some(pb::InstrumentationScope {
                    name: "mesh".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                }),
                spans: spans
                    .into_iter()
                    .map(|s| pb::Span {
                        trace_id: s.trace_id.to_be_bytes().to_vec(),
                        span_id: s.span_id.to_be_bytes().to_vec(),
                        parent_span_id: s
                            .parent_span_id
                            .map(|p| p.to_be_bytes().to_vec())
                            .unwrap_or_default(),
                        name: s.name,
                        kind: match s.kind {
                            SpanKind::Server => 2,
                            _ => 3,
                        },
                        start_time_unix_nano: nanos(s.start),
                        end_time_unix_nano: nanos(s.end),
                        attributes: s.attributes.into_iter().map(|(k, v)| kv(k, v)).collect(),
                        status: Some(pb::Status {
                            code: if s.error { 2 } else { 0 },
                        }),
                    })
                    .collect(),
            }],
        }],
    };
    request.encode_to_vec()
}

/// The few OTLP messages the exporter sends, with opentelemetry-proto's
/// field numbers.
mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub(super) resource_spans: Vec<ResourceSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub(super) resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub(super) scope_spans: Vec<ScopeSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub(super) attributes: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        pub(super) scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub(super) spans: Vec<Span>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub(super) name: String,
        #[prost(string, tag = "2")]
        pub(super) version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub(super) trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub(super) span_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "4")]
        pub(super) parent_span_id: Vec<u8>,
        #[prost(string, tag = "5")]
        pub(super) name: String,
        #[prost(int32, tag = "6")]
        pub(super) kind: i32,
        #[prost(fixed64, tag = "7")]
        pub(super) start_time_unix_nano: u64,
        #[prost(fixed64, tag = "8")]
        pub(super) end_time_unix_nano: u64,
        #[prost(message, repeated, tag = "9")]
        pub(super) attributes: Vec<KeyValue>,
        #[prost(message, optional, tag = "15")]
        pub(super) status: Option<Status>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Status {
        #[prost(int32, tag = "3")]
        pub(super) code: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct KeyValue {
        #[prost(string, tag = "1")]
        pub(super) key: String,
        #[prost(message, optional, tag = "2")]
        pub(super) value: Option<AnyValue>,
    }

    /// `AnyValue` with only its `string_value` arm (field 1 of the oneof).
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct AnyValue {
        #[prost(string, tag = "1")]
        pub(super) string_value: String,
    }
}
