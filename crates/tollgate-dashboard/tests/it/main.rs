//! The dashboard's integration tests: one binary, one harness (`common`).

mod accessibility;
mod billing;
mod common;
mod console;
mod keys;
mod overview;
mod requests;
mod signin;
mod usage;
