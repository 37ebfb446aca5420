//! Per-request telemetry, the outermost middleware (`from_fn`): a request
//! id (taken from `X-Request-Id` when sane, generated otherwise, echoed in
//! the response), one log line per request (with the client's address),
//! and the HTTP metrics. Needs `web::Data<Metrics>` and `web::Data<Clients>`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, web};

use crate::auth::Caller;
use crate::clients::Clients;
use crate::gateway::UpstreamAnswer;
use crate::telemetry::Metrics;
use crate::telemetry::metrics::{method_label, route_label, status_class};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The matched route as its metrics label, left in the request's extensions
/// by a middleware that already resolved it (metering), so this one does
/// not match and format the route again.
#[derive(Debug, Clone)]
pub struct MatchedRoute(pub Arc<str>);

/// The request's id, in its extensions for handlers that pass it on (the
/// gateway sends it upstream as `X-Payg-Request-Id`).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Ids are `<random per process>-<counter>`: unique, and cheaper than a
/// random UUID per request.
static PROCESS_TAG: LazyLock<String> = LazyLock::new(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned());
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn new_request_id() -> String {
    format!("{}-{}", *PROCESS_TAG, COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A client's id is kept only if it is short and plain, so it cannot be used
/// to inject into logs.
fn accepted(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// The middleware function. Needs `web::Data<Metrics>` registered.
pub async fn request_telemetry(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| accepted(v))
        .map_or_else(new_request_id, str::to_owned);
    let method = method_label(req.method());
    let metrics = req.app_data::<web::Data<Metrics>>().cloned();
    // Who sent it, through trusted proxies: every line names the client.
    let client = req
        .app_data::<web::Data<Clients>>()
        .and_then(|c| c.address(req.request()));
    req.extensions_mut().insert(RequestId(id.clone()));
    let result = next.call(req).await;
    let elapsed = started.elapsed();
    let mut res = match result {
        Ok(res) => res,
        Err(err) => {
            tracing::warn!(
                request_id = %id,
                method,
                client = client.map(tracing::field::display),
                error = %err,
                "request failed before a response"
            );
            return Err(err);
        }
    };
    let status = res.status().as_u16();
    let matched = res.request().extensions().get::<MatchedRoute>().map(|m| m.0.clone());
    let route: std::borrow::Cow<'_, str> = match &matched {
        Some(label) => std::borrow::Cow::Borrowed(label),
        None => res
            .request()
            .match_pattern()
            .map_or(std::borrow::Cow::Borrowed("unmatched"), |p| {
                std::borrow::Cow::Owned(route_label(&p))
            }),
    };
    if let Some(m) = &metrics {
        m.http_requests
            .with_label_values(&[&route, method, status_class(status)])
            .inc();
        m.http_duration
            .with_label_values(&[&route])
            .observe(elapsed.as_secs_f64());
    }
    let user_id = res.request().extensions().get::<Caller>().map(|c| c.user_id);
    let upstream = res.response().extensions().get::<UpstreamAnswer>().copied();
    tracing::info!(
        request_id = %id,
        method,
        route = %route,
        status,
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        user_id = user_id.map(tracing::field::display),
        client = client.map(tracing::field::display),
        upstream_status = upstream.map(|u| u.status),
        upstream_latency_ms = upstream.map(|u| u.latency.as_secs_f64() * 1000.0),
        "request"
    );
    drop(route);
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use crate::telemetry::metrics::route_label;

    #[test]
    fn route_patterns_become_brace_free_labels() {
        assert_eq!(route_label("/api/v1/tools/random/{max}"), "/api/v1/tools/random/:max");
        assert_eq!(route_label("/a/{id:\\d+}/b"), "/a/:id/b");
        assert_eq!(route_label("/plain"), "/plain");
    }
}
