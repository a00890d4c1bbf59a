//! The outbox and its deliveries, on every backend: a batch's events are numbered in commit
//! order and fanned out in the same commit to the live webhooks that want their types; an
//! `invoice.issued` event names the number the store gave its invoice; claims lease what is
//! due, in each account's order, round-robin across webhooks up to each one's share; attempts
//! are recorded only under their lease, and never undo a redelivery made while they were in
//! flight; a redelivery queues a delivery again, never a deleted webhook's; a deleted webhook
//! is sent nothing more and none of its deliveries reads as pending; on PostgreSQL, a
//! subscription change and a batch writing events wait for each other's commit.

use tollgate_core::events::{EventData, EventType, NewEvent};
use tollgate_core::ids::AccountId;
use tollgate_core::machine::{BatchState, InvoiceKind, InvoiceStatus, LockReason, NewInvoice};
use tollgate_core::{Nanos, Timestamp};
use tollgate_store::testing::{backends, postgres_url, Backend, TestDb};
use tollgate_store::{
    AttemptRecord, BillingMode, DeliveriesQuery, DeliveryNext, DeliveryRecord, DeliveryResult,
    DeliveryStatus, Store, WebhookEvents, WebhookRecord,
};

const T0: i64 = 1_767_225_600_000; // 2026-01-01

fn hook(id: &str, events: WebhookEvents) -> WebhookRecord {
    WebhookRecord {
        webhook_id: id.into(),
        url: format!("http://127.0.0.1:9/{id}"),
        events,
        description: None,
        secret: format!("whsec_{id}"),
        created_at: Timestamp(T0),
        deleted_at: None,
    }
}

fn acct(name: &str) -> AccountId {
    AccountId::parse(name).unwrap()
}

fn event(account: &str, at: i64, data: EventData) -> NewEvent {
    NewEvent {
        account: acct(account),
        at: Timestamp(at),
        data,
    }
}

fn low(balance: i64) -> EventData {
    EventData::BalanceLow {
        balance_nano_usd: Nanos(balance),
        low_balance_nano_usd: Nanos(5_000_000_000),
    }
}

/// Persists a batch of `state` in one db transaction.
fn persist(store: &mut dyn Store, state: &BatchState) {
    store
        .transaction(&mut |tx| tx.persist(state).map(drop))
        .unwrap();
}

fn claim(store: &mut dyn Store, now: i64, limit: usize) -> Vec<tollgate_store::ClaimedDelivery> {
    claim_shared(store, now, limit, limit)
}

/// A claim of up to `limit`, at most `per_webhook` of one webhook's leased at once.
fn claim_shared(
    store: &mut dyn Store,
    now: i64,
    limit: usize,
    per_webhook: usize,
) -> Vec<tollgate_store::ClaimedDelivery> {
    let mut out = Vec::new();
    store
        .transaction(&mut |tx| {
            out =
                tx.claim_deliveries(Timestamp(now), Timestamp(now + 60_000), limit, per_webhook)?;
            Ok(())
        })
        .unwrap();
    out
}

fn record(store: &mut dyn Store, results: Vec<DeliveryResult>) -> usize {
    let mut n = 0;
    store
        .transaction(&mut |tx| {
            n = tx.record_deliveries(&results)?;
            Ok(())
        })
        .unwrap();
    n
}

fn answered(
    c: &tollgate_store::ClaimedDelivery,
    at: i64,
    code: u16,
    next: DeliveryNext,
) -> DeliveryResult {
    DeliveryResult {
        webhook_id: c.webhook_id.clone(),
        event_seq: c.event.seq,
        lease_until: c.lease_until,
        queued_at: c.queued_at,
        attempt: AttemptRecord {
            n: 0,
            at: Timestamp(at),
            status_code: Some(code),
            error: None,
            duration_ms: 3,
        },
        next,
    }
}

