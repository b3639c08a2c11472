//! Parallel multi-member gzip (see the format notes in `archive/mod.rs`).
//!
//! # Writing
//! [`ParallelGzWriter`] cuts its input into chunks of exactly `chunk_size` bytes (the last one
//! may be shorter; an empty input still gives one empty member). Worker threads turn each chunk
//! into one complete gzip member:
//!
//! ```text
//! 1f 8b 08 04 | 00 00 00 00 | XFL | ff | 08 00 | 'N' 'X' 04 00 | total member length u32 LE
//! raw deflate data
//! CRC32 u32 LE | ISIZE u32 LE
//! ```
//!
//! Inside a chunk, each 16 KiB segment is classified by a byte histogram: random-looking
//! segments (JPEG, ZIP, video, gzipped logs: zlib-rs deflates such bytes at about half its
//! speed on text, for nothing) are written as deflate stored blocks (a plain copy, 5 bytes per
//! 64 KiB); every run of other segments is deflated at the chosen level by a freshly reset
//! compressor and sync-flushed, so that stored blocks can follow on a byte boundary. A chunk
//! that is all random, or whose deflate data would exceed its stored size, is stored whole.
//! These decisions depend only on the chunk bytes and the level (integer arithmetic, no
//! timing), so the output depends only on (input, level, chunk_size), never on the thread
//! count or timing.
//!
//! Chunk buffers are tokens: at most `2 * threads + 1` input buffers exist; one is returned to
//! the caller only after its member has been written to `inner`. So memory stays bounded at
//! about `2 * threads + 1` chunks plus as many compressed members, whatever the input size.
//!
//! # Reading
//! [`open_reader`] looks at the first member. With the `NX` subfield it walks member
//! boundaries lazily (one small `pread` per member header), hands up to `2 * threads`
//! members to worker threads that `pread` and inflate them, and yields the output in order.
//! Every member's CRC32 and ISIZE are checked, as is that the deflate stream ends exactly at
//! the trailer. A member without `NX` (another tool's gzip) switches to sequential
//! [`flate2::read::MultiGzDecoder`] from that offset; a file whose first member has no `NX`
//! is read sequentially throughout.
//!
//! Not detectable at this layer: a file cut exactly at a member boundary reads as a shorter,
//! valid gzip stream (the same holds for any multi-member gzip). The tar layer catches it
//! (missing end-of-archive blocks and manifest).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender, TryRecvError, bounded, unbounded};
use flate2::read::MultiGzDecoder;
use flate2::{Compress, Compression, Crc, Decompress, FlushCompress, FlushDecompress, Status};

/// Default uncompressed chunk size per gzip member. Memory on both sides scales with it
/// (about `2 * threads + 1` chunks in flight); 1 MiB costs about 0.1 % in size against 4 MiB.
pub const CHUNK_SIZE: usize = 1 << 20;

/// Largest accepted chunk size; larger requests are clamped (the member length must fit the
/// u32 `NX` field with room to spare).
pub const MAX_CHUNK_SIZE: usize = 1 << 30;

const HEADER_LEN: usize = 20;
const TRAILER_LEN: usize = 8;
const STORED_BLOCK_MAX: usize = 65_535;
/// Bytes per compressibility decision: each segment of a chunk (the last one may be shorter)
/// is either deflated or stored.
const SEGMENT: usize = 16 << 10;
/// A segment is stored when the order-2 (collision) entropy of its byte values exceeds 7.5
/// bits per byte: `sum(count^2) * STORE_FACTOR < len^2`, with `STORE_FACTOR` = 2^7.5 rounded.
/// Random-looking bytes (JPEG, ZIP, video, already gzipped logs) score about 7.98; text 4-6;
/// database pages and binaries well below 7.5. Integer arithmetic only: the decision, and so
/// the archive bytes, never depend on floating point.
const STORE_FACTOR: u64 = 181;
/// Bytes read to parse a member header when scanning.
const HEADER_PROBE: usize = 4096;
/// Buffer size for the sequential fallback.
const SEQ_BUF: usize = 256 << 10;

fn resolve_threads(threads: usize) -> usize {
    let t = if threads == 0 {
        thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };
    t.clamp(1, 256)
}

/// A copy of an `io::Error` (same kind and message); `io::Error` is not `Clone`.
fn copy_err(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Member encoding
// ---------------------------------------------------------------------------------------------

/// Size of `n` bytes as deflate stored blocks.
fn stored_len(n: usize) -> usize {
    n + 5 * n.div_ceil(STORED_BLOCK_MAX).max(1)
}

fn xfl_for(level: u32) -> u8 {
    match level {
        9 => 2,
        1 => 4,
        _ => 0,
    }
}

fn member_header(xfl: u8) -> [u8; HEADER_LEN] {
    // ID1 ID2 CM FLG=FEXTRA | MTIME=0 | XFL OS=255 | XLEN=8 | 'N' 'X' LEN=4 | member length
    [
        0x1f, 0x8b, 8, FEXTRA, 0, 0, 0, 0, xfl, 255, 8, 0, b'N', b'X', 4, 0, 0, 0, 0, 0,
    ]
}

/// Appends `data` as deflate stored blocks; `last` sets BFINAL on the last block. Stored
/// blocks start on a byte boundary, so they can follow a sync-flushed compressor output.
fn write_stored(data: &[u8], last: bool, out: &mut Vec<u8>) {
    if data.is_empty() {
        out.extend_from_slice(&[u8::from(last), 0, 0, 0xff, 0xff]);
        return;
    }
    let mut blocks = data.chunks(STORED_BLOCK_MAX).peekable();
    while let Some(block) = blocks.next() {
        let fin = last && blocks.peek().is_none();
        let n = block.len() as u16;
        out.push(u8::from(fin));
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&(!n).to_le_bytes());
        out.extend_from_slice(block);
    }
}

/// True when `segment` looks random (see [`STORE_FACTOR`]): deflating it would cost time
/// (zlib-rs deflates random bytes at about half its speed on text) and save nothing.
fn looks_random(segment: &[u8]) -> bool {
    // Four histograms avoid store-to-load stalls on runs of equal bytes.
    let mut h = [[0u32; 256]; 4];
    let mut quads = segment.chunks_exact(4);
    for q in &mut quads {
        h[0][usize::from(q[0])] += 1;
        h[1][usize::from(q[1])] += 1;
        h[2][usize::from(q[2])] += 1;
        h[3][usize::from(q[3])] += 1;
    }
    for &b in quads.remainder() {
        h[0][usize::from(b)] += 1;
    }
    let [h0, h1, h2, h3] = &h;
    let mut sum_sq = 0u64;
    for (((a, b), c), d) in h0.iter().zip(h1).zip(h2).zip(h3) {
        let n = u64::from(a + b + c + d);
        sum_sq += n * n;
    }
    let n = segment.len() as u64;
    sum_sq * STORE_FACTOR < n * n
}

