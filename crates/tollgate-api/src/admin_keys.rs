//! The operator's keys API (docs/reference/API.md sections 1 and 9): every key of an account
//! and every operator key, listed with their state (never a secret or its hash), created and
//! revoked. Operator keys live in the database like customer keys: one stops working when it
//! is revoked, and a revoked key never comes back.
//!
//! A revocation takes effect at once on the server that made it; servers sharing a PostgreSQL
//! database trust a key they read for at most [`tollgate_engine::KEY_CACHE_TTL`], so it
//! reaches them within that time.

use crate::auth::{insert_new_key, mint_key};
use crate::error::{ApiError, ErrorResponse};
use crate::extract::{Json, NoParams, Operator, Page, Params, Path};
use crate::openapi::{tags, OperatorErrors};
use crate::platform::paging;
use crate::wire::Time;
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tollgate_core::ids::{AccountId, ApiKeyId, KeyAlias};
use tollgate_engine::AdminCmd;
use tollgate_query::keys::KeyOwner;
use tollgate_store::{ApiKeyRecord, Scope};
use utoipa::ToSchema;

/// Who holds a key.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
pub enum KeyScope {
    /// A customer key for inference and read-only platform calls.
    #[serde(rename = "API")]
    Api,
    /// A customer key that may also read usage and billing and manage `API` keys.
    #[serde(rename = "ADMIN")]
    Admin,
    /// The platform's own key.
    #[serde(rename = "OPERATOR")]
    Operator,
}

impl From<Scope> for KeyScope {
    fn from(s: Scope) -> Self {
        match s {
            Scope::Api => KeyScope::Api,
            Scope::Admin => KeyScope::Admin,
            Scope::Operator => KeyScope::Operator,
        }
    }
}

/// Whether a key authenticates.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    Active,
    /// Revoked keys answer 401, for good.
    Revoked,
}

/// A key as the operator sees it: never its secret, nor the secret's hash.
#[derive(Serialize, ToSchema)]
pub struct KeyView {
    key_id: ApiKeyId,
    scope: KeyScope,
    alias: String,
    /// The account the key belongs to; `null` for operator keys.
    username: Option<AccountId>,
    state: KeyState,
    created_at: Time,
    /// `null` while the key is active.
    revoked_at: Option<Time>,
}

impl From<ApiKeyRecord> for KeyView {
    fn from(k: ApiKeyRecord) -> Self {
        KeyView {
            key_id: k.key_id,
            scope: k.scope.into(),
            alias: k.alias,
            username: k.account,
            state: if k.revoked_at.is_some() {
                KeyState::Revoked
            } else {
                KeyState::Active
            },
            created_at: Time(k.created_at),
            revoked_at: k.revoked_at.map(Time),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    keys: Vec<KeyView>,
    /// Cursor for the next page of results, null if no more pages.
    next_cursor: Option<String>,
    /// Whether more results are available.
    has_more: bool,
}

async fn list(state: &AppState, owner: KeyOwner, p: Page) -> Result<axum::Json<KeyList>, ApiError> {
    let page =
        tollgate_query::keys::all_keys(&state.engine, &owner, p.cursor.as_ref(), p.limit).await?;
    let (next_cursor, has_more) = paging(page.next_cursor);
    Ok(axum::Json(KeyList {
        keys: page.items.into_iter().map(KeyView::from).collect(),
        next_cursor,
        has_more,
    }))
}

/// List an account's keys
///
/// Every key of the account, `API` and `ADMIN`, revoked ones too, oldest first (by
/// `created_at`, then `key_id`), with keyset paging (`limit` default 100, at most 1000;
/// `next_cursor` is opaque). Secrets are never shown, nor their hashes. Read-only.
#[utoipa::path(
    get, path = "/v1/admin/accounts/{username}/keys", tag = tags::OPERATOR,
    operation_id = "listAccountKeys", security(("Key" = ["OPERATOR"])),
    params(("username" = AccountId, Path, description = "The account's username."), Page),
    responses(
        OperatorErrors,
        (status = 200, description = "The account's keys.", body = KeyList),
        (status = 404, description = "`not_found`: unknown account.", body = ErrorResponse),
    )
)]
pub async fn account_keys(
    State(state): State<AppState>,
    _: Operator,
    Params(p): Params<Page>,
    Path(username): Path<AccountId>,
) -> Result<axum::Json<KeyList>, ApiError> {
    list(&state, KeyOwner::Account(username), p).await
}

