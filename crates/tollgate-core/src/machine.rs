//! The request state machine: one operation at a time against a batch's state.
//!
//! The engine loads into a [`BatchState`] the rows that a batch of operations touches
//! (accounts, requests, purchases), then calls [`apply`] for each operation in arrival order.
//! `apply` either rejects an operation, changing nothing, or mutates the state and records the
//! effects (transfers, line items, new purchases, dirty rows) that the store then writes in the
//! same db transaction. Every operation is idempotent on its client id: a repeat returns the
//! first answer and records nothing.
//!
//! Request lifecycle: `IN_QUEUE` (submitted; queue time is never billed) → `IN_PROGRESS`
//! (started: a concurrency slot is taken and the estimated cost held) → `COMPLETED` / `FAILED`
//! (settled with the actual cost; a 5xx voids the hold) or `CANCELLED` or `EXPIRED` (hold voided,
//! nothing billed).

use crate::catalog::{Catalog, EndpointDef, LateCompletion, MissingUnits, PriceVersion};
use crate::events::{EventData, NewEvent};
use crate::ids::{
    AccountId, AdjustmentId, ApiKeyId, EndpointId, LimitId, MachineType, PurchaseId, RequestId,
};
use crate::ledger::{CreditAccount, HoldError, Transfer, TransferKind};
use crate::limits::{self, LimitState, Period};
use crate::money::{MoneyError, Nanos};
use crate::payments::{
    AutoTopUpRule, DisputeRecord, PaymentEffect, PaymentProfile, ProviderEvent, ProviderRefund,
    RefundRecord, TopUpRecord, TopUpSettings,
};
use crate::policy::{billing_for, BadStatus, Billing, FourXxPolicy};
use crate::price::{Output, OutputMismatch, PriceRule, RateError, Rated, Unit, Usage};
use crate::pricing::{Charge, Discounts};
use crate::terms::{BillingMode, Terms, TermsSchedule};
use crate::time::Timestamp;
use crate::time::{month_start, next_month_start};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};

/// Paid credits expire this long after purchase unless the purchase says otherwise (fal's
/// rule: 365 days).
pub const PAID_CREDITS_EXPIRE_MS: i64 = 365 * crate::time::MS_PER_DAY;

/// Events may be reported late, but not from the future beyond this clock skew.
pub const MAX_EVENT_SKEW_MS: i64 = 5 * 60 * 1000;

/// A customer account as the state machine sees it.
///
/// Its terms: `terms` holds their versions; `discounts`, `concurrency_override`,
/// `credit.lock_threshold` and `credit.floor` (the billing mode) are the version in force at
/// the batch's `now`
/// ([`AccountState::use_terms_at`], called by whoever loads the account). An account with no
/// version has only those (the defaults, or what a test set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountState {
    pub credit: CreditAccount,
    pub in_progress: u32,
    /// A contractual limit that replaces the tier table.
    pub concurrency_override: Option<u32>,
    /// Paid purchases within the trailing 28 days of the batch's `now` (loaded, then kept up
    /// to date by purchases in the batch).
    pub paid_28d: Nanos,
    pub paid_lifetime: Nanos,
    pub discounts: Discounts,
    /// The calendar month (UTC, `yyyymm`) that `month_subtotal` counts, for volume tiers.
    pub month: i32,
    pub month_subtotal: Nanos,
    /// Credit lots with something left when loaded (a lot spent within the batch stays, at
    /// zero, so that the store writes it), in spending order: earliest expiry first, lots that
    /// never expire last, then by creation time and purchase id (a total order, so memory and
    /// database agree). Invariant: their `remaining`, with `adjusted_credit`, sums to
    /// `max(balance, 0)`.
    pub lots: Vec<Lot>,
    /// What is left of the credit that operator adjustments added: it never expires, and is
    /// spent after every lot.
    pub adjusted_credit: Nanos,
    /// The versions of the account's terms.
    pub terms: TermsSchedule,
    /// Set while a payment dispute locks the account (since when); lifted by the dispute's
    /// resolution or by an operator, never by credits.
    pub disputed_since: Option<Timestamp>,
    /// The open usage billing period: the charges recorded while the account was
    /// invoice-billed since its previous usage invoice.
    pub period: OpenPeriod,
    /// The account's spending limits (its own and its keys'), with their periods' spend, in
    /// creation order (see [`crate::limits`]).
    pub limits: Vec<LimitState>,
    /// The payment provider's side of the account: its customer, the saved payment method, the
    /// auto top-up rule, the dispute locks (see [`crate::payments`]).
    pub payment: PaymentProfile,
}

/// An account's open usage billing period (invoice billing). Every charge it counts was
/// recorded at or after `start` and in `start`'s calendar month (UTC): the first batch that
/// touches the account in a later month closes it ([`close_elapsed_periods`]), and a charge
/// recorded into an empty period that began in an earlier month moves `start` to its own
/// month's start. (Runner time of the month before now's, settled just before that month's
/// periods are closed, is the one charge recorded later: it accrues as of its own month.)
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenPeriod {
    pub start: Timestamp,
    /// Charges (billed line items) recorded in the period.
    pub charges: u64,
    pub subtotal: Nanos,
    pub discount: Nanos,
    pub total: Nanos,
    /// When the last of them was recorded (the batch's `now`).
    pub last_charge_at: Timestamp,
}

impl OpenPeriod {
    /// Whether the period has charges and began in an earlier calendar month than `now`: it
    /// ended at its month's end.
    pub fn elapsed(&self, now: Timestamp) -> bool {
        self.charges > 0 && self.start < month_start(now)
    }

    /// Adds a charge recorded at `now` as of `at` (`now`, or for runner time of an earlier
    /// month settled before its period closes, the time's own start): an empty period that
    /// began before `at`'s month starts there. Returns the period's start (the key its line
    /// is accrued under).
    fn add(
        &mut self,
        charge: &Charge,
        now: Timestamp,
        at: Timestamp,
    ) -> Result<Timestamp, MoneyError> {
        let mut next = self.clone();
        if next.charges == 0 && next.start < month_start(at) {
            next.start = month_start(at);
        }
        next.charges += 1;
        next.subtotal = next.subtotal.checked_add(charge.subtotal_nanos)?;
        next.discount = next.discount.checked_add(charge.discount_nanos)?;
        next.total = next.total.checked_add(charge.total_nanos)?;
        next.last_charge_at = next.last_charge_at.max(now);
        *self = next;
        Ok(self.start)
    }
}

/// Why an account refuses new requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum LockReason {
    /// The balance is at or below the lock threshold (prepaid): credits lift it.
    ExhaustedBalance,
    /// A payment was disputed: its resolution or an operator lifts it; credits do not.
    PaymentDisputed,
}

impl LockReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LockReason::ExhaustedBalance => "exhausted_balance",
            LockReason::PaymentDisputed => "payment_disputed",
        }
    }
}

/// What is left of one purchase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lot {
    pub purchase_id: PurchaseId,
    pub remaining: Nanos,
    pub expires_at: Option<Timestamp>,
    pub created_at: Timestamp,
    /// Whether `credits.expiring` was recorded for the lot (once, [`EXPIRY_NOTICE_MS`]
    /// ahead).
    pub expiry_noticed: bool,
}

/// How long before credits expire the platform is told (`credits.expiring`).
pub const EXPIRY_NOTICE_MS: i64 = 7 * crate::time::MS_PER_DAY;

impl Lot {
    fn spend_order(&self) -> (bool, Option<Timestamp>, Timestamp, &PurchaseId) {
        (
            self.expires_at.is_none(),
            self.expires_at,
            self.created_at,
            &self.purchase_id,
        )
    }
}

impl AccountState {
    pub fn new(credit: CreditAccount) -> Self {
        AccountState {
            credit,
            in_progress: 0,
            concurrency_override: None,
            paid_28d: Nanos::ZERO,
            paid_lifetime: Nanos::ZERO,
            discounts: Discounts::default(),
            month: 0,
            month_subtotal: Nanos::ZERO,
            lots: Vec::new(),
            adjusted_credit: Nanos::ZERO,
            terms: TermsSchedule::default(),
            disputed_since: None,
            period: OpenPeriod::default(),
            limits: Vec::new(),
            payment: PaymentProfile::default(),
        }
    }

    /// Why the account refuses new requests, if it does: a dispute first (only it needs an
    /// operator), then an exhausted balance.
    pub fn lock_reason(&self) -> Option<LockReason> {
        if self.disputed_since.is_some() {
            Some(LockReason::PaymentDisputed)
        } else if self.credit.is_locked() {
            Some(LockReason::ExhaustedBalance)
        } else {
            None
        }
    }

    pub fn is_locked(&self) -> bool {
        self.lock_reason().is_some()
    }

    /// The account's low-balance level (its terms in force at `now`) when its balance is below
    /// it: the state `balance.low` tells of when the balance crosses into it.
    pub fn balance_low(&self, now: Timestamp) -> Option<Nanos> {
        self.terms_at(now)
            .low_balance
            .filter(|low| self.credit.balance < *low)
    }

    /// Makes the terms in force at `now` the account's current ones (see [`AccountState`]).
    pub fn use_terms_at(&mut self, now: Timestamp) {
        if self.terms.is_empty() {
            return;
        }
        let t = self.terms.at(now);
        self.discounts = t.discounts.clone();
        self.concurrency_override = t.concurrency_override;
        self.credit.lock_threshold = t.lock_threshold;
        self.credit.floor = t.billing.floor();
    }

    /// How the account pays now (the terms [`AccountState::use_terms_at`] made current).
    pub fn billing(&self) -> BillingMode {
        if self.credit.floor.is_some() {
            BillingMode::Prepaid
        } else {
            BillingMode::Invoice
        }
    }

    /// The per-second price of `machine` for work billed with the terms in force at `at`: the
    /// account's own when those terms give one, else the catalog's.
    pub fn machine_price_at(
        &self,
        catalog: &Catalog,
        machine: Option<&MachineType>,
        at: Timestamp,
    ) -> Option<Decimal> {
        let m = machine?;
        self.terms
            .at(at)
            .machine_prices
            .get(m)
            .or_else(|| catalog.machines.get(m))
            .copied()
    }

    /// The terms in force at `at`.
    pub fn terms_at(&self, at: Timestamp) -> Terms {
        if self.terms.is_empty() {
            Terms::of(self)
        } else {
            self.terms.at(at).clone()
        }
    }

    /// The discounts in force at `at`.
    pub fn discounts_at(&self, at: Timestamp) -> &Discounts {
        if self.terms.is_empty() {
            &self.discounts
        } else {
            &self.terms.at(at).discounts
        }
    }

    /// What billing a charge changes besides the balance: the month's subtotal (volume tiers),
    /// the lots it is paid from, and, for an account invoice-billed at `now`, its open usage
    /// period (returned: the start of the period the charge accrues to).
    pub(crate) fn record_charge(
        &mut self,
        charge: &Charge,
        now: Timestamp,
    ) -> Result<Option<Timestamp>, MoneyError> {
        self.record_charge_as_of(charge, now, now)
    }

    /// [`AccountState::record_charge`] of a charge recorded at `now` for time of an earlier
    /// month, `at`, settled before that month's period is closed: an empty open period that
    /// began before `at`'s month starts at it (see [`OpenPeriod`]).
    pub(crate) fn record_charge_as_of(
        &mut self,
        charge: &Charge,
        now: Timestamp,
        at: Timestamp,
    ) -> Result<Option<Timestamp>, MoneyError> {
        self.month_subtotal = self.month_subtotal.checked_add(charge.subtotal_nanos)?;
        self.spend_lots(charge.total_nanos);
        if self.billing() == BillingMode::Invoice {
            return self.period.add(charge, now, at).map(Some);
        }
        Ok(None)
    }

