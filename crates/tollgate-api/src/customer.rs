//! The customer's account: `GET /v1/account/billing` of fal's Platform API (the rest of that
//! API is in [`crate::platform`]).

use crate::admin::account_row;
use crate::auth::customer;
use crate::error::ApiError;
use crate::money::Number;
use crate::platform::params::Query;
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
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let (_, account) = customer(&state, &headers, Scope::Admin).await?;
    let q = Query::parse(raw.as_deref(), &["expand"])?;
    let expand_credits = q.expand(&["credits"])?.is_some();
    let row = account_row(&state, &account).await?;
    let mut body = json!({ "username": account.as_str() });
    if expand_credits {
        // fal's schema: current_balance >= 0; an overdrawn balance shows as 0 here and exactly
        // in the operator API.
        let balance = row.state.credit.balance.max(tollgate_core::Nanos::ZERO);
        body["credits"] = json!({ "current_balance": Number::usd(balance), "currency": "USD", "current_balance_nano_usd": balance.0 });
    }
    Ok(Json(body))
}
