//! What both stores share below the SQL driver: the stored columns of each row as plain values,
//! their conversion to core types, the catalog assembled from its rows, and the ledger
//! reconciliation (portable SQL, compared in Rust). A driver only moves values in and out.

use crate::{
    corrupt, decimal, invoice_number, json, parse_id, to_json, AccountRow, ApiKeyRecord,
    BillingMode, InvoiceLineRecord, InvoiceRecord, InvoicesQuery, PaymentRecord, PaymentsQuery,
    PurchaseEntry, PurchasesQuery, Reconciliation, Result, RunnerMinuteTotals, Scope, Service,
    WebSession, SETTING_CONCURRENCY, SETTING_MACHINES, SETTING_MACHINES_SURGE,
};
use std::collections::HashMap;
use tollgate_core::catalog::{Catalog, EndpointDef, PriceVersion};
use tollgate_core::concurrency::ConcurrencyTable;
use tollgate_core::ids::{
    AccountId, AdjustmentId, ApiKeyId, AppName, EndpointId, EnvironmentName, LimitId, MachineType,
    PurchaseId, RequestId, RunnerEventId, RunnerId,
};
use tollgate_core::ledger::CreditAccount;
use tollgate_core::limits::{LimitAction, LimitScope, LimitState, Period, SpendingLimit};
use tollgate_core::machine::{month_of, BatchState};
use tollgate_core::machine::{
    AccountState, AdjustmentRecord, InvoiceKind, InvoiceStatus, LineItem, Lot, OpenPeriod,
    PurchaseRecord, RequestRecord, RequestStatus, Source, TransferRecord,
};
use tollgate_core::payments::{
    DisputeRecord, DisputeStatus, PaymentProfile, RefundRecord, TopUpKind, TopUpRecord, TopUpStatus,
};
use tollgate_core::price::{MachinePrices, PriceRule};
use tollgate_core::pricing::{Charge, Discounts};
use tollgate_core::rollup::{UsagePrice, UsageTotals};
use tollgate_core::serverless::{
    HistoryState, RunnerEventRecord, RunnerRecord, RunnerState, Segment, ENDPOINT_PREFIX,
};
use tollgate_core::terms::{Terms, TermsSchedule, TermsVersion};
use tollgate_core::{Nanos, Timestamp};

/// A result row, whichever driver read it: the few column types the schema uses.
pub trait Get {
    fn text(&self, i: usize) -> Result<String>;
    fn opt_text(&self, i: usize) -> Result<Option<String>>;
    fn int(&self, i: usize) -> Result<i64>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>>;
    fn bool(&self, i: usize) -> Result<bool>;
    fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>>;
}

pub(crate) const ACCOUNT_COLS: &str = "username, balance_nanos, held_nanos, in_progress, \
     terms, adjusted_credit_nanos, disputed_since, paid_lifetime_nanos, \
     month, month_subtotal_nanos, created_at, period_start, period_charges, \
     period_subtotal_nanos, period_discount_nanos, period_total_nanos, period_last_charge_at, \
     limits, payment";

/// An `accounts` row.
pub(crate) struct AccountCols {
    pub username: String,
    pub balance: i64,
    pub held: i64,
    pub in_progress: i64,
    pub terms: String,
    pub adjusted_credit: i64,
    pub disputed_since: Option<i64>,
    pub paid_lifetime: i64,
    pub month: i32,
    pub month_subtotal: i64,
    pub created_at: i64,
    pub period: OpenPeriod,
    /// `accounts.limits`: empty for an account without spending limits.
    pub limits: String,
    /// `accounts.payment`: empty for an account that never paid through the provider.
    pub payment: String,
}

fn small(what: &str, v: i64) -> Result<u32> {
    u32::try_from(v).map_err(|e| corrupt(what, e))
}

impl AccountCols {
    /// A row of `SELECT {ACCOUNT_COLS}`.
    pub fn read(r: &dyn Get) -> Result<AccountCols> {
        Ok(AccountCols {
            username: r.text(0)?,
            balance: r.int(1)?,
            held: r.int(2)?,
            in_progress: r.int(3)?,
            terms: r.text(4)?,
            adjusted_credit: r.int(5)?,
            disputed_since: r.opt_int(6)?,
            paid_lifetime: r.int(7)?,
            month: i32::try_from(r.int(8)?).map_err(|e| corrupt("month", e))?,
            month_subtotal: r.int(9)?,
            created_at: r.int(10)?,
            period: OpenPeriod {
                start: Timestamp(r.int(11)?),
                charges: u64::try_from(r.int(12)?).map_err(|e| corrupt("period_charges", e))?,
                subtotal: Nanos(r.int(13)?),
                discount: Nanos(r.int(14)?),
                total: Nanos(r.int(15)?),
                last_charge_at: Timestamp(r.int(16)?),
            },
            limits: r.text(17)?,
            payment: r.text(18)?,
        })
    }

    /// The account with its open lots (in spending order) and its paid purchases in the
    /// concurrency tier window of `now`, with the terms in force at `now`.
    pub fn into_row(self, lots: Vec<Lot>, paid_28d: Nanos, now: Timestamp) -> Result<AccountRow> {
        // The defaults (prepaid, no lock threshold) until the terms in force replace them.
        let credit = CreditAccount::new_prepaid(parse_id(AccountId::parse, &self.username)?);
        let credit = CreditAccount {
            balance: Nanos(self.balance),
            held: Nanos(self.held),
            ..credit
        };
        let mut state = AccountState {
            credit,
            in_progress: small("in_progress", self.in_progress)?,
            concurrency_override: None,
            paid_28d,
            paid_lifetime: Nanos(self.paid_lifetime),
            discounts: Default::default(),
            month: self.month,
            month_subtotal: Nanos(self.month_subtotal),
            lots,
            adjusted_credit: Nanos(self.adjusted_credit),
            terms: terms_schedule(&self.terms)?,
            disputed_since: self.disputed_since.map(Timestamp),
            period: self.period,
            limits: limit_states(&self.limits)?,
            payment: payment_profile(&self.payment)?,
        };
        state.use_terms_at(now);
        Ok(AccountRow {
            billing: state.billing(),
            state,
            created_at: Timestamp(self.created_at),
        })
    }
}

/// One version of an account's terms as stored in `accounts.terms` (a JSON array of them).
/// `billing` is in every version (schema 6 wrote it into those before); the low-balance
/// level and machine prices are absent when unset.
#[derive(serde::Serialize, serde::Deserialize)]
struct TermsVersionCols {
    effective_from: i64,
    discounts: Discounts,
    concurrency_override: Option<u32>,
    lock_threshold_nanos: i64,
    billing: BillingMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    low_balance_nanos: Option<i64>,
    #[serde(default, skip_serializing_if = "MachinePrices::is_empty")]
    machine_prices: MachinePrices,
}

/// The stored text of an account's terms versions (`accounts.terms`).
pub(crate) fn terms_text(schedule: &TermsSchedule) -> String {
    let rows: Vec<TermsVersionCols> = schedule
        .versions()
        .iter()
        .map(|v| TermsVersionCols {
            effective_from: v.effective_from.0,
            discounts: v.terms.discounts.clone(),
            concurrency_override: v.terms.concurrency_override,
            lock_threshold_nanos: v.terms.lock_threshold.0,
            billing: v.terms.billing,
            low_balance_nanos: v.terms.low_balance.map(|n| n.0),
            machine_prices: v.terms.machine_prices.clone(),
        })
        .collect();
    to_json(&rows)
}

fn terms_schedule(text: &str) -> Result<TermsSchedule> {
    let rows: Vec<TermsVersionCols> = json("terms", text)?;
    Ok(TermsSchedule::new(
        rows.into_iter()
            .map(|r| TermsVersion {
                effective_from: Timestamp(r.effective_from),
                terms: Terms {
                    discounts: r.discounts,
                    concurrency_override: r.concurrency_override,
                    lock_threshold: Nanos(r.lock_threshold_nanos),
                    low_balance: r.low_balance_nanos.map(Nanos),
                    billing: r.billing,
                    machine_prices: r.machine_prices,
                },
            })
            .collect(),
    ))
}

/// One spending limit with its period's state, as stored in `accounts.limits` (a JSON array
/// of them; the empty text when there is none, so an account without limits parses nothing).
#[derive(serde::Serialize, serde::Deserialize)]
struct LimitCols {
    id: String,
    /// `account` or `api_key`.
    scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api_key: Option<String>,
    period: String,
    timezone: String,
    amount_nanos: i64,
    action: String,
    alert_at_percent: Vec<u32>,
    created_at: i64,
    period_start: i64,
    resets_at: i64,
    spent_nanos: i64,
    held_nanos: i64,
    alerted: Vec<u32>,
    reached: bool,
}

