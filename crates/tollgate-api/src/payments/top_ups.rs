//! Top-ups the customer pays at the provider's checkout: `POST /v1/account/top-ups` creates
//! one and answers where to pay; `GET /v1/account/top-ups/{top_up_id}` is where it stands
//! (the dashboard's return page reads it). Credits come only from the provider's confirmation
//! (its event, [`super::webhook`]), never from the customer coming back.

use super::stripe::client::CheckoutRequest;
use super::{cents, configured, provider_error, Payments, NANOS_PER_CENT};
use crate::error::{ApiError, ErrorResponse};
use crate::extract::{Admin, Customer, Json, NoParams, Params, Path, PathParam};
use crate::openapi::{tags, AdminErrors};
use crate::wire::{self, Number, Time, UsdString};
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tollgate_core::ids::{AccountId, PurchaseId};
use tollgate_core::machine::{Op, Outcome};
use tollgate_core::payments::{PaymentEffect, TopUpKind, TopUpRecord, TopUpStatus};
use tollgate_core::Nanos;
use utoipa::ToSchema;

/// The longest success or cancel URL taken.
pub const MAX_URL_LEN: usize = 2048;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"amount_usd": "25.00",
    "success_url": "https://app.example.com/billing/done",
    "cancel_url": "https://app.example.com/billing", "save_payment_method": true}))]
pub struct CreateTopUpBody {
    /// Credits to buy, in USD: whole cents, within the server's `[top_ups]` range (default 5
    /// to 10000).
    #[serde(deserialize_with = "wire::usd")]
    #[schema(value_type = UsdString)]
    pub amount_usd: Nanos,
    /// Where the provider sends the customer after paying: an `http` or `https` URL.
    pub success_url: String,
    /// Where the provider sends the customer who gives up: an `http` or `https` URL.
    pub cancel_url: String,
    /// Save the card for automatic top-ups (the customer agreed). Default `false`.
    #[serde(default)]
    pub save_payment_method: Option<bool>,
}

/// How a top-up is paid.
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TopUpKindView {
    /// At the provider's checkout.
    Checkout,
    /// Charged off-session by the auto top-up rule.
    Auto,
}

/// Where a top-up stands.
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TopUpStatusView {
    /// Not paid yet (the customer has not paid, or the provider has not confirmed it).
    AwaitingPayment,
    /// Paid and credited (once).
    Succeeded,
    /// Not paid: declined, expired, or the customer must act (`failure_reason`).
    Failed,
}

/// A top-up.
#[derive(Serialize, ToSchema)]
pub struct TopUpView {
    /// Also the id of the purchase its payment becomes.
    #[schema(value_type = String, example = "top_6c1f0e0b5a7d4c2e9f3a1b8d")]
    top_up_id: PurchaseId,
    kind: TopUpKindView,
    status: TopUpStatusView,
    amount_usd: Number,
    amount_nano_usd: i64,
    /// Where the customer pays (a checkout top-up awaiting payment); `null` otherwise.
    checkout_url: Option<String>,
    /// Why it failed, in the provider's words (`card_declined`, `authentication_required`,
    /// `checkout_expired`, ...); `null` unless failed.
    failure_reason: Option<String>,
    /// The provider's payment (`pi_...`), once known.
    provider_reference: Option<String>,
    created_at: Time,
    updated_at: Time,
}

impl From<&TopUpRecord> for TopUpView {
    fn from(t: &TopUpRecord) -> Self {
        TopUpView {
            top_up_id: t.top_up_id.clone(),
            kind: match t.kind {
                TopUpKind::Checkout => TopUpKindView::Checkout,
                TopUpKind::Auto => TopUpKindView::Auto,
            },
            status: match t.status {
                TopUpStatus::AwaitingPayment => TopUpStatusView::AwaitingPayment,
                TopUpStatus::Succeeded => TopUpStatusView::Succeeded,
                TopUpStatus::Failed => TopUpStatusView::Failed,
            },
            amount_usd: Number::usd(t.amount),
            amount_nano_usd: t.amount.0,
            checkout_url: t
                .checkout_url
                .clone()
                .filter(|_| t.status == TopUpStatus::AwaitingPayment),
            failure_reason: t
                .failure
                .clone()
                .filter(|_| t.status == TopUpStatus::Failed),
            provider_reference: t.payment_intent.clone(),
            created_at: Time(t.created_at),
            updated_at: Time(t.updated_at),
        }
    }
}

/// A new checkout top-up's id: `top_` and 24 random hexadecimal digits.
pub fn new_top_up_id() -> PurchaseId {
    let mut bytes = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut bytes);
    PurchaseId::parse(&format!("top_{}", hex::encode(bytes))).expect("a valid purchase id")
}

