//! Checkout top-ups end to end against the stand-in: the session made with the top-up's id as
//! idempotency key and metadata, the customer made once per account; the provider's signed
//! events credit once whatever arrives twice or out of order; a bad, stale or unknown
//! signature is refused with nothing written; a rolled secret is accepted beside the old one.

use super::{session_id, Pay, DAY, MINUTE, T0};
use crate::harness::{int, TestApp, USD};
use reqwest::Method;
use serde_json::{json, Value};
use tollgate_api::payments::stripe::signature;
use tollgate_api::testing::receiver::Receiver;
use tollgate_api::testing::stripe::WEBHOOK_SECRET;
use tollgate_store::testing::{backends, Backend};

#[tokio::test]
async fn a_top_up_end_to_end_credits_once_with_its_invoice_and_unlock() {
    for backend in backends() {
        let p = Pay::start(&backend).await;
        let name = backend.name();
        let admin = p.account("acme").await;
        assert_eq!(
            p.app.account("acme").await["locked"],
            true,
            "no credits yet"
        );
        // A receiver of the billing events the payment causes.
        let receiver = Receiver::start().await;
        p.app
            .op(
                Method::POST,
                "/v1/admin/webhooks",
                json!({"url": receiver.url("/events"),
                    "events": ["purchase.succeeded", "top_up.succeeded", "account.unlocked",
                        "invoice.issued"]}),
            )
            .await
            .expect(201);

        // Two top-ups: one customer, two sessions, each keyed and tagged by its top-up.
        let first = p.top_up(&admin, "25.00", true).await.expect(201).clone();
        let second = p.top_up(&admin, "10", false).await.expect(201).clone();
        for t in [&first, &second] {
            assert_eq!(t["status"], "awaiting_payment", "{name}: {t}");
            assert_eq!(t["kind"], "checkout");
            assert!(t["top_up_id"].as_str().unwrap().starts_with("top_"));
        }
        assert_eq!(first["amount_nano_usd"], 25 * USD);
        assert_eq!(first["amount_usd"], json!(25.0));
        let customers = p.stripe.requests("POST", "/v1/customers");
        assert_eq!(customers.len(), 1, "{name}: one customer per account");
        assert_eq!(customers[0].idempotency_key, Some(p.key("customer-acme")));
        assert_eq!(
            customers[0].field("metadata[tollgate_account]"),
            Some("acme")
        );
        let sessions = p.stripe.requests("POST", "/v1/checkout/sessions");
        assert_eq!(sessions.len(), 2);
        let customer = p.stripe.session(&session_id(&first))["customer"].clone();
        for (s, t, cents, save) in [
            (&sessions[0], &first, "2500", true),
            (&sessions[1], &second, "1000", false),
        ] {
            let id = t["top_up_id"].as_str().unwrap();
            assert_eq!(
                s.idempotency_key,
                Some(p.key(&format!("checkout-acme-{id}")))
            );
            assert_eq!(s.field("mode"), Some("payment"));
            assert_eq!(s.field("customer"), customer.as_str(), "the same customer");
            assert_eq!(s.field("line_items[0][price_data][currency]"), Some("usd"));
            assert_eq!(
                s.field("line_items[0][price_data][unit_amount]"),
                Some(cents)
            );
            assert_eq!(s.field("line_items[0][quantity]"), Some("1"));
            assert!(s
                .field("line_items[0][price_data][product_data][name]")
                .is_some());
            assert_eq!(s.field("client_reference_id"), Some(id));
            assert_eq!(s.field("success_url"), Some("https://app.example.com/done"));
            assert_eq!(
                s.field("cancel_url"),
                Some("https://app.example.com/billing")
            );
            for prefix in ["metadata", "payment_intent_data[metadata]"] {
                assert_eq!(
                    s.field(&format!("{prefix}[tollgate_account]")),
                    Some("acme")
                );
                assert_eq!(s.field(&format!("{prefix}[tollgate_top_up_id]")), Some(id));
                assert_eq!(
                    s.field(&format!("{prefix}[tollgate_installation]")),
                    Some(p.installation().as_str())
                );
            }
            assert_eq!(
                s.field("payment_intent_data[setup_future_usage]"),
                save.then_some("off_session"),
                "saved only when agreed"
            );
        }
        let shown = p
            .call(
                &admin,
                Method::GET,
                &format!(
                    "/v1/account/top-ups/{}",
                    first["top_up_id"].as_str().unwrap()
                ),
                None,
            )
            .await;
        assert_eq!(shown.expect(200), &first, "{name}");

        // The customer pays; the provider tells. Credits, invoice, unlock in one commit.
        p.app.set_now(T0 + MINUTE);
        let (session, pi) = p.stripe.pay_checkout(&session_id(&first));
        let completed = p.stripe.event("checkout.session.completed", session);
        p.expect(&completed, "applied").await;
        let account = p.app.account("acme").await;
        assert_eq!(int(&account["balance_nano_usd"]), 25 * USD, "{name}");
        assert_eq!(account["locked"], false);
        // The same event again, and the payment's own event: nothing more.
        p.expect(&completed, "replayed").await;
        p.expect(
            &p.stripe.event("payment_intent.succeeded", pi.clone()),
            "applied",
        )
        .await;
        assert_eq!(p.balance("acme").await, 25 * USD, "credited once");
        let top = p
            .call(
                &admin,
                Method::GET,
                &format!(
                    "/v1/account/top-ups/{}",
                    first["top_up_id"].as_str().unwrap()
                ),
                None,
            )
            .await
            .expect(200)
            .clone();
        assert_eq!(top["status"], "succeeded");
        assert_eq!(top["checkout_url"], Value::Null);
        assert_eq!(top["provider_reference"], pi["id"]);
        // The card was saved (the customer agreed): the auto top-up rule can be set.
        assert_eq!(p.rule(&admin).await["payment_method_saved"], true, "{name}");

        // The payment history and the invoice.
        let payments = p
            .call(&admin, Method::GET, "/v1/account/payments", None)
            .await
            .expect(200)["payments"]
            .clone();
        assert_eq!(payments.as_array().unwrap().len(), 1, "{payments}");
        let pay = &payments[0];
        assert_eq!(pay["purchase_id"], first["top_up_id"]);
        assert_eq!(pay["status"], "succeeded");
        assert_eq!(pay["provider"], "stripe");
        assert_eq!(pay["provider_reference"], pi["id"]);
        let invoice = p
            .call(
                &admin,
                Method::GET,
                &format!(
                    "/v1/account/invoices/{}",
                    pay["invoice_id"].as_str().unwrap()
                ),
                None,
            )
            .await
            .expect(200)
            .clone();
        assert_eq!(invoice["kind"], "top_up");
        assert_eq!(invoice["total_nano_usd"], 25 * USD);

        // The events reached a real receiver.
        p.deliver_all().await;
        let got = receiver.wait_for(4).await;
        let mut types: Vec<String> = got
            .iter()
            .map(|r| r.json()["type"].as_str().unwrap().to_string())
            .collect();
        types.sort();
        assert_eq!(
            types,
            [
                "account.unlocked",
                "invoice.issued",
                "purchase.succeeded",
                "top_up.succeeded"
            ],
            "{name}"
        );
        let succeeded = got
            .iter()
            .map(|r| r.json())
            .find(|e| e["type"] == "top_up.succeeded")
            .unwrap();
        assert_eq!(succeeded["data"]["top_up_id"], first["top_up_id"]);
        assert_eq!(succeeded["data"]["kind"], "checkout");

        // Another account never sees it.
        let other = p.account("other").await;
        let r = p
            .call(
                &other,
                Method::GET,
                &format!(
                    "/v1/account/top-ups/{}",
                    first["top_up_id"].as_str().unwrap()
                ),
                None,
            )
            .await;
        r.expect_error(404, "not_found");
        p.app.assert_reconciled().await;
    }
}

