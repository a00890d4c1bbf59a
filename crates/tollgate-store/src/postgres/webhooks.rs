//! Webhooks on PostgreSQL (see [`crate::webhooks`]): the outbox a batch writes (two statements
//! after the batch's, only when it has events), the subscriptions, claims (`FOR UPDATE SKIP
//! LOCKED`: servers claiming at once take different rows, never wait for each other) and
//! attempts written by the writer, and their reads. The event counter row's lock orders the
//! outbox with subscription changes and redeliveries ([`lock_subscriptions`]).

use super::Run;
use crate::webhooks::{self as w, EventCols, DELETED_WEBHOOK, OPERATORS, WEBHOOK_COLS};
use crate::{
    AttemptRecord, ClaimedDelivery, DeliveriesQuery, DeliveryRecord, DeliveryResult, Result,
    StoreError, StoredEvent, WebhookRecord,
};
use tollgate_core::Timestamp;

fn p(i: usize, ty: &str) -> String {
    format!("${i}::{ty}")
}

fn col<R, T>(rows: &[R], f: impl Fn(&R) -> T) -> Vec<T> {
    rows.iter().map(f).collect()
}

/// Takes the event counter row's lock, held until the db transaction ends: a batch with
/// events takes it (advancing the counter), and so do the subscription changes (a webhook
/// created or deleted) and redeliveries, before they read or write anything, so each waits
/// for the others' commits.
fn lock_subscriptions(t: &mut dyn Run) -> Result<()> {
    t.rows("SELECT last_seq FROM webhook_event_counter FOR UPDATE", &[])?;
    Ok(())
}

/// The batch's events, numbered from the counter row, and a delivery of each to every live
/// webhook that wants its type, due at once. Two statements: the counter is advanced first
/// (its lock stays held until the batch commits, so numbers increase in commit order across
/// servers), then the events and their fan-out are written by a statement that starts once the
/// lock is held. At READ COMMITTED a statement reads what was committed when it started, so
/// the fan-out sees every subscription change committed before the lock was granted, and a
/// later change waits for this commit: an event reaches exactly the webhooks live when it
/// commits.
pub(super) fn outbox(t: &mut dyn Run, events: &[EventCols]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let n = i64::try_from(events.len()).unwrap_or(i64::MAX);
    let last: i64 = t
        .rows(
            "UPDATE webhook_event_counter SET last_seq = last_seq + $1 RETURNING last_seq",
            &[&n],
        )?
        .first()
        .ok_or_else(|| StoreError::Corrupt("no webhook event counter row".into()))?
        .try_get(0)?;
    t.exec(
        &format!(
            "WITH e AS (INSERT INTO webhook_events (seq, account, event_type, created_at, data) \
           SELECT $5::bigint + x.n, x.account, x.event_type, x.at, x.data \
           FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[]) WITH ORDINALITY \
             AS x(account, event_type, at, data, n) \
           RETURNING seq, account, event_type, created_at) \
         INSERT INTO webhook_deliveries (webhook_id, event_seq, account, status, attempts, \
           tries, queued_at, next_attempt_at) \
         SELECT DISTINCT t.webhook_id, e.seq, e.account, 'pending', 0, 0, e.created_at, \
           e.created_at \
         FROM e JOIN webhook_event_types t ON {}",
            crate::webhooks::fans_out_to("t.event_type", "e.event_type")
        ),
        &[
            &col(events, |e| e.account.clone()),
            &col(events, |e| e.event_type),
            &col(events, |e| e.created_at),
            &col(events, |e| e.data.clone()),
            &(last - n),
        ],
    )?;
    Ok(())
}

pub(super) fn insert_webhook(t: &mut dyn Run, hook: &WebhookRecord) -> Result<()> {
    lock_subscriptions(t)?;
    let n = t.exec(
        &format!(
            "INSERT INTO webhooks ({WEBHOOK_COLS}) VALUES ($1, $2, $3, $4, $5, $6, NULL) \
             ON CONFLICT (webhook_id) DO NOTHING"
        ),
        &[
            &hook.webhook_id,
            &hook.url,
            &w::events_text(&hook.events),
            &hook.description,
            &hook.secret,
            &hook.created_at.0,
        ],
    )?;
    if n == 0 {
        return Err(StoreError::AlreadyExists(format!(
            "webhook {}",
            hook.webhook_id
        )));
    }
    t.exec(
        "INSERT INTO webhook_event_types (event_type, webhook_id) \
         SELECT unnest($1::text[]), $2",
        &[&hook.events.names(), &hook.webhook_id],
    )?;
    Ok(())
}

