//! Buying credits: `/dashboard/top-ups/new`, a form (the amount in USD, "Save this card for
//! automatic top-ups"), whose POST creates a top-up paid at the payment provider's checkout by
//! the API's own call ([`tollgate_api::payments::top_ups::create_as`], which
//! `POST /v1/account/top-ups` makes), and `/dashboard/top-ups/{top_up_id}`, the page the
//! provider sends the customer back to, which tells where the top-up stands.
//!
//! The POST does not redirect to the provider: the CSP's `form-action 'self'` also governs
//! where a form's redirect may go, and a browser would refuse a redirect to the checkout. It
//! answers a page with a "Continue to payment" link instead, a plain navigation that needs no
//! script. The return URLs are on the configured `public_url` (never the request's `Host`, which
//! a proxy may have rewritten), so without one the dashboard offers no checkout.
//!
//! Credits come only from the provider's confirmation (its signed event), never from the
//! customer coming back: the return page shows the top-up as stored, and while the payment is
//! not confirmed it says so and refreshes itself (htmx, every few seconds; without JavaScript a
//! reload link). The account is the session's: another account's top-up id is not found, like
//! an id nobody used.

use super::chrome;
use crate::error::PageError;
use crate::layout::{self, csrf};
use crate::session::{CustomerSession, Post};
use crate::{fmt, DashboardState};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::{html, Markup};
use serde::Deserialize;
use tollgate_api::error::ApiError;
use tollgate_api::payments::top_ups::{create_as, new_top_up_id, CreateTopUpBody};
use tollgate_core::ids::{AccountId, PurchaseId};
use tollgate_core::payments::{TopUpKind, TopUpRecord, TopUpStatus};
use tollgate_core::Nanos;
use tollgate_store::{InvoiceRecord, PaymentRecord, PaymentsQuery};

pub fn routes() -> axum::Router<DashboardState> {
    axum::Router::new()
        .route(NEW, get(new_page))
        .route("/dashboard/top-ups", post(create))
        .route("/dashboard/top-ups/{top_up_id}", get(show))
}

/// The page of the "Add credits" form.
pub const NEW: &str = "/dashboard/top-ups/new";
/// The navigation section these pages belong to.
const SECTION: &str = "/dashboard/billing";
/// How often the return page asks again while a payment is being confirmed.
const REFRESH: &str = "every 3s";

/// Where the provider sends the customer back to, on the configured public URL: `None` when
/// customers cannot buy credits here (no payment provider, or no public URL to come back to).
fn return_base(state: &DashboardState) -> Option<&str> {
    state.api.payments.as_ref()?;
    state.config.public_url.as_deref()
}

/// Whether customers can buy credits here (the "Add credits" button is shown only then).
pub fn available(state: &DashboardState) -> bool {
    return_base(state).is_some()
}

/// The "Add credits" button of the overview and the billing page; nothing when credits cannot
/// be bought here.
pub fn add_credits_button(state: &DashboardState) -> Markup {
    html! {
        @if available(state) {
            a.button.primary #add-credits href=(NEW) { "Add credits" }
        }
    }
}

fn page_of(top_up_id: &PurchaseId) -> String {
    format!("/dashboard/top-ups/{top_up_id}")
}

/// The form, as posted (every field as text; the checkbox is present only when ticked).
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
pub struct TopUpForm {
    amount_usd: String,
    save_card: Option<String>,
}

/// The amount typed, read as the API reads `amount_usd` (its range is the API's to check).
fn amount(text: &str) -> Result<Nanos, ApiError> {
    match text.trim().trim_start_matches('$') {
        "" => Err(ApiError::invalid(
            "amount_usd",
            "Amount: enter the credits to buy, in USD, such as 25.00.",
        )),
        t => tollgate_api::wire::parse_usd(t)
            .map_err(|e| ApiError::invalid("amount_usd", format!("Amount: {e}."))),
    }
}

/// The page saying credits cannot be bought here (no payment provider, or no public URL).
fn unavailable(who: &CustomerSession) -> Response {
    let body = html! {
        (layout::empty("Credits cannot be bought here yet", html! {
            "Your platform has not connected a payment provider to this dashboard. Ask them to \
             add credits to your account."
        }))
        p.back { a href=(SECTION) { "← Billing" } }
    };
    (
        StatusCode::NOT_FOUND,
        layout::html(layout::page(&chrome(who, SECTION), "Add credits", body)),
    )
        .into_response()
}

