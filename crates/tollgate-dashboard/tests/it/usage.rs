//! The usage page (`/dashboard/usage`) and its CSV: the same rows and totals as the API's
//! `GET /v1/models/usage?expand=summary`, for presets, custom dates, time zones and keys; bad
//! input answered 400 with the reason; the chart drawn in a real browser.

use crate::common::browser::Browser;
use crate::common::{attr, dec, ms, nanos, tags, Customer, DashApp, Resp, DAY_MS, T0};
use fantoccini::Locator;
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{json, Value};

/// One row of a usage table or CSV: endpoint, unit, quantity, unit price, total (nano-USD).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Row {
    endpoint: String,
    unit: String,
    quantity: Decimal,
    unit_price: Decimal,
    total_nanos: i64,
}

/// The rows of the page's usage table, in order.
fn table_rows(page: &str) -> Vec<Row> {
    tags(page, "<tr data-endpoint=")
        .into_iter()
        .map(|t| Row {
            endpoint: attr(t, "data-endpoint").expect("endpoint"),
            unit: attr(t, "data-unit").expect("unit"),
            quantity: dec(&attr(t, "data-quantity").expect("quantity")),
            unit_price: dec(&attr(t, "data-unit-price").expect("unit price")),
            total_nanos: attr(t, "data-nano-usd")
                .expect("total")
                .parse()
                .expect("an integer"),
        })
        .collect()
}

/// The table's total row, nano-USD.
fn table_total(page: &str) -> i64 {
    let t = tags(page, "<td class=\"num\" id=\"usage-total\"");
    assert_eq!(t.len(), 1, "one total cell");
    attr(t[0], "data-nano-usd")
        .expect("the total's nano-USD")
        .parse()
        .expect("an integer")
}

/// The API's summary rows for a query string, and their summed `cost_total` (nano-USD).
async fn api_summary(app: &DashApp, c: &Customer, query: &str) -> (Vec<Row>, i64) {
    let r = app
        .call(
            Method::GET,
            &format!("/v1/models/usage?expand=summary&{query}"),
            &c.admin_key,
            None,
        )
        .await;
    let body = r.expect(200).json();
    let mut rows: Vec<Row> = body["summary"]
        .as_array()
        .expect("a summary")
        .iter()
        .map(|s| Row {
            endpoint: s["endpoint_id"].as_str().expect("endpoint").to_string(),
            unit: s["unit"].as_str().expect("unit").to_string(),
            quantity: dec(&s["quantity"].to_string()),
            unit_price: dec(&s["unit_price"].to_string()),
            total_nanos: nanos(dec(&s["cost_total"].to_string())),
        })
        .collect();
    rows.sort();
    let total = rows.iter().map(|r| r.total_nanos).sum();
    (rows, total)
}

/// Asserts the page's table equals the API's summary for `api_query`, row by row and in
/// total, and returns the total.
#[track_caller]
fn same_as_api(page: &Resp, api: &(Vec<Row>, i64)) -> i64 {
    let mut rows = table_rows(&page.text);
    rows.sort();
    assert_eq!(rows, api.0, "the table's rows are the API's summary");
    let total = table_total(&page.text);
    assert_eq!(
        total, api.1,
        "the table's total is the API's summed cost_total"
    );
    assert_eq!(total, rows.iter().map(|r| r.total_nanos).sum::<i64>());
    total
}

/// The endpoints of the page's table.
fn endpoints(page: &str) -> Vec<String> {
    let mut e: Vec<String> = table_rows(page).into_iter().map(|r| r.endpoint).collect();
    e.sort();
    e.dedup();
    e
}

/// The `href` of the preset link whose text is `label`, and whether it is marked current.
fn preset_link(page: &str, label: &str) -> (String, bool) {
    let end = page
        .find(&format!(">{label}</a>"))
        .unwrap_or_else(|| panic!("a preset link {label}"));
    let start = page[..end].rfind("<a ").expect("its tag");
    let tag = &page[start..end];
    (
        attr(tag, "href").expect("a href").replace("&amp;", "&"),
        tag.contains("aria-current=\"true\""),
    )
}

