//! The web console: server-rendered pages under `/console` for consumers
//! (their month, usage, invoices, keys, usage alerts and webhooks, profile,
//! the catalog), finance (periods, invoices, payments, exports) and admins
//! (the catalog, prices, users, admin webhooks), served by payg itself.
//!
//! A door like `routes/`, beside it: handlers parse a form into checked
//! types, authorise by extractor ([`page::Signed`], then the caller's role
//! as `auth` decides it), call what the JSON API calls (`actions`, models,
//! `billing`) and render a `maud` template. Pages work without JavaScript;
//! `assets/console.js` only adds conveniences (copy a key, confirm a close,
//! keep a form from being sent twice).
//! Sessions, cookies and CSRF tokens are `session.rs`'s; `guard.rs` checks
//! every form and adds the security headers.
//! Nothing here decides a status: failures are `ApiError`s, which
//! `error.rs` turns into the same status the API would answer, as a page.

mod account;
mod admin;
mod assets;
mod chart;
mod consumer;
mod credit;
mod finance;
mod guard;
mod invoice;
pub mod page;
pub mod session;
mod webhooks;

use actix_web::{HttpResponse, web};

use crate::error::ApiError;

/// Where the console lives.
pub const CONSOLE_PREFIX: &str = "/console";

/// Registers the console (its own middleware: CSRF and security headers),
/// its assets, and `/` → `/console`. Mounted before the gateway's
/// catch-all; `/console` and `/assets` are reserved, so no gateway API can
/// take them.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/").route(web::get().to(to_console)))
        .service(web::resource("/assets/{name}").route(web::get().to(asset)))
        .service(
            web::scope(CONSOLE_PREFIX)
                .wrap(actix_web::middleware::from_fn(guard::guard))
                .app_data(web::FormConfig::default().limit(64 * 1024).error_handler(form_error))
                .app_data(web::QueryConfig::default().error_handler(query_error))
                .app_data(web::PathConfig::default().error_handler(path_error))
                .route("", web::get().to(consumer::this_month))
                .route("/", web::get().to(consumer::this_month))
                .route("/sign-in", web::get().to(account::sign_in_form))
                .route("/sign-in", web::post().to(account::sign_in))
                .route("/sign-up", web::get().to(account::sign_up_form))
                .route("/sign-up", web::post().to(account::sign_up))
                .route("/sign-out", web::post().to(account::sign_out))
                .route("/profile", web::get().to(account::profile))
                .route("/profile", web::post().to(account::update_profile))
                .route("/usage", web::get().to(chart::usage_page))
                .route("/invoices", web::get().to(consumer::list_invoices))
                .route("/invoices/{id}", web::get().to(consumer::show_invoice))
                .route("/invoices/{id}/print", web::get().to(consumer::print_invoice))
                .route("/keys", web::get().to(consumer::list_keys))
                .route("/keys", web::post().to(consumer::create_key))
                .route("/keys/{id}/revoke", web::post().to(consumer::revoke_key))
                .route("/apis", web::get().to(consumer::list_apis))
                .route("/webhooks", web::get().to(webhooks::my_webhooks))
                .route("/webhooks", web::post().to(webhooks::create_my_webhook))
                .route("/webhooks/alerts", web::post().to(webhooks::set_my_alerts))
                .route("/webhooks/{id}", web::get().to(webhooks::show_my_webhook))
                .route(
                    "/webhooks/{id}/enabled",
                    web::post().to(webhooks::set_my_webhook_enabled),
                )
                .route("/webhooks/{id}/rotate", web::post().to(webhooks::rotate_my_webhook))
                .route(
                    "/webhooks/{id}/deliveries/{delivery_id}/redeliver",
                    web::post().to(webhooks::redeliver_mine),
                )
                .route("/credit", web::get().to(credit::my_credit))
                .route("/credit/cap", web::post().to(credit::set_my_cap))
                .route("/finance/credit", web::get().to(credit::user_credit))
                .route("/finance/credit/{id}", web::post().to(credit::top_up))
                .route("/finance/credit/{id}/cap", web::post().to(credit::set_user_cap))
                .route("/finance", web::get().to(finance::list_periods))
                .route("/finance/periods/{period}", web::get().to(finance::show_period))
                .route("/finance/periods/{period}/close", web::post().to(finance::close_period))
                .route("/finance/invoices", web::get().to(finance::list_invoices))
                .route("/finance/invoices/{id}", web::get().to(finance::show_invoice))
                .route(
                    "/finance/invoices/{id}/payments",
                    web::post().to(finance::record_payment),
                )
                .route("/finance/invoices/{id}/void", web::post().to(finance::void_invoice))
                .route("/finance/export", web::get().to(finance::export_invoices))
                .route("/admin", web::get().to(admin::show_catalog))
                .route("/admin/apis", web::post().to(admin::create_api))
                .route("/admin/apis/{id}", web::get().to(admin::show_api))
                .route("/admin/apis/{id}", web::post().to(admin::update_api))
                .route("/admin/apis/{id}/prices", web::post().to(admin::schedule_price))
                .route(
                    "/admin/apis/{id}/prices/{price_id}/cancel",
                    web::post().to(admin::cancel_price),
                )
                .route("/admin/apis/{id}/upstream", web::post().to(admin::update_upstream))
                .route(
                    "/admin/apis/{id}/signing-secret",
                    web::post().to(admin::rotate_signing_secret),
                )
                .route("/admin/users", web::get().to(admin::list_users))
                .route("/admin/users/{id}", web::post().to(admin::update_user))
                .route("/admin/webhooks", web::get().to(webhooks::admin_webhooks))
                .route("/admin/webhooks", web::post().to(webhooks::create_admin_webhook))
                .route("/admin/webhooks/{id}", web::get().to(webhooks::show_admin_webhook))
                .route(
                    "/admin/webhooks/{id}/enabled",
                    web::post().to(webhooks::set_admin_webhook_enabled),
                )
                .route(
                    "/admin/webhooks/{id}/rotate",
                    web::post().to(webhooks::rotate_admin_webhook),
                )
                .route(
                    "/admin/webhooks/{id}/deliveries/{delivery_id}/redeliver",
                    web::post().to(webhooks::redeliver_admin),
                )
                .default_service(web::to(not_found)),
        );
}

async fn to_console() -> HttpResponse {
    page::see_other(CONSOLE_PREFIX)
}

#[derive(serde::Deserialize)]
struct AssetQuery {
    v: Option<String>,
}

async fn asset(name: web::Path<String>, query: web::Query<AssetQuery>) -> HttpResponse {
    assets::serve(&name, query.v.as_deref()).unwrap_or_else(page::not_found_page)
}

async fn not_found() -> HttpResponse {
    page::not_found_page()
}

/// A form body actix could not read into the handler's type (a missing
/// or malformed field): the same 400 the API gives a bad body.
fn form_error(err: actix_web::error::UrlencodedError, _req: &actix_web::HttpRequest) -> actix_web::Error {
    page::PageError::from(ApiError::validation(format!("the form is not valid: {err}"))).into()
}

/// A query string the handler's type cannot take: the API's 400, as a page.
fn query_error(err: actix_web::error::QueryPayloadError, _req: &actix_web::HttpRequest) -> actix_web::Error {
    page::PageError::from(crate::error::bad_query(&err)).into()
}

/// A path segment the handler's type cannot take: the API's 404, as a page.
fn path_error(err: actix_web::error::PathError, _req: &actix_web::HttpRequest) -> actix_web::Error {
    page::PageError::from(crate::error::bad_path(&err)).into()
}