/// Raw-deflates `input` onto the end of `out` with the compressor in `slot` (created at
/// `level` when empty, reset first: every run is independent). With `finish` the deflate
/// stream ends (BFINAL); without, the output ends with a sync flush (byte-aligned, no
/// BFINAL) so stored blocks or another run can follow. Returns `false` as soon as `out`
/// would grow beyond `limit` bytes (leaving garbage after the old end of `out`). `out` must
/// have capacity for more than `limit` bytes, which makes the outcome independent of any
/// extra capacity.
///
/// A compressor whose stream was abandoned is dropped, not reset: zlib-rs 0.6.8's
/// `deflateReset` keeps the read offset of unflushed pending output (`Pending::reset_keep`
/// clears `pending` but not `out`), and the next stream then overflows the pending buffer
/// (panic "buf.len() must fit in remaining()"). Resetting after a finished or completely
/// sync-flushed stream is safe: its pending output was all written out.
fn deflate_bounded(
    slot: &mut Option<Compress>,
    level: u32,
    input: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
    finish: bool,
) -> io::Result<bool> {
    debug_assert!(out.capacity() > limit);
    let c = slot.get_or_insert_with(|| Compress::new(Compression::new(level), false));
    c.reset();
    let flush = if finish {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let finished = loop {
        let (in_before, out_before) = (c.total_in(), c.total_out());
        let consumed = usize::try_from(in_before)
            .unwrap_or(usize::MAX)
            .min(input.len());
        let status = match c.compress_vec(&input[consumed..], out, flush) {
            Ok(s) => s,
            Err(e) => {
                *slot = None;
                return Err(io::Error::other(format!("deflate failed: {e}")));
            }
        };
        if out.len() > limit {
            break false;
        }
        // A sync flush is complete when all input is taken and output space is left over.
        let done = status == Status::StreamEnd
            || (!finish && c.total_in() == input.len() as u64 && out.len() < out.capacity());
        if done {
            break true;
        }
        if out.len() == out.capacity() {
            break false;
        }
        if c.total_in() == in_before && c.total_out() == out_before {
            *slot = None;
            return Err(io::Error::other("deflate made no progress"));
        }
    };
    if !finished {
        *slot = None;
    }
    Ok(finished)
}

/// Per-worker compression state (reused across chunks).
struct Encoder {
    level: u32,
    comp: Option<Compress>,
    /// Per segment of the current chunk: store it (`true`) or deflate it.
    store: Vec<bool>,
}

impl Encoder {
    fn new(level: u32) -> Self {
        Encoder {
            level,
            comp: None,
            store: Vec::new(),
        }
    }

    /// Encodes `data` as one complete gzip member into `out` (cleared first).
    fn encode(&mut self, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let stored = stored_len(data.len());
        out.clear();
        out.reserve(HEADER_LEN + stored + TRAILER_LEN);
        out.extend_from_slice(&member_header(xfl_for(self.level)));
        let deflated = self.level > 0 && self.deflate_runs(data, out, HEADER_LEN + stored)?;
        if !deflated {
            out.truncate(HEADER_LEN);
            write_stored(data, true, out);
        }
        let mut crc = Crc::new();
        crc.update(data);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        let total = u32::try_from(out.len())
            .map_err(|_| io::Error::other("gzip member larger than 4 GiB"))?;
        out[16..20].copy_from_slice(&total.to_le_bytes());
        Ok(())
    }

    /// Writes the deflate data of `data` onto `out`: each run of random-looking segments as
    /// stored blocks, each other run deflated on its own. `false` (and garbage after the
    /// header) when every segment looks random or the output would exceed `limit` bytes: the
    /// caller then stores the whole chunk.
    fn deflate_runs(&mut self, data: &[u8], out: &mut Vec<u8>, limit: usize) -> io::Result<bool> {
        self.store.clear();
        self.store.extend(data.chunks(SEGMENT).map(looks_random));
        if self.store.is_empty() {
            self.store.push(false); // empty input: one empty deflate run
        } else if self.store.iter().all(|&s| s) {
            return Ok(false);
        }
        let mut seg = 0;
        while seg < self.store.len() {
            let store = self.store[seg];
            let end = seg
                + self.store[seg..]
                    .iter()
                    .take_while(|&&s| s == store)
                    .count();
            let run = &data[(seg * SEGMENT).min(data.len())..(end * SEGMENT).min(data.len())];
            let last = end == self.store.len();
            if store {
                if out.len() + stored_len(run.len()) > limit {
                    return Ok(false);
                }
                write_stored(run, last, out);
            } else if !deflate_bounded(&mut self.comp, self.level, run, out, limit, last)? {
                return Ok(false);
            }
            seg = end;
        }
        Ok(true)
    }
}

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

struct WShared {
    /// Set once an error is recorded; checked cheaply by everyone.
    failed: AtomicBool,
    /// Set when the writer is dropped without `finish`.
    abort: AtomicBool,
    error: Mutex<Option<io::Error>>,
    /// Test hook: the worker compressing this chunk panics.
    #[cfg(test)]
    panic_at: Option<u64>,
}

impl WShared {
    fn fail(&self, e: io::Error) {
        let mut g = lock(&self.error);
        if g.is_none() {
            *g = Some(e);
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    fn error_or(&self, fallback: &str) -> io::Error {
        match lock(&self.error).as_ref() {
            Some(e) => copy_err(e),
            None => io::Error::other(fallback.to_string()),
        }
    }
}

struct Chunk {
    seq: u64,
    data: Vec<u8>,
}

struct Member {
    seq: u64,
    /// The input buffer, returned to the caller once the member is written (the token).
    data: Vec<u8>,
    out: io::Result<Vec<u8>>,
}

/// A `Write` that cuts its input into `chunk_size` chunks, compresses them on `threads`
/// worker threads into independent gzip members (with the `NX` size subfield), and writes the
/// members to `inner` in order. Memory is bounded (about `2 * threads` chunks in flight).
/// Output bytes depend only on the input, `level` and `chunk_size`, never on `threads`.
pub struct ParallelGzWriter<W: Write + Send + 'static> {
    chunk_size: usize,
    buf: Vec<u8>,
    seq: u64,
    jobs: Option<Sender<Chunk>>,
    /// Input buffers whose members have been written.
    pool: Receiver<Vec<u8>>,
    allocated: usize,
    max_buffers: usize,
    shared: Arc<WShared>,
    workers: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<Option<W>>>,
}

impl<W: Write + Send + 'static> ParallelGzWriter<W> {
    /// `level` 0..=9 (0 = stored only; larger values are clamped to 9), `threads` 0 = available
    /// parallelism, `chunk_size` clamped to `1..=MAX_CHUNK_SIZE`. Thread start-up failures are
    /// reported by the first `write` or by `finish`.
    pub fn new(inner: W, level: u32, threads: usize, chunk_size: usize) -> Self {
        Self::build(inner, level, threads, chunk_size, None)
    }

    fn build(
        inner: W,
        level: u32,
        threads: usize,
        chunk_size: usize,
        _panic_at: Option<u64>,
    ) -> Self {
        let threads = resolve_threads(threads);
        let level = level.min(9);
        let chunk_size = chunk_size.clamp(1, MAX_CHUNK_SIZE);
        let shared = Arc::new(WShared {
            failed: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            error: Mutex::new(None),
            #[cfg(test)]
            panic_at: _panic_at,
        });
        let (job_tx, job_rx) = bounded::<Chunk>(threads);
        let (done_tx, done_rx) = unbounded::<Member>();
        let (pool_tx, pool_rx) = unbounded::<Vec<u8>>();
        let (outpool_tx, outpool_rx) = unbounded::<Vec<u8>>();

        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let (jobs, done, outpool, sh) = (
                job_rx.clone(),
                done_tx.clone(),
                outpool_rx.clone(),
                shared.clone(),
            );
            let spawned = thread::Builder::new()
                .name(format!("pgzip-c{i}"))
                .spawn(move || compress_worker(level, jobs, done, outpool, sh));
            match spawned {
                Ok(h) => workers.push(h),
                Err(e) => {
                    shared.fail(io::Error::new(
                        e.kind(),
                        format!("cannot start compression thread: {e}"),
                    ));
                    break;
                }
            }
        }
        drop((job_rx, done_tx, outpool_rx));

        let sh = shared.clone();
        let writer = thread::Builder::new()
            .name("pgzip-w".into())
            .spawn(move || {
                let r = panic::catch_unwind(AssertUnwindSafe(|| {
                    writer_loop(inner, &done_rx, &pool_tx, &outpool_tx, &sh)
                }));
                match r {
                    Ok(Ok(w)) => Some(w),
                    Ok(Err(e)) => {
                        sh.fail(e);
                        None
                    }
                    Err(_) => {
                        sh.fail(io::Error::other("gzip writer thread panicked"));
                        None
                    }
                }
            });
        let writer = match writer {
            Ok(h) => Some(h),
            Err(e) => {
                shared.fail(io::Error::new(
                    e.kind(),
                    format!("cannot start gzip writer thread: {e}"),
                ));
                None
            }
        };

        ParallelGzWriter {
            chunk_size,
            buf: Vec::with_capacity(chunk_size),
            seq: 0,
            jobs: Some(job_tx),
            pool: pool_rx,
            allocated: 1,
            max_buffers: 2 * threads + 1,
            shared,
            workers,
            writer,
        }
    }

    fn error(&self, fallback: &str) -> io::Error {
        self.shared.error_or(fallback)
    }

    /// Hands the current buffer to the workers.
    fn send_current(&mut self) -> io::Result<()> {
        let data = std::mem::take(&mut self.buf);
        let seq = self.seq;
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("gzip writer already finished"))?;
        if jobs.send(Chunk { seq, data }).is_err() {
            return Err(self.error("gzip compression threads exited"));
        }
        self.seq += 1;
        Ok(())
    }

    /// A cleared chunk buffer: a recycled one, a new one while under the limit, or the next
    /// one to come back from the writer thread.
    fn next_buffer(&mut self) -> io::Result<Vec<u8>> {
        let mut v = match self.pool.try_recv() {
            Ok(v) => v,
            Err(TryRecvError::Empty) if self.allocated < self.max_buffers => {
                self.allocated += 1;
                return Ok(Vec::with_capacity(self.chunk_size));
            }
            Err(TryRecvError::Empty) => match self.pool.recv() {
                Ok(v) => v,
                Err(_) => return Err(self.error("gzip writer thread exited")),
            },
            Err(TryRecvError::Disconnected) => return Err(self.error("gzip writer thread exited")),
        };
        v.clear();
        Ok(v)
    }

    /// Flushes the last chunk, waits for all members, and returns `inner`. Errors from any
    /// worker or from writing surface here (or from an earlier `write`), never get lost.
    pub fn finish(mut self) -> io::Result<W> {
        if self.shared.failed.load(Ordering::SeqCst) {
            return Err(self.error("gzip compression failed"));
        }
        if !self.buf.is_empty() || self.seq == 0 {
            self.send_current()?;
        }
        self.jobs = None;
        for h in self.workers.drain(..) {
            if h.join().is_err() {
                self.shared
                    .fail(io::Error::other("gzip compression thread panicked"));
            }
        }
        let inner = match self.writer.take().map(|h| h.join()) {
            Some(Ok(inner)) => inner,
            Some(Err(_)) => {
                self.shared
                    .fail(io::Error::other("gzip writer thread panicked"));
                None
            }
            None => None,
        };
        match inner {
            Some(w) if !self.shared.failed.load(Ordering::SeqCst) => Ok(w),
            _ => Err(self.error("gzip writer thread failed")),
        }
    }
}

