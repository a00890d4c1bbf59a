//! FOCUS billing reports (fal's `GET /account/focus`): an account's charges as rows of the
//! FinOps Foundation's FOCUS specification, as typed values (the HTTP edge renders the CSV).
//!
//! A report is one row per charge aggregate (account, endpoint, unit, price, percent discount,
//! charge period) and one per purchase of credits. Usage comes from the usage rollups (hour
//! rows where the charge periods never split a UTC hour), purchases from a range of
//! `purchases_by_time`: never from line items, so a report costs what its period holds, not
//! what the account's history holds. A report is read page by page ([`FocusReport::next_page`]):
//! first the purchases (keyset pages), then the usage, a span of whole charge periods at a
//! time, so a year of a busy account is never held in memory at once. Aggregates never cross
//! a page: a page is whole charge periods, so the rows are the same whatever the page size.
//!
//! How each source is billed (docs/reference/focus.md has the column table):
//! - a paid purchase is a `Purchase` row: billed on its top-up invoice (`InvoiceId`), its
//!   amount `BilledCost`, `EffectiveCost` 0 (the cost is effective when the credits are used);
//! - free credits are a `Credit` row, nothing billed (the amount is in `x_CreditAmountUsd`);
//! - usage of a prepaid account is drawn from its credits: a `Usage` row with `BilledCost` 0
//!   and `EffectiveCost` its cost;
//! - serverless runner time (line items of a `serverless/` key) is usage like a model's, its
//!   row named by its [`Line`] (`ServiceName` `Serverless`, the app its resource, the machine
//!   type its SKU, the catalog's machine price its list price);
//! - usage of an invoice-billed account is billed on its usage invoice: its invoice report
//!   takes the usage from the invoices' lines ([`invoiced_usage_rows`]); its estimate (usage
//!   as it happened, invoiced since or not) shows the cost (`BilledCost` = `EffectiveCost`,
//!   no `InvoiceId`).

use crate::month::Month;
use crate::timeframe::{self, Moment, Range, RangeError, RangeSpec, Timeframe};
use crate::QueryError;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::sync::Arc;
use tollgate_core::catalog::Catalog;
use tollgate_core::ids::{AccountId, EndpointId, PurchaseId};
use tollgate_core::machine::AccountState;
use tollgate_core::machine::{month_of, InvoiceKind, InvoiceStatus};
use tollgate_core::money::round_usd_to_nanos;
use tollgate_core::rollup::{UsagePrice, UsageTotals};
use tollgate_core::serverless::Line;
use tollgate_core::terms::BillingMode;
use tollgate_core::{Nanos, Timestamp};
use tollgate_engine::Engine;
use tollgate_store::{InvoicesQuery, PurchasesQuery, RollupQuery};

/// The longest range an estimate may span (fal's cap).
pub const ESTIMATE_MAX_RANGE_MS: i64 = 90 * DAY_MS;
/// An estimate spans the last day when `start` is absent.
const ESTIMATE_DEFAULT_RANGE_MS: i64 = DAY_MS;
/// How much usage one page reads by default: whole charge periods until a week is covered.
pub const DEFAULT_PAGE_SPAN_MS: i64 = 7 * DAY_MS;
/// Purchases per page.
const PURCHASES_PAGE: usize = 1000;
/// Who provides and issues the invoices when no issuer was set (`PUT /v1/admin/issuer`).
pub const DEFAULT_PROVIDER: &str = "tollgate";

const DAY_MS: i64 = 86_400_000;

/// fal's `source`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FocusSource {
    /// Finalized invoice data for a billing month.
    Invoice,
    /// The usage of a range as it happened (fal's pre-invoice data), invoiced since or not.
    Estimate,
}

impl FocusSource {
    pub fn parse(text: &str) -> Option<FocusSource> {
        match text {
            "invoice" => Some(FocusSource::Invoice),
            "estimate" => Some(FocusSource::Estimate),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FocusSource::Invoice => "invoice",
            FocusSource::Estimate => "estimate",
        }
    }
}

/// A FOCUS report request: fal's parameters, parsed.
#[derive(Clone, Debug)]
pub struct FocusQuery {
    pub account: AccountId,
    pub source: FocusSource,
    /// `source=invoice`: the invoices issued in this month. Default: the current month.
    pub billing_month: Option<Month>,
    /// `source=invoice`: the charges incurred in this month (instead of `billing_month`).
    pub charge_month: Option<Month>,
    /// `source=estimate`: the range (default the last day, at most 90 days). For both
    /// sources: the time zone and timeframe of the charge periods (default a day).
    pub range: RangeSpec,
    /// How much usage one page reads: whole charge periods until this span is covered.
    pub page_span_ms: i64,
}

