//! The auto top-up rule (`PUT` and `GET /v1/account/auto-top-up`): when the available balance
//! falls below the threshold, the write path starts one top-up for the shortfall (rounded up
//! to the rule's amount, within the monthly cap), and the webhook dispatcher charges the saved
//! card off-session ([`super::off_session`]). The decision and its limits are the core's
//! (`tollgate_core::payments`); this is the rule as the customer sets and reads it.

use super::{cents, configured};
use crate::error::{ApiError, ErrorResponse};
use crate::extract::{Admin, Customer, Json, NoParams, Params};
use crate::openapi::{tags, AdminErrors};
use crate::wire::{self, Number, UsdString};
use crate::AppState;
use axum::extract::State;
use chrono::Datelike;
use serde::{Deserialize, Serialize};
use tollgate_core::ids::{AccountId, PurchaseId};
use tollgate_core::machine::{Op, Outcome};
use tollgate_core::payments::{AutoTopUpRule, PausedReason, PaymentProfile};
use tollgate_core::{Nanos, Timestamp};
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"enabled": true, "threshold_usd": "10.00", "amount_usd": "25.00",
    "max_per_month_usd": "200.00"}))]
pub struct AutoTopUpBody {
    /// `false` stops it (the rule is kept).
    pub enabled: bool,
    /// A top-up starts when the available balance (balance − holds) falls below this, in USD.
    #[serde(deserialize_with = "wire::usd")]
    #[schema(value_type = UsdString)]
    pub threshold_usd: Nanos,
    /// What one top-up adds, in USD (whole cents, within the server's `[top_ups]` range); a
    /// larger shortfall is topped up by the smallest multiple of it that covers it.
    #[serde(deserialize_with = "wire::usd")]
    #[schema(value_type = UsdString)]
    pub amount_usd: Nanos,
    /// The most the auto top-ups of one calendar month (UTC) may add, in USD (whole cents, at
    /// least `amount_usd`).
    #[serde(deserialize_with = "wire::usd")]
    #[schema(value_type = UsdString)]
    pub max_per_month_usd: Nanos,
}

/// Whether the rule runs.
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleStatus {
    /// It runs (when enabled).
    Active,
    /// It waits for the customer to set it again (`paused_reason`).
    Paused,
}

/// Why the rule is paused.
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PausedReasonView {
    /// The bank asked the customer to confirm a charge: pay a top-up at checkout, then set the
    /// rule again.
    AuthenticationRequired,
    /// Three charges in a row failed.
    RepeatedFailures,
    /// A payment of the account was disputed: the saved card was forgotten. Pay a top-up at
    /// checkout saving a card (`save_payment_method`), then set the rule again.
    PaymentDisputed,
}

/// The account's auto top-up rule and this month's top-ups.
#[derive(Serialize, ToSchema)]
pub struct AutoTopUpView {
    /// `false` also when no rule was ever set (the amounts are then `null`).
    enabled: bool,
    threshold_usd: Option<Number>,
    threshold_nano_usd: Option<i64>,
    amount_usd: Option<Number>,
    amount_nano_usd: Option<i64>,
    max_per_month_usd: Option<Number>,
    max_per_month_nano_usd: Option<i64>,
    status: RuleStatus,
    /// Why it is paused; `null` when active.
    paused_reason: Option<PausedReasonView>,
    /// Auto top-ups of this calendar month (UTC) that succeeded.
    month_count: u32,
    /// What this month's auto top-ups add, paid or still in flight (the monthly cap counts
    /// these).
    month_total_usd: Number,
    month_total_nano_usd: i64,
    /// The auto top-up started and not yet paid or failed (`null`: none; never two).
    #[schema(value_type = Option<String>)]
    in_flight: Option<PurchaseId>,
    /// Charges that failed in a row (3 pause the rule).
    failures: u32,
    /// A card was saved at a checkout (`save_payment_method`): the rule can be enabled.
    payment_method_saved: bool,
}

/// The UTC calendar month of `at`, as `yyyymm`.
fn month_of(at: Timestamp) -> i32 {
    chrono::DateTime::from_timestamp_millis(at.0).map_or(0, |d| d.year() * 100 + d.month() as i32)
}

impl AutoTopUpView {
    /// The rule of `profile` as read at `now`: a month that has passed counts nothing.
    pub fn of(profile: &PaymentProfile, now: Timestamp) -> AutoTopUpView {
        let saved = profile.payment_method.is_some() && profile.customer.is_some();
        let Some(r) = &profile.auto_top_up else {
            return AutoTopUpView {
                enabled: false,
                threshold_usd: None,
                threshold_nano_usd: None,
                amount_usd: None,
                amount_nano_usd: None,
                max_per_month_usd: None,
                max_per_month_nano_usd: None,
                status: RuleStatus::Active,
                paused_reason: None,
                month_count: 0,
                month_total_usd: Number::usd(Nanos::ZERO),
                month_total_nano_usd: 0,
                in_flight: None,
                failures: 0,
                payment_method_saved: saved,
            };
        };
        let this_month = r.month == month_of(now);
        let (count, total) = if this_month {
            (r.month_count, r.month_total)
        } else {
            (0, Nanos::ZERO)
        };
        AutoTopUpView {
            enabled: r.enabled,
            threshold_usd: Some(Number::usd(r.threshold)),
            threshold_nano_usd: Some(r.threshold.0),
            amount_usd: Some(Number::usd(r.amount)),
            amount_nano_usd: Some(r.amount.0),
            max_per_month_usd: Some(Number::usd(r.max_per_month)),
            max_per_month_nano_usd: Some(r.max_per_month.0),
            status: if r.paused.is_some() {
                RuleStatus::Paused
            } else {
                RuleStatus::Active
            },
            paused_reason: r.paused.map(|p| match p {
                PausedReason::AuthenticationRequired => PausedReasonView::AuthenticationRequired,
                PausedReason::RepeatedFailures => PausedReasonView::RepeatedFailures,
                PausedReason::PaymentDisputed => PausedReasonView::PaymentDisputed,
            }),
            month_count: count,
            month_total_usd: Number::usd(total),
            month_total_nano_usd: total.0,
            in_flight: r.in_flight.clone(),
            failures: r.failures,
            payment_method_saved: saved,
        }
    }
}

