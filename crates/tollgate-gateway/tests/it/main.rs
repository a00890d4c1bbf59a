//! The gateway crate's one integration-test binary: a tollgate in gateway mode in front of a
//! stand-in model server (`harness`), over real HTTP.

mod direct;
mod harness;
mod queue;
