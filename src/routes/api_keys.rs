//! The caller's API keys: create (shown once), list, revoke.

use actix_web::{HttpResponse, web};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::actions;
use crate::app::AppState;
use crate::domain::text::KeyName;
use crate::error::{ApiResult, ErrorBody};
use crate::models::api_key::ApiKey;
use crate::routes::conn;
use crate::routes::extract::SessionUser;
use crate::routes::json::Json;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKeyRequest {
    #[schema(inline)]
    name: KeyName,
}

#[derive(ToSchema)]
pub struct CreatedApiKey {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    /// The full key: shown in this response only.
    #[schema(example = "payg_…")]
    pub key: String,
    pub created_at: chrono::DateTime<Utc>,
}

#[derive(ToSchema)]
pub struct ApiKeyList {
    pub api_keys: Vec<ApiKey>,
}

/// Creates a key. The full key is in this response only; payg keeps a keyed
/// hash and the prefix (for display).
#[utoipa::path(
    post,
    path = "/api/v1/api-keys",
    tag = "keys",
    security(("bearerAuth" = [])),
    responses(
        (status = 201, description = "The new key, in full this once", body = CreatedApiKey),
        (status = 400, description = "`validation_failed`: a bad name", body = ErrorBody),
        (status = 409, description = "`too_many_keys`: the user already has the maximum of active keys",
            body = ErrorBody),
    )
)]
pub async fn create_api_key(
    state: web::Data<AppState>,
    user: SessionUser,
    body: Json<NewKeyRequest>,
) -> ApiResult<HttpResponse> {
    let actions::CreatedKey { row, key } = actions::create_key(&state, user.id(), body.into_inner().name).await?;
    // The full key is in this body only: no cache may keep it.
    Ok(HttpResponse::Created()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(json!({
            "id": row.id,
            "name": row.name,
            "prefix": row.prefix,
            "key": key,
            "created_at": row.created_at,
        })))
}

/// The caller's active keys (never the keys themselves).
#[utoipa::path(
    get,
    path = "/api/v1/api-keys",
    tag = "keys",
    security(("bearerAuth" = [])),
    responses((status = 200, description = "Active keys, newest first", body = ApiKeyList))
)]
pub async fn list_api_keys(state: web::Data<AppState>, user: SessionUser) -> ApiResult<HttpResponse> {
    let mut conn = conn(&state.db).await?;
    let keys = ApiKey::active_for_user(&mut conn, user.id()).await?;
    Ok(HttpResponse::Ok().json(json!({ "api_keys": keys })))
}

/// Revokes one of the caller's keys: refused at once on this instance and,
/// by push, on every other (within a second even if the push is lost).
#[utoipa::path(
    delete,
    path = "/api/v1/api-keys/{id}",
    tag = "keys",
    params(("id" = Uuid, Path, description = "The key's id")),
    security(("bearerAuth" = [])),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "`not_found`: no such active key of the caller's, or `id` is not a UUID",
            body = ErrorBody),
    )
)]
pub async fn revoke_api_key(
    state: web::Data<AppState>,
    user: SessionUser,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    actions::revoke_key(&state, user.id(), *id).await?;
    Ok(HttpResponse::NoContent().finish())
}
