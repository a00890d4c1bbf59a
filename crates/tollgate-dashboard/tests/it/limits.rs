//! The customer's spending limits page (API.md section 6): limits created, changed and deleted
//! in its forms are the API's (`/v1/account/spending-limits` lists them with the same figures:
//! spent, held, the period and when it resets), refused input is refused with the API's own
//! reason and writes nothing, another account's limit is unknown, and every form needs the
//! session's token. In a browser with JavaScript off, the forms work as plain posts.

use crate::common::browser::Browser;
use crate::common::{DashApp, Resp, Visitor, MINUTE_MS, T0, USD};
use reqwest::Method;
use serde_json::{json, Value};

/// The account's limits as the API lists them.
async fn api_limits(app: &DashApp, admin_key: &str) -> Vec<Value> {
    app.call(Method::GET, "/v1/account/spending-limits", admin_key, None)
        .await
        .expect(200)
        .json()["limits"]
        .as_array()
        .expect("limits")
        .clone()
}

/// Text as the page escapes it.
pub fn escaped(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A limit's card on the page.
#[track_caller]
fn card<'a>(page: &'a str, limit_id: &str) -> &'a str {
    let at = page
        .find(&format!("data-limit-id=\"{limit_id}\""))
        .unwrap_or_else(|| panic!("no card of {limit_id}"));
    let end = page[at..].find("</article>").expect("the card's end") + at;
    &page[at..end]
}

/// The value of attribute `attr` of the first element whose markup starts with `start`.
#[track_caller]
fn attr_after(html: &str, start: &str, attr: &str) -> String {
    let at = html.find(start).unwrap_or_else(|| panic!("no {start}"));
    let rest = &html[at..];
    let v = rest
        .find(&format!("{attr}=\""))
        .unwrap_or_else(|| panic!("no {attr} after {start}"))
        + attr.len()
        + 2;
    let end = rest[v..].find('"').expect("a closing quote");
    rest[v..v + end].to_string()
}

/// The exact nano-USD of a card's figure (`spent`, `held`, `amount`).
fn figure(card: &str, class: &str) -> i64 {
    attr_after(card, &format!("class=\"{class}\""), "data-nano-usd")
        .parse()
        .expect("an integer")
}

/// Every limit the API lists is on the page with the API's figures: spent, held, amount, the
/// period's start and when it resets.
#[track_caller]
fn assert_same_as_api(page: &Resp, api: &[Value]) {
    assert_eq!(
        page.text.matches("<article class=\"card limit\"").count(),
        api.len(),
        "one card per limit"
    );
    for l in api {
        let c = card(&page.text, l["limit_id"].as_str().unwrap());
        assert_eq!(figure(c, "spent"), l["spent_nano_usd"].as_i64().unwrap());
        assert_eq!(figure(c, "held"), l["held_nano_usd"].as_i64().unwrap());
        assert_eq!(figure(c, "amount"), l["amount_nano_usd"].as_i64().unwrap());
        assert_eq!(
            attr_after(c, "<dd class=\"resets\">", "datetime"),
            l["resets_at"].as_str().unwrap()
        );
        assert_eq!(
            attr_after(c, "<dd class=\"period\">", "datetime"),
            l["period_start"].as_str().unwrap()
        );
    }
}

/// The create form's fields: the account's monthly block limit of 10 USD in Berlin, alerts at
/// 50 and 80 percent, with `changes` over them.
fn limit_fields<'a>(changes: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut fields = vec![
        ("scope", "account"),
        ("api_key_id", ""),
        ("period", "month"),
        ("timezone", "Europe/Berlin"),
        ("amount_usd", "10"),
        ("action", "block"),
        ("alert_at_percent", "50, 80"),
    ];
    for (name, value) in changes {
        match fields.iter_mut().find(|(n, _)| n == name) {
            Some(f) => f.1 = value,
            None => fields.push((name, value)),
        }
    }
    fields
}

/// Posts the create form as the page gives it (with the session's token).
async fn create(v: &Visitor, fields: &[(&str, &str)]) -> Resp {
    let csrf = v.page("/dashboard/limits").await.csrf();
    let mut all = vec![("csrf", csrf.as_str())];
    all.extend_from_slice(fields);
    v.post_form("/dashboard/limits", &all).await
}

/// The limit id a successful form redirected to.
#[track_caller]
fn created_id(r: &Resp) -> String {
    r.expect(303);
    let at = r.location();
    assert!(at.starts_with("/dashboard/limits?done="), "{at}");
    at.split("limit=").nth(1).expect("a limit id").to_string()
}

