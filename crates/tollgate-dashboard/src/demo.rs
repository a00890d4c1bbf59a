//! Usage history for demos and benchmarks: deterministic, realistic usage of one account over
//! past days, billed through the engine's normal write path (`Op::UsageEvent`, a day's events
//! in batches of `execute_many`), so every figure a page shows of it is what billing recorded.
//!
//! What is generated, from a seed (a small SplitMix64 generator, so the same seed gives the
//! same events on any machine):
//!
//! - each day a number of requests that varies: a growth trend across the span (older days
//!   about 70% of the newest), noise of ±25%, and now and then a busy day (×1.6);
//! - each request's endpoint from the list given, most popular first: weights fall as
//!   `1/(rank+2)²`, so the first few take most requests and the rest are a long tail;
//! - its time within its UTC day, more in the working hours (Europe and America) than at
//!   night, never in the future;
//! - its API key among the account's, the first most used;
//! - plausible billable units for the endpoint's price unit (1-4 images, 1-4 megapixels, 5-10
//!   seconds of video, 0.2-3 thousand characters, thousands of tokens, seconds of GPU time...),
//!   plausible inference and queue seconds, and one request in fifty a server error (never
//!   billed).
//!
//! The history's days are UTC calendar days counted back from the engine's clock's day: day 0
//! is today (up to now), day 1 yesterday. A usage event is priced at the price version in
//! force at its timestamp, so the catalog must have versions that old (apply it with an
//! `effective_from` before the first day; [`plan`] says which endpoint has none).
//!
//! The ledger dates a charge by the engine's clock, not by the event's timestamp. A caller
//! with a clock it can set (a demo or a bench) passes a setter, and each batch is then
//! committed at its last event's time, in order, so statements and credit activity show the
//! charges on their days too; without one, the whole history is charged today.

use std::ops::RangeInclusive;
use tollgate_core::catalog::Catalog;
use tollgate_core::ids::{AccountId, ApiKeyId, EndpointId, RequestId};
use tollgate_core::machine::{Op, Outcome, Rejection, UsageEvent};
use tollgate_core::price::{Output, PriceRule, Tokens, Unit};
use tollgate_core::time::{day_start, MS_PER_DAY};
use tollgate_core::{Nanos, Timestamp};
use tollgate_engine::{Engine, EngineError};

use rust_decimal::Decimal;

/// What history to write.
#[derive(Clone, Debug)]
pub struct History {
    pub account: AccountId,
    /// The keys the requests were made with (none: requests without a key).
    pub api_keys: Vec<ApiKeyId>,
    /// The endpoints used, most popular first.
    pub endpoints: Vec<EndpointId>,
    /// Which days, in days before today (UTC): `2..=29` is four weeks ending the day before
    /// yesterday.
    pub days_ago: RangeInclusive<u32>,
    /// Requests on a typical recent day (older days have fewer).
    pub requests_per_day: u32,
    /// The same seed (and account) gives the same history.
    pub seed: u64,
}

/// What [`seed_history`] billed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seeded {
    /// Usage events reported.
    pub events: u64,
    /// Of which billed now (the others were server errors, or already reported).
    pub billed: u64,
    /// Events the engine had already recorded (the same history seeded again): answered
    /// with their first answer, nothing billed again.
    pub replayed: u64,
    /// The sum of the billed events' totals, as the engine answered them.
    pub total: Nanos,
    /// Days with at least one event.
    pub days: u32,
    /// Endpoints with at least one event.
    pub endpoints: usize,
    /// The first and last event's time.
    pub first: Option<Timestamp>,
    pub last: Option<Timestamp>,
}

/// Why the history could not be written. Batches already committed stay.
#[derive(Debug)]
pub enum DemoError {
    /// An endpoint of the list is not in the catalog, or has no price in force on a day of
    /// the history.
    NoPrice {
        endpoint: EndpointId,
        at: Timestamp,
    },
    /// The engine refused an event.
    Refused {
        event_id: RequestId,
        rejection: Rejection,
    },
    Engine(EngineError),
}

