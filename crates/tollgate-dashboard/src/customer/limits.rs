//! Spending limits, `/dashboard/limits`: the account's limits, each with what it counts (the
//! account, or one key), its period and zone, its action, its amount, this period's spend
//! (settled and held) as a bar with the figures written out, when it resets (in its zone and
//! in UTC) and its alert thresholds; a form that creates one, and a change (amount, action,
//! thresholds) and a deletion of each.
//!
//! The forms make the API's own calls ([`tollgate_api::limits::create`], `change`, `delete`,
//! which `POST`, `PUT` and `DELETE /v1/account/spending-limits` make), so the rules (the
//! zone, the amount, the thresholds, the key being a live key of the account) are checked by
//! the same code and refused with the same message, with nothing written; the page reads the
//! limits through the same query as `GET` ([`tollgate_query::limits`]), so its figures are the
//! API's. The form reads its fields as text and leaves every rule to those calls: it only
//! turns the text into the API's body (a USD amount by [`tollgate_api::wire::parse_usd`], the
//! body's own reader; thresholds written `50, 80, 100`).
//!
//! The account is the session's: another account's limit id is unknown here (404), like an
//! id that names nothing.

use super::{add, chrome};
use crate::error::PageError;
use crate::layout::{self, csrf, empty};
use crate::session::{CustomerSession, Post};
use crate::{fmt, DashboardState};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{html, Markup};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::HashMap;
use tollgate_api::error::ApiError;
use tollgate_api::limits::{ActionName, ChangeLimitBody, CreateLimitBody, PeriodName, ScopeName};
use tollgate_core::ids::{ApiKeyId, LimitId};
use tollgate_core::limits::{
    LimitAction, LimitScope, LimitState, Period, DEFAULT_ALERT_AT_PERCENT,
};
use tollgate_core::Nanos;
use tollgate_query::keys::KeyOwner;
use tollgate_store::ApiKeyRecord;

pub fn routes() -> axum::Router<DashboardState> {
    axum::Router::new()
        .route(SECTION, get(list).post(create))
        .route("/dashboard/limits/{limit_id}", post(change))
        .route("/dashboard/limits/{limit_id}/delete", post(delete))
}

const SECTION: &str = "/dashboard/limits";
/// The account's keys the page reads at once (the key picker's choices, the names of the keys
/// limits count); a limit's key beyond them is looked up alone.
const KEYS_READ: usize = 200;

/// The create form, as posted (every field as text).
#[derive(Clone, Deserialize)]
#[serde(default)]
pub struct CreateForm {
    scope: String,
    api_key_id: String,
    period: String,
    timezone: String,
    amount_usd: String,
    action: String,
    alert_at_percent: String,
}

impl Default for CreateForm {
    /// A blank form: the account's limit, per month, in UTC, blocking, the default thresholds.
    fn default() -> Self {
        CreateForm {
            scope: "account".into(),
            api_key_id: String::new(),
            period: "month".into(),
            timezone: "UTC".into(),
            amount_usd: String::new(),
            action: "block".into(),
            alert_at_percent: thresholds_text(&DEFAULT_ALERT_AT_PERCENT),
        }
    }
}

/// A limit's change form, as posted.
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
pub struct ChangeForm {
    amount_usd: String,
    action: String,
    alert_at_percent: String,
}

impl ChangeForm {
    /// The form filled with the limit as it is.
    fn of(l: &LimitState) -> ChangeForm {
        ChangeForm {
            amount_usd: l.limit.amount.to_usd().normalize().to_string(),
            action: l.limit.action.as_str().into(),
            alert_at_percent: thresholds_text(&l.limit.alert_at_percent),
        }
    }
}

