//! What an account was billed: usage grouped as fal groups it (fal's `GET /models/usage`), and
//! request by request (`GET /models/billing-events`).
//!
//! Usage is answered from the per-minute usage rollups the write path keeps, never from line
//! items: each minute row falls into exactly one bucket of the requested time zone and
//! timeframe, so buckets, summary and billing events are sums of the same integers.

use crate::cursor::{Cursor, Page};
use crate::timeframe::{self, Moment, Range, RangeError, SeriesBucket};
use crate::QueryError;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use tollgate_core::ids::{AccountId, ApiKeyId, EndpointId, RequestId};
use tollgate_core::pricing::Charge;
use tollgate_core::rollup::{UsageKey, UsagePrice, UsageTotals};
use tollgate_core::{Nanos, Timestamp};
use tollgate_engine::Engine;
use tollgate_store::RollupQuery;

/// The longest range one billing-events query may span.
pub const EVENTS_MAX_RANGE_MS: i64 = 90 * 24 * 3_600_000;
/// Billing events span the last day when `start` is absent.
const EVENTS_DEFAULT_RANGE_MS: i64 = 24 * 3_600_000;

/// Who made a request, as fal's `auth_method` and `auth_method_structured` show it: the key's
/// alias ("API Key" when it has none) and id, or "None" for usage reported without a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthMethod {
    pub detail: String,
    pub api_key: Option<ApiKeyId>,
}

/// The labels of an account's keys.
struct AuthLabels(HashMap<ApiKeyId, String>);

impl AuthLabels {
    async fn load(engine: &Engine, account: &AccountId) -> Result<AuthLabels, QueryError> {
        let id = account.clone();
        let keys = engine.read(move |r| r.api_keys(&id)).await?;
        Ok(AuthLabels(
            keys.into_iter()
                .map(|k| {
                    let label = if k.alias.is_empty() {
                        "API Key".to_string()
                    } else {
                        k.alias
                    };
                    (k.key_id, label)
                })
                .collect(),
        ))
    }

    fn of(&self, key: Option<&ApiKeyId>) -> AuthMethod {
        let detail = match key {
            Some(k) => self
                .0
                .get(k)
                .cloned()
                .unwrap_or_else(|| "API Key".to_string()),
            None => "None".to_string(),
        };
        AuthMethod {
            detail,
            api_key: key.cloned(),
        }
    }
}

/// A usage read.
#[derive(Clone, Debug)]
pub struct UsageQuery {
    pub account: AccountId,
    pub range: Range,
    /// Only these endpoints (empty: all).
    pub endpoints: Vec<EndpointId>,
    /// Only usage made with these keys (empty: all).
    pub api_keys: Vec<ApiKeyId>,
    /// A filter by team member's login was given. tollgate's requests are made with API keys,
    /// never with a login, so it matches nothing.
    pub by_login: bool,
    pub time_series: bool,
    pub summary: bool,
    /// Group by key too, and label rows with it ([`UsageRow::auth`]).
    pub by_key: bool,
    pub cursor: Option<Cursor>,
    pub limit: usize,
}

/// One usage row: fal's grouping by endpoint, unit, unit price and percent discount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRow {
    pub endpoint: EndpointId,
    pub unit: String,
    pub quantity: Decimal,
    /// The rate, or for blended prices the row's average rate.
    pub unit_price: Decimal,
    pub percent_discount: Option<Decimal>,
    pub subtotal: Nanos,
    pub discount: Nanos,
    pub total: Nanos,
    /// Set when the query groups by key.
    pub auth: Option<AuthMethod>,
}

/// The usage of a range: its time series (one page of rows) and its summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    pub time_series: Option<Vec<SeriesBucket<UsageRow>>>,
    pub summary: Option<Vec<UsageRow>>,
    /// Of the time series' rows.
    pub next_cursor: Option<Cursor>,
}

/// A row's group: fal's grouping, plus the key when rows are grouped by key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Group {
    endpoint: EndpointId,
    unit: String,
    price: UsagePrice,
    percent_discount: Option<Decimal>,
    api_key: Option<ApiKeyId>,
}

impl Group {
    fn of(k: &UsageKey, by_key: bool) -> Group {
        Group {
            endpoint: k.endpoint.clone(),
            unit: k.unit.clone(),
            price: k.price,
            percent_discount: k.percent_discount,
            api_key: if by_key { k.api_key.clone() } else { None },
        }
    }

