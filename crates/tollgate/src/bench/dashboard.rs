//! The dashboard's pages in-process: every page of the customer dashboard's navigation
//! (`CUSTOMER_NAV`) and of the operator console's (`CONSOLE_NAV`), so a page added later is
//! measured too, rendered for an account with a year of usage over 50 endpoints (a month over
//! the same endpoints with `--quick`), three spending limits (one of them reached, so the
//! overview lists it) and a webhook, by the server's own router (the API's with the
//! dashboard's pages merged, as `serve` builds it) called in-process with `oneshot`, signed in
//! as a browser is: the customer through a sign-in link minted by the operator API and
//! posted back, the operator through the console's sign-in form. One row per page: its server
//! time (the whole body read) at p50, p99 and max; the target is under 100 ms.

use super::report::{histogram, record, Row};
use super::Plan;
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_api::auth::mint_key;
use tollgate_api::AppState;
use tollgate_core::catalog::document;
use tollgate_core::ids::{AccountId, EndpointId, LimitId, PurchaseId};
use tollgate_core::limits::{LimitAction, LimitScope, Period, SpendingLimit};
use tollgate_core::machine::Op;
use tollgate_core::time::{day_start, MS_PER_DAY};
use tollgate_core::{Nanos, Timestamp};
use tollgate_dashboard::demo::{self, History};
use tollgate_dashboard::layout::{Section, CONSOLE_NAV, CUSTOMER_NAV};
use tollgate_engine::{system_clock, AdminCmd, Clock, Engine};
use tollgate_store::sqlite::SqliteStore;
use tollgate_store::{BillingMode, Scope, WebhookEvents, WebhookRecord};
use tower::ServiceExt;

/// The target: every page under this, at p99.
const TARGET: Duration = Duration::from_millis(100);
/// Endpoints in the catalog and in the account's history.
const ENDPOINTS: usize = 50;
/// Other accounts, so the console's lists have more than one row.
const OTHER_ACCOUNTS: usize = 200;
const ACCOUNT: &str = "busy-customer";

/// A page's row name: `dashboard.page.customer.usage.inprocess`.
fn row_name(area: &str, s: &Section) -> String {
    let slug: String = s
        .label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("dashboard.page.{area}.{slug}.inprocess")
}

/// The bench's catalog of [`ENDPOINTS`] endpoints, one of each price unit in turn at plausible
/// prices (images, megapixels, seconds of video, characters, tokens, compute seconds, GPU
/// seconds, requests), its prices in force from `from`.
fn catalog(from: Timestamp) -> anyhow::Result<document::CatalogDocument> {
    let mut text = String::from(
        "prices_read_on = \"2026-09-15\"\n\n[machines]\nGPU-A100 = \"0.000275\"\n\
         GPU-H100 = \"0.000525\"\n",
    );
    for i in 0..ENDPOINTS {
        let cents = 1 + i % 5;
        let (category, extra) = match i % 8 {
            0 => (
                "text-to-image",
                format!("price = {{ unit = \"megapixel\", unit_price = \"0.00{cents}\" }}"),
            ),
            1 => (
                "text-to-image",
                format!("price = {{ unit = \"image\", unit_price = \"0.0{cents}\" }}"),
            ),
            2 => (
                "image-to-image",
                "machine_type = \"GPU-A100\"\nprice = { unit = \"gpu_second\" }".to_string(),
            ),
            3 => (
                "speech-to-text",
                "price = { unit = \"compute_second\", unit_price = \"0.00111\" }".to_string(),
            ),
            4 => (
                "text-to-speech",
                format!(
                    "price = {{ unit = \"character\", per = \"1000\", unit_price = \"0.0{cents}\" }}"
                ),
            ),
            5 => (
                "llm",
                "price = { unit = \"token\", tokens = { per = \"1000000\", input = \"0.15\", \
                 output = \"0.60\" } }"
                    .to_string(),
            ),
            6 => (
                "image-to-video",
                format!("price = {{ unit = \"video_second\", unit_price = \"0.0{cents}\" }}"),
            ),
            _ => (
                "utility",
                "price = { unit = \"request\", unit_price = \"0.018\" }".to_string(),
            ),
        };
        text.push_str(&format!(
            "\n[[endpoint]]\nid = \"bench/model-{i:02}\"\nname = \"Bench model {i:02}\"\n\
             category = \"{category}\"\nhold_units = \"4\"\n{extra}\n"
        ));
    }
    let mut doc = document::parse(&text).map_err(|e| anyhow::anyhow!("bench catalog: {e}"))?;
    doc.effective_from = Some(from);
    Ok(doc)
}

