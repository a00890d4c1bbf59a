//! A batch's writes on PostgreSQL in two round trips, whatever its size: one query reads the
//! activity rollup rows the batch adds to (duration histograms are merged in Rust), and one
//! statement writes everything, each table once, set-based (`unnest` of arrays), as the parts
//! of one `WITH` (the payment tables among them, as parts the statement has only when the
//! batch wrote such rows). PostgreSQL runs every part of it to completion, all against the same
//! snapshot, so no part may touch a row another part writes: new purchases are inserted with
//! what is left of them after the batch, and only older lots are updated.

use super::rollups::{activity_totals, ACTIVITY_COLS};
use super::{PgTx, Run};
use crate::rows::{dirty, limits_text, payment_text, INVOICE_COLS, TAKEN_COLS};
use crate::rows::{
    AdjustmentCols, LineItemCols, PurchaseCols, RequestCols, TransferCols, ADJUSTMENT_COLS,
    LINE_ITEM_COLS, PURCHASE_COLS, REQUEST_COLS, TRANSFER_COLS,
};
use crate::rows::{RunnerCols, RUNNER_COLS, RUNNER_EVENT_COLS};
use crate::{Result, StoreError, INVOICE_PREFIX};
use postgres::types::ToSql;
use std::collections::{BTreeMap, HashMap, HashSet};
use tollgate_core::ids::{AccountId, PurchaseId, RequestId};
use tollgate_core::machine::{year_of, BatchState, InvoiceKind};
use tollgate_core::payments::PaymentProfile;
use tollgate_core::rollup::{self, ActivityTotals, Deltas, Grain, UsagePrice};
use tollgate_core::statement::{self, Daily};
use tollgate_core::Nanos;

/// A statement's parameters, numbered in the order they are added.
#[derive(Default)]
pub(super) struct Args {
    values: Vec<Box<dyn ToSql + Sync>>,
}

impl Args {
    /// Adds `v` and returns its placeholder, cast to `ty`.
    pub(super) fn add<T: ToSql + Sync + 'static>(&mut self, v: T, ty: &str) -> String {
        self.values.push(Box::new(v));
        format!("${}::{ty}", self.values.len())
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.values
            .iter()
            .map(|b| &**b as &(dyn ToSql + Sync))
            .collect()
    }
}

