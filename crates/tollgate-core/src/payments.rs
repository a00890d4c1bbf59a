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
    /// A payment of the account was disputed (a chargeback, open or lost): the saved card is
    /// forgotten, so the rule waits for the customer to pay a checkout saving a card again
    /// (their renewed consent) and to set it again. A card whose holder disputed a charge is
    /// never charged again off-session on tollgate's own initiative.
    PaymentDisputed,
}

impl PausedReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PausedReason::AuthenticationRequired => "authentication_required",
            PausedReason::RepeatedFailures => "repeated_failures",
            PausedReason::PaymentDisputed => "payment_disputed",
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
    /// off-session charges when given for a checkout top-up (the customer agreed at checkout),
    /// unless the payment is disputed.
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
    /// Dispute `dispute_id` of `top_up_id`'s payment is now `status` for `amount`. Open or
    /// lost, it holds its amount and the account's lock, forgets the saved payment method and
    /// pauses an enabled auto top-up rule ([`PausedReason::PaymentDisputed`]); won, it gives
    /// the amount back and lets go of the lock. (An inquiry, which takes nothing, is not a
    /// dispute here: the edge does not tell it.)
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
    /// The charge of `top_up_id` is not made: the decision that started it no longer holds
    /// when its delivery comes to charge the card (the rule was disabled or paused, the card
    /// changed or was forgotten, a dispute locks the account), or the provider refused every
    /// attempt for a reason that is not the card's. A top-up awaiting payment fails with
    /// reason [`CANCELLED`]; for an auto top-up, the rule's `in_flight` clears and its amount
    /// leaves `month_total`, but it is **not** a failure of the card: `failures` and the wait
    /// after a decline (`not_before`) stay as they are.
    Cancelled { top_up_id: PurchaseId },
}

/// The failure reason of a top-up whose charge was not made ([`PaymentEffect::Cancelled`]).
pub const CANCELLED: &str = "cancelled";

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

impl AutoTopUp {
    /// `top_up` (an auto top-up that failed or was cancelled) no longer counts: not in flight,
    /// and off the month's total when it was of this month (the cap counts what was charged
    /// or may be).
    fn let_go(&mut self, top_up: &TopUpRecord, now: Timestamp) {
        self.roll(now);
        if self.in_flight.as_ref() == Some(&top_up.top_up_id) {
            self.in_flight = None;
        }
        if crate::machine::month_of(top_up.created_at) == self.month {
            self.month_total = Nanos((self.month_total.0 - top_up.amount.0).max(0));
        }
    }

    /// The rule as it stands at `now`: a new UTC month starts its monthly total and count at
    /// zero.
    pub fn at(&self, now: Timestamp) -> AutoTopUp {
        let mut rule = self.clone();
        rule.roll(now);
        rule
    }

    fn roll(&mut self, now: Timestamp) {
        let month = month_of(now);
        if self.month != month {
            self.month = month;
            self.month_total = Nanos::ZERO;
            self.month_count = 0;
        }
    }

    /// The amount of the auto top-up the rule starts when the available balance is
    /// `available`: the smallest multiple of `amount` that brings it back to the threshold,
    /// trimmed to what the monthly cap leaves of the month of `now` (and to the largest top-up
    /// allowed); none when that is below the smallest top-up.
    pub fn due(&self, available: Nanos, now: Timestamp, settings: &TopUpSettings) -> Option<Nanos> {
        let shortfall = i128::from(self.threshold.0) - i128::from(available.0);
        let step = i128::from(self.amount.0);
        if shortfall <= 0 || step <= 0 {
            return None;
        }
        let wanted = (shortfall + step - 1) / step * step;
        let left = i128::from(self.max_per_month.0) - i128::from(self.at(now).month_total.0);
        let amount = wanted.min(left).min(i128::from(settings.max.0));
        if amount < i128::from(settings.min.0) || amount <= 0 {
            return None;
        }
        i64::try_from(amount).ok().map(Nanos)
    }
}

impl PaymentEffect {
    /// The top-up the effect is about.
    pub fn top_up_id(&self) -> &PurchaseId {
        match self {
            PaymentEffect::Paid { top_up_id, .. }
            | PaymentEffect::Failed { top_up_id, .. }
            | PaymentEffect::Refunded { top_up_id, .. }
            | PaymentEffect::Disputed { top_up_id, .. }
            | PaymentEffect::CheckoutCreated { top_up_id, .. }
            | PaymentEffect::Cancelled { top_up_id } => top_up_id,
        }
    }

    /// Whether the effect gives money back to the card or takes it back through the card's
    /// bank: a refund or a dispute. The auto top-up decision does not follow such an effect
    /// (see `decision_follows`).
    pub fn returns_money(&self) -> bool {
        matches!(
            self,
            PaymentEffect::Refunded { .. } | PaymentEffect::Disputed { .. }
        )
    }
}

use crate::catalog::Catalog;
use crate::events::EventData;
use crate::ledger::{Transfer, TransferKind};
use crate::machine::{
    month_of, plan_purchase, record_purchase, AccountState, BatchState, InvoiceKind, InvoiceStatus,
    NewInvoice, Outcome, PlannedPurchase, PurchaseRecord, Rejection, TransferRecord,
};
use crate::terms::BillingMode;

type Key = (AccountId, PurchaseId);

/// What the ids of auto top-ups (and of their purchases) start with: `auto-<n>`. Nothing else
/// may take such an id, so a payment of the rule's is never mistaken for another purchase.
pub const AUTO_PREFIX: &str = "auto-";

/// Whether `id` is of the kind the auto top-up rule gives its top-ups.
pub fn is_auto_id(id: &PurchaseId) -> bool {
    id.as_str().starts_with(AUTO_PREFIX)
}

fn account<'s>(state: &'s BatchState, id: &AccountId) -> Result<&'s AccountState, Rejection> {
    state
        .accounts
        .get(id)
        .ok_or_else(|| Rejection::UnknownAccount(id.clone()))
}

/// Records a top-up the batch created or changed.
fn put_top_up(state: &mut BatchState, top_up: TopUpRecord) {
    let key = (top_up.account.clone(), top_up.top_up_id.clone());
    state.dirty_top_ups.insert(key.clone());
    state.top_ups.insert(key, top_up);
}

/// Records a purchase whose `refunded` or `disputed` changed: a purchase of this batch is
/// still to be inserted (its record in `new_purchases` follows), an older one is updated.
fn put_purchase(state: &mut BatchState, purchase: PurchaseRecord) {
    let key = (purchase.account.clone(), purchase.purchase_id.clone());
    match state
        .new_purchases
        .iter_mut()
        .find(|p| p.account == purchase.account && p.purchase_id == purchase.purchase_id)
    {
        Some(new) => *new = purchase.clone(),
        None => {
            state.dirty_purchases.insert(key.clone());
        }
    }
    state.purchases.insert(key, purchase);
}

fn put_dispute(state: &mut BatchState, dispute: DisputeRecord) {
    let key = (dispute.account.clone(), dispute.dispute_id.clone());
    state.dirty_disputes.insert(key.clone());
    state.disputes.insert(key, dispute);
}

/// Credits taken back from a purchase (decided on a copy of the account, recorded by
/// [`record_refund`] or [`record_dispute_move`]).
struct Taken {
    transfer: Transfer,
    amount: Nanos,
    balance_after: Nanos,
}

/// Takes back what the charge's cumulative refunded amount `total` adds to what `purchase`
/// had refunded, on `acct` (a copy); nothing when it adds nothing (a repeated or late event).
fn take_refund(
    acct: &mut AccountState,
    purchase: &mut PurchaseRecord,
    total: Nanos,
    now: Timestamp,
) -> Result<Option<Taken>, Rejection> {
    if total <= purchase.refunded {
        return Ok(None);
    }
    let amount = total.checked_sub(purchase.refunded)?;
    let transfer = acct.take_back(purchase, amount, TransferKind::Refund, now)?;
    purchase.refunded = total;
    Ok(Some(Taken {
        transfer,
        amount,
        balance_after: acct.credit.balance,
    }))
}

/// Records a refund taken from `purchase`: its transfer, its credit note (`-amount`,
/// correcting the purchase's top-up invoice) and `payment.refunded`.
fn record_refund(state: &mut BatchState, now: Timestamp, purchase: &PurchaseRecord, t: Taken) {
    let account = purchase.account.clone();
    state.transfers.push(TransferRecord {
        transfer: t.transfer,
        request_id: None,
        purchase_id: Some(purchase.purchase_id.clone()),
        at: now,
    });
    let total = Nanos(-t.amount.0);
    state.issue_invoice(NewInvoice {
        account: account.clone(),
        kind: InvoiceKind::CreditNote,
        status: InvoiceStatus::Paid,
        issued_at: now,
        period_start: now,
        period_end: now,
        subtotal: total,
        discount: Nanos::ZERO,
        total,
        purchase_id: Some(purchase.purchase_id.clone()),
    });
    state.event(
        &account,
        now,
        EventData::PaymentRefunded {
            purchase_id: purchase.purchase_id.clone(),
            amount_nano_usd: t.amount,
            refunded_nano_usd: purchase.refunded,
            balance_nano_usd: t.balance_after,
        },
    );
}

