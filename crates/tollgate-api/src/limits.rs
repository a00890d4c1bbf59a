//! Spending limits (API.md section 6): a customer's own (`/v1/account/spending-limits`, ADMIN
//! key) and the operator's for any account (`/v1/admin/accounts/{username}/spending-limits`),
//! one implementation for both. The rules (what a limit counts, when it resets, what it
//! blocks) are the core's (`tollgate_core::limits`); the engine creates, changes and deletes
//! a limit under the account's lock.

use crate::error::{ApiError, ErrorResponse};
use crate::extract::{Admin, Customer, Json, NoParams, Operator, Params, Path, Path2};
use crate::openapi::{tags, AdminErrors, OperatorErrors};
use crate::wire::{self, Number, Time, UsdString};
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use rand::RngCore;
use serde::{Deserialize, Deserializer, Serialize};
use tollgate_core::ids::{AccountId, ApiKeyId, LimitId};
use tollgate_core::limits::{
    LimitAction, LimitChange, LimitScope, LimitState, Period, SpendingLimit,
};
use tollgate_core::{Nanos, Timestamp};
use tollgate_engine::{AdminCmd, AdminReply};
use utoipa::ToSchema;

/// What a limit counts.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ScopeName {
    /// Every request of the account, whichever key made it.
    Account,
    /// The requests made with one key (`api_key_id`), and usage events reported with it.
    ApiKey,
}

/// How long a period is; periods start at local midnight in the limit's `timezone`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PeriodName {
    Day,
    /// Monday to Monday.
    Week,
    /// The 1st to the 1st.
    Month,
}

impl From<PeriodName> for Period {
    fn from(p: PeriodName) -> Period {
        match p {
            PeriodName::Day => Period::Day,
            PeriodName::Week => Period::Week,
            PeriodName::Month => Period::Month,
        }
    }
}

impl From<Period> for PeriodName {
    fn from(p: Period) -> PeriodName {
        match p {
            Period::Day => PeriodName::Day,
            Period::Week => PeriodName::Week,
            Period::Month => PeriodName::Month,
        }
    }
}

/// What a limit does when its period's spend would pass it.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ActionName {
    /// Refuses a start whose hold would take the period's spend past the amount (403
    /// `spending_limit_exceeded`).
    Block,
    /// Only notifies (`spending_limit.alert`, `spending_limit.reached`).
    Alert,
}

impl From<ActionName> for LimitAction {
    fn from(a: ActionName) -> LimitAction {
        match a {
            ActionName::Block => LimitAction::Block,
            ActionName::Alert => LimitAction::Alert,
        }
    }
}

impl From<LimitAction> for ActionName {
    fn from(a: LimitAction) -> ActionName {
        match a {
            LimitAction::Block => ActionName::Block,
            LimitAction::Alert => ActionName::Alert,
        }
    }
}

/// A notification threshold: a percent of the limit's amount, 1 to 1000.
pub struct ThresholdPercent;

impl utoipa::PartialSchema for ThresholdPercent {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .maximum(Some(tollgate_core::limits::MAX_ALERT_PERCENT))
            .description(Some("A percent of the limit's amount, 1 to 1000."))
            .into()
    }
}

impl ToSchema for ThresholdPercent {}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"scope": "account", "period": "month", "timezone": "Europe/Berlin",
    "amount_usd": "500.00", "action": "block", "alert_at_percent": [50, 80, 100]}))]
pub struct CreateLimitBody {
    pub scope: ScopeName,
    /// The key an `api_key` limit counts: a live key of the account. Only with that scope.
    #[serde(default)]
    pub api_key_id: Option<ApiKeyId>,
    pub period: PeriodName,
    /// An IANA time zone (`UTC`, `America/New_York`) whose midnights start the periods.
    /// Default `UTC`.
    #[serde(default)]
    pub timezone: Option<String>,
    /// The most the period may spend, in USD: greater than 0 and at most 1000000.
    #[serde(deserialize_with = "wire::usd")]
    #[schema(value_type = UsdString)]
    pub amount_usd: Nanos,
    pub action: ActionName,
    /// Percents of the amount at which the period's spend is notified
    /// (`spending_limit.alert`), each 1 to 1000, at most 20; sorted and without duplicates in
    /// the answer. Default `[50, 80, 100]`; `[]` notifies only `spending_limit.reached`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<ThresholdPercent>>, max_items = 20,
        example = json!([50, 80, 100]))]
    pub alert_at_percent: Option<Vec<u32>>,
}

