//! `TestApp`: the real payg server on port 0, against its own fresh
//! PostgreSQL database cloned from a migrated template, dropped afterwards.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::web;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use payg::app::AppState;
use payg::config::Config;
use payg::db;
use payg::domain::{Clock, SystemClock};
use serde_json::{Value, json};
use uuid::Uuid;

pub const PG_SERVER: &str = "postgres://postgres@127.0.0.1:5432";
pub const TEST_JWT_SECRET: &str = "test-secret-0123456789abcdef0123456789";
pub const PASSWORD: &str = "correct horse battery";

/// A fresh database, dropped (with FORCE) when the last handle goes.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

/// Template name from a hash of the migrations, so a changed migration gets
/// a new template and an unchanged one is reused across test runs.
fn template_name() -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut entries: Vec<_> = walk(&dir);
    entries.sort();
    let mut h = DefaultHasher::new();
    for path in entries {
        path.to_string_lossy().hash(&mut h);
        std::fs::read(&path).unwrap_or_default().hash(&mut h);
    }
    format!("payg_test_tpl_{:016x}", h.finish())
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

async fn maintenance() -> AsyncPgConnection {
    AsyncPgConnection::establish(&format!("{PG_SERVER}/postgres"))
        .await
        .expect("PostgreSQL must run on 127.0.0.1:5432 (scripts/services.sh starts it)")
}

#[derive(QueryableByName)]
struct Exists {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    exists: bool,
}

async fn database_exists(conn: &mut AsyncPgConnection, name: &str) -> bool {
    diesel::sql_query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS exists")
        .bind::<Text, _>(name)
        .get_result::<Exists>(conn)
        .await
        .expect("query pg_database")
        .exists
}

impl TestDb {
    pub async fn new() -> Arc<TestDb> {
        let template = template_name();
        let name = format!("payg_test_{}", Uuid::new_v4().simple());
        let mut conn = maintenance().await;
        // One lock for building the template and cloning it: CREATE DATABASE
        // refuses a template that another session is connected to.
        diesel::sql_query("SELECT pg_advisory_lock($1)")
            .bind::<BigInt, _>(0x7061_7967_7465_7374)
            .execute(&mut conn)
            .await
            .expect("advisory lock");
        if !database_exists(&mut conn, &template).await {
            let building = format!("{template}_building");
            conn.batch_execute(&format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
                .await
                .expect("drop stale template");
            conn.batch_execute(&format!("CREATE DATABASE {building}"))
                .await
                .expect("create template");
            db::run_migrations(&format!("{PG_SERVER}/{building}"), chrono_tz::UTC)
                .await
                .expect("migrate template");
            conn.batch_execute(&format!("ALTER DATABASE {building} RENAME TO {template}"))
                .await
                .expect("rename template");
        }
        conn.batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .await
            .expect("clone template");
        diesel::sql_query("SELECT pg_advisory_unlock($1)")
            .bind::<BigInt, _>(0x7061_7967_7465_7374)
            .execute(&mut conn)
            .await
            .expect("advisory unlock");
        Arc::new(TestDb {
            url: format!("{PG_SERVER}/{name}"),
            name,
        })
    }

    pub async fn conn(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.url)
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside a runtime; do the async cleanup on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let mut conn = maintenance().await;
                let _ = conn
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            });
        })
        .join();
    }
}

pub struct TestApp {
    pub address: String,
    /// Where `/metrics` is served (its own listener).
    pub metrics_address: String,
    pub client: reqwest::Client,
    pub db: Arc<TestDb>,
    pub state: web::Data<AppState>,
    handle: ServerHandle,
    running: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub struct TestAppBuilder {
    vars: Vec<(String, String)>,
    clock: Arc<dyn Clock>,
    db: Option<Arc<TestDb>>,
}

impl TestAppBuilder {
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.vars.retain(|(k, _)| k != name);
        self.vars.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Another instance of a deployment: the same database and Redis prefix.
    pub fn instance_of(mut self, db: &Arc<TestDb>, redis_prefix: &str) -> Self {
        self = self.database(db.clone());
        self.env("PAYG_REDIS_PREFIX", redis_prefix)
    }

    /// Share a database with another app (several instances, one database).
    pub fn database(mut self, db: Arc<TestDb>) -> Self {
        self.db = Some(db);
        self
    }

