//! The gateway's test harness: a tollgate (engine on a fresh database, its HTTP API, the
//! gateway's listeners and dispatcher) in front of a stand-in model server that answers like
//! a fal app, all over real HTTP on local ports.
//!
//! The stand-in's behaviour is chosen by the input (`{"mode": ...}`), so one server plays
//! every case: units in the header, deferred units, failures before success, a slow answer,
//! a 4xx, a 500. It counts the calls it got per `x-fal-request-id`.
//!
//! Tests wait for a request by reading its status stream (server-sent events) to the end,
//! never by sleeping.
//!
//! The gateway's listeners serve plain HTTP, or TLS with a certificate made for the test
//! ([`TestTls`], [`TestGateway::spawn_tls`]); the harness's client trusts it.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use tollgate_api::auth::mint_key;
use tollgate_api::AppState;
use tollgate_core::catalog::document;
use tollgate_core::ids::{AccountId, PurchaseId, RequestId};
use tollgate_core::machine::Op;
use tollgate_core::Nanos;
use tollgate_engine::{system_clock, AdminCmd, Engine};
use tollgate_gateway::{GatewayConfig, GatewayHandle, TlsFiles};
use tollgate_store::testing::{Backend, TestDb};
use tollgate_store::{BillingMode, Scope};

pub const USD: i64 = 1_000_000_000;

/// What the stand-in model server saw.
pub struct ModelLog {
    /// `gated` calls wait while this is false.
    pub gate: tokio::sync::watch::Sender<bool>,
    /// Calls per request id.
    pub calls: Mutex<HashMap<String, usize>>,
    /// Calls per path (an upstream's base path and the request's path below the endpoint).
    pub paths: Mutex<HashMap<String, usize>>,
    /// Calls running now, and the most at once.
    pub running: AtomicUsize,
    pub most_at_once: AtomicUsize,
    /// Calls ended by the caller before they answered.
    pub ended_early: AtomicUsize,
    /// Changes as every call arrives and ends, so a test can wait for one without sleeping.
    pub arrived: tokio::sync::watch::Sender<usize>,
}

impl Default for ModelLog {
    fn default() -> Self {
        ModelLog {
            gate: tokio::sync::watch::channel(true).0,
            calls: Mutex::default(),
            paths: Mutex::default(),
            running: AtomicUsize::default(),
            most_at_once: AtomicUsize::default(),
            ended_early: AtomicUsize::default(),
            arrived: tokio::sync::watch::channel(0).0,
        }
    }
}

impl ModelLog {
    pub fn calls_of(&self, id: &str) -> usize {
        self.calls.lock().unwrap().get(id).copied().unwrap_or(0)
    }

    /// Waits until the model server got a call for request `id`.
    pub async fn called(&self, id: &str) {
        self.until(|log| log.calls_of(id) > 0).await;
    }

    /// Waits until `done` holds of the log (looked at again as each call arrives or ends).
    pub async fn until(&self, done: impl Fn(&ModelLog) -> bool) {
        let mut changed = self.arrived.subscribe();
        while !done(self) {
            changed.changed().await.expect("the model server's log");
        }
    }
}

