//! An account's spending limits as a reader sees them now: each with its current period's
//! spend (rolled to the reader's clock, so a period that has passed reads nothing spent).

use crate::QueryError;
use tollgate_core::ids::AccountId;
use tollgate_core::limits::LimitState;
use tollgate_engine::Engine;

/// The account's limits in creation order, in the period of now.
pub async fn list(engine: &Engine, username: &AccountId) -> Result<Vec<LimitState>, QueryError> {
    let row = crate::account(engine, username).await?;
    let now = engine.now();
    Ok(row.state.limits.iter().map(|l| l.at(now)).collect())
}
