//! Line items on their way to the table clustered by account: a batch appends the scattered
//! ones to `line_items_recent`, and they are moved into `line_items_by_account` together, by
//! the batch that fills the recent table or, sooner, between batches when the write path is
//! idle.

use crate::rows::{self, LineItemCols};
use crate::Result;
use rusqlite::{params, Connection};
use tollgate_core::machine::LineItem;

/// How many line items `line_items_recent` holds before a batch moves them into
/// `line_items_by_account`. A batch spread over many accounts adds one or two line items per
/// account, and inserting them into the account-clustered table directly dirties a page per
/// account; moved together, each account's page takes dozens. A billing-events read scans the
/// recent table, so this also bounds what such a read scans beyond its own rows.
const RECENT_LINE_ITEMS: i64 = 20_000;

/// How many recent line items the store moves when the write path is idle
/// ([`Store::idle`](crate::Store::idle)): a few milliseconds' work.
const IDLE_RECENT_LINE_ITEMS: i64 = 2_000;

/// How many line items of one account a batch must hold to append them to the account's range
/// directly: about a page's worth.
const DENSE_LINE_ITEMS: usize = 8;

/// Moves every recent line item into the table clustered by account, in key order; in the
/// caller's transaction (a batch's, or the idle move's), so a reader sees each line item on
/// exactly one side.
fn move_line_items(c: &Connection) -> Result<()> {
    let cols = rows::LINE_ITEM_COLS;
    c.prepare_cached(&format!(
        "INSERT INTO line_items_by_account ({cols}) SELECT {cols} FROM line_items_recent \
         ORDER BY account, billed_at, request_id"
    ))?
    .execute([])?;
    c.prepare_cached("DELETE FROM line_items_recent")?
        .execute([])?;
    Ok(())
}

/// How many line items `line_items_recent` holds: two seeks (SQLite reads MIN or MAX off the
/// rowid B-tree only when each is a query of its own; both in one query scan the table).
fn recent_line_items(c: &Connection) -> Result<i64> {
    Ok(c.prepare_cached(
        "SELECT COALESCE((SELECT MAX(id) FROM line_items_recent) \
         - (SELECT MIN(id) FROM line_items_recent) + 1, 0)",
    )?
    .query_row([], |r| r.get(0))?)
}

/// Moves the recent line items into the table clustered by account once there are
/// [`IDLE_RECENT_LINE_ITEMS`], so that under light load the move is small and falls between
/// batches instead of inside one.
pub(super) fn move_when_idle(conn: &mut Connection) -> Result<()> {
    // Counted outside a transaction, so an idle moment with nothing to move takes no write
    // lock; only this connection writes the table, so the count still holds inside it.
    if recent_line_items(conn)? < IDLE_RECENT_LINE_ITEMS {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    move_line_items(&tx)?;
    Ok(tx.commit()?)
}

/// Appends a batch's line items: those of an account with a page's worth in the batch to its
/// range directly, the others to the recent table.
pub(super) fn append(c: &Connection, line_items: &[LineItem]) -> Result<()> {
    // An account with a page's worth of line items in this batch has them appended to its
    // range directly; the others go to the last pages of the recent table, and are moved to
    // theirs once there are enough of them (see `move_line_items`).
    let insert = |table: &str| {
        c.prepare_cached(&format!(
            "INSERT INTO {table} ({}) VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            rows::LINE_ITEM_COLS
        ))
    };
    let (mut direct, mut recent) = (
        insert("line_items_by_account")?,
        insert("line_items_recent")?,
    );
    let mut items: Vec<&LineItem> = line_items.iter().collect();
    items.sort_unstable_by(|a, b| {
        (&a.account, a.billed_at, &a.request_id).cmp(&(&b.account, b.billed_at, &b.request_id))
    });
    for run in items.chunk_by(|a, b| a.account == b.account) {
        let st = if run.len() >= DENSE_LINE_ITEMS {
            &mut direct
        } else {
            &mut recent
        };
        for l in run.iter().map(|l| LineItemCols::of(l)) {
            st.execute(params![
                l.request_id,
                l.account,
                l.endpoint_id,
                l.api_key,
                l.price_version,
                l.unit,
                l.quantity,
                l.unit_price,
                l.percent_discount,
                l.subtotal,
                l.discount,
                l.total,
                l.status_code,
                l.billed_at,
                l.queue_ms,
                l.inference_ms
            ])?;
        }
    }
    Ok(())
}

/// Moves the recent line items, in the batch's transaction, once the recent table holds
/// [`RECENT_LINE_ITEMS`].
pub(super) fn move_if_full(c: &Connection) -> Result<()> {
    if recent_line_items(c)? >= RECENT_LINE_ITEMS {
        move_line_items(c)?;
    }
    Ok(())
}
