//! Accounts and sessions: register, log in, refresh, log out.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Credential;
use crate::auth::sessions::{self, IssuedSession, Rotation};
use crate::clients::lockout_label;
use crate::domain::text::{Email, Name, Password};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::models::UserStatus;
use crate::models::user::{NewUser, Role, User};
use crate::redis_store::{DeniedId, LoginLimits};
use crate::routes::conn;
use crate::routes::extract::EndingSession;
use crate::routes::json::Json;

/// A new consumer account. The email is unique, case-insensitively.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    // Unique, case-insensitive.
    #[schema(inline)]
    email: Email,
    #[schema(inline)]
    password: Password,
    #[schema(inline)]
    name: Name,
}

/// Creates a consumer account.
#[utoipa::path(
    post,
    path = "/api/v1/auth/register",
    tag = "auth",
    responses(
        (status = 201, description = "The new account", body = User),
        (status = 400, description = "`validation_failed`: a malformed email, a password of the wrong length, \
            or a bad name", body = ErrorBody),
        (status = 409, description = "`email_taken`: an account with this email already exists", body = ErrorBody),
        (status = 429, description = "`too_many_requests`: too many logins, registrations and refreshes from \
            this address (`PAYG_CLIENT_AUTH_PER_MINUTE`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`busy`: too many logins and registrations at once", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn register(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Json<RegisterRequest>,
) -> ApiResult<HttpResponse> {
    state.clients.take_credential_attempt(&req)?;
    let RegisterRequest { email, password, name } = body.into_inner();
    let hash = state
        .passwords
        .hash(password.into_inner())
        .await?
        .map_err(ApiError::internal)?;
    let mut conn = conn(&state.db).await?;
    let new = NewUser {
        id: Uuid::new_v4(),
        email: email.as_str(),
        password_hash: &hash,
        role: Role::Consumer,
        name: name.as_str(),
    };
    match User::insert(&mut conn, &new).await {
        Ok(user) => {
            tracing::info!(user_id = %user.id, "user registered");
            Ok(HttpResponse::Created().json(user))
        }
        Err(diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)) => Err(
            ApiError::conflict("email_taken", "an account with this email already exists"),
        ),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    email: String,
    password: String,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    /// A JWT for `Authorization: Bearer`.
    access_token: String,
    #[schema(value_type = String, example = "Bearer")]
    token_type: &'static str,
    /// Seconds until the access token expires.
    expires_in: u64,
    /// Single use: exchange it at /auth/refresh for a new pair.
    refresh_token: String,
}

/// Tokens must not be kept by any cache between payg and the client.
fn token_response(session: IssuedSession) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(TokenResponse::from(session))
}

impl From<IssuedSession> for TokenResponse {
    fn from(s: IssuedSession) -> Self {
        Self {
            access_token: s.access.token,
            token_type: "Bearer",
            expires_in: s.access.expires_in,
            refresh_token: s.refresh_token,
        }
    }
}

fn issuer(state: &AppState) -> sessions::Issuer<'_> {
    sessions::Issuer {
        jwt: state.authenticator.jwt(),
        hasher: state.authenticator.hasher(),
        refresh_ttl: state.config.refresh_ttl,
        retry_grace: state.config.refresh_retry_grace,
    }
}

/// How long an ended session stays deny-listed: as long as any access token
/// issued in it can live (plus the verifier's skew).
fn session_denied_until(state: &AppState) -> i64 {
    let ttl = state.config.jwt.ttl + Duration::from_secs(10);
    Utc::now().timestamp_millis() + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2)
}

/// The login lockout. Attempts are counted per email *and client address*
/// (10 per 15 minutes), so a stranger guessing from elsewhere cannot lock
/// the owner out of their own address; and per email from anywhere (100 per
/// hour), a slower bound on a guesser with many addresses. Each attempt is
/// reserved before the password is checked; a success gives it back.
pub const LOGIN_LIMITS: LoginLimits = LoginLimits {
    per_client: 10,
    per_client_window: Duration::from_secs(15 * 60),
    per_email: 100,
    per_email_window: Duration::from_secs(3600),
};