pub(super) fn ensure_provider(t: &mut dyn Run, now: Timestamp) -> Result<bool> {
    lock_subscriptions(t)?;
    let n = t.exec(&w::provider_webhook_sql(p), &[&now.0])?;
    t.exec(&w::provider_types_sql(), &[])?;
    Ok(n > 0)
}

pub(super) fn delete_webhook(t: &mut dyn Run, webhook_id: &str, now: Timestamp) -> Result<bool> {
    lock_subscriptions(t)?;
    let n = t.exec(
        &format!(
            "UPDATE webhooks SET deleted_at = $2 WHERE webhook_id = $1 AND deleted_at IS NULL \
             AND {OPERATORS}"
        ),
        &[&webhook_id, &now.0],
    )?;
    if n == 0 {
        return Ok(false);
    }
    t.exec(
        "DELETE FROM webhook_event_types WHERE webhook_id = $1",
        &[&webhook_id],
    )?;
    t.exec(
        "UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL, \
         lease_until = NULL, last_error = $2 WHERE webhook_id = $1 AND status = 'pending'",
        &[&webhook_id, &DELETED_WEBHOOK],
    )?;
    Ok(true)
}

pub(super) fn claim(
    t: &mut dyn Run,
    now: Timestamp,
    lease_until: Timestamp,
    limit: usize,
    per_webhook: usize,
) -> Result<Vec<ClaimedDelivery>> {
    let sql = format!(
        "WITH due AS ({}), \
         leased AS (UPDATE webhook_deliveries d SET lease_until = $4 FROM due \
           WHERE d.webhook_id = due.webhook_id AND d.event_seq = due.event_seq \
           RETURNING d.webhook_id, d.event_seq, d.tries, d.queued_at, d.next_attempt_at) \
         SELECT w.url, w.secret, e.account, e.created_at, e.data, w.kind, l.webhook_id, \
           l.event_seq, l.tries, l.queued_at \
         FROM leased l JOIN webhooks w ON w.webhook_id = l.webhook_id \
         JOIN webhook_events e ON e.seq = l.event_seq \
         ORDER BY l.next_attempt_at, l.event_seq",
        w::due_sql(p, " FOR UPDATE OF d SKIP LOCKED")
    );
    t.rows(
        &sql,
        &[
            &now.0,
            &i64::try_from(limit).unwrap_or(i64::MAX),
            &i64::try_from(per_webhook).unwrap_or(i64::MAX),
            &lease_until.0,
        ],
    )?
    .iter()
    .map(|r| {
        w::claimed_row(
            r,
            r.try_get(6)?,
            r.try_get(7)?,
            r.try_get(8)?,
            r.try_get(9)?,
            lease_until,
        )
    })
    .collect()
}

