//! Webhooks: the subscriptions, the outbox of events a batch writes in its own commit, and the
//! deliveries of each event to each webhook that wants it, as typed values; and what both
//! stores share of their SQL and rows.
//!
//! A batch's events ([`BatchState::events`]) become `webhook_events` rows numbered in commit
//! order, and in the same statements a `webhook_deliveries` row per live webhook subscribed to
//! the event's type (or to `*`), due at once: the fan-out is SQL over `webhook_event_types`, so
//! it is exact whichever server wrote the subscription. A dispatcher claims due deliveries
//! ([`crate::Tx::claim_deliveries`]: a lease, so no other claims them while it sends; fairly
//! across webhooks, so one receiver's backlog never holds the others back), posts them, and
//! records each attempt ([`crate::Tx::record_deliveries`]).
//!
//! Beside the operator's webhooks (kind [`WebhookKind::Http`]) is one row of the payment
//! provider's ([`PROVIDER_WEBHOOK_ID`], kind [`WebhookKind::Provider`], created by
//! [`crate::Tx::ensure_provider_webhook`]): subscribed to `top_up.started`, its deliveries are
//! the charges of auto top-ups, made through the provider's API by the dispatcher, so a charge
//! decided in a commit leaves the write path durably, with the outbox's leases, retries and
//! records. It is not the operator's: the listings, `webhook`, deletes and redeliveries never
//! see it; claims include it, and say its kind.

use crate::rows::Get;
use crate::{corrupt, invoice_number, parse_id, InvoiceRecord, Result, StoreError, INVOICE_PREFIX};
use tollgate_core::events::{EventData, EventType};
use tollgate_core::ids::AccountId;
use tollgate_core::machine::BatchState;
use tollgate_core::Timestamp;

/// The id of the payment provider's subscription row.
pub const PROVIDER_WEBHOOK_ID: &str = "wh_payment_provider";
/// The id of the row that posts completed gateway requests to their `fal_webhook` (made by
/// the gateway's migration, subscribed to `request.completed`).
pub const FAL_WEBHOOK_ID: &str = "wh_fal_webhooks";

/// The fan-out's condition on a subscription's `event_type` (`t`) for an event of type `e`
/// (both SQL expressions): its own type, or `*` for a type anyone may subscribe to (internal
/// types go only to the row that names them).
pub(crate) fn fans_out_to(t: &str, e: &str) -> String {
    let internal = tollgate_core::events::EventType::INTERNAL
        .iter()
        .map(|t| format!("'{}'", t.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    format!("({t} = {e} OR ({t} = '*' AND {e} NOT IN ({internal})))")
}

/// What a subscription's deliveries are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WebhookKind {
    /// An operator's webhook: a signed POST to its URL.
    Http,
    /// The payment provider's row: each delivery (a `top_up.started`) is a charge made
    /// through the provider's API, its answer applied as a payment effect.
    Provider,
    /// The gateway's row ([`FAL_WEBHOOK_ID`]): each delivery (a `request.completed`) posts a
    /// gateway request's answer to the `fal_webhook` its caller gave, in fal's format.
    Fal,
}

impl WebhookKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookKind::Http => "http",
            WebhookKind::Provider => "provider",
            WebhookKind::Fal => "fal",
        }
    }

    fn parse(s: &str) -> Result<WebhookKind> {
        match s {
            "http" => Ok(WebhookKind::Http),
            "provider" => Ok(WebhookKind::Provider),
            "fal" => Ok(WebhookKind::Fal),
            other => Err(corrupt("webhook kind", other)),
        }
    }
}

/// Which event types a webhook receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookEvents {
    /// Every type (`["*"]`), those added later too.
    All,
    /// These types (at least one, each once, in the order given).
    Only(Vec<EventType>),
}

