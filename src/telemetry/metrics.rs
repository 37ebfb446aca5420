//! Prometheus metrics, one registry per running app (so several apps in one
//! process, as in the tests, do not share counters). Served on their own
//! listener (`PAYG_METRICS_BIND`), never with the public API.
//!
//! Labels are bounded: route *patterns*, methods, status classes and API
//! slugs — never raw paths, emails or ids.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::webhooks::DeliveryMetrics;

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub metered_calls: IntCounterVec,
    pub meter_pending_calls: IntGauge,
    pub meter_flushes: IntCounter,
    pub meter_flush_failures: IntCounter,
    pub meter_flush_duration: Histogram,
    /// Durable mode: calls per group commit.
    pub meter_group_calls: Histogram,
    pub db_pool_size: IntGauge,
    pub db_pool_available: IntGauge,
    pub db_pool_waiting: IntGauge,
    pub redis_errors: IntCounter,
    pub rate_limit_refusals: IntCounter,
    /// Capped users' calls refused (402) or not admitted (503), by error code.
    pub spending_refusals: IntCounterVec,
    pub invoices_issued: IntCounter,
    pub payments_recorded: IntCounter,
    pub upstream_responses: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub upstream_connect_errors: IntCounterVec,
    pub upstream_timeouts: IntCounterVec,
    pub webhooks: DeliveryMetrics,
}

/// `/random/{max}` → `/random/:max`: the pattern, in a form every
/// Prometheus tool parses (some choke on braces inside label values).
pub fn route_label(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut in_param = false;
    let mut skipping_regex = false;
    for c in pattern.chars() {
        match c {
            '{' if !in_param => {
                in_param = true;
                out.push(':');
            }
            '}' if in_param => {
                in_param = false;
                skipping_regex = false;
            }
            ':' if in_param => skipping_regex = true,
            _ if skipping_regex => {}
            _ => out.push(c),
        }
    }
    out
}

/// The methods used as label values; anything else is `OTHER`.
pub fn method_label(method: &actix_web::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}

pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new_custom(Some("payg".into()), None)?;
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route pattern, method and status class",
            ),
            &["route", "method", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency by route pattern").buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["route"],
        )?;
        let metered_calls = IntCounterVec::new(
            Opts::new("metered_calls_total", "Metered calls counted, by API slug"),
            &["api"],
        )?;
        let meter_pending_calls = IntGauge::new("meter_pending_calls", "Calls counted in memory, not yet flushed")?;
        let meter_flushes = IntCounter::new("meter_flushes_total", "Successful meter flushes")?;
        let meter_flush_failures = IntCounter::new("meter_flush_failures_total", "Failed meter flush attempts")?;
        let meter_flush_duration = Histogram::with_opts(
            HistogramOpts::new("meter_flush_duration_seconds", "Duration of meter flush attempts").buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        let meter_group_calls = Histogram::with_opts(
            HistogramOpts::new(
                "meter_group_calls",
                "Calls committed together by one durable group commit",
            )
            .buckets(prometheus::exponential_buckets(1.0, 2.0, 12)?),
        )?;
        let db_pool_size = IntGauge::new("db_pool_connections", "PostgreSQL connections open in the pool")?;
        let db_pool_available = IntGauge::new("db_pool_available", "Pooled PostgreSQL connections idle")?;
        let db_pool_waiting = IntGauge::new("db_pool_waiting", "Tasks waiting for a PostgreSQL connection")?;
        let redis_errors = IntCounter::new("redis_errors_total", "Redis operations that failed or timed out")?;
        let rate_limit_refusals = IntCounter::new("rate_limit_refusals_total", "Metered calls refused with 429")?;
        let spending_refusals = IntCounterVec::new(
            Opts::new(
                "spending_refusals_total",
                "Capped users' metered calls refused before they were served, by error code \
                 (spending_cap_reached, credits_exhausted, metering_unavailable)",
            ),
            &["code"],
        )?;
        let invoices_issued = IntCounter::new("invoices_issued_total", "Invoices issued by month close")?;
        let payments_recorded = IntCounter::new("payments_recorded_total", "Payments recorded (finance or webhook)")?;
        let upstream_responses = IntCounterVec::new(
            Opts::new(
                "upstream_responses_total",
                "Gateway upstream responses by API slug and status class",
            ),
            &["api", "status"],
        )?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "upstream_duration_seconds",
                "Gateway upstream latency until the response head, by API slug",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["api"],
        )?;
        let upstream_connect_errors = IntCounterVec::new(
            Opts::new(
                "upstream_connect_errors_total",
                "Gateway calls whose upstream was unreachable, refused or reset, by API slug",
            ),
            &["api"],
        )?;
        let upstream_timeouts = IntCounterVec::new(
            Opts::new(
                "upstream_timeouts_total",
                "Gateway calls with no upstream response head in time, by API slug",
            ),
            &["api"],
        )?;
        let webhooks = DeliveryMetrics {
            attempts: IntCounterVec::new(
                Opts::new(
                    "webhook_attempts_total",
                    "Webhook delivery attempts by event type and outcome (delivered, failed)",
                ),
                &["event_type", "outcome"],
            )?,
            given_up: IntCounterVec::new(
                Opts::new(
                    "webhook_deliveries_given_up_total",
                    "Webhook deliveries given up after every retry, by event type",
                ),
                &["event_type"],
            )?,
            backlog: IntGaugeVec::new(
                Opts::new(
                    "webhook_backlog",
                    "Webhook deliveries waiting to be delivered, by event type",
                ),
                &["event_type"],
            )?,
            backlog_age: IntGaugeVec::new(
                Opts::new(
                    "webhook_backlog_age_seconds",
                    "Age of the oldest webhook delivery waiting, by event type (0: none)",
                ),
                &["event_type"],
            )?,
        };
        for c in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(webhooks.attempts.clone()),
            Box::new(webhooks.given_up.clone()),
            Box::new(webhooks.backlog.clone()),
            Box::new(webhooks.backlog_age.clone()),
            Box::new(http_duration.clone()),
            Box::new(metered_calls.clone()),
            Box::new(meter_pending_calls.clone()),
            Box::new(meter_flushes.clone()),
            Box::new(meter_flush_failures.clone()),
            Box::new(meter_flush_duration.clone()),
            Box::new(meter_group_calls.clone()),
            Box::new(db_pool_size.clone()),
            Box::new(db_pool_available.clone()),
            Box::new(db_pool_waiting.clone()),
            Box::new(redis_errors.clone()),
            Box::new(rate_limit_refusals.clone()),
            Box::new(spending_refusals.clone()),
            Box::new(invoices_issued.clone()),
            Box::new(payments_recorded.clone()),
            Box::new(upstream_responses.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(upstream_connect_errors.clone()),
            Box::new(upstream_timeouts.clone()),
        ] {
            registry.register(c)?;
        }
        Ok(Self {
            registry,
            http_requests,
            http_duration,
            metered_calls,
            meter_pending_calls,
            meter_flushes,
            meter_flush_failures,
            meter_flush_duration,
            meter_group_calls,
            db_pool_size,
            db_pool_available,
            db_pool_waiting,
            redis_errors,
            rate_limit_refusals,
            spending_refusals,
            invoices_issued,
            payments_recorded,
            upstream_responses,
            upstream_duration,
            upstream_connect_errors,
            upstream_timeouts,
            webhooks,
        })
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