impl<W: Write + Send + 'static> Write for ParallelGzWriter<W> {
    fn write(&mut self, input: &[u8]) -> io::Result<usize> {
        if self.shared.failed.load(Ordering::Relaxed) {
            return Err(self.error("gzip compression failed"));
        }
        let mut rest = input;
        while !rest.is_empty() {
            let n = (self.chunk_size - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.buf.len() == self.chunk_size {
                self.send_current()?;
                self.buf = self.next_buffer()?;
                if self.shared.failed.load(Ordering::Relaxed) {
                    return Err(self.error("gzip compression failed"));
                }
            }
        }
        Ok(input.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write + Send + 'static> Drop for ParallelGzWriter<W> {
    fn drop(&mut self) {
        if self.jobs.is_none() && self.workers.is_empty() && self.writer.is_none() {
            return;
        }
        // Dropped without `finish`: workers skip what is queued, the writer stops writing.
        self.shared.abort.store(true, Ordering::SeqCst);
        self.jobs = None;
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }
}

fn compress_worker(
    level: u32,
    jobs: Receiver<Chunk>,
    done: Sender<Member>,
    outpool: Receiver<Vec<u8>>,
    shared: Arc<WShared>,
) {
    let mut enc = Encoder::new(level);
    for Chunk { seq, data } in jobs.iter() {
        if shared.abort.load(Ordering::Relaxed) || shared.failed.load(Ordering::Relaxed) {
            continue;
        }
        let mut out = outpool.try_recv().unwrap_or_default();
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            #[cfg(test)]
            if shared.panic_at == Some(seq) {
                panic!("test hook: compression panic at chunk {seq}");
            }
            enc.encode(&data, &mut out)
        }));
        let out = match r {
            Ok(Ok(())) => Ok(out),
            Ok(Err(e)) => {
                let e = io::Error::new(e.kind(), format!("compressing chunk {seq}: {e}"));
                shared.fail(copy_err(&e));
                Err(e)
            }
            Err(_) => {
                enc = Encoder::new(level);
                let e =
                    io::Error::other(format!("gzip compression thread panicked on chunk {seq}"));
                shared.fail(copy_err(&e));
                Err(e)
            }
        };
        if done.send(Member { seq, data, out }).is_err() {
            break;
        }
    }
}

fn writer_loop<W: Write>(
    mut inner: W,
    done: &Receiver<Member>,
    pool: &Sender<Vec<u8>>,
    outpool: &Sender<Vec<u8>>,
    shared: &WShared,
) -> io::Result<W> {
    let mut next = 0u64;
    let mut pending: BTreeMap<u64, Member> = BTreeMap::new();
    while let Ok(m) = done.recv() {
        if shared.abort.load(Ordering::Relaxed) {
            return Err(io::Error::other("gzip writer dropped before finish"));
        }
        if shared.failed.load(Ordering::Relaxed) {
            return Err(shared.error_or("gzip compression failed"));
        }
        pending.insert(m.seq, m);
        while let Some(m) = pending.remove(&next) {
            let out = m.out?;
            inner
                .write_all(&out)
                .map_err(|e| io::Error::new(e.kind(), format!("writing compressed data: {e}")))?;
            let _ = pool.send(m.data);
            let _ = outpool.send(out);
            next += 1;
        }
    }
    if shared.failed.load(Ordering::Relaxed) {
        return Err(shared.error_or("gzip compression failed"));
    }
    if let Some(seq) = pending.keys().next() {
        return Err(io::Error::other(format!(
            "gzip chunk {next} never arrived (chunk {seq} did)"
        )));
    }
    inner
        .flush()
        .map_err(|e| io::Error::new(e.kind(), format!("flushing compressed data: {e}")))?;
    Ok(inner)
}

// ---------------------------------------------------------------------------------------------
// Header parsing
// ---------------------------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// A member with the NX subfield: header length and total member length.
    Nx {
        header_len: usize,
        len: u32,
    },
    /// A valid gzip header without NX (or one too long to parse from the probe).
    Plain,
    /// No gzip magic.
    NotGzip,
    /// The file ends inside the header.
    Truncated,
    Invalid(&'static str),
}

