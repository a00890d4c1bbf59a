//! Tried as a hostile client would: a corpus of bad bodies for every call with a JSON body
//! that moves money, changes an account's terms, limits or keys, or writes billing state
//! (payments, invoices, webhooks, runners), derived from one valid body per call. Every one
//! answers 400 `validation_error` naming the field at fault (or, for a body that is not one
//! JSON object, saying so), and after each one the ledger, the accounts and their terms, the
//! keys, the requests, the limits, the payments, the invoices, the webhooks and the runners
//! are exactly as before.

use crate::harness::{new_id, rfc3339, Body, Resp, TestApp};
use crate::payments::{Pay, HOUR, T0};
use reqwest::Method;
use serde_json::{json, Value};
use tollgate_core::ids::AccountId;
use tollgate_store::testing::Backend;

/// One call of the corpus: a valid body, and who sends it.
struct Call {
    method: Method,
    path: String,
    key: String,
    body: Value,
    /// Fields whose text is a credential rather than syntax (`caller_key`): a bad one is a
    /// 401, not a 400, and is not mutated here.
    credentials: &'static [&'static str],
    /// The body may be left out (`start`): `null` means none, as the document says.
    optional: bool,
    /// Lists whose items are checked together once read (a webhook's event types: every
    /// unknown one is named in one refusal): a bad item's refusal may name the list rather
    /// than the item.
    whole_lists: &'static [&'static str],
    /// Fields whose line breaks are text (the issuer's address, printed as lines): the corpus
    /// gives them the other control characters.
    multiline: &'static [&'static str],
}

/// A bad body, and what the answer must name: `Some(field)`, or `None` for a body that is not
/// one JSON object at all.
struct Bad {
    text: String,
    field: Option<String>,
    what: String,
}

/// Spellings a lenient parser reads as a number and tollgate refuses.
const LOOSE_NUMBERS: [&str; 8] = ["1_0", "1e3", "+5", " 5", "5 ", ".5", "5.", "0x10"];
/// Control characters, which no id, name or value may carry.
const CONTROL: [&str; 4] = ["a\u{0}b", "line\nbreak", "\u{1b}[31mred", "tab\there"];

fn is_plain_decimal(s: &str) -> bool {
    tollgate_core::decimal::parse(s).is_ok()
}

/// Every leaf and object of `v` with its path, in serde_path_to_error's spelling
/// (`a.b[0].c`).
fn walk(v: &Value, path: String, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            if !path.is_empty() {
                out.push((path.clone(), v.clone()));
            }
            for (k, child) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                walk(child, p, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                walk(child, format!("{path}[{i}]"), out);
            }
        }
        _ => out.push((path, v.clone())),
    }
}

/// `v` with the value at `path` replaced.
fn replaced(v: &Value, path: &str, with: Value) -> Value {
    let mut out = v.clone();
    let mut cur = &mut out;
    let mut rest = path;
    while !rest.is_empty() {
        let (head, tail) = split_path(rest);
        cur = match head {
            Seg::Key(k) => cur.get_mut(&k).expect("a key of the body"),
            Seg::Index(i) => cur.get_mut(i).expect("an index of the body"),
        };
        rest = tail;
    }
    *cur = with;
    out
}

enum Seg {
    Key(String),
    Index(usize),
}

fn split_path(p: &str) -> (Seg, &str) {
    if let Some(rest) = p.strip_prefix('[') {
        let (i, tail) = rest.split_once(']').expect("closed index");
        return (
            Seg::Index(i.parse().expect("index")),
            tail.trim_start_matches('.'),
        );
    }
    // A key runs to the next `.` or `[`; the endpoint ids used as map keys hold neither.
    let end = p.find(['.', '[']).unwrap_or(p.len());
    let tail = &p[end..];
    (Seg::Key(p[..end].to_string()), tail.trim_start_matches('.'))
}

