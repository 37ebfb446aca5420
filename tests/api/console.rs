//! The web console over HTTP, as a browser without JavaScript sees it:
//! cookies, CSRF, headers, who sees what, sessions across instances. The
//! journey in a real browser is tests/browser/console.test.mjs.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header;
use serde_json::Value;

use crate::helpers::{PASSWORD, Registered, TestApp, TestDb, eventually};

/// A cookie-keeping client that does not follow redirects.
struct Browser {
    client: reqwest::Client,
    base: String,
    cookies: BTreeMap<String, String>,
}

impl Browser {
    fn new(app: &TestApp) -> Self {
        Self::at(&app.address)
    }

    fn at(base: &str) -> Self {
        Browser {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            base: base.to_owned(),
            cookies: BTreeMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep(&mut self, res: &reqwest::Response) {
        for value in res.headers().get_all(header::SET_COOKIE) {
            let text = value.to_str().expect("ascii cookie");
            let (pair, attrs) = text.split_once(';').unwrap_or((text, ""));
            let (name, value) = pair.split_once('=').expect("name=value");
            let removed = attrs.to_ascii_lowercase().contains("max-age=0") || value.is_empty();
            if removed {
                self.cookies.remove(name.trim());
            } else {
                self.cookies.insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
    }

    async fn get(&mut self, path: &str) -> reqwest::Response {
        let res = self
            .client
            .get(format!("{}{path}", self.base))
            .header(header::COOKIE, self.cookie_header())
            .send()
            .await
            .expect("GET");
        self.keep(&res);
        res
    }

    async fn get_text(&mut self, path: &str) -> (u16, String) {
        let res = self.get(path).await;
        let status = res.status().as_u16();
        (status, res.text().await.expect("body"))
    }

    /// Posts a form as a browser does from the console's own page: with its
    /// `Origin`.
    async fn post_form(&mut self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let res = self
            .client
            .post(format!("{}{path}", self.base))
            .header(header::COOKIE, self.cookie_header())
            .header(header::ORIGIN, &self.base)
            .form(form)
            .send()
            .await
            .expect("POST");
        self.keep(&res);
        res
    }

    /// The CSRF token of the form on `path`.
    async fn csrf(&mut self, path: &str) -> String {
        let (status, body) = self.get_text(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        csrf_in(&body)
    }

    /// Posts the form on `form_page` to `action`, with its CSRF token.
    async fn submit(&mut self, form_page: &str, action: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        let token = self.csrf(form_page).await;
        let mut all = vec![("csrf", token.as_str())];
        all.extend_from_slice(fields);
        self.post_form(action, &all).await
    }

    async fn sign_in(&mut self, email: &str) {
        let res = self
            .submit(
                "/console/sign-in",
                "/console/sign-in",
                &[("email", email), ("password", PASSWORD)],
            )
            .await;
        assert_eq!(res.status(), 303, "sign in: {}", res.text().await.unwrap_or_default());
        assert!(self.cookies.contains_key("payg_session"));
    }
}

/// Last month's calls to tools-uuid for a user, inserted as a meter flush
/// before daily counts would have left them (a month's row, no days).
async fn seed_last_month(app: &TestApp, user: uuid::Uuid, calls: i64, failed: i64) {
    let last = app.state.current_period().previous().to_string();
    app.seed_month(user, "tools-uuid", &last, calls, failed).await;
}

fn csrf_in(body: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = body.find(marker).expect("a form with a CSRF field") + marker.len();
    body[start..].split('"').next().expect("value").to_owned()
}

fn location(res: &reqwest::Response) -> String {
    res.headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn console_cookies_are_httponly_strict_and_scoped_and_every_page_carries_the_security_headers() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    let mut browser = Browser::new(&app);
    let res = browser.get("/").await;
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), "/console");
    let res = browser.get("/console").await;
    assert_eq!(res.status(), 303, "no session: sign in first");
    assert_eq!(location(&res), "/console/sign-in?next=%2Fconsole");

    let token = browser.csrf("/console/sign-in").await;
    let res = browser
        .post_form(
            "/console/sign-in",
            &[("csrf", &token), ("email", &user.email), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(res.status(), 303);
    let cookies: Vec<String> = res
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().expect("ascii").to_owned())
        .collect();
    for name in ["payg_session", "payg_refresh", "payg_csrf"] {
        let cookie = cookies
            .iter()
            .find(|c| c.starts_with(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} is set at sign-in: {cookies:?}"));
        assert!(cookie.contains("HttpOnly"), "{cookie}");
        assert!(cookie.contains("SameSite=Strict"), "{cookie}");
        assert!(cookie.contains("Path=/console"), "{cookie}");
        assert!(!cookie.contains("Secure"), "plain HTTP: not Secure ({cookie})");
        assert!(
            !cookie.to_ascii_lowercase().contains("max-age"),
            "a session cookie ({cookie})"
        );
    }
    assert_ne!(
        csrf_in(&browser.get_text("/console/keys").await.1),
        token,
        "signing in replaces the CSRF value"
    );

    for path in [
        "/console",
        "/console/keys",
        "/console/webhooks",
        "/console/sign-in",
        "/console/no-such-page",
    ] {
        let res = browser.get(path).await;
        let h = res.headers();
        let csp = h
            .get(header::CONTENT_SECURITY_POLICY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            csp.contains("default-src 'none'")
                && csp.contains("script-src 'self'")
                && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp}"
        );
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(h.get(header::X_FRAME_OPTIONS).expect("x-frame-options"), "DENY");
        assert_eq!(h.get(header::REFERRER_POLICY).expect("referrer-policy"), "same-origin");
        assert_eq!(h.get(header::X_CONTENT_TYPE_OPTIONS).expect("nosniff"), "nosniff");
        assert_eq!(h.get(header::CACHE_CONTROL).expect("cache-control"), "no-store");
        assert!(
            h.get(header::CONTENT_TYPE)
                .expect("type")
                .to_str()
                .expect("ascii")
                .starts_with("text/html"),
            "{path}"
        );
        let body = res.text().await.expect("body");
        assert!(
            !body.contains("<script>") && !body.contains(" style="),
            "{path}: no inline script or style"
        );
    }
    assert_eq!(browser.get("/console/no-such-page").await.status(), 404);
}

#[tokio::test]
async fn the_api_and_gateway_routes_ignore_the_console_cookie() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&user.email).await;
    let cookie = browser.cookie_header();
    for path in [
        "/api/v1/me",
        "/api/v1/billing/current",
        "/api/v1/tools/uuid",
        "/api/v1/api-keys",
    ] {
        let res = app
            .client
            .get(app.url(path))
            .header(header::COOKIE, &cookie)
            .send()
            .await
            .expect("GET");
        assert_eq!(res.status(), 401, "{path} must not take the console's cookie");
    }
    // Nor can the cookie create a key through the API.
    let res = app
        .client
        .post(app.url("/api/v1/api-keys"))
        .header(header::COOKIE, &cookie)
        .json(&serde_json::json!({"name": "from a cookie"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 401);
    app.flush_meter().await;
    assert_eq!(crate::helpers::total_calls(&app.db).await, 0, "nothing was metered");
}

#[tokio::test]
async fn a_form_without_its_csrf_token_or_from_another_site_is_refused_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&user.email).await;
    let token = browser.csrf("/console/keys").await;

    let none = browser.post_form("/console/keys", &[("name", "forged")]).await;
    assert_eq!(none.status(), 403);
    assert!(none.text().await.expect("body").contains("csrf_failed"));
    let wrong = browser
        .post_form("/console/keys", &[("csrf", &"0".repeat(64)), ("name", "forged")])
        .await;
    assert_eq!(wrong.status(), 403);
    // Another browser's token does not fit this browser's cookie.
    let mut stranger = Browser::new(&app);
    let theirs = stranger.csrf("/console/sign-in").await;
    let swapped = browser
        .post_form("/console/keys", &[("csrf", &theirs), ("name", "forged")])
        .await;
    assert_eq!(swapped.status(), 403);
    // The right token from another site's page.
    let cross_site = browser
        .client
        .post(format!("{}/console/keys", browser.base))
        .header(header::COOKIE, browser.cookie_header())
        .header(header::ORIGIN, "https://evil.example")
        .form(&[("csrf", token.as_str()), ("name", "forged")])
        .send()
        .await
        .expect("POST");
    assert_eq!(cross_site.status(), 403);
    let fetch_site = browser
        .client
        .post(format!("{}/console/sign-out", browser.base))
        .header(header::COOKIE, browser.cookie_header())
        .header("sec-fetch-site", "cross-site")
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .expect("POST");
    assert_eq!(fetch_site.status(), 403);
    // Neither Origin nor Sec-Fetch-Site: not known to be this site's.
    let unsaid = browser
        .client
        .post(format!("{}/console/keys", browser.base))
        .header(header::COOKIE, browser.cookie_header())
        .form(&[("csrf", token.as_str()), ("name", "forged")])
        .send()
        .await
        .expect("POST");
    assert_eq!(unsaid.status(), 403);
    // The same CSRF value, another session: the token does not fit.
    let mut other_session = Browser::new(&app);
    other_session.sign_in(&user.email).await;
    other_session
        .cookies
        .insert("payg_csrf".to_owned(), browser.cookies["payg_csrf"].clone());
    let stale = other_session
        .post_form("/console/keys", &[("csrf", &token), ("name", "forged")])
        .await;
    assert_eq!(stale.status(), 403, "a token rendered for the session before");

    let keys = app.get_json("/api/v1/api-keys", &user.token).await;
    assert_eq!(
        keys["api_keys"].as_array().expect("keys").len(),
        0,
        "no key was created"
    );
    // The right token, same site: works.
    let ok = browser
        .post_form("/console/keys", &[("csrf", &token), ("name", "mine")])
        .await;
    assert_eq!(ok.status(), 200);
    let keys = app.get_json("/api/v1/api-keys", &user.token).await;
    assert_eq!(keys["api_keys"].as_array().expect("keys").len(), 1);
}

#[tokio::test]
async fn a_key_made_in_the_console_is_shown_once_meters_calls_and_is_revoked_there() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&user.email).await;
    let res = browser
        .submit("/console/keys", "/console/keys", &[("name", "ci")])
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers().get(header::CACHE_CONTROL).expect("cache"), "no-store");
    let body = res.text().await.expect("body");
    let start = body.find("payg_").expect("the key is shown");
    let key: String = body[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let (_, again) = browser.get_text("/console/keys").await;
    assert!(!again.contains(&key), "the key is shown once");

    for _ in 0..3 {
        let res = app
            .client
            .get(app.url("/api/v1/tools/uuid"))
            .header("x-api-key", &key)
            .send()
            .await
            .expect("call");
        assert_eq!(res.status(), 200);
    }
    app.flush_meter().await;
    let current = app.get_json("/api/v1/billing/current", &user.token).await;
    let (_, page) = browser.get_text("/console").await;
    assert!(page.contains(r#"id="current-calls">3<"#), "{page}");
    let total = format!(
        "{} {}",
        current["total"].as_str().expect("total"),
        current["currency"].as_str().expect("currency")
    );
    assert!(page.contains(&total), "the API's total {total} on the page");

    let keys = app.get_json("/api/v1/api-keys", &user.token).await;
    let id = keys["api_keys"][0]["id"].as_str().expect("id").to_owned();
    let res = browser
        .submit("/console/keys", &format!("/console/keys/{id}/revoke"), &[])
        .await;
    assert_eq!(res.status(), 303);
    let refused = app
        .client
        .get(app.url("/api/v1/tools/uuid"))
        .header("x-api-key", &key)
        .send()
        .await
        .expect("call");
    assert_eq!(refused.status(), 401, "revoked at once");
    // Someone else's key id is not found.
    let other = app.new_user().await;
    let theirs: Value = app
        .post_auth("/api/v1/api-keys", &other.token, &serde_json::json!({"name": "theirs"}))
        .await
        .json()
        .await
        .expect("json");
    let res = browser
        .submit(
            "/console/keys",
            &format!("/console/keys/{}/revoke", theirs["id"].as_str().expect("id")),
            &[],
        )
        .await;
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn pages_follow_the_apis_404_and_403_rules() {
    let app = TestApp::spawn().await;
    let consumer = app.new_user().await;
    let finance = app.user_with_role("finance").await;
    let other = app.new_user().await;
    // An invoice of the other user's.
    seed_last_month(&app, other.id, 10, 0).await;
    let period = app.state.current_period().previous().to_string();
    let closed = app
        .post_auth(
            &format!("/api/v1/finance/periods/{period}/close"),
            &finance.token,
            &Value::Null,
        )
        .await;
    assert_eq!(closed.status(), 200);
    let invoices = app.get_json("/api/v1/invoices", &other.token).await;
    let id = invoices["invoices"][0]["id"].as_str().expect("an invoice").to_owned();

    let mut as_consumer = Browser::new(&app);
    as_consumer.sign_in(&consumer.email).await;
    for path in [
        format!("/console/invoices/{id}"),
        format!("/console/invoices/{id}/print"),
        "/console/invoices/not-a-uuid".to_owned(),
    ] {
        let (status, body) = as_consumer.get_text(&path).await;
        assert_eq!(status, 404, "{path}");
        assert!(!body.contains(&other.email), "{path} shows nothing of the other user");
    }
    for path in [
        "/console/finance",
        &format!("/console/finance/invoices/{id}"),
        "/console/admin",
        "/console/admin/users",
    ] {
        assert_eq!(as_consumer.get(path).await.status(), 403, "{path}");
    }
    let res = as_consumer
        .submit(
            "/console/keys",
            &format!("/console/finance/periods/{period}/close"),
            &[("confirm", "yes")],
        )
        .await;
    assert_eq!(res.status(), 403);

    let mut as_other = Browser::new(&app);
    as_other.sign_in(&other.email).await;
    let (status, body) = as_other.get_text(&format!("/console/invoices/{id}")).await;
    assert_eq!(status, 200);
    let total = invoices["invoices"][0]["total"].as_str().expect("total");
    assert!(body.contains(&format!("{total} USD")), "the API's total");

    let mut as_finance = Browser::new(&app);
    as_finance.sign_in(&finance.email).await;
    assert_eq!(
        as_finance
            .get(&format!("/console/finance/invoices/{id}"))
            .await
            .status(),
        200
    );
    assert_eq!(
        as_finance.get("/console/admin").await.status(),
        403,
        "finance is not admin"
    );
}

#[tokio::test]
async fn the_usage_page_charts_this_months_days_and_shows_a_month_seeded_without_days_by_its_total() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    for path in [
        "/api/v1/tools/uuid",
        "/api/v1/tools/uuid",
        "/api/v1/tools/uuid",
        "/api/v1/tools/time",
    ] {
        assert_eq!(app.get_auth(path, &user.token).await.status(), 200, "{path}");
    }
    app.flush_meter().await;
    // Last month, as `.ci/run` seeds it: a monthly row without days.
    seed_last_month(&app, user.id, 10, 0).await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&user.email).await;

    let (status, page) = browser.get_text("/console/usage").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(r#"<svg class="chart""#), "{page}");
    assert!(page.contains(r#"id="daily-total">4 calls"#), "{page}");
    assert!(!page.contains(r#"id="monthly-only""#), "{page}");
    let (status, page) = browser.get_text("/console/usage?api=tools-time").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(r#"id="daily-total">1 calls"#), "{page}");

    let last_month = app.state.current_period().previous();
    let (status, page) = browser.get_text(&format!("/console/usage?period={last_month}")).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(r#"id="monthly-only""#), "{page}");
    assert!(page.contains("10 calls"), "its monthly total: {page}");
    assert!(!page.contains(r#"<svg class="chart""#), "{page}");
    // The other API has no calls that month, so no line that lacks days.
    let (_, page) = browser
        .get_text(&format!("/console/usage?period={last_month}&api=tools-time"))
        .await;
    assert!(!page.contains(r#"id="monthly-only""#), "{page}");

    let (status, _) = browser.get_text("/console/usage?api=no-such-api").await;
    assert_eq!(status, 404, "an API the catalog lacks");
}

#[tokio::test]
async fn finance_closes_a_past_month_only_after_confirming_and_never_this_one() {
    let app = TestApp::spawn().await;
    let finance = app.user_with_role("finance").await;
    let consumer = app.new_user().await;
    seed_last_month(&app, consumer.id, 1500, 10).await;
    let last = app.state.current_period().previous().to_string();
    let mut browser = Browser::new(&app);
    browser.sign_in(&finance.email).await;
    let page = format!("/console/finance/periods/{last}");
    let action = format!("{page}/close");
    let unconfirmed = browser.submit(&page, &action, &[]).await;
    assert_eq!(unconfirmed.status(), 400);
    assert_eq!(
        app.get_json("/api/v1/invoices", &consumer.token).await["invoices"]
            .as_array()
            .map(Vec::len),
        Some(0),
        "nothing issued without the confirmation"
    );
    let this = app.state.current_period().to_string();
    let open = browser
        .submit(
            &page,
            &format!("/console/finance/periods/{this}/close"),
            &[("confirm", "yes")],
        )
        .await;
    assert_eq!(open.status(), 409, "the current month cannot be closed");
    let closed = browser.submit(&page, &action, &[("confirm", "yes")]).await;
    assert_eq!(closed.status(), 303);
    let invoices = app.get_json("/api/v1/invoices", &consumer.token).await;
    assert_eq!(invoices["invoices"][0]["total"], "1.49");
    let (_, reconciliation) = browser.get_text(&page).await;
    assert!(reconciliation.contains("1.49 USD"), "{reconciliation}");
    let id = invoices["invoices"][0]["id"].as_str().expect("id").to_owned();
    let (_, invoice) = browser.get_text(&format!("/console/finance/invoices/{id}")).await;
    assert!(invoice.contains("Amount due"), "{invoice}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finance_adds_credit_in_the_console_and_the_consumer_sees_it_drawn() {
    let app = TestApp::spawn().await;
    let finance = app.user_with_role("finance").await;
    let consumer = app.new_user().await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&finance.email).await;
    let find = format!("/console/finance/credit?user={}", consumer.email);
    let (status, page) = browser.get_text(&find).await;
    assert_eq!(status, 200);
    assert!(page.contains("Add credit"), "{page}");
    let action = format!("/console/finance/credit/{}", consumer.id);
    let fields = [("amount", "2.50"), ("reference", "console-wire-1")];
    let res = browser.submit(&find, &action, &fields).await;
    assert_eq!(res.status(), 303);
    assert!(location(&res).ends_with("done=added"), "{}", location(&res));
    let again = browser.submit(&find, &action, &fields).await;
    assert!(
        location(&again).ends_with("done=duplicate"),
        "the same reference adds nothing"
    );
    let bad = browser
        .submit(&find, &action, &[("amount", "-1"), ("reference", "console-wire-2")])
        .await;
    assert_eq!(bad.status(), 400);

    for _ in 0..10 {
        assert_eq!(app.get_auth("/api/v1/tools/uuid", &consumer.token).await.status(), 200);
    }
    app.flush_meter().await;
    let mut as_consumer = Browser::new(&app);
    as_consumer.sign_in(&consumer.email).await;
    let (status, mine) = as_consumer.get_text("/console/credit").await;
    assert_eq!(status, 200);
    assert!(mine.contains("2.49 USD"), "2.50 less 10 calls at 0.001: {mine}");
    assert!(mine.contains("console-wire-1") && mine.contains("Usage "), "{mine}");
    let (status, _) = as_consumer.get_text(&find).await;
    assert_eq!(status, 403, "finance pages stay finance's");
}

#[tokio::test]
async fn a_consumer_sets_and_removes_their_spending_cap_in_the_console() {
    let app = TestApp::spawn().await;
    let consumer = app.new_user().await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&consumer.email).await;
    let (status, page) = browser.get_text("/console/credit").await;
    assert_eq!(status, 200);
    assert!(page.contains("Spending cap") && page.contains("no cap"), "{page}");

    let res = browser
        .submit("/console/credit", "/console/credit/cap", &[("amount", "12.5")])
        .await;
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), "/console/credit?done=cap-set");
    let cap = app.get_json("/api/v1/billing/cap", &consumer.token).await;
    assert_eq!(cap["user_cap"], "12.50", "{cap}");
    assert_eq!(cap["amount"], "12.50", "{cap}");
    assert_eq!(cap["finance_cap"], Value::Null, "{cap}");
    let (_, page) = browser.get_text("/console/credit?done=cap-set").await;
    assert!(page.contains("Your spending cap is set."), "{page}");
    assert!(page.contains("12.50 USD"), "the cap in force: {page}");
    assert!(page.contains("<dd id=\"cap-set-by\">you</dd>"), "{page}");

    // Not a decimal as the API reads one: refused, shown, nothing changes.
    for bad in ["1e1", "-1", "3.999"] {
        let res = browser
            .submit("/console/credit", "/console/credit/cap", &[("amount", bad)])
            .await;
        assert_eq!(res.status(), 400, "{bad}");
        let body = res.text().await.expect("body");
        assert!(
            body.contains("Spending cap") && body.contains("notice error"),
            "{bad}: {body}"
        );
    }
    let cap = app.get_json("/api/v1/billing/cap", &consumer.token).await;
    assert_eq!(cap["user_cap"], "12.50", "{cap}");

    let res = browser
        .submit("/console/credit", "/console/credit/cap", &[("amount", "")])
        .await;
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), "/console/credit?done=cap-removed");
    let cap = app.get_json("/api/v1/billing/cap", &consumer.token).await;
    assert_eq!(cap["user_cap"], Value::Null, "{cap}");
    assert_eq!(cap["amount"], Value::Null, "{cap}");
}

#[tokio::test]
async fn finance_caps_a_user_prepaid_only_in_the_console_and_the_user_cannot_raise_it() {
    let app = TestApp::spawn().await;
    let finance = app.user_with_role("finance").await;
    let consumer = app.new_user().await;
    let mut as_finance = Browser::new(&app);
    as_finance.sign_in(&finance.email).await;
    let find = format!("/console/finance/credit?user={}", consumer.email);
    let (status, page) = as_finance.get_text(&find).await;
    assert_eq!(status, 200);
    assert!(page.contains("Spending cap") && page.contains("Prepaid only"), "{page}");
    let action = format!("/console/finance/credit/{}/cap", consumer.id);
    let res = as_finance
        .submit(&find, &action, &[("amount", "5"), ("prepaid_only", "yes")])
        .await;
    assert_eq!(res.status(), 303);
    assert!(location(&res).ends_with("done=cap"), "{}", location(&res));
    let cap = app.get_json("/api/v1/billing/cap", &consumer.token).await;
    assert_eq!(cap["finance_cap"], "5.00", "{cap}");
    assert_eq!(cap["amount"], "5.00", "{cap}");
    assert_eq!(cap["prepaid_only"], true, "{cap}");
    let (_, page) = as_finance.get_text(&location(&res)).await;
    assert!(page.contains("Spending cap saved."), "{page}");
    assert!(
        page.contains("<dd id=\"cap-finance\"><span class=\"money\">5.00 USD"),
        "{page}"
    );

    // The user may not raise finance's cap, nor remove it.
    let mut as_consumer = Browser::new(&app);
    as_consumer.sign_in(&consumer.email).await;
    let (_, mine) = as_consumer.get_text("/console/credit").await;
    assert!(mine.contains("<dd id=\"cap-set-by\">finance</dd>"), "{mine}");
    assert!(mine.contains("yes: calls stop"), "prepaid-only is shown: {mine}");
    for amount in ["6", ""] {
        let res = as_consumer
            .submit("/console/credit", "/console/credit/cap", &[("amount", amount)])
            .await;
        assert_eq!(res.status(), 409, "{amount:?}");
        let body = res.text().await.expect("body");
        assert!(body.contains("notice error"), "{body}");
        assert!(body.contains("finance set a cap of 5.00"), "{body}");
    }
    let cap = app.get_json("/api/v1/billing/cap", &consumer.token).await;
    assert_eq!(cap["user_cap"], Value::Null, "{cap}");
    assert_eq!(cap["amount"], "5.00", "{cap}");
    // Lowering it is theirs to do.
    let res = as_consumer
        .submit("/console/credit", "/console/credit/cap", &[("amount", "4")])
        .await;
    assert_eq!(res.status(), 303);
    let cap = app.get_json("/api/v1/billing/cap", &consumer.token).await;
    assert_eq!(
        (&cap["user_cap"], &cap["amount"]),
        (&"4.00".into(), &"4.00".into()),
        "{cap}"
    );

    // Finance removes its cap and prepaid-only (the box unticked).
    let res = as_finance.submit(&find, &action, &[("amount", "")]).await;
    assert_eq!(res.status(), 303);
    let cap = app.get_json("/api/v1/billing/cap", &consumer.token).await;
    assert_eq!(cap["finance_cap"], Value::Null, "{cap}");
    assert_eq!(cap["prepaid_only"], false, "{cap}");
    assert_eq!(cap["amount"], "4.00", "the user's own cap stays: {cap}");
}

#[tokio::test]
async fn cap_forms_without_their_csrf_token_or_from_a_consumer_change_nothing() {
    let app = TestApp::spawn().await;
    let consumer = app.new_user().await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&consumer.email).await;
    let _ = browser.csrf("/console/credit").await;

    let none = browser.post_form("/console/credit/cap", &[("amount", "1")]).await;
    assert_eq!(none.status(), 403);
    assert!(none.text().await.expect("body").contains("csrf_failed"));
    let action = format!("/console/finance/credit/{}/cap", consumer.id);
    let none = browser
        .post_form(&action, &[("amount", "1"), ("prepaid_only", "yes")])
        .await;
    assert_eq!(none.status(), 403);

    // With the token: a consumer is not finance.
    let res = browser
        .submit("/console/credit", &action, &[("amount", "1"), ("prepaid_only", "yes")])
        .await;
    assert_eq!(res.status(), 403);
    let body = res.text().await.expect("body");
    assert!(body.contains("forbidden"), "{body}");

    let cap = app.get_json("/api/v1/billing/cap", &consumer.token).await;
    assert_eq!(cap["user_cap"], Value::Null, "{cap}");
    assert_eq!(cap["finance_cap"], Value::Null, "{cap}");
    assert_eq!(cap["prepaid_only"], false, "{cap}");
}

#[tokio::test]
async fn signing_out_on_one_instance_ends_the_console_session_on_another() {
    let db = TestDb::new().await;
    let prefix = format!("payg-test-{}:", uuid::Uuid::new_v4().simple());
    // Standings kept long: only the push can end the session on B in time.
    let spawn = || {
        TestApp::builder()
            .instance_of(&db, &prefix)
            .env("PAYG_AUTH_CACHE_MS", "600000")
            .spawn()
    };
    let a = spawn().await;
    let b = spawn().await;
    let user = a.new_user().await;
    let mut on_a = Browser::new(&a);
    on_a.sign_in(&user.email).await;
    // The same cookies, on the other instance (a load balancer may send
    // the browser to either).
    let kept = on_a.cookies.clone();
    let mut on_b = Browser::at(&b.address);
    on_b.cookies = kept.clone();
    assert_eq!(on_b.get("/console/keys").await.status(), 200);

    let res = on_a.submit("/console/keys", "/console/sign-out", &[]).await;
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), "/console/sign-in");
    assert!(!on_a.cookies.contains_key("payg_session"), "the cookies are cleared");
    // A copy of the cookies from before (kept by the browser of a careless
    // shared computer, or stolen) is refused on B.
    let ended = eventually(Duration::from_secs(10), || {
        let mut on_b = Browser::at(&b.address);
        on_b.cookies = kept.clone();
        async move { on_b.get("/console/keys").await.status() == 303 }
    })
    .await;
    assert!(ended, "the session ended on the other instance too");
}

#[tokio::test]
async fn the_sign_in_form_is_behind_the_login_lockout() {
    let app = TestApp::spawn().await;
    let user: Registered = app.new_user().await;
    let mut browser = Browser::new(&app);
    for _ in 0..10 {
        let res = browser
            .submit(
                "/console/sign-in",
                "/console/sign-in",
                &[("email", &user.email), ("password", "wrong password!")],
            )
            .await;
        assert_eq!(res.status(), 401);
    }
    let locked = browser
        .submit(
            "/console/sign-in",
            "/console/sign-in",
            &[("email", &user.email), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(locked.status(), 429, "the right password is refused while locked");
    assert!(locked.headers().contains_key(header::RETRY_AFTER));
    assert!(!browser.cookies.contains_key("payg_session"));
}

#[tokio::test]
async fn an_expired_access_cookie_is_renewed_from_the_refresh_cookie_and_a_revoked_session_is_not() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&user.email).await;
    let first = browser.cookies["payg_session"].clone();
    // As if the access token had expired: only the refresh cookie is left.
    browser.cookies.remove("payg_session");
    assert_eq!(browser.get("/console/keys").await.status(), 200);
    let renewed = browser
        .cookies
        .get("payg_session")
        .cloned()
        .expect("a new access cookie");
    assert_ne!(renewed, first);
    // Signing out revokes the refresh token too: a copy of the old cookies
    // cannot renew.
    let copy = browser.cookies.clone();
    assert_eq!(
        browser.submit("/console/keys", "/console/sign-out", &[]).await.status(),
        303
    );
    let mut thief = Browser::new(&app);
    thief.cookies = copy;
    thief.cookies.remove("payg_session");
    let res = thief.get("/console/keys").await;
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), "/console/sign-in?next=%2Fconsole%2Fkeys");
}

#[tokio::test]
async fn an_admin_finds_a_user_by_email_and_changes_their_role_but_not_their_own() {
    let app = TestApp::spawn().await;
    let admin = app.user_with_role("admin").await;
    let consumer = app.new_user().await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&admin.email).await;
    let part = &consumer.email[..12];
    let (status, page) = browser
        .get_text(&format!("/console/admin/users?email={}", part.to_uppercase()))
        .await;
    assert_eq!(status, 200);
    assert!(page.contains(&consumer.email), "found in any case");
    assert_eq!(
        page.matches(&admin.email).count(),
        1,
        "only in the header: only matches are listed"
    );

    let res = browser
        .submit(
            "/console/admin/users",
            &format!("/console/admin/users/{}", consumer.id),
            &[("role", "finance"), ("status", "active")],
        )
        .await;
    assert_eq!(res.status(), 303);
    let res = app.get_auth("/api/v1/finance/invoices", &consumer.token).await;
    assert_eq!(res.status(), 200, "the new role applies on the next call");

    let own = browser
        .submit(
            "/console/admin/users",
            &format!("/console/admin/users/{}", admin.id),
            &[("role", "consumer"), ("status", "active")],
        )
        .await;
    assert_eq!(own.status(), 409);
    let res = app.get_auth("/api/v1/admin/users", &admin.token).await;
    assert_eq!(res.status(), 200, "still an admin");
}

#[tokio::test]
async fn behind_a_trusted_tls_proxy_cookies_are_secure_and_the_forwarded_origin_is_the_consoles() {
    let app = TestApp::builder()
        .env("PAYG_TRUSTED_PROXIES", "127.0.0.1/32")
        .spawn()
        .await;
    let user = app.new_user().await;
    let mut browser = Browser::new(&app);
    let page = browser
        .client
        .get(format!("{}/console/sign-in", browser.base))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "billing.example.com")
        .send()
        .await
        .expect("GET");
    browser.keep(&page);
    let token = csrf_in(&page.text().await.expect("body"));
    let sign_in = |origin: &'static str| {
        browser
            .client
            .post(format!("{}/console/sign-in", browser.base))
            .header(header::COOKIE, browser.cookie_header())
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "billing.example.com")
            .header(header::ORIGIN, origin)
            .form(&[
                ("csrf", token.as_str()),
                ("email", user.email.as_str()),
                ("password", PASSWORD),
            ])
            .send()
    };
    // The address payg listens on is not the origin the browser used.
    assert_eq!(sign_in("http://billing.example.com").await.expect("POST").status(), 403);
    let res = sign_in("https://billing.example.com").await.expect("POST");
    assert_eq!(res.status(), 303);
    let cookies: Vec<String> = res
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().expect("ascii").to_owned())
        .collect();
    assert!(cookies.iter().any(|c| c.starts_with("payg_session=")));
    for cookie in &cookies {
        assert!(cookie.contains("; Secure"), "over TLS every cookie is Secure: {cookie}");
    }
    assert_eq!(
        res.headers()
            .get(header::STRICT_TRANSPORT_SECURITY)
            .expect("HSTS over TLS"),
        "max-age=31536000"
    );
    let plain = Browser::new(&app).get("/console/sign-in").await;
    assert!(
        !plain.headers().contains_key(header::STRICT_TRANSPORT_SECURITY),
        "not over plain HTTP"
    );
}

