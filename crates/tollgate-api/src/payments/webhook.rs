//! `POST /v1/payments/stripe/webhook`: the provider's events. No key: the `Stripe-Signature`
//! header is verified over the raw body ([`super::stripe::signature`]) before anything else is
//! read, and a bad or stale one is refused (400) with nothing written. A verified event is
//! translated ([`super::stripe::events`]) and applied as `Op::Payment` with its event id, which
//! the core applies once: its effect and the id are stored in one commit, so a repeat (the
//! provider retries until it gets a 2xx) changes nothing and answers 200 again.
//!
//! What is answered tells the provider what to do: 2xx (done, repeated, or nothing to do: an
//! event type tollgate does not act on, an event about something tollgate did not create) ends
//! its retries; a 5xx (the commit failed, the provider could not be asked which top-up a
//! refund or dispute concerns) makes it send the event again later.

use super::stripe::events::{self, Event, Translation};
use super::stripe::signature;
use super::{configured, Payments};
use crate::error::{ApiError, ErrorResponse};
use crate::extract::{Body, NoParams, Params};
use crate::openapi::tags;
use crate::AppState;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Serialize;
use tollgate_core::ids::{AccountId, PurchaseId};
use tollgate_core::machine::{Op, Outcome};
use tollgate_core::payments::ProviderEvent;
use utoipa::ToSchema;

/// What became of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StripeEventResult {
    /// Its effect was applied (in the commit that stored its id).
    Applied,
    /// Its id was applied before: nothing changed.
    Replayed,
    /// Nothing to apply: a type tollgate does not act on, or about something it did not
    /// create (acknowledged, not stored).
    Ignored,
    /// The effect was refused (logged as an error, for the operator; acknowledged, since the
    /// same event would be refused again).
    Refused,
}

/// The acknowledgement.
#[derive(Serialize, ToSchema)]
pub struct StripeEventReceived {
    /// Always `true`.
    received: bool,
    result: StripeEventResult,
}

/// Receive a Stripe event
///
/// The payment provider's webhook: Stripe POSTs its events here, signed. No key: the
/// `Stripe-Signature` header (`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`) must
/// match one of the configured signing secrets (several while one rotates) and be at most
/// 300 s from the server's clock; otherwise 400, with nothing written. Each event id is
/// applied once, in the commit of its effect: a paid checkout or payment is a purchase
/// (credits, invoice, unlock), a failure fails its top-up, `charge.refunded` takes back what the
/// charge's cumulative refunded amount adds, a dispute takes its amount back and locks the
/// account until it is won. A repeat, an unknown event type, or an event about something
/// tollgate did not create answers 200 and changes nothing. 5xx: nothing was applied, and
/// the provider sends the event again. docs/payments.md lists the event types to enable.
#[utoipa::path(
    post, path = "/v1/payments/stripe/webhook", tag = tags::BILLING,
    operation_id = "receiveStripeEvent", security(()),
    request_body(content = Object, content_type = "application/json",
        description = "A Stripe event, as Stripe sends it (`id`, `type`, `data.object`)."),
    params(("Stripe-Signature" = String, Header,
        description = "`t=<unix seconds>,v1=<hex>`: Stripe's signature of the raw body.")),
    responses(
        (status = 200, description = "Acknowledged: applied, a repeat, or nothing to apply.",
            body = StripeEventReceived),
        (status = 400, description = "`validation_error`: the signature is missing, does not \
            match a configured secret, or is more than 300 s from now (`error.field` \
            `Stripe-Signature`); or the body is not an event. Nothing was written.",
            body = ErrorResponse),
        (status = 500, description = "`server_error`: nothing was applied; the provider sends \
            the event again.", body = ErrorResponse),
        (status = 502, description = "`payment_provider_error`: the provider could not be \
            asked which payment a refund or dispute concerns; nothing was applied, and the \
            provider sends the event again.", body = ErrorResponse),
        (status = 503, description = "`payments_not_configured`: this server has no payment \
            provider.", body = ErrorResponse),
    )
)]
pub async fn receive(
    State(state): State<AppState>,
    _: Params<NoParams>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<axum::Json<StripeEventReceived>, ApiError> {
    let payments = configured(&state)?.clone();
    let header = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::invalid("Stripe-Signature", "the Stripe-Signature header is missing")
        })?;
    signature::verify(
        &body,
        header,
        &payments.settings.webhook_secrets,
        state.engine.now(),
    )
    .map_err(|e| {
        tracing::info!(error = %e, "a payment provider event was refused");
        ApiError::invalid("Stripe-Signature", e.to_string())
    })?;
    let event = Event::parse(&body).map_err(ApiError::validation)?;
    let result = handle(&state, &payments, &event).await?;
    Ok(axum::Json(StripeEventReceived {
        received: true,
        result,
    }))
}

