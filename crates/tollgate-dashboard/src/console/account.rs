//! An account, `GET /console/accounts/{username}`: what its customer sees of it (balance,
//! available, held, owed, the lock and why, the concurrency limit and where it comes from, the
//! spend of this month and the last, the credits left and when they expire, the latest
//! invoices), and what only an operator does with it:
//!
//! - add credits, a paid purchase or a free grant (`POST .../credits`): the form carries a
//!   purchase id drawn when the page was rendered, so the same form sent twice credits once
//!   (the engine's idempotency on `(username, purchase_id)`);
//! - read its terms (in force and scheduled) and its own prices, and change its percent
//!   discount, concurrency limit and billing mode (`POST .../terms`): the operator API's
//!   `PUT .../pricing` change, through the same function;
//! - mint a one-time sign-in link to the customer's dashboard (`POST .../sign-in-link`), shown
//!   once, on the configured public URL (without one, as a path to put the address before);
//! - sign every dashboard session of the account out (`POST .../end-sessions`), those a
//!   sign-in link opened included, which only the customer could end otherwise;
//! - list its spending limits with this period's spend (read-only: operators change them
//!   through the API);
//! - list its keys, every scope and state, and revoke one (`POST .../keys/{key_id}/revoke`);
//! - see its payment profile at the provider (customer, saved card, the auto top-up rule and
//!   where it stands) and its payments, refund one (`POST .../purchases/{purchase_id}/refund`,
//!   the operator API's own call, [`tollgate_api::payments::refunds::refund`]: the form carries
//!   a refund id drawn when the page was rendered, so the same form sent twice refunds once),
//!   and lift a disputed payment's lock (`POST .../unlock`,
//!   [`tollgate_api::admin::lift_dispute_lock`]);
//! - see its live serverless runners, when it has any ([`super::serverless`]).

use super::{chrome, done, form_error, invalid, parse_time, refusal, refused, respond};
use crate::customer::overview::between;
use crate::error::PageError;
use crate::layout::{self, csrf, empty, stat};
use crate::session::{ConsoleSession, Post};
use crate::{fmt, DashboardState};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{html, Markup};
use rust_decimal::Decimal;
use serde::de::IgnoredAny;
use serde::Deserialize;
use tollgate_api::admin::PurchaseKind;
use tollgate_api::auth::random_token;
use tollgate_api::error::ApiError;
use tollgate_core::ids::{AccountId, ApiKeyId, PurchaseId};
use tollgate_core::machine::{LockReason, PurchaseRecord};
use tollgate_core::terms::{BillingMode, Terms, TermsChange};
use tollgate_core::time::{month_start, next_month_start, previous_month_start};
use tollgate_core::{Nanos, Timestamp};
use tollgate_query::invoices::InvoiceFilter;
use tollgate_query::keys::KeyOwner;
use tollgate_query::QueryError;
use tollgate_store::{AccountRow, PurchaseEntry};

pub fn routes() -> axum::Router<DashboardState> {
    axum::Router::new()
        .route("/console/accounts/{username}", get(show))
        .route("/console/accounts/{username}/credits", post(add_credits))
        .route("/console/accounts/{username}/terms", post(change_terms))
        .route(
            "/console/accounts/{username}/sign-in-link",
            post(sign_in_link),
        )
        .route(
            "/console/accounts/{username}/end-sessions",
            post(end_sessions),
        )
        .route(
            "/console/accounts/{username}/keys/{key_id}/revoke",
            post(revoke_key),
        )
        .route("/console/accounts/{username}/unlock", post(unlock))
        .route(
            "/console/accounts/{username}/purchases/{purchase_id}/refund",
            post(refund),
        )
}

/// Keys listed on the page (an account with more is told so).
const KEYS_SHOWN: usize = 200;
/// Payments listed on the page, newest first.
const RECENT_PAYMENTS: usize = 20;
/// Invoices listed on the page (the invoices page has the rest).
const RECENT_INVOICES: usize = 5;

/// The add-credits form, as posted (every field as text).
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
pub struct CreditsForm {
    purchase_id: String,
    amount_usd: String,
    kind: String,
    expires_on: String,
}

impl CreditsForm {
    /// A blank form with a purchase id of its own.
    fn fresh() -> CreditsForm {
        CreditsForm {
            purchase_id: new_purchase_id(),
            kind: "paid".into(),
            ..CreditsForm::default()
        }
    }
}

/// A purchase id for a rendered form: `console-` and 32 random hex digits.
fn new_purchase_id() -> String {
    format!("console-{}", &random_token()[..32])
}

/// The terms form, as posted.
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
pub struct TermsForm {
    percent_discount: String,
    concurrency_limit: String,
    billing: String,
}

impl TermsForm {
    /// The form filled with the terms in force.
    fn of(t: &Terms) -> TermsForm {
        TermsForm {
            percent_discount: t
                .discounts
                .percent_discount
                .map(|p| p.normalize().to_string())
                .unwrap_or_default(),
            concurrency_limit: t
                .concurrency_override
                .map(|n| n.to_string())
                .unwrap_or_default(),
            billing: t.billing.as_str().into(),
        }
    }
}

/// What a form that redirected here did (`?done=...`). The query string is anyone's to write,
/// so a notice never states a figure or a fact from it: it names what to look up (a purchase by
/// when it was made and its id, a key), and the notice shows what is stored, or nothing when
/// there is no such thing.
#[derive(Default, Deserialize)]
pub struct DoneQuery {
    done: Option<String>,
    /// The purchase a credits form made (or had made): its id and its `created_at` (ms).
    purchase: Option<String>,
    at: Option<String>,
    key: Option<String>,
    /// The refund a refund form made: its id.
    refund: Option<String>,
}