/// `PUT`: the fields given are changed; the limit's id, scope, period and zone never change
/// (delete it and create another).
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"amount_usd": "750.00"}))]
pub struct ChangeLimitBody {
    /// The new amount, in USD: greater than 0 and at most 1000000.
    #[serde(default, deserialize_with = "usd_opt")]
    #[schema(value_type = Option<UsdString>)]
    pub amount_usd: Option<Nanos>,
    #[serde(default)]
    pub action: Option<ActionName>,
    /// The new thresholds (replaced as a whole), each 1 to 1000, at most 20.
    #[serde(default)]
    #[schema(value_type = Option<Vec<ThresholdPercent>>, max_items = 20)]
    pub alert_at_percent: Option<Vec<u32>>,
}

fn usd_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Nanos>, D::Error> {
    #[derive(Deserialize)]
    struct U(#[serde(deserialize_with = "wire::usd")] Nanos);
    Option::<U>::deserialize(d).map(|u| u.map(|U(n)| n))
}

/// A limit with its current period's spend.
#[derive(Serialize, ToSchema)]
pub struct LimitView {
    limit_id: LimitId,
    scope: ScopeName,
    /// The key an `api_key` limit counts; `null` for `account`.
    api_key_id: Option<ApiKeyId>,
    period: PeriodName,
    /// The IANA time zone whose midnights start the periods.
    #[schema(example = "Europe/Berlin")]
    timezone: String,
    amount_usd: Number,
    amount_nano_usd: i64,
    action: ActionName,
    #[schema(value_type = Vec<ThresholdPercent>)]
    alert_at_percent: Vec<u32>,
    /// The charges recorded in the current period (settled requests, late completions, usage
    /// events dated in the period).
    spent_usd: Number,
    spent_nano_usd: i64,
    /// The holds of the running requests the limit counts.
    held_usd: Number,
    held_nano_usd: i64,
    /// The thresholds already notified this period.
    #[schema(value_type = Vec<ThresholdPercent>)]
    alerted_at_percent: Vec<u32>,
    /// Whether `spending_limit.reached` was notified this period (the spend reached the
    /// amount, or a `block` limit refused a start).
    reached: bool,
    /// The current period's start (local midnight in `timezone`, as UTC).
    period_start: Time,
    /// When the next period starts: the spend starts over from zero, and a `block` limit
    /// admits again.
    resets_at: Time,
    created_at: Time,
}

impl LimitView {
    fn of(l: &LimitState) -> LimitView {
        LimitView {
            limit_id: l.limit.id.clone(),
            scope: match l.limit.scope {
                LimitScope::Account => ScopeName::Account,
                LimitScope::ApiKey(_) => ScopeName::ApiKey,
            },
            api_key_id: l.limit.scope.api_key().cloned(),
            period: l.limit.period.into(),
            timezone: l.limit.timezone.name().to_string(),
            amount_usd: Number::usd(l.limit.amount),
            amount_nano_usd: l.limit.amount.0,
            action: l.limit.action.into(),
            alert_at_percent: l.limit.alert_at_percent.clone(),
            spent_usd: Number::usd(l.spent),
            spent_nano_usd: l.spent.0,
            held_usd: Number::usd(l.held),
            held_nano_usd: l.held.0,
            alerted_at_percent: l.alerted.clone(),
            reached: l.reached,
            period_start: Time(l.period_start),
            resets_at: Time(l.resets_at),
            created_at: Time(l.limit.created_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct LimitList {
    /// In creation order.
    limits: Vec<LimitView>,
}

/// A new limit's id: `lim_` and 24 random hexadecimal digits.
fn new_limit_id() -> LimitId {
    let mut bytes = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut bytes);
    LimitId::parse(&format!("lim_{}", hex::encode(bytes))).expect("a valid limit id")
}

/// The limit a creation asks for, checked for what the body alone can tell: the scope and its
/// key, the time zone. The amount and thresholds are the core's to check, a key's owner the
/// engine's (both in the db transaction that would write it).
fn limit_of(body: CreateLimitBody, now: Timestamp) -> Result<SpendingLimit, ApiError> {
    let scope = match (body.scope, body.api_key_id) {
        (ScopeName::Account, None) => LimitScope::Account,
        (ScopeName::ApiKey, Some(key)) => LimitScope::ApiKey(key),
        (ScopeName::Account, Some(_)) => {
            return Err(ApiError::invalid(
                "api_key_id",
                "`api_key_id` is only for a limit with scope `api_key`",
            ))
        }
        (ScopeName::ApiKey, None) => {
            return Err(ApiError::invalid(
                "api_key_id",
                "a limit with scope `api_key` names its key in `api_key_id`",
            ))
        }
    };
    let timezone = match body.timezone.as_deref() {
        None => chrono_tz::Tz::UTC,
        Some(name) => tollgate_query::timeframe::parse_timezone(name)
            .map_err(|e| ApiError::invalid("timezone", e))?,
    };
    Ok(SpendingLimit {
        id: new_limit_id(),
        scope,
        period: body.period.into(),
        timezone,
        amount: body.amount_usd,
        action: body.action.into(),
        alert_at_percent: body
            .alert_at_percent
            .unwrap_or_else(|| tollgate_core::limits::DEFAULT_ALERT_AT_PERCENT.to_vec()),
        created_at: now,
    })
}

fn limit_reply(reply: AdminReply) -> Result<LimitState, ApiError> {
    match reply {
        AdminReply::Limit(l) => Ok(*l),
        _ => Err(ApiError::server("unexpected answer")),
    }
}

/// Creates a limit of the account, as `POST .../spending-limits` does (the dashboard's form
/// calls it too): the new limit with its current period, or the refusal naming the field, with
/// nothing written.
pub async fn create(
    state: &AppState,
    username: AccountId,
    body: CreateLimitBody,
) -> Result<LimitState, ApiError> {
    let limit = limit_of(body, state.engine.now())?;
    let reply = state
        .engine
        .admin(AdminCmd::CreateLimit { username, limit })
        .await?;
    limit_reply(reply)
}

async fn created(
    state: &AppState,
    username: AccountId,
    body: CreateLimitBody,
) -> Result<(StatusCode, axum::Json<LimitView>), ApiError> {
    let l = create(state, username, body).await?;
    Ok((StatusCode::CREATED, axum::Json(LimitView::of(&l))))
}

async fn list(state: &AppState, username: &AccountId) -> Result<axum::Json<LimitList>, ApiError> {
    let limits = tollgate_query::limits::list(&state.engine, username).await?;
    Ok(axum::Json(LimitList {
        limits: limits.iter().map(LimitView::of).collect(),
    }))
}

/// Changes a limit of the account, as `PUT .../spending-limits/{limit_id}` does: the limit
/// after the change; 404 when the account has no such limit.
pub async fn change(
    state: &AppState,
    username: AccountId,
    limit_id: LimitId,
    body: ChangeLimitBody,
) -> Result<LimitState, ApiError> {
    let change = LimitChange {
        amount: body.amount_usd,
        action: body.action.map(Into::into),
        alert_at_percent: body.alert_at_percent,
    };
    let reply = state
        .engine
        .admin(AdminCmd::ChangeLimit {
            username,
            limit_id,
            change,
        })
        .await?;
    limit_reply(reply)
}

/// Deletes a limit of the account, as `DELETE .../spending-limits/{limit_id}` does; 404 when
/// the account has no such limit.
pub async fn delete(
    state: &AppState,
    username: AccountId,
    limit_id: LimitId,
) -> Result<(), ApiError> {
    state
        .engine
        .admin(AdminCmd::DeleteLimit { username, limit_id })
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The customer's own.

/// Create a spending limit
///
/// Caps what the account (`scope: account`) or one of its keys (`scope: api_key`, naming
/// `api_key_id`) spends per `day`, `week` (from Monday) or `month` (from the 1st), periods
/// starting at local midnight in `timezone` (default `UTC`; on a day the clocks change, a
/// period is 23 or 25 hours long). The period's spend is what it charged (settled requests,
/// late completions, usage events dated in the period) plus the holds of the requests running
/// now. A `block` limit refuses a start whose hold would take that spend past `amount_usd`
/// (403 `spending_limit_exceeded`, naming the limit and `resets_at`); running requests finish
/// and are billed what they cost, and usage events are billed as they come, so the spend can
/// pass the limit only by those. Every limit notifies each threshold of `alert_at_percent`
/// once per period and `spending_limit.reached` once per period. A new limit starts with what
/// its period has already charged and what runs now. At most 20 limits per account. Refused
/// with nothing written (400 naming the field): an amount that is not a positive decimal, an
/// unknown period or time zone, `api_key_id` with scope `account` or missing with scope
/// `api_key`, a key that is not a live key of the account, thresholds out of range.
#[utoipa::path(
    post, path = "/v1/account/spending-limits", tag = tags::BILLING,
    operation_id = "createSpendingLimit", security(("Key" = ["ADMIN"])),
    request_body = CreateLimitBody,
    responses(
        AdminErrors,
        (status = 201, description = "The limit, with its current period.", body = LimitView),
    )
)]
pub async fn create_own(
    State(state): State<AppState>,
    who: Customer<Admin>,
    _: Params<NoParams>,
    Json(body): Json<CreateLimitBody>,
) -> Result<(StatusCode, axum::Json<LimitView>), ApiError> {
    created(&state, who.account, body).await
}

/// List spending limits
///
/// The account's limits in creation order, each with its current period's spend
/// (`spent_nano_usd`, `held_nano_usd`), the thresholds notified and `resets_at`. A period
/// that has ended reads as the next one: nothing spent.
#[utoipa::path(
    get, path = "/v1/account/spending-limits", tag = tags::BILLING,
    operation_id = "listSpendingLimits", security(("Key" = ["ADMIN"])),
    responses(AdminErrors, (status = 200, description = "The account's limits.", body = LimitList))
)]
pub async fn list_own(
    State(state): State<AppState>,
    who: Customer<Admin>,
    _: Params<NoParams>,
) -> Result<axum::Json<LimitList>, ApiError> {
    list(&state, &who.account).await
}

/// Change a spending limit
///
/// Changes the limit's amount, action or thresholds; its id, scope, period and zone stay, and
/// so does its period's spend. A threshold already notified this period is not notified again
/// while it is still listed and the spend still reaches it; a threshold that is new, or that
/// a larger amount put ahead of the spend, is notified when reached (thresholds a change puts
/// behind the spend, by the change itself).
#[utoipa::path(
    put, path = "/v1/account/spending-limits/{limit_id}", tag = tags::BILLING,
    operation_id = "changeSpendingLimit", security(("Key" = ["ADMIN"])),
    params(("limit_id" = LimitId, Path, description = "The limit's id.")),
    request_body = ChangeLimitBody,
    responses(
        AdminErrors,
        (status = 200, description = "The limit after the change.", body = LimitView),
        (status = 404, description = "`not_found`: the account has no such limit.",
            body = ErrorResponse),
    )
)]
pub async fn change_own(
    State(state): State<AppState>,
    who: Customer<Admin>,
    _: Params<NoParams>,
    Path(limit_id): Path<LimitId>,
    Json(body): Json<ChangeLimitBody>,
) -> Result<axum::Json<LimitView>, ApiError> {
    Ok(axum::Json(LimitView::of(
        &change(&state, who.account, limit_id, body).await?,
    )))
}

