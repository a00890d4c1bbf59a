//! tollgate through HTTP: the real server on a loopback port, driven by `wrk` (an external
//! load generator) with Lua scripts, so the HTTP layer is counted.

use super::baseline::{ACCOUNTS, COST_NANOS};
use super::engine::{account_name, drive, seed, start_engine};
use super::report::Row;
use super::Plan;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;
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
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn server() -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let engine = start_engine(&seed(dir.path(), ACCOUNTS)?).await?;
    let op = mint_key(None, Scope::Operator, "bench".into(), engine.now());
    engine.admin(AdminCmd::InsertKey(op.record.clone())).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = tollgate_api::router(tollgate_api::AppState {
        engine: engine.clone(),
    });
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(Server {
        engine,
        url,
        operator: format!("Key {}", op.key()),
        _dir: dir,
        task,
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
    for (name, hot) in [
        ("settle.usage_events.http", false),
        ("hot_account.usage_events.http", true),
    ] {
        if !runs(name) {
            continue;
        }
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
        rows.push(admission_http(plan).await?);
    }
    Ok(())
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

/// The latency of `start` over HTTP while 32 callers run submit -> start -> complete.
async fn admission_http(plan: &Plan) -> anyhow::Result<Row> {
    let s = server().await?;
    let ctx = Arc::new((
        reqwest::Client::new(),
        s.url.clone(),
        s.operator.clone(),
        customer_keys(&s.engine, 16).await?,
    ));
    let clients = 32;
    let (total, elapsed, latency) = drive(&ctx, clients, plan.duration, |ctx, c, _| async move {
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
    .await?;
    Ok(Row::new(
        "admission.start.http",
        "tollgate",
        clients,
        total,
        elapsed,
        Some(&latency),
        "requests/s (submit+start+complete over HTTP, reqwest); latency of start",
    ))
}