/// How many rows the chart's table has (its buckets).
fn buckets(page: &str) -> usize {
    page.matches(" data-x=\"").count()
}

/// A second API key of the account; returns `key_id:secret`.
async fn another_key(app: &DashApp, c: &Customer, alias: &str) -> String {
    let r = app
        .op(
            Method::POST,
            &format!("/v1/admin/accounts/{}/keys", c.username),
            json!({"scope": "API", "alias": alias}),
        )
        .await;
    r.expect(201).json()["key"]
        .as_str()
        .expect("a key")
        .to_string()
}

fn key_id(key: &str) -> &str {
    key.split(':').next().expect("key_id:secret")
}

fn image() -> Value {
    json!({ "images": [{ "width": 1024, "height": 1024 }] })
}

#[tokio::test]
async fn the_table_and_its_csv_equal_the_apis_summary_for_custom_dates() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("100.00")).await;
    let mut inside = 0;
    for (endpoint, units, at) in [
        ("fal-ai/nano-banana", "2", "2026-11-12T09:00:00Z"),
        ("fal-ai/nano-banana", "3", "2026-11-16T15:00:00Z"),
        ("fal-ai/flux/dev", "4", "2026-11-14T12:00:00Z"),
        ("fal-ai/flux/schnell", "10", "2026-11-18T23:59:00Z"),
        ("xai/grok-imagine-image", "1", "2026-11-10T00:30:00Z"),
        ("fal-ai/flux/dev", "1.5", "2026-11-10T23:59:00Z"),
    ] {
        inside += app.usage(&c, endpoint, units, ms(at)).await;
    }
    // Outside the range: before its first day, and the day after its last.
    app.usage(&c, "fal-ai/nano-banana", "5", ms("2026-11-09T23:59:00Z"))
        .await;
    app.usage(
        &c,
        "fal-ai/bytedance/seedream/v4/edit",
        "2",
        ms("2026-10-30T12:00:00Z"),
    )
    .await;
    app.usage(&c, "fal-ai/flux/dev", "7", ms("2026-11-19T00:00:00Z"))
        .await;

    let v = app.signed_in("acme").await;
    let page = v
        .page("/dashboard/usage?start=2026-11-10&end=2026-11-18")
        .await;
    let api = api_summary(&app, &c, "start=2026-11-10&end=2026-11-19").await;
    let total = same_as_api(&page, &api);
    assert_eq!(total, inside, "exactly the usage of the range's days");
    assert_eq!(
        endpoints(&page.text),
        [
            "fal-ai/flux/dev",
            "fal-ai/flux/schnell",
            "fal-ai/nano-banana",
            "xai/grok-imagine-image"
        ]
    );
    let rows = table_rows(&page.text);
    let banana = rows
        .iter()
        .find(|r| r.endpoint == "fal-ai/nano-banana")
        .expect("a row");
    assert_eq!(
        (banana.quantity, banana.unit_price, banana.total_nanos),
        (dec("5"), dec("0.039"), 195_000_000)
    );
    let flux = rows
        .iter()
        .find(|r| r.endpoint == "fal-ai/flux/dev")
        .expect("a row");
    assert_eq!(
        (flux.quantity, flux.unit.as_str()),
        (dec("5.5"), "megapixel")
    );
    assert!(
        page.text.contains("2026-11-10 to 2026-11-18"),
        "says the range"
    );
    assert!(page.text.contains("<strong>UTC</strong>"), "says the zone");
    // Nine days: a bar per day.
    assert_eq!(buckets(&page.text), 9);
    assert!(page.text.contains(">$"), "amounts in USD");

    // The CSV: the same rows and total, exact decimals, as an attachment.
    let csv = v
        .get("/dashboard/usage.csv?start=2026-11-10&end=2026-11-18")
        .await;
    csv.expect(200);
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    assert_eq!(
        csv.header("content-disposition"),
        Some("attachment; filename=\"usage-2026-11-10-to-2026-11-18-UTC.csv\"")
    );
    let mut lines = csv.text.split("\r\n").filter(|l| !l.is_empty());
    assert_eq!(
        lines.next(),
        Some(
            "endpoint_id,unit,quantity,unit_price_usd,percent_discount,cost_subtotal_usd,\
             cost_discount_usd,cost_total_usd,currency"
        )
    );
    let csv_rows: Vec<Row> = lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 9, "{l}");
            assert_eq!(f[8], "USD");
            assert_eq!(nanos(dec(f[5])) - nanos(dec(f[6])), nanos(dec(f[7])));
            Row {
                endpoint: f[0].to_string(),
                unit: f[1].to_string(),
                quantity: dec(f[2]),
                unit_price: dec(f[3]),
                total_nanos: nanos(dec(f[7])),
            }
        })
        .collect();
    assert_eq!(
        csv_rows,
        table_rows(&page.text),
        "one line per table row, in order"
    );
    assert_eq!(csv_rows.iter().map(|r| r.total_nanos).sum::<i64>(), total);
    // The CSV link carries the same parameters.
    assert!(page
        .text
        .contains("href=\"/dashboard/usage.csv?start=2026-11-10&amp;end=2026-11-18\""));
    app.assert_reconciled().await;
}

