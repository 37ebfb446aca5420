//! The caller's own call counts: per period, and per day.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::app::AppState;
use crate::domain::text::Slug;
use crate::domain::{Day, DayRange, Period};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::models::Api;
use crate::models::usage::{DayUsage, MonthlyOnlyUsage, UsageDaily, UsageRecord};
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DailyUsageQuery {
    /// The first day, included (`YYYY-MM-DD`, in the billing time zone);
    /// default: the first day of `to`'s month.
    from: Option<Day>,
    /// The last day, included; default: today in the billing time zone. At
    /// most 400 days after `from`, counting both.
    to: Option<Day>,
    /// Only this API (its catalog slug); default: every API.
    api: Option<Slug>,
}

#[derive(Serialize, ToSchema)]
pub struct DailyUsageReport {
    /// The billing time zone (IANA name): a day is a calendar day on its
    /// wall clock (23 or 25 hours long where a DST change falls in it).
    #[schema(example = "Europe/Oslo")]
    zone: &'static str,
    /// The range's first day, as sent or defaulted.
    from: Day,
    /// The range's last day, as sent or defaulted.
    to: Day,
    /// One line per (day, API) with calls, by day then API, for each
    /// (period, API) whose days, over the whole period, add up to its
    /// monthly total (`GET /api/v1/usage`); days without calls are left out.
    days: Vec<DayUsage>,
    /// One line per (period, API) the range reaches into whose days do not
    /// add up to its monthly total (calls counted before daily counts
    /// existed, such as in the month of an upgrade, or imported without
    /// days), with the whole period's totals, by period then API: a chart
    /// shows them as months, not days. None of their days are in `days`.
    monthly_only: Vec<MonthlyOnlyUsage>,
}

/// The caller's own per-API counts per day, in the billing time zone.
///
/// A day is the calendar day a call arrived on in the billing time zone,
/// fixed when it arrived (like its period). Each (period, API) is shown by
/// its days when they add up to its monthly total (`GET /api/v1/usage`) —
/// as they do for every call counted since daily counts exist — and
/// otherwise by its monthly total alone, in `monthly_only`. Counts reach
/// the database within one flush interval (`PAYG_METER_FLUSH_MS`).
#[utoipa::path(
    get,
    path = "/api/v1/usage/daily",
    tag = "usage",
    params(DailyUsageQuery),
    security(("bearerAuth" = []), ("apiKey" = [])),
    responses(
        (status = 200, description = "The caller's counts per day and API", body = DailyUsageReport),
        (
            status = 400,
            description = "`validation_failed`: `from` or `to` is not a `YYYY-MM-DD` date from 1970-01-01, `to` is \
                           before `from`, the range holds more than 400 days, or `api` is not a slug",
            body = ErrorBody
        ),
        (status = 404, description = "`not_found`: the catalog has no API with this slug", body = ErrorBody),
    )
)]
pub async fn get_daily_usage(
    state: web::Data<AppState>,
    user: AuthUser,
    query: web::Query<DailyUsageQuery>,
) -> ApiResult<HttpResponse> {
    let tz = state.config.billing_tz;
    let query = query.into_inner();
    let to = query.to.unwrap_or_else(|| Day::containing(state.now(), tz));
    let from = query.from.unwrap_or_else(|| Day::from(to.period().first_day()));
    let range = DayRange::new(from, to)?;
    let mut conn = conn(&state.db).await?;
    let api_id = match &query.api {
        Some(slug) => Some(
            Api::id_by_slug(&mut conn, slug.as_str())
                .await?
                .ok_or_else(|| ApiError::not_found("the catalog has no API with this slug"))?,
        ),
        None => None,
    };
    let report = UsageDaily::report(&mut conn, user.id(), range, api_id).await?;
    Ok(HttpResponse::Ok().json(DailyUsageReport {
        zone: tz.name(),
        from: range.first(),
        to: range.last(),
        days: report.days,
        monthly_only: report.monthly_only,
    }))
}
