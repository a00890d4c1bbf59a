//! Payments on SQLite: the rows a batch's payment operations name, read by the writer's db
//! transaction and by readers alike, and the batch's payment rows written (see
//! [`crate::Tx::load_payments`], [`crate::Tx::persist`]).

use crate::rows::{
    self, dirty, DisputeCols, PurchaseCols, RefundCols, TopUpCols, DISPUTE_COLS, PURCHASE_COLS,
    REFUND_COLS, TAKEN_COLS, TOP_UP_COLS,
};
use crate::{PaymentKeys, Result, StoreError};
use rusqlite::{params, Connection};
use std::collections::HashSet;
use tollgate_core::ids::{AccountId, PurchaseId};
use tollgate_core::machine::{BatchState, PurchaseRecord};
use tollgate_core::payments::{RefundRecord, TopUpRecord};

pub(super) fn top_up(
    c: &Connection,
    account: &AccountId,
    top_up_id: &PurchaseId,
) -> Result<Option<TopUpRecord>> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {TOP_UP_COLS} FROM top_ups WHERE account = ?1 AND top_up_id = ?2"
    ))?;
    let mut rows = st.query(params![account.as_str(), top_up_id.as_str()])?;
    rows.next()?.map(|r| rows::top_up_row(r)).transpose()
}

/// The top-up paid by `payment_intent` (the first made, were there two).
pub(super) fn top_up_by_payment_intent(
    c: &Connection,
    payment_intent: &str,
) -> Result<Option<TopUpRecord>> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {TOP_UP_COLS} FROM top_ups WHERE payment_intent = ?1 \
         ORDER BY created_at, account, top_up_id LIMIT 1"
    ))?;
    let mut rows = st.query([payment_intent])?;
    rows.next()?.map(|r| rows::top_up_row(r)).transpose()
}

pub(super) fn purchase(
    c: &Connection,
    account: &AccountId,
    purchase_id: &PurchaseId,
) -> Result<Option<PurchaseRecord>> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {PURCHASE_COLS}, {TAKEN_COLS} FROM purchases \
         WHERE account = ?1 AND purchase_id = ?2"
    ))?;
    let mut rows = st.query(params![account.as_str(), purchase_id.as_str()])?;
    rows.next()?
        .map(|r| PurchaseCols::read(r)?.into_record())
        .transpose()
}

pub(super) fn refund(
    c: &Connection,
    account: &AccountId,
    refund_id: &PurchaseId,
) -> Result<Option<RefundRecord>> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {REFUND_COLS} FROM refunds WHERE account = ?1 AND refund_id = ?2"
    ))?;
    let mut rows = st.query(params![account.as_str(), refund_id.as_str()])?;
    rows.next()?.map(|r| rows::refund_row(r)).transpose()
}

/// Loads what `keys` name into the batch (see [`crate::Tx::load_payments`]).
pub(super) fn load(c: &Connection, keys: &PaymentKeys, s: &mut BatchState) -> Result<()> {
    let mut disputes = c.prepare_cached(&format!(
        "SELECT {DISPUTE_COLS} FROM disputes WHERE account = ?1 AND top_up_id = ?2"
    ))?;
    let mut seen: HashSet<(&AccountId, &PurchaseId)> = HashSet::new();
    for (account, id) in &keys.top_ups {
        if !seen.insert((account, id)) {
            continue;
        }
        let key = (account.clone(), id.clone());
        if let Some(t) = top_up(c, account, id)? {
            s.top_ups.insert(key.clone(), t);
        }
        if let Some(p) = purchase(c, account, id)? {
            s.purchases.insert(key, p);
        }
        let mut rows = disputes.query(params![account.as_str(), id.as_str()])?;
        while let Some(r) = rows.next()? {
            let d = rows::dispute_row(r)?;
            s.disputes
                .insert((d.account.clone(), d.dispute_id.clone()), d);
        }
    }
    for (account, id) in &keys.purchases {
        if let Some(p) = purchase(c, account, id)? {
            s.purchases.insert((account.clone(), id.clone()), p);
        }
    }
    for (account, id) in &keys.refunds {
        if let Some(r) = refund(c, account, id)? {
            s.refunds.insert((account.clone(), id.clone()), r);
        }
    }
    if !keys.events.is_empty() {
        // One statement: the ids as a JSON array, each looked up in the key.
        let list = serde_json::to_string(&keys.events)
            .map_err(|e| StoreError::database(e.to_string(), e))?;
        let mut st = c.prepare_cached(
            "SELECT event_id FROM payment_events \
             WHERE event_id IN (SELECT value FROM json_each(?1))",
        )?;
        let mut rows = st.query([list])?;
        while let Some(r) = rows.next()? {
            s.provider_events.insert(r.get(0)?);
        }
    }
    Ok(())
}

