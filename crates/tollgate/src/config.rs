//! `tollgate serve`'s settings: one name in three places (API.md section 9). `key` or
//! `[section] key` in the TOML file given to `--config`, `TOLLGATE_KEY` or
//! `TOLLGATE_SECTION_KEY` in the environment, `--key` or `--section-key` as a flag. Flags win,
//! then the environment, then the file, then the defaults; [`Settings`] is the result, resolved
//! once before anything starts.
//!
//! Every setting is declared once, in a `settings!` table below, with its value type. A value
//! type checks its value the same way whichever place it came from (a TOML value is also
//! checked for its TOML type first), so the file, the environment and the flags cannot
//! disagree on what is valid.
//!
//! A section (`[invoices]`) is a second `settings!` table for its own layer type
//! ([`InvoicesLayer`], [`InvoicesFlags`]), named by the section's prefix; the top-level table
//! lists it after its own settings (`[invoices] invoices: InvoicesLayer, InvoicesFlags;`), which
//! makes it an `Option<InvoicesLayer>` field of [`Layer`] (the file's `[invoices]` table) and
//! flattens its flags into [`Flags`]. A section's setting is named `section.key` (`config check`
//! prints `invoices.prefix`), `TOLLGATE_SECTION_KEY` in the environment
//! (`TOLLGATE_INVOICES_PREFIX`) and `--section-key` as a flag (`--invoices-prefix`).

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// A setting's name: `key` at the top level, `section.key` in a section.
macro_rules! setting_name {
    ((), $name:ident) => {
        stringify!($name)
    };
    (($section:literal), $name:ident) => {
        concat!($section, ".", stringify!($name))
    };
}

/// A setting's flag (without its dashes), at compile time: its name with `.` and `_` as `-`
/// (`invoices.prefix` → `invoices-prefix`); with `upper`, the name in capitals with `.` as `_`
/// (the flag's value name: `drain_timeout_s` → `DRAIN_TIMEOUT_S`).
macro_rules! flag_name {
    ($name:expr) => {
        flag_name!($name, false)
    };
    ($name:expr, upper) => {
        flag_name!($name, true)
    };
    ($name:expr, $upper:literal) => {{
        const NAME: &str = $name;
        const BYTES: [u8; NAME.len()] = spelled(NAME, $upper);
        const FLAG: &str = match std::str::from_utf8(&BYTES) {
            Ok(flag) => flag,
            Err(_) => panic!("setting names are ASCII"),
        };
        FLAG
    }};
}

/// `name` spelled as a flag (`.` and `_` as `-`), or with `upper` as a value name (capitals,
/// `.` as `_`).
const fn spelled<const N: usize>(name: &str, upper: bool) -> [u8; N] {
    let bytes = name.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = match (bytes[i], upper) {
            (b'.', true) => b'_',
            (b'.' | b'_', false) => b'-',
            (b, true) => b.to_ascii_uppercase(),
            (b, false) => b,
        };
        i += 1;
    }
    out
}

