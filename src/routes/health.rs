use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::app::AppState;
use crate::db;

/// The process is alive.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready when PostgreSQL is reachable (503 naming it otherwise). Without
/// Redis payg still serves — rate limits and logout checks fail open — so
/// it stays ready and reports itself `degraded`.
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