/// The stored text of an account's spending limits (`accounts.limits`).
pub(crate) fn limits_text(limits: &[LimitState]) -> String {
    if limits.is_empty() {
        return String::new();
    }
    let rows: Vec<LimitCols> = limits
        .iter()
        .map(|l| LimitCols {
            id: l.limit.id.as_str().to_string(),
            scope: l.limit.scope.as_str().to_string(),
            api_key: l.limit.scope.api_key().map(|k| k.as_str().to_string()),
            period: l.limit.period.as_str().to_string(),
            timezone: l.limit.timezone.name().to_string(),
            amount_nanos: l.limit.amount.0,
            action: l.limit.action.as_str().to_string(),
            alert_at_percent: l.limit.alert_at_percent.clone(),
            created_at: l.limit.created_at.0,
            period_start: l.period_start.0,
            resets_at: l.resets_at.0,
            spent_nanos: l.spent.0,
            held_nanos: l.held.0,
            alerted: l.alerted.clone(),
            reached: l.reached,
        })
        .collect();
    to_json(&rows)
}

fn limit_states(text: &str) -> Result<Vec<LimitState>> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<LimitCols> = json("limits", text)?;
    rows.into_iter()
        .map(|r| {
            let scope = match (r.scope.as_str(), r.api_key) {
                ("account", None) => LimitScope::Account,
                ("api_key", Some(k)) => LimitScope::ApiKey(parse_id(ApiKeyId::parse, &k)?),
                (other, _) => return Err(corrupt("limits.scope", other)),
            };
            Ok(LimitState {
                limit: SpendingLimit {
                    id: parse_id(LimitId::parse, &r.id)?,
                    scope,
                    period: Period::parse(&r.period)
                        .ok_or_else(|| corrupt("limits.period", &r.period))?,
                    timezone: r
                        .timezone
                        .parse()
                        .map_err(|_| corrupt("limits.timezone", &r.timezone))?,
                    amount: Nanos(r.amount_nanos),
                    action: LimitAction::parse(&r.action)
                        .ok_or_else(|| corrupt("limits.action", &r.action))?,
                    alert_at_percent: r.alert_at_percent,
                    created_at: Timestamp(r.created_at),
                },
                period_start: Timestamp(r.period_start),
                resets_at: Timestamp(r.resets_at),
                spent: Nanos(r.spent_nanos),
                held: Nanos(r.held_nanos),
                alerted: r.alerted,
                reached: r.reached,
            })
        })
        .collect()
}

/// The stored text of an account's payment profile (`accounts.payment`): empty for the
/// default (an account that never paid through the provider), so such an account encodes and
/// parses nothing.
pub(crate) fn payment_text(profile: &PaymentProfile) -> String {
    if *profile == PaymentProfile::default() {
        String::new()
    } else {
        to_json(profile)
    }
}

fn payment_profile(text: &str) -> Result<PaymentProfile> {
    if text.is_empty() {
        return Ok(PaymentProfile::default());
    }
    json("payment", text)
}

pub(crate) const TOP_UP_COLS: &str = "account, top_up_id, kind, amount_nanos, status, \
     created_at, updated_at, checkout_session, checkout_url, payment_intent, \
     provider_refunded_nanos, failure";

/// A `top_ups` row.
pub(crate) struct TopUpCols {
    pub account: String,
    pub top_up_id: String,
    pub kind: &'static str,
    pub amount: i64,
    pub status: &'static str,
    pub created_at: i64,
    pub updated_at: i64,
    pub checkout_session: Option<String>,
    pub checkout_url: Option<String>,
    pub payment_intent: Option<String>,
    pub provider_refunded: i64,
    pub failure: Option<String>,
}

impl TopUpCols {
    pub fn of(t: &TopUpRecord) -> TopUpCols {
        TopUpCols {
            account: t.account.as_str().to_string(),
            top_up_id: t.top_up_id.as_str().to_string(),
            kind: t.kind.as_str(),
            amount: t.amount.0,
            status: t.status.as_str(),
            created_at: t.created_at.0,
            updated_at: t.updated_at.0,
            checkout_session: t.checkout_session.clone(),
            checkout_url: t.checkout_url.clone(),
            payment_intent: t.payment_intent.clone(),
            provider_refunded: t.provider_refunded.0,
            failure: t.failure.clone(),
        }
    }
}

/// A row of `SELECT {TOP_UP_COLS}`.
pub(crate) fn top_up_row(r: &dyn Get) -> Result<TopUpRecord> {
    let kind = r.text(2)?;
    let status = r.text(4)?;
    Ok(TopUpRecord {
        account: parse_id(AccountId::parse, &r.text(0)?)?,
        top_up_id: parse_id(PurchaseId::parse, &r.text(1)?)?,
        kind: TopUpKind::parse(&kind).ok_or_else(|| corrupt("top-up kind", &kind))?,
        amount: Nanos(r.int(3)?),
        status: TopUpStatus::parse(&status).ok_or_else(|| corrupt("top-up status", &status))?,
        created_at: Timestamp(r.int(5)?),
        updated_at: Timestamp(r.int(6)?),
        checkout_session: r.opt_text(7)?,
        checkout_url: r.opt_text(8)?,
        payment_intent: r.opt_text(9)?,
        provider_refunded: Nanos(r.int(10)?),
        failure: r.opt_text(11)?,
    })
}

pub(crate) const DISPUTE_COLS: &str = "account, dispute_id, top_up_id, amount_nanos, status, \
     taken_nanos, locking_epoch, created_at, updated_at";

/// A `disputes` row.
pub(crate) struct DisputeCols {
    pub account: String,
    pub dispute_id: String,
    pub top_up_id: String,
    pub amount: i64,
    pub status: &'static str,
    pub taken: i64,
    pub locking_epoch: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl DisputeCols {
    pub fn of(d: &DisputeRecord) -> DisputeCols {
        DisputeCols {
            account: d.account.as_str().to_string(),
            dispute_id: d.dispute_id.clone(),
            top_up_id: d.top_up_id.as_str().to_string(),
            amount: d.amount.0,
            status: d.status.as_str(),
            taken: d.taken.0,
            locking_epoch: d.locking_epoch.map(i64::from),
            created_at: d.created_at.0,
            updated_at: d.updated_at.0,
        }
    }
}

/// A row of `SELECT {DISPUTE_COLS}`.
pub(crate) fn dispute_row(r: &dyn Get) -> Result<DisputeRecord> {
    let status = r.text(4)?;
    Ok(DisputeRecord {
        account: parse_id(AccountId::parse, &r.text(0)?)?,
        dispute_id: r.text(1)?,
        top_up_id: parse_id(PurchaseId::parse, &r.text(2)?)?,
        amount: Nanos(r.int(3)?),
        status: DisputeStatus::parse(&status).ok_or_else(|| corrupt("dispute status", &status))?,
        taken: Nanos(r.int(5)?),
        locking_epoch: r
            .opt_int(6)?
            .map(|e| small("locking_epoch", e))
            .transpose()?,
        created_at: Timestamp(r.int(7)?),
        updated_at: Timestamp(r.int(8)?),
    })
}

pub(crate) const REFUND_COLS: &str = "account, refund_id, purchase_id, amount_nanos, \
     taken_nanos, provider_reference, created_at, balance_after";

/// A `refunds` row: the refund and its answer.
pub(crate) struct RefundCols {
    pub account: String,
    pub refund_id: String,
    pub purchase_id: String,
    pub amount: i64,
    pub taken: i64,
    pub provider_reference: Option<String>,
    pub created_at: i64,
    pub balance_after: i64,
}

impl RefundCols {
    pub fn of(r: &RefundRecord) -> RefundCols {
        RefundCols {
            account: r.account.as_str().to_string(),
            refund_id: r.refund_id.as_str().to_string(),
            purchase_id: r.purchase_id.as_str().to_string(),
            amount: r.amount.0,
            taken: r.taken.0,
            provider_reference: r.provider_reference.clone(),
            created_at: r.created_at.0,
            balance_after: r.balance_after.0,
        }
    }
}

/// A row of `SELECT {REFUND_COLS}`.
pub(crate) fn refund_row(r: &dyn Get) -> Result<RefundRecord> {
    Ok(RefundRecord {
        account: parse_id(AccountId::parse, &r.text(0)?)?,
        refund_id: parse_id(PurchaseId::parse, &r.text(1)?)?,
        purchase_id: parse_id(PurchaseId::parse, &r.text(2)?)?,
        amount: Nanos(r.int(3)?),
        taken: Nanos(r.int(4)?),
        provider_reference: r.opt_text(5)?,
        created_at: Timestamp(r.int(6)?),
        balance_after: Nanos(r.int(7)?),
    })
}

/// The batch's record of a row it marked changed (the core keeps both together).
pub(crate) fn dirty<'a, K: std::fmt::Debug + Eq + std::hash::Hash, V>(
    map: &'a HashMap<K, V>,
    key: &K,
    what: &str,
) -> Result<&'a V> {
    map.get(key).ok_or_else(|| {
        crate::StoreError::Corrupt(format!("the batch changed {what} {key:?} it does not hold"))
    })
}

pub(crate) const ADJUSTMENT_COLS: &str =
    "account, adjustment_id, amount_nanos, reason, created_at, balance_after, locked_after";

/// An `adjustments` row: the adjustment and its answer.
pub(crate) struct AdjustmentCols {
    pub account: String,
    pub adjustment_id: String,
    pub amount: i64,
    pub reason: String,
    pub created_at: i64,
    pub balance_after: i64,
    pub locked_after: bool,
}

