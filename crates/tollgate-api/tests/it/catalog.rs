//! fal's Platform API, catalog and key operations: `GET|POST /v1/keys`,
//! `DELETE /v1/keys/{key_id}`, `GET /v1/models`, `GET /v1/models/pricing` and
//! `POST /v1/models/pricing/estimate`.
//!
//! Every answer is validated against fal's own published schema for its operation
//! (`tests/data/fal-platform-openapi.json`, a verbatim copy), so a response that a fal client
//! could not read fails here even if tollgate's document agreed with it.

use crate::fal::FalSpec;
use crate::harness::{d, dec, image, int, Body, Resp, TestApp, USD};
use reqwest::Method;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Calls

async fn get(app: &TestApp, path: &str, key: Option<&str>) -> Resp {
    app.raw(Method::GET, path, key, Body::None).await
}

async fn post(app: &TestApp, path: &str, key: Option<&str>, body: Value) -> Resp {
    app.raw(Method::POST, path, key, Body::Json(body)).await
}

/// `DELETE /v1/keys/{id}`, with an `Idempotency-Key` header when one is given.
async fn delete_key(app: &TestApp, id: &str, key: &str, idempotency: Option<&str>) -> u16 {
    let mut req = app
        .client
        .delete(format!("{}/v1/keys/{id}", app.address))
        .header("Authorization", format!("Key {key}"));
    if let Some(i) = idempotency {
        req = req.header("Idempotency-Key", i);
    }
    let resp = req.send().await.expect("the server answers");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    if status == 204 {
        assert!(text.is_empty(), "204 has no body: {text}");
    }
    status
}

#[track_caller]
fn field(r: &Resp) -> &str {
    r.body["error"]["field"].as_str().unwrap_or("")
}

fn key_id(key: &str) -> &str {
    key.split_once(':').expect("key_id:secret").0
}

/// The key ids of `GET /v1/keys` (every page), checked against fal's schema.
async fn all_keys(app: &TestApp, fal: &FalSpec, admin: &str) -> Vec<String> {
    let r = get(app, "/v1/keys", Some(admin)).await;
    r.expect(200);
    fal.check("get", "/keys", &r);
    assert_eq!(r.body["has_more"], false);
    r.body["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["key_id"].as_str().expect("key_id").to_string())
        .collect()
}

/// An operation that needs the API scope answers 200 to this key (the key works).
async fn key_works(app: &TestApp, key: &str) -> bool {
    let r = get(
        app,
        "/v1/models/pricing?endpoint_id=fal-ai/flux/dev",
        Some(key),
    )
    .await;
    match r.status.as_u16() {
        200 => true,
        401 => false,
        other => panic!("unexpected {other}: {}", r.text),
    }
}

/// Exact USD rounded to nano-USD once, halves away from zero (tollgate's one rounding rule),
/// computed here without tollgate's code.
fn nanos(usd: Decimal) -> i64 {
    (usd * Decimal::from(USD))
        .round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero)
        .to_i64()
        .expect("fits")
}