#[tokio::test]
async fn presets_pick_their_days_and_keep_the_zone_and_the_key() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("100.00")).await;
    // T0 is 2026-11-24T10:00Z, a Tuesday.
    let today = app
        .usage(&c, "fal-ai/flux/schnell", "3", ms("2026-11-24T02:00:00Z"))
        .await;
    let week = app
        .usage(&c, "fal-ai/nano-banana", "1", ms("2026-11-18T00:00:00Z"))
        .await;
    let month = app
        .usage(
            &c,
            "xai/grok-imagine-image",
            "2",
            ms("2026-11-01T00:00:00Z"),
        )
        .await;
    let mut last_month = 0;
    for at in ["2026-10-01T00:00:00Z", "2026-10-31T23:59:00Z"] {
        last_month += app
            .usage(&c, "fal-ai/bytedance/seedream/v4/edit", "1", ms(at))
            .await;
    }
    // Before last month, and the last minute before this week: in no preset but their own.
    app.usage(
        &c,
        "fal-ai/flux-pro/kontext",
        "1",
        ms("2026-09-30T23:59:00Z"),
    )
    .await;
    let eleventh = app
        .usage(&c, "fal-ai/flux/dev", "1", ms("2026-11-17T23:59:00Z"))
        .await;
    let v = app.signed_in("acme").await;

    let cases: [(&str, &str, i64, &[&str], usize); 4] = [
        ("today", "Today", today, &["fal-ai/flux/schnell"], 24),
        (
            "7d",
            "Last 7 days",
            today + week,
            &["fal-ai/flux/schnell", "fal-ai/nano-banana"],
            7,
        ),
        (
            "month",
            "This month",
            today + week + month + eleventh,
            &[
                "fal-ai/flux/dev",
                "fal-ai/flux/schnell",
                "fal-ai/nano-banana",
                "xai/grok-imagine-image",
            ],
            24,
        ),
        (
            "last-month",
            "Last month",
            last_month,
            &["fal-ai/bytedance/seedream/v4/edit"],
            31,
        ),
    ];
    let api_ranges = [
        "start=2026-11-24&end=2026-11-25",
        "start=2026-11-18&end=2026-11-25",
        "start=2026-11-01&end=2026-11-25",
        "start=2026-10-01&end=2026-11-01",
    ];
    for ((slug, label, want, names, bars), api_range) in cases.into_iter().zip(api_ranges) {
        let page = v.page(&format!("/dashboard/usage?range={slug}")).await;
        let total = same_as_api(&page, &api_summary(&app, &c, api_range).await);
        assert_eq!(total, want, "{slug}");
        assert_eq!(endpoints(&page.text), names, "{slug}");
        assert_eq!(buckets(&page.text), bars, "{slug}: its buckets");
        for p in ["Today", "Last 7 days", "This month", "Last month"] {
            assert_eq!(
                preset_link(&page.text, p).1,
                p == label,
                "{slug}: {p} marked"
            );
        }
        assert!(
            page.text.contains(&format!("<strong>{label}: ")),
            "{slug} named"
        );
    }
    // Today is counted by the hour, longer ranges by the day.
    let page = v.page("/dashboard/usage?range=today").await;
    assert!(page.text.contains(">Hour</th>") && page.text.contains(">02:00</th>"));
    // The default is this month; custom dates that are a preset's days mark it.
    let page = v.page("/dashboard/usage").await;
    assert!(preset_link(&page.text, "This month").1);
    let page = v
        .page("/dashboard/usage?start=2026-11-18&end=2026-11-24")
        .await;
    assert!(preset_link(&page.text, "Last 7 days").1);
    assert_eq!(table_total(&page.text), today + week);

    // Every preset link keeps the zone and key in force.
    let backend = key_id(&c.api_key).to_string();
    let page = v
        .page(&format!(
            "/dashboard/usage?range=7d&tz=Europe/Berlin&key={backend}"
        ))
        .await;
    for p in ["Today", "Last 7 days", "This month", "Last month"] {
        let (href, _) = preset_link(&page.text, p);
        assert!(
            href.contains("tz=Europe%2FBerlin") && href.contains(&format!("key={backend}")),
            "{p}: {href}"
        );
    }
    app.assert_reconciled().await;
}