/// `50, 80, 100`.
fn thresholds_text(percents: &[u32]) -> String {
    percents
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A choice of the form (`month`, `block`) read as the API reads the same word in a body, or
/// refused naming the API's field.
fn named<T: DeserializeOwned>(field: &str, label: &str, text: &str) -> Result<T, ApiError> {
    serde_json::from_value(serde_json::Value::String(text.trim().to_string())).map_err(|_| {
        ApiError::invalid(
            field,
            format!("{label}: `{}` is not one of the choices.", text.trim()),
        )
    })
}

/// A USD amount typed in the form, read as the API reads `amount_usd`.
fn amount(text: &str) -> Result<Nanos, ApiError> {
    match text.trim() {
        "" => Err(ApiError::invalid(
            "amount_usd",
            "Amount: enter the most the period may spend, in USD, such as 500.00.",
        )),
        t => tollgate_api::wire::parse_usd(t)
            .map_err(|e| ApiError::invalid("amount_usd", format!("Amount: {e}."))),
    }
}

/// Thresholds typed as `50, 80, 100` (commas or spaces between them); empty: none (only the
/// limit being reached is notified). Their range is the API's to check.
fn thresholds(text: &str) -> Result<Vec<u32>, ApiError> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.trim_end_matches('%').parse::<u32>().map_err(|_| {
                ApiError::invalid(
                    "alert_at_percent",
                    format!(
                        "Alert thresholds: `{t}` is not a whole percent; write them as 50, 80, 100."
                    ),
                )
            })
        })
        .collect()
}

/// The API's body for the create form.
fn create_body(form: &CreateForm) -> Result<CreateLimitBody, ApiError> {
    let scope: ScopeName = named("scope", "Counts", &form.scope)?;
    let api_key_id = match (scope, form.api_key_id.trim()) {
        (ScopeName::ApiKey, id) if !id.is_empty() => Some(ApiKeyId::parse(id).map_err(|e| {
            ApiError::invalid("api_key_id", format!("Key: `{id}` is not a key id: {e}."))
        })?),
        // An account's limit counts no key: the key picker's choice does not apply.
        _ => None,
    };
    let timezone = Some(form.timezone.trim())
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    Ok(CreateLimitBody {
        scope,
        api_key_id,
        period: named::<PeriodName>("period", "Period", &form.period)?,
        timezone,
        amount_usd: amount(&form.amount_usd)?,
        action: named::<ActionName>("action", "Action", &form.action)?,
        alert_at_percent: Some(thresholds(&form.alert_at_percent)?),
    })
}

/// The API's body for a change form: every field, as the form shows them.
fn change_body(form: &ChangeForm) -> Result<ChangeLimitBody, ApiError> {
    Ok(ChangeLimitBody {
        amount_usd: Some(amount(&form.amount_usd)?),
        action: Some(named::<ActionName>("action", "Action", &form.action)?),
        alert_at_percent: Some(thresholds(&form.alert_at_percent)?),
    })
}

/// The limit id of a path, if it is one (any other text names no limit: 404, as unknown).
fn limit_id(text: &str) -> Result<LimitId, ApiError> {
    LimitId::parse(text)
        .map_err(|_| ApiError::not_found(format!("spending limit {text} not found")))
}

/// The keys `limits` count, by id: those of `known` (keys already read), and any other looked
/// up alone (through the key cache).
pub async fn key_names(
    state: &DashboardState,
    known: &[ApiKeyRecord],
    limits: &[LimitState],
) -> Result<HashMap<ApiKeyId, ApiKeyRecord>, PageError> {
    let mut by_id = HashMap::new();
    for id in limits.iter().filter_map(|l| l.limit.scope.api_key()) {
        if by_id.contains_key(id) {
            continue;
        }
        let key = match known.iter().find(|k| &k.key_id == id) {
            Some(k) => Some(k.clone()),
            None => state.engine().api_key(id).await?,
        };
        if let Some(k) = key {
            by_id.insert(id.clone(), k);
        }
    }
    Ok(by_id)
}

/// What a limit counts, in words: the account, or a key by its alias and id.
fn scope_text(l: &LimitState, keys: &HashMap<ApiKeyId, ApiKeyRecord>) -> Markup {
    match &l.limit.scope {
        LimitScope::Account => html! { "The whole account" },
        LimitScope::ApiKey(id) => html! {
            "Key \u{201c}" (keys.get(id).map_or("?", |k| k.alias.as_str())) "\u{201d} "
            code.key-id { (id) }
            @if keys.get(id).is_some_and(|k| k.revoked_at.is_some()) { " " span.badge.bad { "revoked" } }
        },
    }
}

/// `daily`, `weekly`, `monthly`.
pub fn every(p: Period) -> &'static str {
    match p {
        Period::Day => "daily",
        Period::Week => "weekly",
        Period::Month => "monthly",
    }
}

fn period_text(p: Period) -> &'static str {
    match p {
        Period::Day => "Per day",
        Period::Week => "Per week (from Monday)",
        Period::Month => "Per month (from the 1st)",
    }
}

