//! FOCUS reports over HTTP (`GET /v1/account/focus`): the CSV of a prepaid account (a paid
//! purchase billed on its top-up invoice, free credits, usage over several days and endpoints
//! drawn from the credits), of an account with its own price and a discount (list and
//! contracted prices differ), and of an invoice-billed account's estimate and invoice reports
//! (by billing month and by charge month, a late charge on the next invoice); each passes the
//! FinOps Foundation's validator, its usage adds up to the billing events and the ledger and
//! its purchases to the payments; the body streamed in pages of one charge period is the
//! body read at once; refused parameters name themselves. On SQLite and PostgreSQL.

use crate::harness::{int, new_id, Body, Resp, TestApp, USD};
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::str::FromStr;
use tollgate_query::focus::{FocusQuery, FocusReport, FocusSource};
use tollgate_query::timeframe::{Moment, RangeSpec};
use tollgate_store::testing::{backends, Backend};

/// 2026-06-01T00:00:00Z.
const T0: i64 = 1_780_272_000_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const FLUX_DEV: &str = "fal-ai/flux/dev";
const WHISPER: &str = "fal-ai/whisper";

/// A CSV as header → column index, and its rows (RFC 4180: quoted fields, `""` in quotes).
pub(crate) struct Csv {
    columns: HashMap<String, usize>,
    pub(crate) rows: Vec<Vec<String>>,
}

pub(crate) fn parse_csv(text: &str) -> Csv {
    let mut records: Vec<Vec<String>> = Vec::new();
    let (mut record, mut field) = (Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(
        field.is_empty() && record.is_empty(),
        "the CSV ends with a line break"
    );
    let header = records.remove(0);
    for r in &records {
        assert_eq!(r.len(), header.len(), "every row has every column: {r:?}");
    }
    Csv {
        columns: header
            .into_iter()
            .enumerate()
            .map(|(i, c)| (c, i))
            .collect(),
        rows: records,
    }
}

impl Csv {
    pub(crate) fn get<'a>(&self, row: &'a [String], column: &str) -> &'a str {
        &row[*self
            .columns
            .get(column)
            .unwrap_or_else(|| panic!("no column {column}"))]
    }

    pub(crate) fn of(&self, category: &str) -> Vec<&Vec<String>> {
        self.rows
            .iter()
            .filter(|r| self.get(r, "ChargeCategory") == category)
            .collect()
    }

    /// The sum of a money column over rows, in nano-USD, exactly.
    pub(crate) fn nanos(&self, rows: &[&Vec<String>], column: &str) -> i64 {
        let usd: Decimal = rows.iter().map(|r| dec(self.get(r, column))).sum();
        let n = usd * Decimal::from(USD);
        assert_eq!(n.fract(), Decimal::ZERO, "{column} is whole nano-USD");
        i64::try_from(n).expect("fits")
    }

    /// The usage row of an endpoint whose charge period starts at `start`.
    fn usage(&self, endpoint: &str, start: &str) -> &Vec<String> {
        let found: Vec<_> = self
            .of("Usage")
            .into_iter()
            .filter(|r| {
                self.get(r, "ResourceId") == endpoint && self.get(r, "ChargePeriodStart") == start
            })
            .collect();
        assert_eq!(found.len(), 1, "one row of {endpoint} from {start}");
        found[0]
    }
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap_or_else(|e| panic!("'{s}' is a plain decimal: {e}"))
}

