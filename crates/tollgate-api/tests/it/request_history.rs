//! fal's request history (`GET /v1/models/requests/by-endpoint`) over real HTTP: answers match
//! fal's schema, filters, sorting and paging select exactly the right requests, another
//! account's requests are never visible, and what cannot be answered is refused. On every
//! store at hand: SQLite, and PostgreSQL when `TOLLGATE_TEST_POSTGRES_URL` is set.

use crate::fal::assert_fal_schema;
use crate::harness::{dec, image, new_id, rfc3339, Body, Resp, TestApp};
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::json;
use tollgate_store::testing::backends;

const PATH: &str = "/models/requests/by-endpoint";
const FLUX_DEV: &str = "fal-ai/flux/dev";
const WHISPER: &str = "fal-ai/whisper";
/// 2025-11-01T00:00:00Z.
const T0: i64 = 1_761_955_200_000;

async fn history(app: &TestApp, key: &str, query: &str) -> Resp {
    app.raw(
        Method::GET,
        &format!("/v1{PATH}?{query}"),
        Some(key),
        Body::None,
    )
    .await
}

/// A 200 answer, checked against fal's schema; its request ids in order.
#[track_caller]
fn ids(r: &Resp) -> Vec<String> {
    let body = r.expect(200);
    assert_fal_schema("get", PATH, 200, body);
    assert_eq!(body["has_more"], !body["next_cursor"].is_null(), "{body}");
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["request_id"].as_str().expect("request_id").to_string())
        .collect()
}

/// Runs a request through its lifecycle: submitted at `sent`, started at `started`, completed
/// with `status` at `ended` (ms after T0).
async fn run(app: &TestApp, key: &str, sent: i64, started: i64, ended: i64, status: u16) -> String {
    app.set_now(T0 + sent);
    let id = app.submit_ok(key, FLUX_DEV).await;
    app.set_now(T0 + started);
    app.start(&id, None).await.expect(200);
    app.set_now(T0 + ended);
    let body = if status < 400 {
        json!({ "status_code": status, "output": image(1920, 1080) })
    } else {
        json!({ "status_code": status })
    };
    app.complete(&id, body).await.expect(200);
    id
}

fn s(v: &[&String]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[tokio::test]
async fn request_history_lists_filters_sorts_and_pages_one_accounts_requests() {
    for backend in backends() {
        let app = TestApp::spawn_at_on(&backend, T0).await;
        let alice = app.customer("alice", Some(("10", "paid"))).await;
        let bob = app.customer("bob", Some(("10", "paid"))).await;
        let alice_admin = app.create_key("alice", "ADMIN").await;

        let a = run(&app, &alice.key, 0, 1_000, 5_000, 200).await;
        let b = run(&app, &alice.key, 10_000, 10_500, 12_000, 422).await;
        let c = run(&app, &alice.key, 20_000, 21_000, 30_000, 503).await;
        let bobs = run(&app, &bob.key, 0, 500, 6_000, 200).await;
        // Usage reported after the fact: sent and ended at once.
        let e = new_id();
        app.set_now(T0 + 40_000);
        let r = app
            .usage_events(json!([{
                "event_id": e, "endpoint_id": WHISPER, "username": "alice",
                "timestamp": rfc3339(T0 + 40_000), "status_code": 200, "billable_units": "30",
            }]))
            .await;
        assert!(
            r.expect(200)["results"][0].get("error").is_none(),
            "{}",
            r.text
        );
        // In flight: not finished, so not in the history.
        app.set_now(T0 + 50_000);
        let running = app.submit_ok(&alice.key, FLUX_DEV).await;
        app.start(&running, None).await.expect(200);
        app.set_now(T0 + 60_000);

        // Latest end first, with fal's fields.
        let r = history(&app, &alice.key, &format!("endpoint_id={FLUX_DEV}")).await;
        assert_eq!(ids(&r), s(&[&c, &b, &a]));
        let items = r.body["items"].as_array().unwrap();
        assert_eq!(items[2]["endpoint_id"], FLUX_DEV);
        assert_eq!(items[2]["sent_at"], rfc3339(T0).as_str());
        assert_eq!(items[2]["started_at"], rfc3339(T0 + 1_000).as_str());
        assert_eq!(items[2]["ended_at"], rfc3339(T0 + 5_000).as_str());
        assert_eq!(items[2]["status_code"], 200);
        assert_eq!(dec(&items[2]["duration"]), Decimal::new(5, 0));
        assert_eq!(items[1]["status_code"], 422);
        assert_eq!(dec(&items[0]["duration"]), Decimal::new(10, 0));
        assert!(items.iter().all(|i| i.get("json_input").is_none()));

        // Several endpoints, comma-separated or repeated; an ADMIN key sees the same.
        let both = s(&[&e, &c, &b, &a]);
        let r = history(
            &app,
            &alice.key,
            &format!("endpoint_id={FLUX_DEV},{WHISPER}"),
        )
        .await;
        assert_eq!(ids(&r), both);
        let repeated = format!("endpoint_id={FLUX_DEV}&endpoint_id={WHISPER}");
        assert_eq!(ids(&history(&app, &alice_admin, &repeated).await), both);
        let r = history(&app, &alice.key, &format!("endpoint_id={WHISPER}")).await;
        let item = &r.body["items"][0];
        assert_eq!(
            (item["sent_at"].clone(), dec(&item["duration"])),
            (json!(rfc3339(T0 + 40_000)), Decimal::ZERO)
        );

        // Filters: status, request id, the range of end times.
        let q = |extra: &str| format!("endpoint_id={FLUX_DEV},{WHISPER}&{extra}");
        assert_eq!(
            ids(&history(&app, &alice.key, &q("status=success")).await),
            s(&[&e, &a])
        );
        assert_eq!(
            ids(&history(&app, &alice.key, &q("status=user_error")).await),
            s(&[&b])
        );
        assert_eq!(
            ids(&history(&app, &alice.key, &q("status=error")).await),
            s(&[&c])
        );
        assert_eq!(
            ids(&history(&app, &alice.key, &q(&format!("request_id={b}"))).await),
            s(&[&b])
        );
        let range = format!("start={}&end={}", rfc3339(T0 + 5_000), rfc3339(T0 + 30_000));
        // `start` inclusive, `end` exclusive.
        assert_eq!(
            ids(&history(&app, &alice.key, &q(&range)).await),
            s(&[&b, &a])
        );
        // The default range is the last day: a day later, nothing.
        app.set_now(T0 + 60_000 + 24 * 3_600_000);
        assert_eq!(
            ids(&history(&app, &alice.key, &q("")).await),
            Vec::<String>::new()
        );
        // ... unless a request id is given (90 days back).
        assert_eq!(
            ids(&history(&app, &alice.key, &q(&format!("request_id={a}"))).await),
            s(&[&a])
        );
        app.set_now(T0 + 60_000);

        // Longest first.
        let r = history(&app, &alice.key, &q("sort_by=duration")).await;
        assert_eq!(ids(&r), s(&[&c, &a, &b, &e]));

        // Paging: every page in order, none repeated or skipped, for both orders.
        for (sort, expected) in [
            ("ended_at", both.clone()),
            ("duration", s(&[&c, &a, &b, &e])),
        ] {
            let mut seen = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut query = q(&format!("sort_by={sort}&limit=1"));
                if let Some(c) = &cursor {
                    query.push_str(&format!("&cursor={c}"));
                }
                let r = history(&app, &alice.key, &query).await;
                let page = ids(&r);
                assert_eq!(page.len(), 1);
                seen.extend(page);
                match r.body["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_string()),
                    None => break,
                }
            }
            assert_eq!(seen, expected, "{sort}");
        }

        // Another account's requests are never visible, even by id.
        let r = history(&app, &bob.key, &format!("endpoint_id={FLUX_DEV},{WHISPER}")).await;
        assert_eq!(ids(&r), s(&[&bobs]));
        let r = history(&app, &bob.key, &q(&format!("request_id={a}"))).await;
        assert_eq!(ids(&r), Vec::<String>::new());
        let r = history(&app, &alice.key, &q(&format!("request_id={bobs}"))).await;
        assert_eq!(ids(&r), Vec::<String>::new());

        app.cancel(&running).await.expect(200);
        app.assert_reconciled().await;
    }
}