impl AdjustmentCols {
    /// A row of `SELECT {ADJUSTMENT_COLS}`.
    pub fn read(r: &dyn Get) -> Result<AdjustmentCols> {
        Ok(AdjustmentCols {
            account: r.text(0)?,
            adjustment_id: r.text(1)?,
            amount: r.int(2)?,
            reason: r.text(3)?,
            created_at: r.int(4)?,
            balance_after: r.int(5)?,
            locked_after: r.bool(6)?,
        })
    }

    pub fn of(a: &AdjustmentRecord) -> AdjustmentCols {
        AdjustmentCols {
            account: a.account.as_str().to_string(),
            adjustment_id: a.adjustment_id.as_str().to_string(),
            amount: a.amount.0,
            reason: a.reason.clone(),
            created_at: a.created_at.0,
            balance_after: a.balance_after.0,
            locked_after: a.locked_after,
        }
    }

    pub fn into_record(self) -> Result<AdjustmentRecord> {
        Ok(AdjustmentRecord {
            account: parse_id(AccountId::parse, &self.account)?,
            adjustment_id: parse_id(AdjustmentId::parse, &self.adjustment_id)?,
            amount: Nanos(self.amount),
            reason: self.reason,
            created_at: Timestamp(self.created_at),
            balance_after: Nanos(self.balance_after),
            locked_after: self.locked_after,
        })
    }
}

pub(crate) const INVOICE_COLS: &str = "year, seq, prefix, account, kind, status, issued_at, \
     period_start, period_end, total_nanos, purchase_id, subtotal_nanos, discount_nanos, \
     status_changed_at, status_reference, corrects_year, corrects_seq";

/// The columns of `invoice_lines` read as a line (the quantity as text on both stores).
pub(crate) const INVOICE_LINE_COLS: &str = "charge_month, endpoint_id, unit, unit_price, \
     blend_version, percent_discount, CAST(quantity AS TEXT), requests, subtotal_nanos, \
     discount_nanos, total_nanos, first_usage_at, last_usage_at";

/// The order of an invoice's lines.
pub(crate) const INVOICE_LINE_ORDER: &str =
    "charge_month, endpoint_id, unit, blend_version, unit_price, percent_discount";

/// One invoice's lines, in their order: parameters its year and sequence number (a range of
/// the lines' primary key).
pub(crate) fn invoice_lines_sql(p: impl Fn(usize, &str) -> String) -> String {
    format!(
        "SELECT {INVOICE_LINE_COLS} FROM invoice_lines WHERE year = {} AND seq = {} \
         ORDER BY {INVOICE_LINE_ORDER}",
        p(1, "bigint"),
        p(2, "bigint"),
    )
}

/// A row of `SELECT {INVOICE_LINE_COLS}`.
pub(crate) fn invoice_line_row(r: &dyn Get) -> Result<InvoiceLineRecord> {
    let price = match r.int(4)? {
        0 => UsagePrice::Rate(decimal("unit_price", &r.text(3)?)?),
        version => UsagePrice::Blended { version },
    };
    let discount = r.text(5)?;
    Ok(InvoiceLineRecord {
        charge_month: i32::try_from(r.int(0)?).map_err(|e| corrupt("charge_month", e))?,
        endpoint: parse_id(EndpointId::parse, &r.text(1)?)?,
        unit: r.text(2)?,
        price,
        percent_discount: if discount.is_empty() {
            None
        } else {
            Some(decimal("percent_discount", &discount)?)
        },
        totals: UsageTotals {
            quantity: decimal("quantity", &r.text(6)?)?,
            requests: u64::try_from(r.int(7)?).map_err(|e| corrupt("requests", e))?,
            subtotal: Nanos(r.int(8)?),
            discount: Nanos(r.int(9)?),
            total: Nanos(r.int(10)?),
        },
        first_usage_at: Timestamp(r.int(11)?),
        last_usage_at: Timestamp(r.int(12)?),
    })
}

/// The key columns of an accrual or invoice line for one of a batch's line items: charge
/// month, endpoint, unit, unit price (empty when blended), blend version (0 for a rate),
/// percent discount (empty for none), as the usage rollups key their rows.
pub(crate) fn accrual_key(item: &LineItem) -> (i32, String, String, String, i64, String) {
    let price = UsagePrice::of(item);
    (
        month_of(item.billed_at),
        item.endpoint.as_str().to_string(),
        item.unit.clone(),
        match price {
            UsagePrice::Rate(p) => p.to_string(),
            UsagePrice::Blended { .. } => String::new(),
        },
        match price {
            UsagePrice::Rate(_) => 0,
            UsagePrice::Blended { version } => version,
        },
        item.charge
            .percent_discount
            .map(|p| p.normalize().to_string())
            .unwrap_or_default(),
    )
}

/// One accrual row's key: account, period start, then [`accrual_key`].
pub(crate) type AccrualKey = (String, i64, (i32, String, String, String, i64, String));

/// A batch's accruals summed per row (a row takes one upsert), with the first and last usage
/// time of each.
pub(crate) fn accrual_rows(
    s: &BatchState,
) -> Result<std::collections::BTreeMap<AccrualKey, (UsageTotals, i64, i64)>> {
    let mut out: std::collections::BTreeMap<AccrualKey, (UsageTotals, i64, i64)> =
        std::collections::BTreeMap::new();
    for a in &s.accruals {
        let item = &s.line_items[a.item];
        let key = (
            item.account.as_str().to_string(),
            a.period_start.0,
            accrual_key(item),
        );
        let at = item.billed_at.0;
        let row = out
            .entry(key)
            .or_insert_with(|| (UsageTotals::default(), at, at));
        row.0
            .add(&UsageTotals {
                quantity: item.charge.quantity,
                requests: 1,
                subtotal: item.charge.subtotal_nanos,
                discount: item.charge.discount_nanos,
                total: item.charge.total_nanos,
            })
            .map_err(|e| crate::StoreError::database(e.to_string(), e))?;
        row.1 = row.1.min(at);
        row.2 = row.2.max(at);
    }
    Ok(out)
}

/// A row of `SELECT {INVOICE_COLS}`.
pub(crate) fn invoice_row(r: &dyn Get) -> Result<InvoiceRecord> {
    let kind = r.text(4)?;
    let status = r.text(5)?;
    Ok(InvoiceRecord {
        year: r.int(0)?,
        seq: r.int(1)?,
        prefix: r.text(2)?,
        account: parse_id(AccountId::parse, &r.text(3)?)?,
        kind: InvoiceKind::parse(&kind).ok_or_else(|| corrupt("invoice kind", &kind))?,
        status: InvoiceStatus::parse(&status).ok_or_else(|| corrupt("invoice status", &status))?,
        issued_at: Timestamp(r.int(6)?),
        period_start: Timestamp(r.int(7)?),
        period_end: Timestamp(r.int(8)?),
        total: Nanos(r.int(9)?),
        purchase_id: r
            .opt_text(10)?
            .map(|p| parse_id(PurchaseId::parse, &p))
            .transpose()?,
        subtotal: Nanos(r.int(11)?),
        discount: Nanos(r.int(12)?),
        status_changed_at: r.opt_int(13)?.map(Timestamp),
        status_reference: r.opt_text(14)?,
        lines: Vec::new(),
        corrects: match (r.opt_int(15)?, r.opt_int(16)?) {
            (Some(year), Some(seq)) => Some((year, seq)),
            _ => None,
        },
    })
}

/// The batch's own top-up invoice that its credit note `new_invoices[n]` corrects, as an
/// index in `new_invoices`: the first top-up invoice issued before it to its account for its
/// purchase (a refund told before the payment is applied in the payment's batch). `None`
/// when that invoice was issued by an earlier batch, or never.
pub(crate) fn corrected_in_batch(s: &BatchState, n: usize) -> Option<usize> {
    let note = s.new_invoices.get(n)?;
    if note.kind != InvoiceKind::CreditNote || note.purchase_id.is_none() {
        return None;
    }
    s.new_invoices[..n].iter().position(|i| {
        i.kind == InvoiceKind::TopUp
            && i.account == note.account
            && i.purchase_id == note.purchase_id
    })
}

/// The invoices read's SQL, with `?N`-style placeholders written by `p(n)`: account, status,
/// kind (each NULL for any), before year, before seq, limit. One account's invoices
/// (`by_account`, the account given) are a range of `invoices_by_account`, newest first; all
/// accounts' (the account NULL), the primary key's. (A condition `(? IS NULL OR account = ?)`
/// would keep SQLite, which plans a statement before its parameters are known, on the primary
/// key: a scan of every account's invoices for each page of one account's.)
pub(crate) fn invoices_sql(p: impl Fn(usize, &str) -> String, by_account: bool) -> String {
    let a = p(1, "text");
    let account = if by_account {
        format!("account = {a}")
    } else {
        format!("{a} IS NULL")
    };
    format!(
        "SELECT {INVOICE_COLS} FROM invoices WHERE {account} \
         AND ({s} IS NULL OR status = {s}) AND ({k} IS NULL OR kind = {k}) \
         AND (year < {y} OR (year = {y} AND seq < {n})) ORDER BY year DESC, seq DESC LIMIT {l}",
        s = p(2, "text"),
        k = p(3, "text"),
        y = p(4, "bigint"),
        n = p(5, "bigint"),
        l = p(6, "bigint"),
    )
}

