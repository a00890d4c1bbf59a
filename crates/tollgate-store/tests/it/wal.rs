//! The embedded store's WAL stays bounded under a writer that never pauses: the writer starts
//! it over, so commits keep overwriting the same file blocks instead of extending the file.

use tollgate_store::sqlite::SqliteStore;
use tollgate_store::Store;

#[test]
fn a_writer_that_never_pauses_keeps_the_wal_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let wal = dir.path().join("t.db-wal");
    let mut store = SqliteStore::open(&path).unwrap();
    // Commits that each write 16 rows scattered over the table, back to back: hundreds of MiB
    // of WAL frames in all, more than a background checkpoint alone keeps up with.
    let value = "x".repeat(1024);
    let mut largest = 0;
    let mut key = 1u64;
    for _ in 0..10_000 {
        store
            .transaction(&mut |tx| {
                for _ in 0..16 {
                    key = key
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    tx.set_setting(&format!("k{}", (key >> 33) % 20_000), &value)?;
                }
                Ok(())
            })
            .unwrap();
        largest = largest.max(std::fs::metadata(&wal).unwrap().len());
    }
    // The file never shrinks, so its size is the most the WAL ever held.
    assert!(
        largest < 64 << 20,
        "the WAL grew to {} MiB; it is started over past 16 MiB",
        largest >> 20
    );
    let settings = store.reader_factory()()
        .unwrap()
        .setting(&format!("k{}", (key >> 33) % 20_000))
        .unwrap()
        .expect("committed");
    assert_eq!(settings.len(), value.len());
}

/// The store runs a checkpointer beside a writer that starts the WAL over: the pattern of
/// SQLite's WAL-reset race, which could corrupt a database in every SQLite before 3.51.3. The
/// bundled SQLite must be one with the fix.
#[test]
fn the_bundled_sqlite_has_the_wal_reset_fix() {
    let v = rusqlite::version_number();
    assert!(
        v >= 3_051_003,
        "SQLite {} has the WAL-reset race",
        rusqlite::version()
    );
}
