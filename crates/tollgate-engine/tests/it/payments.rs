//! Payments on the write path, on every store at hand: the payment provider's subscription
//! row is created once and stays out of the operator's hands; the deployment's top-up
//! settings are checked before they apply.

use std::sync::Arc;
use tollgate_core::payments::TopUpSettings;
use tollgate_core::{Nanos, Timestamp};
use tollgate_engine::{AdminCmd, AdminReply, Engine, EngineError};
use tollgate_store::testing::{backends, TestDb};
use tollgate_store::{WebhookEvents, WebhookRecord, PROVIDER_WEBHOOK_ID};

const T0: i64 = 1_780_272_000_000;

fn engine(db: &TestDb) -> Engine {
    Engine::start(db.open().unwrap(), Arc::new(|| Timestamp(T0))).unwrap()
}

#[tokio::test]
async fn the_provider_webhook_is_created_once_and_is_not_the_operators() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let engine = engine(&db);
        assert!(
            engine.ensure_provider_webhook().await.unwrap(),
            "{backend:?}"
        );
        assert!(!engine.ensure_provider_webhook().await.unwrap(), "once");
        engine
            .admin(AdminCmd::CreateWebhook(WebhookRecord {
                webhook_id: "wh_ops".into(),
                url: "http://127.0.0.1:9/ops".into(),
                events: WebhookEvents::All,
                description: None,
                secret: "whsec_ops".into(),
                created_at: Timestamp(T0),
                deleted_at: None,
            }))
            .await
            .unwrap();
        let listed: Vec<String> = engine
            .read(|r| r.webhooks())
            .await
            .unwrap()
            .into_iter()
            .map(|w| w.webhook_id)
            .collect();
        assert_eq!(listed, ["wh_ops"], "{backend:?}");
        let deleted = engine
            .admin(AdminCmd::DeleteWebhook {
                webhook_id: PROVIDER_WEBHOOK_ID.into(),
            })
            .await
            .unwrap();
        assert_eq!(deleted, AdminReply::Found(false), "{backend:?}");
        // Still there: created again it is not.
        assert!(!engine.ensure_provider_webhook().await.unwrap());
        engine.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn top_up_settings_are_checked_before_they_apply() {
    let db = TestDb::new(&tollgate_store::testing::Backend::Sqlite);
    let engine = engine(&db);
    assert_eq!(engine.top_up_settings(), TopUpSettings::default());
    let usd = |n: i64| Nanos(n * 1_000_000_000);
    let mine = TopUpSettings {
        min: usd(10),
        max: usd(500),
        retry_after_ms: 60_000,
    };
    engine.set_top_up_settings(mine).unwrap();
    for bad in [
        TopUpSettings {
            min: usd(0),
            ..mine
        },
        TopUpSettings {
            min: usd(600),
            ..mine
        },
        TopUpSettings {
            retry_after_ms: -1,
            ..mine
        },
    ] {
        assert!(matches!(
            engine.set_top_up_settings(bad),
            Err(EngineError::Invalid(_))
        ));
    }
    assert_eq!(
        engine.top_up_settings(),
        mine,
        "a refused change changes nothing"
    );
    engine.shutdown().await.unwrap();
}
