//! Serverless runner billing over HTTP (API.md section 8, docs/serverless.md): runners reported
//! with `POST /v1/runners/events` are billed by the second while they run, exactly (the usage,
//! the line items and the ledger agree to the nano-USD, a runner under one price charged
//! exactly its rounded total), read back with `GET /v1/serverless/usage` in fal's shape and
//! bucketed in any time zone, invoiced with their month, counted in the runner-state history;
//! a bulk with one bad event writes nothing; a prepaid account that its runner runs dry locks
//! within a minute and its webhook names the runner; billing stops at the last report plus the
//! grace. Model usage reads never show runner time.

use crate::fal::assert_fal_schema;
use crate::focus::{assert_focus_valid, parse_csv};
use crate::harness::{d, dec, int, new_id, rfc3339, Body, Resp, TestApp, USD};
use reqwest::Method;
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{json, Value};
use tollgate_api::testing::receiver::Receiver;
use tollgate_core::ids::MachineType;
use tollgate_store::testing::backends;

/// 2026-06-01T00:00:00Z.
const T0: i64 = 1_780_272_000_000;
const SECOND: i64 = 1_000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;

fn ms(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .expect("a test instant")
        .timestamp_millis()
}

/// A runner as the platform reports it.
#[derive(Clone)]
struct Runner {
    id: String,
    user: &'static str,
    app: &'static str,
    env: Option<&'static str>,
    machine: &'static str,
    gpus: i64,
    surge: bool,
}

impl Runner {
    fn new(user: &'static str, app: &'static str, machine: &'static str, gpus: i64) -> Runner {
        Runner {
            id: format!("rn-{}", new_id()),
            user,
            app,
            env: None,
            machine,
            gpus,
            surge: false,
        }
    }

    fn env(mut self, env: &'static str) -> Runner {
        self.env = Some(env);
        self
    }

    fn surge(mut self) -> Runner {
        self.surge = true;
        self
    }

    /// A report of `state` at `at` (a new event id).
    fn event(&self, state: &str, at: i64) -> Value {
        let mut e = json!({
            "event_id": format!("re-{}", new_id()), "runner_id": self.id,
            "username": self.user, "app": self.app, "machine_type": self.machine,
            "num_gpus": self.gpus, "state": state, "at": rfc3339(at),
        });
        if let Some(env) = self.env {
            e["environment"] = json!(env);
        }
        if self.surge {
            e["is_surge"] = json!(true);
        }
        e
    }
}

async fn report(app: &TestApp, events: Vec<Value>) -> Resp {
    app.op(
        Method::POST,
        "/v1/runners/events",
        json!({ "events": events }),
    )
    .await
}

/// Reports `events` at the engine's time `at` (moved there first); asserts one result per
/// event, in order, none a duplicate. Returns the results.
async fn report_at(app: &TestApp, at: i64, events: Vec<Value>) -> Vec<Value> {
    app.set_now(at);
    let ids: Vec<Value> = events.iter().map(|e| e["event_id"].clone()).collect();
    let r = report(app, events).await;
    let results = r.expect(200)["results"]
        .as_array()
        .expect("results")
        .clone();
    let answered: Vec<Value> = results.iter().map(|r| r["event_id"].clone()).collect();
    assert_eq!(answered, ids, "one result per event, in order");
    for res in &results {
        assert_eq!(res["duplicate"], false, "{res}");
    }
    results
}

/// Moves the clock to `at` and runs the sweep there (the per-minute settlement).
async fn sweep_at(app: &TestApp, at: i64) {
    app.advance(at - app.now_ms()).await;
}

async fn get(app: &TestApp, key: &str, path: &str) -> Value {
    app.raw(Method::GET, path, Some(key), Body::None)
        .await
        .expect(200)
        .clone()
}

/// `round(x)` to a whole number, half away from zero (the core's one rounding rule).
fn round(x: Decimal) -> i64 {
    i64::try_from(x.round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero))
        .expect("fits")
}

/// What `q` GPU-seconds at `price` USD with `percent` off cost, exactly as the billing rule
/// says a runner under one price is charged: `round(round(q × price) × (100 − percent)/100)`.
fn charged(q: i64, price: Decimal, percent: i64) -> i64 {
    let subtotal = round(Decimal::from(q) * price * Decimal::from(USD));
    round(Decimal::from(subtotal) * Decimal::from(100 - percent) / Decimal::ONE_HUNDRED)
}

fn machine_price(app: &TestApp, machine: &str, surge: bool) -> Decimal {
    let catalog = app.engine.catalog();
    let prices = if surge {
        &catalog.machines_surge
    } else {
        &catalog.machines
    };
    *prices
        .get(&MachineType::parse(machine).unwrap())
        .unwrap_or_else(|| panic!("the sample catalog prices {machine} (surge: {surge})"))
}

/// Every row of a usage answer's `summary`, or of its `time_series` buckets.
fn rows(answer: &Value) -> Vec<Value> {
    match answer.get("summary") {
        Some(s) => s.as_array().expect("summary").clone(),
        None => answer["time_series"]
            .as_array()
            .expect("time_series")
            .iter()
            .flat_map(|b| b["results"].as_array().expect("results").clone())
            .collect(),
    }
}