#[tokio::test]
async fn after_signing_in_the_browser_goes_only_to_a_console_page() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    for (next, expected) in [
        ("/console/keys", "/console/keys"),
        ("//evil.example/console", "/console"),
        ("https://evil.example/", "/console"),
        ("/console\\@evil.example", "/console"),
        ("/consolefoo", "/console"),
        ("/console/é", "/console"),
    ] {
        let mut browser = Browser::new(&app);
        let res = browser
            .submit(
                "/console/sign-in",
                "/console/sign-in",
                &[("email", &user.email), ("password", PASSWORD), ("next", next)],
            )
            .await;
        assert_eq!(res.status(), 303, "{next}");
        assert_eq!(location(&res), expected, "{next}");
    }
}

#[tokio::test]
async fn bad_query_strings_and_pages_beyond_reach_get_an_html_page_not_a_panic() {
    let app = TestApp::spawn().await;
    let finance = app.user_with_role("finance").await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&finance.email).await;
    for path in [
        "/console/finance/invoices?page=9223372036854775807",
        "/console/finance/invoices?page=x",
        "/console/finance/invoices?period=2026-13",
        "/console/finance/periods/nope",
    ] {
        let res = browser.get(path).await;
        assert_eq!(res.status(), 400, "{path}");
        let kind = res
            .headers()
            .get(header::CONTENT_TYPE)
            .expect("type")
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(kind.starts_with("text/html"), "{path}: {kind}");
    }
}

