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
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The two granularities rollups are kept at (UTC). Every time zone's offset is a whole number
/// of minutes, so any bucket in any zone is a whole number of minute rows; hour rows stand in
/// for their 60 minutes wherever the buckets do not split a UTC hour, so a month's query reads
/// hundreds of rows rather than tens of thousands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grain {
    Minute,
    Hour,
}

impl Grain {
    pub fn ms(self) -> i64 {
        match self {
            Grain::Minute => 60_000,
            Grain::Hour => 3_600_000,
        }
    }

    /// The start of the slot containing `t`.
    pub fn slot_of(self, t: Timestamp) -> Timestamp {
        Timestamp(t.0.div_euclid(self.ms()) * self.ms())
    }

    pub fn is_boundary(self, t: Timestamp) -> bool {
        t.0.rem_euclid(self.ms()) == 0
    }
}

/// One usage row: fal's usage line grouping (endpoint, unit, unit price, percent discount) per
/// account, key and slot (the start of its minute or hour).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UsageKey {
    pub account: AccountId,
    pub slot: Timestamp,
    pub endpoint: EndpointId,
    pub api_key: Option<ApiKeyId>,
    pub unit: String,
    pub price: UsagePrice,
    pub percent_discount: Option<Decimal>,
}

/// How a usage row is priced: at a listed rate, or, for blended prices (tokens, first blocks,
/// add-ons, cost steps: each request has its own effective rate), as the average of the
/// requests billed under one price version, so such traffic still sums into one row per
/// minute instead of one per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum UsagePrice {
    Rate(Decimal),
    Blended { version: i64 },
}

impl UsagePrice {
    /// How `item` is priced in the usage rows (and the invoice lines).
    pub fn of(item: &LineItem) -> UsagePrice {
        if item.charge.blended {
            UsagePrice::Blended {
                version: item.price_version,
            }
        } else {
            UsagePrice::Rate(item.charge.unit_price.normalize())
        }
    }

    /// The unit price a row shows: the rate, or the row's subtotal over its quantity (to 12
    /// decimal places).
    pub fn unit_price(self, totals: &UsageTotals) -> Decimal {
        match self {
            UsagePrice::Rate(p) => p,
            UsagePrice::Blended { .. } if totals.quantity.is_zero() => Decimal::ZERO,
            UsagePrice::Blended { .. } => totals
                .subtotal
                .to_usd()
                .checked_div(totals.quantity)
                .unwrap_or_default()
                .round_dp(12)
                .normalize(),
        }
    }
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

/// One analytics row: per account, endpoint and slot (the start of its minute or hour).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ActivityKey {
    pub account: AccountId,
    pub endpoint: EndpointId,
    pub slot: Timestamp,
}

/// What an analytics row sums: completed requests by outcome, their queue ("prepare") and
/// execution durations in ms as histograms, and the execution time that was billed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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

/// A mergeable histogram of durations in ms, sparse: only the buckets that were hit are kept,
/// so the rollup row of a minute with a handful of requests stays a few dozen bytes (a dense
/// HdrHistogram of the same precision is ~28 KiB, and the write path merges one per row per
/// batch). Buckets are log-linear, HdrHistogram's layout: exact below 256 ms, then 128 buckets
/// per power of two, so a bucket is less than 0.8% of its value wide and a percentile, reported
/// as its bucket's midpoint, is within 0.4% of the exact one. Merging adds counts, exactly.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Durations(BTreeMap<u16, u64>);

/// Values below this are their own bucket.
const EXACT_BELOW: u64 = 256;
/// Buckets per power of two above `EXACT_BELOW`.
const SUB_BUCKETS: u64 = 128;

fn bucket_of(v: u64) -> u16 {
    if v < EXACT_BELOW {
        return v as u16;
    }
    let e = 63 - u64::from(v.leading_zeros()); // >= 8
    let shift = e - 7;
    let top = v >> shift; // in [128, 256)
    (EXACT_BELOW + (e - 8) * SUB_BUCKETS + (top - SUB_BUCKETS)) as u16
}

