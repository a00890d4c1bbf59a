//! Price rules and rating: what a request produced (usage) → billable quantity and cost.
//!
//! A [`PriceRule`] expresses every pricing pattern in fal's catalog with a few orthogonal parts:
//! what is counted ([`Unit`]), how it becomes billable units (`per`, `rounding`, `min_units`),
//! the rate (`unit_price`, first block `base`, attribute `rates`, `multipliers`), per-request
//! `add_ons`, multi-component `tokens` prices and a final `cost_step`. Everything is exact
//! decimal; nothing here rounds to nano-USD (see [`crate::pricing`]).

use crate::ids::MachineType;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What an endpoint counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Output images.
    Image,
    /// Megapixels of output (and optionally input) images, rounded up per image.
    Megapixel,
    /// Seconds of generated video.
    VideoSecond,
    /// Generated videos (flat per video).
    Video,
    /// Seconds of generated audio.
    AudioSecond,
    /// One per successful request ("per generation").
    Request,
    /// Input characters (text to speech); usually priced `per = 1000`.
    Character,
    /// Output frames.
    Frame,
    /// Input frames (video understanding); e.g. priced `per = 16`.
    InputFrame,
    /// Tokens, priced by component in `tokens`.
    Token,
    /// Seconds of inference at the rule's own `unit_price` (e.g. whisper).
    ComputeSecond,
    /// Seconds of inference x GPUs at the machine type's per-second price.
    GpuSecond,
}

impl Unit {
    /// The label shown in pricing and usage responses (fal's `unit`).
    pub fn label(self) -> &'static str {
        match self {
            Unit::Image => "image",
            Unit::Megapixel => "megapixel",
            Unit::VideoSecond => "second",
            Unit::Video => "video",
            Unit::AudioSecond => "audio second",
            Unit::Request => "request",
            Unit::Character => "character",
            Unit::Frame => "frame",
            Unit::InputFrame => "input frame",
            Unit::Token => "token",
            Unit::ComputeSecond => "compute second",
            Unit::GpuSecond => "gpu second",
        }
    }
}

/// How a measured quantity becomes billable units after dividing by `per`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    /// Fractional units are billed as they are (e.g. 1.5 x 1K characters).
    #[default]
    Exact,
    /// Each started unit (or block of `per`) is billed whole.
    Up,
}

/// An output attribute value: `resolution = "4k"`, `audio = true`. A text value, like an
/// attribute's name, is a name: not empty, without control characters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum AttrValue {
    Bool(bool),
    Text(String),
}

/// Checks an attribute's name or text value (see [`AttrValue`]). Stored price rules are read
/// through the same check, so it asks nothing a rule accepted before it could fail: only what
/// no rule ever meant (an empty name, a control character).
fn attr_name(kind: &str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("an attribute {kind} must not be empty"));
    }
    match s.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "an attribute {kind} must not contain control character {c:?}"
        )),
        None => Ok(()),
    }
}

