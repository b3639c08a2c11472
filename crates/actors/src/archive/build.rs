//! Writing an archive (format in `archive/mod.rs`).
//!
//! Design note: the build is two passes. The scan walks the source in archive order (raw path
//! bytes) one directory at a time, on one thread ([`walk_sorted`]), drops excluded paths and
//! decides which paths become hard-link entries; it spills the plan to an unlinked temporary
//! file and yields the totals for progress. The write pass then streams the planned entries
//! through the tar builder into the parallel gzip writer, hashing the archive bytes on their
//! way to `<dest>.partial`; small files are read a bounded window ahead of it on a few
//! threads ([`Reads`]).
//!
//! A file is opened without following links and checked against its scan-time lstat (same
//! inode, size and mtime) before a header is written, read to exactly that size (one byte
//! more is probed), and checked again afterwards (a file smaller than the read buffer is read
//! whole first, with one byte of room to see growth, and then checked once: the same checks
//! with two system calls fewer); any difference fails the whole backup with
//! [`Error::SourceChanged`]: the tar header has already promised a size, so continuing could
//! only produce a wrong archive. Headers are filled by hand from the lstat data (GNU format,
//! numeric ids, no user/group names, atime/ctime zero) so the same tree and info always give
//! the same bytes. Long names and link targets use GNU `L`/`K` records written here with the
//! raw bytes: `tar::Header::set_link_name` normalizes (`a//b` becomes `a/b`) and
//! `Builder::append_data` cannot store a long path whose first byte is not UTF-8.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::crypt::Sealed;
use super::format::{FileStat, INFO_PATH, Layout, MANIFEST_PATH, Span, encode_bytes};
use super::incremental::{
    self, ALIGN, ALIGN_FROM, BIG_FILE, Candidate, Damage, Live, Members, Source,
};
use super::pgzip::{CHUNK_SIZE, ParallelGzWriter, padding};
use super::sink::HashingWriter;
use super::threads::resolve_threads;
use super::{BuildOptions, BuildReport, CancelFlag, EntryKind, META_DIR, ManifestEntry};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{partial_path, sync_parent};
use crate::progress::{Phase, Progress};

/// Read buffer for file contents.
const READ_BUF: usize = 1 << 20;
/// Size of the name and linkname fields of a tar header.
const NAME_FIELD: usize = 100;
/// At most this many skipped special files are named one by one.
const MAX_SPECIAL_NOTICES: usize = 20;

/// Builds the archive described by `opts` (see the module docs of `archive`).
pub fn build(opts: &BuildOptions, progress: &Progress, cancel: &CancelFlag) -> Result<BuildReport> {
    build_inner(opts, None, progress, cancel, &mut || {})
}

/// [`build`] from a scan already made with the same `opts` ([`scan_source`]): the backup
/// scans first, checks the free space against the scan's totals and records its catalog row,
/// and only then writes (one walk of the tree per backup, not a preflight walk and a scan).
pub fn build_scanned(
    opts: &BuildOptions,
    scanned: Scanned,
    progress: &Progress,
    cancel: &CancelFlag,
) -> Result<BuildReport> {
    build_inner(opts, Some(scanned), progress, cancel, &mut || {})
}

/// The scan pass of a build (see the module docs), kept for [`build_scanned`]: the planned
/// entries spilled to an unlinked temporary file next to `opts.dest`, and the totals.
pub struct Scanned {
    plan: Plan,
}

impl Scanned {
    /// Bytes a restore of the scanned files writes ([`crate::space::restore_bytes`] of each
    /// regular file, hard links once): what the free-space preflight multiplies by the ratio.
    pub fn restore_bytes(&self) -> u64 {
        self.plan.restore_bytes
    }
}

/// Walks `opts.source_dir` as a build does (excludes, the archive's own paths, hard links)
/// and spills the plan; the write pass is [`build_scanned`] with the same `opts`.
pub fn scan_source(
    opts: &BuildOptions,
    progress: &Progress,
    cancel: &CancelFlag,
) -> Result<Scanned> {
    let excludes = Excludes::new(opts, &partial_path(&opts.dest))?;
    progress.phase(Phase::Scanning, None, None);
    let plan = scan(opts, excludes, progress, cancel)?;
    release_free_memory();
    Ok(Scanned { plan })
}

/// [`build`] or [`build_scanned`] with a hook that runs between the scan and the write pass
/// (tests use it to change the source at a known moment).
pub(super) fn build_inner(
    opts: &BuildOptions,
    scanned: Option<Scanned>,
    progress: &Progress,
    cancel: &CancelFlag,
    after_scan: &mut dyn FnMut(),
) -> Result<BuildReport> {
    build_live(opts, scanned, progress, cancel, after_scan)?.finish(true, progress, cancel)
}

/// The part of a build that reads the live tree: scan (unless given), then the archive
/// written in full except the members of unchanged big files, which are left as holes for
/// [`Unfinished::finish`]. Once this returns, nothing more is read from the source: the
/// services may start again.
pub fn build_until_live_read(
    opts: &BuildOptions,
    scanned: Option<Scanned>,
    progress: &Progress,
    cancel: &CancelFlag,
) -> Result<Unfinished> {
    build_live(opts, scanned, progress, cancel, &mut || {})
}

fn build_live(
    opts: &BuildOptions,
    scanned: Option<Scanned>,
    progress: &Progress,
    cancel: &CancelFlag,
    after_scan: &mut dyn FnMut(),
) -> Result<Unfinished> {
    if !(1..=9).contains(&opts.level) {
        return Err(Error::Usage(format!(
            "compression level must be 1..=9, not {}",
            opts.level
        )));
    }
    if exists(&opts.dest)? {
        return Err(Error::Refused(format!(
            "archive {} already exists",
            opts.dest.display()
        )));
    }
    let partial = partial_path(&opts.dest);
    let mut plan = match scanned {
        Some(s) => s.plan,
        None => scan_source(opts, progress, cancel)?.plan,
    };
    // The sizes a restore of each top-level item needs, recorded in info.json from this very
    // scan (made with the services stopped), not from an earlier walk.
    let mut opts = opts.clone();
    opts.info.top_level_bytes = std::mem::take(&mut plan.top_level_bytes);
    progress.phase(Phase::Archiving, Some(plan.total_bytes), Some(plan.entries));
    after_scan();
    let source = incremental_source(&opts, progress);

    // From here on, any error or panic removes the partial file.
    let guard = PartialGuard {
        path: partial.clone(),
        armed: true,
    };
    let written = write_with_fallback(&plan, &opts, &partial, source, progress, cancel)?;
    progress.finish_phase(written.source_bytes, written.entries);
    Ok(Unfinished {
        opts,
        plan,
        written,
        partial,
        guard,
    })
}

/// Writes the archive to `partial`, copying from `source`; a copied member that does not
/// match its recorded checksum makes it write the archive again, every file read live.
fn write_with_fallback(
    plan: &Plan,
    opts: &BuildOptions,
    partial: &Path,
    source: Option<Source>,
    progress: &Progress,
    cancel: &CancelFlag,
) -> Result<Written> {
    // Readable too: copied members are read back and hashed (`pgzip/copy.rs`).
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(partial)
        .ctx("cannot create archive", partial)?;
    crate::faults::point("backup.after_partial_created");
    let damage = Damage::default();
    match write_archive(
        file,
        plan,
        opts,
        partial,
        source.as_ref(),
        &damage,
        progress,
        cancel,
    ) {
        Err(e) if damage.is_set() => {
            rewrite_from_live(plan, opts, partial, &e.to_string(), progress, cancel)
        }
        written => written,
    }
}

/// After a copied member did not match its recorded checksum (`why`): says so, removes
/// `partial` and writes the archive again (phase `archiving` anew), every file read from
/// the live tree.
fn rewrite_from_live(
    plan: &Plan,
    opts: &BuildOptions,
    partial: &Path,
    why: &str,
    progress: &Progress,
    cancel: &CancelFlag,
) -> Result<Written> {
    progress.notice(format!(
        "{why}; writing the archive again, every file read from the live tree"
    ));
    fs::remove_file(partial).ctx("cannot remove", partial)?;
    progress.phase(Phase::Archiving, Some(plan.total_bytes), Some(plan.entries));
    write_with_fallback(plan, opts, partial, None, progress, cancel)
}

/// A build whose live data is in the archive file, and whose copies of unchanged members
/// from the previous archive are still to be made ([`build_until_live_read`]). Dropping it
/// removes the partial file.
pub struct Unfinished {
    opts: BuildOptions,
    plan: Plan,
    written: Written,
    partial: PathBuf,
    guard: PartialGuard,
}

