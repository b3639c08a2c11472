//! Writing an archive (format in `archive/mod.rs`).
//!
//! Design note: the build is two passes. The scan walks the source (jwalk, in parallel, lstat
//! on the walker's threads), drops excluded paths, sorts by raw path bytes and decides which
//! paths become hard-link entries; it also yields the totals for progress. The write pass
//! then streams the entries through the tar builder into the parallel gzip writer, hashing
//! the archive bytes on their way to `<dest>.partial`.
//!
//! A file is opened without following links and checked against its scan-time lstat (same
//! inode, size and mtime) before a header is written, read to exactly that size (one byte
//! more is probed), and checked again afterwards; any difference fails the whole backup with
//! [`Error::SourceChanged`]: the tar header has already promised a size, so continuing could
//! only produce a wrong archive. Headers are filled by hand from the lstat data (GNU format,
//! numeric ids, no user/group names, atime/ctime zero) so the same tree and info always give
//! the same bytes. Long names and link targets use GNU `L`/`K` records written here with the
//! raw bytes: `tar::Header::set_link_name` normalizes (`a//b` becomes `a/b`) and
//! `Builder::append_data` cannot store a long path whose first byte is not UTF-8.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::filepool::start_writeback;
use super::format::{FileStat, INFO_PATH, Layout, MANIFEST_PATH, Span, encode_bytes};
use super::incremental::{self, BIG_FILE, Damage, Live, Source};
use super::pgzip::{CHUNK_SIZE, ParallelGzWriter};
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
    build_inner(opts, progress, cancel, &mut || {})
}

/// [`build`] with a hook that runs between the scan and the write pass (tests use it to
/// change the source at a known moment).
pub(super) fn build_inner(
    opts: &BuildOptions,
    progress: &Progress,
    cancel: &CancelFlag,
    after_scan: &mut dyn FnMut(),
) -> Result<BuildReport> {
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
    let excludes = Excludes::new(opts, &partial)?;

    progress.phase(Phase::Scanning, None, None);
    let plan = scan(opts, excludes, progress, cancel)?;
    release_free_memory();
    // The sizes a restore of each top-level item needs, recorded in info.json from this very
    // scan (made with the services stopped), not from an earlier walk.
    let mut with_sizes = opts.clone();
    with_sizes.info.top_level_bytes = top_level_bytes(&plan);
    let opts = &with_sizes;
    progress.phase(
        Phase::Archiving,
        Some(plan.total_bytes),
        Some(plan.items.len() as u64),
    );
    after_scan();
    let mut source = incremental_source(opts, progress);

    // From here on, any error or panic removes the partial file.
    let mut guard = PartialGuard {
        path: &partial,
        armed: true,
    };
    let written = loop {
        // Readable too: copied members are read back and hashed (`pgzip/copy.rs`).
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .ctx("cannot create archive", &partial)?;
        crate::faults::point("backup.after_partial_created");
        let damage = Damage::default();
        match write_archive(
            file,
            &plan,
            opts,
            &partial,
            source.as_ref(),
            &damage,
            progress,
            cancel,
        ) {
            Ok(w) => break w,
            Err(e) if damage.is_set() => {
                progress.notice(format!(
                    "{e}; writing the archive again, every file read from the live tree"
                ));
                source = None;
                fs::remove_file(&partial).ctx("cannot remove", &partial)?;
                progress.phase(
                    Phase::Archiving,
                    Some(plan.total_bytes),
                    Some(plan.items.len() as u64),
                );
            }
            Err(e) => return Err(e),
        }
    };
    written
        .file
        .sync_all()
        .ctx("cannot sync archive", &partial)?;
    drop(written.file);

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

    progress.finish_phase(written.source_bytes, written.entries);
    Ok(BuildReport {
        path: opts.dest.clone(),
        size: written.size,
        sha256: written.sha256,
        entries: written.entries,
        source_bytes: written.source_bytes,
        reused_bytes: written.reused_bytes,
        unmatched_excludes: plan.unmatched_excludes.clone(),
        skipped_special: plan.special.len() as u64,
    })
}

/// The member layout this build writes (recorded in the manifest).
fn layout(opts: &BuildOptions) -> Layout {
    Layout {
        level: opts.level,
        chunk: CHUNK_SIZE as u64,
        big_file: BIG_FILE,
    }
}

