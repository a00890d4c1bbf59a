//! The serverless page (`/dashboard/serverless`): the same rows and totals as the API's
//! `GET /v1/serverless/usage?expand=summary` for presets, dates and time zones, surge time in
//! rows of its own; the runner-state history's table holding the query's counts; the account
//! that never ran a runner told what the page is for; only the session's account shown; the
//! overview counting serverless spend with what the ledger charged, the usage page models only;
//! the console's card of live runners; both charts drawn in a real browser.

use crate::common::browser::Browser;
use crate::common::{
    attr, dec, ms, nanos, tags, Customer, DashApp, Resp, Runner, Visitor, MINUTE_MS, USD,
};
use reqwest::Method;
use rust_decimal::Decimal;

/// One row of the page's cost table or of the API's summary.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Row {
    app: String,
    environment: String,
    machine_type: String,
    is_surge: bool,
    quantity: Decimal,
    unit_price: Decimal,
    discount_nanos: i64,
    total_nanos: i64,
}

fn int(text: &str) -> i64 {
    text.parse()
        .unwrap_or_else(|e| panic!("an integer: {text}: {e}"))
}

/// The rows of the page's cost table, in order.
fn table_rows(page: &str) -> Vec<Row> {
    tags(page, "<tr data-app=")
        .into_iter()
        .map(|t| {
            let a = |name: &str| attr(t, name).unwrap_or_else(|| panic!("{name} in {t}"));
            Row {
                app: a("data-app"),
                environment: a("data-environment"),
                machine_type: a("data-machine-type"),
                is_surge: a("data-surge") == "true",
                quantity: dec(&a("data-quantity")),
                unit_price: dec(&a("data-unit-price")),
                discount_nanos: int(&a("data-discount-nano-usd")),
                total_nanos: int(&a("data-nano-usd")),
            }
        })
        .collect()
}

/// A footer row of the cost table (`serverless-total`, `-standard`, `-surge`): its
/// GPU-seconds and cost in nano-USD, if the table has it.
fn footer(page: &str, id: &str) -> Option<(Decimal, i64)> {
    let t = tags(page, &format!("<tr id=\"{id}\""));
    let t = t.first()?;
    Some((
        dec(&attr(t, "data-quantity").expect("its GPU-seconds")),
        int(&attr(t, "data-nano-usd").expect("its cost")),
    ))
}

/// The API's summary rows for a query string (sorted), and their summed `cost_total`.
async fn api_summary(app: &DashApp, c: &Customer, query: &str) -> (Vec<Row>, i64) {
    let body = app
        .call(
            Method::GET,
            &format!("/v1/serverless/usage?expand=summary&{query}"),
            &c.admin_key,
            None,
        )
        .await
        .expect(200)
        .json();
    let mut rows: Vec<Row> = body["summary"]
        .as_array()
        .expect("a summary")
        .iter()
        .map(|s| Row {
            app: s["app"].as_str().expect("app").to_string(),
            environment: s["environment"].as_str().unwrap_or_default().to_string(),
            machine_type: s["machine_type"].as_str().expect("machine").to_string(),
            is_surge: s["is_surge"].as_bool().expect("is_surge"),
            quantity: dec(&s["quantity"].to_string()),
            unit_price: dec(&s["unit_price"].to_string()),
            discount_nanos: nanos(dec(&s["cost_discount"].to_string())),
            total_nanos: nanos(dec(&s["cost_total"].to_string())),
        })
        .collect();
    rows.sort();
    let total = rows.iter().map(|r| r.total_nanos).sum();
    (rows, total)
}

