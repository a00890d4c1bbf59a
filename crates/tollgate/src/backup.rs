//! `tollgate backup --db FILE OUT`: a consistent copy of a SQLite database, taken while a server
//! writes to it. SQLite's online backup API copies the pages inside one read transaction that
//! stays open from the first step to the last: in WAL mode that is one snapshot (the commits
//! made meanwhile are not in the copy, and the writer is never blocked), and the copy never has
//! to start over however busy the server is. The copy is written beside OUT and moved into
//! place only when complete and checked, so OUT is either absent or a whole database.

use anyhow::{bail, Context};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Pages copied per step (4 KiB each: 16 MiB), between progress lines.
const PAGES_PER_STEP: std::ffi::c_int = 4096;
/// A copy that takes longer than this reports its progress.
const QUIET_FOR: Duration = Duration::from_secs(1);

#[derive(clap::Args)]
pub struct BackupArgs {
    /// The SQLite database to copy (it may be in use by a running server). For PostgreSQL use
    /// pg_dump.
    #[arg(long)]
    db: String,
    /// Where to write the copy: a new file (an existing one is never overwritten). Restore by
    /// stopping the server, copying this file to the database's path (and removing its -wal
    /// and -shm files), and starting the server.
    out: PathBuf,
}

pub fn run(args: BackupArgs) -> anyhow::Result<()> {
    if tollgate_store::postgres::is_url(&args.db) {
        bail!(
            "tollgate backup copies an embedded SQLite database; back up PostgreSQL with its own \
             tools: pg_dump --format=custom --file=tollgate.dump '{}' (restore with pg_restore)",
            "postgres://..."
        );
    }
    let source = Path::new(&args.db);
    if !source.is_file() {
        bail!("{} does not exist or is not a file", source.display());
    }
    if args.out.exists() {
        bail!(
            "{} already exists; a backup never overwrites a file",
            args.out.display()
        );
    }
    let partial = PathBuf::from(format!("{}.partial", args.out.display()));
    let result = copy(source, &partial).and_then(|pages| {
        // A hard link fails if OUT appeared meanwhile, where a rename would replace it.
        std::fs::hard_link(&partial, &args.out)
            .with_context(|| format!("cannot create {}", args.out.display()))?;
        Ok(pages)
    });
    let _ = std::fs::remove_file(&partial);
    let pages = result?;
    let bytes = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "backup of {} written to {} ({pages} pages, {bytes} bytes, integrity checked)",
        source.display(),
        args.out.display()
    );
    Ok(())
}

/// Copies `source` into the new file `dest`; returns the number of pages copied.
fn copy(source: &Path, dest: &Path) -> anyhow::Result<i32> {
    let src = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open {}", source.display()))?;
    src.busy_timeout(Duration::from_secs(10))?;
    // Not an existing file: create_new refuses one, then SQLite opens the empty file.
    std::fs::File::create_new(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let mut dst = Connection::open(dest)?;
    // One read transaction for the whole copy: one snapshot, and no restart when the server
    // commits between two steps.
    src.execute_batch("BEGIN")?;
    src.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
        .with_context(|| format!("{} is not a SQLite database", source.display()))?;
    let mut reported = false;
    let pages = {
        let backup = Backup::new(&src, &mut dst)?;
        let started = Instant::now();
        loop {
            let step = backup.step(PAGES_PER_STEP)?;
            let p = backup.progress();
            if started.elapsed() >= QUIET_FOR || (reported && step == StepResult::Done) {
                let copied = p.pagecount - p.remaining;
                eprint!("\rcopied {copied} of {} pages", p.pagecount);
                let _ = std::io::stderr().flush();
                reported = true;
            }
            match step {
                StepResult::Done => break p.pagecount,
                StepResult::More => {}
                // Only the destination can be busy or locked, and nobody else knows of it.
                StepResult::Busy | StepResult::Locked => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {}
            }
        }
    };
    if reported {
        eprintln!();
    }
    src.execute_batch("COMMIT")?;
    drop(src);
    // The copy is a file on its own: no WAL beside it.
    dst.pragma_update(None, "journal_mode", "DELETE")?;
    let check: String = dst.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        bail!("the copy failed its integrity check: {check}");
    }
    dst.close().map_err(|(_, e)| e)?;
    std::fs::File::open(dest)?.sync_all()?;
    Ok(pages)
}
