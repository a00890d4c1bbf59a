//! Webhooks to the platform (API.md section 6): the operator subscribes a URL to event types
//! (`POST /v1/admin/webhooks`), lists and deletes subscriptions, and follows each event's
//! delivery and its attempts; a delivery can be queued again. The events themselves are
//! written by the billing commit that caused them (the store's outbox), and [`deliver`] posts
//! them, signed with the webhook's secret, retrying with backoff until a 2xx acknowledges
//! them. docs/webhooks.md is the receiver's side.
//!
//! The secret is minted here (`whsec_` and 32 random bytes in hex), answered once, when the
//! webhook is created, and never again: the lists leave it out, it is never logged (a
//! [`WebhookRecord`] does not print it). It is stored as it is, because the server needs it to
//! sign every delivery (an HMAC key cannot be kept as a hash); whoever reads the database can
//! read it, as they can read everything else the server keeps.

pub mod deliver;

use crate::auth::random_token;
use crate::error::{ApiError, ErrorResponse};
use crate::extract::{Json, NoParams, Operator, Page, Params, Path, Path2, PathParam};
use crate::openapi::{tags, OperatorErrors};
use crate::platform::paging;
use crate::wire::Time;
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tollgate_core::events::EventType;
use tollgate_core::ids::AccountId;
use tollgate_engine::{AdminCmd, AdminReply};
use tollgate_query::webhooks::DeliveryDetail;
use tollgate_store::{
    event_id, parse_event_id, AttemptRecord, DeliveryRecord, DeliveryStatus, WebhookEvents,
    WebhookRecord,
};
use utoipa::ToSchema;

/// How webhooks are delivered: the `[webhooks]` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookSettings {
    /// The first retry's delay at most; each later one doubles it (up to [`MAX_RETRY_DELAY`]),
    /// and the delay is drawn at random up to it (full jitter).
    pub retry_base: Duration,
    /// How long after an event (or a redelivery) a delivery is tried before it is `failed`.
    pub retry_for: Duration,
    /// The connect timeout, and the timeout of a whole attempt.
    pub timeout: Duration,
    /// The most deliveries in flight at once (a server's).
    pub max_in_flight: usize,
    /// The most deliveries to one webhook in flight at once ([`Self::per_webhook`]); `None`: a
    /// quarter of `max_in_flight`, at least one.
    pub max_in_flight_per_webhook: Option<usize>,
    /// The host names a webhook URL may name (lower case); `None`: any.
    pub allowed_hosts: Option<Vec<String>>,
}

/// The longest delay between two attempts, whatever the backoff reached (6 hours).
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(6 * 3600);

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            retry_base: Duration::from_secs(10),
            retry_for: Duration::from_secs(3 * 24 * 3600),
            timeout: Duration::from_secs(10),
            max_in_flight: 32,
            max_in_flight_per_webhook: None,
            allowed_hosts: None,
        }
    }
}

impl WebhookSettings {
    /// The most deliveries to one webhook in flight at once: `max_in_flight_per_webhook`, or a
    /// quarter of `max_in_flight`; at least one, at most `max_in_flight`. Claims fill a
    /// dispatcher's free slots round-robin across webhooks up to this share (counting what a
    /// webhook has in flight already, on every server), so a receiver that never answers
    /// holds this many slots at most and the other webhooks keep theirs.
    pub fn per_webhook(&self) -> usize {
        let all = self.max_in_flight.max(1);
        self.max_in_flight_per_webhook
            .unwrap_or(all / 4)
            .clamp(1, all)
    }
}

/// The longest webhook URL taken.
pub const MAX_URL_LEN: usize = 2048;
/// The longest description taken.
pub const MAX_DESCRIPTION_LEN: usize = 500;

// ---------------------------------------------------------------------------------------------
// Subscriptions

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "url": "https://billing.example.com/tollgate-events",
    "events": ["balance.low", "account.locked", "invoice.issued"],
    "description": "billing notices"
}))]
pub struct CreateWebhookBody {
    /// Where events are POSTed: an `http` or `https` URL, at most 2048 characters, without
    /// a user name or password; when the server's `[webhooks] allowed_hosts` is set, on one of
    /// its hosts.
    url: String,
    /// The event types to receive, or `["*"]` for every type (those added later too): at
    /// least one, each a known type.
    #[schema(value_type = Vec<String>, example = json!(["balance.low"]))]
    events: Vec<String>,
    /// What it is for: up to 500 characters, no control characters.
    #[serde(default)]
    description: Option<String>,
}

