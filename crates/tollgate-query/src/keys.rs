//! Key lists, oldest first: fal's `GET /keys` (an account's live `API` keys), and the
//! operator's lists of every key of an account or of the platform, revoked ones too.

use crate::cursor::{Cursor, Page};
use crate::QueryError;
use serde::{Deserialize, Serialize};
use tollgate_core::ids::AccountId;
use tollgate_engine::Engine;
use tollgate_store::{ApiKeyRecord, Scope};

/// The keyset position of a page: the last key shown, by `(created_at, key_id)`, the order the
/// list is in. Paging never repeats a key and skips none that existed when the first page was
/// read; a key created meanwhile appears on a later page (unless created within the same
/// millisecond as the last key shown and sorting before it by id).
#[derive(Serialize, Deserialize)]
struct After {
    created_at: i64,
    key_id: String,
}

/// One page of the account's live `API` keys (the only scope fal's key API manages).
pub async fn api_keys(
    engine: &Engine,
    account: &AccountId,
    cursor: Option<&Cursor>,
    limit: usize,
) -> Result<Page<ApiKeyRecord>, QueryError> {
    let after: Option<After> = Cursor::key(cursor)?;
    let id = account.clone();
    // The store lists an account's keys by (created_at, key_id): the order pages follow.
    let keys = engine.read(move |r| r.api_keys(&id)).await?;
    Ok(Page::of(
        keys.into_iter()
            .filter(|k| k.scope == Scope::Api && k.revoked_at.is_none())
            .filter(|k| {
                after.as_ref().is_none_or(|a| {
                    (k.created_at.0, k.key_id.as_str()) > (a.created_at, a.key_id.as_str())
                })
            }),
        limit,
        |last| After {
            created_at: last.created_at.0,
            key_id: last.key_id.to_string(),
        },
    ))
}

/// Whose keys an operator lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyOwner {
    /// A customer account's keys, of both scopes.
    Account(AccountId),
    /// The platform's operator keys.
    Operator,
}

/// One page of every key of `owner`, of every scope, revoked ones too, oldest first, with the
/// same keyset paging as [`api_keys`]. An unknown account is [`QueryError::UnknownAccount`].
pub async fn all_keys(
    engine: &Engine,
    owner: &KeyOwner,
    cursor: Option<&Cursor>,
    limit: usize,
) -> Result<Page<ApiKeyRecord>, QueryError> {
    let after: Option<After> = Cursor::key(cursor)?;
    let keys = match owner {
        KeyOwner::Account(account) => {
            crate::account(engine, account).await?;
            let id = account.clone();
            engine.read(move |r| r.api_keys(&id)).await?
        }
        KeyOwner::Operator => engine.read(|r| r.operator_keys()).await?,
    };
    Ok(Page::of(
        keys.into_iter().filter(|k| {
            after.as_ref().is_none_or(|a| {
                (k.created_at.0, k.key_id.as_str()) > (a.created_at, a.key_id.as_str())
            })
        }),
        limit,
        |last| After {
            created_at: last.created_at.0,
            key_id: last.key_id.to_string(),
        },
    ))
}
