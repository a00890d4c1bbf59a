//! fal's official Python client, `fal-client` from PyPI (the version pinned in
//! scripts/requirements-test.txt), against the gateway over TLS: the client is pointed at the
//! queue and direct listeners by its own variables (`FAL_QUEUE_RUN_HOST`, `FAL_RUN_HOST`),
//! authenticates with a customer's key (`FAL_KEY`) and trusts the certificate made for the test
//! through `SSL_CERT_FILE`, exactly as a customer would point it at tollgate.
//!
//! Each case runs `tests/fal_client/cases.py` with the Python named by `TOLLGATE_PYTHON`
//! (scripts/test.sh installs fal-client into its venv); without it, or without fal_client, the
//! test fails. The script prints what the client returned or raised as JSON lines; the test
//! checks that, and on its side what the model server was sent and what the account was billed.
//!
//! Tests wait for the gateway through its channel of answers, never by sleeping.

use crate::harness::{answered, answers, Customer, TestGateway, USD};
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::task::JoinHandle;
use tollgate_core::gateway::GatewayState;
use tollgate_core::ids::RequestId;

/// One image at 0.01 USD.
const IMAGE: i64 = USD / 100;

const HOW: &str = "run the tests with `scripts/test.sh`, which installs fal-client (at the version \
                   of scripts/requirements-test.txt) into target/test-venv and sets TOLLGATE_PYTHON";

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fal_client/cases.py");

/// The longest a script's step may take: a bound, so a client that hangs fails the test.
const STEP: Duration = Duration::from_secs(90);

/// The fal-client version scripts/requirements-test.txt pins.
fn pinned_version() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/requirements-test.txt"
    );
    let pins = std::fs::read_to_string(path).expect("scripts/requirements-test.txt");
    pins.lines()
        .find_map(|l| l.trim().strip_prefix("fal-client=="))
        .expect("scripts/requirements-test.txt pins fal-client")
        .trim()
        .to_string()
}

/// One run of cases.py: its stdout read line by line, its stdin for the steps.
struct Fal {
    case: String,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    stderr: Option<JoinHandle<String>>,
}