    /// Spends `amount` from the lots, those that expire first first, then from the adjusted
    /// credit.
    fn spend_lots(&mut self, mut amount: Nanos) {
        for lot in &mut self.lots {
            if amount <= Nanos::ZERO {
                break;
            }
            let take = lot.remaining.min(amount);
            lot.remaining = Nanos(lot.remaining.0 - take.0);
            amount = Nanos(amount.0 - take.0);
        }
        let take = self.adjusted_credit.min(amount.max(Nanos::ZERO));
        self.adjusted_credit = Nanos(self.adjusted_credit.0 - take.0);
    }

    /// Takes back `amount` of `purchase`'s credits because its payment was refunded or disputed
    /// (`kind`): from that purchase's lot first, then as a debit does (the lots that expire
    /// first, then the adjusted credit), so the lots still hold `max(balance, 0)`; the paid
    /// totals (lifetime, and the concurrency tier's 28 days) count the purchase net of it.
    pub(crate) fn take_back(
        &mut self,
        purchase: &PurchaseRecord,
        amount: Nanos,
        kind: TransferKind,
        now: Timestamp,
    ) -> Result<Transfer, MoneyError> {
        let t = self.credit.take_back(amount, kind)?;
        let mut rest = amount;
        if let Some(lot) = self
            .lots
            .iter_mut()
            .find(|l| l.purchase_id == purchase.purchase_id)
        {
            let take = lot.remaining.min(rest).max(Nanos::ZERO);
            lot.remaining = lot.remaining.checked_sub(take)?;
            rest = rest.checked_sub(take)?;
        }
        self.spend_lots(rest);
        self.count_paid(purchase, Nanos(-amount.0), now)?;
        Ok(t)
    }

    /// Gives back `amount` of `purchase`'s credits that a dispute took (it was won), as a
    /// credit adjustment does: what is owed is repaid first, and the rest never expires (the
    /// lots it was taken from may have been spent or expired since).
    pub(crate) fn give_back(
        &mut self,
        purchase: &PurchaseRecord,
        amount: Nanos,
        now: Timestamp,
    ) -> Result<Transfer, MoneyError> {
        let debt = (-self.credit.balance.0).max(0);
        let t = self.credit.give_back(amount)?;
        self.adjusted_credit = self
            .adjusted_credit
            .checked_add(Nanos((amount.0 - debt).max(0)))?;
        self.count_paid(purchase, amount, now)?;
        Ok(t)
    }

    /// Moves the paid totals by `delta` of a paid `purchase`: the lifetime one, and the
    /// trailing 28 days' while the purchase is in them.
    fn count_paid(
        &mut self,
        purchase: &PurchaseRecord,
        delta: Nanos,
        now: Timestamp,
    ) -> Result<(), MoneyError> {
        if !purchase.paid {
            return Ok(());
        }
        self.paid_lifetime = self.paid_lifetime.checked_add(delta)?;
        if purchase.created_at > now.minus_ms(crate::concurrency::TIER_WINDOW_MS) {
            self.paid_28d = self.paid_28d.checked_add(delta)?;
        }
        Ok(())
    }

    /// Adds a lot for new credits; an overdrawn balance is repaid from it first.
    fn add_lot(&mut self, lot: Lot, balance_before: Nanos) {
        let debt = Nanos((-balance_before.0).max(0));
        let remaining = Nanos((lot.remaining.0 - debt.0).max(0));
        self.lots.push(Lot { remaining, ..lot });
        self.lots
            .sort_by(|a, b| a.spend_order().cmp(&b.spend_order()));
    }

    pub fn concurrency_limit(&self, catalog: &Catalog) -> u32 {
        self.concurrency_override
            .unwrap_or_else(|| catalog.concurrency.limit_for(self.paid_28d))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RequestStatus {
    InQueue,
    InProgress,
    Completed,
    Failed,
    Cancelled,
    Expired,
}

impl RequestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::InQueue => "IN_QUEUE",
            RequestStatus::InProgress => "IN_PROGRESS",
            RequestStatus::Completed => "COMPLETED",
            RequestStatus::Failed => "FAILED",
            RequestStatus::Cancelled => "CANCELLED",
            RequestStatus::Expired => "EXPIRED",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "IN_QUEUE" => RequestStatus::InQueue,
            "IN_PROGRESS" => RequestStatus::InProgress,
            "COMPLETED" => RequestStatus::Completed,
            "FAILED" => RequestStatus::Failed,
            "CANCELLED" => RequestStatus::Cancelled,
            "EXPIRED" => RequestStatus::Expired,
            _ => return None,
        })
    }
    pub fn is_final(self) -> bool {
        !matches!(self, RequestStatus::InQueue | RequestStatus::InProgress)
    }
}

/// How a request reached tollgate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Submit, start, complete.
    Lifecycle,
    /// A usage event reported after the fact.
    Event,
    /// Queued and dispatched by tollgate's own gateway ([`crate::gateway`]); the lifecycle
    /// calls do not see it.
    Gateway,
}

/// The settled result of a request, stored with it so that a repeat returns it unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    pub status_code: u16,
    pub billed: bool,
    pub unit: String,
    pub charge: Charge,
    /// The account balance right after this request settled.
    pub balance_after: Nanos,
    /// Completed after its hold expired: billed without a hold and without a slot.
    #[serde(default)]
    pub late: bool,
}

/// One request, in any state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub id: RequestId,
    pub source: Source,
    pub account: AccountId,
    pub endpoint: EndpointId,
    pub api_key: Option<ApiKeyId>,
    /// The price version in force at submission: the request is billed with it.
    pub price_version: i64,
    pub status: RequestStatus,
    pub submitted_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub hold: Nanos,
    pub hold_expires_at: Option<Timestamp>,
    pub machine_type: Option<MachineType>,
    pub num_gpus: u32,
    pub queue_ms: Option<i64>,
    pub inference_ms: Option<i64>,
    pub completion: Option<Completion>,
}

/// A billed request: the row that usage, billing events and invoices are made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineItem {
    pub request_id: RequestId,
    pub account: AccountId,
    pub endpoint: EndpointId,
    pub api_key: Option<ApiKeyId>,
    pub price_version: i64,
    pub unit: String,
    pub charge: Charge,
    pub status_code: u16,
    pub billed_at: Timestamp,
    pub queue_ms: Option<i64>,
    pub inference_ms: Option<i64>,
}

/// A purchase and the answer it got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PurchaseRecord {
    pub account: AccountId,
    pub purchase_id: PurchaseId,
    pub amount: Nanos,
    pub paid: bool,
    pub created_at: Timestamp,
    /// When what is left of these credits expires (`None`: never).
    pub expires_at: Option<Timestamp>,
    pub balance_after: Nanos,
    pub concurrency_limit_after: u32,
    pub locked_after: bool,
    /// Refunded so far (taken back from the balance; the provider's cumulative amount for a
    /// purchase paid through it).
    pub refunded: Nanos,
    /// Taken back for disputes now (open and lost ones; a won dispute gives it back).
    pub disputed: Nanos,
}

/// An invoice the batch issued. Its number is assigned by the store as the batch commits
/// (from a counter per calendar year kept in the database, so numbers are gapless in commit
/// order); everything else is decided here. A usage invoice's lines are the accruals of its
/// account's period that starts at `period_start` (see [`Accrual`]), which the store moves
/// into the invoice in the same commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewInvoice {
    pub account: AccountId,
    pub kind: InvoiceKind,
    pub status: InvoiceStatus,
    pub issued_at: Timestamp,
    pub period_start: Timestamp,
    pub period_end: Timestamp,
    /// Before discounts (a top-up invoice: the purchase's amount).
    pub subtotal: Nanos,
    pub discount: Nanos,
    /// What the invoice charges: `subtotal - discount`.
    pub total: Nanos,
    pub purchase_id: Option<PurchaseId>,
}

/// A billed line item of an invoice-billed account, accrued to its open period (the store adds
/// it to the period's accrual row of its endpoint, unit, price, discount and charge month).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accrual {
    /// Its index in [`BatchState::line_items`].
    pub item: usize,
    pub period_start: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvoiceKind {
    /// Issued for a paid purchase of credits, in the commit that grants them.
    TopUp,
    /// An invoice-billed account's charges recorded in one billing period.
    Usage,
    /// Corrects a top-up invoice: a refund of its purchase (negative amounts; its
    /// `purchase_id` names the purchase whose top-up invoice it corrects).
    CreditNote,
}

impl InvoiceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceKind::TopUp => "top_up",
            InvoiceKind::Usage => "usage",
            InvoiceKind::CreditNote => "credit_note",
        }
    }
    pub fn parse(s: &str) -> Option<InvoiceKind> {
        match s {
            "top_up" => Some(InvoiceKind::TopUp),
            "usage" => Some(InvoiceKind::Usage),
            "credit_note" => Some(InvoiceKind::CreditNote),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvoiceStatus {
    Open,
    Paid,
    Void,
}

impl InvoiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceStatus::Open => "open",
            InvoiceStatus::Paid => "paid",
            InvoiceStatus::Void => "void",
        }
    }
    pub fn parse(s: &str) -> Option<InvoiceStatus> {
        match s {
            "open" => Some(InvoiceStatus::Open),
            "paid" => Some(InvoiceStatus::Paid),
            "void" => Some(InvoiceStatus::Void),
            _ => None,
        }
    }
}

/// An operator's adjustment and the answer it got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdjustmentRecord {
    pub account: AccountId,
    pub adjustment_id: AdjustmentId,
    /// Signed: a credit is positive, a debit negative.
    pub amount: Nanos,
    pub reason: String,
    pub created_at: Timestamp,
    pub balance_after: Nanos,
    pub locked_after: bool,
}

/// The longest reason an adjustment or an unlock may give.
pub const MAX_REASON_CHARS: usize = 500;

/// A transfer with what caused it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferRecord {
    pub transfer: Transfer,
    pub request_id: Option<RequestId>,
    pub purchase_id: Option<PurchaseId>,
    pub at: Timestamp,
}

