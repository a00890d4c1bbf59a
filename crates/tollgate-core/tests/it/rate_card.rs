//! The sample catalog read as a rate card: real usage on real fal endpoints, rated with the
//! prices shipped in `catalog/sample.toml`, down to the nano-USD a customer pays.

use rust_decimal::Decimal;
use std::str::FromStr;
use tollgate_core::catalog::document::{parse, CatalogDocument, EndpointEntry};
use tollgate_core::concurrency::ConcurrencyTable;
use tollgate_core::ids::MachineType;
use tollgate_core::policy::FourXxPolicy;
use tollgate_core::price::{AttrValue, BaseBlock, Dims, PriceRule, Rated, Tokens, Unit, Usage};
use tollgate_core::pricing::{Charge, Discounts, VolumeTier};
use tollgate_core::Nanos;

const SAMPLE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../catalog/sample.toml"
));

fn catalog() -> CatalogDocument {
    parse(SAMPLE).unwrap_or_else(|e| panic!("catalog/sample.toml: {e}"))
}

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn entry<'a>(doc: &'a CatalogDocument, id: &str) -> &'a EndpointEntry {
    doc.endpoint(id)
        .unwrap_or_else(|| panic!("{id} is not in sample.toml"))
}

/// Rates `usage` on `id` with the sample's price, passing the endpoint's machine price the way
/// the engine does.
fn rate_with(doc: &CatalogDocument, id: &str, rule: &PriceRule, usage: &U) -> Rated {
    let mut usage = usage.0.clone();
    usage.machine_price_per_second = doc.machine_price(entry(doc, id));
    rule.rate(&usage).unwrap_or_else(|e| panic!("{id}: {e}"))
}

fn rate(doc: &CatalogDocument, id: &str, usage: &U) -> Rated {
    rate_with(doc, id, &entry(doc, id).rule, usage)
}

/// A usage builder that reads like the request it describes.
#[derive(Clone, Default)]
struct U(Usage);

fn dims(list: &[(u64, u64)]) -> Vec<Dims> {
    list.iter()
        .map(|&(width, height)| Dims { width, height })
        .collect()
}

impl U {
    fn images(list: &[(u64, u64)]) -> U {
        let mut u = U::default();
        u.0.output.images = dims(list);
        u
    }
    fn seconds(s: &str) -> U {
        let mut u = U::default();
        u.0.output.video_seconds = Some(d(s));
        u
    }
    fn video() -> U {
        let mut u = U::default();
        u.0.output.videos = Some(1);
        u
    }
    fn characters(n: u64) -> U {
        let mut u = U::default();
        u.0.output.characters = Some(n);
        u
    }
    fn input_frames(n: u64) -> U {
        let mut u = U::default();
        u.0.output.input_frames = Some(n);
        u
    }
    fn tokens(t: Tokens) -> U {
        let mut u = U::default();
        u.0.output.tokens = Some(t);
        u
    }
    fn request() -> U {
        U::default()
    }
    /// Inference seconds on `gpus` GPUs (or machines).
    fn inference(s: &str, gpus: u32) -> U {
        let mut u = U::default();
        u.0.inference_seconds = d(s);
        u.0.num_gpus = gpus;
        u
    }
    fn inputs(mut self, list: &[(u64, u64)]) -> U {
        self.0.output.input_images = dims(list);
        self
    }
    fn attr(mut self, key: &str, value: &str) -> U {
        self.0
            .output
            .attributes
            .insert(key.into(), AttrValue::Text(value.into()));
        self
    }
    fn flag(mut self, key: &str) -> U {
        self.0
            .output
            .attributes
            .insert(key.into(), AttrValue::Bool(true));
        self
    }
    fn frames(mut self, n: u64) -> U {
        self.0.output.frames = Some(n);
        self
    }
    fn billable(mut self, units: &str) -> U {
        self.0.billable_units = Some(d(units));
        self
    }
}

struct Row {
    endpoint: &'static str,
    usage: U,
    quantity: &'static str,
    unit_price: &'static str,
    subtotal: &'static str,
    /// What the customer pays with no discount, in nano-USD.
    total_nanos: i64,
}