/// Declares one table of settings: the layer every source fills (all optional), the flags that
/// fill one, and the environment variables' names. `()` is the top level, `("name")` the
/// section `[name]`; the top level lists its sections last, each with its own table's types.
macro_rules! settings {
    (
        $(#[doc = $layer_doc:literal])* $layer:ident, $flags:ident, $section:tt;
        $( $(#[doc = $doc:literal])* $name:ident: $ty:ty, )*
        $( [$sub:ident] $sub_layer:ident, $sub_flags:ident; )*
    ) => {
        $(#[doc = $layer_doc])*
        #[derive(Debug, Clone, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $layer {
            $( pub $name: Option<$ty>, )*
            $( pub $sub: Option<$sub_layer>, )*
        }

        /// The settings as flags of `tollgate serve` (each also `TOLLGATE_<NAME>` and a key of
        /// the `--config` file).
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct $flags {
            $(
                $(#[doc = $doc])*
                #[arg(
                    id = setting_name!($section, $name),
                    long = flag_name!(setting_name!($section, $name)),
                    value_name = flag_name!(stringify!($name), upper),
                )]
                pub $name: Option<$ty>,
            )*
            $( #[command(flatten)] pub $sub: $sub_flags, )*
        }

        impl From<$flags> for $layer {
            fn from(flags: $flags) -> $layer {
                $layer {
                    $( $name: flags.$name, )*
                    $( $sub: $sub_layer::from(flags.$sub).if_set(), )*
                }
            }
        }

        impl $layer {
            /// Every setting's name (`key`, or `section.key`), in declaration order.
            pub fn names() -> Vec<&'static str> {
                #[allow(unused_mut)]
                let mut names = vec![$( setting_name!($section, $name), )*];
                $( names.extend($sub_layer::names()); )*
                names
            }

            /// The settings `TOLLGATE_<NAME>` variables give; `var` reads one.
            pub fn from_env(var: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<$layer> {
                #[allow(unused_mut)]
                let mut layer = $layer::default();
                $(
                    let key = env_name(setting_name!($section, $name));
                    if let Some(text) = var(&key) {
                        layer.$name = Some(text.parse::<$ty>().map_err(|e| {
                            anyhow::anyhow!("environment variable {key}={text:?}: {e}")
                        })?);
                    }
                )*
                $( layer.$sub = $sub_layer::from_env(var)?.if_set(); )*
                Ok(layer)
            }

            /// `self` with every setting `over` sets replaced by `over`'s.
            pub fn under(self, over: $layer) -> $layer {
                $layer {
                    $( $name: over.$name.or(self.$name), )*
                    $(
                        $sub: match (self.$sub, over.$sub) {
                            (Some(below), Some(above)) => Some(below.under(above)),
                            (below, above) => above.or(below),
                        },
                    )*
                }
            }

            /// The names of the settings this layer sets.
            pub fn names_set(&self) -> Vec<&'static str> {
                #[allow(unused_mut)]
                let mut names = Vec::new();
                $( if self.$name.is_some() { names.push(setting_name!($section, $name)); } )*
                $( if let Some(sub) = &self.$sub { names.extend(sub.names_set()); } )*
                names
            }

            /// `Some(self)` if it sets anything.
            #[allow(dead_code)]
            fn if_set(self) -> Option<$layer> {
                (!self.names_set().is_empty()).then_some(self)
            }
        }
    };
}

settings! {
    /// One source's settings: what the file, the environment or the flags set.
    Layer, Flags, ();
    /// The database: a SQLite file path (created if missing), or a PostgreSQL URL
    /// (postgres://user:password@host:5432/dbname) shared by several tollgate servers.
    /// Default: tollgate.db, or tollgate-demo.db with --demo.
    db: Db,
    /// Address to listen on, IP:port (port 0 picks a free port; the chosen address is
    /// printed). Default: 127.0.0.1:8080.
    listen: Listen,
    /// Log format: `text` (colours only on a terminal) or `json` (one JSON object per line,
    /// startup lines included). Default: text.
    log_format: LogFormat,
    /// The URL customers see tollgate at (http:// or https://): the dashboard's sign-in
    /// links are built on it, and https makes its session cookies Secure. Default: none.
    public_url: PublicUrl,
    /// Apply this catalog file at start (prices that changed become new versions).
    catalog: PathBuf,
    /// How often expired holds are voided, in milliseconds. Default: 1000.
    sweep_interval_ms: Positive,
    /// On SIGTERM or SIGINT, how long calls in flight may take to finish, in seconds; after
    /// that the server exits anyway, with status 1. Default: 30.
    drain_timeout_s: Positive,
    /// A connection that has not sent a request's headers within this many seconds is
    /// closed. Default: 10.
    header_timeout_s: Positive,
    /// A keep-alive connection idle this many seconds is closed. Default: 60.
    idle_timeout_s: Positive,
    /// A request that has not been answered within this many seconds (body included) is
    /// cut off. Default: 60.
    request_timeout_s: Positive,
    /// The most connections open at once; kept below the process's open-file limit.
    /// Default: 10000.
    max_connections: Positive,
    [invoices] InvoicesLayer, InvoicesFlags;
    [webhooks] WebhooksLayer, WebhooksFlags;
    [stripe] StripeLayer, StripeFlags;
    [top_ups] TopUpsLayer, TopUpsFlags;
    [serverless] ServerlessLayer, ServerlessFlags;
    [gateway] GatewayLayer, GatewayFlags;
}

settings! {
    /// The `[invoices]` section: how invoices are numbered.
    InvoicesLayer, InvoicesFlags, ("invoices");
    /// The prefix of invoice numbers (`<prefix>-<year>-<seq>`) issued from now on: 1 to 12
    /// characters, uppercase letters A-Z, digits and `-`, beginning and ending with a letter
    /// or digit. The sequence is shared whatever the prefix. Default: TG.
    prefix: InvoicePrefix,
}

settings! {
    /// The `[webhooks]` section: where events may be sent and how they are delivered.
    WebhooksLayer, WebhooksFlags, ("webhooks");
    /// The host names a webhook URL may name (a list; in the environment and as a flag,
    /// separated by commas). Default: none, any host.
    allowed_hosts: HostList,
    /// The longest delay before the first retry of a delivery, in seconds; each later retry's
    /// doubles, up to 6 hours, and the delay is drawn at random up to it. Default: 10.
    retry_base_s: Positive,
    /// How long a delivery is retried, in seconds from its event (or its redelivery), before
    /// it is failed. Default: 259200 (three days).
    retry_for_s: Positive,
    /// The connect timeout and the whole attempt's timeout of a delivery, in seconds.
    /// Default: 10.
    timeout_s: Positive,
    /// The most deliveries a server sends at once. Default: 32.
    max_in_flight: Positive,
    /// The most deliveries to one webhook in flight at once (counted across the servers of a
    /// database), so a receiver that never answers cannot take every slot. Default: a quarter
    /// of max_in_flight, at least 1.
    max_in_flight_per_webhook: Positive,
}

settings! {
    /// The `[stripe]` section: the payment provider. Payments are on when `secret_key` is set.
    StripeLayer, StripeFlags, ("stripe");
    /// The provider's secret API key (`sk_live_...`, `sk_test_...`, or a restricted key
    /// `rk_...`). Never printed. Left out: payments are off (their calls answer 503).
    secret_key: Secret,
    /// The signing secrets (`whsec_...`) of the provider's webhook endpoint that sends to
    /// `/v1/payments/stripe/webhook`: a list (in the environment and as a flag, separated by
    /// commas), several while one is rotated; an event signed with any of them is accepted.
    /// Never printed.
    webhook_secrets: SecretList,
    /// The provider's API base URL. Default: https://api.stripe.com.
    api_base: ApiBase,
}

settings! {
    /// The `[top_ups]` section: the top-ups customers may buy.
    TopUpsLayer, TopUpsFlags, ("top_ups");
    /// The smallest top-up, in USD (whole cents): checkouts below it are refused, and an
    /// automatic top-up that the monthly cap would trim below it is not started. Default: 5.
    min_usd: UsdAmount,
    /// The largest top-up, in USD (whole cents). Default: 10000.
    max_usd: UsdAmount,
    /// How long after a declined automatic top-up the next one may start, in seconds.
    /// Default: 3600.
    retry_after_s: Positive,
}

settings! {
    /// The `[serverless]` section: how serverless runners are billed.
    ServerlessLayer, ServerlessFlags, ("serverless");
    /// How long after its last report a serverless runner is still billed, in seconds (1 to
    /// 86400): a runner that stops reporting is billed up to its last report plus this, and
    /// no further until it reports again. Default: 300.
    grace_s: GraceSeconds,
    /// How long an applied runner event id is kept to answer its repeat as a duplicate, in
    /// hours (1 to 8760); the sweep deletes older ones. A repeat after that is judged as a new
    /// event: refused if its runner reported later since, and never billed twice. Default: 168.
    event_retention_h: RetentionHours,
}

settings! {
    /// The `[gateway]` section: gateway mode, fal's queue and direct APIs in front of the
    /// catalog's upstreams (API.md section 10). On when `queue_listen` is set.
    GatewayLayer, GatewayFlags, ("gateway");
    /// Address fal's queue API listens on (fal clients' FAL_QUEUE_RUN_HOST), IP:port.
    /// Default: none, gateway mode off.
    queue_listen: Listen,
    /// Address fal's direct API listens on (fal clients' FAL_RUN_HOST), IP:port. Default:
    /// none, not served.
    direct_listen: Listen,
    /// The certificate chain (PEM, leaf first) both gateway listeners serve TLS with; set
    /// with tls_key, or neither for plain HTTP. Default: none.
    tls_cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1) of tls_cert. Default: none.
    tls_key: PathBuf,
    /// The base of the URLs in the queue's answers (status_url, response_url, cancel_url),
    /// http:// or https://. Default: the request's Host, with the listener's scheme.
    public_queue_url: PublicUrl,
    /// The base URL the direct API is reached at, as the deployment publishes it. Default:
    /// none.
    public_direct_url: PublicUrl,
    /// How long a finished request's result is kept, in seconds. Default: 604800 (a week).
    result_retention_s: Positive,
    /// The largest input taken and the largest model server answer kept, in bytes.
    /// Default: 10485760 (10 MiB).
    max_body_bytes: Positive,
    /// How long a dispatcher's lease on a running request lasts, in seconds (renewed while
    /// it runs): a request whose server died is taken over by another this long after.
    /// Default: 30.
    lease_s: Positive,
    /// The delay before a failed call to a model server is first retried, in milliseconds;
    /// each later retry's doubles, up to 30 s. Default: 500.
    retry_base_ms: Positive,
}

/// `TOLLGATE_` and the name in capitals, a section's dot as `_` (`drain_timeout_s` →
/// `TOLLGATE_DRAIN_TIMEOUT_S`, `invoices.prefix` → `TOLLGATE_INVOICES_PREFIX`).
pub fn env_name(name: &str) -> String {
    format!("TOLLGATE_{}", name.replace('.', "_").to_ascii_uppercase())
}

/// The settings `tollgate serve` runs with.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// `None`: the default for the mode (tollgate.db, or tollgate-demo.db with --demo).
    pub db: Option<String>,
    pub listen: SocketAddr,
    pub log_format: LogFormat,
    pub public_url: Option<String>,
    pub catalog: Option<PathBuf>,
    pub sweep_interval_ms: u64,
    pub drain_timeout_s: u64,
    pub header_timeout_s: u64,
    pub idle_timeout_s: u64,
    pub request_timeout_s: u64,
    pub max_connections: u64,
    pub invoices: InvoiceSettings,
    pub webhooks: WebhookSettings,
    pub stripe: StripeSettings,
    pub top_ups: TopUpSettings,
    pub serverless: ServerlessSettings,
    /// `None`: gateway mode is off.
    pub gateway: Option<GatewaySettings>,
}

