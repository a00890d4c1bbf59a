//! Time as plain values: the core never reads a clock, callers pass `now`.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn plus_ms(self, ms: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }
    pub fn minus_ms(self, ms: i64) -> Timestamp {
        Timestamp(self.0.saturating_sub(ms))
    }
    /// Milliseconds from `earlier` to `self`, never negative.
    pub fn ms_since(self, earlier: Timestamp) -> i64 {
        (self.0 - earlier.0).max(0)
    }
}

pub const MS_PER_DAY: i64 = 86_400_000;

/// `at` as RFC 3339 in UTC with milliseconds (`2026-09-15T12:00:00.000Z`): how answers and
/// messages write a time (outside the calendar's range: the epoch).
pub fn rfc3339(at: Timestamp) -> String {
    chrono::DateTime::from_timestamp_millis(at.0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The start (midnight UTC) of the day of `at`, also before the epoch.
pub fn day_start(at: Timestamp) -> Timestamp {
    Timestamp(at.0.saturating_sub(at.0.rem_euclid(MS_PER_DAY)))
}

/// The start (midnight UTC of the first day) of the UTC calendar month of `at` (outside the
/// calendar's range: its day's start).
pub fn month_start(at: Timestamp) -> Timestamp {
    use chrono::{Datelike, NaiveDate, NaiveTime};
    let Some(date) = chrono::DateTime::from_timestamp_millis(at.0).map(|d| d.date_naive()) else {
        return day_start(at);
    };
    NaiveDate::from_ymd_opt(date.year(), date.month(), 1)
        .map(|first| Timestamp(first.and_time(NaiveTime::MIN).and_utc().timestamp_millis()))
        .unwrap_or_else(|| day_start(at))
}

/// The start of the UTC calendar month after the one of `at`.
pub fn next_month_start(at: Timestamp) -> Timestamp {
    // 32 days after a month's start is always in the next month.
    month_start(month_start(at).plus_ms(32 * MS_PER_DAY))
}

/// The start of the UTC calendar month before the one of `at`.
pub fn previous_month_start(at: Timestamp) -> Timestamp {
    month_start(month_start(at).minus_ms(1))
}
