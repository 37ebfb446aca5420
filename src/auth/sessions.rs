//! Login sessions: a short-lived JWT access token plus an opaque refresh
//! token, rotated on every use. Tokens of one session form a family;
//! presenting a retired refresh token again is taken as theft and revokes
//! the whole family — unless it comes back within the retry grace while its
//! successor is still unused: that is a client retrying a rotation whose
//! answer it lost (or sent twice), and it receives the pair already issued.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::result::Error as DieselError;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use uuid::Uuid;

use crate::auth::jwt::{IssuedToken, JwtKeys};
use crate::auth::tokens::{self, TokenHasher};
use crate::models::refresh_token::RefreshToken;
use crate::models::{Role, User, UserStatus};

pub const REFRESH_TOKEN_PREFIX: &str = "payg_rt_";

/// Why a session could not be started or rotated.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Database(#[from] DieselError),
    #[error("signing the access token: {0}")]
    Signing(#[from] jsonwebtoken::errors::Error),
    #[error("a session lifetime (PAYG_REFRESH_TTL or PAYG_REFRESH_RETRY_GRACE) is out of range")]
    Lifetime(#[from] chrono::OutOfRangeError),
}

pub struct IssuedSession {
    pub access: IssuedToken,
    pub refresh_token: String,
}

/// What issuing tokens needs: the signing keys, the hash key, the refresh lifetime.
#[derive(Clone, Copy)]
pub struct Issuer<'a> {
    pub jwt: &'a JwtKeys,
    pub hasher: &'a TokenHasher,
    pub refresh_ttl: Duration,
    pub retry_grace: Duration,
}

/// Adds `refresh_token` to `family` and issues the matching access token,
/// whose id is the refresh token's row id (so a retry can sign it again).
async fn issue(
    conn: &mut AsyncPgConnection,
    issuer: Issuer<'_>,
    user_id: Uuid,
    role: Role,
    family_id: Uuid,
    refresh_token: String,
    now: DateTime<Utc>,
) -> Result<IssuedSession, SessionError> {
    let Issuer {
        jwt,
        hasher,
        refresh_ttl,
        ..
    } = issuer;
    let id = Uuid::new_v4();
    RefreshToken::insert(
        conn,
        &RefreshToken {
            id,
            family_id,
            user_id,
            token_hash: hasher.hash(&refresh_token),
            created_at: now,
            expires_at: now + chrono::Duration::from_std(refresh_ttl)?,
            retired_at: None,
            revoked_at: None,
        },
    )
    .await?;
    let access = jwt.issue_as(user_id, role, Some(family_id), id, now.timestamp(), now)?;
    Ok(IssuedSession { access, refresh_token })
}

/// A new session for a user who just proved their password.
pub async fn start(
    conn: &mut AsyncPgConnection,
    issuer: Issuer<'_>,
    user: &User,
    now: DateTime<Utc>,
) -> Result<IssuedSession, SessionError> {
    let refresh_token = tokens::generate(REFRESH_TOKEN_PREFIX);
    issue(conn, issuer, user.id, user.role, Uuid::new_v4(), refresh_token, now).await
}

#[derive(Debug)]
pub enum Rotation {
    Rotated(IssuedSession),
    /// Unknown, expired or revoked token.
    Invalid,
    /// A retired token came back: the family (the login session) has been
    /// revoked; its access tokens must be refused too.
    Reused {
        user_id: Uuid,
        session: Uuid,
    },
    Suspended,
}

impl std::fmt::Debug for IssuedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IssuedSession(***)")
    }
}

/// Exchanges a refresh token for a new pair, retiring the old one — under a
/// row lock, so two concurrent uses of one token cannot both rotate it: the
/// second waits, then finds it retired and is answered as a retry.
pub async fn rotate(
    conn: &mut AsyncPgConnection,
    issuer: Issuer<'_>,
    presented: &str,
    now: DateTime<Utc>,
) -> Result<Rotation, SessionError> {
    let hash = issuer.hasher.hash(presented);
    let successor = issuer.hasher.successor(REFRESH_TOKEN_PREFIX, presented);
    let outcome = conn
        .transaction::<_, SessionError, _>(async |conn| {
            let Some(token) = RefreshToken::lock_by_hash(conn, &hash).await? else {
                return Ok(Rotation::Invalid);
            };
            if token.revoked_at.is_some() || token.expires_at <= now {
                return Ok(Rotation::Invalid);
            }
            // A retired token is a retry while the grace lasts and its
            // successor is unused (then the pair is signed again), else theft.
            let retried = match token.retired_at {
                None => None,
                Some(retired_at) => {
                    let grace = chrono::Duration::from_std(issuer.retry_grace)?;
                    let next = if now < retired_at + grace {
                        RefreshToken::lock_by_hash(conn, &issuer.hasher.hash(&successor)).await?
                    } else {
                        None
                    };
                    match next.filter(|next| {
                        next.family_id == token.family_id
                            && next.retired_at.is_none()
                            && next.revoked_at.is_none()
                            && next.expires_at > now
                    }) {
                        Some(next) => Some(next),
                        None => {
                            RefreshToken::revoke_family(conn, token.family_id, token.user_id, now).await?;
                            return Ok(Rotation::Reused {
                                user_id: token.user_id,
                                session: token.family_id,
                            });
                        }
                    }
                }
            };
            let Some(user) = User::find(conn, token.user_id).await? else {
                return Ok(Rotation::Invalid);
            };
            if user.status == UserStatus::Suspended {
                return Ok(Rotation::Suspended);
            }
            let session = match retried {
                // The access token's id and issue time are the successor's
                // row id and creation time, so it comes out identical.
                Some(next) => IssuedSession {
                    access: issuer.jwt.issue_as(
                        user.id,
                        user.role,
                        Some(next.family_id),
                        next.id,
                        next.created_at.timestamp(),
                        now,
                    )?,
                    refresh_token: successor,
                },
                None => {
                    RefreshToken::retire(conn, token.id, now).await?;
                    issue(conn, issuer, user.id, user.role, token.family_id, successor, now).await?
                }
            };
            Ok(Rotation::Rotated(session))
        })
        .await?;
    if let Rotation::Reused { user_id, .. } = &outcome {
        tracing::warn!(user_id = %user_id, "a retired refresh token was presented again; its session was revoked");
    }
    Ok(outcome)
}

/// Ends a session: every refresh token of the family stops working.
pub async fn revoke_family(
    conn: &mut AsyncPgConnection,
    family_id: Uuid,
    user_id: Uuid,
    now: DateTime<Utc>,
) -> Result<usize, DieselError> {
    RefreshToken::revoke_family(conn, family_id, user_id, now).await
}

/// The family of a refresh token, if it is the user's.
pub async fn family_of(
    conn: &mut AsyncPgConnection,
    hasher: &TokenHasher,
    presented: &str,
    user_id: Uuid,
) -> Result<Option<Uuid>, DieselError> {
    Ok(RefreshToken::lock_by_hash(conn, &hasher.hash(presented))
        .await?
        .filter(|t| t.user_id == user_id)
        .map(|t| t.family_id))
}

/// The session (family) and user of a refresh token, whoever holds it: for
/// ending a session whose access token has expired.
pub async fn session_of_refresh_token(
    conn: &mut AsyncPgConnection,
    hasher: &TokenHasher,
    presented: &str,
) -> Result<Option<(Uuid, Uuid)>, DieselError> {
    Ok(RefreshToken::lock_by_hash(conn, &hasher.hash(presented))
        .await?
        .map(|t| (t.family_id, t.user_id)))
}
