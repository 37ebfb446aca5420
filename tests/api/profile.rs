use serde_json::{Value, json};

use crate::helpers::{TestApp, error_code};

async fn patch_me(app: &TestApp, token: &str, body: &Value) -> reqwest::Response {
    app.patch_auth("/api/v1/me", token, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_details_are_updated_partially_and_cleared_with_null() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    let res = patch_me(
        &app,
        &user.token,
        &json!({"name": "Ada Lovelace", "company": "Analytical Engines Ltd", "address_line1": "12 St James's Square",
                "city": "London", "postal_code": "SW1Y 4JH", "country": "gb", "tax_id": "GB123456789"}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let me: Value = res.json().await.unwrap();
    assert_eq!(me["country"], "GB");
    assert_eq!(me["company"], "Analytical Engines Ltd");

    let me: Value = patch_me(&app, &user.token, &json!({"company": null, "city": "Paris"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["company"], Value::Null);
    assert_eq!(me["city"], "Paris");
    assert_eq!(me["name"], "Ada Lovelace", "untouched fields stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_profile_updates_change_nothing() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    let before: Value = app.get_json("/api/v1/me", &user.token).await;
    for body in [
        json!({"country": "Great Britain"}),
        json!({"name": ""}),
        json!({"city": "x".repeat(201)}),
        json!({"name": "Ok", "role": "admin"}),
        json!({"email": "other@example.com"}),
        json!({"total_cost": "0"}),
    ] {
        let res = patch_me(&app, &user.token, &body).await;
        assert_eq!(res.status(), 400, "{body}");
        assert_eq!(error_code(res).await, "validation_failed");
    }
    let after: Value = app.get_json("/api/v1/me", &user.token).await;
    assert_eq!(before, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_looking_and_unicode_input_is_stored_and_returned_literally() {
    let app = TestApp::spawn().await;
    // (Bidi overrides and other format characters are refused: auth.rs.)
    let name = "Robert'); DROP TABLE users;-- 🦀 Zoë Ñandú 東京 ";
    let email = "o'brien+tag@exämple.com";
    let res = app.register(email, name).await;
    assert_eq!(res.status(), 201);
    let user: Value = res.json().await.unwrap();
    assert_eq!(user["name"], name.trim());
    let token = app.token_for(email).await;
    let city = "'; SELECT pg_sleep(10); -- ☃";
    let me: Value = patch_me(&app, &token, &json!({"city": city}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["city"], city);
    assert_eq!(app.count_users().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_can_neither_read_nor_change_another_user() {
    let app = TestApp::spawn().await;
    let alice = app.new_user().await;
    let bob = app.new_user().await;
    let res = patch_me(&app, &alice.token, &json!({"name": "Alice", "id": bob.id})).await;
    assert_eq!(res.status(), 400, "an id in the body is refused, not obeyed");
    patch_me(&app, &alice.token, &json!({"name": "Alice"})).await;

    let bob_me: Value = app.get_json("/api/v1/me", &bob.token).await;
    assert_eq!(bob_me["id"], bob.id.to_string());
    assert_eq!(bob_me["name"], "Test User");
    let alice_me: Value = app.get_json("/api/v1/me", &alice.token).await;
    assert_eq!(alice_me["name"], "Alice");
}
