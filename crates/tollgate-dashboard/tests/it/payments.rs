//! Payments in the dashboard and the console (API.md section 7), against the stand-in of the
//! payment provider (`tollgate_api::testing::stripe`): the "Add credits" form (checked against
//! the session's token, the top-up created at the provider for the account's customer, the
//! page with the link to pay, an invalid amount creating nothing), the page the customer
//! returns to (another account's top-up unknown), the auto top-up form (refused without a saved
//! card, saved after a checkout that saved one), the payments' statuses after the provider's
//! refund and dispute events, credit notes among the invoices, the console's refund form; what
//! the customer sees of a disputed payment and of a paused automatic top-up, and what the
//! operator sees of the account's payment profile, with the dispute lock's "Unlock" form. One
//! test buys credits in Chromium, and every new page passes the accessibility check.

use crate::common::browser::Browser;
use crate::common::{field_value, DashApp, Resp, Visitor, USD};
use reqwest::Method;
use serde_json::{json, Value};
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
    // The dispute forgot the saved card and paused the rule.
    for shown in [
        "<code>cus_1</code>",
        "none: the customer saves one when paying a top-up",
        "below $10.00, by $20.00, at most $100.00 a month",
        "paused (<code>payment_disputed</code>)",
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

// ---------------------------------------------------------------------------------------------
// Through the stand-in of the payment provider

/// The top-up id of a return page's URL (`.../dashboard/top-ups/<id>[?...]`).
fn top_up_of(url: &str) -> String {
    let rest = url
        .split("/dashboard/top-ups/")
        .nth(1)
        .expect("a return URL");
    rest.split('?').next().unwrap().to_string()
}

/// The `href` of the element with `id` in a page.
fn href_of(html: &str, id: &str) -> String {
    let at = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page"));
    let tag_start = html[..at].rfind('<').unwrap();
    let tag = &html[tag_start..html[at..].find('>').unwrap() + at];
    let h = tag.find("href=\"").expect("an href") + "href=\"".len();
    tag[h..h + tag[h..].find('"').unwrap()].replace("&amp;", "&")
}

/// Posts the "Add credits" form of `v` (its token read from the form's page).
async fn add_credits(v: &Visitor, amount: &str, save: bool) -> Resp {
    let csrf = v.page("/dashboard/top-ups/new").await.csrf();
    let mut fields = vec![("csrf", csrf.as_str()), ("amount_usd", amount)];
    if save {
        fields.push(("save_card", "yes"));
    }
    v.post_form("/dashboard/top-ups", &fields).await
}

/// The customer pays the checkout session behind `checkout_url` at the provider, and the
/// provider's events arrive: the top-up is credited. Returns the payment (`pi_...`).
async fn pay(app: &DashApp, checkout_url: &str) -> String {
    let session = checkout_url.rsplit('/').next().unwrap();
    let (session, pi) = app.stripe().pay_checkout(session);
    app.provider_event(
        &app.stripe().event("checkout.session.completed", session),
        "applied",
    )
    .await;
    app.provider_event(
        &app.stripe().event("payment_intent.succeeded", pi.clone()),
        "applied",
    )
    .await;
    pi["id"].as_str().unwrap().to_string()
}

/// A top-up of `amount` bought through the dashboard's form and paid: its id and payment.
async fn bought(app: &DashApp, v: &Visitor, amount: &str, save: bool) -> (String, String) {
    let r = add_credits(v, amount, save).await;
    r.expect(200);
    let url = href_of(&r.text, "continue-to-payment");
    let sessions = app.stripe().requests("POST", "/v1/checkout/sessions");
    let success = sessions
        .last()
        .and_then(|s| s.field("success_url"))
        .expect("a session")
        .to_string();
    let pi = pay(app, &url).await;
    (top_up_of(&success), pi)
}

async fn balance(app: &DashApp, username: &str) -> i64 {
    app.op_get(&format!("/v1/admin/accounts/{username}"))
        .await
        .expect(200)
        .json()["balance_nano_usd"]
        .as_i64()
        .expect("a balance")
}

#[tokio::test]
async fn adding_credits_creates_a_checkout_at_the_provider_and_answers_the_link_to_pay() {
    // Without a payment provider, there is nothing to buy here.
    let plain = DashApp::spawn().await;
    plain.customer("acme", None).await;
    let v = plain.signed_in("acme").await;
    assert!(!v
        .page("/dashboard")
        .await
        .text
        .contains("id=\"add-credits\""));
    let r = v.get("/dashboard/top-ups/new").await;
    r.expect(404);
    assert!(r.text.contains("Credits cannot be bought here yet"));
    plain.assert_reconciled().await;

    let app = DashApp::spawn_with_payments().await;
    app.customer("acme", None).await;
    app.customer("globex", Some("5.00")).await;
    let v = app.signed_in("acme").await;
    for page in ["/dashboard", "/dashboard/billing"] {
        let p = v.page(page).await;
        assert_eq!(
            href_of(&p.text, "add-credits"),
            "/dashboard/top-ups/new",
            "{page}"
        );
    }

    // Without the session's token: refused before anything.
    v.post_form("/dashboard/top-ups", &[("amount_usd", "25.00")])
        .await
        .expect(403);
    // Amounts the API refuses: the form again with the reason; nothing created, the provider
    // never asked.
    for (amount, status, why) in [
        ("ten", 400, "Amount:"),
        ("", 400, "Amount: enter the credits to buy"),
        ("1.00", 400, "a top-up is 5 USD to 10000 USD"),
        ("25.005", 400, "not a whole number of cents"),
    ] {
        let r = add_credits(&v, amount, true).await;
        r.expect(status);
        assert!(r.text.contains("role=\"alert\""), "{amount}");
        assert!(r.text.contains(why), "{amount}: {}", r.text);
        assert!(r.text.contains("id=\"top-up-form\""), "the form again");
    }
    assert!(app.stripe().got().is_empty(), "{:?}", app.stripe().got());
    let row = tollgate_query::account(&app.engine, &account("acme"))
        .await
        .unwrap();
    assert_eq!(row.state.payment, Default::default(), "nothing recorded");

    let r = add_credits(&v, "25.00", true).await;
    r.expect(200);
    assert!(r.text.contains("Pay $25.00 on the payment page"));
    assert!(r.text.contains("will be saved for automatic top-ups"));
    let checkout = href_of(&r.text, "continue-to-payment");
    assert!(
        checkout.starts_with(&format!("{}/checkout/cs_test_", app.stripe().base)),
        "{checkout}"
    );
    // The provider was asked once for the account's customer, then for the session, with that
    // customer and the return page on the public URL.
    let customers = app.stripe().requests("POST", "/v1/customers");
    assert_eq!(customers.len(), 1);
    let row = tollgate_query::account(&app.engine, &account("acme"))
        .await
        .unwrap();
    let customer = row.state.payment.customer.clone().expect("a customer");
    let sessions = app.stripe().requests("POST", "/v1/checkout/sessions");
    assert_eq!(sessions.len(), 1);
    let s = &sessions[0];
    assert_eq!(s.field("customer"), Some(customer.as_str()));
    assert_eq!(
        s.field("line_items[0][price_data][unit_amount]"),
        Some("2500")
    );
    assert_eq!(
        s.field("payment_intent_data[setup_future_usage]"),
        Some("off_session")
    );
    let success = s.field("success_url").unwrap().to_string();
    let top_up = top_up_of(&success);
    assert_eq!(success, app.url(&format!("/dashboard/top-ups/{top_up}")));
    assert_eq!(
        s.field("cancel_url"),
        Some(format!("{success}?cancelled=1").as_str())
    );
    assert!(r
        .text
        .contains(&format!("href=\"/dashboard/top-ups/{top_up}\"")));

    // Back before the provider confirmed: confirming, refreshing itself, a reload link.
    let path = format!("/dashboard/top-ups/{top_up}");
    let back = v.page(&path).await;
    assert!(back.text.contains("data-status=\"awaiting_payment\""));
    assert!(back.text.contains("Confirming your payment"));
    assert!(back.text.contains("hx-trigger=\"every 3s\""));
    assert!(
        back.text.contains(&format!("href=\"{path}\"")),
        "a reload link"
    );
    // Left the checkout: not paid, the way back to it.
    let left = v.page(&format!("{path}?cancelled=1")).await;
    assert!(left.text.contains("data-status=\"cancelled\""));
    assert!(left.text.contains(&format!("href=\"{checkout}\"")));
    // Another account's top-up is unknown, like an id nobody used.
    let other = app.signed_in("globex").await;
    let r = other.get(&path).await;
    r.expect(404);
    assert!(r.text.contains("You have no top-up"));
    other
        .get("/dashboard/top-ups/top_nothing")
        .await
        .expect(404);

    // Paid: the credits, the balance, the invoice; the page no longer refreshes.
    assert_eq!(balance(&app, "acme").await, 0);
    pay(&app, &checkout).await;
    let done = v.page(&path).await;
    assert!(done.text.contains("data-status=\"succeeded\""));
    assert!(done.text.contains("Paid: $25.00 of credits added."));
    assert!(done
        .text
        .contains(&format!("data-nano-usd=\"{}\"", 25 * USD)));
    assert!(!done.text.contains("hx-trigger"));
    let invoice = href_of(&done.text, "top-up-invoice");
    let inv = v.page(&invoice).await;
    assert!(inv.text.contains("Top-up"));
    assert!(
        done.text.contains("turn on automatic top-ups"),
        "the card was saved"
    );
    assert_eq!(balance(&app, "acme").await, 25 * USD);
    app.assert_reconciled().await;
}

#[tokio::test]
async fn the_auto_top_up_form_needs_a_saved_card_then_saves_the_rule_and_shows_the_months_top_ups()
{
    let app = DashApp::spawn_with_payments().await;
    let c = app.customer("acme", None).await;
    let v = app.signed_in("acme").await;
    let page = v.page("/dashboard/auto-top-up").await;
    assert!(page.text.contains("id=\"no-card\""));
    assert!(page.text.contains("data-status=\"off\""));
    let rule = [
        ("enabled", "yes"),
        ("threshold_usd", "10.00"),
        ("amount_usd", "20.00"),
        ("max_per_month_usd", "100.00"),
    ];
    let post = |csrf: String| {
        let v = &v;
        async move {
            let mut fields = vec![("csrf", csrf.as_str())];
            fields.extend(rule);
            v.post_form("/dashboard/auto-top-up", &fields).await
        }
    };
    // Without a saved card: the API's 409, shown; nothing saved.
    let r = post(page.csrf()).await;
    r.expect(409);
    assert!(r.text.contains("has no saved payment method"), "{}", r.text);
    assert!(r.text.contains("value=\"20.00\""), "the form as posted");
    let profile = tollgate_query::account(&app.engine, &account("acme"))
        .await
        .unwrap()
        .state
        .payment;
    assert_eq!(profile.auto_top_up, None);

    // A checkout that saves the card; then the rule is saved and shown.
    bought(&app, &v, "30.00", true).await;
    let page = v.page("/dashboard/auto-top-up").await;
    assert!(!page.text.contains("id=\"no-card\""));
    let r = post(page.csrf()).await;
    r.expect(303);
    assert_eq!(r.location(), "/dashboard/auto-top-up?done=saved");
    let page = v.page(r.location()).await;
    assert!(page.text.contains("Saved: automatic top-ups are on."));
    assert!(page.text.contains("data-status=\"active\""));
    assert!(page
        .text
        .contains("When your available balance falls below $10.00, $20.00 is charged"));
    assert_eq!(
        field_value(&page.text, "threshold_usd").as_deref(),
        Some("10.00")
    );
    let api = app
        .call(Method::GET, "/v1/account/auto-top-up", &c.admin_key, None)
        .await;
    let api = api.expect(200).json();
    assert_eq!(
        (api["enabled"].clone(), api["status"].clone()),
        (json!(true), json!("active"))
    );
    assert_eq!(api["threshold_nano_usd"], 10 * USD);

    // Spending takes the available balance below the threshold: one automatic top-up, charged
    // through the outbox, appears among this month's.
    spend(&app, "acme", "s1", "25").await;
    app.deliver_due().await;
    let page = v.page("/dashboard/auto-top-up").await;
    assert!(
        page.text.contains("data-top-up=\"auto-1\""),
        "{}",
        page.text
    );
    assert!(page.text.contains("<span id=\"month-count\">1</span>"));
    assert_eq!(balance(&app, "acme").await, 25 * USD);

    // The bank asks the customer to confirm the next one: paused, in plain words.
    app.stripe()
        .script([tollgate_api::testing::stripe::PaymentScript::AuthenticationRequired]);
    spend(&app, "acme", "s2", "20").await;
    app.deliver_due().await;
    let page = v.page("/dashboard/auto-top-up").await;
    assert!(
        page.text.contains("data-status=\"paused\""),
        "{}",
        page.text
    );
    assert!(page
        .text
        .contains("your bank asked you to confirm a payment"));
    app.assert_reconciled().await;
}

/// An operator's debit of `usd` (spending elsewhere, as usage would).
async fn spend(app: &DashApp, username: &str, id: &str, usd: &str) {
    app.op(
        Method::POST,
        &format!("/v1/admin/accounts/{username}/adjustments"),
        json!({"adjustment_id": id, "amount_usd": format!("-{usd}"), "reason": "usage"}),
    )
    .await
    .expect(201);
}

/// The billing page's payments table row of `purchase`.
fn payment_row(html: &str, purchase: &str) -> String {
    let at = html
        .find(&format!("data-purchase=\"{purchase}\""))
        .unwrap_or_else(|| panic!("no payment {purchase}"));
    html[at..at + html[at..].find("</tr>").unwrap()].to_string()
}

#[tokio::test]
async fn payments_show_their_status_refunds_and_disputes_as_the_provider_tells_them() {
    let app = DashApp::spawn_with_payments().await;
    let c = app.customer("acme", None).await;
    let v = app.signed_in("acme").await;
    let (t1, pi1) = bought(&app, &v, "40.00", false).await;
    let (t2, pi2) = bought(&app, &v, "10.00", false).await;
    let page = v.page("/dashboard/billing/payments").await;
    let row = payment_row(&page.text, &t1);
    assert!(row.contains("data-status=\"succeeded\""), "{row}");
    assert!(
        row.contains(&format!("<code>{pi1}</code>")),
        "the provider's reference"
    );

    // Refunds in the provider's dashboard: 15 of 40, all of 10.
    let charge = app.stripe().refund_in_dashboard(&pi1, 1500);
    app.provider_event(&app.stripe().event("charge.refunded", charge), "applied")
        .await;
    let charge = app.stripe().refund_in_dashboard(&pi2, 1000);
    app.provider_event(&app.stripe().event("charge.refunded", charge), "applied")
        .await;
    let page = v.page("/dashboard/billing/payments").await;
    let row = payment_row(&page.text, &t1);
    assert!(row.contains("data-status=\"partially_refunded\""), "{row}");
    assert!(
        row.contains(&format!("data-nano-usd=\"{}\"", 15 * USD)),
        "{row}"
    );
    let row = payment_row(&page.text, &t2);
    assert!(row.contains("data-status=\"refunded\""), "{row}");

    // Each refund is a credit note among the invoices: negative, correcting its top-up invoice.
    let invoices = app
        .call(Method::GET, "/v1/account/invoices", &c.admin_key, None)
        .await
        .expect(200)
        .json();
    let notes: Vec<&Value> = invoices["invoices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == "credit_note")
        .collect();
    assert_eq!(notes.len(), 2);
    let page = v.page("/dashboard/billing/invoices").await;
    for note in &notes {
        let id = note["invoice_id"].as_str().unwrap();
        let corrects = note["corrects_invoice_id"].as_str().unwrap();
        let at = page.text.find(&format!("data-invoice=\"{id}\"")).unwrap();
        let row = &page.text[at..at + page.text[at..].find("</tr>").unwrap()];
        assert!(row.contains("Credit note"), "{row}");
        assert!(row.contains(&format!(
            "corrects <a href=\"/dashboard/invoices/{corrects}\">"
        )));
        assert!(row.contains(&format!("data-nano-usd=\"{}\"", note["total_nano_usd"])));
        assert!(note["total_nano_usd"].as_i64().unwrap() < 0);
        let number = invoices["invoices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["invoice_id"] == corrects)
            .expect("the corrected top-up invoice")["number"]
            .as_str()
            .unwrap();
        assert!(row.contains(&format!("{number}</a>")), "its number: {row}");
        let detail = v.page(&format!("/dashboard/invoices/{id}")).await;
        assert!(detail.text.contains("A refund of a purchase of credits"));
        assert!(detail.text.contains(&format!("invoice {number}")));
    }

    // A dispute of the first payment: disputed, the account locked, in the customer's words.
    let dispute = app.stripe().dispute("dp_1", &pi1, 2500, "needs_response");
    app.provider_event(
        &app.stripe().event("charge.dispute.created", dispute),
        "applied",
    )
    .await;
    let page = v.page("/dashboard/billing").await;
    let row = payment_row(&page.text, &t1);
    assert!(row.contains("data-status=\"disputed\""), "{row}");
    assert!(row.contains("$25.00 taken back while disputed"), "{row}");
    let activity = activity(&v).await;
    assert_eq!(
        (activity[0].0.as_str(), activity[0].1),
        ("dispute", -25 * USD)
    );
    assert!(v
        .page("/dashboard")
        .await
        .text
        .contains("One of your payments is disputed with your bank"));
    app.assert_reconciled().await;
}

/// The refund form of `purchase` on the console's account page: its token and refund id.
async fn refund_form(op: &Visitor, username: &str, purchase: &str) -> (String, String) {
    let page = op.page(&format!("/console/accounts/{username}")).await;
    let row = payment_row(&page.text, purchase);
    let id = field_value(&row, "refund_id").expect("a refund id in the form");
    (page.csrf(), id)
}

#[tokio::test]
async fn the_console_refunds_a_payment_once_with_the_apis_refusals_shown() {
    let app = DashApp::spawn_with_payments().await;
    app.customer("acme", Some("10.00")).await;
    let v = app.signed_in("acme").await;
    let (t1, pi1) = bought(&app, &v, "25.00", false).await;
    let op = app.operator().await;
    let path = format!("/console/accounts/acme/purchases/{t1}/refund");
    let (csrf, refund_id) = refund_form(&op, "acme", &t1).await;
    assert!(refund_id.starts_with("refund-"), "{refund_id}");
    let before = balance(&app, "acme").await;

    // More than was paid: the API's reason, nothing refunded anywhere.
    let r = op
        .post_form(
            &path,
            &[
                ("csrf", &csrf),
                ("refund_id", &refund_id),
                ("amount_usd", "30.00"),
            ],
        )
        .await;
    r.expect(409);
    assert!(r.text.contains("left to refund"), "{}", r.text);
    assert!(r.text.contains("<details class=\"actions-fold\" open"));
    assert!(app.stripe().requests("POST", "/v1/refunds").is_empty());
    // Without the token: refused before anything.
    op.post_form(&path, &[("refund_id", &refund_id), ("amount_usd", "5.00")])
        .await
        .expect(403);

    let fields = [
        ("csrf", csrf.as_str()),
        ("refund_id", refund_id.as_str()),
        ("amount_usd", "10.00"),
    ];
    let send = || op.post_form(&path, &fields);
    let r = send().await;
    r.expect(303);
    let page = op.page(r.location()).await;
    assert!(
        page.text.contains(&format!(
        "Refund <code>{refund_id}</code> of purchase <code>{t1}</code>: <strong>$10.00</strong> \
         refunded at the payment provider (<code>"
    )),
        "{}",
        page.text
    );
    assert!(page.text.contains("with a credit note."));
    assert!(payment_row(&page.text, &t1).contains("data-status=\"partially_refunded\""));
    let refunds = app.stripe().requests("POST", "/v1/refunds");
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].field("payment_intent"), Some(pi1.as_str()));
    assert_eq!(refunds[0].field("amount"), Some("1000"));
    assert_eq!(balance(&app, "acme").await, before - 10 * USD);

    // The same form again: refunded once.
    let r = send().await;
    r.expect(303);
    let page = op.page(r.location()).await;
    assert!(page.text.contains("This refund form had already been sent"));
    assert_eq!(balance(&app, "acme").await, before - 10 * USD);
    assert_eq!(app.stripe().requests("POST", "/v1/refunds").len(), 1);

    // A manual purchase gives back only what is left of its credits.
    let (csrf, refund_id) = refund_form(&op, "acme", "initial-acme").await;
    let r = op
        .post_form(
            "/console/accounts/acme/purchases/initial-acme/refund",
            &[
                ("csrf", &csrf),
                ("refund_id", &refund_id),
                ("amount_usd", "11.00"),
            ],
        )
        .await;
    r.expect(409);
    assert!(r.text.contains("cannot be refunded"), "{}", r.text);
    assert_eq!(balance(&app, "acme").await, before - 10 * USD);
    app.assert_reconciled().await;
}

#[tokio::test]
async fn a_customer_buys_credits_in_a_browser_and_every_payment_page_is_accessible() {
    let app = DashApp::spawn_with_payments().await;
    app.customer("acme", None).await;
    let b = Browser::start(&app.address).await;
    b.goto(&app.sign_in_link("acme").await).await;
    b.goto("/dashboard").await;
    b.follow("#add-credits").await;
    assert_eq!(b.path().await, "/dashboard/top-ups/new");
    b.assert_accessible("the add-credits form").await;
    b.screenshots("top-up-form").await;
    b.fill("#amount_usd", "25.00").await;
    b.click("#save_card").await;
    b.follow("#top-up-form button[type='submit']").await;
    assert_eq!(b.path().await, "/dashboard/top-ups");
    b.assert_accessible("the link to pay").await;
    b.screenshots("top-up-continue").await;
    // A plain link to the provider's page (the CSP would refuse a form's redirect there).
    b.follow("#continue-to-payment").await;
    assert_eq!(b.text("h1").await, "Stripe checkout (stand-in)");
    let session = b.text("#session").await;
    let success = app.stripe().session(&session)["success_url"]
        .as_str()
        .unwrap()
        .to_string();
    let top_up = top_up_of(&success);

    // Back on the return page before the provider's event: confirming; the page refreshes
    // itself and shows the credits once the event is applied.
    b.goto(&format!("/dashboard/top-ups/{top_up}")).await;
    assert_eq!(
        b.attr("#top-up-status", "data-status").await.as_deref(),
        Some("awaiting_payment")
    );
    b.assert_accessible("the return page, confirming").await;
    b.screenshots("top-up-confirming").await;
    let (paid_session, pi) = app.stripe().pay_checkout(&session);
    app.provider_event(
        &app.stripe()
            .event("checkout.session.completed", paid_session),
        "applied",
    )
    .await;
    app.provider_event(
        &app.stripe().event("payment_intent.succeeded", pi),
        "applied",
    )
    .await;
    b.wait_until_within(
        "return document.querySelector('#top-up-status[data-status=\"succeeded\"]') !== null;",
        15,
    )
    .await;
    assert!(b
        .text("#top-up-status")
        .await
        .contains("$25.00 of credits added"));
    assert_eq!(b.text("#balance-now").await, "$25.00");
    b.assert_accessible("the return page, paid").await;
    b.screenshots("top-up-paid").await;

    // The rest of the payment pages, with something in them: the auto top-up page with the
    // rule on, payments refunded and disputed with a credit note, a failed top-up, the
    // console's payments with a dispute lock.
    b.goto("/dashboard/auto-top-up").await;
    b.fill("#threshold_usd", "5.00").await;
    b.fill("#amount_usd", "20.00").await;
    b.fill("#max_per_month_usd", "100.00").await;
    b.follow("#auto-top-up-form button[type='submit']").await;
    assert_eq!(
        b.attr("#rule-status", "data-status").await.as_deref(),
        Some("active")
    );
    b.assert_accessible("the auto top-up page").await;
    b.screenshots("auto-top-up").await;
    let pi = app.stripe().session(&session)["payment_intent"]
        .as_str()
        .unwrap()
        .to_string();
    let charge = app.stripe().refund_in_dashboard(&pi, 500);
    app.provider_event(&app.stripe().event("charge.refunded", charge), "applied")
        .await;
    let dispute = app.stripe().dispute("dp_1", &pi, 1000, "needs_response");
    app.provider_event(
        &app.stripe().event("charge.dispute.created", dispute),
        "applied",
    )
    .await;
    let v = app.signed_in("acme").await;
    let r = add_credits(&v, "7.00", false).await;
    let checkout = href_of(&r.expect(200).text, "continue-to-payment");
    let expired = app.stripe().session(checkout.rsplit('/').next().unwrap());
    app.provider_event(
        &app.stripe()
            .event("checkout.session.expired", expired.clone()),
        "applied",
    )
    .await;
    let failed = top_up_of(expired["success_url"].as_str().unwrap());
    for (path, what) in [
        ("/dashboard".to_string(), "the overview with a dispute"),
        (
            "/dashboard/billing".to_string(),
            "billing with refunds and a dispute",
        ),
        (
            "/dashboard/billing/invoices".to_string(),
            "invoices with a credit note",
        ),
        (format!("/dashboard/top-ups/{failed}"), "a failed top-up"),
        (
            format!("/dashboard/top-ups/{top_up}?cancelled=1"),
            "the return page, paid after all",
        ),
    ] {
        b.goto(&path).await;
        b.assert_accessible(what).await;
    }
    b.goto(&format!("/dashboard/top-ups/{failed}")).await;
    assert!(b
        .text("#top-up-status")
        .await
        .contains("the payment page expired"));
    b.screenshots("top-up-failed").await;
    b.goto("/dashboard/billing").await;
    b.screenshots("billing-payments").await;

    b.goto("/console/login").await;
    b.fill("#key", &app.operator_key.clone()).await;
    b.follow("form.card button[type='submit']").await;
    b.goto("/console/accounts/acme").await;
    assert_eq!(b.count("#unlock").await, 1, "the dispute lock's form");
    b.assert_accessible("the console's account with payments")
        .await;
    b.js("document.getElementById('payments').scrollIntoView();")
        .await;
    b.screenshots("console-account-payments").await;
    b.close().await;
    app.assert_reconciled().await;
}
