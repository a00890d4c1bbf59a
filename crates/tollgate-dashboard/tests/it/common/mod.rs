// Helpers shared by the test modules: not every module uses every one.
#![allow(dead_code)]

//! The dashboard's test harness: one isolated tollgate per test (temp database, engine on a
//! manual clock, the sample catalog, an operator key, the API and the dashboard on a free
//! port), a [`Visitor`] that browses it over HTTP with its own cookies, and a real headless
//! Chromium ([`browser::Browser`]).
//!
//! Every test ends with `app.assert_reconciled().await`; dropping a `DashApp` without that
//! call fails the test.

pub mod browser;

use reqwest::{Method, StatusCode};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use tollgate_api::auth::mint_key;
use tollgate_api::payments::Payments;
use tollgate_api::testing::stripe::{EventSender, StripeStandIn};
use tollgate_api::webhooks::deliver::Dispatcher;
use tollgate_api::webhooks::WebhookSettings;
use tollgate_api::AppState;
use tollgate_core::catalog::document;
use tollgate_core::Timestamp;
use tollgate_dashboard::{DashboardConfig, DashboardState};
use tollgate_engine::{AdminCmd, Clock, Engine};
use tollgate_store::testing::{Backend, TestDb};
use tollgate_store::Scope;

/// The catalog tollgate ships (real fal endpoints and prices).
pub const SAMPLE_CATALOG: &str = include_str!("../../../../../catalog/sample.toml");

/// 1 USD in nano-USD.
pub const USD: i64 = 1_000_000_000;
pub const MINUTE_MS: i64 = 60_000;
pub const DAY_MS: i64 = 24 * 60 * MINUTE_MS;

/// 2026-11-24T10:00:00Z: late in the month, so "this month" and "last month" both have days.
pub const T0: i64 = 1_795_514_400_000;

/// An HTTP answer.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub bytes: Vec<u8>,
}

impl Resp {
    /// Reads a whole answer.
    pub async fn read(resp: reqwest::Response) -> Resp {
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("a readable body").to_vec();
        Resp {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
            bytes,
        }
    }

    /// The JSON body.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    #[track_caller]
    pub fn expect(&self, status: u16) -> &Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "expected HTTP {status}, got {}: {}",
            self.status,
            self.text.chars().take(2000).collect::<String>()
        );
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every `Set-Cookie` header.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect()
    }

    /// Where a redirect points.
    #[track_caller]
    pub fn location(&self) -> &str {
        self.header("location")
            .unwrap_or_else(|| panic!("no Location in a {} answer", self.status))
    }

    /// The value of the first `name="csrf"` field of the page.
    #[track_caller]
    pub fn csrf(&self) -> String {
        field_value(&self.text, "csrf").expect("the page has a csrf field")
    }
}

/// The value of the first input named `name` in an HTML page (the templates write
/// `name="..." value="..."` in that order).
pub fn field_value(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\""))?;
    let rest = &html[at..];
    let v = rest.find("value=\"")? + "value=\"".len();
    let end = rest[v..].find('"')?;
    Some(rest[v..v + end].to_string())
}

/// A customer account with its keys.
#[derive(Clone, Debug)]
pub struct Customer {
    pub username: String,
    /// `key_id:secret` of an API key.
    pub api_key: String,
    /// `key_id:secret` of an ADMIN key.
    pub admin_key: String,
}

pub struct DashApp {
    pub address: String,
    pub client: reqwest::Client,
    pub operator_key: String,
    pub engine: Engine,
    /// The `[webhooks]` settings the server runs with.
    pub webhooks: Arc<WebhookSettings>,
    /// The stand-in of the payment provider and the sender of its signed events, when the
    /// server has payments ([`DashApp::spawn_with_payments`]).
    pub stripe: Option<(StripeStandIn, EventSender)>,
    payments: Option<Arc<Payments>>,
    clock: Arc<AtomicI64>,
    reconciled: AtomicBool,
    _db: TestDb,
}

impl DashApp {
    /// A tollgate on SQLite whose clock stands at [`T0`] until the test moves it.
    pub async fn spawn() -> DashApp {
        Self::spawn_on(&Backend::Sqlite).await
    }

    /// Like [`DashApp::spawn`], on a database of `backend`.
    pub async fn spawn_on(backend: &Backend) -> DashApp {
        Self::start(
            backend,
            DashboardConfig::default(),
            WebhookSettings::default(),
        )
        .await
    }

