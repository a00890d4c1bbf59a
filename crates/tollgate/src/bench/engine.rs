//! tollgate's write path in-process: the real engine and store (SQLite, and PostgreSQL when
//! the bench has a URL), many concurrent callers, every answer after a durable commit.

use super::baseline::{ACCOUNTS, COST_NANOS, POSTGRES_CLIENTS};
use super::report::{histogram, record, Row};
use super::{BenchArgs, Plan};
use hdrhistogram::Histogram;
use rust_decimal::Decimal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_core::catalog::document;
use tollgate_core::ids::{AccountId, AdjustmentId, EndpointId, LimitId, PurchaseId, RequestId};
use tollgate_core::limits::{LimitAction, LimitScope, Period, SpendingLimit};
use tollgate_core::machine::{Op, Outcome, UsageEvent};
use tollgate_core::money::Nanos;
use tollgate_core::payments::{AutoTopUpRule, PaymentEffect};
use tollgate_core::price::{Dims, Output, Tokens};
use tollgate_core::Timestamp;
use tollgate_engine::{system_clock, AdminCmd, Clock, Engine};
use tollgate_store::sqlite::SqliteStore;
use tollgate_store::Store;

/// The bench's catalog: a flat image price (0.001 USD, the naive baseline's cost), a
/// token-priced LLM endpoint for the trace replay, and a machine type for the serverless
/// runners (0.0005 USD per GPU-second: 500 nano-USD per GPU-millisecond, so a runner's bill is
/// a whole number of nano-USD for any time it reports).
pub const BENCH_CATALOG: &str = r#"
prices_read_on = "2026-09-15"

[machines]
GPU-H100 = "0.0005"

[[endpoint]]
id = "bench/image"
name = "Bench image model"
category = "text-to-image"
hold_units = "1"
price = { unit = "image", unit_price = "0.001" }

[[endpoint]]
id = "bench/llm"
name = "Bench LLM"
category = "llm"
hold_units = "16384"
price = { unit = "token", tokens = { per = "1000000", input = "0.15", output = "0.60" } }
"#;

/// Each bench account starts with this much (1,000,000 USD), as free credits.
const START_BALANCE: i64 = 1_000_000 * 1_000_000_000;
/// The bench accounts' terms (as stored: one version, from the beginning): a contractual
/// concurrency limit no run reaches.
const UNLIMITED_TERMS: &str = r#"[{"effective_from":0,"discounts":{},"concurrency_override":1000000,"lock_threshold_nanos":0,"billing":"prepaid"}]"#;

pub fn account_name(i: usize) -> String {
    format!("bench-{i}")
}

/// How the bench names its requests. A gateway that sends time-ordered ids (UUIDv7, or a
/// prefix and a counter as here) adds them to the request-id index in a few places; one that
/// sends random UUIDv4s adds each at a random place in it.
#[derive(Clone, Copy)]
enum Ids {
    /// `{tag}-{caller}-{n}`: each caller's ids in order.
    Counter(&'static str),
    /// Random UUIDv4s.
    Random,
}

impl Ids {
    /// The id of a caller's `n`-th event.
    fn event(self, caller: usize, n: u64) -> String {
        match self {
            Ids::Counter(tag) => format!("{tag}-{caller}-{n}"),
            Ids::Random => uuid::Uuid::new_v4().to_string(),
        }
    }

