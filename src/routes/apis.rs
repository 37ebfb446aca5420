use actix_web::{HttpResponse, web};
use serde::Serialize;

use crate::app::AppState;
use crate::error::ApiResult;
use crate::models::Api;
use crate::models::price::PriceBook;
use crate::routes::admin::PriceView;
use crate::routes::conn;

#[derive(Serialize)]
struct ApiView {
    slug: String,
    method: String,
    route: String,
    name: String,
    description: String,
    price: Option<PriceView>,
}

/// The active metered APIs with their current prices (public: a
/// prospective consumer may browse it).
pub async fn list_apis(state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    let mut conn = conn(&state.db).await?;
    let active = Api::active(&mut conn).await?;
    let ids: Vec<i32> = active.iter().map(|a| a.id).collect();
    let book = PriceBook::load(&mut conn, Some(&ids)).await?;
    let period = state.current_period();
    let apis: Vec<ApiView> = active
        .into_iter()
        .map(|a| ApiView {
            price: book.for_period(a.id, period).map(|v| PriceView::new(period, v)),
            slug: a.slug,
            method: a.method,
            route: a.route,
            name: a.name,
            description: a.description,
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "apis": apis })))
}
