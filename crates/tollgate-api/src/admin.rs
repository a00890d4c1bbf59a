//! The operator API (docs/reference/API.md section 1): accounts, credits, keys, terms, the
//! catalog and the reconciliation. Every call needs an `OPERATOR` key.

use crate::auth::issue_key;
use crate::error::ApiError;
use crate::extract::{FromQuery, Json, NoParams, Operator, Params, Path};
use crate::openapi::{tags, OperatorErrors, Replayed};
use crate::query_string::Query;
use crate::wire::{self, SignedUsdString, Time, UsdString};
use crate::AppState;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use tollgate_core::catalog::document;
use tollgate_core::decimal::ExactDecimal;
use tollgate_core::ids::{
    AccountId, AdjustmentId, ApiKeyId, EndpointId, KeyAlias, MachineType, PurchaseId,
};
use tollgate_core::machine::{AccountState, LockReason, Op, Outcome, PurchaseRecord};
use tollgate_core::price::PriceRule;
use tollgate_core::pricing::VolumeTier;
use tollgate_core::terms::{Terms, TermsChange};
use tollgate_core::{Nanos, Timestamp};
use tollgate_engine::{AdminCmd, AdminReply};
use tollgate_store::{AccountRow, BillingMode, Scope};
use utoipa::{IntoParams, ToSchema};

/// How an account pays.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Billing {
    /// Prepaid credits: holds are limited by the balance; locked when it runs out.
    #[default]
    Prepaid,
    /// Invoiced afterwards: never limited by credit, never locked for its balance.
    Invoice,
}

impl From<Billing> for BillingMode {
    fn from(b: Billing) -> Self {
        match b {
            Billing::Prepaid => BillingMode::Prepaid,
            Billing::Invoice => BillingMode::Invoice,
        }
    }
}

impl From<BillingMode> for Billing {
    fn from(b: BillingMode) -> Self {
        match b {
            BillingMode::Prepaid => Billing::Prepaid,
            BillingMode::Invoice => Billing::Invoice,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Accounts

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"username": "acme"}))]
pub struct CreateAccountBody {
    username: AccountId,
    /// Default `prepaid`.
    #[serde(default)]
    billing: Option<Billing>,
}

#[derive(Serialize, ToSchema)]
pub struct AccountCreated {
    username: AccountId,
    billing: Billing,
    created_at: Time,
}

/// Create an account
///
/// Creates a customer account. A new prepaid account has no credits and is therefore locked
/// until its first purchase. Not idempotent: creating a username that exists answers 409
/// `conflict` and changes nothing. Nothing is billed.
#[utoipa::path(
    post, path = "/v1/admin/accounts", tag = tags::OPERATOR, operation_id = "createAccount",
    security(("Key" = ["OPERATOR"])),
    request_body = CreateAccountBody,
    responses(
        OperatorErrors,
        (status = 201, description = "The account was created.", body = AccountCreated),
        (status = 409, description = "`conflict`: the username is taken.", body = ErrorResponse),
    )
)]
pub async fn create_account(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Json(body): Json<CreateAccountBody>,
) -> Result<(StatusCode, axum::Json<AccountCreated>), ApiError> {
    let billing = body.billing.unwrap_or_default();
    state
        .engine
        .admin(AdminCmd::CreateAccount {
            username: body.username.clone(),
            billing: billing.into(),
        })
        .await?;
    let row = tollgate_query::account(&state.engine, &body.username).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(AccountCreated {
            username: body.username,
            billing,
            created_at: Time(row.created_at),
        }),
    ))
}

/// The operator's view of an account.
#[derive(Serialize, ToSchema)]
pub struct AccountView {
    username: AccountId,
    /// How the account pays by the terms in force now.
    billing: Billing,
    #[serde(flatten)]
    standing: Standing,
    paid_last_28d_nano_usd: i64,
    paid_lifetime_nano_usd: i64,
    /// The account's terms: those in force now, and versions scheduled to take effect later.
    terms: TermsView,
    /// What is left of each purchase, in spending order (earliest expiry first).
    credits: Vec<CreditLotView>,
    /// What is left of the credit operator adjustments added (it never expires and is spent
    /// after every purchase).
    adjusted_credit_nano_usd: i64,
    created_at: Time,
}

/// An account's terms over time.
#[derive(Serialize, ToSchema)]
pub struct TermsView {
    /// The terms in force now.
    in_force: TermsVersionView,
    /// Versions that take effect later, in order.
    scheduled: Vec<TermsVersionView>,
}

/// One version of an account's terms.
#[derive(Serialize, ToSchema)]
pub struct TermsVersionView {
    /// When this version takes effect; `null` for the terms an account has before any change
    /// (the defaults, in force from the beginning).
    effective_from: Option<Time>,
    /// The flat percent off every charge (partner endpoints excepted); `null`: none.
    #[schema(value_type = Option<ExactDecimal>)]
    percent_discount: Option<Decimal>,
    volume_tiers: Vec<VolumeTier>,
    /// The contractual limit of requests in progress; `null`: the tier table.
    concurrency_limit: Option<u32>,
    lock_threshold_nano_usd: i64,
    /// The balance below which the account's balance is low (`balance.low`); `null`: none.
    low_balance_nano_usd: Option<i64>,
    billing: Billing,
    /// The account's own per-second prices of machine types, in USD, which replace the
    /// catalog's for its serverless and compute-second usage.
    #[schema(value_type = BTreeMap<String, ExactDecimal>)]
    machine_prices: BTreeMap<MachineType, Decimal>,
}

