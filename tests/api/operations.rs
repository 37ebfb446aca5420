//! Metrics, request ids and logs.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{PG_SERVER, TEST_JWT_SECRET, TestApp, TestDb};

async fn scrape(app: &TestApp) -> prometheus_parse::Scrape {
    let res = app
        .client
        .get(format!("{}/metrics", app.metrics_address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = res.text().await.unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text format")
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_by_exactly_the_calls_made() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    let before = scrape(&app).await;
    for _ in 0..7 {
        app.get_auth("/api/v1/tools/uuid", &user.token).await;
    }
    for _ in 0..3 {
        app.get_auth("/api/v1/tools/random?min=9&max=1", &user.token).await;
    }
    app.client.get(app.url("/api/v1/tools/uuid")).send().await.unwrap(); // 401: not metered
    app.flush_meter().await;
    let after = scrape(&app).await;
    let delta = |name: &str, labels: &[(&str, &str)]| value(&after, name, labels) - value(&before, name, labels);
    assert_eq!(delta("payg_metered_calls_total", &[("api", "tools-uuid")]), 7.0);
    assert_eq!(delta("payg_metered_calls_total", &[("api", "tools-random")]), 3.0);
    assert_eq!(
        delta(
            "payg_http_requests_total",
            &[("route", "/api/v1/tools/uuid"), ("method", "GET"), ("status", "2xx")]
        ),
        7.0
    );
    assert_eq!(
        delta(
            "payg_http_requests_total",
            &[("route", "/api/v1/tools/uuid"), ("method", "GET"), ("status", "4xx")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "payg_http_requests_total",
            &[("route", "/api/v1/tools/random"), ("status", "4xx")]
        ),
        3.0
    );
    assert!(delta("payg_meter_flushes_total", &[]) >= 1.0);
    assert_eq!(value(&after, "payg_meter_pending_calls", &[]), 0.0);
    assert!(value(&after, "payg_db_pool_connections", &[]) >= 1.0);
    for name in [
        "payg_http_request_duration_seconds_count",
        "payg_meter_flush_duration_seconds_count",
        "payg_redis_errors_total",
        "payg_rate_limit_refusals_total",
        "payg_invoices_issued_total",
        "payg_payments_recorded_total",
        "payg_db_pool_waiting",
        "payg_meter_flush_failures_total",
    ] {
        assert!(after.samples.iter().any(|s| s.metric == name), "{name} is exported");
    }
    // Metrics are not on the public listener.
    assert_eq!(app.client.get(app.url("/metrics")).send().await.unwrap().status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_cardinality_stays_fixed_for_a_thousand_distinct_paths() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    for i in 0..1000 {
        app.get_auth(&format!("/api/v1/tools/random/{i}"), &user.token).await;
        if i % 100 == 0 {
            app.get_auth(&format!("/no/such/route/{i}"), &user.token).await;
        }
    }
    let scrape = scrape(&app).await;
    let series: std::collections::HashSet<String> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "payg_http_requests_total")
        .map(|s| format!("{:?}", s.labels))
        .collect();
    assert!(
        series.len() <= 6,
        "one series per route pattern and status class: {series:?}"
    );
    for s in &scrape.samples {
        for (_, v) in s.labels.iter() {
            assert!(!v.contains("/random/5"), "no raw paths in labels: {v}");
            assert!(!v.contains('@'), "no emails in labels: {v}");
            assert!(!v.contains(&user.id.to_string()), "no ids in labels: {v}");
        }
    }
    assert_eq!(
        value(
            &scrape,
            "payg_http_requests_total",
            &[("route", "/api/v1/tools/random/:max")]
        ),
        1000.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_echoed_or_generated() {
    let app = TestApp::spawn().await;
    let res = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "trace-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-abc-123");
    let a = app.client.get(app.url("/healthz")).send().await.unwrap();
    let b = app.client.get(app.url("/nope")).send().await.unwrap();
    let (a, b) = (
        a.headers()["x-request-id"].to_str().unwrap().to_owned(),
        b.headers()["x-request-id"].to_str().unwrap().to_owned(),
    );
    assert!(
        !a.is_empty() && a != b,
        "generated ids are unique, errors carry one too"
    );
    // An id that could forge log lines is replaced.
    let res = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "evil\"id with spaces")
        .send()
        .await
        .unwrap();
    assert_ne!(res.headers()["x-request-id"], "evil\"id with spaces");
}

/// Runs the real binary with JSON logs, exercises every kind of secret it
/// handles, and reads the whole log back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs() {
    let db = TestDb::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_payg"))
        .args(["serve"])
        .env("DATABASE_URL", &db.url)
        .env("JWT_SECRET", TEST_JWT_SECRET)
        .env("PAYG_BIND", format!("127.0.0.1:{port}"))
        .env("PAYG_METRICS_BIND", "127.0.0.1:0")
        .env("PAYG_LOG_FORMAT", "json")
        .env("PAYG_WEBHOOK_SECRET", "whsec-never-logged-0123456789abcdef")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<_>>());
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let password = "s3cret-Password-never-logged";
    let email = "logged-user@example.com";
    let post = |path: &str, body: Value, token: Option<&str>| {
        let mut req = client.post(format!("{base}{path}")).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    post(
        "/api/v1/auth/register",
        json!({"email": email, "password": password, "name": "Log"}),
        None,
    )
    .await
    .unwrap();
    post(
        "/api/v1/auth/login",
        json!({"email": email, "password": "wrong-password-also-secret"}),
        None,
    )
    .await
    .unwrap();
    let login: Value = post(
        "/api/v1/auth/login",
        json!({"email": email, "password": password}),
        None,
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let token = login["access_token"].as_str().unwrap().to_owned();
    let refresh = login["refresh_token"].as_str().unwrap().to_owned();
    let key: Value = post("/api/v1/api-keys", json!({"name": "k"}), Some(&token))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = key["key"].as_str().unwrap().to_owned();
    client
        .get(format!("{base}/api/v1/tools/uuid"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    client
        .get(format!("{base}/api/v1/tools/uuid"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    client
        .get(format!("{base}/api/v1/tools/uuid"))
        .bearer_auth("payg_forged-key-secret")
        .send()
        .await
        .unwrap();
    let rotated: Value = post("/api/v1/auth/refresh", json!({"refresh_token": refresh}), None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    post(
        "/api/v1/auth/logout",
        json!({}),
        Some(rotated["access_token"].as_str().unwrap()),
    )
    .await
    .unwrap();
    post("/api/v1/webhooks/payments", json!({"id": "e"}), None)
        .await
        .unwrap();

    // SIGTERM: graceful shutdown, then read everything it printed.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful shutdown exits 0");
    let lines = reader.join().unwrap();
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    let log = format!("{}\n{stderr}", lines.join("\n"));
    assert!(
        lines.iter().any(|l| l.contains("\"request_id\"")),
        "JSON request lines were captured"
    );
    let mut per_route: HashMap<String, usize> = HashMap::new();
    for line in &lines {
        if let Ok(v) = serde_json::from_str::<Value>(line)
            && let Some(route) = v["route"].as_str()
        {
            *per_route.entry(route.to_owned()).or_default() += 1;
        }
    }
    assert!(per_route.contains_key("/api/v1/auth/login"), "{per_route:?}");
    for secret in [
        password,
        "wrong-password-also-secret",
        &token,
        &refresh,
        rotated["refresh_token"].as_str().unwrap(),
        &key,
        "payg_forged-key-secret",
        TEST_JWT_SECRET,
        "whsec-never-logged-0123456789abcdef",
        "$argon2id",
    ] {
        assert!(!log.contains(secret), "the log contains a secret: {secret}");
    }
    let _ = PG_SERVER;
}
