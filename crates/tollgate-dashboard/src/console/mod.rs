//! The operator console, `/console`: the platform's staff, signed in with an operator key.

pub mod accounts;

use crate::layout::Chrome;
use crate::session::{self, Area, ConsoleSession};
use crate::DashboardState;
use axum::routing::get;

pub fn routes() -> axum::Router<DashboardState> {
    axum::Router::new()
        .merge(session::routes(Area::Console))
        .route("/console", get(accounts::list))
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