/// One column of a set of rows, as an array.
fn col<R, T>(rows: &[R], f: impl Fn(&R) -> T) -> Vec<T> {
    rows.iter().map(f).collect()
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn tables(grain: Grain) -> (&'static str, &'static str) {
    match grain {
        Grain::Minute => ("usage_minutes", "activity_minutes"),
        Grain::Hour => ("usage_hours", "activity_hours"),
    }
}

pub(super) fn persist(t: &mut PgTx, s: &BatchState) -> Result<Vec<(i64, i64)>> {
    let minutes = rollup::deltas(s).map_err(|e| StoreError::database(e.to_string(), e))?;
    let hours = minutes
        .coarsen(Grain::Hour)
        .map_err(|e| StoreError::database(e.to_string(), e))?;
    let activity = merged_activity(t, &[(Grain::Minute, &minutes), (Grain::Hour, &hours)])?;

    let mut a = Args::default();
    let mut parts = vec![
        accounts(&mut a, s, &t.profiles),
        transfers(&mut a, s),
        line_items(&mut a, s),
    ];
    parts.extend(purchases(&mut a, s)?);
    parts.extend(super::payments::parts(&mut a, s)?);
    // The runner upsert, when the batch has one, is the first of the runners' parts: the
    // statement also answers how many rows it wrote.
    let runners_written = (!s.dirty_runners.is_empty()).then(|| {
        format!(
            "SELECT {RUNNERS_WRITTEN}::bigint, count(*)::bigint, 0::bigint FROM w{}",
            parts.len()
        )
    });
    parts.extend(runners(&mut a, s)?);
    if !s.new_adjustments.is_empty() {
        parts.push(adjustments(&mut a, s));
    }
    parts.extend(requests(&mut a, s, &t.found));
    if !s.accruals.is_empty() {
        parts.push(accruals(&mut a, s)?);
    }
    let numbering = invoices(&mut a, s).map(|(counters, insert, numbers)| {
        parts.push(insert);
        (counters, numbers)
    });
    for (grain, d) in [(Grain::Minute, &minutes), (Grain::Hour, &hours)] {
        parts.push(usage(&mut a, grain, d));
    }
    for (grain, rows) in activity {
        parts.push(activity_rows(&mut a, grain, rows));
    }
    let daily = statement::daily(s).map_err(|e| StoreError::database(e.to_string(), e))?;
    if !daily.is_empty() {
        parts.extend(statement_rows(&mut a, &daily));
    }
    let last = match (&numbering, runners_written) {
        (Some(c), Some(w)) => format!("{} UNION ALL {w}", c.1),
        (Some(c), None) => c.1.clone(),
        (None, Some(w)) => w,
        (None, None) => "SELECT 1".to_string(),
    };
    let sql = format!(
        "WITH {}{} {}",
        numbering
            .as_ref()
            .map_or(String::new(), |c| format!("{INVOICE_SEQ} AS ({}), ", c.0)),
        parts
            .iter()
            .enumerate()
            .map(|(i, p)| format!("w{i} AS ({p})"))
            .collect::<Vec<_>>()
            .join(", "),
        last,
    );
    let rows = t.rows(&sql, &a.refs())?;
    let mut numbers = vec![(0, 0); s.new_invoices.len()];
    // A runner row of another account under the same id is not updated (see `runners`).
    if let Some(r) = rows
        .iter()
        .find(|r| r.try_get::<_, i64>(0).ok() == Some(RUNNERS_WRITTEN))
    {
        let written: i64 = r.try_get(1)?;
        if usize::try_from(written).ok() != Some(s.dirty_runners.len()) {
            return Err(runner_of_another_account(t, s));
        }
    }
    if numbering.is_some() {
        for r in rows {
            let ord: i64 = r.try_get(0)?;
            if ord == RUNNERS_WRITTEN {
                continue;
            }
            let slot = usize::try_from(ord)
                .ok()
                .and_then(|o| numbers.get_mut(o))
                .ok_or_else(|| StoreError::Corrupt(format!("invoice number {ord} out of range")))?;
            *slot = (r.try_get(1)?, r.try_get(2)?);
        }
        invoice_lines(t, s, &numbers)?;
    }
    // The outbox, only when the batch has events: after the batch's statement, which it
    // follows for the invoice numbers its events name (and so takes the event counter's lock
    // after the invoice counters').
    super::webhooks::outbox(t, &crate::webhooks::event_rows(s, &numbers)?)?;
    if !s.dirty_gateway.is_empty() {
        crate::gateway::persist(&mut super::reader::PgDb(t.tx), s)?;
    }
    Ok(numbers)
}

/// The accounts the batch changed, and the payment profiles it changed (compared with the
/// profiles the batch loaded, `profiles`: most batches change none, and then the statement
/// neither encodes nor names the column).
fn accounts(a: &mut Args, s: &BatchState, profiles: &HashMap<AccountId, PaymentProfile>) -> String {
    let rows: Vec<_> = s
        .dirty_accounts
        .iter()
        .map(|id| (id, &s.accounts[id]))
        .collect();
    let default = PaymentProfile::default();
    let payments: Vec<Option<String>> = rows
        .iter()
        .map(|(id, st)| {
            let before = profiles.get(*id).unwrap_or(&default);
            (before != &st.payment).then(|| payment_text(&st.payment))
        })
        .collect();
    // (SET, the array, its name in `x`), when the batch changed a profile.
    let payment = payments.iter().any(Option::is_some).then(|| {
        (
            ", payment = COALESCE(x.payment, a.payment)",
            format!(", {}", a.add(payments, "text[]")),
            ", payment",
        )
    });
    let (set, array, name) = payment
        .as_ref()
        .map_or(("", "", ""), |(s, a, n)| (*s, a, *n));
    format!(
        "UPDATE accounts a SET balance_nanos = x.balance, held_nanos = x.held, \
         in_progress = x.in_progress, paid_lifetime_nanos = x.lifetime, month = x.month, \
         month_subtotal_nanos = x.subtotal, adjusted_credit_nanos = x.adjusted, \
         disputed_since = x.disputed, period_start = x.p_start, period_charges = x.p_charges, \
         period_subtotal_nanos = x.p_subtotal, period_discount_nanos = x.p_discount, \
         period_total_nanos = x.p_total, period_last_charge_at = x.p_last, \
         limits = x.limits{set} \
         FROM unnest({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}{array}) \
           AS x(username, balance, held, in_progress, lifetime, month, subtotal, adjusted, \
             disputed, p_start, p_charges, p_subtotal, p_discount, p_total, p_last, \
             limits{name}) \
         WHERE a.username = x.username",
        a.add(col(&rows, |(id, _)| id.as_str().to_string()), "text[]"),
        a.add(col(&rows, |(_, s)| s.credit.balance.0), "bigint[]"),
        a.add(col(&rows, |(_, s)| s.credit.held.0), "bigint[]"),
        a.add(col(&rows, |(_, s)| i64::from(s.in_progress)), "bigint[]"),
        a.add(col(&rows, |(_, s)| s.paid_lifetime.0), "bigint[]"),
        a.add(col(&rows, |(_, s)| s.month), "int[]"),
        a.add(col(&rows, |(_, s)| s.month_subtotal.0), "bigint[]"),
        a.add(col(&rows, |(_, s)| s.adjusted_credit.0), "bigint[]"),
        a.add(
            col(&rows, |(_, s)| s.disputed_since.map(|t| t.0)),
            "bigint[]"
        ),
        a.add(col(&rows, |(_, s)| s.period.start.0), "bigint[]"),
        a.add(col(&rows, |(_, s)| count(s.period.charges)), "bigint[]"),
        a.add(col(&rows, |(_, s)| s.period.subtotal.0), "bigint[]"),
        a.add(col(&rows, |(_, s)| s.period.discount.0), "bigint[]"),
        a.add(col(&rows, |(_, s)| s.period.total.0), "bigint[]"),
        a.add(col(&rows, |(_, s)| s.period.last_charge_at.0), "bigint[]"),
        a.add(col(&rows, |(_, s)| limits_text(&s.limits)), "text[]"),
    )
}

/// The `ord` of the statement's row that counts the runner rows written (invoice numbers'
/// are 0 and up).
const RUNNERS_WRITTEN: i64 = -1;

/// The conflict of a batch that found one of its runners stored for another account (read
/// to name it; any failure to read is the conflict all the same).
fn runner_of_another_account(t: &mut PgTx, s: &BatchState) -> StoreError {
    let mut ids: Vec<&str> = s.dirty_runners.iter().map(|r| r.as_str()).collect();
    ids.sort_unstable();
    let stored = t
        .rows(
            "SELECT runner_id, account FROM runners WHERE runner_id = ANY($1) \
             ORDER BY runner_id",
            &[&ids],
        )
        .unwrap_or_default();
    let theirs = stored.iter().find_map(|r| {
        let id: String = r.try_get(0).ok()?;
        let account: String = r.try_get(1).ok()?;
        let runner = s.runners.values().find(|m| m.id.as_str() == id)?;
        (runner.account.as_str() != account).then(|| runner.id.clone())
    });
    match theirs {
        Some(id) => crate::rows::runner_of_another_account(&id),
        None => StoreError::Conflict(crate::DbError::msg(
            "a runner of the batch was created for another account meanwhile",
        )),
    }
}

/// The runners the batch created or changed (a runner's fixed fields are written once, by the
/// insert), the runner events it applied, and its runner-state history added to the minute
/// rows (summed per row first: one statement may not update a row twice). Parts only for
/// what the batch has. A runner row is only updated by a batch of its own account (which
/// holds the account's lock): two servers creating one new runner id for two accounts at once
/// both insert, and the second, waiting on the first's row, finds it of another account and
/// writes nothing, which `persist` finds in the count of rows written and answers as a
/// conflict (the batch runs again, loads the runner and refuses the other account's event).
fn runners(a: &mut Args, s: &BatchState) -> Result<Vec<String>> {
    let mut parts = Vec::new();
    if !s.dirty_runners.is_empty() {
        let r = s
            .dirty_runners
            .iter()
            .map(|id| dirty(&s.runners, id, "runner").map(RunnerCols::of))
            .collect::<Result<Vec<_>>>()?;
        parts.push(format!(
            "INSERT INTO runners ({RUNNER_COLS}) SELECT * FROM unnest({}, {}, {}, {}, {}, {}, \
             {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}) \
             ON CONFLICT (runner_id) DO UPDATE SET state = excluded.state, \
             state_at = excluded.state_at, last_at = excluded.last_at, \
             settled_until = excluded.settled_until, cap_at = excluded.cap_at, \
             seg_unit_price = excluded.seg_unit_price, \
             seg_percent_discount = excluded.seg_percent_discount, \
             seg_quantity = excluded.seg_quantity, \
             seg_subtotal_nanos = excluded.seg_subtotal_nanos, \
             seg_total_nanos = excluded.seg_total_nanos, billed_nanos = excluded.billed_nanos \
             WHERE runners.account = excluded.account RETURNING 1",
            a.add(col(&r, |r| r.runner_id.clone()), "text[]"),
            a.add(col(&r, |r| r.account.clone()), "text[]"),
            a.add(col(&r, |r| r.app.clone()), "text[]"),
            a.add(col(&r, |r| r.environment.clone()), "text[]"),
            a.add(col(&r, |r| r.machine_type.clone()), "text[]"),
            a.add(col(&r, |r| r.num_gpus), "bigint[]"),
            a.add(col(&r, |r| r.is_surge), "boolean[]"),
            a.add(col(&r, |r| r.state.to_string()), "text[]"),
            a.add(col(&r, |r| r.state_at), "bigint[]"),
            a.add(col(&r, |r| r.last_at), "bigint[]"),
            a.add(col(&r, |r| r.settled_until), "bigint[]"),
            a.add(col(&r, |r| r.cap_at), "bigint[]"),
            a.add(col(&r, |r| r.first_at), "bigint[]"),
            a.add(col(&r, |r| r.seg_unit_price.clone()), "text[]"),
            a.add(col(&r, |r| r.seg_percent_discount.clone()), "text[]"),
            a.add(col(&r, |r| r.seg_quantity.clone()), "text[]"),
            a.add(col(&r, |r| r.seg_subtotal), "bigint[]"),
            a.add(col(&r, |r| r.seg_total), "bigint[]"),
            a.add(col(&r, |r| r.billed), "bigint[]"),
        ));
    }
    if !s.new_runner_events.is_empty() {
        let e = &s.new_runner_events;
        // Another process inserting the same id fails the statement, and the batch runs again
        // (and finds it applied).
        parts.push(format!(
            "INSERT INTO runner_events ({RUNNER_EVENT_COLS}) \
             SELECT * FROM unnest({}, {}, {}, {}, {}, {})",
            a.add(col(e, |e| e.event_id.as_str().to_string()), "text[]"),
            a.add(col(e, |e| e.runner.as_str().to_string()), "text[]"),
            a.add(col(e, |e| e.account.as_str().to_string()), "text[]"),
            a.add(col(e, |e| e.state.as_str().to_string()), "text[]"),
            a.add(col(e, |e| e.at.0), "bigint[]"),
            a.add(col(e, |e| e.received_at.0), "bigint[]"),
        ));
    }
    if !s.runner_minutes.is_empty() {
        let m: Vec<_> = crate::rows::runner_minute_rows(s)?.into_iter().collect();
        parts.push(format!(
            "INSERT INTO runner_minutes (account, app, slot, running_ms, idle_ms, pending_ms, \
             draining_ms) SELECT * FROM unnest({}, {}, {}, {}, {}, {}, {}) \
             ON CONFLICT (account, app, slot) DO UPDATE SET \
             running_ms = runner_minutes.running_ms + excluded.running_ms, \
             idle_ms = runner_minutes.idle_ms + excluded.idle_ms, \
             pending_ms = runner_minutes.pending_ms + excluded.pending_ms, \
             draining_ms = runner_minutes.draining_ms + excluded.draining_ms",
            a.add(col(&m, |(k, _)| k.0.clone()), "text[]"),
            a.add(col(&m, |(k, _)| k.1.clone()), "text[]"),
            a.add(col(&m, |(k, _)| k.2), "bigint[]"),
            a.add(col(&m, |(_, t)| t.running_ms), "bigint[]"),
            a.add(col(&m, |(_, t)| t.idle_ms), "bigint[]"),
            a.add(col(&m, |(_, t)| t.pending_ms), "bigint[]"),
            a.add(col(&m, |(_, t)| t.draining_ms), "bigint[]"),
        ));
    }
    Ok(parts)
}

/// The batch's new adjustments.
fn adjustments(a: &mut Args, s: &BatchState) -> String {
    let rows: Vec<AdjustmentCols> = s.new_adjustments.iter().map(AdjustmentCols::of).collect();
    format!(
        "INSERT INTO adjustments ({ADJUSTMENT_COLS}) SELECT * FROM unnest({}, {}, {}, {}, {}, \
         {}, {})",
        a.add(col(&rows, |r| r.account.clone()), "text[]"),
        a.add(col(&rows, |r| r.adjustment_id.clone()), "text[]"),
        a.add(col(&rows, |r| r.amount), "bigint[]"),
        a.add(col(&rows, |r| r.reason.clone()), "text[]"),
        a.add(col(&rows, |r| r.created_at), "bigint[]"),
        a.add(col(&rows, |r| r.balance_after), "bigint[]"),
        a.add(col(&rows, |r| r.locked_after), "boolean[]"),
    )
}

/// Requests the batch created are inserted (one another process inserted meanwhile fails the
/// statement, and the batch is run again); those it loaded are updated.
fn requests(a: &mut Args, s: &BatchState, found: &HashSet<RequestId>) -> [String; 2] {
    let (new, old): (Vec<&RequestId>, Vec<&RequestId>) =
        s.dirty_requests.iter().partition(|id| !found.contains(*id));
    let cols = |ids: Vec<&RequestId>| -> Vec<RequestCols> {
        ids.into_iter()
            .map(|id| RequestCols::of(&s.requests[id]))
            .collect()
    };
    let (new, old) = (cols(new), cols(old));
    let insert = format!(
        "INSERT INTO requests ({REQUEST_COLS}) SELECT * FROM unnest({}, {}, {}, {}, {}, {}, {}, \
         {}, {}, {}, {}, {}, {}, {}, {}, {}, {})",
        a.add(col(&new, |r| r.request_id.clone()), "text[]"),
        a.add(col(&new, |r| r.source.clone()), "text[]"),
        a.add(col(&new, |r| r.account.clone()), "text[]"),
        a.add(col(&new, |r| r.endpoint_id.clone()), "text[]"),
        a.add(col(&new, |r| r.api_key.clone()), "text[]"),
        a.add(col(&new, |r| r.price_version), "bigint[]"),
        a.add(col(&new, |r| r.status.clone()), "text[]"),
        a.add(col(&new, |r| r.submitted_at), "bigint[]"),
        a.add(col(&new, |r| r.started_at), "bigint[]"),
        a.add(col(&new, |r| r.finished_at), "bigint[]"),
        a.add(col(&new, |r| r.hold), "bigint[]"),
        a.add(col(&new, |r| r.hold_expires_at), "bigint[]"),
        a.add(col(&new, |r| r.machine_type.clone()), "text[]"),
        a.add(col(&new, |r| r.num_gpus), "bigint[]"),
        a.add(col(&new, |r| r.queue_ms), "bigint[]"),
        a.add(col(&new, |r| r.inference_ms), "bigint[]"),
        a.add(col(&new, |r| r.completion.clone()), "text[]"),
    );
    let update = format!(
        "UPDATE requests r SET status = x.status, started_at = x.started_at, \
         finished_at = x.finished_at, hold_nanos = x.hold, hold_expires_at = x.expires, \
         machine_type = x.machine, num_gpus = x.gpus, queue_ms = x.queue_ms, \
         inference_ms = x.inference_ms, completion = x.completion \
         FROM unnest({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}) AS x(request_id, status, \
           started_at, finished_at, hold, expires, machine, gpus, queue_ms, inference_ms, \
           completion) \
         WHERE r.request_id = x.request_id",
        a.add(col(&old, |r| r.request_id.clone()), "text[]"),
        a.add(col(&old, |r| r.status.clone()), "text[]"),
        a.add(col(&old, |r| r.started_at), "bigint[]"),
        a.add(col(&old, |r| r.finished_at), "bigint[]"),
        a.add(col(&old, |r| r.hold), "bigint[]"),
        a.add(col(&old, |r| r.hold_expires_at), "bigint[]"),
        a.add(col(&old, |r| r.machine_type.clone()), "text[]"),
        a.add(col(&old, |r| r.num_gpus), "bigint[]"),
        a.add(col(&old, |r| r.queue_ms), "bigint[]"),
        a.add(col(&old, |r| r.inference_ms), "bigint[]"),
        a.add(col(&old, |r| r.completion.clone()), "text[]"),
    );
    [insert, update]
}

/// New purchases with what is left of them after the batch, and what is left of the older
/// lots of the accounts that changed; with what the batch took back of purchases (refunded,
/// disputed), when it took any. One part per table: a statement may not update a row twice,
/// so a purchase both spent and taken back is updated once, with both.
fn purchases(a: &mut Args, s: &BatchState) -> Result<[String; 2]> {
    let lot = |account: &AccountId, pid: &PurchaseId| {
        s.accounts
            .get(account)
            .and_then(|st| st.lots.iter().find(|l| &l.purchase_id == pid))
    };
    let new = &s.new_purchases;
    let fresh: HashSet<(&AccountId, &PurchaseId)> =
        new.iter().map(|p| (&p.account, &p.purchase_id)).collect();
    // What changed of each older purchase: (remaining, expiry noticed) of a lot of an account
    // that changed, (refunded, disputed) of a purchase the batch took back of.
    type Changed = (Option<i64>, Option<bool>, Option<i64>, Option<i64>);
    let mut older: BTreeMap<(&AccountId, &PurchaseId), Changed> = BTreeMap::new();
    for id in &s.dirty_accounts {
        for lot in &s.accounts[id].lots {
            if !fresh.contains(&(id, &lot.purchase_id)) {
                let row = older.entry((id, &lot.purchase_id)).or_default();
                (row.0, row.1) = (Some(lot.remaining.0), Some(lot.expiry_noticed));
            }
        }
    }
    let mut taken = false;
    for key in &s.dirty_purchases {
        if !fresh.contains(&(&key.0, &key.1)) {
            let p = dirty(&s.purchases, key, "purchase")?;
            let row = older.entry((&key.0, &key.1)).or_default();
            (row.2, row.3) = (Some(p.refunded.0), Some(p.disputed.0));
            taken = true;
        }
    }
    // A new purchase's state after the batch (what is left of it, whether its expiry was
    // noticed, what was taken back of it): the update below cannot see rows this statement
    // inserts.
    let (inserted, noticed): (Vec<PurchaseCols>, Vec<bool>) = new
        .iter()
        .map(|p| {
            let after = lot(&p.account, &p.purchase_id);
            let remaining = after.map_or(p.amount.0, |l| l.remaining.0);
            let record = s
                .purchases
                .get(&(p.account.clone(), p.purchase_id.clone()))
                .unwrap_or(p);
            (
                PurchaseCols::of(record, Nanos(remaining)),
                after.is_some_and(|l| l.expiry_noticed),
            )
        })
        .unzip();
    // Named only when a new purchase has something taken back (else the columns' default).
    let new_taken = inserted.iter().any(|p| p.refunded != 0 || p.disputed != 0);
    let (taken_cols, taken_arrays) = if new_taken {
        (
            format!(", {TAKEN_COLS}"),
            format!(
                ", {}, {}",
                a.add(col(&inserted, |p| p.refunded), "bigint[]"),
                a.add(col(&inserted, |p| p.disputed), "bigint[]"),
            ),
        )
    } else {
        (String::new(), String::new())
    };
    let insert = format!(
        "INSERT INTO purchases ({PURCHASE_COLS}, expiry_noticed{taken_cols}) \
         SELECT * FROM unnest({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}{taken_arrays})",
        a.add(col(&inserted, |p| p.account.clone()), "text[]"),
        a.add(col(&inserted, |p| p.purchase_id.clone()), "text[]"),
        a.add(col(&inserted, |p| p.amount), "bigint[]"),
        a.add(col(&inserted, |p| p.paid), "boolean[]"),
        a.add(col(&inserted, |p| p.created_at), "bigint[]"),
        a.add(col(&inserted, |p| p.balance_after), "bigint[]"),
        a.add(col(&inserted, |p| p.limit_after), "bigint[]"),
        a.add(col(&inserted, |p| p.locked_after), "boolean[]"),
        a.add(col(&inserted, |p| p.expires_at), "bigint[]"),
        a.add(col(&inserted, |p| p.remaining), "bigint[]"),
        a.add(noticed, "boolean[]"),
    );
    let older: Vec<_> = older.into_iter().collect();
    let accounts = a.add(col(&older, |(k, _)| k.0.as_str().to_string()), "text[]");
    let ids = a.add(col(&older, |(k, _)| k.1.as_str().to_string()), "text[]");
    let update = if taken {
        format!(
            "UPDATE purchases p SET remaining_nanos = x.remaining, \
             expiry_noticed = x.noticed, refunded_nanos = x.refunded, \
             disputed_nanos = x.disputed \
             FROM (SELECT y.account, y.purchase_id, \
                 COALESCE(y.remaining, q.remaining_nanos) AS remaining, \
                 COALESCE(y.noticed, q.expiry_noticed) AS noticed, \
                 COALESCE(y.refunded, q.refunded_nanos) AS refunded, \
                 COALESCE(y.disputed, q.disputed_nanos) AS disputed \
               FROM unnest({accounts}, {ids}, {}, {}, {}, {}) \
                 AS y(account, purchase_id, remaining, noticed, refunded, disputed) \
               JOIN purchases q ON q.account = y.account AND q.purchase_id = y.purchase_id) x \
             WHERE p.account = x.account AND p.purchase_id = x.purchase_id \
             AND (p.remaining_nanos <> x.remaining OR p.expiry_noticed <> x.noticed \
               OR p.refunded_nanos <> x.refunded OR p.disputed_nanos <> x.disputed)",
            a.add(col(&older, |(_, c)| c.0), "bigint[]"),
            a.add(col(&older, |(_, c)| c.1), "boolean[]"),
            a.add(col(&older, |(_, c)| c.2), "bigint[]"),
            a.add(col(&older, |(_, c)| c.3), "bigint[]"),
        )
    } else {
        format!(
            "UPDATE purchases p SET remaining_nanos = x.remaining, expiry_noticed = x.noticed \
             FROM unnest({accounts}, {ids}, {}, {}) AS x(account, purchase_id, remaining, \
               noticed) \
             WHERE p.account = x.account AND p.purchase_id = x.purchase_id \
             AND (p.remaining_nanos <> x.remaining OR p.expiry_noticed <> x.noticed)",
            a.add(col(&older, |(_, c)| c.0), "bigint[]"),
            a.add(col(&older, |(_, c)| c.1), "boolean[]"),
        )
    };
    Ok([insert, update])
}

/// The name of the statement's part that takes the batch's invoice numbers.
const INVOICE_SEQ: &str = "invoice_seq";

/// The batch's invoices (none: `None`): the part that advances each year's counter by the
/// invoices the batch issues in it (an upsert, so the counter row stays locked until the
/// batch commits: another server's batch waits for it and then continues from its numbers,
/// and a batch rolled back took none), and the insert that numbers them in issue order from
/// where the counter was. The counter is locked after the accounts (locked when loaded).
/// The third string is the query of the numbers taken, `(ord, year, seq)` per invoice, `ord`
/// its index in `new_invoices`. A credit note corrects the top-up invoice of its purchase:
/// one the batch issues (numbered by the same query), or one committed before it.
fn invoices(a: &mut Args, s: &BatchState) -> Option<(String, String, String)> {
    if s.new_invoices.is_empty() {
        return None;
    }
    let mut per_year: Vec<(i64, i64)> = Vec::new();
    let mut rows = Vec::new();
    for i in &s.new_invoices {
        let year = i64::from(year_of(i.issued_at));
        let rank = match per_year.iter_mut().find(|(y, _)| *y == year) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                per_year.push((year, 1));
                1
            }
        };
        rows.push((year, rank, i));
    }
    let counters = format!(
        "INSERT INTO invoice_counters (year, last_seq) SELECT * FROM unnest({}, {}) \
         ON CONFLICT (year) DO UPDATE SET last_seq = invoice_counters.last_seq + \
         excluded.last_seq RETURNING year, last_seq",
        a.add(col(&per_year, |p| p.0), "bigint[]"),
        a.add(col(&per_year, |p| p.1), "bigint[]"),
    );
    let prefix = s
        .invoice_prefix
        .as_deref()
        .unwrap_or(INVOICE_PREFIX)
        .to_string();
    let years = a.add(col(&rows, |r| r.0), "bigint[]");
    let ranks = a.add(col(&rows, |r| r.1), "bigint[]");
    let ords = a.add((0..rows.len() as i64).collect::<Vec<_>>(), "bigint[]");
    let counts = (
        a.add(col(&per_year, |p| p.0), "bigint[]"),
        a.add(col(&per_year, |p| p.1), "bigint[]"),
    );
    let numbers = format!(
        "SELECT x.ord, x.year, c.last_seq - n.count + x.rank AS seq \
         FROM unnest({years}, {ranks}, {ords}) AS x(year, rank, ord) \
         JOIN unnest({}, {}) AS n(year, count) ON n.year = x.year \
         JOIN {INVOICE_SEQ} c ON c.year = x.year",
        counts.0, counts.1,
    );
    // The invoice each credit note corrects: issued by this batch (its `ord`), else the first
    // top-up invoice committed for its purchase.
    let corrects = if s
        .new_invoices
        .iter()
        .any(|i| i.kind == InvoiceKind::CreditNote)
    {
        let in_batch: Vec<Option<i64>> = (0..s.new_invoices.len())
            .map(|n| crate::rows::corrected_in_batch(s, n).map(|j| j as i64))
            .collect();
        let in_batch = a.add(in_batch, "bigint[]");
        (
            "COALESCE(b.year, t.year), COALESCE(b.seq, t.seq)".to_string(),
            format!(
                "JOIN unnest({ords}, {in_batch}) AS k(ord, corrects) ON k.ord = m.ord \
                 LEFT JOIN ({numbers}) b ON b.ord = k.corrects \
                 LEFT JOIN LATERAL (SELECT i.year, i.seq FROM invoices i \
                   WHERE x.kind = 'credit_note' AND k.corrects IS NULL \
                   AND i.account = x.account AND i.purchase_id = x.purchase_id \
                   AND i.kind = 'top_up' ORDER BY i.year, i.seq LIMIT 1) t ON true"
            ),
        )
    } else {
        ("NULL, NULL".to_string(), String::new())
    };
    let insert = format!(
        "INSERT INTO invoices ({INVOICE_COLS}) \
         SELECT m.year, m.seq, x.prefix, x.account, x.kind, x.status, \
           x.issued_at, x.period_start, x.period_end, x.total, x.purchase_id, x.subtotal, \
           x.discount, NULL, NULL, {} \
         FROM unnest({ords}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}) AS x(ord, \
           prefix, account, kind, status, issued_at, period_start, period_end, total, \
           purchase_id, subtotal, discount) \
         JOIN ({numbers}) m ON m.ord = x.ord {}",
        corrects.0,
        a.add(col(&rows, |_| prefix.clone()), "text[]"),
        a.add(col(&rows, |r| r.2.account.as_str().to_string()), "text[]"),
        a.add(col(&rows, |r| r.2.kind.as_str().to_string()), "text[]"),
        a.add(col(&rows, |r| r.2.status.as_str().to_string()), "text[]"),
        a.add(col(&rows, |r| r.2.issued_at.0), "bigint[]"),
        a.add(col(&rows, |r| r.2.period_start.0), "bigint[]"),
        a.add(col(&rows, |r| r.2.period_end.0), "bigint[]"),
        a.add(col(&rows, |r| r.2.total.0), "bigint[]"),
        a.add(
            col(&rows, |r| r
                .2
                .purchase_id
                .as_ref()
                .map(|p| p.as_str().to_string())),
            "text[]"
        ),
        a.add(col(&rows, |r| r.2.subtotal.0), "bigint[]"),
        a.add(col(&rows, |r| r.2.discount.0), "bigint[]"),
        corrects.1,
    );
    Some((counters, insert, numbers))
}