/// A webhook as the lists show it: never its secret.
#[derive(Serialize, ToSchema)]
pub struct WebhookView {
    /// `wh_` and 32 hex digits.
    webhook_id: String,
    url: String,
    /// The types it receives, or `["*"]`.
    #[schema(example = json!(["balance.low", "invoice.issued"]))]
    events: Vec<&'static str>,
    description: Option<String>,
    created_at: Time,
}

impl From<&WebhookRecord> for WebhookView {
    fn from(w: &WebhookRecord) -> Self {
        WebhookView {
            webhook_id: w.webhook_id.clone(),
            url: w.url.clone(),
            events: w.events.names(),
            description: w.description.clone(),
            created_at: Time(w.created_at),
        }
    }
}

/// A new webhook, with its signing secret: shown here only, never again.
#[derive(Serialize, ToSchema)]
pub struct WebhookCreated {
    #[serde(flatten)]
    webhook: WebhookView,
    /// `whsec_` and 64 hex digits: the HMAC-SHA256 key of every delivery's
    /// `tollgate-signature` (all of it, prefix included). Shown once.
    secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookList {
    webhooks: Vec<WebhookView>,
    /// Cursor for the next page of results, null if no more pages.
    next_cursor: Option<String>,
    /// Whether more results are available.
    has_more: bool,
}

/// The event types a body names: `*` alone, or known types (each once, in the order given).
fn event_types(names: &[String]) -> Result<WebhookEvents, ApiError> {
    if names.is_empty() {
        return Err(ApiError::invalid(
            "events",
            "events must name at least one event type, or be [\"*\"] for every type",
        ));
    }
    if names.iter().any(|n| n == "*") {
        if names.len() > 1 {
            return Err(ApiError::invalid(
                "events",
                "\"*\" subscribes to every event type; give it alone",
            ));
        }
        return Ok(WebhookEvents::All);
    }
    let unknown: Vec<&str> = names
        .iter()
        .filter(|n| EventType::parse(n).is_none())
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        return Err(ApiError::invalid(
            "events",
            format!(
                "unknown event type{}: {}; the types are {} (or \"*\")",
                if unknown.len() > 1 { "s" } else { "" },
                unknown.join(", "),
                known.join(", ")
            ),
        ));
    }
    let mut types: Vec<EventType> = Vec::new();
    for t in names.iter().filter_map(|n| EventType::parse(n)) {
        if !types.contains(&t) {
            types.push(t);
        }
    }
    Ok(WebhookEvents::Only(types))
}

/// Checks a webhook URL: it parses, is `http` or `https` with a host, names no user or
/// password, and its host is one of `allowed` when that is set. The error names the field.
pub fn check_url(url: &str, allowed: Option<&[String]>) -> Result<(), ApiError> {
    let refuse = |why: String| ApiError::invalid("url", why);
    if url.len() > MAX_URL_LEN {
        return Err(refuse(format!(
            "url is longer than {MAX_URL_LEN} characters"
        )));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| refuse(format!("url is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(refuse(format!(
            "url must be http or https, not {}",
            parsed.scheme()
        )));
    }
    let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) else {
        return Err(refuse("url has no host".into()));
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(refuse(
            "url must not carry a user name or password: receivers check the \
             tollgate-signature header instead"
                .into(),
        ));
    }
    if let Some(allowed) = allowed {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(host)) {
            return Err(refuse(format!(
                "url's host {host} is not one of the hosts webhooks may be sent to \
                 ([webhooks] allowed_hosts)"
            )));
        }
    }
    Ok(())
}

fn check_description(d: &Option<String>) -> Result<(), ApiError> {
    if let Some(d) = d {
        if d.chars().count() > MAX_DESCRIPTION_LEN {
            return Err(ApiError::invalid(
                "description",
                format!("description is longer than {MAX_DESCRIPTION_LEN} characters"),
            ));
        }
        if d.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "description",
                "description must not contain control characters",
            ));
        }
    }
    Ok(())
}

