//! An account's terms change in one db transaction: the change is applied to the terms as they
//! are under the account's lock, so changes of different terms sent at the same time all stick
//! (through one engine, and through two engines on one database), and a change that is refused
//! in any part writes nothing, its prices included. On every store at hand.

use crate::common::{account, catalog_and_account};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::sync::Arc;
use tollgate_core::ids::{AccountId, EndpointId, MachineType};
use tollgate_core::price::{PriceRule, Unit};
use tollgate_core::pricing::VolumeTier;
use tollgate_core::terms::{self, Terms, TermsChange};
use tollgate_core::{Nanos, Timestamp};
use tollgate_engine::{AdminCmd, AdminReply, Engine, EngineError};
use tollgate_store::testing::{backends, TestDb};
use tollgate_store::{BillingMode, StoreError};

/// 2026-06-01T00:00:00Z.
const T: i64 = 1_780_272_000_000;
/// How many times each pair of changes is sent at the same time.
const ROUNDS: usize = 25;

fn start(db: &TestDb) -> Engine {
    Engine::start(db.open().unwrap(), Arc::new(|| Timestamp(T))).unwrap()
}

fn tts() -> EndpointId {
    EndpointId::parse("test/tts").unwrap()
}

fn price(unit_price: &str) -> PriceRule {
    PriceRule::per_unit(Unit::Character, Some(unit_price.parse().unwrap()))
}

async fn set(engine: &Engine, change: TermsChange) -> Result<AdminReply, EngineError> {
    engine
        .admin(AdminCmd::SetTerms {
            username: account(),
            change,
        })
        .await
}

async fn terms(engine: &Engine) -> Terms {
    terms_at(engine, Timestamp(T)).await
}

/// The account's terms in force at `at`.
async fn terms_at(engine: &Engine, at: Timestamp) -> Terms {
    let row = engine
        .read(move |r| r.account(&account(), at))
        .await
        .unwrap()
        .expect("the account");
    row.state.terms_at(at)
}

/// What a refused change must leave as it was: the terms, the account's price versions, the
/// catalog's generation and the engine's catalog snapshot of the account's prices.
async fn everything(engine: &Engine) -> (Terms, usize, i64, usize) {
    let versions = engine.read(|r| r.price_versions()).await.unwrap();
    let generation = engine.read(|r| r.catalog_generation()).await.unwrap();
    let snapshot = engine
        .catalog()
        .versions
        .get(&(tts(), Some(account())))
        .map_or(0, Vec::len);
    (terms(engine).await, versions.len(), generation, snapshot)
}

fn percent(i: usize) -> TermsChange {
    TermsChange {
        percent_discount: Some(Decimal::from(i % 100)),
        ..TermsChange::default()
    }
}

fn tiers(i: usize) -> TermsChange {
    TermsChange {
        volume_tiers: Some(vec![VolumeTier {
            from_usd: Decimal::from(i),
            percent: Decimal::from(i % 50),
        }]),
        ..TermsChange::default()
    }
}

fn limit(i: usize) -> TermsChange {
    TermsChange {
        concurrency_limit: Some(Some(i as u32 + 1)),
        ..TermsChange::default()
    }
}

fn billing(i: usize) -> TermsChange {
    TermsChange {
        billing: Some(if i.is_multiple_of(2) {
            BillingMode::Prepaid
        } else {
            BillingMode::Invoice
        }),
        ..TermsChange::default()
    }
}

fn low_balance(i: usize) -> TermsChange {
    TermsChange {
        low_balance: Some((!i.is_multiple_of(3)).then_some(Nanos(i as i64 * 1_000))),
        ..TermsChange::default()
    }
}

fn h100() -> MachineType {
    MachineType::parse("GPU-H100").unwrap()
}

fn machine_price(i: usize) -> TermsChange {
    TermsChange {
        machine_prices: BTreeMap::from([(h100(), Some(Decimal::new(i as i64, 6)))]),
        ..TermsChange::default()
    }
}

fn threshold(i: usize) -> TermsChange {
    TermsChange {
        lock_threshold: Some(Nanos(i as i64 * 1_000)),
        ..TermsChange::default()
    }
}

