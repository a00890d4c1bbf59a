//! Effective-dated terms, operator adjustments and the dispute lock, end to end through HTTP:
//! a usage event is billed with the terms in force at its timestamp; an adjustment credits or
//! debits once, locks and unlocks in its commit; an unlock lifts a dispute and nothing else.
//! On every backend at hand, each ending with the ledger reconciling.

use crate::harness::{d, dec, image, int, rfc3339, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use tollgate_core::ids::AccountId;
use tollgate_core::machine::Op;
use tollgate_store::testing::backends;

/// 2026-09-15T12:00:00Z.
const T0: i64 = 1_789_473_600_000;
const HOUR: i64 = 3_600_000;
const FLUX_DEV: &str = "fal-ai/flux/dev";

fn event(id: &str, at: i64) -> Value {
    json!({
        "event_id": id,
        "endpoint_id": FLUX_DEV,
        "username": "acme",
        "timestamp": rfc3339(at),
        "status_code": 200,
        "output": image(1024, 1024),
    })
}

async fn adjust(app: &TestApp, id: &str, amount: &str) -> crate::harness::Resp {
    app.op(
        Method::POST,
        "/v1/admin/accounts/acme/adjustments",
        json!({ "adjustment_id": id, "amount_usd": amount, "reason": "billing correction" }),
    )
    .await
}

async fn unlock(app: &TestApp) -> crate::harness::Resp {
    app.op(
        Method::POST,
        "/v1/admin/accounts/acme/unlock",
        json!({ "reason": "dispute reviewed" }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usage_event_is_billed_with_the_terms_in_force_at_its_timestamp() {
    for backend in backends() {
        let on = backend.name();
        let app = TestApp::spawn_at_on(&backend, T0).await;
        let customer = app.customer("acme", Some(("10.00", "paid"))).await;
        // A request submitted before the change is billed with the terms of its submission.
        let early = app.submit_ok(&customer.key, FLUX_DEV).await;
        // 10% off from an hour from now.
        app.set_pricing(
            "acme",
            json!({ "percent_discount": "10", "effective_from": rfc3339(T0 + HOUR) }),
        )
        .await
        .expect(200);
        let acct = app.account("acme").await;
        assert_eq!(
            acct["terms"]["in_force"]["percent_discount"],
            Value::Null,
            "{on}"
        );
        let scheduled = &acct["terms"]["scheduled"];
        assert_eq!(scheduled.as_array().map(Vec::len), Some(1), "{on}: {acct}");
        assert_eq!(scheduled[0]["percent_discount"], "10", "{on}");
        assert_eq!(scheduled[0]["effective_from"], rfc3339(T0 + HOUR), "{on}");
        // A version is never dated before the latest one.
        let r = app
            .set_pricing(
                "acme",
                json!({ "concurrency_limit": 3, "effective_from": rfc3339(T0) }),
            )
            .await;
        assert_eq!(
            r.expect_error(400, "validation_error")["field"],
            "effective_from",
            "{on}"
        );

        // Two hours later, the events arrive: one from before the change, one from after.
        app.advance(2 * HOUR).await;
        let r = app
            .usage_events(json!([
                event("before", T0 + HOUR / 2),
                event("after", T0 + 3 * HOUR / 2)
            ]))
            .await;
        let results = r.expect(200)["results"].as_array().unwrap().clone();
        assert_eq!(
            results[0]["percent_discount"],
            Value::Null,
            "{on}: {results:?}"
        );
        assert_eq!(
            dec(&results[1]["percent_discount"]),
            d("10"),
            "{on}: {results:?}"
        );
        let (old, new) = (
            int(&results[0]["cost_estimate_nano_usd"]),
            int(&results[1]["cost_estimate_nano_usd"]),
        );
        assert_eq!(old, 25_000_000, "{on}: 1 MP at 0.025 USD, list price");
        assert_eq!(new, 22_500_000, "{on}: 10% off");
        // Lifecycle requests: the one submitted before the change, completed after it, at list
        // price; one submitted after, discounted.
        let late = app.submit_ok(&customer.key, FLUX_DEV).await;
        let mut lifecycle = 0;
        for (id, percent) in [(&early, None), (&late, Some(d("10")))] {
            app.start(id, None).await.expect(200);
            let r = app
                .complete(
                    id,
                    json!({ "status_code": 200, "output": image(1024, 1024) }),
                )
                .await;
            let body = r.expect(200);
            let got = (!body["percent_discount"].is_null()).then(|| dec(&body["percent_discount"]));
            assert_eq!(got, percent, "{on}: {body}");
            lifecycle += int(&body["cost_estimate_nano_usd"]);
        }
        assert_eq!(lifecycle, 25_000_000 + 22_500_000, "{on}");
        let acct = app.account("acme").await;
        assert_eq!(acct["terms"]["in_force"]["percent_discount"], "10", "{on}");
        assert_eq!(acct["terms"]["scheduled"], json!([]), "{on}");
        assert_eq!(
            int(&acct["balance_nano_usd"]),
            10_000_000_000 - old - new - lifecycle,
            "{on}"
        );
        app.assert_reconciled().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adjustment_credits_or_debits_once_and_locks_or_unlocks_in_its_commit() {
    for backend in backends() {
        let on = backend.name();
        let app = TestApp::spawn_at_on(&backend, T0).await;
        let customer = app.customer("acme", Some(("1.00", "paid"))).await;

        // A debit past the balance: owed, and locked for an exhausted balance.
        let r = adjust(&app, "adj-1", "-1.50").await;
        let first = r.expect(201).clone();
        assert_eq!(int(&first["amount_nano_usd"]), -1_500_000_000, "{on}");
        assert_eq!(int(&first["balance_nano_usd"]), -500_000_000, "{on}");
        assert_eq!(first["locked"], true, "{on}");
        let acct = app.account("acme").await;
        assert_eq!(acct["lock_reason"], "exhausted_balance", "{on}");
        assert_eq!(int(&acct["balance_nano_usd"]), -500_000_000, "{on}");

        // The same id again: the first answer, nothing moved; another amount: 409.
        let again = adjust(&app, "adj-1", "-1.50").await;
        assert_eq!(again.header("idempotent-replayed"), Some("true"), "{on}");
        assert_eq!(again.expect(201), &first, "{on}");
        adjust(&app, "adj-1", "-1.49")
            .await
            .expect_error(409, "conflict");
        assert_eq!(
            int(&app.account("acme").await["balance_nano_usd"]),
            -500_000_000
        );
        // Zero and amounts past the cap are refused, naming the field.
        for bad in ["0", "-1000000.01"] {
            let r = adjust(&app, "adj-bad", bad).await;
            assert_eq!(
                r.expect_error(400, "validation_error")["field"],
                "amount_usd",
                "{bad}"
            );
        }

        // An exhausted balance is not lifted by an unlock, only by credits.
        let r = unlock(&app).await;
        let e = r.expect_error(409, "conflict");
        assert_eq!(e["lock_reason"], "exhausted_balance", "{on}");
        let (_, r) = app.submit(&customer.key, FLUX_DEV).await;
        r.expect_error(403, "account_locked");
        let r = adjust(&app, "adj-2", "2.00").await;
        let credit = r.expect(201);
        assert_eq!(int(&credit["balance_nano_usd"]), 1_500_000_000, "{on}");
        assert_eq!(credit["locked"], false, "{on}");
        let acct = app.account("acme").await;
        assert_eq!(acct["lock_reason"], Value::Null, "{on}");
        // The credit repaid the debt first; the rest never expires.
        assert_eq!(
            int(&acct["adjusted_credit_nano_usd"]),
            1_500_000_000,
            "{on}"
        );
        app.submit_ok(&customer.key, FLUX_DEV).await;
        // The reconciliation shows the adjustments, net, as integers like every amount.
        let rec = app.reconciliation().await;
        for field in ["adjusted_nano_usd", "adjusted_in_ledger_nano_usd"] {
            assert_eq!(
                rec[field].as_i64(),
                Some(500_000_000),
                "{on}: {field}: {rec}"
            );
        }
        app.assert_reconciled().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispute_lock_is_lifted_by_an_unlock_and_not_by_credits() {
    for backend in backends() {
        let on = backend.name();
        let app = TestApp::spawn_at_on(&backend, T0).await;
        let customer = app.customer("acme", Some(("5.00", "paid"))).await;
        let acme = AccountId::parse("acme").unwrap();
        // Set as the payments webhook will: through the engine.
        app.engine
            .execute(Op::LockDisputed {
                account: acme.clone(),
            })
            .await
            .unwrap()
            .unwrap();
        let acct = app.account("acme").await;
        assert_eq!(
            (&acct["locked"], &acct["lock_reason"]),
            (&json!(true), &json!("payment_disputed")),
            "{on}"
        );
        let (_, r) = app.submit(&customer.key, FLUX_DEV).await;
        let e = r.expect_error(403, "account_locked");
        assert_eq!(e["lock_reason"], "payment_disputed", "{on}");
        // Credits do not lift it.
        app.purchase("acme", "p-2", "5.00", "paid")
            .await
            .expect(201);
        assert_eq!(app.account("acme").await["lock_reason"], "payment_disputed");

        let unlocked = unlock(&app).await.expect(200).clone();
        assert_eq!(
            (&unlocked["locked"], &unlocked["lock_reason"]),
            (&json!(false), &Value::Null),
            "{on}"
        );
        // Again: nothing to lift, the same account.
        assert_eq!(unlock(&app).await.expect(200)["lock_reason"], Value::Null);
        app.submit_ok(&customer.key, FLUX_DEV).await;
        // A reason is required.
        let r = app
            .op(
                Method::POST,
                "/v1/admin/accounts/acme/unlock",
                json!({ "reason": "" }),
            )
            .await;
        assert_eq!(
            r.expect_error(400, "validation_error")["field"],
            "reason",
            "{on}"
        );
        app.assert_reconciled().await;
    }
}