impl std::fmt::Display for DemoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DemoError::NoPrice { endpoint, at } => write!(
                f,
                "endpoint {endpoint} has no price in force at {} (ms since the epoch): apply \
                 the catalog with an effective_from before the history's first day",
                at.0
            ),
            DemoError::Refused {
                event_id,
                rejection,
            } => write!(f, "usage event {event_id} was refused: {rejection}"),
            DemoError::Engine(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for DemoError {}

impl From<EngineError> for DemoError {
    fn from(e: EngineError) -> Self {
        DemoError::Engine(e)
    }
}

/// The most events sent in one `execute_many`.
pub const BATCH: usize = 1000;

/// One in this many requests is a server error (unbilled).
const SERVER_ERROR_ONE_IN: u64 = 50;

/// Requests per hour of the UTC day, relative: quiet at night, busiest in the afternoon
/// (Europe's afternoon and America's morning).
const HOURS: [u64; 24] = [
    4, 3, 3, 2, 2, 3, 4, 6, 8, 10, 11, 12, 12, 13, 14, 15, 15, 14, 13, 11, 9, 7, 6, 5,
];

/// SplitMix64: small, fast, and the same sequence everywhere.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// An index picked with probability proportional to its weight.
    pub fn weighted(&mut self, weights: &[u64]) -> usize {
        let total: u64 = weights.iter().sum();
        let mut x = self.next_u64() % total.max(1);
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }

    /// One of `items`, uniformly.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next_u64() % items.len() as u64) as usize]
    }
}

/// FNV-1a, to fold a name into a seed.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The relative popularity of the endpoint at `rank` (0 the most used): `1/(rank+2)²`.
pub fn endpoint_weight(rank: usize) -> u64 {
    let r = rank as u64 + 2;
    1_000_000 / (r * r)
}

/// The generator of one day of the history: the same for the same seed, account and day.
fn day_rng(history: &History, days_ago: u32) -> Rng {
    let mut mix = Rng::new(history.seed ^ fnv(history.account.as_str()));
    let base = mix.next_u64();
    let mut rng = Rng::new(base ^ u64::from(days_ago).wrapping_mul(0xA24B_AED4_963E_E407));
    rng.next_u64();
    rng
}

/// How many requests day `days_ago` has: a trend from about 70% (oldest) to 100% (newest) of
/// `requests_per_day`, ±25% noise, and one day in twelve busy (×1.6). At least one.
fn day_volume(history: &History, days_ago: u32, rng: &mut Rng) -> u64 {
    let (newest, oldest) = (*history.days_ago.start(), *history.days_ago.end());
    let span = u64::from(oldest.saturating_sub(newest)).max(1);
    let age = u64::from(days_ago.saturating_sub(newest));
    // Per mille.
    let trend = 1000 - 300 * age / span;
    let noise = rng.between(750, 1250);
    let busy = if rng.between(1, 12) == 1 { 1600 } else { 1000 };
    let n = u64::from(history.requests_per_day) * trend / 1000 * noise / 1000 * busy / 1000;
    n.max(1)
}

/// Tenths: `Decimal` of `n / 10`.
fn tenths(n: u64) -> Decimal {
    Decimal::new(n as i64, 1)
}

