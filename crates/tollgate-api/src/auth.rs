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

/// A fresh random secret: 32 bytes from the OS's generator, as 64 hex digits (sign-in links,
/// session cookies, CSRF tokens).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
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

/// Compares two secrets in time independent of where they differ (keys' digests, CSRF
/// tokens).
pub fn same(a: &str, b: &str) -> bool {
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
    insert_new_key(state, key).await
}

/// Stores a freshly minted key; its id is a new UUID, so a taken one is a server error.
pub async fn insert_new_key(state: &AppState, key: NewKey) -> Result<NewKey, ApiError> {
    let reply = state
        .engine
        .admin(tollgate_engine::AdminCmd::InsertKey(key.record.clone()))
        .await?;
    if reply != tollgate_engine::AdminReply::KeyInserted(true) {
        return Err(ApiError::server("a new key's id was taken"));
    }
    Ok(key)
}

/// What the operator key named at start (`TOLLGATE_OPERATOR_KEY`) is in the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperatorKeyAtStart {
    /// Its id was new: it was created as an operator key.
    Created,
    /// A live operator key with this secret: used as it is.
    Known,
    /// An operator key that was revoked: it stays revoked, and does not authenticate.
    Revoked { revoked_at: Timestamp },
}

/// Why the operator key named at start cannot be used; the server should not start with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperatorKeyRefused {
    /// Not `<key_id>:<key_secret>`.
    Malformed(String),
    /// The id is a customer key's.
    NotOperator { key_id: ApiKeyId, scope: Scope },
    /// The id is a live operator key's, with another secret. The environment never changes a
    /// stored key: a new secret is a new key (another id), and the old one is revoked.
    WrongSecret { key_id: ApiKeyId },
    /// The database could not be read or written.
    Engine(String),
}

impl std::fmt::Display for OperatorKeyRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OperatorKeyRefused::Malformed(m) => write!(f, "{m}"),
            OperatorKeyRefused::NotOperator { key_id, scope } => write!(
                f,
                "key {key_id} is a customer key ({} scope), not an operator key; name a new \
                 key id or an operator key",
                scope.as_str()
            ),
            OperatorKeyRefused::WrongSecret { key_id } => write!(
                f,
                "operator key {key_id} is already stored with another secret, and a stored \
                 key's secret never changes; use its stored secret, or give a new key id (a new \
                 operator key) and revoke the old one with `tollgate key revoke {key_id}`"
            ),
            OperatorKeyRefused::Engine(e) => write!(f, "{e}"),
        }
    }
}

/// Registers the operator key an operator names at start (`<key_id>:<key_secret>`): a key id
/// the database does not know is created as an operator key; a known one is used as it is,
/// never changed (a revoked one stays revoked: the server starts, and says so). Operator keys
/// live in the database, so one keeps working when it leaves the environment, until revoked.
pub async fn register_operator_key(
    engine: &tollgate_engine::Engine,
    key: &str,
) -> Result<OperatorKeyAtStart, OperatorKeyRefused> {
    let (key_id, secret) =
        split_key(key.trim()).map_err(|e| OperatorKeyRefused::Malformed(e.message))?;
    let engine_error = |e: tollgate_engine::EngineError| OperatorKeyRefused::Engine(e.to_string());
    let reply = engine
        .admin(tollgate_engine::AdminCmd::InsertKey(ApiKeyRecord {
            key_id: key_id.clone(),
            account: None,
            scope: Scope::Operator,
            alias: "TOLLGATE_OPERATOR_KEY".into(),
            secret_sha256: hash_secret(secret),
            created_at: engine.now(),
            revoked_at: None,
        }))
        .await
        .map_err(engine_error)?;
    if reply == tollgate_engine::AdminReply::KeyInserted(true) {
        return Ok(OperatorKeyAtStart::Created);
    }
    // Inserting forgot what the engine had cached of the key: this is the stored key.
    let stored = engine
        .api_key(&key_id)
        .await
        .map_err(engine_error)?
        .ok_or_else(|| OperatorKeyRefused::Engine(format!("key {key_id} vanished")))?;
    if stored.scope != Scope::Operator {
        return Err(OperatorKeyRefused::NotOperator {
            key_id,
            scope: stored.scope,
        });
    }
    if let Some(revoked_at) = stored.revoked_at {
        return Ok(OperatorKeyAtStart::Revoked { revoked_at });
    }
    if !same(&stored.secret_sha256, &hash_secret(secret)) {
        return Err(OperatorKeyRefused::WrongSecret { key_id });
    }
    Ok(OperatorKeyAtStart::Known)
}
