//! The overview: what needs attention first (the account locked and why, automatic top-ups
//! paused and why, the balance below its low-balance level, a spending limit past one of its
//! alert thresholds or reached), where the account stands (balance, holds, what it owes), its
//! concurrency limit and what raises it, its spend this month and last, the credits that
//! expire next, and its spend per day over the last 30 days by endpoint. Spend counts all the
//! usage the ledger charged: model endpoints and serverless runner time (each serverless line
//! named by `Line::describe`, as invoices name it).

use super::{add, chrome, spend, spend_chart, Of, Spend};
use crate::error::PageError;
use crate::layout::{self, empty, stat};
use crate::session::CustomerSession;
use crate::{fmt, DashboardState};
use axum::extract::State;
use axum::response::Html;
use maud::{html, Markup};
use tollgate_core::ids::AccountId;
use tollgate_core::limits::{LimitAction, LimitState};
use tollgate_core::machine::{AccountState, LockReason, MAX_EVENT_SKEW_MS};
use tollgate_core::time::{month_start, next_month_start, previous_month_start};
use tollgate_core::{Nanos, Timestamp};
use tollgate_query::timeframe::{Moment, RangeSpec, Timeframe};
use tollgate_store::BillingMode;

/// The range of the overview's chart: the last 30 days, whole UTC days, today included.
const CHART_DAYS: i64 = 30;
const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// The range from `start` to `end`, by UTC day.
pub fn between(start: Timestamp, end: Timestamp) -> RangeSpec {
    RangeSpec {
        start: Some(Moment::At(start)),
        end: Some(Moment::At(end)),
        timeframe: Some(Timeframe::Day),
        bound_to_timeframe: false,
        ..RangeSpec::default()
    }
}

/// The account's spend in `[from, to)` (UTC day boundaries, as months are): the days of the
/// chart's spend (`days`, over `chart`) that fall in it, and a read of only the parts outside
/// the chart. The months overlap the chart's 30 days; reading them again would read most of
/// those days' rollups twice or three times. Sums of the same rollup totals as the usage
/// query's summary, so the same amounts.
async fn spent(
    state: &DashboardState,
    account: &AccountId,
    days: &Spend,
    chart: (Timestamp, Timestamp),
    (from, to): (Timestamp, Timestamp),
) -> Result<Nanos, PageError> {
    let mut total = Nanos::ZERO;
    for (i, (start, _)) in days.buckets.iter().enumerate() {
        if (from..to).contains(start) {
            for (_, values) in &days.series {
                add(&mut total, values[i])?;
            }
        }
    }
    // Before the chart.
    if from < chart.0 {
        let (_, before) = spend(
            state,
            account,
            &between(from, to.min(chart.0)),
            Vec::new(),
            Of::All,
        )
        .await?;
        add(&mut total, before.total()?)?;
    }
    // After it: only usage stamped up to `MAX_EVENT_SKEW_MS` ahead of the clock, in the last
    // minutes of a day.
    let horizon = state.engine().now().plus_ms(MAX_EVENT_SKEW_MS);
    if to > chart.1 && horizon > chart.1 {
        let (_, after) = spend(state, account, &between(chart.1, to), Vec::new(), Of::All).await?;
        add(&mut total, after.total()?)?;
    }
    Ok(total)
}

