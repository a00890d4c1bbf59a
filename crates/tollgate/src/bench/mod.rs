//! `tollgate bench`: tollgate's write path measured side by side with the naive design and the
//! disk's limit, in one run on the machine at hand. Prints a table and writes the same figures
//! as JSON.
//!
//! The rows: the disk (`baseline.rs`: fdatasync per record and per 1,000), the naive
//! per-request transaction on SQLite and, with a PostgreSQL URL, on PostgreSQL (`naive-sqlite`,
//! `naive-postgres`); tollgate in-process (`engine.rs`: usage events and lifecycles spread over
//! accounts and on one hot account, and spread over accounts that each have a block and an alert
//! spending limit (`*.spending_limits`), and over accounts that each have an auto top-up rule with
//! its one top-up in flight (`*.auto_top_up`), operator adjustments spread over accounts, admission with
//! requests in progress (saturated, and at fixed offered loads in an open loop), the trace
//! replays, and the scale rows; `invoices.rs`: the month's close of usage invoices for many
//! invoice-billed accounts, alone and with `start` decisions made while it runs; `runners.rs`:
//! serverless runner events that heartbeat live runners, beside the bulk usage events, and the
//! minute's settlement of 10,000 running runners with `start` decisions made while it runs and
//! without it, and the sweep's deletion of runner event ids past their retention), with a PostgreSQL URL also the usage-event rows on a PostgreSQL store
//! (`tollgate-postgres`, in a schema created for the row and dropped after it, with the bench's
//! callers and with as many as the naive PostgreSQL baseline); and tollgate over HTTP
//! (`http.rs`, with wrk: usage events, runner events beside them, lifecycle calls; and with
//! reqwest the latency of `start`, also while hostile connections are held open, and while
//! purchases write events, with and without a webhook whose receiver never answers); gateway mode
//! (`gateway.rs`: the latency the gateway adds through its queue and direct APIs against the
//! same model server called straight, the queue's requests/s with 1,000 callers on 100
//! upstream slots, a request retried once and billed once); and the dashboard's pages (`dashboard.rs`: every page of the
//! customer's and the console's navigation rendered in-process for an account with a year of
//! history, server time per page). Every tollgate row is compared with the baselines
//! (`report.rs`), a `tollgate-postgres` row with the naive design on the same PostgreSQL
//! server.
//!
//! Throughput and latency figures are measurements, not money: this module is the one place
//! outside rendering where float arithmetic is allowed.
#![allow(clippy::float_arithmetic)]

mod baseline;
mod dashboard;
mod engine;
mod gateway;
mod http;
mod invoices;
mod report;
mod runners;

use clap::Args;
use report::Row;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Clone)]
pub struct BenchArgs {
    /// A short smoke run of every row (about a second each, small scales).
    #[arg(long)]
    pub quick: bool,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Seconds per measured row (default 5; 1 with --quick).
    #[arg(long, value_parser = positive_seconds)]
    pub seconds: Option<f64>,
    /// Concurrent callers of the in-process settle rows with one operation per call (the rows
    /// with 100 events per call have the HTTP rows' 32).
    #[arg(long, default_value_t = 256)]
    pub clients: usize,
    /// Run only the rows whose workload name contains this text (repeatable); a text that
    /// names no row of the run is an error, which lists the rows' names.
    #[arg(long)]
    pub only: Vec<String>,
    /// A PostgreSQL URL for the PostgreSQL rows (also read from TOLLGATE_BENCH_POSTGRES_URL):
    /// the naive PostgreSQL baseline, and tollgate's in-process usage-event rows (spread and
    /// hot account) on a PostgreSQL store. The bench creates and drops its own tables and
    /// schemas.
    #[arg(long, env = "TOLLGATE_BENCH_POSTGRES_URL")]
    pub postgres_url: Option<String>,
    /// The Azure LLM trace files to replay (repeatable). By default,
    /// azure-llm-inference-trace-*.csv looked for in a `shared/data` folder beside the checkout
    /// or above it (in the working directory or one of its ancestors), when present.
    #[arg(long)]
    pub trace: Vec<PathBuf>,
}

/// Lets the disk finish what earlier rows left to write back, so that no row pays for
/// another's writes (the scale rows seed gigabytes).
pub fn quiesce() {
    let _ = std::process::Command::new("sync").status();
    std::thread::sleep(Duration::from_millis(200));
}

/// How long and how large each row runs.
#[derive(Clone, Copy)]
pub struct Plan {
    pub quick: bool,
    pub duration: Duration,
    pub clients: usize,
}

/// `--seconds`: a positive, finite number.
fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 => Ok(s),
        _ => Err(format!(
            "expected a positive number of seconds, got '{text}'"
        )),
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    // Where the figures go is checked before a row runs, not after the last one.
    if let Some(path) = &args.json {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        if !dir.is_dir() {
            anyhow::bail!(
                "--json {}: the folder {} does not exist",
                path.display(),
                dir.display()
            );
        }
    }
    let secs = args.seconds.unwrap_or(if args.quick { 1.0 } else { 5.0 });
    let plan = Plan {
        quick: args.quick,
        duration: Duration::from_millis((secs * 1000.0) as u64),
        clients: args.clients.max(1),
    };
    // Every row asks `wanted` before it runs: the names asked are the run's rows, which an
    // `--only` text that matched none of them is told.
    let asked: std::sync::Mutex<Vec<String>> = std::sync::Mutex::default();
    let wanted = |name: &str| {
        asked.lock().expect("names").push(name.to_string());
        args.only.is_empty() || args.only.iter().any(|o| name.contains(o))
    };
    let mut rows: Vec<Row> = Vec::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    eprintln!(
        "tollgate bench: {} s per row{}; {} cores",
        secs,
        if args.quick { " (quick)" } else { "" },
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    // The disk's limit and the naive design, measured first, in the same run.
    baseline::run(&plan, &args, &wanted, &mut rows)?;
    rt.block_on(engine::run(&plan, &args, &wanted, &mut rows))?;
    rt.block_on(http::run(&plan, &wanted, &mut rows))?;
    // Gateway mode: the gateway's added latency, its queue's throughput, a retried request.
    rt.block_on(gateway::run(&plan, &wanted, &mut rows))?;
    // The dashboard's pages, over a year of one account's history.
    rt.block_on(dashboard::run(&plan, &wanted, &mut rows))?;
    // Last: seeding millions of rows leaves the disk busy writing back for a while.
    rt.block_on(engine::scale(&plan, &wanted, &mut rows))?;

    let mut asked = asked.into_inner().expect("names");
    asked.sort();
    asked.dedup();
    let unmatched: Vec<&String> = args
        .only
        .iter()
        .filter(|o| !asked.iter().any(|name| name.contains(o.as_str())))
        .collect();
    if !unmatched.is_empty() {
        anyhow::bail!(
            "--only {}: no row of this run has that in its name (nothing written); the rows \
             are: {}",
            unmatched
                .iter()
                .map(|o| format!("'{o}'"))
                .collect::<Vec<_>>()
                .join(", "),
            asked.join(", ")
        );
    }
    report::print(&rows);
    if let Some(path) = &args.json {
        report::write_json(path, &rows, &plan)?;
        eprintln!("figures written to {}", path.display());
    }
    Ok(())
}
