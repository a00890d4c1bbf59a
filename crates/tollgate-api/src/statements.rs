//! The customer's credit activity (`GET /v1/account/credit-activity`) and monthly statements
//! (`GET /v1/account/statements/{month}`), docs/reference/API.md section 4, ADMIN scope: every
//! movement of the balance, and a month's opening balance, movements by kind and closing
//! balance, as the ledger recorded them.

use crate::error::ApiError;
use crate::extract::{Admin, Customer, FromQuery, NoParams, Page, Paged, Params};
use crate::openapi::{tags, AdminErrors};
use crate::platform::paging;
use crate::query_string::Query;
use crate::wire::{Number, Time};
use crate::AppState;
use axum::extract::State;
use serde::Serialize;
use tollgate_core::ids::EndpointId;
use tollgate_core::statement::MovementKind;
use tollgate_core::{Nanos, Timestamp};
use tollgate_query::statements::{statement_month, Statement};
use tollgate_query::timeframe::Moment;
use tollgate_store::ActivityRecord;
use utoipa::{IntoParams, ToSchema};

/// What moved the balance. `refund` and `dispute` come with payments: nothing produces them
/// yet.
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActivityKind {
    Purchase,
    Grant,
    Usage,
    Expiry,
    Refund,
    Dispute,
    Adjustment,
}

impl From<MovementKind> for ActivityKind {
    fn from(k: MovementKind) -> Self {
        match k {
            MovementKind::Purchase => ActivityKind::Purchase,
            MovementKind::Grant => ActivityKind::Grant,
            MovementKind::Usage => ActivityKind::Usage,
            MovementKind::Expiry => ActivityKind::Expiry,
            MovementKind::Refund => ActivityKind::Refund,
            MovementKind::Dispute => ActivityKind::Dispute,
            MovementKind::Adjustment => ActivityKind::Adjustment,
        }
    }
}

/// One movement of the balance. A day's usage is one row, dated the day's last millisecond
/// (`23:59:59.999Z`), after the day's other movements.
#[derive(Serialize, ToSchema)]
pub struct ActivityView {
    /// When tollgate recorded it (a day's usage: the end of that UTC day).
    occurred_at: Time,
    kind: ActivityKind,
    /// Signed: positive when it added to the balance, negative when it took from it.
    amount_nano_usd: i64,
    /// `amount_nano_usd` in USD.
    amount_usd: Number,
    /// The balance after this row, in the activity's order (a day's movements in the order
    /// recorded, then its usage): the row before it (older) had this minus `amount_nano_usd`.
    balance_after_nano_usd: i64,
    /// `balance_after_nano_usd` in USD.
    balance_after_usd: Number,
    /// What it was: the purchase id (purchase, grant, and the purchase whose credits expired),
    /// the adjustment id, or for usage the day (`YYYY-MM-DD`).
    #[schema(example = "p-1")]
    reference: String,
}

