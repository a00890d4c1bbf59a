//! The overview: its figures are the API's (balance to the cent, spend this and last month),
//! its chart has one series per top endpoint, and its list of what needs attention says why an
//! account is locked, that its balance is low, and which spending limits passed a threshold or
//! are reached (nothing when all is well).

use crate::common::browser::Browser;
use crate::common::{DashApp, Resp, DAY_MS, MINUTE_MS, T0};
use reqwest::Method;
use serde_json::{json, Value};

/// Seven endpoints (the chart names five and "Other"), spread over this month and last.
const ENDPOINTS: [&str; 7] = [
    "fal-ai/flux/dev",
    "fal-ai/kling-video/v2.1/master/text-to-video",
    "fal-ai/elevenlabs/tts/eleven-v3",
    "fal-ai/flux/schnell",
    "fal-ai/nano-banana",
    "fal-ai/whisper",
    "fal-ai/esrgan",
];

/// The `data-nano-usd` of the element with id `id` in a page.
fn nano_attr(page: &Resp, marker: &str) -> i64 {
    let at = page.text.find(marker).expect("the marker is on the page");
    let rest = &page.text[at..];
    let v = rest.find("data-nano-usd=\"").expect("an exact amount") + "data-nano-usd=\"".len();
    let end = rest[v..].find('"').expect("closing quote");
    rest[v..v + end].parse().expect("an integer")
}

/// The sum of `cost_total` of the usage summary over `[start, end)`, exactly (decimal text).
async fn api_spend(app: &DashApp, key: &str, start: &str, end: &str) -> rust_decimal::Decimal {
    let r = app
        .call(
            Method::GET,
            &format!("/v1/models/usage?expand=summary&start={start}&end={end}"),
            key,
            None,
        )
        .await;
    let body: Value = r.expect(200).json();
    body["summary"]
        .as_array()
        .expect("a summary")
        .iter()
        .map(|row| {
            row["cost_total"]
                .to_string()
                .parse::<rust_decimal::Decimal>()
                .expect("a decimal")
        })
        .sum()
}

/// `$12.34` as a decimal.
fn dollars(text: &str) -> rust_decimal::Decimal {
    text.trim()
        .replacen('$', "", 1)
        .replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("{text} is an amount"))
}

#[tokio::test]
async fn the_overview_shows_the_apis_balance_spend_and_one_series_per_top_endpoint() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("25.00")).await;
    // This month (November, from the 4th to today the 24th) and last month (October).
    for (i, endpoint) in ENDPOINTS.iter().enumerate() {
        for day in [0, 3, 9, 20] {
            let units = format!("{}", (i + day) % 3 + 1);
            app.usage(&c, endpoint, &units, T0 - day as i64 * DAY_MS - 3_600_000)
                .await;
        }
        app.usage(&c, endpoint, "2", T0 - 30 * DAY_MS).await;
    }
    let billing = app
        .call(
            Method::GET,
            "/v1/account/billing?expand=credits",
            &c.admin_key,
            None,
        )
        .await;
    let balance = billing.expect(200).json()["credits"]["balance_nano_usd"]
        .as_i64()
        .expect("a balance");

    let v = app.signed_in("acme").await;
    let page = v.page("/dashboard").await;
    assert_eq!(nano_attr(&page, "Balance"), balance, "the exact balance");
    // Without JavaScript the chart is its table: every top endpoint a column, "Other" too.
    let chart = &page.text[page.text.find("id=\"spend-30d\"").expect("the chart")..];
    let table = &chart[..chart.find("</table>").expect("its table")];
    for name in &ENDPOINTS[..5] {
        assert!(
            table.contains(&format!(">{name}</th>")),
            "{name} in the chart's table"
        );
    }
    assert!(table.contains(">Other</th>"));
    let month = api_spend(&app, &c.admin_key, "2026-11-01", "2026-12-01").await;
    let last = api_spend(&app, &c.admin_key, "2026-10-01", "2026-11-01").await;
    assert!(month > rust_decimal::Decimal::ZERO && last > rust_decimal::Decimal::ZERO);

    let b = Browser::start(&app.address).await;
    b.goto(&app.sign_in_link("acme").await).await;
    assert_eq!(b.path().await, "/dashboard");
    // The balance shown equals the API's to the cent.
    let shown = dollars(&b.text("dd span[data-nano-usd]").await);
    let cents = (rust_decimal::Decimal::new(balance, 9))
        .round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
    assert_eq!(shown, cents, "balance {balance} nano-USD");
    assert_eq!(
        dollars(&b.text("#spend-month").await),
        month.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
    );
    // Seven endpoints: five by name and "Other".
    let drawn = b
        .attr("figure#spend-30d", "data-drawn-series")
        .await
        .expect("the chart was drawn");
    assert_eq!(drawn, "6");
    assert_eq!(b.count("figure#spend-30d canvas").await, 1);
    let legend = b.text("figure#spend-30d .u-legend").await;
    assert!(
        legend.contains("fal-ai/flux/dev") || legend.contains("Other"),
        "{legend}"
    );
    b.screenshots("overview").await;
    b.assert_accessible("the overview").await;
    b.close().await;
    app.assert_reconciled().await;
}