// ---------------------------------------------------------------------------------------------
// Keys

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_created_listed_and_revoked_within_the_account() {
    let app = TestApp::spawn().await;
    let fal = FalSpec::load();
    let acme = app.customer("acme", Some(("10", "paid"))).await;
    let admin = app.create_key("acme", "ADMIN").await;
    let globex = app.customer("globex", Some(("10", "paid"))).await;
    let globex_admin = app.create_key("globex", "ADMIN").await;

    // The operator-made API key is listed; ADMIN keys are not.
    assert_eq!(all_keys(&app, &fal, &admin).await, [key_id(&acme.key)]);
    let r = get(&app, "/v1/keys", Some(&admin)).await;
    let listed = &r.body["keys"][0];
    assert_eq!(listed["scope"], "API");
    assert_eq!(listed["alias"], "API key");
    assert!(crate::harness::millis(&listed["created_at"]) > 0);

    // Create: 201 with a working key, shown once.
    let r = post(&app, "/v1/keys", Some(&admin), json!({ "alias": "ci" })).await;
    r.expect(201);
    fal.check("post", "/keys", &r);
    let new_key = r.body["key"].as_str().expect("key").to_string();
    assert_eq!(
        new_key,
        format!(
            "{}:{}",
            r.body["key_id"].as_str().unwrap(),
            r.body["key_secret"].as_str().unwrap()
        )
    );
    assert!(
        key_works(&app, &new_key).await,
        "a new key is active at once"
    );
    assert_eq!(
        all_keys(&app, &fal, &admin).await,
        [key_id(&acme.key), key_id(&new_key)],
        "oldest first"
    );
    let r = get(&app, "/v1/keys?expand=creator_info", Some(&admin)).await;
    r.expect(200);
    fal.check("get", "/keys", &r);
    assert_eq!(r.body["keys"][1]["alias"], "ci");
    assert!(
        r.body["keys"][1].get("creator_email").is_none(),
        "tollgate has no users"
    );

    // Delete: 204, and 204 again (with or without an Idempotency-Key); the key stops working.
    let id = key_id(&new_key).to_string();
    assert_eq!(delete_key(&app, &id, &admin, Some("retry-1")).await, 204);
    assert!(
        !key_works(&app, &new_key).await,
        "a revoked key answers 401"
    );
    assert_eq!(delete_key(&app, &id, &admin, Some("retry-1")).await, 204);
    assert_eq!(delete_key(&app, &id, &admin, None).await, 204);
    assert_eq!(all_keys(&app, &fal, &admin).await, [key_id(&acme.key)]);

    // Another account's key: 204, but it is not revoked and still works.
    assert_eq!(
        delete_key(&app, key_id(&globex.key), &admin, None).await,
        204
    );
    assert!(key_works(&app, &globex.key).await);
    assert_eq!(
        all_keys(&app, &fal, &globex_admin).await,
        [key_id(&globex.key)]
    );
    // Unknown and malformed ids: 204, nothing else touched.
    assert_eq!(delete_key(&app, "no-such-key", &admin, None).await, 204);
    assert_eq!(delete_key(&app, &"x".repeat(100), &admin, None).await, 204);
    // An ADMIN key (itself) is out of this API's reach: 204 and still valid.
    assert_eq!(delete_key(&app, key_id(&admin), &admin, None).await, 204);
    assert_eq!(all_keys(&app, &fal, &admin).await, [key_id(&acme.key)]);
    assert!(key_works(&app, &acme.key).await);

    // Scope: an API key gets 403 on every key operation and revokes nothing.
    let r = get(&app, "/v1/keys", Some(&acme.key)).await;
    r.expect_error(403, "authorization_error");
    fal.check("get", "/keys", &r);
    let r = post(&app, "/v1/keys", Some(&acme.key), json!({ "alias": "x" })).await;
    r.expect_error(403, "authorization_error");
    fal.check("post", "/keys", &r);
    assert_eq!(
        delete_key(&app, key_id(&acme.key), &acme.key, None).await,
        403
    );
    assert!(key_works(&app, &acme.key).await);
    let r = get(&app, "/v1/keys", None).await;
    r.expect_error(401, "authorization_error");
    fal.check("get", "/keys", &r);
    get(&app, "/v1/keys", Some(&app.operator_key))
        .await
        .expect_error(403, "authorization_error");

    app.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_aliases_and_list_parameters_are_validated() {
    let app = TestApp::spawn().await;
    let fal = FalSpec::load();
    let acme = app.customer("acme", None).await;
    let admin = app.create_key("acme", "ADMIN").await;

    for (body, why) in [
        (json!({ "alias": "" }), "empty"),
        (json!({ "alias": "x".repeat(256) }), "256 characters"),
        (json!({}), "missing"),
        (json!({ "alias": 5 }), "not a string"),
    ] {
        let r = post(&app, "/v1/keys", Some(&admin), body.clone()).await;
        r.expect_error(400, "validation_error");
        assert_eq!(field(&r), "alias", "{why}: {}", r.text);
        fal.check("post", "/keys", &r);
        assert!(!fal.accepts_request("post", "/keys", &body), "{why}");
    }
    // A scope cannot be smuggled in: unknown fields are refused.
    let r = post(
        &app,
        "/v1/keys",
        Some(&admin),
        json!({ "alias": "x", "scope": "ADMIN" }),
    )
    .await;
    r.expect_error(400, "validation_error");
    assert!(r.message().contains("scope"), "{}", r.text);
    assert_eq!(
        all_keys(&app, &fal, &admin).await,
        [key_id(&acme.key)],
        "nothing created"
    );
    // 255 characters (not bytes) is the limit.
    let r = post(
        &app,
        "/v1/keys",
        Some(&admin),
        json!({ "alias": "é".repeat(255) }),
    )
    .await;
    r.expect(201);

    // Paging: 7 keys by 3, without skipping or repeating, in the unpaged order.
    for i in 0..5 {
        post(
            &app,
            "/v1/keys",
            Some(&admin),
            json!({ "alias": format!("k{i}") }),
        )
        .await
        .expect(201);
    }
    let everything = all_keys(&app, &fal, &admin).await;
    assert_eq!(everything.len(), 7);
    let (mut seen, mut cursor, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/keys?limit=3&cursor={c}"),
            None => "/v1/keys?limit=3".to_string(),
        };
        let r = get(&app, &path, Some(&admin)).await;
        r.expect(200);
        fal.check("get", "/keys", &r);
        pages += 1;
        let keys = r.body["keys"].as_array().expect("keys");
        assert!(keys.len() <= 3);
        seen.extend(
            keys.iter()
                .map(|k| k["key_id"].as_str().unwrap().to_string()),
        );
        assert_eq!(r.body["has_more"], r.body["next_cursor"].is_string());
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!((pages, seen), (3, everything));

    for (query, name) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("cursor=not-a-cursor", "cursor"),
        ("expand=bogus", "expand"),
        ("page=2", "page"),
    ] {
        let r = get(&app, &format!("/v1/keys?{query}"), Some(&admin)).await;
        r.expect_error(400, "validation_error");
        assert_eq!(field(&r), name, "{query}");
        fal.check("get", "/keys", &r);
    }
    get(&app, "/v1/keys?limit=1000", Some(&admin))
        .await
        .expect(200);

    app.assert_reconciled().await;
}