fn total_nanos(rows: &[Value]) -> i64 {
    rows.iter().map(|r| int(&r["cost_total_nano_usd"])).sum()
}

// ---------------------------------------------------------------------------------------------
// (a) A bulk with a bad event writes nothing.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_with_one_bad_event_is_refused_whole_and_writes_nothing() {
    let app = TestApp::spawn_at(T0).await;
    app.customer("acme", Some(("10", "paid"))).await;
    let admin = app.create_key("acme", "ADMIN").await;
    let r1 = Runner::new("acme", "my-app", "GPU-H100", 1);
    report_at(&app, T0, vec![r1.event("RUNNING", T0)]).await;
    // The runner has run a minute when the bad bulks arrive: each would bill that minute.
    app.set_now(T0 + MINUTE);
    let usage_path = "/v1/serverless/usage?start=2026-05-31&end=2026-06-02&expand=summary";
    let before = (
        app.position("acme").await,
        get(&app, &admin, usage_path).await,
    );

    let r2 = Runner::new("acme", "my-app", "GPU-H100", 1);
    // One good event, the same in every bulk: had a bulk applied it, it would be a duplicate.
    let good_event = r1.event("RUNNING", T0 + MINUTE);
    let good = || good_event.clone();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut e = r2.event("RUNNING", T0 + MINUTE);
        f(&mut e);
        e
    };
    // (the bad event, its index's field named when the body itself is malformed)
    let cases: Vec<(&str, Value, Option<&str>)> = vec![
        (
            "an unknown machine type",
            with(&|e| e["machine_type"] = json!("GPU-NOPE")),
            None,
        ),
        (
            "negative GPUs",
            with(&|e| e["num_gpus"] = json!(-1)),
            Some("num_gpus"),
        ),
        (
            "no GPUs",
            with(&|e| e["num_gpus"] = json!(0)),
            Some("num_gpus"),
        ),
        (
            "more GPUs than a machine has",
            with(&|e| e["num_gpus"] = json!(65)),
            Some("num_gpus"),
        ),
        (
            "a state that does not exist",
            with(&|e| e["state"] = json!("SLEEPING")),
            Some("state"),
        ),
        (
            "an unknown account",
            with(&|e| e["username"] = json!("ghost")),
            None,
        ),
        (
            "a malformed time",
            with(&|e| e["at"] = json!("yesterday")),
            Some("at"),
        ),
        (
            "a malformed event id",
            with(&|e| e["event_id"] = json!("has space")),
            Some("event_id"),
        ),
        (
            "a malformed app name",
            with(&|e| e["app"] = json!("acme/my-app")),
            Some("app"),
        ),
        (
            "an unknown field",
            with(&|e| e["gpu_count"] = json!(1)),
            Some("gpu_count"),
        ),
        ("time going backwards", r1.event("IDLE", T0 - SECOND), None),
        (
            "a time too far in the future",
            with(&|e| e["at"] = json!(rfc3339(T0 + MINUTE + 10 * MINUTE))),
            None,
        ),
    ];
    for (what, bad, field) in cases {
        let bad_id = bad["event_id"].clone();
        let r = report(&app, vec![good(), bad]).await;
        let err = r.expect_error(400, "validation_error");
        assert_eq!(err["index"], 1, "{what}: {err}");
        assert!(r.message().contains("events[1]"), "{what}: {err}");
        match field {
            Some(f) => assert_eq!(err["field"], f, "{what}: {err}"),
            None => assert_eq!(err["event_id"], bad_id, "{what}: {err}"),
        }
    }
    // The bulk itself: empty, or too many events.
    let r = report(&app, vec![]).await;
    assert_eq!(r.expect_error(400, "validation_error")["field"], "events");
    let many: Vec<Value> = (0..10_001).map(|i| r1.event("RUNNING", T0 + i)).collect();
    let r = report(&app, many).await;
    assert_eq!(r.expect_error(400, "validation_error")["field"], "events");
    // Not an operator key.
    let r = app
        .raw(
            Method::POST,
            "/v1/runners/events",
            Some(&admin),
            Body::Json(json!({ "events": [good()] })),
        )
        .await;
    r.expect_error(403, "authorization_error");

    // Nothing was written: the balance, the usage and the ledger are as they were, and the
    // good event of each bulk was not applied (sent alone now, it is no duplicate).
    let after = (
        app.position("acme").await,
        get(&app, &admin, usage_path).await,
    );
    assert_eq!(after, before);
    assert_eq!(before.0 .0, 10 * USD, "nothing billed yet");
    app.assert_reconciled().await;
    let results = report_at(&app, T0 + MINUTE, vec![good()]).await;
    let price = machine_price(&app, "GPU-H100", false);
    assert_eq!(int(&results[0]["billed_nano_usd"]), charged(60, price, 0));
    app.assert_reconciled().await;
}

