//! fal's usage, billing-events and analytics APIs over real HTTP: every response matches fal's
//! schema, and the same money adds up four ways (time series, summary, billing events, ledger)
//! for any range, time zone and timeframe, across daylight-saving changes and while paging. On
//! every store at hand: SQLite, and PostgreSQL when `TOLLGATE_TEST_POSTGRES_URL` is set.

use crate::fal::assert_fal_schema;
use crate::harness::{d, dec, int, Body, Resp, TestApp, USD};
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use tollgate_store::testing::backends;

const FLUX_DEV: &str = "fal-ai/flux/dev";
const WHISPER: &str = "fal-ai/whisper";
/// flux/dev: one 1920x1080 image (2.07 MP, billed as 2 MP at 0.025 USD/MP).
const FLUX_2MP: i64 = 50_000_000;

/// ms since the epoch of an RFC 3339 instant.
fn at(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .expect("RFC 3339")
        .timestamp_millis()
}

/// New York leaves daylight saving time at 2025-11-02T06:00Z: Nov 2 is 25 hours long.
const T1: &str = "2025-11-01T23:30:00Z"; // Nov 1, 19:30 EDT
const T2: &str = "2025-11-02T04:30:00Z"; // Nov 2, 00:30 EDT
const T3: &str = "2025-11-03T04:30:00Z"; // Nov 2, 23:30 EST (hour 25 of the day)
const T4: &str = "2025-11-03T05:30:00Z"; // Nov 3, 00:30 EST

fn flux_event(id: &str, username: &str, status: u16) -> Value {
    json!({
        "event_id": id,
        "endpoint_id": FLUX_DEV,
        "username": username,
        "timestamp": "2025-11-01T00:00:00Z",
        "status_code": status,
        "output": { "images": [{ "width": 1920, "height": 1080 }] },
    })
}

fn whisper_event(id: &str, username: &str, seconds: &str) -> Value {
    json!({
        "event_id": id,
        "endpoint_id": WHISPER,
        "username": username,
        "timestamp": "2025-11-01T00:00:00Z",
        "status_code": 200,
        "billable_units": seconds,
    })
}

impl TestApp {
    async fn customer_get(&self, key: &str, path: &str) -> Resp {
        self.raw(Method::GET, path, Some(key), Body::None).await
    }
}

/// Posts usage events that happened at `when`, with the engine's clock at `when`; asserts each
/// was accepted.
async fn bill_at(app: &TestApp, when: &str, mut events: Vec<Value>) {
    app.set_now(at(when));
    for e in &mut events {
        e["timestamp"] = json!(when);
    }
    let r = app.usage_events(json!(events)).await;
    for result in r.expect(200)["results"].as_array().expect("results") {
        assert!(result.get("error").is_none(), "{result}");
    }
}

/// Sum of a money field over rows, in nano-USD, exactly.
fn nanos(rows: &[&Value], field: &str) -> i64 {
    let usd: Decimal = rows.iter().map(|r| dec(&r[field])).sum();
    let n = usd * Decimal::from(USD);
    assert_eq!(
        n.fract(),
        Decimal::ZERO,
        "{field} is not whole nano-USD: {usd}"
    );
    i64::try_from(n.trunc().mantissa() / 10i128.pow(n.trunc().scale())).expect("fits")
}

/// Every row of every page of a paged usage query (with `limit`), checking fal's schema.
async fn usage_pages(app: &TestApp, key: &str, query: &str) -> (Vec<(String, Value)>, Vec<Value>) {
    let mut rows = Vec::new();
    let mut summary = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let path = match &cursor {
            Some(c) => format!("/v1/models/usage?{query}&cursor={c}"),
            None => format!("/v1/models/usage?{query}"),
        };
        let r = app.customer_get(key, &path).await;
        let body = r.expect(200).clone();
        assert_fal_schema("GET", "/models/usage", 200, &body);
        for b in body["time_series"].as_array().into_iter().flatten() {
            for row in b["results"].as_array().expect("results") {
                rows.push((
                    b["bucket"].as_str().expect("bucket").to_string(),
                    row.clone(),
                ));
            }
        }
        if cursor.is_none() {
            summary = body["summary"].as_array().cloned().unwrap_or_default();
        }
        match body["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(body["has_more"], true);
                cursor = Some(c.to_string());
            }
            None => {
                assert_eq!(body["has_more"], false);
                return (rows, summary);
            }
        }
    }
    panic!("usage paging did not end");
}

