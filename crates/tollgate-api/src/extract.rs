//! Extractors: who is calling, and what they sent, as domain types.
//!
//! A handler's signature says who may call it (`Operator`, `Customer<Admin>`,
//! `Customer<Api>`, `Option<Customer<Api>>`) and what it takes (`Path<AccountId>`,
//! `Params<UsageParams>`, `Json<PurchaseBody>`). Each extractor refuses bad input before the
//! handler runs, with fal's error envelope naming the parameter or field, so nothing is read or
//! written for a call that cannot be right.
//!
//! Who is calling is checked before anything is read from the body: the key extractors read
//! only the request's head (`FromRequestParts`) and come first in every handler's signature,
//! and the body extractor comes last (axum runs them in that order), so a call without a
//! valid key is refused without buffering a byte of its body. A body is read up to its
//! route's limit ([`BodyLimit`]).

use crate::auth::{authenticate, Principal};
use crate::error::ApiError;
use crate::observe::Caller;
use crate::query_string::Query;
use crate::AppState;
use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use std::marker::PhantomData;
use tollgate_core::ids::{AccountId, ApiKeyId, AppName, LimitId, PurchaseId, RequestId};
use tollgate_store::Scope;
use utoipa::openapi::path::ParameterIn;
use utoipa::IntoParams;

// ---------------------------------------------------------------------------------------------
// Who is calling

/// The platform's own key: moves money, reports usage, manages accounts and the catalog.
#[derive(Clone, Debug)]
pub struct Operator {
    pub key_id: ApiKeyId,
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let p = authenticated(parts, state).await?;
        if p.scope != Scope::Operator {
            return Err(ApiError::forbidden("this call needs an OPERATOR key"));
        }
        Ok(Operator { key_id: p.key_id })
    }
}

/// Authenticates the call's `Authorization` header, and notes who called for its log line.
async fn authenticated(parts: &Parts, state: &AppState) -> Result<Principal, ApiError> {
    let p = authenticate(state, &parts.headers).await?;
    Caller::note(&parts.extensions, &p.key_id, p.account.as_ref());
    Ok(p)
}

/// The scope a customer call needs.
pub trait Needs: Send + Sync + 'static {
    const SCOPE: Scope;
}

/// Calls any customer key may make (models, prices, estimates, analytics).
pub enum Api {}
/// Calls only a customer's `ADMIN` keys may make (usage, billing, keys); `ADMIN` includes
/// `API`.
pub enum Admin {}

impl Needs for Api {
    const SCOPE: Scope = Scope::Api;
}
impl Needs for Admin {
    const SCOPE: Scope = Scope::Admin;
}

/// A customer key with at least the scope `S`, and the account it belongs to: a customer
/// call sees only that account.
#[derive(Clone, Debug)]
pub struct Customer<S: Needs> {
    pub account: AccountId,
    pub key_id: ApiKeyId,
    scope: PhantomData<fn() -> S>,
}

impl<S: Needs> Customer<S> {
    fn of(p: Principal) -> Result<Self, ApiError> {
        let allowed = match (S::SCOPE, p.scope) {
            (_, Scope::Operator) => false,
            (Scope::Api, _) => true,
            (Scope::Admin, Scope::Admin) => true,
            _ => false,
        };
        match (allowed, p.account) {
            (true, Some(account)) => Ok(Customer {
                account,
                key_id: p.key_id,
                scope: PhantomData,
            }),
            _ => Err(ApiError::forbidden(format!(
                "this call needs a customer key with {} scope",
                S::SCOPE.as_str()
            ))),
        }
    }
}

impl<S: Needs> FromRequestParts<AppState> for Customer<S> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Customer::of(authenticated(parts, state).await?)
    }
}

/// A call that needs no key (`GET /v1/models`): absent, it is `None`; sent, it must be a
/// valid customer key of the scope.
impl<S: Needs> OptionalFromRequestParts<AppState> for Customer<S> {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, ApiError> {
        if !parts
            .headers
            .contains_key(axum::http::header::AUTHORIZATION)
        {
            return Ok(None);
        }
        Customer::of(authenticated(parts, state).await?).map(Some)
    }
}

// ---------------------------------------------------------------------------------------------
// What they sent

/// A JSON body, read strictly ([`crate::json`]).
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = body(req, state).await?;
        crate::json::from_slice(&bytes).map(Json)
    }
}

/// The request's body, as bytes (at most the route's [`BodyLimit`]).
pub struct Body(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        body(req, state).await.map(Body)
    }
}