const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;

/// Parses the gzip header at the start of `b`. `complete` says `b` reaches the end of file (so
/// running out of bytes means truncation rather than a too-short probe).
fn parse_header(b: &[u8], complete: bool) -> Parsed {
    let short = if complete {
        Parsed::Truncated
    } else {
        Parsed::Plain
    };
    if b.len() < 2 {
        return if b.first().is_none_or(|&x| x == 0x1f) && complete {
            Parsed::Truncated
        } else {
            Parsed::NotGzip
        };
    }
    if b[0] != 0x1f || b[1] != 0x8b {
        return Parsed::NotGzip;
    }
    if b.len() < 10 {
        return short;
    }
    if b[2] != 8 {
        return Parsed::Invalid("compression method is not deflate");
    }
    let flg = b[3];
    if flg & 0xe0 != 0 {
        return Parsed::Invalid("reserved flag bits set");
    }
    let mut pos = 10;
    let mut nx = None;
    if flg & FEXTRA != 0 {
        if b.len() < pos + 2 {
            return short;
        }
        let xlen = usize::from(u16::from_le_bytes([b[pos], b[pos + 1]]));
        pos += 2;
        if b.len() < pos + xlen {
            return short;
        }
        let mut extra = &b[pos..pos + xlen];
        while extra.len() >= 4 {
            let sublen = usize::from(u16::from_le_bytes([extra[2], extra[3]]));
            if extra.len() < 4 + sublen {
                break;
            }
            if extra[0] == b'N' && extra[1] == b'X' && sublen == 4 {
                nx = Some(u32::from_le_bytes([extra[4], extra[5], extra[6], extra[7]]));
            }
            extra = &extra[4 + sublen..];
        }
        pos += xlen;
    }
    for flag in [FNAME, FCOMMENT] {
        if flg & flag != 0 {
            match b[pos..].iter().position(|&x| x == 0) {
                Some(i) => pos += i + 1,
                None => return short,
            }
        }
    }
    if flg & FHCRC != 0 {
        pos += 2;
        if b.len() < pos {
            return short;
        }
    }
    match nx {
        Some(len) => Parsed::Nx {
            header_len: pos,
            len,
        },
        None => Parsed::Plain,
    }
}

/// What comes at a scan position.
enum Scan {
    /// An NX member: (offset, total length, header length).
    Member(u64, u32, usize),
    Eof,
    /// A gzip member without NX: decode sequentially from here.
    Sequential(u64),
}

/// Reads and checks the member header at `offset`.
fn scan_at(file: &File, file_len: u64, offset: u64) -> io::Result<Scan> {
    if offset >= file_len {
        return Ok(Scan::Eof);
    }
    let avail = usize::try_from(file_len - offset)
        .unwrap_or(usize::MAX)
        .min(HEADER_PROBE);
    let mut b = [0u8; HEADER_PROBE];
    file.read_exact_at(&mut b[..avail], offset).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("reading gzip header at offset {offset}: {e}"),
        )
    })?;
    let complete = offset + avail as u64 == file_len;
    match parse_header(&b[..avail], complete) {
        Parsed::Nx { header_len, len } => {
            if (len as usize) < header_len + TRAILER_LEN + 2 {
                return Err(invalid(format!(
                    "gzip member at offset {offset} records length {len}, too small for its header and trailer"
                )));
            }
            if offset + u64::from(len) > file_len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "gzip member at offset {offset} records length {len} but the file ends {} bytes later (truncated?)",
                        file_len - offset
                    ),
                ));
            }
            Ok(Scan::Member(offset, len, header_len))
        }
        Parsed::Plain => Ok(Scan::Sequential(offset)),
        Parsed::NotGzip if offset == 0 => {
            Err(invalid("not a gzip file (bad magic at offset 0)".into()))
        }
        Parsed::NotGzip => Err(invalid(format!(
            "unexpected data after the last gzip member at offset {offset} ({} trailing bytes)",
            file_len - offset
        ))),
        Parsed::Truncated => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("gzip header at offset {offset} is truncated (file ends at {file_len})"),
        )),
        Parsed::Invalid(why) => Err(invalid(format!(
            "invalid gzip header at offset {offset}: {why}"
        ))),
    }
}

/// The `(offset, length)` of every member when the whole file is made of `NX` members;
/// `None` when some member (the first or a later one) has no `NX` subfield. A broken chain
/// (length past EOF, garbage, truncated header) is an error.
pub fn member_offsets(file: &File) -> io::Result<Option<Vec<(u64, u32)>>> {
    let file_len = file.metadata()?.len();
    if file_len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "empty file: not a gzip stream",
        ));
    }
    let mut v = Vec::new();
    let mut at = 0;
    loop {
        match scan_at(file, file_len, at)? {
            Scan::Member(o, len, _) => {
                v.push((o, len));
                at = o + u64::from(len);
            }
            Scan::Eof => return Ok(Some(v)),
            Scan::Sequential(_) => return Ok(None),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------------------------

/// `Read` over a shared file at an explicit position (no shared seek offset).
struct PosReader {
    file: Arc<File>,
    pos: u64,
}

impl Read for PosReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Adds "where" to errors of the sequential fallback.
struct Context<R> {
    inner: R,
    start: u64,
}

impl<R: Read> Read for Context<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{e} (in gzip data without member index, starting at offset {})",
                    self.start
                ),
            )
        })
    }
}

fn sequential_from(file: Arc<File>, offset: u64) -> Box<dyn Read + Send> {
    let pos = PosReader { file, pos: offset };
    Box::new(Context {
        inner: MultiGzDecoder::new(BufReader::with_capacity(SEQ_BUF, pos)),
        start: offset,
    })
}

/// A reader that fails with the given error (format errors surface on `read`).
struct Failing(io::Error);

impl Read for Failing {
    fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(copy_err(&self.0))
    }
}

struct DJob {
    seq: u64,
    offset: u64,
    len: u32,
    header_len: usize,
}

type Decoded = (u64, io::Result<Vec<u8>>);

/// What follows the last dispatched member.
enum End {
    Eof,
    Sequential(u64),
    Error(io::Error),
}

struct ParallelGzReader {
    file: Arc<File>,
    file_len: u64,
    scan_pos: u64,
    end: Option<End>,
    dispatched: u64,
    yielded: u64,
    window: u64,
    jobs: Option<Sender<DJob>>,
    results: Receiver<Decoded>,
    pending: BTreeMap<u64, io::Result<Vec<u8>>>,
    recycle: Sender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    tail: Option<Box<dyn Read + Send>>,
    error: Option<io::Error>,
    abort: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    /// Largest `dispatched - yielded` seen (test check of the memory bound).
    #[cfg(test)]
    max_outstanding: u64,
}