/// The `[gateway]` settings `tollgate serve` runs with.
#[derive(Debug, Clone, Serialize)]
pub struct GatewaySettings {
    /// Always set once validated: a `[gateway]` section without it is refused.
    pub queue_listen: Option<SocketAddr>,
    pub direct_listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub public_queue_url: Option<String>,
    pub public_direct_url: Option<String>,
    pub result_retention_s: u64,
    pub max_body_bytes: u64,
    pub lease_s: u64,
    pub retry_base_ms: u64,
}

impl GatewaySettings {
    /// What the gateway takes.
    pub fn to_gateway(&self) -> tollgate_gateway::GatewayConfig {
        let queue_listen = self
            .queue_listen
            .expect("validated: gateway.queue_listen is set");
        let mut c = tollgate_gateway::GatewayConfig::new(queue_listen);
        c.direct_listen = self.direct_listen;
        c.tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(tollgate_gateway::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        c.public_queue_url.clone_from(&self.public_queue_url);
        c.public_direct_url.clone_from(&self.public_direct_url);
        c.result_retention = Duration::from_secs(self.result_retention_s);
        c.max_body_bytes = usize::try_from(self.max_body_bytes).unwrap_or(usize::MAX);
        c.lease = Duration::from_secs(self.lease_s);
        c.retry_base = Duration::from_millis(self.retry_base_ms);
        c
    }
}

/// The `[serverless]` settings `tollgate serve` runs with.
#[derive(Debug, Clone, Serialize)]
pub struct ServerlessSettings {
    pub grace_s: u64,
    pub event_retention_h: u64,
}

impl ServerlessSettings {
    /// What the engine (the core's runner billing) takes.
    pub fn to_core(&self) -> tollgate_core::serverless::ServerlessSettings {
        tollgate_core::serverless::ServerlessSettings {
            grace_ms: i64::try_from(self.grace_s.saturating_mul(1000)).unwrap_or(i64::MAX),
            event_retention_ms: i64::try_from(self.event_retention_h.saturating_mul(3_600_000))
                .unwrap_or(i64::MAX),
        }
    }
}

/// The `[stripe]` settings `tollgate serve` runs with. Printed (`config check`) without its
/// secrets: each shows as set, never its value.
#[derive(Debug, Clone, Serialize)]
pub struct StripeSettings {
    /// `None`: payments are off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<Secret>,
    pub webhook_secrets: Vec<Secret>,
    pub api_base: String,
}

/// The `[top_ups]` settings `tollgate serve` runs with.
#[derive(Debug, Clone, Serialize)]
pub struct TopUpSettings {
    pub min_usd: UsdAmount,
    pub max_usd: UsdAmount,
    pub retry_after_s: u64,
}

impl TopUpSettings {
    /// What the engine (the auto top-up decision) and the API (checkouts) take.
    pub fn to_core(&self) -> tollgate_core::payments::TopUpSettings {
        tollgate_core::payments::TopUpSettings {
            min: self.min_usd.0,
            max: self.max_usd.0,
            retry_after_ms: i64::try_from(self.retry_after_s.saturating_mul(1000))
                .unwrap_or(i64::MAX),
        }
    }
}

impl StripeSettings {
    /// What the API takes: `None` when payments are off (no secret key).
    pub fn to_api(
        &self,
        top_ups: &TopUpSettings,
    ) -> Option<tollgate_api::payments::PaymentSettings> {
        let key = self.secret_key.as_ref()?;
        Some(tollgate_api::payments::PaymentSettings {
            secret_key: key.0.clone(),
            webhook_secrets: self.webhook_secrets.iter().map(|s| s.0.clone()).collect(),
            api_base: self.api_base.clone(),
            top_ups: top_ups.to_core(),
            ..tollgate_api::payments::PaymentSettings::default()
        })
    }
}

/// The `[webhooks]` settings `tollgate serve` runs with.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookSettings {
    /// Lower case; `None`: any host.
    pub allowed_hosts: Option<Vec<String>>,
    pub retry_base_s: u64,
    pub retry_for_s: u64,
    pub timeout_s: u64,
    pub max_in_flight: u64,
    pub max_in_flight_per_webhook: u64,
}

impl WebhookSettings {
    /// What the API and the dispatcher take.
    pub fn to_api(&self) -> tollgate_api::webhooks::WebhookSettings {
        tollgate_api::webhooks::WebhookSettings {
            retry_base: Duration::from_secs(self.retry_base_s),
            retry_for: Duration::from_secs(self.retry_for_s),
            timeout: Duration::from_secs(self.timeout_s),
            max_in_flight: usize::try_from(self.max_in_flight).unwrap_or(usize::MAX),
            max_in_flight_per_webhook: Some(
                usize::try_from(self.max_in_flight_per_webhook).unwrap_or(usize::MAX),
            ),
            allowed_hosts: self.allowed_hosts.clone(),
        }
    }
}

/// The `[invoices]` settings `tollgate serve` runs with.
#[derive(Debug, Clone, Serialize)]
pub struct InvoiceSettings {
    /// Checked by [`tollgate_store::check_invoice_prefix`].
    pub prefix: String,
}

