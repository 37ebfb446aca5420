use actix_web::{HttpResponse, web};
use serde_json::json;
use utoipa::ToSchema;

use crate::app::AppState;
use crate::db;
use crate::routes::openapi::ErrorDetail;

#[derive(ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: String,
}

#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum ReadyState {
    Ready,
    /// Redis is down: payg serves, with rate limits and logout checks open.
    Degraded,
    /// PostgreSQL is down (503).
    Unavailable,
}

#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum CheckState {
    Ok,
    Down,
}

#[derive(ToSchema)]
pub struct ReadyChecks {
    pub postgres: CheckState,
    pub redis: CheckState,
}

/// The meter of this instance (`crate::metering::MeterStatus`).
#[derive(ToSchema)]
pub struct MeterStatus {
    /// `batched`, `sync` or `off`.
    pub mode: String,
    /// Calls counted in memory and not yet committed to PostgreSQL.
    pub pending_calls: u64,
    pub flushes: u64,
    pub flush_failures: u64,
}

#[derive(ToSchema)]
pub struct Readiness {
    pub status: ReadyState,
    pub checks: ReadyChecks,
    pub meter: MeterStatus,
    /// Only when not ready: `not_ready`, naming what is unreachable.
    #[schema(required = false)]
    pub error: Option<ErrorDetail>,
}

/// The process is alive.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "Alive", body = Health))
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready when PostgreSQL is reachable (503 naming it otherwise). Without
/// Redis payg still serves — rate limits and logout checks fail open — so
/// it stays ready and reports itself `degraded`.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready (`ready`) or serving without Redis (`degraded`)", body = Readiness),
        (status = 503, description = "Not ready: PostgreSQL is unreachable (`status: unavailable`, with `error`)",
            body = Readiness),
    )
)]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let (pg, redis) = tokio::join!(db::ping(&state.db), state.redis.ping());
    let word = |ok: bool| if ok { "ok" } else { "down" };
    let checks = json!({"postgres": word(pg), "redis": word(redis)});
    let meter = state.meter.status();
    if !pg {
        return HttpResponse::ServiceUnavailable().json(json!({
            "error": {"code": "not_ready", "message": "unreachable: postgres"},
            "status": "unavailable",
            "checks": checks,
            "meter": meter,
        }));
    }
    let status = if redis { "ready" } else { "degraded" };
    HttpResponse::Ok().json(json!({"status": status, "checks": checks, "meter": meter}))
}
