use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::auth::AuthUser;
use crate::billing::Period;
use crate::error::{ApiError, ApiResult};
use crate::models::usage::UsageRecord;
use crate::routes::conn;

#[derive(Deserialize)]
pub struct UsageQuery {
    period: Option<String>,
}

#[derive(Serialize)]
struct UsageLineView {
    slug: String,
    method: String,
    route: String,
    calls: i64,
    failed_calls: i64,
}

/// Parses an optional `YYYY-MM`, defaulting to the current period.
pub(crate) fn period_or_current(state: &AppState, raw: Option<&str>) -> Result<Period, ApiError> {
    match raw {
        None => Ok(state.current_period()),
        Some(s) => s
            .parse()
            .map_err(|e: crate::billing::period::BadPeriod| ApiError::validation(e.to_string())),
    }
}

/// The caller's own per-API counts for one period. Counts reach the
/// database within one flush interval (`PAYG_METER_FLUSH_MS`).
pub async fn get_usage(
    state: web::Data<AppState>,
    user: AuthUser,
    query: web::Query<UsageQuery>,
) -> ApiResult<HttpResponse> {
    let period = period_or_current(&state, query.period.as_deref())?;
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
