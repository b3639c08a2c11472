//! Parallel file writing for [`super::extract`].
//!
//! Design note: one thread reads the tar stream (it must: tar is sequential) and decides
//! everything (path checks, hard links); directories, symlinks and regular files are made
//! on worker threads (a tree of small files is mostly inode creation, which a single
//! thread could not keep up with: `mkdir` alone took a fifth of a 100k-file restore on the
//! reading thread). Each directory goes to the worker that makes the files in it, before
//! them; a parent that another worker has not made yet is made by whoever needs it first
//! ([`with_parents`]). A worker creates a file (`O_CREAT | O_EXCL | O_NOFOLLOW`; with its
//! final permission bits when the umask keeps them and it has no setuid/setgid/sticky bit,
//! else mode 0600), hashes and writes the data, and sets owner, mode (unless set at
//! creation) and mtime through the handle. On this kind of machine, copying data into the page cache and
//! hashing it cost more than decompressing it, so one thread doing all of it was the
//! bottleneck of a restore.
//!
//! All pieces of one file go to the same worker, in order. The data travels in a fixed set of
//! buffers (a buffer comes back once written), so memory stays bounded however large the
//! archive.
//!
//! Files of at least [`DIRECT_MIN`] bytes are written with `O_DIRECT`, from the pool's
//! page-aligned buffers straight to the disk: no copy into the page cache, whose fresh pages
//! cost more than the decompression on a virtual machine (each one a fault on the host), and
//! no eviction of the running services' cache by a multi-gigabyte restore. The sub-block
//! tail of such a file, and any file on a filesystem that refuses `O_DIRECT` (tmpfs, some
//! FUSE and network filesystems), are written through the page cache as usual. Either way
//! the caller's `syncfs` makes them durable. Aligned blocks of zeros are not written at all
//! (see `write_piece`): they stay holes, so a sparse file is restored sparse.
//! The first error of any worker is kept; the workers then skip all further work,
//! and the reader sees the error at its next call (or from [`FilePool::finish`]). A panic in a
//! worker becomes an error. Dropping the pool without `finish` stops and joins the workers.

use std::fs::{File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, unbounded};
use filetime::FileTime;
use sha2::{Digest, Sha256};

use super::check::ShaSum;
use crate::error::{Error, IoContext, Result};

/// Bytes per data buffer (a multiple of [`ALIGN`]).
pub(super) const PIECE: usize = 1 << 20;
/// Files up to this size go to [`FilePool::small`].
pub(super) const SMALL: u64 = 64 << 10;
/// Alignment of the buffers, and of direct writes' offsets and lengths: the page size, which
/// covers the logical block size of every common disk.
const ALIGN: usize = 4096;
/// Files at least this large are written with `O_DIRECT` where the filesystem allows it.
const DIRECT_MIN: u64 = 256 << 10;
/// Writeback of a file's pages is started (not waited for) every this many bytes, and at its
/// end when it is at least this large; smaller files are left to the caller's `syncfs`.
const WRITEBACK: u64 = 4 << 20;
/// Messages queued per worker.
const QUEUE: usize = 64;

/// Where a file's content goes and what it gets at the end.
pub(super) struct Target {
    pub full: PathBuf,
    /// Numeric owner to set (restoring ownership), or `None`.
    pub owner: Option<(u32, u32)>,
    /// Final mode bits (already masked).
    pub mode: u32,
    pub mtime: i64,
}

enum Job {
    /// A file starts: create `target`, or only hash the data when `None` (an entry outside
    /// the restore's filter still has its checksum compared with the manifest).
    Begin {
        id: usize,
        target: Option<Target>,
        /// Try `O_DIRECT` for this file.
        direct: bool,
    },
    /// The next `len` bytes of the current file, in `buf[..len]`.
    Data { buf: Piece, len: usize },
    /// The current file is complete.
    End,
    /// Directories, symlinks and whole small files, made in this order (see
    /// [`FilePool::small`]); the files' contents are back to back in `buf`.
    Batch {
        buf: Option<Piece>,
        items: Vec<Item>,
    },
    /// Acknowledge once every earlier job is done.
    Barrier(Sender<()>),
}

/// One thing a [`Job::Batch`] makes.
enum Item {
    /// A small file: its content is `len` bytes at `start` of the batch's buffer.
    File {
        id: usize,
        target: Option<Target>,
        start: usize,
        len: usize,
    },
    /// A directory of the archive: made with its final mode when that is settled
    /// ([`dir_mode_at_creation`]), else private until the extraction finishes it.
    Dir(PathBuf, Option<u32>),
    Symlink(Link),
}

/// A symbolic link to create, with what it gets.
pub(super) struct Link {
    pub full: PathBuf,
    pub target: PathBuf,
    pub owner: Option<(u32, u32)>,
    pub mtime: i64,
}

/// What is gathered for one worker, sent as one [`Job::Batch`].
struct Pending {
    buf: Option<Piece>,
    used: usize,
    items: Vec<Item>,
}

/// Items of one batch at most (directories and links take no buffer space).
const MAX_ITEMS: usize = 1024;

struct Shared {
    /// The directory everything is made in (it must exist: never made here, see
    /// [`with_parents`]).
    root: PathBuf,
    failed: AtomicBool,
    error: Mutex<Option<Error>>,
}

impl Shared {
    fn fail(&self, e: Error) {
        let mut g = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(e);
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    fn take_error(&self) -> Error {
        self.error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| Error::Internal("file writer failed".into()))
    }
}

/// A data buffer of [`PIECE`] bytes starting on an [`ALIGN`] boundary (what `O_DIRECT`
/// needs), carved out of a slightly larger allocation.
pub(super) struct Piece {
    raw: Vec<u8>,
    start: usize,
}

impl Piece {
    fn new() -> Piece {
        let raw = vec![0u8; PIECE + ALIGN];
        let start = (ALIGN - raw.as_ptr() as usize % ALIGN) % ALIGN;
        Piece { raw, start }
    }
}

