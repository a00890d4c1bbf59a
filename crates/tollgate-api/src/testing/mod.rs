//! What tests of tollgate's edge and of the dashboard share (feature `testing`, for tests
//! only): [`stripe`], a local stand-in of the payment provider's API and a sender of its signed
//! events; [`receiver`], a webhook receiver that records what it gets and answers as scripted;
//! [`python`], the interpreter of the tests' Python tools.

pub mod python;
pub mod receiver;
pub mod stripe;
