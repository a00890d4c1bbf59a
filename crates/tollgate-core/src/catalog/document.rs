//! The catalog document: the text operators write, TOML (content type `application/toml`).
//!
//! ```toml
//! prices_read_on = "2026-09-15"              # required: when the prices were read
//! effective_from = "2026-09-01T00:00:00Z"    # optional, RFC 3339 with an offset
//!
//! [machines]                                 # machine type -> USD per second (a string)
//! GPU-H100 = "0.000525"
//!
//! [machines_surge]                           # optional: surge serverless prices, per second,
//! GPU-H100 = "0.0007875"                     # of machine types listed in [machines]
//!
//! [[concurrency]]                            # optional; the default table when absent
//! paid_28d_usd = "0"
//! limit = 2
//!
//! [[endpoint]]
//! id = "fal-ai/flux/dev"
//! name = "FLUX.1 [dev]"
//! category = "text-to-image"
//! hold_units = "4"
//! price = { unit = "megapixel", unit_price = "0.025" }
//! ```
//!
//! Every amount and decimal quantity is a quoted decimal string (an integer is accepted too,
//! since it is exact). A bare TOML float such as `0.025` is rejected: floats are binary
//! approximations, and no price may pass through one. Unknown keys are errors, so a typo never
//! silently drops a price modifier. Every error names the line and the field path
//! (`endpoint[3].price.unit_price`, counting endpoints from 0 in file order).
//! `catalog/README.md` at the repository root documents the format field by field.

use super::{EndpointDef, EndpointStatus, LateCompletion, MissingUnits};
use crate::concurrency::{ConcurrencyTable, ConcurrencyTier};
use crate::decimal::PlainDecimal;
use crate::ids::{EndpointId, MachineType};
use crate::policy::FourXxPolicy;
use crate::price::{MachinePrices, PriceRule, Unit};
use crate::time::Timestamp;
use rust_decimal::Decimal;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use toml::Spanned;

/// The media type of the catalog text.
pub const CONTENT_TYPE: &str = "application/toml";
/// `hold_timeout_s` when the endpoint does not set it.
pub const DEFAULT_HOLD_TIMEOUT_S: u32 = 600;
/// The largest `hold_timeout_s` (one day).
pub const MAX_HOLD_TIMEOUT_S: u32 = 86_400;

/// Why a catalog document was refused: the line (1-based) and the field path at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.line, .field, .message))]
pub struct CatalogError {
    pub line: Option<usize>,
    /// Dotted path such as `endpoint[3].price.unit_price`; empty for a pure syntax error.
    pub field: String,
    pub message: String,
}

fn render(line: &Option<usize>, field: &str, message: &str) -> String {
    match (line, field.is_empty()) {
        (Some(l), false) => format!("line {l}, field `{field}`: {message}"),
        (Some(l), true) => format!("line {l}: {message}"),
        (None, false) => format!("field `{field}`: {message}"),
        (None, true) => message.to_string(),
    }
}

/// A parsed and validated catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogDocument {
    /// The date (YYYY-MM-DD) the prices were read from their source.
    pub prices_read_on: String,
    /// When the document's prices take effect; `None` leaves it to the loader.
    pub effective_from: Option<Timestamp>,
    /// In file order.
    pub endpoints: Vec<EndpointEntry>,
    pub machines: MachinePrices,
    /// Surge prices of serverless runners (`[machines_surge]`), of machine types of
    /// `machines`.
    pub machines_surge: MachinePrices,
    /// `None`: the document keeps the current (or default) table.
    pub concurrency: Option<ConcurrencyTable>,
}

/// One `[[endpoint]]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointEntry {
    pub def: EndpointDef,
    pub rule: PriceRule,
    /// The line of the `[[endpoint]]` header.
    pub line: usize,
}

impl CatalogDocument {
    pub fn endpoint(&self, id: &str) -> Option<&EndpointEntry> {
        self.endpoints.iter().find(|e| e.def.id.as_str() == id)
    }

    /// The per-second price of the entry's machine, if it names one.
    pub fn machine_price(&self, entry: &EndpointEntry) -> Option<Decimal> {
        entry
            .def
            .machine_type
            .as_ref()
            .and_then(|m| self.machines.get(m))
            .copied()
    }
}

// ---------------------------------------------------------------------------------------------
// The document as written.

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocument {
    prices_read_on: Spanned<DateText>,
    #[serde(default)]
    effective_from: Option<Spanned<DateText>>,
    #[serde(default)]
    machines: BTreeMap<String, Spanned<PlainDecimal>>,
    #[serde(default)]
    machines_surge: BTreeMap<String, Spanned<PlainDecimal>>,
    #[serde(default)]
    concurrency: Option<Spanned<Vec<ConcurrencyTier>>>,
    #[serde(default)]
    endpoint: Vec<Spanned<RawEndpoint>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    id: String,
    name: String,
    category: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    status: EndpointStatus,
    #[serde(default)]
    partner: bool,
    #[serde(default)]
    four_xx: FourXxPolicy,
    #[serde(default)]
    machine_type: Option<String>,
    #[serde(default, deserialize_with = "crate::decimal::de_opt")]
    hold_units: Option<Decimal>,
    #[serde(default)]
    hold_timeout_s: Option<u32>,
    #[serde(default)]
    missing_units: MissingUnits,
    #[serde(default)]
    late_completion: LateCompletion,
    #[serde(default)]
    upstream: Vec<RawUpstream>,
    #[serde(default)]
    cancellation: super::Cancellation,
    price: PriceRule,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: String,
    #[serde(default)]
    slots: Option<u32>,
    #[serde(default)]
    timeout_s: Option<u32>,
    #[serde(default)]
    machine_type: Option<String>,
}

