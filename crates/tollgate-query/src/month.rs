//! Calendar months (`YYYY-MM`), in UTC as billing periods are: the month parameters of the
//! FOCUS reports and the statements.

use chrono::{Datelike, NaiveDate, TimeZone, Utc};
use tollgate_core::Timestamp;

/// A calendar month (`YYYY-MM`), in UTC as billing periods are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Month {
    first: NaiveDate,
}

impl Month {
    /// `YYYY-MM`, the month 01 to 12, the year 1970 to 9998.
    pub fn parse(text: &str) -> Result<Month, String> {
        let bad = || format!("must be a month YYYY-MM (such as 2025-02), got '{text}'");
        let b = text.as_bytes();
        if b.len() != 7
            || b[4] != b'-'
            || !b
                .iter()
                .enumerate()
                .all(|(i, c)| i == 4 || c.is_ascii_digit())
        {
            return Err(bad());
        }
        let year: i32 = text[..4].parse().map_err(|_| bad())?;
        let month: u32 = text[5..].parse().map_err(|_| bad())?;
        if !(1970..=9998).contains(&year) {
            return Err(format!(
                "the year of '{text}' must be between 1970 and 9998"
            ));
        }
        NaiveDate::from_ymd_opt(year, month, 1)
            .map(|first| Month { first })
            .ok_or_else(|| format!("the month of '{text}' must be 01 to 12"))
    }

    /// The UTC month containing `t`.
    pub fn of(t: Timestamp) -> Month {
        let d = Utc
            .timestamp_millis_opt(t.0)
            .single()
            .map(|d| d.date_naive())
            .unwrap_or_default();
        Month {
            first: d.with_day(1).unwrap_or(d),
        }
    }

    pub fn start(self) -> Timestamp {
        Timestamp(
            self.first
                .and_hms_opt(0, 0, 0)
                .map(|d| d.and_utc().timestamp_millis())
                .unwrap_or(0),
        )
    }

    pub fn end(self) -> Timestamp {
        match self.first.checked_add_months(chrono::Months::new(1)) {
            Some(next) => Month { first: next }.start(),
            None => Timestamp(i64::MAX),
        }
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.first.year(), self.first.month())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: i64 = 86_400_000;

    #[test]
    fn months_parse_strictly_and_span_their_utc_days() {
        let m = Month::parse("2026-02").unwrap();
        assert_eq!(m.to_string(), "2026-02");
        assert_eq!(m.start(), Timestamp(1_769_904_000_000)); // 2026-02-01T00:00:00Z
        assert_eq!(m.end().0 - m.start().0, 28 * DAY_MS);
        assert_eq!(
            Month::parse("2025-12").unwrap().end(),
            Month::parse("2026-01").unwrap().start()
        );
        assert_eq!(
            Month::of(Timestamp(1_769_904_000_000 - 1)),
            Month::parse("2026-01").unwrap()
        );
        for bad in [
            "2026-13",
            "2026-00",
            "2026-1",
            "26-01",
            "2026/01",
            "",
            "2026-01-01",
            "1969-12",
            "+026-01",
        ] {
            assert!(Month::parse(bad).is_err(), "{bad}");
        }
    }
}
