//! The month's close of usage invoices, in-process: many invoice-billed accounts with charges
//! in one month, the clock moved into the next month, and the close the server's month-close
//! task runs (`Engine::close_elapsed_months`: the accounts with charges found by an index,
//! closed a few hundred per batch); alone, and with callers making `start` decisions while it
//! runs.

use super::baseline::{ACCOUNTS, COST_NANOS};
use super::engine::{
    account_name, image_event, lifecycle, seed, start_engine_with, BULK_CALLERS, BULK_EVENTS,
};
use super::report::{histogram, record, Row};
use super::Plan;
use hdrhistogram::Histogram;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_core::ids::AccountId;
use tollgate_core::machine::Outcome;
use tollgate_core::time::next_month_start;
use tollgate_core::Timestamp;
use tollgate_engine::{system_clock, Clock, Engine};
use tollgate_store::sqlite::SqliteStore;

/// Usage events per invoice-billed account before the close (one image each, 0.001 USD).
const EVENTS_PER_ACCOUNT: usize = 3;
/// The callers making `start` decisions while the month closes (and while runners settle).
pub(super) const START_CALLERS: usize = 4;

/// The invoice-billed accounts' terms: invoice billing from the beginning.
const INVOICE_TERMS: &str = r#"[{"effective_from":0,"discounts":{},"concurrency_override":1000000,"lock_threshold_nanos":0,"billing":"invoice"}]"#;

fn invoice_account(i: usize) -> String {
    format!("bench-inv-{i}")
}

/// The rows: `invoices.close_month.inprocess` (accounts closed per second, and the whole
/// close's time) and `admission.start.inprocess.while_closing` (the latency of `start` while
/// the close runs, beside the start latency of the same callers just before it).
pub async fn run(plan: &Plan, wanted: &dyn Fn(&str) -> bool) -> anyhow::Result<Vec<Row>> {
    let accounts = if plan.quick { 500 } else { 10_000 };
    let mut rows = Vec::new();
    let name = "invoices.close_month.inprocess";
    if wanted(name) {
        let month = Month::seeded(accounts).await?;
        let t = Instant::now();
        let issued = month.engine.close_elapsed_months().await?;
        let took = t.elapsed();
        let check = month.check(issued.len()).await?;
        rows.push(Row::new(
            name,
            "tollgate",
            1,
            accounts as u64,
            took,
            None,
            format!(
                "accounts closed/s: the month's close of {accounts} invoice-billed accounts \
                 ({EVENTS_PER_ACCOUNT} charges each) took {:.1} ms in all, one usage invoice \
                 each; {check}",
                took.as_secs_f64() * 1000.0
            ),
        ));
    }
    let name = "admission.start.inprocess.while_closing";
    if wanted(name) {
        let month = Month::seeded(accounts).await?;
        // The same callers for as long, just before the close: what the close adds.
        let quiet = Starts::begin(&month.engine, "quiet");
        tokio::time::sleep(plan.duration).await;
        let (quiet_n, _, quiet_h) = quiet.end().await?;
        let starts = Starts::begin(&month.engine, "closing");
        let t = Instant::now();
        let issued = month.engine.close_elapsed_months().await?;
        let took = t.elapsed();
        let (n, el, h) = starts.end().await?;
        let check = month.check(issued.len()).await?;
        let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p);
        rows.push(Row::new(
            name,
            "tollgate",
            START_CALLERS,
            n,
            el,
            Some(&h),
            format!(
                "start decisions/s of {START_CALLERS} callers (submit+start+complete on prepaid \
                 accounts) while the month's close of {accounts} invoice-billed accounts ran \
                 ({:.1} ms); latency of start; the same callers just before the close: \
                 {quiet_n} starts, p50/p99/p99.9 {}/{}/{} us; {check}",
                took.as_secs_f64() * 1000.0,
                q(&quiet_h, 0.5),
                q(&quiet_h, 0.99),
                q(&quiet_h, 0.999),
            ),
        ));
    }
    Ok(rows)
}

/// A database whose invoice-billed accounts have charges in the current month, and an engine
/// on it whose clock has since moved into the next month.
struct Month {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    engine: Engine,
    accounts: usize,
}

impl Month {
    async fn seeded(accounts: usize) -> anyhow::Result<Month> {
        let dir = tempfile::tempdir()?;
        let path = seed(dir.path(), ACCOUNTS)?;
        add_invoice_accounts(&path, accounts)?;
        let offset = Arc::new(AtomicI64::new(0));
        let clock: Clock = {
            let (system, offset) = (system_clock(), offset.clone());
            Arc::new(move || Timestamp(system().0 + offset.load(Ordering::Relaxed)))
        };
        let engine = start_engine_with(Box::new(SqliteStore::open(&path)?), clock).await?;
        let t = Instant::now();
        charge(&engine, accounts).await?;
        // Into the next month (a second past its start): this month is now a past one.
        let now = engine.now();
        offset.store(next_month_start(now).0 - now.0 + 1_000, Ordering::Relaxed);
        eprintln!(
            "  (charged {accounts} invoice-billed accounts {EVENTS_PER_ACCOUNT} times each in \
             {:.1} s; the clock moved into the next month)",
            t.elapsed().as_secs_f64()
        );
        Ok(Month {
            _dir: dir,
            path,
            engine,
            accounts,
        })
    }

