//! Credit activity and monthly statements over HTTP (`GET /v1/account/credit-activity`,
//! `GET /v1/account/statements/{month}`), on SQLite and PostgreSQL: purchases, free grants,
//! usage over several days and months (recorded days, not event days), an expiry, adjustments
//! both ways; each statement adds up and ends at the balance the account had at the month's
//! end, and opens the next; credit activity's running balance matches the ledger, one usage
//! row per day after that day's other movements; paging repeats and skips nothing; bad months
//! are refused; another account's movements never show; `ADMIN` keys only.

use crate::harness::{dec, int, rfc3339, Body, Resp, TestApp, USD};
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tollgate_store::testing::{backends, Backend};

/// 2026-05-01T00:00:00Z.
const MAY: i64 = 1_777_593_600_000;
const JUNE: i64 = MAY + 31 * DAY;
const JULY: i64 = JUNE + 30 * DAY;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const FLUX_DEV: &str = "fal-ai/flux/dev";
const SCHNELL: &str = "fal-ai/flux/schnell";

async fn get(app: &TestApp, key: &str, path: &str) -> Resp {
    app.raw(Method::GET, path, Some(key), Body::None).await
}

/// Records one usage event of `units` billable units; returns what it cost.
async fn usage(app: &TestApp, user: &str, id: &str, endpoint: &str, at: i64, units: &str) -> i64 {
    let r = app
        .usage_events(json!([{
            "event_id": id, "endpoint_id": endpoint, "username": user,
            "timestamp": rfc3339(at), "status_code": 200, "billable_units": units,
        }]))
        .await;
    let result = &r.expect(200)["results"][0];
    int(&result["cost_estimate_nano_usd"])
}

async fn adjust(app: &TestApp, user: &str, id: &str, amount: &str) {
    app.op(
        Method::POST,
        &format!("/v1/admin/accounts/{user}/adjustments"),
        json!({"adjustment_id": id, "amount_usd": amount, "reason": "correction"}),
    )
    .await
    .expect(201);
}

async fn balance(app: &TestApp, user: &str) -> i64 {
    int(&app.account(user).await["balance_nano_usd"])
}

async fn statement(app: &TestApp, key: &str, month: &str) -> Value {
    get(app, key, &format!("/v1/account/statements/{month}"))
        .await
        .expect(200)
        .clone()
}

/// Every row of credit activity for `query`, through pages of `limit`.
async fn activity(app: &TestApp, key: &str, query: &str, limit: usize) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut path = format!("/v1/account/credit-activity?limit={limit}{query}");
    loop {
        let page = get(app, key, &path).await.expect(200).clone();
        let items = page["activity"].as_array().unwrap();
        assert!(items.len() <= limit);
        rows.extend(items.iter().cloned());
        if page["has_more"] == false {
            assert_eq!(page["next_cursor"], Value::Null);
            return rows;
        }
        let cursor = page["next_cursor"].as_str().unwrap();
        path = format!("/v1/account/credit-activity?limit={limit}{query}&cursor={cursor}");
    }
}

/// The statement's movements, in the order opening + movements = closing adds them.
const MOVEMENTS: [&str; 7] = [
    "purchases",
    "grants",
    "usage",
    "expired",
    "refunds",
    "disputes",
    "adjustments",
];

fn adds_up(s: &Value) {
    let moved: i64 = MOVEMENTS
        .iter()
        .map(|m| int(&s[format!("{m}_nano_usd")]))
        .sum();
    assert_eq!(
        int(&s["opening_balance_nano_usd"]) + moved,
        int(&s["closing_balance_nano_usd"]),
        "{s}"
    );
    let by_endpoint: i64 = s["usage_by_endpoint"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| int(&u["cost_nano_usd"]))
        .sum();
    assert_eq!(by_endpoint, -int(&s["usage_nano_usd"]), "{s}");
}

/// acme's and other's movements from May to July 2026, on `backend`, with the figures they
/// come to (each checked as it is made).
struct History {
    app: TestApp,
    admin: String,
    api: String,
    other_admin: String,
    may1: i64,
    may2: i64,
    expired: i64,
    may_end: i64,
    june1: i64,
    june15: i64,
    june_end: i64,
    now_balance: i64,
}

