//! What every call leaves behind and what guards it: the request id (`x-request-id`, in the
//! error envelope as `request_id`), the probes (`/healthz`, `/readyz`), the key checked before
//! any byte of the body is read, and the body limits (413 `payload_too_large`).

use crate::harness::{Body, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate_api::AppState;
use tollgate_core::Timestamp;
use tollgate_engine::{system_clock, Engine, READINESS_REUSE};
use tollgate_store::testing::{Backend, TestDb};
use tollgate_store::{ReaderFactory, Rerunnable, Result as StoreResult, Store, SyncFn};

#[tokio::test]
async fn a_callers_request_id_is_echoed_and_a_new_one_made_otherwise() {
    let app = TestApp::spawn().await;
    let get = |id: Option<&'static [u8]>| {
        let mut req = app.client.get(format!("{}/v1/models", app.address));
        if let Some(id) = id {
            req = req.header(
                "x-request-id",
                reqwest::header::HeaderValue::from_bytes(id).expect("a header value"),
            );
        }
        req.send()
    };
    let id_of = |r: &reqwest::Response| {
        r.headers()
            .get("x-request-id")
            .expect("every answer carries x-request-id")
            .to_str()
            .expect("text")
            .to_string()
    };

    let r = get(Some(b"trace-4f2a/9:b")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(id_of(&r), "trace-4f2a/9:b");

    // None sent, or one that is not a sane id: a new UUID each time.
    let long = Box::leak(vec![b'a'; 129].into_boxed_slice());
    let mut made = Vec::new();
    for sent in [
        None,
        None,
        Some(&long[..]),
        Some(b"two words".as_slice()),
        Some(b"caf\xe9"),
    ] {
        let r = get(sent).await.unwrap();
        assert_eq!(r.status(), 200);
        let id = id_of(&r);
        uuid::Uuid::parse_str(&id).unwrap_or_else(|_| panic!("{id} is a new UUID"));
        made.push(id);
    }
    made.sort();
    made.dedup();
    assert_eq!(made.len(), 5, "every new id is new");
    // At the limit, it is taken.
    let at_limit = Box::leak(vec![b'z'; 128].into_boxed_slice());
    assert_eq!(id_of(&get(Some(at_limit)).await.unwrap()), "z".repeat(128));
    app.assert_reconciled().await;
}

#[tokio::test]
async fn every_error_envelope_carries_the_calls_request_id() {
    let app = TestApp::spawn().await;
    let call =
        |method: Method, path: &str, key: Option<String>, id: Option<&str>, body: Option<&str>| {
            let mut req = app.client.request(method, format!("{}{path}", app.address));
            if let Some(k) = key {
                req = req.header("Authorization", format!("Key {k}"));
            }
            if let Some(id) = id {
                req = req.header("x-request-id", id.to_string());
            }
            if let Some(b) = body {
                req = req
                    .header("Content-Type", "application/json")
                    .body(b.to_string());
            }
            req.send()
        };
    let op = Some(app.operator_key.clone());
    // The extractors' (401, 400), the handler's (404), the router's (404, 405) and axum's own
    // (the body's content type), with and without a given id.
    // (method, path, key, the x-request-id sent, the status answered)
    type Case<'a> = (Method, &'a str, Option<String>, Option<&'a str>, u16);
    let cases: Vec<Case> = vec![
        (
            Method::GET,
            "/v1/admin/reconciliation",
            None,
            Some("gw-1"),
            401,
        ),
        (Method::GET, "/v1/admin/reconciliation", None, None, 401),
        (
            Method::POST,
            "/v1/admin/accounts",
            op.clone(),
            Some("gw-2"),
            400,
        ),
        (
            Method::GET,
            "/v1/admin/accounts/nobody",
            op.clone(),
            Some("gw-3"),
            404,
        ),
        (Method::GET, "/v1/no-such-path", None, None, 404),
        (Method::DELETE, "/v1/models", None, Some("gw-4"), 405),
    ];
    for (method, path, key, id, status) in cases {
        let what = format!("{method} {path}");
        let body = (method == Method::POST).then_some("{\"username\": 5}");
        let r = call(method, path, key, id, body).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{what}");
        let header = r.headers()["x-request-id"].to_str().unwrap().to_string();
        if let Some(id) = id {
            assert_eq!(header, id, "{what}");
        }
        let body: Value = r.json().await.expect("an envelope");
        assert_eq!(
            body["error"]["request_id"],
            header.as_str(),
            "{what}: {body}"
        );
        assert!(body["error"]["type"].is_string(), "{what}: {body}");
    }
    app.assert_reconciled().await;
}

#[tokio::test]
async fn liveness_and_readiness_need_no_key() {
    let app = TestApp::spawn().await;
    let r = app.raw(Method::GET, "/healthz", None, Body::None).await;
    assert_eq!(r.expect(200), &json!({ "status": "ok" }));
    let r = app.raw(Method::GET, "/readyz", None, Body::None).await;
    assert_eq!(
        r.expect(200),
        &json!({
            "status": "ready",
            "checks": { "writer": "ok", "database": "ok", "migrations": "ok", "disk_sync": "ok" }
        })
    );
    app.assert_reconciled().await;
}

/// A store whose schema version can be moved under the engine, as a newer tollgate migrating
/// a shared database would.
struct Migrated {
    inner: Box<dyn Store>,
    ahead: Arc<AtomicI64>,
}

impl Store for Migrated {
    fn transaction(&mut self, work: &mut Rerunnable) -> StoreResult<()> {
        self.inner.transaction(work)
    }
    fn defer_sync(&mut self) -> StoreResult<Option<SyncFn>> {
        self.inner.defer_sync()
    }
    fn idle(&mut self) -> StoreResult<()> {
        self.inner.idle()
    }
    fn reader_factory(&self) -> ReaderFactory {
        self.inner.reader_factory()
    }
    fn schema_version(&mut self) -> StoreResult<i64> {
        Ok(self.inner.schema_version()? + self.ahead.load(Ordering::SeqCst))
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[tokio::test]
async fn readiness_fails_naming_the_check_when_the_schema_moved_under_the_server() {
    let db = TestDb::new(&Backend::Sqlite);
    let ahead = Arc::new(AtomicI64::new(0));
    let store = Migrated {
        inner: db.open().unwrap(),
        ahead: ahead.clone(),
    };
    let now = Arc::new(AtomicI64::new(system_clock()().0));
    let clock = now.clone();
    let engine = Engine::start(
        Box::new(store),
        Arc::new(move || Timestamp(clock.load(Ordering::SeqCst))),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = tollgate_api::router(AppState::new(engine));
    tokio::spawn(async move { axum::serve(listener, router).await });
    let client = reqwest::Client::new();
    let ready = || async {
        let r = client.get(format!("{base}/readyz")).send().await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };

    let (status, body) = ready().await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ready")),
        "{body}"
    );
    ahead.store(1, Ordering::SeqCst);
    // A probe within READINESS_REUSE of the last check is answered with that check.
    assert_eq!(ready().await.0, 200);
    now.fetch_add(READINESS_REUSE.as_millis() as i64, Ordering::SeqCst);
    let (status, body) = ready().await;
    assert_eq!(
        (status, body["status"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    let why = body["checks"]["migrations"].as_str().unwrap();
    assert!(why.contains("schema is at version"), "{body}");
    assert_eq!(body["checks"]["writer"], "ok", "{body}");
    assert_eq!(body["checks"]["database"], "ok", "{body}");
    // Liveness does not depend on it.
    let r = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// Sends a request head announcing `length` bytes of body and only the first `sent` of them,
/// then reads the answer: a server that waited for the body before answering would never
/// answer. Returns the status, the head and the body.
async fn send_part(app: &TestApp, head: &str, length: usize, sent: usize) -> (u16, String, Value) {
    let addr = app.address.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{head}Host: {addr}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may close its end once it has answered: a failed write is not the answer.
    let _ = s.write_all(&vec![b' '; sent]).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
            if let Some(end) = find(&out, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&out[..end]).to_lowercase();
                let want = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if want.is_some_and(|n| out.len() >= end + 4 + n) {
                    break;
                }
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no answer while the body was not sent in full"
    );
    let end = find(&out, b"\r\n\r\n").expect("an answer head");
    let head = String::from_utf8_lossy(&out[..end]).to_string();
    let status = head[9..12].parse().expect("a status");
    let body = serde_json::from_slice(&out[end + 4..]).unwrap_or(Value::Null);
    (status, head.to_lowercase(), body)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test]
async fn every_keyed_call_checks_the_key_before_reading_the_body() {
    let app = TestApp::spawn().await;
    let doc: Value = serde_json::from_str(tollgate_api::openapi::json()).unwrap();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let keyed = op["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.get("Key").is_some()));
            if op.get("requestBody").is_none() || !keyed {
                continue;
            }
            // Any value for the path's parameters: the key is checked first.
            let mut target = String::new();
            for part in path.split('/').skip(1) {
                target.push('/');
                target.push_str(if part.starts_with('{') {
                    "0190a0b1-0000-7000-8000-000000000001"
                } else {
                    part
                });
            }
            let method = method.to_uppercase();
            for auth in [
                "",
                "Authorization: Key 0190a0b1-0000-7000-8000-000000000002:wrong\r\n",
            ] {
                // 64 MiB announced (over every limit), 256 KiB sent.
                let head = format!("{method} {target} HTTP/1.1\r\n{auth}");
                let (status, head, body) = send_part(&app, &head, 64 << 20, 256 << 10).await;
                assert_eq!(status, 401, "{method} {path}: {head}\n{body}");
                assert_eq!(
                    body["error"]["type"], "authorization_error",
                    "{method} {path}"
                );
                assert!(
                    head.contains("connection: close"),
                    "{method} {path}: {head}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "only {checked} calls checked");
    app.assert_reconciled().await;
}

#[tokio::test]
async fn a_body_over_its_calls_limit_is_refused_with_413_naming_the_limit() {
    let app = TestApp::spawn().await;
    let op = format!("Authorization: Key {}\r\n", app.operator_key);
    let mib = 1usize << 20;
    for (method, path, limit) in [
        ("POST", "/v1/admin/accounts", mib),
        ("POST", "/v1/requests", mib),
        ("PUT", "/v1/admin/catalog", 4 * mib),
        ("POST", "/v1/usage-events", 16 * mib),
        ("POST", "/v1/runners/events", 16 * mib),
    ] {
        let head = format!("{method} {path} HTTP/1.1\r\n{op}x-request-id: big-{limit}\r\n");
        // The whole body is sent; the server reads up to the limit and stops there.
        let (status, head, body) = send_part(&app, &head, limit + 1, limit + 1).await;
        assert_eq!(status, 413, "{method} {path}: {head}\n{body}");
        let err = &body["error"];
        assert_eq!(err["type"], "payload_too_large", "{body}");
        assert_eq!(err["limit_bytes"], limit, "{body}");
        assert_eq!(err["request_id"], format!("big-{limit}"), "{body}");
        assert!(
            err["message"]
                .as_str()
                .unwrap()
                .contains(&limit.to_string()),
            "{body}"
        );
    }
    // Under the bulk limit, a bulk call larger than the default limit is read.
    let mut events = String::from("{\"events\": []");
    events.push_str(&" ".repeat(2 * mib));
    events.push('}');
    let r = app
        .raw(
            Method::POST,
            "/v1/usage-events",
            Some(&app.operator_key),
            Body::Raw {
                content_type: "application/json",
                text: events,
            },
        )
        .await;
    assert_eq!(r.expect(200)["results"], json!([]), "{}", r.text);
    app.assert_reconciled().await;
}