/// A fal app: `{"mode": ...}` picks the answer.
/// - `ok` (default): 200 `{"images": [{"width": 1024, "height": 1024}], "echo": input}` with
///   `x-fal-billable-units: <units>` when the input has `units`;
/// - `deferred`: 200 with `x-fal-billable-units-webhook: 1`;
/// - `fail_first`: 503 for the first `fails` calls of a request, then as `ok`;
/// - `slow`: as `ok` after `ms` milliseconds;
/// - `gated`: as `ok` once the test opens [`ModelLog::gate`];
/// - `status`: answers `status` (a 4xx, a 500, ...), with `x-fal-needs-retry: <needs_retry>`
///   when given.
async fn model(
    State(log): State<Arc<ModelLog>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    log.paths
        .lock()
        .unwrap()
        .entry(uri.path().to_string())
        .and_modify(|n| *n += 1)
        .or_insert(1);
    // The upstream at `/broken` is down.
    if uri.path().starts_with("/broken") {
        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    let id = headers
        .get("x-fal-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let n = {
        let mut calls = log.calls.lock().unwrap();
        let n = calls.entry(id).or_default();
        *n += 1;
        *n
    };
    let input: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let now = log.running.fetch_add(1, Ordering::SeqCst) + 1;
    log.most_at_once.fetch_max(now, Ordering::SeqCst);
    log.arrived.send_modify(|n| *n += 1);
    struct Done(Arc<ModelLog>, bool);
    impl Drop for Done {
        fn drop(&mut self) {
            self.0.running.fetch_sub(1, Ordering::SeqCst);
            if !self.1 {
                self.0.ended_early.fetch_add(1, Ordering::SeqCst);
            }
            self.0.arrived.send_modify(|n| *n += 1);
        }
    }
    let mut done = Done(log.clone(), false);
    let mode = input["mode"].as_str().unwrap_or("ok");
    let ok = |input: &Value| {
        let mut resp = axum::Json(json!({
            "images": [{"url": "https://cdn.example/a.png", "width": 1024, "height": 1024,
                        "content_type": "image/png"}],
            "echo": input,
        }))
        .into_response();
        if let Some(units) = input["units"].as_str() {
            resp.headers_mut()
                .insert("x-fal-billable-units", units.parse().unwrap());
        }
        resp
    };
    let resp = match mode {
        "deferred" => {
            let mut resp = ok(&input);
            resp.headers_mut()
                .insert("x-fal-billable-units-webhook", "1".parse().unwrap());
            resp
        }
        "fail_first" if n as u64 <= input["fails"].as_u64().unwrap_or(0) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"detail": "warming up"})),
        )
            .into_response(),
        "gated" => {
            let mut open = log.gate.subscribe();
            let _ = open.wait_for(|open| *open).await;
            ok(&input)
        }
        "slow" => {
            tokio::time::sleep(Duration::from_millis(input["ms"].as_u64().unwrap_or(100))).await;
            ok(&input)
        }
        "status" => {
            let code =
                StatusCode::from_u16(input["status"].as_u64().unwrap_or(500) as u16).unwrap();
            let mut resp = (code, axum::Json(json!({"detail": "as asked"}))).into_response();
            if let Some(v) = input["needs_retry"].as_str() {
                resp.headers_mut()
                    .insert("x-fal-needs-retry", v.parse().unwrap());
            }
            resp
        }
        _ => ok(&input),
    };
    done.1 = true;
    resp
}

