//! Webhooks, `/console/webhooks`: the platform's subscriptions to billing events (URL, event
//! types, description, created), a form that subscribes a URL (its secret shown once, on the
//! page that answers the form, and never again), and deletion; a webhook's deliveries
//! (`/console/webhooks/{webhook_id}`), newest event first, a page at a time on the API's cursor;
//! a delivery's attempts and the body as sent (`.../deliveries/{delivery_id}`), and its
//! redelivery.
//!
//! Every form makes the operator API's own call ([`tollgate_api::webhooks::subscribe`],
//! `unsubscribe`, `queue_again`, which `POST /v1/admin/webhooks`, `DELETE .../{webhook_id}`
//! and `POST .../redeliver` make), so a URL the server's `[webhooks] allowed_hosts` does not
//! name, or an unknown event type, is refused with the API's message and nothing written. The
//! pages read what the API reads ([`tollgate_query::webhooks`], the API's
//! [`tollgate_api::webhooks::live`] and `detail`), and the body shown is the one the
//! dispatcher sends ([`tollgate_api::webhooks::deliver::body`]).

use super::{chrome, done, form_error, refusal, refused, respond};
use crate::error::PageError;
use crate::layout::{self, csrf, empty};
use crate::session::{ConsoleSession, Post};
use crate::{fmt, DashboardState};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{html, Markup};
use serde::Deserialize;
use std::collections::BTreeMap;
use tollgate_api::extract::PathParam;
use tollgate_api::webhooks::{self as api, DeliveryId, WebhookId};
use tollgate_core::events::EventType;
use tollgate_query::webhooks::DeliveryDetail;
use tollgate_query::Cursor;
use tollgate_store::{event_id, DeliveryRecord, DeliveryStatus, WebhookEvents, WebhookRecord};

const SECTION: &str = "/console/webhooks";
/// Webhooks per page (a platform has a few).
const WEBHOOKS_PAGE: usize = 100;
/// Deliveries per page.
const DELIVERIES_PAGE: usize = 50;

pub fn routes() -> axum::Router<DashboardState> {
    axum::Router::new()
        .route(SECTION, get(list).post(create))
        .route("/console/webhooks/{webhook_id}", get(show))
        .route("/console/webhooks/{webhook_id}/delete", post(delete))
        .route(
            "/console/webhooks/{webhook_id}/deliveries/{delivery_id}",
            get(delivery),
        )
        .route(
            "/console/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
            post(redeliver),
        )
}

/// The subscribe form, as posted: the URL, the description, and a checkbox per event type
/// (`events[balance.low]`, `events[*]` for every type).
#[derive(Clone, Default, Deserialize)]
pub struct WebhookForm {
    #[serde(default)]
    url: String,
    #[serde(default)]
    description: String,
    #[serde(flatten)]
    fields: BTreeMap<String, String>,
}

impl WebhookForm {
    /// The event types checked, as the API takes them: `*` first, then the known types in
    /// the documentation's order, then any other name posted (for the API to refuse, named).
    fn events(&self) -> Vec<String> {
        let checked: Vec<&str> = self
            .fields
            .keys()
            .filter_map(|k| k.strip_prefix("events[")?.strip_suffix(']'))
            .collect();
        let mut events: Vec<String> = Vec::new();
        if checked.contains(&"*") {
            events.push("*".into());
        }
        for t in EventType::ALL {
            if checked.contains(&t.as_str()) {
                events.push(t.as_str().into());
            }
        }
        for other in checked {
            if other != "*" && EventType::parse(other).is_none() {
                events.push(other.into());
            }
        }
        events
    }