impl Settings {
    /// The defaults under `layer`.
    pub fn from_layer(layer: Layer) -> Settings {
        let secs = |v: Option<Positive>, default: u64| v.map_or(default, Positive::get);
        Settings {
            db: layer.db.map(|d| d.0),
            listen: layer
                .listen
                .map_or(SocketAddr::from(([127, 0, 0, 1], 8080)), |l: Listen| l.0),
            log_format: layer.log_format.unwrap_or(LogFormat::Text),
            public_url: layer.public_url.map(|u| u.0),
            catalog: layer.catalog,
            sweep_interval_ms: secs(layer.sweep_interval_ms, 1000),
            drain_timeout_s: secs(layer.drain_timeout_s, 30),
            header_timeout_s: secs(layer.header_timeout_s, 10),
            idle_timeout_s: secs(layer.idle_timeout_s, 60),
            request_timeout_s: secs(layer.request_timeout_s, 60),
            max_connections: secs(layer.max_connections, 10_000),
            invoices: {
                let invoices = layer.invoices.unwrap_or_default();
                InvoiceSettings {
                    prefix: invoices.prefix.map_or_else(
                        || tollgate_store::INVOICE_PREFIX.to_string(),
                        |p: InvoicePrefix| p.0,
                    ),
                }
            },
            webhooks: {
                let w = layer.webhooks.unwrap_or_default();
                let defaults = tollgate_api::webhooks::WebhookSettings::default();
                let max_in_flight = secs(w.max_in_flight, defaults.max_in_flight as u64);
                // The API's default share of the slots, for the slots set here.
                let share = tollgate_api::webhooks::WebhookSettings {
                    max_in_flight: usize::try_from(max_in_flight).unwrap_or(usize::MAX),
                    ..defaults.clone()
                }
                .per_webhook() as u64;
                WebhookSettings {
                    allowed_hosts: w.allowed_hosts.map(|h| h.0),
                    retry_base_s: secs(w.retry_base_s, defaults.retry_base.as_secs()),
                    retry_for_s: secs(w.retry_for_s, defaults.retry_for.as_secs()),
                    timeout_s: secs(w.timeout_s, defaults.timeout.as_secs()),
                    max_in_flight,
                    max_in_flight_per_webhook: secs(w.max_in_flight_per_webhook, share),
                }
            },
            stripe: {
                let st = layer.stripe.unwrap_or_default();
                StripeSettings {
                    secret_key: st.secret_key,
                    webhook_secrets: st.webhook_secrets.map(|l| l.0).unwrap_or_default(),
                    api_base: st.api_base.map_or_else(
                        || tollgate_api::payments::STRIPE_API_BASE.to_string(),
                        |b| b.0,
                    ),
                }
            },
            top_ups: {
                let t = layer.top_ups.unwrap_or_default();
                let defaults = tollgate_core::payments::TopUpSettings::default();
                TopUpSettings {
                    min_usd: t.min_usd.unwrap_or(UsdAmount(defaults.min)),
                    max_usd: t.max_usd.unwrap_or(UsdAmount(defaults.max)),
                    retry_after_s: secs(
                        t.retry_after_s,
                        u64::try_from(defaults.retry_after_ms / 1000).unwrap_or(3600),
                    ),
                }
            },
            serverless: {
                let sl = layer.serverless.unwrap_or_default();
                ServerlessSettings {
                    grace_s: sl.grace_s.map_or(GraceSeconds::DEFAULT.0, |g| g.0),
                    event_retention_h: sl
                        .event_retention_h
                        .map_or(RetentionHours::DEFAULT.0, |h| h.0),
                }
            },
            // An empty `[gateway]` table sets nothing: gateway mode stays off.
            gateway: layer
                .gateway
                .filter(|g| !g.names_set().is_empty())
                .map(|g| {
                    let defaults = tollgate_gateway::GatewayConfig::new(([127, 0, 0, 1], 0).into());
                    GatewaySettings {
                        queue_listen: g.queue_listen.map(|l| l.0),
                        direct_listen: g.direct_listen.map(|l| l.0),
                        tls_cert: g.tls_cert,
                        tls_key: g.tls_key,
                        public_queue_url: g.public_queue_url.map(|u| u.0),
                        public_direct_url: g.public_direct_url.map(|u| u.0),
                        result_retention_s: secs(
                            g.result_retention_s,
                            defaults.result_retention.as_secs(),
                        ),
                        max_body_bytes: secs(g.max_body_bytes, defaults.max_body_bytes as u64),
                        lease_s: secs(g.lease_s, defaults.lease.as_secs()),
                        retry_base_ms: secs(
                            g.retry_base_ms,
                            u64::try_from(defaults.retry_base.as_millis()).unwrap_or(500),
                        ),
                    }
                }),
        }
    }

    /// What no single setting can tell: the top-up range is not empty, and payments with a
    /// secret key have a webhook signing secret (without one, no payment would ever be
    /// credited).
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.top_ups.min_usd.0 > self.top_ups.max_usd.0 {
            bail!(
                "top_ups.min_usd ({}) is more than top_ups.max_usd ({}): no top-up would be \
                 allowed",
                self.top_ups.min_usd.0,
                self.top_ups.max_usd.0
            );
        }
        if let Some(g) = &self.gateway {
            if g.queue_listen.is_none() {
                bail!(
                    "the [gateway] section is set but gateway.queue_listen is not: gateway mode \
                     needs the address of its queue API ({})",
                    env_name("gateway.queue_listen")
                );
            }
            if g.tls_cert.is_some() != g.tls_key.is_some() {
                bail!(
                    "gateway.tls_cert and gateway.tls_key go together: set both to serve TLS, \
                     or neither for plain HTTP"
                );
            }
        }
        if self.stripe.secret_key.is_some() && self.stripe.webhook_secrets.is_empty() {
            bail!(
                "stripe.secret_key is set but stripe.webhook_secrets is not: the provider's \
                 events (which credit the payments) could not be verified; set the signing \
                 secret of the webhook endpoint ({})",
                env_name("stripe.webhook_secrets")
            );
        }
        Ok(())
    }

    /// Flags over the environment over the file (`--config`, or `TOLLGATE_CONFIG`) over the
    /// defaults.
    pub fn resolve(config: Option<&Path>, flags: Flags) -> anyhow::Result<Settings> {
        let file = match config {
            Some(path) => read_file(path)?,
            None => Layer::default(),
        };
        let env = Layer::from_env(&|k| std::env::var(k).ok())?;
        let settings = Settings::from_layer(file.under(env).under(flags.into()));
        settings.validate()?;
        Ok(settings)
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_s)
    }

    /// The settings as a TOML document (what `tollgate config check` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("settings are plain values")
    }
}

/// Reads and checks a configuration file; an error names the file, the line and the key.
pub fn read_file(path: &Path) -> anyhow::Result<Layer> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
    parse_file(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Parses a configuration file's text.
pub fn parse_file(text: &str) -> Result<Layer, String> {
    toml::from_str::<Layer>(text).map_err(|e| {
        // The integer settings are read as TOML's integers (i64) and checked after.
        let message = e
            .message()
            .trim_end()
            .replace("expected i64", "expected a whole number");
        let Some(span) = e.span() else {
            return message;
        };
        let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
        match key_at(text, span.start) {
            Some(key) => format!("line {line}, key `{key}`: {message}"),
            None => format!("line {line}: {message}"),
        }
    })
}

/// The key whose `key = value` line holds byte `at`, with its section (`invoices.prefix`).
fn key_at(text: &str, at: usize) -> Option<String> {
    let mut section: Option<&str> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            section = trimmed
                .trim_start_matches('[')
                .split(']')
                .next()
                .map(str::trim);
        }
        if at < offset + line.len() {
            let (key, _) = line.split_once('=')?;
            let key = key.trim().trim_matches('"');
            return Some(match section {
                Some(s) => format!("{s}.{key}"),
                None => key.to_string(),
            });
        }
        offset += line.len();
    }
    None
}

/// Checks `path` as `tollgate serve --config` would, and prints the settings it resolves to
/// (with the environment's `TOLLGATE_*` variables over it), naming where each came from.
pub fn check(path: &Path) -> anyhow::Result<()> {
    let file = read_file(path)?;
    let env = Layer::from_env(&|k| std::env::var(k).ok())?;
    let (from_file, from_env) = (file.names_set(), env.names_set());
    let mut settings = Settings::from_layer(file.under(env));
    settings.validate()?;
    // A PostgreSQL URL is printed without its password.
    settings.db = settings.db.map(|db| tollgate_store::postgres::redact(&db));
    println!("# {}: valid", path.display());
    for name in &Layer::names() {
        let origin = if from_env.contains(name) {
            format!("the environment ({})", env_name(name))
        } else if from_file.contains(name) {
            "the file".to_string()
        } else {
            "the default".to_string()
        };
        println!("# {name}: from {origin}");
    }
    print!("{}", settings.to_toml());
    Ok(())
}

/// A database: a SQLite file path or a PostgreSQL URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct Db(String);

impl FromStr for Db {
    type Err = String;
    fn from_str(s: &str) -> Result<Db, String> {
        if s.trim().is_empty() {
            return Err("the database must be a file path or a postgres:// URL".into());
        }
        Ok(Db(s.to_string()))
    }
}

