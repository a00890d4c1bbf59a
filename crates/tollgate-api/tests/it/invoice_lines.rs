//! A usage invoice over HTTP when the price and the discount change within its period: one
//! line per endpoint, unit, unit price and discount, each with its own charge period, the
//! lines adding up to the total, and the PDF printing each line's figures, the discount and
//! the total as the JSON has them. A close with `until` in the future is refused while charges
//! wait, and issues nothing.

use crate::harness::{dec, int, millis, rfc3339, Body, TestApp, SAMPLE_CATALOG};
use reqwest::Method;
use serde_json::{json, Value};
use tollgate_store::testing::backends;

/// 2026-06-01T00:00:00Z.
const JUN: i64 = 1_780_272_000_000;
const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;

async fn invoice_account(app: &TestApp, username: &str) -> String {
    app.op(
        Method::POST,
        "/v1/admin/accounts",
        json!({"username": username, "billing": "invoice"}),
    )
    .await
    .expect(201);
    app.create_key(username, "ADMIN").await
}

/// `images` 1024x1024 images of `fal-ai/flux/dev` (one megapixel each) for `username`, used and
/// recorded now.
async fn use_images(app: &TestApp, username: &str, images: usize) {
    let event = json!({
        "event_id": crate::harness::new_id(), "endpoint_id": "fal-ai/flux/dev",
        "username": username, "timestamp": rfc3339(app.now_ms()), "status_code": 200,
        "output": { "images": vec![json!({"width": 1024, "height": 1024}); images] },
    });
    let r = app.usage_events(json!([event])).await;
    let result = &r.expect(200)["results"][0];
    assert_eq!(result["billed"], true, "{result}");
}

/// bigco's June, closed on the 4th: 2 megapixels on the 1st at 0.025 USD; a 10% discount from
/// the 2nd, 1 megapixel then; flux/dev at 0.03 USD from the 3rd, 3 megapixels then. Answers
/// its ADMIN key and the invoice as it reads it.
async fn june_with_a_new_price_and_discount(app: &TestApp) -> (String, Value) {
    let admin = invoice_account(app, "bigco").await;
    app.set_now(JUN + HOUR);
    use_images(app, "bigco", 2).await;
    app.set_now(JUN + DAY + HOUR);
    app.set_pricing("bigco", json!({"percent_discount": "10"}))
        .await
        .expect(200);
    use_images(app, "bigco", 1).await;
    app.set_now(JUN + 2 * DAY + HOUR);
    let repriced =
        SAMPLE_CATALOG.replacen(r#"unit_price = "0.025" }"#, r#"unit_price = "0.03" }"#, 1);
    assert_ne!(repriced, SAMPLE_CATALOG);
    app.apply_catalog(&repriced).await.expect(200);
    use_images(app, "bigco", 3).await;

    app.set_now(JUN + 3 * DAY);
    let closed = app
        .op(
            Method::POST,
            "/v1/admin/invoices/close",
            json!({"username": "bigco"}),
        )
        .await;
    let issued = closed.expect(200)["issued"].as_array().unwrap().clone();
    assert_eq!(issued.len(), 1, "{issued:?}");
    let path = format!("/v1/account/invoices/{}", issued[0].as_str().unwrap());
    let inv = app.raw(Method::GET, &path, Some(&admin), Body::None).await;
    (admin, inv.expect(200).clone())
}

#[tokio::test]
async fn a_usage_invoice_has_a_line_per_unit_price_and_discount_each_with_its_charge_period() {
    for backend in backends() {
        let on = backend.name();
        let app = TestApp::spawn_at_on(&backend, JUN).await;
        let (_, inv) = june_with_a_new_price_and_discount(&app).await;
        let lines: Vec<_> = inv["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["endpoint_id"].as_str().unwrap().to_string(),
                    l["unit"].as_str().unwrap().to_string(),
                    dec(&l["quantity"]).normalize().to_string(),
                    dec(&l["unit_price"]).normalize().to_string(),
                    dec(&l["percent_discount"]).normalize().to_string(),
                    dec(&l["cost_subtotal"]).normalize().to_string(),
                    dec(&l["cost_discount"]).normalize().to_string(),
                    int(&l["cost_total_nano_usd"]),
                    (
                        millis(&l["charge_period_start"]),
                        millis(&l["charge_period_end"]),
                    ),
                )
            })
            .collect();
        let line = |mp: &str, price: &str, pct: &str, sub: &str, off: &str, nanos, day: i64| {
            let p = |s: &str| s.to_string();
            let period = (JUN + day * DAY, JUN + (day + 1) * DAY);
            let flux = (p("fal-ai/flux/dev"), p("megapixel"));
            (
                flux.0,
                flux.1,
                p(mp),
                p(price),
                p(pct),
                p(sub),
                p(off),
                nanos,
                period,
            )
        };
        assert_eq!(
            lines,
            [
                line("2", "0.025", "0", "0.05", "0", 50_000_000, 0),
                line("1", "0.025", "10", "0.025", "0.0025", 22_500_000, 1),
                line("3", "0.03", "10", "0.09", "0.009", 81_000_000, 2),
            ],
            "{on}: {inv}"
        );
        // The lines add up to the invoice, which is what the ledger charged.
        let sum = |f: &str| -> rust_decimal::Decimal {
            inv["lines"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| dec(&l[f]))
                .sum()
        };
        assert_eq!(
            (
                sum("cost_subtotal"),
                sum("cost_discount"),
                sum("cost_total")
            ),
            (
                dec(&inv["subtotal"]),
                dec(&inv["discount"]),
                dec(&inv["total"])
            ),
            "{on}"
        );
        assert_eq!(int(&inv["total_nano_usd"]), 153_500_000, "{on}");
        let (balance, _, _) = app.position("bigco").await;
        assert_eq!(balance, -153_500_000, "{on}");
        assert_eq!(
            (&inv["period_start"], &inv["period_end"]),
            (&json!(rfc3339(JUN)), &json!(rfc3339(JUN + 3 * DAY))),
            "{on}"
        );
        app.assert_reconciled().await;
    }
}

