//! Signing in and out (API.md section 5), and who is signed in.
//!
//! A customer signs in through a one-time link the platform minted
//! (`POST /v1/admin/accounts/{username}/portal-sessions`; opening `/dashboard/link/{token}`
//! shows a page that posts it back, and the POST redeems it) or with one of the account's `ADMIN` keys at
//! `/dashboard/login`; an operator signs in at `/console/login` with an operator key. Either
//! way the engine stores a web session (its id's SHA-256, the account, the key, a CSRF token
//! and an expiry) and the browser gets the id in a cookie: `HttpOnly`, `SameSite=Lax`, `Secure`
//! when the public URL is https, scoped to its area's path (`/dashboard` or `/console`), so a
//! customer's cookie is never even sent to the console. Sign-out ends the session in the
//! database; a session signed in with a key ends when the key is revoked.
//!
//! Every form carries the session's CSRF token ([`Post`] checks it before the handler runs);
//! the sign-in forms, before any session, carry a token that must equal a cookie set with the
//! form (`SameSite=Strict`).

use crate::error::PageError;
use crate::layout;
use crate::DashboardState;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{html, Markup};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tollgate_api::auth::{hash_secret, random_token, same, verify_key};
use tollgate_core::ids::{AccountId, ApiKeyId};
use tollgate_engine::{AdminCmd, AdminReply};
use tollgate_store::{Scope, WebSession};

/// Where a session belongs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Area {
    /// A customer's dashboard, `/dashboard`.
    Customer,
    /// The operator console, `/console`.
    Console,
}

impl Area {
    pub fn cookie(self) -> &'static str {
        match self {
            Area::Customer => "tollgate_session",
            Area::Console => "tollgate_console",
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Area::Customer => "/dashboard",
            Area::Console => "/console",
        }
    }

    pub fn login(self) -> &'static str {
        match self {
            Area::Customer => "/dashboard/login",
            Area::Console => "/console/login",
        }
    }

    fn logout(self) -> &'static str {
        match self {
            Area::Customer => "/dashboard/logout",
            Area::Console => "/console/logout",
        }
    }
}

/// The cookie that carries a sign-in form's token until the form is posted.
const LOGIN_COOKIE: &str = "tollgate_login";

/// The routes of signing in and out of `area`.
pub fn routes(area: Area) -> axum::Router<DashboardState> {
    let router = axum::Router::new()
        .route(
            area.login(),
            get(
                move |s: State<DashboardState>, q: axum::extract::Query<LoginQuery>| {
                    login_page(s, q, area)
                },
            )
            .post(
                move |s: State<DashboardState>, h: HeaderMap, f: axum::Form<LoginForm>| {
                    login(s, h, f, area)
                },
            ),
        )
        .route(
            area.logout(),
            post(move |s: State<DashboardState>, r: Request| logout(s, r, area)),
        );
    match area {
        Area::Customer => router.route(
            "/dashboard/link/{token}",
            get(continue_page).post(redeem_link),
        ),
        Area::Console => router,
    }
}

/// The value of the cookie `name`, from every `Cookie` header.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value: `HttpOnly` always, `Secure` when the server's public URL is https.
fn set_cookie(
    state: &DashboardState,
    name: &str,
    value: &str,
    path: &str,
    max_age_s: i64,
    same_site: &str,
) -> HeaderValue {
    let secure = if state.config.secure_cookies() {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={path}; Max-Age={max_age_s}; HttpOnly; SameSite={same_site}{secure}"
    ))
    .expect("cookie names, paths and hex values are header-safe")
}

/// A signed-in session, as a page sees it.
#[derive(Clone, Debug)]
pub struct Session {
    /// The SHA-256 of the cookie's id.
    pub id_sha256: String,
    /// The token every form of this session carries.
    pub csrf: String,
    /// The key it signed in with (`None`: a sign-in link).
    pub key_id: Option<ApiKeyId>,
}

/// A customer signed in to their account's dashboard.
#[derive(Clone, Debug)]
pub struct CustomerSession {
    pub account: AccountId,
    pub session: Session,
}

