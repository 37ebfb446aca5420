//! Usage over time: calls per day as a server-drawn SVG bar chart (no
//! script; presentation attributes and classes only, which the strict CSP
//! allows), with the same numbers in a table beside it.

use actix_web::web;
use chrono::{Datelike, NaiveDate};
use maud::{Markup, html};
use serde::Deserialize;

use super::page::{self, PageError, PageResult, Signed};
use crate::domain::{DayRange, Period};
use crate::error::ApiError;
use crate::models::Api;
use crate::models::usage::{UsageDaily, UsageRecord};

const WIDTH: i64 = 640;
const HEIGHT: i64 = 200;
const LEFT: i64 = 48;
const BOTTOM: i64 = 24;
/// Periods the page offers (this one and the eleven before it).
const PERIODS: u32 = 12;

/// The smallest "nice" axis bound at or above `max` (1, 2 or 5 × 10ⁿ).
fn axis_max(max: i64) -> i64 {
    let mut step = 1i64;
    loop {
        for m in [1, 2, 5] {
            if let Some(bound) = step.checked_mul(m)
                && bound >= max
            {
                return bound.max(1);
            }
        }
        match step.checked_mul(10) {
            Some(next) => step = next,
            None => return i64::MAX,
        }
    }
}

/// One bar per day of `days` (calls that day), labelled every few days.
pub fn bar_chart(title: &str, days: &[(NaiveDate, i64)]) -> Markup {
    let max = axis_max(days.iter().map(|(_, c)| *c).max().unwrap_or(0));
    let n = i64::try_from(days.len()).unwrap_or(1).max(1);
    let plot_w = WIDTH - LEFT - 8;
    let plot_h = HEIGHT - BOTTOM - 8;
    let slot = plot_w / n;
    let bar = (slot - 2).max(1);
    let scaled =
        |c: i64| -> i64 { i64::try_from(i128::from(c) * i128::from(plot_h) / i128::from(max)).unwrap_or(plot_h) };
    html! {
        svg.chart viewBox={"0 0 " (WIDTH) " " (HEIGHT)} role="img" aria-label=(title) preserveAspectRatio="none" {
            title { (title) }
            line.axis x1=(LEFT) y1=(8) x2=(LEFT) y2=(HEIGHT - BOTTOM) {}
            line.axis x1=(LEFT) y1=(HEIGHT - BOTTOM) x2=(WIDTH - 8) y2=(HEIGHT - BOTTOM) {}
            text.tick x=(LEFT - 4) y=(14) text-anchor="end" { (max) }
            text.tick x=(LEFT - 4) y=(HEIGHT - BOTTOM) text-anchor="end" { "0" }
            @for (i, (day, calls)) in days.iter().enumerate() {
                @let i = i64::try_from(i).unwrap_or(0);
                @let h = scaled(*calls);
                @let x = LEFT + 1 + i * slot;
                rect.bar x=(x) y=(HEIGHT - BOTTOM - h) width=(bar) height=(h) {
                    title { (page::day(*day)) ": " (calls) " calls" }
                }
                @if day.day() == 1 || day.day() % 5 == 0 {
                    text.tick x=(x + bar / 2) y=(HEIGHT - 6) text-anchor="middle" { (day.day()) }
                }
            }
        }
    }
}

#[derive(Deserialize)]
pub struct UsageQuery {
    period: Option<String>,
    api: Option<String>,
}

/// Every day of `period`, with `counts` (day → calls) filled in.
fn every_day(period: Period, counts: &[(NaiveDate, i64)]) -> Vec<(NaiveDate, i64)> {
    let mut out = Vec::new();
    let mut day = period.first_day();
    let end = period.next().first_day();
    while day < end {
        let calls = counts.iter().filter(|(d, _)| *d == day).map(|(_, c)| *c).sum();
        out.push((day, calls));
        match day.succ_opt() {
            Some(next) => day = next,
            None => break,
        }
    }
    out
}

/// What the chart shows of one period.
struct DailyCounts {
    /// Calls per day with calls (every API's summed, or the chosen one's).
    days: Vec<(NaiveDate, i64)>,
    /// Whether any chosen (period, API) line is shown by its monthly total
    /// only: its days do not add up to it (`UsageDaily::report`).
    monthly_only: bool,
}

/// The calls per day of `period`, to every API or to `api` (a slug; one
/// the catalog lacks is not found).
async fn daily_counts(
    conn: &mut diesel_async::AsyncPgConnection,
    user: uuid::Uuid,
    period: Period,
    api: Option<&str>,
) -> Result<DailyCounts, PageError> {
    let api_id = match api {
        Some(slug) => Some(
            Api::id_by_slug(conn, slug)
                .await?
                .ok_or_else(|| ApiError::not_found("the catalog has no API with this slug"))?,
        ),
        None => None,
    };
    let report = UsageDaily::report(conn, user, DayRange::of_period(period), api_id).await?;
    let mut per_day = std::collections::BTreeMap::<NaiveDate, i64>::new();
    for line in &report.days {
        *per_day.entry(line.day.date()).or_default() += line.calls;
    }
    Ok(DailyCounts {
        days: per_day.into_iter().collect(),
        monthly_only: !report.monthly_only.is_empty(),
    })
}

