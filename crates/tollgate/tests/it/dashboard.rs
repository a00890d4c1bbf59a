//! The dashboard as the binary serves it: beside the API on the same port, its assets
//! embedded, and its session cookies `Secure` exactly when the public URL is https.

use crate::common::{client, must, send, Server};
use serde_json::json;

const OP_KEY: &str = "ops-dash:0123456789abcdef0123456789abcdef";

/// Starts a server with `flags`, creates `acme`, mints a sign-in link and follows it; returns
/// the session cookie the link set.
fn session_cookie(flags: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start_with(
        &dir.path().join("t.db"),
        dir.path().join("server.log"),
        OP_KEY,
        None,
        &[],
        flags,
    );
    let c = client();
    must(
        send(
            c.post(format!("{}/v1/admin/accounts", server.base))
                .json(&json!({"username": "acme"})),
            OP_KEY,
        ),
        201,
        "create acme",
    );
    let link = must(
        send(
            c.post(format!(
                "{}/v1/admin/accounts/acme/portal-sessions",
                server.base
            )),
            OP_KEY,
        ),
        201,
        "mint a link",
    );
    let url = link.body["url"].as_str().expect("a url");
    let no_redirect = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client");
    // The link's page posts it back; the POST signs in.
    let r = no_redirect
        .post(format!("{}{url}", server.base))
        .send()
        .expect("an answer");
    assert_eq!(r.status().as_u16(), 303);
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("tollgate_session="))
        .expect("a session cookie")
        .to_string();

    // The page and its assets come from the binary itself.
    let js = no_redirect
        .get(format!("{}/dashboard/assets/dashboard.js", server.base))
        .send()
        .expect("an answer");
    assert_eq!(js.status().as_u16(), 200);
    assert!(js.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let page = no_redirect
        .get(format!("{}/dashboard", server.base))
        .header("Cookie", cookie.split(';').next().unwrap())
        .send()
        .expect("an answer");
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().unwrap().contains("Overview"));
    server.terminate();
    cookie
}

#[test]
fn session_cookies_are_secure_when_the_public_url_is_https() {
    let cookie = session_cookie(&["--public-url", "https://billing.example.com"]);
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"));
    let cookie = session_cookie(&["--public-url", "http://billing.internal"]);
    assert!(!cookie.contains("Secure"), "{cookie}");
    let cookie = session_cookie(&[]);
    assert!(!cookie.contains("Secure"), "{cookie}");
}