/// Everything that moves money or changes a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Submit {
        request_id: RequestId,
        account: AccountId,
        api_key: Option<ApiKeyId>,
        endpoint: EndpointId,
    },
    Start {
        request_id: RequestId,
        machine_type: Option<MachineType>,
        num_gpus: Option<u32>,
        hold_units: Option<Decimal>,
    },
    Complete {
        request_id: RequestId,
        status_code: u16,
        output: Output,
        billable_units: Option<Decimal>,
        inference_seconds: Option<Decimal>,
    },
    Cancel {
        request_id: RequestId,
    },
    /// A request queued by the gateway, with what it runs on ([`crate::gateway`]).
    GatewaySubmit {
        request_id: RequestId,
        account: AccountId,
        api_key: Option<ApiKeyId>,
        endpoint: EndpointId,
        input: crate::gateway::GatewayInput,
    },
    /// A gateway request's turn: held and leased to `lease.owner` (a queued one), or taken
    /// over (a running one whose lease ran out, or its owner's again).
    Dispatch {
        request_id: RequestId,
        lease: crate::gateway::Lease,
        machine_type: Option<MachineType>,
    },
    /// A gateway request's answer (or last failure), billed as `bill` says.
    GatewayAnswer {
        request_id: RequestId,
        result: crate::gateway::GatewayResult,
        bill: crate::gateway::Bill,
    },
    /// The units a model server posts for a request whose billing it deferred.
    GatewayUnits {
        request_id: RequestId,
        billable_units: Decimal,
    },
    /// A caller's cancellation of its gateway request: never billed.
    GatewayCancel {
        request_id: RequestId,
        account: AccountId,
    },
    /// Voids a started request whose hold timed out (issued by the sweeper; a no-op unless
    /// the request is still in progress and past its deadline).
    Expire {
        request_id: RequestId,
    },
    Purchase {
        account: AccountId,
        purchase_id: PurchaseId,
        amount: Nanos,
        paid: bool,
        /// `None`: paid credits expire after [`PAID_CREDITS_EXPIRE_MS`], free ones never.
        expires_at: Option<Timestamp>,
    },
    /// Expires an account's credits that are past their date (issued by the sweeper).
    ExpireCredits {
        account: AccountId,
    },
    /// Records `credits.expiring` for each of the account's lots with credits left that expire
    /// within [`EXPIRY_NOTICE_MS`] and were not noticed yet (issued by the sweeper).
    NoticeExpiringCredits {
        account: AccountId,
    },
    UsageEvent(UsageEvent),
    /// A bulk of runner events, validated whole and applied in order
    /// ([`crate::serverless::apply_events`]); its accounts are `RunnerEvent::account`.
    RunnerEvents(Vec<crate::serverless::RunnerEvent>),
    /// Settles a runner's time up to the current minute (issued by the sweeper,
    /// [`crate::serverless::settle`]), or, with `until`, no further than that
    /// ([`crate::serverless::settle_until`]: the month's end, before its usage periods close).
    SettleRunner {
        runner: crate::ids::RunnerId,
        until: Option<Timestamp>,
    },
    /// An operator's correction of the balance: `amount` is signed (a credit or a debit).
    Adjust {
        account: AccountId,
        adjustment_id: AdjustmentId,
        amount: Nanos,
        reason: String,
    },
    /// Locks the account as a payment dispute does, without a dispute (credits do not lift
    /// it; an operator's unlock does). Setting it again keeps the first time. The provider's
    /// disputes lock through `Op::Payment` ([`crate::payments`]); nothing in the HTTP API sends
    /// this one: it is kept for tests.
    LockDisputed {
        account: AccountId,
    },
    /// Lifts a dispute lock (an operator unlocks the account): no dispute holds it any more
    /// (`PaymentProfile::dispute_locks` 0, a new `dispute_epoch`). A lock from an exhausted
    /// balance stays: only credits lift it.
    LiftDispute {
        account: AccountId,
        reason: String,
    },
    /// Closes the account's open usage period, issuing its usage invoice if it has charges:
    /// `until` `None`, every charge recorded so far (the period ends now); a past `until`,
    /// only if every charge in the period was recorded before it (the period ends at
    /// `until`). A period of an earlier month is closed at its month's end first, whatever
    /// `until` says (see [`close_elapsed_periods`]).
    CloseInvoicePeriod {
        account: AccountId,
        until: Option<Timestamp>,
    },
    /// Records a checkout top-up awaiting payment (idempotent on `(account, top_up_id)`: the
    /// same id again returns the first record; with another amount, a conflict).
    CreateTopUp {
        account: AccountId,
        top_up_id: PurchaseId,
        amount: Nanos,
    },
    /// Applies what the payment provider says of a top-up's payment (see
    /// [`crate::payments::PaymentEffect`]). With `event`, once per event id: a repeat is
    /// `replayed` and changes nothing.
    Payment {
        account: AccountId,
        event: Option<ProviderEvent>,
        effect: PaymentEffect,
    },
    /// An operator's refund of a paid purchase, idempotent on `(account, refund_id)`. With
    /// `provider` (a purchase paid through the provider, already refunded there): takes back
    /// what the charge's cumulative refunded amount adds to what was taken. Without (a manual
    /// purchase): takes back `amount` from what is left of the purchase's credits, refused
    /// beyond it. Either way a credit note is issued for what was taken.
    Refund {
        account: AccountId,
        purchase_id: PurchaseId,
        refund_id: PurchaseId,
        amount: Nanos,
        provider: Option<ProviderRefund>,
    },
    /// Sets the account's auto top-up rule (needs a saved payment method to enable; its amounts
    /// are checked only when enabling, so turning it off is never refused); setting it (again)
    /// makes it active, clearing a pause and the failures count.
    SetAutoTopUp {
        account: AccountId,
        rule: AutoTopUpRule,
    },
    /// Records the provider's customer of the account; the first one recorded stays (the
    /// outcome names the one in force).
    SetPaymentCustomer {
        account: AccountId,
        customer: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct UsageEvent {
    pub event_id: RequestId,
    pub account: AccountId,
    pub endpoint: EndpointId,
    pub api_key: Option<ApiKeyId>,
    pub timestamp: Timestamp,
    pub status_code: u16,
    pub output: Output,
    pub billable_units: Option<Decimal>,
    pub queue_seconds: Option<Decimal>,
    pub inference_seconds: Option<Decimal>,
    pub machine_type: Option<MachineType>,
    pub num_gpus: Option<u32>,
}

impl Op {
    /// The request this operation names, if any.
    pub fn request_id(&self) -> Option<&RequestId> {
        match self {
            Op::Submit { request_id, .. }
            | Op::Start { request_id, .. }
            | Op::Complete { request_id, .. }
            | Op::Cancel { request_id }
            | Op::Expire { request_id }
            | Op::GatewaySubmit { request_id, .. }
            | Op::Dispatch { request_id, .. }
            | Op::GatewayAnswer { request_id, .. }
            | Op::GatewayUnits { request_id, .. }
            | Op::GatewayCancel { request_id, .. } => Some(request_id),
            Op::UsageEvent(e) => Some(&e.event_id),
            Op::Purchase { .. }
            | Op::ExpireCredits { .. }
            | Op::NoticeExpiringCredits { .. }
            | Op::Adjust { .. }
            | Op::LockDisputed { .. }
            | Op::LiftDispute { .. }
            | Op::CloseInvoicePeriod { .. }
            | Op::CreateTopUp { .. }
            | Op::Payment { .. }
            | Op::Refund { .. }
            | Op::SetAutoTopUp { .. }
            | Op::SetPaymentCustomer { .. }
            | Op::RunnerEvents(_)
            | Op::SettleRunner { .. } => None,
        }
    }
    /// The gateway request whose row this operation reads (a submission writes a new one).
    pub fn gateway_request(&self) -> Option<&RequestId> {
        match self {
            Op::Dispatch { request_id, .. }
            | Op::GatewayAnswer { request_id, .. }
            | Op::GatewayUnits { request_id, .. }
            | Op::GatewayCancel { request_id, .. } => Some(request_id),
            _ => None,
        }
    }
    /// The account this operation names directly (others are found through their request).
    pub fn account(&self) -> Option<&AccountId> {
        match self {
            Op::Submit { account, .. }
            | Op::GatewaySubmit { account, .. }
            | Op::GatewayCancel { account, .. }
            | Op::Purchase { account, .. }
            | Op::ExpireCredits { account }
            | Op::NoticeExpiringCredits { account }
            | Op::Adjust { account, .. }
            | Op::LockDisputed { account }
            | Op::LiftDispute { account, .. }
            | Op::CloseInvoicePeriod { account, .. }
            | Op::CreateTopUp { account, .. }
            | Op::Payment { account, .. }
            | Op::Refund { account, .. }
            | Op::SetAutoTopUp { account, .. }
            | Op::SetPaymentCustomer { account, .. } => Some(account),
            Op::UsageEvent(e) => Some(&e.account),
            _ => None,
        }
    }
}

/// Answers, one per accepted operation. `replayed` marks a repeat that changed nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A bulk of runner events applied: one result per event, in order.
    RunnerEvents {
        results: Vec<crate::serverless::RunnerEventResult>,
    },
    /// A runner settled (`billed`: what this settlement charged; zero when there was nothing
    /// to settle or its state is free; `moved`: whether its time was accounted further, its
    /// cursor moved).
    RunnerSettled {
        billed: Nanos,
        moved: bool,
    },
    Submitted {
        request: RequestRecord,
        replayed: bool,
    },
    /// A gateway request dispatched (`resumed`: taken over, its hold already taken).
    Dispatched {
        gateway: crate::gateway::GatewayRecord,
        request: RequestRecord,
        resumed: bool,
    },
    /// A gateway request answered; billed when its model server posts the units.
    AwaitingUnits {
        replayed: bool,
    },
    Started {
        hold: Nanos,
        limit: u32,
        in_progress: u32,
        replayed: bool,
    },
    Completed {
        request: RequestRecord,
        completion: Completion,
        replayed: bool,
    },
    Cancelled {
        replayed: bool,
    },
    Expired {
        expired: bool,
    },
    Purchased {
        purchase: PurchaseRecord,
        replayed: bool,
    },
    CreditsExpired {
        amount: Nanos,
    },
    /// How many lots `credits.expiring` was recorded for.
    ExpiryNoticed {
        lots: usize,
    },
    Adjusted {
        adjustment: AdjustmentRecord,
        replayed: bool,
    },
    /// The account's lock after a dispute lock was set or lifted; `changed` is false when it
    /// was already so.
    LockChanged {
        lock_reason: Option<LockReason>,
        changed: bool,
    },
    /// Whether closing the account's open usage period issued an invoice (by this operation
    /// or by the month's end before it).
    PeriodClosed {
        issued: bool,
    },
    TopUp {
        top_up: TopUpRecord,
        replayed: bool,
    },
    /// A provider's effect was applied (`replayed`: its event id was applied before, and
    /// nothing changed). `top_up` is the top-up as it now stands, if it exists.
    PaymentApplied {
        top_up: Option<TopUpRecord>,
        replayed: bool,
    },
    Refunded {
        refund: RefundRecord,
        replayed: bool,
    },
    /// The account's payment profile after the change (its auto top-up rule, its customer).
    PaymentProfile {
        profile: PaymentProfile,
    },
}

