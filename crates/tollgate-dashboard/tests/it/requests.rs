//! The requests page (`/dashboard/requests`): billed requests newest first, paged with the
//! billing events' cursor on every store, each with its status, cost, durations and key; the
//! search by request id, which answers another account's id exactly like an unknown one.

use crate::common::browser::Browser;
use crate::common::{rfc3339, Customer, DashApp, Visitor, T0};
use fantoccini::Locator;
use reqwest::Method;
use serde_json::{json, Value};
use tollgate_dashboard::customer::requests::PAGE_SIZE;
use tollgate_store::testing::backends;

/// The request ids of a requests page's table, in order.
fn ids(page: &str) -> Vec<String> {
    page.match_indices("<tr data-request-id=\"")
        .map(|(i, m)| {
            let rest = &page[i + m.len()..];
            rest[..rest.find('"').expect("a closed attribute")].to_string()
        })
        .collect()
}

/// The `href` of the "Older" link, if any.
fn older(page: &str) -> Option<String> {
    let at = page.find("id=\"older\"")?;
    let rest = &page[at..];
    let h = rest.find("href=\"")? + "href=\"".len();
    let end = rest[h..].find('"')?;
    Some(rest[h..h + end].replace("&amp;", "&"))
}

/// The `#results` region of a page.
fn results(page: &str) -> &str {
    let start = page.find("<div id=\"results\">").expect("a results region");
    let end = page[start..].find("</main>").expect("the end of main");
    &page[start..start + end]
}

/// Reports `events` (endpoint, units, time) in one call; returns each one's request id.
async fn report(app: &DashApp, c: &Customer, events: &[(&str, &str, i64)]) -> Vec<String> {
    let ids: Vec<String> = events
        .iter()
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let body: Vec<Value> = events
        .iter()
        .zip(&ids)
        .map(|((endpoint, units, at), id)| {
            json!({
                "event_id": id,
                "username": c.username,
                "endpoint_id": endpoint,
                "timestamp": rfc3339(*at),
                "status_code": 200,
                "billable_units": units,
            })
        })
        .collect();
    let r = app
        .op(Method::POST, "/v1/usage-events", json!({ "events": body }))
        .await;
    let answer = r.expect(200).json();
    for res in answer["results"].as_array().expect("results") {
        assert_eq!(res["billed"], true, "{res}");
    }
    ids
}

/// Every request id of the list, following "Older" to the end.
async fn walk(v: &Visitor) -> (Vec<String>, usize) {
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut next = Some("/dashboard/requests".to_string());
    while let Some(path) = next {
        let page = v.page(&path).await;
        pages += 1;
        let on_page = ids(&page.text);
        assert!(on_page.len() <= PAGE_SIZE);
        next = older(&page.text);
        if next.is_some() {
            assert_eq!(on_page.len(), PAGE_SIZE, "only the last page is short");
        }
        if pages > 1 {
            assert!(page.text.contains("← Newest"));
        }
        seen.extend(on_page);
    }
    (seen, pages)
}

