//! The operator API (docs/reference/API.md section 1): accounts, credits, keys, terms, the
//! catalog and the reconciliation. Every call needs an `OPERATOR` key.

use crate::auth::issue_key;
use crate::error::ApiError;
use crate::extract::{Json, NoParams, Operator, Params, Path};
use crate::openapi::{tags, OperatorErrors, Replayed};
use crate::wire::{self, Time, UsdString};
use crate::AppState;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use tollgate_core::catalog::document;
use tollgate_core::decimal::ExactDecimal;
use tollgate_core::ids::{AccountId, ApiKeyId, EndpointId, KeyAlias, PurchaseId};
use tollgate_core::machine::{Op, Outcome};
use tollgate_core::price::PriceRule;
use tollgate_core::pricing::{Discounts, VolumeTier};
use tollgate_core::terms::TermsChange;
use tollgate_core::{Nanos, Timestamp};
use tollgate_engine::{AdminCmd, AdminReply};
use tollgate_store::{AccountRow, BillingMode, Scope};
use utoipa::ToSchema;

/// How an account pays.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Billing {
    /// Prepaid credits: holds are limited by the balance; locked when it runs out.
    #[default]
    Prepaid,
    /// Invoiced afterwards: never limited by credit, never locked.
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
    billing: Billing,
    /// Purchases minus posted charges, nano-USD (negative when an output cost more than its
    /// hold and the credits).
    balance_nano_usd: i64,
    /// Open holds, nano-USD.
    held_nano_usd: i64,
    /// Balance minus holds, nano-USD.
    available_nano_usd: i64,
    in_progress: u32,
    concurrency_limit: u32,
    /// Requests are refused while the balance is at or below the lock threshold (prepaid).
    locked: bool,
    lock_threshold_nano_usd: i64,
    paid_last_28d_nano_usd: i64,
    paid_lifetime_nano_usd: i64,
    /// A contractual limit that replaces the tier table; `null` when the tier table applies.
    concurrency_override: Option<u32>,
    discounts: Discounts,
    /// What is left of each purchase, in spending order (earliest expiry first).
    credits: Vec<CreditLotView>,
    created_at: Time,
}

#[derive(Serialize, ToSchema)]
pub struct CreditLotView {
    purchase_id: PurchaseId,
    remaining_nano_usd: i64,
    /// `null`: never expires.
    expires_at: Option<Time>,
}

pub fn account_view(state: &AppState, row: &AccountRow) -> AccountView {
    let s = &row.state;
    AccountView {
        username: s.credit.id.clone(),
        billing: row.billing.into(),
        balance_nano_usd: s.credit.balance.0,
        held_nano_usd: s.credit.held.0,
        available_nano_usd: s.credit.available().0,
        in_progress: s.in_progress,
        concurrency_limit: s.concurrency_limit(&state.engine.catalog()),
        locked: s.credit.is_locked(),
        lock_threshold_nano_usd: s.credit.lock_threshold.0,
        paid_last_28d_nano_usd: s.paid_28d.0,
        paid_lifetime_nano_usd: s.paid_lifetime.0,
        concurrency_override: s.concurrency_override,
        discounts: s.discounts.clone(),
        credits: s
            .lots
            .iter()
            .map(|l| CreditLotView {
                purchase_id: l.purchase_id.clone(),
                remaining_nano_usd: l.remaining.0,
                expires_at: l.expires_at.map(Time),
            })
            .collect(),
        created_at: Time(row.created_at),
    }
}

/// Show an account
///
/// The account's balance (purchases minus posted charges), held amount (open holds),
/// available balance (balance minus holds), requests in progress, concurrency limit, lock
/// state, paid purchases, negotiated discounts and credit lots. Read-only.
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
    let outcome = state
        .engine
        .execute(Op::Purchase {
            account,
            purchase_id: body.purchase_id,
            amount: body.amount_usd,
            paid: body.kind.unwrap_or_default() == PurchaseKind::Paid,
            expires_at: body.expires_at,
        })
        .await??;
    let Outcome::Purchased {
        purchase: p,
        replayed,
    } = outcome
    else {
        return Err(ApiError::server("unexpected outcome"));
    };
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
    /// The account locks while its balance is at or below this (default 0).
    #[serde(default, deserialize_with = "lock_threshold")]
    #[schema(value_type = Option<UsdString>)]
    lock_threshold_usd: Option<Nanos>,
    /// The account's own prices, by endpoint: each a new account-scoped price version.
    #[serde(default)]
    prices: BTreeMap<EndpointId, PriceRule>,
    /// When `prices` take effect (default now).
    #[serde(default, deserialize_with = "wire::time_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    effective_from: Option<Timestamp>,
}

