//! The OpenAPI 3.1 description of the HTTP API, generated from the code and
//! served at `GET /api/v1/openapi.json`.
//!
//! Each handler's `#[utoipa::path]` names its method, path, parameters, body,
//! success responses and the failures only it produces (404, 409, 422, …).
//! The failures every route of a kind can meet are added once, here, by
//! `CommonResponses`, from the same facts that produce them: extractor
//! errors (`error.rs`), authentication (`auth`), the metering middleware and
//! the pool. `tests/api/openapi.rs` fails when a route in one of the route
//! tables (`ROOT_ROUTES`, `API_ROUTES`, `tools::TOOL_ROUTES`) is missing
//! from the spec, or the spec has one the server does not.

use std::sync::LazyLock;

use actix_web::HttpResponse;
use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::SchemaType;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, ObjectBuilder, Ref, RefOr, Required, Schema, Type};
use utoipa::{Modify, OpenApi};

use crate::billing::export::ExportFormat;
use crate::domain::currency::DecimalString;
use crate::domain::text::{
    BillingText, CountryCode, Description, Email, EmailPart, EventId, GatewayPrefix, HttpMethod, KeyName, Name,
    Password, PaymentMethod, ProviderText, Reference, RoutePattern, Slug, UpstreamUrl, UserRef,
};
use crate::domain::{Currency, Day, Period};
use crate::error::{ErrorBody, ErrorDetail};
use crate::routes::{
    admin, admin_users, api_keys, apis, auth, billing, caps, credits, finance, health, invoices, me, tools, usage,
    webhook_endpoints, webhooks,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "payg",
        description = "Usage-metered, pay-as-you-go APIs: accounts, keys, metered tools, usage, cost, \
                       invoices, finance and admin. Every failure is `{\"error\": {\"code\", \"message\"}}`."
    ),
    paths(
        health::healthz,
        health::readyz,
        openapi_spec,
        auth::register,
        auth::login,
        auth::refresh,
        auth::logout,
        api_keys::list_api_keys,
        api_keys::create_api_key,
        api_keys::revoke_api_key,
        me::get_me,
        me::update_me,
        apis::list_apis,
        usage::get_usage,
        usage::get_daily_usage,
        billing::current_cost,
        billing::period_cost,
        credits::my_credits,
        caps::my_cap,
        caps::set_my_cap,
        invoices::list_invoices,
        invoices::get_invoice,
        finance::close_period,
        finance::reconciliation,
        finance::list_invoices,
        finance::export_invoices,
        finance::get_invoice,
        finance::record_payment,
        finance::void_invoice,
        credits::user_credits,
        credits::top_up,
        caps::user_cap,
        caps::set_user_cap,
        admin::list_apis,
        admin::create_api,
        admin::update_api,
        admin::list_prices,
        admin::create_price,
        admin::cancel_price,
        admin::rotate_signing_secret,
        admin_users::list_users,
        admin_users::update_user,
        webhooks::payment_webhook,
        webhook_endpoints::my_alerts,
        webhook_endpoints::set_my_alerts,
        webhook_endpoints::list_my_webhooks,
        webhook_endpoints::create_my_webhook,
        webhook_endpoints::get_my_webhook,
        webhook_endpoints::update_my_webhook,
        webhook_endpoints::rotate_my_webhook,
        webhook_endpoints::my_webhook_deliveries,
        webhook_endpoints::redeliver_mine,
        webhook_endpoints::list_admin_webhooks,
        webhook_endpoints::create_admin_webhook,
        webhook_endpoints::get_admin_webhook,
        webhook_endpoints::update_admin_webhook,
        webhook_endpoints::rotate_admin_webhook,
        webhook_endpoints::admin_webhook_deliveries,
        webhook_endpoints::redeliver_admin,
        tools::uuid,
        tools::random,
        tools::random_up_to,
        tools::hash,
        tools::time,
        tools::echo,
    ),
    components(schemas(
        ErrorBody, ErrorDetail, Period, Day, Currency, DecimalString, tools::TimeZoneName, ExportFormat,
        Name, KeyName, Reference, PaymentMethod, Description, BillingText, EventId, ProviderText,
        Email, EmailPart, Password, Slug, HttpMethod, RoutePattern, GatewayPrefix, UpstreamUrl, CountryCode, UserRef,
    )),
    modifiers(&SecuritySchemes, &CommonResponses),
    tags(
        (name = "health", description = "Liveness and readiness probes"),
        (name = "meta", description = "This description"),
        (name = "auth", description = "Accounts and sessions"),
        (name = "keys", description = "API keys"),
        (name = "profile", description = "The caller's own account and billing details"),
        (name = "catalog", description = "The metered APIs and their prices"),
        (name = "usage", description = "The caller's own call counts"),
        (name = "billing", description = "The caller's own cost and invoices"),
        (name = "finance", description = "Closing periods, invoices, exports and payments (finance or admin role)"),
        (name = "admin", description = "The API catalog, prices and users' roles and statuses (admin role)"),
        (name = "webhooks", description = "Signed payment-provider callbacks in; usage alerts and signed \
                                           outbound webhooks (Standard Webhooks) out"),
        (name = "tools", description = "The metered demo APIs: every authenticated call is counted and priced"),
    )
)]
pub struct ApiDoc;

