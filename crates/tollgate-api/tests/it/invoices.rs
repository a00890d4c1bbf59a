//! Invoices over HTTP: a paid purchase's top-up invoice as its account reads it (list and
//! show, `ADMIN` keys only, never another account's), its total equal to the purchase to the
//! nano-USD, the issuer the operator set shown on it, the operator's list with its filters and
//! paging, and refused input (400) that writes nothing; a usage invoice read by its account
//! only, closed, paid and voided by the operator only. Its PDF, read back with `pdftotext`
//! (TOLLGATE_PDFTOTEXT, set by scripts/test.sh), shows the JSON's number, customer, issuer and
//! total, to the same account only, on SQLite and PostgreSQL.

use crate::harness::{d, dec, int, rfc3339, Body, TestApp, USD};
use reqwest::Method;
use serde_json::{json, Value};
use tollgate_store::testing::backends;

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

/// The text `pdftotext -layout` extracts from `pdf`. The tool is TOLLGATE_PDFTOTEXT, which
/// scripts/test.sh sets after installing poppler-utils; without it the test fails.
pub(crate) fn pdftotext(pdf: &[u8]) -> String {
    let tool = std::env::var("TOLLGATE_PDFTOTEXT")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "TOLLGATE_PDFTOTEXT is not set: run the tests with scripts/test.sh, which \
                 installs poppler-utils (pdftotext) and sets it"
            )
        });
    let file = std::env::temp_dir().join(format!("tollgate-invoice-{}.pdf", uuid::Uuid::new_v4()));
    std::fs::write(&file, pdf).expect("write the PDF");
    let out = std::process::Command::new(&tool)
        .args(["-layout", "-enc", "UTF-8"])
        .arg(&file)
        .arg("-")
        .output();
    std::fs::remove_file(&file).ok();
    let out = out.unwrap_or_else(|e| panic!("TOLLGATE_PDFTOTEXT={tool} cannot be run: {e}"));
    assert!(
        out.status.success(),
        "pdftotext refused the document: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("pdftotext writes UTF-8")
}

