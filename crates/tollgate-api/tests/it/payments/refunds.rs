//! Refunds and disputes: the provider's events move the balance by exactly the state they
//! tell, in every order and repeated; a dispute locks the account (`payment_disputed`), which
//! credits never lift, a won one gives the amount back and lifts it, a lost one keeps both
//! until the operator unlocks; an inquiry takes and locks nothing; operator refunds go through
//! the provider for its payments (once per refund id, however late repeated) and take back only
//! what is left of a manual purchase, each with a credit note.

use super::{session_id, Pay, DAY, HOUR, MINUTE};
use crate::harness::{int, USD};
use reqwest::Method;
use serde_json::{json, Value};
use tollgate_store::testing::{backends, Backend};

/// Every order of `items`.
fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut tail in permutations(&rest) {
            tail.insert(0, first.clone());
            out.push(tail);
        }
    }
    out
}

#[tokio::test]
async fn refunds_and_disputes_move_the_balance_exactly_in_every_order() {
    let p = Pay::start(&Backend::Sqlite).await;
    // One payment of 50: refunded 10, then 25 in all; disputed for 20 (open). Whatever the
    // order, and with one event repeated: 50 - 25 - 20 = 5, locked for the dispute; the
    // dispute won gives its 20 back and lifts the lock.
    let orders = permutations(&["paid", "refund10", "refund25", "dispute"]);
    assert_eq!(orders.len(), 24);
    for (n, order) in orders.iter().enumerate() {
        let user = format!("o{n}");
        let admin = p.account(&user).await;
        let t = p.top_up(&admin, "50", false).await.expect(201).clone();
        let (session, pi) = p.stripe.pay_checkout(&session_id(&t));
        let pi_id = pi["id"].as_str().unwrap().to_string();
        let r10 = p.stripe.refund_in_dashboard(&pi_id, 1000);
        let r25 = p.stripe.refund_in_dashboard(&pi_id, 1500);
        let events: Vec<(&str, Value)> = vec![
            (
                "paid",
                p.stripe.event("checkout.session.completed", session),
            ),
            ("refund10", p.stripe.event("charge.refunded", r10)),
            ("refund25", p.stripe.event("charge.refunded", r25)),
            (
                "dispute",
                p.stripe.event(
                    "charge.dispute.created",
                    p.stripe
                        .dispute(&format!("dp_{n}"), &pi_id, 2000, "needs_response"),
                ),
            ),
        ];
        let by_name = |name: &str| events.iter().find(|(k, _)| *k == name).unwrap().1.clone();
        for name in order {
            let (status, body) = p.send(&by_name(name)).await;
            assert_eq!(status, 200, "{order:?}: {body}");
        }
        // One repeated (the provider retries): nothing more.
        let (status, body) = p.send(&by_name(order[n % 4])).await;
        assert_eq!(status, 200, "{order:?}: {body}");
        let account = p.app.account(&user).await;
        assert_eq!(
            int(&account["balance_nano_usd"]),
            5 * USD,
            "{order:?}: {account}"
        );
        assert_eq!(account["lock_reason"], "payment_disputed", "{order:?}");
        let won = p.stripe.event(
            "charge.dispute.closed",
            p.stripe.dispute(&format!("dp_{n}"), &pi_id, 2000, "won"),
        );
        p.expect(&won, "applied").await;
        let account = p.app.account(&user).await;
        assert_eq!(int(&account["balance_nano_usd"]), 25 * USD, "{order:?}");
        assert_eq!(account["locked"], false, "{order:?}: won lifts the lock");
        // A late open status of the won dispute changes nothing: won is final.
        let late = p.stripe.event(
            "charge.dispute.updated",
            p.stripe
                .dispute(&format!("dp_{n}"), &pi_id, 2000, "under_review"),
        );
        p.send(&late).await;
        assert_eq!(p.balance(&user).await, 25 * USD, "{order:?}");
    }
    p.app.assert_reconciled().await;
}

