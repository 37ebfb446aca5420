//! Admin routes (role admin): the API catalog and its prices.

use actix_web::{HttpResponse, web};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::app::AppState;
use crate::auth::AdminUser;
use crate::billing::pricing::{PriceVersion, Tier, validate_tiers};
use crate::billing::{Currency, Period};
use crate::error::{ApiError, ApiResult};
use crate::models::Api;
use crate::models::price::{PriceBook, PriceRow};
use crate::routes::conn;
use crate::routes::finance::parse_currency;
use crate::routes::json::Json;
use crate::routes::openapi::ErrorBody;
use crate::schema::{apis, usage_records};

/// A price as shown to clients.
#[derive(Serialize, ToSchema)]
pub struct PriceView {
    /// The period from which this price applies (`YYYY-MM`).
    #[schema(value_type = Period)]
    pub effective_from: String,
    pub currency: Currency,
    /// Per call, before any tiers.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(example = "0.001")]
    pub unit_price: Decimal,
    /// Calls free each period.
    pub free_calls: i64,
    /// Graduated tiers; empty for the flat `unit_price`.
    pub tiers: Vec<Tier>,
}

impl PriceView {
    pub fn new(from: Period, v: &PriceVersion) -> Self {
        Self {
            effective_from: from.to_string(),
            currency: v.currency,
            unit_price: v.unit_price,
            free_calls: v.free_calls,
            tiers: v.tiers.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct AdminApiView {
    #[serde(flatten)]
    api: Api,
    current_price: Option<PriceView>,
}

#[derive(ToSchema)]
pub struct AdminApiList {
    pub apis: Vec<AdminApiView>,
}

/// Every catalog entry, active or not, with its current price.
#[utoipa::path(
    get,
    path = "/api/v1/admin/apis",
    tag = "admin",
    operation_id = "admin_list_apis",
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "The catalog, by id", body = AdminApiList),
        (status = 403, description = "`forbidden`: the caller does not have the admin role", body = ErrorBody),
    )
)]
pub async fn list_apis(state: web::Data<AppState>, _admin: AdminUser) -> ApiResult<HttpResponse> {
    let mut conn = conn(&state.db).await?;
    let all = Api::all(&mut conn).await?;
    let book = PriceBook::load(&mut conn, None).await?;
    let period = state.current_period();
    let apis: Vec<AdminApiView> = all
        .into_iter()
        .map(|api| AdminApiView {
            current_price: book.for_period(api.id, period).map(|v| PriceView::new(period, v)),
            api,
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "apis": apis })))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiRequest {
    /// 1–64 of `a-z`, `0-9` and `-`, starting with a letter or digit.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,63}$", example = "tools-uuid")]
    slug: String,
    /// GET, POST, PUT, PATCH or DELETE (any case).
    #[schema(
        example = "GET",
        pattern = r"^([Gg][Ee][Tt]|[Pp][Oo][Ss][Tt]|[Pp][Uu][Tt]|[Pp][Aa][Tt][Cc][Hh]|[Dd][Ee][Ll][Ee][Tt][Ee])$"
    )]
    method: String,
    /// The actix route pattern, e.g. `/api/v1/tools/random/{max}`: starts
    /// with `/`, at most 200 bytes, no spaces or control characters.
    #[schema(
        example = "/api/v1/tools/uuid",
        max_length = 200,
        pattern = r"^/[^\s\u0000-\u001F\u007F-\u009F]*$"
    )]
    route: String,
    /// 1–200 characters; not blank, no control characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    name: String,
    /// At most 2000 characters, no control characters.
    #[serde(default)]
    #[schema(max_length = 2000, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    description: String,
}

fn validate_slug(slug: &str) -> Result<(), ApiError> {
    let ok = !slug.is_empty()
        && slug.len() <= 64
        && slug.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && slug
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::validation("slug must be 1–64 of a-z, 0-9 and '-'"))
    }
}

fn validate_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(ApiError::validation(format!(
            "{field} must be at most {max} characters without control characters"
        )));
    }
    Ok(())
}