impl WebhookEvents {
    /// The stored form: `*` or the types' names.
    pub fn names(&self) -> Vec<&'static str> {
        match self {
            WebhookEvents::All => vec!["*"],
            WebhookEvents::Only(types) => types.iter().map(|t| t.as_str()).collect(),
        }
    }

    fn parse(text: &str) -> Result<WebhookEvents> {
        let names: Vec<String> = crate::json("webhook events", text)?;
        if names.iter().any(|n| n == "*") {
            return Ok(WebhookEvents::All);
        }
        names
            .iter()
            .map(|n| EventType::parse(n).ok_or_else(|| corrupt("webhook event type", n)))
            .collect::<Result<_>>()
            .map(WebhookEvents::Only)
    }
}

/// A webhook subscription. Its secret signs every delivery; the API shows it once.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookRecord {
    /// `wh_` and random hex.
    pub webhook_id: String,
    pub url: String,
    pub events: WebhookEvents,
    pub description: Option<String>,
    /// `whsec_` and random hex: the HMAC key of the signatures.
    pub secret: String,
    pub created_at: Timestamp,
    /// When it was deleted; a deleted webhook is sent nothing more.
    pub deleted_at: Option<Timestamp>,
}

/// Never prints the secret.
impl std::fmt::Debug for WebhookRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookRecord")
            .field("webhook_id", &self.webhook_id)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("description", &self.description)
            .field("created_at", &self.created_at)
            .field("deleted_at", &self.deleted_at)
            .finish_non_exhaustive()
    }
}

/// An event of the outbox, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// Unique, and increasing in commit order.
    pub seq: i64,
    pub account: AccountId,
    pub created_at: Timestamp,
    pub data: EventData,
}

impl StoredEvent {
    /// The event's id, `evt_<seq>`: receivers drop a delivery whose id they have seen.
    pub fn id(&self) -> String {
        event_id(self.seq)
    }
}

/// The id of the event numbered `seq`.
pub fn event_id(seq: i64) -> String {
    format!("evt_{seq}")
}

/// The number an event id (`evt_<seq>`) names, or a delivery id (`dlv_<seq>`, the delivery of
/// that event to a webhook); `None` when it is neither.
pub fn parse_event_id(prefix: &str, id: &str) -> Option<i64> {
    let digits = id.strip_prefix(prefix)?.strip_prefix('_')?;
    if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    /// Not acknowledged yet, and still tried.
    Pending,
    /// A 2xx acknowledged it.
    Delivered,
    /// Given up: not acknowledged within the retry window, or its webhook was deleted.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<DeliveryStatus> {
        match s {
            "pending" => Ok(DeliveryStatus::Pending),
            "delivered" => Ok(DeliveryStatus::Delivered),
            "failed" => Ok(DeliveryStatus::Failed),
            other => Err(corrupt("delivery status", other)),
        }
    }
}

/// One event to one webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub webhook_id: String,
    pub event_seq: i64,
    pub account: AccountId,
    pub event_type: EventType,
    /// When the event was recorded.
    pub event_at: Timestamp,
    pub status: DeliveryStatus,
    pub attempts: u32,
    /// When it is tried next (pending only).
    pub next_attempt_at: Option<Timestamp>,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    /// When a 2xx last acknowledged it.
    pub delivered_at: Option<Timestamp>,
}

/// One attempt of a delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRecord {
    /// 1 for the first attempt.
    pub n: u32,
    pub at: Timestamp,
    /// The receiver's answer, when it answered.
    pub status_code: Option<u16>,
    /// Why there was no answer (a timeout, a refused connection), or none.
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// A delivery claimed for sending, with what its request needs.
#[derive(Clone, PartialEq, Eq)]
pub struct ClaimedDelivery {
    pub webhook_id: String,
    /// How it is sent: a POST to `url`, or (the provider's row, whose `url` and `secret` are
    /// empty) a charge through the payment provider's API.
    pub kind: WebhookKind,
    pub url: String,
    pub secret: String,
    pub event: StoredEvent,
    /// Failed attempts since it was last queued (the backoff's exponent).
    pub tries: u32,
    /// When it was last queued: the event, or a redelivery (the retry window's start). Each
    /// redelivery queues it strictly later than the time before, so this names one queueing.
    pub queued_at: Timestamp,
    /// The claim's lease: its attempt is recorded only while the delivery is still leased
    /// until this time (a claim after the lease passed is another).
    pub lease_until: Timestamp,
}

