//! The rollups and line items behind the customer-facing reads: written by the batch that
//! bills, read by usage, billing events, analytics and estimates.
//!
//! Rollup rows are added to with `INSERT ... ON CONFLICT DO UPDATE`; the two figures SQL cannot
//! add exactly (decimal quantities, duration histograms) are added by functions registered on
//! every connection, which call the core's own addition.

use crate::rows::LineItemCols;
use crate::{corrupt, decimal, parse_id};
use crate::{BillingEventsQuery, Result, RollupQuery, StoreError};
use rusqlite::functions::FunctionFlags;
use rusqlite::{params, params_from_iter, Connection, Row};
use rust_decimal::Decimal;
use std::str::FromStr;
use tollgate_core::ids::{ApiKeyId, EndpointId};
use tollgate_core::machine::{BatchState, LineItem, RequestRecord};
use tollgate_core::rollup::{
    self, ActivityKey, ActivityTotals, Deltas, Durations, Grain, UsageKey, UsagePrice, UsageTotals,
};
use tollgate_core::{Nanos, Timestamp};

/// Registers `tollgate_dec_add(a, b)` (exact decimal text) and
/// `tollgate_durations_merge(a, b)` (histogram blobs).
pub(super) fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("tollgate_dec_add", 2, flags, |ctx| {
        let parse = |i: usize| -> rusqlite::Result<Decimal> {
            let s: String = ctx.get(i)?;
            Decimal::from_str(&s).map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))
        };
        let sum = parse(0)?
            .checked_add(parse(1)?)
            .ok_or_else(|| rusqlite::Error::UserFunctionError("decimal overflow".into()))?;
        Ok(sum.normalize().to_string())
    })?;
    conn.create_scalar_function("tollgate_durations_merge", 2, flags, |ctx| {
        let parse = |i: usize| -> rusqlite::Result<Durations> {
            let b: Vec<u8> = ctx.get(i)?;
            Durations::from_bytes(&b).map_err(|e| rusqlite::Error::UserFunctionError(e.into()))
        };
        let mut a = parse(0)?;
        a.merge(&parse(1)?);
        Ok(a.to_bytes())
    })?;
    Ok(())
}

/// The tables of a grain.
fn tables(grain: Grain) -> (&'static str, &'static str) {
    match grain {
        Grain::Minute => ("usage_minutes", "activity_minutes"),
        Grain::Hour => ("usage_hours", "activity_hours"),
    }
}

/// Adds a batch's rollup deltas (per minute) to their minute rows and their hour rows.
pub(super) fn write(conn: &Connection, minutes: &Deltas) -> Result<()> {
    let hours = minutes
        .coarsen(Grain::Hour)
        .map_err(|e| StoreError::Db(e.to_string()))?;
    write_grain(conn, Grain::Minute, minutes)?;
    write_grain(conn, Grain::Hour, &hours)
}

fn write_grain(conn: &Connection, grain: Grain, d: &Deltas) -> Result<()> {
    let (usage, activity) = tables(grain);
    let mut st = conn.prepare_cached(&format!(
        "INSERT INTO {usage} (slot, account, endpoint_id, api_key, unit, unit_price, \
         blend_version, percent_discount, quantity, requests, subtotal_nanos, discount_nanos, \
         total_nanos) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?13, ?7, ?8, ?9, ?10, ?11, ?12) \
         ON CONFLICT DO UPDATE SET quantity = tollgate_dec_add(quantity, excluded.quantity), \
         requests = requests + excluded.requests, \
         subtotal_nanos = subtotal_nanos + excluded.subtotal_nanos, \
         discount_nanos = discount_nanos + excluded.discount_nanos, \
         total_nanos = total_nanos + excluded.total_nanos"
    ))?;
    for (k, t) in &d.usage {
        st.execute(params![
            k.slot.0,
            k.account.as_str(),
            k.endpoint.as_str(),
            k.api_key.as_ref().map(|k| k.as_str()).unwrap_or(""),
            k.unit,
            match k.price {
                UsagePrice::Rate(p) => p.to_string(),
                UsagePrice::Blended { .. } => String::new(),
            },
            k.percent_discount
                .map(|p| p.to_string())
                .unwrap_or_default(),
            t.quantity.normalize().to_string(),
            t.requests as i64,
            t.subtotal.0,
            t.discount.0,
            t.total.0,
            match k.price {
                UsagePrice::Rate(_) => 0,
                UsagePrice::Blended { version } => version,
            },
        ])?;
    }
    let mut st = conn.prepare_cached(&format!(
        "INSERT INTO {activity} (slot, account, endpoint_id, requests, successes, \
         user_errors, errors, billable_ms, prepare_ms, duration_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
         ON CONFLICT DO UPDATE SET requests = requests + excluded.requests, \
         successes = successes + excluded.successes, \
         user_errors = user_errors + excluded.user_errors, errors = errors + excluded.errors, \
         billable_ms = billable_ms + excluded.billable_ms, \
         prepare_ms = tollgate_durations_merge(prepare_ms, excluded.prepare_ms), \
         duration_ms = tollgate_durations_merge(duration_ms, excluded.duration_ms)"
    ))?;
    for (k, t) in &d.activity {
        st.execute(params![
            k.slot.0,
            k.account.as_str(),
            k.endpoint.as_str(),
            t.requests as i64,
            t.successes as i64,
            t.user_errors as i64,
            t.errors as i64,
            t.billable_ms,
            t.prepare_ms.to_bytes(),
            t.duration_ms.to_bytes(),
        ])?;
    }
    Ok(())
}

