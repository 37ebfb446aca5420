//! Faults under load: PostgreSQL backends terminated while clients call.
//! A lost connection is the database being unavailable (503, retry shortly),
//! never an internal error (500).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp};

/// How long the load (and the terminations) run.
const LOAD: Duration = Duration::from_secs(3);
/// Every this often, every backend of the test database is terminated.
const KILL_EVERY: Duration = Duration::from_millis(150);
const CLIENTS: usize = 8;
/// Bounds each client loop however fast the server answers.
const MAX_REQUESTS_PER_CLIENT: usize = 2_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Route {
    Me,
    Usage,
    BillingCurrent,
    Invoices,
    ApiKeys,
    Login,
    Refresh,
    FinanceInvoices,
    ToolsUuid,
}

const ROUTES: [Route; 9] = [
    Route::Me,
    Route::Usage,
    Route::BillingCurrent,
    Route::Invoices,
    Route::ApiKeys,
    Route::Login,
    Route::Refresh,
    Route::FinanceInvoices,
    Route::ToolsUuid,
];

impl Route {
    fn method_and_path(self) -> (&'static str, &'static str) {
        match self {
            Route::Me => ("GET", "/api/v1/me"),
            Route::Usage => ("GET", "/api/v1/usage"),
            Route::BillingCurrent => ("GET", "/api/v1/billing/current"),
            Route::Invoices => ("GET", "/api/v1/invoices"),
            Route::ApiKeys => ("GET", "/api/v1/api-keys"),
            Route::Login => ("POST", "/api/v1/auth/login"),
            Route::Refresh => ("POST", "/api/v1/auth/refresh"),
            Route::FinanceInvoices => ("GET", "/api/v1/finance/invoices"),
            Route::ToolsUuid => ("GET", "/api/v1/tools/uuid"),
        }
    }

    /// The 503 codes this route may answer with.
    fn unavailable_codes(self) -> &'static [&'static str] {
        match self {
            Route::ToolsUuid => &["database_unavailable", "metering_unavailable"],
            _ => &["database_unavailable"],
        }
    }
}

/// What the clients authenticate with.
struct Credentials {
    consumer_email: String,
    consumer_token: String,
    api_key: String,
    finance_token: String,
}

/// One answer: route, status, body.
type Answer = (Route, u16, String);

/// Sends one request of `route`. `refresh` is this client's current refresh
/// token: a refresh needs one (a login gets it first) and rotates it.
async fn send(
    app: &TestApp,
    creds: &Credentials,
    route: Route,
    turn: usize,
    refresh: &mut Option<String>,
) -> Vec<Answer> {
    let (_, path) = route.method_and_path();
    let url = app.url(path);
    let mut answers = Vec::new();
    let res = match route {
        Route::Login => {
            app.client
                .post(&url)
                .json(&json!({"email": creds.consumer_email, "password": PASSWORD}))
                .send()
                .await
        }
        Route::Refresh => {
            let token = match refresh.clone() {
                Some(token) => token,
                None => {
                    // Start a session of this client's own (a login, checked like any other).
                    let res = app
                        .client
                        .post(app.url("/api/v1/auth/login"))
                        .json(&json!({"email": creds.consumer_email, "password": PASSWORD}))
                        .send()
                        .await
                        .expect("login request");
                    let status = res.status().as_u16();
                    let body = res.text().await.unwrap_or_default();
                    if status == 200 {
                        let v: Value = serde_json::from_str(&body).expect("token JSON");
                        *refresh = v["refresh_token"].as_str().map(str::to_owned);
                    }
                    answers.push((Route::Login, status, body));
                    match refresh.clone() {
                        Some(token) => token,
                        None => return answers,
                    }
                }
            };
            app.client
                .post(&url)
                .json(&json!({"refresh_token": token}))
                .send()
                .await
        }
        Route::FinanceInvoices => app.client.get(&url).bearer_auth(&creds.finance_token).send().await,
        // Both credentials on the metered route and on usage.
        Route::ToolsUuid | Route::Usage if turn % 2 == 1 => {
            app.client.get(&url).header("x-api-key", &creds.api_key).send().await
        }
        _ => app.client.get(&url).bearer_auth(&creds.consumer_token).send().await,
    };
    let res = res.expect("the server answers (even while its database connections are killed)");
    let status = res.status().as_u16();
    let body = res.text().await.unwrap_or_default();
    if route == Route::Refresh {
        match status {
            200 => {
                let v: Value = serde_json::from_str(&body).expect("token JSON");
                *refresh = v["refresh_token"].as_str().map(str::to_owned);
            }
            // A rotation whose commit landed while its answer was lost makes
            // the old token a reused one: start a new session next time.
            401 => *refresh = None,
            _ => {}
        }
    }
    answers.push((route, status, body));
    answers
}