/// A row's FOCUS `ChargeCategory`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChargeCategory {
    Usage,
    Purchase,
    Credit,
}

impl ChargeCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            ChargeCategory::Usage => "Usage",
            ChargeCategory::Purchase => "Purchase",
            ChargeCategory::Credit => "Credit",
        }
    }
}

/// What a row is a charge for: a model's requests, a serverless app's runner time, or credits
/// (a purchase or a grant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FocusService {
    ModelApis,
    Serverless,
    Credits,
}

/// What a usage aggregate billed: an endpoint, unit, price and discount over a charge period.
/// The rollups and a usage invoice's lines are read into these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageAggregate {
    pub endpoint: EndpointId,
    pub unit: String,
    pub price: UsagePrice,
    pub percent_discount: Option<Decimal>,
    pub totals: UsageTotals,
    pub charge_start: Timestamp,
    pub charge_end: Timestamp,
}

/// One row of a FOCUS report, in domain types. Money is exact nano-USD; unit prices exact
/// decimals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FocusRow {
    pub category: ChargeCategory,
    /// What the row is a charge for.
    pub service: FocusService,
    pub charge_start: Timestamp,
    pub charge_end: Timestamp,
    pub billing_start: Timestamp,
    pub billing_end: Timestamp,
    pub billed_cost: Nanos,
    pub effective_cost: Nanos,
    pub list_cost: Nanos,
    pub contracted_cost: Nanos,
    pub list_unit_price: Option<Decimal>,
    pub contracted_unit_price: Option<Decimal>,
    /// Billed quantity and its unit (usage rows).
    pub quantity: Option<(Decimal, String)>,
    pub percent_discount: Option<Decimal>,
    /// `ResourceId` and `ResourceName` (usage rows): a model endpoint and its name in the
    /// catalog, or a serverless app (`<owner>/<app>`) and its name.
    pub resource: Option<(String, String)>,
    pub sku_id: String,
    pub sku_price_id: String,
    /// The invoice number that bills the row.
    pub invoice: Option<String>,
    pub purchase_id: Option<PurchaseId>,
    /// The amount of free credits granted (`Credit` rows).
    pub credit_amount: Option<Nanos>,
    pub description: String,
}

impl FocusRow {
    /// Whether the row is a charge for usage (not a purchase or a grant of credits).
    pub fn is_usage(&self) -> bool {
        self.category == ChargeCategory::Usage
    }
}

/// Who the rows are of and from.
#[derive(Clone, Debug)]
pub struct FocusContext {
    pub account: AccountId,
    /// The provider, publisher and invoice issuer: the issuer's name, else [`DEFAULT_PROVIDER`].
    pub provider: String,
    pub source: FocusSource,
    /// The charge range: `[start, end)`.
    pub start: Timestamp,
    pub end: Timestamp,
}

#[derive(Clone, Debug)]
enum Stage {
    Purchases {
        after: Option<(i64, String)>,
    },
    /// Usage from the rollups, from this instant on.
    Usage {
        from: Timestamp,
    },
    /// Usage from the usage invoices' lines.
    InvoicedUsage,
    Done,
}

/// A report being read, page by page.
pub struct FocusReport {
    engine: Engine,
    pub context: FocusContext,
    range: Range,
    /// The billing period of every row (`source=invoice`); `None`: the UTC month of each row's
    /// charge period.
    billing_month: Option<Month>,
    /// `source=invoice` by `charge_month`: the lines of the charges incurred in the month.
    by_charge_month: bool,
    account: AccountState,
    catalog: Arc<Catalog>,
    page_span_ms: i64,
    stage: Stage,
}

/// The estimate's range of instants: `end` default now, `start` default a day before `end`,
/// `start` before `end`, at most [`ESTIMATE_MAX_RANGE_MS`] long (a date is midnight in `tz`).
fn estimate_bounds(spec: &RangeSpec, now: Timestamp) -> Result<(), RangeError> {
    let end = spec
        .end
        .map(|m| m.resolve(spec.tz, "end"))
        .transpose()?
        .unwrap_or(now);
    let start = spec
        .start
        .map(|m: Moment| m.resolve(spec.tz, "start"))
        .transpose()?
        .unwrap_or(end.minus_ms(ESTIMATE_DEFAULT_RANGE_MS));
    if start >= end {
        return Err(RangeError::new("start", "start must be before end"));
    }
    if end.0 - start.0 > ESTIMATE_MAX_RANGE_MS {
        return Err(RangeError::new(
            "start",
            "an estimate may span at most 90 days from start to end",
        ));
    }
    Ok(())
}