#[tokio::test]
async fn a_sign_out_redis_cannot_record_says_so_keeps_the_cookies_and_its_retry_ends_the_session() {
    let mut redis = crate::helpers::OwnRedis::start(crate::helpers::free_port());
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let app = TestApp::builder().env("REDIS_URL", &redis_url).spawn().await;
    let user = app.new_user().await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&user.email).await;
    let token = browser.csrf("/console/keys").await;
    let kept = browser.cookies.clone();

    redis.stop();
    let res = browser.post_form("/console/sign-out", &[("csrf", &token)]).await;
    assert_eq!(res.status(), 503, "the deny-list entry could not be written");
    assert!(res.text().await.expect("body").contains("logout_incomplete"));
    assert_eq!(
        browser.cookies, kept,
        "the cookies stay, so signing out again can finish"
    );

    let _redis = crate::helpers::OwnRedis::start(redis.port);
    let ended = eventually(Duration::from_secs(10), || {
        let mut retry = Browser::new(&app);
        retry.cookies = kept.clone();
        let token = token.clone();
        async move { retry.post_form("/console/sign-out", &[("csrf", &token)]).await.status() == 303 }
    })
    .await;
    assert!(ended, "signing out again once Redis is back finishes the job");
    let mut thief = Browser::new(&app);
    thief.cookies = kept;
    assert_eq!(
        thief.get("/console/keys").await.status(),
        303,
        "the old cookies no longer work"
    );
}

