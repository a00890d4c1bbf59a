//! An account's spending limits as a reader sees them now: each with its current period's
//! spend (rolled to the reader's clock, so a period that has passed reads nothing spent).

use crate::QueryError;
use tollgate_core::ids::AccountId;
use tollgate_core::limits::LimitState;
use tollgate_core::machine::AccountState;
use tollgate_core::Timestamp;
use tollgate_engine::Engine;

/// The account's limits in creation order, in the period of now.
pub async fn list(engine: &Engine, username: &AccountId) -> Result<Vec<LimitState>, QueryError> {
    let row = crate::account(engine, username).await?;
    Ok(rolled(&row.state, engine.now()))
}

/// The limits of an account already read, in the period of `now` (for a page that reads the
/// account for more than its limits).
pub fn rolled(account: &AccountState, now: Timestamp) -> Vec<LimitState> {
    account.limits.iter().map(|l| l.at(now)).collect()
}
