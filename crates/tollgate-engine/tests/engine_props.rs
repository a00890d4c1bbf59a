//! Random operation sequences through the real engine and SQLite store.
//!
//! Operations go one at a time (`execute`), in ordered groups (`execute_many`: one batch, one
//! `now`), and in concurrent groups with duplicates (several `execute` / `execute_many` calls in
//! flight at once). Purchases often carry an expiry a few seconds away, so that credits expire
//! (by `ExpireCredits` and by the sweeper) within a run. Whatever the interleaving, the ledger
//! must reconcile, credit lots included. When nothing is
//! concurrent the order is known, and the engine must then agree exactly, answer by answer and
//! row by row, with a pure replay of the same operations through
//! `tollgate_core::machine::apply` on an in-memory state.

use proptest::prelude::*;
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use tollgate_core::catalog::Catalog;
use tollgate_core::ids::{AccountId, EndpointId, PurchaseId, RequestId};
use tollgate_core::ledger::{CreditAccount, TransferKind};
use tollgate_core::machine::{
    apply, AccountState, BatchState, Completion, Op, Outcome, PurchaseRecord, Rejection,
    RequestStatus, UsageEvent,
};
use tollgate_core::price::{Dims, Output};
use tollgate_core::pricing::{Discounts, VolumeTier};
use tollgate_core::{Nanos, Timestamp};
use tollgate_engine::{AdminCmd, AdminReply, Engine};
use tollgate_store::sqlite::SqliteStore;
use tollgate_store::{AccountTerms, BillingMode, Reconciliation};

const CATALOG: &str = r#"
prices_read_on = "2026-01-15"
effective_from = "2026-01-01T00:00:00Z"

[machines]
GPU-H100 = "0.000525"

[[endpoint]]
id = "test/megapixel"
name = "Megapixel"
category = "text-to-image"
hold_units = "4"
price = { unit = "megapixel", unit_price = "0.025" }

[[endpoint]]
id = "test/video"
name = "Video"
category = "text-to-video"
hold_units = "10"
hold_timeout_s = 30
price = { unit = "video_second", unit_price = "0.10", min_units = "5" }

[[endpoint]]
id = "test/gpu"
name = "GPU"
category = "image-to-3d"
machine_type = "GPU-H100"
four_xx = "inference_seconds"
hold_units = "60"
hold_timeout_s = 5
price = { unit = "gpu_second" }

[[endpoint]]
id = "test/fast"
name = "Fast"
category = "text-to-image"
hold_units = "2"
hold_timeout_s = 1
price = { unit = "image", unit_price = "0.03" }
"#;

const ENDPOINTS: [&str; 4] = ["test/megapixel", "test/video", "test/gpu", "test/unknown"];
/// `alice` pays list price, `bob` has 10% off, `carol` 20% from 0.50 USD a month. `ghost` does
/// not exist.
const ACCOUNTS: [&str; 4] = ["alice", "bob", "carol", "ghost"];
const REAL_ACCOUNTS: usize = 3;
const REQUEST_IDS: [&str; 6] = ["r0", "r1", "r2", "r3", "r4", "r5"];
/// `r0` is also a lifecycle request id: events and requests collide.
const EVENT_IDS: [&str; 4] = ["e0", "e1", "e2", "r0"];
const PURCHASE_IDS: [&str; 4] = ["p0", "p1", "p2", "p3"];
/// 0.05, 0.50, 5.00 USD and an invalid zero.
const AMOUNTS: [i64; 4] = [50_000_000, 500_000_000, 5_000_000_000, 0];
/// 2026-01-31T23:30:00Z: the month changes half an hour in.
const T0: i64 = 1_769_902_200_000;

fn account_id(i: usize) -> AccountId {
    AccountId::parse(ACCOUNTS[i]).unwrap()
}

fn discounts(i: usize) -> Discounts {
    match i {
        1 => Discounts {
            percent_discount: Some(Decimal::from(10)),
            volume_tiers: vec![],
        },
        2 => Discounts {
            percent_discount: None,
            volume_tiers: vec![VolumeTier {
                from_usd: Decimal::new(50, 2),
                percent: Decimal::from(20),
            }],
        },
        _ => Discounts::default(),
    }
}

// ---------------------------------------------------------------------------------------------
// Operations as small numbers indexing the pools above.

#[derive(Clone, Debug)]
struct Usage {
    status: u16,
    images: Vec<(u64, u64)>,
    /// Hundredths of a second of video.
    video_cs: Option<i64>,
    billable_units: Option<i64>,
    inference_ms: Option<i64>,
}

#[derive(Clone, Debug)]
enum Step {
    Submit {
        req: usize,
        account: usize,
        endpoint: usize,
    },
    Start {
        req: usize,
        num_gpus: Option<u32>,
        hold_units: Option<i64>,
    },
    Complete {
        req: usize,
        usage: Usage,
    },
    Cancel {
        req: usize,
    },
    Expire {
        req: usize,
    },
    Purchase {
        account: usize,
        pid: usize,
        amount: usize,
        paid: bool,
        /// An explicit expiry this many ms after `now` (0: now, which is refused).
        expires_in_ms: Option<i64>,
    },
    ExpireCredits {
        account: usize,
    },
    Event {
        id: usize,
        account: usize,
        endpoint: usize,
        /// How long before `now` it happened (negative: in the future).
        back_ms: i64,
        usage: Usage,
        num_gpus: Option<u32>,
    },
}