impl<'de> Deserialize<'de> for AttrValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = AttrValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a boolean or a string")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<AttrValue, E> {
                Ok(AttrValue::Bool(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<AttrValue, E> {
                attr_name("value", v).map_err(E::custom)?;
                Ok(AttrValue::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// `#[serde(deserialize_with = "attributes")]`: attributes by name, each name checked as
/// [`AttrValue`] says.
fn attributes<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, AttrValue>, D::Error> {
    let map = BTreeMap::<String, AttrValue>::deserialize(d)?;
    for name in map.keys() {
        attr_name("name", name).map_err(serde::de::Error::custom)?;
    }
    Ok(map)
}

impl AttrValue {
    fn matches(&self, actual: Option<&AttrValue>) -> bool {
        match (self, actual) {
            (AttrValue::Bool(want), Some(AttrValue::Bool(got))) => want == got,
            (AttrValue::Bool(false), None) => true,
            (AttrValue::Text(want), Some(AttrValue::Text(got))) => want.eq_ignore_ascii_case(got),
            _ => false,
        }
    }
}

/// A condition on the output: every listed attribute must match (strings case-insensitively;
/// a missing boolean counts as `false`), and, if set, more than `frames_above` output frames.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Condition {
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "attributes"
    )]
    pub when: BTreeMap<String, AttrValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames_above: Option<u64>,
}

impl Condition {
    pub fn matches(&self, output: &Output) -> bool {
        self.when
            .iter()
            .all(|(k, v)| v.matches(output.attributes.get(k)))
            && self
                .frames_above
                .is_none_or(|n| output.frames.is_some_and(|f| f > n))
    }
}

/// The first `units` cost `price` together (a minimum block); each further unit costs the
/// rule's (attribute-selected) `unit_price`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BaseBlock {
    #[serde(deserialize_with = "crate::decimal::de_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::decimal::ExactDecimal))]
    pub units: Decimal,
    #[serde(deserialize_with = "crate::decimal::de_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::decimal::ExactDecimal))]
    pub price: Decimal,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RateWhen {
    #[serde(flatten)]
    pub condition: Condition,
    #[serde(deserialize_with = "crate::decimal::de_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::decimal::ExactDecimal))]
    pub unit_price: Decimal,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MultiplierWhen {
    #[serde(flatten)]
    pub condition: Condition,
    #[serde(deserialize_with = "crate::decimal::de_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::decimal::ExactDecimal))]
    pub factor: Decimal,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AddOn {
    pub name: String,
    #[serde(flatten)]
    pub condition: Condition,
    /// USD added once per request when the condition matches.
    #[serde(deserialize_with = "crate::decimal::de_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::decimal::ExactDecimal))]
    pub price: Decimal,
}

/// Per-component token prices, in USD per `per` tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TokenPrices {
    #[serde(deserialize_with = "crate::decimal::de_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::decimal::ExactDecimal))]
    pub per: Decimal,
    #[serde(default, deserialize_with = "crate::decimal::de_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::decimal::ExactDecimal))]
    pub input: Decimal,
    #[serde(default, deserialize_with = "crate::decimal::de_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::decimal::ExactDecimal))]
    pub cached_input: Decimal,
    #[serde(default, deserialize_with = "crate::decimal::de_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::decimal::ExactDecimal))]
    pub output: Decimal,
    #[serde(default, deserialize_with = "crate::decimal::de_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::decimal::ExactDecimal))]
    pub image_input: Decimal,
    #[serde(default, deserialize_with = "crate::decimal::de_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::decimal::ExactDecimal))]
    pub image_cached_input: Decimal,
    #[serde(default, deserialize_with = "crate::decimal::de_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::decimal::ExactDecimal))]
    pub image_output: Decimal,
}

/// A complete price: see the module documentation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PriceRule {
    pub unit: Unit,
    /// USD per billable unit (for `gpu_second`: taken from the machine table when absent; for
    /// `token`: the headline output rate per `tokens.per`, used for display and holds).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::decimal::de_text_opt"
    )]
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<crate::decimal::ExactDecimal>)
    )]
    pub unit_price: Option<Decimal>,
    /// Measured quantity per billable unit (1000 characters, 16 frames, 5-second blocks).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::decimal::de_text_opt"
    )]
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<crate::decimal::ExactDecimal>)
    )]
    pub per: Option<Decimal>,
    #[serde(default)]
    pub rounding: Rounding,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::decimal::de_text_opt"
    )]
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<crate::decimal::ExactDecimal>)
    )]
    pub min_units: Option<Decimal>,
    /// Megapixels: the pixel count of one megapixel (1048576 or 1000000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub megapixel_divisor: Option<u64>,
    /// Megapixels: count input images too.
    #[serde(default)]
    pub include_input_images: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseBlock>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rates: Vec<RateWhen>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub multipliers: Vec<MultiplierWhen>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_ons: Vec<AddOn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<TokenPrices>,
    /// The cost is rounded up to a multiple of this many USD (gpt-image-2: 0.0001).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::decimal::de_text_opt"
    )]
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<crate::decimal::ExactDecimal>)
    )]
    pub cost_step: Option<Decimal>,
}

/// Image dimensions in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Dims {
    pub width: u64,
    pub height: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Tokens {
    #[serde(default)]
    pub input: u64,
    #[serde(default)]
    pub cached_input: u64,
    #[serde(default)]
    pub output: u64,
    #[serde(default)]
    pub image_input: u64,
    #[serde(default)]
    pub image_cached_input: u64,
    #[serde(default)]
    pub image_output: u64,
}

impl Tokens {
    /// The counts by component, in the order of [`TokenPrices::components`].
    pub fn components(&self) -> [u64; 6] {
        [
            self.input,
            self.cached_input,
            self.output,
            self.image_input,
            self.image_cached_input,
            self.image_output,
        ]
    }

    pub fn total(&self) -> u64 {
        self.components()
            .iter()
            .fold(0u64, |a, b| a.saturating_add(*b))
    }
}