// ---------------------------------------------------------------------------------------------
// Models

const DEPRECATED_ENDPOINT: &str = r#"
prices_read_on = "2026-09-15"

[[endpoint]]
id = "acme-ai/old-model"
name = "Old Model"
category = "text-to-image"
description = "A retired model, kept for old integrations."
status = "deprecated"
price = { unit = "image", unit_price = "0.01" }
"#;

fn ids_of(r: &Resp) -> Vec<String> {
    r.body["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|m| m["endpoint_id"].as_str().expect("endpoint_id").to_string())
        .collect()
}

/// Every page of `/v1/models?{query}` with `limit`, checking each against fal's schema.
async fn walk(app: &TestApp, fal: &FalSpec, query: &str, limit: usize) -> Vec<String> {
    let (mut seen, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let mut path = format!("/v1/models?{query}&limit={limit}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let r = get(app, &path, None).await;
        r.expect(200);
        fal.check("get", "/models", &r);
        let page = ids_of(&r);
        assert!(page.len() <= limit);
        seen.extend(page);
        assert_eq!(r.body["has_more"], r.body["next_cursor"].is_string());
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return seen,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_listed_found_searched_and_paged() {
    let app = TestApp::spawn().await;
    let fal = FalSpec::load();
    app.apply_catalog(DEPRECATED_ENDPOINT).await.expect(200);
    let catalog = app.engine.catalog();
    let all: Vec<String> = catalog.endpoints.keys().map(|k| k.to_string()).collect();
    assert_eq!(all.len(), 35);

    // List mode, no key: everything in id order on one page of the default 50.
    let r = get(&app, "/v1/models", None).await;
    r.expect(200);
    fal.check("get", "/models", &r);
    assert_eq!(ids_of(&r), all);
    assert_eq!(
        (&r.body["has_more"], &r.body["next_cursor"]),
        (&json!(false), &Value::Null)
    );
    let flux = r.body["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["endpoint_id"] == "fal-ai/flux/dev")
        .expect("flux/dev is listed");
    let meta = &flux["metadata"];
    assert_eq!(meta["display_name"], "FLUX.1 [dev]");
    assert_eq!(meta["category"], "text-to-image");
    assert_eq!(meta["status"], "active");
    assert_eq!(meta["tags"], json!([]));
    assert_eq!(meta["is_favorited"], Value::Null);
    assert!(crate::harness::millis(&meta["date"]) <= crate::harness::millis(&meta["updated_at"]));
    assert!(flux.get("openapi").is_none() && flux.get("enterprise_status").is_none());

    // Paging by 4 and by 1: every model once, in order.
    assert_eq!(walk(&app, &fal, "", 4).await, all);
    assert_eq!(walk(&app, &fal, "", 1).await, all);

    // Find mode: known ids in id order, unknown ones simply absent.
    let r = get(
        &app,
        "/v1/models?endpoint_id=fal-ai/whisper,fal-ai/no-such&endpoint_id=fal-ai/flux/dev",
        None,
    )
    .await;
    r.expect(200);
    fal.check("get", "/models", &r);
    assert_eq!(ids_of(&r), ["fal-ai/flux/dev", "fal-ai/whisper"]);
    let fifty: Vec<String> = (0..50).map(|i| format!("x/m{i}")).collect();
    let r = get(
        &app,
        &format!("/v1/models?endpoint_id={}", fifty.join(",")),
        None,
    )
    .await;
    assert_eq!(ids_of(&r), Vec::<String>::new(), "50 ids are accepted");
    let r = get(
        &app,
        &format!("/v1/models?endpoint_id={},x/m50", fifty.join(",")),
        None,
    )
    .await;
    r.expect_error(400, "validation_error");
    assert_eq!(field(&r), "endpoint_id");
    fal.check("get", "/models", &r);

    // Search: q is a case-insensitive substring of id, name, description or category.
    let expect = |keep: &dyn Fn(&tollgate_core::catalog::EndpointDef) -> bool| -> Vec<String> {
        catalog
            .endpoints
            .values()
            .filter(|d| keep(d))
            .map(|d| d.id.to_string())
            .collect()
    };
    let flux_ids = expect(&|d| {
        [d.id.as_str(), &d.display_name, &d.description, &d.category]
            .iter()
            .any(|f| f.to_lowercase().contains("flux"))
    });
    assert!(flux_ids.len() >= 5, "{flux_ids:?}");
    assert_eq!(walk(&app, &fal, "q=FLUX", 2).await, flux_ids);
    let speech = expect(&|d| d.category == "text-to-speech");
    assert!(!speech.is_empty());
    let found = walk(&app, &fal, "q=Text-To-Speech", 50).await;
    assert!(speech.iter().all(|id| found.contains(id)), "{found:?}");
    assert_eq!(
        walk(&app, &fal, "category=TEXT-TO-SPEECH", 50).await,
        speech
    );
    let t2i = expect(&|d| d.category == "text-to-image");
    assert_eq!(walk(&app, &fal, "category=text-to-image", 3).await, t2i);
    assert!(t2i.contains(&"acme-ai/old-model".to_string()));
    assert_eq!(
        walk(&app, &fal, "status=deprecated", 50).await,
        ["acme-ai/old-model"]
    );
    let active = walk(&app, &fal, "status=active&category=text-to-image", 50).await;
    assert_eq!(active.len(), t2i.len() - 1);
    assert!(!active.contains(&"acme-ai/old-model".to_string()));
    // Search narrowed by ids.
    assert_eq!(
        walk(
            &app,
            &fal,
            "q=flux&endpoint_id=fal-ai/flux/dev,fal-ai/whisper",
            50
        )
        .await,
        ["fal-ai/flux/dev"]
    );

    // Expansions tollgate has no data for answer fal's error form.
    let r = get(
        &app,
        "/v1/models?endpoint_id=fal-ai/flux/dev,acme-ai/old-model&expand=openapi-3.0,enterprise_status",
        None,
    )
    .await;
    r.expect(200);
    fal.check("get", "/models", &r);
    let models = r.body["models"].as_array().unwrap();
    assert_eq!(models[0]["endpoint_id"], "acme-ai/old-model");
    assert_eq!(models[0]["metadata"]["status"], "deprecated");
    assert_eq!(
        models[0]["enterprise_status"]["error"]["code"],
        "deprecated"
    );
    assert_eq!(models[1]["enterprise_status"], "ready");
    for m in models {
        assert_eq!(m["openapi"]["error"]["code"], "not_available");
    }

    // Bad parameters are refused naming them.
    for (query, name) in [
        ("status=retired", "status"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("expand=readme", "expand"),
        ("cursor=%%%", "cursor"),
        ("search=flux", "search"),
        ("q=a&q=b", "q"),
    ] {
        let r = get(&app, &format!("/v1/models?{query}"), None).await;
        r.expect_error(400, "validation_error");
        assert_eq!(field(&r), name, "{query}: {}", r.text);
        fal.check("get", "/models", &r);
    }
    get(&app, "/v1/models?limit=200", None).await.expect(200);

    // A key is optional; one that is sent must be a valid customer key.
    let acme = app.customer("acme", None).await;
    let admin = app.create_key("acme", "ADMIN").await;
    for key in [&acme.key, &admin] {
        let r = get(&app, "/v1/models?limit=2", Some(key)).await;
        r.expect(200);
        assert_eq!(ids_of(&r), all[..2]);
    }
    let r = get(&app, "/v1/models", Some("nope:secret")).await;
    r.expect_error(401, "authorization_error");
    fal.check("get", "/models", &r);
    get(&app, "/v1/models", Some(&app.operator_key))
        .await
        .expect_error(403, "authorization_error");

    app.assert_reconciled().await;
}

// ---------------------------------------------------------------------------------------------
// Pricing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pricing_shows_each_account_its_own_price() {
    let app = TestApp::spawn().await;
    let fal = FalSpec::load();
    let acme = app.customer("acme", None).await;
    let acme_admin = app.create_key("acme", "ADMIN").await;
    let globex = app.customer("globex", None).await;
    app.set_pricing(
        "acme",
        json!({
            "percent_discount": "10",
            "prices": { "fal-ai/flux/dev": { "unit": "megapixel", "unit_price": "0.02" } },
        }),
    )
    .await
    .expect(200);

    let query = "/v1/models/pricing?endpoint_id=fal-ai/flux/dev,fal-ai/whisper&endpoint_id=fal-ai/triposr,openai/gpt-image-2";
    let price_of = |r: &Resp| -> Vec<(String, Decimal, String)> {
        r.body["prices"]
            .as_array()
            .expect("prices")
            .iter()
            .map(|p| {
                assert_eq!(p["currency"], "USD");
                (
                    p["endpoint_id"].as_str().unwrap().to_string(),
                    dec(&p["unit_price"]),
                    p["unit"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let public_rest = [
        ("fal-ai/whisper", d("0.00111"), "compute second"),
        ("fal-ai/triposr", d("0.000275"), "gpu second"),
        ("openai/gpt-image-2", d("30"), "1M tokens"),
    ];
    let expected = |flux: &str| -> Vec<(String, Decimal, String)> {
        let mut v = vec![(
            "fal-ai/flux/dev".to_string(),
            d(flux),
            "megapixel".to_string(),
        )];
        v.extend(
            public_rest
                .iter()
                .map(|(e, p, u)| (e.to_string(), *p, u.to_string())),
        );
        v
    };

    // The enterprise override for acme (any of its keys), the public price for globex; the
    // discount is not in the unit price.
    for key in [&acme.key, &acme_admin] {
        let r = get(&app, query, Some(key)).await;
        r.expect(200);
        fal.check("get", "/models/pricing", &r);
        assert_eq!(price_of(&r), expected("0.02"));
        assert_eq!(
            (&r.body["next_cursor"], &r.body["has_more"]),
            (&Value::Null, &json!(false))
        );
    }
    let r = get(&app, query, Some(&globex.key)).await;
    r.expect(200);
    fal.check("get", "/models/pricing", &r);
    assert_eq!(price_of(&r), expected("0.025"));

    // Unknown ids: 404 naming every unknown one.
    let r = get(
        &app,
        "/v1/models/pricing?endpoint_id=fal-ai/flux/dev,fal-ai/no-such&endpoint_id=other/none",
        Some(&acme.key),
    )
    .await;
    r.expect_error(404, "not_found");
    fal.check("get", "/models/pricing", &r);
    let m = r.message();
    assert!(
        m.contains("fal-ai/no-such") && m.contains("other/none"),
        "{m}"
    );
    assert!(!m.contains("fal-ai/flux/dev"), "{m}");

    // 1-50 ids: 50 is a valid count (all unknown here: 404), 51 is refused naming the parameter,
    // none is refused.
    let ids: Vec<String> = (0..51).map(|i| format!("x/m{i}")).collect();
    let r = get(
        &app,
        &format!("/v1/models/pricing?endpoint_id={}", ids[..50].join(",")),
        Some(&acme.key),
    )
    .await;
    r.expect_error(404, "not_found");
    let r = get(
        &app,
        &format!(
            "/v1/models/pricing?endpoint_id={}",
            ids.join("&endpoint_id=")
        ),
        Some(&acme.key),
    )
    .await;
    r.expect_error(400, "validation_error");
    assert_eq!(field(&r), "endpoint_id");
    assert!(r.message().contains("1-50"), "{}", r.text);
    fal.check("get", "/models/pricing", &r);
    for path in [
        "/v1/models/pricing",
        "/v1/models/pricing?endpoint_id=",
        "/v1/models/pricing?endpoint_ids=fal-ai/flux/dev",
    ] {
        let r = get(&app, path, Some(&acme.key)).await;
        r.expect_error(400, "validation_error");
        assert!(field(&r).starts_with("endpoint_id"), "{path}: {}", r.text);
        fal.check("get", "/models/pricing", &r);
    }

    // A key is required, and it must be a customer key.
    let r = get(&app, "/v1/models/pricing?endpoint_id=fal-ai/flux/dev", None).await;
    r.expect_error(401, "authorization_error");
    fal.check("get", "/models/pricing", &r);
    get(
        &app,
        "/v1/models/pricing?endpoint_id=fal-ai/flux/dev",
        Some(&app.operator_key),
    )
    .await
    .expect_error(403, "authorization_error");

    app.assert_reconciled().await;
}

// ---------------------------------------------------------------------------------------------
// Estimates

const ESTIMATE: &str = "/v1/models/pricing/estimate";

async fn estimate(app: &TestApp, fal: &FalSpec, key: &str, body: Value) -> Resp {
    let r = post(app, ESTIMATE, Some(key), body.clone()).await;
    fal.check("post", "/models/pricing/estimate", &r);
    if r.status == 200 {
        assert!(
            fal.accepts_request("post", "/models/pricing/estimate", &body),
            "fal's schema refuses a body tollgate accepted: {body}"
        );
        assert_eq!(r.body["currency"], "USD");
        assert_eq!(r.body["estimate_type"], body["estimate_type"]);
        assert_eq!(
            dec(&r.body["total_cost"]) * Decimal::from(USD),
            Decimal::from(int(&r.body["total_cost_nano_usd"])),
            "total_cost is total_cost_nano_usd in USD: {}",
            r.text
        );
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unit_price_estimates_are_exact_with_the_accounts_price_and_discount() {
    let app = TestApp::spawn().await;
    let fal = FalSpec::load();
    let acme = app.customer("acme", None).await;
    let globex = app.customer("globex", None).await;
    app.set_pricing(
        "acme",
        json!({
            "percent_discount": "10",
            "prices": { "fal-ai/flux/dev": { "unit": "megapixel", "unit_price": "0.02" } },
        }),
    )
    .await
    .expect(200);

    let body = json!({
        "estimate_type": "unit_price",
        "endpoints": {
            "fal-ai/flux/dev": { "unit_quantity": 3.5 },
            "fal-ai/nano-banana": { "unit_quantity": 7 },
            "fal-ai/elevenlabs/tts/turbo-v2.5": { "unit_quantity": 2.5 },
            "fal-ai/whisper": { "unit_quantity": 123.456789 },
        },
    });
    // Each endpoint: quantity x unit price, less the percent discount unless a partner
    // endpoint (nano-banana, elevenlabs), rounded once to nano-USD; then summed.
    let line = |q: &str, price: &str, keep: &str| nanos(d(q) * d(price) * d(keep));
    let acme_total = line("3.5", "0.02", "0.9")
        + line("7", "0.039", "1")
        + line("2.5", "0.05", "1")
        + line("123.456789", "0.00111", "0.9");
    assert_eq!(
        acme_total, 584_333_332,
        "0.063 + 0.273 + 0.125 + 0.123333332"
    );
    let r = estimate(&app, &fal, &acme.key, body.clone()).await;
    r.expect(200);
    assert_eq!(int(&r.body["total_cost_nano_usd"]), acme_total);
    assert_eq!(dec(&r.body["total_cost"]), d("0.584333332"));

    let globex_total = line("3.5", "0.025", "1")
        + line("7", "0.039", "1")
        + line("2.5", "0.05", "1")
        + line("123.456789", "0.00111", "1");
    assert_eq!(
        globex_total, 622_537_036,
        "0.0875 + 0.273 + 0.125 + 0.137037036"
    );
    let r = estimate(&app, &fal, &globex.key, body).await;
    r.expect(200);
    assert_eq!(int(&r.body["total_cost_nano_usd"]), globex_total);

    // The smallest quantity fal allows.
    let r = estimate(
        &app,
        &fal,
        &acme.key,
        json!({ "estimate_type": "unit_price", "endpoints": { "fal-ai/nano-banana": { "unit_quantity": 0.000001 } } }),
    )
    .await;
    r.expect(200);
    assert_eq!(
        int(&r.body["total_cost_nano_usd"]),
        nanos(d("0.000001") * d("0.039"))
    );

    app.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn historical_estimates_average_the_accounts_billed_requests() {
    let app = TestApp::spawn().await;
    let fal = FalSpec::load();
    let acme = app.customer("acme", Some(("10", "paid"))).await;
    let globex = app.customer("globex", Some(("10", "paid"))).await;
    app.set_pricing(
        "acme",
        json!({ "prices": { "fal-ai/flux/dev": { "unit": "megapixel", "unit_price": "0.0123456789" } } }),
    )
    .await
    .expect(200);
    let body = json!({
        "estimate_type": "historical_api_price",
        "endpoints": {
            "fal-ai/flux/dev": { "call_quantity": 10 },
            "fal-ai/whisper": { "call_quantity": 2 },
            "openai/gpt-image-2": { "call_quantity": 3 },
        },
    });
    // Without history, a call costs the endpoint's hold units at the account's price:
    // flux/dev 4 MP, whisper 120 s at 0.00111, gpt-image-2 10,000 tokens at 30 USD per 1M.
    let whisper = 2 * nanos(d("120") * d("0.00111"));
    let gpt = 3 * nanos(d("10000") * d("30") / d("1000000"));
    assert_eq!((whisper, gpt), (266_400_000, 900_000_000));
    let no_history = 10 * nanos(d("4") * d("0.0123456789")) + whisper + gpt;
    let r = estimate(&app, &fal, &acme.key, body.clone()).await;
    r.expect(200);
    assert_eq!(int(&r.body["total_cost_nano_usd"]), no_history);

    // Three billed flux/dev requests (1, 1 and 2 megapixels) and one server error (free).
    for output in [image(1024, 1024), image(512, 512), image(1920, 1080)] {
        let id = app.submit_ok(&acme.key, "fal-ai/flux/dev").await;
        app.start(&id, None).await.expect(200);
        let r = app
            .complete(&id, json!({ "status_code": 200, "output": output }))
            .await;
        assert_eq!(r.expect(200)["billed"], true);
    }
    let id = app.submit_ok(&acme.key, "fal-ai/flux/dev").await;
    app.start(&id, None).await.expect(200);
    let r = app
        .complete(
            &id,
            json!({ "status_code": 503, "output": image(1024, 1024) }),
        )
        .await;
    assert_eq!(r.expect(200)["billed"], false);

    // Per call: the billed total over the billed requests, rounded UP to the nano-USD.
    let billed = 2 * nanos(d("0.0123456789")) + nanos(d("2") * d("0.0123456789"));
    assert_eq!(billed, 49_382_716);
    let per_call = (billed + 2) / 3;
    assert_eq!(per_call, 16_460_906, "16,460,905.33 rounded up");
    let r = estimate(&app, &fal, &acme.key, body.clone()).await;
    r.expect(200);
    assert_eq!(
        int(&r.body["total_cost_nano_usd"]),
        10 * per_call + whisper + gpt
    );

    // Another account's history is not acme's: globex still gets the fallback at its price.
    let r = estimate(&app, &fal, &globex.key, body).await;
    r.expect(200);
    assert_eq!(
        int(&r.body["total_cost_nano_usd"]),
        10 * nanos(d("4") * d("0.025")) + whisper + gpt
    );

    app.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn historical_estimates_only_count_the_last_30_days() {
    let day = 86_400_000;
    let t0 = crate::harness::millis(&json!("2026-11-02T00:00:00Z"));
    let app = TestApp::spawn_at(t0).await;
    let fal = FalSpec::load();
    let acme = app.customer("acme", Some(("10", "paid"))).await;
    let id = app.submit_ok(&acme.key, "fal-ai/flux/dev").await;
    app.start(&id, None).await.expect(200);
    app.complete(
        &id,
        json!({ "status_code": 200, "output": image(1024, 1024) }),
    )
    .await
    .expect(200);
    let body = json!({
        "estimate_type": "historical_api_price",
        "endpoints": { "fal-ai/flux/dev": { "call_quantity": 1 } },
    });
    let history = nanos(d("0.025"));
    let fallback = nanos(d("4") * d("0.025"));
    for (at, expected) in [(29 * day, history), (31 * day, fallback)] {
        app.set_now(t0 + at);
        let r = estimate(&app, &fal, &acme.key, body.clone()).await;
        r.expect(200);
        assert_eq!(int(&r.body["total_cost_nano_usd"]), expected, "at +{at} ms");
    }

    app.assert_reconciled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_estimate_bodies_are_refused_naming_the_field() {
    let app = TestApp::spawn().await;
    let fal = FalSpec::load();
    let acme = app.customer("acme", None).await;
    let admin = app.create_key("acme", "ADMIN").await;
    let unit = |endpoints: Value| json!({ "estimate_type": "unit_price", "endpoints": endpoints });
    let calls = |endpoints: Value| json!({ "estimate_type": "historical_api_price", "endpoints": endpoints });
    let flux = "endpoints.fal-ai/flux/dev";
    let many: serde_json::Map<String, Value> = (0..51)
        .map(|i| (format!("x/m{i}"), json!({ "unit_quantity": 1 })))
        .collect();

    // (body, the field named, whether fal's own schema refuses it too)
    let cases = [
        (
            json!({ "estimate_type": "cheapest", "endpoints": {} }),
            "estimate_type".to_string(),
            true,
        ),
        (json!({ "endpoints": {} }), "estimate_type".into(), true),
        (
            json!({ "estimate_type": "unit_price" }),
            "endpoints".into(),
            true,
        ),
        (
            json!({ "estimate_type": "unit_price", "endpoints": [] }),
            "endpoints".into(),
            true,
        ),
        (unit(json!({})), "endpoints".into(), false),
        (unit(Value::Object(many)), "endpoints".into(), false),
        (
            unit(json!({ "fal-ai/no-such": { "unit_quantity": 1 } })),
            "endpoints.fal-ai/no-such".into(),
            false,
        ),
        (unit(json!({ "fal-ai/flux/dev": 3 })), flux.into(), true),
        (
            unit(json!({ "fal-ai/flux/dev": { "unit_quantity": 0 } })),
            format!("{flux}.unit_quantity"),
            true,
        ),
        (
            unit(json!({ "fal-ai/flux/dev": { "unit_quantity": 0.0000009 } })),
            format!("{flux}.unit_quantity"),
            true,
        ),
        (
            unit(json!({ "fal-ai/flux/dev": { "unit_quantity": -2 } })),
            format!("{flux}.unit_quantity"),
            true,
        ),
        (
            unit(json!({ "fal-ai/flux/dev": { "unit_quantity": "3" } })),
            format!("{flux}.unit_quantity"),
            true,
        ),
        (
            unit(json!({ "fal-ai/flux/dev": {} })),
            format!("{flux}.unit_quantity"),
            true,
        ),
        (
            unit(json!({ "fal-ai/flux/dev": { "call_quantity": 3 } })),
            format!("{flux}.call_quantity"),
            true,
        ),
        (
            calls(json!({ "fal-ai/flux/dev": { "call_quantity": 0 } })),
            format!("{flux}.call_quantity"),
            true,
        ),
        (
            calls(json!({ "fal-ai/flux/dev": { "call_quantity": 1.5 } })),
            format!("{flux}.call_quantity"),
            true,
        ),
        (
            calls(json!({ "fal-ai/flux/dev": { "unit_quantity": 3 } })),
            format!("{flux}.unit_quantity"),
            true,
        ),
        (
            json!({ "estimate_type": "unit_price", "endpoints": { "fal-ai/flux/dev": { "unit_quantity": 1 } }, "currency": "EUR" }),
            "currency".into(),
            false,
        ),
    ];
    for (body, name, fal_refuses) in cases {
        let r = estimate(&app, &fal, &acme.key, body.clone()).await;
        r.expect_error(400, "validation_error");
        assert_eq!(field(&r), name, "{body}: {}", r.text);
        assert_eq!(
            !fal.accepts_request("post", "/models/pricing/estimate", &body),
            fal_refuses,
            "fal's schema and {body}"
        );
    }
    let r = app
        .raw(
            Method::POST,
            ESTIMATE,
            Some(&acme.key),
            Body::Raw {
                content_type: "application/json",
                text: "{not json".into(),
            },
        )
        .await;
    r.expect_error(400, "validation_error");

    // Scope: API and ADMIN keys may estimate; no key 401; the operator 403.
    let ok = unit(json!({ "fal-ai/flux/dev": { "unit_quantity": 2 } }));
    for key in [&acme.key, &admin] {
        let r = estimate(&app, &fal, key, ok.clone()).await;
        assert_eq!(int(&r.expect(200)["total_cost_nano_usd"]), 50_000_000);
    }
    let r = post(&app, ESTIMATE, None, ok.clone()).await;
    r.expect_error(401, "authorization_error");
    fal.check("post", "/models/pricing/estimate", &r);
    post(&app, ESTIMATE, Some(&app.operator_key), ok)
        .await
        .expect_error(403, "authorization_error");

    // Nothing of the above was billed or held.
    assert_eq!(app.position("acme").await, (0, 0, 0));

    app.assert_reconciled().await;
}
