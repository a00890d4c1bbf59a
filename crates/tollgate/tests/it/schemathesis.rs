//! A property-based run of the whole HTTP API against the OpenAPI document it serves: the real
//! binary as `tollgate serve --demo`, and schemathesis generating requests for every operation
//! of `GET /v1/openapi.json` (its examples, boundary values, random valid and invalid data,
//! and sequences that feed one response's ids into the next call), each sent with the key of
//! the scope its security requirement names (`schemathesis_hooks.py`).
//!
//! Every answer must be no server error, have a status code the operation documents, and the
//! content type, body schema and headers documented for that status. A failure prints
//! schemathesis's report: each failing case with a `curl` that reproduces it (the
//! `Authorization` header shows as `[Filtered]`: it is the key of the operation's scope). And
//! every operation that takes a key must have been answered at least once with something other
//! than 401/403, so a run whose keys were refused cannot pass (the hooks log each call).
//!
//! The demo runs with a payment provider: a stand-in of Stripe's API in the test, so the
//! payment calls are exercised (top-ups are created there; the webhook refuses what
//! schemathesis signs, which is nothing).
//!
//! schemathesis is found through TOLLGATE_SCHEMATHESIS, which `scripts/test.sh` sets after
//! installing the pinned version (`scripts/requirements-test.txt`); without it the test fails.

use crate::common::Server;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tollgate_api::testing::stripe::{self, StripeStandIn};

/// The checks: exactly "no 5xx, and every response is what the document says".
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,response_headers_conformance";
/// schemathesis's own time budget for the run, in seconds: its fuzzing and stateful phases
/// repeat until it is spent.
const MAX_TIME_S: u64 = 150;
/// The seed of the generation, fixed so that a failure seen once is seen again; set
/// TOLLGATE_SCHEMATHESIS_SEED to explore other inputs.
const SEED: &str = "20261206";
/// Per request: a server that takes longer is reported, not waited for.
const REQUEST_TIMEOUT_S: &str = "10";
const HOOKS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/it/schemathesis_hooks.py"
);

