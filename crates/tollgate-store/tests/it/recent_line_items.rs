//! On SQLite, a batch appends the line items of accounts it touches only a few times to
//! `line_items_recent`, and those of accounts with a page's worth directly to the table
//! clustered by account; once the recent table holds enough, a batch moves them all there (or,
//! sooner, the store does between batches while the write path is idle).
//! Billing events read both sides: these tests check that every read answers the same wherever
//! the line items are, through a move, with paging and filters.

use rust_decimal::Decimal;
use tollgate_core::ids::{AccountId, ApiKeyId, EndpointId, RequestId};
use tollgate_core::machine::{BatchState, LineItem};
use tollgate_core::pricing::Charge;
use tollgate_core::{Nanos, Timestamp};
use tollgate_store::sqlite::SqliteStore;
use tollgate_store::{BillingEventsQuery, Reader, Store};

const T: i64 = 1_780_272_000_000;

fn item(account: &str, id: &str, at: i64, endpoint: &str, key: Option<&str>) -> LineItem {
    LineItem {
        request_id: RequestId::parse(id).unwrap(),
        account: AccountId::parse(account).unwrap(),
        endpoint: EndpointId::parse(endpoint).unwrap(),
        api_key: key.map(|k| ApiKeyId::parse(k).unwrap()),
        price_version: 1,
        unit: "image".into(),
        charge: Charge {
            quantity: Decimal::ONE,
            unit_price: Decimal::new(3, 2),
            percent_discount: None,
            subtotal_nanos: Nanos(30_000_000),
            discount_nanos: Nanos::ZERO,
            total_nanos: Nanos(30_000_000),
            blended: false,
        },
        status_code: 200,
        billed_at: Timestamp(at),
        queue_ms: None,
        inference_ms: Some(1_000),
    }
}

fn bill(store: &mut SqliteStore, items: Vec<LineItem>) {
    let state = BatchState {
        line_items: items,
        now: Timestamp(T),
        ..BatchState::default()
    };
    store
        .transaction(&mut |tx| tx.persist(&state).map(drop))
        .unwrap();
}

/// (rows in the table clustered by account, rows in the recent table).
fn sides(path: &std::path::Path) -> (i64, i64) {
    let c = rusqlite::Connection::open(path).unwrap();
    let count = |t: &str| -> i64 {
        c.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))
            .unwrap()
    };
    (count("line_items_by_account"), count("line_items_recent"))
}

fn query(account: &str) -> BillingEventsQuery {
    BillingEventsQuery {
        account: AccountId::parse(account).unwrap(),
        from: Timestamp(T),
        to: Timestamp(T + 1_000_000),
        endpoints: vec![],
        request_ids: vec![],
        api_keys: vec![],
        after: None,
        newest_first: false,
        limit: 1_000,
    }
}

/// The request ids of every page of `q`, `limit` at a time, following the keyset position.
fn paged(reader: &mut dyn Reader, mut q: BillingEventsQuery, limit: usize) -> Vec<String> {
    q.limit = limit;
    let mut out = Vec::new();
    loop {
        let page = reader.billing_events(&q).unwrap();
        assert!(page.len() <= limit);
        out.extend(page.iter().map(|l| l.request_id.as_str().to_string()));
        match page.last() {
            Some(last) if page.len() == limit => {
                q.after = Some((last.billed_at, last.request_id.clone()))
            }
            _ => return out,
        }
    }
}

/// `ids` in billing order: by time, then request id.
fn ordered(mut items: Vec<(i64, &str)>) -> Vec<String> {
    items.sort();
    items.into_iter().map(|(_, id)| id.to_string()).collect()
}

