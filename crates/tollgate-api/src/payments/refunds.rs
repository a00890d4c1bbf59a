//! Operator refunds (`POST /v1/admin/accounts/{username}/purchases/{purchase_id}/refund`),
//! idempotent on `refund_id`. A purchase paid through the provider (its top-up has a payment)
//! is refunded there first, then the charge's cumulative refunded amount is read back and
//! applied, so the provider's `charge.refunded` event for the same refund, before or after,
//! takes nothing twice. A manual purchase (an operator's paid purchase) gives back only what
//! is left of its credits. Either way the credits taken are a credit note correcting the
//! purchase's top-up invoice.
//!
//! A refund id is refunded at the provider once, however late it is repeated: the refund's
//! idempotency key is the refund id, but the provider keeps keys 24 hours only, so before
//! creating a refund the payment's refunds are listed and one whose metadata names the same
//! refund id (`tollgate_refund_id`, with the installation and account) is taken as the one
//! made. A first attempt whose answer was lost, or whose record never committed, is thus
//! completed by its repeat days later, not made twice.

use super::{cents, configured, from_cents, provider_error};
use crate::error::{ApiError, ErrorResponse};
use crate::extract::{Json, NoParams, Operator, Params, Path2};
use crate::openapi::{tags, OperatorErrors, Replayed};
use crate::wire::{self, Number, Time, UsdString};
use crate::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use tollgate_core::ids::{AccountId, PurchaseId};
use tollgate_core::machine::{InvoiceKind, Op, Outcome};
use tollgate_core::payments::{ProviderRefund, RefundRecord};
use tollgate_core::Nanos;
use tollgate_store::{InvoiceRecord, InvoicesQuery};
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"refund_id": "rf-1", "amount_usd": "10.00"}))]
pub struct RefundBody {
    /// Your idempotency id for this refund, unique per account.
    #[schema(value_type = String, example = "rf-1")]
    pub refund_id: PurchaseId,
    /// What to give back, in USD: more than 0; whole cents for a purchase paid through the
    /// payment provider.
    #[serde(deserialize_with = "wire::usd")]
    #[schema(value_type = UsdString)]
    pub amount_usd: Nanos,
}

/// A refund, as made.
#[derive(Serialize, ToSchema)]
pub struct RefundView {
    #[schema(value_type = String)]
    refund_id: PurchaseId,
    #[schema(value_type = String)]
    purchase_id: PurchaseId,
    /// What was asked to refund.
    amount_usd: Number,
    amount_nano_usd: i64,
    /// What this refund took from the balance: for a purchase paid through the provider, what
    /// the charge's refunded amount adds to what was already taken (0 when the provider's
    /// event was applied first); for a manual purchase, the amount.
    taken_usd: Number,
    taken_nano_usd: i64,
    /// The provider's refund (`re_...`); `null` for a manual purchase.
    provider_reference: Option<String>,
    /// The balance right after it.
    balance_usd: Number,
    balance_nano_usd: i64,
    /// The credit note issued for what was taken (`null` when nothing was).
    #[schema(example = "inv_2026_000012")]
    credit_note_id: Option<String>,
    created_at: Time,
}

impl RefundView {
    fn of(r: &RefundRecord, credit_note_id: Option<String>) -> RefundView {
        RefundView {
            refund_id: r.refund_id.clone(),
            purchase_id: r.purchase_id.clone(),
            amount_usd: Number::usd(r.amount),
            amount_nano_usd: r.amount.0,
            taken_usd: Number::usd(r.taken),
            taken_nano_usd: r.taken.0,
            provider_reference: r.provider_reference.clone(),
            balance_usd: Number::usd(r.balance_after),
            balance_nano_usd: r.balance_after.0,
            credit_note_id,
            created_at: Time(r.created_at),
        }
    }
}

/// The credit note a refund issued: the account's credit note of that purchase, issued with
/// it, for minus what it took.
pub async fn credit_note_of(
    state: &AppState,
    r: &RefundRecord,
) -> Result<Option<InvoiceRecord>, ApiError> {
    if r.taken.0 <= 0 {
        return Ok(None);
    }
    let q = InvoicesQuery {
        account: Some(r.account.clone()),
        status: None,
        kind: Some(InvoiceKind::CreditNote),
        before: None,
        limit: 1000,
    };
    let notes = state.engine.read(move |rd| rd.invoices(&q)).await?;
    Ok(notes.into_iter().find(|i| {
        i.purchase_id.as_ref() == Some(&r.purchase_id)
            && i.issued_at == r.created_at
            && i.total.0 == -r.taken.0
    }))
}

