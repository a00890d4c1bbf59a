//! The demo history generator (`tollgate_dashboard::demo`): the same seed gives the same
//! history; the history spreads over its days, their hours, the account's keys and the
//! endpoints (a few dominant, a long tail) with plausible units; and seeding it bills every
//! event through the engine, dated on its day in the usage and in the ledger, which reconciles;
//! over that history, the overview's month figures are the usage query's (the overview reads
//! the months' days outside its chart only). Self-contained: a fresh store of
//! `tollgate_store::testing` and an engine on a manual clock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tollgate_api::auth::mint_key;
use tollgate_core::catalog::{document, Catalog};
use tollgate_core::ids::{AccountId, ApiKeyId, EndpointId, PurchaseId};
use tollgate_core::machine::{Op, UsageEvent};
use tollgate_core::price::Unit;
use tollgate_core::statement::MovementKind;
use tollgate_core::time::{day_start, MS_PER_DAY};
use tollgate_core::{Nanos, Timestamp};
use tollgate_dashboard::demo::{self, History, DEMO_ENDPOINTS};
use tollgate_engine::{AdminCmd, Clock, Engine};
use tollgate_query::timeframe::{Moment, RangeSpec, Timeframe};
use tollgate_query::usage::UsageQuery;
use tollgate_store::testing::{backends, Backend, TestDb};
use tollgate_store::{BillingMode, Scope};

const SAMPLE_CATALOG: &str = include_str!("../../../../catalog/sample.toml");
/// 2026-12-06T15:30:00Z: the tests' present.
const NOW: i64 = 1_796_571_000_000;

fn ids<T>(names: &[&str], parse: fn(&str) -> Result<T, tollgate_core::ids::IdError>) -> Vec<T> {
    names.iter().map(|n| parse(n).expect("valid id")).collect()
}

/// The sample catalog as loaded, effective 90 days before `now`.
fn sample_catalog(now: Timestamp) -> Catalog {
    let doc = sample_document(now);
    let effective_from = doc.effective_from.expect("set");
    let mut catalog = Catalog::default();
    for (i, entry) in doc.endpoints.iter().enumerate() {
        catalog
            .endpoints
            .insert(entry.def.id.clone(), entry.def.clone());
        catalog.insert_version(tollgate_core::catalog::PriceVersion {
            id: i as i64 + 1,
            endpoint: entry.def.id.clone(),
            account: None,
            effective_from,
            rule: entry.rule.clone(),
        });
    }
    catalog
}

fn sample_document(now: Timestamp) -> document::CatalogDocument {
    let mut doc = document::parse(SAMPLE_CATALOG).expect("the sample catalog parses");
    doc.effective_from = Some(now.minus_ms(90 * MS_PER_DAY));
    doc
}

fn history(seed: u64) -> History {
    let keys = ids(&["key-main", "key-batch"], ApiKeyId::parse);
    let mut h = demo::demo_history(AccountId::parse("acme").expect("valid"), keys);
    h.seed = seed;
    h
}

fn all(days: &[Vec<UsageEvent>]) -> Vec<&UsageEvent> {
    days.iter().flatten().collect()
}

#[test]
fn the_same_seed_gives_the_same_history_and_another_seed_another() {
    let now = Timestamp(NOW);
    let catalog = sample_catalog(now);
    let a = demo::plan(&history(7), &catalog, now).expect("plan");
    let b = demo::plan(&history(7), &catalog, now).expect("plan");
    assert_eq!(a, b);
    let c = demo::plan(&history(8), &catalog, now).expect("plan");
    assert_ne!(
        all(&a).iter().map(|e| &e.event_id).collect::<Vec<_>>(),
        all(&c).iter().map(|e| &e.event_id).collect::<Vec<_>>()
    );
    // A day's events depend on its place in the history, not on the time of day it is
    // seeded: an hour later, the same events, an hour later relative to nothing (same days).
    let later = Timestamp(NOW + 3_600_000);
    let d = demo::plan(&history(7), &catalog, later).expect("plan");
    assert_eq!(a, d);
    // Another account with the same seed gets other ids (two demo accounts can share a db).
    let mut other = history(7);
    other.account = AccountId::parse("globex").expect("valid");
    let e = demo::plan(&other, &catalog, now).expect("plan");
    let a_ids: BTreeSet<_> = all(&a).iter().map(|e| e.event_id.clone()).collect();
    assert!(all(&e).iter().all(|e| !a_ids.contains(&e.event_id)));
}

