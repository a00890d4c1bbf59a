//! The test harness: one isolated tollgate per test (zero2prod's `spawn_app`, crates.io's
//! `TestApp`). Each `TestApp` owns a temporary SQLite database, an engine with the shipped
//! sample catalog, an operator key, the HTTP router on a free local port and the hold-expiry
//! sweeper, and talks to it over real HTTP with reqwest.
//!
//! Every test ends with `app.assert_reconciled().await`; dropping a `TestApp` without that
//! call fails the test, so no test can forget to check that the ledger still adds up.

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tollgate_api::auth::mint_key;
use tollgate_api::payments::{PaymentSettings, Payments};
use tollgate_api::webhooks::deliver::Dispatcher;
use tollgate_api::webhooks::WebhookSettings;
use tollgate_api::AppState;
use tollgate_core::catalog::document;
use tollgate_core::Timestamp;
use tollgate_engine::{system_clock, AdminCmd, AdminReply, Clock, Engine};
use tollgate_store::testing::{Backend, TestDb};
use tollgate_store::Scope;

/// The catalog tollgate ships (34 real fal endpoints).
pub const SAMPLE_CATALOG: &str = include_str!("../../../../catalog/sample.toml");

/// 1 USD in nano-USD.
pub const USD: i64 = 1_000_000_000;

/// An HTTP answer: status, headers and the JSON body (`Value::Null` when there is none).
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
    /// The body as sent (a PDF, for one).
    pub bytes: Vec<u8>,
}

impl Resp {
    async fn read(resp: reqwest::Response) -> Resp {
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("a readable body").to_vec();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            body,
            text,
            bytes,
        }
    }

    /// Asserts the status and returns the body.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "expected HTTP {status}, got {}: {}",
            self.status,
            self.text
        );
        &self.body
    }

    /// Asserts an error answer: the status and fal's envelope `{"error": {"type", "message"}}`
    /// with the given type. Returns the error object.
    #[track_caller]
    pub fn expect_error(&self, status: u16, kind: &str) -> &Value {
        let body = self.expect(status);
        let err = &body["error"];
        assert_eq!(err["type"], kind, "error type in {}", self.text);
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "an error has a message: {}",
            self.text
        );
        err
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The error message, lower-cased (for "names the problem" checks).
    pub fn message(&self) -> String {
        self.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase()
    }
}

/// A request body.
pub enum Body {
    None,
    Json(Value),
    Raw {
        content_type: &'static str,
        text: String,
    },
}

/// A customer account with an API key (and, where a test needs it, an ADMIN key).
#[derive(Clone, Debug)]
pub struct Customer {
    /// `key_id:secret` of an API-scope key, for `caller_key`.
    pub key: String,
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    /// `key_id:secret` of the operator key.
    pub operator_key: String,
    pub engine: Engine,
    /// The server's `[webhooks]` settings.
    pub webhooks: Arc<WebhookSettings>,
    /// The server's payment provider, when it has one ([`TestApp::spawn_with_payments`]).
    pub payments: Option<Arc<Payments>>,
    /// The time the engine sees, in ms, when the test controls it ([`TestApp::spawn_at`]).
    manual_clock: Option<Arc<AtomicI64>>,
    reconciled: AtomicBool,
    _db: TestDb,
}

/// The exact decimal of a JSON number or decimal string (no float arithmetic: the number is
/// read through its shortest text, which is how tollgate renders exact decimals).
#[track_caller]
pub fn dec(v: &Value) -> Decimal {
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => panic!("expected a number, got {other}"),
    };
    Decimal::from_str(&text)
        .or_else(|_| Decimal::from_scientific(&text))
        .unwrap_or_else(|e| panic!("`{text}` is not a decimal: {e}"))
}

/// A decimal literal.
pub fn d(s: &str) -> Decimal {
    Decimal::from_str(s).expect("decimal literal")
}

/// An integer JSON field.
#[track_caller]
pub fn int(v: &Value) -> i64 {
    v.as_i64()
        .unwrap_or_else(|| panic!("expected an integer, got {v}"))
}

