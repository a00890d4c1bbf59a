//! Gateway requests in the state machine, operation by operation (`tollgate_core::gateway`):
//! a submission holds nothing; a dispatch holds the estimate and takes the lease, is refused
//! over the concurrency limit (the request stays queued, nothing written) and while another
//! dispatcher's lease holds, and takes a request over once the lease ran out without a second
//! hold; an answer bills once (a late answer of another dispatcher changes nothing), a deferred
//! one when its units are posted (once), an unbilled one voids the hold or, for a request that
//! could not start, completes it having held nothing; a cancellation bills nothing and is the
//! owner's only; the lifecycle calls do not see a gateway request; the sweeper expires a
//! request whose units never came.

use rust_decimal::Decimal;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use tollgate_core::catalog::Catalog;
use tollgate_core::gateway::{
    Bill, GatewayInput, GatewayRecord, GatewayResult, GatewayState, Lease,
};
use tollgate_core::ids::{AccountId, EndpointId, PurchaseId, RequestId};
use tollgate_core::ledger::TransferKind;
use tollgate_core::machine::{
    apply, AccountState, BatchState, Op, Outcome, Rejection, RequestRecord, RequestStatus, Source,
};
use tollgate_core::price::Output;
use tollgate_core::testing::{account_id, fresh_state, EP_MP, T0};
use tollgate_core::{Nanos, Timestamp};

/// `test/megapixel`'s hold: 4 megapixels at 0.025 USD.
const HOLD: Nanos = Nanos(100_000_000);
/// What one megapixel costs `alice` (list price).
const PER_MP: i64 = 25_000_000;
/// `test/megapixel`'s hold timeout.
const HOLD_TIMEOUT_MS: i64 = 600_000;

fn rid(id: &str) -> RequestId {
    RequestId::parse(id).unwrap()
}

fn alice() -> AccountId {
    account_id(0)
}

fn bob() -> AccountId {
    account_id(1)
}

