//! Test data and helpers shared by the pgzip unit tests: deterministic random, text and
//! mixed inputs, compress/read round trips, and the system `gzip` for comparison.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::process::Command;

use flate2::read::MultiGzDecoder;

use super::{ParallelGzWriter, member_offsets, open_reader, open_stream_reader};

/// xorshift64*: deterministic test data without a rand dependency.
pub(super) struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

pub(super) fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        v.extend_from_slice(&r.next().to_le_bytes());
    }
    v.truncate(n);
    v
}

pub(super) fn text(n: usize, seed: u64) -> Vec<u8> {
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
pub(super) fn mixed(n: usize, seed: u64) -> Vec<u8> {
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

pub(super) fn compress(data: &[u8], level: u32, threads: usize, chunk: usize) -> Vec<u8> {
    let mut w = ParallelGzWriter::new(Vec::new(), level, threads, chunk);
    // Uneven pieces exercise the chunk buffering.
    for piece in data.chunks(7919) {
        w.write_all(piece).unwrap();
    }
    w.finish().unwrap()
}

pub(super) fn to_file(bytes: &[u8]) -> File {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(bytes).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f
}

/// Reads `bytes` through [`open_reader`] (a file) and through [`open_stream_reader`] (a
/// stream handing out at most 777 bytes a read, as a decryptor might), and checks that both
/// give the same data or fail alike; returns the file reader's result.
pub(super) fn read_all(bytes: &[u8], threads: usize) -> io::Result<Vec<u8>> {
    let from_file = (|| {
        let mut r = open_reader(to_file(bytes), threads)?;
        let mut v = Vec::new();
        r.read_to_end(&mut v)?;
        Ok::<_, io::Error>(v)
    })();
    let from_stream = (|| {
        let mut r = open_stream_reader(Box::new(Trickle(bytes.to_vec(), 0)), threads)?;
        let mut v = Vec::new();
        r.read_to_end(&mut v)?;
        Ok::<_, io::Error>(v)
    })();
    match (&from_file, &from_stream) {
        (Ok(a), Ok(b)) => assert!(a == b, "the stream reader gave other data"),
        (Err(a), Err(b)) => assert_eq!(a.kind(), b.kind(), "file: {a}; stream: {b}"),
        (a, b) => panic!("file reader: {a:?}; stream reader: {b:?}"),
    }
    from_file
}

/// A stream of `bytes` that hands out at most 777 bytes a read.
struct Trickle(Vec<u8>, usize);

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(777).min(self.0.len() - self.1);
        buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
        self.1 += n;
        Ok(n)
    }
}

pub(super) fn multigz(bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    MultiGzDecoder::new(bytes).read_to_end(&mut v).unwrap();
    v
}

pub(super) fn system_gunzip(bytes: &[u8]) -> Vec<u8> {
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

pub(super) fn system_gzip(data: &[u8]) -> Vec<u8> {
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

pub(super) fn members(bytes: &[u8]) -> Vec<(u64, u32)> {
    member_offsets(&to_file(bytes))
        .unwrap()
        .expect("all members indexed")
}
