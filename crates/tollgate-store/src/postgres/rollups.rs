//! Rollups, line items and the reads over them on PostgreSQL.
//!
//! Usage rows are added to in SQL (`NUMERIC` quantities add exactly). Duration histograms
//! have no SQL addition, so activity rows are read, merged by the core's own code and written
//! back; this is safe because every rollup row belongs to one account, and the batch holds that
//! account's row lock.

use super::Run;
use crate::rows::{LineItemCols, LINE_ITEM_COLS};
use crate::{corrupt, decimal, parse_id, BillingEventsQuery, Result, RollupQuery, StoreError};
use postgres::Row;
use std::collections::HashMap;
use tollgate_core::ids::{ApiKeyId, EndpointId};
use tollgate_core::machine::LineItem;
use tollgate_core::rollup::{
    ActivityKey, ActivityTotals, Deltas, Durations, Grain, UsageKey, UsagePrice, UsageTotals,
};
use tollgate_core::{Nanos, Timestamp};

fn tables(grain: Grain) -> (&'static str, &'static str) {
    match grain {
        Grain::Minute => ("usage_minutes", "activity_minutes"),
        Grain::Hour => ("usage_hours", "activity_hours"),
    }
}

/// Adds a batch's rollup deltas (per minute) to their minute rows and their hour rows.
pub(super) fn write(c: &mut dyn Run, minutes: &Deltas) -> Result<()> {
    let hours = minutes
        .coarsen(Grain::Hour)
        .map_err(|e| StoreError::Db(e.to_string()))?;
    write_grain(c, Grain::Minute, minutes)?;
    write_grain(c, Grain::Hour, &hours)
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn write_grain(c: &mut dyn Run, grain: Grain, d: &Deltas) -> Result<()> {
    let (usage, activity) = tables(grain);
    if !d.usage.is_empty() {
        let (keys, totals): (Vec<&UsageKey>, Vec<&UsageTotals>) = d.usage.iter().unzip();
        c.exec(
            &format!(
                "INSERT INTO {usage} (account, slot, endpoint_id, api_key, unit, unit_price, \
                 blend_version, percent_discount, quantity, requests, subtotal_nanos, \
                 discount_nanos, total_nanos) \
                 SELECT a, s, e, k, u, p, b, d, CAST(q AS NUMERIC), n, st, di, t FROM unnest( \
                   $1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], \
                   $7::bigint[], $8::text[], $9::text[], $10::bigint[], $11::bigint[], \
                   $12::bigint[], $13::bigint[]) AS x(a, s, e, k, u, p, b, d, q, n, st, di, t) \
                 ON CONFLICT (account, slot, endpoint_id, api_key, unit, unit_price, \
                   blend_version, percent_discount) DO UPDATE SET \
                 quantity = {usage}.quantity + excluded.quantity, \
                 requests = {usage}.requests + excluded.requests, \
                 subtotal_nanos = {usage}.subtotal_nanos + excluded.subtotal_nanos, \
                 discount_nanos = {usage}.discount_nanos + excluded.discount_nanos, \
                 total_nanos = {usage}.total_nanos + excluded.total_nanos"
            ),
            &[
                &keys.iter().map(|k| k.account.as_str()).collect::<Vec<_>>(),
                &keys.iter().map(|k| k.slot.0).collect::<Vec<_>>(),
                &keys.iter().map(|k| k.endpoint.as_str()).collect::<Vec<_>>(),
                &keys
                    .iter()
                    .map(|k| k.api_key.as_ref().map_or("", |k| k.as_str()))
                    .collect::<Vec<_>>(),
                &keys.iter().map(|k| k.unit.as_str()).collect::<Vec<_>>(),
                &keys
                    .iter()
                    .map(|k| match k.price {
                        UsagePrice::Rate(p) => p.to_string(),
                        UsagePrice::Blended { .. } => String::new(),
                    })
                    .collect::<Vec<_>>(),
                &keys
                    .iter()
                    .map(|k| match k.price {
                        UsagePrice::Rate(_) => 0,
                        UsagePrice::Blended { version } => version,
                    })
                    .collect::<Vec<_>>(),
                &keys
                    .iter()
                    .map(|k| {
                        k.percent_discount
                            .map(|p| p.to_string())
                            .unwrap_or_default()
                    })
                    .collect::<Vec<_>>(),
                &totals
                    .iter()
                    .map(|t| t.quantity.normalize().to_string())
                    .collect::<Vec<_>>(),
                &totals.iter().map(|t| count(t.requests)).collect::<Vec<_>>(),
                &totals.iter().map(|t| t.subtotal.0).collect::<Vec<_>>(),
                &totals.iter().map(|t| t.discount.0).collect::<Vec<_>>(),
                &totals.iter().map(|t| t.total.0).collect::<Vec<_>>(),
            ],
        )?;
    }
    if d.activity.is_empty() {
        return Ok(());
    }
    // Read the rows this batch adds to, add in Rust, write the sums.
    let keys: Vec<&ActivityKey> = d.activity.keys().collect();
    let accounts: Vec<&str> = keys.iter().map(|k| k.account.as_str()).collect();
    let slots: Vec<i64> = keys.iter().map(|k| k.slot.0).collect();
    let endpoints: Vec<&str> = keys.iter().map(|k| k.endpoint.as_str()).collect();
    let mut sums: HashMap<(String, i64, String), ActivityTotals> = HashMap::new();
    for r in c.rows(
        &format!(
            "SELECT account, slot, endpoint_id, {ACTIVITY_COLS} FROM {activity} \
             WHERE (account, slot, endpoint_id) IN \
               (SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[]))"
        ),
        &[&accounts, &slots, &endpoints],
    )? {
        sums.insert(
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?),
            activity_totals(&r, 3)?,
        );
    }
    let mut merged = Vec::with_capacity(keys.len());
    for (k, delta) in &d.activity {
        let mut t = sums
            .remove(&(
                k.account.as_str().to_string(),
                k.slot.0,
                k.endpoint.as_str().to_string(),
            ))
            .unwrap_or_default();
        t.add(delta);
        merged.push(t);
    }
    c.exec(
        &format!(
            "INSERT INTO {activity} (account, slot, endpoint_id, {ACTIVITY_COLS}) \
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[], \
               $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bytea[], $10::bytea[]) \
             ON CONFLICT (account, slot, endpoint_id) DO UPDATE SET \
             requests = excluded.requests, successes = excluded.successes, \
             user_errors = excluded.user_errors, errors = excluded.errors, \
             billable_ms = excluded.billable_ms, prepare_ms = excluded.prepare_ms, \
             duration_ms = excluded.duration_ms"
        ),
        &[
            &accounts,
            &slots,
            &endpoints,
            &merged.iter().map(|t| count(t.requests)).collect::<Vec<_>>(),
            &merged
                .iter()
                .map(|t| count(t.successes))
                .collect::<Vec<_>>(),
            &merged
                .iter()
                .map(|t| count(t.user_errors))
                .collect::<Vec<_>>(),
            &merged.iter().map(|t| count(t.errors)).collect::<Vec<_>>(),
            &merged.iter().map(|t| t.billable_ms).collect::<Vec<_>>(),
            &merged
                .iter()
                .map(|t| t.prepare_ms.to_bytes())
                .collect::<Vec<_>>(),
            &merged
                .iter()
                .map(|t| t.duration_ms.to_bytes())
                .collect::<Vec<_>>(),
        ],
    )?;
    Ok(())
}