fn input() -> GatewayInput {
    GatewayInput {
        path: "/fast".into(),
        input: Arc::from(r#"{"prompt":"a lighthouse"}"#),
        webhook: Some("https://hooks.example/done".into()),
        no_retry: true,
    }
}

fn result(status_code: u16, body: &[u8]) -> GatewayResult {
    GatewayResult {
        status_code,
        content_type: Some("application/json".into()),
        body: Arc::from(body),
        error_type: None,
    }
}

/// Rated by `megapixels` reported in `x-fal-billable-units`.
fn rate(megapixels: i64) -> Bill {
    Bill::Rate {
        billable_units: Some(Decimal::from(megapixels)),
        output: Box::default(),
        inference_seconds: Decimal::new(1500, 3),
    }
}

/// Everything an operation may change, to check that one changed nothing.
#[derive(Debug, PartialEq)]
struct Snapshot {
    accounts: HashMap<AccountId, AccountState>,
    requests: HashMap<RequestId, RequestRecord>,
    gateway: HashMap<RequestId, GatewayRecord>,
    dirty_accounts: BTreeSet<AccountId>,
    dirty_requests: BTreeSet<RequestId>,
    dirty_gateway: BTreeSet<RequestId>,
    transfers: usize,
    line_items: usize,
    completed: usize,
    events: usize,
}

/// A state of the testing accounts on the ledger tests' catalog, on a clock of its own.
struct Machine {
    s: BatchState,
    catalog: Catalog,
    now: Timestamp,
}

impl Machine {
    /// `alice` with `usd` of paid credits.
    fn funded(usd: &str) -> Machine {
        let mut m = Machine {
            s: fresh_state(),
            catalog: crate::ledger_props::catalog(),
            now: Timestamp(T0),
        };
        for account in [alice(), bob()] {
            m.ok(Op::Purchase {
                account,
                purchase_id: PurchaseId::parse("p0").unwrap(),
                amount: Nanos::parse_usd(usd).unwrap(),
                paid: true,
                expires_at: None,
            });
        }
        m
    }

    fn later(&mut self, ms: i64) {
        self.now = self.now.plus_ms(ms);
    }

    fn apply(&mut self, op: Op) -> Result<Outcome, Rejection> {
        apply(&mut self.s, &self.catalog, self.now, op)
    }

    fn ok(&mut self, op: Op) -> Outcome {
        let shown = format!("{op:?}");
        self.apply(op)
            .unwrap_or_else(|e| panic!("{shown} refused: {e}"))
    }

    /// Applies `op`, which must be refused and change nothing.
    fn refused(&mut self, op: Op) -> Rejection {
        let before = self.snapshot();
        let e = self.apply(op).expect_err("refused");
        assert_eq!(
            self.snapshot(),
            before,
            "refused ({e}) but the state changed"
        );
        e
    }

    /// Applies `op`, which must be answered as a repeat of a first answer and change nothing.
    fn replayed(&mut self, op: Op) -> Outcome {
        let before = self.snapshot();
        let o = self.ok(op);
        assert_eq!(
            self.snapshot(),
            before,
            "a repeat ({o:?}) changed the state"
        );
        o
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            accounts: self.s.accounts.clone(),
            requests: self.s.requests.clone(),
            gateway: self.s.gateway.clone(),
            dirty_accounts: self.s.dirty_accounts.clone(),
            dirty_requests: self.s.dirty_requests.clone(),
            dirty_gateway: self.s.dirty_gateway.clone(),
            transfers: self.s.transfers.len(),
            line_items: self.s.line_items.len(),
            completed: self.s.completed.len(),
            events: self.s.events.len(),
        }
    }

    fn account(&self, a: &AccountId) -> &AccountState {
        &self.s.accounts[a]
    }

    fn request(&self, id: &str) -> &RequestRecord {
        &self.s.requests[&rid(id)]
    }

    fn gateway(&self, id: &str) -> &GatewayRecord {
        &self.s.gateway[&rid(id)]
    }

    /// The transfers since `from`: (kind, amount).
    fn transfers_since(&self, from: usize) -> Vec<(TransferKind, Nanos)> {
        self.s.transfers[from..]
            .iter()
            .map(|t| (t.transfer.kind, t.transfer.amount))
            .collect()
    }

    fn submit(&mut self, id: &str, account: AccountId) -> Outcome {
        self.ok(submit_op(id, account))
    }

    fn dispatch(&mut self, id: &str, owner: &str, lease_ms: i64) -> Result<Outcome, Rejection> {
        let op = dispatch_op(id, owner, self.now.plus_ms(lease_ms));
        self.apply(op)
    }

    fn answer(
        &mut self,
        id: &str,
        result: GatewayResult,
        bill: Bill,
    ) -> Result<Outcome, Rejection> {
        self.apply(Op::GatewayAnswer {
            request_id: rid(id),
            result,
            bill,
        })
    }

    /// Submitted by `alice` and dispatched by `d1` on a 30 s lease; returns the hold.
    fn running(&mut self, id: &str) -> Nanos {
        self.submit(id, alice());
        match self.dispatch(id, "d1", 30_000) {
            Ok(Outcome::Dispatched { request, .. }) => request.hold,
            other => panic!("dispatch: {other:?}"),
        }
    }
}

fn submit_op(id: &str, account: AccountId) -> Op {
    Op::GatewaySubmit {
        request_id: rid(id),
        account,
        api_key: None,
        endpoint: EndpointId::parse(EP_MP).unwrap(),
        input: input(),
    }
}

fn dispatch_op(id: &str, owner: &str, until: Timestamp) -> Op {
    Op::Dispatch {
        request_id: rid(id),
        lease: Lease {
            owner: Arc::from(owner),
            until,
        },
        machine_type: None,
    }
}

fn units_op(id: &str, units: i64) -> Op {
    Op::GatewayUnits {
        request_id: rid(id),
        billable_units: Decimal::from(units),
    }
}

fn cancel_op(id: &str, account: AccountId) -> Op {
    Op::GatewayCancel {
        request_id: rid(id),
        account,
    }
}

