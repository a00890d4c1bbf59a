//! The provider's events, as the core applies them: a verified event's JSON becomes an account
//! and a [`PaymentEffect`] on one of its top-ups, or nothing (an event type tollgate does not
//! act on, or one about something tollgate did not create).
//!
//! | event type | effect |
//! |---|---|
//! | `checkout.session.completed` (`payment_status` `paid`), `checkout.session.async_payment_succeeded` | `Paid` |
//! | `checkout.session.async_payment_failed`, `checkout.session.expired` | `Failed` |
//! | `payment_intent.succeeded` | `Paid` (the payment method saved when `setup_future_usage` is `off_session`) |
//! | `payment_intent.payment_failed` | `Failed` of an automatic top-up (`needs_customer` for `authentication_required`); nothing for a checkout's payment, which the customer may try again on the same session |
//! | `charge.refunded` | `Refunded` (the charge's cumulative `amount_refunded`) |
//! | `charge.dispute.*` | `Disputed` (`won`, `charge_refunded` → won; `lost` → lost; `needs_response`, `under_review` → open); an inquiry (`warning_*`) → nothing |
//!
//! Sessions and payments name their top-up in their metadata (`tollgate_installation`,
//! `tollgate_account`, `tollgate_top_up_id`, set when tollgate created them); one that names
//! another installation is another deployment's (on the same provider account), and so is one
//! of an automatic top-up (`auto-<n>`, a name every deployment gives) that names none.
//! Charges and disputes name the payment (`payment_intent`) only: [`Translation::OfPayment`]
//! leaves finding its top-up to the caller (tollgate's record of the payment, else the
//! payment's metadata at the provider, checked the same way). Amounts are cents (×
//! 10,000,000 nano-USD) of `usd`; another currency is not tollgate's.

use super::client::{id_of, META_ACCOUNT, META_INSTALLATION, META_TOP_UP};
use crate::payments::{from_cents, CURRENCY};
use serde_json::Value;
use tollgate_core::ids::{AccountId, PurchaseId};
use tollgate_core::payments::{is_auto_id, DisputeStatus, PaymentEffect};
use tollgate_core::Nanos;

/// A provider event: its id, type and object.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// `evt_...`.
    pub id: String,
    /// `checkout.session.completed`, ...
    pub event_type: String,
    /// `data.object`: the session, payment, charge or dispute as it is now.
    pub object: Value,
}

impl Event {
    /// Reads an event's JSON (`{"id", "type", "data": {"object": ...}}`).
    pub fn parse(body: &[u8]) -> Result<Event, String> {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| format!("the event is not JSON: {e}"))?;
        let id = v["id"]
            .as_str()
            .filter(|s| !s.is_empty() && s.len() <= 255)
            .ok_or("the event has no id")?;
        let event_type = v["type"]
            .as_str()
            .filter(|s| !s.is_empty() && s.len() <= 255)
            .ok_or("the event has no type")?;
        let object = v["data"]["object"].clone();
        if !object.is_object() {
            return Err("the event has no data.object".into());
        }
        Ok(Event {
            id: id.to_string(),
            event_type: event_type.to_string(),
            object,
        })
    }
}

/// What an event means for tollgate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Translation {
    /// `effect` on a top-up of `account` (named by the object's metadata).
    Effect {
        account: AccountId,
        effect: PaymentEffect,
    },
    /// An effect on the top-up whose payment is `payment_intent` (a charge's or a dispute's;
    /// `None`: a dispute of a charge that names none, found through `charge`).
    OfPayment {
        payment_intent: Option<String>,
        charge: Option<String>,
        change: PaymentChange,
    },
    /// Nothing to apply, and why (logged; the event is acknowledged and not stored).
    Ignored(String),
}

/// What a charge or dispute event says of a payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PaymentChange {
    /// The charge is refunded `refunded_total` in all.
    Refunded { refunded_total: Nanos },
    Disputed {
        dispute_id: String,
        amount: Nanos,
        status: DisputeStatus,
    },
}

impl PaymentChange {
    /// The effect on the top-up `top_up_id` whose payment it is.
    pub fn effect(self, top_up_id: PurchaseId) -> PaymentEffect {
        match self {
            PaymentChange::Refunded { refunded_total } => PaymentEffect::Refunded {
                top_up_id,
                refunded_total,
            },
            PaymentChange::Disputed {
                dispute_id,
                amount,
                status,
            } => PaymentEffect::Disputed {
                top_up_id,
                dispute_id,
                amount,
                status,
            },
        }
    }
}

