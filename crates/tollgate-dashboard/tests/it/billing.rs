//! Billing pages: invoices (and their PDF), payments, credit activity, monthly statements and
//! FOCUS reports show what the API answers, for the signed-in account only.

use crate::common::browser::Browser;
use crate::common::{Customer, DashApp, Resp, T0};
use reqwest::Method;
use serde_json::{json, Value};
use tollgate_core::Nanos;
use tollgate_dashboard::fmt;

/// 2026-12-03T12:00:00Z: a few days into the month after T0's.
const DECEMBER: i64 = 1_796_299_200_000;
const _: () = assert!(DECEMBER > T0);

async fn admin_get(app: &DashApp, c: &Customer, path: &str) -> Resp {
    app.call(Method::GET, path, &c.admin_key, None).await
}

/// The nano-USD in the first `data-nano-usd` attribute at or after `anchor` in `html`.
#[track_caller]
fn nanos_after(html: &str, anchor: &str) -> i64 {
    let at = html
        .find(anchor)
        .unwrap_or_else(|| panic!("{anchor} is on the page"));
    let rest = &html[at..];
    let v = rest.find("data-nano-usd=\"").expect("an amount after it") + 15;
    let end = rest[v..].find('"').expect("a closing quote");
    rest[v..v + end].parse().expect("integer nano-USD")
}

/// Whether `html` has an attribute such as ` onclick=`.
fn inline_handler(html: &str) -> bool {
    html.match_indices(" on").any(|(at, _)| {
        let rest = &html[at + 3..];
        let name = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_lowercase())
                .len();
        name > 0 && rest[name..].starts_with('=')
    })
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("an integer: {v}"))
}

/// Some usage of `c` on two endpoints, recorded now.
async fn some_usage(app: &DashApp, c: &Customer) -> i64 {
    let now = app.now_ms();
    let a = app.usage(c, "fal-ai/flux/dev", "2", now - 60_000).await;
    let b = app.usage(c, "fal-ai/flux/schnell", "3", now - 30_000).await;
    let d = app.usage(c, "fal-ai/flux/dev", "1", now - 10_000).await;
    a + b + d
}

#[tokio::test]
async fn the_billing_page_lists_the_top_up_invoice_payment_and_activity_as_the_api_does() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("25.00")).await;
    let listed = admin_get(&app, &c, "/v1/account/invoices").await;
    let api = listed.expect(200).json();
    let inv = &api["invoices"][0];
    let (id, number) = (
        inv["invoice_id"].as_str().unwrap(),
        inv["number"].as_str().unwrap(),
    );
    let total = int(&inv["total_nano_usd"]);
    assert_eq!(total, 25_000_000_000);

    let v = app.signed_in("acme").await;
    let page = v.page("/dashboard/billing").await;
    let row = format!("data-invoice=\"{id}\"");
    assert!(page.text.contains(&row), "the invoice is listed");
    assert!(page.text.contains(number), "by its number");
    assert_eq!(nanos_after(&page.text, &row), total, "with the API's total");
    assert!(
        page.text.contains(&fmt::usd(Nanos(total))),
        "written $25.00"
    );
    assert!(page
        .text
        .contains(&format!("href=\"/dashboard/invoices/{id}/pdf\"")));
    assert!(page.text.contains(">Top-up<") && page.text.contains(">Paid<"));

    // The payment, with its purchase and invoice, as GET /v1/account/payments has it.
    let payments = admin_get(&app, &c, "/v1/account/payments").await;
    let p = &payments.expect(200).json()["payments"][0];
    assert_eq!(p["purchase_id"], "initial-acme");
    assert_eq!(p["invoice_id"], id);
    let pay_row = "data-purchase=\"initial-acme\"";
    assert!(page.text.contains(pay_row), "the payment is listed");
    assert_eq!(nanos_after(&page.text, pay_row), int(&p["amount_nano_usd"]));
    let after_pay = &page.text[page.text.find(pay_row).unwrap()..];
    assert!(after_pay.contains(&format!("href=\"/dashboard/invoices/{id}\"")));

    // The credit activity's purchase row, with the balance after it.
    let activity = admin_get(&app, &c, "/v1/account/credit-activity").await;
    let a = &activity.expect(200).json()["activity"][0];
    assert_eq!(
        (&a["kind"], &a["reference"]),
        (&json!("purchase"), &json!("initial-acme"))
    );
    let act_row = "data-kind=\"purchase\"";
    let act = &page.text[page.text.find(act_row).expect("an activity row")..];
    assert!(act.contains("initial-acme"));
    assert_eq!(nanos_after(act, act_row), int(&a["amount_nano_usd"]));
    assert!(act.contains(&format!(
        "data-nano-usd=\"{}\"",
        int(&a["balance_after_nano_usd"])
    )));
    // The lists' own pages show the same rows.
    let all = v.page("/dashboard/billing/payments").await;
    assert!(all.text.contains(pay_row));
    let all = v.page("/dashboard/billing/activity").await;
    assert!(all.text.contains("initial-acme"));
    let all = v.page("/dashboard/billing/invoices").await;
    assert!(all.text.contains(&row));

    // The invoice's own page: number, line, totals and status, the API's figures.
    let detail = v.page(&format!("/dashboard/invoices/{id}")).await;
    let shown = admin_get(&app, &c, &format!("/v1/account/invoices/{id}")).await;
    let shown = shown.expect(200).json();
    assert!(detail.text.contains(number));
    assert_eq!(
        nanos_after(&detail.text, "id=\"invoice-total\""),
        int(&shown["total_nano_usd"])
    );
    assert_eq!(
        nanos_after(&detail.text, "id=\"invoice-lines\""),
        int(&shown["lines"][0]["cost_total_nano_usd"])
    );
    assert!(detail.text.contains("credit_usd") && detail.text.contains("initial-acme"));

    // No inline script or style anywhere (the CSP would block them).
    for path in [
        "/dashboard/billing".to_string(),
        "/dashboard/billing/invoices".into(),
        "/dashboard/billing/payments".into(),
        "/dashboard/billing/activity".into(),
        format!("/dashboard/invoices/{id}"),
        "/dashboard/statements/2026-11".into(),
        "/dashboard/keys".into(),
    ] {
        let r = v.page(&path).await;
        assert!(
            !r.text.contains("<script>") && !r.text.contains("style=") && !inline_handler(&r.text),
            "{path}"
        );
    }
    app.assert_reconciled().await;
}

