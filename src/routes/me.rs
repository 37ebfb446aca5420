//! The caller's own account and billing details.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::app::AppState;
use crate::domain::text::{BillingText, CountryCode, Name, clearable};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::models::User;
use crate::models::user::ProfileChanges;
use crate::routes::conn;
use crate::routes::extract::SessionUser;
use crate::routes::json::Json;

/// The caller's account and billing details.
#[utoipa::path(
    get,
    path = "/api/v1/me",
    tag = "profile",
    security(("bearerAuth" = [])),
    responses((status = 200, description = "The caller", body = User))
)]
pub async fn get_me(state: web::Data<AppState>, user: SessionUser) -> ApiResult<HttpResponse> {
    let mut conn = conn(&state.db).await?;
    let me = User::find(&mut conn, user.id())
        .await?
        .ok_or_else(ApiError::invalid_token)?;
    Ok(HttpResponse::Ok().json(me))
}

/// A partial update: an absent field is left alone; `null` or `""` clears
/// a billing field.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProfile {
    #[schema(inline)]
    name: Option<Name>,
    #[serde(default, deserialize_with = "clearable")]
    #[schema(value_type = Option<BillingText>, inline)]
    company: Option<Option<BillingText>>,
    #[serde(default, deserialize_with = "clearable")]
    #[schema(value_type = Option<BillingText>, inline)]
    address_line1: Option<Option<BillingText>>,
    #[serde(default, deserialize_with = "clearable")]
    #[schema(value_type = Option<BillingText>, inline)]
    address_line2: Option<Option<BillingText>>,
    #[serde(default, deserialize_with = "clearable")]
    #[schema(value_type = Option<BillingText>, inline)]
    city: Option<Option<BillingText>>,
    #[serde(default, deserialize_with = "clearable")]
    #[schema(value_type = Option<BillingText>, inline)]
    postal_code: Option<Option<BillingText>>,
    /// ISO 3166-1 alpha-2, any case (stored upper-case); empty clears it.
    #[serde(default, deserialize_with = "clearable")]
    #[schema(value_type = Option<String>, example = "GB", pattern = r"^\s*([A-Za-z]{2})?\s*$")]
    country: Option<Option<CountryCode>>,
    #[serde(default, deserialize_with = "clearable")]
    #[schema(value_type = Option<BillingText>, inline)]
    tax_id: Option<Option<BillingText>>,
}

impl From<UpdateProfile> for ProfileChanges {
    fn from(p: UpdateProfile) -> Self {
        let text = |f: Option<Option<BillingText>>| f.map(|v| v.map(BillingText::into_inner));
        ProfileChanges {
            name: p.name.map(Name::into_inner),
            company: text(p.company),
            address_line1: text(p.address_line1),
            address_line2: text(p.address_line2),
            city: text(p.city),
            postal_code: text(p.postal_code),
            country: p.country.map(|v| v.map(CountryCode::into_inner)),
            tax_id: text(p.tax_id),
        }
    }
}

/// Updates the caller's name and billing details.
#[utoipa::path(
    patch,
    path = "/api/v1/me",
    tag = "profile",
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "The updated account", body = User),
        (status = 400, description = "`validation_failed`: a field too long, with control characters, \
            an unknown field, or a country that is not two letters", body = ErrorBody),
    )
)]
pub async fn update_me(
    state: web::Data<AppState>,
    user: SessionUser,
    body: Json<UpdateProfile>,
) -> ApiResult<HttpResponse> {
    let changes = ProfileChanges::from(body.into_inner());
    let mut conn = conn(&state.db).await?;
    let me = User::update_profile(&mut conn, user.id(), &changes).await?;
    Ok(HttpResponse::Ok().json(me))
}