#[tokio::test]
async fn a_top_up_invoice_prints_as_a_pdf_with_the_json_figures() {
    for backend in backends() {
        let app = TestApp::spawn_at_on(&backend, T0 + 3_723_000).await;
        app.create_account("acme").await.expect(201);
        app.create_account("other").await.expect(201);
        let admin = app.create_key("acme", "ADMIN").await;
        let api = app.create_key("acme", "API").await;
        let other_admin = app.create_key("other", "ADMIN").await;
        app.purchase("acme", "pay-1", "12.345678901", "paid")
            .await
            .expect(201);

        // Before an issuer is set, the PDF says none is.
        let list = get(&app, &admin, "/v1/account/invoices").await;
        let id = list.expect(200)["invoices"][0]["invoice_id"]
            .as_str()
            .unwrap()
            .to_string();
        let pdf = get(&app, &admin, &format!("/v1/account/invoices/{id}/pdf")).await;
        pdf.expect(200);
        assert!(pdftotext(&pdf.bytes).contains("Issuer not set"));

        app.op(
            Method::PUT,
            "/v1/admin/issuer",
            json!({"name": "Example AI Inc.", "address": "1 Main St\nSpringfield",
                   "email": "billing@example.com", "tax_id": "US12-3456789"}),
        )
        .await
        .expect(200);
        let shown = get(&app, &admin, &format!("/v1/account/invoices/{id}")).await;
        let inv = shown.expect(200).clone();
        let pdf = get(&app, &admin, &format!("/v1/account/invoices/{id}/pdf")).await;
        pdf.expect(200);
        assert_eq!(pdf.header("content-type"), Some("application/pdf"));
        assert_eq!(
            pdf.header("content-disposition"),
            Some("inline; filename=\"TG-2026-000001.pdf\"")
        );
        assert!(pdf.bytes.starts_with(b"%PDF-"));
        let text = pdftotext(&pdf.bytes);

        // The number, the customer and the issuer, as the JSON has them.
        for needle in [
            inv["number"].as_str().unwrap(),
            inv["invoice_id"].as_str().unwrap(),
            inv["username"].as_str().unwrap(),
            inv["issuer"]["name"].as_str().unwrap(),
            "1 Main St",
            "Springfield",
            "billing@example.com",
            "Tax ID: US12-3456789",
            "Top-up",
            "PAID",
            // Issued at 01:02:03 UTC on June 1st: the date, and the exact time as the period.
            "2026-06-01 01:02:03",
            "pay-1",
            "Prepaid credits",
            "credit_usd",
        ] {
            assert!(text.contains(needle), "`{needle}` missing from:\n{text}");
        }
        // The total, formatted as the JSON's (12.345678901), and its exact nano-USD; one line
        // of one credit per USD.
        let total_line = text
            .lines()
            .find(|l| l.trim_start().starts_with("Total (USD)"))
            .unwrap_or_else(|| panic!("no total in:\n{text}"));
        let total = total_line.split_whitespace().last().unwrap();
        assert_eq!(total, inv["total"].to_string());
        assert_eq!(total, "12.345678901");
        assert_eq!(dec(&json!(total)), dec(&inv["total"]));
        assert_eq!(int(&inv["total_nano_usd"]), 12 * USD + 345_678_901);
        let row = text
            .lines()
            .find(|l| l.contains("Prepaid credits"))
            .unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells[2..7],
            ["credit_usd", "12.345678901", "1.00", "0%", "12.345678901"],
            "{row}"
        );
        assert!(text.contains("Page 1 of 1"), "one page:\n{text}");

        // An API key may not read it; another account's invoice, like an unknown one, is not
        // found; nothing but the path is taken.
        get(&app, &api, &format!("/v1/account/invoices/{id}/pdf"))
            .await
            .expect_error(403, "authorization_error");
        get(
            &app,
            &other_admin,
            &format!("/v1/account/invoices/{id}/pdf"),
        )
        .await
        .expect_error(404, "not_found");
        get(&app, &admin, "/v1/account/invoices/inv_nope/pdf")
            .await
            .expect_error(404, "not_found");
        get(&app, &admin, &format!("/v1/account/invoices/{id}/pdf?x=1"))
            .await
            .expect(400);
        app.assert_reconciled().await;
    }
}