    pub async fn spawn(self) -> TestApp {
        let db = match self.db {
            Some(db) => db,
            None => TestDb::new().await,
        };
        let mut vars = self.vars;
        vars.push(("DATABASE_URL".into(), db.url.clone()));
        let config = Config::from_lookup(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
            .expect("test configuration");
        let app = payg::startup::Application::build(config, self.clock)
            .await
            .expect("build app");
        let address = format!("http://127.0.0.1:{}", app.port());
        let metrics_address = format!("http://127.0.0.1:{}", app.metrics_port());
        let state = app.state();
        let handle = app.handle();
        let running = tokio::spawn(app.run_until_stopped());
        TestApp {
            address,
            metrics_address,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .expect("http client"),
            db,
            state,
            handle,
            running: Some(running),
        }
    }
}

pub struct Registered {
    pub id: Uuid,
    pub email: String,
    pub token: String,
}

impl TestApp {
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            vars: vec![
                ("JWT_SECRET".into(), TEST_JWT_SECRET.into()),
                ("PAYG_BIND".into(), "127.0.0.1:0".into()),
                ("PAYG_METRICS_BIND".into(), "127.0.0.1:0".into()),
                ("PAYG_WORKERS".into(), "2".into()),
                ("PAYG_DB_POOL_SIZE".into(), "8".into()),
                ("PAYG_METER_FLUSH_MS".into(), "25".into()),
                // Role and status re-read on every call unless a test opts in.
                ("PAYG_AUTH_CACHE_MS".into(), "0".into()),
                // Rate limits off unless a test sets one.
                ("PAYG_RATE_LIMIT_PER_MINUTE".into(), "0".into()),
                // Every test client is 127.0.0.1: per-address buckets off
                // unless a test sets one.
                ("PAYG_CLIENT_AUTH_PER_MINUTE".into(), "0".into()),
                ("PAYG_CLIENT_UNKNOWN_KEYS_PER_MINUTE".into(), "0".into()),
                ("PAYG_CLIENT_WEBHOOK_PER_MINUTE".into(), "0".into()),
                (
                    "PAYG_REDIS_PREFIX".into(),
                    format!("payg-test-{}:", Uuid::new_v4().simple()),
                ),
            ],
            clock: Arc::new(SystemClock),
            db: None,
        }
    }