    /// The id of the `i`-th of `history` seeded requests. Random ids are spread evenly over
    /// the UUIDs in increasing order: the seed appends to the index, and the index ends up as
    /// random ids would leave it, with the events' random ids landing anywhere in it.
    fn history(self, i: usize, history: usize) -> String {
        match self {
            Ids::Counter(tag) => format!("{tag}-{i:012}"),
            Ids::Random => {
                uuid::Uuid::from_u128(i as u128 * (u128::MAX / history as u128)).to_string()
            }
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Ids::Counter(_) => "ids in order per caller",
            Ids::Random => "random UUIDv4 ids",
        }
    }
}

/// A fresh database with `accounts` funded accounts.
pub fn seed(dir: &Path, accounts: usize) -> anyhow::Result<PathBuf> {
    seed_history(dir, accounts, 0, Ids::Counter("hist"))
}

/// A fresh database with `accounts` funded accounts and `history` billed requests already in
/// it, written directly in bulk (setting up a million accounts through the API would take
/// longer than the bench).
fn seed_history(dir: &Path, accounts: usize, history: usize, ids: Ids) -> anyhow::Result<PathBuf> {
    let path = dir.join("bench.db");
    drop(SqliteStore::open(&path)?);
    let mut c = rusqlite::Connection::open(&path)?;
    c.pragma_update(None, "synchronous", "OFF")?;
    let tx = c.transaction()?;
    {
        let mut acct = tx.prepare(
            "INSERT INTO accounts (username, created_at, balance_nanos, terms) \
             VALUES (?1, 0, ?2, ?3)",
        )?;
        let mut lot = tx.prepare(
            "INSERT INTO purchases (account, purchase_id, amount_nanos, paid, created_at, \
             balance_after, limit_after, locked_after, expires_at, remaining_nanos) \
             VALUES (?1, 'seed', ?2, 0, 0, ?2, 1000000, 0, NULL, ?2)",
        )?;
        let mut grant = tx.prepare(
            "INSERT INTO transfers (kind, debit, credit, amount_nanos, purchase_id, at) \
             VALUES ('grant', 'system:grants', ?1, ?2, 'seed', 0)",
        )?;
        // The grant's movement on the statements, as its commit would have written it.
        let mut statement = Vec::new();
        for sql in SEED_STATEMENT_SQL {
            statement.push(tx.prepare(&sql.replace('$', "?"))?);
        }
        for i in 0..accounts {
            let name = account_name(i);
            acct.execute(rusqlite::params![name, START_BALANCE, UNLIMITED_TERMS])?;
            lot.execute(rusqlite::params![name, START_BALANCE])?;
            grant.execute(rusqlite::params![format!("customer:{name}"), START_BALANCE])?;
            for st in &mut statement {
                st.execute(rusqlite::params![name, START_BALANCE])?;
            }
        }
        let mut req = tx.prepare(
            "INSERT INTO requests (request_id, source, account, endpoint_id, price_version, \
             status, submitted_at, finished_at, hold_nanos, num_gpus, queue_ms, inference_ms) \
             VALUES (?1, 'event', ?2, 'bench/image', 1, 'COMPLETED', ?3, ?3, 0, 1, 0, 0)",
        )?;
        // Into the account-clustered table directly, as merged line items.
        let mut item = tx.prepare(
            "INSERT INTO line_items_by_account (request_id, account, endpoint_id, \
             price_version, unit, quantity, unit_price, subtotal_nanos, discount_nanos, \
             total_nanos, status_code, billed_at) \
             VALUES (?1, ?2, 'bench/image', 1, 'image', '1', '0.001', ?3, 0, ?3, 200, ?4)",
        )?;
        for i in 0..history {
            let id = ids.history(i, history);
            let account = account_name(i % accounts.max(1));
            req.execute(rusqlite::params![id, account, i as i64])?;
            item.execute(rusqlite::params![id, account, COST_NANOS, i as i64])?;
        }
    }
    // The history's rollups, as the write path would have left them (every seeded
    // line item is one image, so quantities are counts and histograms are empty).
    for (table, slot_ms) in [("usage_minutes", 60_000), ("usage_hours", 3_600_000)] {
        tx.execute_batch(&format!(
            "INSERT INTO {table} (slot, account, endpoint_id, api_key, unit, unit_price, \
             blend_version, percent_discount, quantity, requests, subtotal_nanos, \
             discount_nanos, total_nanos) \
             SELECT billed_at / {slot_ms} * {slot_ms}, account, endpoint_id, '', unit, \
             unit_price, 0, '', CAST(COUNT(*) AS TEXT), COUNT(*), SUM(subtotal_nanos), \
             SUM(discount_nanos), SUM(total_nanos) FROM line_items_by_account \
             GROUP BY 1, 2, 3, 5, 6"
        ))?;
    }
    for (table, slot_ms) in [("activity_minutes", 60_000), ("activity_hours", 3_600_000)] {
        tx.execute_batch(&format!(
            "INSERT INTO {table} (slot, account, endpoint_id, requests, successes, \
             user_errors, errors, billable_ms, prepare_ms, duration_ms) \
             SELECT billed_at / {slot_ms} * {slot_ms}, account, endpoint_id, COUNT(*), \
             COUNT(*), 0, 0, 0, x'', x'' FROM line_items_by_account GROUP BY 1, 2, 3"
        ))?;
    }
    // Every minute of the history is in its hour rows: folded.
    if history > 0 {
        let folded = (history as i64 - 1) / 60_000 * 60_000 + 60_000;
        tx.execute(
            "UPDATE settings SET value = ?1 WHERE key = ?2",
            rusqlite::params![folded.to_string(), tollgate_store::SETTING_FOLDED_BEFORE],
        )?;
    }
    tx.commit()?;
    super::quiesce();
    Ok(path)
}

/// Days of statement history the `statement_history` scale row seeds for each account.
const STATEMENT_DAYS: u32 = 365;

/// Adds `days` days of statement history before today (by the system clock, which the bench's
/// engine runs on) for every account of the database at `path`: a day row, a usage row and its
/// month's row per account and day, written day by day as the billing commits would have
/// written them, so that the tables' pages are laid out as a year of traffic leaves them.
/// Each day's usage is matched by a purchase of the same amount, so the days still add up to
/// the balance (the reconciliation after the run checks it). Today's rows, which the run
/// writes, come after them in time.
fn seed_statement_history(path: &Path, days: u32) -> anyhow::Result<()> {
    const DAY_MS: i64 = 86_400_000;
    let now = tollgate_engine::system_clock()().0;
    let today = now - now.rem_euclid(DAY_MS);
    let mut c = rusqlite::Connection::open(path)?;
    c.pragma_update(None, "synchronous", "OFF")?;
    let tx = c.transaction()?;
    let accounts: Vec<String> = {
        let mut st = tx.prepare("SELECT username FROM accounts ORDER BY username")?;
        let names = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        names
    };
    {
        let mut day_row = tx.prepare(
            "INSERT INTO balance_days (account, day, purchases_nanos, grants_nanos, \
             usage_nanos, expired_nanos, refunds_nanos, disputes_nanos, adjustments_nanos, \
             closing_nanos) VALUES (?1, ?2, ?3, 0, -?3, 0, 0, 0, 0, ?4)",
        )?;
        let mut usage_row = tx.prepare(
            "INSERT INTO usage_days (account, day, endpoint_id, unit, quantity, requests, \
             cost_nanos) VALUES (?1, ?2, 'bench/image', 'image', '1', 1, ?3)",
        )?;
        let mut month_row = tx.prepare(
            "INSERT INTO balance_months (account, month, purchases_nanos, grants_nanos, \
             usage_nanos, expired_nanos, refunds_nanos, disputes_nanos, adjustments_nanos, \
             closing_nanos) VALUES (?1, ?2, ?3, 0, -?3, 0, 0, 0, 0, ?4) \
             ON CONFLICT DO UPDATE SET usage_nanos = usage_nanos + excluded.usage_nanos, \
             purchases_nanos = purchases_nanos + excluded.purchases_nanos",
        )?;
        for d in (1..=i64::from(days)).rev() {
            let day = today - d * DAY_MS;
            let month = tollgate_core::time::month_start(tollgate_core::Timestamp(day)).0;
            for name in &accounts {
                day_row.execute(rusqlite::params![name, day, COST_NANOS, START_BALANCE])?;
                month_row.execute(rusqlite::params![name, month, COST_NANOS, START_BALANCE])?;
                usage_row.execute(rusqlite::params![name, day, COST_NANOS])?;
            }
        }
    }
    tx.commit()?;
    super::quiesce();
    Ok(())
}

/// The seed grant's rows on the statements (at the epoch, its time in `transfers`): its day,
/// its month and its movement; `$1` the account, `$2` the amount.
const SEED_STATEMENT_SQL: [&str; 3] = [
    "INSERT INTO balance_days (account, day, purchases_nanos, grants_nanos, usage_nanos, \
     expired_nanos, refunds_nanos, disputes_nanos, adjustments_nanos, closing_nanos) \
     VALUES ($1, 0, 0, $2, 0, 0, 0, 0, 0, $2)",
    "INSERT INTO balance_months (account, month, purchases_nanos, grants_nanos, usage_nanos, \
     expired_nanos, refunds_nanos, disputes_nanos, adjustments_nanos, closing_nanos) \
     VALUES ($1, 0, 0, $2, 0, 0, 0, 0, 0, $2)",
    "INSERT INTO balance_movements (account, at, kind, amount_nanos, reference) \
     VALUES ($1, 0, 'grant', $2, 'seed')",
];

/// A fresh schema in the PostgreSQL database at `url`, named `schema`, with tollgate's tables
/// and `accounts` funded accounts written in bulk as `seed` writes them (no history); returns
/// the store, opened on that schema. Blocks: call it off the async runtime.
fn seed_postgres(url: &str, schema: &str, accounts: usize) -> anyhow::Result<Box<dyn Store>> {
    postgres::Client::connect(url, postgres::NoTls)?
        .batch_execute(&format!("CREATE SCHEMA {schema}"))?;
    let scoped = with_search_path(url, schema);
    let store = tollgate_store::open(&scoped)?;
    let names: Vec<String> = (0..accounts).map(account_name).collect();
    let mut c = postgres::Client::connect(&scoped, postgres::NoTls)?;
    let mut tx = c.transaction()?;
    tx.execute(
        "INSERT INTO accounts (username, created_at, balance_nanos, terms) \
         SELECT n, 0, $2, $3 FROM unnest($1::text[]) n",
        &[&names, &START_BALANCE, &UNLIMITED_TERMS],
    )?;
    tx.execute(
        "INSERT INTO purchases (account, purchase_id, amount_nanos, paid, created_at, \
         balance_after, limit_after, locked_after, expires_at, remaining_nanos) \
         SELECT n, 'seed', $2, false, 0, $2, 1000000, false, NULL, $2 FROM unnest($1::text[]) n",
        &[&names, &START_BALANCE],
    )?;
    tx.execute(
        "INSERT INTO transfers (kind, debit, credit, amount_nanos, purchase_id, at) \
         SELECT 'grant', 'system:grants', 'customer:' || n, $2, 'seed', 0 \
         FROM unnest($1::text[]) n",
        &[&names, &START_BALANCE],
    )?;
    // The grant's movement on the statements (see SEED_STATEMENT_SQL), for every account.
    for table in [
        "balance_days (account, day",
        "balance_months (account, month",
    ] {
        tx.execute(
            &format!(
                "INSERT INTO {table}, purchases_nanos, grants_nanos, usage_nanos, \
                 expired_nanos, refunds_nanos, disputes_nanos, adjustments_nanos, closing_nanos) \
                 SELECT n, 0, 0, $2, 0, 0, 0, 0, 0, $2 FROM unnest($1::text[]) n"
            ),
            &[&names, &START_BALANCE],
        )?;
    }
    tx.execute(
        "INSERT INTO balance_movements (account, at, kind, amount_nanos, reference) \
         SELECT n, 0, 'grant', $2, 'seed' FROM unnest($1::text[]) n",
        &[&names, &START_BALANCE],
    )?;
    tx.commit()?;
    Ok(store)
}

/// `url` with `schema` as its search path (the schema must exist), added to the URL's
/// `options` if it has some.
fn with_search_path(url: &str, schema: &str) -> String {
    let setting = format!("-csearch_path%3D{schema}");
    let Some((base, query)) = url.split_once('?') else {
        return format!("{url}?options={setting}");
    };
    let mut found = false;
    let mut params: Vec<String> = query
        .split('&')
        .map(|p| match p.strip_prefix("options=") {
            Some(v) if !found => {
                found = true;
                format!("options={v}%20{setting}")
            }
            _ => p.to_string(),
        })
        .collect();
    if !found {
        params.push(format!("options={setting}"));
    }
    format!("{base}?{}", params.join("&"))
}

/// Runs `f` in a schema of its own in the PostgreSQL database at `url`, seeded with
/// `accounts` funded accounts; drops the schema afterwards, whatever `f` returned. The
/// PostgreSQL driver blocks on a runtime of its own, so connecting, seeding and dropping run
/// off the async runtime's threads (the engine's writer and read pool drop theirs likewise).
pub async fn on_postgres<T, F, Fut>(url: &str, accounts: usize, f: F) -> anyhow::Result<T>
where
    F: FnOnce(Engine) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let schema = format!(
        "tollgate_bench_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let (u, s) = (url.to_string(), schema.clone());
    let outcome = async {
        let store = tokio::task::spawn_blocking(move || seed_postgres(&u, &s, accounts)).await??;
        f(start_engine_on(store).await?).await
    }
    .await;
    let url = url.to_string();
    let dropped = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        postgres::Client::connect(&url, postgres::NoTls)?
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))?;
        Ok(())
    })
    .await?;
    let value = outcome?;
    dropped?;
    Ok(value)
}