/// Never prints the secret.
impl std::fmt::Debug for ClaimedDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimedDelivery")
            .field("webhook_id", &self.webhook_id)
            .field("kind", &self.kind)
            .field("url", &self.url)
            .field("event", &self.event)
            .field("tries", &self.tries)
            .field("queued_at", &self.queued_at)
            .field("lease_until", &self.lease_until)
            .finish_non_exhaustive()
    }
}

/// What follows an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryNext {
    /// Acknowledged.
    Delivered,
    /// Tried again at this time.
    RetryAt(Timestamp),
    /// Given up.
    Failed,
}

/// An attempt of a claimed delivery, to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryResult {
    pub webhook_id: String,
    pub event_seq: i64,
    /// The claim's lease ([`ClaimedDelivery::lease_until`]).
    pub lease_until: Timestamp,
    /// When the claimed delivery was queued ([`ClaimedDelivery::queued_at`]). When it was
    /// queued again since the claim (a redelivery while the attempt was in flight), the
    /// attempt is recorded but `next` is not: the delivery stays as the redelivery queued it.
    pub queued_at: Timestamp,
    /// The attempt (its `n` is given by the store: the delivery's next).
    pub attempt: AttemptRecord,
    pub next: DeliveryNext,
}

/// A page of a webhook's deliveries, newest event first: those of events before
/// `before_seq`, at most `limit`.
#[derive(Clone, Debug)]
pub struct DeliveriesQuery {
    pub webhook_id: String,
    pub before_seq: Option<i64>,
    pub limit: usize,
}

// ---------------------------------------------------------------------------------------------
// What both stores share

/// An event as a row of `webhook_events` (without its number).
pub(crate) struct EventCols {
    pub account: String,
    pub event_type: &'static str,
    pub created_at: i64,
    pub data: String,
}

/// The batch's events as rows, in order; an `invoice.issued` event gets the number and id of
/// its invoice from `numbers` (the `(year, seq)` the store gave each of `new_invoices`).
pub(crate) fn event_rows(s: &BatchState, numbers: &[(i64, i64)]) -> Result<Vec<EventCols>> {
    let prefix = s.invoice_prefix.as_deref().unwrap_or(INVOICE_PREFIX);
    s.events
        .iter()
        .map(|e| {
            let mut data = e.data.clone();
            if let EventData::InvoiceIssued {
                invoice,
                invoice_id,
                number,
                ..
            } = &mut data
            {
                let (year, seq) = *numbers.get(*invoice).ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "an invoice.issued event names invoice {invoice} of the batch's {}",
                        numbers.len()
                    ))
                })?;
                *invoice_id = InvoiceRecord::id_of(year, seq);
                *number = invoice_number(prefix, year, seq);
            }
            Ok(EventCols {
                account: e.account.as_str().to_string(),
                event_type: data.event_type().as_str(),
                created_at: e.at.0,
                data: crate::to_json(&data),
            })
        })
        .collect()
}

pub(crate) const WEBHOOK_COLS: &str =
    "webhook_id, url, events, description, secret, created_at, deleted_at";

/// A row of `SELECT {WEBHOOK_COLS}`.
pub(crate) fn webhook_row(r: &dyn Get) -> Result<WebhookRecord> {
    Ok(WebhookRecord {
        webhook_id: r.text(0)?,
        url: r.text(1)?,
        events: WebhookEvents::parse(&r.text(2)?)?,
        description: r.opt_text(3)?,
        secret: r.text(4)?,
        created_at: Timestamp(r.int(5)?),
        deleted_at: r.opt_int(6)?.map(Timestamp),
    })
}

