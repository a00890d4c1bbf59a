//! fal's time-range rules for the Platform API's reporting operations
//! (docs/reference/fal-billing.md section 4; the `start`, `end`, `timezone`, `timeframe` and
//! `bound_to_timeframe` parameters of `GET /models/usage`, shared by billing-events, analytics
//! and serverless usage).
//!
//! A range is `[start, end)`. Buckets are aligned in the caller's IANA time zone, so a "day" is
//! a local calendar day: 23 or 25 hours long on daylight-saving days, and a bucket's label
//! carries the UTC offset in force at its start (`2025-01-15T00:00:00-05:00`). Weeks are ISO
//! weeks (Monday 00:00 local). Usage and analytics are kept per minute, so resolved ranges are
//! whole minutes: a finer range could not be answered exactly.

use chrono::{
    DateTime, Datelike, Days, LocalResult, Months, NaiveDate, NaiveDateTime, NaiveTime,
    SecondsFormat, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;
use tollgate_core::Timestamp;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;

/// The most buckets one range may have: a little over 90 days of minutes (129,600), so a
/// mistaken `timeframe=minute` over years cannot make a handler build millions of buckets.
pub const MAX_BUCKETS: i64 = 200_000;

/// The bucket width of a time series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Timeframe {
    Minute,
    Hour,
    Day,
    Week,
    Month,
}

impl Timeframe {
    /// The spelling used by the `timeframe` parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Timeframe::Minute => "minute",
            Timeframe::Hour => "hour",
            Timeframe::Day => "day",
            Timeframe::Week => "week",
            Timeframe::Month => "month",
        }
    }

    pub fn parse(text: &str) -> Option<Timeframe> {
        Some(match text {
            "minute" => Timeframe::Minute,
            "hour" => Timeframe::Hour,
            "day" => Timeframe::Day,
            "week" => Timeframe::Week,
            "month" => Timeframe::Month,
            _ => return None,
        })
    }

    /// fal's auto-pick from the length of the range: minute under 2 h, hour under 2 days, day
    /// under 64 days, week under 183 days, else month.
    pub fn auto(span_ms: i64) -> Timeframe {
        if span_ms < 2 * HOUR_MS {
            Timeframe::Minute
        } else if span_ms < 2 * DAY_MS {
            Timeframe::Hour
        } else if span_ms < 64 * DAY_MS {
            Timeframe::Day
        } else if span_ms < 183 * DAY_MS {
            Timeframe::Week
        } else {
            Timeframe::Month
        }
    }

    /// Minutes and hours are fixed lengths of absolute time (a repeated local hour is two
    /// buckets); days, weeks and months follow the local calendar.
    fn is_calendar(self) -> bool {
        matches!(self, Timeframe::Day | Timeframe::Week | Timeframe::Month)
    }

    /// The usual length of one bucket, for stepping and for estimating bucket counts.
    fn nominal_ms(self) -> i64 {
        match self {
            Timeframe::Minute => MINUTE_MS,
            Timeframe::Hour => HOUR_MS,
            Timeframe::Day => DAY_MS,
            Timeframe::Week => 7 * DAY_MS,
            Timeframe::Month => 28 * DAY_MS,
        }
    }
}

/// A resolved query range. Invariants: start < end, both whole minutes.
#[derive(Clone, Debug)]
pub struct Range {
    pub start: Timestamp,
    pub end: Timestamp,
    pub tz: Tz,
    pub timeframe: Timeframe,
}

/// One bucket of a time series: its label (the aligned start in the range's zone, with its
/// offset) and its rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeriesBucket<R> {
    pub bucket: String,
    pub results: Vec<R>,
}

/// One time-series bucket, clipped to the range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub start: Timestamp,
    pub end: Timestamp,
    /// The aligned bucket start in the range's zone, e.g. "2025-01-15T00:00:00-05:00".
    pub label: String,
}

