//! Running the real binary as an operator would in production: configuration files and their
//! check, JSON logs, a start that fails without changing anything (busy port, database in use),
//! a SIGTERM that drains a burst and loses nothing acknowledged, and a backup taken mid-burst.
//!
//! Timing only decides when a signal or a backup lands during a burst; every assertion holds
//! whenever it lands.

use crate::common::{client, must, send, Reply, Server, BIN, SAMPLE_CATALOG};
use reqwest::blocking::Client;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const OP_KEY: &str = "ops-op:secret-ops-123";
const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docs/tollgate.example.toml"
);

fn tollgate(args: &[&str], dir: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_BACKTRACE")
        .env_remove("TOLLGATE_OPERATOR_KEY")
        .output()
        .expect("run tollgate")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn get(c: &Client, base: &str, path: &str) -> Result<Reply, String> {
    send(c.get(format!("{base}{path}")), OP_KEY)
}

fn post(c: &Client, base: &str, path: &str, body: &Value) -> Result<Reply, String> {
    send(c.post(format!("{base}{path}")).json(body), OP_KEY)
}

#[test]
fn the_example_configuration_passes_config_check_and_a_bad_file_names_its_line_and_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ok = tollgate(&["config", "check", EXAMPLE], dir.path());
    assert!(ok.status.success(), "{}", text(&ok));
    let stdout = String::from_utf8_lossy(&ok.stdout);
    for line in [
        "db = \"/var/lib/tollgate/tollgate.db\"",
        "log_format = \"json\"",
        "drain_timeout_s = 30",
        "max_connections = 10000",
        "# header_timeout_s: from the file",
        "[serverless]\ngrace_s = 300",
        "# serverless.grace_s: from the file",
    ] {
        assert!(stdout.contains(line), "missing {line:?}:\n{stdout}");
    }
    // Every setting is in the example file, set or commented out (a section's in its table).
    let example = std::fs::read_to_string(EXAMPLE).expect("example");
    for line in stdout.lines().filter_map(|l| l.strip_prefix("# ")) {
        if let Some((name, _)) = line.split_once(": from") {
            let (table, key) = match name.split_once('.') {
                Some((section, key)) => {
                    let at = example
                        .find(&format!("\n[{section}]\n"))
                        .unwrap_or_else(|| panic!("no [{section}] in the example file"));
                    (&example[at..], key)
                }
                None => (example.as_str(), name),
            };
            assert!(
                table.contains(&format!("\n{key} = ")) || table.contains(&format!("# {key} = ")),
                "{name} is not in the example file"
            );
        }
    }

    // A PostgreSQL URL is shown without its password.
    std::fs::write(
        dir.path().join("pg.toml"),
        "db = \"postgres://billing:hunter2@db.internal:5432/tollgate\"\n",
    )
    .expect("write");
    let pg = tollgate(&["config", "check", "pg.toml"], dir.path());
    let shown = String::from_utf8_lossy(&pg.stdout);
    assert!(pg.status.success(), "{}", text(&pg));
    assert!(
        shown.contains("postgres://billing:***@db.internal:5432/tollgate")
            && !shown.contains("hunter2"),
        "{shown}"
    );

    for (body, needles) in [
        (
            "db = \"a.db\"\nlisten = \"127.0.0.1:8080\"\nlisten_port = 9\n",
            &["line 3", "`listen_port`", "unknown field"][..],
        ),
        (
            "# timeouts\nheader_timeout_s = 0\n",
            &["line 2", "`header_timeout_s`", "at least 1"][..],
        ),
        (
            "listen = \"localhost:80\"\n",
            &["line 1", "`listen`", "IP:port"][..],
        ),
        (
            "log_format = \"yaml\"\n",
            &["line 1", "`log_format`", "text", "json"][..],
        ),
        (
            "drain_timeout_s = \"30\"\n",
            &["line 1", "`drain_timeout_s`", "expected a whole number"][..],
        ),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, body).expect("write");
        let out = tollgate(&["config", "check", "bad.toml"], dir.path());
        assert!(!out.status.success(), "{body:?} passed:\n{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        for n in needles.iter().chain(&["bad.toml"]) {
            assert!(stderr.contains(n), "{body:?}: {n:?} not in:\n{stderr}");
        }
    }

    // A bad value in the environment or in a flag is named, and nothing starts.
    let out = Command::new(BIN)
        .args(["serve", "--db", "never.db"])
        .current_dir(dir.path())
        .env("TOLLGATE_IDLE_TIMEOUT_S", "soon")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TOLLGATE_IDLE_TIMEOUT_S"),
        "{}",
        text(&out)
    );
    let out = tollgate(
        &["serve", "--db", "never.db", "--log-format", "xml"],
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--log-format"),
        "{}",
        text(&out)
    );
    assert!(!dir.path().join("never.db").exists());
}