#[tokio::test]
async fn a_refused_top_up_writes_nothing_and_asks_the_provider_nothing() {
    let p = Pay::start(&Backend::Sqlite).await;
    let admin = p.account("acme").await;
    let api = p.app.create_key("acme", "API").await;
    for (body, field) in [
        (
            json!({"amount_usd": "4.99", "success_url": "https://a.example/x", "cancel_url": "https://a.example/y"}),
            "amount_usd",
        ),
        (
            json!({"amount_usd": "10000.01", "success_url": "https://a.example/x", "cancel_url": "https://a.example/y"}),
            "amount_usd",
        ),
        (
            json!({"amount_usd": "10.005", "success_url": "https://a.example/x", "cancel_url": "https://a.example/y"}),
            "amount_usd",
        ),
        (
            json!({"amount_usd": 10, "success_url": "https://a.example/x", "cancel_url": "https://a.example/y"}),
            "amount_usd",
        ),
        (
            json!({"amount_usd": "10", "success_url": "javascript:alert(1)", "cancel_url": "https://a.example/y"}),
            "success_url",
        ),
        (
            json!({"amount_usd": "10", "success_url": "https://a.example/x", "cancel_url": "/relative"}),
            "cancel_url",
        ),
        (
            json!({"amount_usd": "10", "success_url": "https://a.example/x"}),
            "cancel_url",
        ),
    ] {
        let r = p
            .call(
                &admin,
                Method::POST,
                "/v1/account/top-ups",
                Some(body.clone()),
            )
            .await;
        let e = r.expect_error(400, "validation_error");
        assert_eq!(e["field"], field, "{body}");
    }
    p.call(
        &api,
        Method::POST,
        "/v1/account/top-ups",
        Some(json!({"amount_usd": "10",
        "success_url": "https://a.example/x", "cancel_url": "https://a.example/y"})),
    )
    .await
    .expect_error(403, "authorization_error");
    assert!(p.stripe.got().is_empty(), "{:?}", p.stripe.got());
    assert_eq!(p.balance("acme").await, 0);
    p.app.assert_reconciled().await;
}