/// The server's router (the API and the dashboard's pages), as `serve` builds it.
fn router(engine: &Engine) -> axum::Router {
    let api = AppState::new(engine.clone());
    let pages = tollgate_dashboard::router(tollgate_dashboard::DashboardState::new(
        api.clone(),
        tollgate_dashboard::DashboardConfig::default(),
    ));
    tollgate_api::router_with(api, pages)
}

/// One call through the router: the status, the `name=value` of each cookie set, the
/// `location`, the body.
async fn call(
    app: &axum::Router,
    req: Request<Body>,
) -> anyhow::Result<(StatusCode, Vec<String>, Option<String>, Vec<u8>)> {
    let resp = app.clone().oneshot(req).await?;
    let status = resp.status();
    let cookies = resp
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .map(str::to_string)
        .collect();
    let location = resp
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await?;
    Ok((status, cookies, location, body.to_vec()))
}

fn cookie_named(cookies: &[String], name: &str) -> anyhow::Result<String> {
    cookies
        .iter()
        .find(|c| c.starts_with(&format!("{name}=")))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no {name} cookie among {cookies:?}"))
}

/// The customer signed in through a sign-in link the operator API minted: its session cookie.
async fn customer_cookie(app: &axum::Router, operator_key: &str) -> anyhow::Result<String> {
    let mint = Request::builder()
        .method(Method::POST)
        .uri(format!("/v1/admin/accounts/{ACCOUNT}/portal-sessions"))
        .header(header::AUTHORIZATION, format!("Key {operator_key}"))
        .body(Body::empty())?;
    let (status, _, _, body) = call(app, mint).await?;
    anyhow::ensure!(
        status == StatusCode::CREATED,
        "minting a sign-in link: {status}"
    );
    let link: serde_json::Value = serde_json::from_slice(&body)?;
    let url = link["url"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no url in {link}"))?;
    // The link's page posts it back; the POST signs in.
    let post = Request::builder()
        .method(Method::POST)
        .uri(url)
        .body(Body::empty())?;
    let (status, cookies, location, _) = call(app, post).await?;
    anyhow::ensure!(
        status == StatusCode::SEE_OTHER && location.as_deref() == Some("/dashboard"),
        "posting the sign-in link: {status} to {location:?}"
    );
    cookie_named(&cookies, "tollgate_session")
}

/// The operator signed in at the console's sign-in form: its session cookie.
async fn console_cookie(app: &axum::Router, operator_key: &str) -> anyhow::Result<String> {
    let (status, cookies, _, _) =
        call(app, Request::get("/console/login").body(Body::empty())?).await?;
    anyhow::ensure!(status == StatusCode::OK, "GET /console/login: {status}");
    let login = cookie_named(&cookies, "tollgate_login")?;
    let token = login.split_once('=').map(|(_, t)| t).unwrap_or_default();
    // A hex token, and a key of a UUID, a colon and hex: only the colon is escaped.
    let form = format!("csrf={token}&key={}", operator_key.replace(':', "%3A"));
    let post = Request::builder()
        .method(Method::POST)
        .uri("/console/login")
        .header(header::COOKIE, &login)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(form))?;
    let (status, cookies, _, _) = call(app, post).await?;
    anyhow::ensure!(
        status == StatusCode::SEE_OTHER,
        "signing in to the console: {status}"
    );
    cookie_named(&cookies, "tollgate_console")
}

