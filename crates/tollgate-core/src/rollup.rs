//! Rollups: what the customer-facing reads (usage, billing totals, analytics) are answered from,
//! kept per account and minute by the write path in the same commit as the line items they sum.
//!
//! A batch's effects are folded here into deltas, one per rollup row it touches; the store adds
//! each delta to its row. Every figure is additive: money and counts add as integers, billed
//! quantities as exact decimals, and durations go into mergeable histograms (merging two is
//! adding their counts), so a month's query merges per-minute rows and never reads a line item.

use crate::ids::{AccountId, ApiKeyId, EndpointId};
use crate::machine::{BatchState, LineItem, RequestRecord};
use crate::money::{MoneyError, Nanos};
use crate::time::Timestamp;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use rust_decimal::Decimal;
use std::collections::BTreeMap;

/// Rollups are kept per minute (UTC). Every time zone's offset is a whole number of minutes, so
/// any bucket in any zone is a whole number of rollup rows.
pub const MINUTE_MS: i64 = 60_000;

pub fn minute_of(t: Timestamp) -> Timestamp {
    Timestamp(t.0.div_euclid(MINUTE_MS) * MINUTE_MS)
}

/// One usage row: fal's usage line grouping (endpoint, unit, unit price, percent discount) per
/// account, key and minute.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UsageKey {
    pub account: AccountId,
    pub minute: Timestamp,
    pub endpoint: EndpointId,
    pub api_key: Option<ApiKeyId>,
    pub unit: String,
    pub unit_price: Decimal,
    pub percent_discount: Option<Decimal>,
}

/// What a usage row sums.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageTotals {
    pub quantity: Decimal,
    /// Billed requests.
    pub requests: u64,
    pub subtotal: Nanos,
    pub discount: Nanos,
    pub total: Nanos,
}

impl UsageTotals {
    pub fn add(&mut self, other: &UsageTotals) -> Result<(), MoneyError> {
        self.quantity = self
            .quantity
            .checked_add(other.quantity)
            .ok_or(MoneyError::Overflow)?;
        self.requests += other.requests;
        self.subtotal = self.subtotal.checked_add(other.subtotal)?;
        self.discount = self.discount.checked_add(other.discount)?;
        self.total = self.total.checked_add(other.total)?;
        Ok(())
    }

    fn of(item: &LineItem) -> UsageTotals {
        UsageTotals {
            quantity: item.charge.quantity,
            requests: 1,
            subtotal: item.charge.subtotal_nanos,
            discount: item.charge.discount_nanos,
            total: item.charge.total_nanos,
        }
    }
}

/// One analytics row: per account, endpoint and minute.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ActivityKey {
    pub account: AccountId,
    pub endpoint: EndpointId,
    pub minute: Timestamp,
}

/// What an analytics row sums: completed requests by outcome, their queue ("prepare") and
/// execution durations in ms as histograms, and the execution time that was billed.
#[derive(Clone, Debug, Default)]
pub struct ActivityTotals {
    pub requests: u64,
    pub successes: u64,
    pub user_errors: u64,
    pub errors: u64,
    pub billable_ms: i64,
    pub prepare_ms: Durations,
    pub duration_ms: Durations,
}

impl ActivityTotals {
    pub fn add(&mut self, other: &ActivityTotals) {
        self.requests += other.requests;
        self.successes += other.successes;
        self.user_errors += other.user_errors;
        self.errors += other.errors;
        self.billable_ms = self.billable_ms.saturating_add(other.billable_ms);
        self.prepare_ms.merge(&other.prepare_ms);
        self.duration_ms.merge(&other.duration_ms);
    }
}

/// A mergeable histogram of durations in ms: two significant digits (values within 1% of the
/// truth) from 1 ms to about a day; longer durations count as the maximum.
#[derive(Clone, Debug)]
pub struct Durations(Histogram<u64>);

const MAX_DURATION_MS: u64 = 100_000_000;

impl Durations {
    pub fn new() -> Durations {
        Durations(
            Histogram::new_with_bounds(1, MAX_DURATION_MS, 2).expect("valid histogram bounds"),
        )
    }

    pub fn record(&mut self, ms: i64) {
        let v = ms.clamp(0, MAX_DURATION_MS as i64) as u64;
        self.0.saturating_record(v);
    }