/// `tollgate serve` with `args` and `env`, expected to refuse to start: its stderr.
fn refused_start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .args(args)
        .current_dir(dir)
        .env_remove("TOLLGATE_OPERATOR_KEY")
        .env_remove("TOLLGATE_INVOICES_PREFIX");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run tollgate serve");
    assert!(
        !out.status.success(),
        "{args:?} {env:?} started:\n{}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_invoice_prefix_comes_from_the_file_the_environment_or_a_flag_and_a_bad_one_stops_the_server()
{
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("tollgate.toml"),
        "listen = \"127.0.0.1:0\"\n\n[invoices]\nprefix = \"FILE\"\n",
    )
    .expect("write");

    // `config check`: the file's prefix, the environment's over it, and where each came from.
    let check = |env: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["config", "check", "tollgate.toml"])
            .current_dir(dir.path())
            .env_remove("TOLLGATE_INVOICES_PREFIX");
        if let Some(v) = env {
            cmd.env("TOLLGATE_INVOICES_PREFIX", v);
        }
        cmd.output().expect("run tollgate config check")
    };
    let out = check(None);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("# invoices.prefix: from the file")
            && stdout.contains("[invoices]\nprefix = \"FILE\"\n"),
        "{stdout}"
    );
    let out = check(Some("ENV"));
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("# invoices.prefix: from the environment (TOLLGATE_INVOICES_PREFIX)")
            && stdout.contains("prefix = \"ENV\"\n"),
        "{stdout}"
    );
    // A refused prefix in the environment is named by `config check` too.
    let out = check(Some("acme"));
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("TOLLGATE_INVOICES_PREFIX") && stderr.contains("uppercase"),
        "{stderr}"
    );

    // A bad prefix from any place stops the server before it opens anything, naming the
    // setting where it came from.
    std::fs::write(
        dir.path().join("bad.toml"),
        "[invoices]\nprefix = \"TG 2026\"\n",
    )
    .expect("write");
    for (args, env, needles) in [
        (
            &["--db", "never.db", "--config", "bad.toml"][..],
            &[][..],
            &["bad.toml", "line 2", "`invoices.prefix`", "uppercase"][..],
        ),
        (
            &["--db", "never.db"][..],
            &[("TOLLGATE_INVOICES_PREFIX", "THIRTEEN-CHAR")][..],
            &["TOLLGATE_INVOICES_PREFIX", "1 to 12 characters"][..],
        ),
        (
            &["--db", "never.db", "--invoices-prefix", "TG-"][..],
            &[][..],
            &["--invoices-prefix", "begin and end"][..],
        ),
    ] {
        let stderr = refused_start(dir.path(), args, env);
        for n in needles {
            assert!(
                stderr.contains(n),
                "{args:?} {env:?}: {n:?} not in:\n{stderr}"
            );
        }
    }
    assert!(!dir.path().join("never.db").exists());

    // The server numbers the invoices it issues with the prefix in force: the flag over the
    // environment over the file; restarted without the flag, the environment's, continuing the
    // one sequence.
    let db = dir.path().join("prefix.db");
    let year = chrono::Utc::now().format("%Y").to_string();
    let issue = |flags: &[&str], env: &str, account: &str, log: &str| -> String {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--db")
            .arg(&db)
            .args(["--config", "tollgate.toml"])
            .args(flags)
            .current_dir(dir.path())
            .env("TOLLGATE_OPERATOR_KEY", OP_KEY)
            .env("TOLLGATE_INVOICES_PREFIX", env);
        let server = Server::start_command(cmd, dir.path().join(log));
        let c = client();
        must(
            post(
                &c,
                &server.base,
                "/v1/admin/accounts",
                &json!({"username": account}),
            ),
            201,
            "create account",
        );
        must(
            post(
                &c,
                &server.base,
                &format!("/v1/admin/accounts/{account}/purchases"),
                &json!({"purchase_id": format!("p-{account}"), "amount_usd": "25.00"}),
            ),
            201,
            "purchase",
        );
        let list = must(
            get(
                &c,
                &server.base,
                &format!("/v1/admin/invoices?username={account}"),
            ),
            200,
            "invoices",
        );
        let invoices = list.body["invoices"].as_array().expect("invoices");
        assert_eq!(invoices.len(), 1, "{}", list.body);
        assert_eq!(invoices[0]["kind"], "top_up", "{}", list.body);
        invoices[0]["number"].as_str().expect("number").to_string()
    };
    assert_eq!(
        issue(&["--invoices-prefix", "ACME"], "ENV", "first", "first.log"),
        format!("ACME-{year}-000001")
    );
    assert_eq!(
        issue(&[], "ENV", "second", "second.log"),
        format!("ENV-{year}-000002")
    );
}