/// Why an operation was refused. Nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("unknown request {0}")]
    UnknownRequest(RequestId),
    #[error("unknown endpoint {0}")]
    UnknownEndpoint(EndpointId),
    #[error("unknown account {0}")]
    UnknownAccount(AccountId),
    #[error("endpoint {0} has no price in force")]
    NoPrice(EndpointId),
    #[error("unknown machine type {0}")]
    UnknownMachine(MachineType),
    #[error("account {account} is locked: {}", match reason {
        LockReason::ExhaustedBalance => format!("balance {balance} is at or below its lock threshold"),
        LockReason::PaymentDisputed => "a payment was disputed".to_string(),
    })]
    AccountLocked {
        account: AccountId,
        balance: Nanos,
        reason: LockReason,
    },
    #[error("concurrency limit reached: {in_progress} of {limit} requests in progress")]
    ConcurrencyLimit { limit: u32, in_progress: u32 },
    #[error("insufficient credits: {available} available, {required} required")]
    InsufficientCredits { available: Nanos, required: Nanos },
    /// A `block` spending limit would be passed by the start's hold (see [`crate::limits`]).
    #[error(
        "spending limit {limit_id} ({} USD per {}) is reached: {} USD spent and {} USD held \
         this period, {} USD more required; it resets at {}",
        amount.to_usd(), period.as_str(), spent.to_usd(), held.to_usd(), required.to_usd(),
        crate::time::rfc3339(*resets_at)
    )]
    SpendingLimitExceeded {
        account: AccountId,
        limit_id: LimitId,
        period: Period,
        amount: Nanos,
        spent: Nanos,
        held: Nanos,
        /// The start's hold.
        required: Nanos,
        resets_at: Timestamp,
    },
    #[error("request {id} is {status:?}; cannot {action}")]
    WrongState {
        id: RequestId,
        status: RequestStatus,
        action: &'static str,
    },
    #[error("{0}")]
    Conflict(String),
    /// A gateway request another dispatcher holds the lease of.
    #[error("request {id} is being dispatched by {owner} until {}", crate::time::rfc3339(*until))]
    Leased {
        id: RequestId,
        owner: std::sync::Arc<str>,
        until: Timestamp,
    },
    /// A completion of a request whose hold expired, on an endpoint that refuses them.
    #[error(
        "request {0} expired before it was completed; its endpoint does not bill late completions"
    )]
    RequestExpired(RequestId),
    /// A successful output that lacks what the price measures (and the endpoint refuses to
    /// bill it otherwise): nothing is billed and the request is left as it was.
    #[error("{mismatch}; nothing was billed: send the completion again with `{}` (what the {unit} price measures) or `billable_units`", .mismatch.missing)]
    OutputMismatch {
        /// The price's unit label.
        unit: String,
        mismatch: OutputMismatch,
    },
    #[error("invalid usage: {0}")]
    InvalidUsage(#[from] RateError),
    #[error(transparent)]
    BadStatus(#[from] BadStatus),
    #[error("`{field}` {reason}")]
    Invalid { field: &'static str, reason: String },
    /// One event of a bulk of runner events is refused, so the bulk is (nothing is written).
    #[error("events[{index}] (event_id {event_id}): {reason}")]
    InvalidRunnerEvent {
        index: usize,
        event_id: String,
        reason: String,
    },
    /// Auto top-up needs a payment method saved at an earlier checkout.
    #[error("account {0} has no saved payment method: pay a top-up at checkout first, agreeing to save the card")]
    PaymentMethodRequired(AccountId),
    /// An operator refund of a purchase that is not a payment (free credits), or beyond what
    /// the purchase allows.
    #[error("purchase {purchase_id} cannot be refunded: {reason}")]
    NotRefundable {
        purchase_id: PurchaseId,
        reason: String,
    },
    #[error(transparent)]
    Money(#[from] MoneyError),
}

/// The rows a batch touches, and the effects of the operations applied so far.
#[derive(Debug, Default)]
pub struct BatchState {
    /// The batch's clock: the `now` its operations are applied at.
    pub now: Timestamp,
    pub accounts: HashMap<AccountId, AccountState>,
    pub requests: HashMap<RequestId, RequestRecord>,
    pub purchases: HashMap<(AccountId, PurchaseId), PurchaseRecord>,
    pub dirty_accounts: BTreeSet<AccountId>,
    pub dirty_requests: BTreeSet<RequestId>,
    pub new_purchases: Vec<PurchaseRecord>,
    /// Invoices issued by the batch, in issue order (numbered by the store as it commits).
    pub new_invoices: Vec<NewInvoice>,
    /// The batch's line items that accrue to an open usage period, in order.
    pub accruals: Vec<Accrual>,
    /// The prefix of the numbers of the invoices the batch issues (configuration, set by the
    /// engine; `None`: the store's default).
    pub invoice_prefix: Option<std::sync::Arc<str>>,
    /// Adjustments named by the batch's operations that exist (loaded), and those it made.
    pub adjustments: HashMap<(AccountId, AdjustmentId), AdjustmentRecord>,
    pub new_adjustments: Vec<AdjustmentRecord>,
    pub transfers: Vec<TransferRecord>,
    pub line_items: Vec<LineItem>,
    /// Requests completed (billed or not) by this batch, in order: the analytics rollups.
    pub completed: Vec<RequestId>,
    /// Billing events the batch's operations caused, in order: the outbox the store writes in
    /// the same db transaction (see [`crate::events`]).
    pub events: Vec<crate::events::NewEvent>,
    /// Purchases loaded whose `refunded` or `disputed` the batch changed (the store updates
    /// them; new purchases are in `new_purchases`).
    pub dirty_purchases: BTreeSet<(AccountId, PurchaseId)>,
    /// Top-ups named by the batch's operations that exist (loaded), and those it created.
    pub top_ups: HashMap<(AccountId, PurchaseId), TopUpRecord>,
    /// Top-ups the batch created or changed (the store upserts them).
    pub dirty_top_ups: BTreeSet<(AccountId, PurchaseId)>,
    /// The disputes of the top-ups the batch's payment operations name (loaded), and those it
    /// created.
    pub disputes: HashMap<(AccountId, String), DisputeRecord>,
    /// Disputes the batch created or changed (the store upserts them).
    pub dirty_disputes: BTreeSet<(AccountId, String)>,
    /// Provider event ids already applied (loaded, for the batch's payment operations that
    /// carry one) or applied by the batch.
    pub provider_events: HashSet<String>,
    /// Provider events the batch applied, in order (the store inserts them).
    pub new_provider_events: Vec<(AccountId, ProviderEvent)>,
    /// Operator refunds named by the batch's operations that exist (loaded), and those it made.
    pub refunds: HashMap<(AccountId, PurchaseId), RefundRecord>,
    pub new_refunds: Vec<RefundRecord>,
    /// The deployment's top-up settings (configuration, set by the engine).
    pub top_up_settings: TopUpSettings,
    /// The deployment's serverless settings (configuration, set by the engine).
    pub serverless: crate::serverless::ServerlessSettings,
    /// Gateway requests named by the batch's gateway operations (loaded), and those it
    /// submitted.
    pub gateway: HashMap<RequestId, crate::gateway::GatewayRecord>,
    /// Gateway requests the batch submitted or changed (the store upserts them).
    pub dirty_gateway: BTreeSet<RequestId>,
    /// Runners named by the batch's operations that exist (loaded), and those it created.
    pub runners: HashMap<crate::ids::RunnerId, crate::serverless::RunnerRecord>,
    /// Runners the batch created or changed (the store upserts them).
    pub dirty_runners: BTreeSet<crate::ids::RunnerId>,
    /// Runner events named by the batch's operations that were applied before (loaded), and
    /// those it applied.
    pub runner_events: HashMap<crate::ids::RunnerEventId, crate::serverless::RunnerEventRecord>,
    /// Runner events the batch applied, in order (the store inserts them).
    pub new_runner_events: Vec<crate::serverless::RunnerEventRecord>,
    /// The runner-state history's deltas (the store adds them to its per-minute rollup).
    pub runner_minutes: Vec<crate::serverless::RunnerMinute>,
}

/// The calendar year of a timestamp, UTC (invoice numbers restart each year).
pub fn year_of(at: Timestamp) -> i32 {
    month_of(at) / 100
}

/// `yyyymm` of a timestamp, UTC.
pub fn month_of(at: Timestamp) -> i32 {
    use chrono::Datelike;
    let d = chrono::DateTime::from_timestamp_millis(at.0).unwrap_or_default();
    d.year() * 100 + d.month() as i32
}

fn seconds_to_ms(s: Decimal) -> i64 {
    use rust_decimal::prelude::ToPrimitive;
    (s * Decimal::from(1000))
        .round()
        .to_i64()
        .unwrap_or(i64::MAX)
}

fn ms_to_seconds(ms: i64) -> Decimal {
    Decimal::new(ms, 3)
}

/// The unit and rule used to bill a 4xx's inference seconds.
fn inference_seconds_rule() -> PriceRule {
    PriceRule::per_unit(Unit::GpuSecond, None)
}

#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub(crate) catalog: &'a Catalog,
    pub(crate) now: Timestamp,
}

impl BatchState {
    /// Records an event caused by the operation being applied (see [`crate::events`]).
    pub(crate) fn event(&mut self, account: &AccountId, at: Timestamp, data: EventData) {
        self.events.push(NewEvent {
            account: account.clone(),
            at,
            data,
        });
    }

    /// Issues an invoice (numbered by the store as the batch commits) and records its
    /// `invoice.issued` event.
    pub(crate) fn issue_invoice(&mut self, invoice: NewInvoice) {
        let data = EventData::InvoiceIssued {
            invoice: self.new_invoices.len(),
            invoice_id: String::new(),
            number: String::new(),
            kind: invoice.kind.as_str().to_string(),
            status: invoice.status.as_str().to_string(),
            total_nano_usd: invoice.total,
            period_start: invoice.period_start,
            period_end: invoice.period_end,
        };
        let (account, at) = (invoice.account.clone(), invoice.issued_at);
        self.new_invoices.push(invoice);
        self.event(&account, at, data);
    }

    pub(crate) fn account_mut(&mut self, id: &AccountId) -> Result<&mut AccountState, Rejection> {
        self.accounts
            .get_mut(id)
            .ok_or_else(|| Rejection::UnknownAccount(id.clone()))
    }

    fn record(&mut self, t: Transfer, req: Option<&RequestId>, at: Timestamp) {
        self.transfers.push(TransferRecord {
            transfer: t,
            request_id: req.cloned(),
            purchase_id: None,
            at,
        });
    }

    /// Records that the last line item accrues to the period starting at `period_start`.
    pub(crate) fn accrue(&mut self, period_start: Option<Timestamp>) {
        if let Some(period_start) = period_start {
            self.accruals.push(Accrual {
                item: self.line_items.len() - 1,
                period_start,
            });
        }
    }

    /// Records the spending-limit notices an operation on `account` caused.
    pub(crate) fn notify(&mut self, account: &AccountId, at: Timestamp, notices: Vec<EventData>) {
        for data in notices {
            self.event(account, at, data);
        }
    }

    pub(crate) fn put_request(&mut self, r: RequestRecord) {
        self.dirty_requests.insert(r.id.clone());
        self.requests.insert(r.id.clone(), r);
    }
}

/// Applies one operation at `now`. On `Err` nothing in `state` changed, with one exception,
/// the core's own follow-up of a refusal: a start refused by a `block` spending limit marks
/// that limit reached for its period and records the `spending_limit.reached` notice, the
/// first time in the period ([`limits::refused`]; the account is then written). An applied
/// operation is followed, for each account it may change (`watched_accounts`: one, or every
/// account of a bulk of runner events), by the account's notices (lock, low balance) and, when
/// it changed something, by its auto top-up rule's decision (see [`crate::payments`]), which
/// may start a top-up (not after a refund, a dispute or an operator's unlock:
/// `payments::decision_follows`).
pub fn apply(
    state: &mut BatchState,
    catalog: &Catalog,
    now: Timestamp,
    op: Op,
) -> Result<Outcome, Rejection> {
    let watched: Vec<(AccountId, Watch)> = watched_accounts(state, &op)
        .into_iter()
        .filter_map(|a| {
            let before = state.accounts.get(&a).map(Watch::of)?;
            Some((a, before))
        })
        .collect();
    let decides = crate::payments::decision_follows(&op);
    let mut outcome = apply_op(state, &Ctx { catalog, now }, op);
    if let Ok(o) = &mut outcome {
        // The auto top-up rule looks at what the operation left (the available balance, the
        // rule's state), when it changed something: a repeat leaves all as it was. Money given
        // or taken back through the card (a refund, a dispute) and an operator's unlock are
        // not followed by a charge of the same card.
        let decide = decides && o.changed_anything();
        for (account, before) in watched {
            notice_changes(state, &account, before, now);
            if decide {
                crate::payments::decide_auto_top_up(state, &account, now);
                if let Outcome::PaymentProfile { profile } = o {
                    // The answer shows the top-up the change started.
                    profile.clone_from(&state.accounts[&account].payment);
                }
            }
        }
    }
    if let Err(Rejection::SpendingLimitExceeded {
        account, limit_id, ..
    }) = &outcome
    {
        if let Some(acct) = state.accounts.get_mut(account) {
            if let Some(data) = limits::refused(&mut acct.limits, limit_id, now) {
                state.dirty_accounts.insert(account.clone());
                state.event(account, now, data);
            }
        }
    }
    outcome
}

/// The accounts an operation may change, each followed by its notices and auto top-up
/// decision: the one it names or its request's, every account of a bulk of runner events (in
/// the order they first appear), a settled runner's.
fn watched_accounts(state: &BatchState, op: &Op) -> Vec<AccountId> {
    match op {
        Op::RunnerEvents(events) => {
            let mut seen = HashSet::new();
            events
                .iter()
                .filter(|e| seen.insert(&e.account))
                .map(|e| e.account.clone())
                .collect()
        }
        Op::SettleRunner { runner, .. } => state
            .runners
            .get(runner)
            .map(|r| r.account.clone())
            .into_iter()
            .collect(),
        _ => op
            .account()
            .or_else(|| {
                op.request_id()
                    .and_then(|r| state.requests.get(r))
                    .map(|r| &r.account)
            })
            .cloned()
            .into_iter()
            .collect(),
    }
}

/// What an operation may change that the platform is told about: the balance against the
/// account's low-balance level, and the lock.
struct Watch {
    balance: Nanos,
    lock: Option<LockReason>,
}

impl Watch {
    fn of(acct: &AccountState) -> Watch {
        Watch {
            balance: acct.credit.balance,
            lock: acct.lock_reason(),
        }
    }
}

/// Records the events of what an applied operation changed on `account`: `account.locked`
/// and `account.unlocked` when it started or stopped refusing requests, `balance.low` when
/// its balance went from at or above its low-balance level (the terms in force at `now`) to
/// below it. So each fires once per crossing, and again only after the account crossed back.
fn notice_changes(state: &mut BatchState, account: &AccountId, before: Watch, now: Timestamp) {
    let Some(acct) = state.accounts.get(account) else {
        return;
    };
    let balance = acct.credit.balance;
    let mut events = Vec::new();
    if let Some(low) = acct.balance_low(now) {
        if before.balance >= low {
            events.push(EventData::BalanceLow {
                balance_nano_usd: balance,
                low_balance_nano_usd: low,
            });
        }
    }
    match (before.lock, acct.lock_reason()) {
        (None, Some(lock_reason)) => events.push(EventData::AccountLocked {
            lock_reason,
            balance_nano_usd: balance,
            running_runners: Vec::new(),
        }),
        (Some(_), None) => events.push(EventData::AccountUnlocked {
            balance_nano_usd: balance,
        }),
        _ => {}
    }
    for data in events {
        state.event(account, now, data);
    }
}

impl Outcome {
    /// Whether the operation changed anything: not a repeat answered from its first answer,
    /// nor a sweep, lock change or close that found nothing to do.
    pub fn changed_anything(&self) -> bool {
        match self {
            Outcome::Submitted { replayed, .. }
            | Outcome::AwaitingUnits { replayed }
            | Outcome::Started { replayed, .. }
            | Outcome::Completed { replayed, .. }
            | Outcome::Cancelled { replayed }
            | Outcome::Purchased { replayed, .. }
            | Outcome::Adjusted { replayed, .. }
            | Outcome::TopUp { replayed, .. }
            | Outcome::PaymentApplied { replayed, .. }
            | Outcome::Refunded { replayed, .. } => !*replayed,
            Outcome::LockChanged { changed, .. } => *changed,
            Outcome::Expired { expired } => *expired,
            Outcome::CreditsExpired { amount } => *amount > Nanos::ZERO,
            Outcome::ExpiryNoticed { lots } => *lots > 0,
            Outcome::PeriodClosed { issued } => *issued,
            Outcome::PaymentProfile { .. } | Outcome::Dispatched { .. } => true,
            Outcome::RunnerEvents { results } => results.iter().any(|r| !r.duplicate),
            // The auto top-up rule follows a charge; time in a free state charges nothing.
            Outcome::RunnerSettled { billed, .. } => *billed > Nanos::ZERO,
        }
    }
}

fn apply_op(state: &mut BatchState, cx: &Ctx, op: Op) -> Result<Outcome, Rejection> {
    let cx = *cx;
    match op {
        Op::Submit {
            request_id,
            account,
            api_key,
            endpoint,
        } => submit(
            state,
            &cx,
            request_id,
            account,
            api_key,
            endpoint,
            Source::Lifecycle,
        ),
        Op::Start {
            request_id,
            machine_type,
            num_gpus,
            hold_units,
        } => start(
            state,
            &cx,
            request_id,
            Source::Lifecycle,
            machine_type,
            num_gpus,
            hold_units,
        ),
        Op::Complete {
            request_id,
            status_code,
            output,
            billable_units,
            inference_seconds,
        } => complete(
            state,
            &cx,
            request_id,
            Source::Lifecycle,
            Rating::Rate {
                status_code,
                output,
                billable_units,
                inference_seconds,
            },
        ),
        Op::Cancel { request_id } => release(
            state,
            &cx,
            request_id,
            TransferKind::Void,
            &[Source::Lifecycle],
        ),
        // The sweeper expires any request whose hold timed out: a gateway request's while it
        // awaits its model server's units.
        Op::Expire { request_id } => release(
            state,
            &cx,
            request_id,
            TransferKind::Expire,
            &[Source::Lifecycle, Source::Gateway],
        ),
        Op::GatewaySubmit {
            request_id,
            account,
            api_key,
            endpoint,
            input,
        } => crate::gateway::submit(state, &cx, request_id, account, api_key, endpoint, input),
        Op::Dispatch {
            request_id,
            lease,
            machine_type,
        } => crate::gateway::dispatch(state, &cx, request_id, lease, machine_type),
        Op::GatewayAnswer {
            request_id,
            result,
            bill,
        } => crate::gateway::answer(state, &cx, request_id, result, bill),
        Op::GatewayUnits {
            request_id,
            billable_units,
        } => crate::gateway::units(state, &cx, request_id, billable_units),
        Op::GatewayCancel {
            request_id,
            account,
        } => crate::gateway::cancel(state, &cx, request_id, account),
        Op::Purchase {
            account,
            purchase_id,
            amount,
            paid,
            expires_at,
        } => purchase(state, &cx, account, purchase_id, amount, paid, expires_at),
        Op::ExpireCredits { account } => expire_credits(state, &cx, account),
        Op::NoticeExpiringCredits { account } => notice_expiring_credits(state, &cx, account),
        Op::UsageEvent(e) => usage_event(state, &cx, e),
        Op::RunnerEvents(events) => {
            crate::serverless::apply_events(state, cx.catalog, cx.now, events)
        }
        Op::SettleRunner {
            runner,
            until: None,
        } => crate::serverless::settle(state, cx.catalog, cx.now, runner),
        Op::SettleRunner {
            runner,
            until: Some(until),
        } => crate::serverless::settle_until(state, cx.catalog, cx.now, runner, until),
        Op::Adjust {
            account,
            adjustment_id,
            amount,
            reason,
        } => adjust(state, &cx, account, adjustment_id, amount, reason),
        Op::LockDisputed { account } => lock_disputed(state, &cx, account),
        Op::LiftDispute { account, reason } => lift_dispute(state, account, reason),
        Op::CloseInvoicePeriod { account, until } => close_period(state, &cx, account, until),
        Op::CreateTopUp {
            account,
            top_up_id,
            amount,
        } => crate::payments::create_top_up(state, cx.now, account, top_up_id, amount),
        Op::Payment {
            account,
            event,
            effect,
        } => crate::payments::apply_payment(state, cx.catalog, cx.now, account, event, effect),
        Op::Refund {
            account,
            purchase_id,
            refund_id,
            amount,
            provider,
        } => crate::payments::refund(
            state,
            cx.now,
            account,
            purchase_id,
            refund_id,
            amount,
            provider,
        ),
        Op::SetAutoTopUp { account, rule } => {
            crate::payments::set_auto_top_up(state, cx.now, account, rule)
        }
        Op::SetPaymentCustomer { account, customer } => {
            crate::payments::set_customer(state, account, customer)
        }
    }
}

/// Closes the open usage periods of the batch's accounts that began in an earlier calendar
/// month than `now` and have charges: each issues its usage invoice, ending at the start of
/// the month after its own (every charge of an open period was recorded in its start's month),
/// and the next period starts there. An empty period is left as it is (the next charge moves
/// its start). The engine calls this once a batch's rows are loaded, before any operation, so
/// a charge is never added to a period of an earlier month; accounts in name order, so the
/// numbers follow it.
///
/// First, the batch's serverless runners of those accounts are settled up to the start of
/// now's month ([`crate::serverless::settle_before_close`]), so the month's last minutes of
/// runner time accrue to the period they belong to: the engine loads the due runners of the
/// accounts [`elapsed_periods`] names before it calls this. (That settlement may also give an
/// empty period of an earlier month its first charges, which are then closed with it.)
pub fn close_elapsed_periods(state: &mut BatchState, catalog: &Catalog, now: Timestamp) {
    crate::serverless::settle_before_close(state, catalog, now);
    for id in elapsed_periods(state, now) {
        close_if_elapsed(state, &id, now);
    }
}

/// The batch's accounts whose open period has charges and began in an earlier calendar month
/// than `now` (those [`close_elapsed_periods`] closes), in name order.
pub fn elapsed_periods(state: &BatchState, now: Timestamp) -> Vec<AccountId> {
    let mut due: Vec<AccountId> = state
        .accounts
        .iter()
        .filter(|(_, a)| a.period.elapsed(now))
        .map(|(id, _)| id.clone())
        .collect();
    due.sort();
    due
}

/// Closes `id`'s open period at its month's end if it has charges and began in an earlier
/// month than `now`; whether it did.
fn close_if_elapsed(state: &mut BatchState, id: &AccountId, now: Timestamp) -> bool {
    let p = &state.accounts[id].period;
    if !p.elapsed(now) {
        return false;
    }
    let end = next_month_start(p.start);
    issue_usage_invoice(state, id, end, now);
    true
}

/// Issues the usage invoice of `id`'s open period, ending at `end`, and starts the next
/// period there.
fn issue_usage_invoice(state: &mut BatchState, id: &AccountId, end: Timestamp, now: Timestamp) {
    let acct = state.accounts.get_mut(id).expect("a loaded account");
    let p = std::mem::replace(
        &mut acct.period,
        OpenPeriod {
            start: end,
            ..OpenPeriod::default()
        },
    );
    state.dirty_accounts.insert(id.clone());
    state.issue_invoice(NewInvoice {
        account: id.clone(),
        kind: InvoiceKind::Usage,
        status: InvoiceStatus::Open,
        issued_at: now,
        period_start: p.start,
        period_end: end,
        subtotal: p.subtotal,
        discount: p.discount,
        total: p.total,
        purchase_id: None,
    });
}

fn close_period(
    state: &mut BatchState,
    cx: &Ctx,
    account: AccountId,
    until: Option<Timestamp>,
) -> Result<Outcome, Rejection> {
    if !state.accounts.contains_key(&account) {
        return Err(Rejection::UnknownAccount(account));
    }
    if until.is_some_and(|u| u > cx.now) {
        return Err(Rejection::Invalid {
            field: "until",
            reason: "is in the future".into(),
        });
    }
    let mut issued = close_if_elapsed(state, &account, cx.now);
    let p = &state.accounts[&account].period;
    // The period ends where the close says, after every charge in it (so periods never
    // overlap and each starts after the one before).
    let end = match until {
        None if p.charges > 0 && cx.now > p.start => Some(cx.now),
        Some(u) if p.charges > 0 && p.last_charge_at < u && u > p.start => Some(u),
        _ => None,
    };
    if let Some(end) = end {
        issue_usage_invoice(state, &account, end, cx.now);
        issued = true;
    }
    Ok(Outcome::PeriodClosed { issued })
}

fn endpoint_and_price<'c>(
    cx: &Ctx<'c>,
    endpoint: &EndpointId,
    account: &AccountId,
    at: Timestamp,
) -> Result<(&'c EndpointDef, &'c PriceVersion), Rejection> {
    let def = cx
        .catalog
        .endpoints
        .get(endpoint)
        .ok_or_else(|| Rejection::UnknownEndpoint(endpoint.clone()))?;
    let price = cx
        .catalog
        .price_at(endpoint, account, at)
        .ok_or_else(|| Rejection::NoPrice(endpoint.clone()))?;
    Ok((def, price))
}

pub(crate) fn submit(
    state: &mut BatchState,
    cx: &Ctx,
    request_id: RequestId,
    account: AccountId,
    api_key: Option<ApiKeyId>,
    endpoint: EndpointId,
    source: Source,
) -> Result<Outcome, Rejection> {
    not_a_runners_id("request_id", &request_id)?;
    if let Some(existing) = state.requests.get(&request_id) {
        if existing.source != source || existing.account != account || existing.endpoint != endpoint
        {
            return Err(Rejection::Conflict(format!(
                "request_id {request_id} was already used for another request"
            )));
        }
        return Ok(Outcome::Submitted {
            request: existing.clone(),
            replayed: true,
        });
    }
    let (_, price) = endpoint_and_price(cx, &endpoint, &account, cx.now)?;
    let acct = state.account_mut(&account)?;
    if let Some(reason) = acct.lock_reason() {
        return Err(Rejection::AccountLocked {
            account,
            balance: acct.credit.balance,
            reason,
        });
    }
    let record = RequestRecord {
        id: request_id,
        source,
        account,
        endpoint,
        api_key,
        price_version: price.id,
        status: RequestStatus::InQueue,
        submitted_at: cx.now,
        started_at: None,
        finished_at: None,
        hold: Nanos::ZERO,
        hold_expires_at: None,
        machine_type: None,
        num_gpus: 1,
        queue_ms: None,
        inference_ms: None,
        completion: None,
    };
    state.put_request(record.clone());
    Ok(Outcome::Submitted {
        request: record,
        replayed: false,
    })
}

/// The request `id` if it came from one of `sources` (the lifecycle calls never see a gateway
/// request, nor the gateway's a lifecycle one).
pub(crate) fn lookup<'s>(
    state: &'s BatchState,
    id: &RequestId,
    sources: &[Source],
) -> Result<&'s RequestRecord, Rejection> {
    state
        .requests
        .get(id)
        .filter(|r| sources.contains(&r.source))
        .ok_or_else(|| Rejection::UnknownRequest(id.clone()))
}

