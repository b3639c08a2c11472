//! What a tar entry may be: its header parsed into a [`Parsed`] (type, clean relative path,
//! link target, numbers), the [`Tracker`] that refuses entries escaping the target or clashing
//! with earlier ones, the copy of an entry's data, and what may follow the last entry.

use std::collections::HashSet;
use std::io::{self, Read};

use sha2::{Digest, Sha256};

use super::{Refusal, display_bytes, stream_error};
use crate::archive::format::encode_bytes;
use crate::archive::{EntryKind, META_DIR, ManifestEntry};
use crate::relpath::INTERNAL_PREFIX;

/// The first component of a normalized path.
pub(in crate::archive) fn top_level(path: &[u8]) -> &[u8] {
    match path.iter().position(|&b| b == b'/') {
        Some(i) => &path[..i],
        None => path,
    }
}

/// One tar entry as we understand it, after validation of its header.
#[derive(Debug, Clone)]
pub(in crate::archive) struct Parsed {
    /// Normalized: no trailing slash.
    pub path: Vec<u8>,
    pub kind: EntryKind,
    pub size: u64,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub target: Option<Vec<u8>>,
}

impl Parsed {
    /// What an [`super::digest::EntryDigest`] takes of this entry.
    pub(in crate::archive) fn fields(&self) -> super::digest::EntryFields<'_> {
        super::digest::EntryFields {
            path: &self.path,
            kind: self.kind,
            size: self.size,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            mtime: self.mtime,
            target: self.target.as_deref(),
            has_sha: self.kind == EntryKind::File,
        }
    }

    /// The manifest record this entry corresponds to (`sha256` for regular files).
    pub(in crate::archive) fn to_manifest_entry(&self, sha256: Option<String>) -> ManifestEntry {
        ManifestEntry {
            sha256,
            ..Observed::of(self).to_manifest_entry()
        }
    }
}

/// Reads and validates an entry's header: type, path, link target, numeric fields.
pub(in crate::archive) fn parse_entry<R: Read>(
    entry: &tar::Entry<'_, R>,
) -> Result<Parsed, Refusal> {
    let raw_path = entry.path_bytes().into_owned();
    let header = entry.header();
    let kind = match header.entry_type() {
        tar::EntryType::Regular => EntryKind::File,
        tar::EntryType::Directory => EntryKind::Dir,
        tar::EntryType::Symlink => EntryKind::Symlink,
        tar::EntryType::Link => EntryKind::Hardlink,
        other => {
            return Err(Refusal::unsafe_entry(
                &raw_path,
                format!(
                    "unsupported entry type {} ({:?}); only directories, regular files, \
                     symlinks and hard links are allowed",
                    type_name(other),
                    other.as_byte() as char
                ),
            ));
        }
    };
    let path = normalize_path(&raw_path, kind).map_err(|r| Refusal::unsafe_entry(&raw_path, r))?;
    let corrupt = |what: &str, e: io::Error| {
        Refusal::Corrupt(format!(
            "entry {:?}: bad {what} field: {e}",
            display_bytes(&raw_path)
        ))
    };
    let size = entry.size();
    if kind != EntryKind::File && size != 0 {
        return Err(Refusal::Corrupt(format!(
            "entry {:?}: a {} entry with {size} bytes of data",
            display_bytes(&raw_path),
            kind_name(kind)
        )));
    }
    let mode = header.mode().map_err(|e| corrupt("mode", e))?;
    let uid = header.uid().map_err(|e| corrupt("uid", e))?;
    let gid = header.gid().map_err(|e| corrupt("gid", e))?;
    let mtime = header.mtime().map_err(|e| corrupt("mtime", e))?;
    let mtime = i64::try_from(mtime).map_err(|_| {
        Refusal::Corrupt(format!(
            "entry {:?}: mtime {mtime} out of range",
            display_bytes(&raw_path)
        ))
    })?;
    let target = match kind {
        EntryKind::Symlink | EntryKind::Hardlink => {
            let t = entry
                .link_name_bytes()
                .map(|t| t.into_owned())
                .unwrap_or_default();
            if t.is_empty() {
                return Err(Refusal::unsafe_entry(
                    &raw_path,
                    "link with an empty target",
                ));
            }
            if t.contains(&0) {
                return Err(Refusal::unsafe_entry(
                    &raw_path,
                    "link target contains a NUL byte",
                ));
            }
            Some(t)
        }
        _ => None,
    };
    Ok(Parsed {
        path,
        kind,
        size,
        mode,
        uid,
        gid,
        mtime,
        target,
    })
}