/// The midpoint of a bucket, in ms.
fn bucket_value(b: u16) -> u64 {
    let b = u64::from(b);
    if b < EXACT_BELOW {
        return b;
    }
    let e = (b - EXACT_BELOW) / SUB_BUCKETS + 8;
    let top = (b - EXACT_BELOW) % SUB_BUCKETS + SUB_BUCKETS;
    let shift = e - 7;
    (top << shift) + ((1u64 << shift) >> 1)
}

impl Durations {
    pub fn new() -> Durations {
        Durations::default()
    }

    /// Records one duration (negative ones count as 0).
    pub fn record(&mut self, ms: i64) {
        *self.0.entry(bucket_of(ms.max(0) as u64)).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Durations) {
        for (b, n) in &other.0 {
            *self.0.entry(*b).or_default() += n;
        }
    }

    pub fn count(&self) -> u64 {
        self.0.values().sum()
    }

    /// The duration at percentile `p` (0-100) by nearest rank, in ms; `None` when nothing was
    /// recorded.
    pub fn percentile_ms(&self, p: u8) -> Option<u64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = (u64::from(p.min(100)) * n).div_ceil(100).max(1);
        let mut seen = 0;
        for (b, c) in &self.0 {
            seen += c;
            if seen >= rank {
                return Some(bucket_value(*b));
            }
        }
        self.0.keys().next_back().map(|b| bucket_value(*b))
    }

    /// The stored form: (bucket u16, count u64) pairs, little-endian, in bucket order.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() * 10);
        for (b, n) in &self.0 {
            out.extend_from_slice(&b.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Durations, String> {
        if !bytes.len().is_multiple_of(10) {
            return Err(format!("bad duration histogram: {} bytes", bytes.len()));
        }
        let mut out = Durations::new();
        for pair in bytes.chunks_exact(10) {
            let b = u16::from_le_bytes([pair[0], pair[1]]);
            let mut n = [0u8; 8];
            n.copy_from_slice(&pair[2..]);
            *out.0.entry(b).or_default() += u64::from_le_bytes(n);
        }
        Ok(out)
    }
}

/// The rollup deltas of one batch, per minute (as [`deltas`] makes them) or per hour.
#[derive(Debug, Default)]
pub struct Deltas {
    pub usage: BTreeMap<UsageKey, UsageTotals>,
    pub activity: BTreeMap<ActivityKey, ActivityTotals>,
}

impl Deltas {
    /// The same deltas summed per `grain` slot.
    pub fn coarsen(&self, grain: Grain) -> Result<Deltas, MoneyError> {
        self.coarsen_before(grain, Timestamp(i64::MAX))
    }

    /// The deltas whose own slot starts before `before`, summed per `grain` slot.
    pub fn coarsen_before(&self, grain: Grain, before: Timestamp) -> Result<Deltas, MoneyError> {
        let mut out = Deltas::default();
        for (k, t) in self.usage.iter().filter(|(k, _)| k.slot < before) {
            let key = UsageKey {
                slot: grain.slot_of(k.slot),
                ..k.clone()
            };
            out.usage.entry(key).or_default().add(t)?;
        }
        for (k, t) in self.activity.iter().filter(|(k, _)| k.slot < before) {
            let key = ActivityKey {
                slot: grain.slot_of(k.slot),
                ..k.clone()
            };
            out.activity.entry(key).or_default().add(t);
        }
        Ok(out)
    }
}

/// Folds a batch's new line items and completions into rollup deltas.
pub fn deltas(state: &BatchState) -> Result<Deltas, MoneyError> {
    let mut out = Deltas::default();
    for item in &state.line_items {
        let key = UsageKey {
            account: item.account.clone(),
            slot: Grain::Minute.slot_of(item.billed_at),
            endpoint: item.endpoint.clone(),
            api_key: item.api_key.clone(),
            unit: item.unit.clone(),
            price: UsagePrice::of(item),
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
            slot: Grain::Minute.slot_of(at),
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
    fn slots_floor_including_before_the_epoch() {
        assert_eq!(Grain::Minute.slot_of(Timestamp(119_999)), Timestamp(60_000));
        assert_eq!(
            Grain::Minute.slot_of(Timestamp(120_000)),
            Timestamp(120_000)
        );
        assert_eq!(Grain::Minute.slot_of(Timestamp(-1)), Timestamp(-60_000));
        assert_eq!(
            Grain::Hour.slot_of(Timestamp(7_199_999)),
            Timestamp(3_600_000)
        );
        assert!(Grain::Hour.is_boundary(Timestamp(-3_600_000)));
        assert!(!Grain::Hour.is_boundary(Timestamp(60_000)));
    }

    #[test]
    fn hour_deltas_are_the_sums_of_their_minutes() {
        let account = AccountId::parse("acme").unwrap();
        let endpoint = EndpointId::parse("fal-ai/flux/dev").unwrap();
        let mut d = Deltas::default();
        for (minute, n, ms) in [(0, 1, 100), (59, 2, 200), (60, 4, 400)] {
            let key = UsageKey {
                account: account.clone(),
                slot: Timestamp(minute * 60_000),
                endpoint: endpoint.clone(),
                api_key: None,
                unit: "image".into(),
                price: UsagePrice::Rate(Decimal::new(25, 3)),
                percent_discount: None,
            };
            let totals = UsageTotals {
                quantity: Decimal::new(n, 1),
                requests: n as u64,
                subtotal: Nanos(n),
                discount: Nanos::ZERO,
                total: Nanos(n),
            };
            d.usage.insert(key, totals);
            let mut a = ActivityTotals {
                requests: n as u64,
                ..ActivityTotals::default()
            };
            a.duration_ms.record(ms);
            d.activity.insert(
                ActivityKey {
                    account: account.clone(),
                    endpoint: endpoint.clone(),
                    slot: Timestamp(minute * 60_000),
                },
                a,
            );
        }
        let h = d.coarsen(Grain::Hour).unwrap();
        let usage: Vec<_> = h
            .usage
            .iter()
            .map(|(k, t)| (k.slot.0, t.requests, t.quantity))
            .collect();
        assert_eq!(
            usage,
            [
                (0, 3, Decimal::new(3, 1)),
                (3_600_000, 4, Decimal::new(4, 1))
            ]
        );
        let activity: Vec<_> = h
            .activity
            .iter()
            .map(|(k, t)| (k.slot.0, t.requests, t.duration_ms.count()))
            .collect();
        assert_eq!(activity, [(0, 3, 2), (3_600_000, 4, 1)]);
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
        // Nearest rank over 200 values: p50 is the 100th (100, exact below 256 ms), p99 the
        // 198th (998, within 0.4%), p100 the largest (1000).
        assert_eq!(merged.percentile_ms(50), Some(100));
        for (p, exact) in [(99, 998), (100, 1000)] {
            let got = merged.percentile_ms(p).expect("not empty");
            assert!(got.abs_diff(exact) * 1000 <= exact * 4, "p{p} {got}");
        }
        assert_eq!(Durations::new().percentile_ms(50), None);
        assert!(Durations::from_bytes(&[1, 2, 3]).is_err());
    }

    #[test]
    fn buckets_are_within_half_a_percent_over_the_whole_range() {
        let mut v: u64 = 1;
        while v < u64::MAX / 3 {
            for x in [v, v + 1, v * 3 / 2, v * 2 - 1] {
                let mid = bucket_value(bucket_of(x));
                assert!(
                    (mid.abs_diff(x) as u128) * 1000 <= (x as u128) * 4,
                    "{x} -> bucket {} -> {mid}",
                    bucket_of(x)
                );
            }
            v *= 2;
        }
        let mut d = Durations::new();
        d.record(i64::MAX);
        d.record(-5);
        assert_eq!(d.count(), 2);
        assert_eq!(d.percentile_ms(1), Some(0));
    }
}
