//! The one error type handlers return, and the only place HTTP statuses for
//! failures are decided. Every failure leaves as
//! `{"error": {"code": "…", "message": "…"}}`; causes of 5xx go to the log only.

use std::borrow::Cow;
use std::fmt;

use actix_web::dev::ServiceResponse;
use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::{StatusCode, header};
use actix_web::middleware::ErrorHandlerResponse;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use serde::Serialize;

pub type ApiResult<T> = Result<T, ApiError>;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: Cow<'static, str>,
    /// Why an unexpected error happened; logged, never sent.
    cause: Option<anyhow::Error>,
    /// Extra value for `WWW-Authenticate` on 401s (RFC 6750 error attribute).
    bearer_error: Option<&'static str>,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            cause: None,
            bearer_error: None,
            retry_after_secs: None,
        }
    }

    /// 400: the input is well-formed but its values are not acceptable.
    pub fn validation(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "validation_failed", message)
    }

    pub fn bad_request(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401 with no credentials presented.
    pub fn unauthenticated() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "authentication required")
    }

    /// 401 for credentials that were presented but are not valid. The message
    /// never says which check failed: that would help an attacker.
    pub fn invalid_token() -> Self {
        let mut err = Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "invalid or expired credentials",
        );
        err.bearer_error = Some("invalid_token");
        err
    }

    pub fn forbidden(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn unavailable(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// 500 whose cause is logged and whose body says nothing about it.
    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        let mut err = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal server error",
        );
        err.cause = Some(cause.into());
        err
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

#[derive(Serialize)]
pub struct ErrorEnvelope<'a> {
    pub error: ErrorBody<'a>,
}

#[derive(Serialize)]
pub struct ErrorBody<'a> {
    pub code: &'a str,
    pub message: &'a str,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        if self.status.is_server_error() {
            match &self.cause {
                Some(cause) => tracing::error!(code = self.code, error = ?cause, "request failed"),
                None => {
                    tracing::warn!(code = self.code, message = %self.message, "request refused")
                }
            }
        }
        let mut res = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            let value = match self.bearer_error {
                Some(e) => format!("Bearer realm=\"payg\", error=\"{e}\""),
                None => "Bearer realm=\"payg\"".to_owned(),
            };
            res.insert_header((header::WWW_AUTHENTICATE, value));
        }
        if let Some(secs) = self.retry_after_secs {
            res.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        res.json(ErrorEnvelope {
            error: ErrorBody {
                code: self.code,
                message: &self.message,
            },
        })
    }
}

impl From<DieselError> for ApiError {
    fn from(err: DieselError) -> Self {
        match err {
            DieselError::NotFound => Self::not_found("not found"),
            DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _) => {
                tracing::warn!(error = %err, "database connection lost");
                Self::unavailable("database_unavailable", "the database is unavailable, retry shortly")
            }
            // Rust strings are valid UTF-8, so PostgreSQL refuses only a NUL
            // (0x00) here, which can only have come from the client: a
            // safety net behind the input checks, so it is never a 500.
            DieselError::DatabaseError(_, ref info)
                if info.message().starts_with("invalid byte sequence for encoding") =>
            {
                Self::validation("text must not contain NUL (\\u0000) characters")
            }
            other => Self::internal(other),
        }
    }
}

impl From<crate::db::PoolError> for ApiError {
    fn from(err: crate::db::PoolError) -> Self {
        tracing::warn!(error = %err, "database pool could not hand out a connection");
        Self::unavailable("database_unavailable", "the database is unavailable, retry shortly")
    }
}

impl From<actix_web::error::BlockingError> for ApiError {
    fn from(err: actix_web::error::BlockingError) -> Self {
        Self::internal(anyhow::anyhow!("blocking task failed: {err}"))
    }
}

impl ApiError {
    /// A JSON body that does not parse (400 `invalid_json`) or does not fit
    /// the request's shape (400 `validation_failed`).
    pub fn from_json(e: &serde_json::Error) -> Self {
        if e.is_data() {
            ApiError::validation(e.to_string())
        } else {
            ApiError::bad_request("invalid_json", format!("malformed JSON: {e}"))
        }
    }
}

/// `JsonConfig` error handler: malformed bodies, wrong content types and
/// oversized bodies get the envelope too.
pub fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let api = match &err {
        JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body exceeds 64 KiB",
        ),
        JsonPayloadError::ContentType => ApiError::bad_request(
            "invalid_content_type",
            "expected a body with Content-Type: application/json",
        ),
        JsonPayloadError::Deserialize(e) => ApiError::from_json(e),
        other => ApiError::bad_request("invalid_body", other.to_string()),
    };
    api.into()
}

pub fn query_error(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::validation(format!("invalid query string: {err}")).into()
}

/// A path whose parameters do not parse names no resource: 404, as actix
/// itself would answer, but in the envelope.
pub fn path_error(err: PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::not_found(format!("no such resource: {err}")).into()
}

/// Fallback for responses actix produces itself (unknown route, wrong method,
/// payload limits of non-JSON extractors): give them the envelope unless they
/// already carry a JSON body.
pub fn envelope_framework_errors<B>(res: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = res
        .response()
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let api = match status {
        StatusCode::NOT_FOUND => ApiError::not_found("no such route"),
        StatusCode::METHOD_NOT_ALLOWED => {
            ApiError::new(status, "method_not_allowed", "method not allowed on this route")
        }
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(status, "payload_too_large", "request body too large"),
        StatusCode::UNAUTHORIZED => ApiError::unauthenticated(),
        s if s.is_server_error() => ApiError::new(s, "internal_error", "internal server error"),
        s => ApiError::new(s, "bad_request", s.canonical_reason().unwrap_or("bad request")),
    };
    let (req, original) = res.into_parts();
    let mut fresh = api.error_response();
    // Keep headers such as Allow on a 405.
    for (name, value) in original.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            fresh.headers_mut().insert(name.clone(), value.clone());
        }
    }
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, fresh).map_into_right_body(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_refused_by_postgres_is_the_clients_error_other_database_errors_are_ours() {
        let nul = DieselError::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new(String::from("invalid byte sequence for encoding \"UTF8\": 0x00")),
        );
        let err = ApiError::from(nul);
        assert_eq!(
            (err.status_code(), err.code()),
            (StatusCode::BAD_REQUEST, "validation_failed")
        );
        let other = DieselError::DatabaseError(DatabaseErrorKind::Unknown, Box::new(String::from("disk full")));
        assert_eq!(ApiError::from(other).status_code(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