impl FocusReport {
    /// Checks the request and opens the report: every refusal comes from here, before a row.
    pub async fn open(engine: &Engine, q: FocusQuery) -> Result<FocusReport, QueryError> {
        let now = engine.now();
        let timeframe = q.range.timeframe.unwrap_or(Timeframe::Day);
        let (range, billing_month) = match q.source {
            FocusSource::Estimate => {
                estimate_bounds(&q.range, now)?;
                let spec = RangeSpec {
                    timeframe: Some(timeframe),
                    ..q.range
                };
                (timeframe::resolve(&spec, now)?, None)
            }
            FocusSource::Invoice => {
                if q.billing_month.is_some() && q.charge_month.is_some() {
                    return Err(RangeError::new(
                        "charge_month",
                        "give billing_month or charge_month, not both",
                    )
                    .into());
                }
                let month = q
                    .billing_month
                    .or(q.charge_month)
                    .unwrap_or_else(|| Month::of(now));
                let range = Range {
                    start: month.start(),
                    end: month.end(),
                    tz: q.range.tz,
                    timeframe,
                };
                (range, Some(month))
            }
        };
        let row = crate::account(engine, &q.account).await?;
        let provider = crate::invoices::issuer(engine)
            .await?
            .map(|i| i.name)
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_PROVIDER.to_string());
        Ok(FocusReport {
            engine: engine.clone(),
            context: FocusContext {
                account: q.account,
                provider,
                source: q.source,
                start: range.start,
                end: range.end,
            },
            stage: Stage::Purchases { after: None },
            range,
            billing_month,
            by_charge_month: q.charge_month.is_some(),
            account: row.state,
            catalog: engine.catalog(),
            page_span_ms: q.page_span_ms.max(1),
        })
    }

    /// The next page of rows; `None` once the report is complete. A page may be empty.
    pub async fn next_page(&mut self) -> Result<Option<Vec<FocusRow>>, QueryError> {
        match self.stage.clone() {
            Stage::Purchases { after } => self.purchases(after).await.map(Some),
            Stage::Usage { from } => self.usage(from).await.map(Some),
            Stage::InvoicedUsage => {
                self.stage = Stage::Usage {
                    from: self.range.start,
                };
                Ok(Some(self.invoiced_usage().await?))
            }
            Stage::Done => Ok(None),
        }
    }

    /// Every row of the report, in one vector (tests and small reports).
    pub async fn all(mut self) -> Result<Vec<FocusRow>, QueryError> {
        let mut rows = Vec::new();
        while let Some(page) = self.next_page().await? {
            rows.extend(page);
        }
        Ok(rows)
    }

    /// After the purchases: the usage. An invoice report takes the usage its usage invoices bill
    /// from their lines, then the usage drawn from prepaid credits from the rollups (an account
    /// may have been billed either way in the month: the rollup rows of the periods when it
    /// was invoice-billed are left to its invoices); an estimate takes all of it from the
    /// rollups.
    fn usage_stage(&self) -> Stage {
        match self.context.source {
            FocusSource::Invoice => Stage::InvoicedUsage,
            FocusSource::Estimate => Stage::Usage {
                from: self.range.start,
            },
        }
    }

    fn billing_period(&self, charge_start: Timestamp) -> (Timestamp, Timestamp) {
        let m = self
            .billing_month
            .unwrap_or_else(|| Month::of(charge_start));
        (m.start(), m.end())
    }

    /// The charge period containing `t`, clipped to the report's range.
    fn charge_period(&self, t: Timestamp) -> (Timestamp, Timestamp) {
        let start = self.range.bucket_start(t);
        let end = self.range.next_boundary(start);
        (start.max(self.range.start), end.min(self.range.end))
    }

    async fn purchases(
        &mut self,
        after: Option<(i64, String)>,
    ) -> Result<Vec<FocusRow>, QueryError> {
        let q = PurchasesQuery {
            account: self.context.account.clone(),
            from: self.range.start,
            to: self.range.end,
            after,
            limit: PURCHASES_PAGE,
        };
        let found = self.engine.read(move |r| r.purchases(&q)).await?;
        self.stage = match found.last() {
            Some(last) if found.len() == PURCHASES_PAGE => Stage::Purchases {
                after: Some((last.created_at.0, last.purchase_id.as_str().to_string())),
            },
            _ => self.usage_stage(),
        };
        Ok(found
            .into_iter()
            .map(|p| {
                let (charge_start, charge_end) = self.charge_period(p.created_at);
                let (billing_start, billing_end) = self.billing_period(charge_start);
                let usd = p.amount.to_usd().normalize();
                let (category, billed, credit_amount, description, sku_price) = if p.paid {
                    (
                        ChargeCategory::Purchase,
                        p.amount,
                        None,
                        format!("Prepaid credits: {usd} USD (purchase {})", p.purchase_id),
                        "credits:prepaid",
                    )
                } else {
                    (
                        ChargeCategory::Credit,
                        Nanos::ZERO,
                        Some(p.amount),
                        format!("Free credits granted: {usd} USD (grant {})", p.purchase_id),
                        "credits:free",
                    )
                };
                FocusRow {
                    category,
                    service: FocusService::Credits,
                    charge_start,
                    charge_end,
                    billing_start,
                    billing_end,
                    billed_cost: billed,
                    effective_cost: Nanos::ZERO,
                    list_cost: billed,
                    contracted_cost: billed,
                    list_unit_price: None,
                    contracted_unit_price: None,
                    quantity: None,
                    percent_discount: None,
                    resource: None,
                    sku_id: "credits".to_string(),
                    sku_price_id: sku_price.to_string(),
                    invoice: p.invoice_number,
                    purchase_id: Some(p.purchase_id),
                    credit_amount,
                    description,
                }
            })
            .collect())
    }

    /// The end of the page of usage starting at `from`: whole charge periods until the page
    /// span is covered (at least one), or the range's end.
    fn page_end(&self, from: Timestamp) -> Timestamp {
        let mut end = from;
        while end < self.range.end && end.0 - from.0 < self.page_span_ms {
            end = self.range.next_boundary(self.range.bucket_start(end));
        }
        end.min(self.range.end)
    }

    async fn usage(&mut self, from: Timestamp) -> Result<Vec<FocusRow>, QueryError> {
        if from >= self.range.end {
            self.stage = Stage::Done;
            return Ok(Vec::new());
        }
        let to = self.page_end(from);
        self.stage = Stage::Usage { from: to };
        let page = Range {
            start: from,
            end: to,
            ..self.range.clone()
        };
        let rq = RollupQuery {
            account: self.context.account.clone(),
            from,
            to,
            endpoints: Vec::new(),
            api_keys: Vec::new(),
            whole_hours: page.whole_hours(),
            service: None,
        };
        let rows = self.engine.read(move |r| r.usage(&rq)).await?;
        type Key = (Timestamp, EndpointId, String, UsagePrice, Option<Decimal>);
        let mut groups: BTreeMap<Key, UsageTotals> = BTreeMap::new();
        for (k, t) in rows {
            let key = (
                self.range.bucket_start(k.slot),
                k.endpoint,
                k.unit,
                k.price,
                k.percent_discount,
            );
            groups
                .entry(key)
                .or_default()
                .add(&t)
                .map_err(|e| QueryError::OutOfRange(format!("usage total: {e}")))?;
        }
        let invoice_report = self.context.source == FocusSource::Invoice;
        groups
            .into_iter()
            .filter_map(
                |((bucket, endpoint, unit, price, percent_discount), totals)| {
                    let (charge_start, charge_end) = self.charge_period(bucket);
                    let agg = UsageAggregate {
                        endpoint,
                        unit,
                        price,
                        percent_discount,
                        totals,
                        charge_start,
                        charge_end,
                    };
                    let billed = match self.account.terms.at(charge_start).billing {
                        BillingMode::Prepaid => UsageBilling::PrepaidCredits,
                        // An invoice report has it from the invoices' lines.
                        BillingMode::Invoice if invoice_report => return None,
                        BillingMode::Invoice => UsageBilling::NotYetInvoiced,
                    };
                    Some(self.usage_row(&agg, billed))
                },
            )
            .collect()
    }

    /// The usage of an invoice-billed account as its usage invoices bill it: the lines of its
    /// usage invoices issued in the billing month (`billing_month`), or every line whose
    /// usage was in the charge month, whichever invoice it is on (`charge_month`: an invoice
    /// issued in that month or later, since a charge is invoiced after it is recorded). A
    /// voided invoice bills nothing and is left out. An account has about one usage invoice a
    /// month, so this reads a handful of invoices, newest first, down to the month's start.
    async fn invoiced_usage(&mut self) -> Result<Vec<FocusRow>, QueryError> {
        const PAGE: usize = 100;
        let (start, end) = (self.range.start, self.range.end);
        let by_charge = self.by_charge_month;
        let charge_month = month_of(start);
        let mut rows = Vec::new();
        let mut before = None;
        loop {
            let q = InvoicesQuery {
                account: Some(self.context.account.clone()),
                status: None,
                kind: Some(InvoiceKind::Usage),
                before,
                limit: PAGE,
            };
            let page = self.engine.read(move |r| r.invoices(&q)).await?;
            let full = page.len() == PAGE;
            for inv in &page {
                before = Some((inv.year, inv.seq));
                if inv.issued_at < start {
                    return Ok(rows);
                }
                let wanted = by_charge || inv.issued_at < end;
                if !wanted || inv.status == InvoiceStatus::Void {
                    continue;
                }
                let lines: Vec<UsageAggregate> = inv
                    .lines
                    .iter()
                    .filter(|l| !by_charge || l.charge_month == charge_month)
                    .map(|l| {
                        let (charge_start, charge_end) = l.charge_period();
                        UsageAggregate {
                            endpoint: l.endpoint.clone(),
                            unit: l.unit.clone(),
                            price: l.price,
                            percent_discount: l.percent_discount,
                            totals: l.totals.clone(),
                            charge_start,
                            charge_end,
                        }
                    })
                    .collect();
                rows.extend(invoiced_usage_rows(self, &inv.number(), &lines)?);
            }
            if !full {
                return Ok(rows);
            }
        }
    }

    /// One usage aggregate as a FOCUS row: its list price from the public catalog, its
    /// contracted price from the account's price and discount.
    pub fn usage_row(
        &self,
        agg: &UsageAggregate,
        billing: UsageBilling,
    ) -> Result<FocusRow, QueryError> {
        let t = &agg.totals;
        let overflow = |what: &str| QueryError::OutOfRange(format!("{what} of {}", agg.endpoint));
        let rate = agg.price.unit_price(t);
        let contracted_rate = match agg.percent_discount {
            Some(p) => rate
                .checked_mul(Decimal::ONE_HUNDRED - p)
                .and_then(|x| x.checked_div(Decimal::ONE_HUNDRED))
                .ok_or_else(|| overflow("contracted unit price"))?,
            None => rate,
        }
        .normalize();
        let sku = match Line::of(&agg.endpoint) {
            Some(line) => self.serverless_sku(agg, &line),
            None => self.model_sku(agg),
        };
        let (list_rate, list_cost) = match sku.list_rate {
            Some(list) if list != rate => (
                list,
                t.quantity
                    .checked_mul(list)
                    .and_then(|x| round_usd_to_nanos(x).ok())
                    .ok_or_else(|| overflow("list cost"))?,
            ),
            // At the list rate (or without a comparable public one): the billed subtotal.
            _ => (rate, t.subtotal),
        };
        let (billing_start, billing_end) = self.billing_period(agg.charge_start);
        let (billed, invoice) = match billing {
            UsageBilling::PrepaidCredits => (Nanos::ZERO, None),
            UsageBilling::NotYetInvoiced => (t.total, None),
            UsageBilling::Invoiced { number } => (t.total, Some(number)),
        };
        let discount = agg
            .percent_discount
            .map(|p| format!(", {}% discount", p.normalize()))
            .unwrap_or_default();
        let description = match sku.service {
            FocusService::Serverless => format!(
                "{}: {} GPU-seconds at {} USD per GPU-second{discount}",
                sku.what,
                t.quantity.normalize(),
                rate.normalize(),
            ),
            FocusService::ModelApis | FocusService::Credits => format!(
                "{}: {} {} at {} USD per {}{discount} ({} requests)",
                sku.what,
                t.quantity.normalize(),
                agg.unit,
                rate.normalize(),
                agg.unit,
                t.requests
            ),
        };
        Ok(FocusRow {
            category: ChargeCategory::Usage,
            service: sku.service,
            charge_start: agg.charge_start,
            charge_end: agg.charge_end,
            billing_start,
            billing_end,
            billed_cost: billed,
            effective_cost: t.total,
            list_cost,
            contracted_cost: t.total,
            list_unit_price: Some(list_rate.normalize()),
            contracted_unit_price: Some(contracted_rate),
            quantity: Some((t.quantity.normalize(), agg.unit.clone())),
            percent_discount: agg.percent_discount,
            description,
            resource: Some(sku.resource),
            sku_id: sku.sku_id,
            sku_price_id: sku.sku_price_id,
            invoice,
            purchase_id: None,
            credit_amount: None,
        })
    }

    /// A model endpoint's aggregate: the endpoint is the resource and the SKU, priced by its
    /// price version.
    fn model_sku(&self, agg: &UsageAggregate) -> Sku {
        let version = match agg.price {
            UsagePrice::Blended { version } => Some(version),
            UsagePrice::Rate(_) => self
                .catalog
                .price_at(&agg.endpoint, &self.context.account, agg.charge_start)
                .map(|v| v.id),
        };
        let sku_price_id = match version {
            Some(v) => format!("{}:{}:v{v}", agg.endpoint, agg.unit),
            None => format!("{}:{}", agg.endpoint, agg.unit),
        };
        let name = self
            .catalog
            .endpoints
            .get(&agg.endpoint)
            .map_or_else(|| agg.endpoint.to_string(), |d| d.display_name.clone());
        Sku {
            service: FocusService::ModelApis,
            resource: (agg.endpoint.to_string(), name),
            sku_id: agg.endpoint.to_string(),
            sku_price_id,
            list_rate: self.list_rate(agg),
            what: agg.endpoint.to_string(),
        }
    }

    /// A serverless line's aggregate: the app (`<owner>/<app>`, as fal names it) is the
    /// resource, the machine type the SKU; its list price is the catalog's machine price (the
    /// surge price for surge time).
    fn serverless_sku(&self, agg: &UsageAggregate, line: &Line) -> Sku {
        let prices = if line.is_surge {
            &self.catalog.machines_surge
        } else {
            &self.catalog.machines
        };
        let kind = if line.is_surge { "surge" } else { "standard" };
        Sku {
            service: FocusService::Serverless,
            resource: (
                format!("{}/{}", self.context.account, line.app),
                line.app.to_string(),
            ),
            sku_id: line.machine_type.to_string(),
            sku_price_id: format!("{}:{}:{kind}", line.machine_type, agg.unit),
            list_rate: prices.get(&line.machine_type).map(|p| p.normalize()),
            what: line.describe(),
        }
    }

    /// The public catalog's rate for the aggregate's unit, in force at its start (with the
    /// catalog's machine price, not the account's), when it is a listed rate of that unit.
    fn list_rate(&self, agg: &UsageAggregate) -> Option<Decimal> {
        let public = self
            .catalog
            .versions
            .get(&(agg.endpoint.clone(), None))?
            .iter()
            .rev()
            .find(|v| v.effective_from <= agg.charge_start)?;
        if public.rule.unit_label() != agg.unit {
            return None;
        }
        if matches!(agg.price, UsagePrice::Blended { .. }) {
            // A blended price has no one rate to compare: the row's own average stands.
            return None;
        }
        let machine = self
            .catalog
            .endpoints
            .get(&agg.endpoint)
            .and_then(|d| self.catalog.machine_price(d.machine_type.as_ref()));
        public.rule.headline_unit_price(machine)
    }
}