/// Starts the stand-in on a free port; returns its base URL.
pub async fn spawn_model(log: Arc<ModelLog>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .fallback(axum::routing::post(model))
        .with_state(log);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// The catalog of the tests: endpoints served by the stand-in at `model`.
/// - `acme/image`: 0.01 USD per image (measured from the output, or the units header);
/// - `acme/gpu`: GPU-seconds on an H100, compute seconds when no units are reported, and the
///   seconds a cancelled request ran;
/// - `acme/small`: 0.01 USD per image on one slot;
/// - `acme/pair`: 0.01 USD per image on two upstreams, one of them down (`/broken`).
pub fn catalog(model: &str, slots: u32) -> String {
    format!(
        r#"prices_read_on = "2026-09-15"

[machines]
GPU-H100 = "0.000525"

[[concurrency]]
paid_28d_usd = "0"
limit = 2

[[concurrency]]
paid_28d_usd = "100"
limit = 1000

[[endpoint]]
id = "acme/image"
name = "Acme Image"
category = "text-to-image"
hold_units = "1"
price = {{ unit = "image", unit_price = "0.01" }}

[[endpoint.upstream]]
url = "{model}"
slots = {slots}
timeout_s = 5

[[endpoint]]
id = "acme/gpu"
name = "Acme GPU"
category = "text-to-image"
machine_type = "GPU-H100"
missing_units = "compute_seconds"
cancellation = "compute_seconds"
hold_units = "10"
price = {{ unit = "gpu_second" }}

[[endpoint.upstream]]
url = "{model}"
slots = {slots}
timeout_s = 5
machine_type = "GPU-H100"

[[endpoint]]
id = "acme/small"
name = "Acme Small"
category = "text-to-image"
hold_units = "1"
price = {{ unit = "image", unit_price = "0.01" }}

[[endpoint.upstream]]
url = "{model}"
slots = 1
timeout_s = 5

[[endpoint]]
id = "acme/pair"
name = "Acme Pair"
category = "text-to-image"
hold_units = "1"
price = {{ unit = "image", unit_price = "0.01" }}

[[endpoint.upstream]]
url = "{model}/broken"
slots = 4
timeout_s = 5

[[endpoint.upstream]]
url = "{model}/up"
slots = 4
timeout_s = 5
"#
    )
}

/// A certificate made for the TLS tests: a CA of the test's own and a server certificate it
/// signed for `localhost` and `127.0.0.1`, as PEM files in a temp dir (removed when dropped).
pub struct TestTls {
    _dir: tempfile::TempDir,
    /// The CA's certificate: what a client trusts (`SSL_CERT_FILE` for Python's httpx).
    pub ca: PathBuf,
    /// What the gateway serves: the chain (server certificate, then the CA's) and its key.
    pub files: TlsFiles,
}

impl TestTls {
    pub fn new() -> TestTls {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca.distinguished_name
            .push(DnType::CommonName, "tollgate gateway test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("the CA's certificate");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("a server key");
        let mut server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("server parameters");
        server
            .distinguished_name
            .push(DnType::CommonName, "tollgate gateway test");
        server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server.use_authority_key_identifier_extension = true;
        let server_cert = server
            .signed_by(&key, &issuer)
            .expect("the server's certificate");
        let dir = tempfile::tempdir().expect("a temp dir for the certificates");
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(
            path("chain.pem"),
            format!("{}{}", server_cert.pem(), ca_cert.pem()),
        )
        .unwrap();
        std::fs::write(path("key.pem"), key.serialize_pem()).unwrap();
        TestTls {
            ca: path("ca.pem"),
            files: TlsFiles {
                cert: path("chain.pem"),
                key: path("key.pem"),
            },
            _dir: dir,
        }
    }
}

/// A customer: its account and an `API` key.
pub struct Customer {
    pub account: String,
    pub key: String,
}

/// One tollgate in gateway mode in front of the stand-in.
pub struct TestGateway {
    pub engine: Engine,
    pub gateway: Option<GatewayHandle>,
    pub queue: String,
    pub direct: String,
    pub api: String,
    pub operator_key: String,
    pub model: Arc<ModelLog>,
    /// Trusts the gateway's certificate when its listeners serve TLS.
    pub client: reqwest::Client,
    /// The certificate the listeners serve, when they serve TLS ([`TestGateway::spawn_tls`]).
    pub tls: Option<TestTls>,
    reconciled: AtomicBool,
    pub db: TestDb,
}

/// The settings of the tests: quick retries.
pub fn config() -> GatewayConfig {
    let mut c = GatewayConfig::new(([127, 0, 0, 1], 0).into());
    c.direct_listen = Some(([127, 0, 0, 1], 0).into());
    c.retry_base = Duration::from_millis(10);
    c.retry_max = Duration::from_millis(40);
    c.upstream_cooldown = Duration::from_millis(10);
    c
}

impl TestGateway {
    pub async fn spawn() -> TestGateway {
        Self::spawn_with(&Backend::Sqlite, 8, config()).await
    }

    /// As [`spawn`](Self::spawn), the listeners serving TLS with a certificate made for the
    /// test: `queue` and `direct` are `https://127.0.0.1:<port>`.
    pub async fn spawn_tls() -> TestGateway {
        let tls = TestTls::new();
        let mut config = config();
        config.tls = Some(tls.files.clone());
        let mut gw = Self::spawn_with(&Backend::Sqlite, 8, config).await;
        gw.tls = Some(tls);
        gw
    }

    pub async fn spawn_with(backend: &Backend, slots: u32, config: GatewayConfig) -> TestGateway {
        let db = TestDb::new(backend);
        let model = Arc::new(ModelLog::default());
        let model_url = spawn_model(model.clone()).await;
        let engine = Engine::start(db.open().expect("open the store"), system_clock()).unwrap();
        let doc = document::parse(&catalog(&model_url, slots)).expect("the test catalog");
        engine
            .admin(AdminCmd::ApplyCatalog(Box::new(doc)))
            .await
            .expect("apply the catalog");
        Self::serve(db, engine, model, config).await
    }

    /// The gateway and the API on `engine` (a server started again on the same database).
    pub async fn serve(
        db: TestDb,
        engine: Engine,
        model: Arc<ModelLog>,
        config: GatewayConfig,
    ) -> TestGateway {
        let key = mint_key(None, Scope::Operator, "test operator".into(), engine.now());
        engine
            .admin(AdminCmd::InsertKey(key.record.clone()))
            .await
            .unwrap();
        // Webhook deliveries (the `fal_webhook`s) retried quickly.
        let state = AppState {
            webhooks: Arc::new(tollgate_api::webhooks::WebhookSettings {
                retry_base: Duration::from_millis(20),
                ..Default::default()
            }),
            ..AppState::new(engine.clone())
        };
        tollgate_api::spawn_dispatcher(&state, Duration::from_millis(50));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = format!("http://{}", listener.local_addr().unwrap());
        let router = tollgate_api::router(state.clone());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        // With TLS, the client trusts the certificates of the served chain (the test's CA).
        let mut client = reqwest::Client::builder();
        let scheme = match &config.tls {
            Some(files) => {
                let chain = std::fs::read(&files.cert).expect("the served chain");
                for cert in reqwest::Certificate::from_pem_bundle(&chain).expect("PEM") {
                    client = client.add_root_certificate(cert);
                }
                "https"
            }
            None => "http",
        };
        let client = client.build().expect("the test's HTTP client");
        let gateway = tollgate_gateway::start(state, config)
            .await
            .expect("the gateway starts");
        let queue = format!("{scheme}://{}", gateway.queue_addr);
        let direct = gateway
            .direct_addr
            .map(|a: SocketAddr| format!("{scheme}://{a}"))
            .unwrap_or_default();
        TestGateway {
            engine,
            gateway: Some(gateway),
            queue,
            direct,
            api,
            operator_key: key.key(),
            model,
            client,
            tls: None,
            reconciled: AtomicBool::new(false),
            db,
        }
    }

    /// An account with `usd` of paid credits (none: no purchase) and an `API` key.
    pub async fn customer(&self, name: &str, usd: Option<i64>) -> Customer {
        let account = AccountId::parse(name).unwrap();
        self.engine
            .admin(AdminCmd::CreateAccount {
                username: account.clone(),
                billing: BillingMode::Prepaid,
            })
            .await
            .unwrap();
        if let Some(usd) = usd {
            let op = Op::Purchase {
                account: account.clone(),
                purchase_id: PurchaseId::parse(&format!("buy-{name}")).unwrap(),
                amount: Nanos(usd * USD),
                paid: true,
                expires_at: None,
            };
            self.engine.execute(op).await.unwrap().unwrap();
        }
        let key = mint_key(
            Some(account),
            Scope::Api,
            "gateway".into(),
            self.engine.now(),
        );
        self.engine
            .admin(AdminCmd::InsertKey(key.record.clone()))
            .await
            .unwrap();
        Customer {
            account: name.to_string(),
            key: key.key(),
        }
    }

    /// `POST {queue}/{endpoint}` with `input`; returns the status and the body.
    pub async fn submit_raw(&self, key: &str, path: &str, body: &str) -> (u16, Value) {
        let resp = self
            .client
            .post(format!("{}/{path}", self.queue))
            .header("authorization", format!("Key {key}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Submits `input` to `endpoint`; returns the submission's answer.
    pub async fn submit(&self, c: &Customer, endpoint: &str, input: Value) -> Value {
        let (status, body) = self.submit_raw(&c.key, endpoint, &input.to_string()).await;
        assert_eq!(status, 200, "submit: {body}");
        body
    }

    pub async fn get(&self, key: &str, url: &str) -> (u16, HeaderMap, Vec<u8>) {
        let resp = self
            .client
            .get(url)
            .header("authorization", format!("Key {key}"))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut h = HeaderMap::new();
        for (k, v) in headers.iter() {
            h.insert(k.clone(), v.clone());
        }
        (status, h, resp.bytes().await.unwrap().to_vec())
    }

    /// `submitted[field]` (a URL of an answer) on this server's queue listener (the answer may
    /// be of a server started before on the same database).
    pub fn url(&self, submitted: &Value, field: &str) -> String {
        let url = submitted[field].as_str().unwrap();
        let path = url.splitn(4, '/').nth(3).unwrap();
        format!("{}/{path}", self.queue)
    }

    /// Reads the request's status stream until it completes; returns the last status.
    pub async fn wait(&self, c: &Customer, submitted: &Value) -> Value {
        let url = format!("{}/stream", self.url(submitted, "status_url"));
        let resp = self
            .client
            .get(url)
            .header("authorization", format!("Key {}", c.key))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut resp = resp;
        let mut buffer = String::new();
        let mut last = Value::Null;
        while let Some(chunk) = resp.chunk().await.unwrap() {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                for line in event.lines() {
                    if let Some(data) = line.strip_prefix("data:") {
                        last = serde_json::from_str(data.trim()).unwrap();
                    }
                }
            }
            if last["status"] == "COMPLETED" {
                return last;
            }
        }
        panic!("the status stream ended before the request completed: {last}");
    }

    /// `PUT <cancel_url>` with `key`: the status and the body.
    pub async fn cancel(&self, key: &str, submitted: &Value) -> (u16, Value) {
        let resp = self
            .client
            .put(self.url(submitted, "cancel_url"))
            .header("authorization", format!("Key {key}"))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// The result: status, headers, JSON body.
    pub async fn result(&self, c: &Customer, submitted: &Value) -> (u16, HeaderMap, Value) {
        let (status, headers, body) = self.get(&c.key, &self.url(submitted, "response_url")).await;
        (
            status,
            headers,
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
    }

    /// The account's balance, nano-USD.
    pub async fn balance(&self, account: &str) -> i64 {
        let id = AccountId::parse(account).unwrap();
        let now = self.engine.now();
        self.engine
            .read(move |r| r.account(&id, now))
            .await
            .unwrap()
            .expect("the account")
            .state
            .credit
            .balance
            .0
    }

    /// What the account was charged, nano-USD, and in how many line items.
    pub async fn charged(&self, account: &str) -> (i64, usize) {
        let id = AccountId::parse(account).unwrap();
        let q = tollgate_store::BillingEventsQuery {
            account: id,
            from: tollgate_core::Timestamp(0),
            to: tollgate_core::Timestamp(i64::MAX),
            endpoints: vec![],
            request_ids: vec![],
            api_keys: vec![],
            after: None,
            newest_first: false,
            limit: 100_000,
        };
        let items = self
            .engine
            .read(move |r| r.billing_events(&q))
            .await
            .unwrap();
        (
            items.iter().map(|i| i.charge.total_nanos.0).sum(),
            items.len(),
        )
    }

    /// POSTs a model server's deferred units.
    pub async fn post_units(&self, request_id: &str, units: &str) -> (u16, Value) {
        let resp = self
            .client
            .post(format!(
                "{}/v1/requests/billable-units/{request_id}",
                self.api
            ))
            .header("authorization", format!("Key {}", self.operator_key))
            .json(&json!({"billable_units": units}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Checks the ledger end to end; every test ends with it.
    pub async fn assert_reconciled(&self) {
        let rec = self.engine.read(|r| r.reconcile()).await.unwrap();
        assert!(
            rec.is_clean(),
            "the ledger does not reconcile: {}",
            rec.summary()
        );
        self.reconciled.store(true, Ordering::SeqCst);
    }

    /// Stops the gateway and the engine (a server shutting down), keeping the database.
    pub async fn stop(mut self) -> (TestDb, Arc<ModelLog>) {
        self.reconciled.store(true, Ordering::SeqCst);
        if let Some(g) = self.gateway.take() {
            g.stop();
        }
        self.engine.shutdown().await.unwrap();
        let db = std::mem::replace(&mut self.db, TestDb::new(&Backend::Sqlite));
        (db, self.model.clone())
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(g) = self.gateway.take() {
            g.stop();
        }
        if !std::thread::panicking() && !self.reconciled.load(Ordering::SeqCst) {
            panic!("a gateway test must end with assert_reconciled()");
        }
    }
}

/// The requests the gateway answers from now on (completed, or awaiting their units).
pub fn answers(gw: &TestGateway) -> broadcast::Receiver<RequestId> {
    gw.gateway
        .as_ref()
        .expect("the gateway runs")
        .gateway
        .finished
        .subscribe()
}

/// Waits until the gateway has recorded the model server's answer to `id`.
pub async fn answered(answers: &mut broadcast::Receiver<RequestId>, id: &str) {
    let wait = async {
        loop {
            match answers.recv().await {
                Ok(got) if got.as_str() == id => return,
                Ok(_) => continue,
                Err(e) => panic!("the gateway's answers: {e}"),
            }
        }
    };
    // A failsafe, not a timing assertion.
    tokio::time::timeout(Duration::from_secs(90), wait)
        .await
        .unwrap_or_else(|_| panic!("request {id} was not answered within 90 s"));
}
