//! The core's integration tests, in one test binary (one link, one run): the sample catalog as
//! a rate card, and the property tests of rating and of the ledger's state machine.

mod ledger_props;
mod price_props;
mod rate_card;