/// The previous archive to copy unchanged big files from, if it can serve (else a notice).
fn incremental_source(opts: &BuildOptions, progress: &Progress) -> Option<Source> {
    let path = opts.previous.as_deref()?;
    match Source::open(path, &layout(opts), &opts.info.tool) {
        Ok(s) => Some(s),
        Err(why) => {
            progress.notice(format!("reading every file: {why}"));
            None
        }
    }
}

/// Bytes a restore writes per top-level item: each regular file's allocated bytes (a sparse
/// file's holes are kept by the restore), hard links and directories none.
fn top_level_bytes(plan: &Plan) -> std::collections::BTreeMap<crate::relpath::TopName, u64> {
    let mut sizes = std::collections::BTreeMap::new();
    for item in &plan.items {
        let Some(first) = item.rel.components().next() else {
            continue;
        };
        // Keys are text in info.json: a non-UTF-8 name is recorded lossily, as before.
        let Ok(name) = crate::relpath::TopName::parse(first.as_os_str().to_string_lossy().as_ref())
        else {
            continue;
        };
        let bytes = match item.kind {
            ItemKind::File => item.meta.len.min(item.meta.blocks.saturating_mul(512)),
            _ => 0,
        };
        let total: &mut u64 = sizes.entry(name).or_default();
        *total = total.saturating_add(bytes);
    }
    sizes
}

/// Hands freed heap pages back to the kernel (glibc's `malloc_trim`). The scan's short-lived
/// allocations are made on the walker's threads, in their own malloc arenas, and would
/// otherwise stay resident through the whole write (about 40 MB for 120 000 entries).
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
struct PartialGuard<'a> {
    path: &'a Path,
    armed: bool,
}

impl Drop for PartialGuard<'_> {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = fs::remove_file(self.path)
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

/// The lstat fields the builder uses, with `Metadata`'s accessor names. A `Metadata` is three
/// times larger, and the plan holds one per entry (120 000 entries for a 4 GB tree).
#[derive(Debug, Clone, Copy)]
struct Stat {
    file_type: fs::FileType,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
    ctime: i64,
    ctime_nsec: i64,
    mode: u32,
    uid: u32,
    gid: u32,
    dev: u64,
    ino: u64,
    nlink: u64,
    /// 512-byte blocks allocated (a sparse file has fewer than its length).
    blocks: u64,
}