/// Submits and starts a request with `key` (it runs, holding its estimate); returns its id.
async fn start(app: &DashApp, key: &str) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    app.op(
        Method::POST,
        "/v1/requests",
        json!({"request_id": id, "endpoint_id": "fal-ai/flux/dev", "caller_key": key}),
    )
    .await
    .expect(201);
    let op = app.operator_key.clone();
    app.call(Method::POST, &format!("/v1/requests/{id}/start"), &op, None)
        .await
        .expect(200);
    id
}

#[tokio::test]
async fn limits_made_in_the_forms_are_the_apis_and_show_its_figures_as_spend_moves() {
    for backend in tollgate_store::testing::backends() {
        let app = DashApp::spawn_on(&backend).await;
        let c = app.customer("acme", Some("25.00")).await;
        let key_id = c.api_key.split(':').next().unwrap().to_string();
        // Spent before the limit exists: a new limit starts with its period's charges.
        let earlier = app
            .usage(&c, "fal-ai/flux/dev", "4", T0 - 10 * MINUTE_MS)
            .await;
        let v = app.signed_in("acme").await;
        let empty = v.page("/dashboard/limits").await;
        assert!(empty.text.contains("No spending limits"));
        assert!(empty
            .text
            .contains("href=\"/dashboard/limits\" aria-current=\"page\""));

        let account_limit = created_id(&create(&v, &limit_fields(&[])).await);
        let page = v
            .page(&format!(
                "/dashboard/limits?done=created&limit={account_limit}"
            ))
            .await;
        assert!(page.text.contains("is created"));
        let api = api_limits(&app, &c.admin_key).await;
        assert_eq!(api.len(), 1);
        assert_eq!(api[0]["limit_id"], account_limit.as_str());
        assert_eq!(
            (&api[0]["period"], &api[0]["timezone"], &api[0]["action"]),
            (&json!("month"), &json!("Europe/Berlin"), &json!("block"))
        );
        assert_eq!(api[0]["alert_at_percent"], json!([50, 80]));
        assert_eq!(api[0]["amount_nano_usd"], 10 * USD);
        assert_eq!(api[0]["spent_nano_usd"], earlier);
        assert_same_as_api(&page, &api);
        // Resets at local midnight of the 1st in Berlin, shown there and in UTC.
        let c0 = card(&page.text, &account_limit);
        assert!(c0.contains("2026-12-01 00:00 Europe/Berlin"), "{c0}");
        assert!(c0.contains("2026-11-30 23:00 UTC"), "{c0}");
        assert!(c0.contains("The whole account"));

        // One key's limit: per day, alerts only, no thresholds.
        let key_limit = created_id(
            &create(
                &v,
                &limit_fields(&[
                    ("scope", "api_key"),
                    ("api_key_id", &key_id),
                    ("period", "day"),
                    ("timezone", "UTC"),
                    ("amount_usd", "5"),
                    ("action", "alert"),
                    ("alert_at_percent", ""),
                ]),
            )
            .await,
        );
        let api = api_limits(&app, &c.admin_key).await;
        assert_eq!(api[1]["limit_id"], key_limit.as_str());
        assert_eq!(
            (
                &api[1]["scope"],
                &api[1]["api_key_id"],
                &api[1]["alert_at_percent"]
            ),
            (&json!("api_key"), &json!(key_id), &json!([]))
        );
        assert_eq!(api[1]["spent_nano_usd"], 0, "a usage event without a key");
        let page = v.page("/dashboard/limits").await;
        assert_same_as_api(&page, &api);
        let c1 = card(&page.text, &key_limit);
        assert!(
            c1.contains("Key \u{201c}backend\u{201d}") && c1.contains(&key_id),
            "{c1}"
        );
        let bar = |page: &Resp, id: &str| attr_after(card(&page.text, id), "<meter", "value");
        let (bar0, bar1) = (bar(&page, &account_limit), bar(&page, &key_limit));
        assert_eq!(bar1, "0");

        // A request made with the key counts toward both; one running holds in both.
        app.request(
            &c.api_key,
            "fal-ai/flux/dev",
            200,
            json!({"images": [{"width": 1024, "height": 1024}]}),
        )
        .await;
        let running = start(&app, &c.api_key).await;
        let api = api_limits(&app, &c.admin_key).await;
        assert!(api[1]["spent_nano_usd"].as_i64().unwrap() > 0);
        assert!(api[0]["held_nano_usd"].as_i64().unwrap() > 0);
        assert_eq!(api[0]["held_nano_usd"], api[1]["held_nano_usd"]);
        let page = v.page("/dashboard/limits").await;
        assert_same_as_api(&page, &api);
        assert_ne!(bar(&page, &account_limit), bar0, "the bar moved");
        assert_ne!(bar(&page, &key_limit), bar1, "the bar moved");
        app.op(
            Method::POST,
            &format!("/v1/requests/{running}/complete"),
            json!({"status_code": 200, "output": {"images": [{"width": 512, "height": 512}]}}),
        )
        .await
        .expect(200);
        let api = api_limits(&app, &c.admin_key).await;
        assert_eq!(api[0]["held_nano_usd"], 0);
        assert_same_as_api(&v.page("/dashboard/limits").await, &api);

        // Changed: amount, action and thresholds; the id, scope, period and zone stay.
        let csrf = page.csrf();
        let r = v
            .post_form(
                &format!("/dashboard/limits/{key_limit}"),
                &[
                    ("csrf", &csrf),
                    ("amount_usd", "7.5"),
                    ("action", "block"),
                    ("alert_at_percent", "25 90"),
                ],
            )
            .await;
        r.expect(303);
        assert_eq!(
            r.location(),
            format!("/dashboard/limits?done=changed&limit={key_limit}")
        );
        let api = api_limits(&app, &c.admin_key).await;
        assert_eq!(
            (
                &api[1]["limit_id"],
                &api[1]["amount_nano_usd"],
                &api[1]["action"]
            ),
            (&json!(key_limit), &json!(7_500_000_000i64), &json!("block"))
        );
        assert_eq!(api[1]["alert_at_percent"], json!([25, 90]));
        assert_eq!(
            (&api[1]["period"], &api[1]["scope"]),
            (&json!("day"), &json!("api_key"))
        );
        let page = v.page(r.location()).await;
        assert!(page.text.contains("is changed"));
        assert_same_as_api(&page, &api);

        // Deleted.
        let r = v
            .post_form(
                &format!("/dashboard/limits/{account_limit}/delete"),
                &[("csrf", &csrf)],
            )
            .await;
        r.expect(303);
        let api = api_limits(&app, &c.admin_key).await;
        assert_eq!(api.len(), 1);
        assert_eq!(api[0]["limit_id"], key_limit.as_str());
        let page = v.page(r.location()).await;
        assert!(page.text.contains("is deleted"));
        assert_same_as_api(&page, &api);
        app.assert_reconciled().await;
    }
}