/// The stored form of a webhook's types (a JSON array).
pub(crate) fn events_text(events: &WebhookEvents) -> String {
    crate::to_json(&events.names())
}

/// An event's columns, read from `e.account, e.created_at, e.data` at `first`.
fn event(r: &dyn Get, seq: i64, first: usize) -> Result<StoredEvent> {
    Ok(StoredEvent {
        seq,
        account: parse_id(AccountId::parse, &r.text(first)?)?,
        created_at: Timestamp(r.int(first + 1)?),
        data: crate::json("webhook event", &r.text(first + 2)?)?,
    })
}

pub(crate) const EVENT_COLS: &str = "seq, account, created_at, data";

/// A row of `SELECT {EVENT_COLS}`.
pub(crate) fn event_row(r: &dyn Get) -> Result<StoredEvent> {
    event(r, r.int(0)?, 1)
}

/// A delivery's columns, from `webhook_deliveries d JOIN webhook_events e JOIN webhooks w`. A
/// pending delivery of a deleted webhook reads as given up, as its delete marks it: never
/// `pending`, whatever wrote it (a row a batch fanned out while the webhook was being deleted,
/// before subscription changes took the event counter's lock).
fn delivery_cols() -> String {
    let gone = "d.status = 'pending' AND w.deleted_at IS NOT NULL";
    format!(
        "d.webhook_id, d.event_seq, d.account, e.event_type, e.created_at, \
         CASE WHEN {gone} THEN 'failed' ELSE d.status END, d.attempts, \
         CASE WHEN {gone} THEN NULL ELSE d.next_attempt_at END, d.last_status_code, \
         CASE WHEN {gone} THEN '{DELETED_WEBHOOK}' ELSE d.last_error END, d.delivered_at"
    )
}

/// The tables [`delivery_cols`] reads.
const DELIVERY_FROM: &str = "webhook_deliveries d JOIN webhook_events e ON e.seq = d.event_seq \
     JOIN webhooks w ON w.webhook_id = d.webhook_id";

fn count(what: &str, v: i64) -> Result<u32> {
    u32::try_from(v).map_err(|e| corrupt(what, e))
}

fn status_code(v: Option<i64>) -> Result<Option<u16>> {
    v.map(|c| u16::try_from(c).map_err(|e| corrupt("status code", e)))
        .transpose()
}

/// A row of `SELECT {delivery_cols()} FROM {DELIVERY_FROM}`.
pub(crate) fn delivery_row(r: &dyn Get) -> Result<DeliveryRecord> {
    let event_type = r.text(3)?;
    Ok(DeliveryRecord {
        webhook_id: r.text(0)?,
        event_seq: r.int(1)?,
        account: parse_id(AccountId::parse, &r.text(2)?)?,
        event_type: EventType::parse(&event_type)
            .ok_or_else(|| corrupt("event type", event_type))?,
        event_at: Timestamp(r.int(4)?),
        status: DeliveryStatus::parse(&r.text(5)?)?,
        attempts: count("attempts", r.int(6)?)?,
        next_attempt_at: r.opt_int(7)?.map(Timestamp),
        last_status_code: status_code(r.opt_int(8)?)?,
        last_error: r.opt_text(9)?,
        delivered_at: r.opt_int(10)?.map(Timestamp),
    })
}

/// A page of a webhook's deliveries, with placeholders written by `p(n, type)`: webhook,
/// before seq, limit.
pub(crate) fn deliveries_sql(p: impl Fn(usize, &str) -> String) -> String {
    format!(
        "SELECT {cols} FROM {DELIVERY_FROM} \
         WHERE d.webhook_id = {w} AND d.event_seq < {b} ORDER BY d.event_seq DESC LIMIT {l}",
        cols = delivery_cols(),
        w = p(1, "text"),
        b = p(2, "bigint"),
        l = p(3, "bigint"),
    )
}

