//! API keys: the account's keys of both scopes (active and revoked), a form that creates an
//! `API` key (by the same rules as `POST /v1/keys`, [`tollgate_api::auth::issue_key`]) and
//! shows its secret once, and the revocation of `API` keys.
//!
//! The page manages what fal's key management manages ([`tollgate_api::platform::keys`]):
//! `API`-scope keys only. `ADMIN` keys (which read billing and manage keys, and which a
//! session signs in with) are issued and revoked by the platform's operator: they are listed,
//! marked as the platform's, but a form naming the `ADMIN` scope is refused (400) and so is a
//! revocation of one (403), so a leaked sign-in link cannot mint or remove one.
//!
//! Only the signed-in account's keys are listed or revoked: another account's key id is not
//! found, like an unknown one, and nothing is revoked. Revoking goes through
//! [`tollgate_api::admin_keys::revoke`], as the operator API and the console do.

use super::chrome;
use crate::error::PageError;
use crate::layout::{self, empty};
use crate::session::{CustomerSession, Post};
use crate::{fmt, DashboardState};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{html, Markup};
use serde::Deserialize;
use tollgate_api::admin_keys;
use tollgate_api::auth::issue_key;
use tollgate_api::error::ApiError;
use tollgate_core::ids::{ApiKeyId, KeyAlias};
use tollgate_query::keys::KeyOwner;
use tollgate_query::Cursor;
use tollgate_store::{ApiKeyRecord, Scope};

pub fn routes() -> axum::Router<DashboardState> {
    axum::Router::new()
        .route("/dashboard/keys", get(list).post(create))
        .route("/dashboard/keys/{key_id}/revoke", post(revoke))
}

const SECTION: &str = "/dashboard/keys";
/// Keys per page.
const PAGE_ROWS: usize = 100;

/// Why the form makes `API` keys only, in the form and in a refusal.
const ADMIN_BY_PLATFORM: &str = "ADMIN keys, which read billing and usage and manage keys, are \
                                 issued by your platform: ask it if you need one.";

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    cursor: Option<String>,
    /// The key just revoked, for the notice.
    #[serde(default)]
    revoked: Option<String>,
}

/// The create form's fields (besides its CSRF token). The form sends no scope; a post that
/// names one other than `API` is refused.
#[derive(Deserialize, Default)]
pub struct CreateForm {
    #[serde(default)]
    alias: String,
    #[serde(default)]
    scope: Option<String>,
}

fn scope_badge(scope: Scope) -> Markup {
    match scope {
        Scope::Admin => {
            html! { span.badge.warn title="Billing, usage and key management" { "ADMIN" } }
        }
        _ => html! { span.badge title="Model calls" { (scope.as_str()) } },
    }
}

