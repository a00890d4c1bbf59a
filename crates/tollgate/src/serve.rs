//! `tollgate serve`: resolve the settings, listen, claim and open the store, start the engine,
//! the hold-expiry sweeper and the webhook dispatcher, serve HTTP; on SIGTERM or SIGINT drain
//! and stop.

use crate::config::{self, LogFormat, Settings};
use crate::demo_runners::{self, SeededRunners};
use crate::http_server::{self, ConnLimits};
use crate::{dblock, drain, logging};
use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tollgate_api::auth::mint_key;
use tollgate_api::AppState;
use tollgate_core::catalog::document;
use tollgate_core::ids::{AccountId, PurchaseId};
use tollgate_core::machine::Op;
use tollgate_core::time::{day_start, MS_PER_DAY};
use tollgate_core::{Nanos, Timestamp};
use tollgate_dashboard::demo::{self, Seeded};
use tollgate_engine::{system_clock, AdminCmd, AdminReply, Clock, Engine};
use tollgate_store::{BillingMode, Scope};

pub const DEFAULT_DB: &str = "tollgate.db";
pub const DEMO_DB: &str = "tollgate-demo.db";
/// The sample catalog shipped with tollgate (see catalog/README.md).
pub const SAMPLE_CATALOG: &str = include_str!("../../../catalog/sample.toml");

#[derive(Args)]
pub struct ServeArgs {
    /// A TOML configuration file with any of the settings below (see
    /// docs/tollgate.example.toml). Each setting can also come from the environment as
    /// TOLLGATE_<NAME> (TOLLGATE_DRAIN_TIMEOUT_S), a section's as TOLLGATE_<SECTION>_<KEY>
    /// (TOLLGATE_INVOICES_PREFIX for `[invoices] prefix`); flags win, then the environment,
    /// then the file. Check a file with `tollgate config check FILE`.
    #[arg(long, env = "TOLLGATE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Start a demo: a fresh database with the sample catalog, an operator key and a demo
    /// account with credits, keys and four weeks of usage history, and print a sign-in link
    /// to its billing dashboard and commands to try. Refused while another server has the
    /// demo database open.
    #[arg(long)]
    demo: bool,
    #[command(flatten)]
    settings: config::Flags,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = config::config_path(args.config)?;
    let settings = Settings::resolve(config.as_deref(), args.settings)?;
    let format = settings.log_format;
    logging::init(format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(serve(settings, args.demo));
    // Calls cut off by the drain timeout may still hold blocking tasks: do not wait for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    logging::fatal(format, result)
}

/// The database `serve` opens: the one configured, or the default for the mode.
fn database(settings: &Settings, demo: bool) -> anyhow::Result<String> {
    Ok(match (&settings.db, demo) {
        (Some(p), true) if tollgate_store::postgres::is_url(p) => bail!(
            "--demo starts on a fresh embedded database; leave --db out to use {DEMO_DB} \
             (recreated at every demo start)"
        ),
        (Some(p), true) if Path::new(p).exists() => bail!(
            "--demo starts on a fresh database, and {p} already exists; pick another --db or \
             leave --db out to use {DEMO_DB} (recreated at every demo start)"
        ),
        (Some(p), _) => p.clone(),
        (None, true) => DEMO_DB.to_string(),
        (None, false) => DEFAULT_DB.to_string(),
    })
}

/// Binds the listening socket, with an error an operator can act on.
async fn listen(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                "address in use (is another server running there?)".to_string()
            }
            std::io::ErrorKind::AddrNotAvailable => "no such address on this machine".to_string(),
            std::io::ErrorKind::PermissionDenied => {
                "permission denied (ports below 1024 need privileges)".to_string()
            }
            _ => e.to_string(),
        };
        anyhow::anyhow!("cannot listen on {addr}: {why}; nothing was opened or changed")
    })
}

