//! Keys an operator can trust: every key of every scope listed (never a secret) and revoked,
//! refused right after its revocation on the server that revoked it and, on a shared
//! PostgreSQL database, on the others within the key cache time; operator keys created through
//! the API and from `TOLLGATE_OPERATOR_KEY`, a revoked one never coming back; and the
//! operator's list of accounts, searched by prefix and paged.

use crate::harness::{created_key, int, Body, TestApp, USD};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use tollgate_api::auth::{register_operator_key, OperatorKeyAtStart, OperatorKeyRefused};
use tollgate_api::AppState;
use tollgate_core::ids::AccountId;
use tollgate_core::machine::Op;
use tollgate_engine::{Engine, KEY_CACHE_TTL};
use tollgate_store::testing::{backends, postgres_url, Backend};

fn key_id(key: &str) -> &str {
    key.split_once(':').expect("key_id:secret").0
}

/// `POST /v1/admin/operator-keys`; returns `key_id:secret`.
async fn create_operator_key(app: &TestApp, alias: &str) -> String {
    let r = app
        .op(
            Method::POST,
            "/v1/admin/operator-keys",
            json!({ "alias": alias }),
        )
        .await;
    let body = r.expect(201);
    assert_eq!(body["alias"], alias);
    created_key(body, "OPERATOR")
}

async fn revoke(app: &TestApp, with: &str, key: &str) -> u16 {
    app.raw(
        Method::DELETE,
        &format!("/v1/admin/keys/{}", key_id(key)),
        Some(with),
        Body::None,
    )
    .await
    .status
    .as_u16()
}

/// Calls that each scope may make: the status every one of them answers with `key`.
async fn statuses(app: &TestApp, key: &str, calls: &[(&str, &str)]) -> Vec<u16> {
    let mut out = Vec::new();
    for (method, path) in calls {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        out.push(
            app.raw(method, path, Some(key), Body::None)
                .await
                .status
                .as_u16(),
        );
    }
    out
}

const API_CALLS: &[(&str, &str)] = &[("GET", "/v1/models/pricing?endpoint_id=fal-ai/flux/dev")];
const ADMIN_CALLS: &[(&str, &str)] = &[
    ("GET", "/v1/account/billing"),
    ("GET", "/v1/models/pricing?endpoint_id=fal-ai/flux/dev"),
];
const OPERATOR_CALLS: &[(&str, &str)] = &[
    ("GET", "/v1/admin/accounts/acme"),
    ("GET", "/v1/admin/operator-keys"),
];

/// Asserts that every call with `key` answers 401 `authorization_error`, saying it is revoked.
async fn assert_refused(app: &TestApp, key: &str, calls: &[(&str, &str)]) {
    for (method, path) in calls {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let r = app.raw(method, path, Some(key), Body::None).await;
        r.expect_error(401, "authorization_error");
        assert!(r.message().contains("revoked"), "{}", r.text);
    }
}

#[tokio::test]
async fn revoked_keys_of_every_scope_are_refused_right_after_revocation() {
    for backend in backends() {
        let app = TestApp::spawn_on(&backend).await;
        let acme = app.customer("acme", Some(("10.00", "paid"))).await;
        let other_api = app.create_key("acme", "API").await;
        let admin = app.create_key("acme", "ADMIN").await;
        let operator = create_operator_key(&app, "gateway eu-1").await;
        let own = create_operator_key(&app, "revokes itself").await;

        // Each works, and is therefore cached by the server.
        assert_eq!(statuses(&app, &acme.key, API_CALLS).await, [200]);
        assert_eq!(statuses(&app, &admin, ADMIN_CALLS).await, [200, 200]);
        assert_eq!(statuses(&app, &operator, OPERATOR_CALLS).await, [200, 200]);
        assert_eq!(statuses(&app, &own, OPERATOR_CALLS).await, [200, 200]);
        app.submit_ok(&acme.key, "fal-ai/flux/dev").await;

        // Revoked by the operator (the operator key through another operator key, one
        // operator key by itself): refused at once, on the next call.
        assert_eq!(revoke(&app, &app.operator_key, &acme.key).await, 204);
        assert_refused(&app, &acme.key, API_CALLS).await;
        let (_, submit) = app.submit(&acme.key, "fal-ai/flux/dev").await;
        submit.expect_error(401, "authorization_error");

        assert_eq!(revoke(&app, &app.operator_key, &admin).await, 204);
        assert_refused(&app, &admin, ADMIN_CALLS).await;

        assert_eq!(revoke(&app, &app.operator_key, &operator).await, 204);
        assert_refused(&app, &operator, OPERATOR_CALLS).await;

        assert_eq!(revoke(&app, &own, &own).await, 204);
        assert_refused(&app, &own, OPERATOR_CALLS).await;

        // Revoking again changes nothing and answers the same; the keys stay refused.
        assert_eq!(revoke(&app, &app.operator_key, &admin).await, 204);
        assert_eq!(revoke(&app, &app.operator_key, &own).await, 204);
        assert_refused(&app, &admin, ADMIN_CALLS).await;
        assert_refused(&app, &own, OPERATOR_CALLS).await;

        // Nothing else was touched.
        assert_eq!(statuses(&app, &other_api, API_CALLS).await, [200]);
        assert_eq!(
            statuses(&app, &app.operator_key, OPERATOR_CALLS).await,
            [200, 200]
        );
        app.assert_reconciled().await;
    }
}