/// The bad bodies of one call.
fn corpus(call: &Call) -> Vec<Bad> {
    let valid = serde_json::to_string(&call.body).expect("JSON");
    let top = |text: String, what: &str| Bad {
        text,
        field: None,
        what: what.to_string(),
    };
    let at = |body: &Value, field: &str, what: String| Bad {
        text: serde_json::to_string(body).expect("JSON"),
        field: Some(field.to_string()),
        what,
    };
    let values: Vec<Value> = call
        .body
        .as_object()
        .expect("an object")
        .values()
        .cloned()
        .collect();
    let mut out = vec![
        top(
            serde_json::to_string(&values).expect("JSON"),
            "the fields as an array",
        ),
        top("[]".into(), "an empty array"),
        top(format!("{valid} trailing-garbage"), "trailing bytes"),
        top(format!("{valid}{valid}"), "two objects"),
        top(format!("{valid},"), "a trailing comma"),
        top("\"text\"".into(), "a string"),
        top(valid[..valid.len() - 1].to_string(), "a truncated object"),
    ];
    if !call.optional {
        out.push(top("null".into(), "null"));
    }
    // The first field given twice, the second time with another value.
    let (first, value) = call
        .body
        .as_object()
        .and_then(|m| m.iter().next())
        .expect("a field");
    out.push(Bad {
        text: format!(
            "{{\"{first}\": {}, {}",
            serde_json::to_string(&json!([value])).expect("JSON"),
            &valid[1..]
        ),
        field: Some(first.clone()),
        what: format!("`{first}` twice"),
    });
    let mut leaves = Vec::new();
    walk(&call.body, String::new(), &mut leaves);
    for (path, value) in leaves {
        let name = path.rsplit(['.', ']']).next().unwrap_or(&path);
        if call.credentials.contains(&name) {
            continue;
        }
        let mut bad = |with: Value, what: &str| {
            out.push(at(
                &replaced(&call.body, &path, with.clone()),
                &path,
                format!("{what}: {with}"),
            ))
        };
        match &value {
            Value::Object(_) => {
                bad(json!([]), "an array for an object");
                bad(json!("text"), "a string for an object");
            }
            Value::String(s) if is_plain_decimal(s) => {
                for loose in LOOSE_NUMBERS {
                    bad(json!(loose), "a loose number");
                }
                bad(json!(true), "a boolean for a decimal");
                bad(json!([s]), "an array for a decimal");
            }
            Value::String(_) => {
                for c in CONTROL {
                    if !(c.contains('\n') && call.multiline.contains(&name)) {
                        bad(json!(c), "a control character");
                    }
                }
                bad(json!(5), "a number for a string");
                bad(json!({}), "an object for a string");
            }
            Value::Number(_) => {
                bad(json!("1e3"), "a string for a number");
                bad(json!(1.5e300), "a number out of range");
                bad(json!([1]), "an array for a number");
            }
            Value::Bool(_) => bad(json!("true"), "a string for a boolean"),
            _ => {}
        }
    }
    out
}

/// What a refused call must not have changed: the ledger (balances, holds, transfers), every
/// account (its terms, lock and balance), the keys (acme's and the operator's), the price
/// versions, the requests in flight, acme's spending limits, payments (top-ups, refunds) and
/// auto top-up rule, the webhooks, the invoices and their issuer, and acme's runners.
#[derive(Debug, PartialEq)]
struct State {
    ledger: Value,
    accounts: Value,
    account: Value,
    keys: Vec<String>,
    operator_keys: Vec<String>,
    price_versions: usize,
    requests: Vec<String>,
    limits: Value,
    payments: Value,
    auto_top_up: Value,
    webhooks: Value,
    invoices: Value,
    issuer: String,
    runners: String,
}

/// One read: its status and body (a server without a payment provider answers the payment
/// reads 503, the same every time).
async fn read(app: &TestApp, path: &str, key: &str) -> Value {
    let mut r = app.raw(Method::GET, path, Some(key), Body::None).await;
    // An error's request id is the call's own.
    if let Some(e) = r.body.get_mut("error").and_then(Value::as_object_mut) {
        e.remove("request_id");
    }
    json!({ "status": r.status.as_u16(), "body": r.body })
}

