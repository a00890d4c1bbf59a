//! The webhook outbox, on every store at hand: a purchase's events are written in the
//! purchase's own commit, with a delivery to each webhook that wants them, and the engine tells
//! the dispatcher; a replayed or refused purchase writes none.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tollgate_core::events::{EventData, EventType};
use tollgate_core::ids::PurchaseId;
use tollgate_core::machine::{Op, Outcome, Rejection};
use tollgate_core::{Nanos, Timestamp};
use tollgate_engine::{AdminCmd, Engine};
use tollgate_store::testing::{backends, TestDb};
use tollgate_store::{
    BillingMode, DeliveriesQuery, DeliveryStatus, StoredEvent, WebhookEvents, WebhookRecord,
};

use crate::common::{account, catalog_and_account};

const T0: i64 = 1_780_272_000_000;

fn purchase(id: &str, usd: &str) -> Op {
    Op::Purchase {
        account: account(),
        purchase_id: PurchaseId::parse(id).unwrap(),
        amount: Nanos::parse_usd(usd).unwrap(),
        paid: true,
        expires_at: None,
    }
}

async fn events(engine: &Engine) -> Vec<StoredEvent> {
    engine.read(|r| r.webhook_events(0, 100)).await.unwrap()
}

/// Whether the engine told of events since it was last asked (without waiting: a notice is
/// kept until someone asks).
async fn told(engine: &Engine) -> bool {
    tokio::time::timeout(Duration::ZERO, engine.events_written())
        .await
        .is_ok()
}

#[tokio::test]
async fn a_purchases_events_are_written_in_its_commit_and_a_replayed_or_refused_one_writes_none() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let clock = Arc::new(AtomicI64::new(T0));
        let now = clock.clone();
        let engine = Engine::start(
            db.open().unwrap(),
            Arc::new(move || Timestamp(now.load(Ordering::SeqCst))),
        )
        .unwrap();
        catalog_and_account(&engine, BillingMode::Prepaid).await;
        engine
            .admin(AdminCmd::CreateWebhook(WebhookRecord {
                webhook_id: "wh_1".into(),
                url: "http://127.0.0.1:9/hook".into(),
                events: WebhookEvents::Only(vec![EventType::PurchaseSucceeded]),
                description: None,
                secret: "whsec_1".into(),
                created_at: Timestamp(T0),
                deleted_at: None,
            }))
            .await
            .unwrap();
        assert!(events(&engine).await.is_empty(), "{backend:?}");
        assert!(!told(&engine).await, "nothing written yet");

        let answer = engine.execute(purchase("p-1", "25.00")).await.unwrap();
        assert!(matches!(
            answer,
            Ok(Outcome::Purchased {
                replayed: false,
                ..
            })
        ));
        let written = events(&engine).await;
        let types: Vec<EventType> = written.iter().map(|e| e.data.event_type()).collect();
        assert!(
            types.contains(&EventType::PurchaseSucceeded)
                && types.contains(&EventType::InvoiceIssued),
            "{backend:?}: {types:?}"
        );
        assert!(written
            .iter()
            .all(|e| e.account == account() && e.created_at == Timestamp(T0)));
        let bought = written
            .iter()
            .find_map(|e| match &e.data {
                EventData::PurchaseSucceeded {
                    purchase_id,
                    amount_nano_usd,
                    ..
                } => Some((purchase_id.to_string(), *amount_nano_usd)),
                _ => None,
            })
            .unwrap();
        assert_eq!(bought, ("p-1".to_string(), Nanos(25_000_000_000)));
        let number = written.iter().find_map(|e| match &e.data {
            EventData::InvoiceIssued {
                number, invoice_id, ..
            } => Some((number.clone(), invoice_id.clone())),
            _ => None,
        });
        let invoices = crate::common::invoices(&engine).await;
        assert_eq!(
            number,
            Some((invoices[0].number(), invoices[0].invoice_id())),
            "the event names the invoice the store numbered"
        );
        assert!(told(&engine).await, "the dispatcher is told");
        // The webhook gets the purchase's event only, due at once.
        let deliveries = engine
            .read(|r| {
                r.webhook_deliveries(&DeliveriesQuery {
                    webhook_id: "wh_1".into(),
                    before_seq: None,
                    limit: 10,
                })
            })
            .await
            .unwrap();
        assert_eq!(deliveries.len(), 1, "{backend:?}: {deliveries:?}");
        assert_eq!(deliveries[0].event_type, EventType::PurchaseSucceeded);
        assert_eq!(deliveries[0].status, DeliveryStatus::Pending);
        assert_eq!(deliveries[0].next_attempt_at, Some(Timestamp(T0)));

        // Replayed: the first answer, and nothing written.
        clock.store(T0 + 1_000, Ordering::SeqCst);
        let again = engine.execute(purchase("p-1", "25.00")).await.unwrap();
        assert!(matches!(
            again,
            Ok(Outcome::Purchased { replayed: true, .. })
        ));
        // Refused: the same id with another amount, and an amount of zero.
        let conflict = engine.execute(purchase("p-1", "30.00")).await.unwrap();
        assert!(
            matches!(conflict, Err(Rejection::Conflict(_))),
            "{conflict:?}"
        );
        let zero = engine.execute(purchase("p-2", "0")).await.unwrap();
        assert!(matches!(zero, Err(Rejection::Invalid { .. })), "{zero:?}");
        assert_eq!(events(&engine).await, written, "{backend:?}");
        assert!(!told(&engine).await, "no events, no notice");
        engine.shutdown().await.unwrap();
    }
}
