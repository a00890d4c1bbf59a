//! `tollgate serve`: open the store, start the engine and the hold-expiry sweeper, serve HTTP.

use anyhow::{bail, Context};
use clap::Args;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tollgate_api::auth::mint_key;
use tollgate_api::AppState;
use tollgate_core::catalog::document;
use tollgate_core::ids::{AccountId, PurchaseId};
use tollgate_core::machine::Op;
use tollgate_core::Nanos;
use tollgate_engine::{system_clock, AdminCmd, Engine};
use tollgate_store::{BillingMode, Scope};

pub const DEFAULT_DB: &str = "tollgate.db";
pub const DEMO_DB: &str = "tollgate-demo.db";
/// The sample catalog shipped with tollgate (see catalog/README.md).
pub const SAMPLE_CATALOG: &str = include_str!("../../../catalog/sample.toml");

#[derive(Args)]
pub struct ServeArgs {
    /// The database: a SQLite file path (created if missing), or a PostgreSQL URL
    /// (postgres://user:password@host:5432/dbname) shared by several tollgate servers.
    /// Default: tollgate.db, or tollgate-demo.db with --demo.
    #[arg(long)]
    db: Option<String>,
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Start a demo: a fresh database with the sample catalog, an operator key and a demo
    /// account with credits and keys, and print commands to try.
    #[arg(long)]
    demo: bool,
    /// Apply this catalog file at start (prices that changed become new versions).
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// How often expired holds are voided, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    sweep_interval_ms: u64,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(args))
}

fn remove_db(path: &Path) -> anyhow::Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", path.display()));
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
        }
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let db = match (&args.db, args.demo) {
        (Some(p), true) if tollgate_store::postgres::is_url(p) => bail!(
            "--demo starts on a fresh embedded database; leave --db out to use {DEMO_DB} \
             (recreated at every demo start)"
        ),
        (Some(p), true) if Path::new(p).exists() => bail!(
            "--demo starts on a fresh database, and {p} already exists; pick another --db or \
             leave --db out to use {DEMO_DB} (recreated at every demo start)"
        ),
        (Some(p), _) => p.clone(),
        (None, true) => {
            remove_db(Path::new(DEMO_DB))?;
            DEMO_DB.to_string()
        }
        (None, false) => DEFAULT_DB.to_string(),
    };
    // Off the async runtime: the PostgreSQL driver blocks on a runtime of its own.
    let store = tokio::task::spawn_blocking({
        let db = db.clone();
        move || tollgate_store::open(&db)
    })
    .await?
    .with_context(|| format!("cannot open {db}"))?;
    let db = store.describe();
    let engine = Engine::start(store, system_clock())?;

    if let Some(path) = &args.catalog {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        apply_catalog(&engine, &text, &path.display().to_string()).await?;
    }
    let operator_key = match std::env::var("TOLLGATE_OPERATOR_KEY") {
        Ok(k) if !k.trim().is_empty() => {
            // Operator keys live in the database: a new id is created, a known one is used as
            // it is, and a revoked one stays revoked (the server starts, and says so).
            use tollgate_api::auth::{register_operator_key, OperatorKeyAtStart};
            let key = k.trim();
            let key_id = key.split_once(':').map_or(key, |(id, _)| id);
            match register_operator_key(&engine, key)
                .await
                .map_err(|e| anyhow::anyhow!("TOLLGATE_OPERATOR_KEY: {e}"))?
            {
                OperatorKeyAtStart::Created => tracing::info!(
                    key_id,
                    "TOLLGATE_OPERATOR_KEY: created operator key {key_id}; it works until it \
                     is revoked, also once it leaves the environment"
                ),
                OperatorKeyAtStart::Known => tracing::info!(
                    key_id,
                    "TOLLGATE_OPERATOR_KEY: operator key {key_id} is known; used as it is"
                ),
                OperatorKeyAtStart::Revoked { revoked_at } => tracing::warn!(
                    key_id,
                    revoked_at = %tollgate_api::wire::rfc3339(revoked_at),
                    "TOLLGATE_OPERATOR_KEY: operator key {key_id} was revoked and stays \
                     revoked: calls with it are refused (401); operator keys still live in {db} \
                     work, or start with a new key id"
                ),
            }
            Some(key.to_string())
        }
        _ if args.demo => {
            let key = mint_key(None, Scope::Operator, "demo operator".into(), engine.now());
            engine
                .admin(AdminCmd::InsertKey(key.record.clone()))
                .await?;
            Some(key.key())
        }
        _ => {
            tracing::warn!(
                "TOLLGATE_OPERATOR_KEY is not set: operator keys already in {} still work, \
                 but no new one is registered",
                db
            );
            None
        }
    };

    let demo = if args.demo {
        apply_catalog(&engine, SAMPLE_CATALOG, "the sample catalog").await?;
        Some(create_demo_account(&engine).await?)
    } else {
        if engine.catalog().endpoints.is_empty() {
            tracing::warn!(
                "the catalog is empty: apply one with `tollgate catalog apply catalog/sample.toml` \
                 or start with --catalog FILE"
            );
        }
        None
    };

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let sweeper = tollgate_api::spawn_sweeper(
        engine.clone(),
        Duration::from_millis(args.sweep_interval_ms.max(10)),
    );
    println!("tollgate listening on http://{addr} (database {db})");
    if let (Some(demo), Some(op)) = (&demo, &operator_key) {
        print_demo(addr, op, demo);
    }
    let app = tollgate_api::router(AppState { engine });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await?;
    sweeper.abort();
    Ok(())
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: finishing requests in flight");
}

