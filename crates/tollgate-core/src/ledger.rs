//! The double-entry ledger: customer credit accounts, system accounts and the transfers between
//! them. Transfers are never edited; a hold is a pending transfer that is later posted (fully or
//! partly, the rest released), voided or expired.

use crate::ids::AccountId;
use crate::money::{MoneyError, Nanos};
use serde::{Deserialize, Serialize};

/// One side of a transfer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LedgerAccount {
    /// A customer's prepaid credits.
    Customer(AccountId),
    /// Where paid credits come from (the operator's sales).
    Purchases,
    /// Where free credits and coupons come from.
    Grants,
    /// Where charges go.
    Revenue,
    /// Where credits go when they expire unspent.
    Expired,
    /// The other side of operator adjustments: where a credit comes from, where a debit goes.
    Adjustments,
    /// Where refunded credits go (the money went back to the customer).
    Refunds,
    /// Where disputed credits go while the dispute holds them (and come back from if it is won).
    Disputes,
}

impl LedgerAccount {
    pub fn code(&self) -> String {
        match self {
            LedgerAccount::Customer(a) => format!("customer:{a}"),
            LedgerAccount::Purchases => "system:purchases".into(),
            LedgerAccount::Grants => "system:grants".into(),
            LedgerAccount::Revenue => "system:revenue".into(),
            LedgerAccount::Expired => "system:expired".into(),
            LedgerAccount::Adjustments => "system:adjustments".into(),
            LedgerAccount::Refunds => "system:refunds".into(),
            LedgerAccount::Disputes => "system:disputes".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferKind {
    /// Paid credits bought.
    Purchase,
    /// Free credits granted.
    Grant,
    /// A pending transfer reserving the estimated cost of a started request.
    Hold,
    /// A hold posted with the actual cost (the remainder released).
    Post,
    /// A hold voided: nothing charged (server error, cancel, free outcome).
    Void,
    /// A hold that timed out: nothing charged.
    Expire,
    /// A charge without a hold (usage events reported after the fact).
    Charge,
    /// Credits that reached their expiry date unspent.
    CreditExpiry,
    /// An operator's correction of a balance (a credit or a debit).
    Adjustment,
    /// Credits taken back because their payment was refunded.
    Refund,
    /// Credits taken back because their payment was disputed.
    Dispute,
    /// Disputed credits given back: the dispute was won.
    DisputeReversal,
}

impl TransferKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferKind::Purchase => "purchase",
            TransferKind::Grant => "grant",
            TransferKind::Hold => "hold",
            TransferKind::Post => "post",
            TransferKind::Void => "void",
            TransferKind::Expire => "expire",
            TransferKind::Charge => "charge",
            TransferKind::CreditExpiry => "credit_expiry",
            TransferKind::Adjustment => "adjustment",
            TransferKind::Refund => "refund",
            TransferKind::Dispute => "dispute",
            TransferKind::DisputeReversal => "dispute_reversal",
        }
    }
    /// Whether the transfer moves posted money (as opposed to reserving or releasing it).
    pub fn is_posted(self) -> bool {
        matches!(
            self,
            TransferKind::Purchase
                | TransferKind::Grant
                | TransferKind::Post
                | TransferKind::Charge
                | TransferKind::CreditExpiry
                | TransferKind::Adjustment
                | TransferKind::Refund
                | TransferKind::Dispute
                | TransferKind::DisputeReversal
        )
    }
}

/// One movement of money: `amount` leaves `debit` and arrives at `credit`. Pending kinds
/// (hold, void, expire) record reservations and their release; only posted kinds change
/// balances, and every posted transfer balances by construction (one amount, two sides).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub kind: TransferKind,
    pub debit: LedgerAccount,
    pub credit: LedgerAccount,
    pub amount: Nanos,
}

/// Why a hold cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HoldError {
    #[error("insufficient credits: {available} available, {required} required")]
    InsufficientCredits { available: Nanos, required: Nanos },
    #[error(transparent)]
    Money(#[from] MoneyError),
}

/// A customer's credit position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditAccount {
    pub id: AccountId,
    /// Credits bought or granted minus posted charges.
    pub balance: Nanos,
    /// Sum of open holds.
    pub held: Nanos,
    /// The lowest `balance - held` a hold may leave; `None` for invoice-billed accounts, which
    /// are never limited by credit and never locked.
    pub floor: Option<Nanos>,
    /// The account is locked while its balance is at or below this amount.
    pub lock_threshold: Nanos,
}

/// The result of settling a hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settlement {
    pub posted: Nanos,
    /// Held but not charged: returned to the available balance.
    pub released: Nanos,
}

impl CreditAccount {
    pub fn new_prepaid(id: AccountId) -> Self {
        CreditAccount {
            id,
            balance: Nanos::ZERO,
            held: Nanos::ZERO,
            floor: Some(Nanos::ZERO),
            lock_threshold: Nanos::ZERO,
        }
    }

    fn me(&self) -> LedgerAccount {
        LedgerAccount::Customer(self.id.clone())
    }

    /// `balance - held`: what new holds may use.
    pub fn available(&self) -> Nanos {
        Nanos(self.balance.0 - self.held.0)
    }

    /// Derived, never stored: a top-up unlocks in the same commit because there is no flag to
    /// forget to clear.
    pub fn is_locked(&self) -> bool {
        self.floor.is_some() && self.balance <= self.lock_threshold
    }

    /// Adds credits (paid or free).
    pub fn add_credits(&mut self, amount: Nanos, paid: bool) -> Result<Transfer, MoneyError> {
        self.balance = self.balance.checked_add(amount)?;
        Ok(Transfer {
            kind: if paid {
                TransferKind::Purchase
            } else {
                TransferKind::Grant
            },
            debit: if paid {
                LedgerAccount::Purchases
            } else {
                LedgerAccount::Grants
            },
            credit: self.me(),
            amount,
        })
    }

