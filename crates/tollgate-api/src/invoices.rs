//! Invoices (docs/reference/API.md section 4): the customer's own (`GET /v1/account/invoices`,
//! `GET /v1/account/invoices/{invoice_id}` and its PDF, `.../{invoice_id}/pdf` ([`pdf`]),
//! ADMIN scope), the operator's list (`GET /v1/admin/invoices`) and the issuer printed on them
//! (`PUT /v1/admin/issuer`).
//!
//! A paid purchase issues a top-up invoice in the commit that grants its credits; an
//! invoice-billed account gets a usage invoice for each billing period closed with charges
//! (at each month's start, or on demand: `POST /v1/admin/invoices/close`); numbers are
//! `<prefix>-<year>-<seq>`, gapless in issue order across accounts. The operator marks an open
//! invoice paid or void (`POST /v1/admin/invoices/{invoice_id}/pay`, `/void`).

use crate::error::{ApiError, ErrorResponse};
use crate::extract::{Admin, Customer, FromQuery, Json, NoParams, Operator, Page, Paged, Params};
use crate::openapi::{tags, AdminErrors, OperatorErrors};
use crate::platform::paging;
use crate::query_string::Query;
use crate::wire::{self, Number, Time};
use crate::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tollgate_core::ids::{AccountId, EndpointId, PurchaseId};
use tollgate_core::machine::{InvoiceKind, InvoiceStatus};
use tollgate_core::serverless::Line;
use tollgate_core::Timestamp;
use tollgate_engine::AdminCmd;
use tollgate_query::invoices::InvoiceFilter;
use tollgate_store::{InvoiceLineRecord, InvoiceRecord, Issuer};
use utoipa::{IntoParams, ToSchema};

mod pdf;

/// What an invoice is for.
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceKindView {
    /// A paid purchase of credits.
    TopUp,
    /// An invoice-billed account's charges recorded in one billing period.
    Usage,
    /// A refund of a top-up's purchase: negative amounts, correcting its top-up invoice.
    CreditNote,
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
    /// The endpoint charged (a serverless app's runner time: its line's key,
    /// `serverless/<app>/<environment>/<machine type>/<standard|surge>`); `null` on a top-up
    /// invoice.
    pub endpoint_id: Option<String>,
    /// What the line is, as the invoice names it: the endpoint id; a serverless app's runner
    /// time by its app, environment, machine type and surge; `Prepaid credits` on a top-up
    /// invoice.
    #[schema(example = "fal-ai/flux/dev")]
    pub description: String,
    /// What the quantity counts (the price's unit); `credit_usd` on a top-up invoice.
    pub unit: String,
    pub quantity: Number,
    /// USD per unit before the discount (for blended prices, the line's average rate).
    pub unit_price: Number,
    pub percent_discount: Number,
    pub cost_subtotal: Number,
    pub cost_discount: Number,
    pub cost_total: Number,
    /// The exact `cost_total`, nano-USD.
    pub cost_total_nano_usd: i64,
    /// When the usage happened: from the start of the UTC day of the line's earliest usage to
    /// the start of the day after its latest (a top-up invoice: its issue time).
    pub charge_period_start: Time,
    pub charge_period_end: Time,
}

/// The issuer printed on invoices.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "Example AI Inc.", "address": "1 Main St, Springfield",
    "email": "billing@example.com", "tax_id": "US12-3456789"}))]
pub struct IssuerBody {
    /// 1 to 200 characters, no control characters.
    pub name: String,
    /// 1 to 500 characters, printed as lines split at `\n`; no other control characters.
    pub address: String,
    /// At most 200 characters, no control characters.
    #[serde(default)]
    pub email: Option<String>,
    /// At most 100 characters, no control characters.
    #[serde(default)]
    pub tax_id: Option<String>,
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
    pub invoice_id: String,
    /// `<prefix>-<YYYY>-<NNNNNN>`: gapless in issue order across all accounts, restarting at
    /// 000001 each calendar year (UTC), six digits or more.
    #[schema(example = "TG-2026-000001")]
    pub number: String,
    /// The account invoiced.
    pub username: AccountId,
    pub kind: InvoiceKindView,
    pub status: InvoiceStatusView,
    pub issued_at: Time,
    pub period_start: Time,
    pub period_end: Time,
    #[schema(value_type = String, example = "USD")]
    pub currency: &'static str,
    pub lines: Vec<InvoiceLine>,
    pub subtotal: Number,
    pub discount: Number,
    pub total: Number,
    /// The exact `total`, nano-USD.
    pub total_nano_usd: i64,
    /// The purchase a top-up invoice is for (a credit note: the refunded purchase).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purchase_id: Option<PurchaseId>,
    /// A credit note's corrected invoice: the refunded purchase's top-up invoice.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "inv_2026_000001")]
    pub corrects_invoice_id: Option<String>,
    /// When it was paid: a top-up invoice when issued, an open invoice when an operator marked
    /// it paid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paid_at: Option<Time>,
    /// The reference the operator gave when marking it paid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_reference: Option<String>,
    /// When an operator voided it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voided_at: Option<Time>,
    /// Why it was voided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub void_reason: Option<String>,
    /// Who issues the invoice; `null` until the operator sets it (`PUT /v1/admin/issuer`).
    pub issuer: Option<IssuerBody>,
}

