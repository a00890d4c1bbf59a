//! Gateway mode (API.md section 10) in-process: the engine on SQLite, the gateway started with
//! `tollgate_gateway::start` on plain HTTP with its default settings (retries: `retry_base`
//! 500 ms, so the first retry waits 250 to 500 ms), and a trivial model server (an axum server
//! in the same process answering 200 with a small JSON and `x-fal-billable-units: 1`, 0.001
//! USD), all over real HTTP on local ports, the bench's callers with reqwest.
//!
//! - `gateway.latency.*`: sequential requests, one at a time, side by side: straight to the
//!   model server (`gateway.latency.upstream`, no gateway), through the direct API
//!   (`gateway.latency.direct`) and through the queue API (`gateway.latency.queue`: submit,
//!   then the status stream `GET <status_url>/stream` read until `COMPLETED`, as fal's clients
//!   wait; the result itself is not fetched). The gateway's added latency is the difference.
//! - `gateway.queue.throughput`: 1,000 callers (100 with `--quick`) on 100 accounts, each
//!   submitting then waiting on the status stream, in a loop, for a fixed number of requests
//!   in total; the endpoint has 100 upstream slots and the model server answers at once.
//! - `gateway.queue.retry_once`: the model server answers 503 to the first call of each
//!   request id, then 200: the time in the queue (submit to the first call), the retry's
//!   wait (first call to second), end to end (submit to `COMPLETED`); the cost billed must be
//!   one success's, checked per request and on the ledger (a double charge fails the bench).
//!
//! Every request's `COMPLETED` status must carry the success's cost, and after the rows the
//! ledger must reconcile with exactly the requests' charges.

use super::engine::{account_name, seed, BENCH_CATALOG};
use super::report::{histogram, record, Row};
use super::Plan;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hdrhistogram::Histogram;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tollgate_api::auth::mint_key;
use tollgate_api::AppState;
use tollgate_core::catalog::document;
use tollgate_core::ids::AccountId;
use tollgate_engine::{system_clock, AdminCmd, Engine};
use tollgate_gateway::{GatewayConfig, GatewayHandle};
use tollgate_store::sqlite::SqliteStore;
use tollgate_store::Scope;

/// The gateway's endpoint in the bench catalog.
const ENDPOINT: &str = "bench/gateway";
/// What one request costs: one unit (`x-fal-billable-units: 1`) at 0.001 USD.
const COST: i64 = 1_000_000;
/// Upstream slots of the endpoint.
const SLOTS: u32 = 100;
/// The accounts the callers are spread over (each with an `API` key).
const ACCOUNTS: usize = 100;
/// The account of the retry row alone, so its line items are its requests'.
const RETRY_ACCOUNT: usize = ACCOUNTS;
/// The path below the endpoint on which the model server fails each request's first call.
const FLAKY: &str = "/flaky";
/// The most a request may take before the bench gives up on it (a failsafe, not a figure).
const FAILSAFE: Duration = Duration::from_secs(120);

pub const LATENCY_UPSTREAM: &str = "gateway.latency.upstream";
pub const LATENCY_DIRECT: &str = "gateway.latency.direct";
pub const LATENCY_QUEUE: &str = "gateway.latency.queue";
pub const THROUGHPUT: &str = "gateway.queue.throughput";
pub const RETRY: &str = "gateway.queue.retry_once";

/// What the model server saw of the flaky path: the instants of each request id's calls.
#[derive(Default)]
struct ModelLog {
    flaky: Mutex<HashMap<String, Vec<Instant>>>,
}

/// The trivial model server: 200 with a small JSON and one billable unit; on [`FLAKY`], 503 to
/// the first call of each request id.
async fn model(
    State(log): State<Arc<ModelLog>>,
    uri: Uri,
    headers: HeaderMap,
    _body: Bytes,
) -> Response {
    if uri.path() == FLAKY {
        let id = headers
            .get("x-fal-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let calls = {
            let mut flaky = log.flaky.lock().expect("model log");
            let calls = flaky.entry(id).or_default();
            calls.push(Instant::now());
            calls.len()
        };
        if calls == 1 {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [("content-type", "application/json")],
                r#"{"detail":"warming up"}"#,
            )
                .into_response();
        }
    }
    (
        StatusCode::OK,
        [
            ("content-type", "application/json"),
            ("x-fal-billable-units", "1"),
        ],
        r#"{"images":[{"url":"https://cdn.example/a.png","width":1024,"height":1024}]}"#,
    )
        .into_response()
}

