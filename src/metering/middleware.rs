//! The metering middleware, wrapped around the metered scope with
//! `actix_web::middleware::from_fn`.
//!
//! Per call: resolve the API from method + route pattern, or for the
//! gateway's catch-all resource from method + path prefix (in memory),
//! authenticate, run the handler, then count the call for the caller on the
//! day (and so in the period) it arrived in (`failed_calls` too when the
//! status is ≥ 400). A
//! gateway call is counted when its response head is known: a client that
//! hangs up mid-body was served.
//! Calls that do not authenticate are refused and not counted; an API an
//! admin switched off answers 404 (never served unmetered); routes outside
//! the catalog pass through uncounted.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, web};
use rust_decimal::Decimal;

use crate::auth::Purpose;
use crate::config::MeterMode;
use crate::domain::Day;
use crate::domain::gateway;
use crate::error::ApiError;
use crate::gateway::GatewayCall;
use crate::metering::catalog::CatalogEntry;
use crate::metering::rate_limit::RateOutcome;
use crate::metering::{GATEWAY_RESOURCE, Metering, NotMetered};
use crate::models::usage::{UsageDelta, UsageKey};
use crate::telemetry::MatchedRoute;

/// The middleware function. The route is resolved by resource name (each
/// metered resource is named by its full pattern, see `routes::route_table!`),
/// which borrows from the router instead of building the pattern string.
pub async fn metered_call(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<Metering>>().cloned() else {
        let err = ApiError::internal(anyhow::anyhow!("Metering is not registered as app data"));
        return Ok(req.error_response(err).map_into_right_body());
    };
    let (api, gateway_rest) = match resolve(&req, &state) {
        Ok(Some(found)) => found,
        Ok(None) => return next.call(req).await.map(ServiceResponse::map_into_left_body),
        Err(escape) => return Ok(req.error_response(ApiError::from(escape)).map_into_right_body()),
    };
    if !api.active {
        let err = ApiError::not_found("this API has been switched off");
        return Ok(req.error_response(err).map_into_right_body());
    }
    req.extensions_mut().insert(MatchedRoute(api.route_label.clone()));
    // The day (and with it the period) is fixed when the call arrives, not
    // when it is flushed: one time-zone conversion, no allocation.
    let arrived = state.clock.now();
    let day = Day::containing(arrived, state.billing_tz);
    let caller = match state.authenticator.authenticate(req.request(), Purpose::Metered).await {
        Ok(caller) => caller,
        Err(err) => return Ok(req.error_response(ApiError::from(err)).map_into_right_body()),
    };
    if caller.overdue {
        return Ok(req.error_response(ApiError::payment_required()).map_into_right_body());
    }
    let key = UsageKey {
        user_id: caller.user_id,
        api_id: api.api_id,
        day,
        // The price in force during this second prices the call, whenever
        // its count is written (billing/usage_cost.rs resolves it).
        second: arrived.timestamp(),
    };
    let rate = state.rate_limits.take(caller.user_id).await;
    if let Some(rate) = rate.filter(|r| !r.allowed) {
        // Refused calls are counted as failed (never billed), so the
        // caller can see them in their usage.
        let _ = record(&state, key, UsageDelta::one(true)).await;
        api.calls.inc();
        state.rate_limit_refusals.inc();
        let mut res = req.error_response(ApiError::rate_limited(rate.limit, rate.retry_after_secs));
        rate_limit_headers(res.headers_mut(), &rate);
        return Ok(res.map_into_right_body());
    }
    // A capped user's call reserves the most it can cost from leased
    // budget, before anything serves it; one that does not fit is refused
    // (402) and not counted. (Unmetered, `off`, nothing is charged.)
    let reserved = if caller.capped && state.meter.mode() != MeterMode::Off {
        let revocations = state.authenticator.revocations();
        match state
            .spend
            .admit(caller.user_id, day.period(), api.api_id, key.second, revocations)
            .await
        {
            Ok(reserved) => reserved,
            Err(not_admitted) => {
                let err = ApiError::from(not_admitted);
                state.spending_refusals.with_label_values(&[err.code()]).inc();
                return Ok(req.error_response(err).map_into_right_body());
            }
        }
    } else {
        Decimal::ZERO
    };
    if let (Some(target), Some(rest)) = (&api.upstream, gateway_rest) {
        req.extensions_mut().insert(GatewayCall {
            target: target.clone(),
            rest,
        });
    }
    req.extensions_mut().insert(caller);

    let mut result = next.call(req).await;
    let status = match &result {
        Ok(res) => res.status(),
        Err(err) => err.as_response_error().status_code(),
    };
    api.calls.inc();
    if record(&state, key, UsageDelta::one_reserving(status.as_u16() >= 400, reserved))
        .await
        .is_err()
    {
        let err = ApiError::metering_unavailable();
        return match result {
            Ok(res) => {
                let (http_req, _) = res.into_parts();
                Ok(ServiceResponse::from_err(err, http_req).map_into_right_body())
            }
            Err(_) => Err(err.into()),
        };
    }
    if let (Ok(res), Some(rate)) = (&mut result, rate) {
        rate_limit_headers(res.headers_mut(), &rate);
    }
    result.map(ServiceResponse::map_into_left_body)
}

/// The API a call is for, and for a gateway API the raw path after its
/// prefix. Built-in routes are matched by resource name against the
/// decoded path, as the router matches it (the raw path would let
/// `/tools/%75uid` reach the handler unmetered); gateway calls by their
/// segments, decoded the same way, after refusing any path that could step
/// outside the upstream's base path.
fn resolve(
    req: &ServiceRequest,
    state: &Metering,
) -> Result<Option<(CatalogEntry, Option<String>)>, gateway::PathEscape> {
    let Some(name) = req.resource_map().match_name(req.match_info().as_str()) else {
        return Ok(None);
    };
    if name != GATEWAY_RESOURCE {
        return Ok(state.catalog.lookup(req.method(), name).map(|api| (api, None)));
    }
    let raw_path = req.uri().path();
    let segments = gateway::segments(raw_path)?;
    Ok(state
        .catalog
        .lookup_gateway(req.method(), raw_path, &segments)
        .map(|(api, rest)| (api, Some(rest.to_owned()))))
}

/// Counts one call in the configured mode. Only `durable` can fail: its
/// increment must commit (with its group) before the response leaves. The
/// meter logs the failure once per group, not once per call.
async fn record(state: &Metering, key: UsageKey, delta: UsageDelta) -> Result<(), NotMetered> {
    match state.meter.mode() {
        MeterMode::Batched => state.meter.record(key, delta),
        MeterMode::Off => {}
        MeterMode::Durable => state.meter.record_durable(key, delta).await?,
    }
    Ok(())
}

/// `RateLimit-*` headers (IETF draft) on every rate-limited response.
fn rate_limit_headers(headers: &mut HeaderMap, rate: &RateOutcome) {
    let mut put = |name: &'static str, value: u64| {
        headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
    };
    put("ratelimit-limit", u64::from(rate.limit));
    put("ratelimit-remaining", u64::from(rate.remaining));
    put("ratelimit-reset", rate.reset_secs);
}
