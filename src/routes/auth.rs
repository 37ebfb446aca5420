//! Accounts and sessions: register, log in, refresh, log out.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::actions;
use crate::app::AppState;
use crate::auth::sessions::IssuedSession;
use crate::domain::text::{Email, Name, Password};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::models::user::User;
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
    let RegisterRequest { email, password, name } = body.into_inner();
    let user = actions::register(&state, &req, email, password, name).await?;
    Ok(HttpResponse::Created().json(user))
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
    let LoginRequest { email, password } = body.into_inner();
    let session = actions::log_in(&state, &req, &email, password).await?;
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
    let presented = body.into_inner().refresh_token;
    Ok(token_response(actions::refresh(&state, &req, &presented).await?))
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
    actions::end_session(&state, &user.0, body.refresh_token.as_deref()).await?;
    Ok(HttpResponse::NoContent().finish())
}
