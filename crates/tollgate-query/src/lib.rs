//! The customer-facing reads, as typed answers: usage and billing events, request history,
//! analytics, the catalog's models, an account's prices and cost estimates, and its keys.
//!
//! Each read takes a query of domain types (parsed by whoever asks: the HTTP edge, a page of
//! the dashboard), reads the store through [`Engine::read`], and assembles the answer with the
//! rules fal's Platform API documents: time ranges and buckets in the caller's time zone
//! ([`timeframe`]), grouping of usage rows, keyset paging with opaque cursors ([`Cursor`]).
//! Nothing here renders JSON or knows HTTP; nothing here decides a price (the core does,
//! [`tollgate_core::quote`]).
//!
//! Architecture invariant: a read never writes and never scans line items for totals: usage,
//! analytics and estimates come from the rollups the write path keeps, so every figure a
//! customer sees is a sum of the same integers as the ledger's.

pub mod accounts;
pub mod analytics;
pub mod catalog;
mod cursor;
pub mod focus;
pub mod invoices;
pub mod keys;
pub mod limits;
pub mod month;
pub mod payments;
pub mod prices;
pub mod requests;
pub mod serverless;
pub mod statements;
pub mod timeframe;
pub mod usage;
pub mod webhooks;

pub use cursor::{Cursor, Page};

use tollgate_core::ids::{AccountId, EndpointId};
use tollgate_engine::{Engine, EngineError};
use tollgate_store::AccountRow;

/// Why a read has no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("account {0} not found")]
    UnknownAccount(AccountId),
    /// Endpoints the catalog does not have, in the order asked.
    #[error("unknown endpoint_id: {}", .0.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(", "))]
    UnknownEndpoints(Vec<EndpointId>),
    #[error("{0} has no price in force")]
    NoPrice(EndpointId),
    /// The figure for this endpoint does not fit the exact range (a quantity too large).
    #[error("the estimate for {0} overflows")]
    Overflow(EndpointId),
    /// A cursor that this read did not write.
    #[error("cursor is malformed: pass the next_cursor of a previous response unchanged")]
    BadCursor,
    /// A parameter that names no answerable report (a month, a range), naming it.
    #[error(transparent)]
    Invalid(#[from] timeframe::RangeError),
    /// Stored totals that do not add up within the exact range.
    #[error("stored totals out of range: {0}")]
    OutOfRange(String),
}

/// An account as a read sees it now.
pub async fn account(engine: &Engine, username: &AccountId) -> Result<AccountRow, QueryError> {
    let id = username.clone();
    let now = engine.now();
    engine
        .read(move |r| r.account(&id, now))
        .await?
        .ok_or_else(|| QueryError::UnknownAccount(username.clone()))
}
