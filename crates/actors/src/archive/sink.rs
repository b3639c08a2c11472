//! The archive file being written: everything written is counted and hashed (the whole
//! archive's SHA-256, and the span and member being recorded for a later incremental
//! backup, `incremental.rs`), and its writeback is started as it goes. Members of an older
//! archive are copied in here ([`HashingWriter::copy_in`]) and read back into the hashes.

use std::fs::File;
use std::io::{self, Write};

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
    pub(super) hasher: Sha256,
    pub(super) count: u64,
    /// Start of the range whose writeback has not been started yet.
    unflushed: u64,
    /// The span being hashed (`incremental.rs`): its start and its hash so far.
    pub(super) span: Option<(u64, Sha256)>,
    /// The data-only member being hashed inside the span: its start, where its data is in
    /// the file, the data's SHA-256 and the member's hash so far.
    pub(super) member: Option<(u64, u64, String, Sha256)>,
    /// The span's data-only members so far.
    pub(super) chunks: Vec<Chunk>,
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
        }
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
        self.hasher.update(&buf[..n]);
        if let Some((_, h)) = self.span.as_mut() {
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
        self.span = Some((self.count, Sha256::new()));
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
            sha256: hex::encode(h.finalize()),
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
        let mut span = self.span.as_mut().map(|(_, h)| h).filter(|_| !whole);
        let mut shared = |b: &[u8]| {
            hasher.update(b);
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
            self.span = Some((at, own.clone()));
        }
        Ok(hex::encode(own.finalize()))
    }
}
