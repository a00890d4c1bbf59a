//! The operator console (API.md section 5): its forms make the operator API's calls (the API
//! then shows what they did), once per form, refusing what the API refuses with the reason and
//! writing nothing; only an operator session opens it, every form needs its CSRF token, and
//! what people typed is escaped.

use crate::common::browser::Browser;
use crate::common::{field_value, Customer, DashApp, Resp, Visitor, DAY_MS, MINUTE_MS, T0, USD};
use reqwest::Method;
use serde_json::{json, Value};

/// A time as the pages write it: `2026-11-24 10:00 UTC`.
fn shown(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("a time in range")
        .format("%Y-%m-%d %H:%M UTC")
        .to_string()
}

async fn account(app: &DashApp, username: &str) -> Value {
    app.op_get(&format!("/v1/admin/accounts/{username}"))
        .await
        .expect(200)
        .json()
}

async fn balance(app: &DashApp, username: &str) -> i64 {
    account(app, username).await["balance_nano_usd"]
        .as_i64()
        .expect("a balance")
}

/// The account page's add-credits form: its CSRF token and purchase id.
async fn credits_form(op: &Visitor, username: &str) -> (String, String) {
    let page = op.page(&format!("/console/accounts/{username}")).await;
    let id = field_value(&page.text, "purchase_id").expect("a purchase id in the form");
    (page.csrf(), id)
}

async fn add_credits(
    op: &Visitor,
    username: &str,
    csrf: &str,
    purchase_id: &str,
    amount: &str,
    kind: &str,
    expires_on: &str,
) -> Resp {
    op.post_form(
        &format!("/console/accounts/{username}/credits"),
        &[
            ("csrf", csrf),
            ("purchase_id", purchase_id),
            ("amount_usd", amount),
            ("kind", kind),
            ("expires_on", expires_on),
        ],
    )
    .await
}

/// An invoice-billed account (usage only, no keys).
async fn invoiced(app: &DashApp, username: &str) -> Customer {
    app.op(
        Method::POST,
        "/v1/admin/accounts",
        json!({"username": username, "billing": "invoice"}),
    )
    .await
    .expect(201);
    Customer {
        username: username.into(),
        api_key: String::new(),
        admin_key: String::new(),
    }
}

async fn invoices_of(app: &DashApp, username: &str) -> Vec<Value> {
    app.op_get(&format!("/v1/admin/invoices?username={username}"))
        .await
        .expect(200)
        .json()["invoices"]
        .as_array()
        .expect("invoices")
        .clone()
}

