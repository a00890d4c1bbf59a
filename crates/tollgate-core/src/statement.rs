//! A batch's balance movements as statements and credit activity read them: per account and
//! UTC day of the ledger's time (the transfers' `at`, the batch's `now`), the signed sum of each
//! kind of movement and the balance the batch left (and the same per UTC month, where a
//! statement finds its opening balance); the individual movements other than usage
//! (purchases, grants, expiries, adjustments: few), each with its reference; and the day's
//! usage per endpoint and unit, so a statement's breakdown adds up to its usage exactly.
//!
//! Amounts are signed as they move the balance: credits positive, usage, expiries and debits
//! negative. The store adds a batch's days to the rows already there and keeps the closing
//! balance the last batch of the day left (batches of one account commit in order).

use crate::ids::{AccountId, EndpointId};
use crate::ledger::{LedgerAccount, TransferKind};
use crate::machine::BatchState;
use crate::money::{MoneyError, Nanos};
use crate::time::{day_start, month_start, Timestamp, MS_PER_DAY};
use rust_decimal::Decimal;
use std::collections::BTreeMap;

/// What moved a balance, as credit activity names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MovementKind {
    Purchase,
    Grant,
    Usage,
    Expiry,
    Refund,
    Dispute,
    Adjustment,
}

impl MovementKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MovementKind::Purchase => "purchase",
            MovementKind::Grant => "grant",
            MovementKind::Usage => "usage",
            MovementKind::Expiry => "expiry",
            MovementKind::Refund => "refund",
            MovementKind::Dispute => "dispute",
            MovementKind::Adjustment => "adjustment",
        }
    }

    pub fn parse(s: &str) -> Option<MovementKind> {
        Some(match s {
            "purchase" => MovementKind::Purchase,
            "grant" => MovementKind::Grant,
            "usage" => MovementKind::Usage,
            "expiry" => MovementKind::Expiry,
            "refund" => MovementKind::Refund,
            "dispute" => MovementKind::Dispute,
            "adjustment" => MovementKind::Adjustment,
            _ => return None,
        })
    }
}

/// The UTC date `YYYY-MM-DD` of `at` (a day's usage row's reference).
pub fn day_label(at: Timestamp) -> String {
    chrono::DateTime::from_timestamp_millis(at.0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// The instant a day's usage is dated: the day's last millisecond, so it sorts after every
/// other movement of that day and before the next day's.
pub fn end_of_day(day: Timestamp) -> Timestamp {
    Timestamp(day.0 + MS_PER_DAY - 1)
}

/// The signed sums of a day's movements, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Movements {
    pub purchases: Nanos,
    pub grants: Nanos,
    pub usage: Nanos,
    pub expired: Nanos,
    pub refunds: Nanos,
    pub disputes: Nanos,
    pub adjustments: Nanos,
}

impl Movements {
    /// Their sum: what they moved the balance by.
    pub fn net(&self) -> Result<Nanos, MoneyError> {
        [
            self.purchases,
            self.grants,
            self.usage,
            self.expired,
            self.refunds,
            self.disputes,
            self.adjustments,
        ]
        .into_iter()
        .try_fold(Nanos::ZERO, Nanos::checked_add)
    }

    pub fn add(&mut self, other: &Movements) -> Result<(), MoneyError> {
        self.purchases = self.purchases.checked_add(other.purchases)?;
        self.grants = self.grants.checked_add(other.grants)?;
        self.usage = self.usage.checked_add(other.usage)?;
        self.expired = self.expired.checked_add(other.expired)?;
        self.refunds = self.refunds.checked_add(other.refunds)?;
        self.disputes = self.disputes.checked_add(other.disputes)?;
        self.adjustments = self.adjustments.checked_add(other.adjustments)?;
        Ok(())
    }

    fn slot(&mut self, kind: MovementKind) -> &mut Nanos {
        match kind {
            MovementKind::Purchase => &mut self.purchases,
            MovementKind::Grant => &mut self.grants,
            MovementKind::Usage => &mut self.usage,
            MovementKind::Expiry => &mut self.expired,
            MovementKind::Refund => &mut self.refunds,
            MovementKind::Dispute => &mut self.disputes,
            MovementKind::Adjustment => &mut self.adjustments,
        }
    }
}

/// A batch's movements of one account on one day, and the balance it left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DayDelta {
    pub account: AccountId,
    pub day: Timestamp,
    pub moved: Movements,
    pub closing: Nanos,
}

