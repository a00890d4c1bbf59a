//! Operator commands: thin clients of the admin API, so the CLI can never do what the API
//! would refuse.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;
use tollgate_core::ids::{AccountId, ApiKeyId};

#[derive(Args, Clone)]
pub struct Conn {
    /// The tollgate server.
    #[arg(long, env = "TOLLGATE_URL", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// An operator key, `<key_id>:<key_secret>`.
    #[arg(long, env = "TOLLGATE_OPERATOR_KEY", hide_env_values = true)]
    operator_key: Option<String>,
}

impl Conn {
    fn operator_key(&self) -> anyhow::Result<&str> {
        match self.operator_key.as_deref().map(str::trim) {
            Some(k) if !k.is_empty() => Ok(k),
            _ => bail!(
                "no operator key: set TOLLGATE_OPERATOR_KEY=<key_id>:<key_secret> or pass \
                 --operator-key"
            ),
        }
    }

    fn url(&self, path: &str) -> anyhow::Result<String> {
        let server = self.server.trim_end_matches('/');
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            bail!(
                "--server / TOLLGATE_URL must be a URL such as http://127.0.0.1:8080, not \
                 `{server}`"
            );
        }
        Ok(format!("{server}{path}"))
    }
}

#[derive(Subcommand)]
pub enum AccountCmd {
    /// Create a customer account.
    Create {
        /// The account's username.
        username: String,
        /// `prepaid` (default: credits, holds, locking) or `invoice` (never locked).
        #[arg(long, default_value = "prepaid")]
        billing: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show an account's balance, holds, concurrency and lock state.
    Show {
        /// The account's username.
        username: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List accounts in username order, with their balance and lock state.
    List {
        /// Only accounts whose username starts with this.
        #[arg(long)]
        prefix: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Args)]
pub struct CreditsArgs {
    #[command(subcommand)]
    cmd: CreditsCmd,
}

#[derive(Subcommand)]
enum CreditsCmd {
    /// Add credits: a purchase, idempotent on --purchase-id.
    Add {
        /// The account's username.
        username: String,
        /// Amount in USD, e.g. 25.00.
        amount_usd: String,
        /// The idempotency id of this purchase (default: a new UUID). Repeating a command with
        /// the same id adds nothing.
        #[arg(long)]
        purchase_id: Option<String>,
        /// Free credits (do not raise the concurrency tier).
        #[arg(long)]
        free: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Create a key for a customer account; the secret is printed once.
    Create {
        /// The account's username.
        username: String,
        /// API (inference, pricing) or ADMIN (also usage, billing, keys).
        #[arg(long, default_value = "API")]
        scope: String,
        /// A name for the key, shown in key lists and usage (1 to 255 characters; default
        /// "<SCOPE> key").
        #[arg(long)]
        alias: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Create an operator key; the secret is printed once. It works until it is revoked.
    CreateOperator {
        /// A name for the key, shown in key lists (1 to 255 characters).
        #[arg(long)]
        alias: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List every key of an account (API and ADMIN), or the operator keys, revoked ones
    /// too; never their secrets.
    List {
        /// The account whose keys to list.
        #[arg(
            long,
            required_unless_present = "operator",
            conflicts_with = "operator"
        )]
        account: Option<String>,
        /// List the operator keys.
        #[arg(long)]
        operator: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke a key of any scope (operator keys too): it is refused from then on, for good.
    Revoke {
        /// The key's id (the part before `:`).
        key_id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub enum CatalogCmd {
    /// Apply a catalog file (TOML, see catalog/README.md). Invalid files change nothing.
    ///
    /// Prints the change endpoint by endpoint, and a warning on stderr for every price that
    /// moves by more than 3x either way.
    Apply {
        file: PathBuf,
        /// Show what the file would change on the server, and write nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Check a catalog file offline, exactly as the server would parse and validate it (no
    /// server needed). Names the line and field of the first error; prints a summary when
    /// the file is valid.
    Check { file: PathBuf },
}

fn call(
    conn: &Conn,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let url = conn.url(path)?;
    let client = reqwest::blocking::Client::new();
    let mut req = client
        .request(method, &url)
        .header("Authorization", format!("Key {}", conn.operator_key()?));
    if let Some(b) = body {
        req = req.json(&b);
    }
    send(req, &url)
}

fn send(req: reqwest::blocking::RequestBuilder, url: &str) -> anyhow::Result<Value> {
    let resp = req
        .send()
        .with_context(|| format!("cannot reach tollgate at {url}"))?;
    let status = resp.status();
    let text = resp.text()?;
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if !status.is_success() {
        let msg = value["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        let hint = match status.as_u16() {
            401 | 403 => " (check the operator key: --operator-key or TOLLGATE_OPERATOR_KEY)",
            _ => "",
        };
        bail!("{status}: {msg}{hint}");
    }
    Ok(value)
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).expect("json prints"));
}

pub fn account(cmd: AccountCmd) -> anyhow::Result<()> {
    match cmd {
        AccountCmd::Create {
            username,
            billing,
            conn,
        } => print(&call(
            &conn,
            reqwest::Method::POST,
            "/v1/admin/accounts",
            Some(json!({"username": username, "billing": billing})),
        )?),
        AccountCmd::Show { username, conn } => print(&call(
            &conn,
            reqwest::Method::GET,
            &format!("/v1/admin/accounts/{username}"),
            None,
        )?),
        AccountCmd::List { prefix, conn } => {
            let mut query = vec![("limit", "1000".to_string())];
            if let Some(p) = prefix {
                query.push(("q", p));
            }
            let accounts = every_page(&conn, "/v1/admin/accounts", query, "accounts")?;
            print(&json!({ "accounts": accounts }));
        }
    }
    Ok(())
}

/// Every item of a paged list (`next_cursor`, `has_more`), following its cursor.
fn every_page(
    conn: &Conn,
    path: &str,
    query: Vec<(&str, String)>,
    field: &str,
) -> anyhow::Result<Vec<Value>> {
    let url = conn.url(path)?;
    let client = reqwest::blocking::Client::new();
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut pairs = query.clone();
        if let Some(c) = &cursor {
            pairs.push(("cursor", c.clone()));
        }
        let req = client
            .get(&url)
            .query(&pairs)
            .header("Authorization", format!("Key {}", conn.operator_key()?));
        let page = send(req, &url)?;
        if let Some(list) = page[field].as_array() {
            items.extend(list.iter().cloned());
        }
        match page["next_cursor"].as_str() {
            Some(next) if page["has_more"] == json!(true) => cursor = Some(next.to_string()),
            _ => return Ok(items),
        }
    }
}

pub fn credits(args: CreditsArgs) -> anyhow::Result<()> {
    let CreditsCmd::Add {
        username,
        amount_usd,
        purchase_id,
        free,
        conn,
    } = args.cmd;
    let purchase_id = purchase_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    print(&call(
        &conn,
        reqwest::Method::POST,
        &format!("/v1/admin/accounts/{username}/purchases"),
        Some(json!({
            "purchase_id": purchase_id,
            "amount_usd": amount_usd,
            "kind": if free { "free" } else { "paid" },
        })),
    )?);
    Ok(())
}

pub fn key(cmd: KeyCmd) -> anyhow::Result<()> {
    match cmd {
        KeyCmd::Create {
            username,
            scope,
            alias,
            conn,
        } => {
            let alias = alias.unwrap_or_else(|| format!("{scope} key"));
            print(&call(
                &conn,
                reqwest::Method::POST,
                &format!("/v1/admin/accounts/{username}/keys"),
                Some(json!({"scope": scope, "alias": alias})),
            )?);
        }
        KeyCmd::CreateOperator { alias, conn } => print(&call(
            &conn,
            reqwest::Method::POST,
            "/v1/admin/operator-keys",
            Some(json!({ "alias": alias })),
        )?),
        KeyCmd::List {
            account,
            operator: _,
            conn,
        } => {
            let path = match &account {
                Some(username) => {
                    let username = AccountId::parse(username).context("--account")?;
                    format!("/v1/admin/accounts/{username}/keys")
                }
                None => "/v1/admin/operator-keys".to_string(),
            };
            let keys = every_page(&conn, &path, vec![("limit", "1000".to_string())], "keys")?;
            print(&json!({ "keys": keys }));
        }
        KeyCmd::Revoke { key_id, conn } => {
            let key_id = ApiKeyId::parse(&key_id).context("KEY_ID")?;
            call(
                &conn,
                reqwest::Method::DELETE,
                &format!("/v1/admin/keys/{key_id}"),
                None,
            )?;
            print(&json!({ "key_id": key_id, "revoked": true }));
        }
    }
    Ok(())
}

pub fn catalog(cmd: CatalogCmd) -> anyhow::Result<()> {
    let (file, dry_run, conn) = match cmd {
        CatalogCmd::Check { file } => return check_catalog(&file),
        CatalogCmd::Apply {
            file,
            dry_run,
            conn,
        } => (file, dry_run, conn),
    };
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let path = if dry_run {
        "/v1/admin/catalog?dry_run=true"
    } else {
        "/v1/admin/catalog"
    };
    let url = conn.url(path)?;
    let req = reqwest::blocking::Client::new()
        .put(&url)
        .header("Authorization", format!("Key {}", conn.operator_key()?))
        .header("Content-Type", "application/toml")
        .body(text);
    let answer = send(req, &url)?;
    print(&answer);
    for w in answer["changes"]["warnings"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let line = w["line"]
            .as_u64()
            .map(|l| format!("line {l}, "))
            .unwrap_or_default();
        eprintln!(
            "warning: {}: {line}field `{}`: {}",
            file.display(),
            w["field"].as_str().unwrap_or_default(),
            w["message"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

/// `tollgate catalog check FILE`: the server's parser and validation, offline.
fn check_catalog(file: &std::path::Path) -> anyhow::Result<()> {
    use tollgate_core::catalog::document;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let doc = document::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let mut units: std::collections::BTreeMap<String, usize> = Default::default();
    for e in &doc.endpoints {
        *units.entry(e.rule.unit_label()).or_default() += 1;
    }
    let units: Vec<String> = units.iter().map(|(u, n)| format!("{n} {u}")).collect();
    println!("{}: valid", file.display());
    println!(
        "  endpoints:      {} ({})",
        doc.endpoints.len(),
        units.join(", ")
    );
    println!("  machine types:  {}", doc.machines.len());
    println!("  prices read on: {}", doc.prices_read_on);
    println!(
        "  effective from: {}",
        match doc.effective_from {
            Some(t) => chrono::DateTime::from_timestamp_millis(t.0)
                .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default(),
            None => "when applied".into(),
        }
    );
    println!(
        "  concurrency:    {}",
        match &doc.concurrency {
            Some(t) => format!("{} tiers", t.rows().len()),
            None => "unchanged (not in the file)".into(),
        }
    );
    Ok(())
}