#[tokio::test]
async fn the_pdf_is_the_apis_and_another_accounts_invoice_is_not_found() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("25.00")).await;
    let other = app.customer("globex", Some("740.50")).await;
    let id_of = |r: &Resp| {
        r.json()["invoices"][0]["invoice_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mine = id_of(
        admin_get(&app, &c, "/v1/account/invoices")
            .await
            .expect(200),
    );
    let theirs_list = admin_get(&app, &other, "/v1/account/invoices").await;
    let theirs = id_of(theirs_list.expect(200));
    let their_number = theirs_list.json()["invoices"][0]["number"]
        .as_str()
        .unwrap()
        .to_string();

    let v = app.signed_in("acme").await;
    let pdf = v.get(&format!("/dashboard/invoices/{mine}/pdf")).await;
    pdf.expect(200);
    assert_eq!(pdf.header("content-type"), Some("application/pdf"));
    assert!(pdf.bytes.starts_with(b"%PDF-"), "a PDF document");
    let api_pdf = admin_get(&app, &c, &format!("/v1/account/invoices/{mine}/pdf")).await;
    api_pdf.expect(200);
    assert_eq!(pdf.bytes, api_pdf.bytes, "the same bytes as the API's");
    assert_eq!(
        pdf.header("content-disposition"),
        api_pdf.header("content-disposition")
    );

    // globex's invoice, by its id, from acme's session: not found, exactly like an unknown
    // id, and nothing of it shown.
    let unknown = "inv_2026_999999";
    for suffix in ["", "/pdf"] {
        let r = v
            .get(&format!("/dashboard/invoices/{theirs}{suffix}"))
            .await;
        r.expect(404);
        assert_ne!(r.header("content-type"), Some("application/pdf"));
        for secret in [their_number.as_str(), "globex", "740.5", "740,5"] {
            assert!(!r.text.contains(secret), "{secret} leaks: {}", r.text);
        }
        let u = v
            .get(&format!("/dashboard/invoices/{unknown}{suffix}"))
            .await;
        u.expect(404);
        assert_eq!(
            r.text.replace(&theirs, "ID"),
            u.text.replace(unknown, "ID"),
            "another account's invoice reads as an unknown one"
        );
    }
    // globex still reads its own.
    let g = app.signed_in("globex").await;
    let own = g.page(&format!("/dashboard/invoices/{theirs}")).await;
    assert!(own.text.contains(&their_number));
    app.assert_reconciled().await;
}

