//! End-to-end tests of tollgate's HTTP API: a real server on a free port, a real SQLite
//! database, reqwest as the client. Every amount is asserted exactly, in nano-USD, and every
//! test ends by checking that the ledger reconciles.

use crate::harness::{d, dec, image, int, millis, new_id, now_rfc3339, Body, TestApp, USD};
use futures::future::join_all;
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{json, Value};

const FLUX_DEV: &str = "fal-ai/flux/dev";
/// `gpu_second` on GPU-A100 (0.000275 USD/s), holds 30 s.
const TRIPOSR: &str = "fal-ai/triposr";
/// `compute_second` at 0.00111 USD/s, holds 120 s.
const WHISPER: &str = "fal-ai/whisper";
/// `video_second` at 0.08 USD/s, holds 10 s.
const HAILUO: &str = "fal-ai/minimax/hailuo-02/pro/text-to-video";
/// `character` per 1000 at 0.05 USD, holds 5 (x1000 characters).
const TTS: &str = "fal-ai/elevenlabs/tts/turbo-v2.5";

/// flux/dev: 4 MP held at 0.025 USD/MP.
const FLUX_HOLD: i64 = 100_000_000;
/// flux/dev, one 1920x1080 image: 2 MP x 0.025 USD.
const FLUX_2MP: i64 = 50_000_000;

/// A small extra catalog: an endpoint whose holds expire after one second.
const EXPIRY_CATALOG: &str = r#"
prices_read_on = "2026-09-15"

[[endpoint]]
id = "test/expires-fast"
name = "Expiring test endpoint"
category = "text-to-image"
hold_units = "1"
hold_timeout_s = 1
price = { unit = "image", unit_price = "0.01" }
"#;
const EXPIRING: &str = "test/expires-fast";

fn ok_2mp() -> Value {
    json!({ "status_code": 200, "output": image(1920, 1080) })
}

/// Submits and starts a request; asserts the start and returns the id.
async fn started(app: &TestApp, key: &str, endpoint: &str, hold: i64) -> String {
    let id = app.submit_ok(key, endpoint).await;
    let r = app.start(&id, None).await;
    let body = r.expect(200);
    assert_eq!(body["status"], "IN_PROGRESS");
    assert_eq!(int(&body["hold_nano_usd"]), hold, "hold of {endpoint}");
    id
}

// 1 ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_bills_flux_dev_2mp_exactly() {
    let app = TestApp::spawn().await;
    let alice = app.customer("alice", Some(("10.00", "paid"))).await;
    assert_eq!(app.position("alice").await, (10 * USD, 0, 0));

    let id = app.submit_ok(&alice.key, FLUX_DEV).await;
    let start = app.start(&id, None).await;
    let s = start.expect(200);
    assert_eq!(int(&s["hold_nano_usd"]), FLUX_HOLD);
    assert_eq!(dec(&s["hold"]), d("0.1"));
    // 10 USD of paid purchases: the 10 -> 4 tier.
    assert_eq!(s["concurrency"], json!({ "limit": 4, "in_progress": 1 }));
    assert_eq!(app.position("alice").await, (10 * USD, FLUX_HOLD, 1));

    let r = app.complete(&id, ok_2mp()).await;
    let b = r.expect(200).clone();
    assert_eq!(r.header("x-fal-billable-units"), Some("2"));
    assert_eq!(r.header("idempotent-replayed"), None);
    assert_eq!(b["request_id"], id.as_str());
    assert_eq!(b["status"], "COMPLETED");
    assert_eq!(b["billed"], true);
    assert_eq!(b["endpoint_id"], FLUX_DEV);
    assert_eq!(b["status_code"], 200);
    assert_eq!(dec(&b["output_units"]), d("2"));
    assert_eq!(dec(&b["unit_price"]), d("0.025"));
    assert_eq!(b["percent_discount"], Value::Null);
    assert_eq!(dec(&b["cost_subtotal"]), d("0.05"));
    assert_eq!(dec(&b["cost_discount"]), d("0"));
    assert_eq!(dec(&b["cost_total"]), d("0.05"));
    assert_eq!(int(&b["cost_subtotal_nano_usd"]), FLUX_2MP);
    assert_eq!(int(&b["cost_discount_nano_usd"]), 0);
    assert_eq!(int(&b["cost_estimate_nano_usd"]), FLUX_2MP);
    assert_eq!(int(&b["balance_nano_usd"]), 10 * USD - FLUX_2MP);

    // The balance moved by exactly the bill; the hold and the slot are released.
    assert_eq!(app.position("alice").await, (10 * USD - FLUX_2MP, 0, 0));

    let g = app.get_request(&id).await;
    let g = g.expect(200);
    assert_eq!(g["status"], "COMPLETED");
    assert_eq!(g["endpoint_id"], FLUX_DEV);
    assert_eq!(g["username"], "alice");
    assert_eq!(g["hold_expires_at"], Value::Null);
    let (submitted, started_at, finished) = (
        millis(&g["submitted_at"]),
        millis(&g["started_at"]),
        millis(&g["finished_at"]),
    );
    assert!(submitted <= started_at && started_at <= finished, "{g}");
    // queue = submit -> start, inference = start -> complete (measured, none was reported).
    assert_eq!(
        dec(&g["queue_seconds"]),
        Decimal::new(started_at - submitted, 3)
    );
    assert_eq!(
        dec(&g["inference_seconds"]),
        Decimal::new(finished - started_at, 3)
    );
    assert_eq!(g["billing"], b, "GET shows the complete call's bill");

    let rec = app.reconciliation().await;
    assert_eq!(rec["billed_nano_usd"], FLUX_2MP);
    assert_eq!(rec["purchased_nano_usd"], 10 * USD);
    app.assert_reconciled().await;
}

// 2 ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_free_and_release_the_hold() {
    let app = TestApp::spawn().await;
    let c = app.customer("five", Some(("10.00", "paid"))).await;

    for code in [500u16, 503] {
        let id = started(&app, &c.key, FLUX_DEV, FLUX_HOLD).await;
        assert_eq!(app.position("five").await, (10 * USD, FLUX_HOLD, 1));

        let r = app
            .complete(
                &id,
                json!({ "status_code": code, "output": image(1920, 1080) }),
            )
            .await;
        let b = r.expect(200);
        assert_eq!(b["status"], "FAILED");
        assert_eq!(b["billed"], false);
        assert_eq!(b["status_code"], code);
        assert_eq!(int(&b["cost_estimate_nano_usd"]), 0);
        assert_eq!(int(&b["cost_subtotal_nano_usd"]), 0);
        assert_eq!(dec(&b["cost_total"]), Decimal::ZERO);
        assert_eq!(int(&b["balance_nano_usd"]), 10 * USD);

        assert_eq!(app.position("five").await, (10 * USD, 0, 0), "after {code}");
        assert_eq!(app.status_of(&id).await, "FAILED");
    }
    let rec = app.reconciliation().await;
    assert_eq!(rec["billed_nano_usd"], 0);
    assert_eq!(rec["revenue_nano_usd"], 0);
    app.assert_reconciled().await;
}

// 3 ---------------------------------------------------------------------------------------------

/// The engine's clock at the start of the tests that move it (2026-09-15T12:00:00Z).
const T0: i64 = 1_757_937_600_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_time_is_never_billed() {
    let app = TestApp::spawn_at(T0).await;
    let c = app.customer("queue", Some(("10.00", "paid"))).await;

    // GPU seconds, reported by the runner: exactly 2 s x 0.000275 USD, whatever the queue.
    let gpu = app.submit_ok(&c.key, TRIPOSR).await;
    app.advance(1200).await;
    let s = app.start(&gpu, None).await;
    // 30 GPU-seconds held at the A100 price.
    assert_eq!(int(&s.expect(200)["hold_nano_usd"]), 8_250_000);
    let r = app
        .complete(
            &gpu,
            json!({ "status_code": 200, "inference_seconds": "2" }),
        )
        .await;
    let b = r.expect(200);
    assert_eq!(r.header("x-fal-billable-units"), Some("2"));
    assert_eq!(dec(&b["output_units"]), d("2"));
    assert_eq!(dec(&b["unit_price"]), d("0.000275"));
    assert_eq!(int(&b["cost_estimate_nano_usd"]), 550_000);
    assert_eq!(app.position("queue").await, (10 * USD - 550_000, 0, 0));
    let g = app.get_request(&gpu).await;
    let g = g.expect(200);
    assert_eq!(
        dec(&g["queue_seconds"]),
        d("1.2"),
        "the wait was recorded: {g}"
    );
    assert_eq!(dec(&g["inference_seconds"]), d("2"));
    assert_eq!(g["machine_type"], "GPU-A100");

    // Compute seconds measured by tollgate (none reported): start -> complete only.
    let measured = app.submit_ok(&c.key, WHISPER).await;
    app.advance(1200).await;
    app.start(&measured, None).await.expect(200);
    app.advance(300).await;
    let r = app.complete(&measured, json!({ "status_code": 200 })).await;
    let b = r.expect(200).clone();
    // Billed: exactly start -> complete, 0.3 s, without the 1.2 s in the queue.
    assert_eq!(dec(&b["output_units"]), d("0.3"));
    assert_eq!(r.header("x-fal-billable-units").map(d), Some(d("0.3")));
    let g = app.get_request(&measured).await;
    let g = g.expect(200);
    assert_eq!(dec(&g["queue_seconds"]), d("1.2"), "{g}");
    assert_eq!(dec(&g["inference_seconds"]), d("0.3"));
    assert_eq!(
        millis(&g["finished_at"]) - millis(&g["submitted_at"]),
        1500,
        "{g}"
    );
    // Cost = 0.3 s x 0.00111 USD = 333,000 nano-USD, exactly.
    assert_eq!(int(&b["cost_estimate_nano_usd"]), 333_000);
    assert_eq!(
        app.position("queue").await,
        (10 * USD - 550_000 - 333_000, 0, 0)
    );
    app.assert_reconciled().await;
}