/// The account's payment profile as stored.
pub async fn profile(state: &AppState, account: &AccountId) -> Result<PaymentProfile, ApiError> {
    Ok(tollgate_query::account(&state.engine, account)
        .await?
        .state
        .payment)
}

/// Sets the account's rule, as `PUT /v1/account/auto-top-up` does (the dashboard's form calls
/// it too): the profile after the change, or the refusal (400 naming the field; 409
/// `payment_method_required` without a saved card), with nothing written.
pub async fn set(
    state: &AppState,
    account: AccountId,
    body: AutoTopUpBody,
) -> Result<PaymentProfile, ApiError> {
    let payments = configured(state)?;
    // The amounts are checked when the rule is enabled, the only time they are charged:
    // turning it off is never refused for them (the server's `[top_ups]` range may have
    // narrowed since they were set).
    if body.enabled {
        for (field, n) in [
            ("amount_usd", body.amount_usd),
            ("max_per_month_usd", body.max_per_month_usd),
        ] {
            if cents(n).is_none() {
                return Err(ApiError::invalid(
                    field,
                    format!("{n} is not a whole number of cents, which is what is charged"),
                ));
            }
        }
        super::top_ups::check_amount(payments, "amount_usd", body.amount_usd)?;
    }
    let outcome = state
        .engine
        .execute(Op::SetAutoTopUp {
            account,
            rule: AutoTopUpRule {
                enabled: body.enabled,
                threshold: body.threshold_usd,
                amount: body.amount_usd,
                max_per_month: body.max_per_month_usd,
            },
        })
        .await??;
    match outcome {
        Outcome::PaymentProfile { profile } => Ok(profile),
        other => Err(ApiError::server(format!("unexpected outcome {other:?}"))),
    }
}

/// Set the auto top-up rule
///
/// When the available balance (balance − holds) falls below `threshold_usd`, exactly one
/// top-up is started, for `amount_usd` or the smallest multiple of it that brings the
/// available balance back to the threshold, trimmed to what `max_per_month_usd` leaves this
/// month (none when that is below the server's `[top_ups] min_usd`); the card saved at an
/// earlier checkout is charged off-session, and the credits come with the confirmed payment.
/// Never two in flight; a declined charge waits `[top_ups] retry_after_s` before the next;
/// three failures in a row, or a bank that asks the customer to authenticate, pause the rule
/// (`top_up.paused`) until it is set again; a disputed payment pauses it and forgets the saved
/// card, so a new checkout must save one first. Setting the rule (again) makes it active.
/// Refused with nothing written, when enabling: 409 `payment_method_required` when no card is
/// saved (pay a top-up with `save_payment_method` first); 400 naming the field for an amount
/// outside `[top_ups]`, not in whole cents, or a monthly cap below the amount. Turning the
/// rule off (`enabled` `false`) is never refused for its amounts.
#[utoipa::path(
    put, path = "/v1/account/auto-top-up", tag = tags::BILLING,
    operation_id = "setAutoTopUp", security(("Key" = ["ADMIN"])),
    request_body = AutoTopUpBody,
    responses(
        AdminErrors,
        (status = 200, description = "The rule as set.", body = AutoTopUpView),
        (status = 409, description = "`payment_method_required`: no card is saved for \
            off-session charges.", body = ErrorResponse),
        (status = 503, description = "`payments_not_configured`: this server has no payment \
            provider.", body = ErrorResponse),
    )
)]
pub async fn set_own(
    State(state): State<AppState>,
    who: Customer<Admin>,
    _: Params<NoParams>,
    Json(body): Json<AutoTopUpBody>,
) -> Result<axum::Json<AutoTopUpView>, ApiError> {
    let p = set(&state, who.account, body).await?;
    Ok(axum::Json(AutoTopUpView::of(&p, state.engine.now())))
}

/// Show the auto top-up rule
///
/// The rule (`enabled` `false` and `null` amounts when none was set), whether it is active or
/// paused and why, this month's auto top-ups (how many succeeded, what they add, paid or in
/// flight), the one in flight, and whether a card is saved.
#[utoipa::path(
    get, path = "/v1/account/auto-top-up", tag = tags::BILLING,
    operation_id = "getAutoTopUp", security(("Key" = ["ADMIN"])),
    responses(
        AdminErrors,
        (status = 200, description = "The rule.", body = AutoTopUpView),
        (status = 503, description = "`payments_not_configured`: this server has no payment \
            provider.", body = ErrorResponse),
    )
)]
pub async fn show_own(
    State(state): State<AppState>,
    who: Customer<Admin>,
    _: Params<NoParams>,
) -> Result<axum::Json<AutoTopUpView>, ApiError> {
    configured(&state)?;
    let p = profile(&state, &who.account).await?;
    Ok(axum::Json(AutoTopUpView::of(&p, state.engine.now())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_month_is_its_utc_calendar_month() {
        assert_eq!(month_of(Timestamp(1_780_272_000_000)), 202606);
        assert_eq!(month_of(Timestamp(1_780_271_999_999)), 202605);
    }
}
