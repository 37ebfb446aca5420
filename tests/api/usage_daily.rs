//! Daily counts (`GET /api/v1/usage/daily`): a call's day is the calendar
//! day it arrived on in the billing time zone; the flush writes it beside
//! the period's counter in the same transaction, so the days of a period
//! always add up to its month — across month boundaries, DST changes,
//! durable groups and their settlements. A (period, API) whose days do not
//! add up to its month (calls counted before daily counts, imported rows)
//! shows its monthly total only.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Duration;
use chrono_tz::Tz;
use payg::billing::usage_cost::{self, BatchOutcome, Settlement};
use payg::domain::{Currency, Day, ManualClock};
use payg::models::usage::{FlushId, UsageDelta, UsageKey};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Registered, TestApp, TestDb, api_id, at, error_code, scalar_i64, usage_of};

const OSLO: Tz = chrono_tz::Europe::Oslo;

/// An app billing in Oslo on a clock the test moves.
async fn oslo_app(mode: &str, now: &str) -> (TestApp, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(at(now)));
    let app = TestApp::builder()
        .env("PAYG_BILLING_TZ", "Europe/Oslo")
        .env("PAYG_METER_MODE", mode)
        .clock(clock.clone())
        .spawn()
        .await;
    (app, clock)
}

/// `(user, API, period)` rows, from `first_period` (`YYYY-MM-01`) on, whose
/// days do not add up to their monthly counters (either way: a day without
/// its month, a month without its days, or different sums).
async fn periods_whose_days_do_not_add_up(db: &TestDb, first_period: &str) -> i64 {
    scalar_i64(
        db,
        &format!(
            "SELECT count(*) AS n FROM usage_records r
             FULL JOIN (SELECT user_id, api_id, period, sum(calls)::bigint AS calls,
                               sum(failed_calls)::bigint AS failed_calls
                        FROM usage_daily GROUP BY user_id, api_id, period) d
             USING (user_id, api_id, period)
             WHERE period >= DATE '{first_period}'
               AND (r.calls IS DISTINCT FROM d.calls OR r.failed_calls IS DISTINCT FROM d.failed_calls)"
        ),
    )
    .await
}

async fn daily(app: &TestApp, token: &str, query: &str) -> Value {
    let res = app.get_auth(&format!("/api/v1/usage/daily{query}"), token).await;
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 200, "{query}: {body}");
    body
}

/// `days` as (day, api) → (calls, failed_calls).
fn days_of(report: &Value) -> BTreeMap<(String, String), (i64, i64)> {
    report["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                (
                    d["day"].as_str().unwrap().to_owned(),
                    d["api"].as_str().unwrap().to_owned(),
                ),
                (d["calls"].as_i64().unwrap(), d["failed_calls"].as_i64().unwrap()),
            )
        })
        .collect()
}

fn expect(rows: &[(&str, &str, i64, i64)]) -> BTreeMap<(String, String), (i64, i64)> {
    rows.iter()
        .map(|(day, api, calls, failed)| (((*day).to_owned(), (*api).to_owned()), (*calls, *failed)))
        .collect()
}

/// Sums `days` per (period, api) and compares each with what `GET
/// /api/v1/usage?period=…` (the monthly counters) says, in both directions.
async fn assert_days_add_up_to_the_months(app: &TestApp, token: &str, report: &Value) {
    let mut from_days: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    for ((day, api), (calls, failed)) in days_of(report) {
        let period = day[..7].to_owned();
        let sum = from_days.entry((period, api)).or_default();
        sum.0 += calls;
        sum.1 += failed;
    }
    let periods: std::collections::BTreeSet<String> = from_days.keys().map(|(p, _)| p.clone()).collect();
    let mut monthly = BTreeMap::new();
    for period in periods {
        let usage = app.get_json(&format!("/api/v1/usage?period={period}"), token).await;
        for line in usage["apis"].as_array().unwrap() {
            monthly.insert(
                (period.clone(), line["slug"].as_str().unwrap().to_owned()),
                (line["calls"].as_i64().unwrap(), line["failed_calls"].as_i64().unwrap()),
            );
        }
    }
    assert_eq!(from_days, monthly, "Σ days per period vs the monthly counters");
}

