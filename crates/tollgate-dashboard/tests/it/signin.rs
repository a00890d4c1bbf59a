//! Signing in and out (API.md section 5): one-time links, keys, sessions that end, CSRF, and
//! which session opens which area.

use crate::common::browser::Browser;
use crate::common::{DashApp, DAY_MS};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn a_minted_link_signs_in_once_and_a_second_use_is_refused() {
    let app = DashApp::spawn().await;
    app.customer("acme", Some("25.00")).await;
    let link = app.sign_in_link("acme").await;
    assert!(link.starts_with("/dashboard/link/"), "{link}");

    // Opening the link (as a mail tool's link checker does, twice) signs nobody in and does
    // not use it: its page posts it back.
    let v = app.visitor();
    for _ in 0..2 {
        let page = v.page(&link).await;
        assert!(page.text.contains("data-autosubmit"), "{}", page.text);
        assert!(page.set_cookies().is_empty());
    }
    v.get("/dashboard").await.expect(303);
    let r = v.post_form(&link, &[]).await;
    r.expect(303);
    assert_eq!(r.location(), "/dashboard");
    let cookie = r
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("tollgate_session="))
        .expect("a session cookie");
    for part in ["HttpOnly", "SameSite=Lax", "Path=/dashboard", "Max-Age="] {
        assert!(cookie.contains(part), "{part} in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "no Secure without an https URL");
    let page = v.page("/dashboard").await;
    assert!(page.text.contains("acme"), "the page names the account");

    // Used again, by anyone: refused, and no session is handed out.
    let again = app.visitor().post_form(&link, &[]).await;
    again.expect(410);
    assert!(again.text.contains("already been used"), "{}", again.text);
    assert!(again
        .set_cookies()
        .iter()
        .all(|c| !c.starts_with("tollgate_session=")));
    // An unknown token is refused the same way.
    app.visitor()
        .post_form(
            "/dashboard/link/0000000000000000000000000000000000000000000000000000000000000000",
            &[],
        )
        .await
        .expect(410);
    app.assert_reconciled().await;
}

#[tokio::test]
async fn a_link_expires_after_ten_minutes_and_a_session_after_its_lifetime() {
    let app = DashApp::spawn().await;
    app.customer("acme", Some("5.00")).await;
    let link = app.sign_in_link("acme").await;
    app.set_now(app.now_ms() + 10 * 60_000);
    app.visitor().post_form(&link, &[]).await.expect(410);

    let v = app.signed_in("acme").await;
    v.page("/dashboard").await;
    app.set_now(app.now_ms() + DAY_MS);
    let r = v.get("/dashboard").await;
    r.expect(303);
    assert_eq!(r.location(), "/dashboard/login");
    app.assert_reconciled().await;
}

#[tokio::test]
async fn an_admin_key_signs_in_and_other_keys_are_refused_with_the_reason() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("5.00")).await;
    let v = app.visitor();
    let login = v.page("/dashboard/login").await;
    assert!(login
        .set_cookies()
        .iter()
        .any(|c| c.starts_with("tollgate_login=") && c.contains("SameSite=Strict")));
    let csrf = login.csrf();

    let r = v
        .post_form("/dashboard/login", &[("csrf", &csrf), ("key", &c.api_key)])
        .await;
    r.expect(401);
    assert!(r.text.contains("ADMIN"), "says an ADMIN key is needed");
    let csrf = r.csrf();
    let op_key = app.operator_key.clone();
    let r = v
        .post_form("/dashboard/login", &[("csrf", &csrf), ("key", &op_key)])
        .await;
    r.expect(401);
    let csrf = r.csrf();
    let r = v
        .post_form("/dashboard/login", &[("csrf", &csrf), ("key", "nope:nope")])
        .await;
    r.expect(401);
    v.get("/dashboard").await.expect(303);

    let csrf = r.csrf();
    let r = v
        .post_form(
            "/dashboard/login",
            &[("csrf", &csrf), ("key", &c.admin_key)],
        )
        .await;
    r.expect(303);
    assert_eq!(r.location(), "/dashboard");
    v.page("/dashboard").await;
    app.assert_reconciled().await;
}

#[tokio::test]
async fn a_sign_in_form_without_its_token_is_refused() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("5.00")).await;
    let v = app.visitor();
    v.page("/dashboard/login").await;
    let r = v
        .post_form(
            "/dashboard/login",
            &[("csrf", "forged"), ("key", &c.admin_key)],
        )
        .await;
    r.expect(403);
    // And a form from another browser (no cookie) is refused too.
    let csrf = v.page("/dashboard/login").await.csrf();
    let r = app
        .visitor()
        .post_form(
            "/dashboard/login",
            &[("csrf", &csrf), ("key", &c.admin_key)],
        )
        .await;
    r.expect(403);
    v.get("/dashboard").await.expect(303);
    app.assert_reconciled().await;
}

#[tokio::test]
async fn sign_out_ends_the_session_for_every_copy_of_its_cookie() {
    let app = DashApp::spawn().await;
    app.customer("acme", Some("5.00")).await;
    let link = app.sign_in_link("acme").await;
    let v = app.visitor();
    let r = v.post_form(&link, &[]).await;
    let cookie = r
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("tollgate_session="))
        .expect("a session cookie");
    let pair = cookie.split(';').next().expect("name=value").to_string();
    let page = v.page("/dashboard").await;

    // Without the CSRF token, sign-out is refused and the session lives on.
    v.post_form("/dashboard/logout", &[("csrf", "x")])
        .await
        .expect(403);
    v.page("/dashboard").await;

    let r = v
        .post_form("/dashboard/logout", &[("csrf", &page.csrf())])
        .await;
    r.expect(303);
    assert_eq!(r.location(), "/dashboard/login?signed_out=1");
    v.get("/dashboard").await.expect(303);
    // A copy of the cookie kept elsewhere no longer works either.
    let copy = app
        .client
        .get(app.url("/dashboard"))
        .header("Cookie", &pair)
        .send()
        .await
        .expect("an answer");
    assert!(copy.status().is_redirection() || copy.url().path() == "/dashboard/login");
    let body = copy.text().await.expect("a body");
    assert!(
        !body.contains("Overview</h1>"),
        "a signed-out cookie shows no page"
    );
    app.assert_reconciled().await;
}