/// An operator signed in to the console.
#[derive(Clone, Debug)]
pub struct ConsoleSession {
    pub session: Session,
}

/// The live session of `area` the request's cookie names, else [`PageError::SignIn`].
async fn signed_in(
    parts: &Parts,
    state: &DashboardState,
    area: Area,
) -> Result<(Session, Option<AccountId>), PageError> {
    let to_sign_in = PageError::SignIn(area.login());
    let id = cookie(&parts.headers, area.cookie()).ok_or(PageError::SignIn(area.login()))?;
    let id_sha256 = hash_secret(id);
    let lookup = id_sha256.clone();
    let found: Option<WebSession> = state.engine().read(move |r| r.web_session(&lookup)).await?;
    let Some(w) = found else {
        return Err(to_sign_in);
    };
    let now = state.engine().now();
    let live = w.ended_at.is_none() && w.expires_at > now;
    let right_area = match area {
        Area::Customer => w.account.is_some(),
        Area::Console => w.account.is_none(),
    };
    if !live || !right_area {
        return Err(to_sign_in);
    }
    if let Some(key_id) = &w.key_id {
        let key = state.engine().api_key(key_id).await?;
        if key.is_none_or(|k| k.revoked_at.is_some()) {
            return Err(to_sign_in);
        }
    }
    Ok((
        Session {
            id_sha256,
            csrf: w.csrf,
            key_id: w.key_id,
        },
        w.account,
    ))
}

impl FromRequestParts<DashboardState> for CustomerSession {
    type Rejection = PageError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &DashboardState,
    ) -> Result<Self, PageError> {
        let (session, account) = signed_in(parts, state, Area::Customer).await?;
        Ok(CustomerSession {
            account: account.expect("a customer session has an account"),
            session,
        })
    }
}

impl FromRequestParts<DashboardState> for ConsoleSession {
    type Rejection = PageError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &DashboardState,
    ) -> Result<Self, PageError> {
        let (session, _) = signed_in(parts, state, Area::Console).await?;
        Ok(ConsoleSession { session })
    }
}

/// A session that can post forms.
pub trait HasSession {
    fn session(&self) -> &Session;
}

impl HasSession for CustomerSession {
    fn session(&self) -> &Session {
        &self.session
    }
}

impl HasSession for ConsoleSession {
    fn session(&self) -> &Session {
        &self.session
    }
}

/// A posted form of a signed-in session: the session (`S`), then the body, read only after
/// the session was found, whose `csrf` field must be the session's token (else 403 and the
/// handler never runs), read into `T` (its other fields; 400 naming the problem).
pub struct Post<S, T> {
    pub who: S,
    pub form: T,
}

/// The largest form a page posts.
const FORM_BYTES: usize = 64 * 1024;

impl<S, T> FromRequest<DashboardState> for Post<S, T>
where
    S: FromRequestParts<DashboardState, Rejection = PageError> + HasSession + Send,
    T: DeserializeOwned + Send,
{
    type Rejection = PageError;
    async fn from_request(req: Request, state: &DashboardState) -> Result<Self, PageError> {
        let (mut parts, body) = req.into_parts();
        let who = S::from_request_parts(&mut parts, state).await?;
        let bytes = axum::body::to_bytes(body, FORM_BYTES)
            .await
            .map_err(|_| PageError::bad_request("the form is too large"))?;
        let csrf = form_urlencoded::parse(&bytes)
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        if !same(&csrf, &who.session().csrf) {
            return Err(PageError::forbidden(
                "This form is out of date or did not come from this dashboard (its security \
                 token does not match). Reload the page and send it again.",
            ));
        }
        let form = serde_urlencoded_lite::from_bytes(&bytes).map_err(PageError::bad_request)?;
        Ok(Post { who, form })
    }
}

/// Reads a form body into a struct through `serde_json`'s map of strings: every field arrives
/// as text (a form has no other type), the last of repeated names wins, unknown fields are the
/// struct's to refuse.
mod serde_urlencoded_lite {
    use serde::de::DeserializeOwned;