/// How a group of steps reaches the engine. The clock moves forward by `dt_ms` before it.
#[derive(Clone, Debug)]
enum Delivery {
    /// `execute`, one operation.
    One(Step),
    /// `execute_many`: one batch, in order.
    Many(Vec<Step>),
    /// All at once: each inner list is one task (`execute` for one step, `execute_many` for
    /// more), and every task may be sent twice.
    Concurrent(Vec<(Vec<Step>, bool)>),
    /// `sweep_expired`.
    Sweep,
}

#[derive(Clone, Debug)]
struct Group {
    dt_ms: i64,
    send: Delivery,
}

fn status_code() -> impl Strategy<Value = u16> {
    prop_oneof![
        6 => Just(200u16),
        1 => Just(201u16),
        1 => Just(404u16),
        1 => Just(422u16),
        1 => Just(500u16),
        1 => Just(99u16),
    ]
}

fn usage() -> impl Strategy<Value = Usage> {
    (
        status_code(),
        prop::collection::vec((1u64..=3000, 1u64..=3000), 0..4),
        prop::option::of(0i64..2000),
        prop_oneof![8 => Just(None), 2 => (0i64..40).prop_map(Some), 1 => Just(Some(-1i64))],
        prop::option::of(0i64..200_000),
    )
        .prop_map(
            |(status, images, video_cs, billable_units, inference_ms)| Usage {
                status,
                images,
                video_cs,
                billable_units,
                inference_ms,
            },
        )
}

fn account_ix() -> impl Strategy<Value = usize> {
    prop_oneof![12 => 0..REAL_ACCOUNTS, 1 => Just(REAL_ACCOUNTS)]
}

fn endpoint_ix() -> impl Strategy<Value = usize> {
    prop_oneof![12 => 0usize..3, 1 => Just(3usize)]
}

fn num_gpus() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![6 => Just(None), 3 => (1u32..=4).prop_map(Some), 1 => Just(Some(0u32))]
}

/// Mostly the default expiry, often one a few seconds away, now and then `now` (refused).
fn expires_in_ms() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![
        5 => Just(None),
        4 => (1i64..20_000).prop_map(Some),
        1 => Just(Some(0i64)),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let req = 0..REQUEST_IDS.len();
    prop_oneof![
        4 => (req.clone(), account_ix(), endpoint_ix()).prop_map(|(req, account, endpoint)| {
            Step::Submit { req, account, endpoint }
        }),
        4 => (
            req.clone(),
            num_gpus(),
            prop_oneof![6 => Just(None), 3 => (0i64..12).prop_map(Some), 1 => Just(Some(-1i64))],
        )
            .prop_map(|(req, num_gpus, hold_units)| Step::Start { req, num_gpus, hold_units }),
        4 => (req.clone(), usage()).prop_map(|(req, usage)| Step::Complete { req, usage }),
        1 => req.clone().prop_map(|req| Step::Cancel { req }),
        1 => req.prop_map(|req| Step::Expire { req }),
        4 => (
            account_ix(),
            0..PURCHASE_IDS.len(),
            0..AMOUNTS.len(),
            prop::bool::weighted(0.8),
            expires_in_ms(),
        )
            .prop_map(|(account, pid, amount, paid, expires_in_ms)| Step::Purchase {
                account,
                pid,
                amount,
                paid,
                expires_in_ms,
            }),
        2 => account_ix().prop_map(|account| Step::ExpireCredits { account }),
        2 => (
            0..EVENT_IDS.len(),
            account_ix(),
            endpoint_ix(),
            prop_oneof![10 => 0i64..600_000, 1 => -400_000i64..-300_001],
            usage(),
            num_gpus(),
        )
            .prop_map(|(id, account, endpoint, back_ms, usage, num_gpus)| Step::Event {
                id,
                account,
                endpoint,
                back_ms,
                usage,
                num_gpus,
            }),
    ]
}

fn dt_ms() -> impl Strategy<Value = i64> {
    prop_oneof![8 => 0i64..3_000, 3 => 3_000i64..40_000, 1 => 600_000i64..1_800_000]
}

/// Groups whose order is known: single operations, ordered batches, sweeps.
fn ordered_group() -> impl Strategy<Value = Group> {
    (
        dt_ms(),
        prop_oneof![
            12 => step().prop_map(Delivery::One),
            3 => prop::collection::vec(step(), 1..6).prop_map(Delivery::Many),
            1 => Just(Delivery::Sweep),
        ],
    )
        .prop_map(|(dt_ms, send)| Group { dt_ms, send })
}

