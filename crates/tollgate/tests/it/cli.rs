//! The operator commands as a user runs them: a real `tollgate serve` (operator key from
//! TOLLGATE_OPERATOR_KEY, no --catalog), then `tollgate catalog|account|credits|key ...` run as
//! subprocesses with TOLLGATE_URL and TOLLGATE_OPERATOR_KEY, checking exit codes, the JSON they
//! print and the errors they explain. Also `--help`, and `migrate`.

use crate::common::{client, Server, BIN, SAMPLE_CATALOG};
use serde_json::Value;
use std::process::{Command, Output};

const OP_KEY: &str = "cli-op:s3cret-operator";

/// What a finished command printed.
#[derive(Debug)]
struct Run {
    args: Vec<String>,
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn from(args: &[&str], out: Output) -> Run {
        Run {
            args: args.iter().map(|a| a.to_string()).collect(),
            ok: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Exit 0 and a JSON document on stdout.
    fn json(&self) -> Value {
        assert!(self.ok, "`tollgate {:?}` failed: {self:#?}", self.args);
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "`tollgate {:?}` printed no JSON ({e}): {self:#?}",
                self.args
            )
        })
    }

    /// A non-zero exit with one `Error: ...` explanation on stderr and nothing on stdout;
    /// returns the explanation.
    fn error(&self) -> &str {
        assert!(
            !self.ok && self.code.is_some_and(|c| c != 0),
            "`tollgate {:?}` should have failed: {self:#?}",
            self.args
        );
        assert!(
            self.stdout.trim().is_empty(),
            "a failed command printed a result: {self:#?}"
        );
        assert!(
            self.stderr.starts_with("Error: "),
            "no `Error: ` explanation: {self:#?}"
        );
        &self.stderr
    }
}

/// Runs `tollgate <args>` as an operator would, with TOLLGATE_URL and TOLLGATE_OPERATOR_KEY.
/// Backtrace variables are removed so stderr is what a user normally sees.
fn tollgate_with(args: &[&str], env: &[(&str, Option<&str>)]) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for var in [
        "RUST_BACKTRACE",
        "RUST_LIB_BACKTRACE",
        "TOLLGATE_URL",
        "TOLLGATE_OPERATOR_KEY",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let out = cmd.output().expect("run tollgate");
    Run::from(args, out)
}

fn tollgate(base: &str, args: &[&str]) -> Run {
    tollgate_with(
        args,
        &[
            ("TOLLGATE_URL", Some(base)),
            ("TOLLGATE_OPERATOR_KEY", Some(OP_KEY)),
        ],
    )
}

/// Asserts that `text` contains every one of `needles`.
fn mentions(text: &str, needles: &[&str]) {
    for n in needles {
        assert!(text.contains(n), "expected `{n}` in:\n{text}");
    }
}

/// The sample catalog with one line changed, for a broken copy.
struct Broken {
    text: String,
    /// 1-based line the error must name.
    line: usize,
    /// The field path the error must name.
    field: String,
}

