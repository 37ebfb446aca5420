//! Admin routes (admin role): the API catalog and its prices.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::actions;
use crate::app::AppState;
use crate::catalog::{self, UpstreamSettings};
use crate::domain::Currency;
use crate::domain::currency::DecimalString;
use crate::domain::gateway::{self as gw};
use crate::domain::pricing::{PriceStart, PriceVersion, PriceView, Tier};
use crate::domain::text::{Description, GatewayPrefix, HttpMethod, Name, RoutePattern, Slug, UpstreamUrl};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::models::Api;
use crate::models::api::{ApiChanges, Upstream, UpstreamChanges, UpstreamUpdate};
use crate::models::price::{PriceBook, PriceEntry, PriceStatus};
use crate::routes::conn;
use crate::routes::extract::AdminUser;
use crate::routes::json::Json;

/// A gateway API's upstream as admins see it. The signing secret is shown
/// only in the answers that create or rotate it.
#[derive(Serialize, ToSchema)]
pub struct UpstreamView {
    url: String,
    timeout_ms: i32,
    connect_timeout_ms: i32,
    max_body_bytes: i64,
    preserve_host: bool,
    /// Shown once, when it is generated (create, rotate): keep it.
    #[serde(skip_serializing_if = "Option::is_none")]
    signing_secret: Option<String>,
    /// Until when the previous secret signs too (after a rotation).
    previous_secret_expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl UpstreamView {
    fn new(up: &Upstream, show_secret: bool) -> Self {
        Self {
            url: up.url.clone(),
            timeout_ms: up.timeout_ms,
            connect_timeout_ms: up.connect_timeout_ms,
            max_body_bytes: up.max_body_bytes,
            preserve_host: up.preserve_host,
            signing_secret: show_secret.then(|| up.signing_secret.clone()),
            previous_secret_expires_at: up.previous_secret_expires_at,
        }
    }
}

/// A catalog entry as admins see it: with its upstream, if it is a gateway API.
#[derive(Serialize, ToSchema)]
pub struct AdminApi {
    #[serde(flatten)]
    api: Api,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<UpstreamView>,
}

#[derive(Serialize, ToSchema)]
pub struct AdminApiView {
    #[serde(flatten)]
    api: Api,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<UpstreamView>,
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
    let all = Api::all_with_upstreams(&mut conn).await?;
    let book = PriceBook::load(&mut conn, None).await?;
    let now = state.now();
    let apis: Vec<AdminApiView> = all
        .into_iter()
        .map(|(api, upstream)| AdminApiView {
            current_price: book.in_force_at(api.id, now).map(PriceEntry::view),
            upstream: upstream.as_ref().map(|u| UpstreamView::new(u, false)),
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
    /// Makes it a gateway API: calls to `route` (a path prefix) are
    /// forwarded to this upstream.
    upstream: Option<UpstreamSettings>,
}

/// Adds a catalog entry. A built-in entry is metered once a route with that
/// method and pattern is served; a gateway entry (with `upstream`) at once,
/// on every instance within about a second. It starts at the default price
/// (0.001 per call).
#[utoipa::path(
    post,
    path = "/api/v1/admin/apis",
    tag = "admin",
    security(("bearerAuth" = [])),
    responses(
        (status = 201, description = "The new catalog entry (a gateway API's signing secret is shown \
            this once)", body = AdminApi),
        (status = 400, description = "`validation_failed`: a bad slug, method, route, name, description or \
            upstream; a gateway route under a path payg serves", body = ErrorBody),
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
    let (new, upstream) = catalog::new_entry(b.slug, b.method, &b.route, b.name, b.description, b.upstream.as_ref())?;
    let (api, upstream) = actions::create_api(&state, &new, upstream.as_ref()).await?;
    Ok(HttpResponse::Created().json(AdminApi {
        upstream: upstream.as_ref().map(|u| UpstreamView::new(u, true)),
        api,
    }))
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
    /// Changes the given upstream fields; on an entry without an upstream,
    /// `url` makes it a gateway API (its route must then be a path prefix).
    upstream: Option<UpstreamPatch>,
}

/// A partial update of an upstream: absent fields are left alone.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamPatch {
    #[schema(inline)]
    url: Option<UpstreamUrl>,
    #[schema(minimum = 1, maximum = 3600000)]
    timeout_ms: Option<i32>,
    #[schema(minimum = 1, maximum = 600000)]
    connect_timeout_ms: Option<i32>,
    #[schema(minimum = 0)]
    max_body_bytes: Option<i64>,
    preserve_host: Option<bool>,
}

/// Renames, re-describes, (de)activates a catalog entry, or changes its
/// upstream; every instance follows within about a second.
#[utoipa::path(
    patch,
    path = "/api/v1/admin/apis/{id}",
    tag = "admin",
    params(("id" = i32, Path, description = "The catalog entry's id")),
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "The updated entry", body = AdminApi),
        (status = 400, description = "`validation_failed`: an empty or too long name, a too long description, \
            or a bad upstream", body = ErrorBody),
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
    let Some((api, current)) = Api::find_with_upstream(&mut conn, *id).await? else {
        return Err(ApiError::not_found("no such API"));
    };
    let upstream = match (b.upstream, current) {
        (None, _) => UpstreamUpdate::Keep,
        (Some(patch), Some(current)) => {
            gw::check_limits(
                patch.timeout_ms.unwrap_or(current.timeout_ms),
                patch.connect_timeout_ms.unwrap_or(current.connect_timeout_ms),
                patch.max_body_bytes.unwrap_or(current.max_body_bytes),
            )
            .map_err(ApiError::validation)?;
            UpstreamUpdate::Change(UpstreamChanges {
                url: patch.url.map(UpstreamUrl::into_inner),
                timeout_ms: patch.timeout_ms,
                connect_timeout_ms: patch.connect_timeout_ms,
                max_body_bytes: patch.max_body_bytes,
                preserve_host: patch.preserve_host,
            })
        }
        (Some(patch), None) => {
            let Some(url) = patch.url else {
                return Err(ApiError::validation(
                    "upstream.url is required to make this API a gateway API",
                ));
            };
            api.route.parse::<GatewayPrefix>()?;
            let settings = UpstreamSettings {
                url,
                timeout_ms: patch.timeout_ms.unwrap_or(gw::DEFAULT_TIMEOUT_MS),
                connect_timeout_ms: patch.connect_timeout_ms.unwrap_or(gw::DEFAULT_CONNECT_TIMEOUT_MS),
                max_body_bytes: patch.max_body_bytes.unwrap_or(gw::DEFAULT_MAX_BODY_BYTES),
                preserve_host: patch.preserve_host.unwrap_or(false),
            };
            UpstreamUpdate::Add(settings.checked()?)
        }
    };
    let added = matches!(upstream, UpstreamUpdate::Add(_));
    drop(conn);
    let (api, upstream) = actions::update_api(&state, *id, &changes, &upstream).await?;
    Ok(HttpResponse::Ok().json(AdminApi {
        upstream: upstream.as_ref().map(|u| UpstreamView::new(u, added)),
        api,
    }))
}

