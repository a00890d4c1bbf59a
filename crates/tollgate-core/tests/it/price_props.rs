//! Properties of rating and charging over every endpoint of `catalog/sample.toml`:
//! more usage never costs less, and a charge is the exact cost rounded once to nano-USD, with
//! subtotal = discount + total exactly.

use proptest::prelude::*;
use rust_decimal::Decimal;
use std::sync::OnceLock;
use tollgate_core::catalog::document::{parse, CatalogDocument};
use tollgate_core::price::{AttrValue, Dims, Output, Rated, Tokens, Usage};
use tollgate_core::pricing::Charge;

const SAMPLE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../catalog/sample.toml"
));

fn catalog() -> &'static CatalogDocument {
    static DOC: OnceLock<CatalogDocument> = OnceLock::new();
    DOC.get_or_init(|| parse(SAMPLE).unwrap_or_else(|e| panic!("catalog/sample.toml: {e}")))
}

/// Everything a request can report, as plain numbers.
#[derive(Clone, Debug)]
struct Amounts {
    images: Vec<(u64, u64)>,
    inputs: Vec<(u64, u64)>,
    videos: u64,
    /// Hundredths of a second.
    centiseconds: u64,
    characters: u64,
    frames: u64,
    input_frames: u64,
    tokens: [u64; 6],
    gpus: u32,
}

/// As much or more of everything: each image no smaller, more images, more of every count.
#[derive(Clone, Debug)]
struct More {
    grow: Vec<(u64, u64)>,
    extra_images: Vec<(u64, u64)>,
    extra_inputs: Vec<(u64, u64)>,
    videos: u64,
    centiseconds: u64,
    characters: u64,
    frames: u64,
    input_frames: u64,
    tokens: [u64; 6],
    gpus: u32,
}

fn side() -> impl Strategy<Value = (u64, u64)> {
    (1u64..=4096, 1u64..=4096)
}

fn amounts() -> impl Strategy<Value = Amounts> {
    (
        prop::collection::vec(side(), 0..4),
        prop::collection::vec(side(), 0..3),
        0u64..4,
        0u64..=60_000,
        0u64..=100_000,
        0u64..=400,
        0u64..=10_000,
        prop::array::uniform6(0u64..=200_000),
        0u32..=8,
    )
        .prop_map(
            |(
                images,
                inputs,
                videos,
                centiseconds,
                characters,
                frames,
                input_frames,
                tokens,
                gpus,
            )| {
                Amounts {
                    images,
                    inputs,
                    videos,
                    centiseconds,
                    characters,
                    frames,
                    input_frames,
                    tokens,
                    gpus,
                }
            },
        )
}

fn more() -> impl Strategy<Value = More> {
    (
        prop::collection::vec((0u64..=2048, 0u64..=2048), 4),
        prop::collection::vec(side(), 0..3),
        prop::collection::vec(side(), 0..2),
        0u64..3,
        0u64..=3_000,
        0u64..=5_000,
        0u64..=100,
        0u64..=100,
        prop::array::uniform6(0u64..=50_000),
        0u32..=4,
    )
        .prop_map(
            |(
                grow,
                extra_images,
                extra_inputs,
                videos,
                centiseconds,
                characters,
                frames,
                input_frames,
                tokens,
                gpus,
            )| More {
                grow,
                extra_images,
                extra_inputs,
                videos,
                centiseconds,
                characters,
                frames,
                input_frames,
                tokens,
                gpus,
            },
        )
}

