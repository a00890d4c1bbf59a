//! An account's monthly statements and its credit activity, from the balance months, days and
//! movements the write path keeps (see `tollgate_core::statement`): a statement is the closing
//! of the last month before it with a movement (its opening balance), the month's days (at most
//! 31) and its usage by endpoint; credit activity pages the movements and the usage days by
//! time. Months and days
//! are UTC and movements are dated by the ledger (when tollgate recorded them), so a month's
//! closing balance is the next month's opening and the ledger's balance at that instant.

use crate::cursor::{Cursor, Page};
use crate::month::Month;
use crate::QueryError;
use tollgate_core::ids::AccountId;
use tollgate_core::statement::Movements;
use tollgate_core::{Nanos, Timestamp};
use tollgate_engine::Engine;
use tollgate_store::{ActivityQuery, ActivityRecord, StatementQuery, StatementUsage};

/// The month a statement covers: `YYYY-MM` ([`Month::parse`]), not after the month of
/// `now`. The message says what is wrong.
pub fn statement_month(text: &str, now: Timestamp) -> Result<Month, String> {
    let month = Month::parse(text)?;
    if month.start() > now {
        return Err(format!(
            "{text} has not begun yet: statements cover months up to the current one"
        ));
    }
    Ok(month)
}

/// A month's statement: the balance at its start, what moved it, by kind (signed: credits
/// positive; usage, expiries and debits negative), the balance at its end (`opening` plus the
/// movements, exactly), and its usage by endpoint and unit (adding up to `moved.usage`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub month: Month,
    pub opening: Nanos,
    pub moved: Movements,
    pub closing: Nanos,
    pub usage: Vec<StatementUsage>,
}

/// `account`'s statement of `month`. A month before the account had any movement is all zeros.
pub async fn statement(
    engine: &Engine,
    account: AccountId,
    month: Month,
) -> Result<Statement, QueryError> {
    let q = StatementQuery {
        account,
        from: month.start(),
        to: month.end(),
    };
    let rows = engine.read(move |r| r.statement(&q)).await?;
    let out_of_range = |e: tollgate_core::money::MoneyError| QueryError::OutOfRange(e.to_string());
    let mut moved = Movements::default();
    for d in &rows.days {
        moved.add(&d.moved).map_err(out_of_range)?;
    }
    let closing = rows.days.last().map_or(rows.opening, |d| d.closing);
    // The days were written with the balances the ledger had: they must add up.
    if rows.opening.checked_add(moved.net().map_err(out_of_range)?) != Ok(closing) {
        return Err(QueryError::OutOfRange(format!(
            "the statement of {} does not add up: opening {} and movements {:?} but closing {}",
            month, rows.opening, moved, closing
        )));
    }
    Ok(Statement {
        month,
        opening: rows.opening,
        moved,
        closing,
        usage: rows.usage,
    })
}

/// The last millisecond of year 9999 (UTC): no movement is later.
const LAST_INSTANT: Timestamp = Timestamp(253_402_300_799_999);

/// One page of `account`'s credit activity at `start` or later and before `end` (default:
/// everything), newest first. The cursor is the last row's `(at, id)`, a unique position, so
/// a page never repeats or skips a row.
pub async fn credit_activity(
    engine: &Engine,
    account: AccountId,
    start: Option<Timestamp>,
    end: Option<Timestamp>,
    cursor: Option<&Cursor>,
    limit: usize,
) -> Result<Page<ActivityRecord>, QueryError> {
    let before: Option<(i64, i64)> = Cursor::key(cursor)?;
    // Every movement lies between the epoch and the end of year 9999; a cursor elsewhere was
    // not made by this read (and would send the month arithmetic out of the calendar).
    if before.is_some_and(|(at, _)| !(0..=LAST_INSTANT.0).contains(&at)) {
        return Err(QueryError::BadCursor);
    }
    let q = ActivityQuery {
        account,
        start: start.unwrap_or(Timestamp(0)).max(Timestamp(0)),
        end: end.unwrap_or(LAST_INSTANT).min(LAST_INSTANT),
        before,
        limit: limit.saturating_add(1),
        now: engine.now(),
    };
    let rows = engine.read(move |r| r.credit_activity(&q)).await?;
    Ok(Page::of(rows, limit, |r| (r.at.0, r.id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_utc_calendar_months_up_to_the_current_one() {
        let now = Timestamp(1_780_272_000_000); // 2026-06-01T00:00:00Z
        let june = statement_month("2026-06", now).unwrap();
        assert_eq!(june.start(), now);
        assert_eq!(june.end().0 - june.start().0, 30 * 86_400_000);
        let dec = statement_month("2025-12", now).unwrap();
        assert_eq!(dec.end(), statement_month("2026-01", now).unwrap().start());
        assert_eq!(dec.to_string(), "2025-12");
        for bad in [
            "2026-13",
            "2026-00",
            "2026-7",
            "26-07",
            "2026-07-01",
            "",
            "2026/05",
            "+026-05",
        ] {
            assert!(statement_month(bad, now).is_err(), "{bad}");
        }
        let future = statement_month("2026-07", now).unwrap_err();
        assert!(future.contains("has not begun"), "{future}");
    }
}
