//! The customer's payment history (`GET /v1/account/payments`, docs/reference/API.md section 4,
//! ADMIN scope): the account's paid purchases, newest first, each with its top-up invoice,
//! what was refunded or disputed of it, and the provider's reference when it was paid
//! through the provider.

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

/// Where a payment stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Paid, nothing refunded or disputed.
    Succeeded,
    /// Part of it was refunded.
    PartiallyRefunded,
    /// All of it was refunded.
    Refunded,
    /// A dispute (chargeback) of it is open or was lost.
    Disputed,
}

impl PaymentStatus {
    /// A dispute first (it locks the account), then what was refunded.
    pub fn of(p: &PaymentRecord) -> PaymentStatus {
        if p.dispute_open {
            PaymentStatus::Disputed
        } else if p.refunded.0 > 0 && p.refunded >= p.amount {
            PaymentStatus::Refunded
        } else if p.refunded.0 > 0 {
            PaymentStatus::PartiallyRefunded
        } else {
            PaymentStatus::Succeeded
        }
    }
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
    status: PaymentStatus,
    /// Refunded so far (credits taken back), nano-USD.
    refunded_nano_usd: i64,
    /// `refunded_nano_usd` in USD.
    refunded_usd: Number,
    /// Taken back for disputes now (open and lost ones), nano-USD.
    disputed_nano_usd: i64,
    /// The payment provider (`stripe`) when it was paid through it; `null` for a purchase the
    /// operator recorded.
    provider: Option<String>,
    /// The provider's payment (`pi_...`); `null` for a purchase the operator recorded.
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
        let status = PaymentStatus::of(&p);
        PaymentView {
            purchase_id: p.purchase_id,
            created_at: Time(p.created_at),
            amount_usd: Number::usd(p.amount),
            amount_nano_usd: p.amount.0,
            status,
            refunded_nano_usd: p.refunded.0,
            refunded_usd: Number::usd(p.refunded),
            disputed_nano_usd: p.disputed.0,
            provider: p
                .provider_reference
                .as_ref()
                .map(|_| super::PROVIDER.to_string()),
            provider_reference: p.provider_reference.clone(),
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
/// `next_cursor` is opaque). Each shows the top-up invoice issued with it, its status
/// (`succeeded`, `partially_refunded`, `refunded`, `disputed`), what was refunded and is
/// disputed, and the payment provider's reference when it was paid through it (a top-up).
/// Needs a customer key with `ADMIN` scope (an `API` key answers 403).
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
