//! Rendering money: USD as a JSON number (as fal does) beside the exact integer nano-USD.
//! The conversion to a JSON number is the only place a binary float appears, at the very
//! end of rendering; every amount that is billed or held also has its exact `*_nano_usd`.

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::{Serialize, Serializer};
use tollgate_core::Nanos;

/// An exact decimal (a USD amount, a quantity, a percent) rendered as a JSON number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Number(pub Decimal);

impl Number {
    /// The USD value of an amount of nano-USD.
    pub fn usd(n: Nanos) -> Number {
        Number(n.to_usd())
    }
}

impl Serialize for Number {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Shortest round-trip formatting reproduces any decimal of up to 15 significant
        // digits exactly, which covers every displayed price and amount below 1M USD at
        // nano-USD precision.
        s.serialize_f64(self.0.to_f64().unwrap_or_default())
    }
}