/// Asserts the page's table is the API's summary for the same range, row by row and in its
/// totals (standard, surge, all); returns the total.
#[track_caller]
fn same_as_api(page: &Resp, api: &(Vec<Row>, i64)) -> i64 {
    let mut rows = table_rows(&page.text);
    rows.sort();
    assert_eq!(rows, api.0, "the table's rows are the API's summary");
    let (quantity, total) = footer(&page.text, "serverless-total").expect("a total row");
    assert_eq!(total, api.1, "the total is the API's summed cost_total");
    assert_eq!(quantity, rows.iter().map(|r| r.quantity).sum::<Decimal>());
    let part = |surge: bool| {
        let of: Vec<&Row> = rows.iter().filter(|r| r.is_surge == surge).collect();
        (
            of.iter().map(|r| r.quantity).sum::<Decimal>(),
            of.iter().map(|r| r.total_nanos).sum::<i64>(),
        )
    };
    if rows.iter().any(|r| r.is_surge) {
        assert_eq!(footer(&page.text, "serverless-standard"), Some(part(false)));
        assert_eq!(footer(&page.text, "serverless-surge"), Some(part(true)));
    } else {
        assert_eq!(footer(&page.text, "serverless-surge"), None);
    }
    total
}

/// The runners of the tests, after [`T0`](crate::common::T0) (2026-11-24T10:00Z):
/// - `tts` (GPU-A100 × 1): set up at 23:55 on the 24th, running across midnight, terminated
///   at 00:02:15 on the 25th: 435 billed seconds, 300 of them on the 24th (UTC);
/// - `img-gen` in `production` (GPU-H100 × 2) on the 25th: pending 20 s, then set up,
///   running, idle and draining until 09:08:40: 500 billed seconds, 1000 GPU-seconds;
/// - `img-gen` without an environment at surge prices (GPU-H100 × 1): running from 09:02:10
///   to 09:05:50, 220 GPU-seconds.
///
/// Each event is reported at its time and the runners settled there, as the sweep does every
/// minute. Returns the runners (tts, img-gen, surge).
async fn run_the_apps(app: &DashApp, username: &str) -> [Runner; 3] {
    let tts = Runner::new(username, "tts", "GPU-A100", 1);
    let img = Runner::new(username, "img-gen", "GPU-H100", 2).environment("production");
    let surge = Runner::new(username, "img-gen", "GPU-H100", 1).surge();
    let mut events = vec![
        (&tts, "SETUP", "2026-11-24T23:55:00Z"),
        (&tts, "RUNNING", "2026-11-24T23:55:30Z"),
        (&tts, "RUNNING", "2026-11-24T23:58:00Z"),
        (&tts, "RUNNING", "2026-11-25T00:01:00Z"),
        (&tts, "TERMINATED", "2026-11-25T00:02:15Z"),
        (&img, "PENDING", "2026-11-25T09:00:00Z"),
        (&img, "SETUP", "2026-11-25T09:00:20Z"),
        (&img, "RUNNING", "2026-11-25T09:01:00Z"),
        (&img, "RUNNING", "2026-11-25T09:04:00Z"),
        (&img, "IDLE", "2026-11-25T09:06:30Z"),
        (&img, "DRAINING", "2026-11-25T09:08:00Z"),
        (&img, "TERMINATED", "2026-11-25T09:08:40Z"),
        (&surge, "RUNNING", "2026-11-25T09:02:10Z"),
        (&surge, "RUNNING", "2026-11-25T09:05:00Z"),
        (&surge, "TERMINATED", "2026-11-25T09:05:50Z"),
    ];
    events.sort_by_key(|(_, _, at)| ms(at));
    for (runner, state, at) in events {
        app.runner_events(ms(at), vec![runner.event(state, ms(at))])
            .await;
    }
    [tts, img, surge]
}

/// The engine's time at which the tests look: 2026-11-25T12:00Z.
fn noon() -> i64 {
    ms("2026-11-25T12:00:00Z")
}

/// The account's balance in nano-USD, as the operator API answers it.
async fn balance(app: &DashApp, c: &Customer) -> i64 {
    app.op_get(&format!("/v1/admin/accounts/{}", c.username))
        .await
        .expect(200)
        .json()["balance_nano_usd"]
        .as_i64()
        .expect("a balance")
}

