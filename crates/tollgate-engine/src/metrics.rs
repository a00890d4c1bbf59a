//! The engine's metrics, in one Prometheus registry per [`crate::Engine`] (not a process
//! global: two engines in one process count apart), rendered in Prometheus' text format by
//! whoever serves them.
//!
//! What the write path counts is counted where it happens, and cheaply: a batch tallies its
//! admission decisions and hold expiries into local integers and adds them once; its billed
//! units and nano-USD are summed per endpoint after the commit, off the writer when a syncer
//! thread delivers the answers; durations are observed once per batch or sync. Nothing is
//! counted for a batch whose db transaction did not commit.
//!
//! Billed units are summed exactly (decimal), so a counter moves by exactly the units billed;
//! Prometheus reads every sample as a binary float, so the rendered value is the exact sum's
//! nearest float.

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate_core::machine::{LineItem, Outcome, Rejection};

/// The `Content-Type` of [`Metrics::render`]'s text (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// `tollgate_admission_total{outcome}`: what `start` decided (and a submit refused because the
/// account is locked).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdmissionLabels {
    outcome: &'static str,
}

/// `tollgate_runner_events_total{result}`: runner events applied, and repeats of applied ones.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunnerEventLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BilledUnitsLabels {
    endpoint: String,
    unit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

/// The endpoint label of every serverless line's billed units and amount.
pub const SERVERLESS_LABEL: &str = "serverless";

/// A counter of an exact decimal sum (billed units: megapixels, seconds, tokens).
#[derive(Clone, Debug, Default)]
pub struct DecimalCounter(Arc<Mutex<Decimal>>);

impl DecimalCounter {
    pub fn add(&self, v: Decimal) {
        let mut sum = self.0.lock().expect("counter lock");
        *sum = sum.checked_add(v).unwrap_or(Decimal::MAX);
    }
    pub fn get(&self) -> Decimal {
        *self.0.lock().expect("counter lock")
    }
}

