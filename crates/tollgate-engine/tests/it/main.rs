//! The engine's integration tests, in one binary (Cargo links one per file in `tests/`): one
//! module per behaviour, and `common`, what they share.

mod account_terms;
mod common;
mod deferred_sync;
mod engine_props;
mod gateway;
mod idle;
mod invoices;
mod metrics;
mod payments;
mod rollup_folding;
mod serverless;
mod shared_database;
mod shutdown;
mod spending_limits;
mod usage_invoices;
mod web_sessions;
mod webhook_outbox;
