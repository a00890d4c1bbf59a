//! tollgate through HTTP: the real server on a loopback port, driven by `wrk` (an external
//! load generator) with Lua scripts, so the HTTP layer is counted.

use super::baseline::{ACCOUNTS, COST_NANOS};
use super::engine::{account_name, drive, seed, start_engine};
use super::report::Row;
use super::Plan;
use crate::http_server::{self, ConnLimits};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate_api::auth::mint_key;
use tollgate_core::ids::AccountId;
use tollgate_engine::{AdminCmd, Engine};
use tollgate_store::Scope;

/// What both scripts share, prepended to each: a number per wrk thread (`tid`, so ids never
/// collide) and the result line the bench reads.
const SCRIPT_COMMON: &str = r#"
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
function done(summary, latency, requests)
  io.write(string.format("TOLLGATE_WRK requests=%d duration_us=%d errors=%d non2xx=%d p50=%d p99=%d p999=%d\n",
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#;

/// `k` usage events per call, spread over `accounts` (or all on one, "hot").
const EVENTS_SCRIPT: &str = r#"
function init(args)
  n = 0
  k = tonumber(args[1])
  accounts = tonumber(args[2])
  auth = args[3]
  ts = args[4]
  hot = args[5] == "hot"
  headers = { ["Content-Type"] = "application/json", ["Authorization"] = auth }
end
function request()
  local parts = {}
  for i = 1, k do
    n = n + 1
    local acct = 0
    if not hot then acct = (tid * 7919 + n) % accounts end
    parts[i] = string.format('{"event_id":"w%d-%d","endpoint_id":"bench/image","username":"bench-%d","timestamp":"%s","status_code":200,"output":{"images":[{"width":1024,"height":1024}]}}', tid, n, acct, ts)
  end
  return wrk.format("POST", "/v1/usage-events", headers, '{"events":[' .. table.concat(parts, ",") .. ']}')
end
"#;

/// `k` runner events per call: heartbeats of live runners spread over `accounts`. A thread's
/// runners are in groups of `k` (`w<tid>-<n>`, the group's runners numbered on from
/// `(group - 1) * k + 1`); each call takes a free group (a new one when none is free) and
/// reports its runners `RUNNING` at the thread's next time, and `response()` frees the group
/// its answer names, so a runner is in one call at a time and its reports arrive in time
/// order. The thread's time starts at `base` (epoch ms, in the past) and moves `step` ms a
/// call, never past the wall clock: every report bills the runner's time since its previous
/// one.
const RUNNER_EVENTS_SCRIPT: &str = r#"
function init(args)
  n = 0
  k = tonumber(args[1])
  accounts = tonumber(args[2])
  auth = args[3]
  base = tonumber(args[4])
  step = tonumber(args[5])
  free = {}
  groups = 0
  headers = { ["Content-Type"] = "application/json", ["Authorization"] = auth }
end
function request()
  local g = table.remove(free)
  if g == nil then
    groups = groups + 1
    g = groups
  end
  n = n + 1
  local t = math.min(base + n * step, os.time() * 1000)
  local at = os.date("!%Y-%m-%dT%H:%M:%S", math.floor(t / 1000)) .. string.format(".%03dZ", t % 1000)
  local parts = {}
  for i = 1, k do
    local r = (g - 1) * k + i
    local acct = (tid * 7919 + r) % accounts
    parts[i] = string.format('{"event_id":"w%d-e%d-%d","runner_id":"w%d-%d","username":"bench-%d","app":"bench-app","machine_type":"GPU-H100","num_gpus":%d,"state":"RUNNING","at":"%s"}', tid, n, i, tid, r, acct, 1 + r % 8, at)
  end
  return wrk.format("POST", "/v1/runners/events", headers, '{"events":[' .. table.concat(parts, ",") .. ']}')
end
function response(status, headers, body)
  if status >= 300 then
    if os.getenv("TOLLGATE_BENCH_DEBUG") then io.stderr:write("refused: " .. status .. " " .. body .. "\n") end
    return
  end
  local r = string.match(body, '"runner_id":"w%d+%-(%d+)"')
  if r then free[#free + 1] = math.floor((tonumber(r) - 1) / k) + 1 end
end
"#;

/// Each request id goes submit -> start -> complete. Answers carry the request id and its
/// status, so `response()` queues the id's next step and `request()` sends queued steps first,
/// else submits a new id: any number of connections per wrk thread.
const LIFECYCLE_SCRIPT: &str = r#"
function init(args)
  n = 0
  queue = {}
  head = 1
  tail = 0
  auth = args[1]
  local keys = {}
  for key in string.gmatch(args[2], "[^,]+") do keys[#keys + 1] = key end
  headers = { ["Content-Type"] = "application/json", ["Authorization"] = auth }
  callers = keys
end
function request()
  if head <= tail then
    local step = queue[head]
    queue[head] = nil
    head = head + 1
    if step.action == "start" then
      return wrk.format("POST", "/v1/requests/" .. step.id .. "/start", headers, "")
    end
    return wrk.format("POST", "/v1/requests/" .. step.id .. "/complete", headers,
      '{"status_code":200,"output":{"images":[{"width":1024,"height":1024}]}}')
  end
  n = n + 1
  local id = string.format("%08x-0000-4000-8000-%012x", tid, n)
  local caller = callers[(n % #callers) + 1]
  return wrk.format("POST", "/v1/requests", headers,
    '{"request_id":"' .. id .. '","endpoint_id":"bench/image","caller_key":"' .. caller .. '"}')
end
function response(status, headers, body)
  if status >= 300 then
    if os.getenv("TOLLGATE_BENCH_DEBUG") then io.stderr:write("refused: " .. status .. " " .. body .. "\n") end
    return
  end
  local id = string.match(body, '"request_id":"([^"]+)"')
  local state = string.match(body, '"status":"([A-Z_]+)"')
  local next_action = nil
  if state == "IN_QUEUE" then next_action = "start" elseif state == "IN_PROGRESS" then next_action = "complete" end
  if id and next_action then
    tail = tail + 1
    queue[tail] = { id = id, action = next_action }
  end
end
"#;

struct Server {
    engine: Engine,
    url: String,
    operator: String,
    _dir: tempfile::TempDir,
    /// Closes the listener and every connection.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn server() -> anyhow::Result<Server> {
    server_with(ConnLimits::default()).await
}

/// The server as `tollgate serve` runs it, with these connection limits.
async fn server_with(limits: ConnLimits) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let engine = start_engine(&seed(dir.path(), ACCOUNTS)?).await?;
    let op = mint_key(None, Scope::Operator, "bench".into(), engine.now());
    engine.admin(AdminCmd::InsertKey(op.record.clone())).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = tollgate_api::router(tollgate_api::AppState::new(engine.clone()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let stopped = async {
            let _ = stopped.await;
        };
        let _ = http_server::serve(listener, app, limits, stopped, Duration::ZERO).await;
    });
    Ok(Server {
        engine,
        url,
        operator: format!("Key {}", op.key()),
        _dir: dir,
        stop: Some(stop),
    })
}

struct WrkResult {
    requests: u64,
    non2xx: u64,
    errors: u64,
    elapsed: std::time::Duration,
    p50: u64,
    p99: u64,
    p999: u64,
}

async fn wrk(
    plan: &Plan,
    script: &str,
    threads: usize,
    connections: usize,
    url: &str,
    args: &[String],
) -> anyhow::Result<WrkResult> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("script.lua");
    std::fs::write(&path, format!("{SCRIPT_COMMON}{script}"))?;
    let secs = plan.duration.as_secs().max(1);
    let mut cmd = Command::new("wrk");
    cmd.arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{secs}s"))
        .arg("--timeout")
        .arg("10s")
        .arg("-s")
        .arg(&path)
        .arg(url)
        .arg("--")
        .args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if std::env::var_os("TOLLGATE_BENCH_DEBUG").is_some() {
        eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    }
    let line = stdout
        .lines()
        .find(|l| l.starts_with("TOLLGATE_WRK"))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "wrk printed no result: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let field = |k: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(WrkResult {
        requests: field("requests"),
        non2xx: field("non2xx"),
        errors: field("errors"),
        elapsed: std::time::Duration::from_micros(field("duration_us")),
        p50: field("p50"),
        p99: field("p99"),
        p999: field("p999"),
    })
}

fn wrk_row(workload: &str, clients: usize, ops: u64, w: &WrkResult, note: String) -> Row {
    Row::with_latencies(
        workload,
        "tollgate",
        clients,
        ops,
        w.elapsed,
        [Some(w.p50), Some(w.p99), Some(w.p999)],
        note,
    )
}

pub async fn run(
    plan: &Plan,
    wanted: &dyn Fn(&str) -> bool,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    // The rows driven by wrk are skipped, with a word, where it is missing; the row driven by
    // reqwest runs anyway.
    let have_wrk = Command::new("wrk").arg("--version").output().is_ok();
    let runs = |name: &str| {
        let want = wanted(name);
        if want && !have_wrk {
            eprintln!("  (wrk is not installed: skipping {name}; `apt-get install wrk`)");
        }
        want && have_wrk
    };
    let batch = super::engine::BULK_EVENTS;
    // Runner events beside usage events: the same calls, connections and threads.
    for (name, hot) in [
        ("settle.usage_events.http", Some(false)),
        (RUNNER_EVENTS_ROW, None),
        ("hot_account.usage_events.http", Some(true)),
    ] {
        if !runs(name) {
            continue;
        }
        let Some(hot) = hot else {
            rows.push(runner_events(plan).await?);
            continue;
        };
        let s = server().await?;
        let ts = chrono::Utc::now().to_rfc3339();
        let connections = super::engine::BULK_CALLERS;
        let args = vec![
            batch.to_string(),
            ACCOUNTS.to_string(),
            s.operator.clone(),
            ts,
            if hot { "hot" } else { "spread" }.to_string(),
        ];
        let w = wrk(plan, EVENTS_SCRIPT, 2, connections, &s.url, &args).await?;
        anyhow::ensure!(w.non2xx == 0, "{} usage-event calls were refused", w.non2xx);
        let accepted = (w.requests - w.non2xx) * batch as u64;
        let r = s.engine.read(|r| r.reconcile()).await?;
        anyhow::ensure!(
            r.is_clean(),
            "the ledger does not reconcile after the HTTP bench"
        );
        let billed = (r.billed_nanos / COST_NANOS as i128) as u64;
        // Calls still in flight when wrk stopped may be billed without wrk counting them.
        anyhow::ensure!(
            billed >= accepted,
            "{accepted} events acknowledged but only {billed} billed"
        );
        rows.push(wrk_row(
            name,
            connections,
            accepted,
            &w,
            format!(
                "events/s via POST /v1/usage-events ({batch} per call, wrk); latency per call; \
                 {accepted} acknowledged, {billed} in the ledger, {} socket errors",
                w.errors
            ),
        ));
    }
    if runs("lifecycle_calls.http") {
        let s = server().await?;
        let keys = customer_keys(&s.engine, 16).await?;
        let connections = 64;
        let args = vec![s.operator.clone(), keys.join(",")];
        let w = wrk(plan, LIFECYCLE_SCRIPT, 2, connections, &s.url, &args).await?;
        anyhow::ensure!(w.non2xx == 0, "{} lifecycle calls were refused", w.non2xx);
        let r = s.engine.read(|r| r.reconcile()).await?;
        anyhow::ensure!(
            r.is_clean(),
            "the ledger does not reconcile after the HTTP bench"
        );
        rows.push(wrk_row(
            "lifecycle_calls.http",
            connections,
            w.requests,
            &w,
            format!(
                "calls/s: submit, start, complete over HTTP (wrk, 2 threads); latency per call; \
                 {} nano-USD billed",
                r.billed_nanos
            ),
        ));
    }
    if wanted("admission.start.http") {
        let s = server().await?;
        let (total, elapsed, latency) = admission_http(&s, plan).await?;
        rows.push(Row::new(
            "admission.start.http",
            "tollgate",
            ADMISSION_CALLERS,
            total,
            elapsed,
            Some(&latency),
            "requests/s (submit+start+complete over HTTP, reqwest); latency of start",
        ));
    }
    if wanted("admission.start.http.hostile") {
        rows.push(admission_hostile(plan).await?);
    }
    for (name, webhook) in [
        ("admission.start.http.purchases", false),
        ("admission.start.http.webhooks_dead_receiver", true),
    ] {
        if wanted(name) {
            rows.push(admission_with_events(plan, name, webhook).await?);
        }
    }
    Ok(())
}

const RUNNER_EVENTS_ROW: &str = "settle.runner_events.http";

/// `settle.runner_events.http`: `POST /v1/runners/events` driven by wrk as
/// `settle.usage_events.http` drives `POST /v1/usage-events` (100 events per call, 32
/// connections, 2 threads), each call's events the heartbeats of a group of live runners (see
/// `RUNNER_EVENTS_SCRIPT`); checked after it: every runner billed its reported time, the ledger
/// reconciled, every acknowledged event applied.
async fn runner_events(plan: &Plan) -> anyhow::Result<Row> {
    use super::runners::{
        billed_as_reported, counter, EVENTS_APPLIED, HEARTBEAT_BACK_MS, HEARTBEAT_STEP_MS,
    };
    let batch = super::engine::BULK_EVENTS;
    let connections = super::engine::BULK_CALLERS;
    let s = server().await?;
    let args = vec![
        batch.to_string(),
        ACCOUNTS.to_string(),
        s.operator.clone(),
        (s.engine.now().0 - HEARTBEAT_BACK_MS).to_string(),
        HEARTBEAT_STEP_MS.to_string(),
    ];
    let w = wrk(plan, RUNNER_EVENTS_SCRIPT, 2, connections, &s.url, &args).await?;
    anyhow::ensure!(
        w.non2xx == 0,
        "{} runner-event calls were refused",
        w.non2xx
    );
    let accepted = (w.requests - w.non2xx) * batch as u64;
    // Calls still in flight when wrk stopped are applied after it: the checks wait for them
    // (until no event was applied for a quarter of a second).
    let mut applied = counter(&s.engine, EVENTS_APPLIED);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = counter(&s.engine, EVENTS_APPLIED);
        if now == applied {
            break;
        }
        applied = now;
    }
    // Those calls are applied without wrk counting them.
    anyhow::ensure!(
        applied >= accepted && accepted > 0,
        "{accepted} runner events acknowledged but {applied} applied"
    );
    let check = billed_as_reported(&s.engine, ACCOUNTS).await?;
    Ok(wrk_row(
        RUNNER_EVENTS_ROW,
        connections,
        accepted,
        &w,
        format!(
            "events/s via POST /v1/runners/events ({batch} per call, wrk, as \
             settle.usage_events.http): each call the heartbeats of a group of {batch} live \
             runners spread over the accounts, each report billing the runner's time since its \
             previous one; latency per call; {accepted} acknowledged, {applied} applied, {} \
             socket errors; {check}",
            w.errors
        ),
    ))
}

/// Purchases made per second beside the callers of the event rows (each writes two events:
/// purchase.succeeded and invoice.issued).
const EVENT_PURCHASES_PER_S: u64 = 50;

/// The webhook row's attempt timeout.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(2);

/// `admission.start.http` while purchases write events to the outbox, 50 a second, and, with
/// `webhook`, while a webhook subscribed to every type sends them to a receiver that accepts
/// connections and never answers: the dispatcher (as `serve` runs it, with a 2 s timeout so
/// that attempts time out, are recorded and claimed again within the row) holds its 32 slots
/// for the timeout of each attempt, then retries. The row without the webhook is the same
/// load without deliveries, so the two differ by the dispatcher alone.
async fn admission_with_events(plan: &Plan, name: &str, webhook: bool) -> anyhow::Result<Row> {
    let s = server().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut dispatcher = None;
    let mut receiver = None;
    if webhook {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/events", listener.local_addr()?);
        // Accepts, reads, never answers; a connection ends when the sender gives up.
        receiver = Some(tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        }));
        s.engine
            .admin(AdminCmd::CreateWebhook(tollgate_store::WebhookRecord {
                webhook_id: "wh_bench".into(),
                url,
                events: tollgate_store::WebhookEvents::All,
                description: None,
                secret: "whsec_bench".into(),
                created_at: s.engine.now(),
                deleted_at: None,
            }))
            .await?;
        dispatcher = Some(tollgate_api::spawn_webhook_dispatcher(
            s.engine.clone(),
            Arc::new(tollgate_api::webhooks::WebhookSettings {
                timeout: WEBHOOK_TIMEOUT,
                retry_base: Duration::from_secs(1),
                ..tollgate_api::webhooks::WebhookSettings::default()
            }),
            Duration::from_secs(1),
        ));
    }
    let purchases = {
        let (engine, stop) = (s.engine.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_micros(1_000_000 / EVENT_PURCHASES_PER_S));
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let op = tollgate_core::machine::Op::Purchase {
                    account: AccountId::parse(&account_name(n % ACCOUNTS)).expect("valid"),
                    purchase_id: tollgate_core::ids::PurchaseId::parse(&format!("wh-{n}"))
                        .expect("valid"),
                    amount: tollgate_core::Nanos(1_000_000_000),
                    paid: true,
                    expires_at: None,
                };
                engine.execute(op).await??;
                n += 1;
            }
            anyhow::Ok(n)
        })
    };
    let measured = admission_http(&s, plan).await;
    stop.store(true, Ordering::Relaxed);
    let bought = purchases.await??;
    let events = s
        .engine
        .read(|r| r.webhook_events(0, usize::MAX))
        .await?
        .len();
    let metrics = s.engine.metrics().render();
    let sample = |prefix: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or("0")
            .trim()
            .to_string()
    };
    let (attempts, in_flight) = (
        sample("tollgate_webhook_deliveries_total{outcome=\"retry\"}"),
        sample("tollgate_webhook_deliveries_in_flight"),
    );
    if let Some(d) = dispatcher {
        d.abort();
    }
    if let Some(r) = receiver {
        r.abort();
    }
    let r = s.engine.read(|r| r.reconcile()).await?;
    anyhow::ensure!(r.is_clean(), "the ledger does not reconcile after {name}");
    let (total, elapsed, latency) = measured?;
    let note = if webhook {
        format!(
            "admission.start.http while {EVENT_PURCHASES_PER_S} purchases/s write events \
             ({bought} purchases, {events} events) and a webhook subscribed to every type \
             sends them to a receiver that never answers (32 slots, {} s timeout, retries from \
             1 s: {attempts} attempts timed out and recorded, {in_flight} in flight at the \
             end)",
            WEBHOOK_TIMEOUT.as_secs()
        )
    } else {
        format!(
            "admission.start.http while {EVENT_PURCHASES_PER_S} purchases/s write events \
             ({bought} purchases, {events} events), no webhook: the control of \
             admission.start.http.webhooks_dead_receiver"
        )
    };
    Ok(Row::new(
        name,
        "tollgate",
        ADMISSION_CALLERS,
        total,
        elapsed,
        Some(&latency),
        note,
    ))
}