#[tokio::test]
async fn the_table_is_the_apis_usage_with_surge_apart_for_every_range() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("100.00")).await;
    let before = balance(&app, &c).await;
    run_the_apps(&app, "acme").await;
    app.settle_at(noon()).await;
    let v = app.signed_in("acme").await;

    // This month (the default): every runner.
    let page = v.page("/dashboard/serverless").await;
    let month = api_summary(&app, &c, "start=2026-11-01&end=2026-11-26").await;
    let total = same_as_api(&page, &month);
    assert_eq!(
        total,
        before - balance(&app, &c).await,
        "the month's cost is what the ledger charged"
    );
    let rows = table_rows(&page.text);
    let row = |app_name: &str, surge: bool| {
        rows.iter()
            .find(|r| r.app == app_name && r.is_surge == surge)
            .unwrap_or_else(|| panic!("a row of {app_name} (surge {surge})"))
            .clone()
    };
    assert_eq!(rows.len(), 3, "{rows:?}");
    let tts = row("tts", false);
    assert_eq!((tts.quantity, tts.environment.as_str()), (dec("435"), ""));
    let img = row("img-gen", false);
    assert_eq!(
        (
            img.quantity,
            img.environment.as_str(),
            img.machine_type.as_str()
        ),
        (dec("1000"), "production", "GPU-H100")
    );
    let surge = row("img-gen", true);
    assert_eq!(surge.quantity, dec("220"));
    assert!(
        surge.unit_price > img.unit_price,
        "surge time at the surge price, apart from the standard row"
    );
    // A runner under one price is charged one rounding of its whole time.
    let cost = |q: Decimal, price: Decimal| {
        nanos(
            (q * price)
                .round_dp_with_strategy(9, rust_decimal::RoundingStrategy::MidpointAwayFromZero),
        )
    };
    assert_eq!(img.total_nanos, cost(img.quantity, img.unit_price));
    assert_eq!(surge.total_nanos, cost(surge.quantity, surge.unit_price));
    assert!(page
        .text
        .contains("Showing <strong>This month: 2026-11-01 to 2026-11-25"));

    // Today (the 25th, hour buckets): tts's last 135 seconds and img-gen.
    let page = v.page("/dashboard/serverless?range=today").await;
    same_as_api(
        &page,
        &api_summary(&app, &c, "start=2026-11-25&end=2026-11-26").await,
    );
    assert_eq!(
        table_rows(&page.text)
            .iter()
            .find(|r| r.app == "tts")
            .map(|r| r.quantity),
        Some(dec("135"))
    );
    // A bar per hour of the day; the history's hours up to the current one.
    assert_eq!(
        page.text.matches("<th scope=\"row\" data-x=").count(),
        24 + 13
    );

    // The 24th in UTC: tts's first 300 seconds only.
    let page = v
        .page("/dashboard/serverless?start=2026-11-24&end=2026-11-24")
        .await;
    let day = api_summary(&app, &c, "start=2026-11-24&end=2026-11-25").await;
    same_as_api(&page, &day);
    assert_eq!(day.0.len(), 1);
    assert_eq!(day.0[0].quantity, dec("300"));
    assert_eq!(
        footer(&page.text, "serverless-surge"),
        None,
        "no surge time"
    );

    // The 24th in Berlin ends at 23:00 UTC, before tts set up: nothing billed.
    let page = v
        .page("/dashboard/serverless?start=2026-11-24&end=2026-11-24&tz=Europe/Berlin")
        .await;
    let berlin = api_summary(
        &app,
        &c,
        "start=2026-11-24&end=2026-11-25&timezone=Europe/Berlin",
    )
    .await;
    assert!(berlin.0.is_empty());
    assert!(table_rows(&page.text).is_empty());
    assert!(page
        .text
        .contains("No serverless usage from 2026-11-24 to 2026-11-24"));
    // The 25th in Tokyo (15:00 UTC on the 24th to 15:00 on the 25th): every runner.
    let page = v
        .page("/dashboard/serverless?start=2026-11-25&end=2026-11-25&tz=Asia/Tokyo")
        .await;
    let tokyo = api_summary(
        &app,
        &c,
        "start=2026-11-25&end=2026-11-26&timezone=Asia/Tokyo",
    )
    .await;
    assert_eq!(same_as_api(&page, &tokyo), total);

    // The spend chart stacks the apps: img-gen's series holds both its rows.
    let page = v.page("/dashboard/serverless").await;
    assert!(page.text.contains("id=\"serverless-chart\""));
    assert!(page
        .text
        .contains("<th class=\"num\" scope=\"col\" data-series>img-gen</th>"));
    assert!(page
        .text
        .contains("<th class=\"num\" scope=\"col\" data-series>tts</th>"));
    app.assert_reconciled().await;
}

