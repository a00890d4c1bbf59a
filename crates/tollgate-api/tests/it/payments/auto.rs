//! Automatic top-ups: decided in the write path, charged off it by the payment provider's row
//! in the webhook outbox. Many concurrent settlements start one top-up; a crash between the
//! provider's work and its recorded answer charges once; the monthly cap holds under
//! concurrency; declines pause the rule after three, authentication at once, each outcome a
//! webhook to a real receiver; a provider that never answers fails the top-up after 23 hours.

use super::{Pay, DAY, HOUR, MINUTE, T0};
use crate::harness::{int, USD};
use futures::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};
use tollgate_api::testing::receiver::Receiver;
use tollgate_api::testing::stripe::PaymentScript;
use tollgate_store::testing::{backends, Backend};

/// An account with 100 USD bought at checkout with its card saved, 1 USD usage events, and
/// the rule `threshold`/`amount`/`cap` set: its ADMIN key.
async fn ready(p: &Pay, username: &str, threshold: &str, amount: &str, cap: &str) -> String {
    let admin = p.account(username).await;
    p.paid_top_up(&admin, "100", true).await;
    p.dollar_images(username).await;
    let r = p
        .call(
            &admin,
            Method::PUT,
            "/v1/account/auto-top-up",
            Some(
                json!({"enabled": true, "threshold_usd": threshold, "amount_usd": amount,
                "max_per_month_usd": cap}),
            ),
        )
        .await;
    let rule = r.expect(200);
    assert_eq!(
        (rule["enabled"].as_bool(), rule["status"].as_str()),
        (Some(true), Some("active")),
        "{rule}"
    );
    admin
}

/// `n` usage events of 1 USD, each its own call, all at once.
async fn spend(p: &Pay, username: &str, prefix: &str, n: usize) {
    let calls = (0..n).map(|i| {
        let event = p.usage(username, &format!("{prefix}-{i}"));
        async move { p.app.usage_events(json!([event])).await }
    });
    for r in join_all(calls).await {
        let body = r.expect(200);
        assert!(body["results"][0].get("error").is_none(), "{body}");
    }
}