const ACTIVITY_COLS: &str =
    "requests, successes, user_errors, errors, billable_ms, prepare_ms, duration_ms";

fn activity_totals(r: &Row, at: usize) -> Result<ActivityTotals> {
    let n = |i: usize| -> Result<u64> {
        let v: i64 = r.try_get(at + i)?;
        u64::try_from(v).map_err(|e| corrupt("activity count", e))
    };
    let durations = |i: usize| -> Result<Durations> {
        Durations::from_bytes(r.try_get(at + i)?).map_err(|e| corrupt("durations", e))
    };
    Ok(ActivityTotals {
        requests: n(0)?,
        successes: n(1)?,
        user_errors: n(2)?,
        errors: n(3)?,
        billable_ms: r.try_get(at + 4)?,
        prepare_ms: durations(5)?,
        duration_ms: durations(6)?,
    })
}

fn ids<T>(v: &[T], f: impl Fn(&T) -> &str) -> Vec<&str> {
    v.iter().map(f).collect()
}

/// Usage rows of one account in [from, to), in slot order.
pub(super) fn usage(c: &mut dyn Run, q: &RollupQuery) -> Result<Vec<(UsageKey, UsageTotals)>> {
    let endpoints = ids(&q.endpoints, |e| e.as_str());
    let keys = ids(&q.api_keys, |k| k.as_str());
    let mut out = Vec::new();
    for (grain, from, to) in q.ranges() {
        let rows = c.rows(
            &format!(
                "SELECT slot, endpoint_id, api_key, unit, unit_price, percent_discount, \
                 CAST(quantity AS TEXT), requests, subtotal_nanos, discount_nanos, total_nanos, \
                 blend_version FROM {} \
                 WHERE account = $1 AND slot >= $2 AND slot < $3 \
                 AND (cardinality($4::text[]) = 0 OR endpoint_id = ANY($4)) \
                 AND (cardinality($5::text[]) = 0 OR api_key = ANY($5)) \
                 ORDER BY slot, endpoint_id, api_key, unit, unit_price, blend_version, \
                   percent_discount",
                tables(grain).0
            ),
            &[&q.account.as_str(), &from.0, &to.0, &endpoints, &keys],
        )?;
        for r in rows {
            let key: String = r.try_get(2)?;
            let percent: String = r.try_get(5)?;
            out.push((
                UsageKey {
                    account: q.account.clone(),
                    slot: Timestamp(r.try_get(0)?),
                    endpoint: parse_id(EndpointId::parse, r.try_get(1)?)?,
                    api_key: (!key.is_empty())
                        .then(|| parse_id(ApiKeyId::parse, &key))
                        .transpose()?,
                    unit: r.try_get(3)?,
                    price: match r.try_get::<_, i64>(11)? {
                        0 => UsagePrice::Rate(decimal("unit_price", r.try_get(4)?)?),
                        version => UsagePrice::Blended { version },
                    },
                    percent_discount: (!percent.is_empty())
                        .then(|| decimal("percent_discount", &percent))
                        .transpose()?,
                },
                UsageTotals {
                    quantity: decimal("quantity", r.try_get(6)?)?.normalize(),
                    requests: u64::try_from(r.try_get::<_, i64>(7)?)
                        .map_err(|e| corrupt("requests", e))?,
                    subtotal: Nanos(r.try_get(8)?),
                    discount: Nanos(r.try_get(9)?),
                    total: Nanos(r.try_get(10)?),
                },
            ));
        }
    }
    Ok(out)
}