/// Moves what `dispute` holds of the balance to `hold` (its amount while open or lost once
/// the payment is credited; nothing once won), on `acct` (a copy) and `purchase`.
fn move_dispute(
    acct: &mut AccountState,
    purchase: &mut PurchaseRecord,
    dispute: &mut DisputeRecord,
    hold: Nanos,
    now: Timestamp,
) -> Result<Option<Transfer>, Rejection> {
    let t = if hold > dispute.taken {
        let more = hold.checked_sub(dispute.taken)?;
        purchase.disputed = purchase.disputed.checked_add(more)?;
        acct.take_back(purchase, more, TransferKind::Dispute, now)?
    } else if hold < dispute.taken {
        let back = dispute.taken.checked_sub(hold)?;
        purchase.disputed = purchase.disputed.checked_sub(back)?;
        acct.give_back(purchase, back, now)?
    } else {
        return Ok(None);
    };
    dispute.taken = hold;
    Ok(Some(t))
}

fn record_dispute_move(
    state: &mut BatchState,
    now: Timestamp,
    purchase: &PurchaseRecord,
    transfer: Transfer,
) {
    state.transfers.push(TransferRecord {
        transfer,
        request_id: None,
        purchase_id: Some(purchase.purchase_id.clone()),
        at: now,
    });
}

/// [`crate::machine::Op::CreateTopUp`].
pub(crate) fn create_top_up(
    state: &mut BatchState,
    now: Timestamp,
    account: AccountId,
    top_up_id: PurchaseId,
    amount: Nanos,
) -> Result<Outcome, Rejection> {
    let key = (account.clone(), top_up_id.clone());
    if let Some(first) = state.top_ups.get(&key) {
        if first.amount != amount || first.kind != TopUpKind::Checkout {
            return Err(Rejection::Conflict(format!(
                "top_up_id {top_up_id} was already used with a different amount"
            )));
        }
        return Ok(Outcome::TopUp {
            top_up: first.clone(),
            replayed: true,
        });
    }
    self::account(state, &account)?;
    if is_auto_id(&top_up_id) {
        return Err(Rejection::Invalid {
            field: "top_up_id",
            reason: format!("`{AUTO_PREFIX}...` is kept for the auto top-up rule's top-ups"),
        });
    }
    if state.purchases.contains_key(&key) {
        return Err(Rejection::Conflict(format!(
            "top_up_id {top_up_id} names an existing purchase"
        )));
    }
    check_top_up_amount(&state.top_up_settings, "amount_usd", amount)?;
    let top_up = TopUpRecord {
        account,
        top_up_id,
        kind: TopUpKind::Checkout,
        amount,
        status: TopUpStatus::AwaitingPayment,
        created_at: now,
        updated_at: now,
        checkout_session: None,
        checkout_url: None,
        payment_intent: None,
        provider_refunded: Nanos::ZERO,
        failure: None,
    };
    put_top_up(state, top_up.clone());
    Ok(Outcome::TopUp {
        top_up,
        replayed: false,
    })
}

/// `amount` is a top-up the deployment allows (`[top_ups] min_usd .. max_usd`).
fn check_top_up_amount(
    settings: &TopUpSettings,
    field: &'static str,
    amount: Nanos,
) -> Result<(), Rejection> {
    if amount < settings.min || amount > settings.max {
        return Err(Rejection::Invalid {
            field,
            reason: format!(
                "must be between {} and {} USD",
                settings.min.to_usd(),
                settings.max.to_usd()
            ),
        });
    }
    Ok(())
}

/// [`crate::machine::Op::Payment`].
pub(crate) fn apply_payment(
    state: &mut BatchState,
    catalog: &Catalog,
    now: Timestamp,
    account: AccountId,
    event: Option<ProviderEvent>,
    effect: PaymentEffect,
) -> Result<Outcome, Rejection> {
    let key = (account.clone(), effect.top_up_id().clone());
    if let Some(e) = &event {
        if state.provider_events.contains(&e.event_id) {
            return Ok(Outcome::PaymentApplied {
                top_up: state.top_ups.get(&key).cloned(),
                replayed: true,
            });
        }
    }
    self::account(state, &account)?;
    let Some(top_up) = state.top_ups.get(&key).cloned() else {
        // Not a top-up of this account (another system's payment on the same provider
        // account): nothing to apply, acknowledged and not stored.
        return Ok(Outcome::PaymentApplied {
            top_up: None,
            replayed: false,
        });
    };
    let changed = match effect {
        PaymentEffect::Paid {
            amount,
            payment_intent,
            payment_method,
            ..
        } => paid(
            state,
            catalog,
            now,
            top_up,
            amount,
            payment_intent,
            payment_method,
        )?,
        PaymentEffect::Failed {
            reason,
            needs_customer,
            ..
        } => failed(state, now, top_up, reason, needs_customer),
        PaymentEffect::Refunded { refunded_total, .. } => {
            refunded(state, now, top_up, refunded_total)?
        }
        PaymentEffect::Disputed {
            dispute_id,
            amount,
            status,
            ..
        } => disputed(state, now, top_up, dispute_id, amount, status)?,
        PaymentEffect::CheckoutCreated { session, url, .. } => {
            checkout_created(state, now, top_up, session, url)
        }
        PaymentEffect::Cancelled { .. } => cancelled(state, now, top_up),
    };
    // An event that changed something is applied once: its id is kept with its effect. One
    // that changed nothing (a late or repeated state) would change nothing again.
    if let (true, Some(e)) = (changed, event) {
        state.provider_events.insert(e.event_id.clone());
        state.new_provider_events.push((account, e));
    }
    Ok(Outcome::PaymentApplied {
        top_up: state.top_ups.get(&key).cloned(),
        replayed: false,
    })
}

/// The payment of `top_up` succeeded: credits it once (the purchase of the top-up's id, with
/// its invoice), then applies what was told before it (a refund kept on the top-up, its open
/// or lost disputes). Whether anything changed.
fn paid(
    state: &mut BatchState,
    catalog: &Catalog,
    now: Timestamp,
    top_up: TopUpRecord,
    amount: Nanos,
    payment_intent: Option<String>,
    payment_method: Option<String>,
) -> Result<bool, Rejection> {
    let id = top_up.account.clone();
    // A card is saved by a checkout the customer agreed at, never by an automatic top-up's
    // payment (which charged the card saved already: after a dispute forgot it, its late
    // report must not save it again); nor is the card of a disputed payment, whichever comes
    // first, the dispute or (a report of) the payment: its holder disputed a charge.
    let disputed = state
        .disputes
        .values()
        .any(|d| d.account == id && d.top_up_id == top_up.top_up_id);
    let payment_method = payment_method.filter(|_| top_up.kind == TopUpKind::Checkout && !disputed);
    if top_up.status == TopUpStatus::Succeeded {
        // Another report of the same payment: credited already; it may name the payment or
        // the saved payment method where the first did not.
        let mut changed = false;
        if top_up.payment_intent.is_none() && payment_intent.is_some() {
            put_top_up(
                state,
                TopUpRecord {
                    payment_intent,
                    updated_at: now,
                    ..top_up
                },
            );
            changed = true;
        }
        if let Some(pm) = payment_method {
            let acct = state.accounts.get_mut(&id).expect("checked");
            if acct.payment.payment_method.as_ref() != Some(&pm) {
                acct.payment.payment_method = Some(pm);
                state.dirty_accounts.insert(id);
                changed = true;
            }
        }
        return Ok(changed);
    }
    if amount != top_up.amount {
        // Not the payment that was asked for: nothing is credited.
        return Ok(failed(state, now, top_up, "amount_mismatch".into(), false));
    }
    let planned = plan_purchase(
        state,
        catalog,
        now,
        &id,
        &top_up.top_up_id,
        amount,
        true,
        None,
    )?;
    let (mut next, mut purchase, new) = match planned {
        // The purchase exists already (it was credited before its top-up was marked): it is
        // not credited twice.
        PlannedPurchase::Replay(first) => (account(state, &id)?.clone(), first, None),
        PlannedPurchase::New {
            account,
            record,
            transfer,
        } => (*account, record.clone(), Some((record, transfer))),
    };
    // A refund told before the payment.
    let refund = take_refund(&mut next, &mut purchase, top_up.provider_refunded, now)?;
    // Disputes told before the payment: what they hold is taken now.
    let mut disputes: Vec<DisputeRecord> = state
        .disputes
        .values()
        .filter(|d| d.account == id && d.top_up_id == top_up.top_up_id)
        .cloned()
        .collect();
    disputes.sort_by(|a, b| a.dispute_id.cmp(&b.dispute_id));
    let mut moves = Vec::new();
    for d in &mut disputes {
        let hold = match d.status {
            DisputeStatus::Open | DisputeStatus::Lost => d.amount,
            DisputeStatus::Won => Nanos::ZERO,
        };
        if let Some(t) = move_dispute(&mut next, &mut purchase, d, hold, now)? {
            d.updated_at = now;
            moves.push((d.clone(), t));
        }
    }
    if let Some(pm) = payment_method {
        next.payment.payment_method = Some(pm);
    }
    if top_up.kind == TopUpKind::Auto {
        if let Some(rule) = next.payment.auto_top_up.as_mut() {
            rule.roll(now);
            if rule.in_flight.as_ref() == Some(&top_up.top_up_id) {
                rule.in_flight = None;
            } else if top_up.status == TopUpStatus::Failed
                && month_of(top_up.created_at) == rule.month
            {
                // Failed, then paid after all: it counts toward the month again.
                rule.month_total = rule.month_total.checked_add(amount)?;
            }
            rule.failures = 0;
            rule.month_count += 1;
        }
    }

    // Everything is decided: record it.
    let balance_after_purchase = match new {
        Some((mut record, transfer)) => {
            record.refunded = purchase.refunded;
            record.disputed = purchase.disputed;
            record_purchase(state, now, next, record, transfer).balance_after
        }
        None => {
            let balance = next.credit.balance;
            state.accounts.insert(id.clone(), next);
            state.dirty_accounts.insert(id.clone());
            put_purchase(state, purchase.clone());
            balance
        }
    };
    let kind = top_up.kind;
    put_top_up(
        state,
        TopUpRecord {
            status: TopUpStatus::Succeeded,
            payment_intent: payment_intent.or(top_up.payment_intent.clone()),
            failure: None,
            updated_at: now,
            ..top_up.clone()
        },
    );
    state.event(
        &id,
        now,
        EventData::TopUpSucceeded {
            top_up_id: top_up.top_up_id.clone(),
            kind: kind.as_str().to_string(),
            amount_nano_usd: amount,
            balance_nano_usd: balance_after_purchase,
        },
    );
    if let Some(t) = refund {
        record_refund(state, now, &purchase, t);
    }
    for (d, t) in moves {
        record_dispute_move(state, now, &purchase, t);
        put_dispute(state, d);
    }
    Ok(true)
}

