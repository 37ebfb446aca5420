//! Who is calling: credentials → an authenticated [`Caller`], and what the
//! caller's role allows ([`Caller::require_finance`], [`Caller::require_admin`]).
//!
//! One path, [`Authenticator::authenticate`], serves both the extractors
//! (`routes::extract`: ordinary routes) and the metering middleware (metered
//! routes), so every authenticated route applies the same checks: token
//! signature/algorithm/expiry/issuer/audience, the user still existing, and
//! the user not being suspended. Failures are an [`AuthError`]; `error.rs`
//! turns them into HTTP answers.

pub mod jwt;
pub mod key_cache;
pub mod password;
pub mod sessions;
pub mod tokens;
pub mod ttl_cache;

use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpRequest;
use actix_web::http::header;
use uuid::Uuid;

use crate::clients::{Clients, Throttled};
use crate::db::{DbPool, PoolError};
use crate::domain::Clock;
use crate::models::api_key::ApiKey;
use crate::models::user::Standing;
use crate::models::{Role, User, UserStatus};
use crate::redis_store::{Policy, RateLimit, RateOutcome, RedisStore};
use key_cache::KeyCache;
use tokens::TokenHasher;
use ttl_cache::TtlCache;

/// How long an API key lookup is trusted without being re-confirmed. Kept
/// well under the one-second promise for revocations, leaving room for
/// scheduling delays on a loaded instance. Confirmations normally come every
/// [`key_cache::REVALIDATE_EVERY`].
const KEY_CACHE_MAX_AGE: Duration = Duration::from_millis(750);

/// Hashes per revalidation query (bounds each query's array parameter and
/// how long it runs).
const REVALIDATE_CHUNK: usize = 5_000;

pub use jwt::JwtKeys;

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A JWT access token: its id, its session (refresh family), its expiry.
    AccessToken {
        jti: Uuid,
        session: Option<Uuid>,
        expires_at: i64,
    },
    ApiKey {
        key_id: Uuid,
    },
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub user_id: Uuid,
    pub role: Role,
    /// Has an invoice unpaid past its due date plus the overdue grace:
    /// metered APIs refuse such a caller with 402 until it is paid.
    pub overdue: bool,
    pub credential: Credential,
}

impl Caller {
    /// Everything but metered calls and reading one's own usage, cost and
    /// invoices takes a signed-in session, not an API key: a leaked key must
    /// not be able to mint or revoke keys (and so outlive its own
    /// revocation), end sessions, change the billing profile, or move money.
    pub fn require_access_token(&self) -> Result<(), AuthError> {
        match self.credential {
            Credential::AccessToken { .. } => Ok(()),
            Credential::ApiKey { .. } => Err(AuthError::AccessTokenRequired),
        }
    }

    /// Finance routes: the finance or admin role, with an access token.
    pub fn require_finance(&self) -> Result<(), AuthError> {
        self.require_access_token()?;
        if self.role.can_do_finance() {
            Ok(())
        } else {
            Err(AuthError::Forbidden("this route requires the finance or admin role"))
        }
    }

    /// Admin routes: the admin role, with an access token.
    pub fn require_admin(&self) -> Result<(), AuthError> {
        self.require_access_token()?;
        if self.role == Role::Admin {
            Ok(())
        } else {
            Err(AuthError::Forbidden("this route requires the admin role"))
        }
    }
}

/// What authentication found out about a call.
#[derive(Debug, Clone, Copy)]
pub struct Authenticated {
    pub caller: Caller,
    /// The rate-limit step for metered calls; `None` when not limited or
    /// when Redis is unreachable (rate limits fail open).
    pub rate: Option<RateOutcome>,
}

