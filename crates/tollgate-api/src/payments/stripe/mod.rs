//! Stripe's side: the signature of its webhook events ([`signature`]), a small client of its
//! API over the server's `reqwest` ([`client`]), and its events translated into what the core
//! applies ([`events`]).

pub mod client;
pub mod events;
pub mod signature;