impl std::ops::Deref for Piece {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.raw[self.start..self.start + PIECE]
    }
}

impl std::ops::DerefMut for Piece {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + PIECE]
    }
}

/// Content SHA-256 of the files a worker finished, summed by job id (see
/// [`super::check::ShaSum`]): nothing per file stays in memory.
type Sums = ShaSum;

pub(super) struct FilePool {
    workers: Vec<(Sender<Job>, JoinHandle<Sums>)>,
    free: Receiver<Piece>,
    /// Kept so that `free` never disconnects while the pool lives.
    _free_tx: Sender<Piece>,
    allocated: usize,
    max_buffers: usize,
    /// Worker of the file being sent.
    current: Option<usize>,
    /// Small files, directories and links not sent yet, one gathering per worker.
    pending: Vec<Option<Pending>>,
    next: usize,
    shared: Arc<Shared>,
}

impl FilePool {
    /// Starts `threads` (at least 1) worker threads that make everything beneath `root`.
    pub(super) fn new(threads: usize, root: &Path) -> Result<FilePool> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            root: root.to_path_buf(),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
        });
        let (free_tx, free) = unbounded::<Piece>();
        let mut pool = FilePool {
            workers: Vec::with_capacity(threads),
            free,
            _free_tx: free_tx.clone(),
            allocated: 0,
            max_buffers: 2 * threads + 2,
            current: None,
            pending: (0..threads).map(|_| None).collect(),
            next: 0,
            shared: Arc::clone(&shared),
        };
        for i in 0..threads {
            let (tx, rx) = bounded::<Job>(QUEUE);
            let (free_tx, shared) = (free_tx.clone(), Arc::clone(&shared));
            let handle = thread::Builder::new()
                .name(format!("extract-w{i}"))
                .spawn(move || worker(&rx, &free_tx, &shared))
                .map_err(|e| Error::Internal(format!("cannot start a file writer thread: {e}")))?;
            pool.workers.push((tx, handle));
        }
        Ok(pool)
    }

    /// The first worker error, if any (cheap; call it once per entry).
    pub(super) fn check(&self) -> Result<()> {
        if self.shared.failed.load(Ordering::Relaxed) {
            Err(self.shared.take_error())
        } else {
            Ok(())
        }
    }

    fn send(&self, worker: usize, job: Job) -> Result<()> {
        if self.workers[worker].0.send(job).is_err() {
            self.check()?;
            return Err(Error::Internal("a file writer thread exited".into()));
        }
        Ok(())
    }

    /// Starts file `id` of `size` bytes in directory `dir` (its parent path). Small files
    /// go to the worker that owns their directory (by a hash of its path): two threads
    /// creating files in one directory contend for its lock, and the kernel spins on it.
    /// Larger files, whose cost is writing rather than creating, go to the least busy worker.
    pub(super) fn begin(
        &mut self,
        id: usize,
        target: Option<Target>,
        dir: &[u8],
        size: u64,
    ) -> Result<()> {
        self.check()?;
        self.flush()?;
        let n = self.workers.len();
        let w = if size < PIECE as u64 {
            self.worker_of(dir)
        } else {
            let queued = |w: usize| self.workers[w].0.len();
            let mut best = self.next % n;
            for k in 0..n {
                let w = (self.next + k) % n;
                if queued(w) < queued(best) {
                    best = w;
                }
            }
            self.next = best + 1;
            best
        };
        self.current = Some(w);
        let direct = size >= DIRECT_MIN;
        self.send(w, Job::Begin { id, target, direct })
    }

    /// The worker that owns directory `dir`: two threads creating files in one directory
    /// contend for its lock, and the kernel spins on it.
    fn worker_of(&self, dir: &[u8]) -> usize {
        // FNV-1a.
        let h = dir.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        (h % self.workers.len() as u64) as usize
    }

    /// A whole file of `len` (at most [`SMALL`]) bytes in directory `dir`, its content
    /// written into the slice `fill` is given. Small files, directories and links are
    /// gathered per worker (by directory), each worker's sent as one job when its buffer or
    /// item count is full (or before a large file, a barrier and the end): one message for
    /// hundreds of small files instead of three per file and a buffer each (a tree of 100k
    /// small files kept the reader waiting for buffers and waking workers; sending each
    /// directory's gathering as soon as the next item went to the other worker still woke a
    /// worker for every two or three files of a `node_modules` tree).
    pub(super) fn small(
        &mut self,
        id: usize,
        target: Option<Target>,
        dir: &[u8],
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<()>,
    ) -> Result<()> {
        let w = self.worker_of(dir);
        if self.pending_for(w, len)?.buf.is_none() {
            let buf = self.buffer()?;
            if let Some(p) = self.pending[w].as_mut() {
                p.buf = Some(buf);
            }
        }
        let lost = || Error::Internal("file writer: the gathering vanished".into());
        let p = self.pending[w].as_mut().ok_or_else(lost)?;
        let start = p.used;
        fill(&mut p.buf.as_mut().ok_or_else(lost)?[start..start + len])?;
        p.used += len;
        p.items.push(Item::File {
            id,
            target,
            start,
            len,
        });
        Ok(())
    }

    /// Creates directory `full` (relative path `rel`) on the worker that writes its files,
    /// before them. Its parents are made there too if they are not yet (another worker may
    /// not have reached them): see [`make_dir`].
    /// `settled`: the final mode, to make it with ([`dir_mode_at_creation`]).
    pub(super) fn dir(&mut self, full: PathBuf, rel: &[u8], settled: Option<u32>) -> Result<()> {
        let w = self.worker_of(rel);
        self.pending_for(w, 0)?.items.push(Item::Dir(full, settled));
        Ok(())
    }

    /// Creates a symlink in directory `dir` on the worker that owns that directory.
    pub(super) fn symlink(&mut self, link: Link, dir: &[u8]) -> Result<()> {
        let w = self.worker_of(dir);
        self.pending_for(w, 0)?.items.push(Item::Symlink(link));
        Ok(())
    }

    /// Worker `w`'s gathering, with room for `len` more bytes: a full one is sent first.
    fn pending_for(&mut self, w: usize, len: usize) -> Result<&mut Pending> {
        self.check()?;
        if self.pending[w]
            .as_ref()
            .is_some_and(|p| p.used + len > PIECE || p.items.len() >= MAX_ITEMS)
        {
            self.flush_one(w)?;
        }
        Ok(self.pending[w].get_or_insert_with(|| Pending {
            buf: None,
            used: 0,
            items: Vec::new(),
        }))
    }

    /// Sends worker `w`'s gathering.
    fn flush_one(&mut self, w: usize) -> Result<()> {
        match self.pending[w].take() {
            Some(p) => self.send(
                w,
                Job::Batch {
                    buf: p.buf,
                    items: p.items,
                },
            ),
            None => Ok(()),
        }
    }

    /// Sends every gathering: everything handed to the pool so far is then on its way to
    /// a worker, in the order it was handed over for each worker.
    fn flush(&mut self) -> Result<()> {
        (0..self.pending.len()).try_for_each(|w| self.flush_one(w))
    }

    /// A buffer of `PIECE` bytes to fill (waits while all buffers are in flight).
    pub(super) fn buffer(&mut self) -> Result<Piece> {
        if let Ok(b) = self.free.try_recv() {
            return Ok(b);
        }
        if self.allocated < self.max_buffers {
            self.allocated += 1;
            return Ok(Piece::new());
        }
        loop {
            match self.free.recv_timeout(Duration::from_millis(100)) {
                Ok(b) => return Ok(b),
                Err(RecvTimeoutError::Timeout) => self.check()?,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::Internal("file writer buffers vanished".into()));
                }
            }
        }
    }

    /// Hands `buf[..len]` to the current file's worker.
    pub(super) fn data(&mut self, buf: Piece, len: usize) -> Result<()> {
        let w = self.current_worker()?;
        self.send(w, Job::Data { buf, len })
    }

    /// Ends the current file.
    pub(super) fn end(&mut self) -> Result<()> {
        let w = self.current_worker()?;
        self.current = None;
        self.send(w, Job::End)
    }

    fn current_worker(&self) -> Result<usize> {
        self.current
            .ok_or_else(|| Error::Internal("file writer: no file started".into()))
    }

    /// Waits until every file sent so far is complete (created, written, finished), e.g.
    /// before a hard link to one of them is made.
    pub(super) fn barrier(&mut self) -> Result<()> {
        self.flush()?;
        let mut acks = Vec::with_capacity(self.workers.len());
        for w in 0..self.workers.len() {
            let (tx, rx) = bounded(1);
            self.send(w, Job::Barrier(tx))?;
            acks.push(rx);
        }
        for rx in acks {
            if rx.recv().is_err() {
                self.check()?;
                return Err(Error::Internal("a file writer thread exited".into()));
            }
        }
        self.check()
    }

    /// Waits for all work and returns the sum of the SHA-256 of every file by id, or the
    /// first error.
    pub(super) fn finish(mut self) -> Result<Sums> {
        self.flush()?;
        let mut sums = ShaSum::default();
        let mut panicked = false;
        for (tx, handle) in std::mem::take(&mut self.workers) {
            drop(tx);
            match handle.join() {
                Ok(s) => sums.merge(s),
                Err(_) => panicked = true,
            }
        }
        self.check()?;
        if panicked {
            return Err(Error::Internal("a file writer thread panicked".into()));
        }
        Ok(sums)
    }
}

