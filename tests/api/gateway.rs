//! The gateway against a real upstream HTTP server on port 0: what crosses,
//! streaming both ways, failures, path escapes, routing, and exact counts.

use std::collections::HashMap;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::helpers::{Registered, TestApp, TestDb, api_id, error_code, usage_of};
use crate::upstream::{Upstream, raw, refused_address};

fn this_period() -> String {
    payg::domain::Period::containing(chrono::Utc::now(), chrono_tz::Tz::UTC)
        .first_day()
        .to_string()
}

/// Creates a gateway API as an admin and returns the answer.
async fn gateway_api(app: &TestApp, admin: &Registered, body: Value) -> Value {
    let res = app.post_auth("/api/v1/admin/apis", &admin.token, &body).await;
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap_or_default());
    res.json().await.unwrap()
}

async fn weather(app: &TestApp, admin: &Registered, up: &Upstream) -> Value {
    gateway_api(
        app,
        admin,
        json!({"slug": "weather", "method": "*", "route": "/weather", "name": "Weather",
            "upstream": {"url": up.url("/v2")}}),
    )
    .await
}

fn hmac_hex(secret: &str, message: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// `t` and every `v1` of a `Payg-Signature` header.
fn parse_signature(header: &str) -> (i64, Vec<String>) {
    let mut t = 0;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse().unwrap(),
            Some(("v1", v)) => v1.push(v.to_owned()),
            _ => panic!("unexpected signature part {part:?}"),
        }
    }
    (t, v1)
}

