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
use diesel::result::Error as DieselError;
use serde::Serialize;

use crate::auth::AuthError;
use crate::auth::accounts::ChangeError;
use crate::auth::password::PoolBusy;
use crate::auth::sessions::SessionError;
use crate::billing::alerts::AlertError;
use crate::billing::caps::CapError;
use crate::billing::close::CloseError;
use crate::billing::credits::CreditError;
use crate::billing::export::ExportError;
use crate::billing::payments::{PaymentError, SignatureError, VoidError};
use crate::clients::Throttled;
use crate::domain::currency::UnknownCurrency;
use crate::domain::gateway::PathEscape;
use crate::domain::period::{BadDayRange, BadPeriod};
use crate::domain::pricing::{BadPriceStart, InvalidPrice, InvalidStart};
use crate::domain::spend::{NotAdmitted, SpendRefusal};
use crate::domain::text::InvalidText;
use crate::gateway::{UpstreamAnswer, UpstreamError};
use crate::models::price::CancelError;
use crate::webhooks::WebhookError;

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
    /// Private: every status is chosen by one of the named constructors or
    /// `From` conversions below, so this file is the one place that decides.
    fn new(status: StatusCode, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
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

    /// 400 with a code of its own (`invalid_json`, `invalid_signature`, …).
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

    /// 401: two credentials (or one header twice) could name different
    /// users, and neither should silently win.
    pub fn ambiguous_credentials() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "ambiguous_credentials",
            "send one credential: one Authorization or one X-API-Key header",
        )
    }

    /// 401, not 403: an API key is not a credential finance and admin routes
    /// accept (their security scheme is the bearer token alone).
    pub fn access_token_required() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "access_token_required",
            "finance and admin routes need an access token from /auth/login, not an API key",
        )
    }

    /// 401 at login: unknown email or wrong password, never saying which.
    pub fn invalid_credentials() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "invalid email or password",
        )
    }

    /// 402: an overdue invoice blocks metered APIs until it is paid.
    pub fn payment_required() -> Self {
        Self::new(
            StatusCode::PAYMENT_REQUIRED,
            "payment_required",
            "an invoice is overdue; metered APIs are blocked until it is paid",
        )
    }

    /// 403: the caller's role does not allow this route.
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn account_suspended() -> Self {
        Self::new(StatusCode::FORBIDDEN, "account_suspended", "this account is suspended")
    }

    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409: the request conflicts with the resource's current state.
    pub fn conflict(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 422: a well-formed amount in a currency that does not apply here.
    pub fn currency_mismatch(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "currency_mismatch", message)
    }

    /// 429 at login: too many failed attempts for one email.
    pub fn too_many_attempts(retry_after_secs: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            "too many failed logins for this email; try again later",
        )
        .with_retry_after(retry_after_secs.max(1))
    }

    /// 429 on a metered call: the per-user rate limit is exhausted.
    pub fn rate_limited(limit_per_minute: u32, retry_after_secs: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("rate limit of {limit_per_minute} calls per minute exceeded"),
        )
        .with_retry_after(retry_after_secs)
    }

    /// 503: PostgreSQL cannot be reached, or the connection broke.
    pub fn database_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "the database is unavailable, retry shortly",
        )
    }

    /// 503 in durable metering mode: the call's count could not be committed,
    /// so it is not served (it would go unbilled); it is never billed.
    pub fn metering_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metering_unavailable",
            "the call could not be metered; it was not billed, retry shortly",
        )
    }

    /// 503 at login: the lockout's state is unknown (Redis unreachable), so
    /// the login is refused rather than let guesses through uncounted.
    pub fn login_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "login_unavailable",
            "logins are paused while the lockout cannot be checked; retry shortly",
        )
        .with_retry_after(1)
    }

    /// 503 at logout: the session's refresh tokens are revoked, but its
    /// access tokens could not be deny-listed (Redis unreachable); a retry
    /// finishes the job.
    pub fn logout_incomplete() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "logout_incomplete",
            "the session's refresh tokens are revoked, but its access tokens could not be ended at once; \
             retry the logout shortly",
        )
        .with_retry_after(1)
    }

    /// 503: the payment webhook has no secret to check signatures with.
    pub fn webhooks_disabled() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "webhooks_disabled",
            "PAYG_WEBHOOK_SECRET is not configured",
        )
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

    fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    /// What the error says to people (never a 5xx's cause).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// 413 `payload_too_large`: a body over the 64 KiB every route takes.
    pub fn payload_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body exceeds 64 KiB",
        )
    }

    /// 403 `csrf_failed`: a console form posted without its CSRF token (or
    /// with another's), or from another site.
    pub fn csrf_failed() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "csrf_failed",
            "this form has expired or did not come from this site; reload the page and try again",
        )
    }

    /// The console's answer to a failure: the HTML `page` (given the
    /// status's code and the error) under the status the JSON API would
    /// have answered, with the same headers (`Retry-After`, …) and the same
    /// logging. With `sign_in`, a 401 (not signed in, or the session ended)
    /// sends the browser there with 303 instead; a form that failed (a
    /// wrong password, say) passes `None` to be shown again under its 401.
    pub fn console_response(&self, sign_in: Option<&str>, page: impl FnOnce(u16, &ApiError) -> String) -> HttpResponse {
        if let Some(sign_in) = sign_in
            && self.status == StatusCode::UNAUTHORIZED
        {
            return HttpResponse::SeeOther()
                .insert_header((header::LOCATION, sign_in))
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .finish();
        }
        let json = self.error_response();
        let mut res = HttpResponse::build(self.status);
        for (name, value) in json.headers() {
            if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH && name != header::WWW_AUTHENTICATE {
                res.insert_header((name.clone(), value.clone()));
            }
        }
        res.content_type("text/html; charset=utf-8")
            .body(page(self.status.as_u16(), self))
    }
}