/// The lines of "needs attention", most pressing first: the lock and why, automatic top-ups
/// paused (the rule's `paused`, when it is turned on), the balance below the
/// account's low-balance level, and each spending limit reached or past an alert threshold
/// (a reached block limit says new requests are refused until it resets). None when all is
/// well. Each state is the core's ([`AccountState::lock_reason`],
/// [`AccountState::balance_low`], [`LimitState::is_reached`],
/// [`LimitState::thresholds_reached`]).
async fn attention(
    state: &DashboardState,
    s: &AccountState,
    now: Timestamp,
) -> Result<Vec<Markup>, PageError> {
    let mut lines = Vec::new();
    // Where credits are bought, when they can be bought here.
    let buy = html! {
        @if super::top_ups::available(state) {
            " " a href=(super::top_ups::NEW) { "Add credits" }
        }
    };
    if let Some(reason) = s.lock_reason() {
        lines.push(html! {
            li.alert.bad {
                strong { "Your account is locked. " }
                @match reason {
                    LockReason::ExhaustedBalance => {
                        "Its balance is used up, so new requests are refused. Adding credits \
                         unlocks it at once."
                        (buy)
                    }
                    LockReason::PaymentDisputed => {
                        "One of your payments is disputed with your bank (a chargeback), so new \
                         requests are refused until the dispute is resolved or your platform \
                         lifts the lock. Adding credits does not lift this lock. "
                        a href="/dashboard/billing#payments" { "See your payments" }
                    }
                }
            }
        });
    }
    if let Some(reason) = super::auto_top_up::paused(s.payment.auto_top_up.as_ref()) {
        lines.push(html! {
            li.alert.warn #auto-top-up-paused {
                strong { "Automatic top-ups are paused: " }
                (super::auto_top_up::paused_words(reason)) " "
                a href=(super::auto_top_up::SECTION) { "See automatic top-ups" }
            }
        });
    }
    if let Some(low) = s.balance_low(now) {
        lines.push(html! {
            li.alert.warn #low-balance {
                strong { "Your balance is low: " }
                (fmt::usd_cents(s.credit.balance)) ", below your low-balance level of "
                (fmt::usd_cents(low)) ". Add credits before it runs out." (buy)
            }
        });
    }
    let limits = tollgate_query::limits::rolled(s, now);
    let noted: Vec<&LimitState> = limits
        .iter()
        .filter(|l| l.is_reached() || !l.thresholds_reached().is_empty())
        .collect();
    if !noted.is_empty() {
        let keys = super::limits::key_names(state, &[], &limits).await?;
        for l in noted {
            let mut total = l.spent;
            add(&mut total, l.held)?;
            let what = match l.limit.scope.api_key() {
                None => html! { "The account's " (super::limits::every(l.limit.period)) " limit" },
                Some(k) => html! {
                    "The " (super::limits::every(l.limit.period)) " limit of the key \u{201c}"
                    (keys.get(k).map_or(k.as_str(), |r| r.alias.as_str())) "\u{201d}"
                },
            };
            let resets = fmt::datetime_in(l.resets_at, l.limit.timezone);
            let figures = html! {
                (fmt::usd_cents(total)) " of " (fmt::usd_cents(l.limit.amount))
                " (" (fmt::share(total, l.limit.amount)) ")"
            };
            lines.push(html! {
                li.alert.(if l.is_reached() { "bad" } else { "warn" }) data-limit-id=(l.limit.id) {
                    @if l.is_reached() {
                        strong { (what) " is reached: " } (figures) ". "
                        @match l.limit.action {
                            LimitAction::Block => {
                                "New requests it counts are refused until " (resets) "."
                            }
                            LimitAction::Alert => {
                                "It only alerts: requests go on. It resets " (resets) "."
                            }
                        }
                    } @else {
                        @let passed = l.thresholds_reached();
                        strong { (what) " is past its " (passed.last().copied().unwrap_or_default()) "% alert: " }
                        (figures) ". It resets " (resets) "."
                    }
                    " " a href={ "/dashboard/limits#" (l.limit.id) } { "See the limit" }
                }
            });
        }
    }
    Ok(lines)
}

