//! Spending limits: a cap on what an account (or one of its API keys) spends per day, week or
//! month of a time zone it chooses, and the state of the current period, which the write path
//! keeps as it admits, settles and charges.
//!
//! What a limit counts, its period's spend: `spent`, the charges recorded while the period
//! runs (settled requests, late completions, usage events whose timestamp is in the period),
//! and `held`, the holds of the running requests it applies to (whenever they started). A
//! limit applies to a request when it is the account's, or its key's (the key the request was
//! made with, a usage event's `api_key`).
//!
//! A `block` limit refuses a start whose hold would take `spent + held` past its amount
//! ([`admit`]). Running requests finish and are billed what they cost, and usage events are
//! billed as they come, so spend passes a limit only by completions that cost more than their
//! holds and by usage events. An `alert` limit refuses nothing.
//!
//! Every limit notifies (pushing events into the batch): each threshold of
//! `alert_at_percent` once per period, when `spent` reaches it (`spent * 100 >= amount *
//! percent`), and `spending_limit.reached` once per period, when `spent` reaches the amount or
//! when a `block` limit refuses a start ([`refused`]; the one change that follows a rejected
//! operation, see [`crate::machine::apply`]).
//!
//! Periods start at local midnight in the limit's zone: every day, on Mondays (a week), or on
//! the 1st (a month) ([`period_bounds`]). The state is rolled lazily ([`LimitState::roll`]):
//! whoever touches a limit at or after its `resets_at` starts the period the time is in, with
//! nothing spent and nothing notified; `held` stays, since those requests still run. A charge
//! counts toward the period of the batch's `now`; a usage event whose timestamp is before that
//! period's start counts toward none (its period is over).

use crate::events::{EventData, LimitFacts};
use crate::ids::{ApiKeyId, LimitId};
use crate::money::{MoneyError, Nanos, MAX_AMOUNT};
use crate::time::{day_start, Timestamp, MS_PER_DAY};
use chrono::{Datelike, Days, LocalResult, Months, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// The thresholds a limit notifies when its creator names none: half, four fifths and all of
/// the amount, whatever its action (an empty list notifies only `spending_limit.reached`).
pub const DEFAULT_ALERT_AT_PERCENT: [u32; 3] = [50, 80, 100];
/// The highest threshold, in percent of the amount (an alert at ten times the limit).
pub const MAX_ALERT_PERCENT: u32 = 1000;
/// The most thresholds one limit has.
pub const MAX_ALERT_THRESHOLDS: usize = 20;
/// The most limits one account has.
pub const MAX_LIMITS_PER_ACCOUNT: usize = 20;

/// What a limit counts: the whole account's spend, or what one of its keys spends.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LimitScope {
    Account,
    ApiKey(ApiKeyId),
}

impl LimitScope {
    pub fn as_str(&self) -> &'static str {
        match self {
            LimitScope::Account => "account",
            LimitScope::ApiKey(_) => "api_key",
        }
    }

    pub fn api_key(&self) -> Option<&ApiKeyId> {
        match self {
            LimitScope::Account => None,
            LimitScope::ApiKey(k) => Some(k),
        }
    }

    /// Whether the spend of a request made with `key` counts toward it.
    pub fn applies_to(&self, key: Option<&ApiKeyId>) -> bool {
        match self {
            LimitScope::Account => true,
            LimitScope::ApiKey(k) => key == Some(k),
        }
    }
}

/// How long a limit's period is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Period {
    Day,
    /// Monday to Monday.
    Week,
    /// The 1st to the 1st.
    Month,
}

impl Period {
    pub const ALL: [Period; 3] = [Period::Day, Period::Week, Period::Month];

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }

    pub fn parse(s: &str) -> Option<Period> {
        Period::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// What a limit does when its period's spend would pass it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitAction {
    /// Refuses starts whose hold would take the period's spend past the amount.
    Block,
    /// Only notifies.
    Alert,
}

impl LimitAction {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitAction::Block => "block",
            LimitAction::Alert => "alert",
        }
    }

    pub fn parse(s: &str) -> Option<LimitAction> {
        [LimitAction::Block, LimitAction::Alert]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

/// A limit as its creator set it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpendingLimit {
    pub id: LimitId,
    pub scope: LimitScope,
    pub period: Period,
    /// The zone whose midnights start the periods.
    pub timezone: Tz,
    /// Positive, at most [`MAX_AMOUNT`].
    pub amount: Nanos,
    pub action: LimitAction,
    /// Sorted, without duplicates, each 1 to [`MAX_ALERT_PERCENT`].
    pub alert_at_percent: Vec<u32>,
    pub created_at: Timestamp,
}

impl SpendingLimit {
    /// The limit if its creator gave a valid one: its amount ([`check_amount`]) and its
    /// thresholds ([`alert_thresholds`], normalized).
    pub fn checked(self) -> Result<SpendingLimit, LimitError> {
        Ok(SpendingLimit {
            amount: check_amount(self.amount)?,
            alert_at_percent: alert_thresholds(Some(&self.alert_at_percent))?,
            ..self
        })
    }
}

