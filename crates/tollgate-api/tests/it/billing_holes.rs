//! The billing paths that used to leak money silently, end to end through HTTP: an output
//! without what its price measures (refused, or billed as the catalog's `missing_units` says),
//! a completion after its hold expired (billed late, or refused as the catalog says), and what
//! an overdrawn account owes. Every test ends with the ledger reconciling.

use crate::fal::FalSpec;
use crate::harness::{image, int, new_id, rfc3339, TestApp, USD};
use reqwest::Method;
use serde_json::{json, Value};

/// 2025-09-15T12:00:00Z.
const T0: i64 = 1_757_937_600_000;

/// Per megapixel (0.025), held 4 MP.
const FLUX_DEV: &str = "fal-ai/flux/dev";
/// Per second of video (0.08), held 10 s.
const HAILUO: &str = "fal-ai/minimax/hailuo-02/pro/text-to-video";
/// Per compute second (0.00111).
const WHISPER: &str = "fal-ai/whisper";
/// Per image (0.04), `missing_units = "one_unit"`.
const KONTEXT: &str = "fal-ai/flux-pro/kontext";
/// Per image (0.035) on GPU-H100 (0.000525/s), `missing_units = "compute_seconds"`.
const QWEN: &str = "fal-ai/qwen-image-2/text-to-image";

/// Two endpoints whose holds expire after one second: one bills late completions (the
/// default), one refuses them.
const LATE_CATALOG: &str = r#"
prices_read_on = "2026-09-15"

[[endpoint]]
id = "test/late-billed"
name = "Late completions billed"
category = "text-to-image"
hold_timeout_s = 1
price = { unit = "image", unit_price = "0.01" }

[[endpoint]]
id = "test/late-refused"
name = "Late completions refused"
category = "text-to-image"
hold_timeout_s = 1
late_completion = "refuse"
price = { unit = "image", unit_price = "0.01" }
"#;

async fn started(app: &TestApp, key: &str, endpoint: &str) -> String {
    let id = app.submit_ok(key, endpoint).await;
    app.start(&id, None).await.expect(200);
    id
}

