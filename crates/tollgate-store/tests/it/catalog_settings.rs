//! The catalog's settings are written through typed methods and read back into the catalog by
//! the same store that encoded them; each write counts as a catalog change.

use rust_decimal::Decimal;
use tollgate_core::concurrency::{ConcurrencyTable, ConcurrencyTier};
use tollgate_core::ids::MachineType;
use tollgate_core::price::MachinePrices;
use tollgate_store::sqlite::SqliteStore;
use tollgate_store::Store;

#[test]
fn catalog_settings_read_back_as_written_and_count_as_changes() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(dir.path().join("t.db")).unwrap();
    let machines: MachinePrices = [(
        MachineType::parse("GPU-H100").unwrap(),
        Decimal::new(525, 6),
    )]
    .into_iter()
    .collect();
    let table = ConcurrencyTable::new(vec![
        ConcurrencyTier {
            paid_28d_usd: Decimal::ZERO,
            limit: 3,
        },
        ConcurrencyTier {
            paid_28d_usd: Decimal::from(20),
            limit: 9,
        },
    ])
    .unwrap();
    let mut generations = Vec::new();
    store
        .transaction(&mut |tx| {
            generations.clear();
            generations.push(tx.catalog_generation()?);
            tx.set_machine_prices(&machines)?;
            generations.push(tx.catalog_generation()?);
            tx.set_concurrency_table(&table)?;
            generations.push(tx.catalog_generation()?);
            tx.set_prices_read_on("2026-01-15")?;
            generations.push(tx.catalog_generation()?);
            Ok(())
        })
        .unwrap();
    assert_eq!(generations, [0, 1, 2, 3]);

    let mut reader = (store.reader_factory())().unwrap();
    let catalog = reader.load_catalog().unwrap();
    assert_eq!(catalog.machines, machines);
    assert_eq!(catalog.concurrency, table);
    assert_eq!(reader.catalog_generation().unwrap(), 3);
}