    pub fn from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        let map: serde_json::Map<String, serde_json::Value> = form_urlencoded::parse(bytes)
            .map(|(k, v)| (k.into_owned(), serde_json::Value::String(v.into_owned())))
            .collect();
        serde_json::from_value(serde_json::Value::Object(map))
            .map_err(|e| format!("the form could not be read: {e}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Signing in

#[derive(Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    signed_out: Option<String>,
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    key: String,
}

fn login_form(area: Area, token: &str, notice: Option<Markup>, error: Option<&str>) -> Markup {
    let (title, lead, label, hint) = match area {
        Area::Customer => (
            "Sign in to your billing dashboard",
            "See your balance, usage, invoices and API keys.",
            "ADMIN key",
            "Paste one of your account's ADMIN keys (key_id:key_secret). Your platform can \
             also send you a one-time sign-in link.",
        ),
        Area::Console => (
            "Sign in to the operator console",
            "Accounts, credits, the catalog, invoices and the ledger's reconciliation.",
            "Operator key",
            "Paste an operator key (key_id:key_secret).",
        ),
    };
    layout::bare(
        title,
        html! {
            main.narrow {
                h1 { (title) }
                p.lead { (lead) }
                @if let Some(n) = notice { (n) }
                @if let Some(e) = error { p.notice.error role="alert" { (e) } }
                form.card method="post" action=(area.login()) {
                    input type="hidden" name="csrf" value=(token);
                    label for="key" { (label) }
                    input #key type="password" name="key" required autocomplete="off"
                        spellcheck="false" aria-describedby="key-hint";
                    p #key-hint .hint { (hint) }
                    button.primary type="submit" { "Sign in" }
                }
            }
        },
    )
}

/// The sign-in page, with a fresh form token in a cookie of its own.
async fn login_page(
    State(state): State<DashboardState>,
    axum::extract::Query(q): axum::extract::Query<LoginQuery>,
    area: Area,
) -> Response {
    let token = random_token();
    let notice = q
        .signed_out
        .map(|_| html! { p.notice role="status" { "You are signed out." } });
    login_response(&state, area, &token, StatusCode::OK, notice, None)
}

fn login_response(
    state: &DashboardState,
    area: Area,
    token: &str,
    status: StatusCode,
    notice: Option<Markup>,
    error: Option<&str>,
) -> Response {
    (
        status,
        [(
            header::SET_COOKIE,
            set_cookie(state, LOGIN_COOKIE, token, area.login(), 3600, "Strict"),
        )],
        layout::html(login_form(area, token, notice, error)),
    )
        .into_response()
}

/// Signs in with a key: an `ADMIN` key of an account for the dashboard, an operator key for
/// the console. A refused key shows the form again with the reason and starts nothing.
async fn login(
    State(state): State<DashboardState>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
    area: Area,
) -> Response {
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !same(expected, &form.csrf) {
        let token = random_token();
        return login_response(
            &state,
            area,
            &token,
            StatusCode::FORBIDDEN,
            None,
            Some("The sign-in form expired or did not come from this page. Try again."),
        );
    }
    let refuse = |message: &str| {
        let token = random_token();
        login_response(
            &state,
            area,
            &token,
            StatusCode::UNAUTHORIZED,
            None,
            Some(message),
        )
    };
    let principal = match verify_key(&state.api, &form.key).await {
        Ok(p) => p,
        Err(e) if e.status == StatusCode::UNAUTHORIZED => {
            return refuse(&format!("That key does not work: {}.", e.message))
        }
        Err(e) => return PageError::from(e).into_response(),
    };
    let account = match (area, principal.scope, principal.account) {
        (Area::Customer, Scope::Admin, Some(account)) => Some(account),
        (Area::Console, Scope::Operator, None) => None,
        (Area::Customer, Scope::Api, _) => {
            return refuse("That is an API key; signing in takes one of your account's ADMIN keys.")
        }
        (Area::Customer, _, _) => {
            return refuse("That is an operator key; operators sign in at /console/login.")
        }
        (Area::Console, _, _) => return refuse("The console takes an operator key."),
    };
    let now = state.engine().now();
    let id = random_token();
    let session = WebSession {
        id_sha256: hash_secret(&id),
        account,
        key_id: Some(principal.key_id),
        csrf: random_token(),
        created_at: now,
        expires_at: now.plus_ms(state.config.session_ttl_ms),
        ended_at: None,
    };
    match state
        .engine()
        .admin(AdminCmd::StartWebSession(session))
        .await
    {
        Ok(_) => started(&state, area, &id),
        Err(e) => PageError::from(e).into_response(),
    }
}

/// The answer that hands the browser its session: the cookie, and the area's first page.
fn started(state: &DashboardState, area: Area, id: &str) -> Response {
    let ttl_s = state.config.session_ttl_ms / 1000;
    let mut resp = Redirect::to(area.path()).into_response();
    let h = resp.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(state, area.cookie(), id, area.path(), ttl_s, "Lax"),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(state, LOGIN_COOKIE, "", area.login(), 0, "Strict"),
    );
    resp
}

/// Opening a sign-in link shows a page that posts it back (at once, with JavaScript; with a
/// button, without): a GET never uses the link, so the link checkers of mail and chat tools,
/// which fetch every link they see, cannot spend it or receive the session.
async fn continue_page(Path(token): Path<String>) -> Response {
    let action = format!("/dashboard/link/{token}");
    layout::html(layout::bare(
        "Continue to your billing dashboard",
        html! {
            main.narrow {
                h1 { "Your billing dashboard" }
                form.card #continue-sign-in method="post" action=(action) data-autosubmit {
                    p { "This one-time link signs you in. It works once, for ten minutes." }
                    button.primary type="submit" { "Continue to your dashboard" }
                }
            }
        },
    ))
    .into_response()
}