#[tokio::test]
async fn refused_input_shows_the_apis_reason_and_writes_nothing() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("25.00")).await;
    let bigco = app.customer("bigco", Some("5.00")).await;
    let bigco_key = bigco.api_key.split(':').next().unwrap().to_string();
    let v = app.signed_in("acme").await;

    // What the API answers the same body.
    let api_says = |body: Value| {
        let app = &app;
        let key = c.admin_key.clone();
        async move {
            let r = app
                .call(
                    Method::POST,
                    "/v1/account/spending-limits",
                    &key,
                    Some(body),
                )
                .await;
            r.expect(400);
            r.json()["error"]["message"]
                .as_str()
                .expect("a message")
                .to_string()
        }
    };
    let body = |changes: Value| {
        let mut b = json!({"scope": "account", "period": "month", "timezone": "Europe/Berlin",
            "amount_usd": "10", "action": "block", "alert_at_percent": [50, 80]});
        for (k, v) in changes.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let cases: Vec<(Vec<(&str, &str)>, String)> = vec![
        (
            vec![("timezone", "Mars/Olympus_Mons")],
            api_says(body(json!({"timezone": "Mars/Olympus_Mons"}))).await,
        ),
        (
            vec![("scope", "api_key"), ("api_key_id", &bigco_key)],
            api_says(body(json!({"scope": "api_key", "api_key_id": bigco_key}))).await,
        ),
        (
            vec![("scope", "api_key"), ("api_key_id", "")],
            api_says(body(json!({"scope": "api_key"}))).await,
        ),
        (
            vec![("alert_at_percent", "50, 2000")],
            api_says(body(json!({"alert_at_percent": [50, 2000]}))).await,
        ),
        (
            vec![("amount_usd", "0")],
            api_says(body(json!({"amount_usd": "0"}))).await,
        ),
    ];
    for (changes, message) in &cases {
        let r = create(&v, &limit_fields(changes)).await;
        r.expect(400);
        assert!(
            r.text.contains(&escaped(message)),
            "{changes:?}: the API's message {message:?} in {}",
            r.text
        );
        // The form is shown again as it was sent.
        for (name, value) in changes.iter().filter(|(n, _)| *n == "timezone") {
            assert!(r
                .text
                .contains(&format!("name=\"{name}\" value=\"{value}\"")));
        }
    }
    // A negative amount: refused by the reader of the API's `amount_usd`, with its reason.
    let reason = tollgate_api::wire::parse_usd("-1").unwrap_err();
    let api = api_says(body(json!({"amount_usd": "-1"}))).await;
    assert!(api.contains(&reason), "{api}");
    let r = create(&v, &limit_fields(&[("amount_usd", "-1")])).await;
    r.expect(400);
    assert!(
        r.text.contains(&escaped(&format!("Amount: {reason}."))),
        "{}",
        r.text
    );
    let r = create(&v, &limit_fields(&[("alert_at_percent", "50, most")])).await;
    r.expect(400);
    assert!(r.text.contains("`most` is not a whole percent"));
    assert!(
        api_limits(&app, &c.admin_key).await.is_empty(),
        "nothing written"
    );
    assert!(api_limits(&app, &bigco.admin_key).await.is_empty());

    // A refused change changes nothing, and the form shows what was sent.
    let id = created_id(&create(&v, &limit_fields(&[])).await);
    let before = api_limits(&app, &c.admin_key).await;
    let csrf = v.page("/dashboard/limits").await.csrf();
    for (amount, thresholds, says) in [
        ("ten", "50", "Amount: ".to_string()),
        (
            "10",
            "0",
            api_says(body(json!({"alert_at_percent": [0]}))).await,
        ),
    ] {
        let r = v
            .post_form(
                &format!("/dashboard/limits/{id}"),
                &[
                    ("csrf", &csrf),
                    ("amount_usd", amount),
                    ("action", "alert"),
                    ("alert_at_percent", thresholds),
                ],
            )
            .await;
        r.expect(400);
        assert!(r.text.contains(&escaped(&says)), "{says}: {}", r.text);
        let c0 = card(&r.text, &id);
        assert!(
            c0.contains("<details class=\"limit-change\" open"),
            "the form is open"
        );
        assert!(c0.contains(&format!("value=\"{amount}\"")));
    }
    assert_eq!(api_limits(&app, &c.admin_key).await, before);
    app.assert_reconciled().await;
}