    fn checks(&self, name: &str) -> bool {
        self.fields.contains_key(&format!("events[{name}]"))
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub struct ListQuery {
    cursor: String,
    done: String,
    webhook: String,
}

fn cursor_of(text: &str) -> Option<Cursor> {
    Some(text.trim()).filter(|c| !c.is_empty()).map(Cursor::new)
}

fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The event types a webhook receives, in words.
fn events_text(events: &WebhookEvents) -> Markup {
    match events {
        WebhookEvents::All => html! { "every type " span.muted { "(*)" } },
        WebhookEvents::Only(types) => html! {
            @for (i, t) in types.iter().enumerate() {
                @if i > 0 { ", " }
                code { (t.as_str()) }
            }
        },
    }
}

fn page_of(webhook_id: &str) -> String {
    format!("{SECTION}/{}", encode(webhook_id))
}

/// What the list page shows besides the list: a notice, a webhook just created (with its
/// secret, this once), the form as posted and why it was refused.
#[derive(Default)]
struct View {
    notice: Option<Markup>,
    created: Option<WebhookRecord>,
    form: Option<WebhookForm>,
    error: Option<String>,
}

fn create_form(csrf_token: &str, form: &WebhookForm, error: Option<&str>) -> Markup {
    html! {
        form.card #create-webhook method="post" action=(SECTION) {
            h2 { "Subscribe a URL" }
            (csrf(csrf_token))
            @if let Some(e) = error { (form_error(e)) }
            label for="url" { "URL" }
            input #url type="url" name="url" value=(form.url) required autocomplete="off"
                spellcheck="false" placeholder="https://billing.example.com/tollgate-events"
                aria-describedby="url-hint";
            p #url-hint .hint {
                "http or https, without a user name or password; on one of the server's "
                code { "[webhooks] allowed_hosts" } " when that is set."
            }
            fieldset.choice.events {
                legend { "Events" }
                label.inline {
                    input type="checkbox" name="events[*]" value="on" checked[form.checks("*")];
                    " All types " span.muted { "(*, those added later too; check it alone)" }
                }
                @for t in EventType::ALL {
                    label.inline {
                        input type="checkbox" name={ "events[" (t.as_str()) "]" } value="on"
                            checked[form.checks(t.as_str())];
                        " " code { (t.as_str()) }
                    }
                }
            }
            label for="description" { "Description (optional)" }
            input #description type="text" name="description" value=(form.description)
                maxlength="500" autocomplete="off";
            button.primary type="submit" { "Subscribe" }
            p.hint { "The signing secret is shown once, on the page that answers this form." }
        }
    }
}

async fn render_list(
    state: &DashboardState,
    who: &ConsoleSession,
    cursor: Option<Cursor>,
    view: View,
) -> Result<Markup, PageError> {
    let page =
        tollgate_query::webhooks::list(state.engine(), cursor.as_ref(), WEBHOOKS_PAGE).await?;
    let csrf_token = &who.session.csrf;
    let form = view.form.clone().unwrap_or_default();
    let body = html! {
        p.lead {
            "Billing events (a low balance, a lock, a purchase, an invoice, a spending limit) are "
            "POSTed to each URL subscribed to their type, signed with its secret, and retried until "
            "a 2xx acknowledges them."
        }
        @if let Some(n) = &view.notice { (n) }
        @if let Some(e) = &view.error { (refused(e, "create-webhook")) }
        @if let Some(w) = &view.created {
            div.card.link-once role="status" {
                h2 { "Webhook " code { (w.webhook_id) } " created" }
                p { "Its signing secret: receivers verify each delivery's " code { "tollgate-signature" }
                    " with it. It is shown only now: copy it into the receiver's configuration." }
                div.secret {
                    code #webhook-secret { (w.secret) }
                    button type="button" data-copy="#webhook-secret" hidden { "Copy" }
                }
                p.hint { a href=(page_of(&w.webhook_id)) { "Its deliveries" } }
            }
        }
        @if page.items.is_empty() && cursor.is_none() {
            (empty("No webhooks", html! {
                "Nothing is told of billing events yet. Subscribe a URL with the form below, or "
                code { "POST /v1/admin/webhooks" } "."
            }))
        } @else {
            div.table-wrap tabindex="0" {
                table #webhooks-table {
                    thead { tr {
                        th scope="col" { "URL" }
                        th scope="col" { "Events" }
                        th scope="col" { "Created" }
                        th scope="col" { span.visually-hidden { "Actions" } }
                    } }
                    tbody {
                        @for w in &page.items {
                            tr data-webhook-id=(w.webhook_id) {
                                td.wrap {
                                    a href=(page_of(&w.webhook_id)) { (w.url) }
                                    br; span.mono.small.muted { (w.webhook_id) }
                                    @if let Some(d) = &w.description { br; span.small { (d) } }
                                }
                                td.wrap { (events_text(&w.events)) }
                                td { (fmt::datetime(w.created_at)) }
                                td { (delete_form(csrf_token, w)) }
                            }
                        }
                    }
                }
            }
            @if cursor.is_some() || page.next_cursor.is_some() {
                nav.pager aria-label="Pages" {
                    @if cursor.is_some() { a href=(SECTION) { "First page" } } @else { span {} }
                    @if let Some(next) = &page.next_cursor {
                        a rel="next" href={ (SECTION) "?cursor=" (encode(next.as_str())) } { "Next" }
                    }
                }
            }
        }
        (create_form(csrf_token, &form, view.error.as_deref()))
    };
    Ok(layout::page(&chrome(who, SECTION), "Webhooks", body))
}