/// The payment of `top_up` failed: a top-up awaiting payment fails (one that succeeded or
/// failed already is left as it is); an auto top-up's failure counts toward its rule's pause.
/// Whether anything changed.
fn failed(
    state: &mut BatchState,
    now: Timestamp,
    top_up: TopUpRecord,
    reason: String,
    needs_customer: bool,
) -> bool {
    if top_up.status != TopUpStatus::AwaitingPayment {
        return false;
    }
    let id = top_up.account.clone();
    let retry_after_ms = state.top_up_settings.retry_after_ms;
    let acct = state.accounts.get_mut(&id).expect("checked");
    let mut failures = 0;
    let mut paused = None;
    if top_up.kind == TopUpKind::Auto {
        if let Some(rule) = acct.payment.auto_top_up.as_mut() {
            rule.let_go(&top_up, now);
            rule.failures = rule.failures.saturating_add(1);
            rule.not_before = Some(now.plus_ms(retry_after_ms));
            if rule.paused.is_none() {
                if needs_customer {
                    paused = Some(PausedReason::AuthenticationRequired);
                } else if rule.failures >= MAX_FAILURES {
                    paused = Some(PausedReason::RepeatedFailures);
                }
                rule.paused = paused;
            }
            failures = rule.failures;
        }
        state.dirty_accounts.insert(id.clone());
    }
    record_failed(state, now, top_up, reason, failures);
    if let Some(reason) = paused {
        state.event(
            &id,
            now,
            EventData::TopUpPaused {
                reason: reason.as_str().to_string(),
                failures,
            },
        );
    }
    true
}

/// The charge of `top_up` is not made ([`PaymentEffect::Cancelled`]): a top-up awaiting
/// payment fails with reason [`CANCELLED`] (one that succeeded or failed already is left as it
/// is); an auto top-up leaves its rule's `in_flight` and month's total, without counting as a
/// failure of the card. Whether anything changed.
fn cancelled(state: &mut BatchState, now: Timestamp, top_up: TopUpRecord) -> bool {
    if top_up.status != TopUpStatus::AwaitingPayment {
        return false;
    }
    let id = top_up.account.clone();
    let acct = state.accounts.get_mut(&id).expect("checked");
    let mut failures = 0;
    if top_up.kind == TopUpKind::Auto {
        if let Some(rule) = acct.payment.auto_top_up.as_mut() {
            rule.let_go(&top_up, now);
            failures = rule.failures;
        }
        state.dirty_accounts.insert(id.clone());
    }
    record_failed(state, now, top_up, CANCELLED.to_string(), failures);
    true
}

/// Records `top_up` failed for `reason`, and its `top_up.failed` event (`failures`: the rule's
/// failures in a row, 0 for a checkout top-up).
fn record_failed(
    state: &mut BatchState,
    now: Timestamp,
    top_up: TopUpRecord,
    reason: String,
    failures: u32,
) {
    let id = top_up.account.clone();
    let data = EventData::TopUpFailed {
        top_up_id: top_up.top_up_id.clone(),
        kind: top_up.kind.as_str().to_string(),
        amount_nano_usd: top_up.amount,
        reason: reason.clone(),
        failures,
    };
    put_top_up(
        state,
        TopUpRecord {
            status: TopUpStatus::Failed,
            failure: Some(reason),
            updated_at: now,
            ..top_up
        },
    );
    state.event(&id, now, data);
}

/// The charge of `top_up` is refunded `total` in all. Kept on the top-up; taken back from its
/// purchase once the payment is credited. Whether anything changed.
fn refunded(
    state: &mut BatchState,
    now: Timestamp,
    top_up: TopUpRecord,
    total: Nanos,
) -> Result<bool, Rejection> {
    check_refunded_total(&top_up, total)?;
    let id = top_up.account.clone();
    let key: Key = (id.clone(), top_up.top_up_id.clone());
    let mut taken = None;
    let mut next = None;
    if top_up.status == TopUpStatus::Succeeded {
        if let Some(p) = state.purchases.get(&key) {
            let mut purchase = p.clone();
            let mut acct = account(state, &id)?.clone();
            if let Some(t) = take_refund(&mut acct, &mut purchase, total, now)? {
                taken = Some(t);
                next = Some((acct, purchase));
            }
        }
    }
    let grows = total > top_up.provider_refunded;
    if grows {
        put_top_up(
            state,
            TopUpRecord {
                provider_refunded: total,
                updated_at: now,
                ..top_up
            },
        );
    }
    let Some((acct, purchase)) = next else {
        return Ok(grows);
    };
    state.accounts.insert(id.clone(), acct);
    state.dirty_accounts.insert(id);
    put_purchase(state, purchase.clone());
    record_refund(state, now, &purchase, taken.expect("with the account"));
    Ok(true)
}

fn check_refunded_total(top_up: &TopUpRecord, total: Nanos) -> Result<(), Rejection> {
    if total < Nanos::ZERO || total > top_up.amount {
        return Err(Rejection::Invalid {
            field: "amount_refunded",
            reason: format!(
                "must be between 0 and the payment's {} USD",
                top_up.amount.to_usd()
            ),
        });
    }
    Ok(())
}