/// Subscribes `url` to the event types `events` names (`*` alone for every type), as
/// `POST /v1/admin/webhooks` does (the console's form calls it too): the webhook with its
/// secret, which only this answer holds, or the refusal naming the field (`url`, `events`,
/// `description`), with nothing written.
pub async fn subscribe(
    state: &AppState,
    url: String,
    events: &[String],
    description: Option<String>,
) -> Result<WebhookRecord, ApiError> {
    check_url(&url, state.webhooks.allowed_hosts.as_deref())?;
    let events = event_types(events)?;
    check_description(&description)?;
    let record = WebhookRecord {
        webhook_id: format!("wh_{}", &random_token()[..32]),
        url,
        events,
        description,
        secret: format!("whsec_{}", random_token()),
        created_at: state.engine.now(),
        deleted_at: None,
    };
    state
        .engine
        .admin(AdminCmd::CreateWebhook(record.clone()))
        .await?;
    Ok(record)
}

/// Create a webhook
///
/// Subscribes a URL to event types. From the commit of this call on, every event of those
/// types is delivered to it at least once: POSTed as JSON, signed with the webhook's secret
/// (header `tollgate-signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`),
/// retried with exponential backoff until a 2xx answers (for `[webhooks] retry_for_s`, three
/// days by default). The secret is in this answer only. Refused with nothing written: a URL
/// that is not http(s), names a user or password, or (when `[webhooks] allowed_hosts` is set)
/// a host not listed; no event type, or an unknown one (named).
#[utoipa::path(
    post, path = "/v1/admin/webhooks", tag = tags::OPERATOR,
    operation_id = "createWebhook", security(("Key" = ["OPERATOR"])),
    request_body = CreateWebhookBody,
    responses(
        OperatorErrors,
        (status = 201, description = "The webhook, with its secret (shown once).",
            body = WebhookCreated),
        (status = 400, description = "`validation_error` naming the field (`url`, `events`, \
            `description`); nothing was written.", body = ErrorResponse),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Json(body): Json<CreateWebhookBody>,
) -> Result<(StatusCode, axum::Json<WebhookCreated>), ApiError> {
    let record = subscribe(&state, body.url, &body.events, body.description).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(WebhookCreated {
            webhook: WebhookView::from(&record),
            secret: record.secret,
        }),
    ))
}

/// List webhooks
///
/// The live webhooks, oldest first (by `created_at`, then `webhook_id`), with keyset paging
/// (`limit` default 100, at most 1000). Secrets are never shown. Read-only.
#[utoipa::path(
    get, path = "/v1/admin/webhooks", tag = tags::OPERATOR,
    operation_id = "listWebhooks", security(("Key" = ["OPERATOR"])),
    params(Page),
    responses(OperatorErrors, (status = 200, description = "The webhooks.", body = WebhookList))
)]
pub async fn list(
    State(state): State<AppState>,
    _: Operator,
    Params(p): Params<Page>,
) -> Result<axum::Json<WebhookList>, ApiError> {
    let page = tollgate_query::webhooks::list(&state.engine, p.cursor.as_ref(), p.limit).await?;
    let (next_cursor, has_more) = paging(page.next_cursor);
    Ok(axum::Json(WebhookList {
        webhooks: page.items.iter().map(WebhookView::from).collect(),
        next_cursor,
        has_more,
    }))
}

/// A webhook's id in a path.
pub struct WebhookId(pub String);

impl PathParam for WebhookId {
    const NAME: &'static str = "webhook_id";
    fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.len() > 100 || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("{text:?} is not a webhook id"));
        }
        Ok(WebhookId(text.to_string()))
    }
}

/// A delivery's id in a path: `dlv_<n>`, the delivery of event `evt_<n>` to the webhook.
pub struct DeliveryId(pub i64);

impl PathParam for DeliveryId {
    const NAME: &'static str = "delivery_id";
    fn parse(text: &str) -> Result<Self, String> {
        parse_event_id("dlv", text)
            .map(DeliveryId)
            .ok_or_else(|| format!("{text:?} is not a delivery id (dlv_ and a number)"))
    }
}

/// The live webhook, or 404.
pub async fn live(state: &AppState, webhook_id: &str) -> Result<WebhookRecord, ApiError> {
    tollgate_query::webhooks::webhook(&state.engine, webhook_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("webhook {webhook_id} not found")))
}