#[test]
fn a_batch_writes_its_events_and_their_deliveries_in_its_commit() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        let store = &mut *store;
        store
            .transaction(&mut |tx| {
                tx.create_account(&acct("acme"), BillingMode::Prepaid, Timestamp(T0))?;
                tx.insert_webhook(&hook(
                    "wh_low",
                    WebhookEvents::Only(vec![EventType::BalanceLow]),
                ))?;
                tx.insert_webhook(&hook("wh_all", WebhookEvents::All))?;
                tx.insert_webhook(&hook(
                    "wh_gone",
                    WebhookEvents::Only(vec![EventType::BalanceLow, EventType::InvoiceIssued]),
                ))?;
                assert!(tx.delete_webhook("wh_gone", Timestamp(T0))?);
                assert!(
                    !tx.delete_webhook("wh_gone", Timestamp(T0))?,
                    "deleted once"
                );
                Ok(())
            })
            .unwrap();

        // A batch without events writes none.
        persist(
            store,
            &BatchState {
                now: Timestamp(T0),
                ..BatchState::default()
            },
        );
        let mut reader = (store.reader_factory())().unwrap();
        assert!(
            reader.webhook_events(0, 10).unwrap().is_empty(),
            "{backend:?}"
        );

        // A batch with a top-up invoice and its event, and two other events.
        let invoice = NewInvoice {
            account: acct("acme"),
            kind: InvoiceKind::TopUp,
            status: InvoiceStatus::Paid,
            issued_at: Timestamp(T0 + 1),
            period_start: Timestamp(T0 + 1),
            period_end: Timestamp(T0 + 1),
            subtotal: Nanos(25_000_000_000),
            discount: Nanos(0),
            total: Nanos(25_000_000_000),
            purchase_id: None,
        };
        let issued = EventData::InvoiceIssued {
            invoice: 0,
            invoice_id: String::new(),
            number: String::new(),
            kind: "top_up".into(),
            status: "paid".into(),
            total_nano_usd: Nanos(25_000_000_000),
            period_start: Timestamp(T0 + 1),
            period_end: Timestamp(T0 + 1),
        };
        let batch = BatchState {
            now: Timestamp(T0 + 1),
            new_invoices: vec![invoice],
            events: vec![
                event("acme", T0 + 1, low(4_000_000_000)),
                event("acme", T0 + 1, issued),
                event(
                    "acme",
                    T0 + 1,
                    EventData::AccountLocked {
                        lock_reason: LockReason::ExhaustedBalance,
                        balance_nano_usd: Nanos(0),
                        running_runners: Vec::new(),
                    },
                ),
            ],
            ..BatchState::default()
        };
        persist(store, &batch);

        let events = reader.webhook_events(0, 10).unwrap();
        let types: Vec<EventType> = events.iter().map(|e| e.data.event_type()).collect();
        assert_eq!(
            types,
            [
                EventType::BalanceLow,
                EventType::InvoiceIssued,
                EventType::AccountLocked
            ],
            "{backend:?}"
        );
        assert!(events.windows(2).all(|w| w[0].seq < w[1].seq), "{events:?}");
        assert!(events
            .iter()
            .all(|e| e.account == acct("acme") && e.created_at == Timestamp(T0 + 1)));
        let number = match &events[1].data {
            EventData::InvoiceIssued {
                invoice_id, number, ..
            } => (invoice_id.clone(), number.clone()),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            number,
            ("inv_2026_000001".to_string(), "TG-2026-000001".to_string())
        );
        assert_eq!(events[0].data, low(4_000_000_000), "stored as recorded");

        // The fan-out: wh_all gets all three, wh_low the balance.low, the deleted none.
        let list = |reader: &mut Box<dyn tollgate_store::Reader>, id: &str| {
            reader
                .webhook_deliveries(&DeliveriesQuery {
                    webhook_id: id.into(),
                    before_seq: None,
                    limit: 10,
                })
                .unwrap()
        };
        let all = list(&mut reader, "wh_all");
        assert_eq!(all.len(), 3, "{backend:?}: {all:?}");
        assert_eq!(all[0].event_seq, events[2].seq, "newest first");
        assert!(all.iter().all(|d| d.status == DeliveryStatus::Pending
            && d.attempts == 0
            && d.next_attempt_at == Some(Timestamp(T0 + 1))));
        let only = list(&mut reader, "wh_low");
        assert_eq!(only.len(), 1);
        assert_eq!(
            (only[0].event_seq, only[0].event_type),
            (events[0].seq, EventType::BalanceLow)
        );
        assert!(list(&mut reader, "wh_gone").is_empty());
        let paged = reader
            .webhook_deliveries(&DeliveriesQuery {
                webhook_id: "wh_all".into(),
                before_seq: Some(all[0].event_seq),
                limit: 1,
            })
            .unwrap();
        assert_eq!(paged.len(), 1);
        assert_eq!(paged[0].event_seq, events[1].seq);
        assert_eq!(reader.webhooks().unwrap().len(), 2, "live ones");
        assert!(reader
            .webhook("wh_gone")
            .unwrap()
            .unwrap()
            .deleted_at
            .is_some());
    }
}

