//! An upstream as the in-memory catalog holds it: parsed once per catalog
//! load, so a forwarded call only formats its URL and signs.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::Secret;
use crate::models::api::Upstream;

/// The per-API upstream metrics, resolved once per catalog load (labelled
/// by slug only).
#[derive(Debug, Clone)]
pub struct UpstreamMetrics {
    /// `payg_upstream_responses_total{api, status}` for 1xx … 5xx.
    pub responses: [prometheus::IntCounter; 5],
    /// `payg_upstream_duration_seconds{api}`: until the response head.
    pub duration: prometheus::Histogram,
    /// `payg_upstream_connect_errors_total{api}`: every call with no answer
    /// but a timeout — refused, unreachable, reset, TLS refused, not HTTP.
    pub connect_errors: prometheus::IntCounter,
    /// `payg_upstream_timeouts_total{api}`: no head within `timeout_ms`.
    pub timeouts: prometheus::IntCounter,
}

impl UpstreamMetrics {
    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].inc();
    }
}

/// Where a gateway API's calls go, and how.
#[derive(Debug)]
pub struct UpstreamTarget {
    /// `X-Payg-Api` and the metrics label.
    pub slug: Arc<str>,
    /// `scheme://authority` of the upstream.
    pub origin: String,
    /// The base path (`/v2`, or empty), without a trailing `/`.
    pub base_path: String,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_body_bytes: u64,
    pub preserve_host: bool,
    signing_secret: Secret,
    previous_secret: Option<(Secret, DateTime<Utc>)>,
    pub metrics: UpstreamMetrics,
}

impl UpstreamTarget {
    pub fn new(slug: &str, row: &Upstream, metrics: UpstreamMetrics) -> Self {
        // The URL was checked (`UpstreamUrl`) when it was stored.
        let after_scheme = row.url.find("://").map_or(0, |i| i + 3);
        let path_at = row.url[after_scheme..]
            .find('/')
            .map_or(row.url.len(), |i| after_scheme + i);
        let (origin, base_path) = row.url.split_at(path_at);
        Self {
            slug: Arc::from(slug),
            origin: origin.to_owned(),
            base_path: base_path.to_owned(),
            timeout: Duration::from_millis(u64::try_from(row.timeout_ms).unwrap_or(1)),
            connect_timeout: Duration::from_millis(u64::try_from(row.connect_timeout_ms).unwrap_or(1)),
            max_body_bytes: u64::try_from(row.max_body_bytes).unwrap_or(0),
            preserve_host: row.preserve_host,
            signing_secret: Secret::new(row.signing_secret.as_str()),
            previous_secret: row
                .previous_signing_secret
                .as_deref()
                .map(Secret::new)
                .zip(row.previous_secret_expires_at),
            metrics,
        }
    }

    /// The secrets that sign a call made at `now`: the current one, and the
    /// previous one during its grace period.
    pub fn secrets(&self, now: DateTime<Utc>) -> Vec<&str> {
        let mut secrets = vec![self.signing_secret.expose()];
        if let Some((previous, until)) = &self.previous_secret
            && now < *until
        {
            secrets.push(previous.expose());
        }
        secrets
    }
}

/// What the metering middleware leaves in a gateway call's extensions for
/// the handler: the upstream, and the raw path after the prefix.
#[derive(Debug, Clone)]
pub struct GatewayCall {
    pub target: Arc<UpstreamTarget>,
    /// `""` for the prefix itself, else `/<rest>` exactly as sent.
    pub rest: String,
}