/// The schemathesis executable named by TOLLGATE_SCHEMATHESIS, checked to run.
fn schemathesis() -> String {
    const HOW: &str = "run the tests with `scripts/test.sh`, which installs schemathesis (at the \
                       version of scripts/requirements-test.txt) and sets TOLLGATE_SCHEMATHESIS";
    let Some(path) = std::env::var("TOLLGATE_SCHEMATHESIS")
        .ok()
        .filter(|p| !p.is_empty())
    else {
        panic!("TOLLGATE_SCHEMATHESIS is not set: {HOW}");
    };
    match Command::new(&path).arg("--version").output() {
        Ok(out) if out.status.success() => path,
        Ok(out) => panic!(
            "TOLLGATE_SCHEMATHESIS={path} does not run ({}): {}\n{HOW}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("TOLLGATE_SCHEMATHESIS={path} cannot be run ({e}): {HOW}"),
    }
}

/// `Tested: <n>` and `Selected: <n>/<total>` from the summary schemathesis prints.
fn operations_tested(report: &str) -> Option<(u32, u32)> {
    let after = |label: &str| {
        report.lines().find_map(|l| {
            l.trim()
                .strip_prefix(label)
                .map(|rest| rest.trim().to_string())
        })
    };
    let tested = after("Tested:")?.parse().ok()?;
    let total = after("Selected:")?.split_once('/')?.1.parse().ok()?;
    Some((tested, total))
}

#[test]
fn every_operation_answers_as_its_openapi_document_says() {
    let schemathesis = schemathesis();
    let dir = tempfile::tempdir().expect("temp dir");
    // The payment calls answer 503 without a payment provider (a server error to
    // schemathesis): the demo talks to a stand-in of Stripe's API, kept running on a runtime of
    // its own for the whole run.
    let stripe_runtime = tokio::runtime::Runtime::new().expect("a runtime for the stand-in");
    let stripe = stripe_runtime.block_on(StripeStandIn::start());
    let (server, keys) = Server::start_demo_with(
        dir.path(),
        dir.path().join("server.log"),
        &[
            ("TOLLGATE_STRIPE_SECRET_KEY", stripe::SECRET_KEY),
            ("TOLLGATE_STRIPE_WEBHOOK_SECRETS", stripe::WEBHOOK_SECRET),
            ("TOLLGATE_STRIPE_API_BASE", &stripe.base),
        ],
    );
    let seed = std::env::var("TOLLGATE_SCHEMATHESIS_SEED").unwrap_or_else(|_| SEED.into());
    let schema = format!("{}/v1/openapi.json", server.base);

    let mut cmd = Command::new(&schemathesis);
    let calls = dir.path().join("calls.tsv");
    cmd.args(["run", &schema])
        .args(["--checks", CHECKS])
        .args(["--max-time", &MAX_TIME_S.to_string()])
        .args(["--seed", &seed])
        .args(["--request-timeout", REQUEST_TIMEOUT_S])
        .arg("--no-color")
        // Its example database and reports stay in the temporary directory.
        .current_dir(dir.path())
        .env("SCHEMATHESIS_HOOKS", HOOKS)
        .env("TOLLGATE_ST_CALLS", &calls)
        .env("TOLLGATE_ST_OPERATOR_KEY", &keys.operator)
        .env("TOLLGATE_ST_ADMIN_KEY", &keys.admin)
        .env("TOLLGATE_ST_API_KEY", &keys.api)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null());
    let (status, report, took) = run_bounded(cmd, dir.path(), Duration::from_secs(MAX_TIME_S + 60));
    let (server_log, base) = (server.stderr_text(), server.base.clone());
    let operations = keyed_operations(&server.base);
    drop(server);

    assert!(
        status == Some(0),
        "schemathesis failed (exit {status:?} after {took:?}, seed {seed}, server {base}): \
         the failures below are answers that break the OpenAPI document or server errors; \
         its report:\n{report}\nthe server's log:\n{server_log}"
    );
    // Shown with `--nocapture`: what was run, and the warnings that do not fail it.
    println!("schemathesis ({took:?}, seed {seed}):\n{report}");
    let tested = operations_tested(&report);
    assert!(
        matches!(tested, Some((n, total)) if n == total && n > 0),
        "schemathesis passed but did not test every operation (tested/total: {tested:?}); \
         its report:\n{report}"
    );
    // The keys the hooks set were accepted: every operation that takes a key was answered at
    // least once with something other than 401/403 (a run whose keys were refused would pass
    // every check).
    let calls = std::fs::read_to_string(&calls).expect("read the hooks' call log");
    let authenticated: std::collections::HashSet<&str> = calls
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, status)| !matches!(*status, "401" | "403"))
        .map(|(operation, _)| operation)
        .collect();
    let refused: Vec<&String> = operations
        .iter()
        .filter(|op| !authenticated.contains(op.as_str()))
        .collect();
    assert!(
        refused.is_empty(),
        "these operations were only ever answered 401/403, so their key was never accepted: \
         {refused:?}; its report:\n{report}"
    );
}

/// Every operation of the served document that takes a key, as schemathesis labels it
/// (`POST /v1/requests`).
fn keyed_operations(base: &str) -> Vec<String> {
    let doc: serde_json::Value = reqwest::blocking::get(format!("{base}/v1/openapi.json"))
        .and_then(|r| r.json())
        .expect("GET /v1/openapi.json");
    let paths = doc["paths"].as_object().expect("paths");
    let mut ops: Vec<String> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("path item")
                .iter()
                .filter(|(m, _)| ["get", "put", "post", "delete", "patch"].contains(&m.as_str()))
                .filter(|(_, op)| {
                    op["security"]
                        .as_array()
                        .is_some_and(|s| s.iter().any(|r| r.get("Key").is_some()))
                })
                .map(move |(m, _)| format!("{} {path}", m.to_uppercase()))
        })
        .collect();
    ops.sort();
    assert!(
        !ops.is_empty(),
        "the served document names no keyed operation"
    );
    ops
}

/// Runs `cmd` with stdout and stderr in one file of `dir`, killing it after `limit`; returns
/// its exit code (None when killed), what it printed, and how long it took.
fn run_bounded(mut cmd: Command, dir: &Path, limit: Duration) -> (Option<i32>, String, Duration) {
    let out_path = dir.join("schemathesis.out");
    let out = std::fs::File::create(&out_path).expect("create the report file");
    let err = out.try_clone().expect("clone the report file");
    let began = Instant::now();
    let mut child = cmd
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn schemathesis");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for schemathesis") {
            break status.code();
        }
        if began.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut report = String::new();
    std::fs::File::open(&out_path)
        .and_then(|mut f| f.read_to_string(&mut report))
        .expect("read the report");
    if status.is_none() {
        report.push_str(&format!(
            "\n[killed after {limit:?}: schemathesis overran its budget]\n"
        ));
    }
    (status, report, began.elapsed())
}
