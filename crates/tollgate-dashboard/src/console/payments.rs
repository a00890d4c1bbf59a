//! The payments part of an account's console page (`/console/accounts/{username}#payments`):
//! its payment profile at the provider (the customer, whether a card is saved, the auto top-up
//! rule and where it stands, the disputes holding its lock), its payments (status, what was
//! refunded and disputed, the provider's reference) each with a refund form, and the dispute
//! lock's "Unlock" form. The forms' handlers are the account page's ([`super::account`]), which
//! renders these pieces.

use super::form_error;
use crate::customer::auto_top_up::paused_words;
use crate::customer::billing::payment_status_badge;
use crate::fmt;
use crate::layout::csrf;
use maud::{html, Markup};
use serde::Deserialize;
use tollgate_api::auth::random_token;
use tollgate_api::payments::history::PaymentStatus;
use tollgate_core::ids::PurchaseId;
use tollgate_core::payments::{PausedReason, PaymentProfile};
use tollgate_core::{Nanos, Timestamp};
use tollgate_store::{InvoiceRecord, PaymentRecord};

/// A refund form, as posted (every field as text).
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
pub struct RefundForm {
    pub refund_id: String,
    pub amount_usd: String,
}

impl RefundForm {
    /// A blank form with a refund id of its own, drawn when the page is rendered: the same
    /// form sent twice refunds once (the API is idempotent on the refund id).
    pub fn fresh() -> RefundForm {
        RefundForm {
            refund_id: new_refund_id(),
            amount_usd: String::new(),
        }
    }
}

/// A refund id for a rendered form: `refund-` and 24 random hex digits.
pub fn new_refund_id() -> String {
    format!("refund-{}", &random_token()[..24])
}

/// A refund form refused: the purchase it was for, the form as posted, and why.
pub type RefusedRefund = (PurchaseId, RefundForm, String);

/// The account's payments, newest first, each with its status, what was refunded and taken
/// back for disputes, the provider's payment, its invoice, and a refund form (folded; open with
/// the reason when it was refused).
pub fn payments_table(
    rows: &[PaymentRecord],
    here: &str,
    csrf_token: &str,
    refused: Option<&RefusedRefund>,
) -> Markup {
    html! {
        div.table-wrap tabindex="0" {
            table #payments-table {
                caption { "Its payments, newest first" }
                thead { tr {
                    th scope="col" { "Purchase" }
                    th.num scope="col" { "Amount" }
                    th scope="col" { "Status" }
                    th.num scope="col" { "Refunded" }
                    th.num scope="col" { "Disputed" }
                    th scope="col" { "Provider payment" }
                    th scope="col" { "Invoice" }
                    th scope="col" { span.visually-hidden { "Refund" } }
                } }
                tbody {
                    @for p in rows {
                        @let error = refused.filter(|(id, _, _)| *id == p.purchase_id);
                        tr data-purchase=(p.purchase_id) {
                            td.wrap { span.mono { (p.purchase_id) } br; span.small.muted { (fmt::datetime(p.created_at)) } }
                            td.num { (fmt::usd(p.amount)) }
                            td { (payment_status_badge(PaymentStatus::of(p))) }
                            td.num data-field="refunded" { (fmt::usd(p.refunded)) }
                            td.num data-field="disputed" { (fmt::usd(p.disputed)) }
                            td {
                                @match &p.provider_reference {
                                    Some(r) => code { (r) },
                                    None => span.muted { "manual" },
                                }
                            }
                            td {
                                @if let Some((y, n)) = p.invoice { span.mono { (InvoiceRecord::id_of(y, n)) } }
                            }
                            td { (refund_form(p, here, csrf_token, error)) }
                        }
                    }
                }
            }
        }
    }
}