async fn customer_keys(engine: &Engine, n: usize) -> anyhow::Result<Vec<String>> {
    let mut keys = Vec::new();
    for i in 0..n {
        let account = AccountId::parse(&account_name(i)).expect("valid");
        let k = mint_key(Some(account), Scope::Api, "bench".into(), engine.now());
        engine.admin(AdminCmd::InsertKey(k.record.clone())).await?;
        keys.push(k.key());
    }
    Ok(keys)
}

/// Callers of the admission rows over HTTP.
const ADMISSION_CALLERS: usize = 32;

/// The latency of `start` over HTTP while 32 callers run submit -> start -> complete.
async fn admission_http(
    s: &Server,
    plan: &Plan,
) -> anyhow::Result<(u64, Duration, hdrhistogram::Histogram<u64>)> {
    let ctx = Arc::new((
        reqwest::Client::new(),
        s.url.clone(),
        s.operator.clone(),
        customer_keys(&s.engine, 16).await?,
    ));
    drive(&ctx, ADMISSION_CALLERS, plan.duration, |ctx, c, _| async move {
        let (client, url, auth, keys) = &*ctx;
        let id = uuid::Uuid::new_v4().to_string();
        let body = serde_json::json!({
            "request_id": id, "endpoint_id": "bench/image", "caller_key": keys[c % keys.len()],
        });
        let post = |path: String| client.post(format!("{url}{path}")).header("Authorization", auth);
        let r = post("/v1/requests".into()).json(&body).send().await?;
        anyhow::ensure!(r.status().is_success(), "submit: {}", r.status());
        let t = Instant::now();
        let r = post(format!("/v1/requests/{id}/start")).send().await?;
        let admission = t.elapsed();
        anyhow::ensure!(r.status().is_success(), "start: {}", r.status());
        let r = post(format!("/v1/requests/{id}/complete"))
            .json(&serde_json::json!({"status_code": 200, "output": {"images": [{"width": 1024, "height": 1024}]}}))
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "complete: {}", r.status());
        Ok(admission)
    })
    .await
}