fn version<'c>(cx: &Ctx<'c>, req: &RequestRecord) -> Result<&'c PriceVersion, Rejection> {
    cx.catalog
        .version(req.price_version)
        .ok_or_else(|| Rejection::NoPrice(req.endpoint.clone()))
}

/// The percent discount of a request billed at `now` with the terms in force at `terms_at`
/// (its submission, or a usage event's timestamp); starts the month's subtotal anew when the
/// month changed.
fn discount_for(
    acct: &mut AccountState,
    def: &EndpointDef,
    now: Timestamp,
    terms_at: Timestamp,
) -> Option<Decimal> {
    roll_month(acct, now);
    percent_discount(acct, acct.discounts_at(terms_at), def, now)
}

/// Starts the month's subtotal (volume tiers) anew when a charge recorded at `now` falls in
/// another calendar month than the one it counts.
pub(crate) fn roll_month(acct: &mut AccountState, now: Timestamp) {
    let month = month_of(now);
    if acct.month != month {
        acct.month = month;
        acct.month_subtotal = Nanos::ZERO;
    }
}

/// The most GPUs one request may run on.
pub const MAX_GPUS: u32 = 64;

/// `n` if a request may run on that many GPUs: 1 to [`MAX_GPUS`].
pub fn num_gpus_in_range(n: u32) -> Result<u32, Rejection> {
    if (1..=MAX_GPUS).contains(&n) {
        Ok(n)
    } else {
        Err(Rejection::Invalid {
            field: "num_gpus",
            reason: format!("must be between 1 and {MAX_GPUS}, got {n}"),
        })
    }
}

