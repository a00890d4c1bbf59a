//! Gateway mode's durability with the real binary (API.md section 10): `tollgate serve` with a
//! `[gateway]` in front of a stand-in model server run by the test, SIGKILLed while requests
//! are queued and running on it.
//!
//! - One server on SQLite, killed with requests running (their calls blocked in the model
//!   server) and others queued, started again on the same file: every acknowledged request
//!   completes with its output, the ones that were running are taken over at once (their
//!   model server is called again), and each is billed exactly once.
//! - Two servers on one PostgreSQL database, one killed while it runs requests: the survivor
//!   takes them over once their leases (`lease_s`) run out and completes every acknowledged
//!   request, those submitted to the dead server too, each billed exactly once.
//!
//! Each ends with the ledger: the balance is the purchase minus the billed costs, one billing
//! event per request with its cost, nothing held or in progress, the reconciliation clean.
//! Timing only decides how long the failsafes wait; the model server's log and the gateway's
//! answers say when to go on.

use crate::common::{billing_events, client, must, send, Reply, Server};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use reqwest::blocking::Client;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tollgate_store::testing::{postgres_url, Backend, TestDb, POSTGRES_URL_VAR};

const OP_KEY: &str = "gw-durability-op:secret123";
const ENDPOINT: &str = "acme/durable";
/// The endpoint's price: 0.01 USD per unit, in nano-USD.
const UNIT_NANOS: i64 = 10_000_000;
const PURCHASE_USD: &str = "10.00";
const PURCHASE_NANOS: i64 = 10_000_000_000;
/// The units the model server reports for request `i` (`x-fal-billable-units`), and what
/// they cost, in nano-USD.
const UNITS: [(&str, i64); 4] = [
    ("1", UNIT_NANOS),
    ("2.5", 5 * UNIT_NANOS / 2),
    ("3", 3 * UNIT_NANOS),
    ("0.75", 3 * UNIT_NANOS / 4),
];
/// How long a wait for the gateway may take before the test fails: a failsafe for a request
/// that never completes, far above what the waits take.
const FAILSAFE: Duration = Duration::from_secs(60);

// ---- the stand-in model server --------------------------------------------------------------

/// What the stand-in model server saw: calls per `x-fal-request-id`, in the order they came.
#[derive(Default)]
struct Calls {
    per_request: HashMap<String, usize>,
    total: usize,
    /// Calls without an `x-fal-request-id`.
    anonymous: usize,
}

struct ModelLog {
    calls: Mutex<Calls>,
    /// Signalled as each call arrives.
    arrived: Condvar,
    /// `gated` calls wait while this is false.
    gate: tokio::sync::watch::Sender<bool>,
}

/// A fal app in the test process, on its own tokio runtime: 200 `{"request_id", "echo": input}`
/// with `x-fal-billable-units: <units>` from the input; with `"mode": "gated"` it answers only
/// once the test opens the gate.
struct ModelServer {
    /// `http://127.0.0.1:<port>`.
    base: String,
    log: Arc<ModelLog>,
    _rt: tokio::runtime::Runtime,
}

async fn model(State(log): State<Arc<ModelLog>>, headers: HeaderMap, body: Bytes) -> Response {
    let id = headers
        .get("x-fal-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    {
        let mut calls = log.calls.lock().unwrap();
        calls.total += 1;
        match &id {
            Some(id) => *calls.per_request.entry(id.clone()).or_default() += 1,
            None => calls.anonymous += 1,
        }
        log.arrived.notify_all();
    }
    let input: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if input["mode"] == "gated" {
        let mut open = log.gate.subscribe();
        let _ = open.wait_for(|open| *open).await;
    }
    let mut resp = axum::Json(json!({"request_id": id, "echo": input})).into_response();
    if let Some(units) = input["units"].as_str() {
        resp.headers_mut()
            .insert("x-fal-billable-units", units.parse().unwrap());
    }
    resp
}

