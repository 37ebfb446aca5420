//! Redis: the store shared by all instances for the access-token deny-list,
//! the change events every instance listens to, per-user rate-limit leases
//! and login lockouts.
//!
//! Metered calls seldom wait on Redis: the deny-list and user changes reach
//! every instance by pub/sub into memory (`auth::revocations`), and rate
//! limits are leased in batches (`metering::rate_limit`), so only the call
//! that finds its user's lease used up asks Redis, once for the next lease
//! (for a busy user, once per hundreds of calls). Every operation
//! returns `None` when Redis cannot answer, and each says by its [`Policy`]
//! what that `None` may mean. Lease requests fail open behind a circuit
//! breaker: after a failure they do not try Redis for a second, so an
//! outage costs calls no latency. Security decisions (the lockout, writing
//! a logout) ignore the breaker and ask every time, and their callers fail
//! closed: the breaker can open because payg itself is overloaded (a starved
//! worker times out its own Redis call), and that must never switch off a
//! lockout or a logout. The outage is logged once when it starts and once
//! when it ends.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use uuid::Uuid;

const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

const TIMEOUT: Duration = Duration::from_millis(250);

/// What an operation does while Redis is failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Skipped while the breaker is open; any failure opens it. For what
    /// may fail open: leasing and giving back metered calls' rate limits.
    FailOpen,
    /// Always asked, breaker or not; a timeout does not open the breaker
    /// (it may be payg's own overload, not Redis). For security decisions,
    /// whose callers refuse when the answer is `None`.
    FailClosed,
}

/// Leases up to ARGV[3] calls of a user's GCRA budget in one step: the
/// budget is spent in Redis now, and the instance hands the calls out from
/// memory. Granting fewer than asked (down to none) is how the global limit
/// holds across instances.
///
/// KEYS: the user's theoretical arrival time (TAT) key.
/// ARGV: emission interval µs, burst tolerance µs, calls wanted (≥ 1).
/// Returns {granted, remaining after the grant, retry_after_µs, reset_µs,
/// the grant's end on the TAT line (Redis clock, µs)}.
const LEASE_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local room = math.floor((tolerance - (tat - now)) / interval)
if room < 1 then
  return {0, 0, tat + interval - tolerance - now, tat - now, 0}
end
local granted = math.min(want, room)
local new_tat = tat + granted * interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.floor((new_tat - now) / 1000) + 1)
return {granted, room - granted, 0, new_tat - now, new_tat}
";

/// Gives back ARGV[2] leased calls that were not used, of a grant that ended
/// at ARGV[3] on the TAT line. The unused calls are the grant's last slots;
/// only the part of them still ahead of now was not refilled by time
/// already, so the TAT moves back by at most that (never before now): a
/// grant that time has refilled gives back nothing. This only undoes what a
/// grant still holds, so it can never allow more than the limit.
///
/// KEYS: the TAT key. ARGV: emission interval µs, calls returned, grant end µs.
const RETURN_LEASE_LUA: &str = r"
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local unused = tonumber(ARGV[1]) * tonumber(ARGV[2])
local ahead = tonumber(ARGV[3]) - now
if ahead <= 0 or tat <= now then return 0 end
local back = tat - math.min(unused, ahead)
if back <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], back, 'PX', math.floor((back - now) / 1000) + 1)
end
return 1
";

/// One change, as published on the events channel (see [`Event::encode`]);
/// `auth::revocations` applies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A login session (refresh family) ended: every access token issued in
    /// it is refused until `until_ms` (Unix ms), when all have expired.
    SessionDenied { session: Uuid, until_ms: i64 },
    /// One access token (without a session) was logged out.
    TokenDenied { jti: Uuid, until_ms: i64 },
    /// The user's role, status or dues changed: re-read the standing.
    UserChanged { user: Uuid },
    /// An API key was revoked (by its stored hash).
    KeyRevoked { hash: String },
    /// Anything else on the channel (an event of a newer release, say):
    /// changes nothing.
    Other,
}

impl Event {
    /// The wire form: a word and its fields, space-separated. Deny-list
    /// members in the sorted set use the same `s:`/`t:` ids.
    pub fn encode(&self) -> String {
        match self {
            Event::SessionDenied { session, until_ms } => format!("deny s:{session} {until_ms}"),
            Event::TokenDenied { jti, until_ms } => format!("deny t:{jti} {until_ms}"),
            Event::UserChanged { user } => format!("user {user}"),
            Event::KeyRevoked { hash } => format!("key {hash}"),
            Event::Other => "other".to_owned(),
        }
    }