impl From<ActivityRecord> for ActivityView {
    fn from(r: ActivityRecord) -> Self {
        ActivityView {
            occurred_at: Time(r.at),
            kind: r.kind.into(),
            amount_nano_usd: r.amount.0,
            amount_usd: Number::usd(r.amount),
            balance_after_nano_usd: r.balance_after.0,
            balance_after_usd: Number::usd(r.balance_after),
            reference: r.reference,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ActivityList {
    activity: Vec<ActivityView>,
    /// Cursor for the next page of results, null if no more pages.
    next_cursor: Option<String>,
    /// Whether more results are available.
    has_more: bool,
}

/// The range of credit activity shown.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ActivityParams {
    /// Rows at this time or later: an RFC 3339 date-time or a date (midnight UTC). Default:
    /// the first.
    #[param(value_type = Option<String>, example = "2026-05-01T00:00:00Z")]
    start: Option<Timestamp>,
    /// Rows before this time (a day's usage is dated the end of its day). Default: none left
    /// out.
    #[param(value_type = Option<String>, example = "2026-06-01T00:00:00Z")]
    end: Option<Timestamp>,
}

impl FromQuery for ActivityParams {
    fn from_query(q: &Query) -> Result<Self, ApiError> {
        let moment = |name: &'static str| -> Result<Option<Timestamp>, ApiError> {
            q.one(name)?
                .map(|t| {
                    let m = Moment::parse(t)
                        .map_err(|e| ApiError::invalid(name, format!("{name} {e}")))?;
                    Ok(m.resolve(chrono_tz::Tz::UTC, name)?)
                })
                .transpose()
        };
        let (start, end) = (moment("start")?, moment("end")?);
        if let (Some(s), Some(e)) = (start, end) {
            if s >= e {
                return Err(ApiError::invalid("start", "start must be before end"));
            }
        }
        Ok(ActivityParams { start, end })
    }
}

/// List credit activity
///
/// Every movement of the authenticated account's balance, newest first, with keyset paging
/// (`limit` default 100, at most 1000; `next_cursor` is opaque): purchases, free grants,
/// expired credits and operator adjustments one by one, and usage as one row per UTC day,
/// dated the day's last millisecond, after the day's other movements. Times are when tollgate
/// recorded the movement (usage is charged when a request completes or a usage event is
/// recorded). `balance_after_nano_usd` is the running balance in that order; the newest row's
/// is the current balance. Needs a customer key with `ADMIN` scope (an `API` key answers 403).
#[utoipa::path(
    get, path = "/v1/account/credit-activity", tag = tags::BILLING,
    operation_id = "listCreditActivity", security(("Key" = ["ADMIN"])),
    params(ActivityParams, Page),
    responses(AdminErrors, (status = 200, description = "The account's credit activity.", body = ActivityList))
)]
pub async fn credit_activity(
    State(state): State<AppState>,
    who: Customer<Admin>,
    Params(Paged { filter, page }): Params<Paged<ActivityParams>>,
) -> Result<axum::Json<ActivityList>, ApiError> {
    let found = tollgate_query::statements::credit_activity(
        &state.engine,
        who.account,
        filter.start,
        filter.end,
        page.cursor.as_ref(),
        page.limit,
    )
    .await?;
    let (next_cursor, has_more) = paging(found.next_cursor);
    Ok(axum::Json(ActivityList {
        activity: found.items.into_iter().map(ActivityView::from).collect(),
        next_cursor,
        has_more,
    }))
}

/// A month's usage of one endpoint and unit, by the days it was charged.
#[derive(Serialize, ToSchema)]
pub struct StatementUsageView {
    /// The endpoint charged (a serverless app's runner time: its line's key,
    /// `serverless/<app>/<environment>/<machine type>/<standard|surge>`).
    endpoint_id: EndpointId,
    /// What it is, as invoices name it: the endpoint id, or a serverless app's runner time by
    /// its app, environment, machine type and surge.
    #[schema(example = "fal-ai/flux/dev")]
    description: String,
    #[schema(example = "megapixel")]
    unit: String,
    /// Billed units.
    quantity: Number,
    /// Billed requests (serverless runner time: its pieces, one per runner and minute).
    requests: u64,
    /// What it cost, nano-USD (positive; the usage lines add up to `-usage_nano_usd`).
    cost_nano_usd: i64,
    /// `cost_nano_usd` in USD.
    cost_usd: Number,
}

/// A month's statement. Every movement is signed as it moved the balance (credits positive;
/// usage, expired credits, refunds and debits negative), so `opening_balance_nano_usd` plus the
/// movements is `closing_balance_nano_usd`, exactly.
#[derive(Serialize, ToSchema)]
pub struct StatementView {
    #[schema(example = "2026-05")]
    month: String,
    /// The balance at the month's start (00:00 UTC of its first day).
    opening_balance_nano_usd: i64,
    opening_balance_usd: Number,
    /// Paid credits bought.
    purchases_nano_usd: i64,
    purchases_usd: Number,
    /// Free credits granted.
    grants_nano_usd: i64,
    grants_usd: Number,
    /// Usage charged (negative).
    usage_nano_usd: i64,
    usage_usd: Number,
    /// Credits expired unspent (negative).
    expired_nano_usd: i64,
    expired_usd: Number,
    /// Purchases refunded (negative); none yet (payments come later).
    refunds_nano_usd: i64,
    refunds_usd: Number,
    /// Purchases disputed (negative); none yet (payments come later).
    disputes_nano_usd: i64,
    disputes_usd: Number,
    /// Operator adjustments, credits and debits, net.
    adjustments_nano_usd: i64,
    adjustments_usd: Number,
    /// The balance at the month's end (the next month's opening balance); for the current
    /// month, the balance now.
    closing_balance_nano_usd: i64,
    closing_balance_usd: Number,
    /// The month's usage by endpoint and unit (in order of endpoint, then unit).
    usage_by_endpoint: Vec<StatementUsageView>,
}