impl TokenPrices {
    /// The prices by component, in the order of [`Tokens::components`].
    pub fn components(&self) -> [Decimal; 6] {
        [
            self.input,
            self.cached_input,
            self.output,
            self.image_input,
            self.image_cached_input,
            self.image_output,
        ]
    }
}

/// What a request produced, as reported by the runner.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Output {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<Dims>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input_images: Vec<Dims>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub videos: Option<u64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::decimal::de_opt"
    )]
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<crate::decimal::DecimalInput>)
    )]
    pub video_seconds: Option<Decimal>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::decimal::de_opt"
    )]
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<crate::decimal::DecimalInput>)
    )]
    pub audio_seconds: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub characters: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_frames: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Tokens>,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "attributes"
    )]
    pub attributes: BTreeMap<String, AttrValue>,
}

/// Everything rating needs to know about one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub output: Output,
    /// The quantity already in the priced unit (fal's `x-fal-billable-units`); wins over
    /// `output` for the quantity (attributes still select rates).
    pub billable_units: Option<Decimal>,
    /// Inference time only: never queue time or cold start.
    pub inference_seconds: Decimal,
    pub num_gpus: u32,
    /// The machine's price per GPU-second, when the unit is `gpu_second`.
    pub machine_price_per_second: Option<Decimal>,
}

/// The result of rating: exact decimal USD before account adjustments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rated {
    /// Billable units (fal's `output_units`, the `x-fal-billable-units` header).
    pub quantity: Decimal,
    /// Effective USD per billable unit before discount: the selected rate, or, for prices
    /// with a first block, add-ons or a cost step, `subtotal / quantity`.
    pub unit_price: Decimal,
    /// Exact USD before any discount.
    pub subtotal: Decimal,
    /// `unit_price` is `subtotal / quantity` (token, first-block, add-on and cost-step prices),
    /// not a listed rate: usage groups such requests by price version instead of by price.
    pub blended: bool,
}

/// Why a usage report cannot be rated. Nothing is billed or written when rating fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("`{field}` {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("the price has no unit_price and no machine price applies")]
    NoPrice,
    #[error("the cost overflows")]
    Overflow,
}

/// Upper bounds on what one request can report. Anything larger is a bug or an attack, and is
/// answered with a clear error instead of a charge.
pub mod limits {
    pub const MAX_IMAGES: usize = 10_000;
    pub const MAX_PIXELS_PER_SIDE: u64 = 100_000;
    pub const MAX_SECONDS: u64 = 31_536_000; // one year of output
    pub const MAX_COUNT: u64 = 1_000_000_000_000; // tokens, characters, frames
    pub const MAX_BILLABLE_UNITS: u64 = 1_000_000_000_000;
}

fn invalid(field: &'static str, reason: impl Into<String>) -> RateError {
    RateError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn check_seconds(field: &'static str, v: Option<Decimal>) -> Result<(), RateError> {
    if let Some(s) = v {
        if s.is_sign_negative() && !s.is_zero() {
            return Err(invalid(field, "must not be negative"));
        }
        if s > Decimal::from(limits::MAX_SECONDS) {
            return Err(invalid(
                field,
                format!("exceeds {} seconds", limits::MAX_SECONDS),
            ));
        }
    }
    Ok(())
}

fn check_count(field: &'static str, v: Option<u64>) -> Result<(), RateError> {
    match v {
        Some(n) if n > limits::MAX_COUNT => {
            Err(invalid(field, format!("exceeds {}", limits::MAX_COUNT)))
        }
        _ => Ok(()),
    }
}

fn check_dims(field: &'static str, images: &[Dims]) -> Result<(), RateError> {
    if images.len() > limits::MAX_IMAGES {
        return Err(invalid(
            field,
            format!("lists more than {} images", limits::MAX_IMAGES),
        ));
    }
    for d in images {
        if d.width == 0 || d.height == 0 {
            return Err(invalid(field, "width and height must be at least 1 pixel"));
        }
        if d.width > limits::MAX_PIXELS_PER_SIDE || d.height > limits::MAX_PIXELS_PER_SIDE {
            return Err(invalid(
                field,
                format!("a side exceeds {} pixels", limits::MAX_PIXELS_PER_SIDE),
            ));
        }
    }
    Ok(())
}

/// A successful output that lacks what its price measures: `missing` names the field the price
/// needs (`output.images`, `output.video_seconds`, `inference_seconds`, ...), `unexpected` the
/// measured fields the output carries instead, which that price cannot bill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputMismatch {
    pub missing: &'static str,
    pub unexpected: Vec<&'static str>,
}

