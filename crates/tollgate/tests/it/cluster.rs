//! Several servers on one PostgreSQL database: three `tollgate serve` processes share a fresh
//! schema while client threads drive full request lifecycles (submit on one server, start on
//! the next, complete on the third), usage events and top-up purchases through all of them,
//! most of it on one "hot" account whose credits run out and are topped up again, so the
//! balance floor (402) is crossed many times. Completes, starts, usage events and purchases are
//! also sent twice at once, to two different servers. One server is SIGKILLed in the middle of
//! the load; whatever it did not answer is sent again, with the same ids, to another server.
//!
//! Then, through the survivors: every id was applied exactly once (at most one answer is not a
//! replay, every answer for an id is the same), every acknowledged cost is in the request's
//! record and in the account's billing events exactly once, the ledger reconciles, no balance is
//! negative, nothing is held or in progress, every balance is exactly its purchases minus
//! its billed costs, to the nano-USD, and every paid purchase, whichever server applied it, has
//! exactly one top-up invoice, the numbers unique and gapless across the servers.
//!
//! Runs when `TOLLGATE_TEST_POSTGRES_URL` names a PostgreSQL server (CI sets it); otherwise it
//! says so and passes. Timing only decides when the server is killed and how the calls
//! interleave; no assertion depends on it.

use crate::common::{billing_events, must, send, Reply, Server, SAMPLE_CATALOG};
use reqwest::blocking::Client;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_store::testing::{postgres_url, Backend, TestDb, POSTGRES_URL_VAR};

const OP_KEY: &str = "cluster-op:secret123";
const SERVERS: usize = 3;
/// The server that is SIGKILLed mid-load.
const VICTIM: usize = 1;
const THREADS: usize = 8;
/// Iterations per client thread (a fixed plan, see `plan`).
const ITERS: usize = 150;

const HOT: usize = 0;
const RICH_A: usize = 1;
const RICH_B: usize = 2;
const POOR: usize = 3;
const ACCOUNTS: [&str; 4] = [
    "cluster-hot",
    "cluster-rich-a",
    "cluster-rich-b",
    "cluster-poor",
];
/// Each account's first purchase: (amount_usd, nano-USD).
const INITIAL: [(&str, i64); 4] = [
    ("3.00", 3_000_000_000),
    ("10000.00", 10_000_000_000_000),
    ("10000.00", 10_000_000_000_000),
    ("1.50", 1_500_000_000),
];
/// Top-ups during the load: (amount_usd, nano-USD), for the hot and the poor account.
const TOP_UP_HOT: (&str, i64) = ("0.50", 500_000_000);
const TOP_UP_POOR: (&str, i64) = ("0.25", 250_000_000);

/// Sample-catalog prices of what the load sends, in nano-USD (no account has a discount).
/// fal-ai/flux/dev: 0.025 USD per megapixel, holds 4 megapixels.
const FLUX_HOLD: i64 = 100_000_000;
/// 1920x1080 is 2 megapixels; two 1024x768 images are 1 megapixel each.
const FLUX_2MP: i64 = 50_000_000;
/// fal-ai/kling-video/o1/image-to-video: 0.112 USD per video second, holds 10 seconds.
const KLING_HOLD: i64 = 1_120_000_000;
const KLING_5_5S: i64 = 616_000_000;
/// fal-ai/bria/background/remove: 0.018 USD per request.
const BRIA: i64 = 18_000_000;

fn post(c: &Client, base: &str, path: &str, body: &Value) -> Result<Reply, String> {
    send(c.post(format!("{base}{path}")).json(body), OP_KEY)
}

fn put(c: &Client, base: &str, path: &str, body: &Value) -> Result<Reply, String> {
    send(c.put(format!("{base}{path}")).json(body), OP_KEY)
}

fn get(c: &Client, base: &str, path: &str) -> Result<Reply, String> {
    send(c.get(format!("{base}{path}")), OP_KEY)
}

/// A client with a generous timeout: a debug build of three servers and the database share
/// two cores, and a call that times out on a live server fails the test.
fn http_client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Submit,
    Start,
    Complete,
    Events,
    Purchase,
}

impl Kind {
    /// The answers that are right whatever the timing.
    fn allowed(self, status: u16) -> bool {
        match self {
            Kind::Submit => status == 201 || status == 200,
            Kind::Start => status == 200 || status == 402,
            Kind::Complete | Kind::Events => status == 200,
            Kind::Purchase => status == 201,
        }
    }
}

/// One step of a client thread's fixed plan.
#[derive(Debug, Clone, Copy)]
enum Step {
    Lifecycle {
        account: usize,
        variant: usize,
        dup_start: bool,
        dup_complete: bool,
    },
    Events {
        n: usize,
        dup: bool,
    },
    Purchase {
        account: usize,
        dup: bool,
    },
}