/// The state of `app`, with acme's ADMIN key `admin` for acme's own reads.
async fn state(app: &TestApp, admin: &str, requests: &[&str]) -> State {
    let acme = AccountId::parse("acme").unwrap();
    let key_list = |keys: Vec<tollgate_store::ApiKeyRecord>| -> Vec<String> {
        keys.into_iter()
            .map(|k| format!("{} {} {:?}", k.key_id, k.scope.as_str(), k.revoked_at))
            .collect()
    };
    let a = acme.clone();
    let keys = key_list(
        app.engine
            .read(move |r| r.api_keys(&a))
            .await
            .expect("keys"),
    );
    let operator_keys = key_list(
        app.engine
            .read(|r| r.operator_keys())
            .await
            .expect("operator keys"),
    );
    let price_versions = app
        .engine
        .read(|r| r.price_versions())
        .await
        .expect("versions")
        .len();
    let issuer = format!(
        "{:?}",
        app.engine.read(|r| r.issuer()).await.expect("issuer")
    );
    let a = acme.clone();
    let runners = format!(
        "{:?}",
        app.engine
            .read(move |r| r.runners(&a, 1000))
            .await
            .expect("runners")
    );
    let mut statuses = Vec::new();
    for id in requests {
        statuses.push(app.status_of(id).await);
    }
    let mut ledger = app.reconciliation().await;
    ledger.as_object_mut().expect("object").remove("clean");
    let op = app.operator_key.as_str();
    State {
        ledger,
        accounts: read(app, "/v1/admin/accounts?limit=1000", op).await,
        account: app.account("acme").await,
        keys,
        operator_keys,
        price_versions,
        requests: statuses,
        limits: read(app, "/v1/admin/accounts/acme/spending-limits", op).await,
        payments: read(app, "/v1/account/payments", admin).await,
        auto_top_up: read(app, "/v1/account/auto-top-up", admin).await,
        webhooks: read(app, "/v1/admin/webhooks", op).await,
        invoices: read(app, "/v1/admin/invoices?limit=1000", op).await,
        issuer,
        runners,
    }
}

fn field_of(r: &Resp) -> Option<String> {
    r.body["error"]["field"].as_str().map(str::to_string)
}

fn call(method: Method, path: impl Into<String>, key: &str, body: Value) -> Call {
    Call {
        method,
        path: path.into(),
        key: key.to_string(),
        body,
        credentials: &[],
        optional: false,
        whole_lists: &[],
        multiline: &[],
    }
}

/// A tollgate with a payment provider (the stand-in) on a manual clock, with something for
/// every call of the corpus to act on: acme with a paid top-up (its card saved), a queued
/// and a started request, a spending limit of its own and one the operator set; two open
/// invoices of invoice accounts.
struct Scene {
    pay: Pay,
    /// acme's ADMIN key, and an API key's `key_id:secret`.
    admin: String,
    api: String,
    top_up: String,
    queued: String,
    started: String,
    own_limit: String,
    operator_limit: String,
    /// Two open invoices: one to pay, one to void.
    invoices: [String; 2],
}