/// The keys of a list answer, by id.
fn by_id(list: &Value) -> std::collections::BTreeMap<String, Value> {
    list["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| (k["key_id"].as_str().unwrap().to_string(), k.clone()))
        .collect()
}

#[tokio::test]
async fn every_key_of_every_scope_is_listed_with_its_state_and_never_its_secret() {
    for backend in backends() {
        let app = TestApp::spawn_on(&backend).await;
        let acme = app.customer("acme", None).await;
        let admin = app.create_key("acme", "ADMIN").await;
        let beta = app.customer("beta", None).await;
        let operator = create_operator_key(&app, "back office").await;
        assert_eq!(revoke(&app, &app.operator_key, &admin).await, 204);
        let secrets = [&acme.key, &admin, &beta.key, &operator, &app.operator_key]
            .map(|k| k.split_once(':').unwrap().1.to_string());
        let hashes = secrets.clone().map(|s| tollgate_api::auth::hash_secret(&s));

        let list = app.op_get("/v1/admin/accounts/acme/keys").await;
        let body = list.expect(200);
        for s in secrets.iter().chain(&hashes) {
            assert!(!list.text.contains(s.as_str()), "a secret in {}", list.text);
        }
        assert_eq!(
            (body["has_more"].clone(), body["next_cursor"].clone()),
            (json!(false), Value::Null)
        );
        let keys = by_id(body);
        assert_eq!(
            keys.keys().cloned().collect::<BTreeSet<_>>(),
            BTreeSet::from([key_id(&acme.key).to_string(), key_id(&admin).to_string()]),
            "acme's keys only, of both scopes: {body}"
        );
        let api = &keys[key_id(&acme.key)];
        let fields: BTreeSet<&str> = api
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            fields,
            BTreeSet::from([
                "key_id",
                "scope",
                "alias",
                "username",
                "state",
                "created_at",
                "revoked_at"
            ])
        );
        assert_eq!(
            (
                &api["scope"],
                &api["alias"],
                &api["username"],
                &api["state"],
                &api["revoked_at"]
            ),
            (
                &json!("API"),
                &json!("API key"),
                &json!("acme"),
                &json!("active"),
                &Value::Null
            )
        );
        let adm = &keys[key_id(&admin)];
        assert_eq!(
            (&adm["scope"], &adm["state"]),
            (&json!("ADMIN"), &json!("revoked"))
        );
        assert!(adm["revoked_at"].is_string(), "{adm}");

        // Operator keys: the harness's and the one created, with no account.
        let ops = app.op_get("/v1/admin/operator-keys").await;
        for s in secrets.iter().chain(&hashes) {
            assert!(!ops.text.contains(s.as_str()), "a secret in {}", ops.text);
        }
        let ops = by_id(ops.expect(200));
        assert_eq!(
            ops.keys().cloned().collect::<BTreeSet<_>>(),
            BTreeSet::from([
                key_id(&app.operator_key).to_string(),
                key_id(&operator).to_string()
            ])
        );
        let op = &ops[key_id(&operator)];
        assert_eq!(
            (&op["scope"], &op["alias"], &op["username"], &op["state"]),
            (
                &json!("OPERATOR"),
                &json!("back office"),
                &Value::Null,
                &json!("active")
            )
        );

        // Paged one by one: every key once, oldest first, then no more.
        let mut seen = Vec::new();
        let mut path = "/v1/admin/accounts/acme/keys?limit=1".to_string();
        loop {
            let page = app.op_get(&path).await.expect(200).clone();
            assert_eq!(page["keys"].as_array().unwrap().len(), 1, "{page}");
            seen.push(page["keys"][0]["key_id"].as_str().unwrap().to_string());
            if page["has_more"] == json!(false) {
                assert_eq!(page["next_cursor"], Value::Null);
                break;
            }
            let cursor = page["next_cursor"].as_str().expect("a cursor");
            path = format!("/v1/admin/accounts/acme/keys?limit=1&cursor={cursor}");
        }
        assert_eq!(seen, [key_id(&acme.key), key_id(&admin)]);
        app.assert_reconciled().await;
    }
}