// ---------------------------------------------------------------------------------------------
// (b) Runners end to end: usage = line items = ledger, exactly.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_time_is_billed_exactly_and_read_back_as_fal_does() {
    for backend in backends() {
        let on = backend.name();
        let app = TestApp::spawn_at_on(&backend, T0).await;
        app.customer("acme", Some(("100", "paid"))).await;
        let admin = app.create_key("acme", "ADMIN").await;
        // 15% off everything; its own price of an A100 second.
        app.set_pricing(
            "acme",
            json!({ "percent_discount": "15", "machine_prices": { "GPU-A100": "0.0002" } }),
        )
        .await
        .expect(200);
        // A model request beside the runners: model reads show it, and only it.
        app.usage_events(
            json!([{ "event_id": new_id(), "endpoint_id": "fal-ai/flux/dev",
            "username": "acme", "timestamp": rfc3339(T0), "status_code": 200,
            "output": { "images": [{ "width": 1024, "height": 1024 }] } }]),
        )
        .await
        .expect(200);
        let (start_balance, _, _) = app.position("acme").await;

        // B200's price per second does not terminate (6.25 USD/h), so rounding shows.
        let r1 = Runner::new("acme", "img-gen", "GPU-B200", 2).env("production");
        let r2 = Runner::new("acme", "img-gen", "GPU-H100", 1)
            .env("production")
            .surge();
        let r3 = Runner::new("acme", "chat", "GPU-A100", 1);
        let s = |n: i64| T0 + n * SECOND;
        let first = report_at(
            &app,
            s(0),
            vec![
                r1.event("PENDING", s(0)),
                r2.event("SETUP", s(0)),
                r3.event("DOCKER_PULL", s(0)),
            ],
        )
        .await;
        for r in &first {
            assert_eq!(
                int(&r["billed_nano_usd"]),
                0,
                "a first report bills nothing"
            );
        }
        report_at(&app, s(20), vec![r1.event("SETUP", s(20))]).await;
        report_at(
            &app,
            s(45),
            vec![r1.event("RUNNING", s(45)), r3.event("SETUP", s(45))],
        )
        .await;
        sweep_at(&app, s(60)).await;
        report_at(&app, s(90), vec![r3.event("RUNNING", s(90))]).await;
        sweep_at(&app, s(120)).await;
        report_at(
            &app,
            s(125),
            vec![r1.event("RUNNING", s(125)), r2.event("RUNNING", s(125))],
        )
        .await;
        sweep_at(&app, s(180)).await;
        report_at(&app, s(200), vec![r2.event("TERMINATED", s(200))]).await;
        report_at(&app, s(230), vec![r1.event("IDLE", s(230))]).await;
        sweep_at(&app, s(240)).await;
        sweep_at(&app, s(300)).await;
        report_at(
            &app,
            s(310),
            vec![
                r1.event("DRAINING", s(310)),
                r3.event("TERMINATING", s(310)),
            ],
        )
        .await;
        let last = r1.event("TERMINATED", s(333));
        report_at(
            &app,
            s(333),
            vec![last.clone(), r3.event("TERMINATED", s(333))],
        )
        .await;
        sweep_at(&app, s(400)).await;
        sweep_at(&app, s(1000)).await;

        // r1: SETUP 25 s, RUNNING 185 s, IDLE 80 s, DRAINING 23 s, × 2 GPUs; r2: SETUP and
        // RUNNING 200 s at the surge price; r3: SETUP 45 s, RUNNING 220 s, TERMINATING 23 s at
        // the account's own price (DOCKER_PULL is free).
        let (b200, h100_surge) = (
            machine_price(&app, "GPU-B200", false),
            machine_price(&app, "GPU-H100", true),
        );
        let expected = [
            ("img-gen", Some("production"), "GPU-B200", false, 626, b200),
            (
                "img-gen",
                Some("production"),
                "GPU-H100",
                true,
                200,
                h100_surge,
            ),
            ("chat", None, "GPU-A100", false, 288, d("0.0002")),
        ];
        let total: i64 = expected.iter().map(|(.., q, p)| charged(*q, *p, 15)).sum();
        let (balance, _, _) = app.position("acme").await;
        assert_eq!(start_balance - balance, total, "{on}: the ledger");

        let summary = get(
            &app,
            &admin,
            "/v1/serverless/usage?start=2026-06-01&end=2026-06-02&expand=summary",
        )
        .await;
        assert!(summary.get("time_series").is_none(), "{summary}");
        assert_fal_schema("GET", "/serverless/usage", 200, &summary);
        let mut got = rows(&summary);
        got.sort_by_key(|r| r["app"].as_str().unwrap_or_default().to_string());
        assert_eq!(got.len(), 3, "{on}: {summary}");
        assert_eq!(total_nanos(&got), total, "{on}: the usage is the ledger");
        for (app_name, env, machine, surge, q, price) in expected {
            let row = got
                .iter()
                .find(|r| r["app"] == app_name && r["machine_type"] == machine)
                .unwrap_or_else(|| panic!("{on}: a row of {app_name} on {machine}"));
            assert_eq!(row["environment"], json!(env), "{on}: {row}");
            assert_eq!(row["is_surge"], surge, "{on}: {row}");
            assert_eq!(row["unit"], "second");
            assert_eq!(row["currency"], "USD");
            assert_eq!(dec(&row["quantity"]), Decimal::from(q), "{on}: {row}");
            assert_eq!(dec(&row["unit_price"]), price.normalize(), "{on}: {row}");
            assert_eq!(dec(&row["percent_discount"]), d("15"), "{on}: {row}");
            let subtotal = round(Decimal::from(q) * price * Decimal::from(USD));
            assert_eq!(int(&row["cost_subtotal_nano_usd"]), subtotal, "{on}: {row}");
            assert_eq!(
                int(&row["cost_total_nano_usd"]),
                charged(q, price, 15),
                "{on}: one runner under one price is charged its rounded total: {row}"
            );
            assert_eq!(
                int(&row["cost_discount_nano_usd"]),
                subtotal - charged(q, price, 15)
            );
            assert_eq!(row["cost"], row["cost_total"]);
        }

        // The time series (minutes) adds up to the same, page by page.
        let mut series = Vec::new();
        let mut path = "/v1/serverless/usage?start=2026-06-01T00:00:00Z\
                        &end=2026-06-01T00:20:00Z&timeframe=minute&limit=2"
            .to_string();
        loop {
            let page = get(&app, &admin, &path).await;
            assert_fal_schema("GET", "/serverless/usage", 200, &page);
            let results = rows(&page);
            assert!(results.len() <= 2, "{on}: a page of 2 rows");
            series.extend(results);
            match page["next_cursor"].as_str() {
                Some(c) => {
                    assert_eq!(page["has_more"], true);
                    path = format!(
                        "/v1/serverless/usage?start=2026-06-01T00:00:00Z\
                         &end=2026-06-01T00:20:00Z&timeframe=minute&limit=2&cursor={c}"
                    );
                }
                None => break,
            }
        }
        assert_eq!(total_nanos(&series), total, "{on}");
        let gpu_seconds: Decimal = series.iter().map(|r| dec(&r["quantity"])).sum();
        assert_eq!(gpu_seconds, Decimal::from(626 + 200 + 288), "{on}");

        // Filters: exact apps, a case-insensitive substring, both.
        let apps = |q: &str| {
            let app = &app;
            let admin = admin.clone();
            let q = q.to_string();
            async move {
                let answer = get(
                    app,
                    &admin,
                    &format!(
                        "/v1/serverless/usage?start=2026-06-01&end=2026-06-02&expand=summary&{q}"
                    ),
                )
                .await;
                let mut names: Vec<String> = rows(&answer)
                    .iter()
                    .map(|r| r["app"].as_str().unwrap().to_string())
                    .collect();
                names.sort();
                names
            }
        };
        assert_eq!(apps("app=chat").await, ["chat"]);
        assert_eq!(apps("search=IMG").await, ["img-gen", "img-gen"]);
        assert_eq!(apps("app=chat,img-gen").await.len(), 3);
        assert!(apps("app=chat&search=img").await.is_empty());
        assert!(apps("app=img").await.is_empty(), "app is exact");

        // A repeated report is a duplicate: answered, nothing billed again.
        let r = report(&app, vec![last]).await;
        let dup = &r.expect(200)["results"][0];
        assert_eq!(dup["duplicate"], true, "{on}");
        assert_eq!(int(&dup["billed_nano_usd"]), 0);
        assert_eq!(int(&dup["balance_nano_usd"]), balance);
        assert_eq!(app.position("acme").await.0, balance);

        // The month's statement: the serverless lines, by their description, add up too.
        let statement = get(&app, &admin, "/v1/account/statements/2026-06").await;
        let lines: Vec<&Value> = statement["usage_by_endpoint"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|u| {
                u["endpoint_id"]
                    .as_str()
                    .unwrap()
                    .starts_with("serverless/")
            })
            .collect();
        assert_eq!(lines.len(), 3, "{on}: {statement}");
        assert_eq!(
            lines.iter().map(|u| int(&u["cost_nano_usd"])).sum::<i64>(),
            total,
            "{on}"
        );
        for l in &lines {
            let description = l["description"].as_str().unwrap();
            assert!(
                description.contains("img-gen") || description.contains("chat"),
                "{on}: {l}"
            );
            assert!(!description.starts_with("serverless/"), "{on}: {l}");
        }

        // Model reads never show runner time: the one image only.
        let models = get(
            &app,
            &admin,
            "/v1/models/usage?start=2026-06-01&end=2026-06-02&expand=summary",
        )
        .await;
        let model_rows = rows(&models);
        assert_eq!(model_rows.len(), 1, "{on}: {models}");
        assert_eq!(model_rows[0]["endpoint_id"], "fal-ai/flux/dev");
        let events = get(
            &app,
            &admin,
            "/v1/models/billing-events?start=2026-06-01T00:00:00Z&end=2026-06-02T00:00:00Z",
        )
        .await;
        let events = events["billing_events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{on}: {events:?}");
        assert_eq!(events[0]["endpoint_id"], "fal-ai/flux/dev");
        app.assert_reconciled().await;
    }
}

