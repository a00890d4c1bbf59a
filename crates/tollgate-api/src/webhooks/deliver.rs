//! The webhook dispatcher: claims due deliveries through the engine's writer (a lease, so no
//! other dispatcher, here or on another server of the database, sends them meanwhile), POSTs
//! each to its webhook, and records the attempts through the writer, all those finished since
//! the last round in one command.
//!
//! A delivery's body is `{"id", "type", "created_at", "username", "data"}`: `data` as the event
//! was stored, with the USD number ([`crate::wire::Number`]) beside every `*_nano_usd` field,
//! as every answer renders money. It is signed: `tollgate-signature: t=<unix seconds>,v1=<hex
//! HMAC-SHA256 of "<t>.<body>">`, keyed with the webhook's whole secret. A 2xx acknowledges
//! it; anything else (another status, a timeout, no connection) schedules the next attempt
//! after a delay drawn at random up to `retry_base × 2^(tries−1)` (at most
//! [`MAX_RETRY_DELAY`]: exponential backoff with full jitter), until `retry_for` after the
//! event (or its redelivery), when it is `failed`. Times come from the engine's clock.
//!
//! Sends are bounded (`max_in_flight` at once, each within `timeout`, connect included;
//! redirects are not followed) and run on tasks of their own: a slow or dead receiver holds
//! only its slots, never the writer, which does only the claims and the records, so billing
//! never waits for a receiver. Claims fill the free slots round-robin across webhooks, each
//! webhook up to its share ([`WebhookSettings::per_webhook`], counting what it already has in
//! flight), so a receiver that never answers, however many of its deliveries are due, holds
//! its share and the other webhooks are still sent theirs in the same round. The dispatcher wakes when a commit wrote events
//! ([`tollgate_engine::Engine::events_written`]), when a send finishes, and on a tick (for
//! retries that come due).
//!
//! Order: a delivery is claimed only when no earlier event of its account to the same webhook
//! is still waiting for its first try (since it was queued), so a healthy receiver sees each
//! account's events in order, and a failing one holds the account's next events back for one
//! attempt, no more.
//!
//! The payment provider has a row of its own among the webhooks ([`PROVIDER_WEBHOOK_ID`],
//! subscribed to `top_up.started`): its deliveries are claimed, leased, retried and recorded
//! like the others, but "sent" by charging the automatic top-up at the provider and applying
//! its answer ([`crate::payments::off_session`]), retried for at most 23 hours, after which the
//! top-up fails.

use super::{WebhookSettings, MAX_RETRY_DELAY};
use crate::payments::{off_session, Payments};
use crate::wire::{rfc3339, Number};
use hmac::{Hmac, KeyInit, Mac};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rand::Rng;
use serde_json::{json, Value};
use sha2::Sha256;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};
use tollgate_core::{Nanos, Timestamp};
use tollgate_engine::{AdminCmd, AdminReply, Engine, EngineError};
use tollgate_store::{
    AttemptRecord, ClaimedDelivery, DeliveryNext, DeliveryResult, StoredEvent, WebhookKind,
};

/// How long a claim is leased beyond the attempt's timeout: as long again plus this, the time
/// to record it. A lease that passes (the server died, or stalled) lets another claim the
/// delivery again; an attempt recorded after its lease passed records nothing (its delivery is
/// then sent again: at least once).
pub const LEASE_SLACK: Duration = Duration::from_secs(5);

pub use tollgate_store::PROVIDER_WEBHOOK_ID;

/// How much of a receiver's answer is read (and dropped) before the connection is let go.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The event as POSTed: `id`, `type`, `created_at`, `username`, and `data` with a USD number
/// beside every `*_nano_usd` amount.
pub fn payload(event: &StoredEvent) -> Value {
    let tagged = serde_json::to_value(&event.data).expect("events serialize");
    let mut data = tagged.get("data").cloned().unwrap_or(Value::Null);
    add_usd(&mut data);
    json!({
        "id": event.id(),
        "type": event.data.event_type().as_str(),
        "created_at": rfc3339(event.created_at),
        "username": event.account.as_str(),
        "data": data,
    })
}