static SPEC: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(ApiDoc::openapi);

/// The generated document (built once).
pub fn spec() -> &'static utoipa::openapi::OpenApi {
    &SPEC
}

/// This API's OpenAPI 3.1 description.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI document", body = Object))
)]
pub async fn openapi_spec() -> HttpResponse {
    HttpResponse::Ok().json(spec())
}

/// `bearerAuth` (a JWT access token, or an API key, after `Bearer`) and
/// `apiKey` (an API key in `X-API-Key`): see `crate::auth::presented`.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearerAuth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "`Authorization: Bearer <access token>` from /auth/login or /auth/refresh. \
                         An API key (`payg_…`) is accepted after `Bearer` too.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "An API key (`payg_…`) from POST /api/v1/api-keys.",
            ))),
        );
    }
}

/// Adds the failure responses a route gets from its kind rather than from
/// its handler. A status the handler already documents keeps its own
/// description, with the common causes appended.
struct CommonResponses;

/// Routes whose answers are not the error envelope's business.
const PROBES: &[&str] = &["/healthz", "/readyz", "/api/v1/openapi.json"];

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            if PROBES.contains(&path.as_str()) {
                continue;
            }
            let metered = path.starts_with(&format!("{}/", super::TOOLS_PREFIX));
            for op in operations_mut(item) {
                query_parameters_are_never_null(op);
                add_common_responses(op, metered);
                let signed_in = op.security.as_ref().is_some_and(|s| !s.is_empty());
                // Logout accepts a token Redis cannot check (it only ends things).
                let ends_session = path.as_str() == format!("{}/auth/logout", super::API_PREFIX);
                if signed_in && !metered && !ends_session {
                    add(
                        op,
                        503,
                        "`auth_unavailable`: Redis is unreachable, so a logged-out session cannot be told \
                         apart; routes other than metered calls refuse access tokens until it returns \
                         (API keys are unaffected).",
                        &[("Retry-After", Type::Integer, "Seconds to wait")],
                    );
                }
            }
        }
    }
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// An optional query parameter is absent, never `null`: a query string
/// cannot say null, so `Option<T>`'s `T | null` becomes `T`.
fn query_parameters_are_never_null(op: &mut Operation) {
    for param in op.parameters.iter_mut().flatten() {
        let RefOr::T(param) = param else { continue };
        if param.parameter_in != ParameterIn::Query {
            continue;
        }
        match param.schema.as_mut() {
            Some(RefOr::T(Schema::Object(object))) => {
                if let SchemaType::Array(types) = &object.schema_type {
                    let types: Vec<Type> = types.iter().filter(|t| **t != Type::Null).cloned().collect();
                    if let [only] = types.as_slice() {
                        object.schema_type = SchemaType::Type(only.clone());
                    }
                }
            }
            Some(RefOr::T(Schema::OneOf(one_of))) => {
                let items: Vec<RefOr<Schema>> = one_of.items.iter().filter(|s| !is_null(s)).cloned().collect();
                if let [only] = items.as_slice() {
                    param.schema = Some(only.clone());
                }
            }
            _ => {}
        }
    }
}

fn is_null(schema: &RefOr<Schema>) -> bool {
    matches!(schema, RefOr::T(Schema::Object(o)) if o.schema_type == SchemaType::Type(Type::Null))
}