/// The engine, the gateway and the model server the rows share.
struct Setup {
    _dir: tempfile::TempDir,
    engine: Engine,
    gateway: Option<GatewayHandle>,
    model: String,
    log: Arc<ModelLog>,
    queue: String,
    direct: String,
    /// `API` keys of bench accounts `0..=ACCOUNTS` (the last is the retry row's).
    keys: Vec<String>,
    client: reqwest::Client,
}

impl Setup {
    async fn start() -> anyhow::Result<Setup> {
        let log = Arc::new(ModelLog::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let model_url = format!("http://{}", listener.local_addr()?);
        let app = axum::Router::new()
            .fallback(axum::routing::post(model))
            .with_state(log.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });

        let dir = tempfile::tempdir()?;
        let path = seed(dir.path(), ACCOUNTS + 1)?;
        let engine = Engine::start(Box::new(SqliteStore::open(&path)?), system_clock())?;
        let catalog = format!(
            "{BENCH_CATALOG}
[[endpoint]]
id = \"{ENDPOINT}\"
name = \"Bench gateway model\"
category = \"text-to-image\"
hold_units = \"1\"
price = {{ unit = \"image\", unit_price = \"0.001\" }}

[[endpoint.upstream]]
url = \"{model_url}\"
slots = {SLOTS}
timeout_s = 30
"
        );
        let doc = document::parse(&catalog).map_err(|e| anyhow::anyhow!("{e}"))?;
        engine.admin(AdminCmd::ApplyCatalog(Box::new(doc))).await?;
        let mut keys = Vec::with_capacity(ACCOUNTS + 1);
        for i in 0..=ACCOUNTS {
            let key = mint_key(
                Some(AccountId::parse(&account_name(i))?),
                Scope::Api,
                "bench gateway".into(),
                engine.now(),
            );
            engine
                .admin(AdminCmd::InsertKey(key.record.clone()))
                .await?;
            keys.push(key.key());
        }
        // The gateway's defaults (retries, cooldown, poll), both listeners on plain HTTP.
        let mut config = GatewayConfig::new(([127, 0, 0, 1], 0).into());
        config.direct_listen = Some(([127, 0, 0, 1], 0).into());
        let gateway = tollgate_gateway::start(AppState::new(engine.clone()), config).await?;
        let queue = format!("http://{}", gateway.queue_addr);
        let direct = format!(
            "http://{}",
            gateway.direct_addr.expect("the direct listener")
        );
        let client = reqwest::Client::builder().timeout(FAILSAFE).build()?;
        Ok(Setup {
            _dir: dir,
            engine,
            gateway: Some(gateway),
            model: model_url,
            log,
            queue,
            direct,
            keys,
            client,
        })
    }

    /// Everything billed so far, nano-USD, after checking that the ledger reconciles.
    async fn billed(&self) -> anyhow::Result<i128> {
        let rec = self.engine.read(|r| r.reconcile()).await?;
        anyhow::ensure!(
            rec.is_clean(),
            "the ledger does not reconcile after the gateway's requests: {}",
            rec.summary()
        );
        Ok(rec.billed_nanos)
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(g) = self.gateway.take() {
            g.stop();
        }
        self.engine.shutdown().await?;
        Ok(())
    }
}

/// A call straight to the model server, as the gateway makes it.
async fn call_upstream(client: &reqwest::Client, model: &str, n: u64) -> anyhow::Result<()> {
    let resp = client
        .post(model)
        .header("content-type", "application/json")
        .header("x-fal-request-id", format!("bench-upstream-{n}"))
        .body(r#"{"prompt":"a lighthouse"}"#)
        .send()
        .await?;
    anyhow::ensure!(
        resp.status() == 200,
        "the model server answered {}",
        resp.status()
    );
    resp.bytes().await?;
    Ok(())
}

/// One request through the direct API; checks its answer and cost.
async fn call_direct(client: &reqwest::Client, direct: &str, key: &str) -> anyhow::Result<()> {
    let resp = client
        .post(format!("{direct}/{ENDPOINT}"))
        .header("authorization", format!("Key {key}"))
        .header("content-type", "application/json")
        .body(r#"{"prompt":"a lighthouse"}"#)
        .send()
        .await?;
    let status = resp.status();
    let cost = resp
        .headers()
        .get("x-tollgate-cost-nano-usd")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let body = resp.bytes().await?;
    anyhow::ensure!(
        status == 200 && cost == Some(COST),
        "the direct API answered {status}, cost {cost:?} (expected {COST}): {}",
        String::from_utf8_lossy(&body)
    );
    Ok(())
}

/// What one request through the queue saw.
struct Queued {
    request_id: String,
    /// When the submission was sent.
    submitted: Instant,
    /// When the status stream said `COMPLETED`.
    completed: Instant,
}

/// Submits to the queue (on `path` below the endpoint) and reads the request's status stream
/// until `COMPLETED`; checks that it succeeded and cost one success's price.
async fn through_queue(
    client: &reqwest::Client,
    queue: &str,
    key: &str,
    path: &str,
) -> anyhow::Result<Queued> {
    let submitted = Instant::now();
    let resp = client
        .post(format!("{queue}/{ENDPOINT}{path}"))
        .header("authorization", format!("Key {key}"))
        .header("content-type", "application/json")
        .body(r#"{"prompt":"a lighthouse"}"#)
        .send()
        .await?;
    let status = resp.status();
    let answer: Value = resp.json().await?;
    anyhow::ensure!(status == 200, "submit answered {status}: {answer}");
    let (Some(request_id), Some(status_url)) =
        (answer["request_id"].as_str(), answer["status_url"].as_str())
    else {
        anyhow::bail!("a submission's answer without its request id or status URL: {answer}");
    };
    let mut stream = client
        .get(format!("{status_url}/stream"))
        .header("authorization", format!("Key {key}"))
        .send()
        .await?;
    anyhow::ensure!(
        stream.status() == 200,
        "the status stream answered {}",
        stream.status()
    );
    let mut buffer = String::new();
    let mut last = Value::Null;
    while let Some(chunk) = stream.chunk().await? {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            for line in event.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    last = serde_json::from_str(data.trim())?;
                }
            }
        }
        if last["status"] == "COMPLETED" {
            let completed = Instant::now();
            anyhow::ensure!(
                last.get("error").is_none() && last["metrics"]["cost_nano_usd"] == COST,
                "request {request_id} completed with {last}: expected a success billed {COST} \
                 nano-USD (one success's cost)"
            );
            return Ok(Queued {
                request_id: request_id.to_string(),
                submitted,
                completed,
            });
        }
    }
    anyhow::bail!("the status stream of {request_id} ended before it completed: {last}")
}

pub async fn run(
    plan: &Plan,
    wanted: &dyn Fn(&str) -> bool,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let want_latency = [LATENCY_UPSTREAM, LATENCY_DIRECT, LATENCY_QUEUE].map(wanted);
    let want_throughput = wanted(THROUGHPUT);
    let want_retry = wanted(RETRY);
    if !want_latency.contains(&true) && !want_throughput && !want_retry {
        return Ok(());
    }
    super::quiesce();
    let setup = Setup::start().await?;
    // Requests billed by the rows, checked against the ledger at the end.
    let mut requests = 0u64;
    let billed_before = setup.billed().await?;

    if want_latency.contains(&true) {
        requests += latency(plan, &setup, want_latency, rows).await?;
    }
    if want_throughput {
        requests += throughput(plan, &setup, rows).await?;
    }
    if want_retry {
        requests += retry_once(plan, &setup, rows).await?;
    }
    let billed = setup.billed().await? - billed_before;
    let expected = i128::from(requests) * i128::from(COST);
    anyhow::ensure!(
        billed == expected,
        "the gateway rows billed {billed} nano-USD for {requests} requests of {COST}: expected \
         {expected} (a request charged twice, or not at all)"
    );
    eprintln!(
        "  (gateway rows: {requests} requests billed {billed} nano-USD in all, one success's \
         cost each; ledger reconciled)"
    );
    setup.stop().await
}

/// p50 and p99 of a histogram, microseconds.
fn p50_p99(h: &Histogram<u64>) -> (u64, u64) {
    (h.value_at_quantile(0.5), h.value_at_quantile(0.99))
}

/// The three latency rows: sequential requests straight to the model server, through the
/// direct API, through the queue; the requests billed.
async fn latency(
    plan: &Plan,
    s: &Setup,
    [want_upstream, want_direct, want_queue]: [bool; 3],
    rows: &mut Vec<Row>,
) -> anyhow::Result<u64> {
    let n: u64 = if plan.quick { 300 } else { 3_000 };
    let warm = 20;
    let key = &s.keys[0];
    let mut billed = 0;

    // Each kind's first `warm` requests (connections opened, caches filled) are not measured.
    let mut up = histogram();
    for i in 0..warm {
        call_upstream(&s.client, &s.model, i).await?;
    }
    let t = Instant::now();
    for i in warm..warm + n {
        let started = Instant::now();
        call_upstream(&s.client, &s.model, i).await?;
        record(&mut up, started.elapsed());
    }
    let up_el = t.elapsed();

    let mut direct = histogram();
    let mut direct_el = Duration::ZERO;
    if want_direct {
        for _ in 0..warm {
            call_direct(&s.client, &s.direct, key).await?;
        }
        let t = Instant::now();
        for _ in 0..n {
            let started = Instant::now();
            call_direct(&s.client, &s.direct, key).await?;
            record(&mut direct, started.elapsed());
        }
        direct_el = t.elapsed();
        billed += warm + n;
    }

    let mut queue = histogram();
    let mut queue_el = Duration::ZERO;
    if want_queue {
        for _ in 0..warm {
            through_queue(&s.client, &s.queue, key, "").await?;
        }
        let t = Instant::now();
        for _ in 0..n {
            let q = through_queue(&s.client, &s.queue, key, "").await?;
            record(&mut queue, q.completed - q.submitted);
        }
        queue_el = t.elapsed();
        billed += warm + n;
    }

    let (up50, up99) = p50_p99(&up);
    let added = |h: &Histogram<u64>| {
        let (p50, p99) = p50_p99(h);
        format!(
            "added to the model server's own: p50 +{} us, p99 +{} us",
            p50.saturating_sub(up50),
            p99.saturating_sub(up99)
        )
    };
    if want_upstream {
        rows.push(Row::new(
            LATENCY_UPSTREAM,
            "no-gateway",
            1,
            n,
            up_el,
            Some(&up),
            format!(
                "{n} sequential POSTs straight to the trivial model server (in-process axum, \
                 200 + small JSON + x-fal-billable-units: 1), keep-alive; the baseline of \
                 {LATENCY_DIRECT} and {LATENCY_QUEUE}"
            ),
        ));
    }
    if want_direct {
        rows.push(Row::new(
            LATENCY_DIRECT,
            "tollgate",
            1,
            n,
            direct_el,
            Some(&direct),
            format!(
                "{n} sequential requests through the direct API (submit+start in one batch, \
                 the model server called, complete: 2 commits), each answered 200 with its cost \
                 (0.001 USD) checked; {}",
                added(&direct)
            ),
        ));
    }
    if want_queue {
        rows.push(Row::new(
            LATENCY_QUEUE,
            "tollgate",
            1,
            n,
            queue_el,
            Some(&queue),
            format!(
                "{n} sequential requests through the queue API: submit, then GET \
                 <status_url>/stream read until COMPLETED (the result not fetched); 3 commits \
                 (submit, dispatch, answer); each COMPLETED with its cost (0.001 USD) checked; \
                 {}",
                added(&queue)
            ),
        ));
    }
    Ok(billed)
}

/// Callers that each submit and wait on the status stream, in a loop, until `total` requests
/// were made: end-to-end latency per request.
async fn throughput(plan: &Plan, s: &Setup, rows: &mut Vec<Row>) -> anyhow::Result<u64> {
    let (callers, total): (usize, u64) = if plan.quick {
        (100, 2_000)
    } else {
        (1_000, 20_000)
    };
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(callers);
    for c in 0..callers {
        let (client, queue, key, next) = (
            s.client.clone(),
            s.queue.clone(),
            s.keys[c % ACCOUNTS].clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let q = through_queue(&client, &queue, &key, "").await?;
                record(&mut h, q.completed - q.submitted);
            }
            anyhow::Ok(h)
        }));
    }
    let mut all = histogram();
    for t in tasks {
        all.add(t.await??).expect("same bounds");
    }
    let elapsed = start.elapsed();
    let (p50, p99) = p50_p99(&all);
    rows.push(Row::new(
        THROUGHPUT,
        "tollgate",
        callers,
        total,
        elapsed,
        Some(&all),
        format!(
            "requests/s through the queue: {callers} callers on {ACCOUNTS} accounts, each \
             submitting then reading the status stream until COMPLETED, in a loop, {total} \
             requests in all in {:.1} s; {SLOTS} upstream slots, the model server answering at \
             once; end-to-end p50/p99 {:.1}/{:.1} ms; each COMPLETED with its cost checked",
            elapsed.as_secs_f64(),
            p50 as f64 / 1000.0,
            p99 as f64 / 1000.0
        ),
    ));
    Ok(total)
}

