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
mod drills;
mod error;
mod migrations;
mod model;
mod operations;
mod remote;
mod settings;
mod upgrades;
mod usecases;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

pub use drills::DrillFinish;
pub use error::{Error, Result};
pub use model::{
    BackupCompletion, BackupRecord, BackupStatus, BackupType, DrillOutcome, DrillRecord, NewBackup,
    Operation, OperationKind, OperationState, UpgradeOutcome, UpgradeRecord,
};
pub use remote::{PushEncryption, RemoteCopyRecord, RemoteUpload};

/// How an encrypted archive was encrypted (catalog table `backup_encryption`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptionFacts {
    /// SHA-256 of the `*.tar.gz.age` file (lowercase hex).
    pub ciphertext_sha256: String,
    /// A fingerprint per recipient (`sha256:…`), or `scrypt` for a passphrase.
    pub recipients: Vec<String>,
}

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
    ///
    /// A file that is not a catalog this build can use (not SQLite, damaged, a newer schema,
    /// tables or columns missing) is [`Error::Unusable`], with advice on rebuilding it.
    pub fn open(path: &Path) -> Result<Store> {
        Store::open_inner(path).map_err(|e| unusable(path, e))
    }

    /// Moves an unusable catalog (and its `-wal`/`-shm` files) aside to
    /// `<path>.broken-<UTC time>`, so that [`Store::open`] creates a fresh one. Returns the
    /// new name of the database file. Only on request (`reindex --move-broken-catalog`):
    /// a catalog is never moved silently.
    pub fn move_aside(path: &Path) -> std::io::Result<PathBuf> {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        let with_suffix = |p: &Path, n: u32| {
            let mut s = p.as_os_str().to_owned();
            s.push(format!(".broken-{stamp}"));
            if n > 0 {
                s.push(format!("-{n}"));
            }
            PathBuf::from(s)
        };
        let mut n = 0;
        while with_suffix(path, n).exists() {
            n += 1;
        }
        let dest = with_suffix(path, n);
        std::fs::rename(path, &dest)?;
        for ext in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(ext);
            let side = PathBuf::from(side);
            if side.exists() {
                let mut to = dest.as_os_str().to_owned();
                to.push(ext);
                std::fs::rename(&side, PathBuf::from(to))?;
            }
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(dest)
    }

    fn open_inner(path: &Path) -> Result<Store> {
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
        check_schema(&conn)?;
        Ok(Store { conn, path })
    }
}

/// Every column each table must have, as the queries of this build read them. A catalog whose
/// `user_version` claims an up-to-date schema but whose tables lack a column (edited by hand,
/// or by another tool) is refused at open instead of failing in the middle of an operation.
const SCHEMA: &[(&str, &[&str])] = &[
    (
        "backups",
        &[
            "id",
            "file_path",
            "backup_type",
            "service_version",
            "status",
            "size",
            "sha256",
            "entry_count",
            "error",
            "created_at",
            "finished_at",
            "owner_pid",
            "verified_at",
            "compose_project",
            "legacy",
            "hot",
        ],
    ),
    ("legacy_manifests", &["backup_id", "manifest"]),
    (
        "drills",
        &[
            "id",
            "backup_id",
            "started_at",
            "finished_at",
            "duration_ms",
            "outcome",
            "failed_service",
            "log_tail",
            "error",
        ],
    ),
    (
        "backup_encryption",
        &["backup_id", "ciphertext_sha256", "recipients"],
    ),
    (
        "remote_upload_encryption",
        &["object_key", "plain_sha256", "recipients"],
    ),
    (
        "remote_copy_encryption",
        &["backup_id", "plain_sha256", "recipients"],
    ),
    (
        "operations",
        &[
            "id",
            "kind",
            "state",
            "phase",
            "pid",
            "boot_id",
            "started_at",
            "updated_at",
            "finished_at",
            "backup_id",
            "details",
            "error",
        ],
    ),
    ("settings", &["key", "value"]),
    (
        "upgrades",
        &[
            "id",
            "from_version",
            "to_version",
            "backup_id",
            "outcome",
            "started_at",
            "finished_at",
            "error",
        ],
    ),
    (
        "remote_uploads",
        &[
            "object_key",
            "backup_id",
            "upload_id",
            "archive_sha256",
            "size",
            "part_size",
            "started_at",
        ],
    ),
    (
        "remote_upload_parts",
        &["object_key", "part_index", "etag", "size"],
    ),
    (
        "remote_copies",
        &[
            "backup_id",
            "object_key",
            "size",
            "sha256",
            "uploaded_at",
            "verified_at",
        ],
    ),
];

fn check_schema(conn: &Connection) -> Result<()> {
    for (table, columns) in SCHEMA {
        let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1)")?;
        let present: Vec<String> = stmt
            .query_map([table], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if present.is_empty() {
            return Err(Error::Corrupt(format!("table {table} is missing")));
        }
        let missing: Vec<&str> = columns
            .iter()
            .copied()
            .filter(|c| !present.iter().any(|p| p == c))
            .collect();
        if !missing.is_empty() {
            return Err(Error::Corrupt(format!(
                "table {table} lacks column(s) {}",
                missing.join(", ")
            )));
        }
    }
    Ok(())
}

/// Whether an SQLite failure says the file itself is bad (as opposed to the disk being full,
/// read-only, locked by another process, or not permitted).
pub fn is_damage(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code() {
        Some(C::NotADatabase | C::DatabaseCorrupt) => true,
        // A statement of this build that does not fit the schema it found.
        Some(C::Unknown) | None => matches!(e, rusqlite::Error::SqliteFailure(..)),
        _ => false,
    }
}

/// Classifies an error of [`Store::open`]: damage, a newer schema and a schema that does not
/// fit become [`Error::Unusable`]; anything else (permissions, a full disk, a lock) is kept.
fn unusable(path: &Path, e: Error) -> Error {
    use rusqlite_migration::{Error as ME, MigrationDefinitionError as D};
    let reason = match &e {
        Error::Open { source, .. } | Error::Sqlite(source) if is_damage(source) => {
            format!("not a usable SQLite database ({source})")
        }
        Error::Migration(_, ME::MigrationDefinition(D::DatabaseTooFarAhead)) => format!(
            "it was written by a newer version of nuwax-cli (schema version {}, this build knows {}; that version can still use it)",
            read_user_version(path).map_or_else(|| "?".to_string(), |v| v.to_string()),
            migrations::LATEST
        ),
        Error::Migration(_, ME::RusqliteError { err, .. }) if is_damage(err) => {
            format!("its schema cannot be brought up to date ({err})")
        }
        Error::Corrupt(detail) => format!("its schema does not match this build: {detail}"),
        _ => return e,
    };
    Error::Unusable {
        path: path.to_path_buf(),
        reason,
    }
}

/// `PRAGMA user_version` of the file, read-only, for the message about a newer schema.
fn read_user_version(path: &Path) -> Option<i64> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ok()?;
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .ok()
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