fn type_name(t: tar::EntryType) -> &'static str {
    match t {
        tar::EntryType::Char => "character device",
        tar::EntryType::Block => "block device",
        tar::EntryType::Fifo => "fifo",
        tar::EntryType::Continuous => "contiguous file",
        tar::EntryType::GNUSparse => "GNU sparse file",
        tar::EntryType::XGlobalHeader => "pax global header",
        _ => "unknown",
    }
}

pub(in crate::archive) fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Dir => "directory",
        EntryKind::File => "regular file",
        EntryKind::Symlink => "symlink",
        EntryKind::Hardlink => "hard link",
    }
}

/// Checks that `raw` is a clean relative path and returns it without a directory's trailing
/// slash. Refused: empty, absolute, NUL bytes, empty / `.` / `..` components, a trailing slash
/// on anything but a directory.
pub(in crate::archive) fn normalize_path(raw: &[u8], kind: EntryKind) -> Result<Vec<u8>, String> {
    if raw.is_empty() {
        return Err("empty path".into());
    }
    if raw[0] == b'/' {
        return Err("absolute path".into());
    }
    if raw.contains(&0) {
        return Err("path contains a NUL byte".into());
    }
    let body = match raw.strip_suffix(b"/") {
        Some(b) if kind == EntryKind::Dir => b,
        Some(_) => return Err(format!("trailing slash on a {}", kind_name(kind))),
        None => raw,
    };
    for comp in body.split(|&b| b == b'/') {
        match comp {
            b"" => return Err("empty path component".into()),
            b"." => return Err("`.` path component".into()),
            b".." => return Err("`..` path component".into()),
            _ => {}
        }
    }
    Ok(body.to_vec())
}

/// Tracks the entries seen so far and refuses any that could escape the target directory or
/// clash with an earlier one.
///
/// Paths are not kept: each is remembered as a keyed 128-bit hash (two SipHash-1-3 with
/// random keys; a false match needs a collision of both, about 2^-100 for millions of
/// entries), with the entry's kind in its two low bits: 16 bytes per entry instead of the
/// path and a `Vec` (more than 100 bytes for a typical path).
#[derive(Default)]
pub(in crate::archive) struct Tracker {
    keys: PathKeys,
    /// Hash of each path seen, `| kind code`.
    seen: HashSet<u128>,
    /// Hash of each path that an entry needs to be a directory.
    implicit_dirs: HashSet<u128>,
}

/// The keyed hashes of [`Tracker`].
#[derive(Default)]
struct PathKeys(std::hash::RandomState, std::hash::RandomState);

impl PathKeys {
    /// The path's key, low two bits clear (they hold the kind in `Tracker::seen`).
    fn key(&self, path: &[u8]) -> u128 {
        use std::hash::BuildHasher;
        let (a, b) = (self.0.hash_one(path), self.1.hash_one(path));
        ((u128::from(a) << 64) | u128::from(b)) & !3
    }
}

const KINDS: [EntryKind; 4] = [
    EntryKind::Dir,
    EntryKind::File,
    EntryKind::Symlink,
    EntryKind::Hardlink,
];

fn kind_bits(kind: EntryKind) -> u128 {
    match kind {
        EntryKind::Dir => 0,
        EntryKind::File => 1,
        EntryKind::Symlink => 2,
        EntryKind::Hardlink => 3,
    }
}

impl Tracker {
    /// The kind of the entry seen at `path`, if any.
    fn seen(&self, path: &[u8]) -> Option<EntryKind> {
        let key = self.keys.key(path);
        KINDS
            .into_iter()
            .find(|&k| self.seen.contains(&(key | kind_bits(k))))
    }
}