/// The bytes a delivery of `event` POSTs: [`payload`], serialized (what the signature signs,
/// and what the console shows as sent).
pub fn body(event: &StoredEvent) -> Vec<u8> {
    serde_json::to_vec(&payload(event)).expect("JSON values serialize")
}

/// Beside every `<name>_nano_usd` integer, `<name>_usd`: its USD number.
fn add_usd(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let usd: Vec<(String, Value)> = map
                .iter()
                .filter_map(|(k, v)| {
                    let name = k.strip_suffix("_nano_usd")?;
                    let nanos = v.as_i64()?;
                    let number = serde_json::to_value(Number::usd(Nanos(nanos))).ok()?;
                    Some((format!("{name}_usd"), number))
                })
                .collect();
            map.values_mut().for_each(add_usd);
            map.extend(usd);
        }
        Value::Array(items) => items.iter_mut().for_each(add_usd),
        _ => {}
    }
}

/// `t=<t>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed with the secret>`.
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The longest delay before the attempt after `tries` failed ones: `base × 2^(tries−1)`, at
/// most [`MAX_RETRY_DELAY`].
pub fn max_delay(base: Duration, tries: u32) -> Duration {
    let doublings = tries.saturating_sub(1);
    if doublings >= 31 {
        return MAX_RETRY_DELAY;
    }
    base.checked_mul(1u32 << doublings)
        .map_or(MAX_RETRY_DELAY, |d| d.min(MAX_RETRY_DELAY))
}

/// What follows a failed attempt at `now`, the delivery's `tries`-th failure since it was
/// queued at `queued_at`: failed once the retry window has passed, else the next attempt after
/// `jitter(max)` (a delay up to `max`), no later than the window's end.
pub fn after_failure(
    settings: &WebhookSettings,
    tries: u32,
    queued_at: Timestamp,
    now: Timestamp,
    jitter: impl FnOnce(u64) -> u64,
) -> DeliveryNext {
    let window = i64::try_from(settings.retry_for.as_millis()).unwrap_or(i64::MAX);
    let deadline = Timestamp(queued_at.0.saturating_add(window));
    if now >= deadline {
        return DeliveryNext::Failed;
    }
    let max = u64::try_from(max_delay(settings.retry_base, tries).as_millis()).unwrap_or(u64::MAX);
    let delay = i64::try_from(jitter(max).min(max)).unwrap_or(i64::MAX);
    DeliveryNext::RetryAt(Timestamp(now.0.saturating_add(delay)).min(deadline))
}

/// `tollgate_webhook_deliveries_total{outcome}` and `tollgate_webhook_deliveries_in_flight`.
pub struct WebhookMetrics {
    attempts: Family<Outcome, Counter>,
    in_flight: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

impl WebhookMetrics {
    pub fn new(registry: &mut Registry) -> WebhookMetrics {
        let m = WebhookMetrics {
            attempts: Family::default(),
            in_flight: Gauge::default(),
        };
        registry.register(
            "tollgate_webhook_deliveries",
            "Webhook delivery attempts recorded, by outcome: delivered (a 2xx), retry (another \
             answer or none; tried again later), failed (given up after the retry window)",
            m.attempts.clone(),
        );
        registry.register(
            "tollgate_webhook_deliveries_in_flight",
            "Webhook deliveries being sent by this server now",
            m.in_flight.clone(),
        );
        m
    }