/// Logs in with email and password: an access token and a refresh token.
#[utoipa::path(
    post,
    path = "/api/v1/auth/login",
    tag = "auth",
    responses(
        (status = 200, description = "A new session", body = TokenResponse),
        (status = 401, description = "`invalid_credentials`: unknown email or wrong password", body = ErrorBody),
        (status = 403, description = "`account_suspended`: the account is suspended", body = ErrorBody),
        (status = 429, description = "`too_many_attempts`: too many logins for this email from this address, \
            or for this email from anywhere; `too_many_requests`: too many logins, registrations and refreshes \
            from this address (`PAYG_CLIENT_AUTH_PER_MINUTE`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until another attempt is allowed"))),
        (status = 503, description = "`login_unavailable`: the lockout cannot be checked (Redis is unreachable); \
            logins fail closed rather than allow unlimited guessing. `busy`: too many logins at once", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn login(state: web::Data<AppState>, req: HttpRequest, body: Json<LoginRequest>) -> ApiResult<HttpResponse> {
    state.clients.take_credential_attempt(&req)?;
    let LoginRequest { email, password } = body.into_inner();
    // The lockout counts attempts per email string whether or not an account
    // exists, so it reveals nothing about which emails are registered.
    let lockout_key = Email::canonical(&email);
    let address = state.clients.address(&req);
    // IPv6 clients by their /64: a host may pick any address in it.
    let client = lockout_label(address);
    match state.redis.reserve_login(&lockout_key, &client, LOGIN_LIMITS).await {
        None => return Err(ApiError::login_unavailable()),
        Some(attempt) if !attempt.allowed => {
            tracing::warn!(client = %client, "login refused by the lockout");
            return Err(ApiError::too_many_attempts(attempt.retry_after_secs));
        }
        Some(_) => {}
    }
    // A malformed email cannot belong to anyone: same answer as a wrong one.
    let user = match email.parse::<Email>() {
        Ok(email) => {
            let mut conn = conn(&state.db).await?;
            User::find_by_email(&mut conn, email.as_str()).await?
        }
        Err(_) => None,
    };
    // Always run one argon2 verification so unknown emails take as long as
    // wrong passwords.
    let stored_hash = user.as_ref().map(|u| u.password_hash.clone());
    let verified = state.passwords.verify(password, stored_hash).await?;
    let user = match user {
        Some(user) if verified => user,
        _ => {
            // The reserved attempt stays counted: it was a failure.
            tracing::info!(client = %client, "login failed");
            return Err(ApiError::invalid_credentials());
        }
    };
    state.redis.login_succeeded(&lockout_key, &client).await;
    if user.status == UserStatus::Suspended {
        return Err(ApiError::account_suspended());
    }
    let mut conn = conn(&state.db).await?;
    // Token lifetimes follow the real clock (jsonwebtoken checks `exp`
    // against it), not the billing clock tests may move.
    let session = sessions::start(&mut conn, issuer(&state), &user, Utc::now()).await?;
    Ok(token_response(session))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    refresh_token: String,
}

/// Rotates a refresh token: a new access and refresh token, the old one
/// retired. A retired token presented again revokes the whole session —
/// except a retry: within `PAYG_REFRESH_RETRY_GRACE` (10 s) of the rotation,
/// and while the new refresh token is unused, the same pair is returned.
#[utoipa::path(
    post,
    path = "/api/v1/auth/refresh",
    tag = "auth",
    responses(
        (status = 200, description = "A new access and refresh token", body = TokenResponse),
        (status = 401, description = "`unauthorized`: an unknown, expired, revoked or reused refresh token",
            body = ErrorBody),
        (status = 403, description = "`account_suspended`: the account is suspended", body = ErrorBody),
        (status = 429, description = "`too_many_requests`: too many logins, registrations and refreshes from \
            this address (`PAYG_CLIENT_AUTH_PER_MINUTE`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn refresh(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Json<RefreshRequest>,
) -> ApiResult<HttpResponse> {
    state.clients.take_credential_attempt(&req)?;
    let presented = body.into_inner().refresh_token;
    if !presented.starts_with(sessions::REFRESH_TOKEN_PREFIX) || presented.len() > 128 {
        return Err(ApiError::invalid_token());
    }
    let mut conn = conn(&state.db).await?;
    let rotation = sessions::rotate(&mut conn, issuer(&state), &presented, Utc::now()).await?;
    match rotation {
        Rotation::Rotated(session) => Ok(token_response(session)),
        Rotation::Reused { user_id, session } => {
            // A stolen refresh token came back: the thief's access tokens
            // die with the session, not at their expiry.
            if !state
                .authenticator
                .deny(DeniedId::Session(session), session_denied_until(&state))
                .await
            {
                tracing::warn!(user_id = %user_id, "could not deny-list a reused session (Redis unavailable)");
            }
            Err(ApiError::invalid_token())
        }
        Rotation::Invalid => Err(ApiError::invalid_token()),
        Rotation::Suspended => Err(ApiError::account_suspended()),
    }
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogoutRequest {
    /// Also revoke this refresh token's session.
    refresh_token: Option<String>,
}

/// Ends the session: every access token of it (not only the one presented)
/// stops working on every instance — the session is deny-listed for as long
/// as its tokens could live, and the entry is pushed to every instance — and
/// its refresh tokens are revoked. Idempotent: a token already logged out
/// may log out again (204), so a retry after `logout_incomplete` finishes
/// the job.
#[utoipa::path(
    post,
    path = "/api/v1/auth/logout",
    tag = "auth",
    request_body(content = Option<LogoutRequest>, description = "Optional"),
    security(("bearerAuth" = [])),
    responses(
        (status = 204, description = "Logged out (also when the token's session had ended already)"),
        (status = 400, description = "`validation_failed`: the body has unknown fields; \
            `invalid_json`: the body is not JSON", body = ErrorBody),
        (status = 503, description = "`logout_incomplete`: the refresh tokens are revoked but Redis could not \
            take the deny-list entry that ends the access tokens at once; retry", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn logout(state: web::Data<AppState>, user: EndingSession, body: web::Bytes) -> ApiResult<HttpResponse> {
    let user = user.0;
    // The body is optional (absent or `null`), but one that is sent must be
    // a valid request.
    let body: LogoutRequest = if body.iter().all(u8::is_ascii_whitespace) {
        LogoutRequest::default()
    } else {
        match serde_json::from_slice(&body).map_err(|e| ApiError::from_json(&e))? {
            serde_json::Value::Null => LogoutRequest::default(),
            value @ serde_json::Value::Object(_) => {
                serde_json::from_value(value).map_err(|e| ApiError::from_json(&e))?
            }
            _ => return Err(ApiError::validation("the body must be a JSON object or null")),
        }
    };
    let Credential::AccessToken {
        jti,
        session,
        expires_at,
    } = user.0.credential
    else {
        // EndingSession has refused API keys already.
        return Err(ApiError::access_token_required());
    };
    let now = Utc::now();
    // First what lasts: the session's refresh tokens, in PostgreSQL.
    let mut conn = conn(&state.db).await?;
    let mut families: Vec<Uuid> = session.into_iter().collect();
    if let Some(token) = body.refresh_token
        && let Some(family) = sessions::family_of(&mut conn, state.authenticator.hasher(), &token, user.id()).await?
    {
        families.push(family);
    }
    for family in families {
        sessions::revoke_family(&mut conn, family, user.id(), now).await?;
    }
    drop(conn);
    // Then every access token issued in the session, not only the one
    // presented, on every instance.
    let denied = match session {
        Some(session) => {
            state
                .authenticator
                .deny(DeniedId::Session(session), session_denied_until(&state))
                .await
        }
        // Refused until it would have expired anyway (plus the verifier's
        // skew).
        None => {
            let until_ms = expires_at.saturating_add(10).saturating_mul(1000);
            state.authenticator.deny(DeniedId::Token(jti), until_ms).await
        }
    };
    if !denied {
        // Redis cannot take the deny-list entry: say so, so the client
        // retries (the retry is accepted and finishes the job).
        tracing::warn!(user_id = %user.id(), "logout could not deny-list the session (Redis unavailable)");
        return Err(ApiError::logout_incomplete());
    }
    Ok(HttpResponse::NoContent().finish())
}