#[tokio::test]
async fn credits_added_in_the_console_move_the_balance_by_the_amount_once() {
    let app = DashApp::spawn().await;
    app.customer("acme", Some("10.00")).await;
    let op = app.operator().await;
    let before = account(&app, "acme").await;
    let (csrf, purchase_id) = credits_form(&op, "acme").await;
    assert!(purchase_id.starts_with("console-"), "{purchase_id}");

    let r = add_credits(&op, "acme", &csrf, &purchase_id, "25.50", "paid", "").await;
    r.expect(303);
    assert_eq!(
        r.location(),
        format!("/console/accounts/acme?done=credited&purchase={purchase_id}&at={T0}")
    );
    let after = account(&app, "acme").await;
    let moved = |a: &Value, b: &Value, f: &str| b[f].as_i64().unwrap() - a[f].as_i64().unwrap();
    assert_eq!(moved(&before, &after, "balance_nano_usd"), 25_500_000_000);
    assert_eq!(
        moved(&before, &after, "paid_last_28d_nano_usd"),
        25_500_000_000
    );
    let page = op.page(r.location()).await;
    assert!(page.text.contains(&format!(
        "Added <strong>$25.50</strong> of paid credits (purchase <code>{purchase_id}</code>, {})",
        shown(T0)
    )));
    assert!(page.text.contains(&purchase_id), "the lot is listed");

    // The same form again (a double click, a resend): credited once.
    let again = add_credits(&op, "acme", &csrf, &purchase_id, "25.50", "paid", "").await;
    again.expect(303);
    assert_eq!(
        again.location(),
        format!("/console/accounts/acme?done=replayed&purchase={purchase_id}&at={T0}")
    );
    assert_eq!(
        balance(&app, "acme").await,
        after["balance_nano_usd"].as_i64().unwrap()
    );
    assert!(op
        .page(again.location())
        .await
        .text
        .contains("its <strong>$25.50</strong> of paid credits (purchase"));

    // A grant: free credits, with an expiry; the tier's paid figure does not move.
    let (_, grant_id) = credits_form(&op, "acme").await;
    assert_ne!(grant_id, purchase_id, "each rendered form has its own id");
    let r = add_credits(&op, "acme", &csrf, &grant_id, "5", "free", "2027-01-01").await;
    r.expect(303);
    assert!(op
        .page(r.location())
        .await
        .text
        .contains("Added <strong>$5.00</strong> of free credits (a grant)"));
    let granted = account(&app, "acme").await;
    assert_eq!(moved(&after, &granted, "balance_nano_usd"), 5 * USD);
    assert_eq!(moved(&after, &granted, "paid_last_28d_nano_usd"), 0);
    let lot = granted["credits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["purchase_id"] == grant_id.as_str())
        .expect("the grant's lot")
        .clone();
    assert_eq!(lot["expires_at"], "2027-01-01T00:00:00.000Z");
    assert_eq!(lot["remaining_nano_usd"], 5 * USD);

    // Refused amounts: the reason, the form again with what was typed, nothing written.
    let (_, fresh) = credits_form(&op, "acme").await;
    for (amount, kind, expires, status, reason) in [
        ("abc", "paid", "", 400, "is not a USD amount"),
        ("-5", "paid", "", 400, "must not be negative"),
        ("0", "paid", "", 400, "must be positive"),
        (
            "1.0000000001",
            "paid",
            "",
            400,
            "more than 9 decimal places",
        ),
        ("2000000", "paid", "", 400, "exceeds the largest amount"),
        ("", "paid", "", 400, "enter the credits to add"),
        (
            "5",
            "gift",
            "",
            400,
            "neither a paid purchase nor a free grant",
        ),
        ("5", "free", "2026-01-01", 400, "must be in the future"),
        ("5", "free", "soon", 400, "is not a time"),
    ] {
        let r = add_credits(&op, "acme", &csrf, &fresh, amount, kind, expires).await;
        r.expect(status);
        assert!(r.text.contains(reason), "{amount}: {reason} in the page");
        assert!(r.text.contains("id=\"add-credits\""), "the form again");
        assert_eq!(
            field_value(&r.text, "purchase_id").as_deref(),
            Some(fresh.as_str())
        );
        assert!(r.text.contains(&format!("value=\"{amount}\"")));
    }
    assert_eq!(
        balance(&app, "acme").await,
        granted["balance_nano_usd"].as_i64().unwrap()
    );
    // The id of a form already sent, with other figures: refused, and a new id to send.
    let r = add_credits(&op, "acme", &csrf, &purchase_id, "30", "paid", "").await;
    r.expect(409);
    assert!(r.text.contains("already used"), "{}", r.text);
    assert_ne!(
        field_value(&r.text, "purchase_id").as_deref(),
        Some(purchase_id.as_str())
    );
    assert_eq!(
        balance(&app, "acme").await,
        granted["balance_nano_usd"].as_i64().unwrap()
    );
    app.assert_reconciled().await;
}

#[tokio::test]
async fn a_terms_change_in_the_console_is_what_the_api_shows() {
    let app = DashApp::spawn().await;
    app.customer("acme", Some("10.00")).await;
    let op = app.operator().await;
    let page = op.page("/console/accounts/acme").await;
    assert_eq!(
        field_value(&page.text, "percent_discount").as_deref(),
        Some("")
    );
    let csrf = page.csrf();
    let post = |percent: &'static str, limit: &'static str, billing: &'static str| {
        let csrf = csrf.clone();
        let op = &op;
        async move {
            op.post_form(
                "/console/accounts/acme/terms",
                &[
                    ("csrf", &csrf),
                    ("percent_discount", percent),
                    ("concurrency_limit", limit),
                    ("billing", billing),
                ],
            )
            .await
        }
    };

    let r = post("12.5", "7", "invoice").await;
    r.expect(303);
    assert_eq!(r.location(), "/console/accounts/acme?done=terms");
    let a = account(&app, "acme").await;
    let t = &a["terms"]["in_force"];
    assert_eq!(t["percent_discount"].to_string().trim_matches('"'), "12.5");
    assert_eq!(t["concurrency_limit"], 7);
    assert_eq!(t["billing"], "invoice");
    assert_eq!(a["billing"], "invoice");
    assert_eq!(a["concurrency_limit"], 7);
    assert_eq!(a["locked"], false);
    let page = op.page(r.location()).await;
    assert!(page.text.contains("The terms are changed"));
    assert!(
        page.text.contains("12.5%"),
        "the terms table shows the discount"
    );
    assert_eq!(
        field_value(&page.text, "concurrency_limit").as_deref(),
        Some("7")
    );

    // The form as it is: nothing to change, no new version.
    let r = post("12.5", "7", "invoice").await;
    r.expect(303);
    assert_eq!(r.location(), "/console/accounts/acme?done=unchanged");
    assert_eq!(account(&app, "acme").await["terms"], a["terms"]);

    // Refused: the reason, and the terms as they were.
    for (percent, limit, reason) in [
        ("150", "7", "percent_discount"),
        ("ten", "7", "Percent discount"),
        ("12.5", "0", "concurrency_limit"),
        ("12.5", "many", "not a whole number"),
    ] {
        let r = post(percent, limit, "invoice").await;
        r.expect(400);
        assert!(r.text.contains(reason), "{percent}/{limit}: {reason}");
        assert!(r.text.contains("id=\"change-terms\""));
        assert_eq!(
            field_value(&r.text, "percent_discount").as_deref(),
            Some(percent)
        );
    }
    assert_eq!(account(&app, "acme").await["terms"], a["terms"]);

    // An empty limit is the tier table again; back to prepaid.
    post("", "", "prepaid").await.expect(303);
    let a = account(&app, "acme").await;
    let t = &a["terms"]["in_force"];
    assert_eq!(t["concurrency_limit"], Value::Null);
    assert_eq!(t["billing"], "prepaid");
    assert_eq!(t["percent_discount"].to_string().trim_matches('"'), "0");
    assert_eq!(a["concurrency_limit"], 4, "the tier of $10 paid in 28 days");
    app.assert_reconciled().await;
}

#[tokio::test]
async fn the_consoles_sign_in_link_is_built_on_the_public_url() {
    let app = DashApp::spawn_with(tollgate_dashboard::DashboardConfig {
        public_url: Some("https://billing.example.com".into()),
        ..tollgate_dashboard::DashboardConfig::default()
    })
    .await;
    app.customer("acme", Some("10.00")).await;
    let op = app.operator().await;
    let csrf = op.page("/console/accounts/acme").await.csrf();
    // Whatever host the request names.
    let r = Resp::read(
        op.client
            .post(app.url("/console/accounts/acme/sign-in-link"))
            .header("Host", "intranet.example:8080")
            .form(&[("csrf", &csrf)])
            .send()
            .await
            .expect("the server answers"),
    )
    .await;
    r.expect(200);
    assert!(
        r.text
            .contains("id=\"sign-in-link\">https://billing.example.com/dashboard/link/"),
        "the whole link, on the public URL"
    );
    assert!(!r.text.contains("intranet.example") && !r.text.contains("id=\"link-path-hint\""));
    // The path in it signs the customer in.
    let customer = app.visitor();
    let signed = customer.post_form(&link_in(&r.text), &[]).await;
    signed.expect(303);
    assert_eq!(signed.location(), "/dashboard");
    app.assert_reconciled().await;
}