impl Tracker {
    /// Admits `e` or says why not. `e.path` must come from [`normalize_path`].
    pub(in crate::archive) fn admit(&mut self, e: &Parsed) -> Result<(), Refusal> {
        let path = &e.path;
        let top = top_level(path);
        if top == META_DIR.as_bytes() || top.starts_with(INTERNAL_PREFIX.as_bytes()) {
            return Err(Refusal::unsafe_entry(
                path,
                format!("names beginning with {INTERNAL_PREFIX:?} are reserved for nuwax-cli"),
            ));
        }
        let key = self.keys.key(path);
        match self.seen(path) {
            Some(_) => return Err(Refusal::unsafe_entry(path, "duplicate entry")),
            None if self.implicit_dirs.contains(&key) && e.kind != EntryKind::Dir => {
                return Err(Refusal::unsafe_entry(
                    path,
                    "an earlier entry needs this path to be a directory",
                ));
            }
            None => {}
        }
        // Every ancestor must be a directory (explicit or implied), never a link or a file.
        let mut new_implicit = Vec::new();
        for (i, _) in path.iter().enumerate().filter(|(_, b)| **b == b'/') {
            let ancestor = &path[..i];
            match self.seen(ancestor) {
                Some(EntryKind::Dir) => {}
                Some(EntryKind::Symlink) => {
                    return Err(Refusal::unsafe_entry(
                        path,
                        format!("lies beneath the symlink {:?}", display_bytes(ancestor)),
                    ));
                }
                Some(k) => {
                    return Err(Refusal::unsafe_entry(
                        path,
                        format!(
                            "lies beneath the {} {:?}",
                            kind_name(k),
                            display_bytes(ancestor)
                        ),
                    ));
                }
                None => new_implicit.push(self.keys.key(ancestor)),
            }
        }
        if e.kind == EntryKind::Hardlink {
            let target = e.target.as_deref().unwrap_or_default();
            let target = normalize_path(target, EntryKind::File)
                .map_err(|r| Refusal::unsafe_entry(path, format!("hard link target {r}")))?;
            match self.seen(&target) {
                Some(EntryKind::File | EntryKind::Hardlink) => {}
                _ => {
                    return Err(Refusal::unsafe_entry(
                        path,
                        format!(
                            "hard link target {:?} is not an earlier regular file of the archive",
                            display_bytes(&target)
                        ),
                    ));
                }
            }
            if top_level(&target) != top {
                return Err(Refusal::unsafe_entry(
                    path,
                    format!(
                        "hard link target {:?} is in another top-level item",
                        display_bytes(&target)
                    ),
                ));
            }
        }
        self.implicit_dirs.extend(new_implicit);
        self.seen.insert(key | kind_bits(e.kind));
        Ok(())
    }
}

/// Copies exactly `size` bytes of an entry's data from `src` to `dst` (if any) while hashing;
/// returns the SHA-256 (lowercase hex). Fewer bytes than the header says is corruption.
pub(in crate::archive) fn copy_entry_data(
    src: &mut dyn Read,
    mut dst: Option<&mut dyn io::Write>,
    size: u64,
    buf: &mut [u8],
    entry: &[u8],
    on_bytes: &mut dyn FnMut(u64),
) -> Result<String, CopyError> {
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    while done < size {
        let want = buf
            .len()
            .min((size - done).try_into().unwrap_or(usize::MAX));
        let n = match src.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(CopyError::Read(Refusal::Broken(format!(
                    "entry {:?} is truncated ({done} of {size} bytes)",
                    display_bytes(entry)
                ))));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(CopyError::Read(stream_error(
                    e,
                    &format!("reading entry {:?}", display_bytes(entry)),
                )));
            }
        };
        hasher.update(&buf[..n]);
        if let Some(d) = dst.as_mut() {
            d.write_all(&buf[..n]).map_err(CopyError::Write)?;
        }
        done += n as u64;
        on_bytes(n as u64);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[derive(Debug)]
pub(in crate::archive) enum CopyError {
    /// Reading the archive failed or its data is short.
    Read(Refusal),
    /// Writing the destination failed.
    Write(io::Error),
}

