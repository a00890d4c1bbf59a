//! API keys: API keys created through the form (the secret shown once) and revoked, only the
//! signed-in account's, CSRF-checked, and aliases shown as text; ADMIN keys listed as the
//! platform's, never created nor revoked from the page.

use crate::common::browser::Browser;
use crate::common::{DashApp, Resp, Visitor};
use reqwest::Method;
use serde_json::{json, Value};

const PRICING: &str = "/v1/models/pricing?endpoint_id=fal-ai/flux/dev";

/// The text of the element with `id` (`<tag id="id">text</tag>`, no markup inside).
#[track_caller]
fn text_of(html: &str, id: &str) -> String {
    let at = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("#{id} on the page"));
    let start = at + html[at..].find('>').unwrap() + 1;
    let end = start + html[start..].find('<').unwrap();
    html[start..end].to_string()
}

/// The account's keys as the operator lists them.
async fn keys_of(app: &DashApp, username: &str) -> Vec<Value> {
    let r = app
        .op_get(&format!("/v1/admin/accounts/{username}/keys"))
        .await;
    r.expect(200).json()["keys"].as_array().unwrap().clone()
}

/// Posts the create form as the page sends it: an alias, no scope.
async fn create(v: &Visitor, alias: &str) -> Resp {
    let csrf = v.page("/dashboard/keys").await.csrf();
    v.post_form("/dashboard/keys", &[("csrf", &csrf), ("alias", alias)])
        .await
}

/// Posts the create form with a `scope` field, as a crafted post would.
async fn create_as(v: &Visitor, alias: &str, scope: &str) -> Resp {
    let csrf = v.page("/dashboard/keys").await.csrf();
    v.post_form(
        "/dashboard/keys",
        &[("csrf", &csrf), ("alias", alias), ("scope", scope)],
    )
    .await
}

/// The `<tr>` of the key `key_id` on a keys page.
#[track_caller]
fn row_of<'a>(html: &'a str, key_id: &str) -> &'a str {
    let row = &html[html
        .find(&format!("data-key-id=\"{key_id}\""))
        .unwrap_or_else(|| panic!("a row for {key_id}"))..];
    &row[..row.find("</tr>").unwrap()]
}

#[tokio::test]
async fn a_key_created_in_the_form_is_shown_once_and_works_against_the_api() {
    let app = DashApp::spawn().await;
    app.customer("acme", Some("25.00")).await;
    let v = app.signed_in("acme").await;
    let before = keys_of(&app, "acme").await.len();

    // The form offers no scope: it makes API keys, and says who issues ADMIN ones.
    let form = v.page("/dashboard/keys").await;
    assert!(!form.text.contains("name=\"scope\""), "no scope choice");
    assert!(form.text.contains(
        "ADMIN keys, which read billing and usage and manage keys, are issued by your platform"
    ));

    let r = create(&v, "ci runner").await;
    r.expect(200);
    let key = text_of(&r.text, "new-key");
    let (key_id, secret) = key.split_once(':').expect("key_id:key_secret");
    assert_eq!(r.text.matches(secret).count(), 1, "the secret once");
    assert!(r.text.contains("will not be shown again"));
    assert!(r.text.contains("data-copy=\"#new-key\""));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // It works for the models, and is an API key: billing reads need ADMIN.
    app.call(Method::GET, PRICING, &key, None).await.expect(200);
    app.call(Method::GET, "/v1/account/billing", &key, None)
        .await
        .expect(403);

    // Naming the API scope, as the API's own spelling, is the same.
    let named = create_as(&v, "batch jobs", "API").await;
    named.expect(200);
    let named_key = text_of(&named.text, "new-key");
    app.call(Method::GET, PRICING, &named_key, None)
        .await
        .expect(200);

    let keys = keys_of(&app, "acme").await;
    assert_eq!(keys.len(), before + 2);
    let made = keys.iter().find(|k| k["key_id"] == key_id).expect("listed");
    assert_eq!(
        (&made["alias"], &made["scope"]),
        (&json!("ci runner"), &json!("API"))
    );
    let named_id = named_key.split_once(':').unwrap().0;
    let made = keys
        .iter()
        .find(|k| k["key_id"] == named_id)
        .expect("listed");
    assert_eq!(made["scope"], "API");

    // The keys page shows the keys, never a secret.
    let page = v.page("/dashboard/keys").await;
    assert!(page.text.contains(key_id) && page.text.contains("ci runner"));
    assert!(page.text.contains("batch jobs"));
    let named_secret = named_key.split_once(':').unwrap().1;
    assert!(!page.text.contains(secret) && !page.text.contains(named_secret));
    app.assert_reconciled().await;
}

