//! The statement and credit-activity reads, shared by both stores: portable SQL over the
//! `balance_days`, `balance_months`, `balance_movements` and `usage_days` tables (written by each
//! store's persist, in the billing commit), run by a store through [`Db`] in one read snapshot.
//! Each read is index seeks on the account's rows of the period (at most a page of movements,
//! a month of days, the months since the account was created), never a scan of its transfers or
//! line items.
//!
//! On SQLite the day, month and usage tables are keyed by time first (a batch's rows share the
//! current day's pages), so the reads never ask for a range of one account's times: they seek
//! `(day, account)` for each day of a month and `(month, account)` for each month, with the days
//! or months listed (`day IN (...) AND account = ?`, one statement, a seek each). On PostgreSQL,
//! keyed by account first, the same SQL is a scan of the account's entries for those keys.

use crate::rows::Get;
use crate::{
    corrupt, decimal, parse_id, ActivityQuery, ActivityRecord, BalanceDay, Reconciliation, Result,
    StatementQuery, StatementRows, StatementUsage, USAGE_ROW_ID,
};
use tollgate_core::ids::{AccountId, EndpointId};
use tollgate_core::statement::{day_label, end_of_day, MovementKind, Movements};
use tollgate_core::time::{
    day_start, month_start, next_month_start, previous_month_start, MS_PER_DAY,
};
use tollgate_core::{Nanos, Timestamp};

/// A parameter of a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arg {
    Int(i64),
    Text(String),
    OptInt(Option<i64>),
    OptText(Option<String>),
    /// Bytes (`BLOB`, `BYTEA`), or `NULL`.
    Bytes(Option<Vec<u8>>),
}

impl Arg {
    /// The value as SQLite binds it.
    pub fn sqlite(&self) -> rusqlite::types::Value {
        use rusqlite::types::Value;
        match self {
            Arg::Int(v) => Value::Integer(*v),
            Arg::Text(t) => Value::Text(t.clone()),
            Arg::OptInt(v) => v.map_or(Value::Null, Value::Integer),
            Arg::OptText(t) => t.clone().map_or(Value::Null, Value::Text),
            Arg::Bytes(b) => b.clone().map_or(Value::Null, Value::Blob),
        }
    }

    /// The value as PostgreSQL binds it.
    pub fn postgres(&self) -> Box<dyn ::postgres::types::ToSql + Sync> {
        match self {
            Arg::Int(v) => Box::new(*v),
            Arg::Text(t) => Box::new(t.clone()),
            Arg::OptInt(v) => Box::new(*v),
            Arg::OptText(t) => Box::new(t.clone()),
            Arg::Bytes(b) => Box::new(b.clone()),
        }
    }
}

/// A store's connection in a read snapshot, as these reads use it.
pub trait Db {
    /// The placeholder of the `i`th parameter (from 1), of SQL type `ty` (`bigint`, `text`).
    fn ph(&self, i: usize, ty: &str) -> String;
    /// The SQL aggregate of a column of exact decimals, as text.
    fn dec_sum(&self, col: &str) -> String;
    /// Runs `sql` with `args`, giving each row to `row`.
    fn each(
        &mut self,
        sql: &str,
        args: &[Arg],
        row: &mut dyn FnMut(&dyn Get) -> Result<()>,
    ) -> Result<()>;
}

const DAY_COLS: &str = "day, purchases_nanos, grants_nanos, usage_nanos, expired_nanos, \
     refunds_nanos, disputes_nanos, adjustments_nanos, closing_nanos";

fn day_row(r: &dyn Get) -> Result<BalanceDay> {
    Ok(BalanceDay {
        day: Timestamp(r.int(0)?),
        moved: Movements {
            purchases: Nanos(r.int(1)?),
            grants: Nanos(r.int(2)?),
            usage: Nanos(r.int(3)?),
            expired: Nanos(r.int(4)?),
            refunds: Nanos(r.int(5)?),
            disputes: Nanos(r.int(6)?),
            adjustments: Nanos(r.int(7)?),
        },
        closing: Nanos(r.int(8)?),
    })
}

fn account_arg(a: &AccountId) -> Arg {
    Arg::Text(a.as_str().to_string())
}

