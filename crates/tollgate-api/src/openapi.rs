//! The OpenAPI 3.1 document served at `GET /v1/openapi.json`, generated from the code: each
//! handler's `#[utoipa::path]` (its method, path, parameters, body, answers and who may call
//! it) and the request and response types' schemas, collected by the router that serves them
//! ([`crate::router`]), so a route cannot be served without being documented. fal-compatible
//! operations are tagged apart from tollgate's own.

use crate::error::{ErrorDetail, ErrorResponse, ErrorType};
use axum::http::header;
use axum::response::IntoResponse;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

/// The operations' tags.
pub mod tags {
    /// fal's Platform API: same paths, parameters, fields and errors as fal's.
    pub const FAL: &str = "fal Platform API";
    /// tollgate's own: the operator's accounts, credits, keys, terms and catalog.
    pub const OPERATOR: &str = "Operator";
    /// tollgate's own: the gateway's request lifecycle, usage events and runner events.
    pub const GATEWAY: &str = "Gateway";
    pub const META: &str = "Meta";
    /// tollgate's own customer calls: invoices and billing documents, spending limits.
    pub const BILLING: &str = "Billing";
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tollgate",
        description = "tollgate prices every request to an AI model endpoint in the model's own \
            billing unit, draws the cost from prepaid credits in real time (a hold when it \
            starts, the actual cost when it ends; server errors, queue time and cold starts are \
            free), limits concurrency by purchase history, and answers billing queries in the \
            shape of fal's Platform APIs.\n\n\
            Three audiences, one server, everything JSON under `/v1`, authenticated with \
            `Authorization: Key <key_id>:<key_secret>`:\n\n\
            - **Operator** (`/v1/admin/...`, `OPERATOR` key): accounts, credits, customer keys, \
            account terms, the catalog, reconciliation.\n\
            - **Gateway** (`/v1/requests...`, `/v1/usage-events`, `/v1/runners/events`, \
            `OPERATOR` key): the life of one request (submit, start, complete or cancel), bulk \
            usage events and serverless runners' states. Every call is idempotent on its \
            request or event id.\n\
            - **fal Platform API** (customer `API` and `ADMIN` keys): the same paths, \
            parameters, fields and errors as fal's; a key sees only its own account.\n\n\
            Errors use fal's envelope `{\"error\": {\"type\", \"message\", ...}}`; a refused \
            field or parameter is named in `error.field`. Money is USD as a JSON number and, \
            wherever an amount is billed or held, the exact integer in a `*_nano_usd` field. \
            Request bodies are one JSON object and nothing after it; decimals are plain digits \
            with an optional point (`\"0.025\"`), USD amounts decimal strings.\n\n\
            A body is read only after the key is checked, and up to its call's limit: 1 MiB, \
            16 MiB for `POST /v1/usage-events` and `POST /v1/runners/events`, 4 MiB for `PUT /v1/admin/catalog`; a larger \
            one is refused with 413 `payload_too_large` naming the limit in \
            `error.limit_bytes`. Every answer carries `x-request-id`: the caller's (1 to 128 \
            visible ASCII characters), or a new one; an error envelope repeats it as \
            `error.request_id`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = tags::FAL, description = "fal's Platform API, for customer keys: the same \
            paths, parameters, fields and errors as fal's, so fal's clients and tooling work \
            against tollgate."),
        (name = tags::OPERATOR, description = "tollgate's own: accounts, credits, keys, terms \
            and the catalog. `OPERATOR` key."),
        (name = tags::GATEWAY, description = "tollgate's own: the life of one request, bulk \
            usage events and serverless runners' states. `OPERATOR` key."),
        (name = tags::BILLING, description = "tollgate's own customer calls: invoices and \
            billing documents, spending limits. Customer `ADMIN` key, own account only."),
        (name = tags::META, description = "This document; the server's liveness, readiness \
            and metrics (no key)."),
    ),
    // Schemas referenced only from parameters and headers, which the routes do not collect.
    components(schemas(
        ErrorResponse, ErrorDetail, ErrorType, Replayed,
        crate::gateway::NeedsRetry, crate::gateway::BillableUnits,
        crate::platform::account::BillingExpand, crate::platform::keys::KeysExpand,
        crate::platform::models::ModelsExpand, crate::platform::models::ModelStatus,
        crate::platform::usage::UsageExpand, crate::platform::usage::EventsExpand,
        crate::platform::usage::TimeframeName, crate::platform::usage::BoundToTimeframe,
        crate::platform::analytics::AnalyticsExpand,
        crate::platform::serverless::ServerlessExpand,
        crate::platform::serverless::AggregationName,
        crate::platform::requests::RequestStatusFilter, crate::platform::requests::RequestSort,
        crate::invoices::InvoiceStatusView, crate::invoices::InvoiceKindView,
        crate::focus::FocusSourceName, crate::focus::FocusExpand,
    )),
    modifiers(&Components),
)]
pub struct ApiDoc;