/// After the tar end marker only zero padding may follow, and the gzip stream must end
/// cleanly (this also surfaces a bad CRC or garbage after the last member). The tar reader
/// stops at the first zero block *or* at a clean end of input, so the second zero block of
/// the end marker (the builder writes two) must still be here: a stream cut at a gzip member
/// boundary is caught this way too.
pub(in crate::archive) fn check_trailing(rest: &mut dyn Read) -> Result<(), Refusal> {
    let mut buf = vec![0u8; 64 << 10];
    let mut zeros = 0u64;
    loop {
        match rest.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if buf[..n].iter().any(|&b| b != 0) {
                    return Err(Refusal::Corrupt(
                        "data after the end of the tar archive".into(),
                    ));
                }
                zeros += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(stream_error(e, "after the end of the tar archive")),
        }
    }
    if zeros < 512 {
        return Err(Refusal::Broken(
            "the tar end-of-archive marker is missing (the archive is truncated)".into(),
        ));
    }
    Ok(())
}

/// A content entry as read from the stream, kept until the manifest (the last entry) can be
/// compared with it: the fields of its [`ManifestEntry`] in raw form, a third of the size
/// (120 000 of them for a 4 GB tree).
#[derive(Debug, Clone)]
pub(in crate::archive) struct Observed {
    path: Box<[u8]>,
    target: Option<Box<[u8]>>,
    /// Content SHA-256 of a regular file, once known.
    pub sha256: Option<[u8; 32]>,
    kind: EntryKind,
    size: u64,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
}

impl Observed {
    pub(in crate::archive) fn of(e: &Parsed) -> Self {
        Observed {
            path: e.path.clone().into_boxed_slice(),
            target: e.target.clone().map(Vec::into_boxed_slice),
            sha256: None,
            kind: e.kind,
            size: e.size,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
        }
    }

    /// The manifest record of this entry.
    pub(in crate::archive) fn to_manifest_entry(&self) -> ManifestEntry {
        let (path, path_hex) = encode_bytes(&self.path);
        let (target, target_hex) = match &self.target {
            Some(t) => encode_bytes(t),
            None => (None, None),
        };
        ManifestEntry {
            path,
            path_hex,
            kind: self.kind,
            size: self.size,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            mtime: self.mtime,
            sha256: self.sha256.map(hex::encode),
            target,
            target_hex,
            stat: None,
        }
    }

    /// Whether `m` equals [`Observed::to_manifest_entry`] exactly.
    #[cfg(test)]
    pub(in crate::archive) fn same_as(&self, m: &ManifestEntry) -> bool {
        let bytes_equal =
            |raw: Option<&[u8]>, text: &Option<String>, hex_: &Option<String>| match raw {
                None => text.is_none() && hex_.is_none(),
                Some(raw) => match std::str::from_utf8(raw) {
                    Ok(t) => text.as_deref() == Some(t) && hex_.is_none(),
                    Err(_) => text.is_none() && hex_.as_deref() == Some(&hex::encode(raw)),
                },
            };
        self.kind == m.kind
            && self.size == m.size
            && self.mode == m.mode
            && self.uid == m.uid
            && self.gid == m.gid
            && self.mtime == m.mtime
            && self.sha256.map(hex::encode) == m.sha256
            && bytes_equal(Some(&self.path), &m.path, &m.path_hex)
            && bytes_equal(self.target.as_deref(), &m.target, &m.target_hex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_refuses_unclean_paths() {
        let f = EntryKind::File;
        assert_eq!(normalize_path(b"a/b", f).unwrap(), b"a/b");
        assert_eq!(normalize_path(b"a/b/", EntryKind::Dir).unwrap(), b"a/b");
        for bad in [
            &b""[..],
            b"/abs",
            b"../x",
            b"a/../x",
            b"a/..",
            b"./a",
            b"a/./b",
            b"a//b",
            b"a/",
            b".",
            b"a\0b",
        ] {
            assert!(normalize_path(bad, f).is_err(), "{bad:?} accepted");
        }
        assert!(normalize_path(b"a//", EntryKind::Dir).is_err());
        assert!(normalize_path(b"/", EntryKind::Dir).is_err());
        // Odd but harmless names stay.
        assert!(normalize_path(b"...", f).is_ok());
        assert!(normalize_path(b"a\\..\\b", f).is_ok());
    }
}
