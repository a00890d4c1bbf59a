//! Billing events: what the platform is told about (webhooks, API.md section 6).
//!
//! The core records an event in the batch whose operation caused it
//! ([`crate::machine::BatchState::events`]), so the store writes it in the same db transaction
//! as its cause (a durable outbox) and it is delivered only if that commit happened. An event
//! is a typed value here; the store encodes it, and the HTTP edge renders it (adding a USD
//! number beside every `*_nano_usd` field) when it is delivered.

use serde::{Deserialize, Serialize};

use crate::ids::{AccountId, ApiKeyId, PurchaseId};
use crate::machine::LockReason;
use crate::money::Nanos;
use crate::time::Timestamp;

/// Every event type, as receivers subscribe to it (`"balance.low"`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "balance.low")]
    BalanceLow,
    #[serde(rename = "account.locked")]
    AccountLocked,
    #[serde(rename = "account.unlocked")]
    AccountUnlocked,
    #[serde(rename = "spending_limit.alert")]
    SpendingLimitAlert,
    #[serde(rename = "spending_limit.reached")]
    SpendingLimitReached,
    #[serde(rename = "purchase.succeeded")]
    PurchaseSucceeded,
    #[serde(rename = "invoice.issued")]
    InvoiceIssued,
    #[serde(rename = "credits.expiring")]
    CreditsExpiring,
    #[serde(rename = "top_up.started")]
    TopUpStarted,
    #[serde(rename = "top_up.succeeded")]
    TopUpSucceeded,
    #[serde(rename = "top_up.failed")]
    TopUpFailed,
    #[serde(rename = "top_up.paused")]
    TopUpPaused,
    #[serde(rename = "payment.refunded")]
    PaymentRefunded,
    #[serde(rename = "payment.disputed")]
    PaymentDisputed,
    /// Internal: a gateway request with a `fal_webhook` completed. Not subscribable (not in
    /// [`EventType::ALL`], nor sent to `*` subscriptions): it is the outbox entry of the
    /// request's own webhook, delivered by the row subscribed to it by name.
    #[serde(rename = "request.completed")]
    RequestCompleted,
}

impl EventType {
    /// Every type, in the order the documentation lists them.
    pub const ALL: [EventType; 14] = [
        EventType::BalanceLow,
        EventType::AccountLocked,
        EventType::AccountUnlocked,
        EventType::SpendingLimitAlert,
        EventType::SpendingLimitReached,
        EventType::PurchaseSucceeded,
        EventType::InvoiceIssued,
        EventType::CreditsExpiring,
        EventType::TopUpStarted,
        EventType::TopUpSucceeded,
        EventType::TopUpFailed,
        EventType::TopUpPaused,
        EventType::PaymentRefunded,
        EventType::PaymentDisputed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::BalanceLow => "balance.low",
            EventType::AccountLocked => "account.locked",
            EventType::AccountUnlocked => "account.unlocked",
            EventType::SpendingLimitAlert => "spending_limit.alert",
            EventType::SpendingLimitReached => "spending_limit.reached",
            EventType::PurchaseSucceeded => "purchase.succeeded",
            EventType::InvoiceIssued => "invoice.issued",
            EventType::CreditsExpiring => "credits.expiring",
            EventType::TopUpStarted => "top_up.started",
            EventType::TopUpSucceeded => "top_up.succeeded",
            EventType::TopUpFailed => "top_up.failed",
            EventType::TopUpPaused => "top_up.paused",
            EventType::PaymentRefunded => "payment.refunded",
            EventType::PaymentDisputed => "payment.disputed",
            EventType::RequestCompleted => "request.completed",
        }
    }

    /// The types only tollgate's own rows receive (see [`EventType::RequestCompleted`]).
    pub const INTERNAL: [EventType; 1] = [EventType::RequestCompleted];

    /// A type by its name: a subscribable one or an internal one.
    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL
            .into_iter()
            .chain(EventType::INTERNAL)
            .find(|t| t.as_str() == s)
    }

    /// Whether a subscription may name it (it is in [`EventType::ALL`]).
    pub fn is_subscribable(self) -> bool {
        EventType::ALL.contains(&self)
    }
}