impl std::fmt::Display for OutputMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the output has no `{}`", self.missing)?;
        if !self.unexpected.is_empty() {
            let names: Vec<String> = self.unexpected.iter().map(|u| format!("`{u}`")).collect();
            write!(
                f,
                " and carries {}, which the price cannot measure",
                names.join(", ")
            )?;
        }
        Ok(())
    }
}

impl Output {
    /// The measured (output) fields this output carries, in the order of [`Output`]. Input
    /// images and attributes describe the request, not what it produced, and are left out.
    pub fn measured_fields(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if !self.images.is_empty() {
            v.push("output.images");
        }
        if self.videos.is_some() {
            v.push("output.videos");
        }
        if self.video_seconds.is_some() {
            v.push("output.video_seconds");
        }
        if self.audio_seconds.is_some() {
            v.push("output.audio_seconds");
        }
        if self.characters.is_some() {
            v.push("output.characters");
        }
        if self.frames.is_some() {
            v.push("output.frames");
        }
        if self.input_frames.is_some() {
            v.push("output.input_frames");
        }
        if self.tokens.is_some() {
            v.push("output.tokens");
        }
        v
    }
}

impl PriceRule {
    /// Whether a successful output has what this price measures, when the runner reported no
    /// `billable_units` (which win over the output, so they never mismatch).
    /// `inference_reported` says whether the inference seconds are known (measured by a
    /// lifecycle, or reported by a usage event). `None`: the output can be rated.
    ///
    /// A price measures one field; the output lacks it when it is absent (an empty `images`
    /// list counts as absent). Per-request prices measure nothing, and per-video prices count
    /// one video when nothing is reported, so they mismatch only when the output carries
    /// another unit's measure and nothing of a video (`images` sent to a video price).
    pub fn output_mismatch(
        &self,
        output: &Output,
        inference_reported: bool,
    ) -> Option<OutputMismatch> {
        let o = output;
        let (missing, present) = match self.unit {
            Unit::Request => return None,
            Unit::Video => {
                let video = o.videos.is_some() || o.video_seconds.is_some() || o.frames.is_some();
                let measured = o.measured_fields();
                if video || measured.is_empty() {
                    return None;
                }
                return Some(OutputMismatch {
                    missing: "output.videos",
                    unexpected: measured,
                });
            }
            Unit::Image | Unit::Megapixel => ("output.images", !o.images.is_empty()),
            Unit::VideoSecond => ("output.video_seconds", o.video_seconds.is_some()),
            Unit::AudioSecond => ("output.audio_seconds", o.audio_seconds.is_some()),
            Unit::Character => ("output.characters", o.characters.is_some()),
            Unit::Frame => ("output.frames", o.frames.is_some()),
            Unit::InputFrame => ("output.input_frames", o.input_frames.is_some()),
            Unit::Token => ("output.tokens", o.tokens.is_some()),
            Unit::ComputeSecond | Unit::GpuSecond => ("inference_seconds", inference_reported),
        };
        (!present).then(|| OutputMismatch {
            missing,
            unexpected: o.measured_fields(),
        })
    }
}

impl Usage {
    /// Rejects negative or absurd quantities before anything is rated.
    pub fn validate(&self) -> Result<(), RateError> {
        let o = &self.output;
        check_dims("output.images", &o.images)?;
        check_dims("output.input_images", &o.input_images)?;
        check_count("output.videos", o.videos)?;
        check_seconds("output.video_seconds", o.video_seconds)?;
        check_seconds("output.audio_seconds", o.audio_seconds)?;
        check_count("output.characters", o.characters)?;
        check_count("output.frames", o.frames)?;
        check_count("output.input_frames", o.input_frames)?;
        if let Some(t) = &o.tokens {
            for v in t.components() {
                check_count("output.tokens", Some(v))?;
            }
        }
        check_seconds("inference_seconds", Some(self.inference_seconds))?;
        if let Some(b) = self.billable_units {
            if b.is_sign_negative() && !b.is_zero() {
                return Err(invalid("billable_units", "must not be negative"));
            }
            if b > Decimal::from(limits::MAX_BILLABLE_UNITS) {
                return Err(invalid(
                    "billable_units",
                    format!("exceeds {}", limits::MAX_BILLABLE_UNITS),
                ));
            }
        }
        if self.num_gpus > crate::machine::MAX_GPUS {
            return Err(invalid("num_gpus", "exceeds 64"));
        }
        Ok(())
    }
}