#[tokio::test]
async fn the_list_is_newest_first_and_paging_reaches_every_billed_request_once() {
    for backend in backends() {
        let app = DashApp::spawn_on(&backend).await;
        let c = app.customer("acme", Some("100.00")).await;
        // 2 pages and a bit: usage reported over the last days, several in the same
        // millisecond (ordered by request id), and requests made now.
        let events: Vec<(&str, &str, i64)> = (0..(2 * PAGE_SIZE as i64 + 4))
            .map(|i| {
                let endpoint = if i % 2 == 0 {
                    "fal-ai/nano-banana"
                } else {
                    "fal-ai/flux/schnell"
                };
                (endpoint, "1", T0 - 3_600_000 - (i / 3) * 7_000_000)
            })
            .collect();
        let mut expected: Vec<(i64, String)> = report(&app, &c, &events)
            .await
            .into_iter()
            .zip(&events)
            .map(|(id, (_, _, at))| (*at, id))
            .collect();
        for _ in 0..3 {
            let (id, _) = app
                .request(
                    &c.api_key,
                    "fal-ai/nano-banana",
                    200,
                    json!({"images": [{"width": 1024, "height": 1024}]}),
                )
                .await;
            expected.push((app.now_ms(), id));
        }
        expected.sort();
        expected.reverse();
        let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();

        let v = app.signed_in("acme").await;
        let (seen, pages) = walk(&v).await;
        assert_eq!(seen.len(), expected.len(), "{}", backend.name());
        assert_eq!(
            seen,
            expected,
            "{}: newest first, each once",
            backend.name()
        );
        assert_eq!(pages, 3);

        // The same line items as the API's billing events, in reverse.
        let api = app
            .call(
                Method::GET,
                "/v1/models/billing-events?start=2026-11-01&end=2026-11-25&limit=1000",
                &c.admin_key,
                None,
            )
            .await;
        let mut from_api: Vec<String> = api.expect(200).json()["billing_events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["request_id"].as_str().expect("an id").to_string())
            .collect();
        from_api.reverse();
        assert_eq!(seen, from_api);

        // A cursor nobody wrote is refused, not a 500.
        v.get("/dashboard/requests?cursor=nonsense")
            .await
            .expect(400);
        app.assert_reconciled().await;
    }
}

#[tokio::test]
async fn a_request_shows_its_status_cost_durations_and_key() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("25.00")).await;
    // Waits 1.5 s, runs 4.2 s and fails with a 422, which this endpoint bills by the second.
    let (id, done) = app
        .timed_request(
            &c.api_key,
            "fal-ai/stable-audio",
            (1_500, 4_200),
            422,
            json!({}),
        )
        .await;
    assert_eq!(done["billed"], true, "{done}");
    app.set_now(app.now_ms() + 1_000);
    let (ok, _) = app
        .request(
            &c.api_key,
            "fal-ai/nano-banana",
            200,
            json!({"images": [{"width": 1024, "height": 1024}, {"width": 1024, "height": 1024}]}),
        )
        .await;
    let v = app.signed_in("acme").await;
    let page = v.page("/dashboard/requests").await;
    assert_eq!(ids(&page.text), [ok.clone(), id.clone()]);

    let row_start = page
        .text
        .find(&format!("<tr data-request-id=\"{id}\""))
        .expect("the row");
    let row = &page.text[row_start..row_start + page.text[row_start..].find("</tr>").expect("end")];
    let cost = done["cost_estimate_nano_usd"].as_i64().expect("a cost");
    assert_eq!(cost, 2_205_000, "4.2 s at 0.000525 USD");
    for shown in [
        format!("data-nano-usd=\"{cost}\""),
        "data-status=\"422\"".into(),
        "data-queue-ms=\"1500\"".into(),
        "data-inference-ms=\"4200\"".into(),
        "<span class=\"badge warn\">422</span>".into(),
        ">1.5 s<".into(),
        ">4.2 s<".into(),
        ">$0.002205<".into(),
        ">4.2 <span class=\"unit\">gpu second</span><".into(),
        "<code>fal-ai/stable-audio</code>".into(),
        ">backend<".into(),
        ">2026-11-24 10:00:05<".into(),
    ] {
        assert!(row.contains(&shown), "{shown} in {row}");
    }
    assert!(page.text.contains("<span class=\"badge ok\">200</span>"));
    app.assert_reconciled().await;
}