#[tokio::test]
async fn request_history_refuses_payloads_missing_endpoints_and_bad_ranges() {
    for backend in backends() {
        let app = TestApp::spawn_at_on(&backend, T0).await;
        let alice = app.customer("alice", Some(("10", "paid"))).await;
        run(&app, &alice.key, 0, 1_000, 5_000, 200).await;
        let before = app.account("alice").await;
        let reconciliation = app.reconciliation().await;

        let flux = format!("endpoint_id={FLUX_DEV}");
        let many = (0..51)
            .map(|i| format!("fal-ai/model-{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let cases: Vec<(String, &str)> = vec![
            (format!("{flux}&expand=payloads"), "expand"),
            (format!("{flux}&expand=logs"), "expand"),
            (String::new(), "endpoint_id"),
            ("limit=5".to_string(), "endpoint_id"),
            (format!("endpoint_id={many}"), "endpoint_id"),
            (format!("{flux}&start=2025-11-02&end=2025-11-01"), "start"),
            (format!("{flux}&start=2025-11-01&end=2025-11-01"), "start"),
            (format!("{flux}&start=2025-01-01&end=2025-11-01"), "start"),
            (format!("{flux}&start=yesterday"), "start"),
            (format!("{flux}&end=2025-13-01"), "end"),
            (format!("{flux}&status=ok"), "status"),
            (format!("{flux}&sort_by=started_at"), "sort_by"),
            (format!("{flux}&limit=101"), "limit"),
            (format!("{flux}&request_id=has%20space"), "request_id"),
        ];
        for (query, field) in cases {
            let r = history(&app, &alice.key, &query).await;
            let err = r.expect_error(400, "validation_error");
            assert_eq!(err["field"], field, "{query}: {}", r.text);
            assert_fal_schema("get", PATH, 400, &r.body);
        }
        let r = history(&app, &alice.key, &format!("{flux}&expand=payloads")).await;
        assert!(r.message().contains("payloads"), "{}", r.text);
        let r = history(&app, &alice.key, &format!("{flux}&cursor=bm90LWEtY3Vyc29y")).await;
        r.expect_error(400, "validation_error");
        // Without a key.
        let r = app
            .raw(Method::GET, &format!("/v1{PATH}?{flux}"), None, Body::None)
            .await;
        assert_eq!(r.status.as_u16(), 401, "{}", r.text);

        // Refusals write nothing.
        assert_eq!(app.account("alice").await, before);
        assert_eq!(app.reconciliation().await, reconciliation);
        app.assert_reconciled().await;
    }
}
