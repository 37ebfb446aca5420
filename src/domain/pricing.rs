//! The one pricing function. Every cost figure payg shows — the current
//! month's cost, invoice lines, `users.total_cost` — comes from
//! [`price_line`], so the same usage always prices to the same amount.
//!
//! Rule, per (user, API, period):
//! 1. `billable_calls = calls − failed_calls` (failed calls are never billed);
//! 2. `free_calls = min(billable_calls, price.free_calls)`;
//! 3. `charged_calls = billable_calls − free_calls`, charged at the flat unit
//!    price, or tier by tier when the price has graduated tiers;
//! 4. the exact amount is rounded once, to the currency's minor unit,
//!    half to even (banker's rounding): 0.005 → 0.00, 0.015 → 0.02.
//!
//! An invoice's subtotal is the sum of its rounded lines, so lines always
//! add up to the total.

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::domain::currency::DecimalString;
use crate::domain::{Currency, Period};

/// One graduated tier: calls up to `up_to` (cumulative, counted after the
/// free allowance) at `unit_price`; `None` = no upper bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Tier {
    /// The last call (per period) this tier covers; `null` for the last,
    /// unbounded tier.
    #[schema(minimum = 1)]
    pub up_to: Option<i64>,
    // Per call in this tier (no doc comment: see `NewPriceRequest`).
    #[serde(with = "crate::domain::currency::decimal_string")]
    #[schema(value_type = DecimalString, inline)]
    pub unit_price: Decimal,
}

/// A price as it applied to one period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceVersion {
    pub currency: Currency,
    pub unit_price: Decimal,
    pub free_calls: i64,
    /// Empty = flat `unit_price`.
    pub tiers: Vec<Tier>,
}

/// One priced (user, API, period): the line type that statements, invoice
/// lines, reconciliation and the export all carry. One name per quantity:
/// `calls` (all counted calls), `failed_calls` (answered ≥ 400, never
/// billed), `billable_calls` (calls − failed), `free_calls` (the part of the
/// billable calls the allowance covers) and `charged_calls` (billable − free,
/// the calls `amount` charges for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PricedLine {
    pub calls: i64,
    pub failed_calls: i64,
    pub billable_calls: i64,
    pub free_calls: i64,
    pub charged_calls: i64,
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

impl PricedLine {
    /// No calls, nothing charged (a line that was never invoiced).
    pub const NONE: PricedLine = PricedLine {
        calls: 0,
        failed_calls: 0,
        billable_calls: 0,
        free_calls: 0,
        charged_calls: 0,
        unit_price: Decimal::ZERO,
        amount: Decimal::ZERO,
    };
}

pub fn round_to_minor_unit(amount: Decimal, currency: Currency) -> Decimal {
    amount.round_dp_with_strategy(currency.minor_units(), RoundingStrategy::MidpointNearestEven)
}

/// Prices one usage record. Never panics: counters are clamped to be
/// non-negative and arithmetic saturates instead of overflowing.
pub fn price_line(calls: i64, failed_calls: i64, price: &PriceVersion) -> PricedLine {
    let calls = calls.max(0);
    let failed_calls = failed_calls.clamp(0, calls);
    let billable_calls = calls - failed_calls;
    let free_calls = billable_calls.min(price.free_calls.max(0));
    let charged_calls = billable_calls - free_calls;
    let exact = if price.tiers.is_empty() {
        Decimal::from(charged_calls).saturating_mul(price.unit_price)
    } else {
        graduated(charged_calls, &price.tiers)
    };
    PricedLine {
        calls,
        failed_calls,
        billable_calls,
        free_calls,
        charged_calls,
        unit_price: price.unit_price,
        amount: round_to_minor_unit(exact, price.currency),
    }
}

fn graduated(charged_calls: i64, tiers: &[Tier]) -> Decimal {
    let mut total = Decimal::ZERO;
    let mut covered = 0i64;
    for tier in tiers {
        if covered >= charged_calls {
            break;
        }
        let ceiling = tier.up_to.map_or(charged_calls, |u| u.min(charged_calls));
        let in_tier = (ceiling - covered).max(0);
        total = total.saturating_add(Decimal::from(in_tier).saturating_mul(tier.unit_price));
        covered = covered.max(ceiling);
    }
    total
}

/// Why a price cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidPrice(pub String);

impl PriceVersion {
    /// Checks a price is usable: a non-negative unit price and allowance,
    /// and tiers with strictly increasing bounds, only the last unbounded,
    /// non-negative prices.
    pub fn validate(&self) -> Result<(), InvalidPrice> {
        if self.unit_price.is_sign_negative() || self.free_calls < 0 {
            return Err(InvalidPrice("unit_price and free_calls must not be negative".into()));
        }
        validate_tiers(&self.tiers)
    }
}

fn validate_tiers(tiers: &[Tier]) -> Result<(), InvalidPrice> {
    let mut previous = 0i64;
    for (i, tier) in tiers.iter().enumerate() {
        if tier.unit_price.is_sign_negative() {
            return Err(InvalidPrice(format!("tier {i}: unit_price must not be negative")));
        }
        match tier.up_to {
            Some(up_to) if up_to <= previous => {
                return Err(InvalidPrice(format!("tier {i}: up_to must be greater than {previous}")));
            }
            Some(up_to) => previous = up_to,
            None if i + 1 != tiers.len() => {
                return Err(InvalidPrice(format!("tier {i}: only the last tier may be unbounded")));
            }
            None => {}
        }
    }
    if tiers.last().is_some_and(|t| t.up_to.is_some()) {
        return Err(InvalidPrice("the last tier must be unbounded (up_to: null)".into()));
    }
    Ok(())
}

