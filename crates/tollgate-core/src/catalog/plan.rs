//! What applying a catalog document changes, computed before anything is written: the current
//! catalog and a parsed document in, the change endpoint by endpoint out.
//! `PUT /v1/admin/catalog?dry_run=true` and the apply itself share it, so a preview says
//! exactly what the apply does (`tollgate catalog check`, offline, only parses and validates).
//!
//! An endpoint the catalog does not have is *added*; one it has is *changed* when its metadata
//! differs (named field by field) or its price differs from the endpoint's latest public price
//! version (a new version, effective from the document's `effective_from` or the time of the
//! apply); otherwise it is unchanged. Machine prices and surge prices (`[machines]`,
//! `[machines_surge]`) merge into the current ones and are listed when added or repriced. A
//! price whose headline rate moves by more than [`WARN_FACTOR`] in either direction (or whose
//! unit changes) is named in `warnings`, as is a machine or surge price that does: such a
//! change is more often a typo (a missing zero, a price per hour written per second) than a
//! decision.

use super::document::{CatalogDocument, CatalogError};
use super::{Catalog, EndpointDef};
use crate::ids::{EndpointId, MachineType};
use crate::price::{MachinePrices, PriceRule};
use crate::time::Timestamp;
use rust_decimal::Decimal;

/// A price or machine price that changes by more than this factor, up or down, is warned of.
pub const WARN_FACTOR: u32 = 3;

/// The change a document makes to the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogPlan {
    /// When the document's new price versions take effect.
    pub effective_from: Timestamp,
    /// Endpoints in the document.
    pub endpoints: usize,
    /// Added or changed endpoints, in document order.
    pub changes: Vec<EndpointChange>,
    /// Endpoints of the document that change nothing.
    pub unchanged: usize,
    /// Machine types added or repriced, by name.
    pub machines: Vec<MachineChange>,
    /// Surge prices (`[machines_surge]`) added or changed, by machine type.
    pub machines_surge: Vec<MachineChange>,
    /// The document replaces the concurrency table with a different one.
    pub concurrency_changed: bool,
    pub warnings: Vec<Warning>,
}

impl CatalogPlan {
    /// New price versions the apply creates.
    pub fn versions_created(&self) -> usize {
        self.changes.iter().filter(|c| c.price.is_some()).count()
    }

