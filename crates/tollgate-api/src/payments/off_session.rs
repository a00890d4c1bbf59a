//! Automatic top-ups, charged off the write path. The core decides a top-up in the batch that
//! took the balance below the threshold and records a `top_up.started` event in the same
//! commit; the payment provider's own row in the webhook outbox is subscribed to that type, so
//! the event is claimed, leased, retried and recorded like any delivery, except that it is
//! "sent" by [`charge`]: the saved card is charged off-session
//! (`POST /v1/payment_intents`, `confirm=true&off_session=true`) with the top-up's
//! idempotency key, and the provider's answer is applied as an `Op::Payment` effect before the
//! delivery is recorded as delivered.
//!
//! So a crash anywhere is safe: before the call, the lease passes and the delivery is sent
//! again; after the call and before the answer's record, it is sent again with the same key,
//! the provider answers the same payment, and the effect (a purchase whose id is the top-up's)
//! is applied once. No answer (a timeout, a 5xx) is retried with the webhook backoff for at
//! most [`RETRY_WINDOW`] (the provider keeps an idempotency key 24 hours), after which the
//! top-up fails (`provider_unreachable`); a payment that went through after all is still
//! credited by its `payment_intent.succeeded` event.

use super::stripe::client::{OffSessionRequest, StripeError};
use super::{cents, from_cents, Payments};
use std::time::Duration;
use tollgate_core::events::EventData;
use tollgate_core::ids::{AccountId, PurchaseId};
use tollgate_core::machine::Op;
use tollgate_core::payments::PaymentEffect;
use tollgate_engine::{Engine, EngineError};
use tollgate_store::StoredEvent;

/// How long an automatic top-up's charge is retried (from its event) before it fails: within
/// the 24 hours the provider keeps an idempotency key, so every retry is the same payment.
pub const RETRY_WINDOW: Duration = Duration::from_secs(23 * 3600);

/// The reason a top-up fails with when the provider never answered within [`RETRY_WINDOW`].
pub const UNREACHABLE: &str = "provider_unreachable";

/// What a charge attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charged {
    /// The provider's HTTP status, when it answered.
    pub status_code: Option<u16>,
    /// What went wrong, for the attempt's log (never a secret).
    pub error: Option<String>,
    /// `true`: the answer is applied (delivered); `false`: to be sent again.
    pub done: bool,
}

impl Charged {
    fn retry(status_code: Option<u16>, error: String) -> Charged {
        Charged {
            status_code,
            error: Some(error),
            done: false,
        }
    }
}

/// The effect of the provider's answer to an off-session charge of `top_up_id`: `Paid` when
/// the payment succeeded; `Failed` (`needs_customer`) when the bank asks the customer to
/// authenticate; `Failed` for a card error or a refusal; `None` while the payment is still
/// processing (its event will tell) or for no answer (retried).
pub fn effect_of(
    top_up_id: &PurchaseId,
    answer: &Result<super::stripe::client::PaymentIntent, StripeError>,
) -> Option<PaymentEffect> {
    let failed = |reason: &str, needs_customer: bool| PaymentEffect::Failed {
        top_up_id: top_up_id.clone(),
        reason: reason.to_string(),
        needs_customer,
    };
    match answer {
        Ok(pi) => match pi.status.as_str() {
            "succeeded" => Some(PaymentEffect::Paid {
                top_up_id: top_up_id.clone(),
                amount: from_cents(pi.amount_received)?,
                payment_intent: Some(pi.id.clone()),
                payment_method: None,
            }),
            "requires_action" => Some(failed("authentication_required", true)),
            // Confirmed, not settled yet (a bank debit): `payment_intent.succeeded` or
            // `.payment_failed` will tell.
            "processing" => None,
            other => {
                let code = pi
                    .last_payment_error
                    .as_ref()
                    .and_then(|e| e.code.clone())
                    .unwrap_or_else(|| other.to_string());
                Some(failed(&code, code == "authentication_required"))
            }
        },
        Err(StripeError::Card { code, .. }) => {
            Some(failed(code, code == "authentication_required"))
        }
        Err(e @ StripeError::Refused { .. }) => Some(failed(&e.reason(), false)),
        Err(StripeError::Retryable { .. }) => None,
    }
}