async fn metric(app: &TestApp, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = app.metrics_text().await;
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            // A histogram: how many it observed (its +Inf bucket).
            prometheus_parse::Value::Histogram(ref buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_path_query_body_and_headers_are_forwarded_and_payg_signs_who_is_calling() {
    let up = Upstream::start().await;
    let app = TestApp::spawn().await;
    let admin = app.user_with_role("admin").await;
    let created = weather(&app, &admin, &up).await;
    let secret = created["upstream"]["signing_secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("pgs_"), "{created}");
    let user = app.new_user().await;

    let res = app
        .client
        .post(app.url("/weather/today/x%20y?city=Oslo&units=metric"))
        .bearer_auth(&user.token)
        .header("X-Payg-User-Id", "someone-else")
        .header("x-payg-user-id", "again")
        .header("X-PAYG-API", "free-api")
        .header("x_payg_user_id", "underscored")
        .header("payg_signature", "t=1,v1=00")
        .header("x_keep_me", "1")
        .header("Payg-Signature", "t=1,v1=00")
        .header("X-Forwarded-For", "6.6.6.6")
        .header("cookie", "payg_session=s; theme=dark")
        .header("x-custom", "kept")
        .header("content-type", "text/plain")
        .body("hello upstream")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-upstream"], "yes");
    assert!(
        res.headers().get("x-hop").is_none(),
        "a header named by Connection came back"
    );
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let echo: Value = res.json().await.unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/v2/today/x%20y?city=Oslo&units=metric");
    assert_eq!(echo["body"], "hello upstream");

    let seen = up.last();
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.headers_named("x-payg-user-id"), [user.id.to_string()]);
    // Underscored names do cross (so this is not the client dropping
    // them); payg's, spelt with '_', do not.
    assert_eq!(seen.header("x_keep_me"), Some("1"));
    assert!(
        seen.headers
            .iter()
            .filter(|(n, _)| n.contains('_'))
            .all(|(n, _)| n == "x_keep_me"),
        "a payg header spelt with '_' reached the upstream: {:?}",
        seen.headers
    );
    assert_eq!(seen.headers_named("x-payg-api"), ["weather"]);
    assert_eq!(seen.header("x-payg-request-id"), Some(request_id.as_str()));
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "an untrusted chain is dropped"
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(app.address.trim_start_matches("http://"))
    );
    assert_eq!(seen.header("host"), Some(up.addr.to_string().as_str()));
    assert_eq!(seen.header("cookie"), Some("theme=dark"));
    assert_eq!(seen.header("x-custom"), Some("kept"));
    assert_eq!(seen.header("content-length"), Some("14"));

    let signatures = seen.headers_named("payg-signature");
    assert_eq!(signatures.len(), 1, "{signatures:?}");
    let (t, v1) = parse_signature(signatures[0]);
    assert!((chrono::Utc::now().timestamp() - t).abs() < 30);
    let message = format!("{t}\nPOST\n/v2/today/x%20y?city=Oslo&units=metric\n{}", user.id);
    assert_eq!(v1, [hmac_hex(&secret, &message)], "verifies with the API's secret");
    assert_ne!(v1[0], hmac_hex("pgs_another", &message), "and not with another");

    // An API key in X-API-Key works the same, and never reaches the upstream.
    let key: Value = app
        .post_auth("/api/v1/api-keys", &user.token, &json!({"name": "robot"}))
        .await
        .json()
        .await
        .unwrap();
    let res = app
        .client
        .get(app.url("/weather"))
        .header("x-api-key", key["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let echo: Value = res.json().await.unwrap();
    assert_eq!(echo["path"], "/v2", "the prefix itself is the base path");
    assert_eq!(up.last().header("x-api-key"), None);

    // Without credentials: 401, and the upstream never hears of it.
    let before = up.seen().len();
    let res = app.client.get(app.url("/weather/x")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(up.seen().len(), before);

    app.flush_meter().await;
    assert_eq!(usage_of(&app.db, user.id, "weather", &this_period()).await, (2, 0));
    // The public catalog lists it with its price, never its upstream.
    let res = app.client.get(app.url("/api/v1/apis")).send().await.unwrap();
    let text = res.text().await.unwrap();
    assert!(text.contains("\"weather\""), "{text}");
    assert!(!text.contains(&up.addr.to_string()) && !text.contains("pgs_"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_and_large_downloads_stream_through_as_the_upstream_sends_them() {
    let up = Upstream::start().await;
    let app = TestApp::spawn().await;
    let admin = app.user_with_role("admin").await;
    weather(&app, &admin, &up).await;
    let user = app.new_user().await;

    let mut res = app
        .client
        .get(app.url("/weather/sse"))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    // The first event arrives while the upstream still holds the second.
    let first = tokio::time::timeout(Duration::from_secs(5), res.chunk())
        .await
        .expect("the first event arrives before the upstream finishes")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"data: 1\n\n");
    up.open_gate();
    let rest = res.text().await.unwrap();
    assert_eq!(rest, "data: 2\n\n");

    // 64 MiB: the first bytes arrive before the upstream sent the rest.
    let mut res = app
        .client
        .get(app.url("/weather/big?mb=64"))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.content_length(), Some(64 * 1024 * 1024));
    let mut received = tokio::time::timeout(Duration::from_secs(5), res.chunk())
        .await
        .expect("the download starts before the upstream has sent it all")
        .unwrap()
        .unwrap()
        .len();
    up.open_gate();
    while let Some(chunk) = res.chunk().await.unwrap() {
        received += chunk.len();
    }
    assert_eq!(received, 64 * 1024 * 1024);

    app.flush_meter().await;
    assert_eq!(usage_of(&app.db, user.id, "weather", &this_period()).await, (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_slow_and_failing_upstreams_are_502_504_and_passed_through_counted_failed_never_billed() {
    let up = Upstream::start().await;
    let app = TestApp::spawn().await;
    let admin = app.user_with_role("admin").await;
    weather(&app, &admin, &up).await;
    let down = refused_address().await;
    gateway_api(
        &app,
        &admin,
        json!({"slug": "down", "method": "GET", "route": "/down", "name": "Down",
            "upstream": {"url": format!("http://{down}")}}),
    )
    .await;
    gateway_api(
        &app,
        &admin,
        json!({"slug": "slowpoke", "method": "GET", "route": "/slowpoke", "name": "Slow",
            "upstream": {"url": up.url(""), "timeout_ms": 300}}),
    )
    .await;
    let user = app.new_user().await;

    let res = app.get_auth("/down/x", &user.token).await;
    assert_eq!(res.status(), 502);
    assert_eq!(error_code(res).await, "upstream_unavailable");
    let res = app.get_auth("/slowpoke/slow?ms=3000", &user.token).await;
    assert_eq!(res.status(), 504);
    assert_eq!(error_code(res).await, "upstream_timeout");
    for code in [503, 404] {
        let res = app.get_auth(&format!("/weather/status/{code}"), &user.token).await;
        assert_eq!(res.status(), code);
        assert_eq!(
            res.headers()["content-type"],
            "text/plain",
            "the upstream's answer, not an envelope"
        );
        assert_eq!(res.text().await.unwrap(), format!("upstream says {code}"));
    }
    let res = app.get_auth("/weather/ok", &user.token).await;
    assert_eq!(res.status(), 200);

    app.flush_meter().await;
    let period = this_period();
    assert_eq!(usage_of(&app.db, user.id, "down", &period).await, (1, 1));
    assert_eq!(usage_of(&app.db, user.id, "slowpoke", &period).await, (1, 1));
    assert_eq!(usage_of(&app.db, user.id, "weather", &period).await, (3, 2));
    let bill = app.get_json("/api/v1/billing/current", &user.token).await;
    let total: rust_decimal::Decimal = bill["total"].as_str().unwrap().parse().unwrap();
    assert!(
        total.is_zero(),
        "one billable call at 0.001 rounds to 0; failures add nothing: {bill}"
    );
    let lines = bill["lines"].as_array().unwrap();
    let billable: i64 = lines.iter().map(|l| l["billable_calls"].as_i64().unwrap()).sum();
    assert_eq!(billable, 1, "{bill}");

    assert!(metric(&app, "payg_upstream_connect_errors_total", &[("api", "down")]).await >= 1.0);
    assert_eq!(
        metric(&app, "payg_upstream_timeouts_total", &[("api", "slowpoke")]).await,
        1.0
    );
    let weather_5xx = [("api", "weather"), ("status", "5xx")];
    assert_eq!(metric(&app, "payg_upstream_responses_total", &weather_5xx).await, 1.0);
    let weather_2xx = [("api", "weather"), ("status", "2xx")];
    assert_eq!(metric(&app, "payg_upstream_responses_total", &weather_2xx).await, 1.0);
    let latency = metric(&app, "payg_upstream_duration_seconds", &[("api", "weather")]).await;
    assert_eq!(latency, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_that_could_escape_the_base_path_are_refused_and_reach_nothing() {
    let up = Upstream::start().await;
    let app = TestApp::spawn().await;
    let admin = app.user_with_role("admin").await;
    weather(&app, &admin, &up).await;
    let user = app.new_user().await;
    for path in [
        "/weather/../admin",
        "/weather/%2e%2e/admin",
        "/weather/.%2E/admin",
        "/weather/a%2Fb",
        "/weather/a%5cb",
        "/weather/./x",
        "/weather/%zz",
        "/weather/..;/admin",
    ] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            user.token
        );
        let answer = raw(&app.address, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains("invalid_path"), "{path}: {answer}");
    }
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    app.flush_meter().await;
    assert_eq!(usage_of(&app.db, user.id, "weather", &this_period()).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_route_cannot_shadow_what_payg_serves_and_the_longest_prefix_then_the_exact_method_wins() {
    let up = Upstream::start().await;
    let app = TestApp::spawn().await;
    let admin = app.user_with_role("admin").await;
    for route in [
        "/api/v1/me",
        "/api",
        "/healthz",
        "/metrics",
        "/console/x",
        "/",
        "/Weather",
        "/a/../b",
    ] {
        let res = app
            .post_auth(
                "/api/v1/admin/apis",
                &admin.token,
                &json!({"slug": "shadow", "method": "*", "route": route, "name": "Shadow",
                    "upstream": {"url": up.url("")}}),
            )
            .await;
        assert_eq!(res.status(), 400, "{route}");
    }
    for upstream in [
        json!({"url": "ftp://example.com"}),
        json!({"url": "http://user:pw@example.com"}),
        json!({"url": "http://example.com/#x"}),
        json!({"url": up.url(""), "timeout_ms": 0}),
        json!({"url": up.url(""), "max_body_bytes": -1}),
    ] {
        let res = app
            .post_auth(
                "/api/v1/admin/apis",
                &admin.token,
                &json!({"slug": "bad-up", "method": "GET", "route": "/bad", "name": "Bad", "upstream": upstream}),
            )
            .await;
        assert_eq!(res.status(), 400, "{upstream}");
    }
    // `*` is only for gateway APIs.
    let res = app
        .post_auth(
            "/api/v1/admin/apis",
            &admin.token,
            &json!({"slug": "any", "method": "*", "route": "/api/v1/tools/any", "name": "Any"}),
        )
        .await;
    assert_eq!(res.status(), 400);
    let user = app.new_user().await;
    assert_eq!(app.get_auth("/api/v1/me", &user.token).await.status(), 200);

    for (slug, method, route, base) in [
        ("maps", "*", "/maps", "/a"),
        ("maps-v2", "GET", "/maps/v2", "/b"),
        ("geo-any", "*", "/geo", "/any"),
        ("geo-get", "GET", "/geo", "/get"),
    ] {
        gateway_api(
            &app,
            &admin,
            json!({"slug": slug, "method": method, "route": route, "name": slug,
                "upstream": {"url": up.url(base)}}),
        )
        .await;
    }
    let path_of = |res: reqwest::Response| async move {
        assert_eq!(res.status(), 200);
        res.json::<Value>().await.unwrap()["path"].as_str().unwrap().to_owned()
    };
    assert_eq!(
        path_of(app.get_auth("/maps/v2/tiles", &user.token).await).await,
        "/b/tiles"
    );
    assert_eq!(path_of(app.get_auth("/maps/v3", &user.token).await).await, "/a/v3");
    assert_eq!(path_of(app.get_auth("/maps/v2x", &user.token).await).await, "/a/v2x");
    assert_eq!(path_of(app.get_auth("/geo/x", &user.token).await).await, "/get/x");
    let post = app.post_auth("/geo/x", &user.token, &json!({})).await;
    assert_eq!(path_of(post).await, "/any/x");
    // A HEAD may take a GET entry: maps-v2, the longest prefix.
    let head = app
        .client
        .head(app.url("/maps/v2/t"))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(up.last().path, "/b/t");
    // A POST to /maps/v2 is not maps-v2's (GET only): /maps takes it.
    let post = app.post_auth("/maps/v2/t", &user.token, &json!({})).await;
    assert_eq!(path_of(post).await, "/a/v2/t");
    // No gateway API: 404, whoever asks.
    assert_eq!(app.client.get(app.url("/nowhere")).send().await.unwrap().status(), 404);

    app.flush_meter().await;
    let period = this_period();
    assert_eq!(usage_of(&app.db, user.id, "maps", &period).await, (3, 0));
    assert_eq!(usage_of(&app.db, user.id, "maps-v2", &period).await, (2, 0));
    assert_eq!(usage_of(&app.db, user.id, "geo-get", &period).await, (1, 0));
    assert_eq!(usage_of(&app.db, user.id, "geo-any", &period).await, (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_expect_continue_chunked_uploads_body_limits_and_upgrades() {
    let up = Upstream::start().await;
    let app = TestApp::spawn().await;
    let admin = app.user_with_role("admin").await;
    gateway_api(
        &app,
        &admin,
        json!({"slug": "weather", "method": "*", "route": "/weather", "name": "Weather",
            "upstream": {"url": up.url("/v2"), "max_body_bytes": 64}}),
    )
    .await;
    let user = app.new_user().await;

    let head = app
        .client
        .head(app.url("/weather/status/200"))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    let length = "upstream says 200".len().to_string();
    assert_eq!(
        head.headers()["content-length"],
        length.as_str(),
        "HEAD keeps the length a GET has"
    );
    assert_eq!(up.last().method, "HEAD");

    let chunked = format!(
        "POST /weather/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Transfer-Encoding: chunked\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n\
         5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        user.token
    );
    let answer = raw(&app.address, chunked.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 100 Continue"), "{answer}");
    assert!(answer.contains("HTTP/1.1 200 OK"), "{answer}");
    let seen = up.last();
    assert_eq!(seen.body, b"hello world");
    assert_eq!(seen.header("expect"), None, "payg answered the 100-continue itself");

    // Over max_body_bytes: 413, by Content-Length or while streaming.
    let before = up.seen().len();
    let res = app
        .client
        .post(app.url("/weather/upload"))
        .bearer_auth(&user.token)
        .body(vec![b'x'; 65])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(error_code(res).await, "payload_too_large");
    assert_eq!(up.seen().len(), before, "refused before it was forwarded");
    let big_chunk = format!(
        "POST /weather/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n41\r\n{}\r\n0\r\n\r\n",
        user.token,
        "y".repeat(65)
    );
    let answer = raw(&app.address, big_chunk.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    let upgrade = format!(
        "GET /weather/socket HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        user.token
    );
    let answer = raw(&app.address, upgrade.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 501"), "{answer}");
    assert!(answer.contains("upgrade_not_supported"), "{answer}");
    // An h2c offer (curl --http2) is optional: served over HTTP/1.1, not passed on.
    let h2c = format!(
        "GET /weather/h2c HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Connection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
        user.token
    );
    let answer = raw(&app.address, h2c.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = up.last();
    assert_eq!((seen.header("upgrade"), seen.header("http2-settings")), (None, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_signs_beside_the_new_one_and_preserve_host_sends_the_clients_host() {
    let up = Upstream::start().await;
    let app = TestApp::spawn().await;
    let admin = app.user_with_role("admin").await;
    let created = weather(&app, &admin, &up).await;
    let id = created["id"].as_i64().unwrap();
    let old = created["upstream"]["signing_secret"].as_str().unwrap().to_owned();
    let rotated: Value = app
        .post_auth(
            &format!("/api/v1/admin/apis/{id}/signing-secret"),
            &admin.token,
            &json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    let new = rotated["upstream"]["signing_secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    let user = app.new_user().await;
    assert_eq!(app.get_auth("/weather/q?a=1", &user.token).await.status(), 200);
    let seen = up.last();
    assert_eq!(seen.path, "/v2/q?a=1");
    let (t, v1) = parse_signature(seen.header("payg-signature").unwrap());
    let message = format!("{t}\nGET\n/v2/q?a=1\n{}", user.id);
    assert_eq!(v1, [hmac_hex(&new, &message), hmac_hex(&old, &message)]);
    // A built-in API has nothing to sign: 409, not a secret.
    let uuid_api = crate::helpers::api_id(&app.db, "tools-uuid").await;
    let res = app
        .post_auth(
            &format!("/api/v1/admin/apis/{uuid_api}/signing-secret"),
            &admin.token,
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), 409);
    assert_eq!(error_code(res).await, "no_upstream");
    // The admin list shows the upstream, never a secret.
    let list = app.get_json("/api/v1/admin/apis", &admin.token).await.to_string();
    assert!(
        list.contains("previous_secret_expires_at") && !list.contains("pgs_"),
        "{list}"
    );

    let res = app
        .client
        .patch(app.url(&format!("/api/v1/admin/apis/{id}")))
        .bearer_auth(&admin.token)
        .json(&json!({"upstream": {"preserve_host": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let patched: Value = res.json().await.unwrap();
    assert_eq!(
        patched["upstream"]["url"],
        up.url("/v2"),
        "PATCH changes only what it is given"
    );
    assert_eq!(patched["upstream"]["preserve_host"], true);
    assert!(patched["upstream"].get("signing_secret").is_none());
    assert_eq!(app.get_auth("/weather", &user.token).await.status(), 200);
    assert_eq!(
        up.last().header("host"),
        Some(app.address.trim_start_matches("http://"))
    );
}

/// payg lets a forwarded call run to its response head even when the
/// client has gone: the upstream did the work, and payg cannot tell a
/// client that hung up from one whose network lost the answer. So the call
/// is counted like any other once the upstream answers (failed if that
/// answer is ≥ 400); one the upstream never answers is a failed 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_before_the_upstream_answers_is_counted_when_the_upstream_answers() {
    let up = Upstream::start().await;
    let app = TestApp::spawn().await;
    let admin = app.user_with_role("admin").await;
    weather(&app, &admin, &up).await;
    let user = app.new_user().await;
    {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(app.address.trim_start_matches("http://"))
            .await
            .unwrap();
        let request = format!(
            "GET /weather/slow?ms=1500 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            user.token
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(up.seen().len(), 1, "the upstream was asked");
    }
    // Not yet answered: nothing counted.
    app.flush_meter().await;
    assert_eq!(usage_of(&app.db, user.id, "weather", &this_period()).await, (0, 0));
    // Well past the upstream's answer.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    app.flush_meter().await;
    assert_eq!(usage_of(&app.db, user.id, "weather", &this_period()).await, (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_through_the_gateway_across_two_instances_and_catalog_changes_reach_both() {
    let up = Upstream::start().await;
    let db = TestDb::new().await;
    let a = TestApp::builder().database(db.clone()).spawn().await;
    let b = TestApp::builder().database(db.clone()).spawn().await;
    let admin = a.user_with_role("admin").await;
    let created = weather(&a, &admin, &up).await;
    let id = created["id"].as_i64().unwrap();
    let users = [a.new_user().await, a.new_user().await, a.new_user().await];

    // B learns of the new API through its catalog refresh (about a second).
    let started = std::time::Instant::now();
    loop {
        let status = b.get_auth("/weather/hello", &users[0].token).await.status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 404);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "instance B never saw the new API"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let learned_after = started.elapsed();
    assert!(learned_after < Duration::from_secs(3), "{learned_after:?}");

    // 32 concurrent clients, each alternating instances and users.
    let bases = [a.address.clone(), b.address.clone()];
    let tokens: Vec<String> = users.iter().map(|u| u.token.clone()).collect();
    let handles: Vec<_> = (0..32)
        .map(|t| {
            let client = a.client.clone();
            let bases = bases.clone();
            let tokens = tokens.clone();
            tokio::spawn(async move {
                let mut ok: HashMap<usize, i64> = HashMap::new();
                for i in 0..25 {
                    let user = (t + i) % tokens.len();
                    let res = client
                        .get(format!("{}/weather/n/{i}?t={t}", bases[(t + i) % 2]))
                        .bearer_auth(&tokens[user])
                        .send()
                        .await;
                    if matches!(&res, Ok(r) if r.status() == 200) {
                        *ok.entry(user).or_default() += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let mut tally: HashMap<usize, i64> = HashMap::new();
    for h in handles {
        for (user, n) in h.await.unwrap() {
            *tally.entry(user).or_default() += n;
        }
    }
    assert_eq!(tally.values().sum::<i64>(), 32 * 25, "every call was served");
    a.flush_meter().await;
    b.flush_meter().await;
    let period = this_period();
    for (i, user) in users.iter().enumerate() {
        let first = i64::from(i == 0); // the probe that found the API on B
        let expected = tally.get(&i).copied().unwrap_or(0) + first;
        assert_eq!(
            usage_of(&db, user.id, "weather", &period).await,
            (expected, 0),
            "user {i}"
        );
    }
    assert_eq!(up.seen().len(), 32 * 25 + 1);

    // Switched off through A: both instances answer 404 within about a second.
    let res = a
        .client
        .patch(a.url(&format!("/api/v1/admin/apis/{id}")))
        .bearer_auth(&admin.token)
        .json(&json!({"active": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(a.get_auth("/weather/x", &users[0].token).await.status(), 404);
    let started = std::time::Instant::now();
    while b.get_auth("/weather/x", &users[0].token).await.status() != 404 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "instance B kept serving a switched-off API"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn payg_cli(db_url: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_payg"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", db_url)
        .env("JWT_SECRET", crate::helpers::TEST_JWT_SECRET)
        .env("RUST_LOG", "warn");
    cmd
}

fn run_cli(db_url: &str, args: &[&str]) -> (bool, String, String) {
    let out = payg_cli(db_url).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_apply_puts_an_api_behind_payg_and_a_second_apply_changes_nothing() {
    let up = Upstream::start().await;
    let app = TestApp::spawn().await;
    let dir = std::env::temp_dir().join(format!("payg-catalog-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("catalog.toml");
    let path = file.to_str().unwrap();
    let catalog = |timeout: u32, price: &str| {
        format!(
            r#"
[[api]]
slug = "weather"
name = "Weather"
description = "Forecasts"
method = "GET"
route = "/weather"

[api.upstream]
url = "{}"
timeout_ms = {timeout}

[api.price]
unit_price = "{price}"
free_calls = 1
"#,
            up.url("/v2")
        )
    };
    std::fs::write(&file, catalog(30000, "0.50")).unwrap();
    let (ok, out, err) = run_cli(&app.db.url, &["catalog", "apply", path]);
    assert!(ok, "{err}");
    assert!(out.contains("created weather"), "{out}");
    assert!(out.contains("weather: signing secret pgs_"), "{out}");
    let (ok, out, _) = run_cli(&app.db.url, &["catalog", "apply", path]);
    assert!(ok);
    assert!(
        out.starts_with("no changes"),
        "the second apply changed something: {out}"
    );

    // The running server picks it up within about a second, and bills it.
    let user = app.new_user().await;
    let started = std::time::Instant::now();
    while app.get_auth("/weather/today", &user.token).await.status() != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the server never saw the applied API"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..2 {
        assert_eq!(app.get_auth("/weather/today", &user.token).await.status(), 200);
    }
    app.flush_meter().await;
    let bill = app.get_json("/api/v1/billing/current", &user.token).await;
    let line = bill["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["slug"] == "weather")
        .cloned()
        .unwrap_or_else(|| panic!("no weather line: {bill}"));
    assert_eq!(line["calls"], 3);
    assert_eq!(line["charged_calls"], 2, "one free call: {line}");
    assert_eq!(line["amount"], "1.00", "{line}");

    // A changed timeout and price: applied once, then nothing again. The
    // price starts 2 s after the apply; calls made before it (still in the
    // meter's buffer) keep the old price.
    for _ in 0..2 {
        assert_eq!(app.get_auth("/weather/today", &user.token).await.status(), 200);
    }
    std::fs::write(&file, catalog(5000, "0.75")).unwrap();
    let asked = chrono::Utc::now();
    let (ok, out, err) = run_cli(&app.db.url, &["catalog", "apply", path]);
    assert!(ok, "{err}");
    assert!(out.contains("updated weather: upstream"), "{out}");
    let from = out
        .lines()
        .find_map(|l| l.strip_prefix("priced weather from "))
        .unwrap_or_else(|| panic!("no price line: {out}"));
    let from = chrono::DateTime::parse_from_rfc3339(from.trim()).unwrap();
    assert!(
        from >= asked + chrono::TimeDelta::seconds(2) && from <= chrono::Utc::now() + chrono::TimeDelta::seconds(3),
        "{from} is not 2 s after the apply"
    );
    app.flush_meter().await;
    let bill = app.get_json("/api/v1/billing/current", &user.token).await;
    let weather: Vec<&Value> = bill["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["slug"] == "weather")
        .collect();
    assert_eq!(weather.len(), 1, "{bill}");
    assert_eq!(
        (&weather[0]["calls"], &weather[0]["amount"]),
        (&json!(5), &json!("2.00")),
        "{bill}"
    );
    let weather_id = api_id(&app.db, "weather").await;
    let admin = app.user_with_role("admin").await;
    let prices = app
        .get_json(&format!("/api/v1/admin/apis/{weather_id}/prices"), &admin.token)
        .await;
    assert_eq!(prices["prices"].as_array().map(Vec::len), Some(2), "{prices}");
    assert!(!out.contains("pgs_"), "no new secret for an existing upstream: {out}");
    let (_, out, _) = run_cli(&app.db.url, &["catalog", "apply", path]);
    assert!(out.starts_with("no changes"), "{out}");

    // Export: the same format, never a secret; applying it changes nothing.
    let (ok, exported, err) = run_cli(&app.db.url, &["catalog", "export"]);
    assert!(ok, "{err}");
    assert!(
        exported.contains("slug = \"weather\"") && exported.contains("timeout_ms = 5000"),
        "{exported}"
    );
    assert!(
        exported.contains("slug = \"tools-uuid\""),
        "built-in APIs are exported too: {exported}"
    );
    assert!(!exported.contains("pgs_") && !exported.contains("secret"), "{exported}");
    let exported_file = dir.join("exported.toml");
    std::fs::write(&exported_file, &exported).unwrap();
    let (ok, out, err) = run_cli(&app.db.url, &["catalog", "apply", exported_file.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.starts_with("no changes"), "{out}");

    // An entry without a price leaves the API's prices as they are.
    let unpriced = catalog(5000, "0.75").replace("[api.price]\nunit_price = \"0.75\"\nfree_calls = 1\n", "");
    assert!(!unpriced.contains("api.price"), "{unpriced}");
    std::fs::write(&file, unpriced).unwrap();
    let (ok, out, err) = run_cli(&app.db.url, &["catalog", "apply", path]);
    assert!(ok, "{err}");
    assert!(out.starts_with("no changes"), "{out}");
    let unchanged = app
        .get_json(&format!("/api/v1/admin/apis/{weather_id}/prices"), &admin.token)
        .await;
    let versions = |v: &Value| -> Vec<(Value, Value, Value)> {
        v["prices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["id"].clone(), p["effective_from"].clone(), p["unit_price"].clone()))
            .collect()
    };
    assert_eq!(versions(&unchanged), versions(&prices));

    // A bad entry changes nothing, the good one beside it included.
    let bad = format!(
        "{}\n[[api]]\nslug = \"shadow\"\nname = \"Shadow\"\nmethod = \"*\"\nroute = \"/api/v1/me\"\n\
         [api.upstream]\nurl = \"{}\"\n",
        catalog(30000, "9.99"),
        up.url("")
    );
    std::fs::write(&file, bad).unwrap();
    let (ok, _, err) = run_cli(&app.db.url, &["catalog", "apply", path]);
    assert!(!ok);
    assert!(err.contains("shadow") && err.contains("/api"), "{err}");
    let (_, after, _) = run_cli(&app.db.url, &["catalog", "export"]);
    assert_eq!(after, exported, "a failed apply left the catalog as it was");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_are_reached_through_rustls_trusting_a_private_ca_file() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let up = Upstream::start_tls(certified.cert.der().clone(), certified.signing_key.serialize_der()).await;
    let dir = std::env::temp_dir().join(format!("payg-ca-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, certified.cert.pem()).unwrap();
    let url = format!("https://localhost:{}/v2", up.addr.port());

    let trusting = TestApp::builder()
        .env("PAYG_UPSTREAM_CA_FILE", ca.to_str().unwrap())
        .spawn()
        .await;
    let admin = trusting.user_with_role("admin").await;
    let body = json!({"slug": "secure", "method": "GET", "route": "/secure", "name": "Secure",
        "upstream": {"url": url}});
    gateway_api(&trusting, &admin, body.clone()).await;
    let user = trusting.new_user().await;
    let res = trusting.get_auth("/secure/x?y=1", &user.token).await;
    assert_eq!(res.status(), 200);
    let echo: Value = res.json().await.unwrap();
    assert_eq!(echo["path"], "/v2/x?y=1");
    assert_eq!(
        up.last().header("host"),
        Some(format!("localhost:{}", up.addr.port()).as_str())
    );

    // Without the CA file, the private certificate is not trusted: 502.
    let plain = TestApp::spawn().await;
    let admin = plain.user_with_role("admin").await;
    gateway_api(&plain, &admin, body).await;
    let user = plain.new_user().await;
    let res = plain.get_auth("/secure/x", &user.token).await;
    assert_eq!(res.status(), 502);
    assert_eq!(error_code(res).await, "upstream_unavailable");
    assert_eq!(up.seen().len(), 1, "the untrusted handshake never became a request");
    let _ = std::fs::remove_dir_all(&dir);
}
