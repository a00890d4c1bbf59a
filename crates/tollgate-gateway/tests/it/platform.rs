//! Gateway requests in the Platform API like any other request: request history, billing
//! events, usage and analytics (queue time and inference time apart).

use crate::harness::{TestGateway, USD};
use serde_json::{json, Value};
use tollgate_api::auth::mint_key;
use tollgate_core::ids::AccountId;
use tollgate_engine::AdminCmd;
use tollgate_store::Scope;

#[tokio::test]
async fn gateway_requests_are_in_the_request_history_billing_events_usage_and_analytics() {
    let gw = TestGateway::spawn().await;
    let c = gw.customer("ana", Some(10)).await;
    let admin = mint_key(
        Some(AccountId::parse("ana").unwrap()),
        Scope::Admin,
        "reports".into(),
        gw.engine.now(),
    );
    gw.engine
        .admin(AdminCmd::InsertKey(admin.record.clone()))
        .await
        .unwrap();
    let admin = admin.key();
    // The second waits in the queue behind the first on acme/small's one slot.
    gw.model.gate.send_replace(false);
    let first = gw
        .submit(&c, "acme/small", json!({"mode": "gated", "units": "2"}))
        .await;
    let second = gw.submit(&c, "acme/small", json!({"units": "1"})).await;
    gw.model.called(first["request_id"].as_str().unwrap()).await;
    gw.model.gate.send_replace(true);
    gw.wait(&c, &first).await;
    gw.wait(&c, &second).await;
    let ids = [&first, &second].map(|s| s["request_id"].as_str().unwrap().to_string());

    let get = |path: String| {
        let gw = &gw;
        let admin = admin.clone();
        async move {
            let resp = gw
                .client
                .get(format!("{}{path}", gw.api))
                .header("authorization", format!("Key {admin}"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{path}");
            resp.json::<Value>().await.unwrap()
        }
    };
    let history = get("/v1/models/requests/by-endpoint?endpoint_id=acme/small".into()).await;
    let listed: Vec<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["request_id"].as_str().unwrap())
        .collect();
    for id in &ids {
        assert!(listed.contains(&id.as_str()), "{id} not in {history}");
    }
    let events = get(format!("/v1/models/billing-events?request_id={}", ids[0])).await;
    assert_eq!(
        events["billing_events"][0]["request_id"],
        ids[0].as_str(),
        "{events}"
    );
    let usage = get("/v1/models/usage?endpoint_id=acme/small&expand=summary".into()).await;
    let summary = &usage["summary"][0];
    assert_eq!(summary["quantity"], json!(3.0), "{usage}");
    assert_eq!(summary["cost"], json!(0.03), "{usage}");
    let analytics = get("/v1/models/analytics?endpoint_id=acme/small\
         &expand=summary,request_count,success_count,p99_prepare_duration,p99_duration"
        .into())
    .await;
    let summary = &analytics["summary"][0];
    assert_eq!(summary["request_count"], 2, "{analytics}");
    assert_eq!(summary["success_count"], 2, "{analytics}");
    // The second request's time in the queue is its prepare duration, not its duration.
    assert!(
        summary["p99_prepare_duration"].as_f64().unwrap() > 0.0,
        "{analytics}"
    );
    assert!(summary["p99_duration"].is_number(), "{analytics}");
    assert_eq!(gw.balance(&c.account).await, 10 * USD - 3 * USD / 100);
    gw.assert_reconciled().await;
}
