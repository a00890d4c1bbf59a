//! What a page answers when it cannot show what was asked: an HTML page with the reason (never
//! fal's JSON envelope, which is the API's), or a redirect to sign in.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use tollgate_api::error::ApiError;

#[derive(Debug)]
pub enum PageError {
    /// Not signed in (or the session ended): go to this sign-in page.
    SignIn(&'static str),
    /// An error page with this status and message.
    Status(StatusCode, String),
}

impl PageError {
    pub fn not_found(what: impl Into<String>) -> PageError {
        PageError::Status(StatusCode::NOT_FOUND, what.into())
    }

    pub fn bad_request(why: impl Into<String>) -> PageError {
        PageError::Status(StatusCode::BAD_REQUEST, why.into())
    }

    pub fn forbidden(why: impl Into<String>) -> PageError {
        PageError::Status(StatusCode::FORBIDDEN, why.into())
    }

    /// A fault of the server's (logged; the page says only that something went wrong).
    pub fn internal(what: impl Into<String>) -> PageError {
        ApiError::of_status(StatusCode::INTERNAL_SERVER_ERROR, what).into()
    }
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> PageError {
        if e.status.is_server_error() {
            tracing::error!(error = %e.message, "dashboard page failed");
            return PageError::Status(
                e.status,
                "Something went wrong on our side. Try again in a moment.".into(),
            );
        }
        PageError::Status(e.status, e.message)
    }
}

impl From<tollgate_engine::EngineError> for PageError {
    fn from(e: tollgate_engine::EngineError) -> PageError {
        ApiError::from(e).into()
    }
}

impl From<tollgate_query::QueryError> for PageError {
    fn from(e: tollgate_query::QueryError) -> PageError {
        ApiError::from(e).into()
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::SignIn(to) => Redirect::to(to).into_response(),
            PageError::Status(status, message) => {
                let title = status.canonical_reason().unwrap_or("Error");
                let body = crate::layout::bare(
                    title,
                    html! {
                        main.narrow {
                            h1 { (title) }
                            p.notice.error role="alert" { (message) }
                            p { a href="/dashboard" { "Back to the dashboard" } }
                        }
                    },
                );
                (
                    status,
                    [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    body.into_string(),
                )
                    .into_response()
            }
        }
    }
}
