//! Reading, repacking and damaging archives, independently of the code under test.
//!
//! Damaged and hostile fixtures are made here (STYLE.md: flip a byte, truncate, `..` entries,
//! escaping symlinks). A repacked archive gets its new SHA-256 and size written into the
//! catalog with `rusqlite`, so the catalog check passes and the restore's own defences (gzip
//! CRC, per-file manifest check, path checks) are what must refuse it.

use std::fs;
use std::io::Read;
use std::path::Path;

use flate2::read::MultiGzDecoder;

use crate::util::{BackupRow, TestEnv, sha256_file};

/// The one crafting module of every archive test (shared with crates/actors' own tests):
/// verbatim headers, GNU long-name records, gzip members.
#[path = "../crates/actors/tests/support/craft.rs"]
mod craft;

/// One raw tar record: header plus data, with GNU long-name records as entries of their own,
/// so writing them back reproduces the stream.
pub struct RawEntry {
    pub header: tar::Header,
    pub data: Vec<u8>,
}

impl RawEntry {
    /// The header's own (short) path bytes.
    pub fn path(&self) -> Vec<u8> {
        self.header.path_bytes().into_owned()
    }
}

fn open(path: &Path) -> tar::Archive<MultiGzDecoder<fs::File>> {
    let f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    tar::Archive::new(MultiGzDecoder::new(f))
}

/// Every raw record of a `.tar.gz`.
pub fn read_raw(path: &Path) -> Vec<RawEntry> {
    let mut ar = open(path);
    let mut out = Vec::new();
    for e in ar.entries().unwrap().raw(true) {
        let mut e = e.unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
        let header = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push(RawEntry { header, data });
    }
    out
}

/// Writes raw records as a (single-member) `.tar.gz`.
pub fn write_raw(path: &Path, entries: &[RawEntry]) {
    let f = fs::File::create(path).unwrap();
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for e in entries {
        b.append(&e.header, e.data.as_slice()).unwrap();
    }
    b.into_inner()
        .unwrap()
        .finish()
        .unwrap()
        .sync_all()
        .unwrap();
}

/// Entry paths (long names resolved) in archive order.
pub fn entry_paths(path: &Path) -> Vec<Vec<u8>> {
    let mut ar = open(path);
    ar.entries()
        .unwrap()
        .map(|e| e.unwrap().path_bytes().into_owned())
        .collect()
}

/// Reads one entry's content by path.
pub fn read_entry(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut ar = open(path);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path_bytes().as_ref() == name.as_bytes() {
            let mut v = Vec::new();
            e.read_to_end(&mut v).unwrap();
            return Some(v);
        }
    }
    None
}

/// Index of the raw record whose header path is `name`.
#[track_caller]
pub fn index_of(entries: &[RawEntry], name: &str) -> usize {
    entries
        .iter()
        .position(|e| e.path() == name.as_bytes())
        .unwrap_or_else(|| panic!("no entry {name:?} in the archive"))
}

/// A header with `name` written verbatim (the tar crate refuses `..` and absolute paths, which
/// is exactly what a hostile archive has).
pub fn raw_header(name: &[u8], kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    assert!(name.len() < 100, "raw_header: short names only");
    craft::header(name, kind.as_byte(), size, mode, 1_600_000_000, None)
}

/// A regular-file record with a verbatim path.
pub fn hostile_file(name: &str, content: &[u8]) -> RawEntry {
    RawEntry {
        header: raw_header(
            name.as_bytes(),
            tar::EntryType::Regular,
            content.len() as u64,
            0o644,
        ),
        data: content.to_vec(),
    }
}

/// A symlink record with verbatim path and target.
pub fn hostile_symlink(name: &str, target: &str) -> RawEntry {
    let mut h = raw_header(name.as_bytes(), tar::EntryType::Symlink, 0, 0o777);
    h.set_link_name_literal(target.as_bytes()).unwrap();
    h.set_cksum();
    RawEntry {
        header: h,
        data: Vec::new(),
    }
}