/// Refunds `amount` of `account`'s purchase `purchase_id` as `refund_id`, as
/// `POST .../purchases/{purchase_id}/refund` does (the console's form calls it too): the
/// refund, and whether it was made before (then nothing moved again).
pub async fn refund(
    state: &AppState,
    account: AccountId,
    purchase_id: PurchaseId,
    refund_id: PurchaseId,
    amount: Nanos,
) -> Result<(RefundRecord, bool), ApiError> {
    if amount.0 <= 0 {
        return Err(ApiError::invalid("amount_usd", "a refund is more than 0"));
    }
    // A refund made before answers as it did, without asking the provider again (its key is
    // kept 24 hours only).
    let made = {
        let (a, id) = (account.clone(), refund_id.clone());
        state.engine.read(move |r| r.refund(&a, &id)).await?
    };
    if let Some(r) = made {
        if r.purchase_id != purchase_id || r.amount != amount {
            return Err(ApiError::conflict(format!(
                "refund {refund_id} was made of purchase {} for {}; a refund id is used once",
                r.purchase_id, r.amount
            )));
        }
        return Ok((r, true));
    }
    let purchase = {
        let (a, id) = (account.clone(), purchase_id.clone());
        state.engine.read(move |r| r.purchase(&a, &id)).await?
    }
    .ok_or_else(|| {
        ApiError::not_found(format!("account {account} has no purchase {purchase_id}"))
    })?;
    let top_up = {
        let (a, id) = (account.clone(), purchase_id.clone());
        state.engine.read(move |r| r.top_up(&a, &id)).await?
    };
    // The provider's amount in cents when a refund of this id was made there for another amount.
    let mut differs: Option<i64> = None;
    let provider = match top_up.and_then(|t| t.payment_intent) {
        None => None,
        Some(payment_intent) => {
            let payments = configured(state)?;
            let amount_cents = cents(amount).ok_or_else(|| {
                ApiError::invalid(
                    "amount_usd",
                    format!("{amount} is not a whole number of cents, which is what the provider refunds"),
                )
            })?;
            let client = &payments.client;
            // Made before (an attempt whose answer or record was lost)? Then it is the one.
            let before = client
                .find_refund(&account, &refund_id, &payment_intent)
                .await
                .map_err(|e| provider_error("list the payment's refunds", &e))?;
            let made = match before {
                Some(made) => {
                    if made.amount != amount_cents {
                        // Made at the provider for another amount (an attempt whose answer was
                        // lost, then a changed form): the money went back, so it is recorded
                        // as made, for what it was, and the caller is told.
                        differs = Some(made.amount);
                    }
                    tracing::info!(
                        account = %account,
                        purchase_id = %purchase_id,
                        refund_id = %refund_id,
                        provider_refund = %made.id,
                        "the refund was made at the payment provider before; recording it"
                    );
                    made
                }
                None => {
                    let left = purchase
                        .amount
                        .checked_sub(purchase.refunded)
                        .unwrap_or(Nanos::ZERO);
                    if amount > left {
                        return Err(ApiError::new(
                            StatusCode::CONFLICT,
                            "not_refundable",
                            format!(
                                "purchase {purchase_id} has {left} left to refund of {}; \
                                 {amount} is more",
                                purchase.amount
                            ),
                        ));
                    }
                    client
                        .create_refund(
                            &account,
                            &refund_id,
                            &purchase_id,
                            &payment_intent,
                            amount_cents,
                        )
                        .await
                        .map_err(|e| provider_error("refund the payment", &e))?
                }
            };
            let charge = match made.charge.clone() {
                Some(c) => c,
                None => client
                    .payment_intent(&payment_intent)
                    .await
                    .map_err(|e| provider_error("read the refunded payment", &e))?
                    .latest_charge
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::BAD_GATEWAY,
                            "payment_provider_error",
                            "the payment provider's refund names no charge",
                        )
                    })?,
            };
            let charge = client
                .charge(&charge)
                .await
                .map_err(|e| provider_error("read the refunded charge", &e))?;
            let refunded_total = from_cents(charge.amount_refunded).ok_or_else(|| {
                ApiError::server("the provider's refunded amount is out of range")
            })?;
            tracing::info!(
                account = %account,
                purchase_id = %purchase_id,
                refund_id = %refund_id,
                provider_refund = %made.id,
                "refunded at the payment provider"
            );
            Some(ProviderRefund {
                reference: made.id,
                refunded_total,
            })
        }
    };
    let amount = match differs {
        Some(c) => from_cents(c)
            .ok_or_else(|| ApiError::server("the provider's refund amount is out of range"))?,
        None => amount,
    };
    let outcome = state
        .engine
        .execute(Op::Refund {
            account,
            purchase_id,
            refund_id: refund_id.clone(),
            amount,
            provider,
        })
        .await??;
    if let Some(c) = differs {
        return Err(ApiError::conflict(format!(
            "refund {refund_id} was made at the payment provider for {c} cents, not the amount \
             asked; it is recorded as made, for what it was (a refund id is used once)"
        )));
    }
    match outcome {
        Outcome::Refunded { refund, replayed } => Ok((refund, replayed)),
        other => Err(ApiError::server(format!("unexpected outcome {other:?}"))),
    }
}

