//! An account's terms change atomically: `PUT /v1/admin/accounts/{username}/pricing` is one
//! engine command in one db transaction, so concurrent changes of different fields never lose
//! one another, and a refused change leaves everything as it was. Every term takes effect from
//! its `effective_from`: machine prices bill compute from then (by submission or timestamp),
//! the billing mode admits from then, the low-balance level is shown scheduled then in force.

use crate::harness::{d, dec, int, rfc3339, Body, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use tollgate_store::testing::backends;

/// 2026-09-15T12:00:00Z.
const T0: i64 = 1_789_473_600_000;
const HOUR: i64 = 3_600_000;
/// Billed in GPU-seconds at GPU-H100's price (0.000525 USD in the sample catalog); holds 60.
const STABLE_AUDIO: &str = "fal-ai/stable-audio";
const FLUX_DEV: &str = "fal-ai/flux/dev";

async fn versions(app: &TestApp) -> usize {
    app.engine
        .read(|r| r.price_versions())
        .await
        .expect("price versions")
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_of_different_fields_both_stick() {
    let app = TestApp::spawn().await;
    app.customer("acme", Some(("10.00", "paid"))).await;
    for round in 1..=25i64 {
        let percent = format!("{round}");
        let tier = json!([{ "from_usd": format!("{}", 100 + round), "percent": "40" }]);
        let threshold = format!("{round}.50");
        let (a, b, c, d) = tokio::join!(
            app.set_pricing("acme", json!({ "percent_discount": percent })),
            app.set_pricing("acme", json!({ "volume_tiers": tier })),
            app.set_pricing("acme", json!({ "concurrency_limit": round })),
            app.set_pricing("acme", json!({ "lock_threshold_usd": threshold })),
        );
        for r in [a, b, c, d] {
            r.expect(200);
        }
        let acct = app.account("acme").await;
        let in_force = &acct["terms"]["in_force"];
        assert_eq!(
            (&in_force["percent_discount"], &in_force["volume_tiers"]),
            (&json!(percent), &tier),
            "round {round}: {acct}"
        );
        assert_eq!(in_force["concurrency_limit"], round, "round {round}");
        assert_eq!(
            in_force["lock_threshold_nano_usd"],
            round * 1_000_000_000 + 500_000_000,
            "round {round}"
        );
    }
    app.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_update_changes_nothing() {
    let app = TestApp::spawn().await;
    app.customer("acme", Some(("10.00", "paid"))).await;
    let good_price = json!({ "unit": "megapixel", "unit_price": "0.02" });
    app.set_pricing(
        "acme",
        json!({ "percent_discount": "5", "concurrency_limit": 2, "lock_threshold_usd": "1",
                "prices": { "fal-ai/flux/dev": good_price } }),
    )
    .await
    .expect(200);
    let before = (app.account("acme").await, versions(&app).await);
    let refusals: [(Value, u16, &str); 7] = [
        // A price written as a binary float, which may be inexact.
        (
            json!({ "prices": { "fal-ai/flux/dev": { "unit": "megapixel", "unit_price": 0.02 } } }),
            400,
            "validation_error",
        ),
        // A date with nothing to date.
        (
            json!({ "effective_from": "2030-01-01T00:00:00Z" }),
            400,
            "validation_error",
        ),
        // A price dated before the account's latest version of it.
        (
            json!({ "prices": { "fal-ai/flux/dev": good_price }, "effective_from": "2020-01-01T00:00:00Z" }),
            400,
            "validation_error",
        ),
        // Valid terms with a price for an endpoint the catalog does not have.
        (
            json!({ "percent_discount": "20", "concurrency_limit": 9,
                    "prices": { "fal-ai/flux/dev": good_price, "fal-ai/no-such-model": good_price } }),
            404,
            "not_found",
        ),
        // Valid terms and a valid price, with an invalid one.
        (
            json!({ "volume_tiers": [{ "from_usd": "1", "percent": "30" }],
                    "prices": { "fal-ai/flux/dev": good_price,
                                "fal-ai/flux/schnell": { "unit": "megapixel", "unit_price": "-1" } } }),
            400,
            "validation_error",
        ),
        // A valid price with terms out of range.
        (
            json!({ "percent_discount": "101", "prices": { "fal-ai/flux/dev": good_price } }),
            400,
            "validation_error",
        ),
        (
            json!({ "lock_threshold_usd": "2", "concurrency_limit": 0 }),
            400,
            "validation_error",
        ),
    ];
    for (body, status, kind) in refusals {
        let r = app.set_pricing("acme", body.clone()).await;
        r.expect_error(status, kind);
        assert_eq!(
            (app.account("acme").await, versions(&app).await),
            before,
            "{body} changed something"
        );
    }
    app.assert_reconciled().await;
}

fn compute_event(id: &str, at: i64) -> Value {
    json!({
        "event_id": id,
        "endpoint_id": STABLE_AUDIO,
        "username": "acme",
        "timestamp": rfc3339(at),
        "status_code": 200,
        "inference_seconds": "10",
    })
}

/// The unit price `key`'s account sees for `endpoint` (`GET /v1/models/pricing`).
async fn list_price(app: &TestApp, key: &str, endpoint: &str) -> rust_decimal::Decimal {
    let r = app
        .raw(
            Method::GET,
            &format!("/v1/models/pricing?endpoint_id={endpoint}"),
            Some(key),
            Body::None,
        )
        .await;
    dec(&r.expect(200)["prices"][0]["unit_price"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_prices_bill_compute_from_their_effective_date() {
    for backend in backends() {
        let on = backend.name();
        let app = TestApp::spawn_at_on(&backend, T0).await;
        let customer = app.customer("acme", Some(("10.00", "paid"))).await;
        // Submitted before the change: held and billed at the catalog's price.
        let early = app.submit_ok(&customer.key, STABLE_AUDIO).await;
        let r = app
            .set_pricing(
                "acme",
                json!({ "machine_prices": { "GPU-H100": "0.000400" },
                        "effective_from": rfc3339(T0 + HOUR) }),
            )
            .await;
        let acct = &r.expect(200)["account"];
        assert_eq!(
            acct["terms"]["in_force"]["machine_prices"],
            json!({}),
            "{on}"
        );
        assert_eq!(
            acct["terms"]["scheduled"][0]["machine_prices"],
            json!({ "GPU-H100": "0.0004" }),
            "{on}: {acct}"
        );
        assert_eq!(
            list_price(&app, &customer.key, STABLE_AUDIO).await,
            d("0.000525")
        );

        app.advance(2 * HOUR).await;
        let acct = app.account("acme").await;
        assert_eq!(
            acct["terms"]["in_force"]["machine_prices"],
            json!({ "GPU-H100": "0.0004" }),
            "{on}"
        );
        assert_eq!(acct["terms"]["scheduled"], json!([]), "{on}");
        assert_eq!(
            list_price(&app, &customer.key, STABLE_AUDIO).await,
            d("0.0004")
        );
        // Events of 10 GPU-seconds, from before and after the change.
        let r = app
            .usage_events(json!([
                compute_event("before", T0 + HOUR - 1),
                compute_event("after", T0 + HOUR)
            ]))
            .await;
        let results = r.expect(200)["results"].as_array().unwrap().clone();
        let billed: Vec<i64> = results
            .iter()
            .map(|e| int(&e["cost_estimate_nano_usd"]))
            .collect();
        assert_eq!(billed, [5_250_000, 4_000_000], "{on}: {results:?}");
        // Requests: the hold (60 GPU-seconds) and the bill (10) at the price in force at
        // submission.
        let late = app.submit_ok(&customer.key, STABLE_AUDIO).await;
        let mut lifecycle = 0;
        for (id, hold, cost) in [
            (&early, 31_500_000, 5_250_000),
            (&late, 24_000_000, 4_000_000),
        ] {
            let r = app.start(id, None).await;
            assert_eq!(int(&r.expect(200)["hold_nano_usd"]), hold, "{on}");
            let r = app
                .complete(id, json!({ "status_code": 200, "inference_seconds": "10" }))
                .await;
            assert_eq!(int(&r.expect(200)["cost_estimate_nano_usd"]), cost, "{on}");
            lifecycle += cost;
        }
        // `null` returns the machine type to the catalog's price (a new version, now).
        let r = app
            .set_pricing("acme", json!({ "machine_prices": { "GPU-H100": null } }))
            .await;
        assert_eq!(
            r.expect(200)["account"]["terms"]["in_force"]["machine_prices"],
            json!({}),
            "{on}"
        );
        assert_eq!(
            list_price(&app, &customer.key, STABLE_AUDIO).await,
            d("0.000525")
        );
        assert_eq!(
            int(&app.account("acme").await["balance_nano_usd"]),
            10_000_000_000 - 5_250_000 - 4_000_000 - lifecycle,
            "{on}"
        );
        app.assert_reconciled().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_billing_mode_switches_at_its_effective_date() {
    for backend in backends() {
        let on = backend.name();
        let app = TestApp::spawn_at_on(&backend, T0).await;
        let r = app
            .op(
                Method::POST,
                "/v1/admin/accounts",
                json!({ "username": "acme", "billing": "invoice" }),
            )
            .await;
        assert_eq!(r.expect(201)["billing"], "invoice", "{on}");
        let acct = app.account("acme").await;
        assert_eq!(acct["billing"], "invoice", "{on}");
        assert_eq!(
            acct["terms"]["in_force"]["billing"], "invoice",
            "{on}: {acct}"
        );
        assert_eq!(acct["locked"], false, "{on}: invoice-billed, never locked");
        let key = app.create_key("acme", "API").await;
        // Without credits, an invoice-billed account is admitted and billed: it owes.
        let id = app.submit_ok(&key, FLUX_DEV).await;
        app.start(&id, None).await.expect(200);
        let r = app
            .complete(
                &id,
                json!({ "status_code": 200, "output": crate::harness::image(1024, 1024) }),
            )
            .await;
        assert_eq!(int(&r.expect(200)["balance_nano_usd"]), -25_000_000, "{on}");

        // Prepaid from an hour from now.
        let r = app
            .set_pricing(
                "acme",
                json!({ "billing": "prepaid", "effective_from": rfc3339(T0 + HOUR) }),
            )
            .await;
        let acct = &r.expect(200)["account"];
        assert_eq!(acct["billing"], "invoice", "{on}: not yet");
        assert_eq!(acct["terms"]["scheduled"][0]["billing"], "prepaid", "{on}");
        assert_eq!(acct["locked"], false, "{on}");
        app.submit_ok(&key, FLUX_DEV).await;

        app.advance(HOUR).await;
        let acct = app.account("acme").await;
        assert_eq!(acct["billing"], "prepaid", "{on}");
        assert_eq!(acct["terms"]["in_force"]["billing"], "prepaid", "{on}");
        assert_eq!(
            (&acct["locked"], &acct["lock_reason"]),
            (&json!(true), &json!("exhausted_balance")),
            "{on}: prepaid, owing"
        );
        app.submit(&key, FLUX_DEV)
            .await
            .1
            .expect_error(403, "account_locked");
        // Credits repay what is owed and unlock; holds are limited by the balance now.
        app.purchase("acme", "p-1", "0.075", "paid")
            .await
            .expect(201);
        let id = app.submit_ok(&key, FLUX_DEV).await;
        let r = app.start(&id, Some(json!({ "hold_units": "4" }))).await;
        let e = r.expect_error(402, "insufficient_credits");
        assert_eq!(int(&e["available_nano_usd"]), 50_000_000, "{on}: {e}");
        // Back to invoice at once (no date: now): admitted without credit again.
        app.set_pricing("acme", json!({ "billing": "invoice" }))
            .await
            .expect(200);
        assert_eq!(app.account("acme").await["billing"], "invoice", "{on}");
        app.start(&id, Some(json!({ "hold_units": "4" })))
            .await
            .expect(200);
        app.assert_reconciled().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_low_balance_level_is_a_dated_term() {
    for backend in backends() {
        let on = backend.name();
        let app = TestApp::spawn_at_on(&backend, T0).await;
        app.customer("acme", Some(("10.00", "paid"))).await;
        let acct = app.account("acme").await;
        assert_eq!(
            acct["terms"]["in_force"]["low_balance_nano_usd"],
            Value::Null
        );
        assert_eq!(acct["terms"]["in_force"]["billing"], "prepaid", "{on}");
        let r = app
            .set_pricing(
                "acme",
                json!({ "low_balance_usd": "5.25", "effective_from": rfc3339(T0 + HOUR) }),
            )
            .await;
        let acct = &r.expect(200)["account"];
        assert_eq!(
            acct["terms"]["in_force"]["low_balance_nano_usd"],
            Value::Null,
            "{on}"
        );
        assert_eq!(
            acct["terms"]["scheduled"][0]["low_balance_nano_usd"], 5_250_000_000_i64,
            "{on}"
        );
        app.advance(HOUR).await;
        let acct = app.account("acme").await;
        assert_eq!(
            acct["terms"]["in_force"]["low_balance_nano_usd"], 5_250_000_000_i64,
            "{on}"
        );
        // Another term changes; the level is kept. `null` removes it.
        app.set_pricing("acme", json!({ "concurrency_limit": 4 }))
            .await
            .expect(200);
        let acct = app.account("acme").await;
        assert_eq!(
            acct["terms"]["in_force"]["low_balance_nano_usd"], 5_250_000_000_i64,
            "{on}"
        );
        app.set_pricing("acme", json!({ "low_balance_usd": null }))
            .await
            .expect(200);
        let acct = app.account("acme").await;
        assert_eq!(
            acct["terms"]["in_force"]["low_balance_nano_usd"],
            Value::Null,
            "{on}"
        );
        assert_eq!(acct["terms"]["in_force"]["concurrency_limit"], 4, "{on}");
        app.assert_reconciled().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_new_terms_are_refused_naming_the_field_and_write_nothing() {
    let app = TestApp::spawn_at(T0).await;
    app.customer("acme", Some(("10.00", "paid"))).await;
    app.set_pricing(
        "acme",
        json!({ "low_balance_usd": "1", "machine_prices": { "GPU-H100": "0.0004" } }),
    )
    .await
    .expect(200);
    let before = (app.account("acme").await, versions(&app).await);
    let valid = json!({ "percent_discount": "20", "billing": "invoice",
                        "prices": { FLUX_DEV: { "unit": "megapixel", "unit_price": "0.02" } } });
    let with = |extra: Value| {
        let mut body = valid.clone();
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let refusals: [(Value, u16, &str, &str); 10] = [
        // In the past: what was billed keeps what was in force.
        (
            with(json!({ "effective_from": rfc3339(T0 - 1_000) })),
            400,
            "validation_error",
            "effective_from",
        ),
        (
            with(json!({ "low_balance_usd": "-1" })),
            400,
            "validation_error",
            "low_balance_usd",
        ),
        (
            with(json!({ "low_balance_usd": "1000000.01" })),
            400,
            "validation_error",
            "low_balance_usd",
        ),
        (
            with(json!({ "low_balance_usd": 5 })),
            400,
            "validation_error",
            "low_balance_usd",
        ),
        (
            with(json!({ "billing": "postpaid" })),
            400,
            "validation_error",
            "billing",
        ),
        (
            with(json!({ "machine_prices": { "GPU-H100": "-0.0001" } })),
            400,
            "validation_error",
            "machine_prices.GPU-H100",
        ),
        (
            with(json!({ "machine_prices": { "GPU-H100": "1000.5" } })),
            400,
            "validation_error",
            "machine_prices.GPU-H100",
        ),
        (
            with(json!({ "machine_prices": { "GPU-H100": 0.0004 } })),
            400,
            "validation_error",
            "machine_prices.GPU-H100",
        ),
        (
            with(json!({ "machine_prices": { "GPU H100": "0.1" } })),
            400,
            "validation_error",
            "machine_prices",
        ),
        (
            with(json!({ "machine_prices": { "GPU-H100": "0.1", "GPU-Z9": "0.1" } })),
            404,
            "not_found",
            "GPU-Z9",
        ),
    ];
    for (body, status, kind, names) in refusals {
        let r = app.set_pricing("acme", body.clone()).await;
        let e = r.expect_error(status, kind);
        if status == 400 {
            assert!(
                e["field"].as_str().is_some_and(|f| f.starts_with(names)),
                "{body}: {e}"
            );
        } else {
            assert!(r.message().contains(&names.to_lowercase()), "{body}: {e}");
        }
        assert_eq!(
            (app.account("acme").await, versions(&app).await),
            before,
            "{body} changed something"
        );
    }
    app.assert_reconciled().await;
}
