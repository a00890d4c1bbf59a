//! Getting commits to disk without making the writer wait: the deferred sync of the WAL (see
//! [`Store::defer_sync`](crate::Store::defer_sync)), and the checkpointer that copies the WAL
//! back into the database file and has the writer start it over.

use super::open::open_conn;
use crate::{Result, StoreError, SyncFn};
use rusqlite::Connection;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Copies the WAL back into the database file from a thread of its own, so the writer's
/// commits never pay for it (the writer's automatic checkpoints are off).
///
/// SQLite starts the WAL over (writes from its beginning again) only when a write transaction
/// begins with every frame copied back and no reader inside the WAL. A writer that never pauses
/// never gives a background checkpoint that moment, and the WAL would grow without bound: every
/// commit would then write to newly allocated file blocks, which costs the kernel more than
/// overwriting blocks it already has. So once the WAL is past [`WAL_RESTART_FRAMES`], the
/// checkpointer asks the writer ([`Checkpointer::restart_if_wanted`]) to copy back the few frames
/// written since the last pass itself, between two batches; that never waits for a reader or
/// for the checkpointer (a PASSIVE checkpoint that finds either busy just stops early and is
/// tried again before the next batch), and the next commit starts the WAL over.
pub(super) struct Checkpointer {
    stop: Arc<AtomicBool>,
    restart: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How often the checkpointer runs; while the WAL is past its limit, it runs again sooner so
/// that the writer's share stays small.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
const CHECKPOINT_AGAIN: Duration = Duration::from_millis(10);

/// The WAL length, in frames (about 4 KiB each), past which the writer starts it over: 16 MiB.
const WAL_RESTART_FRAMES: i64 = 4_096;

/// Runs a PASSIVE checkpoint: whether every frame in the WAL is now in the database file, and
/// how many frames the WAL holds; `None` when another connection held the checkpoint.
fn checkpoint_passive(conn: &Connection) -> Option<(bool, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })
    .ok()
    .filter(|(busy, _, _)| *busy == 0)
    .map(|(_, log, done)| (log == done, log))
}

impl Checkpointer {
    pub(super) fn start(path: &Path) -> Result<Checkpointer> {
        let conn = open_conn(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let restart = Arc::new(AtomicBool::new(false));
        let (flag, wanted) = (stop.clone(), restart.clone());
        let thread = std::thread::Builder::new()
            .name("tollgate-checkpoint".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    let long = checkpoint_passive(&conn)
                        .is_some_and(|(_, frames)| frames > WAL_RESTART_FRAMES);
                    if long {
                        wanted.store(true, Ordering::Relaxed);
                    }
                    std::thread::sleep(if long {
                        CHECKPOINT_AGAIN
                    } else {
                        CHECKPOINT_EVERY
                    });
                }
                let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            })
            .map_err(|e| StoreError::database(format!("cannot start the checkpointer: {e}"), e))?;
        Ok(Checkpointer {
            stop,
            restart,
            thread: Some(thread),
        })
    }

    /// Called by the writer between batches: copies back what is left of a long WAL, so that
    /// the next commit starts it over.
    pub(super) fn restart_if_wanted(&self, conn: &Connection) {
        if self.restart.load(Ordering::Relaxed)
            && checkpoint_passive(conn).is_some_and(|(all, _)| all)
        {
            self.restart.store(false, Ordering::Relaxed);
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Has the writer's commits return once written, and gives the function that syncs every
/// commit made so far to disk (see [`Store::defer_sync`](crate::Store::defer_sync)).
pub(super) fn defer_sync(path: &Path, conn: &Connection) -> Result<SyncFn> {
    // The connections keep the WAL file open, and SQLite only deletes it when the last one
    // closes, so this handle names the file the commits go to for the store's life (a
    // checkpoint that starts the WAL over rewrites the same file).
    let mut wal = path.to_path_buf().into_os_string();
    wal.push("-wal");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&wal)
        .map_err(|e| {
            StoreError::database(format!("cannot open {}: {e}", wal.to_string_lossy()), e)
        })?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(Box::new(move || {
        file.sync_data()
            .map_err(|e| StoreError::database(format!("cannot sync the WAL to disk: {e}"), e))
    }))
}
