//! Redis: the store shared by all instances for the access-token deny-list,
//! per-user rate limits, "user changed" versions and login lockouts.
//!
//! Redis is never required to serve metered calls: every operation returns
//! `None` when Redis cannot answer, and each says by its [`Policy`] what
//! that `None` may mean. Metered calls fail open behind a circuit breaker:
//! after a failure they do not try Redis for a second, so an outage costs
//! them no latency. Security decisions (the lockout, the deny-list outside
//! metered calls, writing a logout) ignore the breaker and ask every time,
//! and their callers fail closed: the breaker can open because payg itself
//! is overloaded (a starved worker times out its own Redis call), and that
//! must never switch off a lockout or a logout. The outage is logged once
//! when it starts and once when it ends.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use uuid::Uuid;

const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// How long a user's version key outlives its last bump. A version only has
/// to outlive the standings cached against it (`PAYG_AUTH_CACHE_MS`, about a
/// second); when the key goes, the version reads as 0, which differs from
/// any cached one, so the standing is simply read again.
pub const USER_VERSION_TTL: Duration = Duration::from_secs(24 * 3600);
const TIMEOUT: Duration = Duration::from_millis(250);

/// What an operation does while Redis is failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Skipped while the breaker is open; any failure opens it. For what
    /// may fail open: metered calls' rate limit and deny-list check.
    FailOpen,
    /// Always asked, breaker or not; a timeout does not open the breaker
    /// (it may be payg's own overload, not Redis). For security decisions,
    /// whose callers refuse when the answer is `None`.
    FailClosed,
}

/// One round trip per metered call: deny-list check, user version, and a
/// GCRA rate-limit step, atomically. All keys share the user's hash tag so
/// the script also runs on Redis Cluster.
///
/// KEYS: rate, deny (for the token's jti), version, deny (for its session).
/// ARGV: emission interval µs, burst tolerance µs, 1 = apply the limit.
/// Returns {denied, version, allowed, remaining, retry_after_µs, reset_µs}.
const CHECK_CALL_LUA: &str = r"
local denied = redis.call('EXISTS', KEYS[2], KEYS[4])
if denied > 0 then denied = 1 end
local version = tonumber(redis.call('GET', KEYS[3]) or '0')
if denied == 1 or ARGV[3] ~= '1' then
  return {denied, version, 1, -1, 0, 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > tolerance then
  return {0, version, 0, 0, new_tat - tolerance - now, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.floor((new_tat - now) / 1000) + 1)
return {0, version, 1, math.floor((tolerance - (new_tat - now)) / interval), 0, new_tat - now}
";

/// A per-user limit: `per_minute` calls sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_minute: u32,
    pub burst: u32,
}

/// What Redis said about one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallVerdict {
    /// The access token was logged out.
    pub denied: bool,
    /// Bumped whenever the user's role, status or dues change.
    pub user_version: i64,
    pub rate: Option<RateOutcome>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateOutcome {
    pub limit: u32,
    pub allowed: bool,
    pub remaining: u32,
    /// Seconds until the allowance is full again.
    pub reset_secs: u64,
    /// Seconds to wait before retrying (refused calls only).
    pub retry_after_secs: u64,
}

/// One login attempt taken from two budgets at once: KEYS[1] counts the
/// attempts of one email from one client address, KEYS[2] those of the
/// email from anywhere. Every attempt counts when it arrives (a success
/// gives it back, see `login_succeeded`); the window starts at the first.
///
/// ARGV: per-client max, its window ms, per-email max, its window ms.
/// Returns {allowed, retry_after_ms}.
const RESERVE_LOGIN_LUA: &str = r"
local from = redis.call('INCR', KEYS[1])
if from == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
local all = redis.call('INCR', KEYS[2])
if all == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[4]) end
if from > tonumber(ARGV[1]) then
  return {0, redis.call('PTTL', KEYS[1])}
end
if all > tonumber(ARGV[3]) then
  return {0, redis.call('PTTL', KEYS[2])}
end
return {1, 0}
";

/// The login lockout's budgets (see `routes::auth::LOGIN_LIMITS`).
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    pub per_client: u32,
    pub per_client_window: Duration,
    pub per_email: u32,
    pub per_email_window: Duration,
}

/// What [`RedisStore::reserve_login`] decided.
#[derive(Debug, Clone, Copy)]
pub struct LoginAttempt {
    pub allowed: bool,
    pub retry_after_secs: u64,
}

pub struct RedisStore {
    client: redis::Client,
    prefix: String,
    manager: RwLock<Option<ConnectionManager>>,
    connecting: tokio::sync::Mutex<()>,
    script: redis::Script,
    login_script: redis::Script,
    down_since: Mutex<Option<Instant>>,
    last_failure: Mutex<Option<Instant>>,
    in_outage: AtomicBool,
    errors: AtomicU64,
}

