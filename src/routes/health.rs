use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::app::AppState;
use crate::db;

/// The process is alive.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// PostgreSQL and Redis are reachable; 503 naming what is down otherwise.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let (pg, redis) = tokio::join!(db::ping(&state.db), state.redis_ok());
    let word = |ok: bool| if ok { "ok" } else { "down" };
    let checks = json!({"postgres": word(pg), "redis": word(redis)});
    let meter = state.meter.status();
    if pg && redis {
        return HttpResponse::Ok()
            .json(json!({"status": "ready", "checks": checks, "meter": meter}));
    }
    let down: Vec<&str> = [("postgres", pg), ("redis", redis)]
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| name)
        .collect();
    HttpResponse::ServiceUnavailable().json(json!({
        "error": {"code": "not_ready", "message": format!("unreachable: {}", down.join(", "))},
        "status": "unavailable",
        "checks": checks,
        "meter": meter,
    }))
}