/// The statement page's figures, by field, as the API's names.
const FIELDS: [(&str, &str); 9] = [
    ("opening", "opening_balance_nano_usd"),
    ("purchases", "purchases_nano_usd"),
    ("grants", "grants_nano_usd"),
    ("usage", "usage_nano_usd"),
    ("expired", "expired_nano_usd"),
    ("refunds", "refunds_nano_usd"),
    ("disputes", "disputes_nano_usd"),
    ("adjustments", "adjustments_nano_usd"),
    ("closing", "closing_balance_nano_usd"),
];

#[tokio::test]
async fn statements_show_the_apis_figures_for_every_month_since_the_account_began() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("25.00")).await;
    app.op(
        Method::POST,
        "/v1/admin/accounts/acme/purchases",
        json!({"purchase_id": "gift-1", "amount_usd": "5", "kind": "free"}),
    )
    .await
    .expect(201);
    let november_usage = some_usage(&app, &c).await;
    assert!(november_usage > 0);
    app.set_now(DECEMBER);
    app.op(
        Method::POST,
        "/v1/admin/accounts/acme/adjustments",
        json!({"adjustment_id": "adj-1", "amount_usd": "-1.25", "reason": "correction"}),
    )
    .await
    .expect(201);
    some_usage(&app, &c).await;

    let v = app.signed_in("acme").await;
    let billing = v.page("/dashboard/billing").await;
    let dec = billing
        .text
        .find("data-month=\"2026-12\"")
        .expect("December");
    let nov = billing
        .text
        .find("data-month=\"2026-11\"")
        .expect("November");
    assert!(dec < nov, "newest first");
    assert!(
        !billing.text.contains("data-month=\"2026-10\""),
        "none before the account"
    );
    assert!(billing
        .text
        .contains("href=\"/dashboard/statements/2026-11\""));
    assert!(billing
        .text
        .contains("href=\"/dashboard/focus.csv?month=2026-11\""));

    for month in ["2026-11", "2026-12"] {
        let api = admin_get(&app, &c, &format!("/v1/account/statements/{month}")).await;
        let api = api.expect(200).json();
        let page = v.page(&format!("/dashboard/statements/{month}")).await;
        for (field, name) in FIELDS {
            assert_eq!(
                nanos_after(&page.text, &format!("data-field=\"{field}\"")),
                int(&api[name]),
                "{month}: {field}"
            );
        }
        let usage = api["usage_by_endpoint"].as_array().unwrap();
        assert_eq!(usage.len(), 2, "{month}: {api}");
        for u in usage {
            let row = format!("data-endpoint=\"{}\"", u["endpoint_id"].as_str().unwrap());
            assert_eq!(
                nanos_after(&page.text, &row),
                int(&u["cost_nano_usd"]),
                "{month}: {row}"
            );
        }
    }
    // November's closing is December's opening; the movements are there to see.
    let nov = v.page("/dashboard/statements/2026-11").await;
    let dec = v.page("/dashboard/statements/2026-12").await;
    assert_eq!(
        nanos_after(&nov.text, "data-field=\"closing\""),
        nanos_after(&dec.text, "data-field=\"opening\"")
    );
    assert_eq!(
        nanos_after(&nov.text, "data-field=\"grants\""),
        5_000_000_000
    );
    assert_eq!(
        nanos_after(&nov.text, "data-field=\"usage\""),
        -november_usage
    );
    assert_eq!(
        nanos_after(&dec.text, "data-field=\"adjustments\""),
        -1_250_000_000
    );
    // A month not begun, or not a month: refused, saying why.
    let r = v.get("/dashboard/statements/2027-01").await;
    r.expect(400);
    assert!(r.text.contains("has not begun"), "{}", r.text);
    v.get("/dashboard/statements/december").await.expect(400);
    app.assert_reconciled().await;
}

