//! Shared by the integration tests that run the real `tollgate` binary: a `tollgate serve`
//! guard that waits for the listening line and kills the server when dropped.

use reqwest::blocking::{Client, RequestBuilder};
use serde_json::Value;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The built binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
/// The sample catalog shipped in the repository.
pub const SAMPLE_CATALOG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../catalog/sample.toml");

/// A running `tollgate serve`; killed (SIGKILL) when dropped, so a panic never leaks it.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:<port>`, as printed by the server.
    pub base: String,
    stderr: PathBuf,
}

impl Server {
    /// Starts `tollgate serve --db <db> --listen 127.0.0.1:0 [--catalog <catalog>]` with
    /// TOLLGATE_OPERATOR_KEY=`operator_key`; the server's stderr goes to the file `stderr`.
    pub fn start(db: &Path, stderr: PathBuf, operator_key: &str, catalog: Option<&Path>) -> Server {
        let err_file = File::create(&stderr).expect("create the stderr log");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--db")
            .arg(db)
            .args(["--listen", "127.0.0.1:0"]);
        if let Some(catalog) = catalog {
            cmd.arg("--catalog").arg(catalog);
        }
        let mut child = cmd
            .env("TOLLGATE_OPERATOR_KEY", operator_key)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err_file))
            .spawn()
            .expect("spawn tollgate serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut server = Server {
            child,
            base: String::new(),
            stderr,
        };
        let (tx, rx) = mpsc::channel::<String>();
        // Drains stdout for the life of the process.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("tollgate listening on http://") {
                        let addr = rest.split_whitespace().next().expect("an address");
                        server.base = format!("http://{addr}");
                        return server;
                    }
                }
                Err(e) => {
                    let status = server.child.try_wait().ok().flatten();
                    panic!(
                        "tollgate serve never printed `tollgate listening on http://` ({e:?}; \
                         exit status {status:?}); stderr:\n{}",
                        server.stderr_text()
                    );
                }
            }
        }
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A blocking HTTP client that ignores proxy settings (the server is on localhost).
pub fn client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// A fully received HTTP answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub replayed: bool,
    pub body: Value,
}

/// Sends with `key`. `Err` when no complete answer came back (connection refused or reset,
/// truncated body): the operation may or may not have been applied.
pub fn send(rb: RequestBuilder, key: &str) -> Result<Reply, String> {
    let resp = rb
        .header("Authorization", format!("Key {key}"))
        .send()
        .map_err(|e| {
            // The causes say whether the connection was refused or cut.
            let mut text = format!("send: {e}");
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            text
        })?;
    let status = resp.status().as_u16();
    let replayed = resp
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v.as_bytes() == b"true");
    let text = resp.text().map_err(|e| format!("reading the body: {e}"))?;
    let body = serde_json::from_str(&text)
        .map_err(|e| format!("status {status}: body is not JSON ({e}): {text}"))?;
    Ok(Reply {
        status,
        replayed,
        body,
    })
}

/// A call that must succeed with `status` (setup and verification).
pub fn must(r: Result<Reply, String>, status: u16, what: &str) -> Reply {
    match r {
        Ok(r) if r.status == status => r,
        Ok(r) => panic!("{what}: expected {status}, got {} {}", r.status, r.body),
        Err(e) => panic!("{what}: {e}"),
    }
}
