//! Upgrading a database written by an earlier tollgate: the rollups migration reshapes line
//! items and builds the usage and activity rollups from what is already there, so an upgraded
//! account's usage adds up to its line items from the first query; the payments migration
//! keeps purchases, invoices and webhooks as they were, with nothing taken back.

use rusqlite::{params, Connection};
use rust_decimal::Decimal;
use tollgate_core::ids::{AccountId, EndpointId};
use tollgate_core::terms::{Terms, TermsVersion};
use tollgate_core::Timestamp;
use tollgate_store::sqlite::SqliteStore;
use tollgate_store::{BillingEventsQuery, BillingMode, RollupQuery, Store, SETTING_FOLDED_BEFORE};

const SCHEMA_1: &str = include_str!("../../migrations/sqlite/0001_init.sql");

/// A version-1 database with two accounts and billed requests across two hours, written as
/// tollgate 1 wrote them.
fn version_1_database(path: &std::path::Path) {
    let mut c = Connection::open(path).unwrap();
    let tx = c.transaction().unwrap();
    tx.execute_batch(SCHEMA_1).unwrap();
    tx.pragma_update(None, "user_version", 1).unwrap();
    for (account, billing) in [("acme", "prepaid"), ("bob", "prepaid"), ("inv", "invoice")] {
        tx.execute(
            "INSERT INTO accounts (username, created_at, billing) VALUES (?1, 0, ?2)",
            [account, billing],
        )
        .unwrap();
    }
    // acme has negotiated terms, bob the defaults.
    tx.execute(
        "UPDATE accounts SET discounts = '{\"percent_discount\":\"10\"}', \
         concurrency_override = 7, lock_threshold_nanos = 5 WHERE username = 'acme'",
        [],
    )
    .unwrap();
    // (account, request, billed_at ms, quantity, total nanos, status, queue ms, inference ms)
    let billed = [
        (
            "acme",
            "00000000-0000-4000-8000-000000000001",
            60_000,
            "1.5",
            37_500_000,
            200,
            10,
            900,
        ),
        (
            "acme",
            "00000000-0000-4000-8000-000000000002",
            61_000,
            "2",
            50_000_000,
            200,
            20,
            1_100,
        ),
        (
            "acme",
            "00000000-0000-4000-8000-000000000003",
            3_700_000,
            "1",
            25_000_000,
            200,
            5,
            700,
        ),
        (
            "bob",
            "00000000-0000-4000-8000-000000000004",
            120_000,
            "4",
            100_000_000,
            200,
            0,
            50,
        ),
    ];
    for (account, id, at, quantity, total, status, queue, inference) in billed {
        tx.execute(
            "INSERT INTO requests (request_id, source, account, endpoint_id, price_version, \
             status, submitted_at, finished_at, hold_nanos, num_gpus, queue_ms, inference_ms, \
             completion) VALUES (?1, 'event', ?2, 'fal-ai/flux/dev', 1, 'COMPLETED', ?3, ?3, \
             0, 1, ?4, ?5, ?6)",
            params![
                id,
                account,
                at,
                queue,
                inference,
                format!(
                    r#"{{"status_code":{status},"billed":true,"unit":"megapixel","charge":{{"quantity":"{quantity}","unit_price":"0.025","percent_discount":null,"subtotal_nanos":{total},"discount_nanos":0,"total_nanos":{total}}},"balance_after":0}}"#
                )
            ],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO line_items (request_id, account, endpoint_id, price_version, unit, \
             quantity, unit_price, subtotal_nanos, discount_nanos, total_nanos, status_code, \
             billed_at, queue_ms, inference_ms) VALUES (?1, ?2, 'fal-ai/flux/dev', 1, \
             'megapixel', ?3, '0.025', ?4, 0, ?4, ?5, ?6, ?7, ?8)",
            params![id, account, quantity, total, status, at, queue, inference],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

#[test]
fn upgrading_builds_rollups_that_add_up_to_the_line_items() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    version_1_database(&path);

    let mut store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), 20);
    let mut reader = (store.reader_factory())().unwrap();
    // The terms an account had are its first version, in force from the beginning.
    let terms = |reader: &mut Box<dyn tollgate_store::Reader>, name: &str| {
        let id = AccountId::parse(name).unwrap();
        reader.account(&id, Timestamp(1)).unwrap().unwrap().state
    };
    let acme_state = terms(&mut reader, "acme");
    assert_eq!(acme_state.terms.versions().len(), 1);
    assert_eq!(acme_state.terms.versions()[0].effective_from, Timestamp(0));
    assert_eq!(
        acme_state.discounts.percent_discount,
        Some(Decimal::from(10))
    );
    assert_eq!(acme_state.concurrency_override, Some(7));
    assert_eq!(acme_state.credit.lock_threshold.0, 5);
    assert!(terms(&mut reader, "bob").terms.is_empty());
    // How each account paid is a term of every version: an invoice-billed account without
    // versions has one, from the beginning, with the default terms otherwise.
    assert_eq!(
        acme_state.terms.versions()[0].terms.billing,
        BillingMode::Prepaid
    );
    let inv = terms(&mut reader, "inv");
    assert_eq!(
        inv.terms.versions(),
        &[TermsVersion {
            effective_from: Timestamp(0),
            terms: Terms {
                billing: BillingMode::Invoice,
                ..Terms::default()
            },
        }]
    );
    assert_eq!(
        (inv.billing(), inv.credit.floor),
        (BillingMode::Invoice, None)
    );
    let rec = reader.reconcile().unwrap();
    assert_eq!(rec.rollup_mismatches, vec![]);
    // The backfill wrote every minute into its hour row too: all are folded.
    assert_eq!(
        reader.setting(SETTING_FOLDED_BEFORE).unwrap().as_deref(),
        Some("3720000")
    );

    let acme = AccountId::parse("acme").unwrap();
    let flux = EndpointId::parse("fal-ai/flux/dev").unwrap();
    for whole_hours in [false, true] {
        let rows = reader
            .usage(&RollupQuery {
                account: acme.clone(),
                from: Timestamp(0),
                to: Timestamp(7_200_000),
                endpoints: vec![],
                api_keys: vec![],
                whole_hours,
                service: Some(tollgate_store::Service::Models),
            })
            .unwrap();
        let quantity: Decimal = rows.iter().map(|(_, t)| t.quantity).sum();
        let total: i64 = rows.iter().map(|(_, t)| t.total.0).sum();
        let requests: u64 = rows.iter().map(|(_, t)| t.requests).sum();
        assert_eq!(
            (quantity, total, requests),
            (Decimal::new(45, 1), 112_500_000, 3)
        );
        let activity = reader
            .activity(&RollupQuery {
                account: acme.clone(),
                from: Timestamp(0),
                to: Timestamp(7_200_000),
                endpoints: vec![flux.clone()],
                api_keys: vec![],
                whole_hours,
                service: Some(tollgate_store::Service::Models),
            })
            .unwrap();
        let completed: u64 = activity.iter().map(|(_, t)| t.requests).sum();
        let billable_ms: i64 = activity.iter().map(|(_, t)| t.billable_ms).sum();
        assert_eq!((completed, billable_ms), (3, 2_700));
    }
    // The first minute's two requests share a row; the next hour's is its own.
    let minute_rows = reader
        .usage(&RollupQuery {
            account: acme.clone(),
            from: Timestamp(0),
            to: Timestamp(7_200_000),
            endpoints: vec![],
            api_keys: vec![],
            whole_hours: false,
            service: Some(tollgate_store::Service::Models),
        })
        .unwrap();
    let slots: Vec<i64> = minute_rows.iter().map(|(k, _)| k.slot.0).collect();
    assert_eq!(slots, [60_000, 3_660_000]);

    // Billing events page through the reshaped line items, one account only, in time order.
    let events = reader
        .billing_events(&BillingEventsQuery {
            account: acme,
            from: Timestamp(0),
            to: Timestamp(7_200_000),
            endpoints: vec![],
            request_ids: vec![],
            api_keys: vec![],
            after: None,
            newest_first: false,
            limit: 10,
        })
        .unwrap();
    let at: Vec<i64> = events.iter().map(|e| e.billed_at.0).collect();
    assert_eq!(at, [60_000, 61_000, 3_700_000]);
}

