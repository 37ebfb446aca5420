//! Usage alerts and signed outbound webhooks, against real HTTP receivers
//! (`receiver.rs`), every message verified by the `standardwebhooks` npm
//! package — an implementation of the spec independent of payg's.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chrono::{Datelike, Utc};
use serde_json::{Value, json};

use crate::helpers::{Registered, TestApp, eventually, free_port, scalar_i64};
use crate::receiver::{Receiver, verify};

/// Last month in the tests' billing zone (UTC), `YYYY-MM`.
fn last_month() -> String {
    let first = Utc::now().date_naive().with_day(1).unwrap();
    (first - chrono::Duration::days(1)).format("%Y-%m").to_string()
}

async fn app_allowing_loopback() -> TestApp {
    TestApp::builder()
        .env("PAYG_WEBHOOK_ALLOWED_HOSTS", "127.0.0.1")
        .spawn()
        .await
}

/// Registers an endpoint at `base` (`/api/v1/webhooks` or
/// `/api/v1/admin/webhooks`); returns (id, secret).
async fn register(app: &TestApp, base: &str, token: &str, url: &str, types: &[&str]) -> (String, String) {
    let res = app
        .post_auth(base, token, &json!({"url": url, "event_types": types}))
        .await;
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    let secret = body["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    (body["id"].as_str().unwrap().to_owned(), secret)
}

async fn calls(app: &TestApp, user: &Registered, n: usize) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(n);
    for _ in 0..n {
        statuses.push(app.get_auth("/api/v1/tools/uuid", &user.token).await.status().as_u16());
    }
    statuses
}