impl Fal {
    /// Starts `case` with `args` as `c`, on the gateway's TLS listeners; checks the client is
    /// the pinned one and took the hosts it was given.
    async fn start(gw: &TestGateway, c: &Customer, case: &str, args: Value) -> Fal {
        let python = tollgate_api::testing::python::with("fal_client", HOW);
        let tls = gw
            .tls
            .as_ref()
            .expect("fal's client tests run the gateway with TLS (TestGateway::spawn_tls)");
        let host = |url: &str| {
            url.strip_prefix("https://")
                .unwrap_or_else(|| panic!("{url} is not a TLS listener"))
                .to_string()
        };
        let mut cmd = tokio::process::Command::new(&python);
        cmd.arg(SCRIPT)
            .arg(case)
            .arg(args.to_string())
            // Read by fal_client when it is imported: set before the process starts.
            .env("FAL_KEY", &c.key)
            .env("FAL_QUEUE_RUN_HOST", host(&gw.queue))
            .env("FAL_RUN_HOST", host(&gw.direct))
            .env("SSL_CERT_FILE", &tls.ca)
            .env("PYTHONDONTWRITEBYTECODE", "1");
        // Nothing of the machine's own: no other credentials, CA folder or proxy.
        for var in [
            "FAL_KEY_ID",
            "FAL_KEY_SECRET",
            "FAL_FORCE_AUTH_BY_USER",
            "SSL_CERT_DIR",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ] {
            cmd.env_remove(var);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("TOLLGATE_PYTHON={python} does not run ({e}): {HOW}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut stderr = child.stderr.take().expect("piped stderr");
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        let mut fal = Fal {
            case: case.to_string(),
            child,
            stdin,
            lines,
            stderr: Some(stderr),
        };
        let ready = fal.next("ready").await;
        assert_eq!(
            ready["version"],
            pinned_version().as_str(),
            "the fal-client that ran is not the pinned one: {ready}"
        );
        assert_eq!(ready["queue_url"], format!("{}/", gw.queue), "{ready}");
        assert_eq!(ready["run_url"], format!("{}/", gw.direct), "{ready}");
        fal
    }

    /// The script's next line, which must be the event `event`.
    async fn next(&mut self, event: &str) -> Value {
        let line = match tokio::time::timeout(STEP, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => self.fail(&format!("ended before `{event}`")).await,
            Ok(Err(e)) => self.fail(&format!("stdout unreadable: {e}")).await,
            Err(_) => self.fail(&format!("no `{event}` within {STEP:?}")).await,
        };
        let value: Value = match serde_json::from_str(&line) {
            Ok(value) => value,
            Err(e) => {
                self.fail(&format!("printed {line:?}, not JSON ({e})"))
                    .await
            }
        };
        if value["event"] != event {
            self.fail(&format!("printed {value} where `{event}` was expected"))
                .await
        }
        value
    }

    /// Tells a stepping script to go on.
    async fn go(&mut self) {
        self.stdin.write_all(b"go\n").await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// The script's last line, `done`; the script must then exit successfully.
    async fn done(mut self) -> Value {
        let done = self.next("done").await;
        match tokio::time::timeout(STEP, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => done,
            Ok(Ok(status)) => self.fail(&format!("exited with {status}")).await,
            Ok(Err(e)) => self.fail(&format!("not waited for: {e}")).await,
            Err(_) => self.fail("did not exit after `done`").await,
        }
    }

    /// Fails the test with the script's stderr (a Python traceback, say).
    async fn fail(&mut self, why: &str) -> ! {
        let _ = self.child.start_kill();
        let status = self.child.wait().await;
        let stderr = match self.stderr.take() {
            Some(task) => task.await.unwrap_or_default(),
            None => String::new(),
        };
        panic!(
            "fal client case `{}`: {why} (exit: {status:?}); its stderr:\n{stderr}",
            self.case
        );
    }
}

/// `fal_client.subscribe(endpoint, arguments)` to its end: the `done` line.
async fn subscribe(gw: &TestGateway, c: &Customer, endpoint: &str, arguments: Value) -> Value {
    let args = json!({"endpoint": endpoint, "arguments": arguments});
    let mut fal = Fal::start(gw, c, "subscribe", args).await;
    let enqueued = fal.next("enqueued").await;
    let done = fal.done().await;
    assert_eq!(done["request_id"], enqueued["request_id"], "{done}");
    done
}

/// Where the gateway has request `id`.
async fn gateway_state(gw: &TestGateway, id: &str) -> GatewayState {
    let id = RequestId::parse(id).unwrap();
    gw.engine
        .read(move |r| r.gateway_request(&id))
        .await
        .unwrap()
        .expect("a gateway request")
        .record
        .state
}

/// Occupies acme/small's one slot with a request that runs until the model server's gate
/// opens; returns its submission once the model server has it.
async fn occupy_small(gw: &TestGateway, c: &Customer) -> Value {
    gw.model.gate.send_replace(false);
    let blocker = gw
        .submit(c, "acme/small", json!({"mode": "gated", "units": "1"}))
        .await;
    gw.model
        .called(blocker["request_id"].as_str().unwrap())
        .await;
    blocker
}

#[tokio::test]
async fn subscribe_returns_the_model_servers_output_billed_in_its_units() {
    let gw = TestGateway::spawn_tls().await;
    let c = gw.customer("ana", Some(10)).await;
    let done = subscribe(
        &gw,
        &c,
        "acme/image",
        json!({"prompt": "a cat", "units": "3"}),
    )
    .await;
    assert_eq!(done["result"]["echo"]["prompt"], "a cat", "{done}");
    assert_eq!(done["result"]["images"][0]["width"], 1024, "{done}");
    // Every update the client parsed is one of its status objects; the last is Completed, with
    // the cost tollgate billed.
    let updates = done["updates"].as_array().unwrap();
    assert!(
        updates
            .iter()
            .all(|u| ["Queued", "InProgress", "Completed"].contains(&u["type"].as_str().unwrap())),
        "{done}"
    );
    let last = updates.last().expect("at least the completed status");
    assert_eq!(last["type"], "Completed", "{done}");
    assert_eq!(last["metrics"]["cost_nano_usd"], 3 * IMAGE, "{done}");
    assert_eq!(last["logs"], json!([]), "asked with logs: {done}");
    let id = done["request_id"].as_str().unwrap();
    assert_eq!(gw.model.calls_of(id), 1);
    assert_eq!(gw.charged(&c.account).await, (3 * IMAGE, 1));
    assert_eq!(gw.balance(&c.account).await, 10 * USD - 3 * IMAGE);
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn submit_then_status_sees_queued_in_progress_and_completed_then_result() {
    let gw = TestGateway::spawn_tls().await;
    let c = gw.customer("ana", Some(100)).await;
    let blocker = occupy_small(&gw, &c).await;
    let mut answers = answers(&gw);
    // Its model server answers at once but bills later (deferred units): in progress until the
    // units come.
    let args =
        json!({"endpoint": "acme/small", "arguments": {"mode": "deferred", "prompt": "a fox"}});
    let mut fal = Fal::start(&gw, &c, "lifecycle", args).await;
    let submitted = fal.next("submitted").await;
    let id = submitted["request_id"].as_str().unwrap().to_string();
    assert_eq!(
        submitted["status"],
        json!({"type": "Queued", "position": 0}),
        "behind the running request: {submitted}"
    );
    let base = format!("{}/acme/small/requests/{id}", gw.queue);
    assert_eq!(
        submitted["urls"],
        json!([
            base.clone(),
            format!("{base}/status"),
            format!("{base}/cancel")
        ])
    );
    assert_eq!(gw.model.calls_of(&id), 0);

    gw.model.gate.send_replace(true);
    answered(&mut answers, &id).await;
    assert_eq!(gateway_state(&gw, &id).await, GatewayState::AwaitingUnits);
    fal.go().await;
    let running = fal.next("running").await;
    assert_eq!(
        running["status"],
        json!({"type": "InProgress", "logs": []}),
        "{running}"
    );

    let (posted, billing) = gw.post_units(&id, "3").await;
    assert_eq!(posted, 200, "{billing}");
    fal.go().await;
    let done = fal.done().await;
    assert_eq!(done["status"]["type"], "Completed", "{done}");
    assert_eq!(
        done["status"]["metrics"]["cost_nano_usd"],
        3 * IMAGE,
        "{done}"
    );
    assert_eq!(done["result"]["echo"]["prompt"], "a fox", "{done}");
    assert_eq!(gw.model.calls_of(&id), 1);

    let blocked = gw.wait(&c, &blocker).await;
    assert_eq!(blocked["metrics"]["cost_nano_usd"], IMAGE);
    assert_eq!(gw.charged(&c.account).await, (4 * IMAGE, 2));
    assert_eq!(gw.balance(&c.account).await, 100 * USD - 4 * IMAGE);
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn run_answers_from_the_direct_listener_and_raises_its_errors() {
    let gw = TestGateway::spawn_tls().await;
    let c = gw.customer("ana", Some(10)).await;
    let args = json!({"endpoint": "acme/image", "arguments": {"prompt": "a dog", "units": "2"}});
    let done = Fal::start(&gw, &c, "run", args).await.done().await;
    assert_eq!(done["result"]["echo"]["prompt"], "a dog", "{done}");
    assert_eq!(gw.model.calls.lock().unwrap().len(), 1);
    assert_eq!(gw.charged(&c.account).await, (2 * IMAGE, 1));

    let args = json!({"endpoint": "acme/image", "arguments": {"mode": "status", "status": 422}});
    let done = Fal::start(&gw, &c, "run", args).await.done().await;
    let error = &done["error"];
    assert_eq!(error["class"], "FalClientHTTPError", "{done}");
    assert_eq!(error["status_code"], 422, "{done}");
    assert_eq!(error["message"], "as asked", "{done}");
    let id = error["request_id"].as_str().expect("x-fal-request-id");
    assert_eq!(gw.model.calls_of(id), 1, "not retried");
    assert_eq!(gw.charged(&c.account).await, (2 * IMAGE, 1));
    assert_eq!(gw.balance(&c.account).await, 10 * USD - 2 * IMAGE);
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn cancel_of_a_queued_request_completes_it_unbilled() {
    let gw = TestGateway::spawn_tls().await;
    let c = gw.customer("ana", Some(100)).await;
    let blocker = occupy_small(&gw, &c).await;
    let args = json!({"endpoint": "acme/small", "arguments": {"units": "1"}});
    let done = Fal::start(&gw, &c, "cancel", args).await.done().await;
    assert_eq!(
        done["queued"],
        json!({"type": "Queued", "position": 0}),
        "{done}"
    );
    let after = &done["after"];
    assert_eq!(after["type"], "Completed", "{done}");
    assert_eq!(after["metrics"]["cost_nano_usd"], 0, "{done}");
    // Its result is the cancellation, which the client raises.
    let error = &done["result_error"];
    assert_eq!(error["class"], "FalClientHTTPError", "{done}");
    assert_eq!(error["status_code"], 400, "{done}");
    assert_eq!(
        error["message"], "Request was cancelled before it completed",
        "{done}"
    );
    // A second cancel: already completed.
    let again = &done["cancel_again_error"];
    assert_eq!(again["status_code"], 400, "{done}");
    assert!(
        again["message"]
            .as_str()
            .unwrap()
            .contains("ALREADY_COMPLETED"),
        "{done}"
    );
    let id = done["request_id"].as_str().unwrap();
    gw.model.gate.send_replace(true);
    gw.wait(&c, &blocker).await;
    assert_eq!(gw.model.calls_of(id), 0, "a cancelled request never runs");
    // Only the request that ran is billed.
    assert_eq!(gw.charged(&c.account).await, (IMAGE, 1));
    assert_eq!(gw.balance(&c.account).await, 100 * USD - IMAGE);
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn a_request_answered_503_then_200_is_billed_once() {
    let gw = TestGateway::spawn_tls().await;
    let c = gw.customer("ana", Some(10)).await;
    let done = subscribe(
        &gw,
        &c,
        "acme/image",
        json!({"mode": "fail_first", "fails": 2, "units": "2"}),
    )
    .await;
    assert_eq!(done["result"]["echo"]["fails"], 2, "{done}");
    let id = done["request_id"].as_str().unwrap();
    assert_eq!(gw.model.calls_of(id), 3, "two 503s, then the answer");
    assert_eq!(gw.charged(&c.account).await, (2 * IMAGE, 1));
    assert_eq!(gw.balance(&c.account).await, 10 * USD - 2 * IMAGE);
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn a_slow_answer_is_waited_for_and_its_gpu_time_billed() {
    let gw = TestGateway::spawn_tls().await;
    let c = gw.customer("ana", Some(10)).await;
    let done = subscribe(&gw, &c, "acme/gpu", json!({"mode": "slow", "ms": 1500})).await;
    assert_eq!(done["result"]["echo"]["ms"], 1500, "{done}");
    assert!(done["seconds"].as_f64().unwrap() >= 1.5, "{done}");
    let id = done["request_id"].as_str().unwrap();
    let rid = RequestId::parse(id).unwrap();
    let request = gw
        .engine
        .read(move |r| r.request(&rid))
        .await
        .unwrap()
        .unwrap();
    let inference_ms = request.inference_ms.unwrap();
    assert!(inference_ms >= 1500, "{inference_ms} ms");
    // Billed GPU-seconds (0.000525 USD a second) are the call's own time.
    let cost = inference_ms * 525;
    let last = done["updates"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["type"], "Completed", "{done}");
    assert_eq!(last["metrics"]["cost_nano_usd"], cost, "{done}");
    assert!(
        last["metrics"]["inference_time"].as_f64().unwrap() >= 1.5,
        "fal's metrics give the inference time in seconds: {done}"
    );
    assert_eq!(gw.model.calls_of(id), 1);
    assert_eq!(gw.charged(&c.account).await, (cost, 1));
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn a_4xx_raises_fals_error_with_the_model_servers_detail() {
    let gw = TestGateway::spawn_tls().await;
    let c = gw.customer("ana", Some(10)).await;
    let done = subscribe(
        &gw,
        &c,
        "acme/image",
        json!({"mode": "status", "status": 422}),
    )
    .await;
    let error = &done["error"];
    assert_eq!(error["class"], "FalClientHTTPError", "{done}");
    assert_eq!(error["status_code"], 422, "{done}");
    assert_eq!(error["message"], "as asked", "{done}");
    let id = done["request_id"].as_str().unwrap();
    assert_eq!(gw.model.calls_of(id), 1, "a 4xx is not retried");
    // The test catalog's endpoints bill no 4xx.
    assert_eq!(gw.balance(&c.account).await, 10 * USD);
    assert_eq!(gw.charged(&c.account).await, (0, 0));
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn a_500_raises_and_is_neither_retried_nor_billed() {
    let gw = TestGateway::spawn_tls().await;
    let c = gw.customer("ana", Some(10)).await;
    let done = subscribe(
        &gw,
        &c,
        "acme/image",
        json!({"mode": "status", "status": 500}),
    )
    .await;
    let error = &done["error"];
    assert_eq!(error["class"], "FalClientHTTPError", "{done}");
    assert_eq!(error["status_code"], 500, "{done}");
    assert_eq!(error["message"], "as asked", "{done}");
    let id = done["request_id"].as_str().unwrap();
    assert_eq!(gw.model.calls_of(id), 1);
    assert_eq!(gw.balance(&c.account).await, 10 * USD);
    assert_eq!(gw.charged(&c.account).await, (0, 0));
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn deferred_units_posted_while_the_client_waits_are_billed_once() {
    let gw = TestGateway::spawn_tls().await;
    let c = gw.customer("ana", Some(10)).await;
    let mut answers = answers(&gw);
    let args =
        json!({"endpoint": "acme/image", "arguments": {"mode": "deferred", "prompt": "an owl"}});
    let mut fal = Fal::start(&gw, &c, "subscribe", args).await;
    let enqueued = fal.next("enqueued").await;
    let id = enqueued["request_id"].as_str().unwrap().to_string();
    answered(&mut answers, &id).await;
    assert_eq!(gateway_state(&gw, &id).await, GatewayState::AwaitingUnits);
    let (first, billing) = gw.post_units(&id, "7").await;
    assert_eq!(first, 200, "{billing}");
    // Posted again: answered with the first billing, nothing more billed.
    let (again, replay) = gw.post_units(&id, "9").await;
    assert_eq!(again, 200, "{replay}");
    assert_eq!(replay["cost_subtotal_nano_usd"], 7 * IMAGE, "{replay}");
    let done = fal.done().await;
    assert_eq!(done["request_id"], id.as_str());
    assert_eq!(done["result"]["echo"]["prompt"], "an owl", "{done}");
    let last = done["updates"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["metrics"]["cost_nano_usd"], 7 * IMAGE, "{done}");
    assert_eq!(gw.model.calls_of(&id), 1);
    assert_eq!(gw.charged(&c.account).await, (7 * IMAGE, 1));
    assert_eq!(gw.balance(&c.account).await, 10 * USD - 7 * IMAGE);
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn submit_with_a_webhook_url_posts_the_completed_request_to_it() {
    use tollgate_api::testing::receiver::Receiver;
    let gw = TestGateway::spawn_tls().await;
    let c = gw.customer("ana", Some(10)).await;
    let receiver = Receiver::start().await;
    let args = json!({
        "endpoint": "acme/image",
        "arguments": {"prompt": "a heron", "units": "2"},
        "url": receiver.url("/hooks/fal"),
    });
    let mut fal = Fal::start(&gw, &c, "webhook", args).await;
    let submitted = fal.next("submitted").await;
    let id = submitted["request_id"].as_str().unwrap().to_string();
    let done = fal.done().await;
    assert_eq!(done["result"]["echo"]["prompt"], "a heron", "{done}");
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].path, "/hooks/fal");
    let posted = got[0].json();
    assert_eq!(posted["request_id"], id.as_str(), "{posted}");
    assert_eq!(posted["gateway_request_id"], id.as_str());
    assert_eq!(posted["status"], "OK");
    assert_eq!(posted["payload"]["echo"]["prompt"], "a heron");
    assert_eq!(gw.charged(&c.account).await, (2 * IMAGE, 1));
    gw.assert_reconciled().await;
}