    fn recorded(&self, results: &[DeliveryResult]) {
        for r in results {
            let outcome = match r.next {
                DeliveryNext::Delivered => "delivered",
                DeliveryNext::RetryAt(_) => "retry",
                DeliveryNext::Failed => "failed",
            };
            self.attempts.get_or_create(&Outcome { outcome }).inc();
        }
    }
}

/// Sends what is due and records what was sent (see the module's documentation).
#[derive(Clone)]
pub struct Dispatcher {
    engine: Engine,
    settings: Arc<WebhookSettings>,
    client: reqwest::Client,
    slots: Arc<Semaphore>,
    metrics: Arc<WebhookMetrics>,
    /// Attempts finished and not yet recorded.
    finished: Arc<Mutex<Vec<DeliveryResult>>>,
    /// Told when an attempt finishes.
    woken: Arc<Notify>,
    /// The payment provider, which charges the automatic top-ups (`None`: this server has
    /// none; its deliveries are retried, for a server that has it).
    payments: Option<Arc<Payments>>,
}

impl Dispatcher {
    /// A dispatcher with one pooled HTTP client: connect timeout and whole-attempt timeout
    /// `settings.timeout`, redirects not followed, `user-agent: tollgate/<version>`.
    pub fn new(engine: Engine, settings: Arc<WebhookSettings>) -> Dispatcher {
        let client = reqwest::Client::builder()
            .connect_timeout(settings.timeout)
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client with these settings builds");
        let metrics = engine.metrics().register_once(WebhookMetrics::new);
        Dispatcher {
            slots: Arc::new(Semaphore::new(settings.max_in_flight.max(1))),
            engine,
            settings,
            client,
            metrics,
            finished: Arc::default(),
            woken: Arc::default(),
            payments: None,
        }
    }

    /// The dispatcher of a server: its engine, its `[webhooks]` settings and its payment
    /// provider.
    pub fn for_app(state: &crate::AppState) -> Dispatcher {
        Dispatcher::new(state.engine.clone(), state.webhooks.clone())
            .with_payments(state.payments.clone())
    }

    /// This dispatcher with the payment provider that charges automatic top-ups.
    pub fn with_payments(mut self, payments: Option<Arc<Payments>>) -> Dispatcher {
        self.payments = payments;
        self
    }

    fn lease_ms(&self) -> i64 {
        let lease = self
            .settings
            .timeout
            .saturating_mul(2)
            .saturating_add(LEASE_SLACK);
        i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
    }

    /// Claims up to `limit` due deliveries.
    async fn claim(&self, limit: usize) -> Result<Vec<ClaimedDelivery>, EngineError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        match self
            .engine
            .admin(AdminCmd::ClaimDeliveries {
                limit,
                per_webhook: self.settings.per_webhook(),
                lease_ms: self.lease_ms(),
            })
            .await?
        {
            AdminReply::Claimed(claimed) => Ok(claimed),
            other => Err(EngineError::Internal(format!("a claim answered {other:?}"))),
        }
    }

    /// Records attempts, in one command.
    async fn record(&self, results: Vec<DeliveryResult>) -> Result<(), EngineError> {
        if results.is_empty() {
            return Ok(());
        }
        for r in results.iter().filter(|r| r.next == DeliveryNext::Failed) {
            tracing::warn!(
                webhook_id = %r.webhook_id,
                event_id = %tollgate_store::event_id(r.event_seq),
                "webhook delivery failed for good: not acknowledged within the retry window"
            );
        }
        let counted = results.clone();
        self.engine
            .admin(AdminCmd::RecordDeliveries(results))
            .await?;
        self.metrics.recorded(&counted);
        Ok(())
    }