pub async fn start_engine(path: &Path) -> anyhow::Result<Engine> {
    start_engine_on(Box::new(SqliteStore::open(path)?)).await
}

/// The engine over `store`, with the bench catalog applied.
pub async fn start_engine_on(store: Box<dyn Store>) -> anyhow::Result<Engine> {
    start_engine_with(store, system_clock()).await
}

/// [`start_engine_on`] with the engine's clock.
pub async fn start_engine_with(store: Box<dyn Store>, clock: Clock) -> anyhow::Result<Engine> {
    let engine = Engine::start(store, clock)?;
    let doc = document::parse(BENCH_CATALOG).map_err(|e| anyhow::anyhow!("{e}"))?;
    engine.admin(AdminCmd::ApplyCatalog(Box::new(doc))).await?;
    Ok(engine)
}

/// What every bench image request produces: one 1024x1024 image (0.001 USD).
fn one_image() -> Output {
    Output {
        images: vec![Dims {
            width: 1024,
            height: 1024,
        }],
        ..Default::default()
    }
}

pub fn image_event(event_id: String, account: AccountId, at: tollgate_core::Timestamp) -> Op {
    Op::UsageEvent(UsageEvent {
        event_id: RequestId::parse(&event_id).expect("valid id"),
        account,
        endpoint: EndpointId::parse("bench/image").expect("valid"),
        api_key: None,
        timestamp: at,
        status_code: 200,
        output: one_image(),
        billable_units: None,
        queue_seconds: None,
        inference_seconds: None,
        machine_type: None,
        num_gpus: None,
    })
}

/// Spawns `clients` tasks running `op(ctx, client, n)` until the time is up; `op` returns the
/// latency it measured. Returns the number of completed iterations, the elapsed time and the
/// latency histogram.
pub async fn drive<C, F, Fut>(
    ctx: &C,
    clients: usize,
    duration: Duration,
    op: F,
) -> anyhow::Result<(u64, Duration, Histogram<u64>)>
where
    C: Clone + Send + 'static,
    F: Fn(C, usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<Duration>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (ctx, stop, op) = (ctx.clone(), stop.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let latency = op(ctx.clone(), c, n).await?;
                record(&mut h, latency);
                n += 1;
            }
            anyhow::Ok((n, h))
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut all = histogram();
    for t in tasks {
        let (n, h) = t.await??;
        total += n;
        all.add(h).expect("same bounds");
    }
    Ok((total, start.elapsed(), all))
}

pub(super) fn pick(client: usize, n: u64, accounts: usize) -> usize {
    (client.wrapping_mul(7919).wrapping_add(n as usize)) % accounts
}

/// Callers, and events per call, of the bulk usage-event rows, in-process and over HTTP.
pub const BULK_CALLERS: usize = 32;
pub const BULK_EVENTS: usize = 100;

/// Usage events, `per_call` per call (one `execute_many`, as `POST /v1/usage-events` makes),
/// from `plan.clients` concurrent callers, accounts picked as the HTTP rows' script picks them.
/// Counts events; latency per call.
async fn usage_events(
    engine: &Engine,
    plan: &Plan,
    per_call: usize,
    accounts: usize,
    hot: bool,
    ids: Ids,
) -> anyhow::Result<(u64, Duration, Histogram<u64>)> {
    let names: Arc<Vec<AccountId>> = Arc::new(
        (0..accounts)
            .map(|i| AccountId::parse(&account_name(i)).expect("valid"))
            .collect(),
    );
    let per_call = per_call as u64;
    let (calls, el, h) = drive(engine, plan.clients, plan.duration, move |engine, c, n| {
        let names = names.clone();
        async move {
            let now = engine.now();
            let ops = (n * per_call..(n + 1) * per_call)
                .map(|seq| {
                    let account = names[if hot { 0 } else { pick(c, seq, names.len()) }].clone();
                    image_event(ids.event(c, seq), account, now)
                })
                .collect();
            let t = Instant::now();
            for answer in engine.execute_many(ops).await? {
                match answer {
                    Ok(Outcome::Completed {
                        replayed: false, ..
                    }) => {}
                    other => anyhow::bail!("usage event not billed: {other:?}"),
                }
            }
            Ok(t.elapsed())
        }
    })
    .await?;
    Ok((calls * per_call, el, h))
}