/// [`deliveries_sql`]'s parameters.
pub(crate) fn deliveries_args(q: &DeliveriesQuery) -> (String, i64, i64) {
    (
        q.webhook_id.clone(),
        q.before_seq.unwrap_or(i64::MAX),
        i64::try_from(q.limit).unwrap_or(i64::MAX),
    )
}

/// One delivery, with placeholders: webhook, seq.
pub(crate) fn delivery_sql(p: impl Fn(usize, &str) -> String) -> String {
    format!(
        "SELECT {} FROM {DELIVERY_FROM} WHERE d.webhook_id = {} AND d.event_seq = {}",
        delivery_cols(),
        p(1, "text"),
        p(2, "bigint"),
    )
}

pub(crate) const ATTEMPT_COLS: &str = "n, at, status_code, error, duration_ms";

/// A delivery's attempts, in order, with placeholders: webhook, seq.
pub(crate) fn attempts_sql(p: impl Fn(usize, &str) -> String) -> String {
    format!(
        "SELECT {ATTEMPT_COLS} FROM webhook_attempts WHERE webhook_id = {} AND event_seq = {} \
         ORDER BY n",
        p(1, "text"),
        p(2, "bigint"),
    )
}

/// A row of `SELECT {ATTEMPT_COLS}`.
pub(crate) fn attempt_row(r: &dyn Get) -> Result<AttemptRecord> {
    Ok(AttemptRecord {
        n: count("attempt", r.int(0)?)?,
        at: Timestamp(r.int(1)?),
        status_code: status_code(r.opt_int(2)?)?,
        error: r.opt_text(3)?,
        duration_ms: r.int(4)?,
    })
}

/// The due deliveries a claim takes, with placeholders: now, limit, per webhook; `lock` is
/// appended to the selection (PostgreSQL's `FOR UPDATE OF d SKIP LOCKED`, which locks only
/// the rows taken). Due: pending, its time come, not leased (or its lease passed), its webhook
/// live, and no earlier event of its account to the same webhook still waiting for its first
/// try since it was queued (so a healthy receiver sees an account's events in order, and a
/// failing one holds the next for one attempt).
///
/// Fair across webhooks: each due delivery gets a turn, its rank among its webhook's (by time
/// due, then event) after the webhook's deliveries leased now (by any server); a webhook gets
/// no turn past `per webhook`, and the claim takes turns in order (every webhook's first,
/// then every webhook's second, ...). So a receiver that never answers holds at most its
/// share of the slots, and its backlog never sorts ahead of another webhook's deliveries.
/// The turns are ranked in a subquery over every due delivery (one pass, as the sort by time
/// due was), and the rows taken are joined back and checked again at the outer level, the one
/// PostgreSQL can lock (it locks no query with a window function). Rows: webhook, seq, tries,
/// queued_at.
pub(crate) fn due_sql(p: impl Fn(usize, &str) -> String, lock: &str) -> String {
    let free = |d: &str| {
        format!(
            "({d}.lease_until IS NULL OR {d}.lease_until <= {now})",
            now = p(1, "bigint")
        )
    };
    format!(
        "SELECT d.webhook_id, d.event_seq, d.tries, d.queued_at FROM \
         (SELECT c.webhook_id, c.event_seq, c.next_attempt_at, COALESCE(l.n, 0) + ROW_NUMBER() \
            OVER (PARTITION BY c.webhook_id ORDER BY c.next_attempt_at, c.event_seq) AS turn \
          FROM webhook_deliveries c \
          JOIN webhooks w ON w.webhook_id = c.webhook_id AND w.deleted_at IS NULL \
          LEFT JOIN (SELECT webhook_id, COUNT(*) AS n FROM webhook_deliveries \
            WHERE status = 'pending' AND lease_until > {now} GROUP BY webhook_id) l \
            ON l.webhook_id = c.webhook_id \
          WHERE c.status = 'pending' AND c.next_attempt_at <= {now} AND {free_c} \
          AND NOT EXISTS (SELECT 1 FROM webhook_deliveries b WHERE b.webhook_id = c.webhook_id \
            AND b.account = c.account AND b.event_seq < c.event_seq AND b.status = 'pending' \
            AND b.tries = 0)) r \
         JOIN webhook_deliveries d ON d.webhook_id = r.webhook_id AND d.event_seq = r.event_seq \
         WHERE r.turn <= {per} AND d.status = 'pending' AND {free_d} \
         ORDER BY r.turn, r.next_attempt_at, r.event_seq LIMIT {limit}{lock}",
        now = p(1, "bigint"),
        limit = p(2, "bigint"),
        per = p(3, "bigint"),
        free_c = free("c"),
        free_d = free("d"),
    )
}

