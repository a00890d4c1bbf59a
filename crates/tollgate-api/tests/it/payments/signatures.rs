//! The signatures tollgate verifies are the provider's format: headers made by the `stripe`
//! package from PyPI (its own signing code) verify, and a header tollgate's `sign` made is
//! accepted by the package's `Webhook.construct_event`. The package runs in the Python named
//! by TOLLGATE_PYTHON (scripts/test.sh installs it at the version of
//! scripts/requirements-test.txt); without it the test fails.

use super::{session_id, Pay};
use crate::harness::USD;
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};
use tollgate_api::payments::stripe::signature;
use tollgate_core::Timestamp;
use tollgate_store::testing::Backend;

const HOW: &str = "run the tests with `scripts/test.sh`, which installs the `stripe` package (at \
                   the version of scripts/requirements-test.txt) and sets TOLLGATE_PYTHON";

/// The Python named by TOLLGATE_PYTHON, checked to have the `stripe` package.
fn python() -> String {
    tollgate_api::testing::python::with("stripe", HOW)
}

/// Signs with the package's own code and verifies tollgate's header with it; reads a JSON
/// request on stdin, writes a JSON answer.
const SCRIPT: &str = r#"
import json, sys, time
import stripe
from stripe import Webhook, WebhookSignature

req = json.load(sys.stdin)
payload, t = req["payload"], req["t"]
out = {"version": stripe.VERSION}
out["headers"] = [
    WebhookSignature.generate_signature_header(payload, secret, timestamp=t)
    for secret in req["secrets"]
]
out["computed"] = WebhookSignature._compute_signature("%d.%s" % (t, payload), req["secrets"][0])

def accepts(body, header, secret):
    try:
        event = Webhook.construct_event(body, header, secret, tolerance=300)
        return event["id"]
    except Exception as e:
        return "refused: %s" % e

out["ours"] = accepts(payload, req["ours"], req["secrets"][0])
out["ours_other_secret"] = accepts(payload, req["ours"], "whsec_someone_else")
out["ours_changed_body"] = accepts(payload + " ", req["ours"], req["secrets"][0])
print(json.dumps(out))
"#;

fn run(python: &str, request: &Value) -> Value {
    let mut child = Command::new(python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python} does not run: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the stripe package's script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the script's answer is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[tokio::test]
async fn signatures_made_by_the_providers_library_verify_and_ours_verify_there() {
    let python = python();
    let p = Pay::start_with(&Backend::Sqlite, |mut s| {
        s.webhook_secrets = vec!["whsec_rolled_out".into(), "whsec_current".into()];
        s
    })
    .await;
    let admin = p.account("acme").await;
    let t = p.top_up(&admin, "12.34", false).await.expect(201).clone();
    let (session, _) = p.stripe.pay_checkout(&session_id(&t));
    let event = p.stripe.event("checkout.session.completed", session);
    let payload = serde_json::to_string(&event).unwrap();
    let engine_t = p.app.now_ms() / 1000;
    // Ours, at the real time (the package checks its tolerance against the system clock).
    let now_s = chrono::Utc::now().timestamp();
    let ours = signature::sign(payload.as_bytes(), "whsec_current", now_s);
    let answer = run(
        &python,
        &json!({"payload": payload, "t": engine_t, "ours": ours,
            "secrets": ["whsec_current", "whsec_rolled_out", "whsec_unknown"]}),
    );
    assert_eq!(
        answer["ours"], event["id"],
        "the package accepts ours: {answer}"
    );
    assert!(answer["ours_other_secret"]
        .as_str()
        .unwrap()
        .starts_with("refused"));
    assert!(answer["ours_changed_body"]
        .as_str()
        .unwrap()
        .starts_with("refused"));
    // The package's HMAC is ours.
    let mine = signature::sign(payload.as_bytes(), "whsec_current", engine_t);
    assert_eq!(
        mine.split_once("v1=").unwrap().1,
        answer["computed"].as_str().unwrap(),
        "{answer}"
    );
    // Its headers: those of the configured secrets verify, the unknown one does not.
    let headers: Vec<String> = answer["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect();
    let secrets = vec!["whsec_rolled_out".to_string(), "whsec_current".to_string()];
    let at = Timestamp(p.app.now_ms());
    assert_eq!(
        signature::verify(payload.as_bytes(), &headers[0], &secrets, at),
        Ok(engine_t)
    );
    assert_eq!(
        signature::verify(payload.as_bytes(), &headers[1], &secrets, at),
        Ok(engine_t)
    );
    assert_eq!(
        signature::verify(payload.as_bytes(), &headers[2], &secrets, at),
        Err(signature::SignatureError::NoMatch)
    );
    // And tollgate's webhook takes the event with the package's header: credited once.
    let (status, body) = p
        .events
        .send_raw(payload.clone().into_bytes(), Some(&headers[2]))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = p
        .events
        .send_raw(payload.clone().into_bytes(), Some(&headers[0]))
        .await;
    assert_eq!(
        (status, body["result"].as_str()),
        (200, Some("applied")),
        "{body}"
    );
    let (status, body) = p
        .events
        .send_raw(payload.into_bytes(), Some(&headers[1]))
        .await;
    assert_eq!(
        (status, body["result"].as_str()),
        (200, Some("replayed")),
        "{body}"
    );
    assert_eq!(p.balance("acme").await, 12 * USD + 340_000_000);
    p.app.assert_reconciled().await;
}
