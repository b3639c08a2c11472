//! Backups at the cost of what changed: the members of unchanged big files are copied from
//! the previous archive instead of being read and compressed again (issue 16).
//!
//! Design note. The member layout makes it possible: a regular file of at least
//! [`BIG_FILE`] bytes starts its own gzip members, which hold its long-name records, header,
//! data and padding and nothing else ([`Layout`]; small files are packed together and are
//! always compressed anew). The manifest records, per regular file, the lstat fields that
//! tell a change (size, mode, owner, mtime and ctime to the nanosecond, inode, device:
//! [`FileStat`]), and, per big file, where its members lie and the SHA-256 of their
//! compressed bytes ([`Span`]). Member bytes depend only on the tar bytes, the level and the
//! layout, so an archive built this way holds exactly the bytes, and records exactly the
//! manifest, that a from-scratch build of the same tree with the same level would.
//!
//! A file is copied only when ([`unchanged`]) the previous archive was written by this very
//! tool version with the same layout, and every recorded field equals the live lstat, and
//! its ctime lies at least [`RACY_SECS`] before the previous backup's `created_at` (a file
//! changed in the same clock tick as it was read could otherwise keep its ctime). The copy
//! is read back from the new archive and hashed as it is written; a hash that differs from
//! the recorded one sets [`Damage`], the build stops and is redone from live data (with a
//! notice). Anything else in doubt (no previous archive, another version, an unreadable or
//! damaged manifest) gives a full read with a notice, never an error.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use flate2::read::{GzDecoder, MultiGzDecoder};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use sha2::Digest;

use super::crypt::Sealed;
use super::format::{
    ArchiveInfo, Chunk, EntryKind, FORMAT_VERSION, FileStat, Layout, MANIFEST_PATH, ManifestEntry,
    Span,
};
use super::pgzip::{InOrderJob, ParallelGzWriter, member_offsets};
use super::sink::HashingWriter;

/// Regular files of at least this many bytes start their own gzip members. 64 KiB: below
/// it a file's own members would cost compression (a fresh dictionary) and per-file work;
/// above it, re-reading and compressing an unchanged file costs far more than copying it
/// (on the 1 GB benchmark corpus, 178 MB of the 240 MB of files under 1 MiB lie in files
/// of 64 KiB to 1 MiB, mostly object-store uploads, which a 1 MiB threshold re-compressed
/// on every backup).
pub(super) const BIG_FILE: u64 = 64 << 10;

/// The members of a big file of at least [`ALIGN_FROM`] bytes start at an archive offset
/// that is a multiple of this (empty members pad to it, see `pgzip::padding`): 4096 is the
/// block size of XFS and btrfs, where `copy_file_range` between two such offsets clones the
/// blocks instead of copying their bytes (since Linux 5.3).
pub(super) const ALIGN: u64 = 4096;

/// Big files from this size on start aligned. The padding costs about 2 KiB a file: on the
/// 1 GB benchmark corpus, 290 files of at least 256 KiB hold 93 % of the bytes of the 797
/// big files, and their padding about 0.1 % of the archive.
pub(super) const ALIGN_FROM: u64 = 256 << 10;

/// A file whose ctime is less than this many seconds before the previous backup started is
/// read again (its change could share the clock tick of that backup's read).
pub(super) const RACY_SECS: i64 = 2;

/// A copied span did not hash to its recorded checksum: the build is redone from live data.
#[derive(Debug, Default, Clone)]
pub(super) struct Damage(Arc<AtomicBool>);

