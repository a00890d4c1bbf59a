//! Spending limits over HTTP (API.md section 6): a key's limit blocks that key only, an
//! account's every key, usage events reported with `api_key_id` count toward that key's
//! limits; the listing reads the current period in the limit's zone; bad input is refused
//! naming the field, with nothing written; the operator manages any account's limits.

use crate::harness::{int, millis, new_id, rfc3339, Body, Resp, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

const EP: &str = "fal-ai/flux/dev";
/// What a start of `EP` holds: 4 megapixels at 0.025 USD.
const HOLD: i64 = 100_000_000;
/// One megapixel.
const MP: i64 = 25_000_000;

const OWN: &str = "/v1/account/spending-limits";

fn key_id(key: &str) -> &str {
    key.split(':').next().expect("key_id:secret")
}

fn ms(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap()
        .timestamp_millis()
}

async fn create(s: &TestApp, admin: &str, body: Value) -> Resp {
    s.raw(Method::POST, OWN, Some(admin), Body::Json(body))
        .await
}

async fn limits(s: &TestApp, admin: &str) -> Vec<Value> {
    s.raw(Method::GET, OWN, Some(admin), Body::None)
        .await
        .expect(200)["limits"]
        .as_array()
        .expect("limits")
        .clone()
}

/// Submits a request with `caller` and starts it.
async fn submit_and_start(s: &TestApp, caller: &str) -> (String, Resp) {
    let id = s.submit_ok(caller, EP).await;
    let r = s.start(&id, None).await;
    (id, r)
}

fn event(username: &str, at: i64, units: &str, api_key_id: Option<&str>) -> Value {
    let mut e = json!({
        "event_id": new_id(),
        "endpoint_id": EP,
        "username": username,
        "timestamp": rfc3339(at),
        "status_code": 200,
        "billable_units": units,
    });
    if let Some(k) = api_key_id {
        e["api_key_id"] = json!(k);
    }
    e
}

fn spent_and_held(l: &Value) -> (i64, i64) {
    (int(&l["spent_nano_usd"]), int(&l["held_nano_usd"]))
}

#[tokio::test]
async fn a_key_limit_blocks_that_key_only_and_an_account_limit_every_key() {
    let s = TestApp::spawn_at(ms("2026-06-10T12:00:00Z")).await;
    let one = s.customer("acme", Some(("100", "paid"))).await.key;
    let two = s.create_key("acme", "API").await;
    let admin = s.create_key("acme", "ADMIN").await;
    let other = s.customer("other", Some(("100", "paid"))).await.key;

    // A key's limit with room for one hold.
    let r = create(
        &s,
        &admin,
        json!({
            "scope": "api_key", "api_key_id": key_id(&one), "period": "day",
            "amount_usd": "0.10", "action": "block",
        }),
    )
    .await;
    let key_limit = r.expect(201).clone();
    assert_eq!(key_limit["scope"], "api_key");
    assert_eq!(key_limit["api_key_id"], key_id(&one));
    assert_eq!(key_limit["timezone"], "UTC");
    assert_eq!(key_limit["alert_at_percent"], json!([50, 80, 100]));
    assert_eq!(
        (
            int(&key_limit["amount_nano_usd"]),
            key_limit["amount_usd"].as_f64()
        ),
        (HOLD, Some(0.1))
    );
    assert!(key_limit["limit_id"].as_str().unwrap().starts_with("lim_"));
    let key_limit_id = key_limit["limit_id"].as_str().unwrap().to_string();

    let (first, r) = submit_and_start(&s, &one).await;
    r.expect(200);
    let (_, r) = submit_and_start(&s, &one).await;
    let err = r.expect_error(403, "spending_limit_exceeded");
    assert_eq!(err["limit_id"], key_limit_id.as_str());
    assert_eq!(err["resets_at"], "2026-06-11T00:00:00.000Z");
    assert_eq!(
        (int(&err["held_nano_usd"]), int(&err["required_nano_usd"])),
        (HOLD, HOLD)
    );
    let message = r.message();
    assert!(
        message.contains(&key_limit_id) && message.contains("resets at 2026-06-11t00:00:00.000z"),
        "{message}"
    );
    // The other key is not limited by it.
    let (running, r) = submit_and_start(&s, &two).await;
    r.expect(200);

    // An account limit counts every key's holds: 0.20 of 0.25 already run.
    let r = create(
        &s,
        &admin,
        json!({ "scope": "account", "period": "day", "amount_usd": "0.25", "action": "block" }),
    )
    .await;
    let account_limit = r.expect(201).clone();
    assert_eq!(spent_and_held(&account_limit), (0, 2 * HOLD));
    let (_, r) = submit_and_start(&s, &two).await;
    let err = r.expect_error(403, "spending_limit_exceeded");
    assert_eq!(err["limit_id"], account_limit["limit_id"]);

    // The first request settles for one megapixel: both limits count it.
    s.complete(&first, json!({ "status_code": 200, "billable_units": "1" }))
        .await
        .expect(200);
    let listed = limits(&s, &admin).await;
    assert_eq!(spent_and_held(&listed[0]), (MP, 0));
    assert_eq!(spent_and_held(&listed[1]), (MP, HOLD));

    // Usage events reported with a key count toward that key's limits; a key of another
    // account, or no key at all, is refused for that event alone.
    let now = s.now_ms();
    let r = s
        .usage_events(json!([
            event("acme", now, "3", Some(key_id(&one))),
            event("acme", now, "1", Some(key_id(&other))),
            event("acme", now, "1", Some("no-such-key")),
            event("acme", now, "1", None),
        ]))
        .await;
    let results = r.expect(200)["results"].as_array().unwrap().clone();
    assert_eq!(results[0]["billed"], true, "{}", r.text);
    for i in [1, 2] {
        assert_eq!(results[i]["status_code"], 400, "{}", r.text);
        assert_eq!(results[i]["error"]["field"], "api_key_id");
        assert_eq!(results[i]["error"]["index"], i);
    }
    assert_eq!(results[3]["billed"], true);
    let listed = limits(&s, &admin).await;
    assert_eq!(spent_and_held(&listed[0]), (4 * MP, 0), "the key's: 1 + 3");
    assert_eq!(
        spent_and_held(&listed[1]),
        (5 * MP, HOLD),
        "the account's: 1 + 3 + 1"
    );
    // The key's limit is spent: its next start is refused, the other key's still admitted
    // by it (and refused by the account's).
    let (_, r) = submit_and_start(&s, &one).await;
    assert_eq!(
        r.expect_error(403, "spending_limit_exceeded")["limit_id"],
        key_limit_id.as_str()
    );
    assert_eq!(listed[0]["alerted_at_percent"], json!([50, 80, 100]));
    assert_eq!(listed[0]["reached"], true);

    s.cancel(&running).await.expect(200);
    s.assert_reconciled().await;
}

#[tokio::test]
async fn the_listing_reads_the_current_period_in_the_limits_zone() {
    // 23:30 in New York on 2026-06-10.
    let s = TestApp::spawn_at(ms("2026-06-11T03:30:00Z")).await;
    let caller = s.customer("acme", Some(("100", "paid"))).await.key;
    let admin = s.create_key("acme", "ADMIN").await;
    let r = create(
        &s,
        &admin,
        json!({
            "scope": "account", "period": "day", "timezone": "America/New_York",
            "amount_usd": "1", "action": "alert", "alert_at_percent": [100, 1, 1],
        }),
    )
    .await;
    let l = r.expect(201).clone();
    assert_eq!(l["alert_at_percent"], json!([1, 100]));
    assert_eq!(l["period_start"], "2026-06-10T04:00:00.000Z");
    assert_eq!(l["resets_at"], "2026-06-11T04:00:00.000Z");
    assert_eq!(l["created_at"], "2026-06-11T03:30:00.000Z");
    let (done, r) = submit_and_start(&s, &caller).await;
    r.expect(200);
    s.complete(&done, json!({ "status_code": 200, "billable_units": "2" }))
        .await
        .expect(200);
    let (running, r) = submit_and_start(&s, &caller).await;
    r.expect(200);
    let listed = limits(&s, &admin).await;
    assert_eq!(spent_and_held(&listed[0]), (2 * MP, HOLD));
    assert_eq!(listed[0]["alerted_at_percent"], json!([1]));
    assert_eq!(listed[0]["spent_usd"].as_f64(), Some(0.05));

    // At local midnight the period starts over: nothing spent, the running hold still counts.
    s.set_now(ms("2026-06-11T04:00:00Z"));
    let listed = limits(&s, &admin).await;
    assert_eq!(spent_and_held(&listed[0]), (0, HOLD));
    assert_eq!(listed[0]["alerted_at_percent"], json!([]));
    assert_eq!(
        millis(&listed[0]["period_start"]),
        ms("2026-06-11T04:00:00Z")
    );
    assert_eq!(millis(&listed[0]["resets_at"]), ms("2026-06-12T04:00:00Z"));
    s.complete(
        &running,
        json!({ "status_code": 200, "billable_units": "1" }),
    )
    .await
    .expect(200);
    let listed = limits(&s, &admin).await;
    assert_eq!(
        spent_and_held(&listed[0]),
        (MP, 0),
        "counted in the new day"
    );
    s.assert_reconciled().await;
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_writes_nothing() {
    let s = TestApp::spawn().await;
    s.customer("acme", Some(("10", "paid"))).await;
    let admin = s.create_key("acme", "ADMIN").await;
    let mine = s.create_key("acme", "API").await;
    let theirs = s.customer("other", None).await.key;
    let base = json!({ "scope": "account", "period": "day", "amount_usd": "5", "action": "block" });
    let with = |changes: Value| {
        let mut b = base.clone();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                b.as_object_mut().unwrap().remove(k);
            } else {
                b[k] = v.clone();
            }
        }
        b
    };
    let cases = [
        (with(json!({ "amount_usd": "0" })), "amount_usd"),
        (with(json!({ "amount_usd": "-1" })), "amount_usd"),
        (with(json!({ "amount_usd": "five" })), "amount_usd"),
        (with(json!({ "amount_usd": 5 })), "amount_usd"),
        (with(json!({ "amount_usd": "1000000.01" })), "amount_usd"),
        (with(json!({ "amount_usd": null })), "amount_usd"),
        (with(json!({ "period": "year" })), "period"),
        (with(json!({ "timezone": "Mars/Olympus_Mons" })), "timezone"),
        (with(json!({ "action": "stop" })), "action"),
        (with(json!({ "scope": "team" })), "scope"),
        (with(json!({ "scope": "api_key" })), "api_key_id"),
        (with(json!({ "api_key_id": key_id(&mine) })), "api_key_id"),
        (
            with(json!({ "scope": "api_key", "api_key_id": key_id(&theirs) })),
            "api_key_id",
        ),
        (
            with(json!({ "scope": "api_key", "api_key_id": "no-such-key" })),
            "api_key_id",
        ),
        (with(json!({ "alert_at_percent": [0] })), "alert_at_percent"),
        (
            with(json!({ "alert_at_percent": [50, 1001] })),
            "alert_at_percent",
        ),
        (
            with(json!({ "alert_at_percent": [-5] })),
            "alert_at_percent[0]",
        ),
        (with(json!({ "currency": "EUR" })), "currency"),
    ];
    let operator_path = "/v1/admin/accounts/acme/spending-limits";
    for (body, field) in &cases {
        for (path, key) in [
            (OWN, admin.as_str()),
            (operator_path, s.operator_key.as_str()),
        ] {
            let r = s
                .raw(Method::POST, path, Some(key), Body::Json(body.clone()))
                .await;
            let err = r.expect_error(400, "validation_error");
            assert_eq!(err["field"], *field, "{body} on {path}: {}", r.text);
            assert!(limits(&s, &admin).await.is_empty(), "{body} wrote a limit");
        }
    }

    // A change is checked the same way, and a refused one leaves the limit as it was.
    let made = create(&s, &admin, base.clone()).await.expect(201).clone();
    let id = made["limit_id"].as_str().unwrap();
    for (body, field) in [
        (json!({ "amount_usd": "0" }), "amount_usd"),
        (json!({ "amount_usd": "x" }), "amount_usd"),
        (json!({ "alert_at_percent": [2000] }), "alert_at_percent"),
        (json!({ "action": "stop" }), "action"),
        (json!({ "period": "week" }), "period"),
        (json!({ "timezone": "UTC" }), "timezone"),
    ] {
        let r = s
            .raw(
                Method::PUT,
                &format!("{OWN}/{id}"),
                Some(&admin),
                Body::Json(body.clone()),
            )
            .await;
        assert_eq!(
            r.expect_error(400, "validation_error")["field"],
            field,
            "{body}"
        );
        assert_eq!(
            limits(&s, &admin).await,
            vec![made.clone()],
            "{body} changed it"
        );
    }
    // Another account's limit is unknown to this one, and an unknown id is 404.
    let their_admin = s.create_key("other", "ADMIN").await;
    for (key, path) in [
        (their_admin.as_str(), format!("{OWN}/{id}")),
        (admin.as_str(), format!("{OWN}/lim_unknown")),
    ] {
        let r = s
            .raw(
                Method::PUT,
                &path,
                Some(key),
                Body::Json(json!({ "amount_usd": "1" })),
            )
            .await;
        r.expect_error(404, "not_found");
        let r = s.raw(Method::DELETE, &path, Some(key), Body::None).await;
        r.expect_error(404, "not_found");
    }
    let r = s
        .raw(
            Method::DELETE,
            &format!("{OWN}/bad%20id"),
            Some(&admin),
            Body::None,
        )
        .await;
    assert_eq!(r.expect_error(400, "validation_error")["field"], "limit_id");
    assert_eq!(limits(&s, &admin).await, vec![made]);
    s.assert_reconciled().await;
}