#[tokio::test]
async fn a_dispute_locks_purchases_do_not_lift_it_and_a_won_dispute_does() {
    for backend in backends() {
        let p = Pay::start(&backend).await;
        let name = backend.name();
        let admin = p.account("acme").await;
        let api = p.app.create_key("acme", "API").await;
        let (_, pi) = p.paid_top_up(&admin, "50", false).await;
        p.dollar_images("acme").await;
        let spent: Vec<Value> = (0..10).map(|i| p.usage("acme", &format!("u{i}"))).collect();
        p.app.usage_events(json!(spent)).await.expect(200);
        assert_eq!(p.balance("acme").await, 40 * USD, "{name}");
        // The whole payment disputed: 10 of it was spent, so the balance is owed.
        let open = p.stripe.event(
            "charge.dispute.created",
            p.stripe.dispute("dp_1", &pi, 5000, "needs_response"),
        );
        p.expect(&open, "applied").await;
        let account = p.app.account("acme").await;
        assert_eq!(int(&account["balance_nano_usd"]), -10 * USD, "{name}");
        assert_eq!(
            (account["locked"].as_bool(), account["lock_reason"].as_str()),
            (Some(true), Some("payment_disputed"))
        );
        let (_, r) = p.app.submit(&api, "fal-ai/flux/dev").await;
        assert_eq!(
            r.expect_error(403, "account_locked")["lock_reason"],
            "payment_disputed"
        );
        // Credits do not lift it.
        p.app
            .purchase("acme", "more", "100", "paid")
            .await
            .expect(201);
        let account = p.app.account("acme").await;
        assert_eq!(int(&account["balance_nano_usd"]), 90 * USD);
        assert_eq!(account["lock_reason"], "payment_disputed", "{name}");
        let payments = p
            .call(&admin, Method::GET, "/v1/account/payments", None)
            .await
            .expect(200)["payments"]
            .clone();
        let disputed = payments
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["provider_reference"] == pi.as_str())
            .unwrap()
            .clone();
        assert_eq!(disputed["status"], "disputed", "{name}: {payments}");
        assert_eq!(disputed["disputed_nano_usd"], 50 * USD);
        // Under review, then won: the amount back, the lock lifted.
        p.app.set_now(p.app.now_ms() + MINUTE);
        let review = p.stripe.event(
            "charge.dispute.updated",
            p.stripe.dispute("dp_1", &pi, 5000, "under_review"),
        );
        p.expect(&review, "applied").await;
        assert_eq!(p.balance("acme").await, 90 * USD, "{name}: taken once");
        let won = p.stripe.event(
            "charge.dispute.closed",
            p.stripe.dispute("dp_1", &pi, 5000, "won"),
        );
        p.expect(&won, "applied").await;
        let account = p.app.account("acme").await;
        assert_eq!(int(&account["balance_nano_usd"]), 140 * USD, "{name}");
        assert_eq!(account["locked"], false, "{name}");
        p.app.submit_ok(&api, "fal-ai/flux/dev").await;
        // Credit activity shows both movements as disputes.
        let activity = p
            .call(&admin, Method::GET, "/v1/account/credit-activity", None)
            .await
            .expect(200)["activity"]
            .clone();
        let disputes: Vec<i64> = activity
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["kind"] == "dispute")
            .map(|a| int(&a["amount_nano_usd"]))
            .collect();
        assert_eq!(disputes.len(), 2, "{name}: {activity}");
        assert_eq!(disputes.iter().sum::<i64>(), 0);
        p.app.assert_reconciled().await;
    }
}

