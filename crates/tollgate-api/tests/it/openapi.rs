//! The OpenAPI document served at `GET /v1/openapi.json` is generated from the code that
//! serves it, and kept true here:
//! 1. it is OpenAPI 3.1, internally consistent, and snapshot-tested, so an API change is a
//!    visible diff;
//! 2. every route is registered with its documentation, and every documented operation is
//!    served;
//! 3. real responses validate against the schemas it declares for their path, method and
//!    status (an undocumented status is a failure), and the requests sent agree with its
//!    request schemas: one test per area of the API, each on a server of its own, and every
//!    documented operation is called with a success by one of them.

use crate::harness::{TestApp, SAMPLE_CATALOG};
use crate::schema;
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use tollgate_api::payments::stripe::signature;
use tollgate_api::testing::stripe::{StripeStandIn, WEBHOOK_SECRET};
use tollgate_api::webhooks::WebhookSettings;
use tollgate_store::testing::Backend;

const ROUTER_SOURCE: &str = include_str!("../../src/lib.rs");
const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The document, as generated.
fn generated() -> Value {
    serde_json::from_str(tollgate_api::openapi::json()).expect("the document is JSON")
}

async fn fetch_document(app: &TestApp) -> Value {
    let r = app
        .client
        .get(format!("{}/v1/openapi.json", app.address))
        .send()
        .await
        .expect("GET /v1/openapi.json");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let text = r.text().await.expect("body");
    serde_json::from_str(&text).expect("the served document is JSON")
}

// ---------------------------------------------------------------------------------------------
// The document: lookups and schema validation.

struct Doc {
    root: Value,
}

impl Doc {
    /// Resolves a local `$ref` (`#/components/...`).
    fn resolve(&self, r: &str) -> &Value {
        let ptr = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("non-local $ref {r}"));
        self.root
            .pointer(ptr)
            .unwrap_or_else(|| panic!("dangling $ref {r}"))
    }

    /// Follows an object's own `$ref`, if any.
    fn deref<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => self.deref(self.resolve(r)),
            None => v,
        }
    }

    /// The documented path template matching a concrete path (query string ignored).
    fn template(&self, path: &str) -> Option<String> {
        let path = path.split('?').next().unwrap_or(path);
        let segs: Vec<&str> = path.split('/').collect();
        self.root["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .find(|t| {
                let ts: Vec<&str> = t.split('/').collect();
                ts.len() == segs.len()
                    && ts
                        .iter()
                        .zip(&segs)
                        .all(|(t, s)| (t.starts_with('{') && t.ends_with('}')) || t == s)
            })
            .cloned()
    }

    fn operation(&self, method: &Method, template: &str) -> &Value {
        let op = &self.root["paths"][template][method.as_str().to_ascii_lowercase()];
        assert!(
            op.is_object(),
            "{method} {template} is not documented in the OpenAPI document"
        );
        op
    }

    /// Validates `instance` against `schema`, one of this document's schemas, formats included.
    fn validate(&self, schema: &Value, instance: &Value) -> Result<(), String> {
        schema::validate(&self.root, schema, instance, true)
    }

    fn component(&self, name: &str) -> Value {
        json!({ "$ref": format!("#/components/schemas/{name}") })
    }
}

// ---------------------------------------------------------------------------------------------
// Driving the API and checking every answer against the document.

enum Body {
    None,
    /// A body the document's request schema must accept.
    Json(Value),
    /// A body the document's request schema must refuse (and the server too).
    Invalid(Value),
    /// A body of the documented shape that the server refuses for a reason the schema does not
    /// express (an unknown account, a semantic limit).
    Unchecked(Value),
    /// Raw bytes with a content type.
    Raw(String, &'static str),
    /// A payment provider's event: JSON with its `Stripe-Signature` header.
    Signed(String, String),
}

struct Resp {
    status: u16,
    headers: HeaderMap,
    json: Value,
}

impl Resp {
    fn error_type(&self) -> &str {
        self.json["error"]["type"].as_str().unwrap_or("")
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Custom headers whose presence the document must declare.
const CUSTOM_HEADERS: [&str; 3] = [
    "idempotent-replayed",
    "x-fal-needs-retry",
    "x-fal-billable-units",
];

/// (method, template) -> the statuses its calls were answered.
type Seen = BTreeMap<(String, String), BTreeSet<u16>>;

/// One area's calls: a server of its own (with a payment provider, the stand-in), the
/// document it serves, and what its calls were answered.
struct Flow {
    s: TestApp,
    stripe: StripeStandIn,
    doc: Doc,
    seen: Seen,
}

fn key(k: &str) -> Option<String> {
    Some(format!("Key {k}"))
}

impl Flow {
    /// A new server with a payment provider (the stand-in), and the document it serves.
    async fn spawn() -> Flow {
        let stripe = StripeStandIn::start().await;
        let s = TestApp::spawn_with_payments(
            &Backend::Sqlite,
            None,
            stripe.settings(),
            WebhookSettings::default(),
        )
        .await;
        let root = fetch_document(&s).await;
        Flow {
            s,
            stripe,
            doc: Doc { root },
            seen: Seen::new(),
        }
    }

    /// The reconciliation, as the operator reads it, is clean after the area's calls; what
    /// they were answered.
    async fn finish(mut self) -> Seen {
        let r = self.get("/v1/admin/reconciliation", self.op()).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json["clean"], true, "{}", r.json);
        assert_eq!(r.json["revenue_nano_usd"], r.json["billed_nano_usd"]);
        self.s.assert_reconciled().await;
        self.seen
    }

    /// acme, without credits, and its API and ADMIN keys: `(api, admin)`.
    async fn customer(&mut self) -> (String, String) {
        self.create_account("acme").await;
        let api = self.create_key("acme", "API").await;
        let admin = self.create_key("acme", "ADMIN").await;
        (api, admin)
    }

    /// [`Flow::customer`] with 25 USD paid (`p-1`) and 1.50 USD free (`gift-1`): a balance of
    /// 26.50 USD.
    async fn customer_with_credits(&mut self) -> (String, String) {
        let keys = self.customer().await;
        assert_eq!(self.purchase("acme", "p-1", "25.00").await.status, 201);
        let r = self
            .post(
                "/v1/admin/accounts/acme/purchases",
                self.op(),
                Body::Json(json!({ "purchase_id": "gift-1", "amount_usd": "1.5", "kind": "free" })),
            )
            .await;
        assert_eq!(r.status, 201);
        keys
    }

    /// An account billed by invoice.
    async fn invoice_account(&mut self, username: &str) {
        let r = self
            .post(
                "/v1/admin/accounts",
                self.op(),
                Body::Json(json!({ "username": username, "billing": "invoice" })),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.json);
    }

    fn op(&self) -> Option<String> {
        key(&self.s.operator_key)
    }

    async fn call(&mut self, method: Method, path: &str, auth: Option<String>, body: Body) -> Resp {
        let template = self
            .doc
            .template(path)
            .unwrap_or_else(|| panic!("{method} {path}: no documented path matches"));
        let op = self.doc.operation(&method, &template).clone();
        let what = format!("{method} {path}");

        // The request against the documented request body.
        let request_schema = |ct: &str| -> Value {
            let rb = self.doc.deref(&op["requestBody"]);
            rb["content"][ct]["schema"].clone()
        };
        let mut req = self
            .s
            .client
            .request(method.clone(), format!("{}{}", self.s.address, path));
        if let Some(a) = &auth {
            req = req.header(AUTHORIZATION, a);
        }
        match body {
            Body::None => {}
            Body::Json(v) => {
                let schema = request_schema("application/json");
                assert!(
                    schema.is_object(),
                    "{what}: no JSON request body is documented"
                );
                if let Err(e) = self.doc.validate(&schema, &v) {
                    panic!("{what}: the document refuses a valid request body {v}:\n  {e}");
                }
                req = req.json(&v);
            }
            Body::Invalid(v) => {
                let schema = request_schema("application/json");
                assert!(
                    schema.is_object(),
                    "{what}: no JSON request body is documented"
                );
                assert!(
                    self.doc.validate(&schema, &v).is_err(),
                    "{what}: the document accepts a request body the server refuses: {v}"
                );
                req = req.json(&v);
            }
            Body::Unchecked(v) => req = req.json(&v),
            Body::Raw(text, ct) => req = req.header(CONTENT_TYPE, ct).body(text),
            Body::Signed(text, signature) => {
                req = req
                    .header(CONTENT_TYPE, "application/json")
                    .header("stripe-signature", signature)
                    .body(text)
            }
        }
        let r = req.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.expect("body");

        // The answer against the documented response.
        let documented = &op["responses"][status.to_string()];
        assert!(
            documented.is_object(),
            "{what}: status {status} is not documented for {method} {template}; body: {text}"
        );
        let documented = self.doc.deref(documented);
        let schema = &documented["content"]["application/json"]["schema"];
        // An answer documented without content (a 204) must have an empty body.
        let json = if documented.get("content").is_none() {
            assert!(
                text.is_empty(),
                "{what}: answer {status} documents no body, got: {text}"
            );
            Value::Null
        } else if documented["content"]["text/csv"].is_object() {
            // A CSV download (the FOCUS report): its type, and a header line.
            assert!(
                headers
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("text/csv")),
                "{what}: content type of a CSV answer"
            );
            assert!(
                text.contains("\r\n"),
                "{what}: a CSV with a header line: {text}"
            );
            Value::Null
        } else {
            assert!(
                schema.is_object(),
                "{what}: status {status} documents no application/json body"
            );
            assert_eq!(
                headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()),
                Some("application/json"),
                "{what}: content type of a JSON answer"
            );
            let json: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{what}: answer {status} is not JSON ({e}): {text}"));
            if let Err(e) = self.doc.validate(schema, &json) {
                panic!(
                    "{what}: answer {status} does not match the document:\n  {e}\nbody: {}",
                    serde_json::to_string_pretty(&json).expect("json")
                );
            }
            json
        };
        // Headers: the required ones are present, every present one matches its schema, and
        // the custom headers only appear where documented.
        let declared = documented["headers"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for (name, h) in &declared {
            let h = self.doc.deref(h);
            match headers.get(name.as_str()).and_then(|v| v.to_str().ok()) {
                Some(v) => {
                    if let Err(e) = self.doc.validate(&h["schema"], &json!(v)) {
                        panic!("{what}: header {name}: {v:?} does not match: {e}");
                    }
                }
                None => assert!(
                    !h["required"].as_bool().unwrap_or(false),
                    "{what}: required header {name} is missing"
                ),
            }
        }
        for name in CUSTOM_HEADERS {
            if headers.contains_key(name) {
                assert!(
                    declared.contains_key(name),
                    "{what}: header {name} is sent but not documented for status {status}"
                );
            }
        }
        self.seen
            .entry((method.to_string(), template))
            .or_default()
            .insert(status);
        Resp {
            status,
            headers,
            json,
        }
    }