/// A 1024x1024 image of `fal-ai/flux/dev`: one megapixel as fal counts them (rounded up to
/// whole megapixels of 1024x1024), 0.025 USD.
const ONE_IMAGE_NANOS: i64 = 25_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usage_invoice_is_its_accounts_alone_and_only_the_operator_closes_pays_or_voids_it() {
    for backend in tollgate_store::testing::backends() {
        let on = backend.name();
        let app = TestApp::spawn_at_on(&backend, T0).await;
        for username in ["bigco", "other"] {
            app.op(
                Method::POST,
                "/v1/admin/accounts",
                json!({"username": username, "billing": "invoice"}),
            )
            .await
            .expect(201);
        }
        let admin = app.create_key("bigco", "ADMIN").await;
        let api = app.create_key("bigco", "API").await;
        let other_admin = app.create_key("other", "ADMIN").await;
        // Two images an hour into the month, recorded then.
        app.set_now(T0 + 3_600_000);
        let events: Vec<Value> = (0..2)
            .map(|i| {
                json!({
                    "event_id": format!("bigco-{i}"),
                    "endpoint_id": "fal-ai/flux/dev",
                    "username": "bigco",
                    "timestamp": rfc3339(T0 + 3_600_000),
                    "status_code": 200,
                    "output": { "images": [{ "width": 1024, "height": 1024 }] },
                })
            })
            .collect();
        let r = app.usage_events(json!(events)).await;
        for result in r.expect(200)["results"].as_array().unwrap() {
            assert!(result.get("error").is_none(), "{on}: {result}");
        }

        // A customer's keys, even ADMIN, may not close periods: refused, nothing issued.
        for key in [&admin, &api] {
            app.raw(
                Method::POST,
                "/v1/admin/invoices/close",
                Some(key),
                Body::Json(json!({"username": "bigco"})),
            )
            .await
            .expect_error(403, "authorization_error");
        }
        let none = get(&app, &admin, "/v1/account/invoices").await;
        assert_eq!(none.expect(200)["invoices"], json!([]), "{on}");

        let closed = app
            .op(
                Method::POST,
                "/v1/admin/invoices/close",
                json!({"username": "bigco"}),
            )
            .await;
        let issued = closed.expect(200)["issued"].as_array().unwrap().clone();
        assert_eq!(issued.len(), 1, "{on}: {issued:?}");
        let id = issued[0].as_str().unwrap().to_string();
        let path = format!("/v1/account/invoices/{id}");

        // Its account's ADMIN key reads it: the two images on one line, the line equal to
        // the total.
        let inv = get(&app, &admin, &path).await.expect(200).clone();
        assert_eq!(
            (&inv["kind"], &inv["status"], &inv["number"]),
            (&json!("usage"), &json!("open"), &json!("TG-2026-000001")),
            "{on}: {inv}"
        );
        assert_eq!(int(&inv["total_nano_usd"]), 2 * ONE_IMAGE_NANOS, "{on}");
        let lines = inv["lines"].as_array().unwrap();
        assert_eq!(lines.len(), 1, "{on}: {inv}");
        assert_eq!(
            (&lines[0]["endpoint_id"], &lines[0]["unit"]),
            (&json!("fal-ai/flux/dev"), &json!("megapixel"))
        );
        assert_eq!(dec(&lines[0]["quantity"]), d("2"), "{on}: two megapixels");
        assert_eq!(
            int(&lines[0]["cost_total_nano_usd"]),
            int(&inv["total_nano_usd"]),
            "{on}"
        );
        assert_eq!(
            (
                &lines[0]["charge_period_start"],
                &lines[0]["charge_period_end"]
            ),
            (&json!(rfc3339(T0)), &json!(rfc3339(T0 + 86_400_000))),
            "{on}: the UTC day of the usage"
        );

        // Not with an API key; another account's customer never sees it (not found, and not
        // in its list).
        get(&app, &api, &path)
            .await
            .expect_error(403, "authorization_error");
        get(&app, &api, "/v1/account/invoices")
            .await
            .expect_error(403, "authorization_error");
        get(&app, &other_admin, &path)
            .await
            .expect_error(404, "not_found");
        let theirs = get(&app, &other_admin, "/v1/account/invoices").await;
        assert_eq!(theirs.expect(200)["invoices"], json!([]), "{on}");

        // A customer's keys may not pay or void it either; it stays open, unchanged.
        for key in [&admin, &api] {
            for (action, body) in [
                ("pay", json!({"payment_reference": "paid it myself"})),
                ("void", json!({"reason": "do not want it"})),
            ] {
                app.raw(
                    Method::POST,
                    &format!("/v1/admin/invoices/{id}/{action}"),
                    Some(key),
                    Body::Json(body),
                )
                .await
                .expect_error(403, "authorization_error");
            }
        }
        assert_eq!(get(&app, &admin, &path).await.expect(200), &inv, "{on}");

        // The operator pays it; then it can be neither paid again nor voided.
        app.set_now(T0 + 7_200_000);
        let paid = app
            .op(
                Method::POST,
                &format!("/v1/admin/invoices/{id}/pay"),
                json!({"payment_reference": "wire 7781"}),
            )
            .await;
        let paid = paid.expect(200).clone();
        assert_eq!(
            (
                &paid["status"],
                &paid["payment_reference"],
                &paid["paid_at"]
            ),
            (
                &json!("paid"),
                &json!("wire 7781"),
                &json!(rfc3339(T0 + 7_200_000))
            ),
            "{on}: {paid}"
        );
        assert_eq!(
            (&paid["lines"], &paid["total_nano_usd"]),
            (&inv["lines"], &inv["total_nano_usd"]),
            "{on}: paying changes no amount"
        );
        // The same payment sent again (a retry after a lost answer) is answered as done and
        // changes nothing; another payment or a void is refused.
        let again = app
            .op(
                Method::POST,
                &format!("/v1/admin/invoices/{id}/pay"),
                json!({"payment_reference": "wire 7781"}),
            )
            .await;
        assert_eq!(again.expect(200), &paid, "{on}");
        for (action, body) in [
            ("pay", json!({"payment_reference": "again"})),
            ("void", json!({"reason": "too late"})),
        ] {
            let r = app
                .op(
                    Method::POST,
                    &format!("/v1/admin/invoices/{id}/{action}"),
                    body,
                )
                .await;
            r.expect_error(409, "conflict");
        }
        assert_eq!(get(&app, &admin, &path).await.expect(200), &paid, "{on}");

        // Its PDF shows the number, the customer, the line, the total and the payment.
        let pdf = get(&app, &admin, &format!("{path}/pdf")).await;
        pdf.expect(200);
        let text = pdftotext(&pdf.bytes);
        for needle in [
            paid["number"].as_str().unwrap(),
            "bigco",
            "fal-ai/flux/dev",
            "megapixel",
            "Usage",
            "wire 7781",
        ] {
            assert!(
                text.contains(needle),
                "{on}: `{needle}` missing from:\n{text}"
            );
        }
        let total_line = text
            .lines()
            .find(|l| l.trim_start().starts_with("Total (USD)"))
            .unwrap_or_else(|| panic!("{on}: no total in:\n{text}"));
        assert_eq!(
            total_line.split_whitespace().last().unwrap(),
            paid["total"].to_string(),
            "{on}"
        );
        app.assert_reconciled().await;
    }
}

