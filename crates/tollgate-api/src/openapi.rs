//! The OpenAPI document served at `GET /v1/openapi.json`. It is written by hand in
//! `openapi.json` beside this crate's sources and kept true by the API tests, which validate
//! real responses against its schemas and check that every route is documented.

use axum::http::header;
use axum::response::IntoResponse;

/// The document, as served.
pub const DOCUMENT: &str = include_str!("../openapi.json");

pub async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}