pub async fn page(
    State(state): State<DashboardState>,
    who: CustomerSession,
) -> Result<Html<String>, PageError> {
    let engine = state.engine();
    let now = engine.now();
    let row = tollgate_query::account(engine, &who.account).await?;
    let s = &row.state;
    let catalog = engine.catalog();

    let this_month = month_start(now);
    let today = tollgate_core::time::day_start(now);
    let chart = (
        today.minus_ms((CHART_DAYS - 1) * DAY_MS),
        today.plus_ms(DAY_MS),
    );
    let (_, days) = spend(
        &state,
        &who.account,
        &between(chart.0, chart.1),
        Vec::new(),
        Of::All,
    )
    .await?;
    let month = spent(
        &state,
        &who.account,
        &days,
        chart,
        (this_month, next_month_start(now)),
    )
    .await?;
    let last_month = spent(
        &state,
        &who.account,
        &days,
        chart,
        (previous_month_start(now), this_month),
    )
    .await?;

    let balance = s.credit.balance;
    let owed = tollgate_api::platform::account::owed(balance).map_err(|e| {
        tollgate_api::error::ApiError::server(format!("account {}: owed: {e}", who.account))
    })?;
    let limit = s.concurrency_limit(&catalog);
    let next_tier = if s.concurrency_override.is_some() {
        None
    } else {
        catalog
            .concurrency
            .rows()
            .iter()
            .find(|t| t.limit > limit)
            .and_then(|t| {
                Nanos::from_usd_exact(t.paid_28d_usd)
                    .ok()
                    .map(|n| (t.limit, n))
            })
    };
    // The credits that expire next: every lot left that expires at the earliest expiry.
    let next_expiry = s
        .lots
        .iter()
        .filter(|l| l.remaining > Nanos::ZERO)
        .filter_map(|l| l.expires_at)
        .min();
    let expiring = match next_expiry {
        Some(at) => {
            let mut amount = Nanos::ZERO;
            for lot in s.lots.iter().filter(|l| l.expires_at == Some(at)) {
                super::add(&mut amount, lot.remaining)?;
            }
            Some((at, amount))
        }
        None => None,
    };
    let invoiced = row.billing == BillingMode::Invoice;
    let alerts = attention(&state, s, now).await?;

    let body = html! {
        @if !alerts.is_empty() {
            section.attention #attention aria-labelledby="attention-title" {
                h2 #attention-title { "Needs attention" }
                ul { @for a in &alerts { (a) } }
            }
        }
        @if !invoiced && super::top_ups::available(&state) {
            p.actions { (super::top_ups::add_credits_button(&state)) }
        }
        dl.stats {
            (stat("Balance", html! {
                span data-nano-usd=(balance.0) title=(fmt::usd(balance)) { (fmt::usd_cents(balance)) }
            }, Some(html! {
                @if invoiced { "Billed monthly by invoice" } @else { "Prepaid credits" }
            })))
            (stat("Available", html! { (fmt::usd_cents(s.credit.available())) },
                Some(html! { "Balance less what running requests hold" })))
            (stat("Held", html! { (fmt::usd_cents(s.credit.held)) },
                Some(html! { (s.in_progress) " request" @if s.in_progress != 1 { "s" } " running" })))
            @if owed > Nanos::ZERO {
                (stat("Owed", html! { span.bad { (fmt::usd_cents(owed)) } },
                    Some(html! { "Your next credits repay this first" })))
            }
            (stat("Concurrency limit", html! { (limit) " at once" }, Some(html! {
                @if s.concurrency_override.is_some() {
                    "Set by your contract"
                } @else if let Some((next, threshold)) = next_tier {
                    @let more = Nanos(threshold.0.saturating_sub(s.paid_28d.0).max(0));
                    "Next: " (next) " at " (fmt::usd_cents(threshold)) " bought in 28 days ("
                    (fmt::usd_cents(more)) " more)"
                } @else {
                    "The highest self-serve limit"
                }
            })))
            (stat("Spend this month", html! {
                span #spend-month { (fmt::usd_cents(month)) }
            }, Some(html! { "Last month: " (fmt::usd_cents(last_month)) })))
            (stat("Credits expiring next", html! {
                @if let Some((_, amount)) = expiring { (fmt::usd_cents(amount)) } @else { "None" }
            }, Some(html! {
                @if let Some((at, _)) = expiring { "on " (fmt::date(at)) } @else { "Your credits do not expire" }
            })))
        }
        h2 { "Spend per day, last " (CHART_DAYS) " days" }
        @if days.is_empty() {
            (empty("No usage in the last 30 days", html! {
                "Requests you make with one of your "
                a href="/dashboard/keys" { "API keys" }
                " appear here, priced in each model's unit, within moments of finishing; so does \
                 the runner time of your serverless apps."
            }))
        } @else {
            (spend_chart("spend-30d", "Spend per day (UTC), by endpoint or serverless app", &days))
            p.hint {
                a href="/dashboard/usage" { "See usage by endpoint" } " and "
                a href=(super::serverless::SECTION) { "serverless apps" }
                " for any range and time zone."
            }
        }
    };
    Ok(layout::html(layout::page(
        &chrome(&who, "/dashboard"),
        "Overview",
        body,
    )))
}
