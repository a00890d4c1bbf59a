//! The payments part of an account's console page (`/console/accounts/{username}#payments`):
//! its payment profile at the provider (the customer, whether a card is saved, the auto top-up
//! rule and where it stands, the disputes holding its lock) and the dispute lock's "Unlock"
//! form. The forms' handlers are the account page's ([`super::account`]), which renders these
//! pieces.

use super::form_error;
use crate::customer::auto_top_up::paused_words;
use crate::fmt;
use crate::layout::csrf;
use maud::{html, Markup};
use tollgate_core::payments::{PausedReason, PaymentProfile};
use tollgate_core::Timestamp;

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
        div.panel #payment-profile {
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
