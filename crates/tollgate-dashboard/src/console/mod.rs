//! The operator console, `/console`: the platform's staff, signed in with an operator key.
//!
//! Its pages read what the operator API reads and its forms make the operator API's own calls
//! (the functions its handlers call, made `pub` in `tollgate-api`), so a form can do nothing
//! the API would refuse, and refuses what the API refuses, with the same reason. Every form is
//! a CSRF-checked POST ([`crate::session::Post`]) that redirects back to its page with a
//! notice of what happened, or shows the page again with the reason beside the form (a
//! refused form writes nothing).

pub mod account;
pub mod accounts;
pub mod catalog;
pub mod invoices;
pub mod payments;
pub mod reconciliation;
pub mod serverless;
pub mod webhooks;

use crate::error::PageError;
use crate::layout::{self, Chrome};
use crate::session::{self, Area, ConsoleSession};
use crate::DashboardState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::{html, Markup};
use tollgate_api::error::ApiError;
use tollgate_core::Timestamp;

pub fn routes() -> axum::Router<DashboardState> {
    axum::Router::new()
        .merge(session::routes(Area::Console))
        .route("/console", get(accounts::list))
        .merge(account::routes())
        .merge(catalog::routes())
        .merge(invoices::routes())
        .merge(reconciliation::routes())
        .merge(webhooks::routes())
}

/// The chrome of a console page in `section`.
pub fn chrome<'a>(who: &'a ConsoleSession, section: &'static str) -> Chrome<'a> {
    Chrome {
        area: Area::Console,
        section,
        who: "operator",
        csrf: &who.session.csrf,
    }
}

/// A console page answered with `status`.
pub fn respond(status: StatusCode, page: Markup) -> Response {
    (status, layout::html(page)).into_response()
}

/// What a refused call answers a form: its status and the reason to show beside the form (a
/// server error is logged and shown as a generic message, as an error page would).
pub fn refusal(e: ApiError) -> (StatusCode, String) {
    match PageError::from(e) {
        PageError::Status(status, message) => (status, message),
        PageError::SignIn(_) => (StatusCode::UNAUTHORIZED, "Sign in again.".into()),
    }
}

/// A refusal of the form's own input, before any call: 400 with `message`.
pub fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::validation(message)
}

/// The notice of what a form did, at the top of the page it redirected to.
pub fn done(text: Markup) -> Markup {
    html! { p.notice role="status" { (text) } }
}

/// Why a form was refused, at the top of the page shown again (announced), with a link to
/// the form (`#id`).
pub fn refused(message: &str, form: &str) -> Markup {
    html! {
        p.notice.error role="alert" {
            (message) " " a href={ "#" (form) } { "Back to the form" }
        }
    }
}

/// Why a form was refused, beside the form.
pub fn form_error(message: &str) -> Markup {
    html! { p.notice.error { (message) } }
}

/// A console page for something that does not exist: 404, with the way back.
pub fn not_found(who: &ConsoleSession, section: &'static str, message: Markup) -> Response {
    respond(
        StatusCode::NOT_FOUND,
        layout::page(
            &chrome(who, section),
            "Not found",
            layout::empty("Nothing here", message),
        ),
    )
}

/// A time typed in a form, in UTC: empty (`None`), a date (`2026-12-01`: its start), a
/// date and time as a `datetime-local` field sends it (`2026-12-01T09:30`, seconds optional),
/// or RFC 3339 with any offset. `Err` says what is accepted.
pub fn parse_time(field: &str, text: &str) -> Result<Option<Timestamp>, ApiError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let utc = |t: chrono::NaiveDateTime| Some(Timestamp(t.and_utc().timestamp_millis()));
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(Some(Timestamp(t.timestamp_millis())));
    }
    for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return Ok(utc(t));
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(utc(d.and_hms_opt(0, 0, 0).unwrap_or_default()));
    }
    Err(invalid(format!(
        "{field}: `{text}` is not a time: write a date (2026-12-01) or a date and time in UTC \
         (2026-12-01T09:30)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_in_utc_from_dates_local_fields_and_rfc3339() {
        let t = |s| parse_time("until", s).unwrap();
        assert_eq!(t(""), None);
        assert_eq!(t("2026-12-01"), Some(Timestamp(1_796_083_200_000)));
        assert_eq!(t("2026-12-01T00:00"), Some(Timestamp(1_796_083_200_000)));
        assert_eq!(t("2026-12-01T00:00:30"), Some(Timestamp(1_796_083_230_000)));
        assert_eq!(
            t("2026-12-01T01:00:00+01:00"),
            Some(Timestamp(1_796_083_200_000))
        );
        let e = parse_time("until", "tomorrow").unwrap_err();
        assert!(
            e.message.contains("`tomorrow` is not a time"),
            "{}",
            e.message
        );
    }
}
