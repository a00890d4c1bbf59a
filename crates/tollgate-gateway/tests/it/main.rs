//! The gateway crate's one integration-test binary: a tollgate in gateway mode in front of a
//! stand-in model server (`harness`), over real HTTP (and HTTPS, for fal's own client).

mod direct;
mod fal_client;
mod harness;
mod platform;
mod queue;
