//! Typed configuration, read once from the environment (and an optional
//! `.env`). Every variable is documented in the README; a bad value stops
//! startup with one line naming the variable.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use chrono_tz::Tz;

use crate::clients::{ClientLimits, IpCidr};
use crate::domain::currency::Currency;
use crate::redis_store::RateLimit;

/// A value that must never reach a log line or a `Debug` dump.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("configuration error: {var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// May carry a password, hence a `Secret`.
    pub database_url: Secret,
    pub redis_url: Secret,
    /// Prefix of every Redis key payg writes (several deployments, or test
    /// runs, can share one Redis).
    pub redis_prefix: String,
    pub bind: SocketAddr,
    /// The Prometheus `/metrics` listener, kept off the public API.
    pub metrics_bind: SocketAddr,
    pub db_pool_size: usize,
    pub workers: usize,
    /// How long a user's role, status and dues are used from memory before
    /// the database is asked again (changes made through payg reach every
    /// instance at once by push; this bounds changes made around it, and an
    /// invoice turning overdue).
    pub auth_cache_ttl: Duration,
    /// How long standings and API keys already trusted stay usable while
    /// PostgreSQL cannot answer (`PAYG_STALE_IF_ERROR`, default 60 s).
    pub stale_if_error: Duration,
    /// Per-user limit on metered calls; `None` when disabled (limit 0).
    pub rate_limit: Option<RateLimit>,
    /// Keys the hashes of API keys and refresh tokens.
    pub api_key_secret: Secret,
    pub refresh_ttl: Duration,
    /// How long after a refresh token is rotated presenting it again counts
    /// as the client's retry (it receives the pair already issued) rather
    /// than as theft (`PAYG_REFRESH_RETRY_GRACE`, default 10 s).
    pub refresh_retry_grace: Duration,
    pub jwt: JwtSettings,
    pub billing_tz: Tz,
    pub meter: MeterSettings,
    pub billing: BillingSettings,
    pub log_format: LogFormat,
    /// Proxies whose `X-Forwarded-For` names the client
    /// (`PAYG_TRUSTED_PROXIES`, comma-separated CIDRs; default none: the
    /// peer address is the client).
    pub trusted_proxies: Vec<IpCidr>,
    /// Per client address, per instance: logins, registrations and
    /// refreshes (`PAYG_CLIENT_AUTH_PER_MINUTE`, default 60, and
    /// `PAYG_CLIENT_AUTH_BURST`, default 20), lookups of unknown API keys
    /// (`PAYG_CLIENT_UNKNOWN_KEYS_PER_MINUTE`, 60, `_BURST`, 20), and payment
    /// webhooks (`PAYG_CLIENT_WEBHOOK_PER_MINUTE`, 600, `_BURST`, 100).
    /// 0 per minute switches a bucket off.
    pub client_limits: ClientLimits,
    /// Threads that run argon2 (`PAYG_PASSWORD_THREADS`), and logins or
    /// registrations that may wait for one (`PAYG_PASSWORD_QUEUE`) before
    /// the next gets 503 `busy`.
    pub password_threads: usize,
    pub password_queue: usize,
    /// Extra CA certificates (PEM) trusted for https upstreams besides the
    /// public roots (`PAYG_UPSTREAM_CA_FILE`, default none).
    pub upstream_ca_file: Option<std::path::PathBuf>,
    /// How often each instance re-reads the catalog, picking up changes
    /// made through others (`PAYG_CATALOG_REFRESH_MS`, default 1000).
    pub catalog_refresh: Duration,
    /// Hosts webhook endpoints may point at (`PAYG_WEBHOOK_ALLOWED_HOSTS`,
    /// comma-separated; default none: an admin's endpoint may be anywhere,
    /// a consumer's only on public addresses).
    pub webhook_allowed_hosts: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct BillingSettings {
    /// The one currency prices and invoices are in.
    pub currency: Currency,
    /// How long after a period ends the scheduler closes it.
    pub close_grace: Duration,
    pub invoice_due_days: u32,
    /// Days after `due_at` an unpaid invoice blocks metered calls (402).
    pub overdue_days: u32,
    /// HMAC key for payment-provider webhooks; webhooks are refused without it.
    pub webhook_secret: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub secret: Secret,
    pub ttl: Duration,
    pub issuer: String,
    pub audience: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeterMode {
    /// In-memory counters flushed by a background task (the default).
    Batched,
    /// Each call's increment is committed before its response leaves, in a
    /// group commit shared with the calls waiting at the same time.
    Durable,
    /// Authenticate but record nothing: for benchmarks only.
    Off,
}

#[derive(Debug, Clone)]
pub struct MeterSettings {
    pub mode: MeterMode,
    /// `PAYG_METER_MODE=sync` was given: the retired per-call mode, now an
    /// alias of `durable` (which promises the same); startup warns.
    pub sync_alias: bool,
    pub flush_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

pub const MIN_JWT_SECRET_BYTES: usize = 32;
/// The payment webhook's HMAC key: as long as an HMAC-SHA256 key should be.
pub const MIN_WEBHOOK_SECRET_BYTES: usize = 32;

impl Config {
    /// Reads the process environment (after loading `.env` if present).
    pub fn from_env() -> Result<Self, ConfigError> {
        let _ = dotenvy::dotenv();
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds the configuration from any name → value lookup, so tests can
    /// configure an app without touching the process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let var = |name: &'static str| get(name).filter(|v| !v.trim().is_empty());

        let jwt_secret = var("JWT_SECRET").ok_or_else(|| ConfigError {
            var: "JWT_SECRET",
            message: "is required (at least 32 bytes of random data)".into(),
        })?;
        if jwt_secret.len() < MIN_JWT_SECRET_BYTES {
            return Err(ConfigError {
                var: "JWT_SECRET",
                message: format!(
                    "is {} bytes long; at least {MIN_JWT_SECRET_BYTES} are required",
                    jwt_secret.len()
                ),
            });
        }

        let webhook_secret = var("PAYG_WEBHOOK_SECRET");
        if let Some(secret) = &webhook_secret
            && secret.len() < MIN_WEBHOOK_SECRET_BYTES
        {
            return Err(ConfigError {
                var: "PAYG_WEBHOOK_SECRET",
                message: format!(
                    "is {} bytes long; at least {MIN_WEBHOOK_SECRET_BYTES} are required",
                    secret.len()
                ),
            });
        }

        let default_workers = std::thread::available_parallelism().map_or(2, |n| n.get());

        Ok(Self {
            database_url: Secret::new(
                var("DATABASE_URL").unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/payg".into()),
            ),
            redis_url: Secret::new(var("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".into())),
            redis_prefix: var("PAYG_REDIS_PREFIX").unwrap_or_else(|| "payg:".into()),
            bind: parse_or("PAYG_BIND", var("PAYG_BIND"), "127.0.0.1:8080".parse().ok())?,
            metrics_bind: parse_or(
                "PAYG_METRICS_BIND",
                var("PAYG_METRICS_BIND"),
                "127.0.0.1:9100".parse().ok(),
            )?,
            db_pool_size: parse_or("PAYG_DB_POOL_SIZE", var("PAYG_DB_POOL_SIZE"), Some(16))?,
            workers: parse_or("PAYG_WORKERS", var("PAYG_WORKERS"), Some(default_workers))?,
            auth_cache_ttl: Duration::from_millis(parse_or(
                "PAYG_AUTH_CACHE_MS",
                var("PAYG_AUTH_CACHE_MS"),
                Some(30_000u64),
            )?),
            stale_if_error: duration_or(
                "PAYG_STALE_IF_ERROR",
                var("PAYG_STALE_IF_ERROR"),
                Duration::from_secs(60),
            )?,
            rate_limit: rate_limit(&var, "PAYG_RATE_LIMIT_PER_MINUTE", "PAYG_RATE_LIMIT_BURST", (600, None))?,
            api_key_secret: Secret::new(
                var("PAYG_API_KEY_SECRET").unwrap_or_else(|| derived_secret(&jwt_secret, "payg api keys")),
            ),
            refresh_ttl: duration_or(
                "PAYG_REFRESH_TTL",
                var("PAYG_REFRESH_TTL"),
                Duration::from_secs(30 * 86_400),
            )?,
            refresh_retry_grace: {
                let grace = duration_or(
                    "PAYG_REFRESH_RETRY_GRACE",
                    var("PAYG_REFRESH_RETRY_GRACE"),
                    Duration::from_secs(10),
                )?;
                // A retry comes within seconds; a longer grace only widens
                // what a thief with an old token can still exchange.
                if grace > Duration::from_secs(60) {
                    return Err(ConfigError {
                        var: "PAYG_REFRESH_RETRY_GRACE",
                        message: "must be at most 60s".into(),
                    });
                }
                grace
            },
            jwt: JwtSettings {
                secret: Secret::new(jwt_secret.clone()),
                ttl: duration_or("JWT_TTL", var("JWT_TTL"), Duration::from_secs(15 * 60))?,
                issuer: var("JWT_ISSUER").unwrap_or_else(|| "payg".into()),
                audience: var("JWT_AUDIENCE").unwrap_or_else(|| "payg-api".into()),
            },
            billing_tz: match var("PAYG_BILLING_TZ") {
                None => Tz::UTC,
                Some(name) => name.parse().map_err(|_| ConfigError {
                    var: "PAYG_BILLING_TZ",
                    message: format!("{name:?} is not an IANA time zone name (e.g. UTC, Europe/Paris)"),
                })?,
            },
            meter: MeterSettings {
                mode: match var("PAYG_METER_MODE").as_deref() {
                    None | Some("batched") => MeterMode::Batched,
                    Some("durable" | "sync") => MeterMode::Durable,
                    Some("off") => MeterMode::Off,
                    Some(other) => {
                        return Err(ConfigError {
                            var: "PAYG_METER_MODE",
                            message: format!("{other:?} is not one of batched, durable, off"),
                        });
                    }
                },
                sync_alias: var("PAYG_METER_MODE").as_deref() == Some("sync"),
                flush_interval: Duration::from_millis(parse_or(
                    "PAYG_METER_FLUSH_MS",
                    var("PAYG_METER_FLUSH_MS"),
                    Some(200u64),
                )?)
                .max(Duration::from_millis(1)),
            },
            billing: BillingSettings {
                currency: match var("PAYG_CURRENCY") {
                    None => Currency::USD,
                    Some(code) => code
                        .parse()
                        .map_err(|e: crate::domain::currency::UnknownCurrency| ConfigError {
                            var: "PAYG_CURRENCY",
                            message: e.to_string(),
                        })?,
                },
                close_grace: duration_or("PAYG_CLOSE_GRACE", var("PAYG_CLOSE_GRACE"), Duration::from_secs(600))?,
                invoice_due_days: parse_or("PAYG_INVOICE_DUE_DAYS", var("PAYG_INVOICE_DUE_DAYS"), Some(14))?,
                overdue_days: parse_or("PAYG_OVERDUE_DAYS", var("PAYG_OVERDUE_DAYS"), Some(30))?,
                webhook_secret: webhook_secret.map(Secret::new),
            },
            password_threads: parse_or("PAYG_PASSWORD_THREADS", var("PAYG_PASSWORD_THREADS"), Some(2usize))?.max(1),
            password_queue: parse_or("PAYG_PASSWORD_QUEUE", var("PAYG_PASSWORD_QUEUE"), Some(16usize))?,
            client_limits: ClientLimits {
                credentials: rate_limit(
                    &var,
                    "PAYG_CLIENT_AUTH_PER_MINUTE",
                    "PAYG_CLIENT_AUTH_BURST",
                    (60, Some(20)),
                )?,
                unknown_keys: rate_limit(
                    &var,
                    "PAYG_CLIENT_UNKNOWN_KEYS_PER_MINUTE",
                    "PAYG_CLIENT_UNKNOWN_KEYS_BURST",
                    (60, Some(20)),
                )?,
                webhooks: rate_limit(
                    &var,
                    "PAYG_CLIENT_WEBHOOK_PER_MINUTE",
                    "PAYG_CLIENT_WEBHOOK_BURST",
                    (600, Some(100)),
                )?,
            },
            trusted_proxies: match var("PAYG_TRUSTED_PROXIES") {
                None => Vec::new(),
                Some(list) => list
                    .split(',')
                    .filter(|c| !c.trim().is_empty())
                    .map(str::parse)
                    .collect::<Result<_, String>>()
                    .map_err(|message| ConfigError {
                        var: "PAYG_TRUSTED_PROXIES",
                        message,
                    })?,
            },
            upstream_ca_file: var("PAYG_UPSTREAM_CA_FILE").map(std::path::PathBuf::from),
            webhook_allowed_hosts: var("PAYG_WEBHOOK_ALLOWED_HOSTS")
                .map(|hosts| {
                    hosts
                        .split(',')
                        .map(|h| {
                            h.trim()
                                .trim_start_matches('[')
                                .trim_end_matches(']')
                                .to_ascii_lowercase()
                        })
                        .filter(|h| !h.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            catalog_refresh: Duration::from_millis(parse_or(
                "PAYG_CATALOG_REFRESH_MS",
                var("PAYG_CATALOG_REFRESH_MS"),
                Some(1000u64),
            )?)
            .max(Duration::from_millis(50)),
            log_format: match var("PAYG_LOG_FORMAT").as_deref() {
                None | Some("pretty") => LogFormat::Pretty,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    return Err(ConfigError {
                        var: "PAYG_LOG_FORMAT",
                        message: format!("{other:?} is not one of pretty, json"),
                    });
                }
            },
        })
    }
}

/// A secret derived from another for a different purpose, so one secret
/// suffices to run payg (set PAYG_API_KEY_SECRET to decouple them).
fn derived_secret(master: &str, purpose: &str) -> String {
    use hmac::{Hmac, Mac};
    match Hmac::<sha2::Sha256>::new_from_slice(master.as_bytes()) {
        Ok(mut mac) => {
            mac.update(purpose.as_bytes());
            hex::encode(mac.finalize().into_bytes())
        }
        Err(_) => unreachable!("HMAC takes keys of any length"),
    }
}

fn parse_or<T: std::str::FromStr>(
    name: &'static str,
    value: Option<String>,
    default: Option<T>,
) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    match value {
        Some(v) => v.trim().parse().map_err(|e| ConfigError {
            var: name,
            message: format!("{v:?} is not valid: {e}"),
        }),
        None => default.ok_or_else(|| ConfigError {
            var: name,
            message: "is required".into(),
        }),
    }
}

/// A rate limit from its two variables (each defaulting as given); `None`
/// when switched off.
fn rate_limit(
    var: &impl Fn(&'static str) -> Option<String>,
    per_minute_var: &'static str,
    burst_var: &'static str,
    (per_minute, burst): (u32, Option<u32>),
) -> Result<Option<RateLimit>, ConfigError> {
    let per_minute: u32 = parse_or(per_minute_var, var(per_minute_var), Some(per_minute))?;
    // No default burst: as many at once as per minute.
    let burst: u32 = parse_or(burst_var, var(burst_var), Some(burst.unwrap_or(per_minute)))?;
    Ok((per_minute > 0).then_some(RateLimit {
        per_minute,
        burst: burst.max(1),
    }))
}

/// Accepts `900`, `900s`, `15m` or `1h`; a bare number is seconds.
fn duration_or(name: &'static str, value: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    let Some(raw) = value else { return Ok(default) };
    let v = raw.trim();
    let (digits, unit) = match v.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let n: u64 = digits.parse().map_err(|_| ConfigError {
        var: name,
        message: format!("{raw:?} is not a duration like 900, 900s, 15m or 1h"),
    })?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        _ => None,
    }
    .filter(|&s| s > 0)
    .ok_or_else(|| ConfigError {
        var: name,
        message: format!("{raw:?} is not a positive duration like 900, 900s, 15m or 1h"),
    })?;
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    const SECRET: (&str, &str) = ("JWT_SECRET", "0123456789abcdef0123456789abcdef");

    #[test]
    fn defaults_apply_when_only_the_secret_is_set() {
        let c = config(&[SECRET]).unwrap();
        assert_eq!(c.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(c.jwt.ttl, Duration::from_secs(900));
        assert_eq!(c.billing_tz, Tz::UTC);
        assert_eq!(c.meter.mode, MeterMode::Batched);
        assert!(!c.meter.sync_alias);
        assert_eq!(c.meter.flush_interval, Duration::from_millis(200));
        assert_eq!(c.database_url.expose(), "postgres://postgres@127.0.0.1:5432/payg");
    }

    #[test]
    fn sync_is_an_alias_of_durable_and_says_so() {
        let c = config(&[SECRET, ("PAYG_METER_MODE", "sync")]).unwrap();
        assert_eq!((c.meter.mode, c.meter.sync_alias), (MeterMode::Durable, true));
        let c = config(&[SECRET, ("PAYG_METER_MODE", "durable")]).unwrap();
        assert_eq!((c.meter.mode, c.meter.sync_alias), (MeterMode::Durable, false));
    }

    #[test]
    fn a_missing_or_short_secret_is_refused_by_name() {
        assert_eq!(config(&[]).unwrap_err().var, "JWT_SECRET");
        let err = config(&[("JWT_SECRET", "short")]).unwrap_err();
        assert_eq!(err.var, "JWT_SECRET");
        assert!(err.to_string().contains("32"));
        let jwt = ("JWT_SECRET", "0123456789abcdef0123456789abcdef");
        let err = config(&[jwt, ("PAYG_WEBHOOK_SECRET", "whsec_short")]).unwrap_err();
        assert_eq!(err.var, "PAYG_WEBHOOK_SECRET");
        assert!(config(&[jwt, ("PAYG_WEBHOOK_SECRET", &"w".repeat(32))]).is_ok());
        let err = config(&[jwt, ("PAYG_REFRESH_RETRY_GRACE", "61s")]).unwrap_err();
        assert_eq!(err.var, "PAYG_REFRESH_RETRY_GRACE");
        assert!(config(&[jwt, ("PAYG_REFRESH_RETRY_GRACE", "1m")]).is_ok());
    }

    #[test]
    fn trusted_proxies_are_cidrs() {
        let c = config(&[SECRET, ("PAYG_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.7, ::1/128")]).unwrap();
        let [net, host, v6] = c.trusted_proxies.as_slice() else {
            panic!("three entries")
        };
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert!(net.contains(ip("10.200.3.4")) && !net.contains(ip("11.0.0.1")));
        assert!(net.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped");
        assert!(host.contains(ip("192.168.1.7")) && !host.contains(ip("192.168.1.8")));
        assert!(v6.contains(ip("::1")) && !v6.contains(ip("127.0.0.1")));
        assert!("0.0.0.0/0".parse::<IpCidr>().unwrap().contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "nope", "::1/129"] {
            let err = config(&[SECRET, ("PAYG_TRUSTED_PROXIES", bad)]).unwrap_err();
            assert_eq!(err.var, "PAYG_TRUSTED_PROXIES", "{bad}");
        }
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            ("PAYG_BIND", "nowhere"),
            ("PAYG_BILLING_TZ", "Mars/Olympus"),
            ("JWT_TTL", "soon"),
            ("JWT_TTL", "0"),
            ("PAYG_METER_MODE", "sometimes"),
            ("PAYG_DB_POOL_SIZE", "-1"),
        ] {
            let err = config(&[SECRET, (var, value)]).unwrap_err();
            assert_eq!(err.var, var, "{value}");
        }
    }

    #[test]
    fn durations_take_units() {
        let c = config(&[SECRET, ("JWT_TTL", "2h"), ("PAYG_BILLING_TZ", "Asia/Kolkata")]).unwrap();
        assert_eq!(c.jwt.ttl, Duration::from_secs(7200));
        assert_eq!(c.billing_tz, chrono_tz::Asia::Kolkata);
    }

    #[test]
    fn secrets_do_not_print() {
        let c = config(&[SECRET]).unwrap();
        assert!(!format!("{c:?}").contains(SECRET.1));
    }
}
