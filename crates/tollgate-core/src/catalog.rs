//! The catalog: endpoints, their versioned prices, machine prices and the concurrency table.
//!
//! [`Catalog`] is the in-memory snapshot that rating reads. Prices are never edited in place:
//! each change is a new [`PriceVersion`] effective from a time, and a request is billed with the
//! version in force when it was submitted. Account-specific (enterprise) prices are versions
//! scoped to one account and win over the public price. The text format operators write lives
//! in [`document`].

pub mod document;
pub mod plan;

use crate::concurrency::ConcurrencyTable;
use crate::ids::{AccountId, EndpointId, MachineType};
use crate::policy::FourXxPolicy;
use crate::price::{MachinePrices, PriceRule};
use crate::time::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Lifecycle state shown by the models API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointStatus {
    #[default]
    Active,
    Deprecated,
}

/// One model endpoint and how it is billed, apart from its (versioned) price.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointDef {
    pub id: EndpointId,
    pub display_name: String,
    pub category: String,
    pub description: String,
    pub status: EndpointStatus,
    /// A partner-API model: percent discounts do not apply.
    pub partner: bool,
    /// What a 4xx costs.
    pub four_xx: FourXxPolicy,
    /// The machine that serves it: prices `gpu_second` units and billed 4xx seconds.
    pub machine_type: Option<MachineType>,
    /// Billable units held at start when the runner does not say (`hold_units`).
    pub hold_units: Decimal,
    /// A started request not completed within this time expires unbilled.
    pub hold_timeout_s: u32,
    /// What a successful output that lacks what the price measures is billed.
    #[serde(default)]
    pub missing_units: MissingUnits,
    /// What a completion that arrives after the request's hold expired does.
    #[serde(default)]
    pub late_completion: LateCompletion,
    /// The model servers tollgate's gateway calls for this endpoint (API.md section 10); none:
    /// the endpoint is not served by the gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<Upstream>,
    /// What a gateway request cancelled while its model server runs it is billed.
    #[serde(default)]
    pub cancellation: Cancellation,
}

/// What a gateway request cancelled while running is billed (a queued one never is).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cancellation {
    /// Nothing: the hold is voided.
    #[default]
    Free,
    /// The seconds it ran, from its dispatch to the cancellation, x GPUs at its machine's
    /// price (as a 4xx under `four_xx = "inference_seconds"`, status 499).
    ComputeSeconds,
}

/// A model server of an endpoint, as the catalog's `[[endpoint.upstream]]` names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    /// The base URL: the request's path below the endpoint is appended to it.
    pub url: String,
    /// How many requests it takes at once.
    pub slots: u32,
    /// How long one call may take, in seconds.
    pub timeout_s: u32,
    /// What it runs on: compute seconds are billed at this machine's price (else the
    /// endpoint's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_type: Option<MachineType>,
}

/// What a successful completion is billed when its output lacks what the endpoint's price
/// measures (no `images` for a megapixel price, no `video_seconds` for a per-second video
/// price) and no `billable_units` are reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingUnits {
    /// Refused (422 `output_mismatch`): nothing is billed and the request stays in progress,
    /// so the gateway can send the completion again with the output.
    #[default]
    Refuse,
    /// The inference seconds x GPUs at the endpoint's machine price (needs `machine_type`).
    ComputeSeconds,
    /// One billable unit of the price (fal's default for apps that report nothing).
    OneUnit,
}

impl MissingUnits {
    pub fn as_str(self) -> &'static str {
        match self {
            MissingUnits::Refuse => "refuse",
            MissingUnits::ComputeSeconds => "compute_seconds",
            MissingUnits::OneUnit => "one_unit",
        }
    }
}

/// What a completion that arrives after the request's hold expired does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LateCompletion {
    /// Billed as it would have been on time (the work was done), without a hold and without
    /// taking a concurrency slot; the answer says `late: true`.
    #[default]
    Bill,
    /// Refused (409 `request_expired`): an expired request stays expired and unbilled.
    Refuse,
}

impl LateCompletion {
    pub fn as_str(self) -> &'static str {
        match self {
            LateCompletion::Bill => "bill",
            LateCompletion::Refuse => "refuse",
        }
    }
}

/// A price in force from `effective_from` until the next version of the same scope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceVersion {
    /// Store-assigned, increasing; recorded on every line item.
    pub id: i64,
    pub endpoint: EndpointId,
    /// `Some` for an account's negotiated price.
    pub account: Option<AccountId>,
    pub effective_from: Timestamp,
    pub rule: PriceRule,
}

/// The snapshot rating reads.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub endpoints: BTreeMap<EndpointId, EndpointDef>,
    /// Per (endpoint, account scope), sorted by `effective_from` then `id`.
    pub versions: BTreeMap<(EndpointId, Option<AccountId>), Vec<PriceVersion>>,
    pub machines: MachinePrices,
    /// Per-second prices of surge serverless usage (`[machines_surge]`, the same machine
    /// names as `machines`).
    pub machines_surge: MachinePrices,
    pub concurrency: ConcurrencyTable,
}

impl Catalog {
    /// Adds a version, keeping each scope's list ordered.
    pub fn insert_version(&mut self, v: PriceVersion) {
        let list = self
            .versions
            .entry((v.endpoint.clone(), v.account.clone()))
            .or_default();
        list.push(v);
        list.sort_by_key(|v| (v.effective_from, v.id));
    }

    fn latest_at(list: Option<&Vec<PriceVersion>>, at: Timestamp) -> Option<&PriceVersion> {
        list?.iter().rev().find(|v| v.effective_from <= at)
    }

    /// The price in force for `account` at `at`: the account's own version if it has one in
    /// force, else the public one.
    pub fn price_at(
        &self,
        endpoint: &EndpointId,
        account: &AccountId,
        at: Timestamp,
    ) -> Option<&PriceVersion> {
        Self::latest_at(
            self.versions
                .get(&(endpoint.clone(), Some(account.clone()))),
            at,
        )
        .or_else(|| self.public_price_at(endpoint, at))
    }

    /// The public price of `endpoint` in force at `at` (before any account's own).
    pub fn public_price_at(&self, endpoint: &EndpointId, at: Timestamp) -> Option<&PriceVersion> {
        Self::latest_at(self.versions.get(&(endpoint.clone(), None)), at)
    }

    /// The latest version of one scope (an endpoint's public price, or an account's own).
    pub fn latest(
        &self,
        endpoint: &EndpointId,
        account: Option<&AccountId>,
    ) -> Option<&PriceVersion> {
        self.versions
            .get(&(endpoint.clone(), account.cloned()))
            .and_then(|v| v.last())
    }

    /// Whether a new version of a scope may take effect from `at`: never before the scope's
    /// latest version (versions are never back-dated, so what was billed stays what was in
    /// force). `Err` holds when that latest version takes effect.
    pub fn may_take_effect(
        &self,
        endpoint: &EndpointId,
        account: Option<&AccountId>,
        at: Timestamp,
    ) -> Result<(), Timestamp> {
        match self.latest(endpoint, account) {
            Some(v) if at < v.effective_from => Err(v.effective_from),
            _ => Ok(()),
        }
    }

    pub fn version(&self, id: i64) -> Option<&PriceVersion> {
        self.versions.values().flatten().find(|v| v.id == id)
    }

    pub fn machine_price(&self, machine: Option<&MachineType>) -> Option<Decimal> {
        machine.and_then(|m| self.machines.get(m)).copied()
    }
}