#[tokio::test]
async fn accounts_are_listed_by_username_searched_by_prefix_and_paged() {
    for backend in backends() {
        let app = TestApp::spawn_on(&backend).await;
        app.customer("acme", Some(("10.00", "paid"))).await;
        for name in ["beta", "acme.us", "Acme", "acme-eu"] {
            app.customer(name, None).await;
        }
        let usernames = |v: &Value| -> Vec<String> {
            v["accounts"]
                .as_array()
                .expect("accounts")
                .iter()
                .map(|a| a["username"].as_str().unwrap().to_string())
                .collect()
        };

        // Every account, by bytes: upper case before lower case, `-` before `.`.
        let all = app.op_get("/v1/admin/accounts").await.expect(200).clone();
        assert_eq!(
            usernames(&all),
            ["Acme", "acme", "acme-eu", "acme.us", "beta"]
        );
        assert_eq!(
            (all["has_more"].clone(), all["next_cursor"].clone()),
            (json!(false), Value::Null)
        );
        let acme = &all["accounts"][1];
        assert_eq!(
            (
                int(&acme["balance_nano_usd"]),
                int(&acme["held_nano_usd"]),
                int(&acme["available_nano_usd"]),
                &acme["locked"],
                &acme["billing"],
            ),
            (10 * USD, 0, 10 * USD, &json!(false), &json!("prepaid"))
        );
        assert!(
            acme["created_at"].is_string() && acme["concurrency_limit"].is_u64(),
            "{acme}"
        );
        // A prepaid account without credits is locked.
        assert_eq!(all["accounts"][4]["locked"], true);
        assert_eq!(int(&all["accounts"][4]["balance_nano_usd"]), 0);

        // A prefix, case-sensitive, in pages of two.
        let first = app
            .op_get("/v1/admin/accounts?q=acme&limit=2")
            .await
            .expect(200)
            .clone();
        assert_eq!(usernames(&first), ["acme", "acme-eu"]);
        assert_eq!(first["has_more"], true);
        let cursor = first["next_cursor"].as_str().expect("a cursor");
        // An account created meanwhile that sorts after the page shows on the next one.
        app.customer("acme-zz", None).await;
        let second = app
            .op_get(&format!(
                "/v1/admin/accounts?q=acme&limit=2&cursor={cursor}"
            ))
            .await
            .expect(200)
            .clone();
        assert_eq!(usernames(&second), ["acme-zz", "acme.us"]);
        assert_eq!(
            (second["has_more"].clone(), second["next_cursor"].clone()),
            (json!(false), Value::Null)
        );
        let none = app
            .op_get("/v1/admin/accounts?q=zeta")
            .await
            .expect(200)
            .clone();
        assert_eq!(usernames(&none), Vec::<String>::new());
        let exact = app
            .op_get("/v1/admin/accounts?q=Acme")
            .await
            .expect(200)
            .clone();
        assert_eq!(usernames(&exact), ["Acme"]);
        app.assert_reconciled().await;
    }
}