/// The batch's accruals added to their periods' rows (summed per row first: one statement
/// may not update a row twice).
fn accruals(a: &mut Args, s: &BatchState) -> Result<String> {
    let rows: Vec<_> = crate::rows::accrual_rows(s)?.into_iter().collect();
    Ok(format!(
        "INSERT INTO invoice_accruals (account, period_start, charge_month, endpoint_id, unit, \
         unit_price, blend_version, percent_discount, quantity, requests, subtotal_nanos, \
         discount_nanos, total_nanos, first_usage_at, last_usage_at) \
         SELECT a, p, m, e, u, pr, b, d, CAST(q AS NUMERIC), n, st, di, t, f, l FROM unnest({}, \
           {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}) \
           AS x(a, p, m, e, u, pr, b, d, q, n, st, di, t, f, l) \
         ON CONFLICT (account, period_start, charge_month, endpoint_id, unit, unit_price, \
           blend_version, percent_discount) DO UPDATE SET \
         quantity = invoice_accruals.quantity + excluded.quantity, \
         requests = invoice_accruals.requests + excluded.requests, \
         subtotal_nanos = invoice_accruals.subtotal_nanos + excluded.subtotal_nanos, \
         discount_nanos = invoice_accruals.discount_nanos + excluded.discount_nanos, \
         total_nanos = invoice_accruals.total_nanos + excluded.total_nanos, \
         first_usage_at = LEAST(invoice_accruals.first_usage_at, excluded.first_usage_at), \
         last_usage_at = GREATEST(invoice_accruals.last_usage_at, excluded.last_usage_at)",
        a.add(col(&rows, |(k, _)| k.0.clone()), "text[]"),
        a.add(col(&rows, |(k, _)| k.1), "bigint[]"),
        a.add(col(&rows, |(k, _)| i64::from(k.2 .0)), "bigint[]"),
        a.add(col(&rows, |(k, _)| k.2 .1.clone()), "text[]"),
        a.add(col(&rows, |(k, _)| k.2 .2.clone()), "text[]"),
        a.add(col(&rows, |(k, _)| k.2 .3.clone()), "text[]"),
        a.add(col(&rows, |(k, _)| k.2 .4), "bigint[]"),
        a.add(col(&rows, |(k, _)| k.2 .5.clone()), "text[]"),
        a.add(
            col(&rows, |(_, v)| v.0.quantity.normalize().to_string()),
            "text[]"
        ),
        a.add(col(&rows, |(_, v)| count(v.0.requests)), "bigint[]"),
        a.add(col(&rows, |(_, v)| v.0.subtotal.0), "bigint[]"),
        a.add(col(&rows, |(_, v)| v.0.discount.0), "bigint[]"),
        a.add(col(&rows, |(_, v)| v.0.total.0), "bigint[]"),
        a.add(col(&rows, |(_, v)| v.1), "bigint[]"),
        a.add(col(&rows, |(_, v)| v.2), "bigint[]"),
    ))
}