/// Dispute `dispute_id` of `top_up`'s payment is now `status` for `amount`. Whether anything
/// changed.
fn disputed(
    state: &mut BatchState,
    now: Timestamp,
    top_up: TopUpRecord,
    dispute_id: String,
    amount: Nanos,
    status: DisputeStatus,
) -> Result<bool, Rejection> {
    if dispute_id.is_empty() {
        return Err(Rejection::Invalid {
            field: "dispute_id",
            reason: "must not be empty".into(),
        });
    }
    if amount <= Nanos::ZERO || amount > top_up.amount {
        return Err(Rejection::Invalid {
            field: "amount",
            reason: format!(
                "a dispute's amount must be positive and at most the payment's {} USD",
                top_up.amount.to_usd()
            ),
        });
    }
    let id = top_up.account.clone();
    let holding = |d: &&DisputeRecord| {
        d.account == id
            && d.top_up_id == top_up.top_up_id
            && d.dispute_id != dispute_id
            && !matches!(d.status, DisputeStatus::Won)
    };
    let others: i64 = state
        .disputes
        .values()
        .filter(holding)
        .map(|d| d.amount.0)
        .sum();
    if status != DisputeStatus::Won && others + amount.0 > top_up.amount.0 {
        // The provider disputes a payment once: more than it, across its disputes, is not a
        // state it can be in.
        return Err(Rejection::Invalid {
            field: "amount",
            reason: format!(
                "the payment's disputes would take more than its {} USD",
                top_up.amount.to_usd()
            ),
        });
    }
    let key = (id.clone(), dispute_id.clone());
    let existing = state.disputes.get(&key).cloned();
    if let Some(d) = &existing {
        if d.top_up_id != top_up.top_up_id {
            return Err(Rejection::Conflict(format!(
                "dispute {dispute_id} is of another payment"
            )));
        }
        // A decided dispute stays decided (a late or reordered event changes nothing), and
        // the same state again is nothing new.
        if d.status.is_final() || (d.status == status && d.amount == amount) {
            return Ok(false);
        }
    }
    let first_told = existing.is_none();
    let mut d = existing.unwrap_or(DisputeRecord {
        account: id.clone(),
        dispute_id,
        top_up_id: top_up.top_up_id.clone(),
        amount,
        status,
        taken: Nanos::ZERO,
        locking_epoch: None,
        created_at: now,
        updated_at: now,
    });
    d.amount = amount;
    d.status = status;
    d.updated_at = now;
    let pkey: Key = (id.clone(), top_up.top_up_id.clone());
    let mut purchase = (top_up.status == TopUpStatus::Succeeded)
        .then(|| state.purchases.get(&pkey).cloned())
        .flatten();
    let mut next = account(state, &id)?.clone();
    // What it holds of the balance: its amount while open or lost, once the payment is
    // credited (before, the payment's credit takes it); nothing once won.
    let mut transfer = None;
    if let Some(p) = purchase.as_mut() {
        let hold = match status {
            DisputeStatus::Open | DisputeStatus::Lost => amount,
            DisputeStatus::Won => Nanos::ZERO,
        };
        transfer = move_dispute(&mut next, p, &mut d, hold, now)?;
    }
    // The lock: an open or lost dispute holds it from when it is first told; a won one lets
    // go of it if it locked since the last operator unlock, and the last to let go lifts it.
    let profile = &mut next.payment;
    let mut paused = None;
    match status {
        DisputeStatus::Open | DisputeStatus::Lost => {
            if d.locking_epoch.is_none() {
                profile.dispute_locks = profile.dispute_locks.saturating_add(1);
                d.locking_epoch = Some(profile.dispute_epoch);
                next.disputed_since.get_or_insert(now);
            }
            // The card's holder disputed a charge: it is not charged again off-session. When
            // the dispute is first told, the saved card is forgotten and the rule pauses until
            // the customer saves a card at a checkout again (consenting anew) and sets it
            // again; the dispute's later states, won included, change nothing of that.
            if first_told {
                profile.payment_method = None;
                if let Some(rule) = profile.auto_top_up.as_mut() {
                    if rule.enabled && rule.paused != Some(PausedReason::PaymentDisputed) {
                        rule.paused = Some(PausedReason::PaymentDisputed);
                        paused = Some(rule.failures);
                    }
                }
            }
        }
        DisputeStatus::Won => {
            if d.locking_epoch.take() == Some(profile.dispute_epoch) {
                profile.dispute_locks = profile.dispute_locks.saturating_sub(1);
                if profile.dispute_locks == 0 {
                    next.disputed_since = None;
                }
            }
        }
    }
    let balance = next.credit.balance;
    state.accounts.insert(id.clone(), next);
    state.dirty_accounts.insert(id.clone());
    if let (Some(p), Some(t)) = (purchase, transfer) {
        record_dispute_move(state, now, &p, t);
        put_purchase(state, p);
    }
    state.event(
        &id,
        now,
        EventData::PaymentDisputed {
            purchase_id: top_up.top_up_id.clone(),
            dispute_id: d.dispute_id.clone(),
            status: status.as_str().to_string(),
            amount_nano_usd: amount,
            balance_nano_usd: balance,
        },
    );
    if let Some(failures) = paused {
        state.event(
            &id,
            now,
            EventData::TopUpPaused {
                reason: PausedReason::PaymentDisputed.as_str().to_string(),
                failures,
            },
        );
    }
    put_dispute(state, d);
    Ok(true)
}

/// The provider created `top_up`'s checkout session. Whether anything changed.
fn checkout_created(
    state: &mut BatchState,
    now: Timestamp,
    top_up: TopUpRecord,
    session: String,
    url: String,
) -> bool {
    if top_up.kind != TopUpKind::Checkout
        || (top_up.checkout_session.as_ref() == Some(&session)
            && top_up.checkout_url.as_ref() == Some(&url))
    {
        return false;
    }
    put_top_up(
        state,
        TopUpRecord {
            checkout_session: Some(session),
            checkout_url: Some(url),
            updated_at: now,
            ..top_up
        },
    );
    true
}

/// [`crate::machine::Op::Refund`].
pub(crate) fn refund(
    state: &mut BatchState,
    now: Timestamp,
    account: AccountId,
    purchase_id: PurchaseId,
    refund_id: PurchaseId,
    amount: Nanos,
    provider: Option<ProviderRefund>,
) -> Result<Outcome, Rejection> {
    let rkey = (account.clone(), refund_id.clone());
    if let Some(first) = state.refunds.get(&rkey) {
        if first.purchase_id != purchase_id || first.amount != amount {
            return Err(Rejection::Conflict(format!(
                "refund_id {refund_id} was already used for another refund"
            )));
        }
        return Ok(Outcome::Refunded {
            refund: first.clone(),
            replayed: true,
        });
    }
    let mut next = self::account(state, &account)?.clone();
    if amount <= Nanos::ZERO || amount > crate::money::MAX_AMOUNT {
        return Err(Rejection::Invalid {
            field: "amount_usd",
            reason: format!("must be positive and at most {}", crate::money::MAX_AMOUNT),
        });
    }
    let pkey: Key = (account.clone(), purchase_id.clone());
    let not_refundable = |reason: &str| Rejection::NotRefundable {
        purchase_id: purchase_id.clone(),
        reason: reason.to_string(),
    };
    let Some(mut purchase) = state.purchases.get(&pkey).cloned() else {
        return Err(not_refundable("the account has no such purchase"));
    };
    if !purchase.paid {
        return Err(not_refundable("free credits were not paid for"));
    }
    let top_up = state
        .top_ups
        .get(&pkey)
        .filter(|t| t.payment_intent.is_some())
        .cloned();
    let (taken, reference, top_up) = match (top_up, provider) {
        (Some(top_up), Some(p)) => {
            // Refunded at the provider already: what its cumulative amount adds is taken
            // (nothing if the provider's event told it first).
            check_refunded_total(&top_up, p.refunded_total)?;
            let taken = take_refund(&mut next, &mut purchase, p.refunded_total, now)?;
            let grows = p.refunded_total > top_up.provider_refunded;
            let top_up = grows.then_some(TopUpRecord {
                provider_refunded: p.refunded_total,
                updated_at: now,
                ..top_up
            });
            (taken, Some(p.reference), top_up)
        }
        (Some(_), None) => {
            return Err(Rejection::Invalid {
                field: "provider",
                reason: "the purchase was paid through the payment provider: it is refunded                          there first"
                    .into(),
            })
        }
        (None, Some(_)) => {
            return Err(Rejection::Invalid {
                field: "provider",
                reason: "the purchase was not paid through the payment provider".into(),
            })
        }
        (None, None) => {
            // Paid outside tollgate: only what is left of its own credits can be taken back.
            let left = next
                .lots
                .iter()
                .find(|l| l.purchase_id == purchase_id)
                .map_or(Nanos::ZERO, |l| l.remaining);
            if amount > left {
                return Err(not_refundable(&format!(
                    "only {} USD of its credits are left unspent",
                    left.to_usd()
                )));
            }
            let transfer = next.take_back(&purchase, amount, TransferKind::Refund, now)?;
            purchase.refunded = purchase.refunded.checked_add(amount)?;
            let taken = Taken {
                transfer,
                amount,
                balance_after: next.credit.balance,
            };
            (Some(taken), None, None)
        }
    };
    let record = RefundRecord {
        account: account.clone(),
        refund_id,
        purchase_id,
        amount,
        taken: taken.as_ref().map_or(Nanos::ZERO, |t| t.amount),
        provider_reference: reference,
        created_at: now,
        balance_after: next.credit.balance,
    };
    if let Some(top_up) = top_up {
        put_top_up(state, top_up);
    }
    if let Some(t) = taken {
        state.accounts.insert(account.clone(), next);
        state.dirty_accounts.insert(account);
        put_purchase(state, purchase.clone());
        record_refund(state, now, &purchase, t);
    }
    state.refunds.insert(rkey, record.clone());
    state.new_refunds.push(record.clone());
    Ok(Outcome::Refunded {
        refund: record,
        replayed: false,
    })
}

/// [`crate::machine::Op::SetAutoTopUp`].
pub(crate) fn set_auto_top_up(
    state: &mut BatchState,
    now: Timestamp,
    account: AccountId,
    rule: AutoTopUpRule,
) -> Result<Outcome, Rejection> {
    let acct = self::account(state, &account)?;
    // The amounts are checked when the rule is enabled, the only time they are used: turning
    // it off is never refused for them (the deployment's range may have narrowed since they
    // were set, and a customer must always be able to stop automatic charges).
    if rule.enabled {
        check_rule_amounts(&state.top_up_settings, &rule)?;
    }
    let profile = &acct.payment;
    if rule.enabled && (profile.payment_method.is_none() || profile.customer.is_none()) {
        return Err(Rejection::PaymentMethodRequired(account));
    }
    // Setting the rule makes it active again: the pause, the failures in a row and the wait
    // after a decline end; what is in flight and this month's totals stay (the cap counts
    // them).
    let before = profile.auto_top_up.clone();
    let auto = AutoTopUp {
        enabled: rule.enabled,
        threshold: rule.threshold,
        amount: rule.amount,
        max_per_month: rule.max_per_month,
        paused: None,
        in_flight: before.as_ref().and_then(|r| r.in_flight.clone()),
        month: before.as_ref().map_or(month_of(now), |r| r.month),
        month_total: before.as_ref().map_or(Nanos::ZERO, |r| r.month_total),
        month_count: before.as_ref().map_or(0, |r| r.month_count),
        failures: 0,
        not_before: None,
    };
    let acct = state.accounts.get_mut(&account).expect("checked");
    acct.payment.auto_top_up = Some(auto);
    state.dirty_accounts.insert(account.clone());
    // A balance already below the threshold starts its top-up right after (`machine::apply`).
    Ok(Outcome::PaymentProfile {
        profile: state.accounts[&account].payment.clone(),
    })
}

