//! `GET /v1/models/usage` and `GET /v1/models/billing-events` (ADMIN scope): what an account
//! was billed, grouped as fal groups it, and request by request.
//!
//! Usage is answered from the per-minute usage rollups the write path keeps, never from line
//! items: each minute row falls into exactly one bucket of the requested time zone and
//! timeframe, so buckets, summary and billing events are sums of the same integers.

use super::params::{page, Query, MAX_IDS};
use super::timeframe;
use crate::admin::rfc3339;
use crate::auth::customer;
use crate::error::ApiError;
use crate::money::Number;
use crate::AppState;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use tollgate_core::ids::{AccountId, ApiKeyId, EndpointId, RequestId};
use tollgate_core::rollup::{UsageKey, UsagePrice, UsageTotals};
use tollgate_core::Timestamp;
use tollgate_store::{BillingEventsQuery, RollupQuery, Scope};

/// Usage rows per page by default, and at most.
const USAGE_LIMIT: (usize, usize) = (1000, 10_000);
/// Billing events per page by default, and at most (fal's cap).
const EVENTS_LIMIT: (usize, usize) = (100, 10_000);
/// The longest range one billing-events query may span.
const EVENTS_MAX_RANGE_MS: i64 = 90 * 24 * 3_600_000;

pub(super) fn parse_ids<T>(
    q: &Query,
    name: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, ApiError> {
    q.list(name, MAX_IDS)?
        .iter()
        .map(|s| {
            parse(s).map_err(|e| {
                ApiError::validation(format!("{name}: `{s}` is not valid: {e}")).with("field", name)
            })
        })
        .collect()
}

pub(super) fn parse_endpoint(s: &str) -> Result<EndpointId, String> {
    EndpointId::parse(s).map_err(|e| e.to_string())
}

fn parse_key(s: &str) -> Result<ApiKeyId, String> {
    ApiKeyId::parse(s).map_err(|e| e.to_string())
}

/// Who made a request, as fal's `auth_method` and `auth_method_structured` show it.
pub(super) struct AuthLabels(HashMap<ApiKeyId, String>);

impl AuthLabels {
    async fn load(state: &AppState, account: &AccountId) -> Result<AuthLabels, ApiError> {
        let id = account.clone();
        let keys = state.engine.read(move |r| r.api_keys(&id)).await?;
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

    /// Adds the fields `expand` asked for to a row.
    fn render(&self, key: Option<&ApiKeyId>, expand: &Expand, row: &mut Map<String, Value>) {
        let detail = match key {
            Some(k) => self
                .0
                .get(k)
                .cloned()
                .unwrap_or_else(|| "API Key".to_string()),
            None => "None".to_string(),
        };
        if expand.auth_method {
            row.insert("auth_method".into(), json!(detail));
        }
        if expand.auth_method_structured {
            let mut s = json!({ "detail": detail });
            if let Some(k) = key {
                s["api_key_id"] = json!(k.as_str());
            }
            row.insert("auth_method_structured".into(), s);
        }
    }
}

#[derive(Default)]
struct Expand {
    time_series: bool,
    summary: bool,
    auth_method: bool,
    auth_method_structured: bool,
}

impl Expand {
    fn by_key(&self) -> bool {
        self.auth_method || self.auth_method_structured
    }
}

/// One usage row of a bucket: fal's grouping, plus the key when auth methods are asked for.
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
}

fn usage_row(
    g: &Group,
    t: &UsageTotals,
    labels: &AuthLabels,
    expand: &Expand,
) -> Map<String, Value> {
    let mut row = Map::new();
    row.insert("endpoint_id".into(), json!(g.endpoint.as_str()));
    row.insert("unit".into(), json!(g.unit));
    row.insert("quantity".into(), json!(Number(t.quantity.normalize())));
    row.insert("unit_price".into(), json!(Number(g.price.unit_price(t))));
    row.insert(
        "percent_discount".into(),
        json!(g.percent_discount.map(Number)),
    );
    row.insert("cost_subtotal".into(), json!(Number::usd(t.subtotal)));
    row.insert("cost_discount".into(), json!(Number::usd(t.discount)));
    row.insert("cost_total".into(), json!(Number::usd(t.total)));
    row.insert("cost".into(), json!(Number::usd(t.total)));
    row.insert("currency".into(), json!("USD"));
    labels.render(g.api_key.as_ref(), expand, &mut row);
    row
}

/// The rows of a bucketed series after the request's cursor, in order.
pub(super) fn after_cursor<'a, K: Ord, V>(
    rows: &'a BTreeMap<K, V>,
    after: Option<&K>,
) -> std::collections::btree_map::Range<'a, K, V> {
    use std::ops::Bound::{Excluded, Unbounded};
    rows.range::<K, _>((after.map_or(Unbounded, Excluded), Unbounded))
}

