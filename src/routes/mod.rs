//! Thin HTTP handlers grouped by resource: parse, authorise, one model call,
//! serialise.

pub mod apis;
pub mod auth;
pub mod health;
pub mod me;
pub mod tools;
pub mod usage;

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
        .service(
            web::resource("/me")
                .route(web::get().to(me::get_me))
                .route(web::patch().to(me::update_me)),
        )
        .service(web::resource("/apis").route(web::get().to(apis::list_apis)))
        .service(web::resource("/usage").route(web::get().to(usage::get_usage)));
}