/// The GPUs a request runs on: as reported, default 1.
fn gpus(reported: Option<u32>) -> Result<u32, Rejection> {
    num_gpus_in_range(reported.unwrap_or(1))
}

/// The percent discount a request to `def` billed at `now` gets: none for partner models, else
/// the account's flat percent or its volume tier for this month's subtotal so far.
pub fn percent_discount_at(
    acct: &AccountState,
    def: &EndpointDef,
    now: Timestamp,
) -> Option<Decimal> {
    percent_discount(acct, acct.discounts_at(now), def, now)
}

/// The percent `discounts` give a request to `def` billed at `now`.
fn percent_discount(
    acct: &AccountState,
    discounts: &Discounts,
    def: &EndpointDef,
    now: Timestamp,
) -> Option<Decimal> {
    if def.partner {
        return None;
    }
    let month_subtotal = if acct.month == month_of(now) {
        acct.month_subtotal
    } else {
        Nanos::ZERO
    };
    discounts.percent_for(month_subtotal)
}

pub(crate) fn start(
    state: &mut BatchState,
    cx: &Ctx,
    request_id: RequestId,
    source: Source,
    machine_type: Option<MachineType>,
    num_gpus: Option<u32>,
    hold_units: Option<Decimal>,
) -> Result<Outcome, Rejection> {
    let req = lookup(state, &request_id, &[source])?.clone();
    match req.status {
        RequestStatus::InQueue => {}
        RequestStatus::InProgress => {
            let acct = state.account_mut(&req.account)?;
            return Ok(Outcome::Started {
                hold: req.hold,
                limit: acct.concurrency_limit(cx.catalog),
                in_progress: acct.in_progress,
                replayed: true,
            });
        }
        status => {
            return Err(Rejection::WrongState {
                id: request_id,
                status,
                action: "start",
            })
        }
    }
    let num_gpus = gpus(num_gpus)?;
    if let Some(u) = hold_units {
        if u.is_sign_negative() || u > Decimal::from(crate::price::limits::MAX_BILLABLE_UNITS) {
            return Err(Rejection::Invalid {
                field: "hold_units",
                reason: "must be between 0 and 10^12".into(),
            });
        }
    }
    let def = cx
        .catalog
        .endpoints
        .get(&req.endpoint)
        .ok_or_else(|| Rejection::UnknownEndpoint(req.endpoint.clone()))?;
    let rule = &version(cx, &req)?.rule;
    let machine = machine_type.or_else(|| def.machine_type.clone());
    if let Some(m) = &machine {
        if !cx.catalog.machines.contains_key(m) {
            return Err(Rejection::UnknownMachine(m.clone()));
        }
    }
    let acct = state.account_mut(&req.account)?;
    // Priced as the bill will be: with the machine prices in force at submission.
    let machine_price = acct.machine_price_at(cx.catalog, machine.as_ref(), req.submitted_at);
    if let Some(reason) = acct.lock_reason() {
        return Err(Rejection::AccountLocked {
            account: req.account.clone(),
            balance: acct.credit.balance,
            reason,
        });
    }
    let limit = acct.concurrency_limit(cx.catalog);
    if acct.in_progress >= limit {
        return Err(Rejection::ConcurrencyLimit {
            limit,
            in_progress: acct.in_progress,
        });
    }
    // The hold is the estimate priced as the bill will be: same rule, same discount.
    let mut units = hold_units.unwrap_or(def.hold_units);
    if rule.unit == Unit::GpuSecond {
        units *= Decimal::from(num_gpus);
    }
    let subtotal = rule.estimate_units(units, machine_price)?;
    let mut probe = acct.clone();
    let percent = discount_for(&mut probe, def, cx.now, req.submitted_at);
    let hold = Charge::new(
        &Rated {
            quantity: units,
            unit_price: Decimal::ZERO,
            subtotal,
            blended: false,
        },
        percent,
    )?
    .total_nanos;
    // Spending limits: a block limit that the hold would pass refuses the start; the hold
    // counts toward every limit that applies once it is placed.
    let mut limits = Vec::new();
    if !acct.limits.is_empty() {
        let key = req.api_key.as_ref();
        limits::admit(&acct.limits, key, hold, cx.now).map_err(|e| {
            Rejection::SpendingLimitExceeded {
                account: req.account.clone(),
                limit_id: e.limit_id,
                period: e.period,
                amount: e.amount,
                spent: e.spent,
                held: e.held,
                required: hold,
                resets_at: e.resets_at,
            }
        })?;
        limits = acct.limits.clone();
        limits::hold(&mut limits, key, hold, cx.now)?;
    }
    let transfer = acct.credit.hold(hold).map_err(|e| match e {
        HoldError::InsufficientCredits {
            available,
            required,
        } => Rejection::InsufficientCredits {
            available,
            required,
        },
        HoldError::Money(m) => Rejection::Money(m),
    })?;
    if !acct.limits.is_empty() {
        acct.limits = limits;
    }
    acct.in_progress += 1;
    let in_progress = acct.in_progress;
    let account = req.account.clone();
    state.dirty_accounts.insert(account);
    state.record(transfer, Some(&request_id), cx.now);
    let timeout_ms = i64::from(def.hold_timeout_s) * 1000;
    state.put_request(RequestRecord {
        status: RequestStatus::InProgress,
        started_at: Some(cx.now),
        queue_ms: Some(cx.now.ms_since(req.submitted_at)),
        hold,
        hold_expires_at: Some(cx.now.plus_ms(timeout_ms)),
        machine_type: machine,
        num_gpus,
        ..req
    });
    Ok(Outcome::Started {
        hold,
        limit,
        in_progress,
        replayed: false,
    })
}

/// Rates a finished request, with the account's terms in force at `terms_at` (its discounts
/// and machine prices). Pure: reads the account only for its terms and discount position. `inference_seconds` is `None` when they are unknown
/// (a usage event that did not report them): they then count as 0, and a price that measures
/// them finds them missing. A successful output that lacks what the price measures is refused,
/// billed as one unit or as compute seconds, as the endpoint's `missing_units` says.
#[allow(clippy::too_many_arguments)]
fn rate_finished(
    cx: &Ctx,
    terms_at: Timestamp,
    acct: &mut AccountState,
    def: &EndpointDef,
    rule: &PriceRule,
    status_code: u16,
    output: Output,
    billable_units: Option<Decimal>,
    inference_seconds: Option<Decimal>,
    machine: Option<&MachineType>,
    num_gpus: u32,
) -> Result<(bool, String, Charge), Rejection> {
    let mut billing = billing_for(status_code, def.four_xx)?;
    let mut usage = Usage {
        output,
        billable_units,
        inference_seconds: inference_seconds.unwrap_or_default(),
        num_gpus,
        machine_price_per_second: acct.machine_price_at(cx.catalog, machine, terms_at),
    };
    // Validate even what will not be billed: bad input is refused, never silently accepted.
    usage.validate()?;
    if billing == Billing::Output && billable_units.is_none() {
        if let Some(mismatch) = rule.output_mismatch(&usage.output, inference_seconds.is_some()) {
            let refuse = |mismatch| Rejection::OutputMismatch {
                unit: rule.unit_label(),
                mismatch,
            };
            match def.missing_units {
                MissingUnits::Refuse => return Err(refuse(mismatch)),
                // One unit of a token price means nothing: refused as it is.
                MissingUnits::OneUnit if rule.tokens.is_some() => return Err(refuse(mismatch)),
                MissingUnits::OneUnit => usage.billable_units = Some(Decimal::ONE),
                MissingUnits::ComputeSeconds if inference_seconds.is_none() => {
                    return Err(refuse(OutputMismatch {
                        missing: "inference_seconds",
                        unexpected: vec![],
                    }))
                }
                MissingUnits::ComputeSeconds => billing = Billing::InferenceSeconds,
            }
        }
    }
    let (rule, billed) = match billing {
        Billing::Output => (rule.clone(), true),
        Billing::InferenceSeconds => (inference_seconds_rule(), true),
        Billing::Free => return Ok((false, rule.unit_label(), Charge::FREE)),
    };
    let usage = if billing == Billing::InferenceSeconds {
        Usage {
            billable_units: None,
            output: Output::default(),
            ..usage
        }
    } else {
        usage
    };
    let rated = rule.rate(&usage)?;
    let percent = discount_for(acct, def, cx.now, terms_at);
    let charge = Charge::new(&rated, percent)?;
    Ok((billed, rule.unit_label(), charge))
}

/// The status a billed cancellation is recorded with (nginx's "client closed request").
pub const CANCELLED_STATUS: u16 = 499;

/// How a completion is billed (a value passed down once, not stored: its size does not matter).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Rating {
    /// By the endpoint's price and the outcome policy for `status_code`.
    Rate {
        status_code: u16,
        output: Output,
        billable_units: Option<Decimal>,
        inference_seconds: Option<Decimal>,
    },
    /// Not at all, whatever the status (a gateway request whose every attempt failed).
    Unbilled { status_code: u16 },
    /// A running request cancelled on an endpoint that bills it
    /// ([`Cancellation::ComputeSeconds`](crate::catalog::Cancellation)): status 499, the seconds
    /// since its start at its machine's price.
    CancelledComputeSeconds,
}