/// A database with the busy account's history, the other accounts and an operator key: the
/// engine (on a clock it set back while seeding, now at the present), the operator key, and
/// what was seeded.
async fn seed(
    dir: &std::path::Path,
    plan: &Plan,
) -> anyhow::Result<(Engine, String, demo::Seeded, u32)> {
    let present = system_clock()();
    let now = Arc::new(AtomicI64::new(present.0));
    let clock: Clock = {
        let now = now.clone();
        Arc::new(move || Timestamp(now.load(Ordering::SeqCst)))
    };
    let engine = Engine::start(Box::new(SqliteStore::open(dir.join("bench.db"))?), clock)?;
    let days: u32 = if plan.quick { 30 } else { 365 };
    let per_day: u32 = if plan.quick { 300 } else { 3000 };
    engine
        .admin(AdminCmd::ApplyCatalog(Box::new(catalog(
            present.minus_ms((i64::from(days) + 10) * MS_PER_DAY),
        )?)))
        .await?;
    let operator = mint_key(None, Scope::Operator, "bench operator".into(), present);
    engine
        .admin(AdminCmd::InsertKey(operator.record.clone()))
        .await?;

    // The accounts sign up and buy credits before the history starts.
    now.store(
        day_start(present).0 - (i64::from(days) + 1) * MS_PER_DAY,
        Ordering::SeqCst,
    );
    let others = if plan.quick { 20 } else { OTHER_ACCOUNTS };
    let names: Vec<String> = std::iter::once(ACCOUNT.to_string())
        .chain((0..others).map(|i| format!("customer-{i:04}")))
        .collect();
    let mut purchases = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let account = AccountId::parse(name)?;
        engine
            .admin(AdminCmd::CreateAccount {
                username: account.clone(),
                billing: BillingMode::Prepaid,
            })
            .await?;
        let usd = if i == 0 { "1000000" } else { "50" };
        purchases.push(Op::Purchase {
            account,
            purchase_id: PurchaseId::parse("signup")?,
            amount: Nanos::parse_usd(usd)?,
            paid: true,
            expires_at: None,
        });
    }
    for answer in engine.execute_many(purchases).await? {
        anyhow::ensure!(answer.is_ok(), "a purchase was refused: {answer:?}");
    }
    let account = AccountId::parse(ACCOUNT)?;
    let mut keys = Vec::new();
    for alias in ["production", "staging", "batch jobs"] {
        let key = mint_key(
            Some(account.clone()),
            Scope::Api,
            alias.into(),
            engine.now(),
        );
        keys.push(key.record.key_id.clone());
        engine.admin(AdminCmd::InsertKey(key.record)).await?;
    }

    now.store(present.0, Ordering::SeqCst);
    let history_keys = keys.clone();
    let history = History {
        account,
        api_keys: keys,
        endpoints: (0..ENDPOINTS)
            .map(|i| EndpointId::parse(&format!("bench/model-{i:02}")))
            .collect::<Result<_, _>>()?,
        days_ago: 1..=days,
        requests_per_day: per_day,
        seed: 365,
    };
    let set_clock = |t: Timestamp| now.store(t.0, Ordering::SeqCst);
    let started = Instant::now();
    let seeded = demo::seed_history(&engine, &history, Some(&set_clock)).await;
    now.store(present.0, Ordering::SeqCst);
    let seeded = seeded?;
    // A live server commits all the time, and each batch folds the minutes behind it into
    // their hours: one batch now (a top-up), as the next call would.
    let top_up = Op::Purchase {
        account: AccountId::parse("customer-0000")?,
        purchase_id: PurchaseId::parse("top-up")?,
        amount: Nanos::parse_usd("10")?,
        paid: true,
        expires_at: None,
    };
    anyhow::ensure!(
        engine.execute(top_up).await?.is_ok(),
        "the top-up was refused"
    );
    eprintln!(
        "  (seeded {} usage events over {days} days and {} endpoints in {:.1} s)",
        seeded.events,
        seeded.endpoints,
        started.elapsed().as_secs_f64()
    );
    // Spending limits, as a customer keeps a few: the account's per month in its zone (blocks),
    // one key's per day (alerts; reached by a day of its usage), and the account's per week
    // (alerts). Each starts with what its period already charged.
    let keyed = history_keys.first().cloned();
    let limits = [
        (
            "lim_bench_month",
            LimitScope::Account,
            Period::Month,
            "America/New_York",
            "1000000",
            LimitAction::Block,
        ),
        (
            "lim_bench_key_day",
            keyed.map_or(LimitScope::Account, LimitScope::ApiKey),
            Period::Day,
            "UTC",
            "1",
            LimitAction::Alert,
        ),
        (
            "lim_bench_week",
            LimitScope::Account,
            Period::Week,
            "Europe/Berlin",
            "500000",
            LimitAction::Alert,
        ),
    ];
    for (id, scope, period, tz, usd, action) in limits {
        engine
            .admin(AdminCmd::CreateLimit {
                username: AccountId::parse(ACCOUNT)?,
                limit: SpendingLimit {
                    id: LimitId::parse(id)?,
                    scope,
                    period,
                    timezone: tz.parse().map_err(|e| anyhow::anyhow!("{tz}: {e}"))?,
                    amount: Nanos::parse_usd(usd)?,
                    action,
                    alert_at_percent: vec![50, 80, 100],
                    created_at: present,
                },
            })
            .await?;
    }
    // A webhook, for the console's list.
    engine
        .admin(AdminCmd::CreateWebhook(WebhookRecord {
            webhook_id: "wh_bench".into(),
            url: "https://billing.example.com/tollgate-events".into(),
            events: WebhookEvents::All,
            description: Some("billing notices".into()),
            secret: format!("whsec_{}", tollgate_api::auth::random_token()),
            created_at: present,
            deleted_at: None,
        }))
        .await?;
    let r = engine.read(|r| r.reconcile()).await?;
    anyhow::ensure!(r.is_clean(), "the seeded ledger: {}", r.summary());
    Ok((engine, operator.key(), seeded, days))
}

