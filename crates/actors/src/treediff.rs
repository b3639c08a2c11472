//! The live compose dir against a backup's listing: what `diff` shows and what
//! `rollback --dry-run` would change. Plain synchronous code; reads, never writes.
//!
//! Design note: both sides are restricted the same way a rollback is: the scope's top-level
//! items, minus our own `.nuwax-*` dirs, minus what the exclude rules match (config and
//! archive, paths and globs; an excluded directory with its subtree), so the dry run's counts
//! are the rollback's. The live walk never follows a symlink. A path is *modified* when its
//! type, size, symlink target, mode or owner differ, or a file's mtime (seconds, as the
//! archive keeps them); with `content`, files of equal size are hashed and compared with the
//! manifest's SHA-256. Directory mtimes are not compared (every restore sets them anyway).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::archive::{CancelFlag, EntryKind, Listing, TopLevelFilter};
use crate::error::{IoContext, Result};
use crate::exclude::Excludes;

/// One side of a compared path.
#[derive(Debug, Clone, PartialEq)]
pub struct Side {
    /// `dir`, `file`, `symlink`, or `special` (a socket, fifo or device: never archived).
    pub kind: &'static str,
    pub size: u64,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub target: Option<PathBuf>,
    pub sha256: Option<String>,
}

/// A path that differs.
#[derive(Debug, Clone)]
pub struct DiffEntry {
    /// Relative to the compose dir.
    pub path: PathBuf,
    /// In the backup (absent for a path added since).
    pub backup: Option<Side>,
    /// Live (absent for a path removed since).
    pub live: Option<Side>,
    /// For a modified path: what differs (`kind`, `size`, `content`, `mtime`, `target`,
    /// `mode`, `owner`).
    pub changes: Vec<&'static str>,
}

#[derive(Debug, Clone, Default)]
pub struct TreeDiff {
    /// Live only (added since the backup; a rollback removes them).
    pub added: Vec<DiffEntry>,
    /// In the backup only (removed since; a rollback puts them back).
    pub removed: Vec<DiffEntry>,
    /// In both, different (a rollback replaces them).
    pub modified: Vec<DiffEntry>,
    /// In both and equal.
    pub unchanged: u64,
    /// Files hashed to compare contents.
    pub hashed: u64,
}

/// Compares `root` (the live compose dir) with `listing` within `filter`, leaving out what
/// `excludes` matches.
pub fn diff(
    root: &Path,
    listing: &Listing,
    filter: &TopLevelFilter,
    excludes: &Excludes,
    content: bool,
    cancel: &CancelFlag,
) -> Result<TreeDiff> {
    let in_scope = |rel: &Path| -> bool {
        let first = rel.iter().next().unwrap_or_default();
        if !filter.includes(first) {
            return false;
        }
        // Excluded itself or below an excluded directory.
        let mut prefix = PathBuf::new();
        for c in rel.iter() {
            prefix.push(c);
            if excludes.is_excluded(&prefix) {
                return false;
            }
        }
        true
    };
    let mut backup: BTreeMap<PathBuf, Side> = BTreeMap::new();
    let mut by_path: BTreeMap<PathBuf, Side> = BTreeMap::new();
    for e in &listing.entries {
        let Some(bytes) = e.path_bytes() else {
            continue;
        };
        let path = PathBuf::from(OsStr::from_bytes(&bytes));
        let target = e
            .target_bytes()
            .map(|t| PathBuf::from(OsStr::from_bytes(&t)));
        let mut side = Side {
            kind: match e.kind {
                EntryKind::Dir => "dir",
                EntryKind::Symlink => "symlink",
                EntryKind::File | EntryKind::Hardlink => "file",
            },
            size: e.size,
            mode: e.mode & 0o7777,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            target: None,
            sha256: e.sha256.clone(),
        };
        match e.kind {
            // A later path of a stored inode: the same content as its target.
            EntryKind::Hardlink => {
                if let Some(t) = target.as_ref().and_then(|t| by_path.get(t)) {
                    side.size = t.size;
                    side.sha256 = t.sha256.clone();
                }
            }
            EntryKind::Symlink => side.target = target,
            _ => {}
        }
        by_path.insert(path.clone(), side.clone());
        if in_scope(&path) {
            backup.insert(path, side);
        }
    }
    drop(by_path);

    let mut live: BTreeMap<PathBuf, Side> = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(dir) = stack.pop() {
        cancel.check()?;
        let full = root.join(&dir);
        let rd = match std::fs::read_dir(&full) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(crate::error::Error::io("cannot list", &full, e)),
        };
        for e in rd {
            let e = e.ctx("cannot list", &full)?;
            let rel = dir.join(e.file_name());
            if !in_scope(&rel) {
                continue;
            }
            let path = root.join(&rel);
            let m = std::fs::symlink_metadata(&path).ctx("cannot stat", &path)?;
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                stack.push(rel.clone());
                "dir"
            } else if ft.is_file() {
                "file"
            } else if ft.is_symlink() {
                "symlink"
            } else {
                "special"
            };
            let target = if ft.is_symlink() {
                Some(std::fs::read_link(&path).ctx("cannot read link", &path)?)
            } else {
                None
            };
            live.insert(
                rel,
                Side {
                    kind,
                    size: if ft.is_file() { m.len() } else { 0 },
                    mode: m.mode() & 0o7777,
                    uid: m.uid().into(),
                    gid: m.gid().into(),
                    mtime: m.mtime(),
                    target,
                    sha256: None,
                },
            );
        }
    }

    let mut out = TreeDiff::default();
    for (path, b) in backup {
        match live.remove(&path) {
            None => out.removed.push(DiffEntry {
                path,
                backup: Some(b),
                live: None,
                changes: Vec::new(),
            }),
            Some(mut l) => {
                cancel.check()?;
                let mut changes = Vec::new();
                if b.kind != l.kind {
                    changes.push("kind");
                } else {
                    if b.size != l.size {
                        changes.push("size");
                    } else if content && b.kind == "file" {
                        let full = root.join(&path);
                        l.sha256 = Some(sha256_of(&full)?);
                        out.hashed += 1;
                        if b.sha256.is_some() && l.sha256 != b.sha256 {
                            changes.push("content");
                        }
                    }
                    if b.kind == "file" && b.mtime != l.mtime {
                        changes.push("mtime");
                    }
                    if b.target != l.target {
                        changes.push("target");
                    }
                    if b.kind != "symlink" && b.mode != l.mode {
                        changes.push("mode");
                    }
                    if (b.uid, b.gid) != (l.uid, l.gid) {
                        changes.push("owner");
                    }
                }
                if changes.is_empty() {
                    out.unchanged += 1;
                } else {
                    out.modified.push(DiffEntry {
                        path,
                        backup: Some(b),
                        live: Some(l),
                        changes,
                    });
                }
            }
        }
    }
    out.added = live
        .into_iter()
        .map(|(path, l)| DiffEntry {
            path,
            backup: None,
            live: Some(l),
            changes: Vec::new(),
        })
        .collect();
    Ok(out)
}

fn sha256_of(path: &Path) -> Result<String> {
    let mut f = File::open(path).ctx("cannot open", path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).ctx("cannot read", path)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