    pub async fn spawn() -> TestApp {
        Self::builder().spawn().await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn get_auth(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    /// GET without a credential, body parsed as JSON (whatever the status).
    pub async fn get_public_json(&self, path: &str) -> Value {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("JSON body")
    }

    /// Runs `payg ARGS…` as an operator would against this app's database
    /// and Redis (its changes are pushed to the running app), and asserts
    /// it succeeded.
    pub fn run_cli(&self, args: &[&str]) {
        let out = Command::new(env!("CARGO_BIN_EXE_payg"))
            .args(args)
            .env("DATABASE_URL", &self.db.url)
            .env("REDIS_URL", self.state.config.redis_url.expose())
            .env("JWT_SECRET", TEST_JWT_SECRET)
            .env("PAYG_REDIS_PREFIX", &self.state.config.redis_prefix)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run payg");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// The Prometheus text served on the metrics listener.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.metrics_address))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("metrics text")
    }

    /// GET with a bearer credential, body parsed as JSON (whatever the status).
    pub async fn get_json(&self, path: &str, token: &str) -> Value {
        self.get_auth(path, token).await.json().await.expect("JSON body")
    }

    pub async fn post_auth(&self, path: &str, token: &str, body: &Value) -> reqwest::Response {
        self.send_auth(reqwest::Method::POST, path, token, body).await
    }

    pub async fn put_auth(&self, path: &str, token: &str, body: &Value) -> reqwest::Response {
        self.send_auth(reqwest::Method::PUT, path, token, body).await
    }

    pub async fn patch_auth(&self, path: &str, token: &str, body: &Value) -> reqwest::Response {
        self.send_auth(reqwest::Method::PATCH, path, token, body).await
    }

    /// A JSON body sent with a bearer token.
    async fn send_auth(&self, method: reqwest::Method, path: &str, token: &str, body: &Value) -> reqwest::Response {
        self.client
            .request(method, self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// Usage written straight into the counters, as an import would: the
    /// month's row and its row under the price version in force at the
    /// month's first instant (UTC), without days. `period` is `YYYY-MM`.
    pub async fn seed_month(&self, user: Uuid, slug: &str, period: &str, calls: i64, failed: i64) {
        self.sql(&format!(
            "WITH ins AS ( \
               INSERT INTO usage_records (user_id, api_id, period, calls, failed_calls) \
               SELECT '{user}', id, DATE '{period}-01', {calls}, {failed} FROM apis WHERE slug = '{slug}' \
               RETURNING api_id, period) \
             INSERT INTO usage_prices (user_id, api_id, period, price_id, calls, failed_calls) \
             SELECT '{user}', i.api_id, i.period, \
                    coalesce((SELECT p.id FROM prices p WHERE p.api_id = i.api_id \
                              AND p.effective_from <= i.period::timestamp AT TIME ZONE 'UTC' \
                              ORDER BY p.effective_from DESC LIMIT 1), 0), \
                    {calls}, {failed} \
             FROM ins i"
        ))
        .await;
    }

    pub async fn delete_auth(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    /// PATCH with a body sent as given (malformed JSON included).
    pub async fn patch_raw(&self, path: &str, token: &str, body: &'static str) -> reqwest::Response {
        self.client
            .patch(self.url(path))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request")
    }

    /// A fresh user with the given role (granted in the database, as an
    /// operator would with `payg user role`).
    pub async fn user_with_role(&self, role: &str) -> Registered {
        let user = self.new_user().await;
        self.sql(&format!("UPDATE users SET role = '{role}' WHERE id = '{}'", user.id))
            .await;
        user
    }

    pub async fn register(&self, email: &str, name: &str) -> reqwest::Response {
        self.post_json(
            "/api/v1/auth/register",
            &json!({"email": email, "password": PASSWORD, "name": name}),
        )
        .await
    }

    pub async fn login(&self, email: &str, password: &str) -> reqwest::Response {
        self.post_json("/api/v1/auth/login", &json!({"email": email, "password": password}))
            .await
    }

    /// Registers a fresh consumer and logs them in.
    pub async fn new_user(&self) -> Registered {
        let email = format!("user-{}@example.com", Uuid::new_v4().simple());
        let res = self.register(&email, "Test User").await;
        assert_eq!(res.status(), 201, "register: {}", res.text().await.unwrap_or_default());
        let user: Value = res.json().await.expect("json");
        let id = user["id"].as_str().expect("id").parse().expect("uuid");
        let token = self.token_for(&email).await;
        Registered { id, email, token }
    }

    pub async fn token_for(&self, email: &str) -> String {
        let res = self.login(email, PASSWORD).await;
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.expect("json");
        body["access_token"].as_str().expect("token").to_owned()
    }

    /// Flushes the meter until nothing is pending.
    pub async fn flush_meter(&self) {
        for _ in 0..100 {
            let _ = self.state.meter.flush().await;
            if self.state.meter.status().pending_calls == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("meter did not flush");
    }

    /// Graceful shutdown: stop accepting, finish in-flight calls, flush.
    pub async fn shutdown(&mut self) {
        self.handle.stop(true).await;
        if let Some(running) = self.running.take() {
            running.await.expect("server task").expect("server result");
        }
    }

    /// Runs SQL on the app's database.
    pub async fn sql(&self, sql: &str) {
        self.db.conn().await.batch_execute(sql).await.expect("sql");
    }

    /// The two text columns `a` and `b` of a query's one row.
    pub async fn sql_row(&self, sql: &str) -> [String; 2] {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Text)]
            a: String,
            #[diesel(sql_type = diesel::sql_types::Text)]
            b: String,
        }
        let row: Row = diesel::sql_query(sql)
            .get_result(&mut self.db.conn().await)
            .await
            .expect("a row");
        [row.a, row.b]
    }

    pub async fn count_users(&self) -> i64 {
        scalar_i64(&self.db, "SELECT count(*) AS n FROM users").await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.abort();
        }
        // Remove this test's Redis keys (those without a TTL would linger).
        let prefix = self.state.config.redis_prefix.clone();
        if prefix.starts_with("payg-test-") {
            let _ = std::thread::spawn(move || delete_redis_keys(&prefix)).join();
        }
    }
}

/// Deletes every key under `prefix` in the shared Redis (blocking; best
/// effort: a test's leftovers must not fail another test).
pub fn delete_redis_keys(prefix: &str) {
    let Ok(client) = redis::Client::open("redis://127.0.0.1:6379") else {
        return;
    };
    let Ok(mut conn) = client.get_connection() else { return };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut conn)
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
    }
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Runs a query returning one bigint column named `n`.
pub async fn scalar_i64(db: &TestDb, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<N>(&mut db.conn().await)
        .await
        .expect("scalar query")
        .n
}

/// The catalog id of the API with this slug; panics when the catalog has
/// none, so a mistyped slug cannot pass for a real API.
pub async fn api_id(db: &TestDb, slug: &str) -> i32 {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        id: i32,
    }
    let row: Option<Row> = diesel::sql_query("SELECT id FROM apis WHERE slug = $1")
        .bind::<Text, _>(slug)
        .get_result(&mut db.conn().await)
        .await
        .optional()
        .expect("apis query");
    row.unwrap_or_else(|| panic!("no API with slug {slug:?} in the catalog"))
        .id
}

