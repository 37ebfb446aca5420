//! `PAYG_METER_MODE=durable`: a call is answered only after its group
//! commit; a group that cannot commit is answered 503 and settled as failed
//! calls; a SIGKILL loses no call a client saw succeed.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use payg::billing::usage_cost::{self, BatchOutcome, Settlement};
use payg::domain::{Currency, Day};
use payg::models::usage::{FlushId, UsageDelta, UsageKey};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    PASSWORD, PG_SERVER, Registered, TEST_JWT_SECRET, TestApp, TestDb, api_id, error_code, total_calls, usage_of,
};
use crate::metering::{PATHS, assert_records_match, hammer, this_period};

fn durable() -> crate::helpers::TestAppBuilder {
    TestApp::builder()
        .env("PAYG_METER_MODE", "durable")
        // Standing cached: during an outage a call reaches metering.
        .env("PAYG_AUTH_CACHE_MS", "600000")
        .env("PAYG_DB_POOL_SIZE", "16")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_counts_are_exact_and_calls_share_transactions() {
    let app = durable().spawn().await;
    let ready: Value = app.get_public_json("/readyz").await;
    assert_eq!(ready["meter"]["mode"], "durable");
    let users = vec![app.new_user().await, app.new_user().await];
    let targets: Vec<_> = (0..2)
        .flat_map(|u| PATHS.iter().map(move |p| (u, *p)))
        .map(|(u, p)| (app.address.clone(), u, p))
        .collect();
    let tally = hammer(&app.client, &users, &targets, 32, 200).await;
    let calls = 32 * 200;
    assert_eq!(tally.values().sum::<i64>(), calls, "every call succeeded");
    // No flush needed: every answered call was committed before its answer.
    assert_eq!(app.state.meter.status().pending_calls, 0);
    assert_records_match(&app.db, &users, &tally).await;
    let flushes = app.state.meter.status().flushes;
    eprintln!("{calls} calls in {flushes} group commits");
    assert!(
        flushes > 0 && flushes * 4 <= u64::try_from(calls).unwrap(),
        "{flushes} transactions for {calls} calls"
    );
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(&format!("meter_group_calls_count {flushes}")),
        "{metrics}"
    );
}

/// Makes the test database refuse connections and ends the ones it has
/// (never the shared server: other tests and engineers use it).
async fn database_outage(db: &TestDb, down: bool) {
    let mut conn = AsyncPgConnection::establish(&format!("{PG_SERVER}/postgres"))
        .await
        .unwrap();
    let name = &db.name;
    if down {
        conn.batch_execute(&format!(
            "ALTER DATABASE {name} ALLOW_CONNECTIONS false; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}';"
        ))
        .await
        .unwrap();
    } else {
        conn.batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
            .await
            .unwrap();
    }
}