    /// Parses what [`Event::encode`] wrote; anything else is [`Event::Other`]
    /// (it still proves the channel lives, and changes nothing).
    pub fn decode(message: &str) -> Event {
        let mut words = message.split(' ');
        match (words.next(), words.next(), words.next()) {
            (Some("deny"), Some(member), Some(until)) => match (DeniedId::parse(member), until.parse()) {
                (Some(DeniedId::Session(session)), Ok(until_ms)) => Event::SessionDenied { session, until_ms },
                (Some(DeniedId::Token(jti)), Ok(until_ms)) => Event::TokenDenied { jti, until_ms },
                _ => Event::Other,
            },
            (Some("user"), Some(user), None) => user.parse().map_or(Event::Other, |user| Event::UserChanged { user }),
            (Some("key"), Some(hash), None) => Event::KeyRevoked { hash: hash.to_owned() },
            _ => Event::Other,
        }
    }
}

/// A deny-list member: `s:<session id>` or `t:<token id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeniedId {
    Session(Uuid),
    Token(Uuid),
}

impl DeniedId {
    pub fn parse(member: &str) -> Option<DeniedId> {
        let (kind, id) = member.split_once(':')?;
        let id = id.parse().ok()?;
        match kind {
            "s" => Some(DeniedId::Session(id)),
            "t" => Some(DeniedId::Token(id)),
            _ => None,
        }
    }
}

/// A per-user limit: `per_minute` calls sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_minute: u32,
    pub burst: u32,
}

impl RateLimit {
    /// The GCRA emission interval and burst tolerance, in µs (the scripts'
    /// resolution; above 60M/min the interval would round to 0).
    fn gcra_micros(self) -> (u64, u64) {
        let interval = (60_000_000 / u64::from(self.per_minute.max(1))).max(1);
        (interval, interval * u64::from(self.burst.max(1)))
    }
}

/// What Redis granted to one lease request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    /// Calls granted (0: the user is at the limit).
    pub granted: u32,
    /// Calls the shared budget still had after this grant.
    pub remaining: u32,
    /// Until a call would fit again (when none was granted).
    pub retry_after: std::time::Duration,
    /// Until the budget is full again.
    pub reset: std::time::Duration,
    /// Where the grant ended on the TAT line (Redis clock, µs): what giving
    /// unused calls back may undo is bounded by it.
    pub end_us: i64,
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