fn add_common_responses(op: &mut Operation, metered: bool) {
    let authenticated = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let has_query = op
        .parameters
        .iter()
        .flatten()
        .any(|p| matches!(p, RefOr::T(p) if p.parameter_in == ParameterIn::Query));
    // An optional body (`Option<Json<_>>`) that fails to parse is treated as
    // absent, so only required bodies meet the JSON extractor's errors.
    let body_required = matches!(op.request_body.as_ref(), Some(RefOr::T(b)) if b.required == Some(Required::True));
    if body_required {
        add(
            op,
            400,
            "`invalid_json`: the body is not JSON; `invalid_content_type`: not `application/json`; \
             `validation_failed`: a field is missing, unknown or of the wrong type.",
            &[],
        );
        add(op, 413, "`payload_too_large`: the body exceeds 64 KiB.", &[]);
    }
    if has_query {
        add(op, 400, "`validation_failed`: the query string does not parse.", &[]);
    }
    if authenticated {
        add(
            op,
            401,
            "`unauthorized`: no credentials, or an invalid, expired, revoked or logged-out token or key; \
             `ambiguous_credentials`: both `Authorization` and `X-API-Key` were sent; \
             `access_token_required`: an API key on a finance or admin route, which take access tokens only.",
            &[(
                "WWW-Authenticate",
                Type::String,
                "`Bearer realm=\"payg\"`, with `error=\"invalid_token\"` for a bad one",
            )],
        );
        add(op, 403, "`account_suspended`: the account is suspended.", &[]);
        add(
            op,
            429,
            "`too_many_requests`: an API key payg does not know, from an address that has sent too many \
             of them (`PAYG_CLIENT_AUTH_PER_MINUTE`).",
            &[("Retry-After", Type::Integer, "Seconds to wait")],
        );
    }
    if metered {
        add(
            op,
            402,
            "`payment_required`: an invoice is overdue; metered APIs are blocked until it is paid. \
             `spending_cap_reached`: the call could take this period's charge past the caller's spending \
             cap; `credits_exhausted`: the caller is prepaid-only and their credit does not cover it. \
             Refused before it is served; never counted or billed.",
            &[],
        );
        add(op, 404, "`not_found`: an admin has switched this API off.", &[]);
        add(
            op,
            429,
            "`rate_limited`: the per-user rate limit is exhausted; the refused call is counted as failed.",
            &[
                ("Retry-After", Type::Integer, "Seconds until a call is allowed again"),
                ("RateLimit-Limit", Type::Integer, "Calls allowed per minute"),
                ("RateLimit-Remaining", Type::Integer, "Calls left in the window"),
                (
                    "RateLimit-Reset",
                    Type::Integer,
                    "Seconds until the window is full again",
                ),
            ],
        );
        add(
            op,
            503,
            "`metering_unavailable`: in durable metering mode the call's count could not be committed, or \
             the caller's spending cap could not be checked (the database is unavailable), so it was not \
             served (and is never billed).",
            &[],
        );
    }
    add(
        op,
        500,
        "`internal_error`: an unexpected failure; its cause is logged, never sent.",
        &[],
    );
    add(
        op,
        503,
        "`database_unavailable`: PostgreSQL cannot be reached; retry shortly.",
        &[],
    );
}

/// Adds (or extends) one error response whose body is [`ErrorBody`].
fn add(op: &mut Operation, status: u16, description: &str, headers: &[(&str, Type, &str)]) {
    let responses = &mut op.responses.responses;
    match responses.get_mut(&status.to_string()) {
        Some(RefOr::T(existing)) => {
            if !existing.description.contains(description) {
                existing.description = format!("{}\n\n{description}", existing.description);
            }
            for (name, ty, text) in headers {
                existing
                    .headers
                    .entry((*name).to_owned())
                    .or_insert_with(|| RefOr::T(header(ty.clone(), text)));
            }
        }
        Some(RefOr::Ref(_)) => {}
        None => {
            let mut response = ResponseBuilder::new().description(description).content(
                "application/json",
                Content::new(Some(Ref::from_schema_name("ErrorBody"))),
            );
            for (name, ty, text) in headers {
                response = response.header(*name, header(ty.clone(), text));
            }
            responses.insert(status.to_string(), RefOr::T(response.build()));
        }
    }
}

fn header(ty: Type, description: &str) -> Header {
    HeaderBuilder::new()
        .schema(Some(ObjectBuilder::new().schema_type(ty).build()))
        .description(Some(description))
        .build()
}