/// Sequential requests whose first call the model server answers 503: the queue time, the
/// retry's wait and end to end; the cost billed checked to be one success's.
async fn retry_once(plan: &Plan, s: &Setup, rows: &mut Vec<Row>) -> anyhow::Result<u64> {
    let n: u64 = if plan.quick { 20 } else { 100 };
    let key = &s.keys[RETRY_ACCOUNT];
    let account = AccountId::parse(&account_name(RETRY_ACCOUNT))?;
    let (mut queued, mut backoff, mut e2e) = (histogram(), histogram(), histogram());
    let t = Instant::now();
    for _ in 0..n {
        let q = through_queue(&s.client, &s.queue, key, FLAKY).await?;
        let calls = s
            .log
            .flaky
            .lock()
            .expect("model log")
            .get(&q.request_id)
            .cloned()
            .unwrap_or_default();
        anyhow::ensure!(
            calls.len() == 2,
            "request {} was called {} times, expected 2 (a 503, then 200)",
            q.request_id,
            calls.len()
        );
        record(&mut queued, calls[0].saturating_duration_since(q.submitted));
        record(&mut backoff, calls[1] - calls[0]);
        record(&mut e2e, q.completed - q.submitted);
    }
    let elapsed = t.elapsed();
    // The ledger's own word: one line item of one success's cost per request.
    let q = tollgate_store::BillingEventsQuery {
        account,
        from: tollgate_core::Timestamp(0),
        to: tollgate_core::Timestamp(i64::MAX),
        endpoints: vec![],
        request_ids: vec![],
        api_keys: vec![],
        after: None,
        newest_first: false,
        limit: 100_000,
    };
    let items = s.engine.read(move |r| r.billing_events(&q)).await?;
    let charged: i64 = items.iter().map(|i| i.charge.total_nanos.0).sum();
    if items.len() as u64 != n || charged != n as i64 * COST {
        anyhow::bail!(
            "DOUBLE CHARGE: {n} requests retried once were billed {charged} nano-USD in {} line \
             items; one success's cost each is {} in {n}",
            items.len(),
            n as i64 * COST
        );
    }
    let ms = |h: &Histogram<u64>| h.value_at_quantile(0.5) as f64 / 1000.0;
    rows.push(Row::new(
        RETRY,
        "tollgate",
        1,
        n,
        elapsed,
        Some(&e2e),
        format!(
            "{n} sequential requests through the queue, the model server answering 503 to each \
             one's first call, then 200; the gateway's default backoff (retry_base 500 ms: the \
             retry waits 250-500 ms); latency end to end (submit to COMPLETED on the status \
             stream); p50 in the queue (submit to first call) {:.1} ms, first call to retry \
             {:.1} ms, end to end {:.1} ms; each called exactly twice and billed once, {COST} \
             nano-USD (line items: {n}, {charged} nano-USD = one success's cost each)",
            ms(&queued),
            ms(&backoff),
            ms(&e2e)
        ),
    ));
    Ok(n)
}