/// The most bytes a route reads of a request body: [`crate::DEFAULT_BODY_BYTES`] unless the
/// route sets its own ([`body_limit`]). A larger body is refused with 413
/// `payload_too_large`, naming the limit, after at most that many bytes were read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyLimit(pub usize);

/// The layer that sets a route's body limit (axum's `DefaultBodyLimit`, and the figure the
/// refusal names).
pub fn body_limit(bytes: usize) -> (axum::extract::DefaultBodyLimit, axum::Extension<BodyLimit>) {
    (
        axum::extract::DefaultBodyLimit::max(bytes),
        axum::Extension(BodyLimit(bytes)),
    )
}

/// The request's body (at most the route's [`BodyLimit`]).
pub async fn body<S: Send + Sync>(req: Request, state: &S) -> Result<axum::body::Bytes, ApiError> {
    let limit = req.extensions().get::<BodyLimit>().copied();
    axum::body::Bytes::from_request(req, state)
        .await
        .map_err(|e| match (e.status(), limit) {
            (axum::http::StatusCode::PAYLOAD_TOO_LARGE, Some(BodyLimit(limit))) => {
                ApiError::payload_too_large(limit)
            }
            (status, _) => ApiError::of_status(status, e.body_text()),
        })
}

/// A JSON body that may be left out: no body (only whitespace) or `null` is `T::default()`.
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) || bytes.trim_ascii() == b"null" {
            return Ok(OptionalJson(T::default()));
        }
        crate::json::from_slice(&bytes).map(OptionalJson)
    }
}

/// A path parameter's syntax, and the name the route gives it.
pub trait PathParam: Sized {
    const NAME: &'static str;
    fn parse(text: &str) -> Result<Self, String>;
}

impl PathParam for AccountId {
    const NAME: &'static str = "username";
    fn parse(text: &str) -> Result<Self, String> {
        AccountId::parse(text).map_err(|e| e.to_string())
    }
}

impl PathParam for ApiKeyId {
    const NAME: &'static str = "key_id";
    fn parse(text: &str) -> Result<Self, String> {
        ApiKeyId::parse(text).map_err(|e| e.to_string())
    }
}

impl PathParam for PurchaseId {
    const NAME: &'static str = "purchase_id";
    fn parse(text: &str) -> Result<Self, String> {
        PurchaseId::parse(text).map_err(|e| e.to_string())
    }
}

impl PathParam for RequestId {
    const NAME: &'static str = "request_id";
    fn parse(text: &str) -> Result<Self, String> {
        RequestId::parse(text).map_err(|e| e.to_string())
    }
}

/// The id of a request of the lifecycle API: a UUID in lower-case hyphenated form, as the
/// gateway names it at submission (one request, one spelling).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct LifecycleId(pub RequestId);

impl LifecycleId {
    /// A UUID in its one canonical spelling ([`RequestId::parse_uuid`]).
    pub fn parse(text: &str) -> Result<LifecycleId, String> {
        RequestId::parse_uuid(text)
            .map(LifecycleId)
            .map_err(|e| e.to_string())
    }
}

impl TryFrom<String> for LifecycleId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        LifecycleId::parse(&s)
    }
}

impl PathParam for LifecycleId {
    const NAME: &'static str = "request_id";
    fn parse(text: &str) -> Result<Self, String> {
        LifecycleId::parse(text)
    }
}

impl PathParam for LimitId {
    const NAME: &'static str = "limit_id";
    fn parse(text: &str) -> Result<Self, String> {
        LimitId::parse(text).map_err(|e| e.to_string())
    }
}

impl PathParam for AppName {
    const NAME: &'static str = "name";
    fn parse(text: &str) -> Result<Self, String> {
        AppName::parse(text).map_err(|e| e.to_string())
    }
}

/// The owner of a serverless app in a path (`/v1/serverless/apps/{owner}/{name}/...`): a
/// username.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner(pub AccountId);

impl PathParam for Owner {
    const NAME: &'static str = "owner";
    fn parse(text: &str) -> Result<Self, String> {
        AccountId::parse(text).map(Owner).map_err(|e| e.to_string())
    }
}

/// The route's one path parameter, parsed.
pub struct Path<T>(pub T);