/// A range of exact instants (a date means midnight UTC), as the billing events and the request
/// history take it: `end` default `now`, `start` default `default_ms` before `end`, `start`
/// before `end`, at most `max_ms` long.
pub fn instant_range(
    start: Option<Moment>,
    end: Option<Moment>,
    now: Timestamp,
    default_ms: i64,
    max_ms: i64,
) -> Result<(Timestamp, Timestamp), RangeError> {
    let end = end
        .map(|m| m.resolve(Tz::UTC, "end"))
        .transpose()?
        .unwrap_or(now);
    let start = start
        .map(|m| m.resolve(Tz::UTC, "start"))
        .transpose()?
        .unwrap_or(end.minus_ms(default_ms));
    if start >= end {
        return Err(RangeError::new("start", "start must be before end"));
    }
    if end.0 - start.0 > max_ms {
        return Err(RangeError::new(
            "start",
            format!(
                "the range from start to end may span at most {} days",
                max_ms / (24 * 3_600_000)
            ),
        ));
    }
    Ok((start, end))
}

/// Why a range cannot be resolved, naming the parameter at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RangeError {
    /// `start`, `end`, `timezone`, `timeframe` or `bound_to_timeframe`.
    pub field: &'static str,
    pub message: String,
}

impl RangeError {
    pub fn new(field: &'static str, message: impl Into<String>) -> RangeError {
        RangeError {
            field,
            message: message.into(),
        }
    }
}

/// A `start` or `end` as written: an instant, or a calendar date that means local midnight in
/// the range's time zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Moment {
    At(Timestamp),
    Date(NaiveDate),
}

impl Moment {
    /// Parses an RFC 3339 date-time with any offset (`2025-01-01T00:00:00Z`), or a plain date
    /// `YYYY-MM-DD`. An offset whose `+` arrived as a space (an unescaped `+` in a query string
    /// is form-decoded to a space) is read back as `+`.
    pub fn parse(text: &str) -> Result<Moment, String> {
        let text = text.trim();
        let bad = || {
            format!(
                "must be an ISO 8601 date-time with offset (2025-01-01T00:00:00Z) or a date \
                 (2025-01-01), got '{text}'"
            )
        };
        if is_plain_date(text) {
            return NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map(Moment::Date)
                .map_err(|_| bad());
        }
        let parsed = DateTime::parse_from_rfc3339(text).or_else(|e| match text.rfind(' ') {
            Some(i) if i > 10 => {
                DateTime::parse_from_rfc3339(&format!("{}+{}", &text[..i], &text[i + 1..]))
            }
            _ => Err(e),
        });
        parsed
            .map(|d| Moment::At(Timestamp(d.timestamp_millis())))
            .map_err(|_| bad())
    }

    /// The instant this moment names in `tz`, within the years tollgate accepts.
    pub fn resolve(self, tz: Tz, field: &'static str) -> Result<Timestamp, RangeError> {
        let t = match self {
            Moment::At(t) => t,
            Moment::Date(d) => instant_of_local(tz, d.and_time(NaiveTime::MIN), None),
        };
        if !(MIN_INSTANT_MS..MAX_INSTANT_MS).contains(&t.0) {
            return Err(RangeError::new(
                field,
                format!("{field} must be between 1970-01-01 and 9998-12-31"),
            ));
        }
        Ok(t)
    }
}

/// An IANA time zone name (`UTC`, `America/New_York`).
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.trim().parse::<Tz>().map_err(|_| {
        format!("unknown timezone '{name}': use an IANA name such as 'UTC' or 'America/New_York'")
    })
}

/// What a caller asked for: fal's `start`, `end`, `timezone`, `timeframe` and
/// `bound_to_timeframe`, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeSpec {
    /// Default: `end` minus one day.
    pub start: Option<Moment>,
    /// Default: now.
    pub end: Option<Moment>,
    pub tz: Tz,
    /// Default: fal's pick by the length of the range ([`Timeframe::auto`]).
    pub timeframe: Option<Timeframe>,
    /// Snap `start` and `end` out to bucket edges (fal's default: true).
    pub bound_to_timeframe: bool,
}

impl Default for RangeSpec {
    fn default() -> Self {
        RangeSpec {
            start: None,
            end: None,
            tz: Tz::UTC,
            timeframe: None,
            bound_to_timeframe: true,
        }
    }
}