/// Rotates a gateway API's signing secret: the answer shows the new one
/// once; the previous one keeps signing beside it for 24 hours, so the
/// upstream can move to the new secret without refusing a call.
#[utoipa::path(
    post,
    path = "/api/v1/admin/apis/{id}/signing-secret",
    tag = "admin",
    params(("id" = i32, Path, description = "The catalog entry's id")),
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "The entry with its new signing secret", body = AdminApi),
        (status = 403, description = "`forbidden`: the caller does not have the admin role", body = ErrorBody),
        (status = 404, description = "`not_found`: no such API, or `id` is not an integer", body = ErrorBody),
        (status = 409, description = "`no_upstream`: the API has no upstream (nothing is signed)", body = ErrorBody),
    )
)]
pub async fn rotate_signing_secret(
    state: web::Data<AppState>,
    _admin: AdminUser,
    id: web::Path<i32>,
) -> ApiResult<HttpResponse> {
    let (api, upstream) = actions::rotate_signing_secret(&state, *id).await?;
    Ok(HttpResponse::Ok().json(AdminApi {
        upstream: upstream.as_ref().map(|u| UpstreamView::new(u, true)),
        api,
    }))
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
    /// When the version starts; default: the first whole second at least
    /// 2 s from now (every instance knows of it before it starts). Calls
    /// that arrive before it keep the price in force when they arrived.
    effective_from: Option<PriceStart>,
}

/// A price version as admins see it.
#[derive(Serialize, ToSchema)]
pub struct PriceVersionView {
    /// The version's id (to cancel it while it is scheduled).
    id: i32,
    status: PriceStatus,
    #[serde(flatten)]
    price: PriceView,
}

