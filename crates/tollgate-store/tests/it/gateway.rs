//! Gateway mode's queue on every store (`gateway_requests`): a row written by a batch is loaded
//! back as it was written (the input, the webhook, the lease, the result's bytes whatever they
//! are) and updated in place; the dispatcher's candidates take turns between accounts, each
//! account's in submission order, and include a running request only once its lease ran out;
//! a queued request's position counts the queued requests of its endpoint ahead of it; a
//! dispatcher renews only the leases it holds on running requests; ending the leases makes
//! running requests candidates at once; pruning deletes done requests finished before the
//! cutoff, oldest first, a page at a time.

use std::collections::HashMap;
use std::sync::Arc;
use tollgate_core::gateway::{GatewayInput, GatewayRecord, GatewayResult, GatewayState, Lease};
use tollgate_core::ids::{AccountId, ApiKeyId, EndpointId, RequestId};
use tollgate_core::machine::BatchState;
use tollgate_core::Timestamp;
use tollgate_store::testing::{backends, TestDb};
use tollgate_store::{GatewayCandidate, Reader, Store};

/// 2026-06-01T00:00:00Z.
const NOW: i64 = 1_780_272_000_000;
const MIN: i64 = 60_000;
const FLUX: &str = "fal-ai/flux/dev";

fn rid(id: &str) -> RequestId {
    RequestId::parse(id).unwrap()
}

fn acct(name: &str) -> AccountId {
    AccountId::parse(name).unwrap()
}

/// A request of `account` on `endpoint`, queued at `submitted_at`, with nothing optional.
fn queued(id: &str, account: &str, endpoint: &str, submitted_at: i64) -> GatewayRecord {
    GatewayRecord {
        request_id: rid(id),
        account: acct(account),
        endpoint: EndpointId::parse(endpoint).unwrap(),
        api_key: None,
        input: GatewayInput {
            path: String::new(),
            input: Arc::from("{}"),
            webhook: None,
            no_retry: false,
        },
        submitted_at: Timestamp(submitted_at),
        state: GatewayState::Queued,
        lease: None,
        dispatches: 0,
        result: None,
        finished_at: None,
    }
}

fn lease(owner: &str, until: i64) -> Option<Lease> {
    Some(Lease {
        owner: Arc::from(owner),
        until: Timestamp(until),
    })
}

fn result(status_code: u16, body: &[u8]) -> Option<GatewayResult> {
    Some(GatewayResult {
        status_code,
        content_type: Some("application/json".into()),
        body: Arc::from(body),
        error_type: None,
    })
}

/// Running on `owner`'s lease until `until`.
fn running(mut g: GatewayRecord, owner: &str, until: i64) -> GatewayRecord {
    g.state = GatewayState::Running;
    g.lease = lease(owner, until);
    g.dispatches = 1;
    g
}

/// Done at `finished_at` with a 200.
fn done(mut g: GatewayRecord, finished_at: i64) -> GatewayRecord {
    g.state = GatewayState::Done;
    g.dispatches = 1;
    g.result = result(200, b"{}");
    g.finished_at = Some(Timestamp(finished_at));
    g
}

/// Writes `rows` in one batch, in the order of their ids.
fn write(store: &mut dyn Store, rows: &[GatewayRecord]) {
    let mut s = BatchState {
        now: Timestamp(NOW),
        ..BatchState::default()
    };
    for g in rows {
        s.dirty_gateway.insert(g.request_id.clone());
        s.gateway.insert(g.request_id.clone(), g.clone());
    }
    store
        .transaction(&mut |tx| tx.persist(&s).map(drop))
        .unwrap();
}

/// What the writer's load finds of `ids`.
fn load(store: &mut dyn Store, ids: &[&str]) -> HashMap<RequestId, GatewayRecord> {
    let ids: Vec<RequestId> = ids.iter().map(|id| rid(id)).collect();
    let mut out = HashMap::new();
    store
        .transaction(&mut |tx| {
            out.clear();
            tx.load_gateway(&ids, &mut out)
        })
        .unwrap();
    out
}

