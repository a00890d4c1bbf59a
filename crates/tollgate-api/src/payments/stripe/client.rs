//! A small client of Stripe's API: the handful of calls tollgate makes, over one pooled
//! `reqwest` client (connect and whole-call timeouts, no redirects). Requests are
//! form-encoded (`application/x-www-form-urlencoded`, nested fields as `a[b][c]=v`), with
//! `Authorization: Bearer <secret key>`, and every `POST` carries an `Idempotency-Key`: the
//! provider answers a repeated key with its first answer (for 24 hours), so a retry never
//! creates a second customer, session, charge or refund.
//!
//! Errors are typed by what the caller does next ([`StripeError`]): a card error (declined,
//! authentication required: the customer's bank said no), a retryable one (no answer, a 5xx,
//! 429, or a 409 for a key still in use: the same call with the same key is safe), or a
//! refusal (any other 4xx: the request itself is wrong, or the thing it names is gone).

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use tollgate_core::ids::{AccountId, PurchaseId};

/// How much of an answer's text an error keeps.
const MAX_ERROR_TEXT: usize = 300;

/// What a call to the provider failed with. Never holds the secret key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StripeError {
    /// HTTP 402 `card_error`: the payment method was declined (`code` `card_declined`,
    /// `expired_card`, ...; `decline_code` the bank's reason) or needs the customer
    /// (`authentication_required`). `payment_intent` is the payment as it stands, when the
    /// provider sent it.
    Card {
        code: String,
        decline_code: Option<String>,
        message: String,
        payment_intent: Option<Box<PaymentIntent>>,
    },
    /// No answer (a timeout, a refused connection), or an answer that says to try again
    /// (5xx, 429, a 409 while the same idempotency key is in use): the same call with the
    /// same key is safe.
    Retryable {
        status: Option<u16>,
        message: String,
    },
    /// Any other answer: refused for good (`status`, the provider's error `kind` and `code`).
    Refused {
        status: u16,
        kind: String,
        code: Option<String>,
        message: String,
    },
}

impl StripeError {
    /// The provider's HTTP status, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            StripeError::Card { .. } => Some(402),
            StripeError::Retryable { status, .. } => *status,
            StripeError::Refused { status, .. } => Some(*status),
        }
    }

    /// The reason in the provider's words: the card error's code, the refusal's code or kind.
    pub fn reason(&self) -> String {
        match self {
            StripeError::Card { code, .. } => code.clone(),
            StripeError::Retryable { .. } => "provider_unreachable".into(),
            StripeError::Refused { code, kind, .. } => code.clone().unwrap_or_else(|| kind.clone()),
        }
    }
}

impl std::fmt::Display for StripeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StripeError::Card {
                code,
                decline_code,
                message,
                ..
            } => {
                write!(f, "card error {code}")?;
                if let Some(d) = decline_code {
                    write!(f, " ({d})")?;
                }
                write!(f, ": {message}")
            }
            StripeError::Retryable {
                status: Some(s),
                message,
            } => write!(f, "HTTP {s}, to be retried: {message}"),
            StripeError::Retryable {
                status: None,
                message,
            } => write!(f, "no answer, to be retried: {message}"),
            StripeError::Refused {
                status,
                kind,
                code,
                message,
            } => {
                write!(f, "HTTP {status} {kind}")?;
                if let Some(c) = code {
                    write!(f, " {c}")?;
                }
                write!(f, ": {message}")
            }
        }
    }
}

/// A customer (`cus_...`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Customer {
    pub id: String,
}

/// A Checkout Session (`cs_...`): where the customer pays.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct CheckoutSession {
    pub id: String,
    /// The page the customer pays on.
    #[serde(default)]
    pub url: Option<String>,
}

/// The payment error a payment intent last had.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct PaymentError {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub decline_code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// A payment (`pi_...`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct PaymentIntent {
    pub id: String,
    /// `succeeded`, `processing`, `requires_action`, `requires_payment_method`, `canceled`, ...
    pub status: String,
    /// In cents.
    pub amount: i64,
    /// What was received, in cents (the amount once it succeeded).
    #[serde(default)]
    pub amount_received: i64,
    pub currency: String,
    #[serde(default, deserialize_with = "id_or_object")]
    pub payment_method: Option<String>,
    #[serde(default)]
    pub setup_future_usage: Option<String>,
    #[serde(default, deserialize_with = "metadata")]
    pub metadata: HashMap<String, String>,
    #[serde(default)]
    pub last_payment_error: Option<PaymentError>,
    #[serde(default, deserialize_with = "id_or_object")]
    pub latest_charge: Option<String>,
}