fn delete_form(csrf_token: &str, w: &WebhookRecord) -> Markup {
    html! {
        form.inline method="post" action={ (page_of(&w.webhook_id)) "/delete" }
            data-confirm={ "Delete the webhook to " (w.url) "? Nothing more is sent to it, and its pending deliveries are given up." } {
            (csrf(csrf_token))
            button.danger.small type="submit" aria-label={ "Delete the webhook " (w.webhook_id) } { "Delete" }
        }
    }
}

/// `GET /console/webhooks`. `?done=deleted&webhook=<id>` adds a notice when that webhook is no
/// longer live.
async fn list(
    State(state): State<DashboardState>,
    who: ConsoleSession,
    Query(q): Query<ListQuery>,
) -> Result<Response, PageError> {
    let mut view = View::default();
    if q.done == "deleted" && !q.webhook.is_empty() {
        let live = tollgate_query::webhooks::webhook(state.engine(), &q.webhook).await?;
        if live.is_none() {
            view.notice = Some(done(html! {
                "The webhook " code { (q.webhook) } " is deleted: nothing more is sent to it, and \
                 its pending deliveries are given up."
            }));
        }
    }
    let page = render_list(&state, &who, cursor_of(&q.cursor), view).await?;
    Ok(layout::html(page).into_response())
}

/// `POST /console/webhooks`: subscribes a URL and answers the list with the new webhook's
/// secret, this once (never in a URL, never again).
async fn create(
    State(state): State<DashboardState>,
    Post { who, form }: Post<ConsoleSession, WebhookForm>,
) -> Result<Response, PageError> {
    let description = Some(form.description.trim())
        .filter(|d| !d.is_empty())
        .map(str::to_string);
    let subscribed = api::subscribe(
        &state.api,
        form.url.trim().to_string(),
        &form.events(),
        description,
    )
    .await;
    let (status, view) = match subscribed {
        Ok(w) => (
            StatusCode::CREATED,
            View {
                created: Some(w),
                ..View::default()
            },
        ),
        Err(e) => {
            let (status, message) = refusal(e);
            (
                status,
                View {
                    form: Some(form),
                    error: Some(message),
                    ..View::default()
                },
            )
        }
    };
    Ok(respond(
        status,
        render_list(&state, &who, None, view).await?,
    ))
}

/// `POST /console/webhooks/{webhook_id}/delete`.
async fn delete(
    State(state): State<DashboardState>,
    Path(webhook_id): Path<String>,
    Post { who, .. }: Post<ConsoleSession, serde::de::IgnoredAny>,
) -> Result<Response, PageError> {
    match api::unsubscribe(&state.api, &webhook_id).await {
        Ok(()) => Ok(Redirect::to(&format!(
            "{SECTION}?done=deleted&webhook={}",
            encode(&webhook_id)
        ))
        .into_response()),
        Err(e) => {
            let (status, message) = refusal(e);
            let view = View {
                error: Some(message),
                ..View::default()
            };
            Ok(respond(
                status,
                render_list(&state, &who, None, view).await?,
            ))
        }
    }
}

/// The page of something that is not there (an unknown webhook or delivery): 404.
fn unknown(who: &ConsoleSession, what: Markup) -> Response {
    super::not_found(
        who,
        SECTION,
        html! { (what) " " a href=(SECTION) { "The webhooks" } },
    )
}

fn status_badge(s: DeliveryStatus) -> Markup {
    match s {
        DeliveryStatus::Pending => html! { span.badge.warn { "pending" } },
        DeliveryStatus::Delivered => html! { span.badge.ok { "delivered" } },
        DeliveryStatus::Failed => html! { span.badge.bad { "failed" } },
    }
}

/// The last answer of a delivery: the status code, or why there was none.
fn last_answer(d: &DeliveryRecord) -> Markup {
    html! {
        @match (d.last_status_code, &d.last_error) {
            (Some(code), _) => { "HTTP " (code) }
            (None, Some(e)) => span.small { (e) },
            (None, None) => span.muted { "none yet" },
        }
        @if let (Some(_), Some(e)) = (d.last_status_code, &d.last_error) { br; span.small { (e) } }
    }
}

fn maybe_time(t: Option<tollgate_core::Timestamp>) -> Markup {
    html! {
        @match t {
            Some(t) => time datetime=(tollgate_core::time::rfc3339(t)) { (fmt::utc_seconds(t)) },
            None => span.muted { "–" },
        }
    }
}

