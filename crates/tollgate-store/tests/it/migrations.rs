//! Upgrading a database written by an earlier tollgate: the rollups migration reshapes line
//! items and builds the usage and activity rollups from what is already there, so an upgraded
//! account's usage adds up to its line items from the first query.

use rusqlite::{params, Connection};
use rust_decimal::Decimal;
use tollgate_core::ids::{AccountId, EndpointId};
use tollgate_core::Timestamp;
use tollgate_store::sqlite::SqliteStore;
use tollgate_store::{BillingEventsQuery, RollupQuery, Store, SETTING_FOLDED_BEFORE};

const SCHEMA_1: &str = include_str!("../../migrations/sqlite/0001_init.sql");

/// A version-1 database with two accounts and billed requests across two hours, written as
/// tollgate 1 wrote them.
fn version_1_database(path: &std::path::Path) {
    let mut c = Connection::open(path).unwrap();
    let tx = c.transaction().unwrap();
    tx.execute_batch(SCHEMA_1).unwrap();
    tx.pragma_update(None, "user_version", 1).unwrap();
    for account in ["acme", "bob"] {
        tx.execute(
            "INSERT INTO accounts (username, created_at, billing) VALUES (?1, 0, 'prepaid')",
            [account],
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
    assert_eq!(store.schema_version().unwrap(), 5);
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
            limit: 10,
        })
        .unwrap();
    let at: Vec<i64> = events.iter().map(|e| e.billed_at.0).collect();
    assert_eq!(at, [60_000, 61_000, 3_700_000]);
}