impl History {
    async fn on(backend: &Backend) -> History {
        let on = backend.name();
        let app = TestApp::spawn_at_on(backend, MAY + HOUR).await;
        app.create_account("acme").await.expect(201);
        app.create_account("other").await.expect(201);
        let admin = app.create_key("acme", "ADMIN").await;
        let api = app.create_key("acme", "API").await;
        let other_admin = app.create_key("other", "ADMIN").await;

        // May 1: a paid purchase, a free grant, free credits that expire on May 3, usage.
        app.purchase("acme", "p-1", "50", "paid").await.expect(201);
        app.purchase("acme", "g-1", "10", "free").await.expect(201);
        app.op(
            Method::POST,
            "/v1/admin/accounts/acme/purchases",
            json!({"purchase_id": "g-exp", "amount_usd": "5", "kind": "free",
                       "expires_at": rfc3339(MAY + 2 * DAY)}),
        )
        .await
        .expect(201);
        app.purchase("other", "theirs", "7", "paid")
            .await
            .expect(201);
        app.set_now(MAY + 10 * HOUR);
        let may1 = usage(&app, "acme", "e-1", FLUX_DEV, MAY + 9 * HOUR, "2").await
            + usage(&app, "acme", "e-2", FLUX_DEV, MAY + 10 * HOUR, "1").await;
        // 3 megapixels at 0.025 USD.
        assert_eq!(may1, 75_000_000, "{on}");
        usage(&app, "other", "o-1", FLUX_DEV, MAY + 10 * HOUR, "4").await;

        // May 2: an event that happened on May 1, recorded on May 2, counts on May 2; a credit.
        app.set_now(MAY + DAY + 8 * HOUR);
        let may2 = usage(&app, "acme", "e-3", SCHNELL, MAY + 23 * HOUR, "10").await;
        assert_eq!(may2, 30_000_000, "{on}");
        adjust(&app, "acme", "adj-credit", "3").await;

        // May 3: what is left of the expiring grant (spent first) expires; a debit.
        app.advance(DAY).await;
        let expired = 5 * USD - may1 - may2;
        adjust(&app, "acme", "adj-debit", "-1.5").await;
        app.set_now(MAY + 30 * DAY + 23 * HOUR);
        let may_end = balance(&app, "acme").await;
        assert_eq!(
            may_end,
            50 * USD + 15 * USD - may1 - may2 - expired + 3 * USD - 1_500_000_000,
            "{on}"
        );

        // June: usage on two days, and a purchase.
        app.set_now(JUNE + 5 * HOUR);
        let june1 = usage(&app, "acme", "e-4", FLUX_DEV, JUNE + 4 * HOUR, "4").await;
        app.purchase("acme", "p-2", "20", "paid").await.expect(201);
        app.set_now(JUNE + 14 * DAY);
        let june15 = usage(&app, "acme", "e-5", SCHNELL, JUNE + 14 * DAY, "7").await
            + usage(&app, "acme", "e-6", FLUX_DEV, JUNE + 14 * DAY, "1").await;
        app.set_now(JULY - 1);
        let june_end = balance(&app, "acme").await;
        // July so far: usage only.
        app.set_now(JULY + 2 * HOUR);
        let july1 = usage(&app, "acme", "e-7", FLUX_DEV, JULY + HOUR, "2").await;
        let now_balance = balance(&app, "acme").await;
        assert_eq!(now_balance, june_end - july1, "{on}");
        History {
            app,
            admin,
            api,
            other_admin,
            may1,
            may2,
            expired,
            may_end,
            june1,
            june15,
            june_end,
            now_balance,
        }
    }
}