fn keys_table(who: &CustomerSession, keys: &[ApiKeyRecord]) -> Markup {
    html! {
        div.table-wrap tabindex="0" {
            table #keys-table {
                thead { tr {
                    th scope="col" { "Alias" }
                    th scope="col" { "Scope" }
                    th scope="col" { "Key id" }
                    th scope="col" { "Created" }
                    th scope="col" { "State" }
                    th scope="col" { span.visually-hidden { "Actions" } }
                } }
                tbody {
                    @for k in keys {
                        @let mine = who.session.key_id.as_ref() == Some(&k.key_id);
                        tr data-key-id=(k.key_id) {
                            td.alias { (k.alias) @if mine { " " span.badge { "this session" } } }
                            td { (scope_badge(k.scope)) }
                            td { code.key-id { (k.key_id) } }
                            td { (fmt::date(k.created_at)) }
                            td {
                                @match k.revoked_at {
                                    Some(at) => span.badge.bad title=(fmt::datetime(at)) { "Revoked " (fmt::date(at)) },
                                    None => span.badge.ok { "Active" },
                                }
                            }
                            td {
                                @if k.scope != Scope::Api {
                                    span.issued.muted.small { "Issued by your platform" }
                                } @else if k.revoked_at.is_none() {
                                    form.inline method="post" action={ "/dashboard/keys/" (k.key_id) "/revoke" }
                                        data-confirm={ "Revoke the key \u{201c}" (k.alias) "\u{201d}? Calls made with it are refused at once, for good." } {
                                        (layout::csrf(&who.session.csrf))
                                        button.danger.small type="submit" aria-label={ "Revoke key " (k.alias) } { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn create_form(csrf: &str, form: &CreateForm, error: Option<&str>) -> Markup {
    html! {
        form.card #create-key method="post" action="/dashboard/keys" {
            h2 { "Create an API key" }
            @if let Some(e) = error { p.notice.error role="alert" { (e) } }
            (layout::csrf(csrf))
            label for="alias" { "Alias" }
            input #alias type="text" name="alias" value=(form.alias) required maxlength="255"
                autocomplete="off" aria-describedby="alias-hint scope-hint";
            p #alias-hint .hint { "A name you will recognize, such as the app or environment that uses it." }
            p #scope-hint .hint {
                "The key calls the models: use it in your applications. " (ADMIN_BY_PLATFORM)
            }
            button.primary type="submit" { "Create API key" }
        }
    }
}

/// The keys page: an optional notice, the keys, and the create form.
async fn keys_page(
    state: &DashboardState,
    who: &CustomerSession,
    cursor: Option<Cursor>,
    notice: Option<Markup>,
    form: &CreateForm,
    error: Option<&str>,
) -> Result<Markup, PageError> {
    let page = tollgate_query::keys::all_keys(
        state.engine(),
        &KeyOwner::Account(who.account.clone()),
        cursor.as_ref(),
        PAGE_ROWS,
    )
    .await?;
    let keys = &page.items;
    let any_api = keys
        .iter()
        .any(|k| k.scope == Scope::Api && k.revoked_at.is_none());
    let body = html! {
        p.lead {
            "Keys authenticate calls as " code { "Authorization: Key <key_id>:<key_secret>" } ". "
            "A key's secret is shown once, when it is created; revoking a key stops it at once."
        }
        @if let Some(n) = notice { (n) }
        @if keys.is_empty() && cursor.is_none() {
            (empty("No keys yet", html! {
                "Create an API key below for your applications' calls. A billing tool that \
                 reads your invoices needs an ADMIN key: your platform issues those."
            }))
        } @else {
            @if !any_api && cursor.is_none() {
                (empty("No API keys yet", html! {
                    "Your account only has the keys your platform issued. Create an API key \
                     below for your applications, so an ADMIN key never has to leave your hands."
                }))
            }
            (keys_table(who, keys))
            @if cursor.is_some() || page.next_cursor.is_some() {
                nav.pager aria-label="Pages" {
                    span { @if cursor.is_some() { a href=(SECTION) { "← First keys" } } }
                    span { @if let Some(c) = &page.next_cursor {
                        a href={ (SECTION) "?cursor=" (encode(c.as_str())) } { "More keys →" }
                    } }
                }
            }
        }
        (create_form(&who.session.csrf, form, error))
    };
    Ok(layout::page(&chrome(who, SECTION), "API keys", body))
}

fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The key `id` if it is the signed-in account's.
async fn account_key(
    state: &DashboardState,
    who: &CustomerSession,
    id: &ApiKeyId,
) -> Result<Option<ApiKeyRecord>, PageError> {
    let found = state.engine().api_key(id).await?;
    Ok(found.filter(|k| k.account.as_ref() == Some(&who.account)))
}

/// `GET /dashboard/keys`. `?revoked=<key id>` adds a notice, when that key of the account is
/// revoked (a link naming an active key, or another account's, shows none).
pub async fn list(
    State(state): State<DashboardState>,
    who: CustomerSession,
    Query(q): Query<ListQuery>,
) -> Result<Response, PageError> {
    let cursor = q
        .cursor
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(Cursor::new);
    let mut notice = None;
    if let Some(id) = q.revoked.as_deref().and_then(|k| ApiKeyId::parse(k).ok()) {
        if let Some(k) = account_key(&state, &who, &id).await? {
            if k.revoked_at.is_some() {
                notice = Some(html! {
                    p.notice role="status" {
                        "The key \u{201c}" (k.alias) "\u{201d} (" code { (k.key_id) } ") is revoked: \
                         calls made with it are refused from now on."
                    }
                });
            }
        }
    }
    let page = keys_page(&state, &who, cursor, notice, &CreateForm::default(), None).await?;
    Ok(layout::html(page).into_response())
}

/// `POST /dashboard/keys`: creates an `API` key and answers a page that shows its secret, once.
pub async fn create(
    State(state): State<DashboardState>,
    Post { who, form }: Post<CustomerSession, CreateForm>,
) -> Result<Response, PageError> {
    if form
        .scope
        .as_deref()
        .is_some_and(|s| s != Scope::Api.as_str())
    {
        let why = format!("This form creates API keys only. {ADMIN_BY_PLATFORM}");
        return refused(&state, &who, &form, &why).await;
    }
    let alias = match KeyAlias::parse(&form.alias) {
        Ok(a) => a,
        Err(e) => return refused(&state, &who, &form, &format!("The alias {}.", e.reason)).await,
    };
    let key = issue_key(&state.api, who.account.clone(), Scope::Api, alias).await?;
    let full = key.key();
    let r = &key.record;
    let body = html! {
        p.notice.warn role="alert" {
            strong { "Copy this key now: it will not be shown again." }
            " tollgate keeps only a hash of its secret, so nobody can show it to you later. \
              If you lose it, revoke it and create another."
        }
        div.panel {
            dl.details {
                dt { "Alias" } dd { (r.alias) }
                dt { "Scope" } dd { (scope_badge(r.scope)) }
                dt { "Key id" } dd { code { (r.key_id) } }
                dt { "Created" } dd { (fmt::datetime(r.created_at)) }
            }
            label for="new-key" { "Key (" code { "key_id:key_secret" } ")" }
            div.secret {
                code #new-key { (full) }
                button #copy-key type="button" data-copy="#new-key" hidden { "Copy" }
            }
            p.hint { "Send it as " code { "Authorization: Key <key>" } "." }
        }
        p.actions { a.button.primary href=(SECTION) { "Done: back to API keys" } }
    };
    Ok(layout::html(layout::page(&chrome(&who, SECTION), "Key created", body)).into_response())
}

/// The keys page again with the form as it was sent and why it was refused (400); nothing was
/// created.
async fn refused(
    state: &DashboardState,
    who: &CustomerSession,
    form: &CreateForm,
    message: &str,
) -> Result<Response, PageError> {
    let page = keys_page(state, who, None, None, form, Some(message)).await?;
    Ok((StatusCode::BAD_REQUEST, layout::html(page)).into_response())
}

/// `POST /dashboard/keys/{key_id}/revoke`: revokes one of the account's `API` keys (revoking a
/// revoked one changes nothing). The account's `ADMIN` keys are the platform's to revoke: 403,
/// nothing revoked. Any other id, well formed or not, is not found.
pub async fn revoke(
    State(state): State<DashboardState>,
    Path(key_id): Path<String>,
    Post { who, .. }: Post<CustomerSession, serde::de::IgnoredAny>,
) -> Result<Response, PageError> {
    let Ok(id) = ApiKeyId::parse(&key_id) else {
        return Err(ApiError::not_found(format!(
            "account {} has no key with the id {key_id}",
            who.account
        ))
        .into());
    };
    // A key's account and scope never change, so the cached record is enough to refuse.
    if let Some(k) = account_key(&state, &who, &id).await? {
        if k.scope != Scope::Api {
            return Err(PageError::forbidden(format!(
                "The key \u{201c}{}\u{201d} is an ADMIN key: your platform issued it, and only \
                 your platform can revoke it. Nothing was revoked.",
                k.alias
            )));
        }
    }
    admin_keys::revoke(&state.api, id.clone(), Some(&who.account)).await?;
    Ok(Redirect::to(&format!("{SECTION}?revoked={}", encode(id.as_str()))).into_response())
}