#[tokio::test]
async fn without_a_provider_the_payment_calls_answer_503() {
    let app = TestApp::spawn().await;
    app.create_account("acme").await.expect(201);
    let admin = app.create_key("acme", "ADMIN").await;
    let call = |method: Method, path: &'static str, body: Option<Value>| {
        let (app, admin) = (&app, admin.clone());
        async move {
            let body = body.map_or(crate::harness::Body::None, crate::harness::Body::Json);
            app.raw(method, path, Some(&admin), body).await
        }
    };
    call(
        Method::POST,
        "/v1/account/top-ups",
        Some(json!({"amount_usd": "10",
        "success_url": "https://a.example/x", "cancel_url": "https://a.example/y"})),
    )
    .await
    .expect_error(503, "payments_not_configured");
    call(Method::GET, "/v1/account/auto-top-up", None)
        .await
        .expect_error(503, "payments_not_configured");
    let r = app
        .client
        .post(format!("{}/v1/payments/stripe/webhook", app.address))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    app.assert_reconciled().await;
}

#[tokio::test]
async fn events_in_any_order_a_refund_before_the_checkout_completes() {
    for backend in backends() {
        let p = Pay::start(&backend).await;
        let admin = p.account("acme").await;
        let t = p.top_up(&admin, "25", false).await.expect(201).clone();
        let (session, pi) = p.stripe.pay_checkout(&session_id(&t));
        let pi_id = pi["id"].as_str().unwrap();
        // Refunded 10 in the provider's dashboard, told before the payment itself: kept (the
        // top-up is found through the payment's metadata at the provider).
        let charge = p.stripe.refund_in_dashboard(pi_id, 1000);
        p.expect(
            &p.stripe.event("charge.refunded", charge.clone()),
            "applied",
        )
        .await;
        assert_eq!(p.balance("acme").await, 0, "{}", backend.name());
        p.expect(
            &p.stripe.event("checkout.session.completed", session),
            "applied",
        )
        .await;
        assert_eq!(p.balance("acme").await, 15 * USD, "25 paid, 10 refunded");
        // The same state told again (another event id): nothing more.
        p.expect(&p.stripe.event("charge.refunded", charge), "applied")
            .await;
        p.expect(
            &p.stripe.event("payment_intent.succeeded", pi.clone()),
            "applied",
        )
        .await;
        assert_eq!(p.balance("acme").await, 15 * USD);
        // 5 more: the cumulative 15 takes 5.
        let charge = p.stripe.refund_in_dashboard(pi_id, 500);
        assert_eq!(charge["amount_refunded"], 1500);
        let later = p.stripe.event("charge.refunded", charge);
        p.expect(&later, "applied").await;
        p.expect(&later, "replayed").await;
        assert_eq!(p.balance("acme").await, 10 * USD);
        let pay = p
            .call(&admin, Method::GET, "/v1/account/payments", None)
            .await
            .expect(200)["payments"][0]
            .clone();
        assert_eq!(pay["status"], "partially_refunded", "{pay}");
        assert_eq!(pay["refunded_nano_usd"], 15 * USD);
        // Credit activity shows the refunds.
        let activity = p
            .call(&admin, Method::GET, "/v1/account/credit-activity", None)
            .await
            .expect(200)
            .clone();
        let refunds: Vec<i64> = activity["activity"]
            .as_array()
            .unwrap_or_else(|| panic!("{activity}"))
            .iter()
            .filter(|a| a["kind"] == "refund")
            .map(|a| int(&a["amount_nano_usd"]))
            .collect();
        assert_eq!(refunds.iter().sum::<i64>(), -15 * USD, "{activity}");
        p.app.assert_reconciled().await;
    }
}