/// The history table's rows: the bucket's start (RFC 3339) and its four counts.
fn history_rows(page: &str) -> Vec<(String, [Decimal; 4])> {
    let Some(at) = page.find("id=\"history-table\"") else {
        return Vec::new();
    };
    let table = &page[at..at + page[at..].find("</table>").expect("a closed table")];
    table
        .split("<tr data-timestamp=\"")
        .skip(1)
        .map(|row| {
            let ts = row[..row.find('"').expect("its timestamp")].to_string();
            let values: Vec<Decimal> = row
                .split("data-value=\"")
                .skip(1)
                .map(|v| dec(&v[..v.find('"').expect("a value")]))
                .collect();
            (ts, values.try_into().expect("four counts"))
        })
        .collect()
}

/// The API's runner-state history of `app_name` (`aggregation=max`) for a query string.
async fn api_history(
    app: &DashApp,
    c: &Customer,
    app_name: &str,
    query: &str,
) -> Vec<(String, [Decimal; 4])> {
    let body = app
        .call(
            Method::GET,
            &format!(
                "/v1/serverless/apps/{}/{app_name}/runners/history?aggregation=max&{query}",
                c.username
            ),
            &c.api_key,
            None,
        )
        .await
        .expect(200)
        .json();
    body["history"]
        .as_array()
        .expect("a history")
        .iter()
        .map(|p| {
            let n = |k: &str| dec(&p[k].to_string());
            (
                p["timestamp"].as_str().expect("a timestamp").to_string(),
                [n("running"), n("idle"), n("pending"), n("draining")],
            )
        })
        .collect()
}

/// The `<option>`s of the app select, and the one selected.
fn app_options(page: &str) -> (Vec<String>, Option<String>) {
    let at = page.find("<select id=\"app\"").expect("the app select");
    let select = &page[at..at + page[at..].find("</select>").expect("closed")];
    let mut all = Vec::new();
    let mut selected = None;
    for t in tags(select, "<option ") {
        let value = attr(t, "value").expect("a value");
        if t.contains(" selected") {
            selected = Some(value.clone());
        }
        all.push(value);
    }
    (all, selected)
}

