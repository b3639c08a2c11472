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
//!
//! # Files
//! - `member.rs`: the member format: header bytes with the `NX` subfield, header parsing,
//!   the trailer, and the walk along a file's member chain ([`member_offsets`]).
//! - `encode.rs`: one chunk into one complete member (stored or deflated segments).
//! - `write.rs`: [`ParallelGzWriter`], the worker threads and the in-order writer.
//! - `read.rs`: [`open_reader`], the parallel reader and the sequential fallback.
//! - `copy.rs`: [`copy_range`], compressed members copied verbatim from another archive
//!   (`copy_file_range`, read back for the caller to hash).

mod copy;
mod encode;
mod member;
mod read;
#[cfg(test)]
mod test_data;
mod write;

use std::io;
use std::sync::Mutex;

pub use copy::{copy_range, read_range};
pub use member::{member_offsets, padding};
pub use read::{open_reader, open_stream_reader};
pub use write::{InOrderJob, ParallelGzWriter};

/// Default uncompressed chunk size per gzip member. Memory on both sides scales with it
/// (about `2 * threads + 1` chunks in flight); 1 MiB costs about 0.1 % in size against 4 MiB.
pub const CHUNK_SIZE: usize = 1 << 20;

/// Largest accepted chunk size; larger requests are clamped (the member length must fit the
/// u32 `NX` field with room to spare).
pub const MAX_CHUNK_SIZE: usize = 1 << 30;

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