    /// Whether the document's new price for `endpoint` becomes a version.
    pub fn creates_version(&self, endpoint: &EndpointId) -> bool {
        self.changes
            .iter()
            .any(|c| &c.endpoint == endpoint && c.price.is_some())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointChange {
    pub endpoint: EndpointId,
    /// The line of its `[[endpoint]]` header.
    pub line: usize,
    /// Not in the catalog before.
    pub added: bool,
    /// Metadata fields that change (empty for an added endpoint).
    pub metadata_changed: Vec<&'static str>,
    /// `Some` when the price becomes a new version.
    pub price: Option<PriceChange>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriceChange {
    /// The latest public price (none for an added endpoint).
    pub from: Option<PriceRule>,
    pub to: PriceRule,
    /// The headline USD per unit before and after (the machine's for `gpu_second` prices
    /// without their own), as the pricing API shows it.
    pub from_unit_price: Option<Decimal>,
    pub to_unit_price: Option<Decimal>,
    pub effective_from: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineChange {
    pub machine_type: MachineType,
    /// `None`: a new machine type.
    pub from: Option<Decimal>,
    pub to: Decimal,
}

/// A change worth a second look; it does not stop the apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// `endpoint[3].price` or `machines.GPU-H100`.
    pub field: String,
    pub line: Option<usize>,
    pub message: String,
}

/// Whether a price moving from `from` to `to` changes by more than [`WARN_FACTOR`].
fn jumps(from: Decimal, to: Decimal) -> bool {
    let k = Decimal::from(WARN_FACTOR);
    match (from.is_zero(), to.is_zero()) {
        (true, true) => false,
        (true, false) | (false, true) => true,
        _ => to > from * k || from > to * k,
    }
}

fn metadata_changes(old: &EndpointDef, new: &EndpointDef) -> Vec<&'static str> {
    let mut v = Vec::new();
    let mut check = |name, differs: bool| {
        if differs {
            v.push(name);
        }
    };
    check("name", old.display_name != new.display_name);
    check("category", old.category != new.category);
    check("description", old.description != new.description);
    check("status", old.status != new.status);
    check("partner", old.partner != new.partner);
    check("four_xx", old.four_xx != new.four_xx);
    check("machine_type", old.machine_type != new.machine_type);
    check("hold_units", old.hold_units != new.hold_units);
    check("hold_timeout_s", old.hold_timeout_s != new.hold_timeout_s);
    check("missing_units", old.missing_units != new.missing_units);
    check(
        "late_completion",
        old.late_completion != new.late_completion,
    );
    check("upstream", old.upstreams != new.upstreams);
    check("cancellation", old.cancellation != new.cancellation);
    v
}

/// The machine prices of `table` (`machines` or `machines_surge`) that `doc` adds or changes
/// in `current` (its machines merge: the document's win, the others stay); a price that jumps
/// is warned of.
fn changed_machines(
    table: &str,
    kind: &str,
    current: &MachinePrices,
    doc: &MachinePrices,
    warnings: &mut Vec<Warning>,
) -> Vec<MachineChange> {
    let mut changes = Vec::new();
    for (m, to) in doc {
        let from = current.get(m).copied();
        if from == Some(*to) {
            continue;
        }
        if let Some(from) = from.filter(|f| jumps(*f, *to)) {
            warnings.push(Warning {
                field: format!("{table}.{m}"),
                line: None,
                message: format!(
                    "the {kind}price of machine type {m} changes from {from} to {to} USD per \
                     second, by more than {WARN_FACTOR}x"
                ),
            });
        }
        changes.push(MachineChange {
            machine_type: m.clone(),
            from,
            to: *to,
        });
    }
    changes
}

/// The change `doc` makes to `current` when applied at `now`. Refuses, as the apply does, a
/// new price that would take effect before its endpoint's latest version (versions are never
/// back-dated), naming the endpoint's line and `effective_from`.
pub fn plan(
    current: &Catalog,
    doc: &CatalogDocument,
    now: Timestamp,
) -> Result<CatalogPlan, CatalogError> {
    let at = doc.effective_from.unwrap_or(now);
    // Machine prices merge: the document's win, the others stay.
    let mut machines: MachinePrices = current.machines.clone();
    machines.extend(doc.machines.clone());
    let mut warnings = Vec::new();
    let machine_changes = changed_machines(
        "machines",
        "",
        &current.machines,
        &doc.machines,
        &mut warnings,
    );
    let surge_changes = changed_machines(
        "machines_surge",
        "surge ",
        &current.machines_surge,
        &doc.machines_surge,
        &mut warnings,
    );

    let mut changes = Vec::new();
    let mut unchanged = 0;
    for (i, entry) in doc.endpoints.iter().enumerate() {
        let id = &entry.def.id;
        let old_def = current.endpoints.get(id);
        let latest = current.latest(id, None);
        let price = match latest {
            Some(v) if v.rule == entry.rule => None,
            _ => {
                if current.may_take_effect(id, None, at).is_err() {
                    return Err(CatalogError {
                        line: Some(entry.line),
                        field: "effective_from".into(),
                        message: format!(
                            "the price of {id} already has a version effective from a later \
                             time; versions cannot be back-dated"
                        ),
                    });
                }
                let machine_of = |def: Option<&EndpointDef>, table: &MachinePrices| {
                    def.and_then(|d| d.machine_type.as_ref())
                        .and_then(|m| table.get(m))
                        .copied()
                };
                let from_unit_price = latest.and_then(|v| {
                    v.rule
                        .headline_unit_price(machine_of(old_def, &current.machines))
                });
                let to_unit_price = entry
                    .rule
                    .headline_unit_price(machine_of(Some(&entry.def), &machines));
                Some(PriceChange {
                    from: latest.map(|v| v.rule.clone()),
                    to: entry.rule.clone(),
                    from_unit_price,
                    to_unit_price,
                    effective_from: at,
                })
            }
        };
        if let Some(p) = &price {
            if let Some(from) = &p.from {
                let field = format!("endpoint[{i}].price");
                if from.unit != p.to.unit {
                    warnings.push(Warning {
                        field,
                        line: Some(entry.line),
                        message: format!(
                            "the price of {id} changes its unit from {} to {}",
                            from.unit.label(),
                            p.to.unit.label()
                        ),
                    });
                } else if let (Some(a), Some(b)) = (p.from_unit_price, p.to_unit_price) {
                    if jumps(a, b) {
                        warnings.push(Warning {
                            field,
                            line: Some(entry.line),
                            message: format!(
                                "the price of {id} changes from {} to {} USD per {}, by more \
                                 than {WARN_FACTOR}x",
                                a.normalize(),
                                b.normalize(),
                                p.to.unit_label()
                            ),
                        });
                    }
                }
            }
        }
        let metadata_changed = old_def
            .map(|d| metadata_changes(d, &entry.def))
            .unwrap_or_default();
        if old_def.is_some() && price.is_none() && metadata_changed.is_empty() {
            unchanged += 1;
            continue;
        }
        changes.push(EndpointChange {
            endpoint: id.clone(),
            line: entry.line,
            added: old_def.is_none(),
            metadata_changed,
            price,
        });
    }

    Ok(CatalogPlan {
        effective_from: at,
        endpoints: doc.endpoints.len(),
        changes,
        unchanged,
        machines: machine_changes,
        machines_surge: surge_changes,
        concurrency_changed: doc
            .concurrency
            .as_ref()
            .is_some_and(|t| *t != current.concurrency),
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::document::parse;
    use crate::catalog::PriceVersion;

    const T: Timestamp = Timestamp(1_788_220_800_000);

    fn doc(endpoints: &str) -> CatalogDocument {
        parse(&format!(
            "prices_read_on = \"2026-09-15\"\n[machines]\nGPU-H100 = \"0.000525\"\n{endpoints}"
        ))
        .unwrap()
    }

    fn endpoint(id: &str, price: &str, extra: &str) -> String {
        format!(
            "\n[[endpoint]]\nid = \"{id}\"\nname = \"N\"\ncategory = \"c\"\n{extra}\nprice = {price}\n"
        )
    }

    /// The catalog after applying `d` (as the engine does, without a store).
    fn applied(d: &CatalogDocument, at: Timestamp) -> Catalog {
        let mut c = Catalog {
            machines: d.machines.clone(),
            ..Catalog::default()
        };
        for (i, e) in d.endpoints.iter().enumerate() {
            c.endpoints.insert(e.def.id.clone(), e.def.clone());
            c.insert_version(PriceVersion {
                id: i as i64 + 1,
                endpoint: e.def.id.clone(),
                account: None,
                effective_from: at,
                rule: e.rule.clone(),
            });
        }
        c
    }

    const IMAGE: &str = "{ unit = \"image\", unit_price = \"0.04\" }";

    #[test]
    fn a_new_catalog_adds_every_endpoint_with_its_price() {
        let d = doc(&endpoint("a/x", IMAGE, ""));
        let p = plan(&Catalog::default(), &d, T).unwrap();
        assert_eq!(p.endpoints, 1);
        assert_eq!(p.unchanged, 0);
        assert_eq!(p.versions_created(), 1);
        let c = &p.changes[0];
        assert!(c.added);
        assert_eq!(c.line, 5);
        let price = c.price.as_ref().unwrap();
        assert_eq!(price.from, None);
        assert_eq!(price.to_unit_price, Some(Decimal::new(4, 2)));
        assert_eq!(price.effective_from, T);
        assert_eq!(p.machines.len(), 1);
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn the_same_document_again_changes_nothing() {
        let d = doc(&endpoint("a/x", IMAGE, ""));
        let p = plan(&applied(&d, T), &d, T).unwrap();
        assert_eq!((p.changes.len(), p.unchanged), (0, 1));
        assert!(p.machines.is_empty() && p.warnings.is_empty());
        assert!(!p.concurrency_changed);
    }

    #[test]
    fn metadata_and_prices_are_named_with_from_and_to() {
        let before = doc(&endpoint("a/x", IMAGE, ""));
        let after = doc(&endpoint(
            "a/x",
            "{ unit = \"image\", unit_price = \"0.05\" }",
            "hold_units = \"2\"\nlate_completion = \"refuse\"",
        ));
        let at = Timestamp(T.0 + 1000);
        let p = plan(&applied(&before, T), &after, at).unwrap();
        let c = &p.changes[0];
        assert!(!c.added);
        assert_eq!(c.metadata_changed, vec!["hold_units", "late_completion"]);
        let price = c.price.as_ref().unwrap();
        assert_eq!(price.from_unit_price, Some(Decimal::new(4, 2)));
        assert_eq!(price.to_unit_price, Some(Decimal::new(5, 2)));
        assert_eq!(price.effective_from, at);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn a_price_that_moves_more_than_threefold_is_warned_of_either_way() {
        let before = doc(&endpoint("a/x", IMAGE, ""));
        let cur = applied(&before, T);
        for (to, warned) in [
            ("0.12", false),
            ("0.1201", true),
            ("0.0134", false),
            ("0.0133", true),
        ] {
            let after = doc(&endpoint(
                "a/x",
                &format!("{{ unit = \"image\", unit_price = \"{to}\" }}"),
                "",
            ));
            let p = plan(&cur, &after, T).unwrap();
            assert_eq!(
                p.warnings.len(),
                usize::from(warned),
                "{to}: {:?}",
                p.warnings
            );
            if warned {
                assert_eq!(p.warnings[0].field, "endpoint[0].price");
                assert_eq!(p.warnings[0].line, Some(5));
                assert!(p.warnings[0].message.contains("a/x"), "{:?}", p.warnings);
            }
        }
        // A unit change is named too; so is a machine price jump.
        let after = doc(&endpoint(
            "a/x",
            "{ unit = \"megapixel\", unit_price = \"0.04\" }",
            "",
        ));
        let p = plan(&cur, &after, T).unwrap();
        assert!(p.warnings[0].message.contains("unit"), "{:?}", p.warnings);
        let mut cheap = before.clone();
        cheap.machines.insert(
            MachineType::parse("GPU-H100").unwrap(),
            Decimal::new(525, 7),
        );
        let p = plan(&cur, &cheap, T).unwrap();
        assert_eq!(p.machines[0].from, Some(Decimal::new(525, 6)));
        assert_eq!(p.warnings[0].field, "machines.GPU-H100");
    }

    #[test]
    fn surge_prices_are_listed_like_machine_prices() {
        let h100 = MachineType::parse("GPU-H100").unwrap();
        let mut before = doc(&endpoint("a/x", IMAGE, ""));
        before
            .machines_surge
            .insert(h100.clone(), Decimal::new(7875, 7));
        let mut cur = applied(&before, T);
        cur.machines_surge = before.machines_surge.clone();
        let p = plan(&Catalog::default(), &before, T).unwrap();
        assert_eq!(
            p.machines_surge,
            vec![MachineChange {
                machine_type: h100.clone(),
                from: None,
                to: Decimal::new(7875, 7),
            }]
        );
        assert!(plan(&cur, &before, T).unwrap().machines_surge.is_empty());
        // A jump is warned of, under its table's name; a document without surge prices keeps
        // the current ones (nothing listed).
        let mut after = before.clone();
        after
            .machines_surge
            .insert(h100.clone(), Decimal::new(7875, 8));
        let p = plan(&cur, &after, T).unwrap();
        assert_eq!(p.machines_surge[0].from, Some(Decimal::new(7875, 7)));
        assert!(p.machines.is_empty());
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        assert_eq!(p.warnings[0].field, "machines_surge.GPU-H100");
        assert!(
            p.warnings[0].message.contains("surge price"),
            "{:?}",
            p.warnings
        );
        let p = plan(&cur, &doc(&endpoint("a/x", IMAGE, "")), T).unwrap();
        assert!(p.machines_surge.is_empty() && p.warnings.is_empty());
    }

    #[test]
    fn a_back_dated_price_is_refused_naming_its_line() {
        let before = doc(&endpoint("a/x", IMAGE, ""));
        let cur = applied(&before, T);
        let mut after = doc(&endpoint(
            "a/x",
            "{ unit = \"image\", unit_price = \"0.05\" }",
            "",
        ));
        after.effective_from = Some(Timestamp(T.0 - 1));
        let e = plan(&cur, &after, T).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (Some(5), "effective_from"));
        // An unchanged price is not a new version, so its date does not matter.
        let mut same = before.clone();
        same.effective_from = Some(Timestamp(T.0 - 1));
        assert!(plan(&cur, &same, T).is_ok());
    }
}