/// Resolves a range by the rules of the module documentation; `now` is the default `end`.
pub fn resolve(spec: &RangeSpec, now: Timestamp) -> Result<Range, RangeError> {
    let tz = spec.tz;
    let end = match spec.end {
        Some(m) => m.resolve(tz, "end")?,
        None => now,
    };
    let start = match spec.start {
        Some(m) => m.resolve(tz, "start")?,
        None => end.minus_ms(DAY_MS),
    };
    let timeframe = spec
        .timeframe
        .unwrap_or_else(|| Timeframe::auto(end.0 - start.0));
    if start >= end {
        return Err(start_not_before_end());
    }
    let mut range = Range {
        start,
        end,
        tz,
        timeframe,
    };
    if spec.bound_to_timeframe {
        range.start = range.bucket_start(start);
        let last = range.bucket_start(end);
        range.end = if last == end {
            end
        } else {
            range.next_boundary(last)
        };
    }
    range.start = floor_minute(range.start);
    range.end = floor_minute(range.end);
    if range.start >= range.end {
        // Only possible with bound_to_timeframe=false and both ends inside one minute.
        return Err(start_not_before_end());
    }
    if (range.end.0 - range.start.0) / timeframe.nominal_ms() > MAX_BUCKETS {
        return Err(RangeError::new(
            "timeframe",
            format!(
                "a {} timeframe over this range makes more than {MAX_BUCKETS} buckets; \
                 choose a coarser timeframe or a shorter range",
                timeframe.as_str()
            ),
        ));
    }
    Ok(range)
}

impl Range {
    /// Whether no bucket boundary inside the range splits a UTC hour, so that the store may
    /// read hour rollups for the range's whole hours (true for hour and longer timeframes in
    /// zones whose offsets are whole hours; false for minute buckets and for zones such as
    /// Asia/Kathmandu).
    pub fn whole_hours(&self) -> bool {
        self.timeframe != Timeframe::Minute
            && self
                .spans()
                .skip(1)
                .all(|(t, _)| t.0.rem_euclid(HOUR_MS) == 0)
    }