#[tokio::test]
async fn a_time_zone_moves_usage_across_a_day_boundary() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("100.00")).await;
    // 23:30 UTC on the 23rd is 08:30 on the 24th in Tokyo and 15:30 on the 23rd in Los Angeles.
    let cost = app
        .usage(&c, "fal-ai/nano-banana", "1", ms("2026-11-23T23:30:00Z"))
        .await;
    let v = app.signed_in("acme").await;
    let day = |d: &str, tz: &str| format!("/dashboard/usage?start={d}&end={d}&tz={tz}");

    let page = v.page(&day("2026-11-23", "UTC")).await;
    assert_eq!(table_total(&page.text), cost);
    let page = v.page(&day("2026-11-24", "UTC")).await;
    assert!(page.text.contains("No usage from 2026-11-24 to 2026-11-24"));
    assert!(table_rows(&page.text).is_empty());

    let page = v.page(&day("2026-11-23", "Asia/Tokyo")).await;
    assert!(table_rows(&page.text).is_empty(), "not the 23rd in Tokyo");
    let page = v.page(&day("2026-11-24", "Asia/Tokyo")).await;
    let api = api_summary(
        &app,
        &c,
        "start=2026-11-24&end=2026-11-25&timezone=Asia/Tokyo",
    )
    .await;
    assert_eq!(same_as_api(&page, &api), cost);
    assert!(page
        .text
        .contains("2026-11-24</strong> in <strong>Asia/Tokyo</strong>"));
    // One day: by the hour, labelled in Tokyo's time (08:30 there).
    assert!(page
        .text
        .contains(">08:00</th><td class=\"num\" data-value=\"0.039\">"));
    assert!(page.text.contains("data-tz=\"Asia/Tokyo\""));

    // Today (2026-11-24) in Los Angeles starts at 08:00 UTC: the usage is yesterday's there.
    let page = v
        .page("/dashboard/usage?range=today&tz=America/Los_Angeles")
        .await;
    assert!(table_rows(&page.text).is_empty());
    let page = v.page("/dashboard/usage?range=today&tz=Asia/Tokyo").await;
    assert_eq!(table_total(&page.text), cost);
    app.assert_reconciled().await;
}

