//! Spending caps: who may set which cap, and the authority that grants
//! spending budget against them.
//!
//! PostgreSQL is the authority. An instance admits a capped user's calls
//! from budget it leased (`metering/spend.rs`); a lease is granted here, in
//! one transaction under the user's row lock, only while
//!
//! `charge_bound(the period's counted lines) + Σ held (every instance) + grant ≤ cap`
//!
//! (and, for a prepaid-only user, the same against their balance, less what
//! their open periods may still draw). Each admitted call reserves the most
//! it can add (`domain::spend`) and carries the reservation in its count;
//! the flush that counts it releases it from `held` in the same
//! transaction, so the counted usage and the held budget always add up to
//! at least what the calls will charge. Nothing lives in Redis: a Redis
//! restart cannot grant the same budget twice.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use diesel::result::Error as DieselError;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use crate::billing::credits::MAX_TOP_UP;
use crate::billing::statement::Statement;
use crate::domain::pricing::round_to_minor_unit;
use crate::domain::spend::{BoundLine, SpendRefusal, charge_bound, lease_size, reservation};
use crate::domain::webhook::NewEvent;
use crate::domain::{Currency, Period};
use crate::models::credit::CreditMovement;
use crate::models::price::{PriceBook, UNPRICED};
use crate::models::spend::{CapSettings, SpendLease};
use crate::models::usage::{UsageDelta, UsageKey, UsagePrice, VersionCounters};
use crate::models::webhook::Outbox;

#[derive(Debug, thiserror::Error)]
pub enum CapError {
    #[error("no such user")]
    UserNotFound,
    #[error("finance set a cap of {finance_cap} on your account: you may lower it, not raise or remove it")]
    SetByFinance { finance_cap: Decimal },
    #[error("amount must be zero or more, at most 1000000000000, with at most {0} decimal places")]
    BadAmount(u32),
    #[error(transparent)]
    Database(#[from] DieselError),
}

/// A user's spending cap as they (or finance) see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SpendingCap {
    /// The cap in force on each period's charge: the lower of the user's
    /// and finance's; `null` when neither set one.
    #[serde(with = "rust_decimal::serde::str_option")]
    #[schema(value_type = Option<String>, example = "25.00")]
    pub amount: Option<Decimal>,
    /// The cap the user set.
    #[serde(with = "rust_decimal::serde::str_option")]
    #[schema(value_type = Option<String>, example = "25.00")]
    pub user_cap: Option<Decimal>,
    /// The cap finance set: the user may lower it, not raise or remove it.
    #[serde(with = "rust_decimal::serde::str_option")]
    #[schema(value_type = Option<String>, example = "100.00")]
    pub finance_cap: Option<Decimal>,
    /// The user may not spend past their prepaid credit.
    pub prepaid_only: bool,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String, example = "12.50")]
    pub credit_balance: Decimal,
    pub currency: Currency,
    /// The current period.
    pub period: Period,
    /// What this period's calls have been charged so far (the current
    /// statement's total).
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String, example = "3.21")]
    pub charged: Decimal,
    /// What the cap leaves this period (`amount − charged`, at least 0);
    /// `null` without a cap.
    #[serde(with = "rust_decimal::serde::str_option")]
    #[schema(value_type = Option<String>, example = "21.79")]
    pub remaining: Option<Decimal>,
}

/// Checks a cap amount: zero or more (zero: nothing may be spent), in the
/// currency's minor unit at most, and no larger than a top-up may be.
pub fn check_amount(amount: Option<Decimal>, currency: Currency) -> Result<Option<Decimal>, CapError> {
    let Some(amount) = amount else { return Ok(None) };
    let decimals = currency.minor_units();
    if amount.is_sign_negative() || amount > MAX_TOP_UP || amount.normalize().scale() > decimals {
        return Err(CapError::BadAmount(decimals));
    }
    let mut amount = amount;
    amount.rescale(decimals);
    Ok(Some(amount))
}

/// The user's cap and this period's charge under it.
pub async fn view(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    period: Period,
    currency: Currency,
    now: DateTime<Utc>,
) -> Result<SpendingCap, CapError> {
    let settings = CapSettings::find(conn, user_id).await?.ok_or(CapError::UserNotFound)?;
    let statement = Statement::for_user(conn, user_id, period, currency, now).await?;
    let amount = settings.effective_cap();
    // Every amount with the currency's decimals ("0.00", not "0").
    let shown = |a: Decimal| round_to_minor_unit(a, currency);
    Ok(SpendingCap {
        amount: amount.map(shown),
        user_cap: settings.cap_user.map(shown),
        finance_cap: settings.cap_finance.map(shown),
        prepaid_only: settings.prepaid_only,
        credit_balance: shown(settings.credit_balance),
        currency,
        period,
        charged: shown(statement.total),
        remaining: amount.map(|cap| shown((cap - statement.total).max(Decimal::ZERO))),
    })
}