#[test]
fn the_history_spreads_over_its_days_hours_keys_and_endpoints_with_plausible_units() {
    let now = Timestamp(NOW);
    let catalog = sample_catalog(now);
    let h = history(2026);
    let days = demo::plan(&h, &catalog, now).expect("plan");
    let today = day_start(now);

    // One list per day of 2..=29 days ago, oldest first, each within its UTC day, in order.
    assert_eq!(days.len(), 28);
    let mut per_day = Vec::new();
    for (i, day) in days.iter().enumerate() {
        let days_ago = 29 - i as i64;
        let start = today.0 - days_ago * MS_PER_DAY;
        assert!(!day.is_empty(), "day {days_ago} ago has no events");
        for e in day {
            assert!(
                (start..start + MS_PER_DAY).contains(&e.timestamp.0),
                "an event of day {days_ago} ago at {}",
                e.timestamp.0
            );
            assert!(
                e.timestamp.0 <= now.0 - MS_PER_DAY,
                "inside the last 24 hours"
            );
        }
        assert!(day.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
        per_day.push(day.len());
    }
    // Volumes vary from day to day, and grow: the last week busier than the first.
    let distinct: BTreeSet<_> = per_day.iter().collect();
    assert!(distinct.len() >= 6, "day volumes {per_day:?}");
    let (first_week, last_week): (usize, usize) = (
        per_day[..7].iter().sum(),
        per_day[per_day.len() - 7..].iter().sum(),
    );
    assert!(last_week > first_week, "day volumes {per_day:?}");

    let events = all(&days);
    let n = events.len();
    assert!((150..=300).contains(&n), "{n} events in four weeks");
    // Unique ids.
    let unique: BTreeSet<_> = events.iter().map(|e| &e.event_id).collect();
    assert_eq!(unique.len(), n);

    // Spread over the day, busier in the afternoon than at night.
    let mut hours = [0usize; 24];
    for e in &events {
        hours[((e.timestamp.0 - day_start(e.timestamp).0) / 3_600_000) as usize] += 1;
    }
    assert!(hours.iter().filter(|h| **h > 0).count() >= 20, "{hours:?}");
    let (night, afternoon): (usize, usize) = (hours[1..5].iter().sum(), hours[13..17].iter().sum());
    assert!(afternoon > 2 * night, "{hours:?}");

    // Both keys, the first more.
    let mut keys: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &events {
        *keys
            .entry(e.api_key.as_ref().expect("a key").as_str())
            .or_default() += 1;
    }
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys["key-main"] > keys["key-batch"], "{keys:?}");

    // A few endpoints dominant, and a long tail.
    let mut by_endpoint: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &events {
        *by_endpoint.entry(e.endpoint.as_str()).or_default() += 1;
    }
    assert!(by_endpoint.len() >= 9, "{by_endpoint:?}");
    let mut counts: Vec<usize> = by_endpoint.values().copied().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let top5: usize = counts[..5].iter().sum();
    assert!(top5 * 100 >= n * 65, "top five {top5} of {n}: {counts:?}");
    assert!(top5 < n, "no tail: {counts:?}");
    assert_eq!(
        counts[0], by_endpoint[DEMO_ENDPOINTS[0]],
        "the first endpoint is the most used: {by_endpoint:?}"
    );

    // Plausible units per price unit; a few server errors, with nothing to bill.
    let mut failed = 0;
    for e in &events {
        if e.status_code >= 500 {
            failed += 1;
            assert_eq!(e.billable_units, None);
            continue;
        }
        assert_eq!(e.status_code, 200);
        let rule = &catalog
            .price_at(&e.endpoint, &h.account, e.timestamp)
            .expect("a price")
            .rule;
        let units = e.billable_units;
        let within = |lo: &str, hi: &str| {
            let u = units.expect("billable units");
            u >= lo.parse().unwrap() && u <= hi.parse().unwrap()
        };
        match rule.unit {
            Unit::Image | Unit::Megapixel => assert!(within("1", "4"), "{e:?}"),
            Unit::VideoSecond => assert!(within("5", "10"), "{e:?}"),
            Unit::Character => assert!(within("0.2", "3"), "{e:?}"),
            Unit::GpuSecond | Unit::ComputeSecond => {
                assert!(within("2", "60"), "{e:?}");
                assert_eq!(e.inference_seconds, units);
            }
            Unit::Request => assert!(within("1", "1"), "{e:?}"),
            Unit::Token => {
                assert_eq!(units, None);
                let t = e.output.tokens.expect("tokens");
                assert!(t.total() >= 1000, "{t:?}");
            }
            other => panic!("the demo endpoints have no {other:?} price"),
        }
    }
    assert!(
        failed >= 1 && failed * 20 < n,
        "{failed} server errors of {n}"
    );
}

