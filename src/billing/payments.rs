//! Money received against invoices: recorded by finance or by a signed
//! payment-provider webhook; idempotent on the provider's reference. What
//! an invoice still asks for is its total less the prepaid credit applied
//! at the close and what was paid.

use chrono::{DateTime, Utc};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use hmac::{Hmac, Mac};
use rust_decimal::Decimal;
use serde::Serialize;
use sha2::Sha256;
use uuid::Uuid;

use crate::billing::credits;
use crate::domain::Currency;
use crate::domain::webhook::{EventType, NewEvent};
use crate::models::invoice::{Invoice, InvoiceStatus, Payment, WebhookEvent};
use crate::models::webhook::{Outbox, invoice_facts};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentSource {
    Finance,
    Webhook,
}

#[derive(Debug, Clone)]
pub struct PaymentInput {
    pub amount: Decimal,
    pub currency: Option<Currency>,
    pub reference: String,
    pub method: String,
    pub source: PaymentSource,
    pub recorded_by: Option<Uuid>,
}

/// What recording a payment answers: the payment and the invoice after it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PaymentRecorded {
    pub payment: Payment,
    /// The invoice after the payment (`paid` once fully paid).
    pub invoice: Invoice,
}

#[derive(Debug)]
pub enum Recorded {
    Created {
        payment: Payment,
        invoice: Invoice,
    },
    /// The same reference was already recorded for this invoice and amount.
    Duplicate {
        payment: Payment,
        invoice: Invoice,
    },
}

impl Recorded {
    /// Whether this call recorded the payment (false: it had been before).
    pub fn is_new(&self) -> bool {
        matches!(self, Recorded::Created { .. })
    }

    pub fn invoice(&self) -> &Invoice {
        match self {
            Recorded::Created { invoice, .. } | Recorded::Duplicate { invoice, .. } => invoice,
        }
    }

