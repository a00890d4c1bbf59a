//! Bench figures: one row per (workload, system, clients), printed as a table with ratios to
//! the baselines, and written as JSON.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub workload: String,
    /// `tollgate` (on SQLite), `tollgate-postgres`, `naive-sqlite`, `naive-postgres`, `disk`,
    /// or `no-gateway` (the gateway rows' model server called straight).
    pub system: String,
    pub clients: usize,
    pub ops_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p999_us: Option<u64>,
    /// The slowest operation, where a row reports it (the dashboard's pages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_us: Option<u64>,
    /// What an op is, and anything checked along the way.
    pub note: String,
}

/// Microsecond latencies, up to a minute.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(d.as_micros().max(1) as u64);
}

impl Row {
    pub fn new(
        workload: &str,
        system: &str,
        clients: usize,
        ops: u64,
        elapsed: Duration,
        latency: Option<&Histogram<u64>>,
        note: impl Into<String>,
    ) -> Row {
        let q = |p: f64| {
            latency
                .filter(|h| !h.is_empty())
                .map(|h| h.value_at_quantile(p))
        };
        Row::with_latencies(
            workload,
            system,
            clients,
            ops,
            elapsed,
            [q(0.50), q(0.99), q(0.999)],
            note,
        )
    }

    /// A row whose percentiles were measured elsewhere (e.g. by wrk).
    pub fn with_latencies(
        workload: &str,
        system: &str,
        clients: usize,
        ops: u64,
        elapsed: Duration,
        [p50, p99, p999]: [Option<u64>; 3],
        note: impl Into<String>,
    ) -> Row {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let row = Row {
            workload: workload.into(),
            system: system.into(),
            clients,
            ops_per_s: (ops as f64 / secs).round(),
            p50_us: p50,
            p99_us: p99,
            p999_us: p999,
            max_us: None,
            note: note.into(),
        };
        eprintln!("  {}", line(&row));
        row
    }
}

fn fmt_opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn line(r: &Row) -> String {
    format!(
        "{:<48} {:<17} {:>7} {:>12.0} {:>8} {:>8} {:>8}  {}",
        r.workload,
        r.system,
        r.clients,
        r.ops_per_s,
        fmt_opt(r.p50_us),
        fmt_opt(r.p99_us),
        fmt_opt(r.p999_us),
        r.note
    )
}

/// tollgate's own rows, on either store.
fn is_tollgate(r: &Row) -> bool {
    r.system == "tollgate" || r.system == "tollgate-postgres"
}

/// The gateway's rows (`gateway.rs`): compared with their own model server called straight,
/// in their notes, never with the write path's baselines nor as one.
fn is_gateway(r: &Row) -> bool {
    r.workload.starts_with("gateway.")
}

/// The baselines tollgate's figures are compared with.
fn baselines(rows: &[Row]) -> Vec<&Row> {
    rows.iter()
        .filter(|r| !is_tollgate(r) && !is_gateway(r))
        .collect()
}

/// Rows whose operations are not requests (`invoices.close_month`: accounts closed;
/// `dashboard.page`: pages rendered), so never compared with the baselines: those whose name
/// starts with one of these.
const NOT_REQUESTS: &[&str] = &["invoices.close_month", "dashboard.page"];
/// The same, by the whole name (`runners.settle_10k`: runners settled, its `.start_baseline`
/// row counts requests; `runners.prune_events`: event ids deleted).
const NOT_REQUEST_ROWS: &[&str] = &[super::runners::SETTLE_ROW, super::runners::PRUNE_ROW];

/// Whether tollgate row `r` is compared with baseline `b`: tollgate on SQLite with every
/// baseline, tollgate on PostgreSQL with the naive design on the same server; not a row whose
/// operations are not requests.
fn compared(r: &Row, b: &Row) -> bool {
    b.ops_per_s > 0.0
        && (r.system == "tollgate" || b.system == "naive-postgres")
        && !NOT_REQUESTS.iter().any(|w| r.workload.starts_with(w))
        && !NOT_REQUEST_ROWS.contains(&r.workload.as_str())
        && !is_gateway(r)
}

/// A tollgate row's label in the ratio table.
fn label(r: &Row) -> String {
    match r.system.as_str() {
        "tollgate" => r.workload.clone(),
        _ => format!(
            "{} {} x{}",
            r.workload,
            r.system.trim_start_matches("tollgate-"),
            r.clients
        ),
    }
}

pub fn print(rows: &[Row]) {
    println!();
    println!(
        "{:<48} {:<17} {:>7} {:>12} {:>8} {:>8} {:>8}  note",
        "workload", "system", "clients", "ops/s", "p50 us", "p99 us", "p999 us"
    );
    for r in rows {
        println!("{}", line(r));
    }
    let base = baselines(rows);
    if base.is_empty() {
        return;
    }
    println!();
    println!(
        "tollgate's throughput as a multiple of each baseline (same run, same machine; \
         sqlite/postgres = the naive per-request transaction with N clients, fsync = the disk; \
         tollgate on postgres with N clients against the naive design on postgres):"
    );
    print!("{:<52}", "");
    for b in &base {
        print!(" {:>16}", short(b));
    }
    println!();
    for r in rows.iter().filter(|r| is_tollgate(r) && r.ops_per_s > 0.0) {
        print!("{:<52}", label(r));
        for b in &base {
            if compared(r, b) {
                print!(" {:>15.1}x", r.ops_per_s / b.ops_per_s);
            } else {
                print!(" {:>16}", "-");
            }
        }
        println!();
    }
}

/// A baseline's column label: what it is, in a few characters.
fn short(b: &Row) -> String {
    match b.system.as_str() {
        "disk" => b.workload.replace("disk.fdatasync.", "fsync "),
        system => format!(
            "{} {}{}",
            system.trim_start_matches("naive-"),
            if b.workload.starts_with("hot_account") {
                "hot x"
            } else {
                "x"
            },
            b.clients
        ),
    }
}

pub fn write_json(path: &Path, rows: &[Row], plan: &super::Plan) -> anyhow::Result<()> {
    let machine = serde_json::json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
    });
    let ratios: Vec<serde_json::Value> = rows
        .iter()
        .filter(|r| is_tollgate(r))
        .flat_map(|r| {
            baselines(rows)
                .into_iter()
                .filter(|b| compared(r, b))
                .map(move |b| {
                    serde_json::json!({
                        "workload": r.workload, "system": r.system, "clients": r.clients,
                        "baseline": b.workload, "baseline_system": b.system,
                        "baseline_clients": b.clients,
                        "ratio": (r.ops_per_s / b.ops_per_s * 100.0).round() / 100.0,
                    })
                })
        })
        .collect();
    let doc = serde_json::json!({
        "quick": plan.quick,
        "seconds_per_row": plan.duration.as_secs_f64(),
        "machine": machine,
        "rows": rows,
        "ratios": ratios,
    });
    std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    Ok(())
}