impl PriceVersionView {
    fn new(entry: &PriceEntry, in_force: Option<&PriceEntry>, now: DateTime<Utc>) -> Self {
        Self {
            id: entry.id,
            status: entry.status(in_force, now),
            price: entry.view(),
        }
    }
}

#[derive(ToSchema)]
pub struct CreatedPrice {
    pub api_id: i32,
    pub price: PriceVersionView,
}

/// Schedules a new price version from `effective_from` (default: about
/// 2 s from now, returned). Calls that arrive before it keep the price in
/// force when they arrived, however long they wait in a meter's buffer:
/// a price change never re-prices calls already made. A version asked for
/// the same instant as a scheduled one replaces it.
#[utoipa::path(
    post,
    path = "/api/v1/admin/apis/{id}/prices",
    tag = "admin",
    params(("id" = i32, Path, description = "The catalog entry's id")),
    security(("bearerAuth" = [])),
    responses(
        (status = 201, description = "The new price version", body = CreatedPrice),
        (status = 400, description = "`validation_failed`: a negative price or allowance, bad tiers, \
            or an `effective_from` that is not a whole second at least 2 s ahead", body = ErrorBody),
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
    let currency = match b.currency.as_deref() {
        Some(code) => code.parse::<Currency>()?,
        None => state.config.billing.currency,
    };
    let version = PriceVersion {
        currency,
        unit_price: b.unit_price,
        free_calls: b.free_calls,
        tiers: b.tiers,
    };
    let start = b.effective_from.map(|s| s.instant(state.config.billing_tz));
    let row = actions::schedule_price(&state, *id, &version, start).await?;
    let entry = PriceEntry {
        id: row.id,
        effective_from: row.effective_from,
        version,
    };
    Ok(HttpResponse::Created().json(json!({
        "api_id": row.api_id,
        "price": PriceVersionView::new(&entry, None, state.now()),
    })))
}

#[derive(ToSchema)]
pub struct PriceHistory {
    pub api_id: i32,
    /// Every version, oldest first.
    pub prices: Vec<PriceVersionView>,
}

/// Every price version of an API — superseded, in force and scheduled —
/// oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/admin/apis/{id}/prices",
    tag = "admin",
    operation_id = "admin_list_prices",
    params(("id" = i32, Path, description = "The catalog entry's id")),
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "The API's price versions", body = PriceHistory),
        (status = 403, description = "`forbidden`: the caller does not have the admin role", body = ErrorBody),
        (status = 404, description = "`not_found`: no such API, or `id` is not an integer", body = ErrorBody),
    )
)]
pub async fn list_prices(state: web::Data<AppState>, _admin: AdminUser, id: web::Path<i32>) -> ApiResult<HttpResponse> {
    let id = *id;
    let mut conn = conn(&state.db).await?;
    if Api::find_with_upstream(&mut conn, id).await?.is_none() {
        return Err(ApiError::not_found("no API with this id"));
    }
    let book = PriceBook::load(&mut conn, Some(&[id])).await?;
    let now = state.now();
    let in_force = book.in_force_at(id, now);
    let prices: Vec<PriceVersionView> = book
        .history(id)
        .iter()
        .map(|e| PriceVersionView::new(e, in_force, now))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "api_id": id, "prices": prices })))
}

/// Cancels a scheduled price version. Once it is within 2 s of its start
/// (or has started) calls may be priced by it, and it cannot be cancelled:
/// schedule another version instead.
#[utoipa::path(
    delete,
    path = "/api/v1/admin/apis/{id}/prices/{price_id}",
    tag = "admin",
    params(
        ("id" = i32, Path, description = "The catalog entry's id"),
        ("price_id" = i32, Path, description = "The price version's id"),
    ),
    security(("bearerAuth" = [])),
    responses(
        (status = 204, description = "Cancelled"),
        (status = 403, description = "`forbidden`: the caller does not have the admin role", body = ErrorBody),
        (status = 404, description = "`not_found`: no such version of this API, or an id is not an integer",
            body = ErrorBody),
        (status = 409, description = "`price_started`: the version has started, or starts within 2 s",
            body = ErrorBody),
    )
)]
pub async fn cancel_price(
    state: web::Data<AppState>,
    _admin: AdminUser,
    path: web::Path<(i32, i32)>,
) -> ApiResult<HttpResponse> {
    let (api_id, price_id) = path.into_inner();
    actions::cancel_price(&state, api_id, price_id).await?;
    Ok(HttpResponse::NoContent().finish())
}