    async fn get(&mut self, path: &str, auth: Option<String>) -> Resp {
        self.call(Method::GET, path, auth, Body::None).await
    }
    async fn post(&mut self, path: &str, auth: Option<String>, body: Body) -> Resp {
        self.call(Method::POST, path, auth, body).await
    }
    async fn put(&mut self, path: &str, auth: Option<String>, body: Body) -> Resp {
        self.call(Method::PUT, path, auth, body).await
    }

    async fn create_account(&mut self, username: &str) {
        let r = self
            .post(
                "/v1/admin/accounts",
                self.op(),
                Body::Json(json!({ "username": username })),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.json);
    }

    async fn create_key(&mut self, username: &str, scope: &str) -> String {
        let r = self
            .post(
                &format!("/v1/admin/accounts/{username}/keys"),
                self.op(),
                Body::Json(json!({ "scope": scope, "alias": format!("{scope} key") })),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.json);
        assert_eq!(r.json["scope"], scope);
        r.json["key"].as_str().expect("key").to_string()
    }

    async fn purchase(&mut self, username: &str, id: &str, amount: &str) -> Resp {
        self.post(
            &format!("/v1/admin/accounts/{username}/purchases"),
            self.op(),
            Body::Json(json!({ "purchase_id": id, "amount_usd": amount })),
        )
        .await
    }

    async fn submit(&mut self, id: &str, endpoint: &str, caller: &str) -> Resp {
        self.post(
            "/v1/requests",
            self.op(),
            Body::Json(json!({ "request_id": id, "endpoint_id": endpoint, "caller_key": caller })),
        )
        .await
    }

    async fn start(&mut self, id: &str) -> Resp {
        self.post(&format!("/v1/requests/{id}/start"), self.op(), Body::None)
            .await
    }

    async fn complete(&mut self, id: &str, body: Value) -> Resp {
        self.post(
            &format!("/v1/requests/{id}/complete"),
            self.op(),
            Body::Json(body),
        )
        .await
    }
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn full_hd() -> Value {
    json!({ "images": [{ "width": 1920, "height": 1080 }] })
}

/// A usage event of one 1024x1024 image at `now`.
fn usage_event(now: &str, id: &str, endpoint: &str, user: &str) -> Value {
    json!({
        "event_id": id,
        "endpoint_id": endpoint,
        "username": user,
        "timestamp": now,
        "status_code": 200,
        "output": { "images": [{ "width": 1024, "height": 1024 }] },
        "queue_seconds": "1.5",
        "inference_seconds": 2.25,
    })
}

// ---------------------------------------------------------------------------------------------
// 1. The served document is the generated one, and matches its snapshot.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_is_the_generated_one_and_matches_its_snapshot() {
    let app = TestApp::spawn().await;
    let doc = fetch_document(&app).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc, generated(), "the served document is the generated one");
    insta::assert_json_snapshot!("openapi_document", doc);
    app.assert_reconciled().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Every route is documented, and every documented operation is routed.

fn operations_in_document(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in HTTP_METHODS {
            if item.get(m).is_some() {
                out.insert((m.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    out
}

/// The router registers its routes only through `routes!`, which registers each handler's
/// documentation with it: a route cannot be served undocumented.
#[test]
fn routes_are_registered_only_with_their_documentation() {
    // `.merge(pages)` adds the dashboard's HTML pages, which are not API operations.
    let code: String = ROUTER_SOURCE
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .filter(|l| l.trim() != ".merge(pages)")
        .collect::<Vec<_>>()
        .join("\n");
    for bypass in [
        ".route(",
        ".nest(",
        ".merge(",
        ".route_service(",
        ".nest_service(",
    ] {
        assert!(
            !code.contains(bypass),
            "the router uses `{bypass}`, which serves routes without documenting them"
        );
    }
    assert!(code.matches("routes!(").count() >= 20);
}

/// Each documented operation is served: with no key, it answers anything but the router's
/// fallback (404 "no such path") or 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served() {
    let app = TestApp::spawn().await;
    let ops = operations_in_document(&generated());
    assert!(ops.len() >= 24, "{ops:?}");
    for (method, path) in &ops {
        let concrete = path
            .replace("{username}", "nobody")
            .replace("{request_id}", "0193e3b0-6d2a-7c41-9f0e-2b8f4c6a1d53")
            .replace("{key_id}", "k1")
            .replace("{invoice_id}", "inv_2026_000001")
            .replace("{month}", "2026-05")
            .replace("{webhook_id}", "wh_1")
            .replace("{delivery_id}", "dlv_1")
            .replace("{limit_id}", "lim_0")
            .replace("{top_up_id}", "top_1")
            .replace("{purchase_id}", "p-1")
            .replace("{owner}", "nobody")
            .replace("{name}", "my-app");
        assert!(!concrete.contains('{'), "{path}: a parameter to fill in");
        let r = app
            .client
            .request(
                Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{concrete}", app.address),
            )
            .send()
            .await
            .expect("answers");
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_ne!(status, 405, "{method} {path}");
        assert!(
            !(status == 404
                && body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("no such path"))),
            "{method} {path} is documented but not served"
        );
    }
    app.assert_reconciled().await;
}

#[test]
fn document_is_internally_consistent() {
    let root = generated();
    let doc = Doc { root };
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc.root, &mut all);
    assert!(!all.is_empty());
    for r in &all {
        doc.resolve(r);
    }
    let scheme = &doc.root["components"]["securitySchemes"]["Key"];
    assert_eq!(scheme["type"], "apiKey");
    assert_eq!(scheme["in"], "header");
    assert_eq!(scheme["name"], "Authorization");
    let mut ids = BTreeSet::new();
    for (path, item) in doc.root["paths"].as_object().expect("paths") {
        for m in HTTP_METHODS {
            let Some(op) = item.get(m) else { continue };
            let what = format!("{m} {path}");
            assert!(ids.insert(op["operationId"].as_str().expect("operationId").to_string()));
            assert!(
                op["description"].as_str().is_some_and(|d| d.len() > 40),
                "{what}: describe it"
            );
            let security = op["security"].as_array().expect("explicit security");
            for req in security {
                // `{}`: no key needed.
                if req.as_object().is_some_and(|r| r.is_empty()) {
                    continue;
                }
                for scope in req["Key"].as_array().expect("the Key scheme") {
                    assert!(["OPERATOR", "ADMIN", "API"].contains(&scope.as_str().unwrap()));
                }
            }
            let params: BTreeSet<String> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .map(|p| p["name"].as_str().expect("name").to_string())
                        .collect()
                })
                .unwrap_or_default();
            let in_path: BTreeSet<String> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .map(str::to_string)
                .collect();
            assert_eq!(params, in_path, "{what}: path parameters");
            for (status, r) in op["responses"].as_object().expect("responses") {
                let r = doc.deref(r);
                assert!(r["description"].is_string(), "{what} {status}: description");
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = &r["content"]["application/json"]["schema"];
                    let sample = json!({ "error": { "type": "not_found", "message": "x" } });
                    let missing = json!({ "error": { "message": "x" } });
                    if schema["$ref"] == "#/components/schemas/ErrorResponse" {
                        assert!(doc.validate(schema, &sample).is_ok());
                    }
                    assert!(
                        doc.validate(schema, &missing).is_err(),
                        "{what} {status}: not the error envelope"
                    );
                }
            }
        }
    }
}
// ---------------------------------------------------------------------------------------------
// 3. Real responses validate against the document, area by area.