/// The account and top-up a provider object's metadata names, when it names them and they
/// are valid tollgate ids.
pub fn top_up_of(metadata: &Value) -> Option<(AccountId, PurchaseId)> {
    let account = AccountId::parse(metadata[META_ACCOUNT].as_str()?).ok()?;
    let top_up = PurchaseId::parse(metadata[META_TOP_UP].as_str()?).ok()?;
    Some((account, top_up))
}

/// The account and top-up a provider object's metadata names, when they are this
/// installation's: `Err` says whose they are not. Metadata naming another installation is
/// another deployment's; metadata naming none is accepted for a checkout top-up (whose id is
/// random, and which an installation of before the installation ids created), not for an
/// automatic one (`auto-<n>`: every deployment has an `auto-1`).
pub fn ours(metadata: &Value, installation: &str) -> Result<(AccountId, PurchaseId), String> {
    let Some((account, top_up_id)) = top_up_of(metadata) else {
        return Err("it names no tollgate top-up".into());
    };
    match metadata[META_INSTALLATION].as_str() {
        Some(i) if i == installation => Ok((account, top_up_id)),
        Some(other) => Err(format!(
            "it is another installation's ({other}; this one is {installation})"
        )),
        None if is_auto_id(&top_up_id) => Err(format!(
            "it names the automatic top-up {top_up_id} and no installation: another \
             deployment's"
        )),
        None => Ok((account, top_up_id)),
    }
}

/// A dispute's status, as tollgate holds it: `won` is won; `lost` is lost; `charge_refunded`
/// (closed because the charge was refunded: the refund takes the money back, not the
/// dispute) is won; `prevented` (stopped before it was filed, e.g. by the card network's
/// rapid resolution, which refunds the charge instead: the refund takes the money back) is won;
/// `needs_response` and `under_review` are open. `None` for an inquiry
/// (`warning_needs_response`, `warning_under_review`, `warning_closed`): the bank asks, no
/// funds are withdrawn, so nothing is taken or locked; if the inquiry escalates, the provider
/// tells the same dispute as `needs_response`. An unknown status is held open (the money may
/// be gone).
pub fn dispute_status(status: &str) -> Option<DisputeStatus> {
    match status {
        "won" | "charge_refunded" | "prevented" => Some(DisputeStatus::Won),
        "lost" => Some(DisputeStatus::Lost),
        s if s.starts_with("warning_") => None,
        _ => Some(DisputeStatus::Open),
    }
}

fn amount(object: &Value, field: &str) -> Result<Nanos, String> {
    let cents = object[field]
        .as_i64()
        .filter(|c| *c >= 0)
        .ok_or_else(|| format!("{field} is not an amount of cents"))?;
    from_cents(cents).ok_or_else(|| format!("{field} is too large"))
}

fn usd(object: &Value) -> Result<(), String> {
    match object["currency"].as_str() {
        Some(c) if c.eq_ignore_ascii_case(CURRENCY) => Ok(()),
        Some(c) => Err(format!("its currency is {c}, not {CURRENCY}")),
        None => Err("it names no currency".into()),
    }
}

