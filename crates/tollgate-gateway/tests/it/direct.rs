//! fal's direct API: one call, answered with the model server's output.

use crate::harness::{TestGateway, USD};
use serde_json::{json, Value};

#[tokio::test]
async fn a_direct_call_answers_the_output_and_bills_it() {
    let gw = TestGateway::spawn().await;
    let c = gw.customer("ana", Some(10)).await;
    let resp = gw
        .client
        .post(format!("{}/acme/image", gw.direct))
        .header("authorization", format!("Key {}", c.key))
        .json(&json!({"prompt": "a cat", "units": "2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-tollgate-cost-nano-usd"],
        (2 * USD / 100).to_string().as_str()
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["echo"]["prompt"], "a cat");
    assert_eq!(gw.charged(&c.account).await, (2 * USD / 100, 1));
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn a_direct_call_is_not_retried_and_a_failed_attempt_is_not_billed() {
    let gw = TestGateway::spawn().await;
    let c = gw.customer("ana", Some(10)).await;
    for status in [503, 429, 500] {
        let resp = gw
            .client
            .post(format!("{}/acme/image", gw.direct))
            .header("authorization", format!("Key {}", c.key))
            .json(&json!({"mode": "status", "status": status}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status);
        let id = resp.headers()["x-fal-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(gw.model.calls_of(&id), 1);
    }
    assert_eq!(gw.balance(&c.account).await, 10 * USD);
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn a_direct_call_over_the_concurrency_limit_is_refused_with_429() {
    let gw = TestGateway::spawn().await;
    // Two at once on the first tier.
    let c = gw.customer("ana", Some(5)).await;
    let slow = || {
        gw.client
            .post(format!("{}/acme/image", gw.direct))
            .header("authorization", format!("Key {}", c.key))
            .json(&json!({"mode": "slow", "ms": 60_000}))
            .send()
    };
    let a = tokio::spawn(slow());
    let b = tokio::spawn(slow());
    gw.model
        .until(|log| log.running.load(std::sync::atomic::Ordering::SeqCst) == 2)
        .await;
    let resp = gw
        .client
        .post(format!("{}/acme/image", gw.direct))
        .header("authorization", format!("Key {}", c.key))
        .json(&json!({"units": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "concurrent_requests_limit");
    a.abort();
    b.abort();
    gw.assert_reconciled().await;
}
