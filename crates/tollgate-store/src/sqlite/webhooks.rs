//! Webhooks on SQLite (see [`crate::webhooks`]): the outbox written by a batch, the
//! subscriptions, claims and attempts written by the writer, and their reads.

use crate::webhooks::{self as w, EventCols, DELETED_WEBHOOK, OPERATORS, WEBHOOK_COLS};
use crate::{
    AttemptRecord, ClaimedDelivery, DeliveriesQuery, DeliveryRecord, DeliveryResult, Result,
    StoreError, StoredEvent, WebhookRecord,
};
use rusqlite::{params, Connection, OptionalExtension};
use tollgate_core::Timestamp;

fn p(i: usize, _: &str) -> String {
    format!("?{i}")
}

/// The batch's events, each numbered by its row id (the file has one writer, so numbers
/// increase in commit order), and a delivery of each to every live webhook that wants its
/// type, due at once.
pub(super) fn outbox(c: &Connection, events: &[EventCols]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut insert = c.prepare_cached(
        "INSERT INTO webhook_events (account, event_type, created_at, data) \
         VALUES (?1, ?2, ?3, ?4) RETURNING seq",
    )?;
    let mut fan_out = c.prepare_cached(&format!(
        "INSERT INTO webhook_deliveries (webhook_id, event_seq, account, status, attempts, \
         tries, queued_at, next_attempt_at) \
         SELECT DISTINCT webhook_id, ?1, ?2, 'pending', 0, 0, ?4, ?4 FROM webhook_event_types \
         WHERE {}",
        crate::webhooks::fans_out_to("event_type", "?3")
    ))?;
    for e in events {
        let seq: i64 = insert.query_row(
            params![e.account, e.event_type, e.created_at, e.data],
            |r| r.get(0),
        )?;
        fan_out.execute(params![seq, e.account, e.event_type, e.created_at])?;
    }
    Ok(())
}

pub(super) fn insert_webhook(c: &Connection, hook: &WebhookRecord) -> Result<()> {
    let n = c.execute(
        &format!(
            "INSERT INTO webhooks ({WEBHOOK_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL) \
             ON CONFLICT (webhook_id) DO NOTHING"
        ),
        params![
            hook.webhook_id,
            hook.url,
            w::events_text(&hook.events),
            hook.description,
            hook.secret,
            hook.created_at.0
        ],
    )?;
    if n == 0 {
        return Err(StoreError::AlreadyExists(format!(
            "webhook {}",
            hook.webhook_id
        )));
    }
    let mut types = c.prepare_cached(
        "INSERT INTO webhook_event_types (event_type, webhook_id) VALUES (?1, ?2)",
    )?;
    for name in hook.events.names() {
        types.execute(params![name, hook.webhook_id])?;
    }
    Ok(())
}

pub(super) fn ensure_provider(c: &Connection, now: Timestamp) -> Result<bool> {
    let n = c.execute(&w::provider_webhook_sql(p), [now.0])?;
    c.execute(&w::provider_types_sql(), [])?;
    Ok(n > 0)
}

pub(super) fn delete_webhook(c: &Connection, webhook_id: &str, now: Timestamp) -> Result<bool> {
    let n = c.execute(
        &format!(
            "UPDATE webhooks SET deleted_at = ?2 WHERE webhook_id = ?1 AND deleted_at IS NULL \
             AND {OPERATORS}"
        ),
        params![webhook_id, now.0],
    )?;
    if n == 0 {
        return Ok(false);
    }
    c.execute(
        "DELETE FROM webhook_event_types WHERE webhook_id = ?1",
        [webhook_id],
    )?;
    c.execute(
        "UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL, \
         lease_until = NULL, last_error = ?2 WHERE webhook_id = ?1 AND status = 'pending'",
        params![webhook_id, DELETED_WEBHOOK],
    )?;
    Ok(true)
}