impl ParallelGzReader {
    fn new(file: Arc<File>, file_len: u64, threads: usize) -> io::Result<Self> {
        let threads = resolve_threads(threads);
        let window = 2 * threads as u64;
        let (job_tx, job_rx) = bounded::<DJob>(window as usize);
        let (res_tx, res_rx) = unbounded::<Decoded>();
        let (rec_tx, rec_rx) = unbounded::<Vec<u8>>();
        let abort = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let (f, jobs, res, rec, ab) = (
                file.clone(),
                job_rx.clone(),
                res_tx.clone(),
                rec_rx.clone(),
                abort.clone(),
            );
            match thread::Builder::new()
                .name(format!("pgzip-d{i}"))
                .spawn(move || decode_worker(&f, &jobs, &res, &rec, &ab))
            {
                Ok(h) => workers.push(h),
                Err(e) if workers.is_empty() => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot start decompression thread: {e}"),
                    ));
                }
                Err(_) => break,
            }
        }
        Ok(ParallelGzReader {
            file,
            file_len,
            scan_pos: 0,
            end: None,
            dispatched: 0,
            yielded: 0,
            window,
            jobs: Some(job_tx),
            results: res_rx,
            pending: BTreeMap::new(),
            recycle: rec_tx,
            cur: Vec::new(),
            pos: 0,
            tail: None,
            error: None,
            abort,
            workers,
            #[cfg(test)]
            max_outstanding: 0,
        })
    }

    /// Scans and dispatches members until the window is full or the NX chain ends.
    fn fill_window(&mut self) {
        while self.end.is_none() && self.dispatched - self.yielded < self.window {
            match scan_at(&self.file, self.file_len, self.scan_pos) {
                Ok(Scan::Member(offset, len, header_len)) => {
                    let job = DJob {
                        seq: self.dispatched,
                        offset,
                        len,
                        header_len,
                    };
                    let sent = self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok());
                    if !sent {
                        self.end = Some(End::Error(io::Error::other(
                            "gzip decompression threads exited",
                        )));
                        return;
                    }
                    self.dispatched += 1;
                    self.scan_pos = offset + u64::from(len);
                }
                Ok(Scan::Eof) => self.end = Some(End::Eof),
                Ok(Scan::Sequential(o)) => self.end = Some(End::Sequential(o)),
                Err(e) => self.end = Some(End::Error(e)),
            }
        }
        #[cfg(test)]
        {
            self.max_outstanding = self.max_outstanding.max(self.dispatched - self.yielded);
        }
    }

    fn next_result(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(r) = self.pending.remove(&self.yielded) {
                return r;
            }
            match self.results.recv() {
                Ok((seq, r)) => {
                    self.pending.insert(seq, r);
                }
                Err(_) => return Err(io::Error::other("gzip decompression threads exited")),
            }
        }
    }

    fn stop_workers(&mut self) {
        self.abort.store(true, Ordering::SeqCst);
        self.jobs = None;
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

impl Read for ParallelGzReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pos < self.cur.len() {
                let n = (self.cur.len() - self.pos).min(buf.len());
                buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if let Some(e) = &self.error {
                return Err(copy_err(e));
            }
            if let Some(t) = &mut self.tail {
                return t.read(buf);
            }
            self.fill_window();
            if self.yielded == self.dispatched {
                match self.end.take() {
                    Some(End::Eof) => {
                        self.end = Some(End::Eof);
                        return Ok(0);
                    }
                    Some(End::Sequential(o)) => {
                        self.stop_workers();
                        self.tail = Some(sequential_from(self.file.clone(), o));
                    }
                    Some(End::Error(e)) => self.error = Some(e),
                    None => {
                        self.error = Some(io::Error::other("gzip reader: no member dispatched"))
                    }
                }
                continue;
            }
            match self.next_result() {
                Ok(v) => {
                    let old = std::mem::replace(&mut self.cur, v);
                    if old.capacity() > 0 {
                        let _ = self.recycle.send(old);
                    }
                    self.pos = 0;
                    self.yielded += 1;
                }
                Err(e) => self.error = Some(e),
            }
        }
    }
}

impl Drop for ParallelGzReader {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

fn decode_worker(
    file: &File,
    jobs: &Receiver<DJob>,
    results: &Sender<Decoded>,
    recycle: &Receiver<Vec<u8>>,
    abort: &AtomicBool,
) {
    let mut input = Vec::new();
    let mut inflate = Decompress::new(false);
    for job in jobs.iter() {
        if abort.load(Ordering::Relaxed) {
            break;
        }
        let out = recycle.try_recv().unwrap_or_default();
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            decode_member(file, &job, &mut input, &mut inflate, out)
        }))
        .unwrap_or_else(|_| {
            Err(io::Error::other(format!(
                "gzip decompression thread panicked on the member at offset {}",
                job.offset
            )))
        });
        if r.is_err() {
            inflate = Decompress::new(false);
        }
        if results.send((job.seq, r)).is_err() {
            break;
        }
    }
}

fn decode_member(
    file: &File,
    job: &DJob,
    input: &mut Vec<u8>,
    inflate: &mut Decompress,
    mut out: Vec<u8>,
) -> io::Result<Vec<u8>> {
    let off = job.offset;
    let len = job.len as usize;
    input.resize(len, 0);
    file.read_exact_at(&mut input[..len], off).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("reading gzip member at offset {off} ({len} bytes): {e}"),
        )
    })?;
    let (body, trailer) = input[job.header_len..len].split_at(len - job.header_len - TRAILER_LEN);
    let want_crc = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let want_size = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);

    out.clear();
    out.reserve((want_size as usize).min(64 << 20));
    inflate.reset(false);
    loop {
        let (in_before, out_before) = (inflate.total_in(), inflate.total_out());
        let consumed = usize::try_from(in_before)
            .unwrap_or(usize::MAX)
            .min(body.len());
        let status = inflate
            .decompress_vec(&body[consumed..], &mut out, FlushDecompress::None)
            .map_err(|e| {
                invalid(format!(
                    "corrupt deflate data in gzip member at offset {off}: {e}"
                ))
            })?;
        if out.len() as u64 > u64::from(want_size) {
            return Err(invalid(format!(
                "gzip member at offset {off} inflates to more than its recorded size {want_size}"
            )));
        }
        if status == Status::StreamEnd {
            break;
        }
        if out.len() == out.capacity() {
            out.reserve(out.len().max(64 << 10));
            continue;
        }
        if inflate.total_in() as usize >= body.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("deflate data of gzip member at offset {off} ends before its end marker"),
            ));
        }
        if inflate.total_in() == in_before && inflate.total_out() == out_before {
            return Err(invalid(format!(
                "deflate data of gzip member at offset {off} makes no progress"
            )));
        }
    }
    let used = inflate.total_in();
    if used != body.len() as u64 {
        return Err(invalid(format!(
            "gzip member at offset {off}: deflate data ends {} bytes before the recorded member end",
            body.len() as u64 - used
        )));
    }
    if out.len() as u64 != u64::from(want_size) {
        return Err(invalid(format!(
            "gzip member at offset {off}: size mismatch (trailer says {want_size}, got {})",
            out.len()
        )));
    }
    let mut crc = Crc::new();
    crc.update(&out);
    if crc.sum() != want_crc {
        return Err(invalid(format!(
            "gzip member at offset {off}: CRC32 mismatch (trailer {want_crc:08x}, data {:08x})",
            crc.sum()
        )));
    }
    Ok(out)
}