#[tokio::test]
async fn a_lost_dispute_keeps_the_lock_until_the_operator_unlocks() {
    let p = Pay::start(&Backend::Sqlite).await;
    let admin = p.account("acme").await;
    let (_, pi) = p.paid_top_up(&admin, "30", false).await;
    let open = p.stripe.dispute("dp_9", &pi, 3000, "needs_response");
    p.expect(
        &p.stripe.event("charge.dispute.created", open.clone()),
        "applied",
    )
    .await;
    let lost = p.stripe.dispute("dp_9", &pi, 3000, "lost");
    p.expect(&p.stripe.event("charge.dispute.closed", lost), "applied")
        .await;
    let account = p.app.account("acme").await;
    assert_eq!(int(&account["balance_nano_usd"]), 0);
    assert_eq!(account["lock_reason"], "payment_disputed");
    // Lost is final: a late open status changes nothing.
    p.send(&p.stripe.event("charge.dispute.updated", open))
        .await;
    assert_eq!(p.balance("acme").await, 0);
    p.app
        .purchase("acme", "p-1", "20", "paid")
        .await
        .expect(201);
    assert_eq!(
        p.app.account("acme").await["lock_reason"],
        "payment_disputed"
    );
    let r = p
        .app
        .op(
            Method::POST,
            "/v1/admin/accounts/acme/unlock",
            json!({"reason": "chargeback lost, customer paid by wire"}),
        )
        .await;
    let account = r.expect(200);
    assert_eq!(account["locked"], false, "{account}");
    assert_eq!(int(&account["balance_nano_usd"]), 20 * USD);
    p.app.assert_reconciled().await;
}

#[tokio::test]
async fn operator_refunds_through_the_provider_or_of_what_is_left_with_credit_notes() {
    for backend in backends() {
        let p = Pay::start(&backend).await;
        let name = backend.name();
        let admin = p.account("acme").await;
        let (top_up, pi) = p.paid_top_up(&admin, "50", false).await;
        let refund = |purchase: String, body: Value| {
            let p = &p;
            async move {
                p.app
                    .op(
                        Method::POST,
                        &format!("/v1/admin/accounts/acme/purchases/{purchase}/refund"),
                        body,
                    )
                    .await
            }
        };

        // A purchase paid through the provider: refunded there, then taken back.
        let r = refund(
            top_up.clone(),
            json!({"refund_id": "rf-1", "amount_usd": "20"}),
        )
        .await;
        let first = r.expect(201).clone();
        assert!(r.header("idempotent-replayed").is_none());
        assert_eq!(first["taken_nano_usd"], 20 * USD, "{name}: {first}");
        assert_eq!(first["balance_nano_usd"], 30 * USD);
        assert!(first["provider_reference"]
            .as_str()
            .unwrap()
            .starts_with("re_"));
        let sent = p.stripe.requests("POST", "/v1/refunds");
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].idempotency_key, Some(p.key("refund-acme-rf-1")));
        assert_eq!(sent[0].field("metadata[tollgate_refund_id]"), Some("rf-1"));
        assert_eq!(
            sent[0].field("metadata[tollgate_installation]"),
            Some(p.installation().as_str())
        );
        assert_eq!(sent[0].field("payment_intent"), Some(pi.as_str()));
        assert_eq!(sent[0].field("amount"), Some("2000"));
        // The credit note: negative, correcting the top-up invoice.
        let note = p
            .call(
                &admin,
                Method::GET,
                &format!(
                    "/v1/account/invoices/{}",
                    first["credit_note_id"].as_str().unwrap()
                ),
                None,
            )
            .await
            .expect(200)
            .clone();
        assert_eq!(note["kind"], "credit_note", "{name}: {note}");
        assert_eq!(note["total_nano_usd"], -20 * USD);
        assert_eq!(note["purchase_id"], top_up.as_str());
        let payments = p
            .call(&admin, Method::GET, "/v1/account/payments", None)
            .await
            .expect(200)["payments"]
            .clone();
        assert_eq!(
            note["corrects_invoice_id"], payments[0]["invoice_id"],
            "{name}"
        );
        assert_eq!(payments[0]["status"], "partially_refunded");
        // The same refund again: the first answer, nothing moved, the provider not asked.
        let again = refund(
            top_up.clone(),
            json!({"refund_id": "rf-1", "amount_usd": "20"}),
        )
        .await;
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        assert_eq!(again.expect(201), &first);
        assert_eq!(p.stripe.requests("POST", "/v1/refunds").len(), 1);
        refund(
            top_up.clone(),
            json!({"refund_id": "rf-1", "amount_usd": "21"}),
        )
        .await
        .expect_error(409, "conflict");
        // The provider's event of the same refund takes nothing more.
        let charge = p.stripe.charge_of(&pi);
        assert_eq!(charge["amount_refunded"], 2000);
        p.send(&p.stripe.event("charge.refunded", charge)).await;
        assert_eq!(p.balance("acme").await, 30 * USD, "{name}");
        // More than is left: refused, the provider not asked.
        refund(
            top_up.clone(),
            json!({"refund_id": "rf-2", "amount_usd": "30.01"}),
        )
        .await
        .expect_error(409, "not_refundable");
        refund(
            top_up.clone(),
            json!({"refund_id": "rf-3", "amount_usd": "1.005"}),
        )
        .await
        .expect_error(400, "validation_error");
        assert_eq!(p.stripe.requests("POST", "/v1/refunds").len(), 1);

        // A manual purchase: what is left of its credits only.
        p.app
            .purchase("acme", "m-1", "10", "paid")
            .await
            .expect(201);
        let manual = refund(
            "m-1".into(),
            json!({"refund_id": "rf-m", "amount_usd": "4.5"}),
        )
        .await
        .expect(201)
        .clone();
        assert_eq!(manual["taken_nano_usd"], 4_500_000_000i64, "{name}");
        assert_eq!(manual["provider_reference"], Value::Null);
        assert!(manual["credit_note_id"].is_string());
        refund(
            "m-1".into(),
            json!({"refund_id": "rf-m2", "amount_usd": "6"}),
        )
        .await
        .expect_error(409, "not_refundable");
        // Free credits are not a payment.
        p.app
            .purchase("acme", "gift", "5", "free")
            .await
            .expect(201);
        refund(
            "gift".into(),
            json!({"refund_id": "rf-g", "amount_usd": "1"}),
        )
        .await
        .expect_error(409, "not_refundable");
        refund(
            "nope".into(),
            json!({"refund_id": "rf-n", "amount_usd": "1"}),
        )
        .await
        .expect_error(404, "not_found");
        assert_eq!(p.balance("acme").await, (30 + 10 + 5) * USD - 4_500_000_000);
        assert_eq!(p.stripe.requests("POST", "/v1/refunds").len(), 1);
        p.app.assert_reconciled().await;
    }
}

