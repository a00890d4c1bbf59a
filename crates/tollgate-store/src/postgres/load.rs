//! Rows read into core types, by the writer's db transaction and the read connections alike.

use super::Run;
use crate::rows::{self, AccountCols, Get, KeyCols, RequestCols, ACCOUNT_COLS, REQUEST_COLS};
use crate::{corrupt, AccountRow, ApiKeyRecord, Result};
use ::postgres::Row;
use std::collections::HashMap;
use tollgate_core::catalog::{Catalog, PriceVersion};
use tollgate_core::concurrency::TIER_WINDOW_MS;
use tollgate_core::machine::{Lot, RequestRecord};
use tollgate_core::{Nanos, Timestamp};

impl Get for Row {
    fn text(&self, i: usize) -> Result<String> {
        Ok(self.try_get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>> {
        Ok(self.try_get(i)?)
    }
    /// `BIGINT` and `INTEGER` columns alike.
    fn int(&self, i: usize) -> Result<i64> {
        match *self.columns()[i].type_() {
            ::postgres::types::Type::INT4 => Ok(i64::from(self.try_get::<_, i32>(i)?)),
            _ => Ok(self.try_get(i)?),
        }
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        match *self.columns()[i].type_() {
            ::postgres::types::Type::INT4 => Ok(self.try_get::<_, Option<i32>>(i)?.map(i64::from)),
            _ => Ok(self.try_get(i)?),
        }
    }
    fn bool(&self, i: usize) -> Result<bool> {
        Ok(self.try_get(i)?)
    }
    fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>> {
        Ok(self.try_get(i)?)
    }
}

pub(super) fn request_row(r: &Row) -> Result<RequestRecord> {
    RequestCols::read(r)?.into_record()
}

pub(super) fn key_row(r: &Row) -> Result<ApiKeyRecord> {
    KeyCols::read(r)?.into_record()
}

/// The named accounts (locked when `lock`), with their open lots and paid purchases in the
/// tier window of `now`, in username order.
pub(super) fn load_accounts(
    c: &mut dyn Run,
    ids: &[&str],
    now: Timestamp,
    lock: bool,
) -> Result<Vec<AccountRow>> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    let accounts = c.rows(
        &format!(
            "SELECT {ACCOUNT_COLS} FROM accounts WHERE username = ANY($1) ORDER BY username{lock}"
        ),
        &[&ids],
    )?;
    if accounts.is_empty() {
        return Ok(Vec::new());
    }
    // One query for both: the open lots, in spending order, and the paid purchases in the
    // tier window of `now`.
    let since = now.minus_ms(TIER_WINDOW_MS).0;
    let mut lots: HashMap<String, Vec<Lot>> = HashMap::new();
    let mut paid: HashMap<String, i64> = HashMap::new();
    // A paid purchase counts toward the tier net of what was refunded and what disputes hold.
    for r in c.rows(
        "SELECT account, purchase_id, remaining_nanos, expires_at, created_at, \
         amount_nanos - refunded_nanos - disputed_nanos, paid, expiry_noticed FROM purchases \
         WHERE account = ANY($1) AND (remaining_nanos > 0 OR (paid AND created_at > $2)) \
         ORDER BY account, expires_at IS NULL, expires_at, created_at, purchase_id",
        &[&ids, &since],
    )? {
        let account: String = r.try_get(0)?;
        let remaining: i64 = r.try_get(2)?;
        let created_at: i64 = r.try_get(4)?;
        if r.try_get::<_, bool>(6)? && created_at > since {
            let sum = paid.entry(account.clone()).or_default();
            *sum = sum
                .checked_add(r.try_get(5)?)
                .ok_or_else(|| corrupt("paid purchases", "their sum overflows"))?;
        }
        if remaining > 0 {
            let pid: String = r.try_get(1)?;
            lots.entry(account).or_default().push(rows::lot(
                &pid,
                remaining,
                r.try_get(3)?,
                created_at,
                r.try_get(7)?,
            )?);
        }
    }
    accounts
        .iter()
        .map(|r| {
            let cols = AccountCols::read(r)?;
            let lots = lots.remove(&cols.username).unwrap_or_default();
            let paid_28d = Nanos(paid.get(&cols.username).copied().unwrap_or(0));
            cols.into_row(lots, paid_28d, now)
        })
        .collect()
}

pub(super) fn load_requests(c: &mut dyn Run, ids: &[&str]) -> Result<Vec<RequestRecord>> {
    c.rows(
        &format!("SELECT {REQUEST_COLS} FROM requests WHERE request_id = ANY($1)"),
        &[&ids],
    )?
    .iter()
    .map(request_row)
    .collect()
}

pub(super) fn setting(c: &mut dyn Run, key: &str) -> Result<Option<String>> {
    match c
        .rows("SELECT value FROM settings WHERE key = $1", &[&key])?
        .first()
    {
        Some(r) => Ok(Some(r.try_get(0)?)),
        None => Ok(None),
    }
}

pub(super) fn price_versions(c: &mut dyn Run) -> Result<Vec<PriceVersion>> {
    c.rows(rows::PRICE_VERSION_SQL, &[])?
        .iter()
        .map(|r| {
            rows::price_version(
                r.try_get(0)?,
                r.try_get(1)?,
                r.try_get(2)?,
                r.try_get(3)?,
                r.try_get(4)?,
            )
        })
        .collect()
}

pub(super) fn load_catalog(c: &mut dyn Run) -> Result<Catalog> {
    let defs = c
        .rows("SELECT def FROM endpoints", &[])?
        .iter()
        .map(|r| Ok(r.try_get(0)?))
        .collect::<Result<Vec<String>>>()?;
    let settings = c
        .rows("SELECT key, value FROM settings", &[])?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<HashMap<String, String>>>()?;
    rows::catalog(defs, price_versions(c)?, &settings)
}