/// Show a webhook
///
/// One live webhook, without its secret. A deleted one is 404.
#[utoipa::path(
    get, path = "/v1/admin/webhooks/{webhook_id}", tag = tags::OPERATOR,
    operation_id = "getWebhook", security(("Key" = ["OPERATOR"])),
    params(("webhook_id" = String, Path, description = "The webhook's id.")),
    responses(
        OperatorErrors,
        (status = 200, description = "The webhook.", body = WebhookView),
        (status = 404, description = "`not_found`: no live webhook has this id.",
            body = ErrorResponse),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Path(WebhookId(id)): Path<WebhookId>,
) -> Result<axum::Json<WebhookView>, ApiError> {
    Ok(axum::Json(WebhookView::from(&live(&state, &id).await?)))
}

/// Delete a webhook
///
/// Stops the webhook on every server at once: events committed after this call are not
/// delivered to it, and its pending deliveries are given up (`failed`, with the error
/// `webhook deleted`), also those not yet sent. A delivery already on its way when the call
/// commits may still arrive once.
#[utoipa::path(
    delete, path = "/v1/admin/webhooks/{webhook_id}", tag = tags::OPERATOR,
    operation_id = "deleteWebhook", security(("Key" = ["OPERATOR"])),
    params(("webhook_id" = String, Path, description = "The webhook's id.")),
    responses(
        OperatorErrors,
        (status = 204, description = "Deleted."),
        (status = 404, description = "`not_found`: no live webhook has this id.",
            body = ErrorResponse),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Path(WebhookId(id)): Path<WebhookId>,
) -> Result<StatusCode, ApiError> {
    unsubscribe(&state, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes the live webhook `webhook_id`, as `DELETE /v1/admin/webhooks/{webhook_id}` does;
/// 404 when there is none.
pub async fn unsubscribe(state: &AppState, webhook_id: &str) -> Result<(), ApiError> {
    match state
        .engine
        .admin(AdminCmd::DeleteWebhook {
            webhook_id: webhook_id.to_string(),
        })
        .await?
    {
        AdminReply::Found(true) => Ok(()),
        _ => Err(ApiError::not_found(format!(
            "webhook {webhook_id} not found"
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// Deliveries

/// Where a delivery stands.
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatusView {
    /// Not acknowledged yet; tried again at `next_attempt_at`.
    Pending,
    /// A 2xx acknowledged it.
    Delivered,
    /// Given up: not acknowledged within the retry window, or the webhook was deleted.
    Failed,
}

impl From<DeliveryStatus> for DeliveryStatusView {
    fn from(s: DeliveryStatus) -> Self {
        match s {
            DeliveryStatus::Pending => DeliveryStatusView::Pending,
            DeliveryStatus::Delivered => DeliveryStatusView::Delivered,
            DeliveryStatus::Failed => DeliveryStatusView::Failed,
        }
    }
}

/// One event's delivery to the webhook.
#[derive(Serialize, ToSchema)]
pub struct DeliveryView {
    /// `dlv_<n>`: the delivery of event `evt_<n>` to this webhook.
    delivery_id: String,
    /// The event's `id`, as its body carries it.
    event_id: String,
    /// The event's type.
    #[serde(rename = "type")]
    #[schema(example = "balance.low")]
    event_type: &'static str,
    username: AccountId,
    /// When the event was recorded (its commit).
    created_at: Time,
    status: DeliveryStatusView,
    /// Attempts made so far.
    attempts: u32,
    /// The last answer's status code (null: none yet, or no answer).
    last_status_code: Option<u16>,
    /// Why the last attempt got no answer (a timeout, a refused connection), or why the
    /// delivery was given up.
    last_error: Option<String>,
    /// When it is tried next (null unless pending).
    next_attempt_at: Option<Time>,
    /// When a 2xx last acknowledged it.
    delivered_at: Option<Time>,
}

impl From<&DeliveryRecord> for DeliveryView {
    fn from(d: &DeliveryRecord) -> Self {
        DeliveryView {
            delivery_id: format!("dlv_{}", d.event_seq),
            event_id: event_id(d.event_seq),
            event_type: d.event_type.as_str(),
            username: d.account.clone(),
            created_at: Time(d.event_at),
            status: d.status.into(),
            attempts: d.attempts,
            last_status_code: d.last_status_code,
            last_error: d.last_error.clone(),
            next_attempt_at: d.next_attempt_at.map(Time),
            delivered_at: d.delivered_at.map(Time),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryList {
    deliveries: Vec<DeliveryView>,
    /// Cursor for the next page of results, null if no more pages.
    next_cursor: Option<String>,
    /// Whether more results are available.
    has_more: bool,
}

/// One attempt of a delivery.
#[derive(Serialize, ToSchema)]
pub struct AttemptView {
    /// 1 for the first.
    attempt: u32,
    at: Time,
    /// The receiver's status code; null when it did not answer.
    status_code: Option<u16>,
    /// Why there was no answer, or null.
    error: Option<String>,
    /// How long the attempt took, in milliseconds.
    duration_ms: i64,
}

impl From<&AttemptRecord> for AttemptView {
    fn from(a: &AttemptRecord) -> Self {
        AttemptView {
            attempt: a.n,
            at: Time(a.at),
            status_code: a.status_code,
            error: a.error.clone(),
            duration_ms: a.duration_ms,
        }
    }
}

/// A delivery with every attempt and the event as it is sent.
#[derive(Serialize, ToSchema)]
pub struct DeliveryDetailView {
    #[serde(flatten)]
    delivery: DeliveryView,
    /// Every attempt, oldest first.
    attempt_log: Vec<AttemptView>,
    /// The body each attempt POSTs (`id`, `type`, `created_at`, `username`, `data`).
    #[schema(value_type = Object)]
    event: serde_json::Value,
}

impl From<&DeliveryDetail> for DeliveryDetailView {
    fn from(d: &DeliveryDetail) -> Self {
        DeliveryDetailView {
            delivery: DeliveryView::from(&d.delivery),
            attempt_log: d.attempts.iter().map(AttemptView::from).collect(),
            event: deliver::payload(&d.event),
        }
    }
}

/// List a webhook's deliveries
///
/// Every event sent (or to be sent) to the webhook, newest first, with keyset paging (`limit`
/// default 100, at most 1000): its status, attempts, last answer and next attempt.
#[utoipa::path(
    get, path = "/v1/admin/webhooks/{webhook_id}/deliveries", tag = tags::OPERATOR,
    operation_id = "listWebhookDeliveries", security(("Key" = ["OPERATOR"])),
    params(("webhook_id" = String, Path, description = "The webhook's id."), Page),
    responses(
        OperatorErrors,
        (status = 200, description = "The deliveries.", body = DeliveryList),
        (status = 404, description = "`not_found`: no live webhook has this id.",
            body = ErrorResponse),
    )
)]
pub async fn deliveries(
    State(state): State<AppState>,
    _: Operator,
    Params(p): Params<Page>,
    Path(WebhookId(id)): Path<WebhookId>,
) -> Result<axum::Json<DeliveryList>, ApiError> {
    live(&state, &id).await?;
    let page = tollgate_query::webhooks::deliveries(&state.engine, &id, p.cursor.as_ref(), p.limit)
        .await?;
    let (next_cursor, has_more) = paging(page.next_cursor);
    Ok(axum::Json(DeliveryList {
        deliveries: page.items.iter().map(DeliveryView::from).collect(),
        next_cursor,
        has_more,
    }))
}

/// The delivery `dlv_<seq>` of the live webhook `webhook_id`, with its attempts and event; 404
/// when there is no such webhook or delivery.
pub async fn detail(
    state: &AppState,
    webhook_id: &str,
    seq: i64,
) -> Result<DeliveryDetail, ApiError> {
    live(state, webhook_id).await?;
    tollgate_query::webhooks::delivery(&state.engine, webhook_id, seq)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!("webhook {webhook_id} has no delivery dlv_{seq}"))
        })
}

/// Show a delivery
///
/// One delivery with every attempt (when, the status code or the error, how long it took) and
/// the event's body as it is sent.
#[utoipa::path(
    get, path = "/v1/admin/webhooks/{webhook_id}/deliveries/{delivery_id}", tag = tags::OPERATOR,
    operation_id = "getWebhookDelivery", security(("Key" = ["OPERATOR"])),
    params(
        ("webhook_id" = String, Path, description = "The webhook's id."),
        ("delivery_id" = String, Path, description = "The delivery's id (`dlv_<n>`)."),
    ),
    responses(
        OperatorErrors,
        (status = 200, description = "The delivery.", body = DeliveryDetailView),
        (status = 404, description = "`not_found`: no live webhook has this id, or it has no \
            such delivery.", body = ErrorResponse),
    )
)]
pub async fn delivery(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Path2(WebhookId(id), DeliveryId(seq)): Path2<WebhookId, DeliveryId>,
) -> Result<axum::Json<DeliveryDetailView>, ApiError> {
    Ok(axum::Json(DeliveryDetailView::from(
        &detail(&state, &id, seq).await?,
    )))
}

/// Redeliver an event
///
/// Queues the delivery again, due now, whatever its status (a `failed` one too): the same
/// event, with the same `id` (receivers drop what they have already seen), retried with
/// backoff for a new retry window if it fails. An attempt in flight at that moment is still
/// logged, but does not undo this: the delivery is sent again once it ends. A deleted
/// webhook's deliveries are not queued (404). Answers the delivery as queued.
#[utoipa::path(
    post, path = "/v1/admin/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
    tag = tags::OPERATOR, operation_id = "redeliverWebhookDelivery",
    security(("Key" = ["OPERATOR"])),
    params(
        ("webhook_id" = String, Path, description = "The webhook's id."),
        ("delivery_id" = String, Path, description = "The delivery's id (`dlv_<n>`)."),
    ),
    responses(
        OperatorErrors,
        (status = 202, description = "Queued; the delivery as it now is.", body = DeliveryView),
        (status = 404, description = "`not_found`: no live webhook has this id, or it has no \
            such delivery.", body = ErrorResponse),
    )
)]
pub async fn redeliver(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Path2(WebhookId(id), DeliveryId(seq)): Path2<WebhookId, DeliveryId>,
) -> Result<(StatusCode, axum::Json<DeliveryView>), ApiError> {
    let d = queue_again(&state, &id, seq).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(DeliveryView::from(&d.delivery)),
    ))
}

