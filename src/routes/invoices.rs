//! The caller's own invoices.

use actix_web::{HttpResponse, web};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::app::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::models::Invoice;
use crate::models::invoice::InvoiceDetail;
use crate::routes::conn;
use crate::routes::extract::AuthUser;

#[derive(ToSchema)]
pub struct InvoiceList {
    pub invoices: Vec<Invoice>,
}

/// The caller's own invoices, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/invoices",
    tag = "billing",
    security(("bearerAuth" = []), ("apiKey" = [])),
    responses((status = 200, description = "The caller's invoices", body = InvoiceList))
)]
pub async fn list_invoices(state: web::Data<AppState>, user: AuthUser) -> ApiResult<HttpResponse> {
    let mut conn = conn(&state.db).await?;
    let invoices = Invoice::for_user(&mut conn, user.id()).await?;
    Ok(HttpResponse::Ok().json(json!({ "invoices": invoices })))
}

/// One of the caller's invoices with its lines and payments. Another
/// user's invoice is "not found", never "forbidden": its existence is not
/// confirmed.
#[utoipa::path(
    get,
    path = "/api/v1/invoices/{id}",
    tag = "billing",
    params(("id" = Uuid, Path, description = "The invoice's id")),
    security(("bearerAuth" = []), ("apiKey" = [])),
    responses(
        (status = 200, description = "The invoice", body = InvoiceDetail),
        (status = 404, description = "`not_found`: no such invoice of the caller's, or `id` is not a UUID",
            body = ErrorBody),
    )
)]
pub async fn get_invoice(state: web::Data<AppState>, user: AuthUser, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    let mut conn = conn(&state.db).await?;
    let invoice = Invoice::find_for_user(&mut conn, *id, user.id())
        .await?
        .ok_or_else(|| ApiError::not_found("invoice not found"))?;
    let detail = InvoiceDetail::load(&mut conn, invoice).await?;
    Ok(HttpResponse::Ok().json(detail))
}
