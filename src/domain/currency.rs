//! ISO 4217 currencies payg can bill in, with their minor units.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// (code, minor units). Only currencies listed here are accepted, so every
/// amount has a known rounding scale.
const CURRENCIES: &[(&str, u32)] = &[
    ("USD", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("INR", 2),
    ("CAD", 2),
    ("AUD", 2),
    ("NZD", 2),
    ("CHF", 2),
    ("SEK", 2),
    ("NOK", 2),
    ("DKK", 2),
    ("PLN", 2),
    ("CZK", 2),
    ("BRL", 2),
    ("MXN", 2),
    ("SGD", 2),
    ("HKD", 2),
    ("CNY", 2),
    ("ZAR", 2),
    ("AED", 2),
    ("ILS", 2),
    ("JPY", 0),
    ("KRW", 0),
    ("CLP", 0),
    ("ISK", 0),
    ("VND", 0),
    ("KWD", 3),
    ("BHD", 3),
    ("OMR", 3),
    ("JOD", 3),
    ("TND", 3),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency(&'static str, u32);

impl Currency {
    pub const USD: Currency = Currency("USD", 2);

    pub fn code(self) -> &'static str {
        self.0
    }

    /// Digits after the decimal point of the smallest coin (cents: 2).
    pub fn minor_units(self) -> u32 {
        self.1
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a supported ISO 4217 currency code")]
pub struct UnknownCurrency(pub String);

impl FromStr for Currency {
    type Err = UnknownCurrency;

    fn from_str(s: &str) -> Result<Self, UnknownCurrency> {
        CURRENCIES
            .iter()
            .find(|(code, _)| code.eq_ignore_ascii_case(s.trim()))
            .map(|(code, minor)| Currency(code, *minor))
            .ok_or_else(|| UnknownCurrency(s.to_owned()))
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl utoipa::PartialSchema for Currency {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .description(Some("An ISO 4217 currency code."))
            .pattern(Some("^[A-Z]{3}$"))
            .examples([serde_json::json!("USD")])
            .into()
    }
}

impl utoipa::ToSchema for Currency {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("Currency")
    }
}

/// The schema of every money amount in a request or response: a decimal
/// string (`"12.50"`), never a JSON number, so no float ever carries money.
/// Fields are `rust_decimal::Decimal` serialised with
/// `rust_decimal::serde::str` and name this as their `value_type`.
pub struct DecimalString;

impl utoipa::PartialSchema for DecimalString {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .description(Some("A decimal amount as a string, e.g. `\"12.50\"`."))
            .pattern(Some(r"^[0-9]{1,15}(\.[0-9]{1,10})?$"))
            .examples([serde_json::json!("12.50")])
            .into()
    }
}

impl utoipa::ToSchema for DecimalString {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("DecimalString")
    }
}

/// Reads a money amount exactly as [`DecimalString`] describes it: ASCII
/// digits (1 to 15) and at most one dot followed by 1 to 10 digits. No sign,
/// exponent (`1e1`), separator (`1_000`) or white space, which a lenient
/// decimal parser would take.
pub fn parse_decimal_string(raw: &str) -> Result<rust_decimal::Decimal, String> {
    let (whole, fraction) = match raw.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (raw, None),
    };
    let digits = |s: &str, max: usize| !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole, 15) || fraction.is_some_and(|f| !digits(f, 10)) {
        return Err(format!(
            "{raw:?} is not a decimal amount: digits, optionally one dot and up to 10 decimals (e.g. \"12.50\")"
        ));
    }
    raw.parse().map_err(|e| format!("{raw:?} is not a decimal amount: {e}"))
}

/// `#[serde(with = "decimal_string")]` for a required amount.
pub mod decimal_string {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let raw = std::borrow::Cow::<'de, str>::deserialize(d)?;
        super::parse_decimal_string(&raw).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(value: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        rust_decimal::serde::str::serialize(value, s)
    }
}

/// `#[serde(default, with = "decimal_string_option")]` for an optional amount.
pub mod decimal_string_option {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
        Option::<std::borrow::Cow<'de, str>>::deserialize(d)?
            .map(|raw| super::parse_decimal_string(&raw).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_digits_and_one_dot_only() {
        for good in ["0", "12", "12.50", "0.0001", "999999999999999.9999999999"] {
            assert!(parse_decimal_string(good).is_ok(), "{good}");
        }
        for bad in [
            "", "1e1", "1E+1", "1_000", "-1", "+1", " 1", "1 ", "1.", ".5", "1.2.3", "1,5", "0x10", "１",
        ] {
            assert!(parse_decimal_string(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_decimal_string("12.50").unwrap().to_string(), "12.50");
    }
}