#[tokio::test]
async fn staff_sign_an_account_out_of_every_dashboard_session() {
    let app = DashApp::spawn().await;
    let acme = app.customer("acme", Some("10.00")).await;
    app.customer("globex", Some("10.00")).await;
    // Two browsers signed in to acme's dashboard by links (no key, so only the customer
    // could end them), and one to globex's.
    let laptop = app.signed_in("acme").await;
    let phone = app.signed_in("acme").await;
    let other = app.signed_in("globex").await;
    for v in [&laptop, &phone, &other] {
        v.page("/dashboard").await;
    }
    let op = app.operator().await;
    let page = op.page("/console/accounts/acme").await;
    assert!(page.text.contains(
        "data-confirm=\"Sign acme out of every dashboard session? Whoever uses them must sign in again.\""
    ));
    assert!(page
        .text
        .contains("action=\"/console/accounts/acme/end-sessions\""));
    let csrf = page.csrf();

    let r = op
        .post_form("/console/accounts/acme/end-sessions", &[("csrf", &csrf)])
        .await;
    r.expect(200);
    assert!(
        r.text
            .contains("Signed out <strong>2 dashboard sessions</strong> of acme"),
        "how many ended"
    );
    for (who, v) in [("laptop", &laptop), ("phone", &phone)] {
        let r = v.get("/dashboard").await;
        r.expect(303);
        assert_eq!(r.location(), "/dashboard/login", "{who} is signed out");
        let r = v.get("/dashboard/billing").await;
        r.expect(303);
        assert_eq!(r.location(), "/dashboard/login", "{who}: every page");
    }
    // Another account's session and the operator's own are still signed in; acme's keys work.
    assert!(other.page("/dashboard").await.text.contains("globex"));
    op.page("/console/accounts/acme").await;
    app.call(Method::GET, "/v1/models", &acme.api_key, None)
        .await
        .expect(200);

    // Again: nothing left to end.
    let r = op
        .post_form("/console/accounts/acme/end-sessions", &[("csrf", &csrf)])
        .await;
    r.expect(200);
    assert!(r
        .text
        .contains("No dashboard session of acme was signed in: nothing to end."));
    // The customer signs in again with a new link.
    app.signed_in("acme").await.page("/dashboard").await;
    app.assert_reconciled().await;
}

#[tokio::test]
async fn a_forged_notice_in_the_query_string_shows_nothing() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("10.00")).await;
    app.customer("globex", Some("10.00")).await;
    let op = app.operator().await;
    let key_id = c.api_key.split(':').next().unwrap();
    for forged in [
        // The old shape, with an amount of the link's own.
        "done=credited&amount=999000000000&kind=paid".to_string(),
        "done=credited&amount=999000000000&kind=free".to_string(),
        // A purchase that does not exist, at a time or with an id that is not one.
        format!("done=credited&purchase=console-forged&at={T0}"),
        format!("done=replayed&purchase=console-forged&at={T0}"),
        // A real purchase at another time, and another account's purchase.
        format!("done=credited&purchase=initial-acme&at={}", T0 + 1),
        format!("done=credited&purchase=initial-globex&at={T0}"),
        "done=credited&purchase=initial-acme&at=soon".to_string(),
        // An active key said to be revoked, and a key that does not exist.
        format!("done=revoked&key={key_id}"),
        "done=revoked&key=k_nope".to_string(),
    ] {
        let page = op.page(&format!("/console/accounts/acme?{forged}")).await;
        assert!(
            !page.text.contains("<p class=\"notice\" role=\"status\">"),
            "{forged}: no notice in {}",
            page.text
        );
        assert!(!page.text.contains("$999,000"), "{forged}");
    }
    // The real purchase, named as a redirect names it: its stored figures.
    let page = op
        .page(&format!(
            "/console/accounts/acme?done=credited&purchase=initial-acme&at={T0}"
        ))
        .await;
    assert!(page.text.contains(
        "Added <strong>$10.00</strong> of paid credits (purchase <code>initial-acme</code>"
    ));
    app.assert_reconciled().await;
}

#[tokio::test]
async fn the_terms_form_says_when_a_later_version_is_scheduled() {
    let app = DashApp::spawn().await;
    app.customer("acme", Some("10.00")).await;
    let op = app.operator().await;
    let page = op.page("/console/accounts/acme").await;
    assert!(!page.text.contains("id=\"terms-scheduled\""));
    let csrf = page.csrf();
    // Later today: the operator's session (12 hours) still lasts when it is in force.
    let later = T0 + 6 * 60 * MINUTE_MS;
    app.op(
        Method::PUT,
        "/v1/admin/accounts/acme/pricing",
        json!({"percent_discount": "5", "effective_from": crate::common::rfc3339(later)}),
    )
    .await
    .expect(200);

    let page = op.page("/console/accounts/acme").await;
    let note = format!(
        "A version of the terms is scheduled from <strong>{}</strong>",
        shown(later)
    );
    assert!(page.text.contains(&note), "the form says so");
    assert!(page.text.contains("<code>2026-11-24T16:00:00.000Z</code>"));
    assert!(page.text.contains(
        "<button class=\"primary\" type=\"submit\" disabled aria-describedby=\"terms-scheduled\">Change terms</button>"
    ));
    // Sent anyway (a page rendered before): refused, its time as a date, nothing written.
    let before = account(&app, "acme").await["terms"].clone();
    let r = op
        .post_form(
            "/console/accounts/acme/terms",
            &[
                ("csrf", &csrf),
                ("percent_discount", "20"),
                ("concurrency_limit", ""),
                ("billing", "prepaid"),
            ],
        )
        .await;
    r.expect(400);
    assert!(
        r.text.contains(
            "already have a version effective from a later time (2026-11-24T16:00:00.000Z)"
        ),
        "{}",
        r.text
    );
    assert!(!r.text.contains(&later.to_string()), "no raw milliseconds");
    assert!(r.text.contains(&note));
    assert_eq!(account(&app, "acme").await["terms"], before);

    // Once it is in force, the form changes the terms again.
    app.set_now(later);
    let page = op.page("/console/accounts/acme").await;
    assert!(!page.text.contains("id=\"terms-scheduled\""));
    assert!(page
        .text
        .contains("<button class=\"primary\" type=\"submit\">Change terms</button>"));
    let r = op
        .post_form(
            "/console/accounts/acme/terms",
            &[
                ("csrf", &csrf),
                ("percent_discount", "20"),
                ("concurrency_limit", ""),
                ("billing", "prepaid"),
            ],
        )
        .await;
    r.expect(303);
    let a = account(&app, "acme").await;
    assert_eq!(
        a["terms"]["in_force"]["percent_discount"]
            .to_string()
            .trim_matches('"'),
        "20"
    );
    app.assert_reconciled().await;
}

