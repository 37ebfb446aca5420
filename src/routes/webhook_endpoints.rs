//! Usage alerts (`/billing/alerts`) and outbound webhook endpoints: a
//! consumer's for their own events (`/webhooks`), an admin's for every
//! user's (`/admin/webhooks`). The same handlers serve both, told apart by
//! the extractor.

use actix_web::{HttpResponse, web};
use rust_decimal::Decimal;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::actions;
use crate::app::AppState;
use crate::billing::alerts::Alerts;
use crate::domain::currency::{DecimalString, parse_decimal_string};
use crate::domain::text::Description;
use crate::domain::webhook::EventType;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::routes::extract::{AdminUser, AuthUser, SessionUser};
use crate::routes::json::Json;
use crate::webhooks::Owner;
use crate::webhooks::endpoints::{DeliveryPage, DeliveryView, EndpointView, EndpointWithSecret, NewEndpoint};

/// The caller's usage alerts.
#[utoipa::path(
    get,
    path = "/api/v1/billing/alerts",
    tag = "webhooks",
    security(("bearerAuth" = []), ("apiKey" = [])),
    responses((status = 200, description = "The caller's alerts", body = Alerts))
)]
pub async fn my_alerts(state: web::Data<AppState>, user: AuthUser) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(actions::alerts(&state, user.id()).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertsRequest {
    /// Charge thresholds of a period in the billing currency (at most 10,
    /// each > 0 with at most the currency's decimals). Required; `[]`
    /// removes them.
    #[schema(value_type = Vec<DecimalString>, example = json!(["5.00", "20.00"]))]
    thresholds: Vec<String>,
    /// The credit balance below which `credits.low` is emitted; `null` or
    /// absent: never.
    #[serde(default, with = "crate::domain::currency::decimal_string_option")]
    #[schema(value_type = Option<DecimalString>)]
    credits_low_below: Option<Decimal>,
}

/// Replaces the caller's usage alerts. Each threshold the period's charge
/// reaches emits one `usage.threshold_reached` per period.
#[utoipa::path(
    put,
    path = "/api/v1/billing/alerts",
    tag = "webhooks",
    security(("bearerAuth" = [])),
    request_body = AlertsRequest,
    responses(
        (status = 200, description = "Set", body = Alerts),
        (status = 400, description = "`validation_failed`: a bad threshold", body = ErrorBody),
    )
)]
pub async fn set_my_alerts(
    state: web::Data<AppState>,
    user: SessionUser,
    body: Json<AlertsRequest>,
) -> ApiResult<HttpResponse> {
    let body = body.into_inner();
    let thresholds: Vec<Decimal> = body
        .thresholds
        .iter()
        .map(|t| parse_decimal_string(t))
        .collect::<Result<_, _>>()
        .map_err(ApiError::validation)?;
    let alerts = actions::set_alerts(&state, user.id(), &thresholds, body.credits_low_below).await?;
    Ok(HttpResponse::Ok().json(alerts))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpointRequest {
    /// Where events are POSTed: an `http` or `https` URL.
    #[schema(example = "https://hooks.example.com/payg")]
    url: String,
    /// The event types to receive; absent or `[]`: every type.
    #[serde(default)]
    event_types: Vec<EventType>,
    #[serde(default)]
    #[schema(value_type = Option<String>, max_length = 2000)]
    description: Option<Description>,
}

impl CreateEndpointRequest {
    fn into_new(self) -> NewEndpoint {
        NewEndpoint {
            url: self.url,
            event_types: self.event_types,
            description: self.description,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEndpointRequest {
    /// `false` disables the endpoint (its deliveries wait); `true` enables
    /// it again (they resume).
    enabled: bool,
}

#[derive(Deserialize, IntoParams)]
pub struct DeliveryPageQuery {
    /// From 1 (default 1).
    #[param(minimum = 1)]
    page: Option<i64>,
    /// 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    per_page: Option<i64>,
}

async fn create(state: &AppState, owner: Owner, body: CreateEndpointRequest) -> ApiResult<HttpResponse> {
    let created = actions::create_webhook(state, owner, body.into_new()).await?;
    Ok(HttpResponse::Created().json(created))
}

async fn deliveries(state: &AppState, owner: Owner, id: Uuid, query: &DeliveryPageQuery) -> ApiResult<HttpResponse> {
    let (page, per_page) = (query.page.unwrap_or(1), query.per_page.unwrap_or(50));
    Ok(HttpResponse::Ok().json(actions::webhook_deliveries(state, owner, id, page, per_page).await?))
}

fn admin(user: &AdminUser) -> Owner {
    Owner::Admin { acting: user.id() }
}

/// The caller's webhook endpoints (for their own events), newest first.
#[utoipa::path(
    get,
    path = "/api/v1/webhooks",
    tag = "webhooks",
    security(("bearerAuth" = []), ("apiKey" = [])),
    responses((status = 200, description = "The caller's endpoints", body = [EndpointView]))
)]
pub async fn list_my_webhooks(state: web::Data<AppState>, user: AuthUser) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(actions::webhooks(&state, Owner::User(user.id())).await?))
}

