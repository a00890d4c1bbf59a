//! Payments through the payment provider (API.md section 7): top-ups (a checkout the customer
//! pays, or an automatic top-up charged off-session), what the provider tells of them
//! afterwards (paid, failed, refunded, disputed), operator refunds with their credit notes,
//! and the auto top-up rule with its decision, taken in the write path.
//!
//! The provider's events are applied as **states, not deltas**: a refund event carries the
//! charge's cumulative refunded amount and a dispute event the dispute's status, and the core
//! moves the balance by the difference between what the provider says now and what was already
//! applied (kept on the purchase and the dispute). A repeated, late or reordered event
//! therefore takes nothing twice, and a refund or dispute told before the payment itself is
//! kept on the top-up (or its dispute) and applied by the payment when it arrives.
//!
//! A top-up's id is also the id of the purchase its payment becomes (`Op::Purchase`'s
//! idempotency), so a payment is credited once whatever events report it.

use serde::{Deserialize, Serialize};

use crate::ids::{AccountId, PurchaseId};
use crate::money::Nanos;
use crate::time::Timestamp;

/// How a top-up is paid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopUpKind {
    /// The customer pays on the provider's checkout page.
    Checkout,
    /// Charged off-session with the saved payment method by the auto top-up rule.
    Auto,
}

impl TopUpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TopUpKind::Checkout => "checkout",
            TopUpKind::Auto => "auto",
        }
    }
    pub fn parse(s: &str) -> Option<TopUpKind> {
        match s {
            "checkout" => Some(TopUpKind::Checkout),
            "auto" => Some(TopUpKind::Auto),
            _ => None,
        }
    }
}

/// Where a top-up stands. `AwaitingPayment` → `Succeeded` (credited, once) or `Failed`
/// (nothing credited); a failed checkout top-up that is paid after all (an asynchronous
/// payment method that succeeded late) becomes `Succeeded`: the provider's payment is the truth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopUpStatus {
    AwaitingPayment,
    Succeeded,
    Failed,
}

impl TopUpStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TopUpStatus::AwaitingPayment => "awaiting_payment",
            TopUpStatus::Succeeded => "succeeded",
            TopUpStatus::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<TopUpStatus> {
        match s {
            "awaiting_payment" => Some(TopUpStatus::AwaitingPayment),
            "succeeded" => Some(TopUpStatus::Succeeded),
            "failed" => Some(TopUpStatus::Failed),
            _ => None,
        }
    }
}

/// One top-up: stored in `top_ups`, keyed by `(account, top_up_id)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopUpRecord {
    pub account: AccountId,
    /// Also the id of the purchase its payment becomes.
    pub top_up_id: PurchaseId,
    pub kind: TopUpKind,
    pub amount: Nanos,
    pub status: TopUpStatus,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The provider's checkout session (`cs_...`), once created (checkout top-ups).
    pub checkout_session: Option<String>,
    /// Where the customer pays (checkout top-ups).
    pub checkout_url: Option<String>,
    /// The provider's payment (`pi_...`), once known: refunds and disputes name it.
    pub payment_intent: Option<String>,
    /// The charge's cumulative refunded amount as the provider last told it (a refund told
    /// before the payment waits here and is applied when the payment arrives).
    pub provider_refunded: Nanos,
    /// Why it failed, in the provider's words (`card_declined`, `authentication_required`, ...).
    pub failure: Option<String>,
}

/// A dispute's state as the provider tells it. `Won` and `Lost` are final: a later event with
/// an open status (a late or reordered one) changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisputeStatus {
    /// Opened, awaiting evidence or under review: the amount is taken and the account locked.
    Open,
    /// Decided for the platform: the amount is given back and the dispute's lock lifted.
    Won,
    /// Decided for the customer: the amount stays taken and the lock stays until an operator
    /// unlocks the account.
    Lost,
}

impl DisputeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DisputeStatus::Open => "open",
            DisputeStatus::Won => "won",
            DisputeStatus::Lost => "lost",
        }
    }
    pub fn parse(s: &str) -> Option<DisputeStatus> {
        match s {
            "open" => Some(DisputeStatus::Open),
            "won" => Some(DisputeStatus::Won),
            "lost" => Some(DisputeStatus::Lost),
            _ => None,
        }
    }
    pub fn is_final(self) -> bool {
        !matches!(self, DisputeStatus::Open)
    }
}

