//! Archive metadata types (`info.json`, `manifest.json`). Field names are the archive format:
//! add optional fields only, never rename.

use serde::{Deserialize, Serialize};

use crate::exclude::ExcludeRule;
use crate::relpath::TopName;

/// Directory inside the archive that holds our metadata entries.
pub const META_DIR: &str = ".nuwax-backup";
pub const INFO_PATH: &str = ".nuwax-backup/info.json";
pub const MANIFEST_PATH: &str = ".nuwax-backup/manifest.json";
pub const FORMAT_VERSION: u32 = 1;

/// Written first in every archive; enough to rebuild a catalog row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchiveInfo {
    pub format: u32,
    /// `nuwax-cli <version>`.
    pub tool: String,
    /// `Manual`, `PreUpgrade` or `Auto`.
    pub backup_type: String,
    pub service_version: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub compose_project: String,
    /// Top-level names of the data scope at backup time. Parsed as [`TopName`]s: an archive
    /// naming anything else is refused as corrupt.
    pub data_paths: Vec<TopName>,
    /// Paths and glob patterns left out of the archive (config `exclude`, see `exclude.rs`):
    /// a restore never touches what they match. Parsed as [`ExcludeRule`]s (clean relative
    /// paths or valid globs, no `..`, not absolute): an archive naming anything else is
    /// refused as corrupt.
    pub excluded: Vec<ExcludeRule>,
    /// Images of the project's containers at backup time.
    #[serde(default)]
    pub images: Vec<ImageRecord>,
    /// Bytes of file content per top-level item (what a restore of that item needs).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub top_level_bytes: std::collections::BTreeMap<TopName, u64>,
    /// Database dumps stored under `.nuwax-backup/dumps/` (right after this file), each with
    /// its size and checksum: every read of the archive checks them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dumps: Vec<DumpRecord>,
    /// Taken while the services ran (`backup --hot`): the paths in `excluded` include each
    /// dump's `hot_exclude` (live datadirs), whose content is in the dumps instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hot: bool,
}

/// One database dump in the archive (`.nuwax-backup/dumps/SERVICE.sql`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DumpRecord {
    /// The compose service it was taken from (a checked name: the file name is made of it).
    pub service: crate::dumps::ServiceName,
    pub kind: crate::dumps::DumpKind,
    pub size: u64,
    /// SHA-256 of the dump, lowercase hex.
    pub sha256: String,
}

impl DumpRecord {
    /// Its path inside the archive.
    pub fn archive_path(&self) -> String {
        crate::dumps::archive_path(&self.service)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub service: String,
    pub container: String,
    pub image: String,
    pub image_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
    Hardlink,
}

/// One tar entry. `path` is the UTF-8 path; a non-UTF-8 path is stored hex-encoded in
/// `path_hex` instead (and likewise `target`/`target_hex`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
    pub kind: EntryKind,
    pub size: u64,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_hex: Option<String>,
    /// Regular files: the rest of the lstat that says whether the file changed since (the
    /// next backup's change detection). Absent in archives of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat: Option<FileStat>,
}

/// What a backup records of a regular file's lstat besides the tar header's fields, so the
/// next backup can tell it is unchanged (as restic and borg do): size, mode, owner and mtime
/// are in the entry already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    pub mtime_ns: u32,
    pub ctime: i64,
    pub ctime_ns: u32,
    pub ino: u64,
    pub dev: u64,
}

/// The member layout rules an archive was written with: a regular file of at least
/// `big_file` bytes starts its own gzip members (its long-name records, header, data and
/// padding, and nothing else); every other chunk holds `chunk` bytes of the tar stream.
/// Two archives with equal layouts hold identical bytes for identical input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub level: u32,
    pub chunk: u64,
    pub big_file: u64,
    /// The members of a regular file of at least `align_from` bytes start at an archive
    /// offset that is a multiple of `align`, padded to it by empty members (so a copy of
    /// them can be a block clone). 0 (archives of earlier versions, encrypted ones): none.
    #[serde(default)]
    pub align: u64,
    #[serde(default)]
    pub align_from: u64,
}

impl Layout {
    /// Whether the members of a big file of `size` bytes start aligned.
    pub fn aligns(&self, size: u64) -> bool {
        self.align > 0 && size >= self.align_from.max(self.big_file)
    }
}

/// The compressed bytes of one big file's members: `len` bytes at `offset` of the archive
/// file, with their SHA-256, for entry number `entry` (from 0) of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub entry: u64,
    pub offset: u64,
    pub len: u64,
    pub sha256: String,
    /// The span's members that hold file data only (neither the tar header nor the final
    /// padding), in order: a later backup of the file, changed elsewhere, copies those whose
    /// data is unchanged. Absent in archives of earlier versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<Chunk>,
}

/// One member of a big file that holds `Layout::chunk` bytes of its data and nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Where its data starts in the file.
    pub at: u64,
    /// SHA-256 of that data (lowercase hex).
    pub plain: String,
    /// The member: `len` bytes at `offset` of the archive, with their SHA-256.
    pub offset: u64,
    pub len: u64,
    pub sha256: String,
}

/// Written last in every archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub info: ArchiveInfo,
    pub entries: Vec<ManifestEntry>,
    /// The member layout (absent in archives of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
    /// Where each big file's members are (see [`Layout`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spans: Vec<Span>,
}

impl ManifestEntry {
    /// The entry's path as raw bytes.
    pub fn path_bytes(&self) -> Option<Vec<u8>> {
        field_bytes(&self.path, &self.path_hex)
    }
    /// The link target as raw bytes (symlinks and hard links).
    pub fn target_bytes(&self) -> Option<Vec<u8>> {
        field_bytes(&self.target, &self.target_hex)
    }
}

/// Splits raw bytes into the (`text`, `hex`) pair used by [`ManifestEntry`].
pub fn encode_bytes(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (Some(s.to_owned()), None),
        Err(_) => (None, Some(hex::encode(bytes))),
    }
}

fn field_bytes(text: &Option<String>, hex_: &Option<String>) -> Option<Vec<u8>> {
    match (text, hex_) {
        (Some(s), _) => Some(s.as_bytes().to_vec()),
        (None, Some(h)) => hex::decode(h).ok(),
        (None, None) => None,
    }
}