impl ModelServer {
    fn start() -> ModelServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("the model server's runtime");
        let log = Arc::new(ModelLog {
            calls: Mutex::default(),
            arrived: Condvar::new(),
            gate: tokio::sync::watch::channel(false).0,
        });
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the model server");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(axum::routing::post(model))
            .with_state(log.clone());
        rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
        ModelServer { base, log, _rt: rt }
    }

    /// Lets every gated call (waiting now or to come) answer.
    fn open_gate(&self) {
        self.log.gate.send_replace(true);
    }

    fn calls_of(&self, id: &str) -> usize {
        let calls = self.log.calls.lock().unwrap();
        calls.per_request.get(id).copied().unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.log.calls.lock().unwrap().total
    }

    fn anonymous(&self) -> usize {
        self.log.calls.lock().unwrap().anonymous
    }

    /// Waits until the model server got `n` calls in all; fails the test (saying `what`)
    /// after `within`.
    fn wait_total(&self, n: usize, within: Duration, what: &str) {
        let calls = self.log.calls.lock().unwrap();
        let (calls, timeout) = self
            .log
            .arrived
            .wait_timeout_while(calls, within, |c| c.total < n)
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "{what}: the model server got {} calls in {within:?}, expected {n}: {:?}",
            calls.total,
            calls.per_request
        );
    }
}

/// The catalog: `acme/durable`, 0.01 USD per unit (`x-fal-billable-units`), holding 4 units,
/// served by the model server at `model` with `slots` calls at once per server. A call may
/// wait in the model server far longer than the tests do.
fn catalog(model: &str, slots: u32) -> String {
    format!(
        r#"prices_read_on = "2026-09-15"

[[concurrency]]
paid_28d_usd = "0"
limit = 100

[[endpoint]]
id = "{ENDPOINT}"
name = "Acme Durable"
category = "text-to-image"
hold_units = "4"
price = {{ unit = "image", unit_price = "0.01" }}

[[endpoint.upstream]]
url = "{model}"
slots = {slots}
timeout_s = 300
"#
    )
}

// ---- calls ----------------------------------------------------------------------------------

fn op_get(c: &Client, base: &str, path: &str) -> Result<Reply, String> {
    send(c.get(format!("{base}{path}")), OP_KEY)
}

fn op_post(c: &Client, base: &str, path: &str, body: &Value) -> Result<Reply, String> {
    send(c.post(format!("{base}{path}")).json(body), OP_KEY)
}

/// A customer account with `PURCHASE_USD` of paid credits, created through the operator API
/// at `base`; its `API` key (the queue's caller) and `ADMIN` key (its billing events).
struct Customer {
    username: String,
    api_key: String,
    admin_key: String,
}

fn customer(c: &Client, base: &str, username: &str) -> Customer {
    must(
        op_post(
            c,
            base,
            "/v1/admin/accounts",
            &json!({"username": username}),
        ),
        201,
        "create the account",
    );
    must(
        op_post(
            c,
            base,
            &format!("/v1/admin/accounts/{username}/purchases"),
            &json!({"purchase_id": format!("buy-{username}"), "amount_usd": PURCHASE_USD}),
        ),
        201,
        "the purchase",
    );
    let key = |scope: &str| {
        must(
            op_post(
                c,
                base,
                &format!("/v1/admin/accounts/{username}/keys"),
                &json!({"scope": scope, "alias": "gateway durability"}),
            ),
            201,
            "create a key",
        )
        .body["key"]
            .as_str()
            .expect("key")
            .to_string()
    };
    Customer {
        username: username.to_string(),
        api_key: key("API"),
        admin_key: key("ADMIN"),
    }
}

/// One acknowledged submission: its input and the queue's answer.
struct Submitted {
    units: usize,
    /// The model's input it was submitted with.
    input: Value,
    /// `request_id`, `status_url`, `response_url`, ... as the queue answered.
    ack: Value,
    /// The queue listener it was submitted to.
    queue: String,
}

impl Submitted {
    fn id(&self) -> &str {
        self.ack["request_id"].as_str().expect("request_id")
    }

    /// The answer's `field` URL on the queue listener at `queue` (its path: the answer's host
    /// may be of another server).
    fn url(&self, field: &str, queue: &str) -> String {
        let url = self.ack[field].as_str().expect("a URL");
        let path = url.splitn(4, '/').nth(3).expect("a path");
        format!("{queue}/{path}")
    }

    fn cost(&self) -> i64 {
        UNITS[self.units].1
    }
}

/// Submits request `i` (gated, its units by `i`) to the queue listener at `queue`.
fn submit(c: &Client, queue: &str, key: &str, i: usize) -> Submitted {
    let units = i % UNITS.len();
    let input = json!({"mode": "gated", "units": UNITS[units].0, "n": i});
    let ack = must(
        send(c.post(format!("{queue}/{ENDPOINT}")).json(&input), key),
        200,
        "submit to the queue",
    )
    .body;
    assert_eq!(ack["status"], "IN_QUEUE", "submission answered {ack}");
    for field in ["request_id", "status_url", "response_url"] {
        assert!(ack[field].is_string(), "submission without {field}: {ack}");
    }
    Submitted {
        units,
        input,
        ack,
        queue: queue.to_string(),
    }
}

