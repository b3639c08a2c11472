//! JSON documents of `ls`, `diff`, `rollback --dry-run` and `restore --to`. Paths are
//! relative to the compose dir (names that are not UTF-8 carry U+FFFD in place of the bad
//! bytes); times are UTC `YYYY-MM-DD HH:MM:SS`.

use nuwax_actors::{ArchiveEntry, DiffEntry, Side};
use serde::Serialize;

fn time(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| secs.to_string())
}

fn text(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

/// One entry of a backup (`ls --json`).
#[derive(Debug, Serialize)]
pub(crate) struct LsEntryJson {
    /// Relative to the compose dir (the argument of `ls ID PATH` and `restore`).
    pub path: String,
    /// `dir`, `file`, `symlink` or `hardlink`.
    pub kind: &'static str,
    /// Bytes of content (files; 0 for the others).
    pub size: u64,
    /// Permission bits, e.g. 420 (0644).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: String,
    /// Symlink target, or the path a hard link shares its content with.
    pub target: Option<String>,
    /// SHA-256 of a file's content (from the manifest).
    pub sha256: Option<String>,
    /// A directory implied by deeper paths, not an entry of the archive.
    pub implied: bool,
}

impl From<&ArchiveEntry> for LsEntryJson {
    fn from(e: &ArchiveEntry) -> Self {
        LsEntryJson {
            path: text(&e.path),
            kind: e.kind,
            size: e.size,
            mode: e.mode & 0o7777,
            uid: e.uid,
            gid: e.gid,
            mtime: time(e.mtime),
            target: e.target.as_deref().map(text),
            sha256: e.sha256.clone(),
            implied: e.implied,
        }
    }
}

/// `ls ID [PATH] --json`.
#[derive(Debug, Serialize)]
pub(crate) struct LsDocument {
    pub backup_id: i64,
    /// The path listed; null for the top level.
    pub path: Option<String>,
    /// Entries come from the archive's manifest (with checksums), not its tar headers.
    pub from_manifest: bool,
    pub entries: Vec<LsEntryJson>,
}

/// One side of a compared path.
#[derive(Debug, Serialize)]
pub(crate) struct SideJson {
    /// `dir`, `file`, `symlink`, or `special` (live sockets, fifos, devices).
    pub kind: &'static str,
    pub size: u64,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: String,
    pub target: Option<String>,
    /// The manifest's checksum (backup side), or the live file's when `--content` hashed it.
    pub sha256: Option<String>,
}

impl From<&Side> for SideJson {
    fn from(s: &Side) -> Self {
        SideJson {
            kind: s.kind,
            size: s.size,
            mode: s.mode,
            uid: s.uid,
            gid: s.gid,
            mtime: time(s.mtime),
            target: s.target.as_deref().map(text),
            sha256: s.sha256.clone(),
        }
    }
}

/// A path that differs.
#[derive(Debug, Serialize)]
pub(crate) struct DiffEntryJson {
    pub path: String,
    /// For a modified path: `kind`, `size`, `content`, `mtime`, `target`, `mode`, `owner`.
    pub changes: Vec<&'static str>,
    /// Null for a path added since the backup.
    pub backup: Option<SideJson>,
    /// Null for a path removed since the backup.
    pub live: Option<SideJson>,
}

impl From<&DiffEntry> for DiffEntryJson {
    fn from(e: &DiffEntry) -> Self {
        DiffEntryJson {
            path: text(&e.path),
            changes: e.changes.clone(),
            backup: e.backup.as_ref().map(SideJson::from),
            live: e.live.as_ref().map(SideJson::from),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct DiffSummary {
    pub added: usize,
    pub removed: usize,
    pub modified: usize,
    pub unchanged: u64,
}

/// `diff ID --json`: the live compose dir against the backup.
#[derive(Debug, Serialize)]
pub(crate) struct DiffDocument {
    pub backup_id: i64,
    pub from_manifest: bool,
    /// `--content`: files of equal size were compared by SHA-256.
    pub content_compared: bool,
    /// The exclude rules left out of the comparison (config and archive).
    pub excluded: Vec<String>,
    pub summary: DiffSummary,
    /// Live only: created since the backup.
    pub added: Vec<DiffEntryJson>,
    /// In the backup only: deleted since.
    pub removed: Vec<DiffEntryJson>,
    /// In both, different.
    pub modified: Vec<DiffEntryJson>,
}

/// A count and the first paths.
#[derive(Debug, Serialize)]
pub(crate) struct PathCount {
    pub count: usize,
    /// At most 50, in path order.
    pub first: Vec<String>,
}

impl PathCount {
    pub fn of(entries: &[DiffEntry]) -> Self {
        PathCount {
            count: entries.len(),
            first: entries.iter().take(50).map(|e| text(&e.path)).collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct SpaceJson {
    /// Bytes the staging needs on the compose dir's filesystem.
    pub needed_bytes: u64,
    /// With the margin the rollback requires (16 MiB or 5 %).
    pub needed_with_margin: u64,
    pub available_bytes: u64,
    /// The rollback's free-space check would pass.
    pub enough: bool,
}

/// `rollback --dry-run --json` / `rollback-data-only --dry-run --json`: nothing was changed.
#[derive(Debug, Serialize)]
pub(crate) struct DryRunDocument {
    pub dry_run: bool,
    pub backup_id: i64,
    /// `app`, `all` or `data-only`.
    pub scope: &'static str,
    /// Paths that differ live and would be replaced by the backup's version.
    pub replace: PathCount,
    /// Paths the backup has and the live tree lacks: would be restored.
    pub add: PathCount,
    /// Live paths the backup does not have: would be removed.
    pub remove: PathCount,
    /// Paths equal on both sides.
    pub unchanged: u64,
    pub space: SpaceJson,
    /// Running containers of the project the rollback would stop (and start again).
    pub would_stop: Vec<String>,
    /// A Docker engine was found (without one nothing is stopped).
    pub engine_found: bool,
    /// Exclude rules: what they match is never touched.
    pub excluded: Vec<String>,
}

/// `restore ID PATH... --to DIR --json`.
#[derive(Debug, Serialize)]
pub(crate) struct RestoreDocument {
    pub backup_id: i64,
    /// Absolute destination directory.
    pub dest: String,
    /// The chosen paths, restored under `dest` with their path inside the backup.
    pub paths: Vec<String>,
    pub files: u64,
    pub bytes: u64,
}