/// What a spending-limit event says about its limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitFacts {
    pub limit_id: String,
    /// `"account"` or `"api_key"`.
    pub scope: String,
    pub api_key_id: Option<ApiKeyId>,
    /// `"day"`, `"week"` or `"month"`.
    pub period: String,
    pub timezone: String,
    /// `"block"` or `"alert"`.
    pub action: String,
    pub amount_nano_usd: Nanos,
    /// The period's spend when the event was recorded (settled charges).
    pub spent_nano_usd: Nanos,
    #[serde(with = "rfc3339")]
    pub period_start: Timestamp,
    #[serde(with = "rfc3339")]
    pub resets_at: Timestamp,
}

/// An event's data, by type. Amounts are exact nano-USD.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum EventData {
    /// The balance crossed below the account's `low_balance_usd` (from at or above it).
    #[serde(rename = "balance.low")]
    BalanceLow {
        balance_nano_usd: Nanos,
        low_balance_nano_usd: Nanos,
    },
    /// The account began refusing new requests.
    #[serde(rename = "account.locked")]
    AccountLocked {
        lock_reason: LockReason,
        balance_nano_usd: Nanos,
        /// The account's serverless runners alive when it locked (filled in before the batch
        /// is written, [`crate::serverless::name_live_runners`]); the platform decides
        /// whether to stop them.
        #[serde(default)]
        running_runners: Vec<crate::serverless::LiveRunner>,
    },
    /// The account accepts requests again.
    #[serde(rename = "account.unlocked")]
    AccountUnlocked { balance_nano_usd: Nanos },
    /// The period's spend reached one of the limit's alert thresholds (once per threshold
    /// per period).
    #[serde(rename = "spending_limit.alert")]
    SpendingLimitAlert {
        #[serde(flatten)]
        limit: LimitFacts,
        threshold_percent: u32,
    },
    /// The period's spend reached the limit, or a `block` limit first refused a start in the
    /// period (once per period).
    #[serde(rename = "spending_limit.reached")]
    SpendingLimitReached {
        #[serde(flatten)]
        limit: LimitFacts,
    },
    #[serde(rename = "purchase.succeeded")]
    PurchaseSucceeded {
        purchase_id: PurchaseId,
        amount_nano_usd: Nanos,
        /// `"paid"` or `"free"`.
        kind: String,
        balance_nano_usd: Nanos,
        #[serde(with = "rfc3339::option")]
        expires_at: Option<Timestamp>,
    },
    /// An invoice was issued. Its number is given by the store as the batch commits
    /// (`number` is empty in the core's record and filled in by the store); `invoice` is the
    /// index of the invoice in the batch's [`crate::machine::BatchState::new_invoices`].
    #[serde(rename = "invoice.issued")]
    InvoiceIssued {
        #[serde(skip)]
        invoice: usize,
        invoice_id: String,
        number: String,
        /// `"top_up"`, `"usage"` or `"credit_note"`.
        kind: String,
        status: String,
        total_nano_usd: Nanos,
        #[serde(with = "rfc3339")]
        period_start: Timestamp,
        #[serde(with = "rfc3339")]
        period_end: Timestamp,
    },
    /// Credits of a purchase expire within seven days (once per purchase).
    #[serde(rename = "credits.expiring")]
    CreditsExpiring {
        purchase_id: PurchaseId,
        remaining_nano_usd: Nanos,
        #[serde(with = "rfc3339")]
        expires_at: Timestamp,
    },
    /// An auto top-up was started: the provider is to charge `payment_method` of `customer`
    /// off-session for `amount_nano_usd`, with the top-up's id as idempotency key. (The
    /// payment provider's own delivery is subscribed to this type: it is how the charge leaves
    /// the write path, through the outbox.)
    #[serde(rename = "top_up.started")]
    TopUpStarted {
        top_up_id: PurchaseId,
        /// `"auto"`.
        kind: String,
        amount_nano_usd: Nanos,
        customer: String,
        payment_method: String,
    },
    /// A top-up's payment succeeded and its credits were added (once per top-up).
    #[serde(rename = "top_up.succeeded")]
    TopUpSucceeded {
        top_up_id: PurchaseId,
        /// `"checkout"` or `"auto"`.
        kind: String,
        amount_nano_usd: Nanos,
        balance_nano_usd: Nanos,
    },
    /// A top-up's payment failed (nothing was credited).
    #[serde(rename = "top_up.failed")]
    TopUpFailed {
        top_up_id: PurchaseId,
        kind: String,
        amount_nano_usd: Nanos,
        /// The provider's reason (`card_declined`, `authentication_required`, ...).
        reason: String,
        /// Auto top-ups: failures in a row so far.
        failures: u32,
    },
    /// The auto top-up rule paused: `reason` is `authentication_required` or
    /// `repeated_failures`; the customer enables it again.
    #[serde(rename = "top_up.paused")]
    TopUpPaused { reason: String, failures: u32 },
    /// A payment was refunded (more): the credits taken back.
    #[serde(rename = "payment.refunded")]
    PaymentRefunded {
        purchase_id: PurchaseId,
        /// Taken back now.
        amount_nano_usd: Nanos,
        /// Refunded in all.
        refunded_nano_usd: Nanos,
        balance_nano_usd: Nanos,
    },
    /// A payment's dispute opened or was decided.
    #[serde(rename = "payment.disputed")]
    PaymentDisputed {
        purchase_id: PurchaseId,
        dispute_id: String,
        /// `"open"`, `"won"` or `"lost"`.
        status: String,
        amount_nano_usd: Nanos,
        balance_nano_usd: Nanos,
    },
    /// A gateway request with a `fal_webhook` completed: its answer is posted to `url`.
    #[serde(rename = "request.completed")]
    RequestCompleted {
        request_id: crate::ids::RequestId,
        endpoint_id: crate::ids::EndpointId,
        url: String,
    },
}

