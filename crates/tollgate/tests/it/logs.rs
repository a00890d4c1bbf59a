//! What the server writes to its log: one line per call, and never a key's secret. A run uses
//! every kind of key (operator keys from the environment and from the API, a customer's ADMIN
//! and API keys, a key the customer made itself, a caller's key inside a request body), fails
//! to authenticate every way a caller can, and revokes a key; it creates a webhook, whose
//! deliveries are signed with its secret; its whole log, at the most verbose level, must hold
//! none of the secrets (nor their SHA-256, what the database keeps), and must hold the calls
//! it served.

use crate::common::{client, send, Receiver, Server};
use reqwest::blocking::Client;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::cell::Cell;
use std::time::Duration;

const OP_KEY: &str = "logs-op:secret-of-the-environment-key-4f1c";

fn post(c: &Client, base: &str, path: &str, key: &str, body: Value) -> (u16, Value) {
    let r = send(c.post(format!("{base}{path}")).json(&body), key).expect("an answer");
    (r.status, r.body)
}

fn get(c: &Client, base: &str, path: &str, key: &str) -> (u16, Value) {
    let r = send(c.get(format!("{base}{path}")), key).expect("an answer");
    (r.status, r.body)
}

/// The secret of a `key_id:key_secret` key.
fn secret(key: &str) -> &str {
    key.split_once(':').expect("key_id:key_secret").1
}

