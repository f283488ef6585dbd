//! One call that turns on what the environment asks for (feature
//! `observe`): logs (JSON with `MESH_LOG_FORMAT=json`, filtered by
//! `RUST_LOG`, default `info`), the Prometheus exporter (feature
//! `prometheus`), OTLP span export (`OTEL_EXPORTER_OTLP_ENDPOINT`, feature
//! `otlp`), and, once you have clients, the admin server
//! (`MESH_ADMIN_ADDR`).
//!
//! A service with its own `tracing` subscriber and `metrics` recorder does
//! not need this: install those first, then start the
//! [`Admin`](crate::admin::Admin) server yourself.
//!
//! ```no_run
//! # async fn run() -> Result<(), proxyless_tower::BoxError> {
//! let obs = proxyless_hyper::observe::init()?;
//! let mesh = proxyless_core::Mesh::from_env()?;
//! let client = proxyless_hyper::Client::new(&mesh);
//! obs.admin(&mesh, &[&client]).await?;   // serves /metrics, /clusters, ... if MESH_ADMIN_ADDR is set
//! # Ok(()) }
//! ```

use crate::Client;
use proxyless_core::Mesh;
use proxyless_tower::BoxError;

/// What [`init`] turned on.
#[derive(Debug)]
pub struct Observability {
    /// The OTLP exporter, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
    #[cfg(feature = "otlp")]
    pub otlp: Option<crate::otlp::Exporter>,
}

/// Logs, metrics and trace export from the environment. Call once, early,
/// inside a tokio runtime. A `tracing` subscriber already installed is
/// kept (this one is then not installed).
pub fn init() -> Result<Observability, BoxError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("MESH_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    #[cfg(feature = "prometheus")]
    crate::telemetry::install_prometheus()?;
    #[cfg(not(feature = "otlp"))]
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some_and(|v| !v.is_empty()) {
        tracing::warn!(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but proxyless-hyper was built without its `otlp` feature: no spans are exported"
        );
    }
    Ok(Observability {
        #[cfg(feature = "otlp")]
        otlp: crate::otlp::install_from_env()?,
    })
}

impl Observability {
    /// Starts the admin server on `MESH_ADMIN_ADDR`, if set, showing these
    /// clients' backends under `/clusters`.
    pub async fn admin(
        &self,
        mesh: &Mesh,
        clients: &[&Client],
    ) -> std::io::Result<Option<std::net::SocketAddr>> {
        let mut admin = crate::admin::Admin::new(mesh);
        for c in clients {
            admin = admin.with_client(c);
        }
        admin.from_env().await
    }

    /// Sends the spans still queued.
    pub async fn flush(&self) {
        #[cfg(feature = "otlp")]
        if let Some(e) = &self.otlp {
            e.flush().await;
        }
    }
}
