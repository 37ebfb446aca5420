//! The one pricing function. Every cost figure payg shows — the current
//! month's cost, invoice lines, `users.total_cost` — comes from
//! [`price_line`], so the same usage always prices to the same amount.
//!
//! A call is priced by the price version in force when it arrived. A
//! (user, API, period) is therefore priced as one line per version its
//! calls arrived under, oldest version first ([`price_month`]); each line by
//! [`price_line`]:
//! 1. `billable_calls = calls − failed_calls` (failed calls are never billed);
//! 2. the month's billable calls are counted across versions, in the order
//!    the versions started: a line's calls are the month's billable calls
//!    number `before + 1` to `before + billable_calls`, where `before` is
//!    the billable calls of the earlier versions' lines;
//! 3. the free allowance and the tiers of the line's version apply to those
//!    numbers: a call whose number is within the version's `free_calls` is
//!    free (`free_calls` of the line), and the others are charged at the
//!    flat unit price, or in the tier their number falls in (tiers count
//!    charged calls, numbered after the allowance) — so a month priced by
//!    one version costs the same however its calls were split, and a new
//!    version neither restarts the allowance nor the tiers;
//! 4. the exact amount is rounded once per line, to the currency's minor
//!    unit, half to even (banker's rounding): 0.005 → 0.00, 0.015 → 0.02.
//!
//! An invoice's subtotal is the sum of its rounded lines, so lines always
//! add up to the total.

use std::str::FromStr;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use chrono_tz::Tz;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::domain::currency::DecimalString;
use crate::domain::{Currency, Period};

/// How far ahead of "now" a price version may start at the earliest (and
/// how long before its start it may still be cancelled): every instance
/// prices the calls of a second when it flushes them, after that second, so
/// this is the clock difference between instances and the database that the
/// rule "a call is priced by the version in force when it arrived" tolerates.
pub const PRICE_NOTICE: TimeDelta = TimeDelta::seconds(2);

/// When a price asked for "now" starts: [`PRICE_NOTICE`] from `now`, rounded
/// up to a whole second (versions start on whole seconds: calls are
/// stamped with the second they arrived in).
pub fn start_from_now(now: DateTime<Utc>) -> DateTime<Utc> {
    let earliest = now + PRICE_NOTICE;
    let floor = earliest.duration_trunc(TimeDelta::seconds(1)).unwrap_or(earliest);
    if floor == earliest {
        floor
    } else {
        floor + TimeDelta::seconds(1)
    }
}

/// Whether a version may still start at `start` (or be cancelled before it):
/// at least [`PRICE_NOTICE`] after `now`.
pub fn may_start_at(start: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    start >= now + PRICE_NOTICE
}

/// Why a version may not start when asked.
#[derive(Debug, thiserror::Error)]
pub enum InvalidStart {
    #[error("effective_from must be a whole second")]
    NotWholeSecond,
    #[error("effective_from must be at least 2 s ahead: calls already made keep the price they arrived under")]
    TooSoon,
}

/// Checks a requested start against `now` (read once the version is about
/// to be written: the notice is counted from then).
pub fn check_start(start: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), InvalidStart> {
    if !is_whole_second(start) {
        return Err(InvalidStart::NotWholeSecond);
    }
    if !may_start_at(start, now) {
        return Err(InvalidStart::TooSoon);
    }
    Ok(())
}

/// Whether `start` is a whole second.
pub fn is_whole_second(start: DateTime<Utc>) -> bool {
    start.timestamp_subsec_nanos() == 0
}

/// When a price version is asked to start: an instant (RFC 3339), or a
/// billing period (`YYYY-MM`), meaning its first instant in the billing
/// time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceStart {
    At(DateTime<Utc>),
    Period(Period),
}

impl PriceStart {
    pub fn instant(self, tz: Tz) -> DateTime<Utc> {
        match self {
            PriceStart::At(at) => at,
            PriceStart::Period(period) => period.starts_at(tz),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("effective_from must be an RFC 3339 instant (e.g. 2026-12-01T00:00:00Z) or a period YYYY-MM")]
pub struct BadPriceStart;

impl FromStr for PriceStart {
    type Err = BadPriceStart;

    fn from_str(s: &str) -> Result<Self, BadPriceStart> {
        if let Ok(period) = s.parse::<Period>() {
            return Ok(PriceStart::Period(period));
        }
        DateTime::parse_from_rfc3339(s)
            .map(|at| PriceStart::At(at.with_timezone(&Utc)))
            .map_err(|_| BadPriceStart)
    }
}

impl<'de> Deserialize<'de> for PriceStart {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = std::borrow::Cow::<'de, str>::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for PriceStart {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        use utoipa::openapi::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                        utoipa::openapi::KnownFormat::DateTime,
                    )))
                    .description(Some("An instant, a whole second (RFC 3339).")),
            )
            .item(<Period as utoipa::PartialSchema>::schema())
            .description(Some(
                "When the version starts: an instant (a whole second), or a period `YYYY-MM` \
                 (its first instant in the billing time zone).",
            ))
            .examples([serde_json::json!("2026-12-01T00:00:00Z")])
            .into()
    }
}