fn action_badge(a: LimitAction) -> Markup {
    match a {
        LimitAction::Block => {
            html! { span.badge.warn title="Refuses new requests that would pass it" { "Blocks" } }
        }
        LimitAction::Alert => html! { span.badge title="Only notifies" { "Alerts only" } },
    }
}

/// A time in the limit's zone, and in UTC when the zone is another.
fn zoned(t: tollgate_core::Timestamp, tz: chrono_tz::Tz) -> Markup {
    html! {
        time datetime=(tollgate_core::time::rfc3339(t)) { (fmt::datetime_in(t, tz)) }
        @if tz != chrono_tz::Tz::UTC { br; span.muted.small { (fmt::datetime(t)) } }
    }
}

/// One limit, as a card: what it counts, its period, action and amount, this period's spend as
/// a bar with its figures, when it resets, its thresholds; `actions` below (the change and
/// delete forms, on the customer's page). The figures carry their exact nano-USD
/// (`data-*-nano-usd`) and the reset its RFC 3339 time, as the API answers them.
pub fn limit_card(
    l: &LimitState,
    keys: &HashMap<ApiKeyId, ApiKeyRecord>,
    actions: Option<Markup>,
) -> Result<Markup, PageError> {
    let id = l.limit.id.as_str();
    let mut total = l.spent;
    add(&mut total, l.held)?;
    let tz = l.limit.timezone;
    Ok(html! {
        article.card.limit id=(id) data-limit-id=(id) {
            h3 { (scope_text(l, keys)) }
            p.limit-meta { (period_text(l.limit.period)) ", " (tz.name()) " · " (action_badge(l.limit.action)) }
            p.figures id={ "figures-" (id) } {
                strong { (fmt::usd_cents(total)) } " of " strong { (fmt::usd(l.limit.amount)) }
                " (" (fmt::share(total, l.limit.amount)) ")"
            }
            meter min="0" max=(l.limit.amount.to_usd().normalize()) value=(total.to_usd().normalize())
                aria-labelledby={ "figures-" (id) } {}
            @if l.is_reached() {
                p.notice.error.small {
                    @match l.limit.action {
                        LimitAction::Block => {
                            strong { "Reached." } " New requests it counts are refused until "
                            (fmt::datetime_in(l.resets_at, tz)) "."
                        }
                        LimitAction::Alert => {
                            strong { "Reached." } " It only alerts: requests go on."
                        }
                    }
                }
            }
            dl.details {
                dt { "Spent" }
                dd { span.spent data-nano-usd=(l.spent.0) { (fmt::usd(l.spent)) } " " span.muted.small { "settled this period" } }
                dt { "Held" }
                dd { span.held data-nano-usd=(l.held.0) { (fmt::usd(l.held)) } " " span.muted.small { "by requests running now" } }
                dt { "Amount" }
                dd { span.amount data-nano-usd=(l.limit.amount.0) { (fmt::usd(l.limit.amount)) } }
                dt { "Period" }
                dd.period { "from " (zoned(l.period_start, tz)) }
                dt { "Resets" }
                dd.resets { (zoned(l.resets_at, tz)) }
                dt { "Alerts at" }
                dd.thresholds {
                    @if l.limit.alert_at_percent.is_empty() {
                        span.muted { "no thresholds; only when reached" }
                    }
                    @for (i, p) in l.limit.alert_at_percent.iter().enumerate() {
                        @if i > 0 { ", " }
                        (p) "%"
                        @if l.alerted.contains(p) { " " span.badge.ok.small title="Notified this period" { "sent" } }
                    }
                }
                dt { "Limit id" }
                dd { code { (id) } }
            }
            @if let Some(a) = actions { (a) }
        }
    })
}

/// What the page shows besides the limits: a notice, a form as posted and why it was refused.
#[derive(Default)]
struct View {
    notice: Option<Markup>,
    /// Why a form was refused (shown at the top too).
    error: Option<String>,
    create: Option<CreateForm>,
    create_error: Option<String>,
    /// A limit's change form as posted, and why it was refused.
    change: Option<(LimitId, ChangeForm, String)>,
}