/// An upstream's `slots` when it does not say.
pub const DEFAULT_UPSTREAM_SLOTS: u32 = 1;
/// The most requests one upstream takes at once.
pub const MAX_UPSTREAM_SLOTS: u32 = 10_000;
/// An upstream's `timeout_s` when it does not say.
pub const DEFAULT_UPSTREAM_TIMEOUT_S: u32 = 300;

/// A date or date-time written either as a string or as a bare TOML date(-time).
enum DateText {
    Text(String),
    Toml(toml::value::Datetime),
}

impl<'de> Deserialize<'de> for DateText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DateText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a date such as \"2026-09-15\" or \"2026-09-01T00:00:00Z\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DateText, E> {
                Ok(DateText::Text(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<DateText, A::Error> {
                toml::value::Datetime::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(DateText::Toml)
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// A first, shape-only pass: where every value is (for error paths) and where any float is.

enum Node {
    Float,
    Scalar,
    Table(Vec<(String, Spanned<Node>)>),
    Array(Vec<Spanned<Node>>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any TOML value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Float)
            }
            fn visit_str<E>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<Node>>()? {
                    items.push(item);
                }
                Ok(Node::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if key == "$__toml_private_datetime" {
                        // A bare TOML date-time, delivered as a one-entry map.
                        map.next_value::<de::IgnoredAny>()?;
                        return Ok(Node::Scalar);
                    }
                    entries.push((key, map.next_value::<Spanned<Node>>()?));
                }
                Ok(Node::Table(entries))
            }
        }
        d.deserialize_any(V)
    }
}

/// Every value's span and path, and the floats found, in file order.
#[derive(Default)]
struct Index {
    spans: Vec<(Range<usize>, String)>,
    floats: Vec<(Range<usize>, String)>,
}

