//! The metering middleware, wrapped around the metered scope.
//!
//! Per call: resolve the API from method + route pattern (in memory),
//! authenticate, run the handler, then count the call for the caller in the
//! period it arrived in (`failed_calls` too when the status is ≥ 400).
//! Calls that do not authenticate are refused and not counted; routes
//! outside the catalog pass through uncounted.

use std::future::{Ready, ready};
use std::rc::Rc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::{HttpMessage, web};
use futures_util::future::LocalBoxFuture;

use crate::app::AppState;
use crate::billing::Period;
use crate::config::MeterMode;
use crate::error::ApiError;
use crate::models::usage::{UsageDelta, UsageKey};

pub struct Metering {
    state: web::Data<AppState>,
}

impl Metering {
    pub fn new(state: web::Data<AppState>) -> Self {
        Self { state }
    }
}

impl<S, B> Transform<S, ServiceRequest> for Metering
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = MeteringMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(MeteringMiddleware {
            service: Rc::new(service),
            state: self.state.clone(),
        }))
    }
}

pub struct MeteringMiddleware<S> {
    service: Rc<S>,
    state: web::Data<AppState>,
}

impl<S, B> Service<ServiceRequest> for MeteringMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let service = Rc::clone(&self.service);
        let state = self.state.clone();
        Box::pin(async move {
            let api = req
                .match_pattern()
                .and_then(|pattern| state.catalog.lookup(req.method(), &pattern));
            let Some(api) = api else {
                return service
                    .call(req)
                    .await
                    .map(ServiceResponse::map_into_left_body);
            };
            // The period is fixed when the call arrives, not when it is flushed.
            let period = Period::containing(state.clock.now(), state.config.billing_tz);
            let caller = match state.authenticator.authenticate(req.request()).await {
                Ok(caller) => caller,
                Err(err) => return Ok(req.error_response(err).map_into_right_body()),
            };
            if caller.overdue {
                let err = ApiError::new(
                    actix_web::http::StatusCode::PAYMENT_REQUIRED,
                    "payment_required",
                    "an invoice is overdue; metered APIs are blocked until it is paid",
                );
                return Ok(req.error_response(err).map_into_right_body());
            }
            req.extensions_mut().insert(caller);

            let result = service.call(req).await;
            let status = match &result {
                Ok(res) => res.status(),
                Err(err) => err.as_response_error().status_code(),
            };
            let key = UsageKey {
                user_id: caller.user_id,
                api_id: api.api_id,
                period,
            };
            let delta = UsageDelta::one(status.as_u16() >= 400);
            match state.meter.mode() {
                MeterMode::Batched => state.meter.record(key, delta),
                MeterMode::Off => {}
                MeterMode::Sync => {
                    if let Err(e) = state.meter.record_now(key, delta).await {
                        tracing::error!(error = %e, "sync metering failed; refusing to serve the call unbilled");
                        let err = ApiError::unavailable(
                            "metering_unavailable",
                            "the call could not be metered; it was not billed, retry shortly",
                        );
                        return match result {
                            Ok(res) => {
                                let (http_req, _) = res.into_parts();
                                Ok(ServiceResponse::from_err(err, http_req).map_into_right_body())
                            }
                            Err(_) => Err(err.into()),
                        };
                    }
                }
            }
            result.map(ServiceResponse::map_into_left_body)
        })
    }
}
