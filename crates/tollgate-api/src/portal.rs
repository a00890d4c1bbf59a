//! Sign-in links to a customer's billing dashboard, minted by the operator's back office
//! (API.md section 5). The link's token is random, stored only as its SHA-256, works once and
//! for [`PORTAL_LINK_TTL_MS`]; the dashboard redeems it (opening `/dashboard/link/{token}`
//! shows a page that posts it back; a GET alone never uses it).

use crate::auth::{hash_secret, random_token};
use crate::error::{ApiError, ErrorResponse};
use crate::extract::{NoParams, Operator, Params, Path};
use crate::openapi::{tags, OperatorErrors};
use crate::wire::Time;
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use tollgate_core::ids::AccountId;
use tollgate_core::Timestamp;
use tollgate_engine::AdminCmd;
use tollgate_store::PortalLink;
use utoipa::ToSchema;

/// How long a sign-in link works (10 minutes).
pub const PORTAL_LINK_TTL_MS: i64 = 10 * 60 * 1000;
/// The dashboard path a link's token follows.
pub const PORTAL_LINK_PATH: &str = "/dashboard/link/";

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"url": "/dashboard/link/5f0c...e1", "expires_at": "2026-12-06T12:10:00Z"}))]
pub struct PortalSession {
    /// A path on this server (prefix it with the server's public URL) that signs the
    /// customer in to the account's dashboard: it works once, until `expires_at`.
    url: String,
    expires_at: Time,
}

/// Mint a dashboard sign-in link
///
/// A one-time link that signs its holder in to the account's billing dashboard, for the
/// platform to hand to its signed-in customer (a redirect or an email). It works once and for
/// ten minutes; only its SHA-256 is stored. Each call mints a new link.
#[utoipa::path(
    post, path = "/v1/admin/accounts/{username}/portal-sessions", tag = tags::OPERATOR,
    operation_id = "createPortalSession", security(("Key" = ["OPERATOR"])),
    params(("username" = AccountId, Path, description = "The account's username.")),
    responses(
        OperatorErrors,
        (status = 201, description = "The sign-in link.", body = PortalSession),
        (status = 404, description = "`not_found`: unknown account.", body = ErrorResponse),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Path(account): Path<AccountId>,
) -> Result<(StatusCode, axum::Json<PortalSession>), ApiError> {
    let link = mint_link(&state, account).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(PortalSession {
            url: link.url,
            expires_at: Time(link.expires_at),
        }),
    ))
}

/// A freshly minted sign-in link: the path that signs in (its token is in it, and nowhere
/// else), and when it stops working. (No `Debug`: the token is a secret, never logged.)
#[derive(Clone)]
pub struct MintedLink {
    /// `/dashboard/link/<token>`: a path on this server.
    pub url: String,
    pub expires_at: Timestamp,
}

/// Mints a one-time sign-in link to `account`'s dashboard (an unknown account is 404): only
/// the token's SHA-256 is stored. The operator API and the console both mint links through
/// this.
pub async fn mint_link(state: &AppState, account: AccountId) -> Result<MintedLink, ApiError> {
    tollgate_query::account(&state.engine, &account).await?;
    let token = random_token();
    let now = state.engine.now();
    let expires_at = now.plus_ms(PORTAL_LINK_TTL_MS);
    state
        .engine
        .admin(AdminCmd::MintPortalLink(PortalLink {
            token_sha256: hash_secret(&token),
            account,
            created_at: now,
            expires_at,
        }))
        .await?;
    Ok(MintedLink {
        url: format!("{PORTAL_LINK_PATH}{token}"),
        expires_at,
    })
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"ended": 2}))]
pub struct SessionsEnded {
    /// How many of the account's dashboard sessions were signed in and are now ended.
    ended: usize,
}

/// End an account's dashboard sessions
///
/// Signs the account out of every dashboard session at once, however it signed in (a link or
/// a key), on every server: for a platform whose customer signs out, or whose link went to the
/// wrong person. Keys are not touched. Ending sessions of an account that has none answers
/// `ended: 0`.
#[utoipa::path(
    delete, path = "/v1/admin/accounts/{username}/portal-sessions", tag = tags::OPERATOR,
    operation_id = "endPortalSessions", security(("Key" = ["OPERATOR"])),
    params(("username" = AccountId, Path, description = "The account's username.")),
    responses(
        OperatorErrors,
        (status = 200, description = "How many sessions ended.", body = SessionsEnded),
        (status = 404, description = "`not_found`: unknown account.", body = ErrorResponse),
    )
)]
pub async fn end(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Path(account): Path<AccountId>,
) -> Result<axum::Json<SessionsEnded>, ApiError> {
    let ended = end_sessions(&state, account).await?;
    Ok(axum::Json(SessionsEnded { ended }))
}

/// Ends every dashboard session of an account (see [`end`]) and says how many were signed in:
/// the operator API and the console both end sessions through this.
pub async fn end_sessions(state: &AppState, account: AccountId) -> Result<usize, ApiError> {
    tollgate_query::account(&state.engine, &account).await?;
    match state
        .engine
        .admin(AdminCmd::EndAccountSessions { account })
        .await?
    {
        tollgate_engine::AdminReply::SessionsEnded(ended) => Ok(ended),
        other => Err(ApiError::server(format!(
            "ending sessions answered {other:?}"
        ))),
    }
}