/// `GET /console/usage?period=YYYY-MM&api=slug`.
pub async fn usage_page(signed: Signed, query: web::Query<UsageQuery>) -> PageResult {
    let current = signed.state.current_period();
    let period = match query.period.as_deref().filter(|p| !p.is_empty()) {
        Some(p) => p.parse::<Period>().map_err(PageError::from)?,
        None => current,
    };
    let api = query.api.clone().filter(|a| !a.is_empty());
    let mut periods = vec![current];
    for _ in 1..PERIODS {
        if let Some(last) = periods.last().copied() {
            periods.push(last.previous());
        }
    }
    let mut conn = signed.conn().await?;
    // Monthly totals per API for the periods offered.
    let mut monthly = Vec::new();
    for p in &periods {
        let lines = UsageRecord::for_user_period(&mut conn, signed.user.id(), *p)
            .await
            .map_err(PageError::from)?;
        monthly.push((*p, lines));
    }
    let daily = daily_counts(&mut conn, signed.user.id(), period, api.as_deref()).await?;
    drop(conn);
    let slugs: std::collections::BTreeSet<String> = monthly
        .iter()
        .flat_map(|(_, lines)| lines.iter().map(|l| l.slug.clone()))
        .collect();
    let month_total: i64 = monthly
        .iter()
        .find(|(p, _)| *p == period)
        .map(|(_, lines)| {
            lines
                .iter()
                .filter(|l| api.as_deref().is_none_or(|a| a == l.slug))
                .map(|l| l.calls)
                .sum()
        })
        .unwrap_or(0);
    let days = every_day(period, &daily.days);
    let daily_total: i64 = days.iter().map(|(_, c)| *c).sum();
    let monthly_only = daily.monthly_only;
    let title = format!(
        "Calls per day in {period}{}",
        api.as_deref().map(|a| format!(" to {a}")).unwrap_or_default()
    );
    let main = html! {
        main {
            h1 { "Usage over time" }
            form.inline method="get" action="/console/usage" {
                label for="period" { "Month" }
                select #period name="period" {
                    @for p in &periods { option value=(p) selected[*p == period] { (p) } }
                }
                label for="api" { "API" }
                select #api name="api" {
                    option value="" selected[api.is_none()] { "All APIs" }
                    @for s in &slugs { option value=(s) selected[api.as_deref() == Some(s.as_str())] { (s) } }
                }
                button type="submit" { "Show" }
            }
            h2 { (title) }
            @if monthly_only {
                p.notice.info #monthly-only { "Some of this month's calls have no days (counted before daily counts began, or imported): it shows its monthly total only, "
                    strong { (month_total) " calls" } "." }
            } @else {
                (bar_chart(&title, &days))
                p.muted #daily-total { (daily_total) " calls in " (period) " (days in " (signed.zone().name()) ")." }
                details {
                    summary { "The numbers" }
                    div.scroll { table {
                        thead { tr { th scope="col" { "Day" } th.num scope="col" { "Calls" } } }
                        tbody { @for (d, c) in &days { tr { td { (page::day(*d)) } td.num { (c) } } } }
                    } }
                }
            }
            h2 { "Calls per month" }
            div.scroll { table #monthly {
                thead { tr { th scope="col" { "Month" } th.num scope="col" { "Calls" } th.num scope="col" { "Failed" } } }
                tbody {
                    @for (p, lines) in &monthly {
                        @let chosen: Vec<_> = lines.iter().filter(|l| api.as_deref().is_none_or(|a| a == l.slug)).collect();
                        tr {
                            td { a href={"/console/usage?period=" (p) "&api=" (api.as_deref().unwrap_or(""))} { (p) } }
                            td.num { (chosen.iter().map(|l| l.calls).sum::<i64>()) }
                            td.num { (chosen.iter().map(|l| l.failed_calls).sum::<i64>()) }
                        }
                    }
                }
            } }
        }
    };
    Ok(signed.page("Usage", "/console/usage", main))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_bounds_are_round_and_never_below_the_maximum() {
        assert_eq!(axis_max(0), 1);
        assert_eq!(axis_max(1), 1);
        assert_eq!(axis_max(3), 5);
        assert_eq!(axis_max(7), 10);
        assert_eq!(axis_max(11), 20);
        assert_eq!(axis_max(1500), 2000);
        assert_eq!(axis_max(i64::MAX), i64::MAX);
    }
}
