//! An account's terms change atomically: `PUT /v1/admin/accounts/{username}/pricing` is one
//! engine command in one db transaction, so concurrent changes of different fields never lose
//! one another, and a refused change leaves everything as it was.

use crate::harness::TestApp;
use serde_json::{json, Value};

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