/// Milliseconds since the epoch of an RFC 3339 JSON string.
#[track_caller]
pub fn millis(v: &Value) -> i64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("expected an RFC 3339 string, got {v}"));
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("`{s}` is not RFC 3339: {e}"))
        .timestamp_millis()
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// RFC 3339 (UTC, milliseconds) of a time in ms since the epoch.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("a time in range")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// One output image of `w` x `h` pixels.
pub fn image(w: u64, h: u64) -> Value {
    json!({ "images": [{ "width": w, "height": h }] })
}

impl TestApp {
    /// Starts an isolated tollgate: temp database, engine, sample catalog, operator key,
    /// HTTP server on 127.0.0.1:0, hold-expiry sweeper every 100 ms (on the system clock).
    pub async fn spawn() -> TestApp {
        Self::spawn_with(&Backend::Sqlite, None).await
    }

    /// Like [`TestApp::spawn`], with the engine's clock stopped at `ms` (since the epoch) until
    /// the test moves it with [`TestApp::set_now`].
    pub async fn spawn_at(ms: i64) -> TestApp {
        Self::spawn_at_on(&Backend::Sqlite, ms).await
    }

    /// Like [`TestApp::spawn_at`], on a database of `backend`.
    pub async fn spawn_at_on(backend: &Backend, ms: i64) -> TestApp {
        Self::spawn_with(backend, Some(Arc::new(AtomicI64::new(ms)))).await
    }

    /// Like [`TestApp::spawn`], on a database of `backend`.
    pub async fn spawn_on(backend: &Backend) -> TestApp {
        Self::spawn_with(backend, None).await
    }

    /// Moves the engine's clock (only for an app from [`TestApp::spawn_at`]).
    pub fn set_now(&self, ms: i64) {
        self.manual_clock
            .as_ref()
            .expect("set_now needs TestApp::spawn_at")
            .store(ms, Ordering::SeqCst);
    }

    /// The engine's time, in ms (only for an app from [`TestApp::spawn_at`]).
    pub fn now_ms(&self) -> i64 {
        self.manual_clock
            .as_ref()
            .expect("now_ms needs TestApp::spawn_at")
            .load(Ordering::SeqCst)
    }

    /// Moves the engine's clock forward by `ms` and runs the hold and credit expiry sweep at
    /// the new time, as the server's sweeper would at its next tick. Returns how many requests
    /// expired.
    pub async fn advance(&self, ms: i64) -> usize {
        self.set_now(self.now_ms() + ms);
        self.engine.sweep_expired().await.expect("the sweep runs")
    }

    /// The engine's clock: the test's manual clock for an app from [`TestApp::spawn_at`],
    /// else the system's (for another server that shares this one's time).
    pub fn clock(&self) -> Clock {
        match &self.manual_clock {
            None => system_clock(),
            Some(now) => {
                let now = now.clone();
                Arc::new(move || Timestamp(now.load(Ordering::SeqCst)))
            }
        }
    }

    /// The app's database (for another server on the same PostgreSQL database).
    pub fn db(&self) -> &TestDb {
        &self._db
    }

    /// Like [`TestApp::spawn_at`] (or [`TestApp::spawn`] without a time), with these
    /// `[webhooks]` settings. No dispatcher runs: a test sends what is due with
    /// [`TestApp::dispatcher`]'s `run_once`, or starts one with [`TestApp::spawn_dispatcher`].
    pub async fn spawn_with_webhooks(at: Option<i64>, settings: WebhookSettings) -> TestApp {
        let clock = at.map(|ms| Arc::new(AtomicI64::new(ms)));
        Self::spawn_configured(&Backend::Sqlite, clock, settings).await
    }

    /// Like [`TestApp::spawn_at_on`] (or [`TestApp::spawn_on`] without a time), with a payment provider (`payments`: a stand-in's
    /// settings) and these `[webhooks]` settings, as `serve` starts with `[stripe]` set: the
    /// top-up settings reach the engine and the provider's row among the webhooks is made. No
    /// dispatcher runs (see [`TestApp::spawn_with_webhooks`]).
    pub async fn spawn_with_payments(
        backend: &Backend,
        at: Option<i64>,
        payments: PaymentSettings,
        webhooks: WebhookSettings,
    ) -> TestApp {
        let clock = at.map(|ms| Arc::new(AtomicI64::new(ms)));
        Self::spawn_full(backend, clock, webhooks, Some(payments)).await
    }