/// Operator adjustments (`Op::Adjust`, as `POST /v1/admin/accounts/{username}/adjustments`
/// makes), one per call from `plan.clients` concurrent callers, each with an adjustment id of
/// its own, accounts picked as the usage-event rows pick them: a caller's even calls credit
/// 0.001 USD and its odd calls debit as much (a debit spends credit lots as a charge does).
/// Returns the count, the elapsed time, the latency per call and the net adjusted.
async fn adjustments(
    engine: &Engine,
    plan: &Plan,
    accounts: usize,
) -> anyhow::Result<(u64, Duration, Histogram<u64>, i64)> {
    let names: Arc<Vec<AccountId>> = Arc::new(
        (0..accounts)
            .map(|i| AccountId::parse(&account_name(i)).expect("valid"))
            .collect(),
    );
    let net = Arc::new(AtomicI64::new(0));
    let total = net.clone();
    let (n, el, h) = drive(engine, plan.clients, plan.duration, move |engine, c, n| {
        let (names, net) = (names.clone(), net.clone());
        async move {
            let amount = if n % 2 == 0 { COST_NANOS } else { -COST_NANOS };
            let op = Op::Adjust {
                account: names[pick(c, n, names.len())].clone(),
                adjustment_id: AdjustmentId::parse(&format!("adj-{c}-{n}")).expect("valid id"),
                amount: Nanos(amount),
                reason: "bench: a correction".to_string(),
            };
            let t = Instant::now();
            match engine.execute(op).await? {
                Ok(Outcome::Adjusted {
                    replayed: false, ..
                }) => {}
                other => anyhow::bail!("adjustment not applied: {other:?}"),
            }
            let latency = t.elapsed();
            net.fetch_add(amount, Ordering::Relaxed);
            Ok(latency)
        }
    })
    .await?;
    Ok((n, el, h, total.load(Ordering::Relaxed)))
}

/// Submit, start, complete; returns the latency of `start` (the admission decision).
pub async fn lifecycle(engine: Engine, account: AccountId, id: String) -> anyhow::Result<Duration> {
    let request_id = RequestId::parse(&id).expect("valid id");
    let submitted = engine
        .execute(Op::Submit {
            request_id: request_id.clone(),
            account,
            api_key: None,
            endpoint: EndpointId::parse("bench/image").expect("valid"),
        })
        .await?;
    anyhow::ensure!(submitted.is_ok(), "submit refused: {submitted:?}");
    let t = Instant::now();
    let started = engine
        .execute(Op::Start {
            request_id: request_id.clone(),
            machine_type: None,
            num_gpus: None,
            hold_units: None,
        })
        .await?;
    let admission = t.elapsed();
    anyhow::ensure!(started.is_ok(), "start refused: {started:?}");
    let done = engine
        .execute(Op::Complete {
            request_id,
            status_code: 200,
            output: one_image(),
            billable_units: None,
            inference_seconds: None,
        })
        .await?;
    anyhow::ensure!(done.is_ok(), "complete refused: {done:?}");
    Ok(admission)
}

async fn lifecycles(
    engine: &Engine,
    clients: usize,
    duration: Duration,
    accounts: usize,
    hot: bool,
    tag: &'static str,
) -> anyhow::Result<(u64, Duration, Histogram<u64>)> {
    drive(engine, clients, duration, move |engine, c, n| {
        let account = AccountId::parse(&account_name(if hot { 0 } else { pick(c, n, accounts) }))
            .expect("valid");
        lifecycle(engine, account, format!("{tag}-{c}-{n}"))
    })
    .await
}

/// Gives each of the first `accounts` bench accounts a block limit (1,000,000 USD a month in
/// Berlin: never reached) and an alert limit (0.01 USD a day, notified at 50, 80 and 100%),
/// through the engine as an operator would.
async fn spending_limits(engine: &Engine, accounts: usize) -> anyhow::Result<()> {
    for i in 0..accounts {
        for (id, period, amount, action) in [
            (
                "lim_block",
                Period::Month,
                tollgate_core::money::MAX_AMOUNT,
                LimitAction::Block,
            ),
            (
                "lim_alert",
                Period::Day,
                Nanos(10 * COST_NANOS),
                LimitAction::Alert,
            ),
        ] {
            engine
                .admin(AdminCmd::CreateLimit {
                    username: AccountId::parse(&account_name(i)).expect("valid"),
                    limit: SpendingLimit {
                        id: LimitId::parse(id).expect("valid"),
                        scope: LimitScope::Account,
                        period,
                        timezone: "Europe/Berlin".parse().expect("a zone"),
                        amount,
                        action,
                        alert_at_percent: vec![50, 80, 100],
                        created_at: engine.now(),
                    },
                })
                .await?;
        }
    }
    Ok(())
}

/// Gives each of the first `accounts` bench accounts a saved card (a checkout top-up of 10 USD,
/// paid, saving its payment method), a debit that takes its balance below 1,000,000 USD, and
/// an auto top-up rule with that threshold (the highest a rule takes): setting it starts the account's one auto top-up, which stays in flight for the run
/// (its charge waits in the outbox: the bench has no provider), so every operation of the run
/// takes the rule's decision and finds it in flight, and writes the account's payment profile
/// only if it changed.
async fn auto_top_up_rules(engine: &Engine, accounts: usize) -> anyhow::Result<()> {
    let usd = |n: i64| Nanos(n * 1_000_000_000);
    for i in 0..accounts {
        let account = AccountId::parse(&account_name(i)).expect("valid");
        let top_up_id = PurchaseId::parse("tu_bench_card").expect("valid");
        let ops = vec![
            Op::SetPaymentCustomer {
                account: account.clone(),
                customer: format!("cus_bench_{i}"),
            },
            Op::CreateTopUp {
                account: account.clone(),
                top_up_id: top_up_id.clone(),
                amount: usd(10),
            },
            Op::Payment {
                account: account.clone(),
                event: None,
                effect: PaymentEffect::Paid {
                    top_up_id,
                    amount: usd(10),
                    payment_intent: Some(format!("pi_bench_{i}")),
                    payment_method: Some(format!("pm_bench_{i}")),
                },
            },
            Op::Adjust {
                account: account.clone(),
                adjustment_id: AdjustmentId::parse("adj-bench-below").expect("valid id"),
                amount: usd(-100),
                reason: "bench: below the auto top-up threshold".to_string(),
            },
            Op::SetAutoTopUp {
                account,
                rule: AutoTopUpRule {
                    enabled: true,
                    threshold: Nanos(START_BALANCE),
                    amount: usd(100),
                    max_per_month: usd(1_000),
                },
            },
        ];
        for answer in engine.execute_many(ops).await? {
            answer?;
        }
    }
    Ok(())
}

/// Checks that each of the first `accounts` accounts has exactly one auto top-up in flight.
async fn auto_top_ups_started(engine: &Engine, accounts: usize) -> anyhow::Result<String> {
    let mut started = 0;
    for i in 0..accounts {
        let id = AccountId::parse(&account_name(i)).expect("valid");
        let row = engine
            .read({
                let id = id.clone();
                move |r| r.account(&id, Timestamp(0))
            })
            .await?
            .ok_or_else(|| anyhow::anyhow!("{id} is gone"))?;
        let rule = row.state.payment.auto_top_up.as_ref();
        anyhow::ensure!(
            rule.is_some_and(|r| r.in_flight.is_some()),
            "{id} has no auto top-up in flight"
        );
        started += 1;
    }
    Ok(format!("{started} auto top-ups started, one per account"))
}

