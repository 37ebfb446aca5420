//! The middleware around every console route: the CSRF check before any
//! handler runs, then the cookies a request queued and the security headers
//! on every answer.

use actix_web::http::{Method, header};
use actix_web::{HttpMessage, web};

use super::{page, session};
use crate::app::AppState;
use crate::error::ApiError;

/// The largest console form body (the CSRF check reads it whole).
const MAX_FORM_BYTES: usize = 64 * 1024;

/// Middleware around every console route: refuses a state-changing request
/// that fails the CSRF check (403 `csrf_failed`, before the handler runs),
/// then sets the cookies the request queued and the headers that keep the
/// pages to themselves: a strict Content-Security-Policy (no inline script
/// or style, nothing from another host, no framing), no referrer to other
/// sites (`same-origin`: with `no-referrer` browsers send `Origin: null` on
/// their own form posts, which the CSRF check would refuse), no sniffing,
/// no caching.
pub async fn guard(
    mut req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        let err = ApiError::internal(anyhow::anyhow!("AppState is not registered"));
        let res = page::error_response(&err);
        return Ok(secure(req.into_response(res), false));
    };
    let tls = session::over_tls(&state, req.request());
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let body = read_body(&mut req).await;
        let refused = match &body {
            Ok(body) => !session::csrf_ok(&state, req.request(), body),
            Err(_) => true,
        };
        if refused {
            let err = match body {
                Err(err) => err,
                Ok(_) => ApiError::csrf_failed(),
            };
            tracing::warn!(path = %req.path(), code = err.code(), "console form refused");
            let res = page::error_response(&err);
            return Ok(secure(req.into_response(res), tls));
        }
        if let Ok(body) = body {
            req.set_payload(actix_web::dev::Payload::from(body));
        }
    }
    let res = next.call(req).await?.map_into_boxed_body();
    Ok(secure(res, tls))
}

async fn read_body(req: &mut actix_web::dev::ServiceRequest) -> Result<web::Bytes, ApiError> {
    use futures_util::StreamExt;
    let mut payload = req.take_payload();
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| ApiError::validation("the form could not be read"))?;
        if body.len() + chunk.len() > MAX_FORM_BYTES {
            return Err(ApiError::payload_too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The Content-Security-Policy of every console response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Sets the queued cookies and the security headers; over TLS also
/// `Strict-Transport-Security`, so the browser never asks over plain HTTP
/// again (sent only over TLS, as browsers ignore it otherwise).
fn secure(
    mut res: actix_web::dev::ServiceResponse<actix_web::body::BoxBody>,
    tls: bool,
) -> actix_web::dev::ServiceResponse<actix_web::body::BoxBody> {
    let cookies = res.request().extensions_mut().remove::<session::CookieJar>();
    let headers = res.headers_mut();
    if let Some(session::CookieJar(cookies)) = cookies {
        for c in cookies {
            if let Ok(value) = header::HeaderValue::from_str(&c.to_string()) {
                headers.append(header::SET_COOKIE, value);
            }
        }
    }
    let fixed: [(header::HeaderName, &str); 6] = [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-store"),
        (
            header::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ];
    for (name, value) in fixed {
        headers.insert(name, header::HeaderValue::from_static(value));
    }
    if tls {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            header::HeaderValue::from_static("max-age=31536000"),
        );
    }
    res
}
