//! The console's webhooks (API.md section 6): a URL subscribed in the form is the API's
//! webhook, its secret shown once (and it signs the deliveries); deliveries to a real receiver
//! on loopback are listed with their attempts and the body as sent, and a redelivery sends the
//! same event again; deletion stops the webhook; a URL the server does not allow is refused
//! with the API's reason and nothing written.

use crate::common::{DashApp, Resp, Visitor, T0};
use crate::limits::escaped;
use reqwest::Method;
use serde_json::{json, Value};
use tollgate_api::testing::receiver::{Answer, Receiver};
use tollgate_api::webhooks::WebhookSettings;

/// Subscribes `url` through the console's form, with these event checkboxes.
async fn subscribe(op: &Visitor, url: &str, events: &[&str], description: &str) -> Resp {
    let csrf = op.page("/console/webhooks").await.csrf();
    let names: Vec<String> = events.iter().map(|e| format!("events[{e}]")).collect();
    let mut fields = vec![
        ("csrf", csrf.as_str()),
        ("url", url),
        ("description", description),
    ];
    for n in &names {
        fields.push((n.as_str(), "on"));
    }
    op.post_form("/console/webhooks", &fields).await
}

async fn api_webhooks(app: &DashApp) -> Vec<Value> {
    app.op_get("/v1/admin/webhooks").await.expect(200).json()["webhooks"]
        .as_array()
        .expect("webhooks")
        .clone()
}

async fn api_deliveries(app: &DashApp, webhook_id: &str) -> Vec<Value> {
    app.op_get(&format!("/v1/admin/webhooks/{webhook_id}/deliveries"))
        .await
        .expect(200)
        .json()["deliveries"]
        .as_array()
        .expect("deliveries")
        .clone()
}

/// The text of the element with id `id` (its first text, up to the next tag).
fn text_of<'a>(html: &'a str, id: &str) -> &'a str {
    let at = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}"));
    let start = html[at..].find('>').unwrap() + at + 1;
    let end = html[start..].find('<').unwrap() + start;
    &html[start..end]
}

/// The row of a table whose `data-<what>-id` is `id`.
fn row<'a>(html: &'a str, what: &str, id: &str) -> &'a str {
    let at = html
        .find(&format!("data-{what}-id=\"{id}\""))
        .unwrap_or_else(|| panic!("no row {id}"));
    &html[at..html[at..].find("</tr>").unwrap() + at]
}

#[tokio::test]
async fn a_webhook_subscribed_in_the_console_shows_its_secret_once_and_it_signs() {
    let app = DashApp::spawn().await;
    let receiver = Receiver::start().await;
    let op = app.operator().await;
    let empty = op.page("/console/webhooks").await;
    assert!(empty.text.contains("No webhooks"));
    assert!(empty
        .text
        .contains("href=\"/console/webhooks\" aria-current=\"page\""));

    let r = subscribe(
        &op,
        &receiver.url("/hook"),
        &["purchase.succeeded", "balance.low"],
        "billing <notices>",
    )
    .await;
    r.expect(201);
    let secret = text_of(&r.text, "webhook-secret").to_string();
    assert!(
        secret.starts_with("whsec_") && secret.len() == 6 + 64,
        "{secret}"
    );
    let api = api_webhooks(&app).await;
    assert_eq!(api.len(), 1);
    let id = api[0]["webhook_id"].as_str().unwrap().to_string();
    assert_eq!(api[0]["url"], receiver.url("/hook"));
    // In the documentation's order, whatever the form's.
    assert_eq!(
        api[0]["events"],
        json!(["balance.low", "purchase.succeeded"])
    );
    assert_eq!(api[0]["description"], "billing <notices>");
    assert!(r.text.contains("billing &lt;notices&gt;"), "escaped");
    assert!(r.text.contains(&format!("data-webhook-id=\"{id}\"")));

    // Never again: not in the list, not on the webhook's page.
    for path in [
        "/console/webhooks".to_string(),
        format!("/console/webhooks/{id}"),
    ] {
        let page = op.page(&path).await;
        assert!(!page.text.contains(&secret), "{path}");
        assert!(!page.text.contains("whsec_"), "{path}");
        assert!(page.text.contains(&receiver.url("/hook")));
    }

    // It is the secret the deliveries are signed with.
    app.customer("acme", Some("25.00")).await;
    assert_eq!(app.deliver_due().await, 1, "purchase.succeeded only");
    let got = receiver.got();
    assert_eq!(got.len(), 1);
    let header = got[0].header("tollgate-signature");
    let t: i64 = header
        .split(',')
        .find_map(|p| p.strip_prefix("t="))
        .expect("t")
        .parse()
        .unwrap();
    assert_eq!(
        header,
        tollgate_api::webhooks::deliver::signature(&secret, t, &got[0].body)
    );
    assert_eq!(got[0].json()["type"], "purchase.succeeded");
    app.assert_reconciled().await;
}

