//! A billing period: one calendar month in the billing time zone; a
//! [`Day`]: one calendar day there; a [`DayRange`]: the days a usage chart
//! asks for.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Months, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Identified by the first day of its month (the `period` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period(NaiveDate);

impl Period {
    /// The period an instant belongs to, read on the billing zone's wall clock.
    pub fn containing(instant: DateTime<Utc>, tz: Tz) -> Self {
        Day::containing(instant, tz).period()
    }

    pub fn from_first_day(date: NaiveDate) -> Option<Self> {
        (date.day() == 1).then_some(Self(date))
    }

    pub fn first_day(self) -> NaiveDate {
        self.0
    }

    /// The period's last day.
    pub fn last_day(self) -> NaiveDate {
        self.next().first_day().pred_opt().unwrap_or(self.0)
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

/// One calendar day in the billing zone, read on its wall clock: the day a
/// call arrived (the `day` column). Always inside one [`Period`], the one
/// [`Day::period`] names, so a call's day and period never disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(NaiveDate);

impl Day {
    /// The day an instant belongs to, read on the billing zone's wall clock:
    /// the one time-zone conversion a metered call makes (its period is
    /// [`Day::period`], no second conversion).
    pub fn containing(instant: DateTime<Utc>, tz: Tz) -> Self {
        Self(instant.with_timezone(&tz).date_naive())
    }

    pub fn date(self) -> NaiveDate {
        self.0
    }

    /// The period (calendar month) this day lies in.
    pub fn period(self) -> Period {
        Period(self.0.with_day(1).unwrap_or(self.0))
    }

    /// The instant the day starts, in UTC (where a DST change skips
    /// midnight, the first instant that exists that day).
    pub fn starts_at(self, tz: Tz) -> DateTime<Utc> {
        local_midnight(self.0, tz)
    }

    /// The instant the next day starts (exclusive end), in UTC: a day is 23
    /// or 25 hours long where a DST change falls in it.
    pub fn ends_at(self, tz: Tz) -> DateTime<Utc> {
        match self.0.succ_opt() {
            Some(next) => local_midnight(next, tz),
            None => DateTime::<Utc>::MAX_UTC,
        }
    }
}

impl From<NaiveDate> for Day {
    fn from(date: NaiveDate) -> Self {
        Self(date)
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.0.year(), self.0.month(), self.0.day())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("a day must look like YYYY-MM-DD (e.g. 2026-11-30), from 1970-01-01")]
pub struct BadDay;

impl FromStr for Day {
    type Err = BadDay;

    /// Accepts exactly `YYYY-MM-DD`, a date that exists, from 1970-01-01.
    fn from_str(s: &str) -> Result<Self, BadDay> {
        let b = s.as_bytes();
        let digits = b
            .iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' || !digits {
            return Err(BadDay);
        }
        let year: i32 = s[..4].parse().map_err(|_| BadDay)?;
        let month: u32 = s[5..7].parse().map_err(|_| BadDay)?;
        let day: u32 = s[8..].parse().map_err(|_| BadDay)?;
        NaiveDate::from_ymd_opt(year, month, day)
            .filter(|_| year >= 1970)
            .map(Self)
            .ok_or(BadDay)
    }
}

impl Serialize for Day {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Day {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = std::borrow::Cow::<'de, str>::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

/// `YYYY-MM-DD` from 1970 (what `Day::from_str` accepts, but for days a
/// month lacks, such as 02-30, which `format: date` rules out).
const DAY_PATTERN: &str = "^(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$";

impl utoipa::PartialSchema for Day {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Date,
            )))
            .description(Some("A calendar day in the billing time zone, from 1970-01-01."))
            .pattern(Some(DAY_PATTERN))
            .examples([serde_json::json!("2026-11-30")])
            .into()
    }
}

impl utoipa::ToSchema for Day {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("Day")
    }
}

/// Days from `first` to `last`, both included: at most
/// [`DayRange::MAX_DAYS`], `last` not before `first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayRange {
    first: Day,
    last: Day,
}