/// A purchase id as a path segment: ids may hold any printable character, `/` and `?` too.
fn segment(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The refund form of a payment, folded.
fn refund_form(
    p: &PaymentRecord,
    here: &str,
    csrf_token: &str,
    refused: Option<&RefusedRefund>,
) -> Markup {
    let form = refused.map_or_else(RefundForm::fresh, |(_, f, _)| f.clone());
    let left = Nanos(p.amount.0.saturating_sub(p.refunded.0).max(0));
    let field = |name: &str| format!("{name}-{}", p.purchase_id);
    html! {
        details.actions-fold open[refused.is_some()] {
            summary aria-label={ "Refund " (p.purchase_id) } { "Refund" }
            @if let Some((_, _, message)) = refused { (form_error(message)) }
            form method="post" action={ (here) "/purchases/" (segment(p.purchase_id.as_str())) "/refund" }
                data-confirm={ "Refund purchase " (p.purchase_id) "? The credits are taken back at once." } {
                (csrf(csrf_token))
                label for=(field("refund-id")) { "Refund id" }
                input id=(field("refund-id")) type="text" name="refund_id" value=(form.refund_id)
                    required maxlength="128" autocomplete="off" spellcheck="false";
                label for=(field("refund-amount")) { "Amount (USD)" }
                input id=(field("refund-amount")) type="text" name="amount_usd" value=(form.amount_usd)
                    inputmode="decimal" required autocomplete="off" placeholder=(fmt::usd_field(left))
                    aria-describedby=(field("refund-hint"));
                p.hint id=(field("refund-hint")) {
                    @if p.provider_reference.is_some() {
                        "Refunded at the payment provider first, at most " (fmt::usd(left)) " (whole cents)."
                    } @else {
                        "Takes back only what is left of this purchase's credits."
                    }
                }
                button.danger type="submit" { "Refund" }
            }
        }
    }
}

/// Why a rule is paused, for the operator: the provider's word and the customer's words.
fn paused_text(reason: PausedReason) -> Markup {
    html! {
        "paused (" code { (reason.as_str()) } "): the customer sees \u{201c}" (paused_words(reason)) "\u{201d}"
    }
}

/// The account's payment profile as stored (`accounts.payment`), read at `now` (a month that
/// has passed counts no automatic top-up).
pub fn profile(p: &PaymentProfile, now: Timestamp) -> Markup {
    html! {
        div.card #payment-profile {
            h3 { "Payment profile" }
            dl.details {
                dt { "Provider customer" }
                dd #provider-customer {
                    @match &p.customer {
                        Some(c) => code { (c) },
                        None => span.muted { "none yet: created at the account's first checkout" },
                    }
                }
                dt { "Saved card" }
                dd #saved-card {
                    @match &p.payment_method {
                        Some(pm) => { "saved for automatic top-ups (" code { (pm) } ")" },
                        None => span.muted { "none: the customer saves one when paying a top-up" },
                    }
                }
                dt { "Automatic top-up" }
                dd #auto-top-up-rule {
                    @match &p.auto_top_up {
                        None => span.muted { "never set" },
                        Some(rule) => {
                            @let r = rule.at(now);
                            @if r.enabled { span.badge.ok { "on" } } @else { span.badge { "off" } }
                            " below " (fmt::usd(r.threshold)) ", by " (fmt::usd(r.amount))
                            ", at most " (fmt::usd(r.max_per_month)) " a month"
                        }
                    }
                }
                @if let Some(rule) = &p.auto_top_up {
                    @let r = rule.at(now);
                    dt { "Its status" }
                    dd #auto-top-up-status {
                        @match r.paused {
                            Some(reason) => (paused_text(reason)),
                            None => @if r.enabled { "active" } @else { span.muted { "turned off by the customer" } },
                        }
                        @if r.failures > 0 {
                            "; " (r.failures) " failed payment" @if r.failures != 1 { "s" } " in a row"
                        }
                        @if let Some(at) = r.not_before.filter(|at| *at > now) {
                            "; the next may start at " (fmt::datetime(at))
                        }
                    }
                    dt { "This month" }
                    dd #auto-top-up-month {
                        (r.month_count) " paid; " (fmt::usd(r.month_total)) " paid or in flight"
                        @if let Some(id) = &r.in_flight { "; in flight: " code { (id) } }
                    }
                }
                dt { "Disputes holding the lock" }
                dd #dispute-locks {
                    (p.dispute_locks)
                    @if p.dispute_epoch > 0 {
                        " " span.muted { "(unlocked by an operator " (p.dispute_epoch) " time" @if p.dispute_epoch != 1 { "s" } ")" }
                    }
                }
            }
        }
    }
}

/// The form that lifts a `payment_disputed` lock (`POST .../unlock`, the operator API's own
/// call), with the reason the operator gives.
pub fn unlock_form(here: &str, csrf_token: &str, reason: &str, error: Option<&str>) -> Markup {
    html! {
        form.card #unlock method="post" action={ (here) "/unlock" }
            data-confirm="Lift the dispute lock? New requests are accepted again at once." {
            h3 { "Lift the dispute lock" }
            (csrf(csrf_token))
            @if let Some(e) = error { (form_error(e)) }
            p {
                "A disputed payment locks the account until the dispute is won. Once it is lost "
                "and settled with the customer (or to let them work meanwhile), lift the lock here: "
                "what the disputes took back stays taken, and a dispute already open cannot lift a "
                "lock set after this."
            }
            label for="unlock_reason" { "Reason" }
            input #unlock_reason type="text" name="reason" value=(reason) required
                maxlength="500" autocomplete="off" aria-describedby="unlock-hint";
            p #unlock-hint .hint { "Kept in the server's log, such as \u{201c}dispute lost, repaid by bank transfer\u{201d}." }
            button.danger type="submit" { "Unlock" }
        }
    }
}