/// Why a request is not let through. `error.rs` decides what each means
/// over HTTP (401, 403, 503, …).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials presented")]
    Unauthenticated,
    /// Presented but not valid: bad signature or algorithm, expired, wrong
    /// issuer or audience, revoked, logged out, unknown key or user.
    #[error("invalid or expired credentials")]
    InvalidToken,
    #[error("more than one credential presented")]
    AmbiguousCredentials,
    #[error("an API key where an access token is required")]
    AccessTokenRequired,
    #[error("the account is suspended")]
    Suspended,
    /// The deny-list could not be consulted (Redis unreachable) for an
    /// access token outside a metered call.
    #[error("revocations cannot be checked")]
    RevocationsUnknown,
    /// The caller's role does not allow the route.
    #[error("{0}")]
    Forbidden(&'static str),
    /// Too many unknown API keys from this client address.
    #[error(transparent)]
    Throttled(#[from] Throttled),
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// What a request is authenticated for. Metered calls count against the
/// caller's rate limit and trust an access token Redis could not check;
/// plain routes refuse such a token; ending a session accepts it, since
/// logging out a session that may have ended already does no harm, and
/// refusing it would keep its refresh tokens alive through an outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Plain,
    Metered,
    EndSession,
}

/// API keys are recognisable by their prefix; anything else is a JWT.
pub const API_KEY_PREFIX: &str = "payg_";

enum Presented<'a> {
    Jwt(&'a str),
    ApiKey(&'a str),
}

/// The credential a request presents: `X-API-Key: <key>`, or
/// `Authorization: Bearer <key or JWT>`; one header, once, since two
/// credentials could name different users and neither should silently win.
fn presented(req: &HttpRequest) -> Result<Presented<'_>, AuthError> {
    let mut api_keys = req.headers().get_all("x-api-key");
    let mut authorizations = req.headers().get_all(header::AUTHORIZATION);
    let (api_key, authorization) = (api_keys.next(), authorizations.next());
    let repeated = api_keys.next().is_some() || authorizations.next().is_some();
    let (value, from_api_key_header) = match (api_key, authorization) {
        (None, None) => return Err(AuthError::Unauthenticated),
        (Some(_), Some(_)) => return Err(AuthError::AmbiguousCredentials),
        _ if repeated => return Err(AuthError::AmbiguousCredentials),
        (Some(key), None) => (key, true),
        (None, Some(auth)) => (auth, false),
    };
    let value = value.to_str().map_err(|_| AuthError::InvalidToken)?;
    if from_api_key_header {
        return Ok(Presented::ApiKey(value.trim()));
    }
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => return Err(AuthError::Unauthenticated),
    };
    Ok(if token.starts_with(API_KEY_PREFIX) {
        Presented::ApiKey(token)
    } else {
        Presented::Jwt(token)
    })
}

pub struct Authenticator {
    jwt: JwtKeys,
    db: DbPool,
    redis: Arc<RedisStore>,
    hasher: TokenHasher,
    /// User → standing, reused while fresh and while Redis reports the
    /// same user version it was read at.
    standings: TtlCache<Uuid, CachedStanding>,
    /// API key hash → (key id, user id), including "no such key".
    keys: KeyCache,
    /// Keys whose `last_used_at` was written in the last minute.
    recently_touched: TtlCache<Uuid, ()>,
    clock: Arc<dyn Clock>,
    /// Unknown API keys spend the client's unknown-key bucket.
    clients: Arc<Clients>,
    overdue_after: chrono::Duration,
    rate_limit: Option<RateLimit>,
}

/// What is cached per user: role, status, whether they owe overdue money,
/// and the Redis "user version" it was read at.
#[derive(Debug, Clone, Copy)]
struct CachedStanding {
    standing: Standing,
    overdue: bool,
    version: Option<i64>,
}

pub struct AuthSettings {
    pub standing_ttl: Duration,
    pub overdue_days: u32,
    pub rate_limit: Option<RateLimit>,
}

impl Authenticator {
    pub fn new(
        jwt: JwtKeys,
        db: DbPool,
        redis: Arc<RedisStore>,
        hasher: TokenHasher,
        clock: Arc<dyn Clock>,
        clients: Arc<Clients>,
        settings: AuthSettings,
    ) -> Self {
        Self {
            jwt,
            db,
            redis,
            hasher,
            standings: TtlCache::new(settings.standing_ttl),
            // A revoked key must stop working within a second everywhere.
            keys: KeyCache::new(settings.standing_ttl.min(KEY_CACHE_MAX_AGE)),
            recently_touched: TtlCache::new(Duration::from_secs(60)),
            clock,
            clients,
            overdue_after: chrono::Duration::days(i64::from(settings.overdue_days)),
            rate_limit: settings.rate_limit,
        }
    }

    pub fn jwt(&self) -> &JwtKeys {
        &self.jwt
    }

    pub fn hasher(&self) -> &TokenHasher {
        &self.hasher
    }

