//! The caller's own call counts: per period, and per day.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::app::AppState;
use crate::domain::text::Slug;
use crate::domain::{Day, DayRange, Period};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::models::Api;
use crate::models::usage::{UsageDaily, UsageRecord};
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

/// One API's calls on one day.
#[derive(Serialize, ToSchema)]
pub struct DayUsage {
    day: Day,
    /// The API's catalog slug.
    api: String,
    calls: i64,
    /// Calls answered with a 4xx/5xx (never billed).
    failed_calls: i64,
}

/// One API's calls in a whole period that is older than daily counts.
#[derive(Serialize, ToSchema)]
pub struct MonthlyOnlyUsage {
    period: Period,
    /// The API's catalog slug.
    api: String,
    /// The whole period's calls, however much of it the range covers.
    calls: i64,
    failed_calls: i64,
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
    /// The first period with daily counts: for it and every later period,
    /// its days add up to its monthly total (`GET /api/v1/usage`).
    daily_from: Period,
    /// One line per (day, API) with calls, by day then API; days without
    /// calls are left out, and so are the days of periods before `daily_from`.
    days: Vec<DayUsage>,
    /// Periods the range reaches into that are older than daily counts
    /// (before `daily_from`), with their whole monthly totals, by period then
    /// API: a chart shows them as months, not days.
    monthly_only: Vec<MonthlyOnlyUsage>,
}

/// The caller's own per-API counts per day, in the billing time zone.
///
/// A day is the calendar day a call arrived on in the billing time zone,
/// fixed when it arrived (like its period). For every period from
/// `daily_from` on, the days add up to the period's monthly total (`GET
/// /api/v1/usage`); older periods have no days, only their monthly totals,
/// listed in `monthly_only`. Counts reach the database within one flush
/// interval (`PAYG_METER_FLUSH_MS`).
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
    let since = UsageDaily::since(&mut conn)
        .await?
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("usage_daily_since has no row")))?;
    // A period that started before daily counting began has days for only
    // part of its calls (if any): it is shown by its monthly total alone.
    let daily_from = Period::first_starting_at_or_after(since, tz);
    let first_daily = range.first().max(Day::from(daily_from.first_day()));
    let days = if first_daily <= range.last() {
        UsageDaily::for_user(&mut conn, user.id(), first_daily, range.last(), api_id).await?
    } else {
        Vec::new()
    };
    let monthly_only = if range.first().period() < daily_from {
        let last = range.last().period().min(daily_from.previous());
        UsageRecord::for_user_periods(&mut conn, user.id(), range.first().period(), last, api_id).await?
    } else {
        Vec::new()
    };
    let report = DailyUsageReport {
        zone: tz.name(),
        from: range.first(),
        to: range.last(),
        daily_from,
        days: days
            .into_iter()
            .map(|l| DayUsage {
                day: Day::from(l.day),
                api: l.slug,
                calls: l.calls,
                failed_calls: l.failed_calls,
            })
            .collect(),
        monthly_only: monthly_only
            .into_iter()
            .filter_map(|l| {
                Some(MonthlyOnlyUsage {
                    period: Period::from_first_day(l.period)?,
                    api: l.slug,
                    calls: l.calls,
                    failed_calls: l.failed_calls,
                })
            })
            .collect(),
    };
    Ok(HttpResponse::Ok().json(report))
}