/// A limit's change and delete forms.
fn limit_forms(l: &LimitState, csrf_token: &str, view: &View) -> Markup {
    let id = l.limit.id.as_str();
    let posted = view.change.as_ref().filter(|(c, _, _)| c == &l.limit.id);
    let form = posted.map_or_else(|| ChangeForm::of(l), |(_, f, _)| f.clone());
    let field = |name: &str| format!("{name}-{id}");
    html! {
        details.limit-change open[posted.is_some()] {
            summary { "Change" span.visually-hidden { " this limit" } }
            form method="post" action={ (SECTION) "/" (id) } {
                (csrf(csrf_token))
                @if let Some((_, _, e)) = posted { p.notice.error { (e) } }
                label for=(field("amount")) { "Amount (USD)" }
                input id=(field("amount")) type="text" name="amount_usd" value=(form.amount_usd)
                    inputmode="decimal" required autocomplete="off";
                fieldset.choice {
                    legend { "Action" }
                    label.inline {
                        input type="radio" name="action" value="block" checked[form.action == "block"];
                        " Block new requests that would pass it"
                    }
                    label.inline {
                        input type="radio" name="action" value="alert" checked[form.action != "block"];
                        " Only alert"
                    }
                }
                label for=(field("thresholds")) { "Alert thresholds (% of the amount)" }
                input id=(field("thresholds")) type="text" name="alert_at_percent"
                    value=(form.alert_at_percent) autocomplete="off" inputmode="numeric";
                button.primary type="submit" { "Save the change" }
            }
        }
        form.inline.limit-delete method="post" action={ (SECTION) "/" (id) "/delete" }
            data-confirm="Delete this spending limit? It stops counting and blocking at once." {
            (csrf(csrf_token))
            button.danger.small type="submit" aria-label={ "Delete the limit " (id) } { "Delete" }
        }
    }
}

fn create_form(
    csrf_token: &str,
    keys: &[ApiKeyRecord],
    form: &CreateForm,
    error: Option<&str>,
) -> Markup {
    let mut zones: Vec<&str> = super::range::COMMON_ZONES.to_vec();
    if !form.timezone.is_empty() && !zones.contains(&form.timezone.as_str()) {
        zones.insert(0, &form.timezone);
    }
    let live: Vec<&ApiKeyRecord> = keys.iter().filter(|k| k.revoked_at.is_none()).collect();
    html! {
        form.card #create-limit method="post" action=(SECTION) {
            h2 { "Create a spending limit" }
            @if let Some(e) = error { p.notice.error { (e) } }
            (csrf(csrf_token))
            fieldset.choice {
                legend { "Counts" }
                label.inline {
                    input type="radio" name="scope" value="account" checked[form.scope != "api_key"];
                    " The whole account (every key)"
                }
                label.inline {
                    input type="radio" name="scope" value="api_key" checked[form.scope == "api_key"];
                    " One key's requests"
                }
            }
            label for="api_key_id" { "Key (for one key's limit)" }
            select #api_key_id name="api_key_id" aria-describedby="key-hint" {
                option value="" selected[form.api_key_id.is_empty()] { "Choose a key" }
                @for k in &live {
                    option value=(k.key_id) selected[k.key_id.as_str() == form.api_key_id] {
                        (k.alias) " (" (k.scope.as_str()) ", " (k.key_id) ")"
                    }
                }
            }
            p #key-hint .hint { "The requests submitted with it and the usage reported with it count." }
            label for="period" { "Period" }
            select #period name="period" {
                @for p in Period::ALL {
                    option value=(p.as_str()) selected[form.period == p.as_str()] { (period_text(p)) }
                }
            }
            label for="timezone" { "Time zone" }
            input #timezone type="text" name="timezone" value=(form.timezone) list="limit-zones"
                autocomplete="off" spellcheck="false" aria-describedby="timezone-hint";
            datalist #limit-zones {
                @for z in &zones { option value=(z) {} }
            }
            p #timezone-hint .hint { "Periods start at midnight there (an IANA zone, such as Europe/Berlin)." }
            label for="amount_usd" { "Amount (USD)" }
            input #amount_usd type="text" name="amount_usd" value=(form.amount_usd)
                inputmode="decimal" required autocomplete="off" placeholder="500.00"
                aria-describedby="amount-hint";
            p #amount-hint .hint { "The most the period may spend: what its requests were charged, and what those running hold." }
            fieldset.choice {
                legend { "Action" }
                label.inline {
                    input type="radio" name="action" value="block" checked[form.action != "alert"];
                    " Block: refuse new requests that would pass it"
                }
                label.inline {
                    input type="radio" name="action" value="alert" checked[form.action == "alert"];
                    " Alert: only notify"
                }
            }
            label for="alert_at_percent" { "Alert thresholds (% of the amount)" }
            input #alert_at_percent type="text" name="alert_at_percent" value=(form.alert_at_percent)
                autocomplete="off" inputmode="numeric" aria-describedby="thresholds-hint";
            p #thresholds-hint .hint { "Each 1 to 1000, such as 50, 80, 100. Empty: notified only when the limit is reached." }
            button.primary type="submit" { "Create the limit" }
        }
    }
}

