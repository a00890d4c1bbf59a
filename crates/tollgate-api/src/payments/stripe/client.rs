//! A small client of Stripe's API: the handful of calls tollgate makes, over one pooled
//! `reqwest` client (connect and whole-call timeouts, no redirects). Requests are
//! form-encoded (`application/x-www-form-urlencoded`, nested fields as `a[b][c]=v`), with
//! `Authorization: Bearer <secret key>`, and every `POST` carries an `Idempotency-Key`: the
//! provider answers a repeated key with its first answer (for 24 hours), so a retry never
//! creates a second customer, session, charge or refund. Keys and metadata name the
//! installation ([`keys`], `tollgate_installation`). Past the 24 hours, a refund is found again
//! by its metadata ([`Client::find_refund`]).
//!
//! Errors are typed by what the caller does next ([`StripeError`]): a card error (declined,
//! authentication required: the customer's bank said no), a retryable one (no answer, a 5xx,
//! 429, or a 409 for a key still in use: the same call with the same key is safe), or a
//! refusal (any other 4xx: 401 or 403 for the key, `idempotency_error`, a request that is
//! wrong or names something gone), which is never the card's fault.

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
    #[serde(default, deserialize_with = "metadata")]
    pub metadata: HashMap<String, String>,
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
/// them names the installation, the account and the top-up (a refund its own id too).
pub const META_INSTALLATION: &str = "tollgate_installation";
pub const META_ACCOUNT: &str = "tollgate_account";
pub const META_TOP_UP: &str = "tollgate_top_up_id";
pub const META_REFUND: &str = "tollgate_refund_id";

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

/// The idempotency keys of what tollgate creates at the provider: one per tollgate id of this
/// installation, so a repeat is the same call, and another deployment on the same provider
/// account (whose accounts and `auto-<n>` top-ups may bear the same names) never gets this
/// one's answer.
pub mod keys {
    use tollgate_core::ids::{AccountId, PurchaseId};

    pub fn customer(installation: &str, account: &AccountId) -> String {
        format!("tollgate-{installation}-customer-{account}")
    }
    pub fn checkout(installation: &str, account: &AccountId, top_up_id: &PurchaseId) -> String {
        format!("tollgate-{installation}-checkout-{account}-{top_up_id}")
    }
    pub fn top_up(installation: &str, account: &AccountId, top_up_id: &PurchaseId) -> String {
        format!("tollgate-{installation}-top-up-{account}-{top_up_id}")
    }
    pub fn refund(installation: &str, account: &AccountId, refund_id: &PurchaseId) -> String {
        format!("tollgate-{installation}-refund-{account}-{refund_id}")
    }
}

/// The client: one pooled HTTP client, the API's base URL, the secret key, and the
/// installation whose keys and metadata it sends.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    secret_key: String,
    installation: String,
}

/// Never prints the key.
impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("installation", &self.installation)
            .finish_non_exhaustive()
    }
}

/// A list the provider answers (`{"object": "list", "data": [...], "has_more": ...}`).
#[derive(Clone, Debug, Deserialize)]
struct List<T> {
    data: Vec<T>,
    #[serde(default)]
    has_more: bool,
}

/// The most refunds of one payment [`Client::refunds_of`] reads (pages of 100): far more than
/// a payment ever has.
const MAX_REFUNDS_LISTED: usize = 1000;

type Form = Vec<(String, String)>;

fn field(form: &mut Form, name: &str, value: impl ToString) {
    form.push((name.to_string(), value.to_string()));
}