fn form_page(
    state: &DashboardState,
    who: &CustomerSession,
    form: &TopUpForm,
    error: Option<&str>,
) -> Markup {
    let range = state.api.payments.as_ref().map(|p| p.settings.top_ups);
    let body = html! {
        p.back { a href=(SECTION) { "← Billing" } }
        p.lead {
            "Buy credits with a card. You pay on the payment provider's secure page, then come \
             back here; the credits are added as soon as the provider confirms the payment."
        }
        @if let Some(e) = error { p.notice.error role="alert" { (e) } }
        form.card #top-up-form method="post" action="/dashboard/top-ups" {
            h2 { "Credits to buy" }
            (csrf(&who.session.csrf))
            label for="amount_usd" { "Amount (USD)" }
            input #amount_usd type="text" name="amount_usd" value=(form.amount_usd)
                inputmode="decimal" required autocomplete="off" placeholder="25.00"
                aria-describedby="amount-hint"
                aria-invalid=[error.map(|_| "true")];
            p #amount-hint .hint {
                @if let Some(r) = range {
                    "From " (fmt::usd(r.min)) " to " (fmt::usd(r.max)) ", in whole cents. "
                }
                "Paid credits expire after a year."
            }
            label.inline {
                input #save_card type="checkbox" name="save_card" value="yes"
                    checked[form.save_card.is_some()] aria-describedby="save-hint";
                " Save this card for automatic top-ups"
            }
            p #save-hint .hint {
                "The payment provider keeps the card, not us. With it saved, you can have your "
                "balance topped up by itself when it runs low: see "
                a href=(super::auto_top_up::SECTION) { "automatic top-ups" } "."
            }
            button.primary type="submit" { "Continue" }
        }
    };
    layout::page(&chrome(who, SECTION), "Add credits", body)
}

/// `GET /dashboard/top-ups/new`: the form.
pub async fn new_page(
    State(state): State<DashboardState>,
    who: CustomerSession,
) -> Result<Response, PageError> {
    if !available(&state) {
        return Ok(unavailable(&who));
    }
    Ok(layout::html(form_page(&state, &who, &TopUpForm::default(), None)).into_response())
}

/// `POST /dashboard/top-ups`: creates the top-up (a new id each time) with its return page as
/// both URLs, and answers the page with the link to pay. A refused amount shows the form again
/// with the reason, with nothing created (the API checks the amount before anything else).
pub async fn create(
    State(state): State<DashboardState>,
    Post { who, form }: Post<CustomerSession, TopUpForm>,
) -> Result<Response, PageError> {
    let Some(base) = return_base(&state).map(str::to_string) else {
        return Ok(unavailable(&who));
    };
    let top_up_id = new_top_up_id();
    let back = format!("{base}{}", page_of(&top_up_id));
    let save = form.save_card.is_some();
    let created = match amount(&form.amount_usd) {
        Ok(amount_usd) => {
            let body = CreateTopUpBody {
                amount_usd,
                success_url: back.clone(),
                cancel_url: format!("{back}?cancelled=1"),
                save_payment_method: Some(save),
            };
            create_as(&state.api, who.account.clone(), top_up_id, body).await
        }
        Err(e) => Err(e),
    };
    match created {
        Ok(t) => Ok(layout::html(link_page(&who, &t, save)).into_response()),
        Err(e) => {
            let (status, message) = refusal(e);
            Ok((
                status,
                layout::html(form_page(&state, &who, &form, Some(&message))),
            )
                .into_response())
        }
    }
}

/// A refused top-up's status and what to tell the customer: the API's reason for their own
/// mistakes; for the provider failing, that nothing was charged.
fn refusal(e: ApiError) -> (StatusCode, String) {
    if e.status == StatusCode::BAD_GATEWAY {
        tracing::warn!(error = %e.message, "a dashboard top-up failed at the payment provider");
        return (
            e.status,
            "The payment provider did not answer as it should, so no payment page was opened \
             and nothing was charged. Try again in a moment."
                .into(),
        );
    }
    crate::console::refusal(e)
}

