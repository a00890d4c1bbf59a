//! The writer's copy of the account rows it has read or committed, so that a batch does not read
//! them from the file again.

use crate::Result;
use rusqlite::Connection;
use std::collections::HashMap;
use tollgate_core::concurrency::TIER_WINDOW_MS;
use tollgate_core::ids::{AccountId, PurchaseId};
use tollgate_core::machine::{AccountState, BatchState};
use tollgate_core::{Nanos, Timestamp};

/// The writer's copy of the account rows it has read or written. The store is the only writer
/// of its file, so what it committed is what is there; `PRAGMA data_version` changes when any
/// other connection commits, and then the cache is dropped. A batch that fails drops it too.
#[derive(Default)]
pub(super) struct AccountCache {
    pub(super) accounts: HashMap<AccountId, CachedAccount>,
    data_version: i64,
}

/// Paid purchases as (created_at, purchase id, amount net of what was refunded and disputed):
/// what the concurrency tier is summed from.
pub(super) type PaidPurchases = Vec<(Timestamp, PurchaseId, Nanos)>;

#[derive(Clone)]
pub(super) struct CachedAccount {
    /// `paid_28d` is recomputed from `recent_paid`, and the terms in force chosen, for each
    /// batch's `now`.
    pub(super) state: AccountState,
    /// Paid purchases that may still be in the 28-day window: (created_at, purchase id, net
    /// amount).
    pub(super) recent_paid: PaidPurchases,
}

impl CachedAccount {
    pub(super) fn state_at(&mut self, now: Timestamp) -> AccountState {
        let since = now.minus_ms(TIER_WINDOW_MS);
        self.recent_paid.retain(|(at, _, _)| *at > since);
        let mut state = self.state.clone();
        state.paid_28d = Nanos(self.recent_paid.iter().map(|(_, _, n)| n.0).sum());
        state.use_terms_at(now);
        state
    }
}

impl AccountCache {
    /// Drops every row if another connection committed since the last look. Called in the
    /// writer's IMMEDIATE transaction, with the write lock held: no other connection can
    /// commit until it ends.
    pub(super) fn check(&mut self, conn: &Connection) -> Result<()> {
        let version: i64 = conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        if version != self.data_version {
            self.accounts.clear();
            self.data_version = version;
        }
        Ok(())
    }

    /// After the db transaction: a commit keeps the rows it `written` and drops those changed
    /// outside the state machine (`forget`); a failure drops every row.
    pub(super) fn after(
        &mut self,
        committed: bool,
        written: HashMap<AccountId, CachedAccount>,
        forget: Vec<AccountId>,
    ) {
        if committed {
            for id in forget {
                self.accounts.remove(&id);
            }
            self.accounts.extend(written);
        } else {
            self.accounts.clear();
        }
    }
}

/// What a paid purchase counts toward the concurrency tier: its amount less what was refunded
/// and what disputes hold.
pub(super) fn net_paid(p: &tollgate_core::machine::PurchaseRecord) -> Nanos {
    Nanos(p.amount.0 - p.refunded.0 - p.disputed.0)
}

impl CachedAccount {
    /// The account `id` as the batch leaves it, to cache once the batch commits: its lots
    /// still open, and its paid purchases, those cached `before` and the batch's new ones,
    /// each net of what the batch took back of it (a refund or a dispute: the batch's
    /// `dirty_purchases`, and a new purchase as the batch left it).
    pub(super) fn as_written(
        before: Option<&CachedAccount>,
        id: &AccountId,
        s: &BatchState,
    ) -> CachedAccount {
        let mut recent = before.map(|c| c.recent_paid.clone()).unwrap_or_default();
        let new = s
            .new_purchases
            .iter()
            .filter(|p| &p.account == id)
            .map(|p| {
                let key = (p.account.clone(), p.purchase_id.clone());
                s.purchases.get(&key).unwrap_or(p)
            });
        let taken = s
            .dirty_purchases
            .iter()
            .filter(|(a, _)| a == id)
            .filter_map(|key| s.purchases.get(key));
        for p in new.chain(taken).filter(|p| p.paid) {
            recent.retain(|(_, cached, _)| cached != &p.purchase_id);
            recent.push((p.created_at, p.purchase_id.clone(), net_paid(p)));
        }
        let mut state = s.accounts[id].clone();
        state.lots.retain(|l| l.remaining > Nanos::ZERO);
        CachedAccount {
            state,
            recent_paid: recent,
        }
    }
}