impl Unfinished {
    /// Whether [`Self::finish`] has members to copy.
    pub fn has_copies(&self) -> bool {
        self.written.sink.has_holes()
    }

    /// Makes the deferred copies and checks them (phase `copying`), then syncs the archive
    /// and renames it into place. A copy that does not match its recorded checksum makes
    /// the archive be written again from the live tree when `live_readable` (the services
    /// are still stopped); otherwise the build fails with [`Error::Corrupt`] naming the
    /// previous archive, and the partial file is removed.
    pub fn finish(
        mut self,
        live_readable: bool,
        progress: &Progress,
        cancel: &CancelFlag,
    ) -> Result<BuildReport> {
        if self.has_copies() {
            progress.phase(Phase::Copying, Some(self.written.reused_bytes), None);
            let checked = self
                .written
                .sink
                .fill()
                .ctx("cannot copy members into", &self.partial)?;
            crate::faults::point("backup.after_copies");
            match checked {
                Ok(()) => progress.finish_phase(self.written.reused_bytes, 0),
                Err(mismatch) => {
                    let previous = self.opts.previous.clone().unwrap_or_default();
                    if !live_readable {
                        return Err(Error::Corrupt {
                            path: previous,
                            detail: format!(
                                "{mismatch}; this backup was not written (the next one reads every file)"
                            ),
                        });
                    }
                    drop(self.written);
                    let why = format!("{}: {mismatch}", previous.display());
                    let (plan, opts, partial) = (&self.plan, &self.opts, &self.partial);
                    self.written = rewrite_from_live(plan, opts, partial, &why, progress, cancel)?;
                    progress.finish_phase(self.written.source_bytes, self.written.entries);
                }
            }
        }
        let Unfinished {
            opts,
            plan,
            written,
            partial,
            mut guard,
        } = self;
        let (file, sha256) = written
            .sink
            .sha256()
            .ctx("cannot finish archive", &partial)?;
        let syncing = std::time::Instant::now();
        file.sync_all().ctx("cannot sync archive", &partial)?;
        tracing::debug!("archive synced in {:?}", syncing.elapsed());
        drop(file);

        crate::faults::point("backup.before_rename");
        cancel.check()?;
        if exists(&opts.dest)? {
            return Err(Error::Refused(format!(
                "archive {} appeared while the backup was written",
                opts.dest.display()
            )));
        }
        fs::rename(&partial, &opts.dest).ctx("cannot rename archive into place", &opts.dest)?;
        guard.armed = false;
        crate::faults::point("backup.after_rename");
        sync_parent(&opts.dest)?;

        Ok(BuildReport {
            path: opts.dest.clone(),
            size: written.size,
            sha256,
            entries: written.entries,
            source_bytes: written.source_bytes,
            reused_bytes: written.reused_bytes,
            unmatched_excludes: plan.unmatched_excludes,
            skipped_special: plan.special,
        })
    }
}

/// The member layout this build writes (recorded in the manifest).
fn layout(opts: &BuildOptions) -> Layout {
    // An encrypted archive is never a copy source: nothing to align.
    let align = if opts.encryption.is_some() { 0 } else { ALIGN };
    Layout {
        level: opts.level,
        chunk: CHUNK_SIZE as u64,
        big_file: BIG_FILE,
        align,
        align_from: ALIGN_FROM,
    }
}

/// The previous archive to copy unchanged big files from, if it can serve (else a notice).
fn incremental_source(opts: &BuildOptions, progress: &Progress) -> Option<Source> {
    let path = opts.previous.as_deref()?;
    if opts.encryption.is_some() {
        // Members copied under an age stream would be plaintext in the ciphertext's place.
        progress.notice(
            "reading every file: an encrypted archive copies nothing from the previous one",
        );
        return None;
    }
    match Source::open(path, &layout(opts), &opts.info.tool) {
        Ok(s) => Some(s),
        Err(why) => {
            progress.notice(format!("reading every file: {why}"));
            None
        }
    }
}

/// Hands freed heap pages back to the kernel (glibc's `malloc_trim`): the scan's short-lived
/// allocations would otherwise stay resident through the whole write.
#[allow(unsafe_code)]
fn release_free_memory() {
    // SAFETY: `malloc_trim` takes no pointers; it only returns free memory to the kernel.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}

fn exists(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("cannot check", path, e)),
    }
}

/// Removes `<dest>.partial` unless disarmed (after the rename).
struct PartialGuard {
    path: PathBuf,
    armed: bool,
}

impl Drop for PartialGuard {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = fs::remove_file(&self.path)
        {
            tracing::warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Paths left out of the archive: the configured rules (`exclude.rs`) and the archive
/// itself when it is written inside the source tree.
struct Excludes {
    rules: crate::exclude::Excludes,
    /// The archive's own paths (final and partial) relative to the source dir, if inside.
    own: Vec<PathBuf>,
}

impl Excludes {
    fn new(opts: &BuildOptions, partial: &Path) -> Result<Self> {
        let mut own = Vec::new();
        // An archive written inside the source tree must not archive itself.
        if let (Ok(src), Some(parent), Some(pname), Some(dname)) = (
            fs::canonicalize(&opts.source_dir),
            opts.dest.parent(),
            partial.file_name(),
            opts.dest.file_name(),
        ) {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            if let Ok(parent) = fs::canonicalize(parent)
                && let Ok(rel) = parent.strip_prefix(&src)
            {
                for name in [pname, dname] {
                    own.push(rel.join(name));
                }
            }
        }
        Ok(Self {
            rules: crate::exclude::Excludes::new(&opts.exclude),
            own,
        })
    }

