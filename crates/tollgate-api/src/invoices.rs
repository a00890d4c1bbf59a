//! Invoices (docs/reference/API.md section 4): the customer's own (`GET /v1/account/invoices`,
//! `GET /v1/account/invoices/{invoice_id}` and its PDF, `.../{invoice_id}/pdf` ([`pdf`]),
//! ADMIN scope), the operator's list (`GET /v1/admin/invoices`) and the issuer printed on them
//! (`PUT /v1/admin/issuer`).
//!
//! A paid purchase issues a top-up invoice in the commit that grants its credits; numbers are
//! `<prefix>-<year>-<seq>`, gapless in issue order across accounts.

use crate::error::{ApiError, ErrorResponse};
use crate::extract::{Admin, Customer, FromQuery, Json, NoParams, Operator, Page, Paged, Params};
use crate::openapi::{tags, AdminErrors, OperatorErrors};
use crate::platform::paging;
use crate::query_string::Query;
use crate::wire::{Number, Time};
use crate::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tollgate_core::ids::{AccountId, PurchaseId};
use tollgate_core::machine::{InvoiceKind, InvoiceStatus};
use tollgate_engine::AdminCmd;
use tollgate_query::invoices::InvoiceFilter;
use tollgate_store::{InvoiceRecord, Issuer};
use utoipa::{IntoParams, ToSchema};

mod pdf;

/// What an invoice is for.
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceKindView {
    /// A paid purchase of credits.
    TopUp,
}

/// Where an invoice stands.
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatusView {
    Open,
    Paid,
    Void,
}

/// One line of an invoice.
#[derive(Serialize, ToSchema)]
pub struct InvoiceLine {
    /// The endpoint charged; `null` on a top-up invoice.
    endpoint_id: Option<String>,
    /// `credit_usd` on a top-up invoice.
    unit: &'static str,
    quantity: Number,
    unit_price: Number,
    percent_discount: Number,
    cost_subtotal: Number,
    cost_discount: Number,
    cost_total: Number,
    /// The exact `cost_total`, nano-USD.
    cost_total_nano_usd: i64,
    charge_period_start: Time,
    charge_period_end: Time,
}

/// The issuer printed on invoices.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "Example AI Inc.", "address": "1 Main St, Springfield",
    "email": "billing@example.com", "tax_id": "US12-3456789"}))]
pub struct IssuerBody {
    /// 1 to 200 characters.
    name: String,
    /// 1 to 500 characters.
    address: String,
    /// At most 200 characters.
    #[serde(default)]
    email: Option<String>,
    /// At most 100 characters.
    #[serde(default)]
    tax_id: Option<String>,
}

impl From<Issuer> for IssuerBody {
    fn from(i: Issuer) -> Self {
        IssuerBody {
            name: i.name,
            address: i.address,
            email: i.email,
            tax_id: i.tax_id,
        }
    }
}

/// An issued invoice. Its amounts and lines never change.
#[derive(Serialize, ToSchema)]
pub struct InvoiceView {
    invoice_id: String,
    /// `<prefix>-<YYYY>-<NNNNNN>`: gapless in issue order across all accounts, restarting at
    /// 000001 each calendar year (UTC), six digits or more.
    #[schema(example = "TG-2026-000001")]
    number: String,
    /// The account invoiced.
    username: AccountId,
    kind: InvoiceKindView,
    status: InvoiceStatusView,
    issued_at: Time,
    period_start: Time,
    period_end: Time,
    #[schema(value_type = String, example = "USD")]
    currency: &'static str,
    lines: Vec<InvoiceLine>,
    subtotal: Number,
    discount: Number,
    total: Number,
    /// The exact `total`, nano-USD.
    total_nano_usd: i64,
    /// The purchase a top-up invoice is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    purchase_id: Option<PurchaseId>,
    /// Who issues the invoice; `null` until the operator sets it (`PUT /v1/admin/issuer`).
    issuer: Option<IssuerBody>,
}

fn view(i: InvoiceRecord, issuer: Option<&Issuer>) -> InvoiceView {
    let total = Number::usd(i.total);
    let zero = Number(Decimal::ZERO);
    let line = match i.kind {
        InvoiceKind::TopUp => InvoiceLine {
            endpoint_id: None,
            unit: "credit_usd",
            quantity: total,
            unit_price: Number(Decimal::ONE),
            percent_discount: zero,
            cost_subtotal: total,
            cost_discount: zero,
            cost_total: total,
            cost_total_nano_usd: i.total.0,
            charge_period_start: Time(i.period_start),
            charge_period_end: Time(i.period_end),
        },
    };
    InvoiceView {
        invoice_id: i.invoice_id(),
        number: i.number(),
        username: i.account,
        kind: match i.kind {
            InvoiceKind::TopUp => InvoiceKindView::TopUp,
        },
        status: match i.status {
            InvoiceStatus::Open => InvoiceStatusView::Open,
            InvoiceStatus::Paid => InvoiceStatusView::Paid,
            InvoiceStatus::Void => InvoiceStatusView::Void,
        },
        issued_at: Time(i.issued_at),
        period_start: Time(i.period_start),
        period_end: Time(i.period_end),
        currency: "USD",
        lines: vec![line],
        subtotal: total,
        discount: zero,
        total,
        total_nano_usd: i.total.0,
        purchase_id: i.purchase_id,
        issuer: issuer.cloned().map(IssuerBody::from),
    }
}