impl Scene {
    async fn new() -> Scene {
        let pay = Pay::start(&Backend::Sqlite).await;
        let app = &pay.app;
        let admin = pay.account("acme").await;
        let (top_up, _) = pay.paid_top_up(&admin, "50", true).await;
        let api = app.create_key("acme", "API").await;
        let queued = app.submit_ok(&api, "fal-ai/flux/dev").await;
        let started = app.submit_ok(&api, "fal-ai/flux/dev").await;
        app.start(&started, None).await.expect(200);
        let limit = |key: &str, path: &str, period: &str| {
            let (key, path) = (key.to_string(), path.to_string());
            let body = json!({ "scope": "account", "period": period, "amount_usd": "500",
                "action": "block" });
            async move {
                app.raw(Method::POST, &path, Some(&key), Body::Json(body))
                    .await
                    .expect(201)["limit_id"]
                    .as_str()
                    .expect("a limit id")
                    .to_string()
            }
        };
        let own_limit = limit(&admin, "/v1/account/spending-limits", "day").await;
        let operator_limit = limit(
            &app.operator_key,
            "/v1/admin/accounts/acme/spending-limits",
            "week",
        )
        .await;
        for username in ["bigco", "bigco2"] {
            app.op(
                Method::POST,
                "/v1/admin/accounts",
                json!({ "username": username, "billing": "invoice" }),
            )
            .await
            .expect(201);
        }
        app.set_now(T0 + HOUR);
        let events: Vec<Value> = ["bigco", "bigco2"]
            .iter()
            .map(|u| {
                json!({ "event_id": format!("{u}-1"), "endpoint_id": "fal-ai/flux/dev",
                    "username": u, "timestamp": rfc3339(app.now_ms()), "status_code": 200,
                    "output": { "images": [{ "width": 1024, "height": 1024 }] } })
            })
            .collect();
        for result in app.usage_events(json!(events)).await.expect(200)["results"]
            .as_array()
            .expect("results")
        {
            assert!(result.get("error").is_none(), "{result}");
        }
        app.set_now(T0 + 2 * HOUR);
        let closed = app
            .op(Method::POST, "/v1/admin/invoices/close", json!({}))
            .await;
        let issued: Vec<String> = closed.expect(200)["issued"]
            .as_array()
            .expect("issued")
            .iter()
            .map(|i| i.as_str().expect("an id").to_string())
            .collect();
        let invoices: [String; 2] = issued.try_into().expect("two invoices");
        Scene {
            pay,
            admin,
            api,
            top_up,
            queued,
            started,
            own_limit,
            operator_limit,
            invoices,
        }
    }

