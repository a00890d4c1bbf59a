//! Gateway mode (API.md section 10): tollgate as the front door that customers' fal clients
//! talk to, calling the platform's model servers itself.
//!
//! - [`queue`]: fal's queue API (submit, status, its event stream, result, cancel) on the queue
//!   listener. A submission is an [`Op::GatewaySubmit`](tollgate_core::machine::Op) committed
//!   before it is answered, so an acknowledged request survives anything.
//! - [`dispatch`]: the dispatcher. It reads each endpoint's next requests (the accounts taking
//!   turns), starts them through the engine ([`Op::Dispatch`](tollgate_core::machine::Op):
//!   the hold, the lease), calls the endpoint's upstreams with fal's runner conventions
//!   (retries, `x-fal-billable-units`), and settles each request once with its answer.
//! - [`direct`]: fal's synchronous API on the direct listener: one call, no queue.
//! - [`listen`]: the listeners, plain HTTP or TLS (rustls, from PEM files).
//!
//! Money moves only through the engine: however many times a model server is called for a
//! request (retries, a dispatcher that died mid-call), the request is settled once.

pub mod direct;
pub mod dispatch;
pub mod listen;
pub mod queue;
pub mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tollgate_api::AppState;
use tollgate_core::ids::RequestId;

/// The `[gateway]` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayConfig {
    /// Where fal's queue API is served (`FAL_QUEUE_RUN_HOST`).
    pub queue_listen: SocketAddr,
    /// Where fal's direct API is served (`FAL_RUN_HOST`); `None`: not served.
    pub direct_listen: Option<SocketAddr>,
    /// The certificate chain and private key (PEM) both listeners serve TLS with; `None`:
    /// plain HTTP.
    pub tls: Option<TlsFiles>,
    /// The base of the URLs in the queue's answers (`status_url`, `response_url`, ...);
    /// `None`: from the request's `Host` and the listener's scheme.
    pub public_queue_url: Option<String>,
    /// The base of the direct listener's URLs, for the documentation of the deployment.
    pub public_direct_url: Option<String>,
    /// How long a finished request's result is kept.
    pub result_retention: Duration,
    /// The largest answer of a model server that is stored (and the largest input taken).
    pub max_body_bytes: usize,
    /// How long a dispatcher's lease on a running request lasts; renewed every third of it
    /// while the call runs, so another server takes a request over at most this long after
    /// its dispatcher died.
    pub lease: Duration,
    /// The first retry's delay; each later one doubles it, up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How long an upstream that failed (refused, timed out, 503) is skipped.
    pub upstream_cooldown: Duration,
    /// How often the dispatcher looks at the queue without being woken (requests another
    /// server queued, leases that ran out).
    pub poll: Duration,
}

/// PEM files of a TLS listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Default `result_retention_s`: a week.
pub const DEFAULT_RESULT_RETENTION_S: u64 = 7 * 24 * 3600;
/// Default `max_body_bytes`: 10 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

impl GatewayConfig {
    /// The defaults, listening on `queue_listen`.
    pub fn new(queue_listen: SocketAddr) -> GatewayConfig {
        GatewayConfig {
            queue_listen,
            direct_listen: None,
            tls: None,
            public_queue_url: None,
            public_direct_url: None,
            result_retention: Duration::from_secs(DEFAULT_RESULT_RETENTION_S),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            lease: Duration::from_secs(30),
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            upstream_cooldown: Duration::from_secs(5),
            poll: Duration::from_millis(200),
        }
    }
}

/// What the gateway's parts share.
pub struct Gateway {
    pub api: AppState,
    pub config: GatewayConfig,
    /// This server's dispatcher: the owner of the leases it takes.
    pub owner: Arc<str>,
    /// Wakes the dispatcher (a submission, a finished call).
    pub wake: Notify,
    /// Wakes the callers waiting on a request's status stream (a request finished here).
    pub finished: tokio::sync::broadcast::Sender<RequestId>,
    pub upstreams: upstream::Pools,
    /// The calls this server runs, by request: ended when their request is cancelled.
    pub running: Mutex<HashMap<RequestId, tokio::task::AbortHandle>>,
}

impl Gateway {
    pub fn new(api: AppState, config: GatewayConfig) -> Arc<Gateway> {
        let owner: Arc<str> = Arc::from(format!("gw-{}", uuid::Uuid::new_v4().simple()));
        let upstreams = upstream::Pools::new(config.upstream_cooldown);
        Arc::new(Gateway {
            api,
            config,
            owner,
            wake: Notify::new(),
            finished: tokio::sync::broadcast::channel(1024).0,
            upstreams,
            running: Mutex::default(),
        })
    }
}

/// The gateway's tasks, stopped together.
pub struct GatewayHandle {
    pub gateway: Arc<Gateway>,
    pub queue_addr: SocketAddr,
    pub direct_addr: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl GatewayHandle {
    /// Stops listening and dispatching. Calls in flight are dropped: their requests stay
    /// leased until the lease runs out, then any server takes them over.
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
        for (_, call) in self.gateway.running.lock().expect("running").drain() {
            call.abort();
        }
    }
}

/// Starts the gateway: binds its listeners, takes over the requests a previous process left
/// running (one server on its store), and starts the dispatcher.
pub async fn start(api: AppState, config: GatewayConfig) -> std::io::Result<GatewayHandle> {
    let tls = match &config.tls {
        Some(files) => Some(listen::tls_acceptor(files)?),
        None => None,
    };
    let queue_listener = tokio::net::TcpListener::bind(config.queue_listen).await?;
    let queue_addr = queue_listener.local_addr()?;
    let direct_listener = match config.direct_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
        None => None,
    };
    let direct_addr = match &direct_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    api.engine
        .admin(tollgate_engine::AdminCmd::EndGatewayLeases)
        .await
        .map_err(std::io::Error::other)?;
    let gateway = Gateway::new(api, config);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut tasks = vec![
        tokio::spawn(listen::serve(
            queue_listener,
            queue::router(gateway.clone(), scheme),
            tls.clone(),
        )),
        tokio::spawn(dispatch::run(gateway.clone())),
        tokio::spawn(dispatch::renew_leases(gateway.clone())),
    ];
    if let Some(l) = direct_listener {
        tasks.push(tokio::spawn(listen::serve(
            l,
            direct::router(gateway.clone()),
            tls,
        )));
    }
    Ok(GatewayHandle {
        gateway,
        queue_addr,
        direct_addr,
        tasks,
    })
}