/// `(calls, failed_calls)` for one user and API slug in one period
/// (`YYYY-MM-01`). No usage row reads as `(0, 0)` (no calls make no row),
/// but a slug the catalog does not have panics.
pub async fn usage_of(db: &TestDb, user: Uuid, slug: &str, period: &str) -> (i64, i64) {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        calls: i64,
        #[diesel(sql_type = BigInt)]
        failed_calls: i64,
    }
    let api = api_id(db, slug).await;
    let row: Option<Row> = diesel::sql_query(
        "SELECT calls, failed_calls FROM usage_records \
         WHERE user_id = $1 AND api_id = $2 AND period = $3::date",
    )
    .bind::<diesel::sql_types::Uuid, _>(user)
    .bind::<diesel::sql_types::Integer, _>(api)
    .bind::<Text, _>(period)
    .get_result(&mut db.conn().await)
    .await
    .optional()
    .expect("usage query");
    row.map_or((0, 0), |r| (r.calls, r.failed_calls))
}

pub async fn total_calls(db: &TestDb) -> i64 {
    scalar_i64(db, "SELECT coalesce(sum(calls), 0)::bigint AS n FROM usage_records").await
}

/// Asserts the `{"error": {"code", "message"}}` envelope and returns the code.
pub async fn error_code(res: reqwest::Response) -> String {
    let body: Value = res.json().await.expect("error body is JSON");
    let code = body["error"]["code"].as_str().expect("error.code").to_owned();
    assert!(
        body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error.message: {body}"
    );
    code
}

/// Sends the requests all at once and returns their statuses in order: for
/// tests that race requests against a limit.
pub async fn statuses_of_concurrent(requests: impl IntoIterator<Item = reqwest::RequestBuilder>) -> Vec<u16> {
    let sent: Vec<_> = requests
        .into_iter()
        .map(|req| tokio::spawn(async move { req.send().await.expect("request").status().as_u16() }))
        .collect();
    let mut statuses = Vec::with_capacity(sent.len());
    for request in sent {
        statuses.push(request.await.expect("request task"));
    }
    statuses
}

/// How many of `statuses` are `status`.
pub fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// A Redis server of the test's own, so it can be stopped and started.
pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    pub fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/services.sh installs it)");
        std::thread::sleep(Duration::from_millis(300));
        Self {
            port,
            child: Some(child),
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The current UTC period as `YYYY-MM-01` (the test apps bill in UTC).
pub fn this_period() -> String {
    chrono::Utc::now().format("%Y-%m-01").to_string()
}

/// Polls `check` every 20 ms until it holds or `deadline` passes, and says
/// whether it held: for what reaches another instance asynchronously (a
/// push), asserted with a generous deadline rather than timed.
/// An RFC 3339 instant, as the tests write them.
pub fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap()
        .with_timezone(&chrono::Utc)
}

/// A decimal string of a JSON body, as a `Decimal`.
pub fn dec(v: &Value) -> rust_decimal::Decimal {
    v.as_str()
        .unwrap_or_else(|| panic!("a decimal string, got {v}"))
        .parse()
        .unwrap()
}

pub async fn eventually<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = std::time::Instant::now() + deadline;
    loop {
        if check().await {
            return true;
        }
        if std::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A real database outage for one test database: it refuses new
/// connections and its open ones are terminated (`refuse = false` lets
/// connections in again). The shared server itself keeps running.
pub async fn refuse_connections(db: &TestDb, refuse: bool) {
    let mut conn = maintenance().await;
    conn.batch_execute(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS {}", db.name, !refuse))
        .await
        .expect("alter database");
    if refuse {
        conn.batch_execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
            db.name
        ))
        .await
        .expect("terminate backends");
    }
}