    /// Like [`DashApp::spawn`], with the dashboard's settings `config` (a public URL, a
    /// session lifetime).
    pub async fn spawn_with(config: DashboardConfig) -> DashApp {
        Self::start(&Backend::Sqlite, config, WebhookSettings::default()).await
    }

    /// Like [`DashApp::spawn`], with the `[webhooks]` settings `webhooks` (the hosts a URL may
    /// name). No webhook dispatcher runs: a test sends what is due with
    /// [`DashApp::dispatcher`]'s `run_once`.
    pub async fn spawn_with_webhooks(webhooks: WebhookSettings) -> DashApp {
        Self::start(&Backend::Sqlite, DashboardConfig::default(), webhooks).await
    }

    /// Like [`DashApp::spawn`], with payments through a new stand-in of the payment provider
    /// ([`DashApp::stripe`]), the top-up settings on the engine, the provider's subscription
    /// row, and the server's own address as its `public_url` (where the provider sends
    /// customers back).
    pub async fn spawn_with_payments() -> DashApp {
        let stripe = StripeStandIn::start().await;
        let settings = stripe.settings();
        let mut app = Self::start_full(
            &Backend::Sqlite,
            DashboardConfig::default(),
            WebhookSettings::default(),
            Some(settings),
        )
        .await;
        let events = EventSender::new(&app.address);
        app.stripe = Some((stripe, events));
        app
    }

    async fn start(
        backend: &Backend,
        config: DashboardConfig,
        webhooks: WebhookSettings,
    ) -> DashApp {
        Self::start_full(backend, config, webhooks, None).await
    }

    async fn start_full(
        backend: &Backend,
        mut config: DashboardConfig,
        webhooks: WebhookSettings,
        payments: Option<tollgate_api::payments::PaymentSettings>,
    ) -> DashApp {
        let clock = Arc::new(AtomicI64::new(T0));
        let db = TestDb::new(backend);
        let store = db.open().expect("open the store");
        let engine_clock: Clock = {
            let now = clock.clone();
            Arc::new(move || Timestamp(now.load(Ordering::SeqCst)))
        };
        let engine = Engine::start(store, engine_clock).expect("start engine");
        // The sample catalog, in force from 60 days before T0, so usage events of the past
        // month have a price.
        let mut doc = document::parse(SAMPLE_CATALOG).expect("the sample catalog parses");
        doc.effective_from = Some(Timestamp(T0 - 60 * DAY_MS));
        engine
            .admin(AdminCmd::ApplyCatalog(Box::new(doc)))
            .await
            .expect("apply the sample catalog");
        let key = mint_key(None, Scope::Operator, "test operator".into(), engine.now());
        engine
            .admin(AdminCmd::InsertKey(key.record.clone()))
            .await
            .expect("insert the operator key");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port");
        let address = format!("http://{}", listener.local_addr().expect("local addr"));
        let webhooks = Arc::new(webhooks);
        if let Some(p) = &payments {
            engine
                .set_top_up_settings(p.top_ups)
                .expect("the top-up settings");
            engine
                .ensure_provider_webhook()
                .await
                .expect("the provider's subscription row");
            config.public_url = Some(address.clone());
        }
        let payments = payments.map(|p| Arc::new(Payments::new(p)));
        let api = AppState {
            webhooks: webhooks.clone(),
            payments: payments.clone(),
            ..AppState::new(engine.clone())
        };
        let pages = tollgate_dashboard::router(DashboardState::new(api.clone(), config));
        let router = tollgate_api::router_with(api, pages);
        tokio::spawn(async move {
            axum::serve(listener, router).await.expect("serve");
        });
        DashApp {
            address,
            client: reqwest::Client::new(),
            operator_key: key.key(),
            engine,
            webhooks,
            stripe: None,
            payments,
            clock,
            reconciled: AtomicBool::new(false),
            _db: db,
        }
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.load(Ordering::SeqCst)
    }