async fn apply_catalog(engine: &Engine, text: &str, name: &str) -> anyhow::Result<()> {
    let doc = document::parse(text).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let reply = engine.admin(AdminCmd::ApplyCatalog(Box::new(doc))).await?;
    tracing::info!(?reply, "applied {name}");
    Ok(())
}

struct Demo {
    admin_key: String,
    api_key: String,
}

async fn create_demo_account(engine: &Engine) -> anyhow::Result<Demo> {
    let username = AccountId::parse("demo").expect("valid");
    engine
        .admin(AdminCmd::CreateAccount {
            username: username.clone(),
            billing: BillingMode::Prepaid,
        })
        .await?;
    engine
        .execute(Op::Purchase {
            account: username.clone(),
            purchase_id: PurchaseId::parse("demo-welcome-credits").expect("valid"),
            amount: Nanos::parse_usd("25.00").expect("valid"),
            paid: true,
            expires_at: None,
        })
        .await?
        .map_err(|e| anyhow::anyhow!("demo purchase: {e}"))?;
    let admin = mint_key(
        Some(username.clone()),
        Scope::Admin,
        "demo admin".into(),
        engine.now(),
    );
    let api = mint_key(Some(username), Scope::Api, "demo api".into(), engine.now());
    engine
        .admin(AdminCmd::InsertKey(admin.record.clone()))
        .await?;
    engine
        .admin(AdminCmd::InsertKey(api.record.clone()))
        .await?;
    Ok(Demo {
        admin_key: admin.key(),
        api_key: api.key(),
    })
}

fn print_demo(addr: SocketAddr, operator_key: &str, demo: &Demo) {
    let request_id = uuid::Uuid::now_v7();
    println!(
        r#"
Demo ready: sample catalog applied, account `demo` bought 25.00 USD of credits.

  operator key : {operator_key}
  demo ADMIN key: {admin}
  demo API key  : {api}

Try it (paste into another shell):

  export TG=http://{addr} OP='Key {operator_key}' DEMO='{api}' REQ={request_id}

  # the customer's balance, as fal's Platform API shows it
  curl -s "$TG/v1/account/billing?expand=credits" -H 'Authorization: Key {admin}'

  # a request's life: submit (queued, free) -> start (holds the estimate) -> complete (settles)
  curl -s -X POST $TG/v1/requests -H "Authorization: $OP" -H 'Content-Type: application/json' \
    -d "{{\"request_id\": \"$REQ\", \"endpoint_id\": \"fal-ai/flux/dev\", \"caller_key\": \"$DEMO\"}}"
  curl -s -X POST $TG/v1/requests/$REQ/start -H "Authorization: $OP"
  curl -s -X POST $TG/v1/requests/$REQ/complete -H "Authorization: $OP" -H 'Content-Type: application/json' \
    -d '{{"status_code": 200, "output": {{"images": [{{"width": 1920, "height": 1080}}]}}}}'

  # 1920x1080 is 2 megapixels at 0.025 USD: the balance is now 24.95 USD
  curl -s $TG/v1/admin/accounts/demo -H "Authorization: $OP"

  # what the customer sees, as fal's Platform API shows it: the billed request, usage, a price
  curl -s "$TG/v1/models/billing-events" -H 'Authorization: Key {admin}'
  curl -s "$TG/v1/models/usage?expand=time_series,summary" -H 'Authorization: Key {admin}'
  curl -s "$TG/v1/models/pricing?endpoint_id=fal-ai/flux/dev" -H "Authorization: Key $DEMO"

  # a server error is never billed; the API contract is at $TG/v1/openapi.json
"#,
        admin = demo.admin_key,
        api = demo.api_key,
    );
}