#[tokio::test]
async fn the_key_filter_shows_only_that_keys_usage() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("100.00")).await;
    let batch = another_key(&app, &c, "batch jobs").await;
    let other = app.customer("globex", Some("10.00")).await;
    let mut by_backend = 0;
    for _ in 0..2 {
        let (_, done) = app
            .request(&c.api_key, "fal-ai/nano-banana", 200, image())
            .await;
        by_backend += done["cost_estimate_nano_usd"].as_i64().expect("a cost");
    }
    let (_, done) = app.request(&batch, "fal-ai/flux/dev", 200, image()).await;
    let by_batch = done["cost_estimate_nano_usd"].as_i64().expect("a cost");
    // Usage reported without a key counts for "All keys" only.
    let keyless = app
        .usage(&c, "xai/grok-imagine-image", "1", T0 - 60_000)
        .await;
    let v = app.signed_in("acme").await;

    let all = v.page("/dashboard/usage?range=today").await;
    assert_eq!(table_total(&all.text), by_backend + by_batch + keyless);
    assert!(all.text.contains("backend · ") && all.text.contains("batch jobs · "));
    for (key, total, only) in [
        (&c.api_key, by_backend, "fal-ai/nano-banana"),
        (&batch, by_batch, "fal-ai/flux/dev"),
    ] {
        let id = key_id(key);
        let page = v
            .page(&format!("/dashboard/usage?range=today&key={id}"))
            .await;
        let api = api_summary(
            &app,
            &c,
            &format!("start=2026-11-24&end=2026-11-25&api_key_id={id}"),
        )
        .await;
        assert_eq!(same_as_api(&page, &api), total);
        assert_eq!(endpoints(&page.text), [only]);
        assert!(
            page.text
                .contains(&format!("<option value=\"{id}\" selected>")),
            "the key is selected"
        );
        assert!(page.text.contains(", only key <strong>"));
        let csv = v
            .get(&format!("/dashboard/usage.csv?range=today&key={id}"))
            .await;
        assert_eq!(csv.expect(200).text.matches(only).count(), 1);
        assert_eq!(csv.text.lines().count(), 2, "a header and one row");
    }
    // Another account's key, or no key at all, is not one of this account's.
    for bad in [key_id(&other.api_key), "nope"] {
        let r = v
            .get(&format!("/dashboard/usage?range=today&key={bad}"))
            .await;
        r.expect(400);
        assert!(r.text.contains("No API key of this account has the id"));
    }
    app.assert_reconciled().await;
}

#[tokio::test]
async fn bad_input_is_a_400_page_that_names_the_problem() {
    let app = DashApp::spawn().await;
    app.customer("acme", Some("10.00")).await;
    let v = app.signed_in("acme").await;
    for (query, says) in [
        ("tz=Mars/Olympus", "unknown timezone 'Mars/Olympus'"),
        (
            "start=2026-11-10&end=2026-11-01",
            "is before the start date",
        ),
        ("start=2025-01-01&end=2026-11-18", "at most 366 days"),
        ("start=2026-13-01&end=2026-11-18", "is not a date"),
        ("start=2026-11-01", "Give an end date"),
        ("end=2026-11-01", "Give a start date"),
        ("range=forever", "Unknown range 'forever'"),
        (
            "start=1969-12-01&end=1969-12-31",
            "between 1970-01-01 and 9998-12-31",
        ),
    ] {
        for path in ["/dashboard/usage", "/dashboard/usage.csv"] {
            let r = v.get(&format!("{path}?{query}")).await;
            assert_eq!(r.status.as_u16(), 400, "{path}?{query}: {}", r.text);
            assert!(
                r.text.contains(says),
                "{path}?{query} says {says}: {}",
                r.text
            );
            assert!(
                r.text.contains("id=\"usage-filters\""),
                "the form to fix it"
            );
            assert!(!r.text.contains("id=\"usage-table\""));
        }
    }
    // What was typed is shown back, escaped.
    let r = v.get("/dashboard/usage?tz=%3Cscript%3E").await;
    r.expect(400);
    assert!(r.text.contains("&lt;script&gt;") && !r.text.contains("<script>"));
    app.assert_reconciled().await;
}

