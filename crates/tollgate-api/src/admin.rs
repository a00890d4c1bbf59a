//! The operator API (API.md section 1): accounts, credits, keys, catalog, account terms.

use crate::auth::{mint_key, operator};
use crate::error::{parse_json, ApiError};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use tollgate_core::catalog::document;
use tollgate_core::ids::{AccountId, EndpointId, PurchaseId};
use tollgate_core::machine::{Op, Outcome};
use tollgate_core::price::PriceRule;
use tollgate_core::pricing::{Discounts, VolumeTier};
use tollgate_core::terms::TermsChange;
use tollgate_core::{Nanos, Timestamp};
use tollgate_engine::{AdminCmd, AdminReply, EngineError};
use tollgate_store::{AccountRow, BillingMode, Scope, StoreError};

/// The largest single purchase accepted, in USD: anything above is a typo, not a sale.
pub const MAX_PURCHASE_USD: i64 = 1_000_000;

pub fn rfc3339(t: Timestamp) -> String {
    chrono::DateTime::from_timestamp_millis(t.0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn parse_time(field: &str, s: &str) -> Result<Timestamp, ApiError> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|d| Timestamp(d.timestamp_millis()))
        .map_err(|e| {
            ApiError::validation(format!("`{field}` is not an RFC 3339 time: {e}"))
                .with("field", field)
        })
}

pub fn parse_account(s: &str) -> Result<AccountId, ApiError> {
    AccountId::parse(s).map_err(|e| ApiError::validation(e.to_string()).with("field", "username"))
}

fn map_store(e: EngineError, what: &str) -> ApiError {
    match e {
        EngineError::Store(StoreError::AlreadyExists(_)) => {
            ApiError::conflict(format!("{what} already exists"))
        }
        EngineError::Store(StoreError::NotFound(_)) => {
            ApiError::not_found(format!("{what} not found"))
        }
        other => other.into(),
    }
}

pub(crate) async fn account_row(
    state: &AppState,
    username: &AccountId,
) -> Result<AccountRow, ApiError> {
    let id = username.clone();
    let now = state.engine.now();
    state
        .engine
        .read(move |r| r.account(&id, now))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("account {username} not found")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateAccount {
    username: String,
    #[serde(default)]
    billing: Option<String>,
}

pub async fn create_account(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    operator(&state, &headers).await?;
    let req: CreateAccount = parse_json(&body)?;
    let username = parse_account(&req.username)?;
    let billing = match req.billing.as_deref() {
        None | Some("prepaid") => BillingMode::Prepaid,
        Some("invoice") => BillingMode::Invoice,
        Some(other) => {
            return Err(ApiError::validation(format!(
                "billing must be `prepaid` or `invoice`, not `{other}`"
            ))
            .with("field", "billing"))
        }
    };
    state
        .engine
        .admin(AdminCmd::CreateAccount {
            username: username.clone(),
            billing,
        })
        .await
        .map_err(|e| map_store(e, &format!("account {username}")))?;
    let row = account_row(&state, &username).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "username": username.as_str(),
            "billing": billing.as_str(),
            "created_at": rfc3339(row.created_at),
        })),
    )
        .into_response())
}

/// The operator's view of an account.
#[derive(Serialize)]
pub struct AccountView {
    pub username: String,
    pub billing: &'static str,
    pub balance_nano_usd: i64,
    pub held_nano_usd: i64,
    pub available_nano_usd: i64,
    pub in_progress: u32,
    pub concurrency_limit: u32,
    pub locked: bool,
    pub lock_threshold_nano_usd: i64,
    pub paid_last_28d_nano_usd: i64,
    pub paid_lifetime_nano_usd: i64,
    pub concurrency_override: Option<u32>,
    pub discounts: Discounts,
    /// What is left of each purchase, in spending order (earliest expiry first).
    pub credits: Vec<CreditLotView>,
    pub created_at: String,
}

#[derive(Serialize)]
pub struct CreditLotView {
    pub purchase_id: String,
    pub remaining_nano_usd: i64,
    pub expires_at: Option<String>,
}

pub fn account_view(state: &AppState, row: &AccountRow) -> AccountView {
    let s = &row.state;
    AccountView {
        username: s.credit.id.to_string(),
        billing: row.billing.as_str(),
        balance_nano_usd: s.credit.balance.0,
        held_nano_usd: s.credit.held.0,
        available_nano_usd: s.credit.available().0,
        in_progress: s.in_progress,
        concurrency_limit: s.concurrency_limit(&state.engine.catalog()),
        locked: s.credit.is_locked(),
        lock_threshold_nano_usd: s.credit.lock_threshold.0,
        paid_last_28d_nano_usd: s.paid_28d.0,
        paid_lifetime_nano_usd: s.paid_lifetime.0,
        concurrency_override: s.concurrency_override,
        discounts: s.discounts.clone(),
        credits: s
            .lots
            .iter()
            .map(|l| CreditLotView {
                purchase_id: l.purchase_id.to_string(),
                remaining_nano_usd: l.remaining.0,
                expires_at: l.expires_at.map(rfc3339),
            })
            .collect(),
        created_at: rfc3339(row.created_at),
    }
}

