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
//! modes, owners, mtimes, link targets, content SHA-256; through fingerprints, see
//! `check/digest.rs`, so that no list of entries is kept) and any difference fails the
//! extraction: the caller then deletes the staging dir, and live data was never touched.
//!
//! Directories, symlinks and files are made, and file contents hashed, written and
//! finished, on the worker threads of a [`FilePool`] (see `filepool.rs`); this thread reads
//! the stream, checks every entry and makes hard links (after the pool has made everything
//! before them). The pool is drained before the manifest comparison and before directories
//! are finished, and joined before this function returns.
//!
//! Durability: files are not fsynced one by one (one fsync per file would dominate the run
//! time). With `durable` set, the staging filesystem is written back while the extraction
//! goes on and synced once more before `extract` returns `Ok` ([`SyncBehind`]); without it,
//! nothing is synced.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::check::{
    EntryDigest, Meta, Parsed, ProgressMap, Refusal, Tracker, check_trailing, display_bytes,
    parse_entry, stream_error, top_level,
};
use super::filepool::{
    FilePool, Link, PIECE, SMALL, Target, apply_meta, dir_mode_at_creation, open_dir, with_parents,
};
use super::format::MANIFEST_PATH;
use super::threads::resolve_threads;
use super::verify::Expect;
use super::{CancelFlag, EntryKind, ExtractOptions, ExtractReport};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::SyncBehind;
use crate::progress::{Phase, Progress};
use filetime::FileTime;

/// Differences from the manifest named in the error message (the rest are counted).
const MAX_LISTED: usize = 5;

/// Extracts the entries of `opts.archive` whose top-level item `opts.filter` includes into
/// `opts.staging` (which must exist and be empty), verifying everything against the manifest
/// and, given `opts.expected_sha256`, the whole file against that checksum.
///
/// The checksum is computed on a thread of its own while the entries are extracted (one
/// pass over the archive instead of two, and the hashing runs beside the decompression),
/// and compared before this returns: the staging dir may have been filled from a file that
/// is not the one the catalog recorded, but the extraction treats every archive as hostile
/// anyway, and the caller swaps nothing in unless this returns `Ok`. A mismatch is the error
/// reported even when the extraction failed too: it says what happened (the file changed).
pub fn extract(
    opts: &ExtractOptions,
    progress: &Progress,
    cancel: &CancelFlag,
) -> Result<ExtractReport> {
    let sync = if opts.durable {
        Some(SyncBehind::start(&opts.staging)?)
    } else {
        None
    };
    let report = extract_checked(opts, progress, cancel)?;
    if let Some(sync) = sync {
        sync.finish()?;
    }
    Ok(report)
}

fn extract_checked(
    opts: &ExtractOptions,
    progress: &Progress,
    cancel: &CancelFlag,
) -> Result<ExtractReport> {
    let Some(expected) = &opts.expected_sha256 else {
        return extract_entries(opts, progress, cancel);
    };
    let path = opts.archive.clone();
    let hash_cancel = cancel.clone();
    let hasher = std::thread::Builder::new()
        .name("archive-sha256".into())
        .spawn(move || super::sha256_file(&path, &Progress::none(), &hash_cancel))
        .map_err(|e| Error::Internal(format!("cannot start the checksum thread: {e}")))?;
    let result = extract_entries(opts, progress, cancel);
    let actual = hasher
        .join()
        .unwrap_or_else(|_| Err(Error::Internal("the checksum thread panicked".into())));
    match actual {
        Ok(actual) if actual.eq_ignore_ascii_case(expected) => result,
        Ok(actual) => Err(Error::ChecksumMismatch {
            path: opts.archive.clone(),
            expected: expected.clone(),
            actual,
        }),
        Err(e) => result.and(Err(e)),
    }
}

