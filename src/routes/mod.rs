//! Thin HTTP handlers grouped by resource: parse, authorise, one model call,
//! serialise.

pub mod admin;
pub mod api_keys;
pub mod apis;
pub mod auth;
pub mod billing;
pub mod finance;
pub mod health;
pub mod invoices;
pub mod me;
pub mod tools;
pub mod usage;
pub mod webhooks;

use actix_web::web;

use crate::error::ApiError;

/// A database connection from the pool, or 503.
pub(crate) async fn conn(pool: &crate::db::DbPool) -> Result<crate::db::DbConn, ApiError> {
    Ok(pool.get().await?)
}

/// Routes under `/api/v1` that are not metered.
pub fn configure_api(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/auth/register").route(web::post().to(auth::register)))
        .service(web::resource("/auth/login").route(web::post().to(auth::login)))
        .service(web::resource("/auth/refresh").route(web::post().to(auth::refresh)))
        .service(web::resource("/auth/logout").route(web::post().to(auth::logout)))
        .service(
            web::resource("/api-keys")
                .route(web::get().to(api_keys::list_api_keys))
                .route(web::post().to(api_keys::create_api_key)),
        )
        .service(web::resource("/api-keys/{id}").route(web::delete().to(api_keys::revoke_api_key)))
        .service(
            web::resource("/me")
                .route(web::get().to(me::get_me))
                .route(web::patch().to(me::update_me)),
        )
        .service(web::resource("/apis").route(web::get().to(apis::list_apis)))
        .service(web::resource("/usage").route(web::get().to(usage::get_usage)))
        // Consumers: their own cost and invoices.
        .service(web::resource("/billing/current").route(web::get().to(billing::current_cost)))
        .service(web::resource("/billing/periods/{period}").route(web::get().to(billing::period_cost)))
        .service(web::resource("/invoices").route(web::get().to(invoices::list_invoices)))
        .service(web::resource("/invoices/{id}").route(web::get().to(invoices::get_invoice)))
        // Finance (finance or admin role).
        .service(web::resource("/finance/periods/{period}/close").route(web::post().to(finance::close_period)))
        .service(
            web::resource("/finance/periods/{period}/reconciliation").route(web::get().to(finance::reconciliation)),
        )
        .service(web::resource("/finance/invoices").route(web::get().to(finance::list_invoices)))
        // Registered before `/finance/invoices/{id}` so "export" is not taken for an id.
        .service(web::resource("/finance/invoices/export").route(web::get().to(finance::export_invoices)))
        .service(web::resource("/finance/invoices/{id}").route(web::get().to(finance::get_invoice)))
        .service(web::resource("/finance/invoices/{id}/payments").route(web::post().to(finance::record_payment)))
        .service(web::resource("/finance/invoices/{id}/void").route(web::post().to(finance::void_invoice)))
        // Admin: the catalog and prices.
        .service(
            web::resource("/admin/apis")
                .route(web::get().to(admin::list_apis))
                .route(web::post().to(admin::create_api)),
        )
        .service(web::resource("/admin/apis/{id}").route(web::patch().to(admin::update_api)))
        .service(web::resource("/admin/apis/{id}/prices").route(web::post().to(admin::create_price)))
        // Payment provider callbacks (signed, no user).
        .service(web::resource("/webhooks/payments").route(web::post().to(webhooks::payment_webhook)));
}