#[test]
fn claims_lease_what_is_due_in_each_accounts_order_and_attempts_record_under_the_lease() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        let store = &mut *store;
        store
            .transaction(&mut |tx| tx.insert_webhook(&hook("wh_all", WebhookEvents::All)))
            .unwrap();
        // acme's two events, in two commits, and one of globex.
        persist(
            store,
            &BatchState {
                now: Timestamp(T0),
                events: vec![event("acme", T0, low(1)), event("globex", T0, low(3))],
                ..BatchState::default()
            },
        );
        persist(
            store,
            &BatchState {
                now: Timestamp(T0 + 5),
                events: vec![event("acme", T0 + 5, low(2))],
                ..BatchState::default()
            },
        );
        let mut reader = (store.reader_factory())().unwrap();
        let seqs: Vec<i64> = reader
            .webhook_events(0, 10)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();

        // acme's second waits for its first: one claim takes acme's first and globex's.
        let first = claim(store, T0 + 10, 10);
        let mut claimed: Vec<i64> = first.iter().map(|c| c.event.seq).collect();
        claimed.sort();
        assert_eq!(claimed, [seqs[0], seqs[1]], "{backend:?}");
        assert!(first
            .iter()
            .all(|c| c.secret == "whsec_wh_all" && c.tries == 0));
        // Leased: nothing more is due, not even acme's second (its first is in flight).
        assert!(claim(store, T0 + 11, 10).is_empty(), "{backend:?}");

        // acme's first fails once: acme's second goes (the failing one delays it one attempt).
        let acme = first.iter().find(|c| c.event.seq == seqs[0]).unwrap();
        let retry = DeliveryNext::RetryAt(Timestamp(T0 + 1_000));
        assert_eq!(record(store, vec![answered(acme, T0 + 12, 500, retry)]), 1);
        // The same attempt again (its lease is gone) records nothing.
        assert_eq!(record(store, vec![answered(acme, T0 + 12, 500, retry)]), 0);
        let second = claim(store, T0 + 13, 10);
        assert_eq!(
            second.iter().map(|c| c.event.seq).collect::<Vec<_>>(),
            [seqs[2]]
        );
        // The failed one is due at its retry time, with one try counted.
        let again = claim(store, T0 + 1_000, 10);
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].event.seq, again[0].tries), (seqs[0], 1));
        assert_eq!(
            record(
                store,
                vec![answered(
                    &again[0],
                    T0 + 1_001,
                    204,
                    DeliveryNext::Delivered
                )]
            ),
            1
        );
        let (d, attempts) = reader.webhook_delivery("wh_all", seqs[0]).unwrap().unwrap();
        assert_eq!(d.status, DeliveryStatus::Delivered, "{backend:?}");
        assert_eq!(
            (d.attempts, d.last_status_code, d.next_attempt_at),
            (2, Some(204), None)
        );
        assert_eq!(d.delivered_at, Some(Timestamp(T0 + 1_001)));
        assert_eq!(
            attempts
                .iter()
                .map(|a| (a.n, a.at.0, a.status_code))
                .collect::<Vec<_>>(),
            [(1, T0 + 12, Some(500)), (2, T0 + 1_001, Some(204))]
        );

        // A lease that passed is claimed again (a server died while sending): globex's.
        let globex = first.iter().find(|c| c.event.seq == seqs[1]).unwrap();
        let reclaimed = claim(store, globex.lease_until.0, 10);
        assert!(
            reclaimed.iter().any(|c| c.event.seq == seqs[1]),
            "{backend:?}"
        );
        // The first claim's late answer records nothing; the second's does.
        assert_eq!(
            record(
                store,
                vec![answered(globex, T0 + 70_000, 200, DeliveryNext::Delivered)]
            ),
            0
        );

        // A redelivery queues a delivered one again, due now, its tries from zero.
        let mut found = false;
        store
            .transaction(&mut |tx| {
                found = tx.redeliver("wh_all", seqs[0], Timestamp(T0 + 200_000))?;
                assert!(!tx.redeliver("wh_all", 999_999, Timestamp(T0))?);
                Ok(())
            })
            .unwrap();
        assert!(found);
        let redo = claim(store, T0 + 200_000, 10);
        let redo = redo
            .iter()
            .find(|c| c.event.seq == seqs[0])
            .expect("queued again");
        assert_eq!((redo.tries, redo.queued_at), (0, Timestamp(T0 + 200_000)));

        // Deleting the webhook gives up what is pending, leased or not.
        store
            .transaction(&mut |tx| {
                tx.delete_webhook("wh_all", Timestamp(T0 + 300_000))
                    .map(drop)
            })
            .unwrap();
        let all = reader
            .webhook_deliveries(&DeliveriesQuery {
                webhook_id: "wh_all".into(),
                before_seq: None,
                limit: 10,
            })
            .unwrap();
        assert!(
            all.iter().all(
                |d| d.status == DeliveryStatus::Failed || d.status == DeliveryStatus::Delivered
            ),
            "{all:?}"
        );
        assert!(all
            .iter()
            .any(|d| d.last_error.as_deref() == Some("webhook deleted")));
        assert!(claim(store, T0 + 10_000_000, 10).is_empty());
    }
}