    /// One round of the running dispatcher: records the attempts finished since the last
    /// round, claims as many due deliveries as there are free slots, and starts sending them
    /// (each on a task of its own, holding a slot). Returns how many it started.
    pub async fn round(&self) -> Result<usize, EngineError> {
        let done = std::mem::take(&mut *self.finished.lock().expect("finished lock"));
        if let Err(e) = self.record(done.clone()).await {
            // Kept for the next round (a lease that passes meanwhile makes them sent again).
            self.finished.lock().expect("finished lock").extend(done);
            return Err(e);
        }
        let claimed = self.claim(self.slots.available_permits()).await?;
        let started = claimed.len();
        for delivery in claimed {
            let slot = self
                .slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| EngineError::Stopped)?;
            let me = self.clone();
            tokio::spawn(async move {
                let result = me.attempt(delivery).await;
                me.finished.lock().expect("finished lock").push(result);
                drop(slot);
                me.woken.notify_one();
            });
        }
        Ok(started)
    }

    /// Claims what is due now, sends it, waits for every attempt to finish (each within the
    /// timeout) and records them: one whole round, for a caller that moves the clock itself
    /// (tests). Returns the attempts recorded.
    pub async fn run_once(&self) -> Result<Vec<DeliveryResult>, EngineError> {
        let claimed = self.claim(self.settings.max_in_flight.max(1)).await?;
        let attempts = claimed.into_iter().map(|d| async move {
            let _slot = self.slots.acquire().await;
            self.attempt(d).await
        });
        let results: Vec<DeliveryResult> = futures_util::future::join_all(attempts).await;
        self.record(results.clone()).await?;
        Ok(results)
    }

    /// Sends one delivery and says what follows.
    async fn attempt(&self, d: ClaimedDelivery) -> DeliveryResult {
        match d.kind {
            WebhookKind::Provider => self.charge(d).await,
            WebhookKind::Fal => {
                let (url, body) = fal_delivery(&self.engine, &d.event).await;
                let window = WebhookSettings {
                    retry_for: self.settings.retry_for.min(FAL_RETRY_WINDOW),
                    ..(*self.settings).clone()
                };
                self.post(d, &url, body, false, &window).await
            }
            WebhookKind::Http => {
                let (url, body) = (d.url.clone(), body(&d.event));
                self.post(d, &url, body, true, &self.settings).await
            }
        }
    }

    /// POSTs `body` to `url` for delivery `d` (signed with its webhook's secret when `signed`),
    /// and says what follows, retrying within `settings.retry_for`.
    async fn post(
        &self,
        d: ClaimedDelivery,
        url: &str,
        body: Vec<u8>,
        signed: bool,
        settings: &WebhookSettings,
    ) -> DeliveryResult {
        self.metrics.in_flight.inc();
        let at = self.engine.now();
        let t = at.0.div_euclid(1000);
        let started = Instant::now();
        // The hosts allowed now (the setting may have narrowed since the webhook was made).
        let allowed = super::check_url(url, self.settings.allowed_hosts.as_deref());
        let answer = match allowed {
            Err(refused) => Err(refused.message),
            Ok(()) => {
                let mut request = self
                    .client
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header("tollgate-event-id", d.event.id());
                if signed {
                    request = request.header("tollgate-signature", signature(&d.secret, t, &body));
                }
                request
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| send_error(&e, self.settings.timeout))
            }
        };
        let (status_code, error) = match answer {
            Ok(mut resp) => {
                let status = resp.status();
                // Read a little of the answer, so the connection can be reused, and drop it.
                let mut read = 0;
                while let Ok(Some(chunk)) = resp.chunk().await {
                    read += chunk.len();
                    if read > MAX_ANSWER_BYTES {
                        break;
                    }
                }
                (Some(status.as_u16()), None)
            }
            Err(e) => (None, Some(e)),
        };
        let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.metrics.in_flight.dec();
        let acknowledged = status_code.is_some_and(|c| (200..300).contains(&c));
        let next = if acknowledged {
            DeliveryNext::Delivered
        } else {
            let now = self.engine.now();
            after_failure(settings, d.tries + 1, d.queued_at, now, |max| {
                rand::thread_rng().gen_range(0..=max)
            })
        };
        tracing::debug!(
            webhook_id = %d.webhook_id,
            event_id = %d.event.id(),
            status_code,
            error = error.as_deref().unwrap_or(""),
            duration_ms,
            "webhook attempt"
        );
        DeliveryResult {
            webhook_id: d.webhook_id,
            event_seq: d.event.seq,
            lease_until: d.lease_until,
            queued_at: d.queued_at,
            attempt: AttemptRecord {
                n: 0,
                at,
                status_code,
                error,
                duration_ms,
            },
            next,
        }
    }

    /// "Sends" a delivery of the payment provider's row: charges the automatic top-up and
    /// applies the answer. No answer is retried with the backoff within the provider's
    /// idempotency window ([`off_session::RETRY_WINDOW`]), after which the top-up fails.
    async fn charge(&self, d: ClaimedDelivery) -> DeliveryResult {
        self.metrics.in_flight.inc();
        let at = self.engine.now();
        let started = Instant::now();
        let charged = off_session::charge(
            &self.engine,
            self.payments.as_deref(),
            &d.event,
            self.settings.timeout,
            d.tries,
        )
        .await;
        let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.metrics.in_flight.dec();
        let next = if charged.done {
            DeliveryNext::Delivered
        } else {
            let now = self.engine.now();
            let window = WebhookSettings {
                retry_for: self.settings.retry_for.min(off_session::RETRY_WINDOW),
                ..(*self.settings).clone()
            };
            match after_failure(&window, d.tries + 1, d.queued_at, now, |max| {
                rand::thread_rng().gen_range(0..=max)
            }) {
                DeliveryNext::Failed => {
                    match off_session::give_up(&self.engine, &d.event, charged.refused).await {
                        Ok(()) => DeliveryNext::Failed,
                        // The top-up must not stay in flight: failing it is tried again.
                        Err(e) => {
                            tracing::warn!(error = %e, "failing an unreachable top-up failed; will retry");
                            DeliveryNext::RetryAt(
                                now.plus_ms(
                                    i64::try_from(self.settings.retry_base.as_millis())
                                        .unwrap_or(i64::MAX),
                                ),
                            )
                        }
                    }
                }
                other => other,
            }
        };
        tracing::debug!(
            event_id = %d.event.id(),
            status_code = charged.status_code,
            error = charged.error.as_deref().unwrap_or(""),
            duration_ms,
            "automatic top-up charge attempt"
        );
        DeliveryResult {
            webhook_id: d.webhook_id,
            event_seq: d.event.seq,
            lease_until: d.lease_until,
            queued_at: d.queued_at,
            attempt: AttemptRecord {
                n: 0,
                at,
                status_code: charged.status_code,
                error: charged.error,
                duration_ms,
            },
            next,
        }
    }

    /// Runs rounds until the engine stops: when a commit wrote events, when an attempt
    /// finishes, and every `tick` (retries that came due).
    pub async fn run(self, tick: Duration) {
        let mut ticks = tokio::time::interval(tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = self.engine.events_written() => {}
                _ = self.woken.notified() => {}
            }
            match self.round().await {
                Ok(_) => {}
                Err(EngineError::Stopped) => return,
                Err(e) => tracing::warn!(error = %e, "webhook dispatch failed; will retry"),
            }
        }
    }
}

