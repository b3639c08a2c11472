//! Safe, verified extraction of (part of) an archive into an empty staging directory.
//!
//! Design note: nothing here trusts the archive. Each entry passes the rules in `check.rs`
//! before anything touches the disk: clean relative path, no duplicate, nothing beneath a
//! symlink or file of the archive, hard links only to earlier regular files of the same
//! top-level item, only the four entry kinds we write. The staging dir starts empty and only
//! this code writes into it, so every path component inside it is a directory we created;
//! files are created with `O_EXCL | O_NOFOLLOW`, symlinks are created and never opened, and
//! directories get their final mode, owner and mtime through an `O_NOFOLLOW` handle after
//! all content is written (deepest first, so a read-only directory can still be filled and
//! its mtime is not disturbed afterwards). Entries outside the filter are read and hashed
//! but not written. At the end every entry read is compared with the manifest (kinds, sizes,
//! modes, owners, mtimes, link targets, content SHA-256) and any difference fails the
//! extraction: the caller then deletes the staging dir, and live data was never touched.
//!
//! Durability is the caller's: files are not fsynced here (one fsync per file would dominate
//! the run time); sync the staging filesystem before the swap commits.

use std::collections::{BTreeSet, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;

use super::check::{
    CopyError, Meta, Parsed, ProgressMap, Refusal, Tracker, check_trailing, compare_manifest,
    copy_entry_data, display_bytes, parse_entry, resolve_threads, stream_error, top_level,
};
use super::{CancelFlag, EntryKind, ExtractOptions, ExtractReport, pgzip};
use crate::error::{Error, IoContext, Result};
use crate::{Phase, Progress};

const BUF: usize = 1 << 20;
/// Differences from the manifest named in the error message (the rest are counted).
const MAX_LISTED: usize = 5;

/// Extracts the entries of `opts.archive` whose top-level item `opts.filter` includes into
/// `opts.staging` (which must exist and be empty), verifying everything against the manifest.
pub fn extract(
    opts: &ExtractOptions,
    progress: &Progress,
    cancel: &CancelFlag,
) -> Result<ExtractReport> {
    let staging = &opts.staging;
    let meta = fs::symlink_metadata(staging).ctx("cannot open staging dir", staging)?;
    if !meta.is_dir() {
        return Err(Error::Usage(format!(
            "staging dir {} is not a directory",
            staging.display()
        )));
    }
    if fs::read_dir(staging)
        .ctx("cannot list staging dir", staging)?
        .next()
        .is_some()
    {
        return Err(Error::Usage(format!(
            "staging dir {} is not empty",
            staging.display()
        )));
    }

    let archive_path = opts.archive.as_path();
    let refuse = |r: Refusal| r.into_error(archive_path);
    let file = File::open(archive_path).ctx("cannot open archive", archive_path)?;
    let total = file
        .metadata()
        .ctx("cannot stat archive", archive_path)?
        .len();
    let index = file.try_clone().ctx("cannot open archive", archive_path)?;
    let reader = pgzip::open_reader(file, resolve_threads(opts.threads))
        .map_err(|e| refuse(stream_error(e, "not a valid gzip file")))?;
    let (position, reader) = ProgressMap::new(&index, total, reader);
    drop(index);
    progress.phase(Phase::Extracting, position.total(), None);
    let mut archive = tar::Archive::new(reader);

    let mut out = Writer {
        staging,
        restore_owner: opts.restore_owner,
        created_dirs: HashSet::new(),
        deferred_dirs: Vec::new(),
    };
    let mut meta = Meta::new();
    let mut tracker = Tracker::default();
    let mut observed = Vec::new();
    let mut top: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut buf = vec![0u8; BUF];
    let (mut entries, mut files, mut bytes) = (0u64, 0u64, 0u64);
    let mut mid_reached = false;

    let tar_entries = archive
        .entries()
        .map_err(|e| refuse(stream_error(e, "reading the tar stream")))?;
    for entry in tar_entries {
        cancel.check()?;
        let mut entry = entry.map_err(|e| refuse(stream_error(e, "reading the tar stream")))?;
        let parsed = parse_entry(&entry).map_err(refuse)?;
        if meta.accept(&parsed, &mut entry).map_err(refuse)? {
            continue;
        }
        tracker.admit(&parsed).map_err(refuse)?;
        let name = top_level(&parsed.path);
        let included = opts.filter.includes(OsStr::from_bytes(name));
        let sha = match parsed.kind {
            EntryKind::File => {
                let mut target = if included {
                    Some(out.create_file(&parsed)?)
                } else {
                    None
                };
                let sha = copy_entry_data(
                    &mut entry,
                    target.as_mut().map(|(f, _)| f as &mut dyn Write),
                    parsed.size,
                    &mut buf,
                    &parsed.path,
                    &mut |_| {
                        let current = Path::new(OsStr::from_bytes(&parsed.path));
                        progress.advance(position.position(), entries, Some(current));
                    },
                );
                let sha = match sha {
                    Ok(s) => s,
                    Err(CopyError::Read(r)) => return Err(refuse(r)),
                    Err(CopyError::Write(e)) => {
                        let p = target.map(|(_, p)| p).unwrap_or_default();
                        return Err(Error::io("cannot write", p, e));
                    }
                };
                if let Some((f, p)) = target {
                    out.finish_file(&parsed, f, &p)?;
                    files += 1;
                    bytes += parsed.size;
                }
                Some(sha)
            }
            EntryKind::Dir => {
                if included {
                    out.create_dir(&parsed)?;
                }
                None
            }
            EntryKind::Symlink => {
                if included {
                    out.create_symlink(&parsed)?;
                }
                None
            }
            EntryKind::Hardlink => {
                if included {
                    out.create_hardlink(&parsed)?;
                }
                None
            }
        };
        if included {
            entries += 1;
            if !top.contains(name) {
                top.insert(name.to_vec());
            }
        }
        observed.push(parsed.to_manifest_entry(sha));
        let p = position.position();
        progress.advance(p, entries, Some(Path::new(OsStr::from_bytes(&parsed.path))));
        if !mid_reached && p.saturating_mul(2) >= position.total().unwrap_or(u64::MAX) {
            mid_reached = true;
            crate::faults::point("extract.mid");
        }
    }
    if !mid_reached {
        crate::faults::point("extract.mid");
    }
    let mut rest = archive.into_inner();
    check_trailing(&mut rest).map_err(refuse)?;
    let (_, manifest) = meta.finish().map_err(refuse)?;
    let problems = compare_manifest(manifest, &observed);
    if !problems.is_empty() {
        let mut detail = problems[..problems.len().min(MAX_LISTED)].join("; ");
        if problems.len() > MAX_LISTED {
            detail.push_str(&format!(
                "; and {} more differences",
                problems.len() - MAX_LISTED
            ));
        }
        return Err(Error::Corrupt {
            path: archive_path.to_path_buf(),
            detail: format!("does not match its manifest: {detail}"),
        });
    }
    out.finish_dirs()?;
    progress.finish_phase(position.end(), entries);
    let manifest = meta
        .manifest
        .take()
        .ok_or_else(|| Error::Internal("manifest vanished".into()))?;
    Ok(ExtractReport {
        top_level: top.into_iter().map(OsString::from_vec).collect(),
        entries,
        files,
        bytes,
        manifest,
    })
}

/// Creates entries inside the staging dir.
struct Writer<'a> {
    staging: &'a Path,
    restore_owner: bool,
    /// Directories created so far (relative paths).
    created_dirs: HashSet<Vec<u8>>,
    /// Explicit directory entries, in creation order; finished in reverse.
    deferred_dirs: Vec<(PathBuf, Parsed)>,
}