/// What thread `t` does at iteration `i`: 60% lifecycles on the hot account, the rest spread
/// over the others, usage events on the rich accounts only (an event is billed in full, so it
/// could take a short account below zero), top-ups for the short accounts.
fn plan(t: usize, i: usize) -> Step {
    let r = t + i;
    match i % 10 {
        0..=3 | 5 | 8 => Step::Lifecycle {
            account: HOT,
            variant: r % 4,
            dup_start: r % 5 == 1,
            dup_complete: r.is_multiple_of(3),
        },
        4 => Step::Lifecycle {
            account: if t.is_multiple_of(2) { RICH_A } else { RICH_B },
            variant: r % 4,
            dup_start: false,
            dup_complete: r % 3 == 1,
        },
        6 => Step::Lifecycle {
            account: POOR,
            variant: r % 4,
            dup_start: r.is_multiple_of(2),
            dup_complete: r % 3 == 2,
        },
        7 => Step::Events {
            n: 1 + r % 3,
            dup: r.is_multiple_of(2),
        },
        _ => Step::Purchase {
            account: if t % 4 == 3 { POOR } else { HOT },
            dup: r.is_multiple_of(3),
        },
    }
}

/// A lifecycle variant: the endpoint, the complete body, the hold and what it bills.
fn variant(v: usize) -> (&'static str, Value, i64, Option<i64>) {
    match v % 4 {
        0 => (
            "fal-ai/flux/dev",
            json!({"status_code": 200, "output": {"images": [{"width": 1920, "height": 1080}]}}),
            FLUX_HOLD,
            Some(FLUX_2MP),
        ),
        1 => (
            "fal-ai/flux/dev",
            json!({"status_code": 500}),
            FLUX_HOLD,
            None,
        ),
        2 => (
            "fal-ai/kling-video/o1/image-to-video",
            json!({"status_code": 200, "output": {"video_seconds": "5.5"}, "inference_seconds": "41.2"}),
            KLING_HOLD,
            Some(KLING_5_5S),
        ),
        _ => (
            "fal-ai/flux/dev",
            json!({"status_code": 200, "output": {"images": [
                {"width": 1024, "height": 768}, {"width": 1024, "height": 768}]}}),
            FLUX_HOLD,
            Some(FLUX_2MP),
        ),
    }
}

/// What a usage event bills (`None`: free).
fn event_cost(ev: &Value) -> Option<i64> {
    if ev["status_code"].as_u64().expect("status_code") >= 500 {
        None
    } else if ev["endpoint_id"] == "fal-ai/flux/dev" {
        Some(FLUX_2MP)
    } else {
        Some(BRIA)
    }
}

