//! The reads over rollups and line items on PostgreSQL (`persist` writes them).

use super::Run;
use crate::rows::{LineItemCols, LINE_ITEM_COLS};
use crate::{corrupt, decimal, parse_id, BillingEventsQuery, Result, RollupQuery};
use postgres::Row;
use tollgate_core::ids::{ApiKeyId, EndpointId};
use tollgate_core::machine::LineItem;
use tollgate_core::rollup::{
    ActivityKey, ActivityTotals, Durations, Grain, UsageKey, UsagePrice, UsageTotals,
};
use tollgate_core::{Nanos, Timestamp};

fn tables(grain: Grain) -> (&'static str, &'static str) {
    match grain {
        Grain::Minute => ("usage_minutes", "activity_minutes"),
        Grain::Hour => ("usage_hours", "activity_hours"),
    }
}

pub(super) const ACTIVITY_COLS: &str =
    "requests, successes, user_errors, errors, billable_ms, prepare_ms, duration_ms";

pub(super) fn activity_totals(r: &Row, at: usize) -> Result<ActivityTotals> {
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

/// The statements a usage read of `q` runs, in order, each with the range of slots it reads:
/// `$1` the account, `$2` and `$3` the range, `$4` the endpoints and `$5` the keys asked for
/// (empty: all). PostgreSQL writes the hour rows with their minutes, so every hour has them.
pub(crate) fn usage_statements(q: &RollupQuery) -> Vec<(String, Timestamp, Timestamp)> {
    q.ranges(crate::ALL_FOLDED)
        .into_iter()
        .map(|(rows, from, to)| {
            let sql = format!(
                "SELECT slot, endpoint_id, api_key, unit, unit_price, percent_discount, \
                 CAST(quantity AS TEXT), requests, subtotal_nanos, discount_nanos, total_nanos, \
                 blend_version FROM {} \
                 WHERE account = $1 AND slot >= $2 AND slot < $3 \
                 AND (cardinality($4::text[]) = 0 OR endpoint_id = ANY($4)) \
                 AND (cardinality($5::text[]) = 0 OR api_key = ANY($5)){} \
                 ORDER BY slot, endpoint_id, api_key, unit, unit_price, blend_version, \
                   percent_discount",
                tables(rows.grain()).0,
                crate::rows::service_filter("endpoint_id", q.service),
            );
            (sql, from, to)
        })
        .collect()
}

/// Usage rows of one account in [from, to), in slot order.
pub(super) fn usage(c: &mut dyn Run, q: &RollupQuery) -> Result<Vec<(UsageKey, UsageTotals)>> {
    let endpoints = ids(&q.endpoints, |e| e.as_str());
    let keys = ids(&q.api_keys, |k| k.as_str());
    let mut out = Vec::new();
    for (sql, from, to) in usage_statements(q) {
        let rows = c.rows(
            &sql,
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
    // PostgreSQL writes the hour rows with their minutes, so every hour has them.
    for (rows, from, to) in q.ranges(crate::ALL_FOLDED) {
        let grain = rows.grain();
        let rows = c.rows(
            &format!(
                "SELECT slot, endpoint_id, {ACTIVITY_COLS} FROM {} \
                 WHERE account = $1 AND slot >= $2 AND slot < $3 \
                 AND (cardinality($4::text[]) = 0 OR endpoint_id = ANY($4)){} \
                 ORDER BY slot, endpoint_id",
                tables(grain).1,
                crate::rows::service_filter("endpoint_id", q.service),
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
/// keyset position, at most `limit` (newest first: the reverse order, before the position).
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
    let (beyond, order) = if q.newest_first {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    let rows = c.rows(
        &format!(
            "SELECT {LINE_ITEM_COLS} FROM line_items WHERE account = $1 \
             AND billed_at >= $2 AND billed_at < $3 \
             AND ($4::bigint IS NULL OR (billed_at, request_id) {beyond} ($4, $5::text)) \
             AND (cardinality($6::text[]) = 0 OR endpoint_id = ANY($6)) \
             AND (cardinality($7::text[]) = 0 OR api_key = ANY($7)) \
             AND (cardinality($8::text[]) = 0 OR (billed_at, request_id) IN \
               (SELECT finished_at, request_id FROM requests \
                WHERE request_id = ANY($8) AND account = $1)){models} \
             ORDER BY billed_at {order}, request_id {order} LIMIT $9",
            // Model billing events only: serverless lines are read by their own reads.
            models = crate::rows::service_filter("endpoint_id", Some(crate::Service::Models)),
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
        .map(|r| LineItemCols::read(r)?.into_item())
        .collect()
}