fn add(into: &mut UsageTotals, t: &UsageTotals) -> Result<(), ApiError> {
    into.add(t)
        .map_err(|e| ApiError::server(format!("usage total out of range: {e}")))
}

/// `GET /v1/models/usage`.
pub async fn usage(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let (_, account) = customer(&state, &headers, Scope::Admin).await?;
    let q = Query::parse(
        raw.as_deref(),
        &[
            "limit",
            "cursor",
            "start",
            "end",
            "timezone",
            "timeframe",
            "bound_to_timeframe",
            "endpoint_id",
            "api_key_id",
            "login_username",
            "expand",
        ],
    )?;
    let limit = q.limit(USAGE_LIMIT.0, USAGE_LIMIT.1)?;
    let range = timeframe::resolve(&q, state.engine.now())?;
    let endpoints = parse_ids(&q, "endpoint_id", parse_endpoint)?;
    let api_keys = parse_ids(&q, "api_key_id", parse_key)?;
    // tollgate's requests are made with API keys, never with a team member's login: a
    // login_username filter matches nothing.
    let by_login = !q.list("login_username", MAX_IDS)?.is_empty();
    let mut expand = Expand::default();
    let asked = q.expand(&[
        "time_series",
        "summary",
        "auth_method",
        "auth_method_structured",
    ])?;
    for e in asked.unwrap_or_else(|| vec!["time_series".into()]) {
        match e.as_str() {
            "time_series" => expand.time_series = true,
            "summary" => expand.summary = true,
            "auth_method" => expand.auth_method = true,
            _ => expand.auth_method_structured = true,
        }
    }
    if !expand.time_series && !expand.summary {
        return Err(ApiError::validation(
            "expand must include at least one of `time_series` or `summary`",
        )
        .with("field", "expand"));
    }
    let after: Option<(Timestamp, Group)> = q.cursor()?;

    let rows = if by_login {
        Vec::new()
    } else {
        let rq = RollupQuery {
            account: account.clone(),
            from: range.start,
            to: range.end,
            endpoints,
            api_keys,
            whole_hours: range.whole_hours(),
        };
        state.engine.read(move |r| r.usage(&rq)).await?
    };
    let labels = AuthLabels::load(&state, &account).await?;

    // Every minute row into its bucket and group; the summary over the whole range.
    let mut buckets: BTreeMap<(Timestamp, Group), UsageTotals> = BTreeMap::new();
    let mut summary: BTreeMap<Group, UsageTotals> = BTreeMap::new();
    for (k, t) in &rows {
        let g = Group::of(k, expand.by_key());
        if expand.summary {
            add(summary.entry(g.clone()).or_default(), t)?;
        }
        if expand.time_series {
            add(
                buckets.entry((range.bucket_start(k.slot), g)).or_default(),
                t,
            )?;
        }
    }

    let mut body = json!({ "next_cursor": null, "has_more": false });
    if expand.time_series {
        let (rows, next) = page(after_cursor(&buckets, after.as_ref()), limit, |(k, _)| *k);
        body["has_more"] = json!(next.is_some());
        body["next_cursor"] = json!(next);
        body["time_series"] = json!(range.time_series(rows, |g, t| {
            Value::Object(usage_row(g, t, &labels, &expand))
        }));
    }
    if expand.summary {
        body["summary"] = json!(summary
            .iter()
            .map(|(g, t)| Value::Object(usage_row(g, t, &labels, &expand)))
            .collect::<Vec<_>>());
    }
    Ok(Json(body))
}