/// The document itself, authentication, the probes and metrics, an unknown path.
async fn meta_and_authentication() -> Seen {
    let mut f = Flow::spawn().await;
    // --- the document itself
    let r = f.get("/v1/openapi.json", None).await;
    assert_eq!(r.status, 200);

    // --- authentication: 401 without, with a malformed and with an unknown key
    let r = f.get("/v1/admin/reconciliation", None).await;
    assert_eq!((r.status, r.error_type()), (401, "authorization_error"));
    let r = f
        .get("/v1/admin/reconciliation", Some("Bearer abc".into()))
        .await;
    assert_eq!(r.status, 401);
    let r = f
        .get("/v1/admin/reconciliation", key("no-such-key:secret"))
        .await;
    assert_eq!(r.status, 401);

    // --- the operator's probes and metrics, without a key
    let r = f.get("/healthz", None).await;
    assert_eq!((r.status, r.json["status"].as_str()), (200, Some("ok")));
    let r = f.get("/readyz", None).await;
    assert_eq!((r.status, r.json["status"].as_str()), (200, Some("ready")));
    // The metrics are text, not JSON: checked here, not by `call`.
    let resp =
        f.s.client
            .get(format!("{}/metrics", f.s.address))
            .send()
            .await
            .expect("GET /metrics");
    assert_eq!(resp.status().as_u16(), 200);
    let documented = f.doc.operation(&Method::GET, "/metrics")["responses"]["200"]["content"]
        .as_object()
        .expect("documented content")
        .keys()
        .cloned()
        .collect::<Vec<_>>();
    let served = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        served.split(';').next(),
        documented.first().map(String::as_str),
        "the metrics' content type is the documented one: {served}"
    );
    assert!(resp
        .text()
        .await
        .expect("text")
        .contains("tollgate_http_requests_total{"));
    f.seen
        .entry(("GET".to_string(), "/metrics".to_string()))
        .or_default()
        .insert(200);

    // --- an unknown path answers the error envelope
    let resp =
        f.s.client
            .get(format!("{}/v1/no-such-thing", f.s.address))
            .send()
            .await
            .expect("GET");
    assert_eq!(resp.status().as_u16(), 404);
    let body: Value = resp.json().await.expect("JSON");
    let envelope = f.doc.component("ErrorResponse");
    f.doc.validate(&envelope, &body).expect("error envelope");

    f.finish().await
}

/// Accounts, their keys, purchases, adjustments, unlocking, portal sessions, the operator's keys and account list.
async fn accounts_keys_and_purchases() -> Seen {
    let mut f = Flow::spawn().await;
    // --- accounts
    f.create_account("acme").await;
    let r = f
        .post(
            "/v1/admin/accounts",
            f.op(),
            Body::Json(json!({ "username": "acme" })),
        )
        .await;
    assert_eq!((r.status, r.error_type()), (409, "conflict"));
    let r = f
        .post(
            "/v1/admin/accounts",
            f.op(),
            Body::Invalid(json!({ "username": 5 })),
        )
        .await;
    assert_eq!((r.status, r.error_type()), (400, "validation_error"));
    assert_eq!(r.json["error"]["field"], "username");
    let r = f
        .post(
            "/v1/admin/accounts",
            f.op(),
            Body::Raw("{\"username\": ".into(), "application/json"),
        )
        .await;
    assert_eq!((r.status, r.error_type()), (400, "validation_error"));
    let r = f
        .post(
            "/v1/admin/accounts",
            f.op(),
            Body::Invalid(json!({ "username": "x", "plan": "gold" })),
        )
        .await;
    assert_eq!(r.status, 400, "unknown fields are refused");
    let r = f
        .post(
            "/v1/admin/accounts",
            f.op(),
            Body::Json(json!({ "username": "bigco", "billing": "invoice" })),
        )
        .await;
    assert_eq!(
        (r.status, r.json["billing"].as_str()),
        (201, Some("invoice"))
    );

    let r = f.get("/v1/admin/accounts/acme", f.op()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["locked"], true, "no credits yet: locked");
    assert_eq!(
        r.json["terms"]["in_force"]["concurrency_limit"],
        Value::Null
    );
    let r = f.get("/v1/admin/accounts/nobody", f.op()).await;
    assert_eq!((r.status, r.error_type()), (404, "not_found"));
    let r = f.get("/v1/admin/accounts/not%20valid", f.op()).await;
    assert_eq!(r.status, 400);

    // --- keys
    let api = f.create_key("acme", "API").await;
    let admin = f.create_key("acme", "ADMIN").await;
    let r = f
        .post(
            "/v1/admin/accounts/acme/keys",
            f.op(),
            Body::Invalid(json!({ "scope": "OPERATOR" })),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = f
        .post(
            "/v1/admin/accounts/nobody/keys",
            f.op(),
            Body::Json(json!({ "scope": "API", "alias": "ci" })),
        )
        .await;
    assert_eq!(r.status, 404);

    // A customer key on operator endpoints: 403.
    let r = f.get("/v1/admin/reconciliation", key(&api)).await;
    assert_eq!((r.status, r.error_type()), (403, "authorization_error"));
    let r = f
        .post(
            "/v1/admin/accounts",
            key(&admin),
            Body::Json(json!({ "username": "sneaky" })),
        )
        .await;
    assert_eq!(r.status, 403);

    // --- a locked account cannot submit: 403 account_locked
    let r = f.submit(&uuid(), "fal-ai/flux/dev", &api).await;
    assert_eq!((r.status, r.error_type()), (403, "account_locked"));
    assert_eq!(r.json["error"]["balance_nano_usd"], 0);

    // --- purchases
    let r = f.purchase("acme", "p-1", "25.00").await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json["amount_nano_usd"], 25_000_000_000i64);
    assert_eq!(r.json["locked"], false);
    assert_eq!(r.json["concurrency_limit"], 4);
    assert!(r.header("idempotent-replayed").is_none());
    let first = r.json.clone();
    let r = f.purchase("acme", "p-1", "25.00").await;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("idempotent-replayed"), Some("true"));
    assert_eq!(r.json, first, "a replay answers the first answer");
    let r = f.purchase("acme", "p-1", "26.00").await;
    assert_eq!((r.status, r.error_type()), (409, "conflict"));
    let r = f
        .post(
            "/v1/admin/accounts/acme/purchases",
            f.op(),
            Body::Invalid(json!({ "purchase_id": "p-2", "amount_usd": 25 })),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json["error"]["field"], "amount_usd");
    let r = f
        .post(
            "/v1/admin/accounts/acme/purchases",
            f.op(),
            Body::Unchecked(json!({ "purchase_id": "p-3", "amount_usd": "0" })),
        )
        .await;
    assert_eq!(r.status, 400, "zero is refused");
    let r = f.purchase("nobody", "p-1", "1.00").await;
    assert_eq!((r.status, r.error_type()), (404, "not_found"));

    // --- adjustments and unlock (a debit and a credit of the same amount)
    for (id, amount, nanos) in [
        ("adj-1", "-0.50", -500_000_000i64),
        ("adj-2", "0.5", 500_000_000),
    ] {
        let r = f
            .post(
                "/v1/admin/accounts/acme/adjustments",
                f.op(),
                Body::Json(json!({ "adjustment_id": id, "amount_usd": amount, "reason": "fix" })),
            )
            .await;
        assert_eq!((r.status, &r.json["amount_nano_usd"]), (201, &json!(nanos)));
    }
    let r = f
        .post(
            "/v1/admin/accounts/acme/unlock",
            f.op(),
            Body::Json(json!({ "reason": "not locked: nothing to lift" })),
        )
        .await;
    assert_eq!((r.status, &r.json["lock_reason"]), (200, &Value::Null));
    let r = f
        .post(
            "/v1/admin/accounts/acme/portal-sessions",
            f.op(),
            Body::None,
        )
        .await;
    assert_eq!(r.status, 201);
    assert!(r.json["url"]
        .as_str()
        .is_some_and(|u| u.starts_with("/dashboard/link/")));
    let r = f
        .call(
            Method::DELETE,
            "/v1/admin/accounts/acme/portal-sessions",
            f.op(),
            Body::None,
        )
        .await;
    assert_eq!((r.status, &r.json["ended"]), (200, &json!(0)));

    // --- the operator's keys and accounts
    let r = f.get("/v1/admin/accounts?q=ac&limit=1", f.op()).await;
    assert_eq!(r.status, 200, "{}", r.json);
    let r = f.get("/v1/admin/accounts?q=a%2Fb", f.op()).await;
    assert_eq!(
        (r.status, r.json["error"]["field"].as_str()),
        (400, Some("q"))
    );
    let r = f.get("/v1/admin/accounts/acme/keys?limit=1", f.op()).await;
    assert_eq!((r.status, r.json["has_more"].as_bool()), (200, Some(true)));
    let r = f
        .post(
            "/v1/admin/operator-keys",
            f.op(),
            Body::Json(json!({ "alias": "ci" })),
        )
        .await;
    assert_eq!(r.status, 201);
    let made = r.json["key_id"].as_str().expect("key_id").to_string();
    let r = f.get("/v1/admin/operator-keys", f.op()).await;
    assert_eq!(r.status, 200);
    for status in [204, 204] {
        let r = f
            .call(
                Method::DELETE,
                &format!("/v1/admin/keys/{made}"),
                f.op(),
                Body::None,
            )
            .await;
        assert_eq!(r.status, status);
    }
    let r = f
        .call(
            Method::DELETE,
            "/v1/admin/keys/no-such-key",
            f.op(),
            Body::None,
        )
        .await;
    assert_eq!((r.status, r.error_type()), (404, "not_found"));

    f.finish().await
}