/// A refund (`re_...`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Refund {
    pub id: String,
    /// In cents.
    pub amount: i64,
    #[serde(default, deserialize_with = "id_or_object")]
    pub charge: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
}

/// A charge (`ch_...`): what a payment took from the card, and how much of it is refunded.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Charge {
    pub id: String,
    /// In cents.
    pub amount: i64,
    /// Refunded so far, in cents (cumulative).
    #[serde(default)]
    pub amount_refunded: i64,
    #[serde(default, deserialize_with = "id_or_object")]
    pub payment_intent: Option<String>,
    pub currency: String,
}

/// An expandable field: its id, or the object (with its `id`) when expanded; `null` as none.
fn id_or_object<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(id_of(&Value::deserialize(d)?))
}

/// The id an expandable field names (a string, or an object's `id`).
pub fn id_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(o) => o.get("id").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// Metadata: string values (others are left out); `null` as none.
fn metadata<'de, D: serde::Deserializer<'de>>(d: D) -> Result<HashMap<String, String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Object(o) => o
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
            .collect(),
        _ => HashMap::new(),
    })
}

/// The metadata keys tollgate sets on what it creates at the provider: every event about
/// them names the account and the top-up.
pub const META_ACCOUNT: &str = "tollgate_account";
pub const META_TOP_UP: &str = "tollgate_top_up_id";

/// A Checkout Session to create for a top-up.
#[derive(Clone, Debug)]
pub struct CheckoutRequest<'a> {
    pub account: &'a AccountId,
    pub top_up_id: &'a PurchaseId,
    pub amount_cents: i64,
    /// The provider's customer of the account.
    pub customer: &'a str,
    pub success_url: &'a str,
    pub cancel_url: &'a str,
    /// The customer agreed to save the card for automatic top-ups.
    pub save_payment_method: bool,
    /// The line's product name, as the checkout page and the receipt show it.
    pub product_name: &'a str,
}

/// An off-session payment of a saved payment method (an automatic top-up).
#[derive(Clone, Debug)]
pub struct OffSessionRequest<'a> {
    pub account: &'a AccountId,
    pub top_up_id: &'a PurchaseId,
    pub amount_cents: i64,
    pub customer: &'a str,
    pub payment_method: &'a str,
}

/// The idempotency keys of what tollgate creates at the provider: one per tollgate id, so a
/// repeat is the same call.
pub mod keys {
    use tollgate_core::ids::{AccountId, PurchaseId};

    pub fn customer(account: &AccountId) -> String {
        format!("tollgate-customer-{account}")
    }
    pub fn checkout(account: &AccountId, top_up_id: &PurchaseId) -> String {
        format!("tollgate-checkout-{account}-{top_up_id}")
    }
    pub fn top_up(account: &AccountId, top_up_id: &PurchaseId) -> String {
        format!("tollgate-top-up-{account}-{top_up_id}")
    }
    pub fn refund(account: &AccountId, refund_id: &PurchaseId) -> String {
        format!("tollgate-refund-{account}-{refund_id}")
    }
}

/// The client: one pooled HTTP client, the API's base URL and the secret key.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    secret_key: String,
}

/// Never prints the key.
impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

type Form = Vec<(String, String)>;

fn field(form: &mut Form, name: &str, value: impl ToString) {
    form.push((name.to_string(), value.to_string()));
}

