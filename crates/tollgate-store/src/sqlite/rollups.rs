//! The rollups and line items behind the customer-facing reads: written by the batch that
//! bills, read by usage, billing events, analytics and estimates.
//!
//! Rollup rows are added to with `INSERT ... ON CONFLICT DO UPDATE`; the two figures SQL cannot
//! add exactly (decimal quantities, duration histograms) are added by functions registered on
//! every connection, which call the core's own addition.

use crate::rows::LineItemCols;
use crate::{corrupt, decimal, parse_id};
use crate::{
    BillingEventsQuery, Result, RollupQuery, RollupRows, StoreError, SETTING_FOLDED_BEFORE,
};
use rusqlite::functions::{Aggregate, Context, FunctionFlags};
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
    conn.create_aggregate_function("tollgate_dec_sum", 1, flags, DecimalSum)?;
    conn.create_aggregate_function("tollgate_durations_sum", 1, flags, DurationsSum)?;
    Ok(())
}

/// `tollgate_dec_sum(x)`: the exact sum of decimal texts, as `tollgate_dec_add` adds two.
struct DecimalSum;

impl Aggregate<Decimal, String> for DecimalSum {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<Decimal> {
        Ok(Decimal::ZERO)
    }

    fn step(&self, ctx: &mut Context<'_>, sum: &mut Decimal) -> rusqlite::Result<()> {
        let s: String = ctx.get(0)?;
        let v = Decimal::from_str(&s).map_err(|e| rusqlite::Error::UserFunctionError(e.into()))?;
        *sum = sum
            .checked_add(v)
            .ok_or_else(|| rusqlite::Error::UserFunctionError("decimal overflow".into()))?;
        Ok(())
    }

    fn finalize(&self, _: &mut Context<'_>, sum: Option<Decimal>) -> rusqlite::Result<String> {
        Ok(sum.unwrap_or_default().normalize().to_string())
    }
}

/// `tollgate_durations_sum(h)`: histograms merged, as `tollgate_durations_merge` merges two.
struct DurationsSum;

impl Aggregate<Durations, Vec<u8>> for DurationsSum {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<Durations> {
        Ok(Durations::new())
    }

    fn step(&self, ctx: &mut Context<'_>, sum: &mut Durations) -> rusqlite::Result<()> {
        let b: Vec<u8> = ctx.get(0)?;
        let d =
            Durations::from_bytes(&b).map_err(|e| rusqlite::Error::UserFunctionError(e.into()))?;
        sum.merge(&d);
        Ok(())
    }

    fn finalize(&self, _: &mut Context<'_>, sum: Option<Durations>) -> rusqlite::Result<Vec<u8>> {
        Ok(sum.unwrap_or_default().to_bytes())
    }
}

/// The tables of a grain.
fn tables(grain: Grain) -> (&'static str, &'static str) {
    match grain {
        Grain::Minute => ("usage_minutes", "activity_minutes"),
        Grain::Hour => ("usage_hours", "activity_hours"),
    }
}

/// Adds a batch's rollup deltas (per minute) to their minute rows, and to their hour rows
/// where the minute is already folded (before `folded_before`, see [`SETTING_FOLDED_BEFORE`]).
pub(super) fn write(conn: &Connection, minutes: &Deltas, folded_before: Timestamp) -> Result<()> {
    let hours = minutes
        .coarsen_before(Grain::Hour, folded_before)
        .map_err(|e| StoreError::database(e.to_string(), e))?;
    write_grain(conn, Grain::Minute, minutes)?;
    write_grain(conn, Grain::Hour, &hours)
}

/// What a usage row upsert adds to the row already there.
const ADD_USAGE: &str = "ON CONFLICT DO UPDATE SET \
     quantity = tollgate_dec_add(quantity, excluded.quantity), \
     requests = requests + excluded.requests, \
     subtotal_nanos = subtotal_nanos + excluded.subtotal_nanos, \
     discount_nanos = discount_nanos + excluded.discount_nanos, \
     total_nanos = total_nanos + excluded.total_nanos";

/// What an activity row upsert adds to the row already there.
const ADD_ACTIVITY: &str = "ON CONFLICT DO UPDATE SET requests = requests + excluded.requests, \
     successes = successes + excluded.successes, \
     user_errors = user_errors + excluded.user_errors, errors = errors + excluded.errors, \
     billable_ms = billable_ms + excluded.billable_ms, \
     prepare_ms = tollgate_durations_merge(prepare_ms, excluded.prepare_ms), \
     duration_ms = tollgate_durations_merge(duration_ms, excluded.duration_ms)";

