//! The caller's own call counts.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::app::AppState;
use crate::domain::Period;
use crate::error::{ApiResult, ErrorBody};
use crate::models::usage::UsageRecord;
use crate::routes::conn;
use crate::routes::extract::AuthUser;

#[derive(Deserialize, IntoParams)]
pub struct UsageQuery {
    /// `YYYY-MM`; default: the current period.
    period: Option<Period>,
}

#[derive(Serialize, ToSchema)]
pub struct UsageLineView {
    slug: String,
    method: String,
    route: String,
    calls: i64,
    /// Calls answered with a 4xx/5xx (never billed).
    failed_calls: i64,
}

#[derive(ToSchema)]
pub struct UsageReport {
    pub period: Period,
    /// One line per API called in the period.
    pub apis: Vec<UsageLineView>,
}

/// The caller's own per-API counts for one period. Counts reach the
/// database within one flush interval (`PAYG_METER_FLUSH_MS`).
#[utoipa::path(
    get,
    path = "/api/v1/usage",
    tag = "usage",
    params(UsageQuery),
    security(("bearerAuth" = []), ("apiKey" = [])),
    responses(
        (status = 200, description = "The caller's counts per API", body = UsageReport),
        (status = 400, description = "`validation_failed`: `period` is not `YYYY-MM`", body = ErrorBody),
    )
)]
pub async fn get_usage(
    state: web::Data<AppState>,
    user: AuthUser,
    query: web::Query<UsageQuery>,
) -> ApiResult<HttpResponse> {
    let period = query.period.unwrap_or_else(|| state.current_period());
    let mut conn = conn(&state.db).await?;
    let apis: Vec<UsageLineView> = UsageRecord::for_user_period(&mut conn, user.id(), period)
        .await?
        .into_iter()
        .map(|l| UsageLineView {
            slug: l.slug,
            method: l.method,
            route: l.route,
            calls: l.calls,
            failed_calls: l.failed_calls,
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "period": period, "apis": apis })))
}
