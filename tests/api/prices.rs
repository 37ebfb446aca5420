//! Price versions: every call is priced by the version in force when it
//! arrived, whatever the flush timing and the number of instances; versions
//! start at an instant, may be listed and cancelled before they start, and
//! free calls and tiers count the whole month across versions.

use std::sync::Arc;

use chrono::{TimeDelta, Utc};
use payg::domain::ManualClock;
use serde_json::{Value, json};

use crate::helpers::{Registered, TestApp, TestDb, api_id, at, error_code};

async fn calls(app: &TestApp, user: &Registered, times: usize) {
    for _ in 0..times {
        assert_eq!(app.get_auth("/api/v1/tools/uuid", &user.token).await.status(), 200);
    }
}

fn prices_path(api: i32) -> String {
    format!("/api/v1/admin/apis/{api}/prices")
}

async fn schedule(app: &TestApp, admin: &Registered, api: i32, body: Value) -> Value {
    let res = app.post_auth(&prices_path(api), &admin.token, &body).await;
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    res.json().await.unwrap()
}

/// Waits (real time) until the scheduled version has started.
async fn until_started(set: &Value) {
    let from = at(set["price"]["effective_from"].as_str().unwrap());
    let wait = from - Utc::now() + TimeDelta::milliseconds(50);
    if let Ok(wait) = wait.to_std() {
        tokio::time::sleep(wait).await;
    }
}

