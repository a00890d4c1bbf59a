//! The store's integration tests, in one binary (Cargo links one per file in `tests/`): one
//! module per behaviour.

mod account_cache;
mod catalog_settings;
mod gateway;
mod migrations;
mod payments;
mod read_plans;
mod recent_line_items;
mod serverless;
mod spending_limits;
mod wal;
mod webhooks;