/// One dispute of a top-up's payment: stored in `disputes`, keyed by `(account, dispute_id)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisputeRecord {
    pub account: AccountId,
    /// The provider's id (`dp_...`).
    pub dispute_id: String,
    /// The top-up (and purchase) whose payment is disputed.
    pub top_up_id: PurchaseId,
    /// The disputed amount, as the provider last told it.
    pub amount: Nanos,
    pub status: DisputeStatus,
    /// What is taken from the balance for it now (0 before the payment is credited, and after
    /// it is won).
    pub taken: Nanos,
    /// The account's dispute epoch (see [`PaymentProfile::dispute_epoch`]) at which this
    /// dispute locked the account, while it counts in [`PaymentProfile::dispute_locks`].
    pub locking_epoch: Option<u32>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A refund the operator asked for: stored in `refunds`, keyed by `(account, refund_id)`, with
/// the answer it got (a repeat returns it and moves nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundRecord {
    pub account: AccountId,
    pub refund_id: PurchaseId,
    pub purchase_id: PurchaseId,
    /// What the operator asked to refund.
    pub amount: Nanos,
    /// What this refund took from the balance (for a provider refund, the newly refunded part
    /// of the charge's cumulative amount: 0 when its event was applied first).
    pub taken: Nanos,
    /// The provider's refund (`re_...`), for a purchase paid through it.
    pub provider_reference: Option<String>,
    pub created_at: Timestamp,
    pub balance_after: Nanos,
}

/// The provider's side of an account, stored with the account (`accounts.payment`, JSON;
/// empty for an account that never paid through the provider).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentProfile {
    /// The provider's customer (`cus_...`), created once per account and reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    /// The payment method saved for off-session charges (`pm_...`), when the customer agreed
    /// at a checkout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_top_up: Option<AutoTopUp>,
    /// How many disputes hold the account's `payment_disputed` lock: open ones, and lost ones
    /// until an operator unlocks. A won dispute that locked in the current epoch lowers it; at
    /// 0 the lock lifts.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dispute_locks: u32,
    /// Raised by each operator unlock (which sets `dispute_locks` to 0): a dispute that locked
    /// in an earlier epoch no longer counts, so its later resolution cannot lift a newer
    /// dispute's lock.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dispute_epoch: u32,
    /// The number of the last auto top-up (its id is `auto-<n>`).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub auto_seq: u64,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// Why an auto top-up rule is paused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PausedReason {
    /// The bank asked the customer to authenticate a charge (`authentication_required`): only
    /// the customer can, so the rule waits for them (a checkout, then enabling it again).
    AuthenticationRequired,
    /// [`MAX_FAILURES`] charges in a row failed.
    RepeatedFailures,
}

impl PausedReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PausedReason::AuthenticationRequired => "authentication_required",
            PausedReason::RepeatedFailures => "repeated_failures",
        }
    }
}

/// Failures in a row after which the rule pauses.
pub const MAX_FAILURES: u32 = 3;

/// An account's auto top-up rule and its state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoTopUp {
    pub enabled: bool,
    pub threshold: Nanos,
    pub amount: Nanos,
    pub max_per_month: Nanos,
    /// `None`: active.
    #[serde(default)]
    pub paused: Option<PausedReason>,
    /// The auto top-up started and not yet paid or failed (never two in flight).
    #[serde(default)]
    pub in_flight: Option<PurchaseId>,
    /// The UTC month (`yyyymm`) `month_total` counts.
    #[serde(default)]
    pub month: i32,
    /// Auto top-ups of `month` in flight or paid (a failed one is taken off): the monthly cap
    /// counts these.
    #[serde(default)]
    pub month_total: Nanos,
    /// How many auto top-ups of this month succeeded (shown by `GET`).
    #[serde(default)]
    pub month_count: u32,
    /// Failures in a row.
    #[serde(default)]
    pub failures: u32,
    /// No new auto top-up before this time (a declined charge waits `retry_after`).
    #[serde(default)]
    pub not_before: Option<Timestamp>,
}

/// The deployment's top-up settings the core applies (`[top_ups]`), set by the engine on each
/// batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopUpSettings {
    pub min: Nanos,
    pub max: Nanos,
    /// How long a declined auto top-up waits before the next one may start.
    pub retry_after_ms: i64,
}

impl Default for TopUpSettings {
    fn default() -> Self {
        TopUpSettings {
            min: Nanos(5_000_000_000),
            max: Nanos(10_000_000_000_000),
            retry_after_ms: 3_600_000,
        }
    }
}