/// Delete a spending limit
///
/// The limit no longer counts or blocks anything.
#[utoipa::path(
    delete, path = "/v1/account/spending-limits/{limit_id}", tag = tags::BILLING,
    operation_id = "deleteSpendingLimit", security(("Key" = ["ADMIN"])),
    params(("limit_id" = LimitId, Path, description = "The limit's id.")),
    responses(
        AdminErrors,
        (status = 204, description = "Deleted."),
        (status = 404, description = "`not_found`: the account has no such limit.",
            body = ErrorResponse),
    )
)]
pub async fn delete_own(
    State(state): State<AppState>,
    who: Customer<Admin>,
    _: Params<NoParams>,
    Path(limit_id): Path<LimitId>,
) -> Result<StatusCode, ApiError> {
    delete(&state, who.account, limit_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// The operator's, for any account.

/// Create an account's spending limit
///
/// As `POST /v1/account/spending-limits`, for the account named in the path.
#[utoipa::path(
    post, path = "/v1/admin/accounts/{username}/spending-limits", tag = tags::OPERATOR,
    operation_id = "createAccountSpendingLimit", security(("Key" = ["OPERATOR"])),
    params(("username" = AccountId, Path, description = "The account's username.")),
    request_body = CreateLimitBody,
    responses(
        OperatorErrors,
        (status = 201, description = "The limit, with its current period.", body = LimitView),
        (status = 404, description = "`not_found`: unknown account.", body = ErrorResponse),
    )
)]
pub async fn create_for(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Path(username): Path<AccountId>,
    Json(body): Json<CreateLimitBody>,
) -> Result<(StatusCode, axum::Json<LimitView>), ApiError> {
    created(&state, username, body).await
}

