//! Rows read into core types, by the writer's db transaction and the read connections alike.

use super::account_cache::PaidPurchases;
use crate::rows::{self, AccountCols, Get, KeyCols, RequestCols, ACCOUNT_COLS, REQUEST_COLS};
use crate::{parse_id, AccountRow, ApiKeyRecord, Result};
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::collections::HashMap;
use tollgate_core::catalog::{Catalog, PriceVersion};
use tollgate_core::concurrency::TIER_WINDOW_MS;
use tollgate_core::ids::{AccountId, PurchaseId, RequestId};
use tollgate_core::machine::{Lot, RequestRecord};
use tollgate_core::{Nanos, Timestamp};

/// Paid purchases of the account within the tier window of `now`, each net of what was
/// refunded and what disputes hold of it.
pub(super) fn recent_paid(
    conn: &Connection,
    account: &str,
    now: Timestamp,
) -> Result<PaidPurchases> {
    let mut st = conn.prepare_cached(
        "SELECT created_at, purchase_id, amount_nanos - refunded_nanos - disputed_nanos \
         FROM purchases WHERE account = ?1 AND paid = 1 AND created_at > ?2",
    )?;
    let mut rows = st.query(params![account, now.minus_ms(TIER_WINDOW_MS).0])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push((
            Timestamp(r.get(0)?),
            parse_id(PurchaseId::parse, &r.get::<_, String>(1)?)?,
            Nanos(r.get(2)?),
        ));
    }
    Ok(out)
}

impl Get for Row<'_> {
    fn text(&self, i: usize) -> Result<String> {
        Ok(self.get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>> {
        Ok(self.get(i)?)
    }
    fn int(&self, i: usize) -> Result<i64> {
        Ok(self.get(i)?)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        Ok(self.get(i)?)
    }
    fn bool(&self, i: usize) -> Result<bool> {
        Ok(self.get(i)?)
    }
    fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>> {
        Ok(self.get(i)?)
    }
}

/// The account's lots with something left, in spending order.
pub(super) fn open_lots(conn: &Connection, account: &str) -> Result<Vec<Lot>> {
    let mut st = conn.prepare_cached(
        "SELECT purchase_id, remaining_nanos, expires_at, created_at, expiry_noticed \
         FROM purchases \
         WHERE account = ?1 AND remaining_nanos > 0 \
         ORDER BY expires_at IS NULL, expires_at, created_at, purchase_id",
    )?;
    let mut rows = st.query([account])?;
    let mut lots = Vec::new();
    while let Some(r) = rows.next()? {
        lots.push(rows::lot(
            &r.get::<_, String>(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
        )?);
    }
    Ok(lots)
}

/// The account and its paid purchases in the tier window of `now`.
pub(super) fn load_account(
    conn: &Connection,
    id: &AccountId,
    now: Timestamp,
) -> Result<Option<(AccountRow, PaidPurchases)>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {ACCOUNT_COLS} FROM accounts WHERE username = ?1"
    ))?;
    let mut rows = st.query([id.as_str()])?;
    match rows.next()? {
        Some(r) => {
            let recent = recent_paid(conn, id.as_str(), now)?;
            let paid_28d = Nanos(recent.iter().map(|(_, _, n)| n.0).sum());
            let row =
                AccountCols::read(r)?.into_row(open_lots(conn, id.as_str())?, paid_28d, now)?;
            Ok(Some((row, recent)))
        }
        None => Ok(None),
    }
}

pub(super) fn get_account(
    conn: &Connection,
    id: &AccountId,
    now: Timestamp,
) -> Result<Option<AccountRow>> {
    Ok(load_account(conn, id, now)?.map(|(row, _)| row))
}

pub(super) fn request_row(r: &Row) -> Result<RequestRecord> {
    RequestCols::read(r)?.into_record()
}

pub(super) fn get_request(conn: &Connection, id: &RequestId) -> Result<Option<RequestRecord>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {REQUEST_COLS} FROM requests WHERE request_id = ?1"
    ))?;
    let mut rows = st.query([id.as_str()])?;
    match rows.next()? {
        Some(r) => Ok(Some(request_row(r)?)),
        None => Ok(None),
    }
}

pub(super) fn key_row(r: &Row) -> Result<ApiKeyRecord> {
    KeyCols::read(r)?.into_record()
}

pub(super) fn setting(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT value FROM settings WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

pub(super) fn price_versions(conn: &Connection) -> Result<Vec<PriceVersion>> {
    let mut st = conn.prepare_cached(rows::PRICE_VERSION_SQL)?;
    let mut rows = st.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(rows::price_version(
            r.get(0)?,
            &r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?.as_deref(),
            r.get(3)?,
            &r.get::<_, String>(4)?,
        )?);
    }
    Ok(out)
}

pub(super) fn load_catalog(conn: &Connection) -> Result<Catalog> {
    let defs = conn
        .prepare_cached("SELECT def FROM endpoints")?
        .query_map([], |r| r.get(0))?
        .collect::<std::result::Result<Vec<String>, _>>()?;
    let settings = conn
        .prepare_cached("SELECT key, value FROM settings")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<std::result::Result<HashMap<String, String>, _>>()?;
    rows::catalog(defs, price_versions(conn)?, &settings)
}