#[tokio::test]
async fn a_refused_form_creates_nothing_and_says_why() {
    let app = DashApp::spawn().await;
    app.customer("acme", Some("5.00")).await;
    let v = app.signed_in("acme").await;
    let before = keys_of(&app, "acme").await.len();

    let r = create(&v, "").await;
    r.expect(400);
    assert!(
        r.text.contains("The alias must be 1 to 255 characters"),
        "{}",
        r.text
    );
    let r = create(&v, "bad\u{7}alias").await;
    r.expect(400);
    assert!(r.text.contains("control character"));
    let r = create_as(&v, "ops", "OPERATOR").await;
    r.expect(400);
    assert!(
        r.text.contains("This form creates API keys only"),
        "{}",
        r.text
    );
    assert!(
        r.text.contains("value=\"ops\""),
        "the form keeps what was typed"
    );
    // Without the form's token: refused before anything runs.
    let r = v.post_form("/dashboard/keys", &[("alias", "sneaky")]).await;
    r.expect(403);
    let csrf = v.page("/dashboard/keys").await.csrf();
    let r = app
        .visitor()
        .post_form("/dashboard/keys", &[("csrf", &csrf), ("alias", "sneaky")])
        .await;
    r.expect(303);
    assert_eq!(r.location(), "/dashboard/login", "no session, no key");
    assert_eq!(keys_of(&app, "acme").await.len(), before, "nothing created");
    app.assert_reconciled().await;
}

#[tokio::test]
async fn a_post_naming_the_admin_scope_is_refused_and_creates_no_key() {
    let app = DashApp::spawn().await;
    app.customer("acme", Some("5.00")).await;
    let v = app.signed_in("acme").await;
    let before = keys_of(&app, "acme").await;

    for scope in ["ADMIN", "admin", ""] {
        let r = create_as(&v, "finance tool", scope).await;
        r.expect(400);
        assert!(
            r.text.contains("This form creates API keys only")
                && r.text.contains("issued by your platform"),
            "the reason is shown: {}",
            r.text
        );
        assert!(!r.text.contains("id=\"new-key\""), "no key shown");
        assert!(
            r.text.contains("value=\"finance tool\""),
            "the alias is kept"
        );
    }

    let after = keys_of(&app, "acme").await;
    assert_eq!(after, before, "no key created");
    assert!(after.iter().all(|k| k["alias"] != "finance tool"));
    assert_eq!(
        after.iter().filter(|k| k["scope"] == "ADMIN").count(),
        1,
        "only the ADMIN key the platform issued"
    );
    app.assert_reconciled().await;
}

#[tokio::test]
async fn a_revoked_key_is_refused_by_the_api_and_only_the_accounts_own_keys_can_be() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("5.00")).await;
    let other = app.customer("globex", Some("5.00")).await;
    let v = app.signed_in("acme").await;
    let key_id = c.api_key.split_once(':').unwrap().0;
    let revoke = format!("/dashboard/keys/{key_id}/revoke");

    // Without the CSRF token: refused, and the key still works.
    v.post_form(&revoke, &[("csrf", "forged")])
        .await
        .expect(403);
    v.post_form(&revoke, &[]).await.expect(403);
    app.call(Method::GET, PRICING, &c.api_key, None)
        .await
        .expect(200);

    // Another account's key, an unknown and a malformed id: not found, nothing revoked.
    // A crafted notice link naming an active key (its own or another account's) says nothing.
    let forged = v.page(&format!("/dashboard/keys?revoked={key_id}")).await;
    assert!(
        !forged.text.contains("is revoked"),
        "no notice for an active key"
    );
    assert!(row_of(&forged.text, key_id).contains("Active"));
    let csrf = forged.csrf();
    let their_id = other.api_key.split_once(':').unwrap().0;
    let theirs = v
        .post_form(
            &format!("/dashboard/keys/{their_id}/revoke"),
            &[("csrf", &csrf)],
        )
        .await;
    theirs.expect(404);
    let unknown = v
        .post_form(
            "/dashboard/keys/00000000-0000-4000-8000-000000000000/revoke",
            &[("csrf", &csrf)],
        )
        .await;
    unknown.expect(404);
    assert_eq!(
        theirs.text.replace(their_id, "ID"),
        unknown
            .text
            .replace("00000000-0000-4000-8000-000000000000", "ID"),
        "another account's key reads as an unknown one"
    );
    v.post_form("/dashboard/keys/not%20a%20key/revoke", &[("csrf", &csrf)])
        .await
        .expect(404);
    app.call(Method::GET, PRICING, &other.api_key, None)
        .await
        .expect(200);
    assert!(keys_of(&app, "globex")
        .await
        .iter()
        .all(|k| k["state"] == "active"));

    // A revoked key of another account makes no notice either.
    app.op(
        Method::DELETE,
        &format!("/v1/admin/keys/{their_id}"),
        json!(null),
    )
    .await
    .expect(204);
    let forged = v.page(&format!("/dashboard/keys?revoked={their_id}")).await;
    assert!(!forged.text.contains("is revoked") && !forged.text.contains(their_id));

    // Its own key: revoked, and the API refuses it.
    let r = v.post_form(&revoke, &[("csrf", &csrf)]).await;
    r.expect(303);
    assert_eq!(r.location(), format!("/dashboard/keys?revoked={key_id}"));
    let r = app.call(Method::GET, PRICING, &c.api_key, None).await;
    r.expect(401);
    let page = v.page(&format!("/dashboard/keys?revoked={key_id}")).await;
    assert!(page.text.contains("is revoked"), "a notice says so");
    let row = row_of(&page.text, key_id);
    assert!(row.contains("Revoked"), "{row}");
    assert!(
        !row.contains("<form"),
        "a revoked key has nothing to revoke"
    );
    // The session (signed in with a link) lives on.
    v.page("/dashboard").await;
    app.assert_reconciled().await;
}

