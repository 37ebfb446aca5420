//! Who is calling: credentials → an authenticated [`Caller`].
//!
//! One path serves both the [`AuthUser`] extractor (ordinary routes) and the
//! metering middleware (metered routes), so every authenticated route applies
//! the same checks: token signature/algorithm/expiry/issuer/audience, the user
//! still existing, and the user not being suspended.

pub mod jwt;
pub mod password;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use uuid::Uuid;

use crate::app::AppState;
use crate::billing::Clock;
use crate::db::DbPool;
use crate::error::ApiError;
use crate::models::user::Standing;
use crate::models::{Invoice, Role, User, UserStatus};

pub use jwt::JwtKeys;

/// The authenticated caller of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub user_id: Uuid,
    pub role: Role,
    /// Has an invoice unpaid past its due date plus the overdue grace:
    /// metered APIs refuse such a caller with 402 until it is paid.
    pub overdue: bool,
}

/// Extractor for handlers that need an authenticated caller. Reuses the
/// caller the metering middleware already authenticated, if any.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser(pub Caller);

impl AuthUser {
    pub fn id(&self) -> Uuid {
        self.0.user_id
    }

    pub fn role(&self) -> Role {
        self.0.role
    }

    pub fn require_finance(&self) -> Result<(), ApiError> {
        if self.0.role.can_do_finance() {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "forbidden",
                "this route requires the finance or admin role",
            ))
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.0.role == Role::Admin {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "forbidden",
                "this route requires the admin role",
            ))
        }
    }
}

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        if let Some(caller) = req.extensions().get::<Caller>().copied() {
            return Box::pin(async move { Ok(AuthUser(caller)) });
        }
        let req = req.clone();
        Box::pin(async move {
            let state = req
                .app_data::<web::Data<AppState>>()
                .ok_or_else(|| ApiError::internal(anyhow::anyhow!("AppState missing")))?;
            let caller = state.authenticator.authenticate(&req).await?;
            req.extensions_mut().insert(caller);
            Ok(AuthUser(caller))
        })
    }
}

/// The credential a request presents, borrowed from its headers.
fn bearer_token(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub struct Authenticator {
    jwt: JwtKeys,
    db: DbPool,
    standings: StandingCache,
    clock: Arc<dyn Clock>,
    overdue_after: chrono::Duration,
}

/// What is cached per user: role, status and whether they owe overdue money.
#[derive(Debug, Clone, Copy)]
struct CachedStanding {
    standing: Standing,
    overdue: bool,
}

impl Authenticator {
    pub fn new(
        jwt: JwtKeys,
        db: DbPool,
        standing_ttl: Duration,
        clock: Arc<dyn Clock>,
        overdue_days: u32,
    ) -> Self {
        Self {
            jwt,
            db,
            standings: StandingCache::new(standing_ttl),
            clock,
            overdue_after: chrono::Duration::days(i64::from(overdue_days)),
        }
    }

    pub fn jwt(&self) -> &JwtKeys {
        &self.jwt
    }

    /// Authenticates a request. Awaits the database only when the caller's
    /// standing is not cached (at most once per user per cache TTL).
    pub async fn authenticate(&self, req: &HttpRequest) -> Result<Caller, ApiError> {
        let token = bearer_token(req).ok_or_else(ApiError::unauthenticated)?;
        let claims = self.jwt.verify(token).ok_or_else(ApiError::invalid_token)?;
        let cached = match self.standings.get(claims.sub) {
            Some(s) => s,
            None => {
                let mut conn = self.db.get().await?;
                let standing = User::standing(&mut conn, claims.sub)
                    .await?
                    .ok_or_else(ApiError::invalid_token)?;
                let cutoff = self.clock.now() - self.overdue_after;
                let overdue = Invoice::has_overdue(&mut conn, claims.sub, cutoff).await?;
                let cached = CachedStanding { standing, overdue };
                self.standings.put(claims.sub, cached);
                cached
            }
        };
        if cached.standing.status == UserStatus::Suspended {
            return Err(ApiError::forbidden(
                "account_suspended",
                "this account is suspended",
            ));
        }
        Ok(Caller {
            user_id: claims.sub,
            // The role comes from the database, not the token, so a role
            // change applies on the next call rather than at token expiry.
            role: cached.standing.role,
            overdue: cached.overdue,
        })
    }

    /// Forget a user's cached standing (after a role or status change).
    pub fn forget(&self, user_id: Uuid) {
        self.standings.remove(user_id);
    }
}

/// A short-lived cache of users' role and status so that metered calls do
/// not each cost a database round trip.
struct StandingCache {
    ttl: Duration,
    entries: RwLock<HashMap<Uuid, (CachedStanding, Instant)>>,
}

impl StandingCache {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: RwLock::new(HashMap::new()),
        }
    }

    fn get(&self, user_id: Uuid) -> Option<CachedStanding> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&user_id)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(s, _)| *s)
    }

    fn put(&self, user_id: Uuid, standing: CachedStanding) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        // Bound memory: expired entries are dropped whenever the map grows large.
        if entries.len() >= 100_000 {
            let ttl = self.ttl;
            entries.retain(|_, (_, at)| at.elapsed() < ttl);
        }
        entries.insert(user_id, (standing, Instant::now()));
    }

    fn remove(&self, user_id: Uuid) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.remove(&user_id);
    }
}

/// Lower-cases and checks an email address. Deliberately simple: one `@`,
/// a non-empty local part, a dotted domain, no spaces, at most 254 bytes.
pub fn normalize_email(raw: &str) -> Result<String, ApiError> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && match email.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && local.len() <= 64
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !domain.contains("..")
            }
            None => false,
        };
    if valid {
        Ok(email)
    } else {
        Err(ApiError::validation("email is not a valid address"))
    }
}

pub fn validate_password(password: &str) -> Result<(), ApiError> {
    let n = password.chars().count();
    if (password::MIN_PASSWORD_CHARS..=password::MAX_PASSWORD_CHARS).contains(&n) {
        Ok(())
    } else {
        Err(ApiError::validation(format!(
            "password must be {} to {} characters long",
            password::MIN_PASSWORD_CHARS,
            password::MAX_PASSWORD_CHARS
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_lower_cased_and_checked() {
        assert_eq!(
            normalize_email(" Ada@Example.COM ").unwrap(),
            "ada@example.com"
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "a@b@c.com",
            "ada@.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn password_length_counts_characters_not_bytes() {
        assert!(validate_password("1234567").is_err());
        assert!(validate_password("12345678").is_ok());
        assert!(validate_password(&"é".repeat(128)).is_ok());
        assert!(validate_password(&"x".repeat(129)).is_err());
    }
}
