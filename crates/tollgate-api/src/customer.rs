//! The customer API (fal's Platform API). This part: the account's billing.

use crate::auth::customer;
use crate::error::ApiError;
use crate::money::Number;
use crate::AppState;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};
use tollgate_store::Scope;

/// `GET /v1/account/billing?expand=credits` (ADMIN scope).
pub async fn billing(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let (_, account) = customer(&state, &headers, Scope::Admin).await?;
    let mut expand_credits = false;
    for pair in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "expand" | "expand%5B%5D" | "expand[]" => {
                for item in v.split(',').flat_map(|s| s.split("%2C")) {
                    match item {
                        "credits" => expand_credits = true,
                        other => {
                            return Err(ApiError::validation(format!(
                                "unknown expand value `{other}`; allowed: credits"
                            ))
                            .with("field", "expand"))
                        }
                    }
                }
            }
            other => {
                return Err(
                    ApiError::validation(format!("unknown query parameter `{other}`"))
                        .with("field", other.to_string()),
                )
            }
        }
    }
    let now = state.engine.now();
    let id = account.clone();
    let row = state
        .engine
        .read(move |r| r.account(&id, now))
        .await?
        .ok_or_else(|| ApiError::not_found("account not found"))?;
    let mut body = json!({ "username": account.as_str() });
    if expand_credits {
        // fal's schema: current_balance >= 0; an overdrawn balance shows as 0 here and exactly
        // in the operator API.
        let balance = row.state.credit.balance.max(tollgate_core::Nanos::ZERO);
        body["credits"] = json!({ "current_balance": Number::usd(balance), "currency": "USD", "current_balance_nano_usd": balance.0 });
    }
    Ok(Json(body))
}