/// Why an attempt got no answer, without its URL (which may carry a token).
fn send_error(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {} s", timeout.as_secs());
    }
    let what = if e.is_connect() {
        "cannot connect"
    } else if e.is_redirect() {
        "redirect not followed"
    } else if e.is_body() || e.is_decode() {
        "the answer was cut off"
    } else {
        "the request failed"
    };
    let mut text = what.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// How long a `fal_webhook` delivery is retried (fal's gateway: two hours).
pub const FAL_RETRY_WINDOW: Duration = Duration::from_secs(2 * 3600);

/// Where and what a `request.completed` delivery posts: the gateway request's answer in fal's
/// webhook format (`request_id`, `gateway_request_id`, `status` `OK` or `ERROR`, `payload`:
/// the model server's JSON output, or its error body; `error`: why it is an error).
pub async fn fal_delivery(engine: &Engine, event: &StoredEvent) -> (String, Vec<u8>) {
    let tollgate_core::events::EventData::RequestCompleted {
        request_id, url, ..
    } = &event.data
    else {
        return (String::new(), Vec::new());
    };
    let id = request_id.clone();
    let view = engine
        .read(move |r| r.gateway_request(&id))
        .await
        .ok()
        .flatten();
    let result = view.as_ref().and_then(|v| v.record.result.as_ref());
    let (status, payload, error) = match result {
        None => (
            "ERROR",
            Value::Null,
            Value::from("the request's result is no longer kept"),
        ),
        Some(r) => {
            let payload = serde_json::from_slice::<Value>(&r.body)
                .unwrap_or_else(|_| Value::from(String::from_utf8_lossy(&r.body).into_owned()));
            if (200..300).contains(&r.status_code) {
                ("OK", payload, Value::Null)
            } else {
                let why = match &r.error_type {
                    Some(kind) => format!("{kind} (status {})", r.status_code),
                    None => format!("Invalid status code: {}", r.status_code),
                };
                ("ERROR", payload, Value::from(why))
            }
        }
    };
    let body = json!({
        "request_id": request_id.as_str(),
        "gateway_request_id": request_id.as_str(),
        "status": status,
        "payload": payload,
        "error": error,
    });
    (
        url.clone(),
        serde_json::to_vec(&body).expect("JSON values serialize"),
    )
}