#[tokio::test]
async fn search_finds_a_request_by_id_and_answers_another_accounts_like_an_unknown_one() {
    let app = DashApp::spawn().await;
    let acme = app.customer("acme", Some("25.00")).await;
    let globex = app.customer("globex", Some("25.00")).await;
    let (mine, _) = app
        .request(
            &acme.api_key,
            "fal-ai/nano-banana",
            200,
            json!({"images": [{"width": 1024, "height": 1024}]}),
        )
        .await;
    let (theirs, _) = app
        .request(
            &globex.api_key,
            "fal-ai/flux-pro/kontext/max",
            200,
            json!({"images": [{"width": 1024, "height": 1024}]}),
        )
        .await;
    let v = app.signed_in("acme").await;

    let found = v.page(&format!("/dashboard/requests?q={mine}")).await;
    assert_eq!(ids(&found.text), std::slice::from_ref(&mine));
    assert!(found.text.contains("The billed request"));
    assert!(older(&found.text).is_none());

    let unknown = uuid::Uuid::new_v4().to_string();
    let not_mine = v.page(&format!("/dashboard/requests?q={theirs}")).await;
    let nobodys = v.page(&format!("/dashboard/requests?q={unknown}")).await;
    for (page, id) in [(&not_mine, &theirs), (&nobodys, &unknown)] {
        assert!(ids(&page.text).is_empty());
        assert!(page
            .text
            .contains(&format!("No billed request with the id <code>{id}</code>.")));
        assert!(!page.text.contains("kontext/max"), "none of its data");
    }
    // The same answer, byte for byte, but for the id asked.
    assert_eq!(
        not_mine.text.replace(&theirs, "ID"),
        nobodys.text.replace(&unknown, "ID")
    );
    assert_eq!(
        results(&not_mine.text).replace(&theirs, "ID"),
        results(&nobodys.text).replace(&unknown, "ID")
    );
    // Anything typed is escaped, and is just not found.
    let odd = v.page("/dashboard/requests?q=%3Cb%3Ex%3C%2Fb%3E").await;
    assert!(odd.text.contains("&lt;b&gt;x&lt;/b&gt;") && !odd.text.contains("<b>x</b>"));
    app.assert_reconciled().await;
}

#[tokio::test]
async fn a_new_account_sees_what_the_list_will_show() {
    let app = DashApp::spawn().await;
    app.customer("newco", None).await;
    let v = app.signed_in("newco").await;
    let page = v.page("/dashboard/requests").await;
    assert!(page.text.contains("No billed requests yet"));
    assert!(page.text.contains("href=\"/dashboard/keys\""));
    assert!(ids(&page.text).is_empty() && older(&page.text).is_none());
    app.assert_reconciled().await;
}

#[tokio::test]
async fn in_a_browser_the_search_finds_a_request_in_place() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("25.00")).await;
    app.customer("newco", None).await;
    let mut made = Vec::new();
    for (endpoint, queue) in [
        ("fal-ai/nano-banana", 800),
        ("fal-ai/flux/dev", 2_300),
        ("fal-ai/nano-banana", 150),
    ] {
        let output = json!({"images": [{"width": 1024, "height": 1024}]});
        let (id, _) = app
            .timed_request(&c.api_key, endpoint, (queue, 3_100), 200, output)
            .await;
        made.push(id);
    }
    let b = Browser::start(&app.address).await;
    b.goto(&app.sign_in_link("acme").await).await;
    b.goto("/dashboard/requests").await;
    assert_eq!(b.count("#requests-table tbody tr").await, 3);
    b.screenshots("requests").await;

    // With htmx the results are swapped in place (the page is not reloaded) and the URL kept.
    b.js("window.notReloaded = true; return true;").await;
    b.fill("#q", &made[1]).await;
    b.click("#request-search button[type='submit']").await;
    b.client
        .wait()
        .for_element(Locator::Css("#search-status"))
        .await
        .expect("the search's answer");
    assert_eq!(b.count("#requests-table tbody tr").await, 1);
    assert_eq!(
        b.attr("#requests-table tbody tr", "data-request-id").await,
        Some(made[1].clone())
    );
    assert_eq!(
        b.js("return window.notReloaded === true;").await,
        json!(true)
    );
    let url = b.client.current_url().await.expect("a url");
    assert_eq!(url.query(), Some(format!("q={}", made[1]).as_str()));

    b.fill("#q", "00000000-0000-4000-8000-000000000000").await;
    b.click("#request-search button[type='submit']").await;
    b.client
        .wait()
        .for_element(Locator::Css("#search-status.notice"))
        .await
        .expect("the not-found answer");
    assert!(b
        .text("#search-status")
        .await
        .contains("No billed request with the id"));
    assert_eq!(b.count("#requests-table").await, 0);

    b.goto(&app.sign_in_link("newco").await).await;
    b.goto("/dashboard/requests").await;
    assert!(b
        .text("main .empty")
        .await
        .contains("No billed requests yet"));
    b.screenshots("requests-empty").await;

    b.close().await;
    app.assert_reconciled().await;
}