fn top_up(account: usize) -> (&'static str, i64) {
    if account == POOR {
        TOP_UP_POOR
    } else {
        TOP_UP_HOT
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// What the client threads share.
struct Cluster {
    bases: Vec<String>,
    /// Each account's API key (the caller key of its requests).
    keys: Vec<String>,
    /// Set just before the victim is killed: from then on, a call the victim does not answer
    /// is sent again to the next server. Before, no answer is a failure.
    kill_issued: AtomicBool,
    /// Set once the victim is dead.
    killed: AtomicBool,
    /// Iterations done, over all threads.
    progress: AtomicUsize,
    /// Threads waiting for the kill, or finished.
    parked: AtomicUsize,
    /// Calls sent to the victim and not yet answered.
    at_victim: AtomicUsize,
}

/// One call's answer, from `server`, after `lost` sends to the killed server that got no
/// answer (`cut` of them on a connection that broke, mostly calls under way when it died; the
/// others were refused).
struct Sent {
    server: usize,
    reply: Reply,
    lost: usize,
    cut: usize,
}

impl Cluster {
    /// Posts to server `first`; while the server reached is the killed one and gives no
    /// answer, posts the same body to the next server. A 5xx, or no answer from a server that
    /// was not killed, is an error.
    fn post(&self, c: &Client, first: usize, path: &str, body: &Value) -> Result<Sent, String> {
        let (mut lost, mut cut) = (0, 0);
        for k in 0..SERVERS {
            let s = (first + k) % SERVERS;
            if s == VICTIM {
                self.at_victim.fetch_add(1, Ordering::SeqCst);
            }
            let answer = post(c, &self.bases[s], path, body);
            if s == VICTIM {
                self.at_victim.fetch_sub(1, Ordering::SeqCst);
            }
            match answer {
                Ok(reply) if reply.status >= 500 => {
                    return Err(format!(
                        "server {s} answered POST {path} {body} with {}: {}",
                        reply.status, reply.body
                    ))
                }
                Ok(reply) => {
                    return Ok(Sent {
                        server: s,
                        reply,
                        lost,
                        cut,
                    })
                }
                Err(e) if s == VICTIM && self.kill_issued.load(Ordering::SeqCst) => {
                    lost += 1;
                    if !e.contains("Connection refused") {
                        cut += 1;
                    }
                }
                Err(e) => {
                    return Err(format!(
                        "server {s} (not killed) gave no answer to POST {path} {body}: {e}"
                    ))
                }
            }
        }
        Err(format!("no server answered POST {path} {body}"))
    }

    /// Posts the same body to each of `servers` at once.
    fn post_all(
        &self,
        c: &Client,
        servers: &[usize],
        path: &str,
        body: &Value,
    ) -> Vec<Result<Sent, String>> {
        if let [only] = servers {
            return vec![self.post(c, *only, path, body)];
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = servers
                .iter()
                .map(|&s| scope.spawn(move || self.post(c, s, path, body)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a sending thread"))
                .collect()
        })
    }
}

/// One operation of the load: what was sent, and every answer received for it (two when it
/// was sent twice at once).
#[derive(Debug, Clone)]
struct OpRecord {
    kind: Kind,
    account: usize,
    /// The request id (submit, start, complete) or purchase id; for events, the first event id.
    id: String,
    /// The lifecycle variant (see `variant`).
    variant: usize,
    path: String,
    req: Value,
    answers: Vec<(usize, Reply)>,
    /// Sends that reached the killed server and got no answer.
    lost: usize,
    /// Of those, sends whose connection broke rather than being refused.
    cut: usize,
}

#[derive(Default)]
struct WorkerOut {
    ops: Vec<OpRecord>,
    /// Answers that are wrong whatever the timing, and calls no live server answered.
    unexpected: Vec<String>,
}

impl WorkerOut {
    /// Sends one operation to `servers` (at once when more than one) and logs it. `None` (the
    /// worker stops) when an answer is missing or not one of the kind's allowed answers.
    #[allow(clippy::too_many_arguments)]
    fn op(
        &mut self,
        cl: &Cluster,
        c: &Client,
        kind: Kind,
        account: usize,
        id: &str,
        variant: usize,
        path: String,
        req: Value,
        servers: &[usize],
    ) -> Option<&OpRecord> {
        let mut rec = OpRecord {
            kind,
            account,
            id: id.to_string(),
            variant,
            path,
            req,
            answers: Vec::new(),
            lost: 0,
            cut: 0,
        };
        let mut ok = true;
        for r in cl.post_all(c, servers, &rec.path, &rec.req) {
            match r {
                Ok(sent) => {
                    rec.lost += sent.lost;
                    rec.cut += sent.cut;
                    if !kind.allowed(sent.reply.status) {
                        ok = false;
                        self.unexpected.push(format!(
                            "{kind:?} {} {} on server {}: answered {} (replayed {}) {}",
                            rec.path,
                            rec.req,
                            sent.server,
                            sent.reply.status,
                            sent.reply.replayed,
                            sent.reply.body
                        ));
                    }
                    rec.answers.push((sent.server, sent.reply));
                }
                Err(e) => {
                    ok = false;
                    self.unexpected.push(format!("{kind:?}: {e}"));
                }
            }
        }
        self.ops.push(rec);
        if ok {
            self.ops.last()
        } else {
            None
        }
    }

    /// Submit on one server, start on the next, complete on the third (and, when duplicated,
    /// start or complete on two servers at once). Returns whether the worker goes on.
    #[allow(clippy::too_many_arguments)]
    fn lifecycle(
        &mut self,
        cl: &Cluster,
        c: &Client,
        s0: usize,
        account: usize,
        v: usize,
        dup_start: bool,
        dup_complete: bool,
    ) -> bool {
        let id = uuid::Uuid::new_v4().to_string();
        let (endpoint, done, _, _) = variant(v);
        let submit = json!({
            "request_id": id,
            "endpoint_id": endpoint,
            "caller_key": cl.keys[account],
        });
        let next = (s0 + 1) % SERVERS;
        let third = (s0 + 2) % SERVERS;
        if self
            .op(
                cl,
                c,
                Kind::Submit,
                account,
                &id,
                v,
                "/v1/requests".into(),
                submit,
                &[s0],
            )
            .is_none()
        {
            return false;
        }
        let starts: &[usize] = if dup_start { &[next, third] } else { &[next] };
        let started = match self.op(
            cl,
            c,
            Kind::Start,
            account,
            &id,
            v,
            format!("/v1/requests/{id}/start"),
            json!({}),
            starts,
        ) {
            None => return false,
            Some(rec) => rec.answers.iter().any(|(_, r)| r.status == 200),
        };
        if !started {
            // Refused for want of credit: the request stays queued, holding nothing.
            return true;
        }
        let completes: &[usize] = if dup_complete { &[third, s0] } else { &[third] };
        self.op(
            cl,
            c,
            Kind::Complete,
            account,
            &id,
            v,
            format!("/v1/requests/{id}/complete"),
            done,
            completes,
        )
        .is_some()
    }
}

fn worker(t: usize, cl: Arc<Cluster>) -> WorkerOut {
    let c = http_client();
    let mut out = WorkerOut::default();
    for i in 0..ITERS {
        if i == ITERS * 2 / 3 {
            // The last third of every thread's plan runs after the kill, so calls are sent to
            // the dead server (and fail over) whenever the kill happens.
            cl.parked.fetch_add(1, Ordering::SeqCst);
            let waited = Instant::now();
            while !cl.killed.load(Ordering::SeqCst) {
                if waited.elapsed() > Duration::from_secs(120) {
                    out.unexpected
                        .push(format!("thread {t}: the server was never killed"));
                    return out;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            cl.parked.fetch_sub(1, Ordering::SeqCst);
        }
        let r = t + i;
        let s0 = r % SERVERS;
        let go_on = match plan(t, i) {
            Step::Lifecycle {
                account,
                variant,
                dup_start,
                dup_complete,
            } => out.lifecycle(&cl, &c, s0, account, variant, dup_start, dup_complete),
            Step::Events { n, dup } => {
                let events: Vec<Value> = (0..n)
                    .map(|k| {
                        let (endpoint, output) = if (r + k).is_multiple_of(2) {
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
                            "username": ACCOUNTS[if (t + k).is_multiple_of(2) { RICH_A } else { RICH_B }],
                            "timestamp": now_rfc3339(),
                            "status_code": if (r + k) % 5 == 2 { 500 } else { 200 },
                            "output": output,
                            "inference_seconds": "2.5",
                        })
                    })
                    .collect();
                let id = events[0]["event_id"].as_str().expect("id").to_string();
                let servers: &[usize] = if dup {
                    &[s0, (s0 + 1) % SERVERS]
                } else {
                    &[s0]
                };
                // The events name their own accounts; the record's account is unused.
                out.op(
                    &cl,
                    &c,
                    Kind::Events,
                    RICH_A,
                    &id,
                    0,
                    "/v1/usage-events".into(),
                    json!({ "events": events }),
                    servers,
                )
                .is_some()
            }
            Step::Purchase { account, dup } => {
                let id = format!("top-up-{t}-{i}");
                let servers: &[usize] = if dup {
                    &[(s0 + 2) % SERVERS, (s0 + 1) % SERVERS]
                } else {
                    &[(s0 + 2) % SERVERS]
                };
                out.op(
                    &cl,
                    &c,
                    Kind::Purchase,
                    account,
                    &id,
                    0,
                    format!("/v1/admin/accounts/{}/purchases", ACCOUNTS[account]),
                    json!({"purchase_id": id, "amount_usd": top_up(account).0}),
                    servers,
                )
                .is_some()
            }
        };
        cl.progress.fetch_add(1, Ordering::SeqCst);
        if !go_on {
            break;
        }
    }
    cl.parked.fetch_add(1, Ordering::SeqCst);
    out
}

fn without(v: &Value, fields: &[&str]) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        for f in fields {
            o.remove(*f);
        }
    }
    v
}

/// The first problems, one a line, and how many more there are.
fn listing(problems: &[String]) -> String {
    const SHOWN: usize = 25;
    let mut out = problems
        .iter()
        .take(SHOWN)
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n");
    if problems.len() > SHOWN {
        out.push_str(&format!("\n  ... and {} more", problems.len() - SHOWN));
    }
    out
}

/// The last `n` lines of a server's stderr.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What one request or event ended as, according to its acknowledged answers.
#[derive(Debug)]
enum Final {
    /// Refused at start (402): queued, holding nothing, never billed.
    Queued,
    /// Completed or failed: the complete call's answer (for an event: its result, without
    /// `event_id` and `duplicate`).
    Done(Value),
}

/// Everything the acknowledged answers say, and what is wrong with them.
#[derive(Default)]
struct Ledger {
    purchased: [i64; 4],
    billed: [i64; 4],
    /// Per account: request or event id -> final state.
    finals: [BTreeMap<String, Final>; 4],
    /// Per account: billed request or event id -> cost.
    billed_ids: [BTreeMap<String, i64>; 4],
    refusals: [usize; 4],
    lost: usize,
    cut: usize,
    /// Ids whose every answer is a replay: applied by the killed server, never answered.
    applied_unanswered: usize,
    replays: usize,
    problems: Vec<String>,
}

impl Ledger {
    fn problem(&mut self, p: String) {
        self.problems.push(p);
    }

    /// Answers to one id: at most one is not a replay (exactly one when none was lost), and all
    /// are equal apart from the replay marker.
    fn once(&mut self, what: &str, fresh: usize, total: usize, lost: usize) {
        self.replays += total - fresh;
        if lost > 0 && fresh == 0 {
            self.applied_unanswered += 1;
        }
        if fresh > 1 {
            self.problem(format!(
                "{what}: applied {fresh} times (answers not marked as replays)"
            ));
        }
        if lost == 0 && fresh != 1 {
            self.problem(format!(
                "{what}: nothing was lost, yet {fresh} of {total} answers are not replays"
            ));
        }
    }

    fn check(&mut self, op: &OpRecord) {
        let what = format!(
            "{:?} {} {} (answers {:?}, lost {})",
            op.kind,
            op.path,
            op.req,
            op.answers
                .iter()
                .map(|(s, r)| format!(
                    "server {s}: {} replayed={} {}",
                    r.status, r.replayed, r.body
                ))
                .collect::<Vec<_>>(),
            op.lost
        );
        self.lost += op.lost;
        self.cut += op.cut;
        let replies: Vec<&Reply> = op.answers.iter().map(|(_, r)| r).collect();
        let (_, _, hold, cost) = variant(op.variant);
        match op.kind {
            Kind::Submit => {
                let fresh = replies.iter().filter(|r| r.status == 201).count();
                self.once(&what, fresh, replies.len(), op.lost);
                for r in &replies {
                    if r.body != json!({"request_id": op.id, "status": "IN_QUEUE"}) {
                        self.problem(format!("{what}: wrong body"));
                    }
                }
            }
            Kind::Start => {
                let mut started = false;
                for r in &replies {
                    if r.status == 402 {
                        self.refusals[op.account] += 1;
                        if r.body["error"]["type"] != "insufficient_credits" {
                            self.problem(format!("{what}: a 402 that is not insufficient_credits"));
                        }
                        if op.account != HOT && op.account != POOR {
                            self.problem(format!("{what}: a rich account was refused"));
                        }
                    } else {
                        started = true;
                        if r.body["status"] != "IN_PROGRESS"
                            || r.body["request_id"] != op.id.as_str()
                            || r.body["hold_nano_usd"] != hold
                        {
                            self.problem(format!("{what}: expected a hold of {hold}"));
                        }
                    }
                }
                if !started {
                    self.finals[op.account].insert(op.id.clone(), Final::Queued);
                }
            }
            Kind::Complete => {
                let fresh = replies.iter().filter(|r| !r.replayed).count();
                self.once(&what, fresh, replies.len(), op.lost);
                let first = &replies[0].body;
                if replies.iter().any(|r| r.body != *first) {
                    self.problem(format!("{what}: the answers differ"));
                }
                let code = op.req["status_code"].as_u64().expect("status_code");
                let expected_status = if code < 400 { "COMPLETED" } else { "FAILED" };
                let billed = first["cost_estimate_nano_usd"].as_i64().unwrap_or(-1);
                if first["request_id"] != op.id.as_str()
                    || first["status"] != expected_status
                    || first["status_code"] != code
                    || first["billed"] != cost.is_some()
                    || billed != cost.unwrap_or(0)
                    || billed > hold
                {
                    self.problem(format!(
                        "{what}: expected {expected_status}, billed {cost:?} (within the hold {hold})"
                    ));
                }
                if first["balance_nano_usd"].as_i64().is_none_or(|b| b < 0) {
                    self.problem(format!("{what}: the balance went below zero"));
                }
                if let Some(c) = cost {
                    self.billed[op.account] += c;
                    self.billed_ids[op.account].insert(op.id.clone(), c);
                }
                self.finals[op.account].insert(op.id.clone(), Final::Done(first.clone()));
            }
            Kind::Events => {
                let events = op.req["events"].as_array().expect("events").clone();
                for (k, ev) in events.iter().enumerate() {
                    let id = ev["event_id"].as_str().expect("event_id").to_string();
                    let acct = ACCOUNTS
                        .iter()
                        .position(|a| ev["username"] == *a)
                        .expect("known account");
                    let results: Vec<&Value> = replies
                        .iter()
                        .filter_map(|r| r.body["results"].as_array().and_then(|a| a.get(k)))
                        .collect();
                    if results.len() != replies.len()
                        || replies.iter().any(|r| {
                            r.body["results"].as_array().map(Vec::len) != Some(events.len())
                        })
                    {
                        self.problem(format!("{what}: wrong number of results"));
                        continue;
                    }
                    let fresh = results.iter().filter(|r| r["duplicate"] == false).count();
                    self.once(
                        &format!("{what}: event {id}"),
                        fresh,
                        results.len(),
                        op.lost,
                    );
                    let first = without(results[0], &["duplicate"]);
                    if results
                        .iter()
                        .any(|r| without(r, &["duplicate"]) != first || r.get("error").is_some())
                    {
                        self.problem(format!("{what}: event {id}: the results differ or fail"));
                    }
                    let cost = event_cost(ev);
                    let billed = first["cost_estimate_nano_usd"].as_i64().unwrap_or(-1);
                    if first["event_id"] != id.as_str()
                        || first["billed"] != cost.is_some()
                        || billed != cost.unwrap_or(0)
                    {
                        self.problem(format!("{what}: event {id}: expected to bill {cost:?}"));
                    }
                    if let Some(c) = cost {
                        self.billed[acct] += c;
                        self.billed_ids[acct].insert(id.clone(), c);
                    }
                    self.finals[acct].insert(id, Final::Done(without(&first, &["event_id"])));
                }
            }
            Kind::Purchase => {
                let fresh = replies.iter().filter(|r| !r.replayed).count();
                self.once(&what, fresh, replies.len(), op.lost);
                let first = &replies[0].body;
                if replies.iter().any(|r| r.body != *first) {
                    self.problem(format!("{what}: the answers differ"));
                }
                let amount = top_up(op.account).1;
                if first["amount_nano_usd"] != amount
                    || first["balance_nano_usd"].as_i64().is_none_or(|b| b < 0)
                {
                    self.problem(format!("{what}: expected {amount} nano-USD"));
                }
                self.purchased[op.account] += amount;
            }
        }
    }
}

/// Every invoice, as the operator lists them from `base`, newest first (there are only
/// top-up invoices: no account is invoice-billed).
fn top_up_invoices(c: &Client, base: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/v1/admin/invoices?limit=1000".to_string();
        if let Some(cur) = &cursor {
            path.push_str(&format!("&cursor={cur}"));
        }
        let page = must(get(c, base, &path), 200, "invoices").body;
        for i in page["invoices"].as_array().expect("invoices") {
            assert_eq!(i["kind"], "top_up", "{i}");
            out.push(i.clone());
        }
        match page["next_cursor"].as_str() {
            Some(cur) if page["has_more"] == true => cursor = Some(cur.to_string()),
            _ => return out,
        }
    }
}

#[test]
fn three_servers_on_one_postgres_database_bill_each_request_once_through_a_sigkill() {
    let Some(url) = postgres_url() else {
        eprintln!(
            "skipped: the multi-process PostgreSQL tests need {POSTGRES_URL_VAR} \
             (e.g. postgres://postgres@127.0.0.1:5432/test)"
        );
        return;
    };
    let began = Instant::now();
    let logs = tempfile::tempdir().expect("temp dir");
    let db = TestDb::new(&Backend::Postgres(url));
    let c = http_client();
    let window_start = (chrono::Utc::now() - chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);

    // The plan is fixed: the short accounts are asked for more than they could ever pay, so
    // refusals (402) are certain whatever the interleaving.
    let mut asked = [0i64; 4];
    let mut can_pay = INITIAL.map(|(_, n)| n);
    for t in 0..THREADS {
        for i in 0..ITERS {
            match plan(t, i) {
                Step::Lifecycle {
                    account,
                    variant: v,
                    ..
                } => asked[account] += variant(v).3.unwrap_or(0),
                Step::Purchase { account, .. } => can_pay[account] += top_up(account).1,
                Step::Events { .. } => {}
            }
        }
    }
    for a in [HOT, POOR] {
        assert!(
            asked[a] > can_pay[a],
            "the plan must overdraw {}: asks {} for {}",
            ACCOUNTS[a],
            asked[a],
            can_pay[a]
        );
    }

    // Started one after another: each applies the catalog at start.
    let mut servers: Vec<Server> = (0..SERVERS)
        .map(|n| {
            Server::start(
                Path::new(db.target()),
                logs.path().join(format!("server-{n}.log")),
                OP_KEY,
                Some(Path::new(SAMPLE_CATALOG)),
            )
        })
        .collect();
    let bases: Vec<String> = servers.iter().map(|s| s.base.clone()).collect();
    let stderr_tails = |servers: &[Server]| -> String {
        servers
            .iter()
            .enumerate()
            .map(|(n, s)| {
                format!(
                    "--- server {n} stderr (tail) ---\n{}",
                    tail(&s.stderr_text(), 40)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };

    // ---- setup, through server 0 -------------------------------------------------------
    let base = &bases[0];
    let mut keys = Vec::new();
    let mut admin_keys = Vec::new();
    for (a, u) in ACCOUNTS.iter().enumerate() {
        must(
            post(&c, base, "/v1/admin/accounts", &json!({"username": u})),
            201,
            "create account",
        );
        must(
            post(
                &c,
                base,
                &format!("/v1/admin/accounts/{u}/purchases"),
                &json!({"purchase_id": format!("init-{u}"), "amount_usd": INITIAL[a].0}),
            ),
            201,
            "initial purchase",
        );
        must(
            put(
                &c,
                base,
                &format!("/v1/admin/accounts/{u}/pricing"),
                &json!({"concurrency_limit": 1000}),
            ),
            200,
            "concurrency override",
        );
        for (scope, into) in [("API", &mut keys), ("ADMIN", &mut admin_keys)] {
            let key = must(
                post(
                    &c,
                    base,
                    &format!("/v1/admin/accounts/{u}/keys"),
                    &json!({"scope": scope, "alias": "cluster test"}),
                ),
                201,
                "create key",
            );
            into.push(key.body["key"].as_str().expect("key").to_string());
        }
    }

    // ---- the load, with a SIGKILL in the middle ----------------------------------------
    let cluster = Arc::new(Cluster {
        bases: bases.clone(),
        keys,
        kill_issued: AtomicBool::new(false),
        killed: AtomicBool::new(false),
        progress: AtomicUsize::new(0),
        parked: AtomicUsize::new(0),
        at_victim: AtomicUsize::new(0),
    });
    let load_began = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let cl = cluster.clone();
            std::thread::spawn(move || worker(t, cl))
        })
        .collect();
    // Once a third of the plan is done, kill the victim while it is busy with several calls
    // (or after a little more waiting, or once every thread waits for the kill).
    let mut ready: Option<Instant> = None;
    while cluster.parked.load(Ordering::SeqCst) < THREADS {
        if cluster.progress.load(Ordering::SeqCst) >= THREADS * ITERS / 3 {
            let since = *ready.get_or_insert_with(Instant::now);
            if cluster.at_victim.load(Ordering::SeqCst) >= 3
                || since.elapsed() > Duration::from_secs(2)
            {
                break;
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let killed_at = cluster.progress.load(Ordering::SeqCst);
    cluster.kill_issued.store(true, Ordering::SeqCst);
    servers[VICTIM].kill();
    cluster.killed.store(true, Ordering::SeqCst);
    let mut ops: Vec<OpRecord> = Vec::new();
    let mut unexpected: Vec<String> = Vec::new();
    for h in handles {
        let out = h.join().expect("client thread");
        ops.extend(out.ops);
        unexpected.extend(out.unexpected);
    }
    let load_took = load_began.elapsed();
    assert!(
        unexpected.is_empty(),
        "wrong or missing answers during the load ({} of them):\n{}\n{}",
        unexpected.len(),
        listing(&unexpected),
        stderr_tails(&servers)
    );

    // ---- what the acknowledged answers say ---------------------------------------------
    let mut ledger = Ledger::default();
    for op in &ops {
        ledger.check(op);
    }
    for (purchased, (_, initial)) in ledger.purchased.iter_mut().zip(INITIAL) {
        *purchased += initial;
    }
    assert!(
        ledger.problems.is_empty(),
        "acknowledged answers are inconsistent ({} problems):\n{}\n{}",
        ledger.problems.len(),
        listing(&ledger.problems),
        stderr_tails(&servers)
    );
    // Certain by construction: the plan overdraws the short accounts, the last third of it
    // runs after the kill and sends calls to the dead server, and a duplicated call gets at
    // most one original answer.
    assert!(ledger.refusals[HOT] > 0 && ledger.refusals[POOR] > 0);
    assert!(ledger.lost > 0, "no call failed over");
    assert!(ledger.replays > 0, "no duplicate was answered as a replay");

    // ---- the database, through the survivors -------------------------------------------
    let survivors: Vec<usize> = (0..SERVERS).filter(|&s| s != VICTIM).collect();
    let window_end = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut problems: Vec<String> = Vec::new();
    for &s in &survivors {
        let rec = must(
            get(&c, &bases[s], "/v1/admin/reconciliation"),
            200,
            "reconciliation",
        )
        .body;
        if rec["clean"] != true {
            problems.push(format!("server {s}: reconciliation is not clean: {rec}"));
        }
    }
    let mut n = 0usize;
    for (a, u) in ACCOUNTS.iter().enumerate() {
        let views: Vec<Value> = survivors
            .iter()
            .map(|&s| {
                must(
                    get(&c, &bases[s], &format!("/v1/admin/accounts/{u}")),
                    200,
                    "GET account",
                )
                .body
            })
            .collect();
        let v = &views[0];
        for field in [
            "balance_nano_usd",
            "held_nano_usd",
            "in_progress",
            "credits",
        ] {
            if views.iter().any(|w| w[field] != v[field]) {
                problems.push(format!("{u}: the survivors disagree on {field}: {views:?}"));
            }
        }
        let expected = ledger.purchased[a] - ledger.billed[a];
        if v["balance_nano_usd"].as_i64() != Some(expected) {
            problems.push(format!(
                "{u}: balance != purchases {} - billed {} = {expected}: {v}",
                ledger.purchased[a], ledger.billed[a]
            ));
        }
        if v["balance_nano_usd"].as_i64().is_none_or(|b| b < 0) {
            problems.push(format!("{u}: negative balance: {v}"));
        }
        if v["held_nano_usd"] != 0 || v["in_progress"] != 0 {
            problems.push(format!("{u}: still holds or runs requests: {v}"));
        }

        // Each request and event, as stored, matches its acknowledged answer.
        for (id, fin) in &ledger.finals[a] {
            let base = &bases[survivors[n % survivors.len()]];
            n += 1;
            let now = must(get(&c, base, &format!("/v1/requests/{id}")), 200, "GET").body;
            let ok = match fin {
                Final::Queued => {
                    now["status"] == "IN_QUEUE"
                        && now["hold_nano_usd"] == 0
                        && now.get("billing").is_none()
                }
                Final::Done(ack) => now["billing"] == *ack,
            };
            if !ok || now["username"] != *u {
                problems.push(format!(
                    "{u}: request {id} is {now}, acknowledged as {fin:?}"
                ));
            }
        }

        // Each billed cost appears exactly once in the account's billing events.
        let events = billing_events(
            &c,
            &bases[survivors[a % 2]],
            &admin_keys[a],
            &window_start,
            &window_end,
        );
        let mut seen: BTreeMap<String, i64> = BTreeMap::new();
        for e in &events {
            let id = e["request_id"].as_str().expect("request_id").to_string();
            let cost = e["cost_estimate_nano_usd"].as_i64().expect("cost");
            if seen.insert(id.clone(), cost).is_some() {
                problems.push(format!("{u}: {id} appears twice in the billing events"));
            }
        }
        if seen != ledger.billed_ids[a] {
            let want: BTreeSet<_> = ledger.billed_ids[a].iter().collect();
            let got: BTreeSet<_> = seen.iter().collect();
            problems.push(format!(
                "{u}: billing events differ from the acknowledged costs: missing {:?}, extra {:?}",
                want.difference(&got).collect::<Vec<_>>(),
                got.difference(&want).collect::<Vec<_>>()
            ));
        }
    }
    // Every paid purchase, whichever server applied it, has exactly one top-up invoice, and
    // the numbers the servers gave them are unique and gapless in issue order.
    let mut purchases: BTreeSet<String> = ACCOUNTS.iter().map(|u| format!("init-{u}")).collect();
    let mut applied_by = BTreeSet::new();
    for op in ops.iter().filter(|op| op.kind == Kind::Purchase) {
        purchases.insert(op.id.clone());
        applied_by.extend(
            op.answers
                .iter()
                .filter(|(_, r)| !r.replayed)
                .map(|(s, _)| *s),
        );
    }
    if applied_by.len() < 2 {
        problems.push(format!(
            "the purchases were applied by servers {applied_by:?} only"
        ));
    }
    let invoices = top_up_invoices(&c, &bases[survivors[1]]);
    let mut numbers = BTreeMap::<String, Vec<u64>>::new();
    let mut invoiced = BTreeSet::new();
    for i in &invoices {
        let number = i["number"].as_str().expect("number");
        let mut parts = number.rsplitn(2, '-');
        let seq = parts.next().and_then(|n| n.parse::<u64>().ok());
        let (Some(seq), Some(prefix)) = (seq, parts.next()) else {
            problems.push(format!(
                "invoice number {number} is not <prefix>-<year>-<seq>"
            ));
            continue;
        };
        numbers.entry(prefix.to_string()).or_default().push(seq);
        let purchase = i["purchase_id"].as_str().expect("purchase_id").to_string();
        if !invoiced.insert(purchase.clone()) {
            problems.push(format!("purchase {purchase} has two top-up invoices"));
        }
    }
    if invoiced != purchases {
        problems.push(format!(
            "top-up invoices ({}) do not match the paid purchases ({}): missing {:?}, extra {:?}",
            invoiced.len(),
            purchases.len(),
            purchases.difference(&invoiced).collect::<Vec<_>>(),
            invoiced.difference(&purchases).collect::<Vec<_>>()
        ));
    }
    for (prefix, mut seqs) in numbers {
        // Listed newest first: issue order is the reverse.
        seqs.reverse();
        if seqs != (1..=seqs.len() as u64).collect::<Vec<_>>() {
            problems.push(format!("{prefix}: the numbers are not gapless: {seqs:?}"));
        }
    }

    // No server logged an error or panicked (a batch that lost a race is retried quietly).
    for (n, s) in servers.iter().enumerate() {
        for line in s.stderr_text().lines() {
            if line.contains("ERROR") || line.contains("panicked") {
                problems.push(format!("server {n} logged: {line}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the database disagrees with the acknowledged answers ({} problems):\n{}\n{}",
        problems.len(),
        listing(&problems),
        stderr_tails(&servers)
    );

    eprintln!(
        "cluster test: {} servers on one PostgreSQL schema, {THREADS} client threads, server \
         {VICTIM} killed after {killed_at} of {} iterations; {} operations in {load_took:.1?}, \
         {} calls failed over ({} of them cut by the kill; {} ids had been applied but not \
         answered), {} replays, refusals (402) per account {:?}, billed {:?}, \
         balances {:?}, {} top-up invoices numbered without gaps (purchases applied by \
         servers {applied_by:?}); {:.1?} in all",
        SERVERS,
        THREADS * ITERS,
        ops.len(),
        ledger.lost,
        ledger.cut,
        ledger.applied_unanswered,
        ledger.replays,
        ledger.refusals,
        ledger.billed,
        (0..ACCOUNTS.len())
            .map(|a| ledger.purchased[a] - ledger.billed[a])
            .collect::<Vec<_>>(),
        invoices.len(),
        began.elapsed()
    );
    drop(servers);
}
