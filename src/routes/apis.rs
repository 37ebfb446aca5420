use actix_web::{HttpResponse, web};
use serde::Serialize;

use crate::app::AppState;
use crate::error::ApiResult;
use crate::models::Api;
use crate::routes::conn;

#[derive(Serialize)]
struct ApiView {
    slug: String,
    method: String,
    route: String,
    name: String,
    description: String,
}

/// The active metered APIs (public: a prospective consumer may browse it).
pub async fn list_apis(state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    let mut conn = conn(&state.db).await?;
    let apis: Vec<ApiView> = Api::active(&mut conn)
        .await?
        .into_iter()
        .map(|a| ApiView {
            slug: a.slug,
            method: a.method,
            route: a.route,
            name: a.name,
            description: a.description,
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "apis": apis })))
}
