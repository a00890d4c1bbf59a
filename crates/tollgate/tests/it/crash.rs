//! Crash safety of the real binary: a burst of gateway traffic, SIGKILL in the middle of it, a
//! restart on the same database file, then proof that every acknowledged answer survived exactly
//! once, that retrying what was never acknowledged applies at most once, and that every balance
//! is exactly its purchases minus its billed requests, to the nano-USD.
//!
//! Timing only decides when the server is killed; no assertion depends on it.

use crate::common::{client, must, send, Reply, Server, SAMPLE_CATALOG};
use reqwest::blocking::Client;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const OP_KEY: &str = "crash-op:secret123";
const ACCOUNTS: [&str; 3] = ["crash-a", "crash-b", "crash-c"];
/// Each account's first purchase, before the burst.
const INITIAL_USD: &str = "10000.00";
const INITIAL_NANOS: i64 = 10_000_000_000_000;
const THREADS: usize = 8;
/// Upper bound on iterations per burst thread (the kill normally comes long before).
const MAX_ITERS: usize = 20_000;
/// Kill once this many completes were acknowledged (and at least `MIN_BURST` has passed) ...
const KILL_AFTER_COMPLETES: usize = 400;
const MIN_BURST: Duration = Duration::from_millis(1000);
/// ... or after this long, whichever comes first.
const MAX_BURST: Duration = Duration::from_secs(12);
/// Purchases made during the burst: (amount_usd, nano-USD).
const PURCHASES: [(&str, i64); 3] = [
    ("1.25", 1_250_000_000),
    ("0.000000001", 1),
    ("7.777777777", 7_777_777_777),
];

fn post(c: &Client, base: &str, path: &str, body: &Value) -> Result<Reply, String> {
    send(c.post(format!("{base}{path}")).json(body), OP_KEY)
}

fn put(c: &Client, base: &str, path: &str, body: &Value) -> Result<Reply, String> {
    send(c.put(format!("{base}{path}")).json(body), OP_KEY)
}

fn get(c: &Client, base: &str, path: &str) -> Result<Reply, String> {
    send(c.get(format!("{base}{path}")), OP_KEY)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Submit,
    Start,
    Complete,
    Events,
    Purchase,
}

/// One operation of the burst: what was sent, and the answer if one was received.
#[derive(Debug, Clone)]
struct Entry {
    kind: Kind,
    account: usize,
    path: String,
    req: Value,
    /// `Some` only for a received success answer (an acknowledged operation).
    ack: Option<Reply>,
}

struct WorkerOut {
    c: Client,
    base: String,
    log: Vec<Entry>,
    /// Answers that are wrong whatever the timing (a refusal, a replay of a fresh id, ...).
    unexpected: Vec<String>,
}

struct Burst {
    base: String,
    keys: Vec<String>,
    stop: AtomicBool,
    completes: AtomicUsize,
}

