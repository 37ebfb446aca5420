//! Usage alerts: the thresholds a user set on a period's charge, and the
//! credit balance below which they want to hear — and the events a flush
//! sets off against them, written in the flush's transaction.
//!
//! Each event happens once (`domain::webhook::NewEvent`'s dedupe keys): a
//! threshold once per period, `credits.low` and `credits.exhausted` once per
//! credit added (a top-up, an adjustment in the user's favour, voided usage
//! given back). A threshold set below what the period was already charged is
//! reached on the next flush that charges the user.

use std::collections::HashMap;

use chrono::Utc;
use diesel::QueryResult;
use diesel_async::AsyncPgConnection;
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use crate::billing::statement::Statement;
use crate::domain::pricing::round_to_minor_unit;
use crate::domain::webhook::{NewEvent, check_thresholds};
use crate::domain::{Currency, Period};
use crate::models::credit::CreditMovement;
use crate::models::webhook::{AlertSettings, Outbox};

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
}

/// A user's alerts as they see them.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Alerts {
    /// Charge thresholds of each period, in the billing currency, lowest
    /// first: crossing one emits `usage.threshold_reached` once per period.
    #[schema(value_type = Vec<String>, example = json!(["5.00", "20.00"]))]
    pub thresholds: Vec<String>,
    /// `credits.low` is emitted (once per credit added) when usage takes the
    /// credit balance below this; `null`: never.
    #[serde(with = "rust_decimal::serde::str_option")]
    #[schema(value_type = Option<String>, example = "2.00")]
    pub credits_low_below: Option<Decimal>,
    pub currency: Currency,
}

fn view(settings: &AlertSettings, currency: Currency) -> Alerts {
    Alerts {
        thresholds: settings
            .thresholds
            .iter()
            .map(|t| round_to_minor_unit(*t, currency).to_string())
            .collect(),
        credits_low_below: settings.credits_low_below.map(|b| round_to_minor_unit(b, currency)),
        currency,
    }
}

pub async fn get(conn: &mut AsyncPgConnection, user_id: Uuid, currency: Currency) -> Result<Alerts, AlertError> {
    Ok(view(&AlertSettings::find(conn, user_id).await?, currency))
}

/// Replaces the user's alerts.
pub async fn set(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    thresholds: &[Decimal],
    credits_low_below: Option<Decimal>,
    currency: Currency,
) -> Result<Alerts, AlertError> {
    let thresholds = check_thresholds(thresholds, currency).map_err(AlertError::Invalid)?;
    let credits_low_below = match credits_low_below {
        Some(below) => Some(
            check_thresholds(&[below], currency)
                .map_err(|_| {
                    AlertError::Invalid(format!(
                        "credits_low_below must be more than 0 with at most {} decimal places",
                        currency.minor_units()
                    ))
                })?
                .remove(0),
        ),
        None => None,
    };
    let settings = AlertSettings {
        thresholds,
        credits_low_below,
    };
    AlertSettings::save(conn, user_id, &settings).await?;
    Ok(view(&settings, currency))
}

/// In a flush's transaction, after its counts, cost and credit draws:
/// emits the thresholds the charged (user, period)s reached (`changes`:
/// per (user, period) what the flush added, sorted by user), and the
/// credit alerts of the users whose balance moved (`drawn_down`: each
/// with the balance after). Users without alerts cost one indexed read.
pub async fn after_flush(
    conn: &mut AsyncPgConnection,
    changes: &[((Uuid, Period), Decimal)],
    drawn_down: &[(Uuid, Decimal)],
    currency: Currency,
) -> QueryResult<()> {
    let mut users: Vec<Uuid> = changes
        .iter()
        .filter(|(_, change)| *change > Decimal::ZERO)
        .map(|((user, _), _)| *user)
        .chain(drawn_down.iter().map(|(user, _)| *user))
        .collect();
    if users.is_empty() {
        return Ok(());
    }
    users.sort_unstable();
    users.dedup();
    let now = Utc::now();
    let settings: HashMap<Uuid, AlertSettings> = AlertSettings::of_users(conn, &users).await?.into_iter().collect();
    // A period whose every threshold has fired needs no statement: one
    // lookup of the events' keys for all of them spares a read per user.
    let watched: Vec<(Uuid, Period, &[Decimal], Vec<String>)> = changes
        .iter()
        .filter(|(_, change)| *change > Decimal::ZERO)
        .filter_map(|((user, period), _)| {
            let thresholds = &settings.get(user)?.thresholds;
            let keys = thresholds
                .iter()
                .map(|t| NewEvent::threshold_key(*user, *period, *t))
                .collect();
            (!thresholds.is_empty()).then_some((*user, *period, thresholds.as_slice(), keys))
        })
        .collect();
    let keys: Vec<&str> = watched.iter().flat_map(|w| w.3.iter().map(String::as_str)).collect();
    let fired = Outbox::existing_keys(conn, &keys).await?;
    let mut events = Vec::new();
    for (user, period, thresholds, keys) in watched {
        if keys.iter().all(|k| fired.contains(k)) {
            continue;
        }
        // What the user sees charged: the statement's total of rounded lines.
        let charged = Statement::for_user(conn, user, period, currency, now).await?.total;
        for threshold in thresholds.iter().filter(|t| **t <= charged) {
            events.push(NewEvent::threshold_reached(user, period, *threshold, charged, currency));
        }
    }
    // Exhausted: the balance is used up; low: below the user's mark.
    let below = |user: &Uuid| settings.get(user).and_then(|s| s.credits_low_below);
    let alerting: Vec<(Uuid, Decimal)> = drawn_down
        .iter()
        .filter(|(user, balance)| *balance <= Decimal::ZERO || below(user).is_some_and(|b| *balance < b))
        .copied()
        .collect();
    if !alerting.is_empty() {
        let ids: Vec<Uuid> = alerting.iter().map(|(user, _)| *user).collect();
        let since: HashMap<Uuid, Uuid> = CreditMovement::latest_added(conn, &ids).await?.into_iter().collect();
        for (user, balance) in alerting {
            let since_credit = since.get(&user).copied();
            if let Some(mark) = below(&user)
                && balance < mark
            {
                events.push(NewEvent::credits_low(user, since_credit, balance, mark, currency));
            }
            if balance <= Decimal::ZERO {
                events.push(NewEvent::credits_exhausted(user, since_credit, balance, currency));
            }
        }
    }
    Outbox::emit(conn, &events, now).await?;
    Ok(())
}