/// A refused limit or change: the field at fault and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {message}")]
pub struct LimitError {
    pub field: &'static str,
    pub message: String,
}

impl LimitError {
    fn new(field: &'static str, message: impl Into<String>) -> LimitError {
        LimitError {
            field,
            message: message.into(),
        }
    }
}

/// A limit's amount if it is one: positive and at most [`MAX_AMOUNT`].
pub fn check_amount(amount: Nanos) -> Result<Nanos, LimitError> {
    if amount <= Nanos::ZERO || amount > MAX_AMOUNT {
        return Err(LimitError::new(
            "amount_usd",
            format!("must be positive and at most {MAX_AMOUNT}"),
        ));
    }
    Ok(amount)
}

/// The thresholds a limit notifies: those given, sorted and without duplicates, each 1 to
/// [`MAX_ALERT_PERCENT`] (at most [`MAX_ALERT_THRESHOLDS`]); none given: the default
/// ([`DEFAULT_ALERT_AT_PERCENT`]).
pub fn alert_thresholds(given: Option<&[u32]>) -> Result<Vec<u32>, LimitError> {
    let Some(given) = given else {
        return Ok(DEFAULT_ALERT_AT_PERCENT.to_vec());
    };
    if let Some(p) = given.iter().find(|p| !(1..=MAX_ALERT_PERCENT).contains(*p)) {
        return Err(LimitError::new(
            "alert_at_percent",
            format!("holds {p}: each threshold must be 1 to {MAX_ALERT_PERCENT} (percent of the amount)"),
        ));
    }
    let mut v = given.to_vec();
    v.sort_unstable();
    v.dedup();
    if v.len() > MAX_ALERT_THRESHOLDS {
        return Err(LimitError::new(
            "alert_at_percent",
            format!("has {} thresholds; at most {MAX_ALERT_THRESHOLDS}", v.len()),
        ));
    }
    Ok(v)
}

/// A change of a limit (`PUT`): the fields named are replaced; the id, scope, period and
/// zone never change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LimitChange {
    pub amount: Option<Nanos>,
    pub action: Option<LimitAction>,
    /// Checked by [`alert_thresholds`] (`Some(empty)`: no thresholds).
    pub alert_at_percent: Option<Vec<u32>>,
}

/// A limit with the state of its current period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitState {
    pub limit: SpendingLimit,
    pub period_start: Timestamp,
    /// The next period's start.
    pub resets_at: Timestamp,
    /// The charges recorded in the period.
    pub spent: Nanos,
    /// The holds of the running requests the limit applies to.
    pub held: Nanos,
    /// The thresholds notified this period, sorted.
    pub alerted: Vec<u32>,
    /// Whether `spending_limit.reached` was notified this period.
    pub reached: bool,
}

impl LimitState {
    /// A new limit in the period of `now`, with what the period has `spent` so far and what
    /// the running requests it applies to hold.
    pub fn new(limit: SpendingLimit, now: Timestamp, spent: Nanos, held: Nanos) -> LimitState {
        let (period_start, resets_at) = period_bounds(now, limit.period, limit.timezone);
        LimitState {
            limit,
            period_start,
            resets_at,
            spent,
            held,
            alerted: Vec::new(),
            reached: false,
        }
    }

    /// Starts the period `now` is in, if the current one has ended: nothing spent, nothing
    /// notified (`held` stays). A clock behind the period's start changes nothing.
    pub fn roll(&mut self, now: Timestamp) {
        if now < self.resets_at {
            return;
        }
        let (start, end) = period_bounds(now, self.limit.period, self.limit.timezone);
        self.period_start = start;
        self.resets_at = end;
        self.spent = Nanos::ZERO;
        self.alerted.clear();
        self.reached = false;
    }

    /// The limit as it stands at `now` (rolled).
    pub fn at(&self, now: Timestamp) -> LimitState {
        let mut l = self.clone();
        l.roll(now);
        l
    }

    /// The limit changed by `change`, keeping its id and period state: a threshold already
    /// notified this period stays notified while it is still listed and the spend still
    /// reaches it (so one whose amount moved past the spend is notified again when reached);
    /// `reached` stays unless the amount rose past the spend. Thresholds the change puts
    /// behind the spend are notified by the change's own commit ([`LimitState::notify`]).
    pub fn changed(&self, change: &LimitChange, now: Timestamp) -> Result<LimitState, LimitError> {
        let mut next = self.at(now);
        if let Some(amount) = change.amount {
            next.limit.amount = check_amount(amount)?;
        }
        if let Some(action) = change.action {
            next.limit.action = action;
        }
        if let Some(given) = &change.alert_at_percent {
            next.limit.alert_at_percent = alert_thresholds(Some(given))?;
        }
        let kept: Vec<u32> = next
            .alerted
            .iter()
            .copied()
            .filter(|p| next.limit.alert_at_percent.contains(p) && next.passes(*p))
            .collect();
        next.alerted = kept;
        // Reached stays unless the amount rose past the spend: a block limit marked reached by
        // a refusal (its spend below the amount, its holds past it) is not notified again
        // because the thresholds or the action changed.
        let rose = next.limit.amount > self.limit.amount;
        next.reached = next.reached && (!rose || next.spent >= next.limit.amount);
        Ok(next)
    }

