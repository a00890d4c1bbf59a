//! The HTTP server: the API's router served over hyper's HTTP/1.1 connections, with the limits
//! that keep hostile or broken clients from taking the process down.
//!
//! - **Header timeout.** A connection that has not sent a complete request head within
//!   `header_timeout` is closed: timed from the accept for the first request, and from the
//!   first byte of each later one on a keep-alive connection. Bytes dribbled in do not extend it.
//! - **Idle timeout.** A keep-alive connection with no request in flight and nothing sent for
//!   `idle_timeout` is closed.
//! - **Request timeout.** A request whose body is not received and answer not ready within
//!   `request_timeout` is answered in fal's error envelope (type `request_timeout`): 408 while
//!   its body was still arriving (and the connection closed), 503 once it was being handled
//!   (it may have been applied; a repeat with the same id is safe). A response that the client
//!   does not read for a further `idle_timeout` is cut.
//! - **Connection cap.** At most `max_connections` connections are open (lowered to fit the
//!   process's open-file limit). When a new connection finds them all taken, one without a
//!   request in flight is closed to make room: first those that never sent a complete request
//!   (silent, or slow with their head), then idle keep-alive ones, the oldest first; only when every one is busy with a request is the new one refused
//!   with a 503 in the envelope. An accept error (`EMFILE`) backs off, frees an idle
//!   connection's descriptor, and is logged once per burst.
//! - **Drain.** When `shutdown` resolves, the listener is closed, idle connections close at
//!   once, busy ones finish the request in flight and close; after `drain_timeout` the rest are
//!   cut and counted in the [`DrainReport`].
//!
//! hyper's own `header_read_timeout` is not used: it runs from the end of one response to the
//! next request head, so it would close every keep-alive connection idle for longer than the
//! header timeout. One watcher per connection does both instead, from what the connection's
//! reads and its service see.

use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tollgate_api::error::{ApiError, Envelope};
use tollgate_api::observe::{CallId, REQUEST_ID};
use tower::ServiceExt;

/// The limits every connection is held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Time to send a complete request head (`header_timeout_s`).
    pub header_timeout: Duration,
    /// Time a keep-alive connection may wait for its next request (`idle_timeout_s`).
    pub idle_timeout: Duration,
    /// Time to receive a request's body and answer it (`request_timeout_s`).
    pub request_timeout: Duration,
    /// Connections open at once (`max_connections`); lowered to fit the open-file limit.
    pub max_connections: usize,
}

impl Default for ConnLimits {
    /// Production defaults: a gateway on a healthy network sends a head in milliseconds, keeps
    /// its connections busy, and every call is answered in well under a minute.
    fn default() -> Self {
        ConnLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

/// How the drain went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections open when the shutdown began.
    pub open: usize,
    /// Of those, the ones still open when the drain timeout passed: closed, their requests
    /// unanswered.
    pub cut: usize,
}

/// Descriptors kept free of connections for the store, the runtime and the listener.
const RESERVED_FILES: usize = 64;

/// Serves `app` on `listener` until `shutdown` resolves, then drains (see the module's doc).
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
) -> io::Result<DrainReport> {
    let max = effective_max(limits.max_connections, open_files_limit());
    let (phase, _) = watch::channel(Phase::Serve);
    let server = Arc::new(Server {
        limits,
        epoch: Instant::now(),
        conns: Mutex::default(),
        slots: Arc::new(Semaphore::new(max)),
        max,
    });
    let mut next_id = 0u64;
    let mut accept_errors = Burst::default();
    let mut refusals = Burst::default();
    let mut backoff = MIN_BACKOFF;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of descriptors or memory: the next accept would fail the same way at
                // once. Free a descriptor held by an idle connection and wait a little.
                if accept_errors.hit() {
                    tracing::warn!(
                        error = %e,
                        "accept error: backing off (logged once until connections are \
                         accepted again; max_connections should stay below the open-file limit)"
                    );
                }
                server.evict_one();
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = MIN_BACKOFF;
        if let Some(n) = accept_errors.end() {
            tracing::info!(errors = n, "accepting connections again");
        }
        let Some(permit) = server.make_room().await else {
            if refusals.hit() {
                tracing::warn!(
                    max_connections = server.max,
                    "every connection is busy with a request: refusing new connections with \
                     503 (logged once until one is accepted again)"
                );
            }
            // A fresh socket's send buffer is empty: the answer fits without waiting.
            let _ = stream.try_write(&refusal_bytes(&CallId::fresh()));
            continue;
        };
        if let Some(n) = refusals.end() {
            tracing::info!(refused = n, "accepting connections again");
        }
        next_id += 1;
        let conn = Arc::new(Conn::new(server.now_ms()));
        server
            .conns
            .lock()
            .expect("connections")
            .insert(next_id, conn.clone());
        tokio::spawn(run_connection(
            server.clone(),
            next_id,
            conn,
            stream,
            app.clone(),
            permit,
            phase.subscribe(),
        ));
    }

    // Drain: no new connections (the kernel refuses them once the listener is closed), idle
    // ones close now, busy ones after their answer.
    drop(listener);
    let open = server.open();
    tracing::info!(open, "draining connections");
    let _ = phase.send(Phase::Drain);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(drain_timeout, server.slots.acquire_many(all)).await;
    let cut = match drained {
        Ok(_) => 0,
        Err(_) => {
            let cut = server.open();
            let _ = phase.send(Phase::Cut);
            // Cut connections close as soon as their task runs; let them go before the caller
            // flushes and exits.
            let _ =
                tokio::time::timeout(Duration::from_secs(1), server.slots.acquire_many(all)).await;
            tracing::warn!(
                cut,
                "drain timeout passed: connections with requests in flight were closed"
            );
            cut
        }
    };
    Ok(DrainReport { open, cut })
}