/// May's statement has every kind of movement and adds up to the balance at May's end; June
/// opens where May closed; July so far closes at the balance now; April, before any movement,
/// is all zeros.
#[tokio::test]
async fn each_months_statement_adds_up_to_its_closing_balance_and_opens_the_next() {
    for backend in backends() {
        let on = backend.name();
        let History {
            app,
            admin,
            may1,
            may2,
            expired,
            may_end,
            june1,
            june15,
            june_end,
            now_balance,
            ..
        } = History::on(&backend).await;
        // May's statement: every kind, adding up to the balance at the month's end.
        let may = statement(&app, &admin, "2026-05").await;
        assert_eq!(may["month"], "2026-05");
        assert_eq!(int(&may["opening_balance_nano_usd"]), 0, "{on}: {may}");
        assert_eq!(int(&may["purchases_nano_usd"]), 50 * USD);
        assert_eq!(int(&may["grants_nano_usd"]), 15 * USD);
        assert_eq!(int(&may["usage_nano_usd"]), -(may1 + may2), "{on}: {may}");
        assert_eq!(int(&may["expired_nano_usd"]), -expired, "{on}: {may}");
        assert_eq!(int(&may["adjustments_nano_usd"]), 1_500_000_000);
        assert_eq!(int(&may["refunds_nano_usd"]), 0);
        assert_eq!(int(&may["disputes_nano_usd"]), 0);
        assert_eq!(
            int(&may["closing_balance_nano_usd"]),
            may_end,
            "{on}: {may}"
        );
        assert_eq!(dec(&may["closing_balance_usd"]), Decimal::new(may_end, 9));
        adds_up(&may);
        let lines = may["usage_by_endpoint"].as_array().unwrap();
        assert_eq!(lines.len(), 2, "{on}: {may}");
        assert_eq!(
            (
                &lines[0]["endpoint_id"],
                &lines[0]["unit"],
                &lines[0]["quantity"]
            ),
            (&json!(FLUX_DEV), &json!("megapixel"), &json!(3.0))
        );
        assert_eq!(
            (int(&lines[0]["cost_nano_usd"]), &lines[0]["requests"]),
            (may1, &json!(2))
        );
        assert_eq!(
            (
                &lines[1]["endpoint_id"],
                &lines[1]["quantity"],
                int(&lines[1]["cost_nano_usd"])
            ),
            (&json!(SCHNELL), &json!(10.0), may2)
        );

        // June opens where May closed and closes at the balance at its end; July so far at now.
        let june = statement(&app, &admin, "2026-06").await;
        adds_up(&june);
        assert_eq!(int(&june["opening_balance_nano_usd"]), may_end, "{on}");
        assert_eq!(int(&june["purchases_nano_usd"]), 20 * USD);
        assert_eq!(int(&june["usage_nano_usd"]), -(june1 + june15), "{on}");
        assert_eq!(int(&june["closing_balance_nano_usd"]), june_end, "{on}");
        let july = statement(&app, &admin, "2026-07").await;
        adds_up(&july);
        assert_eq!(int(&july["opening_balance_nano_usd"]), june_end);
        assert_eq!(int(&july["closing_balance_nano_usd"]), now_balance);
        // Before the account had any movement: all zeros.
        let april = statement(&app, &admin, "2026-04").await;
        adds_up(&april);
        assert_eq!(int(&april["closing_balance_nano_usd"]), 0);
        assert_eq!(april["usage_by_endpoint"], json!([]));

        app.assert_reconciled().await;
    }
}

