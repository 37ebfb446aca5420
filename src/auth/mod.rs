//! Who is calling: credentials → an authenticated [`Caller`], and what the
//! caller's role allows ([`Caller::require_finance`], [`Caller::require_admin`]).
//!
//! One path, [`Authenticator::authenticate`], serves both the extractors
//! (`routes::extract`: ordinary routes) and the metering middleware (metered
//! routes), so every authenticated route applies the same checks: token
//! signature/algorithm/expiry/issuer/audience, the user still existing, and
//! the user not being suspended. Failures are an [`AuthError`]; `error.rs`
//! turns them into HTTP answers.

pub mod accounts;
pub mod jwt;
pub mod key_cache;
pub mod password;
pub mod revocations;
pub mod sessions;
pub mod standings;
pub mod tokens;
pub mod ttl_cache;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use actix_web::http::header;
use uuid::Uuid;

use crate::clients::{Clients, Throttled};
use crate::db::{DbPool, PoolError};
use crate::domain::Clock;
use crate::models::api_key::ApiKey;
use crate::models::{Role, User, UserStatus};
use crate::redis_store::{DeniedId, Event, RedisStore};
use key_cache::KeyCache;
use revocations::Revocations;
use standings::{CachedStanding, Standings};
use tokens::TokenHasher;
use ttl_cache::TtlCache;

/// How long an API key lookup is trusted without being re-confirmed. A
/// revocation reaches every instance by push at once; this bounds it when
/// the push is lost (Redis unreachable), well under the one-second promise.
/// Confirmations normally come every [`key_cache::REVALIDATE_EVERY`].
const KEY_CACHE_MAX_AGE: Duration = Duration::from_millis(750);

/// After a database failure, calls use what they trusted already for this
/// long before one of them asks the database again: an outage costs calls
/// no waiting, and the database is not hammered while it comes back.
const RETRY_DATABASE_AFTER: Duration = Duration::from_secs(1);

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
    /// A spending cap (or prepaid-only) applies to the caller's calls.
    pub capped: bool,
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
    /// This instance has not heard the deny-list for longer than
    /// `revocations::HEARING_BOUND` (Redis unreachable), for an access
    /// token outside a metered call.
    #[error("revocations cannot be checked")]
    RevocationsUnknown,
    /// The database cannot answer and nothing trusted already covers the
    /// call (a new key, an unknown user, a standing past stale-if-error).
    #[error("the database is unavailable")]
    DatabaseUnavailable,
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

impl AuthError {
    /// The database could not be reached, or its connection broke: what
    /// was trusted already may stand in for the answer.
    fn is_database_unreachable(&self) -> bool {
        match self {
            AuthError::Pool(_) | AuthError::DatabaseUnavailable => true,
            AuthError::Database(err) => crate::db::connection_failed(err),
            _ => false,
        }
    }
}

/// What a request is authenticated for. Metered calls trust the deny-list
/// in memory even while this instance cannot hear Redis; plain routes then
/// refuse access tokens; ending a session accepts them, since
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
    /// The deny-list and user changes, pushed into memory.
    revocations: Revocations,
    /// User → standing (role, status, overdue).
    standings: Standings,
    /// API key hash → (key id, user id), including "no such key".
    keys: KeyCache,
    /// Keys whose `last_used_at` was written in the last minute.
    recently_touched: TtlCache<Uuid, ()>,
    clock: Arc<dyn Clock>,
    /// Unknown API keys spend the client's unknown-key bucket.
    clients: Arc<Clients>,
    overdue_after: chrono::Duration,
    /// When a read for authentication last found the database unreachable.
    database_failed_at: Mutex<Option<Instant>>,
}