#[test]
fn an_endpoint_without_a_price_that_old_is_named() {
    let now = Timestamp(NOW);
    let mut catalog = sample_catalog(now);
    for list in catalog.versions.values_mut() {
        for v in list {
            v.effective_from = now.minus_ms(10 * MS_PER_DAY);
        }
    }
    let e = demo::plan(&history(1), &catalog, now).expect_err("no price 29 days ago");
    assert!(e.to_string().contains("has no price in force"), "{e}");
    let mut unknown = history(1);
    unknown.endpoints = vec![EndpointId::parse("acme/none").expect("valid")];
    let e = demo::plan(&unknown, &catalog, now).expect_err("unknown endpoint");
    assert!(e.to_string().contains("acme/none"), "{e}");
}

/// An engine on a fresh database of `backend`, with a manual clock at `NOW`.
fn engine_on(db: &TestDb) -> (Engine, Arc<AtomicI64>) {
    let now = Arc::new(AtomicI64::new(NOW));
    let clock: Clock = {
        let now = now.clone();
        Arc::new(move || Timestamp(now.load(Ordering::SeqCst)))
    };
    let engine = Engine::start(db.open().expect("store"), clock).expect("engine");
    (engine, now)
}

async fn seeded_engine(backend: &Backend) -> (TestDb, Engine, Arc<AtomicI64>, History) {
    let db = TestDb::new(backend);
    let (engine, clock) = engine_on(&db);
    let now = Timestamp(NOW);
    engine
        .admin(AdminCmd::ApplyCatalog(Box::new(sample_document(now))))
        .await
        .expect("catalog");
    let account = AccountId::parse("acme").expect("valid");
    // The account and its credits from 31 days ago, as a customer who signed up then.
    clock.store(NOW - 31 * MS_PER_DAY, Ordering::SeqCst);
    engine
        .admin(AdminCmd::CreateAccount {
            username: account.clone(),
            billing: BillingMode::Prepaid,
        })
        .await
        .expect("account");
    engine
        .execute(Op::Purchase {
            account: account.clone(),
            purchase_id: PurchaseId::parse("welcome").expect("valid"),
            amount: Nanos::parse_usd("100").expect("valid"),
            paid: true,
            expires_at: None,
        })
        .await
        .expect("engine")
        .expect("purchase");
    let mut keys = Vec::new();
    for alias in ["main", "batch"] {
        let key = mint_key(
            Some(account.clone()),
            Scope::Api,
            alias.into(),
            engine.now(),
        );
        keys.push(key.record.key_id.clone());
        engine
            .admin(AdminCmd::InsertKey(key.record))
            .await
            .expect("key");
    }
    clock.store(NOW, Ordering::SeqCst);
    (db, engine, clock, demo::demo_history(account, keys))
}