/// What identifies a database file and its content: inode, length and modification time of the
/// file and its WAL.
fn file_state(db: &Path) -> Vec<(u64, u64, i64, i64)> {
    ["", "-wal"]
        .iter()
        .map(|suffix| {
            let m = std::fs::metadata(format!("{}{suffix}", db.display())).expect("metadata");
            (m.ino(), m.len(), m.mtime(), m.mtime_nsec())
        })
        .collect()
}

/// Creates account `username` with credits, a concurrency override and an API key; returns
/// the key.
fn setup_account(c: &Client, base: &str, username: &str) -> String {
    must(
        post(
            c,
            base,
            "/v1/admin/accounts",
            &json!({"username": username}),
        ),
        201,
        "create account",
    );
    must(
        post(
            c,
            base,
            &format!("/v1/admin/accounts/{username}/purchases"),
            &json!({"purchase_id": format!("init-{username}"), "amount_usd": "100000.00"}),
        ),
        201,
        "purchase",
    );
    must(
        send(
            c.put(format!("{base}/v1/admin/accounts/{username}/pricing"))
                .json(&json!({"concurrency_limit": 1000})),
            OP_KEY,
        ),
        200,
        "concurrency override",
    );
    let key = must(
        post(
            c,
            base,
            &format!("/v1/admin/accounts/{username}/keys"),
            &json!({"scope": "API", "alias": "ops test"}),
        ),
        201,
        "create key",
    );
    key.body["key"].as_str().expect("key").to_string()
}

/// The free port `server` listens on.
fn listen_addr(server: &Server) -> String {
    server
        .base
        .strip_prefix("http://")
        .expect("http base")
        .to_string()
}