pub(super) fn line_item_row(r: &Row) -> Result<LineItem> {
    LineItemCols::read(r)?.into_item()
}

/// Rebuilds every rollup from the line items and completed requests (the migration that
/// introduced them runs it once, over what earlier versions stored).
pub(super) fn backfill(conn: &Connection) -> Result<()> {
    let mut state = BatchState::default();
    {
        let mut st = conn.prepare(&format!(
            "SELECT {} FROM line_items",
            crate::rows::LINE_ITEM_COLS
        ))?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            state.line_items.push(line_item_row(r)?);
        }
        let mut st = conn.prepare(&format!(
            "SELECT {} FROM requests WHERE status IN ('COMPLETED', 'FAILED')",
            crate::rows::REQUEST_COLS
        ))?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let req: RequestRecord = super::request_row(r)?;
            state.completed.push(req.id.clone());
            state.requests.insert(req.id.clone(), req);
        }
    }
    let d = rollup::deltas(&state).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    write(conn, &d)
}

fn in_list(column: &str, n: usize) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" AND {column} IN ({})", vec!["?"; n].join(", "))
    }
}

/// The slots a rollup query reads, in time order.
fn slots(q: &RollupQuery) -> Vec<(Grain, Timestamp)> {
    let mut out = Vec::new();
    for (grain, from, to) in q.ranges() {
        let mut t = from;
        while t < to {
            out.push((grain, t));
            t = t.plus_ms(grain.ms());
        }
    }
    out
}

/// Usage rows of one account in [from, to), in slot order.
pub(super) fn usage(conn: &Connection, q: &RollupQuery) -> Result<Vec<(UsageKey, UsageTotals)>> {
    let mut out = Vec::new();
    for (grain, slot) in slots(q) {
        let sql = format!(
            "SELECT endpoint_id, api_key, unit, unit_price, percent_discount, quantity, \
             requests, subtotal_nanos, discount_nanos, total_nanos, blend_version FROM {} \
             WHERE slot = ? AND account = ?{}{}",
            tables(grain).0,
            in_list("endpoint_id", q.endpoints.len()),
            in_list("api_key", q.api_keys.len())
        );
        let mut args: Vec<rusqlite::types::Value> =
            vec![slot.0.into(), q.account.as_str().to_string().into()];
        args.extend(q.endpoints.iter().map(|e| e.as_str().to_string().into()));
        args.extend(q.api_keys.iter().map(|k| k.as_str().to_string().into()));
        let mut st = conn.prepare_cached(&sql)?;
        let mut rows = st.query(params_from_iter(args))?;
        while let Some(r) = rows.next()? {
            let key: String = r.get(1)?;
            let percent: String = r.get(4)?;
            out.push((
                UsageKey {
                    account: q.account.clone(),
                    slot,
                    endpoint: parse_id(EndpointId::parse, &r.get::<_, String>(0)?)?,
                    api_key: (!key.is_empty())
                        .then(|| parse_id(ApiKeyId::parse, &key))
                        .transpose()?,
                    unit: r.get(2)?,
                    price: match r.get::<_, i64>(10)? {
                        0 => UsagePrice::Rate(decimal("unit_price", &r.get::<_, String>(3)?)?),
                        version => UsagePrice::Blended { version },
                    },
                    percent_discount: (!percent.is_empty())
                        .then(|| decimal("percent_discount", &percent))
                        .transpose()?,
                },
                UsageTotals {
                    quantity: decimal("quantity", &r.get::<_, String>(5)?)?,
                    requests: r.get::<_, i64>(6)? as u64,
                    subtotal: Nanos(r.get(7)?),
                    discount: Nanos(r.get(8)?),
                    total: Nanos(r.get(9)?),
                },
            ));
        }
    }
    Ok(out)
}

