//! Automatic top-ups, `/dashboard/auto-top-up`: the account's rule (on or off, the threshold,
//! the amount, the monthly cap, in USD), where it stands in plain words (active, or paused and
//! why), this month's automatic top-ups and their total, and the form that sets the rule.
//!
//! The rule and its decision are the core's ([`tollgate_core::payments::AutoTopUp`]); the form
//! makes the API's own call ([`tollgate_api::payments::auto_top_up::set`], which
//! `PUT /v1/account/auto-top-up` makes), so an amount outside the deployment's range, a cap below
//! the amount, or a rule turned on without a saved card (409 `payment_method_required`) is
//! refused with the API's reason and nothing saved.

use super::chrome;
use crate::error::PageError;
use crate::layout::{self, csrf, empty, stat};
use crate::session::{CustomerSession, Post};
use crate::{fmt, DashboardState};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::{html, Markup};
use serde::Deserialize;
use tollgate_api::error::ApiError;
use tollgate_api::payments::auto_top_up::AutoTopUpBody;
use tollgate_api::payments::history::PaymentStatus;
use tollgate_core::ids::AccountId;
use tollgate_core::payments::{
    is_auto_id, AutoTopUp, PausedReason, PaymentProfile, TopUpRecord, TopUpStatus, MAX_FAILURES,
};
use tollgate_core::time::month_start;
use tollgate_core::{Nanos, Timestamp};
use tollgate_store::{InvoiceRecord, PaymentRecord, PaymentsQuery};

pub const SECTION: &str = "/dashboard/auto-top-up";

pub fn routes() -> axum::Router<DashboardState> {
    axum::Router::new().route(SECTION, get(page).post(save))
}

/// Payments read at once while gathering this month's automatic top-ups, and the most read
/// (the monthly cap keeps a month's automatic top-ups few).
const PAYMENTS_PAGE: usize = 100;
const PAYMENTS_READ: usize = 1000;

/// Why a rule is paused and what the customer does about it, in plain words.
pub fn paused_words(reason: PausedReason) -> Markup {
    match reason {
        PausedReason::AuthenticationRequired => html! {
            "your bank asked you to confirm a payment, which only you can do. Pay one top-up \
             yourself with \u{201c}Add credits\u{201d}, then turn automatic top-ups on again."
        },
        PausedReason::RepeatedFailures => html! {
            (MAX_FAILURES) " payments failed in a row. Check your card with your bank, or pay a \
             top-up with another card and save it, then turn automatic top-ups on again."
        },
        PausedReason::PaymentDisputed => html! {
            "a payment of this account was disputed with your bank, so the saved card is no \
             longer charged automatically. Pay a top-up with \u{201c}Add credits\u{201d} and \
             save the card, then turn automatic top-ups on again."
        },
    }
}

/// The rule's pause, if it is turned on and paused (a rule turned off waits for nothing).
pub fn paused(rule: Option<&AutoTopUp>) -> Option<PausedReason> {
    rule.filter(|r| r.enabled).and_then(|r| r.paused)
}

/// The form, as posted (every field as text; the checkbox is present only when ticked).
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
pub struct RuleForm {
    enabled: Option<String>,
    threshold_usd: String,
    amount_usd: String,
    max_per_month_usd: String,
}

impl RuleForm {
    /// The form filled with the rule as set, or (never set) turned on and empty.
    fn of(rule: Option<&AutoTopUp>) -> RuleForm {
        match rule {
            Some(r) => RuleForm {
                enabled: r.enabled.then(|| "yes".into()),
                threshold_usd: fmt::usd_field(r.threshold),
                amount_usd: fmt::usd_field(r.amount),
                max_per_month_usd: fmt::usd_field(r.max_per_month),
            },
            None => RuleForm {
                enabled: Some("yes".into()),
                ..RuleForm::default()
            },
        }
    }
}

/// A USD amount typed in the form, read as the API reads it; `label` names the field.
fn usd(field: &'static str, label: &str, text: &str) -> Result<Nanos, ApiError> {
    match text.trim().trim_start_matches('$') {
        "" => Err(ApiError::invalid(
            field,
            format!("{label}: enter an amount in USD, such as 25.00."),
        )),
        t => tollgate_api::wire::parse_usd(t)
            .map_err(|e| ApiError::invalid(field, format!("{label}: {e}."))),
    }
}