impl Client {
    /// A client of the API at `base` (`https://api.stripe.com`), with `secret_key`; each call
    /// connects within `timeout` and is answered within it, or fails as retryable.
    pub fn new(base: &str, secret_key: &str, timeout: Duration) -> Client {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client with these settings builds");
        Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            secret_key: secret_key.to_string(),
        }
    }

    /// Creates the account's customer (`POST /v1/customers`), once per account: the key is the
    /// account's.
    pub async fn create_customer(&self, account: &AccountId) -> Result<Customer, StripeError> {
        let mut form = Form::new();
        field(&mut form, &format!("metadata[{META_ACCOUNT}]"), account);
        field(
            &mut form,
            "description",
            format!("tollgate account {account}"),
        );
        self.post("/v1/customers", &form, &keys::customer(account))
            .await
    }

    /// Creates the Checkout Session of a top-up (`POST /v1/checkout/sessions`): one line of
    /// `amount_cents` USD, the account and top-up in the session's and the payment's metadata,
    /// and the card saved for off-session charges when the customer agreed.
    pub async fn create_checkout_session(
        &self,
        r: &CheckoutRequest<'_>,
    ) -> Result<CheckoutSession, StripeError> {
        let mut form = Form::new();
        field(&mut form, "mode", "payment");
        field(&mut form, "customer", r.customer);
        field(
            &mut form,
            "line_items[0][price_data][currency]",
            super::super::CURRENCY,
        );
        field(
            &mut form,
            "line_items[0][price_data][unit_amount]",
            r.amount_cents,
        );
        field(
            &mut form,
            "line_items[0][price_data][product_data][name]",
            r.product_name,
        );
        field(&mut form, "line_items[0][quantity]", 1);
        field(&mut form, "success_url", r.success_url);
        field(&mut form, "cancel_url", r.cancel_url);
        field(&mut form, "client_reference_id", r.top_up_id);
        for prefix in ["metadata", "payment_intent_data[metadata]"] {
            field(&mut form, &format!("{prefix}[{META_ACCOUNT}]"), r.account);
            field(&mut form, &format!("{prefix}[{META_TOP_UP}]"), r.top_up_id);
        }
        if r.save_payment_method {
            field(
                &mut form,
                "payment_intent_data[setup_future_usage]",
                "off_session",
            );
        }
        self.post(
            "/v1/checkout/sessions",
            &form,
            &keys::checkout(r.account, r.top_up_id),
        )
        .await
    }

    /// Creates and confirms an off-session payment with the saved payment method
    /// (`POST /v1/payment_intents`, `confirm=true&off_session=true`): an automatic top-up.
    /// Its key is the top-up's, so however often it is sent, there is one payment.
    pub async fn create_off_session_payment(
        &self,
        r: &OffSessionRequest<'_>,
    ) -> Result<PaymentIntent, StripeError> {
        let mut form = Form::new();
        field(&mut form, "amount", r.amount_cents);
        field(&mut form, "currency", super::super::CURRENCY);
        field(&mut form, "customer", r.customer);
        field(&mut form, "payment_method", r.payment_method);
        field(&mut form, "off_session", "true");
        field(&mut form, "confirm", "true");
        field(&mut form, &format!("metadata[{META_ACCOUNT}]"), r.account);
        field(&mut form, &format!("metadata[{META_TOP_UP}]"), r.top_up_id);
        field(
            &mut form,
            "description",
            format!("tollgate automatic top-up {}", r.top_up_id),
        );
        self.post(
            "/v1/payment_intents",
            &form,
            &keys::top_up(r.account, r.top_up_id),
        )
        .await
    }

    /// Refunds `amount_cents` of a payment (`POST /v1/refunds`), once per refund id.
    pub async fn create_refund(
        &self,
        account: &AccountId,
        refund_id: &PurchaseId,
        purchase_id: &PurchaseId,
        payment_intent: &str,
        amount_cents: i64,
    ) -> Result<Refund, StripeError> {
        let mut form = Form::new();
        field(&mut form, "payment_intent", payment_intent);
        field(&mut form, "amount", amount_cents);
        field(&mut form, &format!("metadata[{META_ACCOUNT}]"), account);
        field(&mut form, &format!("metadata[{META_TOP_UP}]"), purchase_id);
        field(&mut form, "metadata[tollgate_refund_id]", refund_id);
        self.post("/v1/refunds", &form, &keys::refund(account, refund_id))
            .await
    }

    /// A charge (`GET /v1/charges/{id}`): its cumulative refunded amount.
    pub async fn charge(&self, id: &str) -> Result<Charge, StripeError> {
        self.get(&format!("/v1/charges/{}", path_segment(id))).await
    }

    /// A payment (`GET /v1/payment_intents/{id}`): its status and metadata.
    pub async fn payment_intent(&self, id: &str) -> Result<PaymentIntent, StripeError> {
        self.get(&format!("/v1/payment_intents/{}", path_segment(id)))
            .await
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        form: &Form,
        idempotency_key: &str,
    ) -> Result<T, StripeError> {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter())
            .finish();
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.secret_key)
            .header("Idempotency-Key", idempotency_key)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body);
        answer(req.send().await).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, StripeError> {
        let req = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.secret_key);
        answer(req.send().await).await
    }
}

