//! The real server's `/metrics`: the text parses with Prometheus' own Python client
//! (`prometheus_client.parser`), every family is typed, and the counters move with real
//! traffic: after N billed requests through HTTP the billed-units counter moved by exactly
//! their units and the billed nano-USD by exactly what they cost; each admission decision
//! provoked (admitted, insufficient credits, concurrency limit, locked) moved its own counter
//! by exactly how many times it was answered; the HTTP counters count calls by route template.
//!
//! The Python interpreter with `prometheus_client` is named by TOLLGATE_PYTHON, which
//! `scripts/test.sh` sets after installing the pinned version
//! (`scripts/requirements-test.txt`); without it the test fails.

use crate::common::{client, must, send, Server, SAMPLE_CATALOG};
use reqwest::blocking::Client;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::str::FromStr;

const OP_KEY: &str = "metrics-op:secret123";

/// Reads the metrics text with `prometheus_client.parser.text_string_to_metric_families` and
/// prints every family's type and every sample, values as Python's shortest text of them.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {"families": {}, "samples": []}
for family in text_string_to_metric_families(sys.stdin.read()):
    out["families"][family.name] = family.type
    for s in family.samples:
        out["samples"].append([s.name, s.labels, repr(float(s.value))])
print(json.dumps(out))
"#;

/// The Python interpreter named by TOLLGATE_PYTHON, checked to have `prometheus_client`.
fn python() -> String {
    tollgate_api::testing::python::with(
        "prometheus_client",
        "run the tests with `scripts/test.sh`, which installs prometheus_client (at the version \
         of scripts/requirements-test.txt) and sets TOLLGATE_PYTHON",
    )
}

/// One scrape, as Prometheus' parser reads it.
struct Scrape {
    families: BTreeMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>, Decimal)>,
}

