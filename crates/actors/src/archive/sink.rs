//! The archive file being written: everything written is counted and hashed (the whole
//! archive's SHA-256, and the span and member being recorded for a later incremental
//! backup, `incremental.rs`), and its writeback is started as it goes. Members of an older
//! archive are copied in here ([`HashingWriter::copy_in`]) and read back into the hashes,
//! or, for the members of a whole unchanged file, after the live tree was read
//! ([`HashingWriter::defer_copy`], [`HashingWriter::fill`]): the services may run again
//! while they are copied.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::filepool::start_writeback;
use super::format::{Chunk, Span};
use super::pgzip::{copy_range, read_range};

/// A copied span up to this long is read back once, each piece hashed into the archive's
/// SHA-256 and the span's on this thread; a longer one is read back on two threads.
const ONE_THREAD_SPAN: u64 = 4 << 20;

/// Hashes and counts everything written to the archive file, and starts the writeback of
/// every `WRITEBACK` bytes written so that the final fsync has little left to wait for.
pub(super) struct HashingWriter {
    pub(super) file: File,
    /// The archive's SHA-256 so far: of every byte written, up to the first deferred copy
    /// (from there on [`Self::fill`] hashes the file).
    hasher: Sha256,
    pub(super) count: u64,
    /// Start of the range whose writeback has not been started yet.
    unflushed: u64,
    /// The span being recorded (`incremental.rs`): its start and its hash.
    pub(super) span: Option<(u64, SpanHash)>,
    /// The data-only member being hashed inside the span: its start, where its data is in
    /// the file, the data's SHA-256 and the member's hash so far.
    pub(super) member: Option<(u64, u64, String, Sha256)>,
    /// The span's data-only members so far.
    pub(super) chunks: Vec<Chunk>,
    /// Copies left as holes, in archive order, to be made by [`Self::fill`].
    deferred: Vec<Deferred>,
    /// Whether the copies of whole unchanged files are deferred ([`Self::defer_copy`]).
    pub(super) defer: bool,
}

/// The hash of the span being recorded.
pub(super) enum SpanHash {
    /// Of the bytes written so far.
    Hashing(Sha256),
    /// Known in advance: the span is one deferred copy, checked against it by
    /// [`HashingWriter::fill`].
    Known(String),
}

/// A copy left as a hole of `len` bytes at `at` (see [`HashingWriter::defer_copy`]).
struct Deferred {
    at: u64,
    src: Arc<File>,
    offset: u64,
    len: u64,
    sha256: String,
}

/// A copy that did not hash to its recorded checksum: a deferred one, found by
/// [`HashingWriter::fill`], or one made at once (`incremental::check_copy`).
#[derive(Debug)]
pub(super) struct CopyMismatch {
    pub offset: u64,
    pub len: u64,
}

impl std::fmt::Display for CopyMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the previous archive's members at offset {} ({} bytes) do not match their recorded checksum",
            self.offset, self.len
        )
    }
}

/// See [`HashingWriter`].
const WRITEBACK: u64 = 8 << 20;

impl HashingWriter {
    /// A writer at the start of `file`.
    pub(super) fn new(file: File) -> HashingWriter {
        HashingWriter {
            file,
            hasher: Sha256::new(),
            count: 0,
            unflushed: 0,
            span: None,
            member: None,
            chunks: Vec::new(),
            deferred: Vec::new(),
            defer: false,
        }
    }

