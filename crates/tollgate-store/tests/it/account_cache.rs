//! The SQLite writer keeps the account rows it committed in memory. These tests prove the cache
//! never serves a row that changed behind its back.

use std::collections::HashMap;
use tollgate_core::ids::AccountId;
use tollgate_core::machine::{AccountState, BatchState};
use tollgate_core::terms::{Terms, TermsSchedule, TermsVersion};
use tollgate_core::{Nanos, Timestamp};
use tollgate_store::sqlite::SqliteStore;
use tollgate_store::{BillingMode, Store, StoreError};

fn load(store: &mut SqliteStore, id: &AccountId) -> AccountState {
    let mut out = HashMap::new();
    store
        .transaction(&mut |tx| tx.lock_accounts(std::slice::from_ref(id), Timestamp(0), &mut out))
        .unwrap();
    out.remove(id).expect("the account exists")
}

/// Writes a new balance through the write path, as the engine would.
fn set_balance(store: &mut SqliteStore, id: &AccountId, balance: i64) {
    store
        .transaction(&mut |tx| {
            let mut state = BatchState::default();
            tx.lock_accounts(std::slice::from_ref(id), Timestamp(0), &mut state.accounts)?;
            state.accounts.get_mut(id).unwrap().credit.balance = Nanos(balance);
            state.dirty_accounts.insert(id.clone());
            tx.persist(&state).map(drop)
        })
        .unwrap();
}

#[test]
fn a_write_by_another_connection_is_seen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let mut store = SqliteStore::open(&path).unwrap();
    let id = AccountId::parse("acme").unwrap();
    store
        .transaction(&mut |tx| tx.create_account(&id, BillingMode::Prepaid, Timestamp(0)))
        .unwrap();
    set_balance(&mut store, &id, 500);
    assert_eq!(
        load(&mut store, &id).credit.balance,
        Nanos(500),
        "cached after its own write"
    );

    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute(
            "UPDATE accounts SET balance_nanos = 777 WHERE username = 'acme'",
            [],
        )
        .unwrap();
    assert_eq!(load(&mut store, &id).credit.balance, Nanos(777));
}

#[test]
fn a_failed_transaction_and_changed_terms_leave_nothing_stale() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(dir.path().join("t.db")).unwrap();
    let id = AccountId::parse("acme").unwrap();
    store
        .transaction(&mut |tx| tx.create_account(&id, BillingMode::Prepaid, Timestamp(0)))
        .unwrap();
    set_balance(&mut store, &id, 100);

    // A batch that persists a new balance and then fails is rolled back: the cache must not
    // keep what it wrote.
    let failed = store.transaction(&mut |tx| {
        let mut state = BatchState::default();
        tx.lock_accounts(std::slice::from_ref(&id), Timestamp(0), &mut state.accounts)?;
        state.accounts.get_mut(&id).unwrap().credit.balance = Nanos(999);
        state.dirty_accounts.insert(id.clone());
        tx.persist(&state)?;
        Err(StoreError::Refused("the batch failed".into()))
    });
    assert!(failed.is_err());
    assert_eq!(load(&mut store, &id).credit.balance, Nanos(100));

    // Terms change outside the state machine: the next load sees them.
    store
        .transaction(&mut |tx| {
            tx.set_account_terms(
                &id,
                &TermsSchedule::new(vec![TermsVersion {
                    effective_from: Timestamp(0),
                    terms: Terms {
                        lock_threshold: Nanos(42),
                        concurrency_override: Some(7),
                        ..Terms::default()
                    },
                }]),
            )
        })
        .unwrap();
    let a = load(&mut store, &id);
    assert_eq!(a.credit.lock_threshold, Nanos(42));
    assert_eq!(a.concurrency_override, Some(7));
}
