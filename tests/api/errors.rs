use serde_json::json;

use crate::helpers::{TestApp, error_code};

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
    admin()
        .await
        .batch_execute(&format!(
            "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}';"
        ))
        .await
        .unwrap();
    // pg_terminate_backend only signals; give the backends a moment to go.
    let mut res = app.client.get(app.url("/readyz")).send().await.unwrap();
    for _ in 0..20 {
        if res.status() == 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        res = app.client.get(app.url("/readyz")).send().await.unwrap();
    }
    assert_eq!(res.status(), 503);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["checks"]["postgres"], "down");
    assert!(body["error"]["message"].as_str().unwrap().contains("postgres"));
    admin()
        .await
        .batch_execute(&format!("ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
}
