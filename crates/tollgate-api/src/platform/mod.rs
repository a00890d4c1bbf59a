//! fal's Platform API (docs/reference/API.md section 3): the customer-facing read and
//! key-management paths, in the same shape as fal's published schemas
//! (docs/reference/fal-platform-openapi.json).

pub mod analytics;
pub mod keys;
pub mod models;
pub mod params;
pub mod timeframe;
pub mod usage;