/// An `API` key may not read the usage; a bad parameter is named.
#[tokio::test]
async fn serverless_usage_needs_an_admin_key_and_names_bad_parameters() {
    let app = TestApp::spawn_at(T0).await;
    let api = app.customer("acme", None).await.key;
    let admin = app.create_key("acme", "ADMIN").await;
    app.raw(Method::GET, "/v1/serverless/usage", Some(&api), Body::None)
        .await
        .expect_error(403, "authorization_error");
    for (query, field) in [
        ("app=a%20b", "app"),
        ("search=", "search"),
        ("expand=auth_method", "expand"),
        ("timezone=Mars/Olympus", "timezone"),
        ("endpoint_id=fal-ai/flux/dev", "endpoint_id"),
        ("cursor=nope", "cursor"),
        ("limit=0", "limit"),
    ] {
        let r = app
            .raw(
                Method::GET,
                &format!("/v1/serverless/usage?{query}"),
                Some(&admin),
                Body::None,
            )
            .await;
        assert_eq!(
            r.expect_error(400, "validation_error")["field"],
            field,
            "{query}"
        );
    }
    let empty = get(&app, &admin, "/v1/serverless/usage").await;
    assert_fal_schema("GET", "/serverless/usage", 200, &empty);
    assert_eq!(
        empty,
        json!({ "next_cursor": null, "has_more": false, "time_series": [] })
    );
    app.assert_reconciled().await;
}

