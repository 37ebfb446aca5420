//! Admin routes (admin role): the API catalog and its prices.

use actix_web::{HttpResponse, web};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::app::AppState;
use crate::domain::currency::DecimalString;
use crate::domain::pricing::{PriceVersion, PriceView, Tier};
use crate::domain::text::{Description, HttpMethod, Name, RoutePattern, Slug};
use crate::domain::{Currency, Period};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::models::Api;
use crate::models::api::{ApiChanges, NewApi};
use crate::models::price::{PriceBook, PriceRow};
use crate::routes::conn;
use crate::routes::extract::AdminUser;
use crate::routes::json::Json;

#[derive(Serialize, ToSchema)]
pub struct AdminApiView {
    #[serde(flatten)]
    api: Api,
    current_price: Option<PriceView>,
}

#[derive(ToSchema)]
pub struct AdminApiList {
    pub apis: Vec<AdminApiView>,
}

/// Every catalog entry, active or not, with its current price.
#[utoipa::path(
    get,
    path = "/api/v1/admin/apis",
    tag = "admin",
    operation_id = "admin_list_apis",
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "The catalog, by id", body = AdminApiList),
        (status = 403, description = "`forbidden`: the caller does not have the admin role", body = ErrorBody),
    )
)]
pub async fn list_apis(state: web::Data<AppState>, _admin: AdminUser) -> ApiResult<HttpResponse> {
    let mut conn = conn(&state.db).await?;
    let all = Api::all(&mut conn).await?;
    let book = PriceBook::load(&mut conn, None).await?;
    let period = state.current_period();
    let apis: Vec<AdminApiView> = all
        .into_iter()
        .map(|api| AdminApiView {
            current_price: book.for_period(api.id, period).map(|v| PriceView::new(period, v)),
            api,
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "apis": apis })))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiRequest {
    #[schema(inline)]
    slug: Slug,
    #[schema(inline)]
    method: HttpMethod,
    #[schema(inline)]
    route: RoutePattern,
    #[schema(inline)]
    name: Name,
    #[serde(default)]
    #[schema(inline)]
    description: Description,
}

