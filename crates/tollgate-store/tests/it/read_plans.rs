//! The documents money leaves behind are read from the rollups and the ledger's own records,
//! a range of one account's index entries (and of its time), never a scan that grows with the
//! history of the account or of every account. Each read's SQL comes from the store itself
//! (`tollgate_store::sql`, what the readers and the writer run), so a change to a query is
//! checked here as it is; each database then gives its plan, after `ANALYZE`, of a database
//! seeded through the store's persist path with eight months of fifty accounts' usage
//! (a couple of thousand line items each), purchases and monthly usage invoices:
//! SQLite's `EXPLAIN QUERY PLAN` must `SEARCH` the account's range and never `SCAN` a table,
//! PostgreSQL's `EXPLAIN (FORMAT JSON)` must read the tables that grow with history through
//! an index condition on the account (or the invoice's number), never a `Seq Scan`.

use rust_decimal::Decimal;
use tollgate_core::ids::{AccountId, EndpointId, PurchaseId, RequestId};
use tollgate_core::ledger::{LedgerAccount, Transfer, TransferKind};
use tollgate_core::machine::{
    Accrual, BatchState, InvoiceKind, InvoiceStatus, LineItem, Lot, NewInvoice, PurchaseRecord,
    RequestRecord, RequestStatus, Source, TransferRecord,
};
use tollgate_core::pricing::Charge;
use tollgate_core::terms::BillingMode;
use tollgate_core::time::{month_start, next_month_start};
use tollgate_core::{Nanos, Timestamp};
use tollgate_store::sql::{self, Arg, Db, Get};
use tollgate_store::testing::{backends, Backend, TestDb};
use tollgate_store::{
    ActivityQuery, RequestHistoryQuery, RequestOrder, RequestOutcome, RollupQuery, StatementQuery,
    Store,
};

const DAY: i64 = 86_400_000;
/// 2026-01-01T00:00:00Z.
const START: i64 = 1_767_225_600_000;
/// January to August.
const DAYS: i64 = 243;
const ACCOUNTS: usize = 50;
/// Line items per account and day, each in a minute of its own.
const PER_DAY: i64 = 9;
const ENDPOINTS: [&str; 3] = ["fal-ai/flux/dev", "fal-ai/kling-video", "fal-ai/whisper"];
const PURCHASE: i64 = 100_000_000_000;

fn acct(i: usize) -> AccountId {
    AccountId::parse(&format!("user{i:02}")).unwrap()
}

/// Odd accounts are invoice-billed: their charges accrue to a monthly usage period.
fn invoiced(i: usize) -> bool {
    i % 2 == 1
}

/// The account every read below asks about: invoice-billed, in the middle of the key range.
fn probe() -> AccountId {
    acct(25)
}

fn item(account: &AccountId, id: &RequestId, endpoint: &str, at: i64, n: i64) -> LineItem {
    let total = 1_000_000 + n % 7 * 10_000;
    LineItem {
        request_id: id.clone(),
        account: account.clone(),
        endpoint: EndpointId::parse(endpoint).unwrap(),
        api_key: None,
        price_version: 1,
        unit: "image".into(),
        charge: Charge {
            quantity: Decimal::ONE,
            unit_price: Decimal::new(total, 9),
            percent_discount: None,
            subtotal_nanos: Nanos(total),
            discount_nanos: Nanos::ZERO,
            total_nanos: Nanos(total),
            blended: false,
        },
        status_code: 200,
        billed_at: Timestamp(at),
        queue_ms: Some(100),
        inference_ms: Some(900),
    }
}

fn request(account: &AccountId, id: &RequestId, endpoint: &str, at: i64) -> RequestRecord {
    RequestRecord {
        id: id.clone(),
        source: Source::Lifecycle,
        account: account.clone(),
        endpoint: EndpointId::parse(endpoint).unwrap(),
        api_key: None,
        price_version: 1,
        status: RequestStatus::Completed,
        submitted_at: Timestamp(at - 1_000),
        started_at: Some(Timestamp(at - 900)),
        finished_at: Some(Timestamp(at)),
        hold: Nanos::ZERO,
        hold_expires_at: None,
        machine_type: None,
        num_gpus: 1,
        queue_ms: Some(100),
        inference_ms: Some(900),
        completion: None,
    }
}