impl Stat {
    fn of(m: &Metadata) -> Self {
        Stat {
            file_type: m.file_type(),
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
    fn file_type(&self) -> fs::FileType {
        self.file_type
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
}

enum ItemKind {
    Dir,
    File,
    Symlink,
    /// A later path of an inode already stored under this path (same top-level item).
    Hardlink(PathBuf),
}

struct Plan {
    items: Vec<Item>,
    /// Sockets, fifos and devices that were left out.
    special: Vec<PathBuf>,
    total_bytes: u64,
    /// Exclude rules that matched nothing.
    unmatched_excludes: Vec<String>,
}

/// lstat results computed on the walker's threads.
type WalkState = ((), Option<io::Result<Stat>>);

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
    let excludes = Arc::new(excludes);
    let walk_root = root.clone();
    let walk_excludes = Arc::clone(&excludes);
    // A private pool: the default rayon pool may be busy elsewhere, and jwalk then aborts.
    let threads = resolve_threads(0).clamp(1, 8);
    // jwalk 0.8.1 is pinned (deprecated upstream; its successor is unordered). Hidden files
    // must not be skipped (`.env`), links are never followed, and an unreadable directory is
    // reported through `read_children_error`, not as an `Err` item: both are checked below.
    let walk = jwalk::WalkDirGeneric::<WalkState>::new(&root)
        .skip_hidden(false)
        .follow_links(false)
        .sort(true)
        .parallelism(jwalk::Parallelism::RayonNewPool(threads))
        .process_read_dir(move |_, _, _, children| {
            children.retain(|child| match child {
                Ok(c) => {
                    let path = c.parent_path.join(&c.file_name);
                    match path.strip_prefix(&walk_root) {
                        Ok(rel) => !walk_excludes.excludes(rel),
                        Err(_) => true,
                    }
                }
                Err(_) => true,
            });
            for c in children.iter_mut().flatten() {
                c.client_state = Some(
                    fs::symlink_metadata(c.parent_path.join(&c.file_name)).map(|m| Stat::of(&m)),
                );
            }
        });

    let mut found: Vec<(PathBuf, Stat)> = Vec::new();
    for entry in walk {
        cancel.check()?;
        let mut entry = entry.map_err(|e| walk_error(e, &root))?;
        if let Some(err) = entry.read_children_error.take() {
            let path = entry.path();
            return Err(walk_error(err, &path));
        }
        if entry.depth == 0 {
            continue;
        }
        let path = entry.path();
        let rel = path
            .strip_prefix(&root)
            .map_err(|_| Error::Internal(format!("{} is outside the walk", path.display())))?
            .to_path_buf();
        let meta = match entry.client_state.take() {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(source_error("cannot read metadata of", &path, e)),
            None => fs::symlink_metadata(&path)
                .map(|m| Stat::of(&m))
                .map_err(|e| source_error("cannot read metadata of", &path, e))?,
        };
        if found.len().is_multiple_of(1024) {
            progress.advance(0, found.len() as u64, Some(&rel));
        }
        found.push((rel, meta));
    }
    found.sort_by(|a, b| a.0.as_os_str().as_bytes().cmp(b.0.as_os_str().as_bytes()));

    // First path of each multiply-linked inode, per top-level item.
    let mut first_paths: HashMap<(u64, u64, OsString), PathBuf> = HashMap::new();
    let mut items = Vec::with_capacity(found.len());
    let mut special = Vec::new();
    let mut total_bytes = 0u64;
    for (rel, meta) in found {
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            ItemKind::Dir
        } else if ft.is_symlink() {
            ItemKind::Symlink
        } else if ft.is_file() {
            let mut kind = ItemKind::File;
            if meta.nlink() > 1 {
                let top = rel.iter().next().unwrap_or_default().to_owned();
                match first_paths.entry((meta.dev(), meta.ino(), top)) {
                    std::collections::hash_map::Entry::Occupied(o) => {
                        kind = ItemKind::Hardlink(o.get().clone());
                    }
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(rel.clone());
                    }
                }
            }
            if matches!(kind, ItemKind::File) {
                total_bytes += meta.len();
            }
            kind
        } else {
            if special.len() < MAX_SPECIAL_NOTICES {
                progress.notice(format!(
                    "skipping {}: sockets, fifos and device files cannot be backed up",
                    root.join(&rel).display()
                ));
            }
            special.push(rel);
            continue;
        };
        items.push(Item { rel, meta, kind });
    }
    if special.len() > MAX_SPECIAL_NOTICES {
        progress.notice(format!(
            "skipped {} more sockets, fifos or device files",
            special.len() - MAX_SPECIAL_NOTICES
        ));
    }
    Ok(Plan {
        items,
        special,
        total_bytes,
        unmatched_excludes: excludes.rules.unmatched(),
    })
}