    pub fn merge(&mut self, other: &Durations) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The duration at percentile `p` (0-100), in ms; `None` when nothing was recorded.
    pub fn percentile_ms(&self, p: u8) -> Option<u64> {
        if self.0.is_empty() {
            return None;
        }
        Some(self.0.value_at_percentile(f64::from(p)))
    }

    /// The stored form (HdrHistogram's V2 encoding).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        V2Serializer::new()
            .serialize(&self.0, &mut out)
            .expect("serializing into memory cannot fail");
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Durations, String> {
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut std::io::Cursor::new(bytes))
            .map_err(|e| format!("bad duration histogram: {e:?}"))?;
        let mut out = Durations::new();
        out.0
            .add(&h)
            .map_err(|e| format!("bad duration histogram: {e:?}"))?;
        Ok(out)
    }
}

impl Default for Durations {
    fn default() -> Self {
        Durations::new()
    }
}

/// The rollup deltas of one batch.
#[derive(Debug, Default)]
pub struct Deltas {
    pub usage: BTreeMap<UsageKey, UsageTotals>,
    pub activity: BTreeMap<ActivityKey, ActivityTotals>,
}

/// Folds a batch's new line items and completions into rollup deltas.
pub fn deltas(state: &BatchState) -> Result<Deltas, MoneyError> {
    let mut out = Deltas::default();
    for item in &state.line_items {
        let key = UsageKey {
            account: item.account.clone(),
            minute: minute_of(item.billed_at),
            endpoint: item.endpoint.clone(),
            api_key: item.api_key.clone(),
            unit: item.unit.clone(),
            unit_price: item.charge.unit_price.normalize(),
            percent_discount: item.charge.percent_discount.map(|p| p.normalize()),
        };
        out.usage
            .entry(key)
            .or_default()
            .add(&UsageTotals::of(item))?;
    }
    for id in &state.completed {
        if let Some(r) = state.requests.get(id) {
            add_completion(&mut out.activity, r);
        }
    }
    Ok(out)
}

fn add_completion(activity: &mut BTreeMap<ActivityKey, ActivityTotals>, r: &RequestRecord) {
    let (Some(done), Some(at)) = (&r.completion, r.finished_at) else {
        return;
    };
    let row = activity
        .entry(ActivityKey {
            account: r.account.clone(),
            endpoint: r.endpoint.clone(),
            minute: minute_of(at),
        })
        .or_default();
    row.requests += 1;
    match done.status_code {
        500.. => row.errors += 1,
        400..=499 => row.user_errors += 1,
        _ => row.successes += 1,
    }
    if let Some(q) = r.queue_ms {
        row.prepare_ms.record(q);
    }
    if let Some(ms) = r.inference_ms {
        row.duration_ms.record(ms);
        if done.billed {
            row.billable_ms = row.billable_ms.saturating_add(ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_floor_including_before_the_epoch() {
        assert_eq!(minute_of(Timestamp(119_999)), Timestamp(60_000));
        assert_eq!(minute_of(Timestamp(120_000)), Timestamp(120_000));
        assert_eq!(minute_of(Timestamp(-1)), Timestamp(-60_000));
    }

    #[test]
    fn durations_merge_by_adding_counts_and_survive_storage() {
        let mut a = Durations::new();
        let mut b = Durations::new();
        for ms in 1..=100 {
            a.record(ms);
        }
        for ms in 901..=1000 {
            b.record(ms);
        }
        let mut merged = Durations::from_bytes(&a.to_bytes()).expect("decodes");
        merged.merge(&Durations::from_bytes(&b.to_bytes()).expect("decodes"));
        assert_eq!(merged.count(), 200);
        // p50 of 1..100 and 901..1000 is 100 (within the histogram's 1%).
        let p50 = merged.percentile_ms(50).expect("not empty");
        assert!((99..=101).contains(&p50), "p50 {p50}");
        let p99 = merged.percentile_ms(99).expect("not empty");
        assert!((988..=1000).contains(&p99), "p99 {p99}");
        assert_eq!(Durations::new().percentile_ms(50), None);
    }

    #[test]
    fn a_duration_beyond_the_bound_counts_as_the_maximum() {
        let mut d = Durations::new();
        d.record(i64::MAX);
        d.record(-5);
        assert_eq!(d.count(), 2);
    }
}
