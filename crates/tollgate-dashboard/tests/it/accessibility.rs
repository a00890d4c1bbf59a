//! Every page, with data in it, passes axe-core's WCAG 2.1 A/AA checks and best practices at
//! desktop and phone widths, in a real browser: labels, contrast, landmarks, names of links
//! and buttons, headings.

use crate::common::browser::Browser;
use crate::common::{DashApp, DAY_MS, T0};
use reqwest::Method;
use serde_json::json;
use tollgate_dashboard::layout::{CONSOLE_NAV, CUSTOMER_NAV};

#[tokio::test]
async fn every_page_is_accessible_at_desktop_and_phone_widths() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("25.00")).await;
    for (i, endpoint) in [
        "fal-ai/flux/dev",
        "fal-ai/elevenlabs/tts/eleven-v3",
        "fal-ai/whisper",
    ]
    .iter()
    .enumerate()
    {
        for day in 0..4 {
            app.usage(
                &c,
                endpoint,
                &format!("{}", i + 1),
                T0 - day * DAY_MS - 60_000,
            )
            .await;
        }
    }
    app.request(
        &c.api_key,
        "fal-ai/flux/dev",
        200,
        json!({"images": [{"width": 1024, "height": 1024}]}),
    )
    .await;
    let invoices = app
        .call(Method::GET, "/v1/account/invoices", &c.admin_key, None)
        .await;
    let invoice = invoices.expect(200).json()["invoices"][0]["invoice_id"]
        .as_str()
        .expect("the top-up invoice")
        .to_string();

    let b = Browser::start(&app.address).await;
    b.goto(&app.sign_in_link("acme").await).await;
    let mut pages: Vec<String> = CUSTOMER_NAV.iter().map(|s| s.path.to_string()).collect();
    pages.push(format!("/dashboard/invoices/{invoice}"));
    pages.push("/dashboard/statements/2026-11".into());
    for path in &pages {
        b.goto(path).await;
        assert_eq!(&b.path().await, path, "the page opened");
        b.assert_accessible(path).await;
    }

    b.goto("/console/login").await;
    b.screenshots("console-login").await;
    b.assert_accessible("/console/login").await;
    b.fill("#key", &app.operator_key.clone()).await;
    b.follow("form.card button[type='submit']").await;
    let mut pages: Vec<String> = CONSOLE_NAV.iter().map(|s| s.path.to_string()).collect();
    pages.push("/console/accounts/acme".into());
    for path in &pages {
        b.goto(path).await;
        assert_eq!(&b.path().await, path, "the page opened");
        b.assert_accessible(path).await;
    }
    b.close().await;
    app.assert_reconciled().await;
}