    /// Whether `rel` itself is left out (the walk does not descend into it).
    fn excludes(&self, rel: &Path) -> bool {
        self.rules.is_excluded(rel) || self.own.iter().any(|o| o == rel)
    }
}

/// One path to archive, in archive order.
struct Item {
    rel: PathBuf,
    meta: Stat,
    kind: ItemKind,
}

/// The lstat fields the builder uses, with `Metadata`'s accessor names, packed: the plan
/// spills one per entry to disk (see [`Plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
    ctime: i64,
    ctime_nsec: i64,
    /// `st_mode`: type and permission bits.
    mode: u32,
    uid: u32,
    gid: u32,
    dev: u64,
    ino: u64,
    nlink: u64,
    /// 512-byte blocks allocated (a sparse file has fewer than its length).
    blocks: u64,
}

/// Bytes of a [`Stat`] in the plan file.
const STAT_BYTES: usize = 9 * 8 + 3 * 4;

impl Stat {
    fn of(m: &Metadata) -> Self {
        Stat {
            len: m.len(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
            ctime: m.ctime(),
            ctime_nsec: m.ctime_nsec(),
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            dev: m.dev(),
            ino: m.ino(),
            nlink: m.nlink(),
            blocks: m.blocks(),
        }
    }
    fn format(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
    fn is_dir(&self) -> bool {
        self.format() == libc::S_IFDIR
    }
    fn is_symlink(&self) -> bool {
        self.format() == libc::S_IFLNK
    }
    fn is_file(&self) -> bool {
        self.format() == libc::S_IFREG
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn mtime(&self) -> i64 {
        self.mtime
    }
    fn mtime_nsec(&self) -> i64 {
        self.mtime_nsec
    }
    fn mode(&self) -> u32 {
        self.mode
    }
    fn uid(&self) -> u32 {
        self.uid
    }
    fn gid(&self) -> u32 {
        self.gid
    }
    fn dev(&self) -> u64 {
        self.dev
    }
    fn ino(&self) -> u64 {
        self.ino
    }
    fn nlink(&self) -> u64 {
        self.nlink
    }
    /// What the manifest records for the next backup's change detection.
    fn file_stat(&self) -> FileStat {
        FileStat {
            mtime_ns: self.mtime_nsec.clamp(0, 999_999_999) as u32,
            ctime: self.ctime,
            ctime_ns: self.ctime_nsec.clamp(0, 999_999_999) as u32,
            ino: self.ino,
            dev: self.dev,
        }
    }
    /// Whether `m` (a later lstat of the same path) shows the file exactly as scanned.
    fn same_file(&self, m: &Metadata) -> bool {
        m.is_file()
            && (m.dev(), m.ino(), m.len()) == (self.dev, self.ino, self.len)
            && (m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec())
                == (self.mtime, self.mtime_nsec, self.ctime, self.ctime_nsec)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        for v in [
            self.len,
            self.mtime as u64,
            self.mtime_nsec as u64,
            self.dev,
            self.ino,
            self.nlink,
            self.blocks,
            self.ctime as u64,
            self.ctime_nsec as u64,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [self.mode, self.uid, self.gid] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn decode(b: &[u8; STAT_BYTES]) -> Self {
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |i: usize| {
            let mut a = [0u8; 4];
            a.copy_from_slice(&b[72 + i * 4..72 + i * 4 + 4]);
            u32::from_le_bytes(a)
        };
        Stat {
            len: u64_at(0),
            mtime: u64_at(1) as i64,
            mtime_nsec: u64_at(2) as i64,
            dev: u64_at(3),
            ino: u64_at(4),
            nlink: u64_at(5),
            blocks: u64_at(6),
            ctime: u64_at(7) as i64,
            ctime_nsec: u64_at(8) as i64,
            mode: u32_at(0),
            uid: u32_at(1),
            gid: u32_at(2),
        }
    }
}

enum ItemKind {
    Dir,
    File,
    Symlink,
    /// A later path of an inode already stored under this path (same top-level item).
    Hardlink(PathBuf),
}

/// The scan's result. The entries themselves are not held in memory: they are written, in
/// archive order, to an unlinked temporary file next to the archive and read back one by one
/// by the write pass (a 500 000-entry tree held as `PathBuf`s and stats took 150 MB). What
/// stays in memory is the walk's current directory chain and the first path of each inode
/// with several links.
struct Plan {
    /// The spilled entries (see [`PlanWriter`]).
    file: File,
    entries: u64,
    /// Sockets, fifos and devices that were left out.
    special: u64,
    total_bytes: u64,
    /// See [`Scanned::restore_bytes`].
    restore_bytes: u64,
    /// Exclude rules that matched nothing.
    unmatched_excludes: Vec<String>,
    /// Bytes of file content per top-level item (see [`top_level_bytes`]).
    top_level_bytes: std::collections::BTreeMap<crate::relpath::TopName, u64>,
}

/// Appends plan records: kind byte, path, stat, and for a hard link its first path.
struct PlanWriter {
    out: io::BufWriter<File>,
    record: Vec<u8>,
}

impl PlanWriter {
    fn push(&mut self, rel: &[u8], meta: &Stat, kind: &ItemKind) -> io::Result<()> {
        let r = &mut self.record;
        r.clear();
        let (tag, target) = match kind {
            ItemKind::Dir => (0u8, None),
            ItemKind::File => (1, None),
            ItemKind::Symlink => (2, None),
            ItemKind::Hardlink(t) => (3, Some(t.as_os_str().as_bytes())),
        };
        r.push(tag);
        r.extend_from_slice(&(rel.len() as u64).to_le_bytes());
        r.extend_from_slice(rel);
        meta.encode(r);
        if let Some(t) = target {
            r.extend_from_slice(&(t.len() as u64).to_le_bytes());
            r.extend_from_slice(t);
        }
        self.out.write_all(r)
    }
}

/// Reads back what [`PlanWriter`] wrote.
struct PlanReader {
    input: io::BufReader<File>,
}

impl PlanReader {
    fn read_bytes(&mut self) -> io::Result<Vec<u8>> {
        let mut len = [0u8; 8];
        self.input.read_exact(&mut len)?;
        let len = usize::try_from(u64::from_le_bytes(len)).map_err(io::Error::other)?;
        let mut v = vec![0u8; len];
        self.input.read_exact(&mut v)?;
        Ok(v)
    }

    fn next_item(&mut self) -> io::Result<Item> {
        let mut tag = [0u8; 1];
        self.input.read_exact(&mut tag)?;
        let rel = PathBuf::from(OsString::from_vec(self.read_bytes()?));
        let mut stat = [0u8; STAT_BYTES];
        self.input.read_exact(&mut stat)?;
        let meta = Stat::decode(&stat);
        let kind = match tag[0] {
            0 => ItemKind::Dir,
            1 => ItemKind::File,
            2 => ItemKind::Symlink,
            _ => ItemKind::Hardlink(PathBuf::from(OsString::from_vec(self.read_bytes()?))),
        };
        Ok(Item { rel, meta, kind })
    }
}

/// Threads that read small files ahead of the write pass (see [`Reads`]). They mostly wait
/// for the disk when the page cache is cold, so there are more of them than cores: eight
/// requests in flight instead of one.
const READ_THREADS: usize = 8;
/// A batch of small files read by one thread: at most this many files...
const BATCH_FILES: usize = 32;
/// ...and about this many bytes (a file up to [`READ_BUF`] may end a batch).
const BATCH_BYTES: u64 = 256 << 10;
/// Batches in flight (read or being read, not yet taken), at most...
const AHEAD_BATCHES: usize = 64;
/// ...and holding at most this many bytes of file data: memory stays bounded whatever the
/// tree.
const AHEAD_BYTES: u64 = 6 << 20;
/// Entries read from the plan ahead of the write pass, at most (directories and links need
/// no reading but take room in the window too).
const AHEAD_ITEMS: usize = 4096;

/// A small file to read ahead: where it is and what the scan found.
struct SmallJob {
    abs: PathBuf,
    rel: PathBuf,
    meta: Stat,
}

/// A small file's data and SHA-256, or why it could not be archived.
type SmallRead = Result<(Vec<u8>, String)>;

/// Where the write pass gets a planned entry's data from; decided once, by [`Reads`].
enum Data<'a> {
    /// Nowhere (not a regular file), or the live file, read by the write pass itself
    /// ([`append_file`]: a file of [`READ_BUF`] or more).
    Live,
    /// The live file, read ahead.
    Read(SmallRead),
    /// The previous archive: an unchanged big file's members are copied.
    Copy(&'a Source, &'a Candidate),
}

/// How [`Reads`] gets an entry's data: as [`Data`], with a small file's read still in the
/// batches.
enum Way<'a> {
    Live,
    Ahead,
    Copy(&'a Source, &'a Candidate),
}

/// The planned entries, in order, each with where its data comes from ([`Data`]): regular
/// files under [`READ_BUF`] that are not copied from the previous archive are read (opened, read, checked against the scan, hashed: [`read_small_file`]) in batches on
/// [`READ_THREADS`] threads, a bounded window ahead of the write pass, which then only
/// appends them. The archive's bytes are the same as when every file is read in turn.
struct Reads<'a> {
    plan: PlanReader,
    /// Entries still in the plan file.
    left: u64,
    /// Entries read from the plan and not handed out yet (the data of those read ahead is
    /// in the batches, in this order).
    queue: std::collections::VecDeque<(Item, Way<'a>)>,
    /// The batch being gathered, and its bytes.
    batch: Vec<SmallJob>,
    batch_bytes: u64,
    ahead: super::ahead::Ahead<Vec<SmallJob>, Vec<SmallRead>>,
    /// Bytes of each batch in flight, oldest first.
    in_flight: std::collections::VecDeque<u64>,
    in_flight_bytes: u64,
    /// The results of the oldest batch taken, not handed out yet.
    taken: std::vec::IntoIter<SmallRead>,
    root: &'a Path,
    source: Option<&'a Source>,
}

impl<'a> Reads<'a> {
    fn new(
        plan: PlanReader,
        entries: u64,
        root: &'a Path,
        source: Option<&'a Source>,
    ) -> io::Result<Self> {
        let ahead =
            super::ahead::Ahead::new(READ_THREADS, "backup-read", |jobs: Vec<SmallJob>| {
                let mut dir = ParentDir::default();
                jobs.iter()
                    .map(|j| read_small_file(&j.abs, &j.rel, &j.meta, &mut dir))
                    .collect()
            })?;
        Ok(Reads {
            plan,
            left: entries,
            queue: Default::default(),
            batch: Vec::new(),
            batch_bytes: 0,
            ahead,
            in_flight: Default::default(),
            in_flight_bytes: 0,
            taken: Vec::new().into_iter(),
            root,
            source,
        })
    }

    /// The next entry, and where its data comes from.
    fn next(&mut self) -> io::Result<(Item, Data<'a>)> {
        self.fill()?;
        let (item, way) = self
            .queue
            .pop_front()
            .ok_or_else(|| io::Error::other("the plan ended early"))?;
        match way {
            Way::Live => return Ok((item, Data::Live)),
            Way::Copy(s, c) => return Ok((item, Data::Copy(s, c))),
            Way::Ahead => {}
        }
        loop {
            if let Some(read) = self.taken.next() {
                return Ok((item, Data::Read(read)));
            }
            if self.in_flight.is_empty() {
                // Its batch is still being gathered.
                self.submit();
            }
            let results = self
                .ahead
                .take()
                .ok_or_else(|| io::Error::other("a file reading thread panicked"))?;
            self.in_flight_bytes -= self.in_flight.pop_front().unwrap_or(0);
            self.taken = results.into_iter();
        }
    }

    /// Reads entries from the plan while the window has room, gathering the small files
    /// into batches.
    fn fill(&mut self) -> io::Result<()> {
        while self.left > 0
            && self.queue.len() < AHEAD_ITEMS
            && self.in_flight.len() < AHEAD_BATCHES
            && self.in_flight_bytes < AHEAD_BYTES
        {
            let item = self.plan.next_item()?;
            self.left -= 1;
            let way = self.way(&item);
            if let Way::Ahead = way {
                self.batch_bytes += item.meta.len();
                self.batch.push(SmallJob {
                    abs: self.root.join(&item.rel),
                    rel: item.rel.clone(),
                    meta: item.meta,
                });
                if self.batch.len() >= BATCH_FILES || self.batch_bytes >= BATCH_BYTES {
                    self.submit();
                }
            }
            self.queue.push_back((item, way));
        }
        if self.in_flight.is_empty() || self.left == 0 || self.queue.len() >= AHEAD_ITEMS {
            self.submit();
        }
        Ok(())
    }

    /// Where `item`'s data comes from: a big file (a span of its own) unchanged since the
    /// previous archive is copied from it; any other regular file under [`READ_BUF`] is read
    /// ahead.
    fn way(&self, item: &Item) -> Way<'a> {
        let len = item.meta.len();
        if !matches!(item.kind, ItemKind::File) {
            return Way::Live;
        }
        let copy = self.source.filter(|_| len >= BIG_FILE).and_then(|s| {
            s.candidate(item.rel.as_os_str().as_bytes(), &live_of(item))
                .map(|c| Way::Copy(s, c))
        });
        match copy {
            Some(copy) => copy,
            None if len < READ_BUF as u64 => Way::Ahead,
            None => Way::Live,
        }
    }

    /// Hands the batch being gathered to the threads, if it has anything.
    fn submit(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        self.ahead.submit(std::mem::take(&mut self.batch));
        self.in_flight.push_back(self.batch_bytes);
        self.in_flight_bytes += self.batch_bytes;
        self.batch_bytes = 0;
    }
}

/// Where the scan keeps the plan: an unlinked temporary file in the archive's directory (a
/// filesystem with room for the archive; `/tmp` may be memory).
fn plan_file(opts: &BuildOptions) -> Result<File> {
    let dir = match opts.dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    tempfile::tempfile_in(dir).ctx("cannot create a temporary file in", dir)
}

/// One directory being walked: its children in archive order.
struct Frame {
    /// The directory's relative path (empty for the source dir itself).
    rel: Vec<u8>,
    /// Sort keys and what they stand for, in order: a child's own entry (its name) and, for
    /// a directory, its content (its name and `/`).
    items: Vec<(Vec<u8>, Option<Stat>)>,
    next: usize,
}

/// Lists the directory at `rel` (relative to `root`) as a [`Frame`]: excluded children
/// dropped, every child lstat'ed, and ordered so that the walk yields full relative paths in
/// byte order. A child directory `a` is two items, `a` (its entry) and `a/` (its content):
/// a sibling `a-b` sorts between them, as it does among full paths (`a` < `a-b` < `a/x`).
fn list_dir(root: &Path, rel: Vec<u8>, excludes: &Excludes) -> Result<Frame> {
    let abs = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(&rel))
    };
    if let Some(e) = crate::faults::fail_read(Path::new(OsStr::from_bytes(&rel))) {
        return Err(source_error("cannot read", &abs, e));
    }
    let mut items = Vec::new();
    let reader = fs::read_dir(&abs).map_err(|e| source_error("cannot read", &abs, e))?;
    for child in reader {
        let child = child.map_err(|e| source_error("cannot read", &abs, e))?;
        let name = child.file_name();
        let child_rel = join_rel(&rel, name.as_bytes());
        if excludes.excludes(Path::new(OsStr::from_bytes(&child_rel))) {
            continue;
        }
        // `DirEntry::metadata` does not follow symlinks (fstatat with AT_SYMLINK_NOFOLLOW).
        let meta = child
            .metadata()
            .map(|m| Stat::of(&m))
            .map_err(|e| source_error("cannot read metadata of", &child.path(), e))?;
        if meta.is_dir() {
            let mut key = name.as_bytes().to_vec();
            key.push(b'/');
            items.push((key, None));
        }
        items.push((name.into_vec(), Some(meta)));
    }
    items.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(Frame {
        rel,
        items,
        next: 0,
    })
}

fn join_rel(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut rel = Vec::with_capacity(parent.len() + 1 + name.len());
    if !parent.is_empty() {
        rel.extend_from_slice(parent);
        rel.push(b'/');
    }
    rel.extend_from_slice(name);
    rel
}

/// Calls `f` with every path under `root` (relative, in byte order) and its lstat. Memory is
/// the chain of directories being walked, never the whole tree.
///
/// One thread lists every directory. Listing ahead on other threads (one directory per
/// hand-off) made the scan of a 500 000-file `node_modules` tree three times slower on the
/// 2-core VM the benchmark runs on (about 18 s against 5 s with a warm cache, 57 s against
/// 44 s with a cold one): a directory there holds two or three entries, listed in a few
/// microseconds, and every hand-off woke a sleeping thread.
fn walk_sorted(
    root: &Path,
    excludes: &Excludes,
    cancel: &CancelFlag,
    f: &mut dyn FnMut(&[u8], Stat) -> Result<()>,
) -> Result<()> {
    let mut stack = vec![list_dir(root, Vec::new(), excludes)?];
    while let Some(top) = stack.last_mut() {
        cancel.check()?;
        let Some((key, stat)) = top.items.get(top.next) else {
            stack.pop();
            continue;
        };
        top.next += 1;
        match stat {
            Some(stat) => {
                let rel = join_rel(&top.rel, key);
                f(&rel, *stat)?;
            }
            None => {
                let rel = join_rel(&top.rel, &key[..key.len() - 1]);
                let frame = list_dir(root, rel, excludes)?;
                stack.push(frame);
            }
        }
    }
    Ok(())
}

fn scan(
    opts: &BuildOptions,
    excludes: Excludes,
    progress: &Progress,
    cancel: &CancelFlag,
) -> Result<Plan> {
    let root = opts.source_dir.clone();
    let root_meta = fs::metadata(&root).ctx("cannot read source directory", &root)?;
    if !root_meta.is_dir() {
        return Err(Error::Usage(format!(
            "{} is not a directory",
            root.display()
        )));
    }
    let file = plan_file(opts)?;
    let mut plan = PlanWriter {
        out: io::BufWriter::with_capacity(1 << 20, file.try_clone().ctx("cannot open", &root)?),
        record: Vec::new(),
    };
    let werr = |e: io::Error| Error::io("cannot write a temporary file next to", &opts.dest, e);

    // First path of each multiply-linked inode, per top-level item.
    let mut first_paths: HashMap<(u64, u64, Vec<u8>), PathBuf> = HashMap::new();
    let mut top_level_bytes = std::collections::BTreeMap::new();
    let (mut entries, mut special, mut total_bytes, mut restore_bytes) = (0u64, 0u64, 0u64, 0u64);
    let mut current_top: Option<(Vec<u8>, Option<crate::relpath::TopName>)> = None;
    walk_sorted(&root, &excludes, cancel, &mut |rel, meta| {
        let top = top_level_of(rel);
        let kind = if meta.is_dir() {
            ItemKind::Dir
        } else if meta.is_symlink() {
            ItemKind::Symlink
        } else if meta.is_file() {
            let mut kind = ItemKind::File;
            if meta.nlink() > 1 {
                match first_paths.entry((meta.dev(), meta.ino(), top.to_vec())) {
                    std::collections::hash_map::Entry::Occupied(o) => {
                        kind = ItemKind::Hardlink(o.get().clone());
                    }
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(PathBuf::from(OsStr::from_bytes(rel)));
                    }
                }
            }
            if matches!(kind, ItemKind::File) {
                total_bytes += meta.len();
                restore_bytes += crate::space::restore_bytes(meta.len(), meta.blocks);
            }
            kind
        } else {
            if special < MAX_SPECIAL_NOTICES as u64 {
                progress.notice(format!(
                    "skipping {}: sockets, fifos and device files cannot be backed up",
                    root.join(OsStr::from_bytes(rel)).display()
                ));
            }
            special += 1;
            return Ok(());
        };
        // Bytes a restore writes per top-level item: each regular file's allocated bytes
        // (a sparse file's holes are kept by the restore), hard links and directories none.
        // Keys are text in info.json: a non-UTF-8 name is recorded lossily, as before.
        if current_top.as_ref().is_none_or(|(t, _)| t != top) {
            let name = crate::relpath::TopName::parse(String::from_utf8_lossy(top).as_ref()).ok();
            current_top = Some((top.to_vec(), name));
        }
        if let (Some((_, Some(name))), ItemKind::File) = (&current_top, &kind) {
            let total: &mut u64 = top_level_bytes.entry(name.clone()).or_default();
            *total = total.saturating_add(meta.len().min(meta.blocks.saturating_mul(512)));
        }
        if entries.is_multiple_of(1024) {
            progress.advance(0, entries, Some(Path::new(OsStr::from_bytes(rel))));
        }
        // The listings' memory is freed as the walk goes, but glibc keeps some of it resident
        // (measured with listing threads: 70 MB at the end of a 700 000-entry scan, 15 MB
        // live, 25 MB with this).
        if entries.is_multiple_of(1 << 15) {
            release_free_memory();
        }
        plan.push(rel, &meta, &kind).map_err(werr)?;
        entries += 1;
        Ok(())
    })?;
    if special > MAX_SPECIAL_NOTICES as u64 {
        progress.notice(format!(
            "skipped {} more sockets, fifos or device files",
            special - MAX_SPECIAL_NOTICES as u64
        ));
    }
    plan.out.flush().map_err(werr)?;
    drop(plan);
    Ok(Plan {
        file,
        entries,
        special,
        total_bytes,
        restore_bytes,
        unmatched_excludes: excludes.rules.unmatched(),
        top_level_bytes,
    })
}

