//! SQLite catalog of backups, the operation journal, settings and upgrade history.
//!
//! [`Store`] is a plain synchronous handle that owns one [`rusqlite::Connection`]; the actors
//! crate keeps it inside the store actor, so it is `Send` but not `Sync`. There is one method
//! per use case; lookups return `Ok(None)` when a row does not exist, updates of a missing row
//! return a `*NotFound` error naming the id.
//!
//! Storage rules (see `migrations.rs` for the schema and `codec.rs` for the encodings):
//! - the schema is an append-only list of migrations applied on every [`Store::open`];
//! - timestamps are fixed-width UTC text with microseconds, so they sort as text and
//!   round-trip exactly to the microsecond (finer precision is dropped);
//! - paths are TEXT when UTF-8, otherwise a BLOB of the raw OS bytes (unix), so any file name
//!   the archiver can write, the catalog can record;
//! - rows that cannot be decoded (e.g. an enum value written by a newer tool) surface as
//!   [`Error::Corrupt`], never as a panic.
//!
//! The database runs in WAL mode with `synchronous=FULL` (a backup recorded as completed
//! survives a power cut), foreign keys on and a 10 s busy timeout, because cron jobs, the GUI
//! and an operator may open the catalog at the same time.

mod backups;
mod codec;
mod error;
mod migrations;
mod model;
mod operations;
mod settings;
mod upgrades;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

pub use error::{Error, Result};
pub use model::{
    BackupCompletion, BackupRecord, BackupStatus, BackupType, NewBackup, Operation, OperationKind,
    OperationState, UpgradeOutcome, UpgradeRecord,
};

use migrations::MIGRATIONS;

/// How long a statement waits for another process's lock before failing with "busy".
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The catalog. Owns its connection; see the crate docs.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: Option<PathBuf>,
}

impl Store {
    /// Opens (creating the file, not its parent directory) and migrates the catalog at `path`.
    /// Opening an up-to-date catalog changes nothing.
    pub fn open(path: &Path) -> Result<Store> {
        let open_err = |source| Error::Open {
            path: path.to_path_buf(),
            source,
        };
        // No SQLITE_OPEN_URI: a work dir named `file:...` must stay a plain path.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
        configure(&conn, true).map_err(open_err)?;
        Store::migrated(conn, Some(path.to_path_buf()))
    }

    /// A private, empty, migrated catalog for tests.
    pub fn open_in_memory() -> Result<Store> {
        let open_err = |source| Error::Open {
            path: PathBuf::from(":memory:"),
            source,
        };
        let conn = Connection::open_in_memory().map_err(open_err)?;
        configure(&conn, false).map_err(open_err)?;
        Store::migrated(conn, None)
    }

    /// The database file, `None` in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn migrated(mut conn: Connection, path: Option<PathBuf>) -> Result<Store> {
        // Writers take the lock up front: a deferred transaction that reads and then tries to
        // write can fail with "busy" at once instead of waiting for the busy timeout.
        conn.set_transaction_behavior(TransactionBehavior::Immediate);
        if let Err(e) = MIGRATIONS.to_latest(&mut conn) {
            // `to_latest` reads the schema version before it takes the write lock, so two
            // processes opening a new catalog at once can both try to migrate; the loser fails
            // on `CREATE TABLE`. If the catalog is up to date now, someone else did the work.
            if MIGRATIONS.pending_migrations(&conn).ok() != Some(0) {
                let path = path.unwrap_or_else(|| PathBuf::from(":memory:"));
                return Err(Error::Migration(path, e));
            }
            tracing::debug!("catalog was migrated concurrently by another process");
        }
        Ok(Store { conn, path })
    }
}

fn configure(conn: &Connection, on_disk: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    if on_disk {
        let mode = enable_wal(conn)?;
        if !mode.eq_ignore_ascii_case("wal") {
            // Still correct, only readers and the writer now block each other.
            tracing::warn!(journal_mode = %mode, "catalog could not switch to WAL mode");
        }
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Switches to WAL (persistent in the file) unless it already is; returns the final mode.
///
/// SQLite answers a journal-mode change that races another connection with "database is
/// locked" at once, without calling the busy handler, so two processes creating the catalog
/// together would fail. Retry for as long as the busy timeout would have waited.
fn enable_wal(conn: &Connection) -> rusqlite::Result<String> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        let mode: String = conn.pragma_query_value(None, "journal_mode", |row| row.get(0))?;
        if mode.eq_ignore_ascii_case("wal") {
            return Ok(mode);
        }
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)) {
            Err(e)
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            result => return result,
        }
    }
}

/// For updates addressed by id: zero rows changed means the row does not exist.
fn expect_one(changed: usize, not_found: Error) -> Result<()> {
    if changed == 0 { Err(not_found) } else { Ok(()) }
}

/// Turns a foreign-key failure on a `backup_id` column into "backup N not found".
fn backup_fk(e: rusqlite::Error, backup_id: i64) -> Error {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY =>
        {
            Error::BackupNotFound(backup_id)
        }
        _ => Error::Sqlite(e),
    }
}