    /// Checks that the close issued one usage invoice per account, whose totals are every
    /// charge, and that the ledger reconciles (each usage invoice's lines add up to it).
    async fn check(&self, issued: usize) -> anyhow::Result<String> {
        anyhow::ensure!(
            issued == self.accounts,
            "the close issued {issued} usage invoices for {} accounts with charges",
            self.accounts
        );
        let r = self.engine.read(|r| r.reconcile()).await?;
        anyhow::ensure!(
            r.is_clean(),
            "the ledger does not reconcile: {}",
            r.summary()
        );
        let charged = (self.accounts * EVENTS_PER_ACCOUNT) as i64 * COST_NANOS;
        let c = rusqlite::Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        let (count, total, open): (i64, i64, i64) = c.query_row(
            "SELECT COUNT(*), COALESCE(SUM(total_nanos), 0), \
             (SELECT COUNT(*) FROM accounts WHERE period_charges > 0) \
             FROM invoices WHERE kind = 'usage'",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )?;
        anyhow::ensure!(
            count == self.accounts as i64 && total == charged && open == 0,
            "{count} usage invoices totalling {total} nano-USD ({open} periods still open), \
             expected {} totalling {charged}",
            self.accounts
        );
        Ok(format!(
            "{count} usage invoices totalling {total} nano-USD = every charge, ledger and \
             invoice lines reconciled"
        ))
    }
}

/// Adds `n` invoice-billed accounts (no credits: they are invoiced) to the seeded database.
fn add_invoice_accounts(path: &Path, n: usize) -> anyhow::Result<()> {
    let mut c = rusqlite::Connection::open(path)?;
    c.pragma_update(None, "synchronous", "OFF")?;
    let tx = c.transaction()?;
    {
        let mut acct = tx.prepare(
            "INSERT INTO accounts (username, created_at, balance_nanos, terms) \
             VALUES (?1, 0, 0, ?2)",
        )?;
        for i in 0..n {
            acct.execute(rusqlite::params![invoice_account(i), INVOICE_TERMS])?;
        }
    }
    tx.commit()?;
    super::quiesce();
    Ok(())
}

/// Bills `EVENTS_PER_ACCOUNT` usage events to each of the first `accounts` invoice-billed
/// accounts, in calls of 100 events from the bulk rows' callers.
async fn charge(engine: &Engine, accounts: usize) -> anyhow::Result<()> {
    let events = accounts * EVENTS_PER_ACCOUNT;
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..BULK_CALLERS {
        let (engine, next) = (engine.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let from = next.fetch_add(BULK_EVENTS, Ordering::Relaxed);
                if from >= events {
                    return anyhow::Ok(());
                }
                let now = engine.now();
                let ops = (from..(from + BULK_EVENTS).min(events))
                    .map(|e| {
                        let account = AccountId::parse(&invoice_account(e % accounts))?;
                        Ok(image_event(format!("inv-ev-{e}"), account, now))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                for answer in engine.execute_many(ops).await? {
                    match answer {
                        Ok(Outcome::Completed {
                            replayed: false, ..
                        }) => {}
                        other => anyhow::bail!("usage event not billed: {other:?}"),
                    }
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// One caller's starts and their latencies.
type Caller = (u64, Histogram<u64>);

/// `START_CALLERS` callers making lifecycles (the latency of their `start`) on prepaid
/// accounts until ended.
pub(super) struct Starts {
    stop: Arc<AtomicBool>,
    started: Instant,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Caller>>>,
}

impl Starts {
    /// On every prepaid bench account.
    fn begin(engine: &Engine, tag: &'static str) -> Starts {
        Starts::begin_on(engine, tag, 0..ACCOUNTS)
    }

    /// On the prepaid bench accounts numbered in `accounts`.
    pub(super) fn begin_on(
        engine: &Engine,
        tag: &'static str,
        accounts: std::ops::Range<usize>,
    ) -> Starts {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..START_CALLERS)
            .map(|c| {
                let (engine, stop, accounts) = (engine.clone(), stop.clone(), accounts.clone());
                tokio::spawn(async move {
                    let mut h = histogram();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let account = AccountId::parse(&account_name(
                            accounts.start + (c * 7919 + n as usize) % accounts.len(),
                        ))?;
                        let latency =
                            lifecycle(engine.clone(), account, format!("{tag}-{c}-{n}")).await?;
                        record(&mut h, latency);
                        n += 1;
                    }
                    anyhow::Ok((n, h))
                })
            })
            .collect();
        Starts {
            stop,
            started: Instant::now(),
            tasks,
        }
    }

    /// Stops the callers (each finishes its lifecycle in flight): the starts made, the time,
    /// their latencies.
    pub(super) async fn end(self) -> anyhow::Result<(u64, Duration, Histogram<u64>)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = histogram();
        let mut total = 0;
        for t in self.tasks {
            let (n, h) = t.await??;
            total += n;
            all.add(h).expect("same bounds");
        }
        Ok((total, self.started.elapsed(), all))
    }
}