#[test]
fn a_server_that_cannot_listen_or_whose_database_is_in_use_exits_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("first.db");
    // No sweeps: a sweep is a batch, and the first batch of a minute folds the minute before
    // into the hour rows, which would change the file while the refused servers run.
    let first = Server::start_with(
        &db,
        dir.path().join("first.log"),
        OP_KEY,
        Some(Path::new(SAMPLE_CATALOG)),
        &[],
        &["--sweep-interval-ms", "86400000"],
    );
    let c = client();
    setup_account(&c, &first.base, "busy");
    billed_events(&c, &first.base, "busy", 5);
    let reconciliation = || must(get(&c, &first.base, "/v1/admin/reconciliation"), 200, "rec").body;
    let account = || must(get(&c, &first.base, "/v1/admin/accounts/busy"), 200, "acct").body;
    let (rec_before, account_before) = (reconciliation(), account());
    assert_eq!(rec_before["clean"], true, "{rec_before}");
    // The running server's checkpointer copies the last commits into the file shortly after
    // them: the files are compared once that is done (unchanged for a second).
    let mut files_before = file_state(&db);
    for _ in 0..30 {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let now = file_state(&db);
        if now == files_before {
            break;
        }
        files_before = now;
    }

    // The same port, the same database: refused at the port, before the database is touched.
    let addr = listen_addr(&first);
    let db_arg = db.display().to_string();
    let busy_port = tollgate(&["serve", "--db", &db_arg, "--listen", &addr], dir.path());
    assert_eq!(busy_port.status.code(), Some(1), "{}", text(&busy_port));
    let stderr = String::from_utf8_lossy(&busy_port.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}: address in use")),
        "{stderr}"
    );
    // Another port, the same SQLite file: one server per file.
    let in_use = tollgate(
        &["serve", "--db", &db_arg, "--listen", "127.0.0.1:0"],
        dir.path(),
    );
    assert_eq!(in_use.status.code(), Some(1), "{}", text(&in_use));
    assert!(
        String::from_utf8_lossy(&in_use.stderr).contains("in use by another tollgate server"),
        "{}",
        text(&in_use)
    );
    // Nor is it migrated under the server.
    let migrate = tollgate(&["migrate", "--db", &db_arg], dir.path());
    assert_eq!(migrate.status.code(), Some(1), "{}", text(&migrate));
    assert!(
        String::from_utf8_lossy(&migrate.stderr).contains("in use by another tollgate server"),
        "{}",
        text(&migrate)
    );

    assert_eq!(file_state(&db), files_before, "the database files changed");
    assert_eq!(reconciliation(), rec_before);
    assert_eq!(account(), account_before);
    // The log went to a file: plain text, no colour codes.
    assert!(
        !first.stderr_text().contains('\x1b'),
        "{}",
        first.stderr_text()
    );
}

/// Sends `n` billed usage events one by one.
fn billed_events(c: &Client, base: &str, username: &str, n: usize) {
    for _ in 0..n {
        let r = usage_event(c, base, username).expect("usage event");
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

fn usage_event(c: &Client, base: &str, username: &str) -> Result<Reply, String> {
    let id = uuid::Uuid::now_v7().to_string();
    let body = json!({"events": [{
        "event_id": id,
        "endpoint_id": "fal-ai/flux/dev",
        "username": username,
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "status_code": 200,
        "output": {"images": [{"width": 1024, "height": 1024}]},
    }]});
    post(c, base, "/v1/usage-events", &body)
}

#[test]
fn demo_refuses_to_start_over_a_demo_database_a_running_server_has_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (first, keys) = Server::start_demo(dir.path(), dir.path().join("demo-1.log"));
    let db = dir.path().join("tollgate-demo.db");
    let c = client();
    let balance = || {
        must(
            send(
                c.get(format!("{}/v1/admin/accounts/demo", first.base)),
                &keys.operator,
            ),
            200,
            "demo account",
        )
        .body
    };
    let before = balance();
    let inode = std::fs::metadata(&db).expect("demo db").ino();

    let second = tollgate(&["serve", "--demo", "--listen", "127.0.0.1:0"], dir.path());
    assert_eq!(second.status.code(), Some(1), "{}", text(&second));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("in use by a running tollgate server"),
        "{}",
        text(&second)
    );
    assert_eq!(std::fs::metadata(&db).expect("demo db").ino(), inode);
    assert_eq!(balance(), before, "the running demo's database changed");

    // Once the first demo has stopped, a new demo starts over.
    drop(first);
    let (again, keys) = Server::start_demo(dir.path(), dir.path().join("demo-2.log"));
    let fresh = must(
        send(
            c.get(format!("{}/v1/admin/accounts/demo", again.base)),
            &keys.operator,
        ),
        200,
        "demo account",
    )
    .body;
    // The same history as the first demo's, on a fresh database: the same balance.
    assert_eq!(
        fresh["balance_nano_usd"], before["balance_nano_usd"],
        "{fresh}"
    );
    let fresh = fresh["balance_nano_usd"].as_i64().expect("balance");
    assert!(fresh < 25_000_000_000, "{fresh}");
}

