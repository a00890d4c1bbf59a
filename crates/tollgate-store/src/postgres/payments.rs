//! Payments on PostgreSQL: the rows a batch's payment operations name, read by the writer's
//! db transaction (a few set-based queries, only for a batch that names any) and by readers
//! alike, and the parts of the batch's statement that write its payment rows (only those it
//! has: a batch without payments writes nothing more).

use super::persist::Args;
use super::Run;
use crate::rows::{
    self, dirty, DisputeCols, PurchaseCols, RefundCols, TopUpCols, DISPUTE_COLS, PURCHASE_COLS,
    REFUND_COLS, TAKEN_COLS, TOP_UP_COLS,
};
use crate::{PaymentKeys, Result};
use std::collections::BTreeSet;
use tollgate_core::ids::{AccountId, PurchaseId};
use tollgate_core::machine::{BatchState, PurchaseRecord};
use tollgate_core::payments::{RefundRecord, TopUpRecord};

pub(super) fn top_up(
    c: &mut dyn Run,
    account: &AccountId,
    top_up_id: &PurchaseId,
) -> Result<Option<TopUpRecord>> {
    c.rows(
        &format!("SELECT {TOP_UP_COLS} FROM top_ups WHERE account = $1 AND top_up_id = $2"),
        &[&account.as_str(), &top_up_id.as_str()],
    )?
    .first()
    .map(|r| rows::top_up_row(r))
    .transpose()
}

/// The top-up paid by `payment_intent` (the first made, were there two).
pub(super) fn top_up_by_payment_intent(
    c: &mut dyn Run,
    payment_intent: &str,
) -> Result<Option<TopUpRecord>> {
    c.rows(
        &format!(
            "SELECT {TOP_UP_COLS} FROM top_ups WHERE payment_intent = $1 \
             ORDER BY created_at, account, top_up_id LIMIT 1"
        ),
        &[&payment_intent],
    )?
    .first()
    .map(|r| rows::top_up_row(r))
    .transpose()
}

pub(super) fn purchase(
    c: &mut dyn Run,
    account: &AccountId,
    purchase_id: &PurchaseId,
) -> Result<Option<PurchaseRecord>> {
    c.rows(
        &format!(
            "SELECT {PURCHASE_COLS}, {TAKEN_COLS} FROM purchases \
             WHERE account = $1 AND purchase_id = $2"
        ),
        &[&account.as_str(), &purchase_id.as_str()],
    )?
    .first()
    .map(|r| PurchaseCols::read(r)?.into_record())
    .transpose()
}

pub(super) fn refund(
    c: &mut dyn Run,
    account: &AccountId,
    refund_id: &PurchaseId,
) -> Result<Option<RefundRecord>> {
    c.rows(
        &format!("SELECT {REFUND_COLS} FROM refunds WHERE account = $1 AND refund_id = $2"),
        &[&account.as_str(), &refund_id.as_str()],
    )?
    .first()
    .map(|r| rows::refund_row(r))
    .transpose()
}

/// `(account, id)` keys as two arrays.
fn arrays(keys: &BTreeSet<(&AccountId, &PurchaseId)>) -> (Vec<String>, Vec<String>) {
    keys.iter()
        .map(|(a, p)| (a.as_str().to_string(), p.as_str().to_string()))
        .unzip()
}

