//! The files pages load, embedded in the binary (no CDN, nothing fetched at run time): htmx and
//! uPlot as published on the npm registry (minified, with their licenses beside them in
//! `assets/`), and the dashboard's own stylesheet and script. Served at
//! `/dashboard/assets/{name}` with a version in the query string, so a browser may cache them.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// Each file: its name, content type and bytes.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "htmx.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/htmx.min.js"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/uPlot.min.css"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/dashboard.css"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/dashboard.js"),
    ),
    (
        "htmx.LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../assets/htmx.LICENSE"),
    ),
    (
        "uPlot.LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../assets/uPlot.LICENSE"),
    ),
];

/// The URL of an asset, versioned by the build.
pub fn url(name: &str) -> String {
    format!("/dashboard/assets/{name}?v={}", env!("CARGO_PKG_VERSION"))
}

pub fn routes() -> axum::Router<crate::DashboardState> {
    axum::Router::new().route("/dashboard/assets/{name}", get(serve))
}

async fn serve(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, bytes)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "public, max-age=86400"),
            ],
            *bytes,
        )
            .into_response(),
        None => crate::error::PageError::not_found(format!("no such file: {name}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_asset_is_named_once_and_not_empty() {
        let mut names: Vec<_> = super::FILES.iter().map(|(n, _, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), super::FILES.len());
        assert!(super::FILES.iter().all(|(_, _, b)| b.len() > 100));
    }
}