impl From<Statement> for StatementView {
    fn from(s: Statement) -> Self {
        let m = s.moved;
        let pair = |n: Nanos| (n.0, Number::usd(n));
        let (opening_balance_nano_usd, opening_balance_usd) = pair(s.opening);
        let (purchases_nano_usd, purchases_usd) = pair(m.purchases);
        let (grants_nano_usd, grants_usd) = pair(m.grants);
        let (usage_nano_usd, usage_usd) = pair(m.usage);
        let (expired_nano_usd, expired_usd) = pair(m.expired);
        let (refunds_nano_usd, refunds_usd) = pair(m.refunds);
        let (disputes_nano_usd, disputes_usd) = pair(m.disputes);
        let (adjustments_nano_usd, adjustments_usd) = pair(m.adjustments);
        let (closing_balance_nano_usd, closing_balance_usd) = pair(s.closing);
        StatementView {
            month: s.month.to_string(),
            opening_balance_nano_usd,
            opening_balance_usd,
            purchases_nano_usd,
            purchases_usd,
            grants_nano_usd,
            grants_usd,
            usage_nano_usd,
            usage_usd,
            expired_nano_usd,
            expired_usd,
            refunds_nano_usd,
            refunds_usd,
            disputes_nano_usd,
            disputes_usd,
            adjustments_nano_usd,
            adjustments_usd,
            closing_balance_nano_usd,
            closing_balance_usd,
            usage_by_endpoint: s
                .usage
                .into_iter()
                .map(|u| StatementUsageView {
                    description: crate::invoices::line_name(&u.endpoint),
                    endpoint_id: u.endpoint,
                    unit: u.unit,
                    quantity: Number(u.quantity.normalize()),
                    requests: u.requests,
                    cost_nano_usd: u.cost.0,
                    cost_usd: Number::usd(u.cost),
                })
                .collect(),
        }
    }
}

/// Show a monthly statement
///
/// The authenticated account's statement of a calendar month (UTC): the opening balance,
/// purchases, grants, usage, expired credits, refunds, disputes and adjustments, and the
/// closing balance, as the ledger recorded them (by when tollgate recorded each movement), so
/// a month's closing balance is the next month's opening balance. The current month is the
/// statement so far; a month before the account had any movement is all zeros; a month that has
/// not begun, or not `YYYY-MM`, answers 400 naming `month`. Needs a customer key with `ADMIN`
/// scope (an `API` key answers 403).
#[utoipa::path(
    get, path = "/v1/account/statements/{month}", tag = tags::BILLING,
    operation_id = "showStatement", security(("Key" = ["ADMIN"])),
    params(("month" = String, Path, description = "The month, `YYYY-MM` (UTC).", example = "2026-05")),
    responses(AdminErrors, (status = 200, description = "The month's statement.", body = StatementView))
)]
pub async fn statement(
    State(state): State<AppState>,
    who: Customer<Admin>,
    _: Params<NoParams>,
    axum::extract::Path(month): axum::extract::Path<String>,
) -> Result<axum::Json<StatementView>, ApiError> {
    let month = statement_month(&month, state.engine.now())
        .map_err(|e| ApiError::invalid("month", format!("month {e}")))?;
    let s = tollgate_query::statements::statement(&state.engine, who.account, month).await?;
    Ok(axum::Json(s.into()))
}