/// Loads what `keys` name into the batch (see [`crate::Tx::load_payments`]): one query per
/// kind of row named, each set-based.
pub(super) fn load(c: &mut dyn Run, keys: &PaymentKeys, s: &mut BatchState) -> Result<()> {
    let top_ups: BTreeSet<(&AccountId, &PurchaseId)> =
        keys.top_ups.iter().map(|(a, p)| (a, p)).collect();
    if !top_ups.is_empty() {
        let (accounts, ids) = arrays(&top_ups);
        for r in c.rows(
            &format!(
                "SELECT {TOP_UP_COLS} FROM top_ups WHERE (account, top_up_id) IN \
                 (SELECT * FROM unnest($1::text[], $2::text[]))"
            ),
            &[&accounts, &ids],
        )? {
            let t = rows::top_up_row(&r)?;
            s.top_ups
                .insert((t.account.clone(), t.top_up_id.clone()), t);
        }
        for r in c.rows(
            &format!(
                "SELECT {DISPUTE_COLS} FROM disputes WHERE (account, top_up_id) IN \
                 (SELECT * FROM unnest($1::text[], $2::text[]))"
            ),
            &[&accounts, &ids],
        )? {
            let d = rows::dispute_row(&r)?;
            s.disputes
                .insert((d.account.clone(), d.dispute_id.clone()), d);
        }
    }
    // A top-up's purchase (if it was paid), and the purchases named.
    let purchases: BTreeSet<(&AccountId, &PurchaseId)> = top_ups
        .iter()
        .copied()
        .chain(keys.purchases.iter().map(|(a, p)| (a, p)))
        .collect();
    if !purchases.is_empty() {
        let (accounts, ids) = arrays(&purchases);
        for r in c.rows(
            &format!(
                "SELECT {PURCHASE_COLS}, {TAKEN_COLS} FROM purchases \
                 WHERE (account, purchase_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
            ),
            &[&accounts, &ids],
        )? {
            let p = PurchaseCols::read(&r)?.into_record()?;
            s.purchases
                .insert((p.account.clone(), p.purchase_id.clone()), p);
        }
    }
    let refunds: BTreeSet<(&AccountId, &PurchaseId)> =
        keys.refunds.iter().map(|(a, p)| (a, p)).collect();
    if !refunds.is_empty() {
        let (accounts, ids) = arrays(&refunds);
        for r in c.rows(
            &format!(
                "SELECT {REFUND_COLS} FROM refunds WHERE (account, refund_id) IN \
                 (SELECT * FROM unnest($1::text[], $2::text[]))"
            ),
            &[&accounts, &ids],
        )? {
            let r = rows::refund_row(&r)?;
            s.refunds
                .insert((r.account.clone(), r.refund_id.clone()), r);
        }
    }
    if !keys.events.is_empty() {
        for r in c.rows(
            "SELECT event_id FROM payment_events WHERE event_id = ANY($1)",
            &[&keys.events],
        )? {
            s.provider_events.insert(r.try_get(0)?);
        }
    }
    Ok(())
}

fn col<R, T>(rows: &[R], f: impl Fn(&R) -> T) -> Vec<T> {
    rows.iter().map(f).collect()
}

