//! Payment history over HTTP (`GET /v1/account/payments`): an account's paid purchases newest
//! first with the top-up invoices its invoice list shows and their exact amounts, free credits
//! absent, keyset paging that repeats and skips nothing, `ADMIN` keys only, never another
//! account's, and refused paging input (400); on SQLite and PostgreSQL.

use crate::harness::{int, rfc3339, Body, TestApp, USD};
use reqwest::Method;
use serde_json::{json, Value};
use tollgate_store::testing::backends;

/// 2026-06-01T00:00:00Z.
const T0: i64 = 1_780_272_000_000;
const DAY: i64 = 86_400_000;

async fn get(app: &TestApp, key: &str, path: &str) -> crate::harness::Resp {
    app.raw(Method::GET, path, Some(key), Body::None).await
}

#[tokio::test]
async fn payments_are_the_paid_purchases_newest_first_with_their_invoices() {
    for backend in backends() {
        let app = TestApp::spawn_at_on(&backend, T0).await;
        app.create_account("acme").await.expect(201);
        app.create_account("other").await.expect(201);
        let admin = app.create_key("acme", "ADMIN").await;
        let api = app.create_key("acme", "API").await;
        let other_admin = app.create_key("other", "ADMIN").await;

        // Two purchases in the same millisecond ("b" then "a") test the tie on purchase_id.
        app.purchase("acme", "first", "12.345678901", "paid")
            .await
            .expect(201);
        app.purchase("acme", "gift", "5", "free").await.expect(201);
        app.set_now(T0 + 1000);
        app.purchase("acme", "b", "0.000000001", "paid")
            .await
            .expect(201);
        app.purchase("acme", "a", "3", "paid").await.expect(201);
        app.purchase("other", "theirs", "7", "paid")
            .await
            .expect(201);
        app.set_now(T0 + 2000);
        app.op(
            Method::POST,
            "/v1/admin/accounts/acme/purchases",
            json!({"purchase_id": "last", "amount_usd": "1", "kind": "paid",
                   "expires_at": rfc3339(T0 + 30 * DAY)}),
        )
        .await
        .expect(201);

        let all = get(&app, &admin, "/v1/account/payments").await;
        let all = all.expect(200).clone();
        assert_eq!(all["has_more"], false, "{}", backend.name());
        assert_eq!(all["next_cursor"], Value::Null);
        let payments = all["payments"].as_array().unwrap();
        let ids: Vec<&str> = payments
            .iter()
            .map(|p| p["purchase_id"].as_str().unwrap())
            .collect();
        // Newest first; the tie in order of purchase id, descending; no free credits.
        assert_eq!(ids, ["last", "b", "a", "first"], "{}", backend.name());
        let amounts: Vec<i64> = payments
            .iter()
            .map(|p| int(&p["amount_nano_usd"]))
            .collect();
        assert_eq!(amounts, [USD, 1, 3 * USD, 12 * USD + 345_678_901]);
        assert_eq!(payments[3]["amount_usd"], json!(12.345678901));
        assert_eq!(payments[1]["amount_usd"], json!(0.000000001));
        assert_eq!(payments[0]["created_at"], rfc3339(T0 + 2000));
        assert_eq!(payments[3]["created_at"], rfc3339(T0));
        assert_eq!(payments[0]["credits_expire_at"], rfc3339(T0 + 30 * DAY));
        assert_eq!(payments[3]["credits_expire_at"], rfc3339(T0 + 365 * DAY));
        for p in payments {
            assert_eq!(p["status"], "succeeded");
            assert_eq!(p["refunded_nano_usd"], 0);
            assert_eq!(p["provider"], Value::Null);
            assert_eq!(p["provider_reference"], Value::Null);
        }

        // Each payment's invoice is the one the invoice list shows for its purchase.
        let invoices = get(&app, &admin, "/v1/account/invoices").await;
        let invoices = invoices.expect(200)["invoices"].as_array().unwrap().clone();
        assert_eq!(invoices.len(), 4);
        for p in payments {
            let inv = invoices
                .iter()
                .find(|i| i["purchase_id"] == p["purchase_id"])
                .unwrap_or_else(|| panic!("no invoice for {p}"));
            assert_eq!(p["invoice_id"], inv["invoice_id"]);
            assert!(p["invoice_id"].as_str().unwrap().starts_with("inv_2026_"));
            assert_eq!(p["amount_nano_usd"], inv["total_nano_usd"]);
        }

        // Pages of one: the same payments, in the same order, none twice.
        let mut paged = Vec::new();
        let mut path = "/v1/account/payments?limit=1".to_string();
        loop {
            let page = get(&app, &admin, &path).await;
            let page = page.expect(200).clone();
            let items = page["payments"].as_array().unwrap();
            assert_eq!(items.len(), 1);
            paged.push(items[0].clone());
            if page["has_more"] == false {
                assert_eq!(page["next_cursor"], Value::Null);
                break;
            }
            let cursor = page["next_cursor"].as_str().unwrap();
            path = format!("/v1/account/payments?limit=1&cursor={cursor}");
        }
        assert_eq!(&paged, payments, "{}", backend.name());

        // The other account sees only its own.
        let theirs = get(&app, &other_admin, "/v1/account/payments").await;
        let theirs = theirs.expect(200)["payments"].as_array().unwrap().clone();
        assert_eq!(theirs.len(), 1);
        assert_eq!(theirs[0]["purchase_id"], "theirs");
        assert_eq!(int(&theirs[0]["amount_nano_usd"]), 7 * USD);
        // Nor does acme's cursor show acme's payments to another account.
        let cursor = {
            let page = get(&app, &admin, "/v1/account/payments?limit=1").await;
            page.expect(200)["next_cursor"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let r = get(
            &app,
            &other_admin,
            &format!("/v1/account/payments?cursor={cursor}"),
        )
        .await;
        let r = r.expect(200)["payments"].as_array().unwrap().clone();
        assert!(r.iter().all(|p| p["purchase_id"] == "theirs"), "{r:?}");

        // An API key may not read payments; bad paging input is refused.
        get(&app, &api, "/v1/account/payments")
            .await
            .expect_error(403, "authorization_error");
        for bad in [
            "cursor=not-a-cursor",
            "cursor=",
            "limit=0",
            "limit=1001",
            "limit=x",
            "status=succeeded",
        ] {
            let r = get(&app, &admin, &format!("/v1/account/payments?{bad}")).await;
            assert_eq!(r.status, 400, "{bad}: {}", backend.name());
        }
        app.assert_reconciled().await;
    }
}