impl TermsVersionView {
    fn of(effective_from: Option<Timestamp>, t: &Terms) -> TermsVersionView {
        TermsVersionView {
            effective_from: effective_from.map(Time),
            percent_discount: t.discounts.percent_discount.map(|p| p.normalize()),
            volume_tiers: t.discounts.volume_tiers.clone(),
            concurrency_limit: t.concurrency_override,
            lock_threshold_nano_usd: t.lock_threshold.0,
            low_balance_nano_usd: t.low_balance.map(|n| n.0),
            billing: t.billing.into(),
            machine_prices: t
                .machine_prices
                .iter()
                .map(|(m, p)| (m.clone(), p.normalize()))
                .collect(),
        }
    }
}

fn terms_view(s: &AccountState, now: Timestamp) -> TermsView {
    let since = s
        .terms
        .versions()
        .iter()
        .rev()
        .find(|v| v.effective_from <= now)
        .map(|v| v.effective_from);
    TermsView {
        in_force: TermsVersionView::of(since, &s.terms_at(now)),
        scheduled: s
            .terms
            .after(now)
            .iter()
            .map(|v| TermsVersionView::of(Some(v.effective_from), &v.terms))
            .collect(),
    }
}

#[derive(Serialize, ToSchema)]
pub struct CreditLotView {
    purchase_id: PurchaseId,
    remaining_nano_usd: i64,
    /// `null`: never expires.
    expires_at: Option<Time>,
}

/// What an account's view and its item in the account list both show of its money and its
/// state, computed in one place so that the two always agree.
#[derive(Serialize, ToSchema)]
pub struct Standing {
    /// Purchases and adjustments minus posted charges, nano-USD (negative when the account
    /// owes: an output cost more than its hold and the credits, or a debit).
    balance_nano_usd: i64,
    /// Open holds, nano-USD.
    held_nano_usd: i64,
    /// Balance minus holds, nano-USD.
    available_nano_usd: i64,
    in_progress: u32,
    concurrency_limit: u32,
    /// New requests are refused: while the balance is at or below the lock threshold
    /// (prepaid), or while a payment dispute locks the account.
    locked: bool,
    /// Why the account is locked (`null` when it is not): `payment_disputed` (lifted by the
    /// dispute's resolution or `POST .../unlock`, never by credits) before
    /// `exhausted_balance` (lifted by credits only).
    #[schema(value_type = Option<LockReason>)]
    lock_reason: Option<LockReason>,
}

impl Standing {
    pub(crate) fn of(state: &AppState, s: &AccountState) -> Standing {
        Standing {
            balance_nano_usd: s.credit.balance.0,
            held_nano_usd: s.credit.held.0,
            available_nano_usd: s.credit.available().0,
            in_progress: s.in_progress,
            concurrency_limit: s.concurrency_limit(&state.engine.catalog()),
            locked: s.is_locked(),
            lock_reason: s.lock_reason(),
        }
    }
}

pub fn account_view(state: &AppState, row: &AccountRow) -> AccountView {
    let s = &row.state;
    let now = state.engine.now();
    AccountView {
        username: s.credit.id.clone(),
        billing: row.billing.into(),
        standing: Standing::of(state, s),
        paid_last_28d_nano_usd: s.paid_28d.0,
        paid_lifetime_nano_usd: s.paid_lifetime.0,
        terms: terms_view(s, now),
        credits: s
            .lots
            .iter()
            .map(|l| CreditLotView {
                purchase_id: l.purchase_id.clone(),
                remaining_nano_usd: l.remaining.0,
                expires_at: l.expires_at.map(Time),
            })
            .collect(),
        adjusted_credit_nano_usd: s.adjusted_credit.0,
        created_at: Time(row.created_at),
    }
}

/// Show an account
///
/// The account's balance (purchases minus posted charges), held amount (open holds),
/// available balance (balance minus holds), requests in progress, concurrency limit, lock
/// state and its reason, paid purchases, negotiated terms (in force now, and scheduled) and
/// credit lots. Read-only.
#[utoipa::path(
    get, path = "/v1/admin/accounts/{username}", tag = tags::OPERATOR,
    operation_id = "getAccount", security(("Key" = ["OPERATOR"])),
    params(("username" = AccountId, Path, description = "The account's username.")),
    responses(
        OperatorErrors,
        (status = 200, description = "The account.", body = AccountView),
        (status = 404, description = "`not_found`: unknown account.", body = ErrorResponse),
    )
)]
pub async fn show_account(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Path(username): Path<AccountId>,
) -> Result<axum::Json<AccountView>, ApiError> {
    let row = tollgate_query::account(&state.engine, &username).await?;
    Ok(axum::Json(account_view(&state, &row)))
}

// ---------------------------------------------------------------------------------------------
// Purchases

/// `paid` purchases count towards the concurrency tier; `free` grants add credits only.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PurchaseKind {
    #[default]
    Paid,
    Free,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"purchase_id": "p-1", "amount_usd": "25.00"}))]
pub struct PurchaseBody {
    /// Your idempotency id for this purchase, unique per account.
    purchase_id: PurchaseId,
    /// Credits to add, in USD: greater than 0 and at most 1000000.
    #[serde(deserialize_with = "wire::usd")]
    #[schema(value_type = UsdString)]
    amount_usd: Nanos,
    /// Default `paid`.
    #[serde(default)]
    kind: Option<PurchaseKind>,
    /// When what is left of these credits expires, in the future. Default: 365 days after
    /// the purchase for `paid`, never for `free`.
    #[serde(default, deserialize_with = "wire::time_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<Timestamp>,
}

#[derive(Serialize, ToSchema)]
pub struct Purchase {
    purchase_id: PurchaseId,
    kind: PurchaseKind,
    amount_nano_usd: i64,
    /// The balance right after this purchase.
    balance_nano_usd: i64,
    /// The account's concurrency limit right after this purchase.
    concurrency_limit: u32,
    locked: bool,
    created_at: Time,
    /// `null`: never expires.
    expires_at: Option<Time>,
}