impl utoipa::ToSchema for PriceStart {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("PriceStart")
    }
}

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

/// A price: what the calls that arrive while it is in force cost.
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

/// Rounds to the currency's minor unit, half to even, and shows that many
/// decimals (a zero is "0.00", however it was computed).
pub fn round_to_minor_unit(amount: Decimal, currency: Currency) -> Decimal {
    let mut rounded = amount.round_dp_with_strategy(currency.minor_units(), RoundingStrategy::MidpointNearestEven);
    rounded.rescale(currency.minor_units());
    rounded
}

/// Prices the calls of one (user, API, period) that arrived under `price`,
/// after `billable_before` billable calls of the same (user, API, period)
/// that arrived under earlier versions (rule 2 above; 0 for the first or only
/// version). Never panics: counters are clamped to be non-negative and
/// arithmetic saturates instead of overflowing.
pub fn price_line(calls: i64, failed_calls: i64, billable_before: i64, price: &PriceVersion) -> PricedLine {
    let calls = calls.max(0);
    let failed_calls = failed_calls.clamp(0, calls);
    let billable_calls = calls - failed_calls;
    let (free_calls, exact) = exact_amount(billable_calls, billable_before, price);
    PricedLine {
        calls,
        failed_calls,
        billable_calls,
        free_calls,
        charged_calls: billable_calls - free_calls,
        unit_price: price.unit_price,
        amount: round_to_minor_unit(exact, price.currency),
    }
}

/// The free calls and the exact (unrounded) amount of `billable_calls`
/// under `price`, after `billable_before` (rules 2 and 3 above).
pub fn exact_amount(billable_calls: i64, billable_before: i64, price: &PriceVersion) -> (i64, Decimal) {
    let billable_calls = billable_calls.max(0);
    let before = billable_before.max(0);
    let through = before.saturating_add(billable_calls);
    let allowance = price.free_calls.max(0);
    let free_calls = (through.min(allowance) - before).clamp(0, billable_calls);
    let charged_calls = billable_calls - free_calls;
    let exact = if price.tiers.is_empty() {
        Decimal::from(charged_calls).saturating_mul(price.unit_price)
    } else {
        // Charged calls are numbered after the allowance; this line's are
        // the ones from `charged_before + 1` on.
        let charged_before = before.max(allowance) - allowance;
        let charged_through = charged_before.saturating_add(charged_calls);
        graduated(charged_through, &price.tiers).saturating_sub(graduated(charged_before, &price.tiers))
    };
    (free_calls, exact)
}

/// Prices the lines of one (user, API, period): `(calls, failed_calls,
/// version)` per version its calls arrived under, in the order the versions
/// started. Each line by [`price_line`], after the billable calls of the
/// lines before it.
pub fn price_month<'a>(lines: impl IntoIterator<Item = (i64, i64, &'a PriceVersion)>) -> Vec<PricedLine> {
    let mut before = 0i64;
    lines
        .into_iter()
        .map(|(calls, failed_calls, price)| {
            let line = price_line(calls, failed_calls, before, price);
            before = before.saturating_add(line.billable_calls);
            line
        })
        .collect()
}

/// The exact price of the first `charged_calls` charged calls of a month.
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
    /// The most one call under this version can cost, whatever its number
    /// in the month: the flat unit price, or the highest tier's.
    pub fn max_unit_price(&self) -> Decimal {
        if self.tiers.is_empty() {
            self.unit_price
        } else {
            self.tiers.iter().map(|t| t.unit_price).max().unwrap_or_default()
        }
    }

    /// What calls cost when no version is in force: nothing.
    pub fn free(currency: Currency) -> Self {
        Self {
            currency,
            unit_price: Decimal::ZERO,
            free_calls: 0,
            tiers: Vec::new(),
        }
    }

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