/// The closed periods' accrual rows moved into their invoices' lines: `$1` the accounts, `$2`
/// the periods' starts, `$3` and `$4` their invoices' years and sequence numbers (arrays of one
/// element per invoice; each a range of the accruals' primary key).
pub(crate) const ACCRUALS_TO_LINES: &str =
    "WITH x AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) \
       AS x(account, period_start, year, seq)), \
     moved AS (DELETE FROM invoice_accruals a USING x \
       WHERE a.account = x.account AND a.period_start = x.period_start RETURNING a.*) \
     INSERT INTO invoice_lines (year, seq, charge_month, endpoint_id, unit, unit_price, \
       blend_version, percent_discount, quantity, requests, subtotal_nanos, discount_nanos, \
       total_nanos, first_usage_at, last_usage_at) \
     SELECT x.year, x.seq, m.charge_month, m.endpoint_id, m.unit, m.unit_price, \
       m.blend_version, m.percent_discount, m.quantity, m.requests, m.subtotal_nanos, \
       m.discount_nanos, m.total_nanos, m.first_usage_at, m.last_usage_at \
     FROM moved m JOIN x ON x.account = m.account AND x.period_start = m.period_start";

/// Moves the accrual rows of the periods the batch's usage invoices closed into those
/// invoices' lines (a statement after the batch's one statement, which it must see: the
/// batch's own accruals and numbers).
fn invoice_lines(t: &mut PgTx, s: &BatchState, numbers: &[(i64, i64)]) -> Result<()> {
    let usage: Vec<_> = s
        .new_invoices
        .iter()
        .zip(numbers)
        .filter(|(i, _)| i.kind == InvoiceKind::Usage)
        .collect();
    if usage.is_empty() {
        return Ok(());
    }
    let accounts = col(&usage, |(i, _)| i.account.as_str().to_string());
    let starts = col(&usage, |(i, _)| i.period_start.0);
    let years = col(&usage, |(_, n)| n.0);
    let seqs = col(&usage, |(_, n)| n.1);
    t.exec(ACCRUALS_TO_LINES, &[&accounts, &starts, &years, &seqs])?;
    Ok(())
}