/// Add credits
///
/// Adds credits to the account: a paid purchase (default; it also raises the concurrency
/// tier, which counts paid purchases of the trailing 28 days) or a free grant. A purchase that
/// lifts the balance above the lock threshold unlocks the account in the same commit.
///
/// **Expiry.** Each purchase is a credit lot. Paid credits expire 365 days after the purchase
/// and free credits never, unless `expires_at` says otherwise. Charges spend the lot that
/// expires first (lots that never expire last). What is left of a lot past its date is
/// expired by the sweeper, except what open holds reserve: a started request is billed
/// normally, and the rest of its lot expires once it settles. While the balance is negative, a
/// purchase repays the debt first.
///
/// Idempotent on `purchase_id`: the same id with the same amount and kind (and the same
/// `expires_at`, or none) answers the first answer again (201, header
/// `idempotent-replayed: true`) and adds nothing; the same id with a different amount, kind or
/// `expires_at` answers 409 `conflict`.
#[utoipa::path(
    post, path = "/v1/admin/accounts/{username}/purchases", tag = tags::OPERATOR,
    operation_id = "createPurchase", security(("Key" = ["OPERATOR"])),
    params(("username" = AccountId, Path, description = "The account's username.")),
    request_body = PurchaseBody,
    responses(
        OperatorErrors,
        (status = 201, description = "The purchase (the first answer, when replayed).",
            body = Purchase, headers(("idempotent-replayed" = Replayed))),
        (status = 404, description = "`not_found`: unknown account.", body = ErrorResponse),
        (status = 409, description = "`conflict`: the `purchase_id` was already used with a \
            different amount, kind or expiry.", body = ErrorResponse),
    )
)]
pub async fn purchase(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Path(account): Path<AccountId>,
    Json(body): Json<PurchaseBody>,
) -> Result<(StatusCode, HeaderMap, axum::Json<Purchase>), ApiError> {
    let (p, replayed) = add_credits(
        &state,
        account,
        body.purchase_id,
        body.amount_usd,
        body.kind.unwrap_or_default(),
        body.expires_at,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Replayed::header(replayed),
        axum::Json(Purchase {
            purchase_id: p.purchase_id,
            kind: if p.paid {
                PurchaseKind::Paid
            } else {
                PurchaseKind::Free
            },
            amount_nano_usd: p.amount.0,
            balance_nano_usd: p.balance_after.0,
            concurrency_limit: p.concurrency_limit_after,
            locked: p.locked_after,
            created_at: Time(p.created_at),
            expires_at: p.expires_at.map(Time),
        }),
    ))
}

/// Adds credits to `account` (see [`purchase`]): the purchase as recorded, and whether this
/// was a repeat of a purchase already made with the same id (then nothing was added). The
/// operator API and the console both add credits through this.
pub async fn add_credits(
    state: &AppState,
    account: AccountId,
    purchase_id: PurchaseId,
    amount: Nanos,
    kind: PurchaseKind,
    expires_at: Option<Timestamp>,
) -> Result<(PurchaseRecord, bool), ApiError> {
    let outcome = state
        .engine
        .execute(Op::Purchase {
            account,
            purchase_id,
            amount,
            paid: kind == PurchaseKind::Paid,
            expires_at,
        })
        .await??;
    match outcome {
        Outcome::Purchased { purchase, replayed } => Ok((purchase, replayed)),
        _ => Err(ApiError::server("unexpected outcome")),
    }
}

// ---------------------------------------------------------------------------------------------
// Adjustments and unlock

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"adjustment_id": "adj-1", "amount_usd": "-2.50",
    "reason": "double-billed request 0193e3b0"}))]
pub struct AdjustmentBody {
    /// Your idempotency id for this adjustment, unique per account.
    adjustment_id: AdjustmentId,
    /// Signed USD: positive credits the account, negative debits it; not zero, at most
    /// 1000000 either way.
    #[serde(deserialize_with = "wire::signed_usd")]
    #[schema(value_type = SignedUsdString)]
    amount_usd: Nanos,
    /// Why: 1 to 500 characters, no control characters. Kept with the adjustment.
    reason: String,
}

#[derive(Serialize, ToSchema)]
pub struct Adjustment {
    adjustment_id: AdjustmentId,
    /// Signed: positive for a credit, negative for a debit.
    amount_nano_usd: i64,
    reason: String,
    /// The balance right after this adjustment (negative when a debit leaves the account
    /// owing).
    balance_nano_usd: i64,
    locked: bool,
    created_at: Time,
}

