//! A real database outage — the test database refuses connections and its
//! backends are terminated — while known users keep calling: what was
//! trusted already serves for the stale-if-error window, nothing new becomes
//! trusted, and every served call is flushed exactly once afterwards.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TestApp, error_code, refuse_connections, this_period, usage_of};

async fn call(app: &TestApp, credential: (&str, &str)) -> reqwest::Response {
    app.client
        .get(app.url("/api/v1/tools/uuid"))
        .header(credential.0, credential.1)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_users_keep_calling_through_a_database_outage_and_nothing_new_is_trusted() {
    let window = Duration::from_secs(4);
    let app = TestApp::builder()
        // Standings are re-read on every call unless the database is down.
        .env("PAYG_AUTH_CACHE_MS", "0")
        .env("PAYG_STALE_IF_ERROR", "4s")
        .spawn()
        .await;
    let user = app.new_user().await;
    let bearer = format!("Bearer {}", user.token);
    let created: Value = app
        .post_auth("/api/v1/api-keys", &user.token, &json!({"name": "outage"}))
        .await
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    // A user who registered but has not called this instance yet.
    let newcomer = app.new_user().await;
    let newcomer_bearer = format!("Bearer {}", newcomer.token);
    let mut served = 0;
    for credential in [("authorization", bearer.as_str()), ("x-api-key", key.as_str())] {
        assert_eq!(call(&app, credential).await.status(), 200);
        served += 1;
    }
    app.flush_meter().await;

    refuse_connections(&app.db, true).await;
    let outage_started = Instant::now();
    for _ in 0..20 {
        for credential in [("authorization", bearer.as_str()), ("x-api-key", key.as_str())] {
            let res = call(&app, credential).await;
            assert_eq!(res.status(), 200, "a known user is served through the outage");
            served += 1;
        }
    }
    // Nothing new becomes trusted.
    let res = call(&app, ("authorization", &newcomer_bearer)).await;
    assert_eq!(res.status(), 503, "a user this instance has not seen");
    assert_eq!(error_code(res).await, "database_unavailable");
    let res = call(&app, ("x-api-key", "payg_this_key_was_never_issued_0123456789abcdef")).await;
    assert_eq!(res.status(), 503, "a key this instance has not seen");
    let res = app.login(&user.email, crate::helpers::PASSWORD).await;
    assert_eq!(res.status(), 503, "a login");
    let res = app
        .post_auth("/api/v1/api-keys", &user.token, &json!({"name": "new"}))
        .await;
    assert_eq!(res.status(), 503, "a new key");
    let res = app.register("someone-new@example.com", "New").await;
    assert_eq!(res.status(), 503, "a new user");
    assert!(
        outage_started.elapsed() < window,
        "the checks above ran inside the window"
    );

    // Past the window what was trusted is not any more.
    tokio::time::sleep(window.saturating_sub(outage_started.elapsed()) + Duration::from_millis(300)).await;
    let res = call(&app, ("authorization", &bearer)).await;
    assert_eq!(res.status(), 503, "past stale-if-error");
    assert_eq!(error_code(res).await, "database_unavailable");
    assert_eq!(call(&app, ("x-api-key", &key)).await.status(), 503);

    refuse_connections(&app.db, false).await;
    let mut back = false;
    for _ in 0..100 {
        if call(&app, ("authorization", &bearer)).await.status() == 200 {
            served += 1;
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "served again once the database returns");
    assert_eq!(call(&app, ("authorization", &newcomer_bearer)).await.status(), 200);
    app.flush_meter().await;
    // Every call served in the outage was buffered and flushed exactly
    // once; the refused ones were never counted (they did not authenticate).
    assert_eq!(
        usage_of(&app.db, user.id, "tools-uuid", &this_period()).await,
        (served, 0)
    );
    assert_eq!(
        usage_of(&app.db, newcomer.id, "tools-uuid", &this_period()).await,
        (1, 0)
    );
}