#[tokio::test]
async fn the_operator_manages_any_accounts_limits() {
    let s = TestApp::spawn().await;
    let caller = s.customer("acme", Some(("10", "paid"))).await.key;
    let path = "/v1/admin/accounts/acme/spending-limits";
    let r = s
        .op(
            Method::POST,
            path,
            json!({ "scope": "account", "period": "week", "timezone": "Asia/Tokyo",
                    "amount_usd": "0.15", "action": "block", "alert_at_percent": [] }),
        )
        .await;
    let made = r.expect(201).clone();
    let id = made["limit_id"].as_str().unwrap().to_string();
    assert_eq!(made["period"], "week");
    assert_eq!(made["alert_at_percent"], json!([]));
    let (_, r) = submit_and_start(&s, &caller).await;
    r.expect(200);
    let (_, r) = submit_and_start(&s, &caller).await;
    r.expect_error(403, "spending_limit_exceeded");
    // Raised, the same limit (same id and spend) admits the next.
    let r = s
        .op(
            Method::PUT,
            &format!("{path}/{id}"),
            json!({ "amount_usd": "0.20" }),
        )
        .await;
    let changed = r.expect(200).clone();
    assert_eq!(changed["limit_id"], id.as_str());
    assert_eq!(spent_and_held(&changed), (0, HOLD));
    let (_, r) = submit_and_start(&s, &caller).await;
    r.expect(200);
    let listed = s.op_get(path).await.expect(200)["limits"].clone();
    assert_eq!(spent_and_held(&listed[0]), (0, 2 * HOLD));
    let r = s
        .raw(
            Method::DELETE,
            &format!("{path}/{id}"),
            Some(&s.operator_key),
            Body::None,
        )
        .await;
    assert_eq!(r.status.as_u16(), 204);
    assert_eq!(s.op_get(path).await.expect(200)["limits"], json!([]));
    // A customer key cannot use the operator's path, nor an API key the customer's.
    let r = s.raw(Method::GET, path, Some(&caller), Body::None).await;
    r.expect_error(403, "authorization_error");
    let r = s.raw(Method::GET, OWN, Some(&caller), Body::None).await;
    r.expect_error(403, "authorization_error");
    s.assert_reconciled().await;
}

