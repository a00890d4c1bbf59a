//! An account's spending limits are stored with it: written whole by the operator's change,
//! kept by every batch that writes the account, read back the same by the writer and by
//! readers, on every store.

use std::collections::HashMap;
use tollgate_core::ids::{AccountId, ApiKeyId, LimitId};
use tollgate_core::limits::{LimitAction, LimitScope, LimitState, Period, SpendingLimit};
use tollgate_core::machine::{AccountState, BatchState};
use tollgate_core::{Nanos, Timestamp};
use tollgate_store::testing::{backends, TestDb};
use tollgate_store::{BillingMode, Store};

const NOW: Timestamp = Timestamp(1_767_225_600_000); // 2026-01-01T00:00:00Z

fn load(store: &mut dyn Store, id: &AccountId) -> AccountState {
    let mut out = HashMap::new();
    store
        .transaction(&mut |tx| tx.lock_accounts(std::slice::from_ref(id), NOW, &mut out))
        .unwrap();
    out.remove(id).expect("the account exists")
}

fn read(store: &dyn Store, id: &AccountId) -> AccountState {
    let mut reader = (store.reader_factory())().unwrap();
    reader.account(id, NOW).unwrap().expect("the account").state
}

fn limits() -> Vec<LimitState> {
    let day = LimitState::new(
        SpendingLimit {
            id: LimitId::parse("lim_day").unwrap(),
            scope: LimitScope::Account,
            period: Period::Day,
            timezone: "America/New_York".parse().unwrap(),
            amount: Nanos(5_000_000_000),
            action: LimitAction::Block,
            alert_at_percent: vec![50, 80, 100],
            created_at: NOW,
        },
        NOW,
        Nanos(1_000),
        Nanos(20),
    );
    let mut key = LimitState::new(
        SpendingLimit {
            id: LimitId::parse("lim_key").unwrap(),
            scope: LimitScope::ApiKey(ApiKeyId::parse("k1").unwrap()),
            period: Period::Month,
            timezone: "UTC".parse().unwrap(),
            amount: Nanos(7),
            action: LimitAction::Alert,
            alert_at_percent: vec![],
            created_at: NOW,
        },
        NOW,
        Nanos::ZERO,
        Nanos::ZERO,
    );
    key.alerted = vec![50];
    key.reached = true;
    vec![day, key]
}

#[test]
fn limits_are_stored_with_their_account_and_kept_by_its_writes() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        let (acme, other) = (
            AccountId::parse("acme").unwrap(),
            AccountId::parse("other").unwrap(),
        );
        store
            .transaction(&mut |tx| {
                tx.create_account(&acme, BillingMode::Prepaid, NOW)?;
                tx.create_account(&other, BillingMode::Prepaid, NOW)
            })
            .unwrap();
        assert!(load(&mut *store, &acme).limits.is_empty());

        let set = limits();
        store
            .transaction(&mut |tx| tx.set_account_limits(&acme, &set))
            .unwrap();
        assert_eq!(load(&mut *store, &acme).limits, set, "{}", backend.name());
        assert_eq!(read(&*store, &acme).limits, set, "{}", backend.name());

        // A batch that writes the account writes its limits as the core left them; an account
        // without limits stays without.
        let mut changed = set.clone();
        changed[0].held = Nanos(500);
        changed[0].spent = Nanos(2_000);
        store
            .transaction(&mut |tx| {
                let mut state = BatchState::default();
                tx.lock_accounts(&[acme.clone(), other.clone()], NOW, &mut state.accounts)?;
                state.accounts.get_mut(&acme).unwrap().limits = changed.clone();
                state.accounts.get_mut(&other).unwrap().credit.balance = Nanos(9);
                state.dirty_accounts.extend([acme.clone(), other.clone()]);
                tx.persist(&state).map(drop)
            })
            .unwrap();
        assert_eq!(load(&mut *store, &acme).limits, changed);
        assert_eq!(read(&*store, &acme).limits, changed, "{}", backend.name());
        assert!(read(&*store, &other).limits.is_empty());

        // Removing them all leaves none, in the writer's copy too.
        store
            .transaction(&mut |tx| tx.set_account_limits(&acme, &[]))
            .unwrap();
        assert!(
            load(&mut *store, &acme).limits.is_empty(),
            "{}",
            backend.name()
        );
        assert!(read(&*store, &acme).limits.is_empty());
        let missing = AccountId::parse("nobody").unwrap();
        assert!(store
            .transaction(&mut |tx| tx.set_account_limits(&missing, &set))
            .is_err());
    }
}