    /// Whether copies were deferred, so that the archive is complete only after
    /// [`Self::fill`].
    pub(super) fn has_holes(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// The archive's SHA-256 (hex): complete once every deferred copy was filled in.
    pub(super) fn sha256(self) -> io::Result<(File, String)> {
        if self.has_holes() {
            return Err(io::Error::other(
                "the archive still has copies to make: its checksum is not known yet",
            ));
        }
        Ok((self.file, hex::encode(self.hasher.finalize())))
    }

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
        if self.deferred.is_empty() {
            self.hasher.update(&buf[..n]);
        }
        if let Some((_, SpanHash::Hashing(h))) = self.span.as_mut() {
            h.update(&buf[..n]);
        }
        if let Some((.., h)) = self.member.as_mut() {
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

impl HashingWriter {
    /// Starts hashing what is written from here on, for a [`Span`].
    pub(super) fn begin_span(&mut self) {
        self.span = Some((self.count, SpanHash::Hashing(Sha256::new())));
        self.chunks.clear();
    }

    /// Ends the span begun by [`Self::begin_span`]: the [`Span`] of entry `entry`.
    pub(super) fn end_span(&mut self, entry: u64) -> io::Result<Span> {
        let (start, h) = self
            .span
            .take()
            .ok_or_else(|| io::Error::other("span ended without a start"))?;
        Ok(Span {
            entry,
            offset: start,
            len: self.count - start,
            sha256: match h {
                SpanHash::Hashing(h) => hex::encode(h.finalize()),
                SpanHash::Known(sha256) => sha256,
            },
            chunks: std::mem::take(&mut self.chunks),
        })
    }

    /// Appends `len` bytes at `offset` of `src` (see [`copy_range`]), either as the whole
    /// content of the span just begun (`whole`) or as one member inside the current span,
    /// then reads them back from the archive into the archive's hash, the span's (the same
    /// as their own for a whole span) and their own SHA-256 (hex, returned). A copy of at
    /// most [`ONE_THREAD_SPAN`] bytes is read back once, each piece going to every hash; a
    /// longer one is read on two threads, one for their own hash.
    pub(super) fn copy_in(
        &mut self,
        src: &File,
        offset: u64,
        len: u64,
        whole: bool,
    ) -> io::Result<String> {
        let at = self.count;
        match &self.span {
            Some((start, _)) if (*start == at) == whole => {}
            _ => {
                return Err(io::Error::other(
                    "a copy must be a whole span or inside one",
                ));
            }
        }
        copy_range(src, offset, len, &mut self.file)?;
        let (file, hasher) = (&self.file, &mut self.hasher);
        let hashing = self.deferred.is_empty();
        let mut span = match self.span.as_mut() {
            Some((_, SpanHash::Hashing(h))) if !whole => Some(h),
            _ => None,
        };
        let mut shared = |b: &[u8]| {
            if hashing {
                hasher.update(b);
            }
            if let Some(h) = span.as_mut() {
                h.update(b);
            }
        };
        let own = if len <= ONE_THREAD_SPAN {
            let mut own = Sha256::new();
            read_range(file, at, len, &mut |b| {
                shared(b);
                own.update(b);
            })?;
            own
        } else {
            std::thread::scope(|scope| {
                let own = scope.spawn(|| {
                    let mut h = Sha256::new();
                    read_range(file, at, len, &mut |b| h.update(b)).map(|()| h)
                });
                read_range(file, at, len, &mut shared)?;
                own.join()
                    .map_err(|_| io::Error::other("the hashing thread panicked"))?
            })?
        };
        self.count += len;
        self.writeback();
        if whole {
            self.span = Some((at, SpanHash::Hashing(own.clone())));
        }
        Ok(hex::encode(own.finalize()))
    }

    /// Leaves a hole of `len` bytes for the members at `offset` of `src`, the whole content
    /// of the span just begun, whose compressed bytes hash to `sha256`: [`Self::fill`] copies
    /// them in and checks them once the live tree was read. The span records `sha256`.
    pub(super) fn defer_copy(
        &mut self,
        src: &Arc<File>,
        offset: u64,
        len: u64,
        sha256: &str,
    ) -> io::Result<()> {
        let at = self.count;
        if !matches!(&self.span, Some((start, _)) if *start == at) {
            return Err(io::Error::other("a deferred copy must be a whole span"));
        }
        let ahead = i64::try_from(len).map_err(|_| io::Error::other("span too long"))?;
        self.file.seek(SeekFrom::Current(ahead))?;
        self.deferred.push(Deferred {
            at,
            src: Arc::clone(src),
            offset,
            len,
            sha256: sha256.to_owned(),
        });
        self.span = Some((at, SpanHash::Known(sha256.to_owned())));
        self.count += len;
        Ok(())
    }

    /// Makes the deferred copies, in archive order, on one thread; behind it, one thread
    /// reads the archive from the first copy to its end into the archive's SHA-256 (up to
    /// the end of the last copy made, then on), and another reads each copy back into its
    /// own: what is checked is what the file holds, and the reading overlaps the copying.
    /// `Ok(Err(_))`: a copy does not match its recorded checksum (the archive is
    /// unusable).
    pub(super) fn fill(&mut self) -> io::Result<Result<(), CopyMismatch>> {
        let Some(first) = self.deferred.first().map(|d| d.at) else {
            return Ok(Ok(()));
        };
        let began = std::time::Instant::now();
        // The same open file: its position is moved by the copying thread only.
        let mut dst = self.file.try_clone()?;
        let (file, hasher, deferred, end) =
            (&self.file, &mut self.hasher, &self.deferred, self.count);
        let (to_check, checks) = std::sync::mpsc::channel::<usize>();
        let (to_hash, hashes) = std::sync::mpsc::channel::<usize>();
        let checked = std::thread::scope(|scope| {
            let copying = scope.spawn(move || -> io::Result<()> {
                for (i, d) in deferred.iter().enumerate() {
                    dst.seek(SeekFrom::Start(d.at))?;
                    copy_range(&d.src, d.offset, d.len, &mut dst)?;
                    start_writeback(&dst, d.at, d.at + d.len);
                    // A receiver gone has failed; its error is the one reported.
                    let _ = to_check.send(i);
                    let _ = to_hash.send(i);
                }
                Ok(())
            });
            let copies = scope.spawn(move || -> io::Result<Result<(), CopyMismatch>> {
                for i in checks {
                    let d = &deferred[i];
                    let mut own = Sha256::new();
                    read_range(file, d.at, d.len, &mut |b| own.update(b))?;
                    if hex::encode(own.finalize()) != d.sha256 {
                        return Ok(Err(CopyMismatch {
                            offset: d.offset,
                            len: d.len,
                        }));
                    }
                }
                Ok(Ok(()))
            });
            // Everything before the next copy is in the file: the live data was written
            // before any copy is made.
            let mut at = first;
            let mut hashed = io::Result::Ok(());
            for i in hashes {
                let upto = deferred.get(i + 1).map_or(end, |d| d.at);
                hashed = read_range(file, at, upto - at, &mut |b| hasher.update(b));
                if hashed.is_err() {
                    break;
                }
                at = upto;
            }
            let copied = copying
                .join()
                .map_err(|_| io::Error::other("the copying thread panicked"))?;
            let checked = copies
                .join()
                .map_err(|_| io::Error::other("the hashing thread panicked"))?;
            copied?;
            hashed?;
            if at != end {
                return Err(io::Error::other("the archive was not read to its end"));
            }
            checked
        })?;
        self.file.seek(SeekFrom::Start(self.count))?;
        tracing::debug!("copies made and read back in {:?}", began.elapsed());
        if checked.is_ok() {
            self.deferred.clear();
        }
        Ok(checked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sha(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    /// Live bytes around three deferred copies of a source file; `wrong`: the copy whose
    /// recorded checksum is wrong, if any. Returns the archive's bytes, the result of
    /// `fill` and the SHA-256 the writer reports.
    fn filled(wrong: Option<usize>) -> (Vec<u8>, Result<(), CopyMismatch>, Option<String>) {
        let src: Vec<u8> = (0..9_000_000u32).map(|i| (i * 31 % 253) as u8).collect();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&src).unwrap();
        let src_file = Arc::new(f);
        let out = tempfile::tempfile().unwrap();
        let mut w = HashingWriter::new(out.try_clone().unwrap());
        let ranges = [
            (0u64, 3_000_000u64),
            (3_000_000, 10),
            (4_000_000, 5_000_000),
        ];
        for (i, (offset, len)) in ranges.into_iter().enumerate() {
            w.write_all(format!("live {i} ").repeat(1000).as_bytes())
                .unwrap();
            w.begin_span();
            let range = &src[offset as usize..(offset + len) as usize];
            let recorded = if wrong == Some(i) {
                sha(b"something else")
            } else {
                sha(range)
            };
            w.defer_copy(&src_file, offset, len, &recorded).unwrap();
            w.end_span(i as u64).unwrap();
        }
        w.write_all(b"the end").unwrap();
        let checked = w.fill().unwrap();
        let sum = checked.is_ok().then(|| w.sha256().unwrap().1);
        let mut bytes = Vec::new();
        let mut out = out;
        out.seek(SeekFrom::Start(0)).unwrap();
        out.read_to_end(&mut bytes).unwrap();
        (bytes, checked, sum)
    }

    #[test]
    fn filled_copies_make_the_archive_and_its_checksum_of_what_the_file_holds() {
        let (bytes, checked, sum) = filled(None);
        assert!(checked.is_ok());
        assert_eq!(sum.unwrap(), sha(&bytes));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.starts_with("live 0 ") && text.ends_with("the end"));
        assert_eq!(bytes.len(), 3 * 7000 + 3_000_000 + 10 + 5_000_000 + 7);
    }

    #[test]
    fn a_copy_that_does_not_match_its_checksum_is_named_wherever_it_is() {
        for (i, offset) in [(0, 0u64), (1, 3_000_000), (2, 4_000_000)] {
            let (_, checked, _) = filled(Some(i));
            let mismatch = checked.expect_err("a wrong checksum was not found");
            assert_eq!(mismatch.offset, offset, "copy {i}");
        }
    }
}
