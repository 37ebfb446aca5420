//! Admin routes (admin role): finding users and changing their role or
//! status — what `payg user role|status` does, over HTTP, through the same
//! function (`auth::accounts::change_standing`).

use std::borrow::Cow;
use std::str::FromStr;

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Deserializer};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::actions;
use crate::app::AppState;
use crate::domain::text::EmailPart;
use crate::error::{ApiResult, ErrorBody};
use crate::models::user::{StandingChange, UserSummary};
use crate::models::{Role, UserStatus};
use crate::routes::extract::AdminUser;
use crate::routes::json::Json;

#[derive(Deserialize, IntoParams)]
pub struct UserListQuery {
    /// Part of the address, in any case (`%` and `_` are plain characters);
    /// absent or empty: every user.
    email: Option<EmailPart>,
    /// From 1 (default 1).
    #[param(minimum = 1)]
    page: Option<i64>,
    /// 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    per_page: Option<i64>,
}

#[derive(ToSchema)]
pub struct UserPage {
    pub users: Vec<UserSummary>,
    pub page: i64,
    pub per_page: i64,
    /// Users matching the filter, on all pages.
    pub total: i64,
}

/// Users, by email, optionally only those whose email contains a text;
/// paged like the finance invoice list.
#[utoipa::path(
    get,
    path = "/api/v1/admin/users",
    tag = "admin",
    operation_id = "admin_list_users",
    params(UserListQuery),
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "One page of users, by email", body = UserPage),
        (status = 400, description = "`validation_failed`: a bad email filter, page or per_page", body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller does not have the admin role", body = ErrorBody),
    )
)]
pub async fn list_users(
    state: web::Data<AppState>,
    _admin: AdminUser,
    query: web::Query<UserListQuery>,
) -> ApiResult<HttpResponse> {
    let q = query.into_inner();
    let page = q.page.unwrap_or(1);
    let per_page = q.per_page.unwrap_or(50);
    let (users, total) = actions::find_users(&state, q.email.as_ref(), page, per_page).await?;
    Ok(HttpResponse::Ok().json(json!({
        "users": users, "page": page, "per_page": per_page, "total": total,
    })))
}

/// A role and/or status to set; at least one. `null` is not a value.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
pub struct UserChangeRequest {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Role)]
    role: Option<Role>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = UserStatus)]
    status: Option<UserStatus>,
}

/// A field that may be absent but, when present, is one of its values:
/// not `null` (which would change nothing), nor anything but a string.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    match Option::<Cow<'de, str>>::deserialize(d)? {
        Some(text) => text.parse().map(Some).map_err(serde::de::Error::custom),
        None => Err(serde::de::Error::custom(
            "null is not a role or status; leave the field out",
        )),
    }
}

/// Changes a user's role or status, with the effects of `payg user
/// role|status`: every instance answers the user's next call with the new
/// role or status (a suspended user's tokens and keys get 403
/// `account_suspended`, and their refresh tokens do not rotate, until they
/// are reactivated). Admins cannot demote or suspend themselves.
#[utoipa::path(
    patch,
    path = "/api/v1/admin/users/{id}",
    tag = "admin",
    operation_id = "admin_update_user",
    params(("id" = Uuid, Path, description = "The user's id")),
    request_body = UserChangeRequest,
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "The updated user", body = UserSummary),
        (status = 400, description = "`validation_failed`: neither `role` nor `status`, a value that is not \
            one of theirs, `null`, or an unknown field; nothing was changed", body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller does not have the admin role", body = ErrorBody),
        (status = 404, description = "`not_found`: no such user, or `id` is not a UUID", body = ErrorBody),
        (status = 409, description = "`own_account`: an admin cannot demote or suspend their own account \
            (another admin, or `payg user role|status`, can)", body = ErrorBody),
    )
)]
pub async fn update_user(
    state: web::Data<AppState>,
    admin: AdminUser,
    id: web::Path<Uuid>,
    body: Json<UserChangeRequest>,
) -> ApiResult<HttpResponse> {
    let b = body.into_inner();
    let change = StandingChange {
        role: b.role,
        status: b.status,
    };
    let summary = actions::change_user(&state, admin.id(), *id, change).await?;
    Ok(HttpResponse::Ok().json(summary))
}
