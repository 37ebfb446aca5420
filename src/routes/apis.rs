//! The public catalog: active APIs and their current prices.

use actix_web::{HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::AppState;
use crate::domain::pricing::PriceView;
use crate::error::ApiResult;
use crate::models::Api;
use crate::models::price::{PriceBook, PriceEntry};
use crate::routes::conn;

#[derive(Serialize, ToSchema)]
pub struct ApiView {
    slug: String,
    method: String,
    route: String,
    name: String,
    description: String,
    /// The price in force now (`null`: free).
    price: Option<PriceView>,
    /// The next price version, when one is scheduled: calls that arrive
    /// from its `effective_from` on cost that.
    next_price: Option<PriceView>,
}

#[derive(ToSchema)]
pub struct ApiList {
    pub apis: Vec<ApiView>,
}

/// The active metered APIs with their current prices (public: a
/// prospective consumer may browse it).
#[utoipa::path(
    get,
    path = "/api/v1/apis",
    tag = "catalog",
    responses((status = 200, description = "Active APIs by slug", body = ApiList))
)]
pub async fn list_apis(state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    let mut conn = conn(&state.db).await?;
    let active = Api::active(&mut conn).await?;
    let ids: Vec<i32> = active.iter().map(|a| a.id).collect();
    let book = PriceBook::load(&mut conn, Some(&ids)).await?;
    let now = state.now();
    let apis: Vec<ApiView> = active
        .into_iter()
        .map(|a| ApiView {
            price: book.in_force_at(a.id, now).map(PriceEntry::view),
            next_price: book.next_after(a.id, now).map(PriceEntry::view),
            slug: a.slug,
            method: a.method,
            route: a.route,
            name: a.name,
            description: a.description,
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "apis": apis })))
}