    pub fn set_now(&self, ms: i64) {
        self.clock.store(ms, Ordering::SeqCst);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// A webhook dispatcher on this app's engine and settings, with its payment provider, as
    /// `serve` runs one.
    pub fn dispatcher(&self) -> Dispatcher {
        Dispatcher::new(self.engine.clone(), self.webhooks.clone())
            .with_payments(self.payments.clone())
    }

    /// The stand-in of the payment provider ([`DashApp::spawn_with_payments`]).
    #[track_caller]
    pub fn stripe(&self) -> &StripeStandIn {
        &self.stripe.as_ref().expect("a tollgate with payments").0
    }

    /// Signs `event` at the engine's clock and POSTs it to the provider's webhook; asserts it
    /// was answered 200 with `result` (`applied`, `replayed`, `ignored`).
    pub async fn provider_event(&self, event: &Value, result: &str) {
        let sender = &self.stripe.as_ref().expect("a tollgate with payments").1;
        let (status, body) = sender.send_at(event, self.now_ms().div_euclid(1000)).await;
        assert_eq!(
            (status, body["result"].as_str()),
            (200, Some(result)),
            "{} {body}",
            event["type"]
        );
    }

    /// Sends what is due until nothing is (an account's events go one at a time per webhook);
    /// returns how many attempts were made.
    pub async fn deliver_due(&self) -> usize {
        let d = self.dispatcher();
        let mut sent = 0;
        loop {
            let n = d.run_once().await.expect("a dispatcher round").len();
            if n == 0 {
                return sent;
            }
            sent += n;
        }
    }

    // ----- the API ----------------------------------------------------------------------------

    /// A call with `Authorization: Key <key>` and an optional JSON body.
    pub async fn call(&self, method: Method, path: &str, key: &str, body: Option<Value>) -> Resp {
        let mut req = self
            .client
            .request(method, self.url(path))
            .header("Authorization", format!("Key {key}"));
        if let Some(b) = body {
            req = req.json(&b);
        }
        Resp::read(req.send().await.expect("the server answers")).await
    }

    pub async fn op(&self, method: Method, path: &str, body: Value) -> Resp {
        self.call(method, path, &self.operator_key.clone(), Some(body))
            .await
    }

    pub async fn op_get(&self, path: &str) -> Resp {
        self.call(Method::GET, path, &self.operator_key.clone(), None)
            .await
    }

    async fn key(&self, username: &str, scope: &str, alias: &str) -> String {
        let r = self
            .op(
                Method::POST,
                &format!("/v1/admin/accounts/{username}/keys"),
                json!({"scope": scope, "alias": alias}),
            )
            .await;
        r.expect(201).json()["key"]
            .as_str()
            .expect("a key")
            .to_string()
    }

    /// A new account with API and ADMIN keys and, when `credits_usd` is given, a paid
    /// purchase of that many USD.
    pub async fn customer(&self, username: &str, credits_usd: Option<&str>) -> Customer {
        self.op(
            Method::POST,
            "/v1/admin/accounts",
            json!({"username": username}),
        )
        .await
        .expect(201);
        if let Some(amount) = credits_usd {
            self.op(
                Method::POST,
                &format!("/v1/admin/accounts/{username}/purchases"),
                json!({"purchase_id": format!("initial-{username}"), "amount_usd": amount, "kind": "paid"}),
            )
            .await
            .expect(201);
        }
        Customer {
            username: username.to_string(),
            api_key: self.key(username, "API", "backend").await,
            admin_key: self.key(username, "ADMIN", "billing admin").await,
        }
    }

    /// Reports one usage event of `units` billable units on `endpoint` at `at_ms` (usage
    /// reported after the fact carries no key); returns its cost in nano-USD.
    pub async fn usage(&self, c: &Customer, endpoint: &str, units: &str, at_ms: i64) -> i64 {
        let r = self
            .op(
                Method::POST,
                "/v1/usage-events",
                json!({"events": [{
                    "event_id": uuid::Uuid::new_v4().to_string(),
                    "username": c.username,
                    "endpoint_id": endpoint,
                    "timestamp": rfc3339(at_ms),
                    "status_code": 200,
                    "billable_units": units,
                }]}),
            )
            .await;
        let body = r.expect(200).json();
        body["results"][0]["cost_estimate_nano_usd"]
            .as_i64()
            .unwrap_or_else(|| panic!("a billed event: {body}"))
    }

    /// A request's whole life (submit with the customer's `caller_key`, start, complete with
    /// `status_code` and `output`) at the engine's time; returns the request id and the
    /// completion's answer.
    pub async fn request(
        &self,
        caller_key: &str,
        endpoint: &str,
        status_code: u16,
        output: Value,
    ) -> (String, Value) {
        self.timed_request(caller_key, endpoint, (0, 0), status_code, output)
            .await
    }

    /// [`DashApp::request`] that waits `queue_ms` before it starts and runs `run_ms`, on the
    /// engine's clock.
    pub async fn timed_request(
        &self,
        caller_key: &str,
        endpoint: &str,
        (queue_ms, run_ms): (i64, i64),
        status_code: u16,
        output: Value,
    ) -> (String, Value) {
        let id = uuid::Uuid::new_v4().to_string();
        self.op(
            Method::POST,
            "/v1/requests",
            json!({"request_id": id, "endpoint_id": endpoint, "caller_key": caller_key}),
        )
        .await
        .expect(201);
        self.set_now(self.now_ms() + queue_ms);
        let op_key = self.operator_key.clone();
        self.call(
            Method::POST,
            &format!("/v1/requests/{id}/start"),
            &op_key,
            None,
        )
        .await
        .expect(200);
        self.set_now(self.now_ms() + run_ms);
        let done = self
            .op(
                Method::POST,
                &format!("/v1/requests/{id}/complete"),
                json!({"status_code": status_code, "output": output}),
            )
            .await;
        let body = done.expect(200).json();
        (id, body)
    }

    /// Reports runner events (`POST /v1/runners/events`) at the engine's time `at_ms` (the
    /// clock moved there first), then settles every runner due by then, as the per-minute
    /// sweep does; asserts the bulk was applied, none a duplicate.
    pub async fn runner_events(&self, at_ms: i64, events: Vec<Value>) {
        self.set_now(at_ms);
        let r = self
            .op(
                Method::POST,
                "/v1/runners/events",
                json!({ "events": events }),
            )
            .await;
        let body = r.expect(200).json();
        let results = body["results"].as_array().expect("results");
        assert_eq!(results.len(), events.len(), "one result per event: {body}");
        assert!(
            results.iter().all(|r| r["duplicate"] == false),
            "no duplicate: {body}"
        );
        self.settle_at(at_ms).await;
    }

    /// Moves the clock to `at_ms` and runs the sweep there: runners are settled up to the
    /// start of that minute (within their grace).
    pub async fn settle_at(&self, at_ms: i64) {
        self.set_now(at_ms);
        self.engine.sweep_expired().await.expect("the sweep runs");
    }

    /// A one-time sign-in link to the account's dashboard (a path).
    pub async fn sign_in_link(&self, username: &str) -> String {
        let r = self
            .call(
                Method::POST,
                &format!("/v1/admin/accounts/{username}/portal-sessions"),
                &self.operator_key.clone(),
                None,
            )
            .await;
        r.expect(201).json()["url"]
            .as_str()
            .expect("a url")
            .to_string()
    }

    /// A browser-like client with its own cookies (redirects not followed).
    pub fn visitor(&self) -> Visitor {
        Visitor {
            base: self.address.clone(),
            client: reqwest::Client::builder()
                .cookie_store(true)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("a client"),
        }
    }

    /// A visitor signed in to `username`'s dashboard through a minted link (opened, then posted
    /// back, as its page does).
    pub async fn signed_in(&self, username: &str) -> Visitor {
        let v = self.visitor();
        let link = self.sign_in_link(username).await;
        v.page(&link).await;
        let r = v.post_form(&link, &[]).await;
        r.expect(303);
        assert_eq!(r.location(), "/dashboard");
        v
    }

    /// A visitor signed in to the console with the operator key.
    pub async fn operator(&self) -> Visitor {
        let v = self.visitor();
        v.sign_in("/console/login", &self.operator_key.clone())
            .await;
        v
    }

    pub async fn assert_reconciled(&self) {
        let r = self.op_get("/v1/admin/reconciliation").await;
        let body = r.expect(200).json();
        assert_eq!(body["clean"], true, "the ledger reconciles: {body}");
        self.reconciled.store(true, Ordering::SeqCst);
    }
}

impl Drop for DashApp {
    fn drop(&mut self) {
        if !std::thread::panicking() && !self.reconciled.load(Ordering::SeqCst) {
            panic!("a test must end with app.assert_reconciled().await");
        }
    }
}

/// RFC 3339 (UTC, milliseconds) of a time in ms since the epoch.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("a time in range")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Milliseconds of an RFC 3339 instant.
pub fn ms(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .expect("a valid test instant")
        .timestamp_millis()
}

/// A decimal as a page or an answer writes it (plain or in scientific notation).
pub fn dec(text: &str) -> Decimal {
    Decimal::from_str(text)
        .or_else(|_| Decimal::from_scientific(text))
        .unwrap_or_else(|e| panic!("a decimal: {text}: {e}"))
}

/// USD (a decimal) in nano-USD, exactly.
pub fn nanos(usd: Decimal) -> i64 {
    let n = usd * Decimal::from(1_000_000_000);
    assert_eq!(n.fract(), Decimal::ZERO, "{usd} is whole nano-USD");
    i64::try_from(n.trunc()).expect("in range")
}

/// The value of attribute `name` in the start tag `tag`.
pub fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let at = tag.find(&key)? + key.len();
    let end = tag[at..].find('"')?;
    Some(tag[at..at + end].to_string())
}

