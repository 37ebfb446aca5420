use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TEST_JWT_SECRET, TestApp, error_code};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_login_and_me_round_trip() {
    let app = TestApp::spawn().await;
    let res = app.register("  Ada.Lovelace@Example.COM ", "Ada Lovelace").await;
    assert_eq!(res.status(), 201);
    let text = res.text().await.unwrap();
    assert!(!text.contains("password") && !text.contains("argon2"), "{text}");
    let user: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(user["email"], "ada.lovelace@example.com");
    assert_eq!(user["role"], "consumer");
    assert_eq!(user["status"], "active");
    assert_eq!(user["total_cost"], "0");

    let res = app.login("ADA.lovelace@example.com", PASSWORD).await;
    assert_eq!(res.status(), 200);
    let login: Value = res.json().await.unwrap();
    assert_eq!(login["token_type"], "Bearer");
    assert_eq!(login["expires_in"], 900);
    let token = login["access_token"].as_str().unwrap();

    let me: Value = app.get_json("/api/v1/me", token).await;
    assert_eq!(me["id"], user["id"]);
    assert_eq!(me["email"], "ada.lovelace@example.com");

    // Stored as an argon2id hash, never in clear.
    let hash_ok = crate::helpers::scalar_i64(
        &app.db,
        "SELECT count(*) AS n FROM users WHERE password_hash LIKE '$argon2id$v=19$m=19456,t=2,p=1$%'",
    )
    .await;
    assert_eq!(hash_ok, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_email_is_refused_whatever_its_case() {
    let app = TestApp::spawn().await;
    assert_eq!(app.register("grace@example.com", "Grace").await.status(), 201);
    for email in ["grace@example.com", "GRACE@Example.com"] {
        let res = app.register(email, "Impostor").await;
        assert_eq!(res.status(), 409);
        assert_eq!(error_code(res).await, "email_taken");
    }
    assert_eq!(app.count_users().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_email_get_identical_answers() {
    let app = TestApp::spawn().await;
    app.new_user().await;
    let known = app.new_user().await;
    let wrong = app.login(&known.email, "not the password").await;
    let unknown = app.login("nobody@example.com", PASSWORD).await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(unknown.status(), 401);
    let (a, b) = (wrong.text().await.unwrap(), unknown.text().await.unwrap());
    assert_eq!(a, b);
    assert!(a.contains("invalid_credentials"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_validates_its_input_and_stores_nothing_on_failure() {
    let app = TestApp::spawn().await;
    let cases = [
        json!({"email": "not-an-email", "password": PASSWORD, "name": "X"}),
        json!({"email": "a@example.com", "password": "short", "name": "X"}),
        json!({"email": "a@example.com", "password": "x".repeat(129), "name": "X"}),
        json!({"email": "a@example.com", "password": PASSWORD, "name": "   "}),
        json!({"email": "a@example.com", "password": PASSWORD}),
        json!({"email": "a@example.com", "password": 12345678, "name": "X"}),
    ];
    for body in cases {
        let res = app.post_json("/api/v1/auth/register", &body).await;
        assert_eq!(res.status(), 400, "{body}");
        assert_eq!(error_code(res).await, "validation_failed", "{body}");
    }
    assert_eq!(app.count_users().await, 0);
}

fn claims(app: &TestApp, sub: &str, exp_offset: i64, iss: &str, aud: &str) -> Value {
    let _ = app;
    let now = chrono::Utc::now().timestamp();
    json!({"sub": sub, "role": "admin", "iat": now, "exp": now + exp_offset, "iss": iss, "aud": aud,
           "jti": uuid::Uuid::new_v4()})
}

fn sign(alg: Algorithm, secret: &str, claims: &Value) -> String {
    encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_misdirected_tokens_are_refused() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    let sub = user.id.to_string();

    let good = sign(
        Algorithm::HS256,
        TEST_JWT_SECRET,
        &claims(&app, &sub, 600, "payg", "payg-api"),
    );
    assert_eq!(
        app.get_auth("/api/v1/me", &good).await.status(),
        200,
        "control: a well-formed token works"
    );

    let tampered = {
        let parts: Vec<&str> = user.token.split('.').collect();
        let mut payload: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
        payload["role"] = json!("admin");
        payload["sub"] = json!(uuid::Uuid::new_v4());
        format!("{}.{}.{}", parts[0], B64.encode(payload.to_string()), parts[2])
    };
    let alg_none = {
        let header = B64.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let payload = B64.encode(claims(&app, &sub, 600, "payg", "payg-api").to_string());
        format!("{header}.{payload}.")
    };
    let cases = [
        (
            "expired",
            sign(
                Algorithm::HS256,
                TEST_JWT_SECRET,
                &claims(&app, &sub, -3600, "payg", "payg-api"),
            ),
        ),
        (
            "other secret",
            sign(
                Algorithm::HS256,
                "another-secret-0123456789abcdef012345",
                &claims(&app, &sub, 600, "payg", "payg-api"),
            ),
        ),
        (
            "wrong audience",
            sign(
                Algorithm::HS256,
                TEST_JWT_SECRET,
                &claims(&app, &sub, 600, "payg", "someone-else"),
            ),
        ),
        (
            "wrong issuer",
            sign(
                Algorithm::HS256,
                TEST_JWT_SECRET,
                &claims(&app, &sub, 600, "evil", "payg-api"),
            ),
        ),
        (
            "HS512 with the right secret",
            sign(
                Algorithm::HS512,
                TEST_JWT_SECRET,
                &claims(&app, &sub, 600, "payg", "payg-api"),
            ),
        ),
        ("alg none", alg_none),
        ("tampered payload", tampered),
        ("garbage", "not.a.token".to_owned()),
    ];
    for (what, token) in cases {
        let res = app.get_auth("/api/v1/me", &token).await;
        assert_eq!(res.status(), 401, "{what}");
        let challenge = res.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(challenge.starts_with("Bearer"), "{what}: {challenge}");
        assert_eq!(error_code(res).await, "unauthorized", "{what}");
        // The metered routes apply the same checks.
        let res = app.get_auth("/api/v1/tools/uuid", &token).await;
        assert_eq!(res.status(), 401, "metered, {what}");
    }

    let res = app.client.get(app.url("/api/v1/me")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert!(
        res.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_user_is_forbidden_everywhere_until_reactivated() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    app.sql(&format!(
        "UPDATE users SET status = 'suspended' WHERE id = '{}'",
        user.id
    ))
    .await;

    for path in ["/api/v1/me", "/api/v1/usage", "/api/v1/tools/uuid"] {
        let res = app.get_auth(path, &user.token).await;
        assert_eq!(res.status(), 403, "{path}");
        assert_eq!(error_code(res).await, "account_suspended");
    }
    let res = app.login(&user.email, crate::helpers::PASSWORD).await;
    assert_eq!(res.status(), 403);

    app.sql(&format!("UPDATE users SET status = 'active' WHERE id = '{}'", user.id))
        .await;
    assert_eq!(app.get_auth("/api/v1/me", &user.token).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_change_applies_on_the_next_call() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    app.sql(&format!("UPDATE users SET role = 'finance' WHERE id = '{}'", user.id))
        .await;
    let caller = app
        .state
        .authenticator
        .authenticate(
            &actix_web::test::TestRequest::default()
                .insert_header(("authorization", format!("Bearer {}", user.token)))
                .to_http_request(),
            payg::auth::Purpose::Plain,
        )
        .await
        .unwrap();
    assert_eq!(
        caller.role,
        payg::models::Role::Finance,
        "role comes from the database, not the token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_is_refused_as_busy_instead_of_queued() {
    // One hashing thread and one waiting place: a flood of logins (unknown
    // emails, each its own lockout) cannot pile argon2 work up in memory.
    let app = TestApp::builder()
        .env("PAYG_PASSWORD_THREADS", "1")
        .env("PAYG_PASSWORD_QUEUE", "1")
        .spawn()
        .await;
    let user = app.new_user().await;
    let flood = (0..60).map(|i| {
        let (client, url) = (app.client.clone(), app.url("/api/v1/auth/login"));
        tokio::spawn(async move {
            let res = client
                .post(url)
                .json(&json!({"email": format!("nobody{i}@example.com"), "password": "not a password"}))
                .send()
                .await
                .unwrap();
            let retry = res.headers().get("retry-after").is_some();
            let status = res.status().as_u16();
            let code = res.json::<Value>().await.unwrap()["error"]["code"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            (status, code, retry)
        })
    });
    let mut answers = Vec::new();
    for answer in flood.collect::<Vec<_>>() {
        answers.push(answer.await.unwrap());
    }
    let busy = answers
        .iter()
        .filter(|(s, c, r)| *s == 503 && c == "busy" && *r)
        .count();
    let refused = answers
        .iter()
        .filter(|(s, c, _)| *s == 401 && c == "invalid_credentials")
        .count();
    assert_eq!(busy + refused, answers.len(), "only 401 or 503 busy: {answers:?}");
    assert!(busy > 0, "the flood saturated the pool: {answers:?}");
    assert!(refused > 0, "and some were still checked");
    // Once the flood is over, logins work again.
    assert_eq!(app.login(&user.email, PASSWORD).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_spends_its_bucket_on_logins_registrations_and_refreshes() {
    // Burst 6: the user's registration and login take two.
    let app = TestApp::builder()
        .env("PAYG_CLIENT_AUTH_PER_MINUTE", "1")
        .env("PAYG_CLIENT_AUTH_BURST", "6")
        .spawn()
        .await;
    let user = app.new_user().await;
    for _ in 0..3 {
        assert_eq!(app.login(&user.email, "wrong password!").await.status(), 401);
    }
    let refresh = app
        .post_json("/api/v1/auth/refresh", &json!({"refresh_token": "payg_rt_unknown"}))
        .await;
    assert_eq!(refresh.status(), 401, "the sixth attempt is still admitted");
    for res in [
        app.login(&user.email, PASSWORD).await,
        app.register("late@example.com", "Late").await,
        app.post_json("/api/v1/auth/refresh", &json!({"refresh_token": "payg_rt_unknown"}))
            .await,
    ] {
        assert_eq!(res.status(), 429);
        let wait: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
        assert_eq!(error_code(res).await, "too_many_requests");
    }
    // The account itself is not locked: only this address is slowed down,
    // and an authenticated session carries on.
    assert_eq!(app.get_auth("/api/v1/me", &user.token).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_api_keys_spend_a_bucket_of_their_own_known_ones_do_not() {
    // The key cache off: every call looks its key up, so a known key that
    // is not cached is exercised on every call too.
    let app = TestApp::builder()
        .env("PAYG_CLIENT_UNKNOWN_KEYS_PER_MINUTE", "1")
        .env("PAYG_CLIENT_UNKNOWN_KEYS_BURST", "2")
        .env("PAYG_CLIENT_AUTH_PER_MINUTE", "1")
        .env("PAYG_CLIENT_AUTH_BURST", "3")
        .spawn()
        .await;
    let user = app.new_user().await;
    let res = app
        .post_auth("/api/v1/api-keys", &user.token, &json!({"name": "ci"}))
        .await;
    assert_eq!(res.status(), 201);
    let key: Value = res.json().await.unwrap();
    let key = key["key"].as_str().unwrap().to_owned();
    let call = |key: String| {
        app.client
            .get(app.url("/api/v1/tools/uuid"))
            .header("x-api-key", key)
            .send()
    };
    for _ in 0..5 {
        assert_eq!(
            call(key.clone()).await.unwrap().status(),
            200,
            "a known key costs nothing"
        );
    }
    let guessed = |i: u32| format!("payg_guessed{i:0>40}");
    // Guesses sent in parallel may all pass the check before any is
    // charged, but every one is charged: the address goes into debt.
    let statuses = crate::helpers::statuses_of_concurrent((0..20).map(|i| {
        app.client
            .get(app.url("/api/v1/tools/uuid"))
            .header("x-api-key", guessed(i))
    }))
    .await;
    let looked_up = crate::helpers::count(&statuses, 401);
    assert_eq!(looked_up + crate::helpers::count(&statuses, 429), 20, "{statuses:?}");
    assert!(looked_up >= 2, "the burst is admitted: {statuses:?}");
    let res = call(guessed(99)).await.unwrap();
    assert_eq!(res.status(), 429, "no query for another guess");
    let wait: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    let owed = u64::try_from(looked_up).unwrap() - 2;
    assert!(
        wait >= owed * 60,
        "each guess beyond the burst costs a minute: {wait} s for {looked_up}"
    );
    assert_eq!(error_code(res).await, "too_many_requests");
    // The address's logins are a budget of their own (one left of three).
    assert_eq!(app.login(&user.email, PASSWORD).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_email_is_one_account_however_it_is_composed_and_invisible_characters_are_refused() {
    let app = TestApp::spawn().await;
    let composed = "jos\u{E9}@example.com";
    let decomposed = "jose\u{301}@example.com";
    let res = app.register(composed, "Jos\u{E9}").await;
    assert_eq!(res.status(), 201);
    let res = app.register(decomposed, "Jose\u{301}").await;
    assert_eq!(res.status(), 409, "the same address, decomposed");
    assert_eq!(error_code(res).await, "email_taken");
    let res = app.login(decomposed, PASSWORD).await;
    assert_eq!(res.status(), 200, "either spelling logs in");

    for (email, name) in [
        ("ada\u{200B}@example.com", "Ada"),
        ("ada@example.com", "Ada\u{200D}"),
        ("ada@example.com", "\u{202E}adA"),
        ("ada@example.com", "Ada\u{2066}"),
    ] {
        let res = app.register(email, name).await;
        assert_eq!(res.status(), 400, "{email:?} {name:?}");
        assert_eq!(error_code(res).await, "validation_failed");
    }
    assert_eq!(app.count_users().await, 1, "bad input stored nothing");
    let token = app.token_for(composed).await;
    let res = app
        .client
        .patch(app.url("/api/v1/me"))
        .bearer_auth(&token)
        .json(&json!({"name": "Jose\u{301} Mari\u{301}a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let me: Value = res.json().await.unwrap();
    assert_eq!(me["name"], "Jos\u{E9} Mar\u{ED}a", "names are stored in NFC");
}
