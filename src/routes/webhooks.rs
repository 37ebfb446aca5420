//! Payment-provider webhook: `Payg-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`.

use actix_web::{HttpRequest, HttpResponse, web};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::app::AppState;
use crate::billing::payments::{self, PaymentInput, PaymentSource, SignatureError};
use crate::error::{ApiError, ApiResult};
use crate::models::Invoice;
use crate::routes::conn;
use crate::routes::finance::{PaymentRecorded, parse_currency, payment_error, payment_response};
use crate::routes::openapi::ErrorBody;

/// A payment provider's event. Only `payment.succeeded` is acted on; other
/// types are acknowledged and ignored.
#[derive(Deserialize, ToSchema)]
pub struct PaymentEvent {
    /// The provider's event id (1–200 characters): each is applied once.
    #[schema(min_length = 1, max_length = 200)]
    id: String,
    #[serde(rename = "type")]
    #[schema(example = "payment.succeeded")]
    kind: String,
    /// Required for `payment.succeeded`.
    invoice_number: Option<String>,
    /// Required for `payment.succeeded`: a decimal string.
    #[serde(default, with = "rust_decimal::serde::str_option")]
    #[schema(value_type = Option<String>, example = "12.50", pattern = r"^[0-9]{1,15}(\.[0-9]{1,10})?$")]
    amount: Option<Decimal>,
    #[schema(value_type = Option<crate::billing::Currency>)]
    currency: Option<String>,
    /// Required for `payment.succeeded`: the provider's payment reference.
    reference: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookStatus {
    /// Not a `payment.succeeded` event.
    Ignored,
    /// This event id was applied before.
    Duplicate,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookAck {
    pub status: WebhookStatus,
}

/// A 200 answer: an acknowledgement, or the payment this event recorded
/// before.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum WebhookOutcome {
    Ack(WebhookAck),
    Recorded(Box<PaymentRecorded>),
}

/// Receives a signed payment event: `Payg-Signature: t=<unix>,v1=<hex
/// HMAC-SHA256 of "t.body">` with the shared `PAYG_WEBHOOK_SECRET`.
#[utoipa::path(
    post,
    path = "/api/v1/webhooks/payments",
    tag = "webhooks",
    request_body(content = PaymentEvent, content_type = "application/json"),
    params(("Payg-Signature" = String, Header, pattern = r"^t=[0-9]+(,v1=[0-9a-f]{64})+$",
        description = "`t=<unix seconds>,v1=<hex HMAC-SHA256 of \"t.body\">`")),
    responses(
        (status = 201, description = "The payment was recorded", body = PaymentRecorded),
        (status = 200, description = "Acknowledged: ignored, a duplicate event, or a payment already recorded",
            body = WebhookOutcome),
        (status = 400, description = "`invalid_signature` or `stale_signature`: the signature is missing, wrong or \
            too old; `invalid_json`: the event does not parse; `validation_failed`: a bad id or missing fields",
            body = ErrorBody),
        (status = 404, description = "`not_found`: no invoice with that number", body = ErrorBody),
        (status = 409, description = "`invoice_not_payable`: the invoice is void or already paid; \
            `reference_reused`: the reference was used for a different payment", body = ErrorBody),
        (status = 422, description = "`overpayment`: more than is outstanding; \
            `currency_mismatch`: not the invoice's currency", body = ErrorBody),
        (status = 503, description = "`webhooks_disabled`: `PAYG_WEBHOOK_SECRET` is not set", body = ErrorBody),
    )
)]
pub async fn payment_webhook(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let Some(secret) = state.config.billing.webhook_secret.as_ref() else {
        return Err(ApiError::unavailable(
            "webhooks_disabled",
            "PAYG_WEBHOOK_SECRET is not configured",
        ));
    };
    let header = req.headers().get("Payg-Signature").and_then(|v| v.to_str().ok());
    payments::verify_signature(header, &body, secret.expose().as_bytes(), state.now()).map_err(|e| {
        let code = match e {
            SignatureError::Stale => "stale_signature",
            _ => "invalid_signature",
        };
        ApiError::bad_request(code, e.to_string())
    })?;
    let event: PaymentEvent = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("malformed event: {e}")))?;
    if event.id.is_empty() || event.id.chars().count() > 200 {
        return Err(ApiError::validation("event id must be 1–200 characters"));
    }
    let texts = [Some(&event.id), event.invoice_number.as_ref(), event.reference.as_ref()];
    if texts.into_iter().flatten().any(|t| t.chars().any(char::is_control)) {
        return Err(ApiError::validation(
            "id, invoice_number and reference must not contain control characters",
        ));
    }
    if event.kind != "payment.succeeded" {
        // Providers send many event types; acknowledging the rest stops retries.
        return Ok(HttpResponse::Ok().json(json!({"status": "ignored"})));
    }
    let (Some(number), Some(amount), Some(reference)) = (event.invoice_number, event.amount, event.reference) else {
        return Err(ApiError::validation(
            "payment.succeeded needs invoice_number, amount and reference",
        ));
    };
    let currency = parse_currency(event.currency.as_deref())?;
    let mut conn = conn(&state.db).await?;
    let invoice = Invoice::find_by_number(&mut conn, &number)
        .await?
        .ok_or_else(|| ApiError::not_found("no invoice with that number"))?;
    // The event id is claimed in the same transaction as the payment, so an
    // event is applied exactly once however often it is delivered.
    let now = state.now();
    let outcome = diesel_async::AsyncConnection::transaction::<_, ApiError, _>(&mut *conn, async |conn| {
        if !payments::claim_webhook_event(conn, &event.id, &event.kind).await? {
            return Ok(None);
        }
        let input = PaymentInput {
            amount,
            currency,
            reference,
            method: "webhook".into(),
            source: PaymentSource::Webhook,
            recorded_by: None,
        };
        payments::record_payment(conn, invoice.id, input, now)
            .await
            .map(Some)
            .map_err(payment_error)
    })
    .await?;
    match outcome {
        None => Ok(HttpResponse::Ok().json(json!({"status": "duplicate"}))),
        Some(recorded) => Ok(payment_response(&state, recorded).await),
    }
}