// ---------------------------------------------------------------------------------------------
// (c) Buckets of any time zone, and the month's invoice.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_time_falls_in_the_buckets_of_every_time_zone_and_the_invoice_of_its_month() {
    for backend in backends() {
        let on = backend.name();
        let start = ms("2026-06-30T18:00:00Z");
        let app = TestApp::spawn_at_on(&backend, start).await;
        app.op(
            Method::POST,
            "/v1/admin/accounts",
            json!({ "username": "bigco", "billing": "invoice" }),
        )
        .await
        .expect(201);
        let admin = app.create_key("bigco", "ADMIN").await;
        // One GPU from 18:00 UTC on June 30 to 00:05 on July 1, reported every 4 minutes as
        // it runs; the last June report at 23:59:30.
        let r = Runner::new("bigco", "render", "GPU-H100", 1);
        let mut at = start;
        report_at(&app, at, vec![r.event("RUNNING", at)]).await;
        while at + 4 * MINUTE < ms("2026-06-30T23:59:30Z") {
            at += 4 * MINUTE;
            report_at(&app, at, vec![r.event("RUNNING", at)]).await;
        }
        let june_end = ms("2026-06-30T23:59:30Z");
        report_at(&app, june_end, vec![r.event("RUNNING", june_end)]).await;
        let july = ms("2026-07-01T00:02:00Z");
        report_at(&app, july, vec![r.event("RUNNING", july)]).await;
        let end = ms("2026-07-01T00:05:00Z");
        report_at(&app, end, vec![r.event("TERMINATED", end)]).await;
        let per_second = round(machine_price(&app, "GPU-H100", false) * Decimal::from(USD));

        let buckets = |tz: &str, timeframe: &str, start: &str, end: &str| {
            let path = format!(
                "/v1/serverless/usage?timezone={tz}&timeframe={timeframe}&start={start}&end={end}"
            );
            let app = &app;
            let admin = admin.clone();
            async move {
                let answer = get(app, &admin, &path).await;
                answer["time_series"]
                    .as_array()
                    .expect("time_series")
                    .iter()
                    .map(|b| {
                        let results = b["results"].as_array().unwrap();
                        assert_eq!(results.len(), 1, "{b}");
                        let q = dec(&results[0]["quantity"]);
                        assert_eq!(
                            int(&results[0]["cost_total_nano_usd"]),
                            i64::try_from(q).unwrap() * per_second,
                            "{b}"
                        );
                        (b["bucket"].as_str().unwrap().to_string(), q)
                    })
                    .collect::<Vec<(String, Decimal)>>()
            }
        };
        let expect = |pairs: &[(&str, i64)]| -> Vec<(String, Decimal)> {
            pairs
                .iter()
                .map(|(b, q)| (b.to_string(), Decimal::from(*q)))
                .collect()
        };
        for (tz, timeframe, from, to, want) in [
            (
                "UTC",
                "day",
                "2026-06-29",
                "2026-07-03",
                expect(&[
                    ("2026-06-30T00:00:00+00:00", 21_600),
                    ("2026-07-01T00:00:00+00:00", 300),
                ]),
            ),
            (
                "UTC",
                "month",
                "2026-06-01",
                "2026-08-01",
                expect(&[
                    ("2026-06-01T00:00:00+00:00", 21_600),
                    ("2026-07-01T00:00:00+00:00", 300),
                ]),
            ),
            (
                "America/New_York",
                "day",
                "2026-06-29",
                "2026-07-03",
                expect(&[("2026-06-30T00:00:00-04:00", 21_900)]),
            ),
            (
                "America/New_York",
                "hour",
                "2026-06-30T23:00:00Z",
                "2026-07-01T02:00:00Z",
                expect(&[
                    ("2026-06-30T19:00:00-04:00", 3_600),
                    ("2026-06-30T20:00:00-04:00", 300),
                ]),
            ),
            (
                "Asia/Kolkata",
                "day",
                "2026-06-29",
                "2026-07-03",
                expect(&[
                    ("2026-06-30T00:00:00+05:30", 1_800),
                    ("2026-07-01T00:00:00+05:30", 20_100),
                ]),
            ),
            (
                "Asia/Kolkata",
                "hour",
                "2026-06-30T22:30:00Z",
                "2026-07-01T01:30:00Z",
                expect(&[
                    ("2026-07-01T04:00:00+05:30", 3_600),
                    ("2026-07-01T05:00:00+05:30", 2_100),
                ]),
            ),
            (
                "Asia/Kathmandu",
                "day",
                "2026-06-29",
                "2026-07-03",
                expect(&[
                    ("2026-06-30T00:00:00+05:45", 900),
                    ("2026-07-01T00:00:00+05:45", 21_000),
                ]),
            ),
            (
                "Asia/Kathmandu",
                "hour",
                "2026-06-30T22:15:00Z",
                "2026-07-01T01:15:00Z",
                expect(&[
                    ("2026-07-01T04:00:00+05:45", 3_600),
                    ("2026-07-01T05:00:00+05:45", 3_000),
                ]),
            ),
        ] {
            let path = format!("{tz} {timeframe} {from}..{to}");
            assert_eq!(buckets(tz, timeframe, from, to).await, want, "{on}: {path}");
        }

        // June's usage invoice, issued when July's first report arrived (00:02), bills June's
        // runner time, the last half minute too (settled up to the month's end before June
        // closed); July's, closed now, July's.
        let close = app
            .op(Method::POST, "/v1/admin/invoices/close", json!({}))
            .await;
        assert_eq!(close.expect(200)["issued"].as_array().unwrap().len(), 1);
        let invoices = get(&app, &admin, "/v1/account/invoices").await;
        let usage: Vec<&Value> = invoices["invoices"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["kind"] == "usage")
            .collect();
        assert_eq!(usage.len(), 2, "{on}: {invoices}");
        let (july, june) = (usage[0], usage[1]);
        assert_eq!(
            june["period_end"], "2026-07-01T00:00:00.000Z",
            "{on}: {june}"
        );
        let june_lines = june["lines"].as_array().unwrap();
        assert_eq!(june_lines.len(), 1, "{on}: {june}");
        let line = &june_lines[0];
        assert!(
            line["endpoint_id"]
                .as_str()
                .unwrap()
                .starts_with("serverless/render/"),
            "{on}: {line}"
        );
        let description = line["description"].as_str().unwrap();
        assert!(
            description.contains("render") && description.contains("GPU-H100"),
            "{on}: {line}"
        );
        assert_eq!(line["unit"], "second");
        assert_eq!(
            dec(&line["quantity"]),
            Decimal::from(21_600),
            "{on}: {line}"
        );
        assert_eq!(int(&line["cost_total_nano_usd"]), 21_600 * per_second);
        assert_eq!(line["charge_period_start"], "2026-06-30T00:00:00.000Z");
        assert_eq!(line["charge_period_end"], "2026-07-01T00:00:00.000Z");
        let july_lines = july["lines"].as_array().unwrap();
        let mut quantities: Vec<(String, Decimal)> = july_lines
            .iter()
            .map(|l| {
                (
                    l["charge_period_start"].as_str().unwrap().to_string(),
                    dec(&l["quantity"]),
                )
            })
            .collect();
        quantities.sort();
        assert_eq!(
            quantities,
            vec![("2026-07-01T00:00:00.000Z".to_string(), Decimal::from(300))],
            "{on}: {july}"
        );
        assert_eq!(
            int(&june["total_nano_usd"]) + int(&july["total_nano_usd"]),
            21_900 * per_second,
            "{on}"
        );
        app.assert_reconciled().await;
    }
}