/// The start of the hour of a slot, in SQL (floored, also before the epoch).
const HOUR_OF_SLOT: &str = "(slot - ((slot % 3600000) + 3600000) % 3600000)";

/// Folds the minutes that ended by `now` into their hour rows (added to what the hour rows
/// hold) and moves [`SETTING_FOLDED_BEFORE`] to the current minute. Returns the setting's
/// value.
///
/// A batch adds its deltas to hour rows only for minutes already folded (a late usage event),
/// so for the current minute it writes minute rows alone, not minute and hour rows; the first
/// batch of the next minute folds them, once (a minute's rows: one per account and key that
/// billed in it). Readers add an hour's minutes not folded yet to its hour row.
pub(super) fn fold_minutes(conn: &Connection, now: Timestamp) -> Result<Timestamp> {
    let folded = crate::folded_before(super::setting(conn, SETTING_FOLDED_BEFORE)?)?;
    let current = Grain::Minute.slot_of(now);
    if current <= folded {
        return Ok(folded);
    }
    conn.prepare_cached(&format!(
        "INSERT INTO usage_hours (slot, account, endpoint_id, api_key, unit, unit_price, \
         blend_version, percent_discount, quantity, requests, subtotal_nanos, discount_nanos, \
         total_nanos) \
         SELECT {HOUR_OF_SLOT} AS hour, account, endpoint_id, api_key, unit, unit_price, \
         blend_version, percent_discount, tollgate_dec_sum(quantity), SUM(requests), \
         SUM(subtotal_nanos), SUM(discount_nanos), SUM(total_nanos) FROM usage_minutes \
         WHERE slot >= ?1 AND slot < ?2 GROUP BY hour, account, endpoint_id, api_key, unit, \
         unit_price, blend_version, percent_discount {ADD_USAGE}"
    ))?
    .execute(params![folded.0, current.0])?;
    conn.prepare_cached(&format!(
        "INSERT INTO activity_hours (slot, account, endpoint_id, requests, successes, \
         user_errors, errors, billable_ms, prepare_ms, duration_ms) \
         SELECT {HOUR_OF_SLOT} AS hour, account, endpoint_id, SUM(requests), SUM(successes), \
         SUM(user_errors), SUM(errors), SUM(billable_ms), tollgate_durations_sum(prepare_ms), \
         tollgate_durations_sum(duration_ms) FROM activity_minutes \
         WHERE slot >= ?1 AND slot < ?2 GROUP BY hour, account, endpoint_id {ADD_ACTIVITY}"
    ))?
    .execute(params![folded.0, current.0])?;
    conn.prepare_cached(
        "INSERT INTO settings (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![SETTING_FOLDED_BEFORE, current.0.to_string()])?;
    Ok(current)
}

fn write_grain(conn: &Connection, grain: Grain, d: &Deltas) -> Result<()> {
    let (usage, activity) = tables(grain);
    let mut st = conn.prepare_cached(&format!(
        "INSERT INTO {usage} (slot, account, endpoint_id, api_key, unit, unit_price, \
         blend_version, percent_discount, quantity, requests, subtotal_nanos, discount_nanos, \
         total_nanos) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?13, ?7, ?8, ?9, ?10, ?11, ?12) \
         {ADD_USAGE}"
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
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) {ADD_ACTIVITY}"
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
    // Into the hour rows too: migration 0003, which comes after, marks these minutes folded.
    write(conn, &d, crate::ALL_FOLDED)
}

/// `AND column IN (?first, ...)`: `n` parameters numbered from `first`.
fn in_list_from(column: &str, first: usize, n: usize) -> String {
    if n == 0 {
        String::new()
    } else {
        let params: Vec<String> = (first..first + n).map(|i| format!("?{i}")).collect();
        format!(" AND {column} IN ({})", params.join(", "))
    }
}

/// The endpoint and key filters of a read (`AND {prefix}endpoint_id IN (...) AND
/// {prefix}api_key IN (...)`, each only if asked), numbered after the parameters already in
/// `args`, whose values it appends.
fn endpoint_key_filters(
    prefix: &str,
    endpoints: &[EndpointId],
    keys: &[ApiKeyId],
    args: &mut Vec<rusqlite::types::Value>,
) -> String {
    let first = args.len() + 1;
    let sql = format!(
        "{}{}",
        in_list_from(&format!("{prefix}endpoint_id"), first, endpoints.len()),
        in_list_from(
            &format!("{prefix}api_key"),
            first + endpoints.len(),
            keys.len()
        )
    );
    args.extend(endpoints.iter().map(|e| e.as_str().to_string().into()));
    args.extend(keys.iter().map(|k| k.as_str().to_string().into()));
    sql
}

/// One slot of a rollup read of one account: where its rows come from, and the parameters of
/// its SQL: `?1` the slot, `?2` the account, for an open hour `?3` the first minute not
/// folded, then the values of `filters` (the query's endpoints, and its keys if asked; and
/// its service, which takes no parameter).
struct SlotRead {
    rows: RollupRows,
    slot: Timestamp,
    filters: String,
    args: Vec<rusqlite::types::Value>,
}

/// The slots a rollup query reads, in time order. The caller runs them in one read
/// transaction with this: a fold committed in between would count its minutes twice.
fn slot_reads(conn: &Connection, q: &RollupQuery, by_key: bool) -> Result<Vec<SlotRead>> {
    let folded = crate::folded_before(super::setting(conn, SETTING_FOLDED_BEFORE)?)?;
    let keys = if by_key { q.api_keys.as_slice() } else { &[] };
    let mut out = Vec::new();
    for (rows, from, to) in q.ranges(folded) {
        let mut t = from;
        while t < to {
            let mut args: Vec<rusqlite::types::Value> =
                vec![t.0.into(), q.account.as_str().to_string().into()];
            if rows == RollupRows::OpenHours {
                args.push(folded.0.into());
            }
            let filters = endpoint_key_filters("", &q.endpoints, keys, &mut args)
                + &crate::rows::service_filter("endpoint_id", q.service);
            out.push(SlotRead {
                rows,
                slot: t,
                filters,
                args,
            });
            t = t.plus_ms(rows.grain().ms());
        }
    }
    Ok(out)
}

/// The rows of one slot of one account, `filters` applied (`WHERE slot = ?1 AND account = ?2
/// ...`); for an open hour, its hour row and its minute rows from `?3` (the first not folded),
/// summed (`sums`) per `group`, in `group` order, the order of the hour table's key.
fn slot_rows_sql(
    rows: RollupRows,
    table: &str,
    cols: &str,
    sums: &str,
    filters: &str,
    group: &str,
) -> String {
    match rows {
        RollupRows::Minutes => {
            format!("SELECT {cols} FROM {table}_minutes WHERE slot = ?1 AND account = ?2{filters}")
        }
        RollupRows::Hours => {
            format!("SELECT {cols} FROM {table}_hours WHERE slot = ?1 AND account = ?2{filters}")
        }
        RollupRows::OpenHours => format!(
            "WITH RECURSIVE hour_minutes(minute) AS (SELECT MAX(?1, ?3) UNION ALL \
             SELECT minute + 60000 FROM hour_minutes WHERE minute + 60000 < ?1 + 3600000), \
             parts AS (SELECT {cols} FROM {table}_hours \
               WHERE slot = ?1 AND account = ?2{filters} \
             UNION ALL SELECT {cols} FROM hour_minutes JOIN {table}_minutes ON slot = minute \
               WHERE account = ?2{filters}) \
             SELECT {sums} FROM parts GROUP BY {group} ORDER BY {group}"
        ),
    }
}

/// The SQL of one slot of a usage read (see [`slot_rows_sql`]).
fn usage_sql(rows: RollupRows, filters: &str) -> String {
    slot_rows_sql(
        rows,
        "usage",
        "endpoint_id, api_key, unit, unit_price, percent_discount, quantity, requests, \
         subtotal_nanos, discount_nanos, total_nanos, blend_version",
        "endpoint_id, api_key, unit, unit_price, percent_discount, \
         tollgate_dec_sum(quantity), SUM(requests), SUM(subtotal_nanos), \
         SUM(discount_nanos), SUM(total_nanos), blend_version",
        filters,
        "endpoint_id, api_key, unit, unit_price, blend_version, percent_discount",
    )
}

/// The statements a usage read of `q` runs, with their parameters, in order.
pub(crate) fn usage_statements(
    conn: &Connection,
    q: &RollupQuery,
) -> Result<Vec<(String, Vec<rusqlite::types::Value>)>> {
    Ok(slot_reads(conn, q, true)?
        .into_iter()
        .map(|s| (usage_sql(s.rows, &s.filters), s.args))
        .collect())
}

/// Usage rows of one account in [from, to), in slot order.
pub(super) fn usage(conn: &Connection, q: &RollupQuery) -> Result<Vec<(UsageKey, UsageTotals)>> {
    let mut out = Vec::new();
    for SlotRead {
        rows,
        slot,
        filters,
        args,
    } in slot_reads(conn, q, true)?
    {
        let sql = usage_sql(rows, &filters);
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
    for SlotRead {
        rows,
        slot,
        filters,
        args,
    } in slot_reads(conn, q, false)?
    {
        let sql = slot_rows_sql(
            rows,
            "activity",
            "endpoint_id, requests, successes, user_errors, errors, billable_ms, prepare_ms, \
             duration_ms",
            "endpoint_id, SUM(requests), SUM(successes), SUM(user_errors), SUM(errors), \
             SUM(billable_ms), tollgate_durations_sum(prepare_ms), \
             tollgate_durations_sum(duration_ms)",
            &filters,
            "endpoint_id",
        );
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
/// keyset position, at most `limit` (newest first: the reverse order, before the position):
/// the first `limit` of the account's range in the table clustered by account, with the recent
/// line items not moved there yet (a scan of at most about `RECENT_LINE_ITEMS`), merged.
pub(super) fn billing_events(conn: &Connection, q: &BillingEventsQuery) -> Result<Vec<LineItem>> {
    let cols = crate::rows::LINE_ITEM_COLS
        .split(", ")
        .map(|c| format!("li.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    // ?1 the account, ?2 and ?3 the time range, ?4 the limit, then the keyset position, the
    // request ids, the endpoints and the keys; both sides use the same parameters.
    let mut args: Vec<rusqlite::types::Value> = vec![
        q.account.as_str().to_string().into(),
        q.from.0.into(),
        q.to.0.into(),
        (q.limit as i64).into(),
    ];
    let (beyond, order) = if q.newest_first {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    let after = if let Some((at, id)) = &q.after {
        args.push(at.0.into());
        args.push(id.as_str().to_string().into());
        format!(" AND (li.billed_at, li.request_id) {beyond} (?5, ?6)")
    } else {
        String::new()
    };
    let ids_from = args.len() + 1;
    args.extend(q.request_ids.iter().map(|r| r.as_str().to_string().into()));
    // Model billing events only: serverless lines are read by their own reads.
    let filters = endpoint_key_filters("li.", &q.endpoints, &q.api_keys, &mut args)
        + &crate::rows::service_filter("li.endpoint_id", Some(crate::Service::Models));
    // By request id, the clustered side goes through the requests table's unique index (a
    // billed request's line item carries the request's finish time), not a scan of the
    // account's range: CROSS JOIN makes SQLite's planner keep that order.
    let by_account = if q.request_ids.is_empty() {
        "line_items_by_account li".to_string()
    } else {
        format!(
            "requests r CROSS JOIN line_items_by_account li ON li.account = r.account \
             AND li.billed_at = r.finished_at AND li.request_id = r.request_id{}",
            in_list_from("r.request_id", ids_from, q.request_ids.len())
        )
    };
    let recent_ids = in_list_from("li.request_id", ids_from, q.request_ids.len());
    let range = "li.account = ?1 AND li.billed_at >= ?2 AND li.billed_at < ?3";
    let sql = format!(
        "SELECT * FROM (SELECT {cols} FROM {by_account} WHERE {range}{after}{filters} \
           ORDER BY li.billed_at {order}, li.request_id {order} LIMIT ?4) \
         UNION ALL \
         SELECT {cols} FROM line_items_recent li WHERE {range}{after}{recent_ids}{filters} \
         ORDER BY billed_at {order}, request_id {order} LIMIT ?4"
    );
    let mut st = conn.prepare_cached(&sql)?;
    let mut rows = st.query(params_from_iter(args))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(line_item_row(r)?);
    }
    Ok(out)
}