pub(super) fn claim(
    c: &Connection,
    now: Timestamp,
    lease_until: Timestamp,
    limit: usize,
    per_webhook: usize,
) -> Result<Vec<ClaimedDelivery>> {
    let mut due = c.prepare_cached(&w::due_sql(p, ""))?;
    let found = due
        .query_map(params![now.0, limit as i64, per_webhook as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut lease = c.prepare_cached(
        "UPDATE webhook_deliveries SET lease_until = ?3 WHERE webhook_id = ?1 AND event_seq = ?2",
    )?;
    let mut what = c.prepare_cached(&w::claimed_sql(p))?;
    let mut out = Vec::with_capacity(found.len());
    for (webhook_id, seq, tries, queued_at) in found {
        lease.execute(params![webhook_id, seq, lease_until.0])?;
        let mut rows = what.query(params![webhook_id, seq])?;
        let r = rows
            .next()?
            .ok_or_else(|| StoreError::Corrupt(format!("delivery of event {seq} has no event")))?;
        out.push(w::claimed_row(
            r,
            webhook_id.clone(),
            seq,
            tries,
            queued_at,
            lease_until,
        )?);
    }
    Ok(out)
}

pub(super) fn record(c: &Connection, results: &[DeliveryResult]) -> Result<usize> {
    let mut update = c.prepare_cached(&w::record_sql(p))?;
    let mut attempt = c.prepare_cached(
        "INSERT INTO webhook_attempts (webhook_id, event_seq, n, at, status_code, error, \
         duration_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let mut recorded = 0;
    for r in results {
        let a = &r.attempt;
        let (status, next, delivered) = w::next_cols(r.next, a.at);
        let n: Option<i64> = update
            .query_row(
                params![
                    r.webhook_id,
                    r.event_seq,
                    r.lease_until.0,
                    status,
                    next,
                    a.status_code,
                    a.error,
                    delivered,
                    r.queued_at.0
                ],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(n) = n {
            attempt.execute(params![
                r.webhook_id,
                r.event_seq,
                n,
                a.at.0,
                a.status_code,
                a.error,
                a.duration_ms
            ])?;
            recorded += 1;
        }
    }
    Ok(recorded)
}

pub(super) fn redeliver(
    c: &Connection,
    webhook_id: &str,
    event_seq: i64,
    now: Timestamp,
) -> Result<bool> {
    let n = c.execute(&w::redeliver_sql(p), params![webhook_id, event_seq, now.0])?;
    Ok(n > 0)
}

// ---------------------------------------------------------------------------------------------
// Reads

pub(super) fn webhooks(c: &Connection) -> Result<Vec<WebhookRecord>> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {WEBHOOK_COLS} FROM webhooks WHERE deleted_at IS NULL AND {OPERATORS} \
         ORDER BY created_at, webhook_id"
    ))?;
    let mut rows = st.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(w::webhook_row(r)?);
    }
    Ok(out)
}

pub(super) fn webhook(c: &Connection, webhook_id: &str) -> Result<Option<WebhookRecord>> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {WEBHOOK_COLS} FROM webhooks WHERE webhook_id = ?1 AND {OPERATORS}"
    ))?;
    let mut rows = st.query([webhook_id])?;
    rows.next()?.map(|r| w::webhook_row(r)).transpose()
}

pub(super) fn deliveries(c: &Connection, q: &DeliveriesQuery) -> Result<Vec<DeliveryRecord>> {
    let (hook, before, limit) = w::deliveries_args(q);
    let mut st = c.prepare_cached(&w::deliveries_sql(p))?;
    let mut rows = st.query(params![hook, before, limit])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(w::delivery_row(r)?);
    }
    Ok(out)
}

pub(super) fn delivery(
    c: &Connection,
    webhook_id: &str,
    event_seq: i64,
) -> Result<Option<(DeliveryRecord, Vec<AttemptRecord>)>> {
    let mut st = c.prepare_cached(&w::delivery_sql(p))?;
    let mut rows = st.query(params![webhook_id, event_seq])?;
    let Some(found) = rows.next()?.map(|r| w::delivery_row(r)).transpose()? else {
        return Ok(None);
    };
    let mut st = c.prepare_cached(&w::attempts_sql(p))?;
    let mut rows = st.query(params![webhook_id, event_seq])?;
    let mut attempts = Vec::new();
    while let Some(r) = rows.next()? {
        attempts.push(w::attempt_row(r)?);
    }
    Ok(Some((found, attempts)))
}

pub(super) fn events(c: &Connection, after: i64, limit: usize) -> Result<Vec<StoredEvent>> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {} FROM webhook_events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        w::EVENT_COLS
    ))?;
    let mut rows = st.query(params![after, limit as i64])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(w::event_row(r)?);
    }
    Ok(out)
}
