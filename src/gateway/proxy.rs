//! One forwarded call: the request streams to the upstream as it arrives,
//! the response streams back as the upstream sends it; neither is ever
//! held whole.
//!
//! Failures before a response head are the gateway's to name (see
//! [`UpstreamError`]); from the head on, the upstream's answer is the
//! answer, 4xx and 5xx included, passed through unchanged. A body-less GET
//! or HEAD is retried once, and only when the connection could not be made
//! (nothing was sent); nothing else is ever retried.

use std::time::{Duration, Instant};

use actix_web::body::SizedStream;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use awc::error::{ConnectError, SendRequestError};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use uuid::Uuid;

use crate::clients::Forwarded;
use crate::domain::gateway::{SIGNATURE_HEADER, signature_header, signed_string};
use crate::gateway::headers;
use crate::gateway::pools::Pools;
use crate::gateway::target::GatewayCall;

/// Why a call got no answer from its upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Unreachable, refused, reset, or not HTTP, before a response head.
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    /// No response head within the API's `timeout_ms`.
    #[error("no response head within {0:?}")]
    Timeout(Duration),
    /// The request body is over the API's `max_body_bytes`.
    #[error("request body over {limit} bytes")]
    TooLarge { limit: u64 },
    /// The client's own body broke off (it hung up mid-upload).
    #[error("reading the request body: {0}")]
    ClientBody(String),
    /// A WebSocket (or other protocol) upgrade.
    #[error("protocol upgrades are not supported")]
    UpgradeNotSupported,
}

/// Left in the response's extensions: what the upstream answered and how
/// long its head took. The request log shows it, and the error envelope
/// leaves such a response alone (an upstream's 4xx is its own).
#[derive(Debug, Clone, Copy)]
pub struct UpstreamAnswer {
    pub status: u16,
    pub latency: Duration,
}

/// One call to forward, and who is making it, as payg tells the upstream.
pub struct Forward<'a> {
    pub gateway: &'a GatewayCall,
    pub user_id: Uuid,
    pub request_id: &'a str,
    pub forwarded: Forwarded,
    pub now: DateTime<Utc>,
}

/// A request body, counted as it streams past, cut off past the limit.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("request body over the limit")]
    TooLarge,
    #[error("{0}")]
    Read(String),
}

fn limited(payload: web::Payload, max: u64) -> impl Stream<Item = Result<Bytes, BodyError>> + Unpin + 'static {
    let mut seen: u64 = 0;
    payload.map(move |chunk| {
        let chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
        seen = seen.saturating_add(chunk.len() as u64);
        if seen > max {
            Err(BodyError::TooLarge)
        } else {
            Ok(chunk)
        }
    })
}

fn header_value(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(text).ok()
}