/// Applies a verified event (see the module's documentation).
pub async fn handle(
    state: &AppState,
    payments: &Payments,
    event: &Event,
) -> Result<StripeEventResult, ApiError> {
    let ignored = |why: &str| {
        tracing::info!(
            event_id = %event.id,
            event_type = %event.event_type,
            "payment provider event acknowledged, nothing to apply: {why}"
        );
        Ok(StripeEventResult::Ignored)
    };
    let installation = payments.client.installation();
    let (account, effect) = match events::translate(event, installation) {
        Err(why) => {
            tracing::warn!(
                event_id = %event.id,
                event_type = %event.event_type,
                "payment provider event acknowledged, not applied: its object is not what its \
                 type promises: {why}"
            );
            return Ok(StripeEventResult::Ignored);
        }
        Ok(Translation::Ignored(why)) => return ignored(&why),
        Ok(Translation::Effect { account, effect }) => (account, effect),
        Ok(Translation::OfPayment {
            payment_intent,
            charge,
            change,
        }) => match top_up_of_payment(state, payments, payment_intent, charge).await? {
            Ok((account, top_up_id)) => (account, change.effect(top_up_id)),
            Err(why) => return ignored(&format!("the payment: {why}")),
        },
    };
    let top_up_id = effect.top_up_id().clone();
    let exists = {
        let (account, id) = (account.clone(), top_up_id.clone());
        state.engine.read(move |r| r.top_up(&account, &id)).await?
    };
    if exists.is_none() {
        return ignored(&format!(
            "account {account} has no top-up {top_up_id} (another deployment's?)"
        ));
    }
    let op = Op::Payment {
        account: account.clone(),
        event: Some(ProviderEvent {
            event_id: event.id.clone(),
            event_type: event.event_type.clone(),
        }),
        effect,
    };
    match state.engine.execute(op).await? {
        Ok(Outcome::PaymentApplied { replayed, .. }) => {
            tracing::info!(
                event_id = %event.id,
                event_type = %event.event_type,
                account = %account,
                top_up_id = %top_up_id,
                replayed,
                "payment provider event applied"
            );
            Ok(if replayed {
                StripeEventResult::Replayed
            } else {
                StripeEventResult::Applied
            })
        }
        Ok(other) => Err(ApiError::server(format!("unexpected outcome {other:?}"))),
        Err(rejection) => {
            tracing::error!(
                event_id = %event.id,
                event_type = %event.event_type,
                account = %account,
                top_up_id = %top_up_id,
                error = %rejection,
                "payment provider event refused: nothing applied; it is acknowledged, and can \
                 be sent again from the provider's dashboard once the cause is fixed"
            );
            Ok(StripeEventResult::Refused)
        }
    }
}

/// The top-up whose payment is `payment_intent` (or, without one, the payment of `charge`):
/// tollgate's record of the payment, else the payment's metadata at the provider (a refund or
/// dispute told before the payment itself, whose id tollgate has not recorded yet), when it
/// is this installation's. `Err`: why it is not a top-up of this installation.
async fn top_up_of_payment(
    state: &AppState,
    payments: &Payments,
    payment_intent: Option<String>,
    charge: Option<String>,
) -> Result<Result<(AccountId, PurchaseId), String>, ApiError> {
    let client = &payments.client;
    let none = || Ok(Err("it names no payment".to_string()));
    let payment_intent = match (payment_intent, charge) {
        (Some(pi), _) => pi,
        (None, Some(ch)) => match client.charge(&ch).await {
            Ok(c) => match c.payment_intent {
                Some(pi) => pi,
                None => return none(),
            },
            Err(e) => return Err(super::provider_error("read the disputed charge", &e)),
        },
        (None, None) => return none(),
    };
    let known = {
        let pi = payment_intent.clone();
        state
            .engine
            .read(move |r| r.top_up_by_payment_intent(&pi))
            .await?
    };
    if let Some(t) = known {
        return Ok(Ok((t.account, t.top_up_id)));
    }
    match client.payment_intent(&payment_intent).await {
        Ok(pi) => Ok(events::ours(
            &serde_json::json!(pi.metadata),
            client.installation(),
        )),
        Err(super::stripe::client::StripeError::Refused { status: 404, .. }) => {
            Ok(Err(format!("the provider has no payment {payment_intent}")))
        }
        Err(e) => Err(super::provider_error(
            "read the refunded or disputed payment",
            &e,
        )),
    }
}
