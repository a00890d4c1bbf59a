//! Automatic top-ups, charged off the write path. The core decides a top-up in the batch that
//! took the balance below the threshold and records a `top_up.started` event in the same
//! commit; the payment provider's own row in the webhook outbox is subscribed to that type, so
//! the event is claimed, leased, retried and recorded like any delivery, except that it is
//! "sent" by [`charge`]: the saved card is charged off-session
//! (`POST /v1/payment_intents`, `confirm=true&off_session=true`) with the top-up's
//! idempotency key, and the provider's answer is applied as an `Op::Payment` effect before the
//! delivery is recorded as delivered.
//!
//! Before calling the provider, the delivery reads the top-up and the account: the decision
//! was taken at the event's commit, and much may have changed since. A top-up no longer
//! awaiting payment (paid or failed meanwhile) is acknowledged without a charge; one whose
//! decision no longer holds (the rule disabled or paused, the card it names changed or
//! forgotten, the account locked by a dispute) is cancelled (`PaymentEffect::Cancelled`: not
//! a failure of the card) and acknowledged, without a charge.
//!
//! So a crash anywhere is safe: before the call, the lease passes and the delivery is sent
//! again; after the call and before the answer's record, it is sent again with the same key,
//! the provider answers the same payment, and the effect (a purchase whose id is the top-up's)
//! is applied once. No answer (a timeout, a 5xx) is retried with the webhook backoff for at
//! most [`RETRY_WINDOW`] (the provider keeps an idempotency key 24 hours), after which the
//! top-up fails (`provider_unreachable`); a payment that went through after all is still
//! credited by its `payment_intent.succeeded` event. An answer that is no card's fault (401 or
//! 403: the key; `idempotency_error`; any other 4xx that is not a card error: tollgate's
//! configuration or request) is logged as an error and retried the same way, never counted
//! toward the rule's failures; if it lasts the whole window, the top-up is cancelled.

use super::stripe::client::{OffSessionRequest, StripeError};
use super::{cents, from_cents, Payments};
use std::time::Duration;
use tollgate_core::events::EventData;
use tollgate_core::ids::{AccountId, PurchaseId};
use tollgate_core::machine::{AccountState, Op};
use tollgate_core::payments::{PaymentEffect, TopUpRecord, TopUpStatus};
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
    /// The provider refused the call for a reason that is not the card's (its key, an
    /// idempotency error, another 4xx that is not a card error): retried, and if that lasts
    /// the whole [`RETRY_WINDOW`], the top-up is cancelled rather than failed.
    pub refused: bool,
}

impl Charged {
    fn retry(status_code: Option<u16>, error: String) -> Charged {
        Charged {
            status_code,
            error: Some(error),
            done: false,
            refused: false,
        }
    }

    fn done(status_code: Option<u16>, error: Option<String>) -> Charged {
        Charged {
            status_code,
            error,
            done: true,
            refused: false,
        }
    }
}

/// Why the decision that started `top_up` no longer holds for `account` as it stands, if it
/// does not: the rule is gone, disabled or paused, the top-up is not the one in flight, the
/// card or customer the event names is no longer the saved one, or a dispute locks the
/// account.
pub fn stale(
    account: &AccountState,
    top_up: &TopUpRecord,
    customer: &str,
    payment_method: &str,
) -> Option<&'static str> {
    let p = &account.payment;
    let Some(rule) = &p.auto_top_up else {
        return Some("the account has no auto top-up rule");
    };
    if !rule.enabled {
        Some("the rule was disabled")
    } else if rule.paused.is_some() {
        Some("the rule is paused")
    } else if rule.in_flight.as_ref() != Some(&top_up.top_up_id) {
        Some("the top-up is not the rule's one in flight")
    } else if p.payment_method.as_deref() != Some(payment_method) {
        Some("the card it names is no longer the saved one")
    } else if p.customer.as_deref() != Some(customer) {
        Some("the customer it names is no longer the account's")
    } else if account.disputed_since.is_some() {
        Some("a dispute locks the account")
    } else {
        None
    }
}

/// The effect of the provider's answer to an off-session charge of `top_up_id`: `Paid` when
/// the payment succeeded; `Failed` (`needs_customer`) when the bank asks the customer to
/// authenticate; `Failed` for a card error; `None` while the payment is still processing (its
/// event will tell), for no answer, and for a refusal that is not the card's (both retried).
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
        // Not the card's: retried (see the module's documentation).
        Err(StripeError::Refused { .. } | StripeError::Retryable { .. }) => None,
    }
}