/// Refund a purchase
///
/// Gives back `amount_usd` of a paid purchase and takes its credits back. A purchase paid
/// through the payment provider is refunded there (the money goes back to the card), then
/// the balance moves by what the charge's refunded amount adds to what was already taken (the
/// provider's `charge.refunded` event of the same refund moves nothing more); it may go below
/// zero, by what was already spent, which is then owed. A manual purchase gives back only
/// what is left of its credits (409 `not_refundable` beyond it); free credits are not
/// refundable (409). Every refund that takes credits issues a credit note (negative total,
/// correcting the purchase's top-up invoice). Idempotent on `refund_id`: the same id with the
/// same purchase and amount answers the first answer again (header `idempotent-replayed`)
/// and moves nothing; with another, 409 `conflict`. A repeat of a refund whose answer was
/// lost (502) finds the refund already made at the provider by its id, however late, and
/// records it: the money goes back once.
#[utoipa::path(
    post, path = "/v1/admin/accounts/{username}/purchases/{purchase_id}/refund",
    tag = tags::OPERATOR, operation_id = "refundPurchase", security(("Key" = ["OPERATOR"])),
    params(
        ("username" = AccountId, Path, description = "The account's username."),
        ("purchase_id" = String, Path, description = "The purchase to refund."),
    ),
    request_body = RefundBody,
    responses(
        OperatorErrors,
        (status = 201, description = "The refund (the first answer, when replayed).",
            body = RefundView, headers(("idempotent-replayed" = Replayed))),
        (status = 404, description = "`not_found`: unknown account or purchase.",
            body = ErrorResponse),
        (status = 409, description = "`not_refundable`: free credits, or more than is left \
            to refund; `conflict`: the `refund_id` was used for another refund.",
            body = ErrorResponse),
        (status = 502, description = "`payment_provider_error`: the provider refused or did \
            not answer; nothing was taken (repeat with the same `refund_id`).",
            body = ErrorResponse),
        (status = 503, description = "`payments_not_configured`: the purchase was paid through \
            the provider, and this server has none.", body = ErrorResponse),
    )
)]
pub async fn refund_purchase(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Path2(account, purchase_id): Path2<AccountId, PurchaseId>,
    Json(body): Json<RefundBody>,
) -> Result<(StatusCode, HeaderMap, axum::Json<RefundView>), ApiError> {
    let (r, replayed) = refund(
        &state,
        account,
        purchase_id,
        body.refund_id,
        body.amount_usd,
    )
    .await?;
    let note = credit_note_of(&state, &r).await?;
    Ok((
        StatusCode::CREATED,
        Replayed::header(replayed),
        axum::Json(RefundView::of(&r, note.map(|n| n.invoice_id()))),
    ))
}