/// What a provider event (or the provider's answer to a call) says happened to a top-up's
/// payment. The edge translates the provider's events into these; the core applies them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PaymentEffect {
    /// The payment of `top_up_id` succeeded for `amount` (the provider's, checked against the
    /// top-up's: a different amount credits nothing and fails the top-up). Credits it once
    /// (an `Op::Purchase`, paid, with its invoice), then applies what the top-up and its
    /// disputes already hold (a refund or dispute told first). Saves `payment_method` for
    /// off-session charges when given (the customer agreed at checkout).
    Paid {
        top_up_id: PurchaseId,
        amount: Nanos,
        payment_intent: Option<String>,
        payment_method: Option<String>,
    },
    /// The payment of `top_up_id` failed (declined, expired, authentication required). A
    /// top-up already paid is left as it is. For an auto top-up: the rule's `in_flight` clears,
    /// its amount leaves `month_total`, `failures` rises; `needs_customer` pauses the rule
    /// (`AuthenticationRequired`), [`MAX_FAILURES`] in a row pause it (`RepeatedFailures`);
    /// else the next may start after `retry_after_ms`.
    Failed {
        top_up_id: PurchaseId,
        reason: String,
        needs_customer: bool,
    },
    /// The charge of `top_up_id` is now refunded `refunded_total` in all (cumulative): takes
    /// back what exceeds what was already taken, issues a credit note for it.
    Refunded {
        top_up_id: PurchaseId,
        refunded_total: Nanos,
    },
    /// Dispute `dispute_id` of `top_up_id`'s payment is now `status` for `amount`.
    Disputed {
        top_up_id: PurchaseId,
        dispute_id: String,
        amount: Nanos,
        status: DisputeStatus,
    },
    /// The checkout session of `top_up_id` was created: its id and URL (recorded on the
    /// top-up).
    CheckoutCreated {
        top_up_id: PurchaseId,
        session: String,
        url: String,
    },
}

/// The provider's event that carried an effect: applied once per id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderEvent {
    /// The provider's event id (`evt_...`).
    pub event_id: String,
    /// The provider's type (`checkout.session.completed`, ...).
    pub event_type: String,
}

/// An auto top-up rule as the customer sets it (`PUT /v1/account/auto-top-up`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AutoTopUpRule {
    pub enabled: bool,
    pub threshold: Nanos,
    pub amount: Nanos,
    pub max_per_month: Nanos,
}

/// What the provider answered an operator's refund of a purchase paid through it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderRefund {
    /// The provider's refund (`re_...`).
    pub reference: String,
    /// The charge's cumulative refunded amount after it.
    pub refunded_total: Nanos,
}

use crate::catalog::Catalog;
use crate::machine::{BatchState, Outcome, Rejection};

/// [`crate::machine::Op::CreateTopUp`].
pub(crate) fn create_top_up(
    _state: &mut BatchState,
    _now: Timestamp,
    _account: AccountId,
    _top_up_id: PurchaseId,
    _amount: Nanos,
) -> Result<Outcome, Rejection> {
    todo!("payments: create_top_up")
}

/// [`crate::machine::Op::Payment`].
pub(crate) fn apply_payment(
    _state: &mut BatchState,
    _catalog: &Catalog,
    _now: Timestamp,
    _account: AccountId,
    _event: Option<ProviderEvent>,
    _effect: PaymentEffect,
) -> Result<Outcome, Rejection> {
    todo!("payments: apply_payment")
}

/// [`crate::machine::Op::Refund`].
pub(crate) fn refund(
    _state: &mut BatchState,
    _now: Timestamp,
    _account: AccountId,
    _purchase_id: PurchaseId,
    _refund_id: PurchaseId,
    _amount: Nanos,
    _provider: Option<ProviderRefund>,
) -> Result<Outcome, Rejection> {
    todo!("payments: refund")
}

/// [`crate::machine::Op::SetAutoTopUp`].
pub(crate) fn set_auto_top_up(
    _state: &mut BatchState,
    _now: Timestamp,
    _account: AccountId,
    _rule: AutoTopUpRule,
) -> Result<Outcome, Rejection> {
    todo!("payments: set_auto_top_up")
}

/// [`crate::machine::Op::SetPaymentCustomer`].
pub(crate) fn set_customer(
    _state: &mut BatchState,
    _account: AccountId,
    _customer: String,
) -> Result<Outcome, Rejection> {
    todo!("payments: set_customer")
}