#[tokio::test]
async fn a_refund_repeated_after_the_providers_idempotency_window_is_made_once() {
    for backend in backends() {
        let p = Pay::start(&backend).await;
        let name = backend.name();
        let admin = p.account("acme").await;
        let (top_up, pi) = p.paid_top_up(&admin, "50", false).await;
        let refund = |id: &str, usd: &str| {
            let (p, top_up) = (&p, top_up.clone());
            let body = json!({"refund_id": id, "amount_usd": usd});
            async move {
                p.app
                    .op(
                        Method::POST,
                        &format!("/v1/admin/accounts/acme/purchases/{top_up}/refund"),
                        body,
                    )
                    .await
            }
        };

        // rf-1: made at the provider, then the charge's read fails: nothing is recorded.
        p.stripe.fail_reads("/v1/charges/", 1);
        refund("rf-1", "20")
            .await
            .expect_error(502, "payment_provider_error");
        assert_eq!(p.stripe.refunds().len(), 1, "{name}");
        assert_eq!(p.balance("acme").await, 50 * USD);
        // More than a day later the provider has forgotten the key; the repeat finds the
        // refund by its metadata instead of making another.
        p.app.set_now(p.app.now_ms() + DAY + HOUR);
        p.stripe.forget_idempotency_keys();
        // A changed form (the same id, another amount) finds the refund made for 20: the money
        // went back, so it is recorded for what it was, and the caller is told; nothing is
        // refunded again.
        refund("rf-1", "15").await.expect_error(409, "conflict");
        assert_eq!(p.stripe.refunds().len(), 1, "{name}: refunded once");
        assert_eq!(p.balance("acme").await, 30 * USD, "{name}");
        let made = refund("rf-1", "20").await.expect(201).clone();
        assert_eq!(made["taken_nano_usd"], 20 * USD, "{name}: {made}");
        assert_eq!(made["provider_reference"], p.stripe.refunds()[0]["id"]);
        assert_eq!(p.stripe.refunds().len(), 1, "{name}: refunded once");
        assert_eq!(p.stripe.requests("POST", "/v1/refunds").len(), 1);
        assert_eq!(p.stripe.charge_of(&pi)["amount_refunded"], 2000);
        assert_eq!(p.balance("acme").await, 30 * USD, "{name}");
        let listed = p.stripe.requests("GET", "/v1/refunds");
        assert!(listed
            .iter()
            .all(|r| r.field("payment_intent") == Some(pi.as_str())));

        // rf-2: made, its answer lost; the provider's event tells it first, and the repeat a
        // day later records it, taking nothing more.
        p.stripe.fail_reads("/v1/charges/", 1);
        refund("rf-2", "30")
            .await
            .expect_error(502, "payment_provider_error");
        p.expect(
            &p.stripe.event("charge.refunded", p.stripe.charge_of(&pi)),
            "applied",
        )
        .await;
        assert_eq!(p.balance("acme").await, 0, "{name}");
        p.app.set_now(p.app.now_ms() + DAY + HOUR);
        p.stripe.forget_idempotency_keys();
        let made = refund("rf-2", "30").await.expect(201).clone();
        assert_eq!(made["taken_nano_usd"], 0, "{name}: {made}");
        assert_eq!(made["provider_reference"], p.stripe.refunds()[1]["id"]);
        assert_eq!(p.stripe.refunds().len(), 2, "{name}");
        assert_eq!(p.balance("acme").await, 0);
        // Nothing is left to refund: a new refund id is refused, the provider not asked.
        refund("rf-3", "0.5")
            .await
            .expect_error(409, "not_refundable");
        assert_eq!(p.stripe.requests("POST", "/v1/refunds").len(), 2);
        assert_eq!(p.stripe.refunds().len(), 2);
        p.app.assert_reconciled().await;
    }
}

