//! The demo metered APIs. Each is its own catalog entry; the metering
//! middleware around their scope counts every authenticated call.

use actix_web::{HttpResponse, web};
use chrono::SecondsFormat;
use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256, Sha512};

use crate::app::AppState;
use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/uuid").route(web::get().to(uuid)))
        .service(web::resource("/random").route(web::get().to(random)))
        .service(web::resource("/random/{max}").route(web::get().to(random_up_to)))
        .service(web::resource("/hash").route(web::post().to(hash)))
        .service(web::resource("/time").route(web::get().to(time)))
        .service(web::resource("/echo").route(web::post().to(echo)));
}

// Every handler takes `AuthUser` so it cannot be reached unauthenticated
// even if it were mounted outside the metered scope by mistake; inside it,
// the middleware has already authenticated and this is free.

pub async fn uuid(_caller: AuthUser) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "uuid": uuid::Uuid::new_v4() }))
}

#[derive(Deserialize)]
pub struct RandomQuery {
    min: Option<i64>,
    max: Option<i64>,
}

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

pub async fn random_up_to(_caller: AuthUser, max: web::Path<u32>) -> HttpResponse {
    let max = max.into_inner();
    HttpResponse::Ok().json(json!({ "value": rand::random_range(0..=max) }))
}

#[derive(Deserialize, Clone, Copy, Default)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgorithm {
    #[default]
    Sha256,
    Sha512,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashRequest {
    data: String,
    #[serde(default)]
    algorithm: HashAlgorithm,
}

pub async fn hash(_caller: AuthUser, body: web::Json<HashRequest>) -> HttpResponse {
    let data = body.data.as_bytes();
    let (name, digest) = match body.algorithm {
        HashAlgorithm::Sha256 => ("sha256", hex::encode(Sha256::digest(data))),
        HashAlgorithm::Sha512 => ("sha512", hex::encode(Sha512::digest(data))),
    };
    HttpResponse::Ok().json(json!({ "algorithm": name, "digest": digest }))
}

#[derive(Deserialize)]
pub struct TimeQuery {
    tz: Option<String>,
}

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

pub async fn echo(_caller: AuthUser, body: web::Json<serde_json::Value>) -> HttpResponse {
    HttpResponse::Ok().json(body.into_inner())
}