/// Adds a catalog entry. It is metered once a route with that method and
/// pattern is served; it starts at the default price (0.001 per call).
#[utoipa::path(
    post,
    path = "/api/v1/admin/apis",
    tag = "admin",
    security(("bearerAuth" = [])),
    responses(
        (status = 201, description = "The new catalog entry", body = Api),
        (status = 400, description = "`validation_failed`: a bad slug, method, route, name or description",
            body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller does not have the admin role", body = ErrorBody),
        (status = 409, description = "`api_exists`: the slug, or the method and route, is taken", body = ErrorBody),
    )
)]
pub async fn create_api(
    state: web::Data<AppState>,
    _admin: AdminUser,
    body: Json<NewApiRequest>,
) -> ApiResult<HttpResponse> {
    let b = body.into_inner();
    validate_slug(&b.slug)?;
    let method = b.method.to_ascii_uppercase();
    if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
        return Err(ApiError::validation(
            "method must be one of GET, POST, PUT, PATCH, DELETE",
        ));
    }
    if !b.route.starts_with('/') || b.route.len() > 200 || b.route.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ApiError::validation(
            "route must be an actix route pattern starting with '/'",
        ));
    }
    if b.name.trim().is_empty() {
        return Err(ApiError::validation("name is required"));
    }
    validate_text("name", &b.name, 200)?;
    validate_text("description", &b.description, 2000)?;
    let currency = state.config.billing.currency;
    let mut conn = conn(&state.db).await?;
    let created = conn
        .transaction::<_, diesel::result::Error, _>(async |conn| {
            let api: Api = diesel::insert_into(apis::table)
                .values((
                    apis::slug.eq(&b.slug),
                    apis::method.eq(&method),
                    apis::route.eq(&b.route),
                    apis::name.eq(b.name.trim()),
                    apis::description.eq(&b.description),
                ))
                .returning(Api::as_returning())
                .get_result(conn)
                .await?;
            let default = PriceVersion {
                currency,
                unit_price: Decimal::new(1, 3),
                free_calls: 0,
                tiers: vec![],
            };
            // No call can predate the API, so its first price covers all time.
            let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)
                .and_then(Period::from_first_day)
                .unwrap_or_else(|| state.current_period());
            PriceRow::upsert(conn, api.id, epoch, &default).await?;
            Ok(api)
        })
        .await;
    match created {
        Ok(api) => {
            state.reload_catalog().await?;
            Ok(HttpResponse::Created().json(api))
        }
        Err(diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)) => {
            Err(ApiError::conflict(
                "api_exists",
                "an API with this slug, or this method and route, already exists",
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// A partial update: absent fields are left alone.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateApiRequest {
    /// 1–200 characters; not blank, no control characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    name: Option<String>,
    /// At most 2000 characters, no control characters.
    #[schema(max_length = 2000, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    description: Option<String>,
    active: Option<bool>,
}

#[derive(AsChangeset)]
#[diesel(table_name = apis)]
struct ApiChanges {
    name: Option<String>,
    description: Option<String>,
    active: Option<bool>,
}

/// Renames, re-describes, or (de)activates a catalog entry.
#[utoipa::path(
    patch,
    path = "/api/v1/admin/apis/{id}",
    tag = "admin",
    params(("id" = i32, Path, description = "The catalog entry's id")),
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "The updated entry", body = Api),
        (status = 400, description = "`validation_failed`: an empty or too long name, or a too long description",
            body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller does not have the admin role", body = ErrorBody),
        (status = 404, description = "`not_found`: no such API, or `id` is not an integer", body = ErrorBody),
    )
)]
pub async fn update_api(
    state: web::Data<AppState>,
    _admin: AdminUser,
    id: web::Path<i32>,
    body: Json<UpdateApiRequest>,
) -> ApiResult<HttpResponse> {
    let b = body.into_inner();
    if let Some(name) = &b.name {
        if name.trim().is_empty() {
            return Err(ApiError::validation("name must not be empty"));
        }
        validate_text("name", name, 200)?;
    }
    if let Some(d) = &b.description {
        validate_text("description", d, 2000)?;
    }
    let mut conn = conn(&state.db).await?;
    let api: Api = if b.name.is_none() && b.description.is_none() && b.active.is_none() {
        apis::table.find(*id).select(Api::as_select()).first(&mut conn).await?
    } else {
        diesel::update(apis::table.find(*id))
            .set(ApiChanges {
                name: b.name.map(|n| n.trim().to_owned()),
                description: b.description,
                active: b.active,
            })
            .returning(Api::as_returning())
            .get_result(&mut conn)
            .await?
    };
    drop(conn);
    state.reload_catalog().await?;
    Ok(HttpResponse::Ok().json(api))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPriceRequest {
    /// Per call, not negative, as a decimal string.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(example = "0.002", pattern = r"^[0-9]{1,15}(\.[0-9]{1,10})?$")]
    unit_price: Decimal,
    /// Must be the billing currency when given.
    #[schema(value_type = Option<Currency>)]
    currency: Option<String>,
    /// Calls free each period (default 0).
    #[serde(default)]
    #[schema(minimum = 0)]
    free_calls: i64,
    /// Graduated tiers (default none: flat `unit_price`).
    #[serde(default)]
    tiers: Vec<Tier>,
    /// `YYYY-MM`; default: the current period.
    #[schema(value_type = Option<Period>)]
    effective_from: Option<String>,
}

#[derive(ToSchema)]
pub struct CreatedPrice {
    pub api_id: i32,
    pub price: PriceView,
    /// True when calls were already recorded in the requested period, so
    /// the price takes effect from the next one.
    pub deferred: bool,
}

/// Sets a new price. It takes effect from the requested period's start (the
/// current period by default) only if no call to this API has been recorded
/// in that period yet; otherwise from the next period — a price change never
/// re-prices calls already made.
#[utoipa::path(
    post,
    path = "/api/v1/admin/apis/{id}/prices",
    tag = "admin",
    params(("id" = i32, Path, description = "The catalog entry's id")),
    security(("bearerAuth" = [])),
    responses(
        (status = 201, description = "The new price version", body = CreatedPrice),
        (status = 400, description = "`validation_failed`: a negative price or allowance, bad tiers, \
            or a bad or past `effective_from`", body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller does not have the admin role", body = ErrorBody),
        (status = 404, description = "`not_found`: no such API, or `id` is not an integer", body = ErrorBody),
        (status = 422, description = "`currency_mismatch`: not the billing currency", body = ErrorBody),
    )
)]
pub async fn create_price(
    state: web::Data<AppState>,
    _admin: AdminUser,
    id: web::Path<i32>,
    body: Json<NewPriceRequest>,
) -> ApiResult<HttpResponse> {
    let b = body.into_inner();
    let billing_currency = state.config.billing.currency;
    let currency = parse_currency(b.currency.as_deref())?.unwrap_or(billing_currency);
    if currency != billing_currency {
        return Err(ApiError::new(
            actix_web::http::StatusCode::UNPROCESSABLE_ENTITY,
            "currency_mismatch",
            format!("prices must be in the billing currency {billing_currency}"),
        ));
    }
    if b.unit_price.is_sign_negative() || b.free_calls < 0 {
        return Err(ApiError::validation("unit_price and free_calls must not be negative"));
    }
    validate_tiers(&b.tiers).map_err(ApiError::validation)?;
    let current = state.current_period();
    let requested = match b.effective_from.as_deref() {
        None => current,
        Some(p) => p
            .parse()
            .map_err(|e: crate::billing::period::BadPeriod| ApiError::validation(e.to_string()))?,
    };
    if requested < current {
        return Err(ApiError::validation("a price cannot take effect in a past period"));
    }
    let version = PriceVersion {
        currency,
        unit_price: b.unit_price,
        free_calls: b.free_calls,
        tiers: b.tiers,
    };
    let api_id = *id;
    let mut conn = conn(&state.db).await?;
    let (row, effective) = conn
        .transaction::<_, ApiError, _>(async |conn| {
            apis::table.find(api_id).select(apis::id).first::<i32>(conn).await?;
            // Waits for in-flight meter flushes and holds new ones back until
            // commit, so "no calls recorded in this period" stays true while
            // the new version is written.
            conn.batch_execute("LOCK TABLE usage_records IN SHARE ROW EXCLUSIVE MODE")
                .await?;
            let used: bool = diesel::select(diesel::dsl::exists(
                usage_records::table
                    .filter(usage_records::api_id.eq(api_id))
                    .filter(usage_records::period.eq(requested.first_day()))
                    .filter(usage_records::calls.gt(0)),
            ))
            .get_result(conn)
            .await?;
            let effective = if used { requested.next() } else { requested };
            let row = PriceRow::upsert(conn, api_id, effective, &version).await?;
            Ok((row, effective))
        })
        .await?;
    Ok(HttpResponse::Created().json(json!({
        "api_id": row.api_id,
        "price": PriceView::new(effective, &version),
        "deferred": effective != requested,
    })))
}
