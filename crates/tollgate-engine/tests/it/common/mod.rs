//! What the engine's tests share: a one-endpoint catalog, its account and its usage events.

use tollgate_core::ids::{AccountId, EndpointId, RequestId};
use tollgate_core::machine::{Op, UsageEvent};
use tollgate_core::price::Output;
use tollgate_core::Timestamp;
use tollgate_engine::{AdminCmd, Engine};
use tollgate_store::BillingMode;

/// One text-to-speech endpoint, `test/tts`, billed per character, and one machine type.
pub const CATALOG: &str = r#"
prices_read_on = "2026-01-15"
effective_from = "2026-01-01T00:00:00Z"

[machines]
GPU-H100 = "0.000525"

[[endpoint]]
id = "test/tts"
name = "Speech"
category = "text-to-speech"
hold_units = "1"
price = { unit = "character", unit_price = "0.00005" }
"#;

pub fn account() -> AccountId {
    AccountId::parse("acme").unwrap()
}

/// Applies [`CATALOG`] and creates the account "acme".
pub async fn catalog_and_account(engine: &Engine, billing: BillingMode) {
    let doc = tollgate_core::catalog::document::parse(CATALOG).unwrap();
    engine
        .admin(AdminCmd::ApplyCatalog(Box::new(doc)))
        .await
        .unwrap();
    engine
        .admin(AdminCmd::CreateAccount {
            username: account(),
            billing,
        })
        .await
        .unwrap();
}

/// A usage event of "acme" for `thousands` thousand characters that happened at `at`.
pub fn event(id: &str, at: i64, thousands: i64) -> Op {
    Op::UsageEvent(UsageEvent {
        event_id: RequestId::parse(id).unwrap(),
        account: account(),
        endpoint: EndpointId::parse("test/tts").unwrap(),
        api_key: None,
        timestamp: Timestamp(at),
        status_code: 200,
        output: Output::default(),
        billable_units: Some((thousands * 1000).into()),
        queue_seconds: None,
        inference_seconds: None,
        machine_type: None,
        num_gpus: None,
    })
}