/// Sends `first(i)` through `x` and `second(i)` through `y` at the same time, [`ROUNDS`]
/// times: after each round the terms are the last ones with both changes applied (they change
/// different terms, so in either order).
async fn both_stick(
    on: &str,
    x: &Engine,
    y: &Engine,
    first: fn(usize) -> TermsChange,
    second: fn(usize) -> TermsChange,
) {
    for i in 1..=ROUNDS {
        let before = terms(x).await;
        let (a, b) = tokio::join!(
            tokio::spawn({
                let x = x.clone();
                async move { set(&x, first(i)).await }
            }),
            tokio::spawn({
                let y = y.clone();
                async move { set(&y, second(i)).await }
            }),
        );
        for reply in [a.unwrap(), b.unwrap()] {
            assert_eq!(
                reply.unwrap(),
                AdminReply::TermsSet {
                    price_versions_created: 0
                }
            );
        }
        let expected = terms::apply(&terms::apply(&before, &first(i)).unwrap(), &second(i));
        assert_eq!(terms(y).await, expected.unwrap(), "on {on}, round {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_of_different_terms_sent_together_all_stick() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let engine = start(&db);
        catalog_and_account(&engine, BillingMode::Prepaid).await;
        both_stick(backend.name(), &engine, &engine, percent, tiers).await;
        both_stick(backend.name(), &engine, &engine, limit, threshold).await;
    }
}

/// Two engines on one database, as two tollgate processes sharing it: each change is applied
/// under the account's row lock (on SQLite, the one writer's lock), to the terms the other
/// just committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_sent_together_through_two_engines_all_stick() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let (a, b) = (start(&db), start(&db));
        catalog_and_account(&a, BillingMode::Prepaid).await;
        both_stick(backend.name(), &a, &b, percent, tiers).await;
        both_stick(backend.name(), &a, &b, tiers, percent).await;
        both_stick(backend.name(), &a, &b, limit, threshold).await;
        both_stick(backend.name(), &a, &b, threshold, limit).await;
        both_stick(backend.name(), &a, &b, billing, low_balance).await;
        both_stick(backend.name(), &a, &b, machine_price, billing).await;
    }
}

