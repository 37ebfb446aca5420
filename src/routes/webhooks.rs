//! Payment-provider webhook: `Payg-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`.

use actix_web::{HttpRequest, HttpResponse, web};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::app::AppState;
use crate::billing::credits::{self, TopUp, TopUpInput, ToppedUp};
use crate::billing::payments::{self, PaymentInput, PaymentRecorded, PaymentSource};
use crate::domain::Currency;
use crate::domain::currency::DecimalString;
use crate::domain::text::{EventId, ProviderText};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::models::credit::MovementSource;
use crate::routes::conn;

/// A payment provider's event, applied once per `id`. `payment.succeeded`
/// records a payment against an invoice; `credits.purchased` adds prepaid
/// credit to a user; other types are acknowledged and ignored.
// Parsed as plain JSON first (anything that does not parse is `invalid_json`,
// as before), then its text fields are checked (`validation_failed`)
// whatever the event type.
#[derive(Deserialize, ToSchema)]
pub struct PaymentEvent {
    // The provider's event id: each is applied once.
    #[schema(value_type = EventId, inline)]
    id: String,
    #[serde(rename = "type")]
    #[schema(example = "payment.succeeded")]
    kind: String,
    /// Required for `payment.succeeded`.
    #[schema(value_type = Option<ProviderText>, inline)]
    invoice_number: Option<String>,
    /// Required for `credits.purchased`: the id of the user the credit is for.
    #[schema(value_type = Option<Uuid>)]
    user_id: Option<String>,
    /// Required for both: a decimal string.
    #[serde(default, with = "crate::domain::currency::decimal_string_option")]
    #[schema(value_type = Option<DecimalString>, inline)]
    amount: Option<Decimal>,
    /// Required for both: the invoice's (or the billing) currency.
    #[schema(value_type = Option<Currency>)]
    currency: Option<String>,
    /// Required for both: the provider's payment reference (each is applied once).
    #[schema(value_type = Option<ProviderText>, inline)]
    reference: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookStatus {
    /// Neither a `payment.succeeded` nor a `credits.purchased` event.
    Ignored,
    /// This event id was applied before.
    Duplicate,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookAck {
    pub status: WebhookStatus,
}

/// A 200 answer: an acknowledgement, or the payment or top-up this event's
/// reference recorded before.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum WebhookOutcome {
    Ack(WebhookAck),
    Recorded(Box<PaymentRecorded>),
    ToppedUp(Box<TopUp>),
}

/// A 201 answer: the payment, or the top-up, the event recorded.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum WebhookApplied {
    Recorded(Box<PaymentRecorded>),
    ToppedUp(Box<TopUp>),
}