fn reader(store: &dyn Store) -> Box<dyn Reader> {
    (store.reader_factory())().unwrap()
}

/// The candidates' ids.
fn candidates(
    store: &dyn Store,
    endpoint: &str,
    now: i64,
    per_account: usize,
    limit: usize,
) -> Vec<String> {
    let found: Vec<GatewayCandidate> = reader(store)
        .gateway_candidates(
            &EndpointId::parse(endpoint).unwrap(),
            Timestamp(now),
            per_account,
            limit,
        )
        .unwrap();
    for c in &found {
        // Each names its account, as its row has it.
        assert!(
            c.request_id.as_str().starts_with(c.account.as_str()),
            "{c:?}"
        );
    }
    found.iter().map(|c| c.request_id.to_string()).collect()
}

fn position(store: &dyn Store, id: &str) -> Option<u64> {
    reader(store)
        .gateway_request(&rid(id))
        .unwrap()
        .unwrap_or_else(|| panic!("{id} not found"))
        .queue_position
}

#[test]
fn a_row_is_read_back_as_written_and_updated_in_place() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        // Everything set, with a body that is not UTF-8 (an image, say); and nothing optional.
        let mut full = queued("acme-full", "acme", FLUX, NOW - 5_000);
        full.api_key = Some(ApiKeyId::parse("key-1").unwrap());
        full.input = GatewayInput {
            path: "/image-to-image".into(),
            input: Arc::from(r#"{"prompt":"ünïcode ✓","n":2}"#),
            webhook: Some("https://hooks.example/fal?x=1&y=2".into()),
            no_retry: true,
        };
        let full = GatewayRecord {
            state: GatewayState::AwaitingUnits,
            lease: lease("server-7", NOW + 30_000),
            dispatches: 3,
            result: Some(GatewayResult {
                status_code: 200,
                content_type: Some("image/png".into()),
                body: Arc::from(&b"\x89PNG\r\n\x1a\n\x00\xff\xfe"[..]),
                error_type: Some("upstream_unavailable".into()),
            }),
            finished_at: Some(Timestamp(NOW)),
            ..full
        };
        let bare = queued("acme-bare", "acme", FLUX, NOW);
        // A result with an empty body.
        let empty = done(queued("acme-empty", "acme", FLUX, NOW), NOW);
        let empty = GatewayRecord {
            result: Some(GatewayResult {
                status_code: 204,
                content_type: None,
                body: Arc::from(&b""[..]),
                error_type: None,
            }),
            ..empty
        };
        write(&mut *store, &[full.clone(), bare.clone(), empty.clone()]);
        let ids = ["acme-full", "acme-bare", "acme-empty", "acme-missing"];
        let loaded = load(&mut *store, &ids);
        assert_eq!(loaded.len(), 3, "{backend:?}");
        for g in [&full, &bare, &empty] {
            assert_eq!(&loaded[&g.request_id], g, "{backend:?}");
            let view = reader(&*store).gateway_request(&g.request_id).unwrap();
            assert_eq!(view.map(|v| v.record).as_ref(), Some(g), "{backend:?}");
        }
        assert_eq!(
            reader(&*store)
                .gateway_request(&rid("acme-missing"))
                .unwrap(),
            None
        );

        // Written again by a later batch: its state, lease, count and result change, its
        // input stays.
        let changed = GatewayRecord {
            state: GatewayState::Done,
            lease: None,
            dispatches: 4,
            result: result(422, b"{\"detail\":\"bad input\"}"),
            finished_at: Some(Timestamp(NOW + 9_000)),
            ..full.clone()
        };
        write(&mut *store, std::slice::from_ref(&changed));
        let bare_running = running(bare.clone(), "server-1", NOW + 10_000);
        write(&mut *store, std::slice::from_ref(&bare_running));
        let loaded = load(&mut *store, &ids);
        assert_eq!(loaded[&full.request_id], changed, "{backend:?}");
        assert_eq!(loaded[&bare.request_id], bare_running, "{backend:?}");
        assert_eq!(loaded[&empty.request_id], empty, "{backend:?}");
    }
}

