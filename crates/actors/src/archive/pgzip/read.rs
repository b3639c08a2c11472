//! [`open_reader`]: decompresses `NX` members in parallel (`pread` per member, output in
//! order, bounded memory) and falls back to sequential `MultiGzDecoder` for any other gzip.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use flate2::read::MultiGzDecoder;
use flate2::{Crc, Decompress, FlushDecompress, Status};

use super::member::{STREAM_PROBE, Scan, TRAILER_LEN, scan_at, scan_head};
use super::{copy_err, invalid};
use crate::archive::threads::resolve_threads;

/// Buffer size for the sequential fallback.
const SEQ_BUF: usize = 256 << 10;

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
    /// The member's bytes, read by the scanning thread from a stream; `None`: the worker
    /// reads them from the file at `offset`.
    data: Option<Vec<u8>>,
}

/// Where the members come from.
enum Input {
    /// A file: members are read by the workers at their offsets (`pread`).
    File { file: Arc<File>, len: u64 },
    /// A stream (a decrypted archive): members are read in order by the scanning thread and
    /// handed to the workers with their bytes. `head` holds the bytes read past the last
    /// member (at most [`STREAM_PROBE`]).
    Stream {
        stream: Option<Box<dyn Read + Send>>,
        head: Vec<u8>,
        at_end: bool,
    },
}

type Decoded = (u64, io::Result<Vec<u8>>);

/// What follows the last dispatched member.
enum End {
    Eof,
    Sequential(u64),
    Error(io::Error),
}

struct ParallelGzReader {
    input: Input,
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
    fn new(input: Input, threads: usize) -> io::Result<Self> {
        let threads = resolve_threads(threads);
        let window = 2 * threads as u64;
        let (job_tx, job_rx) = bounded::<DJob>(window as usize);
        let (res_tx, res_rx) = unbounded::<Decoded>();
        let (rec_tx, rec_rx) = unbounded::<Vec<u8>>();
        let abort = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let (f, jobs, res, rec, ab) = (
                match &input {
                    Input::File { file, .. } => Some(file.clone()),
                    Input::Stream { .. } => None,
                },
                job_rx.clone(),
                res_tx.clone(),
                rec_rx.clone(),
                abort.clone(),
            );
            match thread::Builder::new()
                .name(format!("pgzip-d{i}"))
                .spawn(move || decode_worker(f.as_deref(), &jobs, &res, &rec, &ab))
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
            input,
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
            match self.scan() {
                Ok((Scan::Member(offset, len, header_len), data)) => {
                    let job = DJob {
                        seq: self.dispatched,
                        offset,
                        len,
                        header_len,
                        data,
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
                Ok((Scan::Eof, _)) => self.end = Some(End::Eof),
                Ok((Scan::Sequential(o), _)) => self.end = Some(End::Sequential(o)),
                Err(e) => self.end = Some(End::Error(e)),
            }
        }
        #[cfg(test)]
        {
            self.max_outstanding = self.max_outstanding.max(self.dispatched - self.yielded);
        }
    }

    /// What starts at `scan_pos`; for a member of a stream, with its bytes.
    fn scan(&mut self) -> io::Result<(Scan, Option<Vec<u8>>)> {
        let offset = self.scan_pos;
        let (stream, head, at_end) = match &mut self.input {
            Input::File { file, len } => return Ok((scan_at(file, *len, offset)?, None)),
            Input::Stream {
                stream,
                head,
                at_end,
            } => (stream, head, at_end),
        };
        let Some(stream) = stream else {
            return Err(io::Error::other("gzip reader: the stream was handed on"));
        };
        while !*at_end && head.len() < STREAM_PROBE {
            let had = head.len();
            head.resize(STREAM_PROBE, 0);
            match stream.read(&mut head[had..]) {
                Ok(0) => {
                    head.truncate(had);
                    *at_end = true;
                }
                Ok(n) => head.truncate(had + n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => head.truncate(had),
                Err(e) => {
                    head.truncate(had);
                    return Err(e);
                }
            }
        }
        let scan = scan_head(head, *at_end, offset)?;
        let Scan::Member(_, len, _) = scan else {
            return Ok((scan, None));
        };
        let len = len as usize;
        let mut data = if head.len() > len {
            let rest = head.split_off(len);
            std::mem::replace(head, rest)
        } else {
            std::mem::take(head)
        };
        // Grown as the bytes come (not sized from the header's claim), so a hostile length
        // costs no more memory than the stream really holds.
        let want = (len - data.len()) as u64;
        let got = stream.by_ref().take(want).read_to_end(&mut data)?;
        if (got as u64) < want {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "gzip member at offset {offset} records length {len} but the stream ends {} bytes later (truncated?)",
                    len as u64 - want + got as u64
                ),
            ));
        }
        Ok((scan, Some(data)))
    }

    /// The sequential reader for what follows the `NX` members, from `offset` on.
    fn tail_from(&mut self, offset: u64) -> Box<dyn Read + Send> {
        match &mut self.input {
            Input::File { file, .. } => sequential_from(file.clone(), offset),
            Input::Stream { stream, head, .. } => {
                let head = io::Cursor::new(std::mem::take(head));
                match stream.take() {
                    Some(stream) => Box::new(Context {
                        inner: MultiGzDecoder::new(BufReader::with_capacity(
                            SEQ_BUF,
                            head.chain(stream),
                        )),
                        start: offset,
                    }),
                    None => Box::new(Failing(io::Error::other(
                        "gzip reader: the stream was handed on",
                    ))),
                }
            }
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
                        self.tail = Some(self.tail_from(o));
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
    file: Option<&File>,
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
    file: Option<&File>,
    job: &DJob,
    input: &mut Vec<u8>,
    inflate: &mut Decompress,
    mut out: Vec<u8>,
) -> io::Result<Vec<u8>> {
    let off = job.offset;
    let len = job.len as usize;
    let input: &[u8] = match (&job.data, file) {
        (Some(data), _) => data,
        (None, Some(file)) => {
            input.resize(len, 0);
            file.read_exact_at(&mut input[..len], off).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("reading gzip member at offset {off} ({len} bytes): {e}"),
                )
            })?;
            input
        }
        (None, None) => return Err(io::Error::other("gzip member without its bytes")),
    };
    if input.len() != len {
        return Err(io::Error::other(format!(
            "gzip member at offset {off}: {} bytes handed over, {len} recorded",
            input.len()
        )));
    }
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
        Ok(Scan::Member(..)) => Ok(Box::new(ParallelGzReader::new(
            Input::File {
                file,
                len: file_len,
            },
            threads,
        )?)),
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