fn completion(o: &Outcome) -> (&RequestRecord, &tollgate_core::machine::Completion, bool) {
    match o {
        Outcome::Completed {
            request,
            completion,
            replayed,
        } => (request, completion, *replayed),
        other => panic!("not a completion: {other:?}"),
    }
}

#[test]
fn a_submission_is_queued_with_its_input_and_holds_nothing() {
    let mut m = Machine::funded("1.00");
    let transfers = m.s.transfers.len();
    let o = m.submit("g1", alice());
    let Outcome::Submitted {
        request,
        replayed: false,
    } = &o
    else {
        panic!("{o:?}")
    };
    assert_eq!(request.status, RequestStatus::InQueue);
    assert_eq!(request.source, Source::Gateway);
    assert_eq!(request.hold, Nanos::ZERO);
    assert_eq!(request.hold_expires_at, None);
    assert!(m.transfers_since(transfers).is_empty());
    let a = m.account(&alice());
    assert_eq!((a.credit.held, a.in_progress), (Nanos::ZERO, 0));
    assert_eq!(
        m.gateway("g1"),
        &GatewayRecord {
            request_id: rid("g1"),
            account: alice(),
            endpoint: EndpointId::parse(EP_MP).unwrap(),
            api_key: None,
            input: input(),
            submitted_at: m.now,
            state: GatewayState::Queued,
            lease: None,
            dispatches: 0,
            result: None,
            finished_at: None,
        }
    );
    assert!(m.s.dirty_gateway.contains(&rid("g1")));

    // Submitted again: the first submission, nothing written.
    m.later(1_000);
    let again = m.replayed(submit_op("g1", alice()));
    assert!(
        matches!(&again, Outcome::Submitted { request: r, replayed: true } if r == request),
        "{again:?}"
    );
    // The same id for another account, or a lifecycle request's id: refused.
    assert!(matches!(
        m.refused(submit_op("g1", bob())),
        Rejection::Conflict(_)
    ));
    m.ok(Op::Submit {
        request_id: rid("r1"),
        account: alice(),
        api_key: None,
        endpoint: EndpointId::parse(EP_MP).unwrap(),
    });
    assert!(matches!(
        m.refused(submit_op("r1", alice())),
        Rejection::Conflict(_)
    ));
}

#[test]
fn a_dispatch_holds_the_estimate_and_takes_the_lease() {
    let mut m = Machine::funded("1.00");
    m.submit("g1", alice());
    m.later(2_500);
    let transfers = m.s.transfers.len();
    let balance = m.account(&alice()).credit.balance;
    let until = m.now.plus_ms(30_000);
    let o = m.dispatch("g1", "d1", 30_000).unwrap();
    let Outcome::Dispatched {
        gateway,
        request,
        resumed: false,
    } = &o
    else {
        panic!("{o:?}")
    };
    assert_eq!(request.status, RequestStatus::InProgress);
    assert_eq!(request.hold, HOLD);
    assert_eq!(
        request.queue_ms,
        Some(2_500),
        "time in the queue is measured"
    );
    // The lease, not a deadline, says whether anyone still runs it.
    assert_eq!(request.hold_expires_at, None);
    assert_eq!(m.request("g1"), request);
    assert_eq!(
        m.transfers_since(transfers),
        vec![(TransferKind::Hold, HOLD)]
    );
    let a = m.account(&alice());
    assert_eq!((a.credit.held, a.in_progress), (HOLD, 1));
    assert_eq!(a.credit.balance, balance);
    assert_eq!(m.gateway("g1"), gateway);
    assert_eq!(gateway.state, GatewayState::Running);
    assert_eq!(
        gateway.lease,
        Some(Lease {
            owner: Arc::from("d1"),
            until
        })
    );
    assert_eq!(gateway.dispatches, 1);

    // The sweeper never expires a running request, however long it runs.
    m.later(10 * HOLD_TIMEOUT_MS);
    let o = m.replayed(Op::Expire {
        request_id: rid("g1"),
    });
    assert_eq!(o, Outcome::Expired { expired: false });
}