/// The API's body for the form; the rules (the range, whole cents, the cap at least the
/// amount, a saved card) are the API's to check.
fn rule_body(form: &RuleForm) -> Result<AutoTopUpBody, ApiError> {
    Ok(AutoTopUpBody {
        enabled: form.enabled.is_some(),
        threshold_usd: usd("threshold_usd", "Threshold", &form.threshold_usd)?,
        amount_usd: usd("amount_usd", "Amount", &form.amount_usd)?,
        max_per_month_usd: usd("max_per_month_usd", "Monthly cap", &form.max_per_month_usd)?,
    })
}

/// What the page shows besides the rule: a notice of what the form did, the form as posted and
/// why it was refused.
#[derive(Default)]
struct View {
    notice: Option<Markup>,
    form: Option<RuleForm>,
    error: Option<String>,
}

/// This month's automatic top-ups that were paid (their purchases), newest first.
async fn paid_this_month(
    state: &DashboardState,
    account: &AccountId,
    now: Timestamp,
) -> Result<Vec<PaymentRecord>, PageError> {
    let since = month_start(now);
    let mut out = Vec::new();
    let mut before = None;
    let mut read = 0;
    loop {
        let q = PaymentsQuery {
            account: account.clone(),
            before: before.clone(),
            limit: PAYMENTS_PAGE,
        };
        let rows = state.engine().read(move |r| r.payments(&q)).await?;
        let full = rows.len() == PAYMENTS_PAGE;
        read += rows.len();
        before = rows
            .last()
            .map(|p| (p.created_at.0, p.purchase_id.as_str().to_string()));
        let mut past = false;
        for p in rows {
            if p.created_at < since {
                past = true;
                break;
            }
            if is_auto_id(&p.purchase_id) {
                out.push(p);
            }
        }
        if past || !full || read >= PAYMENTS_READ {
            return Ok(out);
        }
    }
}

/// The account's top-up `auto-<n>`, if it has one.
async fn auto_top_up(
    state: &DashboardState,
    account: &AccountId,
    id: &tollgate_core::ids::PurchaseId,
) -> Result<Option<TopUpRecord>, PageError> {
    let (a, id) = (account.clone(), id.clone());
    Ok(state.engine().read(move |r| r.top_up(&a, &id)).await?)
}

/// The rule's state in words.
fn status(
    p: &PaymentProfile,
    rule: Option<&AutoTopUp>,
    last: Option<&TopUpRecord>,
    now: Timestamp,
) -> Markup {
    html! {
        @match rule {
            None => p.notice #rule-status data-status="off" {
                strong { "Off. " } "Automatic top-ups were never turned on."
            },
            Some(r) if !r.enabled => p.notice #rule-status data-status="off" {
                strong { "Off. " } "Your balance is not topped up by itself."
            },
            Some(r) => @if let Some(reason) = r.paused {
                p.notice.warn #rule-status data-status="paused" {
                    strong { "Paused: " } (paused_words(reason))
                }
            } @else {
                p.notice #rule-status data-status="active" {
                    strong { "Active. " }
                    "When your available balance falls below " (fmt::usd(r.threshold)) ", "
                    (fmt::usd(r.amount)) " is charged to your saved card (or as many times that "
                    "as it takes to reach it again), at most " (fmt::usd(r.max_per_month))
                    " a month."
                    @if p.payment_method.is_none() {
                        " No card is saved, so nothing can be charged."
                    }
                }
                @if let Some(t) = last.filter(|t| t.status == TopUpStatus::Failed && r.failures > 0) {
                    p.notice.warn #last-failure {
                        "The last automatic top-up was not paid: "
                        (super::top_ups::failure_words(t.failure.as_deref().unwrap_or_default())) ". "
                        (r.failures) " of " (MAX_FAILURES) " failures in a row pause the rule"
                        @if let Some(at) = r.not_before.filter(|at| *at > now) {
                            "; the next try comes no sooner than " (fmt::datetime(at))
                        }
                        "."
                    }
                }
            },
        }
    }
}

fn payment_status(p: &PaymentRecord) -> Markup {
    super::billing::payment_status_badge(PaymentStatus::of(p))
}