/// Receives a signed payment event: `Payg-Signature: t=<unix>,v1=<hex
/// HMAC-SHA256 of "t.body">` with the shared `PAYG_WEBHOOK_SECRET`.
#[utoipa::path(
    post,
    path = "/api/v1/webhooks/payments",
    tag = "webhooks",
    request_body(content = PaymentEvent, content_type = "application/json"),
    params(("Payg-Signature" = String, Header, pattern = r"^t=[0-9]+(,v1=[0-9a-f]{64}){1,4}$",
        description = "`t=<unix seconds>,v1=<hex HMAC-SHA256 of \"t.body\">`, at most four `v1` (a rotation needs two)")),
    responses(
        (status = 201, description = "The payment (or the credit) was recorded", body = WebhookApplied),
        (status = 200, description = "Acknowledged: ignored, a duplicate event, or a payment or top-up already \
            recorded", body = WebhookOutcome),
        (status = 400, description = "`invalid_signature` or `stale_signature`: the signature is missing, wrong or \
            too old; `invalid_json`: the event does not parse; `validation_failed`: a bad id or missing fields",
            body = ErrorBody),
        (status = 404, description = "`not_found`: no invoice with that number, or no such user", body = ErrorBody),
        (status = 409, description = "`invoice_not_payable`: the invoice is void or already paid; \
            `reference_reused`: the reference was used for a different payment or top-up", body = ErrorBody),
        (status = 422, description = "`overpayment`: more than is outstanding; \
            `currency_mismatch`: not the invoice's currency", body = ErrorBody),
        (status = 429, description = "`too_many_requests`: too many webhooks from this address \
            (`PAYG_CLIENT_WEBHOOK_PER_MINUTE`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`webhooks_disabled`: `PAYG_WEBHOOK_SECRET` is not set", body = ErrorBody),
    )
)]
pub async fn payment_webhook(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let Some(secret) = state.config.billing.webhook_secret.as_ref() else {
        return Err(ApiError::webhooks_disabled());
    };
    // Before the HMAC: a flood of forged events costs no hashing.
    state.clients.take_webhook(&req)?;
    let header = req.headers().get("Payg-Signature").and_then(|v| v.to_str().ok());
    payments::verify_signature(header, &body, secret.expose().as_bytes(), state.now())?;
    let event: PaymentEvent = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("malformed event: {e}")))?;
    let id: EventId = event.id.parse()?;
    for text in [event.invoice_number.as_deref(), event.reference.as_deref()]
        .into_iter()
        .flatten()
    {
        text.parse::<ProviderText>()?;
    }
    if event.kind == "credits.purchased" {
        return credits_purchased(&state, id, event).await;
    }
    if event.kind != "payment.succeeded" {
        // Providers send many event types; acknowledging the rest stops retries.
        return Ok(HttpResponse::Ok().json(json!({"status": "ignored"})));
    }
    // The currency is required: an amount without one could be read in the
    // wrong unit.
    let (Some(number), Some(amount), Some(currency), Some(reference)) =
        (event.invoice_number, event.amount, event.currency, event.reference)
    else {
        return Err(ApiError::validation(
            "payment.succeeded needs invoice_number, amount, currency and reference",
        ));
    };
    let input = PaymentInput {
        amount,
        currency: Some(currency.parse::<Currency>()?),
        reference,
        method: "webhook".into(),
        source: PaymentSource::Webhook,
        recorded_by: None,
    };
    let mut conn = conn(&state.db).await?;
    let outcome =
        payments::record_webhook_payment(&mut conn, id.as_str(), &event.kind, &number, input, state.now()).await?;
    drop(conn);
    let Some(recorded) = outcome else {
        return Ok(HttpResponse::Ok().json(json!({"status": "duplicate"})));
    };
    state.payment_recorded(&recorded).await;
    Ok(if recorded.is_new() {
        HttpResponse::Created().json(recorded.into_body())
    } else {
        HttpResponse::Ok().json(recorded.into_body())
    })
}

/// A `credits.purchased` event: prepaid credit for a user, applied once per
/// event id (claimed in the top-up's transaction) and once per reference.
async fn credits_purchased(state: &AppState, id: EventId, event: PaymentEvent) -> ApiResult<HttpResponse> {
    let (Some(user_id), Some(amount), Some(currency), Some(reference)) =
        (event.user_id, event.amount, event.currency, event.reference)
    else {
        return Err(ApiError::validation(
            "credits.purchased needs user_id, amount, currency and reference",
        ));
    };
    let user_id: Uuid = user_id
        .parse()
        .map_err(|_| ApiError::validation("user_id must be a user's id (a UUID)"))?;
    let input = TopUpInput {
        amount,
        currency: Some(currency.parse::<Currency>()?),
        reference,
        source: MovementSource::Webhook,
        recorded_by: None,
    };
    let mut conn = conn(&state.db).await?;
    let outcome = credits::top_up_from_event(
        &mut conn,
        id.as_str(),
        &event.kind,
        user_id,
        input,
        state.config.billing.currency,
        state.now(),
    )
    .await?;
    if let Some(ToppedUp::Created(_)) = outcome {
        // A prepaid-only user refused for want of credit is asked again.
        state.authenticator.user_changed(user_id).await;
    }
    Ok(match outcome {
        None => HttpResponse::Ok().json(json!({"status": "duplicate"})),
        Some(ToppedUp::Created(top_up)) => HttpResponse::Created().json(top_up),
        Some(ToppedUp::Duplicate(top_up)) => HttpResponse::Ok().json(top_up),
    })
}