pub(crate) fn complete(
    state: &mut BatchState,
    cx: &Ctx,
    request_id: RequestId,
    source: Source,
    rating: Rating,
) -> Result<Outcome, Rejection> {
    let req = lookup(state, &request_id, &[source])?.clone();
    let late = req.status == RequestStatus::Expired;
    match req.status {
        RequestStatus::InProgress => {}
        RequestStatus::Expired => {
            let def = cx.catalog.endpoints.get(&req.endpoint);
            if def.is_none_or(|d| d.late_completion == LateCompletion::Refuse) {
                return Err(Rejection::RequestExpired(request_id));
            }
        }
        RequestStatus::Completed | RequestStatus::Failed => {
            let completion = req
                .completion
                .clone()
                .expect("finished requests carry a completion");
            return Ok(Outcome::Completed {
                request: req,
                completion,
                replayed: true,
            });
        }
        status => {
            return Err(Rejection::WrongState {
                id: request_id,
                status,
                action: "complete",
            })
        }
    }
    let def = cx
        .catalog
        .endpoints
        .get(&req.endpoint)
        .ok_or_else(|| Rejection::UnknownEndpoint(req.endpoint.clone()))?;
    let rule = &version(cx, &req)?.rule;
    // Measured from start to complete; for a late completion, to when its hold expired (the
    // time tollgate knew it ran), so a runner that was silent is not billed the silence.
    let end = if late {
        req.finished_at.unwrap_or(cx.now)
    } else {
        cx.now
    };
    let measured_ms = end.ms_since(req.started_at.unwrap_or(end));
    let acct = state.account_mut(&req.account)?;
    let mut next = acct.clone();
    let (status_code, inference, (billed, unit, charge)) = match rating {
        Rating::Rate {
            status_code,
            output,
            billable_units,
            inference_seconds,
        } => {
            let inference = inference_seconds.unwrap_or_else(|| ms_to_seconds(measured_ms));
            let rated = rate_finished(
                cx,
                req.submitted_at,
                &mut next,
                def,
                rule,
                status_code,
                output,
                billable_units,
                Some(inference),
                req.machine_type.as_ref(),
                req.num_gpus,
            )?;
            (status_code, inference, rated)
        }
        Rating::CancelledComputeSeconds => {
            let inference = ms_to_seconds(measured_ms);
            let billed_as = EndpointDef {
                four_xx: FourXxPolicy::InferenceSeconds,
                ..def.clone()
            };
            let rated = rate_finished(
                cx,
                req.submitted_at,
                &mut next,
                &billed_as,
                rule,
                CANCELLED_STATUS,
                Output::default(),
                None,
                Some(inference),
                req.machine_type.as_ref(),
                req.num_gpus,
            )?;
            (CANCELLED_STATUS, inference, rated)
        }
        Rating::Unbilled { status_code } => {
            crate::policy::final_status(status_code)?;
            (
                status_code,
                ms_to_seconds(measured_ms),
                (false, rule.unit_label(), Charge::FREE),
            )
        }
    };
    let mut accrued = None;
    let transfers = if late {
        // The hold was voided and the slot freed when it expired: the work done is charged
        // as a usage event is, without a hold.
        if billed {
            accrued = next.record_charge(&charge, cx.now)?;
            vec![next.credit.charge(charge.total_nanos)?]
        } else {
            vec![]
        }
    } else {
        next.in_progress = next.in_progress.saturating_sub(1);
        if billed {
            accrued = next.record_charge(&charge, cx.now)?;
            next.credit.settle(req.hold, charge.total_nanos)?.1
        } else {
            vec![next.credit.release(req.hold, TransferKind::Void)?]
        }
    };
    // Spending limits: the hold no longer runs (a late completion's was released when it
    // expired), and the charge is spent in the period of `now`.
    let mut notices = Vec::new();
    if !next.limits.is_empty() {
        let key = req.api_key.as_ref();
        if !late {
            limits::release(&mut next.limits, key, req.hold, cx.now)?;
        }
        if billed {
            notices = limits::spend(&mut next.limits, key, charge.total_nanos, None, cx.now)?;
        }
    }
    let completion = Completion {
        status_code,
        billed,
        unit,
        charge,
        balance_after: next.credit.balance,
        late,
    };
    *acct = next;
    state.dirty_accounts.insert(req.account.clone());
    state.notify(&req.account, cx.now, notices);
    for t in transfers {
        state.record(t, Some(&request_id), cx.now);
    }
    let done = RequestRecord {
        status: if status_code < 400 {
            RequestStatus::Completed
        } else {
            RequestStatus::Failed
        },
        finished_at: Some(cx.now),
        inference_ms: Some(seconds_to_ms(inference)),
        hold_expires_at: None,
        completion: Some(completion.clone()),
        ..req
    };
    if billed {
        state.line_items.push(line_item(&done, &completion, cx.now));
        state.accrue(accrued);
    }
    state.completed.push(done.id.clone());
    state.put_request(done.clone());
    Ok(Outcome::Completed {
        request: done,
        completion,
        replayed: false,
    })
}

fn line_item(req: &RequestRecord, c: &Completion, at: Timestamp) -> LineItem {
    LineItem {
        request_id: req.id.clone(),
        account: req.account.clone(),
        endpoint: req.endpoint.clone(),
        api_key: req.api_key.clone(),
        price_version: req.price_version,
        unit: c.unit.clone(),
        charge: c.charge.clone(),
        status_code: c.status_code,
        billed_at: at,
        queue_ms: req.queue_ms,
        inference_ms: req.inference_ms,
    }
}

/// Cancel (`Void`) or expire (`Expire`) a request: nothing billed, hold and slot released.
pub(crate) fn release(
    state: &mut BatchState,
    cx: &Ctx,
    request_id: RequestId,
    kind: TransferKind,
    sources: &[Source],
) -> Result<Outcome, Rejection> {
    let req = lookup(state, &request_id, sources)?.clone();
    let expiring = kind == TransferKind::Expire;
    let target = if expiring {
        RequestStatus::Expired
    } else {
        RequestStatus::Cancelled
    };
    match req.status {
        RequestStatus::InProgress => {
            if expiring && req.hold_expires_at.is_none_or(|t| t > cx.now) {
                return Ok(Outcome::Expired { expired: false });
            }
        }
        RequestStatus::InQueue if !expiring => {}
        s if s == target => {
            return Ok(if expiring {
                Outcome::Expired { expired: false }
            } else {
                Outcome::Cancelled { replayed: true }
            })
        }
        _ if expiring => return Ok(Outcome::Expired { expired: false }),
        status => {
            return Err(Rejection::WrongState {
                id: request_id,
                status,
                action: "cancel",
            })
        }
    }
    if req.status == RequestStatus::InProgress {
        let acct = state.account_mut(&req.account)?;
        let mut next = acct.clone();
        let t = next.credit.release(req.hold, kind)?;
        next.in_progress = next.in_progress.saturating_sub(1);
        limits::release(&mut next.limits, req.api_key.as_ref(), req.hold, cx.now)?;
        *acct = next;
        state.dirty_accounts.insert(req.account.clone());
        state.record(t, Some(&request_id), cx.now);
    }
    state.put_request(RequestRecord {
        status: target,
        finished_at: Some(cx.now),
        hold_expires_at: None,
        ..req
    });
    Ok(if expiring {
        Outcome::Expired { expired: true }
    } else {
        Outcome::Cancelled { replayed: false }
    })
}

#[allow(clippy::too_many_arguments)]
fn purchase(
    state: &mut BatchState,
    cx: &Ctx,
    account: AccountId,
    purchase_id: PurchaseId,
    amount: Nanos,
    paid: bool,
    expires_at: Option<Timestamp>,
) -> Result<Outcome, Rejection> {
    if crate::payments::is_auto_id(&purchase_id)
        && !state
            .purchases
            .contains_key(&(account.clone(), purchase_id.clone()))
    {
        // An auto top-up's payment becomes the purchase of its id: an operator's purchase
        // must not take it (the payment would find it credited, or in conflict).
        return Err(Rejection::Invalid {
            field: "purchase_id",
            reason: format!(
                "`{}...` is kept for the purchases of auto top-ups",
                crate::payments::AUTO_PREFIX
            ),
        });
    }
    let planned = plan_purchase(
        state,
        cx.catalog,
        cx.now,
        &account,
        &purchase_id,
        amount,
        paid,
        expires_at,
    )?;
    let purchase = match planned {
        PlannedPurchase::Replay(first) => {
            return Ok(Outcome::Purchased {
                purchase: first,
                replayed: true,
            })
        }
        PlannedPurchase::New {
            account,
            record,
            transfer,
        } => record_purchase(state, cx.now, *account, record, transfer),
    };
    Ok(Outcome::Purchased {
        purchase,
        replayed: false,
    })
}

/// A purchase decided by [`plan_purchase`], not yet recorded.
pub(crate) enum PlannedPurchase {
    /// The purchase id was used before, for the same purchase: its first answer.
    Replay(PurchaseRecord),
    /// The account with the credits added (a copy: the caller may change it further), the
    /// purchase's record and its transfer, for [`record_purchase`].
    New {
        account: Box<AccountState>,
        record: PurchaseRecord,
        transfer: Transfer,
    },
}

/// Decides a purchase without changing `state`: the answer of `Op::Purchase`, which a paid
/// top-up shares (its id is the purchase's), so a payment is credited once whatever reports
/// it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan_purchase(
    state: &BatchState,
    catalog: &Catalog,
    now: Timestamp,
    account: &AccountId,
    purchase_id: &PurchaseId,
    amount: Nanos,
    paid: bool,
    expires_at: Option<Timestamp>,
) -> Result<PlannedPurchase, Rejection> {
    let key = (account.clone(), purchase_id.clone());
    if let Some(first) = state.purchases.get(&key) {
        if first.amount != amount
            || first.paid != paid
            || expires_at.is_some_and(|e| first.expires_at != Some(e))
        {
            return Err(Rejection::Conflict(format!(
                "purchase_id {purchase_id} was already used with a different amount, kind or expiry"
            )));
        }
        return Ok(PlannedPurchase::Replay(first.clone()));
    }
    if amount <= Nanos::ZERO || amount > crate::money::MAX_AMOUNT {
        return Err(Rejection::Invalid {
            field: "amount_usd",
            reason: format!("must be positive and at most {}", crate::money::MAX_AMOUNT),
        });
    }
    if expires_at.is_some_and(|e| e <= now) {
        return Err(Rejection::Invalid {
            field: "expires_at",
            reason: "must be in the future".into(),
        });
    }
    let expires_at = expires_at.or(paid.then(|| now.plus_ms(PAID_CREDITS_EXPIRE_MS)));
    let acct = state
        .accounts
        .get(account)
        .ok_or_else(|| Rejection::UnknownAccount(account.clone()))?;
    let mut next = acct.clone();
    let balance_before = next.credit.balance;
    let transfer = next.credit.add_credits(amount, paid)?;
    next.add_lot(
        Lot {
            purchase_id: purchase_id.clone(),
            remaining: amount,
            expires_at,
            created_at: now,
            expiry_noticed: false,
        },
        balance_before,
    );
    if paid {
        next.paid_lifetime = next.paid_lifetime.checked_add(amount)?;
        next.paid_28d = next.paid_28d.checked_add(amount)?;
    }
    let record = PurchaseRecord {
        account: account.clone(),
        purchase_id: purchase_id.clone(),
        amount,
        paid,
        created_at: now,
        expires_at,
        balance_after: next.credit.balance,
        concurrency_limit_after: next.concurrency_limit(catalog),
        locked_after: next.is_locked(),
        refunded: Nanos::ZERO,
        disputed: Nanos::ZERO,
    };
    Ok(PlannedPurchase::New {
        account: Box::new(next),
        record,
        transfer,
    })
}