impl Damage {
    pub(super) fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub(super) fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What the live tree says of a regular file (from the build's scan).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Live {
    pub size: u64,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub stat: FileStat,
}

/// A big file of the previous archive that may be copied.
#[derive(Debug, Clone)]
pub(super) struct Candidate {
    pub entry: ManifestEntry,
    pub span: Span,
}

/// The previous archive, opened and indexed: its big files by path.
pub(super) struct Source {
    pub file: Arc<File>,
    /// The previous backup's `created_at`, seconds since the epoch.
    created: i64,
    by_path: HashMap<Vec<u8>, Candidate>,
}

/// The change rule: whether a file recorded as `old` in an archive created at `created`
/// (seconds) is unchanged now. Every recorded field must equal the live one, and the
/// recorded ctime must lie [`RACY_SECS`] before the archive's creation.
pub(super) fn unchanged(old: &ManifestEntry, created: i64, live: &Live) -> bool {
    let Some(stat) = old.stat else {
        return false;
    };
    old.kind == EntryKind::File
        && old.sha256.is_some()
        && old.size == live.size
        && old.mode == live.mode
        && old.uid == live.uid
        && old.gid == live.gid
        && old.mtime == live.mtime
        && stat == live.stat
        && stat.ctime.saturating_add(RACY_SECS) <= created
}

impl Source {
    /// Opens `path` as the source of an incremental build with `layout` and `tool`. `Err`
    /// says in a sentence why not (the caller makes it a notice and reads everything).
    pub(super) fn open(path: &Path, layout: &Layout, tool: &str) -> Result<Source, String> {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if !name.ends_with(".tar.gz") {
            return Err(format!("{} is not a plain .tar.gz", path.display()));
        }
        let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let old = read_manifest(&file)
            .map_err(|e| format!("cannot read the manifest of {}: {e}", path.display()))?;
        if old.info.format != FORMAT_VERSION || old.info.tool != tool {
            return Err(format!(
                "{} was written by {} (format {}), not by this {tool}",
                path.display(),
                old.info.tool,
                old.info.format
            ));
        }
        if old.layout.as_ref() != Some(layout) {
            return Err(format!(
                "{} was written with another member layout or compression level",
                path.display()
            ));
        }
        let created = chrono::DateTime::parse_from_rfc3339(&old.info.created_at)
            .map_err(|e| format!("{}: bad created_at: {e}", path.display()))?
            .timestamp();
        let mut by_index: HashMap<u64, ManifestEntry> = old.big.into_iter().collect();
        let mut by_path = HashMap::new();
        for span in old.spans {
            if let Some(entry) = by_index.remove(&span.entry)
                && let Some(p) = entry.path_bytes()
            {
                by_path.insert(p, Candidate { entry, span });
            }
        }
        Ok(Source {
            file: Arc::new(file),
            created,
            by_path,
        })
    }

    /// The previous archive's data-only members of `rel` (changed or not), by position.
    pub(super) fn chunks(&self, rel: &[u8]) -> Option<&[Chunk]> {
        self.by_path
            .get(rel)
            .map(|c| c.span.chunks.as_slice())
            .filter(|c| !c.is_empty())
    }

    /// The previous archive's members of `rel`, if the file is unchanged.
    pub(super) fn candidate(&self, rel: &[u8], live: &Live) -> Option<&Candidate> {
        self.by_path
            .get(rel)
            .filter(|c| unchanged(&c.entry, self.created, live))
    }
}

/// The in-order job ([`super::pgzip::ParallelGzWriter::in_order`]) that appends `c`'s
/// members to the archive, read back and hashed: a hash other than the recorded one sets
/// `damage` and fails the write. When the sink defers copies ([`HashingWriter::defer`]),
/// it leaves their place empty instead, to be filled and checked after the live tree was
/// read ([`HashingWriter::fill`]).
pub(super) fn copy_job(
    source: &Source,
    c: &Candidate,
    damage: &Damage,
) -> InOrderJob<Sealed<HashingWriter>> {
    let (file, span, damage) = (Arc::clone(&source.file), c.span.clone(), damage.clone());
    Box::new(move |sink: &mut Sealed<HashingWriter>| {
        let Some(sink) = sink.plain_mut() else {
            return Err(io::Error::other(
                "members cannot be copied into an encrypted archive",
            ));
        };
        let at = sink.count;
        if sink.defer {
            sink.defer_copy(&file, span.offset, span.len, &span.sha256)?;
        } else {
            let got = sink.copy_in(&file, span.offset, span.len, true)?;
            check_copy(&got, &span.sha256, span.offset, span.len, &damage)?;
        }
        // Its data-only members moved with it.
        let from = span.offset;
        sink.chunks = span
            .chunks
            .into_iter()
            .map(|c| Chunk {
                offset: c.offset.saturating_sub(from).saturating_add(at),
                ..c
            })
            .collect();
        Ok(())
    })
}

/// A copy that hashed to `got` where `want` was recorded sets `damage` and fails.
fn check_copy(got: &str, want: &str, offset: u64, len: u64, damage: &Damage) -> io::Result<()> {
    if got == want {
        return Ok(());
    }
    damage.set();
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        super::sink::CopyMismatch { offset, len }.to_string(),
    ))
}

/// How a big file that is read is cut into members, and which of them are copied: a
/// member that holds `chunk` bytes of file data and nothing else (not the first, with the
/// tar header; not the one with the padding) whose data hashes as the previous archive's
/// member at the same place of the same file did is copied from it (read back and hashed as
/// a span is), every other one compressed. Either way the member is recorded as a [`Chunk`].
pub(super) struct Members<'a> {
    pub chunk: u64,
    /// The previous archive and its data-only members of this file, by position.
    pub old: Option<(&'a Source, &'a [Chunk])>,
    pub damage: &'a Damage,
    /// File bytes whose members were copied.
    pub reused: u64,
}

