//! A billing period: one calendar month in the billing time zone.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Months, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Identified by the first day of its month (the `period` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period(NaiveDate);

impl Period {
    /// 1970-01, the first period there is (and the first a new API's
    /// price applies from).
    pub const EPOCH: Period = match NaiveDate::from_ymd_opt(1970, 1, 1) {
        Some(day) => Period(day),
        // Evaluated at compile time: this arm cannot be reached at run time.
        None => panic!("1970-01-01 is a date"),
    };

    /// The period an instant belongs to, read on the billing zone's wall clock.
    pub fn containing(instant: DateTime<Utc>, tz: Tz) -> Self {
        let local = instant.with_timezone(&tz).date_naive();
        Self(local.with_day(1).unwrap_or(local))
    }

    pub fn from_first_day(date: NaiveDate) -> Option<Self> {
        (date.day() == 1).then_some(Self(date))
    }

    pub fn first_day(self) -> NaiveDate {
        self.0
    }

    pub fn next(self) -> Self {
        Self(self.0 + Months::new(1))
    }

    pub fn previous(self) -> Self {
        Self(self.0 - Months::new(1))
    }

    /// The instant the period starts, in UTC.
    pub fn starts_at(self, tz: Tz) -> DateTime<Utc> {
        local_midnight(self.0, tz)
    }

    /// The instant the next period starts (exclusive end), in UTC.
    pub fn ends_at(self, tz: Tz) -> DateTime<Utc> {
        self.next().starts_at(tz)
    }
}

/// Midnight at the start of `date` in `tz`. Where a DST change skips
/// midnight, the first instant that exists that day.
fn local_midnight(date: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let mut t = date.and_time(chrono::NaiveTime::MIN);
    for _ in 0..=4 {
        if let Some(dt) = tz.from_local_datetime(&t).earliest() {
            return dt.with_timezone(&Utc);
        }
        t += chrono::Duration::minutes(30);
    }
    Utc.from_utc_datetime(&date.and_time(chrono::NaiveTime::MIN))
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.0.year(), self.0.month())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("period must look like YYYY-MM (e.g. 2026-11)")]
pub struct BadPeriod;

impl FromStr for Period {
    type Err = BadPeriod;

    /// Accepts exactly `YYYY-MM` with a month from 01 to 12.
    fn from_str(s: &str) -> Result<Self, BadPeriod> {
        let b = s.as_bytes();
        if b.len() != 7 || b[4] != b'-' || !b.iter().enumerate().all(|(i, c)| i == 4 || c.is_ascii_digit()) {
            return Err(BadPeriod);
        }
        let year: i32 = s[..4].parse().map_err(|_| BadPeriod)?;
        let month: u32 = s[5..].parse().map_err(|_| BadPeriod)?;
        NaiveDate::from_ymd_opt(year, month, 1)
            .filter(|_| year >= 1970)
            .map(Self)
            .ok_or(BadPeriod)
    }
}

impl Serialize for Period {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = std::borrow::Cow::<'de, str>::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

/// `YYYY-MM` from 1970-01 (what `Period::from_str` accepts).
const PERIOD_PATTERN: &str = "^(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])$";

impl utoipa::PartialSchema for Period {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .description(Some("A billing period: a calendar month in the billing time zone."))
            .pattern(Some(PERIOD_PATTERN))
            .examples([serde_json::json!("2026-11")])
            .into()
    }
}

impl utoipa::ToSchema for Period {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("Period")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_last_millisecond_of_a_month_in_kolkata_is_still_that_month() {
        let tz = chrono_tz::Asia::Kolkata; // UTC+05:30
        // 2026-11-30 23:59:59.999 in Kolkata = 18:29:59.999 UTC.
        let last = utc("2026-11-30T18:29:59.999Z");
        assert_eq!(Period::containing(last, tz).to_string(), "2026-11");
        let first = utc("2026-11-30T18:30:00Z");
        assert_eq!(Period::containing(first, tz).to_string(), "2026-12");
        // The same instants are both November in UTC.
        assert_eq!(Period::containing(first, Tz::UTC).to_string(), "2026-11");
    }

    #[test]
    fn period_bounds_follow_the_zone() {
        let p: Period = "2026-12".parse().unwrap();
        let tz = chrono_tz::Asia::Kolkata;
        assert_eq!(p.starts_at(tz), utc("2026-11-30T18:30:00Z"));
        assert_eq!(p.ends_at(tz), utc("2026-12-31T18:30:00Z"));
        assert_eq!(p.next().to_string(), "2027-01");
        assert_eq!(p.previous().to_string(), "2026-11");
    }

    #[test]
    fn only_well_formed_months_parse() {
        for bad in [
            "",
            "2026",
            "2026-13",
            "2026-00",
            "2026-1",
            "26-11",
            "2026/11",
            "2026-11-01",
            "+026-11",
            "２０２６-11",
        ] {
            assert!(bad.parse::<Period>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "2026-02".parse::<Period>().unwrap().first_day(),
            NaiveDate::from_ymd_opt(2026, 2, 1).unwrap()
        );
    }
}