#[tokio::test]
async fn the_history_table_holds_the_querys_counts_for_the_chosen_app() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("100.00")).await;
    run_the_apps(&app, "acme").await;
    app.settle_at(noon()).await;
    let v = app.signed_in("acme").await;

    // Today, by hour: the first app (img-gen) by default.
    let page = v.page("/dashboard/serverless?range=today").await;
    let (apps, chosen) = app_options(&page.text);
    assert_eq!(apps, ["img-gen", "tts"]);
    assert_eq!(chosen.as_deref(), Some("img-gen"));
    let shown = history_rows(&page.text);
    let api = api_history(
        &app,
        &c,
        "img-gen",
        "start=2026-11-25T00:00:00Z&end=2026-11-26T00:00:00Z&timeframe=hour",
    )
    .await;
    assert_eq!(shown.len(), 13, "00:00 to 12:00, the current hour included");
    assert_eq!(
        shown.iter().map(|(t, c)| (ms(t), *c)).collect::<Vec<_>>(),
        api.iter().map(|(t, c)| (ms(t), *c)).collect::<Vec<_>>(),
        "the page's table is the API's history"
    );
    // 09:00: the standard runner (2 GPUs, one runner) and the surge one ran at once; the
    // busiest minute of pending is 20 s of one runner.
    let nine = shown
        .iter()
        .find(|(t, _)| ms(t) == ms("2026-11-25T09:00:00Z"))
        .expect("the 09:00 bucket")
        .1;
    assert_eq!(
        nine[0],
        dec("2"),
        "two runners running in its busiest minute"
    );
    assert_eq!(
        nine[2],
        dec("1"),
        "pending then setup: one runner all of 09:00"
    );
    assert!(nine[1] > Decimal::ZERO && nine[3] > Decimal::ZERO);

    // The other app, through the select's form; the range kept.
    let page = v.page("/dashboard/serverless?range=today&app=tts").await;
    assert_eq!(app_options(&page.text).1.as_deref(), Some("tts"));
    let api = api_history(
        &app,
        &c,
        "tts",
        "start=2026-11-25T00:00:00Z&end=2026-11-26T00:00:00Z&timeframe=hour",
    )
    .await;
    let shown = history_rows(&page.text);
    assert_eq!(shown.len(), api.len());
    for ((t, counts), (at, expected)) in shown.iter().zip(&api) {
        assert_eq!((ms(t), counts), (ms(at), expected));
    }
    assert_eq!(shown[0].1[0], dec("1"), "tts ran at 00:01");
    assert!(page
        .text
        .contains("<input type=\"hidden\" name=\"range\" value=\"today\">"));
    // Presets keep the app.
    assert!(page
        .text
        .contains("href=\"/dashboard/serverless?range=7d&amp;app=tts\""));

    // This month, by day (UTC).
    let page = v.page("/dashboard/serverless?app=img-gen").await;
    let api = api_history(
        &app,
        &c,
        "img-gen",
        "start=2026-11-01T00:00:00Z&end=2026-11-26T00:00:00Z&timeframe=day",
    )
    .await;
    let shown = history_rows(&page.text);
    assert_eq!(shown.len(), 25);
    assert_eq!(
        shown.iter().map(|(t, c)| (ms(t), *c)).collect::<Vec<_>>(),
        api.iter().map(|(t, c)| (ms(t), *c)).collect::<Vec<_>>()
    );
    app.assert_reconciled().await;
}

#[tokio::test]
async fn an_account_without_runners_is_told_what_the_page_is_for() {
    let app = DashApp::spawn().await;
    let c = app.customer("newco", Some("10.00")).await;
    app.usage(&c, "fal-ai/flux/schnell", "2", app.now_ms())
        .await;
    let v = app.signed_in("newco").await;
    let page = v.page("/dashboard/serverless").await;
    assert!(page.text.contains("No serverless apps yet"));
    assert!(!page.text.contains("<figure"), "no empty chart");
    assert!(!page.text.contains("<table"), "no empty table");
    assert!(page.text.contains("aria-current=\"page\">Serverless</a>"));
    assert!(page.text.contains("href=\"/dashboard/usage\""));
    app.assert_reconciled().await;
}

