//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong talking to the catalog.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A statement failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),

    /// The database file could not be opened or configured.
    #[error("opening catalog {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    /// The schema of the catalog at this path (`:memory:` in memory) could not be brought up
    /// to date, including a catalog written by a newer version of the tool.
    #[error("migrating catalog {} schema: {}", .0.display(), describe_migration(.1))]
    Migration(PathBuf, #[source] rusqlite_migration::Error),

    /// The file at this path is not a catalog this build can use: not an SQLite database,
    /// damaged, written by a newer version, or missing tables or columns. Nothing in it was
    /// changed; the archives are the source of truth, so the catalog can be rebuilt.
    #[error(
        "catalog {} is unusable: {reason}; rebuild it from the archives with `nuwax-cli reindex --move-broken-catalog` (it moves the file aside to {}.broken-<time> first), or move it aside yourself and run `nuwax-cli reindex`",
        path.display(),
        path.display()
    )]
    Unusable { path: PathBuf, reason: String },

    /// A row that cannot be decoded, e.g. unknown enum text or a malformed timestamp.
    #[error("corrupt catalog row: {0}")]
    Corrupt(String),

    #[error("backup {0} not found in the catalog")]
    BackupNotFound(i64),

    #[error("operation {0} not found in the catalog")]
    OperationNotFound(i64),

    #[error("upgrade {0} not found in the catalog")]
    UpgradeNotFound(i64),

    #[error("drill {0} not found in the catalog")]
    DrillNotFound(i64),

    /// A path that this platform cannot store losslessly (non-UTF-8 outside unix).
    #[error("path {} cannot be stored in the catalog: not valid UTF-8", .0.display())]
    UnrepresentablePath(PathBuf),

    /// An unsigned value that does not fit SQLite's signed 64-bit integers.
    #[error("{what} {value} is too large for the catalog")]
    OutOfRange { what: &'static str, value: u64 },
}

/// `Result` with this crate's [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `rusqlite_migration`'s own message quotes the whole migration script; users need the cause.
fn describe_migration(e: &rusqlite_migration::Error) -> String {
    use rusqlite_migration::{Error as E, MigrationDefinitionError as D};
    match e {
        E::RusqliteError { err, .. } => err.to_string(),
        E::MigrationDefinition(D::DatabaseTooFarAhead) => {
            "it was written by a newer version of nuwax-cli".to_owned()
        }
        other => other.to_string(),
    }
}