impl Members<'_> {
    /// Takes the piece of the file's data at `at`: exactly one member's data when it is
    /// `chunk` bytes long and not at the start (the caller cuts the data at the members'
    /// boundaries), else data to compress as it comes.
    pub(super) fn piece(
        &mut self,
        gz: &mut ParallelGzWriter<Sealed<HashingWriter>>,
        at: u64,
        data: &[u8],
    ) -> io::Result<()> {
        if at == 0 || data.len() as u64 != self.chunk {
            return gz.write_all(data);
        }
        let plain = hex::encode(sha2::Sha256::digest(data));
        let same = self.old.and_then(|(source, chunks)| {
            let i = chunks.binary_search_by_key(&at, |c| c.at).ok()?;
            (chunks[i].plain == plain).then_some((source, &chunks[i]))
        });
        if let Some((source, old)) = same {
            let (file, old, damage) = (Arc::clone(&source.file), old.clone(), self.damage.clone());
            gz.in_order(Box::new(move |sink: &mut Sealed<HashingWriter>| {
                let sink = sink.plain_mut().ok_or_else(|| {
                    io::Error::other("members cannot be copied into an encrypted archive")
                })?;
                let offset = sink.count;
                let got = sink.copy_in(&file, old.offset, old.len, false)?;
                check_copy(&got, &old.sha256, old.offset, old.len, &damage)?;
                sink.chunks.push(Chunk { offset, ..old });
                Ok(())
            }))?;
            self.reused += self.chunk;
            return Ok(());
        }
        gz.in_order(Box::new(move |sink: &mut Sealed<HashingWriter>| {
            if let Some(sink) = sink.plain_mut() {
                sink.member = Some((sink.count, at, plain, sha2::Sha256::new()));
            }
            Ok(())
        }))?;
        gz.write_all(data)?;
        gz.in_order(Box::new(|sink: &mut Sealed<HashingWriter>| {
            if let Some(sink) = sink.plain_mut()
                && let Some((offset, at, plain, h)) = sink.member.take()
            {
                let len = sink.count - offset;
                let sha256 = hex::encode(h.finalize());
                sink.chunks.push(Chunk {
                    at,
                    plain,
                    offset,
                    len,
                    sha256,
                });
            }
            Ok(())
        }))
    }
}

/// What the incremental build takes of a previous manifest: its info, layout and spans, and
/// only the entries that can have a span (regular files of at least [`BIG_FILE`] bytes),
/// with their numbers: memory in the number of big files, not of entries.
struct OldManifest {
    info: ArchiveInfo,
    layout: Option<Layout>,
    spans: Vec<Span>,
    big: Vec<(u64, ManifestEntry)>,
}

/// Finds the manifest of an archive written with a [`Layout`] (it starts its own member)
/// from the end of the member chain, and parses it. Every member from there on is inflated
/// to its end, so its CRC is checked before the manifest is trusted.
fn read_manifest(file: &File) -> io::Result<OldManifest> {
    let members = member_offsets(file)?
        .ok_or_else(|| io::Error::other("it has no member index (another tool's gzip)"))?;
    // The manifest of a big tree spans many members: look back far enough, not forever.
    let start = members
        .iter()
        .rev()
        .take(4096)
        .find_map(|&(offset, len)| match starts_manifest(file, offset, len) {
            Ok(true) => Some(Ok(offset)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        })
        .transpose()?
        .ok_or_else(|| io::Error::other("no member starts its manifest (an earlier version)"))?;
    let mut f = file.try_clone()?;
    f.seek(SeekFrom::Start(start))?;
    let mut gz = MultiGzDecoder::new(BufReader::with_capacity(1 << 16, f));
    let mut header = [0u8; 512];
    gz.read_exact(&mut header)?;
    let size = tar::Header::from_byte_slice(&header).entry_size()?;
    let parsed = {
        let mut de = serde_json::Deserializer::from_reader(BufReader::new((&mut gz).take(size)));
        let m = OldManifestSeed
            .deserialize(&mut de)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        de.end()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        m
    };
    // The rest (padding, end of archive), so that every member's CRC has been checked.
    io::copy(&mut gz, &mut io::sink())?;
    Ok(parsed)
}

/// Whether the member at `offset` begins with the tar header of the manifest.
fn starts_manifest(file: &File, offset: u64, len: u32) -> io::Result<bool> {
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, offset)?;
    let mut header = [0u8; 512];
    match GzDecoder::new(&bytes[..]).read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    let h = tar::Header::from_byte_slice(&header);
    Ok(h.entry_type() == tar::EntryType::Regular
        && h.path_bytes().as_ref() == MANIFEST_PATH.as_bytes()
        && h.cksum().ok() == Some(checksum(&header)))
}