impl Drop for FilePool {
    fn drop(&mut self) {
        if self.workers.is_empty() {
            return;
        }
        // Dropped on an error path: the workers skip what is queued and exit.
        self.shared.failed.store(true, Ordering::SeqCst);
        for (tx, handle) in std::mem::take(&mut self.workers) {
            drop(tx);
            let _ = handle.join();
        }
    }
}

/// A file being written by a worker.
struct Open {
    id: usize,
    file: Option<(File, Target)>,
    hasher: Sha256,
    written: u64,
    /// Start of the range whose writeback has not been started yet.
    unflushed: u64,
    /// The file is open with `O_DIRECT` (everything so far was written directly).
    direct: bool,
    /// Zero blocks were skipped (left as holes): the length is set at the end.
    holes: bool,
    /// The file was created with its final mode (no chmod at the end).
    mode_set: bool,
}

fn worker(jobs: &Receiver<Job>, free: &Sender<Piece>, shared: &Shared) -> Sums {
    let mut sums = ShaSum::default();
    let mut cur: Option<Open> = None;
    for job in jobs.iter() {
        if let Job::Barrier(ack) = job {
            let _ = ack.send(());
            continue;
        }
        if shared.failed.load(Ordering::Relaxed) {
            cur = None;
            match job {
                Job::Data { buf, .. } | Job::Batch { buf: Some(buf), .. } => {
                    let _ = free.send(buf);
                }
                _ => {}
            }
            continue;
        }
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            run_job(&shared.root, job, &mut cur, &mut sums, free)
        }))
        .unwrap_or_else(|_| Err(Error::Internal("a file writer thread panicked".into())));
        if let Err(e) = r {
            cur = None;
            shared.fail(e);
        }
    }
    sums
}

