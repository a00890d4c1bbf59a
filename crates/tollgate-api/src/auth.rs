//! API keys: `Authorization: Key <key_id>:<key_secret>`. Only a SHA-256 of the secret is
//! stored; the secret is shown once, when the key is created. Who may call what is said by the
//! extractors built on [`authenticate`] ([`crate::extract`]).

use crate::error::ApiError;
use crate::AppState;
use axum::http::HeaderMap;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tollgate_core::ids::{AccountId, ApiKeyId, KeyAlias};
use tollgate_core::Timestamp;
use tollgate_store::{ApiKeyRecord, Scope};

/// The caller of an HTTP request, after authentication.
#[derive(Clone, Debug)]
pub struct Principal {
    pub key_id: ApiKeyId,
    pub scope: Scope,
    /// The customer account; `None` for operator keys.
    pub account: Option<AccountId>,
}

/// A freshly minted key: the record to store and the secret to show once.
pub struct NewKey {
    pub record: ApiKeyRecord,
    pub secret: String,
}

impl NewKey {
    pub fn key(&self) -> String {
        format!("{}:{}", self.record.key_id, self.secret)
    }
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

pub fn mint_key(account: Option<AccountId>, scope: Scope, alias: String, now: Timestamp) -> NewKey {
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    let secret = hex::encode(bytes);
    let key_id =
        ApiKeyId::parse(&uuid::Uuid::new_v4().to_string()).expect("uuid is a valid key id");
    NewKey {
        record: ApiKeyRecord {
            key_id,
            account,
            scope,
            alias,
            secret_sha256: hash_secret(&secret),
            created_at: now,
            revoked_at: None,
        },
        secret,
    }
}

/// Splits `key_id:key_secret`.
pub fn split_key(key: &str) -> Result<(ApiKeyId, &str), ApiError> {
    let (id, secret) = key
        .split_once(':')
        .ok_or_else(|| ApiError::unauthorized("a key has the form <key_id>:<key_secret>"))?;
    let id = ApiKeyId::parse(id).map_err(|e| ApiError::unauthorized(e.to_string()))?;
    if secret.is_empty() {
        return Err(ApiError::unauthorized("the key secret is empty"));
    }
    Ok((id, secret))
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Verifies a full `key_id:key_secret` against the store.
pub async fn verify_key(state: &AppState, key: &str) -> Result<Principal, ApiError> {
    let (key_id, secret) = split_key(key.trim())?;
    let record = state
        .engine
        .api_key(&key_id)
        .await?
        .ok_or_else(|| ApiError::unauthorized("unknown API key"))?;
    if !same(&record.secret_sha256, &hash_secret(secret)) {
        return Err(ApiError::unauthorized("invalid API key secret"));
    }
    if record.revoked_at.is_some() {
        return Err(ApiError::unauthorized("this API key has been revoked"));
    }
    Ok(Principal {
        key_id,
        scope: record.scope,
        account: record.account,
    })
}

/// Authenticates the `Authorization` header.
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::unauthorized("missing Authorization header: use `Key <key_id>:<key_secret>`")
        })?
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not text"))?;
    let key = value.strip_prefix("Key ").ok_or_else(|| {
        ApiError::unauthorized("the Authorization header must be `Key <key_id>:<key_secret>`")
    })?;
    verify_key(state, key).await
}

/// Issues a key of a customer account: one set of rules for the operator's
/// (`POST /v1/admin/accounts/{username}/keys`) and the customer's (`POST /v1/keys`) calls.
/// The account must exist; the alias is checked where it was parsed ([`KeyAlias`]).
pub async fn issue_key(
    state: &AppState,
    account: AccountId,
    scope: Scope,
    alias: KeyAlias,
) -> Result<NewKey, ApiError> {
    tollgate_query::account(&state.engine, &account).await?;
    let key = mint_key(Some(account), scope, alias.to_string(), state.engine.now());
    state
        .engine
        .admin(tollgate_engine::AdminCmd::InsertKey(key.record.clone()))
        .await?;
    Ok(key)
}