#[test]
fn listing_an_accounts_keys_reads_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    drop(SqliteStore::open(&path).unwrap());
    let c = Connection::open(&path).unwrap();
    for account in ["'acme'", "NULL"] {
        let plan: Vec<String> = c
            .prepare(&format!(
                "EXPLAIN QUERY PLAN SELECT key_id FROM api_keys WHERE account IS {account} \
                 ORDER BY created_at, key_id"
            ))
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            plan,
            ["SEARCH api_keys USING COVERING INDEX api_keys_by_account (account=?)"],
            "{account}"
        );
    }
}

/// A PostgreSQL database at schema version 2, as tollgate wrote it, upgraded: how each account
/// paid becomes a term of its versions, and its statements are backfilled from its transfers.
#[test]
fn upgrading_postgres_makes_billing_a_term() {
    let Some(url) = std::env::var("TOLLGATE_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
    else {
        return;
    };
    let schema = format!("tollgate_test_upgrade_{}", std::process::id());
    let sep = if url.contains('?') { '&' } else { '?' };
    let target = format!("{url}{sep}options=-csearch_path%3D{schema}");
    let admin = |sql: String| {
        let url = url.clone();
        std::thread::spawn(move || {
            postgres::Client::connect(&url, postgres::NoTls)
                .unwrap()
                .batch_execute(&sql)
                .unwrap()
        })
        .join()
        .unwrap()
    };
    admin(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
    ));
    let t = target.clone();
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&t, postgres::NoTls).unwrap();
        let mut tx = c.transaction().unwrap();
        tx.batch_execute(include_str!("../../migrations/postgres/0001_init.sql"))
            .unwrap();
        tx.batch_execute(include_str!(
            "../../migrations/postgres/0002_terms_adjustments.sql"
        ))
        .unwrap();
        tx.batch_execute(
            "CREATE TABLE tollgate_schema (version INTEGER NOT NULL); \
             INSERT INTO tollgate_schema VALUES (1), (2); \
             INSERT INTO accounts (username, created_at, billing, terms) VALUES \
             ('acme', 0, 'invoice', '[{\"effective_from\":0,\"discounts\":{\"percent_discount\":\"10\"},\
\"concurrency_override\":7,\"lock_threshold_nanos\":5},{\"effective_from\":9000,\"discounts\":{},\
\"concurrency_override\":null,\"lock_threshold_nanos\":0}]'), \
             ('bob', 0, 'prepaid', '[]'), ('inv', 0, 'invoice', '[]'); \
             INSERT INTO transfers (kind, debit, credit, amount_nanos, purchase_id, at) VALUES \
             ('purchase', 'system:purchases', 'customer:acme', 1000000000, 'p-1', 1000), \
             ('charge', 'customer:acme', 'system:revenue', 250000000, NULL, 3456000000); \
             UPDATE accounts SET balance_nanos = 750000000 WHERE username = 'acme'",
        )
        .unwrap();
        tx.commit().unwrap();
    })
    .join()
    .unwrap();
    let store = tollgate_store::open(&target).unwrap();
    let mut reader = (store.reader_factory())().unwrap();
    let mut state = |name: &str| {
        let id = AccountId::parse(name).unwrap();
        reader.account(&id, Timestamp(1)).unwrap().unwrap()
    };
    let acme = state("acme");
    let versions = acme.state.terms.versions();
    assert_eq!(versions.len(), 2);
    assert_eq!(
        (versions[0].effective_from, versions[1].effective_from),
        (Timestamp(0), Timestamp(9_000))
    );
    assert!(versions
        .iter()
        .all(|v| v.terms.billing == BillingMode::Invoice));
    assert_eq!(versions[0].terms.concurrency_override, Some(7));
    assert_eq!(acme.billing, BillingMode::Invoice);
    assert!(state("bob").state.terms.is_empty());
    assert_eq!(state("bob").billing, BillingMode::Prepaid);
    let inv = state("inv");
    assert_eq!(inv.state.terms.versions().len(), 1);
    assert_eq!(
        (inv.billing, inv.state.credit.floor),
        (BillingMode::Invoice, None)
    );
    // The statements are backfilled from the ledger: acme bought 1 USD in January 1970 and was
    // charged 0.25 USD on February 10; March opens where February closed, through the months.
    const DAY: i64 = 86_400_000;
    let acme_id = AccountId::parse("acme").unwrap();
    let month = |reader: &mut Box<dyn tollgate_store::Reader>, from: i64, to: i64| {
        reader
            .statement(&tollgate_store::StatementQuery {
                account: acme_id.clone(),
                from: Timestamp(from * DAY),
                to: Timestamp(to * DAY),
            })
            .unwrap()
    };
    let february = month(&mut reader, 31, 59);
    let days: Vec<(i64, i64, i64)> = february
        .days
        .iter()
        .map(|d| (d.day.0, d.moved.usage.0, d.closing.0))
        .collect();
    assert_eq!(february.opening.0, 1_000_000_000);
    assert_eq!(days, [(40 * DAY, -250_000_000, 750_000_000)]);
    let march = month(&mut reader, 59, 90);
    assert_eq!((march.opening.0, march.days.len()), (750_000_000, 0));
    assert_eq!(reader.reconcile().unwrap().statement_mismatches, vec![]);
    drop(reader);
    drop(store);
    admin(format!("DROP SCHEMA {schema} CASCADE"));
}