fn transfers(a: &mut Args, s: &BatchState) -> String {
    let tr: Vec<TransferCols> = s.transfers.iter().map(TransferCols::of).collect();
    format!(
        "INSERT INTO transfers ({TRANSFER_COLS}) SELECT * FROM unnest({}, {}, {}, {}, {}, {}, {})",
        a.add(col(&tr, |t| t.kind.to_string()), "text[]"),
        a.add(col(&tr, |t| t.debit.clone()), "text[]"),
        a.add(col(&tr, |t| t.credit.clone()), "text[]"),
        a.add(col(&tr, |t| t.amount), "bigint[]"),
        a.add(col(&tr, |t| t.request_id.clone()), "text[]"),
        a.add(col(&tr, |t| t.purchase_id.clone()), "text[]"),
        a.add(col(&tr, |t| t.at), "bigint[]"),
    )
}

fn line_items(a: &mut Args, s: &BatchState) -> String {
    let rows: Vec<LineItemCols> = s.line_items.iter().map(LineItemCols::of).collect();
    format!(
        "INSERT INTO line_items ({LINE_ITEM_COLS}) SELECT * FROM unnest({}, {}, {}, {}, {}, {}, \
         {}, {}, {}, {}, {}, {}, {}, {}, {}, {})",
        a.add(col(&rows, |r| r.request_id.clone()), "text[]"),
        a.add(col(&rows, |r| r.account.clone()), "text[]"),
        a.add(col(&rows, |r| r.endpoint_id.clone()), "text[]"),
        a.add(col(&rows, |r| r.api_key.clone()), "text[]"),
        a.add(col(&rows, |r| r.price_version), "bigint[]"),
        a.add(col(&rows, |r| r.unit.clone()), "text[]"),
        a.add(col(&rows, |r| r.quantity.clone()), "text[]"),
        a.add(col(&rows, |r| r.unit_price.clone()), "text[]"),
        a.add(col(&rows, |r| r.percent_discount.clone()), "text[]"),
        a.add(col(&rows, |r| r.subtotal), "bigint[]"),
        a.add(col(&rows, |r| r.discount), "bigint[]"),
        a.add(col(&rows, |r| r.total), "bigint[]"),
        a.add(col(&rows, |r| r.status_code as i32), "int[]"),
        a.add(col(&rows, |r| r.billed_at), "bigint[]"),
        a.add(col(&rows, |r| r.queue_ms), "bigint[]"),
        a.add(col(&rows, |r| r.inference_ms), "bigint[]"),
    )
}