/// A paid purchase at `at`: its lot, its transfer and its top-up invoice.
fn buy(s: &mut BatchState, account: &AccountId, purchase: &str, at: i64) {
    let pid = PurchaseId::parse(purchase).unwrap();
    let a = s.accounts.get_mut(account).expect("the account is loaded");
    a.credit.balance = Nanos(a.credit.balance.0 + PURCHASE);
    a.lots.push(Lot {
        purchase_id: pid.clone(),
        remaining: Nanos(PURCHASE),
        expires_at: None,
        created_at: Timestamp(at),
        expiry_noticed: false,
    });
    let record = PurchaseRecord {
        account: account.clone(),
        purchase_id: pid.clone(),
        amount: Nanos(PURCHASE),
        paid: true,
        created_at: Timestamp(at),
        expires_at: None,
        balance_after: a.credit.balance,
        concurrency_limit_after: 2,
        locked_after: false,
        refunded: Nanos::ZERO,
        disputed: Nanos::ZERO,
    };
    s.transfers.push(TransferRecord {
        transfer: Transfer {
            kind: TransferKind::Purchase,
            debit: LedgerAccount::Purchases,
            credit: LedgerAccount::Customer(account.clone()),
            amount: Nanos(PURCHASE),
        },
        request_id: None,
        purchase_id: Some(pid.clone()),
        at: Timestamp(at),
    });
    s.purchases
        .insert((account.clone(), pid.clone()), record.clone());
    s.new_purchases.push(record);
    s.new_invoices.push(NewInvoice {
        account: account.clone(),
        kind: InvoiceKind::TopUp,
        status: InvoiceStatus::Paid,
        issued_at: Timestamp(at),
        period_start: Timestamp(at),
        period_end: Timestamp(at),
        subtotal: Nanos(PURCHASE),
        discount: Nanos::ZERO,
        total: Nanos(PURCHASE),
        purchase_id: Some(pid),
    });
}

/// One batch per day, as the engine's would leave it, for every account: on a month's first
/// day, each account buys credits and each invoice-billed account's previous period closes
/// (its accruals moved into its usage invoice's lines); then every account's usage of the day,
/// charged, accrued (invoice-billed) and recorded as finished requests.
fn seed(store: &mut dyn Store) {
    let ids: Vec<AccountId> = (0..ACCOUNTS).map(acct).collect();
    store
        .transaction(&mut |tx| {
            for (i, id) in ids.iter().enumerate() {
                let billing = if invoiced(i) {
                    BillingMode::Invoice
                } else {
                    BillingMode::Prepaid
                };
                tx.create_account(id, billing, Timestamp(START - DAY))?;
            }
            Ok(())
        })
        .unwrap();
    for d in 0..DAYS {
        let day = START + d * DAY;
        let now = day + DAY - 60_000;
        let month = month_start(Timestamp(day));
        store
            .transaction(&mut |tx| {
                let mut s = BatchState {
                    now: Timestamp(now),
                    ..BatchState::default()
                };
                tx.lock_accounts(&ids, Timestamp(now), &mut s.accounts)?;
                for (i, id) in ids.iter().enumerate() {
                    s.dirty_accounts.insert(id.clone());
                    if month.0 == day {
                        buy(&mut s, id, &format!("p-{d}-{i}"), day + 1_000);
                        if invoiced(i) && day > START {
                            let previous = tollgate_core::time::previous_month_start(month);
                            s.new_invoices.push(NewInvoice {
                                account: id.clone(),
                                kind: InvoiceKind::Usage,
                                status: InvoiceStatus::Open,
                                issued_at: Timestamp(day + 2_000),
                                period_start: previous,
                                period_end: month,
                                subtotal: Nanos(1),
                                discount: Nanos::ZERO,
                                total: Nanos(1),
                                purchase_id: None,
                            });
                        }
                    }
                    for j in 0..PER_DAY {
                        let minute = i as i64 * PER_DAY + j;
                        let at = day + 3_600_000 + minute * 60_000;
                        let rid = RequestId::parse(&format!("r-{d}-{i}-{j}")).unwrap();
                        let endpoint = ENDPOINTS[(j % 3) as usize];
                        let li = item(id, &rid, endpoint, at, d + j);
                        let total = li.charge.total_nanos;
                        if invoiced(i) {
                            s.accruals.push(Accrual {
                                item: s.line_items.len(),
                                period_start: month,
                            });
                        }
                        s.line_items.push(li);
                        s.transfers.push(TransferRecord {
                            transfer: Transfer {
                                kind: TransferKind::Post,
                                debit: LedgerAccount::Customer(id.clone()),
                                credit: LedgerAccount::Revenue,
                                amount: total,
                            },
                            request_id: Some(rid.clone()),
                            purchase_id: None,
                            at: Timestamp(at),
                        });
                        let a = s.accounts.get_mut(id).unwrap();
                        a.credit.balance = Nanos(a.credit.balance.0 - total.0);
                        s.requests
                            .insert(rid.clone(), request(id, &rid, endpoint, at));
                        s.dirty_requests.insert(rid.clone());
                        s.completed.push(rid);
                    }
                }
                tx.persist(&s)?;
                Ok(())
            })
            .unwrap();
    }
    // Every line item where its reads find it (on SQLite, out of the recent table).
    store.idle().unwrap();
}