/// Adjust a balance
///
/// An operator's correction of the account's balance: a credit (positive `amount_usd`) or a
/// debit (negative). It is posted in the ledger at once, double-entry against the
/// operator's adjustments account, in the same commit as its effect on the lock: a credit
/// that lifts the balance above the lock threshold unlocks the account, a debit that takes it
/// to the threshold or below locks it. A credit repays what the account owes first; what is
/// left of it never expires and is spent after every purchase. A debit spends credits as a
/// charge does, and may take the balance below zero (it is a correction: what it takes
/// beyond the balance is owed, and repaid by the next credits). Open holds are not touched.
///
/// Idempotent on `adjustment_id`: the same id with the same amount answers the first answer
/// again (201, header `idempotent-replayed: true`) and moves nothing; with a different
/// amount, 409 `conflict`.
#[utoipa::path(
    post, path = "/v1/admin/accounts/{username}/adjustments", tag = tags::OPERATOR,
    operation_id = "createAdjustment", security(("Key" = ["OPERATOR"])),
    params(("username" = AccountId, Path, description = "The account's username.")),
    request_body = AdjustmentBody,
    responses(
        OperatorErrors,
        (status = 201, description = "The adjustment (the first answer, when replayed).",
            body = Adjustment, headers(("idempotent-replayed" = Replayed))),
        (status = 404, description = "`not_found`: unknown account.", body = ErrorResponse),
        (status = 409, description = "`conflict`: the `adjustment_id` was already used with a \
            different amount.", body = ErrorResponse),
    )
)]
pub async fn adjust(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Path(account): Path<AccountId>,
    Json(body): Json<AdjustmentBody>,
) -> Result<(StatusCode, HeaderMap, axum::Json<Adjustment>), ApiError> {
    let outcome = state
        .engine
        .execute(Op::Adjust {
            account,
            adjustment_id: body.adjustment_id,
            amount: body.amount_usd,
            reason: body.reason,
        })
        .await??;
    let Outcome::Adjusted {
        adjustment: a,
        replayed,
    } = outcome
    else {
        return Err(ApiError::server("unexpected outcome"));
    };
    Ok((
        StatusCode::CREATED,
        Replayed::header(replayed),
        axum::Json(Adjustment {
            adjustment_id: a.adjustment_id,
            amount_nano_usd: a.amount.0,
            reason: a.reason,
            balance_nano_usd: a.balance_after.0,
            locked: a.locked_after,
            created_at: Time(a.created_at),
        }),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "dispute reviewed with the customer"}))]
pub struct UnlockBody {
    /// Why: 1 to 500 characters, no control characters.
    reason: String,
}

/// Unlock an account
///
/// Lifts a `payment_disputed` lock (set when a customer's payment is disputed at the payment
/// provider). A lock from an exhausted balance lifts only by credits
/// (a purchase or an adjustment): unlocking an account locked only for that answers 409
/// `conflict` and changes nothing. An account both disputed and exhausted keeps the
/// `exhausted_balance` lock. Unlocking an account that is not locked changes nothing.
#[utoipa::path(
    post, path = "/v1/admin/accounts/{username}/unlock", tag = tags::OPERATOR,
    operation_id = "unlockAccount", security(("Key" = ["OPERATOR"])),
    params(("username" = AccountId, Path, description = "The account's username.")),
    request_body = UnlockBody,
    responses(
        OperatorErrors,
        (status = 200, description = "The account after the unlock.", body = AccountView),
        (status = 404, description = "`not_found`: unknown account.", body = ErrorResponse),
        (status = 409, description = "`conflict`: the account is locked only because its \
            balance is exhausted; credits lift that lock.", body = ErrorResponse),
    )
)]
pub async fn unlock(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Path(account): Path<AccountId>,
    Json(body): Json<UnlockBody>,
) -> Result<axum::Json<AccountView>, ApiError> {
    let (row, _) = lift_dispute_lock(&state, &account, body.reason).await?;
    Ok(axum::Json(account_view(&state, &row)))
}

/// Lifts `account`'s `payment_disputed` lock, as `POST .../unlock` does (the console's form
/// calls it too): the account after it, and whether the lock was lifted (`false`: it was not
/// locked by a dispute, nothing changed). 409 `conflict` when the account is locked only
/// because its balance is exhausted, which only credits lift.
pub async fn lift_dispute_lock(
    state: &AppState,
    account: &AccountId,
    reason: String,
) -> Result<(AccountRow, bool), ApiError> {
    let outcome = state
        .engine
        .execute(Op::LiftDispute {
            account: account.clone(),
            reason: reason.clone(),
        })
        .await??;
    let Outcome::LockChanged {
        lock_reason,
        changed,
    } = outcome
    else {
        return Err(ApiError::server("unexpected outcome"));
    };
    let row = tollgate_query::account(&state.engine, account).await?;
    if changed {
        tracing::info!(account = %account, reason = %reason, "dispute lock lifted by an operator");
    } else if lock_reason == Some(LockReason::ExhaustedBalance) {
        let s = &row.state;
        return Err(ApiError::conflict(format!(
            "account {account} is locked because its balance ({}) is at or below its lock \
             threshold ({}), and only credits lift that lock: add a purchase or an adjustment",
            s.credit.balance, s.credit.lock_threshold
        ))
        .with("lock_reason", LockReason::ExhaustedBalance.as_str()));
    }
    Ok((row, changed))
}

// ---------------------------------------------------------------------------------------------
// Keys

/// The scope of a customer key.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, ToSchema)]
pub enum CustomerScope {
    /// Inference, models, prices, estimates, analytics.
    #[serde(rename = "API")]
    Api,
    /// Also usage, billing events, the account's billing and its `API` keys.
    #[serde(rename = "ADMIN")]
    Admin,
}

impl From<CustomerScope> for Scope {
    fn from(s: CustomerScope) -> Self {
        match s {
            CustomerScope::Api => Scope::Api,
            CustomerScope::Admin => Scope::Admin,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"scope": "ADMIN", "alias": "backend"}))]
pub struct CreateKeyBody {
    scope: CustomerScope,
    alias: KeyAlias,
}

#[derive(Serialize, ToSchema)]
pub struct KeyCreated {
    key_id: ApiKeyId,
    /// Shown once: only its SHA-256 is stored.
    key_secret: String,
    /// `key_id:key_secret`, as `Authorization: Key ...` takes it.
    key: String,
    scope: CustomerScope,
    alias: KeyAlias,
}