#[test]
fn billing_events_read_the_same_wherever_the_line_items_are() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let mut store = SqliteStore::open(&path).unwrap();
    let mut reader = (store.reader_factory())().unwrap();

    // "busy" has a page's worth in the batch: straight to its range; "acme" has three (one on
    // another endpoint, one with a key): to the recent table.
    let mut batch: Vec<LineItem> = (0..10)
        .map(|i| item("busy", &format!("busy-{i:02}"), T + 100 + i, "img", None))
        .collect();
    batch.push(item("acme", "a-2", T + 200, "img", None));
    batch.push(item("acme", "a-4", T + 400, "video", None));
    batch.push(item("acme", "a-5", T + 500, "img", Some("key1")));
    bill(&mut store, batch);
    assert_eq!(sides(&path), (10, 3));

    // While the write path is idle, the store moves the recent line items once there are a
    // few thousand, not before.
    store.idle().unwrap();
    assert_eq!(sides(&path), (10, 3));
    bill(
        &mut store,
        (0..1_997)
            .map(|i| {
                item(
                    &format!("g{:03}", i % 300),
                    &format!("g-{i:04}"),
                    T + i,
                    "img",
                    None,
                )
            })
            .collect(),
    );
    assert_eq!(sides(&path), (10, 2_000));
    store.idle().unwrap();
    assert_eq!(sides(&path), (2_010, 0));

    // Enough line items of accounts touched a few times each to pass the threshold: this batch
    // moves every recent line item, its own included, into the clustered table itself.
    let filler: Vec<LineItem> = (0..20_000)
        .map(|i| {
            let account = format!("f{:04}", i % 3_000);
            item(&account, &format!("f-{i:05}"), T + 300 + i, "img", None)
        })
        .collect();
    bill(&mut store, filler);
    assert_eq!(sides(&path), (22_010, 0));

    // Later line items of "acme", one of them billed before those already moved: recent again.
    bill(
        &mut store,
        vec![
            item("acme", "a-1", T + 100, "img", None),
            item("acme", "a-3", T + 300, "img", None),
            item("acme", "a-6", T + 600, "img", None),
        ],
    );
    assert_eq!(sides(&path), (22_010, 3));

    let all = ordered(vec![
        (100, "a-1"),
        (200, "a-2"),
        (300, "a-3"),
        (400, "a-4"),
        (500, "a-5"),
        (600, "a-6"),
    ]);
    for limit in [1, 2, 4, 1_000] {
        assert_eq!(
            paged(reader.as_mut(), query("acme"), limit),
            all,
            "limit {limit}"
        );
    }
    // A page of the clustered side alone does not cut short the recent side's earlier items.
    let page = reader
        .billing_events(&BillingEventsQuery {
            limit: 2,
            ..query("acme")
        })
        .unwrap();
    let ids: Vec<&str> = page.iter().map(|l| l.request_id.as_str()).collect();
    assert_eq!(ids, ["a-1", "a-2"]);
    // Newest first: the same items in reverse, paged backwards across both sides, and a page
    // of either side alone does not cut short the other's later items.
    let newest = BillingEventsQuery {
        newest_first: true,
        ..query("acme")
    };
    let reversed: Vec<String> = all.iter().rev().cloned().collect();
    for limit in [1, 2, 4, 1_000] {
        assert_eq!(
            paged(reader.as_mut(), newest.clone(), limit),
            reversed,
            "newest first, limit {limit}"
        );
    }
    let q = BillingEventsQuery {
        from: Timestamp(T + 200),
        to: Timestamp(T + 600),
        ..newest.clone()
    };
    assert_eq!(paged(reader.as_mut(), q, 3), ["a-5", "a-4", "a-3", "a-2"]);

    // The time range, and every filter, on both sides at once.
    let q = BillingEventsQuery {
        from: Timestamp(T + 200),
        to: Timestamp(T + 600),
        ..query("acme")
    };
    assert_eq!(paged(reader.as_mut(), q, 2), ["a-2", "a-3", "a-4", "a-5"]);
    let q = BillingEventsQuery {
        endpoints: vec![EndpointId::parse("img").unwrap()],
        ..query("acme")
    };
    assert_eq!(
        paged(reader.as_mut(), q, 3),
        ["a-1", "a-2", "a-3", "a-5", "a-6"]
    );
    let q = BillingEventsQuery {
        api_keys: vec![ApiKeyId::parse("key1").unwrap()],
        ..query("acme")
    };
    assert_eq!(paged(reader.as_mut(), q, 3), ["a-5"]);
    // By request id, the clustered side is reached through each request's row.
    let c = rusqlite::Connection::open(&path).unwrap();
    for (id, at) in [("a-2", T + 200), ("a-6", T + 600), ("busy-03", T + 103)] {
        c.execute(
            "INSERT INTO requests (request_id, source, account, endpoint_id, price_version, \
             status, submitted_at, finished_at, hold_nanos, num_gpus) \
             VALUES (?1, 'event', ?2, 'img', 1, 'COMPLETED', ?3, ?3, 0, 1)",
            rusqlite::params![id, if id == "busy-03" { "busy" } else { "acme" }, at],
        )
        .unwrap();
    }
    let q = BillingEventsQuery {
        request_ids: ["a-6", "a-2", "busy-03"]
            .iter()
            .map(|r| RequestId::parse(r).unwrap())
            .collect(),
        ..query("acme")
    };
    assert_eq!(paged(reader.as_mut(), q.clone(), 1), ["a-2", "a-6"]);
    let q = BillingEventsQuery {
        newest_first: true,
        ..q
    };
    assert_eq!(paged(reader.as_mut(), q, 1), ["a-6", "a-2"]);

    // The account that went straight to its range, and one of the moved ones.
    let busy: Vec<String> = (0..10).map(|i| format!("busy-{i:02}")).collect();
    assert_eq!(paged(reader.as_mut(), query("busy"), 3), busy);
    let f7: Vec<String> = (0..20_000)
        .filter(|i| i % 3_000 == 7)
        .map(|i| format!("f-{i:05}"))
        .collect();
    assert_eq!(paged(reader.as_mut(), query("f0007"), 2), f7);
}