/// The invoices read's parameters in [`invoices_sql`]'s order.
pub(crate) fn invoices_args(
    q: &InvoicesQuery,
) -> (
    Option<String>,
    Option<&'static str>,
    Option<&'static str>,
    i64,
    i64,
    i64,
) {
    let (y, n) = q.before.unwrap_or((i64::MAX, i64::MAX));
    (
        q.account.as_ref().map(|a| a.as_str().to_string()),
        q.status.map(InvoiceStatus::as_str),
        q.kind.map(InvoiceKind::as_str),
        y,
        n,
        i64::try_from(q.limit).unwrap_or(i64::MAX),
    )
}

/// The join of a purchase `p` to its top-up invoice `i` (its credit notes name the same
/// purchase).
const TOP_UP_INVOICE: &str = "LEFT JOIN invoices i \
     ON i.account = p.account AND i.purchase_id = p.purchase_id AND i.kind = 'top_up'";

/// The payments read's SQL, with placeholders written by `p(n, type)`: account, before
/// created_at, before purchase_id, limit. `paid` is the condition that a purchase was paid.
/// Each row also says what was taken back of it, whether a dispute of it is open (or lost),
/// and the provider's payment of its top-up, if it was one.
pub(crate) fn payments_sql(p: impl Fn(usize, &str) -> String, paid: &str) -> String {
    format!(
        "SELECT p.purchase_id, p.created_at, p.amount_nanos, p.expires_at, i.year, i.seq, \
         p.refunded_nanos, p.disputed_nanos, EXISTS (SELECT 1 FROM disputes d \
           WHERE d.account = p.account AND d.top_up_id = p.purchase_id \
           AND d.status IN ('open', 'lost')), t.payment_intent \
         FROM purchases p {TOP_UP_INVOICE} \
         LEFT JOIN top_ups t ON t.account = p.account AND t.top_up_id = p.purchase_id \
         WHERE p.account = {a} AND {paid} \
         AND (p.created_at < {t} OR (p.created_at = {t} AND p.purchase_id < {id})) \
         ORDER BY p.created_at DESC, p.purchase_id DESC LIMIT {l}",
        a = p(1, "text"),
        t = p(2, "bigint"),
        id = p(3, "text"),
        l = p(4, "bigint"),
    )
}

/// The payments read's parameters in [`payments_sql`]'s order.
pub(crate) fn payments_args(q: &PaymentsQuery) -> (String, i64, String, i64) {
    let (t, id) = q.before.clone().unwrap_or((i64::MAX, String::new()));
    (
        q.account.as_str().to_string(),
        t,
        id,
        i64::try_from(q.limit).unwrap_or(i64::MAX),
    )
}

/// A row of [`payments_sql`].
pub(crate) fn payment_row(r: &dyn Get) -> Result<PaymentRecord> {
    let invoice = match (r.opt_int(4)?, r.opt_int(5)?) {
        (Some(y), Some(n)) => Some((y, n)),
        _ => None,
    };
    Ok(PaymentRecord {
        purchase_id: parse_id(PurchaseId::parse, &r.text(0)?)?,
        created_at: Timestamp(r.int(1)?),
        amount: Nanos(r.int(2)?),
        expires_at: r.opt_int(3)?.map(Timestamp),
        invoice,
        refunded: Nanos(r.int(6)?),
        disputed: Nanos(r.int(7)?),
        dispute_open: r.bool(8)?,
        provider_reference: r.opt_text(9)?,
    })
}

/// The purchases read (`Reader::purchases`): `p(i, type)` spells the i-th parameter (SQLite
/// `?i`, PostgreSQL `$i::type`). A range of `purchases_by_time`, each joined to its top-up
/// invoice through `invoices_by_purchase`.
pub(crate) fn purchases_sql(p: impl Fn(usize, &str) -> String) -> String {
    format!(
        "SELECT p.purchase_id, p.created_at, p.amount_nanos, p.paid, i.prefix, i.year, i.seq \
         FROM purchases p {TOP_UP_INVOICE} \
         WHERE p.account = {a} AND p.created_at >= {from} AND p.created_at < {to} \
         AND (p.created_at > {t} OR (p.created_at = {t} AND p.purchase_id > {id})) \
         ORDER BY p.created_at, p.purchase_id LIMIT {l}",
        a = p(1, "text"),
        from = p(2, "bigint"),
        to = p(3, "bigint"),
        t = p(4, "bigint"),
        id = p(5, "text"),
        l = p(6, "bigint"),
    )
}

/// The purchases read's parameters in [`purchases_sql`]'s order.
pub(crate) fn purchases_args(q: &PurchasesQuery) -> (String, i64, i64, i64, String, i64) {
    let (t, id) = q.after.clone().unwrap_or((i64::MIN, String::new()));
    (
        q.account.as_str().to_string(),
        q.from.0,
        q.to.0,
        t,
        id,
        i64::try_from(q.limit).unwrap_or(i64::MAX),
    )
}

/// A row of [`purchases_sql`].
pub(crate) fn purchase_entry(r: &dyn Get) -> Result<PurchaseEntry> {
    let invoice_number = match (r.opt_text(4)?, r.opt_int(5)?, r.opt_int(6)?) {
        (Some(prefix), Some(year), Some(seq)) => Some(invoice_number(&prefix, year, seq)),
        _ => None,
    };
    Ok(PurchaseEntry {
        purchase_id: parse_id(PurchaseId::parse, &r.text(0)?)?,
        created_at: Timestamp(r.int(1)?),
        amount: Nanos(r.int(2)?),
        paid: r.bool(3)?,
        invoice_number,
    })
}

pub(crate) const PURCHASE_COLS: &str = "account, purchase_id, amount_nanos, paid, created_at, \
     balance_after, limit_after, locked_after, expires_at, remaining_nanos";

/// What was taken back of a purchase (read after [`PURCHASE_COLS`]; a new purchase has
/// nothing taken unless the batch that made it took it, so inserts name them only then).
pub(crate) const TAKEN_COLS: &str = "refunded_nanos, disputed_nanos";

/// A `purchases` row: the purchase's answer, what is left of it as a credit lot, and what
/// was taken back of it.
pub(crate) struct PurchaseCols {
    pub account: String,
    pub purchase_id: String,
    pub amount: i64,
    pub paid: bool,
    pub created_at: i64,
    pub balance_after: i64,
    pub limit_after: i64,
    pub locked_after: bool,
    pub expires_at: Option<i64>,
    pub remaining: i64,
    pub refunded: i64,
    pub disputed: i64,
}

impl PurchaseCols {
    /// A row of `SELECT {PURCHASE_COLS}, {TAKEN_COLS}`.
    pub fn read(r: &dyn Get) -> Result<PurchaseCols> {
        Ok(PurchaseCols {
            account: r.text(0)?,
            purchase_id: r.text(1)?,
            amount: r.int(2)?,
            paid: r.bool(3)?,
            created_at: r.int(4)?,
            balance_after: r.int(5)?,
            limit_after: r.int(6)?,
            locked_after: r.bool(7)?,
            expires_at: r.opt_int(8)?,
            remaining: r.int(9)?,
            refunded: r.int(10)?,
            disputed: r.int(11)?,
        })
    }

    /// A purchase, with `remaining` of it left.
    pub fn of(p: &PurchaseRecord, remaining: Nanos) -> PurchaseCols {
        PurchaseCols {
            account: p.account.as_str().to_string(),
            purchase_id: p.purchase_id.as_str().to_string(),
            amount: p.amount.0,
            paid: p.paid,
            created_at: p.created_at.0,
            balance_after: p.balance_after.0,
            limit_after: i64::from(p.concurrency_limit_after),
            locked_after: p.locked_after,
            expires_at: p.expires_at.map(|t| t.0),
            remaining: remaining.0,
            refunded: p.refunded.0,
            disputed: p.disputed.0,
        }
    }

    pub fn into_record(self) -> Result<PurchaseRecord> {
        Ok(PurchaseRecord {
            account: parse_id(AccountId::parse, &self.account)?,
            purchase_id: parse_id(PurchaseId::parse, &self.purchase_id)?,
            amount: Nanos(self.amount),
            paid: self.paid,
            created_at: Timestamp(self.created_at),
            expires_at: self.expires_at.map(Timestamp),
            balance_after: Nanos(self.balance_after),
            concurrency_limit_after: small("limit_after", self.limit_after)?,
            locked_after: self.locked_after,
            refunded: Nanos(self.refunded),
            disputed: Nanos(self.disputed),
        })
    }
}

pub(crate) const TRANSFER_COLS: &str =
    "kind, debit, credit, amount_nanos, request_id, purchase_id, at";

/// A `transfers` row.
pub(crate) struct TransferCols {
    pub kind: &'static str,
    pub debit: String,
    pub credit: String,
    pub amount: i64,
    pub request_id: Option<String>,
    pub purchase_id: Option<String>,
    pub at: i64,
}