/// A statement or credit-activity read's connection that records each query it runs, with
/// its parameters, and runs it on the store's own connection.
struct Recording<'a> {
    db: &'a mut dyn Db,
    ran: Vec<(String, Vec<Arg>)>,
}

impl Db for Recording<'_> {
    fn ph(&self, i: usize, ty: &str) -> String {
        self.db.ph(i, ty)
    }

    fn dec_sum(&self, col: &str) -> String {
        self.db.dec_sum(col)
    }

    fn each(
        &mut self,
        sql: &str,
        args: &[Arg],
        row: &mut dyn FnMut(&dyn Get) -> tollgate_store::Result<()>,
    ) -> tollgate_store::Result<()> {
        self.ran.push((sql.to_string(), args.to_vec()));
        self.db.each(sql, args, row)
    }
}

/// The statement of the probe's June, and two pages of its credit activity (the second from
/// the first's last row): what they ran, and how many rows they found (so the plans below are
/// of reads that found something).
fn statement_reads(db: &mut dyn Db) -> (Vec<(String, Vec<Arg>)>, usize, usize) {
    let june = Timestamp(START + 151 * DAY);
    let mut rec = Recording {
        db,
        ran: Vec::new(),
    };
    let st = sql::statement(
        &mut rec,
        &StatementQuery {
            account: probe(),
            from: june,
            to: next_month_start(june),
        },
    )
    .unwrap();
    assert!(
        st.opening != Nanos::ZERO,
        "the opening balance of June was found"
    );
    let q = ActivityQuery {
        account: probe(),
        start: Timestamp(START),
        end: Timestamp(START + DAYS * DAY),
        before: None,
        limit: 50,
        now: Timestamp(START + DAYS * DAY),
    };
    let first = sql::credit_activity(&mut rec, &q).unwrap();
    let last = first.last().expect("a page of credit activity");
    let second = sql::credit_activity(
        &mut rec,
        &ActivityQuery {
            before: Some((last.at.0, last.id)),
            ..q
        },
    )
    .unwrap();
    assert_eq!(first.len(), 50);
    (rec.ran, st.days.len() + st.usage.len(), second.len())
}

// ---------------------------------------------------------------------------------------------
// SQLite.

