//! What tests of tollgate's edge share (feature `testing`, for tests only): [`stripe`], a
//! local stand-in of the payment provider's API and a sender of its signed events.

pub mod stripe;
