//! The server's month close task (`tollgate_api::spawn_month_close_on`, which `serve` runs on a
//! one-minute timer): with nobody calling anything, an invoice-billed account's usage invoice
//! is issued by the task's first look after the engine's clock enters the next month, and at
//! startup the task catches up on every month missed while the server was down, each period
//! closed at its own month's end, numbered without gaps. The test paces the task's looks itself
//! and hears when each is over, so nothing waits on the wall clock.

use crate::harness::{int, rfc3339, TestApp, USD};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tollgate_engine::Engine;
use tollgate_store::testing::backends;

/// 2026-06-01T00:00:00Z.
const JUN: i64 = 1_780_272_000_000;
const DAY: i64 = 86_400_000;
const JUL: i64 = JUN + 30 * DAY;
const AUG: i64 = JUL + 31 * DAY;
const SEP: i64 = AUG + 31 * DAY;
/// One 1024x1024 image of `fal-ai/flux/dev`: 0.025 USD.
const IMAGE: i64 = 25_000_000;

/// The month close task, looking only when the test lets it.
struct MonthClose {
    go: mpsc::Sender<()>,
    idle: mpsc::Receiver<()>,
    task: tokio::task::JoinHandle<()>,
}

impl MonthClose {
    /// Starts the task; returns once it waits for its first look (a server's look at startup).
    async fn start(engine: Engine) -> MonthClose {
        let (go, go_rx) = mpsc::channel::<()>(1);
        let (idle_tx, idle) = mpsc::channel::<()>(1);
        // The task asks for its next look only when the last one is over: each ask is told.
        let looks = futures::stream::unfold((go_rx, idle_tx), |(mut go_rx, idle_tx)| async move {
            idle_tx.send(()).await.ok()?;
            go_rx.recv().await?;
            Some(((), (go_rx, idle_tx)))
        });
        let task = tollgate_api::spawn_month_close_on(engine, looks);
        let mut close = MonthClose { go, idle, task };
        close.idle.recv().await.expect("the task waits to look");
        close
    }

    /// Lets the task look once; returns when that look is over.
    async fn look(&mut self) {
        self.go.send(()).await.expect("the task is running");
        self.idle.recv().await.expect("the look is over");
    }
}

impl Drop for MonthClose {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn invoice_account(app: &TestApp, username: &str) {
    app.op(
        Method::POST,
        "/v1/admin/accounts",
        json!({"username": username, "billing": "invoice"}),
    )
    .await
    .expect(201);
}

/// `images` 1024x1024 images of `fal-ai/flux/dev` for `username`, used and recorded now.
async fn use_images(app: &TestApp, username: &str, images: usize) {
    let at = rfc3339(app.now_ms());
    let event = json!({
        "event_id": crate::harness::new_id(), "endpoint_id": "fal-ai/flux/dev",
        "username": username, "timestamp": at, "status_code": 200,
        "output": { "images": vec![json!({"width": 1024, "height": 1024}); images] },
    });
    let r = app.usage_events(json!([event])).await;
    let result = &r.expect(200)["results"][0];
    assert_eq!(result["billed"], true, "{result}");
}

/// Every invoice, as the operator lists them, oldest first.
async fn invoices(app: &TestApp) -> Vec<Value> {
    let list = app.op_get("/v1/admin/invoices").await;
    let mut all = list.expect(200)["invoices"].as_array().unwrap().clone();
    all.reverse();
    all
}

/// (number, kind, username, period start, period end, total nano-USD) of an invoice.
fn summary(i: &Value) -> (String, String, String, String, String, i64) {
    let s = |f: &str| i[f].as_str().unwrap_or_default().to_string();
    (
        s("number"),
        s("kind"),
        s("username"),
        s("period_start"),
        s("period_end"),
        int(&i["total_nano_usd"]),
    )
}

#[tokio::test]
async fn the_month_close_task_issues_a_usage_invoice_at_its_first_look_in_the_next_month() {
    for backend in backends() {
        let on = backend.name();
        let app = TestApp::spawn_at_on(&backend, JUN + 10 * DAY).await;
        invoice_account(&app, "bigco").await;
        use_images(&app, "bigco", 2).await;

        let mut close = MonthClose::start(app.engine.clone()).await;
        close.look().await;
        app.set_now(JUL - 1);
        close.look().await;
        assert_eq!(
            invoices(&app).await,
            Vec::<Value>::new(),
            "{on}: June is open"
        );

        // July has begun: the next look closes June, and only that look.
        app.set_now(JUL + 60_000);
        close.look().await;
        let issued = invoices(&app).await;
        let usage = |n: &str| {
            (
                n.to_string(),
                "usage".to_string(),
                "bigco".to_string(),
                rfc3339(JUN),
                rfc3339(JUL),
                2 * IMAGE,
            )
        };
        assert_eq!(
            issued.iter().map(summary).collect::<Vec<_>>(),
            [usage("TG-2026-000001")],
            "{on}"
        );
        assert_eq!(issued[0]["status"], "open", "{on}");
        assert_eq!(issued[0]["issued_at"], rfc3339(JUL + 60_000), "{on}");
        close.look().await;
        app.set_now(JUL + 20 * DAY);
        close.look().await;
        assert_eq!(invoices(&app).await, issued, "{on}: issued once");
        app.assert_reconciled().await;
    }
}

#[tokio::test]
async fn at_startup_the_month_close_task_catches_up_on_the_months_missed_while_down() {
    for backend in backends() {
        let on = backend.name();
        let app = TestApp::spawn_at_on(&backend, JUN + DAY).await;
        invoice_account(&app, "alpha").await;
        invoice_account(&app, "beta").await;
        app.create_account("cash").await.expect(201);
        // June: a top-up (numbered at once) and alpha's usage; July: beta's usage. Nothing
        // closes either month: no server task runs, and neither account is touched again.
        app.purchase("cash", "p1", "5", "paid").await.expect(201);
        use_images(&app, "alpha", 1).await;
        app.set_now(JUL + DAY);
        use_images(&app, "beta", 3).await;

        // Back two months later, in September: the first look closes June's and July's periods.
        app.set_now(SEP + DAY);
        let mut close = MonthClose::start(app.engine.clone()).await;
        close.look().await;
        let all = invoices(&app).await;
        let row = |n: &str, kind: &str, who: &str, from: i64, to: i64, total: i64| {
            (
                n.to_string(),
                kind.to_string(),
                who.to_string(),
                rfc3339(from),
                rfc3339(to),
                total,
            )
        };
        assert_eq!(
            all.iter().map(summary).collect::<Vec<_>>(),
            [
                row(
                    "TG-2026-000001",
                    "top_up",
                    "cash",
                    JUN + DAY,
                    JUN + DAY,
                    5 * USD
                ),
                row("TG-2026-000002", "usage", "alpha", JUN, JUL, IMAGE),
                row("TG-2026-000003", "usage", "beta", JUL, AUG, 3 * IMAGE),
            ],
            "{on}"
        );
        for usage in &all[1..] {
            assert_eq!(usage["issued_at"], rfc3339(SEP + DAY), "{on}");
        }
        close.look().await;
        assert_eq!(invoices(&app).await, all, "{on}: nothing more to close");
        app.assert_reconciled().await;
    }
}
