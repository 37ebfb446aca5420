//! Money received against invoices: recorded by finance or by a signed
//! payment-provider webhook; idempotent on the provider's reference.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use hmac::{Hmac, Mac};
use rust_decimal::Decimal;
use sha2::Sha256;
use uuid::Uuid;

use crate::billing::Currency;
use crate::models::invoice::{Invoice, InvoiceStatus, Payment};
use crate::schema::{invoices, payments, webhook_events};

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
        let existing: Option<Payment> = payments::table
            .filter(payments::reference.eq(&input.reference))
            .select(Payment::as_select())
            .first(conn)
            .await
            .optional()?;
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
        let outstanding = invoice.total - invoice.amount_paid;
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
        match diesel::insert_into(payments::table)
            .values(&payment)
            .execute(conn)
            .await
        {
            Ok(_) => {}
            // Another invoice's payment took this reference concurrently.
            Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => {
                return Err(PaymentError::ReferenceReused(input.reference.clone()));
            }
            Err(e) => return Err(e.into()),
        }
        let paid = invoice.amount_paid + input.amount;
        let settled = paid == invoice.total;
        let invoice: Invoice = diesel::update(invoices::table.find(invoice.id))
            .set((
                invoices::amount_paid.eq(paid),
                invoices::status.eq(if settled {
                    InvoiceStatus::Paid
                } else {
                    InvoiceStatus::Issued
                }),
                invoices::paid_at.eq(settled.then_some(now)),
            ))
            .returning(Invoice::as_returning())
            .get_result(conn)
            .await?;
        Ok(Recorded::Created { payment, invoice })
    })
    .await
}

#[derive(Debug, thiserror::Error)]
pub enum VoidError {
    #[error("invoice not found")]
    NotFound,
    #[error("only an issued invoice with no payments can be voided (this one is {0})")]
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
        if invoice.status != InvoiceStatus::Issued || !invoice.amount_paid.is_zero() {
            let why = if invoice.amount_paid.is_zero() {
                invoice.status.to_string()
            } else {
                "partly paid".to_owned()
            };
            return Err(VoidError::NotVoidable(why));
        }
        Ok(diesel::update(invoices::table.find(invoice.id))
            .set((
                invoices::status.eq(InvoiceStatus::Void),
                invoices::voided_at.eq(Some(now)),
            ))
            .returning(Invoice::as_returning())
            .get_result(conn)
            .await?)
    })
    .await
}

/// Marks a webhook event as applied; false when it had been already.
pub async fn claim_webhook_event(conn: &mut AsyncPgConnection, id: &str, event_type: &str) -> QueryResult<bool> {
    let inserted = diesel::insert_into(webhook_events::table)
        .values((webhook_events::id.eq(id), webhook_events::event_type.eq(event_type)))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(inserted == 1)
}

/// Signatures older (or further in the future) than this are refused, so a
/// captured request cannot be replayed later.
pub const SIGNATURE_TOLERANCE_SECS: i64 = 300;

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
            Some(("v1", v)) => candidates.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?),
            Some(_) => {}
            None => return Err(SignatureError::Malformed),
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if (now.timestamp() - timestamp).abs() > SIGNATURE_TOLERANCE_SECS {
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
}