/// Like [`open_reader`] for a stream read once, in order (a decrypted archive): `NX`
/// members are read here and decompressed in parallel on `threads` threads (output in order,
/// bounded memory); anything else from the first non-`NX` header on is read sequentially.
/// Every check of [`open_reader`] applies; errors surface on `read`.
pub fn open_stream_reader(
    stream: Box<dyn Read + Send>,
    threads: usize,
) -> io::Result<Box<dyn Read + Send>> {
    Ok(Box::new(ParallelGzReader::new(
        Input::Stream {
            stream: Some(stream),
            head: Vec::with_capacity(STREAM_PROBE),
            at_end: false,
        },
        threads,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::pgzip::member_offsets;
    use crate::archive::pgzip::test_data::*;

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
    fn a_cut_inside_a_member_longer_than_the_probe_is_an_error() {
        // Members of about 40 KB: the cut lies beyond the bytes a scan looks at first, so a
        // stream notices it only while reading the member.
        let data = random(200_000, 3);
        let gz = compress(&data, 6, 2, 40_000);
        let ms = members(&gz);
        let (off, len) = ms[2];
        assert!(len as usize > 2 * super::STREAM_PROBE);
        for cut in [off + 5000, off + u64::from(len) - 1] {
            let e = assert_read_fails(&gz[..cut as usize], &format!("cut at {cut}"));
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
            assert!(e.to_string().contains(&format!("offset {off}")), "{e}");
        }
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

    #[test]
    fn memory_stays_bounded() {
        // At most 2 * threads members decoded (or, from a stream, read) ahead of the
        // consumer, from a file and from a stream alike.
        let threads = 2;
        let data = text(1 << 20, 9);
        let gz = compress(&data, 6, 2, 4096);
        let file = Arc::new(to_file(&gz));
        let len = file.metadata().unwrap().len();
        let inputs = [
            Input::File { file, len },
            Input::Stream {
                stream: Some(Box::new(io::Cursor::new(gz.clone()))),
                head: Vec::new(),
                at_end: false,
            },
        ];
        for input in inputs {
            let mut r = ParallelGzReader::new(input, threads).unwrap();
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
}