fn run_job(
    root: &Path,
    job: Job,
    cur: &mut Option<Open>,
    sums: &mut Sums,
    free: &Sender<Piece>,
) -> Result<()> {
    match job {
        Job::Begin { id, target, direct } => {
            *cur = Some(Open::begin(root, id, target, direct)?);
        }
        Job::Data { buf, len } => {
            let r = match cur.as_mut() {
                Some(open) => open.write(&buf[..len]),
                None => Err(Error::Internal("file writer: data without a file".into())),
            };
            let _ = free.send(buf);
            r?;
        }
        Job::End => cur
            .take()
            .ok_or_else(|| Error::Internal("file writer: end without a file".into()))?
            .end(sums)?,
        Job::Batch { buf, items } => {
            let data = buf.as_deref().unwrap_or_default();
            let r = items.into_iter().try_for_each(|item| match item {
                Item::File {
                    id,
                    target,
                    start,
                    len,
                } => {
                    let mut open = Open::begin(root, id, target, false)?;
                    open.write(&data[start..start + len])?;
                    open.end(sums)
                }
                Item::Dir(full, settled) => make_dir(root, &full, settled),
                Item::Symlink(link) => make_symlink(root, &link),
            });
            if let Some(buf) = buf {
                let _ = free.send(buf);
            }
            r?;
        }
        Job::Barrier(_) => {}
    }
    Ok(())
}

impl Open {
    /// Creates the file (`None`: only hashes the data).
    fn begin(root: &Path, id: usize, target: Option<Target>, direct: bool) -> Result<Open> {
        let mut mode_set = false;
        let file = match target {
            Some(t) => {
                // Created with its final permission bits where the umask leaves them as
                // they are and no chown will clear them (setuid/setgid): no chmod later.
                // Never more than the final mode, so nothing is readable that will not be.
                let at_open = mode_at_creation(t.mode);
                let f = create_with_mode(root, &t.full, at_open.unwrap_or(0o600))?;
                mode_set = at_open.is_some();
                Some((f, t))
            }
            None => None,
        };
        // A filesystem without direct I/O refuses the flag: then the page cache it is.
        let direct = direct
            && file
                .as_ref()
                .is_some_and(|(f, _)| set_direct(f, true).is_ok());
        Ok(Open {
            id,
            file,
            hasher: Sha256::new(),
            written: 0,
            unflushed: 0,
            direct,
            holes: false,
            mode_set,
        })
    }

    /// Hashes and writes the next piece of the file.
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.hasher.update(data);
        let Some((f, t)) = &mut self.file else {
            return Ok(());
        };
        let r = write_piece(f, data, self.written, &mut self.direct)
            .map(|holes| self.holes |= holes)
            .ctx("cannot write", &t.full);
        self.written += data.len() as u64;
        if self.direct {
            self.unflushed = self.written;
        } else if self.written - self.unflushed >= WRITEBACK {
            start_writeback(f, self.unflushed, self.written);
            self.unflushed = self.written;
        }
        r
    }

    /// Finishes the file (length, owner, mode, mtime) and adds its checksum to `sums`.
    fn end(self, sums: &mut Sums) -> Result<()> {
        if let Some((f, t)) = &self.file {
            if self.holes {
                // Skipped zeros at the end left the file short: its length makes them a
                // hole (and is a no-op otherwise).
                f.set_len(self.written)
                    .ctx("cannot set the length of", &t.full)?;
            }
            let mode = (!self.mode_set).then_some(t.mode);
            apply_meta_with(f, &t.full, t.owner, mode, t.mtime)?;
            if self.written >= WRITEBACK && self.written > self.unflushed {
                start_writeback(f, self.unflushed, self.written);
            }
        }
        sums.add(self.id as u64, &self.hasher.finalize().into());
        Ok(())
    }
}

/// Writes `data`, the next piece of `file`, which starts at file offset `offset`.
///
/// Holes: every [`ALIGN`]-sized block at an aligned file offset that is all zeros is not
/// written; the file position moves past it instead, and [`Job::End`] sets the file's length,
/// so the skipped ranges stay holes. A sparse file is restored sparse (a 1 GiB file of a few
/// KiB on disk costs a few KiB again) and a restore never writes gigabytes of zeros. The file
/// was just created empty (`O_EXCL`), so an unwritten range reads as zeros: the content is
/// the same, and the hash is taken over the data as received. Returns whether a hole was left.
fn write_piece(
    file: &mut File,
    data: &[u8],
    offset: u64,
    direct: &mut bool,
) -> std::io::Result<bool> {
    use std::io::{Seek, SeekFrom};
    let mut rest = data;
    let mut holes = false;
    if offset.is_multiple_of(ALIGN as u64) {
        while rest.len() >= ALIGN {
            let blocks = rest.len() / ALIGN;
            let block = |i: usize| &rest[i * ALIGN..(i + 1) * ALIGN];
            let zero = is_zero(block(0));
            let run = 1
                + (1..blocks)
                    .take_while(|&i| is_zero(block(i)) == zero)
                    .count();
            let (head, tail) = rest.split_at(run * ALIGN);
            if zero {
                file.seek(SeekFrom::Current(head.len() as i64))?;
                holes = true;
            } else {
                write_run(file, head, direct)?;
            }
            rest = tail;
        }
    }
    if !rest.is_empty() {
        write_run(file, rest, direct)?;
    }
    Ok(holes)
}

/// Whether a block holds only zeros (word by word; a block of data fails on its first word).
fn is_zero(block: &[u8]) -> bool {
    block
        .chunks_exact(16)
        .all(|w| u128::from_ne_bytes(w.try_into().unwrap_or([1; 16])) == 0)
        && block.chunks_exact(16).remainder().iter().all(|&b| b == 0)
}

/// Writes `data` at the file position: directly while `direct` holds (the data starts
/// aligned, and every earlier write or skip was a whole number of blocks), then through the
/// page cache from the first run that is not a whole number of blocks (the file's tail) or
/// that a direct write fails on; `direct` is cleared then.
fn write_run(file: &mut File, data: &[u8], direct: &mut bool) -> std::io::Result<()> {
    let mut rest = data;
    if *direct {
        let aligned = rest.len() / ALIGN * ALIGN;
        if aligned > 0 && (rest.as_ptr() as usize).is_multiple_of(ALIGN) {
            // A failed write wrote nothing (alignment stricter than ours, a filesystem that
            // accepted the flag but not the I/O, or a real error such as a full disk): the
            // piece is written again through the page cache, which reports real errors.
            if let Ok(n) = file.write(&rest[..aligned]) {
                rest = &rest[n..];
            }
        }
        if rest.is_empty() {
            return Ok(());
        }
        set_direct(file, false)?;
        *direct = false;
    }
    file.write_all(rest)
}