/// The page: a notice, the limits, and the create form.
async fn render(
    state: &DashboardState,
    who: &CustomerSession,
    view: View,
) -> Result<Markup, PageError> {
    let limits = tollgate_query::limits::list(state.engine(), &who.account).await?;
    let keys = tollgate_query::keys::all_keys(
        state.engine(),
        &KeyOwner::Account(who.account.clone()),
        None,
        KEYS_READ,
    )
    .await?
    .items;
    let by_id = key_names(state, &keys, &limits).await?;
    let csrf_token = &who.session.csrf;
    let mut cards = Vec::with_capacity(limits.len());
    for l in &limits {
        cards.push(limit_card(
            l,
            &by_id,
            Some(limit_forms(l, csrf_token, &view)),
        )?);
    }
    let create = view.create.clone().unwrap_or_default();
    let body = html! {
        p.lead {
            "A limit caps what your account, or one of its keys, spends in a day, a week or a month. "
            "A blocking limit refuses new requests that would pass it; running requests always finish. "
            "Every limit tells your platform when its thresholds are reached."
        }
        @if let Some(n) = &view.notice { (n) }
        @if let Some(e) = &view.error { p.notice.error role="alert" { (e) } }
        @if limits.is_empty() {
            (empty("No spending limits", html! {
                "Nothing caps your spending but your balance. Create a limit below: for the whole \
                 account, or for one key."
            }))
        } @else {
            h2 { "Your limits" }
            div.grid-2.limits { @for c in cards { (c) } }
        }
        (create_form(csrf_token, &keys, &create, view.create_error.as_deref()))
    };
    Ok(layout::page(&chrome(who, SECTION), "Spending limits", body))
}

#[derive(Deserialize)]
pub struct DoneQuery {
    #[serde(default)]
    done: Option<String>,
    #[serde(default)]
    limit: Option<String>,
}

/// `GET /dashboard/limits`. `?done=created|changed|deleted&limit=<id>` adds a notice of what
/// a form did, from what is stored (a link naming another limit, or none, shows nothing).
pub async fn list(
    State(state): State<DashboardState>,
    who: CustomerSession,
    Query(q): Query<DoneQuery>,
) -> Result<Response, PageError> {
    let mut view = View::default();
    if let (Some(done), Some(Ok(id))) = (q.done.as_deref(), q.limit.as_deref().map(LimitId::parse))
    {
        let limits = tollgate_query::limits::list(state.engine(), &who.account).await?;
        let exists = limits.iter().any(|l| l.limit.id == id);
        view.notice = match (done, exists) {
            ("created", true) => Some(html! { "The limit " code { (id) } " is created: it counts from now, with what its period has already spent." }),
            ("changed", true) => Some(html! { "The limit " code { (id) } " is changed." }),
            ("deleted", false) => Some(html! { "The limit " code { (id) } " is deleted: it no longer counts or blocks anything." }),
            _ => None,
        }
        .map(|text| html! { p.notice role="status" { (text) } });
    }
    Ok(layout::html(render(&state, &who, view).await?).into_response())
}

/// The page again with why a form was refused (its status: 400, or 404 for a limit the account
/// does not have); nothing was written.
async fn refused(
    state: &DashboardState,
    who: &CustomerSession,
    e: ApiError,
    view: impl FnOnce(String) -> View,
) -> Result<Response, PageError> {
    let (status, message) = crate::console::refusal(e);
    let mut view = view(message.clone());
    view.error = Some(message);
    let page = render(state, who, view).await?;
    Ok((status, layout::html(page)).into_response())
}

fn done(what: &str, id: &LimitId) -> Response {
    Redirect::to(&format!("{SECTION}?done={what}&limit={id}")).into_response()
}

