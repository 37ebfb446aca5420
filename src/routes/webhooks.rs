//! Payment-provider webhook: `Payg-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`.

use actix_web::{HttpRequest, HttpResponse, web};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::json;

use crate::app::AppState;
use crate::billing::payments::{self, PaymentInput, PaymentSource, SignatureError};
use crate::error::{ApiError, ApiResult};
use crate::models::Invoice;
use crate::routes::conn;
use crate::routes::finance::{parse_currency, payment_error, payment_response};

#[derive(Deserialize)]
pub struct PaymentEvent {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    invoice_number: Option<String>,
    #[serde(default, with = "rust_decimal::serde::str_option")]
    amount: Option<Decimal>,
    currency: Option<String>,
    reference: Option<String>,
}

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
    if event.id.is_empty() || event.id.len() > 200 {
        return Err(ApiError::validation("event id must be 1–200 characters"));
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