impl TransferCols {
    pub fn of(t: &TransferRecord) -> TransferCols {
        TransferCols {
            kind: t.transfer.kind.as_str(),
            debit: t.transfer.debit.code(),
            credit: t.transfer.credit.code(),
            amount: t.transfer.amount.0,
            request_id: t.request_id.as_ref().map(|r| r.as_str().to_string()),
            purchase_id: t.purchase_id.as_ref().map(|p| p.as_str().to_string()),
            at: t.at.0,
        }
    }
}

/// A `purchases` row as a credit lot.
pub(crate) fn lot(
    purchase_id: &str,
    remaining: i64,
    expires_at: Option<i64>,
    created_at: i64,
    expiry_noticed: bool,
) -> Result<Lot> {
    Ok(Lot {
        purchase_id: parse_id(PurchaseId::parse, purchase_id)?,
        remaining: Nanos(remaining),
        expires_at: expires_at.map(Timestamp),
        created_at: Timestamp(created_at),
        expiry_noticed,
    })
}

pub(crate) const REQUEST_COLS: &str = "request_id, source, account, endpoint_id, api_key, \
     price_version, status, submitted_at, started_at, finished_at, hold_nanos, hold_expires_at, \
     machine_type, num_gpus, queue_ms, inference_ms, completion";

/// A `requests` row.
pub(crate) struct RequestCols {
    pub request_id: String,
    pub source: String,
    pub account: String,
    pub endpoint_id: String,
    pub api_key: Option<String>,
    pub price_version: i64,
    pub status: String,
    pub submitted_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub hold: i64,
    pub hold_expires_at: Option<i64>,
    pub machine_type: Option<String>,
    pub num_gpus: i64,
    pub queue_ms: Option<i64>,
    pub inference_ms: Option<i64>,
    pub completion: Option<String>,
}

impl RequestCols {
    /// A row of `SELECT {REQUEST_COLS}`.
    pub fn read(r: &dyn Get) -> Result<RequestCols> {
        Ok(RequestCols {
            request_id: r.text(0)?,
            source: r.text(1)?,
            account: r.text(2)?,
            endpoint_id: r.text(3)?,
            api_key: r.opt_text(4)?,
            price_version: r.int(5)?,
            status: r.text(6)?,
            submitted_at: r.int(7)?,
            started_at: r.opt_int(8)?,
            finished_at: r.opt_int(9)?,
            hold: r.int(10)?,
            hold_expires_at: r.opt_int(11)?,
            machine_type: r.opt_text(12)?,
            num_gpus: r.int(13)?,
            queue_ms: r.opt_int(14)?,
            inference_ms: r.opt_int(15)?,
            completion: r.opt_text(16)?,
        })
    }

    pub fn of(r: &RequestRecord) -> RequestCols {
        RequestCols {
            request_id: r.id.as_str().to_string(),
            source: match r.source {
                Source::Lifecycle => "lifecycle",
                Source::Event => "event",
                Source::Gateway => "gateway",
            }
            .to_string(),
            account: r.account.as_str().to_string(),
            endpoint_id: r.endpoint.as_str().to_string(),
            api_key: r.api_key.as_ref().map(|k| k.as_str().to_string()),
            price_version: r.price_version,
            status: r.status.as_str().to_string(),
            submitted_at: r.submitted_at.0,
            started_at: r.started_at.map(|t| t.0),
            finished_at: r.finished_at.map(|t| t.0),
            hold: r.hold.0,
            hold_expires_at: r.hold_expires_at.map(|t| t.0),
            machine_type: r.machine_type.as_ref().map(|m| m.as_str().to_string()),
            num_gpus: i64::from(r.num_gpus),
            queue_ms: r.queue_ms,
            inference_ms: r.inference_ms,
            completion: r.completion.as_ref().map(crate::to_json),
        }
    }

    pub fn into_record(self) -> Result<RequestRecord> {
        Ok(RequestRecord {
            id: parse_id(RequestId::parse, &self.request_id)?,
            source: match self.source.as_str() {
                "event" => Source::Event,
                "gateway" => Source::Gateway,
                _ => Source::Lifecycle,
            },
            account: parse_id(AccountId::parse, &self.account)?,
            endpoint: parse_id(EndpointId::parse, &self.endpoint_id)?,
            api_key: self
                .api_key
                .map(|k| parse_id(ApiKeyId::parse, &k))
                .transpose()?,
            price_version: self.price_version,
            status: RequestStatus::parse(&self.status)
                .ok_or_else(|| corrupt("status", &self.status))?,
            submitted_at: Timestamp(self.submitted_at),
            started_at: self.started_at.map(Timestamp),
            finished_at: self.finished_at.map(Timestamp),
            hold: Nanos(self.hold),
            hold_expires_at: self.hold_expires_at.map(Timestamp),
            machine_type: self
                .machine_type
                .map(|m| parse_id(MachineType::parse, &m))
                .transpose()?,
            num_gpus: small("num_gpus", self.num_gpus)?,
            queue_ms: self.queue_ms,
            inference_ms: self.inference_ms,
            completion: self
                .completion
                .map(|c| json("completion", &c))
                .transpose()?,
        })
    }
}

pub(crate) const KEY_COLS: &str =
    "key_id, account, scope, alias, secret_sha256, created_at, revoked_at";

/// An `api_keys` row.
pub(crate) struct KeyCols {
    pub key_id: String,
    pub account: Option<String>,
    pub scope: String,
    pub alias: String,
    pub secret_sha256: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

impl KeyCols {
    /// A row of `SELECT {KEY_COLS}`.
    pub fn read(r: &dyn Get) -> Result<KeyCols> {
        Ok(KeyCols {
            key_id: r.text(0)?,
            account: r.opt_text(1)?,
            scope: r.text(2)?,
            alias: r.text(3)?,
            secret_sha256: r.text(4)?,
            created_at: r.int(5)?,
            revoked_at: r.opt_int(6)?,
        })
    }

    pub fn into_record(self) -> Result<ApiKeyRecord> {
        Ok(ApiKeyRecord {
            key_id: parse_id(ApiKeyId::parse, &self.key_id)?,
            account: self
                .account
                .map(|a| parse_id(AccountId::parse, &a))
                .transpose()?,
            scope: Scope::parse(&self.scope).ok_or_else(|| corrupt("scope", &self.scope))?,
            alias: self.alias,
            secret_sha256: self.secret_sha256,
            created_at: Timestamp(self.created_at),
            revoked_at: self.revoked_at.map(Timestamp),
        })
    }
}

pub(crate) const WEB_SESSION_COLS: &str =
    "id_sha256, account, key_id, csrf, created_at, expires_at, ended_at";

/// A row of `SELECT {WEB_SESSION_COLS}`.
pub(crate) fn web_session_row(r: &dyn Get) -> Result<WebSession> {
    Ok(WebSession {
        id_sha256: r.text(0)?,
        account: r
            .opt_text(1)?
            .map(|a| parse_id(AccountId::parse, &a))
            .transpose()?,
        key_id: r
            .opt_text(2)?
            .map(|k| parse_id(ApiKeyId::parse, &k))
            .transpose()?,
        csrf: r.text(3)?,
        created_at: Timestamp(r.int(4)?),
        expires_at: Timestamp(r.int(5)?),
        ended_at: r.opt_int(6)?.map(Timestamp),
    })
}

pub(crate) const LINE_ITEM_COLS: &str = "request_id, account, endpoint_id, api_key, \
    price_version, unit, quantity, unit_price, percent_discount, subtotal_nanos, \
    discount_nanos, total_nanos, status_code, billed_at, queue_ms, inference_ms";

/// A `line_items` row.
pub(crate) struct LineItemCols {
    pub request_id: String,
    pub account: String,
    pub endpoint_id: String,
    pub api_key: Option<String>,
    pub price_version: i64,
    pub unit: String,
    pub quantity: String,
    pub unit_price: String,
    pub percent_discount: Option<String>,
    pub subtotal: i64,
    pub discount: i64,
    pub total: i64,
    pub status_code: i64,
    pub billed_at: i64,
    pub queue_ms: Option<i64>,
    pub inference_ms: Option<i64>,
}

impl LineItemCols {
    /// A row of `SELECT {LINE_ITEM_COLS}`.
    pub fn read(r: &dyn Get) -> Result<LineItemCols> {
        Ok(LineItemCols {
            request_id: r.text(0)?,
            account: r.text(1)?,
            endpoint_id: r.text(2)?,
            api_key: r.opt_text(3)?,
            price_version: r.int(4)?,
            unit: r.text(5)?,
            quantity: r.text(6)?,
            unit_price: r.text(7)?,
            percent_discount: r.opt_text(8)?,
            subtotal: r.int(9)?,
            discount: r.int(10)?,
            total: r.int(11)?,
            status_code: r.int(12)?,
            billed_at: r.int(13)?,
            queue_ms: r.opt_int(14)?,
            inference_ms: r.opt_int(15)?,
        })
    }