#[tokio::test]
async fn a_session_signed_in_with_a_key_ends_when_the_key_is_revoked() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("5.00")).await;
    let v = app.visitor();
    v.sign_in("/dashboard/login", &c.admin_key).await;
    v.page("/dashboard").await;
    let key_id = c.admin_key.split(':').next().expect("key id");
    app.op(
        Method::DELETE,
        &format!("/v1/admin/keys/{key_id}"),
        json!(null),
    )
    .await
    .expect(204);
    v.get("/dashboard").await.expect(303);
    app.assert_reconciled().await;
}

#[tokio::test]
async fn a_customer_session_cannot_open_the_console_nor_an_operator_the_dashboard() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("5.00")).await;
    let customer = app.signed_in("acme").await;
    let r = customer.get("/console").await;
    r.expect(303);
    assert_eq!(r.location(), "/console/login");
    // The console takes no customer key either.
    let csrf = customer.page("/console/login").await.csrf();
    customer
        .post_form("/console/login", &[("csrf", &csrf), ("key", &c.admin_key)])
        .await
        .expect(401);
    customer.get("/console").await.expect(303);

    let operator = app.operator().await;
    operator.page("/console").await;
    let r = operator.get("/dashboard").await;
    r.expect(303);
    assert_eq!(r.location(), "/dashboard/login");
    app.assert_reconciled().await;
}

#[tokio::test]
async fn every_page_sends_a_strict_content_security_policy() {
    let app = DashApp::spawn().await;
    app.customer("acme", Some("5.00")).await;
    let v = app.signed_in("acme").await;
    for path in ["/dashboard", "/dashboard/login", "/console/login"] {
        let r = v.get(path).await;
        let csp = r.header("content-security-policy").expect("a CSP");
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(csp.contains("style-src 'self'"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
        // No inline script or style in the page itself.
        assert!(
            !r.text.contains("<script>") && !r.text.contains("style="),
            "{path}"
        );
    }
    app.assert_reconciled().await;
}

#[tokio::test]
async fn in_a_browser_a_link_signs_in_once_and_sign_out_ends_the_session() {
    let app = DashApp::spawn().await;
    app.customer("acme", Some("25.00")).await;
    let b = Browser::start(&app.address).await;
    b.goto("/dashboard/login").await;
    b.screenshots("login").await;
    b.assert_accessible("the sign-in page").await;

    let link = app.sign_in_link("acme").await;
    b.goto(&link).await;
    assert_eq!(b.path().await, "/dashboard");
    assert!(b.text("form.who .account").await.contains("acme"));

    b.follow("form.who button").await;
    assert_eq!(b.path().await, "/dashboard/login");
    assert!(b.text("main").await.contains("You are signed out"));
    b.goto("/dashboard").await;
    assert_eq!(b.path().await, "/dashboard/login", "signed out for good");

    // The same link again: refused.
    b.goto(&link).await;
    assert!(b.text("main").await.contains("already been used"));
    b.goto("/dashboard").await;
    assert_eq!(b.path().await, "/dashboard/login");
    b.close().await;
    app.assert_reconciled().await;
}

#[tokio::test]
async fn sign_in_by_link_and_by_key_and_sign_out_on_every_store() {
    for backend in tollgate_store::testing::backends() {
        let app = DashApp::spawn_on(&backend).await;
        let c = app.customer("acme", Some("5.00")).await;
        let v = app.signed_in("acme").await;
        let page = v.page("/dashboard").await;
        v.post_form("/dashboard/logout", &[("csrf", &page.csrf())])
            .await
            .expect(303);
        v.get("/dashboard").await.expect(303);

        v.sign_in("/dashboard/login", &c.admin_key).await;
        v.page("/dashboard").await;
        let op = app.operator().await;
        op.page("/console").await;
        app.assert_reconciled().await;
    }
}

#[tokio::test]
async fn the_platform_ends_an_accounts_dashboard_sessions_through_the_operator_api() {
    let app = DashApp::spawn().await;
    let c = app.customer("acme", Some("5.00")).await;
    app.customer("globex", Some("5.00")).await;
    let by_link = app.signed_in("acme").await;
    let by_key = app.visitor();
    by_key.sign_in("/dashboard/login", &c.admin_key).await;
    let other = app.signed_in("globex").await;

    let r = app
        .op(
            Method::DELETE,
            "/v1/admin/accounts/acme/portal-sessions",
            json!(null),
        )
        .await;
    assert_eq!(r.expect(200).json()["ended"], 2);
    by_link.get("/dashboard").await.expect(303);
    by_key.get("/dashboard").await.expect(303);
    other.page("/dashboard").await;
    // The keys still work; a second call ends nothing; an unknown account is 404.
    app.call(Method::GET, "/v1/account/billing", &c.admin_key, None)
        .await
        .expect(200);
    let r = app
        .op(
            Method::DELETE,
            "/v1/admin/accounts/acme/portal-sessions",
            json!(null),
        )
        .await;
    assert_eq!(r.expect(200).json()["ended"], 0);
    app.op(
        Method::DELETE,
        "/v1/admin/accounts/nobody/portal-sessions",
        json!(null),
    )
    .await
    .expect(404);
    app.assert_reconciled().await;
}