    fn row(&self, t: &UsageTotals, labels: &AuthLabels, by_key: bool) -> UsageRow {
        UsageRow {
            endpoint: self.endpoint.clone(),
            unit: self.unit.clone(),
            quantity: t.quantity.normalize(),
            unit_price: self.price.unit_price(t),
            percent_discount: self.percent_discount,
            subtotal: t.subtotal,
            discount: t.discount,
            total: t.total,
            auth: by_key.then(|| labels.of(self.api_key.as_ref())),
        }
    }
}

/// The rows of a bucketed series after the request's cursor, in order.
pub(crate) fn after_cursor<'a, K: Ord, V>(
    rows: &'a BTreeMap<K, V>,
    after: Option<&K>,
) -> std::collections::btree_map::Range<'a, K, V> {
    use std::ops::Bound::{Excluded, Unbounded};
    rows.range::<K, _>((after.map_or(Unbounded, Excluded), Unbounded))
}

fn add(into: &mut UsageTotals, t: &UsageTotals) -> Result<(), QueryError> {
    into.add(t)
        .map_err(|e| QueryError::OutOfRange(format!("usage total: {e}")))
}

/// Usage rollup rows summed per (bucket, group) and per group over the whole range; a row
/// whose group is `None` is left out. Shared by the model usage and the serverless usage,
/// which group the same rows by different keys.
pub(crate) struct Grouped<G> {
    /// Filled when the time series is asked for.
    pub buckets: BTreeMap<(Timestamp, G), UsageTotals>,
    /// Filled when the summary is asked for.
    pub summary: BTreeMap<G, UsageTotals>,
}

impl<G: Ord + Clone> Grouped<G> {
    pub(crate) fn of(
        rows: &[(UsageKey, UsageTotals)],
        range: &Range,
        time_series: bool,
        summary: bool,
        group_of: impl Fn(&UsageKey) -> Option<G>,
    ) -> Result<Grouped<G>, QueryError> {
        let mut grouped = Grouped {
            buckets: BTreeMap::new(),
            summary: BTreeMap::new(),
        };
        for (k, t) in rows {
            let Some(g) = group_of(k) else {
                continue;
            };
            if summary {
                add(grouped.summary.entry(g.clone()).or_default(), t)?;
            }
            if time_series {
                add(
                    grouped
                        .buckets
                        .entry((range.bucket_start(k.slot), g))
                        .or_default(),
                    t,
                )?;
            }
        }
        Ok(grouped)
    }

    /// One page of the time series' rows after `after` (the request's cursor, decoded:
    /// fal's paging, `limit` rows in (bucket, group) order), rendered, and the next page's
    /// cursor.
    pub(crate) fn series_page<R>(
        &self,
        range: &Range,
        after: Option<&(Timestamp, G)>,
        limit: usize,
        render: impl Fn(&G, &UsageTotals) -> R,
    ) -> (Vec<SeriesBucket<R>>, Option<Cursor>)
    where
        G: Serialize,
    {
        let page = Page::of(after_cursor(&self.buckets, after), limit, |(k, _)| *k);
        (range.time_series(page.items, render), page.next_cursor)
    }
}

/// fal's `GET /models/usage`: every minute row of the range into its bucket and group, the
/// summary over the whole range, and one page of the series' rows in (bucket, group) order.
pub async fn usage(engine: &Engine, q: UsageQuery) -> Result<Usage, QueryError> {
    let after: Option<(Timestamp, Group)> = Cursor::key(q.cursor.as_ref())?;
    let rows = if q.by_login {
        Vec::new()
    } else {
        let rq = RollupQuery {
            account: q.account.clone(),
            from: q.range.start,
            to: q.range.end,
            endpoints: q.endpoints.clone(),
            api_keys: q.api_keys.clone(),
            whole_hours: q.range.whole_hours(),
            service: Some(tollgate_store::Service::Models),
        };
        engine.read(move |r| r.usage(&rq)).await?
    };
    let labels = AuthLabels::load(engine, &q.account).await?;
    let grouped = Grouped::of(&rows, &q.range, q.time_series, q.summary, |k| {
        Some(Group::of(k, q.by_key))
    })?;
    let mut answer = Usage {
        time_series: None,
        summary: None,
        next_cursor: None,
    };
    if q.time_series {
        let (series, next) = grouped.series_page(&q.range, after.as_ref(), q.limit, |g, t| {
            g.row(t, &labels, q.by_key)
        });
        answer.time_series = Some(series);
        answer.next_cursor = next;
    }
    if q.summary {
        answer.summary = Some(
            grouped
                .summary
                .iter()
                .map(|(g, t)| g.row(t, &labels, q.by_key))
                .collect(),
        );
    }
    Ok(answer)
}