/// Checks a URL the provider sends the customer to: it parses, is `http` or `https` with a
/// host; the error names the field.
fn check_return_url(field: &'static str, url: &str) -> Result<(), ApiError> {
    let refuse = |why: String| ApiError::invalid(field, why);
    if url.len() > MAX_URL_LEN {
        return Err(refuse(format!(
            "{field} is longer than {MAX_URL_LEN} characters"
        )));
    }
    let parsed =
        reqwest::Url::parse(url).map_err(|e| refuse(format!("{field} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(refuse(format!(
            "{field} must be http or https, not {}",
            parsed.scheme()
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(refuse(format!("{field} has no host")));
    }
    Ok(())
}

/// Checks a top-up's amount against the range: whole cents, within `[top_ups]`.
pub fn check_amount(
    payments: &Payments,
    field: &'static str,
    amount: Nanos,
) -> Result<(), ApiError> {
    let s = &payments.settings.top_ups;
    if cents(amount).is_none() {
        return Err(ApiError::invalid(
            field,
            format!(
                "{} is not a whole number of cents, which is what is charged",
                amount
            ),
        ));
    }
    if amount < s.min || amount > s.max {
        return Err(ApiError::invalid(
            field,
            format!(
                "a top-up is {} to {}; {} is outside that range",
                s.min, s.max, amount
            ),
        ));
    }
    Ok(())
}

/// The account's customer at the provider: the one recorded, or a new one (created with the
/// account's idempotency key, then recorded; if two calls race, the first recorded stays and
/// both use it).
pub async fn customer_of(
    state: &AppState,
    payments: &Payments,
    account: &AccountId,
) -> Result<String, ApiError> {
    let row = tollgate_query::account(&state.engine, account).await?;
    if let Some(c) = row.state.payment.customer {
        return Ok(c);
    }
    let made = payments
        .client
        .create_customer(account)
        .await
        .map_err(|e| provider_error("create the account's customer", &e))?;
    let outcome = state
        .engine
        .execute(Op::SetPaymentCustomer {
            account: account.clone(),
            customer: made.id.clone(),
        })
        .await??;
    match outcome {
        Outcome::PaymentProfile { profile } => Ok(profile.customer.unwrap_or(made.id)),
        other => Err(ApiError::server(format!("unexpected outcome {other:?}"))),
    }
}

/// Creates a checkout top-up of `account`, as `POST /v1/account/top-ups` does (the dashboard's
/// form calls it too): the amount and URLs checked (400 naming the field, nothing written),
/// the account's customer at the provider (created once), the top-up recorded as awaiting
/// payment, its Checkout Session created (the top-up's id in its idempotency key and
/// metadata), and the session recorded on it. A provider that fails is 502
/// `payment_provider_error`; a top-up whose session could not be made is failed
/// (`checkout_not_created`), so it never lingers as awaiting a payment nobody can make.
pub async fn create(
    state: &AppState,
    account: AccountId,
    body: CreateTopUpBody,
) -> Result<TopUpRecord, ApiError> {
    create_as(state, account, new_top_up_id(), body).await
}

/// [`create`] with the top-up's id drawn by the caller ([`new_top_up_id`]): the dashboard
/// names the page the customer returns to (`success_url`, `cancel_url`) after the top-up, so
/// it draws the id first. A new id each time: an id already used with the same amount is the
/// same top-up again, with another amount 409 `conflict`.
pub async fn create_as(
    state: &AppState,
    account: AccountId,
    top_up_id: PurchaseId,
    body: CreateTopUpBody,
) -> Result<TopUpRecord, ApiError> {
    let payments = configured(state)?.clone();
    check_amount(&payments, "amount_usd", body.amount_usd)?;
    check_return_url("success_url", &body.success_url)?;
    check_return_url("cancel_url", &body.cancel_url)?;
    let customer = customer_of(state, &payments, &account).await?;
    let outcome = state
        .engine
        .execute(Op::CreateTopUp {
            account: account.clone(),
            top_up_id: top_up_id.clone(),
            amount: body.amount_usd,
        })
        .await??;
    if !matches!(outcome, Outcome::TopUp { .. }) {
        return Err(ApiError::server(format!("unexpected outcome {outcome:?}")));
    }
    let amount_cents = body.amount_usd.0 / NANOS_PER_CENT;
    let product = format!("tollgate credits ({})", Number::usd(body.amount_usd).0);
    let session = payments
        .client
        .create_checkout_session(&CheckoutRequest {
            account: &account,
            top_up_id: &top_up_id,
            amount_cents,
            customer: &customer,
            success_url: &body.success_url,
            cancel_url: &body.cancel_url,
            save_payment_method: body.save_payment_method.unwrap_or(false),
            product_name: &product,
        })
        .await;
    let effect = match &session {
        Ok(s) => match &s.url {
            Some(url) => PaymentEffect::CheckoutCreated {
                top_up_id: top_up_id.clone(),
                session: s.id.clone(),
                url: url.clone(),
            },
            None => PaymentEffect::Failed {
                top_up_id: top_up_id.clone(),
                reason: "checkout_not_created".into(),
                needs_customer: false,
            },
        },
        Err(_) => PaymentEffect::Failed {
            top_up_id: top_up_id.clone(),
            reason: "checkout_not_created".into(),
            needs_customer: false,
        },
    };
    let applied = state
        .engine
        .execute(Op::Payment {
            account,
            event: None,
            effect,
        })
        .await??;
    match (session, applied) {
        (Err(e), _) => Err(provider_error("create the checkout session", &e)),
        (Ok(s), _) if s.url.is_none() => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "payment_provider_error",
            "the payment provider created a checkout session without a URL",
        )),
        (
            Ok(_),
            Outcome::PaymentApplied {
                top_up: Some(t), ..
            },
        ) => Ok(t),
        (Ok(_), other) => Err(ApiError::server(format!("unexpected outcome {other:?}"))),
    }
}