fn row(
    endpoint: &'static str,
    usage: U,
    quantity: &'static str,
    unit_price: &'static str,
    subtotal: &'static str,
    total_nanos: i64,
) -> Row {
    Row {
        endpoint,
        usage,
        quantity,
        unit_price,
        subtotal,
        total_nanos,
    }
}

fn check(rows: Vec<Row>) {
    let doc = catalog();
    for (i, r) in rows.iter().enumerate() {
        let rated = rate(&doc, r.endpoint, &r.usage);
        let at = format!("row {i} ({})", r.endpoint);
        assert_eq!(rated.quantity, d(r.quantity), "{at}: quantity");
        assert_eq!(rated.unit_price, d(r.unit_price), "{at}: unit_price");
        assert_eq!(rated.subtotal, d(r.subtotal), "{at}: subtotal");
        let charge = Charge::new(&rated, None).unwrap();
        assert_eq!(charge.total_nanos, Nanos(r.total_nanos), "{at}: total");
        assert_eq!(charge.subtotal_nanos, charge.total_nanos, "{at}");
        assert_eq!(charge.discount_nanos, Nanos::ZERO, "{at}");
        assert_eq!(charge.percent_discount, None, "{at}");
    }
}

// ---------------------------------------------------------------------------------------------
// The sample itself.

#[test]
fn the_sample_catalog_parses_and_covers_fal() {
    let doc = catalog();
    assert!(
        doc.endpoints.len() >= 32,
        "{} endpoints",
        doc.endpoints.len()
    );
    assert_eq!(doc.prices_read_on, "2026-09-15");
    assert_eq!(doc.concurrency, Some(ConcurrencyTable::default()));
    let by_unit = |unit: Unit| doc.endpoints.iter().filter(|e| e.rule.unit == unit).count();
    assert!(by_unit(Unit::GpuSecond) >= 2);
    assert!(doc
        .endpoints
        .iter()
        .any(|e| e.def.four_xx == FourXxPolicy::InferenceSeconds));
    for e in &doc.endpoints {
        assert!(!e.def.category.is_empty(), "{}", e.def.id);
        // Every endpoint can hold its estimate before it runs.
        let hold = e
            .rule
            .estimate_units(e.def.hold_units, doc.machine_price(e))
            .unwrap_or_else(|err| panic!("{}: {err}", e.def.id));
        assert!(hold > Decimal::ZERO, "{}", e.def.id);
    }
}

#[test]
fn machine_prices_are_hourly_over_3600_rounded_up_to_12_places() {
    let doc = catalog();
    let hourly = [
        ("GPU-RTX4090", "0.72"),
        ("GPU-RTX5090", "0.90"),
        ("GPU-A100", "0.99"),
        ("GPU-L40", "1.08"),
        ("GPU-H100", "1.89"),
        ("GPU-H200", "4.50"),
        ("GPU-B200", "6.25"),
        ("XS", "0.036"),
        ("S", "0.072"),
        ("M", "0.144"),
        ("L", "0.288"),
        ("XL", "0.576"),
    ];
    assert_eq!(doc.machines.len(), hourly.len());
    for (machine, per_hour) in hourly {
        let per_second = doc.machines[&MachineType::parse(machine).unwrap()];
        let expected = (d(per_hour) / Decimal::from(3600))
            .round_dp_with_strategy(12, rust_decimal::RoundingStrategy::ToPositiveInfinity);
        assert_eq!(per_second, expected, "{machine}");
    }
    assert_eq!(
        doc.machines[&MachineType::parse("GPU-B200").unwrap()],
        d("0.001736111112")
    );
}