#[tokio::test]
async fn the_focus_report_is_the_apis_csv_for_the_month() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("25.00")).await;
    some_usage(&app, &c).await;
    let v = app.signed_in("acme").await;
    for month in ["2026-11", "2026-10"] {
        let csv = v.get(&format!("/dashboard/focus.csv?month={month}")).await;
        csv.expect(200);
        assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
        let api = admin_get(
            &app,
            &c,
            &format!("/v1/account/focus?source=invoice&billing_month={month}"),
        )
        .await;
        api.expect(200);
        assert_eq!(csv.text, api.text, "{month}: the API's CSV");
        assert_eq!(
            csv.header("content-disposition"),
            api.header("content-disposition")
        );
        assert!(csv.text.starts_with("AvailabilityZone,BilledCost,"));
    }
    let nov = v.get("/dashboard/focus.csv?month=2026-11").await;
    assert!(
        nov.text.lines().count() >= 3,
        "the purchase and the usage: {}",
        nov.text
    );
    assert!(nov.text.contains("initial-acme") && nov.text.contains("fal-ai/flux/schnell"));
    // No month: the current one; a bad one: refused.
    let now = v.get("/dashboard/focus.csv").await;
    assert_eq!(now.expect(200).text, nov.text);
    let bad = v.get("/dashboard/focus.csv?month=2026-13").await;
    bad.expect(400);
    assert!(bad.text.contains("01 to 12"), "{}", bad.text);
    // Signed out: no report.
    let r = app
        .visitor()
        .get("/dashboard/focus.csv?month=2026-11")
        .await;
    r.expect(303);
    app.assert_reconciled().await;
}

#[tokio::test]
async fn long_lists_page_with_their_cursor_and_repeat_nothing() {
    let app = DashApp::spawn().await;
    app.customer("acme", None).await;
    for i in 0..55 {
        app.op(
            Method::POST,
            "/v1/admin/accounts/acme/purchases",
            json!({"purchase_id": format!("p-{i:02}"), "amount_usd": "1"}),
        )
        .await
        .expect(201);
    }
    let v = app.signed_in("acme").await;
    let billing = v.page("/dashboard/billing").await;
    assert_eq!(billing.text.matches("data-purchase=").count(), 10);
    assert!(billing
        .text
        .contains("href=\"/dashboard/billing/payments\""));
    assert!(billing
        .text
        .contains("href=\"/dashboard/billing/activity\""));
    assert!(billing
        .text
        .contains("href=\"/dashboard/billing/invoices\""));
    assert!(
        billing.text.contains("data-purchase=\"p-54\""),
        "newest first"
    );

    for (path, marker) in [
        ("/dashboard/billing/payments", "data-purchase=\"p-"),
        ("/dashboard/billing/activity", "<code>p-"),
        ("/dashboard/billing/invoices", "data-invoice=\""),
    ] {
        let first = v.page(path).await;
        assert_eq!(first.text.matches(marker).count(), 50, "{path}");
        let at = first.text.find("?cursor=").expect("a link to older rows");
        let end = first.text[at..].find('"').unwrap();
        let next = format!("{path}{}", &first.text[at..at + end]).replace("&amp;", "&");
        let second = v.page(&next).await;
        assert_eq!(second.text.matches(marker).count(), 5, "{path}");
        assert!(
            second.text.contains(&format!("href=\"{path}\"")),
            "back to the newest"
        );
        assert!(!second.text.contains("?cursor="), "{path}: the last page");
    }
    let first = v.page("/dashboard/billing/payments").await;
    let second_at = first.text.find("?cursor=").unwrap();
    let end = first.text[second_at..].find('"').unwrap();
    let second = v
        .page(&format!(
            "/dashboard/billing/payments{}",
            &first.text[second_at..second_at + end]
        ))
        .await;
    for i in 0..55 {
        let row = format!("data-purchase=\"p-{i:02}\"");
        let n = first.text.matches(&row).count() + second.text.matches(&row).count();
        assert_eq!(n, 1, "{row} shown once");
    }
    v.get("/dashboard/billing/payments?cursor=garbage")
        .await
        .expect(400);
    app.assert_reconciled().await;
}

#[tokio::test]
async fn an_account_without_history_sees_what_to_do_next() {
    let app = DashApp::spawn().await;
    app.customer("newco", None).await;
    let v = app.signed_in("newco").await;
    let page = v.page("/dashboard/billing").await;
    for hint in [
        "No invoices yet",
        "No payments yet",
        "No credit activity yet",
    ] {
        assert!(page.text.contains(hint), "{hint}");
    }
    assert!(
        page.text.contains("data-month=\"2026-11\""),
        "this month's statement"
    );
    let st = v.page("/dashboard/statements/2026-11").await;
    assert!(st.text.contains("No usage this month"));
    assert_eq!(nanos_after(&st.text, "data-field=\"closing\""), 0);
    app.assert_reconciled().await;
}