/// Credit activity, newest first, is the same in one page and in pages of two; each row's
/// balance follows from the next older one, the newest is the balance now, usage is one row
/// per day at its end, and a month's rows add up to its statement.
#[tokio::test]
async fn credit_activity_runs_the_balance_back_from_now_in_any_page_size() {
    for backend in backends() {
        let on = backend.name();
        let History {
            app,
            admin,
            may2,
            expired,
            may_end,
            june_end,
            now_balance,
            ..
        } = History::on(&backend).await;
        // Credit activity, newest first, in one page and in pages of two: the same rows.
        let all = activity(&app, &admin, "", 1000).await;
        assert_eq!(activity(&app, &admin, "", 2).await, all, "{on}");
        let kinds: Vec<(&str, &str)> = all
            .iter()
            .map(|r| {
                (
                    r["kind"].as_str().unwrap(),
                    r["reference"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("usage", "2026-07-01"),
                ("usage", "2026-06-15"),
                ("usage", "2026-06-01"),
                ("purchase", "p-2"),
                ("adjustment", "adj-debit"),
                ("expiry", "g-exp"),
                ("usage", "2026-05-02"),
                ("adjustment", "adj-credit"),
                ("usage", "2026-05-01"),
                ("grant", "g-exp"),
                ("grant", "g-1"),
                ("purchase", "p-1"),
            ],
            "{on}"
        );
        // The newest row's balance is the balance now; each row's balance less its amount is
        // the balance after the row before it; the oldest starts from zero.
        assert_eq!(int(&all[0]["balance_after_nano_usd"]), now_balance, "{on}");
        for pair in all.windows(2) {
            assert_eq!(
                int(&pair[0]["balance_after_nano_usd"]) - int(&pair[0]["amount_nano_usd"]),
                int(&pair[1]["balance_after_nano_usd"]),
                "{on}: {pair:?}"
            );
        }
        let oldest = all.last().unwrap();
        assert_eq!(
            int(&oldest["balance_after_nano_usd"]),
            int(&oldest["amount_nano_usd"])
        );
        // Usage is dated the end of its day; its balance is the day's closing balance, which
        // for May 2 and June 15 is what the statement and the account said.
        assert_eq!(all[6]["occurred_at"], rfc3339(MAY + 2 * DAY - 1));
        assert_eq!(int(&all[6]["amount_nano_usd"]), -may2);
        assert_eq!(int(&all[1]["balance_after_nano_usd"]), june_end, "{on}");
        assert_eq!(int(&all[4]["balance_after_nano_usd"]), may_end, "{on}");
        assert_eq!(all[3]["occurred_at"], rfc3339(JUNE + 5 * HOUR));
        assert_eq!(int(&all[3]["amount_nano_usd"]), 20 * USD);
        assert_eq!(all[3]["amount_usd"], json!(20.0));
        assert_eq!(int(&all[5]["amount_nano_usd"]), -expired);
        assert_eq!(int(&all[4]["amount_nano_usd"]), -1_500_000_000);
        // May's rows add up to May's statement.
        let may = statement(&app, &admin, "2026-05").await;
        let in_may = activity(&app, &admin, "&start=2026-05-01&end=2026-06-01", 3).await;
        assert_eq!(in_may, all[4..].to_vec(), "{on}");
        let may_usage: i64 = in_may
            .iter()
            .filter(|r| r["kind"] == "usage")
            .map(|r| int(&r["amount_nano_usd"]))
            .sum();
        assert_eq!(may_usage, int(&may["usage_nano_usd"]));

        app.assert_reconciled().await;
    }
}

/// Another account sees only its own movements, even with acme's cursor, and its own
/// statement.
#[tokio::test]
async fn another_accounts_movements_never_show() {
    for backend in backends() {
        let on = backend.name();
        let History {
            app,
            admin,
            other_admin,
            ..
        } = History::on(&backend).await;
        // Another account sees only its own movements, even with acme's cursor.
        let theirs = activity(&app, &other_admin, "", 10).await;
        let theirs: Vec<&str> = theirs.iter().map(|r| r["kind"].as_str().unwrap()).collect();
        assert_eq!(theirs, ["usage", "purchase"], "{on}");
        let cursor = get(&app, &admin, "/v1/account/credit-activity?limit=1")
            .await
            .expect(200)["next_cursor"]
            .as_str()
            .unwrap()
            .to_string();
        let r = get(
            &app,
            &other_admin,
            &format!("/v1/account/credit-activity?cursor={cursor}"),
        )
        .await;
        assert!(r.expect(200)["activity"]
            .as_array()
            .unwrap()
            .iter()
            .all(|row| row["reference"] != "p-1"));
        let theirs_may = statement(&app, &other_admin, "2026-05").await;
        assert_eq!(
            int(&theirs_may["closing_balance_nano_usd"]),
            7 * USD - 100_000_000
        );

        app.assert_reconciled().await;
    }
}

/// Bad months (naming `month`), bad ranges and paging, and API keys are refused; nothing the
/// refusals did moved money.
#[tokio::test]
async fn bad_months_ranges_paging_and_api_keys_are_refused_and_move_nothing() {
    for backend in backends() {
        let on = backend.name();
        let History {
            app,
            admin,
            api,
            now_balance,
            ..
        } = History::on(&backend).await;
        // Refused: bad months (naming `month`), bad ranges and paging, API keys.
        for bad in [
            "2026-13", "2026-00", "2026-5", "202605", "2026-08", "9999-01", "x",
        ] {
            let r = get(&app, &admin, &format!("/v1/account/statements/{bad}")).await;
            let e = r.expect_error(400, "validation_error");
            assert_eq!(e["field"], "month", "{bad}: {e}");
        }
        for bad in [
            "start=2026-06-01&end=2026-05-01",
            "start=yesterday",
            "end=2026-13-01",
            "limit=0",
            "cursor=nope",
            // Well-formed cursors this read never makes: positions before the epoch, at the
            // ends of the 64-bit range and past year 9999 (base64url of `[at, id]`).
            "cursor=Wy05MjIzMzcyMDM2NzY4Mzc1ODA4LDBd",
            "cursor=Wy0xLDBd",
            "cursor=WzkyMjMzNzIwMzY4NTQ3NzU4MDcsOTIyMzM3MjAzNjg1NDc3NTgwN10",
            "cursor=WzI1MzQwMjMwMDgwMDAwMCwwXQ",
            "month=2026-05",
        ] {
            let r = get(&app, &admin, &format!("/v1/account/credit-activity?{bad}")).await;
            assert_eq!(r.status, 400, "{bad}: {on}");
        }
        for path in [
            "/v1/account/credit-activity",
            "/v1/account/statements/2026-05",
        ] {
            get(&app, &api, path)
                .await
                .expect_error(403, "authorization_error");
        }
        // Nothing the refusals did moved money.
        assert_eq!(balance(&app, "acme").await, now_balance);
        app.assert_reconciled().await;
    }
}

/// An account that goes quiet for months: a statement after the gap opens where the last month
/// with a movement closed (the months in between sought one by one, each empty), credit
/// activity pages across the gap one row at a time, and a year later the same holds.
#[tokio::test]
async fn a_quiet_account_opens_where_it_last_moved() {
    /// 2026-09-01T00:00:00Z and 2027-10-01T00:00:00Z.
    const SEPTEMBER: i64 = JULY + 31 * DAY + 31 * DAY;
    const OCTOBER_2027: i64 = SEPTEMBER + 395 * DAY;
    for backend in backends() {
        let on = backend.name();
        let app = TestApp::spawn_at_on(&backend, MAY + HOUR).await;
        app.create_account("quiet").await.expect(201);
        let admin = app.create_key("quiet", "ADMIN").await;
        app.purchase("quiet", "p-1", "10", "paid").await.expect(201);
        app.set_now(MAY + 3 * DAY);
        let may = usage(&app, "quiet", "q-1", FLUX_DEV, MAY + 3 * DAY, "2").await;
        let may_end = balance(&app, "quiet").await;
        assert_eq!(may_end, 10 * USD - may, "{on}");

        // Nothing in June, July, August; usage on September 2.
        app.set_now(SEPTEMBER + DAY + HOUR);
        let september = usage(&app, "quiet", "q-2", SCHNELL, SEPTEMBER + DAY, "3").await;
        for month in ["2026-06", "2026-07", "2026-08"] {
            let s = statement(&app, &admin, month).await;
            adds_up(&s);
            assert_eq!(int(&s["opening_balance_nano_usd"]), may_end, "{on}: {s}");
            assert_eq!(int(&s["closing_balance_nano_usd"]), may_end, "{on}: {s}");
            assert_eq!(s["usage_by_endpoint"], json!([]), "{on}: {s}");
        }
        let s = statement(&app, &admin, "2026-09").await;
        adds_up(&s);
        assert_eq!(int(&s["opening_balance_nano_usd"]), may_end, "{on}");
        assert_eq!(int(&s["usage_nano_usd"]), -september, "{on}");

        // A year and more later, still quiet: October 2027 opens at September 2026's close.
        app.set_now(OCTOBER_2027 + HOUR);
        let now_balance = balance(&app, "quiet").await;
        assert_eq!(now_balance, may_end - september, "{on}");
        let s = statement(&app, &admin, "2027-10").await;
        assert_eq!(int(&s["opening_balance_nano_usd"]), now_balance, "{on}");
        assert_eq!(int(&s["closing_balance_nano_usd"]), now_balance, "{on}");

        // Credit activity: the same rows in pages of one as in one page, across the gap.
        let all = activity(&app, &admin, "", 100).await;
        assert_eq!(activity(&app, &admin, "", 1).await, all, "{on}");
        let seen: Vec<(&str, &str, i64)> = all
            .iter()
            .map(|r| {
                (
                    r["kind"].as_str().unwrap(),
                    r["reference"].as_str().unwrap(),
                    int(&r["balance_after_nano_usd"]),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("usage", "2026-09-02", now_balance),
                ("usage", "2026-05-04", may_end),
                ("purchase", "p-1", 10 * USD),
            ],
            "{on}"
        );
        // A range that ends in the far future and one within the gap.
        assert_eq!(
            activity(&app, &admin, "&start=2026-06-01&end=9998-12-31", 1).await,
            all[..1].to_vec(),
            "{on}"
        );
        assert_eq!(
            activity(&app, &admin, "&start=2026-06-01&end=2026-09-01", 1).await,
            Vec::<Value>::new(),
            "{on}"
        );
        app.assert_reconciled().await;
    }
}