#[test]
fn a_dispatch_over_the_concurrency_limit_is_refused_and_the_request_stays_queued() {
    let mut m = Machine::funded("1.00");
    m.s.accounts.get_mut(&alice()).unwrap().concurrency_override = Some(1);
    m.submit("g1", alice());
    m.submit("g2", alice());
    m.dispatch("g1", "d1", 30_000).unwrap();
    let e = m.refused(dispatch_op("g2", "d1", m.now.plus_ms(30_000)));
    assert_eq!(
        e,
        Rejection::ConcurrencyLimit {
            limit: 1,
            in_progress: 1
        }
    );
    assert_eq!(m.request("g2").status, RequestStatus::InQueue);
    assert_eq!(m.gateway("g2").state, GatewayState::Queued);
    assert_eq!(m.gateway("g2").lease, None);
    assert_eq!(m.gateway("g2").dispatches, 0);
    // Its turn comes again once the other is answered.
    m.later(1_000);
    m.answer("g1", result(200, b"{}"), rate(1)).unwrap();
    let o = m.dispatch("g2", "d1", 30_000).unwrap();
    assert!(
        matches!(o, Outcome::Dispatched { resumed: false, .. }),
        "{o:?}"
    );
    assert_eq!(m.account(&alice()).in_progress, 1);
}

#[test]
fn a_lease_keeps_other_dispatchers_out_until_it_runs_out_then_one_takes_over_without_a_second_hold()
{
    let mut m = Machine::funded("1.00");
    let hold = m.running("g1");
    let until = m.now.plus_ms(30_000);
    let transfers = m.s.transfers.len();
    let account = m.account(&alice()).clone();

    // Another dispatcher, while the lease holds: refused, nothing written.
    m.later(29_999);
    let e = m.refused(dispatch_op("g1", "d2", m.now.plus_ms(30_000)));
    assert_eq!(
        e,
        Rejection::Leased {
            id: rid("g1"),
            owner: Arc::from("d1"),
            until
        }
    );
    // Its owner again (a retry on another model server): still its own, no second hold.
    let o = m.dispatch("g1", "d1", 30_000).unwrap();
    assert!(
        matches!(o, Outcome::Dispatched { resumed: true, .. }),
        "{o:?}"
    );
    let until = m.now.plus_ms(30_000);
    assert_eq!(m.gateway("g1").dispatches, 2);

    // Once the lease ran out (its dispatcher died): taken over, the hold as it was.
    m.later(30_000);
    let o = m.dispatch("g1", "d2", 60_000).unwrap();
    let Outcome::Dispatched {
        gateway,
        request,
        resumed: true,
    } = &o
    else {
        panic!("{o:?}")
    };
    assert_eq!(request.hold, hold);
    assert_eq!(request.status, RequestStatus::InProgress);
    assert_eq!(gateway.dispatches, 3);
    assert_eq!(
        gateway.lease,
        Some(Lease {
            owner: Arc::from("d2"),
            until: m.now.plus_ms(60_000)
        })
    );
    assert!(until <= m.now);
    assert!(m.transfers_since(transfers).is_empty(), "no second hold");
    assert_eq!(m.account(&alice()), &account);

    // The first dispatcher, back: the request is the other's now.
    let e = m.refused(dispatch_op("g1", "d1", m.now.plus_ms(30_000)));
    assert!(
        matches!(&e, Rejection::Leased { owner, .. } if &**owner == "d2"),
        "{e:?}"
    );
}

