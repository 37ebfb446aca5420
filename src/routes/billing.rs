use actix_web::{HttpResponse, web};

use crate::app::AppState;
use crate::auth::AuthUser;
use crate::billing::Period;
use crate::billing::statement::Statement;
use crate::error::{ApiError, ApiResult};
use crate::routes::conn;

/// What the caller owes so far this period, per API.
pub async fn current_cost(state: web::Data<AppState>, user: AuthUser) -> ApiResult<HttpResponse> {
    statement(&state, user, state.current_period()).await
}

/// The same for any period (`YYYY-MM`).
pub async fn period_cost(
    state: web::Data<AppState>,
    user: AuthUser,
    period: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let period: Period = period
        .parse()
        .map_err(|e: crate::billing::period::BadPeriod| ApiError::validation(e.to_string()))?;
    statement(&state, user, period).await
}

async fn statement(state: &AppState, user: AuthUser, period: Period) -> ApiResult<HttpResponse> {
    let mut conn = conn(&state.db).await?;
    let statement =
        Statement::for_user(&mut conn, user.id(), period, state.config.billing.currency, state.now()).await?;
    Ok(HttpResponse::Ok().json(statement))
}