    /// A webhook dispatcher on this app's engine and settings, with its payment provider.
    pub fn dispatcher(&self) -> Dispatcher {
        Dispatcher::new(self.engine.clone(), self.webhooks.clone())
            .with_payments(self.payments.clone())
    }

    /// Starts the server's webhook dispatcher (as `serve` does), ticking every 100 ms.
    pub fn spawn_dispatcher(&self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.dispatcher().run(Duration::from_millis(100)))
    }

    async fn spawn_with(backend: &Backend, manual_clock: Option<Arc<AtomicI64>>) -> TestApp {
        Self::spawn_configured(backend, manual_clock, WebhookSettings::default()).await
    }

    async fn spawn_configured(
        backend: &Backend,
        manual_clock: Option<Arc<AtomicI64>>,
        webhooks: WebhookSettings,
    ) -> TestApp {
        Self::spawn_full(backend, manual_clock, webhooks, None).await
    }

    async fn spawn_full(
        backend: &Backend,
        manual_clock: Option<Arc<AtomicI64>>,
        webhooks: WebhookSettings,
        payments: Option<PaymentSettings>,
    ) -> TestApp {
        let db = TestDb::new(backend);
        let store = db.open().expect("open the store");
        let clock: Clock = match &manual_clock {
            None => system_clock(),
            Some(now) => {
                let now = now.clone();
                Arc::new(move || Timestamp(now.load(Ordering::SeqCst)))
            }
        };
        let engine = Engine::start(store, clock).expect("start engine");

        let doc = document::parse(SAMPLE_CATALOG).expect("the sample catalog parses");
        let reply = engine
            .admin(AdminCmd::ApplyCatalog(Box::new(doc)))
            .await
            .expect("apply the sample catalog");
        assert!(
            matches!(reply, AdminReply::CatalogApplied { endpoints, .. } if endpoints > 30),
            "{reply:?}"
        );

        let key = mint_key(None, Scope::Operator, "test operator".into(), engine.now());
        engine
            .admin(AdminCmd::InsertKey(key.record.clone()))
            .await
            .expect("insert the operator key");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port");
        let address = format!("http://{}", listener.local_addr().expect("local addr"));
        let payments = match payments {
            Some(p) => {
                engine
                    .set_top_up_settings(p.top_ups)
                    .expect("the top-up settings");
                let started = Payments::start(&engine, p)
                    .await
                    .expect("the payment provider's webhook row and the installation id");
                Some(Arc::new(started))
            }
            None => None,
        };
        let webhooks = Arc::new(webhooks);
        let router = tollgate_api::router(AppState {
            webhooks: webhooks.clone(),
            payments: payments.clone(),
            ..AppState::new(engine.clone())
        });
        tokio::spawn(async move {
            axum::serve(listener, router).await.expect("serve");
        });
        // On the system clock, holds expire as in a server; a test that moves the clock runs the
        // sweep itself ([`TestApp::advance`]), at the times it chooses.
        if manual_clock.is_none() {
            tollgate_api::spawn_sweeper(engine.clone(), Duration::from_millis(100));
        }

        TestApp {
            address,
            client: reqwest::Client::new(),
            operator_key: key.key(),
            engine,
            webhooks,
            payments,
            manual_clock,
            reconciled: AtomicBool::new(false),
            _db: db,
        }
    }

    // ----- raw HTTP -------------------------------------------------------------------------

    /// Any request, with `Authorization: Key <key>` when `key` is given.
    pub async fn raw(&self, method: Method, path: &str, key: Option<&str>, body: Body) -> Resp {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.address));
        if let Some(k) = key {
            req = req.header("Authorization", format!("Key {k}"));
        }
        req = match body {
            Body::None => req,
            Body::Json(v) => req.json(&v),
            Body::Raw { content_type, text } => req.header("Content-Type", content_type).body(text),
        };
        Resp::read(req.send().await.expect("the server answers")).await
    }

    /// A request with an arbitrary `Authorization` header value (or none).
    pub async fn with_auth_header(&self, method: Method, path: &str, auth: Option<&str>) -> Resp {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.address));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        Resp::read(req.send().await.expect("the server answers")).await
    }

    /// An operator call with a JSON body.
    pub async fn op(&self, method: Method, path: &str, body: Value) -> Resp {
        self.raw(method, path, Some(&self.operator_key), Body::Json(body))
            .await
    }

    /// An operator call with a raw body (malformed JSON etc.).
    pub async fn op_text(&self, method: Method, path: &str, text: &str) -> Resp {
        self.raw(
            method,
            path,
            Some(&self.operator_key),
            Body::Raw {
                content_type: "application/json",
                text: text.to_string(),
            },
        )
        .await
    }

    pub async fn op_get(&self, path: &str) -> Resp {
        self.raw(Method::GET, path, Some(&self.operator_key), Body::None)
            .await
    }

    // ----- operator API ---------------------------------------------------------------------

    pub async fn create_account(&self, username: &str) -> Resp {
        self.op(
            Method::POST,
            "/v1/admin/accounts",
            json!({ "username": username }),
        )
        .await
    }

    /// `POST /v1/admin/accounts/{u}/purchases` with `amount_usd` as a JSON string.
    pub async fn purchase(
        &self,
        username: &str,
        purchase_id: &str,
        amount: &str,
        kind: &str,
    ) -> Resp {
        self.op(
            Method::POST,
            &format!("/v1/admin/accounts/{username}/purchases"),
            json!({ "purchase_id": purchase_id, "amount_usd": amount, "kind": kind }),
        )
        .await
    }

    /// Creates a customer key; returns `key_id:secret`.
    pub async fn create_key(&self, username: &str, scope: &str) -> String {
        let r = self
            .op(
                Method::POST,
                &format!("/v1/admin/accounts/{username}/keys"),
                json!({ "scope": scope, "alias": format!("{scope} key") }),
            )
            .await;
        created_key(r.expect(201), scope)
    }

    /// A new account with an API key and, if `credits` is given, a purchase of that many USD
    /// (`kind` "paid" or "free").
    pub async fn customer(&self, username: &str, credits: Option<(&str, &str)>) -> Customer {
        let body = self.create_account(username).await;
        assert_eq!(body.expect(201)["username"], username);
        if let Some((amount, kind)) = credits {
            self.purchase(username, &format!("initial-{username}"), amount, kind)
                .await
                .expect(201);
        }
        let key = self.create_key(username, "API").await;
        Customer { key }
    }

    /// `GET /v1/admin/accounts/{u}`; asserts 200.
    pub async fn account(&self, username: &str) -> Value {
        self.op_get(&format!("/v1/admin/accounts/{username}"))
            .await
            .expect(200)
            .clone()
    }

    /// The account's balance, held amount and requests in progress.
    pub async fn position(&self, username: &str) -> (i64, i64, i64) {
        let a = self.account(username).await;
        assert_eq!(
            int(&a["available_nano_usd"]),
            int(&a["balance_nano_usd"]) - int(&a["held_nano_usd"]),
            "available = balance - held: {a}"
        );
        (
            int(&a["balance_nano_usd"]),
            int(&a["held_nano_usd"]),
            int(&a["in_progress"]),
        )
    }

    pub async fn set_pricing(&self, username: &str, body: Value) -> Resp {
        self.op(
            Method::PUT,
            &format!("/v1/admin/accounts/{username}/pricing"),
            body,
        )
        .await
    }

    /// `PUT /v1/admin/catalog` with a TOML document.
    pub async fn apply_catalog(&self, toml: &str) -> Resp {
        self.raw(
            Method::PUT,
            "/v1/admin/catalog",
            Some(&self.operator_key),
            Body::Raw {
                content_type: "application/toml",
                text: toml.to_string(),
            },
        )
        .await
    }

    /// `GET /v1/admin/reconciliation`; asserts 200.
    pub async fn reconciliation(&self) -> Value {
        self.op_get("/v1/admin/reconciliation")
            .await
            .expect(200)
            .clone()
    }

    /// The ledger reconciles: every stored balance, hold, slot count and line item agrees with
    /// the transfers and requests. Call last in every test.
    pub async fn assert_reconciled(&self) {
        let r = self.reconciliation().await;
        assert_eq!(r["clean"], true, "the ledger does not reconcile: {r}");
        for list in [
            "balance_mismatches",
            "held_mismatches",
            "in_progress_mismatches",
            "line_item_mismatches",
            "rollup_mismatches",
        ] {
            assert_eq!(r[list], json!([]), "{list}: {r}");
        }
        self.reconciled.store(true, Ordering::SeqCst);
    }

    // ----- gateway API ----------------------------------------------------------------------

    /// Submits a new request; returns its id and the answer.
    pub async fn submit(&self, caller_key: &str, endpoint: &str) -> (String, Resp) {
        let id = new_id();
        let r = self.submit_id(&id, caller_key, endpoint).await;
        (id, r)
    }

    pub async fn submit_id(&self, id: &str, caller_key: &str, endpoint: &str) -> Resp {
        self.op(
            Method::POST,
            "/v1/requests",
            json!({ "request_id": id, "endpoint_id": endpoint, "caller_key": caller_key }),
        )
        .await
    }

    /// Submits and asserts 201 IN_QUEUE; returns the request id.
    pub async fn submit_ok(&self, caller_key: &str, endpoint: &str) -> String {
        let (id, r) = self.submit(caller_key, endpoint).await;
        let body = r.expect(201);
        assert_eq!(body["request_id"], id.as_str());
        assert_eq!(body["status"], "IN_QUEUE");
        id
    }

    /// `POST /v1/requests/{id}/start`, without a body unless one is given.
    pub async fn start(&self, id: &str, body: Option<Value>) -> Resp {
        let body = body.map_or(Body::None, Body::Json);
        self.raw(
            Method::POST,
            &format!("/v1/requests/{id}/start"),
            Some(&self.operator_key),
            body,
        )
        .await
    }

    pub async fn complete(&self, id: &str, body: Value) -> Resp {
        self.op(Method::POST, &format!("/v1/requests/{id}/complete"), body)
            .await
    }

    pub async fn cancel(&self, id: &str) -> Resp {
        self.raw(
            Method::POST,
            &format!("/v1/requests/{id}/cancel"),
            Some(&self.operator_key),
            Body::None,
        )
        .await
    }

    pub async fn get_request(&self, id: &str) -> Resp {
        self.op_get(&format!("/v1/requests/{id}")).await
    }

    /// The request's status as `GET /v1/requests/{id}` shows it.
    pub async fn status_of(&self, id: &str) -> String {
        self.get_request(id).await.expect(200)["status"]
            .as_str()
            .expect("status")
            .to_string()
    }

    pub async fn usage_events(&self, events: Value) -> Resp {
        self.op(
            Method::POST,
            "/v1/usage-events",
            json!({ "events": events }),
        )
        .await
    }

    // ----- customer API ---------------------------------------------------------------------

    /// `GET /v1/account/billing?{query}` with a customer key.
    pub async fn billing(&self, key: &str, query: &str) -> Resp {
        self.raw(
            Method::GET,
            &format!("/v1/account/billing?{query}"),
            Some(key),
            Body::None,
        )
        .await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if !std::thread::panicking() && !self.reconciled.load(Ordering::SeqCst) {
            panic!("a test must end with `app.assert_reconciled().await`");
        }
    }
}

/// The `key` of a key-creation answer, checked: of `scope`, and `key_id:key_secret`.
pub fn created_key(body: &Value, scope: &str) -> String {
    assert_eq!(body["scope"], scope, "{body}");
    let key = body["key"].as_str().expect("key").to_string();
    assert_eq!(
        key,
        format!(
            "{}:{}",
            body["key_id"].as_str().unwrap(),
            body["key_secret"].as_str().unwrap()
        )
    );
    key
}