/// An id as a path segment: ids are `[A-Za-z0-9_]`, anything else is escaped.
fn path_segment(id: &str) -> String {
    form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

/// The provider's answer, typed: its object, or what the error means for the caller.
async fn answer<T: DeserializeOwned>(
    sent: Result<reqwest::Response, reqwest::Error>,
) -> Result<T, StripeError> {
    let resp = sent.map_err(|e| StripeError::Retryable {
        status: None,
        message: crate::error::chain(&e.without_url()),
    })?;
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(|e| StripeError::Retryable {
        status: Some(status),
        message: format!("the answer was cut off: {}", e.without_url()),
    })?;
    if (200..300).contains(&status) {
        // An answer that is not the object may still mean it was made: the same call with the
        // same key gets the same answer, so it is retried, never taken as a refusal.
        return serde_json::from_str(&text).map_err(|e| StripeError::Retryable {
            status: Some(status),
            message: format!("an answer tollgate cannot read: {e}"),
        });
    }
    Err(error_of(status, &text))
}

/// What an error answer means.
pub fn error_of(status: u16, text: &str) -> StripeError {
    let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let err = &body["error"];
    let s = |v: &Value| v.as_str().map(str::to_string);
    let message = s(&err["message"]).unwrap_or_else(|| {
        let mut t: String = text.chars().take(MAX_ERROR_TEXT).collect();
        if t.is_empty() {
            t = "no error message".into();
        }
        t
    });
    let kind = s(&err["type"]).unwrap_or_else(|| "api_error".into());
    let code = s(&err["code"]);
    if status == 429 || status >= 500 || status == 409 {
        return StripeError::Retryable {
            status: Some(status),
            message,
        };
    }
    if status == 402 || kind == "card_error" {
        return StripeError::Card {
            code: code.unwrap_or_else(|| "card_declined".into()),
            decline_code: s(&err["decline_code"]),
            message,
            payment_intent: serde_json::from_value(err["payment_intent"].clone()).ok(),
        };
    }
    StripeError::Refused {
        status,
        kind,
        code,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_are_typed_by_what_the_caller_does_next() {
        let declined = json!({"error": {"type": "card_error", "code": "card_declined",
            "decline_code": "insufficient_funds", "message": "Your card has insufficient funds.",
            "payment_intent": {"id": "pi_1", "status": "requires_payment_method", "amount": 2000,
                "currency": "usd", "metadata": {"tollgate_account": "acme"}}}});
        match error_of(402, &declined.to_string()) {
            StripeError::Card {
                code,
                decline_code,
                payment_intent,
                ..
            } => {
                assert_eq!(code, "card_declined");
                assert_eq!(decline_code.as_deref(), Some("insufficient_funds"));
                let pi = payment_intent.expect("the payment");
                assert_eq!((pi.id.as_str(), pi.amount), ("pi_1", 2000));
                assert_eq!(pi.metadata["tollgate_account"], "acme");
            }
            other => panic!("{other:?}"),
        }
        for status in [500, 502, 503, 429, 409] {
            assert!(
                matches!(error_of(status, "oops"), StripeError::Retryable { status: Some(s), .. } if s == status),
                "{status}"
            );
        }
        let missing = json!({"error": {"type": "invalid_request_error", "code": "resource_missing",
            "message": "No such payment_method: 'pm_x'"}});
        let e = error_of(400, &missing.to_string());
        assert_eq!(e.reason(), "resource_missing");
        assert_eq!(e.status(), Some(400));
        assert!(e.to_string().contains("No such payment_method"), "{e}");
        let unauthorized = error_of(401, "{\"error\": {\"type\": \"invalid_request_error\"}}");
        assert_eq!(unauthorized.reason(), "invalid_request_error");
    }

    #[test]
    fn an_expandable_field_is_its_id_or_its_object_id() {
        let pi: PaymentIntent = serde_json::from_value(json!({"id": "pi_1",
            "status": "succeeded", "amount": 500, "amount_received": 500, "currency": "usd",
            "payment_method": {"id": "pm_1", "object": "payment_method"},
            "latest_charge": "ch_1", "metadata": {"a": "b", "n": 1}, "setup_future_usage": null}))
        .unwrap();
        assert_eq!(pi.payment_method.as_deref(), Some("pm_1"));
        assert_eq!(pi.latest_charge.as_deref(), Some("ch_1"));
        assert_eq!(pi.metadata.len(), 1, "non-string values left out");
        assert_eq!(pi.setup_future_usage, None);
    }

    #[test]
    fn idempotency_keys_name_the_tollgate_ids() {
        let a = AccountId::parse("acme").unwrap();
        let t = PurchaseId::parse("auto-3").unwrap();
        assert_eq!(keys::customer(&a), "tollgate-customer-acme");
        assert_eq!(keys::checkout(&a, &t), "tollgate-checkout-acme-auto-3");
        assert_eq!(keys::top_up(&a, &t), "tollgate-top-up-acme-auto-3");
        assert_eq!(keys::refund(&a, &t), "tollgate-refund-acme-auto-3");
    }
}