    /// Whether `spent` reaches `percent` of the amount.
    fn passes(&self, percent: u32) -> bool {
        i128::from(self.spent.0) * 100 >= i128::from(self.limit.amount.0) * i128::from(percent)
    }

    /// The thresholds of `alert_at_percent` the period's spend reaches now, ascending, whether
    /// their notices went out yet or not.
    pub fn thresholds_reached(&self) -> Vec<u32> {
        self.limit
            .alert_at_percent
            .iter()
            .copied()
            .filter(|p| self.passes(*p))
            .collect()
    }

    /// Whether the limit is reached this period: its spend reaches the amount, or (a `block`
    /// limit) it refused a start.
    pub fn is_reached(&self) -> bool {
        self.reached || self.spent >= self.limit.amount
    }

    /// What events say of the limit now.
    pub fn facts(&self) -> LimitFacts {
        LimitFacts {
            limit_id: self.limit.id.as_str().to_string(),
            scope: self.limit.scope.as_str().to_string(),
            api_key_id: self.limit.scope.api_key().cloned(),
            period: self.limit.period.as_str().to_string(),
            timezone: self.limit.timezone.name().to_string(),
            action: self.limit.action.as_str().to_string(),
            amount_nano_usd: self.limit.amount,
            spent_nano_usd: self.spent,
            period_start: self.period_start,
            resets_at: self.resets_at,
        }
    }

    /// The notices `spent` now calls for: thresholds reached and not yet notified, in
    /// ascending order, then `reached` (also when a limit is created or changed, so one whose
    /// spend already passes a threshold says so at once).
    pub fn notify(&mut self, out: &mut Vec<EventData>) {
        let due: Vec<u32> = self
            .limit
            .alert_at_percent
            .iter()
            .copied()
            .filter(|p| !self.alerted.contains(p) && self.passes(*p))
            .collect();
        for p in due {
            self.alerted.push(p);
            out.push(EventData::SpendingLimitAlert {
                limit: self.facts(),
                threshold_percent: p,
            });
        }
        self.alerted.sort_unstable();
        if !self.reached && self.spent >= self.limit.amount {
            self.reached = true;
            out.push(EventData::SpendingLimitReached {
                limit: self.facts(),
            });
        }
    }
}

/// A start that a block limit refuses: the first such limit, in the account's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exceeded {
    pub limit_id: LimitId,
    pub period: Period,
    pub amount: Nanos,
    /// The period's spend and holds before this start.
    pub spent: Nanos,
    pub held: Nanos,
    pub resets_at: Timestamp,
}

/// Whether the account's block limits that apply to a request made with `key` admit a hold of
/// `hold` at `now`: `spent + held + hold <= amount` for each (its period rolled to `now`).
pub fn admit(
    limits: &[LimitState],
    key: Option<&ApiKeyId>,
    hold: Nanos,
    now: Timestamp,
) -> Result<(), Exceeded> {
    for l in limits {
        if l.limit.action != LimitAction::Block || !l.limit.scope.applies_to(key) {
            continue;
        }
        let spent = if now >= l.resets_at {
            Nanos::ZERO
        } else {
            l.spent
        };
        let total = i128::from(spent.0) + i128::from(l.held.0) + i128::from(hold.0);
        if total > i128::from(l.limit.amount.0) {
            let l = l.at(now);
            return Err(Exceeded {
                limit_id: l.limit.id.clone(),
                period: l.limit.period,
                amount: l.limit.amount,
                spent: l.spent,
                held: l.held,
                resets_at: l.resets_at,
            });
        }
    }
    Ok(())
}

/// Adds a started request's hold to every limit that applies to it.
pub fn hold(
    limits: &mut [LimitState],
    key: Option<&ApiKeyId>,
    hold: Nanos,
    now: Timestamp,
) -> Result<(), MoneyError> {
    move_held(limits, key, now, |held| held.checked_add(hold))
}

/// Takes a finished request's hold (settled, voided, cancelled or expired) off every limit
/// that applies to it. Exact, never saturated: `held` is the sum of the holds of the running
/// requests (a limit created while they ran starts with theirs).
pub fn release(
    limits: &mut [LimitState],
    key: Option<&ApiKeyId>,
    hold: Nanos,
    now: Timestamp,
) -> Result<(), MoneyError> {
    move_held(limits, key, now, |held| held.checked_sub(hold))
}

/// Rolls every limit that applies to `key` to `now` and moves its `held` by `change`.
fn move_held(
    limits: &mut [LimitState],
    key: Option<&ApiKeyId>,
    now: Timestamp,
    change: impl Fn(Nanos) -> Result<Nanos, MoneyError>,
) -> Result<(), MoneyError> {
    for l in limits.iter_mut().filter(|l| l.limit.scope.applies_to(key)) {
        l.roll(now);
        l.held = change(l.held)?;
    }
    Ok(())
}

