//! fal's key management (ADMIN scope): `GET /v1/keys`, `POST /v1/keys`,
//! `DELETE /v1/keys/{key_id}`.
//!
//! Only the account's `API`-scope keys are managed here, as in fal's schema (`scope` is always
//! `API`). ADMIN keys are issued by the operator (`POST /v1/admin/accounts/{username}/keys`), so
//! an ADMIN key can neither list, mint nor revoke one: in particular a key can never revoke
//! itself through this API (every caller is ADMIN-scoped, and ADMIN keys are out of its reach).

use crate::admin::rfc3339;
use crate::auth::{customer, mint_key};
use crate::error::{parse_json, ApiError};
use crate::platform::params::{page, Query};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tollgate_core::ids::ApiKeyId;
use tollgate_engine::AdminCmd;
use tollgate_store::Scope;

/// Keys per page of `GET /v1/keys` when `limit` is absent.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit` accepted by `GET /v1/keys`.
pub const MAX_LIMIT: usize = 1000;
/// fal's bound on a key's alias, in characters.
pub const MAX_ALIAS_CHARS: usize = 255;

/// The keyset position of a page: the last key shown, by `(created_at, key_id)`, the order the
/// list is in. Paging never repeats a key and skips none that existed when the first page was
/// read; a key created meanwhile appears on a later page (unless created within the same
/// millisecond as the last key shown and sorting before it by id).
#[derive(Serialize, Deserialize)]
struct After {
    created_at: i64,
    key_id: String,
}

/// One key as fal's list shows it.
#[derive(Serialize)]
pub struct KeyView {
    pub key_id: String,
    pub alias: String,
    /// Always `API`: the only scope this API manages.
    pub scope: &'static str,
    pub created_at: String,
}

/// `GET /v1/keys`: the caller's account's live `API` keys, oldest first.
///
/// `expand=creator_info` is accepted, but tollgate has no users, so `creator_nickname` and
/// `creator_email` are left out (fal's schema makes both optional).
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (_, account) = customer(&state, &headers, Scope::Admin).await?;
    let query = Query::parse(raw.as_deref(), &["limit", "cursor", "expand"])?;
    let limit = query.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let after: Option<After> = query.cursor()?;
    query.expand(&["creator_info"])?;

    // The store lists an account's keys by (created_at, key_id): the order pages follow.
    let keys = state.engine.read(move |r| r.api_keys(&account)).await?;
    let (shown, next_cursor) = page(
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
    );
    let keys: Vec<KeyView> = shown
        .into_iter()
        .map(|k| KeyView {
            key_id: k.key_id.to_string(),
            alias: k.alias,
            scope: Scope::Api.as_str(),
            created_at: rfc3339(k.created_at),
        })
        .collect();
    Ok(Json(json!({
        "has_more": next_cursor.is_some(),
        "next_cursor": next_cursor,
        "keys": keys,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKeyBody {
    /// Optional here only so that its absence is answered naming `alias`.
    #[serde(default)]
    alias: Option<String>,
}

/// `POST /v1/keys {"alias"}`: a new `API` key for the caller's account, active at once. The
/// secret is in this answer only (tollgate stores its SHA-256). A retried POST makes a second
/// key: the answer cannot be replayed without storing the secret, so there is no
/// `Idempotency-Key` here (fal has none either); an unused key is removed with DELETE.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (_, account) = customer(&state, &headers, Scope::Admin).await?;
    let req: CreateKeyBody = parse_json(&body)?;
    let alias = req
        .alias
        .ok_or_else(|| ApiError::validation("alias is required").with("field", "alias"))?;
    let chars = alias.chars().count();
    if !(1..=MAX_ALIAS_CHARS).contains(&chars) {
        return Err(ApiError::validation(format!(
            "alias must be 1-{MAX_ALIAS_CHARS} characters, got {chars}"
        ))
        .with("field", "alias"));
    }
    let key = mint_key(Some(account), Scope::Api, alias, state.engine.now());
    state
        .engine
        .admin(AdminCmd::InsertKey(key.record.clone()))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "key_id": key.record.key_id.as_str(),
            "key_secret": key.secret,
            "key": key.key(),
        })),
    )
        .into_response())
}

/// `DELETE /v1/keys/{key_id}`: revokes the key if it is one of the caller's account's `API`
/// keys. Always 204, as fal answers: whether the key never existed, was already revoked,
/// belongs to another account or is an ADMIN key, the answer is the same, so it reveals
/// nothing about other accounts' keys and only ever revokes the caller's own.
///
/// Revoking is idempotent by itself (a revoked key stays revoked, with its first revocation
/// time), so the optional `Idempotency-Key` header is accepted and needs nothing stored: a
/// retry with the same key answers the same 204 and changes nothing.
pub async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(key_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (_, account) = customer(&state, &headers, Scope::Admin).await?;
    // A malformed id names no key.
    let Ok(key_id) = ApiKeyId::parse(&key_id) else {
        return Ok(StatusCode::NO_CONTENT);
    };
    // A key's account and scope never change, so the cached record is enough to decide.
    let ours = state.engine.api_key(&key_id).await?.is_some_and(|k| {
        k.account.as_ref() == Some(&account) && k.scope == Scope::Api && k.revoked_at.is_none()
    });
    if ours {
        state
            .engine
            .admin(AdminCmd::RevokeKey {
                key_id,
                account: Some(account),
            })
            .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}