/// A price as clients see it: the version and the instant it applies from.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PriceView {
    /// The first instant this price applies to (RFC 3339, a whole second):
    /// calls that arrive from then on, until the next version starts.
    pub effective_from: DateTime<Utc>,
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
    pub fn new(from: DateTime<Utc>, v: &PriceVersion) -> Self {
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
            let line = price_line(calls, failed, 0, &flat(unit, free));
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
            assert_eq!(
                price_line(calls, 0, 0, &flat(unit, 0)).amount,
                amount,
                "{calls} x {unit}"
            );
        }
        let yen = PriceVersion {
            currency: "JPY".parse().unwrap(),
            ..flat(dec!(0.5), 0)
        };
        assert_eq!(price_line(5, 0, 0, &yen).amount, dec!(2)); // 2.5 -> 2
        assert_eq!(price_line(7, 0, 0, &yen).amount, dec!(4)); // 3.5 -> 4
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
            assert_eq!(price_line(calls, 0, 0, &price).amount, amount, "{calls} calls");
        }
        // Tiers count charged calls: the free allowance comes first.
        let with_free = PriceVersion {
            free_calls: 1_000,
            ..price
        };
        let line = price_line(11_000, 0, 0, &with_free);
        assert_eq!(
            (line.free_calls, line.charged_calls, line.amount),
            (1_000, 10_000, dec!(10.00))
        );
    }

    #[test]
    fn nonsense_counters_never_panic_or_go_negative() {
        let line = price_line(-5, 10, -3, &flat(dec!(0.001), 0));
        assert_eq!((line.calls, line.billable_calls, line.amount), (0, 0, dec!(0.00)));
        let line = price_line(i64::MAX, 0, i64::MAX, &flat(Decimal::MAX, 0));
        assert!(line.amount > Decimal::ZERO);
    }

    fn tiered(free: i64) -> PriceVersion {
        PriceVersion {
            free_calls: free,
            tiers: vec![
                Tier {
                    up_to: Some(100),
                    unit_price: dec!(0.10),
                },
                Tier {
                    up_to: None,
                    unit_price: dec!(0.01),
                },
            ],
            ..flat(dec!(0.10), 0)
        }
    }

    #[test]
    fn a_month_split_across_versions_counts_the_allowance_and_tiers_over_the_whole_month() {
        // One version, any split: the same as the whole month at once.
        let whole = price_line(250, 10, 0, &tiered(20)).amount;
        for split in [0, 1, 19, 20, 21, 119, 120, 121, 240] {
            let lines = price_month([(split, 0, &tiered(20)), (250 - split, 10, &tiered(20))]);
            let exact: Decimal = lines.iter().map(|l| l.amount).sum();
            assert_eq!(exact, whole, "split after {split}");
            assert_eq!(lines.iter().map(|l| l.free_calls).sum::<i64>(), 20);
        }
        // 30 calls at 0.10 with 50 free, then a version at 1.00 with 40 free:
        // the first 30 were free; the next version's allowance counts them,
        // so only 10 more are free, and 20 of its 30 are charged.
        let old = flat(dec!(0.10), 50);
        let new = flat(dec!(1.00), 40);
        let lines = price_month([(30, 0, &old), (32, 2, &new)]);
        assert_eq!(
            (lines[0].free_calls, lines[0].charged_calls, lines[0].amount),
            (30, 0, dec!(0.00))
        );
        assert_eq!(
            (lines[1].free_calls, lines[1].charged_calls, lines[1].amount),
            (10, 20, dec!(20.00))
        );
        // Tiers go on where the earlier version left them: 90 charged calls
        // in the first band, then the new version's calls number 91 on.
        let cheap_then = tiered(0);
        let dearer = PriceVersion {
            tiers: vec![
                Tier {
                    up_to: Some(100),
                    unit_price: dec!(0.20),
                },
                Tier {
                    up_to: None,
                    unit_price: dec!(0.02),
                },
            ],
            ..cheap_then.clone()
        };
        let lines = price_month([(90, 0, &cheap_then), (20, 0, &dearer)]);
        assert_eq!(lines[0].amount, dec!(9.00));
        assert_eq!(lines[1].amount, dec!(2.20)); // 10 × 0.20 + 10 × 0.02
    }

    #[test]
    fn a_price_asked_for_now_starts_on_the_whole_second_after_the_notice() {
        let now = DateTime::parse_from_rfc3339("2026-12-05T10:00:00.250Z")
            .unwrap()
            .to_utc();
        let start = start_from_now(now);
        assert_eq!(start.to_rfc3339(), "2026-12-05T10:00:03+00:00");
        assert!(may_start_at(start, now) && is_whole_second(start));
        let on_the_second = DateTime::parse_from_rfc3339("2026-12-05T10:00:00Z").unwrap().to_utc();
        assert_eq!(start_from_now(on_the_second), on_the_second + PRICE_NOTICE);
        assert!(!may_start_at(on_the_second + TimeDelta::seconds(1), on_the_second));
        assert!(!is_whole_second(now));
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