#[tokio::test]
async fn a_new_account_reads_well_and_says_what_to_do_next() {
    let app = DashApp::spawn().await;
    app.customer("newcomer", None).await;
    let v = app.signed_in("newcomer").await;
    let page = v.page("/dashboard").await;
    assert!(page.text.contains("No usage in the last 30 days"));
    assert!(
        page.text.contains("href=\"/dashboard/keys\""),
        "a hint to the keys"
    );
    // With no credits a prepaid account is locked, and the page says why and what lifts it.
    assert!(page.text.contains("Your account is locked"));
    assert!(page.text.contains("Adding credits"));

    let b = Browser::start(&app.address).await;
    b.goto(&app.sign_in_link("newcomer").await).await;
    b.screenshots("overview-empty").await;
    b.assert_accessible("an empty overview").await;
    b.close().await;
    app.assert_reconciled().await;
}

#[tokio::test]
async fn the_overview_shows_what_is_owed_the_next_tier_and_credits_that_expire() {
    let app = DashApp::spawn().await;
    app.customer("acme", Some("10.00")).await;
    // Credits that expire in a week.
    app.op(
        Method::POST,
        "/v1/admin/accounts/acme/purchases",
        json!({"purchase_id": "promo", "amount_usd": "3.00", "kind": "free",
               "expires_at": crate::common::rfc3339(T0 + 7 * DAY_MS)}),
    )
    .await
    .expect(201);
    // Another lot expiring at the same time: what expires next is both.
    app.op(
        Method::POST,
        "/v1/admin/accounts/acme/purchases",
        json!({"purchase_id": "promo-2", "amount_usd": "2.00", "kind": "free",
               "expires_at": crate::common::rfc3339(T0 + 7 * DAY_MS)}),
    )
    .await
    .expect(201);
    let v = app.signed_in("acme").await;
    let page = v.page("/dashboard").await;
    assert!(
        page.text.contains("$5.00"),
        "the expiring credits, both lots"
    );
    assert!(page.text.contains("2026-12-01"), "their expiry date");
    assert!(page.text.contains("Next: "), "the next concurrency tier");

    // A debit larger than the balance: the account owes the difference and is locked.
    app.op(
        Method::POST,
        "/v1/admin/accounts/acme/adjustments",
        json!({"adjustment_id": "fix-1", "amount_usd": "-20.00", "reason": "correction"}),
    )
    .await
    .expect(201);
    let page = v.page("/dashboard").await;
    let owed = &page.text[page.text.find(">Owed<").expect("what is owed")..];
    assert!(
        owed[..300].contains("$5.00"),
        "15 USD of credits less 20 USD"
    );
    assert!(page.text.contains("Your account is locked"));
    app.assert_reconciled().await;
}

/// The overview's "needs attention" list, if it has one.
fn attention(page: &Resp) -> Option<&str> {
    let at = page.text.find("id=\"attention\"")?;
    let end = page.text[at..].find("</section>").expect("the list's end") + at;
    Some(&page.text[at..end])
}