/// What a verified event means to the installation `installation` (see the module's table).
/// `Err` is an event whose object is not what its type promises (logged, acknowledged,
/// nothing applied).
pub fn translate(event: &Event, installation: &str) -> Result<Translation, String> {
    let o = &event.object;
    let ignored = |why: &str| Ok(Translation::Ignored(why.to_string()));
    let ours =
        |what: &str| ours(&o["metadata"], installation).map_err(|why| format!("the {what}: {why}"));
    match event.event_type.as_str() {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            if o["payment_status"].as_str() != Some("paid") {
                // An asynchronous method (a bank debit): `async_payment_*` follows.
                return ignored("the session is not paid (yet)");
            }
            let (account, top_up_id) = match ours("session") {
                Ok(ids) => ids,
                Err(why) => return ignored(&why),
            };
            if let Err(why) = usd(o) {
                return ignored(&why);
            }
            Ok(Translation::Effect {
                account,
                effect: PaymentEffect::Paid {
                    top_up_id,
                    amount: amount(o, "amount_total")?,
                    payment_intent: id_of(&o["payment_intent"]),
                    // The payment method is the payment's: `payment_intent.succeeded` saves it.
                    payment_method: None,
                },
            })
        }
        "checkout.session.async_payment_failed" | "checkout.session.expired" => {
            let (account, top_up_id) = match ours("session") {
                Ok(ids) => ids,
                Err(why) => return ignored(&why),
            };
            let reason = if event.event_type.ends_with("expired") {
                "checkout_expired"
            } else {
                "async_payment_failed"
            };
            Ok(Translation::Effect {
                account,
                effect: PaymentEffect::Failed {
                    top_up_id,
                    reason: reason.into(),
                    needs_customer: false,
                },
            })
        }
        "payment_intent.succeeded" => {
            let (account, top_up_id) = match ours("payment") {
                Ok(ids) => ids,
                Err(why) => return ignored(&why),
            };
            if let Err(why) = usd(o) {
                return ignored(&why);
            }
            let saved = o["setup_future_usage"].as_str() == Some("off_session");
            Ok(Translation::Effect {
                account,
                effect: PaymentEffect::Paid {
                    top_up_id,
                    amount: amount(o, "amount_received")?,
                    payment_intent: id_of(&o["id"]),
                    payment_method: if saved {
                        id_of(&o["payment_method"])
                    } else {
                        None
                    },
                },
            })
        }
        "payment_intent.payment_failed" => {
            let (account, top_up_id) = match ours("payment") {
                Ok(ids) => ids,
                Err(why) => return ignored(&why),
            };
            if !is_auto_id(&top_up_id) {
                // A checkout's payment attempt failed: the customer may try again on the same
                // session (another card); only the session's expiry or its asynchronous
                // payment's failure fails the top-up.
                return ignored("a checkout's payment attempt failed; its session stays open");
            }
            let err = &o["last_payment_error"];
            let code = err["code"]
                .as_str()
                .or_else(|| err["decline_code"].as_str())
                .unwrap_or("payment_failed");
            Ok(Translation::Effect {
                account,
                effect: PaymentEffect::Failed {
                    top_up_id,
                    reason: code.to_string(),
                    needs_customer: code == "authentication_required",
                },
            })
        }
        "charge.refunded" => {
            if let Err(why) = usd(o) {
                return ignored(&why);
            }
            Ok(Translation::OfPayment {
                payment_intent: id_of(&o["payment_intent"]),
                charge: id_of(&o["id"]),
                change: PaymentChange::Refunded {
                    refunded_total: amount(o, "amount_refunded")?,
                },
            })
        }
        t if t.starts_with("charge.dispute.") => {
            if let Err(why) = usd(o) {
                return ignored(&why);
            }
            let dispute_id = id_of(&o["id"]).ok_or("the dispute has no id")?;
            let status = o["status"].as_str().ok_or("the dispute has no status")?;
            let Some(held) = dispute_status(status) else {
                return ignored(&format!(
                    "an inquiry ({status}): no funds are withdrawn, nothing is taken or locked"
                ));
            };
            Ok(Translation::OfPayment {
                payment_intent: id_of(&o["payment_intent"]),
                charge: id_of(&o["charge"]),
                change: PaymentChange::Disputed {
                    dispute_id,
                    amount: amount(o, "amount")?,
                    status: held,
                },
            })
        }
        _ => ignored("tollgate does not act on this event type"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(t: &str, object: Value) -> Event {
        Event::parse(
            json!({"id": "evt_1", "object": "event", "type": t, "data": {"object": object}})
                .to_string()
                .as_bytes(),
        )
        .unwrap()
    }

    const HERE: &str = "inst1";

    fn translate_here(e: &Event) -> Result<Translation, String> {
        translate(e, HERE)
    }

    fn meta() -> Value {
        json!({"tollgate_installation": HERE, "tollgate_account": "acme",
            "tollgate_top_up_id": "top_1"})
    }

    fn top() -> PurchaseId {
        PurchaseId::parse("top_1").unwrap()
    }

    fn acme() -> AccountId {
        AccountId::parse("acme").unwrap()
    }

    #[test]
    fn a_paid_session_or_payment_is_paid_once_a_failed_one_fails() {
        let session = json!({"id": "cs_1", "object": "checkout.session", "payment_status": "paid",
            "amount_total": 2500, "currency": "usd", "payment_intent": "pi_1", "metadata": meta()});
        let paid = PaymentEffect::Paid {
            top_up_id: top(),
            amount: Nanos(25_000_000_000),
            payment_intent: Some("pi_1".into()),
            payment_method: None,
        };
        for t in [
            "checkout.session.completed",
            "checkout.session.async_payment_succeeded",
        ] {
            assert_eq!(
                translate_here(&event(t, session.clone())),
                Ok(Translation::Effect {
                    account: acme(),
                    effect: paid.clone()
                }),
                "{t}"
            );
        }
        let mut unpaid = session.clone();
        unpaid["payment_status"] = json!("unpaid");
        assert!(matches!(
            translate_here(&event("checkout.session.completed", unpaid)),
            Ok(Translation::Ignored(_))
        ));
        let mut euro = session.clone();
        euro["currency"] = json!("eur");
        assert!(matches!(
            translate_here(&event("checkout.session.completed", euro)),
            Ok(Translation::Ignored(_))
        ));
        for (t, reason) in [
            ("checkout.session.expired", "checkout_expired"),
            (
                "checkout.session.async_payment_failed",
                "async_payment_failed",
            ),
        ] {
            assert_eq!(
                translate_here(&event(t, session.clone())),
                Ok(Translation::Effect {
                    account: acme(),
                    effect: PaymentEffect::Failed {
                        top_up_id: top(),
                        reason: reason.into(),
                        needs_customer: false
                    }
                })
            );
        }

        let pi = json!({"id": "pi_1", "object": "payment_intent", "amount": 2500,
            "amount_received": 2500, "currency": "usd", "payment_method": "pm_1",
            "setup_future_usage": "off_session", "status": "succeeded", "metadata": meta()});
        let saved = translate_here(&event("payment_intent.succeeded", pi.clone())).unwrap();
        assert_eq!(
            saved,
            Translation::Effect {
                account: acme(),
                effect: PaymentEffect::Paid {
                    top_up_id: top(),
                    amount: Nanos(25_000_000_000),
                    payment_intent: Some("pi_1".into()),
                    payment_method: Some("pm_1".into()),
                }
            }
        );
        let mut once = pi.clone();
        once["setup_future_usage"] = Value::Null;
        match translate_here(&event("payment_intent.succeeded", once)).unwrap() {
            Translation::Effect {
                effect: PaymentEffect::Paid { payment_method, .. },
                ..
            } => assert_eq!(payment_method, None, "not agreed: not saved"),
            other => panic!("{other:?}"),
        }
        // A failed attempt of a checkout's payment fails nothing: the customer may try again
        // on the same session.
        let mut failed = pi.clone();
        failed["last_payment_error"] = json!({"code": "card_declined", "type": "card_error"});
        assert!(matches!(
            translate_here(&event("payment_intent.payment_failed", failed.clone())),
            Ok(Translation::Ignored(_))
        ));
        // An automatic top-up's fails it.
        failed["metadata"]["tollgate_top_up_id"] = json!("auto-1");
        let auto = PurchaseId::parse("auto-1").unwrap();
        failed["last_payment_error"] =
            json!({"code": "authentication_required", "type": "card_error"});
        assert_eq!(
            translate_here(&event("payment_intent.payment_failed", failed.clone())),
            Ok(Translation::Effect {
                account: acme(),
                effect: PaymentEffect::Failed {
                    top_up_id: auto.clone(),
                    reason: "authentication_required".into(),
                    needs_customer: true
                }
            })
        );
        failed["last_payment_error"] =
            json!({"code": "card_declined", "decline_code": "insufficient_funds"});
        match translate_here(&event("payment_intent.payment_failed", failed)).unwrap() {
            Translation::Effect {
                effect:
                    PaymentEffect::Failed {
                        reason,
                        needs_customer,
                        ..
                    },
                ..
            } => assert_eq!((reason.as_str(), needs_customer), ("card_declined", false)),
            other => panic!("{other:?}"),
        }
        // Not this installation's: another's, or an automatic top-up's naming none; a
        // checkout's naming none is (made before installation ids).
        let mut other = pi.clone();
        other["metadata"]["tollgate_installation"] = json!("inst2");
        assert!(matches!(
            translate_here(&event("payment_intent.succeeded", other.clone())),
            Ok(Translation::Ignored(why)) if why.contains("another installation")
        ));
        other["metadata"]["tollgate_top_up_id"] = json!("auto-1");
        other["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("tollgate_installation");
        assert!(matches!(
            translate_here(&event("payment_intent.succeeded", other.clone())),
            Ok(Translation::Ignored(_))
        ));
        other["metadata"]["tollgate_top_up_id"] = json!("top_1");
        assert!(matches!(
            translate_here(&event("payment_intent.succeeded", other)),
            Ok(Translation::Effect { .. })
        ));
        // Not tollgate's: no metadata, or metadata that is not a tollgate id.
        let mut theirs = pi.clone();
        theirs["metadata"] = json!({"order": "42"});
        assert!(matches!(
            translate_here(&event("payment_intent.succeeded", theirs)),
            Ok(Translation::Ignored(_))
        ));
        let mut bad = pi;
        bad["metadata"] =
            json!({"tollgate_account": "no spaces allowed", "tollgate_top_up_id": "x"});
        assert!(matches!(
            translate_here(&event("payment_intent.succeeded", bad)),
            Ok(Translation::Ignored(_))
        ));
    }

    #[test]
    fn refunds_and_disputes_name_the_payment_with_their_state() {
        let charge = json!({"id": "ch_1", "object": "charge", "amount": 2500,
            "amount_refunded": 1000, "currency": "usd", "payment_intent": "pi_1", "refunded": false});
        assert_eq!(
            translate_here(&event("charge.refunded", charge)),
            Ok(Translation::OfPayment {
                payment_intent: Some("pi_1".into()),
                charge: Some("ch_1".into()),
                change: PaymentChange::Refunded {
                    refunded_total: Nanos(10_000_000_000)
                }
            })
        );
        for (status, held) in [
            ("needs_response", DisputeStatus::Open),
            ("under_review", DisputeStatus::Open),
            ("won", DisputeStatus::Won),
            ("charge_refunded", DisputeStatus::Won),
            ("prevented", DisputeStatus::Won),
            ("lost", DisputeStatus::Lost),
        ] {
            let dispute = json!({"id": "dp_1", "object": "dispute", "amount": 2500,
                "currency": "usd", "charge": "ch_1", "payment_intent": "pi_1", "status": status});
            for t in ["charge.dispute.created", "charge.dispute.closed"] {
                let got = translate_here(&event(t, dispute.clone())).unwrap();
                let Translation::OfPayment { change, .. } = got else {
                    panic!("{got:?}")
                };
                assert_eq!(
                    change.effect(top()),
                    PaymentEffect::Disputed {
                        top_up_id: top(),
                        dispute_id: "dp_1".into(),
                        amount: Nanos(25_000_000_000),
                        status: held
                    },
                    "{status}"
                );
            }
        }
    }

    #[test]
    fn an_inquiry_takes_nothing_and_locks_nothing() {
        for status in [
            "warning_needs_response",
            "warning_under_review",
            "warning_closed",
        ] {
            let inquiry = json!({"id": "dp_1", "object": "dispute", "amount": 2500,
                "currency": "usd", "charge": "ch_1", "payment_intent": "pi_1", "status": status});
            for t in [
                "charge.dispute.created",
                "charge.dispute.updated",
                "charge.dispute.closed",
            ] {
                assert!(
                    matches!(
                        translate_here(&event(t, inquiry.clone())),
                        Ok(Translation::Ignored(why)) if why.contains("inquiry")
                    ),
                    "{t} {status}"
                );
            }
        }
    }

    #[test]
    fn unknown_types_are_ignored_and_malformed_events_refused() {
        assert!(matches!(
            translate_here(&event("customer.created", json!({"id": "cus_1"}))),
            Ok(Translation::Ignored(_))
        ));
        let no_amount = json!({"id": "ch_1", "currency": "usd", "payment_intent": "pi_1"});
        assert!(translate_here(&event("charge.refunded", no_amount)).is_err());
        for bad in [
            "not json",
            "{}",
            r#"{"id": "evt_1", "type": "x"}"#,
            r#"{"id": "", "type": "x", "data": {"object": {}}}"#,
        ] {
            assert!(Event::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