// ---------------------------------------------------------------------------------------------
// (d) The runner-state history.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_history_counts_runners_by_state_at_their_peak_or_on_average() {
    let t = ms("2026-06-01T10:00:00Z");
    let app = TestApp::spawn_at(t).await;
    let api = app.customer("acme", Some(("100", "paid"))).await.key;
    let admin = app.create_key("acme", "ADMIN").await;
    let beta = app.customer("beta", None).await.key;
    let s = |n: i64| t + n * SECOND;
    // r1 (2 GPUs: runners are counted, not GPUs): RUNNING 10:00-10:02, IDLE to 10:03:30.
    // r2: PENDING 40 s, SETUP 20 s, RUNNING 30 s, DRAINING 30 s, stopped at 10:02.
    // r3 is another app's (whose name contains this one's): never counted here.
    let r1 = Runner::new("acme", "hist", "GPU-H100", 2);
    let r2 = Runner::new("acme", "hist", "GPU-A100", 1).env("staging");
    let r3 = Runner::new("acme", "hist-2", "GPU-A100", 1);
    report_at(
        &app,
        s(250),
        vec![
            r1.event("RUNNING", s(0)),
            r2.event("PENDING", s(0)),
            r3.event("RUNNING", s(0)),
            r2.event("SETUP", s(40)),
            r2.event("RUNNING", s(60)),
            r2.event("DRAINING", s(90)),
            r1.event("IDLE", s(120)),
            r2.event("TERMINATED", s(120)),
            r3.event("TERMINATED", s(180)),
            r1.event("TERMINATED", s(210)),
        ],
    )
    .await;
    let history = |key: &str, query: &str| {
        let path = format!("/v1/serverless/apps/acme/hist/runners/history?{query}");
        let app = &app;
        let key = key.to_string();
        async move {
            let h = get(app, &key, &path).await;
            assert_fal_schema(
                "GET",
                "/serverless/apps/{owner}/{name}/runners/history",
                200,
                &h,
            );
            h
        }
    };
    let counts = |h: &Value| -> Vec<(String, [Decimal; 4])> {
        h["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["timestamp"].as_str().unwrap().to_string(),
                    [
                        dec(&p["running"]),
                        dec(&p["idle"]),
                        dec(&p["pending"]),
                        dec(&p["draining"]),
                    ],
                )
            })
            .collect()
    };
    let row = |ts: &str, c: [&str; 4]| (ts.to_string(), c.map(d));

    let minutes = history(
        &api,
        "start=2026-06-01T10:00:00Z&end=2026-06-01T11:00:00Z&timeframe=minute",
    )
    .await;
    assert_eq!(minutes["endpoint_id"], "acme/hist");
    assert_eq!(minutes["timeframe"], "minute");
    assert_eq!(minutes["aggregation"], "max");
    assert_eq!(
        counts(&minutes),
        vec![
            row("2026-06-01T10:00:00.000Z", ["1", "0", "1", "0"]),
            row("2026-06-01T10:01:00.000Z", ["1.5", "0", "0", "0.5"]),
            row("2026-06-01T10:02:00.000Z", ["0", "1", "0", "0"]),
            row("2026-06-01T10:03:00.000Z", ["0", "0.5", "0", "0"]),
            row("2026-06-01T10:04:00.000Z", ["0", "0", "0", "0"]),
        ],
        "every minute up to now, oldest first: {minutes}"
    );
    let hour = "start=2026-06-01T10:00:00Z&end=2026-06-01T11:00:00Z&timeframe=hour";
    let peak = history(&admin, &format!("{hour}&aggregation=max")).await;
    assert_eq!(
        counts(&peak),
        vec![row("2026-06-01T10:00:00.000Z", ["1.5", "1", "1", "0.5"])]
    );
    let mean = history(&api, &format!("{hour}&aggregation=avg")).await;
    assert_eq!(mean["aggregation"], "avg");
    // Runner-seconds over the hour: 150 running, 90 idle, 60 pending, 30 draining.
    assert_eq!(
        counts(&mean),
        vec![row(
            "2026-06-01T10:00:00.000Z",
            ["0.041667", "0.025", "0.016667", "0.008333"]
        )]
    );
    // By default: the last day, in hours (fal's pick), the busiest minute.
    let day = history(&api, "").await;
    assert_eq!(day["timeframe"], "hour");
    assert_eq!(day["aggregation"], "max");
    let points = counts(&day);
    assert_eq!(points.len(), 25, "{day}");
    assert_eq!(
        points.last().unwrap(),
        &row("2026-06-01T10:00:00.000Z", ["1.5", "1", "1", "0.5"])
    );
    assert!(points[..24]
        .iter()
        .all(|(_, c)| c.iter().all(|x| x.is_zero())));

    // Only the owner reads it; bad parameters are named.
    let other = app
        .raw(
            Method::GET,
            "/v1/serverless/apps/acme/hist/runners/history",
            Some(&beta),
            Body::None,
        )
        .await;
    other.expect_error(403, "authorization_error");
    assert_fal_schema(
        "GET",
        "/serverless/apps/{owner}/{name}/runners/history",
        403,
        &other.body,
    );
    for (path, field) in [
        (
            "/v1/serverless/apps/acme/hist/runners/history?aggregation=median",
            "aggregation",
        ),
        (
            "/v1/serverless/apps/acme/hist/runners/history?start=2026-01-01&end=2026-06-01",
            "start",
        ),
        (
            "/v1/serverless/apps/acme/hist/runners/history?timezone=UTC",
            "timezone",
        ),
        ("/v1/serverless/apps/acme/a%20b/runners/history", "name"),
    ] {
        let r = app.raw(Method::GET, path, Some(&api), Body::None).await;
        assert_eq!(
            r.expect_error(400, "validation_error")["field"],
            field,
            "{path}"
        );
    }
    app.assert_reconciled().await;
}

