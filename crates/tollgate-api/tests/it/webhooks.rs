//! Webhooks end to end, against real receivers on loopback: subscriptions refused with the
//! field named and nothing written; retries with growing backoff until a 2xx; signatures that
//! verify with the webhook's secret only; a retry window that ends in `failed`; redelivery with
//! the same event id; deletion that stops pending deliveries and refuses their redelivery; a
//! receiver that never answers while admission goes on, and while the other webhooks are sent
//! their events in the same round.

use crate::harness::{int, millis, TestApp};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Sha256;
use std::time::Duration;
use tollgate_api::testing::receiver::{Answer, Received, Receiver};
use tollgate_api::webhooks::deliver::max_delay;
use tollgate_api::webhooks::WebhookSettings;

const T0: i64 = 1_780_272_000_000; // 2026-06-01

async fn create(app: &TestApp, url: &str, events: Value) -> Value {
    let r = app
        .op(
            Method::POST,
            "/v1/admin/webhooks",
            json!({ "url": url, "events": events }),
        )
        .await;
    r.expect(201).clone()
}

async fn deliveries(app: &TestApp, webhook_id: &str) -> Vec<Value> {
    app.op_get(&format!("/v1/admin/webhooks/{webhook_id}/deliveries"))
        .await
        .expect(200)["deliveries"]
        .as_array()
        .expect("deliveries")
        .clone()
}

async fn delivery(app: &TestApp, webhook_id: &str, delivery_id: &str) -> Value {
    app.op_get(&format!(
        "/v1/admin/webhooks/{webhook_id}/deliveries/{delivery_id}"
    ))
    .await
    .expect(200)
    .clone()
}

/// `tollgate-signature`'s `(t, v1)`.
fn signature(r: &Received) -> (String, String) {
    let header = r.header("tollgate-signature");
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = Some(v.to_string()),
            Some(("v1", v)) => v1 = Some(v.to_string()),
            _ => panic!("unexpected part {part:?} in {header:?}"),
        }
    }
    (t.expect("t"), v1.expect("v1"))
}

/// Whether the request's signature is the HMAC-SHA256 of `"<t>.<body>"` keyed with `secret`.
fn verifies(r: &Received, secret: &str) -> bool {
    let (t, v1) = signature(r);
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(&r.body);
    let Ok(given) = hex::decode(&v1) else {
        return false;
    };
    mac.verify_slice(&given).is_ok()
}

/// Sends what is due until nothing is (an account's events go one at a time per webhook).
async fn drain(app: &TestApp) -> usize {
    let d = app.dispatcher();
    let mut sent = 0;
    loop {
        let n = d.run_once().await.unwrap().len();
        if n == 0 {
            return sent;
        }
        sent += n;
    }
}