/// An address to listen on: an IP address and a port.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "String")]
pub struct Listen(SocketAddr);

impl FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Listen, String> {
        s.trim().parse().map(Listen).map_err(|_| {
            format!("{s:?} is not an address to listen on: write IP:port, e.g. 0.0.0.0:8080")
        })
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, coloured on a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{s:?} is not a log format: `text` or `json`")),
        }
    }
}

/// A public base URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct PublicUrl(String);

impl FromStr for PublicUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<PublicUrl, String> {
        let rest = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"));
        match rest {
            Some(host) if !host.is_empty() && !s.contains(char::is_whitespace) => {
                Ok(PublicUrl(s.trim_end_matches('/').to_string()))
            }
            _ => Err(format!(
                "{s:?} is not a public URL: write http:// or https:// and a host"
            )),
        }
    }
}

/// An invoice number prefix, as [`tollgate_store::check_invoice_prefix`] allows it.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct InvoicePrefix(String);

impl FromStr for InvoicePrefix {
    type Err = String;
    fn from_str(s: &str) -> Result<InvoicePrefix, String> {
        tollgate_store::check_invoice_prefix(s)
            .map(|()| InvoicePrefix(s.to_string()))
            .map_err(|e| format!("the invoice number prefix {e}"))
    }
}

impl TryFrom<String> for InvoicePrefix {
    type Error = String;
    fn try_from(s: String) -> Result<InvoicePrefix, String> {
        s.parse()
    }
}

/// Host names: in a file a TOML array of strings, in the environment and as a flag a list
/// separated by commas. Each is a host name or an IP address, without a scheme, port or path;
/// kept in lower case (host names compare without case).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct HostList(Vec<String>);

impl TryFrom<Vec<String>> for HostList {
    type Error = String;
    fn try_from(hosts: Vec<String>) -> Result<HostList, String> {
        let mut out = Vec::with_capacity(hosts.len());
        for h in hosts {
            let host = h.trim();
            let ok = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
            let port = host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err();
            if !ok || port {
                return Err(format!(
                    "{h:?} is not a host name: write a name or an IP address, without a scheme, \
                     port or path (e.g. hooks.example.com)"
                ));
            }
            out.push(host.to_ascii_lowercase());
        }
        if out.is_empty() {
            return Err(
                "the list of hosts is empty: leave the setting out to allow any host".into(),
            );
        }
        Ok(HostList(out))
    }
}

impl FromStr for HostList {
    type Err = String;
    fn from_str(s: &str) -> Result<HostList, String> {
        HostList::try_from(s.split(',').map(str::to_string).collect::<Vec<_>>())
    }
}

/// A secret (the provider's API key, a webhook signing secret). Never printed: its `Debug`
/// and its place in `config check`'s output show only that it is set.
#[derive(Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct Secret(String);

impl Secret {
    /// What a secret shows instead of its value.
    pub const SHOWN: &'static str = "(set, not shown)";
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Secret::SHOWN)
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(Secret::SHOWN)
    }
}

impl FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Secret, String> {
        let s = s.trim();
        // The value is never repeated in the error: it may be a real secret mistyped.
        if s.is_empty() {
            return Err("the secret is empty: leave the setting out instead".into());
        }
        if !s.chars().all(|c| c.is_ascii_graphic()) {
            return Err(
                "the secret has spaces or characters that are not visible ASCII (a copy and \
                 paste that took too much?)"
                    .into(),
            );
        }
        Ok(Secret(s.to_string()))
    }
}

impl TryFrom<String> for Secret {
    type Error = String;
    fn try_from(s: String) -> Result<Secret, String> {
        s.parse()
    }
}

/// Secrets: in a file a TOML array of strings, in the environment and as a flag a list
/// separated by commas.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct SecretList(Vec<Secret>);

impl TryFrom<Vec<String>> for SecretList {
    type Error = String;
    fn try_from(items: Vec<String>) -> Result<SecretList, String> {
        let secrets = items
            .iter()
            .enumerate()
            .map(|(i, s)| s.parse().map_err(|e| format!("secret {}: {e}", i + 1)))
            .collect::<Result<Vec<Secret>, String>>()?;
        if secrets.is_empty() {
            return Err("the list of secrets is empty: leave the setting out instead".into());
        }
        Ok(SecretList(secrets))
    }
}

impl FromStr for SecretList {
    type Err = String;
    fn from_str(s: &str) -> Result<SecretList, String> {
        SecretList::try_from(s.split(',').map(str::to_string).collect::<Vec<_>>())
    }
}

/// The provider's API base URL: `http://` or `https://` and a host, without a trailing `/`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct ApiBase(String);

impl FromStr for ApiBase {
    type Err = String;
    fn from_str(s: &str) -> Result<ApiBase, String> {
        let rest = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"));
        match rest {
            Some(host) if !host.is_empty() && !s.contains(char::is_whitespace) => {
                Ok(ApiBase(s.trim_end_matches('/').to_string()))
            }
            _ => Err(format!(
                "{s:?} is not an API base URL: write http:// or https:// and a host"
            )),
        }
    }
}

impl TryFrom<String> for ApiBase {
    type Error = String;
    fn try_from(s: String) -> Result<ApiBase, String> {
        s.parse()
    }
}

/// A USD amount of a setting: a decimal (`"5"`, `"12.50"`; in a file a string or a whole
/// number), in whole cents (what the provider charges), greater than 0 and at most 1000000.
#[derive(Debug, Clone, Copy)]
pub struct UsdAmount(pub tollgate_core::Nanos);

impl FromStr for UsdAmount {
    type Err = String;
    fn from_str(s: &str) -> Result<UsdAmount, String> {
        let n = tollgate_core::Nanos::parse_usd(s.trim())
            .map_err(|e| format!("{s:?} is not a USD amount: {e}"))?;
        if n.0 <= 0 || n > tollgate_core::money::MAX_AMOUNT {
            return Err(format!(
                "{s} USD is not allowed: must be more than 0 and at most 1000000"
            ));
        }
        if n.0 % tollgate_api::payments::NANOS_PER_CENT != 0 {
            return Err(format!(
                "{s} USD is not a whole number of cents, which is what is charged"
            ));
        }
        Ok(UsdAmount(n))
    }
}

impl<'de> Deserialize<'de> for UsdAmount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<UsdAmount, D::Error> {
        /// A TOML string or integer (never a float: it may be inexact).
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            Int(i64),
            Str(String),
        }
        let text = match Text::deserialize(d)? {
            Text::Int(n) => n.to_string(),
            Text::Str(s) => s,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for UsdAmount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_usd().normalize().to_string())
    }
}

/// A setting's text read as a whole number, then checked as `T` is.
fn whole_number<T: TryFrom<i64, Error = String>>(s: &str) -> Result<T, String> {
    let n: i64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))?;
    T::try_from(n)
}

/// `n` if it is from `lo` to `hi` (`unit` names what it counts, for the refusal).
fn within(n: i64, lo: i64, hi: i64, unit: &str) -> Result<u64, String> {
    if (lo..=hi).contains(&n) {
        Ok(n.unsigned_abs())
    } else {
        Err(format!(
            "{n} is not allowed: must be a whole number of {unit} from {lo} to {hi}"
        ))
    }
}