/// Charges the top-up a `top_up.started` event announced, if its decision still holds, and
/// applies the answer (see the module's documentation). `payments` is `None` on a server
/// without the provider: retried, for a server that has it.
///
/// `earlier_attempts` counts the delivery's attempts that got no definite answer. After one,
/// the charge may already exist at Stripe (a timeout after Stripe charged), so the decision is
/// not re-judged: the same request is sent again with the same idempotency key, which answers
/// that payment if it exists; cancelling instead would let the next decision charge a second
/// time for one shortfall.
pub async fn charge(
    engine: &Engine,
    payments: Option<&Payments>,
    event: &StoredEvent,
    timeout: Duration,
    earlier_attempts: u32,
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
        return Charged::done(
            None,
            Some(format!(
                "the payment provider takes top_up.started only, not {}",
                event.data.event_type().as_str()
            )),
        );
    };
    let Some(payments) = payments else {
        return Charged::retry(
            None,
            "payments are not configured on this server ([stripe] secret_key)".into(),
        );
    };
    // The decision as it stands now.
    let (top_up, account) = {
        let (a, id, now) = (event.account.clone(), top_up_id.clone(), engine.now());
        match engine
            .read(move |r| Ok((r.top_up(&a, &id)?, r.account(&a, now)?)))
            .await
        {
            Ok(read) => read,
            Err(e) => return Charged::retry(None, format!("the top-up could not be read: {e}")),
        }
    };
    let (Some(top_up), Some(account)) = (top_up, account) else {
        return Charged::done(None, Some("no such top-up: nothing to charge".into()));
    };
    if top_up.status != TopUpStatus::AwaitingPayment {
        tracing::info!(
            account = %event.account,
            top_up_id = %top_up_id,
            status = top_up.status.as_str(),
            "automatic top-up not charged: it is no longer awaiting payment"
        );
        return Charged::done(
            None,
            Some(format!(
                "not charged: the top-up is {}",
                top_up.status.as_str()
            )),
        );
    }
    let judged = (earlier_attempts == 0)
        .then(|| stale(&account.state, &top_up, customer, payment_method))
        .flatten();
    if let Some(why) = judged {
        tracing::info!(
            account = %event.account,
            top_up_id = %top_up_id,
            "automatic top-up cancelled before its charge: {why}"
        );
        let effect = PaymentEffect::Cancelled {
            top_up_id: top_up_id.clone(),
        };
        let note = Some(format!("cancelled, not charged: {why}"));
        return apply(engine, &event.account, top_up_id, effect, None, note).await;
    }
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
                Charged::done(status_code, None)
            }
            Err(e @ StripeError::Refused { .. }) => {
                // tollgate's key, request or configuration, not the card: the operator must
                // act; the charge is tried again meanwhile and the rule counts no failure.
                tracing::error!(
                    account = %event.account,
                    top_up_id = %top_up_id,
                    error = %e,
                    "the payment provider refused an automatic top-up's charge for a reason \
                     that is not the card's (check [stripe] secret_key and the provider \
                     account); it is tried again"
                );
                Charged {
                    refused: true,
                    ..Charged::retry(status_code, e.to_string())
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
        PaymentEffect::Cancelled { .. } => "cancelled",
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
            Charged::done(status_code, note)
        }
        Ok(Err(rejection)) => {
            // The same answer would be refused again: recorded, not retried.
            tracing::error!(
                account = %account,
                top_up_id = %top_up_id,
                error = %rejection,
                "the answer to an automatic top-up's charge was refused"
            );
            Charged::done(
                status_code,
                Some(format!("the answer was refused: {rejection}")),
            )
        }
        Err(e) => Charged::retry(
            status_code,
            format!("the answer could not be recorded: {e}"),
        ),
    }
}

/// Ends the top-up a `top_up.started` event announced whose charge was retried for
/// [`RETRY_WINDOW`]: failed (`provider_unreachable`) when the provider did not answer, or
/// cancelled (not a failure of the card) when it `refused` the call for a reason that is not
/// the card's.
pub async fn give_up(
    engine: &Engine,
    event: &StoredEvent,
    refused: bool,
) -> Result<(), EngineError> {
    let EventData::TopUpStarted { top_up_id, .. } = &event.data else {
        return Ok(());
    };
    let effect = if refused {
        tracing::error!(
            account = %event.account,
            top_up_id = %top_up_id,
            "automatic top-up cancelled: the payment provider refused its charge for 23 hours"
        );
        PaymentEffect::Cancelled {
            top_up_id: top_up_id.clone(),
        }
    } else {
        tracing::warn!(
            account = %event.account,
            top_up_id = %top_up_id,
            "automatic top-up failed: the payment provider did not answer within 23 hours"
        );
        PaymentEffect::Failed {
            top_up_id: top_up_id.clone(),
            reason: UNREACHABLE.into(),
            needs_customer: false,
        }
    };
    match engine
        .execute(Op::Payment {
            account: event.account.clone(),
            event: None,
            effect,
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
        // Refusals that are not the card's are retried, never a failure.
        for refused in [
            StripeError::Refused {
                status: 401,
                kind: "invalid_request_error".into(),
                code: Some("api_key_invalid".into()),
                message: "Invalid API Key".into(),
            },
            StripeError::Refused {
                status: 403,
                kind: "invalid_request_error".into(),
                code: None,
                message: "The provided key does not have access".into(),
            },
            StripeError::Refused {
                status: 400,
                kind: "idempotency_error".into(),
                code: Some("idempotency_key_in_use".into()),
                message: "Keys for idempotent requests can only be used with the same \
                          parameters"
                    .into(),
            },
            StripeError::Refused {
                status: 400,
                kind: "invalid_request_error".into(),
                code: Some("resource_missing".into()),
                message: "No such PaymentMethod".into(),
            },
        ] {
            assert_eq!(effect_of(&t, &Err(refused.clone())), None, "{refused}");
        }
        let down = StripeError::Retryable {
            status: Some(503),
            message: "x".into(),
        };
        assert_eq!(effect_of(&t, &Err(down)), None);
    }
}
