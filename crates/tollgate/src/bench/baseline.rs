//! The baselines, same workload and same durability as tollgate (the answer waits for the
//! disk): the naive per-request db transaction on SQLite (WAL, synchronous=FULL) and
//! PostgreSQL, and the disk's own limit (append one record, fdatasync; and in batches).

use super::report::{histogram, record, Row};
use super::{BenchArgs, Plan};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Accounts the spread-out workloads draw from.
pub const ACCOUNTS: usize = 1000;
/// What one request costs in every workload: 0.001 USD.
pub const COST_NANOS: i64 = 1_000_000;
/// Connections of the naive PostgreSQL baseline (tollgate on PostgreSQL is also measured with
/// this many callers, for a ratio at equal clients).
pub const POSTGRES_CLIENTS: usize = 16;

pub fn run(
    plan: &Plan,
    args: &BenchArgs,
    wanted: &dyn Fn(&str) -> bool,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    if wanted("disk.fdatasync.one_record") {
        rows.push(disk(plan, 1)?);
    }
    if wanted("disk.fdatasync.batch_1000") {
        rows.push(disk(plan, 1000)?);
    }
    for (clients, hot) in [(1, false), (16, false), (16, true)] {
        let name = if hot {
            "hot_account.naive_settle"
        } else {
            "settle.naive_settle"
        };
        if wanted(name) {
            rows.push(naive_sqlite(plan, name, clients, hot)?);
        }
    }
    match &args.postgres_url {
        Some(url) => {
            for hot in [false, true] {
                let name = if hot {
                    "hot_account.naive_settle"
                } else {
                    "settle.naive_settle"
                };
                if wanted(name) {
                    rows.push(naive_postgres(plan, url, name, POSTGRES_CLIENTS, hot)?);
                }
            }
        }
        None => {
            eprintln!(
                "  (no TOLLGATE_BENCH_POSTGRES_URL: skipping the naive PostgreSQL baseline and \
                 tollgate on PostgreSQL)"
            )
        }
    }
    Ok(())
}

/// Appends 64-byte records and calls fdatasync after every `batch` of them.
fn disk(plan: &Plan, batch: usize) -> anyhow::Result<Row> {
    super::quiesce();
    let dir = tempfile::tempdir()?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("log"))?;
    let record_bytes = [7u8; 64];
    let mut h = histogram();
    let mut records = 0u64;
    let mut buf = Vec::with_capacity(64 * batch);
    let start = Instant::now();
    while start.elapsed() < plan.duration {
        let t = Instant::now();
        buf.clear();
        for _ in 0..batch {
            buf.extend_from_slice(&record_bytes);
        }
        f.write_all(&buf)?;
        f.sync_data()?;
        record(&mut h, t.elapsed());
        records += batch as u64;
    }
    let name = if batch == 1 {
        "disk.fdatasync.one_record".to_string()
    } else {
        format!("disk.fdatasync.batch_{batch}")
    };
    Ok(Row::new(
        &name,
        "disk",
        1,
        records,
        start.elapsed(),
        Some(&h),
        format!("records/s; latency per fdatasync of {batch} record(s)"),
    ))
}

/// Runs `clients` threads calling `op(client, i)` until the plan's time is up.
fn drive<S: Send + 'static>(
    plan: &Plan,
    clients: usize,
    setup: impl Fn(usize) -> anyhow::Result<S> + Sync,
    op: impl Fn(&mut S, usize, u64) -> anyhow::Result<()> + Sync + Send + Copy + 'static,
) -> anyhow::Result<(u64, Duration, hdrhistogram::Histogram<u64>)> {
    let states = (0..clients)
        .map(&setup)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = states
        .into_iter()
        .enumerate()
        .map(|(c, mut st)| {
            let stop = stop.clone();
            std::thread::spawn(
                move || -> anyhow::Result<(u64, hdrhistogram::Histogram<u64>)> {
                    let mut h = histogram();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        op(&mut st, c, n)?;
                        record(&mut h, t.elapsed());
                        n += 1;
                    }
                    Ok((n, h))
                },
            )
        })
        .collect();
    std::thread::sleep(plan.duration);
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut all = histogram();
    for handle in handles {
        let (n, h) = handle.join().expect("bench thread")?;
        total += n;
        all.add(h).expect("same bounds");
    }
    Ok((total, start.elapsed(), all))
}

