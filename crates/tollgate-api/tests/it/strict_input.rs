//! Tried as a hostile client would: a corpus of bad bodies for every call that moves money or
//! changes what an account may do, derived from one valid body per call. Every one answers
//! 400 `validation_error` naming the field at fault (or, for a body that is not one JSON
//! object, saying so), and afterwards the ledger, the account's terms, its keys and its
//! requests are exactly as before.

use crate::harness::{new_id, now_rfc3339, Body, Resp, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use tollgate_core::ids::AccountId;

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
                    bad(json!(c), "a control character");
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

/// What a refused call must not have changed.
#[derive(Debug, PartialEq)]
struct State {
    ledger: Value,
    account: Value,
    keys: Vec<String>,
    price_versions: usize,
    requests: Vec<String>,
}

async fn state(app: &TestApp, requests: &[&str]) -> State {
    let acme = AccountId::parse("acme").unwrap();
    let keys = app
        .engine
        .read(move |r| r.api_keys(&acme))
        .await
        .expect("keys")
        .into_iter()
        .map(|k| format!("{} {} {:?}", k.key_id, k.scope.as_str(), k.revoked_at))
        .collect();
    let price_versions = app
        .engine
        .read(|r| r.price_versions())
        .await
        .expect("versions")
        .len();
    let mut statuses = Vec::new();
    for id in requests {
        statuses.push(app.status_of(id).await);
    }
    let mut ledger = app.reconciliation().await;
    ledger.as_object_mut().expect("object").remove("clean");
    State {
        ledger,
        account: app.account("acme").await,
        keys,
        price_versions,
        requests: statuses,
    }
}

fn field_of(r: &Resp) -> Option<String> {
    r.body["error"]["field"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_are_refused_naming_the_field_and_change_nothing() {
    let app = TestApp::spawn().await;
    let acme = app.customer("acme", Some(("50.00", "paid"))).await;
    let admin = app.create_key("acme", "ADMIN").await;
    let queued = app.submit_ok(&acme.key, "fal-ai/flux/dev").await;
    let started = app.submit_ok(&acme.key, "fal-ai/flux/dev").await;
    app.start(&started, None).await.expect(200);
    let op = app.operator_key.clone();
    let event = json!({
        "event_id": "evt-strict-1",
        "endpoint_id": "fal-ai/flux/dev",
        "username": "acme",
        "timestamp": now_rfc3339(),
        "status_code": 200,
        "output": { "images": [{ "width": 1920, "height": 1080 }] },
        "billable_units": "2",
        "queue_seconds": "0.5",
        "inference_seconds": "1.5",
        "num_gpus": 1,
    });
    let calls = vec![
        Call {
            method: Method::POST,
            path: "/v1/admin/accounts".into(),
            key: op.clone(),
            body: json!({ "username": "newco", "billing": "prepaid" }),
            credentials: &[],
            optional: false,
        },
        Call {
            method: Method::POST,
            path: "/v1/admin/accounts/acme/purchases".into(),
            key: op.clone(),
            body: json!({
                "purchase_id": "p-strict", "amount_usd": "5.00", "kind": "paid",
                "expires_at": "2030-01-01T00:00:00Z",
            }),
            credentials: &[],
            optional: false,
        },
        Call {
            method: Method::PUT,
            path: "/v1/admin/accounts/acme/pricing".into(),
            key: op.clone(),
            body: json!({
                "percent_discount": "10",
                "volume_tiers": [{ "from_usd": "100", "percent": "15" }],
                "concurrency_limit": 3,
                "lock_threshold_usd": "1.00",
                "prices": { "fal-ai/flux/dev": { "unit": "megapixel", "unit_price": "0.02", "rounding": "up" } },
                "effective_from": "2030-01-01T00:00:00Z",
            }),
            credentials: &[],
            optional: false,
        },
        Call {
            method: Method::POST,
            path: "/v1/admin/accounts/acme/keys".into(),
            key: op.clone(),
            body: json!({ "scope": "API", "alias": "ci" }),
            credentials: &[],
            optional: false,
        },
        Call {
            method: Method::POST,
            path: "/v1/keys".into(),
            key: admin.clone(),
            body: json!({ "alias": "ci" }),
            credentials: &[],
            optional: false,
        },
        Call {
            method: Method::POST,
            path: "/v1/requests".into(),
            key: op.clone(),
            body: json!({ "request_id": new_id(), "endpoint_id": "fal-ai/flux/dev", "caller_key": acme.key }),
            credentials: &["caller_key"],
            optional: false,
        },
        Call {
            method: Method::POST,
            path: format!("/v1/requests/{queued}/start"),
            key: op.clone(),
            body: json!({ "machine_type": "GPU-A100", "num_gpus": 1, "hold_units": "1" }),
            credentials: &[],
            optional: true,
        },
        Call {
            method: Method::POST,
            path: format!("/v1/requests/{started}/complete"),
            key: op.clone(),
            body: json!({
                "status_code": 200,
                "output": { "images": [{ "width": 1920, "height": 1080 }], "attributes": { "resolution": "4k" } },
                "billable_units": "2",
                "inference_seconds": "3.5",
            }),
            credentials: &[],
            optional: false,
        },
        Call {
            method: Method::POST,
            path: "/v1/usage-events".into(),
            key: op.clone(),
            body: json!({ "events": [event] }),
            credentials: &[],
            optional: false,
        },
    ];

    let requests = [queued.as_str(), started.as_str()];
    let before = state(&app, &requests).await;
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
            // A usage event's fault names the event (`error.index`) and its field.
            let (want, index) = match bad.field.as_deref().map(|f| f.strip_prefix("events[0].")) {
                Some(Some(inner)) => (Some(inner.to_string()), Some(0)),
                _ => (bad.field.clone(), None),
            };
            match &want {
                Some(field) => {
                    assert_eq!(field_of(&r).as_ref(), Some(field), "{what} -> {}", r.text)
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
            tried += 1;
        }
        assert_eq!(
            state(&app, &requests).await,
            before,
            "{} {}",
            call.method,
            call.path
        );
    }
    assert!(tried > 250, "the corpus has {tried} bodies");

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
    let before = state(&app, &[]).await;
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
    assert_eq!(state(&app, &[]).await, before);
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
