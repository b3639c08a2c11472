//! Parallel multi-member gzip (see the format notes in `archive/mod.rs`).
//!
//! STUB: signatures are the contract; the implementation is being written.

use std::fs::File;
use std::io::{self, Read, Write};

/// Default uncompressed chunk size per gzip member.
pub const CHUNK_SIZE: usize = 4 << 20;

/// A `Write` that cuts its input into `chunk_size` chunks, compresses them on `threads`
/// worker threads into independent gzip members (with the `NX` size subfield), and writes the
/// members to `inner` in order. Memory is bounded (about `2 * threads` chunks in flight).
/// Output bytes depend only on the input, `level` and `chunk_size`, never on `threads`.
pub struct ParallelGzWriter<W: Write + Send + 'static> {
    _inner: std::marker::PhantomData<W>,
}

impl<W: Write + Send + 'static> ParallelGzWriter<W> {
    pub fn new(_inner: W, _level: u32, _threads: usize, _chunk_size: usize) -> Self {
        todo!()
    }

    /// Flushes the last chunk, waits for all members, and returns `inner`. Errors from any
    /// worker or from writing surface here (or from an earlier `write`), never get lost.
    pub fn finish(self) -> io::Result<W> {
        todo!()
    }
}

impl<W: Write + Send + 'static> Write for ParallelGzWriter<W> {
    fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        todo!()
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Opens a gzip file for streaming decompression: members carrying the `NX` subfield are
/// decompressed in parallel on `threads` threads (output in order, bounded memory); any other
/// gzip (one member, or members from other tools) falls back to `flate2::read::MultiGzDecoder`.
/// CRC32 and ISIZE of every member are checked; a truncated or corrupt stream is an error.
pub fn open_reader(_file: File, _threads: usize) -> io::Result<Box<dyn Read + Send>> {
    todo!()
}