impl<T: PathParam, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(text) =
            <axum::extract::Path<String> as FromRequestParts<S>>::from_request_parts(parts, state)
                .await
                .map_err(|e: axum::extract::rejection::PathRejection| {
                    ApiError::invalid(T::NAME, e.body_text())
                })?;
        T::parse(&text)
            .map(Path)
            .map_err(|e| ApiError::invalid(T::NAME, e))
    }
}

/// A route's two path parameters, parsed (`/v1/admin/webhooks/{webhook_id}/deliveries/{delivery_id}`,
/// `/v1/admin/accounts/{username}/spending-limits/{limit_id}`).
pub struct Path2<A, B>(pub A, pub B);

impl<A: PathParam, B: PathParam, S: Send + Sync> FromRequestParts<S> for Path2<A, B> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path((a, b)) =
            <axum::extract::Path<(String, String)> as FromRequestParts<S>>::from_request_parts(
                parts, state,
            )
            .await
            .map_err(|e: axum::extract::rejection::PathRejection| {
                ApiError::validation(e.body_text())
            })?;
        let a = A::parse(&a).map_err(|e| ApiError::invalid(A::NAME, e))?;
        let b = B::parse(&b).map_err(|e| ApiError::invalid(B::NAME, e))?;
        Ok(Path2(a, b))
    }
}

/// An operation's query parameters, read from the parsed query string into a struct of domain
/// types ([`FromQuery`]). A parameter the operation does not document is refused by name: a
/// typo such as `endpoint=` must not silently widen a query.
pub struct Params<T>(pub T);

/// Parameters read from a query string. The struct documents them too (`IntoParams`), and its
/// [`FromQuery::names`] come from that documentation ([`names_of`]), so the parameters taken
/// and the parameters documented are one list.
pub trait FromQuery: Sized {
    /// Every parameter the operation takes: by default, those the struct documents.
    fn names() -> Vec<String>
    where
        Self: IntoParams,
    {
        names_of::<Self>()
    }
    fn from_query(q: &Query) -> Result<Self, ApiError>;
}

/// The names of the query parameters `T` documents.
pub fn names_of<T: IntoParams>() -> Vec<String> {
    T::into_params(|| Some(ParameterIn::Query))
        .into_iter()
        .map(|p| p.name)
        .collect()
}

impl<T: FromQuery + IntoParams, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let names = T::names();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let q = Query::parse(parts.uri.query(), &names)?;
        T::from_query(&q).map(Params)
    }
}

/// The parameters of an operation that takes none: any is refused by name.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NoParams {}

impl FromQuery for NoParams {
    fn from_query(_: &Query) -> Result<Self, ApiError> {
        Ok(NoParams {})
    }
}

/// The values a documented string enum takes (an `expand` parameter's), as its schema lists
/// them: what an operation accepts and what its document says are one list.
pub fn variants<T: utoipa::PartialSchema>() -> Vec<String> {
    match T::schema() {
        utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(o)) => o
            .enum_values
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Paging

/// Items per page of a keyset-paged list (keys, accounts) when `limit` is absent.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit` a keyset-paged list accepts.
pub const MAX_LIMIT: usize = 1000;

/// `limit` and `cursor`: the keyset paging of the key and account lists.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// Maximum number of items to return: default 100, at most 1000.
    #[param(value_type = Option<usize>, minimum = 1, maximum = 1000)]
    pub limit: usize,
    /// Pagination cursor from a previous response (its `next_cursor`, unchanged).
    #[param(value_type = Option<String>, min_length = 1)]
    pub cursor: Option<tollgate_query::Cursor>,
}

impl FromQuery for Page {
    fn from_query(q: &Query) -> Result<Self, ApiError> {
        Ok(Page {
            limit: q.limit(DEFAULT_LIMIT, MAX_LIMIT)?,
            cursor: q.cursor()?,
        })
    }
}

/// A paged list's own parameters `F` and its [`Page`], read from one query string. The
/// operation documents both (`params(F, Page)`, in the order it wants them shown); the
/// parameters taken are theirs together.
pub struct Paged<F> {
    pub filter: F,
    pub page: Page,
}

impl<F: IntoParams> IntoParams for Paged<F> {
    fn into_params(
        parameter_in: impl Fn() -> Option<ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        let mut params = F::into_params(&parameter_in);
        params.extend(Page::into_params(&parameter_in));
        params
    }
}

impl<F: FromQuery + IntoParams> FromQuery for Paged<F> {
    fn from_query(q: &Query) -> Result<Self, ApiError> {
        Ok(Paged {
            filter: F::from_query(q)?,
            page: Page::from_query(q)?,
        })
    }
}