/// Renders `path` with `cookie` for the plan's time (at least 5 times, at most 2,000), after
/// one render not counted: the renders, the time they took, their latencies, the largest time
/// and the body's size. `None` when the page is not served (404): not written yet.
async fn measure(
    app: &axum::Router,
    path: &str,
    cookie: &str,
    duration: Duration,
) -> anyhow::Result<Option<(u64, Duration, hdrhistogram::Histogram<u64>, Duration, usize)>> {
    let get = || {
        Request::get(path)
            .header(header::COOKIE, cookie)
            .body(Body::empty())
    };
    for _ in 0..2 {
        let (status, _, location, body) = call(app, get()?).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        anyhow::ensure!(
            status == StatusCode::OK,
            "GET {path}: {status} (to {location:?}): {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(400)
                .collect::<String>()
        );
    }
    let mut h = histogram();
    let (mut n, mut max, mut bytes) = (0u64, Duration::ZERO, 0);
    let started = Instant::now();
    while n < 5 || (started.elapsed() < duration && n < 2000) {
        let req = get()?;
        let t = Instant::now();
        let (status, _, _, body) = call(app, req).await?;
        let took = t.elapsed();
        anyhow::ensure!(status == StatusCode::OK, "GET {path}: {status}");
        record(&mut h, took);
        max = max.max(took);
        bytes = body.len();
        n += 1;
    }
    Ok(Some((n, started.elapsed(), h, max, bytes)))
}

pub async fn run(
    plan: &Plan,
    wanted: &dyn Fn(&str) -> bool,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let pages: Vec<(String, &Section, &str)> = CUSTOMER_NAV
        .iter()
        .map(|s| (row_name("customer", s), s, "customer"))
        .chain(
            CONSOLE_NAV
                .iter()
                .map(|s| (row_name("console", s), s, "console")),
        )
        .filter(|(name, _, _)| wanted(name))
        .collect();
    if pages.is_empty() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let (engine, operator_key, seeded, days) = seed(dir.path(), plan).await?;
    let app = router(&engine);
    let customer = customer_cookie(&app, &operator_key).await?;
    let console = console_cookie(&app, &operator_key).await?;
    for (name, section, area) in pages {
        let cookie = if area == "customer" {
            &customer
        } else {
            &console
        };
        let Some((n, elapsed, h, max, bytes)) =
            measure(&app, section.path, cookie, plan.duration).await?
        else {
            eprintln!(
                "  {name}: GET {} is not served (404), skipped",
                section.path
            );
            continue;
        };
        let ms = |us: u64| us as f64 / 1000.0;
        let (p50, p99) = (h.value_at_quantile(0.5), h.value_at_quantile(0.99));
        let verdict = if Duration::from_micros(p99) < TARGET {
            "within the 100 ms target"
        } else {
            "OVER the 100 ms target"
        };
        let note = format!(
            "renders/s of GET {} ({} signed in; in-process, the whole body read, {} KB), an \
             account with {} usage events over {days} days and {} endpoints; p50 {:.1} ms, \
             p99 {:.1} ms, max {:.1} ms: {verdict}",
            section.path,
            area,
            bytes / 1024,
            seeded.events,
            seeded.endpoints,
            ms(p50),
            ms(p99),
            max.as_secs_f64() * 1000.0,
        );
        let mut row = Row::new(&name, "tollgate", 1, n, elapsed, Some(&h), note);
        row.max_us = Some(max.as_micros() as u64);
        rows.push(row);
    }
    engine.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_named_by_area_and_section() {
        assert_eq!(
            row_name(
                "customer",
                &Section {
                    label: "API keys",
                    path: "/dashboard/keys"
                }
            ),
            "dashboard.page.customer.api_keys.inprocess"
        );
        assert_eq!(
            row_name("console", &CONSOLE_NAV[0]),
            "dashboard.page.console.accounts.inprocess"
        );
    }

    #[test]
    fn the_catalog_has_fifty_endpoints_of_every_unit() {
        let doc = catalog(Timestamp(0)).expect("parses");
        assert_eq!(doc.endpoints.len(), ENDPOINTS);
        let units: std::collections::BTreeSet<String> = doc
            .endpoints
            .iter()
            .map(|e| format!("{:?}", e.rule.unit))
            .collect();
        assert_eq!(units.len(), 8, "{units:?}");
    }
}