const DEFAULT_MEGAPIXEL: u64 = 1_048_576;

fn ceil_div(n: u128, d: u128) -> u128 {
    n.div_ceil(d)
}

fn dec(n: u64) -> Decimal {
    Decimal::from(n)
}

impl PriceRule {
    /// A plain price: `unit_price` USD per unit, nothing else.
    pub fn per_unit(unit: Unit, unit_price: Option<Decimal>) -> PriceRule {
        PriceRule {
            unit,
            unit_price,
            per: None,
            rounding: Rounding::Exact,
            min_units: None,
            megapixel_divisor: None,
            include_input_images: false,
            base: None,
            rates: vec![],
            multipliers: vec![],
            add_ons: vec![],
            tokens: None,
            cost_step: None,
        }
    }

    /// The headline USD price per unit, as shown by the pricing API (before account discounts).
    pub fn headline_unit_price(&self, machine_price: Option<Decimal>) -> Option<Decimal> {
        match self.unit {
            Unit::GpuSecond => self.unit_price.or(machine_price),
            Unit::Token => self
                .unit_price
                .or_else(|| self.tokens.as_ref().map(|t| t.output)),
            _ => self.unit_price,
        }
    }

    /// Unit label including the block size: "1000 characters", "5 seconds", "1M tokens".
    pub fn unit_label(&self) -> String {
        let per = match self.unit {
            Unit::Token => self.tokens.as_ref().map(|t| t.per),
            _ => self.per,
        };
        match per {
            Some(p) if p != Decimal::ONE => {
                let n = if p == dec(1_000_000) {
                    "1M".to_string()
                } else if p == dec(1000) {
                    "1K".to_string()
                } else {
                    p.normalize().to_string()
                };
                format!("{n} {}s", self.unit.label())
            }
            _ => self.unit.label().to_string(),
        }
    }

    /// The measured quantity in the counted unit, before `per`, rounding and minimums.
    fn measure(&self, usage: &Usage) -> Result<Decimal, RateError> {
        let o = &usage.output;
        Ok(match self.unit {
            Unit::Image => dec(o.images.len() as u64),
            Unit::Megapixel => {
                let div = self.megapixel_divisor.unwrap_or(DEFAULT_MEGAPIXEL) as u128;
                let per_image = |d: &Dims| ceil_div(d.width as u128 * d.height as u128, div).max(1);
                let mut mp: u128 = o.images.iter().map(per_image).sum();
                if self.include_input_images {
                    mp += o.input_images.iter().map(per_image).sum::<u128>();
                }
                Decimal::from(mp as u64)
            }
            Unit::VideoSecond => o.video_seconds.unwrap_or_default(),
            Unit::Video => dec(o.videos.unwrap_or(1)),
            Unit::AudioSecond => o.audio_seconds.unwrap_or_default(),
            Unit::Request => Decimal::ONE,
            Unit::Character => dec(o.characters.unwrap_or(0)),
            Unit::Frame => dec(o.frames.unwrap_or(0)),
            Unit::InputFrame => dec(o.input_frames.unwrap_or(0)),
            Unit::Token => dec(o.tokens.map(|t| t.total()).unwrap_or(0)),
            Unit::ComputeSecond => usage.inference_seconds,
            Unit::GpuSecond => usage
                .inference_seconds
                .checked_mul(dec(usage.num_gpus.max(1) as u64))
                .ok_or(RateError::Overflow)?,
        })
    }

    /// Billable units: `billable_units` if reported, else the measure divided by `per` and
    /// rounded; never below `min_units`.
    pub fn quantity(&self, usage: &Usage) -> Result<Decimal, RateError> {
        let q = match usage.billable_units {
            Some(b) => b,
            None => {
                let m = self.measure(usage)?;
                let per = match self.unit {
                    Unit::Token => Decimal::ONE,
                    _ => self.per.unwrap_or(Decimal::ONE),
                };
                let q = m.checked_div(per).ok_or(RateError::Overflow)?;
                match self.rounding {
                    Rounding::Exact => q,
                    Rounding::Up => q.ceil(),
                }
            }
        };
        Ok(match self.min_units {
            Some(min) if q < min => min,
            _ => q,
        })
    }

    fn selected_unit_price(&self, usage: &Usage) -> Result<Decimal, RateError> {
        if let Some(r) = self
            .rates
            .iter()
            .find(|r| r.condition.matches(&usage.output))
        {
            return Ok(r.unit_price);
        }
        match self.unit {
            Unit::GpuSecond => self
                .unit_price
                .or(usage.machine_price_per_second)
                .ok_or(RateError::NoPrice),
            _ => self.unit_price.ok_or(RateError::NoPrice),
        }
    }