impl EventData {
    pub fn event_type(&self) -> EventType {
        match self {
            EventData::BalanceLow { .. } => EventType::BalanceLow,
            EventData::AccountLocked { .. } => EventType::AccountLocked,
            EventData::AccountUnlocked { .. } => EventType::AccountUnlocked,
            EventData::SpendingLimitAlert { .. } => EventType::SpendingLimitAlert,
            EventData::SpendingLimitReached { .. } => EventType::SpendingLimitReached,
            EventData::PurchaseSucceeded { .. } => EventType::PurchaseSucceeded,
            EventData::InvoiceIssued { .. } => EventType::InvoiceIssued,
            EventData::CreditsExpiring { .. } => EventType::CreditsExpiring,
            EventData::TopUpStarted { .. } => EventType::TopUpStarted,
            EventData::TopUpSucceeded { .. } => EventType::TopUpSucceeded,
            EventData::TopUpFailed { .. } => EventType::TopUpFailed,
            EventData::TopUpPaused { .. } => EventType::TopUpPaused,
            EventData::PaymentRefunded { .. } => EventType::PaymentRefunded,
            EventData::PaymentDisputed { .. } => EventType::PaymentDisputed,
            EventData::RequestCompleted { .. } => EventType::RequestCompleted,
        }
    }
}

/// An event recorded by a batch: written to the outbox in the batch's db transaction, where it
/// gets its id (`evt_...`, unique and increasing in commit order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    pub account: AccountId,
    /// The batch's `now`.
    pub at: Timestamp,
    pub data: EventData,
}

/// Times in events are RFC 3339 text (as every time the API renders), so the stored event is
/// what receivers read.
mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::time::Timestamp;

    pub fn serialize<S: Serializer>(at: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::time::rfc3339(*at))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(d)?;
        chrono::DateTime::parse_from_rfc3339(&text)
            .map(|t| Timestamp(t.timestamp_millis()))
            .map_err(serde::de::Error::custom)
    }

    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        use crate::time::Timestamp;

        pub fn serialize<S: Serializer>(at: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
            match at {
                Some(at) => super::serialize(at, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|text| {
                    chrono::DateTime::parse_from_rfc3339(&text)
                        .map(|t| Timestamp(t.timestamp_millis()))
                        .map_err(serde::de::Error::custom)
                })
                .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_round_trips_through_its_stored_json_with_rfc3339_times() {
        let data = EventData::CreditsExpiring {
            purchase_id: PurchaseId::parse("p-1").unwrap(),
            remaining_nano_usd: Nanos(2_500_000_000),
            expires_at: Timestamp(1_767_225_600_000),
        };
        let json = serde_json::to_value(&data).unwrap();
        assert_eq!(json["type"], "credits.expiring");
        assert_eq!(json["data"]["expires_at"], "2026-01-01T00:00:00.000Z");
        assert_eq!(json["data"]["remaining_nano_usd"], 2_500_000_000i64);
        assert_eq!(serde_json::from_value::<EventData>(json).unwrap(), data);
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            let quoted = serde_json::to_string(&t).unwrap();
            assert_eq!(quoted, format!("\"{}\"", t.as_str()));
        }
    }
}
