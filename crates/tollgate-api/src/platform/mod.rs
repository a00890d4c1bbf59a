//! fal's Platform API (docs/reference/API.md section 3): the customer-facing reads and key
//! management, in the same shape as fal's published schemas
//! (docs/reference/fal-platform-openapi.json). The reads are assembled by `tollgate-query`;
//! these handlers parse fal's parameters into its queries and render its typed answers.

pub mod account;
pub mod analytics;
pub mod keys;
pub mod models;
pub mod requests;
pub mod serverless;
pub mod usage;

use crate::query_string::Query;
use tollgate_query::Cursor;

/// fal's paging fields of an answer: the next page's cursor (`null` on the last page) and
/// whether there is one.
pub(crate) fn paging(next: Option<Cursor>) -> (Option<String>, bool) {
    let more = next.is_some();
    (next.map(|c| c.as_str().to_string()), more)
}

/// The `expand` values given, each one of those the documented enum `T` lists.
pub(crate) fn expand<T: utoipa::PartialSchema>(
    q: &Query,
) -> Result<Option<Vec<String>>, crate::error::ApiError> {
    let allowed = crate::extract::variants::<T>();
    q.expand(&allowed.iter().map(String::as_str).collect::<Vec<_>>())
}