async fn settled(app: &TestApp) {
    let until = Instant::now() + Duration::from_secs(60);
    while app.state.meter.status().pending_calls > 0 {
        assert!(Instant::now() < until, "given-up groups were not settled");
        let _ = app.state.meter.flush().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_answers_503_and_only_the_2xx_are_billed() {
    let app = Arc::new(durable().spawn().await);
    let user = app.new_user().await;
    assert_eq!(app.get_auth("/api/v1/tools/uuid", &user.token).await.status(), 200);
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (app, stop, token) = (app.clone(), stop.clone(), user.token.clone());
            tokio::spawn(async move {
                let mut answers: HashMap<(u16, String), i64> = HashMap::new();
                while !stop.load(Ordering::Relaxed) {
                    let res = app.get_auth("/api/v1/tools/uuid", &token).await;
                    let status = res.status().as_u16();
                    let code = if status == 200 {
                        String::new()
                    } else {
                        error_code(res).await
                    };
                    *answers.entry((status, code)).or_default() += 1;
                }
                answers
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    database_outage(&app.db, true).await;
    // Longer than a group's retries: some groups must give up.
    tokio::time::sleep(Duration::from_secs(4)).await;
    database_outage(&app.db, false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut answers: HashMap<(u16, String), i64> = HashMap::new();
    for client in clients {
        for (k, n) in client.await.unwrap() {
            *answers.entry(k).or_default() += n;
        }
    }
    eprintln!("answers by (status, code): {answers:?}");
    let ok = answers.remove(&(200, String::new())).unwrap_or(0) + 1;
    let refused = answers.remove(&(503, "metering_unavailable".into())).unwrap_or(0);
    assert!(answers.is_empty(), "only 200 and 503 metering_unavailable: {answers:?}");
    assert!(refused > 0, "the outage must have refused calls");
    assert!(ok > 1, "calls were served before and after the outage");

    settled(&app).await;
    // Every 200 billed; every 503 counted, as failed, never billed.
    let (calls, failed) = usage_of(&app.db, user.id, "tools-uuid", &this_period()).await;
    assert_eq!((calls - failed, failed), (ok, refused));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_cannot_commit_is_answered_503_and_settled_as_failed() {
    let app = durable().spawn().await;
    let user = app.new_user().await;
    assert_eq!(app.get_auth("/api/v1/tools/uuid", &user.token).await.status(), 200);
    app.sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$; \
         CREATE TRIGGER refuse BEFORE INSERT ON meter_flushes FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .await;
    let res = app.get_auth("/api/v1/tools/uuid", &user.token).await;
    assert_eq!(res.status(), 503);
    assert_eq!(error_code(res).await, "metering_unavailable");
    // Its settlement is refused too (it records an id); it waits, counted.
    let _ = app.state.meter.flush().await;
    assert_eq!(app.state.meter.status().pending_calls, 1);
    app.sql("DROP TRIGGER refuse ON meter_flushes").await;
    settled(&app).await;
    assert_eq!(usage_of(&app.db, user.id, "tools-uuid", &this_period()).await, (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_up_group_ends_up_failed_whether_or_not_its_commit_landed() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    let db = &app.db;
    let now = Utc::now();
    let key = UsageKey {
        user_id: user.id,
        api_id: api_id(db, "tools-uuid").await,
        day: Day::containing(now, chrono_tz::Tz::UTC),
        second: now.timestamp(),
    };
    let deltas = [(
        key,
        // Enough calls to cost something at 0.001 once rounded to cents.
        UsageDelta {
            calls: 5000,
            failed_calls: 1000,
            ..UsageDelta::default()
        },
    )];
    let id = || FlushId {
        id: Uuid::new_v4(),
        instance_id: Uuid::new_v4(),
    };
    let total_cost = async || {
        let me: Value = app.get_json("/api/v1/me", &user.token).await;
        Decimal::from_str(me["total_cost"].as_str().unwrap()).unwrap()
    };
    let mut conn = db.conn().await;
    let usd = Currency::USD;

    // The group's commit landed but its answer was lost: compensated.
    let (landed, settlement) = (id(), id());
    let applied = usage_cost::apply(&mut conn, Some(landed), &deltas, usd).await.unwrap();
    assert_eq!(applied, BatchOutcome::Applied);
    assert_eq!(total_cost().await, Decimal::new(4, 0));
    let settle = usage_cost::settle_given_up(&mut conn, landed, settlement, &deltas, usd);
    assert_eq!(settle.await.unwrap(), Settlement::Compensated);
    assert_eq!(usage_of(db, user.id, "tools-uuid", &this_period()).await, (5000, 5000));
    assert_eq!(total_cost().await, Decimal::ZERO);
    // A settlement retried after its own commit was lost changes nothing.
    let settle = usage_cost::settle_given_up(&mut conn, landed, settlement, &deltas, usd);
    assert_eq!(settle.await.unwrap(), Settlement::AlreadySettled);
    assert_eq!(usage_of(db, user.id, "tools-uuid", &this_period()).await, (5000, 5000));

    // The group never committed: applied with every call failed, and a late
    // retry of the group itself can no longer apply it.
    let (lost, settlement) = (id(), id());
    let settle = usage_cost::settle_given_up(&mut conn, lost, settlement, &deltas, usd);
    assert_eq!(settle.await.unwrap(), Settlement::AppliedAsFailed);
    let late = usage_cost::apply(&mut conn, Some(lost), &deltas, usd).await.unwrap();
    assert_eq!(late, BatchOutcome::AlreadyApplied);
    assert_eq!(
        usage_of(db, user.id, "tools-uuid", &this_period()).await,
        (10000, 10000)
    );
    assert_eq!(total_cost().await, Decimal::ZERO);
}

/// A given-up group whose calls arrived under two price versions: its
/// settlement makes them failed under each, and the user's running total
/// follows the statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_up_group_spanning_two_price_versions_is_failed_under_each() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    let db = &app.db;
    let now = Utc::now();
    let api = api_id(db, "tools-uuid").await;
    // A version from 5 s ago (written directly: the API would want 2 s of notice).
    let started = now.timestamp() - 5;
    app.sql(&format!(
        "INSERT INTO prices (api_id, effective_from, unit_price, free_calls) \
         VALUES ({api}, to_timestamp({started}), 0.01, 0)"
    ))
    .await;
    let key = |second: i64| UsageKey {
        user_id: user.id,
        api_id: api,
        day: Day::containing(now, chrono_tz::Tz::UTC),
        second,
    };
    let deltas = [
        (
            key(started - 1),
            UsageDelta {
                calls: 3000,
                failed_calls: 0,
                ..UsageDelta::default()
            },
        ),
        (
            key(started),
            UsageDelta {
                calls: 1000,
                failed_calls: 0,
                ..UsageDelta::default()
            },
        ),
    ];
    let id = || FlushId {
        id: Uuid::new_v4(),
        instance_id: Uuid::new_v4(),
    };
    let bill = async || -> (Value, Decimal) {
        let bill: Value = app.get_json("/api/v1/billing/current", &user.token).await;
        let me: Value = app.get_json("/api/v1/me", &user.token).await;
        (bill, Decimal::from_str(me["total_cost"].as_str().unwrap()).unwrap())
    };
    let mut conn = db.conn().await;
    let (landed, settlement) = (id(), id());
    let applied = usage_cost::apply(&mut conn, Some(landed), &deltas, Currency::USD)
        .await
        .unwrap();
    assert_eq!(applied, BatchOutcome::Applied);
    let (statement, total) = bill().await;
    assert_eq!(statement["total"], "13.00", "3000 × 0.001 + 1000 × 0.01: {statement}");
    assert_eq!(total, Decimal::new(1300, 2));

    let settle = usage_cost::settle_given_up(&mut conn, landed, settlement, &deltas, Currency::USD);
    assert_eq!(settle.await.unwrap(), Settlement::Compensated);
    let (statement, total) = bill().await;
    let lines: Vec<(i64, i64)> = statement["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["calls"].as_i64().unwrap(), l["failed_calls"].as_i64().unwrap()))
        .collect();
    assert_eq!(lines, vec![(3000, 3000), (1000, 1000)], "{statement}");
    assert_eq!(statement["total"], "0.00");
    assert_eq!(total, Decimal::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_waiting_durable_calls_commit_first() {
    let mut app = durable().spawn().await;
    let users = vec![app.new_user().await];
    let targets = vec![(app.address.clone(), 0, "/api/v1/tools/uuid")];
    let client = app.client.clone();
    let load = tokio::spawn(async move { hammer(&client, &users, &targets, 8, 400).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let stopped = Instant::now();
    app.shutdown().await;
    assert!(
        stopped.elapsed() < Duration::from_secs(20),
        "the committer must outlive the server's drain, or waiting calls hang until the grace ends"
    );
    let tally = load.await.unwrap();
    let ok: i64 = tally.values().sum();
    let calls = total_calls(&app.db).await;
    assert!(ok > 0);
    assert!((ok..=ok + 8).contains(&calls), "2xx {ok}, counted {calls}");
}

/// The real binary, killed on drop if the test fails first.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn register(client: &reqwest::Client, base: &str) -> Registered {
    let email = format!("user-{}@example.com", Uuid::new_v4().simple());
    let res = client
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({"email": email, "password": PASSWORD, "name": "Killed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let res = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let token = res.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    Registered { id, email, token }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_2xx_is_counted_when_the_process_is_killed_mid_load() {
    const CLIENTS: usize = 16;
    let db = TestDb::new().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let prefix = format!("payg-test-{}:", Uuid::new_v4().simple());
    let log = std::env::temp_dir().join(format!("payg-sigkill-{port}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_payg"))
        .args(["serve", "--no-migrate"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .env("PAYG_BIND", format!("127.0.0.1:{port}"))
        .env("PAYG_METRICS_BIND", "127.0.0.1:0")
        .env("JWT_SECRET", TEST_JWT_SECRET)
        .env("PAYG_METER_MODE", "durable")
        .env("PAYG_WORKERS", "2")
        .env("PAYG_AUTH_CACHE_MS", "60000")
        .env("PAYG_REDIS_PREFIX", &prefix)
        .env("PAYG_RATE_LIMIT_PER_MINUTE", "0")
        .env("PAYG_CLIENT_AUTH_PER_MINUTE", "0")
        .env("PAYG_CLIENT_UNKNOWN_KEYS_PER_MINUTE", "0")
        .env("PAYG_CLIENT_WEBHOOK_PER_MINUTE", "0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let client = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs(60);
    while !matches!(client.get(format!("{base}/healthz")).send().await, Ok(r) if r.status() == 200) {
        assert!(Instant::now() < until, "server did not start; see {}", log.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let users = Arc::new(vec![register(&client, &base).await, register(&client, &base).await]);
    let ok: Arc<Vec<AtomicI64>> = Arc::new((0..users.len()).map(|_| AtomicI64::new(0)).collect());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (client, base, users, ok) = (client.clone(), base.clone(), users.clone(), ok.clone());
            tokio::spawn(async move {
                let user = c % users.len();
                // One request at a time per client, until the server is gone.
                while let Ok(res) = client
                    .get(format!("{base}/api/v1/tools/uuid"))
                    .bearer_auth(&users[user].token)
                    .send()
                    .await
                {
                    if res.status().is_success() {
                        ok[user].fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    let until = Instant::now() + Duration::from_secs(60);
    while ok.iter().map(|n| n.load(Ordering::SeqCst)).sum::<i64>() < 400 {
        assert!(
            Instant::now() < until,
            "the load did not get going; see {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.0.kill().unwrap(); // SIGKILL: no drain, no flush
    server.0.wait().unwrap();
    for c in clients {
        c.await.unwrap();
    }
    let mut seen = 0;
    for (user, ok) in users.iter().zip(ok.iter()) {
        let ok = ok.load(Ordering::SeqCst);
        let (calls, failed) = usage_of(&db, user.id, "tools-uuid", &this_period()).await;
        assert_eq!(failed, 0);
        assert!(calls >= ok, "a 2xx was lost: {ok} received, {calls} counted");
        seen += ok;
    }
    let counted = total_calls(&db).await;
    let in_flight = i64::try_from(CLIENTS).unwrap();
    eprintln!("{seen} 2xx received, {counted} counted at the SIGKILL");
    assert!(
        (seen..=seen + in_flight).contains(&counted),
        "counted {counted}, 2xx {seen}, at most {in_flight} in flight"
    );
    let _ = std::fs::remove_file(&log);
    crate::helpers::delete_redis_keys(&prefix);
}
