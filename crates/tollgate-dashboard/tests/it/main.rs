//! The dashboard's integration tests: one binary, one harness (`common`).

mod common;
mod requests;
mod signin;
mod usage;