/// The user sets (or, with `None`, removes) their own cap. Under a cap
/// finance set, they may only go lower.
pub async fn set_own(conn: &mut AsyncPgConnection, user_id: Uuid, amount: Option<Decimal>) -> Result<(), CapError> {
    conn.transaction(async |conn| {
        let settings = CapSettings::lock(conn, user_id).await?.ok_or(CapError::UserNotFound)?;
        if let Some(finance_cap) = settings.cap_finance
            && amount.is_none_or(|a| a > finance_cap)
        {
            return Err(CapError::SetByFinance { finance_cap });
        }
        CapSettings::set_user_cap(conn, user_id, amount).await?;
        Ok(())
    })
    .await
}

/// Finance sets (or removes) its cap on a user, and whether they are
/// prepaid-only (`None`: as it was).
pub async fn set_by_finance(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    amount: Option<Decimal>,
    prepaid_only: Option<bool>,
) -> Result<(), CapError> {
    conn.transaction(async |conn| {
        let settings = CapSettings::lock(conn, user_id).await?.ok_or(CapError::UserNotFound)?;
        let prepaid_only = prepaid_only.unwrap_or(settings.prepaid_only);
        CapSettings::set_finance_cap(conn, user_id, amount, prepaid_only).await?;
        Ok(())
    })
    .await
}

