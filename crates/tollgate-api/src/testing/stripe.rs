//! A stand-in of Stripe's API for the tests: a small axum server on a free loopback port that
//! answers the calls tollgate makes in Stripe's shapes (form-encoded requests, `Bearer` key,
//! JSON objects and error envelopes), records every request (method, path, form, idempotency
//! key), and keeps Stripe's idempotency: a repeated `Idempotency-Key` gets the first answer
//! again (a different request under the same key is refused, as Stripe does), until it
//! forgets them ([`StripeStandIn::forget_idempotency_keys`], as Stripe does after 24 hours).
//! Off-session payments follow a script ([`PaymentScript`]: succeed, decline, authentication
//! required, a 500 after the payment was made, a 401), and can be held
//! ([`StripeStandIn::hold_payments`]) to model a crash between the provider's work and its
//! answer; reads can be made to fail ([`StripeStandIn::fail_reads`]) to lose what follows a
//! call. A payment's refunds are listed (`GET /v1/refunds?payment_intent=...`).
//!
//! The customer's side of a checkout and the provider's dashboard are methods
//! ([`StripeStandIn::pay_checkout`], [`StripeStandIn::refund_in_dashboard`],
//! [`StripeStandIn::dispute`]) that change the stand-in's state and return the objects the
//! provider's events carry; [`StripeStandIn::event`] wraps one as an event and
//! [`EventSender`] signs and POSTs it to tollgate's webhook.

use crate::payments::stripe::signature;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

/// The secret key the stand-in accepts, and the webhook signing secret tests configure.
pub const SECRET_KEY: &str = "sk_test_tollgate_stand_in";
pub const WEBHOOK_SECRET: &str = "whsec_tollgate_stand_in";
/// The installation id of [`StripeStandIn::settings`].
pub const INSTALLATION: &str = "standin";

/// What the next off-session payment does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PaymentScript {
    /// It succeeds (the default).
    Succeed,
    /// The card is declined: 402 `card_declined` with this `decline_code`.
    Decline(&'static str),
    /// The bank asks the customer to authenticate: 402 `authentication_required`.
    AuthenticationRequired,
    /// The payment is made (and kept as the key's answer), but this answer is a 500, as a
    /// proxy or a crash would lose it: the same key later gets the payment.
    FailAfterRecording,
    /// The provider is down: 503, nothing made, nothing kept for the key.
    Unavailable,
    /// The key is refused: 401 `api_key_invalid`, nothing made, nothing kept for the key.
    Unauthorized,
}

/// A request the stand-in got.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// The form fields, in order.
    pub form: Vec<(String, String)>,
    pub idempotency_key: Option<String>,
}

