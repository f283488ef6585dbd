//! The admin server: what the running process believes, on a separate port
//! (`MESH_ADMIN_ADDR`).
//!
//! | path | answer |
//! |---|---|
//! | `/metrics` | Prometheus text exposition (when the exporter is installed) |
//! | `/ready` | 200 once a config is serving (`ready, degraded: ...` when the config source's task failed and was restarted), else 503 |
//! | `/live` | 200 |
//! | `/config_dump` | the serving config as JSON, with version, source and update counters |
//! | `/clusters` | each backend's endpoints: health, ejection, locality and level, latency estimate, requests in flight; each level's share of requests |
//! | `/xds` | for a mesh fed by a control plane: connection, subscriptions, versions, last ACK and NACK |
//! | `/shadow` | with a candidate config loaded ([`Mesh::set_candidate`]): requests evaluated under it, the differences by (service, live route and backend, candidate route and backend), the newest differing requests; 404 otherwise |
//!
//! Key material is never shown: the config names identity files, and the
//! dump adds only this workload's SPIFFE ID.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use proxyless_core::Mesh;
use proxyless_tower::runtime::Runtime;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::UNIX_EPOCH;
use tokio::net::TcpListener;

/// The admin server.
#[derive(Clone, Debug)]
pub struct Admin {
    mesh: Mesh,
    runtimes: Vec<Arc<Runtime>>,
    #[cfg(feature = "prometheus")]
    prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl Admin {
    /// An admin server for `mesh`.
    pub fn new(mesh: &Mesh) -> Self {
        Self {
            mesh: mesh.clone(),
            runtimes: Vec::new(),
            #[cfg(feature = "prometheus")]
            prometheus: crate::telemetry::prometheus_handle(),
        }
    }

    /// Shows this client's backends and endpoints under `/clusters`.
    #[must_use]
    pub fn with_client(mut self, client: &crate::Client) -> Self {
        self.runtimes.push(client.runtime().clone());
        self
    }

    /// Serves on `listener` until the task is dropped.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        let admin = Arc::new(self);
        let svc = tower::service_fn(move |req: Request<Incoming>| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(admin.answer(&req)) }
        });
        crate::Server::new(&Mesh::empty())
            .serve(listener, svc)
            .await
    }

    /// Starts the admin server on `MESH_ADMIN_ADDR` if it is set; returns
    /// the address it listens on.
    pub async fn from_env(self) -> std::io::Result<Option<std::net::SocketAddr>> {
        let Some(addr) = std::env::var("MESH_ADMIN_ADDR")
            .ok()
            .filter(|a| !a.is_empty())
        else {
            return Ok(None);
        };
        let listener = TcpListener::bind(&addr).await?;
        let local = listener.local_addr()?;
        tokio::spawn(async move {
            if let Err(e) = self.serve(listener).await {
                tracing::error!("admin server stopped: {e}");
            }
        });
        tracing::info!(%local, "admin server listening");
        Ok(Some(local))
    }

    fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        match req.uri().path() {
            "/metrics" => self.metrics(),
            "/live" => text(StatusCode::OK, "live\n"),
            "/ready" => {
                // Degraded still serves the last good config: ready, but
                // said, so an operator sees it without taking the pod out.
                if let (true, Some(why)) = (self.mesh.is_ready(), self.mesh.degraded()) {
                    text(StatusCode::OK, format!("ready, degraded: {why}\n"))
                } else if self.mesh.is_ready() {
                    text(StatusCode::OK, "ready\n")
                } else if let Some(status) = self
                    .mesh
                    .identity()
                    .map(|i| i.status())
                    .filter(|s| !s.is_ready())
                {
                    let why = status.last_error.as_deref().unwrap_or("no answer yet");
                    let msg = format!(
                        "no workload identity yet from {}: {why}\n",
                        status.svid_source
                    );
                    text(StatusCode::SERVICE_UNAVAILABLE, msg)
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "no config yet\n")
                }
            }
            "/config_dump" => json(&self.config_dump()),
            "/clusters" => json(&self.clusters()),
            "/xds" => match self.mesh.source_status() {
                Some(status) => json(&status),
                None => text(
                    StatusCode::NOT_FOUND,
                    "this mesh is not fed by a control plane\n",
                ),
            },
            "/shadow" => match self.mesh.candidate() {
                Some(c) => {
                    let mut report = c.report().to_json();
                    report["candidate"]["services"] = c.snapshot().services().len().into();
                    json(&report)
                }
                None => text(
                    StatusCode::NOT_FOUND,
                    "no candidate config is loaded (MESH_SHADOW_CONFIG, MESH_SHADOW_CONTROL_PLANE or Mesh::set_candidate)\n",
                ),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "try /metrics /ready /live /config_dump /clusters /xds /shadow\n",
            ),
        }
    }

    fn metrics(&self) -> Response<Full<Bytes>> {
        publish_config_metrics(&self.mesh);
        #[cfg(feature = "prometheus")]
        if let Some(p) = &self.prometheus {
            let mut resp = Response::new(Full::new(Bytes::from(p.render())));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            return resp;
        }
        text(
            StatusCode::NOT_FOUND,
            "no Prometheus exporter installed: call proxyless_hyper::telemetry::install_prometheus()\n",
        )
    }

    fn config_dump(&self) -> serde_json::Value {
        let snap = self.mesh.snapshot();
        let status = self.mesh.status();
        let config = serde_json::to_value(snap.config()).unwrap_or(serde_json::Value::Null);
        serde_json::json!({
            "version": snap.version(),
            "source": snap.source().to_string(),
            "published_unix_seconds": snap.created().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            "updates": {
                "accepted": status.accepted,
                "rejected": status.rejected,
                "last_error": status.last_error.map(|e| e.to_string()),
            },
            "identity": self.mesh.identity().map(|i| {
                let status = i.status();
                serde_json::json!({
                    "spiffe_id": status.spiffe_id.map(|id| id.to_string()),
                    "not_after_unix_seconds": status.not_after,
                    "trust_domains": status.trust_domains,
                    "svid_source": status.svid_source,
                    "trust_source": status.trust_source,
                    "last_error": status.last_error,
                })
            }),
            "service": self.mesh.service().as_deref(),
            "config": config,
        })
    }

    fn clusters(&self) -> serde_json::Value {
        let snap = self.mesh.snapshot();
        let now = std::time::Instant::now();
        let mut backends = Vec::new();
        for (i, b) in snap.backends().iter().enumerate() {
            let mut endpoints = Vec::new();
            let mut active = 0;
            let mut levels = None;
            let mut adaptive = None;
            for rt in &self.runtimes {
                let Some(rb) = rt.backend(&snap, i as u32) else {
                    continue;
                };
                active += rb.state.breaker.active_requests();
                if let Some(limit) = rb.state.adaptive_limit() {
                    // Per client stack: each learns its own.
                    adaptive.get_or_insert_with(Vec::new).push(limit);
                }
                let loads = rb.level_loads(now);
                if !loads.is_empty() {
                    levels.get_or_insert_with(|| {
                        let loads = loads.iter().map(|(level, load)| {
                            serde_json::json!({ "level": level, "load_percent": load })
                        });
                        loads.collect::<Vec<_>>()
                    });
                }
                for (j, ep) in rb.endpoints.iter().enumerate() {
                    let health = if !rb.is_healthy(j) {
                        "unhealthy"
                    } else if rb.is_ejected(j, now) {
                        "ejected"
                    } else {
                        "healthy"
                    };
                    let cfg = b.origin(j);
                    endpoints.push(serde_json::json!({
                        "address": &*ep.address,
                        "weight": b.endpoints().get(j).map_or(1, |e| e.weight),
                        "health": health,
                        "locality": cfg.and_then(|e| e.locality.as_ref()).map(ToString::to_string),
                        "priority": cfg.map_or(0, |e| e.priority),
                        "level": rb.level_of(j),
                        "latency_ewma_ms": ep.latency().as_secs_f64() * 1000.0,
                        "in_flight": ep.inflight(),
                    }));
                }
            }
            if self.runtimes.is_empty() {
                endpoints = b
                    .endpoints()
                    .iter()
                    .map(|e| serde_json::json!({ "address": &*e.address, "weight": e.weight }))
                    .collect();
            }
            backends.push(serde_json::json!({
                "name": &**b.name(),
                "load_balancer": serde_json::to_value(b.load_balancer()).unwrap_or_default(),
                "requests_in_flight": active,
                "adaptive_concurrency_limit": adaptive,
                "mutual_tls_identity": b.upstream_tls().map(|t| t.identities.as_ref().map_or_else(|| "(none valid)".to_owned(), ToString::to_string)),
                "levels": levels,
                "endpoints": endpoints,
            }));
        }
        #[cfg(feature = "dns")]
        let dns = self.mesh.dns_status();
        #[cfg(not(feature = "dns"))]
        let dns = serde_json::Value::Null;
        serde_json::json!({
            "version": snap.version(),
            "locality": snap.locality().map(ToString::to_string),
            "backends": backends,
            "dns": dns,
        })
    }
}

/// Sets the config gauges and counters from the mesh's status (at scrape).
pub fn publish_config_metrics(mesh: &Mesh) {
    use proxyless_tower::telemetry::metrics as m;
    let status = mesh.status();
    metrics::gauge!(m::CONFIG_VERSION).set(mesh.snapshot().version() as f64);
    metrics::counter!(m::CONFIG_UPDATES, "result" => "accepted").absolute(status.accepted);
    metrics::counter!(m::CONFIG_UPDATES, "result" => "rejected").absolute(status.rejected);
    let ts = status
        .last_update
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!(m::CONFIG_LAST_UPDATE).set(ts);
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp
}

fn json(v: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(
        serde_json::to_vec_pretty(v).unwrap_or_default(),
    )));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