#[tokio::test]
async fn the_page_shows_the_sessions_account_only() {
    let app = DashApp::spawn().await;
    let acme = app.customer("acme", Some("100.00")).await;
    let globex = app.customer("globex", Some("100.00")).await;
    let secret = Runner::new("globex", "secret-app", "GPU-L40", 4);
    let t = ms("2026-11-24T11:00:00Z");
    app.runner_events(t, vec![secret.event("RUNNING", t)]).await;
    app.runner_events(
        t + 2 * MINUTE_MS,
        vec![secret.event("TERMINATED", t + 2 * MINUTE_MS)],
    )
    .await;
    run_the_apps(&app, "acme").await;
    app.settle_at(noon()).await;

    let v = app.signed_in("acme").await;
    let page = v.page("/dashboard/serverless").await;
    assert!(!page.text.contains("secret-app"));
    same_as_api(
        &page,
        &api_summary(&app, &acme, "start=2026-11-01&end=2026-11-26").await,
    );
    // Another account's app is not one of this account's: refused, nothing of it shown.
    let r = v.get("/dashboard/serverless?app=secret-app").await;
    r.expect(400);
    assert!(r.text.contains("No app of this account is named"));
    assert!(!r.text.contains("history-table"));
    // Its own session sees only its own app, whatever the query string says.
    let g = app.signed_in("globex").await;
    let page = g.page("/dashboard/serverless?app=secret-app").await;
    let rows = table_rows(&page.text);
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].app.as_str(), rows[0].quantity),
        ("secret-app", dec("480"))
    );
    same_as_api(
        &page,
        &api_summary(&app, &globex, "start=2026-11-01&end=2026-11-26").await,
    );
    assert_eq!(app_options(&page.text).0, ["secret-app"]);
    assert_eq!(g.get("/dashboard/serverless?app=img-gen").await.status, 400);
    // Without a session: sent to sign in.
    let anon = app.visitor();
    let r = anon.get("/dashboard/serverless").await;
    assert_eq!(r.status.as_u16(), 303);
    // Bad input says what is wrong.
    let r = v
        .get("/dashboard/serverless?start=2026-11-20&end=2026-11-01")
        .await;
    r.expect(400);
    assert!(r.text.contains("before the start date"));
    app.assert_reconciled().await;
}

/// The names of the series of a chart's table (its `data-series` headers), in order.
fn series(page: &str, figure: &str) -> Vec<String> {
    let at = page
        .find(&format!("id=\"{figure}\""))
        .unwrap_or_else(|| panic!("the chart {figure}"));
    let fig = &page[at..at + page[at..].find("</figure>").expect("closed")];
    fig.split("data-series>")
        .skip(1)
        .map(|s| s[..s.find('<').expect("a name")].replace("&amp;", "&"))
        .collect()
}

/// "$1,234.56" as a decimal.
fn dollars(text: &str) -> Decimal {
    dec(&text.trim().replace(['$', ','], ""))
}

async fn spend_month(v: &Visitor) -> Decimal {
    let page = v.page("/dashboard").await;
    let at = page
        .text
        .find("id=\"spend-month\">")
        .expect("the month's spend")
        + 17;
    dollars(&page.text[at..at + page.text[at..].find('<').expect("its end")])
}

#[tokio::test]
async fn the_overview_counts_serverless_spend_and_the_usage_page_models_only() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("100.00")).await;
    let before = balance(&app, &c).await;
    app.usage(&c, "fal-ai/flux/dev", "3", app.now_ms()).await;
    run_the_apps(&app, "acme").await;
    app.settle_at(noon()).await;
    let charged = before - balance(&app, &c).await;
    let serverless = api_summary(&app, &c, "start=2026-11-01&end=2026-11-26")
        .await
        .1;
    assert!(
        serverless > 0 && charged > serverless,
        "both kinds were charged"
    );

    let v = app.signed_in("acme").await;
    // The overview's month is everything the ledger charged, to the cent.
    let cents = Decimal::new(charged, 9)
        .round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
    assert_eq!(spend_month(&v).await, cents);
    let page = v.page("/dashboard").await;
    let names = series(&page.text, "spend-30d");
    for name in [
        "fal-ai/flux/dev",
        "img-gen (production) on GPU-H100",
        "img-gen on GPU-H100 (surge)",
        "tts on GPU-A100",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
    // The console's account page counts the same spend.
    let op = app.operator().await;
    let account = op.page("/console/accounts/acme").await;
    let at = account
        .text
        .find("id=\"spend-month\">")
        .expect("the month's spend")
        + 17;
    assert_eq!(
        dollars(&account.text[at..at + account.text[at..].find('<').expect("end")]),
        cents
    );

    // The usage page: model endpoints only, and the way to the serverless page.
    let usage = v.page("/dashboard/usage").await;
    let endpoints: Vec<String> = tags(&usage.text, "<tr data-endpoint=")
        .iter()
        .map(|t| attr(t, "data-endpoint").expect("an endpoint"))
        .collect();
    assert_eq!(endpoints, ["fal-ai/flux/dev"]);
    let total = tags(&usage.text, "<td class=\"num\" id=\"usage-total\"");
    assert_eq!(
        int(&attr(total[0], "data-nano-usd").expect("the total")),
        charged - serverless
    );
    assert!(usage.text.contains("href=\"/dashboard/serverless\""));
    app.assert_reconciled().await;
}