#[tokio::test]
async fn bad_and_stale_signatures_are_refused_with_nothing_written() {
    let p = Pay::start(&Backend::Sqlite).await;
    let admin = p.account("acme").await;
    let t = p.top_up(&admin, "25", false).await.expect(201).clone();
    let (session, _) = p.stripe.pay_checkout(&session_id(&t));
    let event = p.stripe.event("checkout.session.completed", session);
    let body = serde_json::to_vec(&event).unwrap();
    let now = p.app.now_ms() / 1000;
    let tampered = {
        let mut e = event.clone();
        e["data"]["object"]["amount_total"] = json!(250_000);
        serde_json::to_vec(&e).unwrap()
    };
    let good = signature::sign(&body, WEBHOOK_SECRET, now);
    for (what, body, header) in [
        (
            "another secret",
            body.clone(),
            Some(signature::sign(&body, "whsec_other", now)),
        ),
        ("a changed body", tampered, Some(good.clone())),
        (
            "stale",
            body.clone(),
            Some(signature::sign(&body, WEBHOOK_SECRET, now - 301)),
        ),
        (
            "from the future",
            body.clone(),
            Some(signature::sign(&body, WEBHOOK_SECRET, now + 301)),
        ),
        ("no header", body.clone(), None),
        ("no v1", body.clone(), Some(format!("t={now}"))),
        ("garbage", body.clone(), Some("whatever".to_string())),
    ] {
        let (status, answer) = p.events.send_raw(body, header.as_deref()).await;
        assert_eq!(status, 400, "{what}: {answer}");
        assert_eq!(answer["error"]["type"], "validation_error", "{what}");
        assert_eq!(answer["error"]["field"], "Stripe-Signature", "{what}");
    }
    // Nothing was written: the top-up still awaits, no credits.
    let shown = p
        .call(
            &admin,
            Method::GET,
            &format!("/v1/account/top-ups/{}", t["top_up_id"].as_str().unwrap()),
            None,
        )
        .await
        .expect(200)
        .clone();
    assert_eq!(shown["status"], "awaiting_payment");
    assert_eq!(p.balance("acme").await, 0);
    // 300 s old is still in; then the same event is applied once.
    let (status, _) = p.events.send_at(&event, now - 300).await;
    assert_eq!(status, 200);
    assert_eq!(p.balance("acme").await, 25 * USD);
    // Later, the same bytes and header are stale: a captured event cannot be replayed.
    p.app.set_now(T0 + DAY);
    let (status, _) = p.events.send_raw(body, Some(&good)).await;
    assert_eq!(status, 400);
    p.app.assert_reconciled().await;
}

#[tokio::test]
async fn a_rolled_secret_is_accepted_beside_the_old_one_and_an_unknown_one_is_refused() {
    let p = Pay::start_with(&Backend::Sqlite, |mut s| {
        s.webhook_secrets = vec!["whsec_old".into(), "whsec_new".into()];
        s
    })
    .await;
    let admin = p.account("acme").await;
    let now = p.app.now_ms() / 1000;
    let mut paid = Vec::new();
    for secret in ["whsec_old", "whsec_new", "whsec_unknown", "both"] {
        let t = p.top_up(&admin, "10", false).await.expect(201).clone();
        let (session, _) = p.stripe.pay_checkout(&session_id(&t));
        let event = p.stripe.event("checkout.session.completed", session);
        let body = serde_json::to_vec(&event).unwrap();
        let header = if secret == "both" {
            // The provider signs with both while a secret rolls: two v1.
            let new = signature::sign(&body, "whsec_new", now);
            let gone = signature::sign(&body, "whsec_gone", now);
            format!("{gone},v1={}", new.split_once("v1=").unwrap().1)
        } else {
            signature::sign(&body, secret, now)
        };
        let (status, answer) = p.events.send_raw(body, Some(&header)).await;
        if secret == "whsec_unknown" {
            assert_eq!(status, 400, "{answer}");
        } else {
            assert_eq!(
                (status, answer["result"].as_str()),
                (200, Some("applied")),
                "{secret}"
            );
            paid.push(t);
        }
    }
    assert_eq!(p.balance("acme").await, 30 * USD, "three of four");
    p.app.assert_reconciled().await;
}