    pub fn of(l: &LineItem) -> LineItemCols {
        LineItemCols {
            request_id: l.request_id.as_str().to_string(),
            account: l.account.as_str().to_string(),
            endpoint_id: l.endpoint.as_str().to_string(),
            api_key: l.api_key.as_ref().map(|k| k.as_str().to_string()),
            price_version: l.price_version,
            unit: l.unit.clone(),
            quantity: l.charge.quantity.to_string(),
            unit_price: l.charge.unit_price.to_string(),
            percent_discount: l.charge.percent_discount.map(|p| p.to_string()),
            subtotal: l.charge.subtotal_nanos.0,
            discount: l.charge.discount_nanos.0,
            total: l.charge.total_nanos.0,
            status_code: i64::from(l.status_code),
            billed_at: l.billed_at.0,
            queue_ms: l.queue_ms,
            inference_ms: l.inference_ms,
        }
    }

    pub fn into_item(self) -> Result<LineItem> {
        Ok(LineItem {
            request_id: parse_id(RequestId::parse, &self.request_id)?,
            account: parse_id(AccountId::parse, &self.account)?,
            endpoint: parse_id(EndpointId::parse, &self.endpoint_id)?,
            api_key: self
                .api_key
                .map(|k| parse_id(ApiKeyId::parse, &k))
                .transpose()?,
            price_version: self.price_version,
            unit: self.unit,
            charge: Charge {
                quantity: decimal("quantity", &self.quantity)?,
                unit_price: decimal("unit_price", &self.unit_price)?,
                percent_discount: self
                    .percent_discount
                    .map(|p| decimal("percent_discount", &p))
                    .transpose()?,
                subtotal_nanos: Nanos(self.subtotal),
                discount_nanos: Nanos(self.discount),
                total_nanos: Nanos(self.total),
                // Not stored per line item: only the rollups written with it need it.
                blended: false,
            },
            status_code: u16::try_from(self.status_code).map_err(|e| corrupt("status", e))?,
            billed_at: Timestamp(self.billed_at),
            queue_ms: self.queue_ms,
            inference_ms: self.inference_ms,
        })
    }
}

pub(crate) const PRICE_VERSION_SQL: &str =
    "SELECT id, endpoint_id, account, effective_from, rule FROM price_versions ORDER BY id";

pub(crate) fn price_version(
    id: i64,
    endpoint: &str,
    account: Option<&str>,
    effective_from: i64,
    rule: &str,
) -> Result<PriceVersion> {
    Ok(PriceVersion {
        id,
        endpoint: parse_id(EndpointId::parse, endpoint)?,
        account: account.map(|a| parse_id(AccountId::parse, a)).transpose()?,
        effective_from: Timestamp(effective_from),
        rule: json::<PriceRule>("price rule", rule)?,
    })
}

/// The stored text of the catalog's machine prices (read back by [`catalog`]).
pub(crate) fn machine_prices_text(machines: &MachinePrices) -> String {
    to_json(machines)
}

/// The stored text of the catalog's concurrency tier table (read back by [`catalog`]).
pub(crate) fn concurrency_table_text(table: &ConcurrencyTable) -> String {
    to_json(table)
}

/// The catalog from its rows: endpoint definitions (JSON), price versions and settings.
pub(crate) fn catalog(
    defs: Vec<String>,
    versions: Vec<PriceVersion>,
    settings: &HashMap<String, String>,
) -> Result<Catalog> {
    let mut catalog = Catalog::default();
    for def in defs {
        let def: EndpointDef = json("endpoint", &def)?;
        catalog.endpoints.insert(def.id.clone(), def);
    }
    for v in versions {
        catalog.insert_version(v);
    }
    if let Some(m) = settings.get(SETTING_MACHINES) {
        catalog.machines = json::<MachinePrices>("machines", m)?;
    }
    if let Some(m) = settings.get(SETTING_MACHINES_SURGE) {
        catalog.machines_surge = json::<MachinePrices>("machines_surge", m)?;
    }
    if let Some(c) = settings.get(SETTING_CONCURRENCY) {
        catalog.concurrency = json::<ConcurrencyTable>("concurrency", c)?;
    }
    Ok(catalog)
}

/// A value of a reconciliation query's row.
pub(crate) enum Cell {
    Int(i64),
    Text(String),
}

impl Cell {
    fn int(&self) -> Result<i64> {
        match self {
            Cell::Int(v) => Ok(*v),
            Cell::Text(s) => Err(corrupt("reconciliation", format!("{s:?} is not a number"))),
        }
    }
    fn text(&self) -> Result<&str> {
        match self {
            Cell::Text(s) => Ok(s),
            Cell::Int(v) => Err(corrupt("reconciliation", format!("{v} is not text"))),
        }
    }
}

/// Runs one reconciliation query (in one consistent snapshot) and returns its rows.
pub(crate) type Query<'a> = dyn FnMut(&str) -> Result<Vec<Vec<Cell>>> + 'a;

/// The transfer kinds that move posted money.
const POSTED: &str = "('purchase', 'grant', 'post', 'charge', 'credit_expiry', 'adjustment', \
     'refund', 'dispute', 'dispute_reversal')";

/// Checks the ledger end to end with portable SQL (SQLite and PostgreSQL): every balance,
/// hold, in-progress count and credit lot against the rows they summarise, every line item
/// against its request's charges, and every usage rollup against the line items.
pub(crate) fn reconcile(q: &mut Query) -> Result<Reconciliation> {
    let mut rec = totals(q)?;
    account_mismatches(q, &mut rec)?;
    line_item_mismatches(q, &mut rec)?;
    rollup_mismatches(q, &mut rec)?;
    invoice_mismatches(q, &mut rec)?;
    payment_mismatches(q, &mut rec)?;
    runner_mismatches(q, &mut rec)?;
    Ok(rec)
}

/// Runners whose billed amount is not the total of their line items (those of their line's
/// key, request id `runner:<runner_id>`), and runner line items of no runner. A full pass over
/// the serverless line items.
fn runner_mismatches(q: &mut Query, rec: &mut Reconciliation) -> Result<()> {
    let serverless = service_filter("endpoint_id", Some(Service::Serverless));
    for row in q(&format!(
        "WITH billed AS (SELECT request_id, CAST(SUM(total_nanos) AS BIGINT) AS total \
           FROM line_items WHERE 1 = 1{serverless} GROUP BY request_id) \
         SELECT r.runner_id FROM runners r LEFT JOIN billed b \
           ON b.request_id = 'runner:' || r.runner_id \
           WHERE COALESCE(b.total, 0) <> r.billed_nanos \
         UNION \
         SELECT substr(b.request_id, 8) FROM billed b LEFT JOIN runners r \
           ON 'runner:' || r.runner_id = b.request_id WHERE r.runner_id IS NULL \
         ORDER BY 1"
    ))? {
        rec.runner_mismatches
            .push(parse_id(RunnerId::parse, row[0].text()?)?);
    }
    Ok(())
}

/// Purchases whose refunded and disputed amounts are not what the transfers naming them took
/// back: refunds, and disputes less the reversals of those won (and transfers naming a
/// purchase that does not exist). A full pass over the purchases, as the lots' check is.
fn payment_mismatches(q: &mut Query, rec: &mut Reconciliation) -> Result<()> {
    for row in q(
        "WITH moved AS (SELECT substr(CASE WHEN kind = 'dispute_reversal' THEN credit \
             ELSE debit END, 10) AS account, purchase_id, \
           CAST(SUM(CASE WHEN kind = 'refund' THEN amount_nanos ELSE 0 END) AS BIGINT) \
             AS refunded, \
           CAST(SUM(CASE WHEN kind = 'dispute' THEN amount_nanos \
             WHEN kind = 'dispute_reversal' THEN -amount_nanos ELSE 0 END) AS BIGINT) \
             AS disputed \
           FROM transfers WHERE kind IN ('refund', 'dispute', 'dispute_reversal') \
           GROUP BY 1, purchase_id) \
         SELECT p.account, p.purchase_id FROM purchases p LEFT JOIN moved m \
           ON m.account = p.account AND m.purchase_id = p.purchase_id \
           WHERE COALESCE(m.refunded, 0) <> p.refunded_nanos \
           OR COALESCE(m.disputed, 0) <> p.disputed_nanos \
         UNION \
         SELECT m.account, m.purchase_id FROM moved m LEFT JOIN purchases p \
           ON p.account = m.account AND p.purchase_id = m.purchase_id \
           WHERE p.purchase_id IS NULL AND m.purchase_id IS NOT NULL \
         ORDER BY 1, 2",
    )? {
        rec.payment_mismatches.push((
            parse_id(AccountId::parse, row[0].text()?)?,
            parse_id(PurchaseId::parse, row[1].text()?)?,
        ));
    }
    Ok(())
}

/// Usage invoices whose lines do not add up to their subtotal, discount and total (an issued
/// invoice's amounts are its lines', summed as the period's charges were).
fn invoice_mismatches(q: &mut Query, rec: &mut Reconciliation) -> Result<()> {
    for row in q(
        "SELECT i.year, i.seq FROM invoices i LEFT JOIN (SELECT year, seq, \
           CAST(SUM(subtotal_nanos) AS BIGINT) AS s, CAST(SUM(discount_nanos) AS BIGINT) AS d, \
           CAST(SUM(total_nanos) AS BIGINT) AS t FROM invoice_lines GROUP BY year, seq) l \
           ON l.year = i.year AND l.seq = i.seq \
         WHERE i.kind = 'usage' AND (COALESCE(l.s, 0) != i.subtotal_nanos \
           OR COALESCE(l.d, 0) != i.discount_nanos OR COALESCE(l.t, 0) != i.total_nanos) \
         ORDER BY i.year, i.seq",
    )? {
        rec.invoice_mismatches.push((row[0].int()?, row[1].int()?));
    }
    Ok(())
}

/// The ledger's totals: revenue, billed, purchased, credited and expired.
fn totals(q: &mut Query) -> Result<Reconciliation> {
    let mut one = |sql: &str| -> Result<i128> {
        let rows = q(sql)?;
        Ok(rows
            .first()
            .and_then(|r| r.first())
            .map_or(Ok(0), Cell::int)? as i128)
    };
    Ok(Reconciliation {
        revenue_nanos: one(
            "SELECT CAST(COALESCE(SUM(amount_nanos), 0) AS BIGINT) FROM transfers \
             WHERE kind IN ('post', 'charge')",
        )?,
        billed_nanos: one("SELECT CAST(COALESCE(SUM(total_nanos), 0) AS BIGINT) FROM line_items")?,
        purchased_nanos: one(
            "SELECT CAST(COALESCE(SUM(amount_nanos), 0) AS BIGINT) FROM purchases",
        )?,
        credited_nanos: one(
            "SELECT CAST(COALESCE(SUM(amount_nanos), 0) AS BIGINT) FROM transfers \
             WHERE kind IN ('purchase', 'grant')",
        )?,
        expired_nanos: one(
            "SELECT CAST(COALESCE(SUM(amount_nanos), 0) AS BIGINT) FROM transfers \
             WHERE kind = 'credit_expiry'",
        )?,
        adjusted_nanos: one(
            "SELECT CAST(COALESCE(SUM(amount_nanos), 0) AS BIGINT) FROM adjustments",
        )?,
        adjusted_in_ledger_nanos: one(
            "SELECT CAST(COALESCE(SUM(CASE WHEN debit = 'system:adjustments' \
               THEN amount_nanos ELSE -amount_nanos END), 0) AS BIGINT) FROM transfers \
             WHERE kind = 'adjustment'",
        )?,
        ..Reconciliation::default()
    })
}

/// Accounts whose balance, held amount, lots or in-progress count differ from the rows they
/// summarise.
fn account_mismatches(q: &mut Query, rec: &mut Reconciliation) -> Result<()> {
    let mut by_name = |sql: &str, width: usize| -> Result<HashMap<String, Vec<i64>>> {
        let mut out = HashMap::new();
        for row in q(sql)? {
            let values = (1..=width)
                .map(|i| row.get(i).map_or(Ok(0), Cell::int))
                .collect::<Result<Vec<_>>>()?;
            out.insert(row[0].text()?.to_string(), values);
        }
        Ok(out)
    };
    // Balances as the ledger sees them: posted transfers summed per side, grouped once.
    let from_ledger = by_name(
        &format!(
            "SELECT code, CAST(SUM(amount) AS BIGINT) FROM ( \
               SELECT credit AS code, amount_nanos AS amount FROM transfers WHERE kind IN {POSTED} \
               UNION ALL \
               SELECT debit, -amount_nanos FROM transfers WHERE kind IN {POSTED}) t \
             GROUP BY code"
        ),
        1,
    )?;
    let lots = by_name(
        "SELECT account, CAST(SUM(remaining_nanos) AS BIGINT) FROM purchases GROUP BY account",
        1,
    )?;
    let open = by_name(
        "SELECT account, CAST(SUM(hold_nanos) AS BIGINT), COUNT(*) FROM requests \
         WHERE status = 'IN_PROGRESS' GROUP BY account",
        2,
    )?;
    let accounts = q(
        "SELECT username, balance_nanos, held_nanos, in_progress, adjusted_credit_nanos \
         FROM accounts ORDER BY username",
    )?;
    for row in accounts {
        let name = row[0].text()?;
        let id = parse_id(AccountId::parse, name)?;
        let (balance, held, in_progress) = (row[1].int()?, row[2].int()?, row[3].int()?);
        let adjusted_credit = row[4].int()?;
        let ledger = from_ledger
            .get(&format!("customer:{name}"))
            .map_or(0, |v| v[0]);
        let (open_holds, open_count) = open.get(name).map_or((0, 0), |v| (v[0], v[1]));
        if balance != ledger {
            rec.balance_mismatches
                .push((id.clone(), Nanos(balance), Nanos(ledger)));
        }
        if held != open_holds {
            rec.held_mismatches
                .push((id.clone(), Nanos(held), Nanos(open_holds)));
        }
        let left = lots.get(name).map_or(0, |v| v[0]) + adjusted_credit;
        if left != balance.max(0) {
            rec.lot_mismatches
                .push((id.clone(), Nanos(balance.max(0)), Nanos(left)));
        }
        if in_progress != open_count {
            rec.in_progress_mismatches.push((
                id,
                small("in_progress", in_progress)?,
                small("in_progress", open_count)?,
            ));
        }
    }
    Ok(())
}

/// Line items whose total differs from the posted charges of their request.
fn line_item_mismatches(q: &mut Query, rec: &mut Reconciliation) -> Result<()> {
    for row in q(
        "WITH charged AS (SELECT request_id, CAST(SUM(amount_nanos) AS BIGINT) AS amount \
             FROM transfers WHERE kind IN ('post', 'charge') AND request_id IS NOT NULL \
             GROUP BY request_id), \
           billed AS (SELECT request_id, CAST(SUM(total_nanos) AS BIGINT) AS amount \
             FROM line_items GROUP BY request_id) \
         SELECT b.request_id FROM billed b LEFT JOIN charged c USING (request_id) \
           WHERE b.amount != COALESCE(c.amount, 0) \
         UNION \
         SELECT c.request_id FROM charged c LEFT JOIN billed b USING (request_id) \
           WHERE b.request_id IS NULL AND c.amount != 0",
    )? {
        rec.line_item_mismatches
            .push(parse_id(RequestId::parse, row[0].text()?)?);
    }
    Ok(())
}

/// Accounts whose usage rollups, per minute and per hour, do not add up to their line items.
fn rollup_mismatches(q: &mut Query, rec: &mut Reconciliation) -> Result<()> {
    // The hour rows, and the minutes not folded into them yet.
    let folded_before = format!(
        "COALESCE((SELECT CAST(value AS BIGINT) FROM settings WHERE key = '{}'), {})",
        crate::SETTING_FOLDED_BEFORE,
        crate::ALL_FOLDED.0
    );
    let hours = format!(
        "(SELECT account, total_nanos, requests FROM usage_hours \
         UNION ALL \
         SELECT account, total_nanos, requests FROM usage_minutes \
         WHERE slot >= {folded_before}) AS hours"
    );
    for table in ["usage_minutes", hours.as_str()] {
        for row in q(&format!(
            "WITH r AS (SELECT account, CAST(SUM(total_nanos) AS BIGINT) AS t, \
                          CAST(SUM(requests) AS BIGINT) AS n FROM {table} GROUP BY account), \
                  l AS (SELECT account, CAST(SUM(total_nanos) AS BIGINT) AS t, COUNT(*) AS n \
                        FROM line_items GROUP BY account) \
             SELECT l.account, COALESCE(r.t, 0), l.t FROM l LEFT JOIN r USING (account) \
               WHERE COALESCE(r.t, 0) != l.t OR COALESCE(r.n, 0) != l.n \
             UNION \
             SELECT r.account, r.t, 0 FROM r LEFT JOIN l USING (account) WHERE l.account IS NULL"
        ))? {
            rec.rollup_mismatches.push((
                parse_id(AccountId::parse, row[0].text()?)?,
                Nanos(row[1].int()?),
                Nanos(row[2].int()?),
            ));
        }
    }
    Ok(())
}

/// Whether changing an invoice that is not open (it is `status`, with the reference or reason
/// `was`) to `to` with `reference` is refused: `None` when it is that same change made before
/// (a repeat, answered as done; nothing is written), else the status that refuses it.
pub(crate) fn status_change_refused(
    status: &str,
    was: Option<&str>,
    to: InvoiceStatus,
    reference: &str,
) -> Result<Option<InvoiceStatus>> {
    let is = InvoiceStatus::parse(status).ok_or_else(|| corrupt("invoice status", status))?;
    Ok((is != to || was != Some(reference)).then_some(is))
}

pub(crate) const RUNNER_COLS: &str = "runner_id, account, app, environment, machine_type, \
     num_gpus, is_surge, state, state_at, last_at, settled_until, cap_at, first_at, \
     seg_unit_price, seg_percent_discount, seg_quantity, seg_subtotal_nanos, seg_total_nanos, \
     billed_nanos";

/// A `runners` row: the runner's fixed fields, its timeline, and its current price segment
/// (the `seg_*` columns, all `None` before its first billed second).
pub(crate) struct RunnerCols {
    pub runner_id: String,
    pub account: String,
    pub app: String,
    pub environment: Option<String>,
    pub machine_type: String,
    pub num_gpus: i64,
    pub is_surge: bool,
    pub state: &'static str,
    pub state_at: i64,
    pub last_at: i64,
    pub settled_until: i64,
    pub cap_at: i64,
    pub first_at: i64,
    pub seg_unit_price: Option<String>,
    pub seg_percent_discount: Option<String>,
    pub seg_quantity: Option<String>,
    pub seg_subtotal: Option<i64>,
    pub seg_total: Option<i64>,
    pub billed: i64,
}

impl RunnerCols {
    pub fn of(r: &RunnerRecord) -> RunnerCols {
        let seg = r.segment.as_ref();
        RunnerCols {
            runner_id: r.id.as_str().to_string(),
            account: r.account.as_str().to_string(),
            app: r.app.as_str().to_string(),
            environment: r.environment.as_ref().map(|e| e.as_str().to_string()),
            machine_type: r.machine_type.as_str().to_string(),
            num_gpus: i64::from(r.num_gpus),
            is_surge: r.is_surge,
            state: r.state.as_str(),
            state_at: r.state_at.0,
            last_at: r.last_at.0,
            settled_until: r.settled_until.0,
            cap_at: r.cap_at.0,
            first_at: r.first_at.0,
            seg_unit_price: seg.map(|s| s.unit_price.to_string()),
            seg_percent_discount: seg.and_then(|s| s.percent_discount.map(|p| p.to_string())),
            seg_quantity: seg.map(|s| s.quantity.to_string()),
            seg_subtotal: seg.map(|s| s.subtotal.0),
            seg_total: seg.map(|s| s.total.0),
            billed: r.billed.0,
        }
    }
}

/// A row of `SELECT {RUNNER_COLS}`.
pub(crate) fn runner_row(r: &dyn Get) -> Result<RunnerRecord> {
    let state = r.text(7)?;
    let segment = match (
        r.opt_text(13)?,
        r.opt_text(15)?,
        r.opt_int(16)?,
        r.opt_int(17)?,
    ) {
        (None, None, None, None) => None,
        (Some(price), Some(quantity), Some(subtotal), Some(total)) => Some(Segment {
            unit_price: decimal("runner segment unit price", &price)?,
            percent_discount: r
                .opt_text(14)?
                .map(|p| decimal("runner segment percent discount", &p))
                .transpose()?,
            quantity: decimal("runner segment quantity", &quantity)?,
            subtotal: Nanos(subtotal),
            total: Nanos(total),
        }),
        _ => return Err(corrupt("runner segment", "some of its columns are missing")),
    };
    Ok(RunnerRecord {
        id: parse_id(RunnerId::parse, &r.text(0)?)?,
        account: parse_id(AccountId::parse, &r.text(1)?)?,
        app: parse_id(AppName::parse, &r.text(2)?)?,
        environment: r
            .opt_text(3)?
            .map(|e| parse_id(EnvironmentName::parse, &e))
            .transpose()?,
        machine_type: parse_id(MachineType::parse, &r.text(4)?)?,
        num_gpus: small("num_gpus", r.int(5)?)?,
        is_surge: r.bool(6)?,
        state: RunnerState::parse(&state).ok_or_else(|| corrupt("runner state", &state))?,
        state_at: Timestamp(r.int(8)?),
        last_at: Timestamp(r.int(9)?),
        settled_until: Timestamp(r.int(10)?),
        cap_at: Timestamp(r.int(11)?),
        first_at: Timestamp(r.int(12)?),
        segment,
        billed: Nanos(r.int(18)?),
    })
}

pub(crate) const RUNNER_EVENT_COLS: &str = "event_id, runner_id, account, state, at, received_at";

/// A row of `SELECT {RUNNER_EVENT_COLS}`.
pub(crate) fn runner_event_row(r: &dyn Get) -> Result<RunnerEventRecord> {
    let state = r.text(3)?;
    Ok(RunnerEventRecord {
        event_id: parse_id(RunnerEventId::parse, &r.text(0)?)?,
        runner: parse_id(RunnerId::parse, &r.text(1)?)?,
        account: parse_id(AccountId::parse, &r.text(2)?)?,
        state: RunnerState::parse(&state).ok_or_else(|| corrupt("runner event state", &state))?,
        at: Timestamp(r.int(4)?),
        received_at: Timestamp(r.int(5)?),
    })
}

/// A batch's runner-state history deltas summed per `runner_minutes` row (account, app, slot):
/// a row takes one upsert.
pub(crate) fn runner_minute_rows(
    s: &BatchState,
) -> Result<std::collections::BTreeMap<(String, String, i64), RunnerMinuteTotals>> {
    let mut out: std::collections::BTreeMap<(String, String, i64), RunnerMinuteTotals> =
        std::collections::BTreeMap::new();
    for m in &s.runner_minutes {
        let row = out
            .entry((
                m.account.as_str().to_string(),
                m.app.as_str().to_string(),
                m.slot.0,
            ))
            .or_default();
        let column = match m.state {
            HistoryState::Running => &mut row.running_ms,
            HistoryState::Idle => &mut row.idle_ms,
            HistoryState::Pending => &mut row.pending_ms,
            HistoryState::Draining => &mut row.draining_ms,
        };
        *column = column
            .checked_add(m.ms)
            .ok_or_else(|| corrupt("runner minutes", "their sum overflows"))?;
    }
    Ok(out)
}

/// The condition (`AND ...`, or nothing for both) that keeps a read's rows to one service:
/// model endpoints, or serverless lines (endpoints under [`ENDPOINT_PREFIX`]). A range of the
/// endpoint column, compared bytewise as both stores compare identifiers: the keys under the
/// prefix are those from the prefix up to the prefix with its last byte incremented.
pub(crate) fn service_filter(column: &str, service: Option<Service>) -> String {
    let (low, high) = service_range();
    match service {
        None => String::new(),
        Some(Service::Serverless) => format!(" AND {column} >= '{low}' AND {column} < '{high}'"),
        Some(Service::Models) => format!(" AND ({column} < '{low}' OR {column} >= '{high}')"),
    }
}

/// `[low, high)`: the endpoint keys of serverless lines (see [`service_filter`]).
fn service_range() -> (&'static str, String) {
    let low = ENDPOINT_PREFIX;
    let (last, head) = low
        .as_bytes()
        .split_last()
        .expect("the serverless prefix is not empty");
    let high = format!("{}{}", &low[..head.len()], char::from(last + 1));
    (low, high)
}

/// The earliest `last_at` of a runner alive at `now`: its cap is at most the longest grace
/// after its last report, so older reports name no live runner (the bound that keeps a read of
/// an account's live runners to its recent range of `runners_by_account`).
/// The conflict of a batch that would write runner `id` over another account's row of the
/// same id (created by another process since the batch read it): run again, the batch
/// finds the runner and refuses the event that names another account.
pub(crate) fn runner_of_another_account(id: &tollgate_core::ids::RunnerId) -> crate::StoreError {
    crate::StoreError::Conflict(crate::DbError::msg(format!(
        "runner {id} was created for another account meanwhile"
    )))
}

pub(crate) fn live_since(now: Timestamp) -> i64 {
    now.0
        .saturating_sub(tollgate_core::serverless::MAX_GRACE_MS)
}

/// The runner-state history read (`Reader::runner_history`): `p(i, type)` spells the i-th
/// parameter (SQLite `?i`, PostgreSQL `$i::type`): account, app, from, to. One app's range of
/// `runner_minutes`, in slot order.
pub(crate) fn runner_history_sql(p: impl Fn(usize, &str) -> String) -> String {
    format!(
        "SELECT slot, running_ms, idle_ms, pending_ms, draining_ms FROM runner_minutes \
         WHERE account = {a} AND app = {app} AND slot >= {from} AND slot < {to} ORDER BY slot",
        a = p(1, "text"),
        app = p(2, "text"),
        from = p(3, "bigint"),
        to = p(4, "bigint"),
    )
}

/// A row of [`runner_history_sql`].
pub(crate) fn runner_minute_row(r: &dyn Get) -> Result<(Timestamp, RunnerMinuteTotals)> {
    Ok((
        Timestamp(r.int(0)?),
        RunnerMinuteTotals {
            running_ms: r.int(1)?,
            idle_ms: r.int(2)?,
            pending_ms: r.int(3)?,
            draining_ms: r.int(4)?,
        },
    ))
}

/// An account's runners, the latest reported first (`Reader::runners`), with the parameters
/// account and limit: a range of `runners_by_account`, read backwards.
pub(crate) fn runners_sql(p: impl Fn(usize, &str) -> String) -> String {
    format!(
        "SELECT {RUNNER_COLS} FROM runners WHERE account = {a} \
         ORDER BY last_at DESC, runner_id DESC LIMIT {l}",
        a = p(1, "text"),
        l = p(2, "bigint"),
    )
}