/// The demo's dashboard link, posted back as its page does, without following redirects: the
/// status, the session cookie it sets (`name=value`) and where it sends the browser.
fn post_link(link: &str) -> (u16, Option<String>, Option<String>) {
    let c = reqwest::blocking::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let resp = c.post(link).send().expect("POST the link");
    let cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("tollgate_session="))
        .and_then(|v| v.split(';').next())
        .map(str::to_string);
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (resp.status().as_u16(), cookie, location)
}

/// Exact USD of a JSON number as tollgate renders it (at most nine decimals, so the shortest
/// rendering of its double is its decimal).
fn usd(v: &Value) -> rust_decimal::Decimal {
    v.as_f64()
        .map(|f| f.to_string())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("not a USD amount: {v}"))
}

#[test]
fn the_demo_prints_a_dashboard_link_that_signs_in_once_over_four_weeks_of_history_that_reconcile() {
    // The history: four weeks of model usage and three days of a serverless app's runners,
    // which add up with the balance the demo prints and the ledger.
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, keys) = Server::start_demo(dir.path(), dir.path().join("demo.log"));
    let base = &server.base;
    assert!(
        keys.dashboard_link
            .starts_with(&format!("{base}/dashboard/link/")),
        "{}",
        keys.dashboard_link
    );
    let c = client();
    let account = must(
        send(
            c.get(format!("{base}/v1/admin/accounts/demo")),
            &keys.operator,
        ),
        200,
        "demo account",
    )
    .body;
    let balance = account["balance_nano_usd"].as_i64().expect("balance");

    // Opening the link shows the page that posts it back, and spends nothing.
    let opened = c.get(&keys.dashboard_link).send().expect("GET the link");
    assert_eq!(opened.status().as_u16(), 200);
    // Posted, it signs in: a session cookie, and the dashboard, whose overview shows the
    // balance.
    let (status, cookie, location) = post_link(&keys.dashboard_link);
    assert_eq!(status, 303);
    assert_eq!(location.as_deref(), Some("/dashboard"));
    let cookie = cookie.expect("a session cookie");
    let page = c
        .get(format!("{base}/dashboard"))
        .header("cookie", &cookie)
        .send()
        .expect("GET /dashboard");
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().expect("the page");
    assert!(
        html.contains(&format!("data-nano-usd=\"{balance}\"")),
        "the overview does not show the balance {balance}:\n{html}"
    );
    // Once: used again, it is refused and signs nobody in.
    let (again, cookie, _) = post_link(&keys.dashboard_link);
    assert_eq!((again, cookie), (410, None));

    // Four weeks of history over several endpoints, none in the last 24 hours.
    let start = (chrono::Utc::now() - chrono::Duration::days(30))
        .format("%Y-%m-%d")
        .to_string();
    let usage = must(
        send(
            c.get(format!(
                "{base}/v1/models/usage?expand=summary,time_series&start={start}"
            )),
            &keys.admin,
        ),
        200,
        "usage over 30 days",
    )
    .body;
    let summary = usage["summary"].as_array().expect("summary");
    let endpoints: std::collections::BTreeSet<&str> = summary
        .iter()
        .map(|r| r["endpoint_id"].as_str().expect("endpoint"))
        .collect();
    assert!(endpoints.len() >= 8, "{endpoints:?}");
    let days = usage["time_series"]
        .as_array()
        .expect("time series")
        .iter()
        .filter(|b| !b["results"].as_array().expect("results").is_empty())
        .count();
    assert_eq!(days, 28, "days with usage");
    // Its serverless app's runner time: two runners a day on three days (one of them surge
    // time), none in the last 24 hours.
    let serverless = must(
        send(
            c.get(format!(
                "{base}/v1/serverless/usage?expand=summary,time_series&start={start}"
            )),
            &keys.admin,
        ),
        200,
        "serverless usage over 30 days",
    )
    .body;
    let lines = serverless["summary"].as_array().expect("summary");
    assert!(
        lines.iter().any(|r| r["is_surge"] == true) && lines.iter().any(|r| r["is_surge"] == false),
        "{serverless}"
    );
    assert!(lines.iter().all(|r| r["app"] == "img-gen"), "{serverless}");
    let runner_days = serverless["time_series"]
        .as_array()
        .expect("time series")
        .iter()
        .filter(|b| !b["results"].as_array().expect("results").is_empty())
        .count();
    assert_eq!(runner_days, 3, "days with runner time: {serverless}");
    let history = must(
        send(
            c.get(format!(
                "{base}/v1/serverless/apps/demo/img-gen/runners/history?start={start}&timeframe=day"
            )),
            &keys.api,
        ),
        200,
        "runner history",
    )
    .body;
    let busiest = history["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|b| b["running"].as_f64().expect("running"))
        .fold(0.0, f64::max);
    assert_eq!(busiest, 2.0, "{history}");

    // What the history billed, models and runners, is what the balance lost from the 25 USD
    // bought, and what the demo printed.
    let billed: rust_decimal::Decimal = summary.iter().map(|r| usd(&r["cost_total"])).sum();
    let runner_time: rust_decimal::Decimal = lines.iter().map(|r| usd(&r["cost_total"])).sum();
    let spent = rust_decimal::Decimal::new(25_000_000_000 - balance, 9);
    assert_eq!(billed + runner_time, spent, "{usage}\n{serverless}");
    assert!(
        billed > rust_decimal::Decimal::ONE && billed < rust_decimal::Decimal::TEN,
        "{billed}"
    );
    assert!(
        runner_time > rust_decimal::Decimal::ONE && runner_time < rust_decimal::Decimal::TEN,
        "{runner_time}"
    );
    let printed = keys
        .printed
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let amount = |before: &str, after: &str| -> rust_decimal::Decimal {
        let end = printed
            .find(after)
            .unwrap_or_else(|| panic!("{after:?} is not printed: {printed}"));
        let start = printed[..end]
            .rfind(before)
            .unwrap_or_else(|| panic!("{before:?} is not printed: {printed}"));
        printed[start + before.len()..end]
            .parse()
            .unwrap_or_else(|e| panic!("{e}: {printed}"))
    };
    assert_eq!(
        amount("billed ", " USD; the last 24 hours"),
        billed,
        "{printed}"
    );
    assert_eq!(
        amount("billed ", " USD of runner time"),
        runner_time,
        "{printed}"
    );
    assert_eq!(
        amount("its balance is ", " USD."),
        rust_decimal::Decimal::new(balance, 9),
        "{printed}"
    );
    let last_day = must(
        send(
            c.get(format!("{base}/v1/models/usage?expand=summary")),
            &keys.admin,
        ),
        200,
        "usage of the last day",
    )
    .body;
    assert_eq!(last_day["summary"], json!([]), "{last_day}");

    let reconciliation = must(
        send(
            c.get(format!("{base}/v1/admin/reconciliation")),
            &keys.operator,
        ),
        200,
        "reconciliation",
    )
    .body;
    assert_eq!(reconciliation["clean"], true, "{reconciliation}");
}