/// The list shows each account as `GET /v1/admin/accounts/{username}` does: the same balance,
/// holds, requests in progress, limit and lock, a payment dispute's lock included.
#[tokio::test]
async fn the_list_shows_each_account_as_its_view_does_a_dispute_lock_included() {
    for backend in backends() {
        let on = backend.name();
        let app = TestApp::spawn_on(&backend).await;
        let busy = app.customer("busy", Some(("10.00", "paid"))).await;
        app.customer("disputed", Some(("10.00", "paid"))).await;
        app.customer("dry", None).await;
        let id = app.submit_ok(&busy.key, "fal-ai/flux/dev").await;
        app.start(&id, None).await.expect(200);
        // Set as the payments webhook will: through the engine.
        app.engine
            .execute(Op::LockDisputed {
                account: AccountId::parse("disputed").unwrap(),
            })
            .await
            .unwrap()
            .unwrap();

        let list = app.op_get("/v1/admin/accounts").await.expect(200).clone();
        let items: Vec<&Value> = list["accounts"]
            .as_array()
            .expect("accounts")
            .iter()
            .collect();
        let lock = |i: usize| (&items[i]["locked"], &items[i]["lock_reason"]);
        assert_eq!(lock(0), (&json!(false), &Value::Null), "{on}: {list}");
        assert_eq!(
            lock(1),
            (&json!(true), &json!("payment_disputed")),
            "{on}: {list}"
        );
        assert_eq!(
            lock(2),
            (&json!(true), &json!("exhausted_balance")),
            "{on}: {list}"
        );
        assert_eq!(
            (
                int(&items[0]["in_progress"]),
                int(&items[0]["held_nano_usd"]) > 0
            ),
            (1, true),
            "{on}: {list}"
        );
        for item in items {
            let name = item["username"].as_str().expect("username");
            let view = app.account(name).await;
            for field in [
                "username",
                "billing",
                "balance_nano_usd",
                "held_nano_usd",
                "available_nano_usd",
                "in_progress",
                "concurrency_limit",
                "locked",
                "lock_reason",
                "created_at",
            ] {
                assert!(item.get(field).is_some(), "{on}: {name} lists no {field}");
                assert_eq!(item[field], view[field], "{on}: {name}'s {field}");
            }
        }
        app.assert_reconciled().await;
    }
}