/// The `error` member of a `GET /readyz` answer when PostgreSQL is down.
pub fn not_ready(unreachable: &'static str) -> ErrorFields<'static> {
    ErrorFields {
        code: "not_ready",
        message: unreachable,
    }
}

/// The status of `GET /readyz`: 200 while PostgreSQL answers, 503 otherwise.
pub fn readiness_status(postgres_up: bool) -> StatusCode {
    if postgres_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// What every failure's body serialises: `{"error": {"code", "message"}}`.
/// [`ErrorBody`] and [`ErrorDetail`] describe the same shape for the
/// OpenAPI spec; the test `real_responses_have_exactly_the_fields_of_their_schemas`
/// holds the two together.
#[derive(Serialize)]
pub struct ErrorEnvelope<'a> {
    pub error: ErrorFields<'a>,
}

#[derive(Serialize)]
pub struct ErrorFields<'a> {
    pub code: &'a str,
    pub message: &'a str,
}

/// Every failure's body: `{"error": {"code": "…", "message": "…"}}`.
#[derive(utoipa::ToSchema)]
#[schema(example = json!({"error": {"code": "not_found", "message": "invoice not found"}}))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable (`validation_failed`, `unauthorized`,
    /// `not_found`, …); each response lists the codes it can carry.
    pub code: String,
    /// For people; its wording may change.
    pub message: String,
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
            error: ErrorFields {
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
            ref e if crate::db::connection_failed(e) => {
                tracing::warn!(error = %err, "database connection failed");
                Self::database_unavailable()
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
        Self::database_unavailable()
    }
}

impl From<diesel::ConnectionError> for ApiError {
    fn from(err: diesel::ConnectionError) -> Self {
        tracing::warn!(error = %err, "could not connect to the database");
        Self::database_unavailable()
    }
}

impl From<actix_web::error::BlockingError> for ApiError {
    fn from(err: actix_web::error::BlockingError) -> Self {
        Self::internal(anyhow::anyhow!("blocking task failed: {err}"))
    }
}

impl From<BadPeriod> for ApiError {
    fn from(err: BadPeriod) -> Self {
        Self::validation(err.to_string())
    }
}

impl From<BadDayRange> for ApiError {
    fn from(err: BadDayRange) -> Self {
        Self::validation(err.to_string())
    }
}

impl From<InvalidText> for ApiError {
    fn from(err: InvalidText) -> Self {
        Self::validation(err.0)
    }
}

impl From<InvalidPrice> for ApiError {
    fn from(err: InvalidPrice) -> Self {
        Self::validation(err.0)
    }
}

/// An unknown currency code is 422 like a mismatched one: the amount is
/// well-formed, its currency does not apply here.
impl From<UnknownCurrency> for ApiError {
    fn from(err: UnknownCurrency) -> Self {
        Self::currency_mismatch(err.to_string())
    }
}

impl From<InvalidStart> for ApiError {
    fn from(err: InvalidStart) -> Self {
        Self::validation(err.to_string())
    }
}

impl From<BadPriceStart> for ApiError {
    fn from(err: BadPriceStart) -> Self {
        Self::validation(err.to_string())
    }
}

impl From<CancelError> for ApiError {
    fn from(err: CancelError) -> Self {
        match err {
            e @ CancelError::NotFound => Self::not_found(e.to_string()),
            e @ CancelError::Started => Self::conflict("price_started", e.to_string()),
            CancelError::Database(e) => e.into(),
        }
    }
}

impl From<CapError> for ApiError {
    fn from(err: CapError) -> Self {
        match err {
            e @ CapError::UserNotFound => Self::not_found(e.to_string()),
            e @ CapError::SetByFinance { .. } => Self::conflict("cap_set_by_finance", e.to_string()),
            e @ CapError::BadAmount(_) => Self::validation(e.to_string()),
            CapError::Database(e) => e.into(),
        }
    }
}