/// A billing-events read: one account's billed requests in `[from, to)`.
#[derive(Clone, Debug)]
pub struct BillingEventsQuery {
    pub account: AccountId,
    pub from: Timestamp,
    pub to: Timestamp,
    pub endpoints: Vec<EndpointId>,
    pub request_ids: Vec<RequestId>,
    pub api_keys: Vec<ApiKeyId>,
    /// See [`UsageQuery::by_login`].
    pub by_login: bool,
    /// Label each event with its key ([`BillingEvent::auth`]).
    pub by_key: bool,
    pub cursor: Option<Cursor>,
    pub limit: usize,
}

/// Billing events' range: exact instants (a date means midnight UTC), `end` default now,
/// `start` default a day before `end`, at most [`EVENTS_MAX_RANGE_MS`] long.
pub fn events_range(
    start: Option<Moment>,
    end: Option<Moment>,
    now: Timestamp,
) -> Result<(Timestamp, Timestamp), RangeError> {
    timeframe::instant_range(
        start,
        end,
        now,
        EVENTS_DEFAULT_RANGE_MS,
        EVENTS_MAX_RANGE_MS,
    )
}

/// One billed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BillingEvent {
    pub request_id: RequestId,
    pub endpoint: EndpointId,
    pub billed_at: Timestamp,
    /// The unit its quantity counts (`charge.quantity`).
    pub unit: String,
    pub charge: Charge,
    /// The status the request finished with (a usage event's reported status).
    pub status_code: u16,
    /// How long it waited before it started, and how long it ran, when known.
    pub queue_ms: Option<i64>,
    pub inference_ms: Option<i64>,
    /// Set when the query asks for keys.
    pub auth: Option<AuthMethod>,
}

/// fal's `GET /models/billing-events`: a page of line items in (billed_at, request_id) order.
pub async fn billing_events(
    engine: &Engine,
    q: BillingEventsQuery,
) -> Result<Page<BillingEvent>, QueryError> {
    events(engine, q, false).await
}

/// The same line items latest first: a page in descending (billed_at, request_id) order, its
/// cursor continuing with the ones billed before (the dashboard's list of requests).
pub async fn billing_events_newest_first(
    engine: &Engine,
    q: BillingEventsQuery,
) -> Result<Page<BillingEvent>, QueryError> {
    events(engine, q, true).await
}

async fn events(
    engine: &Engine,
    q: BillingEventsQuery,
    newest_first: bool,
) -> Result<Page<BillingEvent>, QueryError> {
    let eq = tollgate_store::BillingEventsQuery {
        account: q.account.clone(),
        from: q.from,
        to: q.to,
        endpoints: q.endpoints,
        request_ids: q.request_ids,
        api_keys: q.api_keys,
        after: Cursor::key(q.cursor.as_ref())?,
        newest_first,
        limit: q.limit.saturating_add(1),
    };
    let items = if q.by_login {
        Vec::new()
    } else {
        engine.read(move |r| r.billing_events(&eq)).await?
    };
    let labels = AuthLabels::load(engine, &q.account).await?;
    let page = Page::of(items, q.limit, |li| (li.billed_at, li.request_id.clone()));
    Ok(Page {
        items: page
            .items
            .into_iter()
            .map(|li| BillingEvent {
                auth: q.by_key.then(|| labels.of(li.api_key.as_ref())),
                request_id: li.request_id,
                endpoint: li.endpoint,
                billed_at: li.billed_at,
                unit: li.unit,
                charge: li.charge,
                status_code: li.status_code,
                queue_ms: li.queue_ms,
                inference_ms: li.inference_ms,
            })
            .collect(),
        next_cursor: page.next_cursor,
    })
}