/// Checks that the block limits counted every charge of the run: their spend, summed over the
/// accounts, is the `billed` requests' cost, and nothing is still held.
async fn limits_counted(engine: &Engine, accounts: usize, billed: u64) -> anyhow::Result<String> {
    let mut spent = 0i128;
    for i in 0..accounts {
        let id = AccountId::parse(&account_name(i)).expect("valid");
        let limits = tollgate_query::limits::list(engine, &id).await?;
        let block = limits
            .iter()
            .find(|l| l.limit.action == LimitAction::Block)
            .ok_or_else(|| anyhow::anyhow!("{id} has no block limit"))?;
        anyhow::ensure!(block.held == Nanos::ZERO, "{id}: {} still held", block.held);
        spent += i128::from(block.spent.0);
    }
    let expected = i128::from(billed) * i128::from(COST_NANOS);
    anyhow::ensure!(
        spent == expected,
        "the block limits counted {spent} nano-USD, the run billed {expected}"
    );
    Ok(format!("the block limits counted {spent} nano-USD"))
}

/// Checks that the ledger reconciles and that `billed` accepted requests (one image each, on
/// a database without history) are all billed, no more and no fewer.
async fn reconciled(engine: &Engine, billed: u64) -> anyhow::Result<String> {
    let r = engine.read(|r| r.reconcile()).await?;
    anyhow::ensure!(
        r.is_clean(),
        "the ledger does not reconcile after the bench: {}",
        r.summary()
    );
    let expected = i128::from(billed) * i128::from(COST_NANOS);
    anyhow::ensure!(
        r.billed_nanos == expected,
        "billed {} nano-USD for {billed} accepted requests, expected {expected}",
        r.billed_nanos
    );
    Ok(format!(
        "ledger reconciled, {} nano-USD billed = {billed} x 0.001 USD",
        r.billed_nanos
    ))
}

pub async fn run(
    plan: &Plan,
    args: &BenchArgs,
    wanted: &dyn Fn(&str) -> bool,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let c = plan.clients;
    let ev = Ids::Counter("ev");
    for (name, hot, callers, per_call, ids) in [
        ("settle.usage_events.inprocess", false, c, 1, ev),
        ("hot_account.usage_events.inprocess", true, c, 1, ev),
        (
            "settle.usage_events_bulk.inprocess",
            false,
            BULK_CALLERS,
            BULK_EVENTS,
            ev,
        ),
        // Runner events beside usage events: the same callers and events per call (not usage
        // events: see below).
        (
            super::runners::BULK_ROW,
            false,
            BULK_CALLERS,
            BULK_EVENTS,
            ev,
        ),
        (
            "settle.usage_events_bulk.inprocess.random_ids",
            false,
            BULK_CALLERS,
            BULK_EVENTS,
            Ids::Random,
        ),
        (
            "hot_account.usage_events_bulk.inprocess",
            true,
            BULK_CALLERS,
            BULK_EVENTS,
            ev,
        ),
    ] {
        if !wanted(name) {
            continue;
        }
        let dir = tempfile::tempdir()?;
        let engine = start_engine(&seed(dir.path(), ACCOUNTS)?).await?;
        if name == super::runners::BULK_ROW {
            let (n, el, h) =
                super::runners::heartbeats(&engine, callers, plan.duration, ACCOUNTS).await?;
            let note = format!(
                "events/s, {per_call} per call (as the HTTP rows' calls): each call reports its \
                 caller's {per_call} live runners RUNNING (heartbeats; runners spread over the \
                 accounts, each report billing the runner's time since its previous one: a \
                 line item per event, as a usage event's); latency per call; {}",
                super::runners::billed_as_reported(&engine, ACCOUNTS).await?
            );
            rows.push(Row::new(name, "tollgate", callers, n, el, Some(&h), note));
            continue;
        }
        let plan = Plan {
            clients: callers,
            ..*plan
        };
        let (n, el, h) = usage_events(&engine, &plan, per_call, ACCOUNTS, hot, ids).await?;
        let per_call = if per_call == 1 {
            "one per call".to_string()
        } else {
            format!("{per_call} per call (as the HTTP rows' calls)")
        };
        let note = format!(
            "events/s, {per_call}, {}; latency per call; {}",
            ids.describe(),
            reconciled(&engine, n).await?
        );
        rows.push(Row::new(name, "tollgate", callers, n, el, Some(&h), note));
    }
    // The same rows on a PostgreSQL store (a fresh schema each), with the bench's callers and
    // with as many as the naive PostgreSQL baseline has connections.
    if let Some(url) = &args.postgres_url {
        let mut clients = vec![c, POSTGRES_CLIENTS];
        clients.dedup();
        for (name, hot) in [
            ("settle.usage_events.inprocess", false),
            ("hot_account.usage_events.inprocess", true),
        ] {
            if !wanted(name) {
                continue;
            }
            for &clients in &clients {
                let plan = Plan { clients, ..*plan };
                let row = on_postgres(url, ACCOUNTS, |engine| async move {
                    let (n, el, h) =
                        usage_events(&engine, &plan, 1, ACCOUNTS, hot, Ids::Counter("pg")).await?;
                    let note = format!(
                        "events/s, one per call, PostgreSQL store; latency per call; {}",
                        reconciled(&engine, n).await?
                    );
                    Ok(Row::new(
                        name,
                        "tollgate-postgres",
                        clients,
                        n,
                        el,
                        Some(&h),
                        note,
                    ))
                })
                .await?;
                rows.push(row);
            }
        }
    }
    // Operator adjustments beside the usage events: another operation the writer commits.
    let name = "settle.adjustments.inprocess";
    if wanted(name) {
        let dir = tempfile::tempdir()?;
        let engine = start_engine(&seed(dir.path(), ACCOUNTS)?).await?;
        let (n, el, h, net) = adjustments(&engine, plan, ACCOUNTS).await?;
        let r = engine.read(|r| r.reconcile()).await?;
        anyhow::ensure!(
            r.is_clean() && r.billed_nanos == 0 && r.adjusted_nanos == i128::from(net),
            "the ledger after {n} adjustments (net {net} nano-USD): {}",
            r.summary()
        );
        let note = format!(
            "adjustments/s, one per call, each a new adjustment id, credits and debits of 0.001 \
             USD in turn; latency per call; ledger reconciled, {net} nano-USD adjusted net"
        );
        rows.push(Row::new(name, "tollgate", c, n, el, Some(&h), note));
    }
    for (name, hot) in [
        ("settle.lifecycle.inprocess", false),
        ("hot_account.lifecycle.inprocess", true),
    ] {
        if !wanted(name) {
            continue;
        }
        let dir = tempfile::tempdir()?;
        let engine = start_engine(&seed(dir.path(), ACCOUNTS)?).await?;
        let (n, el, h) = lifecycles(&engine, c, plan.duration, ACCOUNTS, hot, "lc").await?;
        let note = format!(
            "requests/s (submit+start+complete = 3 calls); latency of start; {}",
            reconciled(&engine, n).await?
        );
        rows.push(Row::new(name, "tollgate", c, n, el, Some(&h), note));
    }
    // The same write path with spending limits on every account: a block limit (a month in
    // Berlin, never reached) and an alert limit (a day, 0.01 USD: its thresholds are notified
    // as an account's spend reaches them), kept by every admission, settlement and charge.
    for (name, lifecycle_row, callers, per_call) in [
        ("settle.usage_events.inprocess.spending_limits", false, c, 1),
        (
            "settle.usage_events_bulk.inprocess.spending_limits",
            false,
            BULK_CALLERS,
            BULK_EVENTS,
        ),
        ("settle.lifecycle.inprocess.spending_limits", true, c, 1),
    ] {
        if !wanted(name) {
            continue;
        }
        let dir = tempfile::tempdir()?;
        let engine = start_engine(&seed(dir.path(), ACCOUNTS)?).await?;
        spending_limits(&engine, ACCOUNTS).await?;
        let plan = Plan {
            clients: callers,
            ..*plan
        };
        let (n, el, h) = if lifecycle_row {
            lifecycles(&engine, callers, plan.duration, ACCOUNTS, false, "lc").await?
        } else {
            usage_events(&engine, &plan, per_call, ACCOUNTS, false, ev).await?
        };
        let what = if lifecycle_row {
            "requests/s (submit+start+complete = 3 calls); latency of start".to_string()
        } else if per_call == 1 {
            "events/s, one per call; latency per call".to_string()
        } else {
            format!("events/s, {per_call} per call; latency per call")
        };
        let note = format!(
            "{what}; a block and an alert spending limit on every account; {}; {}",
            limits_counted(&engine, ACCOUNTS, n).await?,
            reconciled(&engine, n).await?
        );
        rows.push(Row::new(name, "tollgate", callers, n, el, Some(&h), note));
    }
    // The same write path with an auto top-up rule on every account, its one top-up in flight:
    // every operation takes the rule's decision.
    for (name, lifecycle_row) in [
        ("settle.usage_events.inprocess.auto_top_up", false),
        ("settle.lifecycle.inprocess.auto_top_up", true),
    ] {
        if !wanted(name) {
            continue;
        }
        let dir = tempfile::tempdir()?;
        let engine = start_engine(&seed(dir.path(), ACCOUNTS)?).await?;
        auto_top_up_rules(&engine, ACCOUNTS).await?;
        let (n, el, h) = if lifecycle_row {
            lifecycles(&engine, c, plan.duration, ACCOUNTS, false, "lc").await?
        } else {
            usage_events(&engine, plan, 1, ACCOUNTS, false, ev).await?
        };
        let what = if lifecycle_row {
            "requests/s (submit+start+complete = 3 calls); latency of start"
        } else {
            "events/s, one per call; latency per call"
        };
        let note = format!(
            "{what}; an auto top-up rule and a saved card on every account; {}; {}",
            auto_top_ups_started(&engine, ACCOUNTS).await?,
            reconciled(&engine, n).await?
        );
        rows.push(Row::new(name, "tollgate", c, n, el, Some(&h), note));
    }
    let name = "focus.year_export.inprocess";
    if wanted(name) {
        rows.push(focus_export(plan, name).await?);
    }
    rows.extend(admission(plan, wanted).await?);
    // The month's close of usage invoices, and the start latency while it runs (beside the
    // admission rows).
    rows.extend(super::invoices::run(plan, wanted).await?);
    // The minute's settlement of 10,000 running serverless runners, and the start latency while
    // it runs (beside the month's close).
    rows.extend(super::runners::run(plan, wanted).await?);
    // The sweep's deletion of runner event ids past their retention, and the start latency
    // while it runs.
    rows.extend(super::runners::prune(plan, wanted).await?);
    for path in trace_files(args) {
        let name = format!(
            "trace.replay.{}",
            path.file_stem().and_then(|s| s.to_str()).unwrap_or("trace")
        );
        if wanted(&name) {
            rows.push(replay(plan, &name, &path).await?);
        }
    }
    Ok(())
}