/// The current cost and its tools-uuid lines: (price_id, calls, amount).
async fn uuid_lines(app: &TestApp, user: &Registered) -> (String, Vec<(i64, i64, String)>) {
    let bill: Value = app.get_json("/api/v1/billing/current", &user.token).await;
    let lines = bill["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["slug"] == "tools-uuid")
        .map(|l| {
            (
                l["price_id"].as_i64().unwrap(),
                l["calls"].as_i64().unwrap(),
                l["amount"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (bill["total"].as_str().unwrap().to_owned(), lines)
}

/// The reproduction: 50 calls still buffered (a 20 s flush
/// interval) when the price goes from 0.001 to 1.00 keep 0.001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_calls_keep_the_price_they_arrived_under_on_one_instance() {
    let app = TestApp::builder().env("PAYG_METER_FLUSH_MS", "20000").spawn().await;
    let admin = app.user_with_role("admin").await;
    let user = app.new_user().await;
    let uuid = api_id(&app.db, "tools-uuid").await;
    calls(&app, &user, 50).await;
    assert_eq!(app.state.meter.status().pending_calls, 50, "still buffered");

    let set = schedule(&app, &admin, uuid, json!({"unit_price": "1.00"})).await;
    until_started(&set).await;
    app.flush_meter().await;
    let (total, lines) = uuid_lines(&app, &user).await;
    println!("50 calls buffered across a change to 1.00: current cost {total}");
    assert_eq!(total, "0.05", "{lines:?}");

    calls(&app, &user, 1).await;
    app.flush_meter().await;
    let (total, lines) = uuid_lines(&app, &user).await;
    println!("and one call after the change: current cost {total}");
    assert_eq!(total, "1.05");
    let new_id = set["price"]["id"].as_i64().unwrap();
    assert_eq!(lines.last(), Some(&(new_id, 1, "1.00".to_owned())), "{lines:?}");
}

/// The same on two instances: A buffers the calls, the price changes
/// through B, and A flushes after the new price has started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_calls_keep_the_price_they_arrived_under_on_two_instances() {
    let db = TestDb::new().await;
    let a = TestApp::builder()
        .database(db.clone())
        .env("PAYG_METER_FLUSH_MS", "20000")
        .spawn()
        .await;
    let b = TestApp::builder().database(db.clone()).spawn().await;
    let admin = b.user_with_role("admin").await;
    let user = b.new_user().await;
    let uuid = api_id(&db, "tools-uuid").await;
    calls(&a, &user, 50).await;
    assert_eq!(a.state.meter.status().pending_calls, 50);

    let set = schedule(&b, &admin, uuid, json!({"unit_price": "1.00"})).await;
    until_started(&set).await;
    calls(&a, &user, 3).await;
    a.flush_meter().await;
    let (total, lines) = uuid_lines(&b, &user).await;
    println!("50 calls buffered on A across a change made on B, then 3 after: current cost {total}");
    assert_eq!(total, "3.05", "{lines:?}");
    assert_eq!(lines.len(), 2, "one line per version: {lines:?}");
    assert_eq!((lines[0].1, lines[0].2.as_str()), (50, "0.05"));
    assert_eq!((lines[1].1, lines[1].2.as_str()), (3, "3.00"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_price_starts_exactly_at_its_instant_and_is_listed() {
    let clock = Arc::new(ManualClock::new(at("2026-05-10T12:00:00Z")));
    let app = TestApp::builder()
        .clock(clock.clone())
        .env("PAYG_BILLING_TZ", "Europe/Oslo")
        .spawn()
        .await;
    let admin = app.user_with_role("admin").await;
    let user = app.new_user().await;
    let uuid = api_id(&app.db, "tools-uuid").await;
    let old = schedule(
        &app,
        &admin,
        uuid,
        json!({"unit_price": "0.10", "effective_from": "2026-05-10T12:30:00Z"}),
    )
    .await;
    let new = schedule(
        &app,
        &admin,
        uuid,
        json!({"unit_price": "2.00", "effective_from": "2026-05-10T15:00:00+02:00"}),
    )
    .await;
    assert_eq!(new["price"]["effective_from"], "2026-05-10T13:00:00Z");
    // A month means its first instant in the billing zone.
    let june = schedule(
        &app,
        &admin,
        uuid,
        json!({"unit_price": "3.00", "effective_from": "2026-06"}),
    )
    .await;
    assert_eq!(june["price"]["effective_from"], "2026-05-31T22:00:00Z");

    let catalog: Value = app.get_public_json("/api/v1/apis").await;
    let entry = catalog["apis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["slug"] == "tools-uuid")
        .unwrap()
        .clone();
    assert_eq!(entry["price"]["unit_price"], "0.001", "{entry}");
    assert_eq!(entry["next_price"]["effective_from"], "2026-05-10T12:30:00Z", "{entry}");

    clock.set(at("2026-05-10T12:59:59.999Z"));
    calls(&app, &user, 1).await;
    clock.set(at("2026-05-10T13:00:00Z"));
    calls(&app, &user, 1).await;
    app.flush_meter().await;
    let (total, lines) = uuid_lines(&app, &user).await;
    let id = |v: &Value| v["price"]["id"].as_i64().unwrap();
    assert_eq!(
        lines,
        vec![(id(&old), 1, "0.10".to_owned()), (id(&new), 1, "2.00".to_owned())],
        "the last millisecond before the instant is the old price"
    );
    assert_eq!(total, "2.10");
    let bill: Value = app.get_json("/api/v1/billing/current", &user.token).await;
    assert_eq!(
        bill["lines"][1]["price_effective_from"], "2026-05-10T13:00:00Z",
        "{bill}"
    );

    let listed: Value = app.get_json(&prices_path(uuid), &admin.token).await;
    let states: Vec<(i64, &str)> = listed["prices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_i64().unwrap(), p["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        &states[states.len() - 3..],
        &[
            (id(&old), "superseded"),
            (id(&new), "in_force"),
            (id(&june), "scheduled")
        ],
        "{listed}"
    );
    assert!(
        states[..states.len() - 3].iter().all(|(_, s)| *s == "superseded"),
        "{listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_price_can_be_cancelled_until_shortly_before_it_starts() {
    let clock = Arc::new(ManualClock::new(at("2026-05-10T12:00:00Z")));
    let app = TestApp::builder().clock(clock.clone()).spawn().await;
    let admin = app.user_with_role("admin").await;
    let user = app.new_user().await;
    let uuid = api_id(&app.db, "tools-uuid").await;
    let time = api_id(&app.db, "tools-time").await;

    // Too soon, not a whole second, or past: refused, nothing written.
    let before: Value = app.get_json(&prices_path(uuid), &admin.token).await;
    for start in ["2026-05-10T12:00:01Z", "2026-05-10T13:00:00.5Z", "2026-05", "soon"] {
        let res = app
            .post_auth(
                &prices_path(uuid),
                &admin.token,
                &json!({"unit_price": "5", "effective_from": start}),
            )
            .await;
        assert_eq!(res.status(), 400, "{start}");
        assert_eq!(error_code(res).await, "validation_failed", "{start}");
    }
    assert_eq!(app.get_json(&prices_path(uuid), &admin.token).await, before);

    let later = schedule(
        &app,
        &admin,
        uuid,
        json!({"unit_price": "5", "effective_from": "2026-05-10T13:00:00Z"}),
    )
    .await;
    let later_id = later["price"]["id"].as_i64().unwrap();
    // Through another API's path, or an unknown id: not found.
    for path in [
        format!("{}/{later_id}", prices_path(time)),
        format!("{}/999999", prices_path(uuid)),
    ] {
        let res = app.delete_auth(&path, &admin.token).await;
        assert_eq!(res.status(), 404, "{path}");
        assert_eq!(error_code(res).await, "not_found");
    }
    let consumer = app
        .delete_auth(&format!("{}/{later_id}", prices_path(uuid)), &user.token)
        .await;
    assert_eq!(consumer.status(), 403);
    let res = app
        .delete_auth(&format!("{}/{later_id}", prices_path(uuid)), &admin.token)
        .await;
    assert_eq!(res.status(), 204);
    assert_eq!(app.get_json(&prices_path(uuid), &admin.token).await, before, "gone");
    let res = app
        .delete_auth(&format!("{}/{later_id}", prices_path(uuid)), &admin.token)
        .await;
    assert_eq!(res.status(), 404, "cancelled once");
    // The cancelled version never prices a call.
    clock.set(at("2026-05-10T13:00:00Z"));
    calls(&app, &user, 1).await;
    app.flush_meter().await;
    let (total, _) = uuid_lines(&app, &user).await;
    assert_eq!(total, "0.00", "0.001 rounds to 0.00");

    // Within 2 s of its start calls may already be priced by it: 409.
    let soon = schedule(
        &app,
        &admin,
        uuid,
        json!({"unit_price": "5", "effective_from": "2026-05-10T13:00:10Z"}),
    )
    .await;
    let path = format!("{}/{}", prices_path(uuid), soon["price"]["id"]);
    clock.set(at("2026-05-10T13:00:08.500Z"));
    let res = app.delete_auth(&path, &admin.token).await;
    assert_eq!(res.status(), 409);
    assert_eq!(error_code(res).await, "price_started");
    clock.set(at("2026-05-10T13:00:20Z"));
    let res = app.delete_auth(&path, &admin.token).await;
    assert_eq!(res.status(), 409);
    let res = app.get_auth(&prices_path(4242), &admin.token).await;
    assert_eq!(res.status(), 404, "no such API");
}

/// A version that has priced a call cannot be cancelled, whatever the
/// clock says (here moved back before the version's start, as a skewed
/// instance's would be).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_priced_a_call_is_never_cancelled() {
    let clock = Arc::new(ManualClock::new(at("2026-05-10T12:00:00Z")));
    let app = TestApp::builder().clock(clock.clone()).spawn().await;
    let admin = app.user_with_role("admin").await;
    let user = app.new_user().await;
    let uuid = api_id(&app.db, "tools-uuid").await;
    let set = schedule(
        &app,
        &admin,
        uuid,
        json!({"unit_price": "2.00", "effective_from": "2026-05-10T13:00:00Z"}),
    )
    .await;
    clock.set(at("2026-05-10T13:00:00Z"));
    calls(&app, &user, 1).await;
    app.flush_meter().await;
    clock.set(at("2026-05-10T12:00:00Z"));
    let res = app
        .delete_auth(&format!("{}/{}", prices_path(uuid), set["price"]["id"]), &admin.token)
        .await;
    assert_eq!(res.status(), 409);
    assert_eq!(error_code(res).await, "price_started");
    let (total, _) = uuid_lines(&app, &user).await;
    assert_eq!(total, "2.00", "the call keeps its price");
}

/// Free calls and tiers count the month's billable calls across versions:
/// a new version neither restarts the allowance nor the tiers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_calls_and_tiers_count_the_whole_month_across_versions() {
    let clock = Arc::new(ManualClock::new(at("2026-04-30T12:00:00Z")));
    let app = TestApp::builder()
        .clock(clock.clone())
        .env("PAYG_CLOSE_GRACE", "876000h")
        .spawn()
        .await;
    let admin = app.user_with_role("admin").await;
    let finance = app.user_with_role("finance").await;
    let user = app.new_user().await;
    let uuid = api_id(&app.db, "tools-uuid").await;
    schedule(
        &app,
        &admin,
        uuid,
        json!({"unit_price": "0.01", "free_calls": 5, "effective_from": "2026-05"}),
    )
    .await;
    clock.set(at("2026-05-10T12:00:00Z"));
    // Calls 1–8: 5 free, 3 × 0.01.
    calls(&app, &user, 8).await;
    schedule(
        &app,
        &admin,
        uuid,
        json!({"unit_price": "0.10", "free_calls": 5, "effective_from": "2026-05-10T13:00:00Z",
               "tiers": [{"up_to": 4, "unit_price": "0.10"}, {"up_to": null, "unit_price": "0.01"}]}),
    )
    .await;
    // A later version with a larger allowance: calls 15–17 are within it.
    schedule(
        &app,
        &admin,
        uuid,
        json!({"unit_price": "1.00", "free_calls": 20, "effective_from": "2026-05-10T14:00:00Z"}),
    )
    .await;
    clock.set(at("2026-05-10T13:00:00Z"));
    // Calls 9–14: the allowance is used up; charged calls 4–9: one in the
    // first tier (0.10), five in the second (0.05).
    calls(&app, &user, 6).await;
    clock.set(at("2026-05-10T14:00:00Z"));
    calls(&app, &user, 3).await;
    app.flush_meter().await;

    let bill: Value = app.get_json("/api/v1/billing/current", &user.token).await;
    let lines: Vec<(i64, i64, i64, &str)> = bill["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["calls"].as_i64().unwrap(),
                l["free_calls"].as_i64().unwrap(),
                l["charged_calls"].as_i64().unwrap(),
                l["amount"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![(8, 5, 3, "0.03"), (6, 0, 6, "0.15"), (3, 3, 0, "0.00")],
        "{bill}"
    );
    assert_eq!(bill["total"], "0.18");

    clock.set(at("2026-06-01T00:11:00Z"));
    let res = app
        .post_auth("/api/v1/finance/periods/2026-05/close", &finance.token, &json!({}))
        .await;
    assert_eq!(res.status(), 200);
    let list: Value = app.get_json("/api/v1/invoices", &user.token).await;
    let id = list["invoices"][0]["id"].as_str().unwrap().to_owned();
    let invoice: Value = app.get_json(&format!("/api/v1/invoices/{id}"), &user.token).await;
    assert_eq!(invoice["total"], "0.18", "{invoice}");
    let invoiced: Vec<(&Value, &Value, &Value)> = invoice["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (&l["price_effective_from"], &l["free_calls"], &l["charged_calls"]))
        .collect();
    assert_eq!(
        invoiced,
        vec![
            (&json!("2026-05-01T00:00:00Z"), &json!(5), &json!(3)),
            (&json!("2026-05-10T13:00:00Z"), &json!(0), &json!(6)),
            (&json!("2026-05-10T14:00:00Z"), &json!(3), &json!(0)),
        ],
        "{invoice}"
    );
}