/// Adds a charge recorded at `now` to every limit that applies to it, and returns the notices
/// that calls for. `event_at` is a usage event's timestamp: before the period's start, the
/// charge counts toward no limit's period (that period is over).
pub fn spend(
    limits: &mut [LimitState],
    key: Option<&ApiKeyId>,
    amount: Nanos,
    event_at: Option<Timestamp>,
    now: Timestamp,
) -> Result<Vec<EventData>, MoneyError> {
    let mut out = Vec::new();
    for l in limits.iter_mut().filter(|l| l.limit.scope.applies_to(key)) {
        l.roll(now);
        if event_at.is_some_and(|at| at < l.period_start) {
            continue;
        }
        l.spent = l.spent.checked_add(amount)?;
        l.notify(&mut out);
    }
    Ok(out)
}

/// A block limit refused a start: the limit counts as reached, notified once per period.
/// Returns the notice if this is the first time in the period.
pub fn refused(limits: &mut [LimitState], id: &LimitId, now: Timestamp) -> Option<EventData> {
    let l = limits.iter_mut().find(|l| &l.limit.id == id)?;
    let mut rolled = l.at(now);
    if rolled.reached {
        return None;
    }
    rolled.reached = true;
    let notice = EventData::SpendingLimitReached {
        limit: rolled.facts(),
    };
    *l = rolled;
    Some(notice)
}

/// The period of `period` that `now` is in, in `tz`: `[start, end)`, each the first instant of
/// its day (local midnight: every day, on a Monday for a week, on the 1st for a month). A
/// local midnight that does not exist (the clocks jumped over it) starts the period at the
/// first instant that does; one that happens twice (the clocks went back over it), at the
/// earlier.
pub fn period_bounds(now: Timestamp, period: Period, tz: Tz) -> (Timestamp, Timestamp) {
    let utc_day = || {
        let start = day_start(now);
        (start, start.plus_ms(MS_PER_DAY))
    };
    let Some(today) = Utc
        .timestamp_millis_opt(now.0)
        .single()
        .map(|t| t.with_timezone(&tz).date_naive())
    else {
        return utc_day();
    };
    let first = match period {
        Period::Day => Some(today),
        Period::Week => {
            today.checked_sub_days(Days::new(u64::from(today.weekday().num_days_from_monday())))
        }
        Period::Month => today.with_day(1),
    };
    let next = first.and_then(|first| match period {
        Period::Day => first.checked_add_days(Days::new(1)),
        Period::Week => first.checked_add_days(Days::new(7)),
        Period::Month => first.checked_add_months(Months::new(1)),
    });
    match (first, next) {
        (Some(first), Some(next)) => (day_begins(tz, first), day_begins(tz, next)),
        _ => utc_day(),
    }
}

/// The first instant of `date` in `tz`.
fn day_begins(tz: Tz, date: NaiveDate) -> Timestamp {
    let midnight = date.and_time(chrono::NaiveTime::MIN);
    match tz.from_local_datetime(&midnight) {
        LocalResult::Single(t) => Timestamp(t.timestamp_millis()),
        LocalResult::Ambiguous(a, b) => Timestamp(a.timestamp_millis().min(b.timestamp_millis())),
        LocalResult::None => first_instant_from(tz, midnight),
    }
}

