//! tollgate's pure billing core: money, identifiers, price rules and rating, discounts, the
//! outcome policy, the double-entry ledger, concurrency tiers, the catalog, account terms,
//! spending limits, and the request state machine that applies one operation at a time to a batch's state.
//!
//! Architecture invariant: nothing here does I/O, reads a clock, spawns, or uses floats.
//! Callers pass `now`; the engine loads what a batch needs and persists what it returns.

pub mod catalog;
pub mod concurrency;
pub mod decimal;
pub mod events;
pub mod gateway;
pub mod ids;
pub mod ledger;
pub mod limits;
pub mod machine;
pub mod money;
pub mod payments;
pub mod policy;
pub mod price;
pub mod pricing;
pub mod quote;
pub mod rollup;
pub mod serverless;
pub mod statement;
pub mod terms;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;

pub use money::Nanos;
pub use time::Timestamp;