/// The start tags in `html` that begin with `prefix` (e.g. `<tr data-endpoint=`).
pub fn tags<'a>(html: &'a str, prefix: &str) -> Vec<&'a str> {
    html.match_indices(prefix)
        .map(|(i, _)| {
            let end = html[i..].find('>').expect("a closed tag");
            &html[i..i + end]
        })
        .collect()
}

/// A serverless runner as the platform reports it ([`DashApp::runner_events`]).
#[derive(Clone, Debug)]
pub struct Runner {
    pub id: String,
    pub username: String,
    pub app: String,
    pub environment: Option<String>,
    pub machine_type: String,
    pub num_gpus: u32,
    pub is_surge: bool,
}

impl Runner {
    /// A standard-priced runner of `username`'s `app` without an environment.
    pub fn new(username: &str, app: &str, machine_type: &str, num_gpus: u32) -> Runner {
        Runner {
            id: format!("rn-{}", uuid::Uuid::new_v4()),
            username: username.to_string(),
            app: app.to_string(),
            environment: None,
            machine_type: machine_type.to_string(),
            num_gpus,
            is_surge: false,
        }
    }

    pub fn environment(mut self, environment: &str) -> Runner {
        self.environment = Some(environment.to_string());
        self
    }

    pub fn surge(mut self) -> Runner {
        self.is_surge = true;
        self
    }