/// The login lockout's budgets (see `actions::LOGIN_LIMITS`).
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
    lease_script: redis::Script,
    return_script: redis::Script,
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
            lease_script: redis::Script::new(LEASE_LUA),
            return_script: redis::Script::new(RETURN_LEASE_LUA),
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
                "Redis unreachable: metered calls skip rate limits and rely on the deny-list in memory; logins, and signed-in routes after 2 s, are refused until it returns"
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

    /// The channel every instance listens on for [`Event`]s.
    fn events_channel(&self) -> String {
        self.key("events")
    }

    /// The deny-list: a sorted set of `s:<session>` / `t:<jti>` members
    /// scored by the Unix ms until which they are refused. One key, so an
    /// instance that (re)subscribes reads it whole in one command.
    fn denied_key(&self) -> String {
        self.key("denied")
    }

    /// Opens a connection subscribed to the events channel (for
    /// `jobs::spawn_revocation_listener`); `None` if Redis cannot be reached.
    pub async fn subscribe(&self) -> Option<(redis::aio::PubSubSink, redis::aio::PubSubStream)> {
        let subscribed = async {
            let (mut sink, stream) = self.client.get_async_pubsub().await?.split();
            sink.subscribe(self.events_channel()).await?;
            redis::RedisResult::Ok((sink, stream))
        };
        match tokio::time::timeout(TIMEOUT * 4, subscribed).await {
            Ok(Ok(pair)) => Some(pair),
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                None
            }
            Err(_) => {
                self.failed("subscribing timed out");
                None
            }
        }
    }

    /// The whole current deny-list (expired entries are dropped first).
    pub async fn denied_snapshot(&self) -> Option<Vec<(DeniedId, i64)>> {
        let key = self.denied_key();
        let now_ms = chrono::Utc::now().timestamp_millis();
        let (_, members): (i64, Vec<(String, f64)>) = self
            .run(Policy::FailClosed, |mut c| async move {
                redis::pipe()
                    .cmd("ZREMRANGEBYSCORE")
                    .arg(&key)
                    .arg("-inf")
                    .arg(now_ms)
                    .cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        // Scores are whole ms well inside f64's exact integers; Redis
        // hands every score back as a double.
        #[allow(clippy::cast_possible_truncation)]
        let denied = members
            .into_iter()
            .filter_map(|(member, until)| Some((DeniedId::parse(&member)?, until as i64)))
            .collect();
        Some(denied)
    }

    /// Tells every instance (this one's listener included) about `event`.
    pub async fn publish(&self, event: &Event) -> bool {
        let channel = self.events_channel();
        let message = event.encode();
        self.run(Policy::FailClosed, |mut c| async move {
            redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(&message)
                .query_async::<i64>(&mut c)
                .await
        })
        .await
        .is_some()
    }

    /// Puts a session or token on the deny-list until `until_ms` (Unix ms),
    /// and tells every instance, in one atomic step: an instance that
    /// subscribes meanwhile reads the entry from the set.
    pub async fn deny(&self, id: DeniedId, until_ms: i64) -> bool {
        let key = self.denied_key();
        let channel = self.events_channel();
        let (member, event) = match id {
            DeniedId::Session(session) => (format!("s:{session}"), Event::SessionDenied { session, until_ms }),
            DeniedId::Token(jti) => (format!("t:{jti}"), Event::TokenDenied { jti, until_ms }),
        };
        let message = event.encode();
        let now_ms = chrono::Utc::now().timestamp_millis();
        self.run(Policy::FailClosed, |mut c| async move {
            redis::pipe()
                .atomic()
                .cmd("ZADD")
                .arg(&key)
                .arg(until_ms)
                .arg(&member)
                .ignore()
                .cmd("ZREMRANGEBYSCORE")
                .arg(&key)
                .arg("-inf")
                .arg(now_ms)
                .ignore()
                .cmd("PUBLISH")
                .arg(&channel)
                .arg(&message)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await
        .is_some()
    }

    fn rate_key(&self, user: Uuid) -> String {
        self.user_key(user, "rate")
    }

    /// Leases up to `want` calls of the user's budget (see [`LEASE_LUA`]).
    /// `None` while Redis cannot answer: rate limits fail open.
    pub async fn lease_calls(&self, user: Uuid, limit: RateLimit, want: u32) -> Option<LeaseGrant> {
        let key = self.rate_key(user);
        let (interval, tolerance) = limit.gcra_micros();
        let script = &self.lease_script;
        let raw: Vec<i64> = self
            .run(Policy::FailOpen, |mut c| async move {
                script
                    .key(&key)
                    .arg(interval)
                    .arg(tolerance)
                    .arg(want.max(1))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let [granted, remaining, retry_us, reset_us, end_us] = raw.as_slice() else {
            return None;
        };
        let micros = |us: i64| std::time::Duration::from_micros(u64::try_from(us).unwrap_or(0));
        Some(LeaseGrant {
            granted: u32::try_from(*granted).unwrap_or(0),
            remaining: u32::try_from(*remaining).unwrap_or(0),
            retry_after: micros(*retry_us),
            reset: micros(*reset_us),
            end_us: *end_us,
        })
    }

    /// Gives `calls` leased but unused calls of the grant that ended at
    /// `end_us` back to the user's budget (see [`RETURN_LEASE_LUA`]).
    pub async fn return_calls(&self, user: Uuid, limit: RateLimit, calls: u32, end_us: i64) -> bool {
        let key = self.rate_key(user);
        let (interval, _) = limit.gcra_micros();
        let script = &self.return_script;
        self.run(Policy::FailOpen, |mut c| async move {
            script
                .key(&key)
                .arg(interval)
                .arg(calls)
                .arg(end_us)
                .invoke_async::<i64>(&mut c)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_anything_else_changes_nothing() {
        let events = [
            Event::SessionDenied {
                session: Uuid::new_v4(),
                until_ms: 1_800_000_000_000,
            },
            Event::TokenDenied {
                jti: Uuid::new_v4(),
                until_ms: 5,
            },
            Event::UserChanged { user: Uuid::new_v4() },
            Event::KeyRevoked { hash: "abc123".into() },
            Event::Other,
        ];
        for event in events {
            assert_eq!(Event::decode(&event.encode()), event);
        }
        for garbage in ["", "deny", "deny x:1 2", "user not-a-uuid", "key a b", "nonsense"] {
            assert_eq!(Event::decode(garbage), Event::Other, "{garbage:?}");
        }
    }
}