fn redeliver(store: &mut dyn Store, webhook_id: &str, seq: i64, now: i64) -> bool {
    let mut found = false;
    store
        .transaction(&mut |tx| {
            found = tx.redeliver(webhook_id, seq, Timestamp(now))?;
            Ok(())
        })
        .unwrap();
    found
}

fn list(reader: &mut dyn tollgate_store::Reader, webhook_id: &str) -> Vec<DeliveryRecord> {
    reader
        .webhook_deliveries(&DeliveriesQuery {
            webhook_id: webhook_id.into(),
            before_seq: None,
            limit: 100,
        })
        .unwrap()
}

/// `(webhook, account)` of each claimed delivery, sorted.
fn whose(claimed: &[tollgate_store::ClaimedDelivery]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = claimed
        .iter()
        .map(|c| (c.webhook_id.clone(), c.event.account.as_str().to_string()))
        .collect();
    out.sort();
    out
}

fn pair(webhook: &str, account: &str) -> (String, String) {
    (webhook.to_string(), account.to_string())
}

fn unlocked() -> EventData {
    EventData::AccountUnlocked {
        balance_nano_usd: Nanos(1),
    }
}

#[test]
fn claims_share_the_slots_round_robin_across_webhooks_each_up_to_its_share() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        let store = &mut *store;
        store
            .transaction(&mut |tx| {
                // A receiver that never answers, subscribed to everything, and a healthy one.
                tx.insert_webhook(&hook("wh_dead", WebhookEvents::All))?;
                tx.insert_webhook(&hook(
                    "wh_ok",
                    WebhookEvents::Only(vec![EventType::AccountUnlocked]),
                ))
            })
            .unwrap();
        // Six accounts' first events, due first: wh_dead's backlog, each claimable at once.
        persist(
            store,
            &BatchState {
                now: Timestamp(T0),
                events: (1..=6)
                    .map(|i| event(&format!("a{i}"), T0, low(i)))
                    .collect(),
                ..BatchState::default()
            },
        );
        // Then one event both webhooks want.
        persist(
            store,
            &BatchState {
                now: Timestamp(T0 + 5),
                events: vec![event("zeta", T0 + 5, unlocked())],
                ..BatchState::default()
            },
        );

        // Two slots: each webhook's first turn, not wh_dead's two oldest.
        let first = claim_shared(store, T0 + 10, 2, 2);
        assert_eq!(
            whose(&first),
            [pair("wh_dead", "a1"), pair("wh_ok", "zeta")],
            "{backend:?}"
        );
        // Four more slots: wh_dead up to its share of two (its leased one counted), wh_ok has
        // nothing more due.
        let second = claim_shared(store, T0 + 11, 4, 2);
        assert_eq!(whose(&second), [pair("wh_dead", "a2")], "{backend:?}");
        assert!(claim_shared(store, T0 + 12, 4, 2).is_empty(), "{backend:?}");

        // A new event for both: wh_ok (one leased) gets it, wh_dead (at its share) does not.
        persist(
            store,
            &BatchState {
                now: Timestamp(T0 + 13),
                events: vec![event("omega", T0 + 13, unlocked())],
                ..BatchState::default()
            },
        );
        let third = claim_shared(store, T0 + 14, 4, 2);
        assert_eq!(whose(&third), [pair("wh_ok", "omega")], "{backend:?}");

        // wh_dead's attempts time out: its slots free, its next two go.
        let timed_out: Vec<DeliveryResult> = first
            .iter()
            .chain(&second)
            .filter(|c| c.webhook_id == "wh_dead")
            .map(|c| {
                let mut r = answered(c, T0 + 20, 0, DeliveryNext::RetryAt(Timestamp(T0 + 9_000)));
                r.attempt.status_code = None;
                r.attempt.error = Some("no answer within 10 s".into());
                r
            })
            .collect();
        assert_eq!(record(store, timed_out), 2, "{backend:?}");
        let fourth = claim_shared(store, T0 + 21, 4, 2);
        assert_eq!(
            whose(&fourth),
            [pair("wh_dead", "a3"), pair("wh_dead", "a4")],
            "{backend:?}"
        );
        // A lease that passed (its server died) counts no more.
        let later = fourth[0].lease_until.0;
        let fifth = claim_shared(store, later, 4, 2);
        assert_eq!(
            whose(&fifth).iter().filter(|(w, _)| w == "wh_dead").count(),
            2,
            "{backend:?}: {:?}",
            whose(&fifth)
        );
    }
}

