use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::app::AppState;
use crate::routes::json::Json;
use std::time::Duration;

use actix_web::http::StatusCode;
use chrono::Utc;

use crate::auth::sessions::{self, IssuedSession, Rotation};
use crate::auth::{self, AuthUser, Credential, password};
use crate::error::{ApiError, ApiResult};
use crate::models::user::{NewUser, Role, User};
use crate::routes::conn;
use crate::routes::openapi::ErrorBody;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Unique, case-insensitive. One `@`, at most 64 characters before it,
    /// a dotted domain after it, no spaces.
    #[schema(
        example = "ada@example.com",
        max_length = 254,
        pattern = r"^[^@\s\u0000-\u001F\u007F-\u009F]{1,64}@[^@\s.\u0000-\u001F\u007F-\u009F]+(\.[^@\s.\u0000-\u001F\u007F-\u009F]+)+$"
    )]
    email: String,
    /// 8 to 128 characters.
    #[schema(min_length = 8, max_length = 128)]
    password: String,
    /// 1 to 200 characters; not blank, no control characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    name: String,
}

pub const MAX_NAME_CHARS: usize = 200;

pub(crate) fn validate_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::validation(format!(
            "name must be 1 to {MAX_NAME_CHARS} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::validation("name must not contain control characters"));
    }
    Ok(name.to_owned())
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
    )
)]
pub async fn register(state: web::Data<AppState>, body: Json<RegisterRequest>) -> ApiResult<HttpResponse> {
    let RegisterRequest { email, password, name } = body.into_inner();
    let email = auth::normalize_email(&email)?;
    auth::validate_password(&password)?;
    let name = validate_name(&name)?;

    let hash = web::block(move || password::hash_password(&password))
        .await?
        .map_err(ApiError::internal)?;
    let mut conn = conn(&state.db).await?;
    let new = NewUser {
        id: Uuid::new_v4(),
        email: &email,
        password_hash: &hash,
        role: Role::Consumer,
        name: &name,
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
    }
}

/// Failed logins allowed per email per window before 429.
pub const MAX_LOGIN_FAILURES: u32 = 10;
pub const LOGIN_FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Logs in with email and password: an access token and a refresh token.
#[utoipa::path(
    post,
    path = "/api/v1/auth/login",
    tag = "auth",
    responses(
        (status = 200, description = "A new session", body = TokenResponse),
        (status = 401, description = "`invalid_credentials`: unknown email or wrong password", body = ErrorBody),
        (status = 403, description = "`account_suspended`: the account is suspended", body = ErrorBody),
        (status = 429, description = "`too_many_attempts`: too many failed logins for this email", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until another attempt is allowed"))),
    )
)]
pub async fn login(state: web::Data<AppState>, body: Json<LoginRequest>) -> ApiResult<HttpResponse> {
    let LoginRequest { email, password } = body.into_inner();
    let invalid = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "invalid email or password",
        )
    };
    // The lockout counts attempts per email string whether or not an account
    // exists, so it reveals nothing about which emails are registered.
    let lockout_key = email.trim().to_lowercase();
    if let Some((failures, retry_after)) = state.redis.login_failures(&lockout_key).await
        && failures >= MAX_LOGIN_FAILURES
    {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            "too many failed logins for this email; try again later",
        )
        .with_retry_after(retry_after.max(1)));
    }
    // A malformed email cannot belong to anyone: same answer as a wrong one.
    let user = match auth::normalize_email(&email) {
        Ok(email) => {
            let mut conn = conn(&state.db).await?;
            User::find_by_email(&mut conn, &email).await?
        }
        Err(_) => None,
    };
    // Always run one argon2 verification so unknown emails take as long as
    // wrong passwords.
    let stored_hash = user.as_ref().map(|u| u.password_hash.clone());
    let verified = web::block(move || match stored_hash {
        Some(hash) => password::verify_password(&password, &hash),
        None => {
            let _ = password::verify_password(&password, &password::DUMMY_HASH);
            false
        }
    })
    .await?;
    let user = match user {
        Some(user) if verified => user,
        _ => {
            state
                .redis
                .record_login_failure(&lockout_key, LOGIN_FAILURE_WINDOW)
                .await;
            return Err(invalid());
        }
    };
    state.redis.clear_login_failures(&lockout_key).await;
    if user.status == crate::models::UserStatus::Suspended {
        return Err(ApiError::forbidden("account_suspended", "this account is suspended"));
    }
    let mut conn = conn(&state.db).await?;
    // Token lifetimes follow the real clock (jsonwebtoken checks `exp`
    // against it), not the billing clock tests may move.
    let session = sessions::start(&mut conn, issuer(&state), &user, Utc::now())
        .await
        .map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().json(TokenResponse::from(session)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    refresh_token: String,
}

/// Rotates a refresh token: a new access and refresh token, the old one
/// retired. A retired token presented again revokes the whole session.
#[utoipa::path(
    post,
    path = "/api/v1/auth/refresh",
    tag = "auth",
    responses(
        (status = 200, description = "A new access and refresh token", body = TokenResponse),
        (status = 401, description = "`unauthorized`: an unknown, expired, revoked or reused refresh token",
            body = ErrorBody),
        (status = 403, description = "`account_suspended`: the account is suspended", body = ErrorBody),
    )
)]
pub async fn refresh(state: web::Data<AppState>, body: Json<RefreshRequest>) -> ApiResult<HttpResponse> {
    let presented = body.into_inner().refresh_token;
    if !presented.starts_with(sessions::REFRESH_TOKEN_PREFIX) || presented.len() > 128 {
        return Err(ApiError::invalid_token());
    }
    let mut conn = conn(&state.db).await?;
    let rotation = sessions::rotate(&mut conn, issuer(&state), &presented, Utc::now())
        .await
        .map_err(ApiError::internal)?;
    match rotation {
        Rotation::Rotated(session) => Ok(HttpResponse::Ok().json(TokenResponse::from(session))),
        Rotation::Invalid | Rotation::Reused { .. } => Err(ApiError::invalid_token()),
        Rotation::Suspended => Err(ApiError::forbidden("account_suspended", "this account is suspended")),
    }
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogoutRequest {
    /// Also revoke this refresh token's session.
    refresh_token: Option<String>,
}

/// Ends the session: the presented access token stops working at once on
/// every instance (its `jti` is deny-listed in Redis until it would have
/// expired) and the session's refresh tokens are revoked.
#[utoipa::path(
    post,
    path = "/api/v1/auth/logout",
    tag = "auth",
    request_body(content = Option<LogoutRequest>, description = "Optional"),
    security(("bearerAuth" = [])),
    responses(
        (status = 204, description = "Logged out"),
        (status = 400, description = "`validation_failed`: the credential is an API key, not an access token, \
            or the body has unknown fields; `invalid_json`: the body is not JSON", body = ErrorBody),
    )
)]
pub async fn logout(state: web::Data<AppState>, user: AuthUser, body: web::Bytes) -> ApiResult<HttpResponse> {
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
        return Err(ApiError::validation(
            "logout ends an access-token session; revoke API keys with DELETE /api/v1/api-keys/{id}",
        ));
    };
    let now = Utc::now();
    let ttl = Duration::from_secs(u64::try_from(expires_at - now.timestamp()).unwrap_or(0) + 1);
    if !state.redis.deny_token(user.id(), jti, ttl).await {
        // Redis is down: the token lapses at its expiry (minutes) instead.
        tracing::warn!(user_id = %user.id(), "logout could not deny-list the access token (Redis unavailable)");
    }
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
    Ok(HttpResponse::NoContent().finish())
}