fn extract_entries(
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
    let threads = resolve_threads(opts.threads);
    let reader = super::crypt::open_plain(archive_path, file, opts.key.as_ref(), threads, |e| {
        refuse(stream_error(e, "not a valid gzip file"))
    })?;
    let (position, reader) = ProgressMap::new(&index, total, reader);
    drop(index);
    progress.phase(Phase::Extracting, position.total(), None);
    let mut archive = tar::Archive::new(reader);

    let mut out = Writer {
        staging,
        restore_owner: opts.restore_owner,
        born_owner: born_owner(&meta),
        deferred_dirs: DeferredDirs::default(),
    };
    let mut meta = Meta::new();
    let mut tracker = Tracker::default();
    // The entries read, as a fingerprint: compared with the manifest's at the end.
    let mut digest = EntryDigest::default();
    let mut top: BTreeSet<Vec<u8>> = BTreeSet::new();
    // Taken (joined) at the manifest, the last entry: see below.
    let mut pool = Some(FilePool::new(threads, staging)?);
    let no_pool = || Error::Internal("file writers already finished".into());
    let (mut entries, mut files, mut bytes) = (0u64, 0u64, 0u64);
    let mut mid_reached = false;

    let tar_entries = archive
        .entries()
        .map_err(|e| refuse(stream_error(e, "reading the tar stream")))?;
    for entry in tar_entries {
        cancel.check()?;
        if let Some(pool) = &pool {
            pool.check()?;
        }
        let mut entry = entry.map_err(|e| refuse(stream_error(e, "reading the tar stream")))?;
        let parsed = parse_entry(&entry).map_err(refuse)?;
        // A legacy archive has no metadata entries: the tracker below refuses the reserved
        // names, `.nuwax-backup/` included, and the given manifest is compared at the end.
        if opts.manifest.is_none() && parsed.path == MANIFEST_PATH.as_bytes() {
            // The manifest comes last (`Meta` refuses anything after it): every file is
            // complete once the pool is joined, so the manifest can be compared with the
            // observed entries while it is parsed, and what only content entries need can go.
            if let Some(pool) = pool.take() {
                digest.merge_sums(pool.finish()?);
            }
            tracker = Tracker::default();
        }
        if opts.manifest.is_none() && meta.accept_digest(&parsed, &mut entry).map_err(refuse)? {
            continue;
        }
        tracker.admit(&parsed).map_err(refuse)?;
        let slot = digest.entry(&parsed.fields());
        let name = top_level(&parsed.path);
        let included = opts.filter.includes(OsStr::from_bytes(name))
            && (opts.select.is_empty()
                || opts
                    .select
                    .iter()
                    .any(|s| Path::new(OsStr::from_bytes(&parsed.path)).starts_with(s.as_path())));
        if included
            && parsed.kind == EntryKind::Hardlink
            && !opts.select.is_empty()
            && !opts.select.iter().any(|s| {
                Path::new(OsStr::from_bytes(
                    parsed.target.as_deref().unwrap_or_default(),
                ))
                .starts_with(s.as_path())
            })
        {
            return Err(Error::Usage(format!(
                "{} is a hard link to {}, which is not among the chosen paths; name it too",
                display_bytes(&parsed.path),
                display_bytes(parsed.target.as_deref().unwrap_or_default())
            )));
        }
        match parsed.kind {
            EntryKind::File => {
                // Written and hashed by the pool; the checksum is filled in at the manifest.
                let target = if included {
                    Some(out.file_target(&parsed)?)
                } else {
                    None
                };
                let pool = pool.as_mut().ok_or_else(no_pool)?;
                let dir = parent_of(&parsed.path);
                if parsed.size <= SMALL {
                    // `SMALL` fits in usize.
                    let len = parsed.size as usize;
                    pool.small(slot as usize, target, dir, len, |buf| {
                        fill(&mut entry, buf, 0, parsed.size, &parsed.path, &refuse)
                    })?;
                } else {
                    pool.begin(slot as usize, target, dir, parsed.size)?;
                    send_entry_data(
                        &mut entry,
                        pool,
                        parsed.size,
                        &parsed.path,
                        &refuse,
                        &mut || {
                            let current = Path::new(OsStr::from_bytes(&parsed.path));
                            progress.advance(position.position(), entries, Some(current));
                        },
                    )?;
                    pool.end()?;
                }
                if included {
                    files += 1;
                    bytes = bytes.checked_add(parsed.size).ok_or_else(|| {
                        refuse(Refusal::Corrupt(format!(
                            "entry {:?}: the sizes of the entries add up to more than {} bytes",
                            display_bytes(&parsed.path),
                            u64::MAX
                        )))
                    })?;
                }
            }
            EntryKind::Dir => {
                if included {
                    let (full, settled) = out.dir(&parsed)?;
                    pool.as_mut()
                        .ok_or_else(no_pool)?
                        .dir(full, &parsed.path, settled)?;
                }
            }
            EntryKind::Symlink => {
                if included {
                    let link = out.symlink(&parsed)?;
                    let dir = parent_of(&parsed.path);
                    pool.as_mut().ok_or_else(no_pool)?.symlink(link, dir)?;
                }
            }
            EntryKind::Hardlink => {
                if included {
                    // The link target is an earlier file: wait until the pool created it.
                    pool.as_mut().ok_or_else(no_pool)?.barrier()?;
                    out.create_hardlink(&parsed)?;
                }
            }
        }
        if included {
            entries += 1;
            if !top.contains(name) {
                top.insert(name.to_vec());
            }
        }
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
    if let Some(pool) = pool.take() {
        digest.merge_sums(pool.finish()?);
    }
    // The fingerprint of what the entries should be: the archive's own manifest (streamed
    // at its end), or the one given (a legacy backup's, from the catalog).
    let (expected, expect) = match &opts.manifest {
        Some(given) => (Some(EntryDigest::of_manifest(given)), Expect::Given(given)),
        None => {
            meta.finish().map_err(refuse)?;
            (meta.digest.take(), Expect::EmbeddedExact)
        }
    };
    let problems = if expected.is_some_and(|m| m.matches(&digest)) {
        Vec::new()
    } else {
        // The archive differs from its manifest somewhere: the exact comparison (reading
        // the archive again, keeping every entry) says where, or finds the difference
        // harmless (a manifest in another order or spelling).
        super::verify::manifest_problems(archive_path, opts.key.as_ref(), expect, threads, cancel)?
    };
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
    out.finish_dirs(threads)?;
    progress.finish_phase(position.end(), entries);
    let info = match &opts.manifest {
        Some(given) => given.info.clone(),
        None => {
            meta.manifest
                .take()
                .ok_or_else(|| Error::Internal("manifest vanished".into()))?
                .info
        }
    };
    Ok(ExtractReport {
        top_level: top.into_iter().map(OsString::from_vec).collect(),
        entries,
        files,
        bytes,
        info,
    })
}

/// Owner, mode and mtime a directory gets once its content is complete, and where its path
/// lies in [`DeferredDirs::paths`]: 40 bytes plus the relative path per directory (an
/// absolute `PathBuf` each took about 180 bytes, 38 MB for the 212 000 directories of a
/// `node_modules` tree).
struct DirMeta {
    /// Start of the relative path in the arena.
    start: u64,
    len: u32,
    /// Number of `/` in its path: deeper directories are finished first.
    depth: u32,
    mode: u32,
    /// `(uid, gid)` when ownership is restored.
    owner: Option<(u32, u32)>,
    mtime: i64,
}

/// The explicit directory entries, finished deepest first at the end: their relative paths
/// back to back in one buffer, and a fixed-size record each.
#[derive(Default)]
struct DeferredDirs {
    paths: Vec<u8>,
    dirs: Vec<DirMeta>,
}

impl DeferredDirs {
    fn path(&self, d: &DirMeta) -> &[u8] {
        // The range was pushed by `push`, so it lies within `paths`.
        let start = d.start as usize;
        &self.paths[start..start + d.len as usize]
    }
}

/// Creates entries inside the staging dir.
struct Writer<'a> {
    staging: &'a Path,
    restore_owner: bool,
    /// The owner every entry created in the staging dir gets: this process's effective uid
    /// and gid, unless the staging dir has the setgid bit (then new entries take its group,
    /// and `None`: every owner is set).
    born_owner: Option<(u32, u32)>,
    /// Explicit directory entries, in creation order; finished deepest first.
    deferred_dirs: DeferredDirs,
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
            // Already theirs: no chown (one system call less per entry).
            (Ok(u), Ok(g)) if Some((u, g)) == self.born_owner => Ok(None),
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

    /// A directory entry: where it goes, and the mode the pool makes it with when that is
    /// its final mode (else it is private until finished); its final owner, mode and mtime
    /// are kept for [`Writer::finish_dirs`].
    fn dir(&mut self, e: &Parsed) -> Result<(PathBuf, Option<u32>)> {
        let too_long = || Error::Corrupt {
            path: self.staging.to_path_buf(),
            detail: format!("entry {:?}: path too long", display_bytes(&e.path)),
        };
        let mode = self.mode(e.mode);
        let finish = DirMeta {
            start: self.deferred_dirs.paths.len() as u64,
            len: u32::try_from(e.path.len()).map_err(|_| too_long())?,
            depth: u32::try_from(e.path.iter().filter(|&&b| b == b'/').count())
                .map_err(|_| too_long())?,
            owner: self.owner(e)?,
            mode,
            mtime: e.mtime,
        };
        self.deferred_dirs.paths.extend_from_slice(&e.path);
        self.deferred_dirs.dirs.push(finish);
        Ok((self.full(&e.path), dir_mode_at_creation(mode)))
    }

    /// Where a regular file goes and what it gets when complete. The pool creates it
    /// (`O_EXCL | O_NOFOLLOW`, with its parents if they are not there yet) and then sets
    /// owner, mode (chown clears setuid bits) and mtime through the handle.
    fn file_target(&mut self, e: &Parsed) -> Result<Target> {
        Ok(Target {
            full: self.full(&e.path),
            owner: self.owner(e)?,
            mode: self.mode(e.mode),
            mtime: e.mtime,
        })
    }

    /// A symlink for the pool to create (then owner and mtime, never following it).
    fn symlink(&mut self, e: &Parsed) -> Result<Link> {
        Ok(Link {
            full: self.full(&e.path),
            target: PathBuf::from(OsStr::from_bytes(e.target.as_deref().unwrap_or_default())),
            owner: self.owner(e)?,
            mtime: e.mtime,
        })
    }

    /// Called once the pool has made every earlier entry (a barrier).
    fn create_hardlink(&mut self, e: &Parsed) -> Result<()> {
        let full = self.full(&e.path);
        // The tracker admitted the target as an earlier regular file of the same top-level
        // item, so it was written here; link(2) does not follow a symlink given as source.
        let target = self.full(e.target.as_deref().unwrap_or_default());
        with_parents(self.staging, &full, || fs::hard_link(&target, &full))
            .ctx("cannot create hard link", &full)
    }

    /// Sets directories' owner, mode and mtime, deepest first (children before parents even
    /// if the archive listed a parent late: a parent made read-only or unsearchable last
    /// cannot stop its children from being finished). The directories of one depth are
    /// finished on `threads` threads (five system calls each; a `node_modules` tree has tens
    /// of thousands), one depth after the other.
    fn finish_dirs(&mut self, threads: usize) -> Result<()> {
        // Unstable: no scratch buffer, and siblings may be finished in any order.
        self.deferred_dirs
            .dirs
            .sort_unstable_by_key(|d| std::cmp::Reverse(d.depth));
        let finish = |dirs: &[DirMeta]| -> Result<()> {
            for d in dirs {
                let full = self.full(self.deferred_dirs.path(d));
                if dir_mode_at_creation(d.mode).is_some() {
                    // Mode set at creation (by the pool, from the same rule): owner and
                    // mtime by path, never following the last component (one or two system
                    // calls instead of five; the directories above it are the extraction's
                    // own).
                    if let Some((uid, gid)) = d.owner {
                        std::os::unix::fs::lchown(&full, Some(uid), Some(gid))
                            .ctx("cannot chown", &full)?;
                    }
                    let t = FileTime::from_unix_time(d.mtime, 0);
                    filetime::set_symlink_file_times(&full, t, t)
                        .ctx("cannot set modification time of", &full)?;
                    continue;
                }
                apply_meta(&open_dir(&full)?, &full, d.owner, d.mode, d.mtime)?;
            }
            Ok(())
        };
        for level in self.deferred_dirs.dirs.chunk_by(|a, b| a.depth == b.depth) {
            if threads < 2 || level.len() < PARALLEL_DIRS {
                finish(level)?;
                continue;
            }
            std::thread::scope(|scope| {
                let workers: Vec<_> = level
                    .chunks(level.len().div_ceil(threads))
                    .map(|part| scope.spawn(move || finish(part)))
                    .collect();
                workers.into_iter().try_for_each(|w| {
                    w.join().unwrap_or_else(|_| {
                        Err(Error::Internal("a directory thread panicked".into()))
                    })
                })
            })?;
        }
        Ok(())
    }
}