/// What a claimed delivery sends, with placeholders: webhook, seq. Rows: url, secret, then
/// the event's account, created_at and data, then the webhook's kind.
pub(crate) fn claimed_sql(p: impl Fn(usize, &str) -> String) -> String {
    format!(
        "SELECT w.url, w.secret, e.account, e.created_at, e.data, w.kind FROM webhooks w \
         JOIN webhook_events e ON e.seq = {seq} WHERE w.webhook_id = {w}",
        w = p(1, "text"),
        seq = p(2, "bigint"),
    )
}

/// A claimed delivery from a [`claimed_sql`] row and its [`due_sql`] row's values.
pub(crate) fn claimed_row(
    r: &dyn Get,
    webhook_id: String,
    seq: i64,
    tries: i64,
    queued_at: i64,
    lease_until: Timestamp,
) -> Result<ClaimedDelivery> {
    Ok(ClaimedDelivery {
        webhook_id,
        kind: WebhookKind::parse(&r.text(5)?)?,
        url: r.text(0)?,
        secret: r.text(1)?,
        event: event(r, seq, 2)?,
        tries: count("tries", tries)?,
        queued_at: Timestamp(queued_at),
        lease_until,
    })
}

/// A recorded attempt's columns: status, next attempt, delivered at.
pub(crate) fn next_cols(
    next: DeliveryNext,
    at: Timestamp,
) -> (&'static str, Option<i64>, Option<i64>) {
    match next {
        DeliveryNext::Delivered => (DeliveryStatus::Delivered.as_str(), None, Some(at.0)),
        DeliveryNext::RetryAt(t) => (DeliveryStatus::Pending.as_str(), Some(t.0), None),
        DeliveryNext::Failed => (DeliveryStatus::Failed.as_str(), None, None),
    }
}

/// What an attempt records on its delivery, with placeholders: webhook, seq, lease, status,
/// next attempt, status code, error, delivered at, queued at. Only while the claim's lease
/// holds (and the delivery is pending): an attempt whose lease passed and was claimed again, or
/// whose webhook was deleted meanwhile, records nothing. When the delivery was queued again
/// since the claim (its `queued_at` is not the claim's: a redelivery while the attempt was in
/// flight), the attempt is counted and its answer kept, but the status, the next attempt and
/// the tries stay as the redelivery set them. Returns the attempt's number.
pub(crate) fn record_sql(p: impl Fn(usize, &str) -> String) -> String {
    format!(
        "UPDATE webhook_deliveries SET attempts = attempts + 1, \
         tries = CASE WHEN queued_at <> {queued} THEN tries \
           WHEN {status} = 'pending' THEN tries + 1 ELSE 0 END, \
         status = CASE WHEN queued_at = {queued} THEN {status} ELSE status END, \
         next_attempt_at = CASE WHEN queued_at = {queued} THEN {next} ELSE next_attempt_at END, \
         lease_until = NULL, last_status_code = {code}, last_error = {error}, \
         delivered_at = COALESCE({delivered}, delivered_at) \
         WHERE webhook_id = {w} AND event_seq = {seq} AND lease_until = {lease} \
         AND status = 'pending' RETURNING attempts",
        w = p(1, "text"),
        seq = p(2, "bigint"),
        lease = p(3, "bigint"),
        status = p(4, "text"),
        next = p(5, "bigint"),
        code = p(6, "bigint"),
        error = p(7, "text"),
        delivered = p(8, "bigint"),
        queued = p(9, "bigint"),
    )
}