#[test]
fn no_key_secret_reaches_the_log_of_a_run_that_used_every_kind_of_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("server.log");
    let mut server = Server::start_with(
        &dir.path().join("logs.db"),
        log.clone(),
        OP_KEY,
        Some(std::path::Path::new(crate::common::SAMPLE_CATALOG)),
        // Everything every crate logs, debug included.
        &["env", "RUST_LOG=trace", "NO_COLOR=1"],
        &[],
    );
    let (c, base) = (client(), server.base.clone());
    let mut secrets: Vec<String> = vec![secret(OP_KEY).to_string()];
    let calls = Cell::new(0);
    let call = |(status, body): (u16, Value), expected: u16, what: &str| {
        calls.set(calls.get() + 1);
        assert_eq!(status, expected, "{what}: {body}");
        body
    };

    // Operator key from the API; the customer's keys from the operator; one the customer makes.
    let op2 = call(
        post(
            &c,
            &base,
            "/v1/admin/operator-keys",
            OP_KEY,
            json!({"alias": "back office"}),
        ),
        201,
        "operator key",
    )["key"]
        .as_str()
        .expect("key")
        .to_string();
    // A webhook, before the account: its events (the purchase's) are signed with its secret.
    let receiver = Receiver::start();
    let hook = call(
        post(
            &c,
            &base,
            "/v1/admin/webhooks",
            &op2,
            json!({"url": format!("{}/events", receiver.base), "events": ["*"]}),
        ),
        201,
        "webhook",
    );
    secrets.push(hook["secret"].as_str().expect("secret").to_string());
    call(
        post(
            &c,
            &base,
            "/v1/admin/accounts",
            &op2,
            json!({"username": "acme"}),
        ),
        201,
        "account",
    );
    call(
        post(
            &c,
            &base,
            "/v1/admin/accounts/acme/purchases",
            OP_KEY,
            json!({"purchase_id": "p-1", "amount_usd": "5.00"}),
        ),
        201,
        "purchase",
    );
    let account_key = |scope: &str| {
        call(
            post(
                &c,
                &base,
                "/v1/admin/accounts/acme/keys",
                OP_KEY,
                json!({"scope": scope, "alias": scope}),
            ),
            201,
            "account key",
        )["key"]
            .as_str()
            .expect("key")
            .to_string()
    };
    let admin = account_key("ADMIN");
    let api = account_key("API");
    let own = call(
        post(
            &c,
            &base,
            "/v1/keys",
            &admin,
            json!({"alias": "made by acme"}),
        ),
        201,
        "customer key",
    )["key"]
        .as_str()
        .expect("key")
        .to_string();
    secrets.extend([&op2, &admin, &api, &own].map(|k| secret(k).to_string()));

    // Every key at work: a request's life with the caller's key in the body, reads by each.
    let request_id = uuid::Uuid::now_v7().to_string();
    call(
        post(
            &c,
            &base,
            "/v1/requests",
            OP_KEY,
            json!({"request_id": request_id, "endpoint_id": "fal-ai/flux/dev", "caller_key": own}),
        ),
        201,
        "submit",
    );
    call(
        post(
            &c,
            &base,
            &format!("/v1/requests/{request_id}/start"),
            &op2,
            json!({}),
        ),
        200,
        "start",
    );
    call(
        post(
            &c,
            &base,
            &format!("/v1/requests/{request_id}/complete"),
            OP_KEY,
            json!({"status_code": 200, "output": {"images": [{"width": 1024, "height": 1024}]}}),
        ),
        200,
        "complete",
    );
    call(
        get(&c, &base, "/v1/account/billing?expand=credits", &admin),
        200,
        "billing",
    );
    call(
        get(
            &c,
            &base,
            "/v1/models/pricing?endpoint_id=fal-ai/flux/dev",
            &api,
        ),
        200,
        "pricing",
    );
    call(get(&c, &base, "/v1/admin/accounts", &op2), 200, "accounts");

    // Every way to fail: a wrong secret for each key, an unknown id, no colon, another scheme,
    // a wrong caller key in a body, and a revoked key.
    for key in [
        OP_KEY,
        op2.as_str(),
        admin.as_str(),
        api.as_str(),
        own.as_str(),
    ] {
        let (id, good) = key.split_once(':').expect("key");
        let wrong = format!("{id}:{good}x");
        secrets.push(format!("{good}x"));
        call(
            get(&c, &base, "/v1/admin/accounts", &wrong),
            401,
            "wrong secret",
        );
        call(
            get(&c, &base, "/v1/account/billing", &wrong),
            401,
            "wrong secret",
        );
    }
    let stranger = "0f0e0d0c-0b0a-4909-8807-060504030201:stranger-secret-93ab";
    secrets.push(secret(stranger).to_string());
    call(get(&c, &base, "/v1/keys", stranger), 401, "unknown key");
    for header in [
        "Key no-colon-secret-77c1".to_string(),
        format!("Bearer {}", secret(&admin)),
        format!("Key {}", secret(&admin)),
    ] {
        secrets.push("no-colon-secret-77c1".into());
        let r = c
            .get(format!("{base}/v1/keys"))
            .header("Authorization", &header)
            .send()
            .expect("an answer");
        calls.set(calls.get() + 1);
        assert_eq!(r.status().as_u16(), 401, "{header}");
    }
    let (own_id, own_secret) = own.split_once(':').expect("key");
    call(
        post(
            &c,
            &base,
            "/v1/requests",
            OP_KEY,
            json!({
                "request_id": uuid::Uuid::now_v7().to_string(),
                "endpoint_id": "fal-ai/flux/dev",
                "caller_key": format!("{own_id}:{own_secret}-wrong"),
            }),
        ),
        401,
        "a wrong caller key",
    );
    secrets.push(format!("{own_secret}-wrong"));
    let api_id = api.split_once(':').expect("key").0;
    let r = c
        .delete(format!("{base}/v1/admin/keys/{api_id}"))
        .header("Authorization", format!("Key {OP_KEY}"))
        .send()
        .expect("revoke");
    calls.set(calls.get() + 1);
    assert_eq!(r.status().as_u16(), 204);
    call(
        get(
            &c,
            &base,
            "/v1/models/pricing?endpoint_id=fal-ai/flux/dev",
            &api,
        ),
        401,
        "a revoked key",
    );

    // The purchase's events were delivered (signed) before the log is read.
    receiver.wait_for(2, Duration::from_secs(30));

    server.terminate();
    let status = server.wait_exit(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");
    let text = std::fs::read_to_string(&log).expect("read the log");

    // It logged: one line per call, with its request id, route and status.
    let call_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("tollgate::http: call "))
        .collect();
    assert_eq!(
        call_lines.len(),
        calls.get(),
        "one line per call; the log:
{text}"
    );
    for line in &call_lines {
        for field in ["request_id=", "route=", "status=", "latency_us="] {
            assert!(line.contains(field), "{field} in {line}");
        }
    }
    // And no secret, nor what the database keeps of one.
    for s in &secrets {
        let hash = hex::encode(Sha256::digest(s.as_bytes()));
        assert!(
            !text.contains(s.as_str()),
            "the log holds the secret {s}:\n{text}"
        );
        assert!(!text.contains(&hash), "the log holds the SHA-256 of {s}");
    }
}