#[derive(Debug, thiserror::Error)]
pub enum BadDayRange {
    #[error("`to` must not be before `from`")]
    Reversed,
    #[error("a range holds at most 400 days, `from` and `to` included")]
    TooLong,
}

impl DayRange {
    /// The most days one range may hold (a chart of a bit more than a year).
    pub const MAX_DAYS: u64 = 400;

    pub fn new(first: Day, last: Day) -> Result<Self, BadDayRange> {
        let Some(span) = last.0.signed_duration_since(first.0).num_days().checked_add(1) else {
            return Err(BadDayRange::TooLong);
        };
        match u64::try_from(span) {
            Err(_) | Ok(0) => Err(BadDayRange::Reversed),
            Ok(n) if n > Self::MAX_DAYS => Err(BadDayRange::TooLong),
            Ok(_) => Ok(Self { first, last }),
        }
    }

    /// Every day of `period` (at most 31: always a valid range).
    pub fn of_period(period: Period) -> Self {
        Self {
            first: Day(period.first_day()),
            last: Day(period.last_day()),
        }
    }

    pub fn first(self) -> Day {
        self.first
    }

    pub fn last(self) -> Day {
        self.last
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

    fn day(s: &str) -> Day {
        s.parse().unwrap()
    }

    #[test]
    fn around_oslos_dst_changes_a_call_lands_on_its_local_day_and_those_days_are_23_and_25_hours() {
        let tz = chrono_tz::Europe::Oslo;
        // (instant, local day, period): 2026-03-29 02:00 CET became 03:00
        // CEST (01:00 UTC); 2026-10-25 03:00 CEST became 02:00 CET (01:00 UTC).
        let cases = [
            ("2026-03-28T22:59:59.999Z", "2026-03-28", "2026-03"), // 23:59:59.999 CET
            ("2026-03-28T23:00:00Z", "2026-03-29", "2026-03"),     // 00:00 CET
            ("2026-03-29T00:59:59Z", "2026-03-29", "2026-03"),     // 01:59:59 CET
            ("2026-03-29T01:00:00Z", "2026-03-29", "2026-03"),     // 03:00 CEST
            ("2026-03-29T21:30:00Z", "2026-03-29", "2026-03"),     // 23:30 CEST
            ("2026-03-29T21:59:59.999Z", "2026-03-29", "2026-03"), // 23:59:59.999 CEST
            ("2026-03-29T22:00:00Z", "2026-03-30", "2026-03"),     // 00:00 CEST
            ("2026-03-31T21:59:59.999Z", "2026-03-31", "2026-03"), // the month's last instant
            ("2026-03-31T22:00:00Z", "2026-04-01", "2026-04"),
            ("2026-10-24T21:59:59Z", "2026-10-24", "2026-10"), // 23:59:59 CEST
            ("2026-10-24T22:00:00Z", "2026-10-25", "2026-10"), // 00:00 CEST
            ("2026-10-25T00:30:00Z", "2026-10-25", "2026-10"), // 02:30 CEST, first time
            ("2026-10-25T01:30:00Z", "2026-10-25", "2026-10"), // 02:30 CET, second time
            ("2026-10-25T22:30:00Z", "2026-10-25", "2026-10"), // 23:30 CET
            ("2026-10-25T22:59:59.999Z", "2026-10-25", "2026-10"),
            ("2026-10-25T23:00:00Z", "2026-10-26", "2026-10"), // 00:00 CET
            ("2026-10-31T22:59:59.999Z", "2026-10-31", "2026-10"),
            ("2026-10-31T23:00:00Z", "2026-11-01", "2026-11"),
        ];
        for (instant, local_day, period) in cases {
            let d = Day::containing(utc(instant), tz);
            assert_eq!(d.to_string(), local_day, "{instant}");
            assert_eq!(d.period().to_string(), period, "{instant}");
            assert_eq!(Period::containing(utc(instant), tz), d.period(), "{instant}");
        }
        let hours = |d: &str| (day(d).ends_at(tz) - day(d).starts_at(tz)).num_hours();
        assert_eq!(hours("2026-03-28"), 24);
        assert_eq!(hours("2026-03-29"), 23);
        assert_eq!(hours("2026-10-25"), 25);
        assert_eq!(day("2026-03-29").starts_at(tz), utc("2026-03-28T23:00:00Z"));
        assert_eq!(day("2026-10-25").ends_at(tz), utc("2026-10-25T23:00:00Z"));
    }

    #[test]
    fn where_a_dst_change_skips_midnight_the_day_starts_at_its_first_instant() {
        // Santiago moves its clocks from 24:00 to 01:00 (2026-09-06).
        let tz = chrono_tz::America::Santiago;
        assert_eq!(day("2026-09-06").starts_at(tz), utc("2026-09-06T04:00:00Z"));
        assert_eq!(day("2026-09-05").ends_at(tz), day("2026-09-06").starts_at(tz));
        assert_eq!(Day::containing(utc("2026-09-06T03:59:59Z"), tz), day("2026-09-05"));
        assert_eq!(Day::containing(utc("2026-09-06T04:00:00Z"), tz), day("2026-09-06"));
    }

    #[test]
    fn every_instant_lies_inside_its_day_and_its_day_inside_its_period() {
        for tz in [
            Tz::UTC,
            chrono_tz::Europe::Oslo,
            chrono_tz::Asia::Kolkata,
            chrono_tz::America::Santiago,
            chrono_tz::Australia::Lord_Howe, // a 30-minute DST change
        ] {
            // Every 37 minutes through 2026 (and into 2027).
            let mut t = utc("2025-12-31T00:00:00Z");
            while t < utc("2027-01-02T00:00:00Z") {
                let d = Day::containing(t, tz);
                assert!(d.starts_at(tz) <= t && t < d.ends_at(tz), "{t} {tz} {d}");
                let p = d.period();
                assert_eq!(p, Period::containing(t, tz));
                assert!(p.starts_at(tz) <= d.starts_at(tz) && d.ends_at(tz) <= p.ends_at(tz));
                t += chrono::Duration::minutes(37);
            }
        }
    }

    #[test]
    fn only_well_formed_days_parse_and_print_as_sent() {
        for bad in [
            "",
            "2026-11",
            "2026-11-1",
            "2026-1-01",
            "2026-02-30",
            "2026-13-01",
            "2026-11-00",
            "1969-12-31",
            "2026/11/01",
            "+2026-11-01",
            "2026-11-01T00:00:00Z",
            " 2026-11-01",
            "２０２６-11-01",
        ] {
            assert!(bad.parse::<Day>().is_err(), "{bad:?}");
        }
        for good in ["1970-01-01", "2026-02-28", "2028-02-29", "9999-12-31"] {
            assert_eq!(day(good).to_string(), good);
        }
        assert_eq!(serde_json::to_string(&day("2026-03-09")).unwrap(), "\"2026-03-09\"");
    }

    #[test]
    fn a_range_holds_1_to_400_days() {
        let range = |a: &str, b: &str| DayRange::new(day(a), day(b));
        assert!(range("2026-01-01", "2026-01-01").is_ok());
        assert!(range("2026-01-01", "2027-02-04").is_ok(), "400 days");
        assert!(matches!(range("2026-01-01", "2027-02-05"), Err(BadDayRange::TooLong)));
        assert!(matches!(range("2026-01-02", "2026-01-01"), Err(BadDayRange::Reversed)));
        assert!(matches!(range("1970-01-01", "9999-12-31"), Err(BadDayRange::TooLong)));
        assert!(matches!(range("9999-12-31", "1970-01-01"), Err(BadDayRange::Reversed)));
        for (period, last) in [
            ("2026-02", "2026-02-28"),
            ("2028-02", "2028-02-29"),
            ("2026-12", "2026-12-31"),
        ] {
            let whole = DayRange::of_period(period.parse().unwrap());
            assert_eq!(
                (whole.first().to_string(), whole.last().to_string()),
                (format!("{period}-01"), last.to_owned())
            );
        }
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