#[tokio::test]
async fn an_inquiry_takes_nothing_and_locks_nothing_until_it_escalates() {
    let p = Pay::start(&Backend::Sqlite).await;
    let admin = p.account("acme").await;
    let (_, pi) = p.paid_top_up(&admin, "30", false).await;
    for (t, status) in [
        ("charge.dispute.created", "warning_needs_response"),
        ("charge.dispute.updated", "warning_under_review"),
    ] {
        let inquiry = p.stripe.dispute("dp_inq", &pi, 3000, status);
        p.expect(&p.stripe.event(t, inquiry), "ignored").await;
        let account = p.app.account("acme").await;
        assert_eq!(int(&account["balance_nano_usd"]), 30 * USD, "{status}");
        assert_eq!(account["locked"], false, "{status}");
    }
    // The inquiry escalates: the provider tells the same dispute as needing a response.
    let escalated = p.stripe.dispute("dp_inq", &pi, 3000, "needs_response");
    p.expect(
        &p.stripe.event("charge.dispute.updated", escalated),
        "applied",
    )
    .await;
    let account = p.app.account("acme").await;
    assert_eq!(int(&account["balance_nano_usd"]), 0);
    assert_eq!(account["lock_reason"], "payment_disputed");
    // An inquiry of another payment closed without a dispute: nothing either.
    let (_, other) = p.paid_top_up(&admin, "10", false).await;
    let closed = p.stripe.dispute("dp_inq2", &other, 1000, "warning_closed");
    p.expect(&p.stripe.event("charge.dispute.closed", closed), "ignored")
        .await;
    assert_eq!(p.balance("acme").await, 10 * USD);
    p.app.assert_reconciled().await;
}