/// A capped user's call that did not fit: 402, with what to do about it in
/// the code; a cap that cannot be checked: 503, as a call that cannot be
/// metered.
impl From<NotAdmitted> for ApiError {
    fn from(err: NotAdmitted) -> Self {
        match err {
            NotAdmitted::Refused(e @ SpendRefusal::CapReached) => {
                Self::new(StatusCode::PAYMENT_REQUIRED, "spending_cap_reached", e.to_string())
            }
            NotAdmitted::Refused(e @ SpendRefusal::CreditsExhausted) => {
                Self::new(StatusCode::PAYMENT_REQUIRED, "credits_exhausted", e.to_string())
            }
            NotAdmitted::Unavailable => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "metering_unavailable",
                "the spending cap cannot be checked right now; the call was not served or billed, retry shortly",
            ),
        }
    }
}

impl From<AlertError> for ApiError {
    fn from(err: AlertError) -> Self {
        match err {
            e @ AlertError::Invalid(_) => Self::validation(e.to_string()),
            AlertError::Database(e) => e.into(),
        }
    }
}

impl From<WebhookError> for ApiError {
    fn from(err: WebhookError) -> Self {
        match err {
            WebhookError::BadUrl(e) => Self::validation(e.to_string()),
            e @ (WebhookError::NotFound | WebhookError::DeliveryNotFound) => Self::not_found(e.to_string()),
            e @ WebhookError::TooMany => Self::conflict("too_many_endpoints", e.to_string()),
            WebhookError::Database(e) => e.into(),
        }
    }
}

impl From<CreditError> for ApiError {
    fn from(err: CreditError) -> Self {
        match err {
            e @ CreditError::UserNotFound => Self::not_found(e.to_string()),
            e @ CreditError::ReferenceReused(_) => Self::conflict("reference_reused", e.to_string()),
            e @ CreditError::CurrencyMismatch { .. } => Self::currency_mismatch(e.to_string()),
            e @ CreditError::BadAmount(_) => Self::validation(e.to_string()),
            CreditError::Database(e) => e.into(),
        }
    }
}

impl From<PaymentError> for ApiError {
    fn from(err: PaymentError) -> Self {
        match err {
            PaymentError::NotFound => Self::not_found("invoice not found"),
            e @ (PaymentError::Void(_) | PaymentError::AlreadyPaid(_)) => {
                Self::conflict("invoice_not_payable", e.to_string())
            }
            e @ PaymentError::ReferenceReused(_) => Self::conflict("reference_reused", e.to_string()),
            e @ PaymentError::Overpayment { .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "overpayment", e.to_string())
            }
            e @ PaymentError::CurrencyMismatch { .. } => Self::currency_mismatch(e.to_string()),
            e @ PaymentError::BadAmount(_) => Self::validation(e.to_string()),
            PaymentError::Database(e) => e.into(),
        }
    }
}

impl From<VoidError> for ApiError {
    fn from(err: VoidError) -> Self {
        match err {
            VoidError::NotFound => Self::not_found("invoice not found"),
            e @ VoidError::NotVoidable(_) => Self::conflict("invoice_not_voidable", e.to_string()),
            VoidError::Database(e) => e.into(),
        }
    }
}

impl From<CloseError> for ApiError {
    fn from(err: CloseError) -> Self {
        match err {
            CloseError::PeriodOpen(p) => Self::conflict(
                "period_open",
                format!("period {p} has not ended yet; only past periods can be closed"),
            ),
            CloseError::Database(e) => e.into(),
            CloseError::Unavailable(e) => e.into(),
        }
    }
}

impl From<SignatureError> for ApiError {
    fn from(err: SignatureError) -> Self {
        let code = match err {
            SignatureError::Stale => "stale_signature",
            _ => "invalid_signature",
        };
        Self::bad_request(code, err.to_string())
    }
}

impl From<ExportError> for ApiError {
    fn from(err: ExportError) -> Self {
        match err {
            ExportError::Unavailable(e) => e.into(),
            ExportError::Database(e) => e.into(),
            e @ (ExportError::Encoding(_) | ExportError::Interrupted(_)) => Self::internal(e),
        }
    }
}

/// Password hashing is saturated: 503 `busy` at once, rather than queueing
/// memory and threads behind a flood of logins.
impl From<PoolBusy> for ApiError {
    fn from(_: PoolBusy) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many logins and registrations at once; retry shortly",
        )
        .with_retry_after(1)
    }
}

/// A client address past its bucket on an unauthenticated route (or with
/// too many unknown API keys): 429 before any password, query or HMAC.
impl From<Throttled> for ApiError {
    fn from(t: Throttled) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "too many requests from this address; slow down",
        )
        .with_retry_after(t.retry_after_secs.max(1))
    }
}