/// Adds the batch's usage to its rows of one grain (`NUMERIC` quantities add exactly in SQL).
fn usage(a: &mut Args, grain: Grain, d: &Deltas) -> String {
    let table = tables(grain).0;
    let rows: Vec<_> = d.usage.iter().collect();
    format!(
        "INSERT INTO {table} (account, slot, endpoint_id, api_key, unit, unit_price, \
         blend_version, percent_discount, quantity, requests, subtotal_nanos, discount_nanos, \
         total_nanos) \
         SELECT a, s, e, k, u, p, b, d, CAST(q AS NUMERIC), n, st, di, t FROM unnest({}, {}, {}, \
           {}, {}, {}, {}, {}, {}, {}, {}, {}, {}) AS x(a, s, e, k, u, p, b, d, q, n, st, di, t) \
         ON CONFLICT (account, slot, endpoint_id, api_key, unit, unit_price, blend_version, \
           percent_discount) DO UPDATE SET \
         quantity = {table}.quantity + excluded.quantity, \
         requests = {table}.requests + excluded.requests, \
         subtotal_nanos = {table}.subtotal_nanos + excluded.subtotal_nanos, \
         discount_nanos = {table}.discount_nanos + excluded.discount_nanos, \
         total_nanos = {table}.total_nanos + excluded.total_nanos",
        a.add(
            col(&rows, |(k, _)| k.account.as_str().to_string()),
            "text[]"
        ),
        a.add(col(&rows, |(k, _)| k.slot.0), "bigint[]"),
        a.add(
            col(&rows, |(k, _)| k.endpoint.as_str().to_string()),
            "text[]"
        ),
        a.add(
            col(&rows, |(k, _)| k
                .api_key
                .as_ref()
                .map_or(String::new(), |k| k.as_str().to_string())),
            "text[]"
        ),
        a.add(col(&rows, |(k, _)| k.unit.clone()), "text[]"),
        a.add(
            col(&rows, |(k, _)| match k.price {
                UsagePrice::Rate(p) => p.to_string(),
                UsagePrice::Blended { .. } => String::new(),
            }),
            "text[]"
        ),
        a.add(
            col(&rows, |(k, _)| match k.price {
                UsagePrice::Rate(_) => 0,
                UsagePrice::Blended { version } => version,
            }),
            "bigint[]"
        ),
        a.add(
            col(&rows, |(k, _)| k
                .percent_discount
                .map(|p| p.to_string())
                .unwrap_or_default()),
            "text[]"
        ),
        a.add(
            col(&rows, |(_, t)| t.quantity.normalize().to_string()),
            "text[]"
        ),
        a.add(col(&rows, |(_, t)| count(t.requests)), "bigint[]"),
        a.add(col(&rows, |(_, t)| t.subtotal.0), "bigint[]"),
        a.add(col(&rows, |(_, t)| t.discount.0), "bigint[]"),
        a.add(col(&rows, |(_, t)| t.total.0), "bigint[]"),
    )
}