pub(super) fn record(t: &mut dyn Run, results: &[DeliveryResult]) -> Result<usize> {
    if results.is_empty() {
        return Ok(0);
    }
    let next: Vec<_> = results
        .iter()
        .map(|r| w::next_cols(r.next, r.attempt.at))
        .collect();
    let n = t.exec(
        "WITH x AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], \
           $5::bigint[], $6::bigint[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], \
           $11::bigint[]) \
           AS x(webhook_id, seq, lease, status, next, code, error, delivered, at, duration, \
             queued)), \
         u AS (UPDATE webhook_deliveries d SET attempts = d.attempts + 1, \
           tries = CASE WHEN d.queued_at <> x.queued THEN d.tries \
             WHEN x.status = 'pending' THEN d.tries + 1 ELSE 0 END, \
           status = CASE WHEN d.queued_at = x.queued THEN x.status ELSE d.status END, \
           next_attempt_at = CASE WHEN d.queued_at = x.queued THEN x.next \
             ELSE d.next_attempt_at END, \
           lease_until = NULL, \
           last_status_code = x.code, last_error = x.error, \
           delivered_at = COALESCE(x.delivered, d.delivered_at) \
           FROM x WHERE d.webhook_id = x.webhook_id AND d.event_seq = x.seq \
           AND d.lease_until = x.lease AND d.status = 'pending' \
           RETURNING d.webhook_id, d.event_seq, d.attempts) \
         INSERT INTO webhook_attempts (webhook_id, event_seq, n, at, status_code, error, \
           duration_ms) \
         SELECT u.webhook_id, u.event_seq, u.attempts, x.at, x.code, x.error, x.duration \
         FROM u JOIN x ON x.webhook_id = u.webhook_id AND x.seq = u.event_seq",
        &[
            &col(results, |r| r.webhook_id.clone()),
            &col(results, |r| r.event_seq),
            &col(results, |r| r.lease_until.0),
            &col(&next, |n| n.0),
            &col(&next, |n| n.1),
            &col(results, |r| r.attempt.status_code.map(i64::from)),
            &col(results, |r| r.attempt.error.clone()),
            &col(&next, |n| n.2),
            &col(results, |r| r.attempt.at.0),
            &col(results, |r| r.attempt.duration_ms),
            &col(results, |r| r.queued_at.0),
        ],
    )?;
    usize::try_from(n).map_err(|_| StoreError::Corrupt(format!("{n} attempts recorded")))
}

pub(super) fn redeliver(
    t: &mut dyn Run,
    webhook_id: &str,
    event_seq: i64,
    now: Timestamp,
) -> Result<bool> {
    lock_subscriptions(t)?;
    Ok(t.exec(&w::redeliver_sql(p), &[&webhook_id, &event_seq, &now.0])? > 0)
}

// ---------------------------------------------------------------------------------------------
// Reads

pub(super) fn webhooks(c: &mut dyn Run) -> Result<Vec<WebhookRecord>> {
    c.rows(
        &format!(
            "SELECT {WEBHOOK_COLS} FROM webhooks WHERE deleted_at IS NULL AND {OPERATORS} \
             ORDER BY created_at, webhook_id"
        ),
        &[],
    )?
    .iter()
    .map(|r| w::webhook_row(r))
    .collect()
}

pub(super) fn webhook(c: &mut dyn Run, webhook_id: &str) -> Result<Option<WebhookRecord>> {
    c.rows(
        &format!("SELECT {WEBHOOK_COLS} FROM webhooks WHERE webhook_id = $1 AND {OPERATORS}"),
        &[&webhook_id],
    )?
    .first()
    .map(|r| w::webhook_row(r))
    .transpose()
}

pub(super) fn deliveries(c: &mut dyn Run, q: &DeliveriesQuery) -> Result<Vec<DeliveryRecord>> {
    let (hook, before, limit) = w::deliveries_args(q);
    c.rows(&w::deliveries_sql(p), &[&hook, &before, &limit])?
        .iter()
        .map(|r| w::delivery_row(r))
        .collect()
}

pub(super) fn delivery(
    c: &mut dyn Run,
    webhook_id: &str,
    event_seq: i64,
) -> Result<Option<(DeliveryRecord, Vec<AttemptRecord>)>> {
    let Some(found) = c
        .rows(&w::delivery_sql(p), &[&webhook_id, &event_seq])?
        .first()
        .map(|r| w::delivery_row(r))
        .transpose()?
    else {
        return Ok(None);
    };
    let attempts = c
        .rows(&w::attempts_sql(p), &[&webhook_id, &event_seq])?
        .iter()
        .map(|r| w::attempt_row(r))
        .collect::<Result<_>>()?;
    Ok(Some((found, attempts)))
}

pub(super) fn events(c: &mut dyn Run, after: i64, limit: usize) -> Result<Vec<StoredEvent>> {
    c.rows(
        &format!(
            "SELECT {} FROM webhook_events WHERE seq > $1 ORDER BY seq LIMIT $2",
            w::EVENT_COLS
        ),
        &[&after, &i64::try_from(limit).unwrap_or(i64::MAX)],
    )?
    .iter()
    .map(|r| w::event_row(r))
    .collect()
}