/// A gateway call that got no answer from its upstream (an answer, 4xx or
/// 5xx included, passes through as the upstream sent it).
impl From<UpstreamError> for ApiError {
    fn from(err: UpstreamError) -> Self {
        match err {
            UpstreamError::Unavailable(_) => Self::new(
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                "the API's upstream could not be reached; the call was not billed",
            ),
            UpstreamError::Timeout(after) => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                format!(
                    "the API's upstream sent no response within {} ms; the call was not billed",
                    after.as_millis()
                ),
            ),
            UpstreamError::TooLarge { limit } => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body exceeds this API's limit of {limit} bytes"),
            ),
            UpstreamError::ClientBody(why) => Self::bad_request("invalid_body", why),
            UpstreamError::UpgradeNotSupported => Self::new(
                StatusCode::NOT_IMPLEMENTED,
                "upgrade_not_supported",
                "protocol upgrades (WebSocket) are not supported through the gateway",
            ),
        }
    }
}

impl From<PathEscape> for ApiError {
    fn from(err: PathEscape) -> Self {
        Self::bad_request("invalid_path", err.to_string())
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Unauthenticated => Self::unauthenticated(),
            AuthError::InvalidToken => Self::invalid_token(),
            AuthError::AmbiguousCredentials => Self::ambiguous_credentials(),
            AuthError::AccessTokenRequired => Self::access_token_required(),
            AuthError::Suspended => Self::account_suspended(),
            AuthError::RevocationsUnknown => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "auth_unavailable",
                "signed-in routes are paused while logged-out sessions cannot be told apart; retry shortly",
            )
            .with_retry_after(1),
            AuthError::DatabaseUnavailable => Self::database_unavailable(),
            AuthError::Forbidden(why) => Self::forbidden(why),
            AuthError::Throttled(t) => t.into(),
            AuthError::Database(e) => e.into(),
            AuthError::Pool(e) => e.into(),
        }
    }
}

/// A role or status change: an admin's own demotion or suspension is 409
/// `own_account` (the request is well-formed; the account's state forbids it).
impl From<ChangeError> for ApiError {
    fn from(err: ChangeError) -> Self {
        match err {
            e @ ChangeError::NothingToChange => Self::validation(e.to_string()),
            ChangeError::NotFound => Self::not_found("no such user"),
            e @ ChangeError::OwnAccount => Self::conflict("own_account", e.to_string()),
            e @ ChangeError::NotAnAdmin => Self::forbidden(e.to_string()),
            ChangeError::Database(e) => e.into(),
        }
    }
}

impl From<SessionError> for ApiError {
    fn from(err: SessionError) -> Self {
        match err {
            SessionError::Database(e) => e.into(),
            other => Self::internal(other),
        }
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
    bad_query(&err).into()
}

/// 400: a query string the handler's type cannot take.
pub fn bad_query(err: &QueryPayloadError) -> ApiError {
    ApiError::validation(format!("invalid query string: {err}"))
}

/// A path whose parameters do not parse names no resource: 404, as actix
/// itself would answer, but in the envelope.
pub fn path_error(err: PathError, _req: &HttpRequest) -> actix_web::Error {
    bad_path(&err).into()
}

/// 404: path parameters that do not parse name no resource.
pub fn bad_path(err: &PathError) -> ApiError {
    ApiError::not_found(format!("no such resource: {err}"))
}

/// Fallback for responses actix produces itself (unknown route, wrong method,
/// payload limits of non-JSON extractors): give them the envelope unless they
/// already carry a JSON body.
pub fn envelope_framework_errors<B>(res: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
    // An upstream's own answer passes through as it was sent.
    if res.response().extensions().get::<UpstreamAnswer>().is_some() {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let is_json = res
        .response()
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    // The console's pages (its own 404 and error pages included) are HTML
    // already.
    let is_html = res
        .response()
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if is_json || is_html {
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
    use diesel::result::DatabaseErrorKind;

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

    #[test]
    fn a_broken_or_terminated_database_connection_is_503_not_500() {
        let broken = [
            DieselError::DatabaseError(
                DatabaseErrorKind::Unknown,
                Box::new(String::from("terminating connection due to administrator command")),
            ),
            DieselError::DatabaseError(
                DatabaseErrorKind::UnableToSendCommand,
                Box::new(String::from("connection closed")),
            ),
            DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, Box::new(String::from("closed"))),
            DieselError::DatabaseError(
                DatabaseErrorKind::Unknown,
                Box::new(String::from("the database system is shutting down")),
            ),
            DieselError::BrokenTransactionManager,
        ];
        for err in broken {
            let what = err.to_string();
            let api = ApiError::from(err);
            assert_eq!(
                (api.status_code(), api.code()),
                (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable"),
                "{what}"
            );
        }
    }
}