/// Every request's status (`IN_QUEUE`, `IN_PROGRESS`, `COMPLETED`) by id, read from the queue
/// listener at `queue`.
fn statuses(c: &Client, queue: &str, key: &str, reqs: &[Submitted]) -> BTreeMap<String, Value> {
    reqs.iter()
        .map(|r| {
            let got = send(c.get(r.url("status_url", queue)), key)
                .unwrap_or_else(|e| panic!("status of {}: {e}", r.id()));
            let done = got.body["status"] == "COMPLETED";
            assert_eq!(
                got.status,
                if done { 200 } else { 202 },
                "status of {}: {}",
                r.id(),
                got.body
            );
            (r.id().to_string(), got.body)
        })
        .collect()
}

/// Polls the statuses on `queue` until every request is `COMPLETED` (failing after the
/// failsafe, naming those that were `running` at the kill, with what the server logged);
/// returns the completed statuses.
fn wait_completed(
    c: &Client,
    queue: &str,
    key: &str,
    reqs: &[Submitted],
    running: &[String],
    logs: &dyn Fn() -> String,
) -> BTreeMap<String, Value> {
    let deadline = Instant::now() + FAILSAFE;
    loop {
        let now = statuses(c, queue, key, reqs);
        if now.values().all(|s| s["status"] == "COMPLETED") {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "not every acknowledged request completed within {FAILSAFE:?}: {:?}\n{}",
            now.iter()
                .filter(|(_, s)| s["status"] != "COMPLETED")
                .map(|(id, s)| format!(
                    "{id}: {}{}",
                    s["status"],
                    if running.contains(id) {
                        " (running at the kill)"
                    } else {
                        ""
                    }
                ))
                .collect::<Vec<_>>(),
            logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every request completed with its own output, billed its units once (the result's and the
/// status's cost), as the queue listener at `queue` answers; the account's ledger (read
/// through the API at `api`) is the purchase minus exactly these costs, one billing event
/// each, nothing held or running, and the reconciliation is clean.
fn assert_billed_once(
    c: &Client,
    api: &str,
    queue: &str,
    cust: &Customer,
    reqs: &[Submitted],
    done: &BTreeMap<String, Value>,
    window_start: &str,
) {
    let mut problems = Vec::new();
    for r in reqs {
        let id = r.id();
        let status = &done[id];
        if status["metrics"]["cost_nano_usd"] != r.cost() || status.get("error").is_some() {
            problems.push(format!(
                "{id}: expected COMPLETED costing {}, got {status}",
                r.cost()
            ));
        }
        let resp = c
            .get(r.url("response_url", queue))
            .header("Authorization", format!("Key {}", cust.api_key))
            .send()
            .unwrap_or_else(|e| panic!("result of {id}: {e}"));
        let code = resp.status().as_u16();
        let cost = resp
            .headers()
            .get("x-tollgate-cost-nano-usd")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body: Value = resp.json().unwrap_or(Value::Null);
        if code != 200
            || body["request_id"] != id
            || body["echo"] != r.input
            || cost != Some(r.cost().to_string())
        {
            problems.push(format!(
                "{id}: expected its output costing {}, got {code} (cost {cost:?}) {body}",
                r.cost()
            ));
        }
    }

    let billed: i64 = reqs.iter().map(Submitted::cost).sum();
    let view = must(
        op_get(c, api, &format!("/v1/admin/accounts/{}", cust.username)),
        200,
        "the account",
    )
    .body;
    if view["balance_nano_usd"] != PURCHASE_NANOS - billed
        || view["held_nano_usd"] != 0
        || view["in_progress"] != 0
    {
        problems.push(format!(
            "the account's balance is not the purchase {PURCHASE_NANOS} - billed {billed}, or \
             it still holds or runs requests: {view}"
        ));
    }

    let window_end = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let events = billing_events(c, api, &cust.admin_key, window_start, &window_end);
    let mut seen: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for e in &events {
        let id = e["request_id"].as_str().expect("request_id").to_string();
        seen.entry(id)
            .or_default()
            .push(e["cost_estimate_nano_usd"].as_i64().expect("cost"));
    }
    let want: BTreeMap<String, Vec<i64>> = reqs
        .iter()
        .map(|r| (r.id().to_string(), vec![r.cost()]))
        .collect();
    if events.len() != reqs.len() || seen != want {
        problems.push(format!(
            "{} billing events for {} requests; expected one each with its cost {want:?}, \
             got {seen:?}",
            events.len(),
            reqs.len()
        ));
    }

    let rec = must(
        op_get(c, api, "/v1/admin/reconciliation"),
        200,
        "reconciliation",
    )
    .body;
    if rec["clean"] != true {
        problems.push(format!("the reconciliation is not clean: {rec}"));
    }
    assert!(
        problems.is_empty(),
        "billed other than once per request:\n  - {}",
        problems.join("\n  - ")
    );
}

/// The last `n` lines of a server's stderr.
fn tail(server: &Server, n: usize) -> String {
    let text = server.stderr_text();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn hour_ago() -> String {
    (chrono::Utc::now() - chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

// ---- the tests ------------------------------------------------------------------------------

#[test]
fn sigkill_with_requests_queued_and_running_completes_each_once_after_a_restart() {
    const N: usize = 10;
    const SLOTS: usize = 3;
    let began = Instant::now();
    let window_start = hour_ago();
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("gateway.db");
    let model = ModelServer::start();
    let catalog_file = dir.path().join("catalog.toml");
    std::fs::write(&catalog_file, catalog(&model.base, SLOTS as u32)).unwrap();
    // A lease far longer than the test's waits: the restarted server must take the running
    // requests over at once (one server on SQLite), not once their leases ran out.
    let start = |log: &str, queue_listen: &str| {
        Server::start_gateway(
            &db,
            dir.path().join(log),
            OP_KEY,
            Some(&catalog_file),
            &[
                "--gateway-queue-listen",
                queue_listen,
                "--gateway-lease-s",
                "600",
            ],
        )
    };
    let (mut server, queue) = start("first.log", "127.0.0.1:0");
    let c = client();
    let cust = customer(&c, &server.base, "gw-crash");

    // N requests: SLOTS of them running (blocked in the model server), the rest queued.
    let reqs: Vec<Submitted> = (0..N)
        .map(|i| submit(&c, &queue, &cust.api_key, i))
        .collect();
    model.wait_total(SLOTS, FAILSAFE, "the first server's calls");
    let before = statuses(&c, &queue, &cust.api_key, &reqs);
    let running: Vec<String> = reqs
        .iter()
        .filter(|r| model.calls_of(r.id()) > 0)
        .map(|r| r.id().to_string())
        .collect();
    assert_eq!(running.len(), SLOTS, "{before:?}");
    for r in &reqs {
        let expected = if model.calls_of(r.id()) > 0 {
            "IN_PROGRESS"
        } else {
            "IN_QUEUE"
        };
        assert_eq!(before[r.id()]["status"], expected, "{}: {before:?}", r.id());
    }

    // SIGKILL, and the same database file again, its queue on the same address (the URLs the
    // callers got stay valid).
    server.kill();
    let (server, queue_again) = start("second.log", queue.trim_start_matches("http://"));
    assert_eq!(queue_again, queue);
    let c = client();
    let logs = || {
        format!(
            "--- restarted server's stderr (tail) ---\n{}",
            tail(&server, 40)
        )
    };
    // It dispatches again (the first calls never answered: the gate is still closed), then
    // the model server answers. The requests that were running are taken over at once, not
    // once their 600 s leases ran out: else they never complete here.
    model.wait_total(2 * SLOTS, FAILSAFE, "the restarted server's calls");
    model.open_gate();
    let done = wait_completed(&c, &queue, &cust.api_key, &reqs, &running, &logs);

    // Each request ran to completion once more at most: the running ones were called again,
    // the queued ones once.
    for r in &reqs {
        let calls = model.calls_of(r.id());
        let was_running = running.iter().any(|id| id == r.id());
        assert!(
            if was_running { calls == 2 } else { calls == 1 },
            "{} (running at the kill: {was_running}) was called {calls} times",
            r.id()
        );
    }
    assert_eq!(model.anonymous(), 0, "calls without x-fal-request-id");
    assert_eq!(model.total(), N + SLOTS);
    assert_billed_once(&c, &server.base, &queue, &cust, &reqs, &done, &window_start);
    let log = server.stderr_text();
    assert!(
        !log.contains("panicked") && !log.contains("ERROR"),
        "the restarted server logged an error:\n{log}"
    );
    eprintln!(
        "gateway crash test: {N} requests, {SLOTS} running and {} queued at the SIGKILL, all \
         completed and billed once after a restart on the same file, in {:.1?}",
        N - SLOTS,
        began.elapsed()
    );
}

#[test]
fn two_servers_on_postgres_one_sigkilled_the_survivor_completes_each_request_once() {
    let Some(url) = postgres_url() else {
        eprintln!(
            "skipped: the multi-process PostgreSQL tests need {POSTGRES_URL_VAR} \
             (e.g. postgres://postgres@127.0.0.1:5432/test)"
        );
        return;
    };
    const N: usize = 12;
    const SLOTS: usize = 2;
    const LEASE_S: &str = "2";
    let began = Instant::now();
    let window_start = hour_ago();
    let dir = tempfile::tempdir().expect("temp dir");
    let db = TestDb::new(&Backend::Postgres(url));
    let model = ModelServer::start();
    let catalog_file = dir.path().join("catalog.toml");
    std::fs::write(&catalog_file, catalog(&model.base, SLOTS as u32)).unwrap();
    // Started one after another: each applies the catalog at start.
    let mut servers: Vec<(Server, String)> = (0..2)
        .map(|n| {
            Server::start_gateway(
                Path::new(db.target()),
                dir.path().join(format!("server-{n}.log")),
                OP_KEY,
                Some(&catalog_file),
                &[
                    "--gateway-queue-listen",
                    "127.0.0.1:0",
                    "--gateway-lease-s",
                    LEASE_S,
                ],
            )
        })
        .collect();
    let c = client();
    let cust = customer(&c, &servers[0].0.base, "gw-cluster");

    // Requests to both queue listeners, in turn. Each server runs SLOTS calls at once (the
    // slots are counted per server), all blocked in the model server: once 2 * SLOTS calls
    // arrived, each server runs SLOTS of them.
    let reqs: Vec<Submitted> = (0..N)
        .map(|i| submit(&c, &servers[i % 2].1, &cust.api_key, i))
        .collect();
    model.wait_total(2 * SLOTS, FAILSAFE, "both servers' calls");
    let running: Vec<String> = reqs
        .iter()
        .filter(|r| model.calls_of(r.id()) > 0)
        .map(|r| r.id().to_string())
        .collect();
    assert_eq!(running.len(), 2 * SLOTS);
    let before = statuses(&c, &servers[1].1, &cust.api_key, &reqs);
    for r in &reqs {
        let expected = if running.iter().any(|id| id == r.id()) {
            "IN_PROGRESS"
        } else {
            "IN_QUEUE"
        };
        assert_eq!(before[r.id()]["status"], expected, "{}: {before:?}", r.id());
    }

    // SIGKILL server 1 with SLOTS requests running on it; then the model server answers.
    servers[1].0.kill();
    model.open_gate();
    let (survivor, queue) = &servers[0];
    let logs = || format!("--- survivor's stderr (tail) ---\n{}", tail(survivor, 40));
    let done = wait_completed(&c, queue, &cust.api_key, &reqs, &running, &logs);

    // The dead server's running requests never got their answers: the survivor called their
    // model server again once their leases ran out.
    let called_again = running.iter().filter(|id| model.calls_of(id) >= 2).count();
    assert!(
        called_again >= SLOTS,
        "{called_again} of the {} requests running at the kill were called again; the dead \
         server's {SLOTS} must be: {:?}",
        running.len(),
        running
            .iter()
            .map(|id| (id, model.calls_of(id)))
            .collect::<Vec<_>>()
    );
    for r in &reqs {
        assert!(model.calls_of(r.id()) >= 1, "{} never called", r.id());
    }
    assert_eq!(model.anonymous(), 0, "calls without x-fal-request-id");
    assert!(
        reqs.iter().any(|r| r.queue != *queue),
        "some requests were submitted to the dead server"
    );
    assert_billed_once(
        &c,
        &survivor.base,
        queue,
        &cust,
        &reqs,
        &done,
        &window_start,
    );
    let log = survivor.stderr_text();
    assert!(
        !log.contains("panicked") && !log.contains("ERROR"),
        "the survivor logged an error:\n{log}"
    );
    eprintln!(
        "gateway cluster test: {N} requests to two servers on one PostgreSQL schema, one \
         SIGKILLed with {SLOTS} running; the survivor completed all, billed once ({} model \
         calls in all), in {:.1?}",
        model.total(),
        began.elapsed()
    );
    drop(servers);
}