impl TypedMetric for DecimalCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for DecimalCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let value = self.get().to_f64().unwrap_or(f64::MAX);
        encoder.encode_counter::<NoLabelSet, _, u64>(&value, None)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// The registry and the engine's own metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Metrics other layers registered in this registry, one set of each type
    /// ([`Metrics::register_once`]).
    others: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
    admitted: Counter,
    insufficient_credits: Counter,
    concurrency_limit: Counter,
    locked: Counter,
    spending_limit: Counter,
    billed_units: Family<BilledUnitsLabels, DecimalCounter>,
    billed_nanos: Family<EndpointLabels, Counter>,
    batch_size: Histogram,
    commit_seconds: Histogram,
    sync_seconds: Histogram,
    failed_batches: Counter,
    queue_depth: Gauge,
    hold_expiries: Counter,
    runner_events_applied: Counter,
    runner_events_duplicate: Counter,
    runner_settlements: Counter,
    runner_events_pruned: Counter,
    store_conflicts: Counter,
    store_retries: Counter,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::default();
        let admission = Family::<AdmissionLabels, Counter>::default();
        let outcome = |outcome| admission.get_or_create_owned(&AdmissionLabels { outcome });
        let (admitted, insufficient_credits, concurrency_limit, locked, spending_limit) = (
            outcome("admitted"),
            outcome("insufficient_credits"),
            outcome("concurrency_limit"),
            outcome("locked"),
            outcome("spending_limit"),
        );
        registry.register(
            "tollgate_admission",
            "Admission decisions by outcome: a start admitted (a hold placed), refused for \
             insufficient credits, the concurrency limit or a spending limit, or a submit or \
             start refused because the account is locked",
            admission,
        );
        let runner_events = Family::<RunnerEventLabels, Counter>::default();
        let (runner_events_applied, runner_events_duplicate) = (
            runner_events.get_or_create_owned(&RunnerEventLabels { result: "applied" }),
            runner_events.get_or_create_owned(&RunnerEventLabels {
                result: "duplicate",
            }),
        );
        registry.register(
            "tollgate_runner_events",
            "Serverless runner events by result: applied, or a duplicate of one applied before \
             (answered as such, changing nothing)",
            runner_events,
        );
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            others: Mutex::new(HashMap::new()),
            admitted,
            insufficient_credits,
            concurrency_limit,
            locked,
            spending_limit,
            billed_units: Family::default(),
            billed_nanos: Family::default(),
            // 1 to 8192 operations.
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            // 0.25 ms to about 4 s.
            commit_seconds: Histogram::new(exponential_buckets(0.000_25, 2.0, 15)),
            sync_seconds: Histogram::new(exponential_buckets(0.000_25, 2.0, 15)),
            failed_batches: Counter::default(),
            queue_depth: Gauge::default(),
            hold_expiries: Counter::default(),
            runner_events_applied,
            runner_events_duplicate,
            runner_settlements: Counter::default(),
            runner_events_pruned: Counter::default(),
            store_conflicts: Counter::default(),
            store_retries: Counter::default(),
        };
        registry.register(
            "tollgate_billed_units",
            "Units billed (the endpoint's billing unit: images, megapixels, seconds, tokens; \
             GPU-seconds of serverless runners, endpoint `serverless`), by endpoint and unit",
            m.billed_units.clone(),
        );
        registry.register(
            "tollgate_billed_nano_usd",
            "Amount billed, in nano-USD (after discounts), by endpoint",
            m.billed_nanos.clone(),
        );
        registry.register(
            "tollgate_batch_size",
            "Operations applied per committed batch (one db transaction)",
            m.batch_size.clone(),
        );
        registry.register(
            "tollgate_commit_duration_seconds",
            "Time of one batch's db transaction: load, apply, write and commit (the disk \
             sync is tollgate_sync_duration_seconds)",
            m.commit_seconds.clone(),
        );
        registry.register(
            "tollgate_sync_duration_seconds",
            "Time of one disk sync of the embedded database, covering every batch committed \
             before it",
            m.sync_seconds.clone(),
        );
        registry.register(
            "tollgate_failed_batches",
            "Batches whose db transaction failed; every operation in them was answered with \
             an error",
            m.failed_batches.clone(),
        );
        registry.register(
            "tollgate_queue_depth",
            "Operations waiting for the writer (a call of many usage events counts each)",
            m.queue_depth.clone(),
        );
        registry.register(
            "tollgate_hold_expiries",
            "Holds voided because their request was not completed in time",
            m.hold_expiries.clone(),
        );
        registry.register(
            "tollgate_runner_settlements",
            "Settlements by the sweep that accounted serverless runners' time (moved a runner's \
             cursor toward the current minute, billed or in a free state)",
            m.runner_settlements.clone(),
        );
        registry.register(
            "tollgate_runner_events_pruned",
            "Applied serverless runner event ids deleted by the sweep once older than the \
             retention ([serverless] event_retention_h); a repeat of one is then judged as a \
             new event",
            m.runner_events_pruned.clone(),
        );
        registry.register(
            "tollgate_store_conflicts",
            "Times a db transaction lost a race with another writer of a shared database or \
             lost its connection (each is run again, up to the store's retry limit)",
            m.store_conflicts.clone(),
        );
        registry.register(
            "tollgate_store_retries",
            "Times a db transaction was run again after a conflict or a dropped connection",
            m.store_retries.clone(),
        );
        *m.registry.lock().expect("registry lock") = registry;
        m
    }

    /// Registers another layer's metrics in this registry the first time `T` is asked for
    /// (`make` registers them), and gives the same `T` afterwards: a layer built twice over
    /// one engine shares its metrics instead of registering them twice.
    pub fn register_once<T: Send + Sync + 'static>(
        &self,
        make: impl FnOnce(&mut Registry) -> T,
    ) -> Arc<T> {
        let mut others = self.others.lock().expect("metrics lock");
        if let Some(found) = others.get(&TypeId::of::<T>()) {
            return found.clone().downcast::<T>().expect("keyed by its type");
        }
        let made = Arc::new(make(&mut self.registry.lock().expect("registry lock")));
        others.insert(TypeId::of::<T>(), made.clone());
        made
    }

    /// Every metric of the registry, in Prometheus' text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(
            &mut out,
            &self.registry.lock().expect("registry lock"),
        )
        .expect("writing to a String cannot fail");
        out
    }

    pub(crate) fn queued(&self, ops: usize) {
        self.queue_depth.inc_by(ops as i64);
    }

    pub(crate) fn dequeued(&self, ops: usize) {
        self.queue_depth.dec_by(ops as i64);
    }

    /// A committed batch: its size, its commit time, and the decisions among its answers. A
    /// batch that applied nothing (a sweep that found nothing due) is not a batch of the
    /// write path's load, and is not observed.
    pub(crate) fn batch<'a>(
        &self,
        ops: usize,
        took: Duration,
        answers: impl Iterator<Item = &'a Result<Outcome, Rejection>>,
    ) {
        if ops == 0 {
            return;
        }
        self.batch_size.observe(ops as f64);
        self.commit_seconds.observe(took.as_secs_f64());
        let [mut admitted, mut credits, mut concurrency, mut locked, mut limited, mut expired] =
            [0u64; 6];
        let [mut applied, mut duplicate, mut settled] = [0u64; 3];
        for answer in answers {
            match answer {
                // A gateway request's dispatch starts it (a takeover holds nothing new).
                Ok(Outcome::Started {
                    replayed: false, ..
                })
                | Ok(Outcome::Dispatched { resumed: false, .. }) => admitted += 1,
                Ok(Outcome::Expired { expired: true }) => expired += 1,
                Ok(Outcome::RunnerEvents { results }) => {
                    let repeats = results.iter().filter(|r| r.duplicate).count() as u64;
                    duplicate += repeats;
                    applied += results.len() as u64 - repeats;
                }
                Ok(Outcome::RunnerSettled { moved: true, .. }) => settled += 1,
                Err(Rejection::InsufficientCredits { .. }) => credits += 1,
                Err(Rejection::ConcurrencyLimit { .. }) => concurrency += 1,
                Err(Rejection::AccountLocked { .. }) => locked += 1,
                Err(Rejection::SpendingLimitExceeded { .. }) => limited += 1,
                _ => {}
            }
        }
        for (counter, n) in [
            (&self.admitted, admitted),
            (&self.insufficient_credits, credits),
            (&self.concurrency_limit, concurrency),
            (&self.locked, locked),
            (&self.spending_limit, limited),
            (&self.hold_expiries, expired),
            (&self.runner_events_applied, applied),
            (&self.runner_events_duplicate, duplicate),
            (&self.runner_settlements, settled),
        ] {
            if n > 0 {
                counter.inc_by(n);
            }
        }
    }

    /// Runner event ids a committed sweep batch deleted (see [`crate::EVENT_PRUNE_LIMIT`]).
    pub(crate) fn runner_events_pruned(&self, n: usize) {
        if n > 0 {
            self.runner_events_pruned.inc_by(n as u64);
        }
    }

    /// The line items a committed batch recorded: units and nano-USD per endpoint, summed
    /// within the batch first so each series is touched once. Serverless lines (keyed by the
    /// customer's app, which would make a series per app) are counted under the one endpoint
    /// label `serverless`.
    pub(crate) fn billed(&self, items: &[LineItem]) {
        let mut sums: HashMap<(&str, &str), (Decimal, i64)> = HashMap::new();
        for item in items {
            let endpoint = match item.endpoint.as_str() {
                e if tollgate_core::serverless::Line::is_key(e) => SERVERLESS_LABEL,
                e => e,
            };
            let sum = sums.entry((endpoint, item.unit.as_str())).or_default();
            sum.0 = sum
                .0
                .checked_add(item.charge.quantity)
                .unwrap_or(Decimal::MAX);
            sum.1 = sum.1.saturating_add(item.charge.total_nanos.0);
        }
        for ((endpoint, unit), (units, nanos)) in sums {
            self.billed_units
                .get_or_create(&BilledUnitsLabels {
                    endpoint: endpoint.to_string(),
                    unit: unit.to_string(),
                })
                .add(units);
            self.billed_nanos
                .get_or_create(&EndpointLabels {
                    endpoint: endpoint.to_string(),
                })
                .inc_by(nanos.max(0) as u64);
        }
    }

    pub(crate) fn failed_batch(&self) {
        self.failed_batches.inc();
    }

    pub(crate) fn synced(&self, took: Duration) {
        self.sync_seconds.observe(took.as_secs_f64());
    }

    /// A db transaction that ran `runs` times and ended with `failed` (or committed): every
    /// run after the first followed a conflict or a dropped connection, and so does a final
    /// such failure.
    pub(crate) fn store_runs(&self, runs: u64, failed: Option<&tollgate_store::StoreError>) {
        let retries = runs.saturating_sub(1);
        let lost = matches!(
            failed,
            Some(
                tollgate_store::StoreError::Conflict(_)
                    | tollgate_store::StoreError::Disconnected(_)
            )
        );
        if retries > 0 {
            self.store_retries.inc_by(retries);
        }
        if retries > 0 || lost {
            self.store_conflicts.inc_by(retries + u64::from(lost));
        }
    }
}
