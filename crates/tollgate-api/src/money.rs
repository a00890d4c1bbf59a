//! Rendering money: USD as a JSON number (as fal does) beside the exact integer nano-USD.
//! The conversion to a JSON number is the only place a binary float appears, at the very
//! end of rendering; every amount that is billed or held also has its exact `*_nano_usd`.

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::{Serialize, Serializer};
use tollgate_core::Nanos;

/// A USD amount rendered as a JSON number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usd(pub Decimal);

/// Any exact decimal (a quantity, a percent) rendered as a JSON number.
pub type Num = Usd;

impl Usd {
    pub fn nanos(n: Nanos) -> Usd {
        Usd(n.to_usd())
    }
}

impl Serialize for Usd {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Shortest round-trip formatting reproduces any decimal of up to 15 significant
        // digits exactly, which covers every displayed price and amount below 1M USD at
        // nano-USD precision.
        s.serialize_f64(self.0.to_f64().unwrap_or_default())
    }
}

/// Optional percent rendered as a number or `null`.
pub fn opt_usd(d: Option<Decimal>) -> Option<Usd> {
    d.map(Usd)
}