/// What a burst worker had acknowledged: request or event id → cost in nano-USD.
type Acked = Arc<Mutex<Vec<(String, i64)>>>;

/// Fires usage events and full request lifecycles at `base` until `stop` is set or a call
/// fails (the server stopped). Records every call answered 2xx.
fn burst(base: String, username: String, key: String, stop: Arc<AtomicBool>, acked: Acked) {
    let c = client();
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        if i.is_multiple_of(2) {
            let Ok(r) = usage_event(&c, &base, &username) else {
                return;
            };
            if r.status != 200 {
                return;
            }
            let result = &r.body["results"][0];
            let id = result["event_id"]
                .as_str()
                .or_else(|| result["request_id"].as_str())
                .expect("event id in the answer")
                .to_string();
            let cost = result["cost_estimate_nano_usd"].as_i64().expect("cost");
            acked.lock().expect("acked").push((id, cost));
        } else {
            let id = uuid::Uuid::now_v7().to_string();
            let submit =
                json!({"request_id": id, "endpoint_id": "fal-ai/flux/dev", "caller_key": key});
            let ok =
                |r: Result<Reply, String>, status: u16| matches!(r, Ok(r) if r.status == status);
            if !ok(post(&c, &base, "/v1/requests", &submit), 201)
                || !ok(
                    post(&c, &base, &format!("/v1/requests/{id}/start"), &json!({})),
                    200,
                )
            {
                return;
            }
            let done = json!({"status_code": 200, "output": {"images": [{"width": 1920, "height": 1080}]}});
            match post(&c, &base, &format!("/v1/requests/{id}/complete"), &done) {
                Ok(r) if r.status == 200 => {
                    let cost = r.body["cost_estimate_nano_usd"].as_i64().expect("cost");
                    acked.lock().expect("acked").push((id, cost));
                }
                _ => return,
            }
        }
    }
}

