//! One server per SQLite database file: a server holds an exclusive advisory lock (`flock`) on
//! its database file for its whole life, so a second server on the same file, or a demo that
//! would start the file over, refuses instead of writing beside it or deleting it.
//!
//! The lock is on the database file itself (no lock file to leave behind); `flock` locks are
//! independent of the POSIX locks SQLite takes on the same file. The file handle is kept until
//! the process exits, never closed earlier: closing any handle of a file drops every POSIX lock
//! the process holds on it, SQLite's included.

use anyhow::{bail, Context};
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static CLAIMED: OnceLock<File> = OnceLock::new();

/// Takes the lock on the database file at `path` (creating an empty file, which SQLite opens as
/// a new database, when there is none). With `start_over`, empties the database once the lock
/// is held (the demo's fresh start): no other server can have it open then.
pub fn claim(path: &Path, start_over: bool) -> anyhow::Result<()> {
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) if start_over => bail!(
            "the demo database {} is in use by a running tollgate server; stop it first, or \
             start this demo in another directory (nothing was changed)",
            path.display()
        ),
        Err(TryLockError::WouldBlock) => bail!(
            "{} is in use by another tollgate server: one server per SQLite database (several \
             servers can share a PostgreSQL database); nothing was changed",
            path.display()
        ),
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
    if start_over {
        for suffix in ["-wal", "-shm"] {
            let p = PathBuf::from(format!("{}{suffix}", path.display()));
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("cannot remove {}", p.display()))
                }
                _ => {}
            }
        }
        file.set_len(0)
            .with_context(|| format!("cannot empty {}", path.display()))?;
    }
    if CLAIMED.set(file).is_err() {
        bail!("a database is already claimed by this process");
    }
    Ok(())
}