pub async fn show_account(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(username): Path<String>,
) -> Result<Json<AccountView>, ApiError> {
    operator(&state, &headers).await?;
    let username = parse_account(&username)?;
    let row = account_row(&state, &username).await?;
    Ok(Json(account_view(&state, &row)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurchaseBody {
    purchase_id: String,
    amount_usd: serde_json::Value,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    expires_at: Option<String>,
}

pub async fn purchase(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(username): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    operator(&state, &headers).await?;
    let account = parse_account(&username)?;
    let req: PurchaseBody = parse_json(&body)?;
    let purchase_id = PurchaseId::parse(&req.purchase_id)
        .map_err(|e| ApiError::validation(e.to_string()).with("field", "purchase_id"))?;
    let amount_text = match &req.amount_usd {
        serde_json::Value::String(s) => s.clone(),
        _ => return Err(ApiError::validation(
            "amount_usd must be a decimal string such as \"25.00\" (a JSON number may be inexact)",
        )
        .with("field", "amount_usd")),
    };
    let amount = Nanos::parse_usd(&amount_text).map_err(|e| {
        ApiError::validation(format!("amount_usd: {e}")).with("field", "amount_usd")
    })?;
    if amount > Nanos(MAX_PURCHASE_USD * tollgate_core::money::NANOS_PER_USD) {
        return Err(ApiError::validation(format!(
            "amount_usd exceeds the largest single purchase ({MAX_PURCHASE_USD} USD)"
        ))
        .with("field", "amount_usd"));
    }
    let paid = match req.kind.as_deref() {
        None | Some("paid") => true,
        Some("free") => false,
        Some(other) => {
            return Err(ApiError::validation(format!(
                "kind must be `paid` or `free`, not `{other}`"
            ))
            .with("field", "kind"))
        }
    };
    let expires_at = req
        .expires_at
        .as_deref()
        .map(|s| parse_time("expires_at", s))
        .transpose()?;
    let outcome = state
        .engine
        .execute(Op::Purchase {
            account,
            purchase_id,
            amount,
            paid,
            expires_at,
        })
        .await??;
    let Outcome::Purchased {
        purchase: p,
        replayed,
    } = outcome
    else {
        return Err(ApiError::server("unexpected outcome"));
    };
    let mut resp = (
        StatusCode::CREATED,
        Json(json!({
            "purchase_id": p.purchase_id.as_str(),
            "kind": if p.paid { "paid" } else { "free" },
            "amount_nano_usd": p.amount.0,
            "balance_nano_usd": p.balance_after.0,
            "concurrency_limit": p.concurrency_limit_after,
            "locked": p.locked_after,
            "created_at": rfc3339(p.created_at),
            "expires_at": p.expires_at.map(rfc3339),
        })),
    )
        .into_response();
    if replayed {
        resp.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(resp)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    scope: String,
    #[serde(default)]
    alias: Option<String>,
}

pub async fn create_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(username): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    operator(&state, &headers).await?;
    let account = parse_account(&username)?;
    let req: CreateKey = parse_json(&body)?;
    let scope = match req.scope.as_str() {
        "API" => Scope::Api,
        "ADMIN" => Scope::Admin,
        other => {
            return Err(ApiError::validation(format!(
                "scope must be `API` or `ADMIN`, not `{other}`"
            ))
            .with("field", "scope"))
        }
    };
    let alias = req.alias.unwrap_or_default();
    if alias.len() > 200 {
        return Err(
            ApiError::validation("alias is longer than 200 characters").with("field", "alias")
        );
    }
    account_row(&state, &account).await?;
    let key = mint_key(Some(account), scope, alias, state.engine.now());
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
            "scope": scope.as_str(),
            "alias": key.record.alias,
        })),
    )
        .into_response())
}

fn double_option<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PricingBody {
    #[serde(default)]
    percent_discount: Option<Decimal>,
    #[serde(default)]
    volume_tiers: Option<Vec<VolumeTier>>,
    #[serde(default, deserialize_with = "double_option")]
    concurrency_limit: Option<Option<u32>>,
    #[serde(default)]
    lock_threshold_usd: Option<String>,
    #[serde(default)]
    prices: BTreeMap<String, PriceRule>,
    #[serde(default)]
    effective_from: Option<String>,
}