/// Requests held open through the admission rows.
const OPEN: usize = 1000;

/// Offered loads of the open-loop admission rows, in requests (submit, start, complete) per
/// second.
const ADMISSION_RATES: [u32; 3] = [1_000, 2_500, 5_000];

/// Start latency with 1,000 requests already in progress: with 64 callers that each wait for
/// an answer before the next call (the engine saturated, so latency = callers / throughput),
/// then at fixed offered loads, where requests arrive on a schedule whatever the answers'
/// pace, as a gateway's traffic does.
async fn admission(plan: &Plan, wanted: &dyn Fn(&str) -> bool) -> anyhow::Result<Vec<Row>> {
    let name = "admission.start.inprocess";
    let rate_name = |rate: u32| format!("{name}.rate_{rate}");
    let rates: Vec<u32> = ADMISSION_RATES
        .into_iter()
        .filter(|r| wanted(&rate_name(*r)))
        .collect();
    if !wanted(name) && rates.is_empty() {
        return Ok(Vec::new());
    }
    let dir = tempfile::tempdir()?;
    let engine = start_engine(&seed(dir.path(), ACCOUNTS)?).await?;
    let mut opened = Vec::new();
    for i in 0..OPEN {
        let engine = engine.clone();
        opened.push(tokio::spawn(async move {
            let id = RequestId::parse(&format!("open-{i}")).expect("valid");
            let account = AccountId::parse(&account_name(i % ACCOUNTS)).expect("valid");
            engine
                .execute(Op::Submit {
                    request_id: id.clone(),
                    account,
                    api_key: None,
                    endpoint: EndpointId::parse("bench/image").expect("valid"),
                })
                .await??;
            engine
                .execute(Op::Start {
                    request_id: id,
                    machine_type: None,
                    num_gpus: None,
                    hold_units: None,
                })
                .await??;
            anyhow::Ok(())
        }));
    }
    for o in opened {
        o.await??;
    }
    let mut rows = Vec::new();
    let mut completed = 0;
    if wanted(name) {
        let clients = 64;
        let (n, el, h) =
            lifecycles(&engine, clients, plan.duration, ACCOUNTS, false, "adm").await?;
        completed += n;
        rows.push(Row::new(
            name,
            "tollgate",
            clients,
            n,
            el,
            Some(&h),
            format!(
                "start decisions/s with {OPEN} requests in progress + {clients} callers; latency of start"
            ),
        ));
    }
    for rate in rates {
        let (n, el, h, most) = lifecycles_at_rate(&engine, rate, plan.duration).await?;
        completed += n;
        rows.push(Row::new(
            &rate_name(rate),
            "tollgate",
            most,
            n,
            el,
            Some(&h),
            format!(
                "{rate} requests/s offered (open loop) with {OPEN} in progress; latency of start; \
                 clients = most requests in flight at once"
            ),
        ));
    }
    // The requests held open are never billed; every completed lifecycle is, once.
    let check = reconciled(&engine, completed).await?;
    for row in &mut rows {
        row.note = format!("{}; after all admission rows: {check}", row.note);
    }
    Ok(rows)
}