/// Breaks `fal-ai/flux/dev`'s `unit_price = "0.025"` with `replacement`, and also makes a
/// *valid* change elsewhere (nano-banana's price), so a partly applied document would show as a
/// new price version. `point_at_header`: semantic errors name the endpoint's `[[endpoint]]`
/// line, type errors the offending value's line (catalog/README.md).
fn broken_sample(sample: &str, replacement: &str, point_at_header: bool) -> Broken {
    let mut lines: Vec<String> = sample.lines().map(str::to_string).collect();
    let id = lines
        .iter()
        .position(|l| l.trim() == r#"id = "fal-ai/flux/dev""#)
        .expect("fal-ai/flux/dev in the sample");
    let header = (0..id)
        .rev()
        .find(|&i| lines[i].trim() == "[[endpoint]]")
        .expect("its [[endpoint]] header");
    let index = lines[..header]
        .iter()
        .filter(|l| l.trim() == "[[endpoint]]")
        .count();
    let price = (id..lines.len())
        .find(|&i| lines[i].contains(r#"unit_price = "0.025""#))
        .expect("flux/dev's price line");
    lines[price] = lines[price].replace(r#"unit_price = "0.025""#, replacement);
    let banana = lines
        .iter()
        .position(|l| l.contains(r#"unit_price = "0.039""#))
        .expect("nano-banana's price line");
    lines[banana] = lines[banana].replace(r#""0.039""#, r#""0.045""#);
    Broken {
        text: lines.join("\n") + "\n",
        line: 1 + if point_at_header { header } else { price },
        field: format!("endpoint[{index}].price.unit_price"),
    }
}

#[test]
fn operator_commands_end_to_end() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(
        &dir.path().join("cli.db"),
        dir.path().join("server-stderr.log"),
        OP_KEY,
        None,
    );
    let base = server.base.clone();

    // ---- catalog apply ------------------------------------------------------------------
    let sample = std::fs::read_to_string(SAMPLE_CATALOG).expect("read the sample catalog");
    let endpoints = sample
        .lines()
        .filter(|l| l.trim() == "[[endpoint]]")
        .count();
    assert_eq!(endpoints, 34, "catalog/README.md promises 34 endpoints");
    let applied = tollgate(&base, &["catalog", "apply", SAMPLE_CATALOG]).json();
    assert_eq!(applied["endpoints"], endpoints, "{applied}");
    assert_eq!(applied["price_versions_created"], endpoints, "{applied}");

    for (name, broken) in [
        (
            "negative.toml",
            broken_sample(&sample, r#"unit_price = "-0.025""#, true),
        ),
        (
            "float.toml",
            broken_sample(&sample, "unit_price = 0.025", false),
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, &broken.text).expect("write the broken catalog");
        let run = tollgate(&base, &["catalog", "apply", path.to_str().expect("utf-8")]);
        let err = run.error();
        mentions(
            err,
            &[
                "400",
                &format!("line {}", broken.line),
                &format!("`{}`", broken.field),
            ],
        );
        if name == "negative.toml" {
            mentions(err, &["must not be negative"]);
        } else {
            mentions(err, &["float", r#""0.025""#]);
        }
    }
    // A preview of a tenfold price: the change is answered and warned of, nothing written.
    let tenfold = sample.replacen(r#"unit_price = "0.025""#, r#"unit_price = "0.25""#, 1);
    let path = dir.path().join("tenfold.toml");
    std::fs::write(&path, &tenfold).expect("write the changed catalog");
    let run = tollgate(
        &base,
        &[
            "catalog",
            "apply",
            "--dry-run",
            path.to_str().expect("utf-8"),
        ],
    );
    let preview = run.json();
    assert_eq!(preview["dry_run"], true, "{preview}");
    assert_eq!(preview["price_versions_created"], 1, "{preview}");
    let change = &preview["changes"]["endpoints"][0];
    assert_eq!(change["endpoint_id"], "fal-ai/flux/dev", "{preview}");
    assert_eq!(change["price"]["from_unit_price"], "0.025", "{preview}");
    assert_eq!(change["price"]["to_unit_price"], "0.25", "{preview}");
    mentions(
        &run.stderr,
        &[
            "warning:",
            "tenfold.toml",
            "fal-ai/flux/dev",
            "more than 3x",
        ],
    );
    // Nothing of either broken document, nor of the preview, was applied: the sample is
    // still exactly in force.
    let again = tollgate(&base, &["catalog", "apply", SAMPLE_CATALOG]).json();
    assert_eq!(again["endpoints"], endpoints, "{again}");
    assert_eq!(
        again["price_versions_created"], 0,
        "a refused catalog changed prices: {again}"
    );

    // ---- account create -----------------------------------------------------------------
    let created = tollgate(&base, &["account", "create", "acme"]).json();
    assert_eq!(created["username"], "acme", "{created}");
    assert_eq!(created["billing"], "prepaid", "{created}");
    let dup = tollgate(&base, &["account", "create", "acme"]);
    mentions(dup.error(), &["409", "acme", "already exists"]);

    // ---- credits add --------------------------------------------------------------------
    let add = ["credits", "add", "acme", "25.00", "--purchase-id", "inv-1"];
    let bought = tollgate(&base, &add).json();
    assert_eq!(bought["purchase_id"], "inv-1", "{bought}");
    assert_eq!(bought["amount_nano_usd"], 25_000_000_000i64, "{bought}");
    assert_eq!(bought["balance_nano_usd"], 25_000_000_000i64, "{bought}");
    assert_eq!(bought["concurrency_limit"], 4, "{bought}");
    assert_eq!(bought["kind"], "paid", "{bought}");
    // The same purchase id again: same answer, nothing added.
    let repeat = tollgate(&base, &add).json();
    assert_eq!(
        repeat, bought,
        "a repeated purchase must replay the first answer"
    );
    // The same id with another amount is refused, not silently ignored.
    let clash = tollgate(
        &base,
        &["credits", "add", "acme", "30.00", "--purchase-id", "inv-1"],
    );
    mentions(clash.error(), &["409", "inv-1", "already used"]);
    let bad_amount = tollgate(&base, &["credits", "add", "acme", "1.5x"]);
    mentions(bad_amount.error(), &["400", "amount_usd", "`1.5x`"]);
    let nobody = tollgate(&base, &["credits", "add", "nobody", "5.00"]);
    mentions(nobody.error(), &["404", "nobody"]);

    // ---- key create, and the printed key works -------------------------------------------
    let key = tollgate(
        &base,
        &[
            "key", "create", "acme", "--scope", "ADMIN", "--alias", "backend",
        ],
    )
    .json();
    let key_id = key["key_id"].as_str().expect("key_id");
    let secret = key["key_secret"].as_str().expect("key_secret");
    assert!(!key_id.is_empty() && !secret.is_empty(), "{key}");
    assert_eq!(key["key"], format!("{key_id}:{secret}"), "{key}");
    assert_eq!(key["scope"], "ADMIN", "{key}");
    assert_eq!(key["alias"], "backend", "{key}");
    let customer_key = key["key"].as_str().expect("key").to_string();
    let resp = client()
        .get(format!("{base}/v1/account/billing?expand=credits"))
        .header("Authorization", format!("Key {customer_key}"))
        .send()
        .expect("GET billing");
    assert_eq!(resp.status().as_u16(), 200);
    let billing: Value = resp.json().expect("billing JSON");
    assert_eq!(billing["username"], "acme", "{billing}");
    // A JSON number in USD (fal's schema); compared as an exact decimal.
    let balance = &billing["credits"]["current_balance"];
    assert!(balance.is_number(), "{billing}");
    assert_eq!(
        rust_decimal::Decimal::from_str_exact(&balance.to_string()).ok(),
        Some(rust_decimal::Decimal::from(25)),
        "{billing}"
    );
    assert_eq!(billing["credits"]["currency"], "USD", "{billing}");
    assert_eq!(
        billing["credits"]["current_balance_nano_usd"], 25_000_000_000i64,
        "{billing}"
    );
    let bad_scope = tollgate(&base, &["key", "create", "acme", "--scope", "ROOT"]);
    mentions(bad_scope.error(), &["400", "`ROOT`", "API", "ADMIN"]);

    // ---- account show -------------------------------------------------------------------
    let shown = tollgate(&base, &["account", "show", "acme"]).json();
    assert_eq!(shown["username"], "acme", "{shown}");
    assert_eq!(shown["balance_nano_usd"], 25_000_000_000i64, "{shown}");
    assert_eq!(shown["held_nano_usd"], 0, "{shown}");
    assert_eq!(shown["locked"], false, "{shown}");
    assert_eq!(shown["lock_reason"], Value::Null, "{shown}");
    assert_eq!(shown["concurrency_limit"], 4, "{shown}");
    // The terms show once, under `terms`.
    assert_eq!(
        shown["terms"]["in_force"]["concurrency_limit"],
        Value::Null,
        "{shown}"
    );
    for repeated in [
        "concurrency_override",
        "discounts",
        "lock_threshold_nano_usd",
    ] {
        assert!(shown.get(repeated).is_none(), "{repeated}: {shown}");
    }
    assert_eq!(
        shown["paid_lifetime_nano_usd"], 25_000_000_000i64,
        "{shown}"
    );
    let missing = tollgate(&base, &["account", "show", "nobody"]);
    mentions(missing.error(), &["404", "nobody"]);

    // ---- operator key and server errors -------------------------------------------------
    let wrong_secret = format!("{}:not-the-secret", OP_KEY.split(':').next().expect("id"));
    for bad_key in [wrong_secret.as_str(), "unknown-op:secret"] {
        let run = tollgate_with(
            &["account", "show", "acme"],
            &[
                ("TOLLGATE_URL", Some(&base)),
                ("TOLLGATE_OPERATOR_KEY", Some(bad_key)),
            ],
        );
        mentions(run.error(), &["401", "TOLLGATE_OPERATOR_KEY"]);
    }
    // The flag overrides the environment.
    let flag = tollgate(
        &base,
        &["account", "show", "acme", "--operator-key", &wrong_secret],
    );
    mentions(flag.error(), &["401"]);
    // A customer key is not an operator key.
    let customer = tollgate_with(
        &["account", "show", "acme"],
        &[
            ("TOLLGATE_URL", Some(&base)),
            ("TOLLGATE_OPERATOR_KEY", Some(&customer_key)),
        ],
    );
    mentions(customer.error(), &["403", "TOLLGATE_OPERATOR_KEY"]);
    let no_key = tollgate_with(
        &["account", "show", "acme"],
        &[
            ("TOLLGATE_URL", Some(&base)),
            ("TOLLGATE_OPERATOR_KEY", None),
        ],
    );
    mentions(
        no_key.error(),
        &["no operator key", "TOLLGATE_OPERATOR_KEY"],
    );

    // A port nothing listens on: bind one, then release it.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let unreachable = format!("http://127.0.0.1:{closed}");
    let run = tollgate(
        &base,
        &["account", "show", "acme", "--server", &unreachable],
    );
    mentions(run.error(), &["cannot reach", &unreachable]);
    let no_scheme = tollgate(
        &base,
        &["account", "show", "acme", "--server", "127.0.0.1:8080"],
    );
    mentions(no_scheme.error(), &["http://", "`127.0.0.1:8080`"]);

    // None of the failed commands above changed the account.
    let after = tollgate(&base, &["account", "show", "acme"]).json();
    assert_eq!(after["balance_nano_usd"], 25_000_000_000i64, "{after}");
    assert_eq!(
        after["paid_lifetime_nano_usd"], 25_000_000_000i64,
        "{after}"
    );

    let server_log = server.stderr_text();
    assert!(
        !server_log.contains("panicked"),
        "the server panicked:\n{server_log}"
    );
}

#[test]
fn help_describes_every_command_and_its_options() {
    let cases: [(&[&str], &[&str]); 10] = [
        (
            &["--help"],
            &[
                "serve", "config", "backup", "migrate", "account", "credits", "key", "catalog",
                "bench",
            ],
        ),
        (
            &["serve", "--help"],
            &[
                "--demo",
                "--db",
                "--listen",
                "--catalog",
                "--sweep-interval-ms",
                "TOLLGATE_OPERATOR_KEY",
                "--config",
                "TOLLGATE_CONFIG",
                "--log-format",
                "--public-url",
                "--drain-timeout-s",
                "--header-timeout-s",
                "--idle-timeout-s",
                "--request-timeout-s",
                "--max-connections",
                "--invoices-prefix",
                "TOLLGATE_INVOICES_PREFIX",
                "SIGTERM",
            ],
        ),
        (&["config", "check", "--help"], &["<FILE>", "line", "key"]),
        (
            &["backup", "--help"],
            &["--db", "<OUT>", "pg_dump", "restore"],
        ),
        (
            &["credits", "add", "--help"],
            &[
                "<USERNAME>",
                "<AMOUNT_USD>",
                "--purchase-id",
                "--free",
                "--server",
                "--operator-key",
                "TOLLGATE_URL",
                "TOLLGATE_OPERATOR_KEY",
            ],
        ),
        (&["bench", "--help"], &["--quick", "--json", "--seconds"]),
        (
            &["account", "create", "--help"],
            &["<USERNAME>", "--billing"],
        ),
        (
            &["key", "create", "--help"],
            &["--scope", "--alias", "ADMIN"],
        ),
        (&["catalog", "apply", "--help"], &["<FILE>", "--server"]),
        (&["migrate", "--help"], &["--db"]),
    ];
    for (args, needles) in cases {
        let run = tollgate_with(args, &[]);
        assert!(run.ok, "`tollgate {args:?}` failed: {run:#?}");
        mentions(&run.stdout, needles);
    }
    // A mistyped command is refused with usage, not run.
    let typo = tollgate_with(&["acount", "show", "acme"], &[]);
    assert_eq!(typo.code, Some(2), "{typo:#?}");
    mentions(&typo.stderr, &["acount", "Usage"]);
}

#[test]
fn migrate_creates_the_schema_and_prints_its_version() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("m.db");
    let db_arg = db.to_str().expect("utf-8");
    let first = tollgate_with(&["migrate", "--db", db_arg], &[]);
    assert!(first.ok, "{first:#?}");
    assert!(db.exists(), "migrate did not create {}", db.display());
    let line = first.stdout.trim();
    let version = line
        .strip_prefix(&format!("{db_arg}: schema at version "))
        .unwrap_or_else(|| panic!("unexpected output: {line}"));
    let version: u32 = version.parse().expect("a numeric schema version");
    assert!(version >= 1, "{line}");
    // Running it again is a no-op at the same version.
    let second = tollgate_with(&["migrate", "--db", db_arg], &[]);
    assert!(second.ok, "{second:#?}");
    assert_eq!(second.stdout.trim(), line);
    // And a server runs on the migrated file.
    let server = Server::start(&db, dir.path().join("stderr.log"), OP_KEY, None);
    let created = tollgate(&server.base, &["account", "create", "after-migrate"]).json();
    assert_eq!(created["username"], "after-migrate", "{created}");
}

/// `bench` refuses bad input with a word on what is wrong, and writes no figures.
#[test]
fn bench_refuses_bad_input_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("figures.json");
    let json_arg = json.to_str().expect("utf-8");

    // Where the figures would go is checked before any row runs. (Every call here names no
    // row with --only, so that a check that failed to refuse would still measure nothing.)
    let missing = dir.path().join("no-such-folder").join("figures.json");
    let run = tollgate_with(
        &[
            "bench",
            "--only",
            "no-such-row",
            "--json",
            missing.to_str().expect("utf-8"),
        ],
        &[],
    );
    mentions(run.error(), &["--json", "no-such-folder", "does not exist"]);

    // A text of --only that names no row: no row runs, nothing is written, and the error
    // lists the rows there are.
    let typo = tollgate_with(&["bench", "--only", "no-such-row", "--json", json_arg], &[]);
    assert_eq!(typo.code, Some(1), "{typo:#?}");
    mentions(
        &typo.stderr,
        &[
            "Error: --only 'no-such-row'",
            "disk.fdatasync.one_record",
            "settle.usage_events.http",
            "settle.adjustments.inprocess",
            "admission.start.inprocess.rate_1000",
            "admission.start.inprocess.while_closing",
            "invoices.close_month.inprocess",
            "gateway.latency.queue",
            "gateway.queue.throughput",
            "gateway.queue.retry_once",
        ],
    );
    assert!(typo.stdout.trim().is_empty(), "{typo:#?}");
    assert!(!json.exists(), "figures were written: {typo:#?}");

    // A row's duration must be a positive number of seconds.
    for bad in ["0", "-1", "NaN", "soon"] {
        let seconds = format!("--seconds={bad}");
        let run = tollgate_with(
            &[
                "bench",
                &seconds,
                "--only",
                "no-such-row",
                "--json",
                json_arg,
            ],
            &[],
        );
        assert_eq!(run.code, Some(2), "{run:#?}");
        mentions(&run.stderr, &["--seconds", "positive number of seconds"]);
        assert!(!json.exists(), "figures were written: {run:#?}");
    }
}

/// `tollgate catalog check FILE` needs no server: it parses and validates as the server does,
/// prints a summary of a valid file, and names the line and field of an invalid one.
#[test]
fn catalog_check_validates_offline() {
    // No TOLLGATE_URL, no operator key: nothing is contacted.
    let check = |file: &str| tollgate_with(&["catalog", "check", file], &[]);
    let run = check(SAMPLE_CATALOG);
    assert!(run.ok, "the sample is valid: {run:#?}");
    mentions(
        &run.stdout,
        &[
            "valid",
            "endpoints:      34",
            "machine types:  12",
            "2026-09-15",
        ],
    );

    let sample = std::fs::read_to_string(SAMPLE_CATALOG).expect("read the sample catalog");
    let dir = tempfile::tempdir().expect("temp dir");
    for (replacement, at_header) in [
        (r#"unit_price = "-0.025""#, true),
        (r#"unit_price = 0.025"#, false),
    ] {
        let broken = broken_sample(&sample, replacement, at_header);
        let path = dir.path().join("broken.toml");
        std::fs::write(&path, &broken.text).expect("write the broken catalog");
        let run = check(path.to_str().expect("utf-8"));
        let line = format!("line {}", broken.line);
        mentions(run.error(), &[&line, &broken.field, "broken.toml"]);
    }
    // A catalog's own rules are checked too: compute seconds need a machine.
    let text = sample.replacen(
        "hold_units = \"4\"\nmachine_type = \"GPU-H100\"\nmissing_units",
        "hold_units = \"4\"\nmissing_units",
        1,
    );
    assert_ne!(text, sample, "the sample has a compute_seconds example");
    let path = dir.path().join("no-machine.toml");
    std::fs::write(&path, &text).expect("write");
    mentions(
        check(path.to_str().expect("utf-8")).error(),
        &["missing_units", "machine_type", "line "],
    );
    let run = check("/nonexistent/catalog.toml");
    mentions(run.error(), &["cannot read", "/nonexistent/catalog.toml"]);
}

#[test]
fn key_and_account_lists_revocation_and_operator_keys_end_to_end() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(
        &dir.path().join("keys.db"),
        dir.path().join("server-stderr.log"),
        OP_KEY,
        None,
    );
    let base = server.base.clone();
    for name in ["acme", "acme-eu", "beta"] {
        tollgate(&base, &["account", "create", name]).json();
    }
    tollgate(&base, &["credits", "add", "acme", "5.00"]).json();
    let admin = tollgate(&base, &["key", "create", "acme", "--scope", "ADMIN"]).json();
    let api = tollgate(&base, &["key", "create", "acme"]).json();
    let admin_id = admin["key_id"].as_str().unwrap();

    // Accounts, all of them and by prefix (more than one page is followed: see the API tests).
    let all = tollgate(&base, &["account", "list"]).json();
    let names: Vec<&str> = all["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme", "acme-eu", "beta"]);
    assert_eq!(all["accounts"][0]["balance_nano_usd"], 5_000_000_000_i64);
    assert_eq!(all["accounts"][2]["locked"], true);
    assert_eq!(all["accounts"][2]["lock_reason"], "exhausted_balance");
    let some = tollgate(&base, &["account", "list", "--prefix", "acme-"]).json();
    assert_eq!(some["accounts"].as_array().unwrap().len(), 1, "{some}");
    assert_eq!(some["accounts"][0]["username"], "acme-eu");

    // An operator key, created and used by the CLI.
    let made = tollgate(&base, &["key", "create-operator", "--alias", "back office"]).json();
    let made_key = made["key"].as_str().unwrap();
    assert_eq!(made["scope"], "OPERATOR");
    let by_new = tollgate_with(
        &["account", "show", "acme"],
        &[
            ("TOLLGATE_URL", Some(&base)),
            ("TOLLGATE_OPERATOR_KEY", Some(made_key)),
        ],
    );
    assert_eq!(by_new.json()["username"], "acme");
    let ops = tollgate(&base, &["key", "list", "--operator"]).json();
    let op_ids: Vec<&str> = ops["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_id"].as_str().unwrap())
        .collect();
    assert_eq!(op_ids, ["cli-op", made["key_id"].as_str().unwrap()]);

    // Lists never print a secret.
    let listed = tollgate(&base, &["key", "list", "--account", "acme"]);
    for secret in [
        &admin["key_secret"],
        &api["key_secret"],
        &made["key_secret"],
    ] {
        assert!(!listed.stdout.contains(secret.as_str().unwrap()));
        assert!(!ops.to_string().contains(secret.as_str().unwrap()));
    }
    let keys = listed.json();
    let scopes: Vec<(&str, &str)> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["scope"].as_str().unwrap(), k["state"].as_str().unwrap()))
        .collect();
    assert_eq!(scopes, [("ADMIN", "active"), ("API", "active")]);

    // Revoked: the ADMIN key stops working, and the operator key the CLI made too.
    let revoked = tollgate(&base, &["key", "revoke", admin_id]).json();
    assert_eq!(
        revoked,
        serde_json::json!({ "key_id": admin_id, "revoked": true })
    );
    let billing = client()
        .get(format!("{base}/v1/account/billing"))
        .header(
            "Authorization",
            format!("Key {}", admin["key"].as_str().unwrap()),
        )
        .send()
        .expect("GET");
    assert_eq!(billing.status().as_u16(), 401);
    tollgate(&base, &["key", "revoke", made["key_id"].as_str().unwrap()]).json();
    let by_revoked = tollgate_with(
        &["account", "show", "acme"],
        &[
            ("TOLLGATE_URL", Some(&base)),
            ("TOLLGATE_OPERATOR_KEY", Some(made_key)),
        ],
    );
    mentions(by_revoked.error(), &["401", "revoked"]);
    let keys = tollgate(&base, &["key", "list", "--account", "acme"]).json();
    assert_eq!(keys["keys"][0]["state"], "revoked");
    assert!(keys["keys"][0]["revoked_at"].is_string());

    // Mistakes are explained and change nothing.
    mentions(
        tollgate(&base, &["key", "revoke", "no-such-key"]).error(),
        &["404", "no-such-key"],
    );
    mentions(
        tollgate(&base, &["key", "revoke", "bad/id"]).error(),
        &["KEY_ID", "key_id"],
    );
    mentions(
        tollgate(&base, &["key", "list", "--account", "nobody"]).error(),
        &["404", "nobody"],
    );
    let neither = tollgate(&base, &["key", "list"]);
    assert_eq!(neither.code, Some(2), "{neither:#?}");
    mentions(&neither.stderr, &["--account", "--operator"]);
    let both = tollgate(&base, &["key", "list", "--operator", "--account", "acme"]);
    assert_eq!(both.code, Some(2), "{both:#?}");
    assert_eq!(
        tollgate(&base, &["key", "list", "--operator"]).json()["keys"][0]["state"],
        "active",
        "the server's own operator key is untouched"
    );
}