/// One movement other than usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Movement {
    pub account: AccountId,
    pub at: Timestamp,
    pub kind: MovementKind,
    /// Signed: positive when it added to the balance.
    pub amount: Nanos,
    /// The purchase id (purchase, grant, the lot that expired) or the adjustment id.
    pub reference: String,
}

/// A batch's usage of one account, day, endpoint and unit (`cost` positive, as charged).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UsageKey {
    pub account: AccountId,
    pub day: Timestamp,
    pub endpoint: EndpointId,
    pub unit: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageSum {
    pub quantity: Decimal,
    pub requests: u64,
    pub cost: Nanos,
}

/// What a batch adds to the statement tables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Daily {
    pub days: Vec<DayDelta>,
    /// The same movements per account and UTC month (`day` is the month's start, see
    /// [`month_start`]), with the balance the batch left: a statement's opening balance is the
    /// closing of the account's last month before it.
    pub months: Vec<DayDelta>,
    /// In the batch's order.
    pub movements: Vec<Movement>,
    pub usage: BTreeMap<UsageKey, UsageSum>,
}

impl Daily {
    pub fn is_empty(&self) -> bool {
        self.days.is_empty()
    }
}

/// The customer account a posted transfer moves, the kind of movement and its signed amount;
/// `None` for transfers that only reserve or release (holds).
fn classify(
    kind: TransferKind,
    debit: &LedgerAccount,
    credit: &LedgerAccount,
    amount: Nanos,
) -> Option<(AccountId, MovementKind, Nanos)> {
    let (credited, debited) = match (credit, debit) {
        (LedgerAccount::Customer(a), _) => (Some(a), None),
        (_, LedgerAccount::Customer(a)) => (None, Some(a)),
        _ => (None, None),
    };
    let movement = match kind {
        TransferKind::Purchase => MovementKind::Purchase,
        TransferKind::Grant => MovementKind::Grant,
        TransferKind::Post | TransferKind::Charge => MovementKind::Usage,
        TransferKind::CreditExpiry => MovementKind::Expiry,
        TransferKind::Adjustment => MovementKind::Adjustment,
        TransferKind::Refund => MovementKind::Refund,
        TransferKind::Dispute | TransferKind::DisputeReversal => MovementKind::Dispute,
        TransferKind::Hold | TransferKind::Void | TransferKind::Expire => return None,
    };
    match (credited, debited) {
        (Some(a), _) => Some((a.clone(), movement, amount)),
        (_, Some(a)) => Some((a.clone(), movement, Nanos(-amount.0))),
        _ => None,
    }
}