/// Queues the delivery `dlv_<seq>` of the live webhook `webhook_id` again, due now, as
/// `POST .../redeliver` does: the delivery as it now is; 404 when there is no such webhook or
/// delivery.
pub async fn queue_again(
    state: &AppState,
    webhook_id: &str,
    seq: i64,
) -> Result<DeliveryDetail, ApiError> {
    live(state, webhook_id).await?;
    match state
        .engine
        .admin(AdminCmd::Redeliver {
            webhook_id: webhook_id.to_string(),
            event_seq: seq,
        })
        .await?
    {
        AdminReply::Found(true) => detail(state, webhook_id, seq).await,
        _ => Err(ApiError::not_found(format!(
            "webhook {webhook_id} has no delivery dlv_{seq}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_must_be_http_with_a_host_and_on_an_allowed_host_when_a_list_is_set() {
        assert!(check_url("https://hooks.example.com/a?b=1", None).is_ok());
        assert!(check_url("http://127.0.0.1:8080/x", None).is_ok());
        for bad in [
            "ftp://example.com/x",
            "example.com/x",
            "javascript:alert(1)",
            "https://",
            "https://user:pw@example.com/",
            "file:///etc/passwd",
        ] {
            let e = check_url(bad, None).unwrap_err();
            assert_eq!(
                (e.kind, e.extra["field"].as_str()),
                ("validation_error", Some("url")),
                "{bad}"
            );
        }
        let allowed = vec!["hooks.example.com".to_string(), "::1".to_string()];
        assert!(check_url("https://HOOKS.example.com/x", Some(&allowed)).is_ok());
        assert!(check_url("http://[::1]:9/x", Some(&allowed)).is_ok());
        let e = check_url("https://evil.example.com/x", Some(&allowed)).unwrap_err();
        assert!(e.message.contains("evil.example.com"), "{}", e.message);
    }

    #[test]
    fn event_types_are_star_alone_or_known_types_named_when_unknown() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(event_types(&names(&["*"])).unwrap(), WebhookEvents::All);
        assert_eq!(
            event_types(&names(&["balance.low", "invoice.issued", "balance.low"])).unwrap(),
            WebhookEvents::Only(vec![EventType::BalanceLow, EventType::InvoiceIssued])
        );
        for bad in [
            &[][..],
            &["*", "balance.low"],
            &["balance.low", "nope", "worse"],
        ] {
            let e = event_types(&names(bad)).unwrap_err();
            assert_eq!(e.extra["field"], "events", "{bad:?}");
        }
        let e = event_types(&names(&["balance.low", "nope", "worse"])).unwrap_err();
        assert!(e.message.contains("nope, worse"), "{}", e.message);
    }
}
