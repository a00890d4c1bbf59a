//! The dashboard's integration tests: one binary, one harness (`common`).

mod common;
mod console;
mod signin;