fn any_group() -> impl Strategy<Value = Group> {
    (
        dt_ms(),
        prop_oneof![
            6 => step().prop_map(Delivery::One),
            2 => prop::collection::vec(step(), 1..6).prop_map(Delivery::Many),
            5 => prop::collection::vec(
                (prop::collection::vec(step(), 1..4), prop::bool::weighted(0.4)),
                1..6,
            )
            .prop_map(Delivery::Concurrent),
            1 => Just(Delivery::Sweep),
        ],
    )
        .prop_map(|(dt_ms, send)| Group { dt_ms, send })
}

fn output(u: &Usage) -> Output {
    Output {
        images: u
            .images
            .iter()
            .map(|&(width, height)| Dims { width, height })
            .collect(),
        video_seconds: u.video_cs.map(|cs| Decimal::new(cs, 2)),
        ..Output::default()
    }
}

fn to_op(step: &Step, now: Timestamp) -> Op {
    let rid = |i: usize| RequestId::parse(REQUEST_IDS[i]).unwrap();
    let ep = |i: usize| EndpointId::parse(ENDPOINTS[i]).unwrap();
    match step {
        Step::Submit {
            req,
            account,
            endpoint,
        } => Op::Submit {
            request_id: rid(*req),
            account: account_id(*account),
            api_key: None,
            endpoint: ep(*endpoint),
        },
        Step::Start {
            req,
            num_gpus,
            hold_units,
        } => Op::Start {
            request_id: rid(*req),
            machine_type: None,
            num_gpus: *num_gpus,
            hold_units: hold_units.map(Decimal::from),
        },
        Step::Complete { req, usage } => Op::Complete {
            request_id: rid(*req),
            status_code: usage.status,
            output: output(usage),
            billable_units: usage.billable_units.map(Decimal::from),
            inference_seconds: usage.inference_ms.map(|ms| Decimal::new(ms, 3)),
        },
        Step::Cancel { req } => Op::Cancel {
            request_id: rid(*req),
        },
        Step::Expire { req } => Op::Expire {
            request_id: rid(*req),
        },
        Step::Purchase {
            account,
            pid,
            amount,
            paid,
            expires_in_ms,
        } => Op::Purchase {
            account: account_id(*account),
            purchase_id: PurchaseId::parse(PURCHASE_IDS[*pid]).unwrap(),
            amount: Nanos(AMOUNTS[*amount]),
            paid: *paid,
            expires_at: expires_in_ms.map(|ms| now.plus_ms(ms)),
        },
        Step::ExpireCredits { account } => Op::ExpireCredits {
            account: account_id(*account),
        },
        Step::Event {
            id,
            account,
            endpoint,
            back_ms,
            usage,
            num_gpus,
        } => Op::UsageEvent(UsageEvent {
            event_id: RequestId::parse(EVENT_IDS[*id]).unwrap(),
            account: account_id(*account),
            endpoint: ep(*endpoint),
            api_key: None,
            timestamp: Timestamp(now.0 - back_ms),
            status_code: usage.status,
            output: output(usage),
            billable_units: usage.billable_units.map(Decimal::from),
            queue_seconds: Some(Decimal::new(1500, 3)),
            inference_seconds: usage.inference_ms.map(|ms| Decimal::new(ms, 3)),
            machine_type: None,
            num_gpus: *num_gpus,
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// The engine under test.

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fn fail(e: impl std::fmt::Debug) -> TestCaseError {
    TestCaseError::fail(format!("{e:?}"))
}

struct Harness {
    engine: Engine,
    clock: Arc<AtomicI64>,
    // Dropped last: the database lives in it.
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn new() -> Result<Harness, TestCaseError> {
        let dir = tempfile::tempdir().map_err(fail)?;
        let store = SqliteStore::open(dir.path().join("tollgate.db")).map_err(fail)?;
        let clock = Arc::new(AtomicI64::new(T0));
        let read = clock.clone();
        let engine = Engine::start(
            Box::new(store),
            Arc::new(move || Timestamp(read.load(Ordering::SeqCst))),
        )
        .map_err(fail)?;
        let doc = tollgate_core::catalog::document::parse(CATALOG).map_err(fail)?;
        let reply = engine
            .admin(AdminCmd::ApplyCatalog(Box::new(doc)))
            .await
            .map_err(fail)?;
        prop_assert_eq!(
            reply,
            AdminReply::CatalogApplied {
                endpoints: 4,
                versions_created: 4
            }
        );
        for i in 0..REAL_ACCOUNTS {
            engine
                .admin(AdminCmd::CreateAccount {
                    username: account_id(i),
                    billing: BillingMode::Prepaid,
                })
                .await
                .map_err(fail)?;
            engine
                .admin(AdminCmd::SetTerms {
                    username: account_id(i),
                    terms: AccountTerms {
                        discounts: Some(discounts(i)),
                        ..AccountTerms::default()
                    },
                })
                .await
                .map_err(fail)?;
        }
        Ok(Harness {
            engine,
            clock,
            _dir: dir,
        })
    }

    fn now(&self) -> Timestamp {
        Timestamp(self.clock.load(Ordering::SeqCst))
    }

    fn advance(&self, ms: i64) -> Timestamp {
        Timestamp(self.clock.fetch_add(ms, Ordering::SeqCst) + ms)
    }

    async fn reconcile(&self) -> Result<Reconciliation, TestCaseError> {
        self.engine.read(|r| r.reconcile()).await.map_err(fail)
    }

    async fn account(&self, i: usize) -> Result<AccountState, TestCaseError> {
        let (id, now) = (account_id(i), self.now());
        let row = self
            .engine
            .read(move |r| r.account(&id, now))
            .await
            .map_err(fail)?;
        Ok(row.ok_or_else(|| fail("account missing"))?.state)
    }

    async fn request(
        &self,
        id: &RequestId,
    ) -> Result<Option<tollgate_core::machine::RequestRecord>, TestCaseError> {
        let id = id.clone();
        self.engine
            .read(move |r| r.request(&id))
            .await
            .map_err(fail)
    }

    fn catalog(&self) -> Arc<Catalog> {
        self.engine.catalog()
    }
}

fn mirror_state() -> BatchState {
    let mut s = BatchState::default();
    for i in 0..REAL_ACCOUNTS {
        let mut a = AccountState::new(CreditAccount::new_prepaid(account_id(i)));
        a.discounts = discounts(i);
        s.accounts.insert(account_id(i), a);
    }
    s
}

fn all_request_ids() -> Vec<RequestId> {
    let mut ids: Vec<RequestId> = REQUEST_IDS
        .iter()
        .chain(EVENT_IDS.iter())
        .map(|s| RequestId::parse(s).unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn assert_clean(rec: &Reconciliation) -> Result<(), TestCaseError> {
    prop_assert!(rec.is_clean(), "the ledger does not reconcile: {:#?}", rec);
    Ok(())
}

/// Whether the account has credits left in a lot past its date.
fn has_due_credits(a: &AccountState, now: Timestamp) -> bool {
    a.lots
        .iter()
        .any(|l| l.remaining > Nanos::ZERO && l.expires_at.is_some_and(|e| e <= now))
}

/// The account as the store returns it: lots spent to zero are not loaded.
fn as_stored(a: &AccountState) -> AccountState {
    let mut a = a.clone();
    a.lots.retain(|l| l.remaining > Nanos::ZERO);
    a
}

/// Expires every due hold, then the credits past their date, the way the sweeper does, in the
/// pure mirror. Returns how many requests expired.
fn mirror_sweep(s: &mut BatchState, catalog: &Catalog, now: Timestamp) -> usize {
    let expired = mirror_expire_holds(s, catalog, now);
    let mut due: Vec<AccountId> = s
        .accounts
        .iter()
        .filter(|(_, a)| has_due_credits(a, now))
        .map(|(id, _)| id.clone())
        .collect();
    due.sort();
    for account in due {
        let answer = apply(s, catalog, now, Op::ExpireCredits { account });
        assert!(
            matches!(answer, Ok(Outcome::CreditsExpired { .. })),
            "{answer:?}"
        );
    }
    expired
}

fn mirror_expire_holds(s: &mut BatchState, catalog: &Catalog, now: Timestamp) -> usize {
    let mut due: Vec<(Timestamp, RequestId)> = s
        .requests
        .values()
        .filter_map(|r| match r.hold_expires_at {
            Some(t) if t <= now => Some((t, r.id.clone())),
            _ => None,
        })
        .collect();
    due.sort();
    due.into_iter()
        .filter(|(_, id)| {
            matches!(
                apply(
                    s,
                    catalog,
                    now,
                    Op::Expire {
                        request_id: id.clone()
                    }
                ),
                Ok(Outcome::Expired { expired: true })
            )
        })
        .count()
}

/// Every hold left open expires an hour later, and so do the credits due by then: the sweep
/// that frees the holds also expires all of them. After that nothing is held or in progress,
/// nothing due is left, and the ledger still reconciles.
async fn sweep_everything(h: &Harness) -> Result<(), TestCaseError> {
    let later = h.now().plus_ms(3_600_000);
    let mut open = 0;
    let mut before = Vec::new();
    for i in 0..REAL_ACCOUNTS {
        let a = h.account(i).await?;
        open += a.in_progress as usize;
        let due: i64 = a
            .lots
            .iter()
            .filter(|l| l.expires_at.is_some_and(|e| e <= later))
            .map(|l| l.remaining.0)
            .sum();
        before.push((a.credit.balance, due));
    }
    let expired_before = h.reconcile().await?.expired_nanos;
    h.advance(3_600_000);
    prop_assert_eq!(h.engine.sweep_expired().await.map_err(fail)?, open);
    prop_assert_eq!(h.engine.sweep_expired().await.map_err(fail)?, 0);
    let mut expired = 0;
    for (i, (balance, due)) in before.into_iter().enumerate() {
        let a = h.account(i).await?;
        prop_assert_eq!(a.credit.held, Nanos::ZERO);
        prop_assert_eq!(a.in_progress, 0);
        prop_assert_eq!(
            a.credit.balance,
            Nanos(balance.0 - due),
            "releasing holds never charges; only the credits due expire"
        );
        prop_assert!(!has_due_credits(&a, later), "{:?}", a.lots);
        expired += i128::from(due);
    }
    let rec = h.reconcile().await?;
    prop_assert_eq!(rec.expired_nanos, expired_before + expired);
    assert_clean(&rec)
}

// ---------------------------------------------------------------------------------------------
// Known order: the engine equals the pure machine.

async fn run_ordered(groups: Vec<Group>) -> Result<(), TestCaseError> {
    let h = Harness::new().await?;
    let catalog = h.catalog();
    let mut mirror = mirror_state();
    for g in &groups {
        let now = h.advance(g.dt_ms);
        match &g.send {
            Delivery::One(step) => {
                let op = to_op(step, now);
                let got = h.engine.execute(op.clone()).await.map_err(fail)?;
                let want = apply(&mut mirror, &catalog, now, op.clone());
                prop_assert_eq!(got, want, "engine and pure machine differ on {:?}", op);
            }
            Delivery::Many(steps) => {
                let ops: Vec<Op> = steps.iter().map(|s| to_op(s, now)).collect();
                let got = h.engine.execute_many(ops.clone()).await.map_err(fail)?;
                prop_assert_eq!(got.len(), ops.len());
                for (op, got) in ops.into_iter().zip(got) {
                    let want = apply(&mut mirror, &catalog, now, op.clone());
                    prop_assert_eq!(got, want, "engine and pure machine differ on {:?}", op);
                }
            }
            Delivery::Sweep => {
                let got = h.engine.sweep_expired().await.map_err(fail)?;
                prop_assert_eq!(got, mirror_sweep(&mut mirror, &catalog, now));
            }
            Delivery::Concurrent(_) => unreachable!("ordered groups only"),
        }
    }

    // Row by row: accounts and requests as stored equal the pure state.
    for (i, name) in ACCOUNTS.iter().enumerate().take(REAL_ACCOUNTS) {
        let stored = h.account(i).await?;
        prop_assert_eq!(
            &stored,
            &as_stored(&mirror.accounts[&account_id(i)]),
            "account {}",
            name
        );
    }
    for id in all_request_ids() {
        let stored = h.request(&id).await?;
        prop_assert_eq!(stored.as_ref(), mirror.requests.get(&id), "request {}", id);
    }
    let rec = h.reconcile().await?;
    assert_clean(&rec)?;
    let sum = |kinds: &[TransferKind]| -> i128 {
        mirror
            .transfers
            .iter()
            .filter(|t| kinds.contains(&t.transfer.kind))
            .map(|t| i128::from(t.transfer.amount.0))
            .sum()
    };
    prop_assert_eq!(
        rec.revenue_nanos,
        sum(&[TransferKind::Post, TransferKind::Charge])
    );
    prop_assert_eq!(
        rec.billed_nanos,
        mirror
            .line_items
            .iter()
            .map(|l| i128::from(l.charge.total_nanos.0))
            .sum::<i128>()
    );
    prop_assert_eq!(
        rec.credited_nanos,
        sum(&[TransferKind::Purchase, TransferKind::Grant])
    );
    prop_assert_eq!(rec.expired_nanos, sum(&[TransferKind::CreditExpiry]));
    sweep_everything(&h).await
}

// ---------------------------------------------------------------------------------------------
// Any order: the ledger reconciles and every answer agrees with the others and with the rows.

/// What the answers said, accumulated across the whole run.
#[derive(Default)]
struct Answers {
    /// The one first (not replayed) completion of each request.
    completions: HashMap<RequestId, Completion>,
    /// Completions answered as repeats, checked against the first at the end.
    replayed_completions: Vec<(RequestId, Completion)>,
    purchases: HashMap<(AccountId, PurchaseId), PurchaseRecord>,
    replayed_purchases: Vec<PurchaseRecord>,
    holds: HashMap<RequestId, Nanos>,
    replayed_holds: Vec<(RequestId, Nanos)>,
    finals: HashMap<RequestId, RequestStatus>,
    /// Credits that ExpireCredits answers said expired (the sweeper expires more, silently).
    expired_by_answers: i128,
}

impl Answers {
    fn record(
        &mut self,
        op: &Op,
        answer: &Result<Outcome, Rejection>,
    ) -> Result<(), TestCaseError> {
        let Ok(outcome) = answer else { return Ok(()) };
        let rid = op.request_id().cloned();
        match outcome {
            Outcome::Completed {
                request,
                completion,
                replayed,
            } => {
                prop_assert_eq!(Some(&request.id), rid.as_ref());
                if *replayed {
                    self.replayed_completions
                        .push((request.id.clone(), completion.clone()));
                } else {
                    let first = self
                        .completions
                        .insert(request.id.clone(), completion.clone());
                    prop_assert!(first.is_none(), "{} settled twice", request.id);
                    self.finals.insert(request.id.clone(), request.status);
                }
            }
            Outcome::Purchased { purchase, replayed } => {
                if *replayed {
                    self.replayed_purchases.push(purchase.clone());
                } else {
                    let key = (purchase.account.clone(), purchase.purchase_id.clone());
                    let first = self.purchases.insert(key, purchase.clone());
                    prop_assert!(first.is_none(), "purchase credited twice: {:?}", purchase);
                }
            }
            Outcome::Started { hold, replayed, .. } => {
                let rid = rid.expect("start names a request");
                if *replayed {
                    self.replayed_holds.push((rid, *hold));
                } else {
                    let first = self.holds.insert(rid.clone(), *hold);
                    prop_assert!(first.is_none(), "{} held twice", rid);
                }
            }
            Outcome::Cancelled { replayed: false } => {
                let first = self
                    .finals
                    .insert(rid.expect("named"), RequestStatus::Cancelled);
                prop_assert!(first.is_none());
            }
            Outcome::Expired { expired: true } => {
                let first = self
                    .finals
                    .insert(rid.expect("named"), RequestStatus::Expired);
                prop_assert!(first.is_none());
            }
            Outcome::CreditsExpired { amount } => {
                let expiring = matches!(op, Op::ExpireCredits { .. });
                prop_assert!(expiring, "{:?} answered CreditsExpired", op);
                prop_assert!(*amount >= Nanos::ZERO);
                self.expired_by_answers += i128::from(amount.0);
            }
            _ => {}
        }
        Ok(())
    }

    fn record_sweep(&mut self, expired: &[RequestId]) {
        for id in expired {
            self.finals.insert(id.clone(), RequestStatus::Expired);
        }
    }
}

async fn run_any(groups: Vec<Group>) -> Result<(), TestCaseError> {
    let h = Harness::new().await?;
    let mut answers = Answers::default();
    for g in &groups {
        let now = h.advance(g.dt_ms);
        match &g.send {
            Delivery::One(step) => {
                let op = to_op(step, now);
                let got = h.engine.execute(op.clone()).await.map_err(fail)?;
                answers.record(&op, &got)?;
            }
            Delivery::Many(steps) => {
                let ops: Vec<Op> = steps.iter().map(|s| to_op(s, now)).collect();
                let got = h.engine.execute_many(ops.clone()).await.map_err(fail)?;
                prop_assert_eq!(got.len(), ops.len());
                for (op, got) in ops.iter().zip(&got) {
                    answers.record(op, got)?;
                }
            }
            Delivery::Concurrent(tasks) => {
                let mut handles = Vec::new();
                for (steps, twice) in tasks {
                    let ops: Vec<Op> = steps.iter().map(|s| to_op(s, now)).collect();
                    for _ in 0..if *twice { 2 } else { 1 } {
                        let engine = h.engine.clone();
                        let ops = ops.clone();
                        handles.push(tokio::spawn(async move {
                            let got = if ops.len() == 1 {
                                engine.execute(ops[0].clone()).await.map(|a| vec![a])
                            } else {
                                engine.execute_many(ops.clone()).await
                            };
                            (ops, got)
                        }));
                    }
                }
                for handle in handles {
                    let (ops, got) = handle.await.map_err(fail)?;
                    let got = got.map_err(fail)?;
                    prop_assert_eq!(got.len(), ops.len());
                    for (op, got) in ops.iter().zip(&got) {
                        answers.record(op, got)?;
                    }
                }
            }
            Delivery::Sweep => {
                // Which requests the sweep expires: those in progress and due.
                let mut due = Vec::new();
                for id in all_request_ids() {
                    if let Some(r) = h.request(&id).await? {
                        if r.status == RequestStatus::InProgress
                            && r.hold_expires_at.is_some_and(|t| t <= now)
                        {
                            due.push(id);
                        }
                    }
                }
                prop_assert_eq!(h.engine.sweep_expired().await.map_err(fail)?, due.len());
                answers.record_sweep(&due);
            }
        }
        // The ledger reconciles after every group, not only at the end.
        assert_clean(&h.reconcile().await?)?;
    }

    // Repeats answered exactly what the first answer said.
    for (id, c) in &answers.replayed_completions {
        prop_assert_eq!(Some(c), answers.completions.get(id), "repeat of {}", id);
    }
    for p in &answers.replayed_purchases {
        let key = (p.account.clone(), p.purchase_id.clone());
        prop_assert_eq!(Some(p), answers.purchases.get(&key));
    }
    for (id, hold) in &answers.replayed_holds {
        prop_assert_eq!(Some(hold), answers.holds.get(id), "repeat start of {}", id);
    }
    // Each account's balance is what the answers add up to: every purchase credited once,
    // every billed completion charged once, less the credits that expired.
    let mut expected: BTreeMap<AccountId, i64> = BTreeMap::new();
    for p in answers.purchases.values() {
        *expected.entry(p.account.clone()).or_default() += p.amount.0;
    }
    for id in all_request_ids() {
        let stored = h.request(&id).await?;
        match (answers.completions.get(&id), &stored) {
            (Some(c), Some(r)) => {
                prop_assert_eq!(
                    r.completion.as_ref(),
                    Some(c),
                    "stored completion of {}",
                    id
                );
                *expected.entry(r.account.clone()).or_default() -= c.charge.total_nanos.0;
            }
            (Some(_), None) => prop_assert!(false, "{} was settled but is not stored", id),
            (None, Some(r)) => prop_assert!(r.completion.is_none(), "{} settled silently", id),
            (None, None) => {}
        }
        if let (Some(status), Some(r)) = (answers.finals.get(&id), &stored) {
            prop_assert_eq!(*status, r.status, "final status of {}", id);
        }
        if let (Some(hold), Some(r)) = (answers.holds.get(&id), &stored) {
            prop_assert_eq!(*hold, r.hold, "hold of {}", id);
        }
    }
    let mut expired = 0i128;
    for (i, name) in ACCOUNTS.iter().enumerate().take(REAL_ACCOUNTS) {
        let a = h.account(i).await?;
        let want = expected.get(&account_id(i)).copied().unwrap_or(0);
        let gone = want - a.credit.balance.0;
        prop_assert!(gone >= 0, "balance of {} above what it was paid", name);
        expired += i128::from(gone);
        prop_assert!(a.credit.held >= Nanos::ZERO);
        prop_assert!(a.in_progress <= a.concurrency_limit(&h.catalog()));
    }
    let rec = h.reconcile().await?;
    prop_assert_eq!(rec.expired_nanos, expired, "all that is missing expired");
    prop_assert!(rec.expired_nanos >= answers.expired_by_answers);
    sweep_everything(&h).await
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Sent in a known order (one at a time, ordered batches, sweeps), the engine answers and
    /// stores exactly what the pure machine computes, and the ledger reconciles.
    #[test]
    fn ordered_operations_match_the_pure_machine(
        groups in prop::collection::vec(ordered_group(), 1..40)
    ) {
        runtime().block_on(run_ordered(groups))?;
    }

    /// Sent concurrently and twice, in any interleaving, the ledger reconciles after every
    /// group, every purchase and every charge happens once, and repeats answer like the first.
    #[test]
    fn concurrent_operations_reconcile(groups in prop::collection::vec(any_group(), 1..30)) {
        runtime().block_on(run_any(groups))?;
    }
}

// ---------------------------------------------------------------------------------------------
// The sweeper path.

#[test]
fn the_sweeper_expires_a_timed_out_hold_once() {
    runtime().block_on(async {
        let h = Harness::new().await.unwrap();
        let alice = account_id(0);
        let rid = RequestId::parse("sweep-me").unwrap();
        let run = |op: Op| {
            let engine = h.engine.clone();
            async move { engine.execute(op).await.unwrap() }
        };
        let bought = run(Op::Purchase {
            account: alice.clone(),
            purchase_id: PurchaseId::parse("p").unwrap(),
            amount: Nanos(1_000_000_000),
            paid: true,
            expires_at: None,
        })
        .await;
        assert!(bought.is_ok(), "{bought:?}");
        let submitted = run(Op::Submit {
            request_id: rid.clone(),
            account: alice.clone(),
            api_key: None,
            endpoint: EndpointId::parse("test/fast").unwrap(),
        })
        .await;
        assert!(submitted.is_ok(), "{submitted:?}");
        let started = run(Op::Start {
            request_id: rid.clone(),
            machine_type: None,
            num_gpus: None,
            hold_units: None,
        })
        .await;
        // 2 images at 0.03.
        assert!(
            matches!(
                started,
                Ok(Outcome::Started {
                    hold: Nanos(60_000_000),
                    in_progress: 1,
                    replayed: false,
                    ..
                })
            ),
            "{started:?}"
        );
        let a = h.account(0).await.unwrap();
        assert_eq!(a.credit.held, Nanos(60_000_000));
        assert_eq!(a.in_progress, 1);

        // Not yet due: nothing to sweep.
        assert_eq!(h.engine.sweep_expired().await.unwrap(), 0);
        h.advance(2_000);
        assert_eq!(h.engine.sweep_expired().await.unwrap(), 1);

        let r = h.request(&rid).await.unwrap().expect("stored");
        assert_eq!(r.status, RequestStatus::Expired);
        assert_eq!(r.hold_expires_at, None);
        assert!(r.completion.is_none());
        let a = h.account(0).await.unwrap();
        assert_eq!(a.credit.held, Nanos::ZERO);
        assert_eq!(a.in_progress, 0);
        assert_eq!(a.credit.balance, Nanos(1_000_000_000), "nothing billed");

        assert_eq!(h.engine.sweep_expired().await.unwrap(), 0);
        // A late completion is refused and bills nothing.
        let late = run(Op::Complete {
            request_id: rid.clone(),
            status_code: 200,
            output: Output::default(),
            billable_units: None,
            inference_seconds: None,
        })
        .await;
        assert!(
            matches!(
                late,
                Err(Rejection::WrongState {
                    status: RequestStatus::Expired,
                    ..
                })
            ),
            "{late:?}"
        );
        let rec = h.reconcile().await.unwrap();
        assert!(rec.is_clean(), "{rec:#?}");
        assert_eq!(rec.revenue_nanos, 0);
        assert_eq!(rec.credited_nanos, 1_000_000_000);
    });
}

/// The sweeper expires credits past their date, but never the part an open hold reserves:
/// the request is billed from it, and what is left expires at the next sweep.
#[test]
fn the_sweeper_expires_credits_past_their_date_but_honours_holds() {
    runtime().block_on(async {
        let h = Harness::new().await.unwrap();
        let alice = account_id(0);
        let rid = RequestId::parse("held-across-expiry").unwrap();
        let run = |op: Op| {
            let engine = h.engine.clone();
            async move { engine.execute(op).await.unwrap() }
        };
        let t0 = h.now();
        let bought = run(Op::Purchase {
            account: alice.clone(),
            purchase_id: PurchaseId::parse("short").unwrap(),
            amount: Nanos(1_000_000_000),
            paid: true,
            expires_at: Some(t0.plus_ms(10_000)),
        })
        .await;
        match &bought {
            Ok(Outcome::Purchased { purchase, .. }) => {
                assert_eq!(purchase.expires_at, Some(t0.plus_ms(10_000)))
            }
            other => panic!("{other:?}"),
        }
        assert!(run(Op::Submit {
            request_id: rid.clone(),
            account: alice.clone(),
            api_key: None,
            endpoint: EndpointId::parse("test/megapixel").unwrap(),
        })
        .await
        .is_ok());
        // 4 MP at 0.025: 0.10 held.
        let started = run(Op::Start {
            request_id: rid.clone(),
            machine_type: None,
            num_gpus: None,
            hold_units: None,
        })
        .await;
        assert!(
            matches!(
                started,
                Ok(Outcome::Started {
                    hold: Nanos(100_000_000),
                    ..
                })
            ),
            "{started:?}"
        );

        // Not yet due.
        h.advance(9_999);
        assert_eq!(h.engine.sweep_expired().await.unwrap(), 0);
        assert_eq!(
            h.account(0).await.unwrap().credit.balance,
            Nanos(1_000_000_000)
        );

        // Due: all but the hold expires.
        h.advance(1);
        assert_eq!(h.engine.sweep_expired().await.unwrap(), 0);
        let a = h.account(0).await.unwrap();
        assert_eq!(a.credit.balance, Nanos(100_000_000));
        assert_eq!(a.credit.held, Nanos(100_000_000));
        assert_eq!(a.lots.len(), 1);
        assert_eq!(a.lots[0].remaining, Nanos(100_000_000));
        let rec = h.reconcile().await.unwrap();
        assert!(rec.is_clean(), "{rec:#?}");
        assert_eq!(rec.expired_nanos, 900_000_000);

        // The request completes after the date and is billed normally: 1 MP.
        let done = run(Op::Complete {
            request_id: rid.clone(),
            status_code: 200,
            output: Output {
                images: vec![Dims {
                    width: 1000,
                    height: 1000,
                }],
                ..Output::default()
            },
            billable_units: None,
            inference_seconds: None,
        })
        .await;
        match &done {
            Ok(Outcome::Completed { completion, .. }) => {
                assert!(completion.billed);
                assert_eq!(completion.charge.total_nanos, Nanos(25_000_000));
                assert_eq!(completion.balance_after, Nanos(75_000_000));
            }
            other => panic!("{other:?}"),
        }

        // The next sweep expires the rest.
        assert_eq!(h.engine.sweep_expired().await.unwrap(), 0);
        let a = h.account(0).await.unwrap();
        assert_eq!(a.credit.balance, Nanos::ZERO);
        assert_eq!(a.credit.held, Nanos::ZERO);
        assert!(a.lots.is_empty(), "{:?}", a.lots);
        let rec = h.reconcile().await.unwrap();
        assert!(rec.is_clean(), "{rec:#?}");
        assert_eq!(rec.expired_nanos, 975_000_000);
        assert_eq!(rec.revenue_nanos, 25_000_000);
        // Nothing more to expire.
        assert_eq!(h.engine.sweep_expired().await.unwrap(), 0);
        assert_eq!(h.reconcile().await.unwrap().expired_nanos, 975_000_000);
    });
}

/// Lots with the same expiry bought in the same batch (same creation time) are spent in one
/// fixed order, whether the state comes from memory or from the database.
#[test]
fn lots_bought_together_are_spent_in_one_order() {
    let purchase = |pid| Step::Purchase {
        account: 0,
        pid,
        amount: 1,
        paid: true,
        expires_in_ms: None,
    };
    let event = |id| Step::Event {
        id,
        account: 0,
        endpoint: 0,
        back_ms: 0,
        usage: Usage {
            status: 200,
            images: vec![(1000, 1000)],
            video_cs: None,
            billable_units: None,
            inference_ms: None,
        },
        num_gpus: None,
    };
    let groups = vec![
        Group {
            dt_ms: 0,
            send: Delivery::Many(vec![purchase(3), purchase(1)]),
        },
        Group {
            dt_ms: 1000,
            send: Delivery::One(event(0)),
        },
        Group {
            dt_ms: 1000,
            send: Delivery::Many(vec![purchase(2), purchase(0), event(1)]),
        },
    ];
    runtime().block_on(run_ordered(groups)).unwrap();
}
