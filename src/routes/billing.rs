//! The caller's own cost: this period so far, or any period.

use actix_web::{HttpResponse, web};

use crate::app::AppState;
use crate::billing::statement::Statement;
use crate::domain::Period;
use crate::error::{ApiResult, ErrorBody};
use crate::routes::conn;
use crate::routes::extract::AuthUser;

/// What the caller owes so far this period, per API and price version.
#[utoipa::path(
    get,
    path = "/api/v1/billing/current",
    tag = "billing",
    security(("bearerAuth" = []), ("apiKey" = [])),
    responses((status = 200, description = "This period's cost so far", body = Statement))
)]
pub async fn current_cost(state: web::Data<AppState>, user: AuthUser) -> ApiResult<HttpResponse> {
    statement(&state, user, state.current_period()).await
}

/// The same for any period (`YYYY-MM`).
#[utoipa::path(
    get,
    path = "/api/v1/billing/periods/{period}",
    tag = "billing",
    params(("period" = Period, Path, description = "`YYYY-MM`")),
    security(("bearerAuth" = []), ("apiKey" = [])),
    responses(
        (status = 200, description = "That period's cost", body = Statement),
        (status = 400, description = "`validation_failed`: `period` is not `YYYY-MM`", body = ErrorBody),
    )
)]
pub async fn period_cost(
    state: web::Data<AppState>,
    user: AuthUser,
    period: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let period: Period = period.parse()?;
    statement(&state, user, period).await
}

async fn statement(state: &AppState, user: AuthUser, period: Period) -> ApiResult<HttpResponse> {
    let mut conn = conn(&state.db).await?;
    let statement =
        Statement::for_user(&mut conn, user.id(), period, state.config.billing.currency, state.now()).await?;
    Ok(HttpResponse::Ok().json(statement))
}