#[tokio::test]
async fn an_admin_adds_a_gateway_api_changes_its_upstream_rotates_its_secret_and_schedules_a_price() {
    let app = TestApp::spawn().await;
    let admin = app.user_with_role("admin").await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&admin.email).await;
    let res = browser
        .submit(
            "/console/admin",
            "/console/admin/apis",
            &[
                ("slug", "weather"),
                ("name", "Weather"),
                ("method", "*"),
                ("route", "/weather"),
                ("url", "http://127.0.0.1:9"),
                ("description", "Forecasts"),
            ],
        )
        .await;
    assert_eq!(res.status(), 200);
    let body = res.text().await.expect("body");
    assert!(body.contains(r#"id="signing-secret""#), "the secret is shown once");
    let apis = app.get_json("/api/v1/admin/apis", &admin.token).await;
    let weather = apis["apis"]
        .as_array()
        .expect("apis")
        .iter()
        .find(|a| a["slug"] == "weather")
        .expect("created")
        .clone();
    let id = weather["id"].as_i64().expect("id");
    let page = format!("/console/admin/apis/{id}");

    let res = browser
        .submit(
            &page,
            &format!("{page}/upstream"),
            &[
                ("url", "http://127.0.0.1:10"),
                ("timeout_ms", "5000"),
                ("connect_timeout_ms", "1000"),
                ("max_body_bytes", "1024"),
            ],
        )
        .await;
    assert_eq!(res.status(), 303);
    let bad = browser
        .submit(
            &page,
            &format!("{page}/upstream"),
            &[
                ("url", "http://127.0.0.1:10"),
                ("timeout_ms", "0"),
                ("connect_timeout_ms", "1000"),
                ("max_body_bytes", "1024"),
            ],
        )
        .await;
    assert_eq!(bad.status(), 400);
    let apis = app.get_json("/api/v1/admin/apis", &admin.token).await;
    let upstream = apis["apis"]
        .as_array()
        .expect("apis")
        .iter()
        .find(|a| a["slug"] == "weather")
        .expect("still there")["upstream"]
        .clone();
    assert_eq!(upstream["url"], "http://127.0.0.1:10");
    assert_eq!(upstream["timeout_ms"], 5000);

    let res = browser.submit(&page, &format!("{page}/signing-secret"), &[]).await;
    assert_eq!(res.status(), 200);
    assert!(res.text().await.expect("body").contains(r#"id="signing-secret""#));

    let next = app.state.current_period().next().to_string();
    let res = browser
        .submit(
            &page,
            &format!("{page}/prices"),
            &[("unit_price", "0.25"), ("free_calls", "10"), ("effective_from", &next)],
        )
        .await;
    assert_eq!(res.status(), 303);
    let (_, history) = browser.get_text(&page).await;
    assert!(
        history.contains("0.25 USD") && history.contains("scheduled"),
        "{history}"
    );
    let lenient = browser
        .submit(&page, &format!("{page}/prices"), &[("unit_price", "1e1")])
        .await;
    assert_eq!(lenient.status(), 400, "amounts are read as the API reads them");

    // The scheduled price is cancelled from its row: with the form's CSRF
    // token, by an admin only.
    let api = page.rsplit('/').next().expect("id").to_owned();
    let prices = app
        .get_json(&format!("/api/v1/admin/apis/{api}/prices"), &admin.token)
        .await;
    let scheduled = prices["prices"]
        .as_array()
        .expect("prices")
        .iter()
        .find(|p| p["status"] == "scheduled")
        .expect("the price scheduled above")["id"]
        .clone();
    let cancel = format!("{page}/prices/{scheduled}/cancel");
    assert!(history.contains(&cancel), "a cancel form on its row: {history}");
    let forged = browser.post_form(&cancel, &[]).await;
    assert_eq!(forged.status(), 403, "no CSRF token");
    let consumer = app.new_user().await;
    let mut as_consumer = Browser::new(&app);
    as_consumer.sign_in(&consumer.email).await;
    let refused = as_consumer.submit("/console", &cancel, &[]).await;
    assert_eq!(refused.status(), 403, "admins only");
    let res = browser.submit(&page, &cancel, &[]).await;
    assert_eq!(res.status(), 303);
    let after = app
        .get_json(&format!("/api/v1/admin/apis/{api}/prices"), &admin.token)
        .await;
    assert!(
        after["prices"]
            .as_array()
            .expect("prices")
            .iter()
            .all(|p| p["id"] != scheduled),
        "{after}"
    );
    let (_, cancelled) = browser.get_text(&format!("{page}?done=cancelled")).await;
    assert!(cancelled.contains("Scheduled price cancelled."), "{cancelled}");
}

#[tokio::test]
async fn a_renewal_refused_by_the_address_bucket_keeps_the_session_cookies() {
    // Three credential attempts from this address: registering, the API
    // login, the console sign-in. The renewal is the fourth.
    let app = TestApp::builder()
        .env("PAYG_CLIENT_AUTH_PER_MINUTE", "1")
        .env("PAYG_CLIENT_AUTH_BURST", "3")
        .spawn()
        .await;
    let user = app.new_user().await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&user.email).await;
    browser.cookies.remove("payg_session");
    let kept = browser.cookies.clone();
    let res = browser.get("/console/keys").await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key(header::RETRY_AFTER));
    assert_eq!(browser.cookies, kept, "a throttled renewal does not sign anyone out");
}

#[tokio::test]
async fn signing_out_with_an_expired_access_cookie_ends_the_session_by_its_refresh_cookie() {
    // Access tokens live a second (and are accepted 5 s past it, the
    // verifier's skew).
    let app = TestApp::builder().env("JWT_TTL", "1s").spawn().await;
    let user = app.new_user().await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&user.email).await;
    let token = browser.csrf("/console/keys").await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let kept = browser.cookies.clone();
    let res = browser.post_form("/console/sign-out", &[("csrf", &token)]).await;
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), "/console/sign-in");
    let mut thief = Browser::new(&app);
    thief.cookies = kept;
    let res = thief.get("/console/keys").await;
    assert_eq!(res.status(), 303, "the refresh cookie no longer renews");
}