#[tokio::test]
async fn an_account_lists_its_invoices_by_kind_and_status() {
    let app = TestApp::spawn_at(T0).await;
    app.op(
        Method::POST,
        "/v1/admin/accounts",
        json!({"username": "bigco", "billing": "invoice"}),
    )
    .await
    .expect(201);
    let admin = app.create_key("bigco", "ADMIN").await;
    // A paid top-up, then an image billed on the account's open period, closed by the operator.
    app.purchase("bigco", "p-1", "10.00", "paid")
        .await
        .expect(201);
    app.set_now(T0 + 3_600_000);
    let r = app
        .usage_events(json!([{
            "event_id": "bigco-1",
            "endpoint_id": "fal-ai/flux/dev",
            "username": "bigco",
            "timestamp": rfc3339(T0 + 3_600_000),
            "status_code": 200,
            "output": { "images": [{ "width": 1024, "height": 1024 }] },
        }]))
        .await;
    assert!(r.expect(200)["results"][0].get("error").is_none());
    app.op(
        Method::POST,
        "/v1/admin/invoices/close",
        json!({"username": "bigco"}),
    )
    .await
    .expect(200);

    let listed = |query: &'static str| {
        let (app, admin) = (&app, &admin);
        async move {
            let r = get(app, admin, &format!("/v1/account/invoices{query}")).await;
            r.expect(200)["invoices"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    (
                        i["kind"].as_str().unwrap().to_string(),
                        i["status"].as_str().unwrap().to_string(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let pair = |k: &str, s: &str| (k.to_string(), s.to_string());
    assert_eq!(
        listed("").await,
        [pair("usage", "open"), pair("top_up", "paid")]
    );
    assert_eq!(listed("?kind=top_up").await, [pair("top_up", "paid")]);
    assert_eq!(listed("?kind=usage").await, [pair("usage", "open")]);
    assert_eq!(listed("?status=open").await, [pair("usage", "open")]);
    assert_eq!(
        listed("?status=paid&kind=top_up").await,
        [pair("top_up", "paid")]
    );
    assert!(listed("?kind=credit_note").await.is_empty());
    assert!(listed("?status=void").await.is_empty());
    for (query, field, allowed) in [
        ("?kind=refund", "kind", "top_up, usage, credit_note"),
        ("?status=unpaid", "status", "open, paid, void"),
    ] {
        let r = get(&app, &admin, &format!("/v1/account/invoices{query}")).await;
        let err = r.expect_error(400, "validation_error");
        assert_eq!(err["field"], field, "{query}: {err}");
        assert!(err["message"].as_str().unwrap().contains(allowed), "{err}");
    }
    app.assert_reconciled().await;
}
