//! Schema history.
//!
//! Append-only: a shipped migration is never edited, not even its comments, because
//! catalogs in the field were created from it. Change the schema by appending a new `M::up`.
//! The schema version is SQLite's `user_version`, managed by `rusqlite_migration`.
//!
//! Conventions the code relies on:
//! - timestamps are TEXT `%Y-%m-%dT%H:%M:%S%.6fZ` (UTC, fixed width), so text order is time
//!   order and `ORDER BY created_at` needs no conversion;
//! - `backups.file_path` is TEXT when the path is UTF-8 and a BLOB of the raw OS bytes when it
//!   is not (TEXT affinity leaves BLOBs alone), see `codec.rs`;
//! - enum columns carry no CHECK constraint, so an older binary reading a newer value reports
//!   a corrupt row instead of the newer binary needing a table rebuild to add a value;
//! - ids use AUTOINCREMENT so a deleted backup's id is never handed out again (operators type
//!   ids into `rollback`).

use rusqlite_migration::{M, Migrations};

/// The applied schema history, oldest first. Append only.
pub(crate) static MIGRATIONS: Migrations<'static> = Migrations::from_slice(HISTORY);

/// The schema version this build migrates to (the length of the history).
pub(crate) const LATEST: usize = HISTORY.len();

pub(crate) const HISTORY: &[M<'static>] = &[
    // 1: initial schema.
    M::up(
        r#"
CREATE TABLE backups (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    file_path       TEXT    NOT NULL,
    backup_type     TEXT    NOT NULL,
    service_version TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    size            INTEGER,
    sha256          TEXT,
    entry_count     INTEGER,
    error           TEXT,
    created_at      TEXT    NOT NULL,
    finished_at     TEXT,
    owner_pid       INTEGER,
    verified_at     TEXT,
    compose_project TEXT
);
CREATE INDEX backups_created_at ON backups(created_at);
CREATE INDEX backups_file_path ON backups(file_path);

CREATE TABLE operations (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    phase       TEXT    NOT NULL,
    pid         INTEGER NOT NULL,
    boot_id     TEXT    NOT NULL,
    started_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL,
    finished_at TEXT,
    backup_id   INTEGER REFERENCES backups(id) ON DELETE SET NULL,
    details     TEXT    NOT NULL DEFAULT '{}',
    error       TEXT
);
CREATE INDEX operations_state ON operations(state);
CREATE INDEX operations_backup_id ON operations(backup_id);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

CREATE TABLE upgrades (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    from_version TEXT    NOT NULL,
    to_version   TEXT    NOT NULL,
    backup_id    INTEGER REFERENCES backups(id) ON DELETE SET NULL,
    outcome      TEXT    NOT NULL,
    started_at   TEXT    NOT NULL,
    finished_at  TEXT,
    error        TEXT
);
CREATE INDEX upgrades_backup_id ON upgrades(backup_id);
"#,
    ),
    // 2: offsite copies (issue 12). An upload in progress (its multipart upload id and every
    // finished part with its ETag, so a killed push resumes without resending them) and the
    // remote copy known per backup. Keys are full remote names (`s3://bucket/prefix/name`), so
    // a changed `[remote] url` never resumes or trusts a record made for another bucket.
    M::up(
        r#"
CREATE TABLE remote_uploads (
    object_key     TEXT    PRIMARY KEY NOT NULL,
    backup_id      INTEGER REFERENCES backups(id) ON DELETE SET NULL,
    upload_id      TEXT    NOT NULL,
    archive_sha256 TEXT    NOT NULL,
    size           INTEGER NOT NULL,
    part_size      INTEGER NOT NULL,
    started_at     TEXT    NOT NULL
);
CREATE TABLE remote_upload_parts (
    object_key TEXT    NOT NULL REFERENCES remote_uploads(object_key) ON DELETE CASCADE,
    part_index INTEGER NOT NULL,
    etag       TEXT    NOT NULL,
    size       INTEGER NOT NULL,
    PRIMARY KEY (object_key, part_index)
);
CREATE TABLE remote_copies (
    backup_id   INTEGER PRIMARY KEY NOT NULL REFERENCES backups(id) ON DELETE CASCADE,
    object_key  TEXT    NOT NULL,
    size        INTEGER NOT NULL,
    sha256      TEXT    NOT NULL,
    uploaded_at TEXT    NOT NULL,
    verified_at TEXT
);
"#,
    ),
    // 3: backups made by the original nuwax-cli (no metadata inside the archive): flagged,
    // with the manifest computed when they were adopted (what `verify` and a restore check
    // them against). The manifest goes with its row.
    M::up(
        r#"
ALTER TABLE backups ADD COLUMN legacy INTEGER NOT NULL DEFAULT 0;

CREATE TABLE legacy_manifests (
    backup_id INTEGER PRIMARY KEY REFERENCES backups(id) ON DELETE CASCADE,
    manifest  TEXT    NOT NULL
);
"#,
    ),
    // 4: hot backups (issue 15): taken while the services ran; the database files named by
    // each dump's `hot_exclude` are not in the archive, its dumps stand in for them.
    M::up(
        r#"
ALTER TABLE backups ADD COLUMN hot INTEGER NOT NULL DEFAULT 0;
"#,
    ),
    // 5 (restore drills, issue 17): every drill of a backup: when, how long, how it ended,
    // and when it failed, the service that did and its last log lines. Goes with its backup.
    M::up(
        r#"
CREATE TABLE drills (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    backup_id      INTEGER NOT NULL REFERENCES backups(id) ON DELETE CASCADE,
    started_at     TEXT    NOT NULL,
    finished_at    TEXT,
    duration_ms    INTEGER,
    outcome        TEXT    NOT NULL,
    failed_service TEXT,
    log_tail       TEXT,
    error          TEXT
);
CREATE INDEX drills_backup_id ON drills(backup_id);
"#,
    ),
    // 6 (issue 13, encryption at rest): the encryption facts of an encrypted archive (a
    // `*.tar.gz.age` in the storage dir): the ciphertext's SHA-256 and a fingerprint per
    // recipient (a JSON array; `["scrypt"]` for a passphrase). Never a key. Goes with its row.
    M::up(
        r#"
CREATE TABLE backup_encryption (
    backup_id         INTEGER PRIMARY KEY REFERENCES backups(id) ON DELETE CASCADE,
    ciphertext_sha256 TEXT    NOT NULL,
    recipients        TEXT    NOT NULL
);
"#,
    ),
    // 7 (issue 13, `scope = "remote"`): a plain archive encrypted on its way to the remote.
    // The upload in progress of such a copy sends a staged ciphertext file: its plain
    // archive's SHA-256 and the recipients' fingerprints say whether that file may be resumed
    // (goes with the upload). The completed copy keeps the same facts (goes with the copy);
    // `remote_copies.sha256` is then the ciphertext's, `backups.sha256` the plain archive's.
    M::up(
        r#"
CREATE TABLE remote_upload_encryption (
    object_key   TEXT PRIMARY KEY NOT NULL REFERENCES remote_uploads(object_key) ON DELETE CASCADE,
    plain_sha256 TEXT NOT NULL,
    recipients   TEXT NOT NULL
);
CREATE TABLE remote_copy_encryption (
    backup_id    INTEGER PRIMARY KEY NOT NULL REFERENCES remote_copies(backup_id) ON DELETE CASCADE,
    plain_sha256 TEXT NOT NULL,
    recipients   TEXT NOT NULL
);
"#,
    ),
];