/// Adds a catalog entry. It is metered once a route with that method and
/// pattern is served; it starts at the default price (0.001 per call).
#[utoipa::path(
    post,
    path = "/api/v1/admin/apis",
    tag = "admin",
    security(("bearerAuth" = [])),
    responses(
        (status = 201, description = "The new catalog entry", body = Api),
        (status = 400, description = "`validation_failed`: a bad slug, method, route, name or description",
            body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller does not have the admin role", body = ErrorBody),
        (status = 409, description = "`api_exists`: the slug, or the method and route, is taken", body = ErrorBody),
    )
)]
pub async fn create_api(
    state: web::Data<AppState>,
    _admin: AdminUser,
    body: Json<NewApiRequest>,
) -> ApiResult<HttpResponse> {
    let b = body.into_inner();
    let new = NewApi {
        slug: b.slug,
        method: b.method,
        route: b.route,
        name: b.name,
        description: b.description,
    };
    let default_price = PriceVersion {
        currency: state.config.billing.currency,
        unit_price: Decimal::new(1, 3),
        free_calls: 0,
        tiers: vec![],
    };
    let mut conn = conn(&state.db).await?;
    match Api::create(&mut conn, &new, &default_price).await {
        Ok(api) => {
            drop(conn);
            state.reload_catalog().await?;
            Ok(HttpResponse::Created().json(api))
        }
        Err(diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)) => {
            Err(ApiError::conflict(
                "api_exists",
                "an API with this slug, or this method and route, already exists",
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// A partial update: absent fields are left alone.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateApiRequest {
    #[schema(inline)]
    name: Option<Name>,
    #[schema(inline)]
    description: Option<Description>,
    active: Option<bool>,
}

/// Renames, re-describes, or (de)activates a catalog entry.
#[utoipa::path(
    patch,
    path = "/api/v1/admin/apis/{id}",
    tag = "admin",
    params(("id" = i32, Path, description = "The catalog entry's id")),
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "The updated entry", body = Api),
        (status = 400, description = "`validation_failed`: an empty or too long name, or a too long description",
            body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller does not have the admin role", body = ErrorBody),
        (status = 404, description = "`not_found`: no such API, or `id` is not an integer", body = ErrorBody),
    )
)]
pub async fn update_api(
    state: web::Data<AppState>,
    _admin: AdminUser,
    id: web::Path<i32>,
    body: Json<UpdateApiRequest>,
) -> ApiResult<HttpResponse> {
    let b = body.into_inner();
    let changes = ApiChanges {
        name: b.name.map(Name::into_inner),
        description: b.description.map(Description::into_inner),
        active: b.active,
    };
    let mut conn = conn(&state.db).await?;
    let api = Api::update(&mut conn, *id, &changes).await?;
    drop(conn);
    state.reload_catalog().await?;
    Ok(HttpResponse::Ok().json(api))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPriceRequest {
    // Per call, not negative (no doc comment: utoipa would wrap the inline
    // schema in an allOf with an object, which no client can satisfy).
    #[serde(with = "crate::domain::currency::decimal_string")]
    #[schema(value_type = DecimalString, inline)]
    unit_price: Decimal,
    /// Must be the billing currency when given.
    #[schema(value_type = Option<Currency>)]
    currency: Option<String>,
    /// Calls free each period (default 0).
    #[serde(default)]
    #[schema(minimum = 0)]
    free_calls: i64,
    /// Graduated tiers (default none: flat `unit_price`).
    #[serde(default)]
    tiers: Vec<Tier>,
    /// `YYYY-MM`; default: the current period.
    effective_from: Option<Period>,
}

#[derive(ToSchema)]
pub struct CreatedPrice {
    pub api_id: i32,
    pub price: PriceView,
    /// True when calls were already recorded in the requested period, so
    /// the price takes effect from the next one.
    pub deferred: bool,
}

/// Sets a new price. It takes effect from the requested period's start (the
/// current period by default) only if no call to this API has been recorded
/// in that period yet; otherwise from the next period — a price change never
/// re-prices calls already made.
#[utoipa::path(
    post,
    path = "/api/v1/admin/apis/{id}/prices",
    tag = "admin",
    params(("id" = i32, Path, description = "The catalog entry's id")),
    security(("bearerAuth" = [])),
    responses(
        (status = 201, description = "The new price version", body = CreatedPrice),
        (status = 400, description = "`validation_failed`: a negative price or allowance, bad tiers, \
            or a bad or past `effective_from`", body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller does not have the admin role", body = ErrorBody),
        (status = 404, description = "`not_found`: no such API, or `id` is not an integer", body = ErrorBody),
        (status = 422, description = "`currency_mismatch`: not the billing currency", body = ErrorBody),
    )
)]
pub async fn create_price(
    state: web::Data<AppState>,
    _admin: AdminUser,
    id: web::Path<i32>,
    body: Json<NewPriceRequest>,
) -> ApiResult<HttpResponse> {
    let b = body.into_inner();
    let billing_currency = state.config.billing.currency;
    let currency = match b.currency.as_deref() {
        Some(code) => code.parse::<Currency>()?,
        None => billing_currency,
    };
    if currency != billing_currency {
        return Err(ApiError::currency_mismatch(format!(
            "prices must be in the billing currency {billing_currency}"
        )));
    }
    let version = PriceVersion {
        currency,
        unit_price: b.unit_price,
        free_calls: b.free_calls,
        tiers: b.tiers,
    };
    version.validate()?;
    let current = state.current_period();
    let requested = b.effective_from.unwrap_or(current);
    if requested < current {
        return Err(ApiError::validation("a price cannot take effect in a past period"));
    }
    let mut conn = conn(&state.db).await?;
    let (row, effective) = PriceRow::schedule(&mut conn, *id, requested, &version).await?;
    Ok(HttpResponse::Created().json(json!({
        "api_id": row.api_id,
        "price": PriceView::new(effective, &version),
        "deferred": effective != requested,
    })))
}