/// Analytics rows of one account in [from, to), in slot order.
pub(super) fn activity(
    conn: &Connection,
    q: &RollupQuery,
) -> Result<Vec<(ActivityKey, ActivityTotals)>> {
    let mut out = Vec::new();
    for (grain, slot) in slots(q) {
        let sql = format!(
            "SELECT endpoint_id, requests, successes, user_errors, errors, billable_ms, \
             prepare_ms, duration_ms FROM {} WHERE slot = ? AND account = ?{}",
            tables(grain).1,
            in_list("endpoint_id", q.endpoints.len()),
        );
        let mut args: Vec<rusqlite::types::Value> =
            vec![slot.0.into(), q.account.as_str().to_string().into()];
        args.extend(q.endpoints.iter().map(|e| e.as_str().to_string().into()));
        let mut st = conn.prepare_cached(&sql)?;
        let mut rows = st.query(params_from_iter(args))?;
        while let Some(r) = rows.next()? {
            let durations = |i: usize| -> Result<Durations> {
                Durations::from_bytes(&r.get::<_, Vec<u8>>(i)?).map_err(|e| corrupt("durations", e))
            };
            out.push((
                ActivityKey {
                    account: q.account.clone(),
                    endpoint: parse_id(EndpointId::parse, &r.get::<_, String>(0)?)?,
                    slot,
                },
                ActivityTotals {
                    requests: r.get::<_, i64>(1)? as u64,
                    successes: r.get::<_, i64>(2)? as u64,
                    user_errors: r.get::<_, i64>(3)? as u64,
                    errors: r.get::<_, i64>(4)? as u64,
                    billable_ms: r.get(5)?,
                    prepare_ms: durations(6)?,
                    duration_ms: durations(7)?,
                },
            ));
        }
    }
    Ok(out)
}

/// One account's line items in [from, to), ordered by (billed_at, request_id), after the
/// keyset position, at most `limit`.
pub(super) fn billing_events(conn: &Connection, q: &BillingEventsQuery) -> Result<Vec<LineItem>> {
    let cols = crate::rows::LINE_ITEM_COLS
        .split(", ")
        .map(|c| format!("li.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    // By request id: through the requests table's unique index (a billed request's line item
    // carries the request's finish time), not a scan of the account's range.
    let from = if q.request_ids.is_empty() {
        "line_items li".to_string()
    } else {
        format!(
            "requests r JOIN line_items li ON li.account = r.account \
             AND li.billed_at = r.finished_at AND li.request_id = r.request_id \
             AND r.request_id IN ({})",
            vec!["?"; q.request_ids.len()].join(", ")
        )
    };
    let after = if q.after.is_some() {
        " AND (li.billed_at, li.request_id) > (?, ?)"
    } else {
        ""
    };
    let sql = format!(
        "SELECT {cols} FROM {from} WHERE li.account = ? AND li.billed_at >= ? \
         AND li.billed_at < ?{after}{}{} ORDER BY li.billed_at, li.request_id LIMIT ?",
        in_list("li.endpoint_id", q.endpoints.len()),
        in_list("li.api_key", q.api_keys.len()),
    );
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    args.extend(q.request_ids.iter().map(|r| r.as_str().to_string().into()));
    args.push(q.account.as_str().to_string().into());
    args.push(q.from.0.into());
    args.push(q.to.0.into());
    if let Some((at, id)) = &q.after {
        args.push(at.0.into());
        args.push(id.as_str().to_string().into());
    }
    args.extend(q.endpoints.iter().map(|e| e.as_str().to_string().into()));
    args.extend(q.api_keys.iter().map(|k| k.as_str().to_string().into()));
    args.push((q.limit as i64).into());
    let mut st = conn.prepare_cached(&sql)?;
    let mut rows = st.query(params_from_iter(args))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(line_item_row(r)?);
    }
    Ok(out)
}