fn walk_error(e: jwalk::Error, fallback: &Path) -> Error {
    let path = e
        .path()
        .map_or_else(|| fallback.to_path_buf(), Path::to_path_buf);
    let text = e.to_string();
    match e.into_io_error() {
        Some(io) => source_error("cannot read", &path, io),
        None => Error::io("cannot walk", path, io::Error::other(text)),
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

/// Hashes and counts everything written to the archive file, and starts the writeback of
/// every `WRITEBACK` bytes written so that the final fsync has little left to wait for.
pub(super) struct HashingWriter {
    pub(super) file: File,
    pub(super) hasher: Sha256,
    pub(super) count: u64,
    /// Start of the range whose writeback has not been started yet.
    unflushed: u64,
    /// The span being hashed (`incremental.rs`): its start and its hash so far.
    pub(super) span: Option<(u64, Sha256)>,
}

/// See [`HashingWriter`].
const WRITEBACK: u64 = 8 << 20;

impl HashingWriter {
    /// Starts the writeback of every full `WRITEBACK` written since the last one.
    pub(super) fn writeback(&mut self) {
        if self.count - self.unflushed >= WRITEBACK {
            start_writeback(&self.file, self.unflushed, self.count);
            self.unflushed = self.count;
        }
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        if let Some((_, h)) = self.span.as_mut() {
            h.update(&buf[..n]);
        }
        self.count += n as u64;
        self.writeback();
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

struct Written {
    file: File,
    size: u64,
    sha256: String,
    entries: u64,
    source_bytes: u64,
    reused_bytes: u64,
}

type Tar = tar::Builder<ParallelGzWriter<HashingWriter>>;

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
    let sink = HashingWriter {
        file,
        hasher: Sha256::new(),
        count: 0,
        unflushed: 0,
        span: None,
    };
    let spans: Arc<std::sync::Mutex<Vec<Span>>> = Arc::default();
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

    // The manifest's JSON is built as the entries are written (what `serde_json::to_vec` of a
    // `Manifest` gives, byte for byte), not from a list of `ManifestEntry`: at 120 000 entries
    // the list and its serialization would be two 35 MB copies of the same thing.
    let mut manifest_json = manifest_head(&opts.info, &plan.items)?;
    let mut entry_count = 0u64;
    let mut buf = vec![0u8; READ_BUF];
    let mut bytes_done = 0u64;
    let mut mid_reached = false;
    for (n, item) in plan.items.iter().enumerate() {
        cancel.check()?;
        let abs = opts.source_dir.join(&item.rel);
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
                    tar.get_mut()
                        .in_order(Box::new(|s: &mut HashingWriter| {
                            s.begin_span();
                            Ok(())
                        }))
                        .map_err(werr)?;
                }
                let live = Live {
                    size: record.size,
                    mode: record.mode,
                    uid: record.uid,
                    gid: record.gid,
                    mtime,
                    stat: item.meta.file_stat(),
                };
                let copy = source
                    .filter(|_| big)
                    .and_then(|s| s.candidate(rel, &live).map(|c| (s, c)));
                if let Some((s, c)) = copy {
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
                } else {
                    let sha = append_file(
                        &mut tar,
                        &mut header,
                        item,
                        &abs,
                        partial,
                        &mut buf,
                        cancel,
                        &mut |k| {
                            bytes_done += k;
                            progress.advance(bytes_done, n as u64, Some(&item.rel));
                        },
                    )?;
                    record.sha256 = Some(sha);
                }
                if big {
                    let (spans, entry) = (Arc::clone(&spans), entry_count);
                    tar.get_mut()
                        .in_order(Box::new(move |s: &mut HashingWriter| {
                            let (offset, len, sha256) = s.end_span()?;
                            let span = Span {
                                entry,
                                offset,
                                len,
                                sha256,
                            };
                            spans.lock().unwrap_or_else(|p| p.into_inner()).push(span);
                            Ok(())
                        }))
                        .map_err(werr)?;
                }
            }
        }
        manifest_push(&mut manifest_json, entry_count, &record)?;
        entry_count += 1;
        progress.advance(bytes_done, n as u64 + 1, Some(&item.rel));
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
        .in_order(Box::new(move |_: &mut HashingWriter| {
            let _ = tx.send(());
            Ok(())
        }))
        .map_err(werr)?;
    if rx.recv().is_err() {
        tar.get_mut().write(&[]).map_err(werr)?;
        return Err(Error::Internal("the gzip writer stopped".into()));
    }
    let spans = std::mem::take(&mut *spans.lock().unwrap_or_else(|p| p.into_inner()));
    manifest_tail(&mut manifest_json, &layout(opts), &spans)?;
    manifest_json.push(b'\n');
    let mut h = meta_header(
        tar::EntryType::Regular,
        0o644,
        meta_mtime,
        manifest_json.len() as u64,
    );
    append_raw(&mut tar, &mut h, MANIFEST_PATH.as_bytes(), None).map_err(werr)?;
    write_padded(tar.get_mut(), &manifest_json).map_err(werr)?;

    let gz = tar.into_inner().map_err(werr)?;
    let sink = gz.finish().map_err(werr)?;
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
        file: sink.file,
        size: sink.count,
        sha256: hex::encode(sink.hasher.finalize()),
        entries: entry_count,
        source_bytes: bytes_done,
        reused_bytes,
    })
}

/// `{"info":<info>,"entries":[`: the start of the compact JSON of a [`Manifest`].
/// Its capacity is estimated from the paths of `items` (growing a 30 MB buffer by copying
/// would leave the old copies resident).
fn manifest_head(info: &super::ArchiveInfo, items: &[Item]) -> Result<Vec<u8>> {
    // About 220 bytes of JSON per entry besides its path (field names, numbers, checksum).
    let estimate: usize = items.iter().map(|i| i.rel.as_os_str().len() + 220).sum();
    let mut json = Vec::with_capacity(estimate + 4096);
    json.extend_from_slice(b"{\"info\":");
    serde_json::to_writer(&mut json, info)
        .map_err(|e| Error::Internal(format!("cannot encode manifest.json: {e}")))?;
    json.extend_from_slice(b",\"entries\":[");
    Ok(json)
}