fn attributes() -> impl Strategy<Value = Vec<(String, AttrValue)>> {
    let text = |key: &'static str, values: &'static [&'static str]| {
        prop::option::of(prop::sample::select(values))
            .prop_map(move |v| v.map(|v| (key.to_string(), AttrValue::Text(v.to_string()))))
    };
    let flag = |key: &'static str| {
        prop::option::of(any::<bool>())
            .prop_map(move |v| v.map(|b| (key.to_string(), AttrValue::Bool(b))))
    };
    (
        text(
            "resolution",
            &[
                "0.5K", "1K", "2K", "4K", "4k", "480p", "720p", "1080p", "1440p", "2160p",
            ],
        ),
        text("thinking", &["low", "high"]),
        flag("audio"),
        flag("web_search"),
    )
        .prop_map(|(a, b, c, d)| [a, b, c, d].into_iter().flatten().collect())
}

fn dims(list: &[(u64, u64)]) -> Vec<Dims> {
    list.iter()
        .map(|&(width, height)| Dims { width, height })
        .collect()
}

fn usage(a: &Amounts, attrs: &[(String, AttrValue)]) -> Usage {
    let t = a.tokens;
    let seconds = Decimal::new(a.centiseconds as i64, 2);
    Usage {
        output: Output {
            images: dims(&a.images),
            input_images: dims(&a.inputs),
            videos: Some(a.videos),
            video_seconds: Some(seconds),
            audio_seconds: Some(seconds),
            characters: Some(a.characters),
            frames: Some(a.frames),
            input_frames: Some(a.input_frames),
            tokens: Some(Tokens {
                input: t[0],
                cached_input: t[1],
                output: t[2],
                image_input: t[3],
                image_cached_input: t[4],
                image_output: t[5],
            }),
            attributes: attrs.iter().cloned().collect(),
        },
        billable_units: None,
        inference_seconds: seconds,
        num_gpus: a.gpus,
        machine_price_per_second: None,
    }
}

fn grown(a: &Amounts, m: &More) -> Amounts {
    let mut images: Vec<(u64, u64)> = a
        .images
        .iter()
        .zip(&m.grow)
        .map(|(&(w, h), &(dw, dh))| (w + dw, h + dh))
        .collect();
    images.extend(&m.extra_images);
    let mut inputs = a.inputs.clone();
    inputs.extend(&m.extra_inputs);
    let mut tokens = a.tokens;
    for (t, dt) in tokens.iter_mut().zip(m.tokens) {
        *t += dt;
    }
    Amounts {
        images,
        inputs,
        videos: a.videos + m.videos,
        centiseconds: a.centiseconds + m.centiseconds,
        characters: a.characters + m.characters,
        frames: a.frames + m.frames,
        input_frames: a.input_frames + m.input_frames,
        tokens,
        gpus: a.gpus + m.gpus,
    }
}

/// The exact total after `percent`, in nano-USD (not rounded).
fn exact_total_nanos(subtotal: Decimal, percent: Option<Decimal>) -> Decimal {
    let keep = match percent {
        Some(p) => (Decimal::ONE_HUNDRED - p) / Decimal::ONE_HUNDRED,
        None => Decimal::ONE,
    };
    subtotal * keep * Decimal::from(1_000_000_000)
}

fn check_charge(rated: &Rated, percent: Option<Decimal>) -> Result<(), TestCaseError> {
    let c = Charge::new(rated, percent).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let half = Decimal::new(5, 1);
    let total_error = Decimal::from(c.total_nanos.0) - exact_total_nanos(rated.subtotal, percent);
    prop_assert!(
        total_error.abs() <= half,
        "total off by {total_error} nano-USD"
    );
    let subtotal_error =
        Decimal::from(c.subtotal_nanos.0) - exact_total_nanos(rated.subtotal, None);
    prop_assert!(
        subtotal_error.abs() <= half,
        "subtotal off by {subtotal_error} nano-USD"
    );
    prop_assert_eq!(c.subtotal_nanos.0, c.discount_nanos.0 + c.total_nanos.0);
    prop_assert!(c.discount_nanos.0 >= 0 && c.total_nanos.0 >= 0);
    Ok(())
}

