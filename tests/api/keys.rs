//! API keys, refresh tokens, logout, rate limits and Redis outages.

use std::time::Duration;

use payg::auth::revocations::HEARING_BOUND;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    OwnRedis, PASSWORD, Registered, TestApp, TestDb, count, error_code, eventually, free_port, scalar_i64,
    statuses_of_concurrent, usage_of,
};

async fn create_key(app: &TestApp, user: &Registered, name: &str) -> Value {
    let res = app
        .post_auth("/api/v1/api-keys", &user.token, &json!({"name": name}))
        .await;
    assert_eq!(res.status(), 201);
    res.json().await.unwrap()
}

fn this_period() -> String {
    payg::domain::Period::containing(chrono::Utc::now(), chrono_tz::Tz::UTC)
        .first_day()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_is_shown_once_stored_hashed_and_meters_like_a_token() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    let created = create_key(&app, &user, "ci robot").await;
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("payg_") && key.len() == 48);
    assert!(key.starts_with(created["prefix"].as_str().unwrap()));

    let list: Value = app.get_json("/api/v1/api-keys", &user.token).await;
    assert_eq!(list["api_keys"].as_array().unwrap().len(), 1);
    let listed = list["api_keys"][0].to_string();
    assert!(!listed.contains(&key) && !listed.contains("hash"), "{listed}");
    assert_eq!(list["api_keys"][0]["name"], "ci robot");

    // At rest: only a keyed hash, nothing that contains the key.
    let stored = scalar_i64(
        &app.db,
        &format!(
            "SELECT count(*) AS n FROM api_keys WHERE key_hash = '{key}' OR key_hash LIKE '%{}%'",
            &key[5..]
        ),
    )
    .await;
    assert_eq!(stored, 0);
    let hashed = payg::auth::tokens::TokenHasher::new(app.state.config.api_key_secret.expose().as_bytes()).hash(&key);
    assert_eq!(
        scalar_i64(
            &app.db,
            &format!("SELECT count(*) AS n FROM api_keys WHERE key_hash = '{hashed}'")
        )
        .await,
        1
    );

    // Both header forms authenticate, and calls are metered under the key's user.
    let bearer = app
        .client
        .get(app.url("/api/v1/tools/uuid"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    let header = app
        .client
        .get(app.url("/api/v1/tools/uuid"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(header.status(), 200);
    // A key reads its user's own usage, cost and invoices …
    for path in ["/api/v1/usage", "/api/v1/billing/current", "/api/v1/invoices"] {
        let res = app
            .client
            .get(app.url(path))
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
    }
    // … and nothing else: keys, sessions and the profile need a session, so
    // a leaked key cannot mint a key, revoke itself or change the profile.
    let key_id = created["id"].as_str().unwrap().to_owned();
    let attempts = [
        app.client.get(app.url("/api/v1/me")),
        app.client
            .patch(app.url("/api/v1/me"))
            .json(&json!({"company": "Evil"})),
        app.client.get(app.url("/api/v1/api-keys")),
        app.client
            .post(app.url("/api/v1/api-keys"))
            .json(&json!({"name": "minted"})),
        app.client.delete(app.url(&format!("/api/v1/api-keys/{key_id}"))),
        app.client.post(app.url("/api/v1/auth/logout")),
    ];
    for attempt in attempts {
        let res = attempt.header("x-api-key", &key).send().await.unwrap();
        assert_eq!(res.status(), 401);
        assert_eq!(error_code(res).await, "access_token_required");
    }
    let keys: Value = app.get_json("/api/v1/api-keys", &user.token).await;
    assert_eq!(
        keys["api_keys"].as_array().unwrap().len(),
        1,
        "no key minted, none revoked"
    );
    let me: Value = app.get_json("/api/v1/me", &user.token).await;
    assert!(me["company"].is_null(), "the profile is unchanged");
    let wrong = app
        .client
        .get(app.url("/api/v1/tools/uuid"))
        .header("x-api-key", "payg_not-a-real-key")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    app.flush_meter().await;
    assert_eq!(usage_of(&app.db, user.id, "tools-uuid", &this_period()).await, (2, 0));

    // A key of a finance user cannot reach finance routes: those need a session.
    app.sql(&format!("UPDATE users SET role = 'finance' WHERE id = '{}'", user.id))
        .await;
    let res = app
        .client
        .get(app.url("/api/v1/finance/invoices"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(error_code(res).await, "access_token_required");
    assert_eq!(
        app.get_auth("/api/v1/finance/invoices", &user.token).await.status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_on_another_instance_within_a_second() {
    let db = TestDb::new().await;
    let a = TestApp::builder()
        .database(db.clone())
        .env("PAYG_AUTH_CACHE_MS", "60000")
        .spawn()
        .await;
    let b = TestApp::builder()
        .database(db.clone())
        .env("PAYG_AUTH_CACHE_MS", "60000")
        .spawn()
        .await;
    let user = a.new_user().await;
    let created = create_key(&a, &user, "k").await;
    let key = created["key"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    let call_b = || {
        b.client
            .get(b.url("/api/v1/tools/uuid"))
            .header("x-api-key", key)
            .send()
    };
    assert_eq!(
        call_b().await.unwrap().status(),
        200,
        "instance B now has the key cached"
    );

    let res = a
        .client
        .delete(a.url(&format!("/api/v1/api-keys/{id}")))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let on_a = a
        .client
        .get(a.url("/api/v1/tools/uuid"))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    assert_eq!(on_a.status(), 401, "refused at once where it was revoked");
    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert_eq!(
        call_b().await.unwrap().status(),
        401,
        "and within a second on every other instance"
    );
    let list: Value = a.get_json("/api/v1/api-keys", &user.token).await;
    assert_eq!(list["api_keys"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_key_is_not_found_and_keys_are_limited_to_25() {
    let app = TestApp::spawn().await;
    let alice = app.new_user().await;
    let bob = app.new_user().await;
    let created = create_key(&app, &alice, "mine").await;
    let id = created["id"].as_str().unwrap();
    let res = app
        .client
        .delete(app.url(&format!("/api/v1/api-keys/{id}")))
        .bearer_auth(&bob.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let bobs: Value = app.get_json("/api/v1/api-keys", &bob.token).await;
    assert_eq!(bobs["api_keys"], json!([]));
    for i in 1..25 {
        create_key(&app, &alice, &format!("k{i}")).await;
    }
    let res = app
        .post_auth("/api/v1/api-keys", &alice.token, &json!({"name": "one too many"}))
        .await;
    assert_eq!(res.status(), 409);
    assert_eq!(error_code(res).await, "too_many_keys");
    let res = app
        .post_auth("/api/v1/api-keys", &bob.token, &json!({"name": ""}))
        .await;
    assert_eq!(res.status(), 400);
}

async fn login_pair(app: &TestApp, email: &str) -> (String, String) {
    let body: Value = app.login(email, PASSWORD).await.json().await.unwrap();
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["refresh_token"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_and_a_reused_token_revokes_the_session() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    let (_, first) = login_pair(&app, &user.email).await;
    let res = app
        .post_json("/api/v1/auth/refresh", &json!({"refresh_token": first}))
        .await;
    assert_eq!(res.status(), 200);
    let rotated: Value = res.json().await.unwrap();
    let second = rotated["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    let access = rotated["access_token"].as_str().unwrap();
    assert_eq!(app.get_auth("/api/v1/me", access).await.status(), 200);
    // The session moves on: the second token is rotated too.
    let res = app
        .post_json("/api/v1/auth/refresh", &json!({"refresh_token": second}))
        .await;
    assert_eq!(res.status(), 200);
    let rotated: Value = res.json().await.unwrap();
    let third = rotated["refresh_token"].as_str().unwrap().to_owned();
    let access = rotated["access_token"].as_str().unwrap();

    // The first token comes back after its successor was used: no client
    // retries that late, so it was stolen. Refused, and the whole family dies.
    let res = app
        .post_json("/api/v1/auth/refresh", &json!({"refresh_token": first}))
        .await;
    assert_eq!(res.status(), 401);
    assert_eq!(
        app.get_auth("/api/v1/me", access).await.status(),
        401,
        "the session's access tokens die with it, not at their expiry"
    );
    let res = app
        .post_json("/api/v1/auth/refresh", &json!({"refresh_token": third}))
        .await;
    assert_eq!(res.status(), 401, "the newest token was revoked with its family");
    // Stored hashed.
    assert_eq!(
        scalar_i64(
            &app.db,
            &format!("SELECT count(*) AS n FROM refresh_tokens WHERE token_hash = '{second}'")
        )
        .await,
        0
    );
    for bad in [json!({"refresh_token": "payg_rt_nope"}), json!({"refresh_token": ""})] {
        assert_eq!(app.post_json("/api/v1/auth/refresh", &bad).await.status(), 401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_refresh_gets_the_same_pair_and_the_session_lives_on() {
    let app = TestApp::builder().env("PAYG_REFRESH_RETRY_GRACE", "2s").spawn().await;
    let user = app.new_user().await;
    let (_, first) = login_pair(&app, &user.email).await;
    // A client sends its refresh twice at once (a retry after a timeout).
    let body = json!({"refresh_token": first});
    let (a, b) = tokio::join!(
        app.post_json("/api/v1/auth/refresh", &body),
        app.post_json("/api/v1/auth/refresh", &body)
    );
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let (a, b): (Value, Value) = (a.json().await.unwrap(), b.json().await.unwrap());
    assert_eq!(a["refresh_token"], b["refresh_token"], "the pair already issued");
    assert_eq!(a["access_token"], b["access_token"]);
    let access = a["access_token"].as_str().unwrap();
    let second = a["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(
        app.get_auth("/api/v1/me", access).await.status(),
        200,
        "the session lives on"
    );
    // A third, sequential retry within the grace is still a retry.
    let res = app.post_json("/api/v1/auth/refresh", &body).await;
    assert_eq!(res.status(), 200);
    let c: Value = res.json().await.unwrap();
    assert_eq!(c["refresh_token"], a["refresh_token"]);

    // Past the grace the first token is a reused one: the session ends.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let res = app.post_json("/api/v1/auth/refresh", &body).await;
    assert_eq!(res.status(), 401);
    assert_eq!(app.get_auth("/api/v1/me", access).await.status(), 401);
    let res = app
        .post_json("/api/v1/auth/refresh", &json!({"refresh_token": second}))
        .await;
    assert_eq!(res.status(), 401, "its successor died with the session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_kills_the_access_token_at_once_on_every_instance() {
    let db = TestDb::new().await;
    let prefix = format!("payg-test-{}:", Uuid::new_v4().simple());
    let a = TestApp::builder().instance_of(&db, &prefix).spawn().await;
    let b = TestApp::builder().instance_of(&db, &prefix).spawn().await;
    let user = a.new_user().await;
    let (earlier, refresh) = login_pair(&a, &user.email).await;
    // A refresh gives the same session a second access token; logging out
    // with it must end the earlier one too.
    let res = a
        .post_json("/api/v1/auth/refresh", &json!({"refresh_token": refresh}))
        .await;
    assert_eq!(res.status(), 200);
    let rotated: Value = res.json().await.unwrap();
    let access = rotated["access_token"].as_str().unwrap().to_owned();
    let refresh = rotated["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(b.get_auth("/api/v1/me", &access).await.status(), 200);
    assert_eq!(b.get_auth("/api/v1/me", &earlier).await.status(), 200);
    let res = a
        .client
        .post(a.url("/api/v1/auth/logout"))
        .bearer_auth(&access)
        .json(&json!({"refresh_token": refresh}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    // At once where it was made; by push (well within the deadline) on B.
    for token in [&access, &earlier] {
        assert_eq!(a.get_auth("/api/v1/me", token).await.status(), 401);
        assert_eq!(a.get_auth("/api/v1/tools/uuid", token).await.status(), 401);
        assert!(
            eventually(Duration::from_secs(2), || async {
                b.get_auth("/api/v1/tools/uuid", token).await.status() == 401
            })
            .await
        );
        assert_eq!(b.get_auth("/api/v1/me", token).await.status(), 401);
    }
    let res = b
        .post_json("/api/v1/auth/refresh", &json!({"refresh_token": refresh}))
        .await;
    assert_eq!(res.status(), 401, "the session's refresh token is revoked too");
    // Other sessions of the same user are untouched.
    assert_eq!(b.get_auth("/api/v1/me", &user.token).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspension_by_the_cli_reaches_a_running_instance_despite_a_long_cache() {
    let app = TestApp::builder().env("PAYG_AUTH_CACHE_MS", "600000").spawn().await;
    let user = app.new_user().await;
    assert_eq!(app.get_auth("/api/v1/tools/uuid", &user.token).await.status(), 200);
    app.run_cli(&["user", "status", &user.email, "suspended"]);
    assert!(
        eventually(Duration::from_secs(2), || async {
            app.get_auth("/api/v1/tools/uuid", &user.token).await.status() == 403
        })
        .await,
        "the CLI's change is pushed to the running instance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_is_exact_at_the_boundary_across_instances() {
    let db = TestDb::new().await;
    let prefix = format!("payg-test-{}:", Uuid::new_v4().simple());
    let spawn = || {
        TestApp::builder()
            .instance_of(&db, &prefix)
            .env("PAYG_RATE_LIMIT_PER_MINUTE", "5")
            .env("PAYG_RATE_LIMIT_BURST", "5")
            .spawn()
    };
    let (a, b) = (spawn().await, spawn().await);
    let user = a.new_user().await;
    for i in 0..5u32 {
        let app = if i % 2 == 0 { &a } else { &b };
        let res = app.get_auth("/api/v1/tools/uuid", &user.token).await;
        assert_eq!(res.status(), 200, "call {}", i + 1);
        assert_eq!(res.headers()["ratelimit-limit"], "5");
        assert_eq!(
            res.headers()["ratelimit-remaining"].to_str().unwrap(),
            (4 - i).to_string()
        );
        assert!(
            res.headers()["ratelimit-reset"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                <= 60
        );
    }
    let res = b.get_auth("/api/v1/tools/uuid", &user.token).await;
    assert_eq!(res.status(), 429, "call 6");
    let retry: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=12).contains(&retry), "one call frees up every 12 s: {retry}");
    assert_eq!(res.headers()["ratelimit-remaining"], "0");
    assert_eq!(error_code(res).await, "rate_limited");
    // Other users have their own allowance; unmetered routes are not limited.
    let other = a.new_user().await;
    assert_eq!(a.get_auth("/api/v1/tools/uuid", &other.token).await.status(), 200);
    assert_eq!(a.get_auth("/api/v1/me", &user.token).await.status(), 200);

    a.flush_meter().await;
    b.flush_meter().await;
    assert_eq!(
        usage_of(&db, user.id, "tools-uuid", &this_period()).await,
        (6, 1),
        "the refusal is a failed call"
    );
    let bill: Value = a.get_json("/api/v1/billing/current", &user.token).await;
    assert_eq!(bill["lines"][0]["billable_calls"], 5, "and never billed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_locked_after_ten_failures_per_email_without_revealing_accounts() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    for _ in 0..10 {
        assert_eq!(app.login(&user.email, "wrong password").await.status(), 401);
        assert_eq!(app.login("ghost@example.com", "wrong password").await.status(), 401);
    }
    let locked = app.login(&user.email, PASSWORD).await;
    assert_eq!(locked.status(), 429, "even the right password waits");
    assert!(locked.headers().get("retry-after").is_some());
    let ghost = app.login("ghost@example.com", PASSWORD).await;
    assert_eq!(ghost.status(), 429, "an unknown email is locked the same way");
    assert_eq!(error_code(locked).await, error_code(ghost).await);
    let other = app.new_user().await;
    assert_eq!(
        app.login(&other.email, PASSWORD).await.status(),
        200,
        "other emails are unaffected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_cannot_race_past_the_lockout() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    // 40 guesses at once: each takes its attempt before any password is
    // checked, so at most 10 are verified, whatever the interleaving.
    let statuses = statuses_of_concurrent((0..40).map(|i| {
        app.client
            .post(app.url("/api/v1/auth/login"))
            .json(&json!({"email": user.email, "password": format!("wrong guess {i}")}))
    }))
    .await;
    assert_eq!((count(&statuses, 401), count(&statuses, 429)), (10, 30), "{statuses:?}");
    assert_eq!(
        app.login(&user.email, PASSWORD).await.status(),
        429,
        "the right password waits too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_elsewhere_cannot_lock_the_owner_out() {
    // Behind a trusted proxy (here: loopback), X-Forwarded-For names the client.
    let app = TestApp::builder()
        .env("PAYG_TRUSTED_PROXIES", "127.0.0.1/32, ::1/128")
        .spawn()
        .await;
    let user = app.new_user().await;
    let login_from = |from: &'static str, password: &'static str| {
        app.client
            .post(app.url("/api/v1/auth/login"))
            .header("x-forwarded-for", from)
            .json(&json!({"email": user.email, "password": password}))
            .send()
    };
    for _ in 0..10 {
        assert_eq!(
            login_from("198.51.100.66", "wrong password").await.unwrap().status(),
            401
        );
    }
    assert_eq!(
        login_from("198.51.100.66", PASSWORD).await.unwrap().status(),
        429,
        "the guesser is locked"
    );
    // A forged first hop does not help: the proxy's view (the last entry) counts.
    assert_eq!(
        login_from("203.0.113.5, 198.51.100.66", PASSWORD)
            .await
            .unwrap()
            .status(),
        429
    );
    assert_eq!(
        login_from("203.0.113.5", PASSWORD).await.unwrap().status(),
        200,
        "the owner, from their own address, is not"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_calls_are_still_served_logins_wait_and_everything_resumes_when_it_returns() {
    let mut redis = OwnRedis::start(free_port());
    let app = TestApp::builder()
        .env("REDIS_URL", &format!("redis://127.0.0.1:{}", redis.port))
        .env("PAYG_RATE_LIMIT_PER_MINUTE", "100000")
        .spawn()
        .await;
    let user = app.new_user().await;
    let finance = app.user_with_role("finance").await;
    let res = app.get_auth("/api/v1/tools/uuid", &user.token).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("ratelimit-limit").is_some());
    assert_eq!(
        app.get_auth("/api/v1/finance/invoices", &finance.token).await.status(),
        200
    );

    let key = create_key(&app, &user, "during the outage").await;
    let key = key["key"].as_str().unwrap().to_owned();
    let (leaving, leaving_refresh) = login_pair(&app, &user.email).await;

    redis.stop();
    // Outside metered calls access tokens fail closed — once the instance
    // has noticed (the dropped subscription, or at the latest
    // HEARING_BOUND without a word from Redis): a logged-out session could
    // not be told apart. API keys never needed Redis.
    let noticed = eventually(HEARING_BOUND + Duration::from_secs(1), || async {
        app.get_auth("/api/v1/finance/invoices", &finance.token).await.status() == 503
    })
    .await;
    assert!(
        noticed,
        "access tokens still accepted {HEARING_BOUND:?} after Redis went away"
    );
    for (path, token) in [
        ("/api/v1/finance/invoices", &finance.token),
        ("/api/v1/me", &user.token),
        ("/api/v1/usage", &user.token),
    ] {
        let res = app.get_auth(path, token).await;
        assert_eq!(res.status(), 503, "{path}");
        assert!(res.headers().contains_key("retry-after"));
        assert_eq!(error_code(res).await, "auth_unavailable");
    }
    assert_eq!(app.get_auth("/api/v1/usage", &key).await.status(), 200);
    // A logout still revokes the session's refresh tokens, and says that
    // its access tokens could not be ended at once.
    let res = app.post_auth("/api/v1/auth/logout", &leaving, &json!({})).await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(error_code(res).await, "logout_incomplete");
    let res = app
        .post_json("/api/v1/auth/refresh", &json!({"refresh_token": leaving_refresh}))
        .await;
    assert_eq!(res.status(), 401, "the refresh token died with the logout");
    for _ in 0..5 {
        let res = app.get_auth("/api/v1/tools/uuid", &user.token).await;
        assert_eq!(res.status(), 200, "rate limiting fails open");
        assert!(res.headers().get("ratelimit-limit").is_none());
    }
    // The lockout cannot be checked: logins fail closed (no unlimited
    // guessing while Redis is away); existing sessions and keys still work.
    let res = app.login(&user.email, PASSWORD).await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().get("retry-after").is_some());
    assert_eq!(error_code(res).await, "login_unavailable");
    let ready: Value = app.get_public_json("/readyz").await;
    assert_eq!(ready["status"], "degraded");
    assert_eq!(ready["checks"]["redis"], "down");

    let _redis = OwnRedis::start(redis.port);
    let mut recovered = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let res = app.get_auth("/api/v1/tools/uuid", &user.token).await;
        if res.headers().get("ratelimit-limit").is_some() {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "rate limiting resumes without a restart");
    let ready: Value = app.get_public_json("/readyz").await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(
        app.get_auth("/api/v1/finance/invoices", &finance.token).await.status(),
        200
    );
    let (_, refresh) = login_pair(&app, &user.email).await;
    assert!(!refresh.is_empty(), "logins resume with Redis");
    let res = app.post_auth("/api/v1/auth/logout", &leaving, &json!({})).await;
    assert_eq!(res.status(), 204, "the retried logout finishes the job");
    assert_eq!(app.get_auth("/api/v1/me", &leaving).await.status(), 401);
    app.flush_meter().await;
    let (calls, _) = usage_of(&app.db, user.id, "tools-uuid", &this_period()).await;
    assert!(calls >= 7, "every served call was counted: {calls}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_costs_metered_calls_nothing_and_signed_in_routes_fail_closed_past_the_bound() {
    let redis = OwnRedis::start(free_port());
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let app = TestApp::builder()
        .env("REDIS_URL", &url)
        .env("PAYG_RATE_LIMIT_PER_MINUTE", "100000")
        .spawn()
        .await;
    let user = app.new_user().await;
    let (logged_out, _) = login_pair(&app, &user.email).await;
    let res = app.post_auth("/api/v1/auth/logout", &logged_out, &json!({})).await;
    assert_eq!(res.status(), 204);
    // Lock the account from this address (10 failures per 15 minutes).
    for _ in 0..10 {
        assert_eq!(app.login(&user.email, "wrong password!").await.status(), 401);
    }

    // Redis stalls (as it seems to an overloaded instance whose calls time
    // out) for longer than memory is trusted without hearing it.
    let mut admin = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let stall = Duration::from_millis(4_000);
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", &stall.as_millis().to_string(), "ALL"])
        .query_async(&mut admin)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // Within the bound memory answers: the logout holds, the user is served.
    assert_eq!(app.get_auth("/api/v1/me", &logged_out).await.status(), 401);
    assert_eq!(app.get_auth("/api/v1/tools/uuid", &user.token).await.status(), 200);
    // Past the bound, signed-in routes fail closed; metered calls go on
    // (leases and the deny-list in memory; rate limits fail open).
    tokio::time::sleep((HEARING_BOUND + Duration::from_millis(700)).saturating_sub(started.elapsed())).await;
    assert!(started.elapsed() < stall, "the checks below run while Redis is stalled");
    let res = app.get_auth("/api/v1/me", &user.token).await;
    assert_eq!(res.status(), 503, "refused, not let through unchecked");
    assert_eq!(error_code(res).await, "auth_unavailable");
    assert_eq!(app.get_auth("/api/v1/tools/uuid", &user.token).await.status(), 200);
    assert_eq!(
        app.get_auth("/api/v1/tools/uuid", &logged_out).await.status(),
        401,
        "a logout memory holds is refused on metered calls too"
    );

    // Redis answers again: memory is resynced and trusted again.
    tokio::time::sleep(stall.saturating_sub(started.elapsed())).await;
    let mut served = false;
    for _ in 0..60 {
        if app.get_auth("/api/v1/me", &user.token).await.status() == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "signed-in routes resume without a restart");
    assert_eq!(app.get_auth("/api/v1/me", &logged_out).await.status(), 401);
    let res = app.login(&user.email, PASSWORD).await;
    assert_eq!(res.status(), 429, "a locked account stays locked");
    assert_eq!(error_code(res).await, "too_many_attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creations_never_pass_the_key_limit() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    let statuses = statuses_of_concurrent((0..40).map(|i| {
        app.client
            .post(app.url("/api/v1/api-keys"))
            .bearer_auth(&user.token)
            .json(&json!({"name": format!("k{i}")}))
    }))
    .await;
    assert_eq!((count(&statuses, 201), count(&statuses, 409)), (25, 15), "{statuses:?}");
    let listed: Value = app.get_json("/api/v1/api-keys", &user.token).await;
    assert_eq!(listed["api_keys"].as_array().unwrap().len(), 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_change_is_pushed_and_leaves_nothing_behind_in_redis() {
    use futures_util::StreamExt;
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    // Listen on the events channel as another instance would.
    let (mut sink, mut messages) = redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap()
        .split();
    sink.subscribe(format!("{}events", app.state.config.redis_prefix))
        .await
        .unwrap();
    app.state.authenticator.user_changed(user.id).await;
    let heard = tokio::time::timeout(Duration::from_secs(2), messages.next())
        .await
        .expect("the change is published")
        .expect("a message");
    assert_eq!(heard.get_payload::<String>().unwrap(), format!("user {}", user.id));
    let pattern = format!("{}*{}*", app.state.config.redis_prefix, user.id);
    let keys: Vec<String> = tokio::task::spawn_blocking(move || {
        let mut conn = redis::Client::open("redis://127.0.0.1:6379")
            .unwrap()
            .get_connection()
            .unwrap();
        redis::cmd("KEYS").arg(&pattern).query(&mut conn).unwrap()
    })
    .await
    .unwrap();
    assert!(
        keys.is_empty(),
        "a change is a message, not a key that lingers: {keys:?}"
    );
    // The change did not disturb the user: they are still served.
    assert_eq!(app.get_auth("/api/v1/me", &user.token).await.status(), 200);
}