#[test]
fn a_redelivery_made_while_an_attempt_is_in_flight_is_kept_when_the_attempt_records() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        let store = &mut *store;
        store
            .transaction(&mut |tx| tx.insert_webhook(&hook("wh_all", WebhookEvents::All)))
            .unwrap();
        persist(
            store,
            &BatchState {
                now: Timestamp(T0),
                events: vec![event("acme", T0, low(1))],
                ..BatchState::default()
            },
        );
        let mut reader = (store.reader_factory())().unwrap();
        let seq = reader.webhook_events(0, 10).unwrap()[0].seq;

        // Claimed, then redelivered in the same millisecond the event was queued.
        let claimed = claim(store, T0, 10);
        assert_eq!(claimed.len(), 1, "{backend:?}");
        assert!(redeliver(store, "wh_all", seq, T0));
        // The attempt in flight fails and would retry in 50 s: recorded, but the delivery
        // stays as the redelivery queued it, due now with its tries from zero.
        let retry = DeliveryNext::RetryAt(Timestamp(T0 + 50_000));
        assert_eq!(
            record(store, vec![answered(&claimed[0], T0 + 1, 500, retry)]),
            1
        );
        let (d, attempts) = reader.webhook_delivery("wh_all", seq).unwrap().unwrap();
        assert_eq!(
            (d.status, d.next_attempt_at, d.attempts, d.last_status_code),
            (DeliveryStatus::Pending, Some(Timestamp(T0)), 1, Some(500)),
            "{backend:?}"
        );
        assert_eq!(attempts.len(), 1, "the attempt is kept");
        let again = claim(store, T0 + 2, 10);
        assert_eq!(again.len(), 1, "{backend:?}: sent again at once");
        assert_eq!(again[0].tries, 0, "{backend:?}");
        assert!(again[0].queued_at > claimed[0].queued_at);

        // Redelivered later while the next attempt is in flight, which gives up (its window
        // ended): still pending, as the redelivery queued it.
        assert!(redeliver(store, "wh_all", seq, T0 + 100));
        assert_eq!(
            record(
                store,
                vec![answered(&again[0], T0 + 101, 503, DeliveryNext::Failed)]
            ),
            1
        );
        let (d, attempts) = reader.webhook_delivery("wh_all", seq).unwrap().unwrap();
        assert_eq!(
            (d.status, d.next_attempt_at, d.attempts),
            (DeliveryStatus::Pending, Some(Timestamp(T0 + 100)), 2),
            "{backend:?}"
        );
        assert_eq!(attempts.len(), 2);
        let third = claim(store, T0 + 102, 10);
        assert_eq!(
            (third.len(), third[0].queued_at),
            (1, Timestamp(T0 + 100)),
            "{backend:?}"
        );
        // Without a redelivery meanwhile, the attempt decides as before.
        assert_eq!(
            record(
                store,
                vec![answered(&third[0], T0 + 103, 204, DeliveryNext::Delivered)]
            ),
            1
        );
        let (d, _) = reader.webhook_delivery("wh_all", seq).unwrap().unwrap();
        assert_eq!(
            (d.status, d.next_attempt_at, d.delivered_at),
            (DeliveryStatus::Delivered, None, Some(Timestamp(T0 + 103))),
            "{backend:?}"
        );
    }
}