/// Seeds last month's usage for `user` and closes it: their invoice is
/// issued. Returns the invoice id.
async fn invoice_last_month(app: &TestApp, finance: &Registered, users: &[&Registered]) -> Vec<String> {
    let period = last_month();
    for user in users {
        app.seed_month(user.id, "tools-uuid", &period, 1500, 0).await;
    }
    let res = app
        .post_auth(
            &format!("/api/v1/finance/periods/{period}/close"),
            &finance.token,
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let mut ids = Vec::new();
    for user in users {
        let list: Value = app.get_json("/api/v1/invoices", &user.token).await;
        ids.push(list["invoices"][0]["id"].as_str().unwrap().to_owned());
    }
    ids
}

async fn deliveries(app: &TestApp, base: &str, id: &str, token: &str) -> Vec<Value> {
    let page: Value = app
        .get_json(&format!("{base}/{id}/deliveries?per_page=500"), token)
        .await;
    page["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_event_type_arrives_signed_and_verifies_with_the_standard_webhooks_library() {
    let app = app_allowing_loopback().await;
    let admin = app.user_with_role("admin").await;
    let finance = app.user_with_role("finance").await;
    let user = app.new_user().await;
    let other = app.new_user().await;
    let all = Receiver::start().await;
    let mine = Receiver::start().await;
    let (_, admin_secret) = register(&app, "/api/v1/admin/webhooks", &admin.token, &all.url("/all"), &[]).await;
    let (my_id, my_secret) = register(&app, "/api/v1/webhooks", &user.token, &mine.url("/mine"), &[]).await;

    // Alerts at 0.01 and 0.02 of charge, credit low below 0.05, a cap of 0.12.
    let res = app
        .put_auth(
            "/api/v1/billing/alerts",
            &user.token,
            &json!({"thresholds": ["0.02", "0.01", "100.00"], "credits_low_below": "0.05"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let alerts: Value = res.json().await.unwrap();
    assert_eq!(alerts["thresholds"], json!(["0.01", "0.02", "100.00"]));
    let res = app
        .post_auth(
            &format!("/api/v1/finance/users/{}/credits", user.id),
            &finance.token,
            &json!({"amount": "0.10", "reference": "wire-webhooks-1"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let res = app
        .put_auth("/api/v1/billing/cap", &user.token, &json!({"amount": "0.12"}))
        .await;
    assert_eq!(res.status(), 200);

    // One call at a time, each flushed: every flush sees the charge so far
    // (a threshold is checked on many flushes, and still fires once).
    let mut served = 0;
    loop {
        let status = calls(&app, &user, 1).await[0];
        app.flush_meter().await;
        if status == 402 {
            break;
        }
        assert_eq!(status, 200);
        served += 1;
        assert!(served < 200, "the cap never refused");
    }
    // The secret rotates: what follows is signed with both secrets.
    let res = app
        .post_auth(&format!("/api/v1/webhooks/{my_id}/rotate"), &user.token, &json!({}))
        .await;
    let rotated: Value = res.json().await.unwrap();
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, my_secret);

    // Last month's invoices: the user's is paid, the other's goes overdue.
    let invoices = invoice_last_month(&app, &finance, &[&user, &other]).await;
    let due = app
        .sql_row(&format!(
            "SELECT (total - credit_applied)::text AS a, '' AS b FROM invoices WHERE id = '{}'",
            invoices[0]
        ))
        .await;
    let res = app
        .post_auth(
            &format!("/api/v1/finance/invoices/{}/payments", invoices[0]),
            &finance.token,
            &json!({"amount": due[0], "reference": "wire-webhooks-2", "method": "wire"}),
        )
        .await;
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    // Two months on, the other's (unpaid) is overdue: the scan the
    // dispatcher runs, run as of then (twice: it emits once).
    let later = Utc::now() + chrono::Duration::days(61);
    app.state.webhooks.emit_overdue(later).await;
    app.state.webhooks.emit_overdue(later).await;

    let every_type: BTreeSet<&str> = [
        "usage.threshold_reached",
        "spending_cap.reached",
        "credits.low",
        "credits.exhausted",
        "invoice.issued",
        "invoice.paid",
        "invoice.overdue",
    ]
    .into();
    let arrived = eventually(Duration::from_secs(20), || async {
        let types: BTreeSet<String> = all.types().into_iter().collect();
        every_type.iter().all(|t| types.contains(*t)) && all.seen().len() >= 9
    })
    .await;
    assert!(arrived, "the admin endpoint got {:?}", all.types());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Every message verifies with the independent library, under the
    // secret it was registered with.
    let seen = all.seen();
    let verified = verify(&admin_secret, &seen);
    for (message, result) in seen.iter().zip(&verified) {
        let payload = result.as_ref().unwrap_or_else(|e| panic!("{e}: {:?}", message.headers));
        assert_eq!(message.header("content-type"), Some("application/json"));
        assert!(message.header("webhook-id").is_some());
        assert!(
            payload["data"].is_object() && payload["timestamp"].is_string(),
            "{payload}"
        );
    }
    // A wrong secret verifies nothing.
    assert!(verify(&my_secret, &seen).iter().all(Result::is_err));

    // Each event once: one message per event id, two thresholds (0.01 and
    // 0.02; not 100.00), and the counts per type.
    let mut by_type: HashMap<String, usize> = HashMap::new();
    let mut ids = BTreeSet::new();
    for (message, payload) in seen.iter().zip(&verified) {
        assert!(
            ids.insert(message.header("webhook-id").unwrap().to_owned()),
            "delivered twice"
        );
        *by_type
            .entry(payload.as_ref().unwrap()["type"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    println!("admin endpoint: {by_type:?} after {served} calls");
    assert_eq!(by_type["usage.threshold_reached"], 2);
    assert_eq!(by_type["spending_cap.reached"], 1);
    assert_eq!(by_type["credits.low"], 1);
    assert_eq!(by_type["credits.exhausted"], 1);
    assert_eq!(by_type["invoice.issued"], 2);
    assert_eq!(by_type["invoice.paid"], 1);
    assert_eq!(by_type["invoice.overdue"], 1);
    let thresholds: BTreeSet<String> = verified
        .iter()
        .filter_map(|p| p.as_ref().ok())
        .filter(|p| p["type"] == "usage.threshold_reached")
        .map(|p| p["data"]["threshold"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(thresholds, BTreeSet::from(["0.01".to_owned(), "0.02".to_owned()]));

    // The consumer's endpoint gets their own events only (not the other
    // user's overdue invoice), signed with the secret in force: after the
    // rotation both the old and the new secret verify.
    let ok = eventually(Duration::from_secs(10), || async { mine.seen().len() >= 7 }).await;
    assert!(ok, "the consumer's endpoint got {:?}", mine.types());
    let own = mine.seen();
    assert!(
        !mine.types().contains(&"invoice.overdue".to_owned()),
        "{:?}",
        mine.types()
    );
    // Before the rotation: the old secret only; after it: both, and each
    // verifies on its own.
    let (before, after): (Vec<_>, Vec<_>) = own
        .iter()
        .cloned()
        .partition(|m| m.header("webhook-signature").unwrap().split(' ').count() == 1);
    assert!(
        !before.is_empty() && !after.is_empty(),
        "{} / {}",
        before.len(),
        after.len()
    );
    let checked = verify(&my_secret, &before)
        .into_iter()
        .chain(verify(&my_secret, &after))
        .chain(verify(&new_secret, &after));
    for result in checked {
        let payload = result.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(payload["data"]["user_id"], json!(user.id.to_string()), "{payload}");
    }
    assert!(verify(&new_secret, &before).iter().all(Result::is_err));

    // The delivery log says the same; no secret is shown again.
    let log = deliveries(&app, "/api/v1/webhooks", &my_id, &user.token).await;
    assert_eq!(log.len(), own.len());
    assert!(
        log.iter()
            .all(|d| d["state"] == "delivered" && d["attempt_log"][0]["status"] == 200)
    );
    let listed: Value = app.get_json("/api/v1/webhooks", &user.token).await;
    assert!(!listed.to_string().contains("whsec_"), "{listed}");

    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("payg_webhook_attempts_total{event_type=\"invoice.issued\",outcome=\"delivered\"} 3"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("webhook"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_500_then_200_gets_the_event_on_a_retry_and_a_redelivery_keeps_its_id() {
    let app = TestApp::spawn().await;
    let admin = app.user_with_role("admin").await;
    let finance = app.user_with_role("finance").await;
    let user = app.new_user().await;
    let receiver = Receiver::start().await;
    receiver.plan(&[(500, Duration::ZERO)]);
    let base = "/api/v1/admin/webhooks";
    let (id, secret) = register(&app, base, &admin.token, &receiver.url("/hook"), &["invoice.issued"]).await;
    invoice_last_month(&app, &finance, &[&user]).await;

    // The first attempt gets 500; the retry, 5 s later, 200.
    let delivered = eventually(Duration::from_secs(20), || async {
        deliveries(&app, base, &id, &admin.token)
            .await
            .first()
            .is_some_and(|d| d["state"] == "delivered")
    })
    .await;
    assert!(delivered, "{:?}", deliveries(&app, base, &id, &admin.token).await);
    let log = deliveries(&app, base, &id, &admin.token).await;
    assert_eq!(log.len(), 1);
    let statuses: Vec<&Value> = log[0]["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["status"])
        .collect();
    assert_eq!(statuses, [&json!(500), &json!(200)]);
    let seen = receiver.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].header("webhook-id"), seen[1].header("webhook-id"));
    assert!(verify(&secret, &seen).iter().all(Result::is_ok));

    // Redelivered on request: the same event id, on a fresh retry schedule
    // (its failure is retried 5 s later, not 30 min as a third attempt
    // would be), numbered after the earlier attempts in the log.
    receiver.plan(&[(502, Duration::ZERO)]);
    let delivery = log[0]["id"].as_str().unwrap();
    let redeliver = format!("{base}/{id}/deliveries/{delivery}/redeliver");
    let res = app.post_auth(&redeliver, &admin.token, &json!({})).await;
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    assert_eq!((&body["state"], &body["attempts"]), (&json!("pending"), &json!(0)));
    assert!(eventually(Duration::from_secs(15), || async { receiver.seen().len() == 4 }).await);
    assert!(
        receiver.seen()[2..]
            .iter()
            .all(|s| s.header("webhook-id") == seen[0].header("webhook-id"))
    );
    let again = eventually(Duration::from_secs(5), || async {
        let log = deliveries(&app, base, &id, &admin.token).await;
        log[0]["state"] == "delivered" && log[0]["attempts"] == 2
    })
    .await;
    assert!(again, "{:?}", deliveries(&app, base, &id, &admin.token).await);
    let log = deliveries(&app, base, &id, &admin.token).await;
    let numbered: Vec<(i64, i64)> = log[0]["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["attempt"].as_i64().unwrap(), a["status"].as_i64().unwrap()))
        .collect();
    assert_eq!(numbered, [(1, 500), (2, 200), (3, 502), (4, 200)]);

    // Redelivered while an attempt is in flight: that attempt keeps its
    // claim (no second send beside it, however often redelivery is asked)
    // and its place in the log, but its late 500 no longer decides the
    // delivery: the redelivery goes out once it ends, and nothing after.
    receiver.plan(&[(500, Duration::from_secs(3))]);
    let res = app.post_auth(&redeliver, &admin.token, &json!({})).await;
    assert_eq!(res.status(), 202);
    assert!(eventually(Duration::from_secs(5), || async { receiver.seen().len() == 5 }).await);
    for _ in 0..3 {
        let res = app.post_auth(&redeliver, &admin.token, &json!({})).await;
        assert_eq!(res.status(), 202);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        receiver.seen().len(),
        5,
        "a redelivery went out beside the attempt in flight"
    );
    let settled = eventually(Duration::from_secs(10), || async {
        let log = deliveries(&app, base, &id, &admin.token).await;
        log[0]["attempt_log"].as_array().unwrap().len() == 6 && log[0]["state"] == "delivered"
    })
    .await;
    assert!(settled, "{:?}", deliveries(&app, base, &id, &admin.token).await);
    let log = deliveries(&app, base, &id, &admin.token).await;
    assert_eq!(log[0]["attempts"], 1, "{log:?}");
    let last_two: Vec<&Value> = log[0]["attempt_log"].as_array().unwrap()[4..]
        .iter()
        .map(|a| &a["status"])
        .collect();
    assert_eq!(last_two, [&json!(500), &json!(200)]);
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(receiver.seen().len(), 6, "a superseded attempt's failure was retried");
    assert!(
        !app.metrics_text()
            .await
            .contains("payg_webhook_deliveries_given_up_total{event_type=\"invoice.issued\"} 1")
    );

    // A consumer sees neither the admin's endpoints nor their log.
    let res = app.get_auth(base, &user.token).await;
    assert_eq!(res.status(), 403);
    let res = app
        .get_auth(&format!("/api/v1/webhooks/{id}/deliveries"), &user.token)
        .await;
    assert_eq!(res.status(), 404);
    let metrics = app.metrics_text().await;
    assert!(metrics.contains("payg_webhook_attempts_total{event_type=\"invoice.issued\",outcome=\"failed\"} 3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_pending_across_a_restart_is_delivered_after_it() {
    let mut app = TestApp::spawn().await;
    let admin = app.user_with_role("admin").await;
    let finance = app.user_with_role("finance").await;
    let user = app.new_user().await;
    // Nothing listens there yet: the first attempt is refused.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let base = "/api/v1/admin/webhooks";
    let (id, secret) = register(&app, base, &admin.token, &url, &["invoice.issued"]).await;
    invoice_last_month(&app, &finance, &[&user]).await;
    let failed_once = eventually(Duration::from_secs(10), || async {
        deliveries(&app, base, &id, &admin.token)
            .await
            .first()
            .is_some_and(|d| d["attempt_log"].as_array().is_some_and(|log| log.len() == 1))
    })
    .await;
    assert!(failed_once);
    let log = deliveries(&app, base, &id, &admin.token).await;
    assert_eq!(log[0]["state"], "pending");
    assert!(log[0]["attempt_log"][0]["status"].is_null());
    assert!(
        log[0]["attempt_log"][0]["error"].as_str().unwrap().contains("connect"),
        "{log:?}"
    );

    app.shutdown().await;
    let receiver = Receiver::start_on(port).await;
    let app = TestApp::builder().database(app.db.clone()).spawn().await;
    let admin_token = app.token_for(&admin.email).await;
    let arrived = eventually(Duration::from_secs(20), || async { !receiver.seen().is_empty() }).await;
    assert!(arrived, "the delivery pending across the restart never arrived");
    assert!(verify(&secret, &receiver.seen()).iter().all(Result::is_ok));
    let delivered = eventually(Duration::from_secs(5), || async {
        let log = deliveries(&app, base, &id, &admin_token).await;
        log[0]["state"] == "delivered" && log[0]["attempts"] == 2
    })
    .await;
    assert!(delivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_endpoint_does_not_delay_another() {
    let app = TestApp::spawn().await;
    // A second instance sends too: the per-endpoint limit holds across both.
    let _second = TestApp::builder().database(app.db.clone()).spawn().await;
    let admin = app.user_with_role("admin").await;
    let finance = app.user_with_role("finance").await;
    let slow = Receiver::start().await;
    slow.slow(Duration::from_secs(8));
    let fast = Receiver::start().await;
    let base = "/api/v1/admin/webhooks";
    register(&app, base, &admin.token, &slow.url("/slow"), &[]).await;
    register(&app, base, &admin.token, &fast.url("/fast"), &[]).await;
    let mut users = Vec::new();
    for _ in 0..8 {
        users.push(app.new_user().await);
    }
    let refs: Vec<&Registered> = users.iter().collect();
    invoice_last_month(&app, &finance, &refs).await;

    // All eight reach the fast endpoint while the slow one is still
    // answering its first (at most four at a time, both instances together).
    let fast_done = eventually(Duration::from_secs(6), || async { fast.seen().len() >= 8 }).await;
    assert!(fast_done, "the fast endpoint got {} of 8", fast.seen().len());
    let slow_seen = slow.seen().len();
    assert!(slow_seen <= 4, "the slow endpoint had {slow_seen} in flight");
    assert_eq!(
        scalar_i64(
            &app.db,
            "SELECT count(*) AS n FROM webhook_deliveries WHERE state = 'pending'"
        )
        .await,
        8,
        "the slow endpoint's deliveries are still pending"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_checked_scoped_disabled_and_enabled() {
    // No allow-list: a consumer's endpoint must be public; an admin's may
    // be anywhere.
    let app = TestApp::spawn().await;
    let admin = app.user_with_role("admin").await;
    let user = app.new_user().await;
    let other = app.new_user().await;
    for url in [
        "http://127.0.0.1:9/x",
        "http://127.1:9/x",
        "http://2130706433/",
        "http://169.254.169.254/latest",
        "http://localhost/",
        "http://[::1]/",
        "ftp://hooks.example.com/",
        "https://user:pw@hooks.example.com/",
    ] {
        let res = app
            .post_auth("/api/v1/webhooks", &user.token, &json!({"url": url}))
            .await;
        assert_eq!(res.status(), 400, "{url}");
    }
    let res = app
        .post_auth(
            "/api/v1/webhooks",
            &user.token,
            &json!({"url": "https://hooks.example.com/x", "event_types": ["invoice.exploded"]}),
        )
        .await;
    assert_eq!(res.status(), 400);
    assert_eq!(
        scalar_i64(&app.db, "SELECT count(*) AS n FROM webhook_endpoints").await,
        0
    );

    let receiver = Receiver::start().await;
    let base = "/api/v1/admin/webhooks";
    let (id, _) = register(
        &app,
        base,
        &admin.token,
        &receiver.url("/h"),
        &["usage.threshold_reached"],
    )
    .await;
    let (mine, _) = register(
        &app,
        "/api/v1/webhooks",
        &user.token,
        "https://hooks.example.com/x",
        &[],
    )
    .await;
    // Scoped: another user's endpoint is not found; consumers cannot reach
    // the admin routes.
    assert_eq!(
        app.get_auth(&format!("/api/v1/webhooks/{mine}"), &other.token)
            .await
            .status(),
        404
    );
    let res = app
        .patch_auth(
            &format!("/api/v1/webhooks/{mine}"),
            &other.token,
            &json!({"enabled": false}),
        )
        .await;
    assert_eq!(res.status(), 404);
    assert_eq!(
        app.post_auth(base, &user.token, &json!({"url": "http://x.example/"}))
            .await
            .status(),
        403
    );

    // A delivery that failed waits while its endpoint is disabled, and
    // goes on once it is enabled.
    receiver.plan(&[(503, Duration::ZERO)]);
    let res = app
        .put_auth("/api/v1/billing/alerts", &user.token, &json!({"thresholds": ["0.01"]}))
        .await;
    assert_eq!(res.status(), 200);
    calls(&app, &user, 10).await;
    app.flush_meter().await;
    assert!(eventually(Duration::from_secs(5), || async { receiver.seen().len() == 1 }).await);
    let res = app
        .patch_auth(&format!("{base}/{id}"), &admin.token, &json!({"enabled": false}))
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["enabled"], false);
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(receiver.seen().len(), 1, "a disabled endpoint was sent to");
    // Its waiting delivery is not payg's backlog; the consumer's endpoint
    // (hooks.example.com, unreachable here) still waits for a retry.
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("payg_webhook_backlog{event_type=\"usage.threshold_reached\"} 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("payg_webhook_backlog"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let res = app
        .patch_auth(&format!("{base}/{id}"), &admin.token, &json!({"enabled": true}))
        .await;
    assert_eq!(res.status(), 200);
    assert!(eventually(Duration::from_secs(5), || async { receiver.seen().len() == 2 }).await);
    assert_eq!(receiver.types(), ["usage.threshold_reached", "usage.threshold_reached"]);
    let seen = receiver.seen();
    assert_eq!(seen[0].header("webhook-id"), seen[1].header("webhook-id"));

    // More calls cross no new threshold: nothing more is emitted.
    calls(&app, &user, 5).await;
    app.flush_meter().await;
    assert_eq!(
        scalar_i64(
            &app.db,
            "SELECT count(*) AS n FROM outbound_events WHERE event_type = 'usage.threshold_reached'"
        )
        .await,
        1
    );

    // Bad alerts change nothing.
    for body in [
        json!({"thresholds": ["-1"]}),
        json!({"thresholds": ["1e3"]}),
        json!({"thresholds": ["0.001"]}),
        json!({"thresholds": (1..=11).map(|i| i.to_string()).collect::<Vec<_>>()}),
        json!({"thresholds": [], "credits_low_below": "0"}),
        json!({"thresholds": [], "extra": 1}),
    ] {
        let res = app.put_auth("/api/v1/billing/alerts", &user.token, &body).await;
        assert_eq!(res.status(), 400, "{body}");
    }
    let alerts: Value = app.get_json("/api/v1/billing/alerts", &user.token).await;
    assert_eq!(alerts["thresholds"], json!(["0.01"]));

    // A threshold added under what the period was already charged (20
    // calls at 0.001) is reached on the next flush that changes the charge
    // (10 calls: 0.03), though every earlier one has fired; then nothing
    // more.
    calls(&app, &user, 5).await;
    app.flush_meter().await;
    let res = app
        .put_auth(
            "/api/v1/billing/alerts",
            &user.token,
            &json!({"thresholds": ["0.01", "0.02"]}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let thresholds_emitted = "SELECT count(*) AS n FROM outbound_events WHERE event_type = 'usage.threshold_reached'";
    assert_eq!(scalar_i64(&app.db, thresholds_emitted).await, 1);
    for _ in 0..2 {
        calls(&app, &user, 10).await;
        app.flush_meter().await;
        assert_eq!(scalar_i64(&app.db, thresholds_emitted).await, 2);
    }
}