/// The server's phases, as every connection's watcher sees them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Serve,
    /// Finish the request in flight, then close.
    Drain,
    /// Close now.
    Cut,
}

const MIN_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// How long a new connection waits for an evicted one to let go of its slot.
const EVICTION_WAIT: Duration = Duration::from_millis(250);
/// Evictions tried for one new connection before it is refused.
const EVICTION_TRIES: usize = 4;
/// A time not yet reached, in a connection's millisecond fields.
const NEVER: u64 = u64::MAX;

struct Server {
    limits: ConnLimits,
    epoch: Instant,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    /// One permit per connection that may be open.
    slots: Arc<Semaphore>,
    max: usize,
}

impl Server {
    fn now_ms(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// A slot for a new connection: a free one, or one that an idle or slow-header connection
    /// gives up, oldest first. `None` when every connection is busy with a request.
    async fn make_room(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Some(permit);
        }
        for _ in 0..EVICTION_TRIES {
            if !self.evict_one() {
                return None;
            }
            // The evicted connection closes as soon as its watcher runs, unless a request
            // arrived on it meanwhile (then it closes after answering, and another is tried).
            if let Ok(Ok(permit)) =
                tokio::time::timeout(EVICTION_WAIT, self.slots.clone().acquire_owned()).await
            {
                return Some(permit);
            }
        }
        None
    }

    /// Asks a connection without a request in flight to close: one that never sent a
    /// complete request (still silent, or slow with its first head) before one between the
    /// requests of a client that has been served, the oldest first. False when there is none.
    fn evict_one(&self) -> bool {
        let conns = self.conns.lock().expect("connections");
        let victim = conns
            .values()
            .filter(|c| {
                c.in_flight.load(Ordering::Acquire) == 0 && !c.evicted.load(Ordering::Acquire)
            })
            .min_by_key(|c| {
                (
                    c.served.load(Ordering::Acquire),
                    c.idle_since_ms.load(Ordering::Acquire),
                )
            });
        match victim {
            Some(c) => {
                c.evicted.store(true, Ordering::Release);
                c.wake.notify_one();
                true
            }
            None => false,
        }
    }
}

/// What a connection's reads, its service and its watcher share.
struct Conn {
    /// Requests received whose answer has not been handed to the connection in full.
    in_flight: AtomicUsize,
    /// When the connection last had no request in flight (accepted, or its last answer sent).
    idle_since_ms: AtomicU64,
    /// When the next request head began: the accept for the first request, the first byte
    /// read since the last answer for later ones; `NEVER` while nothing came.
    head_started_ms: AtomicU64,
    /// When the request in flight arrived.
    busy_since_ms: AtomicU64,
    /// A request arrived on this connection.
    served: AtomicBool,
    /// Asked to close to make room.
    evicted: AtomicBool,
    /// Wakes the watcher: a head began, a request began or ended, an eviction.
    wake: Notify,
}