impl Index {
    fn walk(&mut self, node: &Node, path: &str) {
        let child = |key: &str| {
            if path.is_empty() {
                key.to_string()
            } else {
                format!("{path}.{key}")
            }
        };
        match node {
            Node::Table(entries) => {
                for (key, value) in entries {
                    self.visit(value, child(key));
                }
            }
            Node::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.visit(item, format!("{path}[{i}]"));
                }
            }
            Node::Float | Node::Scalar => {}
        }
    }

    fn visit(&mut self, value: &Spanned<Node>, path: String) {
        if let Node::Float = value.get_ref() {
            self.floats.push((value.span(), path.clone()));
        }
        self.walk(value.get_ref(), &path);
        self.spans.push((value.span(), path));
    }

    /// The path of the innermost value whose span contains `span`.
    fn path_at(&self, span: &Range<usize>) -> Option<&str> {
        self.spans
            .iter()
            .filter(|(s, _)| s.start <= span.start && span.end <= s.end)
            .min_by_key(|(s, p)| (s.end - s.start, std::cmp::Reverse(p.len())))
            .map(|(_, p)| p.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// Errors.

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn err(line: Option<usize>, field: impl Into<String>, message: impl Into<String>) -> CatalogError {
    CatalogError {
        line,
        field: field.into(),
        message: message.into(),
    }
}

/// `missing field `x`` and `unknown field `x`, ...` name a key below the erroring table.
fn key_in_message(message: &str) -> Option<&str> {
    ["missing field `", "unknown field `"].iter().find_map(|p| {
        let rest = message.strip_prefix(p)?;
        rest.split('`').next()
    })
}

fn from_toml_error(text: &str, index: Option<&Index>, e: &toml::de::Error) -> CatalogError {
    let message = e
        .message()
        .trim()
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    let Some(span) = e.span() else {
        return err(None, "", message);
    };
    let mut field = index
        .and_then(|i| i.path_at(&span))
        .unwrap_or_default()
        .to_string();
    if let Some(key) = key_in_message(&message) {
        // The span is the table's (missing keys) or the key's (unknown keys, where the
        // innermost value may already be the key's own table).
        let last = field.rsplit('.').next().unwrap_or_default();
        if last != key {
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(key);
        }
    }
    err(Some(line_of(text, span.start)), field, message)
}

/// Fields that take whole numbers rather than decimals.
const INTEGER_FIELDS: [&str; 6] = [
    "hold_timeout_s",
    "slots",
    "timeout_s",
    "limit",
    "megapixel_divisor",
    "frames_above",
];

fn float_error(text: &str, span: &Range<usize>, path: &str) -> CatalogError {
    let written = text.get(span.clone()).unwrap_or("").trim();
    let last = path.rsplit('.').next().unwrap_or(path);
    let message = if INTEGER_FIELDS.contains(&last) {
        format!("`{written}` is a TOML float; this field takes a whole number")
    } else {
        format!(
            "`{written}` is a TOML float, which is inexact; write the decimal as a quoted \
             string: \"{written}\""
        )
    };
    err(Some(line_of(text, span.start)), path, message)
}

// ---------------------------------------------------------------------------------------------
// Parsing and validation.

/// Parses and validates a catalog document.
pub fn parse(text: &str) -> Result<CatalogDocument, CatalogError> {
    let tree: Spanned<Node> = toml::from_str(text).map_err(|e| from_toml_error(text, None, &e))?;
    let mut index = Index::default();
    index.walk(tree.get_ref(), "");
    // The root's span covers only its own keys; it is where missing top-level keys point.
    index.spans.push((tree.span(), String::new()));
    if let Some((span, path)) = index.floats.first() {
        return Err(float_error(text, span, path));
    }
    let raw: RawDocument =
        toml::from_str(text).map_err(|e| from_toml_error(text, Some(&index), &e))?;
    validate(text, raw)
}

fn is_negative(d: &Decimal) -> bool {
    d.is_sign_negative() && !d.is_zero()
}

fn parse_read_on(text: &str, v: &Spanned<DateText>) -> Result<String, CatalogError> {
    let line = Some(line_of(text, v.span().start));
    let bad = || {
        err(
            line,
            "prices_read_on",
            "must be a date written YYYY-MM-DD, such as \"2026-09-15\"",
        )
    };
    let s = match v.get_ref() {
        DateText::Text(s) => s.trim().to_string(),
        DateText::Toml(dt) if dt.time.is_none() && dt.offset.is_none() => dt.to_string(),
        DateText::Toml(_) => return Err(bad()),
    };
    chrono::NaiveDate::parse_from_str(&s, "%Y-%m-%d").map_err(|_| bad())?;
    Ok(s)
}

fn parse_effective_from(text: &str, v: &Spanned<DateText>) -> Result<Timestamp, CatalogError> {
    let s = match v.get_ref() {
        DateText::Text(s) => s.trim().to_string(),
        DateText::Toml(dt) => dt.to_string(),
    };
    let dt = chrono::DateTime::parse_from_rfc3339(&s).map_err(|e| {
        err(
            Some(line_of(text, v.span().start)),
            "effective_from",
            format!(
                "must be an RFC 3339 date-time with an offset, such as \
                 \"2026-09-01T00:00:00Z\" ({e})"
            ),
        )
    })?;
    Ok(Timestamp(dt.timestamp_millis()))
}

fn validate(text: &str, raw: RawDocument) -> Result<CatalogDocument, CatalogError> {
    let line_at = |span: Range<usize>| Some(line_of(text, span.start));

    let prices_read_on = parse_read_on(text, &raw.prices_read_on)?;
    let effective_from = raw
        .effective_from
        .as_ref()
        .map(|v| parse_effective_from(text, v))
        .transpose()?;

    let machines = machine_prices(text, "machines", &raw.machines)?;
    let machines_surge = machine_prices(text, "machines_surge", &raw.machines_surge)?;
    if let Some((m, price)) = raw
        .machines_surge
        .iter()
        .find(|(m, _)| !machines.keys().any(|k| k.as_str() == m.as_str()))
    {
        return Err(err(
            line_at(price.span()),
            format!("machines_surge.{m}"),
            format!(
                "machine type `{m}` is not in [machines]: a surge price is another price of a \
                 listed machine"
            ),
        ));
    }

    let concurrency = match &raw.concurrency {
        None => None,
        Some(rows) => Some(
            ConcurrencyTable::new(rows.get_ref().clone())
                .map_err(|m| err(line_at(rows.span()), "concurrency", m))?,
        ),
    };

    if raw.endpoint.is_empty() {
        return Err(err(
            None,
            "endpoint",
            "the catalog needs at least one [[endpoint]] table",
        ));
    }
    let mut endpoints = Vec::with_capacity(raw.endpoint.len());
    let mut seen: HashMap<EndpointId, usize> = HashMap::new();
    for (i, spanned) in raw.endpoint.iter().enumerate() {
        let line = line_of(text, spanned.span().start);
        let entry = validate_endpoint(i, line, spanned.get_ref(), &machines)?;
        if let Some(first) = seen.insert(entry.def.id.clone(), line) {
            return Err(err(
                Some(line),
                format!("endpoint[{i}].id"),
                format!(
                    "duplicate endpoint id `{}` (first defined on line {first})",
                    entry.def.id
                ),
            ));
        }
        endpoints.push(entry);
    }

    Ok(CatalogDocument {
        prices_read_on,
        effective_from,
        endpoints,
        machines,
        machines_surge,
        concurrency,
    })
}

/// A table of machine prices (`[machines]`, `[machines_surge]`): machine types and their
/// non-negative USD per second.
fn machine_prices(
    text: &str,
    table: &str,
    raw: &BTreeMap<String, Spanned<PlainDecimal>>,
) -> Result<MachinePrices, CatalogError> {
    let mut prices = MachinePrices::new();
    for (name, price) in raw {
        let line = Some(line_of(text, price.span().start));
        let field = format!("{table}.{name}");
        let machine = MachineType::parse(name).map_err(|e| err(line, &field, e.to_string()))?;
        if is_negative(&price.get_ref().0) {
            return Err(err(line, &field, "a machine price must not be negative"));
        }
        prices.insert(machine, price.get_ref().0);
    }
    Ok(prices)
}

fn validate_endpoint(
    i: usize,
    line: usize,
    raw: &RawEndpoint,
    machines: &MachinePrices,
) -> Result<EndpointEntry, CatalogError> {
    let fail = |field: &str, message: String| {
        Err(err(Some(line), format!("endpoint[{i}].{field}"), message))
    };

    let id = match EndpointId::parse(&raw.id) {
        Ok(id) => id,
        Err(e) => return fail("id", e.to_string()),
    };
    if crate::serverless::Line::is_key(id.as_str()) {
        return fail(
            "id",
            format!(
                "`{id}`: endpoint ids under `{}` are kept for serverless runner time",
                crate::serverless::ENDPOINT_PREFIX
            ),
        );
    }
    if raw.name.trim().is_empty() {
        return fail("name", "must not be empty".into());
    }
    if raw.category.trim().is_empty() {
        return fail("category", "must not be empty".into());
    }
    let machine_type = match &raw.machine_type {
        None => None,
        Some(m) => match MachineType::parse(m) {
            Err(e) => return fail("machine_type", e.to_string()),
            Ok(m) if !machines.contains_key(&m) => {
                return fail(
                    "machine_type",
                    format!("machine type `{m}` is not in [machines]"),
                )
            }
            Ok(m) => Some(m),
        },
    };
    let hold_units = raw.hold_units.unwrap_or(Decimal::ONE);
    if hold_units <= Decimal::ZERO {
        return fail("hold_units", "must be greater than 0".into());
    }
    let hold_timeout_s = raw.hold_timeout_s.unwrap_or(DEFAULT_HOLD_TIMEOUT_S);
    if !(1..=MAX_HOLD_TIMEOUT_S).contains(&hold_timeout_s) {
        return fail(
            "hold_timeout_s",
            format!("must be between 1 and {MAX_HOLD_TIMEOUT_S} seconds"),
        );
    }
    if let Err((field, reason)) = raw.price.validate() {
        return fail(&format!("price.{field}"), reason);
    }
    if raw.price.unit == Unit::GpuSecond && raw.price.unit_price.is_none() && machine_type.is_none()
    {
        return fail(
            "price.unit_price",
            "a `gpu_second` price needs a `unit_price` or the endpoint's `machine_type` \
             (listed in [machines])"
                .into(),
        );
    }
    if raw.four_xx == FourXxPolicy::InferenceSeconds && machine_type.is_none() {
        return fail(
            "four_xx",
            "`inference_seconds` bills at the machine price, so it needs a `machine_type` \
             (listed in [machines])"
                .into(),
        );
    }

    if raw.missing_units == MissingUnits::ComputeSeconds && machine_type.is_none() {
        return fail(
            "missing_units",
            "`compute_seconds` bills inference seconds at the machine price, so it needs a \
             `machine_type` (listed in [machines])"
                .into(),
        );
    }
    if raw.missing_units == MissingUnits::OneUnit && raw.price.unit == Unit::Token {
        return fail(
            "missing_units",
            "`one_unit` cannot bill a `token` price (one token is not a request's worth); use \
             `refuse` or `compute_seconds`"
                .into(),
        );
    }

    let mut upstreams = Vec::with_capacity(raw.upstream.len());
    for (i, u) in raw.upstream.iter().enumerate() {
        let at = |field: &str| format!("upstream[{i}].{field}");
        let url = u.url.trim();
        let valid = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .is_some_and(|rest| {
                !rest.is_empty()
                    && !rest.starts_with('/')
                    && !rest.contains(['?', '#'])
                    && !rest.chars().any(|c| c.is_whitespace() || c.is_control())
            });
        if !valid {
            return fail(
                &at("url"),
                format!(
                    "`{url}` is not an http(s) base URL (such as \"http://10.0.0.7:8080\"; no \
                     query or fragment)"
                ),
            );
        }
        let slots = u.slots.unwrap_or(DEFAULT_UPSTREAM_SLOTS);
        if !(1..=MAX_UPSTREAM_SLOTS).contains(&slots) {
            return fail(
                &at("slots"),
                format!("must be between 1 and {MAX_UPSTREAM_SLOTS}"),
            );
        }
        let timeout_s = u.timeout_s.unwrap_or(DEFAULT_UPSTREAM_TIMEOUT_S);
        if !(1..=hold_timeout_s).contains(&timeout_s) {
            return fail(
                &at("timeout_s"),
                format!("must be between 1 and the endpoint's hold_timeout_s ({hold_timeout_s} s)"),
            );
        }
        let machine_type = match &u.machine_type {
            None => None,
            Some(m) => match MachineType::parse(m) {
                Err(e) => return fail(&at("machine_type"), e.to_string()),
                Ok(m) if !machines.contains_key(&m) => {
                    return fail(
                        &at("machine_type"),
                        format!("machine type `{m}` is not in [machines]"),
                    )
                }
                Ok(m) => Some(m),
            },
        };
        upstreams.push(super::Upstream {
            url: url.trim_end_matches('/').to_string(),
            slots,
            timeout_s,
            machine_type,
        });
    }

    if raw.cancellation == super::Cancellation::ComputeSeconds && machine_type.is_none() {
        return fail(
            "cancellation",
            "`compute_seconds` bills the seconds a cancelled request ran at the machine price, \
             so it needs the endpoint's `machine_type` (listed in [machines])"
                .into(),
        );
    }

    Ok(EndpointEntry {
        def: EndpointDef {
            id,
            display_name: raw.name.trim().to_string(),
            category: raw.category.trim().to_string(),
            description: raw.description.trim().to_string(),
            status: raw.status,
            partner: raw.partner,
            four_xx: raw.four_xx,
            machine_type,
            hold_units: hold_units.normalize(),
            hold_timeout_s,
            missing_units: raw.missing_units,
            late_completion: raw.late_completion,
            upstreams,
            cancellation: raw.cancellation,
        },
        rule: raw.price.clone(),
        line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = r#"prices_read_on = "2026-09-15"

[machines]
GPU-H100 = "0.000525"
GPU-A100 = "0.000275"
"#;

    fn ok_endpoint(id: &str) -> String {
        format!(
            "\n[[endpoint]]\nid = \"{id}\"\nname = \"N\"\ncategory = \"text-to-image\"\n\
             price = {{ unit = \"image\", unit_price = \"0.039\" }}\n"
        )
    }

    /// HEAD (5 lines) + one good endpoint (header on line 7) + `extra`, whose first line
    /// (`[[endpoint]]` when it is one) is line 13.
    fn doc(extra: &str) -> String {
        format!("{HEAD}{}\n{extra}", ok_endpoint("fal-ai/ok"))
    }

    fn fails(text: &str) -> CatalogError {
        match parse(text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e,
        }
    }

    fn assert_err(text: &str, line: usize, field: &str, contains: &str) {
        let e = fails(text);
        assert_eq!(e.line, Some(line), "{e}");
        assert_eq!(e.field, field, "{e}");
        assert!(e.message.contains(contains), "{e}");
    }

    #[test]
    fn a_valid_document_parses_with_defaults() {
        let d = parse(&doc("")).unwrap();
        assert_eq!(d.prices_read_on, "2026-09-15");
        assert_eq!(d.effective_from, None);
        assert_eq!(d.concurrency, None);
        assert_eq!(d.machines.len(), 2);
        let e = d.endpoint("fal-ai/ok").unwrap();
        assert_eq!(e.line, 7);
        assert_eq!(e.def.hold_units, Decimal::ONE);
        assert_eq!(e.def.hold_timeout_s, 600);
        assert_eq!(e.def.four_xx, FourXxPolicy::Free);
        assert_eq!(e.def.status, EndpointStatus::Active);
        assert!(!e.def.partner);
        assert_eq!(e.rule.unit_price, Some(Decimal::new(39, 3)));
        assert!(d.endpoint("fal-ai/missing").is_none());
    }

    #[test]
    fn optional_top_level_keys() {
        let text = format!(
            "effective_from = \"2026-09-01T00:00:00Z\"\n{}\n[[concurrency]]\n\
             paid_28d_usd = \"0\"\nlimit = 3\n[[concurrency]]\npaid_28d_usd = \"25\"\nlimit = 6\n",
            doc("")
        );
        let d = parse(&text).unwrap();
        assert_eq!(d.effective_from, Some(Timestamp(1_788_220_800_000)));
        let t = d.concurrency.unwrap();
        assert_eq!(t.rows().len(), 2);
        assert_eq!(t.limit_for(crate::Nanos::ZERO), 3);
        // Bare TOML dates are accepted too.
        let bare = format!(
            "effective_from = 2026-09-01T02:00:00+02:00\n{}",
            doc("").replace("\"2026-09-15\"", "2026-09-15")
        );
        let d = parse(&bare).unwrap();
        assert_eq!(d.prices_read_on, "2026-09-15");
        assert_eq!(d.effective_from, Some(Timestamp(1_788_220_800_000)));
    }

    #[test]
    fn display_names_line_and_field() {
        let e = err(
            Some(42),
            "endpoint[3].price.unit_price",
            "must not be negative",
        );
        assert_eq!(
            e.to_string(),
            "line 42, field `endpoint[3].price.unit_price`: must not be negative"
        );
        assert_eq!(err(Some(2), "", "bad").to_string(), "line 2: bad");
        assert_eq!(
            err(None, "endpoint", "x").to_string(),
            "field `endpoint`: x"
        );
    }

    #[test]
    fn malformed_toml_reports_its_line() {
        let e = fails(&doc("[[endpoint]\nid = \"x\"\n"));
        assert_eq!(e.line, Some(13), "{e}");
        assert!(e.message.contains("table header"), "{e}");
        let e = fails("prices_read_on = \"2026-09-15\"\n\nname = \"unterminated\n");
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.to_string().starts_with("line 3"), "{e}");
    }

    #[test]
    fn serde_errors_report_line_and_field() {
        // A typo in a price key.
        assert_err(
            &doc("[[endpoint]]\nid = \"a\"\nname = \"A\"\ncategory = \"c\"\n\
                  price = { unit = \"image\", unti_price = \"0.1\" }\n"),
            17,
            "endpoint[1].price.unti_price",
            "unknown field `unti_price`",
        );
        // A typo in an endpoint key.
        assert_err(
            &doc(
                "[[endpoint]]\nid = \"a\"\nname = \"A\"\ncategory = \"c\"\nfour_xxx = \"free\"\n\
                  price = { unit = \"image\", unit_price = \"0.1\" }\n",
            ),
            17,
            "endpoint[1].four_xxx",
            "unknown field",
        );
        // A missing required key names the [[endpoint]] header line.
        assert_err(
            &doc("[[endpoint]]\nid = \"a\"\ncategory = \"c\"\n\
                  price = { unit = \"image\", unit_price = \"0.1\" }\n"),
            13,
            "endpoint[1].name",
            "missing field `name`",
        );
        // A wrong type.
        assert_err(
            &doc(
                "[[endpoint]]\nid = \"a\"\nname = \"A\"\ncategory = \"c\"\npartner = \"yes\"\n\
                  price = { unit = \"image\", unit_price = \"0.1\" }\n",
            ),
            17,
            "endpoint[1].partner",
            "expected a boolean",
        );
        // An unknown unit.
        assert_err(
            &doc("[[endpoint]]\nid = \"a\"\nname = \"A\"\ncategory = \"c\"\n\
                  price = { unit = \"pixel\", unit_price = \"0.1\" }\n"),
            17,
            "endpoint[1].price.unit",
            "unknown variant `pixel`",
        );
        // A typo inside a rate condition (flattened) names the rate.
        assert_err(
            &doc(
                "[[endpoint]]\nid = \"a\"\nname = \"A\"\ncategory = \"c\"\n[endpoint.price]\n\
                  unit = \"image\"\nunit_price = \"0.1\"\n[[endpoint.price.rates]]\n\
                  whne = { resolution = \"4k\" }\nunit_price = \"0.2\"\n",
            ),
            20,
            "endpoint[1].price.rates[0].whne",
            "unknown field `whne`",
        );
        // A missing top-level key.
        let e = fails("[machines]\n");
        assert_eq!(e.field, "prices_read_on", "{e}");
        assert!(e.message.contains("missing field"), "{e}");
        // An unknown top-level table.
        let e = fails(&doc("[machine]\nGPU-H100 = \"1\"\n"));
        assert_eq!((e.line, e.field.as_str()), (Some(13), "machine"), "{e}");
    }

    #[test]
    fn floats_are_rejected_with_a_hint_to_quote_them() {
        let text = doc("[[endpoint]]\nid = \"a\"\nname = \"A\"\ncategory = \"c\"\n\
             price = { unit = \"image\", unit_price = 0.025 }\n");
        let e = fails(&text);
        assert_eq!(e.line, Some(17));
        assert_eq!(e.field, "endpoint[1].price.unit_price");
        assert!(e.message.contains("\"0.025\""), "{e}");
        assert!(e.message.contains("inexact"), "{e}");
        // Machine prices and hold units too.
        let e = fails(&HEAD.replace("\"0.000525\"", "0.000525"));
        assert_eq!((e.line, e.field.as_str()), (Some(4), "machines.GPU-H100"));
        let e = fails(&doc("").replace(
            "category = \"text-to-image\"",
            "hold_units = 2.5\ncategory = \"x\"",
        ));
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(10), "endpoint[0].hold_units")
        );
        // An integer field written as a float gets a whole-number hint.
        let e = fails(&doc("").replace(
            "category = \"text-to-image\"",
            "category = \"x\"\nhold_timeout_s = 60.0",
        ));
        assert_eq!(e.field, "endpoint[0].hold_timeout_s");
        assert!(e.message.contains("whole number"), "{e}");
        // Integers are exact and accepted.
        let d = parse(&doc("").replace("\"0.039\"", "1")).unwrap();
        assert_eq!(d.endpoints[0].rule.unit_price, Some(Decimal::ONE));
    }

    fn endpoint(body: &str) -> String {
        doc(&format!(
            "[[endpoint]]\nid = \"fal-ai/x\"\nname = \"X\"\ncategory = \"c\"\n{body}\n"
        ))
    }

    #[test]
    fn needs_at_least_one_endpoint() {
        let e = fails(HEAD);
        assert_eq!((e.line, e.field.as_str()), (None, "endpoint"));
        assert!(e.message.contains("at least one"), "{e}");
    }

    #[test]
    fn ids_are_validated() {
        assert_err(
            &doc(
                "[[endpoint]]\nid = \"fal ai/x\"\nname = \"X\"\ncategory = \"c\"\n\
                  price = { unit = \"image\", unit_price = \"1\" }\n",
            ),
            13,
            "endpoint[1].id",
            "not allowed",
        );
        assert_err(
            &endpoint(
                "machine_type = \"GPU H100\"\nprice = { unit = \"image\", unit_price = \"1\" }",
            ),
            13,
            "endpoint[1].machine_type",
            "invalid machine_type",
        );
        let e = fails(&format!("{HEAD}\"GPU/X\" = \"1\"\n{}", ok_endpoint("a")));
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(6), "machines.GPU/X"),
            "{e}"
        );
        // name and category must say something
        assert_err(
            &doc("[[endpoint]]\nid = \"a\"\nname = \" \"\ncategory = \"c\"\n\
                  price = { unit = \"image\", unit_price = \"1\" }\n"),
            13,
            "endpoint[1].name",
            "empty",
        );
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let text = format!("{}{}", doc(""), ok_endpoint("fal-ai/ok"));
        assert_err(
            &text,
            14,
            "endpoint[1].id",
            "duplicate endpoint id `fal-ai/ok` (first defined on line 7)",
        );
    }

    #[test]
    fn price_rule_errors_name_the_price_field() {
        assert_err(
            &endpoint("price = { unit = \"image\", unit_price = \"-0.01\" }"),
            13,
            "endpoint[1].price.unit_price",
            "must not be negative",
        );
        assert_err(
            &endpoint("price = { unit = \"image\" }"),
            13,
            "endpoint[1].price.unit_price",
            "is required",
        );
        assert_err(
            &endpoint("price = { unit = \"character\", unit_price = \"0.1\", per = \"0\" }"),
            13,
            "endpoint[1].price.per",
            "must be positive",
        );
        assert_err(
            &endpoint(
                "price = { unit = \"image\", unit_price = \"0.1\", \
                 multipliers = [{ when = { resolution = \"4K\" }, factor = \"0\" }] }",
            ),
            13,
            "endpoint[1].price.multipliers[0].factor",
            "must be positive",
        );
        assert_err(
            &endpoint(
                "price = { unit = \"token\", tokens = { per = \"1000000\", input = \"-1\" } }",
            ),
            13,
            "endpoint[1].price.tokens.input",
            "must not be negative",
        );
    }

    #[test]
    fn gpu_seconds_need_a_price_source() {
        assert_err(
            &endpoint("price = { unit = \"gpu_second\" }"),
            13,
            "endpoint[1].price.unit_price",
            "gpu_second",
        );
        // A machine type that is listed, or an own unit_price, is enough.
        parse(&endpoint(
            "machine_type = \"GPU-H100\"\nprice = { unit = \"gpu_second\" }",
        ))
        .unwrap();
        parse(&endpoint(
            "price = { unit = \"gpu_second\", unit_price = \"0.001\" }",
        ))
        .unwrap();
    }

    #[test]
    fn referenced_machines_must_exist() {
        assert_err(
            &endpoint("machine_type = \"GPU-B300\"\nprice = { unit = \"gpu_second\" }"),
            13,
            "endpoint[1].machine_type",
            "`GPU-B300` is not in [machines]",
        );
    }

    #[test]
    fn billed_four_xx_needs_a_machine() {
        assert_err(
            &endpoint(
                "four_xx = \"inference_seconds\"\nprice = { unit = \"image\", unit_price = \"1\" }",
            ),
            13,
            "endpoint[1].four_xx",
            "machine_type",
        );
        let d = parse(&endpoint(
            "four_xx = \"inference_seconds\"\nmachine_type = \"GPU-A100\"\n\
             price = { unit = \"image\", unit_price = \"1\" }",
        ))
        .unwrap();
        assert_eq!(d.endpoints[1].def.four_xx, FourXxPolicy::InferenceSeconds);
        assert_eq!(d.machine_price(&d.endpoints[1]), Some(Decimal::new(275, 6)));
    }

    #[test]
    fn surge_prices_are_machine_prices_of_listed_machines() {
        let surge = |table: &str| {
            format!(
                "{HEAD}\n[machines_surge]\n{table}{}",
                ok_endpoint("fal-ai/ok")
            )
        };
        let d = parse(&surge("GPU-H100 = \"0.0007875\"\n")).unwrap();
        assert_eq!(
            d.machines_surge,
            MachinePrices::from([(
                MachineType::parse("GPU-H100").unwrap(),
                Decimal::new(7875, 7)
            )])
        );
        assert!(parse(&doc("")).unwrap().machines_surge.is_empty());
        let e = fails(&surge("GPU-B300 = \"0.001\"\n"));
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(8), "machines_surge.GPU-B300"),
            "{e}"
        );
        assert!(e.message.contains("`GPU-B300` is not in [machines]"), "{e}");
        let e = fails(&surge("GPU-H100 = \"-0.001\"\n"));
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(8), "machines_surge.GPU-H100"),
            "{e}"
        );
        assert!(e.message.contains("negative"), "{e}");
        let e = fails(&surge("GPU-H100 = 0.001\n"));
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(8), "machines_surge.GPU-H100"),
            "{e}"
        );
        assert!(e.message.contains("inexact"), "{e}");
        let e = fails(&surge("\"GPU H100\" = \"0.001\"\n"));
        assert_eq!(e.field, "machines_surge.GPU H100", "{e}");
    }

    #[test]
    fn endpoint_ids_under_serverless_are_refused() {
        for id in [
            "serverless/my-app/production/GPU-H100/standard",
            "serverless/x",
        ] {
            assert_err(
                &doc(&format!(
                    "[[endpoint]]\nid = \"{id}\"\nname = \"X\"\ncategory = \"c\"\n\
                     price = {{ unit = \"image\", unit_price = \"1\" }}\n"
                )),
                13,
                "endpoint[1].id",
                "kept for serverless runner time",
            );
        }
        // A model whose id merely contains the word is fine.
        parse(&doc(
            "[[endpoint]]\nid = \"fal-ai/serverless/x\"\nname = \"X\"\ncategory = \"c\"\n\
             price = { unit = \"image\", unit_price = \"1\" }\n",
        ))
        .unwrap();
    }

    #[test]
    fn machine_prices_must_not_be_negative() {
        let e = fails(&format!("{HEAD}CPU-XS = \"-0.1\"\n{}", ok_endpoint("a")));
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(6), "machines.CPU-XS"),
            "{e}"
        );
        assert!(e.message.contains("negative"), "{e}");
    }

    #[test]
    fn hold_units_and_timeout_are_bounded() {
        let p = "price = { unit = \"image\", unit_price = \"1\" }";
        assert_err(
            &endpoint(&format!("hold_units = \"0\"\n{p}")),
            13,
            "endpoint[1].hold_units",
            "greater than 0",
        );
        assert_err(
            &endpoint(&format!("hold_units = \"-2\"\n{p}")),
            13,
            "endpoint[1].hold_units",
            "greater than 0",
        );
        assert_err(
            &endpoint(&format!("hold_timeout_s = 0\n{p}")),
            13,
            "endpoint[1].hold_timeout_s",
            "between 1 and 86400",
        );
        assert_err(
            &endpoint(&format!("hold_timeout_s = 86401\n{p}")),
            13,
            "endpoint[1].hold_timeout_s",
            "between 1 and 86400",
        );
        // A negative timeout is a type error, still located.
        assert_err(
            &endpoint(&format!("hold_timeout_s = -1\n{p}")),
            17,
            "endpoint[1].hold_timeout_s",
            "u32",
        );
        let d = parse(&endpoint(&format!(
            "hold_units = \"2.50\"\nhold_timeout_s = 86400\n{p}"
        )))
        .unwrap();
        assert_eq!(d.endpoints[1].def.hold_units, Decimal::new(25, 1));
        assert_eq!(d.endpoints[1].def.hold_timeout_s, 86_400);
    }

    #[test]
    fn missing_units_and_late_completion_are_parsed_strictly() {
        let p = "price = { unit = \"megapixel\", unit_price = \"0.025\" }";
        let d = parse(&doc("")).unwrap();
        assert_eq!(d.endpoints[0].def.missing_units, MissingUnits::Refuse);
        assert_eq!(d.endpoints[0].def.late_completion, LateCompletion::Bill);
        let d = parse(&endpoint(&format!(
            "missing_units = \"one_unit\"\nlate_completion = \"refuse\"\n{p}"
        )))
        .unwrap();
        assert_eq!(d.endpoints[1].def.missing_units, MissingUnits::OneUnit);
        assert_eq!(d.endpoints[1].def.late_completion, LateCompletion::Refuse);
        let d = parse(&endpoint(&format!(
            "machine_type = \"GPU-H100\"\nmissing_units = \"compute_seconds\"\n{p}"
        )))
        .unwrap();
        assert_eq!(
            d.endpoints[1].def.missing_units,
            MissingUnits::ComputeSeconds
        );
        // An unknown value names its line and field.
        assert_err(
            &endpoint(&format!("missing_units = \"zero\"\n{p}")),
            17,
            "endpoint[1].missing_units",
            "unknown variant `zero`",
        );
        assert_err(
            &endpoint(&format!("late_completion = \"ignore\"\n{p}")),
            17,
            "endpoint[1].late_completion",
            "unknown variant `ignore`",
        );
        // Compute seconds need a machine; one unit of a token price means nothing.
        assert_err(
            &endpoint(&format!("missing_units = \"compute_seconds\"\n{p}")),
            13,
            "endpoint[1].missing_units",
            "machine_type",
        );
        assert_err(
            &endpoint(
                "missing_units = \"one_unit\"\n\
                 price = { unit = \"token\", tokens = { per = \"1000000\", output = \"10\" } }",
            ),
            13,
            "endpoint[1].missing_units",
            "token",
        );
    }

    #[test]
    fn upstreams_and_the_cancellation_rule_are_read_and_checked() {
        let p = "price = { unit = \"megapixel\", unit_price = \"0.025\" }";
        let up = |keys: &str| endpoint(&format!("{p}\n[[endpoint.upstream]]\n{keys}"));
        let d = parse(&up("url = \"http://10.0.0.7:8080/\"\nslots = 4")).unwrap();
        let def = &d.endpoints[1].def;
        assert_eq!(
            def.upstreams,
            [crate::catalog::Upstream {
                url: "http://10.0.0.7:8080".into(),
                slots: 4,
                timeout_s: DEFAULT_UPSTREAM_TIMEOUT_S,
                machine_type: None,
            }]
        );
        assert_eq!(def.cancellation, crate::catalog::Cancellation::Free);
        assert!(d.endpoints[0].def.upstreams.is_empty());
        for (keys, field, what) in [
            ("url = \"ftp://x\"", "url", "http(s) base URL"),
            ("url = \"http://x/a?b=1\"", "url", "no query"),
            ("url = \"http://\"", "url", "http(s) base URL"),
            (
                "url = \"http://x\"\nslots = 0",
                "slots",
                "between 1 and 10000",
            ),
            (
                "url = \"http://x\"\ntimeout_s = 601",
                "timeout_s",
                "hold_timeout_s (600 s)",
            ),
            (
                "url = \"http://x\"\nmachine_type = \"GPU-Z9\"",
                "machine_type",
                "not in [machines]",
            ),
        ] {
            let e = fails(&up(keys));
            assert_eq!(
                e.field,
                format!("endpoint[1].upstream[0].{field}"),
                "{keys}: {e}"
            );
            assert!(e.message.contains(what), "{keys}: {e}");
        }
        assert!(fails(&up("url = \"http://x\"\nport = 1"))
            .message
            .contains("unknown field"));
        let d = parse(&endpoint(&format!(
            "machine_type = \"GPU-H100\"\ncancellation = \"compute_seconds\"\n{p}"
        )))
        .unwrap();
        assert_eq!(
            d.endpoints[1].def.cancellation,
            crate::catalog::Cancellation::ComputeSeconds
        );
        assert_err(
            &endpoint(&format!("cancellation = \"compute_seconds\"\n{p}")),
            13,
            "endpoint[1].cancellation",
            "machine_type",
        );
    }

    #[test]
    fn dates_are_validated() {
        let e = fails(&doc("").replace("2026-09-15", "Sep 2026"));
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(1), "prices_read_on"),
            "{e}"
        );
        let e = fails(&format!(
            "effective_from = \"2026-09-01 00:00\"\n{}",
            doc("")
        ));
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(1), "effective_from"),
            "{e}"
        );
        // A local date-time has no offset and is ambiguous.
        let e = fails(&format!(
            "effective_from = 2026-09-01T00:00:00\n{}",
            doc("")
        ));
        assert_eq!(e.field, "effective_from", "{e}");
    }

    #[test]
    fn concurrency_tables_are_validated() {
        let text = format!(
            "{}\n[[concurrency]]\npaid_28d_usd = \"10\"\nlimit = 3\n",
            doc("")
        );
        let e = fails(&text);
        assert_eq!((e.line, e.field.as_str()), (Some(14), "concurrency"), "{e}");
        assert!(e.message.contains("start at paid_28d_usd = 0"), "{e}");
    }
}