/// How an invoice or a statement names what an endpoint key billed: a model endpoint by its
/// id, a serverless line by [`Line::describe`].
pub fn line_name(endpoint: &EndpointId) -> String {
    match Line::of(endpoint) {
        Some(line) => line.describe(),
        None => endpoint.to_string(),
    }
}

fn usage_line(l: &InvoiceLineRecord) -> InvoiceLine {
    let (start, end) = l.charge_period();
    InvoiceLine {
        endpoint_id: Some(l.endpoint.as_str().to_string()),
        description: line_name(&l.endpoint),
        unit: l.unit.clone(),
        quantity: Number(l.totals.quantity.normalize()),
        unit_price: Number(l.price.unit_price(&l.totals)),
        percent_discount: Number(l.percent_discount.unwrap_or_default().normalize()),
        cost_subtotal: Number::usd(l.totals.subtotal),
        cost_discount: Number::usd(l.totals.discount),
        cost_total: Number::usd(l.totals.total),
        cost_total_nano_usd: l.totals.total.0,
        charge_period_start: Time(start),
        charge_period_end: Time(end),
    }
}

/// An invoice as the API answers it and the dashboard shows it (the PDF is drawn from it too).
pub fn view(i: InvoiceRecord, issuer: Option<&Issuer>) -> InvoiceView {
    let total = Number::usd(i.total);
    let zero = Number(Decimal::ZERO);
    let lines = match i.kind {
        InvoiceKind::Usage => i.lines.iter().map(usage_line).collect(),
        InvoiceKind::TopUp | InvoiceKind::CreditNote => vec![InvoiceLine {
            endpoint_id: None,
            description: "Prepaid credits".into(),
            unit: "credit_usd".into(),
            quantity: total,
            unit_price: Number(Decimal::ONE),
            percent_discount: zero,
            cost_subtotal: total,
            cost_discount: zero,
            cost_total: total,
            cost_total_nano_usd: i.total.0,
            charge_period_start: Time(i.period_start),
            charge_period_end: Time(i.period_end),
        }],
    };
    let (paid_at, payment_reference, voided_at, void_reason) = match i.status {
        InvoiceStatus::Paid => (
            Some(Time(i.status_changed_at.unwrap_or(i.issued_at))),
            i.status_reference.clone(),
            None,
            None,
        ),
        InvoiceStatus::Void => (
            None,
            None,
            i.status_changed_at.map(Time),
            i.status_reference.clone(),
        ),
        InvoiceStatus::Open => (None, None, None, None),
    };
    InvoiceView {
        invoice_id: i.invoice_id(),
        number: i.number(),
        username: i.account,
        kind: match i.kind {
            InvoiceKind::TopUp => InvoiceKindView::TopUp,
            InvoiceKind::Usage => InvoiceKindView::Usage,
            InvoiceKind::CreditNote => InvoiceKindView::CreditNote,
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
        lines,
        subtotal: Number::usd(i.subtotal),
        discount: Number::usd(i.discount),
        total,
        total_nano_usd: i.total.0,
        purchase_id: i.purchase_id,
        corrects_invoice_id: i.corrects.map(|(y, n)| InvoiceRecord::id_of(y, n)),
        paid_at,
        payment_reference,
        voided_at,
        void_reason,
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
                .map(|s| {
                    InvoiceKind::parse(s).ok_or_else(|| bad("kind", "top_up, usage, credit_note"))
                })
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
    Ok(axum::Json(
        own_invoice(&state, &who.account, &invoice_id).await?,
    ))
}

/// `account`'s own invoice `invoice_id` as shown, with the issuer; 404 when the account has
/// none of that id (another account's invoice is not found, like an unknown id). The API's
/// invoice reads and the dashboard's invoice pages both answer this.
pub async fn own_invoice(
    state: &AppState,
    account: &AccountId,
    invoice_id: &str,
) -> Result<InvoiceView, ApiError> {
    let found = tollgate_query::invoices::show(&state.engine, Some(account), invoice_id)
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
    let invoice = own_invoice(&state, &who.account, &invoice_id).await?;
    Ok(pdf_response(&invoice))
}

/// An invoice as a PDF answer (`application/pdf`, shown inline, named by its number): the
/// same bytes from the API and from the dashboard.
pub fn pdf_response(invoice: &InvoiceView) -> Response {
    let disposition = format!("inline; filename=\"{}.pdf\"", invoice.number);
    let body = pdf::render(invoice);
    (
        [
            (header::CONTENT_TYPE, "application/pdf".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response()
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
/// every invoice shows it from then on. Refused input (a field too long or too short, or with
/// a control character other than the address's line breaks) answers 400 naming the field and
/// changes nothing.
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
    for (field, value, min, max) in [
        ("name", Some(&body.name), 1, 200),
        ("address", Some(&body.address), 1, 500),
        ("email", body.email.as_ref(), 1, 200),
        ("tax_id", body.tax_id.as_ref(), 1, 100),
    ] {
        if let Some(v) = value {
            text(field, v, min, max)?;
            // The address is printed as lines: its line breaks are text.
            if field == "address" {
                control_free(field, &v.replace('\n', " "))?;
            } else {
                control_free(field, v)?;
            }
        }
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

/// Which billing periods to close.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"username": "acme", "until": "2026-12-01T00:00:00Z"}))]
pub struct CloseBody {
    /// Only this account (default: every account with charges in its open period).
    #[serde(default)]
    #[schema(value_type = Option<AccountId>)]
    username: Option<AccountId>,
    /// Close only periods whose every charge was recorded before this time, ending them
    /// there (default: now, every charge recorded so far). Never in the future.
    #[serde(default, deserialize_with = "wire::time_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    until: Option<Timestamp>,
}

/// The usage invoices a close issued.
#[derive(Serialize, ToSchema)]
pub struct Closed {
    /// Their ids, in issue order (empty when nothing was charged since the last close).
    issued: Vec<String>,
}

/// Close billing periods
///
/// Issues a usage invoice (`kind: "usage"`, `status: "open"`) for each open billing period
/// with charges: `username`'s, or every account's. A period covers the charges recorded since
/// the account's previous usage invoice. Without `until`, every charge recorded so far is
/// closed and the period ends now; with a past `until`, a period is closed only if every one
/// of its charges was recorded before `until`, and it ends there (a period that began in an
/// earlier calendar month is always closed at the end of its month: periods close by
/// themselves at each month's start, UTC, so a month's start as `until` closes that month).
/// Closing again with nothing new issues nothing, and a period without charges issues
/// nothing. A prepaid account has charges in an open period only from a time it was
/// invoice-billed (then they are invoiced), so closing it usually issues nothing. An unknown
/// `username` answers 404; an `until` in the future 400, and nothing is written.
#[utoipa::path(
    post, path = "/v1/admin/invoices/close", tag = tags::OPERATOR,
    operation_id = "closeInvoicePeriods", security(("Key" = ["OPERATOR"])),
    request_body = CloseBody,
    responses(
        OperatorErrors,
        (status = 200, description = "The usage invoices issued.", body = Closed),
        (status = 404, description = "`not_found`: unknown account.", body = ErrorResponse),
    )
)]
pub async fn close_periods(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Json(body): Json<CloseBody>,
) -> Result<axum::Json<Closed>, ApiError> {
    Ok(axum::Json(Closed {
        issued: close(&state, body.username, body.until).await?,
    }))
}

/// Closes billing periods (see [`close_periods`]): `username`'s, or every account's; answers
/// the ids of the usage invoices issued, in issue order. The operator API and the console
/// both close periods through this.
pub async fn close(
    state: &AppState,
    username: Option<AccountId>,
    until: Option<Timestamp>,
) -> Result<Vec<String>, ApiError> {
    let issued = state.engine.close_invoice_periods(username, until).await?;
    Ok(issued
        .into_iter()
        .map(|(y, n)| InvoiceRecord::id_of(y, n))
        .collect())
}

/// Marks an invoice paid.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"payment_reference": "wire 2026-12-03 #4411"}))]
pub struct PayBody {
    /// How it was paid (a transfer's reference, a receipt number): 1 to 200 characters.
    payment_reference: String,
}

/// Voids an invoice.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "issued to the wrong account"}))]
pub struct VoidBody {
    /// Why: 1 to 500 characters.
    reason: String,
}

/// Changes an open invoice's status and answers the invoice as it now is.
async fn set_status(
    state: &AppState,
    invoice_id: &str,
    status: InvoiceStatus,
    reference: String,
) -> Result<InvoiceRecord, ApiError> {
    let not_found = || ApiError::not_found(format!("invoice {invoice_id} not found"));
    let (year, seq) = InvoiceRecord::parse_id(invoice_id)
        .filter(|(y, n)| InvoiceRecord::id_of(*y, *n) == invoice_id)
        .ok_or_else(not_found)?;
    state
        .engine
        .admin(AdminCmd::SetInvoiceStatus {
            year,
            seq,
            status,
            reference,
        })
        .await
        .map_err(|e| match e {
            tollgate_engine::EngineError::Store(tollgate_store::StoreError::NotFound(_)) => {
                not_found()
            }
            other => other.into(),
        })?;
    tollgate_query::invoices::show(&state.engine, None, invoice_id)
        .await?
        .ok_or_else(not_found)
}

/// Answers the invoice `record` as shown, with the issuer.
async fn shown(state: &AppState, record: InvoiceRecord) -> Result<InvoiceView, ApiError> {
    let issuer = tollgate_query::invoices::issuer(&state.engine).await?;
    Ok(view(record, issuer.as_ref()))
}

/// Marks an open invoice paid with `payment_reference` (see [`pay_invoice`]), checked first
/// (1 to 200 characters, no control characters); answers the invoice as it now is. The
/// operator API and the console both mark invoices paid through this.
pub async fn pay(
    state: &AppState,
    invoice_id: &str,
    payment_reference: String,
) -> Result<InvoiceRecord, ApiError> {
    text("payment_reference", &payment_reference, 1, 200)?;
    control_free("payment_reference", &payment_reference)?;
    set_status(state, invoice_id, InvoiceStatus::Paid, payment_reference).await
}

/// Voids an open invoice for `reason` (see [`void_invoice`]), checked first (1 to 500
/// characters, no control characters); answers the invoice as it now is. The operator API and
/// the console both void invoices through this.
pub async fn void(
    state: &AppState,
    invoice_id: &str,
    reason: String,
) -> Result<InvoiceRecord, ApiError> {
    text("reason", &reason, 1, 500)?;
    control_free("reason", &reason)?;
    set_status(state, invoice_id, InvoiceStatus::Void, reason).await
}

/// Mark an invoice paid
///
/// An open invoice becomes `paid`, with the `payment_reference` and the time (shown in the
/// invoice as `payment_reference` and `paid_at`). Its amounts and lines never change. Only an
/// open invoice can be paid: a paid (every top-up invoice is paid when issued) or void one
/// answers 409 and nothing changes, except the same payment sent again (same reference),
/// which answers the invoice as it is; an unknown id 404.
#[utoipa::path(
    post, path = "/v1/admin/invoices/{invoice_id}/pay", tag = tags::OPERATOR,
    operation_id = "payInvoice", security(("Key" = ["OPERATOR"])),
    params(("invoice_id" = String, Path, description = "The invoice's id.")),
    request_body = PayBody,
    responses(
        OperatorErrors,
        (status = 200, description = "The invoice, paid.", body = InvoiceView),
        (status = 404, description = "`not_found`: no such invoice.", body = ErrorResponse),
        (status = 409, description = "`conflict`: the invoice is not open.", body = ErrorResponse),
    )
)]
pub async fn pay_invoice(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    axum::extract::Path(invoice_id): axum::extract::Path<String>,
    Json(body): Json<PayBody>,
) -> Result<axum::Json<InvoiceView>, ApiError> {
    let paid = pay(&state, &invoice_id, body.payment_reference).await?;
    Ok(axum::Json(shown(&state, paid).await?))
}

/// Void an invoice
///
/// An open invoice becomes `void`, with the `reason` and the time (shown in the invoice as
/// `void_reason` and `voided_at`). Its amounts and lines never change. Only an open invoice
/// can be voided: a paid or void one answers 409 and nothing changes, except the same void
/// sent again (same reason), which answers the invoice as it is; an unknown id 404.
#[utoipa::path(
    post, path = "/v1/admin/invoices/{invoice_id}/void", tag = tags::OPERATOR,
    operation_id = "voidInvoice", security(("Key" = ["OPERATOR"])),
    params(("invoice_id" = String, Path, description = "The invoice's id.")),
    request_body = VoidBody,
    responses(
        OperatorErrors,
        (status = 200, description = "The invoice, void.", body = InvoiceView),
        (status = 404, description = "`not_found`: no such invoice.", body = ErrorResponse),
        (status = 409, description = "`conflict`: the invoice is not open.", body = ErrorResponse),
    )
)]
pub async fn void_invoice(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    axum::extract::Path(invoice_id): axum::extract::Path<String>,
    Json(body): Json<VoidBody>,
) -> Result<axum::Json<InvoiceView>, ApiError> {
    let voided = void(&state, &invoice_id, body.reason).await?;
    Ok(axum::Json(shown(&state, voided).await?))
}

fn control_free(field: &'static str, v: &str) -> Result<(), ApiError> {
    if v.chars().any(char::is_control) {
        return Err(
            ApiError::validation(format!("`{field}` must not contain control characters"))
                .with("field", field),
        );
    }
    Ok(())
}