/// The directory part of a relative path (empty at the top).
fn parent_of(path: &[u8]) -> &[u8] {
    &path[..path.iter().rposition(|&b| b == b'/').unwrap_or(0)]
}

/// Directories of one depth finished on several threads from this many on.
const PARALLEL_DIRS: usize = 512;

/// The owner of what this process creates in a directory with metadata `dir`, where that is
/// its effective uid and gid: the directory has no setgid bit, and neither has anything
/// created below it (directories are created without it; their final modes are set after
/// all content is written).
#[allow(unsafe_code)]
fn born_owner(dir: &fs::Metadata) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    if dir.mode() & libc::S_ISGID != 0 {
        return None;
    }
    // SAFETY: plain system calls without arguments; they cannot fail.
    Some(unsafe { (libc::geteuid(), libc::getegid()) })
}

/// Hands the `size` bytes of the current entry to the pool in `PIECE`-sized buffers.
fn send_entry_data(
    src: &mut dyn Read,
    pool: &mut FilePool,
    size: u64,
    entry: &[u8],
    refuse: &dyn Fn(Refusal) -> Error,
    on_piece: &mut dyn FnMut(),
) -> Result<()> {
    let mut done = 0u64;
    while done < size {
        let mut buf = pool.buffer()?;
        let want = usize::try_from(size - done).map_or(PIECE, |left| left.min(PIECE));
        fill(src, &mut buf[..want], done, size, entry, refuse)?;
        pool.data(buf, want)?;
        done += want as u64;
        on_piece();
    }
    Ok(())
}

/// Fills `buf` with the next bytes of the current entry, of which `done` of `size` were read
/// before. A short entry (the stream ends early) is a broken archive, as in
/// `check::copy_entry_data`.
fn fill(
    src: &mut dyn Read,
    buf: &mut [u8],
    done: u64,
    size: u64,
    entry: &[u8],
    refuse: &dyn Fn(Refusal) -> Error,
) -> Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(refuse(Refusal::Broken(format!(
                    "entry {:?} is truncated ({} of {size} bytes)",
                    display_bytes(entry),
                    done + filled as u64
                ))));
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(refuse(stream_error(
                    e,
                    &format!("reading entry {:?}", display_bytes(entry)),
                )));
            }
        }
    }
    Ok(())
}