impl Recorded {
    /// The form field `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

type Form = Vec<(String, String)>;
/// What a call answered: its status and body.
type Answer = (u16, Value);
/// What a create answers: the key's answer, and the different answer this request gets (a
/// 500 after the work was done), if any.
type Created = (u16, Value, Option<Answer>);

#[derive(Default)]
struct Objects {
    customers: HashMap<String, Value>,
    sessions: HashMap<String, Value>,
    payment_intents: HashMap<String, Value>,
    charges: HashMap<String, Value>,
    refunds: HashMap<String, Value>,
}

#[derive(Default)]
struct Shared {
    got: Mutex<Vec<Recorded>>,
    /// Idempotency key → (the request's form, the answer's status and body).
    answers: Mutex<HashMap<String, (Form, u16, Value)>>,
    objects: Mutex<Objects>,
    script: Mutex<VecDeque<PaymentScript>>,
    next_id: Mutex<u64>,
    /// When set, off-session payment answers wait for a permit (see `hold_payments`).
    hold: Mutex<Option<Arc<Semaphore>>>,
    arrived: Notify,
    base: Mutex<String>,
    /// Reads (`GET`) of paths starting with a prefix that answer 500, and how many more.
    failing_reads: Mutex<Vec<(String, usize)>>,
}

impl Shared {
    fn id(&self, prefix: &str) -> String {
        let mut n = self.next_id.lock().unwrap();
        *n += 1;
        format!("{prefix}_{n:06}")
    }
}

/// The stand-in (see the module's documentation).
#[derive(Clone)]
pub struct StripeStandIn {
    /// `http://127.0.0.1:<port>`: the API base tollgate is configured with.
    pub base: String,
    shared: Arc<Shared>,
}

fn form_of(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn error(status: u16, kind: &str, code: &str, message: &str) -> Answer {
    (
        status,
        json!({"error": {"type": kind, "code": code, "message": message}}),
    )
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `prefix[key]` fields as a JSON object.
fn nested(form: &[(String, String)], prefix: &str) -> Value {
    let mut out = serde_json::Map::new();
    for (k, v) in form {
        if let Some(rest) = k.strip_prefix(prefix).and_then(|r| r.strip_prefix('[')) {
            if let Some(key) = rest.strip_suffix(']').filter(|k| !k.contains('[')) {
                out.insert(key.to_string(), json!(v));
            }
        }
    }
    Value::Object(out)
}

impl StripeStandIn {
    /// Starts a stand-in on a free loopback port.
    pub async fn start() -> StripeStandIn {
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .route("/v1/customers", post(create))
            .route("/v1/checkout/sessions", post(create))
            .route("/v1/payment_intents", post(create))
            .route("/v1/refunds", post(create).get(list_refunds))
            .route("/v1/charges/{id}", get(retrieve))
            .route("/v1/payment_intents/{id}", get(retrieve))
            .route("/checkout/{id}", get(checkout_page))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        *shared.base.lock().unwrap() = base.clone();
        tokio::spawn(async move { axum::serve(listener, app).await });
        StripeStandIn { base, shared }
    }

    /// The payment settings of a tollgate that talks to this stand-in (the installation
    /// [`INSTALLATION`], which [`crate::payments::Payments::start`] replaces with the
    /// database's).
    pub fn settings(&self) -> crate::payments::PaymentSettings {
        crate::payments::PaymentSettings {
            secret_key: SECRET_KEY.into(),
            webhook_secrets: vec![WEBHOOK_SECRET.into()],
            api_base: self.base.clone(),
            timeout: Duration::from_secs(5),
            installation: INSTALLATION.into(),
            ..crate::payments::PaymentSettings::default()
        }
    }

    /// Every request so far, in arrival order.
    pub fn got(&self) -> Vec<Recorded> {
        self.shared.got.lock().unwrap().clone()
    }

    /// The requests to `path` (`POST` ones create), in order.
    pub fn requests(&self, method: &str, path: &str) -> Vec<Recorded> {
        self.got()
            .into_iter()
            .filter(|r| r.method == method && r.path == path)
            .collect()
    }

    /// The payments made (created, whatever became of them), in creation order.
    pub fn payment_intents(&self) -> Vec<Value> {
        let mut v: Vec<Value> = self
            .shared
            .objects
            .lock()
            .unwrap()
            .payment_intents
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        v
    }

    /// The off-session payments next created do these, in order (then succeed).
    pub fn script(&self, outcomes: impl IntoIterator<Item = PaymentScript>) {
        self.shared.script.lock().unwrap().extend(outcomes);
    }

    /// From now on, an off-session payment is made and recorded, and its answer waits until
    /// [`StripeStandIn::release`] (a crash of the caller meanwhile loses it).
    pub fn hold_payments(&self) {
        *self.shared.hold.lock().unwrap() = Some(Arc::new(Semaphore::new(0)));
    }

    /// Forgets every idempotency key, as the provider does 24 hours after a key's first use:
    /// a repeated key then makes the thing again.
    pub fn forget_idempotency_keys(&self) {
        self.shared.answers.lock().unwrap().clear();
    }

    /// The next `n` reads (`GET`) of a path starting with `prefix` (`/v1/charges/`) answer
    /// 500, as a provider's blip or a lost connection would: what the caller wanted to do
    /// after them is not done.
    pub fn fail_reads(&self, prefix: &str, n: usize) {
        self.shared
            .failing_reads
            .lock()
            .unwrap()
            .push((prefix.to_string(), n));
    }

    /// The refunds made, in creation order.
    pub fn refunds(&self) -> Vec<Value> {
        let mut v: Vec<Value> = self
            .shared
            .objects
            .lock()
            .unwrap()
            .refunds
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        v
    }

    /// Lets the held answers go, and answers at once from now on.
    pub fn release(&self) {
        if let Some(s) = self.shared.hold.lock().unwrap().take() {
            s.add_permits(Semaphore::MAX_PERMITS / 2);
        }
    }

    /// Waits until at least `n` requests to `path` arrived (failing after 30 s: a failsafe,
    /// not a timing assertion).
    pub async fn wait_for(&self, method: &str, path: &str, n: usize) -> Vec<Recorded> {
        let wait = async {
            loop {
                let arrived = self.shared.arrived.notified();
                let got = self.requests(method, path);
                if got.len() >= n {
                    return got;
                }
                arrived.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("{n} requests to {path} never arrived: {:?}", self.got()))
    }

    /// The customer pays the checkout session `session_id` at the provider: its payment is
    /// made (the card saved when the session asked for it) and the session completed. Returns
    /// the session and the payment, as `checkout.session.completed` and
    /// `payment_intent.succeeded` carry them.
    pub fn pay_checkout(&self, session_id: &str) -> (Value, Value) {
        let mut o = self.shared.objects.lock().unwrap();
        let mut session = o
            .sessions
            .get(session_id)
            .unwrap_or_else(|| panic!("no checkout session {session_id}"))
            .clone();
        let amount = session["amount_total"].as_i64().expect("amount");
        let (pi_id, ch_id, pm_id) = (
            self.shared.id("pi"),
            self.shared.id("ch"),
            self.shared.id("pm"),
        );
        let pi = json!({
            "id": pi_id, "object": "payment_intent", "amount": amount,
            "amount_received": amount, "currency": "usd", "customer": session["customer"],
            "payment_method": pm_id, "status": "succeeded",
            "setup_future_usage": session["__setup_future_usage"],
            "metadata": session["__payment_metadata"], "latest_charge": ch_id,
            "last_payment_error": null,
        });
        o.charges
            .insert(ch_id.clone(), charge(&ch_id, &pi_id, amount));
        o.payment_intents.insert(pi_id.clone(), pi.clone());
        session["payment_intent"] = json!(pi_id);
        session["payment_status"] = json!("paid");
        session["status"] = json!("complete");
        o.sessions.insert(session_id.to_string(), session.clone());
        (public(&session), pi)
    }

    /// The checkout session `session_id` as the provider holds it.
    pub fn session(&self, session_id: &str) -> Value {
        public(&self.shared.objects.lock().unwrap().sessions[session_id])
    }

    /// The payment `payment_intent` as the provider holds it.
    pub fn payment_intent(&self, payment_intent: &str) -> Value {
        self.shared.objects.lock().unwrap().payment_intents[payment_intent].clone()
    }

    /// The charge of the payment `payment_intent`, as `charge.refunded` carries it.
    pub fn charge_of(&self, payment_intent: &str) -> Value {
        let o = self.shared.objects.lock().unwrap();
        let ch = o.payment_intents[payment_intent]["latest_charge"]
            .as_str()
            .expect("a charge")
            .to_string();
        o.charges[&ch].clone()
    }

    /// Someone refunds `cents` of the payment in the provider's dashboard. Returns the charge
    /// as `charge.refunded` carries it (its cumulative `amount_refunded`).
    pub fn refund_in_dashboard(&self, payment_intent: &str, cents: i64) -> Value {
        let ch = self.charge_of(payment_intent)["id"]
            .as_str()
            .unwrap()
            .to_string();
        let mut o = self.shared.objects.lock().unwrap();
        let c = o.charges.get_mut(&ch).unwrap();
        let refunded = c["amount_refunded"].as_i64().unwrap() + cents;
        c["amount_refunded"] = json!(refunded);
        c["refunded"] = json!(refunded >= c["amount"].as_i64().unwrap());
        c.clone()
    }

    /// A dispute of the payment, as `charge.dispute.*` carry it.
    pub fn dispute(
        &self,
        dispute_id: &str,
        payment_intent: &str,
        cents: i64,
        status: &str,
    ) -> Value {
        let ch = self.charge_of(payment_intent)["id"].clone();
        json!({"id": dispute_id, "object": "dispute", "amount": cents, "currency": "usd",
            "charge": ch, "payment_intent": payment_intent, "status": status,
            "reason": "fraudulent"})
    }

    /// `object` as the provider's event of `event_type`, with a new id.
    pub fn event(&self, event_type: &str, object: Value) -> Value {
        json!({"id": self.shared.id("evt"), "object": "event", "type": event_type,
            "api_version": "2024-06-20", "created": 0, "livemode": false,
            "data": {"object": object}})
    }
}

/// A session without the stand-in's own notes.
fn public(session: &Value) -> Value {
    let mut s = session.clone();
    if let Some(o) = s.as_object_mut() {
        o.retain(|k, _| !k.starts_with("__"));
    }
    s
}

fn charge(id: &str, payment_intent: &str, amount: i64) -> Value {
    json!({"id": id, "object": "charge", "amount": amount, "amount_refunded": 0,
        "currency": "usd", "payment_intent": payment_intent, "refunded": false, "paid": true})
}

fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {SECRET_KEY}"))
}

fn reply(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).expect("a status"),
        axum::Json(body),
    )
        .into_response()
}

async fn create(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = form_of(&body);
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    s.got.lock().unwrap().push(Recorded {
        method: method.to_string(),
        path: uri.path().to_string(),
        form: form.clone(),
        idempotency_key: key.clone(),
    });
    s.arrived.notify_waiters();
    if !authorized(&headers) {
        let (st, b) = error(
            401,
            "invalid_request_error",
            "api_key_invalid",
            "Invalid API Key",
        );
        return reply(st, b);
    }
    // Stripe's idempotency: the first answer of a key, again.
    if let Some(k) = &key {
        if let Some((first_form, status, body)) = s.answers.lock().unwrap().get(k).cloned() {
            if first_form != form {
                let (st, b) = error(
                    400,
                    "idempotency_error",
                    "idempotency_key_in_use",
                    "Keys for idempotent requests can only be used with the same parameters",
                );
                return reply(st, b);
            }
            return reply(status, body);
        }
    }
    if uri.path() == "/v1/payment_intents" {
        let mut script = s.script.lock().unwrap();
        match script.front() {
            Some(PaymentScript::Unavailable) => {
                script.pop_front();
                return reply(
                    503,
                    json!({"error": {"type": "api_error", "message": "unavailable"}}),
                );
            }
            Some(PaymentScript::Unauthorized) => {
                script.pop_front();
                let (st, b) = error(
                    401,
                    "invalid_request_error",
                    "api_key_invalid",
                    "Invalid API Key provided",
                );
                return reply(st, b);
            }
            _ => {}
        }
    }
    let (status, body, answered) = match uri.path() {
        "/v1/customers" => {
            let id = s.id("cus");
            let c = json!({"id": id, "object": "customer",
                "metadata": nested(&form, "metadata")});
            s.objects.lock().unwrap().customers.insert(id, c.clone());
            (200, c, None)
        }
        "/v1/checkout/sessions" => create_session(&s, &form),
        "/v1/payment_intents" => create_payment(&s, &form),
        "/v1/refunds" => create_refund(&s, &form),
        _ => (
            404,
            json!({"error": {"type": "invalid_request_error"}}),
            None,
        ),
    };
    if let Some(k) = key {
        s.answers
            .lock()
            .unwrap()
            .insert(k, (form, status, body.clone()));
    }
    if uri.path() == "/v1/payment_intents" {
        let gate = s.hold.lock().unwrap().clone();
        if let Some(gate) = gate {
            let _permit = gate.acquire().await;
        }
    }
    match answered {
        Some((status, body)) => reply(status, body),
        None => reply(status, body),
    }
}

/// A session: one line, its amount, the metadata; the payment's metadata and
/// `setup_future_usage` are kept for when the customer pays.
fn create_session(s: &Shared, form: &[(String, String)]) -> Created {
    let need = [
        "mode",
        "customer",
        "line_items[0][price_data][currency]",
        "line_items[0][price_data][unit_amount]",
        "line_items[0][price_data][product_data][name]",
        "line_items[0][quantity]",
        "success_url",
        "cancel_url",
    ];
    if let Some(missing) = need.iter().find(|n| field(form, n).is_none()) {
        let (st, b) = error(
            400,
            "invalid_request_error",
            "parameter_missing",
            &format!("Missing required param: {missing}."),
        );
        return (st, b, None);
    }
    let amount: i64 = field(form, "line_items[0][price_data][unit_amount]")
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let id = s.id("cs_test");
    let base = s.base.lock().unwrap().clone();
    let session = json!({
        "id": id, "object": "checkout.session", "mode": "payment",
        "url": format!("{base}/checkout/{id}"),
        "customer": field(form, "customer"), "amount_total": amount,
        "currency": field(form, "line_items[0][price_data][currency]"),
        "payment_status": "unpaid", "status": "open", "payment_intent": null,
        "client_reference_id": field(form, "client_reference_id"),
        "success_url": field(form, "success_url"), "cancel_url": field(form, "cancel_url"),
        "metadata": nested(form, "metadata"),
        "__payment_metadata": nested(form, "payment_intent_data[metadata]"),
        "__setup_future_usage": field(form, "payment_intent_data[setup_future_usage]"),
    });
    s.objects
        .lock()
        .unwrap()
        .sessions
        .insert(id, session.clone());
    (200, public(&session), None)
}

/// An off-session payment, as scripted. Returns the key's answer, and (for a 500 after
/// recording) the different answer this request gets.
fn create_payment(s: &Shared, form: &[(String, String)]) -> Created {
    let amount: i64 = field(form, "amount")
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let id = s.id("pi");
    let mut pi = json!({
        "id": id, "object": "payment_intent", "amount": amount, "amount_received": 0,
        "currency": field(form, "currency"), "customer": field(form, "customer"),
        "payment_method": field(form, "payment_method"), "status": "requires_payment_method",
        "setup_future_usage": null, "metadata": nested(form, "metadata"),
        "latest_charge": null, "last_payment_error": null,
        "off_session": field(form, "off_session"), "confirm": field(form, "confirm"),
    });
    let script = s
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(PaymentScript::Succeed);
    let declined = |pi: &mut Value, code: &str, decline: Option<&str>| {
        pi["last_payment_error"] = json!({"type": "card_error", "code": code,
            "decline_code": decline, "message": "declined"});
        json!({"error": {"type": "card_error", "code": code, "decline_code": decline,
            "message": "Your card was declined.", "payment_intent": pi.clone()}})
    };
    let mut objects = s.objects.lock().unwrap();
    let (status, body, answered) = match script {
        PaymentScript::Succeed | PaymentScript::FailAfterRecording => {
            let ch = s.id("ch");
            pi["status"] = json!("succeeded");
            pi["amount_received"] = json!(amount);
            pi["latest_charge"] = json!(ch);
            objects.charges.insert(ch.clone(), charge(&ch, &id, amount));
            let lost = (script == PaymentScript::FailAfterRecording).then(|| {
                (
                    500,
                    json!({"error": {"type": "api_error", "message": "An unknown error occurred"}}),
                )
            });
            (200, pi.clone(), lost)
        }
        PaymentScript::Decline(decline_code) => {
            let body = declined(&mut pi, "card_declined", Some(decline_code));
            (402, body, None)
        }
        PaymentScript::AuthenticationRequired => {
            let body = declined(&mut pi, "authentication_required", None);
            (402, body, None)
        }
        PaymentScript::Unavailable | PaymentScript::Unauthorized => {
            unreachable!("answered before")
        }
    };
    objects.payment_intents.insert(id, pi);
    (status, body, answered)
}

/// A refund of a payment: at most what is left of its charge.
fn create_refund(s: &Shared, form: &[(String, String)]) -> Created {
    let pi = field(form, "payment_intent")
        .unwrap_or_default()
        .to_string();
    let amount: i64 = field(form, "amount")
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let mut o = s.objects.lock().unwrap();
    let Some(ch) = o
        .payment_intents
        .get(&pi)
        .and_then(|p| p["latest_charge"].as_str())
        .map(str::to_string)
    else {
        let (st, b) = error(
            400,
            "invalid_request_error",
            "resource_missing",
            &format!("No such payment_intent: '{pi}'"),
        );
        return (st, b, None);
    };
    let c = o.charges.get_mut(&ch).unwrap();
    let left = c["amount"].as_i64().unwrap() - c["amount_refunded"].as_i64().unwrap();
    if amount <= 0 || amount > left {
        let (st, b) = error(
            400,
            "invalid_request_error",
            "amount_too_large",
            "Refund amount is greater than the unrefunded amount on the charge",
        );
        return (st, b, None);
    }
    let refunded = c["amount_refunded"].as_i64().unwrap() + amount;
    c["amount_refunded"] = json!(refunded);
    c["refunded"] = json!(refunded >= c["amount"].as_i64().unwrap());
    let id = s.id("re");
    let refund = json!({"id": id, "object": "refund", "amount": amount, "charge": ch,
        "payment_intent": pi, "status": "succeeded", "metadata": nested(form, "metadata")});
    o.refunds.insert(id, refund.clone());
    (200, refund, None)
}

/// Records a read, and answers it if it is refused: 401 without the key, 500 if it is one of
/// the reads made to fail ([`StripeStandIn::fail_reads`]).
fn read(s: &Shared, uri: &Uri, headers: &HeaderMap) -> Option<Response> {
    s.got.lock().unwrap().push(Recorded {
        method: "GET".into(),
        path: uri.path().to_string(),
        form: form_of(uri.query().unwrap_or_default().as_bytes()),
        idempotency_key: None,
    });
    s.arrived.notify_waiters();
    if !authorized(headers) {
        let (st, b) = error(
            401,
            "invalid_request_error",
            "api_key_invalid",
            "Invalid API Key",
        );
        return Some(reply(st, b));
    }
    let mut failing = s.failing_reads.lock().unwrap();
    if let Some((_, n)) = failing
        .iter_mut()
        .find(|(prefix, n)| *n > 0 && uri.path().starts_with(prefix.as_str()))
    {
        *n -= 1;
        return Some(reply(
            500,
            json!({"error": {"type": "api_error", "message": "An unknown error occurred"}}),
        ));
    }
    None
}

/// A payment's refunds, newest first, a page of `limit` (10 by default) after
/// `starting_after`, as Stripe lists them.
async fn list_refunds(State(s): State<Arc<Shared>>, uri: Uri, headers: HeaderMap) -> Response {
    if let Some(refused) = read(&s, &uri, &headers) {
        return refused;
    }
    let query = form_of(uri.query().unwrap_or_default().as_bytes());
    let Some(pi) = field(&query, "payment_intent") else {
        let (st, b) = error(
            400,
            "invalid_request_error",
            "parameter_missing",
            "This stand-in lists refunds of a payment_intent only",
        );
        return reply(st, b);
    };
    let limit: usize = field(&query, "limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(10)
        .clamp(1, 100);
    let o = s.objects.lock().unwrap();
    let mut of: Vec<&Value> = o
        .refunds
        .values()
        .filter(|r| r["payment_intent"] == pi)
        .collect();
    of.sort_by(|a, b| b["id"].as_str().cmp(&a["id"].as_str()));
    if let Some(after) = field(&query, "starting_after") {
        match of.iter().position(|r| r["id"] == after) {
            Some(i) => of.drain(..=i).for_each(drop),
            None => {
                let (st, b) = error(
                    400,
                    "invalid_request_error",
                    "resource_missing",
                    &format!("No such refund: '{after}'"),
                );
                return reply(st, b);
            }
        }
    }
    let has_more = of.len() > limit;
    of.truncate(limit);
    reply(
        200,
        json!({"object": "list", "url": "/v1/refunds", "has_more": has_more, "data": of}),
    )
}

async fn retrieve(
    State(s): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(refused) = read(&s, &uri, &headers) {
        return refused;
    }
    let o = s.objects.lock().unwrap();
    let found = if uri.path().starts_with("/v1/charges/") {
        o.charges.get(&id)
    } else {
        o.payment_intents.get(&id)
    };
    match found {
        Some(v) => reply(200, v.clone()),
        None => {
            let (st, b) = error(
                404,
                "invalid_request_error",
                "resource_missing",
                &format!("No such object: '{id}'"),
            );
            reply(st, b)
        }
    }
}

/// The checkout page the session's URL names: a tiny page (browser tests follow the link).
async fn checkout_page(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let o = s.objects.lock().unwrap();
    match o.sessions.get(&id) {
        Some(session) => Html(format!(
            "<!doctype html><html lang=\"en\"><head><title>Pay</title></head><body>\
             <h1>Stripe checkout (stand-in)</h1><p id=\"session\">{id}</p>\
             <p id=\"amount\">{} cents</p></body></html>",
            session["amount_total"]
        ))
        .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Signs and POSTs the provider's events to a tollgate's webhook.
#[derive(Clone)]
pub struct EventSender {
    /// `<tollgate>/v1/payments/stripe/webhook`.
    pub url: String,
    pub secret: String,
    client: reqwest::Client,
}

impl EventSender {
    /// A sender to the tollgate at `base` (`http://127.0.0.1:<port>`), signing with the
    /// stand-in's secret.
    pub fn new(base: &str) -> EventSender {
        EventSender {
            url: format!("{base}/v1/payments/stripe/webhook"),
            secret: WEBHOOK_SECRET.into(),
            client: reqwest::Client::new(),
        }
    }

    /// POSTs `event` signed with the secret at `t` (unix seconds): the status and the body.
    pub async fn send_at(&self, event: &Value, t: i64) -> (u16, Value) {
        let body = serde_json::to_vec(event).expect("JSON");
        let header = signature::sign(&body, &self.secret, t);
        self.send_raw(body, Some(&header)).await
    }

    /// POSTs `body` with this `Stripe-Signature` header (or none).
    pub async fn send_raw(&self, body: Vec<u8>, header: Option<&str>) -> (u16, Value) {
        let mut req = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(h) = header {
            req = req.header("stripe-signature", h);
        }
        let resp = req.send().await.expect("tollgate answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}