/// List operator keys
///
/// Every operator key, revoked ones too, oldest first (by `created_at`, then `key_id`), with
/// the same paging as the account's list: those created through this API and those created
/// from `TOLLGATE_OPERATOR_KEY` at a server's start (alias `TOLLGATE_OPERATOR_KEY`). Secrets
/// are never shown, nor their hashes. Read-only.
#[utoipa::path(
    get, path = "/v1/admin/operator-keys", tag = tags::OPERATOR,
    operation_id = "listOperatorKeys", security(("Key" = ["OPERATOR"])),
    params(Page),
    responses(OperatorErrors, (status = 200, description = "The operator keys.", body = KeyList))
)]
pub async fn operator_keys(
    State(state): State<AppState>,
    _: Operator,
    Params(p): Params<Page>,
) -> Result<axum::Json<KeyList>, ApiError> {
    list(&state, KeyOwner::Operator, p).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"alias": "gateway eu-1"}))]
pub struct CreateOperatorKeyBody {
    alias: KeyAlias,
}

#[derive(Serialize, ToSchema)]
pub struct OperatorKeyCreated {
    key_id: ApiKeyId,
    /// Shown once: only its SHA-256 is stored.
    key_secret: String,
    /// `key_id:key_secret`, as `Authorization: Key ...` takes it.
    key: String,
    alias: KeyAlias,
    scope: KeyScope,
    created_at: Time,
}

/// Create an operator key
///
/// Mints an `OPERATOR` key, active at once on every server of the database (a server that
/// looked the id up as unknown just before reads it again at its next use). The secret is in
/// this answer only (tollgate stores its SHA-256). It works until it is revoked
/// (`DELETE /v1/admin/keys/{key_id}`), whatever the servers' environment says. Not
/// idempotent: every call mints a new key.
#[utoipa::path(
    post, path = "/v1/admin/operator-keys", tag = tags::OPERATOR,
    operation_id = "createOperatorKey", security(("Key" = ["OPERATOR"])),
    request_body = CreateOperatorKeyBody,
    responses(
        OperatorErrors,
        (status = 201, description = "The new operator key.", body = OperatorKeyCreated),
    )
)]
pub async fn create_operator_key(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Json(body): Json<CreateOperatorKeyBody>,
) -> Result<(StatusCode, axum::Json<OperatorKeyCreated>), ApiError> {
    let minted = mint_key(
        None,
        Scope::Operator,
        body.alias.to_string(),
        state.engine.now(),
    );
    let key = insert_new_key(&state, minted).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(OperatorKeyCreated {
            key: key.key(),
            key_id: key.record.key_id,
            key_secret: key.secret,
            alias: body.alias,
            scope: KeyScope::Operator,
            created_at: Time(key.record.created_at),
        }),
    ))
}

/// Revoke a key
///
/// Revokes any key: an account's `API` or `ADMIN` key, or an operator key (the caller's own
/// too). From the answer on, the server that answered refuses the key (401); other servers
/// sharing its PostgreSQL database refuse it within 5 seconds (the time a server trusts a key
/// it has read). A revoked key never works again: not through this API, nor when a server
/// starts with it in `TOLLGATE_OPERATOR_KEY`. Revoking a revoked key answers 204 again and
/// changes nothing. A platform that revokes its last live operator key recovers by starting a
/// server with a new key id in `TOLLGATE_OPERATOR_KEY`.
#[utoipa::path(
    delete, path = "/v1/admin/keys/{key_id}", tag = tags::OPERATOR,
    operation_id = "revokeKey", security(("Key" = ["OPERATOR"])),
    params(("key_id" = ApiKeyId, Path, description = "The key's id.")),
    responses(
        OperatorErrors,
        (status = 204, description = "The key is revoked (or already was)."),
        (status = 404, description = "`not_found`: no key has this id.", body = ErrorResponse),
    )
)]
pub async fn revoke_key(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Path(key_id): Path<ApiKeyId>,
) -> Result<StatusCode, ApiError> {
    revoke(&state, key_id, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes a key (see [`revoke_key`]); with `of_account`, only a key of that account (another
/// key, like an unknown one, is 404 and nothing changes). The operator API and the console
/// both revoke keys through this.
pub async fn revoke(
    state: &AppState,
    key_id: ApiKeyId,
    of_account: Option<&AccountId>,
) -> Result<(), ApiError> {
    // A key's account never changes, so a cached record names it as well as the database.
    let key = state
        .engine
        .api_key(&key_id)
        .await?
        .filter(|k| of_account.is_none_or(|a| k.account.as_ref() == Some(a)));
    let Some(key) = key else {
        return Err(ApiError::not_found(match of_account {
            Some(a) => format!("account {a} has no key with the id {key_id}"),
            None => format!("no key has the id {key_id}"),
        }));
    };
    state
        .engine
        .admin(AdminCmd::RevokeKey {
            key_id,
            account: key.account,
        })
        .await?;
    Ok(())
}
