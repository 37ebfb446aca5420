//! Observability: logging setup, Prometheus metrics, and the per-request
//! middleware that gives every request an id, a log line and its metrics.
//!
//! Logs: filter with `RUST_LOG` (default `info`); format with
//! `PAYG_LOG_FORMAT=pretty|json`.

pub mod metrics;
pub mod request;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub use metrics::Metrics;
pub use request::{MatchedRoute, RequestId, request_telemetry};

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