fn naive_sqlite(plan: &Plan, name: &str, clients: usize, hot: bool) -> anyhow::Result<Row> {
    super::quiesce();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("naive.db");
    let open = |p: &std::path::Path| -> anyhow::Result<rusqlite::Connection> {
        let c = rusqlite::Connection::open(p)?;
        c.pragma_update(None, "journal_mode", "WAL")?;
        c.pragma_update(None, "synchronous", "FULL")?;
        c.busy_timeout(Duration::from_secs(30))?;
        Ok(c)
    };
    {
        let mut c = open(&path)?;
        c.execute_batch(
            "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
             CREATE TABLE line_items (id INTEGER PRIMARY KEY, account INTEGER NOT NULL,
                 request_id TEXT NOT NULL UNIQUE, cost INTEGER NOT NULL, at INTEGER NOT NULL);",
        )?;
        let tx = c.transaction()?;
        for i in 0..ACCOUNTS {
            tx.execute(
                "INSERT INTO accounts (id, balance) VALUES (?1, ?2)",
                rusqlite::params![i as i64, i64::MAX / 4],
            )?;
        }
        tx.commit()?;
    }
    let (ops, elapsed, h) = drive(
        plan,
        clients,
        |_| open(&path),
        move |c: &mut rusqlite::Connection, client, n| {
            let account = if hot {
                0
            } else {
                ((client * 7919 + n as usize) % ACCOUNTS) as i64
            };
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let moved = tx.execute(
                "UPDATE accounts SET balance = balance - ?1 WHERE id = ?2 AND balance >= ?1",
                rusqlite::params![COST_NANOS, account],
            )?;
            anyhow::ensure!(moved == 1, "naive baseline ran out of balance");
            tx.execute(
                "INSERT INTO line_items (account, request_id, cost, at) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![account, format!("{client}-{n}"), COST_NANOS, n as i64],
            )?;
            tx.commit()?;
            Ok(())
        },
    )?;
    Ok(Row::new(
        name,
        "naive-sqlite",
        clients,
        ops,
        elapsed,
        Some(&h),
        "one db transaction per request: UPDATE balance WHERE balance >= cost + INSERT line item",
    ))
}

fn naive_postgres(
    plan: &Plan,
    url: &str,
    name: &str,
    clients: usize,
    hot: bool,
) -> anyhow::Result<Row> {
    let connect = || postgres::Client::connect(url, postgres::NoTls);
    {
        let mut c = connect()?;
        c.batch_execute(
            "DROP TABLE IF EXISTS tollgate_bench_line_items, tollgate_bench_accounts;
             CREATE TABLE tollgate_bench_accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL);
             CREATE TABLE tollgate_bench_line_items (id BIGSERIAL PRIMARY KEY,
                 account BIGINT NOT NULL, request_id TEXT NOT NULL UNIQUE, cost BIGINT NOT NULL,
                 at BIGINT NOT NULL);",
        )?;
        c.execute(
            "INSERT INTO tollgate_bench_accounts SELECT g, $1 FROM generate_series(0::bigint, $2::bigint) g",
            &[&(i64::MAX / 4), &(ACCOUNTS as i64 - 1)],
        )?;
    }
    super::quiesce();
    let (ops, elapsed, h) = drive(
        plan,
        clients,
        |_| Ok(connect()?),
        move |c: &mut postgres::Client, client, n| {
            let account = if hot {
                0
            } else {
                ((client * 7919 + n as usize) % ACCOUNTS) as i64
            };
            let mut tx = c.transaction()?;
            let moved = tx.execute(
                "UPDATE tollgate_bench_accounts SET balance = balance - $1 \
                 WHERE id = $2 AND balance >= $1",
                &[&COST_NANOS, &account],
            )?;
            anyhow::ensure!(moved == 1, "naive baseline ran out of balance");
            tx.execute(
                "INSERT INTO tollgate_bench_line_items (account, request_id, cost, at) \
                 VALUES ($1, $2, $3, $4)",
                &[&account, &format!("{client}-{n}"), &COST_NANOS, &(n as i64)],
            )?;
            tx.commit()?;
            Ok(())
        },
    )?;
    let mut c = connect()?;
    c.batch_execute("DROP TABLE IF EXISTS tollgate_bench_line_items, tollgate_bench_accounts")?;
    Ok(Row::new(
        name,
        "naive-postgres",
        clients,
        ops,
        elapsed,
        Some(&h),
        "one db transaction per request: UPDATE balance WHERE balance >= cost + INSERT line item",
    ))
}
