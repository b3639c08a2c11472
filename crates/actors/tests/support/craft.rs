//! Crafting raw `.tar.gz` archives byte for byte, for tests of the archive reader.
//!
//! The one copy of this code: `crates/actors/src/archive/tests.rs`, the tests in
//! `crates/actors/src/package.rs` and `crates/actors/tests/fuzz_archive.rs` include it with
//! `#[path]` (it names no type of the crate, so it compiles inside and outside it), and the
//! root `tests/archutil.rs` builds its hostile archives on it too. Names and link targets are
//! written verbatim (GNU long-name records past 99 bytes), so paths the `tar` crate would
//! refuse to write (`..`, absolute, non-UTF-8) can be crafted.

#![allow(dead_code)]

use std::io::Write;

/// One tar entry as written: raw name, type byte, content, link target, mode, mtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    pub path: Vec<u8>,
    pub typeflag: u8,
    pub data: Vec<u8>,
    pub link: Option<Vec<u8>>,
    pub mode: u32,
    pub mtime: u64,
}

impl RawEntry {
    /// An entry of `kind` with mode 0755 for a directory, 0644 otherwise, mtime 0.
    pub fn new(path: &[u8], kind: tar::EntryType, data: &[u8], link: Option<&[u8]>) -> Self {
        RawEntry {
            path: path.to_vec(),
            typeflag: kind.as_byte(),
            data: data.to_vec(),
            link: link.map(<[u8]>::to_vec),
            mode: if kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            },
            mtime: 0,
        }
    }

    /// A regular file, mode 0644, mtime 0.
    pub fn file(path: &[u8], data: &[u8]) -> Self {
        Self::new(path, tar::EntryType::Regular, data, None)
    }

    pub fn kind(&self) -> tar::EntryType {
        tar::EntryType::new(self.typeflag)
    }
}

/// A GNU `././@LongLink` record (`kind` `L` for a name, `K` for a link target).
pub fn long_record<W: Write>(b: &mut tar::Builder<W>, kind: u8, value: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_size(value.len() as u64 + 1);
    h.set_cksum();
    let mut data = value.to_vec();
    data.push(0);
    b.append(&h, &data[..]).unwrap();
}

/// A GNU header with `name` (and `link`, when given) written verbatim: short names only (the
/// caller writes long-name records first); devices (type `3`, `4`) get major 1, minor 3;
/// owner 0:0; checksum set.
pub fn header(
    name: &[u8],
    typeflag: u8,
    size: u64,
    mode: u32,
    mtime: u64,
    link: Option<&[u8]>,
) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::new(typeflag));
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    if matches!(typeflag, b'3' | b'4') {
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
    }
    if let Some(link) = link.filter(|l| l.len() < 100) {
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    }
    if name.len() < 100 {
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
    }
    h.set_cksum();
    h
}

/// Appends one raw entry: names written verbatim (GNU long-name records when long).
pub fn append_raw<W: Write>(b: &mut tar::Builder<W>, e: &RawEntry) {
    if let Some(link) = e.link.as_deref().filter(|l| l.len() >= 100) {
        long_record(b, b'K', link);
    }
    if e.path.len() >= 100 {
        long_record(b, b'L', &e.path);
    }
    let h = header(
        &e.path,
        e.typeflag,
        e.data.len() as u64,
        e.mode,
        e.mtime,
        e.link.as_deref(),
    );
    b.append(&h, &e.data[..]).unwrap();
}

/// A tar stream (with its end-of-archive blocks) of exactly these entries.
pub fn tar_of(entries: &[RawEntry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        append_raw(&mut b, e);
    }
    b.into_inner().unwrap()
}

/// One ordinary gzip member of `data` (fast level).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// A `.tar.gz` (one ordinary gzip member) of exactly these entries.
pub fn pack(entries: &[RawEntry]) -> Vec<u8> {
    gzip(&tar_of(entries))
}