#[test]
fn candidates_take_turns_between_accounts_each_in_submission_order() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        // "acme" queued 500 requests, then "bolt" 5, later; "acme" has one on another
        // endpoint too.
        let acme: Vec<GatewayRecord> = (0..500)
            .map(|i| queued(&format!("acme-{i:03}"), "acme", FLUX, NOW + i))
            .collect();
        write(&mut *store, &acme);
        write(
            &mut *store,
            &[queued("acme-other", "acme", "fal-ai/other", NOW + 600)],
        );
        let bolt: Vec<GatewayRecord> = (0..5)
            .map(|i| queued(&format!("bolt-{i}"), "bolt", FLUX, NOW + 1_000 + i))
            .collect();
        write(&mut *store, &bolt);

        // Two of each account's at most, the accounts taking turns: "bolt"'s first is second,
        // though submitted after all of "acme"'s.
        let now = NOW + 2_000;
        assert_eq!(
            candidates(&*store, FLUX, now, 2, 8),
            ["acme-000", "bolt-0", "acme-001", "bolt-1"],
            "{backend:?}"
        );
        assert_eq!(
            candidates(&*store, FLUX, now, 3, 5),
            ["acme-000", "bolt-0", "acme-001", "bolt-1", "acme-002"],
            "{backend:?}"
        );
        assert_eq!(
            candidates(&*store, FLUX, now, 1, 8),
            ["acme-000", "bolt-0"],
            "{backend:?}"
        );
        // Beyond "bolt"'s five, the rest are "acme"'s, in order.
        let many = candidates(&*store, FLUX, now, 10, 100);
        assert_eq!(many.len(), 15, "{backend:?}");
        let acme_order: Vec<&String> = many.iter().filter(|c| c.starts_with("acme")).collect();
        let expected: Vec<String> = (0..10).map(|i| format!("acme-{i:03}")).collect();
        assert_eq!(
            acme_order,
            expected.iter().collect::<Vec<_>>(),
            "{backend:?}"
        );
        assert_eq!(
            many.iter().filter(|c| c.starts_with("bolt")).count(),
            5,
            "{backend:?}"
        );
        assert_eq!(
            candidates(&*store, "fal-ai/other", now, 2, 8),
            ["acme-other"],
            "{backend:?}"
        );
        assert!(candidates(&*store, "fal-ai/none", now, 2, 8).is_empty());

        // A dispatched request leaves the queue: the account's next one takes its turn.
        write(&mut *store, &[running(acme[0].clone(), "d1", now + MIN)]);
        assert_eq!(
            candidates(&*store, FLUX, now, 2, 8),
            ["acme-001", "bolt-0", "acme-002", "bolt-1"],
            "{backend:?}"
        );
    }
}

#[test]
fn a_running_request_is_a_candidate_once_its_lease_ran_out() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        let q = |id: &str, at| queued(id, "acme", FLUX, at);
        let mut awaiting = q("acme-awaiting", NOW + 4);
        awaiting.state = GatewayState::AwaitingUnits;
        awaiting.result = result(200, b"{}");
        write(
            &mut *store,
            &[
                running(q("acme-ran-out", NOW), "d1", NOW - 1),
                running(q("acme-live", NOW + 1), "d1", NOW + 30_000),
                // A lease is over at its `until`, as the core's dispatch has it.
                running(q("acme-at-until", NOW + 2), "d2", NOW),
                q("acme-queued", NOW + 3),
                awaiting,
                done(q("acme-done", NOW + 5), NOW),
            ],
        );
        assert_eq!(
            candidates(&*store, FLUX, NOW, 10, 10),
            ["acme-at-until", "acme-queued", "acme-ran-out"],
            "{backend:?}"
        );
        // Later, the live lease ran out too.
        assert_eq!(
            candidates(&*store, FLUX, NOW + 30_000, 10, 10),
            ["acme-at-until", "acme-live", "acme-queued", "acme-ran-out"],
            "{backend:?}"
        );
    }
}

