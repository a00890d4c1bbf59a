//! Every page, with data in it, passes axe-core's WCAG 2.1 A/AA checks and best practices at
//! desktop and phone widths, in a real browser: labels, contrast, landmarks, names of links
//! and buttons, headings. The account has spending limits (one past a threshold, one reached)
//! and a low balance, so the overview lists what needs attention; a webhook has deliveries
//! that its receiver refused; serverless runners ran (one at surge prices, one still live, so
//! the serverless page has its table and both charts and the console's account page its card
//! of live runners).

use crate::common::browser::Browser;
use crate::common::{DashApp, Runner, DAY_MS, MINUTE_MS, T0};
use reqwest::Method;
use serde_json::json;
use tollgate_api::testing::receiver::{Answer, Receiver};
use tollgate_dashboard::layout::{CONSOLE_NAV, CUSTOMER_NAV};

#[tokio::test]
async fn every_page_is_accessible_at_desktop_and_phone_widths() {
    let app = DashApp::spawn().await;
    let receiver = Receiver::start().await;
    receiver.otherwise(Answer::Status(503));
    let webhook = app
        .op(
            Method::POST,
            "/v1/admin/webhooks",
            json!({"url": receiver.url("/events"), "events": ["*"], "description": "billing"}),
        )
        .await
        .expect(201)
        .json()["webhook_id"]
        .as_str()
        .unwrap()
        .to_string();
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
    let done = Runner::new("acme", "img-gen", "GPU-H100", 2).environment("production");
    let live = Runner::new("acme", "tts", "GPU-A100", 1).surge();
    let t = T0 + MINUTE_MS;
    app.runner_events(t, vec![done.event("SETUP", t), live.event("RUNNING", t)])
        .await;
    let t = t + 2 * MINUTE_MS;
    app.runner_events(t, vec![done.event("RUNNING", t), live.event("IDLE", t)])
        .await;
    let t = t + 2 * MINUTE_MS;
    app.runner_events(
        t,
        vec![done.event("TERMINATED", t), live.event("RUNNING", t)],
    )
    .await;
    app.request(
        &c.api_key,
        "fal-ai/flux/dev",
        200,
        json!({"images": [{"width": 1024, "height": 1024}]}),
    )
    .await;
    let key_id = c.api_key.split(':').next().unwrap();
    for body in [
        json!({"scope": "account", "period": "month", "timezone": "Europe/Berlin",
               "amount_usd": "1000", "action": "alert", "alert_at_percent": [50, 80]}),
        json!({"scope": "account", "period": "day", "amount_usd": "0.01", "action": "block"}),
        json!({"scope": "api_key", "api_key_id": key_id, "period": "week", "amount_usd": "5",
               "action": "block", "alert_at_percent": [1]}),
    ] {
        app.call(
            Method::POST,
            "/v1/account/spending-limits",
            &c.admin_key,
            Some(body),
        )
        .await
        .expect(201);
    }
    app.op(
        Method::PUT,
        "/v1/admin/accounts/acme/pricing",
        json!({"low_balance_usd": "100"}),
    )
    .await
    .expect(200);
    app.deliver_due().await;
    let deliveries = app
        .op_get(&format!("/v1/admin/webhooks/{webhook}/deliveries"))
        .await
        .expect(200)
        .json();
    let retried = deliveries["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["status"] == "pending")
        .expect("a delivery that failed")["delivery_id"]
        .as_str()
        .unwrap()
        .to_string();
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
    b.goto("/dashboard").await;
    assert!(b.text("#attention").await.contains("is reached"));
    b.screenshots("overview-attention").await;
    b.goto("/dashboard/limits").await;
    b.screenshots("limits-three").await;

    b.goto("/console/login").await;
    b.screenshots("console-login").await;
    b.assert_accessible("/console/login").await;
    b.fill("#key", &app.operator_key.clone()).await;
    b.follow("form.card button[type='submit']").await;
    let mut pages: Vec<String> = CONSOLE_NAV.iter().map(|s| s.path.to_string()).collect();
    pages.push("/console/accounts/acme".into());
    pages.push(format!("/console/webhooks/{webhook}"));
    pages.push(format!("/console/webhooks/{webhook}/deliveries/{retried}"));
    for path in &pages {
        b.goto(path).await;
        assert_eq!(&b.path().await, path, "the page opened");
        b.assert_accessible(path).await;
    }
    b.goto("/console/webhooks").await;
    b.screenshots("console-webhooks").await;
    b.goto(&format!("/console/webhooks/{webhook}")).await;
    b.screenshots("console-webhook-deliveries").await;
    b.goto(&format!("/console/webhooks/{webhook}/deliveries/{retried}"))
        .await;
    b.screenshots("console-webhook-delivery").await;
    b.goto("/console/accounts/acme").await;
    assert!(b.text("#live-runners").await.contains("tts"));
    b.js("document.getElementById('limits').scrollIntoView();")
        .await;
    b.screenshots("console-account-limits").await;
    b.close().await;
    app.assert_reconciled().await;
}