    fn multiplier(&self, output: &Output) -> Result<Decimal, RateError> {
        self.multipliers
            .iter()
            .filter(|m| m.condition.matches(output))
            .try_fold(Decimal::ONE, |acc, m| {
                acc.checked_mul(m.factor).ok_or(RateError::Overflow)
            })
    }

    /// Rates one request. Exact decimal throughout.
    pub fn rate(&self, usage: &Usage) -> Result<Rated, RateError> {
        usage.validate()?;
        let overflow = || RateError::Overflow;
        let mul = |a: Decimal, b: Decimal| a.checked_mul(b).ok_or_else(overflow);
        let add = |a: Decimal, b: Decimal| a.checked_add(b).ok_or_else(overflow);

        let quantity = self.quantity(usage)?;
        let factor = self.multiplier(&usage.output)?;
        let mut composite = factor != Decimal::ONE && self.base.is_some();

        let mut subtotal = match (&self.tokens, usage.billable_units) {
            (Some(tp), None) => {
                composite = true;
                let t = usage.output.tokens.unwrap_or_default();
                let mut sum = Decimal::ZERO;
                for (n, price) in t.components().into_iter().zip(tp.components()) {
                    sum = add(sum, mul(dec(n), price)?)?;
                }
                mul(sum.checked_div(tp.per).ok_or_else(overflow)?, factor)?
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "billable_units",
                    "cannot be used with a per-token price; report output.tokens",
                ))
            }
            (None, _) => {
                let rate = self.selected_unit_price(usage)?;
                match &self.base {
                    Some(b) => {
                        composite = true;
                        let extra = (quantity - b.units).max(Decimal::ZERO);
                        mul(add(b.price, mul(extra, rate)?)?, factor)?
                    }
                    None => mul(quantity, mul(rate, factor)?)?,
                }
            }
        };
        for a in self
            .add_ons
            .iter()
            .filter(|a| a.condition.matches(&usage.output))
        {
            composite = true;
            subtotal = add(subtotal, a.price)?;
        }
        if let Some(step) = self.cost_step.filter(|s| !s.is_zero()) {
            let rounded = mul(
                subtotal.checked_div(step).ok_or_else(overflow)?.ceil(),
                step,
            )?;
            composite |= rounded != subtotal;
            subtotal = rounded;
        }
        let blended = composite || self.tokens.is_some();
        let unit_price = if blended {
            if quantity.is_zero() {
                Decimal::ZERO
            } else {
                subtotal
                    .checked_div(quantity)
                    .ok_or_else(overflow)?
                    .round_dp(12)
                    .normalize()
            }
        } else {
            mul(self.selected_unit_price(usage)?, factor)?.normalize()
        };
        Ok(Rated {
            quantity: quantity.normalize(),
            unit_price,
            subtotal: subtotal.normalize(),
            blended,
        })
    }

    /// An upper bound of the exact USD cost of `units` billable units, whatever the output's
    /// attributes: the highest rate (the headline or any attribute rate, or the dearest token
    /// component), every multiplier above 1, every add-on, the cost step. Used for holds, so
    /// that a request's settlement stays within what it held when `units` is an upper bound.
    pub fn estimate_units(
        &self,
        units: Decimal,
        machine_price: Option<Decimal>,
    ) -> Result<Decimal, RateError> {
        let overflow = || RateError::Overflow;
        let mut rate = self
            .headline_unit_price(machine_price)
            .ok_or(RateError::NoPrice)?;
        let mut per = Decimal::ONE;
        if let (Unit::Token, Some(t)) = (self.unit, &self.tokens) {
            per = t.per;
            rate = t.components().into_iter().fold(rate, Decimal::max);
        }
        rate = self
            .rates
            .iter()
            .map(|r| r.unit_price)
            .fold(rate, Decimal::max);
        let factor = self
            .multipliers
            .iter()
            .filter(|m| m.factor > Decimal::ONE)
            .try_fold(Decimal::ONE, |acc, m| acc.checked_mul(m.factor))
            .ok_or_else(overflow)?;
        let q = match self.min_units {
            Some(m) if units < m => m,
            _ => units,
        };
        let base = match &self.base {
            Some(b) => (q - b.units)
                .max(Decimal::ZERO)
                .checked_mul(rate)
                .and_then(|x| x.checked_add(b.price)),
            None => q.checked_mul(rate).and_then(|x| x.checked_div(per)),
        }
        .ok_or_else(overflow)?;
        let mut cost = base.checked_mul(factor).ok_or_else(overflow)?;
        for a in &self.add_ons {
            cost = cost.checked_add(a.price).ok_or_else(overflow)?;
        }
        if let Some(step) = self.cost_step.filter(|s| !s.is_zero()) {
            cost = (cost / step).ceil() * step;
        }
        Ok(cost)
    }

    /// Checks the rule itself for contradictions. Returns the offending field and reason.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |f: &str, r: &str| Err((f.to_string(), r.to_string()));
        let neg = |d: &Decimal| d.is_sign_negative() && !d.is_zero();
        match self.unit {
            Unit::Token => {
                let Some(t) = &self.tokens else {
                    return err("tokens", "a `token` price needs a `tokens` table");
                };
                if t.per <= Decimal::ZERO {
                    return err("tokens.per", "must be positive");
                }
                for (f, v) in [
                    ("tokens.input", t.input),
                    ("tokens.cached_input", t.cached_input),
                    ("tokens.output", t.output),
                    ("tokens.image_input", t.image_input),
                    ("tokens.image_cached_input", t.image_cached_input),
                    ("tokens.image_output", t.image_output),
                ] {
                    if neg(&v) {
                        return err(f, "must not be negative");
                    }
                }
            }
            Unit::GpuSecond => {}
            _ => {
                if self.tokens.is_some() {
                    return err("tokens", "only a `token` price has token components");
                }
                if self.unit_price.is_none() {
                    return err("unit_price", "is required for this unit");
                }
            }
        }
        if let Some(p) = self.unit_price {
            if neg(&p) {
                return err("unit_price", "must not be negative");
            }
        }
        if let Some(p) = self.per {
            if p <= Decimal::ZERO {
                return err("per", "must be positive");
            }
        }
        if let Some(m) = self.min_units {
            if neg(&m) {
                return err("min_units", "must not be negative");
            }
        }
        if let Some(d) = self.megapixel_divisor {
            if self.unit != Unit::Megapixel {
                return err("megapixel_divisor", "only applies to the `megapixel` unit");
            }
            if d == 0 {
                return err("megapixel_divisor", "must be positive");
            }
        }
        if self.include_input_images && self.unit != Unit::Megapixel {
            return err(
                "include_input_images",
                "only applies to the `megapixel` unit",
            );
        }
        if let Some(b) = &self.base {
            if b.units <= Decimal::ZERO || neg(&b.price) {
                return err("base", "needs positive `units` and a non-negative `price`");
            }
        }
        for (i, r) in self.rates.iter().enumerate() {
            if neg(&r.unit_price) {
                return Err((
                    format!("rates[{i}].unit_price"),
                    "must not be negative".into(),
                ));
            }
        }
        for (i, m) in self.multipliers.iter().enumerate() {
            if m.factor <= Decimal::ZERO {
                return Err((
                    format!("multipliers[{i}].factor"),
                    "must be positive".into(),
                ));
            }
        }
        for (i, a) in self.add_ons.iter().enumerate() {
            if neg(&a.price) {
                return Err((format!("add_ons[{i}].price"), "must not be negative".into()));
            }
        }
        if let Some(s) = self.cost_step {
            if s <= Decimal::ZERO {
                return err("cost_step", "must be positive");
            }
        }
        Ok(())
    }
}