/// Create a customer key
///
/// Mints an `API` or `ADMIN` key for the account, with the same rules as a customer's own
/// `POST /v1/keys` (an alias of 1 to 255 characters, no control characters). The secret is in
/// this answer only (tollgate stores its SHA-256). Not idempotent: every call mints a new key.
#[utoipa::path(
    post, path = "/v1/admin/accounts/{username}/keys", tag = tags::OPERATOR,
    operation_id = "createKey", security(("Key" = ["OPERATOR"])),
    params(("username" = AccountId, Path, description = "The account's username.")),
    request_body = CreateKeyBody,
    responses(
        OperatorErrors,
        (status = 201, description = "The new key.", body = KeyCreated),
        (status = 404, description = "`not_found`: unknown account.", body = ErrorResponse),
    )
)]
pub async fn create_key(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Path(account): Path<AccountId>,
    Json(body): Json<CreateKeyBody>,
) -> Result<(StatusCode, axum::Json<KeyCreated>), ApiError> {
    let key = issue_key(&state, account, body.scope.into(), body.alias.clone()).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(KeyCreated {
            key: key.key(),
            key_id: key.record.key_id,
            key_secret: key.secret,
            scope: body.scope,
            alias: body.alias,
        }),
    ))
}

// ---------------------------------------------------------------------------------------------
// Terms

/// `Some(None)` for an explicit `null`, so `"concurrency_limit": null` can mean "back to the
/// tier table" while an absent field means "unchanged".
fn double_option<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// An account's terms to change: only the fields present change.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"percent_discount": "10", "prices": {"fal-ai/flux/dev": {"unit": "megapixel", "unit_price": "0.02"}}}))]
pub struct TermsBody {
    /// A flat percent off every charge (0 to 100; partner endpoints excepted).
    #[serde(default, deserialize_with = "tollgate_core::decimal::de_text_opt")]
    #[schema(value_type = Option<ExactDecimal>)]
    percent_discount: Option<Decimal>,
    /// Volume discounts by month-to-date billed subtotal (replaced as a whole).
    #[serde(default)]
    volume_tiers: Option<Vec<VolumeTier>>,
    /// A contractual limit of requests in progress (at least 1); `null` returns to the tier
    /// table.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 4294967295_i64)]
    concurrency_limit: Option<Option<u32>>,
    /// A prepaid account locks while its balance is at or below this (default 0).
    #[serde(default, deserialize_with = "lock_threshold")]
    #[schema(value_type = Option<UsdString>)]
    lock_threshold_usd: Option<Nanos>,
    /// The balance below which the account's balance is low (a `balance.low` notification);
    /// `null` removes it.
    #[serde(default, deserialize_with = "low_balance")]
    #[schema(value_type = Option<UsdString>)]
    low_balance_usd: Option<Option<Nanos>>,
    /// How the account pays from `effective_from`: `prepaid` (holds limited by the balance;
    /// locked at the lock threshold) or `invoice` (never limited by credit, never locked for
    /// its balance).
    #[serde(default)]
    billing: Option<Billing>,
    /// Described by [`machine_prices_schema`].
    #[serde(default, deserialize_with = "machine_prices")]
    #[schema(schema_with = machine_prices_schema)]
    machine_prices: BTreeMap<MachineType, Option<Decimal>>,
    /// The account's own prices, by endpoint: each a new account-scoped price version.
    #[serde(default)]
    prices: BTreeMap<EndpointId, PriceRule>,
    /// When the terms and `prices` of this change take effect (default now); never in the
    /// past, nor before the account's latest terms version (for terms) or latest price version
    /// of the endpoint (for prices).
    #[serde(default, deserialize_with = "wire::time_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    effective_from: Option<Timestamp>,
}

#[derive(Deserialize)]
struct Usd(#[serde(deserialize_with = "wire::usd")] Nanos);

fn lock_threshold<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Nanos>, D::Error> {
    Option::<Usd>::deserialize(d).map(|u| u.map(|Usd(n)| n))
}

/// Present: `Some`, with `None` for `null` (no low-balance level).
fn low_balance<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<Nanos>>, D::Error> {
    Option::<Usd>::deserialize(d).map(|u| Some(u.map(|Usd(n)| n)))
}

/// The schema of `machine_prices` (or `null`: no change): machine types to an `ExactDecimal`
/// or `null`.
fn machine_prices_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type};
    use utoipa::openapi::Ref;
    let price_or_null = OneOfBuilder::new()
        .item(Ref::from_schema_name("ExactDecimal"))
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .build();
    let machine_type = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[A-Za-z0-9._-]{1,64}$"))
        .build();
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
            .description(Some(
                "The account's own per-second prices of machine types of the catalog, in USD \
                 (decimal strings, 0 to 1000), which replace the catalog's for its serverless \
                 and compute-second usage; a machine type set to `null` returns to the \
                 catalog's price, and those not named keep theirs. A machine type the catalog \
                 does not have: 404.",
            ))
            .property_names(Some(Schema::Object(machine_type)))
            .additional_properties(Some(Schema::OneOf(price_or_null)))
            .examples([serde_json::json!({"GPU-H100": "0.0004", "GPU-A100": null})])
            .build(),
    )
}

/// A map of machine types to decimal strings or `null`; `null` for the whole map is no change.
fn machine_prices<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<MachineType, Option<Decimal>>, D::Error> {
    #[derive(Deserialize)]
    struct Price(
        #[serde(deserialize_with = "tollgate_core::decimal::de_text_opt")] Option<Decimal>,
    );
    let map = Option::<BTreeMap<MachineType, Price>>::deserialize(d)?;
    Ok(map
        .unwrap_or_default()
        .into_iter()
        .map(|(m, Price(p))| (m, p))
        .collect())
}

#[derive(Serialize, ToSchema)]
pub struct TermsSet {
    account: AccountView,
    price_versions_created: usize,
}

