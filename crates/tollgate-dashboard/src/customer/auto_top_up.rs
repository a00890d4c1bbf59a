//! Automatic top-ups, `/dashboard/auto-top-up`: the account's rule (on or off, the threshold,
//! the amount, the monthly cap, in USD), where it stands in plain words (active, or paused and
//! why), this month's automatic top-ups and their total, and the form that sets the rule.
//!
//! The rule and its decision are the core's ([`tollgate_core::payments::AutoTopUp`]); the form
//! makes the API's own call ([`tollgate_api::payments::auto_top_up::set`], which
//! `PUT /v1/account/auto-top-up` makes), so an amount outside the deployment's range, a cap below
//! the amount, or a rule turned on without a saved card (409 `payment_method_required`) is
//! refused with the API's reason and nothing saved.

use maud::{html, Markup};
use tollgate_core::payments::{AutoTopUp, PausedReason, MAX_FAILURES};

pub const SECTION: &str = "/dashboard/auto-top-up";

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
    }
}

/// The rule's pause, if it is turned on and paused (a rule turned off waits for nothing).
pub fn paused(rule: Option<&AutoTopUp>) -> Option<PausedReason> {
    rule.filter(|r| r.enabled).and_then(|r| r.paused)
}
