//! Thin HTTP handlers grouped by resource: parse, authorise, one model call,
//! serialise.
//!
//! Every route is declared once, in a `route_table!` below (or in
//! [`tools`]): the same list registers the actix resources and becomes a
//! `(method, path)` table that the OpenAPI completeness test reads. Each
//! handler's `#[utoipa::path]` describes it for [`openapi`].

/// Declares a route table once. It expands to
/// - `pub fn $configure(cfg)`, registering each path as ONE actix resource
///   with all its methods, so a wrong method on a known path stays a 405;
/// - `pub const $table: &[(&str, &str)]`, the same (method, path) pairs,
///   methods upper-case, paths relative to where `$configure` is mounted.
///
/// Each resource is named by its full pattern (`$mount` + path), so the
/// metering middleware finds a call's pattern with `match_name`, borrowed
/// from the router, instead of building it as a new string.
///
/// ```text
/// route_table! {
///     /// docs for the configure function
///     fn configure_api, API_ROUTES, mounted at API_PREFIX;
///     "/api-keys" => get: api_keys::list_api_keys, post: api_keys::create_api_key;
/// }
/// ```
macro_rules! route_table {
    (@method get) => { "GET" };
    (@method post) => { "POST" };
    (@method put) => { "PUT" };
    (@method patch) => { "PATCH" };
    (@method delete) => { "DELETE" };
    (
        $(#[$meta:meta])*
        fn $configure:ident, $table:ident, mounted at $mount:expr;
        $( $path:literal => $( $method:ident : $handler:path ),+ ; )*
    ) => {
        #[doc = concat!("`(method, path)` of every route [`", stringify!($configure), "`] registers.")]
        pub const $table: &[(&str, &str)] = &[ $( $( (route_table!(@method $method), $path), )+ )* ];

        $(#[$meta])*
        pub fn $configure(cfg: &mut ::actix_web::web::ServiceConfig) {
            $(
                cfg.service(
                    ::actix_web::web::resource($path)
                        .name(&format!("{}{}", $mount, $path))
                        $( .route(::actix_web::web::$method().to($handler)) )+
                );
            )*
        }
    };
}

pub mod admin;
pub mod admin_users;
pub mod api_keys;
pub mod apis;
pub mod auth;
pub mod billing;
pub mod caps;
pub mod credits;
pub mod extract;
pub mod finance;
pub mod gateway;
pub mod health;
pub mod invoices;
pub mod json;
pub mod me;
pub mod openapi;
pub mod tools;
pub mod usage;
pub mod webhook_endpoints;
pub mod webhooks;

use crate::error::ApiError;

/// A database connection from the pool, or 503.
pub(crate) async fn conn(pool: &crate::db::DbPool) -> Result<crate::db::DbConn, ApiError> {
    Ok(pool.get().await?)
}

/// Where each table is mounted: `ROOT_ROUTES` at the root, `API_ROUTES`
/// under this prefix, and `tools::TOOL_ROUTES` under [`TOOLS_PREFIX`].
pub const API_PREFIX: &str = "/api/v1";
/// The metered tools' scope inside [`API_PREFIX`].
pub const TOOLS_SCOPE: &str = "/tools";
pub const TOOLS_PREFIX: &str = "/api/v1/tools";

route_table! {
    /// Probes at the root, outside `/api/v1` (startup mounts these two).
    fn configure_root, ROOT_ROUTES, mounted at "";
    "/healthz" => get: health::healthz;
    "/readyz" => get: health::readyz;
}

route_table! {
    /// Routes under `/api/v1` that are not metered.
    fn configure_api, API_ROUTES, mounted at API_PREFIX;
    "/auth/register" => post: auth::register;
    "/auth/login" => post: auth::login;
    "/auth/refresh" => post: auth::refresh;
    "/auth/logout" => post: auth::logout;
    "/api-keys" => get: api_keys::list_api_keys, post: api_keys::create_api_key;
    "/api-keys/{id}" => delete: api_keys::revoke_api_key;
    "/me" => get: me::get_me, patch: me::update_me;
    "/apis" => get: apis::list_apis;
    "/usage" => get: usage::get_usage;
    "/usage/daily" => get: usage::get_daily_usage;
    // Consumers: their own cost and invoices.
    "/billing/current" => get: billing::current_cost;
    "/billing/periods/{period}" => get: billing::period_cost;
    "/billing/cap" => get: caps::my_cap, put: caps::set_my_cap;
    "/billing/alerts" => get: webhook_endpoints::my_alerts, put: webhook_endpoints::set_my_alerts;
    "/credits" => get: credits::my_credits;
    "/invoices" => get: invoices::list_invoices;
    "/invoices/{id}" => get: invoices::get_invoice;
    // Finance (finance or admin role).
    "/finance/periods/{period}/close" => post: finance::close_period;
    "/finance/periods/{period}/reconciliation" => get: finance::reconciliation;
    "/finance/invoices" => get: finance::list_invoices;
    // Registered before `/finance/invoices/{id}` so "export" is not taken for an id.
    "/finance/invoices/export" => get: finance::export_invoices;
    "/finance/invoices/{id}" => get: finance::get_invoice;
    "/finance/invoices/{id}/payments" => post: finance::record_payment;
    "/finance/invoices/{id}/void" => post: finance::void_invoice;
    "/finance/users/{id}/credits" => get: credits::user_credits, post: credits::top_up;
    "/finance/users/{id}/cap" => get: caps::user_cap, put: caps::set_user_cap;
    // Admin: the catalog and prices.
    "/admin/apis" => get: admin::list_apis, post: admin::create_api;
    "/admin/apis/{id}" => patch: admin::update_api;
    "/admin/apis/{id}/prices" => get: admin::list_prices, post: admin::create_price;
    "/admin/apis/{id}/prices/{price_id}" => delete: admin::cancel_price;
    "/admin/apis/{id}/signing-secret" => post: admin::rotate_signing_secret;
    // Admin: users' roles and statuses.
    "/admin/users" => get: admin_users::list_users;
    "/admin/users/{id}" => patch: admin_users::update_user;
    // Payment provider callbacks (signed, no user).
    "/webhooks/payments" => post: webhooks::payment_webhook;
    // Outbound webhooks: a consumer's endpoints (after `/webhooks/payments`,
    // so "payments" is not taken for an id), and the admins'.
    "/webhooks" => get: webhook_endpoints::list_my_webhooks, post: webhook_endpoints::create_my_webhook;
    "/webhooks/{id}" => get: webhook_endpoints::get_my_webhook, patch: webhook_endpoints::update_my_webhook;
    "/webhooks/{id}/rotate" => post: webhook_endpoints::rotate_my_webhook;
    "/webhooks/{id}/deliveries" => get: webhook_endpoints::my_webhook_deliveries;
    "/webhooks/{id}/deliveries/{delivery_id}/redeliver" => post: webhook_endpoints::redeliver_mine;
    "/admin/webhooks" => get: webhook_endpoints::list_admin_webhooks, post: webhook_endpoints::create_admin_webhook;
    "/admin/webhooks/{id}" => get: webhook_endpoints::get_admin_webhook, patch: webhook_endpoints::update_admin_webhook;
    "/admin/webhooks/{id}/rotate" => post: webhook_endpoints::rotate_admin_webhook;
    "/admin/webhooks/{id}/deliveries" => get: webhook_endpoints::admin_webhook_deliveries;
    "/admin/webhooks/{id}/deliveries/{delivery_id}/redeliver" => post: webhook_endpoints::redeliver_admin;
    // This API's own description (public, not metered).
    "/openapi.json" => get: openapi::openapi_spec;
}

/// The gateway's catch-all resource, registered after everything payg
/// serves itself (so it can never shadow a payg route), inside the
/// metering middleware. Every method reaches it.
pub fn configure_gateway(cfg: &mut actix_web::web::ServiceConfig) {
    cfg.service(
        actix_web::web::resource("/{gateway_path:.*}")
            .name(crate::metering::GATEWAY_RESOURCE)
            .wrap(actix_web::middleware::from_fn(crate::metering::metered_call))
            .default_service(actix_web::web::to(gateway::forward)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_path_payg_serves_can_be_taken_by_a_gateway_api() {
        use crate::domain::text::GatewayPrefix;
        let served = ROOT_ROUTES
            .iter()
            .map(|(_, p)| (*p).to_owned())
            .chain(API_ROUTES.iter().map(|(_, p)| format!("{API_PREFIX}{p}")))
            .chain(tools::TOOL_ROUTES.iter().map(|(_, p)| format!("{TOOLS_PREFIX}{p}")))
            .chain(["/metrics".to_owned(), API_PREFIX.to_owned()]);
        for path in served {
            // Every prefix of the served path, segment by segment.
            let segments: Vec<&str> = path[1..].split('/').collect();
            for n in 1..=segments.len() {
                let prefix = format!("/{}", segments[..n].join("/"));
                assert!(
                    prefix.parse::<GatewayPrefix>().is_err(),
                    "{prefix} (of {path}) was accepted"
                );
            }
        }
    }

    #[test]
    fn the_tools_prefix_is_the_api_prefix_and_the_tools_scope() {
        // Resources are named (and calls metered) by these prefixes: a
        // mismatch would leave the tools unmetered.
        assert_eq!(TOOLS_PREFIX, format!("{API_PREFIX}{TOOLS_SCOPE}"));
    }
}