/// An activity row as written: (account, slot, endpoint) and its totals after the batch.
type ActivityRow = ((String, i64, String), ActivityTotals);

/// The activity rows of both grains the batch adds to, read in one query and added to in Rust.
fn merged_activity(
    t: &mut PgTx,
    grains: &[(Grain, &Deltas)],
) -> Result<Vec<(Grain, Vec<ActivityRow>)>> {
    let mut a = Args::default();
    let mut selects = Vec::new();
    for (i, (grain, d)) in grains.iter().enumerate() {
        let keys: Vec<_> = d.activity.keys().collect();
        selects.push(format!(
            "SELECT {i}, account, slot, endpoint_id, {ACTIVITY_COLS} FROM {} \
             WHERE (account, slot, endpoint_id) IN (SELECT * FROM unnest({}, {}, {}))",
            tables(*grain).1,
            a.add(col(&keys, |k| k.account.as_str().to_string()), "text[]"),
            a.add(col(&keys, |k| k.slot.0), "bigint[]"),
            a.add(col(&keys, |k| k.endpoint.as_str().to_string()), "text[]"),
        ));
    }
    let mut stored: Vec<HashMap<(String, i64, String), ActivityTotals>> =
        grains.iter().map(|_| HashMap::new()).collect();
    if grains.iter().any(|(_, d)| !d.activity.is_empty()) {
        for r in t.rows(&selects.join(" UNION ALL "), &a.refs())? {
            let grain: i32 = r.try_get(0)?;
            stored[grain as usize].insert(
                (r.try_get(1)?, r.try_get(2)?, r.try_get(3)?),
                activity_totals(&r, 4)?,
            );
        }
    }
    Ok(grains
        .iter()
        .zip(stored)
        .map(|((grain, d), mut stored)| {
            let rows = d
                .activity
                .iter()
                .map(|(k, delta)| {
                    let key = (
                        k.account.as_str().to_string(),
                        k.slot.0,
                        k.endpoint.as_str().to_string(),
                    );
                    let mut total = stored.remove(&key).unwrap_or_default();
                    total.add(delta);
                    (key, total)
                })
                .collect();
            (*grain, rows)
        })
        .collect())
}

