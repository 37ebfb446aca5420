//! Spending caps, the pure rules: how much a (user, period) can still be
//! charged for the calls counted so far, whatever reaches its lines late,
//! and how much budget a lease may take.
//!
//! A cap bounds a period's charge — both the exact amount and the invoice's
//! total of rounded lines — so every admitted call reserves the most it can
//! add before it is served, and a grant is made only while
//! `charge_bound(counted lines) + Σ held by every instance + grant ≤ cap`.
//! The bound must hold however late the reserved calls are counted:
//!
//! - The period's first version of an API (the one in force when the period
//!   began, or no price) has its calls numbered from 1 whatever arrives
//!   later, so its line is bounded by its exact amount now, plus the most
//!   each further call can add (`max_unit_price`).
//! - A version that started within the period has calls numbered after the
//!   earlier versions' — and a late flush of earlier calls renumbers them,
//!   which can move them out of a free allowance or into a dearer tier. Its
//!   line is bounded by `billable × max_unit_price`, which no numbering
//!   exceeds.
//! - A line's rounding adds at most half a minor unit: each line that can
//!   charge anything carries that much (a call that may open a new line
//!   reserves it too).

use rust_decimal::Decimal;

use crate::domain::Currency;
use crate::domain::pricing::{PriceVersion, exact_amount};

/// Why a call was refused before it was served (402).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpendRefusal {
    #[error("this call would take this period's charge past your spending cap")]
    CapReached,
    #[error("your prepaid credit does not cover this call")]
    CreditsExhausted,
}

/// Why a capped user's call was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotAdmitted {
    #[error(transparent)]
    Refused(#[from] SpendRefusal),
    #[error("the spending cap cannot be checked: the database is unavailable")]
    Unavailable,
}

/// One line of a (user, API, period) as the bound sees it.
pub struct BoundLine<'a> {
    pub billable_calls: i64,
    pub price: &'a PriceVersion,
    /// The version in force when the period began (or the calls under no
    /// price): its calls are numbered from 1, whatever comes late.
    pub first_of_period: bool,
}

/// Half the currency's minor unit: the most rounding adds to a line.
pub fn half_minor_unit(currency: Currency) -> Decimal {
    Decimal::new(5, currency.minor_units() + 1)
}

/// What one call under `price` reserves: the most it can add to the
/// charge, and half a minor unit more when it may open a line.
pub fn reservation(price_per_call: Decimal, opens_line: bool, currency: Currency) -> Decimal {
    if price_per_call.is_zero() {
        return Decimal::ZERO;
    }
    if opens_line {
        price_per_call + half_minor_unit(currency)
    } else {
        price_per_call
    }
}

/// The most the counted lines of a period can end up charging (exactly, and
/// as a total of rounded lines).
pub fn charge_bound<'a>(lines: impl IntoIterator<Item = BoundLine<'a>>, currency: Currency) -> Decimal {
    let half = half_minor_unit(currency);
    lines
        .into_iter()
        .map(|line| {
            let most = line.price.max_unit_price();
            let amount = if line.first_of_period {
                exact_amount(line.billable_calls, 0, line.price).1
            } else {
                Decimal::from(line.billable_calls.max(0)).saturating_mul(most)
            };
            if most.is_zero() { amount } else { amount + half }
        })
        .sum()
}

/// How much a lease may take: nothing when `available` does not cover the
/// call that asks (`need`); otherwise what its pace wants, or an eighth of
/// what is available if that is more (far from the cap, one lease lasts:
/// every grant is a transaction), but no more than half of it (so the
/// last budget spreads over instances rather than sitting in one), and
/// never less than `need`.
pub fn lease_size(available: Decimal, need: Decimal, want: Decimal) -> Option<Decimal> {
    if available < need {
        return None;
    }
    let half = (available / Decimal::TWO).max(need);
    let eighth = available / Decimal::from(8);
    Some(want.max(eighth).max(need).min(half))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::pricing::{Tier, price_month};
    use rust_decimal_macros::dec;

    fn eur() -> Currency {
        "EUR".parse().unwrap()
    }

    fn flat(unit: Decimal, free: i64) -> PriceVersion {
        PriceVersion {
            currency: eur(),
            unit_price: unit,
            free_calls: free,
            tiers: Vec::new(),
        }
    }

    #[test]
    fn the_bound_holds_however_late_earlier_calls_renumber_a_later_version() {
        // The first version is cheap; the second, from mid-month, gives its
        // first 10 calls of the month free and then charges 1.00.
        let first = flat(dec!(0.001), 0);
        let second = flat(dec!(1.00), 10);
        // Counted so far: 10 calls under the second version, all free.
        let counted = [BoundLine {
            billable_calls: 10,
            price: &second,
            first_of_period: false,
        }];
        let bound = charge_bound(counted, eur());
        assert_eq!(bound, dec!(10.005));
        // Ten late calls of the first version, each reserving its price and
        // the half unit of the line they open.
        let reserved = reservation(first.max_unit_price(), true, eur()) + dec!(0.001) * dec!(9);
        let lines = price_month([(10, 0, &first), (10, 0, &second)]);
        let charged: Decimal = lines.iter().map(|l| l.amount).sum();
        assert_eq!(
            charged,
            dec!(10.01),
            "the second version's calls moved out of its allowance"
        );
        assert!(charged <= bound + reserved);
    }

    #[test]
    fn the_first_version_is_bounded_by_what_it_charges_now() {
        let tiered = PriceVersion {
            currency: eur(),
            unit_price: Decimal::ZERO,
            free_calls: 100,
            tiers: vec![
                Tier {
                    up_to: Some(10),
                    unit_price: dec!(0.10),
                },
                Tier {
                    up_to: None,
                    unit_price: dec!(0.01),
                },
            ],
        };
        assert_eq!(tiered.max_unit_price(), dec!(0.10));
        let line = |calls| BoundLine {
            billable_calls: calls,
            price: &tiered,
            first_of_period: true,
        };
        assert_eq!(
            charge_bound([line(50)], eur()),
            dec!(0.005),
            "free calls charge nothing"
        );
        assert_eq!(charge_bound([line(115)], eur()), dec!(1.055));
        let free = flat(Decimal::ZERO, 0);
        let unpriced = BoundLine {
            billable_calls: 1_000,
            price: &free,
            first_of_period: true,
        };
        assert_eq!(
            charge_bound([unpriced], eur()),
            Decimal::ZERO,
            "a free line cannot round up"
        );
    }

    #[test]
    fn a_lease_takes_what_it_wants_or_an_eighth_of_what_is_left_up_to_half() {
        assert_eq!(lease_size(dec!(0.009), dec!(0.01), dec!(1)), None);
        assert_eq!(lease_size(dec!(0.01), dec!(0.01), dec!(1)), Some(dec!(0.01)));
        assert_eq!(lease_size(dec!(100), dec!(0.01), dec!(1)), Some(dec!(12.5)));
        assert_eq!(lease_size(dec!(100), dec!(0.01), dec!(20)), Some(dec!(20)));
        assert_eq!(lease_size(dec!(1), dec!(0.01), dec!(5)), Some(dec!(0.5)));
        assert_eq!(lease_size(dec!(0.015), dec!(0.01), dec!(5)), Some(dec!(0.01)));
    }
}