/// Registers an endpoint for the caller's own events. The answer holds the
/// signing secret, shown this once. A consumer's URL must reach a public
/// address, unless the admin allow-listed its host.
#[utoipa::path(
    post,
    path = "/api/v1/webhooks",
    tag = "webhooks",
    security(("bearerAuth" = [])),
    request_body = CreateEndpointRequest,
    responses(
        (status = 201, description = "Registered; `secret` is shown once", body = EndpointWithSecret),
        (status = 400, description = "`validation_failed`: a bad URL, a host not allowed, an unknown event type",
            body = ErrorBody),
        (status = 409, description = "`too_many_endpoints`: at most 20", body = ErrorBody),
    )
)]
pub async fn create_my_webhook(
    state: web::Data<AppState>,
    user: SessionUser,
    body: Json<CreateEndpointRequest>,
) -> ApiResult<HttpResponse> {
    create(&state, Owner::User(user.id()), body.into_inner()).await
}

/// One of the caller's endpoints.
#[utoipa::path(
    get,
    path = "/api/v1/webhooks/{id}",
    tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    security(("bearerAuth" = []), ("apiKey" = [])),
    responses(
        (status = 200, description = "The endpoint", body = EndpointView),
        (status = 404, description = "`not_found`: no such endpoint of the caller's", body = ErrorBody),
    )
)]
pub async fn get_my_webhook(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(actions::webhook(&state, Owner::User(user.id()), id.into_inner()).await?))
}

/// Disables or enables one of the caller's endpoints.
#[utoipa::path(
    patch,
    path = "/api/v1/webhooks/{id}",
    tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    security(("bearerAuth" = [])),
    request_body = UpdateEndpointRequest,
    responses(
        (status = 200, description = "Changed", body = EndpointView),
        (status = 404, description = "`not_found`: no such endpoint of the caller's", body = ErrorBody),
    )
)]
pub async fn update_my_webhook(
    state: web::Data<AppState>,
    user: SessionUser,
    id: web::Path<Uuid>,
    body: Json<UpdateEndpointRequest>,
) -> ApiResult<HttpResponse> {
    let owner = Owner::User(user.id());
    let view = actions::set_webhook_enabled(&state, owner, id.into_inner(), body.enabled).await?;
    Ok(HttpResponse::Ok().json(view))
}

/// A new signing secret for one of the caller's endpoints, shown once; the
/// previous one signs beside it for 24 hours.
#[utoipa::path(
    post,
    path = "/api/v1/webhooks/{id}/rotate",
    tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "Rotated; `secret` is shown once", body = EndpointWithSecret),
        (status = 404, description = "`not_found`: no such endpoint of the caller's", body = ErrorBody),
    )
)]
pub async fn rotate_my_webhook(
    state: web::Data<AppState>,
    user: SessionUser,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let owner = Owner::User(user.id());
    Ok(HttpResponse::Ok().json(actions::rotate_webhook_secret(&state, owner, id.into_inner()).await?))
}

/// The delivery log of one of the caller's endpoints, newest first, each
/// delivery with its attempts.
#[utoipa::path(
    get,
    path = "/api/v1/webhooks/{id}/deliveries",
    tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint's id"), DeliveryPageQuery),
    security(("bearerAuth" = []), ("apiKey" = [])),
    responses(
        (status = 200, description = "One page of deliveries", body = DeliveryPage),
        (status = 400, description = "`validation_failed`: a bad page or per_page", body = ErrorBody),
        (status = 404, description = "`not_found`: no such endpoint of the caller's", body = ErrorBody),
    )
)]
pub async fn my_webhook_deliveries(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<Uuid>,
    query: web::Query<DeliveryPageQuery>,
) -> ApiResult<HttpResponse> {
    deliveries(&state, Owner::User(user.id()), id.into_inner(), &query).await
}

/// Sends a delivery to one of the caller's endpoints again, now, with the
/// same event id.
#[utoipa::path(
    post,
    path = "/api/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
    tag = "webhooks",
    params(
        ("id" = Uuid, Path, description = "The endpoint's id"),
        ("delivery_id" = Uuid, Path, description = "The delivery's id"),
    ),
    security(("bearerAuth" = [])),
    responses(
        (status = 202, description = "Queued for delivery now", body = DeliveryView),
        (status = 404, description = "`not_found`: no such endpoint or delivery of the caller's", body = ErrorBody),
    )
)]
pub async fn redeliver_mine(
    state: web::Data<AppState>,
    user: SessionUser,
    ids: web::Path<(Uuid, Uuid)>,
) -> ApiResult<HttpResponse> {
    let (id, delivery) = ids.into_inner();
    let view = actions::redeliver_webhook(&state, Owner::User(user.id()), id, delivery).await?;
    Ok(HttpResponse::Accepted().json(view))
}

/// Every admin endpoint (each receives every user's events), newest first.
#[utoipa::path(
    get,
    path = "/api/v1/admin/webhooks",
    tag = "webhooks",
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "The admins' endpoints", body = [EndpointView]),
        (status = 403, description = "`forbidden`: the caller is not an admin", body = ErrorBody),
    )
)]
pub async fn list_admin_webhooks(state: web::Data<AppState>, user: AdminUser) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(actions::webhooks(&state, admin(&user)).await?))
}