/// Analytics rows of one account in [from, to), in slot order.
pub(super) fn activity(
    c: &mut dyn Run,
    q: &RollupQuery,
) -> Result<Vec<(ActivityKey, ActivityTotals)>> {
    let endpoints = ids(&q.endpoints, |e| e.as_str());
    let mut out = Vec::new();
    for (grain, from, to) in q.ranges() {
        let rows = c.rows(
            &format!(
                "SELECT slot, endpoint_id, {ACTIVITY_COLS} FROM {} \
                 WHERE account = $1 AND slot >= $2 AND slot < $3 \
                 AND (cardinality($4::text[]) = 0 OR endpoint_id = ANY($4)) \
                 ORDER BY slot, endpoint_id",
                tables(grain).1
            ),
            &[&q.account.as_str(), &from.0, &to.0, &endpoints],
        )?;
        for r in rows {
            out.push((
                ActivityKey {
                    account: q.account.clone(),
                    endpoint: parse_id(EndpointId::parse, r.try_get(1)?)?,
                    slot: Timestamp(r.try_get(0)?),
                },
                activity_totals(&r, 2)?,
            ));
        }
    }
    Ok(out)
}

/// One account's line items in [from, to), ordered by (billed_at, request_id), after the
/// keyset position, at most `limit`.
pub(super) fn billing_events(c: &mut dyn Run, q: &BillingEventsQuery) -> Result<Vec<LineItem>> {
    let (after_at, after_id) = match &q.after {
        Some((at, id)) => (Some(at.0), Some(id.as_str())),
        None => (None, None),
    };
    let endpoints = ids(&q.endpoints, |e| e.as_str());
    let keys = ids(&q.api_keys, |k| k.as_str());
    let requests = ids(&q.request_ids, |r| r.as_str());
    // By request id: through the requests table's primary key (a billed request's line item
    // carries the request's finish time), not a scan of the account's range.
    let rows = c.rows(
        &format!(
            "SELECT {LINE_ITEM_COLS} FROM line_items WHERE account = $1 \
             AND billed_at >= $2 AND billed_at < $3 \
             AND ($4::bigint IS NULL OR (billed_at, request_id) > ($4, $5::text)) \
             AND (cardinality($6::text[]) = 0 OR endpoint_id = ANY($6)) \
             AND (cardinality($7::text[]) = 0 OR api_key = ANY($7)) \
             AND (cardinality($8::text[]) = 0 OR (billed_at, request_id) IN \
               (SELECT finished_at, request_id FROM requests \
                WHERE request_id = ANY($8) AND account = $1)) \
             ORDER BY billed_at, request_id LIMIT $9"
        ),
        &[
            &q.account.as_str(),
            &q.from.0,
            &q.to.0,
            &after_at,
            &after_id,
            &endpoints,
            &keys,
            &requests,
            &(q.limit as i64),
        ],
    )?;
    rows.iter()
        .map(|r| {
            LineItemCols {
                request_id: r.try_get(0)?,
                account: r.try_get(1)?,
                endpoint_id: r.try_get(2)?,
                api_key: r.try_get(3)?,
                price_version: r.try_get(4)?,
                unit: r.try_get(5)?,
                quantity: r.try_get(6)?,
                unit_price: r.try_get(7)?,
                percent_discount: r.try_get(8)?,
                subtotal: r.try_get(9)?,
                discount: r.try_get(10)?,
                total: r.try_get(11)?,
                status_code: i64::from(r.try_get::<_, i32>(12)?),
                billed_at: r.try_get(13)?,
                queue_ms: r.try_get(14)?,
                inference_ms: r.try_get(15)?,
            }
            .into_item()
        })
        .collect()
}