/// Writes activity rows of one grain as merged in Rust (safe: each belongs to an account the
/// batch holds locked).
fn activity_rows(a: &mut Args, grain: Grain, rows: Vec<ActivityRow>) -> String {
    let table = tables(grain).1;
    format!(
        "INSERT INTO {table} (account, slot, endpoint_id, {ACTIVITY_COLS}) \
         SELECT * FROM unnest({}, {}, {}, {}, {}, {}, {}, {}, {}, {}) \
         ON CONFLICT (account, slot, endpoint_id) DO UPDATE SET \
         requests = excluded.requests, successes = excluded.successes, \
         user_errors = excluded.user_errors, errors = excluded.errors, \
         billable_ms = excluded.billable_ms, prepare_ms = excluded.prepare_ms, \
         duration_ms = excluded.duration_ms",
        a.add(col(&rows, |(k, _)| k.0.clone()), "text[]"),
        a.add(col(&rows, |(k, _)| k.1), "bigint[]"),
        a.add(col(&rows, |(k, _)| k.2.clone()), "text[]"),
        a.add(col(&rows, |(_, t)| count(t.requests)), "bigint[]"),
        a.add(col(&rows, |(_, t)| count(t.successes)), "bigint[]"),
        a.add(col(&rows, |(_, t)| count(t.user_errors)), "bigint[]"),
        a.add(col(&rows, |(_, t)| count(t.errors)), "bigint[]"),
        a.add(col(&rows, |(_, t)| t.billable_ms), "bigint[]"),
        a.add(col(&rows, |(_, t)| t.prepare_ms.to_bytes()), "bytea[]"),
        a.add(col(&rows, |(_, t)| t.duration_ms.to_bytes()), "bytea[]"),
    )
}

/// The batch's movements added to each account's day and month (their closing balance set to
/// what the batch left: the account is locked, so batches of one account write in commit order), its
/// movements other than usage (numbered in the batch's order), and its usage by endpoint and
/// unit (see [`tollgate_core::statement`]).
fn statement_rows(a: &mut Args, d: &Daily) -> [String; 4] {
    let [days, months] = [
        ("balance_days", "day", &d.days),
        ("balance_months", "month", &d.months),
    ]
    .map(|(table, period, rows)| {
        format!(
            "INSERT INTO {table} (account, {period}, purchases_nanos, grants_nanos, \
             usage_nanos, expired_nanos, refunds_nanos, disputes_nanos, adjustments_nanos, \
             closing_nanos) \
             SELECT * FROM unnest({}, {}, {}, {}, {}, {}, {}, {}, {}, {}) \
             ON CONFLICT (account, {period}) DO UPDATE SET \
             purchases_nanos = {table}.purchases_nanos + excluded.purchases_nanos, \
             grants_nanos = {table}.grants_nanos + excluded.grants_nanos, \
             usage_nanos = {table}.usage_nanos + excluded.usage_nanos, \
             expired_nanos = {table}.expired_nanos + excluded.expired_nanos, \
             refunds_nanos = {table}.refunds_nanos + excluded.refunds_nanos, \
             disputes_nanos = {table}.disputes_nanos + excluded.disputes_nanos, \
             adjustments_nanos = {table}.adjustments_nanos + excluded.adjustments_nanos, \
             closing_nanos = excluded.closing_nanos",
            a.add(col(rows, |x| x.account.as_str().to_string()), "text[]"),
            a.add(col(rows, |x| x.day.0), "bigint[]"),
            a.add(col(rows, |x| x.moved.purchases.0), "bigint[]"),
            a.add(col(rows, |x| x.moved.grants.0), "bigint[]"),
            a.add(col(rows, |x| x.moved.usage.0), "bigint[]"),
            a.add(col(rows, |x| x.moved.expired.0), "bigint[]"),
            a.add(col(rows, |x| x.moved.refunds.0), "bigint[]"),
            a.add(col(rows, |x| x.moved.disputes.0), "bigint[]"),
            a.add(col(rows, |x| x.moved.adjustments.0), "bigint[]"),
            a.add(col(rows, |x| x.closing.0), "bigint[]"),
        )
    });
    let m = &d.movements;
    let movements = format!(
        "INSERT INTO balance_movements (account, at, kind, amount_nanos, reference) \
         SELECT x.account, x.at, x.kind, x.amount, x.reference \
         FROM unnest({}, {}, {}, {}, {}) WITH ORDINALITY \
           AS x(account, at, kind, amount, reference, n) ORDER BY x.n",
        a.add(col(m, |x| x.account.as_str().to_string()), "text[]"),
        a.add(col(m, |x| x.at.0), "bigint[]"),
        a.add(col(m, |x| x.kind.as_str().to_string()), "text[]"),
        a.add(col(m, |x| x.amount.0), "bigint[]"),
        a.add(col(m, |x| x.reference.clone()), "text[]"),
    );
    let u: Vec<_> = d.usage.iter().collect();
    let usage =
        format!(
        "INSERT INTO usage_days (account, day, endpoint_id, unit, quantity, requests, cost_nanos) \
         SELECT a, d, e, u, CAST(q AS NUMERIC), n, c \
         FROM unnest({}, {}, {}, {}, {}, {}, {}) AS x(a, d, e, u, q, n, c) \
         ON CONFLICT (account, day, endpoint_id, unit) DO UPDATE SET \
         quantity = usage_days.quantity + excluded.quantity, \
         requests = usage_days.requests + excluded.requests, \
         cost_nanos = usage_days.cost_nanos + excluded.cost_nanos",
        a.add(col(&u, |(k, _)| k.account.as_str().to_string()), "text[]"),
        a.add(col(&u, |(k, _)| k.day.0), "bigint[]"),
        a.add(col(&u, |(k, _)| k.endpoint.as_str().to_string()), "text[]"),
        a.add(col(&u, |(k, _)| k.unit.clone()), "text[]"),
        a.add(col(&u, |(_, v)| v.quantity.normalize().to_string()), "text[]"),
        a.add(col(&u, |(_, v)| count(v.requests)), "bigint[]"),
        a.add(col(&u, |(_, v)| v.cost.0), "bigint[]"),
    );
    [days, months, movements, usage]
}
