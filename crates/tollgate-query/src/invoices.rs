//! Invoices, newest (last issued) first, with keyset paging: an account's own (the customer's
//! read) or anyone's (the operator's), filtered by status and kind; one invoice by its id.

use crate::cursor::{Cursor, Page};
use crate::QueryError;
use tollgate_core::ids::AccountId;
use tollgate_core::machine::{InvoiceKind, InvoiceStatus};
use tollgate_engine::Engine;
use tollgate_store::{InvoiceRecord, InvoicesQuery, Issuer};

/// Which invoices a list shows.
#[derive(Clone, Debug, Default)]
pub struct InvoiceFilter {
    pub account: Option<AccountId>,
    pub status: Option<InvoiceStatus>,
    pub kind: Option<InvoiceKind>,
}

/// One page of the invoices `filter` matches, newest first. The cursor is the last invoice's
/// `(year, seq)`: numbers only grow, so a page never repeats or skips one.
pub async fn list(
    engine: &Engine,
    filter: InvoiceFilter,
    cursor: Option<&Cursor>,
    limit: usize,
) -> Result<Page<InvoiceRecord>, QueryError> {
    let before: Option<(i64, i64)> = Cursor::key(cursor)?;
    let q = InvoicesQuery {
        account: filter.account,
        status: filter.status,
        kind: filter.kind,
        before,
        limit: limit.saturating_add(1),
    };
    let rows = engine.read(move |r| r.invoices(&q)).await?;
    Ok(Page::of(rows, limit, |i| (i.year, i.seq)))
}

/// The invoice `invoice_id` names, if it exists and (when `account` is given) is that
/// account's: another account's invoice is not found.
pub async fn show(
    engine: &Engine,
    account: Option<&AccountId>,
    invoice_id: &str,
) -> Result<Option<InvoiceRecord>, QueryError> {
    let Some((year, seq)) = InvoiceRecord::parse_id(invoice_id) else {
        return Ok(None);
    };
    let found = engine.read(move |r| r.invoice(year, seq)).await?;
    // Only the id as issued names it (not another spelling of the same digits).
    Ok(found.filter(|i| i.invoice_id() == invoice_id && account.is_none_or(|a| &i.account == a)))
}

/// The issuer printed on invoices, if one was set.
pub async fn issuer(engine: &Engine) -> Result<Option<Issuer>, QueryError> {
    Ok(engine.read(|r| r.issuer()).await?)
}
