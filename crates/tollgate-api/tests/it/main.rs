//! tollgate-api's integration tests, in one binary with one harness ([`harness::TestApp`]: a
//! real server on a free port over a fresh database, reqwest as the client). Every test ends
//! by checking that the ledger reconciles.

mod harness;

mod fal;
mod focus;
mod invoice_lines;
mod invoices;
mod keys_admin;
mod limits;
mod schema;

mod adjustments;
mod billing_holes;
mod catalog;
mod catalog_preview;
mod lifecycle;
mod month_close;
mod observe;
mod openapi;
mod payments;
mod request_history;
mod serverless;
mod statements;
mod strict_input;
mod terms;
mod usage;
mod webhooks;