/// `GET /v1/models/billing-events`.
pub async fn billing_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let (_, account) = customer(&state, &headers, Scope::Admin).await?;
    let q = Query::parse(
        raw.as_deref(),
        &[
            "limit",
            "cursor",
            "start",
            "end",
            "endpoint_id",
            "request_id",
            "api_key_id",
            "login_username",
            "expand",
        ],
    )?;
    let limit = q.limit(EVENTS_LIMIT.0, EVENTS_LIMIT.1)?;
    let now = state.engine.now();
    let end = timeframe::instant(&q, "end")?.unwrap_or(now);
    let start = timeframe::instant(&q, "start")?.unwrap_or(end.minus_ms(24 * 3_600_000));
    if start >= end {
        return Err(ApiError::validation("start must be before end").with("field", "start"));
    }
    if end.0 - start.0 > EVENTS_MAX_RANGE_MS {
        return Err(
            ApiError::validation("the range from start to end may span at most 90 days")
                .with("field", "start"),
        );
    }
    let expand_values = q
        .expand(&["auth_method", "auth_method_structured"])?
        .unwrap_or_default();
    let expand = Expand {
        auth_method: expand_values.iter().any(|e| e == "auth_method"),
        auth_method_structured: expand_values.iter().any(|e| e == "auth_method_structured"),
        ..Expand::default()
    };
    let by_login = !q.list("login_username", MAX_IDS)?.is_empty();
    let eq = BillingEventsQuery {
        account: account.clone(),
        from: start,
        to: end,
        endpoints: parse_ids(&q, "endpoint_id", parse_endpoint)?,
        request_ids: parse_ids(&q, "request_id", |s| {
            RequestId::parse(s).map_err(|e| e.to_string())
        })?,
        api_keys: parse_ids(&q, "api_key_id", parse_key)?,
        after: q.cursor()?,
        limit: limit + 1,
    };
    let items = if by_login {
        Vec::new()
    } else {
        state.engine.read(move |r| r.billing_events(&eq)).await?
    };
    let (items, next_cursor) = page(items, limit, |li| (li.billed_at, li.request_id.clone()));
    let labels = AuthLabels::load(&state, &account).await?;
    let events: Vec<Value> = items
        .iter()
        .map(|li| {
            let c = &li.charge;
            let mut row = Map::new();
            row.insert("request_id".into(), json!(li.request_id.as_str()));
            row.insert("endpoint_id".into(), json!(li.endpoint.as_str()));
            row.insert("timestamp".into(), json!(rfc3339(li.billed_at)));
            row.insert("output_units".into(), json!(Number(c.quantity.normalize())));
            row.insert("unit_price".into(), json!(Number(c.unit_price.normalize())));
            row.insert(
                "percent_discount".into(),
                json!(c.percent_discount.map(|p| Number(p.normalize()))),
            );
            row.insert("cost_subtotal".into(), json!(Number::usd(c.subtotal_nanos)));
            row.insert("cost_discount".into(), json!(Number::usd(c.discount_nanos)));
            row.insert("cost_total".into(), json!(Number::usd(c.total_nanos)));
            row.insert("cost_estimate_nano_usd".into(), json!(c.total_nanos.0));
            labels.render(li.api_key.as_ref(), &expand, &mut row);
            Value::Object(row)
        })
        .collect();
    Ok(Json(json!({
        "has_more": next_cursor.is_some(),
        "next_cursor": next_cursor,
        "billing_events": events,
    })))
}