/// An enabled rule's amounts: a threshold from 0 to [`crate::money::MAX_AMOUNT`], an amount
/// the deployment allows as a top-up, a monthly cap of at least the amount.
fn check_rule_amounts(settings: &TopUpSettings, rule: &AutoTopUpRule) -> Result<(), Rejection> {
    if rule.threshold < Nanos::ZERO || rule.threshold > crate::money::MAX_AMOUNT {
        return Err(Rejection::Invalid {
            field: "threshold_usd",
            reason: format!(
                "must be between 0 and {} USD",
                crate::money::MAX_AMOUNT.to_usd()
            ),
        });
    }
    check_top_up_amount(settings, "amount_usd", rule.amount)?;
    if rule.max_per_month < rule.amount {
        return Err(Rejection::Invalid {
            field: "max_per_month_usd",
            reason: "must be at least amount_usd".into(),
        });
    }
    Ok(())
}

/// [`crate::machine::Op::SetPaymentCustomer`].
pub(crate) fn set_customer(
    state: &mut BatchState,
    account: AccountId,
    customer: String,
) -> Result<Outcome, Rejection> {
    self::account(state, &account)?;
    if customer.is_empty() || customer.chars().any(char::is_control) {
        return Err(Rejection::Invalid {
            field: "customer",
            reason: "must be the provider's customer id".into(),
        });
    }
    let acct = state.accounts.get_mut(&account).expect("checked");
    if acct.payment.customer.is_none() {
        acct.payment.customer = Some(customer);
        state.dirty_accounts.insert(account.clone());
    }
    Ok(Outcome::PaymentProfile {
        profile: state.accounts[&account].payment.clone(),
    })
}

/// Whether the auto top-up decision follows `op` (when it changed something). Not after money
/// went back to the card or was taken back through its bank (an operator's refund, the
/// provider's refund or dispute), nor after an operator's unlock of a dispute lock: the money
/// just returned or disputed is not charged again to the same card on tollgate's initiative.
/// The next operation that spends below the threshold decides as usual (a dispute has then
/// paused the rule and forgotten the card).
pub(crate) fn decision_follows(op: &crate::machine::Op) -> bool {
    use crate::machine::Op;
    match op {
        Op::Refund { .. } | Op::LiftDispute { .. } => false,
        Op::Payment { effect, .. } => !effect.returns_money(),
        _ => true,
    }
}