/// Buy credits
///
/// Starts a top-up paid at the payment provider's checkout: answers `checkout_url`, where the
/// customer pays (send them there). The credits are added when the provider confirms the
/// payment (its webhook), once, with a top-up invoice; `GET /v1/account/top-ups/{top_up_id}`
/// tells where it stands (the page at `success_url` reads it). With `save_payment_method`,
/// the card is saved for automatic top-ups (`PUT /v1/account/auto-top-up`). Refused with
/// nothing written (400 naming the field): an amount outside `[top_ups]` or not in whole
/// cents, a URL that is not http(s). 502 `payment_provider_error`: the provider failed (the
/// top-up, if recorded, is failed; try again).
#[utoipa::path(
    post, path = "/v1/account/top-ups", tag = tags::BILLING,
    operation_id = "createTopUp", security(("Key" = ["ADMIN"])),
    request_body = CreateTopUpBody,
    responses(
        AdminErrors,
        (status = 201, description = "The top-up, awaiting payment at `checkout_url`.",
            body = TopUpView),
        (status = 502, description = "`payment_provider_error`: the provider failed; nothing \
            is charged.", body = ErrorResponse),
        (status = 503, description = "`payments_not_configured`: this server has no payment \
            provider.", body = ErrorResponse),
    )
)]
pub async fn create_own(
    State(state): State<AppState>,
    who: Customer<Admin>,
    _: Params<NoParams>,
    Json(body): Json<CreateTopUpBody>,
) -> Result<(StatusCode, axum::Json<TopUpView>), ApiError> {
    let t = create(&state, who.account, body).await?;
    Ok((StatusCode::CREATED, axum::Json(TopUpView::from(&t))))
}

/// A top-up's id in a path.
pub struct TopUpId(pub PurchaseId);

impl PathParam for TopUpId {
    const NAME: &'static str = "top_up_id";
    fn parse(text: &str) -> Result<Self, String> {
        PurchaseId::parse(text)
            .map(TopUpId)
            .map_err(|e| e.to_string())
    }
}

/// The top-up `top_up_id` of `account`; 404 when it has none (another account's is unknown
/// here).
pub async fn show(
    state: &AppState,
    account: AccountId,
    top_up_id: PurchaseId,
) -> Result<TopUpRecord, ApiError> {
    let id = top_up_id.clone();
    state
        .engine
        .read(move |r| r.top_up(&account, &id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("top-up {top_up_id} not found")))
}

/// Show a top-up
///
/// Where one of the account's top-ups stands: `awaiting_payment` (not paid, or not yet
/// confirmed by the provider), `succeeded` (credited) or `failed` (with the reason).
#[utoipa::path(
    get, path = "/v1/account/top-ups/{top_up_id}", tag = tags::BILLING,
    operation_id = "getTopUp", security(("Key" = ["ADMIN"])),
    params(("top_up_id" = String, Path, description = "The top-up's id.")),
    responses(
        AdminErrors,
        (status = 200, description = "The top-up.", body = TopUpView),
        (status = 404, description = "`not_found`: the account has no such top-up.",
            body = ErrorResponse),
    )
)]
pub async fn show_own(
    State(state): State<AppState>,
    who: Customer<Admin>,
    _: Params<NoParams>,
    Path(TopUpId(id)): Path<TopUpId>,
) -> Result<axum::Json<TopUpView>, ApiError> {
    let t = show(&state, who.account, id).await?;
    Ok(axum::Json(TopUpView::from(&t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_urls_are_http_with_a_host() {
        assert!(check_return_url("success_url", "https://app.example.com/done?x=1").is_ok());
        assert!(check_return_url("success_url", "http://127.0.0.1:3000/d").is_ok());
        for bad in [
            "ftp://x.com/",
            "javascript:alert(1)",
            "/relative",
            "https://",
            "",
        ] {
            let e = check_return_url("cancel_url", bad).unwrap_err();
            assert_eq!(e.extra["field"], "cancel_url", "{bad}");
        }
    }

    #[test]
    fn top_up_ids_are_new_each_time() {
        let (a, b) = (new_top_up_id(), new_top_up_id());
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("top_") && a.as_str().len() == 28);
    }
}
