//! Time as plain values: the core never reads a clock, callers pass `now`.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn plus_ms(self, ms: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }
    pub fn minus_ms(self, ms: i64) -> Timestamp {
        Timestamp(self.0.saturating_sub(ms))
    }
    /// Milliseconds from `earlier` to `self`, never negative.
    pub fn ms_since(self, earlier: Timestamp) -> i64 {
        (self.0 - earlier.0).max(0)
    }
}

pub const MS_PER_DAY: i64 = 86_400_000;