async fn setup(app: &TestApp) -> Arc<Credentials> {
    let consumer = app.new_user().await;
    let finance = app.user_with_role("finance").await;
    let created = app
        .post_auth("/api/v1/api-keys", &consumer.token, &json!({"name": "faults"}))
        .await;
    assert_eq!(created.status(), 201);
    let api_key = created.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    Arc::new(Credentials {
        consumer_email: consumer.email,
        consumer_token: consumer.token,
        api_key,
        finance_token: finance.token,
    })
}

/// Terminates every other backend of the test database every `KILL_EVERY`
/// for `LOAD`, through a connection of its own; returns how many it ended.
async fn killer(db_url: String, db_name: String) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct K {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = AsyncPgConnection::establish(&db_url).await.expect("killer connection");
    let started = Instant::now();
    let mut killed = 0;
    while started.elapsed() < LOAD {
        tokio::time::sleep(KILL_EVERY).await;
        let k: K = diesel::sql_query(format!(
            "SELECT count(pg_terminate_backend(pid))::bigint AS n FROM pg_stat_activity \
             WHERE datname = '{db_name}' AND pid <> pg_backend_pid()"
        ))
        .get_result(&mut conn)
        .await
        .expect("terminate backends");
        killed += k.n;
    }
    killed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_database_connections_under_load_are_503s_never_500s() {
    let app = Arc::new(
        TestApp::builder()
            // The tools route records each call before it answers, so a lost
            // connection reaches metering too.
            .env("PAYG_METER_MODE", "durable")
            .spawn()
            .await,
    );
    let creds = setup(&app).await;

    let kills = tokio::spawn(killer(app.db.url.clone(), app.db.name.clone()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (app, creds) = (app.clone(), creds.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let mut refresh = None;
                let mut answers = Vec::new();
                for i in 0..MAX_REQUESTS_PER_CLIENT {
                    if started.elapsed() >= LOAD {
                        break;
                    }
                    let route = ROUTES[(c + i) % ROUTES.len()];
                    answers.extend(send(&app, &creds, route, c + i / ROUTES.len(), &mut refresh).await);
                }
                answers
            })
        })
        .collect();
    let mut answers: Vec<Answer> = Vec::new();
    for client in clients {
        answers.extend(client.await.unwrap());
    }
    let killed = kills.await.unwrap();
    assert!(killed > 0, "the test must actually have terminated backends");

    let mut tally: BTreeMap<(Route, u16), usize> = BTreeMap::new();
    for (route, status, _) in &answers {
        *tally.entry((*route, *status)).or_default() += 1;
    }
    eprintln!("{killed} backends terminated; answers by (route, status): {tally:?}");

    let internal: Vec<String> = answers
        .iter()
        .filter(|(_, status, _)| *status == 500)
        .map(|(route, _, body)| {
            let (method, path) = route.method_and_path();
            format!("{method} {path} -> 500 {body}")
        })
        .collect();
    assert!(
        internal.is_empty(),
        "{} answers were 500s:\n{}",
        internal.len(),
        internal.join("\n")
    );

    let mut unavailable = 0;
    for (route, status, body) in &answers {
        let (method, path) = route.method_and_path();
        match status {
            200..=299 => {}
            503 => {
                unavailable += 1;
                let v: Value = serde_json::from_str(body)
                    .unwrap_or_else(|_| panic!("{method} {path}: 503 body is not JSON: {body}"));
                let code = v["error"]["code"].as_str().unwrap_or_default();
                assert!(
                    route.unavailable_codes().contains(&code),
                    "{method} {path}: 503 with code {code:?}: {body}"
                );
                assert!(
                    v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "{method} {path}: 503 without a message: {body}"
                );
            }
            // See `send`: a reused refresh token after a lost answer.
            401 if *route == Route::Refresh => {}
            other => panic!("{method} {path}: unexpected {other}: {body}"),
        }
    }
    assert!(
        unavailable > 0,
        "no 503 at all: the terminations did not reach a request"
    );

    // The terminations have stopped: every route answers again, soon.
    let mut refresh = None;
    for route in ROUTES {
        let (method, path) = route.method_and_path();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let last = send(&app, &creds, route, 0, &mut refresh).await;
            let (_, status, body) = last.last().unwrap();
            if (200..300).contains(status) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{method} {path} still answers {status} after the terminations stopped: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