#[tokio::test]
async fn seeding_bills_every_event_on_its_day_and_the_reads_and_the_ledger_agree() {
    for backend in backends() {
        let (_db, engine, clock, h) = seeded_engine(&backend).await;
        let set = {
            let clock = clock.clone();
            move |t: Timestamp| clock.store(t.0, Ordering::SeqCst)
        };
        let seeded = demo::seed_history(&engine, &h, Some(&set))
            .await
            .expect("seeded");
        clock.store(NOW, Ordering::SeqCst);
        let planned = demo::plan(&h, &engine.catalog(), engine.now()).expect("plan");
        let events = all(&planned);
        let failed = events.iter().filter(|e| e.status_code >= 500).count() as u64;
        assert_eq!(seeded.events, events.len() as u64, "{}", backend.name());
        assert_eq!(seeded.billed + failed, seeded.events);
        assert_eq!(seeded.replayed, 0);
        assert_eq!(seeded.days, 28);
        assert!(seeded.endpoints >= 9, "{seeded:?}");
        // A few dollars of the 100 bought.
        assert!(
            seeded.total > Nanos::parse_usd("1").unwrap()
                && seeded.total < Nanos::parse_usd("10").unwrap(),
            "{seeded:?}"
        );

        // The usage read over the last 30 days (the rollups) shows every billed event.
        let today = day_start(Timestamp(NOW));
        let spec = RangeSpec {
            start: Some(Moment::At(today.minus_ms(30 * MS_PER_DAY))),
            end: Some(Moment::At(Timestamp(NOW))),
            timeframe: Some(Timeframe::Day),
            bound_to_timeframe: false,
            ..RangeSpec::default()
        };
        let range = tollgate_query::timeframe::resolve(&spec, Timestamp(NOW)).expect("range");
        let usage = tollgate_query::usage::usage(
            &engine,
            UsageQuery {
                account: h.account.clone(),
                range,
                endpoints: Vec::new(),
                api_keys: Vec::new(),
                by_login: false,
                time_series: true,
                summary: true,
                by_key: false,
                cursor: None,
                limit: 10_000,
            },
        )
        .await
        .expect("usage");
        let summary = usage.summary.expect("summary");
        eprintln!("{}: {seeded:?}", backend.name());
        let total = summary
            .iter()
            .try_fold(Nanos::ZERO, |s, r| s.checked_add(r.total))
            .expect("sum");
        assert_eq!(total, seeded.total, "{}", backend.name());
        let billed_endpoints: BTreeSet<&str> = events
            .iter()
            .filter(|e| e.status_code < 500)
            .map(|e| e.endpoint.as_str())
            .collect();
        let shown: BTreeSet<&str> = summary.iter().map(|r| r.endpoint.as_str()).collect();
        assert_eq!(shown, billed_endpoints);
        let days_with_usage = usage
            .time_series
            .expect("time series")
            .iter()
            .filter(|b| !b.results.is_empty())
            .count();
        assert_eq!(days_with_usage, 28);

        // The ledger dated the charges on their days: a usage movement on each of them.
        let activity = tollgate_query::statements::credit_activity(
            &engine,
            h.account.clone(),
            None,
            None,
            None,
            1000,
        )
        .await
        .expect("credit activity");
        let usage_days: BTreeSet<i64> = activity
            .items
            .iter()
            .filter(|r| r.kind == MovementKind::Usage)
            .map(|r| day_start(r.at).0)
            .collect();
        assert_eq!(usage_days.len(), 28, "{}", backend.name());
        let row = tollgate_query::account(&engine, &h.account)
            .await
            .expect("account");
        assert_eq!(
            row.state.credit.balance,
            Nanos(Nanos::parse_usd("100").unwrap().0 - seeded.total.0)
        );
        let r = engine.read(|r| r.reconcile()).await.expect("reconcile");
        assert!(r.is_clean(), "{}", r.summary());

        // Seeding the same history again bills nothing more.
        let again = demo::seed_history(&engine, &h, None).await.expect("again");
        assert_eq!(again.replayed, seeded.events);
        assert_eq!((again.billed, again.total), (0, Nanos::ZERO));
        engine.shutdown().await.expect("shutdown");
    }
}