/// Runs `sql` on the test database over a connection of its own, outside the store.
fn raw_sql(db: &TestDb, sql: &str) {
    match db.backend() {
        Backend::Sqlite => rusqlite::Connection::open(db.target())
            .unwrap()
            .execute_batch(sql)
            .unwrap(),
        Backend::Postgres(_) => postgres::Client::connect(db.target(), postgres::NoTls)
            .unwrap()
            .batch_execute(sql)
            .unwrap(),
    }
}

#[test]
fn a_deleted_webhooks_deliveries_are_never_pending_nor_redelivered() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        let store = &mut *store;
        store
            .transaction(&mut |tx| tx.insert_webhook(&hook("wh_gone", WebhookEvents::All)))
            .unwrap();
        persist(
            store,
            &BatchState {
                now: Timestamp(T0),
                events: vec![event("acme", T0, low(1)), event("globex", T0, low(2))],
                ..BatchState::default()
            },
        );
        let mut reader = (store.reader_factory())().unwrap();
        let seqs: Vec<i64> = reader
            .webhook_events(0, 10)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        // One delivered, one pending, when the webhook is deleted.
        let claimed = claim(store, T0, 10);
        let acme = claimed.iter().find(|c| c.event.seq == seqs[0]).unwrap();
        record(
            store,
            vec![answered(acme, T0 + 1, 200, DeliveryNext::Delivered)],
        );
        store
            .transaction(&mut |tx| tx.delete_webhook("wh_gone", Timestamp(T0 + 2)).map(drop))
            .unwrap();
        let before = list(&mut *reader, "wh_gone");
        assert_eq!(
            before.iter().map(|d| d.status).collect::<Vec<_>>(),
            [DeliveryStatus::Failed, DeliveryStatus::Delivered],
            "{backend:?}"
        );

        // Neither is queued again, whatever its status.
        for seq in &seqs {
            assert!(
                !redeliver(store, "wh_gone", *seq, T0 + 3),
                "{backend:?}: {seq}"
            );
        }
        assert_eq!(list(&mut *reader, "wh_gone"), before, "{backend:?}");
        assert!(claim(store, T0 + 4, 10).is_empty(), "{backend:?}");

        // A pending row a batch fanned out while the delete ran (before subscription changes
        // took the event counter's lock) reads as given up, and is never claimed.
        raw_sql(
            &db,
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = 0, \
             last_error = NULL WHERE webhook_id = 'wh_gone'",
        );
        let after = list(&mut *reader, "wh_gone");
        assert!(
            after.iter().all(|d| d.status == DeliveryStatus::Failed
                && d.next_attempt_at.is_none()
                && d.last_error.as_deref() == Some("webhook deleted")),
            "{backend:?}: {after:?}"
        );
        let (one, _) = reader
            .webhook_delivery("wh_gone", seqs[0])
            .unwrap()
            .unwrap();
        assert_eq!(one.status, DeliveryStatus::Failed, "{backend:?}");
        assert!(claim(store, T0 + 5, 10).is_empty(), "{backend:?}");
    }
}