/// Set an account's terms
///
/// Sets the account's negotiated terms. A field that is absent (or `null`) leaves its term as
/// it is, except `concurrency_limit: null`, which returns to the tier table, and
/// `low_balance_usd: null`, which removes the level: the flat `percent_discount`, the
/// `volume_tiers` (replaced as a whole), a contractual `concurrency_limit`, the
/// `lock_threshold_usd`, the `low_balance_usd`, how the account pays (`billing`), its own
/// `machine_prices` (by machine type: `null` returns one to the catalog's price), and
/// account-specific `prices`.
///
/// **Effective dates.** Terms and prices never change in place. A change of terms is a new
/// terms version effective from `effective_from` (default now), whose absent fields keep
/// their value from the version before; each price is a new account-scoped price version
/// from the same time. Neither is ever dated in the past (usage already billed, held or still
/// to be reported keeps what was in force when it happened) nor before the account's latest
/// version (of its terms; of that endpoint's price): 400 naming `effective_from`. A change
/// dated like the latest terms version is applied to it. Which version applies: a request is billed with
/// the price version, discounts (`percent_discount`, `volume_tiers`) and machine prices in
/// force when it was submitted (its hold is estimated with them too), a usage event with
/// those in force at its `timestamp`; the lock threshold, the concurrency limit and the
/// billing mode are admission rules, in force when a request is admitted (submitted,
/// started). Partner endpoints are never discounted.
///
/// One atomic change: two concurrent calls that change different fields both stick, and a
/// call that is refused (a bad field, an unknown endpoint) changes nothing. Idempotent in
/// effect: repeating the call sets the same terms, but creates new price versions for
/// `prices` again.
#[utoipa::path(
    put, path = "/v1/admin/accounts/{username}/pricing", tag = tags::OPERATOR,
    operation_id = "setAccountPricing", security(("Key" = ["OPERATOR"])),
    params(("username" = AccountId, Path, description = "The account's username.")),
    request_body = TermsBody,
    responses(
        OperatorErrors,
        (status = 200, description = "The account after the change.", body = TermsSet),
        (status = 404, description = "`not_found`: unknown account, or an endpoint of `prices` \
            or a machine type of `machine_prices` not in the catalog.", body = ErrorResponse),
    )
)]
pub async fn set_pricing(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Path(account): Path<AccountId>,
    Json(body): Json<TermsBody>,
) -> Result<axum::Json<TermsSet>, ApiError> {
    let change = TermsChange {
        percent_discount: body.percent_discount,
        volume_tiers: body.volume_tiers,
        concurrency_limit: body.concurrency_limit,
        lock_threshold: body.lock_threshold_usd,
        low_balance: body.low_balance_usd,
        billing: body.billing.map(Into::into),
        machine_prices: body.machine_prices,
        prices: body.prices.into_iter().collect(),
        effective_from: body.effective_from,
    };
    let price_versions_created = set_terms(&state, &account, change).await?;
    let row = tollgate_query::account(&state.engine, &account).await?;
    Ok(axum::Json(TermsSet {
        account: account_view(&state, &row),
        price_versions_created,
    }))
}

/// Changes an account's terms (see [`set_pricing`]): refuses an `effective_from` in the past,
/// then applies the change whole or not at all; answers how many price versions it created.
/// The operator API and the console both change terms through this.
pub async fn set_terms(
    state: &AppState,
    account: &AccountId,
    change: TermsChange,
) -> Result<usize, ApiError> {
    let now = state.engine.now();
    if let Some(at) = change.effective_from.filter(|at| *at < now) {
        return Err(ApiError::invalid(
            "effective_from",
            format!(
                "{} is in the past: an account's terms and prices take effect now or later, so \
                 what was already billed keeps what was in force",
                wire::rfc3339(at)
            ),
        ));
    }
    let reply = state
        .engine
        .admin(AdminCmd::SetTerms {
            username: account.clone(),
            change,
        })
        .await?;
    match reply {
        AdminReply::TermsSet {
            price_versions_created,
        } => Ok(price_versions_created),
        _ => Err(ApiError::server("unexpected reply")),
    }
}

// ---------------------------------------------------------------------------------------------
// The catalog

#[derive(Serialize, ToSchema)]
pub struct CatalogApplied {
    /// `true`: a preview (`dry_run=true`); nothing was written.
    dry_run: bool,
    /// Endpoints in the document.
    endpoints: usize,
    /// New price versions (0 when no price changed); with `dry_run`, those the apply would
    /// create.
    price_versions_created: usize,
    /// What the document changes, endpoint by endpoint.
    changes: CatalogChanges,
}

/// What a catalog document changes. The same for a preview and for the apply.
#[derive(Serialize, ToSchema)]
pub struct CatalogChanges {
    /// When the document's new price versions take effect (its `effective_from`, or the time
    /// of the apply).
    effective_from: Time,
    /// Endpoints added or changed, in document order.
    endpoints: Vec<EndpointChangeView>,
    /// Endpoints of the document that change nothing.
    unchanged: usize,
    /// Machine types added or repriced.
    machines: Vec<MachineChangeView>,
    /// The document replaces the concurrency table with a different one.
    concurrency_changed: bool,
    /// Changes worth a second look (a price or machine price that moves by more than 3x
    /// either way, a price whose unit changes). They do not stop the apply.
    warnings: Vec<CatalogWarning>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Not in the catalog before.
    Added,
    /// Its metadata or its price changes.
    Changed,
}

#[derive(Serialize, ToSchema)]
pub struct EndpointChangeView {
    endpoint_id: EndpointId,
    /// The line of its `[[endpoint]]` header.
    line: usize,
    change: ChangeKind,
    /// Metadata fields that change (`name`, `hold_units`, `late_completion`, ...).
    metadata_changed: Vec<String>,
    /// Present when the price becomes a new version.
    #[serde(skip_serializing_if = "Option::is_none")]
    price: Option<PriceChangeView>,
}