impl Conn {
    fn new(now_ms: u64) -> Conn {
        Conn {
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(now_ms),
            head_started_ms: AtomicU64::new(now_ms),
            busy_since_ms: AtomicU64::new(NEVER),
            served: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// When the connection is due to be closed if nothing changes, and why.
    fn deadline_ms(&self, limits: &ConnLimits) -> (u64, &'static str) {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            // The handler is bounded by the request timeout; past it only writing the answer
            // to a client that does not read can remain.
            let since = self.busy_since_ms.load(Ordering::Acquire);
            let limit = limits.request_timeout + limits.idle_timeout;
            return (since.saturating_add(millis(limit)), "answer not read");
        }
        let head = self.head_started_ms.load(Ordering::Acquire);
        if head != NEVER {
            return (
                head.saturating_add(millis(limits.header_timeout)),
                "header timeout",
            );
        }
        let idle = self.idle_since_ms.load(Ordering::Acquire);
        (
            idle.saturating_add(millis(limits.idle_timeout)),
            "idle timeout",
        )
    }
}

/// Serves one connection under its watcher, which closes it when a deadline passes, when it
/// is evicted, or when the server drains.
async fn run_connection(
    server: Arc<Server>,
    id: u64,
    conn: Arc<Conn>,
    stream: TcpStream,
    app: axum::Router,
    permit: OwnedSemaphorePermit,
    mut phase: watch::Receiver<Phase>,
) {
    let io = TokioIo::new(Watched {
        stream,
        conn: conn.clone(),
        server: server.clone(),
    });
    let service = {
        let (server, conn) = (server.clone(), conn.clone());
        hyper::service::service_fn(move |req| {
            handle(server.clone(), conn.clone(), app.clone(), req)
        })
    };
    let http = http1::Builder::new()
        // The watcher times heads (see the module's doc).
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(http);
    let mut watching_phase = true;
    let mut closing = false;
    loop {
        let (due_ms, why) = conn.deadline_ms(&server.limits);
        tokio::select! {
            r = http.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            () = tokio::time::sleep_until(server.at(due_ms)) => {
                // Still due with what the connection did meanwhile?
                if conn.deadline_ms(&server.limits).0 <= server.now_ms() {
                    tracing::debug!(reason = why, "closing connection");
                    break;
                }
            }
            () = conn.wake.notified() => {
                if conn.evicted.load(Ordering::Acquire) && !closing {
                    if conn.in_flight.load(Ordering::Acquire) == 0 {
                        tracing::debug!("closing an idle connection to make room");
                        break;
                    }
                    // A request arrived meanwhile: answer it, then close.
                    http.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            r = phase.changed(), if watching_phase => {
                let now = if r.is_err() { Phase::Cut } else { *phase.borrow_and_update() };
                match now {
                    Phase::Serve => {}
                    Phase::Drain => {
                        if conn.in_flight.load(Ordering::Acquire) == 0 {
                            break;
                        }
                        http.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    Phase::Cut => break,
                }
                watching_phase = now != Phase::Cut;
            }
        }
    }
    server.conns.lock().expect("connections").remove(&id);
    drop(permit);
}

/// One request: the router under the request timeout, its answer's body tracked so the
/// connection counts as busy until the answer is handed over in full.
async fn handle(
    server: Arc<Server>,
    conn: Arc<Conn>,
    app: axum::Router,
    req: Request<Incoming>,
) -> Result<Response<Tracked<axum::body::Body>>, Infallible> {
    let busy = Busy::start(&server, conn);
    let received = Arc::new(AtomicBool::new(req.body().is_end_stream()));
    // The call's request id is settled here, so an answer this server makes itself (the
    // timeout's) carries the same id the router's would have.
    let mut req = req;
    let id = CallId::of(req.headers());
    if let Ok(v) = HeaderValue::from_str(&id.0) {
        req.headers_mut().insert(REQUEST_ID, v);
    }
    let req = req.map(|body| Tracked {
        inner: body,
        end: End::Received(received.clone()),
    });
    let limit = server.limits.request_timeout;
    let resp = match tokio::time::timeout(limit, app.oneshot(req)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(never)) => match never {},
        Err(_) => timeout_answer(received.load(Ordering::Acquire), limit, &id),
    };
    Ok(resp.map(|body| Tracked {
        inner: body,
        end: End::Answered(Some(busy)),
    }))
}

fn timeout_answer(body_received: bool, limit: Duration, id: &CallId) -> axum::response::Response {
    use axum::response::IntoResponse;
    tracing::warn!(
        request_id = %id.0,
        body_received,
        request_timeout_s = limit.as_secs(),
        "a call was not answered within the request timeout"
    );
    let mut resp = ApiError::request_timeout(body_received, limit.as_secs())
        .with("request_id", id.0.clone())
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&id.0) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    if !body_received {
        // The rest of the body is not worth reading: the connection closes after the answer.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// A request in flight on a connection; dropped when its answer has been handed over.
struct Busy {
    server: Arc<Server>,
    conn: Arc<Conn>,
}

impl Busy {
    fn start(server: &Arc<Server>, conn: Arc<Conn>) -> Busy {
        conn.busy_since_ms.store(server.now_ms(), Ordering::Release);
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        conn.served.store(true, Ordering::Release);
        conn.head_started_ms.store(NEVER, Ordering::Release);
        conn.wake.notify_one();
        Busy {
            server: server.clone(),
            conn,
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let now = self.server.now_ms();
        self.conn.idle_since_ms.store(now, Ordering::Release);
        self.conn.head_started_ms.store(NEVER, Ordering::Release);
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.conn.wake.notify_one();
    }
}

/// A body whose end is noted: a request's (received in full), or an answer's (handed over:
/// the connection is no longer busy).
struct Tracked<B> {
    inner: B,
    end: End,
}

enum End {
    Received(Arc<AtomicBool>),
    Answered(Option<Busy>),
}

impl End {
    fn reached(&mut self) {
        match self {
            End::Received(flag) => flag.store(true, Ordering::Release),
            End::Answered(busy) => drop(busy.take()),
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None)) || this.inner.is_end_stream() {
            this.end.reached();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's socket, noting when the next request head begins.
struct Watched {
    stream: TcpStream,
    conn: Arc<Conn>,
    server: Arc<Server>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(())))
            && buf.filled().len() > before
            && this.conn.in_flight.load(Ordering::Acquire) == 0
            && this.conn.head_started_ms.load(Ordering::Acquire) == NEVER
        {
            // Bytes of a head: from now on, the header timeout runs.
            this.conn
                .head_started_ms
                .store(this.server.now_ms(), Ordering::Release);
            this.conn.wake.notify_one();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Counts a run of the same failure, so that it is logged once, when it begins.
#[derive(Default)]
struct Burst {
    count: u64,
}

impl Burst {
    /// Counts one; true for the first of a burst.
    fn hit(&mut self) -> bool {
        self.count += 1;
        self.count == 1
    }

    /// Ends a burst: how many it counted, if one was running.
    fn end(&mut self) -> Option<u64> {
        (self.count > 0).then(|| std::mem::take(&mut self.count))
    }
}

/// Errors of one connection that the next accept does not repeat.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The connection cap: `configured`, lowered to leave room under the open-file limit for the
/// store and the runtime.
fn effective_max(configured: usize, files: Option<u64>) -> usize {
    let configured = configured.max(1);
    let Some(files) = files.and_then(|f| usize::try_from(f).ok()) else {
        return configured;
    };
    let room = files.saturating_sub(RESERVED_FILES).max(files / 2).max(1);
    if configured > room {
        tracing::warn!(
            max_connections = configured,
            open_files_limit = files,
            using = room,
            "max_connections does not fit under the open-file limit; raise the limit \
             (systemd: LimitNOFILE=) to allow more connections"
        );
        room
    } else {
        configured
    }
}

/// The process's soft limit of open files, where the system tells it (Linux).
pub fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The answer to a connection refused at the cap, with a request id of its own.
fn refusal_bytes(id: &CallId) -> Vec<u8> {
    let error = ApiError::of_status(
        StatusCode::SERVICE_UNAVAILABLE,
        "every connection is busy with a request; try again shortly",
    )
    .with("request_id", id.0.clone());
    let body = serde_json::to_vec(&Envelope {
        error: error.object(),
    })
    .expect("an envelope serializes");
    let mut out = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\nretry-after: 1\r\n{REQUEST_ID}: {}\r\n\r\n",
        body.len(),
        id.0
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(NEVER - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_under_the_open_file_limit() {
        assert_eq!(effective_max(10_000, None), 10_000);
        assert_eq!(effective_max(10_000, Some(1024)), 960);
        assert_eq!(effective_max(100, Some(1024)), 100);
        assert_eq!(effective_max(10_000, Some(100)), 50);
        assert_eq!(effective_max(0, Some(1024)), 1);
    }

    #[test]
    fn a_burst_is_reported_once() {
        let mut b = Burst::default();
        assert_eq!(b.end(), None);
        assert!(b.hit());
        assert!(!b.hit());
        assert!(!b.hit());
        assert_eq!(b.end(), Some(3));
        assert!(b.hit());
    }

    #[test]
    fn the_refusal_is_a_complete_503_in_the_envelope() {
        let id = CallId::fresh();
        let bytes = refusal_bytes(&id);
        let text = String::from_utf8(bytes).expect("text");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains(&format!("x-request-id: {}", id.0)), "{head}");
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["error"]["type"], "server_error");
        assert_eq!(v["error"]["request_id"], id.0.as_str());
    }

    #[test]
    fn a_connection_is_due_by_its_state() {
        let limits = ConnLimits {
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(7),
            max_connections: 10,
        };
        let c = Conn::new(100);
        assert_eq!(c.deadline_ms(&limits), (1_100, "header timeout"));
        c.head_started_ms.store(NEVER, Ordering::Release);
        c.idle_since_ms.store(2_000, Ordering::Release);
        assert_eq!(c.deadline_ms(&limits), (7_000, "idle timeout"));
        c.in_flight.store(1, Ordering::Release);
        c.busy_since_ms.store(3_000, Ordering::Release);
        assert_eq!(c.deadline_ms(&limits), (15_000, "answer not read"));
    }
}