impl WorkerOut {
    /// Sends one burst operation and logs it. Returns the answer body when it is acknowledged
    /// with the expected status; `None` (the worker stops) otherwise.
    fn step(
        &mut self,
        kind: Kind,
        account: usize,
        path: String,
        req: Value,
        status: u16,
    ) -> Option<Value> {
        match post(&self.c, &self.base, &path, &req) {
            Err(_) => {
                self.log.push(Entry {
                    kind,
                    account,
                    path,
                    req,
                    ack: None,
                });
                None
            }
            Ok(r) if r.status == status && !r.replayed => {
                let body = r.body.clone();
                self.log.push(Entry {
                    kind,
                    account,
                    path,
                    req,
                    ack: Some(r),
                });
                Some(body)
            }
            Ok(r) => {
                self.unexpected.push(format!(
                    "{kind:?} {path} {req}: expected a fresh {status}, got {} (replayed {}) {}",
                    r.status, r.replayed, r.body
                ));
                None
            }
        }
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn complete_body(variant: usize) -> (&'static str, Value) {
    match variant % 4 {
        0 => (
            "fal-ai/flux/dev",
            json!({"status_code": 200, "output": {"images": [{"width": 1920, "height": 1080}]}}),
        ),
        1 => ("fal-ai/flux/dev", json!({"status_code": 500})),
        2 => (
            "fal-ai/kling-video/o1/image-to-video",
            json!({"status_code": 200, "output": {"video_seconds": "5.5"}, "inference_seconds": "41.2"}),
        ),
        _ => (
            "fal-ai/flux/dev",
            json!({"status_code": 200, "output": {"images": [
                {"width": 1024, "height": 768}, {"width": 1024, "height": 768}]}}),
        ),
    }
}

fn worker(t: usize, burst: Arc<Burst>) -> WorkerOut {
    let mut out = WorkerOut {
        c: client(),
        base: burst.base.clone(),
        log: Vec::new(),
        unexpected: Vec::new(),
    };
    for i in 0..MAX_ITERS {
        if burst.stop.load(Ordering::SeqCst) {
            break;
        }
        let account = (t + i) % ACCOUNTS.len();
        let username = ACCOUNTS[account];
        let go_on = match i % 10 {
            0..=6 => {
                let id = uuid::Uuid::new_v4().to_string();
                let (endpoint, done) = complete_body(t + i / 10 * 7 + i % 10);
                let submit = json!({
                    "request_id": id,
                    "endpoint_id": endpoint,
                    "caller_key": burst.keys[account],
                });
                out.step(Kind::Submit, account, "/v1/requests".into(), submit, 201)
                    .and_then(|_| {
                        out.step(
                            Kind::Start,
                            account,
                            format!("/v1/requests/{id}/start"),
                            json!({}),
                            200,
                        )
                    })
                    .and_then(|_| {
                        out.step(
                            Kind::Complete,
                            account,
                            format!("/v1/requests/{id}/complete"),
                            done,
                            200,
                        )
                    })
                    .map(|_| burst.completes.fetch_add(1, Ordering::SeqCst))
                    .is_some()
            }
            7 | 8 => {
                let n = 1 + (t + i) % 3;
                let events: Vec<Value> = (0..n)
                    .map(|k| {
                        let (endpoint, output) = if (i + k) % 2 == 0 {
                            (
                                "fal-ai/flux/dev",
                                json!({"images": [{"width": 1920, "height": 1080}]}),
                            )
                        } else {
                            ("fal-ai/bria/background/remove", json!({}))
                        };
                        json!({
                            "event_id": uuid::Uuid::new_v4().to_string(),
                            "endpoint_id": endpoint,
                            "username": ACCOUNTS[(account + k) % ACCOUNTS.len()],
                            "timestamp": now_rfc3339(),
                            "status_code": if (t + i + k) % 5 == 2 { 500 } else { 200 },
                            "output": output,
                            "inference_seconds": "2.5",
                        })
                    })
                    .collect();
                let req = json!({ "events": events });
                match out.step(Kind::Events, account, "/v1/usage-events".into(), req, 200) {
                    None => false,
                    Some(body) => {
                        let results = body["results"].as_array().cloned().unwrap_or_default();
                        let bad = results
                            .iter()
                            .any(|r| r.get("error").is_some() || r["duplicate"] != json!(false));
                        if results.len() != n || bad {
                            out.unexpected.push(format!("usage events answered {body}"));
                            false
                        } else {
                            true
                        }
                    }
                }
            }
            _ => {
                let (amount, _) = PURCHASES[(t + i / 10) % PURCHASES.len()];
                let req = json!({
                    "purchase_id": format!("p-{}", uuid::Uuid::new_v4()),
                    "amount_usd": amount,
                    "kind": if i % 20 == 9 { "paid" } else { "free" },
                });
                out.step(
                    Kind::Purchase,
                    account,
                    format!("/v1/admin/accounts/{username}/purchases"),
                    req,
                    201,
                )
                .is_some()
            }
        };
        if !go_on {
            break;
        }
    }
    out
}

fn purchase_nanos(amount_usd: &str) -> i64 {
    if amount_usd == INITIAL_USD {
        return INITIAL_NANOS;
    }
    PURCHASES
        .iter()
        .find(|(a, _)| *a == amount_usd)
        .map(|(_, n)| *n)
        .expect("a known purchase amount")
}

fn without_duplicate(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("duplicate");
    }
    v
}

fn account_view(c: &Client, base: &str, username: &str) -> Value {
    must(
        get(c, base, &format!("/v1/admin/accounts/{username}")),
        200,
        "GET account",
    )
    .body
}

/// Retries an operation that was sent but never acknowledged: the first retry either replays
/// (it had been committed) or applies it now; the second must replay the first's answer.
/// Returns whether the first retry was a replay.
fn retry_twice(c: &Client, base: &str, e: &Entry) -> bool {
    let what = format!("retry of unacknowledged {:?} {} {}", e.kind, e.path, e.req);
    let expected = match e.kind {
        Kind::Submit | Kind::Purchase => 201,
        _ => 200,
    };
    let first = post(c, base, &e.path, &e.req).unwrap_or_else(|err| panic!("{what}: {err}"));
    let second = post(c, base, &e.path, &e.req).unwrap_or_else(|err| panic!("{what}: {err}"));
    match e.kind {
        Kind::Submit => {
            assert!(
                first.status == 201 || first.status == 200,
                "{what}: {first:?}"
            );
            assert_eq!(second.status, 200, "{what}: second retry must replay");
            assert_eq!(second.body, first.body, "{what}");
            assert_eq!(first.body["status"], "IN_QUEUE", "{what}");
            first.status == 200
        }
        Kind::Start => {
            assert_eq!(first.status, 200, "{what}: {first:?}");
            assert_eq!(second.status, 200, "{what}: {second:?}");
            assert_eq!(first.body["status"], "IN_PROGRESS", "{what}");
            assert_eq!(
                second.body["hold_nano_usd"], first.body["hold_nano_usd"],
                "{what}"
            );
            assert_eq!(
                second.body["concurrency"]["in_progress"], first.body["concurrency"]["in_progress"],
                "{what}: a repeated start must not take another slot"
            );
            // The start endpoint has no replay marker; whether it had been committed is only
            // visible through the hold accounting checked at the end.
            false
        }
        Kind::Complete | Kind::Purchase => {
            assert_eq!(first.status, expected, "{what}: {first:?}");
            assert_eq!(second.status, expected, "{what}: {second:?}");
            assert!(second.replayed, "{what}: the second retry must be a replay");
            assert_eq!(
                second.body, first.body,
                "{what}: the replay must repeat the answer"
            );
            first.replayed
        }
        Kind::Events => {
            assert_eq!(first.status, 200, "{what}: {first:?}");
            assert_eq!(second.status, 200, "{what}: {second:?}");
            let a = first.body["results"].as_array().expect("results");
            let b = second.body["results"].as_array().expect("results");
            assert_eq!(a.len(), e.req["events"].as_array().expect("events").len());
            assert_eq!(a.len(), b.len(), "{what}");
            for (x, y) in a.iter().zip(b) {
                assert!(x.get("error").is_none(), "{what}: {x}");
                assert_eq!(y["duplicate"], true, "{what}: {y}");
                assert_eq!(without_duplicate(x), without_duplicate(y), "{what}");
            }
            // All events of one call commit in one transaction: all or none.
            let dups: Vec<&Value> = a.iter().map(|x| &x["duplicate"]).collect();
            assert!(
                dups.iter().all(|d| **d == dups[0].clone()),
                "{what}: a call's events were partly committed: {dups:?}"
            );
            dups[0] == &json!(true)
        }
    }
}

#[test]
fn acknowledged_operations_survive_sigkill_and_retries_never_double_charge() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("t.db");
    let c = client();