#[derive(Serialize, ToSchema)]
pub struct InvoiceList {
    /// Cursor for the next page of results, null if no more pages.
    next_cursor: Option<String>,
    /// Whether more results are available.
    has_more: bool,
    invoices: Vec<InvoiceView>,
}

/// The filters of an invoice list.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InvoiceParams {
    /// Only invoices in this status.
    #[param(value_type = Option<InvoiceStatusView>)]
    status: Option<InvoiceStatus>,
    /// Only invoices of this kind.
    #[param(value_type = Option<InvoiceKindView>)]
    kind: Option<InvoiceKind>,
}

impl FromQuery for InvoiceParams {
    fn from_query(q: &Query) -> Result<Self, ApiError> {
        let bad = |name: &str, allowed: &str| {
            ApiError::validation(format!("`{name}` must be one of {allowed}")).with("field", name)
        };
        Ok(InvoiceParams {
            status: q
                .one("status")?
                .map(|s| InvoiceStatus::parse(s).ok_or_else(|| bad("status", "open, paid, void")))
                .transpose()?,
            kind: q
                .one("kind")?
                .map(|s| InvoiceKind::parse(s).ok_or_else(|| bad("kind", "top_up")))
                .transpose()?,
        })
    }
}

/// The operator's filters: the invoice filters and the account.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AdminInvoiceParams {
    /// Only this account's invoices.
    #[param(value_type = Option<AccountId>)]
    username: Option<AccountId>,
    /// Only invoices in this status.
    #[param(value_type = Option<InvoiceStatusView>)]
    status: Option<InvoiceStatus>,
    /// Only invoices of this kind.
    #[param(value_type = Option<InvoiceKindView>)]
    kind: Option<InvoiceKind>,
}

impl FromQuery for AdminInvoiceParams {
    fn from_query(q: &Query) -> Result<Self, ApiError> {
        let InvoiceParams { status, kind } = InvoiceParams::from_query(q)?;
        let username = q
            .one("username")?
            .map(|u| {
                AccountId::parse(u).map_err(|e| {
                    ApiError::validation(format!("`username` {e}")).with("field", "username")
                })
            })
            .transpose()?;
        Ok(AdminInvoiceParams {
            username,
            status,
            kind,
        })
    }
}

async fn list(
    state: &AppState,
    filter: InvoiceFilter,
    p: Page,
) -> Result<axum::Json<InvoiceList>, ApiError> {
    let page =
        tollgate_query::invoices::list(&state.engine, filter, p.cursor.as_ref(), p.limit).await?;
    let issuer = tollgate_query::invoices::issuer(&state.engine).await?;
    let (next_cursor, has_more) = paging(page.next_cursor);
    Ok(axum::Json(InvoiceList {
        next_cursor,
        has_more,
        invoices: page
            .items
            .into_iter()
            .map(|i| view(i, issuer.as_ref()))
            .collect(),
    }))
}

/// List invoices
///
/// The authenticated account's invoices, newest first, with keyset paging (`limit` default
/// 100, at most 1000; `next_cursor` is opaque), optionally only those of one `status` or
/// `kind`. Needs a customer key with `ADMIN` scope (an `API` key answers 403).
#[utoipa::path(
    get, path = "/v1/account/invoices", tag = tags::BILLING, operation_id = "listInvoices",
    security(("Key" = ["ADMIN"])),
    params(InvoiceParams, Page),
    responses(AdminErrors, (status = 200, description = "The account's invoices.", body = InvoiceList))
)]
pub async fn account_invoices(
    State(state): State<AppState>,
    who: Customer<Admin>,
    Params(Paged { filter, page }): Params<Paged<InvoiceParams>>,
) -> Result<axum::Json<InvoiceList>, ApiError> {
    let filter = InvoiceFilter {
        account: Some(who.account),
        status: filter.status,
        kind: filter.kind,
    };
    list(&state, filter, page).await
}

/// Show an invoice
///
/// One of the authenticated account's invoices. Another account's invoice, like an unknown
/// id, answers 404. Needs a customer key with `ADMIN` scope (an `API` key answers 403).
#[utoipa::path(
    get, path = "/v1/account/invoices/{invoice_id}", tag = tags::BILLING,
    operation_id = "showInvoice", security(("Key" = ["ADMIN"])),
    params(("invoice_id" = String, Path, description = "The invoice's id.")),
    responses(
        AdminErrors,
        (status = 200, description = "The invoice.", body = InvoiceView),
        (status = 404, description = "`not_found`: no such invoice of this account.",
            body = ErrorResponse),
    )
)]
pub async fn account_invoice(
    State(state): State<AppState>,
    who: Customer<Admin>,
    _: Params<NoParams>,
    axum::extract::Path(invoice_id): axum::extract::Path<String>,
) -> Result<axum::Json<InvoiceView>, ApiError> {
    Ok(axum::Json(own_invoice(&state, &who, &invoice_id).await?))
}