    /// A report of `state` (`RUNNING`, `IDLE`, ...) at `at_ms`, with a new event id.
    pub fn event(&self, state: &str, at_ms: i64) -> Value {
        let mut e = json!({
            "event_id": format!("re-{}", uuid::Uuid::new_v4()),
            "runner_id": self.id,
            "username": self.username,
            "app": self.app,
            "machine_type": self.machine_type,
            "num_gpus": self.num_gpus,
            "state": state,
            "at": rfc3339(at_ms),
        });
        if let Some(env) = &self.environment {
            e["environment"] = json!(env);
        }
        if self.is_surge {
            e["is_surge"] = json!(true);
        }
        e
    }
}

/// A browser-like HTTP client: keeps its cookies, does not follow redirects.
pub struct Visitor {
    base: String,
    pub client: reqwest::Client,
}

impl Visitor {
    pub async fn get(&self, path: &str) -> Resp {
        Resp::read(
            self.client
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .expect("the server answers"),
        )
        .await
    }

    /// Posts a form (`application/x-www-form-urlencoded`).
    pub async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> Resp {
        Resp::read(
            self.client
                .post(format!("{}{path}", self.base))
                .form(fields)
                .send()
                .await
                .expect("the server answers"),
        )
        .await
    }

    /// Signs in with `key` through the sign-in form at `login` (`/dashboard/login` or
    /// `/console/login`), as a person does: the form, then its post; asserts it worked.
    pub async fn sign_in(&self, login: &str, key: &str) {
        let csrf = self.page(login).await.csrf();
        self.post_form(login, &[("csrf", &csrf), ("key", key)])
            .await
            .expect(303);
    }

    /// Gets a page and asserts 200.
    pub async fn page(&self, path: &str) -> Resp {
        let r = self.get(path).await;
        assert_eq!(
            r.status.as_u16(),
            200,
            "GET {path}: {} {}",
            r.status,
            r.text.chars().take(1500).collect::<String>()
        );
        r
    }
}