    // ---- first life: setup, then a burst, then SIGKILL ------------------------------------
    let mut server = Server::start(
        &db,
        dir.path().join("stderr-1.log"),
        OP_KEY,
        Some(Path::new(SAMPLE_CATALOG)),
    );
    let base = server.base.clone();
    let mut keys = Vec::new();
    for u in ACCOUNTS {
        must(
            post(&c, &base, "/v1/admin/accounts", &json!({"username": u})),
            201,
            "create account",
        );
        must(
            post(
                &c,
                &base,
                &format!("/v1/admin/accounts/{u}/purchases"),
                &json!({"purchase_id": format!("init-{u}"), "amount_usd": INITIAL_USD}),
            ),
            201,
            "initial purchase",
        );
        let view = must(
            put(
                &c,
                &base,
                &format!("/v1/admin/accounts/{u}/pricing"),
                &json!({"concurrency_limit": 1000}),
            ),
            200,
            "concurrency override",
        );
        assert_eq!(
            view.body["account"]["concurrency_limit"], 1000,
            "{}",
            view.body
        );
        let key = must(
            post(
                &c,
                &base,
                &format!("/v1/admin/accounts/{u}/keys"),
                &json!({"scope": "API", "alias": "crash test"}),
            ),
            201,
            "create key",
        );
        keys.push(key.body["key"].as_str().expect("key").to_string());
    }

