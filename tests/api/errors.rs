use serde_json::json;

use crate::helpers::{TestApp, api_id, error_code};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_wrongly_typed_and_oversized_bodies_get_the_envelope_and_change_nothing() {
    let app = TestApp::spawn().await;
    let url = app.url("/api/v1/auth/register");
    let send = |body: Vec<u8>, content_type: &'static str| {
        app.client
            .post(&url)
            .header("content-type", content_type)
            .body(body)
            .send()
    };

    let res = send(br#"{"email": "a@example.com", "pass"#.to_vec(), "application/json")
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(error_code(res).await, "invalid_json");

    let res = send(
        br#"{"email":"a@example.com","password":"12345678","name":"A"}"#.to_vec(),
        "text/plain",
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(error_code(res).await, "invalid_content_type");

    let big = json!({"email": "a@example.com", "password": "12345678", "name": "x".repeat(70 * 1024)});
    let res = send(big.to_string().into_bytes(), "application/json").await.unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(error_code(res).await, "payload_too_large");

    assert_eq!(app.count_users().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_wrong_methods_get_the_envelope() {
    let app = TestApp::spawn().await;
    let res = app.client.get(app.url("/api/v1/nope")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(error_code(res).await, "not_found");

    let res = app.client.get(app.url("/definitely/not/here")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(error_code(res).await, "not_found");

    let res = app.client.delete(app.url("/api/v1/me")).send().await.unwrap();
    assert_eq!(res.status(), 405);
    assert!(res.headers().get("allow").is_some());
    assert_eq!(error_code(res).await, "method_not_allowed");

    let res = app.client.get(app.url("/api/v1/auth/login")).send().await.unwrap();
    assert_eq!(res.status(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_report_their_dependencies() {
    let app = TestApp::spawn().await;
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let res = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["checks"], json!({"postgres": "ok", "redis": "ok"}));

    // Redis pointed at a closed port: payg still serves, and says it is degraded.
    let app = TestApp::builder().env("REDIS_URL", "redis://127.0.0.1:1").spawn().await;
    let res = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["checks"]["redis"], "down");
    assert_eq!(body["checks"]["postgres"], "ok");

    // The database refusing connections: not ready, and the answer says which.
    let app = TestApp::spawn().await;
    let name = app.db.name.clone();
    let admin = || async {
        diesel_async::AsyncPgConnection::establish(&format!("{}/postgres", crate::helpers::PG_SERVER))
            .await
            .unwrap()
    };
    use diesel_async::{AsyncConnection, SimpleAsyncConnection};
    // The ALTER commits before any backend is ended: in one batch (one
    // implicit transaction) a connection opened between the two would still
    // be let in. A background job (the flusher, the webhook dispatcher) may
    // have opened one just before the ALTER, so the ending is repeated.
    let mut pg = admin().await;
    pg.batch_execute(&format!("ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false"))
        .await
        .unwrap();
    let terminate = format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'");
    let mut res = app.client.get(app.url("/readyz")).send().await.unwrap();
    for _ in 0..50 {
        if res.status() == 503 {
            break;
        }
        pg.batch_execute(&terminate).await.unwrap();
        // pg_terminate_backend only signals; give the backends a moment to go.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        res = app.client.get(app.url("/readyz")).send().await.unwrap();
    }
    assert_eq!(res.status(), 503);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["checks"]["postgres"], "down");
    assert!(body["error"]["message"].as_str().unwrap().contains("postgres"));
    pg.batch_execute(&format!("ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
}

// Found by schemathesis (scripts/fuzz.sh): serde accepts a struct written as
// an array of its fields, so `[null, null]` used to update a profile (200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_must_be_json_objects() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    for body in [json!([null, null]), json!(["New Name"]), json!("x"), json!(1)] {
        let res = app
            .client
            .patch(app.url("/api/v1/me"))
            .bearer_auth(&user.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{body}");
        assert_eq!(error_code(res).await, "validation_failed");
    }
    let res = app
        .post_json(
            "/api/v1/auth/register",
            &json!(["array@example.com", "password-123", "Array"]),
        )
        .await;
    assert_eq!(res.status(), 400);
    assert_eq!(app.count_users().await, 1, "nothing was created");
    let me = app.get_json("/api/v1/me", &user.token).await;
    assert_eq!(me["name"], "Test User", "nothing was changed");
}

// Found by schemathesis: an optional body that did not parse was ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_refuses_a_malformed_body_and_takes_none_or_null() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    let logout = |token: String, body: Option<&'static str>| {
        let mut req = app.client.post(app.url("/api/v1/auth/logout")).bearer_auth(token);
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        req.send()
    };
    for body in [r#"{"refresh_token": "x", "unknown": 1}"#, "[]", "{"] {
        let res = logout(user.token.clone(), Some(body)).await.unwrap();
        assert_eq!(res.status(), 400, "{body}");
    }
    assert_eq!(
        app.get_auth("/api/v1/me", &user.token).await.status(),
        200,
        "still logged in"
    );
    let res = logout(user.token.clone(), Some("null")).await.unwrap();
    assert_eq!(res.status(), 204);
    let other = app.token_for(&user.email).await;
    assert_eq!(logout(other, None).await.unwrap().status(), 204);
}

// Found by schemathesis: with both headers, the API key silently won.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_credentials_at_once_are_refused() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    let created = app
        .post_auth("/api/v1/api-keys", &user.token, &json!({"name": "k"}))
        .await;
    assert_eq!(created.status(), 201);
    let key = created.json::<serde_json::Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    for bearer in [user.token.as_str(), "not-a-token"] {
        let res = app
            .client
            .get(app.url("/api/v1/tools/uuid"))
            .bearer_auth(bearer)
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
        assert_eq!(error_code(res).await, "ambiguous_credentials");
    }
}

// actix extracts a handler's arguments together: before authentication ran
// first, a malformed body could be answered (400) ahead of a bad token (401)
// or a missing role (403).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_roles_are_checked_before_the_body() {
    let app = TestApp::spawn().await;
    let consumer = app.new_user().await;
    let bad_body = json!({"unit_price": "not a number", "tiers": "nope"});
    let prices = format!("/api/v1/admin/apis/{}/prices", api_id(&app.db, "tools-uuid").await);
    let res = app.post_auth(&prices, &consumer.token, &bad_body).await;
    assert_eq!(res.status(), 403);
    assert_eq!(error_code(res).await, "forbidden");
    let res = app.post_auth(&prices, "not-a-token", &bad_body).await;
    assert_eq!(res.status(), 401);
    let res = app
        .post_auth(
            "/api/v1/finance/invoices/00000000-0000-0000-0000-000000000000/payments",
            &consumer.token,
            &bad_body,
        )
        .await;
    assert_eq!(res.status(), 403);
    let res = app.patch_raw("/api/v1/me", "not-a-token", "{").await;
    assert_eq!(res.status(), 401);
    // With the role, the body is checked as before.
    let admin = app.user_with_role("admin").await;
    let res = app.post_auth(&prices, &admin.token, &bad_body).await;
    assert_eq!(res.status(), 400);
}

// Found by schemathesis: a NUL in the finance invoice list's `user` filter
// reached PostgreSQL, which refused it, and the client got a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_a_filter_is_a_400_not_a_500() {
    let app = TestApp::spawn().await;
    let finance = app.user_with_role("finance").await;
    for user in ["a%00b@example.com", "%C3%9C%00x", "not-an-email"] {
        let res = app
            .get_auth(&format!("/api/v1/finance/invoices?user={user}"), &finance.token)
            .await;
        assert_eq!(res.status(), 400, "{user}");
        assert_eq!(error_code(res).await, "validation_failed");
    }
    let res = app
        .get_auth(
            &format!("/api/v1/finance/invoices?user={}", finance.email),
            &finance.token,
        )
        .await;
    assert_eq!(res.status(), 200);
}

// Review finding: with two headers of one kind, the first used to win.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_header_sent_twice_is_refused() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    let other = app.new_user().await;
    let res = app
        .client
        .get(app.url("/api/v1/me"))
        .header("authorization", format!("Bearer {}", user.token))
        .header("authorization", format!("Bearer {}", other.token))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(error_code(res).await, "ambiguous_credentials");
}

