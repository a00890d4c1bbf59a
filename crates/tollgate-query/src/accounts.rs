//! The operator's list of accounts: by username, optionally those starting with a prefix,
//! in pages.

use crate::cursor::{Cursor, Page};
use crate::QueryError;
use tollgate_core::ids::AccountId;
use tollgate_engine::Engine;
use tollgate_store::{AccountRow, AccountsQuery};

/// One page of the accounts whose username starts with `prefix` (every account when it is
/// empty), in username order (bytewise), each as [`crate::account`] reads it. Paging is keyset
/// by username: an account created meanwhile shows on a later page if its name sorts after the
/// last one shown.
pub async fn list(
    engine: &Engine,
    prefix: &str,
    cursor: Option<&Cursor>,
    limit: usize,
) -> Result<Page<AccountRow>, QueryError> {
    let after: Option<String> = Cursor::key(cursor)?;
    let after = after
        .map(|a| AccountId::parse(&a).map_err(|_| QueryError::BadCursor))
        .transpose()?;
    let q = AccountsQuery {
        prefix: prefix.to_string(),
        after,
        // One more than shown tells whether another page follows.
        limit: limit.saturating_add(1),
    };
    let now = engine.now();
    let rows = engine.read(move |r| r.accounts(&q, now)).await?;
    Ok(Page::of(rows, limit, |last| {
        last.state.credit.id.as_str().to_string()
    }))
}
