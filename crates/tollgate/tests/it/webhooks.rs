//! Webhooks across a crash: an event committed and on its way to a receiver that has not
//! answered when the server is SIGKILLed is delivered by the server started again on the same
//! database (once the dead server's lease on it passes), with the same event id.
//!
//! Timing only decides when the server is killed; no assertion depends on it.

use crate::common::{client, must, send, Receiver, Server, SAMPLE_CATALOG};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const OP_KEY: &str = "webhooks-op:secret-9d2e";
/// Short attempts (a hung one gives up after a second) and retries.
const FLAGS: [&str; 4] = ["--webhooks-timeout-s", "1", "--webhooks-retry-base-s", "1"];

fn start(db: &Path, log: &Path) -> Server {
    Server::start_with(
        db,
        log.to_path_buf(),
        OP_KEY,
        Some(Path::new(SAMPLE_CATALOG)),
        &[],
        &FLAGS,
    )
}

#[test]
fn an_event_on_its_way_when_the_server_is_killed_is_delivered_after_the_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("webhooks.db");
    let receiver = Receiver::start();
    // Accepts and never answers: the delivery is claimed and in flight when the kill comes.
    receiver.hang(true);
    let mut server = start(&db, &dir.path().join("first.log"));
    let (c, base) = (client(), server.base.clone());
    let post = |path: &str, body: Value| send(c.post(format!("{base}{path}")).json(&body), OP_KEY);
    let hook = must(
        post(
            "/v1/admin/webhooks",
            json!({"url": format!("{}/events", receiver.base), "events": ["purchase.succeeded"]}),
        ),
        201,
        "webhook",
    )
    .body;
    let hook = hook["webhook_id"].as_str().expect("webhook_id").to_string();
    must(
        post("/v1/admin/accounts", json!({"username": "acme"})),
        201,
        "account",
    );
    must(
        post(
            "/v1/admin/accounts/acme/purchases",
            json!({"purchase_id": "p-1", "amount_usd": "25.00"}),
        ),
        201,
        "purchase",
    );
    let first = receiver.wait_for(1, Duration::from_secs(30));
    server.kill();
    let sent_before = receiver.got().len();
    let event_id = first[0].json()["id"].as_str().expect("id").to_string();

    // Started again on the same file; the receiver answers now.
    receiver.hang(false);
    let server = start(&db, &dir.path().join("second.log"));
    let base = server.base.clone();
    let got = receiver.wait_for(sent_before + 1, Duration::from_secs(60));
    assert!(
        got.iter().all(|r| r.json()["id"] == event_id.as_str()),
        "every request carries the one event's id: {got:?}"
    );
    assert!(
        got.iter().all(|r| r.body == first[0].body),
        "the same event"
    );
    assert!(
        got.iter().all(|r| r.path == "/events"
            && r.headers
                .iter()
                .any(|(k, v)| k == "tollgate-event-id" && *v == event_id)),
        "{got:?}"
    );

    // The delivery is recorded as delivered (polled: the record follows the answer).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = must(
            send(
                c.get(format!("{base}/v1/admin/webhooks/{hook}/deliveries")),
                OP_KEY,
            ),
            200,
            "deliveries",
        )
        .body;
        let d = &list["deliveries"][0];
        assert_eq!(
            list["deliveries"].as_array().map(Vec::len),
            Some(1),
            "{list}"
        );
        assert_eq!(d["event_id"], event_id.as_str());
        if d["status"] == "delivered" {
            assert_eq!(d["last_status_code"], 200, "{d}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never recorded as delivered: {d}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