/// Lifecycles arriving at `rate` per second for `duration` (paced by the millisecond), each on
/// a task of its own, so a slow answer does not hold the next arrival back. Returns the
/// requests completed, the time until the last one was, the latency of each start, and the
/// most requests that were in flight at once.
async fn lifecycles_at_rate(
    engine: &Engine,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<(u64, Duration, Histogram<u64>, usize)> {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut most = 0;
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < duration {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        while sent < due {
            let (engine, in_flight) = (engine.clone(), in_flight.clone());
            let account = AccountId::parse(&account_name(pick(0, sent, ACCOUNTS)))?;
            let id = format!("rate{rate}-{sent}");
            most = most.max(in_flight.fetch_add(1, Ordering::Relaxed) + 1);
            tasks.spawn(async move {
                let latency = lifecycle(engine, account, id).await;
                in_flight.fetch_sub(1, Ordering::Relaxed);
                latency
            });
            sent += 1;
        }
    }
    let mut h = histogram();
    while let Some(latency) = tasks.join_next().await {
        record(&mut h, latency??);
    }
    Ok((sent, start.elapsed(), h, most))
}

/// The tags that name the scale rows' events, one per round (each round's ids are new).
const SCALE_ROUNDS: [&str; 3] = ["sc0", "sc1", "sc2"];

/// The same settle benchmark with more accounts and with a long history. Every database is
/// seeded first; then the cases take turns, `plan.duration` each, for three rounds (one with
/// `--quick`), so that a slow minute of the machine falls on all of them alike: the flat-cost
/// target compares two of these rows. Each row is the events of its rounds over their time.
pub async fn scale(
    plan: &Plan,
    wanted: &dyn Fn(&str) -> bool,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let (accounts, history): (&[usize], usize) = if plan.quick {
        (&[1_000, 100_000], 100_000)
    } else {
        (&[1_000, 100_000, 1_000_000], 10_000_000)
    };
    let sc = Ids::Counter("sc");
    let mut cases: Vec<(String, usize, usize, Ids, u32)> = accounts
        .iter()
        .map(|&a| {
            (
                format!("scale.usage_events.accounts_{}", human(a)),
                a,
                0,
                sc,
                0,
            )
        })
        .collect();
    let long = format!("scale.usage_events.line_items_{}", human(history));
    cases.push((long.clone(), ACCOUNTS, history, sc, 0));
    cases.push((
        format!("{long}.random_ids"),
        ACCOUNTS,
        history,
        Ids::Random,
        0,
    ));
    cases.push((
        format!("scale.usage_events.statement_history_{STATEMENT_DAYS}d"),
        ACCOUNTS,
        0,
        sc,
        STATEMENT_DAYS,
    ));
    cases.retain(|(name, ..)| wanted(name));
    if cases.is_empty() {
        return Ok(());
    }
    let mut runs = Vec::new();
    for (name, accounts, history, ids, statement_days) in cases {
        let dir = tempfile::tempdir()?;
        let t = Instant::now();
        let path = seed_history(dir.path(), accounts, history, ids)?;
        if statement_days > 0 {
            seed_statement_history(&path, statement_days)?;
        }
        eprintln!(
            "  (seeded {accounts} accounts, {history} line items and {statement_days} days of \
             statement history in {:.1} s)",
            t.elapsed().as_secs_f64()
        );
        let engine = start_engine(&path).await?;
        runs.push(ScaleRun {
            name,
            accounts,
            history,
            statement_days,
            ids,
            engine,
            _dir: dir,
            events: 0,
            elapsed: Duration::ZERO,
            latency: histogram(),
            rounds: Vec::new(),
        });
    }
    let rounds = if plan.quick { 1 } else { SCALE_ROUNDS.len() };
    for (round, tag) in SCALE_ROUNDS[..rounds].iter().enumerate() {
        eprintln!("  (scale: round {} of {rounds})", round + 1);
        for run in &mut runs {
            let ids = match run.ids {
                Ids::Counter(_) => Ids::Counter(tag),
                Ids::Random => Ids::Random,
            };
            let (n, el, h) = usage_events(&run.engine, plan, 1, run.accounts, false, ids).await?;
            run.events += n;
            run.elapsed += el;
            run.latency.add(h).expect("same bounds");
            run.rounds
                .push(format!("{:.0}", n as f64 / el.as_secs_f64()));
            // What the round left behind (the idle move of recent line items, a checkpoint)
            // runs before the next case's round, not inside it.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    for run in runs {
        rows.push(Row::new(
            &run.name,
            "tollgate",
            plan.clients,
            run.events,
            run.elapsed,
            Some(&run.latency),
            format!(
                "events/s over {} accounts, {} line items and {} days of statement history \
                 per account before the run, {}; rounds taken in turn with the other scale \
                 rows: {} events/s",
                run.accounts,
                run.history,
                run.statement_days,
                run.ids.describe(),
                run.rounds.join(", ")
            ),
        ));
    }
    Ok(())
}

/// One scale row: its seeded database and engine, and what its rounds measured.
struct ScaleRun {
    name: String,
    accounts: usize,
    history: usize,
    /// Days of statement rows seeded per account before the run.
    statement_days: u32,
    ids: Ids,
    engine: Engine,
    /// The database's directory, removed when the row is done.
    _dir: tempfile::TempDir,
    events: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
    /// Events/s of each round.
    rounds: Vec<String>,
}

fn human(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// The trace files to replay: those named by `--trace`, else the Azure LLM traces in the
/// nearest `shared/data` folder found in the working directory or one of its ancestors (a
/// `shared` folder beside the checkout or above it), when there is one.
fn trace_files(args: &BenchArgs) -> Vec<PathBuf> {
    if !args.trace.is_empty() {
        return args.trace.clone();
    }
    let Ok(cwd) = std::env::current_dir() else {
        return Vec::new();
    };
    for dir in cwd.ancestors().map(|a| a.join("shared").join("data")) {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with("azure-llm-inference-trace-") && n.ends_with(".csv")
                })
            })
            .collect();
        if !found.is_empty() {
            found.sort();
            return found;
        }
    }
    Vec::new()
}