// Review finding: parsing through a JSON value would let the last of two
// equal keys win silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_sent_twice_is_refused() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    let res = app
        .patch_raw("/api/v1/me", &user.token, r#"{"name": "First", "name": "Second"}"#)
        .await;
    assert_eq!(res.status(), 400);
    let me = app.get_json("/api/v1/me", &user.token).await;
    assert_eq!(me["name"], "Test User");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_never_cached_and_no_answer_is_sniffed() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    let login = app.login(&user.email, crate::helpers::PASSWORD).await;
    assert_eq!(login.status(), 200);
    assert_eq!(login.headers()["cache-control"], "no-store");
    assert_eq!(login.headers()["x-content-type-options"], "nosniff");
    let tokens: serde_json::Value = login.json().await.unwrap();
    let refreshed = app
        .post_json(
            "/api/v1/auth/refresh",
            &json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    assert_eq!(refreshed.status(), 200);
    assert_eq!(refreshed.headers()["cache-control"], "no-store");
    let key = app
        .post_auth("/api/v1/api-keys", &user.token, &json!({"name": "ci"}))
        .await;
    assert_eq!(key.status(), 201);
    assert_eq!(key.headers()["cache-control"], "no-store");
    for path in ["/healthz", "/api/v1/no-such-route", "/api/v1/openapi.json"] {
        let res = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(res.headers()["x-content-type-options"], "nosniff", "{path}");
    }
}
