//! A catalog previewed before it is applied: `PUT /v1/admin/catalog?dry_run=true` answers the
//! change endpoint by endpoint and writes nothing; the apply answers the same change; a price
//! that moves by more than 3x either way is warned of in both.

use crate::harness::{image, int, millis, Body, TestApp, SAMPLE_CATALOG, USD};
use reqwest::Method;
use serde_json::{json, Value};

/// The sample with flux/dev's price quadrupled (0.025 → 0.10), schnell renamed and a late
/// policy on it, a machine type repriced slightly, and one endpoint added at the end.
fn changed_sample() -> String {
    let mut s = SAMPLE_CATALOG
        .replacen(r#"unit_price = "0.025" }"#, r#"unit_price = "0.10" }"#, 1)
        .replacen(
            "name = \"FLUX.1 [schnell]\"",
            "name = \"FLUX.1 [schnell] (fast)\"\nlate_completion = \"refuse\"",
            1,
        )
        .replacen(r#"GPU-L40 = "0.0003""#, r#"GPU-L40 = "0.00031""#, 1);
    s.push_str(
        "\n[[endpoint]]\nid = \"test/new-model\"\nname = \"New\"\ncategory = \"text-to-image\"\n\
         price = { unit = \"image\", unit_price = \"0.02\" }\n",
    );
    s
}

async fn put_catalog(app: &TestApp, text: &str, dry_run: bool) -> crate::harness::Resp {
    let path = if dry_run {
        "/v1/admin/catalog?dry_run=true"
    } else {
        "/v1/admin/catalog"
    };
    app.raw(
        Method::PUT,
        path,
        Some(&app.operator_key),
        Body::Raw {
            content_type: "application/toml",
            text: text.to_string(),
        },
    )
    .await
}

/// The parts of an answer that describe the change (not `dry_run`).
fn change_of(body: &Value) -> Value {
    json!({
        "endpoints": body["endpoints"],
        "price_versions_created": body["price_versions_created"],
        "changes": body["changes"],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_answers_the_change_writes_nothing_and_the_apply_answers_the_same() {
    let app = TestApp::spawn_at(1_757_937_600_000).await;
    let c = app.customer("preview", Some(("10.00", "paid"))).await;
    let doc = changed_sample();

    let r = put_catalog(&app, &doc, true).await;
    let preview = r.expect(200).clone();
    assert_eq!(preview["dry_run"], true, "{preview}");
    assert_eq!(preview["endpoints"], 35);
    assert_eq!(preview["price_versions_created"], 2, "{preview}");
    let ch = &preview["changes"];
    assert_eq!(ch["unchanged"], 32, "{ch}");
    assert_eq!(millis(&ch["effective_from"]), app.now_ms());
    let endpoints = ch["endpoints"].as_array().expect("a list");
    assert_eq!(endpoints.len(), 3, "{ch}");
    // In document order: flux/dev's price, schnell's metadata, the new endpoint.
    let flux = &endpoints[0];
    assert_eq!(flux["endpoint_id"], "fal-ai/flux/dev");
    assert_eq!(flux["change"], "changed");
    assert_eq!(flux["metadata_changed"], json!([]));
    assert_eq!(flux["price"]["from_unit_price"], "0.025");
    assert_eq!(flux["price"]["to_unit_price"], "0.1");
    assert_eq!(flux["price"]["from"]["unit"], "megapixel");
    assert_eq!(flux["price"]["to"]["unit_price"], "0.10");
    assert_eq!(flux["price"]["unit"], "megapixel");
    assert_eq!(millis(&flux["price"]["effective_from"]), app.now_ms());
    let schnell = &endpoints[1];
    assert_eq!(schnell["endpoint_id"], "fal-ai/flux/schnell");
    assert_eq!(
        schnell["metadata_changed"],
        json!(["name", "late_completion"])
    );
    assert!(schnell.get("price").is_none(), "{schnell}");
    let added = &endpoints[2];
    assert_eq!(added["endpoint_id"], "test/new-model");
    assert_eq!(added["change"], "added");
    assert_eq!(added["price"]["from"], Value::Null);
    assert_eq!(added["price"]["to_unit_price"], "0.02");
    assert_eq!(
        ch["machines"],
        json!([{ "machine_type": "GPU-L40", "from": "0.0003", "to": "0.00031" }])
    );
    assert_eq!(ch["concurrency_changed"], false);
    // Only the fourfold price is warned of (a 3% machine change is not).
    let warnings = ch["warnings"].as_array().expect("a list");
    assert_eq!(warnings.len(), 1, "{ch}");
    assert_eq!(warnings[0]["line"], flux_line(&doc));
    assert!(warnings[0]["field"].as_str().unwrap().ends_with("].price"));
    let message = warnings[0]["message"].as_str().unwrap();
    assert!(
        message.contains("fal-ai/flux/dev") && message.contains("3x"),
        "{message}"
    );

    // Nothing was written: the preview again answers the same, flux/dev still bills at 0.025,
    // and the new endpoint does not exist.
    let again = put_catalog(&app, &doc, true).await;
    assert_eq!(again.expect(200), &preview);
    let id = app.submit_ok(&c.key, "fal-ai/flux/dev").await;
    app.start(&id, None).await.expect(200);
    let r = app
        .complete(
            &id,
            json!({ "status_code": 200, "output": image(1920, 1080) }),
        )
        .await;
    assert_eq!(int(&r.expect(200)["cost_estimate_nano_usd"]), 50_000_000);
    app.submit(&c.key, "test/new-model")
        .await
        .1
        .expect_error(404, "not_found");

    // The apply answers the same change, and makes it.
    let r = put_catalog(&app, &doc, false).await;
    let applied = r.expect(200);
    assert_eq!(applied["dry_run"], false);
    assert_eq!(change_of(applied), change_of(&preview));
    let id = app.submit_ok(&c.key, "test/new-model").await;
    app.start(&id, None).await.expect(200);
    app.complete(&id, json!({ "status_code": 200, "output": image(64, 64) }))
        .await
        .expect(200);
    // Applied again, it changes nothing.
    let r = put_catalog(&app, &doc, true).await;
    let ch = &r.expect(200)["changes"];
    assert_eq!(
        (
            ch["unchanged"].as_i64(),
            ch["endpoints"].as_array().map(Vec::len)
        ),
        (Some(35), Some(0))
    );
    assert_eq!(ch["warnings"], json!([]));

    assert_eq!(app.position("preview").await, (10 * USD - 70_000_000, 0, 0));
    app.assert_reconciled().await;
}

/// The line of flux/dev's `[[endpoint]]` header in `doc`.
fn flux_line(doc: &str) -> usize {
    let lines: Vec<&str> = doc.lines().collect();
    let id = lines
        .iter()
        .position(|l| l.trim() == r#"id = "fal-ai/flux/dev""#)
        .unwrap();
    1 + (0..id)
        .rev()
        .find(|&i| lines[i].trim() == "[[endpoint]]")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_refuses_what_the_apply_refuses() {
    let app = TestApp::spawn_at(1_757_937_600_000).await;
    // A price cut to a fifth, effective later: warned of (down as well as up).
    let later = "effective_from = \"2025-10-01T00:00:00Z\"\n".to_string()
        + &SAMPLE_CATALOG.replacen(r#"unit_price = "0.025" }"#, r#"unit_price = "0.005" }"#, 1);
    let r = put_catalog(&app, &later, true).await;
    let ch = &r.expect(200)["changes"];
    assert_eq!(millis(&ch["effective_from"]), 1_759_276_800_000, "{ch}");
    assert_eq!(ch["warnings"].as_array().map(Vec::len), Some(1), "{ch}");
    put_catalog(&app, &later, false).await.expect(200);

    // Now a change dated before that version would back-date it: both refuse, naming the
    // endpoint's line and `effective_from`.
    let earlier = later.replacen("2025-10-01", "2025-09-20", 1).replacen(
        r#"unit_price = "0.005" }"#,
        r#"unit_price = "0.006" }"#,
        1,
    );
    for dry_run in [true, false] {
        let r = put_catalog(&app, &earlier, dry_run).await;
        let err = r.expect_error(400, "validation_error");
        assert_eq!(err["field"], "effective_from", "{err}");
        assert_eq!(err["line"], flux_line(&earlier), "{err}");
    }
    // An invalid document: the same 400 naming line and field, previewed or applied.
    let broken = SAMPLE_CATALOG.replacen(r#"unit_price = "0.025" }"#, r#"unit_price = "-1" }"#, 1);
    for dry_run in [true, false] {
        let err = put_catalog(&app, &broken, dry_run)
            .await
            .expect_error(400, "validation_error")
            .clone();
        assert!(
            err["field"].as_str().unwrap().ends_with("price.unit_price"),
            "{err}"
        );
        assert_eq!(err["line"], flux_line(&broken));
    }
    // `dry_run` is a boolean.
    app.raw(
        Method::PUT,
        "/v1/admin/catalog?dry_run=yes",
        Some(&app.operator_key),
        Body::Raw {
            content_type: "application/toml",
            text: later.clone(),
        },
    )
    .await
    .expect_error(400, "validation_error");
    let rec = app.reconciliation().await;
    assert_eq!(rec["billed_nano_usd"], 0);
    app.assert_reconciled().await;
}
