//! Payments in the dashboard and the console (API.md section 7): what the customer sees of a
//! disputed payment and of a paused automatic top-up, and what the operator sees of the
//! account's payment profile, with the dispute lock's "Unlock" form.

use crate::common::{DashApp, Visitor, USD};
use tollgate_core::ids::{AccountId, PurchaseId};
use tollgate_core::machine::{Op, Outcome};
use tollgate_core::payments::{AutoTopUpRule, DisputeStatus, PaymentEffect, ProviderEvent};
use tollgate_core::Nanos;

fn id(text: &str) -> PurchaseId {
    PurchaseId::parse(text).expect("a purchase id")
}

fn account(username: &str) -> AccountId {
    AccountId::parse(username).expect("a username")
}

/// Applies `op` through the engine, as the API's payment calls do; it must be accepted.
async fn apply(app: &DashApp, op: Op) -> Outcome {
    app.engine
        .execute(op)
        .await
        .expect("the engine answers")
        .expect("the operation is accepted")
}

/// What the provider tells of `username`'s top-up, as event `event_id`.
async fn tell(app: &DashApp, username: &str, event_id: &str, effect: PaymentEffect) {
    apply(
        app,
        Op::Payment {
            account: account(username),
            event: Some(ProviderEvent {
                event_id: event_id.into(),
                event_type: "test".into(),
            }),
            effect,
        },
    )
    .await;
}

/// A checkout top-up of `usd` paid at the provider as `pi_<top_up_id>`, its card saved as
/// `pm_1` for the customer `cus_1`.
async fn paid_top_up(app: &DashApp, username: &str, top_up_id: &str, usd: i64) {
    apply(
        app,
        Op::SetPaymentCustomer {
            account: account(username),
            customer: "cus_1".into(),
        },
    )
    .await;
    apply(
        app,
        Op::CreateTopUp {
            account: account(username),
            top_up_id: id(top_up_id),
            amount: Nanos(usd * USD),
        },
    )
    .await;
    tell(
        app,
        username,
        &format!("evt_paid_{top_up_id}"),
        PaymentEffect::Paid {
            top_up_id: id(top_up_id),
            amount: Nanos(usd * USD),
            payment_intent: Some(format!("pi_{top_up_id}")),
            payment_method: Some("pm_1".into()),
        },
    )
    .await;
}

async fn set_rule(app: &DashApp, username: &str, threshold: i64, amount: i64, max: i64) {
    apply(
        app,
        Op::SetAutoTopUp {
            account: account(username),
            rule: AutoTopUpRule {
                enabled: true,
                threshold: Nanos(threshold * USD),
                amount: Nanos(amount * USD),
                max_per_month: Nanos(max * USD),
            },
        },
    )
    .await;
}

/// The `#attention` section of the overview, or `None` when nothing needs attention.
async fn attention(v: &Visitor) -> Option<String> {
    let page = v.page("/dashboard").await;
    let at = page.text.find("id=\"attention\"")?;
    let end = page.text[at..].find("</section>")?;
    Some(page.text[at..at + end].to_string())
}

#[tokio::test]
async fn a_paused_auto_top_up_and_a_disputed_payment_need_attention_in_plain_words() {
    let app = DashApp::spawn().await;
    app.customer("acme", None).await;
    paid_top_up(&app, "acme", "t1", 30).await;
    set_rule(&app, "acme", 10, 20, 100).await;
    let v = app.signed_in("acme").await;
    assert_eq!(attention(&v).await, None, "all is well");

    // Spending takes the balance below the threshold: one automatic top-up starts; the bank
    // asks the customer to confirm it, which pauses the rule.
    apply(
        &app,
        Op::Adjust {
            account: account("acme"),
            adjustment_id: tollgate_core::ids::AdjustmentId::parse("spend").unwrap(),
            amount: Nanos(-25 * USD),
            reason: "usage elsewhere".into(),
        },
    )
    .await;
    tell(
        &app,
        "acme",
        "evt_auth",
        PaymentEffect::Failed {
            top_up_id: id("auto-1"),
            reason: "authentication_required".into(),
            needs_customer: true,
        },
    )
    .await;
    let seen = attention(&v).await.expect("something needs attention");
    assert!(
        seen.contains(
            "Automatic top-ups are paused: </strong>your bank asked you to confirm a payment"
        ),
        "{seen}"
    );
    assert!(seen.contains("href=\"/dashboard/auto-top-up\""), "{seen}");

    // A dispute locks the account: said first, in words, with the way to the payments.
    tell(
        &app,
        "acme",
        "evt_dp",
        PaymentEffect::Disputed {
            top_up_id: id("t1"),
            dispute_id: "dp_1".into(),
            amount: Nanos(5 * USD),
            status: DisputeStatus::Open,
        },
    )
    .await;
    let seen = attention(&v).await.expect("something needs attention");
    let lock = seen
        .find("Your account is locked")
        .expect("the lock is told");
    assert!(lock < seen.find("Automatic top-ups are paused").unwrap());
    assert!(
        seen.contains("One of your payments is disputed with your bank (a chargeback)"),
        "{seen}"
    );
    assert!(seen.contains("href=\"/dashboard/billing#payments\""));
    app.assert_reconciled().await;
}

