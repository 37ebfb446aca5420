//! Prepaid credit: top-ups (finance, or a `credits.purchased` payment
//! event), idempotent on their reference as payments are; usage drawing on
//! the balance as it is flushed; credit given back when an invoice is
//! voided. Every movement is written with its balance change in its
//! cause's transaction (`models::credit`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use crate::domain::{Currency, Period};
use crate::models::credit::{self, CreditMovement, Drawable, MovementKind, MovementSource};
use crate::models::invoice::{ClosedPeriod, WebhookEvent};

#[derive(Debug, Clone)]
pub struct TopUpInput {
    pub amount: Decimal,
    pub currency: Option<Currency>,
    pub reference: String,
    pub source: MovementSource,
    pub recorded_by: Option<Uuid>,
}

/// A top-up and the balance after it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TopUp {
    pub movement: CreditMovement,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String, example = "25.00")]
    pub balance: Decimal,
}

#[derive(Debug)]
pub enum ToppedUp {
    Created(TopUp),
    /// This reference was recorded before, for this user and amount.
    Duplicate(TopUp),
}

/// The largest single top-up (10^12): far above any real one, and far
/// enough below `rust_decimal`'s range that no balance can leave it.
pub const MAX_TOP_UP: Decimal = Decimal::from_parts(3_567_587_328, 232, 0, false, 0);

#[derive(Debug, thiserror::Error)]
pub enum CreditError {
    #[error("no such user")]
    UserNotFound,
    #[error("reference {0} was already used for another top-up")]
    ReferenceReused(String),
    #[error("credit is in the billing currency {expected}, not {given}")]
    CurrencyMismatch { given: String, expected: String },
    #[error("amount must be positive, at most 1000000000000, with at most {0} decimal places")]
    BadAmount(u32),
    #[error(transparent)]
    Database(#[from] DieselError),
}

/// Adds `input.amount` of credit to `user_id`'s balance, once per reference:
/// the same reference again for the same user and amount is the same
/// movement (`Duplicate`); for anything else, `ReferenceReused`.
pub async fn top_up(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    input: TopUpInput,
    currency: Currency,
    now: DateTime<Utc>,
) -> Result<ToppedUp, CreditError> {
    if let Some(given) = input.currency
        && given != currency
    {
        return Err(CreditError::CurrencyMismatch {
            given: given.code().to_owned(),
            expected: currency.code().to_owned(),
        });
    }
    if input.amount <= Decimal::ZERO
        || input.amount > MAX_TOP_UP
        || input.amount.normalize().scale() > currency.minor_units()
    {
        return Err(CreditError::BadAmount(currency.minor_units()));
    }
    let attempt = conn
        .transaction::<_, CreditError, _>(async |conn| {
            let Some(balance) = credit::balance_for_update(conn, user_id).await? else {
                return Err(CreditError::UserNotFound);
            };
            if let Some(existing) = CreditMovement::find_by_reference(conn, &input.reference).await? {
                return same_top_up(existing, user_id, &input, balance).map(ToppedUp::Duplicate);
            }
            let movement = CreditMovement {
                id: Uuid::new_v4(),
                user_id,
                kind: MovementKind::TopUp,
                amount: input.amount,
                currency: currency.code().to_owned(),
                reference: Some(input.reference.clone()),
                period: None,
                invoice_id: None,
                source: input.source,
                recorded_by: input.recorded_by,
                created_at: now,
                updated_at: now,
            };
            let (movement, balance) = CreditMovement::insert(conn, &movement).await?;
            Ok(ToppedUp::Created(TopUp { movement, balance }))
        })
        .await;
    match attempt {
        // The same reference was recorded concurrently (by another user's
        // top-up, or this one retried): answer as if it had come first.
        Err(CreditError::Database(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _))) => {
            let existing = CreditMovement::find_by_reference(conn, &input.reference).await?;
            let balance = credit::balance(conn, user_id).await?.unwrap_or_default();
            match existing {
                Some(existing) => same_top_up(existing, user_id, &input, balance).map(ToppedUp::Duplicate),
                None => Err(CreditError::ReferenceReused(input.reference)),
            }
        }
        other => other,
    }
}

/// Applies a payment provider's `credits.purchased` event once: its id is
/// claimed in the top-up's transaction. `None`: this event id was applied
/// before.
pub async fn top_up_from_event(
    conn: &mut AsyncPgConnection,
    event_id: &str,
    event_type: &str,
    user_id: Uuid,
    input: TopUpInput,
    currency: Currency,
    now: DateTime<Utc>,
) -> Result<Option<ToppedUp>, CreditError> {
    conn.transaction::<_, CreditError, _>(async |conn| {
        if !WebhookEvent::claim(conn, event_id, event_type).await? {
            return Ok(None);
        }
        top_up(conn, user_id, input, currency, now).await.map(Some)
    })
    .await
}

