//! Shared by the integration tests that run the real `tollgate` binary: a `tollgate serve`
//! guard (also for `serve --demo`, with the keys it prints) that waits for the listening line
//! and kills the server when dropped.

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
        Server::start_with(db, stderr, operator_key, catalog, &[], &[])
    }

    /// [`Server::start`] with `flags` added to `tollgate serve`, the whole command run by
    /// `prefix` when it is not empty (`["prlimit", "--nofile=256:256", "--"]`).
    pub fn start_with(
        db: &Path,
        stderr: PathBuf,
        operator_key: &str,
        catalog: Option<&Path>,
        prefix: &[&str],
        flags: &[&str],
    ) -> Server {
        let cmd = Server::command(db, operator_key, catalog, prefix, flags);
        Server::spawn(cmd, stderr).0
    }

    /// [`Server::start`] in gateway mode: `flags` (at least `--gateway-queue-listen`) added to
    /// `tollgate serve`. Returns the server and its queue listener's base,
    /// `http://<addr>`, as the server printed it.
    pub fn start_gateway(
        db: &Path,
        stderr: PathBuf,
        operator_key: &str,
        catalog: Option<&Path>,
        flags: &[&str],
    ) -> (Server, String) {
        let cmd = Server::command(db, operator_key, catalog, &[], flags);
        let (server, lines) = Server::spawn(cmd, stderr);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines.recv_timeout(left).unwrap_or_else(|e| {
                panic!(
                    "tollgate serve never printed `gateway: fal's queue API on http://` ({e:?}); \
                     stderr:\n{}",
                    server.stderr_text()
                )
            });
            if let Some(rest) = line.strip_prefix("gateway: fal's queue API on http://") {
                let addr = rest
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .next()
                    .expect("an address");
                return (server, format!("http://{addr}"));
            }
        }
    }

    /// The `tollgate serve` command of [`Server::start_with`].
    fn command(
        db: &Path,
        operator_key: &str,
        catalog: Option<&Path>,
        prefix: &[&str],
        flags: &[&str],
    ) -> Command {
        let mut cmd = match prefix.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(BIN);
                cmd
            }
            None => Command::new(BIN),
        };
        cmd.arg("serve")
            .arg("--db")
            .arg(db)
            .args(["--listen", "127.0.0.1:0"]);
        if let Some(catalog) = catalog {
            cmd.arg("--catalog").arg(catalog);
        }
        cmd.args(flags);
        cmd.env("TOLLGATE_OPERATOR_KEY", operator_key);
        cmd
    }

    /// Starts `cmd`, a `tollgate serve` command built by the test, with its stderr going to the
    /// file `stderr`.
    pub fn start_command(cmd: Command, stderr: PathBuf) -> Server {
        Server::spawn(cmd, stderr).0
    }

    /// Starts `tollgate serve --demo --listen 127.0.0.1:0` in `dir` (where the demo creates its
    /// database) with no TOLLGATE_OPERATOR_KEY, so that the demo mints the operator key, and
    /// returns it with the demo account's keys and its dashboard sign-in link, all read from
    /// what the demo prints.
    pub fn start_demo(dir: &Path, stderr: PathBuf) -> (Server, DemoKeys) {
        Server::start_demo_with(dir, stderr, &[])
    }

    /// [`Server::start_demo`] with these environment variables set (`TOLLGATE_STRIPE_...`).
    pub fn start_demo_with(
        dir: &Path,
        stderr: PathBuf,
        env: &[(&str, &str)],
    ) -> (Server, DemoKeys) {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--demo", "--listen", "127.0.0.1:0"])
            .current_dir(dir)
            .env_remove("TOLLGATE_OPERATOR_KEY")
            // Its log may end up in a test's failure message: plain text.
            .env("NO_COLOR", "1")
            .envs(env.iter().copied());
        let (server, lines) = Server::spawn(cmd, stderr);
        let [mut operator, mut admin, mut api, mut link] = [None, None, None, None];
        let mut printed = String::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while operator.is_none() || admin.is_none() || api.is_none() || link.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines.recv_timeout(left).unwrap_or_else(|e| {
                panic!(
                    "tollgate serve --demo did not print its three keys and its dashboard link \
                     ({e:?}); stderr:\n{}",
                    server.stderr_text()
                )
            });
            printed.push_str(&line);
            printed.push('\n');
            for (label, slot) in [
                ("operator key", &mut operator),
                ("demo ADMIN key", &mut admin),
                ("demo API key", &mut api),
                ("dashboard link", &mut link),
            ] {
                if let Some(key) = line.trim_start().strip_prefix(label) {
                    if let Some(key) = key.trim_start().strip_prefix(':') {
                        *slot = Some(key.trim().to_string());
                    }
                }
            }
        }
        let keys = DemoKeys {
            operator: operator.expect("read above"),
            admin: admin.expect("read above"),
            api: api.expect("read above"),
            dashboard_link: link.expect("read above"),
            printed,
        };
        (server, keys)
    }

    /// Spawns `cmd` (a `tollgate serve`) with its stderr going to the file `stderr` and waits
    /// for its listening line; returns the stdout lines that follow it.
    fn spawn(mut cmd: Command, stderr: PathBuf) -> (Server, mpsc::Receiver<String>) {
        let err_file = File::create(&stderr).expect("create the stderr log");
        let mut child = cmd
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
        // Drains stdout for the life of the process, also once nobody reads the lines: a closed
        // pipe would fail the server's next print.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
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
                        return (server, rx);
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

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends SIGTERM (the way a service manager stops it).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits up to `timeout` for the server to exit; its status, if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => return None,
            }
        }
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
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