#[tokio::test]
async fn bad_calls_are_refused_and_change_no_key() {
    let app = TestApp::spawn().await;
    let acme = app.customer("acme", None).await;
    let admin = app.create_key("acme", "ADMIN").await;
    let ops_before = app
        .op_get("/v1/admin/operator-keys")
        .await
        .expect(200)
        .clone();
    let acme_before = app
        .op_get("/v1/admin/accounts/acme/keys")
        .await
        .expect(200)
        .clone();

    // Unknown and malformed ids, unknown accounts.
    let r = app
        .raw(
            Method::DELETE,
            "/v1/admin/keys/no-such-key",
            Some(&app.operator_key),
            Body::None,
        )
        .await;
    r.expect_error(404, "not_found");
    let r = app
        .raw(
            Method::DELETE,
            "/v1/admin/keys/bad%20id",
            Some(&app.operator_key),
            Body::None,
        )
        .await;
    assert_eq!(r.expect_error(400, "validation_error")["field"], "key_id");
    app.op_get("/v1/admin/accounts/nobody/keys")
        .await
        .expect_error(404, "not_found");

    // Bad parameters, named.
    for (path, field) in [
        ("/v1/admin/accounts?q=a/b", "q"),
        ("/v1/admin/accounts?q=a%20b", "q"),
        (
            &format!("/v1/admin/accounts?q={}", "a".repeat(65)) as &str,
            "q",
        ),
        ("/v1/admin/accounts?limit=0", "limit"),
        ("/v1/admin/accounts?limit=1001", "limit"),
        ("/v1/admin/accounts?cursor=garbage", "cursor"),
        ("/v1/admin/accounts?prefix=a", "prefix"),
        ("/v1/admin/accounts/acme/keys?cursor=garbage", "cursor"),
        ("/v1/admin/accounts/acme/keys?limit=x", "limit"),
        ("/v1/admin/operator-keys?scope=API", "scope"),
    ] {
        let r = app.op_get(path).await;
        assert_eq!(
            r.expect_error(400, "validation_error")["field"],
            field,
            "{path}"
        );
    }
    // A cursor of another list is refused, not misread.
    let page = app
        .op_get("/v1/admin/accounts/acme/keys?limit=1")
        .await
        .expect(200)
        .clone();
    let keys_cursor = page["next_cursor"]
        .as_str()
        .expect("two keys, one per page");
    let r = app
        .op_get(&format!("/v1/admin/accounts?cursor={keys_cursor}"))
        .await;
    assert_eq!(r.expect_error(400, "validation_error")["field"], "cursor");

    // Bad bodies for a new operator key.
    for body in [
        json!({}),
        json!({ "alias": "" }),
        json!({ "alias": "a\u{7}b" }),
        json!({ "alias": "x".repeat(256) }),
        json!({ "alias": "ok", "scope": "OPERATOR" }),
    ] {
        let r = app
            .op(Method::POST, "/v1/admin/operator-keys", body.clone())
            .await;
        r.expect_error(400, "validation_error");
    }

    // Customer keys and no key may do none of it.
    for (method, path) in [
        (Method::GET, "/v1/admin/accounts"),
        (Method::GET, "/v1/admin/accounts/acme/keys"),
        (Method::GET, "/v1/admin/operator-keys"),
        (
            Method::DELETE,
            &format!("/v1/admin/keys/{}", key_id(&acme.key)) as &str,
        ),
    ] {
        for key in [&acme.key, &admin] {
            let r = app.raw(method.clone(), path, Some(key), Body::None).await;
            r.expect_error(403, "authorization_error");
        }
        let r = app.raw(method.clone(), path, None, Body::None).await;
        r.expect_error(401, "authorization_error");
    }
    let r = app
        .raw(
            Method::POST,
            "/v1/admin/operator-keys",
            Some(&admin),
            Body::Json(json!({ "alias": "mine" })),
        )
        .await;
    r.expect_error(403, "authorization_error");

    // Nothing was written: the same keys, in the same states; the customer keys still work.
    assert_eq!(
        app.op_get("/v1/admin/operator-keys").await.expect(200),
        &ops_before
    );
    assert_eq!(
        app.op_get("/v1/admin/accounts/acme/keys").await.expect(200),
        &acme_before
    );
    assert_eq!(statuses(&app, &acme.key, API_CALLS).await, [200]);
    assert_eq!(statuses(&app, &admin, ADMIN_CALLS).await, [200, 200]);
    app.assert_reconciled().await;
}

#[tokio::test]
async fn an_operator_key_named_at_start_is_created_once_and_never_changed() {
    for backend in backends() {
        let app = TestApp::spawn_on(&backend).await;
        let acme = app.customer("acme", None).await;
        let env_key = "platform-op:first-secret";

        // A new id is created as an operator key, then used as it is.
        assert_eq!(
            register_operator_key(&app.engine, env_key).await,
            Ok(OperatorKeyAtStart::Created)
        );
        assert_eq!(statuses(&app, env_key, OPERATOR_CALLS).await, [200, 200]);
        assert_eq!(
            register_operator_key(&app.engine, env_key).await,
            Ok(OperatorKeyAtStart::Known)
        );
        let listed = by_id(app.op_get("/v1/admin/operator-keys").await.expect(200));
        assert_eq!(listed["platform-op"]["alias"], "TOLLGATE_OPERATOR_KEY");

        // Another secret for a stored id is refused, and changes nothing: the stored secret
        // still works and the other one does not.
        assert_eq!(
            register_operator_key(&app.engine, "platform-op:other-secret").await,
            Err(OperatorKeyRefused::WrongSecret {
                key_id: tollgate_core::ids::ApiKeyId::parse("platform-op").unwrap()
            })
        );
        assert_eq!(statuses(&app, env_key, OPERATOR_CALLS).await, [200, 200]);
        app.raw(
            Method::GET,
            "/v1/admin/operator-keys",
            Some("platform-op:other-secret"),
            Body::None,
        )
        .await
        .expect_error(401, "authorization_error");

        // A customer key's id is not an operator key.
        let customer_id = key_id(&acme.key);
        let refused = register_operator_key(&app.engine, &format!("{customer_id}:x")).await;
        assert!(
            matches!(refused, Err(OperatorKeyRefused::NotOperator { .. })),
            "{refused:?}"
        );
        assert_eq!(statuses(&app, &acme.key, API_CALLS).await, [200]);
        assert!(matches!(
            register_operator_key(&app.engine, "no-secret").await,
            Err(OperatorKeyRefused::Malformed(_))
        ));

        // Revoked, it stays revoked when named again.
        assert_eq!(revoke(&app, &app.operator_key, env_key).await, 204);
        let again = register_operator_key(&app.engine, env_key).await;
        assert!(
            matches!(again, Ok(OperatorKeyAtStart::Revoked { .. })),
            "{again:?}"
        );
        assert_refused(&app, env_key, OPERATOR_CALLS).await;
        let listed = by_id(app.op_get("/v1/admin/operator-keys").await.expect(200));
        assert_eq!(listed["platform-op"]["state"], "revoked");
        app.assert_reconciled().await;
    }
}