/// The tar header checksum of `block` (the checksum field counted as spaces).
fn checksum(block: &[u8; 512]) -> u32 {
    block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum()
}

struct OldManifestSeed;

impl<'de> DeserializeSeed<'de> for OldManifestSeed {
    type Value = OldManifest;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<OldManifest, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for OldManifestSeed {
    type Value = OldManifest;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a manifest object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OldManifest, A::Error> {
        let (mut info, mut layout, mut spans, mut big) = (None, None, Vec::new(), Vec::new());
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "info" => info = Some(map.next_value::<ArchiveInfo>()?),
                "layout" => layout = map.next_value::<Option<Layout>>()?,
                "spans" => spans = map.next_value::<Vec<Span>>()?,
                "entries" => map.next_value_seed(BigEntries(&mut big))?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let info = info.ok_or_else(|| serde::de::Error::missing_field("info"))?;
        Ok(OldManifest {
            info,
            layout,
            spans,
            big,
        })
    }
}

/// The `entries` array, keeping only regular files of at least [`BIG_FILE`] bytes.
struct BigEntries<'a>(&'a mut Vec<(u64, ManifestEntry)>);

impl<'de> DeserializeSeed<'de> for BigEntries<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BigEntries<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of manifest entries")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut n = 0u64;
        while let Some(e) = seq.next_element::<ManifestEntry>()? {
            if e.kind == EntryKind::File && e.size >= BIG_FILE && e.stat.is_some() {
                self.0.push((n, e));
            }
            n += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat() -> FileStat {
        FileStat {
            mtime_ns: 5,
            ctime: 1_000,
            ctime_ns: 6,
            ino: 7,
            dev: 8,
        }
    }

    fn old() -> ManifestEntry {
        ManifestEntry {
            path: Some("data/db".into()),
            path_hex: None,
            kind: EntryKind::File,
            size: 2 << 20,
            mode: 0o644,
            uid: 1,
            gid: 2,
            mtime: 900,
            sha256: Some("ab".repeat(32)),
            target: None,
            target_hex: None,
            stat: Some(stat()),
        }
    }

    fn live() -> Live {
        Live {
            size: 2 << 20,
            mode: 0o644,
            uid: 1,
            gid: 2,
            mtime: 900,
            stat: stat(),
        }
    }

    #[test]
    fn a_file_is_unchanged_only_when_every_recorded_field_equals_the_live_one() {
        let created = 1_000 + RACY_SECS;
        assert!(unchanged(&old(), created, &live()));
        let variants: Vec<(&str, Live)> = vec![
            ("size", Live { size: 1, ..live() }),
            (
                "mode",
                Live {
                    mode: 0o600,
                    ..live()
                },
            ),
            ("uid", Live { uid: 9, ..live() }),
            ("gid", Live { gid: 9, ..live() }),
            (
                "mtime",
                Live {
                    mtime: 901,
                    ..live()
                },
            ),
            (
                "mtime_ns",
                Live {
                    stat: FileStat {
                        mtime_ns: 4,
                        ..stat()
                    },
                    ..live()
                },
            ),
            (
                "ctime",
                Live {
                    stat: FileStat {
                        ctime: 1_001,
                        ..stat()
                    },
                    ..live()
                },
            ),
            (
                "ctime_ns",
                Live {
                    stat: FileStat {
                        ctime_ns: 0,
                        ..stat()
                    },
                    ..live()
                },
            ),
            (
                "ino",
                Live {
                    stat: FileStat { ino: 1, ..stat() },
                    ..live()
                },
            ),
            (
                "dev",
                Live {
                    stat: FileStat { dev: 1, ..stat() },
                    ..live()
                },
            ),
        ];
        for (what, l) in variants {
            assert!(
                !unchanged(&old(), created, &l),
                "a different {what} is a change"
            );
        }
    }

    #[test]
    fn doubt_means_changed() {
        // Changed within RACY_SECS of the previous backup: its ctime proves nothing.
        assert!(!unchanged(&old(), 1_000 + RACY_SECS - 1, &live()));
        // Recorded by an earlier version (no stat), without checksum, or not a file.
        assert!(!unchanged(
            &ManifestEntry {
                stat: None,
                ..old()
            },
            5_000,
            &live()
        ));
        assert!(!unchanged(
            &ManifestEntry {
                sha256: None,
                ..old()
            },
            5_000,
            &live()
        ));
        assert!(!unchanged(
            &ManifestEntry {
                kind: EntryKind::Hardlink,
                ..old()
            },
            5_000,
            &live()
        ));
    }
}