    /// Every call with a JSON body that moves money, changes an account's terms, limits or
    /// keys, or writes billing state, with a valid body and who sends it.
    ///
    /// Left out, on purpose: `POST /v1/models/pricing/estimate` (a JSON body, but it reads and
    /// writes nothing; fal's estimate); `PUT /v1/admin/catalog` (a TOML document, refused with
    /// its line and field by tests/it/catalog.rs); `POST /v1/payments/stripe/webhook` (the
    /// payment provider's event, read only after its signature over the raw bytes is checked:
    /// a changed byte is a 400 on `Stripe-Signature`, tests/it/payments/signatures.rs). The
    /// other calls that write (cancel, portal sessions, redeliver, the DELETEs) take no body.
    fn calls(&self) -> Vec<Call> {
        let app = &self.pay.app;
        let op = app.operator_key.as_str();
        let admin = self.admin.as_str();
        let now = rfc3339(app.now_ms());
        let api_key_id = self.api.split(':').next().expect("key id");
        let event = json!({
            "event_id": "evt-strict-1",
            "endpoint_id": "fal-ai/flux/dev",
            "username": "acme",
            "timestamp": now,
            "status_code": 200,
            "output": { "images": [{ "width": 1920, "height": 1080 }] },
            "billable_units": "2",
            "queue_seconds": "0.5",
            "inference_seconds": "1.5",
            "num_gpus": 1,
        });
        let runner = json!({
            "event_id": "run-strict-1",
            "runner_id": "runner-strict-1",
            "username": "acme",
            "app": "strict-app",
            "environment": "main",
            "machine_type": "GPU-A100",
            "num_gpus": 1,
            "state": "RUNNING",
            "at": now,
            "is_surge": false,
        });
        let [to_pay, to_void] = &self.invoices;
        vec![
            // Accounts, credits and terms.
            call(
                Method::POST,
                "/v1/admin/accounts",
                op,
                json!({ "username": "newco", "billing": "prepaid" }),
            ),
            call(
                Method::POST,
                "/v1/admin/accounts/acme/purchases",
                op,
                json!({
                    "purchase_id": "p-strict", "amount_usd": "5.00", "kind": "paid",
                    "expires_at": "2030-01-01T00:00:00Z",
                }),
            ),
            call(
                Method::POST,
                "/v1/admin/accounts/acme/adjustments",
                op,
                json!({ "adjustment_id": "adj-strict", "amount_usd": "-2.50",
                    "reason": "double-billed request" }),
            ),
            call(
                Method::POST,
                "/v1/admin/accounts/acme/unlock",
                op,
                json!({ "reason": "dispute reviewed with the customer" }),
            ),
            call(
                Method::POST,
                format!("/v1/admin/accounts/acme/purchases/{}/refund", self.top_up),
                op,
                json!({ "refund_id": "rf-strict", "amount_usd": "1.00" }),
            ),
            call(
                Method::PUT,
                "/v1/admin/accounts/acme/pricing",
                op,
                json!({
                    "percent_discount": "10",
                    "volume_tiers": [{ "from_usd": "100", "percent": "15" }],
                    "concurrency_limit": 3,
                    "lock_threshold_usd": "1.00",
                    "prices": { "fal-ai/flux/dev": { "unit": "megapixel", "unit_price": "0.02", "rounding": "up" } },
                    "effective_from": "2030-01-01T00:00:00Z",
                }),
            ),
            // Keys.
            call(
                Method::POST,
                "/v1/admin/accounts/acme/keys",
                op,
                json!({ "scope": "API", "alias": "ci" }),
            ),
            call(Method::POST, "/v1/keys", admin, json!({ "alias": "ci" })),
            call(
                Method::POST,
                "/v1/admin/operator-keys",
                op,
                json!({ "alias": "gateway eu-1" }),
            ),
            // The gateway: requests, usage events, runner events.
            Call {
                credentials: &["caller_key"],
                ..call(
                    Method::POST,
                    "/v1/requests",
                    op,
                    json!({ "request_id": new_id(), "endpoint_id": "fal-ai/flux/dev",
                        "caller_key": self.api }),
                )
            },
            Call {
                optional: true,
                ..call(
                    Method::POST,
                    format!("/v1/requests/{}/start", self.queued),
                    op,
                    json!({ "machine_type": "GPU-A100", "num_gpus": 1, "hold_units": "1" }),
                )
            },
            call(
                Method::POST,
                format!("/v1/requests/{}/complete", self.started),
                op,
                json!({
                    "status_code": 200,
                    "output": { "images": [{ "width": 1920, "height": 1080 }], "attributes": { "resolution": "4k" } },
                    "billable_units": "2",
                    "inference_seconds": "3.5",
                }),
            ),
            call(
                Method::POST,
                "/v1/usage-events",
                op,
                json!({ "events": [event] }),
            ),
            call(
                Method::POST,
                "/v1/runners/events",
                op,
                json!({ "events": [runner] }),
            ),
            // Payments.
            call(
                Method::POST,
                "/v1/account/top-ups",
                admin,
                json!({ "amount_usd": "25.00", "success_url": "https://app.example.com/done",
                    "cancel_url": "https://app.example.com/billing", "save_payment_method": true }),
            ),
            call(
                Method::PUT,
                "/v1/account/auto-top-up",
                admin,
                json!({ "enabled": true, "threshold_usd": "10.00", "amount_usd": "25.00",
                    "max_per_month_usd": "200.00" }),
            ),
            // Spending limits, the customer's and the operator's.
            call(
                Method::POST,
                "/v1/account/spending-limits",
                admin,
                json!({ "scope": "account", "period": "month", "timezone": "Europe/Berlin",
                    "amount_usd": "500.00", "action": "block", "alert_at_percent": [50, 80, 100] }),
            ),
            call(
                Method::PUT,
                format!("/v1/account/spending-limits/{}", self.own_limit),
                admin,
                json!({ "amount_usd": "750.00", "action": "alert", "alert_at_percent": [80] }),
            ),
            call(
                Method::POST,
                "/v1/admin/accounts/acme/spending-limits",
                op,
                json!({ "scope": "api_key", "api_key_id": api_key_id, "period": "month",
                    "amount_usd": "100.00", "action": "alert", "alert_at_percent": [80] }),
            ),
            call(
                Method::PUT,
                format!(
                    "/v1/admin/accounts/acme/spending-limits/{}",
                    self.operator_limit
                ),
                op,
                json!({ "amount_usd": "900.00", "action": "block", "alert_at_percent": [90] }),
            ),
            // Invoices.
            call(
                Method::POST,
                format!("/v1/admin/invoices/{to_pay}/pay"),
                op,
                json!({ "payment_reference": "wire 2026-12-03 #4411" }),
            ),
            call(
                Method::POST,
                format!("/v1/admin/invoices/{to_void}/void"),
                op,
                json!({ "reason": "issued to the wrong account" }),
            ),
            call(
                Method::POST,
                "/v1/admin/invoices/close",
                op,
                json!({ "username": "bigco", "until": now }),
            ),
            Call {
                multiline: &["address"],
                ..call(
                    Method::PUT,
                    "/v1/admin/issuer",
                    op,
                    json!({ "name": "Example AI Inc.", "address": "1 Main St\nSpringfield",
                        "email": "billing@example.com", "tax_id": "US12-3456789" }),
                )
            },
            // Webhooks.
            Call {
                whole_lists: &["events"],
                ..call(
                    Method::POST,
                    "/v1/admin/webhooks",
                    op,
                    json!({ "url": "https://billing.example.com/tollgate-events",
                        "events": ["balance.low", "invoice.issued"], "description": "billing notices" }),
                )
            },
        ]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_are_refused_naming_the_field_and_change_nothing() {
    let scene = Scene::new().await;
    let app = &scene.pay.app;
    let calls = scene.calls();
    let requests = [scene.queued.as_str(), scene.started.as_str()];
    let before = state(app, &scene.admin, &requests).await;
    let mut tried = 0;
    for call in &calls {
        for bad in corpus(call) {
            let r = app
                .raw(
                    call.method.clone(),
                    &call.path,
                    Some(&call.key),
                    Body::Raw {
                        content_type: "application/json",
                        text: bad.text.clone(),
                    },
                )
                .await;
            let what = format!("{} {}: {}: {}", call.method, call.path, bad.what, bad.text);
            assert_eq!(r.status.as_u16(), 400, "{what} -> {}", r.text);
            assert_eq!(r.body["error"]["type"], "validation_error", "{what}");
            // A usage or runner event's fault names the event (`error.index`) and its field.
            let (want, index) = match bad.field.as_deref().map(|f| f.strip_prefix("events[0].")) {
                Some(Some(inner)) => (Some(inner.to_string()), Some(0)),
                _ => (bad.field.clone(), None),
            };
            match &want {
                Some(field) => {
                    let list = field.strip_suffix(']').and_then(|f| f.rsplit_once('['));
                    let named = field_of(&r);
                    match list {
                        Some((list, _))
                            if call.whole_lists.contains(&list)
                                && named.as_deref() == Some(list) => {}
                        _ => assert_eq!(named.as_ref(), Some(field), "{what} -> {}", r.text),
                    }
                }
                None => assert!(
                    ["json", "trailing", "eof", "expected"]
                        .iter()
                        .any(|w| r.message().contains(w)),
                    "{what} -> {}",
                    r.text
                ),
            }
            if let Some(i) = index {
                assert_eq!(r.body["error"]["index"], i, "{what}");
            }
            // Nothing changed, after this body (not only after the call's whole corpus).
            assert_eq!(state(app, &scene.admin, &requests).await, before, "{what}");
            tried += 1;
        }
    }
    assert!(tried > 700, "the corpus has {tried} bodies");

    // The valid bodies the corpus was made from are accepted: the refusals were the faults'.
    for call in &calls {
        let r = app
            .raw(
                call.method.clone(),
                &call.path,
                Some(&call.key),
                Body::Json(call.body.clone()),
            )
            .await;
        assert!(
            r.status.is_success(),
            "{} {}: {}",
            call.method,
            call.path,
            r.text
        );
    }
    app.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_parameter_an_operation_does_not_take_is_refused_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let c = app.customer("acme", Some(("5.00", "paid"))).await;
    let admin = app.create_key("acme", "ADMIN").await;
    let before = state(&app, &admin, &[]).await;
    let purchase = json!({ "purchase_id": "p-dry", "amount_usd": "5.00" });
    for (method, path, key, body) in [
        (
            Method::POST,
            "/v1/admin/accounts/acme/purchases?dry_run=true",
            app.operator_key.clone(),
            purchase.clone(),
        ),
        (
            Method::PUT,
            "/v1/admin/accounts/acme/pricing?dry_run=1",
            app.operator_key.clone(),
            json!({ "percent_discount": "50" }),
        ),
        (
            Method::POST,
            "/v1/admin/accounts/acme/keys?dry_run",
            app.operator_key.clone(),
            json!({ "scope": "API", "alias": "x" }),
        ),
        (
            Method::POST,
            "/v1/requests?priority=high",
            app.operator_key.clone(),
            json!({ "request_id": new_id(), "endpoint_id": "fal-ai/flux/dev", "caller_key": c.key }),
        ),
    ] {
        let r = app
            .raw(method.clone(), path, Some(&key), Body::Json(body))
            .await;
        r.expect_error(400, "validation_error");
        let named = path.split_once('?').unwrap().1.split('=').next().unwrap();
        assert_eq!(
            field_of(&r).as_deref(),
            Some(named),
            "{method} {path}: {}",
            r.text
        );
    }
    assert_eq!(state(&app, &admin, &[]).await, before);
    app.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_has_one_spelling_of_its_uuid() {
    let app = TestApp::spawn().await;
    let c = app.customer("acme", Some(("5.00", "paid"))).await;
    let id = "0193e3b0-6d2a-7c41-9f0e-2b8f4c6a1d53";
    app.submit_id(id, &c.key, "fal-ai/flux/dev")
        .await
        .expect(201);
    for other in [
        "0193E3B0-6D2A-7C41-9F0E-2B8F4C6A1D53",
        "0193e3b06d2a7c419f0e2b8f4c6a1d53",
        "{0193e3b0-6d2a-7c41-9f0e-2b8f4c6a1d53}",
        "urn:uuid:0193e3b0-6d2a-7c41-9f0e-2b8f4c6a1d53",
    ] {
        let r = app.submit_id(other, &c.key, "fal-ai/flux/dev").await;
        assert_eq!(
            r.expect_error(400, "validation_error")["field"],
            "request_id",
            "{other}"
        );
        let r = app.start(other, None).await;
        assert_eq!(
            r.expect_error(400, "validation_error")["field"],
            "request_id"
        );
    }
    assert_eq!(app.position("acme").await, (5 * crate::harness::USD, 0, 0));
    app.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_deleting_another_accounts_key_revokes_nothing() {
    let app = TestApp::spawn().await;
    let acme = app.customer("acme", Some(("5.00", "paid"))).await;
    app.customer("rival", None).await;
    let rival_admin = app.create_key("rival", "ADMIN").await;
    let acme_key_id = acme.key.split(':').next().unwrap().to_string();
    for id in [acme_key_id.as_str(), "no-such-key", "bad id!"] {
        let r = app
            .raw(
                Method::DELETE,
                &format!("/v1/keys/{}", id.replace(' ', "%20")),
                Some(&rival_admin),
                Body::None,
            )
            .await;
        assert_eq!(r.status.as_u16(), 204, "{id}: {}", r.text);
    }
    // acme's key still works.
    let r = app
        .billing(&app.create_key("acme", "ADMIN").await, "")
        .await;
    r.expect(200);
    app.submit_ok(&acme.key, "fal-ai/flux/dev").await;
    app.assert_reconciled().await;
}

/// Keeps the helpers honest: the path syntax the corpus writes is the one the server names.
#[test]
fn corpus_paths_match_the_bodies() {
    let body = json!({ "a": { "b": [{ "c": 1 }] }, "m": { "x/y": { "z": "2" } } });
    let mut leaves = Vec::new();
    walk(&body, String::new(), &mut leaves);
    let paths: Vec<&str> = leaves.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, ["a", "a.b[0]", "a.b[0].c", "m", "m.x/y", "m.x/y.z"]);
    assert_eq!(
        replaced(&body, "m.x/y.z", json!(3)),
        json!({ "a": { "b": [{ "c": 1 }] }, "m": { "x/y": { "z": 3 } } })
    );
}