/// A count, a number of seconds or of milliseconds: a whole number of at least 1 (a timeout of
/// 0 would close every connection at once, a cap of 0 refuse every one).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "i64")]
pub struct Positive(NonZeroU64);

impl Positive {
    pub fn get(self) -> u64 {
        self.0.get()
    }
}

impl TryFrom<i64> for Positive {
    type Error = String;
    fn try_from(n: i64) -> Result<Positive, String> {
        u64::try_from(n)
            .ok()
            .and_then(NonZeroU64::new)
            .map(Positive)
            .ok_or_else(|| format!("{n} is not allowed: must be a whole number of at least 1"))
    }
}

impl FromStr for Positive {
    type Err = String;
    fn from_str(s: &str) -> Result<Positive, String> {
        whole_number(s)
    }
}

/// A serverless runner's grace: whole seconds, 1 to 86400 (the core's
/// [`tollgate_core::serverless::MAX_GRACE_MS`]).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "i64")]
pub struct GraceSeconds(u64);

impl GraceSeconds {
    /// [`tollgate_core::serverless::DEFAULT_GRACE_MS`], in seconds.
    pub const DEFAULT: GraceSeconds =
        GraceSeconds((tollgate_core::serverless::DEFAULT_GRACE_MS / 1000) as u64);
    const MAX_S: i64 = tollgate_core::serverless::MAX_GRACE_MS / 1000;
}

impl TryFrom<i64> for GraceSeconds {
    type Error = String;
    fn try_from(n: i64) -> Result<GraceSeconds, String> {
        within(n, 1, GraceSeconds::MAX_S, "seconds").map(GraceSeconds)
    }
}

impl FromStr for GraceSeconds {
    type Err = String;
    fn from_str(s: &str) -> Result<GraceSeconds, String> {
        whole_number(s)
    }
}

/// How long runner event ids are kept: whole hours, 1 to 8760 (the core's
/// [`tollgate_core::serverless::MIN_EVENT_RETENTION_MS`] and `MAX_EVENT_RETENTION_MS`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "i64")]
pub struct RetentionHours(u64);

impl RetentionHours {
    /// [`tollgate_core::serverless::DEFAULT_EVENT_RETENTION_MS`], in hours.
    pub const DEFAULT: RetentionHours =
        RetentionHours((tollgate_core::serverless::DEFAULT_EVENT_RETENTION_MS / 3_600_000) as u64);
    const MIN_H: i64 = tollgate_core::serverless::MIN_EVENT_RETENTION_MS / 3_600_000;
    const MAX_H: i64 = tollgate_core::serverless::MAX_EVENT_RETENTION_MS / 3_600_000;
}

impl TryFrom<i64> for RetentionHours {
    type Error = String;
    fn try_from(n: i64) -> Result<RetentionHours, String> {
        within(n, RetentionHours::MIN_H, RetentionHours::MAX_H, "hours").map(RetentionHours)
    }
}