/// The first component of a relative path.
fn top_level_of(rel: &[u8]) -> &[u8] {
    match rel.iter().position(|&b| b == b'/') {
        Some(i) => &rel[..i],
        None => rel,
    }
}

/// A source path that vanished is a change of the source (services still running?).
fn source_error(context: &'static str, path: &Path, e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::NotFound {
        Error::SourceChanged {
            path: path.to_path_buf(),
            detail: "it was removed during the backup".into(),
        }
    } else {
        Error::io(context, path, e)
    }
}

struct Written {
    /// The archive file, its checksum not final while copies are deferred.
    sink: HashingWriter,
    size: u64,
    entries: u64,
    source_bytes: u64,
    reused_bytes: u64,
}

type Tar = tar::Builder<ParallelGzWriter<Sealed<HashingWriter>>>;

#[allow(clippy::too_many_arguments)]
fn write_archive(
    file: File,
    plan: &Plan,
    opts: &BuildOptions,
    partial: &Path,
    source: Option<&Source>,
    damage: &Damage,
    progress: &Progress,
    cancel: &CancelFlag,
) -> Result<Written> {
    let mut sink = HashingWriter::new(file);
    // The members of unchanged files are copied after the live tree was read.
    sink.defer = source.is_some();
    let sink = Sealed::new(sink, opts.encryption.as_ref())
        .map_err(|e| Error::io("cannot start encrypting the archive", partial, e))?;
    let spans: std::sync::Arc<std::sync::Mutex<Vec<Span>>> = Default::default();
    let layout = layout(opts);
    let mut reused_bytes = 0u64;
    let gz = ParallelGzWriter::new(sink, opts.level, resolve_threads(opts.threads), CHUNK_SIZE);
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    let werr = |e: io::Error| Error::io("cannot write archive", partial, e);

    // Metadata entries carry the backup's creation time so that equal input gives equal bytes.
    let meta_mtime = chrono::DateTime::parse_from_rfc3339(&opts.info.created_at)
        .map_or(0, |t| t.timestamp().max(0));
    let info_json = serde_json::to_vec_pretty(&opts.info)
        .map_err(|e| Error::Internal(format!("cannot encode info.json: {e}")))?;
    let mut h = meta_header(tar::EntryType::Directory, 0o755, meta_mtime, 0);
    append_raw(&mut tar, &mut h, format!("{META_DIR}/").as_bytes(), None).map_err(werr)?;
    let mut h = meta_header(
        tar::EntryType::Regular,
        0o644,
        meta_mtime,
        info_json.len() as u64,
    );
    append_raw(&mut tar, &mut h, INFO_PATH.as_bytes(), None).map_err(werr)?;
    write_padded(tar.get_mut(), &info_json).map_err(werr)?;
    append_dumps(&mut tar, opts, meta_mtime, partial, cancel)?;

    // The manifest's JSON is written as the entries are (what `serde_json::to_vec` of a
    // `Manifest` gives, byte for byte) to an unlinked temporary file next to the archive, and
    // copied into the archive at the end: it is about 200 bytes per entry, 100 MB for
    // 500 000 files, and never held in memory.
    let manifest_file = plan_file(opts)?;
    let mut manifest_json = io::BufWriter::with_capacity(
        1 << 20,
        manifest_file.try_clone().ctx("cannot open", partial)?,
    );
    let merr = |e: io::Error| Error::io("cannot write a temporary file next to", partial, e);
    manifest_head(&mut manifest_json, &opts.info).map_err(merr)?;
    let mut entry_count = 0u64;
    let mut buf = vec![0u8; READ_BUF];
    let mut bytes_done = 0u64;
    let mut mid_reached = false;
    let mut plan_file = plan.file.try_clone().ctx("cannot open", partial)?;
    plan_file.seek(io::SeekFrom::Start(0)).map_err(merr)?;
    let mut reads = Reads::new(
        PlanReader {
            input: io::BufReader::with_capacity(1 << 20, plan_file),
        },
        plan.entries,
        &opts.source_dir,
        source,
    )
    .map_err(|e| Error::io("cannot start the file reading threads for", partial, e))?;
    for n in 0..plan.entries {
        cancel.check()?;
        let (item, data) = reads.next().map_err(merr)?;
        let item = &item;
        let abs = || opts.source_dir.join(&item.rel);
        let rel = item.rel.as_os_str().as_bytes();
        let mut header = tar::Header::new_gnu();
        header.set_mode(item.meta.mode() & 0o7777);
        header.set_uid(u64::from(item.meta.uid()));
        header.set_gid(u64::from(item.meta.gid()));
        // Tar has no negative times; a pre-1970 mtime is stored as 0 (and recorded so).
        let mtime = item.meta.mtime().max(0);
        header.set_mtime(mtime as u64);
        header.set_size(0);
        let mut record = ManifestEntry {
            path: None,
            path_hex: None,
            kind: EntryKind::File,
            size: 0,
            mode: item.meta.mode() & 0o7777,
            uid: u64::from(item.meta.uid()),
            gid: u64::from(item.meta.gid()),
            mtime,
            sha256: None,
            target: None,
            target_hex: None,
            stat: None,
        };
        (record.path, record.path_hex) = encode_bytes(rel);
        match &item.kind {
            ItemKind::Dir => {
                record.kind = EntryKind::Dir;
                header.set_entry_type(tar::EntryType::Directory);
                let mut name = rel.to_vec();
                name.push(b'/');
                append_raw(&mut tar, &mut header, &name, None).map_err(werr)?;
            }
            ItemKind::Symlink => {
                record.kind = EntryKind::Symlink;
                let abs = abs();
                let target = fs::read_link(&abs)
                    .map_err(|e| source_error("cannot read symlink", &abs, e))?;
                let target = target.as_os_str().as_bytes();
                (record.target, record.target_hex) = encode_bytes(target);
                header.set_entry_type(tar::EntryType::Symlink);
                append_raw(&mut tar, &mut header, rel, Some(target)).map_err(werr)?;
            }
            ItemKind::Hardlink(first) => {
                record.kind = EntryKind::Hardlink;
                let target = first.as_os_str().as_bytes();
                (record.target, record.target_hex) = encode_bytes(target);
                header.set_entry_type(tar::EntryType::Link);
                append_raw(&mut tar, &mut header, rel, Some(target)).map_err(werr)?;
            }
            ItemKind::File => {
                record.kind = EntryKind::File;
                record.size = item.meta.len();
                record.stat = Some(item.meta.file_stat());
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(item.meta.len());
                // A big file has members of its own (`incremental.rs`), copied from the
                // previous archive when it is unchanged.
                let big = item.meta.len() >= BIG_FILE;
                if big {
                    let align = if layout.aligns(item.meta.len()) {
                        layout.align
                    } else {
                        0
                    };
                    tar.get_mut()
                        .in_order(Box::new(move |s: &mut Sealed<HashingWriter>| {
                            if let Some(s) = s.plain_mut() {
                                s.write_all(&padding(s.count, align))?;
                                s.begin_span();
                            }
                            Ok(())
                        }))
                        .map_err(werr)?;
                }
                match data {
                    Data::Read(read) => {
                        let (data, sha) = read?;
                        append_small(&mut tar, &mut header, item, &data).map_err(werr)?;
                        bytes_done += record.size;
                        progress.advance(bytes_done, n, Some(&item.rel));
                        record.sha256 = Some(sha);
                    }
                    Data::Copy(s, c) => {
                        let abs = abs();
                        let now = fs::symlink_metadata(&abs)
                            .map_err(|e| source_error("cannot read metadata of", &abs, e))?;
                        if !item.meta.same_file(&now) {
                            return Err(Error::SourceChanged {
                                path: abs.clone(),
                                detail: "it changed after the scan".into(),
                            });
                        }
                        tar.get_mut()
                            .in_order(incremental::copy_job(s, c, damage))
                            .map_err(werr)?;
                        record.sha256 = c.entry.sha256.clone();
                        bytes_done += record.size;
                        reused_bytes += record.size;
                    }
                    Data::Live => {
                        let mut members = big.then(|| Members {
                            chunk: CHUNK_SIZE as u64,
                            old: source.and_then(|s| s.chunks(rel).map(|c| (s, c))),
                            damage,
                            reused: 0,
                        });
                        let sha = append_file(
                            &mut tar,
                            &mut header,
                            item,
                            &abs(),
                            partial,
                            &mut buf,
                            cancel,
                            members.as_mut(),
                            &mut |k| {
                                bytes_done += k;
                                progress.advance(bytes_done, n, Some(&item.rel));
                            },
                        )?;
                        reused_bytes += members.map_or(0, |m| m.reused);
                        record.sha256 = Some(sha);
                    }
                }
                if big {
                    let (spans, entry) = (std::sync::Arc::clone(&spans), entry_count);
                    tar.get_mut()
                        .in_order(Box::new(move |s: &mut Sealed<HashingWriter>| {
                            if let Some(s) = s.plain_mut() {
                                let span = s.end_span(entry)?;
                                spans.lock().unwrap_or_else(|p| p.into_inner()).push(span);
                            }
                            Ok(())
                        }))
                        .map_err(werr)?;
                }
            }
        }
        manifest_push(&mut manifest_json, entry_count, &record).map_err(merr)?;
        entry_count += 1;
        progress.advance(bytes_done, n + 1, Some(&item.rel));
        if !mid_reached && bytes_done.saturating_mul(2) >= plan.total_bytes {
            mid_reached = true;
            crate::faults::point("backup.mid_archive");
        }
    }
    cancel.check()?;

    // The manifest starts its own member (the next backup finds it from the end), after
    // every span has been recorded.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    tar.get_mut()
        .in_order(Box::new(move |_: &mut Sealed<HashingWriter>| {
            let _ = tx.send(());
            Ok(())
        }))
        .map_err(werr)?;
    if rx.recv().is_err() {
        tar.get_mut().write(&[]).map_err(werr)?;
        return Err(Error::Internal("the gzip writer stopped".into()));
    }
    let spans: Vec<Span> = std::mem::take(&mut *spans.lock().unwrap_or_else(|p| p.into_inner()));
    manifest_tail(&mut manifest_json, &layout, &spans).map_err(merr)?;
    manifest_json.write_all(b"\n").map_err(merr)?;
    manifest_json.flush().map_err(merr)?;
    drop(manifest_json);
    let mut manifest_file = manifest_file;
    let manifest_len = manifest_file.seek(io::SeekFrom::End(0)).map_err(merr)?;
    manifest_file.seek(io::SeekFrom::Start(0)).map_err(merr)?;
    let mut h = meta_header(tar::EntryType::Regular, 0o644, meta_mtime, manifest_len);
    append_raw(&mut tar, &mut h, MANIFEST_PATH.as_bytes(), None).map_err(werr)?;
    let copied = io::copy(&mut (&manifest_file).take(manifest_len), tar.get_mut()).map_err(werr)?;
    if copied != manifest_len {
        return Err(Error::Internal(format!(
            "the manifest's temporary file ended after {copied} of {manifest_len} bytes"
        )));
    }
    pad(tar.get_mut(), manifest_len).map_err(werr)?;

    let gz = tar.into_inner().map_err(werr)?;
    let sink = gz.finish().and_then(Sealed::finish).map_err(werr)?;
    let written = sink
        .file
        .metadata()
        .ctx("cannot stat archive", partial)?
        .len();
    if written != sink.count {
        return Err(Error::Internal(format!(
            "{}: wrote {} bytes but the file has {written}",
            partial.display(),
            sink.count
        )));
    }
    Ok(Written {
        size: sink.count,
        sink,
        entries: entry_count,
        source_bytes: bytes_done,
        reused_bytes,
    })
}