    /// Authenticates a request. The database is awaited only on a cache
    /// miss; Redis once per call (deny-list, user version and, for metered
    /// calls, the rate limit, in one script).
    pub async fn authenticate(&self, req: &HttpRequest, purpose: Purpose) -> Result<Authenticated, AuthError> {
        let (user_id, credential) = match presented(req)? {
            Presented::Jwt(token) => {
                let claims = self.jwt.verify(token).ok_or(AuthError::InvalidToken)?;
                let credential = Credential::AccessToken {
                    jti: claims.jti,
                    session: claims.sid,
                    expires_at: claims.exp,
                };
                (claims.sub, credential)
            }
            Presented::ApiKey(key) => {
                let (key_id, user_id) = self.resolve_api_key(req, key).await?;
                (user_id, Credential::ApiKey { key_id })
            }
        };
        let (jti, session) = match credential {
            Credential::AccessToken { jti, session, .. } => (Some(jti), session),
            Credential::ApiKey { .. } => (None, None),
        };
        let limit = if purpose == Purpose::Metered {
            self.rate_limit
        } else {
            None
        };
        // Only metered calls trust an access token that Redis could not
        // check against the deny-list (availability first: a token lives
        // minutes, and a metered call changes nothing but a count). Every
        // other route would let a logged-out session read or act, so there
        // the check fails closed, and asks Redis even while the breaker is
        // open. API keys are revoked in PostgreSQL and never need Redis.
        let policy = match (credential, purpose) {
            (Credential::AccessToken { .. }, Purpose::Plain | Purpose::EndSession) => Policy::FailClosed,
            _ => Policy::FailOpen,
        };
        let verdict = self.redis.check_call(user_id, jti, session, limit, policy).await;
        match verdict {
            Some(v) if v.denied => return Err(AuthError::InvalidToken),
            None if policy == Policy::FailClosed && purpose != Purpose::EndSession => {
                return Err(AuthError::RevocationsUnknown);
            }
            _ => {}
        }
        let cached = self.standing(user_id, verdict.map(|v| v.user_version)).await?;
        if cached.standing.status == UserStatus::Suspended {
            return Err(AuthError::Suspended);
        }
        Ok(Authenticated {
            caller: Caller {
                user_id,
                // The role comes from the database, not the token, so a role
                // change applies on the next call rather than at token expiry.
                role: cached.standing.role,
                overdue: cached.overdue,
                credential,
            },
            rate: verdict.and_then(|v| v.rate),
        })
    }

    async fn standing(&self, user_id: Uuid, version: Option<i64>) -> Result<CachedStanding, AuthError> {
        let fresh = self
            .standings
            .get(&user_id)
            .filter(|c| version.is_none() || c.version == version);
        if let Some(cached) = fresh {
            return Ok(cached);
        }
        let mut conn = self.db.get().await?;
        let cutoff = self.clock.now() - self.overdue_after;
        let (standing, overdue) = User::standing(&mut conn, user_id, cutoff)
            .await?
            .ok_or(AuthError::InvalidToken)?;
        let cached = CachedStanding {
            standing,
            overdue,
            version,
        };
        self.standings.put(user_id, cached);
        Ok(cached)
    }

    /// The key's id and owner. A key not in the cache costs a query; a
    /// client whose keys keep turning out unknown (a guesser, or a client
    /// stuck on a revoked key) is refused before that query once its
    /// unknown-key bucket is spent (only unknown keys are charged, after
    /// the query). A key found unknown is cached as such for the cache's
    /// short lifetime.
    async fn resolve_api_key(&self, req: &HttpRequest, key: &str) -> Result<(Uuid, Uuid), AuthError> {
        if !key.starts_with(API_KEY_PREFIX) || key.len() > 128 {
            return Err(AuthError::InvalidToken);
        }
        let hash = self.hasher.hash(key);
        let found = match self.keys.get(&hash) {
            Some(found) => found,
            None => {
                self.clients.may_look_up_key(req)?;
                let asked_at = std::time::Instant::now();
                let mut conn = self.db.get().await?;
                let found = ApiKey::find_active_by_hash(&mut conn, &hash).await?;
                self.keys.put(hash, found, asked_at);
                if found.is_none() {
                    self.clients.unknown_key_looked_up(req);
                }
                found
            }
        };
        let (key_id, user_id) = found.ok_or(AuthError::InvalidToken)?;
        if self.recently_touched.get(&key_id).is_none() {
            self.recently_touched.put(key_id, ());
            // last_used_at is informational: written at most once a minute
            // per key, off the request path.
            let db = self.db.clone();
            let now = self.clock.now();
            tokio::spawn(async move {
                if let Ok(mut conn) = db.get().await {
                    let _ = ApiKey::touch(&mut conn, key_id, now).await;
                }
            });
        }
        Ok((key_id, user_id))
    }

    /// Forget a user's cached standing on this instance, and tell the others.
    pub async fn user_changed(&self, user_id: Uuid) {
        self.standings.remove(&user_id);
        self.redis.bump_user_version(user_id).await;
    }

    /// Forget a revoked key on this instance (others forget within a second).
    pub fn forget_key(&self, key_hash: &str) {
        self.keys.remove(key_hash);
    }

    /// One round of re-confirming the cached API keys against the database
    /// (see [`key_cache`]); run every [`key_cache::REVALIDATE_EVERY`] on a
    /// connection of its own (`startup::spawn_key_revalidation`).
    pub async fn revalidate_keys(&self, conn: &mut diesel_async::AsyncPgConnection) -> diesel::QueryResult<()> {
        let asked = self.keys.to_revalidate();
        for chunk in asked.chunks(REVALIDATE_CHUNK) {
            let asked_at = std::time::Instant::now();
            let active = ApiKey::still_active(conn, chunk).await?;
            self.keys.confirm(chunk, &active, asked_at);
        }
        Ok(())
    }
}