/// Flips one bit of the byte in the middle of the file; returns its offset.
pub fn flip_middle_byte(path: &Path) -> usize {
    let mut bytes = fs::read(path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    fs::write(path, bytes).unwrap();
    at
}

/// Flips a bit in the middle of the members of `file`, a big file of `archive` (one with
/// members of its own, listed in the manifest's `spans`): damage only a copy would notice.
pub fn flip_byte_in_span_of(archive: &Path, file: &str) {
    let manifest: serde_json::Value =
        serde_json::from_slice(&read_entry(archive, ".nuwax-backup/manifest.json").unwrap())
            .unwrap();
    let entries = manifest["entries"].as_array().unwrap();
    let span = manifest["spans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| entries[s["entry"].as_u64().unwrap() as usize]["path"] == file)
        .unwrap_or_else(|| panic!("{file} has no members of its own"));
    let at = span["offset"].as_u64().unwrap() + span["len"].as_u64().unwrap() / 2;
    let mut bytes = fs::read(archive).unwrap();
    bytes[at as usize] ^= 0x10;
    fs::write(archive, &bytes).unwrap();
}

/// The tree GNU tar extracts from `archive` into `out` (created), minus our metadata dir.
pub fn gnu_tar_tree(archive: &str, out: &Path) -> crate::util::Tree {
    fs::create_dir(out).unwrap();
    let st = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(archive)
        .arg("-C")
        .arg(out)
        .status()
        .unwrap();
    assert!(st.success(), "tar -xzf {archive}");
    crate::util::except(&crate::util::snapshot(out), &[".nuwax-backup"])
}

/// Cuts the file to half its size.
pub fn truncate_half(path: &Path) {
    let len = fs::metadata(path).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
}

/// One gzip member as the archive format describes it (FEXTRA subfield `NX`, 4 bytes LE: the
/// member's total length).
#[derive(Debug, Clone, Copy)]
pub struct Member {
    pub offset: usize,
    pub len: usize,
}

/// Walks the members of an archive by their `NX` lengths; panics if a member lacks one.
#[track_caller]
pub fn nx_members(bytes: &[u8]) -> Vec<Member> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let h = &bytes[pos..];
        assert!(h.len() >= 12, "member at {pos}: truncated header");
        assert_eq!(
            &h[..3],
            &[0x1f, 0x8b, 8],
            "member at {pos}: not a gzip header"
        );
        let flg = h[3];
        assert!(flg & 0x04 != 0, "member at {pos}: no FEXTRA field");
        let xlen = u16::from_le_bytes([h[10], h[11]]) as usize;
        let extra = &h[12..12 + xlen];
        let mut len = None;
        let mut i = 0;
        while i + 4 <= extra.len() {
            let (si1, si2) = (extra[i], extra[i + 1]);
            let sl = u16::from_le_bytes([extra[i + 2], extra[i + 3]]) as usize;
            if si1 == b'N' && si2 == b'X' && sl == 4 {
                let v = &extra[i + 4..i + 8];
                len = Some(u32::from_le_bytes([v[0], v[1], v[2], v[3]]) as usize);
            }
            i += 4 + sl;
        }
        let len = len.unwrap_or_else(|| panic!("member at {pos}: no NX subfield"));
        assert!(
            len > 0 && pos + len <= bytes.len(),
            "member at {pos}: NX length {len} runs past the end ({})",
            bytes.len()
        );
        out.push(Member { offset: pos, len });
        pos += len;
    }
    out
}

/// Decompresses exactly one gzip member (fails on a CRC or length mismatch).
pub fn gunzip_member(bytes: &[u8]) -> Vec<u8> {
    let mut d = flate2::read::GzDecoder::new(bytes);
    let mut out = Vec::new();
    d.read_to_end(&mut out).expect("decompress one member");
    out
}

