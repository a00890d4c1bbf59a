//! The operator's webhook reads: the live webhooks, oldest first, and a webhook's deliveries,
//! newest event first, each with its attempts, on the keyset cursor the other lists use.

use crate::cursor::{Cursor, Page};
use crate::QueryError;
use serde::{Deserialize, Serialize};
use tollgate_engine::Engine;
use tollgate_store::{AttemptRecord, DeliveriesQuery, DeliveryRecord, StoredEvent, WebhookRecord};

/// The keyset position of a page of webhooks: the last shown, by `(created_at, webhook_id)`.
#[derive(Serialize, Deserialize)]
struct AfterWebhook {
    created_at: i64,
    webhook_id: String,
}

/// One page of the live webhooks, oldest first.
pub async fn list(
    engine: &Engine,
    cursor: Option<&Cursor>,
    limit: usize,
) -> Result<Page<WebhookRecord>, QueryError> {
    let after: Option<AfterWebhook> = Cursor::key(cursor)?;
    // Webhooks are few (a platform's receivers): the store lists them all, in page order.
    let all = engine.read(|r| r.webhooks()).await?;
    Ok(Page::of(
        all.into_iter().filter(|w| {
            after.as_ref().is_none_or(|a| {
                (w.created_at.0, w.webhook_id.as_str()) > (a.created_at, a.webhook_id.as_str())
            })
        }),
        limit,
        |last| AfterWebhook {
            created_at: last.created_at.0,
            webhook_id: last.webhook_id.clone(),
        },
    ))
}

/// The live webhook with this id (a deleted one is gone).
pub async fn webhook(
    engine: &Engine,
    webhook_id: &str,
) -> Result<Option<WebhookRecord>, QueryError> {
    let id = webhook_id.to_string();
    Ok(engine
        .read(move |r| r.webhook(&id))
        .await?
        .filter(|w| w.deleted_at.is_none()))
}

/// One page of a webhook's deliveries, newest event first: the position is the last event
/// shown, and events are numbered in commit order, so paging never repeats or skips one.
pub async fn deliveries(
    engine: &Engine,
    webhook_id: &str,
    cursor: Option<&Cursor>,
    limit: usize,
) -> Result<Page<DeliveryRecord>, QueryError> {
    let before_seq: Option<i64> = Cursor::key(cursor)?;
    let q = DeliveriesQuery {
        webhook_id: webhook_id.to_string(),
        before_seq,
        limit: limit.saturating_add(1),
    };
    let rows = engine.read(move |r| r.webhook_deliveries(&q)).await?;
    Ok(Page::of(rows, limit, |last| last.event_seq))
}

/// A delivery with its attempts, in order, and its event.
#[derive(Clone, Debug)]
pub struct DeliveryDetail {
    pub delivery: DeliveryRecord,
    pub attempts: Vec<AttemptRecord>,
    pub event: StoredEvent,
}

/// The delivery of event `event_seq` to a webhook, if there is one.
pub async fn delivery(
    engine: &Engine,
    webhook_id: &str,
    event_seq: i64,
) -> Result<Option<DeliveryDetail>, QueryError> {
    let id = webhook_id.to_string();
    engine
        .read(move |r| {
            let Some((delivery, attempts)) = r.webhook_delivery(&id, event_seq)? else {
                return Ok(None);
            };
            let event = r
                .webhook_events(event_seq - 1, 1)?
                .into_iter()
                .find(|e| e.seq == event_seq);
            Ok(event.map(|event| DeliveryDetail {
                delivery,
                attempts,
                event,
            }))
        })
        .await
        .map_err(QueryError::from)
}