#[test]
fn a_queued_requests_position_counts_the_queued_requests_of_its_endpoint_ahead() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        let q = |id: &str, account: &str, endpoint: &str| queued(id, account, endpoint, NOW);
        // Written one batch each, in this order.
        for g in [
            q("acme-1", "acme", FLUX),
            q("bolt-1", "bolt", FLUX),
            running(q("acme-2", "acme", FLUX), "d1", NOW + MIN),
            q("acme-3", "acme", "fal-ai/other"),
            done(q("acme-4", "acme", FLUX), NOW),
            q("bolt-2", "bolt", FLUX),
        ] {
            write(&mut *store, &[g]);
        }
        assert_eq!(position(&*store, "acme-1"), Some(0), "{backend:?}");
        assert_eq!(position(&*store, "bolt-1"), Some(1), "{backend:?}");
        // Neither the running nor the done request, nor another endpoint's, is ahead.
        assert_eq!(position(&*store, "bolt-2"), Some(2), "{backend:?}");
        assert_eq!(position(&*store, "acme-3"), Some(0), "{backend:?}");
        // Only a queued request has a position.
        assert_eq!(position(&*store, "acme-2"), None, "{backend:?}");
        assert_eq!(position(&*store, "acme-4"), None, "{backend:?}");

        // The first one dispatched: the others move up.
        write(
            &mut *store,
            &[running(q("acme-1", "acme", FLUX), "d1", NOW + MIN)],
        );
        assert_eq!(position(&*store, "bolt-1"), Some(0), "{backend:?}");
        assert_eq!(position(&*store, "bolt-2"), Some(1), "{backend:?}");
    }
}

#[test]
fn a_dispatcher_renews_only_the_leases_it_holds_on_running_requests() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        let q = |id: &str| queued(id, "acme", FLUX, NOW);
        let mut awaiting = q("acme-awaiting");
        awaiting.state = GatewayState::AwaitingUnits;
        awaiting.result = result(200, b"{}");
        let mut done_with_owner = done(q("acme-done"), NOW);
        done_with_owner.lease = lease("d1", NOW + 10_000);
        let rows = [
            running(q("acme-mine"), "d1", NOW + 10_000),
            // Its lease ran out, but nobody took it over: still the owner's.
            running(q("acme-mine-late"), "d1", NOW - 1_000),
            running(q("acme-theirs"), "d2", NOW + 10_000),
            q("acme-queued"),
            awaiting,
            done_with_owner,
        ];
        write(&mut *store, &rows);
        let ids: Vec<RequestId> = [
            "acme-mine",
            "acme-mine-late",
            "acme-theirs",
            "acme-queued",
            "acme-awaiting",
            "acme-done",
            "acme-missing",
        ]
        .iter()
        .map(|id| rid(id))
        .collect();
        let until = Timestamp(NOW + 40_000);
        let mut held = Vec::new();
        store
            .transaction(&mut |tx| {
                held = tx.renew_gateway_leases("d1", &ids, until)?;
                Ok(())
            })
            .unwrap();
        held.sort();
        assert_eq!(
            held,
            [rid("acme-mine"), rid("acme-mine-late")],
            "{backend:?}"
        );
        let all: Vec<&str> = rows.iter().map(|g| g.request_id.as_str()).collect();
        let loaded = load(&mut *store, &all);
        for g in &rows {
            let expected = if held.contains(&g.request_id) {
                GatewayRecord {
                    lease: lease("d1", until.0),
                    ..g.clone()
                }
            } else {
                g.clone()
            };
            assert_eq!(loaded[&g.request_id], expected, "{backend:?}");
        }
    }
}

