//! The dashboard's integration tests: one binary, one harness (`common`); `demo` (the demo
//! history generator, and the overview's figures over its history) is self-contained.

mod accessibility;
mod billing;
mod common;
mod console;
mod demo;
mod keys;
mod limits;
mod overview;
mod payments;
mod requests;
mod serverless;
mod signin;
mod usage;
mod webhooks;
