//! An account's payment history: its paid purchases (free credits are grants, not payments),
//! newest first, each with the top-up invoice issued in its commit, with keyset paging.

use crate::cursor::{Cursor, Page};
use crate::QueryError;
use tollgate_core::ids::AccountId;
use tollgate_engine::Engine;
use tollgate_store::{PaymentRecord, PaymentsQuery};

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