#[test]
fn an_answer_is_billed_once_and_a_late_answer_of_another_dispatcher_changes_nothing() {
    let mut m = Machine::funded("1.00");
    let hold = m.running("g1");
    let balance = m.account(&alice()).credit.balance;
    let transfers = m.s.transfers.len();
    m.later(4_000);
    let body = br#"{"images":[{"url":"https://cdn.example/1.png"}]}"#;
    let first = m.answer("g1", result(200, body), rate(2)).unwrap();
    let (request, c, replayed) = completion(&first);
    assert!(!replayed);
    assert_eq!(request.status, RequestStatus::Completed);
    assert!(c.billed);
    assert_eq!(c.charge.quantity, Decimal::from(2));
    assert_eq!(c.charge.total_nanos, Nanos(2 * PER_MP));
    assert_eq!(
        m.transfers_since(transfers),
        vec![
            (TransferKind::Post, Nanos(2 * PER_MP)),
            (TransferKind::Void, Nanos(hold.0 - 2 * PER_MP))
        ]
    );
    let a = m.account(&alice());
    assert_eq!(a.credit.balance, Nanos(balance.0 - 2 * PER_MP));
    assert_eq!((a.credit.held, a.in_progress), (Nanos::ZERO, 0));
    assert_eq!(c.balance_after, a.credit.balance);
    assert_eq!(m.s.line_items.len(), 1);
    assert_eq!(m.s.line_items[0].request_id, rid("g1"));
    let g = m.gateway("g1");
    assert_eq!(g.state, GatewayState::Done);
    assert_eq!(g.result, Some(result(200, body)));
    assert_eq!((g.lease.clone(), g.finished_at), (None, Some(m.now)));

    // Another dispatcher's answer after it (a call that outlived its lease), with other units
    // or none billed: the first answer again, nothing written.
    m.later(1_000);
    for bill in [rate(7), Bill::Unbilled, Bill::Deferred] {
        let again = m.replayed(Op::GatewayAnswer {
            request_id: rid("g1"),
            result: result(200, b"{}"),
            bill,
        });
        let (_, c2, replayed) = completion(&again);
        assert!(replayed);
        assert_eq!(c2, c);
    }
    assert_eq!(m.gateway("g1").result, Some(result(200, body)));
    // A dispatch of a finished request is refused.
    assert!(matches!(
        m.refused(dispatch_op("g1", "d2", m.now.plus_ms(1_000))),
        Rejection::WrongState { .. }
    ));
}

#[test]
fn deferred_billing_bills_exactly_the_posted_units_once() {
    let mut m = Machine::funded("1.00");
    let hold = m.running("g1");
    let balance = m.account(&alice()).credit.balance;
    let transfers = m.s.transfers.len();
    m.later(3_000);
    let body = br#"{"text":"done"}"#;
    let o = m.answer("g1", result(200, body), Bill::Deferred).unwrap();
    assert_eq!(o, Outcome::AwaitingUnits { replayed: false });
    // Nothing billed yet: the hold runs on, now to a deadline.
    assert!(m.transfers_since(transfers).is_empty());
    assert!(m.s.line_items.is_empty());
    let r = m.request("g1");
    assert_eq!(r.status, RequestStatus::InProgress);
    assert_eq!(r.hold_expires_at, Some(m.now.plus_ms(HOLD_TIMEOUT_MS)));
    let a = m.account(&alice());
    assert_eq!((a.credit.held, a.in_progress), (hold, 1));
    let g = m.gateway("g1");
    assert_eq!(g.state, GatewayState::AwaitingUnits);
    assert_eq!(g.result, Some(result(200, body)));
    assert_eq!((g.lease.clone(), g.finished_at), (None, None));

    // Answered again meanwhile, or cancelled: nothing changes.
    let again = m.replayed(Op::GatewayAnswer {
        request_id: rid("g1"),
        result: result(200, b"{}"),
        bill: rate(1),
    });
    assert_eq!(again, Outcome::AwaitingUnits { replayed: true });
    assert!(matches!(
        m.refused(cancel_op("g1", alice())),
        Rejection::WrongState { .. }
    ));
    // Units that are not units: refused.
    assert!(matches!(
        m.refused(units_op("g1", -1)),
        Rejection::InvalidUsage(_)
    ));

    m.later(2_000);
    let o = m.ok(units_op("g1", 3));
    let (request, c, replayed) = completion(&o);
    assert!(!replayed && c.billed);
    assert_eq!(request.status, RequestStatus::Completed);
    assert_eq!(c.status_code, 200, "with its answer's status");
    assert_eq!(c.charge.quantity, Decimal::from(3));
    assert_eq!(c.charge.total_nanos, Nanos(3 * PER_MP));
    assert_eq!(
        m.transfers_since(transfers),
        vec![
            (TransferKind::Post, Nanos(3 * PER_MP)),
            (TransferKind::Void, Nanos(hold.0 - 3 * PER_MP))
        ]
    );
    let a = m.account(&alice());
    assert_eq!(a.credit.balance, Nanos(balance.0 - 3 * PER_MP));
    assert_eq!((a.credit.held, a.in_progress), (Nanos::ZERO, 0));
    assert_eq!(m.s.line_items.len(), 1);
    let g = m.gateway("g1");
    assert_eq!(g.state, GatewayState::Done);
    assert_eq!(g.result, Some(result(200, body)));
    assert_eq!(g.finished_at, Some(m.now));

    // Posted again (with other units): a replay of the first.
    m.later(1_000);
    let again = m.replayed(units_op("g1", 5));
    let (_, c2, replayed) = completion(&again);
    assert!(replayed);
    assert_eq!(c2, c);
}