/// An account with a paid purchase: events (purchase.succeeded, invoice.issued, ...).
async fn buy(app: &TestApp, username: &str, purchase_id: &str) {
    if app
        .op_get(&format!("/v1/admin/accounts/{username}"))
        .await
        .status
        == 404
    {
        app.create_account(username).await.expect(201);
    }
    app.purchase(username, purchase_id, "25.00", "paid")
        .await
        .expect(201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subscriptions_are_refused_naming_the_field_and_nothing_is_written() {
    let app = TestApp::spawn_with_webhooks(
        None,
        WebhookSettings {
            allowed_hosts: Some(vec!["hooks.example.com".into(), "127.0.0.1".into()]),
            ..WebhookSettings::default()
        },
    )
    .await;
    for (body, field, says) in [
        (
            json!({"url": "ftp://hooks.example.com/x", "events": ["*"]}),
            "url",
            "http or https",
        ),
        (
            json!({"url": "hooks.example.com/x", "events": ["*"]}),
            "url",
            "not a url",
        ),
        (
            json!({"url": "https://evil.example.com/x", "events": ["*"]}),
            "url",
            "evil.example.com",
        ),
        (
            json!({"url": "https://u:p@hooks.example.com/x", "events": ["*"]}),
            "url",
            "password",
        ),
        (
            json!({"url": "https://hooks.example.com/x", "events": ["balance.low", "balance.lower"]}),
            "events",
            "balance.lower",
        ),
        (
            json!({"url": "https://hooks.example.com/x", "events": []}),
            "events",
            "at least one",
        ),
        (
            json!({"url": "https://hooks.example.com/x", "events": ["*", "balance.low"]}),
            "events",
            "alone",
        ),
        (
            json!({"url": "https://hooks.example.com/x", "events": ["*"], "description": "a\u{7}b"}),
            "description",
            "control",
        ),
        (json!({"events": ["*"]}), "url", "url"),
    ] {
        let r = app
            .op(Method::POST, "/v1/admin/webhooks", body.clone())
            .await;
        let e = r.expect_error(400, "validation_error");
        assert_eq!(e["field"], field, "{body}: {}", r.text);
        assert!(r.message().contains(says), "{body}: {}", r.text);
    }
    let list = app.op_get("/v1/admin/webhooks").await;
    assert_eq!(list.expect(200)["webhooks"], json!([]), "nothing written");

    // A good one: its secret in the answer only.
    let made = create(
        &app,
        "https://HOOKS.example.com/billing",
        json!(["invoice.issued", "balance.low"]),
    )
    .await;
    let id = made["webhook_id"].as_str().unwrap();
    let secret = made["secret"].as_str().unwrap();
    assert!(
        id.starts_with("wh_") && secret.starts_with("whsec_") && secret.len() == 70,
        "{made}"
    );
    assert_eq!(made["events"], json!(["invoice.issued", "balance.low"]));
    let list = app.op_get("/v1/admin/webhooks").await;
    let listed = &list.expect(200)["webhooks"];
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(!list.text.contains(secret), "lists never show the secret");
    let one = app.op_get(&format!("/v1/admin/webhooks/{id}")).await;
    assert_eq!(one.expect(200)["url"], "https://HOOKS.example.com/billing");
    assert!(!one.text.contains(secret));
    // A customer key cannot manage webhooks.
    let customer = app.customer("acme", Some(("5.00", "free"))).await;
    let r = app
        .raw(
            Method::GET,
            "/v1/admin/webhooks",
            Some(&customer.key),
            crate::harness::Body::None,
        )
        .await;
    r.expect_error(403, "authorization_error");

    // Deleted: gone from the list and answers 404, a second delete too.
    let path = format!("/v1/admin/webhooks/{id}");
    app.raw(
        Method::DELETE,
        &path,
        Some(&app.operator_key),
        crate::harness::Body::None,
    )
    .await
    .expect(204);
    app.op_get(&path).await.expect_error(404, "not_found");
    app.raw(
        Method::DELETE,
        &path,
        Some(&app.operator_key),
        crate::harness::Body::None,
    )
    .await
    .expect_error(404, "not_found");
    assert_eq!(
        app.op_get("/v1/admin/webhooks").await.expect(200)["webhooks"],
        json!([])
    );
    app.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_fails_three_times_gets_the_event_on_the_fourth_attempt_after_growing_delays(
) {
    let settings = WebhookSettings::default();
    let app = TestApp::spawn_with_webhooks(Some(T0), settings.clone()).await;
    let receiver = Receiver::start().await;
    receiver.script([
        Answer::Status(500),
        Answer::Status(500),
        Answer::Status(503),
    ]);
    let hook = create(
        &app,
        &receiver.url("/events"),
        json!(["purchase.succeeded"]),
    )
    .await;
    let id = hook["webhook_id"].as_str().unwrap();
    buy(&app, "acme", "p-1").await;
    let listed = deliveries(&app, id).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let dlv = listed[0]["delivery_id"].as_str().unwrap().to_string();
    assert_eq!(listed[0]["status"], "pending");
    assert_eq!(millis(&listed[0]["next_attempt_at"]), T0, "due at once");

    let dispatcher = app.dispatcher();
    let mut last_at = None;
    for attempt in 1..=4u32 {
        let sent = dispatcher.run_once().await.unwrap();
        assert_eq!(sent.len(), 1, "attempt {attempt}: one delivery was due");
        let d = delivery(&app, id, &dlv).await;
        assert_eq!(int(&d["attempts"]), i64::from(attempt), "{d}");
        if attempt < 4 {
            assert_eq!(d["status"], "pending", "{d}");
            let due = millis(&d["next_attempt_at"]);
            let at = app.now_ms();
            // Full jitter: somewhere up to base × 2^(attempt−1) after the attempt.
            let most = i64::try_from(max_delay(settings.retry_base, attempt).as_millis()).unwrap();
            assert!(
                due >= at && due - at <= most,
                "attempt {attempt}: due {due}, at {at}, most {most}"
            );
            // Nothing is sent before it is due.
            if due > at {
                assert!(
                    dispatcher.run_once().await.unwrap().is_empty(),
                    "not due yet"
                );
            }
            // Move the clock to the retry (at least a millisecond on).
            app.set_now(due.max(at + 1));
        } else {
            assert_eq!(d["status"], "delivered", "{d}");
            assert_eq!(d["next_attempt_at"], Value::Null);
            assert_eq!(int(&d["last_status_code"]), 200);
            assert_eq!(millis(&d["delivered_at"]), app.now_ms());
        }
        last_at = Some(app.now_ms());
    }
    let d = delivery(&app, id, &dlv).await;
    let log = d["attempt_log"].as_array().unwrap();
    let codes: Vec<i64> = log.iter().map(|a| int(&a["status_code"])).collect();
    assert_eq!(codes, [500, 500, 503, 200], "{d}");
    let times: Vec<i64> = log.iter().map(|a| millis(&a["at"])).collect();
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "the attempts' times grow: {times:?}"
    );
    assert_eq!(times[0], T0);
    assert_eq!(times[3], last_at.unwrap());
    assert_eq!(
        log.iter().map(|a| int(&a["attempt"])).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    // The receiver got the same event four times.
    let got = receiver.got();
    assert_eq!(got.len(), 4);
    let ids: Vec<String> = got
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_string())
        .collect();
    assert!(ids.iter().all(|i| i == &ids[0]), "{ids:?}");
    assert_eq!(d["event_id"], ids[0].as_str());
    assert_eq!(
        d["event"],
        got[3].json(),
        "the detail shows the body as sent"
    );
    app.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signature_verifies_with_the_webhooks_secret_and_fails_with_another() {
    let app = TestApp::spawn_at(T0).await;
    let receiver = Receiver::start().await;
    let a = create(&app, &receiver.url("/a"), json!(["*"])).await;
    let b = create(&app, &receiver.url("/b"), json!(["purchase.succeeded"])).await;
    buy(&app, "acme", "p-1").await;
    drain(&app).await;
    let got = receiver.got();
    let to_a: Vec<&Received> = got.iter().filter(|r| r.path == "/a").collect();
    let to_b: Vec<&Received> = got.iter().filter(|r| r.path == "/b").collect();
    assert!(to_a.len() >= 2, "every event of the purchase: {got:?}");
    assert_eq!(to_b.len(), 1);
    let (secret_a, secret_b) = (a["secret"].as_str().unwrap(), b["secret"].as_str().unwrap());
    for r in &to_a {
        assert!(verifies(r, secret_a), "{:?}", r.headers);
        assert!(!verifies(r, secret_b), "another webhook's secret fails");
    }
    assert!(verifies(to_b[0], secret_b) && !verifies(to_b[0], secret_a));
    // The timestamp is the attempt's (the engine's clock), in seconds.
    assert_eq!(signature(to_b[0]).0, (T0 / 1000).to_string());
    // A body changed by one byte fails.
    let mut tampered = to_b[0].clone();
    tampered.body = tampered
        .body
        .iter()
        .map(|b| if *b == b'5' { b'6' } else { *b })
        .collect::<Vec<u8>>()
        .into();
    assert!(!verifies(&tampered, secret_b));

    // The headers and the body.
    let r = to_b[0];
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(
        r.header("user-agent"),
        concat!("tollgate/", env!("CARGO_PKG_VERSION"))
    );
    let body = r.json();
    assert_eq!(r.header("tollgate-event-id"), body["id"].as_str().unwrap());
    assert!(body["id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(body["type"], "purchase.succeeded");
    assert_eq!(body["username"], "acme");
    assert_eq!(millis(&body["created_at"]), T0);
    assert_eq!(body["data"]["purchase_id"], "p-1");
    assert_eq!(int(&body["data"]["amount_nano_usd"]), 25_000_000_000);
    assert_eq!(body["data"]["amount_usd"], json!(25.0));
    assert_eq!(body["data"]["balance_usd"], json!(25.0));
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 5, "{body}");
    // The invoice the purchase issued, named by its number.
    let issued = to_a
        .iter()
        .map(|r| r.json())
        .find(|b| b["type"] == "invoice.issued")
        .expect("invoice.issued");
    assert!(
        issued["data"]["number"]
            .as_str()
            .unwrap()
            .starts_with("TG-2026-"),
        "{issued}"
    );
    assert_eq!(issued["data"]["total_usd"], json!(25.0));
    app.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_unacknowledged_for_its_window_fails_and_a_redelivery_sends_it_again() {
    let app = TestApp::spawn_with_webhooks(
        Some(T0),
        WebhookSettings {
            retry_for: Duration::from_secs(60),
            ..WebhookSettings::default()
        },
    )
    .await;
    let receiver = Receiver::start().await;
    receiver.otherwise(Answer::Status(500));
    let hook = create(
        &app,
        &receiver.url("/events"),
        json!(["purchase.succeeded"]),
    )
    .await;
    let id = hook["webhook_id"].as_str().unwrap();
    buy(&app, "acme", "p-1").await;
    let d = app.dispatcher();
    d.run_once().await.unwrap();
    let dlv = deliveries(&app, id).await[0]["delivery_id"]
        .as_str()
        .unwrap()
        .to_string();
    // The window ends a minute after the event: the attempt then gives up.
    app.set_now(T0 + 60_000);
    assert_eq!(d.run_once().await.unwrap().len(), 1);
    let failed = delivery(&app, id, &dlv).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["next_attempt_at"], Value::Null);
    app.set_now(T0 + 3_600_000);
    assert!(
        d.run_once().await.unwrap().is_empty(),
        "a failed delivery is not tried again"
    );

    // Redelivered: due now, tried with a new window; acknowledged this time.
    receiver.otherwise(Answer::Status(204));
    let r = app
        .raw(
            Method::POST,
            &format!("/v1/admin/webhooks/{id}/deliveries/{dlv}/redeliver"),
            Some(&app.operator_key),
            crate::harness::Body::None,
        )
        .await;
    let queued = r.expect(202);
    assert_eq!(queued["status"], "pending");
    assert_eq!(millis(&queued["next_attempt_at"]), T0 + 3_600_000);
    assert_eq!(d.run_once().await.unwrap().len(), 1);
    let done = delivery(&app, id, &dlv).await;
    assert_eq!(
        (done["status"].as_str(), int(&done["attempts"])),
        (Some("delivered"), 3),
        "{done}"
    );
    let got = receiver.got();
    assert_eq!(got.len(), 3);
    assert!(
        got.iter().all(|r| r.json()["id"] == got[0].json()["id"]),
        "one event id"
    );
    // Unknown deliveries and malformed ids.
    app.op_get(&format!("/v1/admin/webhooks/{id}/deliveries/dlv_999999"))
        .await
        .expect_error(404, "not_found");
    let bad = app
        .op_get(&format!("/v1/admin/webhooks/{id}/deliveries/evt_1"))
        .await;
    assert_eq!(
        bad.expect_error(400, "validation_error")["field"],
        "delivery_id"
    );
    app.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_webhook_is_sent_nothing_pending_and_a_redelivery_repeats_the_event_id() {
    let app = TestApp::spawn_at(T0).await;
    let receiver = Receiver::start().await;
    let kept = create(&app, &receiver.url("/kept"), json!(["purchase.succeeded"])).await;
    let gone = create(&app, &receiver.url("/gone"), json!(["*"])).await;
    let (kept, gone) = (
        kept["webhook_id"].as_str().unwrap().to_string(),
        gone["webhook_id"].as_str().unwrap().to_string(),
    );
    buy(&app, "acme", "p-1").await;
    let pending = deliveries(&app, &gone).await;
    assert!(!pending.is_empty(), "pending for the one to delete");
    app.raw(
        Method::DELETE,
        &format!("/v1/admin/webhooks/{gone}"),
        Some(&app.operator_key),
        crate::harness::Body::None,
    )
    .await
    .expect(204);
    // Its deliveries cannot be queued again: 404, and none is pending.
    for d in &pending {
        let dlv = d["delivery_id"].as_str().unwrap();
        app.raw(
            Method::POST,
            &format!("/v1/admin/webhooks/{gone}/deliveries/{dlv}/redeliver"),
            Some(&app.operator_key),
            crate::harness::Body::None,
        )
        .await
        .expect_error(404, "not_found");
    }
    let stored = app
        .engine
        .read({
            let gone = gone.clone();
            move |r| {
                r.webhook_deliveries(&tollgate_store::DeliveriesQuery {
                    webhook_id: gone,
                    before_seq: None,
                    limit: 100,
                })
            }
        })
        .await
        .unwrap();
    assert_eq!(stored.len(), pending.len());
    assert!(
        stored
            .iter()
            .all(|d| d.status == tollgate_store::DeliveryStatus::Failed
                && d.next_attempt_at.is_none()),
        "{stored:?}"
    );
    let d = app.dispatcher();
    d.run_once().await.unwrap();
    let got = receiver.got();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].path, "/kept", "nothing for the deleted webhook");
    app.op_get(&format!("/v1/admin/webhooks/{gone}/deliveries"))
        .await
        .expect_error(404, "not_found");
    // Later events are not delivered to it either.
    buy(&app, "acme", "p-2").await;
    d.run_once().await.unwrap();
    assert!(receiver.got().iter().all(|r| r.path == "/kept"));

    // The first delivery, delivered, sent again with the same id.
    let listed = deliveries(&app, &kept).await;
    assert_eq!(listed.len(), 2);
    let first = listed.last().unwrap();
    assert_eq!(first["status"], "delivered");
    let dlv = first["delivery_id"].as_str().unwrap();
    app.raw(
        Method::POST,
        &format!("/v1/admin/webhooks/{kept}/deliveries/{dlv}/redeliver"),
        Some(&app.operator_key),
        crate::harness::Body::None,
    )
    .await
    .expect(202);
    assert_eq!(d.run_once().await.unwrap().len(), 1);
    let got = receiver.got();
    assert_eq!(got.len(), 3);
    assert_eq!(
        got[2].json()["id"],
        got[0].json()["id"],
        "the same event id"
    );
    assert_eq!(got[2].body, got[0].body, "the same event");
    assert_eq!(int(&delivery(&app, &kept, dlv).await["attempts"]), 2);
    app.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_does_not_slow_admission() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    receiver.otherwise(Answer::Hang);
    create(&app, &receiver.url("/hang"), json!(["*"])).await;
    let _dispatcher = app.spawn_dispatcher();
    let customer = app.customer("acme", Some(("100.00", "paid"))).await;
    // The purchase's events are on their way, and their receiver holds them.
    receiver.wait_for(1).await;
    for _ in 0..20 {
        let id = app.submit_ok(&customer.key, "fal-ai/flux/dev").await;
        app.start(&id, None).await.expect(200);
        app.complete(
            &id,
            json!({"status_code": 200, "output": crate::harness::image(1024, 1024)}),
        )
        .await
        .expect(200);
    }
    // The deliveries are still in flight (nothing answered them).
    let metrics = app
        .raw(Method::GET, "/metrics", None, crate::harness::Body::None)
        .await;
    let in_flight = metrics
        .text
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_webhook_deliveries_in_flight "))
        .expect("the in-flight gauge");
    assert_ne!(in_flight, "0", "{}", metrics.text);
    app.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_holds_its_share_of_the_slots_and_the_others_go_in_the_same_round(
) {
    // Four slots: a quarter, one, for each webhook.
    let app = TestApp::spawn_with_webhooks(
        Some(T0),
        WebhookSettings {
            max_in_flight: 4,
            ..WebhookSettings::default()
        },
    )
    .await;
    let dead = Receiver::start().await;
    dead.otherwise(Answer::Hang);
    let healthy = Receiver::start().await;
    create(&app, &dead.url("/dead"), json!(["*"])).await;
    // A backlog for the dead receiver, due before anything else: six accounts' events.
    for i in 0..6 {
        buy(&app, &format!("early{i}"), "p-1").await;
    }
    let hook = create(&app, &healthy.url("/ok"), json!(["purchase.succeeded"])).await;
    buy(&app, "late", "p-1").await;
    assert_eq!(
        deliveries(&app, hook["webhook_id"].as_str().unwrap())
            .await
            .len(),
        1
    );

    // The first round sends the healthy webhook's delivery beside one of the dead one's.
    let d = app.dispatcher();
    assert_eq!(d.round().await.unwrap(), 2, "one per webhook");
    let got = healthy.wait_for(1).await;
    assert_eq!(got[0].json()["username"], "late");
    assert_eq!(got[0].json()["type"], "purchase.succeeded");
    dead.wait_for(1).await;
    // The dead receiver holds its one slot; the free ones are not given to its backlog.
    assert_eq!(d.round().await.unwrap(), 0);
    assert_eq!(dead.got().len(), 1);
    app.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_no_longer_allowed_is_sent_nothing() {
    let app = TestApp::spawn_at(T0).await;
    let receiver = Receiver::start().await;
    let hook = create(
        &app,
        &receiver.url("/events"),
        json!(["purchase.succeeded"]),
    )
    .await;
    let id = hook["webhook_id"].as_str().unwrap();
    buy(&app, "acme", "p-1").await;
    // A server whose allowed_hosts no longer names the receiver's host.
    let narrowed = tollgate_api::webhooks::deliver::Dispatcher::new(
        app.engine.clone(),
        std::sync::Arc::new(WebhookSettings {
            allowed_hosts: Some(vec!["hooks.example.com".into()]),
            ..WebhookSettings::default()
        }),
    );
    assert_eq!(narrowed.run_once().await.unwrap().len(), 1);
    assert!(receiver.got().is_empty(), "nothing sent");
    let d = &deliveries(&app, id).await[0];
    assert_eq!(
        d["status"], "pending",
        "retried: the setting may change back"
    );
    assert!(
        d["last_error"].as_str().unwrap().contains("allowed_hosts"),
        "{d}"
    );
    app.assert_reconciled().await;
}

/// Usage of `usd` on `fal-ai/flux/dev` (0.025 USD a megapixel), reported now.
async fn spend(app: &TestApp, username: &str, usd: i64) {
    app.usage_events(json!([{
        "event_id": crate::harness::new_id(),
        "endpoint_id": "fal-ai/flux/dev",
        "username": username,
        "timestamp": crate::harness::rfc3339(app.now_ms()),
        "status_code": 200,
        "billable_units": (usd * 40).to_string(),
    }]))
    .await
    .expect(200);
}

/// Each billing event reaches a receiver subscribed to `*` once, in the order of its causes,
/// and only when its cause happened: `balance.low` when the balance crosses below the
/// account's level (not again while it stays below, again after it went back above),
/// `account.unlocked` when credits lift the lock and `account.locked` when usage brings it
/// back, `purchase.succeeded` per purchase, `invoice.issued` per paid purchase (naming the
/// invoice's number), `credits.expiring` once, by the sweep, for credits that expire within a
/// week.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_type_reaches_the_receiver_when_its_cause_commits() {
    let app = TestApp::spawn_at(T0).await;
    let receiver = Receiver::start().await;
    create(&app, &receiver.url("/all"), json!(["*"])).await;
    app.create_account("acme").await.expect(201);
    app.set_pricing("acme", json!({ "low_balance_usd": "5" }))
        .await
        .expect(200);
    let types = |from: usize| -> Vec<String> {
        receiver.got()[from..]
            .iter()
            .map(|r| r.json()["type"].as_str().unwrap().to_string())
            .collect()
    };
    // 10 USD: the new account (locked at its zero balance) unlocks.
    app.purchase("acme", "p1", "10.00", "paid")
        .await
        .expect(201);
    drain(&app).await;
    assert_eq!(
        types(0),
        ["purchase.succeeded", "invoice.issued", "account.unlocked"]
    );
    let invoices = app.op_get("/v1/admin/invoices").await.expect(200).clone();
    let issued = receiver.got()[1].json();
    assert_eq!(
        issued["data"]["number"], invoices["invoices"][0]["number"],
        "{issued}"
    );
    assert_eq!(int(&issued["data"]["total_nano_usd"]), 10_000_000_000);
    // 6 USD spent: below 5 once; 1 more: still below, nothing.
    spend(&app, "acme", 6).await;
    spend(&app, "acme", 1).await;
    drain(&app).await;
    assert_eq!(types(3), ["balance.low"]);
    assert_eq!(
        int(&receiver.got()[3].json()["data"]["balance_nano_usd"]),
        4_000_000_000
    );
    // Back above (3 + 4 = 7), then below again (7 - 3 = 4).
    app.purchase("acme", "p2", "3.00", "paid").await.expect(201);
    spend(&app, "acme", 3).await;
    drain(&app).await;
    assert_eq!(
        types(4),
        ["purchase.succeeded", "invoice.issued", "balance.low"]
    );
    // Free credits that expire in three days: noticed by the next sweep, once.
    let expires_at = crate::harness::rfc3339(T0 + 3 * 86_400_000);
    app.op(
        Method::POST,
        "/v1/admin/accounts/acme/purchases",
        json!({ "purchase_id": "p3", "amount_usd": "2.00", "kind": "free",
                "expires_at": expires_at }),
    )
    .await
    .expect(201);
    drain(&app).await;
    assert_eq!(types(7), ["purchase.succeeded"]);
    app.advance(1_000).await;
    app.advance(1_000).await;
    drain(&app).await;
    assert_eq!(types(8), ["credits.expiring"]);
    let expiring = receiver.got()[8].json();
    assert_eq!(expiring["data"]["purchase_id"], "p3");
    assert_eq!(expiring["data"]["expires_at"], expires_at);
    assert_eq!(int(&expiring["data"]["remaining_nano_usd"]), 2_000_000_000);
    // Usage past the balance (6 left, above the level again; 10 spent): below, and locked.
    spend(&app, "acme", 10).await;
    drain(&app).await;
    assert_eq!(types(9), ["balance.low", "account.locked"]);
    // Every event once, with an id of its own.
    let ids: std::collections::BTreeSet<String> = receiver
        .got()
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 11);
    app.assert_reconciled().await;
}
