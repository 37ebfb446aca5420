use actix_web::{HttpResponse, web};
use serde::{Deserialize, Deserializer};
use utoipa::ToSchema;

use crate::app::AppState;
use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};
use crate::models::User;
use crate::models::user::ProfileChanges;
use crate::routes::auth::validate_name;
use crate::routes::conn;
use crate::routes::json::Json;
use crate::routes::openapi::ErrorBody;

/// The caller's account and billing details.
#[utoipa::path(
    get,
    path = "/api/v1/me",
    tag = "profile",
    security(("bearerAuth" = []), ("apiKey" = [])),
    responses((status = 200, description = "The caller", body = User))
)]
pub async fn get_me(state: web::Data<AppState>, user: AuthUser) -> ApiResult<HttpResponse> {
    let mut conn = conn(&state.db).await?;
    let me = User::find(&mut conn, user.id())
        .await?
        .ok_or_else(ApiError::invalid_token)?;
    Ok(HttpResponse::Ok().json(me))
}

/// Absent → `None` (leave alone); `null` → `Some(None)` (clear).
fn nullable<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// A partial update: an absent field is left alone; `null` or `""` clears
/// a billing field. Each is at most 200 characters.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProfile {
    /// 1 to 200 characters; not blank, no control characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    company: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    address_line1: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    address_line2: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    city: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    postal_code: Option<Option<String>>,
    /// ISO 3166-1 alpha-2, any case (stored upper-case).
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, example = "GB", pattern = r"^\s*([A-Za-z]{2})?\s*$")]
    country: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    tax_id: Option<Option<String>>,
}

const MAX_FIELD_CHARS: usize = 200;

/// Trims a billing field; an empty string clears it like `null` does.
fn billing_field(name: &str, value: Option<Option<String>>) -> Result<Option<Option<String>>, ApiError> {
    let Some(value) = value else { return Ok(None) };
    let Some(text) = value.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()) else {
        return Ok(Some(None));
    };
    if text.chars().count() > MAX_FIELD_CHARS {
        return Err(ApiError::validation(format!(
            "{name} must be at most {MAX_FIELD_CHARS} characters"
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(ApiError::validation(format!(
            "{name} must not contain control characters"
        )));
    }
    Ok(Some(Some(text)))
}

impl UpdateProfile {
    fn validate(self) -> Result<ProfileChanges, ApiError> {
        let country = match billing_field("country", self.country)? {
            Some(Some(c)) => {
                let upper = c.to_ascii_uppercase();
                if upper.len() != 2 || !upper.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(ApiError::validation(
                        "country must be an ISO 3166-1 alpha-2 code such as GB or IN",
                    ));
                }
                Some(Some(upper))
            }
            other => other,
        };
        Ok(ProfileChanges {
            name: self.name.as_deref().map(validate_name).transpose()?,
            company: billing_field("company", self.company)?,
            address_line1: billing_field("address_line1", self.address_line1)?,
            address_line2: billing_field("address_line2", self.address_line2)?,
            city: billing_field("city", self.city)?,
            postal_code: billing_field("postal_code", self.postal_code)?,
            country,
            tax_id: billing_field("tax_id", self.tax_id)?,
        })
    }
}

/// Updates the caller's name and billing details.
#[utoipa::path(
    patch,
    path = "/api/v1/me",
    tag = "profile",
    security(("bearerAuth" = []), ("apiKey" = [])),
    responses(
        (status = 200, description = "The updated account", body = User),
        (status = 400, description = "`validation_failed`: a field too long, with control characters, \
            an unknown field, or a country that is not two letters", body = ErrorBody),
    )
)]
pub async fn update_me(
    state: web::Data<AppState>,
    user: AuthUser,
    body: Json<UpdateProfile>,
) -> ApiResult<HttpResponse> {
    let changes = body.into_inner().validate()?;
    let mut conn = conn(&state.db).await?;
    let me = User::update_profile(&mut conn, user.id(), &changes).await?;
    Ok(HttpResponse::Ok().json(me))
}