#[test]
fn units_are_refused_for_a_request_that_did_not_defer_its_billing() {
    let mut m = Machine::funded("1.00");
    m.submit("g0", alice());
    assert!(matches!(
        m.refused(units_op("g0", 1)),
        Rejection::Invalid {
            field: "request_id",
            ..
        }
    ));
    m.running("g1");
    assert!(matches!(
        m.refused(units_op("g1", 1)),
        Rejection::Invalid {
            field: "request_id",
            ..
        }
    ));
}

#[test]
fn an_unbilled_answer_of_a_running_request_voids_its_hold() {
    let mut m = Machine::funded("1.00");
    let hold = m.running("g1");
    let balance = m.account(&alice()).credit.balance;
    let transfers = m.s.transfers.len();
    m.later(5_000);
    let failed = GatewayResult {
        error_type: Some("upstream_unavailable".into()),
        ..result(503, br#"{"detail":"no model server answered"}"#)
    };
    let o = m.answer("g1", failed.clone(), Bill::Unbilled).unwrap();
    let (request, c, replayed) = completion(&o);
    assert!(!replayed);
    assert_eq!(request.status, RequestStatus::Failed);
    assert!(!c.billed);
    assert_eq!(c.charge.total_nanos, Nanos::ZERO);
    assert_eq!(
        m.transfers_since(transfers),
        vec![(TransferKind::Void, hold)]
    );
    let a = m.account(&alice());
    assert_eq!(a.credit.balance, balance);
    assert_eq!((a.credit.held, a.in_progress), (Nanos::ZERO, 0));
    assert!(m.s.line_items.is_empty());
    let g = m.gateway("g1");
    assert_eq!(
        (g.state, g.result.as_ref()),
        (GatewayState::Done, Some(&failed))
    );
}

#[test]
fn an_unbilled_answer_of_a_queued_request_completes_it_having_held_nothing() {
    // 0.05 USD: not enough for the 0.10 USD hold.
    let mut m = Machine::funded("0.05");
    m.submit("g1", alice());
    m.later(1_000);
    let e = m.refused(dispatch_op("g1", "d1", m.now.plus_ms(30_000)));
    assert!(
        matches!(e, Rejection::InsufficientCredits { required, .. } if required == HOLD),
        "{e:?}"
    );
    assert_eq!(m.request("g1").status, RequestStatus::InQueue);
    let transfers = m.s.transfers.len();
    let account = m.account(&alice()).clone();
    let refused = GatewayResult {
        error_type: Some("insufficient_credits".into()),
        ..result(402, br#"{"detail":"insufficient credits"}"#)
    };
    let o = m.answer("g1", refused.clone(), Bill::Unbilled).unwrap();
    let (request, c, replayed) = completion(&o);
    assert!(!replayed);
    assert_eq!(request.status, RequestStatus::Failed);
    assert_eq!(request.finished_at, Some(m.now));
    assert_eq!((c.status_code, c.billed), (402, false));
    assert_eq!(c.charge.total_nanos, Nanos::ZERO);
    assert_eq!(c.balance_after, account.credit.balance);
    assert!(m.transfers_since(transfers).is_empty());
    assert!(m.s.line_items.is_empty());
    assert_eq!(m.account(&alice()), &account);
    let g = m.gateway("g1");
    assert_eq!(
        (g.state, g.result.as_ref()),
        (GatewayState::Done, Some(&refused))
    );
    assert_eq!(g.finished_at, Some(m.now));
    // Finished: neither dispatched nor answered again.
    assert!(matches!(
        m.refused(dispatch_op("g1", "d1", m.now.plus_ms(30_000))),
        Rejection::WrongState { .. }
    ));
    let again = m.replayed(Op::GatewayAnswer {
        request_id: rid("g1"),
        result: result(403, b"{}"),
        bill: Bill::Unbilled,
    });
    assert_eq!(completion(&again).1, c);

    // A queued request's answer must be an unbilled one: it never ran.
    m.submit("g2", alice());
    for bill in [rate(1), Bill::Deferred] {
        assert!(matches!(
            m.refused(Op::GatewayAnswer {
                request_id: rid("g2"),
                result: result(200, b"{}"),
                bill,
            }),
            Rejection::WrongState { .. }
        ));
    }
}

#[test]
fn a_cancelled_request_bills_nothing_queued_or_running() {
    let mut m = Machine::funded("1.00");
    let balance = m.account(&alice()).credit.balance;
    // Queued: nothing was held, nothing moves.
    m.submit("g1", alice());
    let transfers = m.s.transfers.len();
    m.later(1_000);
    assert_eq!(
        m.ok(cancel_op("g1", alice())),
        Outcome::Cancelled { replayed: false }
    );
    assert_eq!(m.request("g1").status, RequestStatus::Cancelled);
    assert!(m.transfers_since(transfers).is_empty());
    let g = m.gateway("g1");
    assert_eq!(g.state, GatewayState::Done);
    assert_eq!(g.finished_at, Some(m.now));
    let r = g.result.as_ref().unwrap();
    assert_eq!(
        (r.status_code, r.error_type.as_deref()),
        (400, Some("request_cancelled"))
    );
    assert_eq!(
        m.replayed(cancel_op("g1", alice())),
        Outcome::Cancelled { replayed: true }
    );
    assert!(matches!(
        m.refused(dispatch_op("g1", "d1", m.now.plus_ms(30_000))),
        Rejection::WrongState { .. }
    ));

    // Running: the hold is voided, the slot freed.
    let hold = m.running("g2");
    let transfers = m.s.transfers.len();
    m.later(1_000);
    assert_eq!(
        m.ok(cancel_op("g2", alice())),
        Outcome::Cancelled { replayed: false }
    );
    assert_eq!(m.request("g2").status, RequestStatus::Cancelled);
    assert_eq!(
        m.transfers_since(transfers),
        vec![(TransferKind::Void, hold)]
    );
    let a = m.account(&alice());
    assert_eq!(a.credit.balance, balance);
    assert_eq!((a.credit.held, a.in_progress), (Nanos::ZERO, 0));
    assert_eq!(m.gateway("g2").state, GatewayState::Done);
    assert_eq!(m.gateway("g2").lease, None);
    // The model server's answer that comes after: refused, nothing billed.
    let e = m.refused(Op::GatewayAnswer {
        request_id: rid("g2"),
        result: result(200, b"{}"),
        bill: rate(1),
    });
    assert!(
        matches!(&e, Rejection::WrongState { id, status: RequestStatus::Cancelled, .. } if *id == rid("g2")),
        "{e:?}"
    );
    assert!(m.s.line_items.is_empty());
}

#[test]
fn a_cancellation_by_another_account_is_an_unknown_request() {
    let mut m = Machine::funded("1.00");
    m.submit("g1", alice());
    m.running("g2");
    for id in ["g1", "g2"] {
        assert_eq!(
            m.refused(cancel_op(id, bob())),
            Rejection::UnknownRequest(rid(id))
        );
    }
    assert_eq!(m.request("g1").status, RequestStatus::InQueue);
    assert_eq!(m.request("g2").status, RequestStatus::InProgress);
}

#[test]
fn the_lifecycle_calls_do_not_see_a_gateway_request_nor_the_gateway_a_lifecycle_one() {
    let mut m = Machine::funded("1.00");
    m.submit("g1", alice());
    m.running("g2");
    for id in ["g1", "g2"] {
        let ops = [
            Op::Start {
                request_id: rid(id),
                machine_type: None,
                num_gpus: None,
                hold_units: None,
            },
            Op::Complete {
                request_id: rid(id),
                status_code: 200,
                output: Output::default(),
                billable_units: Some(Decimal::ONE),
                inference_seconds: None,
            },
            Op::Cancel {
                request_id: rid(id),
            },
        ];
        for op in ops {
            assert_eq!(m.refused(op), Rejection::UnknownRequest(rid(id)));
        }
    }
    m.ok(Op::Submit {
        request_id: rid("r1"),
        account: alice(),
        api_key: None,
        endpoint: EndpointId::parse(EP_MP).unwrap(),
    });
    let ops = [
        dispatch_op("r1", "d1", m.now.plus_ms(30_000)),
        Op::GatewayAnswer {
            request_id: rid("r1"),
            result: result(402, b"{}"),
            bill: Bill::Unbilled,
        },
        units_op("r1", 1),
        cancel_op("r1", alice()),
    ];
    for op in ops {
        assert_eq!(m.refused(op), Rejection::UnknownRequest(rid("r1")));
    }
}

#[test]
fn the_sweeper_voids_a_request_whose_units_never_came_and_late_units_bill_once() {
    let mut m = Machine::funded("1.00");
    let hold = m.running("g1");
    let balance = m.account(&alice()).credit.balance;
    m.later(1_000);
    m.answer("g1", result(200, b"{}"), Bill::Deferred).unwrap();
    let deadline = m.now.plus_ms(HOLD_TIMEOUT_MS);
    let transfers = m.s.transfers.len();

    m.later(HOLD_TIMEOUT_MS - 1);
    assert_eq!(
        m.replayed(Op::Expire {
            request_id: rid("g1")
        }),
        Outcome::Expired { expired: false }
    );
    m.later(1);
    assert_eq!(m.now, deadline);
    assert_eq!(
        m.ok(Op::Expire {
            request_id: rid("g1")
        }),
        Outcome::Expired { expired: true }
    );
    assert_eq!(
        m.transfers_since(transfers),
        vec![(TransferKind::Expire, hold)]
    );
    let r = m.request("g1");
    assert_eq!(
        (r.status, r.hold_expires_at),
        (RequestStatus::Expired, None)
    );
    let a = m.account(&alice());
    assert_eq!(a.credit.balance, balance);
    assert_eq!((a.credit.held, a.in_progress), (Nanos::ZERO, 0));
    assert_eq!(
        m.replayed(Op::Expire {
            request_id: rid("g1")
        }),
        Outcome::Expired { expired: false }
    );

    // The units, late: billed once (the endpoint bills late completions), without a hold.
    m.later(5_000);
    let transfers = m.s.transfers.len();
    let o = m.ok(units_op("g1", 2));
    let (_, c, replayed) = completion(&o);
    assert!(!replayed && c.billed && c.late);
    assert_eq!(c.charge.total_nanos, Nanos(2 * PER_MP));
    assert_eq!(
        m.transfers_since(transfers),
        vec![(TransferKind::Charge, Nanos(2 * PER_MP))]
    );
    assert_eq!(m.gateway("g1").state, GatewayState::Done);
    let again = m.replayed(units_op("g1", 2));
    assert_eq!(completion(&again).1, c);
    assert_eq!(m.s.line_items.len(), 1);
}