fn same_top_up(
    existing: CreditMovement,
    user_id: Uuid,
    input: &TopUpInput,
    balance: Decimal,
) -> Result<TopUp, CreditError> {
    if existing.user_id == user_id && existing.kind == MovementKind::TopUp && existing.amount == input.amount {
        Ok(TopUp {
            movement: existing,
            balance,
        })
    } else {
        Err(CreditError::ReferenceReused(input.reference.clone()))
    }
}

/// What a (user, period)'s usage draws from credit when its charge changes
/// by `change`: a rise draws as much of it as the balance covers; a fall
/// gives back what was drawn, up to the fall (credit is returned before
/// what is owed shrinks). Negative: credit given back.
pub fn draw(change: Decimal, balance: Decimal, drawn: Decimal) -> Decimal {
    if change > Decimal::ZERO {
        change.min(balance.max(Decimal::ZERO))
    } else {
        -(-change).min(drawn.max(Decimal::ZERO))
    }
}

/// Draws on credit for what a flush changed in each (user, period)'s charge
/// (`changes`: sorted by user, then period), inside the flush's transaction,
/// after the users' rows were locked and their `total_cost` moved. Periods
/// already closed draw nothing: their invoices are issued, with the credit
/// they applied. Returns each user whose balance moved, with the balance
/// after.
pub async fn draw_for_usage(
    conn: &mut AsyncPgConnection,
    changes: &[((Uuid, Period), Decimal)],
    currency: Currency,
) -> Result<Vec<(Uuid, Decimal)>, DieselError> {
    let keys: Vec<(Uuid, Period)> = changes.iter().map(|(k, _)| *k).collect();
    let drawable = CreditMovement::drawable(conn, &keys).await?;
    if drawable.is_empty() {
        return Ok(Vec::new());
    }
    let mut periods: Vec<Period> = drawable.iter().map(|d| d.period).collect();
    periods.sort_unstable();
    periods.dedup();
    let mut closed = Vec::new();
    for period in periods {
        // The close of this period reads each user's draw: one that is
        // running finishes before this draw is decided, one that starts
        // later waits for it and sees it (no draw is left out of an
        // invoice). Other periods' closes are not waited for.
        ClosedPeriod::hold_off_close_of(conn, period).await?;
        if ClosedPeriod::find(conn, period).await?.is_some() {
            closed.push(period);
        }
    }
    let drawable: HashMap<(Uuid, Period), Drawable> =
        drawable.into_iter().map(|d| ((d.user_id, d.period), d)).collect();
    let mut draws: Vec<(Uuid, Period, Decimal)> = Vec::new();
    // Each user whose balance moved, and their balance after.
    let mut drawn_down: Vec<(Uuid, Decimal)> = Vec::new();
    let mut balance: Option<(Uuid, Decimal)> = None;
    for ((user_id, period), change) in changes {
        let Some(found) = drawable.get(&(*user_id, *period)) else {
            continue;
        };
        if closed.contains(period) {
            continue;
        }
        // One user's periods in one flush share their balance.
        let left = match balance {
            Some((id, left)) if id == *user_id => left,
            _ => found.balance,
        };
        let drawn = draw(*change, left, found.drawn);
        balance = Some((*user_id, left - drawn));
        if !drawn.is_zero() {
            draws.push((*user_id, *period, drawn));
            match drawn_down.last_mut() {
                Some((id, after)) if id == user_id => *after = left - drawn,
                _ => drawn_down.push((*user_id, left - drawn)),
            }
        }
    }
    CreditMovement::record_draws(conn, &draws, currency.code()).await?;
    Ok(drawn_down)
}

/// Gives back the credit a voided invoice had applied, in the void's
/// transaction.
pub async fn give_back_on_void(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    invoice_id: Uuid,
    credit_applied: Decimal,
    currency: &str,
    now: DateTime<Utc>,
) -> Result<(), DieselError> {
    if credit_applied <= Decimal::ZERO {
        return Ok(());
    }
    credit::balance_for_update(conn, user_id).await?;
    let movement = CreditMovement {
        id: Uuid::new_v4(),
        user_id,
        kind: MovementKind::Adjustment,
        amount: credit_applied,
        currency: currency.to_owned(),
        reference: None,
        period: None,
        invoice_id: Some(invoice_id),
        source: MovementSource::Void,
        recorded_by: None,
        created_at: now,
        updated_at: now,
    };
    CreditMovement::insert(conn, &movement).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    #[test]
    fn a_rise_draws_what_the_balance_covers_and_a_fall_gives_back_what_was_drawn() {
        assert_eq!(draw(dec!(3.00), dec!(10.00), dec!(0)), dec!(3.00));
        assert_eq!(draw(dec!(3.00), dec!(1.25), dec!(0)), dec!(1.25));
        assert_eq!(draw(dec!(3.00), dec!(0), dec!(5)), dec!(0));
        assert_eq!(draw(dec!(-2.00), dec!(0), dec!(5.00)), dec!(-2.00));
        assert_eq!(draw(dec!(-2.00), dec!(7), dec!(0.50)), dec!(-0.50));
        assert_eq!(draw(dec!(0), dec!(7), dec!(1)), dec!(0));
    }
}
