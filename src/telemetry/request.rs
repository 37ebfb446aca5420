//! Per-request telemetry, the outermost middleware: a request id (taken from
//! `X-Request-Id` when sane, generated otherwise, echoed in the response),
//! one log line per request, and the HTTP metrics.

use std::future::{Ready, ready};
use std::rc::Rc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpMessage, web};
use futures_util::future::LocalBoxFuture;

use crate::app::AppState;
use crate::auth::Caller;
use crate::telemetry::metrics::{method_label, status_class};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The request's id, for handlers that want to log it.
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

pub struct RequestTelemetry {
    state: web::Data<AppState>,
}

impl RequestTelemetry {
    pub fn new(state: web::Data<AppState>) -> Self {
        Self { state }
    }
}

impl<S, B> Transform<S, ServiceRequest> for RequestTelemetry
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Transform = RequestTelemetryMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RequestTelemetryMiddleware {
            service: Rc::new(service),
            state: self.state.clone(),
        }))
    }
}

pub struct RequestTelemetryMiddleware<S> {
    service: Rc<S>,
    state: web::Data<AppState>,
}

impl<S, B> Service<ServiceRequest> for RequestTelemetryMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let service = Rc::clone(&self.service);
        let state = self.state.clone();
        let started = Instant::now();
        let id = req
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| accepted(v))
            .map_or_else(new_request_id, str::to_owned);
        req.extensions_mut().insert(RequestId(id.clone()));
        let method = method_label(req.method());
        Box::pin(async move {
            let result = service.call(req).await;
            let elapsed = started.elapsed();
            let mut res = match result {
                Ok(res) => res,
                Err(err) => {
                    tracing::warn!(request_id = %id, method, error = %err, "request failed before a response");
                    return Err(err);
                }
            };
            let status = res.status().as_u16();
            let route = res.request().match_pattern().map(|p| route_label(&p));
            let route = route.as_deref().unwrap_or("unmatched");
            let m = &state.metrics;
            m.http_requests
                .with_label_values(&[route, method, status_class(status)])
                .inc();
            m.http_duration
                .with_label_values(&[route])
                .observe(elapsed.as_secs_f64());
            let user_id = res.request().extensions().get::<Caller>().map(|c| c.user_id);
            tracing::info!(
                request_id = %id,
                method,
                route,
                status,
                latency_ms = elapsed.as_secs_f64() * 1000.0,
                user_id = user_id.map(tracing::field::display),
                "request"
            );
            if let Ok(value) = HeaderValue::from_str(&id) {
                res.headers_mut()
                    .insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
            }
            Ok(res)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_patterns_become_brace_free_labels() {
        assert_eq!(route_label("/api/v1/tools/random/{max}"), "/api/v1/tools/random/:max");
        assert_eq!(route_label("/a/{id:\\d+}/b"), "/a/:id/b");
        assert_eq!(route_label("/plain"), "/plain");
    }
}
