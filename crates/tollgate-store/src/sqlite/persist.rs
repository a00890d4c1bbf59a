//! A batch's writes on SQLite, in the writer's db transaction: one function per table.

use super::account_cache::CachedAccount;
use super::rollups;
use super::tx::SqliteTx;
use crate::rows::{dirty, limits_text, payment_text, RunnerCols, INVOICE_COLS};
use crate::rows::{
    AdjustmentCols, PurchaseCols, RequestCols, TransferCols, ADJUSTMENT_COLS, PURCHASE_COLS,
    REQUEST_COLS, TAKEN_COLS, TRANSFER_COLS,
};
use crate::rows::{RUNNER_COLS, RUNNER_EVENT_COLS};
use crate::{Result, StoreError, INVOICE_PREFIX};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use tollgate_core::ids::AccountId;
use tollgate_core::machine::{year_of, BatchState, InvoiceKind};
use tollgate_core::statement;

/// Writes what the core decided (see [`Tx::persist`](crate::Tx::persist)).
pub(super) fn persist(t: &mut SqliteTx, s: &BatchState) -> Result<Vec<(i64, i64)>> {
    let c = t.conn;
    accounts(t, s)?;
    requests(c, s)?;
    purchases(c, s)?;
    // Accruals before the invoices: a usage invoice takes its period's rows, this batch's too.
    accruals(c, s)?;
    let numbers = invoices(c, s)?;
    lots(c, t.cache, s)?;
    super::payments::persist(c, s)?;
    // A purchase taken back of counts less toward its account's tier: an account the batch
    // did not write is read again rather than cached with its old sum.
    for (account, _) in &s.dirty_purchases {
        if !s.dirty_accounts.contains(account) {
            t.forget.push(account.clone());
        }
    }
    adjustments(c, s)?;
    transfers(c, s)?;
    line_items(c, s)?;
    runners(c, s)?;
    statement_rows(c, s)?;
    rollup_rows(c, s)?;
    // After the invoices: an invoice.issued event names its invoice's number.
    super::webhooks::outbox(c, &crate::webhooks::event_rows(s, &numbers)?)?;
    if !s.dirty_gateway.is_empty() {
        crate::gateway::persist(&mut super::reader::SqliteDb(c), s)?;
    }
    Ok(numbers)
}

/// Adds the batch's accrued line items to their periods' accrual rows.
fn accruals(c: &Connection, s: &BatchState) -> Result<()> {
    if s.accruals.is_empty() {
        return Ok(());
    }
    let mut st = c.prepare_cached(
        "INSERT INTO invoice_accruals (account, period_start, charge_month, endpoint_id, unit, \
         unit_price, blend_version, percent_discount, quantity, requests, subtotal_nanos, \
         discount_nanos, total_nanos, first_usage_at, last_usage_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) \
         ON CONFLICT DO UPDATE SET quantity = tollgate_dec_add(quantity, excluded.quantity), \
         requests = requests + excluded.requests, \
         subtotal_nanos = subtotal_nanos + excluded.subtotal_nanos, \
         discount_nanos = discount_nanos + excluded.discount_nanos, \
         total_nanos = total_nanos + excluded.total_nanos, \
         first_usage_at = MIN(first_usage_at, excluded.first_usage_at), \
         last_usage_at = MAX(last_usage_at, excluded.last_usage_at)",
    )?;
    for ((account, period, (month, endpoint, unit, price, blend, discount)), (t, first, last)) in
        crate::rows::accrual_rows(s)?
    {
        st.execute(params![
            account,
            period,
            month,
            endpoint,
            unit,
            price,
            blend,
            discount,
            t.quantity.normalize().to_string(),
            t.requests as i64,
            t.subtotal.0,
            t.discount.0,
            t.total.0,
            first,
            last,
        ])?;
    }
    Ok(())
}