/// Redeems a one-time sign-in link (posted by its page): a session for the link's account, or
/// a page saying the link is used or expired (410) and starting nothing.
async fn redeem_link(State(state): State<DashboardState>, Path(token): Path<String>) -> Response {
    let now = state.engine().now();
    let id = random_token();
    let session = WebSession {
        id_sha256: hash_secret(&id),
        account: None,
        key_id: None,
        csrf: random_token(),
        created_at: now,
        expires_at: now.plus_ms(state.config.session_ttl_ms),
        ended_at: None,
    };
    let reply = state
        .engine()
        .admin(AdminCmd::RedeemPortalLink {
            token_sha256: hash_secret(&token),
            session,
        })
        .await;
    match reply {
        Ok(AdminReply::SignedIn(Some(_))) => started(&state, Area::Customer, &id),
        Ok(_) => PageError::Status(
            StatusCode::GONE,
            "This sign-in link has already been used or has expired. Sign-in links work once, \
             for ten minutes: ask for a new one, or sign in with an ADMIN key."
                .into(),
        )
        .into_response(),
        Err(e) => PageError::from(e).into_response(),
    }
}

/// Signs out: the session ends in the database (its cookie no longer works anywhere) and the
/// browser forgets the cookie.
async fn logout(State(state): State<DashboardState>, req: Request, area: Area) -> Response {
    let who = match area {
        Area::Customer => Post::<CustomerSession, serde::de::IgnoredAny>::from_request(req, &state)
            .await
            .map(|p| p.who.session),
        Area::Console => Post::<ConsoleSession, serde::de::IgnoredAny>::from_request(req, &state)
            .await
            .map(|p| p.who.session),
    };
    let session = match who {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = state
        .engine()
        .admin(AdminCmd::EndWebSession {
            id_sha256: session.id_sha256,
        })
        .await
    {
        return PageError::from(e).into_response();
    }
    let mut resp = Redirect::to(&format!("{}?signed_out=1", area.login())).into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&state, area.cookie(), "", area.path(), 0, "Lax"),
    );
    resp
}