#[tokio::test]
async fn a_new_account_sees_what_the_page_will_show_and_what_to_do() {
    let app = DashApp::spawn().await;
    app.customer("newco", None).await;
    let v = app.signed_in("newco").await;
    let page = v.page("/dashboard/usage").await;
    assert!(page.text.contains("No usage from 2026-11-01 to 2026-11-24"));
    assert!(page.text.contains("href=\"/dashboard/keys\""));
    assert!(page.text.contains("billed per endpoint"));
    assert!(!page.text.contains("id=\"usage-table\"") && !page.text.contains("usage.csv"));
    // The CSV of an empty range is its header alone.
    let csv = v.get("/dashboard/usage.csv").await;
    assert_eq!(csv.expect(200).text.lines().count(), 1);
    app.assert_reconciled().await;
}

#[tokio::test]
async fn in_a_browser_the_total_is_the_apis_and_the_chart_draws_the_top_endpoints() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("100.00")).await;
    app.customer("newco", None).await;
    // Seven endpoints over the last week, the first three today.
    let endpoints = [
        "fal-ai/nano-banana",
        "fal-ai/flux/dev",
        "fal-ai/flux/schnell",
        "xai/grok-imagine-image",
        "fal-ai/bytedance/seedream/v4/edit",
        "fal-ai/flux-pro/kontext",
        "fal-ai/flux-pro/kontext/max",
    ];
    for (i, e) in endpoints.iter().enumerate() {
        let i = i as i64;
        let at = if i < 3 {
            T0 - (i + 1) * 3_600_000
        } else {
            T0 - i * DAY_MS
        };
        app.usage(&c, e, &format!("{}", i + 1), at).await;
    }
    let b = Browser::start(&app.address).await;
    b.goto(&app.sign_in_link("acme").await).await;
    assert_eq!(b.path().await, "/dashboard");

    b.goto("/dashboard/usage?range=7d").await;
    let api = api_summary(&app, &c, "start=2026-11-18&end=2026-11-25").await;
    assert_eq!(api.0.len(), 7);
    let total: i64 = b
        .attr("#usage-total", "data-nano-usd")
        .await
        .expect("the total's nano-USD")
        .parse()
        .expect("an integer");
    assert_eq!(
        total, api.1,
        "the table's total is the API's to the nano-USD"
    );
    assert_eq!(
        b.attr("#usage-chart", "data-drawn-series").await.as_deref(),
        Some("6"),
        "five endpoints and Other"
    );
    assert_eq!(b.count("#usage-chart .uplot").await, 1);
    assert!(b.text("#range-shown").await.contains("Last 7 days"));
    b.screenshots("usage").await;

    // Today: fewer endpoints than five, one series each.
    b.click("nav[aria-label='Ranges'] a[href^='/dashboard/usage?range=today']")
        .await;
    // The new page, once its chart is drawn (the click does not wait for it).
    for css in [
        "nav[aria-label='Ranges'] a[aria-current='true'][href^='/dashboard/usage?range=today']",
        "#usage-chart[data-drawn-series]",
    ] {
        b.client
            .wait()
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
    }
    let today = api_summary(&app, &c, "start=2026-11-24&end=2026-11-25").await;
    let drawn = b.attr("#usage-chart", "data-drawn-series").await;
    assert_eq!(drawn, Some(today.0.len().to_string()));
    assert!(today.0.len() < 5 && !today.0.is_empty());

    b.goto(&app.sign_in_link("newco").await).await;
    b.goto("/dashboard/usage").await;
    assert!(b.text("main .empty").await.contains("No usage from"));
    b.screenshots("usage-empty").await;

    b.close().await;
    app.assert_reconciled().await;
}
