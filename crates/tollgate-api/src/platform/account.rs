//! fal's `GET /v1/account/billing` (ADMIN scope): the account's credit balance.

use crate::error::ApiError;
use crate::extract::{Admin, Customer, FromQuery, Params};
use crate::openapi::{tags, AdminErrors};
use crate::query_string::Query;
use crate::wire::Number;
use crate::AppState;
use axum::extract::State;
use serde::Serialize;
use tollgate_core::ids::AccountId;
use tollgate_core::money::MoneyError;
use tollgate_core::Nanos;
use utoipa::{IntoParams, ToSchema};

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub enum BillingExpand {
    #[serde(rename = "credits")]
    Credits,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BillingParams {
    /// `credits` adds the credit balance.
    #[param(value_type = Option<Vec<BillingExpand>>, style = Form, explode)]
    expand: Vec<String>,
}

impl FromQuery for BillingParams {
    fn from_query(q: &Query) -> Result<Self, ApiError> {
        Ok(BillingParams {
            expand: super::expand::<BillingExpand>(q)?.unwrap_or_default(),
        })
    }
}

#[derive(Serialize, ToSchema)]
pub struct Credits {
    /// The credit balance, USD (0 when overdrawn: see `owed_nano_usd`).
    #[schema(minimum = 0)]
    current_balance: Number,
    #[schema(value_type = String, example = "USD")]
    currency: &'static str,
    /// tollgate's extension: `current_balance` exactly, in nano-USD.
    #[schema(minimum = 0)]
    current_balance_nano_usd: i64,
    /// tollgate's extension: the balance exactly, signed (negative when more was spent than
    /// the credits cover, e.g. a refund or dispute of credits already used).
    balance_nano_usd: i64,
    /// tollgate's extension: what the account owes, nano-USD (0 unless the balance is
    /// negative). A purchase repays it first.
    #[schema(minimum = 0)]
    owed_nano_usd: i64,
}

#[derive(Serialize, ToSchema)]
pub struct AccountBilling {
    username: AccountId,
    /// Present when `expand=credits`.
    #[serde(skip_serializing_if = "Option::is_none")]
    credits: Option<Credits>,
}

/// Account billing
///
/// The account's username and, with `expand=credits`, its credit balance. fal's schema has
/// the balance at least 0: an overdrawn balance shows as 0 in `current_balance`, and exactly
/// beside it in `balance_nano_usd` (signed) and `owed_nano_usd` (what the account owes; 0
/// when nothing is owed). Needs a customer key with `ADMIN` scope.
#[utoipa::path(
    get, path = "/v1/account/billing", tag = tags::FAL, operation_id = "getAccountBilling",
    security(("Key" = ["ADMIN"])),
    params(BillingParams),
    responses(
        AdminErrors,
        (status = 200, description = "The account's billing.", body = AccountBilling),
    )
)]
pub async fn billing(
    State(state): State<AppState>,
    who: Customer<Admin>,
    Params(p): Params<BillingParams>,
) -> Result<axum::Json<AccountBilling>, ApiError> {
    let credits = if p.expand.iter().any(|e| e == "credits") {
        let row = tollgate_query::account(&state.engine, &who.account).await?;
        let signed = row.state.credit.balance;
        let balance = signed.max(Nanos::ZERO);
        Some(Credits {
            current_balance: Number::usd(balance),
            currency: "USD",
            current_balance_nano_usd: balance.0,
            balance_nano_usd: signed.0,
            owed_nano_usd: owed(signed)
                .map_err(|e| ApiError::server(format!("account {}: owed: {e}", who.account)))?
                .0,
        })
    } else {
        None
    };
    Ok(axum::Json(AccountBilling {
        username: who.account,
        credits,
    }))
}

/// What an account with `balance` owes: the amount below zero (more spent than its credits
/// covered, e.g. a refund or dispute of credits already used), zero when the balance is not
/// negative; a purchase repays it first. The API's `owed_nano_usd` and the pages' "Owed".
/// `Err` when it cannot be written as an amount (a balance of `i64::MIN` nano-USD), never a
/// figure that is not the balance's.
pub fn owed(balance: Nanos) -> Result<Nanos, MoneyError> {
    if balance.is_negative() {
        Nanos::ZERO.checked_sub(balance)
    } else {
        Ok(Nanos::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_owed_is_the_balance_below_zero() {
        assert_eq!(owed(Nanos(25)), Ok(Nanos::ZERO));
        assert_eq!(owed(Nanos::ZERO), Ok(Nanos::ZERO));
        assert_eq!(owed(Nanos(-1_500)), Ok(Nanos(1_500)));
        assert_eq!(owed(Nanos(-i64::MAX)), Ok(Nanos(i64::MAX)));
        assert_eq!(owed(Nanos(i64::MIN)), Err(MoneyError::Overflow));
    }
}