/// The parts of the batch's statement that write its payment rows: the top-ups and disputes
/// it created or changed (upserted whole), the provider events it applied and the refunds it
/// made; none for a batch without them. (What it took back of purchases is written with
/// their lots, see `persist::purchases`: one statement may not update a row twice.)
pub(super) fn parts(a: &mut Args, s: &BatchState) -> Result<Vec<String>> {
    let mut parts = Vec::new();
    if !s.dirty_top_ups.is_empty() {
        let t = s
            .dirty_top_ups
            .iter()
            .map(|k| dirty(&s.top_ups, k, "top-up").map(TopUpCols::of))
            .collect::<Result<Vec<_>>>()?;
        parts.push(format!(
            "INSERT INTO top_ups ({TOP_UP_COLS}) SELECT * FROM unnest({}, {}, {}, {}, {}, {}, \
             {}, {}, {}, {}, {}, {}) \
             ON CONFLICT (account, top_up_id) DO UPDATE SET kind = excluded.kind, \
             amount_nanos = excluded.amount_nanos, status = excluded.status, \
             updated_at = excluded.updated_at, checkout_session = excluded.checkout_session, \
             checkout_url = excluded.checkout_url, payment_intent = excluded.payment_intent, \
             provider_refunded_nanos = excluded.provider_refunded_nanos, \
             failure = excluded.failure",
            a.add(col(&t, |r| r.account.clone()), "text[]"),
            a.add(col(&t, |r| r.top_up_id.clone()), "text[]"),
            a.add(col(&t, |r| r.kind.to_string()), "text[]"),
            a.add(col(&t, |r| r.amount), "bigint[]"),
            a.add(col(&t, |r| r.status.to_string()), "text[]"),
            a.add(col(&t, |r| r.created_at), "bigint[]"),
            a.add(col(&t, |r| r.updated_at), "bigint[]"),
            a.add(col(&t, |r| r.checkout_session.clone()), "text[]"),
            a.add(col(&t, |r| r.checkout_url.clone()), "text[]"),
            a.add(col(&t, |r| r.payment_intent.clone()), "text[]"),
            a.add(col(&t, |r| r.provider_refunded), "bigint[]"),
            a.add(col(&t, |r| r.failure.clone()), "text[]"),
        ));
    }
    if !s.dirty_disputes.is_empty() {
        let d = s
            .dirty_disputes
            .iter()
            .map(|k| dirty(&s.disputes, k, "dispute").map(DisputeCols::of))
            .collect::<Result<Vec<_>>>()?;
        parts.push(format!(
            "INSERT INTO disputes ({DISPUTE_COLS}) SELECT * FROM unnest({}, {}, {}, {}, {}, {}, \
             {}, {}, {}) \
             ON CONFLICT (account, dispute_id) DO UPDATE SET top_up_id = excluded.top_up_id, \
             amount_nanos = excluded.amount_nanos, status = excluded.status, \
             taken_nanos = excluded.taken_nanos, locking_epoch = excluded.locking_epoch, \
             updated_at = excluded.updated_at",
            a.add(col(&d, |r| r.account.clone()), "text[]"),
            a.add(col(&d, |r| r.dispute_id.clone()), "text[]"),
            a.add(col(&d, |r| r.top_up_id.clone()), "text[]"),
            a.add(col(&d, |r| r.amount), "bigint[]"),
            a.add(col(&d, |r| r.status.to_string()), "text[]"),
            a.add(col(&d, |r| r.taken), "bigint[]"),
            a.add(col(&d, |r| r.locking_epoch), "bigint[]"),
            a.add(col(&d, |r| r.created_at), "bigint[]"),
            a.add(col(&d, |r| r.updated_at), "bigint[]"),
        ));
    }
    if !s.new_provider_events.is_empty() {
        let e = &s.new_provider_events;
        parts.push(format!(
            "INSERT INTO payment_events (event_id, account, event_type, applied_at) \
             SELECT x.event_id, x.account, x.event_type, {} \
             FROM unnest({}, {}, {}) AS x(event_id, account, event_type)",
            a.add(s.now.0, "bigint"),
            a.add(col(e, |(_, e)| e.event_id.clone()), "text[]"),
            a.add(col(e, |(a, _)| a.as_str().to_string()), "text[]"),
            a.add(col(e, |(_, e)| e.event_type.clone()), "text[]"),
        ));
    }
    if !s.new_refunds.is_empty() {
        let r: Vec<RefundCols> = s.new_refunds.iter().map(RefundCols::of).collect();
        parts.push(format!(
            "INSERT INTO refunds ({REFUND_COLS}) SELECT * FROM unnest({}, {}, {}, {}, {}, {}, \
             {}, {})",
            a.add(col(&r, |r| r.account.clone()), "text[]"),
            a.add(col(&r, |r| r.refund_id.clone()), "text[]"),
            a.add(col(&r, |r| r.purchase_id.clone()), "text[]"),
            a.add(col(&r, |r| r.amount), "bigint[]"),
            a.add(col(&r, |r| r.taken), "bigint[]"),
            a.add(col(&r, |r| r.provider_reference.clone()), "text[]"),
            a.add(col(&r, |r| r.created_at), "bigint[]"),
            a.add(col(&r, |r| r.balance_after), "bigint[]"),
        ));
    }
    Ok(parts)
}