/// The balances and counters of the accounts the batch changed, the spending limits of those
/// that have any (an account without limits keeps its empty column: limits are removed only
/// by [`crate::Tx::set_account_limits`]), and the payment profile of those whose profile the
/// batch changed (from the cached row: most batches change none, and encode none); each
/// account is also kept, as the batch leaves it, to cache once the batch commits.
fn accounts(t: &mut SqliteTx, s: &BatchState) -> Result<()> {
    const UPDATE: &str = "UPDATE accounts SET balance_nanos = ?2, held_nanos = ?3, \
         in_progress = ?4, paid_lifetime_nanos = ?5, month = ?6, month_subtotal_nanos = ?7, \
         adjusted_credit_nanos = ?8, disputed_since = ?9, period_start = ?10, \
         period_charges = ?11, period_subtotal_nanos = ?12, period_discount_nanos = ?13, \
         period_total_nanos = ?14, period_last_charge_at = ?15";
    // The statement of each set of columns written (with or without limits, payment), each
    // prepared once per batch.
    let update_sql = |limits: bool, payment: bool| {
        let mut sql = UPDATE.to_string();
        let mut n = 15;
        for (column, written) in [("limits", limits), ("payment", payment)] {
            if written {
                n += 1;
                sql.push_str(&format!(", {column} = ?{n}"));
            }
        }
        sql + " WHERE username = ?1"
    };
    let conn = t.conn;
    let mut statements: [Option<rusqlite::CachedStatement>; 4] = Default::default();
    for id in &s.dirty_accounts {
        let a = &s.accounts[id];
        let before = t.written.get(id).or_else(|| t.cache.get(id));
        // A row not read through the cache (never, from the engine) is written whole.
        let payment_changed = before.is_none_or(|b| b.state.payment != a.payment);
        let written = CachedAccount::as_written(before, id, s);
        t.written.insert(id.clone(), written);
        let charges = i64::try_from(a.period.charges).unwrap_or(i64::MAX);
        let disputed_since = a.disputed_since.map(|t| t.0);
        let columns: [&dyn rusqlite::ToSql; 15] = [
            &id.as_str(),
            &a.credit.balance.0,
            &a.credit.held.0,
            &a.in_progress,
            &a.paid_lifetime.0,
            &a.month,
            &a.month_subtotal.0,
            &a.adjusted_credit.0,
            &disputed_since,
            &a.period.start.0,
            &charges,
            &a.period.subtotal.0,
            &a.period.discount.0,
            &a.period.total.0,
            &a.period.last_charge_at.0,
        ];
        // An account without limits keeps its empty column as it is (nothing to encode).
        let limits = (!a.limits.is_empty()).then(|| limits_text(&a.limits));
        let payment = payment_changed.then(|| payment_text(&a.payment));
        let more: Vec<&dyn rusqlite::ToSql> = [&limits, &payment]
            .into_iter()
            .flatten()
            .map(|v| v as &dyn rusqlite::ToSql)
            .collect();
        let which = usize::from(limits.is_some()) | usize::from(payment.is_some()) << 1;
        let st = match &mut statements[which] {
            Some(st) => st,
            slot @ None => {
                slot.insert(conn.prepare_cached(&update_sql(limits.is_some(), payment.is_some()))?)
            }
        };
        st.execute(rusqlite::params_from_iter(columns.into_iter().chain(more)))?;
    }
    Ok(())
}

/// The requests the batch created or changed.
fn requests(c: &Connection, s: &BatchState) -> Result<()> {
    let mut st = c.prepare_cached(&format!(
        "INSERT INTO requests ({REQUEST_COLS}) VALUES \
         (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17) \
         ON CONFLICT (request_id) DO UPDATE SET status = excluded.status, \
         started_at = excluded.started_at, finished_at = excluded.finished_at, \
         hold_nanos = excluded.hold_nanos, hold_expires_at = excluded.hold_expires_at, \
         machine_type = excluded.machine_type, num_gpus = excluded.num_gpus, \
         queue_ms = excluded.queue_ms, inference_ms = excluded.inference_ms, \
         completion = excluded.completion"
    ))?;
    for id in &s.dirty_requests {
        let r = RequestCols::of(&s.requests[id]);
        st.execute(params![
            r.request_id,
            r.source,
            r.account,
            r.endpoint_id,
            r.api_key,
            r.price_version,
            r.status,
            r.submitted_at,
            r.started_at,
            r.finished_at,
            r.hold,
            r.hold_expires_at,
            r.machine_type,
            r.num_gpus,
            r.queue_ms,
            r.inference_ms,
            r.completion,
        ])?;
    }
    Ok(())
}