    /// Every bucket that meets `[start, end)`, in order, as (its aligned start, the next
    /// bucket's start).
    fn spans(&self) -> impl Iterator<Item = (Timestamp, Timestamp)> + '_ {
        let first = self.bucket_start(self.start);
        std::iter::successors(Some((first, self.next_boundary(first))), |(_, next)| {
            Some((*next, self.next_boundary(*next)))
        })
        .take_while(|(aligned, _)| *aligned < self.end)
    }

    /// One page of rows keyed by (bucket start, group), in order, as fal's `time_series`:
    /// each bucket once, labelled with its start in the range's zone, holding its rows'
    /// renderings.
    pub fn time_series<'a, G: 'a, T: 'a, R>(
        &self,
        rows: impl IntoIterator<Item = (&'a (Timestamp, G), &'a T)>,
        render: impl Fn(&G, &T) -> R,
    ) -> Vec<SeriesBucket<R>> {
        let mut series: Vec<(Timestamp, Vec<R>)> = Vec::new();
        for ((start, group), totals) in rows {
            match series.last_mut() {
                Some((current, results)) if current == start => results.push(render(group, totals)),
                _ => series.push((*start, vec![render(group, totals)])),
            }
        }
        series
            .into_iter()
            .map(|(start, results)| SeriesBucket {
                bucket: label(start, self.tz),
                results,
            })
            .collect()
    }

    /// The buckets covering `[start, end)` in order, aligned to the timeframe in `tz` (minute,
    /// hour, local midnight, ISO-week Monday 00:00 local, first of the month 00:00 local); the
    /// first and last are clipped to the range but keep the aligned start as their label.
    /// A local midnight that does not exist starts the day at the first instant that does.
    pub fn buckets(&self) -> Vec<Bucket> {
        self.spans()
            .map(|(aligned, next)| Bucket {
                start: aligned.max(self.start),
                end: next.min(self.end),
                label: label(aligned, self.tz),
            })
            .collect()
    }

    /// The start of the bucket containing `t` (for grouping rows), aligned as in
    /// [`Range::buckets`]; `t` need not lie inside the range.
    pub fn bucket_start(&self, t: Timestamp) -> Timestamp {
        let local = local_naive(t, self.tz);
        let date = local.date();
        let floor = match self.timeframe {
            Timeframe::Minute => date.and_time(
                NaiveTime::from_hms_opt(local.hour(), local.minute(), 0).unwrap_or(NaiveTime::MIN),
            ),
            Timeframe::Hour => {
                date.and_time(NaiveTime::from_hms_opt(local.hour(), 0, 0).unwrap_or(NaiveTime::MIN))
            }
            Timeframe::Day => date.and_time(NaiveTime::MIN),
            Timeframe::Week => {
                let back = u64::from(date.weekday().num_days_from_monday());
                date.checked_sub_days(Days::new(back))
                    .unwrap_or(date)
                    .and_time(NaiveTime::MIN)
            }
            Timeframe::Month => date.with_day(1).unwrap_or(date).and_time(NaiveTime::MIN),
        };
        // A repeated local hour or minute starts two buckets (take the one at or before `t`);
        // a repeated local midnight starts the day once, at its first occurrence.
        let not_after = (!self.timeframe.is_calendar()).then_some(t);
        instant_of_local(self.tz, floor, not_after)
    }

    /// The start of the bucket after the one starting at `aligned` (a bucket start).
    pub fn next_boundary(&self, aligned: Timestamp) -> Timestamp {
        let next = if self.timeframe.is_calendar() {
            let date = local_naive(aligned, self.tz).date();
            let next_date = match self.timeframe {
                Timeframe::Day => date.checked_add_days(Days::new(1)),
                Timeframe::Week => date.checked_add_days(Days::new(7)),
                _ => date.checked_add_months(Months::new(1)),
            };
            match next_date {
                Some(d) => instant_of_local(self.tz, d.and_time(NaiveTime::MIN), None),
                None => Timestamp(i64::MAX),
            }
        } else {
            // Step by absolute time: a local hour is an hour long except around a transition,
            // where its bucket can be shorter (a skipped half hour) or longer (a repeated one).
            let step = self.timeframe.nominal_ms();
            let mut probe = aligned.plus_ms(step);
            loop {
                let start = self.bucket_start(probe);
                if start > aligned {
                    break start;
                }
                probe = probe.plus_ms(step);
            }
        };
        // Progress guard: never loop on a zero-length bucket, whatever the zone data says.
        next.max(aligned.plus_ms(MINUTE_MS))
    }
}

/// Renders `t` in `tz` as RFC 3339 with its offset, seconds precision
/// (`2025-03-09T03:00:00-04:00`; UTC as `+00:00`).
pub fn label(t: Timestamp, tz: Tz) -> String {
    match Utc.timestamp_millis_opt(t.0) {
        LocalResult::Single(utc) => utc
            .with_timezone(&tz)
            .to_rfc3339_opts(SecondsFormat::Secs, false),
        _ => String::new(),
    }
}

fn start_not_before_end() -> RangeError {
    RangeError::new("start", "start must be before end (end is exclusive)")
}

fn floor_minute(t: Timestamp) -> Timestamp {
    Timestamp(t.0 - t.0.rem_euclid(MINUTE_MS))
}

/// The earliest and latest instants accepted (years 1970 to 9998), so calendar stepping and
/// rendering never leave chrono's range.
const MIN_INSTANT_MS: i64 = 0;
const MAX_INSTANT_MS: i64 = 253_370_764_800_000; // 9999-01-01T00:00:00Z

fn is_plain_date(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// The wall-clock time of `t` in `tz`.
fn local_naive(t: Timestamp, tz: Tz) -> NaiveDateTime {
    match Utc.timestamp_millis_opt(t.0) {
        LocalResult::Single(utc) => utc.with_timezone(&tz).naive_local(),
        _ => DateTime::<Utc>::MIN_UTC.naive_utc(),
    }
}

/// The instant a local wall-clock time names in `tz`. Ambiguous (clocks went back): the later
/// occurrence if it is not after `not_after`, else the earlier. Nonexistent (clocks jumped
/// over it): the first instant that exists after the gap.
fn instant_of_local(tz: Tz, local: NaiveDateTime, not_after: Option<Timestamp>) -> Timestamp {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(dt) => Timestamp(dt.timestamp_millis()),
        LocalResult::Ambiguous(a, b) => {
            let (early, late) = {
                let (a, b) = (a.timestamp_millis(), b.timestamp_millis());
                (a.min(b), a.max(b))
            };
            match not_after {
                Some(t) if late <= t.0 => Timestamp(late),
                _ => Timestamp(early),
            }
        }
        LocalResult::None => first_instant_at_or_after(tz, local),
    }
}