// 4 ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_follows_paid_purchases() {
    let app = TestApp::spawn().await;
    app.create_account("conc").await.expect(201);
    let p = app.purchase("conc", "free-1", "10.00", "free").await;
    let p = p.expect(201);
    assert_eq!(p["kind"], "free");
    assert_eq!(
        p["concurrency_limit"], 2,
        "free credits do not raise the limit"
    );
    assert_eq!(p["locked"], false);
    let key = app.create_key("conc", "API").await;

    let a = started(&app, &key, FLUX_DEV, FLUX_HOLD).await;
    let b = app.submit_ok(&key, FLUX_DEV).await;
    let s = app.start(&b, None).await;
    assert_eq!(
        s.expect(200)["concurrency"],
        json!({ "limit": 2, "in_progress": 2 })
    );

    let c = app.submit_ok(&key, FLUX_DEV).await;
    let r = app.start(&c, None).await;
    let err = r.expect_error(429, "concurrent_requests_limit");
    assert_eq!(err["limit"], 2);
    assert_eq!(err["in_progress"], 2);
    assert_eq!(r.header("x-fal-needs-retry"), Some("1"));
    let g = app.get_request(&c).await;
    assert_eq!(g.expect(200)["status"], "IN_QUEUE");
    assert_eq!(int(&g.body["hold_nano_usd"]), 0);
    assert_eq!(app.position("conc").await, (10 * USD, 2 * FLUX_HOLD, 2));

    app.complete(&a, ok_2mp()).await.expect(200);
    let s = app.start(&c, None).await;
    let s = s.expect(200);
    assert_eq!(s["concurrency"], json!({ "limit": 2, "in_progress": 2 }));
    assert_eq!(int(&s["hold_nano_usd"]), FLUX_HOLD);

    // 10 USD paid in the trailing 28 days: the limit is 4, from the purchase on.
    let p = app.purchase("conc", "paid-1", "10.00", "paid").await;
    let p = p.expect(201);
    assert_eq!(p["kind"], "paid");
    assert_eq!(p["concurrency_limit"], 4);
    assert_eq!(int(&p["balance_nano_usd"]), 20 * USD - FLUX_2MP);
    let acct = app.account("conc").await;
    assert_eq!(acct["concurrency_limit"], 4);
    assert_eq!(int(&acct["paid_last_28d_nano_usd"]), 10 * USD);
    for expect_in_progress in [3, 4] {
        let id = app.submit_ok(&key, FLUX_DEV).await;
        let s = app.start(&id, None).await;
        assert_eq!(
            s.expect(200)["concurrency"],
            json!({ "limit": 4, "in_progress": expect_in_progress })
        );
    }
    let id = app.submit_ok(&key, FLUX_DEV).await;
    app.start(&id, None)
        .await
        .expect_error(429, "concurrent_requests_limit");
    assert_eq!(
        app.position("conc").await,
        (20 * USD - FLUX_2MP, 4 * FLUX_HOLD, 4)
    );
    // Open holds reconcile too.
    app.assert_reconciled().await;
}

// 5 ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_the_balance_cannot_cover_is_refused_with_402() {
    let app = TestApp::spawn().await;
    let c = app.customer("poor", Some(("0.05", "paid"))).await;

    let id = app.submit_ok(&c.key, FLUX_DEV).await;
    let r = app.start(&id, None).await;
    let err = r.expect_error(402, "insufficient_credits");
    assert_eq!(int(&err["available_nano_usd"]), 50_000_000);
    assert_eq!(int(&err["required_nano_usd"]), FLUX_HOLD);
    // Nothing held, no slot taken, the request still waits.
    assert_eq!(app.position("poor").await, (50_000_000, 0, 0));
    let g = app.get_request(&id).await;
    assert_eq!(g.expect(200)["status"], "IN_QUEUE");
    assert_eq!(g.body["started_at"], Value::Null);

    // A smaller estimate that fits exactly is accepted.
    let s = app.start(&id, Some(json!({ "hold_units": "2" }))).await;
    assert_eq!(int(&s.expect(200)["hold_nano_usd"]), 50_000_000);
    assert_eq!(app.position("poor").await, (50_000_000, 50_000_000, 1));
    let acct = app.account("poor").await;
    assert_eq!(int(&acct["available_nano_usd"]), 0);
    app.assert_reconciled().await;
}

// 6 ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_accounts_are_refused_until_a_purchase_unlocks_them() {
    let app = TestApp::spawn().await;
    let c = app.customer("empty", None).await;
    let acct = app.account("empty").await;
    assert_eq!(acct["locked"], true);
    assert_eq!(int(&acct["balance_nano_usd"]), 0);

    let (id, r) = app.submit(&c.key, FLUX_DEV).await;
    let err = r.expect_error(403, "account_locked");
    assert_eq!(int(&err["balance_nano_usd"]), 0);
    app.get_request(&id).await.expect_error(404, "not_found");

    let p = app.purchase("empty", "top-up-1", "1.00", "paid").await;
    let p = p.expect(201);
    assert_eq!(p["locked"], false, "the purchase unlocks in the same call");
    assert_eq!(int(&p["balance_nano_usd"]), USD);
    assert_eq!(app.account("empty").await["locked"], false);
    // The very same request id is now accepted (the refusal recorded nothing).
    let r = app.submit_id(&id, &c.key, FLUX_DEV).await;
    assert_eq!(r.expect(201)["status"], "IN_QUEUE");

    // Spending down to exactly 0 locks the account.
    let s = app.customer("spender", Some(("0.10", "paid"))).await;
    let first = started(&app, &s.key, FLUX_DEV, FLUX_HOLD).await;
    let b = app.complete(&first, ok_2mp()).await;
    assert_eq!(int(&b.expect(200)["balance_nano_usd"]), 50_000_000);
    assert_eq!(app.account("spender").await["locked"], false);
    let second = app.submit_ok(&s.key, FLUX_DEV).await;
    app.start(&second, Some(json!({ "hold_units": "2" })))
        .await
        .expect(200);
    let b = app.complete(&second, ok_2mp()).await;
    assert_eq!(int(&b.expect(200)["balance_nano_usd"]), 0);
    let acct = app.account("spender").await;
    assert_eq!(acct["locked"], true);
    assert_eq!(app.position("spender").await, (0, 0, 0));
    let (id, r) = app.submit(&s.key, FLUX_DEV).await;
    assert_eq!(
        int(&r.expect_error(403, "account_locked")["balance_nano_usd"]),
        0
    );
    app.get_request(&id).await.expect_error(404, "not_found");
    app.assert_reconciled().await;
}

// 7 ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_is_idempotent() {
    let app = TestApp::spawn().await;
    let c = app.customer("idem", None).await;

    // Purchase: the repeat adds nothing and returns the first answer.
    let first = app.purchase("idem", "order-42", "25.00", "paid").await;
    let first_body = first.expect(201).clone();
    assert_eq!(first.header("idempotent-replayed"), None);
    assert_eq!(int(&first_body["amount_nano_usd"]), 25 * USD);
    let again = app.purchase("idem", "order-42", "25.00", "paid").await;
    assert_eq!(again.expect(201), &first_body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(app.position("idem").await, (25 * USD, 0, 0));
    // Same id, different amount (or kind): a conflict, nothing added.
    app.purchase("idem", "order-42", "30.00", "paid")
        .await
        .expect_error(409, "conflict");
    app.purchase("idem", "order-42", "25.00", "free")
        .await
        .expect_error(409, "conflict");
    assert_eq!(app.position("idem").await, (25 * USD, 0, 0));

    // Submit: the repeat answers 200 with the same body.
    let (id, r) = app.submit(&c.key, FLUX_DEV).await;
    let submitted = r.expect(201).clone();
    let r = app.submit_id(&id, &c.key, FLUX_DEV).await;
    assert_eq!(r.expect(200), &submitted);
    // The same id for another endpoint is a conflict.
    app.submit_id(&id, &c.key, "fal-ai/flux/schnell")
        .await
        .expect_error(409, "conflict");

    // Start: the repeat holds nothing new.
    let s1 = app.start(&id, None).await.expect(200).clone();
    let s2 = app.start(&id, None).await.expect(200).clone();
    assert_eq!(int(&s2["hold_nano_usd"]), FLUX_HOLD);
    assert_eq!(s1, s2);
    assert_eq!(app.position("idem").await, (25 * USD, FLUX_HOLD, 1));

    // Complete: the repeat returns the first bill, flagged, and moves nothing.
    let c1 = app.complete(&id, ok_2mp()).await;
    let c1_body = c1.expect(200).clone();
    assert_eq!(c1.header("idempotent-replayed"), None);
    assert_eq!(app.position("idem").await, (25 * USD - FLUX_2MP, 0, 0));
    // Even with a different report, the first answer stands.
    for body in [
        ok_2mp(),
        json!({ "status_code": 200, "output": image(4000, 4000) }),
    ] {
        let c2 = app.complete(&id, body).await;
        assert_eq!(c2.expect(200), &c1_body);
        assert_eq!(c2.header("idempotent-replayed"), Some("true"));
        assert_eq!(c2.header("x-fal-billable-units"), Some("2"));
    }
    assert_eq!(app.position("idem").await, (25 * USD - FLUX_2MP, 0, 0));
    // A repeated start after completion cannot hold again.
    app.start(&id, None).await.expect_error(409, "conflict");
    assert_eq!(app.position("idem").await, (25 * USD - FLUX_2MP, 0, 0));

    let rec = app.reconciliation().await;
    assert_eq!(rec["purchased_nano_usd"], 25 * USD);
    assert_eq!(rec["billed_nano_usd"], FLUX_2MP);
    app.assert_reconciled().await;
}

