//! Telemetry wiring for hyper users: the Prometheus exporter in one line.
//!
//! ```no_run
//! let handle = proxyless_hyper::telemetry::install_prometheus().expect("first install");
//! // ... build clients and servers, then scrape /metrics on the admin server,
//! // or render it yourself:
//! println!("{}", handle.render());
//! ```

#[cfg(feature = "prometheus")]
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

#[cfg(feature = "prometheus")]
static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();

/// Installs the Prometheus recorder as the process's `metrics` recorder
/// (with the mesh's histogram buckets and help texts) and returns its
/// handle; a second call returns the first handle. Install it before making
/// clients and servers: handles resolved earlier record nowhere.
#[cfg(feature = "prometheus")]
pub fn install_prometheus() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(proxyless_tower::telemetry::metrics::DURATION.to_owned()),
            proxyless_tower::telemetry::metrics::DURATION_BUCKETS,
        )?
        .install_recorder()?;
    proxyless_tower::telemetry::metrics::describe();
    let _ = HANDLE.set(handle.clone());
    // Histograms need upkeep to roll their windows.
    let upkeep = handle.clone();
    let _ = std::thread::Builder::new()
        .name("mesh-prometheus-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                upkeep.run_upkeep();
            }
        });
    Ok(handle)
}

/// The handle [`install_prometheus`] returned, if it was called.
#[cfg(feature = "prometheus")]
pub fn prometheus_handle() -> Option<PrometheusHandle> {
    HANDLE.get().cloned()
}
