//! The gzip member as this crate writes and reads it (RFC 1952 plus one `FEXTRA` subfield):
//! the 20-byte header with the `NX` member length, header parsing for any gzip, the 8-byte
//! trailer, and the walk along a file's chain of members.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::invalid;

/// Length of the header this crate writes (with the `NX` subfield).
pub(super) const HEADER_LEN: usize = 20;
/// CRC32 and ISIZE, both u32 LE.
pub(super) const TRAILER_LEN: usize = 8;
/// Bytes read to parse a member header when scanning.
const HEADER_PROBE: usize = 4096;

/// The header's XFL byte for a compression level (RFC 1952: 2 = slowest, 4 = fastest).
pub(super) fn xfl_for(level: u32) -> u8 {
    match level {
        9 => 2,
        1 => 4,
        _ => 0,
    }
}

/// The header of a member; the caller fills in its total length (bytes 16..20) once known.
pub(super) fn member_header(xfl: u8) -> [u8; HEADER_LEN] {
    // ID1 ID2 CM FLG=FEXTRA | MTIME=0 | XFL OS=255 | XLEN=8 | 'N' 'X' LEN=4 | member length
    [
        0x1f, 0x8b, 8, FEXTRA, 0, 0, 0, 0, xfl, 255, 8, 0, b'N', b'X', 4, 0, 0, 0, 0, 0,
    ]
}

/// The smallest padding member: a header with the `NX` subfield and an empty `NP` one, the
/// empty deflate block `03 00`, CRC32 0 and ISIZE 0.
pub(super) const MIN_PADDING: usize = HEADER_LEN + 4 + 2 + TRAILER_LEN;

/// The longest padding member: its header still fits in the bytes a scan reads at once.
const MAX_PADDING: usize = HEADER_PROBE + 2 + TRAILER_LEN;

/// The empty gzip members that bring an archive written up to offset `at` to the next
/// multiple of `align` (nothing when it is one already): each is a valid member with no
/// content, whose `FEXTRA` field holds the `NX` length and an `NP` subfield of zeros that
/// pads it to its length. A gap too small for one member is widened by `align`; a gap whose
/// header would not fit in one scan probe is split in as many even members as needed. The
/// bytes depend only on `at` and `align`.
pub fn padding(at: u64, align: u64) -> Vec<u8> {
    if align == 0 || at.is_multiple_of(align) {
        return Vec::new();
    }
    let mut gap = usize::try_from(align - at % align).unwrap_or(usize::MAX);
    if gap < MIN_PADDING {
        gap += usize::try_from(align).unwrap_or(usize::MAX);
    }
    let n = gap.div_ceil(MAX_PADDING);
    let mut out = Vec::with_capacity(gap);
    for i in 0..n {
        let len = gap / n + usize::from(i < gap % n);
        padding_member(len, &mut out);
    }
    out
}

/// Appends one empty member of exactly `len` bytes (`MIN_PADDING..=MAX_PADDING`).
fn padding_member(len: usize, out: &mut Vec<u8>) {
    debug_assert!((MIN_PADDING..=MAX_PADDING).contains(&len), "{len}");
    let np = len - MIN_PADDING;
    let xlen = u16::try_from(8 + 4 + np).unwrap_or(u16::MAX);
    let total = u32::try_from(len).unwrap_or(u32::MAX);
    let mut h = member_header(0);
    h[10..12].copy_from_slice(&xlen.to_le_bytes());
    h[16..20].copy_from_slice(&total.to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(b"NP");
    out.extend_from_slice(&u16::try_from(np).unwrap_or(u16::MAX).to_le_bytes());
    out.resize(out.len() + np, 0);
    // A final fixed-Huffman block holding only its end-of-block code, then the CRC32 and
    // ISIZE of nothing.
    out.extend_from_slice(&[0x03, 0x00, 0, 0, 0, 0, 0, 0, 0, 0]);
}

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
pub(super) enum Scan {
    /// An NX member: (offset, total length, header length).
    Member(u64, u32, usize),
    Eof,
    /// A gzip member without NX: decode sequentially from here.
    Sequential(u64),
}

/// Reads and checks the member header at `offset`.
pub(super) fn scan_at(file: &File, file_len: u64, offset: u64) -> io::Result<Scan> {
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
    judge(
        parse_header(&b[..avail], complete),
        offset,
        Some(file_len - offset),
    )
}

/// Bytes a stream scan looks at before deciding what starts at its position.
pub(super) const STREAM_PROBE: usize = HEADER_PROBE;

/// Like [`scan_at`] for a stream (a decrypted archive): `head` holds the next bytes of the
/// stream at `offset` (up to [`STREAM_PROBE`]; fewer only at its end, then `at_end`). A
/// member's recorded length is not checked against the stream's end here: reading it is.
pub(super) fn scan_head(head: &[u8], at_end: bool, offset: u64) -> io::Result<Scan> {
    if head.is_empty() && at_end {
        if offset == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "empty stream: not a gzip stream",
            ));
        }
        return Ok(Scan::Eof);
    }
    let remaining = at_end.then_some(head.len() as u64);
    judge(parse_header(head, at_end), offset, remaining)
}