impl Client {
    /// A client of the API at `base` (`https://api.stripe.com`), with `secret_key`, for the
    /// deployment `installation` (in every idempotency key and metadata it sends); each call
    /// connects within `timeout` and is answered within it, or fails as retryable.
    pub fn new(base: &str, secret_key: &str, timeout: Duration, installation: &str) -> Client {
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
            installation: installation.to_string(),
        }
    }

    /// The installation whose keys and metadata this client sends.
    pub fn installation(&self) -> &str {
        &self.installation
    }

    /// The metadata of this installation and `account` (and the top-up it is about) on what
    /// is created, under `prefix` (`metadata`, `payment_intent_data[metadata]`).
    fn metadata(
        &self,
        form: &mut Form,
        prefix: &str,
        account: &AccountId,
        top_up_id: Option<&PurchaseId>,
    ) {
        field(
            form,
            &format!("{prefix}[{META_INSTALLATION}]"),
            &self.installation,
        );
        field(form, &format!("{prefix}[{META_ACCOUNT}]"), account);
        if let Some(t) = top_up_id {
            field(form, &format!("{prefix}[{META_TOP_UP}]"), t);
        }
    }

    /// Creates the account's customer (`POST /v1/customers`), once per account: the key is the
    /// account's.
    pub async fn create_customer(&self, account: &AccountId) -> Result<Customer, StripeError> {
        let mut form = Form::new();
        self.metadata(&mut form, "metadata", account, None);
        field(
            &mut form,
            "description",
            format!("tollgate account {account}"),
        );
        self.post(
            "/v1/customers",
            &form,
            &keys::customer(&self.installation, account),
        )
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
            self.metadata(&mut form, prefix, r.account, Some(r.top_up_id));
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
            &keys::checkout(&self.installation, r.account, r.top_up_id),
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
        self.metadata(&mut form, "metadata", r.account, Some(r.top_up_id));
        field(
            &mut form,
            "description",
            format!("tollgate automatic top-up {}", r.top_up_id),
        );
        self.post(
            "/v1/payment_intents",
            &form,
            &keys::top_up(&self.installation, r.account, r.top_up_id),
        )
        .await
    }

    /// Refunds `amount_cents` of a payment (`POST /v1/refunds`), once per refund id: its key
    /// is the refund's (kept 24 hours by the provider), and its metadata names the refund
    /// (`tollgate_refund_id`), so [`Client::refunds_of`] finds it later.
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
        self.metadata(&mut form, "metadata", account, Some(purchase_id));
        field(&mut form, &format!("metadata[{META_REFUND}]"), refund_id);
        self.post(
            "/v1/refunds",
            &form,
            &keys::refund(&self.installation, account, refund_id),
        )
        .await
    }

    /// The refunds of a payment (`GET /v1/refunds?payment_intent=...`), every page, newest
    /// first as the provider lists them.
    pub async fn refunds_of(&self, payment_intent: &str) -> Result<Vec<Refund>, StripeError> {
        let mut all: Vec<Refund> = Vec::new();
        loop {
            let query = {
                let mut q = form_urlencoded::Serializer::new(String::new());
                q.append_pair("payment_intent", payment_intent);
                q.append_pair("limit", "100");
                if let Some(last) = all.last() {
                    q.append_pair("starting_after", &last.id);
                }
                q.finish()
            };
            let page: List<Refund> = self.get(&format!("/v1/refunds?{query}")).await?;
            let more = page.has_more && !page.data.is_empty();
            all.extend(page.data);
            if !more || all.len() >= MAX_REFUNDS_LISTED {
                return Ok(all);
            }
        }
    }

    /// The refund this installation made as `refund_id` of `account`'s payment
    /// `payment_intent`, if the provider has one: its metadata names them.
    pub async fn find_refund(
        &self,
        account: &AccountId,
        refund_id: &PurchaseId,
        payment_intent: &str,
    ) -> Result<Option<Refund>, StripeError> {
        let named = |r: &Refund, key: &str, value: &str| {
            r.metadata.get(key).map(String::as_str) == Some(value)
        };
        Ok(self
            .refunds_of(payment_intent)
            .await?
            .into_iter()
            .find(|r| {
                named(r, META_REFUND, refund_id.as_str())
                    && named(r, META_ACCOUNT, account.as_str())
                    && named(r, META_INSTALLATION, &self.installation)
            }))
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
    // A saved card the customer removed, or a Stripe customer deleted, is gone for good: a
    // failure of the charge, counted toward the rule's pause, not a refusal retried for a day.
    let gone = ["payment_method", "customer"]
        .into_iter()
        .find(|p| code.as_deref() == Some("resource_missing") && err["param"] == *p);
    if let Some(param) = gone {
        return StripeError::Card {
            code: format!("{param}_missing"),
            decline_code: None,
            message,
            payment_intent: None,
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
        let detached = json!({"error": {"type": "invalid_request_error", "code": "resource_missing",
            "param": "payment_method", "message": "No such PaymentMethod: 'pm_x'"}});
        assert!(
            matches!(error_of(400, &detached.to_string()), StripeError::Card { code, .. } if code == "payment_method_missing")
        );
        let deleted = json!({"error": {"type": "invalid_request_error", "code": "resource_missing",
            "param": "customer", "message": "No such customer: 'cus_x'"}});
        assert!(
            matches!(error_of(400, &deleted.to_string()), StripeError::Card { code, .. } if code == "customer_missing")
        );
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
    fn idempotency_keys_name_the_installation_and_the_tollgate_ids() {
        let a = AccountId::parse("acme").unwrap();
        let t = PurchaseId::parse("auto-3").unwrap();
        let i = "9f2c0d1e4b5a6c7d";
        assert_eq!(
            keys::customer(i, &a),
            "tollgate-9f2c0d1e4b5a6c7d-customer-acme"
        );
        assert_eq!(
            keys::checkout(i, &a, &t),
            "tollgate-9f2c0d1e4b5a6c7d-checkout-acme-auto-3"
        );
        assert_eq!(
            keys::top_up(i, &a, &t),
            "tollgate-9f2c0d1e4b5a6c7d-top-up-acme-auto-3"
        );
        assert_eq!(
            keys::refund(i, &a, &t),
            "tollgate-9f2c0d1e4b5a6c7d-refund-acme-auto-3"
        );
        // Another installation's keys for the same ids are other keys.
        assert_ne!(keys::top_up("0000", &a, &t), keys::top_up(i, &a, &t));
    }
}