/// Sets an account's negotiated terms: discounts, volume tiers, a contractual concurrency
/// limit, the lock threshold, and account-specific prices (new price versions). The engine
/// applies and checks the change in one db transaction, so it is all written or none of it.
pub async fn set_pricing(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(username): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    operator(&state, &headers).await?;
    let account = parse_account(&username)?;
    let req: PricingBody = parse_json(&body)?;
    let lock_threshold = req
        .lock_threshold_usd
        .as_deref()
        .map(Nanos::parse_usd)
        .transpose()
        .map_err(|e| {
            ApiError::validation(format!("lock_threshold_usd: {e}"))
                .with("field", "lock_threshold_usd")
        })?;
    let mut prices = Vec::new();
    for (endpoint, rule) in req.prices {
        let id = EndpointId::parse(&endpoint)
            .map_err(|e| ApiError::validation(e.to_string()).with("field", "prices"))?;
        prices.push((id, rule));
    }
    let effective_from = req
        .effective_from
        .as_deref()
        .map(|s| parse_time("effective_from", s))
        .transpose()?;
    let change = TermsChange {
        percent_discount: req.percent_discount,
        volume_tiers: req.volume_tiers,
        concurrency_limit: req.concurrency_limit,
        lock_threshold,
        prices,
        effective_from,
    };
    let reply = state
        .engine
        .admin(AdminCmd::SetTerms {
            username: account.clone(),
            change,
        })
        .await
        .map_err(|e| match e {
            // The account, or an endpoint a price names.
            EngineError::Store(StoreError::NotFound(what)) => {
                ApiError::not_found(format!("{what} not found"))
            }
            other => other.into(),
        })?;
    let AdminReply::TermsSet {
        price_versions_created: versions,
    } = reply
    else {
        return Err(ApiError::server("unexpected reply"));
    };
    let row = account_row(&state, &account).await?;
    Ok(Json(
        json!({ "account": account_view(&state, &row), "price_versions_created": versions }),
    ))
}

pub async fn apply_catalog(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    operator(&state, &headers).await?;
    if let Some(ct) = headers.get(axum::http::header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        if !(ct.starts_with("application/toml") || ct.starts_with("text/")) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "validation_error",
                format!("the catalog is TOML: send it as `application/toml`, not `{ct}`"),
            ));
        }
    }
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::validation("the catalog is not UTF-8 text"))?;
    let doc = document::parse(text).map_err(|e| {
        let mut err =
            ApiError::validation(format!("invalid catalog: {e}")).with("field", e.field.clone());
        if let Some(line) = e.line {
            err = err.with("line", line);
        }
        err
    })?;
    match state
        .engine
        .admin(AdminCmd::ApplyCatalog(Box::new(doc)))
        .await?
    {
        AdminReply::CatalogApplied {
            endpoints,
            versions_created,
        } => Ok(Json(json!({
            "endpoints": endpoints,
            "price_versions_created": versions_created,
        }))),
        _ => Err(ApiError::server("unexpected reply")),
    }
}

/// Checks the ledger end to end: stored balances against transfers, holds against requests
/// in progress, line items against charges.
pub async fn reconciliation(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    operator(&state, &headers).await?;
    let r = state.engine.read(|r| r.reconcile()).await?;
    let pairs = |v: &Vec<(AccountId, Nanos, Nanos)>| -> Vec<serde_json::Value> {
        v.iter().map(|(a, s, t)| json!({"username": a.as_str(), "stored_nano_usd": s.0, "from_ledger_nano_usd": t.0})).collect()
    };
    Ok(Json(json!({
        "clean": r.is_clean(),
        "revenue_nano_usd": r.revenue_nanos.to_string(),
        "billed_nano_usd": r.billed_nanos.to_string(),
        "purchased_nano_usd": r.purchased_nanos.to_string(),
        "credited_nano_usd": r.credited_nanos.to_string(),
        "expired_nano_usd": r.expired_nanos.to_string(),
        "lot_mismatches": pairs(&r.lot_mismatches),
        "balance_mismatches": pairs(&r.balance_mismatches),
        "held_mismatches": pairs(&r.held_mismatches),
        "in_progress_mismatches": r.in_progress_mismatches.iter().map(|(a, s, t)| json!({"username": a.as_str(), "stored": s, "from_requests": t})).collect::<Vec<_>>(),
        "line_item_mismatches": r.line_item_mismatches.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        "rollup_mismatches": r.rollup_mismatches.iter().map(|(a, s, t)| json!({"username": a.as_str(), "rollups_nano_usd": s.0, "line_items_nano_usd": t.0})).collect::<Vec<_>>(),
    })))
}
