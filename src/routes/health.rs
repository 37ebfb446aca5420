//! Liveness and readiness probes.

use actix_web::{HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::AppState;
use crate::db;
use crate::error::{self, ErrorFields};
use crate::metering::MeterStatus;

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReadyState {
    Ready,
    /// Redis is down: payg serves metered calls (their rate limits and
    /// logout checks open) and API keys; logins, and access tokens outside
    /// metered calls, are refused.
    Degraded,
    /// PostgreSQL is down (503).
    Unavailable,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckState {
    Ok,
    Down,
}

impl CheckState {
    fn of(up: bool) -> Self {
        if up { CheckState::Ok } else { CheckState::Down }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ReadyChecks {
    pub postgres: CheckState,
    pub redis: CheckState,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    pub status: ReadyState,
    pub checks: ReadyChecks,
    pub meter: MeterStatus,
    /// Only when not ready: `not_ready`, naming what is unreachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, value_type = Option<error::ErrorDetail>)]
    pub error: Option<ErrorFields<'static>>,
}

/// The process is alive.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "Alive", body = Health))
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// Ready when PostgreSQL is reachable (503 naming it otherwise). Without
/// Redis payg still serves metered calls and API keys (rate limits and
/// logout checks fail open for metered calls; logins and access tokens
/// elsewhere are refused), so it stays ready and reports itself `degraded`.
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
    let readiness = Readiness {
        status: match (pg, redis) {
            (false, _) => ReadyState::Unavailable,
            (true, false) => ReadyState::Degraded,
            (true, true) => ReadyState::Ready,
        },
        checks: ReadyChecks {
            postgres: CheckState::of(pg),
            redis: CheckState::of(redis),
        },
        meter: state.meter.status(),
        error: (!pg).then(|| error::not_ready("unreachable: postgres")),
    };
    HttpResponse::build(error::readiness_status(pg)).json(readiness)
}