fn percent() -> impl Strategy<Value = Option<Decimal>> {
    prop::option::of((0i64..=10_000).prop_map(|bp| Decimal::new(bp, 2)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// For every endpoint in the sample: more seconds, images, pixels, characters, frames,
    /// tokens or GPUs never cost less, and each charge rounds correctly.
    #[test]
    fn more_usage_never_costs_less(
        a in amounts(),
        m in more(),
        attrs in attributes(),
        pct in percent(),
    ) {
        let doc = catalog();
        let b = grown(&a, &m);
        for e in &doc.endpoints {
            let machine = doc.machine_price(e);
            let mut small = usage(&a, &attrs);
            let mut large = usage(&b, &attrs);
            small.machine_price_per_second = machine;
            large.machine_price_per_second = machine;
            let rs = e.rule.rate(&small).map_err(|err| TestCaseError::fail(format!("{}: {err}", e.def.id)))?;
            let rl = e.rule.rate(&large).map_err(|err| TestCaseError::fail(format!("{}: {err}", e.def.id)))?;
            prop_assert!(rs.quantity <= rl.quantity, "{}: quantity {} > {}", e.def.id, rs.quantity, rl.quantity);
            prop_assert!(rs.subtotal <= rl.subtotal, "{}: {} costs more than {}", e.def.id, rs.subtotal, rl.subtotal);
            prop_assert!(rs.subtotal >= Decimal::ZERO);
            let cs = Charge::new(&rs, pct).unwrap();
            let cl = Charge::new(&rl, pct).unwrap();
            prop_assert!(cs.total_nanos <= cl.total_nanos, "{}", e.def.id);
            check_charge(&rs, pct)?;
            check_charge(&rl, pct)?;
        }
    }

    /// More reported billable units never cost less either.
    #[test]
    fn more_billable_units_never_cost_less(
        units in 0i64..=10_000_000,
        extra in 0i64..=1_000_000,
        scale in 0u32..=4,
        attrs in attributes(),
    ) {
        let doc = catalog();
        let small_units = Decimal::new(units, scale);
        let large_units = Decimal::new(units + extra, scale);
        for e in doc.endpoints.iter().filter(|e| e.rule.tokens.is_none()) {
            let mut u = usage(&grown(&amounts_zero(), &more_zero()), &attrs);
            u.machine_price_per_second = doc.machine_price(e);
            u.billable_units = Some(small_units);
            let rs = e.rule.rate(&u).unwrap();
            u.billable_units = Some(large_units);
            let rl = e.rule.rate(&u).unwrap();
            prop_assert!(rs.subtotal <= rl.subtotal, "{}", e.def.id);
        }
    }

    /// Any exact subtotal and any percent: the total is within half a nano-USD of the exact
    /// discounted cost, and the three amounts add up.
    #[test]
    fn charges_round_once_and_add_up(
        whole_usd in 0i64..=1_000_000_000,
        fraction in 0i64..1_000_000_000_000,
        places in 0u32..=12,
        pct in percent(),
    ) {
        // Up to a billion USD (the nano-USD range ends near 9.2 billion), with 0 to 12 places.
        let subtotal = (Decimal::from(whole_usd) + Decimal::new(fraction, 12)).trunc_with_scale(places);
        let rated = Rated { quantity: Decimal::ONE, unit_price: subtotal, subtotal, blended: false };
        check_charge(&rated, pct)?;
    }
}

fn amounts_zero() -> Amounts {
    Amounts {
        images: vec![(1024, 1024)],
        inputs: vec![],
        videos: 1,
        centiseconds: 0,
        characters: 0,
        frames: 0,
        input_frames: 0,
        tokens: [0; 6],
        gpus: 1,
    }
}

fn more_zero() -> More {
    More {
        grow: vec![(0, 0); 4],
        extra_images: vec![],
        extra_inputs: vec![],
        videos: 0,
        centiseconds: 0,
        characters: 0,
        frames: 0,
        input_frames: 0,
        tokens: [0; 6],
        gpus: 0,
    }
}