/// Sets or clears `O_DIRECT` on an open file (`fcntl(F_SETFL)`); fails with `EINVAL` on a
/// filesystem without direct I/O.
#[allow(unsafe_code)]
fn set_direct(file: &File, on: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: plain system calls on a descriptor that `file` keeps open; no memory is passed.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let flags = if on {
            flags | libc::O_DIRECT
        } else {
            flags & !libc::O_DIRECT
        };
        if libc::fcntl(fd, libc::F_SETFL, flags) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Starts writing the dirty pages of `file` in `from..to` to disk without waiting for them
/// (`sync_file_range(2)` with `SYNC_FILE_RANGE_WRITE`), so that the disk works while the
/// restore goes on and the caller's `syncfs` before the swap finds little left to do. Only a
/// hint: its result is ignored, and a writeback error still surfaces from that `syncfs`
/// (the superblock's error sequence is separate from this descriptor's).
#[allow(unsafe_code)]
pub(super) fn start_writeback(file: &File, from: u64, to: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
        return;
    };
    // SAFETY: a plain system call on a descriptor that `file` keeps open; no memory is
    // passed to the kernel.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Creates a new private file; never follows or replaces anything.
#[cfg(test)]
pub(super) fn create(full: &Path) -> Result<File> {
    create_with_mode(Path::new("/"), full, 0o600)
}

/// Creates a new file with `mode` (as the umask leaves it); never follows or replaces
/// anything. Missing parents are made first ([`with_parents`]).
fn create_with_mode(root: &Path, full: &Path, mode: u32) -> Result<File> {
    with_parents(root, full, || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(full)
    })
    .ctx("cannot create", full)
}

/// Runs `make`, which creates `full`; if that fails for want of a parent directory, makes
/// the missing parents (plain directories, as the umask leaves mode 0777) and runs it again.
/// Parents are made beneath `root` only, never `root` itself nor anything above it: if the
/// staging dir vanished during the extraction (removed by hand, its filesystem unmounted),
/// the extraction fails instead of quietly making a new one.
///
/// Directories are made by several threads in the order each receives them, so a parent
/// may come after its child: whoever needs it first makes it, and the other finds it there
/// ([`make_dir`]). Nothing but directories can be in the way: the extraction admits no
/// entry beneath a file or a link of the archive, nor a file or link where an earlier
/// entry needs a directory (`check::Tracker`), and the staging dir started empty.
pub(super) fn with_parents<T>(
    root: &Path,
    full: &Path,
    mut make: impl FnMut() -> std::io::Result<T>,
) -> std::io::Result<T> {
    match make() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match full.parent() {
            Some(parent) if parent != root && parent.starts_with(root) => {
                make_dir_io(root, parent, 0o777)?;
                make()
            }
            _ => Err(e),
        },
        r => r,
    }
}

/// Makes directory `full` of the archive (and its missing parents) with its final mode
/// when that is `settled` ([`dir_mode_at_creation`]), else private until the extraction
/// finishes it; or finds it made, by another worker as a parent or as itself (then a
/// settled mode is set now). Anything else in its place is an error.
fn make_dir(root: &Path, full: &Path, settled: Option<u32>) -> Result<()> {
    let made =
        make_dir_io(root, full, settled.unwrap_or(0o700)).ctx("cannot create directory", full)?;
    match settled {
        Some(mode) if !made => open_dir(full)?
            .set_permissions(Permissions::from_mode(mode))
            .ctx("cannot chmod", full),
        _ => Ok(()),
    }
}

/// Makes directory `full` with `mode` (and its missing parents): `true`; or finds a
/// directory there: `false`. Anything else in its place is an error.
fn make_dir_io(root: &Path, full: &Path, mode: u32) -> std::io::Result<bool> {
    let made = with_parents(root, full, || {
        std::fs::DirBuilder::new().mode(mode).create(full)
    });
    match made {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if std::fs::symlink_metadata(full)?.is_dir() {
                Ok(false)
            } else {
                Err(e)
            }
        }
        Err(e) => Err(e),
    }
}

/// Opens directory `full` to set its metadata, never following a symlink in its place.
pub(super) fn open_dir(full: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(full)
        .ctx("cannot open directory", full)
}

/// The mode an entry of final mode `mode` can be created with, so that finishing it needs
/// no chmod: its permission bits when the umask leaves them as they are and it has no
/// setuid/setgid/sticky bit (chown would clear those). Never more than the final mode, so
/// nothing is readable while it is extracted that will not be.
fn mode_at_creation(mode: u32) -> Option<u32> {
    let bits = mode & 0o777;
    (mode & 0o7000 == 0 && bits & !process_umask() == bits).then_some(bits)
}

/// [`mode_at_creation`] for a directory, which its owner must also be able to write and
/// search while the extraction fills it.
pub(super) fn dir_mode_at_creation(mode: u32) -> Option<u32> {
    mode_at_creation(mode).filter(|bits| bits & 0o700 == 0o700)
}

/// Creates a symlink (never opened), then its owner and mtime.
fn make_symlink(root: &Path, link: &Link) -> Result<()> {
    let full = &link.full;
    with_parents(root, full, || {
        std::os::unix::fs::symlink(&link.target, full)
    })
    .ctx("cannot create symlink", full)?;
    if let Some((uid, gid)) = link.owner {
        std::os::unix::fs::lchown(full, Some(uid), Some(gid)).ctx("cannot chown", full)?;
    }
    let t = FileTime::from_unix_time(link.mtime, 0);
    filetime::set_symlink_file_times(full, t, t).ctx("cannot set modification time of", full)
}