/// Runs the FinOps Foundation's validator (`TOLLGATE_FOCUS_VALIDATOR`, installed by
/// scripts/test.sh) on `csv` for FOCUS 1.0 and asserts that every rule passed. It exits 0
/// even when rules fail, so its JUnit report is read.
pub(crate) fn assert_focus_valid(csv: &str) {
    let validator = std::env::var("TOLLGATE_FOCUS_VALIDATOR").expect(
        "TOLLGATE_FOCUS_VALIDATOR is not set: run the tests with scripts/test.sh, which installs \
         the FinOps Foundation's focus-validator and names it",
    );
    let bin = std::path::Path::new(&validator)
        .parent()
        .expect("the validator's directory");
    // It reads its currency codes by a path relative to its package's parent directory.
    let out = std::process::Command::new(bin.join("python"))
        .args([
            "-c",
            "import focus_validator, os; print(os.path.dirname(os.path.dirname(focus_validator.__file__)))",
        ])
        .output()
        .expect("the validator's python runs");
    let site = String::from_utf8(out.stdout)
        .expect("a path")
        .trim()
        .to_string();
    let dir = std::env::temp_dir().join(format!("tollgate-focus-{}", new_id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let (data, report) = (dir.join("focus.csv"), dir.join("report.xml"));
    std::fs::write(&data, csv).expect("write the CSV");
    let run = std::process::Command::new(&validator)
        .current_dir(&site)
        .arg("--data-file")
        .arg(&data)
        .args(["--validate-version", "1.0", "--output-type", "unittest"])
        .arg("--output-destination")
        .arg(&report)
        .output()
        .expect("the validator runs");
    let xml = std::fs::read_to_string(&report).unwrap_or_else(|e| {
        panic!(
            "the validator wrote no report ({e}): {}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        )
    });
    let _ = std::fs::remove_dir_all(&dir);
    let head = xml
        .lines()
        .find(|l| l.contains("<testsuites"))
        .expect("a JUnit report");
    let tests: usize = head
        .split("tests=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .and_then(|t| t.parse().ok())
        .expect("a test count");
    assert!(tests >= 100, "the FOCUS 1.0 rules ran: {head}");
    let failed: Vec<&str> = xml
        .split("<testcase ")
        .skip(1)
        .filter(|case| {
            let end = case.find("</testcase>").unwrap_or(case.len());
            let case = &case[..end];
            case.contains("<failure") || case.contains("<error") || case.contains("<skipped")
        })
        .collect();
    assert!(failed.is_empty(), "FOCUS rules failed: {failed:?}\n{csv}");
    assert!(
        head.contains("failures=\"0\"") && head.contains("errors=\"0\""),
        "{head}"
    );
}

async fn get(app: &TestApp, key: &str, path: &str) -> Resp {
    app.raw(Method::GET, path, Some(key), Body::None).await
}

/// Usage events at `at` (the engine's clock moved there); asserts each was billed.
async fn bill_at(app: &TestApp, at: i64, events: Vec<Value>) {
    app.set_now(at);
    let when = crate::harness::rfc3339(at);
    let events: Vec<Value> = events
        .into_iter()
        .map(|mut e| {
            e["timestamp"] = json!(when);
            e["event_id"] = json!(new_id());
            e
        })
        .collect();
    let r = app.usage_events(json!(events)).await;
    for result in r.expect(200)["results"].as_array().expect("results") {
        assert!(result.get("error").is_none(), "{result}");
    }
}

/// flux/dev, one 1920x1080 image: 2 megapixels billed.
fn flux(username: &str) -> Value {
    json!({ "endpoint_id": FLUX_DEV, "username": username, "status_code": 200,
            "output": { "images": [{ "width": 1920, "height": 1080 }] } })
}

fn whisper(username: &str, seconds: &str) -> Value {
    json!({ "endpoint_id": WHISPER, "username": username, "status_code": 200,
            "billable_units": seconds })
}

/// The billing events' exact total over `[start, end)`, all pages.
async fn billed(app: &TestApp, key: &str, start: &str, end: &str) -> i64 {
    let mut total = 0;
    let mut path = format!("/v1/models/billing-events?start={start}&end={end}&limit=1000");
    loop {
        let page = get(app, key, &path).await.expect(200).clone();
        for e in page["billing_events"].as_array().expect("billing_events") {
            total += int(&e["cost_estimate_nano_usd"]);
        }
        match page["next_cursor"].as_str() {
            Some(c) => {
                path = format!(
                    "/v1/models/billing-events?start={start}&end={end}&limit=1000&cursor={c}"
                )
            }
            None => return total,
        }
    }
}

/// The CSV the query renders with pages of `page_span_ms` of usage, read page by page.
async fn paged_csv(
    app: &TestApp,
    account: &str,
    start: i64,
    end: i64,
    page_span_ms: i64,
) -> (String, usize) {
    let q = FocusQuery {
        account: tollgate_core::ids::AccountId::parse(account).unwrap(),
        source: FocusSource::Estimate,
        billing_month: None,
        charge_month: None,
        range: RangeSpec {
            start: Some(Moment::At(tollgate_core::Timestamp(start))),
            end: Some(Moment::At(tollgate_core::Timestamp(end))),
            ..RangeSpec::default()
        },
        page_span_ms,
    };
    let mut report = FocusReport::open(&app.engine, q)
        .await
        .expect("the report opens");
    let mut csv = tollgate_api::focus::header_line();
    let mut pages = 0;
    while let Some(rows) = report.next_page().await.expect("a page") {
        pages += 1;
        for r in &rows {
            let fields = tollgate_api::focus::fields(&report.context, r);
            let quoted: Vec<String> = fields
                .iter()
                .map(|f| {
                    if f.contains([',', '"']) {
                        format!("\"{}\"", f.replace('"', "\"\""))
                    } else {
                        f.clone()
                    }
                })
                .collect();
            csv.push_str(&quoted.join(","));
            csv.push_str("\r\n");
        }
    }
    (csv, pages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepaid_accounts_report_is_valid_focus_and_adds_up() {
    for backend in backends() {
        let on = backend.name();
        let app = TestApp::spawn_at_on(&backend, T0).await;
        app.create_account("acme").await.expect(201);
        let admin = app.create_key("acme", "ADMIN").await;
        let api = app.create_key("acme", "API").await;
        app.purchase("acme", "topup-1", "20", "paid")
            .await
            .expect(201);
        app.purchase("acme", "welcome", "5", "free")
            .await
            .expect(201);

        // Three days of usage over two endpoints; the second top-up on day 2.
        bill_at(
            &app,
            T0 + HOUR,
            vec![flux("acme"), flux("acme"), whisper("acme", "10")],
        )
        .await;
        bill_at(&app, T0 + 23 * HOUR, vec![flux("acme")]).await;
        bill_at(&app, T0 + DAY + 2 * HOUR, vec![flux("acme")]).await;
        app.purchase("acme", "topup-2", "0.5", "paid")
            .await
            .expect(201);
        bill_at(&app, T0 + 2 * DAY + 5 * HOUR, vec![whisper("acme", "100")]).await;
        // After the range: not reported.
        bill_at(&app, T0 + 4 * DAY + HOUR, vec![flux("acme")]).await;
        app.set_now(T0 + 5 * DAY);

        let r = get(
            &app,
            &admin,
            "/v1/account/focus?source=estimate&start=2026-06-01&end=2026-06-04",
        )
        .await;
        r.expect(200);
        assert_eq!(
            r.header("content-type"),
            Some("text/csv; charset=utf-8"),
            "{on}"
        );
        assert_eq!(
            r.header("content-disposition"),
            Some("attachment; filename=\"focus-acme-estimate-20260601-20260604.csv\""),
            "{on}"
        );
        let csv = parse_csv(&r.text);

        // Purchases: the paid ones billed on their top-up invoices, nothing effective yet.
        let invoices = get(&app, &admin, "/v1/account/invoices").await.expect(200)["invoices"]
            .as_array()
            .unwrap()
            .clone();
        let number = |purchase: &str| {
            invoices
                .iter()
                .find(|i| i["purchase_id"] == purchase)
                .map(|i| i["number"].as_str().unwrap().to_string())
                .unwrap_or_else(|| panic!("an invoice of {purchase}"))
        };
        let purchases = csv.of("Purchase");
        assert_eq!(purchases.len(), 2, "{on}");
        for (row, id, amount, start) in [
            (purchases[0], "topup-1", "20.0", "2026-06-01T00:00:00Z"),
            (purchases[1], "topup-2", "0.5", "2026-06-02T00:00:00Z"),
        ] {
            assert_eq!(csv.get(row, "x_PurchaseId"), id, "{on}");
            assert_eq!(csv.get(row, "BilledCost"), amount, "{on}");
            assert_eq!(csv.get(row, "EffectiveCost"), "0.0", "{on}");
            assert_eq!(csv.get(row, "InvoiceId"), number(id), "{on}");
            assert_eq!(csv.get(row, "ChargeFrequency"), "One-Time");
            assert_eq!(csv.get(row, "ChargePeriodStart"), start);
            assert_eq!(csv.get(row, "BillingPeriodStart"), "2026-06-01T00:00:00Z");
            assert_eq!(csv.get(row, "BillingPeriodEnd"), "2026-07-01T00:00:00Z");
        }
        // BilledCost of the Purchase rows = the payments.
        let payments = get(&app, &admin, "/v1/account/payments").await.expect(200)["payments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| int(&p["amount_nano_usd"]))
            .sum::<i64>();
        assert_eq!(csv.nanos(&purchases, "BilledCost"), payments, "{on}");
        assert_eq!(payments, 20 * USD + USD / 2);
        // Free credits: a Credit row, nothing billed.
        let credits = csv.of("Credit");
        assert_eq!(credits.len(), 1, "{on}");
        assert_eq!(csv.get(credits[0], "BilledCost"), "0.0");
        assert_eq!(csv.get(credits[0], "x_CreditAmountUsd"), "5.0");
        assert_eq!(csv.get(credits[0], "InvoiceId"), "");

        // Usage: one row per endpoint and day, drawn from the credits (nothing billed).
        let usage = csv.of("Usage");
        assert_eq!(usage.len(), 4, "{on}: {:?}", csv.rows);
        let day1 = csv.usage(FLUX_DEV, "2026-06-01T00:00:00Z");
        assert_eq!(csv.get(day1, "ChargePeriodEnd"), "2026-06-02T00:00:00Z");
        assert_eq!(csv.get(day1, "ConsumedQuantity"), "6.0", "3 images of 2 MP");
        assert_eq!(csv.get(day1, "PricingQuantity"), "6.0");
        assert_eq!(csv.get(day1, "PricingUnit"), "megapixel");
        assert_eq!(csv.get(day1, "ListUnitPrice"), "0.025");
        assert_eq!(csv.get(day1, "ContractedUnitPrice"), "0.025");
        assert_eq!(csv.get(day1, "ListCost"), "0.15");
        assert_eq!(csv.get(day1, "ContractedCost"), "0.15");
        assert_eq!(csv.get(day1, "EffectiveCost"), "0.15");
        assert_eq!(csv.get(day1, "BilledCost"), "0.0");
        assert_eq!(csv.get(day1, "InvoiceId"), "");
        assert_eq!(csv.get(day1, "ResourceName"), "FLUX.1 [dev]");
        assert_eq!(csv.get(day1, "SkuId"), FLUX_DEV);
        assert_eq!(csv.get(day1, "ServiceCategory"), "AI and Machine Learning");
        assert_eq!(csv.get(day1, "BillingAccountId"), "acme");
        assert_eq!(csv.get(day1, "ProviderName"), "tollgate", "no issuer set");
        let whisper1 = csv.usage(WHISPER, "2026-06-01T00:00:00Z");
        assert_eq!(csv.get(whisper1, "ConsumedQuantity"), "10.0");
        assert_eq!(csv.get(whisper1, "EffectiveCost"), "0.0111");
        let day2 = csv.usage(FLUX_DEV, "2026-06-02T00:00:00Z");
        assert_eq!(csv.get(day2, "EffectiveCost"), "0.05");
        let day3 = csv.usage(WHISPER, "2026-06-03T00:00:00Z");
        assert_eq!(csv.get(day3, "EffectiveCost"), "0.111");
        // EffectiveCost of the usage = the billing events of the range = what left the balance.
        let effective = csv.nanos(&usage, "EffectiveCost");
        assert_eq!(
            effective,
            150_000_000 + 11_100_000 + 50_000_000 + 111_000_000
        );
        assert_eq!(
            effective,
            billed(&app, &admin, "2026-06-01T00:00:00Z", "2026-06-04T00:00:00Z").await,
            "{on}"
        );
        let (balance, _, _) = app.position("acme").await;
        assert_eq!(
            25 * USD + USD / 2 - balance,
            effective + 50_000_000,
            "{on}: and the day-5 image"
        );
        assert_eq!(csv.nanos(&usage, "BilledCost"), 0);

        assert_focus_valid(&r.text);

        // Read in pages of one charge period, the report is the same, byte for byte.
        let (one_page, _) = paged_csv(&app, "acme", T0, T0 + 3 * DAY, i64::MAX / 4).await;
        let (paged, pages) = paged_csv(&app, "acme", T0, T0 + 3 * DAY, 1).await;
        assert_eq!(paged, r.text, "{on}");
        assert_eq!(one_page, r.text, "{on}");
        assert!(pages >= 5, "{on}: purchases, then a page per day ({pages})");

        // The invoice source of the month: the same purchases and usage, billed the same way;
        // by charge month too.
        let by_billing = get(
            &app,
            &admin,
            "/v1/account/focus?source=invoice&billing_month=2026-06",
        )
        .await;
        by_billing.expect(200);
        let month = parse_csv(&by_billing.text);
        assert_eq!(month.of("Purchase").len(), 2, "{on}");
        assert_eq!(month.of("Credit").len(), 1, "{on}");
        assert_eq!(month.of("Usage").len(), 5, "{on}: with day 5");
        assert_eq!(
            month.nanos(&month.of("Usage"), "EffectiveCost"),
            effective + 50_000_000
        );
        assert_eq!(month.nanos(&month.of("Usage"), "BilledCost"), 0);
        assert_focus_valid(&by_billing.text);
        let by_charge = get(
            &app,
            &admin,
            "/v1/account/focus?source=invoice&charge_month=2026-06",
        )
        .await;
        by_charge.expect(200);
        assert_eq!(
            by_charge.text, by_billing.text,
            "{on}: prepaid charges are billed when bought"
        );
        // The current month by default (the clock is in June 2026); May has nothing.
        let default = get(&app, &admin, "/v1/account/focus?source=invoice").await;
        assert_eq!(
            parse_csv(&default.text).rows.len(),
            month.rows.len(),
            "{on}"
        );
        let may = get(
            &app,
            &admin,
            "/v1/account/focus?source=invoice&billing_month=2026-05",
        )
        .await;
        assert_eq!(parse_csv(&may.text).rows.len(), 0, "{on}");

        // An API key may not read it.
        get(&app, &api, "/v1/account/focus?source=estimate")
            .await
            .expect_error(403, "authorization_error");
        app.assert_reconciled().await;
    }
}

/// A tollgate at [`T0`] on `backend`, its invoices issued by Acme Cloud Inc.
async fn spawn_with_issuer(backend: &Backend) -> TestApp {
    let app = TestApp::spawn_at_on(backend, T0).await;
    app.op(
        Method::PUT,
        "/v1/admin/issuer",
        json!({ "name": "Acme Cloud Inc", "address": "1 Main St" }),
    )
    .await
    .expect(200);
    app
}

/// An account with its own price and a discount: its estimate shows the list and the
/// contracted prices apart, and its costs add up to its billing events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiated_prices_differ_from_list_prices_in_the_estimate() {
    for backend in backends() {
        let on = backend.name();
        let app = spawn_with_issuer(&backend).await;
        // bigco: its own flux/dev price (0.02 USD/MP, list 0.025) and a 10% discount.
        app.create_account("bigco").await.expect(201);
        let big = app.create_key("bigco", "ADMIN").await;
        app.purchase("bigco", "p", "10", "paid").await.expect(201);
        app.set_pricing(
            "bigco",
            json!({ "percent_discount": "10",
                    "prices": { FLUX_DEV: { "unit": "megapixel", "unit_price": "0.02" } } }),
        )
        .await
        .expect(200);

        bill_at(
            &app,
            T0 + 2 * HOUR,
            vec![flux("bigco"), flux("bigco"), whisper("bigco", "100")],
        )
        .await;
        app.set_now(T0 + 2 * DAY);

        let r = get(
            &app,
            &big,
            "/v1/account/focus?source=estimate&start=2026-06-01&end=2026-06-02",
        )
        .await;
        r.expect(200);
        let csv = parse_csv(&r.text);
        let row = csv.usage(FLUX_DEV, "2026-06-01T00:00:00Z");
        // 4 MP at 0.02 = 0.08, less 10% = 0.072; at list 0.025 it would be 0.1.
        assert_eq!(csv.get(row, "ListUnitPrice"), "0.025", "{on}");
        assert_eq!(csv.get(row, "ListCost"), "0.1", "{on}");
        assert_eq!(csv.get(row, "ContractedUnitPrice"), "0.018", "{on}");
        assert_eq!(csv.get(row, "ContractedCost"), "0.072", "{on}");
        assert_eq!(csv.get(row, "EffectiveCost"), "0.072", "{on}");
        assert_eq!(csv.get(row, "BilledCost"), "0.0", "{on}");
        assert_eq!(csv.get(row, "ProviderName"), "Acme Cloud Inc", "{on}");
        assert_eq!(csv.get(row, "InvoiceIssuerName"), "Acme Cloud Inc", "{on}");
        // whisper at the public price, with the discount: 100 s x 0.00111 = 0.111, less 10%.
        let w = csv.usage(WHISPER, "2026-06-01T00:00:00Z");
        assert_eq!(csv.get(w, "ListUnitPrice"), "0.00111");
        assert_eq!(csv.get(w, "ListCost"), "0.111");
        assert_eq!(csv.get(w, "ContractedUnitPrice"), "0.000999");
        assert_eq!(csv.get(w, "EffectiveCost"), "0.0999");
        assert_eq!(
            csv.nanos(&csv.of("Usage"), "EffectiveCost"),
            billed(&app, &big, "2026-06-01T00:00:00Z", "2026-06-02T00:00:00Z").await,
            "{on}"
        );
        assert_focus_valid(&r.text);

        app.assert_reconciled().await;
    }
}

/// An invoice-billed account: its estimate bills its usage at cost, its invoice report holds
/// only issued invoices, by billing month (a late charge on the next invoice) and by charge
/// month.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invoice_accounts_usage_is_billed_at_cost_then_on_its_invoices_by_billing_and_charge_month(
) {
    for backend in backends() {
        let on = backend.name();
        let app = spawn_with_issuer(&backend).await;
        // corp: billed on invoices.
        app.op(
            Method::POST,
            "/v1/admin/accounts",
            json!({ "username": "corp", "billing": "invoice" }),
        )
        .await
        .expect(201);
        let corp = app.create_key("corp", "ADMIN").await;

        bill_at(
            &app,
            T0 + 3 * HOUR,
            vec![flux("corp"), whisper("corp", "10")],
        )
        .await;
        bill_at(&app, T0 + DAY + 3 * HOUR, vec![flux("corp")]).await;
        app.set_now(T0 + 2 * DAY);

        // corp's estimate: its usage billed at cost, not on an invoice yet.
        let r = get(
            &app,
            &corp,
            "/v1/account/focus?source=estimate&start=2026-06-01&end=2026-06-03",
        )
        .await;
        r.expect(200);
        let csv = parse_csv(&r.text);
        let usage = csv.of("Usage");
        assert_eq!(usage.len(), 3, "{on}");
        assert!(csv.of("Purchase").is_empty() && csv.of("Credit").is_empty());
        for row in &usage {
            assert_eq!(
                csv.get(row, "BilledCost"),
                csv.get(row, "EffectiveCost"),
                "{on}"
            );
            assert_eq!(csv.get(row, "InvoiceId"), "", "{on}");
        }
        assert_eq!(
            csv.nanos(&usage, "BilledCost"),
            50_000_000 + 11_100_000 + 50_000_000
        );
        assert_eq!(
            csv.nanos(&usage, "EffectiveCost"),
            billed(&app, &corp, "2026-06-01T00:00:00Z", "2026-06-03T00:00:00Z").await,
            "{on}"
        );
        assert_focus_valid(&r.text);
        // Its invoice report holds what its invoices bill: no usage invoice is issued yet.
        let r = get(
            &app,
            &corp,
            "/v1/account/focus?source=invoice&billing_month=2026-06",
        )
        .await;
        r.expect(200);
        assert!(parse_csv(&r.text).rows.is_empty(), "{on}: {}", r.text);

        // June closes (at July's start): its invoice bills June's usage. A late event of June,
        // recorded in July, lands on July's invoice with June as its charge period.
        const JULY: i64 = T0 + 30 * DAY;
        const AUGUST: i64 = JULY + 31 * DAY;
        let close = |until: i64| {
            app.op(
                Method::POST,
                "/v1/admin/invoices/close",
                json!({ "username": "corp", "until": crate::harness::rfc3339(until) }),
            )
        };
        app.set_now(JULY + HOUR);
        let june_invoice = close(JULY).await.expect(200)["issued"][0]
            .as_str()
            .expect("June's invoice")
            .to_string();
        app.set_now(JULY + DAY);
        let late = json!({ "endpoint_id": FLUX_DEV, "username": "corp", "status_code": 200,
            "event_id": new_id(), "timestamp": crate::harness::rfc3339(T0 + 5 * DAY),
            "output": { "images": [{ "width": 1920, "height": 1080 }] } });
        app.usage_events(json!([late])).await.expect(200);
        app.set_now(AUGUST + HOUR);
        let july_invoice = close(AUGUST).await.expect(200)["issued"][0]
            .as_str()
            .expect("July's invoice")
            .to_string();
        let invoice = |id: String| {
            let corp = corp.clone();
            let app = &app;
            async move {
                get(app, &corp, &format!("/v1/account/invoices/{id}"))
                    .await
                    .expect(200)
                    .clone()
            }
        };
        let (june, july) = (invoice(june_invoice).await, invoice(july_invoice).await);

        // Billed in July: June's invoice, line by line, its rows summing to its total.
        let report = |query: &'static str| {
            let corp = corp.clone();
            let app = &app;
            async move {
                let r = get(
                    app,
                    &corp,
                    &format!("/v1/account/focus?source=invoice&{query}"),
                )
                .await;
                r.expect(200);
                assert_focus_valid(&r.text);
                r.text.clone()
            }
        };
        let text = report("billing_month=2026-07").await;
        let csv = parse_csv(&text);
        let usage = csv.of("Usage");
        assert_eq!(usage.len(), june["lines"].as_array().unwrap().len(), "{on}");
        for row in &usage {
            assert_eq!(csv.get(row, "InvoiceId"), june["number"].as_str().unwrap());
            assert_eq!(csv.get(row, "BilledCost"), csv.get(row, "EffectiveCost"));
        }
        assert_eq!(
            csv.nanos(&usage, "BilledCost"),
            int(&june["total_nano_usd"]),
            "{on}"
        );
        assert_eq!(
            int(&june["total_nano_usd"]),
            50_000_000 + 11_100_000 + 50_000_000
        );
        // Billed in August: the late June image, on July's invoice, charged on June 6th.
        let csv = parse_csv(&report("billing_month=2026-08").await);
        let usage = csv.of("Usage");
        assert_eq!(usage.len(), 1, "{on}");
        assert_eq!(
            csv.get(usage[0], "InvoiceId"),
            july["number"].as_str().unwrap()
        );
        assert_eq!(
            csv.get(usage[0], "ChargePeriodStart"),
            "2026-06-06T00:00:00Z"
        );
        assert_eq!(
            csv.nanos(&usage, "BilledCost"),
            int(&july["total_nano_usd"])
        );
        // Charged in June: every June charge, whichever invoice bills it.
        let csv = parse_csv(&report("charge_month=2026-06").await);
        assert_eq!(
            csv.nanos(&csv.of("Usage"), "BilledCost"),
            int(&june["total_nano_usd"]) + int(&july["total_nano_usd"]),
            "{on}"
        );

        app.assert_reconciled().await;
    }
}

/// An account moved from credits to invoices mid-month: the usage drawn from its credits and
/// the usage billed on its invoice are reported in their own billing months.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_moved_to_invoices_reports_its_credit_usage_apart_from_its_invoice() {
    for backend in backends() {
        let on = backend.name();
        let app = spawn_with_issuer(&backend).await;
        // mixed: prepaid, then billed on invoice from June 10th. Its usage of June 3rd was
        // drawn from credits; its usage of June 12th is billed on its invoice.
        app.create_account("mixed").await.expect(201);
        let mixed = app.create_key("mixed", "ADMIN").await;
        app.purchase("mixed", "m", "10", "paid").await.expect(201);
        bill_at(&app, T0 + 2 * DAY + HOUR, vec![flux("mixed")]).await;
        app.set_now(T0 + 9 * DAY);
        app.set_pricing("mixed", json!({ "billing": "invoice" }))
            .await
            .expect(200);
        bill_at(&app, T0 + 11 * DAY, vec![flux("mixed")]).await;

        const JULY: i64 = T0 + 30 * DAY;
        app.set_now(JULY + HOUR);
        let issued = app
            .op(
                Method::POST,
                "/v1/admin/invoices/close",
                json!({ "username": "mixed", "until": crate::harness::rfc3339(JULY) }),
            )
            .await;
        let mixed_invoice = issued.expect(200)["issued"][0]
            .as_str()
            .expect("mixed's invoice")
            .to_string();
        let mixed_invoice = get(
            &app,
            &mixed,
            &format!("/v1/account/invoices/{mixed_invoice}"),
        )
        .await
        .expect(200)
        .clone();

        // mixed's June report: the usage drawn from its credits only (its invoice-billed usage
        // is not June's to bill); its July report: its invoice of June 10th to 30th, issued
        // when July began.
        let mixed_report = |month: &'static str| {
            let mixed = mixed.clone();
            let app = &app;
            async move {
                let r = get(
                    app,
                    &mixed,
                    &format!("/v1/account/focus?source=invoice&billing_month={month}"),
                )
                .await;
                r.expect(200);
                assert_focus_valid(&r.text);
                r.text.clone()
            }
        };
        let csv = parse_csv(&mixed_report("2026-06").await);
        let usage = csv.of("Usage");
        assert_eq!(usage.len(), 1, "{on}: {:?}", csv.rows);
        assert_eq!(
            csv.get(usage[0], "ChargePeriodStart"),
            "2026-06-03T00:00:00Z"
        );
        assert_eq!(csv.get(usage[0], "BilledCost"), "0.0", "{on}");
        assert_eq!(csv.get(usage[0], "InvoiceId"), "", "{on}");
        let csv = parse_csv(&mixed_report("2026-07").await);
        let usage = csv.of("Usage");
        assert_eq!(usage.len(), 1, "{on}: {:?}", csv.rows);
        assert_eq!(
            csv.get(usage[0], "InvoiceId"),
            mixed_invoice["number"].as_str().unwrap()
        );
        assert_eq!(
            csv.get(usage[0], "ChargePeriodStart"),
            "2026-06-12T00:00:00Z"
        );
        assert_eq!(
            csv.nanos(&usage, "BilledCost"),
            int(&mixed_invoice["total_nano_usd"]),
            "{on}"
        );
        app.assert_reconciled().await;
    }
}

#[tokio::test]
async fn refused_parameters_are_named_and_nothing_is_reported() {
    for backend in backends() {
        let on = backend.name();
        let app = TestApp::spawn_at_on(&backend, T0 + 100 * DAY).await;
        app.create_account("acme").await.expect(201);
        let admin = app.create_key("acme", "ADMIN").await;
        for (query, field) in [
            ("source=invoice&billing_month=2026-13", "billing_month"),
            ("source=invoice&billing_month=2026-1", "billing_month"),
            ("source=invoice&charge_month=June", "charge_month"),
            (
                "source=invoice&billing_month=2026-05&charge_month=2026-05",
                "charge_month",
            ),
            ("source=estimate&start=2026-01-01&end=2026-04-02", "start"),
            ("source=estimate&start=2026-06-02&end=2026-06-01", "start"),
            ("source=estimate&timezone=Mars/Olympus", "timezone"),
            ("source=estimate&start=yesterday", "start"),
            ("source=estimate&timeframe=fortnight", "timeframe"),
            ("billing_month=2026-05", "source"),
            ("source=bill", "source"),
            ("source=estimate&expand=organization", "expand"),
        ] {
            let r = get(&app, &admin, &format!("/v1/account/focus?{query}")).await;
            let err = r.expect_error(400, "validation_error");
            assert_eq!(err["field"], field, "{on}: {query}: {}", r.text);
            assert!(r.message().contains(field), "{on}: {query}: {}", r.text);
        }
        // Exactly 90 days is an estimate's longest range.
        let r = get(
            &app,
            &admin,
            "/v1/account/focus?source=estimate&start=2026-01-01&end=2026-04-01",
        )
        .await;
        r.expect(200);
        assert_eq!(parse_csv(&r.text).rows.len(), 0);
        app.assert_reconciled().await;
    }
}
