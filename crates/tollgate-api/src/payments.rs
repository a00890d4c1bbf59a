//! The customer's payment history (`GET /v1/account/payments`, docs/reference/API.md section 4,
//! ADMIN scope): the account's paid purchases, newest first, each with its top-up invoice.

use crate::error::ApiError;
use crate::extract::{Admin, Customer, Page, Params};
use crate::openapi::{tags, AdminErrors};
use crate::platform::paging;
use crate::wire::{Number, Time};
use crate::AppState;
use axum::extract::State;
use serde::Serialize;
use tollgate_core::ids::PurchaseId;
use tollgate_store::{InvoiceRecord, PaymentRecord};
use utoipa::ToSchema;

/// Where a payment stands. Every payment is `succeeded` for now: refunds and disputes come
/// with the payment provider.
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Succeeded,
}

/// A paid purchase of credits.
#[derive(Serialize, ToSchema)]
pub struct PaymentView {
    purchase_id: PurchaseId,
    created_at: Time,
    /// The amount paid, USD.
    amount_usd: Number,
    /// The exact `amount_usd`, nano-USD.
    amount_nano_usd: i64,
    /// Always `succeeded` for now (refunds and disputes come with the payment provider).
    status: PaymentStatus,
    /// Refunded so far, nano-USD; always 0 for now.
    refunded_nano_usd: i64,
    /// The payment provider; `null` for now (purchases are recorded by the operator).
    provider: Option<String>,
    /// The provider's reference of the payment; `null` for now.
    provider_reference: Option<String>,
    /// The top-up invoice issued with the purchase (`GET /v1/account/invoices/{invoice_id}`);
    /// `null` for a purchase made before invoices were issued.
    #[schema(example = "inv_2026_000001")]
    invoice_id: Option<String>,
    /// When the purchased credits expire; `null` if never.
    credits_expire_at: Option<Time>,
}

impl From<PaymentRecord> for PaymentView {
    fn from(p: PaymentRecord) -> Self {
        PaymentView {
            purchase_id: p.purchase_id,
            created_at: Time(p.created_at),
            amount_usd: Number::usd(p.amount),
            amount_nano_usd: p.amount.0,
            status: PaymentStatus::Succeeded,
            refunded_nano_usd: 0,
            provider: None,
            provider_reference: None,
            invoice_id: p.invoice.map(|(y, n)| InvoiceRecord::id_of(y, n)),
            credits_expire_at: p.expires_at.map(Time),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct PaymentList {
    payments: Vec<PaymentView>,
    /// Cursor for the next page of results, null if no more pages.
    next_cursor: Option<String>,
    /// Whether more results are available.
    has_more: bool,
}

/// List payments
///
/// The authenticated account's payments (its paid purchases; free credits are grants, not
/// payments), newest first, with keyset paging (`limit` default 100, at most 1000;
/// `next_cursor` is opaque). Each shows the top-up invoice issued with it. Every payment is
/// `succeeded` for now, with nothing refunded and no provider: refunds, disputes and payment
/// providers come later. Needs a customer key with `ADMIN` scope (an `API` key answers 403).
#[utoipa::path(
    get, path = "/v1/account/payments", tag = tags::BILLING, operation_id = "listPayments",
    security(("Key" = ["ADMIN"])),
    params(Page),
    responses(AdminErrors, (status = 200, description = "The account's payments.", body = PaymentList))
)]
pub async fn account_payments(
    State(state): State<AppState>,
    who: Customer<Admin>,
    Params(page): Params<Page>,
) -> Result<axum::Json<PaymentList>, ApiError> {
    let found = tollgate_query::payments::list(
        &state.engine,
        who.account,
        page.cursor.as_ref(),
        page.limit,
    )
    .await?;
    let (next_cursor, has_more) = paging(found.next_cursor);
    Ok(axum::Json(PaymentList {
        payments: found.items.into_iter().map(PaymentView::from).collect(),
        next_cursor,
        has_more,
    }))
}