/// The purchase a redirect names, as stored (`None`: the account made no such purchase then).
async fn named_purchase(
    state: &DashboardState,
    account: &AccountId,
    q: &DoneQuery,
) -> Result<Option<PurchaseEntry>, PageError> {
    let (Some(id), Some(at)) = (q.purchase.as_deref(), q.at.as_deref()) else {
        return Ok(None);
    };
    let (Ok(id), Ok(at)) = (PurchaseId::parse(id), at.parse::<i64>()) else {
        return Ok(None);
    };
    Ok(
        tollgate_query::payments::purchase(state.engine(), account.clone(), Timestamp(at), id)
            .await?,
    )
}

/// The notice of what a form did, from what is stored.
async fn notice(
    state: &DashboardState,
    account: &AccountId,
    q: &DoneQuery,
) -> Result<Option<Markup>, PageError> {
    let Some(done_what) = q.done.as_deref() else {
        return Ok(None);
    };
    let credits = |p: &PurchaseEntry| {
        html! {
            strong { (fmt::usd(p.amount)) } " of "
            @if p.paid { "paid credits" } @else { "free credits (a grant)" }
        }
    };
    Ok(match done_what {
        "credited" => named_purchase(state, account, q).await?.map(|p| {
            done(html! {
                "Added " (credits(&p)) " (purchase " code { (p.purchase_id) } ", "
                (fmt::datetime(p.created_at)) "). The figures below include them."
            })
        }),
        "replayed" => named_purchase(state, account, q).await?.map(|p| {
            done(html! {
                "This form had already been sent: its " (credits(&p)) " (purchase "
                code { (p.purchase_id) } ") were added once, not twice."
            })
        }),
        "terms" => Some(done(html! {
            "The terms are changed, in force from now (see Terms below)."
        })),
        "unchanged" => Some(done(html! {
            "Nothing changed: the form held the terms already in force."
        })),
        "refunded" | "refund_replayed" => {
            let Some(Ok(id)) = q.refund.as_deref().map(PurchaseId::parse) else {
                return Ok(None);
            };
            let (a, rid) = (account.clone(), id.clone());
            match state.engine().read(move |r| r.refund(&a, &rid)).await? {
                Some(r) => Some(done(html! {
                    @if done_what == "refund_replayed" {
                        "This refund form had already been sent: refund " code { (r.refund_id) }
                        " was made once, not twice. "
                    } @else {
                        "Refund " code { (r.refund_id) } " of purchase " code { (r.purchase_id) } ": "
                    }
                    strong { (fmt::usd(r.amount)) } " refunded"
                    @if let Some(re) = &r.provider_reference { " at the payment provider (" code { (re) } ")" }
                    ", " (fmt::usd(r.taken)) " taken from the balance (then "
                    (fmt::usd(r.balance_after)) ")"
                    @if r.taken > Nanos::ZERO { ", with a credit note" }
                    "."
                })),
                None => None,
            }
        }
        "unlocked" => {
            let row = tollgate_query::account(state.engine(), account).await?;
            (row.state.disputed_since.is_none()).then(|| {
                done(html! {
                    "The dispute lock is lifted: "
                    @match row.state.lock_reason() {
                        Some(LockReason::ExhaustedBalance) => {
                            "the account is still locked because its balance is used up, which \
                             credits lift."
                        }
                        _ => "new requests are accepted.",
                    }
                })
            })
        }
        "revoked" => {
            let Some(Ok(id)) = q.key.as_deref().map(ApiKeyId::parse) else {
                return Ok(None);
            };
            state
                .engine()
                .api_key(&id)
                .await?
                .filter(|k| k.account.as_ref() == Some(account))
                .and_then(|k| k.revoked_at.map(|at| (k, at)))
                .map(|(k, at)| {
                    done(html! {
                        "Key " code { (k.key_id) } " (" (k.alias) ") is revoked since "
                        (fmt::datetime(at)) ": calls with it are refused (401)."
                    })
                })
        }
        _ => None,
    })
}

/// What the page shows besides the account: a notice, a minted link, forms as posted and why
/// they were refused.
#[derive(Default)]
struct View {
    notice: Option<Markup>,
    /// A sign-in link just minted: shown this once.
    link: Option<ShownLink>,
    link_error: Option<String>,
    sessions_error: Option<String>,
    credits: Option<CreditsForm>,
    credits_error: Option<String>,
    terms: Option<TermsForm>,
    terms_error: Option<String>,
    keys_error: Option<String>,
    /// The unlock form's reason as posted, and why it was refused.
    unlock_reason: Option<String>,
    unlock_error: Option<String>,
    /// A refund form refused: the purchase, the form as posted, and why.
    refund: Option<super::payments::RefusedRefund>,
}

/// A sign-in link as the page shows it.
struct ShownLink {
    /// The whole link on the public URL, or the path alone when none is configured.
    text: String,
    /// Whether `text` is a whole link (else a path to put the address before).
    whole: bool,
    expires_at: Timestamp,
}