    let burst = Arc::new(Burst {
        base: base.clone(),
        keys,
        stop: AtomicBool::new(false),
        completes: AtomicUsize::new(0),
    });
    let started = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let b = burst.clone();
            std::thread::spawn(move || worker(t, b))
        })
        .collect();
    loop {
        let elapsed = started.elapsed();
        let done = burst.completes.load(Ordering::SeqCst);
        if (done >= KILL_AFTER_COMPLETES && elapsed >= MIN_BURST)
            || elapsed >= MAX_BURST
            || handles.iter().all(|h| h.is_finished())
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    server.kill();
    let killed_at = burst.completes.load(Ordering::SeqCst);
    burst.stop.store(true, Ordering::SeqCst);
    let mut log: Vec<Entry> = Vec::new();
    let mut unexpected: Vec<String> = Vec::new();
    for h in handles {
        let out = h.join().expect("burst thread");
        log.extend(out.log);
        unexpected.extend(out.unexpected);
    }
    let stderr1 = server.stderr_text();
    assert!(
        unexpected.is_empty(),
        "wrong answers during the burst: {unexpected:#?}\nstderr:\n{stderr1}"
    );
    let acked_completes = log
        .iter()
        .filter(|e| e.kind == Kind::Complete && e.ack.is_some())
        .count();
    assert!(
        acked_completes > 0,
        "no complete was acknowledged before the kill; stderr:\n{stderr1}"
    );

    // ---- second life on the same database file -------------------------------------------
    let server2 = Server::start(
        &db,
        dir.path().join("stderr-2.log"),
        OP_KEY,
        Some(Path::new(SAMPLE_CATALOG)),
    );
    let base = server2.base.clone();

    // Every request / event id ever sent, with its account; every purchase ever sent.
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    let mut purchased: Vec<i64> = vec![INITIAL_NANOS; ACCOUNTS.len()];
    for e in &log {
        match e.kind {
            Kind::Submit => {
                ids.insert(
                    e.req["request_id"].as_str().expect("id").to_string(),
                    e.account,
                );
            }
            Kind::Events => {
                for ev in e.req["events"].as_array().expect("events") {
                    let acct = ACCOUNTS
                        .iter()
                        .position(|a| ev["username"] == *a)
                        .expect("known account");
                    ids.insert(ev["event_id"].as_str().expect("id").to_string(), acct);
                }
            }
            Kind::Purchase => {
                purchased[e.account] += purchase_nanos(e.req["amount_usd"].as_str().expect("amt"));
            }
            Kind::Start | Kind::Complete => {}
        }
    }

    let before: Vec<Value> = ACCOUNTS
        .iter()
        .map(|u| account_view(&c, &base, u))
        .collect();

    // (a) acknowledged completes: present once, same status and cost as acknowledged.
    // (b) acknowledged purchases and usage events: a repeat replays and changes nothing.
    for e in &log {
        let Some(ack) = &e.ack else { continue };
        match e.kind {
            Kind::Complete => {
                let id = ack.body["request_id"].as_str().expect("request_id");
                let now = must(get(&c, &base, &format!("/v1/requests/{id}")), 200, "GET");
                assert_eq!(now.body["status"], ack.body["status"], "{id}: {}", now.body);
                assert_eq!(
                    now.body["billing"]["cost_estimate_nano_usd"],
                    ack.body["cost_estimate_nano_usd"],
                    "{id}: acknowledged cost lost or changed"
                );
                assert_eq!(
                    now.body["billing"], ack.body,
                    "{id}: acknowledged billing changed"
                );
            }
            Kind::Purchase => {
                let again = must(post(&c, &base, &e.path, &e.req), 201, "purchase replay");
                assert!(
                    again.replayed,
                    "acknowledged purchase {} not replayed",
                    e.req
                );
                assert_eq!(again.body, ack.body, "purchase replay differs: {}", e.req);
                assert_eq!(
                    ack.body["amount_nano_usd"],
                    purchase_nanos(e.req["amount_usd"].as_str().expect("amt")),
                    "{}",
                    ack.body
                );
            }
            Kind::Events => {
                let again = must(post(&c, &base, &e.path, &e.req), 200, "events replay");
                let a = ack.body["results"].as_array().expect("results");
                let b = again.body["results"].as_array().expect("results");
                assert_eq!(a.len(), b.len());
                for (x, y) in a.iter().zip(b) {
                    assert_eq!(
                        y["duplicate"], true,
                        "acknowledged event not a duplicate: {y}"
                    );
                    assert_eq!(
                        y["cost_estimate_nano_usd"], x["cost_estimate_nano_usd"],
                        "event cost changed: {x} vs {y}"
                    );
                    assert_eq!(without_duplicate(x), without_duplicate(y));
                }
            }
            Kind::Submit | Kind::Start => {
                let id = e
                    .path
                    .split('/')
                    .nth(3)
                    .map(str::to_string)
                    .unwrap_or_else(|| {
                        e.req["request_id"]
                            .as_str()
                            .expect("request_id")
                            .to_string()
                    });
                let now = must(get(&c, &base, &format!("/v1/requests/{id}")), 200, "GET");
                if e.kind == Kind::Start && now.body["status"] == "IN_PROGRESS" {
                    assert_eq!(
                        now.body["hold_nano_usd"], ack.body["hold_nano_usd"],
                        "{id}: acknowledged hold changed"
                    );
                }
                if e.kind == Kind::Start {
                    assert_ne!(
                        now.body["status"], "IN_QUEUE",
                        "{id}: acknowledged start lost"
                    );
                }
            }
        }
    }
    let after: Vec<Value> = ACCOUNTS
        .iter()
        .map(|u| account_view(&c, &base, u))
        .collect();
    for (b, a) in before.iter().zip(&after) {
        for field in ["balance_nano_usd", "held_nano_usd", "in_progress"] {
            assert_eq!(a[field], b[field], "replays changed {field}: {b} -> {a}");
        }
    }

    // (c) sent but never acknowledged: retry twice; applied at most once.
    let unacked: Vec<&Entry> = log.iter().filter(|e| e.ack.is_none()).collect();
    let mut committed_before_crash = 0;
    for e in &unacked {
        if retry_twice(&c, &base, e) {
            committed_before_crash += 1;
        }
    }

    // (d) the ledger reconciles, and every balance is exactly purchases - billed costs.
    let rec = must(
        get(&c, &base, "/v1/admin/reconciliation"),
        200,
        "reconciliation",
    )
    .body;
    assert_eq!(rec["clean"], true, "reconciliation is not clean: {rec}");
    let mut billed = vec![0i64; ACCOUNTS.len()];
    let mut held = vec![0i64; ACCOUNTS.len()];
    let mut in_progress = vec![0u64; ACCOUNTS.len()];
    for (id, &acct) in &ids {
        let r = must(
            get(&c, &base, &format!("/v1/requests/{id}")),
            200,
            "GET request",
        )
        .body;
        assert_eq!(r["username"], ACCOUNTS[acct], "{r}");
        match r["status"].as_str().expect("status") {
            "COMPLETED" | "FAILED" => {
                let b = &r["billing"];
                let cost = b["cost_estimate_nano_usd"].as_i64().expect("cost");
                if b["billed"] == true {
                    billed[acct] += cost;
                } else {
                    assert_eq!(b["billed"], false, "{r}");
                    assert_eq!(cost, 0, "an unbilled request has a cost: {r}");
                }
            }
            "IN_PROGRESS" => {
                held[acct] += r["hold_nano_usd"].as_i64().expect("hold");
                in_progress[acct] += 1;
            }
            "IN_QUEUE" => assert_eq!(r["hold_nano_usd"], 0, "a queued request holds: {r}"),
            other => panic!("unexpected status {other}: {r}"),
        }
    }
    for (i, u) in ACCOUNTS.iter().enumerate() {
        let v = account_view(&c, &base, u);
        assert_eq!(
            v["balance_nano_usd"].as_i64(),
            Some(purchased[i] - billed[i]),
            "{u}: balance != purchases {} - billed {}: {v}",
            purchased[i],
            billed[i]
        );
        assert_eq!(v["held_nano_usd"].as_i64(), Some(held[i]), "{u}: held: {v}");
        assert_eq!(
            v["in_progress"].as_u64(),
            Some(in_progress[i]),
            "{u}: in_progress: {v}"
        );
    }

    eprintln!(
        "crash test: killed after {killed_at} acknowledged completes; {} operations logged, \
         {} unacknowledged ({} had been committed before the crash); {} request/event ids; \
         balances {:?}",
        log.len(),
        unacked.len(),
        committed_before_crash,
        ids.len(),
        (0..ACCOUNTS.len())
            .map(|i| purchased[i] - billed[i])
            .collect::<Vec<_>>()
    );
    drop(server2);
}