/// The account's usage total over `[from, to)`, as the usage query's summary gives it.
async fn usage_total(engine: &Engine, account: &AccountId, from: i64, to: i64) -> Nanos {
    let spec = RangeSpec {
        start: Some(Moment::At(Timestamp(from))),
        end: Some(Moment::At(Timestamp(to))),
        timeframe: Some(Timeframe::Day),
        bound_to_timeframe: false,
        ..RangeSpec::default()
    };
    let range = tollgate_query::timeframe::resolve(&spec, engine.now()).expect("range");
    let usage = tollgate_query::usage::usage(
        engine,
        UsageQuery {
            account: account.clone(),
            range,
            endpoints: Vec::new(),
            api_keys: Vec::new(),
            by_login: false,
            time_series: false,
            summary: true,
            by_key: false,
            cursor: None,
            limit: 10_000,
        },
    )
    .await
    .expect("usage");
    usage
        .summary
        .expect("summary")
        .iter()
        .try_fold(Nanos::ZERO, |s, r| s.checked_add(r.total))
        .expect("sum")
}

/// The text of the element after `marker` in `html`, up to the next tag.
fn text_after<'a>(html: &'a str, marker: &str) -> &'a str {
    let at = html
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in the page:\n{html}"));
    let rest = &html[at + marker.len()..];
    &rest[..rest.find('<').expect("a tag follows")]
}

#[tokio::test]
async fn the_overview_shows_this_and_last_months_spend_as_the_usage_query_totals_them() {
    use axum::body::Body;
    use axum::http::{header, Request};
    use tollgate_core::time::{month_start, previous_month_start};
    use tower::ServiceExt;

    let backend = Backend::Sqlite;
    let (_db, engine, clock, h) = seeded_engine(&backend).await;
    let set = |t: Timestamp| clock.store(t.0, Ordering::SeqCst);
    demo::seed_history(&engine, &h, Some(&set))
        .await
        .expect("seeded");
    let id = tollgate_api::auth::random_token();
    engine
        .admin(AdminCmd::StartWebSession(tollgate_store::WebSession {
            id_sha256: tollgate_api::auth::hash_secret(&id),
            account: Some(h.account.clone()),
            key_id: None,
            csrf: tollgate_api::auth::random_token(),
            created_at: Timestamp(NOW),
            expires_at: Timestamp(NOW + 30 * MS_PER_DAY),
            ended_at: None,
        }))
        .await
        .expect("session");
    let app = tollgate_dashboard::router(tollgate_dashboard::DashboardState::new(
        tollgate_api::AppState::new(engine.clone()),
        tollgate_dashboard::DashboardConfig::default(),
    ));
    // At three times: the 6th (this month's days all in the chart's 30 days, last month's
    // partly before them), the 31st (this month's first day before the chart, last month
    // wholly) and the 1st (last month's first days before it).
    for now in [NOW, NOW + 25 * MS_PER_DAY, NOW + 26 * MS_PER_DAY] {
        clock.store(now, Ordering::SeqCst);
        let this_month = month_start(Timestamp(now)).0;
        let last_month = previous_month_start(Timestamp(now)).0;
        let month = usage_total(&engine, &h.account, this_month, now + MS_PER_DAY).await;
        let last = usage_total(&engine, &h.account, last_month, this_month).await;
        let resp = app
            .clone()
            .oneshot(
                Request::get("/dashboard")
                    .header(header::COOKIE, format!("tollgate_session={id}"))
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("answer");
        assert_eq!(resp.status(), 200);
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body");
        let html = String::from_utf8(body.to_vec()).expect("utf-8");
        assert!(last > Nanos::ZERO, "no usage last month at {now}");
        assert_eq!(
            text_after(&html, "<span id=\"spend-month\">"),
            tollgate_dashboard::fmt::usd_cents(month),
            "this month at {now}"
        );
        assert_eq!(
            text_after(&html, "Last month: "),
            tollgate_dashboard::fmt::usd_cents(last),
            "last month at {now}"
        );
    }
    engine.shutdown().await.expect("shutdown");
}
