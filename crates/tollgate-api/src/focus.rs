//! FOCUS billing reports (`GET /v1/account/focus`, docs/reference/API.md section 4, ADMIN
//! scope): the account's charges as a CSV in the FinOps Foundation's FOCUS specification
//! (docs/reference/focus.md). The rows are read by `tollgate-query` ([`FocusReport`]); this
//! module renders them and streams the body page by page: a page is read only when the
//! connection has taken the one before, so a year of a busy account is never held in memory.

use crate::error::ApiError;
use crate::extract::{names_of, Admin, Customer, FromQuery, Params};
use crate::openapi::{tags, AdminErrors};
use crate::platform::usage::{range_spec, RangeParams};
use crate::query_string::Query;
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use rust_decimal::Decimal;
use serde::Serialize;
use tollgate_core::{Nanos, Timestamp};
use tollgate_query::focus::{
    FocusContext, FocusQuery, FocusReport, FocusRow, FocusService, FocusSource,
    DEFAULT_PAGE_SPAN_MS,
};
use tollgate_query::month::Month;
use utoipa::{IntoParams, ToSchema};

/// The report's columns, in order: FOCUS 1.0's, then later versions' that the 1.0 validator
/// accepts (`InvoiceId` and `PricingCurrency` of 1.2, `ServiceSubcategory` and `SkuMeter` of
/// 1.1), then the names the FinOps Foundation's validator 1.0.0 checks FOCUS 1.0 by (its rules
/// keep the 1.0-preview spellings `ChargeType`, `InvoiceIssuer`, `Provider`, `Publisher`,
/// `ResourceID`, each the same value as its 1.0 column), then tollgate's own (`x_`).
pub const COLUMNS: [&str; 54] = [
    "AvailabilityZone",
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "CommitmentDiscountCategory",
    "CommitmentDiscountId",
    "CommitmentDiscountName",
    "CommitmentDiscountStatus",
    "CommitmentDiscountType",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedCost",
    "ContractedUnitPrice",
    "EffectiveCost",
    "InvoiceIssuerName",
    "ListCost",
    "ListUnitPrice",
    "PricingCategory",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "RegionId",
    "RegionName",
    "ResourceId",
    "ResourceName",
    "ResourceType",
    "ServiceCategory",
    "ServiceName",
    "SkuId",
    "SkuPriceId",
    "SubAccountId",
    "SubAccountName",
    "Tags",
    // Later FOCUS versions.
    "InvoiceId",
    "PricingCurrency",
    "ServiceSubcategory",
    "SkuMeter",
    // The validator's spellings.
    "ChargeType",
    "InvoiceIssuer",
    "Provider",
    "Publisher",
    "ResourceID",
    // tollgate's.
    "x_PurchaseId",
    "x_CreditAmountUsd",
];