fn delivery_path(webhook_id: &str, seq: i64) -> String {
    format!("{}/deliveries/dlv_{seq}", page_of(webhook_id))
}

fn webhook_details(w: &WebhookRecord) -> Markup {
    html! {
        dl.details.panel {
            dt { "URL" } dd { code { (w.url) } }
            dt { "Events" } dd { (events_text(&w.events)) }
            @if let Some(d) = &w.description { dt { "Description" } dd { (d) } }
            dt { "Created" } dd { (fmt::datetime(w.created_at)) }
            dt { "Webhook id" } dd { code { (w.webhook_id) } }
        }
    }
}

/// `GET /console/webhooks/{webhook_id}`: the webhook and its deliveries, newest event first.
async fn show(
    State(state): State<DashboardState>,
    who: ConsoleSession,
    Path(webhook_id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Response, PageError> {
    let Some(w) = tollgate_query::webhooks::webhook(state.engine(), &webhook_id).await? else {
        return Ok(unknown(
            &who,
            html! { "No live webhook has the id " code { (webhook_id) } "." },
        ));
    };
    let cursor = cursor_of(&q.cursor);
    let page = tollgate_query::webhooks::deliveries(
        state.engine(),
        &w.webhook_id,
        cursor.as_ref(),
        DELIVERIES_PAGE,
    )
    .await?;
    let here = page_of(&w.webhook_id);
    let body = html! {
        p.back { a href=(SECTION) { "← Webhooks" } }
        (webhook_details(&w))
        p { (delete_form(&who.session.csrf, &w)) }
        h2 #deliveries { "Deliveries" }
        p.hint { "Newest event first. Times in UTC." }
        @if page.items.is_empty() && cursor.is_none() {
            (empty("No deliveries yet", html! {
                "Events of the types it receives are sent to it from its creation on."
            }))
        } @else {
            div.table-wrap tabindex="0" {
                table #deliveries-table {
                    thead { tr {
                        th scope="col" { "Event" }
                        th scope="col" { "Type" }
                        th scope="col" { "Account" }
                        th scope="col" { "Status" }
                        th.num scope="col" { "Attempts" }
                        th scope="col" { "Last answer" }
                        th scope="col" { "Next attempt" }
                        th scope="col" { "Delivered" }
                    } }
                    tbody {
                        @for d in &page.items {
                            tr data-delivery-id={ "dlv_" (d.event_seq) } {
                                td { a href=(delivery_path(&w.webhook_id, d.event_seq)) { (event_id(d.event_seq)) }
                                     br; span.small.muted { (fmt::utc_seconds(d.event_at)) } }
                                td { code { (d.event_type.as_str()) } }
                                td { a href={ "/console/accounts/" (d.account) } { (d.account) } }
                                td { (status_badge(d.status)) }
                                td.num { (d.attempts) }
                                td.wrap { (last_answer(d)) }
                                td { (maybe_time(d.next_attempt_at)) }
                                td { (maybe_time(d.delivered_at)) }
                            }
                        }
                    }
                }
            }
            @if cursor.is_some() || page.next_cursor.is_some() {
                nav.pager aria-label="Pages" {
                    @if cursor.is_some() { a href=(here) { "Newest" } } @else { span {} }
                    @if let Some(next) = &page.next_cursor {
                        a rel="next" href={ (here) "?cursor=" (encode(next.as_str())) } { "Older" }
                    }
                }
            }
        }
    };
    Ok(layout::html(layout::page(
        &chrome(&who, SECTION),
        "Webhook deliveries",
        body,
    ))
    .into_response())
}

/// The delivery a path names, with its webhook, or the 404 page.
async fn found(
    state: &DashboardState,
    who: &ConsoleSession,
    webhook_id: &str,
    delivery_id: &str,
) -> Result<Result<(WebhookRecord, DeliveryDetail), Response>, PageError> {
    let gone = || {
        unknown(
            who,
            html! {
                "No live webhook " code { (webhook_id) } " has a delivery " code { (delivery_id) } "."
            },
        )
    };
    let (Ok(WebhookId(id)), Ok(DeliveryId(seq))) =
        (WebhookId::parse(webhook_id), DeliveryId::parse(delivery_id))
    else {
        return Ok(Err(gone()));
    };
    let Some(w) = tollgate_query::webhooks::webhook(state.engine(), &id).await? else {
        return Ok(Err(gone()));
    };
    match api::detail(&state.api, &id, seq).await {
        Ok(d) => Ok(Ok((w, d))),
        Err(e) if e.status == StatusCode::NOT_FOUND => Ok(Err(gone())),
        Err(e) => Err(e.into()),
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub struct DeliveryQuery {
    done: String,
}

/// `GET /console/webhooks/{webhook_id}/deliveries/{delivery_id}`: the delivery, its attempts
/// and the body as sent, and a form that queues it again.
async fn delivery(
    State(state): State<DashboardState>,
    who: ConsoleSession,
    Path((webhook_id, delivery_id)): Path<(String, String)>,
    Query(q): Query<DeliveryQuery>,
) -> Result<Response, PageError> {
    let (w, d) = match found(&state, &who, &webhook_id, &delivery_id).await? {
        Ok(found) => found,
        Err(page) => return Ok(page),
    };
    let r = &d.delivery;
    let body = api::deliver::body(&d.event);
    let here = delivery_path(&w.webhook_id, r.event_seq);
    let page = html! {
        p.back { a href=(page_of(&w.webhook_id)) { "← Deliveries to " (w.url) } }
        @if q.done == "redelivered" && r.status == DeliveryStatus::Pending {
            (done(html! {
                "Queued again: it is sent at once, with the same event id, and retried for a new window if it fails."
            }))
        }
        dl.details.panel {
            dt { "Event" } dd { code { (event_id(r.event_seq)) } " " code { (r.event_type.as_str()) } }
            dt { "Account" } dd { a href={ "/console/accounts/" (r.account) } { (r.account) } }
            dt { "Recorded" } dd { (maybe_time(Some(r.event_at))) " UTC" }
            dt { "Status" } dd #delivery-status { (status_badge(r.status)) }
            dt { "Attempts" } dd #delivery-attempts { (r.attempts) }
            dt { "Last answer" } dd { (last_answer(r)) }
            dt { "Next attempt" } dd { (maybe_time(r.next_attempt_at)) }
            dt { "Delivered" } dd { (maybe_time(r.delivered_at)) }
            dt { "Webhook" } dd { a href=(page_of(&w.webhook_id)) { code { (w.webhook_id) } } }
        }
        form.card #redeliver method="post" action={ (here) "/redeliver" } {
            (csrf(&who.session.csrf))
            p { "Sends the event again, due now, whatever its status: the same body and id "
                "(receivers drop what they have seen), retried with backoff for a new window." }
            button type="submit" { "Redeliver" }
        }
        h2 { "Attempts" }
        @if d.attempts.is_empty() {
            (empty("Not tried yet", html! { "The dispatcher sends it as soon as it is due." }))
        } @else {
            div.table-wrap tabindex="0" {
                table #attempts-table {
                    thead { tr {
                        th.num scope="col" { "#" }
                        th scope="col" { "At (UTC)" }
                        th scope="col" { "Answer" }
                        th.num scope="col" { "Took" }
                    } }
                    tbody {
                        @for a in &d.attempts {
                            tr {
                                td.num { (a.n) }
                                td { (maybe_time(Some(a.at))) }
                                td.wrap {
                                    @if let Some(code) = a.status_code { "HTTP " (code) }
                                    @if let Some(e) = &a.error { @if a.status_code.is_some() { br; } span.small { (e) } }
                                }
                                td.num { (fmt::duration_ms(a.duration_ms)) }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Body as sent" }
        p.hint { "Each attempt POSTs these bytes, signed in " code { "tollgate-signature" } "." }
        pre.body tabindex="0" { code #delivery-body { (String::from_utf8_lossy(&body)) } }
    };
    Ok(layout::html(layout::page(
        &chrome(&who, SECTION),
        "Webhook delivery",
        page,
    ))
    .into_response())
}

/// `POST .../deliveries/{delivery_id}/redeliver`: queues the delivery again, due now.
async fn redeliver(
    State(state): State<DashboardState>,
    Path((webhook_id, delivery_id)): Path<(String, String)>,
    Post { who, .. }: Post<ConsoleSession, serde::de::IgnoredAny>,
) -> Result<Response, PageError> {
    let (w, d) = match found(&state, &who, &webhook_id, &delivery_id).await? {
        Ok(found) => found,
        Err(page) => return Ok(page),
    };
    let seq = d.delivery.event_seq;
    match api::queue_again(&state.api, &w.webhook_id, seq).await {
        Ok(_) => Ok(Redirect::to(&format!(
            "{}?done=redelivered",
            delivery_path(&w.webhook_id, seq)
        ))
        .into_response()),
        Err(e) => Err(e.into()),
    }
}