/// An upgraded database's statements come from its ledger: the migration backfills each
/// account's days and months (movements by kind and closing balance), its movements and its
/// usage by the day each charge was posted.
#[test]
fn upgrading_backfills_statements_from_the_ledger() {
    use tollgate_core::statement::MovementKind;
    use tollgate_store::{ActivityQuery, StatementQuery};
    const DAY: i64 = 86_400_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    version_1_database(&path);
    {
        // acme bought 1 USD on day 0; its three line items were charged on day 1 (a day after
        // the usage they bill); 0.8875 USD left, as its balance says.
        let c = Connection::open(&path).unwrap();
        let t = |kind: &str,
                 debit: &str,
                 credit: &str,
                 amount: i64,
                 req: Option<&str>,
                 pid: Option<&str>,
                 at: i64| {
            c.execute(
                "INSERT INTO transfers (kind, debit, credit, amount_nanos, request_id, \
                 purchase_id, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![kind, debit, credit, amount, req, pid, at],
            )
            .unwrap();
        };
        t(
            "purchase",
            "system:purchases",
            "customer:acme",
            1_000_000_000,
            None,
            Some("p-1"),
            1_000,
        );
        for (n, amount) in [(1, 37_500_000), (2, 50_000_000), (3, 25_000_000)] {
            let req = format!("00000000-0000-4000-8000-00000000000{n}");
            t(
                "charge",
                "customer:acme",
                "system:revenue",
                amount,
                Some(&req),
                None,
                DAY + n,
            );
        }
        c.execute(
            "UPDATE accounts SET balance_nanos = 887500000 WHERE username = 'acme'",
            [],
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let mut reader = (store.reader_factory())().unwrap();
    let acme = AccountId::parse("acme").unwrap();
    let rows = reader
        .statement(&StatementQuery {
            account: acme.clone(),
            from: Timestamp(0),
            to: Timestamp(31 * DAY),
        })
        .unwrap();
    assert_eq!(rows.opening.0, 0);
    let days: Vec<(i64, i64, i64, i64)> = rows
        .days
        .iter()
        .map(|d| (d.day.0, d.moved.purchases.0, d.moved.usage.0, d.closing.0))
        .collect();
    assert_eq!(
        days,
        [
            (0, 1_000_000_000, 0, 1_000_000_000),
            (DAY, 0, -112_500_000, 887_500_000)
        ]
    );
    assert_eq!(rows.usage.len(), 1);
    assert_eq!(
        (
            rows.usage[0].quantity,
            rows.usage[0].requests,
            rows.usage[0].cost.0
        ),
        (Decimal::new(45, 1), 3, 112_500_000)
    );
    // February 1970, without a movement, opens where January (its backfilled month) closed.
    let february = reader
        .statement(&StatementQuery {
            account: acme.clone(),
            from: Timestamp(31 * DAY),
            to: Timestamp(59 * DAY),
        })
        .unwrap();
    assert_eq!(
        (
            february.opening.0,
            february.days.len(),
            february.usage.len()
        ),
        (887_500_000, 0, 0)
    );
    let activity = reader
        .credit_activity(&ActivityQuery {
            account: acme,
            start: Timestamp(i64::MIN),
            end: Timestamp(i64::MAX),
            before: None,
            limit: 10,
            now: Timestamp(40 * DAY),
        })
        .unwrap();
    let seen: Vec<(MovementKind, i64, i64, &str)> = activity
        .iter()
        .map(|r| (r.kind, r.amount.0, r.balance_after.0, r.reference.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (MovementKind::Usage, -112_500_000, 887_500_000, "1970-01-02"),
            (MovementKind::Purchase, 1_000_000_000, 1_000_000_000, "p-1"),
        ]
    );
    // Every account's days end at its balance (bob and inv, without transfers, have none).
    assert_eq!(reader.reconcile().unwrap().statement_mismatches, vec![]);
}

/// An upgraded SQLite database's purchases read as payments with nothing taken back, no
/// dispute and no provider payment, and its accounts with the default payment profile; the
/// reconciliation finds them consistent.
#[test]
fn upgrading_reads_earlier_purchases_with_nothing_taken_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    version_1_database(&path);
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "INSERT INTO purchases (account, purchase_id, amount_nanos, paid, created_at, \
               expires_at, remaining_nanos, balance_after, limit_after, locked_after) \
             VALUES ('bob', 'p-1', 2000000000, 1, 5000, NULL, 2000000000, 2000000000, 2, 0); \
             INSERT INTO transfers (kind, debit, credit, amount_nanos, purchase_id, at) \
             VALUES ('purchase', 'system:purchases', 'customer:bob', 2000000000, 'p-1', 5000); \
             UPDATE accounts SET balance_nanos = 2000000000, paid_lifetime_nanos = 2000000000 \
             WHERE username = 'bob'",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let mut reader = (store.reader_factory())().unwrap();
    let bob = AccountId::parse("bob").unwrap();
    let p1 = tollgate_core::ids::PurchaseId::parse("p-1").unwrap();
    let payments = reader
        .payments(&tollgate_store::PaymentsQuery {
            account: bob.clone(),
            before: None,
            limit: 10,
        })
        .unwrap();
    let seen: Vec<_> = payments
        .iter()
        .map(|p| {
            (
                p.purchase_id.as_str(),
                p.amount.0,
                p.refunded.0,
                p.disputed.0,
                p.dispute_open,
                p.provider_reference.clone(),
                p.invoice,
            )
        })
        .collect();
    assert_eq!(seen, [("p-1", 2_000_000_000, 0, 0, false, None, None)]);
    let purchase = reader.purchase(&bob, &p1).unwrap().unwrap();
    assert_eq!((purchase.refunded.0, purchase.disputed.0), (0, 0));
    assert!(reader.top_up(&bob, &p1).unwrap().is_none());
    let row = reader.account(&bob, Timestamp(6_000)).unwrap().unwrap();
    assert_eq!(
        (row.state.payment, row.state.paid_28d.0),
        (Default::default(), 2_000_000_000)
    );
    let rec = reader.reconcile().unwrap();
    assert_eq!(
        (
            rec.payment_mismatches,
            rec.balance_mismatches,
            rec.lot_mismatches
        ),
        (vec![], vec![], vec![])
    );
}

/// A PostgreSQL database at schema version 12, as tollgate wrote it, upgraded to payments: its
/// webhook stays the operator's (listed, claimed as an `http` delivery), its purchase reads as
/// a payment with nothing taken back and its top-up invoice corrects nothing.
#[test]
fn upgrading_postgres_to_payments_keeps_webhooks_purchases_and_invoices() {
    let Some(url) = std::env::var("TOLLGATE_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
    else {
        return;
    };
    let schema = format!("tollgate_test_upgrade_payments_{}", std::process::id());
    let sep = if url.contains('?') { '&' } else { '?' };
    let target = format!("{url}{sep}options=-csearch_path%3D{schema}");
    let admin = |sql: String| {
        let url = url.clone();
        std::thread::spawn(move || {
            postgres::Client::connect(&url, postgres::NoTls)
                .unwrap()
                .batch_execute(&sql)
                .unwrap()
        })
        .join()
        .unwrap()
    };
    admin(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
    ));
    let t = target.clone();
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&t, postgres::NoTls).unwrap();
        let mut tx = c.transaction().unwrap();
        for sql in [
            include_str!("../../migrations/postgres/0001_init.sql"),
            include_str!("../../migrations/postgres/0002_terms_adjustments.sql"),
            include_str!("../../migrations/postgres/0003_billing_term.sql"),
            include_str!("../../migrations/postgres/0004_requests_by_endpoint.sql"),
            include_str!("../../migrations/postgres/0005_invoices.sql"),
            include_str!("../../migrations/postgres/0006_payments.sql"),
            include_str!("../../migrations/postgres/0007_statements.sql"),
            include_str!("../../migrations/postgres/0008_usage_invoices.sql"),
            include_str!("../../migrations/postgres/0009_web_sessions.sql"),
            include_str!("../../migrations/postgres/0010_spending_limits.sql"),
            include_str!("../../migrations/postgres/0011_webhooks.sql"),
            include_str!("../../migrations/postgres/0012_expiry_notices.sql"),
        ] {
            tx.batch_execute(sql).unwrap();
        }
        tx.batch_execute(
            "CREATE TABLE tollgate_schema (version INTEGER NOT NULL); \
             INSERT INTO tollgate_schema SELECT generate_series(1, 12); \
             INSERT INTO accounts (username, created_at, terms, balance_nanos, \
               paid_lifetime_nanos) VALUES ('acme', 0, '[]', 1000000000, 1000000000); \
             INSERT INTO purchases (account, purchase_id, amount_nanos, paid, created_at, \
               expires_at, remaining_nanos, balance_after, limit_after, locked_after) \
             VALUES ('acme', 'p-1', 1000000000, true, 1000, NULL, 1000000000, 1000000000, 2, \
               false); \
             INSERT INTO transfers (kind, debit, credit, amount_nanos, purchase_id, at) VALUES \
             ('purchase', 'system:purchases', 'customer:acme', 1000000000, 'p-1', 1000); \
             INSERT INTO invoice_counters VALUES (1970, 1); \
             INSERT INTO invoices (year, seq, prefix, account, kind, status, issued_at, \
               period_start, period_end, total_nanos, purchase_id, subtotal_nanos) VALUES \
             (1970, 1, 'TG', 'acme', 'top_up', 'paid', 1000, 1000, 1000, 1000000000, 'p-1', \
               1000000000); \
             INSERT INTO webhooks (webhook_id, url, events, secret, created_at) VALUES \
             ('wh_old', 'http://127.0.0.1:9/old', '[\"*\"]', 'whsec_old', 0); \
             INSERT INTO webhook_event_types VALUES ('*', 'wh_old'); \
             UPDATE webhook_event_counter SET last_seq = 1; \
             INSERT INTO webhook_events VALUES (1, 'acme', 'purchase.succeeded', 1000, \
               '{\"type\":\"purchase.succeeded\",\"data\":{\"purchase_id\":\"p-1\",\
\"amount_nano_usd\":1000000000,\"kind\":\"paid\",\"balance_nano_usd\":1000000000,\
\"expires_at\":null}}'); \
             INSERT INTO webhook_deliveries (webhook_id, event_seq, account, status, attempts, \
               tries, queued_at, next_attempt_at) VALUES ('wh_old', 1, 'acme', 'pending', 0, 0, \
               1000, 1000)",
        )
        .unwrap();
        tx.commit().unwrap();
    })
    .join()
    .unwrap();
    let mut store = tollgate_store::open(&target).unwrap();
    assert_eq!(store.schema_version().unwrap(), 16);
    let mut reader = (store.reader_factory())().unwrap();
    let listed: Vec<String> = reader
        .webhooks()
        .unwrap()
        .into_iter()
        .map(|w| w.webhook_id)
        .collect();
    assert_eq!(listed, ["wh_old"]);
    let mut claimed = Vec::new();
    store
        .transaction(&mut |tx| {
            claimed = tx.claim_deliveries(Timestamp(2_000), Timestamp(60_000), 10, 10)?;
            Ok(())
        })
        .unwrap();
    let kinds: Vec<_> = claimed
        .iter()
        .map(|c| (c.webhook_id.as_str(), c.kind))
        .collect();
    assert_eq!(kinds, [("wh_old", tollgate_store::WebhookKind::Http)]);
    let acme = AccountId::parse("acme").unwrap();
    let payments = reader
        .payments(&tollgate_store::PaymentsQuery {
            account: acme.clone(),
            before: None,
            limit: 10,
        })
        .unwrap();
    assert_eq!(payments.len(), 1);
    let p = &payments[0];
    assert_eq!(
        (p.invoice, p.refunded.0, p.disputed.0, p.dispute_open),
        (Some((1970, 1)), 0, 0, false)
    );
    assert_eq!(reader.invoice(1970, 1).unwrap().unwrap().corrects, None);
    let row = reader.account(&acme, Timestamp(2_000)).unwrap().unwrap();
    assert_eq!(row.state.payment, Default::default());
    assert_eq!(reader.reconcile().unwrap().payment_mismatches, vec![]);
    drop(reader);
    drop(store);
    admin(format!("DROP SCHEMA {schema} CASCADE"));
}