/// Starts a server's dispatcher ([`Dispatcher::for_app`]: with its payment provider) on its
/// own task (see [`Dispatcher::run`]).
pub fn spawn_dispatcher(state: &crate::AppState, tick: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(Dispatcher::for_app(state).run(tick))
}

/// Starts the dispatcher on its own task (see [`Dispatcher::run`]), without a payment
/// provider.
pub fn spawn_webhook_dispatcher(
    engine: Engine,
    settings: Arc<WebhookSettings>,
    tick: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(Dispatcher::new(engine, settings).run(tick))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::events::EventData;
    use tollgate_core::ids::AccountId;

    #[test]
    fn the_body_adds_a_usd_number_beside_every_nano_usd_amount() {
        let event = StoredEvent {
            seq: 42,
            account: AccountId::parse("acme").unwrap(),
            created_at: Timestamp(1_767_225_600_000),
            data: EventData::BalanceLow {
                balance_nano_usd: Nanos(4_250_000_000),
                low_balance_nano_usd: Nanos(5_000_000_000),
            },
        };
        let body = payload(&event);
        assert_eq!(
            body,
            json!({
                "id": "evt_42",
                "type": "balance.low",
                "created_at": "2026-01-01T00:00:00.000Z",
                "username": "acme",
                "data": {
                    "balance_nano_usd": 4_250_000_000i64,
                    "balance_usd": 4.25,
                    "low_balance_nano_usd": 5_000_000_000i64,
                    "low_balance_usd": 5.0,
                }
            })
        );
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_time_a_dot_and_the_body() {
        // RFC 4231's test case 2 (key "Jefe"), with its data split as "<t>.<body>".
        let sig = signature("Jefe", 0, b"");
        assert!(sig.starts_with("t=0,v1="), "{sig}");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let expected = hex::encode(mac.finalize().into_bytes());
        assert_eq!(
            expected,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let split = signature("Jefe", 1, b"what");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"1.what");
        assert_eq!(
            split,
            format!("t=1,v1={}", hex::encode(mac.finalize().into_bytes()))
        );
    }

    #[test]
    fn retries_back_off_exponentially_with_jitter_until_the_window_ends() {
        let s = WebhookSettings {
            retry_base: Duration::from_secs(10),
            retry_for: Duration::from_secs(3600),
            ..WebhookSettings::default()
        };
        assert_eq!(max_delay(s.retry_base, 1), Duration::from_secs(10));
        assert_eq!(max_delay(s.retry_base, 2), Duration::from_secs(20));
        assert_eq!(max_delay(s.retry_base, 5), Duration::from_secs(160));
        assert_eq!(max_delay(s.retry_base, 30), MAX_RETRY_DELAY);
        assert_eq!(max_delay(s.retry_base, u32::MAX), MAX_RETRY_DELAY);
        let q = Timestamp(1_000_000);
        // The jitter draws up to the most; the delay is what it drew.
        let mut asked = 0;
        let next = after_failure(&s, 3, q, Timestamp(1_005_000), |max| {
            asked = max;
            max / 2
        });
        assert_eq!(asked, 40_000);
        assert_eq!(next, DeliveryNext::RetryAt(Timestamp(1_025_000)));
        // Never past the window's end; at or after it, failed.
        let late = after_failure(&s, 20, q, Timestamp(1_000_000 + 3_590_000), |max| max);
        assert_eq!(
            late,
            DeliveryNext::RetryAt(Timestamp(1_000_000 + 3_600_000))
        );
        let over = after_failure(&s, 21, q, Timestamp(1_000_000 + 3_600_000), |max| max);
        assert_eq!(over, DeliveryNext::Failed);
    }
}