#[derive(Serialize, ToSchema)]
pub struct PriceChangeView {
    /// The endpoint's latest public price (`null` for an added endpoint).
    from: Option<PriceRule>,
    to: PriceRule,
    /// Headline USD per unit before and after, as the pricing API shows it.
    #[schema(value_type = Option<ExactDecimal>)]
    from_unit_price: Option<Decimal>,
    #[schema(value_type = Option<ExactDecimal>)]
    to_unit_price: Option<Decimal>,
    /// The unit of the new price, as the pricing API shows it.
    unit: String,
    effective_from: Time,
}

#[derive(Serialize, ToSchema)]
pub struct MachineChangeView {
    #[schema(value_type = String)]
    machine_type: tollgate_core::ids::MachineType,
    /// USD per second before (`null`: a new machine type).
    #[schema(value_type = Option<ExactDecimal>)]
    from: Option<Decimal>,
    #[schema(value_type = ExactDecimal)]
    to: Decimal,
}

#[derive(Serialize, ToSchema)]
pub struct CatalogWarning {
    /// `endpoint[3].price` or `machines.GPU-H100`.
    field: String,
    line: Option<usize>,
    message: String,
}

fn catalog_changes(p: &tollgate_core::catalog::plan::CatalogPlan) -> CatalogChanges {
    CatalogChanges {
        effective_from: Time(p.effective_from),
        endpoints: p
            .changes
            .iter()
            .map(|c| EndpointChangeView {
                endpoint_id: c.endpoint.clone(),
                line: c.line,
                change: if c.added {
                    ChangeKind::Added
                } else {
                    ChangeKind::Changed
                },
                metadata_changed: c.metadata_changed.iter().map(|f| f.to_string()).collect(),
                price: c.price.as_ref().map(|pc| PriceChangeView {
                    from: pc.from.clone(),
                    to: pc.to.clone(),
                    from_unit_price: pc.from_unit_price.map(|d| d.normalize()),
                    to_unit_price: pc.to_unit_price.map(|d| d.normalize()),
                    unit: pc.to.unit_label(),
                    effective_from: Time(pc.effective_from),
                }),
            })
            .collect(),
        unchanged: p.unchanged,
        machines: p
            .machines
            .iter()
            .map(|m| MachineChangeView {
                machine_type: m.machine_type.clone(),
                from: m.from.map(|d| d.normalize()),
                to: m.to.normalize(),
            })
            .collect(),
        concurrency_changed: p.concurrency_changed,
        warnings: p
            .warnings
            .iter()
            .map(|w| CatalogWarning {
                field: w.field.clone(),
                line: w.line,
                message: w.message.clone(),
            })
            .collect(),
    }
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CatalogParams {
    /// `true`: answer what the document would change and write nothing (default `false`).
    #[param(value_type = Option<bool>)]
    dry_run: bool,
}

impl FromQuery for CatalogParams {
    fn from_query(q: &Query) -> Result<Self, ApiError> {
        Ok(CatalogParams {
            dry_run: q.flag("dry_run", false)?,
        })
    }
}

/// A small catalog document, as the document's example of this call's body.
const CATALOG_EXAMPLE: &str = "prices_read_on = \"2026-09-15\"\n\n\
    [machines]\nGPU-H100 = \"0.000525\"\n\n\
    [[endpoint]]\nid = \"fal-ai/flux/dev\"\nname = \"FLUX.1 [dev]\"\n\
    category = \"text-to-image\"\nhold_units = \"4\"\n\
    price = { unit = \"megapixel\", unit_price = \"0.025\", rounding = \"up\" }\n";

/// Apply the catalog
///
/// Applies a catalog document: the endpoints (models) billed, their prices, the machine
/// types' per-second prices and optionally the concurrency table. The body is the TOML
/// document itself (format: `catalog/README.md`; example: `catalog/sample.toml`), sent as
/// `application/toml` (a `text/*` type or no `Content-Type` is also accepted), of at most
/// 4 MiB. Every decimal is a quoted string.
///
/// All or nothing: an invalid document answers 400 `validation_error` naming the line
/// (`error.line`) and field (`error.field`), and nothing is applied. Endpoint metadata is
/// replaced; a price that differs from the public price in force becomes a new version
/// effective from the document's `effective_from` (default now); versions are never edited or
/// back-dated. Idempotent: applying the same document again creates no new versions.
///
/// The answer lists the change endpoint by endpoint (`changes`: added or changed, the
/// metadata fields that change, the price from and to and when it takes effect, machine
/// prices) and warns of any price that moves by more than 3x either way. With
/// `dry_run=true` the same answer is computed against the catalog as it is and nothing is
/// written (an invalid document answers the same 400).
#[utoipa::path(
    put, path = "/v1/admin/catalog", tag = tags::OPERATOR, operation_id = "applyCatalog",
    security(("Key" = ["OPERATOR"])),
    params(CatalogParams),
    request_body(content = String, content_type = "application/toml",
        description = "The catalog document (TOML).", example = json!(CATALOG_EXAMPLE)),
    responses(
        OperatorErrors,
        (status = 200, description = "The catalog was applied (or, with `dry_run`, what it \
            would change).", body = CatalogApplied),
        (status = 413, description = "`payload_too_large`: the document is larger than \
            4 MiB (`error.limit_bytes`); nothing was applied.", body = ErrorResponse),
        (status = 415, description = "`validation_error`: the `Content-Type` is neither \
            `application/toml` nor `text/*`.", body = ErrorResponse),
    )
)]
pub async fn apply_catalog(
    State(state): State<AppState>,
    _: Operator,
    Params(params): Params<CatalogParams>,
    headers: HeaderMap,
    crate::extract::Body(body): crate::extract::Body,
) -> Result<axum::Json<CatalogApplied>, ApiError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        if !(ct.starts_with("application/toml") || ct.starts_with("text/")) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "validation_error",
                format!("the catalog is TOML: send it as `application/toml`, not `{ct}`"),
            ));
        }
    }
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::validation("the catalog is not UTF-8 text"))?;
    let doc = document::parse(text).map_err(|e| {
        let mut err = ApiError::invalid(e.field.clone(), format!("invalid catalog: {e}"));
        if let Some(line) = e.line {
            err = err.with("line", line);
        }
        err
    })?;
    let cmd = if params.dry_run {
        AdminCmd::PreviewCatalog(Box::new(doc))
    } else {
        AdminCmd::ApplyCatalog(Box::new(doc))
    };
    let plan = match state.engine.admin(cmd).await? {
        AdminReply::CatalogApplied { plan, .. } | AdminReply::CatalogPlanned(plan) => plan,
        _ => return Err(ApiError::server("unexpected reply")),
    };
    Ok(axum::Json(CatalogApplied {
        dry_run: params.dry_run,
        endpoints: plan.endpoints,
        price_versions_created: plan.versions_created(),
        changes: catalog_changes(&plan),
    }))
}