#[tokio::test]
async fn in_a_browser_billing_shows_invoices_statements_and_the_pdf_downloads() {
    let app = DashApp::spawn().await;
    app.op(
        Method::PUT,
        "/v1/admin/issuer",
        json!({"name": "Example AI Inc.", "address": "1 Main St, Springfield",
               "email": "billing@example.com", "tax_id": "US12-3456789"}),
    )
    .await
    .expect(200);
    let c = app.customer("acme", Some("25.00")).await;
    app.op(
        Method::POST,
        "/v1/admin/accounts/acme/purchases",
        json!({"purchase_id": "welcome-credits", "amount_usd": "5", "kind": "free"}),
    )
    .await
    .expect(201);
    some_usage(&app, &c).await;
    app.set_now(DECEMBER);
    app.op(
        Method::POST,
        "/v1/admin/accounts/acme/purchases",
        json!({"purchase_id": "dec-top-up", "amount_usd": "100"}),
    )
    .await
    .expect(201);
    some_usage(&app, &c).await;
    // An invoice-billed account has a usage invoice with lines.
    app.op(
        Method::POST,
        "/v1/admin/accounts",
        json!({"username": "bigco", "billing": "invoice"}),
    )
    .await
    .expect(201);
    let big = Customer {
        username: "bigco".into(),
        api_key: String::new(),
        admin_key: String::new(),
    };
    for (endpoint, units) in [
        ("fal-ai/flux/dev", "4"),
        ("fal-ai/flux/schnell", "12"),
        ("fal-ai/nano-banana", "3"),
    ] {
        app.usage(&big, endpoint, units, DECEMBER - 60_000).await;
    }
    let closed = app
        .op(
            Method::POST,
            "/v1/admin/invoices/close",
            json!({"username": "bigco"}),
        )
        .await;
    let usage_invoice = closed.expect(200).json()["issued"][0]
        .as_str()
        .unwrap()
        .to_string();
    app.customer("newco", None).await;

    let b = Browser::start(&app.address).await;
    b.goto(&app.sign_in_link("acme").await).await;
    assert_eq!(b.path().await, "/dashboard");
    b.follow("nav a[href='/dashboard/billing']").await;
    assert_eq!(b.path().await, "/dashboard/billing");
    assert_eq!(b.count("#invoices-table tbody tr").await, 2);
    assert!(b.text("#payments-table").await.contains("dec-top-up"));
    b.screenshots("billing").await;
    b.goto("/dashboard/billing#activity").await;
    b.screenshots("billing-activity").await;
    b.goto("/dashboard/billing").await;

    // The newest invoice's page, and its PDF fetched as the browser would download it.
    b.follow("#invoices-table tbody tr:first-child th a").await;
    assert!(b.path().await.starts_with("/dashboard/invoices/inv_"));
    assert!(b.text("h1").await.starts_with("Invoice TG-2026-"));
    let got = b
        .client
        .execute_async(
            r##"const done = arguments[arguments.length - 1];
               const href = document.querySelector("#invoice-pdf").getAttribute("href");
               fetch(href).then(r => r.arrayBuffer().then(buf => done({
                 status: r.status,
                 type: r.headers.get("content-type"),
                 magic: String.fromCharCode.apply(null, new Uint8Array(buf.slice(0, 4))),
                 size: buf.byteLength,
               }))).catch(e => done({ error: String(e) }));"##,
            Vec::new(),
        )
        .await
        .expect("the fetch runs");
    assert_eq!(got["status"], 200, "{got}");
    assert_eq!(got["type"], "application/pdf", "{got}");
    assert_eq!(got["magic"], "%PDF", "{got}");
    assert!(got["size"].as_i64().unwrap() > 1000, "{got}");
    b.screenshots("invoice").await;

    b.goto("/dashboard/billing").await;
    b.follow("#months-table tr[data-month='2026-11'] td a")
        .await;
    assert_eq!(b.path().await, "/dashboard/statements/2026-11");
    assert_eq!(b.count("#statement-usage tbody tr").await, 2);
    b.screenshots("statement").await;
    assert_eq!(b.js("return typeof window.__xss").await, "undefined");
    b.close().await;

    // The invoice-billed account's usage invoice, with its lines.
    let b = Browser::start(&app.address).await;
    b.goto(&app.sign_in_link("bigco").await).await;
    b.goto(&format!("/dashboard/invoices/{usage_invoice}"))
        .await;
    assert_eq!(b.count("#invoice-lines tbody tr").await, 3);
    b.screenshots("invoice-usage").await;
    b.close().await;

    // A new account: empty states.
    let b = Browser::start(&app.address).await;
    b.goto(&app.sign_in_link("newco").await).await;
    b.goto("/dashboard/billing").await;
    assert!(b.text("#invoices").await.contains("No invoices yet"));
    b.screenshots("billing-empty").await;
    b.close().await;
    app.assert_reconciled().await;
}