/// Asserts a 422 `output_mismatch` naming `missing` and `unexpected`.
#[track_caller]
fn mismatch(err: &Value, missing: &str, unexpected: &[&str]) {
    assert_eq!(err["field"], missing, "{err}");
    assert_eq!(err["unexpected"], json!(unexpected), "{err}");
    let message = err["message"].as_str().unwrap_or_default();
    assert!(message.contains(missing), "{err}");
    assert!(message.contains("nothing was billed"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_without_what_the_price_measures_is_refused_and_can_be_sent_again() {
    let app = TestApp::spawn().await;
    let c = app.customer("mismatch", Some(("10.00", "paid"))).await;
    let flux = started(&app, &c.key, FLUX_DEV).await;
    let hold = 100_000_000; // 4 MP x 0.025
    assert_eq!(app.position("mismatch").await, (10 * USD, hold, 1));

    // No output at all, an empty image list, or a video's seconds: a megapixel price measures
    // none of them. Each is refused, bills nothing, and leaves the request in progress.
    for (output, unexpected) in [
        (json!({}), vec![]),
        (json!({ "images": [] }), vec![]),
        (
            json!({ "video_seconds": "5" }),
            vec!["output.video_seconds"],
        ),
    ] {
        let r = app
            .complete(&flux, json!({ "status_code": 200, "output": output }))
            .await;
        mismatch(
            r.expect_error(422, "output_mismatch"),
            "output.images",
            &unexpected,
        );
        assert_eq!(app.status_of(&flux).await, "IN_PROGRESS");
        assert_eq!(app.position("mismatch").await, (10 * USD, hold, 1));
    }
    // Images sent to a per-second video price.
    let video = started(&app, &c.key, HAILUO).await;
    let r = app
        .complete(
            &video,
            json!({ "status_code": 200, "output": image(1920, 1080) }),
        )
        .await;
    mismatch(
        r.expect_error(422, "output_mismatch"),
        "output.video_seconds",
        &["output.images"],
    );
    assert_eq!(app.status_of(&video).await, "IN_PROGRESS");

    // The refusal was not kept as the answer: the corrected completions are billed.
    let r = app
        .complete(
            &flux,
            json!({ "status_code": 200, "output": image(1920, 1080) }),
        )
        .await;
    let body = r.expect(200);
    assert_eq!(int(&body["cost_estimate_nano_usd"]), 50_000_000, "{body}");
    assert_eq!(r.header("idempotent-replayed"), None);
    let r = app
        .complete(
            &video,
            json!({ "status_code": 200, "output": { "video_seconds": "6" } }),
        )
        .await;
    assert_eq!(int(&r.expect(200)["cost_estimate_nano_usd"]), 480_000_000);

    // `billable_units` win over the output: no mismatch.
    let units = started(&app, &c.key, FLUX_DEV).await;
    let r = app
        .complete(&units, json!({ "status_code": 200, "billable_units": "3" }))
        .await;
    assert_eq!(int(&r.expect(200)["cost_estimate_nano_usd"]), 75_000_000);
    // A server error bills nothing whatever its output: no mismatch either.
    let failed = started(&app, &c.key, FLUX_DEV).await;
    let r = app.complete(&failed, json!({ "status_code": 503 })).await;
    assert_eq!(r.expect(200)["billed"], false);

    assert_eq!(
        app.position("mismatch").await,
        (10 * USD - 50_000_000 - 480_000_000 - 75_000_000, 0, 0)
    );
    let rec = app.reconciliation().await;
    assert_eq!(rec["billed_nano_usd"], 605_000_000, "{rec}");
    app.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_units_bills_one_unit_or_compute_seconds_instead() {
    let app = TestApp::spawn().await;
    let c = app.customer("fallback", Some(("10.00", "paid"))).await;

    // `one_unit`: no images reported, one image billed.
    let kontext = started(&app, &c.key, KONTEXT).await;
    let r = app
        .complete(&kontext, json!({ "status_code": 200, "output": {} }))
        .await;
    let body = r.expect(200);
    assert_eq!(body["billed"], true, "{body}");
    assert_eq!(body["unit"], "image");
    assert_eq!(r.header("x-fal-billable-units"), Some("1"));
    assert_eq!(int(&body["cost_estimate_nano_usd"]), 40_000_000);

    // `compute_seconds`: the inference seconds on the endpoint's machine (GPU-H100).
    let qwen = started(&app, &c.key, QWEN).await;
    let r = app
        .complete(
            &qwen,
            json!({ "status_code": 200, "output": {}, "inference_seconds": "10" }),
        )
        .await;
    let body = r.expect(200);
    assert_eq!(body["unit"], "gpu second", "{body}");
    assert_eq!(r.header("x-fal-billable-units"), Some("10"));
    assert_eq!(int(&body["cost_estimate_nano_usd"]), 5_250_000); // 10 x 0.000525
                                                                 // With images it is billed per image, as its price says.
    let qwen = started(&app, &c.key, QWEN).await;
    let r = app
        .complete(
            &qwen,
            json!({ "status_code": 200, "output": image(1024, 1024) }),
        )
        .await;
    assert_eq!(int(&r.expect(200)["cost_estimate_nano_usd"]), 35_000_000);

    // The same through usage events: a compute fallback without inference seconds has
    // nothing to bill, and says so.
    let now = rfc3339(chrono::Utc::now().timestamp_millis());
    let r = app
        .usage_events(json!([
            { "event_id": "ev-one", "endpoint_id": KONTEXT, "username": "fallback",
              "timestamp": now, "status_code": 200 },
            { "event_id": "ev-none", "endpoint_id": QWEN, "username": "fallback",
              "timestamp": now, "status_code": 200 },
        ]))
        .await;
    let results = r.expect(200)["results"].clone();
    assert_eq!(
        int(&results[0]["cost_estimate_nano_usd"]),
        40_000_000,
        "{results}"
    );
    assert_eq!(results[1]["status_code"], 422, "{results}");
    assert_eq!(results[1]["error"]["type"], "output_mismatch");
    assert_eq!(results[1]["error"]["field"], "inference_seconds");

    let billed = 40_000_000 + 5_250_000 + 35_000_000 + 40_000_000;
    assert_eq!(app.position("fallback").await, (10 * USD - billed, 0, 0));
    assert_eq!(app.reconciliation().await["billed_nano_usd"], billed);
    app.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_usage_event_is_its_own_result_and_can_be_sent_again() {
    let app = TestApp::spawn().await;
    app.customer("events", Some(("10.00", "paid"))).await;
    let now = rfc3339(chrono::Utc::now().timestamp_millis());
    let event = |id: &str, endpoint: &str, extra: Value| {
        let mut e = json!({ "event_id": id, "endpoint_id": endpoint, "username": "events",
                            "timestamp": now, "status_code": 200 });
        e.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        e
    };
    let r = app
        .usage_events(json!([
            event(
                "ev-flux",
                FLUX_DEV,
                json!({ "output": { "video_seconds": "4" } })
            ),
            event("ev-ok", FLUX_DEV, json!({ "output": image(1024, 1024) })),
            event("ev-whisper", WHISPER, json!({})),
        ]))
        .await;
    let results = r.expect(200)["results"].clone();
    assert_eq!(results[0]["event_id"], "ev-flux");
    assert_eq!(results[0]["status_code"], 422, "{results}");
    mismatch(
        &results[0]["error"],
        "output.images",
        &["output.video_seconds"],
    );
    assert_eq!(int(&results[1]["cost_estimate_nano_usd"]), 25_000_000);
    // A compute price needs the inference seconds an event reports.
    assert_eq!(results[2]["error"]["type"], "output_mismatch", "{results}");
    assert_eq!(results[2]["error"]["field"], "inference_seconds");
    app.get_request("ev-flux")
        .await
        .expect_error(404, "not_found");

    // The refused events were not recorded: sent again, corrected, they are billed (not
    // duplicates); the billed one is a duplicate.
    let r = app
        .usage_events(json!([
            event("ev-flux", FLUX_DEV, json!({ "output": image(1920, 1080) })),
            event("ev-ok", FLUX_DEV, json!({ "output": image(1024, 1024) })),
            event("ev-whisper", WHISPER, json!({ "inference_seconds": "100" })),
        ]))
        .await;
    let results = r.expect(200)["results"].clone();
    assert_eq!(results[0]["duplicate"], false, "{results}");
    assert_eq!(int(&results[0]["cost_estimate_nano_usd"]), 50_000_000);
    assert_eq!(results[1]["duplicate"], true);
    assert_eq!(results[2]["duplicate"], false);
    assert_eq!(int(&results[2]["cost_estimate_nano_usd"]), 111_000_000);

    let billed = 25_000_000 + 50_000_000 + 111_000_000;
    assert_eq!(app.position("events").await, (10 * USD - billed, 0, 0));
    assert_eq!(app.reconciliation().await["billed_nano_usd"], billed);
    app.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_after_its_hold_expired_is_billed_late_without_a_hold() {
    let app = TestApp::spawn_at(T0).await;
    app.apply_catalog(LATE_CATALOG).await.expect(200);
    // 10 USD paid: four requests may run at once.
    let c = app.customer("late", Some(("10.00", "paid"))).await;

    let billed = started(&app, &c.key, "test/late-billed").await;
    let failed = started(&app, &c.key, "test/late-billed").await;
    let refused = started(&app, &c.key, "test/late-refused").await;
    assert_eq!(app.position("late").await, (10 * USD, 30_000_000, 3));
    assert_eq!(app.advance(1000).await, 3);
    for id in [&billed, &failed, &refused] {
        assert_eq!(app.status_of(id).await, "EXPIRED");
    }
    assert_eq!(app.position("late").await, (10 * USD, 0, 0));
    // The slots are free: a new request takes one while the late ones are billed.
    let running = started(&app, &c.key, "test/late-billed").await;
    app.advance(500).await;

    // A late output that lacks what the price measures is refused like any other.
    let r = app
        .complete(&billed, json!({ "status_code": 200, "output": {} }))
        .await;
    r.expect_error(422, "output_mismatch");
    assert_eq!(app.status_of(&billed).await, "EXPIRED");

    // Billed late: charged without a hold, no slot taken.
    let r = app
        .complete(
            &billed,
            json!({ "status_code": 200, "output": image(512, 512) }),
        )
        .await;
    let body = r.expect(200).clone();
    assert_eq!(body["status"], "COMPLETED", "{body}");
    assert_eq!(body["late"], true);
    assert_eq!(body["billed"], true);
    assert_eq!(int(&body["cost_estimate_nano_usd"]), 10_000_000);
    assert_eq!(int(&body["balance_nano_usd"]), 10 * USD - 10_000_000);
    assert_eq!(
        app.position("late").await,
        (10 * USD - 10_000_000, 10_000_000, 1)
    );
    let g = app.get_request(&billed).await;
    let g = g.expect(200);
    assert_eq!(g["status"], "COMPLETED");
    assert_eq!(g["billing"]["late"], true, "{g}");
    assert!(g.get("late").is_none(), "late is the billing result's: {g}");
    // Inference measured from start to the hold's expiry, not to the late completion.
    assert_eq!(g["inference_seconds"], 1.0, "{g}");
    // Idempotent: the repeat answers the first answer and bills nothing again.
    let again = app
        .complete(
            &billed,
            json!({ "status_code": 200, "output": image(512, 512) }),
        )
        .await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.expect(200), &body);

    // A late server error bills nothing.
    let r = app.complete(&failed, json!({ "status_code": 500 })).await;
    let body = r.expect(200);
    assert_eq!(
        (body["status"].as_str(), body["billed"].as_bool()),
        (Some("FAILED"), Some(false))
    );
    assert_eq!(body["late"], true);

    // An endpoint that refuses late completions keeps the request expired and unbilled.
    let r = app
        .complete(
            &refused,
            json!({ "status_code": 200, "output": image(512, 512) }),
        )
        .await;
    let err = r.expect_error(409, "request_expired");
    assert!(
        err["message"].as_str().unwrap().contains("expired"),
        "{err}"
    );
    assert_eq!(app.status_of(&refused).await, "EXPIRED");

    // The request running meanwhile settles against its own hold, as usual.
    let r = app
        .complete(
            &running,
            json!({ "status_code": 200, "output": image(512, 512) }),
        )
        .await;
    assert_eq!(r.expect(200)["late"], false);
    assert_eq!(app.position("late").await, (10 * USD - 20_000_000, 0, 0));
    assert_eq!(app.reconciliation().await["billed_nano_usd"], 20_000_000);
    app.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overdrawn_account_sees_what_it_owes() {
    let app = TestApp::spawn().await;
    app.customer("owes", Some(("0.10", "paid"))).await;
    let admin = app.create_key("owes", "ADMIN").await;
    let fal = FalSpec::load();
    let credits = |r: &crate::harness::Resp| {
        fal.check("get", "/account/billing", r);
        r.expect(200)["credits"].clone()
    };

    let r = app.billing(&admin, "expand=credits").await;
    let c = credits(&r);
    assert_eq!(c["current_balance"], 0.1, "{c}");
    assert_eq!(int(&c["balance_nano_usd"]), 100_000_000);
    assert_eq!(int(&c["owed_nano_usd"]), 0);

    // Usage reported after the fact is billed in full: 10 MP at 0.025 = 0.25 USD, which the
    // 0.10 USD of credits do not cover.
    let r = app
        .usage_events(json!([{ "event_id": new_id(), "endpoint_id": FLUX_DEV,
            "username": "owes", "timestamp": rfc3339(chrono::Utc::now().timestamp_millis()),
            "status_code": 200, "billable_units": "10" }]))
        .await;
    assert_eq!(
        int(&r.expect(200)["results"][0]["balance_nano_usd"]),
        -150_000_000
    );

    let r = app.billing(&admin, "expand=credits").await;
    let c = credits(&r);
    assert_eq!(
        c["current_balance"], 0.0,
        "fal's balance is never negative: {c}"
    );
    assert_eq!(int(&c["current_balance_nano_usd"]), 0);
    assert_eq!(int(&c["balance_nano_usd"]), -150_000_000);
    assert_eq!(int(&c["owed_nano_usd"]), 150_000_000);
    assert_eq!(c["currency"], "USD");
    // The operator sees the same signed balance.
    assert_eq!(
        int(&app.account("owes").await["balance_nano_usd"]),
        -150_000_000
    );

    // A purchase repays the debt first.
    app.purchase("owes", "repay", "1.00", "paid")
        .await
        .expect(201);
    let c = credits(&app.billing(&admin, "expand=credits").await);
    assert_eq!(int(&c["balance_nano_usd"]), 850_000_000);
    assert_eq!(int(&c["owed_nano_usd"]), 0);
    // Without `expand=credits` there are no credits at all.
    let r = app
        .raw(
            Method::GET,
            "/v1/account/billing",
            Some(&admin),
            crate::harness::Body::None,
        )
        .await;
    assert_eq!(r.expect(200).get("credits"), None);
    app.assert_reconciled().await;
}
