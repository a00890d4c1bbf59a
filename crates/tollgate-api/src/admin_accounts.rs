//! The operator's list of accounts (docs/reference/API.md section 9): search by username
//! prefix, keyset paging, each with its balance and lock state.

use crate::admin::{Billing, Standing};
use crate::error::ApiError;
use crate::extract::{FromQuery, Operator, Page, Paged, Params};
use crate::openapi::{tags, OperatorErrors};
use crate::platform::paging;
use crate::query_string::Query;
use crate::wire::Time;
use crate::AppState;
use axum::extract::State;
use serde::Serialize;
use tollgate_core::ids::AccountId;
use tollgate_store::AccountRow;
use utoipa::{IntoParams, ToSchema};

/// The longest `q`: a username's longest.
const MAX_PREFIX_BYTES: usize = 64;

/// `GET /v1/admin/accounts`' own parameter, beside its [`Page`].
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only accounts whose username starts with this (case-sensitive): letters, digits, `-`,
    /// `_` or `.`, at most 64. Absent or empty: every account.
    #[param(value_type = Option<String>, max_length = 64, pattern = "^[A-Za-z0-9._-]*$")]
    q: String,
}

impl FromQuery for ListParams {
    fn from_query(q: &Query) -> Result<Self, ApiError> {
        let prefix = q.one("q")?.unwrap_or_default();
        check_prefix(prefix)?;
        Ok(ListParams {
            q: prefix.to_string(),
        })
    }
}

/// Whether `prefix` can start a username (the list's `q`): at most 64 bytes of letters,
/// digits, `-`, `_` or `.`; `Err` names what is wrong. The operator API and the console both
/// check a search through this.
pub fn check_prefix(prefix: &str) -> Result<(), ApiError> {
    if prefix.len() > MAX_PREFIX_BYTES {
        return Err(ApiError::invalid(
            "q",
            format!("q is longer than a username ({MAX_PREFIX_BYTES} bytes)"),
        ));
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(ApiError::invalid(
            "q",
            format!("q: character {c:?} is in no username (letters, digits, `-`, `_` or `.`)"),
        ));
    }
    Ok(())
}

/// One account of the list: its balance, holds, requests in progress and lock state, as
/// `GET /v1/admin/accounts/{username}` shows them.
#[derive(Serialize, ToSchema)]
pub struct AccountListItem {
    username: AccountId,
    billing: Billing,
    #[serde(flatten)]
    standing: Standing,
    created_at: Time,
}

#[derive(Serialize, ToSchema)]
pub struct AccountList {
    accounts: Vec<AccountListItem>,
    /// Cursor for the next page of results, null if no more pages.
    next_cursor: Option<String>,
    /// Whether more results are available.
    has_more: bool,
}

fn item(state: &AppState, row: AccountRow) -> AccountListItem {
    AccountListItem {
        username: row.state.credit.id.clone(),
        billing: row.billing.into(),
        standing: Standing::of(state, &row.state),
        created_at: Time(row.created_at),
    }
}

/// List accounts
///
/// Accounts in username order (bytewise: digits, then upper case, then lower case), those
/// whose username starts with `q` when it is given, with their balance, holds, available
/// balance and lock state as `GET /v1/admin/accounts/{username}` shows them. Keyset paging
/// (`limit` default 100, at most 1000; `next_cursor` is opaque): a page never repeats an
/// account, and an account created meanwhile shows on a later page when its username sorts
/// after the last one shown. Read-only.
#[utoipa::path(
    get, path = "/v1/admin/accounts", tag = tags::OPERATOR, operation_id = "listAccounts",
    security(("Key" = ["OPERATOR"])),
    params(ListParams, Page),
    responses(OperatorErrors, (status = 200, description = "A page of accounts.", body = AccountList))
)]
pub async fn list_accounts(
    State(state): State<AppState>,
    _: Operator,
    Params(Paged { filter, page: p }): Params<Paged<ListParams>>,
) -> Result<axum::Json<AccountList>, ApiError> {
    let page = tollgate_query::accounts::list(&state.engine, &filter.q, p.cursor.as_ref(), p.limit)
        .await?;
    let (next_cursor, has_more) = paging(page.next_cursor);
    Ok(axum::Json(AccountList {
        accounts: page.items.into_iter().map(|r| item(&state, r)).collect(),
        next_cursor,
        has_more,
    }))
}