/// The account `username` names, if it exists.
async fn lookup(state: &DashboardState, username: &str) -> Result<Option<AccountRow>, PageError> {
    let Ok(id) = AccountId::parse(username) else {
        return Ok(None);
    };
    match tollgate_query::account(state.engine(), &id).await {
        Ok(row) => Ok(Some(row)),
        Err(QueryError::UnknownAccount(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The page for a username no account has.
fn unknown(who: &ConsoleSession, username: &str) -> Response {
    super::not_found(
        who,
        "/console",
        html! {
            "No account is named " code { (username) } ". "
            a href="/console" { "Search the accounts" } " by the start of their username."
        },
    )
}

/// The account's page.
fn page_of(row: &AccountRow) -> String {
    format!("/console/accounts/{}", row.state.credit.id)
}

async fn show(
    State(state): State<DashboardState>,
    who: ConsoleSession,
    Path(username): Path<String>,
    Query(q): Query<DoneQuery>,
) -> Result<Response, PageError> {
    let Some(row) = lookup(&state, &username).await? else {
        return Ok(unknown(&who, &username));
    };
    let view = View {
        notice: notice(&state, &row.state.credit.id, &q).await?,
        ..View::default()
    };
    Ok(respond(
        StatusCode::OK,
        render(&state, &who, &row, view).await?,
    ))
}

/// Adds the credits the form describes, by the operator API's own call.
async fn credit(
    state: &DashboardState,
    account: AccountId,
    form: &CreditsForm,
) -> Result<(PurchaseRecord, bool), ApiError> {
    let purchase_id = PurchaseId::parse(form.purchase_id.trim()).map_err(|_| {
        invalid("This form has no purchase id: reload the page and fill it in again.")
    })?;
    let amount = form.amount_usd.trim();
    if amount.is_empty() {
        return Err(invalid(
            "Amount: enter the credits to add in USD, such as 25.00.",
        ));
    }
    let amount =
        tollgate_api::wire::parse_usd(amount).map_err(|e| invalid(format!("Amount: {e}.")))?;
    let kind = match form.kind.as_str() {
        "paid" => PurchaseKind::Paid,
        "free" => PurchaseKind::Free,
        other => {
            return Err(invalid(format!(
                "Kind: `{other}` is neither a paid purchase nor a free grant."
            )))
        }
    };
    let expires_at = parse_time("Expires on", &form.expires_on)?;
    tollgate_api::admin::add_credits(&state.api, account, purchase_id, amount, kind, expires_at)
        .await
}

async fn add_credits(
    State(state): State<DashboardState>,
    Path(username): Path<String>,
    Post { who, form }: Post<ConsoleSession, CreditsForm>,
) -> Result<Response, PageError> {
    let Some(row) = lookup(&state, &username).await? else {
        return Ok(unknown(&who, &username));
    };
    let here = page_of(&row);
    match credit(&state, row.state.credit.id.clone(), &form).await {
        Ok((p, replayed)) => Ok(Redirect::to(&format!(
            "{here}?done={}&purchase={}&at={}",
            if replayed { "replayed" } else { "credited" },
            p.purchase_id,
            p.created_at.0
        ))
        .into_response()),
        Err(e) => {
            let (status, message) = refusal(e);
            let mut form = form;
            // The id was used with other figures: a corrected form is a new purchase.
            if status == StatusCode::CONFLICT {
                form.purchase_id = new_purchase_id();
            }
            let view = View {
                credits: Some(form),
                credits_error: Some(message),
                ..View::default()
            };
            Ok(respond(status, render(&state, &who, &row, view).await?))
        }
    }
}

/// The change the terms form asks for against the terms in force at `now`: only the fields
/// that differ (`None` when none does). A percent discount left empty is none (0%); a
/// concurrency limit left empty is the tier table's.
fn terms_change(in_force: &Terms, form: &TermsForm) -> Result<Option<TermsChange>, ApiError> {
    let percent = match form.percent_discount.trim() {
        "" => Decimal::ZERO,
        t => tollgate_core::decimal::parse(t)
            .map_err(|e| invalid(format!("Percent discount: `{t}`: {e}.")))?,
    };
    let concurrency = match form.concurrency_limit.trim() {
        "" => None,
        t => Some(t.parse::<u32>().map_err(|_| {
            invalid(format!(
                "Concurrency limit: `{t}` is not a whole number of requests; leave it empty for \
                 the tier table."
            ))
        })?),
    };
    let billing = match form.billing.as_str() {
        "prepaid" => BillingMode::Prepaid,
        "invoice" => BillingMode::Invoice,
        other => {
            return Err(invalid(format!(
                "Billing: `{other}` is neither prepaid nor invoice."
            )))
        }
    };
    let mut change = TermsChange::default();
    let now_percent = in_force.discounts.percent_discount.unwrap_or_default();
    if percent.normalize() != now_percent.normalize() {
        change.percent_discount = Some(percent);
    }
    if concurrency != in_force.concurrency_override {
        change.concurrency_limit = Some(concurrency);
    }
    if billing != in_force.billing {
        change.billing = Some(billing);
    }
    Ok(change.sets_terms().then_some(change))
}

async fn change_terms(
    State(state): State<DashboardState>,
    Path(username): Path<String>,
    Post { who, form }: Post<ConsoleSession, TermsForm>,
) -> Result<Response, PageError> {
    let Some(row) = lookup(&state, &username).await? else {
        return Ok(unknown(&who, &username));
    };
    let here = page_of(&row);
    let in_force = row.state.terms_at(state.engine().now());
    let result = match terms_change(&in_force, &form) {
        Ok(None) => Ok(false),
        Ok(Some(change)) => {
            tollgate_api::admin::set_terms(&state.api, &row.state.credit.id, change)
                .await
                .map(|_| true)
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(true) => Ok(Redirect::to(&format!("{here}?done=terms")).into_response()),
        Ok(false) => Ok(Redirect::to(&format!("{here}?done=unchanged")).into_response()),
        Err(e) => {
            let (status, message) = refusal(e);
            let view = View {
                terms: Some(form),
                terms_error: Some(message),
                ..View::default()
            };
            Ok(respond(status, render(&state, &who, &row, view).await?))
        }
    }
}

/// A sign-in link's `path` as the page shows it: on the configured public URL, the address
/// customers reach tollgate at; without one, the path alone. Never on the request's `Host`:
/// behind a TLS proxy the server is reached over http, and a link built on that would send
/// its one-time token in clear.
fn shown_link(state: &DashboardState, path: &str, expires_at: Timestamp) -> ShownLink {
    match &state.config.public_url {
        Some(base) => ShownLink {
            text: format!("{base}{path}"),
            whole: true,
            expires_at,
        },
        None => ShownLink {
            text: path.to_string(),
            whole: false,
            expires_at,
        },
    }
}

/// Mints a sign-in link and shows it on the page, once (it is not kept anywhere it could be
/// shown again).
async fn sign_in_link(
    State(state): State<DashboardState>,
    Path(username): Path<String>,
    Post { who, .. }: Post<ConsoleSession, IgnoredAny>,
) -> Result<Response, PageError> {
    let Some(row) = lookup(&state, &username).await? else {
        return Ok(unknown(&who, &username));
    };
    let (status, view) =
        match tollgate_api::portal::mint_link(&state.api, row.state.credit.id.clone()).await {
            Ok(link) => (
                StatusCode::OK,
                View {
                    link: Some(shown_link(&state, &link.url, link.expires_at)),
                    ..View::default()
                },
            ),
            Err(e) => {
                let (status, message) = refusal(e);
                (
                    status,
                    View {
                        link_error: Some(message),
                        ..View::default()
                    },
                )
            }
        };
    Ok(respond(status, render(&state, &who, &row, view).await?))
}

/// Signs every dashboard session of the account out at once, however it signed in, and says
/// how many were signed in.
async fn end_sessions(
    State(state): State<DashboardState>,
    Path(username): Path<String>,
    Post { who, .. }: Post<ConsoleSession, IgnoredAny>,
) -> Result<Response, PageError> {
    let Some(row) = lookup(&state, &username).await? else {
        return Ok(unknown(&who, &username));
    };
    let account = row.state.credit.id.clone();
    let ended = tollgate_api::portal::end_sessions(&state.api, account.clone()).await;
    let (status, view) = match ended {
        Ok(n) => (
            StatusCode::OK,
            View {
                notice: Some(done(html! {
                    @if n == 0 {
                        "No dashboard session of " (account) " was signed in: nothing to end."
                    } @else {
                        "Signed out " strong { (n) " dashboard session" @if n != 1 { "s" } }
                        " of " (account) ": whoever used "
                        @if n == 1 { "it" } @else { "them" }
                        " must sign in again. The account's keys still work."
                    }
                })),
                ..View::default()
            },
        ),
        Err(e) => {
            let (status, message) = refusal(e);
            (
                status,
                View {
                    sessions_error: Some(message),
                    ..View::default()
                },
            )
        }
    };
    Ok(respond(status, render(&state, &who, &row, view).await?))
}

async fn revoke_key(
    State(state): State<DashboardState>,
    Path((username, key_id)): Path<(String, String)>,
    Post { who, .. }: Post<ConsoleSession, IgnoredAny>,
) -> Result<Response, PageError> {
    let Some(row) = lookup(&state, &username).await? else {
        return Ok(unknown(&who, &username));
    };
    let account = &row.state.credit.id;
    let result = match ApiKeyId::parse(&key_id) {
        Ok(id) => tollgate_api::admin_keys::revoke(&state.api, id.clone(), Some(account))
            .await
            .map(|()| id),
        Err(_) => Err(ApiError::not_found(format!(
            "account {account} has no key with the id {key_id}"
        ))),
    };
    match result {
        Ok(id) => {
            Ok(Redirect::to(&format!("{}?done=revoked&key={id}", page_of(&row))).into_response())
        }
        Err(e) => {
            let (status, message) = refusal(e);
            let view = View {
                keys_error: Some(message),
                ..View::default()
            };
            Ok(respond(status, render(&state, &who, &row, view).await?))
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub struct UnlockForm {
    reason: String,
}

/// Lifts the account's dispute lock by the operator API's own call (the reason is checked
/// there: 1 to 500 characters).
async fn unlock(
    State(state): State<DashboardState>,
    Path(username): Path<String>,
    Post { who, form }: Post<ConsoleSession, UnlockForm>,
) -> Result<Response, PageError> {
    let Some(row) = lookup(&state, &username).await? else {
        return Ok(unknown(&who, &username));
    };
    let account = row.state.credit.id.clone();
    let reason = form.reason.trim().to_string();
    match tollgate_api::admin::lift_dispute_lock(&state.api, &account, reason).await {
        Ok(_) => {
            Ok(Redirect::to(&format!("{}?done=unlocked#payments", page_of(&row))).into_response())
        }
        Err(e) => {
            let (status, message) = refusal(e);
            let view = View {
                unlock_reason: Some(form.reason),
                unlock_error: Some(message),
                ..View::default()
            };
            Ok(respond(status, render(&state, &who, &row, view).await?))
        }
    }
}

/// Refunds a purchase by the operator API's own call: at the provider first for a purchase
/// paid through it, else from what is left of its credits; a credit note for what it took.
async fn refund(
    State(state): State<DashboardState>,
    Path((username, purchase_id)): Path<(String, String)>,
    Post { who, form }: Post<ConsoleSession, super::payments::RefundForm>,
) -> Result<Response, PageError> {
    let Some(row) = lookup(&state, &username).await? else {
        return Ok(unknown(&who, &username));
    };
    let account = row.state.credit.id.clone();
    let purchase = PurchaseId::parse(&purchase_id).map_err(|_| {
        ApiError::not_found(format!("account {account} has no purchase {purchase_id}"))
    });
    let refund_id = PurchaseId::parse(form.refund_id.trim())
        .map_err(|_| invalid("This form has no refund id: reload the page and fill it in again."));
    let amount = match form.amount_usd.trim() {
        "" => Err(invalid(
            "Amount: enter what to refund in USD, such as 10.00.",
        )),
        t => tollgate_api::wire::parse_usd(t).map_err(|e| invalid(format!("Amount: {e}."))),
    };
    let result = match (purchase, refund_id, amount) {
        (Ok(p), Ok(r), Ok(a)) => {
            tollgate_api::payments::refunds::refund(&state.api, account, p, r, a).await
        }
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(e),
    };
    match result {
        Ok((r, replayed)) => Ok(Redirect::to(&format!(
            "{}?done={}&refund={}#payments",
            page_of(&row),
            if replayed {
                "refund_replayed"
            } else {
                "refunded"
            },
            form_urlencoded::byte_serialize(r.refund_id.as_str().as_bytes()).collect::<String>()
        ))
        .into_response()),
        Err(e) => {
            let (status, message) = refusal(e);
            let mut form = form;
            // The id was used for another refund: a corrected form is a new refund.
            if status == StatusCode::CONFLICT {
                form.refund_id = super::payments::new_refund_id();
            }
            let view = View {
                refund: PurchaseId::parse(&purchase_id)
                    .ok()
                    .map(|p| (p, form, message)),
                ..View::default()
            };
            Ok(respond(status, render(&state, &who, &row, view).await?))
        }
    }
}

/// When a terms version takes effect, in words.
fn since(from: Option<Timestamp>) -> String {
    match from {
        None | Some(Timestamp(0)) => "the account's start".into(),
        Some(t) => fmt::datetime(t),
    }
}

fn terms_row(label: &str, from: Option<Timestamp>, t: &Terms, limit_now: u32) -> Markup {
    html! {
        tr {
            th scope="row" { (label) br; span.muted { "from " (since(from)) } }
            td.num {
                @match t.discounts.percent_discount {
                    Some(p) => (fmt::percent(p)),
                    None => span.muted { "none" },
                }
            }
            td {
                @if t.discounts.volume_tiers.is_empty() { span.muted { "none" } }
                @for v in &t.discounts.volume_tiers {
                    "from " (fmt::usd_exact(v.from_usd)) ": " (fmt::percent(v.percent)) br;
                }
            }
            td.num {
                @match t.concurrency_override {
                    Some(n) => { (n) " " span.muted { "(contract)" } },
                    None => { span.muted { "tier table (now " (limit_now) ")" } },
                }
            }
            td.num { (fmt::usd(t.lock_threshold)) }
            td.num {
                @match t.low_balance {
                    Some(n) => (fmt::usd(n)),
                    None => span.muted { "none" },
                }
            }
            td { (super::accounts::billing_text(t.billing)) }
            td {
                @if t.machine_prices.is_empty() { span.muted { "the catalog's" } }
                @for (m, p) in &t.machine_prices {
                    code { (m) } " " (fmt::usd_exact(*p)) "/s" br;
                }
            }
        }
    }
}

async fn render(
    state: &DashboardState,
    who: &ConsoleSession,
    row: &AccountRow,
    view: View,
) -> Result<Markup, PageError> {
    let engine = state.engine();
    let now = engine.now();
    let catalog = engine.catalog();
    let s = &row.state;
    let account = &s.credit.id;
    let here = format!("/console/accounts/{account}");

    let this_month = month_start(now);
    let (_, month) = crate::customer::spend(
        state,
        account,
        &between(this_month, next_month_start(now)),
        Vec::new(),
        crate::customer::Of::All,
    )
    .await?;
    let (_, last_month) = crate::customer::spend(
        state,
        account,
        &between(previous_month_start(now), this_month),
        Vec::new(),
        crate::customer::Of::All,
    )
    .await?;
    let keys = tollgate_query::keys::all_keys(
        engine,
        &KeyOwner::Account(account.clone()),
        None,
        KEYS_SHOWN,
    )
    .await?;
    let invoices = tollgate_query::invoices::list(
        engine,
        InvoiceFilter {
            account: Some(account.clone()),
            ..InvoiceFilter::default()
        },
        None,
        RECENT_INVOICES,
    )
    .await?;

    let payments =
        tollgate_query::payments::list(engine, account.clone(), None, RECENT_PAYMENTS).await?;
    let runners = super::serverless::live_runners(state, account, now).await?;
    let limits = tollgate_query::limits::rolled(s, now);
    let limit_keys = crate::customer::limits::key_names(state, &keys.items, &limits).await?;
    let mut limit_cards = Vec::with_capacity(limits.len());
    for l in &limits {
        limit_cards.push(crate::customer::limits::limit_card(l, &limit_keys, None)?);
    }

    let balance = s.credit.balance;
    let owed = tollgate_api::platform::account::owed(balance)
        .map_err(|e| ApiError::server(format!("account {account}: owed: {e}")))?;
    let limit = s.concurrency_limit(&catalog);
    let in_force_since = s
        .terms
        .versions()
        .iter()
        .rev()
        .find(|v| v.effective_from <= now)
        .map(|v| v.effective_from);
    let in_force = s.terms_at(now);
    let scheduled = s.terms.after(now);
    // A change from the form takes effect now: refused while a later version is scheduled.
    let terms_blocked_until = s.terms.may_take_effect(now).err();
    let own_prices: Vec<_> = catalog
        .versions
        .iter()
        .filter(|((_, a), _)| a.as_ref() == Some(account))
        .flat_map(|((endpoint, _), versions)| versions.iter().map(move |v| (endpoint, v)))
        .collect();
    let credits_form = view.credits.unwrap_or_else(CreditsForm::fresh);
    let terms_form = view.terms.unwrap_or_else(|| TermsForm::of(&in_force));

    let body = html! {
        p.lead {
            (super::accounts::billing_text(row.billing)) " billing · created " (fmt::date(row.created_at))
            " · " a href="/console" { "All accounts" }
        }
        @if let Some(n) = &view.notice { (n) }
        @if let Some(e) = &view.credits_error { (refused(e, "add-credits")) }
        @if let Some(e) = &view.terms_error { (refused(e, "change-terms")) }
        @if let Some(e) = &view.link_error { (refused(e, "sign-in-form")) }
        @if let Some(e) = &view.sessions_error { (refused(e, "end-sessions")) }
        @if let Some(e) = &view.keys_error { (refused(e, "keys")) }
        @if let Some(e) = &view.unlock_error { (refused(e, "unlock")) }
        @if let Some((_, _, e)) = &view.refund { (refused(e, "payments-table")) }
        @if let Some(link) = &view.link {
            div.card.link-once role="status" {
                h2 { "Sign-in link for " (account) }
                p { "It signs its holder in to " (account) "'s billing dashboard once, until "
                    strong { (fmt::datetime(link.expires_at)) } ". It is shown only now: copy it and hand it to the customer." }
                div.secret {
                    code #sign-in-link { (link.text) }
                    button type="button" data-copy="#sign-in-link" hidden { "Copy" }
                }
                @if !link.whole {
                    p.hint #link-path-hint {
                        "This is the link's path: put the address customers reach tollgate at "
                        "(its https:// address, such as " code { "https://billing.example.com" } ") before it. "
                        "Set " code { "public_url" } " in tollgate's configuration to have the whole link here."
                    }
                }
            }
        }
        nav.toc aria-label="On this page" {
            ul {
                li { a href="#standing" { "Standing" } }
                @if !runners.is_empty() { li { a href="#serverless" { "Serverless" } } }
                li { a href="#credits" { "Credits" } }
                li { a href="#payments" { "Payments" } }
                li { a href="#terms" { "Terms and prices" } }
                li { a href="#sign-in" { "Sign-in link and sessions" } }
                li { a href="#limits" { "Spending limits" } }
                li { a href="#keys" { "Keys" } }
                li { a href="#invoices" { "Invoices" } }
            }
        }
        h2 #standing { "Standing" }
        @if let Some(reason) = s.lock_reason() {
            div.notice.error role="alert" {
                strong { "Locked: " (super::accounts::lock_text(reason)) ". " }
                @match reason {
                    LockReason::ExhaustedBalance => {
                        "The balance is at or below the lock threshold ("
                        (fmt::usd(s.credit.lock_threshold)) "), so new requests are refused. "
                        "Credits lift the lock at once."
                    }
                    LockReason::PaymentDisputed => {
                        "A payment is disputed, so new requests are refused until the dispute is \
                         won or an operator lifts the lock; credits do not lift it. "
                        a href="#unlock" { "Lift the dispute lock" }
                    }
                }
            }
        }
        dl.stats {
            (stat("Balance", html! {
                span #balance data-nano-usd=(balance.0) title=(fmt::usd(balance)) { (fmt::usd_cents(balance)) }
            }, Some(html! { (fmt::usd(balance)) " exactly" })))
            (stat("Available", html! { (fmt::usd_cents(s.credit.available())) },
                Some(html! { "Balance less what running requests hold" })))
            (stat("Held", html! { (fmt::usd_cents(s.credit.held)) },
                Some(html! { (s.in_progress) " request" @if s.in_progress != 1 { "s" } " running" })))
            (stat("Owed", html! {
                @if owed > Nanos::ZERO { span.bad { (fmt::usd_cents(owed)) } } @else { "$0.00" }
            }, Some(html! { "Repaid first by the next credits" })))
            (stat("Concurrency limit", html! { (limit) " at once" }, Some(html! {
                @if s.concurrency_override.is_some() {
                    "Set by contract"
                } @else {
                    "Tier: " (fmt::usd_cents(s.paid_28d)) " paid in 28 days"
                }
            })))
            (stat("Spend this month", html! {
                span #spend-month { (fmt::usd_cents(month.total()?)) }
            }, Some(html! { "Last month: " (fmt::usd_cents(last_month.total()?)) })))
        }
        (super::serverless::card(&runners))

        h2 #credits { "Credits" }
        div.grid-2 {
            div {
                @if s.lots.iter().all(|l| l.remaining == Nanos::ZERO) && s.adjusted_credit == Nanos::ZERO {
                    (empty("No credits left", html! { "Add credits with the form: a paid purchase or a free grant." }))
                } @else {
                    div.table-wrap tabindex="0" {
                        table {
                            caption { "What is left of each purchase, in spending order" }
                            thead { tr {
                                th scope="col" { "Purchase" }
                                th.num scope="col" { "Left" }
                                th scope="col" { "Expires" }
                            } }
                            tbody {
                                @for l in s.lots.iter().filter(|l| l.remaining > Nanos::ZERO) {
                                    tr {
                                        td.mono { (l.purchase_id) }
                                        td.num { (fmt::usd(l.remaining)) }
                                        td { @match l.expires_at { Some(t) => (fmt::date(t)), None => span.muted { "never" } } }
                                    }
                                }
                                @if s.adjusted_credit > Nanos::ZERO {
                                    tr {
                                        td { "Operator adjustments" }
                                        td.num { (fmt::usd(s.adjusted_credit)) }
                                        td { span.muted { "never" } }
                                    }
                                }
                            }
                        }
                    }
                }
                p.hint { "Paid in the last 28 days: " (fmt::usd_cents(s.paid_28d)) "; paid in all: " (fmt::usd_cents(s.paid_lifetime)) "." }
            }
            form.card #add-credits method="post" action={ (here) "/credits" } {
                h3 { "Add credits" }
                (csrf(&who.session.csrf))
                input type="hidden" name="purchase_id" value=(credits_form.purchase_id);
                @if let Some(e) = &view.credits_error { (form_error(e)) }
                label for="amount_usd" { "Amount (USD)" }
                input #amount_usd type="text" name="amount_usd" value=(credits_form.amount_usd)
                    inputmode="decimal" required autocomplete="off" placeholder="25.00"
                    aria-describedby="amount-hint";
                p #amount-hint .hint { "Plain digits and a point, up to 9 decimals; at most 1,000,000." }
                fieldset.choice {
                    legend { "Kind" }
                    label.inline {
                        input type="radio" name="kind" value="paid" checked[credits_form.kind != "free"];
                        " Paid purchase " span.muted { "(raises the concurrency tier; issues a top-up invoice)" }
                    }
                    label.inline {
                        input type="radio" name="kind" value="free" checked[credits_form.kind == "free"];
                        " Free grant"
                    }
                }
                label for="expires_on" { "Expires on (optional)" }
                input #expires_on type="date" name="expires_on" value=(credits_form.expires_on)
                    aria-describedby="expires-hint";
                p #expires-hint .hint { "What is left expires at 00:00 UTC that day. Empty: paid credits expire after 365 days, free credits never." }
                button.primary type="submit" { "Add credits" }
                p.hint { "Sending this form again adds nothing: it carries its own purchase id." }
            }
        }

        h2 #payments { "Payments" }
        div.grid-2 {
            (super::payments::profile(&s.payment, now))
            @if s.disputed_since.is_some() {
                (super::payments::unlock_form(&here, &who.session.csrf,
                    view.unlock_reason.as_deref().unwrap_or_default(), view.unlock_error.as_deref()))
            }
        }
        @if payments.items.is_empty() {
            (empty("No payments", html! {
                "Paid purchases appear here, through the payment provider or added by an operator, \
                 each with a refund form."
            }))
        } @else {
            (super::payments::payments_table(&payments.items, &here, &who.session.csrf, view.refund.as_ref()))
            @if payments.next_cursor.is_some() {
                p.hint { "The newest " (RECENT_PAYMENTS) " payments; the customer's billing page lists them all." }
            }
        }

        h2 #terms { "Terms and prices" }
        div.table-wrap tabindex="0" {
            table {
                caption { "The terms in force and those scheduled" }
                thead { tr {
                    th scope="col" { "Version" }
                    th.num scope="col" { "Discount" }
                    th scope="col" { "Volume tiers" }
                    th.num scope="col" { "Concurrency" }
                    th.num scope="col" { "Lock threshold" }
                    th.num scope="col" { "Low balance" }
                    th scope="col" { "Billing" }
                    th scope="col" { "Machine prices" }
                } }
                tbody {
                    (terms_row("In force", in_force_since, &in_force, s.concurrency_limit(&catalog)))
                    @for v in scheduled {
                        (terms_row("Scheduled", Some(v.effective_from), &v.terms, s.concurrency_limit(&catalog)))
                    }
                }
            }
        }
        div.grid-2 {
            div {
                h3 { "The account's own prices" }
                @if own_prices.is_empty() {
                    (empty("No prices of its own", html! {
                        "It pays the public prices of the " a href="/console/catalog" { "catalog" }
                        ". Its own prices are set with " code { "PUT /v1/admin/accounts/" (account) "/pricing" } "."
                    }))
                } @else {
                    div.table-wrap tabindex="0" {
                        table {
                            thead { tr {
                                th scope="col" { "Endpoint" }
                                th.num scope="col" { "Price" }
                                th scope="col" { "From" }
                            } }
                            tbody {
                                @for (endpoint, v) in &own_prices {
                                    tr {
                                        td.mono { (endpoint) }
                                        td.num { (super::catalog::price_text(&catalog, endpoint, &v.rule)) }
                                        td {
                                            (fmt::datetime(v.effective_from))
                                            @if v.effective_from > now { " " span.badge.warn { "scheduled" } }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            form.card #change-terms method="post" action={ (here) "/terms" } {
                h3 { "Change terms" }
                (csrf(&who.session.csrf))
                @if let Some(e) = &view.terms_error { (form_error(e)) }
                @if let Some(latest) = terms_blocked_until {
                    p.notice.warn #terms-scheduled {
                        "A version of the terms is scheduled from " strong { (fmt::datetime(latest)) }
                        ". This form changes them from now, before that version, and versions are never "
                        "back-dated, so it is refused until then. To change the terms sooner, send "
                        code { "PUT /v1/admin/accounts/" (account) "/pricing" } " with "
                        code { "effective_from" } " at or after " code { (tollgate_core::time::rfc3339(latest)) } "."
                    }
                }
                label for="percent_discount" { "Percent discount" }
                input #percent_discount type="text" name="percent_discount" inputmode="decimal"
                    value=(terms_form.percent_discount) autocomplete="off"
                    aria-describedby="percent-hint";
                p #percent-hint .hint { "0 to 100, off every charge but partner endpoints'. Empty: none." }
                label for="concurrency_limit" { "Concurrency limit" }
                input #concurrency_limit type="number" name="concurrency_limit" min="1" step="1"
                    value=(terms_form.concurrency_limit) autocomplete="off"
                    aria-describedby="concurrency-hint";
                p #concurrency-hint .hint { "Requests at once by contract. Empty: the tier table's (now " (catalog.concurrency.limit_for(s.paid_28d)) ")." }
                label for="billing" { "Billing" }
                select #billing name="billing" {
                    option value="prepaid" selected[terms_form.billing == "prepaid"] { "Prepaid credits" }
                    option value="invoice" selected[terms_form.billing == "invoice"] { "Invoice (billed monthly)" }
                }
                p.hint { "Takes effect now, as a new version of the terms; what was already billed keeps the terms of its time." }
                button.primary type="submit" disabled[terms_blocked_until.is_some()]
                    aria-describedby=[terms_blocked_until.map(|_| "terms-scheduled")] { "Change terms" }
            }
        }

        h2 #sign-in { "Sign-in link and sessions" }
        div.grid-2 {
            form.card #sign-in-form method="post" action={ (here) "/sign-in-link" } {
                h3 { "A one-time sign-in link" }
                (csrf(&who.session.csrf))
                @if let Some(e) = &view.link_error { (form_error(e)) }
                p { "A one-time link that signs the customer in to " (account)
                    "'s billing dashboard: it works once, for ten minutes, and is shown once." }
                button type="submit" { "Create a sign-in link" }
            }
            form.card #end-sessions method="post" action={ (here) "/end-sessions" }
                data-confirm={ "Sign " (account) " out of every dashboard session? Whoever uses them must sign in again." } {
                h3 { "Dashboard sessions" }
                (csrf(&who.session.csrf))
                @if let Some(e) = &view.sessions_error { (form_error(e)) }
                p { "Signs out every browser signed in to " (account) "'s dashboard, by a sign-in link "
                    "or with a key, at once: for a link handed to the wrong person, or a customer who "
                    "lost a device. The account's keys keep working." }
                button.danger type="submit" { "Sign out of every dashboard session" }
            }
        }

        h2 #limits { "Spending limits" }
        @if limits.is_empty() {
            (empty("No spending limits", html! {
                "Nothing caps its spending but its balance. The customer sets limits in their "
                "dashboard; operators with " code { "POST /v1/admin/accounts/" (account) "/spending-limits" } "."
            }))
        } @else {
            div.grid-2.limits { @for c in &limit_cards { (c) } }
            p.hint { "Change or delete them with " code { "PUT" } " and " code { "DELETE /v1/admin/accounts/" (account) "/spending-limits/{limit_id}" } "." }
        }

        h2 #keys { "Keys" }
        @if let Some(e) = &view.keys_error { (form_error(e)) }
        @if keys.items.is_empty() {
            (empty("No keys", html! {
                "The customer creates keys in their dashboard, or an operator with "
                code { "POST /v1/admin/accounts/" (account) "/keys" } "."
            }))
        } @else {
            div.table-wrap tabindex="0" {
                table {
                    thead { tr {
                        th scope="col" { "Key" }
                        th scope="col" { "Scope" }
                        th scope="col" { "State" }
                        th scope="col" { "Created" }
                        th scope="col" { span.visually-hidden { "Action" } }
                    } }
                    tbody {
                        @for k in &keys.items {
                            tr {
                                td.wrap { (k.alias) br; span.mono.small.muted { (k.key_id) } }
                                td { (k.scope.as_str()) }
                                td {
                                    @match k.revoked_at {
                                        Some(t) => span.badge.bad title={ "revoked " (fmt::datetime(t)) } { "revoked " (fmt::date(t)) },
                                        None => span.badge.ok { "active" },
                                    }
                                }
                                td { (fmt::date(k.created_at)) }
                                td {
                                    @if k.revoked_at.is_none() {
                                        form.inline method="post"
                                            action={ (here) "/keys/" (k.key_id) "/revoke" }
                                            data-confirm={ "Revoke the key “" (k.alias) "”? Calls with it are refused at once, for good." } {
                                            (csrf(&who.session.csrf))
                                            button.danger type="submit" aria-label={ "Revoke " (k.alias) } { "Revoke" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if keys.next_cursor.is_some() {
                p.hint { "The first " (KEYS_SHOWN) " keys; " code { "GET /v1/admin/accounts/" (account) "/keys" } " lists them all." }
            }
        }

        h2 #invoices { "Invoices" }
        @if invoices.items.is_empty() {
            (empty("No invoices yet", html! {
                "A paid purchase issues a top-up invoice; an invoice-billed account gets a usage \
                 invoice when its billing period closes."
            }))
        } @else {
            (super::invoices::table(&invoices.items, false, None))
            p.hint { a href={ "/console/invoices?username=" (account) } { "All of " (account) "'s invoices" } }
        }
    };
    Ok(layout::page(
        &chrome(who, "/console"),
        account.as_str(),
        body,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(percent: &str, limit: &str, billing: &str) -> TermsForm {
        TermsForm {
            percent_discount: percent.into(),
            concurrency_limit: limit.into(),
            billing: billing.into(),
        }
    }

    #[test]
    fn the_terms_form_changes_only_what_differs_from_the_terms_in_force() {
        let t = Terms::default();
        assert_eq!(terms_change(&t, &TermsForm::of(&t)).unwrap(), None);
        assert_eq!(terms_change(&t, &form("0", "", "prepaid")).unwrap(), None);
        let c = terms_change(&t, &form("12.5", "", "prepaid"))
            .unwrap()
            .unwrap();
        assert_eq!(c.percent_discount, Some(Decimal::new(125, 1)));
        assert_eq!((c.concurrency_limit, c.billing), (None, None));
        let c = terms_change(&t, &form("", "7", "invoice"))
            .unwrap()
            .unwrap();
        assert_eq!(c.percent_discount, None);
        assert_eq!(c.concurrency_limit, Some(Some(7)));
        assert_eq!(c.billing, Some(BillingMode::Invoice));
        let with_limit = Terms {
            concurrency_override: Some(7),
            ..Terms::default()
        };
        let c = terms_change(&with_limit, &form("", "", "prepaid"))
            .unwrap()
            .unwrap();
        assert_eq!(
            c.concurrency_limit,
            Some(None),
            "empty: back to the tier table"
        );
        for bad in [
            form("ten", "", "prepaid"),
            form("", "-1", "prepaid"),
            form("", "", "monthly"),
        ] {
            assert!(terms_change(&t, &bad).is_err());
        }
    }
}