/// The dumps, right after `info.json` (`.nuwax-backup/dumps/` and one file per dump), each
/// copied exactly and checked against the size and checksum `info.json` already promised.
fn append_dumps(
    tar: &mut Tar,
    opts: &BuildOptions,
    mtime: i64,
    partial: &Path,
    cancel: &CancelFlag,
) -> Result<()> {
    if opts.info.dumps.is_empty() {
        return Ok(());
    }
    if opts.info.dumps.len() != opts.dump_files.len() {
        return Err(Error::Internal(
            "dump files and records differ in number".into(),
        ));
    }
    let werr = |e: io::Error| Error::io("cannot write archive", partial, e);
    let mut h = meta_header(tar::EntryType::Directory, 0o755, mtime, 0);
    let dir = format!("{}/", crate::dumps::DUMPS_DIR);
    append_raw(tar, &mut h, dir.as_bytes(), None).map_err(werr)?;
    let mut buf = vec![0u8; READ_BUF];
    for (record, file) in opts.info.dumps.iter().zip(&opts.dump_files) {
        let changed = |detail: String| Error::SourceChanged {
            path: file.clone(),
            detail,
        };
        let mut src = File::open(file).ctx("cannot read dump", file)?;
        let mut h = meta_header(tar::EntryType::Regular, 0o600, mtime, record.size);
        append_raw(tar, &mut h, record.archive_path().as_bytes(), None).map_err(werr)?;
        let gz = tar.get_mut();
        let sha = match copy_exact(
            &mut src,
            record.size,
            &mut buf,
            cancel,
            &mut |_| {},
            None,
            &mut |_, d| gz.write_all(d),
        ) {
            Ok(sha) => sha,
            Err(CopyFailure::Read(e)) => return Err(Error::io("cannot read dump", file, e)),
            Err(CopyFailure::Write(e)) => return Err(werr(e)),
            Err(CopyFailure::Shrank { got }) => {
                return Err(changed(format!(
                    "it ended after {got} of {} bytes",
                    record.size
                )));
            }
            Err(CopyFailure::Grew) => return Err(changed("it grew after the dump".into())),
            Err(CopyFailure::Cancelled) => return Err(Error::Interrupted),
        };
        if sha != record.sha256 {
            return Err(changed("its checksum changed after the dump".into()));
        }
        pad(tar.get_mut(), record.size).map_err(werr)?;
    }
    Ok(())
}