/// The process's umask, read once from `/proc/self/status` (setting it to read it would race
/// with the other threads' file creation). Unknown: all bits, so every mode is set by chmod.
fn process_umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0o777)
    })
}

/// Owner, then mode (chown clears setuid bits), then mtime, all through the handle.
pub(super) fn apply_meta(
    file: &File,
    full: &Path,
    owner: Option<(u32, u32)>,
    mode: u32,
    mtime: i64,
) -> Result<()> {
    apply_meta_with(file, full, owner, Some(mode), mtime)
}

/// [`apply_meta`] where `mode` is `None` when the file already has it (set at creation).
fn apply_meta_with(
    file: &File,
    full: &Path,
    owner: Option<(u32, u32)>,
    mode: Option<u32>,
    mtime: i64,
) -> Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(file, Some(uid), Some(gid)).ctx("cannot chown", full)?;
    }
    if let Some(mode) = mode {
        file.set_permissions(Permissions::from_mode(mode))
            .ctx("cannot chmod", full)?;
    }
    let t = FileTime::from_unix_time(mtime, 0);
    filetime::set_file_handle_times(file, Some(t), Some(t))
        .ctx("cannot set modification time of", full)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(b: &[u8]) -> [u8; 32] {
        Sha256::digest(b).into()
    }

    /// As the extraction sends a file: a small one gathered with others, a larger one in
    /// pieces.
    fn send_file(pool: &mut FilePool, id: usize, target: Option<Target>, data: &[u8]) {
        let size = data.len() as u64;
        let dir = format!("d{}", id / 3);
        if size <= SMALL {
            pool.small(id, target, dir.as_bytes(), data.len(), |buf| {
                buf.copy_from_slice(data);
                Ok(())
            })
            .unwrap();
            return;
        }
        pool.begin(id, target, dir.as_bytes(), size).unwrap();
        for piece in data.chunks(PIECE / 3 + 1) {
            let mut buf = pool.buffer().unwrap();
            buf[..piece.len()].copy_from_slice(piece);
            pool.data(buf, piece.len()).unwrap();
        }
        pool.end().unwrap();
    }

    #[test]
    fn writes_hashes_and_finishes_files_on_workers() {
        let dir = tempfile::tempdir().unwrap();
        let mut pool = FilePool::new(3, dir.path()).unwrap();
        let mut want = Vec::new();
        for id in 0..40 {
            let data: Vec<u8> = (0..id * 50_000).map(|i| (i * 7 + id) as u8).collect();
            let target = (id % 5 != 0).then(|| Target {
                full: dir.path().join(format!("f{id}")),
                owner: None,
                mode: 0o640,
                mtime: 1_700_000_000 + id as i64,
            });
            send_file(&mut pool, id, target, &data);
            want.push((id, sha(&data), data));
        }
        pool.barrier().unwrap();
        let sums = pool.finish().unwrap();
        let mut expected = ShaSum::default();
        for (id, sum, _) in &want {
            expected.add(*id as u64, sum);
        }
        assert_eq!(sums, expected, "every file's checksum, by id");
        let mut one_off = expected;
        one_off.add(41, &want[3].1);
        assert_ne!(sums, one_off);
        for (id, _, data) in &want {
            let p = dir.path().join(format!("f{id}"));
            if id % 5 == 0 {
                assert!(!p.exists(), "hash-only entry {id} was written");
                continue;
            }
            assert!(std::fs::read(&p).unwrap() == *data, "content of {id}");
            let m = std::fs::metadata(&p).unwrap();
            assert_eq!(m.permissions().mode() & 0o7777, 0o640);
            assert_eq!(
                FileTime::from_last_modification_time(&m).unix_seconds(),
                1_700_000_000 + *id as i64
            );
        }
    }

    /// Many small files, gathered by directory into shared buffers, interleaved with large
    /// ones and hash-only entries, with a barrier (what a hard link waits for) in between:
    /// each is written whole with its own mode and mtime, and its checksum counted once.
    #[test]
    fn gathered_small_files_are_each_written_and_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let mut pool = FilePool::new(2, dir.path()).unwrap();
        let mut expected = ShaSum::default();
        let mut written = Vec::new();
        for id in 0..3000usize {
            // Mostly tiny, some exactly SMALL (a buffer holds 16), a few large.
            let len = match id % 500 {
                7 => 3 * PIECE / 2,
                11 | 12 => SMALL as usize,
                _ => id % 700,
            };
            let data: Vec<u8> = (0..len).map(|i| (i * 13 + id) as u8).collect();
            let target = (id % 9 != 4).then(|| Target {
                full: dir.path().join(format!("f{id}")),
                owner: None,
                mode: if id % 2 == 0 { 0o600 } else { 0o640 },
                mtime: 1_600_000_000 + id as i64,
            });
            send_file(&mut pool, id, target, &data);
            if id == 1500 {
                pool.barrier().unwrap();
                // Everything sent before the barrier is on disk, gathered or not.
                for (id, data) in &written {
                    let p = dir.path().join(format!("f{id}"));
                    assert!(
                        std::fs::read(&p).unwrap() == *data,
                        "{id} before the barrier"
                    );
                }
            }
            expected.add(id as u64, &sha(&data));
            if id % 9 != 4 {
                written.push((id, data));
            }
        }
        let sums = pool.finish().unwrap();
        assert_eq!(sums, expected, "every file's checksum, by id, once");
        for (id, data) in &written {
            let p = dir.path().join(format!("f{id}"));
            assert!(std::fs::read(&p).unwrap() == *data, "content of {id}");
            let m = std::fs::metadata(&p).unwrap();
            let mode = if id % 2 == 0 { 0o600 } else { 0o640 };
            assert_eq!(m.permissions().mode() & 0o7777, mode, "mode of {id}");
            assert_eq!(
                FileTime::from_last_modification_time(&m).unix_seconds(),
                1_600_000_000 + *id as i64
            );
        }
        let on_disk = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(on_disk, written.len(), "hash-only entries were not written");
    }

    /// Directories are made by the workers in whatever order they get to them: a child sent
    /// before its parent, files in directories never sent (implicit parents), links; every
    /// one ends up where it belongs, and a file in the way of a directory is an error.
    #[test]
    fn workers_make_directories_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut pool = FilePool::new(2, dir.path()).unwrap();
        let mut want = Vec::new();
        for i in 0..200usize {
            // Children first, then the parents: each on the worker of its own path.
            let rel = format!("p{}/c{i}", i % 7);
            pool.dir(root.join(&rel), rel.as_bytes(), None).unwrap();
            let file = format!("{rel}/deep/f{i}");
            let target = Target {
                full: root.join(&file),
                owner: None,
                mode: 0o644,
                mtime: 1_500_000_000,
            };
            let data = vec![i as u8; i];
            let parent = format!("{rel}/deep");
            pool.small(i, Some(target), parent.as_bytes(), data.len(), |b| {
                b.copy_from_slice(&data);
                Ok(())
            })
            .unwrap();
            let link = Link {
                full: root.join(format!("{rel}/link")),
                target: PathBuf::from("deep"),
                owner: None,
                mtime: 1_400_000_000,
            };
            pool.symlink(link, rel.as_bytes()).unwrap();
            want.push((file, data));
        }
        for p in 0..7 {
            let rel = format!("p{p}");
            // Made before as parents: a settled mode is set on them now.
            pool.dir(root.join(&rel), rel.as_bytes(), Some(0o750))
                .unwrap();
        }
        pool.finish().unwrap();
        for p in 0..7 {
            let m = std::fs::metadata(root.join(format!("p{p}"))).unwrap();
            assert_eq!(m.permissions().mode() & 0o7777, 0o750, "p{p}");
        }
        for (file, data) in &want {
            assert!(std::fs::read(root.join(file)).unwrap() == *data, "{file}");
        }
        let link = root.join("p3/c10/link");
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("deep"));
        let m = std::fs::symlink_metadata(&link).unwrap();
        assert_eq!(
            FileTime::from_last_modification_time(&m).unix_seconds(),
            1_400_000_000
        );
        assert!(root.join("p3/c10/deep/f10").is_file());

        // A file where a directory must go.
        std::fs::write(root.join("blocker"), b"x").unwrap();
        let mut pool = FilePool::new(2, dir.path()).unwrap();
        pool.dir(root.join("blocker/sub"), b"blocker/sub", None)
            .unwrap();
        let e = pool.finish().unwrap_err();
        assert!(e.to_string().contains("blocker"), "{e}");
        assert_eq!(std::fs::read(root.join("blocker")).unwrap(), b"x");
    }

    /// Missing parents are made beneath the staging root, never the root itself: a staging
    /// dir removed during the extraction fails it (directories, files, links and the
    /// reader's hard links alike) instead of being quietly made anew.
    #[test]
    fn a_vanished_staging_root_is_never_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("stage");
        std::fs::create_dir(&root).unwrap();
        let mut pool = FilePool::new(2, &root).unwrap();
        std::fs::remove_dir(&root).unwrap();
        pool.dir(root.join("a/b"), b"a/b", None).unwrap();
        let target = Target {
            full: root.join("c/d/f"),
            owner: None,
            mode: 0o644,
            mtime: 1_500_000_000,
        };
        let _ = pool.small(0, Some(target), b"c/d", 3, |b| {
            b.copy_from_slice(b"abc");
            Ok(())
        });
        let link = Link {
            full: root.join("e/link"),
            target: PathBuf::from("x"),
            owner: None,
            mtime: 1_400_000_000,
        };
        let _ = pool.symlink(link, b"e");
        let e = pool.finish().unwrap_err();
        assert!(e.to_string().contains("stage"), "{e}");
        assert!(!root.exists(), "the staging root was made again");

        let from = dir.path().join("from");
        std::fs::write(&from, b"x").unwrap();
        let to = root.join("g/h/link");
        let e = with_parents(&root, &to, || std::fs::hard_link(&from, &to)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert!(!root.exists(), "the staging root was made again");

        // With the root there, the same parents are made beneath it.
        std::fs::create_dir(&root).unwrap();
        with_parents(&root, &to, || std::fs::hard_link(&from, &to)).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), b"x");
    }

    /// Large files go through `O_DIRECT` in whole blocks and switch to the page cache for
    /// their tail; the content is exact either way (also where the filesystem refuses
    /// direct I/O, e.g. a tmpfs `TMPDIR`).
    #[test]
    fn direct_writes_keep_the_exact_content() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3 * PIECE + 1234)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let path = dir.path().join("big");
        let mut f = create(&path).unwrap();
        let mut direct = set_direct(&f, true).is_ok();
        let engaged = direct;
        let mut buf = Piece::new();
        assert!(
            (buf.as_ptr() as usize).is_multiple_of(ALIGN),
            "pieces are aligned"
        );
        for (i, chunk) in data.chunks(PIECE).enumerate() {
            buf[..chunk.len()].copy_from_slice(chunk);
            let at = (i * PIECE) as u64;
            write_piece(&mut f, &buf[..chunk.len()], at, &mut direct).unwrap();
            if chunk.len() == PIECE {
                assert_eq!(direct, engaged, "whole pieces stay direct");
            }
        }
        assert!(!direct, "the tail is written through the page cache");
        drop(f);
        assert!(std::fs::read(&path).unwrap() == data);

        // A piece that is not block-aligned in memory is written through the page cache.
        let path = dir.path().join("odd");
        let mut f = create(&path).unwrap();
        let mut direct = set_direct(&f, true).is_ok();
        write_piece(&mut f, &buf[1..1 + 2 * ALIGN], 0, &mut direct).unwrap();
        assert!(!direct);
        drop(f);
        assert!(std::fs::read(&path).unwrap() == buf[1..1 + 2 * ALIGN]);
    }

    #[test]
    fn pooled_large_files_are_exact() {
        let dir = tempfile::tempdir().unwrap();
        let mut pool = FilePool::new(2, dir.path()).unwrap();
        let mut want = Vec::new();
        for (id, len) in [DIRECT_MIN as usize, 2 * PIECE, PIECE + 1, 5 * PIECE - 17]
            .into_iter()
            .enumerate()
        {
            let data: Vec<u8> = (0..len).map(|i| (i * 13 + id) as u8).collect();
            let full = dir.path().join(format!("f{id}"));
            pool.begin(
                id,
                Some(Target {
                    full: full.clone(),
                    owner: None,
                    mode: 0o644,
                    mtime: 1_600_000_000,
                }),
                b"",
                len as u64,
            )
            .unwrap();
            for piece in data.chunks(PIECE) {
                let mut buf = pool.buffer().unwrap();
                buf[..piece.len()].copy_from_slice(piece);
                pool.data(buf, piece.len()).unwrap();
            }
            pool.end().unwrap();
            want.push((id, sha(&data), full, data));
        }
        let sums = pool.finish().unwrap();
        let mut expected = ShaSum::default();
        for (id, sum, _, _) in &want {
            expected.add(*id as u64, sum);
        }
        assert_eq!(sums, expected);
        for (id, _, full, data) in &want {
            assert!(std::fs::read(full).unwrap() == *data, "content of {id}");
            let m = std::fs::metadata(full).unwrap();
            assert_eq!(m.len(), data.len() as u64);
            assert_eq!(m.permissions().mode() & 0o7777, 0o644);
        }
    }

    /// Zero blocks are skipped as holes, whichever path (direct or page cache) writes the
    /// data around them, also at the end of the file and in pieces that are not whole blocks:
    /// the content is exact and a mostly-zero file takes a few blocks on disk.
    #[test]
    fn zero_blocks_become_holes_and_the_content_stays_exact() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let mut pool = FilePool::new(2, dir.path()).unwrap();
        let big = 16 * PIECE + 3;
        let mut sparse = vec![0u8; big];
        sparse[5] = 1; // data in the first block
        sparse[7 * PIECE + ALIGN + 9] = 2; // one block in the middle
        sparse[big - 1] = 3; // the tail
        let mut trailing = vec![0u8; 4 * PIECE];
        trailing[..100].fill(7); // ends in a hole: the length must still be right
        let odd: Vec<u8> = (0..3 * ALIGN + 5)
            .map(|i| if i < ALIGN { 0 } else { i as u8 })
            .collect();
        let cases = [
            ("sparse", sparse, PIECE),
            ("trailing", trailing, PIECE),
            ("odd", odd, 1000),
        ];
        for (id, (name, data, piece_len)) in cases.iter().enumerate() {
            let full = dir.path().join(name);
            pool.begin(
                id,
                Some(Target {
                    full,
                    owner: None,
                    mode: 0o600,
                    mtime: 1_600_000_000,
                }),
                b"",
                data.len() as u64,
            )
            .unwrap();
            for piece in data.chunks(*piece_len) {
                let mut buf = pool.buffer().unwrap();
                buf[..piece.len()].copy_from_slice(piece);
                pool.data(buf, piece.len()).unwrap();
            }
            pool.end().unwrap();
        }
        let sums = pool.finish().unwrap();
        let mut expected = ShaSum::default();
        for (id, (_, data, _)) in cases.iter().enumerate() {
            expected.add(id as u64, &sha(data));
        }
        assert_eq!(sums, expected, "the data as received is hashed");
        for (id, (name, data, _)) in cases.iter().enumerate() {
            let full = dir.path().join(name);
            assert!(
                std::fs::read(&full).unwrap() == *data,
                "content of {name} ({id})"
            );
            let m = std::fs::metadata(&full).unwrap();
            assert_eq!(m.len(), data.len() as u64, "{name}");
        }
        // The mostly-zero files take far less than their length (holes are supported by
        // every filesystem a test dir lives on: ext4, xfs, btrfs, tmpfs, overlayfs).
        for name in ["sparse", "trailing"] {
            let m = std::fs::metadata(dir.path().join(name)).unwrap();
            assert!(
                m.blocks() * 512 <= 64 * 1024,
                "{name}: {} bytes allocated for {} bytes",
                m.blocks() * 512,
                m.len()
            );
        }
    }

    #[test]
    fn a_worker_error_surfaces_and_stops_the_work() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("taken"), b"x").unwrap();
        let mut pool = FilePool::new(2, dir.path()).unwrap();
        let target = |name: &str| {
            Some(Target {
                full: dir.path().join(name),
                owner: None,
                mode: 0o644,
                mtime: 0,
            })
        };
        // O_EXCL: an existing path is never overwritten.
        send_file(&mut pool, 0, target("taken"), b"new content");
        let mut err = None;
        for id in 1..200 {
            let r = pool
                .begin(id, target(&format!("g{id}")), b"", 0)
                .and_then(|()| pool.end());
            if let Err(e) = r {
                err = Some(e);
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let e = match err {
            Some(e) => e,
            None => pool.finish().unwrap_err(),
        };
        assert!(e.to_string().contains("cannot create"), "{e}");
        assert_eq!(std::fs::read(dir.path().join("taken")).unwrap(), b"x");
    }

    #[test]
    fn dropping_the_pool_mid_file_does_not_hang() {
        let dir = tempfile::tempdir().unwrap();
        let mut pool = FilePool::new(2, dir.path()).unwrap();
        pool.begin(
            0,
            Some(Target {
                full: dir.path().join("half"),
                owner: None,
                mode: 0o644,
                mtime: 0,
            }),
            b"",
            30 * PIECE as u64,
        )
        .unwrap();
        for _ in 0..30 {
            let buf = pool.buffer().unwrap();
            pool.data(buf, PIECE).unwrap();
        }
        drop(pool);
    }
}