/// Appends entry number `n` (from 0) to a manifest started by [`manifest_head`].
fn manifest_push(json: &mut Vec<u8>, n: u64, entry: &ManifestEntry) -> Result<()> {
    if n > 0 {
        json.push(b',');
    }
    serde_json::to_writer(&mut *json, entry)
        .map_err(|e| Error::Internal(format!("cannot encode manifest.json: {e}")))
}

/// Ends a manifest started by [`manifest_head`]: the entries array, the layout and the spans.
fn manifest_tail(json: &mut Vec<u8>, layout: &Layout, spans: &[Span]) -> Result<()> {
    let enc = |e: serde_json::Error| Error::Internal(format!("cannot encode manifest.json: {e}"));
    json.extend_from_slice(b"],\"layout\":");
    serde_json::to_writer(&mut *json, layout).map_err(enc)?;
    if !spans.is_empty() {
        json.extend_from_slice(b",\"spans\":");
        serde_json::to_writer(&mut *json, spans).map_err(enc)?;
    }
    json.push(b'}');
    Ok(())
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

/// Appends one regular file: checks it against its scan-time lstat, copies exactly its size
/// while hashing, and checks it did not change. Returns the content's SHA-256.
#[allow(clippy::too_many_arguments)]
fn append_file(
    tar: &mut Tar,
    header: &mut tar::Header,
    item: &Item,
    abs: &Path,
    partial: &Path,
    buf: &mut [u8],
    cancel: &CancelFlag,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<String> {
    let changed = |detail: String| Error::SourceChanged {
        path: abs.to_path_buf(),
        detail,
    };
    // O_NOFOLLOW: a file swapped for a symlink fails instead of being followed; O_NONBLOCK:
    // a file swapped for a fifo cannot hang the backup (no effect on regular files).
    if let Some(e) = crate::faults::fail_read(&item.rel) {
        return Err(source_error("cannot read", abs, e));
    }
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(abs)
        .map_err(|e| source_error("cannot read", abs, e))?;
    let before = file.metadata().ctx("cannot stat", abs)?;
    if !before.is_file() || before.dev() != item.meta.dev() || before.ino() != item.meta.ino() {
        return Err(changed("it was replaced after the scan".into()));
    }
    if let Some(d) = stat_difference(&item.meta, &before) {
        return Err(changed(format!("{d} after the scan")));
    }
    let werr = |e: io::Error| Error::io("cannot write archive", partial, e);
    append_raw(tar, header, item.rel.as_os_str().as_bytes(), None).map_err(werr)?;
    let size = item.meta.len();
    let sha = match copy_exact(&mut file, size, tar.get_mut(), buf, cancel, on_bytes) {
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

/// Copies exactly `size` bytes from `src` to `dst`, hashing them, then probes one more byte:
/// a tar header has promised `size`, so a short or long source is an error, never padding or
/// truncation. Returns the SHA-256 (lowercase hex).
fn copy_exact(
    src: &mut impl Read,
    size: u64,
    dst: &mut impl Write,
    buf: &mut [u8],
    cancel: &CancelFlag,
    on_bytes: &mut dyn FnMut(u64),
) -> std::result::Result<String, CopyFailure> {
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    while done < size {
        if cancel.is_cancelled() {
            return Err(CopyFailure::Cancelled);
        }
        let want = buf
            .len()
            .min((size - done).try_into().unwrap_or(usize::MAX));
        let n = match src.read(&mut buf[..want]) {
            Ok(0) => return Err(CopyFailure::Shrank { got: done }),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyFailure::Read(e)),
        };
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n]).map_err(CopyFailure::Write)?;
        done += n as u64;
        on_bytes(n as u64);
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
            &mut out,
            &mut buf,
            &CancelFlag::default(),
            &mut |_| {},
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
            let mut json = manifest_head(&info, &[]).unwrap();
            for (i, e) in entries.iter().enumerate() {
                manifest_push(&mut json, i as u64, e).unwrap();
            }
            let layout = Layout {
                level: 3,
                chunk: 1 << 20,
                big_file: BIG_FILE,
            };
            let spans: Vec<Span> = (0..n)
                .map(|i| Span {
                    entry: i,
                    offset: 10 * i,
                    len: 7,
                    sha256: "cd".repeat(32),
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
    fn copy_exact_stops_when_cancelled() {
        let cancel = CancelFlag::default();
        cancel.cancel();
        let r = copy_exact(
            &mut &b"abc"[..],
            3,
            &mut Vec::new(),
            &mut [0u8; 4],
            &cancel,
            &mut |_| {},
        );
        assert!(matches!(r, Err(CopyFailure::Cancelled)));
    }
}