/// An account limit made through the API.
async fn limit(app: &DashApp, admin_key: &str, body: Value) -> String {
    app.call(
        Method::POST,
        "/v1/account/spending-limits",
        admin_key,
        Some(body),
    )
    .await
    .expect(201)
    .json()["limit_id"]
        .as_str()
        .expect("an id")
        .to_string()
}

#[tokio::test]
async fn the_overview_lists_what_needs_attention_and_nothing_when_all_is_well() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("25.00")).await;
    let cost = app.usage(&c, "fal-ai/flux/dev", "4", T0 - MINUTE_MS).await;
    // A limit far from its thresholds needs no attention.
    limit(
        &app,
        &c.admin_key,
        json!({"scope": "account", "period": "month", "amount_usd": "1000", "action": "alert",
               "alert_at_percent": [50]}),
    )
    .await;
    let v = app.signed_in("acme").await;
    let page = v.page("/dashboard").await;
    assert_eq!(attention(&page), None, "all is well");
    assert!(!page.text.contains("Needs attention"));

    // The balance below the account's low-balance level.
    app.op(
        Method::PUT,
        "/v1/admin/accounts/acme/pricing",
        json!({"low_balance_usd": "30"}),
    )
    .await
    .expect(200);
    let page = v.page("/dashboard").await;
    let list = attention(&page).expect("a list");
    assert!(list.contains("Your balance is low"), "{list}");
    assert!(
        list.contains("below your low-balance level of $30.00"),
        "{list}"
    );
    assert!(
        !list.contains("locked") && !list.contains("limit"),
        "{list}"
    );

    // A limit whose 50% threshold the month's spend passed (not its amount).
    let usd = |nanos: i64| rust_decimal::Decimal::new(nanos, 9).normalize().to_string();
    let alert = limit(
        &app,
        &c.admin_key,
        json!({"scope": "account", "period": "month", "amount_usd": usd(cost * 3 / 2),
               "action": "alert", "alert_at_percent": [50, 90]}),
    )
    .await;
    // A daily block limit below what the day spent: reached, new requests refused.
    let block = limit(
        &app,
        &c.admin_key,
        json!({"scope": "account", "period": "day", "amount_usd": usd(cost / 2),
               "action": "block", "alert_at_percent": []}),
    )
    .await;
    let page = v.page("/dashboard").await;
    let list = attention(&page).expect("a list");
    let line = |id: &str| {
        let at = list
            .find(&format!("data-limit-id=\"{id}\""))
            .unwrap_or_else(|| panic!("no line of {id}: {list}"));
        list[at..list[at..].find("</li>").unwrap() + at].to_string()
    };
    let passed = line(&alert);
    assert!(
        passed.contains("monthly limit is past its 50% alert"),
        "{passed}"
    );
    assert!(passed.contains(&format!("href=\"/dashboard/limits#{alert}\"")));
    let reached = line(&block);
    assert!(reached.contains("daily limit is reached"), "{reached}");
    assert!(
        reached.contains("New requests it counts are refused until 2026-11-25 00:00 UTC"),
        "{reached}"
    );
    assert!(list.contains("Your balance is low"));
    // What the line says is so: the API refuses a start.
    let id = uuid::Uuid::new_v4().to_string();
    app.op(
        Method::POST,
        "/v1/requests",
        json!({"request_id": id, "endpoint_id": "fal-ai/flux/dev", "caller_key": c.api_key}),
    )
    .await
    .expect(201);
    let refused = app
        .op(Method::POST, &format!("/v1/requests/{id}/start"), json!({}))
        .await;
    refused.expect(403);
    assert_eq!(refused.json()["error"]["type"], "spending_limit_exceeded");
    assert_eq!(refused.json()["error"]["limit_id"], block.as_str());

    // A locked account: the lock and why come first.
    app.customer("newcomer", None).await;
    let page = app.signed_in("newcomer").await.page("/dashboard").await;
    let list = attention(&page).expect("a list");
    assert!(list.contains("Your account is locked"), "{list}");
    assert!(list.contains("Its balance is used up"), "{list}");
    app.assert_reconciled().await;
}