/// A top-up invoice and its PDF, the issuer, closing periods, paying and voiding usage invoices, payments, FOCUS, credit activity and statements.
async fn invoices_statements_and_payment_history() -> Seen {
    let mut f = Flow::spawn().await;
    let (api, admin) = f.customer().await;
    assert_eq!(f.purchase("acme", "p-1", "25.00").await.status, 201);
    f.invoice_account("bigco").await;
    let now = chrono::Utc::now().to_rfc3339();
    let event = |id: &str, endpoint: &str, user: &str| usage_event(&now, id, endpoint, user);
    // --- invoices: the paid purchase's top-up invoice, and the issuer printed on it
    let r = f
        .put(
            "/v1/admin/issuer",
            f.op(),
            Body::Json(json!({ "name": "Example AI Inc.", "address": "1 Main St" })),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = f
        .put(
            "/v1/admin/issuer",
            f.op(),
            Body::Invalid(json!({ "name": "Example AI Inc." })),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = f.get("/v1/account/invoices", key(&admin)).await;
    assert_eq!(r.status, 200);
    let invoice_id = r.json["invoices"][0]["invoice_id"]
        .as_str()
        .expect("an invoice")
        .to_string();
    let r = f
        .get(&format!("/v1/account/invoices/{invoice_id}"), key(&admin))
        .await;
    assert_eq!(
        (r.status, r.json["total_nano_usd"].clone()),
        (200, json!(25_000_000_000i64))
    );
    let r = f.get("/v1/account/invoices/inv_1_1", key(&admin)).await;
    assert_eq!((r.status, r.error_type()), (404, "not_found"));
    // The invoice's PDF is not JSON: its success is checked here, not by `call`; its errors
    // are the JSON envelope, checked by `call`.
    let template = "/v1/account/invoices/{invoice_id}/pdf";
    let resp =
        f.s.client
            .get(format!(
                "{}/v1/account/invoices/{invoice_id}/pdf",
                f.s.address
            ))
            .header(AUTHORIZATION, format!("Key {admin}"))
            .send()
            .await
            .expect("GET the invoice's PDF");
    assert_eq!(resp.status().as_u16(), 200);
    let documented = &f.doc.operation(&Method::GET, template)["responses"]["200"];
    let content = documented["content"]
        .as_object()
        .expect("documented content");
    assert_eq!(
        content.keys().collect::<Vec<_>>(),
        ["application/pdf"],
        "the PDF's documented content"
    );
    assert!(documented["headers"]["Content-Disposition"].is_object());
    assert_eq!(
        resp.headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("application/pdf")
    );
    assert!(resp
        .headers()
        .get("content-disposition")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("inline; filename=")));
    assert!(resp.bytes().await.expect("body").starts_with(b"%PDF-"));
    f.seen
        .entry(("GET".to_string(), template.to_string()))
        .or_default()
        .insert(200);
    let r = f.get("/v1/account/invoices/inv_1_1/pdf", key(&admin)).await;
    assert_eq!((r.status, r.error_type()), (404, "not_found"));
    let r = f
        .get(&format!("/v1/account/invoices/{invoice_id}/pdf"), key(&api))
        .await;
    assert_eq!(r.status, 403);
    let r = f.get("/v1/account/invoices", key(&api)).await;
    assert_eq!(r.status, 403);
    let r = f.get("/v1/admin/invoices?username=acme", f.op()).await;
    assert_eq!(r.status, 200);
    // Closing billing periods: acme is prepaid, so nothing is issued; a future `until` is
    // refused; a top-up invoice is paid already; an unknown invoice is not found.
    let r = f
        .post(
            "/v1/admin/invoices/close",
            f.op(),
            Body::Json(json!({ "username": "acme" })),
        )
        .await;
    assert_eq!((r.status, r.json["issued"].clone()), (200, json!([])));
    let r = f
        .post(
            "/v1/admin/invoices/close",
            f.op(),
            Body::Unchecked(json!({ "until": "2999-01-01T00:00:00Z" })),
        )
        .await;
    assert_eq!((r.status, r.error_type()), (400, "validation_error"));
    let r = f
        .post(
            "/v1/admin/invoices/close",
            key(&admin),
            Body::Json(json!({})),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = f
        .post(
            &format!("/v1/admin/invoices/{invoice_id}/pay"),
            f.op(),
            Body::Json(json!({ "payment_reference": "wire 1" })),
        )
        .await;
    assert_eq!((r.status, r.error_type()), (409, "conflict"));
    let r = f
        .post(
            "/v1/admin/invoices/inv_2026_999999/void",
            f.op(),
            Body::Json(json!({ "reason": "duplicate" })),
        )
        .await;
    assert_eq!((r.status, r.error_type()), (404, "not_found"));
    let r = f
        .post(
            &format!("/v1/admin/invoices/{invoice_id}/void"),
            f.op(),
            Body::Unchecked(json!({ "reason": "" })),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = f.get("/v1/account/payments", key(&admin)).await;
    assert_eq!(
        (r.status, r.json["payments"][0]["invoice_id"].as_str()),
        (200, Some(invoice_id.as_str()))
    );
    let r = f
        .get(
            "/v1/account/focus?source=estimate&timezone=UTC",
            key(&admin),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = f
        .get(
            "/v1/account/focus?source=invoice&billing_month=2026-13",
            key(&admin),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = f.get("/v1/account/focus?source=estimate", key(&api)).await;
    assert_eq!(r.status, 403);
    let r = f.get("/v1/account/payments?limit=0", key(&admin)).await;
    assert_eq!(r.status, 400);
    let r = f.get("/v1/account/payments", key(&api)).await;
    assert_eq!(r.status, 403);
    let r = f.get("/v1/account/credit-activity", key(&admin)).await;
    assert_eq!((r.status, r.json["activity"].is_array()), (200, true));
    let r = f
        .get(
            "/v1/account/credit-activity?start=2026-02-01&end=2026-01-01",
            key(&admin),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = f.get("/v1/account/credit-activity", key(&api)).await;
    assert_eq!(r.status, 403);
    let month = tollgate_core::machine::month_of(tollgate_core::Timestamp(
        chrono::Utc::now().timestamp_millis(),
    ));
    let month = format!("{}-{:02}", month / 100, month % 100);
    let r = f
        .get(&format!("/v1/account/statements/{month}"), key(&admin))
        .await;
    assert_eq!(
        (r.status, r.json["month"].as_str()),
        (200, Some(month.as_str()))
    );
    let r = f.get("/v1/account/statements/2026-13", key(&admin)).await;
    assert_eq!(r.status, 400);
    let r = f.get("/v1/account/statements/2026-05", key(&api)).await;
    assert_eq!(r.status, 403);
    let r = f
        .post(
            "/v1/admin/accounts/acme/purchases",
            f.op(),
            Body::Json(json!({ "purchase_id": "gift-1", "amount_usd": "1.5", "kind": "free" })),
        )
        .await;
    assert_eq!((r.status, r.json["kind"].as_str()), (201, Some("free")));

    let r = f.get("/v1/admin/accounts/acme", f.op()).await;
    assert_eq!(r.json["balance_nano_usd"], 26_500_000_000i64);
    assert_eq!(r.json["paid_lifetime_nano_usd"], 25_000_000_000i64);

    // Usage invoices: two invoice-billed accounts charged, closed, one paid and one voided.
    let r = f
        .post(
            "/v1/admin/accounts",
            f.op(),
            Body::Json(json!({ "username": "bigco2", "billing": "invoice" })),
        )
        .await;
    assert_eq!(r.status, 201);
    let r = f
        .post(
            "/v1/usage-events",
            f.op(),
            Body::Json(json!({ "events": [
                event("evt-b1", "fal-ai/flux/dev", "bigco"),
                event("evt-b2", "fal-ai/flux/dev", "bigco2"),
            ] })),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = f
        .post("/v1/admin/invoices/close", f.op(), Body::Json(json!({})))
        .await;
    assert_eq!(r.status, 200);
    let issued: Vec<String> = r.json["issued"]
        .as_array()
        .expect("issued")
        .iter()
        .map(|i| i.as_str().expect("an id").to_string())
        .collect();
    assert_eq!(issued.len(), 2, "{}", r.json);
    let r = f
        .post(
            &format!("/v1/admin/invoices/{}/pay", issued[0]),
            f.op(),
            Body::Json(json!({ "payment_reference": "wire 7" })),
        )
        .await;
    assert_eq!(
        (r.status, r.json["status"].as_str(), r.json["kind"].as_str()),
        (200, Some("paid"), Some("usage"))
    );
    let r = f
        .post(
            &format!("/v1/admin/invoices/{}/void", issued[1]),
            f.op(),
            Body::Json(json!({ "reason": "duplicate" })),
        )
        .await;
    assert_eq!((r.status, r.json["status"].as_str()), (200, Some("void")));
    f.finish().await
}

/// Submit, start, complete and cancel, their repeats and refusals; a failed request; too few credits.
async fn the_life_of_a_request() -> Seen {
    let mut f = Flow::spawn().await;
    let (api, _) = f.customer_with_credits().await;
    // --- the life of one request
    let r1 = uuid();
    let r = f.submit(&r1, "fal-ai/flux/dev", &api).await;
    assert_eq!(
        (r.status, r.json["status"].as_str()),
        (201, Some("IN_QUEUE"))
    );
    let r = f.submit(&r1, "fal-ai/flux/dev", &api).await;
    assert_eq!(
        (r.status, r.json["status"].as_str()),
        (200, Some("IN_QUEUE"))
    );
    let r = f.submit(&r1, "fal-ai/flux/schnell", &api).await;
    assert_eq!((r.status, r.error_type()), (409, "conflict"));
    let r = f.submit(&uuid(), "fal-ai/no-such-model", &api).await;
    assert_eq!((r.status, r.error_type()), (404, "not_found"));
    let r = f
        .submit(&uuid(), "fal-ai/flux/dev", "no-such-key:secret")
        .await;
    assert_eq!((r.status, r.error_type()), (401, "authorization_error"));
    let operator = f.s.operator_key.clone();
    let r = f.submit(&uuid(), "fal-ai/flux/dev", &operator).await;
    assert_eq!(r.status, 401, "an operator key is not a caller key");
    let r = f
        .post(
            "/v1/requests",
            f.op(),
            Body::Invalid(json!({ "request_id": "not-a-uuid", "endpoint_id": "fal-ai/flux/dev", "caller_key": api })),
        )
        .await;
    assert_eq!(
        (r.status, r.json["error"]["field"].as_str()),
        (400, Some("request_id"))
    );

    let r = f.get(&format!("/v1/requests/{r1}"), f.op()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["status"], "IN_QUEUE");
    assert_eq!(r.json["started_at"], Value::Null);
    assert!(r.json.get("billing").is_none());

    let r = f.start(&r1).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["hold_nano_usd"], 100_000_000, "4 MP at 0.025");
    assert_eq!(r.json["hold"], json!(0.1));
    assert_eq!(
        r.json["concurrency"],
        json!({ "limit": 4, "in_progress": 1 })
    );
    let r = f.start(&r1).await;
    assert_eq!(r.status, 200, "a repeat start holds nothing new");
    assert_eq!(r.json["hold_nano_usd"], 100_000_000);
    let r = f
        .post(
            &format!("/v1/requests/{}/start", uuid()),
            f.op(),
            Body::Json(json!({ "num_gpus": 1 })),
        )
        .await;
    assert_eq!((r.status, r.error_type()), (404, "not_found"));
    let r = f
        .post("/v1/requests/not-a-uuid/start", f.op(), Body::None)
        .await;
    assert_eq!(r.status, 400);

    let r = f.get(&format!("/v1/requests/{r1}"), f.op()).await;
    assert_eq!(r.json["status"], "IN_PROGRESS");
    assert!(r.json["hold_expires_at"].is_string());
    assert!(r.json["queue_seconds"].is_number());

    let r = f
        .complete(&r1, json!({ "status_code": 200, "output": full_hd() }))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-fal-billable-units"), Some("2"));
    assert!(r.header("idempotent-replayed").is_none());
    assert_eq!(r.json["status"], "COMPLETED");
    assert_eq!(r.json["billed"], true);
    assert_eq!(r.json["unit"], "megapixel");
    assert_eq!(r.json["output_units"], json!(2.0));
    assert_eq!(r.json["unit_price"], json!(0.025));
    assert_eq!(r.json["percent_discount"], Value::Null);
    assert_eq!(r.json["cost_total"], json!(0.05));
    assert_eq!(r.json["cost_estimate_nano_usd"], 50_000_000);
    assert_eq!(r.json["balance_nano_usd"], 26_450_000_000i64);
    let billed = r.json.clone();
    let r = f
        .complete(&r1, json!({ "status_code": 200, "output": full_hd() }))
        .await;
    assert_eq!(r.header("idempotent-replayed"), Some("true"));
    assert_eq!(r.json, billed, "a repeat complete answers the first answer");
    let r = f
        .post(
            &format!("/v1/requests/{r1}/complete"),
            f.op(),
            Body::Invalid(json!({ "status_code": 200, "output": { "pixels": 5 } })),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.json["error"]["field"]
        .as_str()
        .is_some_and(|f| f.starts_with("output")));

    let r = f.get(&format!("/v1/requests/{r1}"), f.op()).await;
    assert_eq!(r.json["status"], "COMPLETED");
    assert_eq!(r.json["billing"], billed);
    assert!(r.json["inference_seconds"].is_number());
    let r = f.get(&format!("/v1/requests/{}", uuid()), f.op()).await;
    assert_eq!((r.status, r.error_type()), (404, "not_found"));

    // Finished requests can be neither started nor cancelled again.
    let r = f.start(&r1).await;
    assert_eq!((r.status, r.error_type()), (409, "conflict"));
    let r = f
        .post(&format!("/v1/requests/{r1}/cancel"), f.op(), Body::None)
        .await;
    assert_eq!((r.status, r.error_type()), (409, "conflict"));

    // Completing a request never started: 409. Cancelling it: 200, twice.
    let r2 = uuid();
    assert_eq!(f.submit(&r2, "fal-ai/flux/dev", &api).await.status, 201);
    let r = f.complete(&r2, json!({ "status_code": 200 })).await;
    assert_eq!((r.status, r.error_type()), (409, "conflict"));
    for _ in 0..2 {
        let r = f
            .post(&format!("/v1/requests/{r2}/cancel"), f.op(), Body::None)
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.json,
            json!({ "request_id": r2, "status": "CANCELLED", "billed": false })
        );
    }
    let r = f
        .post(
            &format!("/v1/requests/{}/cancel", uuid()),
            f.op(),
            Body::None,
        )
        .await;
    assert_eq!(r.status, 404);
    let r = f.get(&format!("/v1/requests/{r2}"), f.op()).await;
    assert_eq!(r.json["status"], "CANCELLED");

    // A server error is not billed; the hold is voided.
    let r3 = uuid();
    assert_eq!(f.submit(&r3, "fal-ai/flux/dev", &api).await.status, 201);
    let r = f
        .post(
            &format!("/v1/requests/{r3}/start"),
            f.op(),
            Body::Json(json!({ "hold_units": "2" })),
        )
        .await;
    assert_eq!(
        (r.status, r.json["hold_nano_usd"].as_i64()),
        (200, Some(50_000_000))
    );
    let r = f
        .complete(&r3, json!({ "status_code": 503, "output": full_hd() }))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        (r.json["status"].as_str(), r.json["billed"].as_bool()),
        (Some("FAILED"), Some(false))
    );
    assert_eq!(r.json["cost_estimate_nano_usd"], 0);
    assert_eq!(r.header("x-fal-billable-units"), Some("0"));
    // A bad status code is refused and changes nothing; cancelling a started request
    // releases its hold.
    let r4 = uuid();
    assert_eq!(f.submit(&r4, "fal-ai/flux/dev", &api).await.status, 201);
    assert_eq!(f.start(&r4).await.status, 200);
    let r = f
        .post(
            &format!("/v1/requests/{r4}/complete"),
            f.op(),
            Body::Invalid(json!({ "status_code": 700 })),
        )
        .await;
    assert_eq!((r.status, r.error_type()), (400, "validation_error"));
    let r = f.get(&format!("/v1/requests/{r4}"), f.op()).await;
    assert_eq!(r.json["status"], "IN_PROGRESS");
    let r = f
        .post(&format!("/v1/requests/{r4}/cancel"), f.op(), Body::None)
        .await;
    assert_eq!(r.status, 200);
    let r = f.get("/v1/admin/accounts/acme", f.op()).await;
    assert_eq!(
        (
            r.json["held_nano_usd"].as_i64(),
            r.json["in_progress"].as_u64()
        ),
        (Some(0), Some(0))
    );

    // --- insufficient credits: 402
    f.create_account("tiny").await;
    let tiny = f.create_key("tiny", "API").await;
    assert_eq!(f.purchase("tiny", "p-1", "0.05").await.status, 201);
    let t1 = uuid();
    assert_eq!(f.submit(&t1, "fal-ai/flux/dev", &tiny).await.status, 201);
    let r = f.start(&t1).await;
    assert_eq!((r.status, r.error_type()), (402, "insufficient_credits"));
    assert_eq!(r.json["error"]["available_nano_usd"], 50_000_000);
    assert_eq!(r.json["error"]["required_nano_usd"], 100_000_000);

    // A model server's deferred units (fal's `x-fal-billable-units-webhook`) complete a
    // started request: billed those units once; a second post answers the first billing.
    f.create_account("deferred").await;
    let deferred = f.create_key("deferred", "API").await;
    assert_eq!(f.purchase("deferred", "p-1", "10").await.status, 201);
    let d1 = uuid();
    assert_eq!(
        f.submit(&d1, "fal-ai/flux/dev", &deferred).await.status,
        201
    );
    assert_eq!(f.start(&d1).await.status, 200);
    let units = |id: &str| {
        (
            format!("/v1/requests/billable-units/{id}"),
            Body::Json(json!({ "billable_units": "3" })),
        )
    };
    let (path, body) = units(&d1);
    let r = f.post(&path, f.op(), body).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["output_units"], json!(3.0));
    assert_eq!(r.json["cost_total"], json!(0.075));
    let billed = r.json.clone();
    let (path, body) = units(&d1);
    let r = f.post(&path, f.op(), body).await;
    assert_eq!(r.header("idempotent-replayed"), Some("true"));
    assert_eq!(r.json, billed);
    let (path, body) = units(&uuid());
    let r = f.post(&path, f.op(), body).await;
    assert_eq!((r.status, r.error_type()), (404, "not_found"));

    f.finish().await
}

/// Spending limits (the customer's and the operator's), account terms, the concurrency limit.
async fn spending_limits_and_account_terms() -> Seen {
    let mut f = Flow::spawn().await;
    let (api, admin) = f.customer_with_credits().await;
    // --- spending limits: the customer's own, and the operator's of any account
    let r = f
        .post(
            "/v1/account/spending-limits",
            key(&admin),
            Body::Json(json!({
                "scope": "account", "period": "day", "timezone": "Europe/Berlin",
                "amount_usd": "1000.00", "action": "alert",
            })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(r.json["alert_at_percent"], json!([50, 80, 100]));
    let own = r.json["limit_id"].as_str().expect("limit_id").to_string();
    let r = f.get("/v1/account/spending-limits", key(&admin)).await;
    assert_eq!(
        (r.status, r.json["limits"][0]["limit_id"].as_str()),
        (200, Some(own.as_str()))
    );
    let r = f.get("/v1/account/spending-limits", key(&api)).await;
    assert_eq!(r.status, 403);
    let r = f
        .put(
            &format!("/v1/account/spending-limits/{own}"),
            key(&admin),
            Body::Json(json!({ "amount_usd": "900", "alert_at_percent": [90] })),
        )
        .await;
    assert_eq!(
        (r.status, r.json["amount_nano_usd"].as_i64()),
        (200, Some(900_000_000_000))
    );
    let r = f
        .post(
            "/v1/account/spending-limits",
            key(&admin),
            Body::Invalid(json!({
                "scope": "account", "period": "year", "amount_usd": "1", "action": "block",
            })),
        )
        .await;
    assert_eq!(
        (r.status, r.json["error"]["field"].as_str()),
        (400, Some("period"))
    );
    let r = f
        .put(
            &format!("/v1/account/spending-limits/{own}"),
            key(&admin),
            Body::Invalid(json!({ "period": "week" })),
        )
        .await;
    assert_eq!(
        (r.status, r.json["error"]["field"].as_str()),
        (400, Some("period"))
    );
    for status in [204, 404] {
        let r = f
            .call(
                Method::DELETE,
                &format!("/v1/account/spending-limits/{own}"),
                key(&admin),
                Body::None,
            )
            .await;
        assert_eq!(r.status, status);
    }
    let r = f
        .put(
            &format!("/v1/account/spending-limits/{own}"),
            key(&admin),
            Body::Json(json!({ "amount_usd": "1" })),
        )
        .await;
    assert_eq!((r.status, r.error_type()), (404, "not_found"));
    // The operator's: a block limit of one nano-USD refuses every start (403, naming it).
    let r = f
        .post(
            "/v1/admin/accounts/acme/spending-limits",
            f.op(),
            Body::Json(json!({
                "scope": "account", "period": "month", "amount_usd": "0.000000001",
                "action": "block", "alert_at_percent": [],
            })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let blocking = r.json["limit_id"].as_str().expect("limit_id").to_string();
    let r = f
        .get("/v1/admin/accounts/acme/spending-limits", f.op())
        .await;
    assert_eq!(
        (r.status, r.json["limits"].as_array().map(Vec::len)),
        (200, Some(1))
    );
    let r = f
        .get("/v1/admin/accounts/nobody/spending-limits", f.op())
        .await;
    assert_eq!((r.status, r.error_type()), (404, "not_found"));
    let r = f
        .post(
            "/v1/admin/accounts/nobody/spending-limits",
            f.op(),
            Body::Json(json!({
                "scope": "account", "period": "month", "amount_usd": "1", "action": "block",
            })),
        )
        .await;
    assert_eq!((r.status, r.error_type()), (404, "not_found"));
    let r = f
        .put(
            &format!("/v1/admin/accounts/acme/spending-limits/{blocking}"),
            f.op(),
            Body::Json(json!({ "action": "block" })),
        )
        .await;
    assert_eq!(r.status, 200);
    let limited = uuid();
    assert_eq!(
        f.submit(&limited, "fal-ai/flux/dev", &api).await.status,
        201
    );
    let r = f.start(&limited).await;
    assert_eq!((r.status, r.error_type()), (403, "spending_limit_exceeded"));
    assert_eq!(r.json["error"]["limit_id"], blocking.as_str());
    for status in [204, 404] {
        let r = f
            .call(
                Method::DELETE,
                &format!("/v1/admin/accounts/acme/spending-limits/{blocking}"),
                f.op(),
                Body::None,
            )
            .await;
        assert_eq!(r.status, status);
    }
    let r = f
        .put(
            &format!("/v1/admin/accounts/acme/spending-limits/{blocking}"),
            f.op(),
            Body::Json(json!({ "action": "alert" })),
        )
        .await;
    assert_eq!((r.status, r.error_type()), (404, "not_found"));
    assert_eq!(
        f.start(&limited).await.status,
        200,
        "no limit blocks it now"
    );
    let r = f
        .post(
            &format!("/v1/requests/{limited}/cancel"),
            f.op(),
            Body::None,
        )
        .await;
    assert_eq!(r.status, 200);

    // --- account terms: discount, an account price, a concurrency limit of 1
    let r = f
        .put(
            "/v1/admin/accounts/acme/pricing",
            f.op(),
            Body::Json(json!({
                "percent_discount": "10",
                "volume_tiers": [{ "from_usd": "100", "percent": "15" }],
                "concurrency_limit": 1,
                "lock_threshold_usd": "0",
                "prices": { "fal-ai/flux/dev": { "unit": "megapixel", "unit_price": "0.02", "rounding": "up" } },
            })),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["price_versions_created"], 1);
    assert_eq!(r.json["account"]["concurrency_limit"], 1);
    let in_force = &r.json["account"]["terms"]["in_force"];
    assert_eq!(in_force["concurrency_limit"], 1);
    assert_eq!(in_force["percent_discount"], "10");
    assert_eq!(
        in_force["volume_tiers"],
        json!([{ "from_usd": "100", "percent": "15" }])
    );
    let r = f
        .put(
            "/v1/admin/accounts/acme/pricing",
            f.op(),
            Body::Unchecked(json!({ "prices": { "fal-ai/no-such-model": { "unit": "image", "unit_price": "1" } } })),
        )
        .await;
    assert_eq!((r.status, r.error_type()), (404, "not_found"));
    let r = f
        .put(
            "/v1/admin/accounts/acme/pricing",
            f.op(),
            Body::Invalid(json!({ "concurrency_limit": 0 })),
        )
        .await;
    assert_eq!(
        (r.status, r.json["error"]["field"].as_str()),
        (400, Some("concurrency_limit"))
    );
    let r = f
        .put(
            "/v1/admin/accounts/nobody/pricing",
            f.op(),
            Body::Json(json!({ "percent_discount": "5" })),
        )
        .await;
    assert_eq!(r.status, 404);

    // Concurrency: the second start is refused with 429 and stays IN_QUEUE.
    let (a, b) = (uuid(), uuid());
    assert_eq!(f.submit(&a, "fal-ai/flux/dev", &api).await.status, 201);
    assert_eq!(f.submit(&b, "fal-ai/flux/dev", &api).await.status, 201);
    assert_eq!(f.start(&a).await.status, 200);
    let r = f.start(&b).await;
    assert_eq!(
        (r.status, r.error_type()),
        (429, "concurrent_requests_limit")
    );
    assert_eq!(r.header("x-fal-needs-retry"), Some("1"));
    assert_eq!(
        (
            r.json["error"]["limit"].as_u64(),
            r.json["error"]["in_progress"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let r = f.get(&format!("/v1/requests/{b}"), f.op()).await;
    assert_eq!(r.json["status"], "IN_QUEUE");
    let r = f
        .complete(
            &a,
            json!({ "status_code": 200, "output": full_hd(), "inference_seconds": "3.5" }),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["unit_price"], json!(0.02), "the account's price");
    assert_eq!(r.json["percent_discount"], json!(10.0));
    assert_eq!(r.json["cost_subtotal_nano_usd"], 40_000_000);
    assert_eq!(r.json["cost_discount_nano_usd"], 4_000_000);
    assert_eq!(r.json["cost_estimate_nano_usd"], 36_000_000);
    assert_eq!(f.start(&b).await.status, 200, "the slot is free again");

    f.finish().await
}

/// Usage events (a bulk, a repeat, a refused one), the customer's billing, usage, billing events, requests and analytics.
async fn usage_events_and_the_customers_reports() -> Seen {
    let mut f = Flow::spawn().await;
    let (api, admin) = f.customer_with_credits().await;
    // --- usage events
    let now = chrono::Utc::now().to_rfc3339();
    let event = |id: &str, endpoint: &str, user: &str| usage_event(&now, id, endpoint, user);
    let r = f
        .post(
            "/v1/usage-events",
            f.op(),
            Body::Json(json!({ "events": [
                event("evt-1", "fal-ai/flux/dev", "acme"),
                event("evt-2", "fal-ai/no-such-model", "acme"),
                event("evt-3", "fal-ai/flux/dev", "nobody"),
            ] })),
        )
        .await;
    assert_eq!(r.status, 200);
    let results = r.json["results"].as_array().expect("results").clone();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["event_id"], "evt-1");
    assert_eq!(results[0]["duplicate"], false);
    assert_eq!(results[0]["cost_estimate_nano_usd"], 25_000_000);
    assert_eq!(results[1]["status_code"], 404);
    assert_eq!(results[1]["error"]["type"], "not_found");
    assert_eq!(results[2]["status_code"], 404);
    let r = f
        .post(
            "/v1/usage-events",
            f.op(),
            Body::Json(json!({ "events": [event("evt-1", "fal-ai/flux/dev", "acme")] })),
        )
        .await;
    assert_eq!(r.json["results"][0]["duplicate"], true);
    assert_eq!(
        r.json["results"][0]["cost_estimate_nano_usd"],
        results[0]["cost_estimate_nano_usd"]
    );
    let mut bad = event("evt-4", "fal-ai/flux/dev", "acme");
    bad["timestamp"] = json!("yesterday");
    let r = f
        .post(
            "/v1/usage-events",
            f.op(),
            Body::Invalid(json!({ "events": [event("evt-5", "fal-ai/flux/dev", "acme"), bad] })),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json["error"]["index"], 1);
    assert_eq!(r.json["error"]["field"], "timestamp");
    let r = f.get("/v1/requests/evt-5", f.op()).await;
    assert_eq!(r.status, 404, "nothing of a refused call was written");
    let r = f.get("/v1/requests/evt-1", f.op()).await;
    assert_eq!(
        (r.status, r.json["billing"]["billed"].as_bool()),
        (200, Some(true))
    );
    let mut missing = event("evt-6", "fal-ai/flux/dev", "acme");
    missing.as_object_mut().expect("object").remove("username");
    let r = f
        .post(
            "/v1/usage-events",
            f.op(),
            Body::Invalid(json!({ "events": [missing] })),
        )
        .await;
    assert_eq!(r.status, 400);

    // --- the customer's billing
    let r = f
        .get("/v1/account/billing?expand=credits", key(&admin))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["username"], "acme");
    assert_eq!(r.json["credits"]["currency"], "USD");
    let r_admin = f.get("/v1/admin/accounts/acme", f.op()).await;
    assert_eq!(
        r.json["credits"]["current_balance_nano_usd"],
        r_admin.json["balance_nano_usd"]
    );
    let r = f.get("/v1/account/billing", key(&admin)).await;
    assert_eq!(r.json, json!({ "username": "acme" }));
    let r = f.get("/v1/account/billing?expand=credits", key(&api)).await;
    assert_eq!((r.status, r.error_type()), (403, "authorization_error"));
    let r = f.get("/v1/account/billing?expand=credits", f.op()).await;
    assert_eq!(r.status, 403, "an operator key is not a customer key");
    let r = f.get("/v1/account/billing?expand=nope", key(&admin)).await;
    assert_eq!(
        (r.status, r.json["error"]["field"].as_str()),
        (400, Some("expand"))
    );
    let r = f.get("/v1/account/billing?expand=credits", None).await;
    assert_eq!(r.status, 401);

    // --- the customer's usage, billing events and analytics
    let r = f
        .get(
            "/v1/models/usage?expand=time_series,summary,auth_method_structured",
            key(&admin),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(!r.json["summary"].as_array().expect("summary").is_empty());
    let r = f
        .get("/v1/models/usage?timezone=Nowhere", key(&admin))
        .await;
    assert_eq!(
        (r.status, r.json["error"]["field"].as_str()),
        (400, Some("timezone"))
    );
    let r = f.get("/v1/models/usage", key(&api)).await;
    assert_eq!(r.status, 403);
    let r = f
        .get("/v1/models/billing-events?expand=auth_method", key(&admin))
        .await;
    assert_eq!(r.status, 200);
    assert!(!r.json["billing_events"]
        .as_array()
        .expect("events")
        .is_empty());
    let r = f
        .get("/v1/models/billing-events?limit=0", key(&admin))
        .await;
    assert_eq!(r.status, 400);
    let r = f
        .get(
            "/v1/models/requests/by-endpoint?endpoint_id=fal-ai/flux/dev&sort_by=duration",
            key(&api),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(!r.json["items"].as_array().expect("items").is_empty());
    let r = f
        .get(
            "/v1/models/requests/by-endpoint?endpoint_id=fal-ai/flux/dev&expand=payloads",
            key(&api),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = f
        .get(
            "/v1/models/analytics?endpoint_id=fal-ai/flux/dev\
             &expand=time_series,summary,request_count,p50_duration",
            key(&api),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = f.get("/v1/models/analytics", key(&api)).await;
    assert_eq!(
        (r.status, r.json["error"]["field"].as_str()),
        (400, Some("endpoint_id"))
    );

    f.finish().await
}

/// Runner events and the serverless reads.
async fn serverless_runners() -> Seen {
    let mut f = Flow::spawn().await;
    let (api, admin) = f.customer_with_credits().await;
    // --- serverless: runner events (a bulk, its repeat, a refused one) and the reads
    let ago = |s: i64| {
        (chrono::Utc::now() - chrono::Duration::seconds(s))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let runner = |id: &str, state: &str, at: String| {
        json!({ "event_id": id, "runner_id": "rn-openapi", "username": "acme", "app": "my-app",
                "environment": "production", "machine_type": "GPU-H100", "num_gpus": 2,
                "state": state, "at": at })
    };
    let bulk =
        json!({ "events": [runner("re-1", "SETUP", ago(30)), runner("re-2", "RUNNING", ago(10))] });
    let r = f
        .post("/v1/runners/events", f.op(), Body::Json(bulk.clone()))
        .await;
    assert_eq!(r.status, 200);
    let results = r.json["results"].as_array().expect("results").clone();
    assert_eq!(results.len(), 2);
    assert!(
        results[1]["billed_nano_usd"].as_i64().expect("billed") > 0,
        "{results:?}"
    );
    let r = f.post("/v1/runners/events", f.op(), Body::Json(bulk)).await;
    assert_eq!(
        (r.status, &r.json["results"][1]["duplicate"]),
        (200, &json!(true))
    );
    let r = f
        .post(
            "/v1/runners/events",
            f.op(),
            Body::Invalid(json!({ "events": [runner("re-3", "ASLEEP", ago(5))] })),
        )
        .await;
    assert_eq!(
        (r.status, r.json["error"]["field"].as_str()),
        (400, Some("state"))
    );
    let r = f
        .post(
            "/v1/runners/events",
            key(&admin),
            Body::Json(json!({ "events": [runner("re-4", "IDLE", ago(5))] })),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = f
        .get(
            "/v1/serverless/usage?expand=time_series,summary&app=my-app",
            key(&admin),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["summary"][0]["app"], "my-app");
    assert_eq!(r.json["summary"][0]["environment"], "production");
    let r = f.get("/v1/serverless/usage", key(&api)).await;
    assert_eq!(r.status, 403);
    let r = f.get("/v1/serverless/usage?search=", key(&admin)).await;
    assert_eq!(
        (r.status, r.json["error"]["field"].as_str()),
        (400, Some("search"))
    );
    let r = f
        .get(
            "/v1/serverless/apps/acme/my-app/runners/history?aggregation=avg",
            key(&api),
        )
        .await;
    assert_eq!(
        (r.status, r.json["endpoint_id"].as_str()),
        (200, Some("acme/my-app"))
    );
    let r = f
        .get(
            "/v1/serverless/apps/bigco/my-app/runners/history",
            key(&api),
        )
        .await;
    assert_eq!((r.status, r.error_type()), (403, "authorization_error"));
    let r = f
        .get(
            "/v1/serverless/apps/acme/my-app/runners/history?timeframe=fortnight",
            key(&api),
        )
        .await;
    assert_eq!(
        (r.status, r.json["error"]["field"].as_str()),
        (400, Some("timeframe"))
    );

    f.finish().await
}

/// The customer's keys, the models, their prices and estimates.
async fn customer_keys_models_and_prices() -> Seen {
    let mut f = Flow::spawn().await;
    let (api, admin) = f.customer().await;
    // --- the customer's keys, models, prices and estimates
    let r = f
        .post(
            "/v1/keys",
            key(&admin),
            Body::Json(json!({ "alias": "ci" })),
        )
        .await;
    assert_eq!(r.status, 201);
    let made = r.json["key_id"].as_str().expect("key_id").to_string();
    let r = f.get("/v1/keys?limit=1", key(&admin)).await;
    assert_eq!((r.status, r.json["has_more"].as_bool()), (200, Some(true)));
    let r = f
        .post(
            "/v1/keys",
            key(&admin),
            Body::Invalid(json!({ "alias": "" })),
        )
        .await;
    assert_eq!(
        (r.status, r.json["error"]["field"].as_str()),
        (400, Some("alias"))
    );
    let r = f.get("/v1/keys", key(&api)).await;
    assert_eq!(r.status, 403);
    for _ in 0..2 {
        let r = f
            .call(
                Method::DELETE,
                &format!("/v1/keys/{made}"),
                key(&admin),
                Body::None,
            )
            .await;
        assert_eq!(r.status, 204);
    }
    let r = f
        .get("/v1/models?q=flux&limit=2&expand=enterprise_status", None)
        .await;
    assert_eq!((r.status, r.json["has_more"].as_bool()), (200, Some(true)));
    let r = f.get("/v1/models?status=retired", None).await;
    assert_eq!(r.status, 400);
    let r = f
        .get(
            "/v1/models/pricing?endpoint_id=fal-ai/flux/dev,fal-ai/whisper",
            key(&api),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = f
        .get(
            "/v1/models/pricing?endpoint_id=fal-ai/no-such-model",
            key(&api),
        )
        .await;
    assert_eq!((r.status, r.error_type()), (404, "not_found"));
    let r = f
        .post(
            "/v1/models/pricing/estimate",
            key(&api),
            Body::Json(json!({
                "estimate_type": "historical_api_price",
                "endpoints": { "fal-ai/flux/dev": { "call_quantity": 10 } },
            })),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = f
        .post(
            "/v1/models/pricing/estimate",
            key(&api),
            Body::Invalid(json!({
                "estimate_type": "unit_price",
                "endpoints": { "fal-ai/flux/dev": { "unit_quantity": 0 } },
            })),
        )
        .await;
    assert_eq!(
        (r.status, r.json["error"]["field"].as_str()),
        (400, Some("endpoints.fal-ai/flux/dev.unit_quantity"))
    );

    f.finish().await
}

/// Applying the catalog.
async fn the_catalog() -> Seen {
    let mut f = Flow::spawn().await;
    let (_, admin) = f.customer().await;
    // --- the catalog
    let r = f
        .put(
            "/v1/admin/catalog",
            f.op(),
            Body::Raw(SAMPLE_CATALOG.to_string(), "application/toml"),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["endpoints"], 34);
    assert_eq!(
        r.json["price_versions_created"], 0,
        "the same document again"
    );
    let broken = SAMPLE_CATALOG.replacen(
        "price = { unit = \"megapixel\", unit_price = \"0.025\" }",
        "price = { unit = \"megapixel\", unit_price = 0.025 }",
        1,
    );
    assert_ne!(broken, SAMPLE_CATALOG);
    let r = f
        .put(
            "/v1/admin/catalog",
            f.op(),
            Body::Raw(broken, "application/toml"),
        )
        .await;
    assert_eq!((r.status, r.error_type()), (400, "validation_error"));
    assert!(r.json["error"]["line"].as_u64().is_some_and(|l| l > 1));
    assert!(r.json["error"]["field"]
        .as_str()
        .is_some_and(|f| f.ends_with("price.unit_price")));
    let r = f
        .put(
            "/v1/admin/catalog",
            f.op(),
            Body::Raw("{}".into(), "application/json"),
        )
        .await;
    assert_eq!(r.status, 415);
    let r = f
        .put(
            "/v1/admin/catalog",
            key(&admin),
            Body::Raw(SAMPLE_CATALOG.to_string(), "application/toml"),
        )
        .await;
    assert_eq!(r.status, 403);

    f.finish().await
}

/// A webhook subscription, the events of a purchase after it, their deliveries.
async fn webhooks() -> Seen {
    let mut f = Flow::spawn().await;
    f.customer().await;
    // --- webhooks: a subscription, the events of a purchase after it, their deliveries
    let r = f
        .post(
            "/v1/admin/webhooks",
            f.op(),
            Body::Unchecked(json!({ "url": "ftp://example.com/x", "events": ["*"] })),
        )
        .await;
    assert_eq!(
        (r.status, r.json["error"]["field"].as_str()),
        (400, Some("url"))
    );
    let r = f
        .post(
            "/v1/admin/webhooks",
            f.op(),
            Body::Json(json!({
                "url": "http://127.0.0.1:9/events",
                "events": ["purchase.succeeded", "invoice.issued"],
                "description": "billing notices",
            })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let hook = r.json["webhook_id"]
        .as_str()
        .expect("webhook_id")
        .to_string();
    let r = f.get("/v1/admin/webhooks", f.op()).await;
    assert_eq!(r.status, 200);
    let r = f.get(&format!("/v1/admin/webhooks/{hook}"), f.op()).await;
    assert_eq!(r.status, 200);
    let r = f.get("/v1/admin/webhooks/wh_nope", f.op()).await;
    assert_eq!((r.status, r.error_type()), (404, "not_found"));
    let r = f.purchase("acme", "p-webhook", "1.00").await;
    assert_eq!(r.status, 201);
    f.s.dispatcher().run_once().await.expect("a dispatch round");
    let r = f
        .get(
            &format!("/v1/admin/webhooks/{hook}/deliveries?limit=1"),
            f.op(),
        )
        .await;
    assert_eq!((r.status, r.json["has_more"].as_bool()), (200, Some(true)));
    let dlv = r.json["deliveries"][0]["delivery_id"]
        .as_str()
        .expect("delivery_id")
        .to_string();
    let one = format!("/v1/admin/webhooks/{hook}/deliveries/{dlv}");
    let r = f.get(&one, f.op()).await;
    assert_eq!(r.status, 200);
    assert!(r.json["attempt_log"].is_array(), "{}", r.json);
    let r = f
        .post(&format!("{one}/redeliver"), f.op(), Body::None)
        .await;
    assert_eq!(
        (r.status, r.json["status"].as_str()),
        (202, Some("pending"))
    );
    let r = f
        .post(
            &format!("/v1/admin/webhooks/{hook}/deliveries/dlv_999999/redeliver"),
            f.op(),
            Body::None,
        )
        .await;
    assert_eq!((r.status, r.error_type()), (404, "not_found"));
    let r = f
        .call(
            Method::DELETE,
            &format!("/v1/admin/webhooks/{hook}"),
            f.op(),
            Body::None,
        )
        .await;
    assert_eq!(r.status, 204);
    let r = f
        .call(
            Method::DELETE,
            &format!("/v1/admin/webhooks/{hook}"),
            f.op(),
            Body::None,
        )
        .await;
    assert_eq!((r.status, r.error_type()), (404, "not_found"));

    f.finish().await
}

/// A checkout top-up, the provider's events, the auto top-up rule, a refund.
async fn payments() -> Seen {
    let mut f = Flow::spawn().await;
    let (_, admin) = f.customer().await;
    // --- payments: a checkout top-up, the provider's events, the auto top-up rule, a refund
    let r = f
        .put(
            "/v1/account/auto-top-up",
            key(&admin),
            Body::Json(
                json!({"enabled": true, "threshold_usd": "1", "amount_usd": "5",
                "max_per_month_usd": "50"}),
            ),
        )
        .await;
    assert_eq!((r.status, r.error_type()), (409, "payment_method_required"));
    let r = f
        .post(
            "/v1/account/top-ups",
            key(&admin),
            Body::Unchecked(
                json!({"amount_usd": "1", "success_url": "https://a.example/ok",
                "cancel_url": "https://a.example/no"}),
            ),
        )
        .await;
    assert_eq!(
        (r.status, r.json["error"]["field"].as_str()),
        (400, Some("amount_usd"))
    );
    let r = f
        .post(
            "/v1/account/top-ups",
            key(&admin),
            Body::Json(
                json!({"amount_usd": "25.00", "success_url": "https://a.example/ok",
                "cancel_url": "https://a.example/no", "save_payment_method": true}),
            ),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let top_up = r.json["top_up_id"].as_str().expect("top_up_id").to_string();
    let session = r.json["checkout_url"]
        .as_str()
        .and_then(|u| u.rsplit('/').next())
        .expect("a checkout URL")
        .to_string();
    let r = f
        .get(&format!("/v1/account/top-ups/{top_up}"), key(&admin))
        .await;
    assert_eq!(
        (r.status, r.json["status"].as_str()),
        (200, Some("awaiting_payment"))
    );
    let r = f.get("/v1/account/top-ups/top_nope", key(&admin)).await;
    assert_eq!((r.status, r.error_type()), (404, "not_found"));
    let (session, pi) = f.stripe.pay_checkout(&session);
    let now = chrono::Utc::now().timestamp();
    for event in [
        f.stripe.event("checkout.session.completed", session),
        f.stripe.event("payment_intent.succeeded", pi),
    ] {
        let text = event.to_string();
        let header = signature::sign(text.as_bytes(), WEBHOOK_SECRET, now);
        let r = f
            .post(
                "/v1/payments/stripe/webhook",
                None,
                Body::Signed(text, header),
            )
            .await;
        assert_eq!(
            (r.status, r.json["result"].as_str()),
            (200, Some("applied"))
        );
    }
    let r = f
        .post(
            "/v1/payments/stripe/webhook",
            None,
            Body::Signed("{}".into(), format!("t={now},v1=00")),
        )
        .await;
    assert_eq!((r.status, r.error_type()), (400, "validation_error"));
    let r = f
        .put(
            "/v1/account/auto-top-up",
            key(&admin),
            Body::Json(
                json!({"enabled": true, "threshold_usd": "1", "amount_usd": "5",
                "max_per_month_usd": "50"}),
            ),
        )
        .await;
    assert_eq!(
        (r.status, r.json["status"].as_str()),
        (200, Some("active")),
        "{}",
        r.json
    );
    let r = f.get("/v1/account/auto-top-up", key(&admin)).await;
    assert_eq!(
        (r.status, r.json["payment_method_saved"].as_bool()),
        (200, Some(true))
    );
    let refund = format!("/v1/admin/accounts/acme/purchases/{top_up}/refund");
    for replayed in [false, true] {
        let r = f
            .post(
                &refund,
                f.op(),
                Body::Json(json!({"refund_id": "rf-1", "amount_usd": "5"})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.json);
        assert_eq!(r.header("idempotent-replayed").is_some(), replayed);
    }
    let r = f
        .post(
            &refund,
            f.op(),
            Body::Json(json!({"refund_id": "rf-2", "amount_usd": "1000"})),
        )
        .await;
    assert_eq!((r.status, r.error_type()), (409, "not_refundable"));
    let r = f
        .post(
            "/v1/admin/accounts/acme/purchases/nope/refund",
            f.op(),
            Body::Json(json!({"refund_id": "rf-3", "amount_usd": "1"})),
        )
        .await;
    assert_eq!((r.status, r.error_type()), (404, "not_found"));

    f.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_calls_and_authentication_answer_as_documented() {
    meta_and_authentication().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_keys_and_purchases_answer_as_documented() {
    accounts_keys_and_purchases().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoices_statements_and_payment_history_answer_as_documented() {
    invoices_statements_and_payment_history().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_life_of_a_request_answers_as_documented() {
    the_life_of_a_request().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spending_limits_and_account_terms_answer_as_documented() {
    spending_limits_and_account_terms().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_events_and_the_customers_reports_answer_as_documented() {
    usage_events_and_the_customers_reports().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serverless_runners_answer_as_documented() {
    serverless_runners().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_keys_models_and_prices_answer_as_documented() {
    customer_keys_models_and_prices().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_answers_as_documented() {
    the_catalog().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_answer_as_documented() {
    webhooks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_answer_as_documented() {
    payments().await;
}

/// Every documented operation is called, and answered a success, by some area; the areas
/// together see every status the API answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_called_with_a_success() {
    let areas: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = Seen> + Send>>> = vec![
        Box::pin(meta_and_authentication()),
        Box::pin(accounts_keys_and_purchases()),
        Box::pin(invoices_statements_and_payment_history()),
        Box::pin(the_life_of_a_request()),
        Box::pin(spending_limits_and_account_terms()),
        Box::pin(usage_events_and_the_customers_reports()),
        Box::pin(serverless_runners()),
        Box::pin(customer_keys_models_and_prices()),
        Box::pin(the_catalog()),
        Box::pin(webhooks()),
        Box::pin(payments()),
    ];
    let mut seen = Seen::new();
    for area in areas {
        for (operation, statuses) in area.await {
            seen.entry(operation).or_default().extend(statuses);
        }
    }
    let documented = operations_in_document(&generated());
    for (m, p) in &documented {
        let statuses = seen
            .get(&(m.clone(), p.clone()))
            .unwrap_or_else(|| panic!("{m} {p} was never called"));
        assert!(
            statuses.iter().any(|s| (200..300).contains(s)),
            "{m} {p}: no success seen ({statuses:?})"
        );
    }
    let all: BTreeSet<u16> = seen.values().flatten().copied().collect();
    for status in [200, 201, 400, 401, 402, 403, 404, 409, 415, 429] {
        assert!(all.contains(&status), "status {status} was never exercised");
    }
}
