//! The admin's user pages: `GET /api/v1/admin/users` (find by email, paged)
//! and `PATCH /api/v1/admin/users/{id}` (role, status), which has the
//! effects of `payg user role|status`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use payg::domain::ManualClock;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    PASSWORD, Registered, TestApp, TestDb, at, error_code, eventually, scalar_i64, statuses_of_concurrent,
};

const DEADLINE: Duration = Duration::from_secs(2);

async fn list(app: &TestApp, token: &str, query: &[(&str, &str)]) -> reqwest::Response {
    app.client
        .get(app.url("/api/v1/admin/users"))
        .query(query)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn list_json(app: &TestApp, token: &str, query: &[(&str, &str)]) -> Value {
    let res = list(app, token, query).await;
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

fn emails(page: &Value) -> Vec<String> {
    page["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap().to_owned())
        .collect()
}

async fn patch(app: &TestApp, token: &str, id: impl std::fmt::Display, body: &Value) -> reqwest::Response {
    app.patch_auth(&format!("/api/v1/admin/users/{id}"), token, body).await
}

/// Registers `email` (any spelling) and returns its id.
async fn register(app: &TestApp, email: &str) -> Uuid {
    let res = app.register(email, "Listed").await;
    assert_eq!(res.status(), 201, "{email}: {}", res.text().await.unwrap());
    let body: Value = res.json().await.unwrap();
    body["id"].as_str().unwrap().parse().unwrap()
}

/// The user's row as the admin list shows it.
async fn row(app: &TestApp, admin: &Registered, email: &str) -> Value {
    let page = list_json(app, &admin.token, &[("email", email)]).await;
    let users = page["users"].as_array().unwrap();
    let found: Vec<&Value> = users.iter().filter(|u| u["email"] == email).collect();
    assert_eq!(found.len(), 1, "{page}");
    found[0].clone()
}

async fn status(app: &TestApp, path: &str, token: &str) -> u16 {
    app.get_auth(path, token).await.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_find_users_by_part_of_their_email_in_any_case() {
    let app = TestApp::spawn().await;
    let admin = app.user_with_role("admin").await;
    let ada = register(&app, "Ada.Lovelace@Example.com").await;
    register(&app, "grace@example.org").await;

    let page = list_json(&app, &admin.token, &[("email", "LOVELACE@EXAMPLE")]).await;
    assert_eq!(page["total"], 1, "{page}");
    let user = &page["users"][0];
    assert_eq!(user["id"], ada.to_string());
    assert_eq!(user["email"], "ada.lovelace@example.com");
    assert_eq!(user["name"], "Listed");
    assert_eq!(user["role"], "consumer");
    assert_eq!(user["status"], "active");
    assert_eq!(user["overdue"], false);
    assert_eq!(user["total_cost"], "0");
    assert!(
        user["created_at"].is_string() && user["updated_at"].is_string(),
        "{user}"
    );
    let fields: BTreeSet<&str> = user.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        fields,
        BTreeSet::from([
            "id",
            "email",
            "name",
            "role",
            "status",
            "total_cost",
            "created_at",
            "updated_at",
            "overdue"
        ]),
        "never a password hash"
    );

    // No filter, or an empty one: everyone, by email.
    for query in [&[][..], &[("email", "")][..], &[("email", "  ")][..]] {
        let page = list_json(&app, &admin.token, query).await;
        assert_eq!(page["total"], 3, "{page}");
        assert_eq!(
            emails(&page),
            [
                "ada.lovelace@example.com".to_owned(),
                "grace@example.org".to_owned(),
                admin.email.clone(),
            ]
        );
        assert_eq!((page["page"].as_i64(), page["per_page"].as_i64()), (Some(1), Some(50)));
    }
    let page = list_json(&app, &admin.token, &[("email", "nobody")]).await;
    assert_eq!((page["total"].as_i64(), emails(&page).len()), (Some(0), 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_percent_underscore_or_backslash_in_the_filter_matches_only_itself() {
    let app = TestApp::spawn().await;
    let admin = app.user_with_role("admin").await;
    for email in [
        "a_b@example.com",
        "axb@example.com",
        "p%q@example.com",
        "pzzq@example.com",
        "s\\t@example.com",
        "st@example.com",
    ] {
        register(&app, email).await;
    }
    for (filter, expected) in [
        ("a_b", vec!["a_b@example.com"]),
        ("A_B", vec!["a_b@example.com"]),
        ("p%q", vec!["p%q@example.com"]),
        ("%", vec!["p%q@example.com"]),
        ("_", vec!["a_b@example.com"]),
        ("s\\t", vec!["s\\t@example.com"]),
        ("\\", vec!["s\\t@example.com"]),
    ] {
        let page = list_json(&app, &admin.token, &[("email", filter)]).await;
        assert_eq!(emails(&page), expected, "filter {filter:?}");
        assert_eq!(page["total"], expected.len(), "filter {filter:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_paged_in_a_stable_order_and_bad_pages_are_refused() {
    let app = TestApp::spawn().await;
    let admin = app.user_with_role("admin").await;
    let mut all = Vec::new();
    for i in [3, 1, 4, 0, 2] {
        let email = format!("paged-{i}@example.com");
        register(&app, &email).await;
        all.push(email);
    }
    all.sort();
    let mut seen = Vec::new();
    for page in 1..=3 {
        let body = list_json(
            &app,
            &admin.token,
            &[("email", "PAGED-"), ("page", &page.to_string()), ("per_page", "2")],
        )
        .await;
        assert_eq!(
            (body["page"].as_i64(), body["per_page"].as_i64()),
            (Some(page), Some(2))
        );
        assert_eq!(body["total"], 5);
        seen.extend(emails(&body));
    }
    assert_eq!(seen, all, "every user once, by email");
    let past = list_json(
        &app,
        &admin.token,
        &[("email", "paged-"), ("page", "4"), ("per_page", "2")],
    )
    .await;
    assert_eq!((past["total"].as_i64(), emails(&past).len()), (Some(5), 0));
    let far = list_json(
        &app,
        &admin.token,
        &[("page", &i64::MAX.to_string()), ("per_page", "500")],
    )
    .await;
    assert_eq!(emails(&far).len(), 0);

    for query in [
        [("page", "0")],
        [("page", "-1")],
        [("page", "x")],
        [("per_page", "0")],
        [("per_page", "501")],
        [("page", "99999999999999999999")],
        [("email", "a\u{0}b")],
    ] {
        let res = list(&app, &admin.token, &query).await;
        assert_eq!(res.status(), 400, "{query:?}");
        assert_eq!(error_code(res).await, "validation_failed", "{query:?}");
    }
    let long = "x".repeat(255);
    let res = list(&app, &admin.token, &[("email", long.as_str())]).await;
    assert_eq!(res.status(), 400, "longer than any address");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_signed_in_with_an_access_token_manage_users() {
    let app = TestApp::spawn().await;
    let admin = app.user_with_role("admin").await;
    let target = app.new_user().await;
    for role in ["consumer", "finance"] {
        let user = app.user_with_role(role).await;
        let res = list(&app, &user.token, &[]).await;
        assert_eq!(res.status(), 403, "{role}");
        assert_eq!(error_code(res).await, "forbidden");
        let res = patch(&app, &user.token, target.id, &json!({"role": "admin"})).await;
        assert_eq!(res.status(), 403, "{role}");
        assert_eq!(error_code(res).await, "forbidden");
        // Even a malformed body: the role is checked first.
        let res = app
            .patch_raw(&format!("/api/v1/admin/users/{}", target.id), &user.token, "{")
            .await;
        assert_eq!(res.status(), 403, "{role}");
    }
    // The admin's own API key is not enough.
    let res = app
        .post_auth("/api/v1/api-keys", &admin.token, &json!({"name": "admin key"}))
        .await;
    assert_eq!(res.status(), 201);
    let key: Value = res.json().await.unwrap();
    let key = key["key"].as_str().unwrap();
    let res = app
        .client
        .get(app.url("/api/v1/admin/users"))
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(error_code(res).await, "access_token_required");
    let res = patch(&app, key, target.id, &json!({"status": "suspended"})).await;
    assert_eq!(res.status(), 401);
    assert_eq!(error_code(res).await, "access_token_required");
    // Nobody at all.
    let res = app.client.get(app.url("/api/v1/admin/users")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(error_code(res).await, "unauthorized");

    let me = row(&app, &admin, &target.email).await;
    assert_eq!(
        (me["role"].as_str(), me["status"].as_str()),
        (Some("consumer"), Some("active"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_user_is_not_found() {
    let app = TestApp::spawn().await;
    let admin = app.user_with_role("admin").await;
    let res = patch(&app, &admin.token, Uuid::new_v4(), &json!({"role": "finance"})).await;
    assert_eq!(res.status(), 404);
    assert_eq!(error_code(res).await, "not_found");
    let res = patch(&app, &admin.token, "not-a-uuid", &json!({"role": "finance"})).await;
    assert_eq!(res.status(), 404);
    assert_eq!(error_code(res).await, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_cannot_demote_or_suspend_themselves() {
    let app = TestApp::spawn().await;
    let admin = app.user_with_role("admin").await;
    for body in [
        json!({"role": "consumer"}),
        json!({"role": "finance"}),
        json!({"status": "suspended"}),
        json!({"role": "admin", "status": "suspended"}),
        json!({"role": "finance", "status": "active"}),
    ] {
        let res = patch(&app, &admin.token, admin.id, &body).await;
        assert_eq!(res.status(), 409, "{body}");
        assert_eq!(error_code(res).await, "own_account", "{body}");
    }
    // Setting what they already are changes nothing and is allowed.
    let res = patch(
        &app,
        &admin.token,
        admin.id,
        &json!({"role": "admin", "status": "active"}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let me = row(&app, &admin, &admin.email).await;
    assert_eq!(
        (me["role"].as_str(), me["status"].as_str()),
        (Some("admin"), Some("active"))
    );

    // Another admin can.
    let other = app.user_with_role("admin").await;
    let res = patch(&app, &other.token, admin.id, &json!({"role": "finance"})).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["role"], "finance");
    assert_eq!(status(&app, "/api/v1/admin/users", &admin.token).await, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_admins_demoting_each_other_at_once_leave_one_admin() {
    let app = TestApp::spawn().await;
    for _ in 0..5 {
        let (a, b) = (app.user_with_role("admin").await, app.user_with_role("admin").await);
        let request = |by: &Registered, whom: &Registered| {
            app.client
                .patch(app.url(&format!("/api/v1/admin/users/{}", whom.id)))
                .bearer_auth(&by.token)
                .json(&json!({"role": "consumer"}))
        };
        let statuses = statuses_of_concurrent([request(&a, &b), request(&b, &a)]).await;
        let mut sorted = statuses.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [200, 403], "{statuses:?}");
        let admins = scalar_i64(
            &app.db,
            &format!(
                "SELECT count(*) AS n FROM users WHERE role = 'admin' AND id IN ('{}', '{}')",
                a.id, b.id
            ),
        )
        .await;
        assert_eq!(admins, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_body_is_refused_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.user_with_role("admin").await;
    let user = app.new_user().await;
    let before = row(&app, &admin, &user.email).await;
    let path = format!("/api/v1/admin/users/{}", user.id);
    for (body, code) in [
        ("{}", "validation_failed"),
        ("[]", "validation_failed"),
        ("\"finance\"", "validation_failed"),
        (r#"{"role": null}"#, "validation_failed"),
        (r#"{"status": null}"#, "validation_failed"),
        (r#"{"role": "finance", "status": null}"#, "validation_failed"),
        (r#"{"role": "emperor"}"#, "validation_failed"),
        (r#"{"role": "Finance"}"#, "validation_failed"),
        (r#"{"status": "deleted"}"#, "validation_failed"),
        (r#"{"role": "finance", "note": "x"}"#, "validation_failed"),
        (r#"{"role": "finance", "role": "admin"}"#, "validation_failed"),
        (r#"{"role": 1}"#, "validation_failed"),
        (r#"{"role": "finance""#, "invalid_json"),
    ] {
        let res = app.patch_raw(&path, &admin.token, body).await;
        assert_eq!(res.status(), 400, "{body}");
        assert_eq!(error_code(res).await, code, "{body}");
    }
    let res = app
        .client
        .patch(app.url(&path))
        .bearer_auth(&admin.token)
        .body(r#"{"role": "finance"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400, "no JSON content type");
    assert_eq!(row(&app, &admin, &user.email).await, before, "nothing changed");
}

/// The user's standing as another instance sees it, and the CLI and the
/// route making the same change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_or_status_change_reaches_another_instance_on_the_next_call() {
    let db = TestDb::new().await;
    let prefix = format!("payg-test-{}:", Uuid::new_v4().simple());
    // Only a push can make an instance notice a change within the deadline.
    let instance = || {
        TestApp::builder()
            .instance_of(&db, &prefix)
            .env("PAYG_AUTH_CACHE_MS", "600000")
            .spawn()
    };
    let (a, b) = (instance().await, instance().await);
    let admin = a.user_with_role("admin").await;
    let user = a.new_user().await;
    let session: Value = a.login(&user.email, PASSWORD).await.json().await.unwrap();
    let refresh_token = session["refresh_token"].as_str().unwrap().to_owned();
    // B has the user's standing in memory.
    assert_eq!(status(&b, "/api/v1/finance/invoices", &user.token).await, 403);
    assert_eq!(status(&b, "/api/v1/tools/uuid", &user.token).await, 200);

    let res = patch(&a, &admin.token, user.id, &json!({"role": "finance"})).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (body["id"].as_str(), body["role"].as_str()),
        (Some(&*user.id.to_string()), Some("finance"))
    );
    assert_eq!(
        status(&a, "/api/v1/finance/invoices", &user.token).await,
        200,
        "at once where it was made"
    );
    assert!(
        eventually(DEADLINE, || async {
            status(&b, "/api/v1/finance/invoices", &user.token).await == 200
        })
        .await,
        "the role change reached B"
    );

    let res = patch(&a, &admin.token, user.id, &json!({"status": "suspended"})).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (body["role"].as_str(), body["status"].as_str()),
        (Some("finance"), Some("suspended"))
    );
    let res = a.get_auth("/api/v1/me", &user.token).await;
    assert_eq!(res.status(), 403, "at once where it was made");
    assert_eq!(error_code(res).await, "account_suspended");
    assert!(
        eventually(DEADLINE, || async {
            status(&b, "/api/v1/tools/uuid", &user.token).await == 403
        })
        .await,
        "the suspension reached B"
    );
    let res = b.get_auth("/api/v1/me", &user.token).await;
    assert_eq!(error_code(res).await, "account_suspended");
    let res = b
        .post_json("/api/v1/auth/refresh", &json!({"refresh_token": refresh_token}))
        .await;
    assert_eq!(res.status(), 403, "no new tokens while suspended");
    assert_eq!(error_code(res).await, "account_suspended");
    let res = b.login(&user.email, PASSWORD).await;
    assert_ne!(res.status(), 200, "no new session while suspended");

    // The CLI makes the same change through the same function.
    a.run_cli(&["user", "status", &user.email, "active"]);
    assert!(
        eventually(DEADLINE, || async {
            status(&b, "/api/v1/tools/uuid", &user.token).await == 200
        })
        .await,
        "the reactivation reached B"
    );
    assert_eq!(status(&a, "/api/v1/me", &user.token).await, 200);
    let res = b
        .post_json("/api/v1/auth/refresh", &json!({"refresh_token": refresh_token}))
        .await;
    assert_eq!(res.status(), 200, "the session lives on once reactivated");
    let shown = row(&a, &admin, &user.email).await;
    assert_eq!(
        (shown["role"].as_str(), shown["status"].as_str()),
        (Some("finance"), Some("active"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_shows_who_is_blocked_by_an_overdue_invoice() {
    let clock = Arc::new(ManualClock::new(at("2026-02-10T00:00:00Z")));
    let app = TestApp::builder()
        .clock(clock.clone())
        .env("PAYG_CLOSE_GRACE", "876000h")
        .spawn()
        .await;
    let admin = app.user_with_role("admin").await;
    let user = app.new_user().await;
    for _ in 0..20 {
        assert_eq!(status(&app, "/api/v1/tools/uuid", &user.token).await, 200);
    }
    app.flush_meter().await;
    clock.set(at("2026-03-01T00:11:00Z"));
    let res = app
        .post_auth("/api/v1/finance/periods/2026-02/close", &admin.token, &json!({}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        row(&app, &admin, &user.email).await["overdue"],
        false,
        "issued, not yet due"
    );
    // Due 14 days after issue, overdue 30 days after that.
    clock.set(at("2026-04-16T00:00:00Z"));
    assert_eq!(status(&app, "/api/v1/tools/uuid", &user.token).await, 402);
    let shown = row(&app, &admin, &user.email).await;
    assert_eq!(shown["overdue"], true, "{shown}");
    assert_eq!(shown["total_cost"], "0.02");
}