impl Scrape {
    fn take(c: &Client, base: &str, python: &str) -> Scrape {
        let resp = c
            .get(format!("{base}/metrics"))
            .send()
            .expect("GET /metrics");
        assert_eq!(resp.status().as_u16(), 200);
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        let text = resp.text().expect("the metrics text");
        let mut child = Command::new(python)
            .args(["-c", PARSE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run python");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "Prometheus' parser refused the metrics:\n{}\n--- the text:\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let parsed: Value = serde_json::from_slice(&out.stdout).expect("the parser's JSON");
        let families = parsed["families"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        let samples = parsed["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let labels = s[1]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                let v = s[2].as_str().unwrap();
                let value = Decimal::from_str(v)
                    .or_else(|_| Decimal::from_scientific(v))
                    .unwrap_or_else(|e| panic!("{v}: {e}"));
                (s[0].as_str().unwrap().to_string(), labels, value)
            })
            .collect();
        Scrape { families, samples }
    }

    /// The sample's value, 0 when it is absent (a counter not yet moved).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Decimal {
        self.samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map_or(Decimal::ZERO, |s| s.2)
    }
}

fn post(c: &Client, base: &str, path: &str, key: &str, body: Value) -> crate::common::Reply {
    send(c.post(format!("{base}{path}")).json(&body), key).expect("an answer")
}

#[test]
fn metrics_parse_and_move_exactly_with_billed_traffic_and_admissions() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("metrics.db"),
        dir.path().join("server.log"),
        OP_KEY,
        Some(Path::new(SAMPLE_CATALOG)),
    );
    let base = server.base.clone();
    let c = client();
    let account = |name: &str, usd: Option<&str>| -> String {
        let r = post(
            &c,
            &base,
            "/v1/admin/accounts",
            OP_KEY,
            json!({ "username": name }),
        );
        must(Ok(r), 201, "create account");
        if let Some(usd) = usd {
            let r = post(
                &c,
                &base,
                &format!("/v1/admin/accounts/{name}/purchases"),
                OP_KEY,
                json!({ "purchase_id": format!("{name}-1"), "amount_usd": usd, "kind": "paid" }),
            );
            must(Ok(r), 201, "purchase");
        }
        let r = post(
            &c,
            &base,
            &format!("/v1/admin/accounts/{name}/keys"),
            OP_KEY,
            json!({ "scope": "API", "alias": "metrics" }),
        );
        must(Ok(r), 201, "create key").body["key"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // 25 USD paid: a concurrency limit of 4 in the sample catalog's table.
    let rich = account("rich", Some("25.00"));
    let poor = account("poor", Some("0.05"));
    let broke = account("broke", None);
    let submit = |caller: &str, endpoint: &str| -> (String, u16, Value) {
        let id = uuid::Uuid::new_v4().to_string();
        let r = post(
            &c,
            &base,
            "/v1/requests",
            OP_KEY,
            json!({ "request_id": id, "endpoint_id": endpoint, "caller_key": caller }),
        );
        (id, r.status, r.body)
    };
    let start = |id: &str| {
        post(
            &c,
            &base,
            &format!("/v1/requests/{id}/start"),
            OP_KEY,
            json!({}),
        )
    };

    let before = Scrape::take(&c, &base, &python);

    // Admission: five starts against a limit of four; the fifth is refused (429).
    let mut running = Vec::new();
    let (mut admitted, mut over_limit) = (0, 0);
    for _ in 0..5 {
        let (id, status, body) = submit(&rich, "fal-ai/flux/dev");
        assert_eq!(status, 201, "{body}");
        match start(&id).status {
            200 => {
                admitted += 1;
                running.push(id);
            }
            429 => over_limit += 1,
            other => panic!("start answered {other}"),
        }
    }
    assert_eq!((admitted, over_limit), (4, 1));
    // Not enough credits for flux/dev's hold (4 megapixels at 0.025 USD): 402, twice.
    let mut short = 0;
    for _ in 0..2 {
        let (id, status, _) = submit(&poor, "fal-ai/flux/dev");
        assert_eq!(status, 201);
        let r = start(&id);
        assert_eq!(
            (r.status, r.body["error"]["type"].as_str()),
            (402, Some("insufficient_credits")),
            "{}",
            r.body
        );
        short += 1;
    }
    // No credits at all: the account is locked, and its submit is refused (403).
    let (_, status, body) = submit(&broke, "fal-ai/flux/dev");
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (403, Some("account_locked")),
        "{body}"
    );

    // N billed requests, of two endpoints and two units: the four running, completed with
    // images of different sizes, and three more of a per-image endpoint.
    let mut units: BTreeMap<(String, String), Decimal> = BTreeMap::new();
    let mut nanos: BTreeMap<String, i64> = BTreeMap::new();
    let mut bill = |id: &str, output: Value| {
        let r = post(
            &c,
            &base,
            &format!("/v1/requests/{id}/complete"),
            OP_KEY,
            json!({ "status_code": 200, "output": output }),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["billed"], true, "{}", r.body);
        let endpoint = r.body["endpoint_id"].as_str().unwrap().to_string();
        let unit = r.body["unit"].as_str().unwrap().to_string();
        let n = Decimal::from_str(&r.body["output_units"].to_string()).unwrap();
        *units.entry((endpoint.clone(), unit)).or_default() += n;
        *nanos.entry(endpoint).or_default() += r.body["cost_estimate_nano_usd"].as_i64().unwrap();
    };
    for (i, id) in running.iter().enumerate() {
        let w = 512 + 256 * i as u64;
        bill(
            id,
            json!({ "images": [{ "width": w, "height": 768 }, { "width": 1024, "height": 1024 }] }),
        );
    }
    let mut billed = running.len();
    for _ in 0..3 {
        let (id, status, _) = submit(&rich, "fal-ai/nano-banana");
        assert_eq!(status, 201);
        assert_eq!(start(&id).status, 200);
        admitted += 1;
        bill(
            &id,
            json!({ "images": [{ "width": 1024, "height": 1024 }] }),
        );
        billed += 1;
    }
    assert_eq!(billed, 7);
    // A path no route matches.
    let r = c.get(format!("{base}/v1/no/such/path")).send().unwrap();
    assert_eq!(r.status().as_u16(), 404);

    let after = Scrape::take(&c, &base, &python);

    // Every family is typed, and the documented ones are there.
    for (name, kind) in &after.families {
        assert!(
            name.starts_with("tollgate_"),
            "a family of another program: {name}"
        );
        assert!(kind != "untyped" && kind != "unknown", "{name} is {kind}");
    }
    for (name, kind) in [
        ("tollgate_http_requests", "counter"),
        ("tollgate_http_request_duration_seconds", "histogram"),
        ("tollgate_admission", "counter"),
        ("tollgate_billed_units", "counter"),
        ("tollgate_billed_nano_usd", "counter"),
        ("tollgate_batch_size", "histogram"),
        ("tollgate_commit_duration_seconds", "histogram"),
        ("tollgate_sync_duration_seconds", "histogram"),
        ("tollgate_queue_depth", "gauge"),
        ("tollgate_hold_expiries", "counter"),
        ("tollgate_runner_events", "counter"),
        ("tollgate_runner_settlements", "counter"),
        ("tollgate_runner_events_pruned", "counter"),
        ("tollgate_store_conflicts", "counter"),
        ("tollgate_store_retries", "counter"),
    ] {
        assert_eq!(
            after.families.get(name).map(String::as_str),
            Some(kind),
            "{name}"
        );
    }

    // Billed: exactly the units and nano-USD the answers said.
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    assert_eq!(units.len(), 2, "{units:?}");
    for ((endpoint, unit), sum) in &units {
        let labels = [("endpoint", endpoint.as_str()), ("unit", unit.as_str())];
        assert_eq!(
            delta("tollgate_billed_units_total", &labels),
            *sum,
            "{endpoint} {unit}"
        );
    }
    for (endpoint, sum) in &nanos {
        assert_eq!(
            delta("tollgate_billed_nano_usd_total", &[("endpoint", endpoint)]),
            Decimal::from(*sum),
            "{endpoint}"
        );
    }
    // Admission: each outcome exactly as often as it was answered.
    for (outcome, n) in [
        ("admitted", admitted),
        ("concurrency_limit", over_limit),
        ("insufficient_credits", short),
        ("locked", 1),
    ] {
        assert_eq!(
            delta("tollgate_admission_total", &[("outcome", outcome)]),
            Decimal::from(n),
            "{outcome}"
        );
    }
    // HTTP: by route template, never by raw path.
    let start_route = "/v1/requests/{request_id}/start";
    for (status, n) in [("200", admitted), ("429", over_limit), ("402", short)] {
        assert_eq!(
            delta(
                "tollgate_http_requests_total",
                &[("route", start_route), ("status", status)]
            ),
            Decimal::from(n),
            "start {status}"
        );
    }
    assert_eq!(
        delta(
            "tollgate_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        Decimal::ONE
    );
    for (name, labels, _) in &after.samples {
        if let Some(route) = labels.get("route") {
            assert!(
                route == "unmatched"
                    || route.starts_with('/')
                        && route
                            .split('/')
                            .all(|seg| uuid::Uuid::parse_str(seg).is_err()),
                "{name}: a route label that is not a template: {route}"
            );
        }
    }
    assert!(
        delta(
            "tollgate_http_request_duration_seconds_count",
            &[("route", start_route)]
        ) >= Decimal::from(admitted + over_limit + short)
    );
    // The write path committed batches (the scrape before counted some already).
    assert!(delta("tollgate_batch_size_count", &[]) > Decimal::ZERO);
    assert!(delta("tollgate_commit_duration_seconds_count", &[]) > Decimal::ZERO);
    assert!(after.value("tollgate_sync_duration_seconds_count", &[]) > Decimal::ZERO);
    assert_eq!(after.value("tollgate_queue_depth", &[]), Decimal::ZERO);
    assert_eq!(
        after.value("tollgate_store_conflicts_total", &[]),
        Decimal::ZERO
    );
}