fn start_burst(
    base: &str,
    username: &str,
    key: &str,
    threads: usize,
) -> (Arc<AtomicBool>, Acked, Vec<std::thread::JoinHandle<()>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let handles = (0..threads)
        .map(|_| {
            let (base, username, key) = (base.to_string(), username.to_string(), key.to_string());
            let (stop, acked) = (stop.clone(), acked.clone());
            std::thread::spawn(move || burst(base, username, key, stop, acked))
        })
        .collect();
    (stop, acked, handles)
}

fn wait_for_acks(acked: &Acked, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().expect("acked").len() < n {
        assert!(
            Instant::now() < deadline,
            "the burst never reached {n} answers"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every acknowledged id is billed at its acknowledged cost on `base`, and the ledger
/// reconciles.
fn assert_all_billed(c: &Client, base: &str, acked: &[(String, i64)]) {
    for (id, cost) in acked {
        let r = must(
            get(c, base, &format!("/v1/requests/{id}")),
            200,
            "GET request",
        )
        .body;
        assert_eq!(r["status"], "COMPLETED", "{id}: {r}");
        assert_eq!(r["billing"]["cost_estimate_nano_usd"], *cost, "{id}: {r}");
    }
    let rec = must(
        get(c, base, "/v1/admin/reconciliation"),
        200,
        "reconciliation",
    )
    .body;
    assert_eq!(rec["clean"], true, "{rec}");
}

#[test]
fn sigterm_during_a_burst_answers_the_calls_in_flight_commits_them_and_exits_zero() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("drain.db");
    let mut server = Server::start(
        &db,
        dir.path().join("drain-1.log"),
        OP_KEY,
        Some(Path::new(SAMPLE_CATALOG)),
    );
    let c = client();
    let key = setup_account(&c, &server.base, "drain");
    let (stop, acked, handles) = start_burst(&server.base, "drain", &key, 8);
    wait_for_acks(&acked, 300);
    server.terminate();
    let status = server.wait_exit(Duration::from_secs(30));
    stop.store(true, Ordering::SeqCst);
    handles
        .into_iter()
        .for_each(|h| h.join().expect("burst thread"));
    let log = server.stderr_text();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}; log:\n{log}"
    );
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(log.contains("the last batch committed and synced"), "{log}");

    let acked = acked.lock().expect("acked").clone();
    let again = Server::start(&db, dir.path().join("drain-2.log"), OP_KEY, None);
    assert_all_billed(&c, &again.base, &acked);
    eprintln!(
        "sigterm test: {} calls answered before the exit",
        acked.len()
    );
}