#[tokio::test]
async fn another_accounts_limit_is_unknown_here() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("25.00")).await;
    let bigco = app.customer("bigco", Some("5.00")).await;
    let theirs = app
        .call(
            Method::POST,
            "/v1/account/spending-limits",
            &bigco.admin_key,
            Some(
                json!({"scope": "account", "period": "day", "amount_usd": "3", "action": "block"}),
            ),
        )
        .await
        .expect(201)
        .json()["limit_id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = api_limits(&app, &bigco.admin_key).await;
    let v = app.signed_in("acme").await;
    let page = v.page("/dashboard/limits").await;
    assert!(!page.text.contains(&theirs), "not listed");
    let csrf = page.csrf();
    for id in [
        theirs.as_str(),
        "lim_000000000000000000000000",
        "not%20a%20limit",
    ] {
        let change = v
            .post_form(
                &format!("/dashboard/limits/{id}"),
                &[
                    ("csrf", &csrf),
                    ("amount_usd", "100"),
                    ("action", "alert"),
                    ("alert_at_percent", ""),
                ],
            )
            .await;
        change.expect(404);
        assert!(change.text.contains("not found"), "{}", change.text);
        let delete = v
            .post_form(
                &format!("/dashboard/limits/{id}/delete"),
                &[("csrf", &csrf)],
            )
            .await;
        delete.expect(404);
        assert!(delete.text.contains("not found"));
    }
    assert_eq!(api_limits(&app, &bigco.admin_key).await, before);
    assert!(api_limits(&app, &c.admin_key).await.is_empty());
    app.assert_reconciled().await;
}

/// Every form of the limits page, with fields that would change something (`limit_id`: an
/// existing limit). A new form of the page belongs here, so the tests of who may post and of
/// the CSRF token cover it.
fn every_limit_form(limit_id: &str) -> Vec<(String, Vec<(&'static str, &'static str)>)> {
    vec![
        ("/dashboard/limits".to_string(), limit_fields(&[])),
        (
            format!("/dashboard/limits/{limit_id}"),
            vec![
                ("amount_usd", "99"),
                ("action", "alert"),
                ("alert_at_percent", "10"),
            ],
        ),
        (format!("/dashboard/limits/{limit_id}/delete"), vec![]),
    ]
}