// 8 ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_hold_expires_unbilled() {
    let app = TestApp::spawn_at(T0).await;
    let applied = app.apply_catalog(EXPIRY_CATALOG).await;
    let applied = applied.expect(200);
    assert_eq!(applied["endpoints"], 1);
    assert_eq!(applied["price_versions_created"], 1);
    let c = app.customer("ghost", Some(("1.00", "paid"))).await;

    // The second document added an endpoint; the sample's are still there, and so are the
    // machine prices it did not name.
    let kept = app.submit_ok(&c.key, FLUX_DEV).await;
    app.cancel(&kept).await.expect(200);
    let gpu = app.submit_ok(&c.key, TRIPOSR).await;
    app.start(&gpu, None).await.expect(200);
    app.cancel(&gpu).await.expect(200);

    let id = started(&app, &c.key, EXPIRING, 10_000_000).await;
    let g = app.get_request(&id).await;
    let g = g.expect(200);
    assert_eq!(
        millis(&g["hold_expires_at"]),
        millis(&g["started_at"]) + 1000
    );
    assert_eq!(app.position("ghost").await, (USD, 10_000_000, 1));

    // A millisecond before the hold's deadline, the sweep leaves it; at the deadline, it voids it.
    assert_eq!(app.advance(999).await, 0);
    assert_eq!(app.status_of(&id).await, "IN_PROGRESS");
    assert_eq!(app.advance(1).await, 1);
    assert_eq!(app.status_of(&id).await, "EXPIRED");
    let g = app.get_request(&id).await;
    let g = g.expect(200);
    assert_eq!(g["billing"], Value::Null, "not billed: {g}");
    assert_eq!(g["hold_expires_at"], Value::Null);
    assert_eq!(millis(&g["finished_at"]), millis(&g["started_at"]) + 1000);
    assert_eq!(app.position("ghost").await, (USD, 0, 0));

    // A late start and cancel are refused and change nothing (a late completion is billed:
    // billing_holes.rs).
    app.start(&id, None).await.expect_error(409, "conflict");
    app.cancel(&id).await.expect_error(409, "conflict");
    assert_eq!(app.status_of(&id).await, "EXPIRED");
    assert_eq!(app.position("ghost").await, (USD, 0, 0));
    assert_eq!(app.reconciliation().await["billed_nano_usd"], 0);
    app.assert_reconciled().await;
}

// 9 ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_checked_and_scoped() {
    let app = TestApp::spawn().await;
    let c = app.customer("keys", Some(("12.50", "paid"))).await;
    let admin_key = app.create_key("keys", "ADMIN").await;
    let rid = new_id();

    // Customer keys (API or ADMIN) cannot call operator endpoints.
    for key in [c.key.as_str(), admin_key.as_str()] {
        let calls: Vec<(Method, String, Body)> = vec![
            (Method::GET, "/v1/admin/accounts/keys".into(), Body::None),
            (
                Method::POST,
                "/v1/admin/accounts".into(),
                Body::Json(json!({ "username": "intruder" })),
            ),
            (
                Method::POST,
                "/v1/admin/accounts/keys/purchases".into(),
                Body::Json(json!({ "purchase_id": "free-money", "amount_usd": "100.00" })),
            ),
            (
                Method::POST,
                "/v1/admin/accounts/keys/keys".into(),
                Body::Json(json!({ "scope": "ADMIN" })),
            ),
            (
                Method::PUT,
                "/v1/admin/accounts/keys/pricing".into(),
                Body::Json(json!({ "percent_discount": "100" })),
            ),
            (
                Method::PUT,
                "/v1/admin/catalog".into(),
                Body::Raw {
                    content_type: "application/toml",
                    text: EXPIRY_CATALOG.into(),
                },
            ),
            (Method::GET, "/v1/admin/reconciliation".into(), Body::None),
            (
                Method::POST,
                "/v1/requests".into(),
                Body::Json(
                    json!({ "request_id": rid, "endpoint_id": FLUX_DEV, "caller_key": c.key }),
                ),
            ),
            (Method::GET, format!("/v1/requests/{rid}"), Body::None),
            (
                Method::POST,
                "/v1/usage-events".into(),
                Body::Json(json!({ "events": [] })),
            ),
        ];
        for (method, path, body) in calls {
            let r = app.raw(method.clone(), &path, Some(key), body).await;
            r.expect_error(403, "authorization_error");
            assert!(
                r.message().contains("operator"),
                "{method} {path}: {}",
                r.text
            );
        }
    }
    // None of it took effect.
    assert_eq!(app.position("keys").await, (12_500_000_000, 0, 0));
    assert_eq!(
        app.account("keys").await["terms"]["in_force"]["percent_discount"],
        Value::Null
    );
    app.op_get("/v1/admin/accounts/intruder")
        .await
        .expect_error(404, "not_found");
    app.get_request(&rid).await.expect_error(404, "not_found");

    // Missing, malformed or wrong credentials: 401.
    let (key_id, _) = c.key.split_once(':').unwrap();
    let (op_id, _) = app.operator_key.split_once(':').unwrap();
    let bad_headers = [
        None,
        Some(String::new()),
        Some(format!("Bearer {}", app.operator_key)),
        Some(app.operator_key.clone()),
        Some("Key".to_string()),
        Some("Key no-colon-here".to_string()),
        Some(format!("Key {op_id}:")),
        Some(format!("Key {op_id}:not-the-secret")),
        Some(format!("Key {key_id}:not-the-secret")),
        Some(format!("Key {}:{}", new_id(), "some-secret")),
        Some("Key bad id!:secret".to_string()),
    ];
    for auth in &bad_headers {
        let r = app
            .with_auth_header(Method::GET, "/v1/admin/reconciliation", auth.as_deref())
            .await;
        r.expect_error(401, "authorization_error");
        let r = app
            .with_auth_header(Method::GET, "/v1/account/billing", auth.as_deref())
            .await;
        r.expect_error(401, "authorization_error");
    }
    // A revoked key stops working.
    let revoked = app.create_key("keys", "ADMIN").await;
    app.billing(&revoked, "expand=credits").await.expect(200);
    let (rid_key, _) = revoked.split_once(':').unwrap();
    app.engine
        .admin(tollgate_engine::AdminCmd::RevokeKey {
            key_id: tollgate_core::ids::ApiKeyId::parse(rid_key).unwrap(),
            account: Some(tollgate_core::ids::AccountId::parse("keys").unwrap()),
        })
        .await
        .unwrap();
    app.billing(&revoked, "expand=credits")
        .await
        .expect_error(401, "authorization_error");

    // The customer billing call needs an ADMIN customer key.
    app.billing(&c.key, "expand=credits")
        .await
        .expect_error(403, "authorization_error");
    app.billing(&app.operator_key, "expand=credits")
        .await
        .expect_error(403, "authorization_error");
    let r = app.billing(&admin_key, "expand=credits").await;
    let b = r.expect(200);
    assert_eq!(b["username"], "keys");
    assert_eq!(b["credits"]["currency"], "USD");
    assert!(b["credits"]["current_balance"].is_number(), "{b}");
    assert_eq!(dec(&b["credits"]["current_balance"]), d("12.5"));
    assert_eq!(
        int(&b["credits"]["current_balance_nano_usd"]),
        12_500_000_000
    );
    let r = app.billing(&admin_key, "").await;
    assert_eq!(r.expect(200), &json!({ "username": "keys" }));
    app.billing(&admin_key, "expand=everything")
        .await
        .expect_error(400, "validation_error");

    // A customer key as caller_key works; a bad one is refused with 401.
    let (id, r) = app.submit(&format!("{key_id}:wrong"), FLUX_DEV).await;
    r.expect_error(401, "authorization_error");
    app.get_request(&id).await.expect_error(404, "not_found");
    let (id, r) = app.submit(&app.operator_key, FLUX_DEV).await;
    r.expect_error(401, "authorization_error");
    app.get_request(&id).await.expect_error(404, "not_found");
    app.submit_ok(&admin_key, FLUX_DEV).await;
    app.submit_ok(&c.key, FLUX_DEV).await;

    // The OpenAPI document needs no key.
    let r = app
        .raw(Method::GET, "/v1/openapi.json", None, Body::None)
        .await;
    assert!(r.expect(200)["paths"].is_object());
    app.assert_reconciled().await;
}

// 10 --------------------------------------------------------------------------------------------