#[tokio::test]
async fn terms_and_prices_are_set_together() {
    for backend in backends() {
        let on = backend.name();
        let db = TestDb::new(&backend);
        let engine = start(&db);
        catalog_and_account(&engine, BillingMode::Prepaid).await;
        let own = |engine: &Engine| engine.catalog().versions[&(tts(), Some(account()))].clone();

        // Without a date, prices take effect now.
        set(
            &engine,
            TermsChange {
                prices: vec![(tts(), price("0.00002"))],
                ..TermsChange::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(own(&engine)[0].effective_from, Timestamp(T), "on {on}");

        // Terms and dated prices in one change.
        let reply = set(
            &engine,
            TermsChange {
                percent_discount: Some(Decimal::from(10)),
                concurrency_limit: Some(Some(5)),
                prices: vec![(tts(), price("0.00004")), (tts(), price("0.00003"))],
                effective_from: Some(Timestamp(T + 60_000)),
                ..TermsChange::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(
            reply,
            AdminReply::TermsSet {
                price_versions_created: 2
            },
            "on {on}"
        );
        // The terms take effect with the prices, not before.
        let before = terms(&engine).await;
        assert_eq!(before.discounts.percent_discount, None, "on {on}");
        assert_eq!(before.concurrency_override, None, "on {on}");
        let t = terms_at(&engine, Timestamp(T + 60_000)).await;
        assert_eq!(t.discounts.percent_discount, Some(Decimal::from(10)));
        assert_eq!(t.concurrency_override, Some(5));
        // The snapshot prices with them at once.
        let versions = own(&engine);
        assert_eq!(versions.len(), 3, "on {on}");
        assert!(versions[1..]
            .iter()
            .all(|v| v.effective_from == Timestamp(T + 60_000)));
        assert_eq!(versions[2].rule, price("0.00003"));

        // A change of prices alone keeps the terms it does not name.
        set(
            &engine,
            TermsChange {
                prices: vec![(tts(), price("0.00005"))],
                effective_from: Some(Timestamp(T + 60_000)),
                ..TermsChange::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(terms_at(&engine, Timestamp(T + 60_000)).await, t, "on {on}");
        assert_eq!(own(&engine).len(), 4, "on {on}");
    }
}

#[tokio::test]
async fn a_refused_change_writes_nothing() {
    for backend in backends() {
        let on = backend.name();
        let db = TestDb::new(&backend);
        let engine = start(&db);
        catalog_and_account(&engine, BillingMode::Prepaid).await;
        set(
            &engine,
            TermsChange {
                percent_discount: Some(Decimal::from(5)),
                prices: vec![(tts(), price("0.00004"))],
                ..TermsChange::default()
            },
        )
        .await
        .unwrap();
        let before = everything(&engine).await;
        // Valid terms beside the part that is refused: none of them is written either.
        let valid = TermsChange {
            percent_discount: Some(Decimal::from(50)),
            volume_tiers: Some(vec![VolumeTier {
                from_usd: Decimal::ZERO,
                percent: Decimal::from(60),
            }]),
            concurrency_limit: Some(Some(9)),
            lock_threshold: Some(Nanos(1_000)),
            ..TermsChange::default()
        };
        let with_prices = |prices: Vec<(EndpointId, PriceRule)>| TermsChange {
            prices,
            ..valid.clone()
        };

        let invalid_price = set(
            &engine,
            with_prices(vec![(tts(), price("0.00002")), (tts(), price("-0.1"))]),
        )
        .await;
        match invalid_price {
            Err(EngineError::Invalid(input)) => {
                assert_eq!(input.field.as_deref(), Some("prices.test/tts.unit_price"))
            }
            other => panic!("on {on}: {other:?}"),
        }
        assert_eq!(everything(&engine).await, before, "on {on}");

        let unknown = EndpointId::parse("test/none").unwrap();
        let unknown_endpoint = set(
            &engine,
            with_prices(vec![(tts(), price("0.00002")), (unknown, price("0.1"))]),
        )
        .await;
        match unknown_endpoint {
            Err(EngineError::Store(StoreError::NotFound(what))) => {
                assert_eq!(what, "endpoint test/none")
            }
            other => panic!("on {on}: {other:?}"),
        }
        assert_eq!(everything(&engine).await, before, "on {on}");

        let invalid_terms = set(
            &engine,
            TermsChange {
                concurrency_limit: Some(Some(0)),
                ..with_prices(vec![(tts(), price("0.00002"))])
            },
        )
        .await;
        match invalid_terms {
            Err(EngineError::Invalid(input)) => {
                assert_eq!(input.field.as_deref(), Some("concurrency_limit"))
            }
            other => panic!("on {on}: {other:?}"),
        }
        assert_eq!(everything(&engine).await, before, "on {on}");

        let unknown_machine = set(
            &engine,
            TermsChange {
                machine_prices: BTreeMap::from([
                    (h100(), Some(Decimal::new(4, 4))),
                    (MachineType::parse("GPU-NONE").unwrap(), Some(Decimal::ONE)),
                ]),
                ..with_prices(vec![(tts(), price("0.00002"))])
            },
        )
        .await;
        match unknown_machine {
            Err(EngineError::Store(StoreError::NotFound(what))) => {
                assert_eq!(what, "machine type GPU-NONE")
            }
            other => panic!("on {on}: {other:?}"),
        }
        assert_eq!(everything(&engine).await, before, "on {on}");

        let invalid_machine_price = set(
            &engine,
            TermsChange {
                machine_prices: BTreeMap::from([(h100(), Some(Decimal::new(-1, 6)))]),
                ..valid.clone()
            },
        )
        .await;
        match invalid_machine_price {
            Err(EngineError::Invalid(input)) => {
                assert_eq!(input.field.as_deref(), Some("machine_prices.GPU-H100"))
            }
            other => panic!("on {on}: {other:?}"),
        }
        assert_eq!(everything(&engine).await, before, "on {on}");

        let nobody = engine
            .admin(AdminCmd::SetTerms {
                username: AccountId::parse("nobody").unwrap(),
                change: with_prices(vec![(tts(), price("0.00002"))]),
            })
            .await;
        match nobody {
            Err(EngineError::Store(StoreError::NotFound(what))) => {
                assert_eq!(what, "account nobody")
            }
            other => panic!("on {on}: {other:?}"),
        }
        assert_eq!(everything(&engine).await, before, "on {on}");
    }
}

/// How an account pays is a term: a new account's mode is its first version, and a change of
/// mode takes effect at its date, where admission reads it (the floor of holds, the lock).
#[tokio::test]
async fn the_billing_mode_is_a_versioned_term() {
    for backend in backends() {
        let on = backend.name();
        let db = TestDb::new(&backend);
        let engine = start(&db);
        catalog_and_account(&engine, BillingMode::Invoice).await;
        let row = |at: i64| engine.read(move |r| r.account(&account(), Timestamp(at)));
        let created = row(T).await.unwrap().unwrap();
        assert_eq!(created.billing, BillingMode::Invoice, "on {on}");
        assert_eq!(created.state.terms.versions().len(), 1, "on {on}");
        assert_eq!(
            created.state.terms.versions()[0].terms.billing,
            BillingMode::Invoice
        );
        assert!(
            !created.state.is_locked(),
            "on {on}: invoice, no credits, not locked"
        );

        set(
            &engine,
            TermsChange {
                billing: Some(BillingMode::Prepaid),
                low_balance: Some(Some(Nanos(2_000_000_000))),
                effective_from: Some(Timestamp(T + 60_000)),
                ..TermsChange::default()
            },
        )
        .await
        .unwrap();
        let before = row(T + 59_999).await.unwrap().unwrap();
        assert_eq!(before.billing, BillingMode::Invoice, "on {on}");
        assert_eq!(before.state.credit.floor, None, "on {on}");
        let after = row(T + 60_000).await.unwrap().unwrap();
        assert_eq!(after.billing, BillingMode::Prepaid, "on {on}");
        assert_eq!(after.state.credit.floor, Some(Nanos::ZERO), "on {on}");
        assert!(after.state.is_locked(), "on {on}: prepaid without credits");
        let t = after.state.terms_at(Timestamp(T + 60_000));
        assert_eq!(t.low_balance, Some(Nanos(2_000_000_000)), "on {on}");
    }
}