#[tokio::test]
async fn unknown_types_and_events_about_other_payments_are_acknowledged_and_ignored() {
    let p = Pay::start(&Backend::Sqlite).await;
    let admin = p.account("acme").await;
    let t = p.top_up(&admin, "10", false).await.expect(201).clone();
    let (mut session, _) = p.stripe.pay_checkout(&session_id(&t));
    p.expect(
        &p.stripe.event(
            "customer.created",
            json!({"id": "cus_x", "object": "customer"}),
        ),
        "ignored",
    )
    .await;
    // Another system's payment on the same provider account: no tollgate metadata.
    let theirs = json!({"id": "pi_theirs", "object": "payment_intent", "amount": 999,
        "amount_received": 999, "currency": "usd", "status": "succeeded", "metadata": {}});
    p.expect(
        &p.stripe.event("payment_intent.succeeded", theirs),
        "ignored",
    )
    .await;
    // A top-up this tollgate does not have (another deployment's account of the same name).
    let mut elsewhere = session.clone();
    elsewhere["metadata"]["tollgate_top_up_id"] = json!("top_000000000000000000000000");
    p.expect(
        &p.stripe.event("checkout.session.completed", elsewhere),
        "ignored",
    )
    .await;
    // Another currency is not tollgate's.
    session["currency"] = json!("eur");
    p.expect(
        &p.stripe.event("checkout.session.completed", session),
        "ignored",
    )
    .await;
    // A refund of a charge whose payment is nobody's here (404 at the provider).
    let orphan = json!({"id": "ch_orphan", "object": "charge", "amount": 100,
        "amount_refunded": 100, "currency": "usd", "payment_intent": "pi_nobody"});
    p.expect(&p.stripe.event("charge.refunded", orphan), "ignored")
        .await;
    assert_eq!(p.balance("acme").await, 0);
    p.app.assert_reconciled().await;
}

#[tokio::test]
async fn an_expired_checkout_fails_its_top_up_and_a_late_payment_still_credits_it() {
    let p = Pay::start(&Backend::Sqlite).await;
    let admin = p.account("acme").await;
    let t = p.top_up(&admin, "10", false).await.expect(201).clone();
    let id = t["top_up_id"].as_str().unwrap().to_string();
    let expired = p.stripe.event(
        "checkout.session.expired",
        p.stripe.session(&session_id(&t)),
    );
    p.expect(&expired, "applied").await;
    let shown = p
        .call(
            &admin,
            Method::GET,
            &format!("/v1/account/top-ups/{id}"),
            None,
        )
        .await
        .expect(200)
        .clone();
    assert_eq!(
        (shown["status"].as_str(), shown["failure_reason"].as_str()),
        (Some("failed"), Some("checkout_expired"))
    );
    // An asynchronous payment that succeeded after all: the provider's payment is the truth.
    let (session, _) = p.stripe.pay_checkout(&session_id(&t));
    p.expect(
        &p.stripe
            .event("checkout.session.async_payment_succeeded", session),
        "applied",
    )
    .await;
    assert_eq!(p.balance("acme").await, 10 * USD);
    p.app.assert_reconciled().await;
}

#[tokio::test]
async fn a_failed_payment_attempt_leaves_the_checkout_open_for_another_try() {
    let p = Pay::start(&Backend::Sqlite).await;
    let admin = p.account("acme").await;
    let t = p.top_up(&admin, "10", false).await.expect(201).clone();
    let id = t["top_up_id"].as_str().unwrap().to_string();
    // The customer's first card is declined on the checkout page: the provider tells the
    // payment's failure, and the session stays open for another card.
    let attempt = json!({"id": "pi_attempt", "object": "payment_intent", "amount": 1000,
        "amount_received": 0, "currency": "usd", "status": "requires_payment_method",
        "last_payment_error": {"code": "card_declined", "decline_code": "insufficient_funds"},
        "metadata": {"tollgate_installation": p.installation(), "tollgate_account": "acme",
            "tollgate_top_up_id": id}});
    p.expect(
        &p.stripe.event("payment_intent.payment_failed", attempt),
        "ignored",
    )
    .await;
    let shown = p
        .call(
            &admin,
            Method::GET,
            &format!("/v1/account/top-ups/{id}"),
            None,
        )
        .await
        .expect(200)
        .clone();
    assert_eq!(shown["status"], "awaiting_payment", "{shown}");
    assert_eq!(
        shown["checkout_url"], t["checkout_url"],
        "still where to pay"
    );
    // The second card is accepted.
    let (session, _) = p.stripe.pay_checkout(&session_id(&t));
    p.expect(
        &p.stripe.event("checkout.session.completed", session),
        "applied",
    )
    .await;
    assert_eq!(p.balance("acme").await, 10 * USD);
    p.app.assert_reconciled().await;
}