impl Writer<'_> {
    fn full(&self, rel: &[u8]) -> PathBuf {
        self.staging.join(OsStr::from_bytes(rel))
    }

    /// Mode bits to apply: setuid/setgid only when ownership is restored too.
    fn mode(&self, mode: u32) -> u32 {
        if self.restore_owner {
            mode & 0o7777
        } else {
            mode & 0o1777
        }
    }

    fn owner(&self, e: &Parsed) -> Result<Option<(u32, u32)>> {
        if !self.restore_owner {
            return Ok(None);
        }
        match (u32::try_from(e.uid), u32::try_from(e.gid)) {
            (Ok(u), Ok(g)) => Ok(Some((u, g))),
            _ => Err(Error::Corrupt {
                path: self.staging.to_path_buf(),
                detail: format!(
                    "entry {:?}: owner {}:{} out of range",
                    display_bytes(&e.path),
                    e.uid,
                    e.gid
                ),
            }),
        }
    }

    /// Creates the missing ancestors of `rel` (plain directories, nothing special set).
    fn ensure_parents(&mut self, rel: &[u8]) -> Result<()> {
        for (i, _) in rel.iter().enumerate().filter(|(_, b)| **b == b'/') {
            let ancestor = &rel[..i];
            if !self.created_dirs.contains(ancestor) {
                let full = self.full(ancestor);
                fs::create_dir(&full).ctx("cannot create directory", &full)?;
                self.created_dirs.insert(ancestor.to_vec());
            }
        }
        Ok(())
    }

    fn create_dir(&mut self, e: &Parsed) -> Result<()> {
        self.ensure_parents(&e.path)?;
        let full = self.full(&e.path);
        if !self.created_dirs.contains(&e.path) {
            // Private until finished; the final mode is set at the end.
            DirBuilder::new()
                .mode(0o700)
                .create(&full)
                .ctx("cannot create directory", &full)?;
            self.created_dirs.insert(e.path.clone());
        }
        self.deferred_dirs.push((full, e.clone()));
        Ok(())
    }

    fn create_file(&mut self, e: &Parsed) -> Result<(File, PathBuf)> {
        self.ensure_parents(&e.path)?;
        let full = self.full(&e.path);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&full)
            .ctx("cannot create", &full)?;
        Ok((file, full))
    }

    /// Owner, then mode (chown clears setuid bits), then mtime, all through the handle.
    fn finish_file(&self, e: &Parsed, file: File, full: &Path) -> Result<()> {
        self.apply(e, &file, full)
    }

    fn apply(&self, e: &Parsed, file: &File, full: &Path) -> Result<()> {
        if let Some((uid, gid)) = self.owner(e)? {
            std::os::unix::fs::fchown(file, Some(uid), Some(gid)).ctx("cannot chown", full)?;
        }
        file.set_permissions(Permissions::from_mode(self.mode(e.mode)))
            .ctx("cannot chmod", full)?;
        let t = FileTime::from_unix_time(e.mtime, 0);
        filetime::set_file_handle_times(file, Some(t), Some(t))
            .ctx("cannot set modification time of", full)
    }

    fn create_symlink(&mut self, e: &Parsed) -> Result<()> {
        self.ensure_parents(&e.path)?;
        let full = self.full(&e.path);
        let target = OsStr::from_bytes(e.target.as_deref().unwrap_or_default());
        std::os::unix::fs::symlink(target, &full).ctx("cannot create symlink", &full)?;
        if let Some((uid, gid)) = self.owner(e)? {
            std::os::unix::fs::lchown(&full, Some(uid), Some(gid)).ctx("cannot chown", &full)?;
        }
        let t = FileTime::from_unix_time(e.mtime, 0);
        filetime::set_symlink_file_times(&full, t, t).ctx("cannot set modification time of", &full)
    }

    fn create_hardlink(&mut self, e: &Parsed) -> Result<()> {
        self.ensure_parents(&e.path)?;
        let full = self.full(&e.path);
        // The tracker admitted the target as an earlier regular file of the same top-level
        // item, so it was written here; link(2) does not follow a symlink given as source.
        let target = self.full(e.target.as_deref().unwrap_or_default());
        fs::hard_link(&target, &full).ctx("cannot create hard link", &full)
    }

    /// Sets directories' owner, mode and mtime, deepest first (children before parents even
    /// if the archive listed a parent late).
    fn finish_dirs(&mut self) -> Result<()> {
        let depth = |e: &Parsed| e.path.iter().filter(|&&b| b == b'/').count();
        self.deferred_dirs
            .sort_by_key(|d| std::cmp::Reverse(depth(&d.1)));
        for (full, e) in &self.deferred_dirs {
            let dir = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
                .open(full)
                .ctx("cannot open directory", full)?;
            self.apply(e, &dir, full)?;
        }
        Ok(())
    }
}