/// `POST /dashboard/limits`: creates a limit of the account.
pub async fn create(
    State(state): State<DashboardState>,
    Post { who, form }: Post<CustomerSession, CreateForm>,
) -> Result<Response, PageError> {
    let created = match create_body(&form) {
        Ok(body) => tollgate_api::limits::create(&state.api, who.account.clone(), body).await,
        Err(e) => Err(e),
    };
    match created {
        Ok(l) => Ok(done("created", &l.limit.id)),
        Err(e) => {
            refused(&state, &who, e, |message| View {
                create: Some(form),
                create_error: Some(message),
                ..View::default()
            })
            .await
        }
    }
}

/// `POST /dashboard/limits/{limit_id}`: changes a limit's amount, action and thresholds.
pub async fn change(
    State(state): State<DashboardState>,
    Path(id): Path<String>,
    Post { who, form }: Post<CustomerSession, ChangeForm>,
) -> Result<Response, PageError> {
    let changed = match (limit_id(&id), change_body(&form)) {
        (Ok(id), Ok(body)) => {
            tollgate_api::limits::change(&state.api, who.account.clone(), id, body).await
        }
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    match changed {
        Ok(l) => Ok(done("changed", &l.limit.id)),
        Err(e) => {
            let id = LimitId::parse(&id).ok();
            refused(&state, &who, e, |message| View {
                change: id.map(|id| (id, form, message)),
                ..View::default()
            })
            .await
        }
    }
}

/// `POST /dashboard/limits/{limit_id}/delete`: deletes a limit.
pub async fn delete(
    State(state): State<DashboardState>,
    Path(id): Path<String>,
    Post { who, .. }: Post<CustomerSession, serde::de::IgnoredAny>,
) -> Result<Response, PageError> {
    let deleted = match limit_id(&id) {
        Ok(id) => tollgate_api::limits::delete(&state.api, who.account.clone(), id.clone())
            .await
            .map(|()| id),
        Err(e) => Err(e),
    };
    match deleted {
        Ok(id) => Ok(done("deleted", &id)),
        Err(e) => refused(&state, &who, e, |_| View::default()).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_becomes_the_apis_body_and_leaves_the_rules_to_it() {
        let form = CreateForm {
            amount_usd: "500".into(),
            ..CreateForm::default()
        };
        let b = create_body(&form).unwrap();
        assert_eq!(
            (b.scope, b.period, b.action),
            (ScopeName::Account, PeriodName::Month, ActionName::Block)
        );
        assert_eq!(b.amount_usd, Nanos(500_000_000_000));
        assert_eq!(b.alert_at_percent, Some(vec![50, 80, 100]));
        assert_eq!(b.timezone.as_deref(), Some("UTC"));
        assert_eq!(b.api_key_id, None);
        // A key chosen for an account's limit does not apply.
        let b = create_body(&CreateForm {
            api_key_id: "k1".into(),
            ..form.clone()
        })
        .unwrap();
        assert_eq!(b.api_key_id, None);
        // Out of range is the API's to refuse: it is passed on as written.
        let b = create_body(&CreateForm {
            alert_at_percent: "0 5000%".into(),
            amount_usd: "0".into(),
            ..form.clone()
        })
        .unwrap();
        assert_eq!(
            (b.alert_at_percent, b.amount_usd),
            (Some(vec![0, 5000]), Nanos::ZERO)
        );
        assert_eq!(
            create_body(&CreateForm {
                alert_at_percent: " ".into(),
                ..form.clone()
            })
            .unwrap()
            .alert_at_percent,
            Some(vec![])
        );
        for (bad, field) in [
            (
                CreateForm {
                    amount_usd: "-1".into(),
                    ..form.clone()
                },
                "amount_usd",
            ),
            (
                CreateForm {
                    amount_usd: "".into(),
                    ..form.clone()
                },
                "amount_usd",
            ),
            (
                CreateForm {
                    period: "year".into(),
                    ..form.clone()
                },
                "period",
            ),
            (
                CreateForm {
                    action: "stop".into(),
                    ..form.clone()
                },
                "action",
            ),
            (
                CreateForm {
                    scope: "team".into(),
                    ..form.clone()
                },
                "scope",
            ),
            (
                CreateForm {
                    alert_at_percent: "50, lots".into(),
                    ..form.clone()
                },
                "alert_at_percent",
            ),
        ] {
            let Err(e) = create_body(&bad) else {
                panic!("{} is refused", bad.amount_usd)
            };
            assert_eq!(e.extra["field"], field, "{}", e.message);
        }
    }
}