/// The answer to the form: the link to the provider's checkout.
fn link_page(who: &CustomerSession, t: &TopUpRecord, save: bool) -> Markup {
    let body = html! {
        div.card #continue-payment {
            h2 { "Pay " (fmt::usd(t.amount)) " on the payment page" }
            p {
                "Your top-up is ready. Pay it on the payment provider's secure page; it sends you "
                "back here, and the credits are added as soon as it confirms the payment."
            }
            @if save {
                p { "The card you pay with will be saved for automatic top-ups." }
            }
            @if let Some(url) = &t.checkout_url {
                p.actions {
                    a.button.primary #continue-to-payment href=(url) rel="noreferrer" {
                        "Continue to payment"
                    }
                }
            }
            p.hint {
                "Top-up " code { (t.top_up_id) } ". "
                a href=(page_of(&t.top_up_id)) { "See where it stands" }
                " at any time."
            }
        }
    };
    layout::page(&chrome(who, SECTION), "Add credits", body)
}

/// A top-up's failure, in the customer's words (the provider's code kept beside it).
pub fn failure_words(code: &str) -> &'static str {
    match code {
        "checkout_expired" => "the payment page expired before it was paid",
        "checkout_not_created" => "the payment provider could not open a payment page",
        "async_payment_failed" => "the payment did not go through",
        "authentication_required" => "your bank asked you to confirm the payment",
        "card_declined" | "do_not_honor" | "generic_decline" => "your bank declined the card",
        "insufficient_funds" => "the card's funds were not enough",
        "expired_card" => "the card has expired",
        "incorrect_cvc" | "incorrect_number" | "invalid_cvc" | "invalid_number" => {
            "the card's details were not right"
        }
        "provider_unreachable" => "the payment provider could not be reached",
        "amount_mismatch" | "amount_not_in_cents" => {
            "the amount paid did not match the top-up, so nothing was credited"
        }
        _ => "the payment failed",
    }
}

#[derive(Default, Deserialize)]
pub struct ShowQuery {
    /// Set on the provider's cancel URL: the customer left its page without paying. Anyone can
    /// write it, so it only chooses the words for a top-up the store says is not paid.
    #[serde(default)]
    cancelled: Option<String>,
}

/// The payment a succeeded top-up became (its purchase), with its invoice: the payments of
/// the purchase's millisecond, read from the newest.
async fn payment_of(
    state: &DashboardState,
    account: &AccountId,
    top_up_id: &PurchaseId,
) -> Result<Option<PaymentRecord>, PageError> {
    let (a, id) = (account.clone(), top_up_id.clone());
    let Some(purchase) = state.engine().read(move |r| r.purchase(&a, &id)).await? else {
        return Ok(None);
    };
    let q = PaymentsQuery {
        account: account.clone(),
        before: Some((purchase.created_at.0 + 1, String::new())),
        limit: 100,
    };
    let rows = state.engine().read(move |r| r.payments(&q)).await?;
    Ok(rows.into_iter().find(|p| p.purchase_id == *top_up_id))
}