/// Queues a delivery of a live webhook again now, with placeholders: webhook, seq, now. Its
/// retry window and backoff start over. It is queued strictly later than it was before (now,
/// or a millisecond after the last queueing when the clock has not passed it), so a claim's
/// `queued_at` names one queueing. A delivery being sent keeps its lease: the attempt in
/// flight is recorded without undoing this (see [`record_sql`]), and the next is due at once.
/// A deleted webhook's delivery is not queued (the statement itself checks, not a read
/// before it).
pub(crate) fn redeliver_sql(p: impl Fn(usize, &str) -> String) -> String {
    format!(
        "UPDATE webhook_deliveries SET status = 'pending', tries = 0, \
         queued_at = CASE WHEN {now} > queued_at THEN {now} ELSE queued_at + 1 END, \
         next_attempt_at = {now}, \
         lease_until = CASE WHEN status = 'pending' THEN lease_until ELSE NULL END \
         WHERE webhook_id = {w} AND event_seq = {seq} \
         AND EXISTS (SELECT 1 FROM webhooks WHERE webhook_id = {w} AND deleted_at IS NULL \
           AND {OPERATORS})",
        w = p(1, "text"),
        seq = p(2, "bigint"),
        now = p(3, "bigint"),
    )
}

/// The condition that a `webhooks` row is the operator's (the provider's row is not listed,
/// read, deleted or redelivered to by them).
pub(crate) const OPERATORS: &str = "kind = 'http'";

/// The provider's row, inserted unless it exists, with placeholders: created at. Its URL and
/// secret are empty: it is not posted to, nor signed.
pub(crate) fn provider_webhook_sql(p: impl Fn(usize, &str) -> String) -> String {
    format!(
        "INSERT INTO webhooks ({WEBHOOK_COLS}, kind) \
         VALUES ('{PROVIDER_WEBHOOK_ID}', '', '[\"{started}\"]', NULL, '', {at}, NULL, \
           'provider') ON CONFLICT (webhook_id) DO NOTHING",
        started = EventType::TopUpStarted.as_str(),
        at = p(1, "bigint"),
    )
}

/// The provider row's subscription (kept if present).
pub(crate) fn provider_types_sql() -> String {
    format!(
        "INSERT INTO webhook_event_types (event_type, webhook_id) \
         VALUES ('{}', '{PROVIDER_WEBHOOK_ID}') ON CONFLICT DO NOTHING",
        EventType::TopUpStarted.as_str()
    )
}

/// Deleting a webhook gives up its pending deliveries.
pub(crate) const DELETED_WEBHOOK: &str = "webhook deleted";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_and_delivery_ids_name_their_number() {
        assert_eq!(event_id(42), "evt_42");
        assert_eq!(parse_event_id("evt", "evt_42"), Some(42));
        assert_eq!(parse_event_id("dlv", "dlv_7"), Some(7));
        for bad in [
            "evt42",
            "evt_",
            "evt_-1",
            "evt_4a",
            "dlv_1",
            "evt_1234567890123456789",
        ] {
            assert_eq!(parse_event_id("evt", bad), None, "{bad}");
        }
    }

    #[test]
    fn webhook_events_are_stored_as_their_names() {
        let only = WebhookEvents::Only(vec![EventType::BalanceLow, EventType::InvoiceIssued]);
        assert_eq!(events_text(&only), r#"["balance.low","invoice.issued"]"#);
        assert_eq!(WebhookEvents::parse(&events_text(&only)).unwrap(), only);
        assert_eq!(events_text(&WebhookEvents::All), r#"["*"]"#);
        assert_eq!(
            WebhookEvents::parse(r#"["*"]"#).unwrap(),
            WebhookEvents::All
        );
        assert!(WebhookEvents::parse(r#"["nope"]"#).is_err());
    }
}
