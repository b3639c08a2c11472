//! [`ParallelGzWriter`]: cuts its input into chunks, compresses them into members on worker
//! threads, and writes the members to the inner writer in order, with bounded memory.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender, TryRecvError, bounded, unbounded};

use super::encode::Encoder;
use super::{MAX_CHUNK_SIZE, copy_err, lock};
use crate::archive::threads::resolve_threads;

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

struct Member<W> {
    seq: u64,
    what: Payload<W>,
}

enum Payload<W> {
    /// A compressed chunk. `data` is the input buffer, returned to the caller once the
    /// member is written (the token).
    Compressed {
        data: Vec<u8>,
        out: io::Result<Vec<u8>>,
    },
    /// Work on the inner writer at this point of the stream ([`ParallelGzWriter::in_order`]).
    Job(InOrderJob<W>),
}

/// What [`ParallelGzWriter::in_order`] runs on the inner writer, after every member before it
/// has been written and before any after it.
pub type InOrderJob<W> = Box<dyn FnOnce(&mut W) -> io::Result<()> + Send>;

/// A `Write` that cuts its input into `chunk_size` chunks, compresses them on `threads`
/// worker threads into independent gzip members (with the `NX` size subfield), and writes the
/// members to `inner` in order. Memory is bounded (about `2 * threads` chunks in flight).
/// Output bytes depend only on the input, `level` and `chunk_size`, never on `threads`.
pub struct ParallelGzWriter<W: Write + Send + 'static> {
    chunk_size: usize,
    buf: Vec<u8>,
    seq: u64,
    jobs: Option<Sender<Chunk>>,
    /// Straight to the writer thread: the in-order jobs.
    direct: Option<Sender<Member<W>>>,
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
        let (done_tx, done_rx) = unbounded::<Member<W>>();
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
        let direct = Some(done_tx.clone());
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
            direct,
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

    /// Bytes written since the current member began (since the last cut or full chunk).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Ends the current member here, even if its chunk is not full: the next byte written
    /// starts a new member. Nothing happens when the current chunk is empty. The output then
    /// depends on where the cuts are, which the caller decides from its input alone.
    pub fn cut(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.send_current()?;
        self.buf = self.next_buffer()?;
        Ok(())
    }

    /// Cuts ([`Self::cut`]) and has the writer thread run `job` on the inner writer once
    /// every member before this point has been written, before any member after it. A job's
    /// error fails the writer as a write error does. Jobs take no chunk buffer.
    pub fn in_order(&mut self, job: InOrderJob<W>) -> io::Result<()> {
        if self.shared.failed.load(Ordering::Relaxed) {
            return Err(self.error("gzip compression failed"));
        }
        self.cut()?;
        let seq = self.seq;
        let direct = self
            .direct
            .as_ref()
            .ok_or_else(|| io::Error::other("gzip writer already finished"))?;
        if direct
            .send(Member {
                seq,
                what: Payload::Job(job),
            })
            .is_err()
        {
            return Err(self.error("gzip writer thread exited"));
        }
        self.seq += 1;
        Ok(())
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
        self.direct = None;
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
        self.direct = None;
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }
}

fn compress_worker<W>(
    level: u32,
    jobs: Receiver<Chunk>,
    done: Sender<Member<W>>,
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
        let what = Payload::Compressed { data, out };
        if done.send(Member { seq, what }).is_err() {
            break;
        }
    }
}

fn writer_loop<W: Write>(
    mut inner: W,
    done: &Receiver<Member<W>>,
    pool: &Sender<Vec<u8>>,
    outpool: &Sender<Vec<u8>>,
    shared: &WShared,
) -> io::Result<W> {
    let mut next = 0u64;
    let mut pending: BTreeMap<u64, Member<W>> = BTreeMap::new();
    while let Ok(m) = done.recv() {
        if shared.abort.load(Ordering::Relaxed) {
            return Err(io::Error::other("gzip writer dropped before finish"));
        }
        if shared.failed.load(Ordering::Relaxed) {
            return Err(shared.error_or("gzip compression failed"));
        }
        pending.insert(m.seq, m);
        while let Some(m) = pending.remove(&next) {
            match m.what {
                Payload::Compressed { data, out } => {
                    let out = out?;
                    inner.write_all(&out).map_err(|e| {
                        io::Error::new(e.kind(), format!("writing compressed data: {e}"))
                    })?;
                    let _ = pool.send(data);
                    let _ = outpool.send(out);
                }
                Payload::Job(job) => job(&mut inner)?,
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::pgzip::open_reader;
    use crate::archive::pgzip::test_data::*;
    use std::io::Read;

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
    fn cuts_and_in_order_jobs_place_members_where_asked() {
        let (a, b) = (text(2500, 1), random(700, 2));
        let foreign = compress(b"copied verbatim", 6, 1, 1000);
        let mut w = ParallelGzWriter::new(Vec::new(), 6, 3, 1000);
        w.write_all(&a).unwrap();
        let piece = foreign.clone();
        w.in_order(Box::new(move |inner: &mut Vec<u8>| {
            inner.extend_from_slice(&piece);
            Ok(())
        }))
        .unwrap();
        w.write_all(&b).unwrap();
        w.cut().unwrap();
        w.cut().unwrap();
        w.write_all(&a[..10]).unwrap();
        let out = w.finish().unwrap();
        // a: 1000 + 1000 + 500 (cut short by the job), the job's member, b: 700 (cut), 10.
        let m = members(&out);
        assert_eq!(m.len(), 3 + 1 + 1 + 1, "{m:?}");
        let mut want = a.clone();
        want.extend_from_slice(b"copied verbatim");
        want.extend_from_slice(&b);
        want.extend_from_slice(&a[..10]);
        assert!(read_all(&out, 2).unwrap() == want);
        assert!(system_gunzip(&out) == want);
    }

    #[test]
    fn a_failing_job_fails_the_writer() {
        let mut w = ParallelGzWriter::new(Vec::new(), 6, 2, 1000);
        w.write_all(&text(3000, 1)).unwrap();
        w.in_order(Box::new(|_: &mut Vec<u8>| {
            Err(io::Error::other("checksum mismatch (test)"))
        }))
        .unwrap();
        let wrote = text(10_000, 2).chunks(100).try_for_each(|c| w.write_all(c));
        let e = match wrote {
            Err(e) => e,
            Ok(()) => w.finish().expect_err("finish must fail"),
        };
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
    }

    #[test]
    fn memory_stays_bounded() {
        // Chunk buffers are tokens, at most 2 * threads + 1 of them ever exist.
        let threads = 2;
        let mut w = ParallelGzWriter::new(io::sink(), 1, threads, 4096);
        let data = text(1 << 20, 9);
        for _ in 0..4 {
            w.write_all(&data).unwrap();
        }
        assert!(w.allocated <= 2 * threads + 1, "{} buffers", w.allocated);
        w.finish().unwrap();
    }
}
