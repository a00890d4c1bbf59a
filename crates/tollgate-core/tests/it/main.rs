//! The core's integration tests, in one test binary (one link, one run): the sample catalog as
//! a rate card, and the property tests of rating, of the ledger's state machine, of spending
//! limits, of payments and of serverless runner billing.

mod gateway;
mod ledger_props;
mod limits_props;
mod payments_props;
mod price_props;
mod rate_card;
mod serverless_props;