#[cfg(test)]
mod build_tests {
    use super::*;
    use crate::archive::{BuildOptions, BuildReport, CancelFlag, build, verify};
    use crate::{Progress, ProgressEvent};
    use std::fs;
    use std::path::{Path, PathBuf};

    fn noise(len: usize, mut seed: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            v.extend_from_slice(&seed.to_le_bytes());
        }
        v.truncate(len);
        v
    }

    fn text(len: usize) -> Vec<u8> {
        (0..len).map(|i| b"abcdefgh ijkl\n"[i % 14]).collect()
    }

    fn long_name() -> String {
        format!("data/{}/big.bin", "d".repeat(120))
    }

    /// A tree with small files and big ones (one with a GNU long name).
    fn tree(src: &Path) {
        for (rel, data) in [
            ("app/VERSION".to_string(), b"1.0\n".to_vec()),
            ("app/conf.txt".to_string(), text(5000)),
            ("data/a.ibd".to_string(), noise(5 << 20, 1)),
            ("data/b.ibd".to_string(), text((5 << 20) / 2 + 7)),
            ("upload/exact".to_string(), noise(BIG_FILE as usize, 2)),
            ("upload/small.jpg".to_string(), noise(4000, 3)),
            (long_name(), noise((1 << 20) + 1, 4)),
        ] {
            let p = src.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, data).unwrap();
        }
    }

    fn opts(src: &Path, dest: &Path, previous: Option<&Path>) -> BuildOptions {
        BuildOptions {
            source_dir: src.to_path_buf(),
            dest: dest.to_path_buf(),
            exclude: vec![],
            level: 3,
            threads: 2,
            info: crate::archive::ArchiveInfo {
                format: FORMAT_VERSION,
                tool: "nuwax-cli test".into(),
                backup_type: "Manual".into(),
                service_version: "1".into(),
                // Later than every ctime here: nothing is racy.
                created_at: "2099-01-01T00:00:00Z".into(),
                compose_project: "p".into(),
                data_paths: vec![],
                excluded: vec![],
                images: vec![],
                top_level_bytes: Default::default(),
                dumps: Vec::new(),
                hot: false,
            },
            dump_files: Vec::new(),
            encryption: None,
            previous: previous.map(Path::to_path_buf),
        }
    }

    fn run(o: &BuildOptions) -> (BuildReport, Vec<String>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let r = build(o, &Progress::new(tx), &CancelFlag::default()).unwrap();
        let mut notices = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            if let ProgressEvent::Notice(n) = ev {
                notices.push(n);
            }
        }
        (r, notices)
    }

    fn spans_of(archive: &Path) -> Vec<Span> {
        read_manifest(&File::open(archive).unwrap()).unwrap().spans
    }

    struct Setup {
        _tmp: tempfile::TempDir,
        dir: PathBuf,
        src: PathBuf,
        first: PathBuf,
    }

    /// A first archive of [`tree`], then changes: `data/b.ibd` rewritten with its size and
    /// mtime kept (only ctime tells), a new big file, a small file changed.
    fn setup() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let src = dir.join("src");
        tree(&src);
        let first = dir.join("first.tar.gz");
        let (r, _) = run(&opts(&src, &first, None));
        assert_eq!(r.reused_bytes, 0);
        assert_eq!(spans_of(&first).len(), 4, "one span per big file");
        let b = src.join("data/b.ibd");
        let mtime = filetime::FileTime::from_last_modification_time(&fs::metadata(&b).unwrap());
        let mut data = fs::read(&b).unwrap();
        data[100] ^= 1;
        fs::write(&b, &data).unwrap();
        filetime::set_file_mtime(&b, mtime).unwrap();
        fs::write(src.join("upload/new.bin"), noise(2 << 20, 9)).unwrap();
        fs::write(src.join("app/VERSION"), b"2.0\n").unwrap();
        Setup {
            _tmp: tmp,
            dir,
            src,
            first,
        }
    }

    #[test]
    fn an_incremental_archive_is_byte_for_byte_the_full_one() {
        let s = setup();
        let inc = s.dir.join("inc.tar.gz");
        let (ri, notices) = run(&opts(&s.src, &inc, Some(&s.first)));
        assert!(notices.is_empty(), "{notices:?}");
        // a.ibd (longer than ONE_THREAD_SPAN: read back on two threads), upload/exact (one
        // thread) and the long-named file are copied; b.ibd (same size and mtime, other
        // ctime) and the new file are read, b.ibd's one data-only member (its change is in
        // the first) copied.
        let copied = (5 << 20) + BIG_FILE + (1 << 20) + 1;
        assert_eq!(ri.reused_bytes, copied + (1 << 20));
        let full = s.dir.join("full.tar.gz");
        let (rf, _) = run(&opts(&s.src, &full, None));
        assert_eq!(rf.reused_bytes, 0);
        assert_eq!(ri.sha256, rf.sha256);
        assert!(fs::read(&inc).unwrap() == fs::read(&full).unwrap());
        // The members of a file of at least ALIGN_FROM bytes start on a block boundary (a
        // copy on XFS or btrfs can clone them): a.ibd, b.ibd, the long-named file and
        // upload/new.bin, not upload/exact (64 KiB).
        let m = read_manifest(&File::open(&inc).unwrap()).unwrap();
        assert_eq!(
            m.layout.map(|l| (l.align, l.align_from)),
            Some((ALIGN, ALIGN_FROM))
        );
        let sizes: HashMap<u64, u64> = m.big.iter().map(|(n, e)| (*n, e.size)).collect();
        let aligned: Vec<u64> = m
            .spans
            .iter()
            .filter(|sp| sizes[&sp.entry] >= ALIGN_FROM)
            .map(|sp| sp.offset % ALIGN)
            .collect();
        assert_eq!(aligned, [0, 0, 0, 0]);
        // gzip reads the padding members as empty ones.
        let st = std::process::Command::new("gzip")
            .arg("-t")
            .arg(&inc)
            .status()
            .unwrap();
        assert!(st.success(), "gzip -t");
        verifies(&inc, &ri.sha256);
        // GNU tar reads it alone and gives the tree.
        let out = s.dir.join("out");
        fs::create_dir(&out).unwrap();
        let st = std::process::Command::new("tar")
            .arg("-xzf")
            .arg(&inc)
            .arg("-C")
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success());
        for rel in [
            "data/a.ibd",
            "data/b.ibd",
            "upload/new.bin",
            "app/VERSION",
            &long_name(),
        ] {
            assert!(
                fs::read(out.join(rel)).unwrap() == fs::read(s.src.join(rel)).unwrap(),
                "{rel}"
            );
        }
        // A chain: the incremental one serves the next.
        let next = s.dir.join("next.tar.gz");
        let (rn, _) = run(&opts(&s.src, &next, Some(&inc)));
        assert_eq!(rn.reused_bytes, copied + ((5 << 20) / 2 + 7) + (2 << 20));
        assert_eq!(rn.sha256, rf.sha256);
    }

    /// `verify` finds `archive` whole, with checksum `sha256`.
    fn verifies(archive: &Path, sha256: &str) {
        let v = verify(
            archive,
            Some(sha256),
            None,
            2,
            &Progress::none(),
            &CancelFlag::default(),
        )
        .unwrap();
        assert!(v.is_ok(), "{:?}", v.problems);
    }

    /// The data-only members recorded for `rel` in `archive`.
    fn chunks_of(archive: &Path, rel: &str) -> Vec<Chunk> {
        let m = read_manifest(&File::open(archive).unwrap()).unwrap();
        let (n, _) = m
            .big
            .iter()
            .find(|(_, e)| e.path.as_deref() == Some(rel))
            .unwrap();
        m.spans
            .into_iter()
            .find(|sp| sp.entry == *n)
            .unwrap()
            .chunks
    }

    /// data/a.ibd (5 MiB) with 1000 bytes rewritten at 2.5 MiB and 300 000 bytes appended.
    fn change_inside(src: &Path) {
        let a = src.join("data/a.ibd");
        let mut data = fs::read(&a).unwrap();
        let mid = data.len() / 2;
        data[mid..mid + 1000].iter_mut().for_each(|b| *b ^= 0xff);
        data.extend_from_slice(&noise(300_000, 5));
        fs::write(&a, &data).unwrap();
    }

    #[test]
    fn a_changed_big_file_copies_the_members_of_its_unchanged_data() {
        let s = setup();
        let mib = 1u64 << 20;
        // a.ibd's header is 512 bytes: its data-only members hold the MiB from 1, 2, 3 and
        // 4 MiB less 512 bytes.
        let before: Vec<u64> = chunks_of(&s.first, "data/a.ibd")
            .iter()
            .map(|c| c.at)
            .collect();
        assert_eq!(
            before,
            [mib - 512, 2 * mib - 512, 3 * mib - 512, 4 * mib - 512]
        );
        change_inside(&s.src);
        let inc = s.dir.join("inc.tar.gz");
        let (ri, notices) = run(&opts(&s.src, &inc, Some(&s.first)));
        assert!(notices.is_empty(), "{notices:?}");
        // a.ibd: three members copied, not the one with the change; b.ibd: its one; the
        // unchanged upload/exact and long-named file whole.
        assert_eq!(
            ri.reused_bytes,
            3 * mib + mib + BIG_FILE + mib + 1,
            "copied file bytes"
        );
        let full = s.dir.join("full.tar.gz");
        let (rf, _) = run(&opts(&s.src, &full, None));
        assert_eq!(ri.sha256, rf.sha256);
        assert!(fs::read(&inc).unwrap() == fs::read(&full).unwrap());
        let after: Vec<u64> = chunks_of(&inc, "data/a.ibd").iter().map(|c| c.at).collect();
        assert_eq!(after, [1, 2, 3, 4].map(|k| k * mib - 512));
        verifies(&inc, &ri.sha256);
    }

    #[test]
    fn a_damaged_member_of_a_changed_file_is_never_copied() {
        let s = setup();
        // The member of a.ibd's unchanged data from 3 MiB on, which would be copied.
        let c = chunks_of(&s.first, "data/a.ibd")
            .into_iter()
            .find(|c| c.at == (3 << 20) - 512)
            .unwrap();
        change_inside(&s.src);
        redone_after_damage_at(&s, c.offset + c.len / 2);
    }

    /// Flips a bit of the byte at `at` of `archive`.
    fn flip_bit(archive: &Path, at: u64) {
        let mut bytes = fs::read(archive).unwrap();
        bytes[at as usize] ^= 0x40;
        fs::write(archive, &bytes).unwrap();
    }

    /// Flips a bit at `at` of the first archive: the incremental build sees its copy does
    /// not match, says so and is redone from live data, as a full build.
    fn redone_after_damage_at(s: &Setup, at: u64) {
        flip_bit(&s.first, at);
        let inc = s.dir.join("inc.tar.gz");
        let (ri, notices) = run(&opts(&s.src, &inc, Some(&s.first)));
        assert!(
            notices
                .iter()
                .any(|n| n.contains("do not match their recorded checksum") && n.contains("again")),
            "{notices:?}"
        );
        assert_eq!(ri.reused_bytes, 0, "the build was redone from live data");
        let full = s.dir.join("full.tar.gz");
        let (rf, _) = run(&opts(&s.src, &full, None));
        assert_eq!(ri.sha256, rf.sha256);
    }

    /// After the live tree was read the services may run again: what they write then never
    /// enters the archive, which is byte for byte the full backup of the tree as it was read.
    #[test]
    fn what_changes_after_the_live_read_never_enters_the_archive() {
        let s = setup();
        let full = s.dir.join("full.tar.gz");
        let (rf, _) = run(&opts(&s.src, &full, None));
        let inc = s.dir.join("inc.tar.gz");
        let (p, c) = (Progress::none(), CancelFlag::default());
        let o = opts(&s.src, &inc, Some(&s.first));
        let unfinished = crate::archive::build_until_live_read(&o, None, &p, &c).unwrap();
        assert!(
            unfinished.has_copies(),
            "data/a.ibd is unchanged: copied last"
        );
        assert!(!inc.exists());
        // The services write again: an unchanged big file and a small file are rewritten.
        fs::write(s.src.join("data/a.ibd"), noise(5 << 20, 77)).unwrap();
        fs::write(s.src.join("app/conf.txt"), b"written after the live read").unwrap();
        let ri = unfinished.finish(false, &p, &c).unwrap();
        assert!(ri.reused_bytes >= 5 << 20, "{ri:?}");
        assert_eq!(ri.sha256, rf.sha256);
        assert!(fs::read(&inc).unwrap() == fs::read(&full).unwrap());
        verifies(&inc, &ri.sha256);
    }

    /// Damage found once the services may run again cannot be redone from the live tree:
    /// the build fails naming the previous archive and leaves no file behind; an unfinished
    /// build that is dropped leaves none either.
    #[test]
    fn damage_found_after_the_live_read_fails_and_leaves_nothing() {
        let s = setup();
        // data/a.ibd's members (the first big file, unchanged): copied after the live read.
        let span = spans_of(&s.first)
            .into_iter()
            .find(|sp| sp.len > 100_000)
            .unwrap();
        flip_bit(&s.first, span.offset + span.len / 2);
        let inc = s.dir.join("inc.tar.gz");
        let partial = crate::fsutil::partial_path(&inc);
        let (p, c) = (Progress::none(), CancelFlag::default());
        let o = opts(&s.src, &inc, Some(&s.first));
        let unfinished = crate::archive::build_until_live_read(&o, None, &p, &c).unwrap();
        assert!(partial.exists());
        let err = unfinished.finish(false, &p, &c).unwrap_err();
        assert!(
            matches!(&err, crate::error::Error::Corrupt { path, .. } if path == &s.first),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("do not match their recorded checksum"),
            "{err}"
        );
        assert!(!inc.exists() && !partial.exists());
        drop(crate::archive::build_until_live_read(&o, None, &p, &c).unwrap());
        assert!(!inc.exists() && !partial.exists());
        // With the services still stopped the same damage is redone from the live tree, in
        // a new `archiving` phase that ends with the whole tree's bytes.
        let unfinished = crate::archive::build_until_live_read(&o, None, &p, &c).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let ri = unfinished.finish(true, &Progress::new(tx), &c).unwrap();
        assert_eq!(ri.reused_bytes, 0);
        verifies(&inc, &ri.sha256);
        let mut last_phase = None;
        let mut last_bytes = 0;
        while let Ok(ev) = rx.try_recv() {
            match ev {
                ProgressEvent::Phase { phase, .. } => (last_phase, last_bytes) = (Some(phase), 0),
                ProgressEvent::Advance { bytes, .. } => {
                    assert!(bytes >= last_bytes, "bytes went back in {last_phase:?}");
                    last_bytes = bytes;
                }
                _ => {}
            }
        }
        assert_eq!(last_phase, Some(crate::progress::Phase::Archiving));
        assert_eq!(last_bytes, ri.source_bytes);
    }

    #[test]
    fn a_damaged_source_member_is_never_copied() {
        let s = setup();
        let span = spans_of(&s.first)
            .into_iter()
            .find(|sp| sp.len > 100_000)
            .unwrap();
        redone_after_damage_at(&s, span.offset + span.len / 2);
    }

    #[test]
    fn a_source_that_cannot_serve_gives_a_full_read_with_a_notice() {
        let s = setup();
        let cases: Vec<(BuildOptions, &str)> = vec![
            (
                BuildOptions {
                    level: 4,
                    ..opts(&s.src, &s.dir.join("l.tar.gz"), Some(&s.first))
                },
                "another member layout or compression level",
            ),
            (
                opts(
                    &s.src,
                    &s.dir.join("m.tar.gz"),
                    Some(&s.dir.join("gone.tar.gz")),
                ),
                "cannot open",
            ),
            {
                let mut o = opts(&s.src, &s.dir.join("t.tar.gz"), Some(&s.first));
                o.info.tool = "nuwax-cli other".into();
                (o, "not by this nuwax-cli other")
            },
            {
                let enc = s.dir.join("first.tar.gz.age");
                fs::copy(&s.first, &enc).unwrap();
                (
                    opts(&s.src, &s.dir.join("e.tar.gz"), Some(&enc)),
                    "not a plain .tar.gz",
                )
            },
        ];
        for (o, want) in cases {
            let (r, notices) = run(&o);
            assert_eq!(r.reused_bytes, 0, "{want}");
            assert!(
                notices
                    .iter()
                    .any(|n| n.starts_with("reading every file") && n.contains(want)),
                "{want}: {notices:?}"
            );
        }
        // An archive of an earlier version (no layout, manifest not in a member of its own).
        let old = s.dir.join("old.tar.gz");
        let tar_bytes = {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_size(3);
            h.set_cksum();
            b.append_data(&mut h, MANIFEST_PATH, &b"{}\n"[..]).unwrap();
            b.into_inner().unwrap()
        };
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar_bytes).unwrap();
        fs::write(&old, gz.finish().unwrap()).unwrap();
        let (r, notices) = run(&opts(&s.src, &s.dir.join("o.tar.gz"), Some(&old)));
        assert_eq!(r.reused_bytes, 0);
        assert!(
            notices.iter().any(|n| n.contains("member index")),
            "{notices:?}"
        );
    }
}
