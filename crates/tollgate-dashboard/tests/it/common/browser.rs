//! A real headless Chromium, driven over WebDriver (Debian's `chromium` and `chromedriver`;
//! `TOLLGATE_CHROMIUM` and `TOLLGATE_CHROMEDRIVER` name others). Each [`Browser`] runs its own
//! chromedriver on a free port and one browser session, both ended when it drops. A missing
//! browser fails the test, loudly: it is never skipped.

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// Desktop and phone viewports of the screenshots.
pub const DESKTOP: (u32, u32) = (1280, 900);
pub const PHONE: (u32, u32) = (390, 844);

pub struct Browser {
    pub client: Client,
    base: String,
    driver: Child,
}

fn tool(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

/// Where screenshots go: `target/dashboard-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp
        .parent()
        .expect("the target directory")
        .join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).expect("create the screenshot directory");
    dir
}

impl Browser {
    /// Starts chromedriver and a headless Chromium at desktop size, browsing `base`.
    pub async fn start(base: &str) -> Browser {
        Self::start_with(base, true).await
    }

    /// Like [`Browser::start`], with the pages' JavaScript off (as a browser with scripts
    /// disabled): forms are plain posts, charts their tables. The test's own scripts
    /// ([`Browser::js`]) still run, through WebDriver.
    pub async fn start_without_javascript(base: &str) -> Browser {
        Self::start_with(base, false).await
    }

    async fn start_with(base: &str, javascript: bool) -> Browser {
        let driver_bin = tool("TOLLGATE_CHROMEDRIVER", "chromedriver");
        let chromium = tool("TOLLGATE_CHROMIUM", "/usr/bin/chromium");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {driver_bin} ({e}): the browser tests need Debian's chromium and \
                     chromium-driver (scripts/test.sh installs them)"
                )
            });
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--hide-scrollbars", "--force-device-scale-factor=1",
                    format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
                ],
                "prefs": {
                    "profile.managed_default_content_settings.javascript":
                        if javascript { 1 } else { 2 },
                },
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let mut last = None;
        // chromedriver takes a moment to listen: connecting is retried until it answers.
        for _ in 0..100 {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    return Browser {
                        client,
                        base: base.to_string(),
                        driver,
                    }
                }
                Err(e) => {
                    last = Some(e.to_string());
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
        panic!("chromedriver at {url} never accepted a session: {last:?}");
    }

    /// Opens `path`. A sign-in link's page posts itself back as it opens: this returns once
    /// the page that answers the post has loaded.
    pub async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
        if path.starts_with("/dashboard/link/") {
            self.wait_until(
                "return document.getElementById('continue-sign-in') === null \
                 && document.readyState === 'complete';",
            )
            .await;
        }
    }

    /// Waits until `script` returns true (at most 5 s).
    async fn wait_until(&self, script: &str) {
        self.wait_until_within(script, 5).await
    }

    /// Waits until `script` returns true, at most `seconds` (a failsafe, not a timing
    /// assertion: a page that refreshes itself every few seconds gets there in one or two).
    pub async fn wait_until_within(&self, script: &str, seconds: u64) {
        for _ in 0..seconds * 40 {
            let done = self
                .client
                .execute(script, Vec::new())
                .await
                .unwrap_or(Value::Bool(false));
            if done == Value::Bool(true) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("the browser did not get there within {seconds} s: {script}");
    }

    /// The path of the page the browser shows.
    pub async fn path(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("the url")
            .path()
            .to_string()
    }

    /// The text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
            .text()
            .await
            .expect("its text")
    }

    /// An attribute of the first element matching `css`.
    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
            .attr(name)
            .await
            .expect("its attribute")
    }

    /// How many elements match `css`.
    pub async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .expect("a query")
            .len()
    }

    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Clicks a link or a submit button and waits until the browser shows the page it leads to
    /// (a new document, loaded): WebDriver's click returns before the navigation ends.
    pub async fn follow(&self, css: &str) {
        self.js("window.__tollgate_before_click = true; return true;")
            .await;
        self.click(css).await;
        self.wait_for_new_page().await;
    }

    /// Waits until the document marked before a navigation was replaced by a loaded one.
    pub async fn wait_for_new_page(&self) {
        self.wait_until(
            "return window.__tollgate_before_click === undefined \
             && document.readyState === 'complete';",
        )
        .await;
    }

    pub async fn fill(&self, css: &str, text: &str) {
        let el = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"));
        el.clear().await.expect("clear the field");
        el.send_keys(text).await.expect("type into the field");
    }

    /// Runs a script in the page and returns its value.
    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}"))
    }

    /// The accessibility problems axe-core (Deque's WCAG checker, vendored under
    /// `tests/assets/`) finds on the page as it is shown: one line per rule broken, with its
    /// impact and where. WCAG 2.1 A and AA rules and best practices.
    pub async fn accessibility_violations(&self) -> Vec<String> {
        const AXE: &str = include_str!("../../assets/axe.min.js");
        self.client
            .execute(&format!("{AXE}\nreturn true;"), Vec::new())
            .await
            .expect("load axe-core into the page");
        let found = self
            .client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, {resultTypes: ['violations']}).then(r => done(
                   r.violations.map(v => `${v.id} (${v.impact}): ${v.help}: ` +
                     v.nodes.map(n => n.target.join(' ')).join(', '))));",
                Vec::new(),
            )
            .await
            .expect("axe-core runs");
        found
            .as_array()
            .expect("a list")
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Asserts the page has no accessibility problem axe-core finds, at desktop and at phone
    /// width.
    pub async fn assert_accessible(&self, what: &str) {
        for (label, (w, h)) in [("desktop", DESKTOP), ("phone", PHONE)] {
            self.client.set_window_size(w, h).await.expect("resize");
            let found = self.accessibility_violations().await;
            assert!(
                found.is_empty(),
                "{what} at {label} width:\n{}",
                found.join("\n")
            );
        }
        self.client
            .set_window_size(DESKTOP.0, DESKTOP.1)
            .await
            .expect("resize");
    }

    /// Saves the page at desktop and phone widths as `<name>-desktop.png` and
    /// `<name>-phone.png` under `target/dashboard-screenshots/`, and returns to desktop size.
    pub async fn screenshots(&self, name: &str) {
        let dir = screenshot_dir();
        for (label, (w, h)) in [("desktop", DESKTOP), ("phone", PHONE)] {
            self.client
                .set_window_size(w, h)
                .await
                .expect("resize the window");
            let png = self.client.screenshot().await.expect("a screenshot");
            std::fs::write(dir.join(format!("{name}-{label}.png")), png).expect("save it");
        }
        self.client
            .set_window_size(DESKTOP.0, DESKTOP.1)
            .await
            .expect("resize the window");
    }

    /// Ends the browser session (also done, less politely, on drop).
    pub async fn close(mut self) {
        let client = self.client.clone();
        let _ = client.close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
