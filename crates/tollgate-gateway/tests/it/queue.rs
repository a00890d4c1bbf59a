//! fal's queue API end to end: submissions answered by the stand-in, billed once.

use crate::harness::{answered, answers, TestGateway, USD};
use serde_json::{json, Value};

/// One image at 0.01 USD.
const IMAGE: i64 = USD / 100;

#[tokio::test]
async fn a_request_is_answered_with_the_model_servers_output_and_billed_its_units() {
    let gw = TestGateway::spawn().await;
    let c = gw.customer("ana", Some(10)).await;
    let submitted = gw
        .submit(&c, "acme/image", json!({"prompt": "a cat", "units": "3"}))
        .await;
    assert_eq!(submitted["status"], "IN_QUEUE");
    assert_eq!(submitted["request_id"], submitted["gateway_request_id"]);
    let id = submitted["request_id"].as_str().unwrap();
    for url in ["response_url", "status_url", "cancel_url"] {
        assert!(
            submitted[url]
                .as_str()
                .unwrap()
                .starts_with(&format!("{}/acme/image/requests/{id}", gw.queue)),
            "{url}: {submitted}"
        );
    }
    let done = gw.wait(&c, &submitted).await;
    assert_eq!(done["metrics"]["cost_nano_usd"], 3 * IMAGE, "{done}");
    let (status, headers, body) = gw.result(&c, &submitted).await;
    assert_eq!(status, 200);
    assert_eq!(body["echo"]["prompt"], "a cat");
    assert_eq!(
        headers["x-tollgate-cost-nano-usd"],
        (3 * IMAGE).to_string().as_str()
    );
    assert_eq!(gw.charged(&c.account).await, (3 * IMAGE, 1));
    assert_eq!(gw.balance(&c.account).await, 10 * USD - 3 * IMAGE);
    assert_eq!(gw.model.calls_of(id), 1);
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn without_a_units_header_the_output_is_measured() {
    let gw = TestGateway::spawn().await;
    let c = gw.customer("ana", Some(10)).await;
    // The stand-in answers one image.
    let submitted = gw
        .submit(&c, "acme/image", json!({"prompt": "a dog"}))
        .await;
    let done = gw.wait(&c, &submitted).await;
    assert_eq!(done["metrics"]["cost_nano_usd"], IMAGE);
    assert_eq!(gw.balance(&c.account).await, 10 * USD - IMAGE);
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn a_request_retried_three_times_is_billed_once() {
    let gw = TestGateway::spawn().await;
    let c = gw.customer("ana", Some(10)).await;
    let submitted = gw
        .submit(
            &c,
            "acme/image",
            json!({"mode": "fail_first", "fails": 3, "units": "2"}),
        )
        .await;
    let id = submitted["request_id"].as_str().unwrap();
    let done = gw.wait(&c, &submitted).await;
    assert_eq!(gw.model.calls_of(id), 4, "three 503s, then the answer");
    assert_eq!(done["metrics"]["cost_nano_usd"], 2 * IMAGE);
    assert_eq!(gw.result(&c, &submitted).await.0, 200);
    assert_eq!(gw.charged(&c.account).await, (2 * IMAGE, 1));
    assert_eq!(gw.balance(&c.account).await, 10 * USD - 2 * IMAGE);
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn a_request_that_runs_out_of_attempts_completes_with_the_error_unbilled() {
    let gw = TestGateway::spawn().await;
    let c = gw.customer("ana", Some(10)).await;
    let submitted = gw
        .submit(&c, "acme/image", json!({"mode": "status", "status": 503}))
        .await;
    let id = submitted["request_id"].as_str().unwrap();
    let done = gw.wait(&c, &submitted).await;
    assert_eq!(
        gw.model.calls_of(id),
        10,
        "fal's gateway makes ten attempts"
    );
    assert_eq!(done["metrics"]["cost_nano_usd"], 0);
    assert_eq!(gw.result(&c, &submitted).await.0, 503);
    assert_eq!(gw.charged(&c.account).await, (0, 0));
    assert_eq!(gw.balance(&c.account).await, 10 * USD);
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn no_retry_and_needs_retry_false_make_one_attempt() {
    let gw = TestGateway::spawn().await;
    let c = gw.customer("ana", Some(10)).await;
    let told = gw
        .submit(
            &c,
            "acme/image",
            json!({"mode": "status", "status": 503, "needs_retry": "0"}),
        )
        .await;
    let resp = gw
        .client
        .post(format!("{}/acme/image", gw.queue))
        .header("authorization", format!("Key {}", c.key))
        .header("x-fal-no-retry", "1")
        .json(&json!({"mode": "status", "status": 503}))
        .send()
        .await
        .unwrap();
    let asked: Value = resp.json().await.unwrap();
    for submitted in [&told, &asked] {
        gw.wait(&c, submitted).await;
        let id = submitted["request_id"].as_str().unwrap();
        assert_eq!(gw.model.calls_of(id), 1, "{submitted}");
        assert_eq!(gw.result(&c, submitted).await.0, 503);
    }
    assert_eq!(gw.balance(&c.account).await, 10 * USD);
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn a_server_error_is_not_retried_nor_billed_and_a_4xx_is_the_callers() {
    let gw = TestGateway::spawn().await;
    let c = gw.customer("ana", Some(10)).await;
    let failed = gw
        .submit(&c, "acme/image", json!({"mode": "status", "status": 500}))
        .await;
    let refused = gw
        .submit(&c, "acme/image", json!({"mode": "status", "status": 422}))
        .await;
    for (submitted, status) in [(&failed, 500), (&refused, 422)] {
        let done = gw.wait(&c, submitted).await;
        assert_eq!(done["metrics"]["cost_nano_usd"], 0, "{done}");
        let id = submitted["request_id"].as_str().unwrap();
        assert_eq!(gw.model.calls_of(id), 1);
        let (got, _, body) = gw.result(&c, submitted).await;
        assert_eq!(got, status);
        assert_eq!(body["detail"], "as asked");
    }
    assert_eq!(gw.balance(&c.account).await, 10 * USD);
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn deferred_units_are_billed_exactly_once_however_often_they_are_posted() {
    let gw = TestGateway::spawn().await;
    let c = gw.customer("ana", Some(10)).await;
    let mut answers = answers(&gw);
    let submitted = gw
        .submit(&c, "acme/image", json!({"mode": "deferred"}))
        .await;
    let id = submitted["request_id"].as_str().unwrap();
    // Answered, and in progress until the units come.
    answered(&mut answers, id).await;
    let (code, _, body) = gw
        .get(&c.key, submitted["status_url"].as_str().unwrap())
        .await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (code, body["status"].as_str()),
        (202, Some("IN_PROGRESS")),
        "{body}"
    );
    let (first, billed) = gw.post_units(id, "7").await;
    assert_eq!(first, 200, "{billed}");
    // A second post answers the first billing, and bills nothing more.
    let (again, replay) = gw.post_units(id, "9").await;
    assert_eq!(again, 200);
    assert_eq!(replay["cost_subtotal_nano_usd"], 7 * IMAGE, "{replay}");
    let done = gw.wait(&c, &submitted).await;
    assert_eq!(done["metrics"]["cost_nano_usd"], 7 * IMAGE);
    assert_eq!(gw.charged(&c.account).await, (7 * IMAGE, 1));
    assert_eq!(gw.balance(&c.account).await, 10 * USD - 7 * IMAGE);
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn another_accounts_key_gets_404_on_a_request() {
    let gw = TestGateway::spawn().await;
    let ana = gw.customer("ana", Some(10)).await;
    let bob = gw.customer("bob", Some(10)).await;
    let submitted = gw.submit(&ana, "acme/image", json!({"units": "1"})).await;
    gw.wait(&ana, &submitted).await;
    for url in ["status_url", "response_url"] {
        let (status, _, _) = gw.get(&bob.key, submitted[url].as_str().unwrap()).await;
        assert_eq!(status, 404, "{url}");
    }
    assert_eq!(gw.cancel(&bob.key, &submitted).await.0, 404);
    // And the right key under another endpoint's name is not found either.
    let id = submitted["request_id"].as_str().unwrap();
    let (status, _, _) = gw
        .get(
            &ana.key,
            &format!("{}/acme/gpu/requests/{id}/status", gw.queue),
        )
        .await;
    assert_eq!(status, 404);
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn bad_submissions_get_fals_error_and_store_nothing() {
    let gw = TestGateway::spawn().await;
    let c = gw.customer("ana", Some(10)).await;
    let (status, body) = gw.submit_raw(&c.key, "acme/nothing", "{}").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = gw.submit_raw(&c.key, "acme/image", "not json").await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("body")),
        "{body}"
    );
    let (status, body) = gw
        .submit_raw(&c.key, "acme/image?fal_webhook=ftp://example.com/x", "{}")
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("fal_webhook")),
        "{body}"
    );
    let (status, _) = gw.submit_raw("nobody:secret", "acme/image", "{}").await;
    assert_eq!(status, 401);
    // Nothing was queued.
    let now = gw.engine.now();
    let queued = gw
        .engine
        .read(move |r| {
            r.gateway_candidates(
                &tollgate_core::ids::EndpointId::parse("acme/image").unwrap(),
                now,
                10,
                10,
            )
        })
        .await
        .unwrap();
    assert!(queued.is_empty(), "{queued:?}");
    assert_eq!(gw.model.calls.lock().unwrap().len(), 0);
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn an_account_out_of_credits_is_refused_at_submit_and_spends_nothing() {
    let gw = TestGateway::spawn().await;
    let broke = gw.customer("broke", None).await;
    let (status, body) = gw.submit_raw(&broke.key, "acme/image", "{}").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["type"], "account_locked");
    assert_eq!(gw.balance(&broke.account).await, 0);
    assert_eq!(gw.model.calls.lock().unwrap().len(), 0);
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn a_request_whose_hold_cannot_be_covered_when_its_turn_comes_completes_unbilled_with_402() {
    let gw = TestGateway::spawn().await;
    // 0.005 USD: less than one image's hold.
    let c = gw.customer("thin", None).await;
    gw.engine
        .execute(tollgate_core::machine::Op::Purchase {
            account: tollgate_core::ids::AccountId::parse("thin").unwrap(),
            purchase_id: tollgate_core::ids::PurchaseId::parse("buy-half-cent").unwrap(),
            amount: tollgate_core::Nanos(IMAGE / 2),
            paid: true,
            expires_at: None,
        })
        .await
        .unwrap()
        .unwrap();
    let submitted = gw.submit(&c, "acme/image", json!({})).await;
    let done = gw.wait(&c, &submitted).await;
    assert_eq!(done["metrics"]["cost_nano_usd"], 0);
    let (status, _, body) = gw.result(&c, &submitted).await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"]["type"], "insufficient_credits");
    assert_eq!(
        gw.model.calls.lock().unwrap().len(),
        0,
        "the model server was never called"
    );
    assert_eq!(gw.balance(&c.account).await, IMAGE / 2);
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn cancelling_a_queued_or_a_running_request_bills_nothing() {
    let gw = TestGateway::spawn().await;
    let c = gw.customer("ana", Some(200)).await;
    // One slot on acme/small: the slow request runs, the next waits.
    let running = gw
        .submit(&c, "acme/small", json!({"mode": "slow", "ms": 60_000}))
        .await;
    let queued = gw.submit(&c, "acme/small", json!({"units": "1"})).await;
    let running_id = running["request_id"].as_str().unwrap().to_string();
    gw.model.called(&running_id).await;
    for submitted in [&queued, &running] {
        let (status, body) = gw.cancel(&c.key, submitted).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (202, Some("CANCELLATION_REQUESTED"))
        );
        let done = gw.wait(&c, submitted).await;
        assert_eq!(done["metrics"]["cost_nano_usd"], 0);
        let (status, _, _) = gw.result(&c, submitted).await;
        assert_eq!(status, 400);
    }
    assert_eq!(gw.model.calls_of(queued["request_id"].as_str().unwrap()), 0);
    // The running call was ended.
    gw.model
        .until(|log| log.ended_early.load(std::sync::atomic::Ordering::SeqCst) > 0)
        .await;
    // A second cancel: already completed.
    let (status, body) = gw.cancel(&c.key, &running).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (400, Some("ALREADY_COMPLETED"))
    );
    assert_eq!(gw.balance(&c.account).await, 200 * USD);
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn an_account_at_its_concurrency_limit_queues_instead_of_failing() {
    let gw = TestGateway::spawn().await;
    // 5 USD paid: the catalog's first tier, two requests at once.
    let c = gw.customer("ana", Some(5)).await;
    let mut all = Vec::new();
    for _ in 0..6 {
        all.push(
            gw.submit(
                &c,
                "acme/image",
                json!({"mode": "slow", "ms": 50, "units": "1"}),
            )
            .await,
        );
    }
    for submitted in &all {
        let done = gw.wait(&c, submitted).await;
        assert_eq!(done["metrics"]["cost_nano_usd"], IMAGE);
    }
    assert_eq!(
        gw.model
            .most_at_once
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    assert_eq!(gw.charged(&c.account).await, (6 * IMAGE, 6));
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn one_accounts_burst_does_not_hold_back_anothers_requests() {
    let gw = TestGateway::spawn().await;
    let big = gw.customer("big", Some(1000)).await;
    let small = gw.customer("small", Some(1000)).await;
    // Every request waits until both accounts' are queued: the first 8 (the slots) in the
    // model server, the others in the queue.
    gw.model.gate.send_replace(false);
    let mut burst = Vec::new();
    for _ in 0..500 {
        burst.push(
            gw.submit(&big, "acme/image", json!({"mode": "gated", "units": "1"}))
                .await,
        );
    }
    let mut few = Vec::new();
    for _ in 0..5 {
        few.push(
            gw.submit(&small, "acme/image", json!({"mode": "gated", "units": "1"}))
                .await,
        );
    }
    gw.model.gate.send_replace(true);
    for submitted in &few {
        gw.wait(&small, submitted).await;
    }
    // When the last of the five is done, most of the burst still waits.
    let answered = burst
        .iter()
        .filter(|s| gw.model.calls_of(s["request_id"].as_str().unwrap()) > 0)
        .count();
    // The accounts take turns: the five go with the first rounds after the slots free up.
    assert!(
        answered < 50,
        "{answered} of the burst ran before five requests of another account"
    );
    for submitted in &burst {
        gw.wait(&big, submitted).await;
    }
    assert_eq!(gw.charged(&big.account).await, (500 * IMAGE, 500));
    assert_eq!(gw.charged(&small.account).await, (5 * IMAGE, 5));
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn queue_time_is_never_billed() {
    let gw = TestGateway::spawn().await;
    let c = gw.customer("ana", Some(100)).await;
    // acme/small has one slot: the second request waits for the first (200 ms).
    let first = gw
        .submit(
            &c,
            "acme/small",
            json!({"mode": "slow", "ms": 200, "units": "1"}),
        )
        .await;
    let waited = gw
        .submit(&c, "acme/gpu", json!({"mode": "slow", "ms": 1}))
        .await;
    gw.wait(&c, &first).await;
    let done = gw.wait(&c, &waited).await;
    // Billed GPU-seconds are the call's own time, not its time in the queue.
    let id = tollgate_core::ids::RequestId::parse(waited["request_id"].as_str().unwrap()).unwrap();
    let request = gw
        .engine
        .read(move |r| r.request(&id))
        .await
        .unwrap()
        .unwrap();
    let inference_ms = request.inference_ms.unwrap();
    let cost = done["metrics"]["cost_nano_usd"].as_i64().unwrap();
    // 0.000525 USD per second = 525 nano-USD per ms.
    assert_eq!(cost, inference_ms * 525, "{done}");
    assert!(request.queue_ms.is_some());
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn acknowledged_requests_complete_after_a_restart_and_are_billed_once() {
    let gw = TestGateway::spawn().await;
    let c = gw.customer("ana", Some(100)).await;
    let mut all = Vec::new();
    // The first runs (until the gate opens), the rest wait behind it on acme/small's one slot.
    gw.model.gate.send_replace(false);
    all.push(
        gw.submit(&c, "acme/small", json!({"mode": "gated", "units": "1"}))
            .await,
    );
    for _ in 0..3 {
        all.push(gw.submit(&c, "acme/small", json!({"units": "1"})).await);
    }
    let first = all[0]["request_id"].as_str().unwrap().to_string();
    gw.model.called(&first).await;
    let (db, model) = gw.stop().await;
    // Started again on the same database: the running request is taken over at once.
    let engine =
        tollgate_engine::Engine::start(db.open().unwrap(), tollgate_engine::system_clock())
            .unwrap();
    let gw = TestGateway::serve(db, engine, model, crate::harness::config()).await;
    gw.model.gate.send_replace(true);
    for submitted in &all {
        let done = gw.wait(&c, submitted).await;
        assert_eq!(done["metrics"]["cost_nano_usd"], IMAGE);
    }
    // The running request's model server was called again; each request billed once.
    assert_eq!(gw.model.calls_of(&first), 2);
    assert_eq!(gw.charged(&c.account).await, (4 * IMAGE, 4));
    assert_eq!(gw.balance(&c.account).await, 100 * USD - 4 * IMAGE);
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn a_completed_request_is_posted_to_its_fal_webhook_until_acknowledged() {
    use tollgate_api::testing::receiver::{Answer, Receiver};
    let gw = TestGateway::spawn().await;
    let c = gw.customer("ana", Some(10)).await;
    let receiver = Receiver::start().await;
    // The first attempt fails: the outbox tries again.
    receiver.script([Answer::Status(500)]);
    let hook = receiver.url("/fal/done");
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("fal_webhook", &hook)
        .finish();
    let (status, ok) = gw
        .submit_raw(
            &c.key,
            &format!("acme/image?{query}"),
            &json!({"units": "1"}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{ok}");
    let (status, failed) = gw
        .submit_raw(
            &c.key,
            &format!("acme/image?{query}"),
            &json!({"mode": "status", "status": 422}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{failed}");
    gw.wait(&c, &ok).await;
    gw.wait(&c, &failed).await;
    let got = receiver.wait_for(3).await;
    assert!(got.iter().all(|r| r.path == "/fal/done"));
    let bodies: Vec<Value> = got.iter().map(|r| r.json()).collect();
    let of = |submitted: &Value| -> Vec<&Value> {
        bodies
            .iter()
            .filter(|b| b["request_id"] == submitted["request_id"])
            .collect()
    };
    let ok_posts = of(&ok);
    let last = ok_posts.last().expect("the answer was posted");
    assert_eq!(last["gateway_request_id"], ok["request_id"]);
    assert_eq!(last["status"], "OK");
    assert_eq!(last["payload"]["images"][0]["width"], 1024);
    assert_eq!(last["error"], Value::Null);
    let failed_posts = of(&failed);
    let last = failed_posts.last().expect("the error was posted");
    assert_eq!(last["status"], "ERROR");
    assert_eq!(last["payload"]["detail"], "as asked");
    assert_eq!(last["error"], "Invalid status code: 422");
    // One of the two was refused once and posted again; neither is posted after a 2xx.
    assert_eq!(got.len(), 3);
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn a_running_request_cancelled_on_an_endpoint_that_bills_cancellations_pays_the_seconds_it_ran(
) {
    let gw = TestGateway::spawn().await;
    let c = gw.customer("ana", Some(10)).await;
    gw.model.gate.send_replace(false);
    let submitted = gw.submit(&c, "acme/gpu", json!({"mode": "gated"})).await;
    let id = submitted["request_id"].as_str().unwrap();
    gw.model.called(id).await;
    assert_eq!(gw.cancel(&c.key, &submitted).await.0, 202);
    let done = gw.wait(&c, &submitted).await;
    let rid = tollgate_core::ids::RequestId::parse(id).unwrap();
    let request = gw
        .engine
        .read(move |r| r.request(&rid))
        .await
        .unwrap()
        .unwrap();
    // Billed from its dispatch to the cancellation, at the H100's 525 nano-USD per ms.
    let ran_ms = request.inference_ms.unwrap();
    assert_eq!(done["metrics"]["cost_nano_usd"], ran_ms * 525, "{done}");
    assert_eq!(request.completion.unwrap().status_code, 499);
    assert_eq!(gw.charged(&c.account).await, (ran_ms * 525, 1));
    assert_eq!(gw.balance(&c.account).await, 10 * USD - ran_ms * 525);
    assert_eq!(gw.result(&c, &submitted).await.0, 400);
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn an_upstream_that_fails_is_skipped_for_a_while() {
    let mut config = crate::harness::config();
    config.upstream_cooldown = std::time::Duration::from_secs(3600);
    let gw = TestGateway::spawn_with(&tollgate_store::testing::Backend::Sqlite, 8, config).await;
    let c = gw.customer("ana", Some(10)).await;
    for _ in 0..10 {
        let submitted = gw.submit(&c, "acme/pair", json!({"units": "1"})).await;
        let done = gw.wait(&c, &submitted).await;
        assert_eq!(done["metrics"]["cost_nano_usd"], IMAGE);
    }
    let paths = gw.model.paths.lock().unwrap().clone();
    // Tried at most once, then skipped; every request answered by the other, billed once.
    assert!(paths.get("/broken").copied().unwrap_or(0) <= 1, "{paths:?}");
    assert_eq!(paths.get("/up").copied(), Some(10), "{paths:?}");
    assert_eq!(gw.charged(&c.account).await, (10 * IMAGE, 10));
    gw.assert_reconciled().await;
}

#[tokio::test]
async fn answers_and_inputs_over_the_size_cap_are_refused_and_not_billed() {
    let mut config = crate::harness::config();
    config.max_body_bytes = 512;
    let gw = TestGateway::spawn_with(&tollgate_store::testing::Backend::Sqlite, 8, config).await;
    let c = gw.customer("ana", Some(10)).await;
    // The stand-in echoes the input: 400 bytes of it make an answer over 512.
    let submitted = gw
        .submit(
            &c,
            "acme/image",
            json!({"units": "1", "pad": "x".repeat(400)}),
        )
        .await;
    let done = gw.wait(&c, &submitted).await;
    assert_eq!(done["metrics"]["cost_nano_usd"], 0, "{done}");
    let (status, _, body) = gw.result(&c, &submitted).await;
    assert_eq!(
        (status, body["error_type"].as_str()),
        (502, Some("result_too_large")),
        "{body}"
    );
    let (status, body) = gw
        .submit_raw(
            &c.key,
            "acme/image",
            &json!({"pad": "x".repeat(600)}).to_string(),
        )
        .await;
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (413, Some("payload_too_large")),
        "{body}"
    );
    assert_eq!(gw.balance(&c.account).await, 10 * USD);
    gw.assert_reconciled().await;
}