/// `admission.start.http` while slow and idle connections are held open against the server:
/// slowloris connections that dribble a request head they never finish, and connections that
/// send nothing, each opened again whenever the server closes it. The connection cap is below
/// their number, so the server closes them both by its timeouts and to make room.
async fn admission_hostile(plan: &Plan) -> anyhow::Result<Row> {
    // Both ends of every connection are in this process: stay well under its file limit.
    let files = http_server::open_files_limit().unwrap_or(1024);
    let fit = usize::try_from(files.saturating_sub(512) / 4).unwrap_or(usize::MAX);
    let per_kind = (if plan.quick { 200 } else { 1000 }).min(fit).max(1);
    let limits = ConnLimits {
        header_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(2),
        max_connections: per_kind + per_kind / 4 + 2 * ADMISSION_CALLERS,
        ..ConnLimits::default()
    };
    let s = server_with(limits).await?;
    let addr = s.url.trim_start_matches("http://").to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicU64::new(0));
    let attackers: Vec<_> = (0..2 * per_kind)
        .map(|i| {
            let (addr, stop, closed) = (addr.clone(), stop.clone(), closed.clone());
            tokio::spawn(hold_open(addr, i % 2 == 0, stop, closed))
        })
        .collect();
    // The attackers connect before the callers do.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let measured = admission_http(&s, plan).await;
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.abort();
    }
    let (total, elapsed, latency) = measured?;
    Ok(Row::new(
        "admission.start.http.hostile",
        "tollgate",
        ADMISSION_CALLERS,
        total,
        elapsed,
        Some(&latency),
        format!(
            "admission.start.http while {per_kind} slowloris and {per_kind} idle connections are \
             held open (header and idle timeouts 2 s, max_connections {}; {} of them closed by \
             the server and reopened)",
            limits.max_connections,
            closed.load(Ordering::Relaxed),
        ),
    ))
}

/// One hostile connection, opened again whenever the server closes it: a slowloris one sends
/// a byte of a request head every half second and never ends it, an idle one sends nothing.
/// It reconnects a tenth of a second after a close.
async fn hold_open(addr: String, slow: bool, stop: Arc<AtomicBool>, closed: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut conn) = tokio::net::TcpStream::connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if slow {
            let _ = conn
                .write_all(b"POST /v1/requests HTTP/1.1\r\nhost: bench\r\nx-slow: ")
                .await;
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let mut buf = [0u8; 512];
            loop {
                tokio::select! {
                    r = conn.read(&mut buf) => if !matches!(r, Ok(n) if n > 0) { break },
                    _ = tick.tick() => if conn.write_all(b"a").await.is_err() { break },
                }
            }
        } else {
            let mut buf = [0u8; 512];
            while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
        }
        closed.fetch_add(1, Ordering::Relaxed);
        // An attacker on another machine would not take this process's CPU to reconnect.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