/// An account with 10 USD for the bad-input cases, and the ledger's totals before them.
async fn careful() -> (TestApp, crate::harness::Customer, Value) {
    let app = TestApp::spawn().await;
    let c = app.customer("careful", Some(("10.00", "paid"))).await;
    app.create_account("careful")
        .await
        .expect_error(409, "conflict");
    let before = app.reconciliation().await;
    (app, c, before)
}

/// Nothing was billed or credited since `before`.
async fn ledger_unmoved(app: &TestApp, before: &Value) {
    let after = app.reconciliation().await;
    for total in [
        "billed_nano_usd",
        "revenue_nano_usd",
        "purchased_nano_usd",
        "credited_nano_usd",
    ] {
        assert_eq!(after[total], before[total], "{total}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_submits_are_refused_and_queue_nothing() {
    let (app, c, before) = careful().await;
    // --- submit -------------------------------------------------------------------------
    let id = new_id();
    let r = app
        .op_text(Method::POST, "/v1/requests", r#"{"request_id": "#)
        .await;
    r.expect_error(400, "validation_error");
    assert!(r.message().contains("json"), "{}", r.text);
    let r = app.op_text(Method::POST, "/v1/requests", "").await;
    r.expect_error(400, "validation_error");
    assert!(r.message().contains("empty"), "{}", r.text);
    let r = app
        .op(
            Method::POST,
            "/v1/requests",
            json!({ "request_id": id, "endpoint_id": 5, "caller_key": c.key }),
        )
        .await;
    assert_eq!(
        r.expect_error(400, "validation_error")["field"],
        "endpoint_id"
    );
    let r = app
        .op(
            Method::POST,
            "/v1/requests",
            json!({ "request_id": id, "endpoint_id": FLUX_DEV, "caller_key": c.key, "priority": 1 }),
        )
        .await;
    r.expect_error(400, "validation_error");
    assert!(r.message().contains("priority"), "{}", r.text);
    let r = app
        .op(
            Method::POST,
            "/v1/requests",
            json!({ "request_id": id, "endpoint_id": FLUX_DEV }),
        )
        .await;
    r.expect_error(400, "validation_error");
    assert!(r.message().contains("caller_key"), "{}", r.text);
    let r = app.submit_id("not-a-uuid", &c.key, FLUX_DEV).await;
    assert_eq!(
        r.expect_error(400, "validation_error")["field"],
        "request_id"
    );
    let r = app.submit_id(&id, &c.key, "fal-ai/no-such-model").await;
    r.expect_error(404, "not_found");
    assert!(r.message().contains("fal-ai/no-such-model"), "{}", r.text);
    let r = app.submit_id(&id, &c.key, "bad endpoint!").await;
    assert_eq!(
        r.expect_error(400, "validation_error")["field"],
        "endpoint_id"
    );
    for bad_caller in ["", "nonsense", "a:b", format!("{}:x", new_id()).as_str()] {
        app.submit_id(&id, bad_caller, FLUX_DEV)
            .await
            .expect_error(401, "authorization_error");
    }
    app.get_request(&id).await.expect_error(404, "not_found");

    ledger_unmoved(&app, &before).await;
    app.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_starts_are_refused_and_hold_nothing() {
    let (app, c, before) = careful().await;
    let balance = 10 * USD;
    // --- start --------------------------------------------------------------------------
    let queued = app.submit_ok(&c.key, FLUX_DEV).await;
    for (body, field) in [
        (json!({ "num_gpus": 0 }), None),
        (json!({ "num_gpus": 65 }), None),
        (json!({ "num_gpus": -1 }), Some("num_gpus")),
        (json!({ "hold_units": "-1" }), None),
        (json!({ "hold_units": "1e15" }), None),
        (json!({ "hold_units": "lots" }), Some("hold_units")),
        (json!({ "machine_type": "GPU-NOPE" }), None),
        (json!({ "machine_type": "bad type!" }), Some("machine_type")),
        (json!({ "gpus": 2 }), None),
    ] {
        let r = app.start(&queued, Some(body.clone())).await;
        let err = r.expect_error(400, "validation_error");
        if let Some(f) = field {
            assert_eq!(err["field"], f, "{body}: {}", r.text);
        }
    }
    let r = app.start("not-a-uuid", None).await;
    assert_eq!(
        r.expect_error(400, "validation_error")["field"],
        "request_id"
    );
    app.start(&new_id(), None)
        .await
        .expect_error(404, "not_found");
    assert_eq!(app.status_of(&queued).await, "IN_QUEUE");
    assert_eq!(app.position("careful").await, (balance, 0, 0));

    ledger_unmoved(&app, &before).await;
    app.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_completions_are_refused_bill_nothing_and_leave_the_request_completable() {
    let (app, c, before) = careful().await;
    let balance = 10 * USD;
    let queued = app.submit_ok(&c.key, FLUX_DEV).await;
    // --- complete -----------------------------------------------------------------------
    let flux = started(&app, &c.key, FLUX_DEV, FLUX_HOLD).await;
    let video = started(&app, &c.key, HAILUO, 800_000_000).await;
    let tts = started(&app, &c.key, TTS, 250_000_000).await;
    let held = FLUX_HOLD + 800_000_000 + 250_000_000;
    assert_eq!(app.position("careful").await, (balance, held, 3));

    let r = app
        .op_text(
            Method::POST,
            &format!("/v1/requests/{flux}/complete"),
            r#"{"status_code": 200, "output": {"images": [{"width": "wide", "height": 1}]}}"#,
        )
        .await;
    assert_eq!(
        r.expect_error(400, "validation_error")["field"],
        "output.images[0].width"
    );
    let r = app
        .op_text(
            Method::POST,
            &format!("/v1/requests/{flux}/complete"),
            "{\"status_code\": 200,",
        )
        .await;
    r.expect_error(400, "validation_error");
    assert!(r.message().contains("json"), "{}", r.text);

    let cases: Vec<(&str, Value, &str)> = vec![
        (
            video.as_str(),
            json!({ "status_code": 200, "output": { "video_seconds": -5 } }),
            "video_seconds",
        ),
        (
            video.as_str(),
            json!({ "status_code": 200, "output": { "video_seconds": "-5" } }),
            "video_seconds",
        ),
        (
            video.as_str(),
            json!({ "status_code": 200, "output": { "video_seconds": "1e12" } }),
            "video_seconds",
        ),
        (
            tts.as_str(),
            json!({ "status_code": 200, "output": { "characters": 1_000_000_000_000_000u64 } }),
            "characters",
        ),
        (
            tts.as_str(),
            json!({ "status_code": 200, "output": { "characters": -1 } }),
            "characters",
        ),
        (
            flux.as_str(),
            json!({ "status_code": 200, "output": image(1_000_000, 1024) }),
            "images",
        ),
        (
            flux.as_str(),
            json!({ "status_code": 200, "output": image(0, 1024) }),
            "images",
        ),
        (
            flux.as_str(),
            json!({ "status_code": 200, "billable_units": "-1" }),
            "billable_units",
        ),
        (
            flux.as_str(),
            json!({ "status_code": 200, "billable_units": "1e13" }),
            "billable_units",
        ),
        (
            flux.as_str(),
            json!({ "status_code": 200, "inference_seconds": "-3" }),
            "inference_seconds",
        ),
        (flux.as_str(), json!({ "status_code": 700 }), "700"),
        (flux.as_str(), json!({ "status_code": 100 }), "100"),
        (
            flux.as_str(),
            json!({ "status_code": 70000 }),
            "status_code",
        ),
        (
            flux.as_str(),
            json!({ "status_code": "200" }),
            "status_code",
        ),
        (
            flux.as_str(),
            json!({ "output": image(1024, 1024) }),
            "status_code",
        ),
        (
            flux.as_str(),
            json!({ "status_code": 200, "output": { "pixels": 5 } }),
            "pixels",
        ),
        (
            flux.as_str(),
            json!({ "status_code": 200, "cost": "0" }),
            "cost",
        ),
        // A 5xx is free, but its report is still validated.
        (
            flux.as_str(),
            json!({ "status_code": 500, "output": image(1_000_000, 1) }),
            "images",
        ),
    ];
    for (id, body, names) in cases {
        let r = app.complete(id, body.clone()).await;
        r.expect_error(400, "validation_error");
        let text = format!("{} {}", r.message(), r.body["error"]["field"]);
        assert!(text.contains(names), "{body} -> {}", r.text);
    }
    app.complete(&new_id(), ok_2mp())
        .await
        .expect_error(404, "not_found");
    app.complete(&queued, ok_2mp())
        .await
        .expect_error(409, "conflict");
    for id in [&flux, &video, &tts] {
        assert_eq!(app.status_of(id).await, "IN_PROGRESS");
    }
    assert_eq!(app.position("careful").await, (balance, held, 3));

    ledger_unmoved(&app, &before).await;

    // The requests are still completable, and are billed once, correctly.
    let b = app.complete(&flux, ok_2mp()).await;
    assert_eq!(int(&b.expect(200)["cost_estimate_nano_usd"]), FLUX_2MP);
    let b = app
        .complete(
            video.as_str(),
            json!({ "status_code": 200, "output": { "video_seconds": "6" } }),
        )
        .await;
    assert_eq!(int(&b.expect(200)["cost_estimate_nano_usd"]), 480_000_000);
    let b = app
        .complete(
            tts.as_str(),
            json!({ "status_code": 200, "output": { "characters": 1500 } }),
        )
        .await;
    assert_eq!(int(&b.expect(200)["cost_estimate_nano_usd"]), 75_000_000);
    assert_eq!(
        app.position("careful").await,
        (balance - FLUX_2MP - 480_000_000 - 75_000_000, 0, 0)
    );
    app.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_purchases_are_refused_and_credit_nothing() {
    let (app, _, before) = careful().await;
    let (balance, held) = (10 * USD, 0);
    // --- purchases ----------------------------------------------------------------------
    let purchases = "/v1/admin/accounts/careful/purchases";
    for amount in [
        json!("99999999999999"),
        json!("1000000.01"),
        json!("0.0000000001"),
        json!("-5"),
        json!("0"),
        json!("ten"),
        json!(""),
        json!(25),
        json!(25.5),
        json!(null),
    ] {
        let r = app
            .op(
                Method::POST,
                purchases,
                json!({ "purchase_id": "refused", "amount_usd": amount }),
            )
            .await;
        assert_eq!(
            r.expect_error(400, "validation_error")["field"],
            "amount_usd",
            "{amount}: {}",
            r.text
        );
    }
    let r = app
        .op(
            Method::POST,
            purchases,
            json!({ "purchase_id": "refused", "amount_usd": "5.00", "kind": "bonus" }),
        )
        .await;
    assert_eq!(r.expect_error(400, "validation_error")["field"], "kind");
    let r = app
        .op(
            Method::POST,
            purchases,
            json!({ "purchase_id": "refused", "amount_usd": "5.00", "currency": "EUR" }),
        )
        .await;
    r.expect_error(400, "validation_error");
    assert!(r.message().contains("currency"), "{}", r.text);
    app.purchase("nobody", "p", "5.00", "paid")
        .await
        .expect_error(404, "not_found");
    assert_eq!(app.position("careful").await, (balance, held, 0));
    // None of the refused purchases recorded its id: the first valid use is a new purchase.
    let p = app.purchase("careful", "refused", "25", "paid").await;
    assert_eq!(int(&p.expect(201)["amount_nano_usd"]), 25 * USD);
    assert_eq!(p.header("idempotent-replayed"), None);
    let balance = balance + 25 * USD;
    assert_eq!(app.position("careful").await, (balance, held, 0));

    let after = app.reconciliation().await;
    assert_eq!(before["purchased_nano_usd"], 10 * USD);
    for total in ["purchased_nano_usd", "credited_nano_usd"] {
        assert_eq!(after[total], 35 * USD, "10 + the one valid 25");
    }
    app.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_terms_and_catalogs_are_refused_and_change_nothing() {
    let (app, c, before) = careful().await;
    // --- pricing and catalog ------------------------------------------------------------
    let acct_before = app.account("careful").await;
    for body in [
        json!({ "percent_discount": "150" }),
        json!({ "percent_discount": "-1" }),
        json!({ "concurrency_limit": 0 }),
        json!({ "lock_threshold_usd": "lots" }),
        json!({ "prices": { FLUX_DEV: { "unit": "megapixel", "unit_price": "-0.02" } } }),
        json!({ "prices": { FLUX_DEV: { "unit": "parsec", "unit_price": "0.02" } } }),
        json!({ "discount": "10" }),
    ] {
        app.set_pricing("careful", body)
            .await
            .expect_error(400, "validation_error");
    }
    app.set_pricing(
        "careful",
        json!({ "prices": { "fal-ai/no-such-model": { "unit": "image", "unit_price": "0.01" } } }),
    )
    .await
    .expect_error(404, "not_found");
    assert_eq!(app.account("careful").await, acct_before);
    let r = app
        .apply_catalog("prices_read_on = \"2026-09-15\"\n\n[[endpoint]]\nid = \"x/y\"\nname = \"X\"\ncategory = \"text-to-image\"\nprice = { unit = \"image\", unit_price = 0.01 }\n")
        .await;
    let err = r.expect_error(400, "validation_error");
    assert_eq!(err["line"], 7, "{}", r.text);
    assert_eq!(err["field"], "endpoint[0].price.unit_price");
    app.submit(&c.key, "x/y")
        .await
        .1
        .expect_error(404, "not_found");

    ledger_unmoved(&app, &before).await;
    app.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_paths_are_refused() {
    let (app, _, before) = careful().await;
    // --- paths --------------------------------------------------------------------------
    app.op_get("/v1/nothing-here")
        .await
        .expect_error(404, "not_found");
    app.op_get("/v1/admin/accounts/no-such-user")
        .await
        .expect_error(404, "not_found");
    app.op_get("/v1/admin/accounts/bad%20name")
        .await
        .expect_error(400, "validation_error");

    ledger_unmoved(&app, &before).await;
    app.assert_reconciled().await;
}

// 11 --------------------------------------------------------------------------------------------

fn event(id: &str, endpoint: &str, username: &str, status: u16) -> Value {
    json!({
        "event_id": id,
        "endpoint_id": endpoint,
        "username": username,
        "timestamp": now_rfc3339(),
        "status_code": status,
        "output": image(1920, 1080),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_events_are_billed_once_each() {
    let app = TestApp::spawn().await;
    app.customer("metered", Some(("5.00", "paid"))).await;

    let e1 = event("evt-1", FLUX_DEV, "metered", 200);
    let e2 = event("evt-2", FLUX_DEV, "metered", 500);
    let r = app.usage_events(json!([e1, e2, e1])).await;
    let results = r.expect(200)["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 3);
    let ids: Vec<&Value> = results.iter().map(|r| &r["event_id"]).collect();
    assert_eq!(ids, [&json!("evt-1"), &json!("evt-2"), &json!("evt-1")]);

    assert_eq!(results[0]["duplicate"], false);
    assert_eq!(results[0]["billed"], true);
    assert_eq!(results[0]["status"], "COMPLETED");
    assert_eq!(int(&results[0]["cost_estimate_nano_usd"]), FLUX_2MP);
    assert_eq!(int(&results[0]["balance_nano_usd"]), 5 * USD - FLUX_2MP);

    assert_eq!(results[1]["duplicate"], false);
    assert_eq!(results[1]["billed"], false);
    assert_eq!(results[1]["status"], "FAILED");
    assert_eq!(int(&results[1]["cost_estimate_nano_usd"]), 0);

    assert_eq!(results[2]["duplicate"], true);
    assert_eq!(int(&results[2]["cost_estimate_nano_usd"]), FLUX_2MP);
    let mut first = results[0].clone();
    first["duplicate"] = json!(true);
    assert_eq!(results[2], first, "a duplicate answers with the first bill");
    assert_eq!(app.position("metered").await, (5 * USD - FLUX_2MP, 0, 0));

    // Reported again in a later call: still a duplicate, still billed once.
    let r = app.usage_events(json!([e1])).await;
    assert_eq!(r.expect(200)["results"][0]["duplicate"], true);
    assert_eq!(app.position("metered").await, (5 * USD - FLUX_2MP, 0, 0));
    let g = app.get_request("evt-1").await;
    assert_eq!(g.expect(200)["status"], "COMPLETED");

    // An event the engine refuses gets its own error; the others are billed.
    let unknown = event("evt-3", "fal-ai/no-such-model", "metered", 200);
    let nobody = event("evt-4", FLUX_DEV, "nobody", 200);
    let e5 = event("evt-5", FLUX_DEV, "metered", 200);
    let r = app.usage_events(json!([unknown, nobody, e5])).await;
    let results = r.expect(200)["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["event_id"], "evt-3");
    assert_eq!(results[0]["status_code"], 404);
    assert_eq!(results[0]["error"]["type"], "not_found");
    assert_eq!(results[1]["event_id"], "evt-4");
    assert_eq!(results[1]["status_code"], 404);
    assert_eq!(results[2]["event_id"], "evt-5");
    assert_eq!(results[2]["billed"], true);
    assert_eq!(int(&results[2]["cost_estimate_nano_usd"]), FLUX_2MP);
    assert_eq!(
        app.position("metered").await,
        (5 * USD - 2 * FLUX_2MP, 0, 0)
    );
    app.get_request("evt-3")
        .await
        .expect_error(404, "not_found");

    // One malformed event refuses the whole call: nothing written.
    let good = event("evt-6", FLUX_DEV, "metered", 200);
    let mut bad = event("evt-7", FLUX_DEV, "metered", 200);
    bad["timestamp"] = json!("yesterday");
    let r = app.usage_events(json!([good, bad])).await;
    let err = r.expect_error(400, "validation_error");
    assert_eq!(err["index"], 1);
    assert_eq!(err["field"], "timestamp");
    let mut negative = event("evt-8", FLUX_DEV, "metered", 200);
    negative["output"] = json!({ "video_seconds": "-5" });
    let mut extra = event("evt-9", FLUX_DEV, "metered", 200);
    extra["price"] = json!("0");
    for batch in [
        json!([good, extra]),
        json!([good, { "event_id": "evt-10" }]),
        json!([good, event("evt-11", "bad endpoint!", "metered", 200)]),
    ] {
        app.usage_events(batch)
            .await
            .expect_error(400, "validation_error");
    }
    // Invalid usage inside an otherwise well-formed event is refused for that event only.
    let r = app.usage_events(json!([negative])).await;
    assert_eq!(r.expect(200)["results"][0]["status_code"], 400);
    app.get_request("evt-6")
        .await
        .expect_error(404, "not_found");
    app.get_request("evt-8")
        .await
        .expect_error(404, "not_found");
    assert_eq!(
        app.position("metered").await,
        (5 * USD - 2 * FLUX_2MP, 0, 0)
    );
    let rec = app.reconciliation().await;
    assert_eq!(rec["billed_nano_usd"], 2 * FLUX_2MP);
    app.assert_reconciled().await;
}

#[tokio::test]
async fn a_usage_event_id_under_the_runner_prefix_is_refused() {
    let app = TestApp::spawn().await;
    app.customer("metered", Some(("5.00", "paid"))).await;
    // `runner:<runner_id>` is the request id of serverless runner time (a request's id is a
    // UUID): a usage event under it is refused alone, and the others are billed.
    let runners = event("runner:rn-1", FLUX_DEV, "metered", 200);
    let fine = event("evt-runner-rn-1", FLUX_DEV, "metered", 200);
    let r = app.usage_events(json!([runners, fine])).await;
    let results = r.expect(200)["results"].as_array().unwrap().clone();
    assert_eq!(results[0]["status_code"], 400, "{}", r.text);
    assert_eq!(results[0]["error"]["type"], "validation_error");
    assert_eq!(results[0]["error"]["field"], "event_id");
    let message = results[0]["error"]["message"].as_str().unwrap();
    assert!(message.contains("`runner:`"), "{message}");
    assert_eq!(results[1]["billed"], true);
    app.get_request("runner:rn-1")
        .await
        .expect_error(404, "not_found");
    assert_eq!(app.position("metered").await, (5 * USD - FLUX_2MP, 0, 0));
    app.assert_reconciled().await;
}

// 12 --------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_releases_everything_and_bills_nothing() {
    let app = TestApp::spawn().await;
    app.create_account("quitter").await.expect(201);
    app.purchase("quitter", "p1", "1.00", "free")
        .await
        .expect(201);
    let key = app.create_key("quitter", "API").await;

    let a = started(&app, &key, FLUX_DEV, FLUX_HOLD).await;
    let b = started(&app, &key, FLUX_DEV, FLUX_HOLD).await;
    assert_eq!(app.position("quitter").await, (USD, 2 * FLUX_HOLD, 2));

    let r = app.cancel(&a).await;
    assert_eq!(
        r.expect(200),
        &json!({ "request_id": a, "status": "CANCELLED", "billed": false })
    );
    assert_eq!(app.position("quitter").await, (USD, FLUX_HOLD, 1));
    let g = app.get_request(&a).await;
    assert_eq!(g.expect(200)["status"], "CANCELLED");
    assert_eq!(g.body["billing"], Value::Null);
    // The slot is free again: a third request can start at limit 2.
    let c = started(&app, &key, FLUX_DEV, FLUX_HOLD).await;
    // A repeat cancel is harmless.
    app.cancel(&a).await.expect(200);
    assert_eq!(app.position("quitter").await, (USD, 2 * FLUX_HOLD, 2));
    // Complete after cancel: refused.
    app.complete(&a, ok_2mp())
        .await
        .expect_error(409, "conflict");

    // A queued request can be cancelled too (nothing was held).
    let q = app.submit_ok(&key, FLUX_DEV).await;
    let r = app.cancel(&q).await;
    assert_eq!(r.expect(200)["status"], "CANCELLED");
    app.start(&q, None).await.expect_error(409, "conflict");
    assert_eq!(app.position("quitter").await, (USD, 2 * FLUX_HOLD, 2));

    // Cancel after complete: refused, the bill stands.
    app.complete(&b, ok_2mp()).await.expect(200);
    app.cancel(&b).await.expect_error(409, "conflict");
    assert_eq!(app.status_of(&b).await, "COMPLETED");
    app.cancel(&c).await.expect(200);
    app.cancel(&new_id()).await.expect_error(404, "not_found");
    assert_eq!(app.position("quitter").await, (USD - FLUX_2MP, 0, 0));
    assert_eq!(app.reconciliation().await["billed_nano_usd"], FLUX_2MP);
    app.assert_reconciled().await;
}

// 13 --------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enterprise_prices_and_price_versions() {
    let app = TestApp::spawn().await;
    let disc = app.customer("discounted", Some(("10.00", "paid"))).await;
    let special = app.customer("special", Some(("10.00", "paid"))).await;
    let public = app.customer("public", Some(("10.00", "paid"))).await;

    // A 10 % discount: applies to the hold and to the bill.
    let r = app
        .set_pricing("discounted", json!({ "percent_discount": "10" }))
        .await;
    let b = r.expect(200);
    assert_eq!(b["price_versions_created"], 0);
    assert_eq!(
        dec(&b["account"]["terms"]["in_force"]["percent_discount"]),
        d("10")
    );
    let id = started(&app, &disc.key, FLUX_DEV, 90_000_000).await;
    let r = app.complete(&id, ok_2mp()).await;
    let b = r.expect(200);
    assert_eq!(int(&b["cost_estimate_nano_usd"]), 45_000_000);
    assert_eq!(int(&b["cost_subtotal_nano_usd"]), FLUX_2MP);
    assert_eq!(int(&b["cost_discount_nano_usd"]), 5_000_000);
    assert_eq!(dec(&b["cost_subtotal"]), d("0.05"));
    assert_eq!(dec(&b["cost_discount"]), d("0.005"));
    assert_eq!(dec(&b["cost_total"]), d("0.045"));
    assert_eq!(dec(&b["percent_discount"]), d("10"));
    assert_eq!(dec(&b["unit_price"]), d("0.025"));
    assert_eq!(
        app.position("discounted").await,
        (10 * USD - 45_000_000, 0, 0)
    );

    // An account-specific price.
    let r = app
        .set_pricing(
            "special",
            json!({ "prices": { FLUX_DEV: { "unit": "megapixel", "unit_price": "0.02", "rounding": "up" } } }),
        )
        .await;
    assert_eq!(r.expect(200)["price_versions_created"], 1);
    let id = started(&app, &special.key, FLUX_DEV, 80_000_000).await;
    let b = app.complete(&id, ok_2mp()).await;
    let b = b.expect(200);
    assert_eq!(int(&b["cost_estimate_nano_usd"]), 40_000_000);
    assert_eq!(dec(&b["unit_price"]), d("0.02"));
    assert_eq!(b["percent_discount"], Value::Null);

    // Everyone else still pays the public price.
    let pending = started(&app, &public.key, FLUX_DEV, FLUX_HOLD).await;
    let id = started(&app, &public.key, FLUX_DEV, FLUX_HOLD).await;
    let b = app.complete(&id, ok_2mp()).await;
    assert_eq!(int(&b.expect(200)["cost_estimate_nano_usd"]), FLUX_2MP);

    // A public price change: requests submitted before it are billed at the old version.
    let queued_before = app.submit_ok(&public.key, FLUX_DEV).await;
    let special_before = app.submit_ok(&special.key, FLUX_DEV).await;
    let old_version = app.get_request(&queued_before).await.expect(200)["price_version"].clone();
    let r = app
        .apply_catalog(
            "prices_read_on = \"2026-10-01\"\n\n[[endpoint]]\nid = \"fal-ai/flux/dev\"\nname = \"FLUX.1 [dev]\"\ncategory = \"text-to-image\"\nhold_units = \"4\"\nprice = { unit = \"megapixel\", unit_price = \"0.03\" }\n",
        )
        .await;
    assert_eq!(r.expect(200)["price_versions_created"], 1);
    // Applying the same document again creates no version.
    let r = app
        .apply_catalog(
            "prices_read_on = \"2026-10-01\"\n\n[[endpoint]]\nid = \"fal-ai/flux/dev\"\nname = \"FLUX.1 [dev]\"\ncategory = \"text-to-image\"\nhold_units = \"4\"\nprice = { unit = \"megapixel\", unit_price = \"0.03\" }\n",
        )
        .await;
    assert_eq!(r.expect(200)["price_versions_created"], 0);

    let b = app.complete(&pending, ok_2mp()).await;
    assert_eq!(
        int(&b.expect(200)["cost_estimate_nano_usd"]),
        FLUX_2MP,
        "started before"
    );
    // Queued before the change, started after: the hold and the bill use the old version.
    let s = app.start(&queued_before, None).await;
    assert_eq!(int(&s.expect(200)["hold_nano_usd"]), FLUX_HOLD);
    let b = app.complete(&queued_before, ok_2mp()).await;
    let b = b.expect(200);
    assert_eq!(int(&b["cost_estimate_nano_usd"]), FLUX_2MP);
    assert_eq!(dec(&b["unit_price"]), d("0.025"));
    assert_eq!(
        app.get_request(&queued_before).await.expect(200)["price_version"],
        old_version
    );

    // A request submitted after the change pays the new price.
    let after = started(&app, &public.key, FLUX_DEV, 120_000_000).await;
    let b = app.complete(&after, ok_2mp()).await;
    let b = b.expect(200);
    assert_eq!(int(&b["cost_estimate_nano_usd"]), 60_000_000);
    assert_eq!(dec(&b["unit_price"]), d("0.03"));
    assert_ne!(
        app.get_request(&after).await.expect(200)["price_version"],
        old_version
    );
    assert_eq!(
        app.position("public").await,
        (10 * USD - 3 * FLUX_2MP - 60_000_000, 0, 0)
    );

    // The account-specific price is unaffected by the public change.
    for id in [special_before, app.submit_ok(&special.key, FLUX_DEV).await] {
        app.start(&id, None).await.expect(200);
        let b = app.complete(&id, ok_2mp()).await;
        assert_eq!(int(&b.expect(200)["cost_estimate_nano_usd"]), 40_000_000);
    }
    assert_eq!(
        app.position("special").await,
        (10 * USD - 3 * 40_000_000, 0, 0)
    );
    // And the discount still applies, now to the new price: 2 MP x 0.03 x 0.9.
    let id = started(&app, &disc.key, FLUX_DEV, 108_000_000).await;
    let b = app.complete(&id, ok_2mp()).await;
    assert_eq!(int(&b.expect(200)["cost_estimate_nano_usd"]), 54_000_000);
    app.assert_reconciled().await;
}

// 14 --------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_starts_cannot_overspend() {
    const N: usize = 5;
    let app = TestApp::spawn().await;
    // Exactly enough for N flux/dev holds of 0.10 USD.
    let c = app.customer("burst", Some(("0.50", "paid"))).await;
    let r = app
        .set_pricing("burst", json!({ "concurrency_limit": 100 }))
        .await;
    let b = r.expect(200);
    assert_eq!(b["account"]["concurrency_limit"], 100);
    assert_eq!(b["account"]["terms"]["in_force"]["concurrency_limit"], 100);

    let mut ids = Vec::new();
    for _ in 0..3 * N {
        ids.push(app.submit_ok(&c.key, FLUX_DEV).await);
    }
    let answers = join_all(ids.iter().map(|id| app.start(id, None))).await;
    let mut won = Vec::new();
    let mut refused = 0;
    for (id, r) in ids.iter().zip(&answers) {
        match r.status.as_u16() {
            200 => {
                assert_eq!(int(&r.body["hold_nano_usd"]), FLUX_HOLD);
                won.push(id.clone());
            }
            402 => {
                let err = r.expect_error(402, "insufficient_credits");
                let available = int(&err["available_nano_usd"]);
                assert!(
                    (0..FLUX_HOLD).contains(&available),
                    "available never negative, never enough: {}",
                    r.text
                );
                assert_eq!(int(&err["required_nano_usd"]), FLUX_HOLD);
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    assert_eq!(won.len(), N, "exactly N holds fit");
    assert_eq!(refused, 2 * N);
    let acct = app.account("burst").await;
    assert_eq!(int(&acct["available_nano_usd"]), 0);
    assert_eq!(int(&acct["held_nano_usd"]), 5 * FLUX_HOLD);
    assert_eq!(acct["in_progress"], N as u64);
    for id in &ids {
        let expected = if won.contains(id) {
            "IN_PROGRESS"
        } else {
            "IN_QUEUE"
        };
        assert_eq!(app.status_of(id).await, expected);
    }

    // Settle them all concurrently; the balance ends exactly where the bills say.
    let done = join_all(won.iter().map(|id| app.complete(id, ok_2mp()))).await;
    for r in &done {
        assert_eq!(int(&r.expect(200)["cost_estimate_nano_usd"]), FLUX_2MP);
    }
    assert_eq!(
        app.position("burst").await,
        (50 * 10_000_000 - N as i64 * FLUX_2MP, 0, 0)
    );
    app.assert_reconciled().await;
}

// 15 --------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_uses_the_envelope_and_names_where() {
    let app = TestApp::spawn().await;
    // Answers axum gives by itself get fal's envelope too.
    let r = app.op(Method::DELETE, "/v1/admin/catalog", json!({})).await;
    r.expect_error(405, "validation_error");
    assert!(r.header("allow").is_some(), "405 keeps its Allow header");
    let r = app.op_get("/v1/admin/accounts/%FF").await;
    r.expect_error(400, "validation_error");

    // A catalog whose price would be back-dated before the version in force is refused with
    // the line and the field, and nothing of it is applied.
    let backdated = r#"
prices_read_on = "2026-09-15"
effective_from = "2020-01-01T00:00:00Z"

[[endpoint]]
id = "fal-ai/flux/dev"
name = "FLUX.1 [dev]"
category = "text-to-image"
price = { unit = "megapixel", unit_price = "0.5", rounding = "up" }
"#;
    let r = app.apply_catalog(backdated).await;
    let err = r.expect_error(400, "validation_error");
    assert_eq!(err["field"], "effective_from");
    assert_eq!(err["line"], 5);
    let c = app.customer("envelope", Some(("1.00", "paid"))).await;
    let id = app.submit_ok(&c.key, FLUX_DEV).await;
    app.start(&id, None).await.expect(200);
    let done = app.complete(&id, ok_2mp()).await;
    assert_eq!(int(&done.expect(200)["cost_estimate_nano_usd"]), FLUX_2MP);

    // A repeated submit answers what the first did, whatever happened since.
    let again = app.submit_id(&id, &c.key, FLUX_DEV).await;
    assert_eq!(again.expect(200)["status"], "IN_QUEUE");
    app.assert_reconciled().await;
}

// 16 --------------------------------------------------------------------------------------------
// Credit expiry: a purchase is a credit lot; lots are spent soonest expiry first and what is
// left of a lot past its date is expired by the sweeper, never what an open hold reserves.

/// An RFC 3339 time `ms` milliseconds from now (negative: in the past), by the wall clock.
fn in_ms(ms: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::milliseconds(ms))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// An RFC 3339 time `ms` milliseconds from the engine's (manual) clock.
fn engine_in_ms(app: &TestApp, ms: i64) -> String {
    crate::harness::rfc3339(app.now_ms() + ms)
}

/// `POST /v1/admin/accounts/{u}/purchases`, with `expires_at` when given.
async fn buy(
    app: &TestApp,
    username: &str,
    purchase_id: &str,
    amount: &str,
    kind: &str,
    expires_at: Option<&str>,
) -> crate::harness::Resp {
    let mut body = json!({ "purchase_id": purchase_id, "amount_usd": amount, "kind": kind });
    if let Some(at) = expires_at {
        body["expires_at"] = json!(at);
    }
    app.op(
        Method::POST,
        &format!("/v1/admin/accounts/{username}/purchases"),
        body,
    )
    .await
}

/// The account's credit lots, in the order shown: (purchase id, remaining nano-USD).
async fn lots(app: &TestApp, username: &str) -> Vec<(String, i64)> {
    let a = app.account(username).await;
    let credits = a["credits"].as_array().expect("credits is an array");
    let lots: Vec<(String, i64)> = credits
        .iter()
        .map(|l| {
            (
                l["purchase_id"].as_str().expect("purchase_id").to_string(),
                int(&l["remaining_nano_usd"]),
            )
        })
        .collect();
    // The lots hold exactly the (non-negative) balance.
    let sum: i64 = lots.iter().map(|(_, r)| r).sum();
    assert_eq!(sum, int(&a["balance_nano_usd"]).max(0), "{a}");
    lots
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unspent_credits_expire_at_their_date() {
    let app = TestApp::spawn_at(T0).await;
    let c = app.customer("expiring", None).await;
    // Another account, with credits that expire in a year: untouched.
    app.customer("lasting", Some(("1.00", "paid"))).await;

    let expires_at = engine_in_ms(&app, 1500);
    let p = buy(
        &app,
        "expiring",
        "short-lived",
        "2.00",
        "paid",
        Some(&expires_at),
    )
    .await;
    let p = p.expect(201).clone();
    assert_eq!(p["expires_at"], json!(expires_at));
    assert_eq!(int(&p["balance_nano_usd"]), 2 * USD);
    let a = app.account("expiring").await;
    assert_eq!(
        a["credits"],
        json!([{ "purchase_id": "short-lived", "remaining_nano_usd": 2 * USD, "expires_at": expires_at }])
    );

    // Some of it is spent before the date.
    let id = started(&app, &c.key, FLUX_DEV, FLUX_HOLD).await;
    let done = app.complete(&id, ok_2mp()).await;
    let left = 2 * USD - FLUX_2MP;
    assert_eq!(int(&done.expect(200)["balance_nano_usd"]), left);
    assert_eq!(
        lots(&app, "expiring").await,
        vec![("short-lived".into(), left)]
    );

    // Just before the date, nothing expires; at the date, exactly the unspent rest does.
    app.advance(1499).await;
    assert_eq!(app.position("expiring").await, (left, 0, 0));
    app.advance(1).await;
    let a = app.account("expiring").await;
    assert_eq!(int(&a["balance_nano_usd"]), 0, "{a}");
    assert_eq!(int(&a["held_nano_usd"]), 0);
    assert_eq!(a["credits"], json!([]));
    assert_eq!(a["locked"], true, "no credits left: locked");
    let rec = app.reconciliation().await;
    assert_eq!(rec["expired_nano_usd"], left, "{rec}");
    assert_eq!(rec["lot_mismatches"], json!([]));
    assert_eq!(rec["billed_nano_usd"], FLUX_2MP);
    assert_eq!(rec["clean"], true);

    // Later sweeps find nothing more to expire.
    app.advance(400).await;
    let rec = app.reconciliation().await;
    assert_eq!(rec["expired_nano_usd"], left, "{rec}");
    assert_eq!(app.position("expiring").await, (0, 0, 0));
    assert_eq!(app.position("lasting").await, (USD, 0, 0));
    assert_eq!(
        lots(&app, "lasting").await,
        vec![("initial-lasting".into(), USD)]
    );
    app.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charges_spend_the_soonest_expiring_credits_first() {
    let app = TestApp::spawn().await;
    let c = app.customer("orderly", None).await;
    let in_a_day = in_ms(86_400_000);
    let in_two_days = in_ms(2 * 86_400_000);
    for (pid, kind, expires_at) in [
        ("never", "free", None),
        ("in-a-year", "paid", None),
        ("in-two-days", "paid", Some(in_two_days.as_str())),
        ("in-a-day", "paid", Some(in_a_day.as_str())),
    ] {
        buy(&app, "orderly", pid, "1.00", kind, expires_at)
            .await
            .expect(201);
    }
    let m = 1_000_000i64;
    let shown = |v: &[(&str, i64)]| -> Vec<(String, i64)> {
        v.iter().map(|(p, r)| (p.to_string(), r * m)).collect()
    };
    // Spending order: soonest expiry first, credits that never expire last.
    assert_eq!(
        lots(&app, "orderly").await,
        shown(&[
            ("in-a-day", 1000),
            ("in-two-days", 1000),
            ("in-a-year", 1000),
            ("never", 1000),
        ])
    );
    let a = app.account("orderly").await;
    assert_eq!(a["credits"][0]["expires_at"], json!(in_a_day));
    assert_eq!(a["credits"][1]["expires_at"], json!(in_two_days));
    assert_eq!(a["credits"][3]["expires_at"], Value::Null);

    // A settled hold takes from the lot that expires first.
    let id = started(&app, &c.key, FLUX_DEV, FLUX_HOLD).await;
    app.complete(&id, ok_2mp()).await.expect(200);
    assert_eq!(
        lots(&app, "orderly").await,
        shown(&[
            ("in-a-day", 950),
            ("in-two-days", 1000),
            ("in-a-year", 1000),
            ("never", 1000),
        ])
    );

    // A usage event of 1.20 (3 x 16 MP) empties that lot and goes on to the next.
    let big = |n: usize| json!({ "images": vec![json!({ "width": 4000, "height": 4000 }); n] });
    let mut e = event(&new_id(), FLUX_DEV, "orderly", 200);
    e["output"] = big(3);
    let r = app.usage_events(json!([e])).await;
    let r = r.expect(200);
    assert_eq!(
        int(&r["results"][0]["cost_estimate_nano_usd"]),
        1200 * m,
        "{r}"
    );
    assert_eq!(
        lots(&app, "orderly").await,
        shown(&[("in-two-days", 750), ("in-a-year", 1000), ("never", 1000)])
    );

    // 2.40 more: the rest of the dated lots, then the credits that never expire.
    let mut e = event(&new_id(), FLUX_DEV, "orderly", 200);
    e["output"] = big(6);
    let r = app.usage_events(json!([e])).await;
    assert_eq!(
        int(&r.expect(200)["results"][0]["cost_estimate_nano_usd"]),
        2400 * m
    );
    assert_eq!(lots(&app, "orderly").await, shown(&[("never", 350)]));
    assert_eq!(app.position("orderly").await, (350 * m, 0, 0));
    let rec = app.reconciliation().await;
    assert_eq!(rec["expired_nano_usd"], 0);
    app.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_is_honoured_across_the_expiry_of_its_credits() {
    let app = TestApp::spawn_at(T0).await;
    let c = app.customer("honoured", None).await;
    let expires_at = engine_in_ms(&app, 1500);
    buy(&app, "honoured", "brief", "1.00", "paid", Some(&expires_at))
        .await
        .expect(201);
    let id = started(&app, &c.key, FLUX_DEV, FLUX_HOLD).await;

    // Past the date, everything but the hold expires.
    app.advance(1500).await;
    let a = app.account("honoured").await;
    assert_eq!(int(&a["balance_nano_usd"]), FLUX_HOLD, "{a}");
    assert_eq!(int(&a["held_nano_usd"]), FLUX_HOLD);
    assert_eq!(int(&a["in_progress"]), 1);
    assert_eq!(
        a["credits"],
        json!([{ "purchase_id": "brief", "remaining_nano_usd": FLUX_HOLD, "expires_at": expires_at }])
    );
    let rec = app.reconciliation().await;
    assert_eq!(rec["expired_nano_usd"], USD - FLUX_HOLD);
    assert_eq!(rec["clean"], true, "{rec}");
    // Later sweeps leave the held credits alone.
    app.advance(400).await;
    assert_eq!(app.position("honoured").await, (FLUX_HOLD, FLUX_HOLD, 1));
    assert_eq!(app.status_of(&id).await, "IN_PROGRESS");

    // The request completes after the date and is billed normally from the held credits.
    let done = app.complete(&id, ok_2mp()).await;
    let done = done.expect(200);
    assert_eq!(done["status"], "COMPLETED");
    assert_eq!(done["billed"], true);
    assert_eq!(int(&done["cost_estimate_nano_usd"]), FLUX_2MP);
    assert_eq!(int(&done["balance_nano_usd"]), FLUX_HOLD - FLUX_2MP);

    // Then what is left of the lot expires at the next sweep.
    app.advance(100).await;
    let a = app.account("honoured").await;
    assert_eq!(int(&a["balance_nano_usd"]), 0, "{a}");
    assert_eq!(a["credits"], json!([]));
    assert_eq!(app.position("honoured").await, (0, 0, 0));
    let rec = app.reconciliation().await;
    assert_eq!(rec["expired_nano_usd"], USD - FLUX_2MP);
    assert_eq!(rec["billed_nano_usd"], FLUX_2MP);
    assert_eq!(rec["revenue_nano_usd"], FLUX_2MP);
    assert_eq!(rec["lot_mismatches"], json!([]));
    app.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchase_expiry_is_validated_and_defaulted() {
    let app = TestApp::spawn().await;
    app.customer("dated", None).await;
    let before = app.reconciliation().await;

    // In the past (or now): refused, nothing written.
    let r = buy(
        &app,
        "dated",
        "stale",
        "5.00",
        "paid",
        Some(&in_ms(-60_000)),
    )
    .await;
    let err = r.expect_error(400, "validation_error");
    assert_eq!(err["field"], "expires_at", "{}", r.text);
    // Not a time: refused, naming the field.
    let r = buy(&app, "dated", "stale", "5.00", "paid", Some("next tuesday")).await;
    assert_eq!(
        r.expect_error(400, "validation_error")["field"],
        "expires_at"
    );
    let r = app
        .op(
            Method::POST,
            "/v1/admin/accounts/dated/purchases",
            json!({ "purchase_id": "stale", "amount_usd": "5.00", "expires_at": 1_900_000_000 }),
        )
        .await;
    r.expect_error(400, "validation_error");
    assert_eq!(app.position("dated").await, (0, 0, 0));
    assert_eq!(lots(&app, "dated").await, vec![]);
    assert_eq!(app.reconciliation().await, before);

    // A paid purchase without a date expires a year (365 days) after it was made.
    let r = buy(&app, "dated", "stale", "5.00", "paid", None).await;
    let paid = r.expect(201).clone();
    assert_eq!(
        r.header("idempotent-replayed"),
        None,
        "the refused id was not used"
    );
    assert_eq!(
        millis(&paid["expires_at"]),
        millis(&paid["created_at"]) + 365 * 86_400_000
    );
    // A free one never expires, unless given a date.
    let free = buy(&app, "dated", "gift", "1.00", "free", None).await;
    let free = free.expect(201).clone();
    assert_eq!(free["expires_at"], Value::Null);
    let at = in_ms(7 * 86_400_000);
    let coupon = buy(&app, "dated", "coupon", "1.00", "free", Some(&at)).await;
    assert_eq!(coupon.expect(201)["expires_at"], json!(at));
    let a = app.account("dated").await;
    assert_eq!(
        a["credits"],
        json!([
            { "purchase_id": "coupon", "remaining_nano_usd": USD, "expires_at": at },
            { "purchase_id": "stale", "remaining_nano_usd": 5 * USD, "expires_at": paid["expires_at"] },
            { "purchase_id": "gift", "remaining_nano_usd": USD, "expires_at": null },
        ])
    );

    // Repeats: the same date (or none) is the same purchase; another date is a conflict.
    let again = buy(&app, "dated", "coupon", "1.00", "free", Some(&at)).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.expect(201)["expires_at"], json!(at));
    let again = buy(&app, "dated", "coupon", "1.00", "free", None).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.expect(201)["expires_at"], json!(at));
    buy(
        &app,
        "dated",
        "coupon",
        "1.00",
        "free",
        Some(&in_ms(30 * 86_400_000)),
    )
    .await
    .expect_error(409, "conflict");
    let again = buy(
        &app,
        "dated",
        "stale",
        "5.00",
        "paid",
        Some(&in_ms(3_600_000)),
    )
    .await;
    again.expect_error(409, "conflict");
    assert_eq!(app.position("dated").await, (7 * USD, 0, 0));
    let rec = app.reconciliation().await;
    assert_eq!(rec["purchased_nano_usd"], 7 * USD);
    assert_eq!(rec["expired_nano_usd"], 0);
    app.assert_reconciled().await;
}