/// A price as clients see it: the version and the period it applies from.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PriceView {
    /// The period from which this price applies (`YYYY-MM`).
    pub effective_from: Period,
    pub currency: Currency,
    /// Per call, before any tiers.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(example = "0.001")]
    pub unit_price: Decimal,
    /// Calls free each period.
    pub free_calls: i64,
    /// Graduated tiers; empty for the flat `unit_price`.
    pub tiers: Vec<Tier>,
}

impl PriceView {
    pub fn new(from: Period, v: &PriceVersion) -> Self {
        Self {
            effective_from: from,
            currency: v.currency,
            unit_price: v.unit_price,
            free_calls: v.free_calls,
            tiers: v.tiers.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn flat(unit: Decimal, free: i64) -> PriceVersion {
        PriceVersion {
            currency: Currency::USD,
            unit_price: unit,
            free_calls: free,
            tiers: vec![],
        }
    }

    #[test]
    fn flat_prices_with_free_calls_and_failures() {
        // (calls, failed, unit, free) -> (billable, free, charged, amount)
        let table = [
            (0, 0, dec!(0.001), 0, (0, 0, 0, dec!(0.00))),
            (1000, 0, dec!(0.001), 0, (1000, 0, 1000, dec!(1.00))),
            (1000, 100, dec!(0.001), 0, (900, 0, 900, dec!(0.90))),
            (1000, 100, dec!(0.001), 500, (900, 500, 400, dec!(0.40))),
            (100, 0, dec!(0.001), 500, (100, 100, 0, dec!(0.00))),
            (12345, 45, dec!(0.0123), 300, (12300, 300, 12000, dec!(147.60))),
        ];
        for (calls, failed, unit, free, (billable, free_used, charged, amount)) in table {
            let line = price_line(calls, failed, &flat(unit, free));
            assert_eq!(
                (line.billable_calls, line.free_calls, line.charged_calls, line.amount),
                (billable, free_used, charged, amount),
                "{calls} calls, {failed} failed, {unit} each, {free} free"
            );
        }
    }

    #[test]
    fn rounding_is_half_to_even_at_the_minor_unit() {
        let table = [
            (5, dec!(0.001), dec!(0.00)),  // 0.005 -> 0.00
            (15, dec!(0.001), dec!(0.02)), // 0.015 -> 0.02
            (25, dec!(0.001), dec!(0.02)), // 0.025 -> 0.02
            (35, dec!(0.001), dec!(0.04)), // 0.035 -> 0.04
            (6, dec!(0.001), dec!(0.01)),  // 0.006 -> 0.01
            (4, dec!(0.001), dec!(0.00)),  // 0.004 -> 0.00
            (1, dec!(0.0149999), dec!(0.01)),
        ];
        for (calls, unit, amount) in table {
            assert_eq!(price_line(calls, 0, &flat(unit, 0)).amount, amount, "{calls} x {unit}");
        }
        let yen = PriceVersion {
            currency: "JPY".parse().unwrap(),
            ..flat(dec!(0.5), 0)
        };
        assert_eq!(price_line(5, 0, &yen).amount, dec!(2)); // 2.5 -> 2
        assert_eq!(price_line(7, 0, &yen).amount, dec!(4)); // 3.5 -> 4
    }

    #[test]
    fn graduated_tiers_charge_each_band_at_its_own_price() {
        let price = PriceVersion {
            tiers: vec![
                Tier {
                    up_to: Some(10_000),
                    unit_price: dec!(0.001),
                },
                Tier {
                    up_to: Some(50_000),
                    unit_price: dec!(0.0008),
                },
                Tier {
                    up_to: None,
                    unit_price: dec!(0.0005),
                },
            ],
            ..flat(dec!(0.001), 0)
        };
        let table = [
            (0, dec!(0.00)),
            (9_999, dec!(10.00)), // 9.999 -> 10.00
            (10_000, dec!(10.00)),
            (10_001, dec!(10.00)), // 10.0008
            (20_000, dec!(18.00)), // 10 + 8
            (50_000, dec!(42.00)), // 10 + 32
            (60_000, dec!(47.00)), // 10 + 32 + 5
        ];
        for (calls, amount) in table {
            assert_eq!(price_line(calls, 0, &price).amount, amount, "{calls} calls");
        }
        // Tiers count charged calls: the free allowance comes first.
        let with_free = PriceVersion {
            free_calls: 1_000,
            ..price
        };
        let line = price_line(11_000, 0, &with_free);
        assert_eq!(
            (line.free_calls, line.charged_calls, line.amount),
            (1_000, 10_000, dec!(10.00))
        );
    }

    #[test]
    fn nonsense_counters_never_panic_or_go_negative() {
        let line = price_line(-5, 10, &flat(dec!(0.001), 0));
        assert_eq!((line.calls, line.billable_calls, line.amount), (0, 0, dec!(0.00)));
        let line = price_line(i64::MAX, 0, &flat(Decimal::MAX, 0));
        assert!(line.amount > Decimal::ZERO);
    }

    #[test]
    fn tier_lists_are_validated() {
        let t = |up_to: Option<i64>| Tier {
            up_to,
            unit_price: dec!(0.001),
        };
        assert!(validate_tiers(&[]).is_ok());
        assert!(validate_tiers(&[t(Some(10)), t(None)]).is_ok());
        assert!(validate_tiers(&[t(Some(10)), t(Some(10)), t(None)]).is_err());
        assert!(validate_tiers(&[t(None), t(Some(10))]).is_err());
        assert!(validate_tiers(&[t(Some(10))]).is_err());
        assert!(
            validate_tiers(&[Tier {
                up_to: None,
                unit_price: dec!(-1)
            }])
            .is_err()
        );
    }
}