/// Charges the top-up a `top_up.started` event announced and applies the answer (see the
/// module's documentation). `payments` is `None` on a server without the provider: retried,
/// for a server that has it.
pub async fn charge(
    engine: &Engine,
    payments: Option<&Payments>,
    event: &StoredEvent,
    timeout: Duration,
) -> Charged {
    let EventData::TopUpStarted {
        top_up_id,
        amount_nano_usd,
        customer,
        payment_method,
        ..
    } = &event.data
    else {
        // Only `top_up.started` is subscribed; anything else has nothing to charge.
        return Charged {
            status_code: None,
            error: Some(format!(
                "the payment provider takes top_up.started only, not {}",
                event.data.event_type().as_str()
            )),
            done: true,
        };
    };
    let Some(payments) = payments else {
        return Charged::retry(
            None,
            "payments are not configured on this server ([stripe] secret_key)".into(),
        );
    };
    let Some(amount_cents) = cents(*amount_nano_usd) else {
        let effect = PaymentEffect::Failed {
            top_up_id: top_up_id.clone(),
            reason: "amount_not_in_cents".into(),
            needs_customer: false,
        };
        return apply(engine, &event.account, top_up_id, effect, None, None).await;
    };
    let request = OffSessionRequest {
        account: &event.account,
        top_up_id,
        amount_cents,
        customer,
        payment_method,
    };
    let answer = match tokio::time::timeout(
        timeout,
        payments.client.create_off_session_payment(&request),
    )
    .await
    {
        Ok(answer) => answer,
        Err(_) => Err(StripeError::Retryable {
            status: None,
            message: format!("no answer within {} s", timeout.as_secs()),
        }),
    };
    let status_code = match &answer {
        Ok(_) => Some(200),
        Err(e) => e.status(),
    };
    let note = answer.as_ref().err().map(|e| e.to_string());
    match effect_of(top_up_id, &answer) {
        Some(effect) => apply(engine, &event.account, top_up_id, effect, status_code, note).await,
        None => match answer {
            // Processing: the charge is made; its event tells the rest.
            Ok(pi) => {
                tracing::info!(
                    account = %event.account,
                    top_up_id = %top_up_id,
                    payment_intent = %pi.id,
                    status = %pi.status,
                    "automatic top-up charged, awaiting the payment's outcome"
                );
                Charged {
                    status_code,
                    error: None,
                    done: true,
                }
            }
            Err(e) => Charged::retry(status_code, e.to_string()),
        },
    }
}

/// Applies `effect` (no provider event: the answer to tollgate's own call).
async fn apply(
    engine: &Engine,
    account: &AccountId,
    top_up_id: &PurchaseId,
    effect: PaymentEffect,
    status_code: Option<u16>,
    note: Option<String>,
) -> Charged {
    let what = match &effect {
        PaymentEffect::Paid { .. } => "paid",
        _ => "failed",
    };
    match engine
        .execute(Op::Payment {
            account: account.clone(),
            event: None,
            effect,
        })
        .await
    {
        Ok(Ok(_)) => {
            tracing::info!(account = %account, top_up_id = %top_up_id, "automatic top-up {what}");
            Charged {
                status_code,
                error: note,
                done: true,
            }
        }
        Ok(Err(rejection)) => {
            // The same answer would be refused again: recorded, not retried.
            tracing::error!(
                account = %account,
                top_up_id = %top_up_id,
                error = %rejection,
                "the answer to an automatic top-up's charge was refused"
            );
            Charged {
                status_code,
                error: Some(format!("the answer was refused: {rejection}")),
                done: true,
            }
        }
        Err(e) => Charged::retry(
            status_code,
            format!("the answer could not be recorded: {e}"),
        ),
    }
}