/// Writes `{"info":<info>,"entries":[`: the start of the compact JSON of a [`Manifest`].
fn manifest_head(json: &mut impl Write, info: &super::ArchiveInfo) -> io::Result<()> {
    json.write_all(b"{\"info\":")?;
    serde_json::to_writer(&mut *json, info)?;
    json.write_all(b",\"entries\":[")
}

/// Appends entry number `n` (from 0) to a manifest started by [`manifest_head`].
fn manifest_push(json: &mut impl Write, n: u64, entry: &ManifestEntry) -> io::Result<()> {
    if n > 0 {
        json.write_all(b",")?;
    }
    serde_json::to_writer(&mut *json, entry).map_err(io::Error::from)
}

/// Ends a manifest started by [`manifest_head`]: the entries array, the layout and the spans.
fn manifest_tail(json: &mut impl Write, layout: &Layout, spans: &[Span]) -> io::Result<()> {
    json.write_all(b"],\"layout\":")?;
    serde_json::to_writer(&mut *json, layout)?;
    if !spans.is_empty() {
        json.write_all(b",\"spans\":")?;
        serde_json::to_writer(&mut *json, spans)?;
    }
    json.write_all(b"}")
}

fn meta_header(kind: tar::EntryType, mode: u32, mtime: i64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime as u64);
    h.set_size(size);
    h
}

/// Writes `data` and the zero padding to the next 512-byte block.
fn write_padded(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
    w.write_all(data)?;
    pad(w, data.len() as u64)
}