#[tokio::test]
async fn limit_forms_need_a_customer_session_and_its_token() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("25.00")).await;
    let v = app.signed_in("acme").await;
    let id = created_id(&create(&v, &limit_fields(&[])).await);
    let before = api_limits(&app, &c.admin_key).await;
    let csrf = v.page("/dashboard/limits").await.csrf();

    for token in [None, Some("forged")] {
        for (path, fields) in every_limit_form(&id) {
            let mut fields: Vec<(&str, &str)> = fields;
            if let Some(t) = token {
                fields.push(("csrf", t));
            }
            let r = v.post_form(&path, &fields).await;
            r.expect(403);
            assert!(
                r.text.contains("security token does not match"),
                "POST {path}"
            );
        }
    }
    // Without a customer session (none, or the console's), with the right token even.
    let operator = app.operator().await;
    for who in [&app.visitor(), &operator] {
        let page = who.get("/dashboard/limits").await;
        page.expect(303);
        assert_eq!(page.location(), "/dashboard/login");
        for (path, fields) in every_limit_form(&id) {
            let mut fields: Vec<(&str, &str)> = fields;
            fields.push(("csrf", &csrf));
            let r = who.post_form(&path, &fields).await;
            r.expect(303);
            assert_eq!(r.location(), "/dashboard/login", "POST {path}");
        }
    }
    assert_eq!(api_limits(&app, &c.admin_key).await, before);
    // With the token, the same forms work.
    for (path, fields) in every_limit_form(&id) {
        let mut fields: Vec<(&str, &str)> = fields;
        fields.push(("csrf", &csrf));
        v.post_form(&path, &fields).await.expect(303);
    }
    let after = api_limits(&app, &c.admin_key).await;
    assert_eq!(after.len(), 1, "one created, one deleted");
    assert_ne!(after[0]["limit_id"], id.as_str());
    app.assert_reconciled().await;
}

#[tokio::test]
async fn in_a_browser_without_javascript_a_limit_is_created_changed_and_deleted() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("25.00")).await;
    app.usage(&c, "fal-ai/flux/dev", "4", T0 - MINUTE_MS).await;
    let b = Browser::start_without_javascript(&app.address).await;
    // Without JavaScript the sign-in link's page waits for its button.
    let link = app.sign_in_link("acme").await;
    b.client.goto(&app.url(&link)).await.expect("open the link");
    b.follow("#continue-sign-in button").await;
    assert_eq!(b.path().await, "/dashboard");
    b.follow("nav a[href='/dashboard/limits']").await;
    assert_eq!(b.path().await, "/dashboard/limits");
    assert_eq!(
        b.js("return typeof window.htmx").await,
        "undefined",
        "scripts are off"
    );

    b.fill("#amount_usd", "12.5").await;
    b.fill("#timezone", "America/New_York").await;
    b.click("#period option[value='week']").await;
    b.click("#create-limit input[name='action'][value='alert']")
        .await;
    b.fill("#alert_at_percent", "10, 50").await;
    b.follow("#create-limit button[type='submit']").await;
    assert_eq!(b.path().await, "/dashboard/limits");
    assert!(b.text("main").await.contains("is created"));
    let api = api_limits(&app, &c.admin_key).await;
    assert_eq!(api.len(), 1);
    let id = api[0]["limit_id"].as_str().unwrap().to_string();
    assert_eq!(
        (&api[0]["period"], &api[0]["timezone"], &api[0]["action"]),
        (&json!("week"), &json!("America/New_York"), &json!("alert"))
    );
    assert_eq!(api[0]["amount_nano_usd"], 12_500_000_000i64);
    assert_eq!(api[0]["alert_at_percent"], json!([10, 50]));
    b.screenshots("limits").await;

    // A refused form shows the reason and keeps what was typed.
    b.fill("#amount_usd", "3").await;
    b.fill("#timezone", "Atlantis/Capital").await;
    b.follow("#create-limit button[type='submit']").await;
    assert!(b.text("#create-limit").await.contains("Atlantis/Capital"));
    assert_eq!(api_limits(&app, &c.admin_key).await.len(), 1);

    // Changed in its fold (a <details>, open without script).
    b.click(&format!("#{id} details summary")).await;
    b.fill(&format!("#amount-{id}"), "20").await;
    b.follow(&format!(
        "form[action='/dashboard/limits/{id}'] button[type='submit']"
    ))
    .await;
    assert!(b.text("main").await.contains("is changed"));
    assert_eq!(
        api_limits(&app, &c.admin_key).await[0]["amount_nano_usd"],
        20 * USD
    );

    // Deleted: without script there is no confirmation, the form posts.
    b.follow(&format!(
        "form[action='/dashboard/limits/{id}/delete'] button"
    ))
    .await;
    assert!(b.text("main").await.contains("is deleted"));
    assert!(api_limits(&app, &c.admin_key).await.is_empty());
    b.close().await;
    app.assert_reconciled().await;
}