fn sqlite_plan(
    c: &rusqlite::Connection,
    sql: &str,
    args: &[rusqlite::types::Value],
) -> Vec<String> {
    c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn sqlite_args(args: &[Arg]) -> Vec<rusqlite::types::Value> {
    args.iter().map(Arg::sqlite).collect()
}

/// `plan` (of `what`) reads each of `reads` (a table or its alias) by a `SEARCH` whose key
/// starts with `key`, and never `SCAN`s anything but the hours' minutes a recursive CTE
/// counts (not a table): a `SCAN` of a table, even through an index, reads all of it.
fn sqlite_check(what: &str, plan: &[String], reads: &[(&str, &str)]) {
    for d in plan {
        assert!(
            !d.starts_with("SCAN ") || d == "SCAN hour_minutes" || d == "SCAN CONSTANT ROW",
            "{what} scans: {plan:#?}"
        );
    }
    for (table, key) in reads {
        assert!(
            plan.iter()
                .any(|d| d.starts_with(&format!("SEARCH {table} "))
                    && d.contains(&format!("({key}"))),
            "{what} seeks {table} by ({key}...): {plan:#?}"
        );
    }
}

fn sqlite_plans(db: &TestDb) {
    let mut c = sql::sqlite_connection(std::path::Path::new(db.target())).unwrap();
    c.execute_batch("ANALYZE").unwrap();
    for big in ["line_items", "transfers", "requests", "usage_minutes"] {
        let n: i64 = c
            .query_row(&format!("SELECT COUNT(*) FROM {big}"), [], |r| r.get(0))
            .unwrap();
        assert!(n >= 100_000, "{big} holds {n} rows");
    }

    // The statement and credit activity: run as the reader runs them, in one read snapshot.
    let ran = {
        let tx = c.transaction().unwrap();
        let mut db = sql::sqlite_db(&tx);
        let (ran, found, second) = statement_reads(&mut db);
        assert!(found > 30 && second > 0, "{found} statement rows, {second}");
        ran
    };
    let mut kinds = std::collections::BTreeSet::new();
    for (q, args) in &ran {
        let plan = sqlite_plan(&c, q, &sqlite_args(args));
        let reads: &[(&str, &str)] = if q.contains("FROM accounts") {
            &[("accounts", "username=")]
        } else if q.contains("FROM balance_months") {
            &[("balance_months", "month=? AND account=")]
        } else if q.contains("FROM balance_days") {
            &[("balance_days", "day=? AND account=")]
        } else if q.contains("FROM usage_days") {
            &[("usage_days", "day=? AND account=")]
        } else if q.contains("FROM balance_movements") {
            &[("balance_movements", "account=? AND at")]
        } else {
            panic!("a statement read of no known table: {q}")
        };
        kinds.insert(reads[0].0);
        sqlite_check(q, &plan, reads);
    }
    assert_eq!(
        kinds.len(),
        5,
        "every table of the statement reads: {kinds:?}"
    );

    let account = probe().as_str().to_string();
    let text = |s: &str| rusqlite::types::Value::Text(s.to_string());
    let int = rusqlite::types::Value::Integer;
    let null = rusqlite::types::Value::Null;

    // An issued invoice's lines: the invoice, then its lines, by its number.
    let (year, seq): (i64, i64) = c
        .query_row(
            "SELECT year, seq FROM invoices WHERE account = ?1 AND kind = 'usage' \
             ORDER BY year DESC, seq DESC LIMIT 1",
            [&account],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let lines: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM invoice_lines WHERE year = ?1 AND seq = ?2",
            [year, seq],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(lines, 21, "a line per endpoint and unit price");
    let q = sql::invoice_lines(sql::sqlite_ph);
    sqlite_check(
        "an invoice's lines",
        &sqlite_plan(&c, &q, &[int(year), int(seq)]),
        &[("invoice_lines", "year=? AND seq=?")],
    );
    // The account's usage invoices, newest first (the invoices page; FOCUS's invoice report).
    let q = sql::invoices(sql::sqlite_ph, true);
    sqlite_check(
        "an account's usage invoices",
        &sqlite_plan(
            &c,
            &q,
            &[
                text(&account),
                null.clone(),
                text("usage"),
                int(i64::MAX),
                int(i64::MAX),
                int(100),
            ],
        ),
        &[("invoices", "account=?")],
    );
    // The close of the probe's open period (August): its accruals into the invoice's lines.
    let august = START + 212 * DAY;
    let open: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM invoice_accruals WHERE account = ?1 AND period_start = ?2",
            rusqlite::params![account, august],
            |r| r.get(0),
        )
        .unwrap();
    assert!(open > 0, "the open period has accruals");
    sqlite_check(
        "the close's copy",
        &sqlite_plan(
            &c,
            sql::SQLITE_ACCRUALS_TO_LINES,
            &[int(2026), int(999_999), text(&account), int(august)],
        ),
        &[("invoice_accruals", "account=? AND period_start=?")],
    );
    sqlite_check(
        "the close's delete",
        &sqlite_plan(
            &c,
            sql::SQLITE_ACCRUALS_MOVED,
            &[text(&account), int(august)],
        ),
        &[("invoice_accruals", "account=? AND period_start=?")],
    );

    // FOCUS for June: its purchases (each with its top-up invoice), then its usage from the
    // rollups page by page (a day's page: minute rows at its edges, hour rows between).
    let june = START + 151 * DAY;
    let q = sql::purchases(sql::sqlite_ph);
    sqlite_check(
        "the month's purchases",
        &sqlite_plan(
            &c,
            &q,
            &[
                text(&account),
                int(june),
                int(june + 30 * DAY),
                int(i64::MIN),
                text(""),
                int(1_000),
            ],
        ),
        &[
            ("p", "account=? AND created_at>?"),
            ("i", "account=? AND purchase_id=?"),
        ],
    );
    let usage = sql::sqlite_usage(
        &c,
        &RollupQuery {
            account: probe(),
            from: Timestamp(june + 30 * 60_000),
            to: Timestamp(june + 3 * DAY + 30 * 60_000),
            endpoints: Vec::new(),
            api_keys: Vec::new(),
            whole_hours: true,
            service: None,
        },
    )
    .unwrap();
    assert!(usage.len() > 70, "slot by slot: {}", usage.len());
    let mut grains = std::collections::BTreeSet::new();
    for (q, args) in &usage {
        let table = if q.contains("usage_hours") {
            "usage_hours"
        } else {
            "usage_minutes"
        };
        grains.insert(table);
        sqlite_check(
            q,
            &sqlite_plan(&c, q, args),
            &[(table, "slot=? AND account=?")],
        );
    }
    assert_eq!(grains.len(), 2, "minute and hour rows: {grains:?}");

    // Request history by endpoint, by end time and by duration, a first page and the next.
    for order in [RequestOrder::EndedAt, RequestOrder::Duration] {
        for after in [
            None,
            Some((june + 5 * DAY, RequestId::parse("r-156-25-3").unwrap())),
        ] {
            let after = after.map(|(at, id)| match order {
                RequestOrder::EndedAt => (at, id),
                RequestOrder::Duration => (1_000, id),
            });
            let (q, args) = sql::sqlite_request_history(&RequestHistoryQuery {
                account: probe(),
                endpoint: EndpointId::parse(ENDPOINTS[0]).unwrap(),
                from: Timestamp(june),
                to: Timestamp(june + 30 * DAY),
                outcome: Some(RequestOutcome::Success),
                request_id: None,
                order,
                after: after.clone(),
                limit: 50,
            });
            sqlite_check(
                &q,
                &sqlite_plan(&c, &q, &args),
                &[("requests", "account=? AND endpoint_id=? AND finished_at")],
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL.

/// The tables that grow with history: never read by a sequential scan.
const GROWING: [&str; 12] = [
    "line_items",
    "transfers",
    "requests",
    "usage_minutes",
    "usage_hours",
    "balance_days",
    "balance_months",
    "usage_days",
    "balance_movements",
    "purchases",
    "invoices",
    "invoice_lines",
];

/// Every plan node as (node type, relation, index condition or filter text).
fn nodes(plan: &serde_json::Value, out: &mut Vec<(String, String, String)>) {
    let s = |k: &str| {
        plan.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    out.push((
        s("Node Type"),
        s("Relation Name"),
        format!("{} {}", s("Index Cond"), s("Recheck Cond")),
    ));
    if let Some(children) = plan.get("Plans").and_then(|p| p.as_array()) {
        for c in children {
            nodes(c, out);
        }
    }
}

/// A `json` value's text.
struct Json(String);

impl<'a> postgres::types::FromSql<'a> for Json {
    fn from_sql(
        _: &postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Json, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Json(std::str::from_utf8(raw)?.to_string()))
    }

    fn accepts(ty: &postgres::types::Type) -> bool {
        *ty == postgres::types::Type::JSON
    }
}

fn pg_plan(
    c: &mut postgres::Client,
    sql: &str,
    args: &[&(dyn postgres::types::ToSql + Sync)],
) -> Vec<(String, String, String)> {
    let row = c
        .query_one(&format!("EXPLAIN (FORMAT JSON) {sql}"), args)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let json: serde_json::Value = serde_json::from_str(&row.get::<_, Json>(0).0).unwrap();
    let mut out = Vec::new();
    nodes(&json[0]["Plan"], &mut out);
    out
}

/// `plan` (of `what`) reads none of the growing tables sequentially, and reads each of
/// `reads` through an index whose condition names `key`.
fn pg_check(what: &str, plan: &[(String, String, String)], reads: &[(&str, &str)]) {
    for (node, rel, _) in plan {
        assert!(
            !(node == "Seq Scan" && GROWING.contains(&rel.as_str())),
            "{what} scans {rel}: {plan:#?}"
        );
    }
    for (table, key) in reads {
        assert!(
            // A bitmap heap scan's recheck condition is its bitmap index scan's condition.
            plan.iter().any(|(node, rel, cond)| rel == table
                && ["Index Scan", "Index Only Scan", "Bitmap Heap Scan"].contains(&node.as_str())
                && cond.contains(key)),
            "{what} reads {table} by an index on {key}: {plan:#?}"
        );
    }
}

fn pg_args(args: &[Arg]) -> Vec<Box<dyn postgres::types::ToSql + Sync>> {
    args.iter().map(Arg::postgres).collect()
}

fn refs(
    args: &[Box<dyn postgres::types::ToSql + Sync>],
) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    args.iter().map(|a| &**a as _).collect()
}

fn postgres_plans(db: &TestDb) {
    let target = db.target().to_string();
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&target, postgres::NoTls).unwrap();
        c.batch_execute("ANALYZE").unwrap();
        for big in ["line_items", "transfers", "requests", "usage_minutes"] {
            let n: i64 = c
                .query_one(&format!("SELECT COUNT(*) FROM {big}"), &[])
                .unwrap()
                .get(0);
            assert!(n >= 100_000, "{big} holds {n} rows");
        }

        let ran = {
            let mut tx = c.transaction().unwrap();
            let mut db = sql::postgres_db(&mut tx);
            let (ran, found, second) = statement_reads(&mut *db);
            assert!(found > 30 && second > 0, "{found} statement rows, {second}");
            drop(db);
            tx.commit().unwrap();
            ran
        };
        let mut kinds = std::collections::BTreeSet::new();
        for (q, args) in &ran {
            let table = [
                "accounts",
                "balance_months",
                "balance_days",
                "usage_days",
                "balance_movements",
            ]
            .into_iter()
            .find(|t| q.contains(&format!("FROM {t} ")))
            .unwrap_or_else(|| panic!("a statement read of no known table: {q}"));
            kinds.insert(table);
            // The account's own row (of a table that grows with the accounts, not with their
            // history): however the planner likes.
            let reads: &[(&str, &str)] = if table == "accounts" {
                &[]
            } else {
                &[(table, "account")]
            };
            let boxed = pg_args(args);
            pg_check(q, &pg_plan(&mut c, q, &refs(&boxed)), reads);
        }
        assert_eq!(
            kinds.len(),
            5,
            "every table of the statement reads: {kinds:?}"
        );

        let account = probe().as_str().to_string();
        let row = c
            .query_one(
                "SELECT year, seq FROM invoices WHERE account = $1 AND kind = 'usage' \
                 ORDER BY year DESC, seq DESC LIMIT 1",
                &[&account],
            )
            .unwrap();
        let (year, seq): (i64, i64) = (row.get(0), row.get(1));
        pg_check(
            "an invoice's lines",
            &pg_plan(
                &mut c,
                &sql::invoice_lines(sql::postgres_ph),
                &[&year, &seq],
            ),
            &[("invoice_lines", "year")],
        );
        let (none, usage, max, page): (Option<String>, Option<String>, i64, i64) =
            (None, Some("usage".into()), i64::MAX, 100);
        pg_check(
            "an account's usage invoices",
            &pg_plan(
                &mut c,
                &sql::invoices(sql::postgres_ph, true),
                &[&Some(account.clone()), &none, &usage, &max, &max, &page],
            ),
            &[("invoices", "account")],
        );
        let august = START + 212 * DAY;
        pg_check(
            "the close's move",
            &pg_plan(
                &mut c,
                sql::POSTGRES_ACCRUALS_TO_LINES,
                &[
                    &vec![account.clone()],
                    &vec![august],
                    &vec![2026_i64],
                    &vec![999_999_i64],
                ],
            ),
            &[("invoice_accruals", "account")],
        );

        let june = START + 151 * DAY;
        let (to, min, empty, limit) = (june + 30 * DAY, i64::MIN, String::new(), 1_000_i64);
        pg_check(
            "the month's purchases",
            &pg_plan(
                &mut c,
                &sql::purchases(sql::postgres_ph),
                &[&account, &june, &to, &min, &empty, &limit],
            ),
            &[("purchases", "account"), ("invoices", "account")],
        );
        let rq = RollupQuery {
            account: probe(),
            from: Timestamp(june + 30 * 60_000),
            to: Timestamp(june + 3 * DAY + 30 * 60_000),
            endpoints: Vec::new(),
            api_keys: Vec::new(),
            whole_hours: true,
            service: None,
        };
        let none: Vec<String> = Vec::new();
        let usage = sql::postgres_usage(&rq);
        assert_eq!(usage.len(), 3, "minutes, hours, minutes");
        for (q, from, to) in &usage {
            let table = if q.contains("usage_hours") {
                "usage_hours"
            } else {
                "usage_minutes"
            };
            pg_check(
                q,
                &pg_plan(&mut c, q, &[&account, &from.0, &to.0, &none, &none]),
                &[(table, "account")],
            );
        }

        for order in [RequestOrder::EndedAt, RequestOrder::Duration] {
            for after in [
                None,
                Some((june + 5 * DAY, RequestId::parse("r-156-25-3").unwrap())),
            ] {
                let after = after.map(|(at, id)| match order {
                    RequestOrder::EndedAt => (at, id),
                    RequestOrder::Duration => (1_000, id),
                });
                let (q, args) = sql::postgres_request_history(&RequestHistoryQuery {
                    account: probe(),
                    endpoint: EndpointId::parse(ENDPOINTS[0]).unwrap(),
                    from: Timestamp(june),
                    to: Timestamp(june + 30 * DAY),
                    outcome: Some(RequestOutcome::Success),
                    request_id: None,
                    order,
                    after: after.clone(),
                    limit: 50,
                });
                pg_check(
                    &q,
                    &pg_plan(&mut c, &q, &refs(&args)),
                    &[("requests", "account")],
                );
            }
        }
    })
    .join()
    .expect("the PostgreSQL plans");
}

#[test]
fn statements_invoices_focus_and_request_history_read_ranges_of_the_account() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        seed(&mut *store);
        drop(store);
        match backend {
            Backend::Sqlite => sqlite_plans(&db),
            Backend::Postgres(_) => postgres_plans(&db),
        }
    }
}