/// The first instant whose wall-clock time in `tz` is at or after `local`. Used only inside a
/// gap, where wall-clock time is increasing over the searched window (offsets are within
/// ±15 h), so a binary search over milliseconds finds the transition.
fn first_instant_at_or_after(tz: Tz, local: NaiveDateTime) -> Timestamp {
    let as_utc = local.and_utc().timestamp_millis();
    let (mut lo, mut hi) = (as_utc - 15 * HOUR_MS, as_utc + 15 * HOUR_MS);
    // Invariant: local(lo) < local, local(hi) >= local.
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if local_naive(Timestamp(mid), tz) >= local {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Timestamp(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Milliseconds of an RFC 3339 string (test inputs are valid).
    fn ts(text: &str) -> Timestamp {
        Timestamp(
            DateTime::parse_from_rfc3339(text)
                .expect("valid test instant")
                .timestamp_millis(),
        )
    }

    /// Parses `a=x&b=y` as the HTTP edge does (the only escapes test inputs use are `+` for
    /// a space and `%2B` for `+`) and resolves it: a refusal names the parameter at fault.
    fn resolve_raw(raw: &str) -> Result<Range, &'static str> {
        let mut spec = RangeSpec::default();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').expect("name=value");
            let v = v.replace('+', " ").replace("%2B", "+");
            let v = v.as_str();
            match k {
                "start" => spec.start = Some(Moment::parse(v).map_err(|_| "start")?),
                "end" => spec.end = Some(Moment::parse(v).map_err(|_| "end")?),
                "timezone" => spec.tz = parse_timezone(v).map_err(|_| "timezone")?,
                "timeframe" => spec.timeframe = Some(Timeframe::parse(v).ok_or("timeframe")?),
                "bound_to_timeframe" => {
                    spec.bound_to_timeframe = match v {
                        "true" => true,
                        "false" => false,
                        _ => return Err("bound_to_timeframe"),
                    }
                }
                other => panic!("unknown test parameter {other}"),
            }
        }
        resolve(&spec, ts("2025-01-15T12:34:56.789Z")).map_err(|e| e.field)
    }

    fn range(raw: &str) -> Range {
        resolve_raw(raw).expect("resolves")
    }

    fn field_of(raw: &str) -> &'static str {
        resolve_raw(raw).expect_err("refused")
    }

    fn labels(r: &Range) -> Vec<String> {
        r.buckets().into_iter().map(|b| b.label).collect()
    }

    fn hours(b: &Bucket) -> i64 {
        (b.end.0 - b.start.0) / HOUR_MS
    }

    #[test]
    fn defaults_are_the_last_24_hours_in_utc_snapped_to_hours() {
        let r = range("");
        assert_eq!(r.tz, Tz::UTC);
        assert_eq!(r.timeframe, Timeframe::Hour);
        assert_eq!(r.start, ts("2025-01-14T12:00:00Z"));
        assert_eq!(r.end, ts("2025-01-15T13:00:00Z"));
        let r = range("bound_to_timeframe=false");
        assert_eq!(r.start, ts("2025-01-14T12:34:00Z"));
        assert_eq!(r.end, ts("2025-01-15T12:34:00Z"));
        assert_eq!(r.buckets().len(), 25);
        assert_eq!(r.buckets()[0].label, "2025-01-14T12:00:00+00:00");
        assert_eq!(r.buckets()[0].start, ts("2025-01-14T12:34:00Z"));
    }

    #[test]
    fn auto_timeframe_thresholds() {
        let cases = [
            (2 * HOUR_MS - MINUTE_MS, Timeframe::Minute),
            (2 * HOUR_MS, Timeframe::Hour),
            (2 * DAY_MS - MINUTE_MS, Timeframe::Hour),
            (2 * DAY_MS, Timeframe::Day),
            (64 * DAY_MS - MINUTE_MS, Timeframe::Day),
            (64 * DAY_MS, Timeframe::Week),
            (183 * DAY_MS - MINUTE_MS, Timeframe::Week),
            (183 * DAY_MS, Timeframe::Month),
        ];
        for (span, want) in cases {
            assert_eq!(Timeframe::auto(span), want, "span {span}");
            let end = ts("2025-06-01T00:00:00Z");
            let start = label(end.minus_ms(span), Tz::UTC);
            let r = range(&format!(
                "start={}&end=2025-06-01T00:00:00Z&bound_to_timeframe=false",
                start.replace('+', "%2B")
            ));
            assert_eq!(r.timeframe, want, "span {span}");
        }
    }

    #[test]
    fn bound_snaps_to_bucket_edges_and_false_keeps_instants_floored_to_minutes() {
        let q = "start=2025-01-15T10:17:30Z&end=2025-01-15T13:05:00Z&timeframe=hour";
        let r = range(q);
        assert_eq!(
            (r.start, r.end),
            (ts("2025-01-15T10:00:00Z"), ts("2025-01-15T14:00:00Z"))
        );
        assert_eq!(r.buckets().len(), 4);
        let r = range(&format!("{q}&bound_to_timeframe=false"));
        assert_eq!(
            (r.start, r.end),
            (ts("2025-01-15T10:17:00Z"), ts("2025-01-15T13:05:00Z"))
        );
        let b = r.buckets();
        assert_eq!(b.len(), 4);
        assert_eq!(
            (b[0].start, b[0].end),
            (ts("2025-01-15T10:17:00Z"), ts("2025-01-15T11:00:00Z"))
        );
        assert_eq!(b[0].label, "2025-01-15T10:00:00+00:00");
        assert_eq!(
            (b[3].start, b[3].end),
            (ts("2025-01-15T13:00:00Z"), ts("2025-01-15T13:05:00Z"))
        );
        // An end already on an edge stays (end is exclusive).
        let r = range("start=2025-01-15T10:00:00Z&end=2025-01-15T12:00:00Z&timeframe=hour");
        assert_eq!(r.end, ts("2025-01-15T12:00:00Z"));
        // Snapping uses the zone: a UTC instant snaps to New York's midnight.
        let r = range("start=2025-01-15T03:00:00Z&end=2025-01-16T03:00:00Z&timeframe=day&timezone=America/New_York");
        assert_eq!(
            (r.start, r.end),
            (ts("2025-01-14T05:00:00Z"), ts("2025-01-16T05:00:00Z"))
        );
    }

    #[test]
    fn new_york_spring_forward_day_is_23_hours() {
        let r = range("start=2025-03-08&end=2025-03-11&timezone=America/New_York");
        assert_eq!(r.timeframe, Timeframe::Day);
        let b = r.buckets();
        assert_eq!(
            labels(&r),
            [
                "2025-03-08T00:00:00-05:00",
                "2025-03-09T00:00:00-05:00",
                "2025-03-10T00:00:00-04:00"
            ]
        );
        assert_eq!(b.iter().map(hours).collect::<Vec<_>>(), [24, 23, 24]);
        assert_eq!(b[1].start, ts("2025-03-09T05:00:00Z"));
        assert_eq!(b[1].end, ts("2025-03-10T04:00:00Z"));
    }

    #[test]
    fn new_york_fall_back_day_is_25_hours() {
        let r = range("start=2025-11-01&end=2025-11-04&timezone=America/New_York");
        let b = r.buckets();
        assert_eq!(
            labels(&r),
            [
                "2025-11-01T00:00:00-04:00",
                "2025-11-02T00:00:00-04:00",
                "2025-11-03T00:00:00-05:00"
            ]
        );
        assert_eq!(b.iter().map(hours).collect::<Vec<_>>(), [24, 25, 24]);
        // A row in the repeated 01:30 belongs to that day.
        assert_eq!(
            r.bucket_start(ts("2025-11-02T01:30:00-05:00")),
            ts("2025-11-02T00:00:00-04:00")
        );
    }

    #[test]
    fn hourly_buckets_across_the_switches() {
        let r = range("start=2025-03-09T00:00:00-05:00&end=2025-03-09T05:00:00-04:00&timeframe=hour&timezone=America/New_York");
        assert_eq!(
            labels(&r),
            [
                "2025-03-09T00:00:00-05:00",
                "2025-03-09T01:00:00-05:00",
                "2025-03-09T03:00:00-04:00",
                "2025-03-09T04:00:00-04:00"
            ]
        );
        let r = range("start=2025-11-02T00:00:00-04:00&end=2025-11-02T03:00:00-05:00&timeframe=hour&timezone=America/New_York");
        assert_eq!(
            labels(&r),
            [
                "2025-11-02T00:00:00-04:00",
                "2025-11-02T01:00:00-04:00",
                "2025-11-02T01:00:00-05:00",
                "2025-11-02T02:00:00-05:00"
            ]
        );
        assert!(r.buckets().iter().all(|b| hours(b) == 1));
        // Rows in each 01:xx land in their own bucket.
        assert_eq!(
            r.bucket_start(ts("2025-11-02T01:59:00-04:00")),
            ts("2025-11-02T01:00:00-04:00")
        );
        assert_eq!(
            r.bucket_start(ts("2025-11-02T01:00:00-05:00")),
            ts("2025-11-02T01:00:00-05:00")
        );
        assert_eq!(
            r.bucket_start(ts("2025-11-02T01:30:00-05:00")),
            ts("2025-11-02T01:00:00-05:00")
        );
    }

    #[test]
    fn hours_align_to_the_local_hour_in_quarter_and_half_hour_zones() {
        let r = range("start=2025-01-15T10:00:00Z&end=2025-01-15T13:00:00Z&timeframe=hour&timezone=Asia/Kathmandu");
        assert_eq!(
            (r.start, r.end),
            (ts("2025-01-15T09:15:00Z"), ts("2025-01-15T13:15:00Z"))
        );
        assert_eq!(
            labels(&r),
            [
                "2025-01-15T15:00:00+05:45",
                "2025-01-15T16:00:00+05:45",
                "2025-01-15T17:00:00+05:45",
                "2025-01-15T18:00:00+05:45"
            ]
        );
        let r = range("start=2025-01-15T10:00:00Z&end=2025-01-15T11:00:00Z&timeframe=hour&timezone=Asia/Kolkata");
        assert_eq!(
            (r.start, r.end),
            (ts("2025-01-15T09:30:00Z"), ts("2025-01-15T11:30:00Z"))
        );
        assert_eq!(labels(&r)[0], "2025-01-15T15:00:00+05:30");
    }

    #[test]
    fn weeks_start_monday_and_months_on_the_first() {
        // 2025-01-15 is a Wednesday.
        let r = range("start=2025-01-15&end=2025-02-20&timeframe=week&timezone=Europe/Berlin");
        assert_eq!(r.start, ts("2025-01-13T00:00:00+01:00"));
        assert_eq!(r.end, ts("2025-02-24T00:00:00+01:00"));
        assert_eq!(
            labels(&r)[..2],
            ["2025-01-13T00:00:00+01:00", "2025-01-20T00:00:00+01:00"]
        );
        assert_eq!(r.buckets().len(), 6);
        // Across the end of March the week holding the switch is 167 hours.
        let r = range("start=2025-03-24&end=2025-03-31&timeframe=week&timezone=Europe/Berlin");
        assert_eq!(r.buckets().iter().map(hours).collect::<Vec<_>>(), [167]);

        let r = range("start=2024-11-15&end=2025-02-03&timeframe=month&timezone=America/New_York");
        assert_eq!(
            labels(&r),
            [
                "2024-11-01T00:00:00-04:00",
                "2024-12-01T00:00:00-05:00",
                "2025-01-01T00:00:00-05:00",
                "2025-02-01T00:00:00-05:00"
            ]
        );
        assert_eq!(r.end, ts("2025-03-01T00:00:00-05:00"));
    }

    #[test]
    fn a_missing_local_midnight_starts_the_day_when_clocks_resume() {
        // Chile moved clocks from 00:00 to 01:00 on 2024-09-08.
        let r = range("start=2024-09-07&end=2024-09-10&timeframe=day&timezone=America/Santiago");
        assert_eq!(
            labels(&r),
            [
                "2024-09-07T00:00:00-04:00",
                "2024-09-08T01:00:00-03:00",
                "2024-09-09T00:00:00-03:00"
            ]
        );
        assert_eq!(
            r.buckets().iter().map(hours).collect::<Vec<_>>(),
            [24, 23, 24]
        );
    }

    #[test]
    fn date_only_inputs_are_local_midnight() {
        let r = range("start=2025-01-01&end=2025-02-01&timezone=America/New_York");
        assert_eq!(r.start, ts("2025-01-01T05:00:00Z"));
        assert_eq!(r.end, ts("2025-02-01T05:00:00Z"));
        assert_eq!(r.timeframe, Timeframe::Day);
        assert_eq!(r.buckets().len(), 31);
        // Any offset in an RFC 3339 value, and a '+' that arrived as a space.
        let r = range("start=2025-01-01T05:30:00%2B05:30&end=2025-01-02T00:00:00+00:00&bound_to_timeframe=false");
        assert_eq!(r.start, ts("2025-01-01T00:00:00Z"));
        assert_eq!(r.end, ts("2025-01-02T00:00:00Z"));
    }

    #[test]
    fn bad_inputs_name_their_parameter() {
        assert_eq!(field_of("start=2025-01-02&end=2025-01-01"), "start");
        assert_eq!(
            field_of("start=2025-01-01T00:00:00Z&end=2025-01-01T00:00:00Z"),
            "start"
        );
        assert_eq!(
            field_of(
                "start=2025-01-01T00:00:10Z&end=2025-01-01T00:00:50Z&bound_to_timeframe=false"
            ),
            "start"
        );
        assert_eq!(field_of("timezone=Mars/Olympus"), "timezone");
        assert_eq!(field_of("timezone=EST5"), "timezone");
        assert_eq!(field_of("start=yesterday"), "start");
        assert_eq!(field_of("end=2025-13-01"), "end");
        assert_eq!(field_of("end=2025-01-01T00:00:00"), "end");
        assert_eq!(field_of("start=1969-12-31"), "start");
        assert_eq!(field_of("timeframe=year"), "timeframe");
        assert_eq!(field_of("bound_to_timeframe=yes"), "bound_to_timeframe");
        assert_eq!(
            field_of("start=2020-01-01&end=2025-01-01&timeframe=minute"),
            "timeframe"
        );
    }

    #[test]
    fn ninety_day_ranges() {
        let r = range("start=2025-01-01&end=2025-04-01&timeframe=day&timezone=America/New_York");
        let b = r.buckets();
        assert_eq!(b.len(), 90);
        assert!(b.windows(2).all(|w| w[0].end == w[1].start));
        assert_eq!(b.iter().filter(|b| hours(b) == 23).count(), 1); // 2025-03-09

        let r = range("start=2025-01-01&end=2025-04-01&timeframe=minute&timezone=America/New_York");
        let b = r.buckets();
        assert_eq!(b.len(), 90 * 24 * 60 - 60);
        assert!(b
            .windows(2)
            .all(|w| w[0].end == w[1].start && w[0].start < w[0].end));
        assert_eq!((b[0].start, b[b.len() - 1].end), (r.start, r.end));
    }

    #[test]
    fn labels_render_offsets() {
        let t = ts("2025-03-09T07:00:00Z");
        assert_eq!(label(t, Tz::UTC), "2025-03-09T07:00:00+00:00");
        assert_eq!(
            label(t, chrono_tz::America::New_York),
            "2025-03-09T03:00:00-04:00"
        );
        assert_eq!(
            label(t.plus_ms(999), chrono_tz::Asia::Kathmandu),
            "2025-03-09T12:45:00+05:45"
        );
    }
}
