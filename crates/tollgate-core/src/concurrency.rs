//! Concurrency tiers: the number of requests an account may have in progress grows with its
//! paid purchases in the trailing 28 days.

use crate::money::Nanos;
use crate::time::MS_PER_DAY;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Paid purchases count toward the tier for this long.
pub const TIER_WINDOW_MS: i64 = 28 * MS_PER_DAY;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyTier {
    /// Paid purchases in the trailing 28 days, in USD, from which this limit applies.
    #[serde(deserialize_with = "crate::decimal::de_text")]
    pub paid_28d_usd: Decimal,
    pub limit: u32,
}

/// The published table. Rows are kept sorted by `paid_28d_usd`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConcurrencyTable(Vec<ConcurrencyTier>);

impl Default for ConcurrencyTable {
    /// tollgate's published default: 2 for new accounts, up to 40 self-serve.
    fn default() -> Self {
        let row = |usd: i64, limit| ConcurrencyTier {
            paid_28d_usd: Decimal::from(usd),
            limit,
        };
        ConcurrencyTable(vec![
            row(0, 2),
            row(10, 4),
            row(50, 8),
            row(100, 12),
            row(250, 20),
            row(500, 30),
            row(1000, 40),
        ])
    }
}

impl ConcurrencyTable {
    /// Builds a table; rows must start at 0 USD with strictly increasing thresholds and
    /// non-decreasing limits of at least 1.
    pub fn new(mut rows: Vec<ConcurrencyTier>) -> Result<Self, String> {
        rows.sort_by_key(|r| r.paid_28d_usd);
        match rows.first() {
            None => return Err("the table needs at least one row".into()),
            Some(r) if !r.paid_28d_usd.is_zero() => {
                return Err("the first row must start at paid_28d_usd = 0".into())
            }
            _ => {}
        }
        for w in rows.windows(2) {
            if w[0].paid_28d_usd == w[1].paid_28d_usd {
                return Err(format!("two rows start at {} USD", w[0].paid_28d_usd));
            }
            if w[1].limit < w[0].limit {
                return Err("limits must not decrease as purchases grow".into());
            }
        }
        if rows.iter().any(|r| r.limit == 0) {
            return Err("a limit must be at least 1".into());
        }
        Ok(ConcurrencyTable(rows))
    }

    pub fn rows(&self) -> &[ConcurrencyTier] {
        &self.0
    }

    pub fn limit_for(&self, paid_28d: Nanos) -> u32 {
        let usd = paid_28d.to_usd();
        self.0
            .iter()
            .rev()
            .find(|r| usd >= r.paid_28d_usd)
            .map(|r| r.limit)
            .unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_table_rises_from_2_to_40() {
        let t = ConcurrencyTable::default();
        let usd = |s: &str| Nanos::parse_usd(s).unwrap();
        assert_eq!(t.limit_for(Nanos::ZERO), 2);
        assert_eq!(t.limit_for(usd("9.999999999")), 2);
        assert_eq!(t.limit_for(usd("10")), 4);
        assert_eq!(t.limit_for(usd("120")), 12);
        assert_eq!(t.limit_for(usd("1000")), 40);
        assert_eq!(t.limit_for(usd("50000")), 40);
    }

    #[test]
    fn tables_are_validated() {
        let row = |usd: i64, limit| ConcurrencyTier {
            paid_28d_usd: Decimal::from(usd),
            limit,
        };
        assert!(ConcurrencyTable::new(vec![row(5, 2)]).is_err());
        assert!(ConcurrencyTable::new(vec![row(0, 4), row(10, 2)]).is_err());
        assert!(ConcurrencyTable::new(vec![row(0, 0)]).is_err());
        assert_eq!(
            ConcurrencyTable::new(vec![row(100, 9), row(0, 3)])
                .unwrap()
                .limit_for(Nanos(100_000_000_000)),
            9
        );
    }
}