fn pad(w: &mut impl Write, len: u64) -> io::Result<()> {
    let rem = (512 - len % 512) % 512;
    w.write_all(&[0u8; 512][..rem as usize])
}

/// Writes the header of an entry (plus GNU long-name/long-link records when needed), with
/// the path and link target as raw bytes. The caller writes the data, if any.
fn append_raw<W: Write>(
    tar: &mut tar::Builder<W>,
    header: &mut tar::Header,
    path: &[u8],
    link: Option<&[u8]>,
) -> io::Result<()> {
    if let Some(link) = link {
        let field = &mut header.as_old_mut().linkname;
        if link.len() >= NAME_FIELD {
            long_record(tar, tar::EntryType::GNULongLink, link)?;
            field.copy_from_slice(&link[..NAME_FIELD]);
        } else {
            field.fill(0);
            field[..link.len()].copy_from_slice(link);
        }
    }
    let field = &mut header.as_old_mut().name;
    if path.len() >= NAME_FIELD {
        long_record(tar, tar::EntryType::GNULongName, path)?;
        field.copy_from_slice(&path[..NAME_FIELD]);
    } else {
        field.fill(0);
        field[..path.len()].copy_from_slice(path);
    }
    header.set_cksum();
    tar.append(header, io::empty())
}

/// A GNU `././@LongLink` record holding `value` (NUL-terminated), as GNU tar writes it.
fn long_record<W: Write>(
    tar: &mut tar::Builder<W>,
    kind: tar::EntryType,
    value: &[u8],
) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    let name = b"././@LongLink";
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(value.len() as u64 + 1);
    h.set_entry_type(kind);
    h.set_cksum();
    tar.append(&h, value.chain(&[0u8][..]))
}

/// Appends one regular file of any size: checks it against its scan-time lstat, copies
/// exactly its size while hashing, and checks it did not change. Returns the content's
/// SHA-256. (The write pass calls it for files of [`READ_BUF`] or more; smaller ones come
/// read ahead, [`read_small_file`].)
#[allow(clippy::too_many_arguments)]
fn append_file(
    tar: &mut Tar,
    header: &mut tar::Header,
    item: &Item,
    abs: &Path,
    partial: &Path,
    buf: &mut [u8],
    cancel: &CancelFlag,
    members: Option<&mut Members<'_>>,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<String> {
    let changed = |detail: String| Error::SourceChanged {
        path: abs.to_path_buf(),
        detail,
    };
    let werr = |e: io::Error| Error::io("cannot write archive", partial, e);
    let size = item.meta.len();
    let mut file = open_source(abs, &item.rel)?;
    let before = file.metadata().ctx("cannot stat", abs)?;
    if !before.is_file() || before.dev() != item.meta.dev() || before.ino() != item.meta.ino() {
        return Err(changed("it was replaced after the scan".into()));
    }
    if let Some(d) = stat_difference(&item.meta, &before) {
        return Err(changed(format!("{d} after the scan")));
    }
    append_raw(tar, header, item.rel.as_os_str().as_bytes(), None).map_err(werr)?;
    let gz = tar.get_mut();
    let copied = match members {
        // The data is cut where the members are: the span began with a cut, and the header
        // and long-name records are in the chunk being filled.
        Some(m) => {
            let first = m.chunk.saturating_sub(gz.pending() as u64);
            let cuts = Some((first, m.chunk));
            copy_exact(
                &mut file,
                size,
                buf,
                cancel,
                on_bytes,
                cuts,
                &mut |at, d| m.piece(gz, at, d),
            )
        }
        None => copy_exact(&mut file, size, buf, cancel, on_bytes, None, &mut |_, d| {
            gz.write_all(d)
        }),
    };
    let sha = match copied {
        Ok(sha) => sha,
        Err(CopyFailure::Read(e)) => return Err(Error::io("cannot read", abs, e)),
        Err(CopyFailure::Write(e)) => return Err(werr(e)),
        Err(CopyFailure::Shrank { got }) => {
            return Err(changed(format!("it ended after {got} of {size} bytes")));
        }
        Err(CopyFailure::Grew) => {
            return Err(changed(format!("it grew beyond {size} bytes")));
        }
        Err(CopyFailure::Cancelled) => return Err(Error::Interrupted),
    };
    pad(tar.get_mut(), size).map_err(werr)?;
    let after = file.metadata().ctx("cannot stat", abs)?;
    if let Some(d) = stat_difference(&item.meta, &after) {
        return Err(changed(format!("{d} while it was read")));
    }
    Ok(sha)
}

/// Opens a file to archive. O_NOFOLLOW: a file swapped for a symlink fails instead of being
/// followed; O_NONBLOCK: a file swapped for a fifo cannot hang the backup (no effect on
/// regular files).
fn open_source(abs: &Path, rel: &Path) -> Result<File> {
    if let Some(e) = crate::faults::fail_read(rel) {
        return Err(source_error("cannot read", abs, e));
    }
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(abs)
        .map_err(|e| source_error("cannot read", abs, e))
}

/// The directory of the last small file a reading thread opened: files of one directory
/// (a batch holds consecutive entries of the plan) are opened relative to it, so that the
/// kernel looks up one name instead of walking the whole path again for each.
#[derive(Default)]
struct ParentDir {
    dir: Option<(PathBuf, std::os::fd::OwnedFd)>,
}