#[tokio::test]
async fn a_discounted_multi_line_invoice_prints_each_figure_as_the_json_has_it() {
    let app = TestApp::spawn_at(JUN).await;
    let (admin, inv) = june_with_a_new_price_and_discount(&app).await;
    let id = inv["invoice_id"].as_str().unwrap();
    let pdf = app
        .raw(
            Method::GET,
            &format!("/v1/account/invoices/{id}/pdf"),
            Some(&admin),
            Body::None,
        )
        .await;
    pdf.expect(200);
    let text = crate::invoices::pdftotext(&pdf.bytes);

    // One row per line, in the JSON's order: its unit, quantity, unit price and discount, and
    // its amount written as the JSON writes it.
    let rows: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("fal-ai/flux/dev"))
        .map(|l| l.split_whitespace().skip(1).take(5).collect())
        .collect();
    let lines = inv["lines"].as_array().unwrap();
    assert_eq!((rows.len(), lines.len()), (3, 3), "{text}");
    for (row, line) in rows.iter().zip(lines) {
        let [unit, quantity, unit_price, percent, amount] = row[..] else {
            panic!("a short row {row:?} in:\n{text}")
        };
        assert_eq!(unit, line["unit"], "{text}");
        assert_eq!(dec(&json!(quantity)), dec(&line["quantity"]), "{text}");
        assert_eq!(dec(&json!(unit_price)), dec(&line["unit_price"]), "{text}");
        let percent = percent.strip_suffix('%').expect("a percent");
        assert_eq!(dec(&json!(percent)), dec(&line["percent_discount"]));
        assert_eq!(amount, line["cost_total"].to_string(), "{text}");
    }

    // The subtotal, the discount taken off it and the total.
    let figure = |label: &str| -> String {
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no `{label}` in:\n{text}"));
        row.split_whitespace().last().unwrap().to_string()
    };
    assert_eq!(figure("Subtotal"), inv["subtotal"].to_string(), "{text}");
    assert_eq!(
        figure("Discount"),
        format!("-{}", inv["discount"]),
        "{text}"
    );
    assert_eq!(figure("Total (USD)"), inv["total"].to_string(), "{text}");
    assert_eq!(
        (
            figure("Subtotal"),
            figure("Discount"),
            figure("Total (USD)")
        ),
        ("0.165".into(), "-0.0115".into(), "0.1535".into())
    );
    app.assert_reconciled().await;
}

#[tokio::test]
async fn a_close_until_the_future_is_refused_while_charges_wait_and_issues_nothing() {
    for backend in backends() {
        let on = backend.name();
        let app = TestApp::spawn_at_on(&backend, JUN + HOUR).await;
        invoice_account(&app, "bigco").await;
        use_images(&app, "bigco", 2).await;
        app.set_now(JUN + 2 * HOUR);
        let listed = || async { app.op_get("/v1/admin/invoices").await.expect(200).clone() };
        let before = listed().await;
        assert_eq!(before["invoices"], json!([]), "{on}");

        let future = rfc3339(JUN + 2 * HOUR + 1);
        for body in [
            json!({"username": "bigco", "until": future}),
            json!({"until": future}),
        ] {
            let r = app.op(Method::POST, "/v1/admin/invoices/close", body).await;
            let err = r.expect_error(400, "validation_error");
            assert_eq!(err["field"], "until", "{on}: {err}");
        }
        assert_eq!(listed().await, before, "{on}: nothing issued");

        // The period is still open with its charges: a close now issues it, numbered first.
        let closed = app
            .op(
                Method::POST,
                "/v1/admin/invoices/close",
                json!({"username": "bigco"}),
            )
            .await;
        assert_eq!(closed.expect(200)["issued"].as_array().unwrap().len(), 1);
        let after = listed().await;
        let inv = &after["invoices"][0];
        assert_eq!(
            (&inv["number"], &inv["period_start"], &inv["total_nano_usd"]),
            (
                &json!("TG-2026-000001"),
                &json!(rfc3339(JUN)),
                &json!(50_000_000)
            ),
            "{on}: {inv}"
        );
        app.assert_reconciled().await;
    }
}
