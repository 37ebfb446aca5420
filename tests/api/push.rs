//! What one instance changes reaches the others by push, without a Redis
//! round trip per call: logouts, role and status changes, key revocations —
//! also after Redis restarts — and rate limits leased from Redis that are
//! never exceeded across instances.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{OwnRedis, PASSWORD, TestApp, TestDb, eventually, free_port, this_period, usage_of};

const DEADLINE: Duration = Duration::from_secs(2);

async fn login(app: &TestApp, email: &str) -> String {
    let body: Value = app.login(email, PASSWORD).await.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

async fn status(app: &TestApp, path: &str, token: &str) -> u16 {
    app.get_auth(path, token).await.status().as_u16()
}

fn instance(db: &Arc<TestDb>, prefix: &str, redis_url: &str) -> crate::helpers::TestAppBuilder {
    TestApp::builder()
        .instance_of(db, prefix)
        .env("REDIS_URL", redis_url)
        // Only a push can make B notice a change within the deadline.
        .env("PAYG_AUTH_CACHE_MS", "600000")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logouts_role_and_status_changes_reach_another_instance_by_push() {
    let db = TestDb::new().await;
    let prefix = format!("payg-test-{}:", Uuid::new_v4().simple());
    let redis_url = "redis://127.0.0.1:6379";
    let a = instance(&db, &prefix, redis_url).spawn().await;
    let b = instance(&db, &prefix, redis_url).spawn().await;
    let user = a.new_user().await;
    let leaving = login(&a, &user.email).await;
    // B has the user's standing and both tokens in memory.
    for token in [&user.token, &leaving] {
        assert_eq!(status(&b, "/api/v1/me", token).await, 200);
        assert_eq!(status(&b, "/api/v1/tools/uuid", token).await, 200);
    }
    assert_eq!(status(&b, "/api/v1/finance/invoices", &user.token).await, 403);

    let res = a.post_auth("/api/v1/auth/logout", &leaving, &json!({})).await;
    assert_eq!(res.status(), 204);
    assert_eq!(
        status(&a, "/api/v1/me", &leaving).await,
        401,
        "at once where it was made"
    );
    assert!(
        eventually(DEADLINE, || async {
            status(&b, "/api/v1/tools/uuid", &leaving).await == 401
        })
        .await,
        "the logout reached B"
    );
    assert_eq!(status(&b, "/api/v1/me", &leaving).await, 401);
    assert_eq!(
        status(&b, "/api/v1/me", &user.token).await,
        200,
        "the other session lives"
    );

    a.run_cli(&["user", "role", &user.email, "finance"]);
    assert!(
        eventually(DEADLINE, || async {
            status(&b, "/api/v1/finance/invoices", &user.token).await == 200
        })
        .await,
        "the role change reached B"
    );

    a.run_cli(&["user", "status", &user.email, "suspended"]);
    assert!(
        eventually(DEADLINE, || async {
            status(&b, "/api/v1/tools/uuid", &user.token).await == 403
        })
        .await,
        "the suspension reached B"
    );
    assert_eq!(status(&a, "/api/v1/me", &user.token).await, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_restarts_instances_resync_and_no_logout_is_forgotten() {
    let mut redis = OwnRedis::start(free_port());
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let db = TestDb::new().await;
    let prefix = format!("payg-test-{}:", Uuid::new_v4().simple());
    let a = instance(&db, &prefix, &redis_url).spawn().await;
    let b = instance(&db, &prefix, &redis_url).spawn().await;
    let user = a.new_user().await;
    let before = login(&a, &user.email).await;
    let after = login(&a, &user.email).await;
    for token in [&user.token, &before, &after] {
        assert_eq!(status(&b, "/api/v1/me", token).await, 200);
    }
    assert_eq!(
        a.post_auth("/api/v1/auth/logout", &before, &json!({})).await.status(),
        204
    );
    assert!(eventually(DEADLINE, || async { status(&b, "/api/v1/me", &before).await == 401 }).await);

    // Redis goes away and comes back empty (it keeps nothing on disk).
    redis.stop();
    assert!(
        eventually(DEADLINE, || async {
            status(&b, "/api/v1/me", &user.token).await == 503
        })
        .await,
        "not hearing Redis, signed-in routes fail closed"
    );
    assert_eq!(
        status(&b, "/api/v1/tools/uuid", &user.token).await,
        200,
        "metered calls go on"
    );
    assert_eq!(
        status(&b, "/api/v1/tools/uuid", &before).await,
        401,
        "with the logouts memory holds"
    );
    let _redis = OwnRedis::start(redis.port);
    for app in [&a, &b] {
        assert!(
            eventually(Duration::from_secs(5), || async {
                status(app, "/api/v1/me", &user.token).await == 200
            })
            .await,
            "resubscribed and resynced"
        );
        assert_eq!(status(app, "/api/v1/me", &before).await, 401, "the old logout is kept");
    }
    // An instance started after the restart learns the old logout from
    // what the others wrote back.
    let c = instance(&db, &prefix, &redis_url).spawn().await;
    assert_eq!(status(&c, "/api/v1/me", &before).await, 401);
    assert_eq!(status(&c, "/api/v1/me", &user.token).await, 200);
    // And new logouts travel again.
    assert_eq!(
        a.post_auth("/api/v1/auth/logout", &after, &json!({})).await.status(),
        204
    );
    for app in [&b, &c] {
        assert!(eventually(DEADLINE, || async { status(app, "/api/v1/me", &after).await == 401 }).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leased_rate_limits_are_never_exceeded_across_three_instances_under_64_clients() {
    const PER_MINUTE: u64 = 600;
    const BURST: u64 = 40;
    const CLIENTS: usize = 64;
    let db = TestDb::new().await;
    let prefix = format!("payg-test-{}:", Uuid::new_v4().simple());
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(
            TestApp::builder()
                .instance_of(&db, &prefix)
                .env("PAYG_RATE_LIMIT_PER_MINUTE", &PER_MINUTE.to_string())
                .env("PAYG_RATE_LIMIT_BURST", &BURST.to_string())
                .spawn()
                .await,
        );
    }
    let user = instances[0].new_user().await;
    let urls: Vec<String> = instances.iter().map(|a| a.url("/api/v1/tools/uuid")).collect();
    let client = instances[0].client.clone();
    let (ok, refused, other) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let started = Instant::now();
    let run_for = Duration::from_secs(3);
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (client, urls, token) = (client.clone(), urls.clone(), user.token.clone());
            let (ok, refused, other) = (ok.clone(), refused.clone(), other.clone());
            tokio::spawn(async move {
                let mut n = i;
                while started.elapsed() < run_for {
                    let res = client
                        .get(&urls[n % urls.len()])
                        .bearer_auth(&token)
                        .send()
                        .await
                        .unwrap();
                    let counter = match res.status().as_u16() {
                        200 => {
                            let remaining: u64 =
                                res.headers()["ratelimit-remaining"].to_str().unwrap().parse().unwrap();
                            assert!(remaining <= BURST, "remaining {remaining} is more than the burst");
                            &ok
                        }
                        429 => &refused,
                        _ => &other,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let (ok, refused, other) = (
        ok.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
    );
    // The budget was full at the start: at most the burst plus what the
    // rate refills while the test ran, whatever the instances leased.
    let allowed = BURST + (PER_MINUTE * u64::try_from(elapsed.as_millis()).unwrap()).div_ceil(60_000);
    assert_eq!(other, 0);
    assert!(ok <= allowed, "{ok} calls served, the limit allows {allowed}");
    // Leases held elsewhere may refuse a little early, never much: each
    // instance leases at most burst / 8.
    assert!(
        ok >= BURST - 2 * (BURST / 8),
        "{ok} calls served: refused far too early"
    );
    assert!(refused > 0, "the clients did press past the limit");
    // Every call is counted, refused ones as failed, exactly.
    for app in &instances {
        app.flush_meter().await;
    }
    assert_eq!(
        usage_of(&db, user.id, "tools-uuid", &this_period()).await,
        (i64::try_from(ok + refused).unwrap(), i64::try_from(refused).unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unused_lease_goes_back_so_another_instance_can_serve_it() {
    let db = TestDb::new().await;
    let prefix = format!("payg-test-{}:", Uuid::new_v4().simple());
    let spawn = || {
        TestApp::builder()
            .instance_of(&db, &prefix)
            .env("PAYG_RATE_LIMIT_PER_MINUTE", "6")
            .env("PAYG_RATE_LIMIT_BURST", "32")
            .spawn()
    };
    let (a, b) = (spawn().await, spawn().await);
    let user = a.new_user().await;
    // A's leases grow as its calls use them up (1, 2, 4 …, at most 4).
    let mut served_on_a = 0;
    for _ in 0..12 {
        assert_eq!(status(&a, "/api/v1/tools/uuid", &user.token).await, 200);
        served_on_a += 1;
    }
    // B takes the rest of the burst; whatever A still holds is refused to
    // B only until A, idle for a second, gives it back.
    let mut served_on_b = 0;
    while status(&b, "/api/v1/tools/uuid", &user.token).await == 200 {
        served_on_b += 1;
    }
    assert!(
        served_on_a + served_on_b <= 32,
        "{served_on_a} + {served_on_b} calls from a burst of 32"
    );
    let freed = eventually(Duration::from_secs(3), || async {
        status(&b, "/api/v1/tools/uuid", &user.token).await == 200
    })
    .await;
    assert!(
        freed && served_on_a + served_on_b < 32,
        "A's unused calls went back to the shared budget ({served_on_a} + {served_on_b} served)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giving_back_a_lease_never_refunds_what_time_already_refilled() {
    use payg::redis_store::{RateLimit, RedisStore};
    let store = RedisStore::new(
        redis::Client::open("redis://127.0.0.1:6379").unwrap(),
        format!("payg-test-{}:", Uuid::new_v4().simple()),
    );
    // One call per 100 ms, five at once.
    let limit = RateLimit {
        per_minute: 600,
        burst: 5,
    };
    let user = Uuid::new_v4();
    let first = store.lease_calls(user, limit, 5).await.unwrap();
    assert_eq!(first.granted, 5);
    // Given back while still ahead: the calls are available again.
    assert!(store.return_calls(user, limit, 3, first.end_us).await);
    let again = store.lease_calls(user, limit, 5).await.unwrap();
    assert_eq!(again.granted, 3, "what was given back, and no more");

    // Time refills the whole budget; another instance takes all of it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let elsewhere = store.lease_calls(user, limit, 5).await.unwrap();
    assert_eq!(elsewhere.granted, 5);
    // Giving back the old lease now must not hand out a sixth call.
    assert!(store.return_calls(user, limit, 5, again.end_us).await);
    let after = store.lease_calls(user, limit, 5).await.unwrap();
    assert!(
        after.granted <= 1,
        "{} calls granted beyond a full burst just taken (one may have refilled meanwhile)",
        after.granted
    );
}
