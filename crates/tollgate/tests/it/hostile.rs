//! Hostile clients against the real binary: connections that never finish their head
//! (slowloris), idle connects beyond the process's open-file limit, slow uploads, and every
//! connection busy at once. Each test ends with a normal caller being answered.
//!
//! No assertion depends on timing: the tests wait, up to a generous deadline, for what the
//! server must eventually do (close a connection, answer a call).

use crate::common::{client, must, send, Reply, Server};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const OP_KEY: &str = "hostile-op:secret123";
/// What a test waits for the server to do, at most.
const DEADLINE: Duration = Duration::from_secs(60);

/// The tests here hold hundreds of sockets each; one at a time keeps the test process itself
/// well under a 1024-file limit.
static SOCKETS: Mutex<()> = Mutex::new(());

fn sockets() -> std::sync::MutexGuard<'static, ()> {
    SOCKETS.lock().unwrap_or_else(|e| e.into_inner())
}

fn start(dir: &tempfile::TempDir, prefix: &[&str], flags: &[&str]) -> Server {
    Server::start_with(
        &dir.path().join("t.db"),
        dir.path().join("stderr.log"),
        OP_KEY,
        None,
        prefix,
        flags,
    )
}

fn addr(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_string()
}

/// A normal caller: an operator read on a fresh connection.
fn normal_call(server: &Server) -> Result<Reply, String> {
    send(
        client().get(format!("{}/v1/admin/reconciliation", server.base)),
        OP_KEY,
    )
}

/// Sockets the server has not closed yet, each optionally fed one more byte per round.
struct Held {
    open: Vec<(TcpStream, bool)>,
    closed: usize,
}

impl Held {
    fn new() -> Held {
        Held {
            open: Vec::new(),
            closed: 0,
        }
    }

    /// Adds a connection that sent `first`; a `dribbling` one sends one more byte of its head
    /// every round, never finishing it.
    fn add(&mut self, addr: &str, first: &[u8], dribbling: bool) {
        let mut s = TcpStream::connect(addr).expect("connect");
        if !first.is_empty() {
            s.write_all(first).expect("write the partial head");
        }
        s.set_nonblocking(true).expect("nonblocking");
        self.open.push((s, dribbling));
    }

    /// One round: notes the connections the server closed (end of stream or reset), and lets
    /// the dribbling ones send a byte.
    fn poll(&mut self) {
        let mut buf = [0u8; 4096];
        let mut still = Vec::with_capacity(self.open.len());
        for (mut s, dribbling) in self.open.drain(..) {
            let closed = loop {
                match s.read(&mut buf) {
                    Ok(0) => break true,
                    Ok(_) => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                    Err(_) => break true,
                }
            };
            let closed = closed || (dribbling && s.write(b"a").is_err());
            if closed {
                self.closed += 1;
            } else {
                still.push((s, dribbling));
            }
        }
        self.open = still;
    }

    /// Polls until at least `closed` connections were closed by the server, or the deadline.
    fn wait_closed(&mut self, closed: usize) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            self.poll();
            if self.closed >= closed || Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Reads one response from a blocking stream: its status and body (by `content-length`).
fn read_response(s: &mut TcpStream) -> (u16, String) {
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf).expect("a response");
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&data)
        );
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {head}"));
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().expect("a length"));
    while data.len() < head_end + length {
        let n = s.read(&mut buf).expect("the body");
        assert!(n > 0, "closed in the body");
        data.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&data[head_end..head_end + length]).to_string();
    (status, body)
}

/// Whether the server closes `s` (end of stream or reset) before the deadline.
fn closes(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn envelope_type(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    v["error"]["type"].as_str().unwrap_or_default().to_string()
}

fn reconciliation_request() -> String {
    format!(
        "GET /v1/admin/reconciliation HTTP/1.1\r\nhost: t\r\nauthorization: Key {OP_KEY}\r\n\r\n"
    )
}

#[test]
fn slowloris_connections_are_closed_after_the_header_timeout() {
    let _sockets = sockets();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(
        &dir,
        &[],
        &["--header-timeout-s", "1", "--idle-timeout-s", "1"],
    );
    let addr = addr(&server);
    let mut held = Held::new();
    for i in 0..500 {
        // Half stall after a partial head, half keep dribbling bytes of it.
        held.add(
            &addr,
            b"POST /v1/requests HTTP/1.1\r\nhost: t\r\nx-slow: ",
            i % 2 == 0,
        );
    }
    // Others are served while the slow ones are held.
    must(
        normal_call(&server),
        200,
        "a call beside 500 slow connections",
    );
    held.wait_closed(500);
    assert_eq!(
        held.closed,
        500,
        "slow connections the server never closed: {}",
        held.open.len()
    );
    must(
        normal_call(&server),
        200,
        "a call after the slow connections",
    );
}

#[test]
fn an_idle_keep_alive_connection_outlives_the_header_timeout_and_is_closed_when_idle() {
    let _sockets = sockets();
    let dir = tempfile::tempdir().expect("tempdir");
    // A header timeout shorter than the idle timeout: a connection waiting between requests
    // is idle, not slow.
    let server = start(
        &dir,
        &[],
        &["--header-timeout-s", "1", "--idle-timeout-s", "4"],
    );
    let mut s = TcpStream::connect(addr(&server)).expect("connect");
    s.write_all(reconciliation_request().as_bytes())
        .expect("write");
    assert_eq!(read_response(&mut s).0, 200);
    // Idle for longer than the header timeout: the connection still serves the next request.
    std::thread::sleep(Duration::from_secs(2));
    s.write_all(reconciliation_request().as_bytes())
        .expect("write");
    assert_eq!(
        read_response(&mut s).0,
        200,
        "second request on the connection"
    );
    // Then left idle, it is closed.
    assert!(closes(&mut s), "an idle connection was never closed");
}

#[test]
fn a_slow_upload_is_answered_408_in_the_envelope_and_closed() {
    let _sockets = sockets();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&dir, &[], &["--request-timeout-s", "1"]);
    let mut s = TcpStream::connect(addr(&server)).expect("connect");
    s.write_all(
        format!(
            "POST /v1/usage-events HTTP/1.1\r\nhost: t\r\nauthorization: Key {OP_KEY}\r\n\
             x-request-id: slow-upload-1\r\n\
             content-type: application/json\r\ncontent-length: 100000\r\n\r\n{{\"events\": ["
        )
        .as_bytes(),
    )
    .expect("write");
    let (status, body) = read_response(&mut s);
    assert_eq!(status, 408, "{body}");
    assert_eq!(envelope_type(&body), "request_timeout", "{body}");
    // The server's own answer carries the call's request id, as the router's do.
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["error"]["request_id"], "slow-upload-1", "{body}");
    assert!(closes(&mut s), "the connection stayed open after the 408");
    must(normal_call(&server), 200, "a call after the slow upload");
}