/// Fails the top-up a `top_up.started` event announced: its charge got no answer within
/// [`RETRY_WINDOW`].
pub async fn give_up(engine: &Engine, event: &StoredEvent) -> Result<(), EngineError> {
    let EventData::TopUpStarted { top_up_id, .. } = &event.data else {
        return Ok(());
    };
    tracing::warn!(
        account = %event.account,
        top_up_id = %top_up_id,
        "automatic top-up failed: the payment provider did not answer within 23 hours"
    );
    match engine
        .execute(Op::Payment {
            account: event.account.clone(),
            event: None,
            effect: PaymentEffect::Failed {
                top_up_id: top_up_id.clone(),
                reason: UNREACHABLE.into(),
                needs_customer: false,
            },
        })
        .await?
    {
        Ok(_) => Ok(()),
        Err(rejection) => {
            tracing::error!(
                account = %event.account,
                top_up_id = %top_up_id,
                error = %rejection,
                "failing an unreachable automatic top-up was refused"
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payments::stripe::client::{PaymentError, PaymentIntent};

    fn pi(status: &str, code: Option<&str>) -> PaymentIntent {
        PaymentIntent {
            id: "pi_1".into(),
            status: status.into(),
            amount: 2000,
            amount_received: if status == "succeeded" { 2000 } else { 0 },
            currency: "usd".into(),
            payment_method: Some("pm_1".into()),
            setup_future_usage: None,
            metadata: Default::default(),
            last_payment_error: code.map(|c| PaymentError {
                code: Some(c.into()),
                ..PaymentError::default()
            }),
            latest_charge: None,
        }
    }

    #[test]
    fn the_answer_is_paid_failed_needing_the_customer_failed_or_nothing_yet() {
        let t = PurchaseId::parse("auto-1").unwrap();
        assert_eq!(
            effect_of(&t, &Ok(pi("succeeded", None))),
            Some(PaymentEffect::Paid {
                top_up_id: t.clone(),
                amount: tollgate_core::Nanos(20_000_000_000),
                payment_intent: Some("pi_1".into()),
                payment_method: None
            })
        );
        let needs = |r: &Option<PaymentEffect>| match r {
            Some(PaymentEffect::Failed {
                needs_customer,
                reason,
                ..
            }) => Some((*needs_customer, reason.clone())),
            _ => None,
        };
        assert_eq!(
            needs(&effect_of(&t, &Ok(pi("requires_action", None)))),
            Some((true, "authentication_required".into()))
        );
        assert_eq!(
            needs(&effect_of(
                &t,
                &Ok(pi("requires_payment_method", Some("card_declined")))
            )),
            Some((false, "card_declined".into()))
        );
        assert_eq!(effect_of(&t, &Ok(pi("processing", None))), None);
        let card = |code: &str| StripeError::Card {
            code: code.into(),
            decline_code: None,
            message: "no".into(),
            payment_intent: None,
        };
        assert_eq!(
            needs(&effect_of(&t, &Err(card("authentication_required")))),
            Some((true, "authentication_required".into()))
        );
        assert_eq!(
            needs(&effect_of(&t, &Err(card("card_declined")))),
            Some((false, "card_declined".into()))
        );
        let gone = StripeError::Refused {
            status: 400,
            kind: "invalid_request_error".into(),
            code: Some("resource_missing".into()),
            message: "No such PaymentMethod".into(),
        };
        assert_eq!(
            needs(&effect_of(&t, &Err(gone))),
            Some((false, "resource_missing".into()))
        );
        let down = StripeError::Retryable {
            status: Some(503),
            message: "x".into(),
        };
        assert_eq!(effect_of(&t, &Err(down)), None);
    }
}