/// A batch's movements, folded by account and day (see the module's documentation). Every
/// adjustment transfer is its operation's one transfer, recorded with its adjustment, so the
/// batch's adjustment transfers and `new_adjustments` pair in order.
pub fn daily(s: &BatchState) -> Result<Daily, MoneyError> {
    let mut days: BTreeMap<(AccountId, Timestamp), Movements> = BTreeMap::new();
    let mut movements = Vec::new();
    let mut adjustments = s.new_adjustments.iter();
    for t in &s.transfers {
        let x = &t.transfer;
        let Some((account, kind, amount)) = classify(x.kind, &x.debit, &x.credit, x.amount) else {
            continue;
        };
        let day = day_start(t.at);
        let slot = days.entry((account.clone(), day)).or_default().slot(kind);
        *slot = slot.checked_add(amount)?;
        let reference = match kind {
            MovementKind::Usage => continue,
            MovementKind::Adjustment => adjustments
                .next()
                .map(|a| a.adjustment_id.as_str().to_string())
                .unwrap_or_default(),
            _ => t
                .purchase_id
                .as_ref()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default(),
        };
        movements.push(Movement {
            account,
            at: t.at,
            kind,
            amount,
            reference,
        });
    }
    // A line item's charge is posted by the batch, at its `now` (a usage event's line item is
    // dated by the event, its charge by the batch that recorded it).
    let mut usage: BTreeMap<UsageKey, UsageSum> = BTreeMap::new();
    for li in &s.line_items {
        let key = UsageKey {
            account: li.account.clone(),
            day: day_start(s.now),
            endpoint: li.endpoint.clone(),
            unit: li.unit.clone(),
        };
        let sum = usage.entry(key).or_default();
        sum.quantity = sum
            .quantity
            .checked_add(li.charge.quantity)
            .ok_or(MoneyError::Overflow)?;
        sum.requests += 1;
        sum.cost = sum.cost.checked_add(li.charge.total_nanos)?;
    }
    let mut months: BTreeMap<(AccountId, Timestamp), Movements> = BTreeMap::new();
    for ((account, day), moved) in &days {
        months
            .entry((account.clone(), month_start(*day)))
            .or_default()
            .add(moved)?;
    }
    let closing_of = |account: &AccountId| {
        s.accounts
            .get(account)
            .map_or(Nanos::ZERO, |a| a.credit.balance)
    };
    let deltas = |rows: BTreeMap<(AccountId, Timestamp), Movements>| -> Vec<DayDelta> {
        rows.into_iter()
            .map(|((account, day), moved)| DayDelta {
                closing: closing_of(&account),
                account,
                day,
                moved,
            })
            .collect()
    };
    Ok(Daily {
        days: deltas(days),
        months: deltas(months),
        movements,
        usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::{next_month_start, previous_month_start};

    #[test]
    fn days_start_at_midnight_utc_and_usage_is_dated_their_last_millisecond() {
        let d = Timestamp(1_780_272_000_000); // 2026-06-01T00:00:00Z
        assert_eq!(day_start(d), d);
        assert_eq!(day_start(d.plus_ms(MS_PER_DAY - 1)), d);
        assert_eq!(day_start(d.plus_ms(MS_PER_DAY)), d.plus_ms(MS_PER_DAY));
        assert_eq!(day_start(Timestamp(-1)), Timestamp(-MS_PER_DAY));
        assert_eq!(end_of_day(d), d.plus_ms(MS_PER_DAY - 1));
        // Months: 2026-06-01, its last millisecond, the months around it, across a year.
        assert_eq!(month_start(d), d);
        assert_eq!(month_start(d.plus_ms(30 * MS_PER_DAY - 1)), d);
        let july = d.plus_ms(30 * MS_PER_DAY);
        assert_eq!(month_start(july), july);
        assert_eq!(next_month_start(d), july);
        assert_eq!(previous_month_start(july), d);
        let may = Timestamp(1_777_593_600_000); // 2026-05-01T00:00:00Z
        assert_eq!(previous_month_start(d.plus_ms(17 * MS_PER_DAY)), may);
        let jan_2027 = Timestamp(1_798_761_600_000);
        let dec_2026 = Timestamp(1_796_083_200_000);
        assert_eq!(next_month_start(dec_2026), jan_2027);
        assert_eq!(previous_month_start(jan_2027), dec_2026);
        for k in [
            MovementKind::Purchase,
            MovementKind::Grant,
            MovementKind::Usage,
            MovementKind::Expiry,
            MovementKind::Refund,
            MovementKind::Dispute,
            MovementKind::Adjustment,
        ] {
            assert_eq!(MovementKind::parse(k.as_str()), Some(k));
        }
    }
}