#[tokio::test]
async fn signing_in_over_a_held_session_ends_that_session() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&user.email).await;
    let before = browser.cookies.clone();
    browser.sign_in(&user.email).await;
    let mut old = Browser::new(&app);
    old.cookies = before;
    old.cookies.remove("payg_session");
    assert_eq!(
        old.get("/console/keys").await.status(),
        303,
        "the earlier session was ended"
    );
    assert_eq!(browser.get("/console/keys").await.status(), 200, "the new one works");
}

#[tokio::test]
async fn a_page_asked_for_without_a_session_is_where_signing_in_leads() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    let mut browser = Browser::new(&app);
    let wanted = "/console/usage?period=2026-11&api=tools-uuid";
    let res = browser.get(wanted).await;
    assert_eq!(res.status(), 303);
    let sign_in = location(&res);
    let (status, form) = browser.get_text(&sign_in).await;
    assert_eq!(status, 200);
    let token = csrf_in(&form);
    let marker = "name=\"next\" value=\"";
    let start = form.find(marker).expect("the form carries next") + marker.len();
    let next = form[start..].split('"').next().expect("value").replace("&amp;", "&");
    assert_eq!(next, wanted);
    let res = browser
        .post_form(
            "/console/sign-in",
            &[
                ("csrf", &token),
                ("email", &user.email),
                ("password", PASSWORD),
                ("next", &next),
            ],
        )
        .await;
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), wanted);
}