#[tokio::test]
async fn the_accounts_admin_key_is_the_platforms_and_cannot_be_revoked_here() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("5.00")).await;
    // Signed in with the ADMIN key itself.
    let v = app.visitor();
    v.sign_in("/dashboard/login", &c.admin_key).await;
    let page = v.page("/dashboard/keys").await;
    let key_id = c.admin_key.split_once(':').unwrap().0;
    let row = row_of(&page.text, key_id);
    assert!(
        row.contains("this session") && row.contains("ADMIN"),
        "{row}"
    );
    assert!(row.contains("Issued by your platform"), "{row}");
    assert!(
        !row.contains("<form") && !row.contains("Revoke"),
        "no revoke button: {row}"
    );
    // The API key beside it can be revoked.
    let api_id = c.api_key.split_once(':').unwrap().0;
    assert!(row_of(&page.text, api_id).contains("/revoke"));

    // A crafted revoke of the ADMIN key: refused with the reason, nothing revoked.
    let r = v
        .post_form(
            &format!("/dashboard/keys/{key_id}/revoke"),
            &[("csrf", &page.csrf())],
        )
        .await;
    r.expect(403);
    assert!(
        r.text.contains("only your platform can revoke it"),
        "{}",
        r.text
    );
    app.call(Method::GET, "/v1/account/billing", &c.admin_key, None)
        .await
        .expect(200);
    let keys = keys_of(&app, "acme").await;
    let admin = keys.iter().find(|k| k["key_id"] == key_id).unwrap();
    assert_eq!(
        (&admin["scope"], &admin["state"]),
        (&json!("ADMIN"), &json!("active"))
    );
    // The session lives on, and a notice link for the key claims nothing.
    let page = v.page(&format!("/dashboard/keys?revoked={key_id}")).await;
    assert!(!page.text.contains("is revoked"));
    assert!(row_of(&page.text, key_id).contains("Active"));

    // Revoked by the platform, it is still listed as the platform's, with nothing to do.
    app.op(
        Method::DELETE,
        &format!("/v1/admin/keys/{key_id}"),
        json!(null),
    )
    .await
    .expect(204);
    let v = app.signed_in("acme").await;
    let page = v.page("/dashboard/keys").await;
    let row = row_of(&page.text, key_id);
    assert!(
        row.contains("Revoked") && row.contains("Issued by your platform"),
        "{row}"
    );
    assert!(!row.contains("<form"));
    app.assert_reconciled().await;
}

#[tokio::test]
async fn an_account_with_few_keys_is_told_what_to_do() {
    let app = DashApp::spawn().await;
    app.op(
        Method::POST,
        "/v1/admin/accounts",
        json!({"username": "bare"}),
    )
    .await
    .expect(201);
    let v = app.signed_in("bare").await;
    let page = v.page("/dashboard/keys").await;
    assert!(page.text.contains("No keys yet"));
    assert!(
        page.text.contains("id=\"create-key\""),
        "with the form to create one"
    );

    // Only an ADMIN key, as the platform gave it: no API key yet.
    app.op(
        Method::POST,
        "/v1/admin/accounts/bare/keys",
        json!({"scope": "ADMIN", "alias": "owner"}),
    )
    .await
    .expect(201);
    let page = v.page("/dashboard/keys").await;
    assert!(page.text.contains("No API keys yet"));
    assert!(page.text.contains("owner"));
    create(&v, "backend").await.expect(200);
    let page = v.page("/dashboard/keys").await;
    assert!(!page.text.contains("No API keys yet") && !page.text.contains("No keys yet"));
    app.assert_reconciled().await;
}