impl FromStr for RetentionHours {
    type Err = String;
    fn from_str(s: &str) -> Result<RetentionHours, String> {
        whole_number(s)
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

impl TryFrom<String> for Db {
    type Error = String;
    fn try_from(s: String) -> Result<Db, String> {
        s.parse()
    }
}

impl TryFrom<String> for Listen {
    type Error = String;
    fn try_from(s: String) -> Result<Listen, String> {
        s.parse()
    }
}

impl TryFrom<String> for PublicUrl {
    type Error = String;
    fn try_from(s: String) -> Result<PublicUrl, String> {
        s.parse()
    }
}

/// Refuses a `--config` path that does not exist before anything else runs.
pub fn config_path(path: Option<PathBuf>) -> anyhow::Result<Option<PathBuf>> {
    match path {
        Some(p) if !p.is_file() => bail!("the configuration file {} does not exist", p.display()),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn flags_win_over_the_environment_which_wins_over_the_file() {
        let file = parse_file(
            "listen = \"0.0.0.0:9000\"\ndrain_timeout_s = 5\nheader_timeout_s = 7\nlog_format = \"json\"\n",
        )
        .unwrap();
        let env = Layer::from_env(&env(&[
            ("TOLLGATE_DRAIN_TIMEOUT_S", "6"),
            ("TOLLGATE_HEADER_TIMEOUT_S", "8"),
        ]))
        .unwrap();
        let flags = Layer {
            header_timeout_s: Some("9".parse().unwrap()),
            ..Layer::default()
        };
        let s = Settings::from_layer(file.under(env).under(flags));
        assert_eq!(s.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(s.drain_timeout_s, 6);
        assert_eq!(s.header_timeout_s, 9);
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.idle_timeout_s, 60, "the default");
    }

    #[test]
    fn a_section_is_layered_like_the_top_level() {
        let file = parse_file("db = \"a.db\"\n\n[invoices]\nprefix = \"FILE\"\n").unwrap();
        let none = Layer::from_env(&env(&[])).unwrap();
        let env = Layer::from_env(&env(&[("TOLLGATE_INVOICES_PREFIX", "ENV-1")])).unwrap();
        let flags = Layer::from(Flags {
            invoices: InvoicesFlags {
                prefix: Some("FLAG".parse().unwrap()),
            },
            ..Flags::default()
        });
        assert_eq!(env.names_set(), ["invoices.prefix"]);
        assert!(none.invoices.is_none(), "nothing set, no section");
        let prefix = |layer: Layer| Settings::from_layer(layer).invoices.prefix;
        assert_eq!(prefix(Layer::default()), "TG", "the default");
        assert_eq!(prefix(file.clone().under(none.clone())), "FILE");
        assert_eq!(prefix(file.clone().under(env.clone())), "ENV-1");
        assert_eq!(prefix(file.clone().under(env).under(flags.clone())), "FLAG");
        // A section the flags leave empty keeps what is below it.
        let empty_flags = Layer::from(Flags::default());
        assert_eq!(prefix(file.under(none).under(empty_flags)), "FILE");
        // Sections come after the top level's settings.
        let names = Layer::names();
        let at = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert_eq!(
            at("invoices.prefix"),
            at("max_connections") + 1,
            "{names:?}"
        );
        assert_eq!(env_name("invoices.prefix"), "TOLLGATE_INVOICES_PREFIX");
    }

    #[test]
    fn a_bad_file_names_its_line_and_key() {
        for (text, line, key, what) in [
            (
                "db = \"x.db\"\n\nlisten_on = \"a\"\n",
                3,
                "listen_on",
                "unknown field",
            ),
            (
                "drain_timeout_s = \"30\"\n",
                1,
                "drain_timeout_s",
                "invalid type",
            ),
            (
                "db = \"a\"\nidle_timeout_s = 0\n",
                2,
                "idle_timeout_s",
                "at least 1",
            ),
            ("listen = \"localhost\"\n", 1, "listen", "IP:port"),
            (
                "log_format = \"yaml\"\n",
                1,
                "log_format",
                "unknown variant",
            ),
            ("public_url = \"example.com\"\n", 1, "public_url", "http://"),
            (
                "db = \"a\"\n[invoices]\nprefix = \"acme\"\n",
                3,
                "invoices.prefix",
                "uppercase letters",
            ),
            (
                "[invoices]\nprefix = \"ACME-\"\n",
                2,
                "invoices.prefix",
                "begin and end",
            ),
            (
                "[invoices]\nnumber = 1\n",
                2,
                "invoices.number",
                "unknown field",
            ),
            (
                "[webhooks]\nallowed_hosts = [\"https://hooks.example.com\"]\n",
                2,
                "webhooks.allowed_hosts",
                "not a host name",
            ),
            (
                "[webhooks]\nallowed_hosts = \"hooks.example.com\"\n",
                2,
                "webhooks.allowed_hosts",
                "invalid type",
            ),
            (
                "[webhooks]\ntimeout_s = 0\n",
                2,
                "webhooks.timeout_s",
                "at least 1",
            ),
        ] {
            let e = parse_file(text).unwrap_err();
            assert!(
                e.starts_with(&format!("line {line}, key `{key}`: ")) && e.contains(what),
                "{text:?}: {e}"
            );
        }
    }

    #[test]
    fn webhook_hosts_are_a_list_in_the_file_and_separated_by_commas_elsewhere() {
        let file = parse_file(
            "[webhooks]\nallowed_hosts = [\"Hooks.example.com\", \"::1\"]\nretry_base_s = 30\n",
        )
        .unwrap();
        let s = Settings::from_layer(file.clone());
        assert_eq!(
            s.webhooks.allowed_hosts,
            Some(vec!["hooks.example.com".to_string(), "::1".to_string()])
        );
        assert_eq!(
            (s.webhooks.retry_base_s, s.webhooks.retry_for_s),
            (30, 259_200)
        );
        let api = s.webhooks.to_api();
        assert_eq!(api.retry_base, Duration::from_secs(30));
        assert_eq!(
            (api.max_in_flight, api.timeout),
            (32, Duration::from_secs(10))
        );
        assert_eq!(api.per_webhook(), 8, "a quarter of the slots by default");
        let small = Settings::from_layer(parse_file("[webhooks]\nmax_in_flight = 6\n").unwrap());
        assert_eq!(small.webhooks.max_in_flight_per_webhook, 1);
        let set = Settings::from_layer(
            parse_file("[webhooks]\nmax_in_flight = 6\nmax_in_flight_per_webhook = 4\n").unwrap(),
        );
        assert_eq!(set.webhooks.to_api().per_webhook(), 4);
        let over = Settings::from_layer(
            parse_file("[webhooks]\nmax_in_flight = 6\nmax_in_flight_per_webhook = 40\n").unwrap(),
        );
        assert_eq!(
            over.webhooks.to_api().per_webhook(),
            6,
            "never past the slots"
        );
        let env = Layer::from_env(&env(&[(
            "TOLLGATE_WEBHOOKS_ALLOWED_HOSTS",
            "a.example.com, b.example.com",
        )]))
        .unwrap();
        let s = Settings::from_layer(file.under(env));
        assert_eq!(
            s.webhooks.allowed_hosts,
            Some(vec![
                "a.example.com".to_string(),
                "b.example.com".to_string()
            ])
        );
        assert_eq!(
            s.webhooks.retry_base_s, 30,
            "the file's, under the environment's list"
        );
        assert!(Settings::from_layer(Layer::default())
            .webhooks
            .allowed_hosts
            .is_none());
        for bad in ["", "example.com:8080", "a b", "http://x"] {
            assert!(bad.parse::<HostList>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stripe_secrets_are_a_list_in_the_file_and_separated_by_commas_elsewhere_never_shown() {
        let file = parse_file(
            "[stripe]\nsecret_key = \"sk_test_hunter2\"\nwebhook_secrets = [\"whsec_old\", \"whsec_new\"]\n",
        )
        .unwrap();
        let s = Settings::from_layer(file.clone());
        s.validate().unwrap();
        let api = s.stripe.to_api(&s.top_ups).expect("payments are on");
        assert_eq!(api.secret_key, "sk_test_hunter2");
        assert_eq!(api.webhook_secrets, ["whsec_old", "whsec_new"]);
        assert_eq!(api.api_base, "https://api.stripe.com", "the default");
        let env = Layer::from_env(&env(&[
            (
                "TOLLGATE_STRIPE_WEBHOOK_SECRETS",
                "whsec_a, whsec_b,whsec_c",
            ),
            ("TOLLGATE_STRIPE_API_BASE", "http://127.0.0.1:9999/"),
        ]))
        .unwrap();
        let s = Settings::from_layer(file.under(env));
        let api = s.stripe.to_api(&s.top_ups).unwrap();
        assert_eq!(api.webhook_secrets, ["whsec_a", "whsec_b", "whsec_c"]);
        assert_eq!(api.api_base, "http://127.0.0.1:9999");
        // Never shown: not printed, not in Debug, not in an error.
        let shown = format!("{}{s:?}", s.to_toml());
        assert!(
            !shown.contains("hunter2") && !shown.contains("whsec_a"),
            "{shown}"
        );
        let e = parse_file("[stripe]\nsecret_key = \"sk live hunter2\"\n").unwrap_err();
        assert!(
            e.contains("stripe.secret_key") && !e.contains("hunter2"),
            "{e}"
        );
        // No key: payments are off.
        let off = Settings::from_layer(Layer::default());
        assert!(off.stripe.to_api(&off.top_ups).is_none());
        // A key without a signing secret could never credit a payment.
        let half = Settings::from_layer(parse_file("[stripe]\nsecret_key = \"sk_x\"\n").unwrap());
        assert!(half
            .validate()
            .unwrap_err()
            .to_string()
            .contains("webhook_secrets"));
    }

    #[test]
    fn top_ups_are_usd_in_whole_cents_within_a_range() {
        let d = Settings::from_layer(Layer::default()).top_ups.to_core();
        assert_eq!(d, tollgate_core::payments::TopUpSettings::default());
        let s = Settings::from_layer(
            parse_file("[top_ups]\nmin_usd = 10\nmax_usd = \"250.50\"\nretry_after_s = 60\n")
                .unwrap(),
        );
        let core = s.top_ups.to_core();
        assert_eq!(core.min, tollgate_core::Nanos(10_000_000_000));
        assert_eq!(core.max, tollgate_core::Nanos(250_500_000_000));
        assert_eq!(core.retry_after_ms, 60_000);
        assert!(
            s.to_toml().contains("max_usd = \"250.5\""),
            "{}",
            s.to_toml()
        );
        let env = Layer::from_env(&env(&[("TOLLGATE_TOP_UPS_MIN_USD", "300")])).unwrap();
        let inverted = Settings::from_layer(s_layer().under(env));
        assert!(inverted
            .validate()
            .unwrap_err()
            .to_string()
            .contains("min_usd"));
        for bad in ["0", "-1", "1.005", "abc", "1000001"] {
            assert!(bad.parse::<UsdAmount>().is_err(), "{bad}");
        }
        let e = parse_file("[top_ups]\nmin_usd = 1.5\n").unwrap_err();
        assert!(e.contains("top_ups.min_usd"), "{e}");
    }

    #[test]
    fn the_serverless_grace_is_whole_seconds_up_to_a_day() {
        let default = Settings::from_layer(Layer::default());
        assert_eq!(default.serverless.grace_s, 300);
        assert_eq!(
            default.serverless.to_core(),
            tollgate_core::serverless::ServerlessSettings::default()
        );
        assert!(
            default.to_toml().contains("[serverless]\ngrace_s = 300"),
            "{}",
            default.to_toml()
        );
        let file = parse_file("[serverless]\ngrace_s = 120\n").unwrap();
        assert_eq!(Settings::from_layer(file.clone()).serverless.grace_s, 120);
        let e = Layer::from_env(&env(&[("TOLLGATE_SERVERLESS_GRACE_S", "0")])).unwrap_err();
        assert!(e.to_string().contains("TOLLGATE_SERVERLESS_GRACE_S"), "{e}");
        let env = Layer::from_env(&env(&[("TOLLGATE_SERVERLESS_GRACE_S", "600")])).unwrap();
        assert_eq!(env.names_set(), ["serverless.grace_s"]);
        let flags = Layer::from(Flags {
            serverless: ServerlessFlags {
                grace_s: Some("86400".parse().unwrap()),
                ..ServerlessFlags::default()
            },
            ..Flags::default()
        });
        let grace = |layer: Layer| Settings::from_layer(layer).serverless;
        assert_eq!(grace(file.clone().under(env.clone())).grace_s, 600);
        let flagged = grace(file.under(env).under(flags));
        assert_eq!(flagged.grace_s, 86_400);
        assert_eq!(flagged.to_core().grace_ms, 86_400_000);
        for bad in ["0", "-5", "86401", "5m", ""] {
            assert!(bad.parse::<GraceSeconds>().is_err(), "{bad:?}");
        }
        for (text, what) in [
            ("[serverless]\ngrace_s = 0\n", "from 1 to 86400"),
            ("[serverless]\ngrace_s = 90000\n", "from 1 to 86400"),
            ("[serverless]\ngrace_s = \"300\"\n", "invalid type"),
            ("[serverless]\ngrace = 300\n", "unknown field"),
        ] {
            let e = parse_file(text).unwrap_err();
            assert!(
                e.starts_with("line 2, key `serverless.grace") && e.contains(what),
                "{text:?}: {e}"
            );
        }
    }

    #[test]
    fn gateway_mode_is_on_with_a_queue_address_and_its_tls_files_go_together() {
        assert!(Settings::from_layer(Layer::default()).gateway.is_none());
        // An empty table (the example file's, its keys commented out) sets nothing.
        assert!(Settings::from_layer(parse_file("[gateway]\n").unwrap())
            .gateway
            .is_none());
        let file = parse_file(
            "[gateway]\nqueue_listen = \"127.0.0.1:8443\"\nlease_s = 5\n\
             public_queue_url = \"https://queue.example.com/\"\n",
        )
        .unwrap();
        let settings = Settings::from_layer(file.clone());
        settings.validate().unwrap();
        let g = settings.gateway.as_ref().unwrap().to_gateway();
        assert_eq!(g.queue_listen, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(g.lease, Duration::from_secs(5));
        assert_eq!(
            g.public_queue_url.as_deref(),
            Some("https://queue.example.com")
        );
        assert_eq!(g.tls, None);
        assert_eq!(g.result_retention, Duration::from_secs(604_800));
        let env = Layer::from_env(&env(&[(
            "TOLLGATE_GATEWAY_DIRECT_LISTEN",
            "127.0.0.1:8444",
        )]))
        .unwrap();
        assert_eq!(env.names_set(), ["gateway.direct_listen"]);
        let both = Settings::from_layer(file.under(env));
        assert_eq!(
            both.gateway.unwrap().direct_listen,
            Some("127.0.0.1:8444".parse().unwrap())
        );
        for (text, what) in [
            ("[gateway]\nlease_s = 5\n", "gateway.queue_listen is not"),
            (
                "[gateway]\nqueue_listen = \"127.0.0.1:1\"\ntls_cert = \"c.pem\"\n",
                "go together",
            ),
        ] {
            let e = Settings::from_layer(parse_file(text).unwrap())
                .validate()
                .unwrap_err();
            assert!(e.to_string().contains(what), "{text:?}: {e}");
        }
        let e = parse_file("[gateway]\nqueue_listen = \"localhost\"\n").unwrap_err();
        assert!(e.starts_with("line 2, key `gateway.queue_listen`"), "{e}");
    }

    #[test]
    fn the_runner_event_retention_is_whole_hours_up_to_a_year() {
        let default = Settings::from_layer(Layer::default());
        assert_eq!(default.serverless.event_retention_h, 168);
        assert_eq!(
            default.serverless.to_core().event_retention_ms,
            tollgate_core::serverless::DEFAULT_EVENT_RETENTION_MS
        );
        assert!(
            default
                .to_toml()
                .contains("[serverless]\ngrace_s = 300\nevent_retention_h = 168"),
            "{}",
            default.to_toml()
        );
        let file = parse_file("[serverless]\nevent_retention_h = 24\n").unwrap();
        let retention = |layer: Layer| Settings::from_layer(layer).serverless;
        assert_eq!(retention(file.clone()).event_retention_h, 24);
        // Setting the retention leaves the grace at its default.
        assert_eq!(retention(file.clone()).grace_s, 300);
        let e =
            Layer::from_env(&env(&[("TOLLGATE_SERVERLESS_EVENT_RETENTION_H", "0")])).unwrap_err();
        assert!(
            e.to_string()
                .contains("TOLLGATE_SERVERLESS_EVENT_RETENTION_H"),
            "{e}"
        );
        let env =
            Layer::from_env(&env(&[("TOLLGATE_SERVERLESS_EVENT_RETENTION_H", "72")])).unwrap();
        assert_eq!(env.names_set(), ["serverless.event_retention_h"]);
        let flags = Layer::from(Flags {
            serverless: ServerlessFlags {
                event_retention_h: Some("8760".parse().unwrap()),
                ..ServerlessFlags::default()
            },
            ..Flags::default()
        });
        assert_eq!(
            retention(file.clone().under(env.clone())).event_retention_h,
            72
        );
        let flagged = retention(file.under(env).under(flags));
        assert_eq!(flagged.event_retention_h, 8760);
        assert_eq!(flagged.to_core().event_retention_ms, 8760 * 3_600_000);
        assert_eq!(
            flagged.to_core().event_retention_ms,
            tollgate_core::serverless::MAX_EVENT_RETENTION_MS
        );
        for bad in ["0", "-1", "8761", "7d", ""] {
            assert!(bad.parse::<RetentionHours>().is_err(), "{bad:?}");
        }
        for (text, what) in [
            ("[serverless]\nevent_retention_h = 0\n", "from 1 to 8760"),
            ("[serverless]\nevent_retention_h = 8761\n", "from 1 to 8760"),
            (
                "[serverless]\nevent_retention_h = \"168\"\n",
                "invalid type",
            ),
            (
                "[serverless]\nevent_retention_hours = 168\n",
                "unknown field",
            ),
        ] {
            let e = parse_file(text).unwrap_err();
            assert!(
                e.starts_with("line 2, key `serverless.event_retention") && e.contains(what),
                "{text:?}: {e}"
            );
        }
    }

    fn s_layer() -> Layer {
        parse_file("[top_ups]\nmax_usd = \"250.50\"\n").unwrap()
    }

    #[test]
    fn a_bad_environment_value_names_its_variable() {
        let e = Layer::from_env(&env(&[("TOLLGATE_MAX_CONNECTIONS", "many")])).unwrap_err();
        assert!(
            e.to_string().contains("TOLLGATE_MAX_CONNECTIONS") && e.to_string().contains("many"),
            "{e}"
        );
    }
}