/// The notices reach the platform's webhooks: each threshold once, `spending_limit.reached`
/// when the spend reaches the amount and when a block limit first refuses a start, with the
/// limit's facts (USD numbers beside the nano-USD).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spending_limit_notices_are_delivered_to_webhooks() {
    let s = TestApp::spawn_at(ms("2026-06-10T12:00:00Z")).await;
    let receiver = tollgate_api::testing::receiver::Receiver::start().await;
    s.op(
        Method::POST,
        "/v1/admin/webhooks",
        json!({ "url": receiver.url("/hook"),
                "events": ["spending_limit.alert", "spending_limit.reached"] }),
    )
    .await
    .expect(201);
    let caller = s.customer("acme", Some(("100", "paid"))).await.key;
    let admin = s.create_key("acme", "ADMIN").await;
    let alert = create(
        &s,
        &admin,
        json!({ "scope": "account", "period": "day", "timezone": "Europe/Berlin",
                "amount_usd": "0.10", "action": "alert", "alert_at_percent": [50] }),
    )
    .await
    .expect(201)["limit_id"]
        .as_str()
        .unwrap()
        .to_string();
    let block = create(
        &s,
        &admin,
        json!({ "scope": "account", "period": "day", "amount_usd": "0.15", "action": "block",
                "alert_at_percent": [] }),
    )
    .await
    .expect(201)["limit_id"]
        .as_str()
        .unwrap()
        .to_string();
    let now = s.now_ms();
    // 0.05 USD: the alert limit's 50%.
    s.usage_events(json!([event("acme", now, "2", None)]))
        .await
        .expect(200);
    // 0.10: the alert limit reached; a start (a hold of 0.10) refused by the block limit,
    // twice: one notice.
    s.usage_events(json!([event("acme", now, "2", None)]))
        .await
        .expect(200);
    for _ in 0..2 {
        let (_, r) = submit_and_start(&s, &caller).await;
        r.expect_error(403, "spending_limit_exceeded");
    }
    let d = s.dispatcher();
    while !d.run_once().await.unwrap().is_empty() {}
    let got: Vec<Value> = receiver.got().iter().map(|r| r.json()).collect();
    let said: Vec<(String, String, Option<i64>)> = got
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["data"]["limit_id"].as_str().unwrap().to_string(),
                e["data"]["threshold_percent"].as_i64(),
            )
        })
        .collect();
    assert_eq!(
        said,
        vec![
            ("spending_limit.alert".into(), alert.clone(), Some(50)),
            ("spending_limit.reached".into(), alert.clone(), None),
            ("spending_limit.reached".into(), block.clone(), None),
        ],
        "{got:?}"
    );
    let first = &got[0];
    assert_eq!(first["username"], "acme");
    let data = &first["data"];
    assert_eq!(
        (
            data["scope"].as_str(),
            data["period"].as_str(),
            data["action"].as_str()
        ),
        (Some("account"), Some("day"), Some("alert"))
    );
    assert_eq!(data["timezone"], "Europe/Berlin");
    assert_eq!(int(&data["amount_nano_usd"]), 4 * MP);
    assert_eq!(int(&data["spent_nano_usd"]), 2 * MP);
    assert_eq!(data["spent_usd"].as_f64(), Some(0.05));
    assert_eq!(data["period_start"], "2026-06-09T22:00:00.000Z");
    assert_eq!(data["resets_at"], "2026-06-10T22:00:00.000Z");
    assert_eq!(
        int(&got[2]["data"]["spent_nano_usd"]),
        4 * MP,
        "refused at 0.10 of 0.15"
    );
    s.assert_reconciled().await;
}