/// The app the webhook pages are tested on: consumers may point endpoints
/// at 127.0.0.1 (nothing listens on port 9; no event is sent in these
/// tests).
async fn webhook_app() -> TestApp {
    TestApp::builder()
        .env("PAYG_WEBHOOK_ALLOWED_HOSTS", "127.0.0.1")
        .spawn()
        .await
}

const HOOK_URL: &str = "http://127.0.0.1:9/hook";

/// The signing secret a page shows (the value of its read-only field).
fn secret_in(body: &str) -> String {
    let marker = "id=\"webhook-secret\" type=\"text\" readonly value=\"";
    let start = body.find(marker).expect("the secret is shown") + marker.len();
    let secret = body[start..].split('"').next().expect("value").to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    secret
}

#[tokio::test]
async fn a_consumer_sets_alerts_and_adds_disables_enables_and_rotates_a_webhook_endpoint_in_the_console() {
    let app = webhook_app().await;
    let user = app.new_user().await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&user.email).await;
    let (status, page) = browser.get_text("/console/webhooks").await;
    assert_eq!(status, 200);
    assert!(
        page.contains(r#"<a href="/console/webhooks" aria-current="page">Webhooks</a>"#),
        "{page}"
    );
    assert!(
        page.contains("Usage alerts") && page.contains("No endpoints yet."),
        "{page}"
    );
    assert!(
        !page.contains("/console/admin/webhooks"),
        "no admin link for a consumer"
    );

    // Alerts: a list by commas and new lines, saved lowest first.
    let res = browser
        .submit(
            "/console/webhooks",
            "/console/webhooks/alerts",
            &[("thresholds", "20, 5\r\n100.5\n"), ("credits_low_below", "2")],
        )
        .await;
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), "/console/webhooks?done=alerts");
    let alerts = app.get_json("/api/v1/billing/alerts", &user.token).await;
    assert_eq!(
        alerts["thresholds"],
        serde_json::json!(["5.00", "20.00", "100.50"]),
        "{alerts}"
    );
    assert_eq!(alerts["credits_low_below"], "2.00", "{alerts}");
    let (_, page) = browser.get_text(&location(&res)).await;
    assert!(page.contains("Your alerts are saved."), "{page}");
    assert!(page.contains("100.50 USD") && page.contains("2.00 USD"), "{page}");

    // Refused as the API refuses it: shown again as sent, nothing changes.
    for (thresholds, below) in [("5, abc", ""), ("0", ""), ("5", "-1"), ("1.005", "")] {
        let res = browser
            .submit(
                "/console/webhooks",
                "/console/webhooks/alerts",
                &[("thresholds", thresholds), ("credits_low_below", below)],
            )
            .await;
        assert_eq!(res.status(), 400, "{thresholds:?} {below:?}");
        let body = res.text().await.expect("body");
        assert!(body.contains("notice error"), "{body}");
        assert!(body.contains(&format!(">{thresholds}</textarea>")), "{body}");
    }
    let unchanged = app.get_json("/api/v1/billing/alerts", &user.token).await;
    assert_eq!(unchanged, alerts);

    // Empty removes them.
    let res = browser
        .submit(
            "/console/webhooks",
            "/console/webhooks/alerts",
            &[("thresholds", ""), ("credits_low_below", "")],
        )
        .await;
    assert_eq!(res.status(), 303);
    let alerts = app.get_json("/api/v1/billing/alerts", &user.token).await;
    assert_eq!(alerts["thresholds"], serde_json::json!([]), "{alerts}");
    assert_eq!(alerts["credits_low_below"], Value::Null, "{alerts}");

    // An endpoint: its secret on the answer, once.
    let res = browser
        .submit(
            "/console/webhooks",
            "/console/webhooks",
            &[
                ("url", HOOK_URL),
                ("event_types", "invoice.paid"),
                ("event_types", "invoice.issued"),
                ("description", "billing system"),
            ],
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers().get(header::CACHE_CONTROL).expect("cache"), "no-store");
    assert!(res.headers().get(header::LOCATION).is_none());
    let body = res.text().await.expect("body");
    assert!(body.contains("Copy it now: it is not shown again."), "{body}");
    let secret = secret_in(&body);
    let hooks = app.get_json("/api/v1/webhooks", &user.token).await;
    let hooks = hooks.as_array().expect("endpoints");
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0]["url"], HOOK_URL);
    assert_eq!(
        hooks[0]["event_types"],
        serde_json::json!(["invoice.issued", "invoice.paid"])
    );
    assert_eq!(hooks[0]["description"], "billing system");
    assert_eq!(hooks[0]["enabled"], true);
    let id = hooks[0]["id"].as_str().expect("id").to_owned();
    let (_, list) = browser.get_text("/console/webhooks").await;
    assert!(
        !list.contains(&secret) && !list.contains("whsec_"),
        "shown once: {list}"
    );
    assert!(list.contains(HOOK_URL) && list.contains("invoice.issued"), "{list}");
    assert!(list.contains(r#"<span class="badge paid">enabled</span>"#), "{list}");

    // A URL the consumer may not use: refused, the form kept, nothing added.
    let res = browser
        .submit(
            "/console/webhooks",
            "/console/webhooks",
            &[
                ("url", "https://hooks.example.com/payg"),
                ("event_types", "credits.low"),
            ],
        )
        .await;
    assert_eq!(res.status(), 400);
    let body = res.text().await.expect("body");
    assert!(body.contains("notice error") && !body.contains("whsec_"), "{body}");
    assert!(body.contains(r#"value="https://hooks.example.com/payg""#), "{body}");
    assert!(
        body.contains(r#"value="credits.low" checked"#),
        "the ticked box stays ticked: {body}"
    );
    let hooks = app.get_json("/api/v1/webhooks", &user.token).await;
    assert_eq!(hooks.as_array().expect("endpoints").len(), 1);

    // Disabled from the list, enabled again from its own page.
    let enabled = format!("/console/webhooks/{id}/enabled");
    let res = browser
        .submit("/console/webhooks", &enabled, &[("enabled", "no"), ("back", "list")])
        .await;
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), "/console/webhooks?done=disabled");
    let hook = app.get_json(&format!("/api/v1/webhooks/{id}"), &user.token).await;
    assert_eq!(hook["enabled"], false, "{hook}");
    let (_, list) = browser.get_text(&location(&res)).await;
    assert!(list.contains(r#"<span class="badge issued">disabled</span>"#), "{list}");
    let endpoint_page = format!("/console/webhooks/{id}");
    let res = browser
        .submit(&endpoint_page, &enabled, &[("enabled", "yes"), ("back", "endpoint")])
        .await;
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), format!("{endpoint_page}?done=enabled"));
    let hook = app.get_json(&format!("/api/v1/webhooks/{id}"), &user.token).await;
    assert_eq!(hook["enabled"], true, "{hook}");
    assert_eq!(hook["previous_secret_expires_at"], Value::Null, "{hook}");

    // Rotated: a new secret, shown once; the old one signs for a while.
    let res = browser
        .submit(&endpoint_page, &format!("{endpoint_page}/rotate"), &[])
        .await;
    assert_eq!(res.status(), 200);
    let body = res.text().await.expect("body");
    assert!(body.contains("Copy it now: it is not shown again."), "{body}");
    let rotated = secret_in(&body);
    assert_ne!(rotated, secret);
    let hook = app.get_json(&format!("/api/v1/webhooks/{id}"), &user.token).await;
    assert!(hook["previous_secret_expires_at"].is_string(), "{hook}");
    for path in ["/console/webhooks", endpoint_page.as_str()] {
        let (status, body) = browser.get_text(path).await;
        assert_eq!(status, 200, "{path}");
        assert!(!body.contains("whsec_"), "{path}: {body}");
    }
    let (_, log) = browser.get_text(&endpoint_page).await;
    assert!(log.contains("No deliveries yet."), "{log}");
    assert!(log.contains("Previous secret"), "{log}");
}

#[tokio::test]
async fn a_consumer_cannot_open_the_admin_webhooks_and_webhook_forms_without_their_csrf_token_change_nothing() {
    let app = webhook_app().await;
    let user = app.new_user().await;
    let admin = app.user_with_role("admin").await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&user.email).await;
    // One endpoint of the user's, made through the API.
    let res = app
        .post_auth("/api/v1/webhooks", &user.token, &serde_json::json!({"url": HOOK_URL}))
        .await;
    assert_eq!(res.status(), 201);
    let made: Value = res.json().await.expect("json");
    let id = made["id"].as_str().expect("id").to_owned();

    assert_eq!(browser.get("/console/admin/webhooks").await.status(), 403);
    assert_eq!(
        browser.get(&format!("/console/admin/webhooks/{id}")).await.status(),
        403
    );
    let res = browser
        .submit("/console/webhooks", "/console/admin/webhooks", &[("url", HOOK_URL)])
        .await;
    assert_eq!(res.status(), 403, "admins only, token or not");

    let _ = browser.csrf("/console/webhooks").await;
    let forged: [(String, Vec<(&str, &str)>); 5] = [
        ("/console/webhooks".to_owned(), vec![("url", HOOK_URL)]),
        (
            "/console/webhooks/alerts".to_owned(),
            vec![("thresholds", "5"), ("credits_low_below", "1")],
        ),
        (format!("/console/webhooks/{id}/enabled"), vec![("enabled", "no")]),
        (format!("/console/webhooks/{id}/rotate"), vec![]),
        ("/console/admin/webhooks".to_owned(), vec![("url", HOOK_URL)]),
    ];
    for (action, fields) in &forged {
        let res = browser.post_form(action, fields).await;
        assert_eq!(res.status(), 403, "{action}");
        let body = res.text().await.expect("body");
        assert!(
            body.contains("csrf_failed") && !body.contains("whsec_"),
            "{action}: {body}"
        );
    }

    let hooks = app.get_json("/api/v1/webhooks", &user.token).await;
    let hooks = hooks.as_array().expect("endpoints");
    assert_eq!(hooks.len(), 1, "nothing added: {hooks:?}");
    assert_eq!(hooks[0]["enabled"], true, "not disabled");
    assert_eq!(hooks[0]["previous_secret_expires_at"], Value::Null, "not rotated");
    let alerts = app.get_json("/api/v1/billing/alerts", &user.token).await;
    assert_eq!(alerts["thresholds"], serde_json::json!([]), "{alerts}");
    assert_eq!(alerts["credits_low_below"], Value::Null, "{alerts}");
    let admin_hooks = app.get_json("/api/v1/admin/webhooks", &admin.token).await;
    assert_eq!(admin_hooks, serde_json::json!([]), "no admin endpoint");

    // Another user's endpoint is not found, its page or its forms.
    let mut stranger = Browser::new(&app);
    let other = app.new_user().await;
    stranger.sign_in(&other.email).await;
    assert_eq!(stranger.get(&format!("/console/webhooks/{id}")).await.status(), 404);
    let res = stranger
        .submit(
            "/console/webhooks",
            &format!("/console/webhooks/{id}/enabled"),
            &[("enabled", "no")],
        )
        .await;
    assert_eq!(res.status(), 404);
    let res = stranger
        .submit("/console/webhooks", &format!("/console/webhooks/{id}/rotate"), &[])
        .await;
    assert_eq!(res.status(), 404);
    let hook = app.get_json(&format!("/api/v1/webhooks/{id}"), &user.token).await;
    assert_eq!(hook["enabled"], true, "{hook}");
    assert_eq!(hook["previous_secret_expires_at"], Value::Null, "{hook}");
}

#[tokio::test]
async fn an_admin_adds_an_admin_webhook_endpoint_and_sees_its_empty_delivery_log() {
    let app = webhook_app().await;
    let admin = app.user_with_role("admin").await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&admin.email).await;
    let (status, page) = browser.get_text("/console/admin/webhooks").await;
    assert_eq!(status, 200);
    assert!(
        page.contains(r#"<a href="/console/admin/webhooks" aria-current="page">Admin webhooks</a>"#),
        "{page}"
    );
    assert!(
        page.contains("No endpoints yet.") && !page.contains("Usage alerts"),
        "{page}"
    );

    // No event type ticked: every type.
    let res = browser
        .submit(
            "/console/admin/webhooks",
            "/console/admin/webhooks",
            &[("url", HOOK_URL), ("description", "CRM")],
        )
        .await;
    assert_eq!(res.status(), 200);
    let body = res.text().await.expect("body");
    let secret = secret_in(&body);
    let hooks = app.get_json("/api/v1/admin/webhooks", &admin.token).await;
    let hooks = hooks.as_array().expect("endpoints");
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0]["url"], HOOK_URL);
    assert_eq!(hooks[0]["event_types"], serde_json::json!([]));
    let id = hooks[0]["id"].as_str().expect("id").to_owned();

    let (_, list) = browser.get_text("/console/admin/webhooks").await;
    assert!(!list.contains(&secret), "shown once");
    assert!(
        list.contains(&format!(r#"href="/console/admin/webhooks/{id}""#)) && list.contains(">all<"),
        "{list}"
    );
    let (status, log) = browser.get_text(&format!("/console/admin/webhooks/{id}")).await;
    assert_eq!(status, 200);
    assert!(log.contains(HOOK_URL) && log.contains("CRM"), "{log}");
    assert!(
        log.contains("0 deliveries") && log.contains("No deliveries yet."),
        "{log}"
    );

    // An admin endpoint is not among the admin's own, nor under their pages.
    let (_, own) = browser.get_text("/console/webhooks").await;
    assert!(own.contains("No endpoints yet."), "{own}");
    assert_eq!(browser.get(&format!("/console/webhooks/{id}")).await.status(), 404);
    let res = browser
        .submit(
            &format!("/console/admin/webhooks/{id}"),
            &format!(
                "/console/admin/webhooks/{id}/deliveries/{}/redeliver",
                uuid::Uuid::new_v4()
            ),
            &[],
        )
        .await;
    assert_eq!(res.status(), 404, "no such delivery");
}

#[tokio::test]
async fn a_failed_delivery_shows_its_last_attempt_in_the_log_and_is_redelivered_from_there() {
    let app = webhook_app().await;
    let user = app.new_user().await;
    let res = app
        .post_auth("/api/v1/webhooks", &user.token, &serde_json::json!({"url": HOOK_URL}))
        .await;
    assert_eq!(res.status(), 201);
    let made: Value = res.json().await.expect("json");
    let id = made["id"].as_str().expect("id").to_owned();
    // A delivery given up after three attempts (the dispatcher only takes
    // pending ones, so nothing moves it until it is redelivered).
    let (event, delivery) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    app.sql(&format!(
        "INSERT INTO outbound_events (id, event_type, user_id, dedupe_key, payload, created_at) \
           VALUES ('{event}', 'invoice.issued', '{user}', 'test:{event}', '{{}}', now()); \
         INSERT INTO webhook_deliveries (id, event_id, endpoint_id, event_type, state, attempts, \
           next_attempt_at, last_attempt_at, last_status, created_at) \
           VALUES ('{delivery}', '{event}', '{id}', 'invoice.issued', 'failed', 3, now(), now(), 500, now()); \
         INSERT INTO webhook_attempts (delivery_id, attempt, attempted_at, status, error, duration_ms) VALUES \
           ('{delivery}', 1, now(), NULL, 'connection refused', 2), \
           ('{delivery}', 2, now(), 503, NULL, 40), \
           ('{delivery}', 3, now(), 500, NULL, 35);",
        user = user.id,
    ))
    .await;

    let mut browser = Browser::new(&app);
    browser.sign_in(&user.email).await;
    let page = format!("/console/webhooks/{id}");
    let (status, log) = browser.get_text(&page).await;
    assert_eq!(status, 200);
    assert!(log.contains("1 delivery."), "{log}");
    assert!(log.contains(r#"<span class="badge failed">failed</span>"#), "{log}");
    assert!(
        log.contains(&event.to_string()) && log.contains("invoice.issued"),
        "{log}"
    );
    assert!(
        log.contains("HTTP 500") && !log.contains("HTTP 503"),
        "the last attempt: {log}"
    );
    let redeliver = format!("{page}/deliveries/{delivery}/redeliver");
    assert!(log.contains(&format!(r#"action="{redeliver}""#)), "{log}");

    // Another user cannot redeliver it.
    let other = app.new_user().await;
    let mut stranger = Browser::new(&app);
    stranger.sign_in(&other.email).await;
    let res = stranger.submit("/console/webhooks", &redeliver, &[]).await;
    assert_eq!(res.status(), 404);
    let [state, _] = app
        .sql_row(&format!(
            "SELECT state AS a, '' AS b FROM webhook_deliveries WHERE id = '{delivery}'"
        ))
        .await;
    assert_eq!(state, "failed");

    let res = browser.submit(&page, &redeliver, &[]).await;
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), format!("{page}?done=redelivered"));
    let (_, after) = browser.get_text(&location(&res)).await;
    assert!(after.contains("Queued to be sent again now"), "{after}");
}
