//! Invoices over HTTP: a paid purchase's top-up invoice as its account reads it (list and
//! show, `ADMIN` keys only, never another account's), its total equal to the purchase to the
//! nano-USD, the issuer the operator set shown on it, the operator's list with its filters and
//! paging, and refused input (400) that writes nothing.

use crate::harness::{int, rfc3339, Body, TestApp, USD};
use reqwest::Method;
use serde_json::{json, Value};

/// 2026-06-01T00:00:00Z.
const T0: i64 = 1_780_272_000_000;

async fn get(app: &TestApp, key: &str, path: &str) -> crate::harness::Resp {
    app.raw(Method::GET, path, Some(key), Body::None).await
}

#[tokio::test]
async fn a_paid_purchase_shows_its_top_up_invoice_to_its_account_only() {
    let app = TestApp::spawn_at(T0).await;
    app.create_account("acme").await.expect(201);
    app.create_account("other").await.expect(201);
    let admin = app.create_key("acme", "ADMIN").await;
    let api = app.create_key("acme", "API").await;
    let other_admin = app.create_key("other", "ADMIN").await;
    app.op(
        Method::PUT,
        "/v1/admin/issuer",
        json!({"name": "Example AI Inc.", "address": "1 Main St", "tax_id": "US-1"}),
    )
    .await
    .expect(200);

    app.purchase("acme", "pay-1", "12.345678901", "paid")
        .await
        .expect(201);
    // A replay and free credits issue nothing.
    app.purchase("acme", "pay-1", "12.345678901", "paid").await;
    app.purchase("acme", "gift", "5", "free").await.expect(201);
    app.purchase("other", "pay-o", "3", "paid")
        .await
        .expect(201);

    let list = get(&app, &admin, "/v1/account/invoices").await;
    let list = list.expect(200);
    assert_eq!(list["has_more"], false);
    let invoices = list["invoices"].as_array().unwrap();
    assert_eq!(invoices.len(), 1, "{list}");
    let inv = &invoices[0];
    assert_eq!(inv["number"], "TG-2026-000001");
    assert_eq!(inv["kind"], "top_up");
    assert_eq!(inv["status"], "paid");
    assert_eq!(inv["currency"], "USD");
    assert_eq!(inv["purchase_id"], "pay-1");
    assert_eq!(inv["issued_at"], rfc3339(T0));
    assert_eq!(int(&inv["total_nano_usd"]), 12 * USD + 345_678_901);
    let lines = inv["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["unit"], "credit_usd");
    assert_eq!(
        int(&lines[0]["cost_total_nano_usd"]),
        12 * USD + 345_678_901
    );
    assert_eq!(lines[0]["quantity"], json!(12.345678901));
    assert_eq!(
        inv["issuer"],
        json!({"name": "Example AI Inc.", "address": "1 Main St", "email": null, "tax_id": "US-1"})
    );

    let id = inv["invoice_id"].as_str().unwrap();
    let shown = get(&app, &admin, &format!("/v1/account/invoices/{id}")).await;
    assert_eq!(shown.expect(200), inv);

    // An API key may not read invoices; another account's id is not found.
    get(&app, &api, "/v1/account/invoices")
        .await
        .expect_error(403, "authorization_error");
    get(&app, &api, &format!("/v1/account/invoices/{id}"))
        .await
        .expect_error(403, "authorization_error");
    get(&app, &other_admin, &format!("/v1/account/invoices/{id}"))
        .await
        .expect_error(404, "not_found");
    let respelled = id.replace("_000001", "_1");
    assert_ne!(respelled, id);
    get(&app, &admin, &format!("/v1/account/invoices/{respelled}"))
        .await
        .expect_error(404, "not_found");
    get(&app, &admin, "/v1/account/invoices/inv_nope")
        .await
        .expect_error(404, "not_found");
    let theirs = get(&app, &other_admin, "/v1/account/invoices").await;
    let theirs = theirs.expect(200)["invoices"].as_array().unwrap().clone();
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0]["number"], "TG-2026-000002");
    assert_eq!(int(&theirs[0]["total_nano_usd"]), 3 * USD);
    app.assert_reconciled().await;
}