/// A FOCUS time: RFC 3339 in UTC, seconds (`2026-01-01T00:00:00Z`).
fn time(t: Timestamp) -> String {
    chrono::DateTime::from_timestamp_millis(t.0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// An exact decimal as FOCUS tools read one: plain digits, always with a decimal point (`6.0`,
/// `0.025`), so that a column of whole amounts is still read as decimals, never as integers.
pub fn plain(d: Decimal) -> String {
    let s = d.normalize().to_string();
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

/// An exact USD amount: nano-USD as a plain decimal, never a float.
fn usd(n: Nanos) -> String {
    plain(n.to_usd())
}

fn decimal(d: Option<Decimal>) -> String {
    d.map(plain).unwrap_or_default()
}

/// One CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
fn field(out: &mut String, value: &str) {
    if value.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

/// One CSV line of `values` (RFC 4180: quoted where needed, CRLF-terminated), for any CSV the
/// server writes.
pub fn line(out: &mut String, values: &[String]) {
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        field(out, v);
    }
    out.push_str("\r\n");
}

/// The header line.
pub fn header_line() -> String {
    let mut out = String::new();
    line(
        &mut out,
        &COLUMNS.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
    );
    out
}

/// The FOCUS service columns of what a row is a charge for.
struct ServiceColumns {
    name: &'static str,
    category: &'static str,
    subcategory: &'static str,
    resource_type: &'static str,
}

impl ServiceColumns {
    fn of(service: FocusService) -> ServiceColumns {
        match service {
            FocusService::ModelApis => ServiceColumns {
                name: "Model APIs",
                category: "AI and Machine Learning",
                subcategory: "Generative AI",
                resource_type: "Model endpoint",
            },
            // A customer's own app on GPU machines billed by the second.
            FocusService::Serverless => ServiceColumns {
                name: "Serverless",
                category: "Compute",
                subcategory: "Serverless Compute",
                resource_type: "Serverless app",
            },
            FocusService::Credits => ServiceColumns {
                name: "Credits",
                category: "AI and Machine Learning",
                subcategory: "Other (AI and Machine Learning)",
                resource_type: "",
            },
        }
    }
}

/// One row's fields, in [`COLUMNS`]' order.
pub fn fields(ctx: &FocusContext, r: &FocusRow) -> Vec<String> {
    let account = ctx.account.to_string();
    let provider = ctx.provider.clone();
    let usage = r.is_usage();
    let (quantity, unit) = match &r.quantity {
        Some((q, u)) => (plain(*q), u.clone()),
        None => (String::new(), String::new()),
    };
    let (resource_id, resource_name) = match &r.resource {
        Some((id, name)) => (id.to_string(), name.clone()),
        None => (String::new(), String::new()),
    };
    let category = r.category.as_str().to_string();
    let service = ServiceColumns::of(r.service);
    let invoice = r.invoice.clone().unwrap_or_default();
    let s = String::new;
    let values = vec![
        s(),                                                   // AvailabilityZone
        usd(r.billed_cost),                                    // BilledCost
        account.clone(),                                       // BillingAccountId
        account,                                               // BillingAccountName
        "USD".into(),                                          // BillingCurrency
        time(r.billing_end),                                   // BillingPeriodEnd
        time(r.billing_start),                                 // BillingPeriodStart
        category.clone(),                                      // ChargeCategory
        s(),                                                   // ChargeClass
        r.description.clone(),                                 // ChargeDescription
        if usage { "Usage-Based" } else { "One-Time" }.into(), // ChargeFrequency
        time(r.charge_end),                                    // ChargePeriodEnd
        time(r.charge_start),                                  // ChargePeriodStart
        s(),                                                   // CommitmentDiscountCategory
        s(),                                                   // CommitmentDiscountId
        s(),                                                   // CommitmentDiscountName
        s(),                                                   // CommitmentDiscountStatus
        s(),                                                   // CommitmentDiscountType
        quantity.clone(),                                      // ConsumedQuantity
        unit.clone(),                                          // ConsumedUnit
        usd(r.contracted_cost),                                // ContractedCost
        decimal(r.contracted_unit_price),                      // ContractedUnitPrice
        usd(r.effective_cost),                                 // EffectiveCost
        provider.clone(),                                      // InvoiceIssuerName
        usd(r.list_cost),                                      // ListCost
        decimal(r.list_unit_price),                            // ListUnitPrice
        if usage { "Standard" } else { "" }.into(),            // PricingCategory
        quantity,                                              // PricingQuantity
        unit.clone(),                                          // PricingUnit
        provider.clone(),                                      // ProviderName
        provider.clone(),                                      // PublisherName
        s(),                                                   // RegionId
        s(),                                                   // RegionName
        resource_id.clone(),                                   // ResourceId
        resource_name,                                         // ResourceName
        service.resource_type.into(),                          // ResourceType
        service.category.into(),                               // ServiceCategory
        service.name.into(),                                   // ServiceName
        r.sku_id.clone(),                                      // SkuId
        r.sku_price_id.clone(),                                // SkuPriceId
        s(),                                                   // SubAccountId
        s(),                                                   // SubAccountName
        s(),                                                   // Tags
        invoice,                                               // InvoiceId
        "USD".into(),                                          // PricingCurrency
        service.subcategory.into(),                            // ServiceSubcategory
        unit,                                                  // SkuMeter
        category,                                              // ChargeType
        provider.clone(),                                      // InvoiceIssuer
        provider.clone(),                                      // Provider
        provider,                                              // Publisher
        resource_id,                                           // ResourceID
        r.purchase_id
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default(), // x_PurchaseId
        r.credit_amount.map(usd).unwrap_or_default(),          // x_CreditAmountUsd
    ];
    debug_assert_eq!(values.len(), COLUMNS.len());
    values
}

/// Rows as CSV lines.
pub fn csv_lines(ctx: &FocusContext, rows: &[FocusRow]) -> String {
    let mut out = String::new();
    for r in rows {
        line(&mut out, &fields(ctx, r));
    }
    out
}

/// The CSV body: the header, then each page of rows as it is read. A read that fails after
/// the answer began ends the body early (the client sees a truncated transfer, never a
/// complete-looking report).
pub fn csv_body(report: FocusReport) -> Body {
    let state = (Some(report), true);
    let stream = futures_util::stream::unfold(state, |(report, first)| async move {
        let mut report = report?;
        if first {
            return Some((Ok(Bytes::from(header_line())), (Some(report), false)));
        }
        loop {
            match report.next_page().await {
                Ok(None) => return None,
                Ok(Some(rows)) if rows.is_empty() => continue,
                Ok(Some(rows)) => {
                    let out = csv_lines(&report.context, &rows);
                    return Some((Ok(Bytes::from(out)), (Some(report), false)));
                }
                Err(e) => {
                    tracing::error!(error = %e, "a FOCUS report failed while streaming");
                    let err = std::io::Error::other(e.to_string());
                    return Some((Err(err), (None, false)));
                }
            }
        }
    });
    Body::from_stream(stream)
}

/// The file name of a report: account, source and range.
fn file_name(ctx: &FocusContext) -> String {
    let safe: String = ctx
        .account
        .as_str()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let day = |t: Timestamp| time(t)[..10].replace('-', "");
    format!(
        "focus-{safe}-{}-{}-{}.csv",
        ctx.source.as_str(),
        day(ctx.start),
        day(ctx.end)
    )
}

/// fal's `source`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum FocusSourceName {
    Invoice,
    Estimate,
}

/// fal's `expand` of the report.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum FocusExpand {
    Organization,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct FocusParams {
    /// `invoice`: the charges of a billing month, as invoiced; `estimate`: the usage of a
    /// range (default the last day, at most 90 days), as it happened (invoiced since or not).
    #[param(value_type = FocusSourceName)]
    source: (),
    /// `source=invoice`: the month (`YYYY-MM`, UTC) whose invoices to report. Default: the
    /// current month.
    #[param(value_type = Option<String>, pattern = r"^\d{4}-\d{2}$", example = "2025-02")]
    billing_month: (),
    /// `source=invoice`: the month (`YYYY-MM`, UTC) whose charges to report, instead of
    /// `billing_month`.
    #[param(value_type = Option<String>, pattern = r"^\d{4}-\d{2}$", example = "2025-01")]
    charge_month: (),
    /// `organization`: the whole organization. tollgate's accounts belong to no
    /// organization, so it is refused (400).
    #[param(value_type = Option<FocusExpand>)]
    expand: (),
}

/// The report's parameters, parsed.
pub struct FocusArgs {
    source: FocusSource,
    billing_month: Option<Month>,
    charge_month: Option<Month>,
    range: tollgate_query::timeframe::RangeSpec,
}

impl FocusArgs {
    /// `source=invoice&billing_month=<month>`: the report of a billing month, as the
    /// dashboard's monthly download asks for it.
    pub fn billing_month(month: Month) -> FocusArgs {
        FocusArgs {
            source: FocusSource::Invoice,
            billing_month: Some(month),
            charge_month: None,
            range: tollgate_query::timeframe::RangeSpec::default(),
        }
    }
}

fn month(q: &Query, name: &str) -> Result<Option<Month>, ApiError> {
    q.one(name)?
        .map(|t| Month::parse(t.trim()).map_err(|e| ApiError::invalid(name, format!("{name} {e}"))))
        .transpose()
}

impl FromQuery for FocusArgs {
    fn names() -> Vec<String> {
        [names_of::<FocusParams>(), names_of::<RangeParams>()].concat()
    }
    fn from_query(q: &Query) -> Result<Self, ApiError> {
        let source = match q.one("source")? {
            None => {
                return Err(ApiError::invalid(
                    "source",
                    "source is required: `invoice` or `estimate`",
                ))
            }
            Some(s) => FocusSource::parse(s.trim()).ok_or_else(|| {
                ApiError::invalid(
                    "source",
                    format!("unknown source '{s}'; allowed: invoice, estimate"),
                )
            })?,
        };
        if let Some(e) = q.one("expand")? {
            return Err(ApiError::invalid(
                "expand",
                format!(
                    "expand '{e}' is not available: only an organization root may expand the \
                     report to its organization, and tollgate's accounts belong to none"
                ),
            ));
        }
        Ok(FocusArgs {
            source,
            billing_month: month(q, "billing_month")?,
            charge_month: month(q, "charge_month")?,
            range: range_spec(q)?,
        })
    }
}

impl IntoParams for FocusArgs {
    fn into_params(
        parameter_in: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        let mut params = FocusParams::into_params(&parameter_in);
        params.extend(RangeParams::into_params(&parameter_in));
        params
    }
}

/// FOCUS report
///
/// The account's charges as a CSV download in the FinOps Foundation's FOCUS specification
/// (version 1.0 columns, with `InvoiceId`, `PricingCurrency`, `ServiceSubcategory` and
/// `SkuMeter` of later versions; it passes the FinOps Foundation's validator). One row per
/// charge aggregate (endpoint, unit, price and percent discount per charge period: a day in
/// `timezone` unless `timeframe` says otherwise) and one per purchase of credits: a paid
/// purchase is a `Purchase` billed on its top-up invoice, free credits a `Credit`, usage of a
/// prepaid account is drawn from its credits (`BilledCost` 0, `EffectiveCost` its cost).
/// `ListUnitPrice` and `ListCost` are at the public catalog price, `ContractedUnitPrice` and
/// `ContractedCost` at the account's own price and discount. Money is exact (nano-USD
/// decimals), times are UTC. `source=invoice` reports a UTC month (`billing_month`, default
/// the current one, or `charge_month`); `source=estimate` a range (`start` default a day
/// before `end`, `end` default now, at most 90 days). The body is streamed as it is read.
/// Needs a customer key with `ADMIN` scope and reports only that key's account; every bad
/// parameter answers 400 naming it.
#[utoipa::path(
    get, path = "/v1/account/focus", tag = tags::FAL, operation_id = "getFocusReport",
    security(("Key" = ["ADMIN"])),
    params(FocusArgs),
    responses(
        AdminErrors,
        (status = 200, description = "The FOCUS report, as a CSV attachment.",
         content_type = "text/csv", body = String,
         headers(("content-disposition" = String, description = "attachment; filename=...")))
    )
)]
pub async fn focus(
    State(state): State<AppState>,
    who: Customer<Admin>,
    Params(p): Params<FocusArgs>,
) -> Result<Response, ApiError> {
    focus_report(&state, who.account, p, DEFAULT_PAGE_SPAN_MS).await
}

/// The report `p` asks for, with pages of `page_span_ms` of usage.
pub async fn focus_report(
    state: &AppState,
    account: tollgate_core::ids::AccountId,
    p: FocusArgs,
    page_span_ms: i64,
) -> Result<Response, ApiError> {
    let q = FocusQuery {
        account,
        source: p.source,
        billing_month: p.billing_month,
        charge_month: p.charge_month,
        range: p.range,
        page_span_ms,
    };
    let report = FocusReport::open(&state.engine, q).await?;
    let disposition = format!("attachment; filename=\"{}\"", file_name(&report.context));
    let mut resp = csv_body(report).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}