/// The batch's payment rows: the top-ups and disputes it created or changed (upserted whole),
/// what it took back of purchases that existed before it (a new one is inserted as the batch
/// left it), the provider events it applied and the refunds it made.
pub(super) fn persist(c: &Connection, s: &BatchState) -> Result<()> {
    if !s.dirty_top_ups.is_empty() {
        let mut st = c.prepare_cached(&format!(
            "INSERT INTO top_ups ({TOP_UP_COLS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
             ON CONFLICT (account, top_up_id) DO UPDATE SET kind = excluded.kind, \
             amount_nanos = excluded.amount_nanos, status = excluded.status, \
             updated_at = excluded.updated_at, checkout_session = excluded.checkout_session, \
             checkout_url = excluded.checkout_url, payment_intent = excluded.payment_intent, \
             provider_refunded_nanos = excluded.provider_refunded_nanos, \
             failure = excluded.failure"
        ))?;
        for key in &s.dirty_top_ups {
            let t = TopUpCols::of(dirty(&s.top_ups, key, "top-up")?);
            st.execute(params![
                t.account,
                t.top_up_id,
                t.kind,
                t.amount,
                t.status,
                t.created_at,
                t.updated_at,
                t.checkout_session,
                t.checkout_url,
                t.payment_intent,
                t.provider_refunded,
                t.failure,
            ])?;
        }
    }
    if !s.dirty_disputes.is_empty() {
        let mut st = c.prepare_cached(&format!(
            "INSERT INTO disputes ({DISPUTE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
             ON CONFLICT (account, dispute_id) DO UPDATE SET top_up_id = excluded.top_up_id, \
             amount_nanos = excluded.amount_nanos, status = excluded.status, \
             taken_nanos = excluded.taken_nanos, locking_epoch = excluded.locking_epoch, \
             updated_at = excluded.updated_at"
        ))?;
        for key in &s.dirty_disputes {
            let d = DisputeCols::of(dirty(&s.disputes, key, "dispute")?);
            st.execute(params![
                d.account,
                d.dispute_id,
                d.top_up_id,
                d.amount,
                d.status,
                d.taken,
                d.locking_epoch,
                d.created_at,
                d.updated_at,
            ])?;
        }
    }
    if !s.dirty_purchases.is_empty() {
        let mut st = c.prepare_cached(
            "UPDATE purchases SET refunded_nanos = ?3, disputed_nanos = ?4 \
             WHERE account = ?1 AND purchase_id = ?2",
        )?;
        for key in &s.dirty_purchases {
            let p = dirty(&s.purchases, key, "purchase")?;
            st.execute(params![
                key.0.as_str(),
                key.1.as_str(),
                p.refunded.0,
                p.disputed.0
            ])?;
        }
    }
    if !s.new_provider_events.is_empty() {
        let mut st = c.prepare_cached(
            "INSERT INTO payment_events (event_id, account, event_type, applied_at) \
             VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (account, e) in &s.new_provider_events {
            st.execute(params![e.event_id, account.as_str(), e.event_type, s.now.0])?;
        }
    }
    if !s.new_refunds.is_empty() {
        let mut st = c.prepare_cached(&format!(
            "INSERT INTO refunds ({REFUND_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
        ))?;
        for r in s.new_refunds.iter().map(RefundCols::of) {
            st.execute(params![
                r.account,
                r.refund_id,
                r.purchase_id,
                r.amount,
                r.taken,
                r.provider_reference,
                r.created_at,
                r.balance_after,
            ])?;
        }
    }
    Ok(())
}
