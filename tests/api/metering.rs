use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use payg::billing::usage_cost::{self, BatchOutcome};
use payg::domain::{Day, ManualClock, Period};
use payg::models::usage::{FlushId, UsageDelta, UsageKey};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Registered, TestApp, TestDb, api_id, at, error_code, total_calls, usage_of};

pub(crate) fn this_period() -> String {
    Period::containing(Utc::now(), chrono_tz::Tz::UTC)
        .first_day()
        .to_string()
}

/// `tasks` concurrent clients, each making `calls` calls round-robin over
/// `targets` (base URL, user index, path). Returns the 2xx responses each
/// (user index, path) received — the tally the records must equal.
pub(crate) async fn hammer(
    client: &reqwest::Client,
    users: &[Registered],
    targets: &[(String, usize, &'static str)],
    tasks: usize,
    calls: usize,
) -> HashMap<(usize, &'static str), i64> {
    let tokens: Arc<Vec<String>> = Arc::new(users.iter().map(|u| u.token.clone()).collect());
    let targets: Arc<Vec<(String, usize, &'static str)>> = Arc::new(targets.to_vec());
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let client = client.clone();
            let tokens = tokens.clone();
            let targets = targets.clone();
            tokio::spawn(async move {
                let mut ok: HashMap<(usize, &'static str), i64> = HashMap::new();
                for i in 0..calls {
                    let (base, user, path) = &targets[(t + i) % targets.len()];
                    let res = client
                        .get(format!("{base}{path}"))
                        .bearer_auth(&tokens[*user])
                        .send()
                        .await;
                    if matches!(&res, Ok(r) if r.status().is_success()) {
                        *ok.entry((*user, *path)).or_default() += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let mut tally = HashMap::new();
    for h in handles {
        for (k, v) in h.await.unwrap() {
            *tally.entry(k).or_default() += v;
        }
    }
    tally
}

fn slug_of(path: &str) -> &'static str {
    match path {
        "/api/v1/tools/uuid" => "tools-uuid",
        "/api/v1/tools/time" => "tools-time",
        p if p.starts_with("/api/v1/tools/random/") => "tools-random-max",
        _ => unreachable!("{path}"),
    }
}

pub(crate) async fn assert_records_match(
    db: &TestDb,
    users: &[Registered],
    tally: &HashMap<(usize, &'static str), i64>,
) {
    let period = this_period();
    for ((user, path), ok) in tally {
        let (calls, failed) = usage_of(db, users[*user].id, slug_of(path), &period).await;
        assert_eq!((calls, failed), (*ok, 0), "user {user} {path}");
    }
    let sum: i64 = tally.values().sum();
    assert_eq!(total_calls(db).await, sum);
}

pub(crate) const PATHS: [&str; 2] = ["/api/v1/tools/uuid", "/api/v1/tools/time"];

async fn exact_counts_under_concurrency(mode: &str) {
    let app = TestApp::builder()
        .env("PAYG_METER_MODE", mode)
        .env("PAYG_AUTH_CACHE_MS", "1000")
        .env("PAYG_DB_POOL_SIZE", "16")
        .spawn()
        .await;
    let users = vec![app.new_user().await, app.new_user().await, app.new_user().await];
    let targets: Vec<_> = (0..3)
        .flat_map(|u| PATHS.iter().map(move |p| (u, *p)))
        .map(|(u, p)| (app.address.clone(), u, p))
        .collect();
    let tally = hammer(&app.client, &users, &targets, 32, 400).await;
    assert_eq!(tally.values().sum::<i64>(), 32 * 400, "every call succeeded");
    app.flush_meter().await;
    assert_records_match(&app.db, &users, &tally).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_counts_are_exact_under_concurrency() {
    exact_counts_under_concurrency("batched").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_counts_are_exact_under_concurrency() {
    exact_counts_under_concurrency("durable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_database_count_exactly() {
    let first = TestApp::builder().env("PAYG_AUTH_CACHE_MS", "1000").spawn().await;
    let mut apps = vec![];
    for _ in 0..2 {
        apps.push(
            TestApp::builder()
                .env("PAYG_AUTH_CACHE_MS", "1000")
                .database(first.db.clone())
                .spawn()
                .await,
        );
    }
    apps.insert(0, first);
    let users = vec![apps[0].new_user().await, apps[1].new_user().await];
    let targets: Vec<_> = apps
        .iter()
        .flat_map(|a| (0..2).map(move |u| (a.address.clone(), u, "/api/v1/tools/uuid")))
        .collect();
    let tally = hammer(&apps[0].client, &users, &targets, 24, 200).await;
    for app in &apps {
        app.flush_meter().await;
    }
    assert_records_match(&apps[0].db, &users, &tally).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_database_connections_mid_load_loses_and_duplicates_nothing() {
    let app = TestApp::builder()
        .env("PAYG_AUTH_CACHE_MS", "60000")
        .env("PAYG_METER_FLUSH_MS", "10")
        .spawn()
        .await;
    let users = vec![app.new_user().await, app.new_user().await];
    let targets: Vec<_> = (0..2)
        .flat_map(|u| PATHS.iter().map(move |p| (u, *p)))
        .map(|(u, p)| (app.address.clone(), u, p))
        .collect();
    let killer = {
        let db = app.db.clone();
        tokio::spawn(async move {
            let mut killed = 0;
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let mut conn = db.conn().await;
                use diesel_async::RunQueryDsl;
                #[derive(diesel::QueryableByName)]
                struct K {
                    #[diesel(sql_type = diesel::sql_types::BigInt)]
                    n: i64,
                }
                let k: K = diesel::sql_query(format!(
                    "SELECT count(pg_terminate_backend(pid))::bigint AS n FROM pg_stat_activity \
                     WHERE datname = '{}' AND application_name = 'payg'",
                    db.name
                ))
                .get_result(&mut conn)
                .await
                .unwrap();
                killed += k.n;
            }
            killed
        })
    };
    let tally = hammer(&app.client, &users, &targets, 16, 300).await;
    let killed = killer.await.unwrap();
    assert!(killed > 0, "the test must actually have killed connections");
    app.flush_meter().await;
    assert_records_match(&app.db, &users, &tally).await;
    assert!(app.state.meter.status().flushes > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_flush_whose_commit_already_landed_is_not_applied_twice() {
    let db = TestDb::new().await;
    let app = TestApp::builder().database(db.clone()).spawn().await;
    let user = app.new_user().await;
    let now = Utc::now();
    let key = UsageKey {
        user_id: user.id,
        api_id: api_id(&db, "tools-uuid").await,
        day: Day::containing(now, chrono_tz::Tz::UTC),
        second: now.timestamp(),
    };
    let deltas = [(
        key,
        UsageDelta {
            calls: 7,
            failed_calls: 2,
            ..UsageDelta::default()
        },
    )];
    let flush = FlushId {
        id: Uuid::new_v4(),
        instance_id: Uuid::new_v4(),
    };
    let mut conn = db.conn().await;
    // First attempt commits; its acknowledgement is "lost" and it is retried.
    assert_eq!(
        usage_cost::apply(&mut conn, Some(flush), &deltas, payg::domain::Currency::USD)
            .await
            .unwrap(),
        BatchOutcome::Applied
    );
    assert_eq!(
        usage_cost::apply(&mut conn, Some(flush), &deltas, payg::domain::Currency::USD)
            .await
            .unwrap(),
        BatchOutcome::AlreadyApplied
    );
    assert_eq!(usage_of(&db, user.id, "tools-uuid", &this_period()).await, (7, 2));
    // A new flush id adds again.
    let again = FlushId {
        id: Uuid::new_v4(),
        ..flush
    };
    usage_cost::apply(&mut conn, Some(again), &deltas, payg::domain::Currency::USD)
        .await
        .unwrap();
    assert_eq!(usage_of(&db, user.id, "tools-uuid", &this_period()).await, (14, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_that_fails_is_kept_and_retried_until_the_database_takes_it() {
    let app = TestApp::builder().env("PAYG_METER_FLUSH_MS", "3600000").spawn().await;
    let user = app.new_user().await;
    for _ in 0..5 {
        assert_eq!(app.get_auth("/api/v1/tools/uuid", &user.token).await.status(), 200);
    }
    // Make the write fail: the usage table is locked away from payg.
    app.sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$; \
         CREATE TRIGGER refuse BEFORE INSERT ON meter_flushes FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .await;
    assert!(app.state.meter.flush().await.is_err());
    assert!(app.state.meter.flush().await.is_err());
    assert_eq!(app.state.meter.status().pending_calls, 5);
    assert_eq!(app.state.meter.status().flush_failures, 2);
    // Calls keep being served and counted while the database refuses.
    assert_eq!(app.get_auth("/api/v1/tools/uuid", &user.token).await.status(), 200);
    app.sql("DROP TRIGGER refuse ON meter_flushes").await;
    app.flush_meter().await;
    assert_eq!(usage_of(&app.db, user.id, "tools-uuid", &this_period()).await, (6, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_flushes_everything_pending() {
    // A flush interval of an hour: only the shutdown can write these.
    let mut app = TestApp::builder().env("PAYG_METER_FLUSH_MS", "3600000").spawn().await;
    let user = app.new_user().await;
    let users = vec![user];
    let targets = vec![(app.address.clone(), 0, "/api/v1/tools/uuid")];
    let tally = hammer(&app.client, &users, &targets, 8, 50).await;
    assert_eq!(total_calls(&app.db).await, 0, "nothing flushed before shutdown");
    app.shutdown().await;
    assert_records_match(&app.db, &users, &tally).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_belongs_to_the_month_it_arrived_in_the_billing_time_zone() {
    let clock = Arc::new(ManualClock::new(at("2026-11-30T18:29:59.999Z")));
    let app = TestApp::builder()
        .env("PAYG_BILLING_TZ", "Asia/Kolkata")
        .clock(clock.clone())
        .spawn()
        .await;
    let user = app.new_user().await;
    // 23:59:59.999 on 30 November in Kolkata.
    for _ in 0..2 {
        app.get_auth("/api/v1/tools/uuid", &user.token).await;
    }
    // 00:00:00.000 on 1 December in Kolkata (still November in UTC).
    clock.set(at("2026-11-30T18:30:00Z"));
    app.get_auth("/api/v1/tools/uuid", &user.token).await;
    app.flush_meter().await;
    assert_eq!(usage_of(&app.db, user.id, "tools-uuid", "2026-11-01").await, (2, 0));
    assert_eq!(usage_of(&app.db, user.id, "tools-uuid", "2026-12-01").await, (1, 0));

    let usage: Value = app.get_json("/api/v1/usage", &user.token).await;
    assert_eq!(usage["period"], "2026-12", "the default period is the clock's");
    assert_eq!(usage["apis"][0]["calls"], 1);
    let usage: Value = app.get_json("/api/v1/usage?period=2026-11", &user.token).await;
    assert_eq!(usage["apis"][0]["calls"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_authenticated_catalog_calls_are_counted_once_per_route_pattern() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    let period = this_period();

    // Unauthenticated: refused and not recorded.
    let res = app.client.get(app.url("/api/v1/tools/uuid")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    // Outside the catalog: not recorded.
    assert_eq!(app.get_auth("/api/v1/tools/nope", &user.token).await.status(), 404);
    assert_eq!(app.get_auth("/api/v1/me", &user.token).await.status(), 200);
    // Different raw paths, one route pattern: one API.
    for max in [1, 22, 333, 4444] {
        assert_eq!(
            app.get_auth(&format!("/api/v1/tools/random/{max}"), &user.token)
                .await
                .status(),
            200
        );
    }
    app.flush_meter().await;
    assert_eq!(usage_of(&app.db, user.id, "tools-random-max", &period).await, (4, 0));
    assert_eq!(total_calls(&app.db).await, 4);
    assert_eq!(
        crate::helpers::scalar_i64(&app.db, "SELECT count(*) AS n FROM usage_records").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_calls_are_counted_as_failed() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    let period = this_period();
    let res = app.get_auth("/api/v1/tools/random?min=10&max=1", &user.token).await;
    assert_eq!(res.status(), 400);
    assert_eq!(error_code(res).await, "validation_failed");
    assert_eq!(
        app.get_auth("/api/v1/tools/random?min=x", &user.token).await.status(),
        400
    );
    assert_eq!(
        app.get_auth("/api/v1/tools/random?min=1&max=3", &user.token)
            .await
            .status(),
        200
    );
    // A path parameter that does not parse names no resource: 404 inside the scope.
    let res = app.get_auth("/api/v1/tools/random/not-a-number", &user.token).await;
    assert_eq!(res.status(), 404);
    let res = app.get_auth("/api/v1/tools/time?tz=Mars/Olympus", &user.token).await;
    assert_eq!(res.status(), 400);
    app.flush_meter().await;
    assert_eq!(usage_of(&app.db, user.id, "tools-random", &period).await, (3, 2));
    assert_eq!(usage_of(&app.db, user.id, "tools-random-max", &period).await, (1, 1));
    assert_eq!(usage_of(&app.db, user.id, "tools-time", &period).await, (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_tools_do_what_they_say() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    let t = &user.token;
    let v: Value = app.get_json("/api/v1/tools/uuid", t).await;
    assert_eq!(
        v["uuid"].as_str().unwrap().parse::<Uuid>().unwrap().get_version_num(),
        4
    );
    let v: Value = app.get_json("/api/v1/tools/random?min=5&max=5", t).await;
    assert_eq!(v["value"], 5);
    let v: Value = app.get_json("/api/v1/tools/time?tz=Asia/Kolkata", t).await;
    assert_eq!(v["utc_offset"], "+05:30");
    let post = |path: &str, body: Value| app.client.post(app.url(path)).bearer_auth(t).json(&body).send();
    let v: Value = post("/api/v1/tools/hash", json!({"data": "abc"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["digest"],
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let v: Value = post("/api/v1/tools/hash", json!({"data": "abc", "algorithm": "sha512"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["digest"].as_str().unwrap().starts_with("ddaf35a193617aba"));
    let res = post("/api/v1/tools/hash", json!({"data": "abc", "algorithm": "md5"}))
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body = json!({"nested": {"list": [1, "two", null]}, "emoji": "🦀"});
    let v: Value = post("/api/v1/tools/echo", body.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, body);

    let apis: Value = app.get_public_json("/api/v1/apis").await;
    let slugs: Vec<&str> = apis["apis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["slug"].as_str().unwrap())
        .collect();
    for slug in ["tools-echo", "tools-hash", "tools-random", "tools-time", "tools-uuid"] {
        assert!(slugs.contains(&slug), "{slug}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_shows_only_the_callers_own_counts() {
    let app = TestApp::spawn().await;
    let alice = app.new_user().await;
    let bob = app.new_user().await;
    for _ in 0..3 {
        app.get_auth("/api/v1/tools/uuid", &alice.token).await;
    }
    app.get_auth("/api/v1/tools/time", &bob.token).await;
    app.flush_meter().await;
    let usage: Value = app.get_json("/api/v1/usage", &alice.token).await;
    assert_eq!(usage["apis"].as_array().unwrap().len(), 1);
    assert_eq!(usage["apis"][0]["slug"], "tools-uuid");
    assert_eq!(usage["apis"][0]["calls"], 3);
    assert_eq!(usage["apis"][0]["route"], "/api/v1/tools/uuid");

    for bad in ["2026-13", "2026-1", "yesterday", "2026-11-01"] {
        let res = app.get_auth(&format!("/api/v1/usage?period={bad}"), &alice.token).await;
        assert_eq!(res.status(), 400, "{bad}");
        assert_eq!(error_code(res).await, "validation_failed");
    }
    let res = app.client.get(app.url("/api/v1/usage")).send().await.unwrap();
    assert_eq!(res.status(), 401);
}

// The helper itself: a mistyped slug must not read as "no usage".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "no API with slug \"tools-uuuid\"")]
async fn usage_of_a_slug_the_catalog_lacks_fails_loudly() {
    let db = TestDb::new().await;
    assert_eq!(
        usage_of(&db, Uuid::new_v4(), "tools-uuid", &this_period()).await,
        (0, 0)
    );
    usage_of(&db, Uuid::new_v4(), "tools-uuuid", &this_period()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_percent_encoded_path_is_metered_like_the_plain_one() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    // `%75` is `u`: the router serves `/tools/uuid` for both spellings, so
    // metering must see both as that API, or encoding a letter would make
    // calls free and unlimited.
    for path in ["/api/v1/tools/uuid", "/api/v1/tools/%75uid", "/api/v1/tools/uu%69d"] {
        assert_eq!(app.get_auth(path, &user.token).await.status(), 200, "{path}");
    }
    app.flush_meter().await;
    assert_eq!(usage_of(&app.db, user.id, "tools-uuid", &this_period()).await, (3, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switched_off_api_answers_404_and_is_never_served_unmetered() {
    let app = TestApp::spawn().await;
    let admin = app.user_with_role("admin").await;
    let user = app.new_user().await;
    assert_eq!(app.get_auth("/api/v1/tools/uuid", &user.token).await.status(), 200);
    let id = api_id(&app.db, "tools-uuid").await;
    let res = app
        .patch_raw(
            &format!("/api/v1/admin/apis/{id}"),
            &admin.token,
            r#"{"active": false}"#,
        )
        .await;
    assert_eq!(res.status(), 200);
    for _ in 0..3 {
        let res = app.get_auth("/api/v1/tools/uuid", &user.token).await;
        assert_eq!(res.status(), 404);
        assert_eq!(error_code(res).await, "not_found");
    }
    // Another tool is untouched.
    assert_eq!(app.get_auth("/api/v1/tools/time", &user.token).await.status(), 200);
    app.flush_meter().await;
    assert_eq!(usage_of(&app.db, user.id, "tools-uuid", &this_period()).await, (1, 0));
    let res = app
        .patch_raw(&format!("/api/v1/admin/apis/{id}"), &admin.token, r#"{"active": true}"#)
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(app.get_auth("/api/v1/tools/uuid", &user.token).await.status(), 200);
}