// ---------------------------------------------------------------------------------------------
// (e) A prepaid account run dry by its runner.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_runs_its_account_dry_locks_it_within_a_minute_and_is_named() {
    let app = TestApp::spawn_at(T0).await;
    let receiver = Receiver::start().await;
    app.op(
        Method::POST,
        "/v1/admin/webhooks",
        json!({ "url": receiver.url("/hook"), "events": ["account.locked"] }),
    )
    .await
    .expect(201);
    let caller = app.customer("tiny", Some(("0.05", "paid"))).await.key;
    let admin = app.create_key("tiny", "ADMIN").await;
    let per_second = round(machine_price(&app, "GPU-H100", false) * Decimal::from(USD)) * 8;
    let r = Runner::new("tiny", "big-model", "GPU-H100", 8).env("production");
    report_at(&app, T0, vec![r.event("RUNNING", T0)]).await;
    assert_eq!(app.account("tiny").await["locked"], false);

    // A minute later the sweep bills the minute: far more than the 0.05 USD left.
    app.advance(MINUTE).await;
    let account = app.account("tiny").await;
    assert_eq!(account["locked"], true, "{account}");
    assert_eq!(
        int(&account["balance_nano_usd"]),
        USD / 20 - 60 * per_second
    );
    let d = app.dispatcher();
    while !d.run_once().await.unwrap().is_empty() {}
    receiver.wait_for(1).await;
    // The last lock is the runner's (the account may have been told locked before its
    // credits were bought).
    let event = receiver.got().last().expect("an account.locked").json();
    assert_eq!(event["type"], "account.locked");
    assert_eq!(event["username"], "tiny");
    assert_eq!(event["data"]["lock_reason"], "exhausted_balance");
    let running = event["data"]["running_runners"]
        .as_array()
        .expect("runners");
    assert_eq!(running.len(), 1, "{event}");
    assert_eq!(running[0]["runner_id"], r.id.as_str());
    assert_eq!(running[0]["app"], "big-model");
    assert_eq!(running[0]["environment"], "production");
    assert_eq!(running[0]["machine_type"], "GPU-H100");
    assert_eq!(running[0]["num_gpus"], 8);
    assert_eq!(running[0]["state"], "RUNNING");
    // The customer's requests are refused; the runner is the platform's to stop.
    let (_, refused) = app.submit(&caller, "fal-ai/flux/dev").await;
    refused.expect_error(403, "account_locked");

    // It never reports again: billed up to its last report plus the grace (300 s), no more.
    for _ in 0..10 {
        app.advance(MINUTE).await;
    }
    let billed = 300 * per_second;
    assert_eq!(app.position("tiny").await.0, USD / 20 - billed);
    let usage = get(
        &app,
        &admin,
        "/v1/serverless/usage?start=2026-06-01&end=2026-06-02&expand=summary",
    )
    .await;
    assert_eq!(total_nanos(&rows(&usage)), billed);
    assert_eq!(dec(&rows(&usage)[0]["quantity"]), Decimal::from(2_400));

    // When it reports again the gap stays unbilled; it is billed from the report on.
    let back = T0 + 12 * MINUTE;
    let results = report_at(&app, back, vec![r.event("RUNNING", back)]).await;
    assert_eq!(int(&results[0]["billed_nano_usd"]), 0);
    app.advance(MINUTE).await;
    assert_eq!(
        app.position("tiny").await.0,
        USD / 20 - billed - 60 * per_second
    );
    app.assert_reconciled().await;
}