/// Records a purchase [`plan_purchase`] decided: `acct` becomes the account, and its transfer,
/// its `purchase.succeeded` and, when paid, its top-up invoice are recorded. Returns the
/// record.
pub(crate) fn record_purchase(
    state: &mut BatchState,
    now: Timestamp,
    acct: AccountState,
    record: PurchaseRecord,
    transfer: Transfer,
) -> PurchaseRecord {
    let account = record.account.clone();
    state.accounts.insert(account.clone(), acct);
    state.dirty_accounts.insert(account.clone());
    state.transfers.push(TransferRecord {
        transfer,
        request_id: None,
        purchase_id: Some(record.purchase_id.clone()),
        at: now,
    });
    state.purchases.insert(
        (account.clone(), record.purchase_id.clone()),
        record.clone(),
    );
    state.new_purchases.push(record.clone());
    state.event(
        &account,
        now,
        EventData::PurchaseSucceeded {
            purchase_id: record.purchase_id.clone(),
            amount_nano_usd: record.amount,
            kind: if record.paid { "paid" } else { "free" }.to_string(),
            balance_nano_usd: record.balance_after,
            expires_at: record.expires_at,
        },
    );
    if record.paid {
        state.issue_invoice(NewInvoice {
            account,
            kind: InvoiceKind::TopUp,
            status: InvoiceStatus::Paid,
            issued_at: now,
            period_start: now,
            period_end: now,
            subtotal: record.amount,
            discount: Nanos::ZERO,
            total: record.amount,
            purchase_id: Some(record.purchase_id.clone()),
        });
    }
    record
}

/// Expires what is left of the account's lots whose date has passed, lot by lot, never
/// below what open holds reserve.
fn expire_credits(
    state: &mut BatchState,
    cx: &Ctx,
    account: AccountId,
) -> Result<Outcome, Rejection> {
    let acct = state.account_mut(&account)?;
    let mut next = acct.clone();
    let mut expired = Nanos::ZERO;
    let mut transfers = Vec::new();
    for i in 0..next.lots.len() {
        let lot = &next.lots[i];
        if lot.remaining <= Nanos::ZERO || lot.expires_at.is_none_or(|e| e > cx.now) {
            continue;
        }
        let (due, purchase_id) = (lot.remaining, lot.purchase_id.clone());
        if let Some(t) = next.credit.expire_credits(due)? {
            next.lots[i].remaining = next.lots[i].remaining.checked_sub(t.amount)?;
            expired = expired.checked_add(t.amount)?;
            transfers.push((t, purchase_id));
        }
    }
    if expired > Nanos::ZERO {
        *acct = next;
        state.dirty_accounts.insert(account);
        for (t, purchase_id) in transfers {
            state.transfers.push(TransferRecord {
                transfer: t,
                request_id: None,
                purchase_id: Some(purchase_id),
                at: cx.now,
            });
        }
    }
    Ok(Outcome::CreditsExpired { amount: expired })
}

/// Records `credits.expiring` once per lot, when what is left of it expires within
/// [`EXPIRY_NOTICE_MS`].
fn notice_expiring_credits(
    state: &mut BatchState,
    cx: &Ctx,
    account: AccountId,
) -> Result<Outcome, Rejection> {
    let horizon = cx.now.plus_ms(EXPIRY_NOTICE_MS);
    let acct = state.account_mut(&account)?;
    let mut due = Vec::new();
    for lot in &mut acct.lots {
        let Some(expires_at) = lot.expires_at else {
            continue;
        };
        if lot.expiry_noticed
            || lot.remaining <= Nanos::ZERO
            || expires_at <= cx.now
            || expires_at > horizon
        {
            continue;
        }
        lot.expiry_noticed = true;
        due.push(EventData::CreditsExpiring {
            purchase_id: lot.purchase_id.clone(),
            remaining_nano_usd: lot.remaining,
            expires_at,
        });
    }
    let lots = due.len();
    if lots > 0 {
        state.dirty_accounts.insert(account.clone());
    }
    for data in due {
        state.event(&account, cx.now, data);
    }
    Ok(Outcome::ExpiryNoticed { lots })
}

/// Refuses a request id (or usage event id) under [`crate::serverless::REQUEST_ID_PREFIX`],
/// the request id of serverless runner time: its line items would mix with a runner's.
fn not_a_runners_id(field: &'static str, id: &RequestId) -> Result<(), Rejection> {
    let prefix = crate::serverless::REQUEST_ID_PREFIX;
    if id.as_str().starts_with(prefix) {
        return Err(Rejection::Invalid {
            field,
            reason: format!(
                "may not start with `{prefix}`: that prefix is the request id of serverless \
                 runner time"
            ),
        });
    }
    Ok(())
}

fn usage_event(state: &mut BatchState, cx: &Ctx, e: UsageEvent) -> Result<Outcome, Rejection> {
    not_a_runners_id("event_id", &e.event_id)?;
    if let Some(existing) = state.requests.get(&e.event_id) {
        if existing.source != Source::Event
            || existing.account != e.account
            || existing.endpoint != e.endpoint
        {
            return Err(Rejection::Conflict(format!(
                "event_id {} was already used for another request",
                e.event_id
            )));
        }
        return Ok(Outcome::Completed {
            request: existing.clone(),
            completion: existing.completion.clone().expect("events are settled"),
            replayed: true,
        });
    }
    if e.timestamp > cx.now.plus_ms(MAX_EVENT_SKEW_MS) {
        return Err(Rejection::Invalid {
            field: "timestamp",
            reason: "is in the future".into(),
        });
    }
    let num_gpus = gpus(e.num_gpus)?;
    let (def, price) = endpoint_and_price(cx, &e.endpoint, &e.account, e.timestamp)?;
    let machine = e.machine_type.clone().or_else(|| def.machine_type.clone());
    if let Some(m) = &machine {
        if !cx.catalog.machines.contains_key(m) {
            return Err(Rejection::UnknownMachine(m.clone()));
        }
    }
    let inference = e.inference_seconds.unwrap_or_default();
    let queue = e.queue_seconds.unwrap_or_default();
    if queue.is_sign_negative() || queue > Decimal::from(crate::price::limits::MAX_SECONDS) {
        return Err(Rejection::Invalid {
            field: "queue_seconds",
            reason: "must be between 0 and one year".into(),
        });
    }
    let acct = state.account_mut(&e.account)?;
    let mut next = acct.clone();
    let (billed, unit, charge) = rate_finished(
        cx,
        e.timestamp,
        &mut next,
        def,
        &price.rule,
        e.status_code,
        e.output,
        e.billable_units,
        e.inference_seconds,
        machine.as_ref(),
        num_gpus,
    )?;
    let mut transfer = None;
    let mut accrued = None;
    let mut notices = Vec::new();
    if billed {
        accrued = next.record_charge(&charge, cx.now)?;
        transfer = Some(next.credit.charge(charge.total_nanos)?);
        // Spending limits: counted in the period of `now`, unless the event happened before
        // that period began.
        if !next.limits.is_empty() {
            notices = limits::spend(
                &mut next.limits,
                e.api_key.as_ref(),
                charge.total_nanos,
                Some(e.timestamp),
                cx.now,
            )?;
        }
    }
    let completion = Completion {
        status_code: e.status_code,
        billed,
        unit,
        charge,
        balance_after: next.credit.balance,
        late: false,
    };
    *acct = next;
    state.dirty_accounts.insert(e.account.clone());
    state.notify(&e.account, cx.now, notices);
    if let Some(t) = transfer {
        state.record(t, Some(&e.event_id), cx.now);
    }
    let record = RequestRecord {
        id: e.event_id,
        source: Source::Event,
        account: e.account,
        endpoint: e.endpoint,
        api_key: e.api_key,
        price_version: price.id,
        status: if e.status_code < 400 {
            RequestStatus::Completed
        } else {
            RequestStatus::Failed
        },
        submitted_at: e.timestamp,
        started_at: None,
        finished_at: Some(e.timestamp),
        hold: Nanos::ZERO,
        hold_expires_at: None,
        machine_type: machine,
        num_gpus,
        queue_ms: Some(seconds_to_ms(queue)),
        inference_ms: Some(seconds_to_ms(inference)),
        completion: Some(completion.clone()),
    };
    if billed {
        state
            .line_items
            .push(line_item(&record, &completion, record.submitted_at));
        state.accrue(accrued);
    }
    state.completed.push(record.id.clone());
    state.put_request(record.clone());
    Ok(Outcome::Completed {
        request: record,
        completion,
        replayed: false,
    })
}

/// A reason as an operator gives it: 1 to [`MAX_REASON_CHARS`] characters, no control
/// characters.
fn reason_text(reason: &str) -> Result<(), Rejection> {
    let n = reason.chars().count();
    if reason.trim().is_empty() || n > MAX_REASON_CHARS || reason.chars().any(char::is_control) {
        return Err(Rejection::Invalid {
            field: "reason",
            reason: format!(
                "must be 1 to {MAX_REASON_CHARS} characters, not blank, without control \
                 characters"
            ),
        });
    }
    Ok(())
}

fn adjust(
    state: &mut BatchState,
    cx: &Ctx,
    account: AccountId,
    adjustment_id: AdjustmentId,
    amount: Nanos,
    reason: String,
) -> Result<Outcome, Rejection> {
    let key = (account.clone(), adjustment_id.clone());
    if let Some(first) = state.adjustments.get(&key) {
        if first.amount != amount {
            return Err(Rejection::Conflict(format!(
                "adjustment_id {adjustment_id} was already used with a different amount"
            )));
        }
        return Ok(Outcome::Adjusted {
            adjustment: first.clone(),
            replayed: true,
        });
    }
    if amount == Nanos::ZERO || amount.0.unsigned_abs() > crate::money::MAX_AMOUNT.0.unsigned_abs()
    {
        return Err(Rejection::Invalid {
            field: "amount_usd",
            reason: format!(
                "must not be zero, and at most {} either way",
                crate::money::MAX_AMOUNT
            ),
        });
    }
    reason_text(&reason)?;
    let acct = state.account_mut(&account)?;
    let mut next = acct.clone();
    let balance_before = next.credit.balance;
    let t = next.credit.adjust(amount)?;
    if amount.is_negative() {
        // A debit spends credits as a charge does.
        next.spend_lots(Nanos(-amount.0));
    } else {
        // A credit repays what is owed first; the rest never expires.
        let debt = (-balance_before.0).max(0);
        next.adjusted_credit = next
            .adjusted_credit
            .checked_add(Nanos((amount.0 - debt).max(0)))?;
    }
    let record = AdjustmentRecord {
        account: account.clone(),
        adjustment_id,
        amount,
        reason,
        created_at: cx.now,
        balance_after: next.credit.balance,
        locked_after: next.is_locked(),
    };
    *acct = next;
    state.dirty_accounts.insert(account);
    state.transfers.push(TransferRecord {
        transfer: t,
        request_id: None,
        purchase_id: None,
        at: cx.now,
    });
    state.adjustments.insert(key, record.clone());
    state.new_adjustments.push(record.clone());
    Ok(Outcome::Adjusted {
        adjustment: record,
        replayed: false,
    })
}

fn lock_disputed(
    state: &mut BatchState,
    cx: &Ctx,
    account: AccountId,
) -> Result<Outcome, Rejection> {
    let acct = state.account_mut(&account)?;
    let changed = acct.disputed_since.is_none();
    if changed {
        acct.disputed_since = Some(cx.now);
        state.dirty_accounts.insert(account.clone());
    }
    Ok(Outcome::LockChanged {
        lock_reason: state.accounts[&account].lock_reason(),
        changed,
    })
}

fn lift_dispute(
    state: &mut BatchState,
    account: AccountId,
    reason: String,
) -> Result<Outcome, Rejection> {
    reason_text(&reason)?;
    let acct = state.account_mut(&account)?;
    if acct.disputed_since.is_none() {
        // Nothing to lift (a repeat finds the same): whatever lock is left is the balance's.
        return Ok(Outcome::LockChanged {
            lock_reason: acct.lock_reason(),
            changed: false,
        });
    }
    acct.disputed_since = None;
    // Every dispute that held the lock stops counting: the epoch moves on, so a dispute that
    // locked before this unlock cannot lift a later one's lock when it is won.
    acct.payment.dispute_locks = 0;
    acct.payment.dispute_epoch = acct.payment.dispute_epoch.saturating_add(1);
    let lock_reason = acct.lock_reason();
    state.dirty_accounts.insert(account);
    Ok(Outcome::LockChanged {
        lock_reason,
        changed: true,
    })
}