const SCRIPT_ALIAS: &str = "<script>window.__xss=1</script>";
const IMG_ALIAS: &str = "<img src=x onerror=\"window.__xss=2\">";

#[tokio::test]
async fn aliases_are_shown_as_text_never_as_markup() {
    let app = DashApp::spawn().await;
    app.customer("acme", Some("5.00")).await;
    for alias in [SCRIPT_ALIAS, IMG_ALIAS] {
        app.op(
            Method::POST,
            "/v1/admin/accounts/acme/keys",
            json!({"scope": "API", "alias": alias}),
        )
        .await
        .expect(201);
    }
    let v = app.signed_in("acme").await;
    let page = v.page("/dashboard/keys").await;
    assert!(page
        .text
        .contains("&lt;script&gt;window.__xss=1&lt;/script&gt;"));
    assert!(page.text.contains("&lt;img src=x onerror="));
    assert!(!page.text.contains("<script>window") && !page.text.contains("<img src=x"));

    let b = Browser::start(&app.address).await;
    b.goto(&app.sign_in_link("acme").await).await;
    b.goto("/dashboard/keys").await;
    let table = b.text("#keys-table").await;
    assert!(table.contains(SCRIPT_ALIAS), "{table}");
    assert!(table.contains(IMG_ALIAS), "{table}");
    assert_eq!(b.js("return typeof window.__xss").await, "undefined");
    assert_eq!(b.count("#keys-table img, #keys-table script").await, 0);
    b.close().await;
    app.assert_reconciled().await;
}

#[tokio::test]
async fn in_a_browser_a_key_is_created_shown_once_and_revoked() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("25.00")).await;
    let b = Browser::start(&app.address).await;
    b.goto(&app.sign_in_link("acme").await).await;
    b.follow("nav a[href='/dashboard/keys']").await;
    assert_eq!(b.path().await, "/dashboard/keys");
    b.screenshots("keys").await;

    // The platform's ADMIN key has no revoke button; the form makes API keys.
    let admin_id = c.admin_key.split_once(':').unwrap().0;
    let api_id = c.api_key.split_once(':').unwrap().0;
    let revoke_in = |id: &str| format!("#keys-table tr[data-key-id='{id}'] form button");
    assert_eq!(
        b.count(&revoke_in(admin_id)).await,
        0,
        "no revoke for ADMIN"
    );
    assert_eq!(b.count(&revoke_in(api_id)).await, 1);
    assert_eq!(b.count("#create-key input[name='scope']").await, 0);

    b.fill("#alias", "staging worker").await;
    b.follow("#create-key button[type='submit']").await;
    assert_eq!(b.path().await, "/dashboard/keys");
    let key = b.text("#new-key").await;
    let (key_id, secret) = key.split_once(':').expect("key_id:key_secret");
    assert!(b.text("main").await.contains("will not be shown again"));
    // The copy button shows with the script on.
    assert_eq!(
        b.js("return document.querySelector('#copy-key').hidden")
            .await,
        false
    );
    b.screenshots("key-created").await;
    app.call(Method::GET, PRICING, &key, None).await.expect(200);

    // Back to the list: the key is there, its secret is not.
    b.follow("main a.button.primary").await;
    assert_eq!(b.path().await, "/dashboard/keys");
    let source = b.client.source().await.expect("the page's source");
    assert!(source.contains(key_id) && !source.contains(secret));

    // Revoke it, confirming the question the page asks.
    b.js("window.__tollgate_before_click = true; return true;")
        .await;
    b.click(&format!(
        "form[action='/dashboard/keys/{key_id}/revoke'] button"
    ))
    .await;
    let question = b.client.get_alert_text().await.expect("a confirmation");
    assert!(question.contains("staging worker"), "{question}");
    b.client.accept_alert().await.expect("accept it");
    b.wait_for_new_page().await;
    assert!(b.text("main").await.contains("is revoked"));
    app.call(Method::GET, PRICING, &key, None).await.expect(401);
    b.close().await;
    app.assert_reconciled().await;
}