#[test]
fn idle_connects_beyond_the_file_limit_make_room_for_callers() {
    let _sockets = sockets();
    let dir = tempfile::tempdir().expect("tempdir");
    // 600 connects against a server allowed 256 open files and 128 connections; timeouts long
    // enough that only the cap frees room.
    let mut server = start(
        &dir,
        &["prlimit", "--nofile=256:256", "--"],
        &[
            "--max-connections",
            "128",
            "--header-timeout-s",
            "600",
            "--idle-timeout-s",
            "600",
        ],
    );
    let addr = addr(&server);
    let mut held = Held::new();
    for _ in 0..600 {
        held.add(&addr, b"", false);
    }
    // The oldest idle connections were closed to make room, so a caller is answered.
    must(normal_call(&server), 200, "a call beside 600 idle connects");
    held.wait_closed(600 - 128);
    assert!(
        held.closed >= 600 - 128,
        "only {} of 600 idle connections were closed",
        held.closed
    );
    assert!(server.is_running(), "the server died");
    let log = server.stderr_text();
    assert!(
        !log.contains("Too many open files"),
        "the server ran out of files:\n{log}"
    );
}

#[test]
fn when_every_connection_is_busy_a_new_one_is_refused_with_503() {
    let _sockets = sockets();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&dir, &[], &["--max-connections", "4"]);
    let addr = addr(&server);
    let body = r#"{"events": []}"#;
    // Four uploads in flight: each has been asked for its body (100 Continue).
    let mut busy: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).expect("connect");
            s.write_all(
                format!(
                    "POST /v1/usage-events HTTP/1.1\r\nhost: t\r\nauthorization: Key {OP_KEY}\r\n\
                     content-type: application/json\r\nexpect: 100-continue\r\n\
                     content-length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )
            .expect("write");
            let (status, _) = read_response(&mut s);
            assert_eq!(status, 100, "the upload was not asked for its body");
            s
        })
        .collect();
    // A fifth connection finds no idle one to replace.
    let mut fifth = TcpStream::connect(&addr).expect("connect");
    let (status, answer) = read_response(&mut fifth);
    assert_eq!(status, 503, "{answer}");
    assert_eq!(envelope_type(&answer), "server_error", "{answer}");
    assert!(closes(&mut fifth), "the refused connection stayed open");
    // The busy ones were kept: their uploads are answered by the handler.
    for s in &mut busy {
        s.write_all(body.as_bytes()).expect("write the body");
        let (status, answer) = read_response(s);
        assert!(
            status < 500 && status != 408,
            "an upload in flight was cut: {status} {answer}"
        );
    }
    drop(busy);
    // Once they are gone, callers are answered again.
    let deadline = Instant::now() + DEADLINE;
    loop {
        match normal_call(&server) {
            Ok(r) if r.status == 200 => break,
            other => assert!(
                Instant::now() < deadline,
                "no caller answered after the busy connections closed: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_answers_the_call_in_flight_closes_idle_connections_and_exits_0() {
    let _sockets = sockets();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start(&dir, &[], &[]);
    let addr = addr(&server);
    let mut idle = TcpStream::connect(&addr).expect("connect");
    idle.write_all(reconciliation_request().as_bytes())
        .expect("write");
    assert_eq!(read_response(&mut idle).0, 200);
    let body = r#"{"events": []}"#;
    let mut upload = TcpStream::connect(&addr).expect("connect");
    upload
        .write_all(
            format!(
                "POST /v1/usage-events HTTP/1.1\r\nhost: t\r\nauthorization: Key {OP_KEY}\r\n\
                 content-type: application/json\r\nexpect: 100-continue\r\n\
                 content-length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .expect("write");
    assert_eq!(read_response(&mut upload).0, 100, "the upload is in flight");
    server.terminate();
    assert!(
        closes(&mut idle),
        "an idle connection outlived the shutdown"
    );
    upload.write_all(body.as_bytes()).expect("write the body");
    let (status, answer) = read_response(&mut upload);
    assert!(
        status < 500 && status != 408,
        "the call in flight was cut: {status} {answer}"
    );
    assert!(closes(&mut upload), "the drained connection stayed open");
    let exit = server.wait_exit(DEADLINE).expect("the server exits");
    assert!(exit.success(), "exit status {exit}");
}