impl RedisStore {
    pub fn new(client: redis::Client, prefix: String) -> Self {
        Self {
            client,
            prefix,
            manager: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
            script: redis::Script::new(CHECK_CALL_LUA),
            login_script: redis::Script::new(RESERVE_LOGIN_LUA),
            down_since: Mutex::new(None),
            last_failure: Mutex::new(None),
            in_outage: AtomicBool::new(false),
            errors: AtomicU64::new(0),
        }
    }

    /// Redis errors since start (for metrics).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    fn user_key(&self, user: Uuid, rest: &str) -> String {
        // `{…}` is the Redis Cluster hash tag: all of a user's keys in one slot.
        format!("{}{{{user}}}:{rest}", self.prefix)
    }

    async fn connection(&self) -> Option<ConnectionManager> {
        if let Some(m) = self.manager.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Some(m.clone());
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(m) = self.manager.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Some(m.clone());
        }
        // Whoever held the lock before just failed to connect: do not queue
        // every waiting call behind one more attempt each (security
        // decisions skip the breaker, so they would).
        if self.circuit_open() {
            return None;
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1);
        match tokio::time::timeout(TIMEOUT * 2, self.client.get_connection_manager_with_config(config)).await {
            Ok(Ok(m)) => {
                *self.manager.write().unwrap_or_else(|e| e.into_inner()) = Some(m.clone());
                Some(m)
            }
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                None
            }
            Err(_) => {
                self.failed("connection timed out");
                None
            }
        }
    }

    fn circuit_open(&self) -> bool {
        self.last_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| at.elapsed() < RETRY_AFTER_FAILURE)
    }

    fn failed(&self, error: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        if !self.in_outage.swap(true, Ordering::Relaxed) {
            *self.down_since.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            tracing::error!(
                error,
                "Redis unreachable: metered calls skip rate limits and logout checks, logins and signed-in routes are refused, until it returns"
            );
        }
    }

    /// A security decision's command timed out: it is refused, and the
    /// breaker stays as it was (the timeout may be payg's own overload).
    fn security_timeout(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("a Redis command for a security decision timed out; refused, breaker left as it was");
    }

    fn succeeded(&self) {
        if self.in_outage.swap(false, Ordering::Relaxed) {
            let down_for = self
                .down_since
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .map(|at| at.elapsed().as_secs_f64());
            tracing::warn!(down_for_secs = down_for, "Redis reachable again");
        }
    }

    /// Runs one Redis operation with a timeout, and the breaker as `policy`
    /// says; `None` on failure.
    async fn run<T, F, Fut>(&self, policy: Policy, op: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if policy == Policy::FailOpen && self.circuit_open() {
            return None;
        }
        let conn = self.connection().await?;
        match tokio::time::timeout(TIMEOUT, op(conn)).await {
            Ok(Ok(v)) => {
                self.succeeded();
                Some(v)
            }
            // The connection's own response timeout may fire first: the
            // same timeout, the same rule.
            Ok(Err(e)) if policy == Policy::FailClosed && e.is_timeout() => {
                self.security_timeout();
                None
            }
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                None
            }
            Err(_) if policy == Policy::FailClosed => {
                self.security_timeout();
                None
            }
            Err(_) => {
                self.failed("command timed out");
                None
            }
        }
    }

    pub async fn ping(&self) -> bool {
        self.run(Policy::FailClosed, |mut c| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        .is_some()
    }

    /// The per-call check. `jti` is the access token's id and `session` its
    /// login session (both None for API keys).
    pub async fn check_call(
        &self,
        user: Uuid,
        jti: Option<Uuid>,
        session: Option<Uuid>,
        limit: Option<RateLimit>,
        policy: Policy,
    ) -> Option<CallVerdict> {
        let rate_key = self.user_key(user, "rate");
        let deny_key = match jti {
            Some(j) => self.user_key(user, &format!("deny:{j}")),
            None => self.user_key(user, "deny:-"),
        };
        let session_key = match session {
            Some(s) => self.user_key(user, &format!("deny-session:{s}")),
            None => self.user_key(user, "deny-session:-"),
        };
        let version_key = self.user_key(user, "version");
        let (interval_us, tolerance_us, apply) = match limit {
            Some(l) if l.per_minute > 0 => {
                // µs is the script's resolution: above 60M/min the interval
                // would round to 0 (and divide by zero in the script).
                let interval = (60_000_000 / u64::from(l.per_minute)).max(1);
                (interval, interval * u64::from(l.burst.max(1)), "1")
            }
            _ => (1, 1, "0"),
        };
        let script = &self.script;
        let raw: Vec<i64> = self
            .run(policy, |mut c| async move {
                script
                    .key(&rate_key)
                    .key(&deny_key)
                    .key(&version_key)
                    .key(&session_key)
                    .arg(interval_us)
                    .arg(tolerance_us)
                    .arg(apply)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let [denied, version, allowed, remaining, retry_us, reset_us] = raw.as_slice() else {
            return None;
        };
        let micros_to_secs = |us: i64| u64::try_from(us).unwrap_or(0).div_ceil(1_000_000);
        Some(CallVerdict {
            denied: *denied == 1,
            user_version: *version,
            rate: match (limit, apply) {
                (Some(l), "1") => Some(RateOutcome {
                    limit: l.per_minute,
                    allowed: *allowed == 1,
                    remaining: u32::try_from(*remaining).unwrap_or(0),
                    reset_secs: micros_to_secs(*reset_us),
                    retry_after_secs: micros_to_secs(*retry_us).max(u64::from(*allowed != 1)),
                }),
                _ => None,
            },
        })
    }

    /// Ends a login session on every instance: every access token issued in
    /// it is refused for `ttl`, which must cover the longest an access token
    /// lives (none can be issued in it afterwards: its refresh tokens are
    /// revoked in PostgreSQL).
    pub async fn deny_session(&self, user: Uuid, session: Uuid, ttl: Duration) -> bool {
        self.set_denied(self.user_key(user, &format!("deny-session:{session}")), ttl)
            .await
    }

    /// Puts an access token on the deny-list until it would have expired.
    pub async fn deny_token(&self, user: Uuid, jti: Uuid, ttl: Duration) -> bool {
        self.set_denied(self.user_key(user, &format!("deny:{jti}")), ttl).await
    }

    async fn set_denied(&self, key: String, ttl: Duration) -> bool {
        let secs = ttl.as_secs().max(1);
        self.run(Policy::FailClosed, |mut c| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("EX")
                .arg(secs)
                .query_async::<()>(&mut c)
                .await
        })
        .await
        .is_some()
    }

    /// Tells every instance to re-read the user's role, status and dues.
    pub async fn bump_user_version(&self, user: Uuid) -> bool {
        let key = self.user_key(user, "version");
        self.run(Policy::FailClosed, |mut c| async move {
            redis::pipe()
                .atomic()
                .cmd("INCR")
                .arg(&key)
                .cmd("EXPIRE")
                .arg(&key)
                .arg(USER_VERSION_TTL.as_secs())
                .query_async::<(i64, i64)>(&mut c)
                .await
        })
        .await
        .is_some()
    }

    /// The two lockout counters of a login: per (email, client address) and
    /// per email. Hashed so Redis never holds email addresses; one hash tag,
    /// so the script also runs on Redis Cluster.
    fn login_keys(&self, email: &str, client: &str) -> (String, String) {
        use sha2::Digest;
        let email = hex::encode(sha2::Sha256::digest(email.as_bytes()));
        let client = hex::encode(sha2::Sha256::digest(client.as_bytes()));
        (
            self.key(&format!("login:{{{email}}}:from:{client}")),
            self.key(&format!("login:{{{email}}}:all")),
        )
    }

    /// Takes one login attempt out of both budgets *before* the password is
    /// verified, in one atomic step, so parallel guesses cannot all pass a
    /// check made before any of them counted. `None`: Redis could not say
    /// (the caller must refuse the login: the lockout fails closed).
    pub async fn reserve_login(&self, email: &str, client: &str, limits: LoginLimits) -> Option<LoginAttempt> {
        let (client_key, email_key) = self.login_keys(email, client);
        let script = &self.login_script;
        let raw: Vec<i64> = self
            .run(Policy::FailClosed, |mut c| async move {
                script
                    .key(&client_key)
                    .key(&email_key)
                    .arg(limits.per_client)
                    .arg(u64::try_from(limits.per_client_window.as_millis()).unwrap_or(u64::MAX))
                    .arg(limits.per_email)
                    .arg(u64::try_from(limits.per_email_window.as_millis()).unwrap_or(u64::MAX))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let [allowed, retry_ms] = raw.as_slice() else {
            return None;
        };
        Some(LoginAttempt {
            allowed: *allowed == 1,
            retry_after_secs: u64::try_from(*retry_ms).unwrap_or(0).div_ceil(1000).max(1),
        })
    }

    /// A reserved attempt succeeded: it was no failure. The client's
    /// counter restarts; the email's gives the attempt back.
    pub async fn login_succeeded(&self, email: &str, client: &str) {
        let (client_key, email_key) = self.login_keys(email, client);
        self.run(Policy::FailClosed, |mut c| async move {
            redis::pipe()
                .cmd("DEL")
                .arg(&client_key)
                .cmd("DECR")
                .arg(&email_key)
                .query_async::<()>(&mut c)
                .await
        })
        .await;
    }
}