/// An operator's change of terms that locks or unlocks the account, and a limit created or
/// changed with its spend already past a threshold, are told in their own commits (they are
/// not operations of a batch, but they write to the same outbox).
#[tokio::test]
async fn terms_that_lock_and_limits_set_below_their_spend_notify_in_their_own_commit() {
    let s = TestApp::spawn_at(ms("2026-06-10T12:00:00Z")).await;
    let receiver = tollgate_api::testing::receiver::Receiver::start().await;
    s.op(
        Method::POST,
        "/v1/admin/webhooks",
        json!({ "url": receiver.url("/hook"),
                "events": ["account.locked", "account.unlocked", "spending_limit.alert",
                           "spending_limit.reached"] }),
    )
    .await
    .expect(201);
    s.customer("acme", Some(("1.00", "paid"))).await;
    let admin = s.create_key("acme", "ADMIN").await;
    let now = s.now_ms();
    // 0.10 USD spent today.
    for _ in 0..2 {
        s.usage_events(json!([event("acme", now, "2", None)]))
            .await
            .expect(200);
    }
    let d = s.dispatcher();
    // The purchase unlocked the new account (its balance was at the threshold, zero).
    while !d.run_once().await.unwrap().is_empty() {}
    let types = |from: usize| -> Vec<String> {
        receiver.got()[from..]
            .iter()
            .map(|r| r.json()["type"].as_str().unwrap().to_string())
            .collect()
    };
    // A threshold of 2 USD locks a balance of 0.90; 0.50 unlocks it.
    s.set_pricing("acme", json!({ "lock_threshold_usd": "2" }))
        .await
        .expect(200);
    while !d.run_once().await.unwrap().is_empty() {}
    assert_eq!(types(0), ["account.unlocked", "account.locked"]);
    assert_eq!(
        receiver.got()[1].json()["data"]["lock_reason"],
        "exhausted_balance"
    );
    s.set_pricing("acme", json!({ "lock_threshold_usd": "0.5" }))
        .await
        .expect(200);
    // A change that keeps the lock as it is says nothing.
    s.set_pricing("acme", json!({ "lock_threshold_usd": "0.4" }))
        .await
        .expect(200);
    while !d.run_once().await.unwrap().is_empty() {}
    assert_eq!(types(2), ["account.unlocked"]);
    // A limit of 0.15 created after 0.10 was spent: its 50% at once, in its creation's commit.
    let id = create(
        &s,
        &admin,
        json!({ "scope": "account", "period": "day", "amount_usd": "0.15", "action": "alert",
                "alert_at_percent": [50, 80] }),
    )
    .await
    .expect(201)["limit_id"]
        .as_str()
        .unwrap()
        .to_string();
    while !d.run_once().await.unwrap().is_empty() {}
    assert_eq!(types(3), ["spending_limit.alert"]);
    assert_eq!(receiver.got()[3].json()["data"]["threshold_percent"], 50);
    // Lowered to 0.10: 80% and the amount itself are reached by the change.
    s.raw(
        Method::PUT,
        &format!("{OWN}/{id}"),
        Some(&admin),
        Body::Json(json!({ "amount_usd": "0.10" })),
    )
    .await
    .expect(200);
    while !d.run_once().await.unwrap().is_empty() {}
    assert_eq!(types(4), ["spending_limit.alert", "spending_limit.reached"]);
    assert_eq!(receiver.got()[4].json()["data"]["threshold_percent"], 80);
    s.assert_reconciled().await;
}