/// What a parsed header at `offset` means; `remaining` is how many bytes the input holds
/// from `offset` on, when known.
fn judge(parsed: Parsed, offset: u64, remaining: Option<u64>) -> io::Result<Scan> {
    match parsed {
        Parsed::Nx { header_len, len } => {
            if (len as usize) < header_len + TRAILER_LEN + 2 {
                return Err(invalid(format!(
                    "gzip member at offset {offset} records length {len}, too small for its header and trailer"
                )));
            }
            if let Some(rest) = remaining.filter(|&rest| u64::from(len) > rest) {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "gzip member at offset {offset} records length {len} but the file ends {rest} bytes later (truncated?)"
                    ),
                ));
            }
            Ok(Scan::Member(offset, len, header_len))
        }
        Parsed::Plain => Ok(Scan::Sequential(offset)),
        Parsed::NotGzip if offset == 0 => {
            Err(invalid("not a gzip file (bad magic at offset 0)".into()))
        }
        Parsed::NotGzip => Err(invalid(match remaining {
            Some(rest) => format!(
                "unexpected data after the last gzip member at offset {offset} ({rest} trailing bytes)"
            ),
            None => format!("unexpected data after the last gzip member at offset {offset}"),
        })),
        Parsed::Truncated => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "gzip header at offset {offset} is truncated (file ends at {})",
                offset + remaining.unwrap_or(0)
            ),
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

#[cfg(test)]
mod tests {
    use crate::archive::pgzip::test_data::*;
    use flate2::Crc;

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
    fn padding_members_align_what_follows_and_every_reader_skips_them() {
        let (a, b) = (text(3000, 1), mixed(5000, 2));
        let head = compress(&a, 6, 1, 1000);
        let tail = compress(&b, 6, 1, 1000);
        let mut ab = a.clone();
        ab.extend_from_slice(&b);
        // Every gap a 4096 alignment can leave, the tiny ones widened by a block.
        for at in 0..4096u64 {
            let pad = super::padding(at, 4096);
            let len = pad.len() as u64;
            assert_eq!((at + len) % 4096, 0, "at {at}");
            assert_eq!(len == 0, at == 0, "at {at}");
            assert!(len < 4096 + super::MIN_PADDING as u64, "at {at}: {len}");
            // Each member's header fits in one scan probe: the chain stays indexed.
            if len > 0 {
                assert!(
                    members(&pad)
                        .iter()
                        .all(|&(_, l)| l as usize <= super::MAX_PADDING)
                );
            }
        }
        // Between members of data, and first. Gaps: 4095 (the longest single member), 2000,
        // 34 (the shortest), 33 and 1 (widened by a block: two members).
        for at in [1u64, 2096, 4062, 4063, 4095] {
            let pad = super::padding(at, 4096);
            for gz in [
                [&head[..], &pad, &tail].concat(),
                [&pad[..], &head, &tail].concat(),
            ] {
                assert!(read_all(&gz, 2).unwrap() == ab, "pgzip readers, at {at}");
                assert!(multigz(&gz) == ab, "MultiGzDecoder, at {at}");
                assert!(system_gunzip(&gz) == ab, "gzip -dc, at {at}");
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
}