/// Another server on `app`'s database, on `app`'s clock; returns its engine and base URL.
async fn peer(app: &TestApp) -> (Engine, String) {
    let store = app.db().open().expect("open the shared database");
    let engine = Engine::start(store, app.clock()).expect("start the peer's engine");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let router = tollgate_api::router(AppState::new(engine.clone()));
    tokio::spawn(async move { axum::serve(listener, router).await });
    (engine, address)
}

async fn status_at(app: &TestApp, base: &str, key: &str, path: &str) -> u16 {
    app.client
        .get(format!("{base}{path}"))
        .header("Authorization", format!("Key {key}"))
        .send()
        .await
        .expect("the server answers")
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_revocation_reaches_another_server_on_the_database_within_the_key_cache_time() {
    // What the API documentation and docs/operations.md promise.
    assert_eq!(KEY_CACHE_TTL, std::time::Duration::from_secs(5));
    let Some(url) = postgres_url() else {
        eprintln!("TOLLGATE_TEST_POSTGRES_URL is not set: one server only, nothing to share");
        return;
    };
    let app = TestApp::spawn_at_on(&Backend::Postgres(url), 1_767_225_600_000).await;
    let (_peer_engine, peer) = peer(&app).await;
    let acme = app.customer("acme", None).await;
    let admin = app.create_key("acme", "ADMIN").await;
    let operator = create_operator_key(&app, "gateway").await;
    let calls = [
        (&acme.key, "/v1/models/pricing?endpoint_id=fal-ai/flux/dev"),
        (&admin, "/v1/account/billing"),
        (&operator, "/v1/admin/accounts/acme"),
    ];
    // Created on one server, they work on the other at once (an unknown id is never cached),
    // and the peer now has each in its cache.
    for (key, path) in calls {
        assert_eq!(status_at(&app, &peer, key, path).await, 200, "{path}");
    }
    for (key, _) in calls {
        assert_eq!(revoke(&app, &app.operator_key, key).await, 204);
    }
    // Refused at once where revoked.
    for (key, path) in calls {
        assert_eq!(
            status_at(&app, &app.address, key, path).await,
            401,
            "{path}"
        );
    }
    // And by the other server once its copy is older than the key cache time.
    app.set_now(app.now_ms() + KEY_CACHE_TTL.as_millis() as i64);
    for (key, path) in calls {
        assert_eq!(status_at(&app, &peer, key, path).await, 401, "{path}");
    }
    // The other server's own revocations are immediate there too.
    let api = app.create_key("acme", "API").await;
    let path = "/v1/models/pricing?endpoint_id=fal-ai/flux/dev";
    assert_eq!(status_at(&app, &app.address, &api, path).await, 200);
    let r = app
        .client
        .delete(format!("{peer}/v1/admin/keys/{}", key_id(&api)))
        .header("Authorization", format!("Key {}", app.operator_key))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(status_at(&app, &peer, &api, path).await, 401);
    app.set_now(app.now_ms() + KEY_CACHE_TTL.as_millis() as i64);
    assert_eq!(status_at(&app, &app.address, &api, path).await, 401);
    app.assert_reconciled().await;
}