pub struct AuthSettings {
    /// How long a standing is used without asking the database again.
    pub standing_ttl: Duration,
    /// How long what was trusted stays usable while the database is down.
    pub stale_if_error: Duration,
    pub overdue_days: u32,
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
            revocations: Revocations::new(),
            standings: Standings::new(settings.standing_ttl, settings.stale_if_error),
            // A revoked key must stop working within a second everywhere,
            // even when its push is lost.
            keys: KeyCache::new(settings.standing_ttl.min(KEY_CACHE_MAX_AGE), settings.stale_if_error),
            recently_touched: TtlCache::new(Duration::from_secs(60)),
            clock,
            clients,
            overdue_after: chrono::Duration::days(i64::from(settings.overdue_days)),
            database_failed_at: Mutex::new(None),
        }
    }

    pub fn jwt(&self) -> &JwtKeys {
        &self.jwt
    }

    pub fn hasher(&self) -> &TokenHasher {
        &self.hasher
    }

    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// Authenticates a request. Nothing is awaited but the database, and
    /// that only for a standing or key not in memory: the deny-list is
    /// pushed into memory (`revocations`).
    pub async fn authenticate(&self, req: &HttpRequest, purpose: Purpose) -> Result<Caller, AuthError> {
        let (user_id, credential) = match presented(req)? {
            Presented::Jwt(token) => self.access_token(token)?,
            Presented::ApiKey(key) => {
                let (key_id, user_id) = self.resolve_api_key(req, key).await?;
                (user_id, Credential::ApiKey { key_id })
            }
        };
        self.caller(user_id, credential, purpose).await
    }

    /// Authenticates an access token that did not come in a header: the
    /// console's session cookie carries one. The same checks, the same
    /// rights, as `Authorization: Bearer` with it.
    pub async fn authenticate_access_token(&self, token: &str, purpose: Purpose) -> Result<Caller, AuthError> {
        let (user_id, credential) = self.access_token(token)?;
        self.caller(user_id, credential, purpose).await
    }

    fn access_token(&self, token: &str) -> Result<(Uuid, Credential), AuthError> {
        let claims = self.jwt.verified(token).ok_or(AuthError::InvalidToken)?;
        let credential = Credential::AccessToken {
            jti: claims.jti,
            session: claims.sid,
            expires_at: claims.exp,
        };
        Ok((claims.sub, credential))
    }

    /// The caller behind a verified credential: the deny-list, then the
    /// user's standing.
    async fn caller(&self, user_id: Uuid, credential: Credential, purpose: Purpose) -> Result<Caller, AuthError> {
        if let Credential::AccessToken { jti, session, .. } = credential {
            // Ending a session that already ended does no harm, and a
            // logout that Redis could not carry is denied here already:
            // its retry must still finish the job.
            if purpose != Purpose::EndSession && self.revocations.is_denied(jti, session) {
                return Err(AuthError::InvalidToken);
            }
            // Memory may be missing a logout while Redis is not heard. Only
            // metered calls go on with it (availability first: a token
            // lives minutes, and a metered call changes nothing but a
            // count); every other route would let a logged-out session read
            // or act, so there it fails closed. Ending a session is let
            // through: it only takes rights away. API keys are revoked in
            // PostgreSQL and never depend on Redis.
            if purpose == Purpose::Plain && !self.revocations.hearing() {
                return Err(AuthError::RevocationsUnknown);
            }
        }
        let cached = self.standing(user_id, purpose).await?;
        if cached.standing.status == UserStatus::Suspended {
            return Err(AuthError::Suspended);
        }
        Ok(Caller {
            user_id,
            // The role comes from the database, not the token, so a role
            // change applies on the next call rather than at token expiry.
            role: cached.standing.role,
            overdue: cached.overdue,
            capped: cached.standing.capped,
            credential,
        })
    }

    /// The user's standing: from memory while fresh, else from the
    /// database; while the database cannot answer, what was read within
    /// the stale-if-error window (never for a user whose change was heard,
    /// and never for a user not seen before: nothing new is trusted).
    async fn standing(&self, user_id: Uuid, purpose: Purpose) -> Result<CachedStanding, AuthError> {
        let since_resync = purpose != Purpose::Metered;
        if let Some(cached) = self.standings.fresh(user_id, &self.revocations) {
            return Ok(cached);
        }
        if self.database_recently_failed() {
            return self
                .standings
                .stale(user_id, &self.revocations, since_resync)
                .ok_or(AuthError::DatabaseUnavailable);
        }
        // A change heard while the read was in flight makes it stale before
        // it lands: read once more (a second overtaken read is used for this
        // call only, and not kept).
        match self.read_standing(user_id, since_resync).await? {
            (cached, false) => Ok(cached),
            (_, true) => Ok(self.read_standing(user_id, since_resync).await?.0),
        }
    }

    /// One read of the standing from the database, kept unless a change to
    /// the user was heard meanwhile (then `true`: overtaken). While the
    /// database cannot answer, the stale standing (see [`Self::standing`]).
    async fn read_standing(&self, user_id: Uuid, since_resync: bool) -> Result<(CachedStanding, bool), AuthError> {
        let mark = self.revocations.read_mark();
        let read_at = Instant::now();
        let cutoff = self.clock.now() - self.overdue_after;
        let read = async {
            let mut conn = self.db.get().await?;
            Ok::<_, AuthError>(User::standing(&mut conn, user_id, cutoff).await?)
        };
        match read.await {
            Ok(Some((standing, overdue))) => {
                let cached = self
                    .standings
                    .put(user_id, standing, overdue, mark, read_at, &self.revocations);
                Ok((cached, !self.revocations.unchanged_since(user_id, mark)))
            }
            Ok(None) => Err(AuthError::InvalidToken),
            Err(err) if err.is_database_unreachable() => {
                self.database_failed();
                let stale = self.standings.stale(user_id, &self.revocations, since_resync);
                Ok((stale.ok_or(err)?, false))
            }
            Err(err) => Err(err),
        }
    }

    fn database_recently_failed(&self) -> bool {
        self.database_failed_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| at.elapsed() < RETRY_DATABASE_AFTER)
    }

    fn database_failed(&self) {
        *self.database_failed_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
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
            // The database is down: a key trusted within the stale-if-error
            // window still works; one never seen (or revoked) does not.
            None if self.database_recently_failed() => {
                Some(self.keys.stale(&hash).ok_or(AuthError::DatabaseUnavailable)?)
            }
            None => {
                self.clients.may_look_up_key(req)?;
                let asked_at = Instant::now();
                let lookup = async {
                    let mut conn = self.db.get().await?;
                    Ok::<_, AuthError>(ApiKey::find_active_by_hash(&mut conn, &hash).await?)
                };
                match lookup.await {
                    Ok(found) => {
                        if found.is_none() {
                            self.clients.unknown_key_looked_up(req);
                        }
                        self.keys.put(hash, found, asked_at);
                        found
                    }
                    Err(err) if err.is_database_unreachable() => {
                        self.database_failed();
                        Some(self.keys.stale(&hash).ok_or(err)?)
                    }
                    Err(err) => return Err(err),
                }
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

    /// The user's role, status or dues changed: this instance re-reads the
    /// standing on the next call, and every other instance hears it. If
    /// Redis cannot carry it, the others re-read within the standing TTL.
    pub async fn user_changed(&self, user_id: Uuid) {
        let event = Event::UserChanged { user: user_id };
        self.revocations.apply(&event);
        if !self.redis.publish(&event).await {
            tracing::warn!(user_id = %user_id, "could not tell other instances of a user change (Redis unavailable)");
        }
    }

    /// A key was revoked: refused at once here, and on every instance that
    /// hears it (the others within [`KEY_CACHE_MAX_AGE`]).
    pub async fn key_revoked(&self, key_hash: &str) {
        self.keys.remove(key_hash);
        let event = Event::KeyRevoked {
            hash: key_hash.to_owned(),
        };
        if !self.redis.publish(&event).await {
            tracing::warn!("could not tell other instances of a key revocation (Redis unavailable)");
        }
    }

    /// Ends a login session (every access token of it) or one access token
    /// until `until_ms` (Unix ms): refused here at once, and on every
    /// instance once Redis has it. `false` when Redis could not take it.
    pub async fn deny(&self, id: DeniedId, until_ms: i64) -> bool {
        self.revocations.apply(&match id {
            DeniedId::Session(session) => Event::SessionDenied { session, until_ms },
            DeniedId::Token(jti) => Event::TokenDenied { jti, until_ms },
        });
        self.redis.deny(id, until_ms).await
    }

    /// Applies a change heard from another instance (or this one).
    pub fn heard(&self, event: &Event) {
        self.revocations.heard();
        match event {
            Event::KeyRevoked { hash } => self.keys.remove(hash),
            other => self.revocations.apply(other),
        }
    }

    /// Forgets what can no longer be used (run by the listener loop).
    pub fn prune(&self) {
        self.standings.prune();
        // A change must be remembered as long as a standing read before it
        // could still be used, plus the longest a read can take.
        self.revocations
            .prune(self.standings.longest_use() + Duration::from_secs(60));
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
