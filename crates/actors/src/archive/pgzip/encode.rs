//! One chunk into one complete gzip member: 16 KiB segments that look random are written as
//! deflate stored blocks, runs of the others are deflated, and the whole is framed by the
//! member header and trailer. Depends only on the chunk bytes and the level.

use std::io;

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

use super::member::{HEADER_LEN, TRAILER_LEN, member_header, xfl_for};

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

/// Size of `n` bytes as deflate stored blocks.
fn stored_len(n: usize) -> usize {
    n + 5 * n.div_ceil(STORED_BLOCK_MAX).max(1)
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
pub(super) struct Encoder {
    level: u32,
    comp: Option<Compress>,
    /// Per segment of the current chunk: store it (`true`) or deflate it.
    store: Vec<bool>,
}

impl Encoder {
    pub(super) fn new(level: u32) -> Self {
        Encoder {
            level,
            comp: None,
            store: Vec::new(),
        }
    }

    /// Encodes `data` as one complete gzip member into `out` (cleared first).
    pub(super) fn encode(&mut self, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::pgzip::CHUNK_SIZE;
    use crate::archive::pgzip::test_data::*;

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
}