/// `values` as a list of SQL literals (integers only, so nothing to quote).
fn list(values: &[i64]) -> String {
    values
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The days from `from` (a midnight) to `to` (exclusive), newest first.
fn days_between(from: Timestamp, to: Timestamp) -> Vec<i64> {
    let mut days = Vec::new();
    let mut day = day_start(Timestamp(to.0 - 1));
    while day >= from {
        days.push(day.0);
        day = Timestamp(day.0 - MS_PER_DAY);
    }
    days
}

/// The first month that can have rows of `account`: the month before the one it was created in
/// (a transfer is never recorded before its account, but servers' clocks may disagree by a
/// moment across a month's end); `None` when the account does not exist.
fn first_month(db: &mut dyn Db, account: &AccountId) -> Result<Option<Timestamp>> {
    let mut created = None;
    db.each(
        &format!(
            "SELECT created_at FROM accounts WHERE username = {}",
            db.ph(1, "text")
        ),
        &[account_arg(account)],
        &mut |r| {
            created = Some(Timestamp(r.int(0)?));
            Ok(())
        },
    )?;
    Ok(created.map(|c| previous_month_start(month_start(c))))
}

/// The months that start before `to`, from the last of them down to `first`, newest first.
fn months_before(first: Timestamp, to: Timestamp) -> Vec<i64> {
    let mut months = Vec::new();
    if to <= first {
        return months;
    }
    let mut month = month_start(Timestamp(to.0 - 1));
    while month >= first {
        months.push(month.0);
        month = previous_month_start(month);
    }
    months
}

/// A statement's rows (see [`StatementRows`]): the opening balance is the closing of the
/// account's last month before `from` (the months sought backwards, no further than its
/// creation), the days and the usage are sought day by day.
pub fn statement(db: &mut dyn Db, q: &StatementQuery) -> Result<StatementRows> {
    let mut rows = StatementRows {
        opening: Nanos::ZERO,
        days: Vec::new(),
        usage: Vec::new(),
    };
    let Some(first) = first_month(db, &q.account)? else {
        return Ok(rows);
    };
    let a = db.ph(1, "text");
    let args = [account_arg(&q.account)];
    let earlier = months_before(first, month_start(q.from));
    if !earlier.is_empty() {
        db.each(
            &format!(
                "SELECT closing_nanos FROM balance_months WHERE month IN ({}) AND account = {a} \
                 ORDER BY month DESC LIMIT 1",
                list(&earlier)
            ),
            &args,
            &mut |r| {
                rows.opening = Nanos(r.int(0)?);
                Ok(())
            },
        )?;
    }
    // A period starting within a month (not what statements ask): its opening is the last
    // closing before it in that month, if there was one.
    let lead = days_between(month_start(q.from), q.from);
    if !lead.is_empty() {
        db.each(
            &format!(
                "SELECT closing_nanos FROM balance_days WHERE day IN ({}) AND account = {a} \
                 ORDER BY day DESC LIMIT 1",
                list(&lead)
            ),
            &args,
            &mut |r| {
                rows.opening = Nanos(r.int(0)?);
                Ok(())
            },
        )?;
    }
    let days = days_between(q.from, q.to);
    if days.is_empty() {
        return Ok(rows);
    }
    let days = list(&days);
    db.each(
        &format!(
            "SELECT {DAY_COLS} FROM balance_days WHERE day IN ({days}) AND account = {a} \
             ORDER BY day"
        ),
        &args,
        &mut |r| {
            rows.days.push(day_row(r)?);
            Ok(())
        },
    )?;
    db.each(
        &format!(
            "SELECT endpoint_id, unit, {}, CAST(SUM(requests) AS BIGINT), \
               CAST(SUM(cost_nanos) AS BIGINT) \
             FROM usage_days WHERE day IN ({days}) AND account = {a} \
             GROUP BY endpoint_id, unit ORDER BY endpoint_id, unit",
            db.dec_sum("quantity")
        ),
        &args,
        &mut |r| {
            rows.usage.push(StatementUsage {
                endpoint: parse_id(EndpointId::parse, &r.text(0)?)?,
                unit: r.text(1)?,
                quantity: decimal("usage_days", &r.text(2)?)?,
                requests: u64::try_from(r.int(3)?).map_err(|e| corrupt("usage_days", e))?,
                cost: Nanos(r.int(4)?),
            });
            Ok(())
        },
    )?;
    Ok(rows)
}

/// A page of credit activity (see [`ActivityQuery`]): the page's movements and usage days,
/// merged newest first; then the balance after its first row (its day's closing, less what
/// came after it that day), and each older row's balance is the one after it less its amount.
pub fn credit_activity(db: &mut dyn Db, q: &ActivityQuery) -> Result<Vec<ActivityRecord>> {
    let (b_at, b_id) = q.before.unwrap_or((i64::MAX, i64::MAX));
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    let mut rows: Vec<ActivityRecord> = Vec::new();
    let ph: Vec<String> = (0..=6)
        .map(|i| db.ph(i, if i == 1 { "text" } else { "bigint" }))
        .collect();
    let p = |i: usize| ph[i].clone();
    let sql = format!(
        "SELECT id, at, kind, amount_nanos, reference FROM balance_movements \
         WHERE account = {} AND at >= {} AND at < {} AND (at < {} OR (at = {} AND id < {})) \
         ORDER BY at DESC, id DESC LIMIT {}",
        p(1),
        p(2),
        p(3),
        p(4),
        p(4),
        p(5),
        p(6)
    );
    db.each(
        &sql,
        &[
            account_arg(&q.account),
            Arg::Int(q.start.0),
            Arg::Int(q.end.0),
            Arg::Int(b_at),
            Arg::Int(b_id),
            Arg::Int(limit),
        ],
        &mut |r| {
            let kind = r.text(2)?;
            rows.push(ActivityRecord {
                id: r.int(0)?,
                at: Timestamp(r.int(1)?),
                kind: MovementKind::parse(&kind)
                    .ok_or_else(|| corrupt("balance_movements", format!("kind {kind:?}")))?,
                amount: Nanos(r.int(3)?),
                reference: r.text(4)?,
                balance_after: Nanos::ZERO,
            });
            Ok(())
        },
    )?;
    // A day's usage row is at (end of day, USAGE_ROW_ID): in the range when its end of day is,
    // and before the cursor when its end of day is (no id is above USAGE_ROW_ID). The days are
    // found month by month, newest first: the account's months in the range that have a row,
    // then each one's days with usage, until the page is full.
    let last = MS_PER_DAY - 1;
    let (lo, hi) = (
        q.start.0.saturating_sub(last),
        q.end.0.min(b_at).saturating_sub(last),
    );
    let first = match first_month(db, &q.account)? {
        // `first` is a month's start: the month of the later of the two.
        Some(first) if lo < hi => Some(month_start(Timestamp(lo.max(first.0)))),
        _ => None,
    };
    let hi = hi.min(next_month_start(next_month_start(month_start(q.now))).0);
    let months = first.map_or_else(Vec::new, |first| months_before(first, Timestamp(hi)));
    let mut active = Vec::new();
    if !months.is_empty() {
        db.each(
            &format!(
                "SELECT month FROM balance_months WHERE month IN ({}) AND account = {} \
                 ORDER BY month DESC",
                list(&months),
                p(1)
            ),
            &[account_arg(&q.account)],
            &mut |r| {
                active.push(Timestamp(r.int(0)?));
                Ok(())
            },
        )?;
    }
    let mut found = 0;
    for month in active {
        if found >= q.limit {
            break;
        }
        let in_range = days_between(
            month.max(Timestamp(lo)),
            Timestamp(hi.min(next_month_start(month).0)),
        );
        if in_range.is_empty() {
            continue;
        }
        db.each(
            &format!(
                "SELECT day, usage_nanos, closing_nanos FROM balance_days \
                 WHERE day IN ({}) AND account = {} AND usage_nanos <> 0 \
                 ORDER BY day DESC LIMIT {}",
                list(&in_range),
                p(1),
                p(2)
            ),
            &[
                account_arg(&q.account),
                Arg::Int(i64::try_from(q.limit - found).unwrap_or(i64::MAX)),
            ],
            &mut |r| {
                let day = Timestamp(r.int(0)?);
                let (usage, closing) = (Nanos(r.int(1)?), Nanos(r.int(2)?));
                found += 1;
                rows.push(ActivityRecord {
                    at: end_of_day(day),
                    id: USAGE_ROW_ID,
                    kind: MovementKind::Usage,
                    amount: usage,
                    reference: day_label(day),
                    balance_after: closing,
                });
                Ok(())
            },
        )?;
    }
    rows.sort_by_key(|r| std::cmp::Reverse((r.at, r.id)));
    rows.truncate(q.limit);
    let Some(first) = rows.first() else {
        return Ok(rows);
    };
    // The balance after the first row: its day's closing balance, less the day's usage (which
    // comes after every other movement of the day) and the day's movements after it.
    let mut balance = if first.id == USAGE_ROW_ID {
        first.balance_after
    } else {
        let day = day_start(first.at);
        let (mut usage, mut closing) = (Nanos::ZERO, None);
        db.each(
            &format!(
                "SELECT usage_nanos, closing_nanos FROM balance_days \
                 WHERE day = {} AND account = {}",
                p(2),
                p(1)
            ),
            &[account_arg(&q.account), Arg::Int(day.0)],
            &mut |r| {
                usage = Nanos(r.int(0)?);
                closing = Some(Nanos(r.int(1)?));
                Ok(())
            },
        )?;
        let closing = closing.ok_or_else(|| {
            corrupt(
                "balance_days",
                format!("no day {} of account {}", day.0, q.account),
            )
        })?;
        let mut later = Nanos::ZERO;
        db.each(
            &format!(
                "SELECT CAST(COALESCE(SUM(amount_nanos), 0) AS BIGINT) FROM balance_movements \
                 WHERE account = {} AND at >= {} AND at < {} AND (at > {} OR id > {})",
                p(1),
                p(2),
                p(3),
                p(2),
                p(4)
            ),
            &[
                account_arg(&q.account),
                Arg::Int(first.at.0),
                Arg::Int(day.0 + MS_PER_DAY),
                Arg::Int(first.id),
            ],
            &mut |r| {
                later = Nanos(r.int(0)?);
                Ok(())
            },
        )?;
        Nanos(closing.0 - usage.0 - later.0)
    };
    for row in &mut rows {
        row.balance_after = balance;
        balance = Nanos(balance.0 - row.amount.0);
    }
    Ok(rows)
}

/// Accounts whose balance days, or balance months, do not end at their stored balance: the last
/// day's (month's) closing balance, and the sum of every day's (month's) movements (one grouped
/// query per table; an account may be listed once for each).
pub(crate) fn mismatches(db: &mut dyn Db, rec: &mut Reconciliation) -> Result<()> {
    let mut found = Vec::new();
    for (table, period) in [("balance_days", "day"), ("balance_months", "month")] {
        db.each(
            &format!(
                "WITH d AS (SELECT account, CAST(SUM(purchases_nanos + grants_nanos \
                     + usage_nanos + expired_nanos + refunds_nanos + disputes_nanos \
                     + adjustments_nanos) AS BIGINT) AS net, MAX({period}) AS last \
                     FROM {table} GROUP BY account) \
                 SELECT a.username, a.balance_nanos, COALESCE(c.closing_nanos, 0), \
                   COALESCE(d.net, 0) \
                 FROM accounts a LEFT JOIN d ON d.account = a.username \
                 LEFT JOIN {table} c ON c.{period} = d.last AND c.account = a.username \
                 WHERE a.balance_nanos <> COALESCE(c.closing_nanos, 0) \
                    OR a.balance_nanos <> COALESCE(d.net, 0) \
                 ORDER BY a.username"
            ),
            &[],
            &mut |r| {
                found.push((
                    parse_id(AccountId::parse, &r.text(0)?)?,
                    Nanos(r.int(1)?),
                    Nanos(r.int(2)?),
                    Nanos(r.int(3)?),
                ));
                Ok(())
            },
        )?;
    }
    rec.statement_mismatches = found;
    Ok(())
}
