//! The gateway's catch-all handler: every path payg does not serve itself
//! reaches it, inside the metering middleware. A path that matched a
//! gateway API (the middleware left a `GatewayCall`) is forwarded to its
//! upstream; any other path is 404 (400 `invalid_path` when the path could
//! step outside a base path, which the middleware checks first).

use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::gateway::{self, Forward, GatewayCall, Pools};
use crate::telemetry::RequestId;

pub async fn forward(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    pools: web::Data<Pools>,
) -> ApiResult<HttpResponse> {
    // Taken, not cloned: nothing after the handler needs it.
    let Some(call) = req.extensions_mut().remove::<GatewayCall>() else {
        return Err(ApiError::not_found("no such route"));
    };
    // The middleware authenticated the call before leaving `GatewayCall`
    // (no extractor: an unknown path is 404, whoever asks).
    let Some(caller) = req.extensions().get::<Caller>().copied() else {
        return Err(ApiError::unauthenticated());
    };
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let forwarded = state.clients.forwarded(&req);
    let call = Forward {
        gateway: &call,
        user_id: caller.user_id,
        request_id: &request_id,
        forwarded,
        now: state.now(),
    };
    Ok(gateway::forward(&req, payload, &pools, call).await?)
}