async fn render(
    state: &DashboardState,
    who: &CustomerSession,
    view: View,
) -> Result<Markup, PageError> {
    let now = state.engine().now();
    let configured = state.api.payments.is_some();
    if !configured {
        let body = empty(
            "Automatic top-ups are not available",
            html! {
                "Your platform has not connected a payment provider to this dashboard. Ask them \
                 to add credits to your account."
            },
        );
        return Ok(layout::page(
            &chrome(who, SECTION),
            "Automatic top-ups",
            body,
        ));
    }
    let row = tollgate_query::account(state.engine(), &who.account).await?;
    let profile = &row.state.payment;
    let rule = profile.auto_top_up.as_ref().map(|r| r.at(now));
    let saved = profile.payment_method.is_some() && profile.customer.is_some();
    let in_flight = match rule.as_ref().and_then(|r| r.in_flight.clone()) {
        Some(id) => auto_top_up(state, &who.account, &id).await?,
        None => None,
    };
    let last = if profile.auto_seq > 0 {
        let id = tollgate_core::ids::PurchaseId::parse(&format!(
            "{}{}",
            tollgate_core::payments::AUTO_PREFIX,
            profile.auto_seq
        ))
        .map_err(|e| PageError::internal(format!("an automatic top-up's id: {e}")))?;
        auto_top_up(state, &who.account, &id).await?
    } else {
        None
    };
    let paid = paid_this_month(state, &who.account, now).await?;
    let form = view
        .form
        .clone()
        .unwrap_or_else(|| RuleForm::of(rule.as_ref()));
    let left = rule
        .as_ref()
        .map(|r| Nanos(r.max_per_month.0.saturating_sub(r.month_total.0).max(0)));
    let body = html! {
        p.lead {
            "Have your balance topped up by itself when it runs low: your saved card is charged, "
            "once for the whole shortfall, never past your monthly cap."
        }
        @if let Some(n) = &view.notice { (n) }
        @if let Some(e) = &view.error { p.notice.error role="alert" { (e) " " a href="#auto-top-up-form" { "Back to the form" } } }
        (status(profile, rule.as_ref(), last.as_ref(), now))
        dl.stats {
            (stat("Paid this month", html! { span #month-count { (rule.as_ref().map_or(0, |r| r.month_count)) } },
                Some(html! { "automatic top-ups (UTC month)" })))
            (stat("This month's total", html! {
                span #month-total { (fmt::usd_cents(rule.as_ref().map_or(Nanos::ZERO, |r| r.month_total))) }
            }, Some(html! {
                @match (&rule, left) {
                    (Some(r), Some(left)) => { "paid or being charged, of " (fmt::usd_cents(r.max_per_month)) " (" (fmt::usd_cents(left)) " left)" },
                    _ => "paid or being charged",
                }
            })))
            (stat("Saved card", html! { @if saved { "Saved" } @else { "None" } },
                Some(html! { @if saved { "charged off-session" } @else { "save one at a checkout" } })))
        }
        h2 { "This month's automatic top-ups" }
        @if paid.is_empty() && in_flight.is_none() {
            (empty("None this month", html! {
                "Each automatic top-up appears here with its invoice, and in your "
                a href="/dashboard/billing#payments" { "payments" } "."
            }))
        } @else {
            div.table-wrap tabindex="0" {
                table #auto-top-ups {
                    thead { tr {
                        th scope="col" { "Date" }
                        th.num scope="col" { "Amount" }
                        th scope="col" { "Status" }
                        th scope="col" { "Invoice" }
                    } }
                    tbody {
                        @if let Some(t) = &in_flight {
                            tr data-top-up=(t.top_up_id) {
                                td { (fmt::datetime(t.created_at)) }
                                td.num { (fmt::usd(t.amount)) }
                                td { span.badge.warn { "being charged" } }
                                td { span.muted { "when paid" } }
                            }
                        }
                        @for p in &paid {
                            tr data-top-up=(p.purchase_id) {
                                td { (fmt::datetime(p.created_at)) }
                                td.num { (fmt::usd(p.amount)) }
                                td { (payment_status(p)) }
                                td {
                                    @if let Some((y, n)) = p.invoice {
                                        @let id = InvoiceRecord::id_of(y, n);
                                        a href={ "/dashboard/invoices/" (id) } { (id) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 #rule { "The rule" }
        @if !saved {
            p.notice.warn #no-card {
                "Automatic top-ups charge a card saved at a checkout. To turn them on, first pay one "
                "top-up with \u{201c}Save this card for automatic top-ups\u{201d} ticked: "
                @if super::top_ups::available(state) {
                    a href=(super::top_ups::NEW) { "Add credits" } "."
                } @else {
                    "ask your platform how to add credits."
                }
            }
        }
        form.card #auto-top-up-form method="post" action=(SECTION) {
            (csrf(&who.session.csrf))
            @if let Some(e) = &view.error { p.notice.error { (e) } }
            label.inline {
                input #enabled type="checkbox" name="enabled" value="yes" checked[form.enabled.is_some()];
                " Top up automatically"
            }
            label for="threshold_usd" { "When the available balance falls below (USD)" }
            input #threshold_usd type="text" name="threshold_usd" value=(form.threshold_usd)
                inputmode="decimal" required autocomplete="off" placeholder="10.00"
                aria-describedby="threshold-hint";
            p #threshold-hint .hint { "Your balance less what running requests hold." }
            label for="amount_usd" { "Add (USD)" }
            input #amount_usd type="text" name="amount_usd" value=(form.amount_usd)
                inputmode="decimal" required autocomplete="off" placeholder="25.00"
                aria-describedby="amount-hint";
            p #amount-hint .hint {
                "Charged once, or as a multiple of it when the shortfall is larger. "
                @if let Some(p) = &state.api.payments {
                    "From " (fmt::usd(p.settings.top_ups.min)) " to " (fmt::usd(p.settings.top_ups.max)) ", in whole cents."
                }
            }
            label for="max_per_month_usd" { "At most, per month (USD)" }
            input #max_per_month_usd type="text" name="max_per_month_usd" value=(form.max_per_month_usd)
                inputmode="decimal" required autocomplete="off" placeholder="200.00"
                aria-describedby="cap-hint";
            p #cap-hint .hint { "What automatic top-ups may add in a calendar month (UTC), at least the amount." }
            button.primary type="submit" { "Save" }
            p.hint { "Saving the rule again also resumes it after a pause." }
        }
    };
    Ok(layout::page(
        &chrome(who, SECTION),
        "Automatic top-ups",
        body,
    ))
}

#[derive(Default, Deserialize)]
pub struct DoneQuery {
    #[serde(default)]
    done: Option<String>,
}

/// `GET /dashboard/auto-top-up`. `?done=saved` adds a notice of the rule as stored.
pub async fn page(
    State(state): State<DashboardState>,
    who: CustomerSession,
    Query(q): Query<DoneQuery>,
) -> Result<Response, PageError> {
    let notice = if q.done.as_deref() == Some("saved") && state.api.payments.is_some() {
        let row = tollgate_query::account(state.engine(), &who.account).await?;
        row.state.payment.auto_top_up.map(|r| {
            html! {
                p.notice role="status" {
                    @if r.enabled { "Saved: automatic top-ups are on." } @else { "Saved: automatic top-ups are off." }
                }
            }
        })
    } else {
        None
    };
    let view = View {
        notice,
        ..View::default()
    };
    Ok(layout::html(render(&state, &who, view).await?).into_response())
}

/// `POST /dashboard/auto-top-up`: sets the rule by the API's own call; a refusal (an amount,
/// no saved card: 409) shows the form again with the reason, with nothing saved.
pub async fn save(
    State(state): State<DashboardState>,
    Post { who, form }: Post<CustomerSession, RuleForm>,
) -> Result<Response, PageError> {
    let set = match rule_body(&form) {
        Ok(body) => {
            tollgate_api::payments::auto_top_up::set(&state.api, who.account.clone(), body).await
        }
        Err(e) => Err(e),
    };
    match set {
        Ok(_) => Ok(Redirect::to(&format!("{SECTION}?done=saved")).into_response()),
        Err(e) => {
            // The API's reason; without a saved card (409 `payment_method_required`) the page
            // also says how to save one.
            let (status, message) = crate::console::refusal(e);
            let view = View {
                form: Some(form),
                error: Some(message),
                ..View::default()
            };
            Ok((status, layout::html(render(&state, &who, view).await?)).into_response())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_shows_amounts_plainly_and_reads_them_as_the_api_does() {
        assert_eq!(fmt::usd_field(Nanos(25_000_000_000)), "25.00");
        assert_eq!(fmt::usd_field(Nanos(12_345_000_000)), "12.345");
        let form = RuleForm {
            enabled: None,
            threshold_usd: "10".into(),
            amount_usd: "$25.00".into(),
            max_per_month_usd: "200".into(),
        };
        let body = rule_body(&form).unwrap();
        assert!(!body.enabled);
        assert_eq!(body.amount_usd, Nanos(25_000_000_000));
        let Err(e) = rule_body(&RuleForm::default()) else {
            panic!("an empty form is refused")
        };
        assert!(e.message.starts_with("Threshold"), "{}", e.message);
    }
}