/// The sign-in path in a page: `/dashboard/link/` and its 64 hex digits.
fn link_in(text: &str) -> String {
    let at = text
        .find("/dashboard/link/")
        .expect("a sign-in link in the page");
    text[at..at + "/dashboard/link/".len() + 64].to_string()
}

#[tokio::test]
async fn the_consoles_sign_in_link_signs_the_customer_in_once() {
    let app = DashApp::spawn().await;
    app.customer("acme", Some("10.00")).await;
    let op = app.operator().await;
    let csrf = op.page("/console/accounts/acme").await.csrf();
    let r = op
        .post_form("/console/accounts/acme/sign-in-link", &[("csrf", &csrf)])
        .await;
    r.expect(200);
    assert!(r.text.contains(&shown(T0 + 10 * MINUTE_MS)), "its expiry");
    // No public URL is configured: the path alone, never a link built on the request's host
    // (an http:// one behind a TLS proxy would carry the token in clear), and what to do.
    assert!(
        r.text.contains(r#"id="sign-in-link">/dashboard/link/"#),
        "the path"
    );
    assert!(!r.text.contains(&format!("{}/dashboard/link/", app.address)));
    assert!(!r.text.contains("//127.0.0.1"), "no host in the page");
    assert!(r.text.contains(r#"id="link-path-hint""#));
    assert!(r.text.contains("<code>public_url</code>"));
    let link = link_in(&r.text);
    // Shown once: the page itself does not show it again.
    assert!(!op
        .page("/console/accounts/acme")
        .await
        .text
        .contains("/dashboard/link/"));

    let customer = app.visitor();
    let signed = customer.post_form(&link, &[]).await;
    signed.expect(303);
    assert_eq!(signed.location(), "/dashboard");
    assert!(customer.page("/dashboard").await.text.contains("acme"));
    app.visitor().post_form(&link, &[]).await.expect(410);
    customer.post_form(&link, &[]).await.expect(410);
    app.assert_reconciled().await;
}

#[tokio::test]
async fn revoking_a_key_in_the_console_makes_the_api_refuse_it() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("10.00")).await;
    let other = app.customer("other", Some("10.00")).await;
    app.call(Method::GET, "/v1/models", &c.api_key, None)
        .await
        .expect(200);
    let op = app.operator().await;
    let page = op.page("/console/accounts/acme").await;
    let key_id = c.api_key.split(':').next().unwrap();
    assert!(page.text.contains(key_id) && page.text.contains("backend"));
    assert!(page
        .text
        .contains("data-confirm=\"Revoke the key “backend”"));
    let csrf = page.csrf();

    // A key of another account, through this account's page: not found, and it still works.
    let other_id = other.api_key.split(':').next().unwrap();
    let r = op
        .post_form(
            &format!("/console/accounts/acme/keys/{other_id}/revoke"),
            &[("csrf", &csrf)],
        )
        .await;
    r.expect(404);
    assert!(r.text.contains("has no key with the id"));
    app.call(Method::GET, "/v1/models", &other.api_key, None)
        .await
        .expect(200);

    let r = op
        .post_form(
            &format!("/console/accounts/acme/keys/{key_id}/revoke"),
            &[("csrf", &csrf)],
        )
        .await;
    r.expect(303);
    assert_eq!(
        r.location(),
        format!("/console/accounts/acme?done=revoked&key={key_id}")
    );
    app.call(Method::GET, "/v1/models", &c.api_key, None)
        .await
        .expect(401);
    let page = op.page(r.location()).await;
    assert!(page.text.contains("is revoked"));
    assert!(page.text.contains(&format!("revoked {}", &shown(T0)[..10])));
    // The ADMIN key was not touched.
    app.call(Method::GET, "/v1/account/invoices", &c.admin_key, None)
        .await
        .expect(200);
    app.assert_reconciled().await;
}

#[tokio::test]
async fn closing_paying_and_voiding_from_the_console_is_what_the_api_shows() {
    let app = DashApp::spawn().await;
    let c = invoiced(&app, "bigco").await;
    app.usage(&c, "fal-ai/flux/dev", "4", T0 - 60 * MINUTE_MS)
        .await;
    let op = app.operator().await;
    let page = op.page("/console/invoices").await;
    assert!(page.text.contains("No invoices yet"));
    let csrf = page.csrf();

    // Refused closes write nothing.
    let r = op
        .post_form(
            "/console/invoices/close",
            &[
                ("csrf", &csrf),
                ("username", "bigco"),
                ("until", "2027-01-01T00:00"),
            ],
        )
        .await;
    r.expect(400);
    assert!(r.text.contains("is in the future"));
    assert!(
        r.text.contains("value=\"2027-01-01T00:00\""),
        "the form again"
    );
    op.post_form(
        "/console/invoices/close",
        &[("csrf", &csrf), ("username", "nobody"), ("until", "")],
    )
    .await
    .expect(404);
    assert!(invoices_of(&app, "bigco").await.is_empty());

    let r = op
        .post_form(
            "/console/invoices/close",
            &[("csrf", &csrf), ("username", "bigco"), ("until", "")],
        )
        .await;
    r.expect(303);
    assert_eq!(r.location(), "/console/invoices?done=closed&issued=1");
    let issued = invoices_of(&app, "bigco").await;
    assert_eq!(issued.len(), 1);
    assert_eq!(
        (issued[0]["kind"].as_str(), issued[0]["status"].as_str()),
        (Some("usage"), Some("open"))
    );
    let first = issued[0]["invoice_id"].as_str().unwrap().to_string();
    let page = op.page(r.location()).await;
    assert!(page.text.contains("1 usage invoice issued"));
    assert!(page
        .text
        .contains(&format!("/console/invoices/{first}/pay")));

    // Marked paid with a reference someone typed: the API shows it, the page escapes it.
    let reference = "wire <b>#4411</b>";
    let r = op
        .post_form(
            &format!("/console/invoices/{first}/pay"),
            &[("csrf", &csrf), ("payment_reference", reference)],
        )
        .await;
    r.expect(303);
    assert_eq!(
        r.location(),
        format!("/console/invoices?done=paid&invoice={first}")
    );
    let paid = &invoices_of(&app, "bigco").await[0];
    assert_eq!(paid["status"], "paid");
    assert_eq!(paid["payment_reference"], reference);
    let page = op.page(r.location()).await;
    assert!(page.text.contains("wire &lt;b&gt;#4411&lt;/b&gt;"));
    assert!(!page.text.contains("<b>#4411"));
    // A paid invoice is not voided: the reason, and it stays paid.
    let r = op
        .post_form(
            &format!("/console/invoices/{first}/void"),
            &[("csrf", &csrf), ("reason", "mistake")],
        )
        .await;
    r.expect(409);
    assert_eq!(invoices_of(&app, "bigco").await[0]["status"], "paid");

    // A second period, voided; an empty reason first is refused.
    app.set_now(T0 + MINUTE_MS);
    app.usage(&c, "fal-ai/flux/dev", "2", T0).await;
    op.post_form(
        "/console/invoices/close",
        &[("csrf", &csrf), ("username", ""), ("until", "")],
    )
    .await
    .expect(303);
    let issued = invoices_of(&app, "bigco").await;
    assert_eq!(issued.len(), 2);
    let second = issued[0]["invoice_id"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    let r = op
        .post_form(
            &format!("/console/invoices/{second}/void"),
            &[("csrf", &csrf), ("reason", "  ")],
        )
        .await;
    r.expect(400);
    assert!(r.text.contains("`reason` must have 1 to 500 characters"));
    assert_eq!(invoices_of(&app, "bigco").await[0]["status"], "open");
    let r = op
        .post_form(
            &format!("/console/invoices/{second}/void"),
            &[("csrf", &csrf), ("reason", "issued to the wrong account")],
        )
        .await;
    r.expect(303);
    let voided = &invoices_of(&app, "bigco").await[0];
    assert_eq!(voided["status"], "void");
    assert_eq!(voided["void_reason"], "issued to the wrong account");
    assert!(op
        .page(r.location())
        .await
        .text
        .contains("is void (issued to the wrong account)"));
    // An unknown invoice: 404.
    op.post_form(
        "/console/invoices/inv_2026_999999/pay",
        &[("csrf", &csrf), ("payment_reference", "x")],
    )
    .await
    .expect(404);
    app.assert_reconciled().await;
}

#[tokio::test]
async fn the_catalog_page_shows_the_sample_catalog_and_the_reconciliation_is_clean() {
    let app = DashApp::spawn().await;
    app.customer("acme", Some("10.00")).await;
    app.op(
        Method::PUT,
        "/v1/admin/accounts/acme/pricing",
        json!({"prices": {"fal-ai/flux/dev": {"unit": "megapixel", "unit_price": "0.02"}}}),
    )
    .await
    .expect(200);
    let op = app.operator().await;
    let page = op.page("/console/catalog").await;
    let doc = tollgate_core::catalog::document::parse(crate::common::SAMPLE_CATALOG).unwrap();
    for e in &doc.endpoints {
        assert!(
            page.text.contains(&format!("<code>{}</code>", e.def.id)),
            "{} is listed",
            e.def.id
        );
    }
    assert!(
        page.text.contains("id=\"read-on\">2026-09-15<"),
        "when prices were read"
    );
    // Its versions with their dates: the public one in force, and acme's own.
    let from = format!("from {}", shown(T0 - 60 * DAY_MS));
    assert!(page.text.contains(&format!("public: $0.025 {from}")));
    assert!(page
        .text
        .contains(&format!("acme</a>: $0.02 from {}", shown(T0))));
    assert!(page.text.contains("<code>GPU-H100</code>"));
    assert!(page.text.contains("$0.000525") && page.text.contains("$1.89"));
    assert!(page
        .text
        .contains("<td class=\"num\">$1,000.00</td><td class=\"num\">40</td>"));
    // The account page lists its own price too.
    let account_page = op.page("/console/accounts/acme").await;
    assert!(account_page
        .text
        .contains("$0.02<span class=\"muted\"> / megapixel"));

    // No inline script or style anywhere in the console (the CSP would refuse them).
    for path in [
        "/console",
        "/console/accounts/acme",
        "/console/catalog",
        "/console/invoices",
        "/console/reconciliation",
    ] {
        let r = op.page(path).await;
        let handler = r.text.match_indices(" on").any(|(i, _)| {
            let name: String = r.text[i + 3..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase())
                .collect();
            !name.is_empty() && r.text[i + 3 + name.len()..].starts_with('=')
        });
        assert!(
            !r.text.contains("<script>") && !r.text.contains("style=") && !handler,
            "{path}"
        );
    }
    // Opening the page checks nothing; staff run the check, and the page shows its result.
    let r = op.page("/console/reconciliation").await;
    assert!(r.text.contains("Not checked yet"));
    assert!(!r.text.contains("Clean."));
    let r = op
        .post_form("/console/reconciliation", &[("csrf", &r.csrf())])
        .await;
    r.expect(303);
    assert_eq!(r.location(), "/console/reconciliation");
    let r = op.page("/console/reconciliation").await;
    assert!(r.text.contains("<strong>Clean.</strong>"));
    assert!(r
        .text
        .contains(&format!("id=\"checked-at\">{}<", shown(T0))));
    assert!(r.text.contains("$10.00"), "the purchased total");
    app.assert_reconciled().await;
}

/// Every form the console posts, with fields that would change something: acme's credits,
/// terms, sign-in link, sessions and key `key_id`, the reconciliation, closing bigco's period,
/// paying and voiding `invoice` when there is one, subscribing a webhook, and deleting the
/// webhook and redelivering its delivery `(webhook_id, delivery_id)`. A new form belongs here,
/// so the tests of who may post and of CSRF cover it.
fn every_console_form<'a>(
    purchase_id: &'a str,
    key_id: &str,
    invoice: Option<&str>,
    (webhook_id, delivery_id): (&str, &str),
) -> Vec<(String, Vec<(&'static str, &'a str)>)> {
    let mut forms = vec![
        (
            "/console/accounts/acme/credits".to_string(),
            vec![
                ("purchase_id", purchase_id),
                ("amount_usd", "50"),
                ("kind", "paid"),
            ],
        ),
        (
            "/console/accounts/acme/terms".to_string(),
            vec![
                ("percent_discount", "50"),
                ("concurrency_limit", "9"),
                ("billing", "invoice"),
            ],
        ),
        ("/console/accounts/acme/sign-in-link".to_string(), vec![]),
        ("/console/accounts/acme/end-sessions".to_string(), vec![]),
        ("/console/reconciliation".to_string(), vec![]),
        (
            format!("/console/accounts/acme/keys/{key_id}/revoke"),
            vec![],
        ),
        (
            "/console/invoices/close".to_string(),
            vec![("username", "bigco"), ("until", "")],
        ),
        (
            "/console/webhooks".to_string(),
            vec![
                ("url", "https://hooks.example.com/new"),
                ("events[*]", "on"),
            ],
        ),
        (format!("/console/webhooks/{webhook_id}/delete"), vec![]),
        (
            format!("/console/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"),
            vec![],
        ),
    ];
    if let Some(invoice) = invoice {
        forms.push((
            format!("/console/invoices/{invoice}/pay"),
            vec![("payment_reference", "x")],
        ));
        forms.push((
            format!("/console/invoices/{invoice}/void"),
            vec![("reason", "x")],
        ));
    }
    forms
}

/// A webhook of every event type, made through the API before anything happens (so the
/// accounts' events are delivered to it): its id.
async fn webhook(app: &DashApp) -> String {
    app.op(
        Method::POST,
        "/v1/admin/webhooks",
        json!({"url": "https://hooks.example.com/events", "events": ["*"]}),
    )
    .await
    .expect(201)
    .json()["webhook_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The webhook's deliveries as the API lists them.
async fn deliveries(app: &DashApp, webhook_id: &str) -> Value {
    app.op_get(&format!("/v1/admin/webhooks/{webhook_id}/deliveries"))
        .await
        .expect(200)
        .json()
}

#[tokio::test]
async fn a_customer_session_is_sent_to_the_console_sign_in_for_every_console_url() {
    let app = DashApp::spawn().await;
    let webhook_id = webhook(&app).await;
    let c = app.customer("acme", Some("10.00")).await;
    let bigco = invoiced(&app, "bigco").await;
    app.usage(&bigco, "fal-ai/flux/dev", "4", T0 - MINUTE_MS)
        .await;
    app.op(Method::POST, "/v1/admin/invoices/close", json!({}))
        .await
        .expect(200);
    let invoice = invoices_of(&app, "bigco").await[0]["invoice_id"]
        .as_str()
        .unwrap()
        .to_string();
    let key_id = c.api_key.split(':').next().unwrap().to_string();
    let before = balance(&app, "acme").await;
    let sent = deliveries(&app, &webhook_id).await;
    let delivery_id = sent["deliveries"][0]["delivery_id"]
        .as_str()
        .unwrap()
        .to_string();

    let customer = app.signed_in("acme").await;
    let csrf = customer.page("/dashboard").await.csrf();
    for v in [&customer, &app.visitor()] {
        for path in [
            "/console",
            "/console/accounts/acme",
            "/console/catalog",
            "/console/invoices",
            "/console/reconciliation",
            "/console/webhooks",
            &format!("/console/webhooks/{webhook_id}"),
            &format!("/console/webhooks/{webhook_id}/deliveries/{delivery_id}"),
        ] {
            let r = v.get(path).await;
            r.expect(303);
            assert_eq!(r.location(), "/console/login", "GET {path}");
        }
        for (path, fields) in
            every_console_form("p-x", &key_id, Some(&invoice), (&webhook_id, &delivery_id))
        {
            let mut fields = fields;
            fields.push(("csrf", &csrf));
            let r = v.post_form(&path, &fields).await;
            r.expect(303);
            assert_eq!(r.location(), "/console/login", "POST {path}");
        }
    }
    assert_eq!(balance(&app, "acme").await, before);
    assert_eq!(
        account(&app, "acme").await["terms"]["in_force"]["percent_discount"],
        Value::Null
    );
    app.call(Method::GET, "/v1/models", &c.api_key, None)
        .await
        .expect(200);
    assert_eq!(invoices_of(&app, "bigco").await[0]["status"], "open");
    assert_eq!(
        deliveries(&app, &webhook_id).await,
        sent,
        "nothing redelivered"
    );
    assert_eq!(
        app.op_get("/v1/admin/webhooks").await.json()["webhooks"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "none subscribed, none deleted"
    );
    app.assert_reconciled().await;
}

#[tokio::test]
async fn console_forms_without_the_csrf_token_are_refused_and_change_nothing() {
    let app = DashApp::spawn().await;
    let webhook_id = webhook(&app).await;
    let c = app.customer("acme", Some("10.00")).await;
    let bigco = invoiced(&app, "bigco").await;
    app.usage(&bigco, "fal-ai/flux/dev", "4", T0 - MINUTE_MS)
        .await;
    let op = app.operator().await;
    let (_, purchase_id) = credits_form(&op, "acme").await;
    let key_id = c.api_key.split(':').next().unwrap().to_string();
    let before = account(&app, "acme").await;
    let sent = deliveries(&app, &webhook_id).await;
    let delivery_id = sent["deliveries"][0]["delivery_id"]
        .as_str()
        .unwrap()
        .to_string();

    for token in [None, Some("forged")] {
        for (path, fields) in
            every_console_form(&purchase_id, &key_id, None, (&webhook_id, &delivery_id))
        {
            let mut fields = fields;
            if let Some(t) = token {
                fields.push(("csrf", t));
            }
            let r = op.post_form(&path, &fields).await;
            r.expect(403);
            assert!(
                r.text.contains("security token does not match"),
                "POST {path}"
            );
            assert!(!r.text.contains("/dashboard/link/"), "no link minted");
        }
    }
    assert_eq!(account(&app, "acme").await, before);
    assert!(op
        .page("/console/reconciliation")
        .await
        .text
        .contains("Not checked yet"));
    app.call(Method::GET, "/v1/models", &c.api_key, None)
        .await
        .expect(200);
    assert!(invoices_of(&app, "bigco").await.is_empty());
    assert_eq!(
        deliveries(&app, &webhook_id).await,
        sent,
        "nothing redelivered"
    );
    assert_eq!(
        app.op_get("/v1/admin/webhooks").await.json()["webhooks"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "none subscribed, none deleted"
    );
    // The same form with its token works: the forms were refused for the token alone.
    let (csrf, _) = credits_form(&op, "acme").await;
    add_credits(&op, "acme", &csrf, &purchase_id, "50", "paid", "")
        .await
        .expect(303);
    assert_eq!(
        balance(&app, "acme").await,
        before["balance_nano_usd"].as_i64().unwrap() + 50 * USD
    );
    app.assert_reconciled().await;
}

#[tokio::test]
async fn an_account_page_escapes_what_people_typed() {
    let app = DashApp::spawn().await;
    app.customer("o.brien_x-1", Some("10.00")).await;
    let alias = "<script>alert(\"x\")</script> & <b>co</b>";
    app.op(
        Method::POST,
        "/v1/admin/accounts/o.brien_x-1/keys",
        json!({"scope": "API", "alias": alias}),
    )
    .await
    .expect(201);
    let op = app.operator().await;
    let page = op.page("/console/accounts/o.brien_x-1").await;
    assert!(page.text.contains("<h1>o.brien_x-1</h1>"));
    assert!(page
        .text
        .contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;co&lt;/b&gt;"));
    assert!(!page.text.contains("<script>alert") && !page.text.contains("<b>co</b>"));
    let list = op.page("/console?q=o.b").await;
    assert!(list.text.contains("href=\"/console/accounts/o.brien_x-1\""));

    // A username no account has, with markup in it: a 404 page that shows it as text.
    let r = op
        .get("/console/accounts/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E")
        .await;
    r.expect(404);
    assert!(r.text.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert!(!r.text.contains("<img"));
    // A search with characters no username has: the reason, not a list.
    let r = op.get("/console?q=%3Cb%3E").await;
    r.expect(400);
    assert!(r.text.contains("is in no username"));
    assert!(!r.text.contains("<b>"));
    app.assert_reconciled().await;
}

#[tokio::test]
async fn the_account_list_pages_and_filters_by_prefix() {
    let app = DashApp::spawn().await;
    for i in 0..(tollgate_dashboard::console::accounts::PAGE + 3) {
        app.op(
            Method::POST,
            "/v1/admin/accounts",
            json!({"username": format!("team-{i:03}")}),
        )
        .await
        .expect(201);
    }
    app.customer("acme", Some("12.00")).await;
    let op = app.operator().await;
    let first = op.page("/console").await;
    assert!(first.text.contains("acme") && first.text.contains("team-000"));
    assert!(
        !first.text.contains("team-049\""),
        "the page ends at 50 accounts"
    );
    let at = first
        .text
        .find("rel=\"next\" href=\"")
        .expect("a Next link")
        + 17;
    let next = first.text[at..]
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    let second = op.page(&next).await;
    for i in 49..53 {
        assert!(
            second.text.contains(&format!(">team-{i:03}<")),
            "team-{i:03}"
        );
    }
    assert!(!second.text.contains("rel=\"next\""));
    assert!(!second.text.contains(">acme<"));

    let acme = op.page("/console?q=ac").await;
    assert!(acme.text.contains(">acme<") && !acme.text.contains("team-"));
    assert!(acme.text.contains("$12.00"));
    assert!(acme.text.contains("4 <span class=\"muted\">(tier)</span>"));
    assert!(op
        .page("/console?q=zz")
        .await
        .text
        .contains("No account matches"));
    let locked = op.page("/console?q=team-000").await;
    assert!(locked.text.contains("locked: exhausted balance"));
    app.assert_reconciled().await;
}

#[tokio::test]
async fn the_invoice_list_pages_newest_first_and_filters() {
    let app = DashApp::spawn().await;
    app.customer("acme", Some("1.00")).await;
    let pages = tollgate_dashboard::console::invoices::PAGE;
    for i in 1..=pages {
        app.op(
            Method::POST,
            "/v1/admin/accounts/acme/purchases",
            json!({"purchase_id": format!("p-{i}"), "amount_usd": "1.00"}),
        )
        .await
        .expect(201);
    }
    // Invoices TG-2026-000001 to TG-2026-000051: 51 top-ups.
    let op = app.operator().await;
    let first = op.page("/console/invoices").await;
    let number = |n: usize| format!(">TG-2026-{n:06}<");
    assert!(first.text.contains(&number(pages + 1)) && first.text.contains(&number(2)));
    assert!(!first.text.contains(&number(1)));
    assert!(
        first.text.find(&number(pages + 1)) < first.text.find(&number(pages)),
        "newest first"
    );
    let at = first
        .text
        .find("rel=\"next\" href=\"")
        .expect("a Next link")
        + 17;
    let next = first.text[at..]
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    let second = op.page(&next).await;
    assert!(second.text.contains(&number(1)) && !second.text.contains(&number(2)));
    assert!(!second.text.contains("rel=\"next\""));

    let open = op.page("/console/invoices?status=open").await;
    assert!(open.text.contains("No invoice matches"));
    let paid = op.page("/console/invoices?username=acme&status=paid").await;
    assert!(paid.text.contains(&number(pages + 1)) && paid.text.contains("value=\"acme\""));
    let nobody = op.page("/console/invoices?username=nobody").await;
    assert!(nobody.text.contains("No invoice matches"));
    op.get("/console/invoices?status=late").await.expect(400);
    app.assert_reconciled().await;
}

/// Waits until the browser has loaded `path` (a click that navigates returns before the next
/// page is loaded).
async fn loaded_at(b: &Browser, path: &str) {
    let mut url = b.client.current_url().await.expect("the url");
    url.set_path(path);
    url.set_query(None);
    b.client
        .wait()
        .for_url(&url)
        .await
        .unwrap_or_else(|e| panic!("never reached {path}: {e}"));
}

/// Waits until the page the browser loads has an element matching `css` (one the page before
/// did not have).
async fn shown_in_page(b: &Browser, css: &str) {
    b.client
        .wait()
        .for_element(fantoccini::Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} appeared: {e}"));
}

#[tokio::test]
async fn in_a_browser_an_operator_signs_in_opens_an_account_and_adds_credits() {
    let app = DashApp::spawn().await;
    let b = Browser::start(&app.address).await;
    b.goto("/console/login").await;
    let key = app.operator_key.clone();
    b.fill("#key", &key).await;
    b.click("form.card button[type='submit']").await;
    loaded_at(&b, "/console").await;
    assert!(b.text("main").await.contains("No accounts yet"));
    b.screenshots("console-accounts-empty").await;

    // A few accounts in different states.
    let acme = app.customer("acme", Some("25.00")).await;
    app.usage(&acme, "fal-ai/flux/dev", "12", T0 - 3 * 60 * MINUTE_MS)
        .await;
    app.usage(&acme, "fal-ai/flux/schnell", "40", T0 - 26 * 60 * MINUTE_MS)
        .await;
    app.customer("newco", None).await;
    app.customer("studio-9", Some("120.00")).await;
    app.op(
        Method::PUT,
        "/v1/admin/accounts/studio-9/pricing",
        json!({"percent_discount": "10", "concurrency_limit": 25}),
    )
    .await
    .expect(200);
    let bigco = invoiced(&app, "bigco").await;
    app.usage(&bigco, "fal-ai/flux/dev", "80", T0 - 5 * 60 * MINUTE_MS)
        .await;
    app.op(
        Method::POST,
        "/v1/admin/invoices/close",
        json!({"username": "bigco"}),
    )
    .await
    .expect(200);
    app.set_now(T0 + 5 * MINUTE_MS);

    b.goto("/console").await;
    assert_eq!(b.count("tbody tr").await, 4);
    b.screenshots("console-accounts").await;

    b.click("a[href='/console/accounts/acme']").await;
    loaded_at(&b, "/console/accounts/acme").await;
    let before = balance(&app, "acme").await;
    b.fill("#amount_usd", "40").await;
    b.click("#add-credits button[type='submit']").await;
    shown_in_page(&b, "p.notice").await;
    assert_eq!(b.path().await, "/console/accounts/acme");
    assert!(b
        .text("p.notice")
        .await
        .contains("Added $40.00 of paid credits"));
    assert_eq!(balance(&app, "acme").await, before + 40 * USD);
    assert_eq!(
        b.attr("#balance", "data-nano-usd").await.as_deref(),
        Some((before + 40 * USD).to_string().as_str())
    );
    b.screenshots("console-account").await;

    // A refused amount: the reason at the top and beside the form, nothing added.
    b.fill("#amount_usd", "12.3.4").await;
    b.click("#add-credits button[type='submit']").await;
    shown_in_page(&b, "p.notice.error").await;
    assert!(b
        .text("p.notice.error")
        .await
        .contains("is not a USD amount"));
    assert_eq!(balance(&app, "acme").await, before + 40 * USD);

    // A sign-in link, shown once, with a copy button (the script shows it).
    b.click("#sign-in-form button[type='submit']").await;
    shown_in_page(&b, "#sign-in-link").await;
    let link = b.text("#sign-in-link").await;
    assert!(link.starts_with("/dashboard/link/"), "{link}");
    assert!(b.text("#link-path-hint").await.contains("public_url"));
    assert_eq!(b.attr("button[data-copy]", "hidden").await, None);
    b.screenshots("console-account-link").await;

    // The same browser signed in to acme's dashboard by a link, then signed out of it by the
    // console's form (its confirmation accepted).
    b.goto(&app.sign_in_link("acme").await).await;
    assert_eq!(b.path().await, "/dashboard");
    b.goto("/console/accounts/acme").await;
    b.js("window.confirm = function () { return true; };").await;
    b.follow("#end-sessions button[type='submit']").await;
    assert!(b
        .text("p.notice")
        .await
        .contains("Signed out 1 dashboard session of acme"));
    b.screenshots("console-account-sessions-ended").await;
    b.js("document.getElementById('sign-in').scrollIntoView();")
        .await;
    b.screenshots("console-account-sessions").await;
    b.goto("/dashboard").await;
    assert_eq!(b.path().await, "/dashboard/login");

    // A terms version scheduled: the form says so, its button disabled.
    app.op(
        Method::PUT,
        "/v1/admin/accounts/acme/pricing",
        json!({"concurrency_limit": 9, "effective_from": crate::common::rfc3339(T0 + DAY_MS)}),
    )
    .await
    .expect(200);
    b.goto("/console/accounts/acme").await;
    assert!(b.text("#terms-scheduled").await.contains("scheduled from"));
    assert_eq!(
        b.attr("#change-terms button[type='submit']", "disabled")
            .await
            .as_deref(),
        Some("true")
    );
    b.js("document.getElementById('change-terms').scrollIntoView();")
        .await;
    b.screenshots("console-account-terms").await;

    b.goto("/console/catalog").await;
    assert!(b
        .text("#catalog-endpoints")
        .await
        .contains("fal-ai/flux/dev"));
    b.screenshots("console-catalog").await;
    b.goto("/console/invoices").await;
    assert!(b.text("main").await.contains("bigco"));
    b.screenshots("console-invoices").await;
    b.goto("/console/reconciliation").await;
    b.follow("#check-now button").await;
    assert!(b.text("#verdict").await.contains("Clean."));
    b.screenshots("console-reconciliation").await;
    b.close().await;
    app.assert_reconciled().await;
}