/// The keys `tollgate serve --demo` prints, each `<key_id>:<key_secret>`.
pub struct DemoKeys {
    /// The operator key it minted (scope `OPERATOR`).
    pub operator: String,
    /// The demo account's `ADMIN` key.
    pub admin: String,
    /// The demo account's `API` key.
    pub api: String,
    /// The one-time sign-in link to the demo account's dashboard (a full URL).
    pub dashboard_link: String,
    /// What the demo printed up to its last key (its summary of the account's history).
    pub printed: String,
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

/// Every billing event of the account behind `admin_key`, from `start` to `end`.
pub fn billing_events(
    c: &Client,
    base: &str,
    admin_key: &str,
    start: &str,
    end: &str,
) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url =
            format!("{base}/v1/models/billing-events?limit=10000&start={start}&end={end}");
        if let Some(cur) = &cursor {
            url.push_str(&format!("&cursor={cur}"));
        }
        let page = must(send(c.get(url), admin_key), 200, "billing events").body;
        out.extend(
            page["billing_events"]
                .as_array()
                .expect("billing_events")
                .clone(),
        );
        match page["next_cursor"].as_str() {
            Some(cur) if page["has_more"] == true => cursor = Some(cur.to_string()),
            _ => return out,
        }
    }
}

/// A webhook receiver on a free loopback port: records every request (path, headers, body)
/// and answers 200, or, while `hang` is set, accepts and never answers (the connection stays
/// open until the sender gives up or dies).
pub struct Receiver {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    got: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    hang: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// A request a [`Receiver`] got.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

impl Receiver {
    pub fn start() -> Receiver {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let hang = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (g, h) = (got.clone(), hang.clone());
        std::thread::spawn(move || {
            // Connections held open without an answer.
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // The head, then the body by its content-length.
                let (head_len, length) = loop {
                    let Ok(n) = stream.read(&mut chunk) else {
                        break (0, 0);
                    };
                    if n == 0 {
                        break (0, 0);
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..at]).to_string();
                        let length = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        break (at + 4, length);
                    }
                };
                if head_len == 0 {
                    continue;
                }
                while buf.len() < head_len + length {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf[..head_len]).to_string();
                let mut lines = head.lines();
                let path = lines
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .unwrap_or_default()
                    .to_string();
                let headers = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                let body = buf[head_len..].to_vec();
                g.lock().unwrap().push(Received {
                    path,
                    headers,
                    body,
                });
                if h.load(Ordering::SeqCst) {
                    held.push(stream);
                } else {
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                }
            }
        });
        Receiver { base, got, hang }
    }

    /// Whether it leaves requests unanswered from now on.
    pub fn hang(&self, hang: bool) {
        self.hang.store(hang, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every request so far.
    pub fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived (polling; failing the test after `within`:
    /// a failsafe for a server that never sends, not a timing assertion).
    pub fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.got();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{n} webhook requests never arrived; got {got:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