/// The caller's own invoice `invoice_id` as shown, with the issuer; 404 when the account has
/// none of that id.
async fn own_invoice(
    state: &AppState,
    who: &Customer<Admin>,
    invoice_id: &str,
) -> Result<InvoiceView, ApiError> {
    let found = tollgate_query::invoices::show(&state.engine, Some(&who.account), invoice_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("invoice {invoice_id} not found")))?;
    let issuer = tollgate_query::invoices::issuer(&state.engine).await?;
    Ok(view(found, issuer.as_ref()))
}

/// A PDF document (`application/pdf`).
pub struct PdfDocument;

impl utoipa::PartialSchema for PdfDocument {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .content_media_type("application/pdf")
            .description(Some("The invoice as a PDF document."))
            .into()
    }
}

impl ToSchema for PdfDocument {}

/// Download an invoice as PDF
///
/// One of the authenticated account's invoices as a printable A4 document: the issuer, the
/// customer, the number, kind, status, issue date and period, the lines, subtotal, discount
/// and total in USD, every figure the same as the JSON invoice's, as text. Lines that do not
/// fit one page continue on further pages. Another account's invoice, like an unknown id,
/// answers 404. Needs a customer key with `ADMIN` scope (an `API` key answers 403).
#[utoipa::path(
    get, path = "/v1/account/invoices/{invoice_id}/pdf", tag = tags::BILLING,
    operation_id = "showInvoicePdf", security(("Key" = ["ADMIN"])),
    params(("invoice_id" = String, Path, description = "The invoice's id.")),
    responses(
        AdminErrors,
        (status = 200, description = "The invoice as a PDF document.",
            content_type = "application/pdf", body = PdfDocument,
            headers(("Content-Disposition" = String,
                description = "`inline; filename=\"<number>.pdf\"`"))),
        (status = 404, description = "`not_found`: no such invoice of this account.",
            body = ErrorResponse),
    )
)]
pub async fn account_invoice_pdf(
    State(state): State<AppState>,
    who: Customer<Admin>,
    _: Params<NoParams>,
    axum::extract::Path(invoice_id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let invoice = own_invoice(&state, &who, &invoice_id).await?;
    let disposition = format!("inline; filename=\"{}.pdf\"", invoice.number);
    let body = pdf::render(&invoice);
    Ok((
        [
            (header::CONTENT_TYPE, "application/pdf".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

/// List all invoices
///
/// Every account's invoices, newest first, optionally only one account's (`username`), one
/// `status` or one `kind`, with keyset paging. Read-only.
#[utoipa::path(
    get, path = "/v1/admin/invoices", tag = tags::OPERATOR, operation_id = "listAllInvoices",
    security(("Key" = ["OPERATOR"])),
    params(AdminInvoiceParams, Page),
    responses(OperatorErrors, (status = 200, description = "The invoices.", body = InvoiceList))
)]
pub async fn admin_invoices(
    State(state): State<AppState>,
    _: Operator,
    Params(Paged { filter, page }): Params<Paged<AdminInvoiceParams>>,
) -> Result<axum::Json<InvoiceList>, ApiError> {
    let filter = InvoiceFilter {
        account: filter.username,
        status: filter.status,
        kind: filter.kind,
    };
    list(&state, filter, page).await
}

fn text(field: &'static str, v: &str, min: usize, max: usize) -> Result<(), ApiError> {
    let n = v.trim().chars().count();
    if n < min || v.chars().count() > max {
        return Err(
            ApiError::validation(format!("`{field}` must have {min} to {max} characters"))
                .with("field", field),
        );
    }
    Ok(())
}

/// Set the invoice issuer
///
/// Replaces who issues the invoices (`name`, `address`, optional `email` and `tax_id`), as
/// every invoice shows it from then on. Refused input answers 400 and changes nothing.
#[utoipa::path(
    put, path = "/v1/admin/issuer", tag = tags::OPERATOR, operation_id = "setIssuer",
    security(("Key" = ["OPERATOR"])),
    request_body = IssuerBody,
    responses(OperatorErrors, (status = 200, description = "The issuer as stored.", body = IssuerBody))
)]
pub async fn set_issuer(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Json(body): Json<IssuerBody>,
) -> Result<axum::Json<IssuerBody>, ApiError> {
    text("name", &body.name, 1, 200)?;
    text("address", &body.address, 1, 500)?;
    if let Some(e) = &body.email {
        text("email", e, 1, 200)?;
    }
    if let Some(t) = &body.tax_id {
        text("tax_id", t, 1, 100)?;
    }
    let issuer = Issuer {
        name: body.name,
        address: body.address,
        email: body.email,
        tax_id: body.tax_id,
    };
    state
        .engine
        .admin(AdminCmd::SetIssuer(issuer.clone()))
        .await?;
    Ok(axum::Json(issuer.into()))
}