/// Calls `path` with the clock at each instant; returns what the test
/// expects per (local day, api).
async fn call_at(
    app: &TestApp,
    clock: &ManualClock,
    user: &Registered,
    instants: &[&str],
    expected: &mut BTreeMap<(String, String), (i64, i64)>,
) {
    for instant in instants {
        clock.set(at(instant));
        let res = app.get_auth("/api/v1/tools/uuid", &user.token).await;
        assert_eq!(res.status(), 200);
        let day = Day::containing(at(instant), OSLO).to_string();
        expected.entry((day, "tools-uuid".to_owned())).or_default().0 += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_days_of_every_period_add_up_to_its_month_after_calls_on_many_days() {
    let (app, clock) = oslo_app("batched", "2026-05-26T20:00:00Z").await;
    let users = [app.new_user().await, app.new_user().await];
    let mut expected: [BTreeMap<(String, String), (i64, i64)>; 2] = Default::default();
    // A fixed pseudo-random walk: 150 calls over about two weeks, across the
    // end of May, three APIs (one of them failing), flushed now and then so
    // that flushes carry several days and days span several flushes.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut now = at("2026-05-26T20:00:00Z");
    for _ in 0..150 {
        now += Duration::minutes(i64::try_from(next(240)).unwrap());
        clock.set(now);
        let user = usize::try_from(next(2)).unwrap();
        let (path, api, failed) = match next(3) {
            0 => ("/api/v1/tools/uuid", "tools-uuid", false),
            1 => ("/api/v1/tools/time?tz=UTC", "tools-time", false),
            _ => ("/api/v1/tools/random?min=10&max=1", "tools-random", true),
        };
        let status = app.get_auth(path, &users[user].token).await.status();
        assert_eq!(status.as_u16() >= 400, failed, "{path}: {status}");
        let day = Day::containing(now, OSLO).to_string();
        let count = expected[user].entry((day, api.to_owned())).or_default();
        count.0 += 1;
        count.1 += i64::from(failed);
        if next(7) == 0 {
            app.flush_meter().await;
        }
    }
    app.flush_meter().await;
    assert!(now > at("2026-06-05T00:00:00Z"), "the walk crossed into June: {now}");
    let days: std::collections::BTreeSet<&String> = expected.iter().flat_map(|e| e.keys().map(|(d, _)| d)).collect();
    assert!(days.len() >= 10, "calls on {} days", days.len());

    for (user, expected) in users.iter().zip(&expected) {
        let report = daily(&app, &user.token, "?from=2026-05-01&to=2026-06-30").await;
        assert_eq!(days_of(&report), *expected);
        assert_eq!(report["monthly_only"], json!([]));
        assert_eq!(report["zone"], "Europe/Oslo");
        assert_days_add_up_to_the_months(&app, &user.token, &report).await;
    }
    assert_eq!(periods_whose_days_do_not_add_up(&app.db, "1970-01-01").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_either_side_of_local_midnight_at_a_month_end_land_on_different_days_and_periods() {
    let (app, clock) = oslo_app("batched", "2026-10-31T12:00:00Z").await;
    let user = app.new_user().await;
    let mut expected = BTreeMap::new();
    // 23:59:59.999 on 31 October and 00:00 on 1 November in Oslo (CET, +1);
    // both are still 31 October in UTC.
    call_at(
        &app,
        &clock,
        &user,
        &[
            "2026-10-31T22:59:59.999Z",
            "2026-10-31T22:59:59.999Z",
            "2026-10-31T23:00:00Z",
        ],
        &mut expected,
    )
    .await;
    app.flush_meter().await;
    assert_eq!(
        expected,
        expect(&[("2026-10-31", "tools-uuid", 2, 0), ("2026-11-01", "tools-uuid", 1, 0)])
    );
    let report = daily(&app, &user.token, "?from=2026-10-30&to=2026-11-02").await;
    assert_eq!(days_of(&report), expected);
    assert_eq!(usage_of(&app.db, user.id, "tools-uuid", "2026-10-01").await, (2, 0));
    assert_eq!(usage_of(&app.db, user.id, "tools-uuid", "2026-11-01").await, (1, 0));
    assert_days_add_up_to_the_months(&app, &user.token, &report).await;
    assert_eq!(periods_whose_days_do_not_add_up(&app.db, "1970-01-01").await, 0);
}

/// The instants around Oslo's two DST changes in 2026, and the local day
/// each lands on: 29 March has 23 hours (02:00 CET → 03:00 CEST at 01:00
/// UTC), 25 October 25 (03:00 CEST → 02:00 CET at 01:00 UTC).
const AROUND_DST: [(&str, &str); 16] = [
    ("2026-03-28T22:59:59.999Z", "2026-03-28"), // 23:59:59.999 CET
    ("2026-03-28T23:00:00Z", "2026-03-29"),     // 00:00 CET
    ("2026-03-29T00:59:59Z", "2026-03-29"),     // 01:59:59 CET
    ("2026-03-29T01:00:00Z", "2026-03-29"),     // 03:00 CEST
    ("2026-03-29T21:30:00Z", "2026-03-29"),     // 23:30 CEST
    ("2026-03-29T21:59:59.999Z", "2026-03-29"), // 23:59:59.999 CEST
    ("2026-03-29T22:00:00Z", "2026-03-30"),     // 00:00 CEST
    ("2026-10-24T21:59:59.999Z", "2026-10-24"), // 23:59:59.999 CEST
    ("2026-10-24T22:00:00Z", "2026-10-25"),     // 00:00 CEST
    ("2026-10-25T00:30:00Z", "2026-10-25"),     // 02:30 CEST
    ("2026-10-25T01:30:00Z", "2026-10-25"),     // 02:30 CET, again
    ("2026-10-25T22:30:00Z", "2026-10-25"),     // 23:30 CET
    ("2026-10-25T22:59:59.999Z", "2026-10-25"), // 23:59:59.999 CET
    ("2026-10-25T23:00:00Z", "2026-10-26"),     // 00:00 CET
    ("2026-10-31T22:59:59.999Z", "2026-10-31"), // the month's last instant
    ("2026-10-31T23:00:00Z", "2026-11-01"),
];

async fn calls_around_oslos_dst_changes_land_on_their_local_day(mode: &str) {
    let (app, clock) = oslo_app(mode, "2026-03-28T12:00:00Z").await;
    let user = app.new_user().await;
    let mut expected = BTreeMap::new();
    for (instant, day) in AROUND_DST {
        call_at(&app, &clock, &user, &[instant], &mut expected).await;
        assert!(
            expected.contains_key(&(day.to_owned(), "tools-uuid".to_owned())),
            "{instant}"
        );
    }
    if mode == "batched" {
        app.flush_meter().await;
    }
    assert_eq!(
        expected,
        expect(&[
            ("2026-03-28", "tools-uuid", 1, 0),
            ("2026-03-29", "tools-uuid", 5, 0),
            ("2026-03-30", "tools-uuid", 1, 0),
            ("2026-10-24", "tools-uuid", 1, 0),
            ("2026-10-25", "tools-uuid", 5, 0),
            ("2026-10-26", "tools-uuid", 1, 0),
            ("2026-10-31", "tools-uuid", 1, 0),
            ("2026-11-01", "tools-uuid", 1, 0),
        ])
    );
    let report = daily(&app, &user.token, "?from=2026-03-01&to=2026-11-30").await;
    assert_eq!(days_of(&report), expected);
    assert_eq!(report["monthly_only"], json!([]));
    assert_eq!(usage_of(&app.db, user.id, "tools-uuid", "2026-03-01").await, (7, 0));
    assert_eq!(usage_of(&app.db, user.id, "tools-uuid", "2026-10-01").await, (8, 0));
    assert_eq!(usage_of(&app.db, user.id, "tools-uuid", "2026-11-01").await, (1, 0));
    assert_days_add_up_to_the_months(&app, &user.token, &report).await;
    assert_eq!(periods_whose_days_do_not_add_up(&app.db, "1970-01-01").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_calls_around_oslos_dst_changes_land_on_their_local_day() {
    calls_around_oslos_dst_changes_land_on_their_local_day("batched").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_calls_around_oslos_dst_changes_land_on_their_local_day() {
    calls_around_oslos_dst_changes_land_on_their_local_day("durable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_call_answered_503_is_settled_as_failed_on_its_own_day() {
    let (app, clock) = oslo_app("durable", "2026-10-31T22:59:59Z").await;
    let user = app.new_user().await;
    assert_eq!(app.get_auth("/api/v1/tools/uuid", &user.token).await.status(), 200);
    app.sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$; \
         CREATE TRIGGER refuse BEFORE INSERT ON meter_flushes FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .await;
    // 00:00:01 on 1 November in Oslo: another day and another period.
    clock.set(at("2026-10-31T23:00:01Z"));
    let res = app.get_auth("/api/v1/tools/uuid", &user.token).await;
    assert_eq!(res.status(), 503);
    assert_eq!(error_code(res).await, "metering_unavailable");
    app.sql("DROP TRIGGER refuse ON meter_flushes").await;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while app.state.meter.status().pending_calls > 0 {
        assert!(std::time::Instant::now() < until, "the given-up group was not settled");
        let _ = app.state.meter.flush().await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let report = daily(&app, &user.token, "?from=2026-10-31&to=2026-11-01").await;
    assert_eq!(
        days_of(&report),
        expect(&[("2026-10-31", "tools-uuid", 1, 0), ("2026-11-01", "tools-uuid", 1, 1)])
    );
    assert_days_add_up_to_the_months(&app, &user.token, &report).await;
    assert_eq!(periods_whose_days_do_not_add_up(&app.db, "1970-01-01").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_flushes_and_given_up_settlements_apply_their_days_exactly_once() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    let db = &app.db;
    let api = api_id(db, "tools-uuid").await;
    let key = |day: &str| {
        let day: Day = day.parse().unwrap();
        UsageKey {
            user_id: user.id,
            api_id: api,
            day,
            second: day.starts_at(chrono_tz::Tz::UTC).timestamp(),
        }
    };
    // One group spanning three days and two periods (sorted by key).
    let deltas = [
        (
            key("2026-10-30"),
            UsageDelta {
                calls: 3000,
                failed_calls: 1000,
                ..UsageDelta::default()
            },
        ),
        (
            key("2026-10-31"),
            UsageDelta {
                calls: 2000,
                failed_calls: 0,
                ..UsageDelta::default()
            },
        ),
        (
            key("2026-11-01"),
            UsageDelta {
                calls: 7,
                failed_calls: 7,
                ..UsageDelta::default()
            },
        ),
    ];
    let id = || FlushId {
        id: Uuid::new_v4(),
        instance_id: Uuid::new_v4(),
    };
    let day_counts = async || {
        let report = daily(&app, &user.token, "?from=2026-10-01&to=2026-11-30").await;
        days_of(&report)
    };
    let usd = Currency::USD;
    let mut conn = db.conn().await;

    // A flush whose acknowledgement was lost, retried: applied once.
    let landed = id();
    let first = usage_cost::apply(&mut conn, Some(landed), &deltas, usd).await.unwrap();
    assert_eq!(first, BatchOutcome::Applied);
    let retried = usage_cost::apply(&mut conn, Some(landed), &deltas, usd).await.unwrap();
    assert_eq!(retried, BatchOutcome::AlreadyApplied);
    assert_eq!(
        day_counts().await,
        expect(&[
            ("2026-10-30", "tools-uuid", 3000, 1000),
            ("2026-10-31", "tools-uuid", 2000, 0),
            ("2026-11-01", "tools-uuid", 7, 7),
        ])
    );
    assert_eq!(usage_of(db, user.id, "tools-uuid", "2026-10-01").await, (5000, 1000));

    // That group was given up after all: its served calls move to failed,
    // day by day, once however often the settlement is retried.
    let settlement = id();
    let settle = usage_cost::settle_given_up(&mut conn, landed, settlement, &deltas, usd);
    assert_eq!(settle.await.unwrap(), Settlement::Compensated);
    let settle = usage_cost::settle_given_up(&mut conn, landed, settlement, &deltas, usd);
    assert_eq!(settle.await.unwrap(), Settlement::AlreadySettled);
    assert_eq!(
        day_counts().await,
        expect(&[
            ("2026-10-30", "tools-uuid", 3000, 3000),
            ("2026-10-31", "tools-uuid", 2000, 2000),
            ("2026-11-01", "tools-uuid", 7, 7),
        ])
    );
    assert_eq!(usage_of(db, user.id, "tools-uuid", "2026-10-01").await, (5000, 5000));

    // A group that never committed: its days are added with every call
    // failed, and the group itself can no longer add them.
    let (lost, settlement) = (id(), id());
    let settle = usage_cost::settle_given_up(&mut conn, lost, settlement, &deltas, usd);
    assert_eq!(settle.await.unwrap(), Settlement::AppliedAsFailed);
    let late = usage_cost::apply(&mut conn, Some(lost), &deltas, usd).await.unwrap();
    assert_eq!(late, BatchOutcome::AlreadyApplied);
    assert_eq!(
        day_counts().await,
        expect(&[
            ("2026-10-30", "tools-uuid", 6000, 6000),
            ("2026-10-31", "tools-uuid", 4000, 4000),
            ("2026-11-01", "tools-uuid", 14, 14),
        ])
    );
    assert_eq!(usage_of(db, user.id, "tools-uuid", "2026-10-01").await, (10000, 10000));
    assert_eq!(usage_of(db, user.id, "tools-uuid", "2026-11-01").await, (14, 14));
    let me = app.get_json("/api/v1/me", &user.token).await;
    let total_cost: Decimal = me["total_cost"].as_str().unwrap().parse().unwrap();
    assert_eq!(total_cost, Decimal::ZERO, "nothing failed is billed");
    assert_eq!(periods_whose_days_do_not_add_up(db, "1970-01-01").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_calls_never_appear() {
    let (app, clock) = oslo_app("batched", "2026-05-10T10:00:00Z").await;
    let alice = app.new_user().await;
    let bob = app.new_user().await;
    app.get_auth("/api/v1/tools/uuid", &alice.token).await;
    for _ in 0..3 {
        app.get_auth("/api/v1/tools/uuid", &bob.token).await;
    }
    clock.set(at("2026-05-11T10:00:00Z"));
    app.get_auth("/api/v1/tools/time", &bob.token).await;
    app.flush_meter().await;
    // Bob's usage in a period recorded without days, too.
    app.sql(&format!(
        "INSERT INTO usage_records (user_id, api_id, period, calls, failed_calls)
         SELECT '{}', id, DATE '2019-12-01', 9, 0 FROM apis WHERE slug = 'tools-uuid'",
        bob.id
    ))
    .await;

    let query = "?from=2019-12-01&to=2020-12-31";
    let mine = daily(&app, &alice.token, query).await;
    assert_eq!(mine["monthly_only"], json!([]), "{mine}");
    let theirs = daily(&app, &bob.token, query).await;
    assert_eq!(theirs["monthly_only"][0]["calls"], 9, "{theirs}");

    let query = "?from=2026-05-01&to=2026-05-31";
    let mine = daily(&app, &alice.token, query).await;
    assert_eq!(days_of(&mine), expect(&[("2026-05-10", "tools-uuid", 1, 0)]));
    let mine = daily(&app, &alice.token, &format!("{query}&api=tools-time")).await;
    assert_eq!(mine["days"], json!([]));
    let theirs = daily(&app, &bob.token, query).await;
    assert_eq!(
        days_of(&theirs),
        expect(&[("2026-05-10", "tools-uuid", 3, 0), ("2026-05-11", "tools-time", 1, 0)])
    );
    let theirs = daily(&app, &bob.token, &format!("{query}&api=tools-time")).await;
    assert_eq!(days_of(&theirs), expect(&[("2026-05-11", "tools-time", 1, 0)]));
}

/// Adds calls to a monthly row only, as an instance still running the code
/// from before daily counts flushes them (its upsert, without days).
async fn add_without_days(app: &TestApp, user: Uuid, api: &str, period: &str, calls: i64, failed_calls: i64) {
    app.sql(&format!(
        "INSERT INTO usage_records (user_id, api_id, period, calls, failed_calls)
         SELECT '{user}', id, DATE '{period}', {calls}, {failed_calls} FROM apis WHERE slug = '{api}'
         ON CONFLICT (user_id, api_id, period) DO UPDATE SET
           calls = usage_records.calls + EXCLUDED.calls,
           failed_calls = usage_records.failed_calls + EXCLUDED.failed_calls"
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_inserted_without_days_show_their_monthly_total_only() {
    let (app, clock) = oslo_app("batched", "2026-06-20T10:00:00Z").await;
    let user = app.new_user().await;
    // May seeded as `.ci/run` seeds last month: straight into usage_records.
    add_without_days(&app, user.id, "tools-uuid", "2026-05-01", 1500, 10).await;
    for _ in 0..2 {
        app.get_auth("/api/v1/tools/uuid", &user.token).await;
    }
    clock.set(at("2026-07-01T08:00:00Z"));
    for _ in 0..3 {
        app.get_auth("/api/v1/tools/uuid", &user.token).await;
    }
    app.flush_meter().await;

    let report = daily(&app, &user.token, "?from=2026-05-15&to=2026-07-31").await;
    assert_eq!(
        report,
        json!({
            "zone": "Europe/Oslo",
            "from": "2026-05-15",
            "to": "2026-07-31",
            "days": [
                {"day": "2026-06-20", "api": "tools-uuid", "calls": 2, "failed_calls": 0},
                {"day": "2026-07-01", "api": "tools-uuid", "calls": 3, "failed_calls": 0},
            ],
            "monthly_only": [
                {"period": "2026-05", "api": "tools-uuid", "calls": 1500, "failed_calls": 10},
            ],
        })
    );
    let june = daily(&app, &user.token, "?from=2026-06-01&to=2026-07-31").await;
    assert_eq!(june["monthly_only"], json!([]));
    let may = daily(&app, &user.token, "?from=2026-05-31&to=2026-05-31").await;
    assert_eq!(may["days"], json!([]));
    assert_eq!(may["monthly_only"][0]["calls"], 1500, "the whole month's total");
    let other_api = daily(&app, &user.token, "?from=2026-05-15&to=2026-07-31&api=tools-time").await;
    assert_eq!(
        (&other_api["days"], &other_api["monthly_only"]),
        (&json!([]), &json!([]))
    );
    assert_eq!(periods_whose_days_do_not_add_up(&app.db, "2026-06-01").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_mid_month_shows_that_month_of_the_apis_it_touched_by_their_totals_only() {
    let (app, clock) = oslo_app("batched", "2026-06-10T10:00:00Z").await;
    let user = app.new_user().await;
    let other = app.new_user().await;
    // June: this code counts calls to two APIs, with their days …
    for path in ["/api/v1/tools/uuid", "/api/v1/tools/uuid", "/api/v1/tools/time"] {
        assert_eq!(app.get_auth(path, &user.token).await.status(), 200);
    }
    assert_eq!(app.get_auth("/api/v1/tools/uuid", &other.token).await.status(), 200);
    app.flush_meter().await;
    // … while an instance still running the older code flushes more calls
    // to one of them, without days.
    add_without_days(&app, user.id, "tools-uuid", "2026-06-01", 5, 1).await;
    clock.set(at("2026-06-12T10:00:00Z"));
    app.get_auth("/api/v1/tools/uuid", &user.token).await;
    // July: every instance counts days. A month whose calls add up but
    // whose failed calls do not is monthly only too (an older instance
    // settling a given-up group moves a served call to failed in the month).
    clock.set(at("2026-07-02T10:00:00Z"));
    for path in ["/api/v1/tools/uuid", "/api/v1/tools/time"] {
        assert_eq!(app.get_auth(path, &user.token).await.status(), 200);
    }
    app.flush_meter().await;
    app.sql(&format!(
        "UPDATE usage_records SET failed_calls = failed_calls + 1
         WHERE user_id = '{}' AND period = DATE '2026-07-01'
           AND api_id = (SELECT id FROM apis WHERE slug = 'tools-time')",
        user.id
    ))
    .await;

    let report = daily(&app, &user.token, "?from=2026-06-01&to=2026-07-31").await;
    assert_eq!(
        days_of(&report),
        expect(&[("2026-06-10", "tools-time", 1, 0), ("2026-07-02", "tools-uuid", 1, 0)])
    );
    assert_eq!(
        report["monthly_only"],
        json!([
            {"period": "2026-06", "api": "tools-uuid", "calls": 8, "failed_calls": 1},
            {"period": "2026-07", "api": "tools-time", "calls": 1, "failed_calls": 1},
        ])
    );
    // The whole period is compared, however little of it the range covers.
    let one_day = daily(&app, &user.token, "?from=2026-06-12&to=2026-06-12").await;
    assert_eq!(one_day["days"], json!([]));
    assert_eq!(
        one_day["monthly_only"],
        json!([{"period": "2026-06", "api": "tools-uuid", "calls": 8, "failed_calls": 1}])
    );
    let time_only = daily(&app, &user.token, "?from=2026-06-01&to=2026-06-30&api=tools-time").await;
    assert_eq!(days_of(&time_only), expect(&[("2026-06-10", "tools-time", 1, 0)]));
    assert_eq!(time_only["monthly_only"], json!([]));
    // Another user's line of the same API and period is theirs alone.
    let theirs = daily(&app, &other.token, "?from=2026-06-01&to=2026-06-30").await;
    assert_eq!(days_of(&theirs), expect(&[("2026-06-10", "tools-uuid", 1, 0)]));
    assert_eq!(theirs["monthly_only"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_range_defaults_to_this_period_so_far() {
    // 23:30 on 29 March in Oslo (21:30 UTC).
    let (app, _clock) = oslo_app("batched", "2026-03-29T21:30:00Z").await;
    let user = app.new_user().await;
    let range = |report: Value| (report["from"].clone(), report["to"].clone());
    let today = daily(&app, &user.token, "").await;
    assert_eq!(range(today), (json!("2026-03-01"), json!("2026-03-29")));
    let to_only = daily(&app, &user.token, "?to=2026-02-10").await;
    assert_eq!(range(to_only), (json!("2026-02-01"), json!("2026-02-10")));
    let from_only = daily(&app, &user.token, "?from=2026-01-15").await;
    assert_eq!(range(from_only), (json!("2026-01-15"), json!("2026-03-29")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_dates_reversed_ranges_and_ranges_over_400_days_are_refused() {
    let (app, _clock) = oslo_app("batched", "2026-03-29T21:30:00Z").await;
    let user = app.new_user().await;
    for bad in [
        "?from=2026-02-30",
        "?from=2026-2-01",
        "?from=20260201",
        "?from=yesterday",
        "?to=2026-03-29T00:00:00Z",
        "?from=1969-12-31&to=1970-01-01",
        "?from=2026-03-02&to=2026-03-01",
        "?from=2026-03-30",
        "?from=2026-01-01&to=2027-02-05",
        "?from=1970-01-01&to=9999-12-31",
        "?api=Tools_UUID",
        "?api=",
    ] {
        let res = app.get_auth(&format!("/api/v1/usage/daily{bad}"), &user.token).await;
        assert_eq!(res.status(), 400, "{bad}");
        assert_eq!(error_code(res).await, "validation_failed", "{bad}");
    }
    // 400 days, both ends included, is the most one range holds.
    let longest = daily(&app, &user.token, "?from=2026-01-01&to=2027-02-04").await;
    assert_eq!(longest["to"], "2027-02-04");
    let res = app.get_auth("/api/v1/usage/daily?api=no-such-api", &user.token).await;
    assert_eq!(res.status(), 404);
    assert_eq!(error_code(res).await, "not_found");
    let res = app.client.get(app.url("/api/v1/usage/daily")).send().await.unwrap();
    assert_eq!(res.status(), 401);
}
