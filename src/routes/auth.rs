use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::{self, password};
use crate::error::{ApiError, ApiResult};
use crate::models::user::{NewUser, Role, User};
use crate::routes::conn;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    email: String,
    password: String,
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
        return Err(ApiError::validation(
            "name must not contain control characters",
        ));
    }
    Ok(name.to_owned())
}

pub async fn register(
    state: web::Data<AppState>,
    body: web::Json<RegisterRequest>,
) -> ApiResult<HttpResponse> {
    let RegisterRequest {
        email,
        password,
        name,
    } = body.into_inner();
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
        Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        )) => Err(ApiError::conflict(
            "email_taken",
            "an account with this email already exists",
        )),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub struct LoginRequest {
    email: String,
    password: String,
}

#[derive(Serialize)]
pub struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
}

pub async fn login(
    state: web::Data<AppState>,
    body: web::Json<LoginRequest>,
) -> ApiResult<HttpResponse> {
    let LoginRequest { email, password } = body.into_inner();
    let invalid = || {
        ApiError::new(
            actix_web::http::StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "invalid email or password",
        )
    };
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
        _ => return Err(invalid()),
    };
    if user.status == crate::models::UserStatus::Suspended {
        return Err(ApiError::forbidden(
            "account_suspended",
            "this account is suspended",
        ));
    }
    // Token lifetimes follow the real clock (jsonwebtoken checks `exp`
    // against it), not the billing clock tests may move.
    let issued = state
        .authenticator
        .jwt()
        .issue(user.id, user.role, chrono::Utc::now())
        .map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().json(TokenResponse {
        access_token: issued.token,
        token_type: "Bearer",
        expires_in: issued.expires_in,
    }))
}