/// A request's measurements for a price `rule`: billable units (or tokens, which a token price
/// reads from the output), and the inference seconds it took.
fn measure(rule: &PriceRule, rng: &mut Rng) -> (Option<Decimal>, Output, Decimal) {
    let few = [1u64, 1, 1, 1, 2, 2, 3, 4];
    let (units, inference) = match rule.unit {
        Unit::Image => (Decimal::from(rng.pick(&few)), tenths(rng.between(15, 90))),
        Unit::Megapixel => (Decimal::from(rng.pick(&few)), tenths(rng.between(15, 90))),
        Unit::VideoSecond => (
            Decimal::from(rng.between(5, 10)),
            tenths(rng.between(400, 1800)),
        ),
        Unit::Video => (Decimal::ONE, tenths(rng.between(400, 1800))),
        Unit::AudioSecond => (
            Decimal::from(rng.between(10, 60)),
            tenths(rng.between(50, 300)),
        ),
        Unit::Request => (Decimal::ONE, tenths(rng.between(5, 30))),
        // Thousands of characters (a price per 1,000 characters bills in thousands).
        Unit::Character => (tenths(rng.between(2, 30)), tenths(rng.between(10, 60))),
        Unit::Frame => (
            Decimal::from(rng.between(24, 240)),
            tenths(rng.between(100, 600)),
        ),
        // Blocks of 16 frames.
        Unit::InputFrame => (
            Decimal::from(rng.between(4, 30)),
            tenths(rng.between(100, 600)),
        ),
        Unit::Token => {
            let image = rule
                .tokens
                .as_ref()
                .is_some_and(|t| !t.image_output.is_zero());
            let tokens = if image {
                Tokens {
                    input: rng.between(50, 400),
                    image_output: rng.between(1000, 5000),
                    ..Tokens::default()
                }
            } else {
                Tokens {
                    input: rng.between(500, 4000),
                    output: rng.between(200, 2000),
                    ..Tokens::default()
                }
            };
            let output = Output {
                tokens: Some(tokens),
                ..Output::default()
            };
            return (None, output, tenths(rng.between(50, 400)));
        }
        Unit::ComputeSecond | Unit::GpuSecond => {
            let s = tenths(rng.between(20, 600));
            (s, s)
        }
    };
    (Some(units), Output::default(), inference)
}

/// A UUID-shaped event id drawn from the day's generator (unique per seed and account).
fn event_id(rng: &mut Rng) -> RequestId {
    let (a, b) = (rng.next_u64(), rng.next_u64());
    let text = format!(
        "{:08x}-{:04x}-8{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    );
    RequestId::parse(&text).expect("hex digits and hyphens make a valid id")
}

/// The history's events, day by day from the oldest, each day's in time order: what
/// [`seed_history`] sends. `now` is the engine's clock (today's day and the present, which no
/// event passes); each endpoint's unit is read from its price in force at each event.
pub fn plan(
    history: &History,
    catalog: &Catalog,
    now: Timestamp,
) -> Result<Vec<Vec<UsageEvent>>, DemoError> {
    let today = day_start(now);
    let weights: Vec<u64> = (0..history.endpoints.len()).map(endpoint_weight).collect();
    let key_weights: Vec<u64> = (0..history.api_keys.len())
        .map(|i| 1u64 << (history.api_keys.len() - 1 - i).min(8))
        .collect();
    let mut days = Vec::new();
    if history.endpoints.is_empty() {
        return Ok(days);
    }
    for days_ago in history.days_ago.clone().rev() {
        let mut rng = day_rng(history, days_ago);
        let start = today.minus_ms(i64::from(days_ago) * MS_PER_DAY);
        let n = day_volume(history, days_ago, &mut rng);
        let mut day = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let hour = rng.weighted(&HOURS) as i64;
            let at = start.plus_ms(hour * 3_600_000 + rng.between(0, 3_599_999) as i64);
            let endpoint = &history.endpoints[rng.weighted(&weights)];
            let api_key = (!key_weights.is_empty())
                .then(|| history.api_keys[rng.weighted(&key_weights)].clone());
            let failed = rng.between(1, SERVER_ERROR_ONE_IN) == 1;
            let id = event_id(&mut rng);
            let rule = &catalog
                .price_at(endpoint, &history.account, at)
                .ok_or_else(|| DemoError::NoPrice {
                    endpoint: endpoint.clone(),
                    at,
                })?
                .rule;
            let (units, output, inference) = measure(rule, &mut rng);
            let queue = tenths(rng.between(0, 25));
            if at > now {
                continue;
            }
            day.push(UsageEvent {
                event_id: id,
                account: history.account.clone(),
                endpoint: endpoint.clone(),
                api_key,
                timestamp: at,
                status_code: if failed { 500 } else { 200 },
                output: if failed { Output::default() } else { output },
                billable_units: if failed { None } else { units },
                queue_seconds: Some(queue),
                inference_seconds: Some(inference),
                machine_type: None,
                num_gpus: None,
            });
        }
        day.sort_by(|a, b| {
            a.timestamp
                .cmp(&b.timestamp)
                .then_with(|| a.event_id.cmp(&b.event_id))
        });
        days.push(day);
    }
    Ok(days)
}