#[tokio::test]
async fn deliveries_to_a_real_receiver_are_listed_with_their_attempts_and_redelivered() {
    let app = DashApp::spawn().await;
    let receiver = Receiver::start().await;
    receiver.otherwise(Answer::Status(500));
    let op = app.operator().await;
    subscribe(&op, &receiver.url("/events"), &["*"], "")
        .await
        .expect(201);
    let id = api_webhooks(&app).await[0]["webhook_id"]
        .as_str()
        .unwrap()
        .to_string();
    // A purchase: purchase.succeeded, the top-up's invoice.issued, account.unlocked.
    app.customer("acme", Some("25.00")).await;

    // The receiver refuses them: pending, to be retried.
    let sent = app.deliver_due().await;
    let api = api_deliveries(&app, &id).await;
    assert_eq!(api.len(), 3, "{api:?}");
    assert!(sent >= api.len());
    let page = op.page(&format!("/console/webhooks/{id}")).await;
    // Newest event first, as the API lists them, with the API's figures.
    let on_page: Vec<&str> = page
        .text
        .match_indices("data-delivery-id=\"")
        .map(|(at, m)| {
            let rest = &page.text[at + m.len()..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect();
    let listed: Vec<&str> = api
        .iter()
        .map(|d| d["delivery_id"].as_str().unwrap())
        .collect();
    assert_eq!(on_page, listed);
    for d in &api {
        assert_eq!(d["status"], "pending");
        let shown = row(&page.text, "delivery", d["delivery_id"].as_str().unwrap());
        assert!(
            shown.contains(">pending<") && shown.contains("HTTP 500"),
            "{shown}"
        );
        assert!(shown.contains(&format!(">{}</a>", d["event_id"].as_str().unwrap())));
        assert!(shown.contains(&format!("<code>{}</code>", d["type"].as_str().unwrap())));
        assert!(shown.contains(">acme</a>"));
        assert!(shown.contains(&format!("<td class=\"num\">{}</td>", d["attempts"])));
        assert!(shown.contains(&format!(
            "datetime=\"{}\"",
            d["next_attempt_at"].as_str().unwrap()
        )));
    }

    // It answers again and the retries come due: delivered.
    receiver.otherwise(Answer::Status(200));
    app.set_now(T0 + 3_600_000);
    assert_eq!(app.deliver_due().await, api.len());
    let dlv = api[0]["delivery_id"].as_str().unwrap().to_string();
    let detail = app
        .op_get(&format!("/v1/admin/webhooks/{id}/deliveries/{dlv}"))
        .await
        .expect(200)
        .json();
    assert_eq!(detail["status"], "delivered");
    let attempts = detail["attempt_log"].as_array().unwrap().len();
    assert!(attempts >= 2);
    let path = format!("/console/webhooks/{id}/deliveries/{dlv}");
    let page = op.page(&path).await;
    assert_eq!(
        text_of(&page.text, "delivery-attempts"),
        attempts.to_string()
    );
    assert!(page.text.contains(">delivered<"));
    let table = &page.text[page.text.find("id=\"attempts-table\"").unwrap()..];
    let table = &table[..table.find("</table>").unwrap()];
    assert_eq!(
        table.matches("<tr>").count(),
        attempts + 1,
        "a row per attempt"
    );
    assert_eq!(table.matches("HTTP 500").count(), attempts - 1);
    assert_eq!(table.matches("HTTP 200").count(), 1);
    assert!(page.text.contains(&format!(
        "datetime=\"{}\"",
        detail["delivered_at"].as_str().unwrap()
    )));
    // The body as sent: the bytes the receiver got.
    let got = receiver.got();
    let body = got
        .iter()
        .rev()
        .find(|g| g.json()["id"] == detail["event_id"])
        .expect("the event arrived")
        .body
        .clone();
    assert_eq!(
        text_of(&page.text, "delivery-body"),
        escaped(std::str::from_utf8(&body).unwrap())
    );
    assert_eq!(
        detail["event"],
        serde_json::from_slice::<Value>(&body).unwrap()
    );

    // Redelivered: queued again, sent again with the same event id and body.
    let before = receiver.got().len();
    let r = op
        .post_form(&format!("{path}/redeliver"), &[("csrf", &page.csrf())])
        .await;
    r.expect(303);
    assert_eq!(r.location(), format!("{path}?done=redelivered"));
    let page = op.page(r.location()).await;
    assert!(page.text.contains("Queued again"));
    assert!(page.text.contains(">pending<"));
    assert_eq!(app.deliver_due().await, 1);
    let got = receiver.got();
    assert_eq!(got.len(), before + 1);
    assert_eq!(got[before].json()["id"], detail["event_id"]);
    assert_eq!(got[before].body, body, "the same body");
    let page = op.page(&path).await;
    assert_eq!(
        text_of(&page.text, "delivery-attempts"),
        (attempts + 1).to_string()
    );

    // Unknown deliveries and webhooks are not found.
    for path in [
        format!("/console/webhooks/{id}/deliveries/dlv_999999"),
        format!("/console/webhooks/{id}/deliveries/nope"),
        "/console/webhooks/wh_nope".to_string(),
        "/console/webhooks/wh_nope/deliveries/dlv_1".to_string(),
    ] {
        op.get(&path).await.expect(404);
    }
    let r = op
        .post_form(
            &format!("/console/webhooks/{id}/deliveries/dlv_999999/redeliver"),
            &[("csrf", &page.csrf())],
        )
        .await;
    r.expect(404);
    app.assert_reconciled().await;
}

#[tokio::test]
async fn a_deleted_webhook_is_gone_from_the_list_and_the_api() {
    let app = DashApp::spawn().await;
    let op = app.operator().await;
    subscribe(&op, "https://hooks.example.com/a", &["*"], "")
        .await
        .expect(201);
    let id = api_webhooks(&app).await[0]["webhook_id"]
        .as_str()
        .unwrap()
        .to_string();
    let page = op.page("/console/webhooks").await;
    assert!(page.text.contains("data-confirm=\"Delete the webhook"));
    let r = op
        .post_form(
            &format!("/console/webhooks/{id}/delete"),
            &[("csrf", &page.csrf())],
        )
        .await;
    r.expect(303);
    let page = op.page(r.location()).await;
    assert!(page.text.contains("is deleted"));
    assert!(!page.text.contains(&format!("data-webhook-id=\"{id}\"")));
    app.op_get(&format!("/v1/admin/webhooks/{id}"))
        .await
        .expect(404);
    // Twice: not found.
    op.post_form(
        &format!("/console/webhooks/{id}/delete"),
        &[("csrf", &page.csrf())],
    )
    .await
    .expect(404);
    app.assert_reconciled().await;
}

#[tokio::test]
async fn a_url_the_server_does_not_allow_is_refused_with_the_apis_reason() {
    let app = DashApp::spawn_with_webhooks(WebhookSettings {
        allowed_hosts: Some(vec!["hooks.example.com".into()]),
        ..WebhookSettings::default()
    })
    .await;
    let op = app.operator().await;
    let api_says = |body: Value| {
        let app = &app;
        async move {
            let r = app.op(Method::POST, "/v1/admin/webhooks", body).await;
            r.expect(400);
            r.json()["error"]["message"].as_str().unwrap().to_string()
        }
    };
    for (url, events, body) in [
        (
            "http://127.0.0.1:9/x",
            vec!["*"],
            json!({"url": "http://127.0.0.1:9/x", "events": ["*"]}),
        ),
        (
            "ftp://hooks.example.com/x",
            vec!["*"],
            json!({"url": "ftp://hooks.example.com/x", "events": ["*"]}),
        ),
        (
            "https://hooks.example.com/x",
            vec![],
            json!({"url": "https://hooks.example.com/x", "events": []}),
        ),
        (
            "https://hooks.example.com/x",
            vec!["*", "balance.low"],
            json!({"url": "https://hooks.example.com/x", "events": ["*", "balance.low"]}),
        ),
        (
            "https://hooks.example.com/x",
            vec!["balance.low", "balance.high"],
            json!({"url": "https://hooks.example.com/x", "events": ["balance.low", "balance.high"]}),
        ),
    ] {
        let message = api_says(body).await;
        let r = subscribe(&op, url, &events, "").await;
        r.expect(400);
        assert!(
            r.text.contains(&escaped(&message)),
            "{url} {events:?}: {message} in {}",
            r.text
        );
        // The form again as it was sent.
        assert!(r.text.contains(&format!("value=\"{}\"", escaped(url))));
        for e in events.iter().filter(|e| **e != "balance.high") {
            assert!(
                r.text
                    .contains(&format!("name=\"events[{e}]\" value=\"on\" checked")),
                "{e}"
            );
        }
    }
    assert!(api_webhooks(&app).await.is_empty(), "nothing written");
    // An allowed host is taken.
    subscribe(&op, "https://hooks.example.com/x", &["balance.low"], "")
        .await
        .expect(201);
    assert_eq!(api_webhooks(&app).await.len(), 1);
    app.assert_reconciled().await;
}