    /// Reserves `amount`. Fails, changing nothing, if it would leave the available balance
    /// below the floor.
    pub fn hold(&mut self, amount: Nanos) -> Result<Transfer, HoldError> {
        let after = self.available().checked_sub(amount)?;
        if let Some(floor) = self.floor {
            if after < floor {
                return Err(HoldError::InsufficientCredits {
                    available: self.available().checked_sub(floor)?.max(Nanos::ZERO),
                    required: amount,
                });
            }
        }
        self.held = self.held.checked_add(amount)?;
        Ok(Transfer {
            kind: TransferKind::Hold,
            debit: self.me(),
            credit: LedgerAccount::Revenue,
            amount,
        })
    }

    /// Posts a hold of `held` with the actual `cost`. The whole cost is charged: a hold is an
    /// estimate, and a cost above it is drawn from the available balance (the response reports
    /// it; the account locks if its balance is exhausted). The rest of the hold is released.
    pub fn settle(
        &mut self,
        held: Nanos,
        cost: Nanos,
    ) -> Result<(Settlement, Vec<Transfer>), MoneyError> {
        let held_after = self.held.checked_sub(held)?;
        let balance_after = self.balance.checked_sub(cost)?;
        self.held = held_after;
        self.balance = balance_after;
        let released = Nanos(held.0.saturating_sub(cost.0).max(0));
        let mut transfers = vec![Transfer {
            kind: TransferKind::Post,
            debit: self.me(),
            credit: LedgerAccount::Revenue,
            amount: cost,
        }];
        if released > Nanos::ZERO {
            transfers.push(Transfer {
                kind: TransferKind::Void,
                debit: self.me(),
                credit: LedgerAccount::Revenue,
                amount: released,
            });
        }
        Ok((
            Settlement {
                posted: cost,
                released,
            },
            transfers,
        ))
    }

    /// Releases a hold without charging (`kind` is `Void` or `Expire`).
    pub fn release(&mut self, held: Nanos, kind: TransferKind) -> Result<Transfer, MoneyError> {
        self.held = self.held.checked_sub(held)?;
        Ok(Transfer {
            kind,
            debit: self.me(),
            credit: LedgerAccount::Revenue,
            amount: held,
        })
    }

    /// Removes expiring credits, never below what open holds reserve: credits a running request
    /// holds are honoured, and what is left of them expires once the hold is settled.
    /// Returns the amount removed and its transfer (`None` when nothing can expire yet).
    pub fn expire_credits(&mut self, due: Nanos) -> Result<Option<Transfer>, MoneyError> {
        let free = self.balance.checked_sub(self.held)?.max(Nanos::ZERO);
        let amount = due.min(free);
        if amount <= Nanos::ZERO {
            return Ok(None);
        }
        self.balance = self.balance.checked_sub(amount)?;
        Ok(Some(Transfer {
            kind: TransferKind::CreditExpiry,
            debit: self.me(),
            credit: LedgerAccount::Expired,
            amount,
        }))
    }

    /// An operator's correction: `amount` (not zero) is added to the balance when positive,
    /// taken from it when negative, whatever is held (a correction may leave the balance
    /// negative: it is then owed). The transfer carries the amount without its sign, from
    /// [`LedgerAccount::Adjustments`] to the customer for a credit and the other way for a
    /// debit.
    pub fn adjust(&mut self, amount: Nanos) -> Result<Transfer, MoneyError> {
        self.balance = self.balance.checked_add(amount)?;
        let (debit, credit) = if amount.is_negative() {
            (self.me(), LedgerAccount::Adjustments)
        } else {
            (LedgerAccount::Adjustments, self.me())
        };
        Ok(Transfer {
            kind: TransferKind::Adjustment,
            debit,
            credit,
            amount: Nanos(amount.0.checked_abs().ok_or(MoneyError::Overflow)?),
        })
    }

    /// Takes back credits whose payment was refunded (`kind` [`TransferKind::Refund`], to
    /// [`LedgerAccount::Refunds`]) or disputed ([`TransferKind::Dispute`], to
    /// [`LedgerAccount::Disputes`]), whatever is held: the money left, so the credits go even if
    /// they were spent (the balance is then owed).
    pub fn take_back(&mut self, amount: Nanos, kind: TransferKind) -> Result<Transfer, MoneyError> {
        let credit = match kind {
            TransferKind::Refund => LedgerAccount::Refunds,
            TransferKind::Dispute => LedgerAccount::Disputes,
            _ => unreachable!("credits are taken back for a refund or a dispute"),
        };
        self.balance = self.balance.checked_sub(amount)?;
        Ok(Transfer {
            kind,
            debit: self.me(),
            credit,
            amount,
        })
    }

    /// Gives back credits a dispute took: it was won.
    pub fn give_back(&mut self, amount: Nanos) -> Result<Transfer, MoneyError> {
        self.balance = self.balance.checked_add(amount)?;
        Ok(Transfer {
            kind: TransferKind::DisputeReversal,
            debit: LedgerAccount::Disputes,
            credit: self.me(),
            amount,
        })
    }

    /// Charges without a hold (usage reported after the fact: the work is done, so it is
    /// billed in full).
    pub fn charge(&mut self, cost: Nanos) -> Result<Transfer, MoneyError> {
        self.balance = self.balance.checked_sub(cost)?;
        Ok(Transfer {
            kind: TransferKind::Charge,
            debit: self.me(),
            credit: LedgerAccount::Revenue,
            amount: cost,
        })
    }
}
