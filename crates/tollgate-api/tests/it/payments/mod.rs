//! Payments over HTTP against a local stand-in of the payment provider
//! (`tollgate_api::testing::stripe`): the payment history ([`history`]), checkout top-ups and
//! the provider's signed events ([`checkout`]), automatic top-ups charged through the outbox
//! ([`auto`]), refunds and disputes in every order ([`refunds`]), and signatures made by the
//! provider's own library ([`signatures`]).

mod auto;
mod checkout;
mod history;
mod refunds;
mod signatures;

use crate::harness::{int, Body, Resp, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use tollgate_api::payments::PaymentSettings;
use tollgate_api::testing::stripe::{EventSender, StripeStandIn};
use tollgate_api::webhooks::WebhookSettings;
use tollgate_store::testing::Backend;

/// 2026-06-01T00:00:00Z.
pub const T0: i64 = 1_780_272_000_000;
pub const MINUTE: i64 = 60_000;
pub const HOUR: i64 = 3_600_000;
pub const DAY: i64 = 86_400_000;

/// A tollgate with a payment provider (the stand-in), on a manual clock.
pub struct Pay {
    pub app: TestApp,
    pub stripe: StripeStandIn,
    pub events: EventSender,
}

impl Pay {
    /// A tollgate at [`T0`] on `backend`, talking to a new stand-in.
    pub async fn start(backend: &Backend) -> Pay {
        Self::start_with(backend, |s| s).await
    }

    /// As [`Pay::start`], with the payment settings changed by `change`.
    pub async fn start_with(
        backend: &Backend,
        change: impl FnOnce(PaymentSettings) -> PaymentSettings,
    ) -> Pay {
        let stripe = StripeStandIn::start().await;
        let settings = WebhookSettings {
            retry_base: std::time::Duration::from_secs(10),
            ..WebhookSettings::default()
        };
        let app =
            TestApp::spawn_with_payments(backend, Some(T0), change(stripe.settings()), settings)
                .await;
        let events = EventSender::new(&app.address);
        Pay {
            app,
            stripe,
            events,
        }
    }

    /// This tollgate's payments installation id (drawn at its first start, in its database).
    pub fn installation(&self) -> String {
        self.app
            .payments
            .as_ref()
            .expect("payments")
            .settings
            .installation
            .clone()
    }

    /// The idempotency key `tollgate-<installation>-<rest>`.
    pub fn key(&self, rest: &str) -> String {
        format!("tollgate-{}-{rest}", self.installation())
    }

    /// A new account without credits (locked), and its ADMIN key.
    pub async fn account(&self, username: &str) -> String {
        self.app.create_account(username).await.expect(201);
        self.app.create_key(username, "ADMIN").await
    }

    /// A customer call with the key.
    pub async fn call(&self, key: &str, method: Method, path: &str, body: Option<Value>) -> Resp {
        let body = body.map_or(Body::None, Body::Json);
        self.app.raw(method, path, Some(key), body).await
    }

    /// `POST /v1/account/top-ups`.
    pub async fn top_up(&self, key: &str, amount: &str, save: bool) -> Resp {
        self.call(
            key,
            Method::POST,
            "/v1/account/top-ups",
            Some(
                json!({"amount_usd": amount, "success_url": "https://app.example.com/done",
                "cancel_url": "https://app.example.com/billing", "save_payment_method": save}),
            ),
        )
        .await
    }

    /// Signs `event` at the engine's clock and POSTs it to the webhook: the status and body.
    pub async fn send(&self, event: &Value) -> (u16, Value) {
        self.events
            .send_at(event, self.app.now_ms().div_euclid(1000))
            .await
    }

    /// Sends `event` and asserts it was answered 200 with `result`.
    pub async fn expect(&self, event: &Value, result: &str) {
        let (status, body) = self.send(event).await;
        assert_eq!(
            (status, body["result"].as_str()),
            (200, Some(result)),
            "{} {body}",
            event["type"]
        );
    }

    /// A checkout top-up of `amount` USD created and paid at the provider, and its events sent
    /// (`checkout.session.completed`, then `payment_intent.succeeded`): the top-up's id and its
    /// payment's id.
    pub async fn paid_top_up(&self, key: &str, amount: &str, save: bool) -> (String, String) {
        let t = self.top_up(key, amount, save).await;
        let t = t.expect(201).clone();
        let (session, pi) = self.stripe.pay_checkout(&session_id(&t));
        self.expect(
            &self.stripe.event("checkout.session.completed", session),
            "applied",
        )
        .await;
        self.expect(
            &self.stripe.event("payment_intent.succeeded", pi.clone()),
            "applied",
        )
        .await;
        (
            t["top_up_id"].as_str().unwrap().to_string(),
            pi["id"].as_str().unwrap().to_string(),
        )
    }

    /// The account's balance.
    pub async fn balance(&self, username: &str) -> i64 {
        int(&self.app.account(username).await["balance_nano_usd"])
    }

    /// Sets the account's own price of `fal-ai/flux/dev` to 1 USD per image, so each usage
    /// event of [`Pay::usage`] costs exactly 1 USD.
    pub async fn dollar_images(&self, username: &str) {
        self.app
            .set_pricing(
                username,
                json!({"prices": {"fal-ai/flux/dev": {"unit": "image", "unit_price": "1"}}}),
            )
            .await
            .expect(200);
    }

    /// A usage event of one image (1 USD with [`Pay::dollar_images`]), at the engine's clock.
    pub fn usage(&self, username: &str, id: &str) -> Value {
        json!({"event_id": id, "endpoint_id": "fal-ai/flux/dev", "username": username,
            "timestamp": crate::harness::rfc3339(self.app.now_ms()), "status_code": 200,
            "output": {"images": [{"width": 64, "height": 64}]}})
    }

    /// Dispatch rounds until nothing is due (one account's events go to a webhook one at a
    /// time, in order): how many attempts were made.
    pub async fn deliver_all(&self) -> usize {
        let mut made = 0;
        for _ in 0..100 {
            let round = self.app.dispatcher().run_once().await.expect("a round");
            if round.is_empty() {
                return made;
            }
            made += round.len();
        }
        panic!("deliveries were still due after 100 rounds");
    }

    /// `GET /v1/account/auto-top-up`.
    pub async fn rule(&self, key: &str) -> Value {
        self.call(key, Method::GET, "/v1/account/auto-top-up", None)
            .await
            .expect(200)
            .clone()
    }
}

/// The checkout session id of a top-up's answer (its `checkout_url` ends with it).
pub fn session_id(top_up: &Value) -> String {
    top_up["checkout_url"]
        .as_str()
        .and_then(|u| u.rsplit('/').next())
        .unwrap_or_else(|| panic!("no checkout URL in {top_up}"))
        .to_string()
}