/// Every billing event of a paged query, checking fal's schema.
async fn event_pages(app: &TestApp, key: &str, query: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/models/billing-events?{query}&cursor={c}"),
            None => format!("/v1/models/billing-events?{query}"),
        };
        let body = app.customer_get(key, &path).await.expect(200).clone();
        assert_fal_schema("GET", "/models/billing-events", 200, &body);
        out.extend(
            body["billing_events"]
                .as_array()
                .expect("events")
                .iter()
                .cloned(),
        );
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

/// Usage for the DST scenario: flux and whisper events on both sides of New York's change,
/// with a percent discount from T3 on.
async fn dst_scenario(app: &TestApp) -> String {
    app.set_now(at("2025-11-01T12:00:00Z"));
    app.customer("acme", Some(("100.00", "paid"))).await;
    let admin = app.create_key("acme", "ADMIN").await;
    bill_at(
        app,
        T1,
        vec![
            flux_event("e1", "acme", 200),
            whisper_event("w1", "acme", "30"),
        ],
    )
    .await;
    bill_at(
        app,
        T2,
        vec![flux_event("e2", "acme", 200), flux_event("e3", "acme", 200)],
    )
    .await;
    app.set_pricing("acme", json!({ "percent_discount": "10" }))
        .await
        .expect(200);
    bill_at(
        app,
        T3,
        vec![
            flux_event("e4", "acme", 200),
            whisper_event("w2", "acme", "12.5"),
        ],
    )
    .await;
    bill_at(
        app,
        T4,
        vec![flux_event("e5", "acme", 200), flux_event("e6", "acme", 503)],
    )
    .await;
    app.set_now(at("2025-11-05T00:00:00Z"));
    admin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_buckets_follow_new_york_across_the_dst_change() {
    for backend in backends() {
        let app = TestApp::spawn_at_on(&backend, at("2025-11-01T12:00:00Z")).await;
        let admin = dst_scenario(&app).await;

        let q = "start=2025-11-01&end=2025-11-04&timezone=America/New_York&timeframe=day\
             &expand=time_series,summary";
        let body = app
            .customer_get(&admin, &format!("/v1/models/usage?{q}"))
            .await
            .expect(200)
            .clone();
        assert_fal_schema("GET", "/models/usage", 200, &body);
        let buckets: Vec<&str> = body["time_series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["bucket"].as_str().unwrap())
            .collect();
        assert_eq!(
            buckets,
            [
                "2025-11-01T00:00:00-04:00",
                "2025-11-02T00:00:00-04:00",
                "2025-11-03T00:00:00-05:00"
            ]
        );
        // Nov 2 (25 hours) holds T2 and T3: flux at full price (e2, e3), flux with 10% off (e4),
        // whisper with 10% off (w2).
        let nov2 = body["time_series"][1]["results"].as_array().unwrap();
        let flux_rows: Vec<&Value> = nov2
            .iter()
            .filter(|r| r["endpoint_id"] == FLUX_DEV)
            .collect();
        assert_eq!(flux_rows.len(), 2, "{nov2:?}");
        let full = flux_rows
            .iter()
            .find(|r| r["percent_discount"].is_null())
            .unwrap();
        assert_eq!(dec(&full["quantity"]), d("4"));
        assert_eq!(dec(&full["cost_total"]), d("0.1"));
        let off = flux_rows
            .iter()
            .find(|r| !r["percent_discount"].is_null())
            .unwrap();
        assert_eq!(dec(&off["percent_discount"]), d("10"));
        assert_eq!(dec(&off["cost_subtotal"]), d("0.05"));
        assert_eq!(dec(&off["cost_discount"]), d("0.005"));
        assert_eq!(dec(&off["cost_total"]), d("0.045"));
        assert_eq!(off["cost"], off["cost_total"]);
        assert_eq!(off["currency"], "USD");
        let whisper = nov2.iter().find(|r| r["endpoint_id"] == WHISPER).unwrap();
        assert_eq!(whisper["unit"], "compute second");
        assert_eq!(dec(&whisper["quantity"]), d("12.5"));
        assert_eq!(dec(&whisper["unit_price"]), d("0.00111"));

        // The same events in UTC days: T3 and T4 are both on Nov 3.
        let utc = app
            .customer_get(
                &admin,
                "/v1/models/usage?start=2025-11-01&end=2025-11-04&timeframe=day",
            )
            .await
            .expect(200)
            .clone();
        let utc_buckets: Vec<&str> = utc["time_series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["bucket"].as_str().unwrap())
            .collect();
        assert_eq!(
            utc_buckets,
            [
                "2025-11-01T00:00:00+00:00",
                "2025-11-02T00:00:00+00:00",
                "2025-11-03T00:00:00+00:00"
            ]
        );
        app.assert_reconciled().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_summary_billing_events_and_ledger_agree_to_the_nano() {
    for backend in backends() {
        let app = TestApp::spawn_at_on(&backend, at("2025-11-01T12:00:00Z")).await;
        let admin = dst_scenario(&app).await;
        let (balance, held, _) = app.position("acme").await;
        assert_eq!(held, 0);
        let ledger = 100 * USD - balance;
        // 5 flux images billed (e6 was a 503), two with 10% off; whisper 42.5 s, 12.5 s of it
        // with 10% off.
        let expected = 3 * FLUX_2MP + 2 * 45_000_000 + 33_300_000 + 12_487_500;
        assert_eq!(ledger, expected);

        // Whole days, and a range whose ends split hours (read from minute rows at the edges and
        // hour rows between them where the buckets allow); both hold every event.
        let ranges = [
            ("2025-11-01T00:00:00Z", "2025-11-04T00:00:00Z"),
            ("2025-11-01T23:10:00Z", "2025-11-03T05:45:00Z"),
        ];
        for tz in [
            "UTC",
            "America/New_York",
            "Asia/Kathmandu",
            "Australia/Lord_Howe",
        ] {
            for (timeframe, bound, (start, end)) in ["hour", "day", "week", "month"]
                .into_iter()
                .flat_map(|t| ["true", "false"].map(|b| (t, b)))
                .flat_map(|(t, b)| ranges.map(|r| (t, b, r)))
            {
                let q = format!(
                    "start={start}&end={end}&timezone={tz}\
                     &timeframe={timeframe}&bound_to_timeframe={bound}\
                     &expand=time_series,summary&limit=2"
                );
                let (rows, summary) = usage_pages(&app, &admin, &q).await;
                let row_refs: Vec<&Value> = rows.iter().map(|(_, r)| r).collect();
                let summary_refs: Vec<&Value> = summary.iter().collect();
                let series_total = nanos(&row_refs, "cost_total");
                assert_eq!(series_total, nanos(&summary_refs, "cost_total"), "{q}");
                assert_eq!(series_total, ledger, "{q}");
                assert_eq!(
                    nanos(&row_refs, "cost_subtotal") - nanos(&row_refs, "cost_discount"),
                    series_total,
                    "{q}"
                );
                // Paging neither repeats nor skips a (bucket, group) row.
                let keys: BTreeSet<String> = rows
                    .iter()
                    .map(|(b, r)| {
                        format!(
                            "{b}|{}|{}|{}|{}",
                            r["endpoint_id"], r["unit"], r["unit_price"], r["percent_discount"]
                        )
                    })
                    .collect();
                assert_eq!(keys.len(), rows.len(), "a row repeated: {q}");
            }
        }

        let events = event_pages(
            &app,
            &admin,
            "start=2025-11-01T00:00:00Z&end=2025-11-04T00:00:00Z&limit=2",
        )
        .await;
        let ids: Vec<&str> = events
            .iter()
            .map(|e| e["request_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["e1", "w1", "e2", "e3", "e4", "w2", "e5"]);
        let refs: Vec<&Value> = events.iter().collect();
        assert_eq!(nanos(&refs, "cost_total"), ledger);
        assert_eq!(
            events
                .iter()
                .map(|e| int(&e["cost_estimate_nano_usd"]))
                .sum::<i64>(),
            ledger
        );
        app.assert_reconciled().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_event_paging_neither_skips_nor_repeats_while_usage_arrives() {
    for backend in backends() {
        let app = TestApp::spawn_at_on(&backend, at("2025-11-01T00:00:00Z")).await;
        app.customer("busy", Some(("100.00", "paid"))).await;
        let admin = app.create_key("busy", "ADMIN").await;
        let mut billed = Vec::new();
        for minute in 0..10 {
            let when = format!("2025-11-01T00:{minute:02}:00Z");
            let batch: Vec<Value> = (0..3)
                .map(|i| flux_event(&format!("m{minute}-{i}"), "busy", 200))
                .collect();
            billed.extend(
                batch
                    .iter()
                    .map(|e| e["event_id"].as_str().unwrap().to_string()),
            );
            bill_at(&app, &when, batch).await;
        }
        let query = "start=2025-11-01T00:00:00Z&end=2025-11-02T00:00:00Z&limit=4";
        let mut seen: Vec<String> = Vec::new();
        let mut cursor: Option<String> = None;
        let mut late = 0;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/models/billing-events?{query}&cursor={c}"),
                None => format!("/v1/models/billing-events?{query}"),
            };
            let body = app.customer_get(&admin, &path).await.expect(200).clone();
            seen.extend(
                body["billing_events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["request_id"].as_str().unwrap().to_string()),
            );
            // New usage between pages, later than anything seen so far.
            late += 1;
            let id = format!("late-{late}");
            bill_at(
                &app,
                &format!("2025-11-01T01:{late:02}:00Z"),
                vec![flux_event(&id, "busy", 200)],
            )
            .await;
            billed.push(id);
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        let unique: BTreeSet<&String> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "an event repeated: {seen:?}");
        // Everything billed before paging reached its time was seen; only the very last late
        // event (billed after the last page) may be missing.
        let expected: Vec<&String> = billed[..billed.len() - 1].iter().collect();
        for id in &expected {
            assert!(seen.contains(id), "{id} was skipped: {seen:?}");
        }
        app.assert_reconciled().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_counts_outcomes_and_merges_duration_percentiles() {
    for backend in backends() {
        let app = TestApp::spawn_at_on(&backend, at("2025-11-01T10:00:00Z")).await;
        let c = app.customer("lab", Some(("100.00", "paid"))).await;
        let mut events = Vec::new();
        for (i, (status, queue, inference)) in [
            (200, "0.5", "1"),
            (200, "1.5", "2"),
            (200, "2.5", "3"),
            (422, "0.1", "0.2"),
            (500, "0.1", "9"),
        ]
        .into_iter()
        .enumerate()
        {
            let mut e = flux_event(&format!("a{i}"), "lab", status);
            e["queue_seconds"] = json!(queue);
            e["inference_seconds"] = json!(inference);
            events.push(e);
        }
        // Two minutes apart, so the summary merges two minutes' histograms.
        bill_at(&app, "2025-11-01T10:00:00Z", events[..2].to_vec()).await;
        bill_at(&app, "2025-11-01T10:02:00Z", events[2..].to_vec()).await;
        app.set_now(at("2025-11-01T11:00:00Z"));

        let q = format!(
            "/v1/models/analytics?endpoint_id={FLUX_DEV}&start=2025-11-01T10:00:00Z\
         &end=2025-11-01T11:00:00Z&expand=time_series,summary,request_count,success_count,\
         user_error_count,error_count,p50_duration,p99_duration,p50_prepare_duration,\
         total_billable_duration"
        );
        // An API key may read analytics.
        let body = app.customer_get(&c.key, &q).await.expect(200).clone();
        assert_fal_schema("GET", "/models/analytics", 200, &body);
        let s = &body["summary"][0];
        assert_eq!(s["endpoint_id"], FLUX_DEV);
        assert_eq!(int(&s["request_count"]), 5);
        assert_eq!(int(&s["success_count"]), 3);
        assert_eq!(int(&s["user_error_count"]), 1);
        assert_eq!(int(&s["error_count"]), 1);
        // Execution 0.2, 1, 2, 3, 9 s: p50 is 2 s and p99 9 s, within the histograms' 1%.
        let p50 = dec(&s["p50_duration"]);
        assert!(p50 >= d("1.98") && p50 <= d("2.02"), "p50 {p50}");
        let p99 = dec(&s["p99_duration"]);
        assert!(p99 >= d("8.91") && p99 <= d("9.09"), "p99 {p99}");
        let prepare = dec(&s["p50_prepare_duration"]);
        assert!(
            prepare >= d("0.495") && prepare <= d("0.505"),
            "prepare p50 {prepare}"
        );
        // Billed execution: the three successes (the 4xx of an output-priced model and the 5xx
        // are not billed).
        assert_eq!(dec(&s["total_billable_duration"]), d("6"));
        // Minute buckets (auto timeframe for one hour), and they add up to the summary.
        let series = body["time_series"].as_array().unwrap();
        assert_eq!(series.len(), 2);
        assert_eq!(series[0]["bucket"], "2025-11-01T10:00:00+00:00");
        assert_eq!(series[1]["bucket"], "2025-11-01T10:02:00+00:00");
        let total: i64 = series
            .iter()
            .map(|b| int(&b["results"][0]["request_count"]))
            .sum();
        assert_eq!(total, 5);
        // Only the metrics asked for.
        assert!(series[0]["results"][0].get("p75_duration").is_none());
        app.assert_reconciled().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_never_sees_another_accounts_usage() {
    for backend in backends() {
        let app = TestApp::spawn_on(&backend).await;
        let alice = app.customer("alice", Some(("10.00", "paid"))).await;
        app.customer("bob", Some(("10.00", "paid"))).await;
        let bob_admin = app.create_key("bob", "ADMIN").await;
        let id = app.submit_ok(&alice.key, FLUX_DEV).await;
        app.start(&id, None).await.expect(200);
        app.complete(
        &id,
        json!({ "status_code": 200, "output": { "images": [{ "width": 1024, "height": 1024 }] } }),
    )
    .await
    .expect(200);
        let alice_key_id = alice.key.split(':').next().unwrap();

        for path in [
            format!("/v1/models/billing-events?request_id={id}"),
            format!("/v1/models/billing-events?api_key_id={alice_key_id}"),
            format!("/v1/models/billing-events?endpoint_id={FLUX_DEV}"),
        ] {
            let body = app
                .customer_get(&bob_admin, &path)
                .await
                .expect(200)
                .clone();
            assert_eq!(body["billing_events"], json!([]), "{path}");
        }
        for path in [
            format!("/v1/models/usage?api_key_id={alice_key_id}&expand=summary"),
            format!("/v1/models/usage?endpoint_id={FLUX_DEV}&expand=summary,time_series"),
        ] {
            let body = app
                .customer_get(&bob_admin, &path)
                .await
                .expect(200)
                .clone();
            assert_eq!(body["summary"], json!([]), "{path}");
        }
        let body = app
            .customer_get(
                &bob_admin,
                &format!(
                    "/v1/models/analytics?endpoint_id={FLUX_DEV}&expand=summary,request_count"
                ),
            )
            .await
            .expect(200)
            .clone();
        assert_eq!(body["summary"], json!([]));

        // Alice sees her own, with her key as the auth method; her API key may not read usage.
        let alice_admin = app.create_key("alice", "ADMIN").await;
        let body = app
            .customer_get(
                &alice_admin,
                &format!("/v1/models/billing-events?request_id={id}&expand=auth_method_structured"),
            )
            .await
            .expect(200)
            .clone();
        assert_fal_schema("GET", "/models/billing-events", 200, &body);
        assert_eq!(body["billing_events"][0]["request_id"], id.as_str());
        assert_eq!(
            body["billing_events"][0]["auth_method_structured"]["api_key_id"],
            alice_key_id
        );
        for path in ["/v1/models/usage", "/v1/models/billing-events"] {
            app.customer_get(&alice.key, path)
                .await
                .expect_error(403, "authorization_error");
        }
        app.assert_reconciled().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_refused_naming_the_parameter() {
    for backend in backends() {
        let app = TestApp::spawn_on(&backend).await;
        app.customer("carol", Some(("1.00", "paid"))).await;
        let admin = app.create_key("carol", "ADMIN").await;
        let many: Vec<String> = (0..51).map(|i| format!("fal-ai/model-{i}")).collect();
        let cases = [
            ("/v1/models/usage?timezone=Mars/Olympus", "timezone"),
            ("/v1/models/usage?timeframe=year", "timeframe"),
            (
                "/v1/models/usage?bound_to_timeframe=maybe",
                "bound_to_timeframe",
            ),
            ("/v1/models/usage?start=yesterday", "start"),
            ("/v1/models/usage?start=2025-02-01&end=2025-01-01", "start"),
            ("/v1/models/usage?expand=auth_method", "expand"),
            ("/v1/models/usage?limit=0", "limit"),
            ("/v1/models/usage?cursor=not-a-cursor", "cursor"),
            ("/v1/models/usage?endpoint=fal-ai/flux/dev", "endpoint"),
            (
                "/v1/models/billing-events?start=2025-01-01&end=2025-06-01",
                "start",
            ),
            ("/v1/models/billing-events?limit=10001", "limit"),
            (
                "/v1/models/analytics?expand=summary,request_count",
                "endpoint_id",
            ),
            (
                "/v1/models/analytics?endpoint_id=fal-ai/flux/dev&expand=summary,cold_boot_count",
                "expand",
            ),
            (
                "/v1/models/analytics?endpoint_id=fal-ai/flux/dev&expand=summary",
                "expand",
            ),
        ];
        for (path, field) in cases {
            let r = app.customer_get(&admin, path).await;
            let err = r.expect_error(400, "validation_error");
            assert_eq!(err["field"], field, "{path}: {err}");
        }
        let path = format!("/v1/models/usage?endpoint_id={}", many.join(","));
        let r = app.customer_get(&admin, &path).await;
        assert_eq!(
            r.expect_error(400, "validation_error")["field"],
            "endpoint_id"
        );
        let path = format!(
            "/v1/models/billing-events?request_id={}",
            many.join("&request_id=")
        );
        let r = app.customer_get(&admin, &path).await;
        assert_eq!(
            r.expect_error(400, "validation_error")["field"],
            "request_id"
        );
        app.assert_reconciled().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blended_prices_sum_into_one_usage_row_per_price_version() {
    // Token prices give every request its own effective rate; usage still shows one row per
    // bucket, priced at the row's average, and it adds up exactly.
    const GPT_IMAGE: &str = "openai/gpt-image-2";
    for backend in backends() {
        let app = TestApp::spawn_at_on(&backend, at("2025-11-01T10:00:00Z")).await;
        app.customer("llm", Some(("10.00", "paid"))).await;
        let admin = app.create_key("llm", "ADMIN").await;
        let events: Vec<Value> = [(1000, 2000), (333, 777), (10, 10)]
            .iter()
            .enumerate()
            .map(|(i, (input, output))| {
                json!({
                    "event_id": format!("tok-{i}"),
                    "endpoint_id": GPT_IMAGE,
                    "username": "llm",
                    "timestamp": "2025-11-01T10:00:00Z",
                    "status_code": 200,
                    "output": { "tokens": { "input": input, "output": output } },
                })
            })
            .collect();
        bill_at(&app, "2025-11-01T10:00:30Z", events).await;
        app.set_now(at("2025-11-01T11:00:00Z"));

        let q = "start=2025-11-01T10:00:00Z&end=2025-11-01T11:00:00Z&timeframe=hour\
             &expand=time_series,summary";
        let body = app
            .customer_get(&admin, &format!("/v1/models/usage?{q}"))
            .await
            .expect(200)
            .clone();
        assert_fal_schema("GET", "/models/usage", 200, &body);
        let rows = body["time_series"][0]["results"].as_array().unwrap();
        assert_eq!(
            rows.len(),
            1,
            "one row for three different effective rates: {rows:?}"
        );
        let row = &rows[0];
        let events = event_pages(&app, &admin, "start=2025-11-01T10:00:00Z").await;
        assert_eq!(events.len(), 3);
        let quantity: Decimal = events.iter().map(|e| dec(&e["output_units"])).sum();
        assert_eq!(dec(&row["quantity"]), quantity);
        let refs: Vec<&Value> = events.iter().collect();
        assert_eq!(nanos(&[row], "cost_total"), nanos(&refs, "cost_total"));
        // 0.025 + 0.0095 + 0.0002 USD (each rounded up to 0.0001, no discount for a partner model).
        assert_eq!(dec(&row["cost_total"]), d("0.0347"));
        assert_eq!(
            dec(&row["unit_price"]),
            (d("0.0347") / quantity).round_dp(12).normalize()
        );
        assert_eq!(body["summary"][0]["unit_price"], row["unit_price"]);
        app.assert_reconciled().await;
    }
}