async fn serve(settings: Settings, demo: bool) -> anyhow::Result<()> {
    let db = database(&settings, demo)?;
    // The port first: a server that cannot listen exits before it opens or changes anything.
    let listener = listen(settings.listen).await?;
    // Then the one claim on the file: one server per SQLite database. The demo starts its own
    // database over only once it holds that claim, so it never deletes a running server's.
    if !tollgate_store::postgres::is_url(&db) {
        dblock::claim(Path::new(&db), demo && settings.db.is_none())?;
    }
    // Off the async runtime: the PostgreSQL driver blocks on a runtime of its own.
    let store = tokio::task::spawn_blocking({
        let db = db.clone();
        move || tollgate_store::open(&db)
    })
    .await?
    .with_context(|| format!("cannot open {db}"))?;
    let db = store.describe();
    // The demo writes its account's past on a clock it sets back, then lets it follow the
    // system clock; a server's clock is the system's.
    let (clock, demo_clock) = if demo {
        let pinned = Arc::new(AtomicI64::new(0));
        (pinnable_clock(pinned.clone()), Some(pinned))
    } else {
        (system_clock(), None)
    };
    let engine = Engine::start(store, clock)?;
    // Checked with the settings already; the engine checks it again.
    engine
        .set_invoice_prefix(&settings.invoices.prefix)
        .map_err(|e| anyhow::anyhow!("invoices.prefix: {e}"))?;

    // Payments: the top-up range reaches the core's auto top-up decision whether or not the
    // provider is configured; with it, the provider's row among the webhooks (which charges
    // the automatic top-ups) is made if it is not there.
    engine
        .set_top_up_settings(settings.top_ups.to_core())
        .map_err(|e| anyhow::anyhow!("top_ups: {e}"))?;
    // Serverless runners: how long after its last report a runner is still billed, and how
    // long applied event ids are kept.
    engine
        .set_serverless_settings(settings.serverless.to_core())
        .map_err(|e| anyhow::anyhow!("serverless: {e}"))?;
    // The provider's row is made and the deployment's installation id read (drawn and stored
    // at the first start), which every idempotency key and metadata sent to the provider names.
    let payments = match settings.stripe.to_api(&settings.top_ups) {
        Some(p) => Some(tollgate_api::payments::Payments::start(&engine, p).await?),
        None => None,
    };
    if let Some(p) = &payments {
        tracing::info!(
            api_base = %settings.stripe.api_base,
            webhook_secrets = settings.stripe.webhook_secrets.len(),
            installation = %p.settings.installation,
            "payments are on: the payment provider's events are taken at \
             /v1/payments/stripe/webhook"
        );
    } else {
        tracing::info!(
            "payments are off ([stripe] secret_key is not set): the payment calls answer 503"
        );
    }

    // The demo's prices are in force from 90 days back, so its history is priced; a catalog
    // file given too comes after them.
    if demo {
        let from = engine.now().minus_ms(DEMO_CATALOG_DAYS * MS_PER_DAY);
        apply_catalog(&engine, SAMPLE_CATALOG, "the sample catalog", Some(from)).await?;
    }
    if let Some(path) = &settings.catalog {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        apply_catalog(&engine, &text, &path.display().to_string(), None).await?;
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
        _ if demo => {
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

    let demo = if let Some(pinned) = &demo_clock {
        Some(create_demo_account(&engine, pinned).await?)
    } else {
        if engine.catalog().endpoints.is_empty() {
            tracing::warn!(
                "the catalog is empty: apply one with `tollgate catalog apply catalog/sample.toml` \
                 or start with --catalog FILE"
            );
        }
        None
    };

    let addr = listener.local_addr()?;
    // Usage billing periods of past months close at startup and at each month's start.
    let month_close = tollgate_api::spawn_month_close(engine.clone(), Duration::from_secs(60));
    let sweeper = tollgate_api::spawn_sweeper(
        engine.clone(),
        Duration::from_millis(settings.sweep_interval_ms.max(10)),
    );
    let api = AppState {
        webhooks: Arc::new(settings.webhooks.to_api()),
        payments: payments.map(Arc::new),
        ..AppState::new(engine.clone())
    };
    // Webhook deliveries (and the automatic top-ups, which the payment provider's row among
    // them charges): claimed through the writer, sent on tasks of their own; a tick catches
    // the retries that come due.
    let dispatcher = tollgate_api::spawn_dispatcher(&api, WEBHOOK_TICK);
    tracing::info!(
        header_timeout_s = settings.header_timeout_s,
        idle_timeout_s = settings.idle_timeout_s,
        request_timeout_s = settings.request_timeout_s,
        drain_timeout_s = settings.drain_timeout_s,
        max_connections = settings.max_connections,
        "connection settings"
    );
    logging::startup(
        settings.log_format,
        &format!("tollgate listening on http://{addr} (database {db})"),
        "tollgate listening",
        json!({"address": format!("http://{addr}"), "database": db}),
    );
    if let (Some(demo), Some(op)) = (&demo, &operator_key) {
        print_demo(settings.log_format, addr, op, demo);
    }
    let pages = tollgate_dashboard::router(tollgate_dashboard::DashboardState::new(
        api.clone(),
        tollgate_dashboard::DashboardConfig {
            public_url: settings.public_url.clone(),
            ..Default::default()
        },
    ));
    // Gateway mode: fal's queue and direct APIs on listeners of their own, the dispatcher
    // beside them.
    let gateway = match &settings.gateway {
        Some(g) => {
            let handle = tollgate_gateway::start(api.clone(), g.to_gateway())
                .await
                .context("cannot start the gateway")?;
            let scheme = if g.tls_cert.is_some() {
                "https"
            } else {
                "http"
            };
            let direct = handle
                .direct_addr
                .map(|a| format!(", direct API on {scheme}://{a}"))
                .unwrap_or_default();
            logging::startup(
                settings.log_format,
                &format!(
                    "gateway: fal's queue API on {scheme}://{}{direct}",
                    handle.queue_addr
                ),
                "gateway listening",
                json!({
                    "queue": format!("{scheme}://{}", handle.queue_addr),
                    "direct": handle.direct_addr.map(|a| format!("{scheme}://{a}")),
                }),
            );
            Some(handle)
        }
        None => None,
    };
    let app = tollgate_api::router_with(api, pages);
    let report = http_server::serve(
        listener,
        app,
        conn_limits(&settings),
        drain::stop_signal(settings.drain_timeout()),
        settings.drain_timeout(),
    )
    .await?;
    // Calls to model servers in flight are dropped: their requests' leases run out, and they
    // are dispatched again (by this server when it starts again).
    if let Some(g) = gateway {
        g.stop();
    }
    sweeper.abort();
    month_close.abort();
    // Deliveries in flight are not recorded: their leases pass, and the next server sends
    // them again (receivers drop duplicates by the event id).
    dispatcher.abort();
    // Every call answered was committed and synced before its answer; what is still queued
    // (a sweep, a call cut off by the drain timeout) runs now, and the store is closed.
    engine.shutdown().await?;
    if report.cut > 0 {
        bail!(
            "drain_timeout_s ({} s) passed with {} of {} connections still busy: their calls \
             were cut off, and what they had queued was committed; exiting with status 1",
            settings.drain_timeout_s,
            report.cut,
            report.open
        );
    }
    tracing::info!("stopped: every call in flight answered, the last batch committed and synced");
    Ok(())
}

/// The connection limits `http_server` enforces (it lowers `max_connections` below the
/// process's open-file limit, and says so).
fn conn_limits(settings: &Settings) -> ConnLimits {
    ConnLimits {
        header_timeout: Duration::from_secs(settings.header_timeout_s),
        idle_timeout: Duration::from_secs(settings.idle_timeout_s),
        request_timeout: Duration::from_secs(settings.request_timeout_s),
        max_connections: usize::try_from(settings.max_connections).unwrap_or(usize::MAX),
    }
}

/// Applies a catalog document; `effective_from` overrides the document's.
async fn apply_catalog(
    engine: &Engine,
    text: &str,
    name: &str,
    effective_from: Option<Timestamp>,
) -> anyhow::Result<()> {
    let mut doc = document::parse(text).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    if effective_from.is_some() {
        doc.effective_from = effective_from;
    }
    if let AdminReply::CatalogApplied {
        endpoints,
        versions_created,
        plan,
    } = engine.admin(AdminCmd::ApplyCatalog(Box::new(doc))).await?
    {
        for w in &plan.warnings {
            tracing::warn!(field = %w.field, "{name}: {}", w.message);
        }
        tracing::info!(endpoints, versions_created, "applied {name}");
    }
    Ok(())
}

/// How often the webhook dispatcher looks for retries that came due (new events wake it at
/// once).
const WEBHOOK_TICK: Duration = Duration::from_secs(1);

/// How far back the demo's prices take effect.
const DEMO_CATALOG_DAYS: i64 = 90;
/// How long before the history the demo account signed up and bought its credits.
const DEMO_SIGNUP_DAYS: i64 = 30;

/// A clock that follows the system clock while `pinned` is 0, and reads `pinned` otherwise.
fn pinnable_clock(pinned: Arc<AtomicI64>) -> Clock {
    let system = system_clock();
    Arc::new(move || match pinned.load(Ordering::SeqCst) {
        0 => system(),
        at => Timestamp(at),
    })
}

struct Demo {
    admin_key: String,
    api_key: String,
    /// The usage history written for the account.
    history: Seeded,
    /// The serverless runner time written for it.
    runners: SeededRunners,
    /// When the sample catalog's prices took effect.
    prices_from: Timestamp,
    /// A one-time sign-in link's path, and when it stops working.
    link: String,
    link_expires_at: Timestamp,
}

/// The demo account: signed up, bought 25 USD of credits and got its keys
/// [`DEMO_SIGNUP_DAYS`] ago, then used the API on the days 2 to 29 ago and ran its own app on
/// serverless runners on the days 4 to 2 ago (the engine's clock pinned to each day as it is
/// written, so the ledger dates the charges on their days), and a sign-in link to its
/// dashboard minted now.
async fn create_demo_account(engine: &Engine, pinned: &AtomicI64) -> anyhow::Result<Demo> {
    let now = engine.now();
    let prices_from = now.minus_ms(DEMO_CATALOG_DAYS * MS_PER_DAY);
    pinned.store(
        day_start(now).minus_ms(DEMO_SIGNUP_DAYS * MS_PER_DAY).0 + 9 * 3_600_000,
        Ordering::SeqCst,
    );
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
    let api = mint_key(
        Some(username.clone()),
        Scope::Api,
        "demo api".into(),
        engine.now(),
    );
    // A second API key, as a team's batch jobs have, so usage per key has two keys.
    let batch = mint_key(
        Some(username.clone()),
        Scope::Api,
        "demo batch jobs".into(),
        engine.now(),
    );
    for key in [&admin, &api, &batch] {
        engine
            .admin(AdminCmd::InsertKey(key.record.clone()))
            .await?;
    }
    // The history is written from the present's point of view: its days count back from
    // today, and each batch pins the clock to its day.
    pinned.store(now.0, Ordering::SeqCst);
    let plan = demo::demo_history(
        username.clone(),
        vec![api.record.key_id.clone(), batch.record.key_id.clone()],
    );
    let set_clock = |t: Timestamp| pinned.store(t.0, Ordering::SeqCst);
    // Both seeded before the clock is released, whichever fails.
    let seeded = async {
        let history = demo::seed_history(engine, &plan, Some(&set_clock))
            .await
            .map_err(|e| anyhow::anyhow!("demo history: {e}"))?;
        let runners = demo_runners::seed(engine, &username, now, &set_clock)
            .await
            .context("demo serverless history")?;
        anyhow::Ok((history, runners))
    }
    .await;
    pinned.store(0, Ordering::SeqCst);
    let (history, runners) = seeded?;
    let state = AppState::new(engine.clone());
    let minted = tollgate_api::portal::mint_link(&state, username)
        .await
        .map_err(|e| anyhow::anyhow!("demo sign-in link: {}", e.message))?;
    let (link, link_expires_at) = (minted.url, minted.expires_at);
    Ok(Demo {
        admin_key: admin.key(),
        api_key: api.key(),
        history,
        runners,
        prices_from,
        link,
        link_expires_at,
    })
}

fn print_demo(format: LogFormat, addr: SocketAddr, operator_key: &str, demo: &Demo) {
    let base = format!("http://{addr}");
    let h = &demo.history;
    let r = &demo.runners;
    let bought = Nanos::parse_usd("25.00").expect("valid");
    let balance = Nanos(bought.0 - h.total.0 - r.total.0);
    let usd = |n: Nanos| n.to_usd().normalize().to_string();
    let date = |t: Timestamp| tollgate_api::wire::rfc3339(t)[..10].to_string();
    let link = format!("{base}{}", demo.link);
    let until = tollgate_api::wire::rfc3339(demo.link_expires_at);
    if format == LogFormat::Json {
        logging::startup(
            format,
            "",
            "demo ready: sample catalog applied, account `demo` bought 25.00 USD of credits \
             and has four weeks of usage history and three days of serverless runner time",
            json!({
                "address": base,
                "operator_key": operator_key,
                "demo_admin_key": demo.admin_key,
                "demo_api_key": demo.api_key,
                "prices_from": tollgate_api::wire::rfc3339(demo.prices_from),
                "history": {
                    "requests": h.events,
                    "billed": h.billed,
                    "endpoints": h.endpoints,
                    "total_usd": usd(h.total),
                    "first": h.first.map(tollgate_api::wire::rfc3339),
                    "last": h.last.map(tollgate_api::wire::rfc3339),
                },
                "serverless": {
                    "app": demo_runners::APP,
                    "runners": r.runners,
                    "events": r.events,
                    "days": r.days,
                    "total_usd": usd(r.total),
                    "first": r.first.map(tollgate_api::wire::rfc3339),
                    "last": r.last.map(tollgate_api::wire::rfc3339),
                },
                "balance_usd": usd(balance),
                "dashboard_link": link,
                "dashboard_link_expires_at": until,
                "dashboard_login": format!("{base}/dashboard/login"),
                "console_login": format!("{base}/console/login"),
            }),
        );
        return;
    }
    let request_id = uuid::Uuid::now_v7();
    let (first, last) = (
        h.first.map(date).unwrap_or_default(),
        h.last.map(date).unwrap_or_default(),
    );
    println!(
        r#"
Demo ready: the sample catalog, its prices in force since {prices_from}; account `demo`, which
bought 25.00 USD of credits 30 days ago, then made {events} requests to {endpoints} endpoints from
{first} to {last} (billed {total} USD; the last 24 hours are left to you), and
ran its own app `{app}` on {runners} serverless runners over {runner_days} days from
{runners_first} (billed {runners_total} USD of runner time): its balance is {balance} USD.

  operator key  : {operator_key}
  demo ADMIN key: {admin}
  demo API key  : {api}
  dashboard link: {link}
  console       : {base}/console/login

Open the dashboard link in a browser: it signs in to `demo`'s billing dashboard, once, within
ten minutes (until {until_time} UTC). For a new link, run the first curl below, or sign in at
/dashboard/login with the ADMIN key. The console (/console/login) takes the operator key.

Try it (paste into another shell):

  export TG={base} OP='Key {operator_key}' DEMO='{api}' REQ={request_id}

  # a new dashboard sign-in link for `demo` (prefix its url with $TG)
  curl -s -X POST $TG/v1/admin/accounts/demo/portal-sessions -H "Authorization: $OP"

  # the customer's balance, as fal's Platform API shows it
  curl -s "$TG/v1/account/billing?expand=credits" -H 'Authorization: Key {admin}'

  # a request's life: submit (queued, free) -> start (holds the estimate) -> complete (settles)
  curl -s -X POST $TG/v1/requests -H "Authorization: $OP" -H 'Content-Type: application/json' \
    -d "{{\"request_id\": \"$REQ\", \"endpoint_id\": \"fal-ai/flux/dev\", \"caller_key\": \"$DEMO\"}}"
  curl -s -X POST $TG/v1/requests/$REQ/start -H "Authorization: $OP"
  curl -s -X POST $TG/v1/requests/$REQ/complete -H "Authorization: $OP" -H 'Content-Type: application/json' \
    -d '{{"status_code": 200, "output": {{"images": [{{"width": 1920, "height": 1080}}]}}}}'

  # 1920x1080 is 2 megapixels at 0.025 USD: the balance drops by exactly 0.05 USD
  curl -s $TG/v1/admin/accounts/demo -H "Authorization: $OP"

  # what the customer sees, as fal's Platform API shows it: the billed request, usage (the
  # last day by default; add &start=YYYY-MM-DD for the history), a price
  curl -s "$TG/v1/models/billing-events" -H 'Authorization: Key {admin}'
  curl -s "$TG/v1/models/usage?expand=time_series,summary" -H 'Authorization: Key {admin}'
  curl -s "$TG/v1/models/pricing?endpoint_id=fal-ai/flux/dev" -H "Authorization: Key $DEMO"

  # its serverless app's runner time (the dashboard's Serverless page shows the same): cost
  # by line, surge apart, and how many runners ran each hour
  curl -s "$TG/v1/serverless/usage?expand=summary&start={runners_first}" -H 'Authorization: Key {admin}'
  curl -s "$TG/v1/serverless/apps/demo/{app}/runners/history?start={runners_first}&timeframe=hour" \
    -H "Authorization: Key $DEMO"

  # a server error is never billed; the API contract is at $TG/v1/openapi.json
"#,
        prices_from = date(demo.prices_from),
        until_time = &until[11..19],
        events = h.events,
        endpoints = h.endpoints,
        total = usd(h.total),
        app = demo_runners::APP,
        runners = r.runners,
        runner_days = r.days,
        runners_first = r.first.map(date).unwrap_or_default(),
        runners_total = usd(r.total),
        balance = usd(balance),
        admin = demo.admin_key,
        api = demo.api_key,
    );
}