/// Decompresses all members.
pub fn gunzip_all(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    MultiGzDecoder::new(fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .expect("decompress archive");
    out
}

/// Writes `entries` over the archive of `row` and makes the catalog agree with the new file
/// (SHA-256 and size), so only the restore's own checks stand between it and the live tree.
pub fn replace_archive(env: &TestEnv, row: &BackupRow, entries: &[RawEntry]) {
    let path = Path::new(&row.file_path);
    write_raw(path, entries);
    let sha = sha256_file(path);
    let size = fs::metadata(path).unwrap().len();
    catalog_set_checksum(&env.db_file(), row.id, &sha, size);
    let listed = env.row(row.id);
    assert_eq!(
        listed.sha256.as_deref(),
        Some(sha.as_str()),
        "test setup: the catalog update did not take"
    );
}

/// Sets the SHA-256 (and size) of backup `id` in the catalog. The schema is the store crate's;
/// this finds the table by its columns (`id` + `sha256`) rather than by name.
pub fn catalog_set_checksum(db: &Path, id: i64, sha256: &str, size: u64) {
    let conn = rusqlite::Connection::open(db).expect("open catalog");
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    let mut updated = 0;
    for (table, cols) in backup_tables(&conn) {
        updated += conn
            .execute(
                &format!("UPDATE \"{table}\" SET sha256 = ?1 WHERE id = ?2"),
                rusqlite::params![sha256, id],
            )
            .unwrap();
        for col in ["file_size", "size", "size_bytes", "archive_size"] {
            if cols.iter().any(|c| c == col) {
                conn.execute(
                    &format!("UPDATE \"{table}\" SET \"{col}\" = ?1 WHERE id = ?2"),
                    rusqlite::params![size as i64, id],
                )
                .unwrap();
            }
        }
    }
    assert!(
        updated > 0,
        "test setup: no catalog table with columns id and sha256 holds backup {id}"
    );
}

/// The catalog's backup tables, found by their columns (`id` + `sha256`) rather than by name,
/// each with its column names.
pub fn backup_tables(conn: &rusqlite::Connection) -> Vec<(String, Vec<String>)> {
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tables
        .into_iter()
        .map(|table| {
            let cols: Vec<String> = conn
                .prepare(&format!("PRAGMA table_info(\"{table}\")"))
                .unwrap()
                .query_map([], |r| r.get(1))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            (table, cols)
        })
        .filter(|(_, cols)| cols.iter().any(|c| c == "id") && cols.iter().any(|c| c == "sha256"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Byte-level damage that reaches the restore path (tests/hostile.rs)

/// Writes `bytes` as the archive of `row` (fsynced) and makes the catalog's SHA-256 and size
/// match them, so the restore's checksum step passes and its own checks must refuse.
pub fn register_bytes(env: &TestEnv, row: &BackupRow, bytes: &[u8]) {
    use std::io::Write;
    let path = Path::new(&row.file_path);
    let mut f = fs::File::create(path).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let sha = sha256_file(path);
    catalog_set_checksum(&env.db_file(), row.id, &sha, bytes.len() as u64);
    assert_eq!(
        env.row(row.id).sha256.as_deref(),
        Some(sha.as_str()),
        "test setup: the catalog update did not take"
    );
}

/// `bytes` with the lowest bit of the byte at `at` flipped.
pub fn flipped(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v[at] ^= 0x01;
    v
}

/// One ordinary gzip member of `data` (what `gzip -c` writes).
pub use craft::gzip;

/// Size of the gzip header of the member starting at `bytes[0]` (FEXTRA/FNAME/FCOMMENT/FHCRC).
pub fn gzip_header_len(bytes: &[u8]) -> usize {
    let flg = bytes[3];
    let mut at = 10;
    if flg & 0x04 != 0 {
        at += 2 + u16::from_le_bytes([bytes[10], bytes[11]]) as usize;
    }
    for bit in [0x08, 0x10] {
        if flg & bit != 0 {
            at += bytes[at..].iter().position(|&b| b == 0).unwrap() + 1;
        }
    }
    if flg & 0x02 != 0 {
        at += 2;
    }
    at
}

/// Rewrites the CRC32 and ISIZE of member `m` to match what its deflate data decompresses to
/// (after the data was damaged on purpose): the gzip layer is then clean again.
pub fn fix_member_trailer(bytes: &mut [u8], m: Member) {
    let member = &bytes[m.offset..m.offset + m.len];
    let body = &member[gzip_header_len(member)..m.len - 8];
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(body)
        .read_to_end(&mut out)
        .expect("the damaged member still inflates");
    let mut crc = flate2::Crc::new();
    crc.update(&out);
    let end = m.offset + m.len;
    bytes[end - 8..end - 4].copy_from_slice(&crc.sum().to_le_bytes());
    bytes[end - 4..end].copy_from_slice(&(out.len() as u32).to_le_bytes());
}

/// One 512-byte header record of a plain tar stream.
#[derive(Debug, Clone)]
pub struct TarRecord {
    /// Offset of the header block.
    pub offset: usize,
    /// The header's own name field (a GNU long name is a record of its own).
    pub name: Vec<u8>,
    pub typeflag: u8,
    pub size: usize,
}

/// Walks the header records of a plain (uncompressed) tar stream up to the end marker.
pub fn tar_records(tar: &[u8]) -> Vec<TarRecord> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 512 <= tar.len() && tar[at..at + 512].iter().any(|&b| b != 0) {
        let h = &tar[at..at + 512];
        let name_len = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let size_field = &h[124..136];
        let size = if size_field[0] & 0x80 != 0 {
            size_field[4..]
                .iter()
                .fold(0usize, |a, &b| (a << 8) | b as usize)
        } else {
            let s: String = size_field
                .iter()
                .take_while(|&&b| b != 0 && b != b' ')
                .map(|&b| b as char)
                .collect();
            usize::from_str_radix(s.trim(), 8).unwrap_or(0)
        };
        out.push(TarRecord {
            offset: at,
            name: h[..name_len].to_vec(),
            typeflag: h[156],
            size,
        });
        at += 512 + size.div_ceil(512) * 512;
    }
    out
}

/// Recomputes the checksum field of the tar header at `tar[offset..offset + 512]`.
pub fn fix_tar_cksum(tar: &mut [u8], offset: usize) {
    let h = &mut tar[offset..offset + 512];
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let field = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(field.as_bytes());
}

/// A hard-link record with verbatim path and target.
pub fn hostile_hardlink(name: &str, target: &str) -> RawEntry {
    let mut h = raw_header(name.as_bytes(), tar::EntryType::Link, 0, 0o644);
    h.set_link_name_literal(target.as_bytes()).unwrap();
    h.set_cksum();
    RawEntry {
        header: h,
        data: Vec::new(),
    }
}

/// A special-file record (`Char`, `Block`, `Fifo`) with a verbatim path.
pub fn hostile_node(name: &str, kind: tar::EntryType, major: u32, minor: u32) -> RawEntry {
    let mut h = raw_header(name.as_bytes(), kind, 0, 0o666);
    h.set_device_major(major).unwrap();
    h.set_device_minor(minor).unwrap();
    h.set_cksum();
    RawEntry {
        header: h,
        data: Vec::new(),
    }
}

/// What the builder would write into `manifest.json` for `e` (regular files get the SHA-256
/// of their data; other kinds map to the nearest manifest kind).
pub fn manifest_record(e: &RawEntry) -> serde_json::Value {
    use sha2::Digest;
    let h = &e.header;
    let kind = match h.entry_type() {
        tar::EntryType::Directory => "dir",
        tar::EntryType::Symlink => "symlink",
        tar::EntryType::Link => "hardlink",
        _ => "file",
    };
    let path = e.path();
    let path = path.strip_suffix(b"/").unwrap_or(&path);
    let mut v = serde_json::json!({
        "path": String::from_utf8_lossy(path),
        "kind": kind,
        "size": e.data.len(),
        "mode": h.mode().unwrap(),
        "uid": h.uid().unwrap(),
        "gid": h.gid().unwrap(),
        "mtime": h.mtime().unwrap(),
    });
    if kind == "file" {
        v["sha256"] = hex::encode(sha2::Sha256::digest(&e.data)).into();
    }
    if let Some(t) = h.link_name_bytes() {
        v["target"] = String::from_utf8_lossy(&t).into_owned().into();
    }
    v
}

/// The parsed `manifest.json` record of `entries`.
pub fn manifest_of(entries: &[RawEntry]) -> serde_json::Value {
    let i = index_of(entries, ".nuwax-backup/manifest.json");
    serde_json::from_slice(&entries[i].data).expect("manifest.json is JSON")
}

/// Replaces the data of the record `name` (header size and checksum follow).
pub fn set_data(entries: &mut [RawEntry], name: &str, data: Vec<u8>) {
    let i = index_of(entries, name);
    entries[i].header.set_size(data.len() as u64);
    entries[i].header.set_cksum();
    entries[i].data = data;
}

/// Inserts `evil` just before `manifest.json` (everything else already read and written by a
/// sequential restore) and lists each of them in the manifest, so the archive is consistent
/// with its manifest and only the hostile property is wrong.
pub fn insert_listed(entries: &mut Vec<RawEntry>, evil: Vec<RawEntry>) {
    let mut manifest = manifest_of(entries);
    let list = manifest["entries"]
        .as_array_mut()
        .expect("manifest entries");
    for e in &evil {
        list.push(manifest_record(e));
    }
    set_data(
        entries,
        ".nuwax-backup/manifest.json",
        serde_json::to_vec(&manifest).unwrap(),
    );
    let at = index_of(entries, ".nuwax-backup/manifest.json");
    for (k, e) in evil.into_iter().enumerate() {
        entries.insert(at + k, e);
    }
}

/// Raw records as the bytes of a single-member `.tar.gz` (in memory).
pub fn pack_raw(entries: &[RawEntry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        b.append(&e.header, e.data.as_slice()).unwrap();
    }
    gzip(&b.into_inner().unwrap())
}