#[test]
fn a_backup_taken_during_a_burst_opens_reconciles_and_holds_every_call_answered_before_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("live.db");
    let server = Server::start(
        &db,
        dir.path().join("live.log"),
        OP_KEY,
        Some(Path::new(SAMPLE_CATALOG)),
    );
    let c = client();
    let key = setup_account(&c, &server.base, "backup");
    let (stop, acked, handles) = start_burst(&server.base, "backup", &key, 6);
    wait_for_acks(&acked, 200);
    let before_backup = acked.lock().expect("acked").clone();
    let out = dir.path().join("copy.db");
    let out_arg = out.display().to_string();
    let db_arg = db.display().to_string();
    let backup = tollgate(&["backup", "--db", &db_arg, &out_arg], dir.path());
    // The burst went on during the copy.
    let after = acked.lock().expect("acked").len();
    stop.store(true, Ordering::SeqCst);
    handles
        .into_iter()
        .for_each(|h| h.join().expect("burst thread"));
    assert!(backup.status.success(), "{}", text(&backup));
    assert!(
        String::from_utf8_lossy(&backup.stdout).contains("integrity checked"),
        "{}",
        text(&backup)
    );

    // Never over an existing file; never a PostgreSQL URL.
    let again = tollgate(&["backup", "--db", &db_arg, &out_arg], dir.path());
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{}",
        text(&again)
    );
    let pg = tollgate(
        &["backup", "--db", "postgres://u@127.0.0.1/x", "pg.db"],
        dir.path(),
    );
    assert!(!pg.status.success());
    assert!(
        String::from_utf8_lossy(&pg.stderr).contains("pg_dump"),
        "{}",
        text(&pg)
    );

    // A server on the copy answers, reconciles and has every call answered before the backup.
    let on_copy = Server::start(&out, dir.path().join("copy.log"), OP_KEY, None);
    assert_all_billed(&c, &on_copy.base, &before_backup);
    eprintln!(
        "backup test: {} calls answered before the backup, {after} by its end",
        before_backup.len()
    );
    drop(server);
}

#[test]
fn json_logs_are_one_object_per_line_startup_included() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stderr_path: PathBuf = dir.path().join("json.log");
    let mut child = Command::new(BIN)
        .args(["serve", "--db", "j.db", "--listen", "127.0.0.1:0"])
        .env("TOLLGATE_LOG_FORMAT", "json")
        .env("TOLLGATE_OPERATOR_KEY", OP_KEY)
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).expect("log"))
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first: Value = serde_json::from_str(&lines.next().expect("a line").expect("read"))
        .expect("the listening line is JSON");
    assert_eq!(first["message"], "tollgate listening", "{first}");
    let base = first["address"].as_str().expect("address").to_string();
    let c = client();
    // A failed authentication logs nothing secret, and its line is JSON too.
    let r = send(c.get(format!("{base}/v1/admin/accounts/none")), "bad:key").expect("answer");
    assert_eq!(r.status, 401);
    must(
        get(&c, &base, "/v1/admin/reconciliation"),
        200,
        "reconciliation",
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    let log = std::fs::read_to_string(&stderr_path).expect("log");
    assert!(log.lines().count() >= 3, "{log}");
    for line in log.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    assert!(!log.contains('\x1b'), "{log}");
    for line in lines {
        let line = line.expect("read");
        serde_json::from_str::<Value>(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
}