/// The first instant whose wall-clock time in `tz` is at or after `local` (which the clocks
/// jumped over). Wall-clock time increases over the searched window (offsets are within
/// ±15 hours, and a zone changes its offset at most once in a day), so a binary search over
/// milliseconds finds the jump.
fn first_instant_from(tz: Tz, local: NaiveDateTime) -> Timestamp {
    const SPAN_MS: i64 = 15 * 3_600_000;
    let wall = |ms: i64| {
        Utc.timestamp_millis_opt(ms)
            .single()
            .map(|t| t.with_timezone(&tz).naive_local())
    };
    let as_utc = local.and_utc().timestamp_millis();
    let (mut lo, mut hi) = (as_utc - SPAN_MS, as_utc + SPAN_MS);
    // Invariant: wall(lo) < local <= wall(hi).
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if wall(mid).is_some_and(|w| w >= local) {
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

    fn ts(text: &str) -> Timestamp {
        Timestamp(
            chrono::DateTime::parse_from_rfc3339(text)
                .expect("a valid test instant")
                .timestamp_millis(),
        )
    }

    fn tz(name: &str) -> Tz {
        name.parse().expect("a known zone")
    }

    /// The period of `period` in `zone` at `now`, as RFC 3339 UTC strings.
    fn bounds(now: &str, period: Period, zone: &str) -> (String, String) {
        let (a, b) = period_bounds(ts(now), period, tz(zone));
        (crate::time::rfc3339(a), crate::time::rfc3339(b))
    }

    fn pair(a: &str, b: &str) -> (String, String) {
        (a.to_string(), b.to_string())
    }

    const HOUR: i64 = 3_600_000;

    #[test]
    fn a_day_starts_at_local_midnight_in_the_limits_zone() {
        // Berlin is UTC+1 in January: its day ends at 23:00 UTC.
        assert_eq!(
            bounds("2026-01-15T22:59:59.999Z", Period::Day, "Europe/Berlin"),
            pair("2026-01-14T23:00:00.000Z", "2026-01-15T23:00:00.000Z")
        );
        assert_eq!(
            bounds("2026-01-15T23:00:00Z", Period::Day, "Europe/Berlin"),
            pair("2026-01-15T23:00:00.000Z", "2026-01-16T23:00:00.000Z")
        );
        // UTC-5: the local day is still the 15th at 04:59 UTC on the 16th.
        assert_eq!(
            bounds("2026-01-16T04:59:00Z", Period::Day, "America/New_York"),
            pair("2026-01-15T05:00:00.000Z", "2026-01-16T05:00:00.000Z")
        );
        assert_eq!(
            bounds("2026-01-16T00:00:00Z", Period::Day, "UTC"),
            pair("2026-01-16T00:00:00.000Z", "2026-01-17T00:00:00.000Z")
        );
        // A zone half an hour off the hour.
        assert_eq!(
            bounds("2026-01-16T18:29:00Z", Period::Day, "Asia/Kolkata"),
            pair("2026-01-15T18:30:00.000Z", "2026-01-16T18:30:00.000Z")
        );
    }

    #[test]
    fn a_week_starts_on_monday_at_local_midnight() {
        // 2026-03-02 is a Monday. In Tokyo (UTC+9) it begins at 15:00 UTC on Sunday the 1st.
        assert_eq!(
            bounds("2026-03-01T14:59:59Z", Period::Week, "Asia/Tokyo"),
            pair("2026-02-22T15:00:00.000Z", "2026-03-01T15:00:00.000Z")
        );
        assert_eq!(
            bounds("2026-03-01T15:00:00Z", Period::Week, "Asia/Tokyo"),
            pair("2026-03-01T15:00:00.000Z", "2026-03-08T15:00:00.000Z")
        );
        // Sunday evening in New York is the week before Monday's.
        assert_eq!(
            bounds("2026-03-02T04:00:00Z", Period::Week, "America/New_York"),
            pair("2026-02-23T05:00:00.000Z", "2026-03-02T05:00:00.000Z")
        );
        // A week across the year's end: Monday 2026-12-28 to Monday 2027-01-04.
        assert_eq!(
            bounds("2027-01-01T12:00:00Z", Period::Week, "UTC"),
            pair("2026-12-28T00:00:00.000Z", "2027-01-04T00:00:00.000Z")
        );
        // A week that holds a DST change is 167 hours long (New York, 2026-03-08).
        let (a, b) = period_bounds(
            ts("2026-03-05T12:00:00Z"),
            Period::Week,
            tz("America/New_York"),
        );
        assert_eq!(b.0 - a.0, 167 * HOUR);
    }

    #[test]
    fn a_month_starts_on_the_first_at_local_midnight() {
        // The last half hour of January in UTC is still January 31st in New York...
        assert_eq!(
            bounds("2026-01-31T23:30:00Z", Period::Month, "America/New_York"),
            pair("2026-01-01T05:00:00.000Z", "2026-02-01T05:00:00.000Z")
        );
        // ... and already February in Berlin.
        assert_eq!(
            bounds("2026-01-31T23:30:00Z", Period::Month, "Europe/Berlin"),
            pair("2026-01-31T23:00:00.000Z", "2026-02-28T23:00:00.000Z")
        );
        // February of a leap year; March begins in CET, April in CEST.
        assert_eq!(
            bounds("2028-02-29T12:00:00Z", Period::Month, "UTC"),
            pair("2028-02-01T00:00:00.000Z", "2028-03-01T00:00:00.000Z")
        );
        assert_eq!(
            bounds("2026-03-15T12:00:00Z", Period::Month, "Europe/Berlin"),
            pair("2026-02-28T23:00:00.000Z", "2026-03-31T22:00:00.000Z")
        );
        // Across the year's end, in a zone ahead of UTC (Auckland, UTC+13 in summer).
        assert_eq!(
            bounds("2026-12-31T11:00:00Z", Period::Month, "Pacific/Auckland"),
            pair("2026-12-31T11:00:00.000Z", "2027-01-31T11:00:00.000Z")
        );
        assert_eq!(
            bounds("2026-12-31T10:59:59Z", Period::Month, "Pacific/Auckland"),
            pair("2026-11-30T11:00:00.000Z", "2026-12-31T11:00:00.000Z")
        );
        assert_eq!(
            bounds("2026-12-31T23:59:59Z", Period::Day, "UTC"),
            pair("2026-12-31T00:00:00.000Z", "2027-01-01T00:00:00.000Z")
        );
    }

    #[test]
    fn a_day_with_a_dst_change_is_23_or_25_hours_long() {
        // New York springs forward at 02:00 on 2026-03-08 and falls back on 2026-11-01.
        assert_eq!(
            bounds("2026-03-08T12:00:00Z", Period::Day, "America/New_York"),
            pair("2026-03-08T05:00:00.000Z", "2026-03-09T04:00:00.000Z")
        );
        assert_eq!(
            bounds("2026-11-01T12:00:00Z", Period::Day, "America/New_York"),
            pair("2026-11-01T04:00:00.000Z", "2026-11-02T05:00:00.000Z")
        );
        // Berlin: 2026-03-29 and 2026-10-25.
        let (a, b) = period_bounds(ts("2026-03-29T12:00:00Z"), Period::Day, tz("Europe/Berlin"));
        assert_eq!(
            (crate::time::rfc3339(a), b.0 - a.0),
            ("2026-03-28T23:00:00.000Z".into(), 23 * HOUR)
        );
        let (a, b) = period_bounds(ts("2026-10-25T12:00:00Z"), Period::Day, tz("Europe/Berlin"));
        assert_eq!(
            (crate::time::rfc3339(a), b.0 - a.0),
            ("2026-10-24T22:00:00.000Z".into(), 25 * HOUR)
        );
    }

    #[test]
    fn a_midnight_the_clocks_skip_starts_the_day_at_the_first_instant_that_exists() {
        // Havana springs forward at midnight on 2026-03-08: 00:00 CST becomes 01:00 CDT at
        // 05:00 UTC, so the 8th begins then, and the 7th ends there (24 hours long).
        assert_eq!(
            bounds("2026-03-08T12:00:00Z", Period::Day, "America/Havana"),
            pair("2026-03-08T05:00:00.000Z", "2026-03-09T04:00:00.000Z")
        );
        assert_eq!(
            bounds("2026-03-08T04:59:59Z", Period::Day, "America/Havana"),
            pair("2026-03-07T05:00:00.000Z", "2026-03-08T05:00:00.000Z")
        );
        // Santiago springs forward at midnight on 2026-09-06 (00:00 -04 becomes 01:00 -03).
        assert_eq!(
            bounds("2026-09-06T12:00:00Z", Period::Day, "America/Santiago"),
            pair("2026-09-06T04:00:00.000Z", "2026-09-07T03:00:00.000Z")
        );
    }

    #[test]
    fn a_midnight_that_happens_twice_starts_the_day_at_the_earlier_one() {
        // Havana falls back at 01:00 CDT on 2026-11-01 to 00:00 CST: midnight happens at 04:00
        // UTC and again at 05:00 UTC; the day begins at the first, and is 25 hours long.
        assert_eq!(
            bounds("2026-11-01T04:30:00Z", Period::Day, "America/Havana"),
            pair("2026-11-01T04:00:00.000Z", "2026-11-02T05:00:00.000Z")
        );
        assert_eq!(
            bounds("2026-11-01T03:59:59Z", Period::Day, "America/Havana"),
            pair("2026-10-31T04:00:00.000Z", "2026-11-01T04:00:00.000Z")
        );
    }

    #[test]
    fn every_instant_is_in_its_period_and_periods_follow_each_other() {
        let zones = [
            "UTC",
            "America/New_York",
            "Europe/Berlin",
            "America/Havana",
            "America/Santiago",
            "Asia/Kolkata",
            "Pacific/Auckland",
            "Australia/Lord_Howe",
        ];
        let start = ts("2025-12-20T00:00:00Z");
        for zone in zones {
            for period in Period::ALL {
                let mut t = start;
                let (_, mut end) = period_bounds(t, period, tz(zone));
                while t < ts("2027-01-10T00:00:00Z") {
                    let (a, b) = period_bounds(t, period, tz(zone));
                    assert!(a <= t && t < b, "{zone} {period:?} {t:?}: [{a:?}, {b:?})");
                    if a >= end {
                        assert_eq!(
                            a, end,
                            "{zone} {period:?}: a period starts where the last ended"
                        );
                        end = b;
                    }
                    t = t.plus_ms(20 * 60_000 + 17);
                }
            }
        }
    }

    fn limit(action: LimitAction, amount: i64, thresholds: &[u32]) -> LimitState {
        LimitState::new(
            SpendingLimit {
                id: LimitId::parse("lim_a").unwrap(),
                scope: LimitScope::Account,
                period: Period::Day,
                timezone: tz("Europe/Berlin"),
                amount: Nanos(amount),
                action,
                alert_at_percent: thresholds.to_vec(),
                created_at: ts("2026-01-15T10:00:00Z"),
            },
            ts("2026-01-15T10:00:00Z"),
            Nanos::ZERO,
            Nanos::ZERO,
        )
    }

    fn alerts(events: &[EventData]) -> Vec<u32> {
        events
            .iter()
            .filter_map(|e| match e {
                EventData::SpendingLimitAlert {
                    threshold_percent, ..
                } => Some(*threshold_percent),
                _ => None,
            })
            .collect()
    }

    fn reached(events: &[EventData]) -> usize {
        events
            .iter()
            .filter(|e| matches!(e, EventData::SpendingLimitReached { .. }))
            .count()
    }

    #[test]
    fn thresholds_are_notified_once_each_per_period_and_reached_once() {
        let now = ts("2026-01-15T11:00:00Z");
        let mut limits = vec![limit(LimitAction::Alert, 1_000, &[50, 80, 100, 150])];
        let e = spend(&mut limits, None, Nanos(499), None, now).unwrap();
        assert!(e.is_empty());
        let e = spend(&mut limits, None, Nanos(1), None, now).unwrap();
        assert_eq!(alerts(&e), [50]);
        // Two thresholds and the amount at once: in order, then `reached`.
        let e = spend(&mut limits, None, Nanos(500), None, now).unwrap();
        assert_eq!((alerts(&e), reached(&e)), (vec![80, 100], 1));
        assert!(matches!(
            e.last(),
            Some(EventData::SpendingLimitReached { .. })
        ));
        let e = spend(&mut limits, None, Nanos(400), None, now).unwrap();
        assert!(e.is_empty(), "{e:?}");
        let e = spend(&mut limits, None, Nanos(100), None, now).unwrap();
        assert_eq!((alerts(&e), reached(&e)), (vec![150], 0));
        if let EventData::SpendingLimitAlert { limit, .. } = &e[0] {
            assert_eq!(limit.spent_nano_usd, Nanos(1_500));
            assert_eq!(limit.limit_id, "lim_a");
            assert_eq!(
                crate::time::rfc3339(limit.resets_at),
                "2026-01-15T23:00:00.000Z"
            );
        }
        // The next local day starts over.
        let tomorrow = ts("2026-01-15T23:00:00Z");
        let e = spend(&mut limits, None, Nanos(600), None, tomorrow).unwrap();
        assert_eq!(alerts(&e), [50]);
        assert_eq!(limits[0].spent, Nanos(600));
        assert_eq!(limits[0].period_start, tomorrow);
    }

    #[test]
    fn a_block_limit_admits_holds_up_to_its_amount_and_counts_what_runs() {
        let now = ts("2026-01-15T11:00:00Z");
        let mut limits = vec![limit(LimitAction::Block, 1_000, &[])];
        hold(&mut limits, None, Nanos(600), now).unwrap();
        assert!(admit(&limits, None, Nanos(400), now).is_ok());
        let refused = admit(&limits, None, Nanos(401), now).unwrap_err();
        assert_eq!((refused.spent, refused.held), (Nanos::ZERO, Nanos(600)));
        assert_eq!(refused.resets_at, ts("2026-01-15T23:00:00Z"));
        // The request settles for more than it held: spend passes the limit, and then no
        // hold is admitted.
        release(&mut limits, None, Nanos(600), now).unwrap();
        let e = spend(&mut limits, None, Nanos(1_200), None, now).unwrap();
        assert_eq!(reached(&e), 1);
        assert!(admit(&limits, None, Nanos(0), now).is_err());
        // Tomorrow it admits again; the alert-only limit never refuses.
        assert!(admit(&limits, None, Nanos(1_000), ts("2026-01-15T23:00:00Z")).is_ok());
        let alert_only = vec![limit(LimitAction::Alert, 1, &[])];
        assert!(admit(&alert_only, None, Nanos(5), now).is_ok());
    }

    #[test]
    fn a_held_request_keeps_counting_after_the_period_rolls() {
        let now = ts("2026-01-15T22:30:00Z");
        let mut limits = vec![limit(LimitAction::Block, 1_000, &[])];
        hold(&mut limits, None, Nanos(700), now).unwrap();
        let later = ts("2026-01-15T23:30:00Z");
        assert!(
            admit(&limits, None, Nanos(301), later).is_err(),
            "the hold still runs"
        );
        release(&mut limits, None, Nanos(700), later).unwrap();
        spend(&mut limits, None, Nanos(650), None, later).unwrap();
        assert_eq!((limits[0].spent, limits[0].held), (Nanos(650), Nanos::ZERO));
    }

    #[test]
    fn a_key_limit_counts_only_that_keys_spend() {
        let now = ts("2026-01-15T11:00:00Z");
        let k = ApiKeyId::parse("k1").unwrap();
        let mut l = limit(LimitAction::Block, 1_000, &[]);
        l.limit.scope = LimitScope::ApiKey(k.clone());
        let mut limits = vec![l];
        spend(&mut limits, None, Nanos(900), None, now).unwrap();
        spend(
            &mut limits,
            Some(&ApiKeyId::parse("k2").unwrap()),
            Nanos(900),
            None,
            now,
        )
        .unwrap();
        assert_eq!(limits[0].spent, Nanos::ZERO);
        assert!(admit(&limits, None, Nanos(5_000), now).is_ok());
        spend(&mut limits, Some(&k), Nanos(900), None, now).unwrap();
        assert_eq!(limits[0].spent, Nanos(900));
        assert!(admit(&limits, Some(&k), Nanos(101), now).is_err());
    }

    #[test]
    fn a_usage_event_from_before_the_period_counts_toward_none() {
        let now = ts("2026-01-15T23:30:00Z");
        let mut limits = vec![limit(LimitAction::Alert, 1_000, &[])];
        spend(
            &mut limits,
            None,
            Nanos(5),
            Some(ts("2026-01-15T22:59:00Z")),
            now,
        )
        .unwrap();
        assert_eq!(limits[0].spent, Nanos::ZERO);
        assert_eq!(limits[0].period_start, ts("2026-01-15T23:00:00Z"));
        spend(
            &mut limits,
            None,
            Nanos(5),
            Some(ts("2026-01-15T23:00:00Z")),
            now,
        )
        .unwrap();
        assert_eq!(limits[0].spent, Nanos(5));
    }

    #[test]
    fn a_refusal_notifies_reached_once_per_period() {
        let now = ts("2026-01-15T11:00:00Z");
        let mut limits = vec![limit(LimitAction::Block, 1_000, &[])];
        let id = limits[0].limit.id.clone();
        assert!(!limits[0].is_reached());
        assert!(refused(&mut limits, &id, now).is_some());
        assert!(
            limits[0].is_reached(),
            "reached by a refusal, nothing spent"
        );
        assert!(refused(&mut limits, &id, now).is_none());
        assert!(refused(&mut limits, &id, ts("2026-01-15T23:00:00Z")).is_some());
        assert!(refused(&mut limits, &LimitId::parse("lim_other").unwrap(), now).is_none());
    }

    #[test]
    fn a_change_that_does_not_raise_the_amount_keeps_a_refusals_reached_notice() {
        let now = ts("2026-01-15T11:00:00Z");
        let mut limits = vec![limit(LimitAction::Block, 1_000, &[50])];
        let id = limits[0].limit.id.clone();
        assert!(refused(&mut limits, &id, now).is_some());
        let same = |change: LimitChange| limits[0].changed(&change, now).unwrap().reached;
        assert!(same(LimitChange::default()));
        assert!(same(LimitChange {
            alert_at_percent: Some(vec![80]),
            ..LimitChange::default()
        }));
        assert!(same(LimitChange {
            amount: Some(Nanos(900)),
            ..LimitChange::default()
        }));
        // A higher amount than the spend arms the notice again.
        assert!(!same(LimitChange {
            amount: Some(Nanos(2_000)),
            ..LimitChange::default()
        }));
    }

    #[test]
    fn a_change_keeps_what_was_notified_while_it_still_holds() {
        let now = ts("2026-01-15T11:00:00Z");
        let mut limits = vec![limit(LimitAction::Alert, 1_000, &[50, 80, 100])];
        spend(&mut limits, None, Nanos(1_000), None, now).unwrap();
        assert_eq!(limits[0].alerted, [50, 80, 100]);
        assert_eq!(limits[0].thresholds_reached(), [50, 80, 100]);
        assert!(limits[0].is_reached());
        // Same amount, thresholds changed: 80 and 100 stay notified, 90 is new.
        let c = limits[0]
            .changed(
                &LimitChange {
                    alert_at_percent: Some(vec![100, 90, 80, 80]),
                    ..LimitChange::default()
                },
                now,
            )
            .unwrap();
        assert_eq!(c.limit.alert_at_percent, [80, 90, 100]);
        assert_eq!(
            (c.alerted.clone(), c.reached, c.spent),
            (vec![80, 100], true, Nanos(1_000))
        );
        // Doubled: only 50 still holds, and the limit is no longer reached.
        let c = limits[0]
            .changed(
                &LimitChange {
                    amount: Some(Nanos(2_000)),
                    action: Some(LimitAction::Block),
                    ..LimitChange::default()
                },
                now,
            )
            .unwrap();
        assert_eq!((c.alerted.clone(), c.reached), (vec![50], false));
        assert_eq!((c.thresholds_reached(), c.is_reached()), (vec![50], false));
        assert_eq!(c.limit.action, LimitAction::Block);
        assert_eq!(c.limit.id, limits[0].limit.id);
        for bad in [
            LimitChange {
                amount: Some(Nanos::ZERO),
                ..LimitChange::default()
            },
            LimitChange {
                alert_at_percent: Some(vec![0]),
                ..LimitChange::default()
            },
            LimitChange {
                alert_at_percent: Some(vec![1001]),
                ..LimitChange::default()
            },
        ] {
            assert!(limits[0].changed(&bad, now).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn thresholds_default_and_are_normalized() {
        assert_eq!(alert_thresholds(None).unwrap(), [50, 80, 100]);
        assert_eq!(alert_thresholds(Some(&[])).unwrap(), Vec::<u32>::new());
        assert_eq!(
            alert_thresholds(Some(&[100, 5, 5, 1000])).unwrap(),
            [5, 100, 1000]
        );
        assert_eq!(
            alert_thresholds(Some(&[0])).unwrap_err().field,
            "alert_at_percent"
        );
        let many: Vec<u32> = (1..=21).collect();
        assert!(alert_thresholds(Some(&many)).is_err());
        assert!(check_amount(Nanos(-1)).is_err());
        assert!(check_amount(Nanos(MAX_AMOUNT.0 + 1)).is_err());
        assert!(check_amount(Nanos(1)).is_ok());
    }
}