    pub fn into_body(self) -> PaymentRecorded {
        match self {
            Recorded::Created { payment, invoice } | Recorded::Duplicate { payment, invoice } => {
                PaymentRecorded { payment, invoice }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error("invoice not found")]
    NotFound,
    #[error("invoice {0} is void")]
    Void(String),
    #[error("invoice {0} is already paid")]
    AlreadyPaid(String),
    #[error("payment of {amount} exceeds the {outstanding} outstanding on invoice {number}")]
    Overpayment {
        number: String,
        amount: Decimal,
        outstanding: Decimal,
    },
    #[error("payment currency {given} does not match the invoice currency {expected}")]
    CurrencyMismatch { given: String, expected: String },
    #[error("amount must be positive with at most {0} decimal places")]
    BadAmount(u32),
    #[error("reference {0:?} was already used for a different payment")]
    ReferenceReused(String),
    #[error(transparent)]
    Database(#[from] DieselError),
}

/// Records a payment under a lock on the invoice. When payments reach the
/// total the invoice becomes `paid`.
pub async fn record_payment(
    conn: &mut AsyncPgConnection,
    invoice_id: Uuid,
    input: PaymentInput,
    now: DateTime<Utc>,
) -> Result<Recorded, PaymentError> {
    conn.transaction::<_, PaymentError, _>(async |conn| {
        let invoice = Invoice::lock(conn, invoice_id).await?.ok_or(PaymentError::NotFound)?;
        let existing = Payment::find_by_reference(conn, &input.reference).await?;
        if let Some(payment) = existing {
            return if payment.invoice_id == invoice.id && payment.amount == input.amount {
                Ok(Recorded::Duplicate { payment, invoice })
            } else {
                Err(PaymentError::ReferenceReused(input.reference.clone()))
            };
        }
        let currency: Currency = invoice.currency.parse().unwrap_or(Currency::USD);
        if let Some(given) = input.currency
            && given != currency
        {
            return Err(PaymentError::CurrencyMismatch {
                given: given.code().to_owned(),
                expected: currency.code().to_owned(),
            });
        }
        if input.amount <= Decimal::ZERO || input.amount.normalize().scale() > currency.minor_units() {
            return Err(PaymentError::BadAmount(currency.minor_units()));
        }
        match invoice.status {
            InvoiceStatus::Void => return Err(PaymentError::Void(invoice.number.clone())),
            InvoiceStatus::Paid => return Err(PaymentError::AlreadyPaid(invoice.number.clone())),
            InvoiceStatus::Issued => {}
        }
        let outstanding = invoice.total - invoice.credit_applied - invoice.amount_paid;
        if input.amount > outstanding {
            return Err(PaymentError::Overpayment {
                number: invoice.number.clone(),
                amount: input.amount,
                outstanding,
            });
        }
        let payment = Payment {
            id: Uuid::new_v4(),
            invoice_id: invoice.id,
            amount: input.amount,
            currency: currency.code().to_owned(),
            reference: input.reference.clone(),
            method: input.method.clone(),
            source: match input.source {
                PaymentSource::Finance => "finance".into(),
                PaymentSource::Webhook => "webhook".into(),
            },
            recorded_by: input.recorded_by,
            received_at: now,
        };
        match Payment::insert(conn, &payment).await {
            Ok(_) => {}
            // Another invoice's payment took this reference concurrently.
            Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => {
                return Err(PaymentError::ReferenceReused(input.reference.clone()));
            }
            Err(e) => return Err(e.into()),
        }
        let paid = invoice.amount_paid + input.amount;
        let settled = paid + invoice.credit_applied == invoice.total;
        let invoice = Invoice::set_paid(conn, invoice.id, paid, settled, now).await?;
        if settled {
            let event = NewEvent::invoice(EventType::InvoicePaid, &invoice_facts(&invoice));
            Outbox::emit(conn, &[event], now).await?;
        }
        Ok(Recorded::Created { payment, invoice })
    })
    .await
}

#[derive(Debug, thiserror::Error)]
pub enum VoidError {
    #[error("invoice not found")]
    NotFound,
    #[error("only an invoice no payment was recorded against can be voided (this one is {0})")]
    NotVoidable(String),
    #[error(transparent)]
    Database(#[from] DieselError),
}

pub async fn void_invoice(
    conn: &mut AsyncPgConnection,
    invoice_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Invoice, VoidError> {
    conn.transaction::<_, VoidError, _>(async |conn| {
        let invoice = Invoice::lock(conn, invoice_id).await?.ok_or(VoidError::NotFound)?;
        // Issued, or paid by credit alone: nothing was paid that would need
        // refunding (credit is given back below).
        if invoice.status == InvoiceStatus::Void || !invoice.amount_paid.is_zero() {
            let why = if invoice.amount_paid.is_zero() {
                invoice.status.to_string()
            } else {
                "paid, in part or in full".to_owned()
            };
            return Err(VoidError::NotVoidable(why));
        }
        // Credit the invoice applied goes back to the balance.
        credits::give_back_on_void(
            conn,
            invoice.user_id,
            invoice.id,
            invoice.credit_applied,
            &invoice.currency,
            now,
        )
        .await?;
        Ok(Invoice::set_void(conn, invoice.id, now).await?)
    })
    .await
}

/// Applies a payment provider's event once: its id is claimed in the same
/// transaction as the payment, so an event is applied exactly once however
/// often it is delivered. `None`: this event id was applied before.
pub async fn record_webhook_payment(
    conn: &mut AsyncPgConnection,
    event_id: &str,
    event_type: &str,
    invoice_number: &str,
    input: PaymentInput,
    now: DateTime<Utc>,
) -> Result<Option<Recorded>, PaymentError> {
    let invoice = Invoice::find_by_number(conn, invoice_number)
        .await?
        .ok_or(PaymentError::NotFound)?;
    conn.transaction::<_, PaymentError, _>(async |conn| {
        if !WebhookEvent::claim(conn, event_id, event_type).await? {
            return Ok(None);
        }
        record_payment(conn, invoice.id, input, now).await.map(Some)
    })
    .await
}

/// Signatures older (or further in the future) than this are refused, so a
/// captured request cannot be replayed later.
pub const SIGNATURE_TOLERANCE_SECS: u64 = 300;

/// At most this many `v1=` signatures are checked per request (two cover a
/// secret rotation): each one re-hashes the whole body.
pub const MAX_SIGNATURES: usize = 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("missing Payg-Signature header")]
    Missing,
    #[error("malformed Payg-Signature header (expected t=<unix seconds>,v1=<hex>)")]
    Malformed,
    #[error("signature timestamp is outside the {SIGNATURE_TOLERANCE_SECS} second tolerance")]
    Stale,
    #[error("signature does not match")]
    Mismatch,
}

/// The `v1` signature of a body at a timestamp: hex HMAC-SHA256 of `"t.body"`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Checks `Payg-Signature: t=<unix seconds>,v1=<hex>` (several `v1` allowed,
/// for secret rotation) in constant time.
pub fn verify_signature(
    header: Option<&str>,
    body: &[u8],
    secret: &[u8],
    now: DateTime<Utc>,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => timestamp = Some(v.parse::<i64>().map_err(|_| SignatureError::Malformed)?),
            Some(("v1", _)) if candidates.len() == MAX_SIGNATURES => return Err(SignatureError::Malformed),
            Some(("v1", v)) => candidates.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?),
            Some(_) => {}
            None => return Err(SignatureError::Malformed),
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    // abs_diff: `now - t` overflows for a `t` near i64::MIN.
    if now.timestamp().abs_diff(timestamp) > SIGNATURE_TOLERANCE_SECS {
        return Err(SignatureError::Stale);
    }
    let ok = candidates
        .iter()
        .any(|sig| mac(secret, timestamp, body).verify_slice(sig).is_ok());
    if ok { Ok(()) } else { Err(SignatureError::Mismatch) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_for_the_right_secret_body_and_time() {
        let now = Utc::now();
        let t = now.timestamp();
        let body = br#"{"id":"evt_1"}"#;
        let sig = sign(b"whsec", t, body);
        let header = format!("t={t},v1={sig}");
        assert_eq!(verify_signature(Some(&header), body, b"whsec", now), Ok(()));
        assert_eq!(
            verify_signature(Some(&header), b"{}", b"whsec", now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(Some(&header), body, b"other", now),
            Err(SignatureError::Mismatch)
        );
        let later = now + chrono::Duration::seconds(301);
        assert_eq!(
            verify_signature(Some(&header), body, b"whsec", later),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_signature(None, body, b"whsec", now),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_signature(Some("t=x,v1=00"), body, b"whsec", now),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_signature(Some(&format!("t={t}")), body, b"whsec", now),
            Err(SignatureError::Malformed)
        );
        let rotated = format!("t={t},v1={},v1={sig}", sign(b"old", t, body));
        assert_eq!(verify_signature(Some(&rotated), body, b"whsec", now), Ok(()));
    }

    #[test]
    fn a_timestamp_near_the_edge_of_i64_is_stale_not_an_overflow() {
        let now = Utc::now();
        let body = b"{}";
        for t in [i64::MIN, now.timestamp().wrapping_sub(i64::MAX), i64::MAX] {
            let header = format!("t={t},v1={}", sign(b"whsec", t, body));
            assert_eq!(
                verify_signature(Some(&header), body, b"whsec", now),
                Err(SignatureError::Stale),
                "t={t}"
            );
        }
    }

    #[test]
    fn more_signatures_than_a_rotation_needs_are_refused_unhashed() {
        let now = Utc::now();
        let t = now.timestamp();
        let body = b"{}";
        let sig = sign(b"whsec", t, body);
        let four = format!("t={t},v1={0},v1={0},v1={0},v1={sig}", "00".repeat(32));
        assert_eq!(verify_signature(Some(&four), body, b"whsec", now), Ok(()));
        let five = format!("t={t},v1={0},v1={0},v1={0},v1={0},v1={sig}", "00".repeat(32));
        assert_eq!(
            verify_signature(Some(&five), body, b"whsec", now),
            Err(SignatureError::Malformed)
        );
    }
}