/// An instance asks for budget for one (user, period).
#[derive(Debug, Clone, Copy)]
pub struct LeaseRequest {
    pub user_id: Uuid,
    pub period: Period,
    pub instance_id: Uuid,
    /// Unspent budget of its previous lease it gives back in the same step.
    pub returning: Decimal,
    /// The call that asks: its (API, price version) line, the most it can
    /// cost, and whether this instance already reserved that line's
    /// rounding. What it must reserve (`domain::spend::reservation`) is
    /// the least a grant gives.
    pub line: (i32, i32),
    pub per_call: Decimal,
    pub line_reserved_here: bool,
    /// What it would like (about two seconds of this user's spending).
    pub want: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAnswer {
    Granted {
        amount: Decimal,
        /// The (API, price version) lines the period has: a call opening
        /// any other reserves its rounding too.
        lines: Vec<(i32, i32)>,
    },
    Refused(SpendRefusal),
    /// The user has no cap (any more): calls need no budget.
    Uncapped,
}

/// Grants budget if the cap (and, prepaid-only, the balance) allows it.
pub async fn lease(
    conn: &mut AsyncPgConnection,
    request: LeaseRequest,
    billing_tz: Tz,
    currency: Currency,
) -> Result<LeaseAnswer, DieselError> {
    conn.transaction(async |conn| {
        let LeaseRequest {
            user_id,
            period,
            instance_id,
            returning,
            line,
            per_call,
            line_reserved_here,
            want,
        } = request;
        let Some(settings) = CapSettings::lock(conn, user_id).await? else {
            return Ok(LeaseAnswer::Uncapped);
        };
        let leases = SpendLease::lock_for_user(conn, user_id).await?;
        let mut held_in_period = -returning;
        let mut held_in_all = -returning;
        let mut periods = vec![period];
        for lease in &leases {
            held_in_all += lease.held;
            if lease.period == period.first_day() {
                held_in_period += lease.held;
            } else if lease.held > Decimal::ZERO
                && let Some(other) = Period::from_first_day(lease.period)
            {
                periods.push(other);
            }
        }
        if !settings.capped() {
            if !returning.is_zero() {
                SpendLease::add_held(conn, user_id, period, instance_id, -returning).await?;
            }
            return Ok(LeaseAnswer::Uncapped);
        }
        let usage = UsagePrice::of_user_periods(conn, user_id, &periods).await?;
        let mut api_ids: Vec<i32> = usage.iter().map(|u| u.api_id).collect();
        api_ids.sort_unstable();
        api_ids.dedup();
        let book = PriceBook::load(conn, Some(&api_ids)).await?;
        let bounds = bounds_per_period(&usage, &book, billing_tz, currency);
        let bound_of = |p: Period| bounds.get(&p).copied().unwrap_or_default();

        let mut available = None;
        let mut refusal = SpendRefusal::CapReached;
        if let Some(cap) = settings.effective_cap() {
            available = Some(cap - bound_of(period) - held_in_period);
        }
        if settings.prepaid_only {
            let drawn: HashMap<_, _> = CapSettings::drawn(conn, user_id, &periods).await?.into_iter().collect();
            let to_draw: Decimal = periods
                .iter()
                .map(|p| (bound_of(*p) - drawn.get(&p.first_day()).copied().unwrap_or_default()).max(Decimal::ZERO))
                .sum();
            let credit = settings.credit_balance - to_draw - held_in_all;
            if available.is_none_or(|a| credit < a) {
                available = Some(credit);
                refusal = SpendRefusal::CreditsExhausted;
            }
        }
        let available = available.unwrap_or_default();
        let lines: Vec<(i32, i32)> = usage
            .iter()
            .filter(|u| u.period == period.first_day())
            .map(|u| (u.api_id, u.price_id))
            .collect();
        let need = reservation(per_call, !line_reserved_here && !lines.contains(&line), currency);
        match lease_size(available, need, want.max(need)) {
            Some(amount) => {
                SpendLease::add_held(conn, user_id, period, instance_id, amount - returning).await?;
                Ok(LeaseAnswer::Granted { amount, lines })
            }
            None => {
                if !returning.is_zero() {
                    SpendLease::add_held(conn, user_id, period, instance_id, -returning).await?;
                }
                // Heard once per period and cap (credit: once per credit added).
                let event = match (refusal, settings.effective_cap()) {
                    (SpendRefusal::CapReached, Some(cap)) => NewEvent::cap_reached(user_id, period, cap, currency),
                    _ => {
                        let since = CreditMovement::latest_added(conn, &[user_id])
                            .await?
                            .first()
                            .map(|(_, id)| *id);
                        NewEvent::credits_exhausted(user_id, since, settings.credit_balance, currency)
                    }
                };
                Outbox::emit(conn, &[event], Utc::now()).await?;
                Ok(LeaseAnswer::Refused(refusal))
            }
        }
    })
    .await
}

/// Per period, the most its counted lines can end up charging
/// (`domain::spend::charge_bound`): an API's version in force when the
/// period began prices from call 1 whatever comes late; later versions at
/// their highest unit price.
fn bounds_per_period(
    usage: &[VersionCounters],
    book: &PriceBook,
    billing_tz: Tz,
    currency: Currency,
) -> HashMap<Period, Decimal> {
    let mut per_period: BTreeMap<Period, Vec<&VersionCounters>> = BTreeMap::new();
    for row in usage {
        if let Some(period) = Period::from_first_day(row.period) {
            per_period.entry(period).or_default().push(row);
        }
    }
    per_period
        .into_iter()
        .map(|(period, rows)| {
            let begins = period.starts_at(billing_tz);
            let versions: Vec<_> = rows
                .iter()
                .map(|row| {
                    let first = book.in_force_at(row.api_id, begins).map_or(UNPRICED, |e| e.id);
                    let (_, version) = book.version_or_free(row.api_id, row.price_id, currency);
                    (row, first == row.price_id, version)
                })
                .collect();
            let bound = charge_bound(
                versions.iter().map(|(row, first, version)| BoundLine {
                    billable_calls: row.calls - row.failed_calls,
                    price: version,
                    first_of_period: *first,
                }),
                currency,
            );
            (period, bound)
        })
        .collect()
}

/// Releases what the counted calls of `deltas` reserved from `instance`'s
/// leases, inside the transaction that counts them.
pub async fn release_reserved(
    conn: &mut AsyncPgConnection,
    instance_id: Uuid,
    deltas: &[(UsageKey, UsageDelta)],
) -> Result<(), DieselError> {
    let mut amounts: BTreeMap<(Uuid, Period), Decimal> = BTreeMap::new();
    for (key, delta) in deltas {
        if !delta.reserved.is_zero() {
            *amounts.entry((key.user_id, key.period())).or_default() += delta.reserved;
        }
    }
    if amounts.is_empty() {
        return Ok(());
    }
    let amounts: Vec<_> = amounts.into_iter().map(|((u, p), a)| (u, p, a)).collect();
    SpendLease::release(conn, instance_id, &amounts).await
}

/// Gives unspent budget back (`amounts`: per user and period, sorted).
pub async fn give_back(
    conn: &mut AsyncPgConnection,
    instance_id: Uuid,
    amounts: &[(Uuid, Period, Decimal)],
) -> Result<(), DieselError> {
    SpendLease::release(conn, instance_id, amounts).await
}
