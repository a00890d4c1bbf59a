//! The statement and credit-activity reads, shared by both stores: portable SQL over the
//! `balance_days`, `balance_movements` and `usage_days` tables (written by each store's
//! persist, in the billing commit), run by a store through [`Db`] in one read snapshot. Each
//! read is a few index seeks on the account's rows of the period (at most a page of movements
//! and a month of days), never a scan of its transfers or line items.

use crate::rows::Get;
use crate::{
    corrupt, decimal, parse_id, ActivityQuery, ActivityRecord, BalanceDay, Reconciliation, Result,
    StatementQuery, StatementRows, StatementUsage, USAGE_ROW_ID,
};
use std::collections::HashMap;
use tollgate_core::ids::{AccountId, EndpointId};
use tollgate_core::statement::{day_label, day_of, end_of_day, MovementKind, Movements};
use tollgate_core::time::MS_PER_DAY;
use tollgate_core::{Nanos, Timestamp};

/// A parameter of a query.
pub(crate) enum Arg {
    Int(i64),
    Text(String),
}

/// A store's connection in a read snapshot, as these reads use it.
pub(crate) trait Db {
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

fn account(a: &AccountId) -> Arg {
    Arg::Text(a.as_str().to_string())
}

/// A statement's rows (see [`StatementRows`]).
pub(crate) fn statement(db: &mut dyn Db, q: &StatementQuery) -> Result<StatementRows> {
    let args = [account(&q.account), Arg::Int(q.from.0), Arg::Int(q.to.0)];
    let (a, from, to) = (db.ph(1, "text"), db.ph(2, "bigint"), db.ph(3, "bigint"));
    let mut opening = Nanos::ZERO;
    db.each(
        &format!(
            "SELECT closing_nanos FROM balance_days WHERE account = {a} AND day < {from} \
             ORDER BY day DESC LIMIT 1"
        ),
        &args[..2],
        &mut |r| {
            opening = Nanos(r.int(0)?);
            Ok(())
        },
    )?;
    let mut days = Vec::new();
    db.each(
        &format!(
            "SELECT {DAY_COLS} FROM balance_days WHERE account = {a} AND day >= {from} \
             AND day < {to} ORDER BY day"
        ),
        &args,
        &mut |r| {
            days.push(day_row(r)?);
            Ok(())
        },
    )?;
    let mut usage = Vec::new();
    db.each(
        &format!(
            "SELECT endpoint_id, unit, {}, CAST(SUM(requests) AS BIGINT), \
               CAST(SUM(cost_nanos) AS BIGINT) \
             FROM usage_days WHERE account = {a} AND day >= {from} AND day < {to} \
             GROUP BY endpoint_id, unit ORDER BY endpoint_id, unit",
            db.dec_sum("quantity")
        ),
        &args,
        &mut |r| {
            usage.push(StatementUsage {
                endpoint: parse_id(EndpointId::parse, &r.text(0)?)?,
                unit: r.text(1)?,
                quantity: decimal("usage_days", &r.text(2)?)?,
                requests: u64::try_from(r.int(3)?).map_err(|e| corrupt("usage_days", e))?,
                cost: Nanos(r.int(4)?),
            });
            Ok(())
        },
    )?;
    Ok(StatementRows {
        opening,
        days,
        usage,
    })
}

/// A page of credit activity (see [`ActivityQuery`]): the page's movements and usage days,
/// merged newest first; then the balance after its first row (its day's closing, less what
/// came after it that day), and each older row's balance is the one after it less its amount.
pub(crate) fn credit_activity(db: &mut dyn Db, q: &ActivityQuery) -> Result<Vec<ActivityRecord>> {
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
            account(&q.account),
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
    // and before the cursor when its end of day is (no id is above USAGE_ROW_ID).
    let last = MS_PER_DAY - 1;
    let (lo, hi) = (
        q.start.0.saturating_sub(last),
        q.end.0.min(b_at).saturating_sub(last),
    );
    let mut days: HashMap<i64, (Nanos, Nanos)> = HashMap::new();
    db.each(
        &format!(
            "SELECT day, usage_nanos, closing_nanos FROM balance_days \
             WHERE account = {} AND day >= {} AND day < {} AND usage_nanos <> 0 \
             ORDER BY day DESC LIMIT {}",
            p(1),
            p(2),
            p(3),
            p(4)
        ),
        &[
            account(&q.account),
            Arg::Int(lo),
            Arg::Int(hi),
            Arg::Int(limit),
        ],
        &mut |r| {
            let day = Timestamp(r.int(0)?);
            let (usage, closing) = (Nanos(r.int(1)?), Nanos(r.int(2)?));
            days.insert(day.0, (usage, closing));
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
        let day = day_of(first.at);
        let (mut usage, mut closing) = (Nanos::ZERO, None);
        db.each(
            &format!(
                "SELECT usage_nanos, closing_nanos FROM balance_days \
                 WHERE account = {} AND day = {}",
                p(1),
                p(2)
            ),
            &[account(&q.account), Arg::Int(day.0)],
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
                account(&q.account),
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

/// Accounts whose balance days do not end at their stored balance: the last day's closing
/// balance, and the sum of every day's movements (one grouped query per table).
pub(crate) fn mismatches(db: &mut dyn Db, rec: &mut Reconciliation) -> Result<()> {
    let mut found = Vec::new();
    db.each(
        "WITH d AS (SELECT account, CAST(SUM(purchases_nanos + grants_nanos + usage_nanos \
             + expired_nanos + refunds_nanos + disputes_nanos + adjustments_nanos) AS BIGINT) \
             AS net, MAX(day) AS last FROM balance_days GROUP BY account) \
         SELECT a.username, a.balance_nanos, COALESCE(c.closing_nanos, 0), COALESCE(d.net, 0) \
         FROM accounts a LEFT JOIN d ON d.account = a.username \
         LEFT JOIN balance_days c ON c.account = a.username AND c.day = d.last \
         WHERE a.balance_nanos <> COALESCE(c.closing_nanos, 0) \
            OR a.balance_nanos <> COALESCE(d.net, 0) \
         ORDER BY a.username",
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
    rec.statement_mismatches = found;
    Ok(())
}