/// Writes the history through the engine: each day's events (from [`plan`], at the engine's
/// clock now) in batches of up to [`BATCH`], oldest first. With `set_clock`, the engine's
/// clock is set to each batch's last event's time before it is sent, so the ledger dates the
/// charges on their days; the caller sets it back afterwards. Returns what was billed, from
/// the engine's answers.
pub async fn seed_history(
    engine: &Engine,
    history: &History,
    set_clock: Option<&(dyn Fn(Timestamp) + Sync)>,
) -> Result<Seeded, DemoError> {
    let days = plan(history, &engine.catalog(), engine.now())?;
    let mut seeded = Seeded::default();
    let mut endpoints = std::collections::BTreeSet::new();
    for day in days {
        if !day.is_empty() {
            seeded.days += 1;
        }
        let mut events = day.into_iter().peekable();
        while events.peek().is_some() {
            let batch: Vec<UsageEvent> = events.by_ref().take(BATCH).collect();
            let last = batch
                .last()
                .map(|e| e.timestamp)
                .expect("a batch has events");
            seeded.first = seeded.first.or(batch.first().map(|e| e.timestamp));
            seeded.last = Some(last);
            if let Some(set) = set_clock {
                set(last);
            }
            let ids: Vec<RequestId> = batch.iter().map(|e| e.event_id.clone()).collect();
            for e in &batch {
                endpoints.insert(e.endpoint.clone());
            }
            let answers = engine
                .execute_many(batch.into_iter().map(Op::UsageEvent).collect())
                .await?;
            for (answer, event_id) in answers.into_iter().zip(ids) {
                seeded.events += 1;
                match answer {
                    Ok(Outcome::Completed { replayed: true, .. }) => seeded.replayed += 1,
                    Ok(Outcome::Completed { completion, .. }) => {
                        if completion.billed {
                            seeded.billed += 1;
                            seeded.total = seeded
                                .total
                                .checked_add(completion.charge.total_nanos)
                                .map_err(|e| EngineError::Internal(e.to_string()))?;
                        }
                    }
                    Ok(other) => {
                        return Err(EngineError::Internal(format!(
                            "usage event {event_id} was answered {other:?}"
                        ))
                        .into())
                    }
                    Err(rejection) => {
                        return Err(DemoError::Refused {
                            event_id,
                            rejection,
                        })
                    }
                }
            }
        }
    }
    seeded.endpoints = endpoints.len();
    Ok(seeded)
}

/// The sample catalog's endpoints the demo account uses, most used first: cheap image models
/// lead, then upscaling and speech, and a tail of dearer image and video models.
pub const DEMO_ENDPOINTS: &[&str] = &[
    "fal-ai/flux/schnell",
    "fal-ai/bria/background/remove",
    "fal-ai/flux/dev",
    "fal-ai/esrgan",
    "fal-ai/nano-banana",
    "fal-ai/whisper",
    "fal-ai/birefnet",
    "fal-ai/elevenlabs/tts/turbo-v2.5",
    "openai/gpt-image-2",
    "fal-ai/flux-pro/kontext",
    "fal-ai/pika/v2.2/pikaframes",
    "fal-ai/minimax/hailuo-02/pro/text-to-video",
];

/// The demo account's history (`tollgate serve --demo`): four weeks, from 29 days ago to the
/// day before yesterday (so the last 24 hours are the visitor's own), over
/// [`DEMO_ENDPOINTS`], with the account's keys.
pub fn demo_history(account: AccountId, api_keys: Vec<ApiKeyId>) -> History {
    History {
        account,
        api_keys,
        endpoints: DEMO_ENDPOINTS
            .iter()
            .map(|e| EndpointId::parse(e).expect("valid endpoint ids"))
            .collect(),
        days_ago: 2..=29,
        requests_per_day: 8,
        seed: 2026,
    }
}
