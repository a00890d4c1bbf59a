//! fal's `GET /models`: the catalog's endpoints, listed, found and searched; and the date its
//! prices were read on.

use crate::cursor::{Cursor, Page};
use crate::QueryError;
use tollgate_core::catalog::{Catalog, EndpointDef, EndpointStatus};
use tollgate_core::ids::EndpointId;
use tollgate_core::Timestamp;

/// Which endpoints to list.
#[derive(Clone, Debug, Default)]
pub struct ModelsQuery {
    /// Only these (empty: all).
    pub endpoints: Vec<EndpointId>,
    /// A case-insensitive substring of the id, display name, description or category.
    pub text: Option<String>,
    /// Case-insensitive.
    pub category: Option<String>,
    pub status: Option<EndpointStatus>,
    pub cursor: Option<Cursor>,
    pub limit: usize,
}

/// An endpoint as the models list shows it.
#[derive(Clone, Debug)]
pub struct Model<'a> {
    pub def: &'a EndpointDef,
    /// When its first public price took effect.
    pub date: Timestamp,
    /// When its public price in force took effect.
    pub updated_at: Timestamp,
}

/// One page of the catalog's endpoints, in id order (the cursor is the last id shown).
pub fn models<'a>(
    catalog: &'a Catalog,
    q: &ModelsQuery,
    now: Timestamp,
) -> Result<Page<Model<'a>>, QueryError> {
    let after: Option<EndpointId> = Cursor::key(q.cursor.as_ref())?;
    let text = q.text.as_deref().map(str::to_lowercase);
    let page = Page::of(
        catalog
            .endpoints
            .values()
            .filter(|d| after.as_ref().is_none_or(|a| &d.id > a))
            .filter(|d| q.endpoints.is_empty() || q.endpoints.contains(&d.id))
            .filter(|d| {
                q.category
                    .as_deref()
                    .is_none_or(|c| d.category.eq_ignore_ascii_case(c))
            })
            .filter(|d| q.status.is_none_or(|s| d.status == s))
            .filter(|d| text.as_deref().is_none_or(|t| mentions(d, t))),
        q.limit,
        |last| last.id.clone(),
    );
    Ok(Page {
        items: page
            .items
            .into_iter()
            .map(|def| model(catalog, def, now))
            .collect(),
        next_cursor: page.next_cursor,
    })
}

/// `text` (lower case) is a substring of the id, display name, description or category.
fn mentions(d: &EndpointDef, lowercase_text: &str) -> bool {
    [d.id.as_str(), &d.display_name, &d.description, &d.category]
        .iter()
        .any(|field| field.to_lowercase().contains(lowercase_text))
}

fn model<'a>(catalog: &Catalog, def: &'a EndpointDef, now: Timestamp) -> Model<'a> {
    let public = catalog
        .versions
        .get(&(def.id.clone(), None))
        .map(Vec::as_slice)
        .unwrap_or_default();
    let first = public.first().map(|v| v.effective_from);
    let in_force = public
        .iter()
        .rev()
        .find(|v| v.effective_from <= now)
        .map(|v| v.effective_from)
        .or(first);
    // Every catalog entry has a public price, so both times exist.
    Model {
        def,
        date: first.unwrap_or_default(),
        updated_at: in_force.unwrap_or_default(),
    }
}

/// The date the catalog's prices were read on (the catalog document's `prices_read_on`), if a
/// catalog was applied.
pub async fn prices_read_on(
    engine: &tollgate_engine::Engine,
) -> Result<Option<String>, QueryError> {
    Ok(engine.read(|r| r.prices_read_on()).await?)
}