impl ParentDir {
    /// `abs` opened as [`open_source`] opens it (read only, not following a symlink, not
    /// blocking on a FIFO), relative to its directory; `None` when that does not work, and
    /// the caller opens it by path (and reports that error).
    #[allow(unsafe_code)]
    fn open(&mut self, abs: &Path) -> Option<File> {
        use std::ffi::CString;
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let (parent, name) = (abs.parent()?, abs.file_name()?);
        if self.dir.as_ref().is_none_or(|(p, _)| p != parent) {
            self.dir = None;
            let path = CString::new(parent.as_os_str().as_bytes()).ok()?;
            // SAFETY: `path` is a NUL-terminated string that outlives the call.
            let fd = unsafe {
                libc::open(
                    path.as_ptr(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                return None;
            }
            // SAFETY: `fd` was just opened and is owned by nothing else.
            self.dir = Some((parent.to_path_buf(), unsafe { OwnedFd::from_raw_fd(fd) }));
        }
        let (_, dir) = self.dir.as_ref()?;
        let name = CString::new(name.as_bytes()).ok()?;
        // SAFETY: `dir` is an open directory descriptor and `name` a NUL-terminated string,
        // both alive for the call.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        // SAFETY: as above: a descriptor just opened, owned by the new `File`.
        (fd >= 0).then(|| unsafe { File::from_raw_fd(fd) })
    }
}

/// A file smaller than [`READ_BUF`] (most of a `node_modules` tree), whole, and its SHA-256
/// (hex). It is read whole first, with a byte of room to see growth; then one fstat checks
/// the same things as the two around a large file's copy (same inode, size and mtime as
/// `meta`, scanned; the read found exactly that size): open, read, fstat, close.
fn read_small_file(
    abs: &Path,
    rel: &Path,
    meta: &Stat,
    dir: &mut ParentDir,
) -> Result<(Vec<u8>, String)> {
    let changed = |detail: String| Error::SourceChanged {
        path: abs.to_path_buf(),
        detail,
    };
    // By path (and its error reported) whenever the directory-relative open does not work.
    let opened = crate::faults::fail_read(rel)
        .is_none()
        .then(|| dir.open(abs))
        .flatten();
    let mut file = match opened {
        Some(f) => f,
        None => open_source(abs, rel)?,
    };
    let size = usize::try_from(meta.len())
        .ok()
        .filter(|&s| s < READ_BUF)
        .ok_or_else(|| Error::Internal(format!("{} is not a small file", abs.display())))?;
    let mut data = vec![0u8; size + 1];
    let got = read_small(&mut file, &mut data).map_err(|e| Error::io("cannot read", abs, e))?;
    let after = file.metadata().ctx("cannot stat", abs)?;
    if !after.is_file() || after.dev() != meta.dev() || after.ino() != meta.ino() {
        return Err(changed("it was replaced after the scan".into()));
    }
    if let Some(d) = stat_difference(meta, &after) {
        return Err(changed(format!("{d} after the scan")));
    }
    if got > size {
        return Err(changed(format!("it grew beyond {size} bytes")));
    }
    if got < size {
        return Err(changed(format!("it ended after {got} of {size} bytes")));
    }
    data.truncate(size);
    let sha = hex::encode(Sha256::digest(&data));
    Ok((data, sha))
}

/// Appends a small file read by [`read_small_file`]: its header and its padded data.
fn append_small(
    tar: &mut Tar,
    header: &mut tar::Header,
    item: &Item,
    data: &[u8],
) -> io::Result<()> {
    append_raw(tar, header, item.rel.as_os_str().as_bytes(), None)?;
    write_padded(tar.get_mut(), data)
}

/// What the incremental build compares with the previous manifest (see
/// [`incremental::unchanged`]).
fn live_of(item: &Item) -> Live {
    Live {
        size: item.meta.len(),
        mode: item.meta.mode() & 0o7777,
        uid: u64::from(item.meta.uid()),
        gid: u64::from(item.meta.gid()),
        mtime: item.meta.mtime().max(0),
        stat: item.meta.file_stat(),
    }
}

/// Reads into `buf` until it is full or the file ends; returns the bytes read. A regular
/// file's read comes back short only at its end, so a file smaller than `buf` takes one read
/// (and no second one to see the end: the caller's fstat compares the size).
fn read_small(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let want = buf.len() - 1;
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                if got == want {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// How two stats of one file differ in size or mtime, if they do.
fn stat_difference(a: &Stat, b: &Metadata) -> Option<String> {
    if a.len() != b.len() {
        Some(format!(
            "its size went from {} to {} bytes",
            a.len(),
            b.len()
        ))
    } else if (a.mtime(), a.mtime_nsec()) != (b.mtime(), b.mtime_nsec()) {
        Some("its modification time changed".into())
    } else {
        None
    }
}

#[derive(Debug)]
enum CopyFailure {
    Read(io::Error),
    Write(io::Error),
    /// The source ended early (`got` bytes).
    Shrank {
        got: u64,
    },
    /// The source has more than `size` bytes.
    Grew,
    Cancelled,
}

/// Copies exactly `size` bytes from `src` to `out` (which takes each piece with its offset
/// in the source), hashing them, then probes one more byte: a tar header has promised
/// `size`, so a short or long source is an error, never padding or truncation. With `cuts`
/// `(first, every)`, the pieces end at `first`, then every `every` bytes (each read whole
/// before it is handed on; `every` must not exceed `buf`); without, a piece is what one
/// read gives. Returns the SHA-256 (lowercase hex).
fn copy_exact(
    src: &mut impl Read,
    size: u64,
    buf: &mut [u8],
    cancel: &CancelFlag,
    on_bytes: &mut dyn FnMut(u64),
    cuts: Option<(u64, u64)>,
    out: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
) -> std::result::Result<String, CopyFailure> {
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    while done < size {
        let end = match cuts {
            Some((first, _)) if done < first => first,
            Some((first, every)) => done + every - (done - first) % every,
            None => done + buf.len() as u64,
        };
        let want = usize::try_from(end.min(size) - done)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let mut got = 0;
        while got < want && (got == 0 || cuts.is_some()) {
            if cancel.is_cancelled() {
                return Err(CopyFailure::Cancelled);
            }
            match src.read(&mut buf[got..want]) {
                Ok(0) => {
                    return Err(CopyFailure::Shrank {
                        got: done + got as u64,
                    });
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CopyFailure::Read(e)),
            }
        }
        hasher.update(&buf[..got]);
        out(done, &buf[..got]).map_err(CopyFailure::Write)?;
        done += got as u64;
        on_bytes(got as u64);
    }
    let mut probe = [0u8; 1];
    loop {
        match src.read(&mut probe) {
            Ok(0) => break,
            Ok(_) => return Err(CopyFailure::Grew),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyFailure::Read(e)),
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(src: &[u8], size: u64) -> std::result::Result<(Vec<u8>, String), CopyFailure> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 3];
        let sha = copy_exact(
            &mut &src[..],
            size,
            &mut buf,
            &CancelFlag::default(),
            &mut |_| {},
            None,
            &mut |_, d| out.write_all(d),
        )?;
        Ok((out, sha))
    }

    #[test]
    fn incremental_manifest_json_is_serde_json_of_the_manifest() {
        let info = super::super::ArchiveInfo {
            format: 1,
            tool: "nuwax-cli test".into(),
            backup_type: "Manual".into(),
            service_version: "1.2.3".into(),
            created_at: "2026-01-02T03:04:05Z".into(),
            compose_project: "p\"q".into(),
            data_paths: vec!["data".parse().unwrap()],
            excluded: vec![],
            images: vec![],
            top_level_bytes: [("data".parse().unwrap(), 7u64)].into_iter().collect(),
            dumps: Vec::new(),
            hot: false,
        };
        let entry = |i: u64| {
            let (path, path_hex) = encode_bytes(format!("a/\u{e9}{i}").as_bytes());
            ManifestEntry {
                path,
                path_hex,
                kind: EntryKind::File,
                size: i,
                mode: 0o644,
                uid: 1,
                gid: 2,
                mtime: -1,
                sha256: Some("ab".repeat(32)),
                target: None,
                target_hex: None,
                stat: None,
            }
        };
        for n in [0u64, 1, 3] {
            let entries: Vec<ManifestEntry> = (0..n).map(entry).collect();
            let mut json = Vec::new();
            manifest_head(&mut json, &info).unwrap();
            for (i, e) in entries.iter().enumerate() {
                manifest_push(&mut json, i as u64, e).unwrap();
            }
            let layout = Layout {
                level: 3,
                chunk: 1 << 20,
                big_file: BIG_FILE,
                align: ALIGN,
                align_from: ALIGN_FROM,
            };
            let spans: Vec<Span> = (0..n)
                .map(|i| Span {
                    entry: i,
                    offset: 10 * i,
                    len: 7,
                    sha256: "cd".repeat(32),
                    chunks: (0..i)
                        .map(|k| super::super::format::Chunk {
                            at: k << 20,
                            plain: "ef".repeat(32),
                            offset: 10 * i + k,
                            len: 1,
                            sha256: "01".repeat(32),
                        })
                        .collect(),
                })
                .collect();
            manifest_tail(&mut json, &layout, &spans).unwrap();
            let want = serde_json::to_vec(&super::super::Manifest {
                info: info.clone(),
                entries,
                layout: Some(layout),
                spans,
            })
            .unwrap();
            assert_eq!(
                String::from_utf8(json).unwrap(),
                String::from_utf8(want).unwrap()
            );
        }
    }

    #[test]
    fn copy_exact_takes_exactly_size_bytes() {
        let (out, sha) = copy(b"hello world", 11).unwrap();
        assert_eq!(out, b"hello world");
        assert_eq!(sha, hex::encode(Sha256::digest(b"hello world")));
        let (out, _) = copy(b"", 0).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn copy_exact_refuses_a_grown_or_shrunk_source() {
        assert!(matches!(copy(b"hello world!", 11), Err(CopyFailure::Grew)));
        assert!(matches!(copy(b"x", 0), Err(CopyFailure::Grew)));
        assert!(matches!(
            copy(b"hello", 11),
            Err(CopyFailure::Shrank { got: 5 })
        ));
        assert!(matches!(copy(b"", 1), Err(CopyFailure::Shrank { got: 0 })));
    }

    #[test]
    fn copy_exact_cuts_pieces_where_asked_and_reads_each_whole() {
        /// Hands out at most two bytes a read.
        struct Slow<'a>(&'a [u8]);
        impl Read for Slow<'_> {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                let n = b.len().min(2).min(self.0.len());
                b[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let data: Vec<u8> = (0..25).collect();
        let mut pieces = Vec::new();
        let sha = copy_exact(
            &mut Slow(&data),
            25,
            &mut [0u8; 8],
            &CancelFlag::default(),
            &mut |_| {},
            Some((3, 5)),
            &mut |at, d| {
                pieces.push((at, d.to_vec()));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(sha, hex::encode(Sha256::digest(&data)));
        let cut: Vec<(u64, usize)> = pieces.iter().map(|(a, d)| (*a, d.len())).collect();
        assert_eq!(cut, [(0, 3), (3, 5), (8, 5), (13, 5), (18, 5), (23, 2)]);
        assert!(
            pieces
                .iter()
                .all(|(a, d)| d[..] == data[*a as usize..][..d.len()])
        );
    }

    #[test]
    fn copy_exact_stops_when_cancelled() {
        let cancel = CancelFlag::default();
        cancel.cancel();
        let r = copy_exact(
            &mut &b"abc"[..],
            3,
            &mut [0u8; 4],
            &cancel,
            &mut |_| {},
            None,
            &mut |_, _| Ok(()),
        );
        assert!(matches!(r, Err(CopyFailure::Cancelled)));
    }
}