#[test]
fn every_gpu_machine_has_a_surge_price_of_one_and_a_half_times_its_own() {
    let doc = catalog();
    let gpus: Vec<_> = doc
        .machines
        .keys()
        .filter(|m| m.as_str().starts_with("GPU-"))
        .collect();
    assert_eq!(doc.machines_surge.keys().collect::<Vec<_>>(), gpus);
    for m in gpus {
        assert_eq!(
            doc.machines_surge[m],
            doc.machines[m] * d("1.5"),
            "{m}: 1.5 x the standard price, exactly"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The rate card, pattern by pattern.

#[test]
fn flat_per_image() {
    check(vec![
        row(
            "fal-ai/nano-banana",
            U::images(&[(1024, 1024)]),
            "1",
            "0.039",
            "0.039",
            39_000_000,
        ),
        row(
            "fal-ai/nano-banana",
            U::images(&[(1024, 1024); 4]),
            "4",
            "0.039",
            "0.156",
            156_000_000,
        ),
        row(
            "fal-ai/flux-pro/kontext",
            U::images(&[(1024, 1024)]),
            "1",
            "0.04",
            "0.04",
            40_000_000,
        ),
        row(
            "fal-ai/flux-pro/kontext/max",
            U::images(&[(1024, 1024)]),
            "1",
            "0.08",
            "0.08",
            80_000_000,
        ),
        row(
            "fal-ai/qwen-image-2/text-to-image",
            U::images(&[(1328, 1328)]),
            "1",
            "0.035",
            "0.035",
            35_000_000,
        ),
        row(
            "xai/grok-imagine-image",
            U::images(&[(1024, 768); 2]),
            "2",
            "0.02",
            "0.04",
            40_000_000,
        ),
        row(
            "fal-ai/bytedance/seedream/v4/edit",
            U::images(&[(2048, 2048)]),
            "1",
            "0.03",
            "0.03",
            30_000_000,
        ),
    ]);
}

#[test]
fn megapixels_round_up_per_image_with_a_minimum_of_one() {
    check(vec![
        // fal's own examples: 1920x1080 = 2 MP, 1024x1024 = 1 MP, 512x512 = 1 MP.
        row(
            "fal-ai/flux/dev",
            U::images(&[(1920, 1080)]),
            "2",
            "0.025",
            "0.05",
            50_000_000,
        ),
        row(
            "fal-ai/flux/dev",
            U::images(&[(1024, 1024)]),
            "1",
            "0.025",
            "0.025",
            25_000_000,
        ),
        row(
            "fal-ai/flux/dev",
            U::images(&[(512, 512)]),
            "1",
            "0.025",
            "0.025",
            25_000_000,
        ),
        // Rounded per image, then summed: 1 + 2 + 1.
        row(
            "fal-ai/flux/dev",
            U::images(&[(1024, 1024), (1920, 1080), (512, 512)]),
            "4",
            "0.025",
            "0.1",
            100_000_000,
        ),
        row(
            "fal-ai/flux/schnell",
            U::images(&[(1024, 1024)]),
            "1",
            "0.003",
            "0.003",
            3_000_000,
        ),
        row(
            "fal-ai/flux/schnell",
            U::images(&[(1920, 1080); 4]),
            "8",
            "0.003",
            "0.024",
            24_000_000,
        ),
        // Input images are not counted unless the price says so.
        row(
            "fal-ai/flux/dev/image-to-image",
            U::images(&[(1024, 1024)]).inputs(&[(1920, 1080)]),
            "1",
            "0.03",
            "0.03",
            30_000_000,
        ),
        // 1440x1440 = 2,073,600 pixels = 1.98 MP -> 2.
        row(
            "fal-ai/flux-pro/v1.1",
            U::images(&[(1440, 1440)]),
            "2",
            "0.04",
            "0.08",
            80_000_000,
        ),
    ]);
}

#[test]
fn first_megapixel_and_each_extra_counting_input_and_output() {
    check(vec![
        // 1 MP input + 2 MP output = 3 MP = 0.03 + 2 x 0.015.
        row(
            "fal-ai/flux-2-pro",
            U::images(&[(1920, 1080)]).inputs(&[(1024, 1024)]),
            "3",
            "0.02",
            "0.06",
            60_000_000,
        ),
        row(
            "fal-ai/flux-2-pro",
            U::images(&[(1024, 1024)]),
            "1",
            "0.03",
            "0.03",
            30_000_000,
        ),
        // 2 MP = 0.07 + 0.03.
        row(
            "fal-ai/flux-2-max",
            U::images(&[(1920, 1080)]),
            "2",
            "0.05",
            "0.1",
            100_000_000,
        ),
    ]);
}

#[test]
fn base_block_and_each_extra_second() {
    check(vec![
        // 1.40 covers 5 s; 7 s = 1.40 + 2 x 0.28.
        row(
            "fal-ai/kling-video/v2.1/master/text-to-video",
            U::seconds("7"),
            "7",
            "0.28",
            "1.96",
            1_960_000_000,
        ),
        // Shorter than the block still costs the block.
        row(
            "fal-ai/kling-video/v2.1/master/text-to-video",
            U::seconds("3"),
            "3",
            "0.466666666667",
            "1.4",
            1_400_000_000,
        ),
        row(
            "fal-ai/kling-video/v2.1/master/text-to-video",
            U::seconds("5"),
            "5",
            "0.28",
            "1.4",
            1_400_000_000,
        ),
        row(
            "fal-ai/kling-video/v2.1/master/text-to-video",
            U::seconds("10"),
            "10",
            "0.28",
            "2.8",
            2_800_000_000,
        ),
    ]);
}

#[test]
fn per_second_and_minimum_billable_seconds() {
    check(vec![
        row(
            "fal-ai/kling-video/o1/image-to-video",
            U::seconds("5"),
            "5",
            "0.112",
            "0.56",
            560_000_000,
        ),
        row(
            "fal-ai/minimax/hailuo-02/pro/text-to-video",
            U::seconds("6"),
            "6",
            "0.08",
            "0.48",
            480_000_000,
        ),
        // Pikaframes bills at least 5 seconds.
        row(
            "fal-ai/pika/v2.2/pikaframes",
            U::seconds("3"),
            "5",
            "0.04",
            "0.2",
            200_000_000,
        ),
        row(
            "fal-ai/pika/v2.2/pikaframes",
            U::seconds("8"),
            "8",
            "0.04",
            "0.32",
            320_000_000,
        ),
    ]);
}

#[test]
fn rate_by_output_attributes() {
    let veo = "fal-ai/veo3.1/image-to-video";
    let ltx = "fal-ai/ltx-2.3/image-to-video";
    check(vec![
        row(veo, U::seconds("8"), "8", "0.2", "1.6", 1_600_000_000),
        row(
            veo,
            U::seconds("8").flag("audio"),
            "8",
            "0.4",
            "3.2",
            3_200_000_000,
        ),
        row(
            veo,
            U::seconds("8").attr("resolution", "4k"),
            "8",
            "0.4",
            "3.2",
            3_200_000_000,
        ),
        row(
            veo,
            U::seconds("8").attr("resolution", "4k").flag("audio"),
            "8",
            "0.6",
            "4.8",
            4_800_000_000,
        ),
        // Attribute strings match case-insensitively.
        row(
            veo,
            U::seconds("4").attr("resolution", "4K").flag("audio"),
            "4",
            "0.6",
            "2.4",
            2_400_000_000,
        ),
        row(
            ltx,
            U::seconds("6").attr("resolution", "1080p"),
            "6",
            "0.08",
            "0.48",
            480_000_000,
        ),
        row(
            ltx,
            U::seconds("6").attr("resolution", "1440p"),
            "6",
            "0.16",
            "0.96",
            960_000_000,
        ),
        row(
            ltx,
            U::seconds("10").attr("resolution", "2160p"),
            "10",
            "0.32",
            "3.2",
            3_200_000_000,
        ),
        // No attribute: the default rate.
        row(ltx, U::seconds("6"), "6", "0.08", "0.48", 480_000_000),
    ]);
}

#[test]
fn per_video_by_resolution_with_an_extra_frames_multiplier() {
    let wan = "fal-ai/wan-flf2v";
    check(vec![
        row(
            wan,
            U::video().attr("resolution", "480p").frames(81),
            "1",
            "0.2",
            "0.2",
            200_000_000,
        ),
        row(
            wan,
            U::video().attr("resolution", "720p").frames(81),
            "1",
            "0.4",
            "0.4",
            400_000_000,
        ),
        // More than the default 81 frames: x1.25.
        row(
            wan,
            U::video().attr("resolution", "720p").frames(97),
            "1",
            "0.5",
            "0.5",
            500_000_000,
        ),
        row(
            wan,
            U::video().attr("resolution", "480p").frames(97),
            "1",
            "0.25",
            "0.25",
            250_000_000,
        ),
    ]);
}

#[test]
fn multiplier_by_attribute_and_add_ons() {
    let nb2 = "fal-ai/nano-banana-2";
    let pro = "fal-ai/nano-banana-pro";
    check(vec![
        row(
            nb2,
            U::images(&[(1024, 1024)]),
            "1",
            "0.08",
            "0.08",
            80_000_000,
        ),
        row(
            nb2,
            U::images(&[(4096, 4096)]).attr("resolution", "4K"),
            "1",
            "0.16",
            "0.16",
            160_000_000,
        ),
        row(
            nb2,
            U::images(&[(2048, 2048); 2]).attr("resolution", "2K"),
            "2",
            "0.12",
            "0.24",
            240_000_000,
        ),
        row(
            nb2,
            U::images(&[(512, 512)]).attr("resolution", "0.5K"),
            "1",
            "0.06",
            "0.06",
            60_000_000,
        ),
        // Add-ons are per request: web search +0.015, high thinking +0.002.
        row(
            nb2,
            U::images(&[(1024, 1024)])
                .flag("web_search")
                .attr("thinking", "high"),
            "1",
            "0.097",
            "0.097",
            97_000_000,
        ),
        row(
            nb2,
            U::images(&[(1024, 1024)]).attr("thinking", "low"),
            "1",
            "0.08",
            "0.08",
            80_000_000,
        ),
        // 4K doubles the image price; the add-on is not doubled: 0.15 x 2 + 0.015.
        row(
            pro,
            U::images(&[(4096, 4096)])
                .attr("resolution", "4K")
                .flag("web_search"),
            "1",
            "0.315",
            "0.315",
            315_000_000,
        ),
        row(
            pro,
            U::images(&[(2048, 2048)]).attr("resolution", "2K"),
            "1",
            "0.15",
            "0.15",
            150_000_000,
        ),
    ]);
}

#[test]
fn tokens_by_component_rounded_up_to_a_ten_thousandth() {
    let doc = catalog();
    let mix = Tokens {
        input: 1234,
        image_output: 4160,
        ..Tokens::default()
    };
    // Exactly (1234 x 5.00 + 4160 x 30.00) / 1M = 0.13097 USD: not a multiple of 0.0001.
    let exact = (Decimal::from(1234) * d("5.00") + Decimal::from(4160) * d("30.00"))
        / Decimal::from(1_000_000);
    assert_eq!(exact, d("0.13097"));
    check(vec![
        row(
            "openai/gpt-image-2",
            U::tokens(mix),
            "5394",
            "0.000024286244",
            "0.131",
            131_000_000,
        ),
        // Every component: 1000 x 5 + 2000 x 1.25 + 300 x 10 + 500 x 8 + 400 x 2 + 1000 x 30
        // = 45,300 / 1M = 0.0453 exactly: no rounding needed.
        row(
            "openai/gpt-image-2",
            U::tokens(Tokens {
                input: 1000,
                cached_input: 2000,
                output: 300,
                image_input: 500,
                image_cached_input: 400,
                image_output: 1000,
            }),
            "5200",
            "0.000008711538",
            "0.0453",
            45_300_000,
        ),
        // One token still costs a whole ten-thousandth.
        row(
            "openai/gpt-image-2",
            U::tokens(Tokens {
                output: 1,
                ..Tokens::default()
            }),
            "1",
            "0.0001",
            "0.0001",
            100_000,
        ),
    ]);
    // The headline (and hold) rate is the image output rate.
    let gpt = entry(&doc, "openai/gpt-image-2");
    assert_eq!(gpt.rule.headline_unit_price(None), Some(d("30.00")));
    assert_eq!(gpt.rule.unit_label(), "1M tokens");
    assert_eq!(
        gpt.rule.estimate_units(gpt.def.hold_units, None).unwrap(),
        d("0.3")
    );
}

#[test]
fn blocks_characters_input_frames_and_requests() {
    check(vec![
        // 0.50 per started 5 seconds.
        row(
            "fal-ai/luma-dream-machine/ray-2/image-to-video",
            U::seconds("9"),
            "2",
            "0.5",
            "1",
            1_000_000_000,
        ),
        row(
            "fal-ai/luma-dream-machine/ray-2/image-to-video",
            U::seconds("5"),
            "1",
            "0.5",
            "0.5",
            500_000_000,
        ),
        row(
            "fal-ai/luma-dream-machine/ray-2/image-to-video",
            U::seconds("5.04"),
            "2",
            "0.5",
            "1",
            1_000_000_000,
        ),
        // Per 1,000 characters, fractions exact.
        row(
            "fal-ai/elevenlabs/tts/eleven-v3",
            U::characters(1500),
            "1.5",
            "0.1",
            "0.15",
            150_000_000,
        ),
        row(
            "fal-ai/elevenlabs/tts/eleven-v3",
            U::characters(1),
            "0.001",
            "0.1",
            "0.0001",
            100_000,
        ),
        row(
            "fal-ai/elevenlabs/tts/turbo-v2.5",
            U::characters(1500),
            "1.5",
            "0.05",
            "0.075",
            75_000_000,
        ),
        // Per started 16 input frames: 33 frames = 3 blocks.
        row(
            "fal-ai/sam-3/video",
            U::input_frames(33),
            "3",
            "0.005",
            "0.015",
            15_000_000,
        ),
        row(
            "fal-ai/sam-3/video",
            U::input_frames(16),
            "1",
            "0.005",
            "0.005",
            5_000_000,
        ),
        row(
            "fal-ai/bria/background/remove",
            U::request(),
            "1",
            "0.018",
            "0.018",
            18_000_000,
        ),
    ]);
}

#[test]
fn compute_and_gpu_seconds() {
    check(vec![
        // whisper: compute seconds at its own rate.
        row(
            "fal-ai/whisper",
            U::inference("42.5", 1),
            "42.5",
            "0.00111",
            "0.047175",
            47_175_000,
        ),
        // GPU-second fallback: 10 s x 2 GPUs on GPU-H100 (1.89 USD/h = 0.000525 USD/s).
        row(
            "fal-ai/stable-audio",
            U::inference("10", 2),
            "20",
            "0.000525",
            "0.0105",
            10_500_000,
        ),
        row(
            "fal-ai/triposr",
            U::inference("7", 1),
            "7",
            "0.000275",
            "0.001925",
            1_925_000,
        ),
        // No GPU count reported counts as one.
        row(
            "fal-ai/esrgan",
            U::inference("3", 0),
            "3",
            "0.0002",
            "0.0006",
            600_000,
        ),
        // CPU sizes bill the same way.
        row(
            "fal-ai/ffmpeg-api/compose",
            U::inference("30", 1),
            "30",
            "0.00004",
            "0.0012",
            1_200_000,
        ),
    ]);
}

#[test]
fn reported_billable_units_win_over_the_output() {
    check(vec![
        // The runner says 1.5 MP although the image measures 2 MP.
        row(
            "fal-ai/flux/dev",
            U::images(&[(1920, 1080)]).billable("1.5"),
            "1.5",
            "0.025",
            "0.0375",
            37_500_000,
        ),
        // Attributes still select the rate: 4 s with audio at 0.40.
        row(
            "fal-ai/veo3.1/image-to-video",
            U::seconds("8").flag("audio").billable("4"),
            "4",
            "0.4",
            "1.6",
            1_600_000_000,
        ),
        // A minimum still applies to a reported quantity.
        row(
            "fal-ai/pika/v2.2/pikaframes",
            U::seconds("8").billable("2"),
            "5",
            "0.04",
            "0.2",
            200_000_000,
        ),
    ]);
}

// ---------------------------------------------------------------------------------------------
// Account adjustments on top of the rate card.

#[test]
fn a_percent_discount_and_a_volume_tier() {
    let doc = catalog();
    let discounts = Discounts {
        percent_discount: Some(d("10")),
        volume_tiers: vec![
            VolumeTier {
                from_usd: d("1000"),
                percent: d("15"),
            },
            VolumeTier {
                from_usd: d("5000"),
                percent: d("20"),
            },
        ],
    };
    discounts.validate().unwrap();
    let usd = |s: &str| Nanos::parse_usd(s).unwrap();

    // Early in the month: the flat 10%. Kling 7 s = 1.96 USD.
    let kling = rate(
        &doc,
        "fal-ai/kling-video/v2.1/master/text-to-video",
        &U::seconds("7"),
    );
    let pct = discounts.percent_for(usd("250"));
    assert_eq!(pct, Some(d("10")));
    let c = Charge::new(&kling, pct).unwrap();
    assert_eq!(c.percent_discount, Some(d("10")));
    assert_eq!(c.unit_price, d("0.28"));
    assert_eq!(c.subtotal_nanos, Nanos(1_960_000_000));
    assert_eq!(c.discount_nanos, Nanos(196_000_000));
    assert_eq!(c.total_nanos, Nanos(1_764_000_000));

    // 1,200 USD billed this month reaches the 15% tier. Veo 8 s 4k with audio = 4.80 USD.
    let veo = rate(
        &doc,
        "fal-ai/veo3.1/image-to-video",
        &U::seconds("8").attr("resolution", "4k").flag("audio"),
    );
    let pct = discounts.percent_for(usd("1200"));
    assert_eq!(pct, Some(d("15")));
    let c = Charge::new(&veo, pct).unwrap();
    assert_eq!(c.subtotal_nanos, Nanos(4_800_000_000));
    assert_eq!(c.discount_nanos, Nanos(720_000_000));
    assert_eq!(c.total_nanos, Nanos(4_080_000_000));

    // Sub-nano amounts: one second on a GPU-B200 (0.001736111112 USD) at 15% off. The total is
    // the exact 0.0014756944452 rounded once; the discount is the difference, so they add up.
    let b200 = PriceRule {
        unit_price: None,
        ..entry(&doc, "fal-ai/stable-audio").rule.clone()
    };
    let mut usage = U::inference("1", 1).0;
    usage.machine_price_per_second = Some(doc.machines[&MachineType::parse("GPU-B200").unwrap()]);
    let rated = b200.rate(&usage).unwrap();
    assert_eq!(rated.subtotal, d("0.001736111112"));
    let c = Charge::new(&rated, pct).unwrap();
    assert_eq!(c.subtotal_nanos, Nanos(1_736_111));
    assert_eq!(c.total_nanos, Nanos(1_475_694));
    assert_eq!(c.discount_nanos, Nanos(260_417));
    assert_eq!(
        c.subtotal_nanos,
        c.discount_nanos.checked_add(c.total_nanos).unwrap()
    );

    // At 5,000 USD the 20% tier; with no discounts at all, nothing is taken off.
    assert_eq!(discounts.percent_for(usd("5000")), Some(d("20")));
    assert_eq!(Discounts::default().percent_for(usd("5000")), None);
    let c = Charge::new(&kling, Discounts::default().percent_for(usd("5000"))).unwrap();
    assert_eq!(
        (c.discount_nanos, c.total_nanos),
        (Nanos::ZERO, Nanos(1_960_000_000))
    );
}

#[test]
fn an_override_price_changes_the_cost() {
    let doc = catalog();
    let kling = "fal-ai/kling-video/v2.1/master/text-to-video";
    // An enterprise price for the same endpoint: 1.20 for the first 5 s, then 0.24 per second.
    let negotiated: PriceRule = toml::from_str(
        r#"
        unit = "video_second"
        unit_price = "0.24"
        base = { units = "5", price = "1.20" }
        "#,
    )
    .unwrap();
    assert_eq!(
        negotiated.base,
        Some(BaseBlock {
            units: d("5"),
            price: d("1.20")
        })
    );
    let public = rate(&doc, kling, &U::seconds("7"));
    let private = rate_with(&doc, kling, &negotiated, &U::seconds("7"));
    assert_eq!(public.subtotal, d("1.96"));
    assert_eq!(private.subtotal, d("1.68"));
    assert_eq!(
        Charge::new(&private, None).unwrap().total_nanos,
        Nanos(1_680_000_000)
    );

    // A GPU-second endpoint with its own negotiated per-second price: the rule's unit_price
    // wins over the machine table (which the engine always passes).
    let audio = "fal-ai/stable-audio";
    let negotiated = PriceRule {
        unit_price: Some(d("0.0004")),
        ..entry(&doc, audio).rule.clone()
    };
    let public = rate(&doc, audio, &U::inference("10", 2));
    let private = rate_with(&doc, audio, &negotiated, &U::inference("10", 2));
    assert_eq!(public.subtotal, d("0.0105"));
    assert_eq!(private.subtotal, d("0.008"));
    assert_eq!(private.unit_price, d("0.0004"));
}