/// Opens a gzip file for streaming decompression: members carrying the `NX` subfield are
/// decompressed in parallel on `threads` threads (output in order, bounded memory); any other
/// gzip (one member, or members from other tools) falls back to `flate2::read::MultiGzDecoder`.
/// CRC32 and ISIZE of every member are checked; a truncated or corrupt stream is an error.
///
/// `Err` here means the file could not be inspected (I/O); format problems (not gzip,
/// truncated, corrupt) are reported by `read`. A non-regular file (pipe) is read sequentially.
pub fn open_reader(file: File, threads: usize) -> io::Result<Box<dyn Read + Send>> {
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Box::new(MultiGzDecoder::new(BufReader::with_capacity(
            SEQ_BUF, file,
        ))));
    }
    let file_len = meta.len();
    if file_len == 0 {
        return Ok(Box::new(Failing(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "empty file: not a gzip stream",
        ))));
    }
    let file = Arc::new(file);
    match scan_at(&file, file_len, 0) {
        Ok(Scan::Member(..)) => Ok(Box::new(ParallelGzReader::new(file, file_len, threads)?)),
        Ok(Scan::Sequential(_)) => Ok(sequential_from(file, 0)),
        Ok(Scan::Eof) => Ok(Box::new(io::empty())),
        Err(e)
            if e.kind() == io::ErrorKind::InvalidData
                || e.kind() == io::ErrorKind::UnexpectedEof =>
        {
            Ok(Box::new(Failing(e)))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom};
    use std::process::Command;

    /// xorshift64*: deterministic test data without a rand dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut r = Rng(seed | 1);
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&r.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }

    fn text(n: usize, seed: u64) -> Vec<u8> {
        const WORDS: &[&str] = &[
            "backup",
            "compose",
            "volume",
            "the",
            "of",
            "service",
            "restore",
            "archive",
            "mysql",
            "redis",
            "config",
            "a",
            "and",
            "data",
            "image",
            "container",
            "network",
            "nuwax",
        ];
        let mut r = Rng(seed | 1);
        let mut v = Vec::with_capacity(n + 16);
        while v.len() < n {
            let x = r.next();
            v.extend_from_slice(WORDS[(x % WORDS.len() as u64) as usize].as_bytes());
            v.push(if x.is_multiple_of(11) { b'\n' } else { b' ' });
            if x.is_multiple_of(7) {
                v.extend_from_slice(format!("{}", x % 100_000).as_bytes());
            }
        }
        v.truncate(n);
        v
    }

    /// 40 KiB text / 40 KiB random alternating.
    fn mixed(n: usize, seed: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(n);
        let mut i = 0;
        while v.len() < n {
            let piece = if i % 2 == 0 {
                text(40 << 10, seed + i)
            } else {
                random(40 << 10, seed + i)
            };
            v.extend_from_slice(&piece);
            i += 1;
        }
        v.truncate(n);
        v
    }

    fn compress(data: &[u8], level: u32, threads: usize, chunk: usize) -> Vec<u8> {
        let mut w = ParallelGzWriter::new(Vec::new(), level, threads, chunk);
        // Uneven pieces exercise the chunk buffering.
        for piece in data.chunks(7919) {
            w.write_all(piece).unwrap();
        }
        w.finish().unwrap()
    }

    fn to_file(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f
    }

    fn read_all(bytes: &[u8], threads: usize) -> io::Result<Vec<u8>> {
        let mut r = open_reader(to_file(bytes), threads)?;
        let mut v = Vec::new();
        r.read_to_end(&mut v)?;
        Ok(v)
    }

    fn multigz(bytes: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        MultiGzDecoder::new(bytes).read_to_end(&mut v).unwrap();
        v
    }

    fn system_gunzip(bytes: &[u8]) -> Vec<u8> {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), bytes).unwrap();
        let out = Command::new("gzip")
            .arg("-dc")
            .arg(f.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "gzip -dc failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn system_gzip(data: &[u8]) -> Vec<u8> {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), data).unwrap();
        let out = Command::new("gzip")
            .arg("-c")
            .arg("-6")
            .arg(f.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    }

    fn members(bytes: &[u8]) -> Vec<(u64, u32)> {
        member_offsets(&to_file(bytes))
            .unwrap()
            .expect("all members indexed")
    }

    #[test]
    fn round_trip_matrix_is_thread_independent_and_standard() {
        for chunk in [1000usize, 100_000] {
            for size in [0, 1, chunk - 1, chunk, chunk + 1, 10 * chunk] {
                let inputs: [(&str, Vec<u8>); 4] = [
                    ("random", random(size, 7)),
                    ("text", text(size, 8)),
                    ("zeros", vec![0u8; size]),
                    ("mixed", mixed(size, 9)),
                ];
                for (kind, data) in &inputs {
                    let what = format!("{kind} size {size} chunk {chunk}");
                    let one = compress(data, 6, 1, chunk);
                    let four = compress(data, 6, 4, chunk);
                    assert!(one == four, "{what}: output depends on thread count");
                    assert_eq!(members(&one).len(), size.div_ceil(chunk).max(1), "{what}");
                    assert!(
                        read_all(&one, 1).unwrap() == *data,
                        "{what}: open_reader(1)"
                    );
                    assert!(
                        read_all(&one, 3).unwrap() == *data,
                        "{what}: open_reader(3)"
                    );
                    assert!(multigz(&one) == *data, "{what}: MultiGzDecoder");
                    assert!(system_gunzip(&one) == *data, "{what}: gzip -dc");
                }
            }
        }
    }

    #[test]
    fn levels_round_trip_and_set_xfl() {
        let data = mixed(300_000, 3);
        for (level, xfl) in [(0u32, 0u8), (1, 4), (2, 0), (6, 0), (9, 2)] {
            let gz = compress(&data, level, 2, 64 << 10);
            assert_eq!(gz[8], xfl, "level {level}");
            assert!(read_all(&gz, 2).unwrap() == data, "level {level}");
            assert!(system_gunzip(&gz) == data, "level {level}");
            if level == 0 {
                assert!(gz.len() <= data.len() + data.len() / 1000 + 200);
            }
        }
    }

    #[test]
    fn member_header_layout() {
        let data = text(2500, 1);
        let gz = compress(&data, 9, 2, 1000);
        let ms = members(&gz);
        assert_eq!(ms.len(), 3);
        let mut expect_off = 0u64;
        for &(off, len) in &ms {
            assert_eq!(off, expect_off);
            let m = &gz[off as usize..(off + u64::from(len)) as usize];
            assert_eq!(
                &m[..16],
                &[0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 2, 255, 8, 0, b'N', b'X', 4, 0]
            );
            assert_eq!(u32::from_le_bytes(m[16..20].try_into().unwrap()), len);
            expect_off += u64::from(len);
        }
        assert_eq!(expect_off, gz.len() as u64);
        // Trailer of the last member: CRC32 and ISIZE of the last 500 bytes.
        let mut crc = Crc::new();
        crc.update(&data[2000..]);
        let t = &gz[gz.len() - 8..];
        assert_eq!(u32::from_le_bytes(t[..4].try_into().unwrap()), crc.sum());
        assert_eq!(u32::from_le_bytes(t[4..].try_into().unwrap()), 500);
        // Empty input: one valid empty member.
        let empty = compress(&[], 6, 3, 1000);
        assert_eq!(members(&empty).len(), 1);
        assert_eq!(system_gunzip(&empty), Vec::<u8>::new());
    }

    #[test]
    fn incompressible_chunks_are_stored() {
        let data = random(3 * CHUNK_SIZE + CHUNK_SIZE / 2, 42);
        let gz = compress(&data, 6, 2, CHUNK_SIZE);
        assert!(
            gz.len() as f64 <= data.len() as f64 * 1.001,
            "{} -> {} bytes",
            data.len(),
            gz.len()
        );
        for (off, _) in members(&gz) {
            // First deflate block header: BTYPE (bits 1-2) 00 = stored.
            assert_eq!(
                gz[off as usize + HEADER_LEN] & 0x06,
                0,
                "member at {off} not stored"
            );
        }
        assert!(read_all(&gz, 2).unwrap() == data);
        assert!(system_gunzip(&gz) == data);

        // Compressible data still compresses, also when mixed with random data.
        let t = text(2 * CHUNK_SIZE, 5);
        let gz = compress(&t, 6, 2, CHUNK_SIZE);
        assert!(gz.len() < t.len() / 2, "text {} -> {}", t.len(), gz.len());
        let m = mixed(2 * CHUNK_SIZE, 5);
        let gz = compress(&m, 6, 2, CHUNK_SIZE);
        assert!(
            gz.len() < m.len() * 8 / 10,
            "mixed {} -> {}",
            m.len(),
            gz.len()
        );
        assert!(read_all(&gz, 2).unwrap() == m);
    }

    #[test]
    fn small_random_chunk_never_exceeds_stored_size() {
        // 50 KiB of random bytes: three random-looking segments and a short tail; stored.
        let data = random(50_000, 11);
        let gz = compress(&data, 9, 1, 60_000);
        assert_eq!(gz.len(), HEADER_LEN + stored_len(data.len()) + TRAILER_LEN);
        assert!(read_all(&gz, 1).unwrap() == data);
        // 300 random bytes are too few to look random: deflated, abandoned at the stored
        // bound, stored.
        let data = random(300, 12);
        let gz = compress(&data, 6, 1, 300);
        assert_eq!(gz.len(), HEADER_LEN + stored_len(data.len()) + TRAILER_LEN);
        assert!(read_all(&gz, 1).unwrap() == data);
    }

    #[test]
    fn compressor_reuse_after_abandoned_stream() {
        // Small random chunks do not look random (too few bytes), so they are deflated and
        // abandon their deflate stream at the stored-size bound. The next chunk must not
        // reuse a merely reset compressor (zlib-rs 0.6.8 bug, see `deflate_bounded`).
        for level in [1, 2, 6] {
            let mut data = random(60_000, 21);
            data.extend_from_slice(&text(20_000, 22));
            data.extend_from_slice(&random(30_000, 23));
            let gz = compress(&data, level, 1, 300);
            assert!(read_all(&gz, 2).unwrap() == data, "level {level}");
            assert!(gz == compress(&data, level, 3, 300), "level {level}");
            assert!(system_gunzip(&gz) == data, "level {level}");
        }
    }

    /// Whether the first deflate block of the member at the start of `member` is stored.
    fn first_block_is_stored(member: &[u8]) -> bool {
        member[HEADER_LEN] & 0x06 == 0
    }

    #[test]
    fn random_segments_inside_a_chunk_are_stored_and_text_is_deflated() {
        // Alternating 40 KiB text / random pieces inside 1 MiB chunks: the chunks deflate
        // (text shrinks), the random segments are copied, and everything round-trips through
        // our reader, flate2 and gzip(1), independent of the thread count.
        let data = mixed(3 << 20, 31);
        let text_bytes = data.len() / 2;
        for level in [1, 3, 6, 9] {
            let gz = compress(&data, level, 2, 1 << 20);
            // Random half costs its size; the text half must shrink a lot.
            assert!(
                gz.len() < data.len() - text_bytes / 2,
                "level {level}: {} -> {}",
                data.len(),
                gz.len()
            );
            assert!(gz == compress(&data, level, 1, 1 << 20), "level {level}");
            assert!(read_all(&gz, 3).unwrap() == data, "level {level}");
            assert!(multigz(&gz) == data, "level {level}");
            assert!(system_gunzip(&gz) == data, "level {level}");
        }
        // A chunk that starts with a random segment begins with a stored block.
        let mut d = random(64 << 10, 5);
        d.extend_from_slice(&text(64 << 10, 6));
        let gz = compress(&d, 6, 1, 128 << 10);
        assert!(first_block_is_stored(&gz));
        assert!(gz.len() < d.len() * 3 / 4);
        assert!(system_gunzip(&gz) == d);
        // Runs of every length pattern: segment-sized and odd pieces, ending either way.
        for (i, pieces) in [
            vec![(true, 16 << 10), (false, 16 << 10), (true, 16 << 10)],
            vec![(false, 5000), (true, 40_000), (false, 70_000), (true, 100)],
            vec![(true, 200_000), (false, 1)],
            vec![(false, 16 << 10), (true, 1 << 20), (false, 3 << 16)],
        ]
        .into_iter()
        .enumerate()
        {
            let mut d = Vec::new();
            for (j, (rnd, n)) in pieces.into_iter().enumerate() {
                let seed = (i * 10 + j) as u64;
                d.extend_from_slice(&if rnd { random(n, seed) } else { text(n, seed) });
            }
            for chunk in [16 << 10, 100_000, 4 << 20] {
                let gz = compress(&d, 6, 2, chunk);
                assert!(read_all(&gz, 2).unwrap() == d, "pattern {i} chunk {chunk}");
                assert!(system_gunzip(&gz) == d, "pattern {i} chunk {chunk}");
            }
        }
    }

    #[test]
    fn segment_classification() {
        assert!(looks_random(&random(SEGMENT, 1)));
        assert!(looks_random(&random(4096, 2)));
        assert!(!looks_random(&text(SEGMENT, 3)));
        assert!(!looks_random(&[0u8; SEGMENT]));
        assert!(!looks_random(&[]));
        assert!(!looks_random(&random(100, 4)));
        // Base64 of random bytes: 64 symbols, 6 bits per byte; deflate gets about 25 %.
        let b64: Vec<u8> = random(SEGMENT, 5)
            .iter()
            .map(|b| {
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
                    [usize::from(b & 63)]
            })
            .collect();
        assert!(!looks_random(&b64));
    }

    fn assert_read_fails(bytes: &[u8], what: &str) -> io::Error {
        for threads in [1, 3] {
            if let Ok(v) = read_all(bytes, threads) {
                panic!(
                    "{what}: read {} bytes without error (threads {threads})",
                    v.len()
                );
            }
        }
        read_all(bytes, 2).unwrap_err()
    }

    #[test]
    fn corruption_is_detected() {
        let data = mixed(10_000, 4);
        let gz = compress(&data, 6, 2, 2000);
        let ms = members(&gz);
        assert_eq!(ms.len(), 5);
        // Every byte. MTIME, XFL, OS and the NX subfield id (header bytes 4..16) are covered by
        // no check in gzip: a flip there may go unnoticed but must not change the data (a
        // member without the NX id is read by the sequential fallback).
        for &(off, len) in &ms {
            for i in 0..len as usize {
                let mut bad = gz.clone();
                bad[off as usize + i] ^= 0xff;
                let what = format!("flip at member {off} + {i}");
                if (4..16).contains(&i) {
                    for threads in [1, 3] {
                        if let Ok(v) = read_all(&bad, threads) {
                            assert!(v == data, "{what}: wrong data");
                        }
                    }
                } else {
                    assert_read_fails(&bad, &what);
                }
            }
        }
        // CRC byte of a middle member: message names the offset.
        let (off, len) = ms[2];
        let mut bad = gz.clone();
        bad[(off + u64::from(len)) as usize - 8] ^= 1;
        let e = assert_read_fails(&bad, "crc");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(
            e.to_string().contains("CRC32") && e.to_string().contains(&format!("offset {off}")),
            "{e}"
        );
        // ISIZE.
        let mut bad = gz.clone();
        bad[(off + u64::from(len)) as usize - 1] ^= 1;
        assert_read_fails(&bad, "isize");
    }

    #[test]
    fn truncation_is_detected_except_at_member_boundaries() {
        let data = text(10_000, 4);
        let gz = compress(&data, 6, 2, 2000);
        let boundaries: Vec<u64> = members(&gz).iter().map(|&(o, _)| o).collect();
        for cut in 0..gz.len() {
            if boundaries.contains(&(cut as u64)) && cut > 0 {
                // A cut at a member boundary is an ordinary shorter gzip stream.
                let v = read_all(&gz[..cut], 2).unwrap();
                assert!(data.starts_with(&v));
                continue;
            }
            let e = assert_read_fails(&gz[..cut], &format!("cut at {cut}"));
            assert!(
                matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
                ),
                "cut at {cut}: {e:?}"
            );
        }
        let e = read_all(&gz[..gz.len() - 3], 2).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let last = boundaries[boundaries.len() - 1];
        assert!(e.to_string().contains(&format!("offset {last}")), "{e}");
    }

    #[test]
    fn garbage_and_bad_lengths_are_errors() {
        let data = text(10_000, 4);
        let gz = compress(&data, 6, 2, 2000);
        let mut bad = gz.clone();
        bad.extend_from_slice(b"garbage!");
        let e = assert_read_fails(&bad, "trailing garbage");
        assert!(
            e.to_string().contains(&format!("offset {}", gz.len())),
            "{e}"
        );
        let mut bad = gz.clone();
        bad.extend_from_slice(&[0; 512]);
        assert_read_fails(&bad, "trailing zeros");
        // NX length of the second member pointing past EOF.
        let (off, _) = members(&gz)[1];
        let mut bad = gz.clone();
        bad[off as usize + 16..off as usize + 20].copy_from_slice(&(gz.len() as u32).to_le_bytes());
        let e = assert_read_fails(&bad, "length past eof");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains(&format!("offset {off}")), "{e}");
        // Not gzip at all, and an empty file.
        let e = assert_read_fails(b"hello world, not gzip", "not gzip");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_read_fails(b"", "empty");
        // Errors are sticky.
        let mut r = open_reader(to_file(&gz[..gz.len() - 3]), 2).unwrap();
        let mut v = Vec::new();
        assert!(r.read_to_end(&mut v).is_err());
        assert!(r.read(&mut [0u8; 16]).is_err());
    }

    #[test]
    fn foreign_gzip_reads_through_the_fallback() {
        let data = text(300_000, 6);
        let plain = system_gzip(&data);
        assert_eq!(member_offsets(&to_file(&plain)).unwrap(), None);
        assert!(read_all(&plain, 2).unwrap() == data);
        // Truncated and corrupted foreign gzip still fail.
        assert_read_fails(&plain[..plain.len() / 2], "truncated gzip -c");
        assert_read_fails(&plain[..plain.len() - 4], "gzip -c without isize");
        let mut bad = plain.clone();
        let n = bad.len();
        bad[n - 6] ^= 1;
        assert_read_fails(&bad, "gzip -c bad crc");
        let mut bad = plain.clone();
        bad.extend_from_slice(b"trailing garbage");
        assert_read_fails(&bad, "gzip -c + garbage");
        // Our members followed by a foreign member: parallel, then sequential from there.
        let ours = compress(&data, 6, 2, 50_000);
        let mut both = ours.clone();
        both.extend_from_slice(&plain);
        let mut expect = data.clone();
        expect.extend_from_slice(&data);
        assert_eq!(member_offsets(&to_file(&both)).unwrap(), None);
        assert!(read_all(&both, 3).unwrap() == expect);
        assert!(system_gunzip(&both) == expect);
        let mut bad = both.clone();
        let n = bad.len();
        bad[n - 6] ^= 1;
        let e = assert_read_fails(&bad, "foreign tail bad crc");
        assert!(
            e.to_string().contains(&format!("offset {}", ours.len())),
            "{e}"
        );
    }

    #[derive(Debug)]
    struct FailingSink {
        left: usize,
    }

    impl Write for FailingSink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.left == 0 {
                return Err(io::Error::other("disk full (test)"));
            }
            let n = buf.len().min(self.left);
            self.left -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn inner_write_errors_surface() {
        let data = random(500_000, 1);
        for fail_after in [0, 10, 100_000] {
            let mut w = ParallelGzWriter::new(FailingSink { left: fail_after }, 1, 2, 10_000);
            let wrote = data.chunks(4096).try_for_each(|c| w.write_all(c));
            let e = match wrote {
                Err(e) => {
                    // Still an error from finish.
                    assert!(w.finish().is_err());
                    e
                }
                Ok(()) => w.finish().expect_err("finish must fail"),
            };
            assert!(e.to_string().contains("disk full"), "{e}");
        }
        // Failing on the very last member is reported by finish.
        let mut w = ParallelGzWriter::new(FailingSink { left: 5 }, 6, 2, 1 << 20);
        w.write_all(b"small").unwrap();
        assert!(w.finish().unwrap_err().to_string().contains("disk full"));
    }

    #[test]
    fn worker_panic_becomes_an_error() {
        let data = text(100_000, 2);
        let mut w = ParallelGzWriter::build(Vec::new(), 6, 2, 1000, Some(3));
        let wrote = data.chunks(3000).try_for_each(|c| w.write_all(c));
        let e = match wrote {
            Err(e) => e,
            Ok(()) => w.finish().expect_err("finish must fail"),
        };
        assert!(e.to_string().contains("panicked"), "{e}");
        // Panic on the final chunk, seen only by finish.
        let mut w = ParallelGzWriter::build(Vec::new(), 6, 2, 1000, Some(2));
        w.write_all(&data[..2500]).unwrap();
        assert!(w.finish().unwrap_err().to_string().contains("panicked"));
    }

    #[test]
    fn drop_without_finish_does_not_hang() {
        let data = random(1 << 20, 3);
        let mut w = ParallelGzWriter::new(Vec::new(), 6, 3, 10_000);
        w.write_all(&data).unwrap();
        drop(w);
        let w = ParallelGzWriter::new(Vec::new(), 6, 3, 10_000);
        drop(w);
        let mut w = ParallelGzWriter::new(FailingSink { left: 0 }, 6, 2, 10_000);
        let _ = w.write_all(&data);
        drop(w);
        // Reader dropped half-way.
        let gz = compress(&data, 1, 2, 10_000);
        let mut r = open_reader(to_file(&gz), 3).unwrap();
        let mut buf = vec![0u8; 12345];
        r.read_exact(&mut buf).unwrap();
        assert_eq!(buf[..], data[..12345]);
        drop(r);
    }

    #[test]
    fn memory_stays_bounded() {
        // Writer: chunk buffers are tokens, at most 2 * threads + 1 of them ever exist.
        let threads = 2;
        let mut w = ParallelGzWriter::new(io::sink(), 1, threads, 4096);
        let data = text(1 << 20, 9);
        for _ in 0..4 {
            w.write_all(&data).unwrap();
        }
        assert!(w.allocated <= 2 * threads + 1, "{} buffers", w.allocated);
        w.finish().unwrap();
        // Reader: at most 2 * threads members decoded ahead of the consumer.
        let gz = compress(&data, 6, 2, 4096);
        let file = Arc::new(to_file(&gz));
        let len = file.metadata().unwrap().len();
        let mut r = ParallelGzReader::new(file, len, threads).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 1000];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            assert!(r.pending.len() as u64 <= r.window);
        }
        assert!(out == data);
        assert!(r.max_outstanding <= 2 * threads as u64);
        assert!(r.dispatched as usize == data.len().div_ceil(4096));
    }
}