/// Forwards the call and returns the upstream's answer as a streaming
/// response (with [`UpstreamAnswer`] in its extensions).
pub async fn forward(
    req: &HttpRequest,
    payload: web::Payload,
    pools: &Pools,
    call: Forward<'_>,
) -> Result<HttpResponse, UpstreamError> {
    let target = &call.gateway.target;
    if headers::wants_websocket(req.headers()) {
        return Err(UpstreamError::UpgradeNotSupported);
    }
    let length = headers::content_length(req.headers());
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    if length.is_some_and(|n| n > target.max_body_bytes) {
        return Err(UpstreamError::TooLarge {
            limit: target.max_body_bytes,
        });
    }

    // The path after the prefix was checked by the metering middleware
    // (`domain::gateway::segments`): it cannot step outside the base path.
    let mut path_and_query = format!("{}{}", target.base_path, call.gateway.rest);
    if path_and_query.is_empty() {
        path_and_query.push('/');
    }
    if let Some(query) = req.uri().query() {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    let url = format!("{}{path_and_query}", target.origin);

    let user_id = call.user_id.to_string();
    let timestamp = call.now.timestamp();
    let message = signed_string(timestamp, req.method().as_str(), &path_and_query, &user_id);
    let signature = signature_header(timestamp, &message, &target.secrets(call.now));

    let client = pools.client(target.connect_timeout);
    let mut request = client.request(req.method().clone(), &url).timeout(target.timeout);
    for (name, value) in headers::to_upstream(req.headers(), target.preserve_host) {
        request = request.append_header((name, value));
    }
    let forwarded = call.forwarded;
    let ours: [(&'static str, Option<HeaderValue>); 7] = [
        ("x-forwarded-for", header_value(&forwarded.for_chain)),
        ("x-forwarded-proto", header_value(&forwarded.proto)),
        ("x-forwarded-host", forwarded.host.as_deref().and_then(header_value)),
        ("x-payg-user-id", header_value(&user_id)),
        ("x-payg-api", header_value(&target.slug)),
        ("x-payg-request-id", header_value(call.request_id)),
        (SIGNATURE_HEADER, header_value(&signature)),
    ];
    for (name, value) in ours {
        if let Some(value) = value {
            request = request.insert_header((HeaderName::from_static(name), value));
        }
    }

    let started = Instant::now();
    let idempotent = matches!(*req.method(), Method::GET | Method::HEAD);
    let result = if chunked {
        request.send_stream(limited(payload, target.max_body_bytes)).await
    } else {
        match length {
            Some(n) if n > 0 => {
                request
                    .send_body(SizedStream::new(n, limited(payload, target.max_body_bytes)))
                    .await
            }
            _ if idempotent => {
                let frozen = request
                    .freeze()
                    .map_err(|e| UpstreamError::Unavailable(format!("building the request: {e}")))?;
                match frozen.send().await {
                    // Nothing was sent: the connection could not be made
                    // (refused, reset while connecting, name not resolved).
                    // Not a connect timeout (it would double the wait), and
                    // not `Disconnected`, which awc also reports after a
                    // request went out.
                    Err(SendRequestError::Connect(
                        e @ (ConnectError::Io(_) | ConnectError::Resolver(_) | ConnectError::NoRecords),
                    )) => {
                        tracing::debug!(api = %target.slug, error = %e, "upstream connect failed; retrying once");
                        frozen.send().await
                    }
                    other => other,
                }
            }
            _ => request.send().await,
        }
    };
    let latency = started.elapsed();
    let upstream = match result {
        Ok(res) => res,
        Err(e) => {
            let err = classify(e, target.max_body_bytes, target.timeout);
            match &err {
                UpstreamError::Timeout(_) => target.metrics.timeouts.inc(),
                UpstreamError::Unavailable(_) => target.metrics.connect_errors.inc(),
                _ => {}
            }
            if matches!(err, UpstreamError::Unavailable(_) | UpstreamError::Timeout(_)) {
                tracing::warn!(api = %target.slug, error = %err, "upstream call failed");
            }
            return Err(err);
        }
    };
    let status = upstream.status();
    target.metrics.duration.observe(latency.as_secs_f64());
    target.metrics.response(status.as_u16());
    if status.is_informational() {
        // awc takes an interim answer (103 Early Hints, 102) for the final
        // one and has already pooled the connection the real answer will
        // arrive on: this worker's clients for that timeout are replaced,
        // so no later call can read it.
        pools.discard(target.connect_timeout);
        tracing::warn!(api = %target.slug, status = status.as_u16(), "upstream sent an interim response; not supported");
        return Err(UpstreamError::Unavailable(format!("interim response {status}")));
    }

    let mut builder = HttpResponse::build(status);
    for (name, value) in headers::to_client(upstream.headers()) {
        builder.append_header((name.clone(), value.clone()));
    }
    let upstream_length = headers::content_length(upstream.headers());
    let mut response = if status == StatusCode::NO_CONTENT {
        builder.body(actix_web::body::None::new())
    } else if status == StatusCode::NOT_MODIFIED {
        // No body; actix writes a 304's Content-Length as set.
        if let Some(n) = upstream_length {
            builder.insert_header((header::CONTENT_LENGTH, n));
        }
        builder.body(actix_web::body::None::new())
    } else if *req.method() == Method::HEAD {
        // No body, but the length a GET would have (actix sends no body
        // for a HEAD whatever its size says); none if the upstream gave none.
        match upstream_length {
            Some(n) => builder.body(SizedStream::new(
                n,
                futures_util::stream::empty::<Result<Bytes, BodyError>>(),
            )),
            None => builder.body(actix_web::body::None::new()),
        }
    } else {
        match upstream_length {
            Some(n) => builder.body(SizedStream::new(n, upstream)),
            None => builder.streaming(upstream),
        }
    };
    response.extensions_mut().insert(UpstreamAnswer {
        status: status.as_u16(),
        latency,
    });
    Ok(response)
}

fn classify(e: SendRequestError, max_body_bytes: u64, timeout: Duration) -> UpstreamError {
    match e {
        SendRequestError::Timeout => UpstreamError::Timeout(timeout),
        SendRequestError::Body(body) => match body.downcast_ref::<BodyError>() {
            Some(BodyError::TooLarge) => UpstreamError::TooLarge { limit: max_body_bytes },
            Some(BodyError::Read(why)) => UpstreamError::ClientBody(why.clone()),
            None => UpstreamError::Unavailable(body.to_string()),
        },
        other => UpstreamError::Unavailable(other.to_string()),
    }
}