/// The security scheme and the shared error answers.
struct Components;

impl Modify for Components {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let mut key = ApiKeyValue::with_description(
            "Authorization",
            "`Key <key_id>:<key_secret>`. Scopes: `OPERATOR` (the platform), `ADMIN` and `API` \
             (a customer account; `ADMIN` includes `API`).",
        );
        key.name = "Authorization".into();
        components.add_security_scheme("Key", SecurityScheme::ApiKey(ApiKey::Header(key)));
        for (name, response) in shared_responses() {
            components
                .responses
                .insert(name.to_string(), RefOr::T(response));
        }
    }
}

fn error_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    ErrorResponse::name(),
                ))))
                .build(),
        )
        .build()
}

fn shared_responses() -> Vec<(&'static str, Response)> {
    vec![
        (
            "BadRequest",
            error_response(
                "`validation_error`: a path or query parameter, or the body, is not valid (the \
                 body must be one JSON object of the documented shape and nothing after it); \
                 `error.field` names the parameter or field. Nothing was written.",
            ),
        ),
        (
            "Unauthorized",
            error_response(
                "`authorization_error`: the `Authorization` header is missing, malformed, or \
                 names an unknown, wrong or revoked key.",
            ),
        ),
        (
            "ForbiddenOperator",
            error_response("`authorization_error`: the key is valid but not an `OPERATOR` key."),
        ),
        (
            "ForbiddenAdmin",
            error_response(
                "`authorization_error`: the key is not a customer key with `ADMIN` scope.",
            ),
        ),
        (
            "ForbiddenCustomer",
            error_response("`authorization_error`: the key is not a customer key."),
        ),
        (
            "PayloadTooLarge",
            error_response(
                "`payload_too_large`: the body is larger than the call's limit, named in \
                 `error.limit_bytes` (1 MiB unless the operation says otherwise). Nothing was \
                 written.",
            ),
        ),
        (
            "ServerError",
            error_response(
                "`server_error`: the operation could not be committed (nothing was applied; it \
                 is safe to retry).",
            ),
        ),
    ]
}

fn shared(name: &str) -> RefOr<Response> {
    RefOr::Ref(utoipa::openapi::Ref::new(format!(
        "#/components/responses/{name}"
    )))
}

/// The error answers every call of one audience may give; an operation lists its own after
/// them (a later entry for the same status replaces the shared one).
macro_rules! errors {
    ($name:ident, $forbidden:literal) => {
        pub struct $name;
        impl utoipa::IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<Response>> {
                [
                    ("400", shared("BadRequest")),
                    ("401", shared("Unauthorized")),
                    ("403", shared($forbidden)),
                    ("500", shared("ServerError")),
                ]
                .into_iter()
                .map(|(s, r)| (s.to_string(), r))
                .collect()
            }
        }
    };
}

errors!(OperatorErrors, "ForbiddenOperator");
errors!(AdminErrors, "ForbiddenAdmin");
errors!(CustomerErrors, "ForbiddenCustomer");

/// Header `idempotent-replayed: true`: the answer is the replay of an earlier identical call;
/// nothing was applied again.
pub struct Replayed;

impl Replayed {
    /// The header when `replayed`, else none.
    pub fn header(replayed: bool) -> axum::http::HeaderMap {
        let mut h = axum::http::HeaderMap::new();
        if replayed {
            h.insert(
                "idempotent-replayed",
                axum::http::HeaderValue::from_static("true"),
            );
        }
        h
    }
}

impl PartialSchema for Replayed {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(["true"]))
            .description(Some(
                "Present (`true`) when this answer is the replay of an earlier identical call: \
                 nothing was applied again.",
            ))
            .into()
    }
}

impl ToSchema for Replayed {}

/// The document, generated once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = crate::routes().into_openapi();
        too_large(&mut doc);
        doc
    })
}

/// Every operation that takes a body may refuse one over its limit (413).
fn too_large(doc: &mut utoipa::openapi::OpenApi) {
    for item in doc.paths.paths.values_mut() {
        for op in [
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            if op.request_body.is_some() {
                op.responses
                    .responses
                    .entry("413".to_string())
                    .or_insert_with(|| shared("PayloadTooLarge"));
            }
        }
    }
}

/// The document as served.
pub fn json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        document()
            .to_pretty_json()
            .expect("the document serializes")
    })
}

/// This document
///
/// The OpenAPI 3.1 document of tollgate's HTTP API, generated from the code that serves it.
/// No authentication.
#[utoipa::path(
    get, path = "/v1/openapi.json", tag = tags::META, operation_id = "getOpenApi",
    security(()),
    responses((status = 200, description = "The document.", content_type = "application/json",
        body = Object))
)]
pub async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], json())
}
