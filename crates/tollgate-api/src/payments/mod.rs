//! Payments through the payment provider, Stripe (API.md section 7; docs/payments.md is the
//! operator's guide): top-ups the customer pays at the provider's checkout
//! ([`top_ups`]), the auto top-up rule ([`auto_top_up`]) whose charges the webhook dispatcher
//! makes off-session ([`off_session`]), the provider's signed events ([`webhook`]), operator
//! refunds ([`refunds`]), and the payment history ([`history`]). [`stripe`] speaks the
//! provider's API: its signatures, its client, its events.
//!
//! The rules are the core's (`tollgate_core::payments`): this edge only talks to the provider
//! and turns what it says into `Op::Payment` effects, which the core applies once per provider
//! event and as states, not deltas (a refund is the charge's cumulative refunded amount, a
//! dispute its status), so a repeated, late or reordered event moves nothing twice.
//!
//! Every call to the provider that creates something carries an idempotency key derived from
//! the deployment's installation id and tollgate's own ids
//! (`tollgate-<installation>-customer-<account>`,
//! `tollgate-<installation>-checkout-<account>-<top_up>`,
//! `tollgate-<installation>-top-up-<account>-<top_up>`,
//! `tollgate-<installation>-refund-<account>-<refund>`), so a retry after a lost answer, a
//! crash or a second server gets the provider's first answer back and never a second charge;
//! and everything created names the installation in its metadata (`tollgate_installation`),
//! so two deployments sharing one provider account (production and staging, whose accounts
//! and `auto-<n>` top-ups may bear the same names) never take each other's keys or events.
//! The installation id is drawn at random at the first start and stored in the database
//! ([`Payments::start`]): the servers of one database share it.
//!
//! Payments are on when the provider's secret key is configured ([`PaymentSettings`]);
//! otherwise their calls answer 503 `payments_not_configured`.

pub mod auto_top_up;
pub mod history;
pub mod off_session;
pub mod refunds;
pub mod stripe;
pub mod top_ups;
pub mod webhook;

use crate::error::ApiError;
use crate::AppState;
use axum::http::StatusCode;
use std::sync::Arc;
use std::time::Duration;
use tollgate_core::payments::TopUpSettings;
use tollgate_core::Nanos;

/// Stripe's API, where the client goes unless told otherwise.
pub const STRIPE_API_BASE: &str = "https://api.stripe.com";
/// The provider's name, as the payment history shows it.
pub const PROVIDER: &str = "stripe";
/// Nano-USD in a cent: the provider counts money in cents.
pub const NANOS_PER_CENT: i64 = 10_000_000;
/// The currency of every top-up (tollgate's credits are USD).
pub const CURRENCY: &str = "usd";

/// The payment provider's settings (`[stripe]`, `[top_ups]`).
#[derive(Clone)]
pub struct PaymentSettings {
    /// The provider's secret API key: `Authorization: Bearer <key>` on every call.
    pub secret_key: String,
    /// The signing secrets of the provider's webhook endpoint: an event signed with any of
    /// them is accepted (several while one is rotated).
    pub webhook_secrets: Vec<String>,
    /// The provider's API base URL (tests point it at a stand-in).
    pub api_base: String,
    /// The top-ups allowed, and the wait after a declined auto top-up.
    pub top_ups: TopUpSettings,
    /// The connect timeout and the whole call's timeout of a call to the provider.
    pub timeout: Duration,
    /// This deployment's installation id: in every idempotency key and metadata sent to the
    /// provider, and events naming another are ignored. [`Payments::start`] sets it from the
    /// database (drawn at the first start); empty until then.
    pub installation: String,
}

impl Default for PaymentSettings {
    fn default() -> Self {
        PaymentSettings {
            secret_key: String::new(),
            webhook_secrets: Vec::new(),
            api_base: STRIPE_API_BASE.to_string(),
            top_ups: TopUpSettings::default(),
            timeout: Duration::from_secs(20),
            installation: String::new(),
        }
    }
}

/// Never prints the secrets.
impl std::fmt::Debug for PaymentSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentSettings")
            .field("webhook_secrets", &self.webhook_secrets.len())
            .field("api_base", &self.api_base)
            .field("top_ups", &self.top_ups)
            .field("timeout", &self.timeout)
            .field("installation", &self.installation)
            .finish_non_exhaustive()
    }
}

/// Payments as a server runs them: the settings and the provider's client (one pooled HTTP
/// client).
#[derive(Debug)]
pub struct Payments {
    pub settings: PaymentSettings,
    pub client: stripe::client::Client,
}

impl Payments {
    /// Payments with these settings, as they are (`installation` included: see
    /// [`Payments::start`]).
    pub fn new(settings: PaymentSettings) -> Payments {
        let client = stripe::client::Client::new(
            &settings.api_base,
            &settings.secret_key,
            settings.timeout,
            &settings.installation,
        );
        Payments { settings, client }
    }

    /// Payments as a server starts them on `engine`: the provider's row among the webhooks
    /// made if it is not there (it charges the automatic top-ups), and the deployment's
    /// installation id read from the database, or drawn at random (16 hexadecimal digits) and
    /// stored there at the first start, in place of `settings.installation`.
    pub async fn start(
        engine: &tollgate_engine::Engine,
        settings: PaymentSettings,
    ) -> Result<Payments, tollgate_engine::EngineError> {
        use rand::RngCore;
        engine.ensure_provider_webhook().await?;
        let mut fresh = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut fresh);
        let installation = engine.payments_installation(&hex::encode(fresh)).await?;
        Ok(Payments::new(PaymentSettings {
            installation,
            ..settings
        }))
    }
}

/// The server's payments, or 503 `payments_not_configured` when it has none.
pub fn configured(state: &AppState) -> Result<&Arc<Payments>, ApiError> {
    state.payments.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "payments_not_configured",
            "payments are not configured on this server: the operator sets the payment \
             provider's keys ([stripe] secret_key and webhook_secrets)",
        )
    })
}

/// 502 `payment_provider_error`: the provider refused a call or did not answer; what it said
/// (never a secret) is in the message.
pub fn provider_error(what: &str, e: &stripe::client::StripeError) -> ApiError {
    tracing::warn!(error = %e, "the payment provider failed: {what}");
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "payment_provider_error",
        format!("the payment provider failed to {what}: {e}"),
    )
}

/// `n` in cents, when it is a whole number of them.
pub fn cents(n: Nanos) -> Option<i64> {
    (n.0 % NANOS_PER_CENT == 0).then_some(n.0 / NANOS_PER_CENT)
}

/// An amount of cents in nano-USD (`None` past what nano-USD can count).
pub fn from_cents(cents: i64) -> Option<Nanos> {
    cents.checked_mul(NANOS_PER_CENT).map(Nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_cross_in_whole_cents() {
        assert_eq!(cents(Nanos(25_000_000_000)), Some(2500));
        assert_eq!(cents(Nanos(10_000_000)), Some(1));
        assert_eq!(cents(Nanos(10_000_001)), None);
        assert_eq!(cents(Nanos(5_000_000)), None);
        assert_eq!(from_cents(2500), Some(Nanos(25_000_000_000)));
        assert_eq!(from_cents(i64::MAX), None);
    }

    #[test]
    fn settings_never_print_their_secrets() {
        let s = PaymentSettings {
            secret_key: "sk_test_hunter2".into(),
            webhook_secrets: vec!["whsec_hunter3".into()],
            ..PaymentSettings::default()
        };
        let shown = format!("{s:?} {:?}", Payments::new(s.clone()));
        assert!(!shown.contains("hunter"), "{shown}");
    }
}