// ---------------------------------------------------------------------------------------------
// FOCUS: serverless rows.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_focus_report_names_runner_time_serverless_and_passes_the_validator() {
    let app = TestApp::spawn_at(T0).await;
    app.customer("acme", Some(("20", "paid"))).await;
    let admin = app.create_key("acme", "ADMIN").await;
    app.usage_events(
        json!([{ "event_id": new_id(), "endpoint_id": "fal-ai/flux/dev",
        "username": "acme", "timestamp": rfc3339(T0), "status_code": 200,
        "output": { "images": [{ "width": 1024, "height": 1024 }] } }]),
    )
    .await
    .expect(200);
    let r1 = Runner::new("acme", "img-gen", "GPU-H100", 2).env("production");
    let r2 = Runner::new("acme", "img-gen", "GPU-H100", 1)
        .env("production")
        .surge();
    report_at(
        &app,
        T0,
        vec![r1.event("RUNNING", T0), r2.event("RUNNING", T0)],
    )
    .await;
    let stop = T0 + 90 * SECOND;
    report_at(
        &app,
        stop,
        vec![r1.event("TERMINATED", stop), r2.event("TERMINATED", stop)],
    )
    .await;
    app.set_now(T0 + HOUR);

    let r = app
        .raw(
            Method::GET,
            "/v1/account/focus?source=estimate&start=2026-06-01&end=2026-06-02",
            Some(&admin),
            Body::None,
        )
        .await;
    r.expect(200);
    let csv = parse_csv(&r.text);
    let usage = csv.of("Usage");
    let serverless: Vec<&Vec<String>> = usage
        .iter()
        .copied()
        .filter(|row| csv.get(row, "ServiceName") == "Serverless")
        .collect();
    assert_eq!(
        serverless.len(),
        2,
        "standard and surge apart: {:?}",
        csv.rows
    );
    for row in &serverless {
        assert_eq!(csv.get(row, "ServiceCategory"), "Compute");
        assert_eq!(csv.get(row, "ResourceId"), "acme/img-gen");
        assert_eq!(csv.get(row, "ResourceName"), "img-gen");
        assert_eq!(csv.get(row, "SkuId"), "GPU-H100");
        assert_eq!(csv.get(row, "PricingUnit"), "second");
        assert!(csv.get(row, "ChargeDescription").contains("img-gen"));
    }
    let standard = serverless
        .iter()
        .find(|row| csv.get(row, "ConsumedQuantity") == "180.0")
        .expect("the standard row: 90 s × 2 GPUs");
    let price = machine_price(&app, "GPU-H100", false);
    assert_eq!(d(csv.get(standard, "ListUnitPrice")), price.normalize());
    // Model rows keep theirs.
    let model = usage
        .iter()
        .find(|row| csv.get(row, "ResourceId") == "fal-ai/flux/dev")
        .expect("the image's row");
    assert_eq!(csv.get(model, "ServiceName"), "Model APIs");
    // The report's usage is what left the balance.
    let (balance, _, _) = app.position("acme").await;
    assert_eq!(csv.nanos(&usage, "EffectiveCost"), 20 * USD - balance);
    assert_focus_valid(&r.text);
    app.assert_reconciled().await;
}