#[test]
fn ending_the_leases_makes_running_requests_candidates_at_once() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        let q = |id: &str, at| queued(id, "acme", FLUX, at);
        let rows = [
            running(q("acme-a", NOW), "d1", NOW + MIN),
            running(q("acme-b", NOW + 1), "d2", NOW + 2 * MIN),
            q("acme-c", NOW + 2),
            done(q("acme-d", NOW + 3), NOW),
        ];
        write(&mut *store, &rows);
        assert_eq!(
            candidates(&*store, FLUX, NOW, 10, 10),
            ["acme-c"],
            "{backend:?}"
        );
        store
            .transaction(&mut |tx| tx.end_gateway_leases())
            .unwrap();
        assert_eq!(
            candidates(&*store, FLUX, NOW, 10, 10),
            ["acme-a", "acme-b", "acme-c"],
            "{backend:?}"
        );
        // The leases ended, their owners kept; nothing else changed.
        let loaded = load(&mut *store, &["acme-a", "acme-b", "acme-c", "acme-d"]);
        for g in &rows {
            let expected = match &g.lease {
                Some(l) if g.state == GatewayState::Running => GatewayRecord {
                    lease: lease(&l.owner, 0),
                    ..g.clone()
                },
                _ => g.clone(),
            };
            assert_eq!(loaded[&g.request_id], expected, "{backend:?}");
        }
    }
}

#[test]
fn pruning_deletes_done_requests_finished_before_the_cutoff_oldest_first_a_page_at_a_time() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        let q = |id: &str| queued(id, "acme", FLUX, NOW - 10 * MIN);
        let cutoff = NOW - 2 * MIN;
        let mut awaiting = q("acme-awaiting");
        awaiting.state = GatewayState::AwaitingUnits;
        awaiting.result = result(200, b"{}");
        // Finished 5, 3 and 4 minutes ago (written out of order), at the cutoff, and now; and
        // requests not done, one of them with an old `finished_at` it should not have.
        let mut odd = running(q("acme-running"), "d1", NOW + MIN);
        odd.finished_at = Some(Timestamp(NOW - 9 * MIN));
        write(
            &mut *store,
            &[
                done(q("acme-5"), NOW - 5 * MIN),
                done(q("acme-3"), NOW - 3 * MIN),
                done(q("acme-4"), NOW - 4 * MIN),
                done(q("acme-at-cutoff"), cutoff),
                done(q("acme-now"), NOW),
                q("acme-queued"),
                awaiting,
                odd,
            ],
        );
        let all = [
            "acme-5",
            "acme-4",
            "acme-3",
            "acme-at-cutoff",
            "acme-now",
            "acme-queued",
            "acme-awaiting",
            "acme-running",
        ];
        let prune = |store: &mut dyn Store, limit: usize| {
            let mut n = 0;
            store
                .transaction(&mut |tx| {
                    n = tx.prune_gateway_results(Timestamp(cutoff), limit)?;
                    Ok(())
                })
                .unwrap();
            n
        };
        let kept = |store: &mut dyn Store| {
            let mut ids: Vec<String> = load(store, &all)
                .into_keys()
                .map(|id| id.to_string())
                .collect();
            ids.sort();
            ids
        };
        // A page of two: the two oldest.
        assert_eq!(prune(&mut *store, 2), 2, "{backend:?}");
        assert_eq!(
            kept(&mut *store),
            [
                "acme-3",
                "acme-at-cutoff",
                "acme-awaiting",
                "acme-now",
                "acme-queued",
                "acme-running"
            ],
            "{backend:?}"
        );
        // Then what is left before the cutoff, then nothing.
        assert_eq!(prune(&mut *store, 2), 1, "{backend:?}");
        assert_eq!(prune(&mut *store, 2), 0, "{backend:?}");
        assert_eq!(
            kept(&mut *store),
            [
                "acme-at-cutoff",
                "acme-awaiting",
                "acme-now",
                "acme-queued",
                "acme-running"
            ],
            "{backend:?}"
        );
    }
}