/// The auto top-up decision, taken in the write path after each operation that changed
/// something on `account` (except those [`decision_follows`] excludes): when its rule is
/// enabled and active, a payment method and customer are saved, no top-up is in flight, a
/// declined one's wait is over, the account is prepaid
/// and not locked by a dispute (its card is not charged again while a chargeback is open), and
/// its available balance (balance − holds) is below the threshold, one top-up of
/// [`AutoTopUp::due`] starts: recorded awaiting payment, in flight, counted toward the month,
/// and told as `top_up.started`, the event the provider's delivery charges the card from.
/// Never two in flight; the cap holds since the month's total counts those in flight.
pub(crate) fn decide_auto_top_up(state: &mut BatchState, account: &AccountId, now: Timestamp) {
    let settings = state.top_up_settings;
    let Some(acct) = state.accounts.get_mut(account) else {
        return;
    };
    let p = &acct.payment;
    let Some(rule) = &p.auto_top_up else {
        return;
    };
    if !rule.enabled
        || rule.paused.is_some()
        || rule.in_flight.is_some()
        || rule.not_before.is_some_and(|t| now < t)
    {
        return;
    }
    let (Some(customer), Some(payment_method)) = (p.customer.clone(), p.payment_method.clone())
    else {
        return;
    };
    if acct.billing() != BillingMode::Prepaid || acct.disputed_since.is_some() {
        return;
    }
    let available = acct.credit.available();
    if available >= rule.threshold {
        return;
    }
    let Some(amount) = rule.due(available, now, &settings) else {
        return;
    };
    // The next number whose id is free (it always is: only the rule takes such ids; this keeps
    // a damaged sequence from reusing one).
    let mut seq = acct.payment.auto_seq + 1;
    let id = |seq: u64| PurchaseId::parse(&format!("{AUTO_PREFIX}{seq}")).expect("a valid id");
    while state.top_ups.contains_key(&(account.clone(), id(seq)))
        || state.purchases.contains_key(&(account.clone(), id(seq)))
    {
        seq += 1;
    }
    let top_up_id = id(seq);
    let acct = state.accounts.get_mut(account).expect("checked");
    let rule = acct.payment.auto_top_up.as_mut().expect("checked");
    rule.roll(now);
    rule.in_flight = Some(top_up_id.clone());
    rule.month_total = Nanos(rule.month_total.0.saturating_add(amount.0));
    acct.payment.auto_seq = seq;
    state.dirty_accounts.insert(account.clone());
    put_top_up(
        state,
        TopUpRecord {
            account: account.clone(),
            top_up_id: top_up_id.clone(),
            kind: TopUpKind::Auto,
            amount,
            status: TopUpStatus::AwaitingPayment,
            created_at: now,
            updated_at: now,
            checkout_session: None,
            checkout_url: None,
            payment_intent: None,
            provider_refunded: Nanos::ZERO,
            failure: None,
        },
    );
    state.event(
        account,
        now,
        EventData::TopUpStarted {
            top_up_id,
            kind: TopUpKind::Auto.as_str().to_string(),
            amount_nano_usd: amount,
            customer,
            payment_method,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::CreditAccount;
    use crate::machine::{apply, LockReason, Op};

    const USD: i64 = 1_000_000_000;
    const T: Timestamp = Timestamp(1_767_225_600_000); // 2026-01-01T00:00:00Z

    fn acme() -> AccountId {
        AccountId::parse("acme").unwrap()
    }

    fn id(s: &str) -> PurchaseId {
        PurchaseId::parse(s).unwrap()
    }

    struct T1 {
        s: BatchState,
        catalog: Catalog,
        now: Timestamp,
        events: u32,
    }

    impl T1 {
        fn new() -> T1 {
            let mut s = BatchState::default();
            s.accounts.insert(
                acme(),
                AccountState::new(CreditAccount::new_prepaid(acme())),
            );
            T1 {
                s,
                catalog: Catalog::default(),
                now: T,
                events: 0,
            }
        }
        fn apply(&mut self, op: Op) -> Result<Outcome, Rejection> {
            self.now = self.now.plus_ms(1_000);
            apply(&mut self.s, &self.catalog, self.now, op)
        }
        fn top_up(&mut self, top_up: &str, usd: i64) {
            self.apply(Op::CreateTopUp {
                account: acme(),
                top_up_id: id(top_up),
                amount: Nanos(usd * USD),
            })
            .unwrap();
        }
        fn tell(&mut self, effect: PaymentEffect) -> Result<Outcome, Rejection> {
            self.events += 1;
            let event_id = format!("evt_{}", self.events);
            self.apply(Op::Payment {
                account: acme(),
                event: Some(ProviderEvent {
                    event_id,
                    event_type: "test".into(),
                }),
                effect,
            })
        }
        fn paid(&mut self, top_up: &str, usd: i64) -> Result<Outcome, Rejection> {
            self.tell(PaymentEffect::Paid {
                top_up_id: id(top_up),
                amount: Nanos(usd * USD),
                payment_intent: Some(format!("pi_{top_up}")),
                payment_method: Some("pm_1".into()),
            })
        }
        fn dispute(&mut self, top_up: &str, dispute: &str, usd: i64, status: DisputeStatus) {
            self.tell(PaymentEffect::Disputed {
                top_up_id: id(top_up),
                dispute_id: dispute.into(),
                amount: Nanos(usd * USD),
                status,
            })
            .unwrap();
        }
        fn acct(&self) -> &AccountState {
            &self.s.accounts[&acme()]
        }
        fn balance(&self) -> i64 {
            self.acct().credit.balance.0 / USD
        }
        /// `op` is refused and changes nothing.
        fn refused(&mut self, op: Op) -> Rejection {
            let before = format!("{:?}", self.s);
            let e = self.apply(op).expect_err("refused");
            assert_eq!(
                format!("{:?}", self.s),
                before,
                "a refusal changed the state"
            );
            e
        }
    }

    #[test]
    fn the_auto_top_up_is_the_shortfall_in_whole_amounts_trimmed_to_the_cap() {
        let s = TopUpSettings::default(); // 5.00 .. 10,000.00 USD
        let rule = AutoTopUp {
            enabled: true,
            threshold: Nanos(20 * USD),
            amount: Nanos(10 * USD),
            max_per_month: Nanos(100 * USD),
            paused: None,
            in_flight: None,
            month: crate::machine::month_of(T),
            month_total: Nanos(70 * USD),
            month_count: 3,
            failures: 0,
            not_before: None,
        };
        let due = |available: i64, rule: &AutoTopUp, now| rule.due(Nanos(available), now, &s);
        assert_eq!(due(20 * USD, &rule, T), None, "at the threshold");
        assert_eq!(due(19 * USD, &rule, T), Some(Nanos(10 * USD)));
        assert_eq!(
            due(-5 * USD, &rule, T),
            Some(Nanos(30 * USD)),
            "25 short: 3 x 10"
        );
        assert_eq!(
            due(-25 * USD, &rule, T),
            Some(Nanos(30 * USD)),
            "45 short, 30 left of the cap"
        );
        let spent = AutoTopUp {
            month_total: Nanos(97 * USD),
            ..rule.clone()
        };
        assert_eq!(
            due(0, &spent, T),
            None,
            "3.00 left is below the smallest top-up"
        );
        // The next month counts from zero.
        let february = Timestamp(T.0 + 31 * crate::time::MS_PER_DAY);
        assert_eq!(due(-25 * USD, &spent, february), Some(Nanos(50 * USD)));
        assert_eq!(spent.at(february).month_total, Nanos::ZERO);
        assert_eq!(spent.at(february).month_count, 0);
        assert_eq!(spent.at(T), spent);
    }

    #[test]
    fn a_payment_is_credited_once_and_saves_the_card() {
        let mut t = T1::new();
        t.top_up("t1", 10);
        let first = t.paid("t1", 10).unwrap();
        let Outcome::PaymentApplied {
            top_up: Some(top_up),
            replayed: false,
        } = first
        else {
            panic!("{first:?}")
        };
        assert_eq!(top_up.status, TopUpStatus::Succeeded);
        assert_eq!(top_up.payment_intent.as_deref(), Some("pi_t1"));
        // Another event of the same payment: nothing more.
        t.paid("t1", 10).unwrap();
        assert_eq!(t.balance(), 10);
        assert_eq!(t.s.new_purchases.len(), 1);
        assert_eq!(t.s.new_invoices.len(), 1);
        assert_eq!(t.acct().payment.payment_method.as_deref(), Some("pm_1"));
        assert_eq!(t.acct().paid_lifetime, Nanos(10 * USD));
        let p = &t.s.purchases[&(acme(), id("t1"))];
        assert!(
            p.paid && p.expires_at.is_some(),
            "paid credits, default expiry"
        );
        // A payment of another top-up (not this account's): acknowledged, nothing applied and
        // its event not kept.
        let other = t.paid("unknown", 10).unwrap();
        assert_eq!(
            other,
            Outcome::PaymentApplied {
                top_up: None,
                replayed: false
            }
        );
        assert_eq!(t.s.new_provider_events.len(), 1);
    }

    #[test]
    fn a_payment_of_another_amount_credits_nothing_and_fails_the_top_up() {
        let mut t = T1::new();
        t.top_up("t1", 10);
        t.paid("t1", 12).unwrap();
        let top_up = &t.s.top_ups[&(acme(), id("t1"))];
        assert_eq!(top_up.status, TopUpStatus::Failed);
        assert_eq!(top_up.failure.as_deref(), Some("amount_mismatch"));
        assert_eq!(t.balance(), 0);
        assert!(t
            .s
            .events
            .iter()
            .any(|e| e.data.event_type() == crate::events::EventType::TopUpFailed));
        // A failed top-up whose payment succeeds after all is credited.
        t.paid("t1", 10).unwrap();
        assert_eq!(t.balance(), 10);
        assert_eq!(t.s.top_ups[&(acme(), id("t1"))].failure, None);
    }

    #[test]
    fn a_refund_and_a_dispute_told_before_the_payment_are_applied_with_it() {
        let mut t = T1::new();
        t.top_up("t1", 20);
        t.tell(PaymentEffect::Refunded {
            top_up_id: id("t1"),
            refunded_total: Nanos(5 * USD),
        })
        .unwrap();
        t.dispute("t1", "dp1", 8, DisputeStatus::Open);
        // Nothing to take yet, but the dispute locks.
        assert_eq!(t.balance(), 0);
        assert_eq!(t.acct().lock_reason(), Some(LockReason::PaymentDisputed));
        assert_eq!(
            t.s.top_ups[&(acme(), id("t1"))].provider_refunded,
            Nanos(5 * USD)
        );
        t.paid("t1", 20).unwrap();
        assert_eq!(t.balance(), 20 - 5 - 8);
        let p = &t.s.purchases[&(acme(), id("t1"))];
        assert_eq!((p.refunded, p.disputed), (Nanos(5 * USD), Nanos(8 * USD)));
        assert_eq!(
            t.s.new_purchases[0].refunded,
            Nanos(5 * USD),
            "written as it stands"
        );
        assert_eq!(t.s.disputes[&(acme(), "dp1".into())].taken, Nanos(8 * USD));
        assert_eq!(t.acct().paid_lifetime, Nanos(7 * USD));
        assert_eq!(t.acct().paid_28d, Nanos(7 * USD));
        assert_eq!(
            t.acct().lock_reason(),
            Some(LockReason::PaymentDisputed),
            "the purchase does not lift a dispute's lock"
        );
        let note = t.s.new_invoices.last().unwrap();
        assert_eq!(note.kind, InvoiceKind::CreditNote);
        assert_eq!(
            (note.total, note.subtotal),
            (Nanos(-5 * USD), Nanos(-5 * USD))
        );
        assert_eq!(note.purchase_id, Some(id("t1")));
        // Won: given back, unlocked.
        t.dispute("t1", "dp1", 8, DisputeStatus::Won);
        assert_eq!(t.balance(), 15);
        assert_eq!(t.acct().lock_reason(), None);
        assert_eq!(t.acct().paid_lifetime, Nanos(15 * USD));
        // Decided: a late `open` changes nothing.
        t.dispute("t1", "dp1", 8, DisputeStatus::Open);
        assert_eq!((t.balance(), t.acct().lock_reason()), (15, None));
    }

    #[test]
    fn a_lost_dispute_keeps_its_lock_until_the_operator_unlocks_and_an_older_one_cannot_lift_a_newer(
    ) {
        let mut t = T1::new();
        t.top_up("t1", 20);
        t.paid("t1", 20).unwrap();
        t.dispute("t1", "dp1", 5, DisputeStatus::Open);
        t.dispute("t1", "dp1", 5, DisputeStatus::Lost);
        assert_eq!(t.balance(), 15);
        assert_eq!(t.acct().payment.dispute_locks, 1);
        assert_eq!(t.acct().lock_reason(), Some(LockReason::PaymentDisputed));
        let unlock = |t: &mut T1| {
            t.apply(Op::LiftDispute {
                account: acme(),
                reason: "lost, written off".into(),
            })
            .unwrap()
        };
        unlock(&mut t);
        assert_eq!(t.acct().lock_reason(), None);
        assert_eq!(
            (
                t.acct().payment.dispute_locks,
                t.acct().payment.dispute_epoch
            ),
            (0, 1)
        );
        assert_eq!(t.balance(), 15, "a lost dispute's amount stays taken");

        // dp2 opens before the unlock, dp3 after it: dp2's win cannot lift dp3's lock.
        t.top_up("t2", 10);
        t.paid("t2", 10).unwrap();
        t.dispute("t2", "dp2", 4, DisputeStatus::Open);
        unlock(&mut t);
        t.dispute("t2", "dp3", 6, DisputeStatus::Open);
        assert_eq!(t.acct().payment.dispute_locks, 1);
        t.dispute("t2", "dp2", 4, DisputeStatus::Won);
        assert_eq!(t.acct().lock_reason(), Some(LockReason::PaymentDisputed));
        assert_eq!(t.balance(), 25 - 6, "dp2's amount given back");
        t.dispute("t2", "dp3", 6, DisputeStatus::Won);
        assert_eq!(t.acct().lock_reason(), None);
        assert_eq!(t.balance(), 25);
        let kinds: Vec<TransferKind> =
            t.s.transfers
                .iter()
                .map(|t| t.transfer.kind)
                .filter(|k| *k != TransferKind::Purchase)
                .collect();
        use TransferKind::{Dispute, DisputeReversal};
        assert_eq!(
            kinds,
            [Dispute, Dispute, Dispute, DisputeReversal, DisputeReversal]
        );
    }

    #[test]
    fn inconsistent_provider_amounts_are_refused_and_change_nothing() {
        let mut t = T1::new();
        t.top_up("t1", 10);
        t.paid("t1", 10).unwrap();
        let tell = |effect| Op::Payment {
            account: acme(),
            event: Some(ProviderEvent {
                event_id: "evt_bad".into(),
                event_type: "test".into(),
            }),
            effect,
        };
        let e = t.refused(tell(PaymentEffect::Refunded {
            top_up_id: id("t1"),
            refunded_total: Nanos(11 * USD),
        }));
        assert!(matches!(
            e,
            Rejection::Invalid {
                field: "amount_refunded",
                ..
            }
        ));
        t.dispute("t1", "dp1", 6, DisputeStatus::Open);
        let e = t.refused(tell(PaymentEffect::Disputed {
            top_up_id: id("t1"),
            dispute_id: "dp2".into(),
            amount: Nanos(6 * USD),
            status: DisputeStatus::Open,
        }));
        assert!(
            matches!(
                e,
                Rejection::Invalid {
                    field: "amount",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn operator_refunds_take_what_the_rules_allow() {
        let mut t = T1::new();
        let refund = |purchase: &str, refund: &str, usd: i64, provider: Option<i64>| Op::Refund {
            account: acme(),
            purchase_id: id(purchase),
            refund_id: id(refund),
            amount: Nanos(usd * USD),
            provider: provider.map(|total| ProviderRefund {
                reference: format!("re_{refund}"),
                refunded_total: Nanos(total * USD),
            }),
        };
        for (purchase, paid) in [("manual", true), ("free", false)] {
            t.apply(Op::Purchase {
                account: acme(),
                purchase_id: id(purchase),
                amount: Nanos(10 * USD),
                paid,
                expires_at: None,
            })
            .unwrap();
        }
        t.top_up("t1", 10);
        t.paid("t1", 10).unwrap();
        let not_refundable = |e: Rejection| matches!(e, Rejection::NotRefundable { .. });
        assert!(not_refundable(t.refused(refund("free", "r1", 1, None))));
        assert!(not_refundable(t.refused(refund("nothing", "r1", 1, None))));
        // A provider's purchase is refunded at the provider first, and only it is.
        assert!(matches!(
            t.refused(refund("t1", "r1", 1, None)),
            Rejection::Invalid {
                field: "provider",
                ..
            }
        ));
        assert!(matches!(
            t.refused(refund("manual", "r1", 1, Some(1))),
            Rejection::Invalid {
                field: "provider",
                ..
            }
        ));
        // By hand: from the purchase's own credits only (the lots spend earliest expiry
        // first: `manual` and `t1` expire in a year, `free` never).
        t.apply(Op::Adjust {
            account: acme(),
            adjustment_id: crate::ids::AdjustmentId::parse("spend").unwrap(),
            amount: Nanos(-7 * USD),
            reason: "usage elsewhere".into(),
        })
        .unwrap();
        let left = |t: &T1, p: &str| {
            t.acct()
                .lots
                .iter()
                .find(|l| l.purchase_id == id(p))
                .unwrap()
                .remaining
        };
        assert_eq!(left(&t, "manual"), Nanos(3 * USD));
        assert!(not_refundable(t.refused(refund("manual", "r1", 4, None))));
        let Outcome::Refunded { refund: r, .. } = t.apply(refund("manual", "r1", 3, None)).unwrap()
        else {
            panic!()
        };
        assert_eq!((r.taken, r.provider_reference), (Nanos(3 * USD), None));
        assert_eq!(left(&t, "manual"), Nanos::ZERO);
        assert_eq!(t.balance(), 30 - 7 - 3);
        // Through the provider: what its cumulative amount adds.
        t.apply(refund("t1", "r2", 4, Some(4))).unwrap();
        let Outcome::Refunded { refund: r, .. } = t.apply(refund("t1", "r3", 2, Some(6))).unwrap()
        else {
            panic!()
        };
        assert_eq!(r.taken, Nanos(2 * USD));
        assert_eq!(r.balance_after, Nanos(14 * USD));
        assert_eq!(
            t.s.top_ups[&(acme(), id("t1"))].provider_refunded,
            Nanos(6 * USD)
        );
        assert_eq!(t.s.purchases[&(acme(), id("t1"))].refunded, Nanos(6 * USD));
        // Replays answer the first answer.
        let again = t.apply(refund("t1", "r3", 2, Some(6))).unwrap();
        assert_eq!(
            again,
            Outcome::Refunded {
                refund: r,
                replayed: true
            }
        );
        assert_eq!(t.s.new_refunds.len(), 3);
        let notes =
            t.s.new_invoices
                .iter()
                .filter(|i| i.kind == InvoiceKind::CreditNote)
                .count();
        assert_eq!(notes, 3);
    }

    #[test]
    fn the_rule_needs_a_card_and_sane_amounts_and_setting_it_makes_it_active() {
        let mut t = T1::new();
        let set = |enabled, threshold: i64, amount: i64, max: i64| Op::SetAutoTopUp {
            account: acme(),
            rule: AutoTopUpRule {
                enabled,
                threshold: Nanos(threshold * USD),
                amount: Nanos(amount * USD),
                max_per_month: Nanos(max * USD),
            },
        };
        assert!(matches!(
            t.refused(set(true, 10, 20, 100)),
            Rejection::PaymentMethodRequired(_)
        ));
        // Disabled, it needs none.
        t.apply(set(false, 10, 20, 100)).unwrap();
        t.top_up("t1", 20);
        t.paid("t1", 20).unwrap();
        assert!(
            matches!(
                t.refused(set(true, 10, 20, 100)),
                Rejection::PaymentMethodRequired(_)
            ),
            "a card without a customer"
        );
        t.apply(Op::SetPaymentCustomer {
            account: acme(),
            customer: "cus_1".into(),
        })
        .unwrap();
        let kept = t
            .apply(Op::SetPaymentCustomer {
                account: acme(),
                customer: "cus_2".into(),
            })
            .unwrap();
        let Outcome::PaymentProfile { profile } = kept else {
            panic!()
        };
        assert_eq!(
            profile.customer.as_deref(),
            Some("cus_1"),
            "the first one stays"
        );
        for (bad, field) in [
            (set(true, -1, 20, 100), "threshold_usd"),
            (set(true, 10, 4, 100), "amount_usd"),
            (set(true, 10, 20_000, 100_000), "amount_usd"),
            (set(true, 10, 20, 19), "max_per_month_usd"),
        ] {
            assert!(
                matches!(t.refused(bad), Rejection::Invalid { field: f, .. } if f == field),
                "{field}"
            );
        }
        // A paused rule with a failure and a top-up in flight: set again, it is active, the
        // failures and the wait are gone, what is in flight and the month's total stay.
        let acct = t.s.accounts.get_mut(&acme()).unwrap();
        acct.payment.auto_top_up = Some(AutoTopUp {
            paused: Some(PausedReason::RepeatedFailures),
            failures: 3,
            not_before: Some(T.plus_ms(1 << 40)),
            in_flight: Some(id("auto-7")),
            month_total: Nanos(40 * USD),
            ..acct.payment.auto_top_up.clone().unwrap()
        });
        t.apply(set(true, 10, 20, 100)).unwrap();
        let r = t.acct().payment.auto_top_up.clone().unwrap();
        assert_eq!((r.paused, r.failures, r.not_before), (None, 0, None));
        assert_eq!(
            (r.in_flight, r.month_total),
            (Some(id("auto-7")), Nanos(40 * USD))
        );
    }

    #[test]
    fn top_up_ids_are_idempotent_in_range_and_auto_ones_are_the_rules() {
        let mut t = T1::new();
        let create = |top_up: &str, usd: i64| Op::CreateTopUp {
            account: acme(),
            top_up_id: id(top_up),
            amount: Nanos(usd * USD),
        };
        let first = t.apply(create("t1", 10)).unwrap();
        let Outcome::TopUp {
            top_up,
            replayed: false,
        } = first
        else {
            panic!()
        };
        assert_eq!(
            t.apply(create("t1", 10)).unwrap(),
            Outcome::TopUp {
                top_up,
                replayed: true
            }
        );
        assert!(matches!(
            t.refused(create("t1", 11)),
            Rejection::Conflict(_)
        ));
        assert!(matches!(
            t.refused(create("t2", 4)),
            Rejection::Invalid {
                field: "amount_usd",
                ..
            }
        ));
        assert!(matches!(
            t.refused(create("auto-1", 10)),
            Rejection::Invalid {
                field: "top_up_id",
                ..
            }
        ));
        assert!(matches!(
            t.refused(Op::Purchase {
                account: acme(),
                purchase_id: id("auto-1"),
                amount: Nanos(USD),
                paid: true,
                expires_at: None,
            }),
            Rejection::Invalid {
                field: "purchase_id",
                ..
            }
        ));
        t.tell(PaymentEffect::CheckoutCreated {
            top_up_id: id("t1"),
            session: "cs_1".into(),
            url: "https://pay.test/cs_1".into(),
        })
        .unwrap();
        let top_up = &t.s.top_ups[&(acme(), id("t1"))];
        assert_eq!(top_up.checkout_session.as_deref(), Some("cs_1"));
        assert_eq!(
            top_up.checkout_url.as_deref(),
            Some("https://pay.test/cs_1")
        );
    }

    /// The rule `threshold`/`amount` (cap 100) set on `t`, whose customer is `cus_1`.
    fn rule_on(t: &mut T1, threshold: i64, amount: i64) -> Result<Outcome, Rejection> {
        t.apply(Op::SetPaymentCustomer {
            account: acme(),
            customer: "cus_1".into(),
        })
        .unwrap();
        t.apply(Op::SetAutoTopUp {
            account: acme(),
            rule: AutoTopUpRule {
                enabled: true,
                threshold: Nanos(threshold * USD),
                amount: Nanos(amount * USD),
                max_per_month: Nanos(100 * USD),
            },
        })
    }

    fn auto_top_ups(t: &T1) -> usize {
        t.s.top_ups
            .values()
            .filter(|t| t.kind == TopUpKind::Auto)
            .count()
    }

    fn debit(t: &mut T1, n: &str, usd: i64) {
        t.apply(Op::Adjust {
            account: acme(),
            adjustment_id: crate::ids::AdjustmentId::parse(n).unwrap(),
            amount: Nanos(-usd * USD),
            reason: "usage".into(),
        })
        .unwrap();
    }

    #[test]
    fn a_dispute_pauses_the_rule_and_forgets_the_card_until_a_new_checkout_saves_one() {
        let mut t = T1::new();
        t.top_up("t1", 50);
        t.paid("t1", 50).unwrap();
        rule_on(&mut t, 10, 10).unwrap();
        t.dispute("t1", "dp1", 50, DisputeStatus::Open);
        assert_eq!(t.balance(), 0);
        assert_eq!(auto_top_ups(&t), 0, "no top-up after a dispute");
        let p = &t.acct().payment;
        assert_eq!(p.payment_method, None, "the card is forgotten");
        assert_eq!(
            p.auto_top_up.as_ref().unwrap().paused,
            Some(PausedReason::PaymentDisputed)
        );
        let paused = |t: &T1| {
            t.s.events
                .iter()
                .filter(|e| matches!(e.data, EventData::TopUpPaused { .. }))
                .map(|e| e.data.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            paused(&t),
            [EventData::TopUpPaused {
                reason: "payment_disputed".into(),
                failures: 0
            }]
        );
        // Lost: still paused, told once. A later report of the disputed payment does not save
        // its card again.
        t.dispute("t1", "dp1", 50, DisputeStatus::Lost);
        assert_eq!(paused(&t).len(), 1);
        t.tell(PaymentEffect::Paid {
            top_up_id: id("t1"),
            amount: Nanos(50 * USD),
            payment_intent: Some("pi_t1".into()),
            payment_method: Some("pm_1".into()),
        })
        .unwrap();
        assert_eq!(t.acct().payment.payment_method, None);
        // Unlocked by the operator, the balance topped up by hand: the rule stays paused, and
        // cannot be set again without a card.
        t.apply(Op::LiftDispute {
            account: acme(),
            reason: "written off".into(),
        })
        .unwrap();
        t.apply(Op::Purchase {
            account: acme(),
            purchase_id: id("wire"),
            amount: Nanos(30 * USD),
            paid: true,
            expires_at: None,
        })
        .unwrap();
        debit(&mut t, "a1", 25);
        assert_eq!((t.balance(), auto_top_ups(&t)), (5, 0));
        assert!(matches!(
            rule_on(&mut t, 10, 10),
            Err(Rejection::PaymentMethodRequired(_))
        ));
        // The customer pays a checkout saving a card (consenting again) and sets the rule.
        t.top_up("t2", 10);
        t.tell(PaymentEffect::Paid {
            top_up_id: id("t2"),
            amount: Nanos(10 * USD),
            payment_intent: Some("pi_t2".into()),
            payment_method: Some("pm_2".into()),
        })
        .unwrap();
        rule_on(&mut t, 20, 10).unwrap();
        let started = &t.s.top_ups[&(acme(), id("auto-1"))];
        assert_eq!(started.amount, Nanos(10 * USD), "15 is 5 short of 20");
        assert!(matches!(
            &t.s.events.last().unwrap().data,
            EventData::TopUpStarted { payment_method, .. } if payment_method == "pm_2"
        ));
    }

    #[test]
    fn a_card_disputed_before_its_payment_is_reported_is_not_saved() {
        let mut t = T1::new();
        t.top_up("t1", 20);
        t.dispute("t1", "dp1", 20, DisputeStatus::Open);
        t.paid("t1", 20).unwrap();
        assert_eq!(t.acct().payment.payment_method, None);
        assert_eq!(t.balance(), 0);
    }

    #[test]
    fn a_refund_a_dispute_or_an_unlock_never_starts_a_top_up() {
        let mut t = T1::new();
        t.top_up("t1", 40);
        t.paid("t1", 40).unwrap();
        rule_on(&mut t, 30, 10).unwrap();
        assert_eq!(auto_top_ups(&t), 0, "40 is above 30");
        // The operator refunds 15 at the provider: 25, below 30, and no charge follows.
        let Outcome::Refunded { refund, .. } = t
            .apply(Op::Refund {
                account: acme(),
                purchase_id: id("t1"),
                refund_id: id("r1"),
                amount: Nanos(15 * USD),
                provider: Some(ProviderRefund {
                    reference: "re_1".into(),
                    refunded_total: Nanos(15 * USD),
                }),
            })
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(refund.taken, Nanos(15 * USD));
        assert_eq!((t.balance(), auto_top_ups(&t)), (25, 0));
        // The provider's refund event of more.
        t.tell(PaymentEffect::Refunded {
            top_up_id: id("t1"),
            refunded_total: Nanos(20 * USD),
        })
        .unwrap();
        assert_eq!((t.balance(), auto_top_ups(&t)), (20, 0));
        // A dispute told already decided for the platform (no lock, nothing taken).
        t.dispute("t1", "dp1", 5, DisputeStatus::Won);
        assert_eq!((t.balance(), auto_top_ups(&t)), (20, 0));
        // An operator's unlock of a lock set by hand.
        t.apply(Op::LockDisputed { account: acme() }).unwrap();
        t.apply(Op::LiftDispute {
            account: acme(),
            reason: "checked".into(),
        })
        .unwrap();
        assert_eq!(t.acct().lock_reason(), None);
        assert_eq!(auto_top_ups(&t), 0, "no top-up after an unlock");
        // Spending decides again: the rule was neither paused nor its card forgotten.
        debit(&mut t, "a1", 1);
        assert_eq!(
            t.s.top_ups[&(acme(), id("auto-1"))].amount,
            Nanos(20 * USD),
            "19 is 11 short of 30: two amounts"
        );
    }

    #[test]
    fn a_cancelled_top_up_fails_without_counting_as_a_failure_of_the_card() {
        let mut t = T1::new();
        t.top_up("t1", 20);
        t.paid("t1", 20).unwrap();
        rule_on(&mut t, 30, 10).unwrap();
        let rule = |t: &T1| t.acct().payment.auto_top_up.clone().unwrap();
        assert_eq!(rule(&t).in_flight, Some(id("auto-1")));
        // It is declined once (the next waits), then the next one is cancelled.
        t.tell(PaymentEffect::Failed {
            top_up_id: id("auto-1"),
            reason: "card_declined".into(),
            needs_customer: false,
        })
        .unwrap();
        let waits_until = rule(&t).not_before;
        assert!(waits_until.is_some());
        t.now = waits_until.unwrap();
        debit(&mut t, "a1", 1);
        assert_eq!(rule(&t).in_flight, Some(id("auto-2")));
        assert_eq!(rule(&t).month_total, Nanos(20 * USD));
        // Its delivery finds the decision stale (the card changed, say): cancelled.
        t.apply(Op::Payment {
            account: acme(),
            event: None,
            effect: PaymentEffect::Cancelled {
                top_up_id: id("auto-2"),
            },
        })
        .unwrap();
        let top_up = &t.s.top_ups[&(acme(), id("auto-2"))];
        assert_eq!(
            (top_up.status, top_up.failure.as_deref()),
            (TopUpStatus::Failed, Some(CANCELLED))
        );
        let failed: Vec<&EventData> = t
            .s
            .events
            .iter()
            .map(|e| &e.data)
            .filter(|d| matches!(d, EventData::TopUpFailed { top_up_id, .. } if *top_up_id == id("auto-2")))
            .collect();
        assert_eq!(
            failed,
            [&EventData::TopUpFailed {
                top_up_id: id("auto-2"),
                kind: "auto".into(),
                amount_nano_usd: Nanos(20 * USD),
                reason: "cancelled".into(),
                failures: 1,
            }]
        );
        let r = rule(&t);
        assert_eq!(r.failures, 1, "not counted as a failure");
        assert_eq!(r.paused, None);
        // No wait after a cancel: the rule decides again at once (with the card saved now),
        // and the month counts only the new one.
        assert_eq!(r.in_flight, Some(id("auto-3")));
        assert_eq!(r.month_total, Nanos(20 * USD));
        assert_eq!(t.balance(), 19, "nothing credited");
        // A top-up already decided is left as it is.
        let before = format!("{:?}", t.s.top_ups);
        t.apply(Op::Payment {
            account: acme(),
            event: None,
            effect: PaymentEffect::Cancelled {
                top_up_id: id("t1"),
            },
        })
        .unwrap();
        assert_eq!(format!("{:?}", t.s.top_ups), before);
    }

    #[test]
    fn turning_the_rule_off_is_never_refused_for_its_amounts() {
        let mut t = T1::new();
        let off = |threshold: i64, amount: i64, max: i64| Op::SetAutoTopUp {
            account: acme(),
            rule: AutoTopUpRule {
                enabled: false,
                threshold: Nanos(threshold * USD),
                amount: Nanos(amount * USD),
                max_per_month: Nanos(max * USD),
            },
        };
        // Amounts the deployment no longer allows (below its smallest top-up, beyond its
        // largest), a cap below the amount, a negative threshold: off all the same.
        for (threshold, amount, max) in [
            (10, 1, 100),
            (10, 20_000, 100_000),
            (10, 20, 19),
            (-1, 20, 100),
        ] {
            let Outcome::PaymentProfile { profile } = t.apply(off(threshold, amount, max)).unwrap()
            else {
                panic!()
            };
            assert!(!profile.auto_top_up.unwrap().enabled);
        }
    }
}