/// What a usage aggregate is of, as a report names it.
struct Sku {
    service: FocusService,
    /// `ResourceId`, `ResourceName`.
    resource: (String, String),
    sku_id: String,
    sku_price_id: String,
    /// The public list rate to compare with, when there is one.
    list_rate: Option<Decimal>,
    /// What the description names.
    what: String,
}

/// Who pays a usage aggregate, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UsageBilling {
    /// Drawn from prepaid credits (billed when they were bought).
    PrepaidCredits,
    /// Invoice-billed usage shown as it happened (an estimate: no invoice named).
    NotYetInvoiced,
    /// Billed on the usage invoice numbered so.
    Invoiced { number: String },
}

/// The rows of one usage invoice: one per line, billed on it (`BilledCost` = the line's
/// total, `InvoiceId` = its number). The invoice report of an invoice-billed account is made
/// of these ([`FocusReport`]'s `invoiced_usage` reads the lines).
pub fn invoiced_usage_rows(
    report: &FocusReport,
    invoice_number: &str,
    lines: &[UsageAggregate],
) -> Result<Vec<FocusRow>, QueryError> {
    lines
        .iter()
        .map(|line| {
            report.usage_row(
                line,
                UsageBilling::Invoiced {
                    number: invoice_number.to_string(),
                },
            )
        })
        .collect()
}