/// Registers an endpoint for every user's events. The answer holds the
/// signing secret, shown this once. Any host (the provider's own systems
/// may be internal) unless `PAYG_WEBHOOK_ALLOWED_HOSTS` restricts them.
#[utoipa::path(
    post,
    path = "/api/v1/admin/webhooks",
    tag = "webhooks",
    security(("bearerAuth" = [])),
    request_body = CreateEndpointRequest,
    responses(
        (status = 201, description = "Registered; `secret` is shown once", body = EndpointWithSecret),
        (status = 400, description = "`validation_failed`: a bad URL, a host not allowed, an unknown event type",
            body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller is not an admin", body = ErrorBody),
        (status = 409, description = "`too_many_endpoints`: at most 20", body = ErrorBody),
    )
)]
pub async fn create_admin_webhook(
    state: web::Data<AppState>,
    user: AdminUser,
    body: Json<CreateEndpointRequest>,
) -> ApiResult<HttpResponse> {
    create(&state, admin(&user), body.into_inner()).await
}

/// One admin endpoint.
#[utoipa::path(
    get,
    path = "/api/v1/admin/webhooks/{id}",
    tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "The endpoint", body = EndpointView),
        (status = 403, description = "`forbidden`: the caller is not an admin", body = ErrorBody),
        (status = 404, description = "`not_found`: no such admin endpoint", body = ErrorBody),
    )
)]
pub async fn get_admin_webhook(
    state: web::Data<AppState>,
    user: AdminUser,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(actions::webhook(&state, admin(&user), id.into_inner()).await?))
}

/// Disables or enables an admin endpoint.
#[utoipa::path(
    patch,
    path = "/api/v1/admin/webhooks/{id}",
    tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    security(("bearerAuth" = [])),
    request_body = UpdateEndpointRequest,
    responses(
        (status = 200, description = "Changed", body = EndpointView),
        (status = 403, description = "`forbidden`: the caller is not an admin", body = ErrorBody),
        (status = 404, description = "`not_found`: no such admin endpoint", body = ErrorBody),
    )
)]
pub async fn update_admin_webhook(
    state: web::Data<AppState>,
    user: AdminUser,
    id: web::Path<Uuid>,
    body: Json<UpdateEndpointRequest>,
) -> ApiResult<HttpResponse> {
    let view = actions::set_webhook_enabled(&state, admin(&user), id.into_inner(), body.enabled).await?;
    Ok(HttpResponse::Ok().json(view))
}

/// A new signing secret for an admin endpoint, shown once; the previous
/// one signs beside it for 24 hours.
#[utoipa::path(
    post,
    path = "/api/v1/admin/webhooks/{id}/rotate",
    tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "Rotated; `secret` is shown once", body = EndpointWithSecret),
        (status = 403, description = "`forbidden`: the caller is not an admin", body = ErrorBody),
        (status = 404, description = "`not_found`: no such admin endpoint", body = ErrorBody),
    )
)]
pub async fn rotate_admin_webhook(
    state: web::Data<AppState>,
    user: AdminUser,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(actions::rotate_webhook_secret(&state, admin(&user), id.into_inner()).await?))
}

/// The delivery log of an admin endpoint, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/admin/webhooks/{id}/deliveries",
    tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint's id"), DeliveryPageQuery),
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "One page of deliveries", body = DeliveryPage),
        (status = 400, description = "`validation_failed`: a bad page or per_page", body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller is not an admin", body = ErrorBody),
        (status = 404, description = "`not_found`: no such admin endpoint", body = ErrorBody),
    )
)]
pub async fn admin_webhook_deliveries(
    state: web::Data<AppState>,
    user: AdminUser,
    id: web::Path<Uuid>,
    query: web::Query<DeliveryPageQuery>,
) -> ApiResult<HttpResponse> {
    deliveries(&state, admin(&user), id.into_inner(), &query).await
}

/// Sends a delivery to an admin endpoint again, now, with the same event id.
#[utoipa::path(
    post,
    path = "/api/v1/admin/webhooks/{id}/deliveries/{delivery_id}/redeliver",
    tag = "webhooks",
    params(
        ("id" = Uuid, Path, description = "The endpoint's id"),
        ("delivery_id" = Uuid, Path, description = "The delivery's id"),
    ),
    security(("bearerAuth" = [])),
    responses(
        (status = 202, description = "Queued for delivery now", body = DeliveryView),
        (status = 403, description = "`forbidden`: the caller is not an admin", body = ErrorBody),
        (status = 404, description = "`not_found`: no such endpoint or delivery", body = ErrorBody),
    )
)]
pub async fn redeliver_admin(
    state: web::Data<AppState>,
    user: AdminUser,
    ids: web::Path<(Uuid, Uuid)>,
) -> ApiResult<HttpResponse> {
    let (id, delivery) = ids.into_inner();
    let view = actions::redeliver_webhook(&state, admin(&user), id, delivery).await?;
    Ok(HttpResponse::Accepted().json(view))
}
