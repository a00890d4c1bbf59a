//! fal's key management (ADMIN scope): `GET /v1/keys`, `POST /v1/keys`,
//! `DELETE /v1/keys/{key_id}`.
//!
//! Only the account's `API`-scope keys are managed here, as in fal's schema (`scope` is always
//! `API`). ADMIN keys are issued by the operator (`POST /v1/admin/accounts/{username}/keys`),
//! so an ADMIN key can neither list, mint nor revoke one: in particular a key can never revoke
//! itself through this API (every caller is ADMIN-scoped, and ADMIN keys are out of its reach).

use super::paging;
use crate::auth::issue_key;
use crate::error::ApiError;
use crate::extract::{Admin, Customer, FromQuery, Json, NoParams, Page, Paged, Params};
use crate::openapi::{tags, AdminErrors};
use crate::query_string::Query;
use crate::wire::Time;
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tollgate_core::ids::{ApiKeyId, KeyAlias};
use tollgate_engine::AdminCmd;
use tollgate_store::Scope;
use utoipa::{IntoParams, ToSchema};

/// What `expand` may name.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum KeysExpand {
    CreatorInfo,
}

/// `GET /v1/keys`' own parameter, beside its [`Page`].
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Fields to expand in the response: `creator_info` is accepted, but tollgate has no
    /// users, so `creator_nickname` and `creator_email` are left out.
    #[param(value_type = Option<Vec<KeysExpand>>, style = Form, explode)]
    #[allow(dead_code)]
    expand: Vec<String>,
}

impl FromQuery for ListParams {
    fn from_query(q: &Query) -> Result<Self, ApiError> {
        Ok(ListParams {
            expand: super::expand::<KeysExpand>(q)?.unwrap_or_default(),
        })
    }
}

/// One key as fal's list shows it.
#[derive(Serialize, ToSchema)]
pub struct KeyView {
    key_id: ApiKeyId,
    /// The key's friendly name.
    alias: String,
    /// Always `API`: the only scope this API manages.
    #[schema(value_type = String, example = "API")]
    scope: &'static str,
    created_at: Time,
}

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    /// Cursor for the next page of results, null if no more pages.
    next_cursor: Option<String>,
    /// Whether more results are available.
    has_more: bool,
    keys: Vec<KeyView>,
}

/// List API Keys
///
/// Returns the API keys of the authenticated account: its live (not revoked) `API`-scope
/// keys, oldest first (by `created_at`, then `key_id`), with keyset paging (`limit` default
/// 100, at most 1000; `next_cursor` is opaque). ADMIN keys are issued by the operator and are
/// not listed. Needs a customer key with `ADMIN` scope (an `API` key answers 403). Unknown
/// parameters answer 400.
#[utoipa::path(
    get, path = "/v1/keys", tag = tags::FAL, operation_id = "listApiKeys",
    security(("Key" = ["ADMIN"])),
    params(Page, ListParams),
    responses(AdminErrors, (status = 200, description = "The account's API keys.", body = KeyList))
)]
pub async fn list(
    State(state): State<AppState>,
    who: Customer<Admin>,
    Params(Paged { page: p, .. }): Params<Paged<ListParams>>,
) -> Result<axum::Json<KeyList>, ApiError> {
    let page =
        tollgate_query::keys::api_keys(&state.engine, &who.account, p.cursor.as_ref(), p.limit)
            .await?;
    let (next_cursor, has_more) = paging(page.next_cursor);
    Ok(axum::Json(KeyList {
        next_cursor,
        has_more,
        keys: page
            .items
            .into_iter()
            .map(|k| KeyView {
                key_id: k.key_id,
                alias: k.alias,
                scope: Scope::Api.as_str(),
                created_at: Time(k.created_at),
            })
            .collect(),
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"alias": "Production Key"}))]
pub struct CreateApiKeyBody {
    alias: KeyAlias,
}

#[derive(Serialize, ToSchema)]
pub struct ApiKeyCreated {
    key_id: ApiKeyId,
    /// Shown once: only its SHA-256 is stored.
    key_secret: String,
    /// `key_id:key_secret`, for `Authorization: Key ...`.
    key: String,
}

/// Create API Key
///
/// Creates an `API`-scope key of the caller's account, active at once, with the same rules
/// as the operator's key creation (an alias of 1 to 255 characters, no control characters).
/// The secret is in this answer only (tollgate stores its SHA-256). A retried POST makes a
/// second key: the answer cannot be replayed without storing the secret, so there is no
/// `Idempotency-Key` here (fal has none either); an unused key is removed with DELETE. Needs a
/// customer key with `ADMIN` scope.
#[utoipa::path(
    post, path = "/v1/keys", tag = tags::FAL, operation_id = "createApiKey",
    security(("Key" = ["ADMIN"])),
    request_body = CreateApiKeyBody,
    responses(AdminErrors, (status = 201, description = "API key created.", body = ApiKeyCreated))
)]
pub async fn create(
    State(state): State<AppState>,
    who: Customer<Admin>,
    _: Params<NoParams>,
    Json(body): Json<CreateApiKeyBody>,
) -> Result<(StatusCode, axum::Json<ApiKeyCreated>), ApiError> {
    let key = issue_key(&state, who.account, Scope::Api, body.alias).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(ApiKeyCreated {
            key: key.key(),
            key_id: key.record.key_id,
            key_secret: key.secret,
        }),
    ))
}

/// Delete API Key
///
/// Revokes the key if it is one of the caller's account's `API` keys: it answers 401 from
/// then on. Always 204, as fal answers, whether the key never existed, is malformed, was
/// already revoked, belongs to another account or is an ADMIN key: the answer reveals nothing
/// about other accounts' keys and only ever revokes the caller's own. Revoking is idempotent by
/// itself, so the optional `Idempotency-Key` header is accepted and needs nothing stored: a
/// retry answers the same 204 and changes nothing. Needs a customer key with `ADMIN` scope.
#[utoipa::path(
    delete, path = "/v1/keys/{key_id}", tag = tags::FAL, operation_id = "deleteApiKey",
    security(("Key" = ["ADMIN"])),
    params(
        ("key_id" = String, Path, description = "The id of the API key to delete."),
        ("Idempotency-Key" = Option<String>, Header,
            description = "Optional idempotency key for safe request retries."),
    ),
    responses(
        AdminErrors,
        (status = 204, description = "Deleted (or already deleted, or not one of the \
            account's API keys)."),
    )
)]
pub async fn revoke(
    State(state): State<AppState>,
    who: Customer<Admin>,
    _: Params<NoParams>,
    axum::extract::Path(key_id): axum::extract::Path<String>,
) -> Result<StatusCode, ApiError> {
    // A malformed id names no key.
    let Ok(key_id) = ApiKeyId::parse(&key_id) else {
        return Ok(StatusCode::NO_CONTENT);
    };
    // A key's account and scope never change, so the cached record is enough to decide.
    let ours = state.engine.api_key(&key_id).await?.is_some_and(|k| {
        k.account.as_ref() == Some(&who.account) && k.scope == Scope::Api && k.revoked_at.is_none()
    });
    if ours {
        state
            .engine
            .admin(AdminCmd::RevokeKey {
                key_id,
                account: Some(who.account),
            })
            .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}