/// Per-second prices by machine type: the fallback for endpoints without an output price.
pub type MachinePrices = BTreeMap<MachineType, Decimal>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn rule(toml_text: &str) -> PriceRule {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn the_hold_estimate_bounds_every_attribute_combination() {
        // veo3.1-like: 0.20/s, audio 0.40, 4k 0.40, 4k+audio 0.60; plus a x1.5 multiplier and
        // an add-on, to check that every surcharge is in the bound.
        let r = rule(
            r#"
            unit = "video_second"
            unit_price = "0.20"
            rates = [
              { when = { resolution = "4k", audio = true }, unit_price = "0.60" },
              { when = { audio = true }, unit_price = "0.40" },
            ]
            multipliers = [{ when = { fast = true }, factor = "1.5" }, { when = { draft = true }, factor = "0.5" }]
            add_ons = [{ name = "web search", when = { web_search = true }, price = "0.015" }]
            "#,
        );
        let bound = r.estimate_units(d("8"), None).unwrap();
        assert_eq!(bound, d("7.215")); // 8 s x 0.60 x 1.5 + 0.015
        let worst = Usage {
            output: Output {
                video_seconds: Some(d("8")),
                attributes: [
                    ("resolution".to_string(), AttrValue::Text("4K".into())),
                    ("audio".to_string(), AttrValue::Bool(true)),
                    ("fast".to_string(), AttrValue::Bool(true)),
                    ("web_search".to_string(), AttrValue::Bool(true)),
                ]
                .into_iter()
                .collect(),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(r.rate(&worst).unwrap().subtotal, bound);
    }

    fn output(json: &str) -> Output {
        serde_json::from_str(json).unwrap()
    }

    /// What each unit measures, and what an output that lacks it is told.
    #[test]
    fn an_output_without_what_the_price_measures_is_a_mismatch() {
        // (unit, output, the mismatch: missing field and unexpected fields)
        type Case = (
            Unit,
            &'static str,
            Option<(&'static str, &'static [&'static str])>,
        );
        let cases: &[Case] = &[
            (
                Unit::Megapixel,
                r#"{"images": [{"width": 8, "height": 8}]}"#,
                None,
            ),
            (Unit::Megapixel, "{}", Some(("output.images", &[]))),
            (
                Unit::Megapixel,
                r#"{"images": []}"#,
                Some(("output.images", &[])),
            ),
            (
                Unit::Megapixel,
                r#"{"video_seconds": "5", "input_images": [{"width": 8, "height": 8}]}"#,
                Some(("output.images", &["output.video_seconds"])),
            ),
            (
                Unit::Image,
                r#"{"characters": 10}"#,
                Some(("output.images", &["output.characters"])),
            ),
            (Unit::VideoSecond, r#"{"video_seconds": "0"}"#, None),
            (
                Unit::VideoSecond,
                r#"{"images": [{"width": 8, "height": 8}]}"#,
                Some(("output.video_seconds", &["output.images"])),
            ),
            (Unit::Video, "{}", None),
            (Unit::Video, r#"{"frames": 97}"#, None),
            (
                Unit::Video,
                r#"{"images": [{"width": 8, "height": 8}]}"#,
                Some(("output.videos", &["output.images"])),
            ),
            (Unit::AudioSecond, "{}", Some(("output.audio_seconds", &[]))),
            (
                Unit::Character,
                r#"{"audio_seconds": "3"}"#,
                Some(("output.characters", &["output.audio_seconds"])),
            ),
            (Unit::Frame, "{}", Some(("output.frames", &[]))),
            (Unit::InputFrame, r#"{"input_frames": 33}"#, None),
            (Unit::Token, r#"{"tokens": {"output": 1}}"#, None),
            (Unit::Token, "{}", Some(("output.tokens", &[]))),
            (
                Unit::Request,
                r#"{"images": [{"width": 8, "height": 8}]}"#,
                None,
            ),
            (Unit::Request, "{}", None),
        ];
        for (unit, json, want) in cases {
            let got =
                PriceRule::per_unit(*unit, Some(Decimal::ONE)).output_mismatch(&output(json), true);
            let want = want.map(|(missing, unexpected)| OutputMismatch {
                missing,
                unexpected: unexpected.to_vec(),
            });
            assert_eq!(got, want, "{unit:?} with {json}");
        }
        // Compute prices measure inference seconds: known unless a usage event left them out.
        for unit in [Unit::ComputeSecond, Unit::GpuSecond] {
            let r = PriceRule::per_unit(unit, Some(Decimal::ONE));
            assert_eq!(r.output_mismatch(&Output::default(), true), None);
            assert_eq!(
                r.output_mismatch(&Output::default(), false)
                    .map(|m| m.missing),
                Some("inference_seconds")
            );
        }
        let m = OutputMismatch {
            missing: "output.video_seconds",
            unexpected: vec!["output.images"],
        };
        assert_eq!(
            m.to_string(),
            "the output has no `output.video_seconds` and carries `output.images`, which the \
             price cannot measure"
        );
    }

    #[test]
    fn the_hold_estimate_of_tokens_uses_the_dearest_component() {
        let r = rule(
            r#"
            unit = "token"
            tokens = { per = "1000000", input = "5.00", output = "10.00", image_output = "30.00" }
            cost_step = "0.0001"
            "#,
        );
        // 10,000 tokens at 30 USD per 1M = 0.30
        assert_eq!(r.estimate_units(d("10000"), None).unwrap(), d("0.3"));
    }
}
