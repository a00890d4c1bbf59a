//! An account's payment history: its paid purchases (free credits are grants, not payments),
//! newest first, each with the top-up invoice issued in its commit, with keyset paging; and
//! one purchase, paid or free, found by when it was made and its id.

use crate::cursor::{Cursor, Page};
use crate::QueryError;
use tollgate_core::ids::{AccountId, PurchaseId};
use tollgate_core::Timestamp;
use tollgate_engine::Engine;
use tollgate_store::{PaymentRecord, PaymentsQuery, PurchaseEntry, PurchasesQuery};

/// One page of `account`'s payments, newest first. The cursor is the last payment's
/// `(created_at, purchase_id)`, a unique key of the account's purchases, so a page never
/// repeats or skips one.
pub async fn list(
    engine: &Engine,
    account: AccountId,
    cursor: Option<&Cursor>,
    limit: usize,
) -> Result<Page<PaymentRecord>, QueryError> {
    let before: Option<(i64, String)> = Cursor::key(cursor)?;
    let q = PaymentsQuery {
        account,
        before,
        limit: limit.saturating_add(1),
    };
    let rows = engine.read(move |r| r.payments(&q)).await?;
    Ok(Page::of(rows, limit, |p| {
        (p.created_at.0, p.purchase_id.as_str().to_string())
    }))
}

/// Purchases read at once while looking for one made at a given millisecond.
const SAME_TIME_PAGE: usize = 100;

/// `account`'s purchase `purchase_id` (paid, or a free grant) made at `created_at`, as stored;
/// `None` when the account made no such purchase then. A seek in the account's purchases by
/// time: the purchases of that one millisecond, by id.
pub async fn purchase(
    engine: &Engine,
    account: AccountId,
    created_at: Timestamp,
    purchase_id: PurchaseId,
) -> Result<Option<PurchaseEntry>, QueryError> {
    let mut after = None;
    loop {
        let q = PurchasesQuery {
            account: account.clone(),
            from: created_at,
            to: created_at.plus_ms(1),
            after,
            limit: SAME_TIME_PAGE,
        };
        let rows = engine.read(move |r| r.purchases(&q)).await?;
        let full = rows.len() == SAME_TIME_PAGE;
        let last = rows
            .last()
            .map(|p| (p.created_at.0, p.purchase_id.as_str().to_string()));
        if let Some(found) = rows.into_iter().find(|p| p.purchase_id == purchase_id) {
            return Ok(Some(found));
        }
        match last {
            Some(key) if full => after = Some(key),
            _ => return Ok(None),
        }
    }
}
