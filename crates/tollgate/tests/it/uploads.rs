//! Hostile uploads against the real server: 100 unauthenticated 15 MiB bodies sent at once
//! are refused with 401 before they are read (each answer closes its connection), and the
//! server's memory (VmRSS) does not grow lastingly; an authenticated body over its call's
//! limit is refused with 413 in fal's envelope, naming the limit.

use crate::common::{client, Server};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const OP_KEY: &str = "uploads-op:secret123";
const MIB: usize = 1 << 20;
const UPLOADS: usize = 100;
const UPLOAD_BYTES: usize = 15 * MIB;
/// How much the server's resident memory may have grown after the uploads.
const SLACK_BYTES: u64 = 100 * MIB as u64;

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Sends `head` and then up to `length` bytes of body while another thread reads the answer
/// (a server that answers early and closes must not lose its answer to a reset). Returns the
/// answer's head (lower-cased) and body.
fn upload(addr: &str, head: &str, length: usize) -> (String, Value) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reader = s.try_clone().unwrap();
    let answer = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
            if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                let h = String::from_utf8_lossy(&out[..end]).to_lowercase();
                let want = h
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if want.is_some_and(|n| out.len() >= end + 4 + n) {
                    break;
                }
            }
        }
        out
    });
    let head = format!(
        "{head}Host: {addr}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).expect("send the head");
    let chunk = vec![b' '; 256 * 1024];
    let mut sent = 0;
    // The server closes its end once it has answered: the rest is not sent.
    while sent < length {
        let n = chunk.len().min(length - sent);
        if s.write_all(&chunk[..n]).is_err() {
            break;
        }
        sent += n;
    }
    let out = answer.join().expect("the reader");
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer: {:?}", String::from_utf8_lossy(&out)));
    let head = String::from_utf8_lossy(&out[..end]).to_lowercase();
    let body = serde_json::from_slice(&out[end + 4..]).unwrap_or(Value::Null);
    (head, body)
}

#[test]
fn unauthenticated_uploads_are_refused_unread_and_oversized_bodies_get_413() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("uploads.db"),
        dir.path().join("server.log"),
        OP_KEY,
        None,
    );
    let addr = server.base.trim_start_matches("http://").to_string();
    let c = client();
    // Warm: the runtime's threads and buffers exist before the first measure.
    for _ in 0..20 {
        let r = c.get(format!("{}/v1/models", server.base)).send().unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    let before = rss(server.pid());

    let threads: Vec<_> = (0..UPLOADS)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                // Without a key, and with a wrong one.
                let auth = if i % 2 == 0 {
                    String::new()
                } else {
                    "Authorization: Key 0190a0b1-0000-7000-8000-000000000009:wrong\r\n".into()
                };
                let head = format!("POST /v1/usage-events HTTP/1.1\r\n{auth}");
                upload(&addr, &head, UPLOAD_BYTES)
            })
        })
        .collect();
    for t in threads {
        let (head, body) = t.join().expect("an upload");
        assert!(head.starts_with("http/1.1 401"), "{head}\n{body}");
        assert!(head.contains("connection: close"), "{head}");
        assert_eq!(body["error"]["type"], "authorization_error", "{body}");
    }
    let after = rss(server.pid());
    assert!(
        after < before + SLACK_BYTES,
        "the server's memory grew from {} MiB to {} MiB after {UPLOADS} refused uploads",
        before / MIB as u64,
        after / MIB as u64
    );

    // With the key, a body over the call's limit (1 MiB to create an account) is refused
    // after at most the limit was read.
    let head = format!(
        "POST /v1/admin/accounts HTTP/1.1\r\nAuthorization: Key {OP_KEY}\r\nx-request-id: too-big\r\n"
    );
    let (head, body) = upload(&addr, &head, 2 * MIB);
    assert!(head.starts_with("http/1.1 413"), "{head}\n{body}");
    let err = &body["error"];
    assert_eq!(err["type"], "payload_too_large", "{body}");
    assert_eq!(err["limit_bytes"], MIB, "{body}");
    assert_eq!(err["request_id"], "too-big", "{body}");
    // And the server serves on.
    let r = c.get(format!("{}/healthz", server.base)).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
}