/// List an account's spending limits
///
/// As `GET /v1/account/spending-limits`, for the account named in the path.
#[utoipa::path(
    get, path = "/v1/admin/accounts/{username}/spending-limits", tag = tags::OPERATOR,
    operation_id = "listAccountSpendingLimits", security(("Key" = ["OPERATOR"])),
    params(("username" = AccountId, Path, description = "The account's username.")),
    responses(
        OperatorErrors,
        (status = 200, description = "The account's limits.", body = LimitList),
        (status = 404, description = "`not_found`: unknown account.", body = ErrorResponse),
    )
)]
pub async fn list_for(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Path(username): Path<AccountId>,
) -> Result<axum::Json<LimitList>, ApiError> {
    list(&state, &username).await
}

/// Change an account's spending limit
///
/// As `PUT /v1/account/spending-limits/{limit_id}`, for the account named in the path.
#[utoipa::path(
    put, path = "/v1/admin/accounts/{username}/spending-limits/{limit_id}", tag = tags::OPERATOR,
    operation_id = "changeAccountSpendingLimit", security(("Key" = ["OPERATOR"])),
    params(
        ("username" = AccountId, Path, description = "The account's username."),
        ("limit_id" = LimitId, Path, description = "The limit's id."),
    ),
    request_body = ChangeLimitBody,
    responses(
        OperatorErrors,
        (status = 200, description = "The limit after the change.", body = LimitView),
        (status = 404, description = "`not_found`: unknown account, or it has no such limit.",
            body = ErrorResponse),
    )
)]
pub async fn change_for(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Path2(username, limit_id): Path2<AccountId, LimitId>,
    Json(body): Json<ChangeLimitBody>,
) -> Result<axum::Json<LimitView>, ApiError> {
    Ok(axum::Json(LimitView::of(
        &change(&state, username, limit_id, body).await?,
    )))
}

/// Delete an account's spending limit
///
/// As `DELETE /v1/account/spending-limits/{limit_id}`, for the account named in the path.
#[utoipa::path(
    delete, path = "/v1/admin/accounts/{username}/spending-limits/{limit_id}",
    tag = tags::OPERATOR, operation_id = "deleteAccountSpendingLimit",
    security(("Key" = ["OPERATOR"])),
    params(
        ("username" = AccountId, Path, description = "The account's username."),
        ("limit_id" = LimitId, Path, description = "The limit's id."),
    ),
    responses(
        OperatorErrors,
        (status = 204, description = "Deleted."),
        (status = 404, description = "`not_found`: unknown account, or it has no such limit.",
            body = ErrorResponse),
    )
)]
pub async fn delete_for(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Path2(username, limit_id): Path2<AccountId, LimitId>,
) -> Result<StatusCode, ApiError> {
    delete(&state, username, limit_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