/// Replays a trace (`TIMESTAMP,ContextTokens,GeneratedTokens`) as usage events of the token
/// priced endpoint, as fast as possible, and checks the billed total against a recomputation
/// straight from the file.
async fn replay(plan: &Plan, name: &str, path: &Path) -> anyhow::Result<Row> {
    let text = std::fs::read_to_string(path)?;
    let mut rows: Vec<(u64, u64)> = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let mut f = line.split(',');
        let (_, ctx, gen) = (f.next(), f.next(), f.next());
        let parse = |s: Option<&str>| -> anyhow::Result<u64> {
            Ok(
                s.ok_or_else(|| anyhow::anyhow!("{}:{}: missing column", path.display(), i + 1))?
                    .trim()
                    .parse()?,
            )
        };
        rows.push((parse(ctx)?, parse(gen)?));
    }
    // The recomputation, in integers: 0.15 USD per 1M input tokens is 150 nano-USD a token,
    // 0.60 USD per 1M output tokens is 600.
    let expected: i64 = rows
        .iter()
        .map(|&(c, g)| c as i64 * 150 + g as i64 * 600)
        .sum();
    let dir = tempfile::tempdir()?;
    let engine = start_engine(&seed(dir.path(), 1)?).await?;
    let account = AccountId::parse(&account_name(0)).expect("valid");
    let now = engine.now();
    let ops: Vec<Op> = rows
        .iter()
        .enumerate()
        .map(|(i, &(ctx, gen))| {
            Op::UsageEvent(UsageEvent {
                event_id: RequestId::parse(&format!("trace-{i}")).expect("valid"),
                account: account.clone(),
                endpoint: EndpointId::parse("bench/llm").expect("valid"),
                api_key: None,
                timestamp: now,
                status_code: 200,
                output: Output {
                    tokens: Some(Tokens {
                        input: ctx,
                        output: gen,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                billable_units: None,
                queue_seconds: None,
                inference_seconds: Some(Decimal::ZERO),
                machine_type: None,
                num_gpus: None,
            })
        })
        .collect();
    let events = ops.len() as u64;
    let chunk = if plan.quick { 500 } else { 1000 };
    let start = Instant::now();
    let mut tasks = Vec::new();
    let mut h = histogram();
    // A few concurrent callers, each sending chunks as a platform's metering pipeline would.
    let chunks: Vec<Vec<Op>> = ops.chunks(chunk).map(|c| c.to_vec()).collect();
    let per_caller = chunks.len().div_ceil(4).max(1);
    for group in chunks.chunks(per_caller).map(|g| g.to_vec()) {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for c in group {
                let t = Instant::now();
                for a in engine.execute_many(c).await? {
                    anyhow::ensure!(
                        matches!(
                            a,
                            Ok(Outcome::Completed {
                                replayed: false,
                                ..
                            })
                        ),
                        "trace event not billed: {a:?}"
                    );
                }
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    for t in tasks {
        for l in t.await?? {
            record(&mut h, l);
        }
    }
    let elapsed = start.elapsed();
    let r = engine.read(|r| r.reconcile()).await?;
    anyhow::ensure!(
        r.is_clean(),
        "the ledger does not reconcile after the replay: {}",
        r.summary()
    );
    anyhow::ensure!(
        r.billed_nanos == expected as i128,
        "billed {} nano-USD, the file says {expected}",
        r.billed_nanos
    );
    Ok(Row::new(
        name,
        "tollgate",
        4,
        events,
        elapsed,
        Some(&h),
        format!(
            "events/s, {events} events in chunks of {chunk}; latency per chunk; billed {} nano-USD = recomputed from the file",
            r.billed_nanos
        ),
    ))
}

/// A year's FOCUS export for a busy account: a year of usage (an image every 5 minutes, so an
/// hour rollup row per hour: 8,760 of them) billed through the engine on a clock moved along
/// the year, then the twelve monthly reports (`source=invoice`, by charge month) read page by
/// page and rendered as CSV, as `GET /v1/account/focus` streams them. Under `--quick`, a month.
async fn focus_export(plan: &Plan, name: &str) -> anyhow::Result<Row> {
    use tollgate_query::focus::{FocusQuery, FocusReport, FocusSource, DEFAULT_PAGE_SPAN_MS};
    use tollgate_query::month::Month;
    let dir = tempfile::tempdir()?;
    let path = seed(dir.path(), 1)?;
    // 2025-01-01T00:00:00Z.
    const START: i64 = 1_735_689_600_000;
    let now = Arc::new(AtomicI64::new(START));
    let clock = {
        let now = now.clone();
        Arc::new(move || tollgate_core::Timestamp(now.load(Ordering::SeqCst)))
    };
    let engine = Engine::start(Box::new(SqliteStore::open(&path)?), clock)?;
    let doc = document::parse(BENCH_CATALOG).map_err(|e| anyhow::anyhow!("{e}"))?;
    engine.admin(AdminCmd::ApplyCatalog(Box::new(doc))).await?;
    let account = AccountId::parse(&account_name(0))?;
    let months: u32 = if plan.quick { 1 } else { 12 };
    let end = Month::parse(&format!("2025-{:02}", months))
        .map_err(|e| anyhow::anyhow!(e))?
        .end()
        .0;
    let (step, mut t, mut events) = (5 * 60_000, START, 0u64);
    let seeding = Instant::now();
    while t < end {
        let day_end = (t + 86_400_000).min(end);
        let mut ops = Vec::new();
        while t < day_end {
            ops.push(image_event(
                format!("fx-{t}"),
                account.clone(),
                tollgate_core::Timestamp(t),
            ));
            t += step;
        }
        now.store(day_end, Ordering::SeqCst);
        events += ops.len() as u64;
        for answer in engine.execute_many(ops).await? {
            anyhow::ensure!(answer.is_ok(), "a seeding event was refused: {answer:?}");
        }
    }
    eprintln!(
        "  (seeded {events} usage events over {months} months in {:.1} s)",
        seeding.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let (mut rows, mut bytes, mut usage) = (0u64, 0usize, Nanos::ZERO);
    for m in 1..=months {
        let q = FocusQuery {
            account: account.clone(),
            source: FocusSource::Invoice,
            billing_month: None,
            charge_month: Some(
                Month::parse(&format!("2025-{m:02}")).map_err(|e| anyhow::anyhow!(e))?,
            ),
            range: Default::default(),
            page_span_ms: DEFAULT_PAGE_SPAN_MS,
        };
        let mut report = FocusReport::open(&engine, q).await?;
        bytes += tollgate_api::focus::header_line().len();
        while let Some(page) = report.next_page().await? {
            rows += page.len() as u64;
            for r in page.iter().filter(|r| r.is_usage()) {
                usage = usage.checked_add(r.effective_cost)?;
            }
            bytes += tollgate_api::focus::csv_lines(&report.context, &page).len();
        }
    }
    let elapsed = started.elapsed();
    anyhow::ensure!(
        usage.0 == i64::try_from(events)? * COST_NANOS,
        "the reports' usage ({usage:?}) is not the {events} events billed"
    );
    let note = format!(
        "FOCUS rows/s: {months} monthly reports of one account with {events} usage events \
         (an hour rollup row per hour), {rows} rows, {:.1} MB of CSV in {:.2} s; usage sums to \
         what was billed",
        bytes as f64 / 1e6,
        elapsed.as_secs_f64()
    );
    Ok(Row::new(name, "tollgate", 1, rows, elapsed, None, note))
}

#[cfg(test)]
mod tests {
    use super::with_search_path;

    #[test]
    fn the_search_path_joins_the_url_options() {
        assert_eq!(
            with_search_path("postgres://u@h/db", "s"),
            "postgres://u@h/db?options=-csearch_path%3Ds"
        );
        assert_eq!(
            with_search_path("postgres://u@h/db?sslmode=disable", "s"),
            "postgres://u@h/db?sslmode=disable&options=-csearch_path%3Ds"
        );
        assert_eq!(
            with_search_path("postgres://u@h/db?options=-cx%3D1&a=b", "s"),
            "postgres://u@h/db?options=-cx%3D1%20-csearch_path%3Ds&a=b"
        );
    }
}