/// Runs `change` in a db transaction of `changes` that stays open while a batch with an event
/// (at `at`) is persisted through `batches` on another thread, until that batch has either
/// committed or is waiting for a lock; then commits the change and waits for the batch.
/// Returns whether the batch waited.
fn change_while_a_batch_commits(
    db: &TestDb,
    changes: &mut dyn Store,
    batches: &mut dyn Store,
    change: &mut dyn FnMut(&mut dyn tollgate_store::Tx) -> tollgate_store::Result<()>,
    at: i64,
) -> bool {
    let Backend::Postgres(url) = db.backend() else {
        panic!("PostgreSQL only");
    };
    let mut watch = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let schema = db.schema().unwrap().to_string();
    let state = BatchState {
        now: Timestamp(at),
        events: vec![event("acme", at, low(at))],
        ..BatchState::default()
    };
    std::thread::scope(|scope| {
        let (go, started) = std::sync::mpsc::channel::<()>();
        let (finished, done) = std::sync::mpsc::channel::<()>();
        let batch = scope.spawn(move || {
            started.recv().unwrap();
            persist(batches, &state);
            finished.send(()).unwrap();
        });
        let mut waited = None;
        changes
            .transaction(&mut |tx| {
                change(tx)?;
                go.send(()).unwrap();
                // Until the batch is done, or its connection (named after the schema) waits
                // for a lock; the change's own connection idles in its transaction meanwhile.
                for _ in 0..2_000 {
                    if done.try_recv().is_ok() {
                        waited = Some(false);
                        break;
                    }
                    let locked: i64 = watch
                        .query_one(
                            "SELECT count(*) FROM pg_stat_activity \
                             WHERE application_name = $1 AND wait_event_type = 'Lock'",
                            &[&schema],
                        )
                        .unwrap()
                        .get(0);
                    if locked > 0 {
                        waited = Some(true);
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Ok(())
            })
            .unwrap();
        batch.join().unwrap();
        waited.expect("the batch neither finished nor waited within 10 s")
    })
}

#[test]
fn on_postgres_a_subscription_change_and_a_batch_writing_events_wait_for_each_others_commit() {
    let Some(url) = postgres_url() else {
        eprintln!("skipped: needs TOLLGATE_TEST_POSTGRES_URL");
        return;
    };
    let db = TestDb::new(&Backend::Postgres(url));
    let mut changes = db.open().unwrap();
    let mut batches = db.open().unwrap();
    changes
        .transaction(&mut |tx| tx.insert_webhook(&hook("wh_gone", WebhookEvents::All)))
        .unwrap();
    let mut reader = (changes.reader_factory())().unwrap();

    // Deleted while a batch writes an event: the batch waits for the delete's commit, then
    // fans out to the webhooks live at its own commit, so the deleted one gets nothing (before
    // the lock it got a delivery the delete never saw, pending for good).
    let waited = change_while_a_batch_commits(
        &db,
        &mut *changes,
        &mut *batches,
        &mut |tx| tx.delete_webhook("wh_gone", Timestamp(T0)).map(drop),
        T0 + 1,
    );
    assert!(waited, "the batch waits for the delete");
    assert_eq!(
        list(&mut *reader, "wh_gone"),
        [],
        "nothing for a deleted webhook"
    );

    // Created while a batch writes an event: the batch commits after the webhook, so its
    // event is delivered to it (its fan-out reads the subscriptions once the lock is held,
    // not as of a statement that began before the webhook committed).
    let waited = change_while_a_batch_commits(
        &db,
        &mut *changes,
        &mut *batches,
        &mut |tx| tx.insert_webhook(&hook("wh_new", WebhookEvents::All)),
        T0 + 2,
    );
    assert!(waited, "the batch waits for the creation");
    let events = reader.webhook_events(0, 10).unwrap();
    let last = events.last().unwrap().seq;
    let new = list(&mut *reader, "wh_new");
    assert_eq!(
        new.iter()
            .map(|d| (d.event_seq, d.status))
            .collect::<Vec<_>>(),
        [(last, DeliveryStatus::Pending)],
        "the event committed after the webhook reaches it"
    );
}
