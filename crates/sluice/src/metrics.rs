//! The process's metrics registry: Prometheus, rendered by the admin API's `/metrics`. Installed
//! once, before the service is built, so that every metric the libraries record lands in it.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the registry (once per process) and returns its handle.
pub(crate) fn install() -> anyhow::Result<PrometheusHandle> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    // Store calls take microseconds in memory and milliseconds when they wait for an fsync.
    let buckets = [
        0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5,
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)?
        .install_recorder()?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// The registry's handle, when it is installed.
pub(crate) fn handle() -> Option<PrometheusHandle> {
    HANDLE.get().cloned()
}