/// The off-session payments the provider was asked for: (idempotency key, amount in cents).
fn charges(p: &Pay) -> Vec<(String, String)> {
    p.stripe
        .requests("POST", "/v1/payment_intents")
        .into_iter()
        .map(|r| {
            (
                r.idempotency_key.clone().unwrap_or_default(),
                r.field("amount").unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn fifty_concurrent_settlements_crossing_the_threshold_start_one_top_up() {
    for backend in backends() {
        let p = Pay::start(&backend).await;
        let name = backend.name();
        let admin = ready(&p, "acme", "60", "20", "500").await;
        spend(&p, "acme", "u", 50).await;
        assert_eq!(p.balance("acme").await, 50 * USD, "{name}");
        let rule = p.rule(&admin).await;
        assert_eq!(rule["in_flight"], "auto-1", "{name}: {rule}");
        assert_eq!(
            rule["month_total_nano_usd"],
            20 * USD,
            "in flight counts toward the cap"
        );
        // The dispatcher charges it: one payment, the top-up's key, the shortfall's amount.
        p.app.dispatcher().run_once().await.expect("a round");
        p.app.dispatcher().run_once().await.expect("a round");
        assert_eq!(
            charges(&p),
            [(p.key("top-up-acme-auto-1"), "2000".to_string())],
            "{name}"
        );
        let req = &p.stripe.requests("POST", "/v1/payment_intents")[0];
        assert_eq!(req.field("off_session"), Some("true"));
        assert_eq!(req.field("confirm"), Some("true"));
        assert_eq!(req.field("currency"), Some("usd"));
        assert!(req.field("customer").is_some_and(|c| c.starts_with("cus_")));
        assert!(req
            .field("payment_method")
            .is_some_and(|c| c.starts_with("pm_")));
        assert_eq!(req.field("metadata[tollgate_account]"), Some("acme"));
        assert_eq!(req.field("metadata[tollgate_top_up_id]"), Some("auto-1"));
        assert_eq!(
            req.field("metadata[tollgate_installation]"),
            Some(p.installation().as_str())
        );
        assert_eq!(p.installation().len(), 16, "drawn at the first start");
        assert_eq!(p.balance("acme").await, 70 * USD, "{name}: credited once");
        let rule = p.rule(&admin).await;
        assert_eq!(rule["in_flight"], Value::Null, "{name}");
        assert_eq!(rule["month_count"], 1);
        // The payment's own event later changes nothing.
        let pi = p.stripe.payment_intents().last().cloned().unwrap();
        p.expect(&p.stripe.event("payment_intent.succeeded", pi), "applied")
            .await;
        assert_eq!(p.balance("acme").await, 70 * USD);
        let auto = p
            .call(&admin, Method::GET, "/v1/account/top-ups/auto-1", None)
            .await
            .expect(200)
            .clone();
        assert_eq!(
            (auto["kind"].as_str(), auto["status"].as_str()),
            (Some("auto"), Some("succeeded"))
        );
        p.app.assert_reconciled().await;
    }
}

#[tokio::test]
async fn a_crash_after_the_provider_was_called_creates_no_second_charge() {
    let p = Pay::start(&Backend::Sqlite).await;
    let admin = ready(&p, "acme", "60", "20", "500").await;
    spend(&p, "acme", "u", 45).await;
    assert_eq!(p.rule(&admin).await["in_flight"], "auto-1");

    // The provider makes the payment, and the dispatcher dies before its answer is recorded.
    p.stripe.hold_payments();
    let round = tokio::spawn({
        let d = p.app.dispatcher();
        async move { d.run_once().await }
    });
    p.stripe.wait_for("POST", "/v1/payment_intents", 1).await;
    round.abort();
    let _ = round.await;
    p.stripe.release();
    assert_eq!(
        p.balance("acme").await,
        55 * USD,
        "nothing credited: no answer recorded"
    );
    // Its lease holds meanwhile: no other round claims it.
    p.app.dispatcher().run_once().await.expect("a round");
    assert_eq!(charges(&p).len(), 1);
    // The lease passes; a new round sends it again, with the same key: the same payment.
    p.app.set_now(p.app.now_ms() + MINUTE);
    p.app.dispatcher().run_once().await.expect("a round");
    let sent = charges(&p);
    assert_eq!(sent.len(), 2, "sent twice");
    assert!(
        sent.iter().all(|(k, _)| *k == p.key("top-up-acme-auto-1")),
        "{sent:?}"
    );
    assert_eq!(
        p.stripe.payment_intents().len(),
        2,
        "the checkout's and one charge"
    );
    assert_eq!(p.balance("acme").await, 75 * USD, "credited once");

    // A lost answer (a 500 after the payment was made) is retried to the same payment too.
    p.stripe.script([PaymentScript::FailAfterRecording]);
    spend(&p, "acme", "v", 20).await;
    assert_eq!(p.rule(&admin).await["in_flight"], "auto-2");
    let results = p.app.dispatcher().run_once().await.expect("a round");
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].attempt.status_code, Some(500));
    assert_eq!(p.balance("acme").await, 55 * USD);
    p.app.set_now(p.app.now_ms() + 10 * MINUTE);
    p.app.dispatcher().run_once().await.expect("a round");
    assert_eq!(p.balance("acme").await, 75 * USD);
    let auto2: Vec<_> = charges(&p)
        .into_iter()
        .filter(|(k, _)| *k == p.key("top-up-acme-auto-2"))
        .collect();
    assert_eq!(auto2.len(), 2, "one key, sent twice");
    assert_eq!(p.stripe.payment_intents().len(), 3, "one payment for it");
    p.app.assert_reconciled().await;
}

#[tokio::test]
async fn the_monthly_cap_holds_under_concurrency() {
    for backend in backends() {
        let p = Pay::start(&backend).await;
        let name = backend.name();
        let admin = ready(&p, "acme", "60", "20", "30").await;
        spend(&p, "acme", "a", 50).await;
        p.app.dispatcher().run_once().await.expect("a round");
        assert_eq!(p.balance("acme").await, 70 * USD, "{name}");
        // 40 short of the threshold: two amounts, trimmed to what the cap leaves (10).
        spend(&p, "acme", "b", 50).await;
        p.app.dispatcher().run_once().await.expect("a round");
        assert_eq!(p.balance("acme").await, 30 * USD, "{name}");
        // The cap is reached: no more this month, however far below.
        spend(&p, "acme", "c", 25).await;
        p.app.dispatcher().run_once().await.expect("a round");
        assert_eq!(
            charges(&p).into_iter().map(|(_, c)| c).collect::<Vec<_>>(),
            ["2000", "1000"],
            "{name}"
        );
        let rule = p.rule(&admin).await;
        assert_eq!(rule["month_total_nano_usd"], 30 * USD, "{name}: {rule}");
        assert_eq!(rule["month_count"], 2);
        assert_eq!(rule["in_flight"], Value::Null);
        // The next month starts a new count.
        p.app.set_now(T0 + 31 * DAY);
        assert_eq!(p.rule(&admin).await["month_total_nano_usd"], 0, "{name}");
        spend(&p, "acme", "d", 1).await;
        p.app.dispatcher().run_once().await.expect("a round");
        assert_eq!(charges(&p).len(), 3, "{name}");
        p.app.assert_reconciled().await;
    }
}

/// Subscribes a receiver to the top-up events.
async fn receiver(p: &Pay) -> Receiver {
    let r = Receiver::start().await;
    p.app
        .op(
            Method::POST,
            "/v1/admin/webhooks",
            json!({"url": r.url("/hooks"),
                "events": ["top_up.started", "top_up.succeeded", "top_up.failed", "top_up.paused"]}),
        )
        .await
        .expect(201);
    r
}

fn types(got: &[tollgate_api::testing::receiver::Received]) -> Vec<String> {
    got.iter()
        .map(|r| r.json()["type"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn three_declines_in_a_row_pause_the_rule_and_tell_a_receiver() {
    let p = Pay::start(&Backend::Sqlite).await;
    let admin = ready(&p, "acme", "60", "20", "500").await;
    let hooks = receiver(&p).await;
    p.stripe.script([
        PaymentScript::Decline("insufficient_funds"),
        PaymentScript::Decline("insufficient_funds"),
        PaymentScript::Decline("do_not_honor"),
    ]);
    spend(&p, "acme", "a", 41).await;
    for round in 1..=3 {
        let rule = p.rule(&admin).await;
        assert_eq!(rule["in_flight"], format!("auto-{round}"), "{rule}");
        p.app.dispatcher().run_once().await.expect("a round");
        let rule = p.rule(&admin).await;
        assert_eq!(rule["failures"], round, "{rule}");
        assert_eq!(rule["in_flight"], Value::Null);
        assert_eq!(
            rule["month_total_nano_usd"], 0,
            "a failed top-up leaves the cap"
        );
        // No new one before retry_after (an hour), even below the threshold.
        spend(&p, "acme", &format!("b{round}"), 1).await;
        assert_eq!(p.rule(&admin).await["in_flight"], Value::Null);
        p.app.set_now(p.app.now_ms() + HOUR + MINUTE);
        spend(&p, "acme", &format!("c{round}"), 1).await;
    }
    let rule = p.rule(&admin).await;
    assert_eq!(
        (rule["status"].as_str(), rule["paused_reason"].as_str()),
        (Some("paused"), Some("repeated_failures")),
        "{rule}"
    );
    assert_eq!(rule["in_flight"], Value::Null, "paused: nothing started");
    assert_eq!(charges(&p).len(), 3);
    // The receiver heard every outcome.
    p.deliver_all().await;
    let got = hooks.wait_for(7).await;
    assert_eq!(
        types(&got),
        [
            "top_up.started",
            "top_up.failed",
            "top_up.started",
            "top_up.failed",
            "top_up.started",
            "top_up.failed",
            "top_up.paused"
        ]
    );
    let failed = got[5].json();
    assert_eq!(failed["data"]["reason"], "card_declined");
    assert_eq!(failed["data"]["failures"], 3);
    assert_eq!(got[6].json()["data"]["reason"], "repeated_failures");
    // Setting the rule again makes it active.
    let r = p
        .call(
            &admin,
            Method::PUT,
            "/v1/account/auto-top-up",
            Some(
                json!({"enabled": true, "threshold_usd": "60", "amount_usd": "20",
                "max_per_month_usd": "500"}),
            ),
        )
        .await;
    let rule = r.expect(200).clone();
    assert_eq!(
        (rule["status"].as_str(), rule["failures"].as_i64()),
        (Some("active"), Some(0))
    );
    spend(&p, "acme", "d", 1).await;
    p.app.dispatcher().run_once().await.expect("a round");
    assert_eq!(p.rule(&admin).await["month_count"], 1);
    p.app.assert_reconciled().await;
}

#[tokio::test]
async fn a_bank_asking_the_customer_to_authenticate_pauses_the_rule_at_once() {
    let p = Pay::start(&Backend::Sqlite).await;
    let admin = ready(&p, "acme", "60", "20", "500").await;
    let hooks = receiver(&p).await;
    p.stripe.script([PaymentScript::AuthenticationRequired]);
    spend(&p, "acme", "a", 41).await;
    p.app.dispatcher().run_once().await.expect("a round");
    let rule = p.rule(&admin).await;
    assert_eq!(
        (rule["status"].as_str(), rule["paused_reason"].as_str()),
        (Some("paused"), Some("authentication_required")),
        "{rule}"
    );
    let top = p
        .call(&admin, Method::GET, "/v1/account/top-ups/auto-1", None)
        .await
        .expect(200)
        .clone();
    assert_eq!(top["failure_reason"], "authentication_required");
    p.app.set_now(p.app.now_ms() + DAY);
    spend(&p, "acme", "b", 1).await;
    assert_eq!(p.rule(&admin).await["in_flight"], Value::Null, "paused");
    p.deliver_all().await;
    let got = hooks.wait_for(3).await;
    assert_eq!(
        types(&got),
        ["top_up.started", "top_up.failed", "top_up.paused"]
    );
    assert_eq!(got[2].json()["data"]["reason"], "authentication_required");
    assert_eq!(p.balance("acme").await, 58 * USD);
    p.app.assert_reconciled().await;
}

#[tokio::test]
async fn the_rule_needs_a_card_saved_at_a_checkout() {
    let p = Pay::start(&Backend::Sqlite).await;
    let admin = p.account("acme").await;
    let rule = json!({"enabled": true, "threshold_usd": "10", "amount_usd": "20",
        "max_per_month_usd": "100"});
    let shown = p.rule(&admin).await;
    assert_eq!(
        (
            shown["enabled"].as_bool(),
            shown["payment_method_saved"].as_bool()
        ),
        (Some(false), Some(false))
    );
    assert_eq!(shown["amount_usd"], Value::Null);
    p.call(
        &admin,
        Method::PUT,
        "/v1/account/auto-top-up",
        Some(rule.clone()),
    )
    .await
    .expect_error(409, "payment_method_required");
    // A checkout without saving the card is not enough.
    p.paid_top_up(&admin, "10", false).await;
    p.call(
        &admin,
        Method::PUT,
        "/v1/account/auto-top-up",
        Some(rule.clone()),
    )
    .await
    .expect_error(409, "payment_method_required");
    p.paid_top_up(&admin, "10", true).await;
    for (bad, field) in [
        (
            json!({"enabled": true, "threshold_usd": "10", "amount_usd": "20.001", "max_per_month_usd": "100"}),
            "amount_usd",
        ),
        (
            json!({"enabled": true, "threshold_usd": "10", "amount_usd": "1", "max_per_month_usd": "100"}),
            "amount_usd",
        ),
        (
            json!({"enabled": true, "threshold_usd": "10", "amount_usd": "20", "max_per_month_usd": "100.5001"}),
            "max_per_month_usd",
        ),
    ] {
        let r = p
            .call(
                &admin,
                Method::PUT,
                "/v1/account/auto-top-up",
                Some(bad.clone()),
            )
            .await;
        assert_eq!(
            r.expect_error(400, "validation_error")["field"],
            field,
            "{bad}"
        );
    }
    let set = p
        .call(&admin, Method::PUT, "/v1/account/auto-top-up", Some(rule))
        .await
        .expect(200)
        .clone();
    assert_eq!(set["threshold_nano_usd"], 10 * USD);
    assert_eq!(set["amount_usd"], json!(20.0));
    assert_eq!(set["max_per_month_nano_usd"], 100 * USD);
    assert_eq!(set, p.rule(&admin).await);
    p.app.assert_reconciled().await;
}

#[tokio::test]
async fn a_provider_that_never_answers_fails_the_top_up_after_23_hours() {
    let p = Pay::start(&Backend::Sqlite).await;
    let admin = ready(&p, "acme", "60", "20", "500").await;
    p.stripe
        .script(std::iter::repeat_n(PaymentScript::Unavailable, 100));
    spend(&p, "acme", "a", 41).await;
    let started = p.app.now_ms();
    let mut rounds = 0;
    while p.rule(&admin).await["in_flight"] != Value::Null {
        rounds += 1;
        assert!(rounds < 40, "never given up");
        let results = p.app.dispatcher().run_once().await.expect("a round");
        if p.app.now_ms() - started < 22 * HOUR {
            assert!(
                results.iter().all(|r| r.attempt.status_code == Some(503)),
                "{results:?}"
            );
        }
        p.app.set_now(p.app.now_ms() + 2 * HOUR);
    }
    assert!(p.app.now_ms() - started >= 23 * HOUR);
    assert!(p.app.now_ms() - started <= 26 * HOUR);
    let top = p
        .call(&admin, Method::GET, "/v1/account/top-ups/auto-1", None)
        .await
        .expect(200)
        .clone();
    assert_eq!(
        (top["status"].as_str(), top["failure_reason"].as_str()),
        (Some("failed"), Some("provider_unreachable"))
    );
    assert_eq!(
        p.stripe.payment_intents().len(),
        1,
        "only the checkout's payment"
    );
    assert_eq!(int(&p.rule(&admin).await["failures"]), 1);
    p.app.assert_reconciled().await;
}

/// The checkout's payment (the first the provider made).
fn checkout_payment(p: &Pay) -> String {
    p.stripe.payment_intents()[0]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `GET /v1/account/top-ups/{id}`: its status and failure reason.
async fn top_up_state(p: &Pay, admin: &str, id: &str) -> (String, Option<String>) {
    let t = p
        .call(
            admin,
            Method::GET,
            &format!("/v1/account/top-ups/{id}"),
            None,
        )
        .await
        .expect(200)
        .clone();
    (
        t["status"].as_str().unwrap().to_string(),
        t["failure_reason"].as_str().map(str::to_string),
    )
}

#[tokio::test]
async fn after_an_attempt_without_an_answer_the_charge_is_sent_again_not_cancelled() {
    let p = Pay::start(&Backend::Sqlite).await;
    let admin = ready(&p, "acme", "60", "20", "500").await;
    spend(&p, "acme", "a", 41).await;
    assert_eq!(p.rule(&admin).await["in_flight"], "auto-1");
    // The provider makes the payment and its answer is lost (a 500 after it was made).
    p.stripe.script([PaymentScript::FailAfterRecording]);
    let results = p.app.dispatcher().run_once().await.expect("a round");
    assert_eq!(results[0].attempt.status_code, Some(500));
    // Then the customer turns the rule off: a first attempt would now be cancelled, but this
    // one may be paid already, and a cancel would let the next decision charge again.
    p.call(
        &admin,
        Method::PUT,
        "/v1/account/auto-top-up",
        Some(
            json!({"enabled": false, "threshold_usd": "60", "amount_usd": "20",
            "max_per_month_usd": "500"}),
        ),
    )
    .await
    .expect(200);
    p.app.set_now(p.app.now_ms() + 10 * MINUTE);
    p.app.dispatcher().run_once().await.expect("a round");
    let sent = charges(&p);
    assert_eq!(sent.len(), 2, "sent again: {sent:?}");
    assert!(sent.iter().all(|(k, _)| *k == p.key("top-up-acme-auto-1")));
    assert_eq!(
        p.stripe.payment_intents().len(),
        2,
        "the checkout's and one charge"
    );
    assert_eq!(
        p.balance("acme").await,
        79 * USD,
        "the payment credited once"
    );
    assert_eq!(
        top_up_state(&p, &admin, "auto-1").await,
        ("succeeded".into(), None)
    );
    assert_eq!(p.rule(&admin).await["in_flight"], Value::Null);
    p.app.assert_reconciled().await;
}

#[tokio::test]
async fn a_rule_turned_off_before_its_delivery_charges_nothing() {
    for backend in backends() {
        let p = Pay::start(&backend).await;
        let name = backend.name();
        let admin = ready(&p, "acme", "60", "20", "500").await;
        spend(&p, "acme", "a", 41).await;
        assert_eq!(p.rule(&admin).await["in_flight"], "auto-1", "{name}");
        p.call(
            &admin,
            Method::PUT,
            "/v1/account/auto-top-up",
            Some(
                json!({"enabled": false, "threshold_usd": "60", "amount_usd": "20",
                "max_per_month_usd": "500"}),
            ),
        )
        .await
        .expect(200);
        // The delivery finds the decision stale: cancelled, not charged.
        let results = p.app.dispatcher().run_once().await.expect("a round");
        assert_eq!(results.len(), 1, "{name}");
        assert_eq!(
            results[0].attempt.status_code, None,
            "the provider not asked"
        );
        assert!(p.stripe.requests("POST", "/v1/payment_intents").is_empty());
        assert_eq!(p.stripe.payment_intents().len(), 1, "the checkout's only");
        let rule = p.rule(&admin).await;
        assert_eq!(rule["in_flight"], Value::Null, "{name}: {rule}");
        assert_eq!(rule["failures"], 0, "not a failure of the card");
        assert_eq!(rule["month_total_nano_usd"], 0);
        assert_eq!(
            top_up_state(&p, &admin, "auto-1").await,
            ("failed".into(), Some("cancelled".into()))
        );
        // Nothing more is due: the delivery is done.
        p.app.set_now(p.app.now_ms() + HOUR);
        assert!(p
            .app
            .dispatcher()
            .run_once()
            .await
            .expect("a round")
            .is_empty());
        assert_eq!(p.balance("acme").await, 59 * USD, "{name}");
        p.app.assert_reconciled().await;
    }
}

#[tokio::test]
async fn a_dispute_before_the_delivery_charges_nothing_and_the_card_must_be_saved_again() {
    for backend in backends() {
        let p = Pay::start(&backend).await;
        let name = backend.name();
        let admin = ready(&p, "acme", "60", "20", "500").await;
        let hooks = receiver(&p).await;
        spend(&p, "acme", "a", 41).await;
        assert_eq!(p.rule(&admin).await["in_flight"], "auto-1", "{name}");
        // The customer disputes 10 USD of the checkout's payment.
        let pi = checkout_payment(&p);
        let open = p.stripe.dispute("dp_1", &pi, 1000, "needs_response");
        p.expect(&p.stripe.event("charge.dispute.created", open), "applied")
            .await;
        let rule = p.rule(&admin).await;
        assert_eq!(
            (rule["status"].as_str(), rule["paused_reason"].as_str()),
            (Some("paused"), Some("payment_disputed")),
            "{name}: {rule}"
        );
        assert_eq!(rule["payment_method_saved"], false, "the card is forgotten");
        assert_eq!(p.balance("acme").await, 49 * USD);
        // The delivery charges nothing.
        p.app.dispatcher().run_once().await.expect("a round");
        assert!(
            p.stripe.requests("POST", "/v1/payment_intents").is_empty(),
            "{name}"
        );
        let rule = p.rule(&admin).await;
        assert_eq!(rule["in_flight"], Value::Null, "{name}: {rule}");
        assert_eq!(rule["failures"], 0);
        assert_eq!(
            top_up_state(&p, &admin, "auto-1").await,
            ("failed".into(), Some("cancelled".into()))
        );
        // Won: the amount is back, and the card still is not: the rule needs a new checkout
        // saving one.
        let won = p.stripe.dispute("dp_1", &pi, 1000, "won");
        p.expect(&p.stripe.event("charge.dispute.closed", won), "applied")
            .await;
        assert_eq!(p.balance("acme").await, 59 * USD);
        let enable = json!({"enabled": true, "threshold_usd": "60", "amount_usd": "20",
            "max_per_month_usd": "500"});
        p.call(
            &admin,
            Method::PUT,
            "/v1/account/auto-top-up",
            Some(enable.clone()),
        )
        .await
        .expect_error(409, "payment_method_required");
        assert!(p.stripe.requests("POST", "/v1/payment_intents").is_empty());
        p.paid_top_up(&admin, "10", true).await;
        let mut higher = enable;
        higher["threshold_usd"] = json!("80");
        let set = p
            .call(&admin, Method::PUT, "/v1/account/auto-top-up", Some(higher))
            .await
            .expect(200)
            .clone();
        assert_eq!(set["in_flight"], "auto-2", "{name}: 69 is below 80: {set}");
        p.deliver_all().await;
        assert_eq!(p.balance("acme").await, 89 * USD, "{name}");
        let got = hooks.wait_for(6).await;
        assert_eq!(
            types(&got),
            [
                "top_up.started",
                "top_up.paused",
                "top_up.failed",
                "top_up.succeeded",
                "top_up.started",
                "top_up.succeeded"
            ],
            "{name}"
        );
        assert_eq!(got[1].json()["data"]["reason"], "payment_disputed");
        assert_eq!(got[2].json()["data"]["reason"], "cancelled");
        assert_eq!(got[2].json()["data"]["failures"], 0);
        p.app.assert_reconciled().await;
    }
}

#[tokio::test]
async fn a_refused_key_is_retried_and_never_counted_as_a_failure_of_the_card() {
    let p = Pay::start(&Backend::Sqlite).await;
    let admin = ready(&p, "acme", "60", "20", "500").await;
    p.stripe.script([PaymentScript::Unauthorized]);
    spend(&p, "acme", "a", 41).await;
    let results = p.app.dispatcher().run_once().await.expect("a round");
    assert_eq!(results[0].attempt.status_code, Some(401));
    let rule = p.rule(&admin).await;
    assert_eq!(rule["failures"], 0, "{rule}");
    assert_eq!(rule["in_flight"], "auto-1", "still to be charged");
    assert_eq!(rule["status"], "active");
    assert_eq!(
        top_up_state(&p, &admin, "auto-1").await,
        ("awaiting_payment".into(), None)
    );
    // Retried after the backoff, with the same key: charged once.
    p.app.set_now(p.app.now_ms() + MINUTE);
    let results = p.app.dispatcher().run_once().await.expect("a round");
    assert_eq!(results[0].attempt.status_code, Some(200));
    let sent = charges(&p);
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|(k, _)| *k == p.key("top-up-acme-auto-1")));
    assert_eq!(p.balance("acme").await, 79 * USD);
    let rule = p.rule(&admin).await;
    assert_eq!(
        (rule["failures"].as_i64(), rule["month_count"].as_i64()),
        (Some(0), Some(1))
    );

    // Refused for the whole window: the top-up is cancelled, still no failure.
    p.stripe
        .script(std::iter::repeat_n(PaymentScript::Unauthorized, 100));
    spend(&p, "acme", "b", 20).await;
    assert_eq!(p.rule(&admin).await["in_flight"], "auto-2");
    let mut rounds = 0;
    while top_up_state(&p, &admin, "auto-2").await.0 == "awaiting_payment" {
        rounds += 1;
        assert!(rounds < 40, "never given up");
        p.app.dispatcher().run_once().await.expect("a round");
        p.app.set_now(p.app.now_ms() + 2 * HOUR);
    }
    assert_eq!(
        top_up_state(&p, &admin, "auto-2").await,
        ("failed".into(), Some("cancelled".into()))
    );
    let rule = p.rule(&admin).await;
    assert_eq!(
        (rule["failures"].as_i64(), rule["status"].as_str()),
        (Some(0), Some("active"))
    );
    // No wait after a cancel: the next one is in flight at once, for when the key is fixed.
    assert_eq!(rule["in_flight"], "auto-3", "{rule}");
    assert_eq!(
        p.stripe.payment_intents().len(),
        2,
        "the checkout's and auto-1's"
    );
    p.app.assert_reconciled().await;
}

#[tokio::test]
async fn an_event_of_another_installation_about_an_auto_top_up_of_the_same_name_is_ignored() {
    let p = Pay::start(&Backend::Sqlite).await;
    let admin = ready(&p, "acme", "60", "20", "500").await;
    spend(&p, "acme", "a", 41).await;
    assert_eq!(p.rule(&admin).await["in_flight"], "auto-1");
    // Another deployment on the same provider account (staging, say) has an account `acme`
    // whose `auto-1` was paid: its event reaches this webhook too.
    let theirs = |metadata: Value| {
        json!({"id": "pi_staging", "object": "payment_intent", "amount": 2000,
            "amount_received": 2000, "currency": "usd", "status": "succeeded",
            "payment_method": "pm_staging", "setup_future_usage": null, "metadata": metadata})
    };
    for metadata in [
        json!({"tollgate_installation": "0123456789abcdef", "tollgate_account": "acme",
            "tollgate_top_up_id": "auto-1"}),
        // One of before installation ids: an `auto-<n>` of no installation is not this one's.
        json!({"tollgate_account": "acme", "tollgate_top_up_id": "auto-1"}),
    ] {
        p.expect(
            &p.stripe
                .event("payment_intent.succeeded", theirs(metadata.clone())),
            "ignored",
        )
        .await;
        let mut failed = theirs(metadata);
        failed["status"] = json!("requires_payment_method");
        failed["last_payment_error"] = json!({"code": "card_declined"});
        p.expect(
            &p.stripe.event("payment_intent.payment_failed", failed),
            "ignored",
        )
        .await;
    }
    assert_eq!(p.balance("acme").await, 59 * USD, "nothing credited");
    assert_eq!(
        top_up_state(&p, &admin, "auto-1").await,
        ("awaiting_payment".into(), None)
    );
    // Its own charge is credited.
    p.app.dispatcher().run_once().await.expect("a round");
    assert_eq!(p.balance("acme").await, 79 * USD);
    p.app.assert_reconciled().await;
}

#[tokio::test]
async fn turning_the_rule_off_is_never_refused_for_its_amounts() {
    let p = Pay::start(&Backend::Sqlite).await;
    let admin = ready(&p, "acme", "10", "20", "500").await;
    for (amount, cap) in [
        ("1", "500"),
        ("20.001", "500"),
        ("20", "0.5"),
        ("50000", "100000"),
    ] {
        let body = json!({"enabled": false, "threshold_usd": "10", "amount_usd": amount,
            "max_per_month_usd": cap});
        let off = p
            .call(
                &admin,
                Method::PUT,
                "/v1/account/auto-top-up",
                Some(body.clone()),
            )
            .await
            .expect(200)
            .clone();
        assert_eq!(off["enabled"], false, "{body}");
        // Enabled, the same amounts are refused.
        let mut on = body;
        on["enabled"] = json!(true);
        p.call(&admin, Method::PUT, "/v1/account/auto-top-up", Some(on))
            .await
            .expect_error(400, "validation_error");
    }
    assert_eq!(p.rule(&admin).await["enabled"], false);
    p.app.assert_reconciled().await;
}