/// `GET /dashboard/top-ups/{top_up_id}`: where one of the account's top-ups stands.
pub async fn show(
    State(state): State<DashboardState>,
    who: CustomerSession,
    Path(top_up_id): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Result<Response, PageError> {
    let unknown = || PageError::not_found(format!("You have no top-up {top_up_id}."));
    let id = PurchaseId::parse(&top_up_id).map_err(|_| unknown())?;
    let t = match tollgate_api::payments::top_ups::show(&state.api, who.account.clone(), id).await {
        Ok(t) => t,
        Err(e) if e.status == StatusCode::NOT_FOUND => return Err(unknown()),
        Err(e) => return Err(e.into()),
    };
    let here = page_of(&t.top_up_id);
    let cancelled = q.cancelled.is_some() && t.status == TopUpStatus::AwaitingPayment;
    let (paid, balance, card_saved, rule_on) = match t.status {
        TopUpStatus::Succeeded => {
            let payment = payment_of(&state, &who.account, &t.top_up_id).await?;
            let row = tollgate_query::account(state.engine(), &who.account).await?;
            let p = &row.state.payment;
            (
                payment,
                Some(row.state.credit.balance),
                p.payment_method.is_some(),
                p.auto_top_up.as_ref().is_some_and(|r| r.enabled),
            )
        }
        _ => (None, None, false, false),
    };
    let status = html! {
        @match t.status {
            TopUpStatus::AwaitingPayment if cancelled => div #top-up-status data-status="cancelled" {
                p.notice.warn {
                    strong { "Not paid. " }
                    "You left the payment page before paying, so nothing was charged for this "
                    "top-up."
                }
                p.actions {
                    @if let Some(url) = &t.checkout_url {
                        a.button.primary href=(url) rel="noreferrer" { "Continue to payment" }
                        " "
                    }
                    a.button href=(super::top_ups::NEW) { "Start a new top-up" }
                }
            },
            TopUpStatus::AwaitingPayment => div #top-up-status data-status="awaiting_payment"
                hx-get=(here) hx-trigger=(REFRESH) hx-select="#top-up-status"
                hx-target="this" hx-swap="outerHTML" {
                p.notice {
                    strong { "Confirming your payment\u{2026} " }
                    "As soon as the payment provider confirms it, the credits are added and this "
                    "page shows them. It refreshes by itself; "
                    a href=(here) { "reload it" } " if it does not."
                }
                @if let (Some(url), TopUpKind::Checkout) = (&t.checkout_url, t.kind) {
                    p.hint {
                        "Not paid yet? " a href=(url) rel="noreferrer" { "Continue to payment" } "."
                    }
                }
            },
            TopUpStatus::Succeeded => div #top-up-status data-status="succeeded" {
                p.notice {
                    strong { "Paid: " (fmt::usd(t.amount)) " of credits added." }
                    @if let Some(b) = balance {
                        " Your balance is now "
                        span #balance-now data-nano-usd=(b.0) { (fmt::usd_cents(b)) } "."
                    }
                }
                @if let Some(p) = &paid {
                    dl.details {
                        @if let Some((y, n)) = p.invoice {
                            @let invoice = InvoiceRecord::id_of(y, n);
                            dt { "Invoice" }
                            dd { a #top-up-invoice href={ "/dashboard/invoices/" (invoice) } { (invoice) } }
                        }
                        @if let Some(at) = p.expires_at {
                            dt { "Credits expire" } dd { (fmt::date(at)) }
                        }
                    }
                }
                @if card_saved && !rule_on {
                    p.hint {
                        "Your card is saved: "
                        a href=(super::auto_top_up::SECTION) { "turn on automatic top-ups" }
                        " to top up by itself when your balance runs low."
                    }
                }
            },
            TopUpStatus::Failed => div #top-up-status data-status="failed" {
                @let code = t.failure.as_deref().unwrap_or("payment_failed");
                p.notice.error {
                    strong { "Not paid: " } (failure_words(code)) ". "
                    "Nothing was credited. " span.muted { "(" code { (code) } ")" }
                }
                p.actions { a.button.primary href=(super::top_ups::NEW) { "Try again" } }
            },
        }
    };
    let body = html! {
        p.back { a href=(SECTION) { "← Billing" } }
        dl.stats {
            (layout::stat("Amount", html! { (fmt::usd(t.amount)) }, Some(html! {
                @match t.kind { TopUpKind::Checkout => "Checkout top-up", TopUpKind::Auto => "Automatic top-up" }
            })))
            (layout::stat("Started", html! { (fmt::date(t.created_at)) }, Some(html! { (fmt::datetime(t.created_at)) })))
        }
        div #top-up-live role="status" aria-live="polite" { (status) }
        p.hint { "Top-up " code { (t.top_up_id) } "." }
    };
    Ok(layout::html(layout::page(
        &chrome(&who, SECTION),
        &format!("Top-up of {}", fmt::usd(t.amount)),
        body,
    ))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_read_as_the_api_reads_them() {
        assert_eq!(amount("25").unwrap(), Nanos(25_000_000_000));
        assert_eq!(amount(" $25.50 ").unwrap(), Nanos(25_500_000_000));
        for bad in ["", "ten", "1e3", "-5"] {
            let e = amount(bad).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn failures_are_told_in_words() {
        assert_eq!(
            failure_words("checkout_expired"),
            "the payment page expired before it was paid"
        );
        assert_eq!(failure_words("something_new"), "the payment failed");
    }
}