fn lock_threshold<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Nanos>, D::Error> {
    #[derive(Deserialize)]
    struct U(#[serde(deserialize_with = "wire::usd")] Nanos);
    Option::<U>::deserialize(d).map(|u| u.map(|U(n)| n))
}

#[derive(Serialize, ToSchema)]
pub struct TermsSet {
    account: AccountView,
    price_versions_created: usize,
}

/// Set an account's terms
///
/// Sets the account's negotiated terms. A field that is absent (or `null`) leaves its term as
/// it is, except `concurrency_limit: null`, which returns to the tier table: the flat
/// `percent_discount`, the `volume_tiers` (replaced as a whole), a contractual
/// `concurrency_limit`, the `lock_threshold_usd`, and account-specific `prices`. Prices never
/// change in place: each price is a new account-scoped price version effective from
/// `effective_from` (default now, never before the account's latest version of that
/// endpoint); a request is billed with the version in force when it was submitted. Discounts
/// apply to requests settled from now on (partner endpoints excepted).
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
            not in the catalog.", body = ErrorResponse),
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
        prices: body.prices.into_iter().collect(),
        effective_from: body.effective_from,
    };
    let reply = state
        .engine
        .admin(AdminCmd::SetTerms {
            username: account.clone(),
            change,
        })
        .await?;
    let AdminReply::TermsSet {
        price_versions_created,
    } = reply
    else {
        return Err(ApiError::server("unexpected reply"));
    };
    let row = tollgate_query::account(&state.engine, &account).await?;
    Ok(axum::Json(TermsSet {
        account: account_view(&state, &row),
        price_versions_created,
    }))
}

// ---------------------------------------------------------------------------------------------
// The catalog

#[derive(Serialize, ToSchema)]
pub struct CatalogApplied {
    /// Endpoints in the document.
    endpoints: usize,
    /// New price versions (0 when no price changed).
    price_versions_created: usize,
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
#[utoipa::path(
    put, path = "/v1/admin/catalog", tag = tags::OPERATOR, operation_id = "applyCatalog",
    security(("Key" = ["OPERATOR"])),
    request_body(content = String, content_type = "application/toml",
        description = "The catalog document (TOML).", example = json!(CATALOG_EXAMPLE)),
    responses(
        OperatorErrors,
        (status = 200, description = "The catalog was applied.", body = CatalogApplied),
        (status = 413, description = "`payload_too_large`: the document is larger than \
            4 MiB (`error.limit_bytes`); nothing was applied.", body = ErrorResponse),
        (status = 415, description = "`validation_error`: the `Content-Type` is neither \
            `application/toml` nor `text/*`.", body = ErrorResponse),
    )
)]
pub async fn apply_catalog(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
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
    match state
        .engine
        .admin(AdminCmd::ApplyCatalog(Box::new(doc)))
        .await?
    {
        AdminReply::CatalogApplied {
            endpoints,
            versions_created,
        } => Ok(axum::Json(CatalogApplied {
            endpoints,
            price_versions_created: versions_created,
        })),
        _ => Err(ApiError::server("unexpected reply")),
    }
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

/// The ledger, checked end to end. Totals are decimal strings of nano-USD (they may exceed
/// a JSON number's exact range).
#[derive(Serialize, ToSchema)]
pub struct Reconciliation {
    /// Every check below agrees.
    clean: bool,
    revenue_nano_usd: String,
    billed_nano_usd: String,
    purchased_nano_usd: String,
    credited_nano_usd: String,
    expired_nano_usd: String,
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
/// credits against purchases. Read-only.
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
    Ok(axum::Json(Reconciliation {
        clean: r.is_clean(),
        revenue_nano_usd: r.revenue_nanos.to_string(),
        billed_nano_usd: r.billed_nanos.to_string(),
        purchased_nano_usd: r.purchased_nanos.to_string(),
        credited_nano_usd: r.credited_nanos.to_string(),
        expired_nano_usd: r.expired_nanos.to_string(),
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