#[tokio::test]
async fn the_console_lists_the_accounts_live_runners() {
    let app = DashApp::spawn().await;
    app.customer("acme", Some("100.00")).await;
    let op = app.operator().await;
    let page = op.page("/console/accounts/acme").await;
    assert!(
        !page.text.contains("id=\"serverless\""),
        "no card without runners"
    );

    let live = Runner::new("acme", "img-gen", "GPU-H100", 2).environment("production");
    let done = Runner::new("acme", "tts", "GPU-A100", 1);
    let t = ms("2026-11-24T10:30:00Z");
    app.runner_events(t, vec![live.event("SETUP", t), done.event("RUNNING", t)])
        .await;
    app.runner_events(
        t + MINUTE_MS,
        vec![
            live.event("RUNNING", t + MINUTE_MS),
            done.event("TERMINATED", t + MINUTE_MS),
        ],
    )
    .await;
    let page = op.page("/console/accounts/acme").await;
    let rows = tags(&page.text, "<tr data-runner-id=");
    assert_eq!(rows.len(), 1, "the live runner only");
    assert_eq!(
        attr(rows[0], "data-runner-id").as_deref(),
        Some(live.id.as_str())
    );
    assert_eq!(attr(rows[0], "data-state").as_deref(), Some("RUNNING"));
    assert!(
        page.text.contains("2026-11-24 10:31 UTC"),
        "since its state began"
    );
    assert!(page.text.contains("href=\"#serverless\""));

    // Past its grace without a report, it is no longer live.
    app.settle_at(t + MINUTE_MS + 6 * MINUTE_MS).await;
    let page = op.page("/console/accounts/acme").await;
    assert!(!page.text.contains("id=\"serverless\""));
    app.assert_reconciled().await;
}

#[tokio::test]
async fn in_a_browser_both_charts_draw_over_their_tables() {
    let app = DashApp::spawn().await;
    app.customer("acme", Some("100.00")).await;
    run_the_apps(&app, "acme").await;
    app.settle_at(noon()).await;
    let b = Browser::start(&app.address).await;
    b.goto(&app.sign_in_link("acme").await).await;
    b.goto("/dashboard/serverless?range=7d").await;
    assert_eq!(
        b.attr("#serverless-chart", "data-drawn-series")
            .await
            .as_deref(),
        Some("2"),
        "one series per app"
    );
    assert_eq!(
        b.attr("#runner-history", "data-drawn-series")
            .await
            .as_deref(),
        Some("4"),
        "running, idle, pending, draining"
    );
    assert_eq!(b.count("#runner-history .uplot").await, 1);
    let total: i64 = b
        .attr("#serverless-total", "data-nano-usd")
        .await
        .expect("the total")
        .parse()
        .expect("an integer");
    assert!(total > 0 && total < 100 * USD);
    b.screenshots("serverless").await;
    b.js("document.getElementById('serverless-table').scrollIntoView();")
        .await;
    b.screenshots("serverless-table").await;
    b.js("document.getElementById('runner-history').scrollIntoView();")
        .await;
    b.screenshots("serverless-history").await;
    b.close().await;
    app.assert_reconciled().await;
}