/// The batch's new adjustments.
fn adjustments(c: &Connection, s: &BatchState) -> Result<()> {
    if s.new_adjustments.is_empty() {
        return Ok(());
    }
    let mut st = c.prepare_cached(&format!(
        "INSERT INTO adjustments ({ADJUSTMENT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    ))?;
    for a in &s.new_adjustments {
        let a = AdjustmentCols::of(a);
        st.execute(params![
            a.account,
            a.adjustment_id,
            a.amount,
            a.reason,
            a.created_at,
            a.balance_after,
            a.locked_after
        ])?;
    }
    Ok(())
}

/// The batch's new purchases, each a lot with all of it left (spent below, by `lots`), with
/// what the batch took back of it (a refund or dispute told before the payment, applied with
/// it).
fn purchases(c: &Connection, s: &BatchState) -> Result<()> {
    let mut st = c.prepare_cached(&format!(
        "INSERT INTO purchases ({PURCHASE_COLS}, {TAKEN_COLS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
    ))?;
    for p in s.new_purchases.iter().map(|p| {
        let key = (p.account.clone(), p.purchase_id.clone());
        let after = s.purchases.get(&key).unwrap_or(p);
        PurchaseCols::of(after, p.amount)
    }) {
        st.execute(params![
            p.account,
            p.purchase_id,
            p.amount,
            p.paid,
            p.created_at,
            p.balance_after,
            p.limit_after,
            p.locked_after,
            p.expires_at,
            p.remaining,
            p.refunded,
            p.disputed,
        ])?;
    }
    Ok(())
}

/// A closed period's accrual rows copied into its invoice's lines: `?1` the invoice's year,
/// `?2` its sequence number, `?3` the account, `?4` the period's start (a range of the
/// accruals' primary key).
pub(crate) const ACCRUALS_TO_LINES: &str =
    "INSERT INTO invoice_lines (year, seq, charge_month, endpoint_id, unit, unit_price, \
     blend_version, percent_discount, quantity, requests, subtotal_nanos, discount_nanos, \
     total_nanos, first_usage_at, last_usage_at) \
     SELECT ?1, ?2, charge_month, endpoint_id, unit, unit_price, blend_version, \
     percent_discount, quantity, requests, subtotal_nanos, discount_nanos, total_nanos, \
     first_usage_at, last_usage_at FROM invoice_accruals \
     WHERE account = ?3 AND period_start = ?4";

/// A closed period's accrual rows deleted once moved: `?1` the account, `?2` the period's start.
pub(crate) const ACCRUALS_MOVED: &str =
    "DELETE FROM invoice_accruals WHERE account = ?1 AND period_start = ?2";

/// The batch's invoices, numbered in issue order from their year's counter row; a usage
/// invoice's lines are its period's accrual rows, moved (the accruals of a closed period are
/// deleted: the invoice lines are what remains of them); a credit note corrects the top-up
/// invoice of its purchase, issued by this batch or before it.
fn invoices(c: &Connection, s: &BatchState) -> Result<Vec<(i64, i64)>> {
    if s.new_invoices.is_empty() {
        return Ok(Vec::new());
    }
    let prefix = s.invoice_prefix.as_deref().unwrap_or(INVOICE_PREFIX);
    let mut numbers = Vec::with_capacity(s.new_invoices.len());
    let mut lines = c.prepare_cached(ACCRUALS_TO_LINES)?;
    let mut moved = c.prepare_cached(ACCRUALS_MOVED)?;
    let mut next = c.prepare_cached(
        "INSERT INTO invoice_counters (year, last_seq) VALUES (?1, 1) ON CONFLICT (year) \
         DO UPDATE SET last_seq = last_seq + 1 RETURNING last_seq",
    )?;
    let mut st = c.prepare_cached(&format!(
        "INSERT INTO invoices ({INVOICE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, \
         ?11, ?12, ?13, NULL, NULL, ?14, ?15)"
    ))?;
    let mut top_up = c.prepare_cached(
        "SELECT year, seq FROM invoices WHERE account = ?1 AND purchase_id = ?2 \
         AND kind = 'top_up' ORDER BY year, seq LIMIT 1",
    )?;
    for (n, i) in s.new_invoices.iter().enumerate() {
        let year = i64::from(year_of(i.issued_at));
        let seq: i64 = next.query_row([year], |r| r.get(0))?;
        if i.kind == InvoiceKind::Usage {
            let at = (i.account.as_str(), i.period_start.0);
            lines.execute(params![year, seq, at.0, at.1])?;
            moved.execute(params![at.0, at.1])?;
        }
        let corrects = match (i.kind, &i.purchase_id) {
            (InvoiceKind::CreditNote, Some(pid)) => match crate::rows::corrected_in_batch(s, n) {
                Some(j) => Some(numbers[j]),
                None => top_up
                    .query_row(params![i.account.as_str(), pid.as_str()], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                    })
                    .optional()?,
            },
            _ => None,
        };
        numbers.push((year, seq));
        st.execute(params![
            year,
            seq,
            prefix,
            i.account.as_str(),
            i.kind.as_str(),
            i.status.as_str(),
            i.issued_at.0,
            i.period_start.0,
            i.period_end.0,
            i.total.0,
            i.purchase_id.as_ref().map(|p| p.as_str()),
            i.subtotal.0,
            i.discount.0,
            corrects.map(|c| c.0),
            corrects.map(|c| c.1),
        ])?;
    }
    Ok(numbers)
}

/// What is left of the lots of the accounts the batch changed.
fn lots(c: &Connection, cache: &HashMap<AccountId, CachedAccount>, s: &BatchState) -> Result<()> {
    // What is left of each lot of the accounts that changed (after the new purchases, so
    // a lot bought and spent in the same batch is written as spent). The cache holds the
    // lots as the last commit left them, so only the lots this batch spent are written.
    let mut st = c.prepare_cached(
        "UPDATE purchases SET remaining_nanos = ?3, expiry_noticed = ?4 \
         WHERE account = ?1 AND purchase_id = ?2 \
         AND (remaining_nanos != ?3 OR expiry_noticed != ?4)",
    )?;
    for id in &s.dirty_accounts {
        let before = cache.get(id).map(|c| c.state.lots.as_slice());
        for lot in &s.accounts[id].lots {
            let unchanged = before.is_some_and(|lots| {
                lots.iter().any(|b| {
                    b.purchase_id == lot.purchase_id
                        && b.remaining == lot.remaining
                        && b.expiry_noticed == lot.expiry_noticed
                })
            });
            if unchanged {
                continue;
            }
            st.execute(params![
                id.as_str(),
                lot.purchase_id.as_str(),
                lot.remaining.0,
                lot.expiry_noticed
            ])?;
        }
    }
    Ok(())
}

/// The batch's transfers, in arrival order.
fn transfers(c: &Connection, s: &BatchState) -> Result<()> {
    let mut st = c.prepare_cached(&format!(
        "INSERT INTO transfers ({TRANSFER_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    ))?;
    for t in s.transfers.iter().map(TransferCols::of) {
        st.execute(params![
            t.kind,
            t.debit,
            t.credit,
            t.amount,
            t.request_id,
            t.purchase_id,
            t.at
        ])?;
    }
    Ok(())
}

/// The batch's line items (see [`super::line_items`]).
fn line_items(c: &Connection, s: &BatchState) -> Result<()> {
    super::line_items::append(c, &s.line_items)?;
    super::line_items::move_if_full(c)
}

/// The runners the batch created or changed (a runner's fixed fields are written once, by the
/// insert), the runner events it applied, and its runner-state history added to the minute
/// rows. A runner row is only ever updated by its own account's batch: a row of another
/// account under the same id (never written by this file's one writer) fails the batch as a
/// conflict, as on PostgreSQL.
fn runners(c: &Connection, s: &BatchState) -> Result<()> {
    if !s.dirty_runners.is_empty() {
        let mut st = c.prepare_cached(&format!(
            "INSERT INTO runners ({RUNNER_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, \
             ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19) \
             ON CONFLICT (runner_id) DO UPDATE SET state = excluded.state, \
             state_at = excluded.state_at, last_at = excluded.last_at, \
             settled_until = excluded.settled_until, cap_at = excluded.cap_at, \
             seg_unit_price = excluded.seg_unit_price, \
             seg_percent_discount = excluded.seg_percent_discount, \
             seg_quantity = excluded.seg_quantity, \
             seg_subtotal_nanos = excluded.seg_subtotal_nanos, \
             seg_total_nanos = excluded.seg_total_nanos, billed_nanos = excluded.billed_nanos \
             WHERE runners.account = excluded.account"
        ))?;
        for id in &s.dirty_runners {
            let r = RunnerCols::of(dirty(&s.runners, id, "runner")?);
            let written = st.execute(params![
                r.runner_id,
                r.account,
                r.app,
                r.environment,
                r.machine_type,
                r.num_gpus,
                r.is_surge,
                r.state,
                r.state_at,
                r.last_at,
                r.settled_until,
                r.cap_at,
                r.first_at,
                r.seg_unit_price,
                r.seg_percent_discount,
                r.seg_quantity,
                r.seg_subtotal,
                r.seg_total,
                r.billed,
            ])?;
            if written == 0 {
                return Err(crate::rows::runner_of_another_account(id));
            }
        }
    }
    if !s.new_runner_events.is_empty() {
        let mut st = c.prepare_cached(&format!(
            "INSERT INTO runner_events ({RUNNER_EVENT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
        ))?;
        for e in &s.new_runner_events {
            st.execute(params![
                e.event_id.as_str(),
                e.runner.as_str(),
                e.account.as_str(),
                e.state.as_str(),
                e.at.0,
                e.received_at.0,
            ])?;
        }
    }
    if !s.runner_minutes.is_empty() {
        let mut st = c.prepare_cached(
            "INSERT INTO runner_minutes (account, app, slot, running_ms, idle_ms, pending_ms, \
             draining_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO UPDATE SET \
             running_ms = running_ms + excluded.running_ms, \
             idle_ms = idle_ms + excluded.idle_ms, \
             pending_ms = pending_ms + excluded.pending_ms, \
             draining_ms = draining_ms + excluded.draining_ms",
        )?;
        for ((account, app, slot), t) in crate::rows::runner_minute_rows(s)? {
            st.execute(params![
                account,
                app,
                slot,
                t.running_ms,
                t.idle_ms,
                t.pending_ms,
                t.draining_ms
            ])?;
        }
    }
    Ok(())
}

/// The batch's usage and activity, added to the rollup rows.
fn rollup_rows(c: &Connection, s: &BatchState) -> Result<()> {
    let folded_before = rollups::fold_minutes(c, s.now)?;
    let deltas =
        tollgate_core::rollup::deltas(s).map_err(|e| StoreError::database(e.to_string(), e))?;
    rollups::write(c, &deltas, folded_before)?;
    Ok(())
}

/// The batch's movements, added to each account's day and month (and their closing balance set
/// to what the batch left), its movements other than usage, and its usage by endpoint and unit
/// (see [`tollgate_core::statement`]). The day, month and usage rows are keyed by time first, so
/// a batch's rows share the current day's few pages.
fn statement_rows(c: &Connection, s: &BatchState) -> Result<()> {
    let d = statement::daily(s).map_err(|e| StoreError::database(e.to_string(), e))?;
    if d.is_empty() {
        return Ok(());
    }
    for (table, period, rows) in [
        ("balance_days", "day", &d.days),
        ("balance_months", "month", &d.months),
    ] {
        let mut st = c.prepare_cached(&format!(
            "INSERT INTO {table} (account, {period}, purchases_nanos, grants_nanos, \
             usage_nanos, expired_nanos, refunds_nanos, disputes_nanos, adjustments_nanos, \
             closing_nanos) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
             ON CONFLICT DO UPDATE SET \
             purchases_nanos = purchases_nanos + excluded.purchases_nanos, \
             grants_nanos = grants_nanos + excluded.grants_nanos, \
             usage_nanos = usage_nanos + excluded.usage_nanos, \
             expired_nanos = expired_nanos + excluded.expired_nanos, \
             refunds_nanos = refunds_nanos + excluded.refunds_nanos, \
             disputes_nanos = disputes_nanos + excluded.disputes_nanos, \
             adjustments_nanos = adjustments_nanos + excluded.adjustments_nanos, \
             closing_nanos = excluded.closing_nanos"
        ))?;
        for row in rows {
            let m = &row.moved;
            st.execute(params![
                row.account.as_str(),
                row.day.0,
                m.purchases.0,
                m.grants.0,
                m.usage.0,
                m.expired.0,
                m.refunds.0,
                m.disputes.0,
                m.adjustments.0,
                row.closing.0,
            ])?;
        }
    }
    if !d.movements.is_empty() {
        let mut st = c.prepare_cached(
            "INSERT INTO balance_movements (account, at, kind, amount_nanos, reference) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for m in &d.movements {
            st.execute(params![
                m.account.as_str(),
                m.at.0,
                m.kind.as_str(),
                m.amount.0,
                m.reference
            ])?;
        }
    }
    let mut st = c.prepare_cached(
        "INSERT INTO usage_days (account, day, endpoint_id, unit, quantity, requests, \
         cost_nanos) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO UPDATE SET \
         quantity = tollgate_dec_add(quantity, excluded.quantity), \
         requests = requests + excluded.requests, cost_nanos = cost_nanos + excluded.cost_nanos",
    )?;
    for (k, u) in &d.usage {
        st.execute(params![
            k.account.as_str(),
            k.day.0,
            k.endpoint.as_str(),
            k.unit,
            u.quantity.normalize().to_string(),
            i64::try_from(u.requests).unwrap_or(i64::MAX),
            u.cost.0,
        ])?;
    }
    Ok(())
}