#[tokio::test]
async fn the_operator_lists_every_invoice_newest_first_filtered_and_paged() {
    let app = TestApp::spawn_at(T0).await;
    for u in ["acme", "beta"] {
        app.create_account(u).await.expect(201);
    }
    for (i, u) in ["acme", "beta", "acme"].iter().enumerate() {
        app.purchase(u, &format!("p{i}"), "1", "paid")
            .await
            .expect(201);
    }
    let numbers = |v: &Value| -> Vec<String> {
        v["invoices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["number"].as_str().unwrap().to_string())
            .collect()
    };
    let all = app.op_get("/v1/admin/invoices").await;
    assert_eq!(
        numbers(all.expect(200)),
        ["TG-2026-000003", "TG-2026-000002", "TG-2026-000001"]
    );
    let acme = app
        .op_get("/v1/admin/invoices?username=acme&status=paid&kind=top_up")
        .await;
    assert_eq!(
        numbers(acme.expect(200)),
        ["TG-2026-000003", "TG-2026-000001"]
    );
    let open = app.op_get("/v1/admin/invoices?status=open").await;
    assert!(numbers(open.expect(200)).is_empty());

    let first = app.op_get("/v1/admin/invoices?limit=2").await;
    let first = first.expect(200).clone();
    assert_eq!(numbers(&first), ["TG-2026-000003", "TG-2026-000002"]);
    assert_eq!(first["has_more"], true);
    let cursor = first["next_cursor"].as_str().unwrap();
    let rest = app
        .op_get(&format!("/v1/admin/invoices?limit=2&cursor={cursor}"))
        .await;
    let rest = rest.expect(200);
    assert_eq!(numbers(rest), ["TG-2026-000001"]);
    assert_eq!(rest["has_more"], false);

    for bad in [
        "/v1/admin/invoices?status=unpaid",
        "/v1/admin/invoices?kind=refund",
        "/v1/admin/invoices?username=Not%20A%20Name",
        "/v1/admin/invoices?cursor=garbage",
        "/v1/admin/invoices?colour=red",
    ] {
        app.op_get(bad).await.expect(400);
    }
    app.assert_reconciled().await;
}

#[tokio::test]
async fn a_refused_issuer_writes_nothing() {
    let app = TestApp::spawn_at(T0).await;
    app.create_account("acme").await.expect(201);
    let admin = app.create_key("acme", "ADMIN").await;
    app.purchase("acme", "p", "2", "paid").await.expect(201);
    for bad in [
        json!({"address": "1 Main St"}),
        json!({"name": " ", "address": "1 Main St"}),
        json!({"name": "X", "address": ""}),
        json!({"name": "X", "address": "Y", "fax": "1"}),
        json!({"name": "X".repeat(201), "address": "Y"}),
        json!({"name": "X", "address": "Y", "email": ""}),
    ] {
        app.op(Method::PUT, "/v1/admin/issuer", bad.clone())
            .await
            .expect(400);
    }
    let list = get(&app, &admin, "/v1/account/invoices").await;
    let inv = &list.expect(200)["invoices"][0];
    assert_eq!(inv["issuer"], Value::Null, "{inv}");
    assert_eq!(int(&inv["total_nano_usd"]), 2 * USD);

    let set = app
        .op(
            Method::PUT,
            "/v1/admin/issuer",
            json!({"name": "Example AI Inc.", "address": "1 Main St", "email": "b@example.com"}),
        )
        .await;
    assert_eq!(set.expect(200)["email"], "b@example.com");
    let list = get(&app, &admin, "/v1/account/invoices").await;
    assert_eq!(
        list.expect(200)["invoices"][0]["issuer"]["name"],
        "Example AI Inc."
    );
    app.assert_reconciled().await;
}
