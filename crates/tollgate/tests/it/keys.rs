//! Operator keys live in the database, whatever the environment says: a `tollgate serve`
//! restarted with another `TOLLGATE_OPERATOR_KEY` keeps accepting the operator keys it had
//! (the first one from the environment, and one created through the API); a revoked one never
//! comes back, also when the environment names it again (the server starts and says so); and
//! a known key id with another secret stops the start with a clear error.

use crate::common::{client, must, send, Server, BIN};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FIRST: &str = "first-op:first-secret-111";
const SECOND_ENV: &str = "second-op:second-secret-222";

fn start(db: &Path, dir: &Path, run: &str, key: &str) -> Server {
    Server::start(db, dir.join(format!("{run}.stderr")), key, None)
}

/// The status `key` gets for an operator read.
fn status(server: &Server, key: &str) -> u16 {
    let c = client();
    match send(
        c.get(format!("{}/v1/admin/operator-keys", server.base)),
        key,
    ) {
        Ok(r) => r.status,
        Err(e) => panic!("{e}"),
    }
}

/// Runs `tollgate serve` with `key` in the environment; it must exit by itself, unsuccessfully.
/// Returns its stderr.
fn start_refused(db: &Path, key: &str) -> String {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(db)
        .env("TOLLGATE_OPERATOR_KEY", key)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tollgate serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(!status.success(), "the start should fail: {stderr}");
            return stderr;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tollgate serve kept running with a key it should refuse");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn operator_keys_outlive_the_environment_and_a_revoked_one_never_comes_back() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("keys.db");
    let c = client();

    // The first start creates FIRST; through it, the platform creates another operator key.
    let mut server = start(&db, dir.path(), "first", FIRST);
    assert_eq!(status(&server, FIRST), 200);
    let created = must(
        send(
            c.post(format!("{}/v1/admin/operator-keys", server.base))
                .json(&json!({ "alias": "gateway" })),
            FIRST,
        ),
        201,
        "create an operator key",
    );
    let api_made = created.body["key"].as_str().expect("key").to_string();
    assert_eq!(status(&server, &api_made), 200);
    server.kill();

    // Restarted with another key in the environment: all three work.
    let mut server = start(&db, dir.path(), "second", SECOND_ENV);
    for key in [FIRST, &api_made, SECOND_ENV] {
        assert_eq!(status(&server, key), 200, "{key}");
    }
    let listed = must(
        send(
            c.get(format!("{}/v1/admin/operator-keys", server.base)),
            &api_made,
        ),
        200,
        "list operator keys",
    );
    let ids: Vec<&str> = listed.body["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["key_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "first-op",
            created.body["key_id"].as_str().unwrap(),
            "second-op"
        ]
    );

    // Revoked through the API: refused at once.
    let revoked = c
        .delete(format!("{}/v1/admin/keys/first-op", server.base))
        .header("Authorization", format!("Key {api_made}"))
        .send()
        .expect("DELETE");
    assert_eq!(revoked.status().as_u16(), 204);
    assert_eq!(status(&server, FIRST), 401);
    server.kill();

    // Named again at start: the server starts, says the key is revoked, and refuses it.
    let mut server = start(&db, dir.path(), "third", FIRST);
    assert_eq!(status(&server, FIRST), 401);
    assert_eq!(status(&server, &api_made), 200);
    let log = server.stderr_text();
    assert!(
        log.contains("first-op") && log.contains("revoked"),
        "the start says the key is revoked:\n{log}"
    );
    server.kill();

    // A known id with another secret: the start is refused, naming the key, and the stored
    // key is unchanged.
    let refused = start_refused(&db, "second-op:not-the-secret");
    assert!(
        refused.contains("TOLLGATE_OPERATOR_KEY")
            && refused.contains("second-op")
            && refused.contains("another secret"),
        "{refused}"
    );
    // A customer key's id is refused too.
    let mut server = start(&db, dir.path(), "fourth", SECOND_ENV);
    must(
        send(
            c.post(format!("{}/v1/admin/accounts", server.base))
                .json(&json!({ "username": "acme" })),
            SECOND_ENV,
        ),
        201,
        "create an account",
    );
    let customer = must(
        send(
            c.post(format!("{}/v1/admin/accounts/acme/keys", server.base))
                .json(&json!({ "scope": "ADMIN", "alias": "backend" })),
            SECOND_ENV,
        ),
        201,
        "create a customer key",
    );
    let customer_id = customer.body["key_id"].as_str().unwrap().to_string();
    server.kill();
    let refused = start_refused(&db, &format!("{customer_id}:whatever"));
    assert!(
        refused.contains(&customer_id) && refused.contains("customer key"),
        "{refused}"
    );

    let server = start(&db, dir.path(), "fifth", SECOND_ENV);
    assert_eq!(status(&server, SECOND_ENV), 200);
    assert_eq!(status(&server, "second-op:not-the-secret"), 401);
    let keys: Value = must(
        send(
            c.get(format!("{}/v1/admin/operator-keys", server.base)),
            SECOND_ENV,
        ),
        200,
        "list operator keys",
    )
    .body;
    let states: Vec<(&str, &str)> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["key_id"].as_str().unwrap(), k["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states[0], ("first-op", "revoked"));
    assert!(
        states[1..].iter().all(|(_, s)| *s == "active"),
        "{states:?}"
    );

    // No secret was ever logged.
    for run in ["first", "second", "third", "fourth", "fifth"] {
        let log = std::fs::read_to_string(dir.path().join(format!("{run}.stderr"))).unwrap();
        for secret in ["first-secret-111", "second-secret-222", "not-the-secret"] {
            assert!(!log.contains(secret), "{run} logged a secret:\n{log}");
        }
        let made_secret = created.body["key_secret"].as_str().unwrap();
        assert!(!log.contains(made_secret), "{run} logged a secret:\n{log}");
    }
}