#[tokio::test]
async fn the_console_shows_the_payment_profile_and_lifts_a_dispute_lock() {
    let app = DashApp::spawn().await;
    app.customer("acme", None).await;
    app.customer("plain", Some("10.00")).await;
    let op = app.operator().await;

    // An account that never paid through the provider: nothing to show, no unlock form.
    let page = op.page("/console/accounts/plain").await;
    assert!(page
        .text
        .contains("none yet: created at the account's first checkout"));
    assert!(page.text.contains("never set"));
    assert!(!page.text.contains("id=\"unlock\""));

    paid_top_up(&app, "acme", "t1", 30).await;
    set_rule(&app, "acme", 10, 20, 100).await;
    tell(
        &app,
        "acme",
        "evt_dp",
        PaymentEffect::Disputed {
            top_up_id: id("t1"),
            dispute_id: "dp_1".into(),
            amount: Nanos(5 * USD),
            status: DisputeStatus::Lost,
        },
    )
    .await;
    let page = op.page("/console/accounts/acme").await;
    for shown in [
        "<code>cus_1</code>",
        "saved for automatic top-ups (<code>pm_1</code>)",
        "below $10.00, by $20.00, at most $100.00 a month",
        "Locked: payment disputed",
        "id=\"unlock\"",
    ] {
        assert!(page.text.contains(shown), "{shown}");
    }
    let csrf = page.csrf();

    // Without a reason, refused with the API's reason, still locked.
    let r = op
        .post_form(
            "/console/accounts/acme/unlock",
            &[("csrf", &csrf), ("reason", " ")],
        )
        .await;
    r.expect(400);
    assert!(r.text.contains("role=\"alert\""));
    let locked = app
        .op_get("/v1/admin/accounts/acme")
        .await
        .expect(200)
        .json();
    assert_eq!(locked["lock_reason"], "payment_disputed");
    // Without the token, refused before anything.
    op.post_form("/console/accounts/acme/unlock", &[("reason", "ok")])
        .await
        .expect(403);

    let r = op
        .post_form(
            "/console/accounts/acme/unlock",
            &[
                ("csrf", &csrf),
                ("reason", "dispute lost, repaid by transfer"),
            ],
        )
        .await;
    r.expect(303);
    assert_eq!(
        r.location(),
        "/console/accounts/acme?done=unlocked#payments"
    );
    let page = op.page(r.location()).await;
    assert!(page
        .text
        .contains("The dispute lock is lifted: new requests are accepted."));
    assert!(!page.text.contains("id=\"unlock\""));
    let unlocked = app
        .op_get("/v1/admin/accounts/acme")
        .await
        .expect(200)
        .json();
    assert_eq!(unlocked["locked"], false);
    assert_eq!(
        unlocked["balance_nano_usd"],
        25 * USD,
        "the lost dispute's amount stays taken"
    );
    app.assert_reconciled().await;
}

/// The rows of the billing page's credit activity: (kind, amount in nano-USD, what it says).
async fn activity(v: &Visitor) -> Vec<(String, i64, String)> {
    let page = v.page("/dashboard/billing/activity").await;
    page.text
        .split("<tr data-kind=\"")
        .skip(1)
        .map(|row| {
            let kind = row[..row.find('"').unwrap()].to_string();
            let cells: Vec<&str> = row.split("<td").collect();
            let what = cells[2]
                .split_once('>')
                .unwrap()
                .1
                .split("</td>")
                .next()
                .unwrap()
                .to_string();
            let amount = cells[4].split("data-nano-usd=\"").nth(1).unwrap();
            let amount = amount[..amount.find('"').unwrap()].parse().unwrap();
            (kind, amount, what)
        })
        .collect()
}

#[tokio::test]
async fn credit_activity_shows_refunds_and_disputes_with_their_payment() {
    let app = DashApp::spawn().await;
    app.customer("acme", Some("10.00")).await;
    paid_top_up(&app, "acme", "t1", 30).await;
    // An operator refunds part of the manual purchase; a dispute of the top-up opens, then is
    // won.
    apply(
        &app,
        Op::Refund {
            account: account("acme"),
            purchase_id: id("initial-acme"),
            refund_id: id("r1"),
            amount: Nanos(4 * USD),
            provider: None,
        },
    )
    .await;
    for (event, status) in [
        ("evt_open", DisputeStatus::Open),
        ("evt_won", DisputeStatus::Won),
    ] {
        app.set_now(app.now_ms() + 60_000);
        tell(
            &app,
            "acme",
            event,
            PaymentEffect::Disputed {
                top_up_id: id("t1"),
                dispute_id: "dp_1".into(),
                amount: Nanos(30 * USD),
                status,
            },
        )
        .await;
    }
    let v = app.signed_in("acme").await;
    let rows = activity(&v).await;
    let kinds: Vec<(&str, i64, &str)> = rows
        .iter()
        .map(|(k, a, w)| (k.as_str(), *a, w.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("dispute", 30 * USD, "Dispute won: credits given back"),
            ("dispute", -30 * USD, "Payment disputed: credits taken back"),
            ("refund", -4 * USD, "Refund of a payment"),
            ("purchase", 30 * USD, "Purchase"),
            ("purchase", 10 * USD, "Purchase"),
        ]
    );
    let page = v.page("/dashboard/billing/activity").await;
    assert!(
        page.text.contains("<code>initial-acme</code>"),
        "the refunded purchase"
    );
    assert!(
        page.text.contains("<code>t1</code>"),
        "the disputed purchase"
    );
    app.assert_reconciled().await;
}
