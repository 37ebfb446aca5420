//! The demo metered APIs. Each is its own catalog entry; the metering
//! middleware around their scope counts every authenticated call.

use actix_web::{HttpResponse, web};
use chrono::SecondsFormat;
use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256, Sha512};
use utoipa::{IntoParams, ToSchema};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::routes::extract::AuthUser;
use crate::routes::json::Json;

/// An IANA time zone name, from the time zone database the server was
/// built with (so the list is exactly what `GET /tools/time` accepts).
pub struct TimeZoneName;

impl utoipa::PartialSchema for TimeZoneName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .description(Some("An IANA time zone name."))
            .enum_values(Some(chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name())))
            .examples([json!("Asia/Kolkata")])
            .into()
    }
}

impl ToSchema for TimeZoneName {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("TimeZoneName")
    }
}

route_table! {
    /// The metered tools, mounted under `/api/v1/tools` inside the metering
    /// middleware.
    fn configure, TOOL_ROUTES, mounted at super::TOOLS_PREFIX;
    "/uuid" => get: uuid;
    "/random" => get: random;
    "/random/{max}" => get: random_up_to;
    "/hash" => post: hash;
    "/time" => get: time;
    "/echo" => post: echo;
}

// Every handler takes `AuthUser` so it cannot be reached unauthenticated
// even if it were mounted outside the metered scope by mistake; inside it,
// the middleware has already authenticated and this is free.

#[derive(ToSchema)]
pub struct UuidResponse {
    pub uuid: uuid::Uuid,
}

#[derive(ToSchema)]
pub struct RandomValue {
    pub value: i64,
}

/// A random version 4 UUID.
#[utoipa::path(
    get,
    path = "/api/v1/tools/uuid",
    tag = "tools",
    security(("bearerAuth" = []), ("apiKey" = [])),
    responses((status = 200, description = "A fresh UUID", body = UuidResponse))
)]
pub async fn uuid(_caller: AuthUser) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "uuid": uuid::Uuid::new_v4() }))
}

#[derive(Deserialize, IntoParams)]
pub struct RandomQuery {
    /// Lower bound, inclusive (default 0).
    min: Option<i64>,
    /// Upper bound, inclusive (default 100).
    max: Option<i64>,
}

/// A uniformly random integer between `min` and `max` (inclusive).
#[utoipa::path(
    get,
    path = "/api/v1/tools/random",
    tag = "tools",
    params(RandomQuery),
    security(("bearerAuth" = []), ("apiKey" = [])),
    responses(
        (status = 200, description = "The random value", body = RandomValue),
        (status = 400, description = "`validation_failed`: `min` is greater than `max`, or a bound is not an integer",
            body = ErrorBody),
    )
)]
pub async fn random(_caller: AuthUser, query: web::Query<RandomQuery>) -> ApiResult<HttpResponse> {
    let min = query.min.unwrap_or(0);
    let max = query.max.unwrap_or(100);
    if min > max {
        return Err(ApiError::validation(format!(
            "min ({min}) must not be greater than max ({max})"
        )));
    }
    Ok(HttpResponse::Ok().json(json!({ "value": rand::random_range(min..=max) })))
}

/// A uniformly random integer between 0 and `max` (inclusive).
#[utoipa::path(
    get,
    path = "/api/v1/tools/random/{max}",
    tag = "tools",
    params(("max" = i64, Path, minimum = 0, maximum = 4_294_967_295_f64, description = "Upper bound, inclusive (0 to 4294967295)")),
    security(("bearerAuth" = []), ("apiKey" = [])),
    responses(
        (status = 200, description = "The random value", body = RandomValue),
        (status = 404, description = "`not_found`: `max` is not an integer from 0 to 4294967295", body = ErrorBody),
    )
)]
pub async fn random_up_to(_caller: AuthUser, max: web::Path<u32>) -> HttpResponse {
    let max = max.into_inner();
    HttpResponse::Ok().json(json!({ "value": rand::random_range(0..=max) }))
}

#[derive(Deserialize, Clone, Copy, Default, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgorithm {
    #[default]
    Sha256,
    Sha512,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HashRequest {
    /// Hashed as its UTF-8 bytes.
    data: String,
    #[serde(default)]
    algorithm: HashAlgorithm,
}

#[derive(ToSchema)]
pub struct HashResponse {
    pub algorithm: HashAlgorithm,
    /// Lower-case hex.
    pub digest: String,
}

/// SHA-256 or SHA-512 digest of a string, hex encoded.
#[utoipa::path(
    post,
    path = "/api/v1/tools/hash",
    tag = "tools",
    security(("bearerAuth" = []), ("apiKey" = [])),
    responses(
        (status = 200, description = "The digest", body = HashResponse),
        (status = 400, description = "`validation_failed`: a missing or unknown field, or an unknown algorithm",
            body = ErrorBody),
    )
)]
pub async fn hash(_caller: AuthUser, body: Json<HashRequest>) -> HttpResponse {
    let data = body.data.as_bytes();
    let (name, digest) = match body.algorithm {
        HashAlgorithm::Sha256 => ("sha256", hex::encode(Sha256::digest(data))),
        HashAlgorithm::Sha512 => ("sha512", hex::encode(Sha512::digest(data))),
    };
    HttpResponse::Ok().json(json!({ "algorithm": name, "digest": digest }))
}

#[derive(Deserialize, IntoParams)]
pub struct TimeQuery {
    /// An IANA time zone name such as `Asia/Kolkata` (default `UTC`).
    #[param(value_type = Option<TimeZoneName>)]
    tz: Option<String>,
}

#[derive(ToSchema)]
pub struct TimeResponse {
    /// The IANA name of the zone.
    pub timezone: String,
    /// RFC 3339 with milliseconds, in that zone.
    #[schema(format = DateTime)]
    pub datetime: String,
    /// e.g. `+05:30`.
    pub utc_offset: String,
    /// Seconds since the Unix epoch.
    pub unix: i64,
}

/// The current time in an IANA time zone.
#[utoipa::path(
    get,
    path = "/api/v1/tools/time",
    tag = "tools",
    params(TimeQuery),
    security(("bearerAuth" = []), ("apiKey" = [])),
    responses(
        (status = 200, description = "The time", body = TimeResponse),
        (status = 400, description = "`validation_failed`: `tz` is not an IANA time zone name", body = ErrorBody),
    )
)]
pub async fn time(
    state: web::Data<AppState>,
    _caller: AuthUser,
    query: web::Query<TimeQuery>,
) -> ApiResult<HttpResponse> {
    let name = query.tz.as_deref().unwrap_or("UTC");
    let tz: Tz = name
        .parse()
        .map_err(|_| ApiError::validation(format!("{name:?} is not an IANA time zone name (e.g. Asia/Kolkata)")))?;
    let now = state.now().with_timezone(&tz);
    Ok(HttpResponse::Ok().json(json!({
        "timezone": tz.name(),
        "datetime": now.to_rfc3339_opts(SecondsFormat::Millis, false),
        "utc_offset": now.format("%:z").to_string(),
        "unix": now.timestamp(),
    })))
}

/// Returns the JSON body it was sent.
#[utoipa::path(
    post,
    path = "/api/v1/tools/echo",
    tag = "tools",
    request_body(content = serde_json::Value, description = "Any JSON value"),
    security(("bearerAuth" = []), ("apiKey" = [])),
    responses((status = 200, description = "The same JSON value", body = serde_json::Value))
)]
pub async fn echo(_caller: AuthUser, body: web::Json<serde_json::Value>) -> HttpResponse {
    HttpResponse::Ok().json(body.into_inner())
}