// ---------------------------------------------------------------------------------------------
// Reconciliation

/// Accounts whose stored amount differs from what the ledger says.
#[derive(Serialize, ToSchema)]
pub struct AmountMismatch {
    username: AccountId,
    stored_nano_usd: i64,
    from_ledger_nano_usd: i64,
}

#[derive(Serialize, ToSchema)]
pub struct CountMismatch {
    username: AccountId,
    stored: u32,
    from_requests: u32,
}

#[derive(Serialize, ToSchema)]
pub struct RollupMismatch {
    username: AccountId,
    rollups_nano_usd: i64,
    line_items_nano_usd: i64,
}

/// The ledger, checked end to end. Totals are integers of nano-USD, like every amount.
#[derive(Serialize, ToSchema)]
pub struct Reconciliation {
    /// Every check below agrees.
    clean: bool,
    /// Posted charges (settled holds and charges without a hold).
    revenue_nano_usd: i64,
    /// The line items' totals.
    billed_nano_usd: i64,
    /// The purchases' amounts.
    purchased_nano_usd: i64,
    /// Credits added by purchases and grants.
    credited_nano_usd: i64,
    /// Credits expired unspent.
    expired_nano_usd: i64,
    /// Operator adjustments as recorded, net (credits positive, debits negative).
    adjusted_nano_usd: i64,
    /// What adjustment transfers moved to customers in the ledger, net; equal to
    /// `adjusted_nano_usd` when the ledger reconciles.
    adjusted_in_ledger_nano_usd: i64,
    lot_mismatches: Vec<AmountMismatch>,
    balance_mismatches: Vec<AmountMismatch>,
    held_mismatches: Vec<AmountMismatch>,
    in_progress_mismatches: Vec<CountMismatch>,
    /// Requests whose line item differs from their posted charges.
    line_item_mismatches: Vec<String>,
    rollup_mismatches: Vec<RollupMismatch>,
}

fn amounts(v: &[(AccountId, Nanos, Nanos)]) -> Vec<AmountMismatch> {
    v.iter()
        .map(|(a, s, t)| AmountMismatch {
            username: a.clone(),
            stored_nano_usd: s.0,
            from_ledger_nano_usd: t.0,
        })
        .collect()
}

/// Reconcile the ledger
///
/// Checks the ledger end to end: stored balances against posted transfers, held amounts
/// against open holds, in-progress counts against requests, credit lots against balances,
/// line items against charges, usage rollups against line items, revenue against line items,
/// credits against purchases, adjustments against their transfers. Read-only.
#[utoipa::path(
    get, path = "/v1/admin/reconciliation", tag = tags::OPERATOR,
    operation_id = "getReconciliation", security(("Key" = ["OPERATOR"])),
    responses(
        OperatorErrors,
        (status = 200, description = "The reconciliation.", body = Reconciliation),
    )
)]
pub async fn reconciliation(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
) -> Result<axum::Json<Reconciliation>, ApiError> {
    let r = state.engine.read(|r| r.reconcile()).await?;
    // The store sums each total as a 64-bit integer, so they fit; a total that did not would
    // be a corrupt ledger, not a number to round.
    let int =
        |v: i128| i64::try_from(v).map_err(|_| ApiError::server("a ledger total exceeds 64 bits"));
    Ok(axum::Json(Reconciliation {
        clean: r.is_clean(),
        revenue_nano_usd: int(r.revenue_nanos)?,
        billed_nano_usd: int(r.billed_nanos)?,
        purchased_nano_usd: int(r.purchased_nanos)?,
        credited_nano_usd: int(r.credited_nanos)?,
        expired_nano_usd: int(r.expired_nanos)?,
        adjusted_nano_usd: int(r.adjusted_nanos)?,
        adjusted_in_ledger_nano_usd: int(r.adjusted_in_ledger_nanos)?,
        lot_mismatches: amounts(&r.lot_mismatches),
        balance_mismatches: amounts(&r.balance_mismatches),
        held_mismatches: amounts(&r.held_mismatches),
        in_progress_mismatches: r
            .in_progress_mismatches
            .iter()
            .map(|(a, s, t)| CountMismatch {
                username: a.clone(),
                stored: *s,
                from_requests: *t,
            })
            .collect(),
        line_item_mismatches: r
            .line_item_mismatches
            .iter()
            .map(|r| r.to_string())
            .collect(),
        rollup_mismatches: r
            .rollup_mismatches
            .iter()
            .map(|(a, s, t)| RollupMismatch {
                username: a.clone(),
                rollups_nano_usd: s.0,
                line_items_nano_usd: t.0,
            })
            .collect(),
    }))
}

use crate::error::ErrorResponse;
