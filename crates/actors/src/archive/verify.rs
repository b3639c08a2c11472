//! Checking an archive without extracting it, and reading its `info.json`.
//!
//! Design note: verify is one pass over the archive. The archive's SHA-256 is computed on a
//! helper thread from a second handle of the same file (the parallel decompressor owns its
//! `File`, so the raw bytes cannot be teed); the main thread decompresses, parses the tar
//! stream, applies the same entry rules as extract (`check.rs`), hashes every file's content
//! and finally compares everything with the manifest. Findings about the content are values
//! in [`VerifyReport::problems`]; `Err` is reserved for I/O trouble and interruption.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::check::{
    CopyError, EntryDigest, Meta, ProgressMap, Refusal, Tracker, check_trailing, compare_manifest,
    copy_entry_data, parse_entry, stream_error, top_level,
};
use super::format::INFO_PATH;
use super::threads::resolve_threads;
use super::{ArchiveInfo, CancelFlag, EntryKind, META_DIR, Manifest, ManifestEntry, VerifyReport};
use crate::encryption::DecryptKey;
use crate::error::{Error, IoContext, Result};
use crate::progress::{Phase, Progress};

const BUF: usize = 1 << 20;

/// Verifies the archive at `path`: gzip integrity, tar structure, entry safety, metadata
/// entries, every entry against the manifest (file contents re-hashed), nothing trailing, and
/// the archive's SHA-256 against `expected_sha256` when given.
///
/// An encrypted archive is decrypted with `key`; without one only its checksum is checked
/// (the report says `content_checked: false`).
pub fn verify(
    path: &Path,
    expected_sha256: Option<&str>,
    key: Option<&DecryptKey>,
    threads: usize,
    progress: &Progress,
    cancel: &CancelFlag,
) -> Result<VerifyReport> {
    verify_with(
        path,
        expected_sha256,
        Expect::Embedded,
        key,
        threads,
        progress,
        cancel,
    )
}

/// [`verify`] of an archive without metadata entries (made by the original nuwax-cli)
/// against `manifest`, the one computed when it was adopted: every entry must match it, and
/// no entry may use the reserved `.nuwax-` names. The report's `info` is the manifest's.
pub fn verify_against(
    path: &Path,
    expected_sha256: Option<&str>,
    manifest: &Manifest,
    threads: usize,
    progress: &Progress,
    cancel: &CancelFlag,
) -> Result<VerifyReport> {
    verify_with(
        path,
        expected_sha256,
        Expect::Given(manifest),
        None,
        threads,
        progress,
        cancel,
    )
}

/// What the entries of an archive are compared with.
#[derive(Clone, Copy)]
pub(super) enum Expect<'a> {
    /// The archive's own metadata entries: `info.json` first, `manifest.json` last. The
    /// entries read are compared with the manifest through fingerprints
    /// (`check/digest.rs`), keeping none of them; when the fingerprints differ the scan is
    /// not settled and [`Expect::EmbeddedExact`] finds the differences.
    Embedded,
    /// [`Expect::Embedded`] with every entry kept until the manifest and compared with it
    /// one by one (reading the archive a second time, only for one that differs).
    EmbeddedExact,
    /// A manifest kept outside the archive (a legacy backup's, from the catalog); the
    /// archive has no metadata entries.
    Given(&'a Manifest),
    /// Nothing: the entries read are the manifest to be (adopting a legacy archive).
    Nothing,
}

/// Opens the archive at `path` for reading; anything but a regular file is refused.
pub(super) fn open_archive_file(path: &Path) -> Result<(File, std::fs::Metadata)> {
    let file = File::open(path).ctx("cannot open archive", path)?;
    let meta = file.metadata().ctx("cannot stat archive", path)?;
    if !meta.is_file() {
        return Err(Error::Usage(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok((file, meta))
}

fn verify_with(
    path: &Path,
    expected_sha256: Option<&str>,
    expect: Expect<'_>,
    key: Option<&DecryptKey>,
    threads: usize,
    progress: &Progress,
    cancel: &CancelFlag,
) -> Result<VerifyReport> {
    let (file, meta) = open_archive_file(path)?;
    let hash_file = File::open(path).ctx("cannot open archive", path)?;
    let hash_meta = hash_file.metadata().ctx("cannot stat archive", path)?;
    if (hash_meta.dev(), hash_meta.ino()) != (meta.dev(), meta.ino()) {
        return Err(Error::Usage(format!(
            "{} was replaced while it was opened",
            path.display()
        )));
    }
    let size = meta.len();
    progress.phase(Phase::Verifying, Some(size), None);

    let hash_cancel = cancel.clone();
    let hasher = std::thread::Builder::new()
        .name("nuwax-verify-sha".into())
        .spawn(move || hash_file_contents(hash_file, &hash_cancel))
        .ctx("cannot start a thread for", path)?;

    let mut report = VerifyReport::started(size);
    crate::faults::point("verify.before_scan");
    let mut scanned = scan(
        file,
        path,
        key,
        threads,
        expect,
        progress,
        cancel,
        &mut report,
    );
    if let (Ok(false), Expect::Embedded) = (&scanned, expect) {
        // The archive differs from its manifest somewhere (or an entry was refused): the
        // exact comparison, reading it again, says where.
        report.entries = 0;
        report.files_checked = 0;
        report.problems.clear();
        scanned = File::open(path)
            .ctx("cannot open archive", path)
            .and_then(|file| {
                scan(
                    file,
                    path,
                    key,
                    threads,
                    Expect::EmbeddedExact,
                    progress,
                    cancel,
                    &mut report,
                )
            });
    }
    let hashed = hasher
        .join()
        .map_err(|_| Error::Internal("the hashing thread panicked".into()))?;
    // A cancelled verification has no verdict: whatever the scan saw after the flag was set
    // (a read cut short on purpose) is not a finding about the archive.
    cancel.check()?;
    scanned?;
    let (sha, hashed_len) = match hashed.ctx("cannot read archive", path)? {
        Some(h) => h,
        None => return Err(Error::Interrupted),
    };
    if hashed_len != size {
        report.problems.push(format!(
            "the file changed size during verification ({size} -> {hashed_len} bytes)"
        ));
    }
    report.checksum_matches = expected_sha256.map(|e| e.trim().eq_ignore_ascii_case(&sha));
    report.sha256 = sha;
    progress.finish_phase(size, report.entries);
    Ok(report)
}

/// SHA-256 (lowercase hex) of the archive file at `path`, reported as the `Verifying` phase.
pub fn sha256_file(path: &Path, progress: &Progress, cancel: &CancelFlag) -> Result<String> {
    let file = File::open(path).ctx("cannot open archive", path)?;
    let total = file.metadata().ctx("cannot stat archive", path)?.len();
    progress.phase(Phase::Verifying, Some(total), None);
    let (sha, len) = hash_file_contents(file, cancel)
        .ctx("cannot read archive", path)?
        .ok_or(Error::Interrupted)?;
    progress.finish_phase(len, 0);
    Ok(sha)
}

/// SHA-256 of the whole file; `None` when cancelled.
fn hash_file_contents(mut file: File, cancel: &CancelFlag) -> io::Result<Option<(String, u64)>> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUF];
    let mut len = 0u64;
    loop {
        if cancel.is_cancelled() {
            return Ok(None);
        }
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok(Some((hex::encode(hasher.finalize()), len)))
}

/// The content checks of [`scan_stream`] over the archive file. Problems go into `report`;
/// `Err` only for I/O errors and cancel. `Ok(false)`: not settled (see [`Scanned`]).
#[allow(clippy::too_many_arguments)]
fn scan(
    file: File,
    path: &Path,
    key: Option<&DecryptKey>,
    threads: usize,
    expect: Expect<'_>,
    progress: &Progress,
    cancel: &CancelFlag,
    report: &mut VerifyReport,
) -> Result<bool> {
    let index = file.try_clone().ctx("cannot open archive", path)?;
    let size = report.size;
    if key.is_none() && super::crypt::is_age_file(&file).ctx("cannot read archive", path)? {
        // Encrypted and no key: the checksum is all that can be checked.
        report.content_checked = false;
        return Ok(true);
    }
    let mut gzip_error = None;
    let opened = super::crypt::open_plain(path, file, key, resolve_threads(threads), |e| {
        gzip_error = Some(e);
        Error::Internal(String::new())
    });
    let reader = match (opened, gzip_error) {
        (Ok(r), _) => r,
        (Err(_), Some(e)) => {
            return note(stream_error(e, "not a valid gzip file"), path, report).map(|()| true);
        }
        (Err(e @ Error::Decrypt { .. }), None) => {
            report.problems.push(e.to_string());
            return Ok(true);
        }
        (Err(e), None) => return Err(e),
    };
    let (position, reader) = ProgressMap::new(&index, size, reader);
    drop(index);
    scan_stream(
        reader,
        &|| position.position(),
        path,
        expect,
        progress,
        cancel,
        report,
    )
    .map(|s| s.settled)
}

/// Records a finding; an OS-level read error aborts the scan instead.
fn note(r: Refusal, path: &Path, report: &mut VerifyReport) -> Result<()> {
    match r {
        Refusal::Io(e) => Err(Error::io("cannot read archive", path, e)),
        other => {
            report.problems.push(other.describe());
            Ok(())
        }
    }
}

/// What [`scan_stream`] found besides the report's problems.
pub(super) struct Scanned {
    /// The entries read (with checksums), the manifest entries of the archive as it is;
    /// empty for [`Expect::Embedded`], which only fingerprints them.
    pub entries: Vec<ManifestEntry>,
    /// False when, for [`Expect::Embedded`], the fingerprints differ or an entry was
    /// refused: the findings are then those of an [`Expect::EmbeddedExact`] scan.
    pub settled: bool,
}

/// The content checks over a decompressed stream: every entry through the entry rules,
/// file contents hashed, the tail checked, and the entries compared with what `expect`
/// says. Problems go into `report`. `position` says where in the archive file the reading
/// is, for progress.
pub(super) fn scan_stream(
    reader: impl Read,
    position: &dyn Fn() -> u64,
    path: &Path,
    expect: Expect<'_>,
    progress: &Progress,
    cancel: &CancelFlag,
    report: &mut VerifyReport,
) -> Result<Scanned> {
    let fingerprint = matches!(expect, Expect::Embedded);
    let done = |entries: Vec<ManifestEntry>| Scanned {
        entries,
        settled: true,
    };
    let note = |r: Refusal, report: &mut VerifyReport| note(r, path, report);
    let reader = CancelRead {
        inner: reader,
        cancel: cancel.clone(),
    };
    let mut archive = tar::Archive::new(reader);
    let mut meta = Meta::new();
    let mut tracker = Tracker::default();
    let mut observed = Vec::new();
    let mut digest = EntryDigest::default();
    let mut buf = vec![0u8; BUF];
    let mut broken = false;
    let entries = match archive.entries() {
        Ok(e) => e,
        Err(e) => {
            note(stream_error(e, "reading the tar stream"), report)?;
            return Ok(done(Vec::new()));
        }
    };
    for entry in entries {
        cancel.check()?;
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => {
                note(stream_error(e, "reading the tar stream"), report)?;
                broken = true;
                break;
            }
        };
        // Refusals of one entry are reported and the scan goes on with the next entry,
        // unless the stream itself is damaged.
        let parsed = match parse_entry(&entry) {
            Ok(p) => p,
            Err(r) => {
                note(r, report)?;
                continue;
            }
        };
        // Without metadata entries (a legacy archive) the tracker refuses the reserved
        // names, `.nuwax-backup/` included.
        let metadata = match expect {
            Expect::Embedded => meta.accept_digest(&parsed, &mut entry),
            Expect::EmbeddedExact => meta.accept(&parsed, &mut entry),
            Expect::Given(_) | Expect::Nothing => Ok(false),
        };
        match metadata {
            Ok(true) => continue,
            Ok(false) => {}
            Err(r) => {
                let usable = r.stream_usable();
                note(r, report)?;
                if usable {
                    continue;
                }
                broken = true;
                break;
            }
        }
        if let Err(r) = tracker.admit(&parsed) {
            note(r, report)?;
        }
        report.entries += 1;
        let entries_so_far = report.entries;
        let slot = fingerprint.then(|| digest.entry(&parsed.fields()));
        let sha = if parsed.kind == EntryKind::File {
            match copy_entry_data(
                &mut entry,
                None,
                parsed.size,
                &mut buf,
                &parsed.path,
                &mut |_| progress.advance(position(), entries_so_far, None),
            ) {
                Ok(sha) => {
                    report.files_checked += 1;
                    Some(sha)
                }
                Err(CopyError::Read(r)) => {
                    note(r, report)?;
                    broken = true;
                    break;
                }
                Err(CopyError::Write(e)) => return Err(Error::Internal(e.to_string())),
            }
        } else {
            None
        };
        match slot {
            Some(slot) => {
                if let Some(sha) = &sha {
                    let mut raw = [0u8; 32];
                    hex::decode_to_slice(sha, &mut raw)
                        .map_err(|e| Error::Internal(format!("bad checksum {sha}: {e}")))?;
                    digest.sha(slot, &raw);
                }
            }
            None => observed.push(parsed.to_manifest_entry(sha)),
        }
        progress.advance(position(), report.entries, None);
    }
    report.info = match expect {
        Expect::Embedded | Expect::EmbeddedExact => meta.info.clone(),
        Expect::Given(m) => Some(m.info.clone()),
        Expect::Nothing => None,
    };
    if broken {
        report.problems.push(format!(
            "the archive could not be read to its end; {} entries were checked before that",
            report.entries
        ));
        return Ok(done(observed));
    }
    let mut rest = archive.into_inner();
    if let Err(r) = check_trailing(&mut rest) {
        note(r, report)?;
    }
    let clean = report.problems.is_empty();
    match expect {
        Expect::Embedded => match meta.finish() {
            Ok(_) => {
                let same = meta.digest.as_ref().is_some_and(|m| m.matches(&digest));
                return Ok(Scanned {
                    entries: observed,
                    settled: clean && same,
                });
            }
            Err(r) => note(r, report)?,
        },
        Expect::EmbeddedExact => match meta.finish() {
            Ok((_, manifest)) => report
                .problems
                .extend(compare_manifest(manifest, &observed)),
            Err(r) => note(r, report)?,
        },
        Expect::Given(manifest) => report
            .problems
            .extend(compare_manifest(manifest, &observed)),
        Expect::Nothing => {}
    }
    Ok(done(observed))
}

/// The exact comparison of the archive at `path` with its manifest (`expect`: its own,
/// [`Expect::EmbeddedExact`], or a given one; every entry kept and compared one by one), for
/// an extraction whose fingerprints differed: the findings, which may be none (a manifest in
/// another order or spelling).
pub(super) fn manifest_problems(
    path: &Path,
    key: Option<&DecryptKey>,
    expect: Expect<'_>,
    threads: usize,
    cancel: &CancelFlag,
) -> Result<Vec<String>> {
    let file = File::open(path).ctx("cannot open archive", path)?;
    let size = file.metadata().ctx("cannot stat archive", path)?.len();
    let mut report = VerifyReport::started(size);
    scan(
        file,
        path,
        key,
        threads,
        expect,
        &Progress::none(),
        cancel,
        &mut report,
    )?;
    cancel.check()?;
    Ok(report.problems)
}

/// Reads the archive's `info.json` (its first entry after the `.nuwax-backup/` directory),
/// decompressing nothing beyond it.
#[allow(dead_code)] // the archive tests read plain archives' info with it
pub fn read_info(path: &Path) -> Result<ArchiveInfo> {
    read_info_with(path, None)
}

/// [`read_info`] of an archive that may be encrypted, with its key.
pub fn read_info_with(path: &Path, key: Option<&DecryptKey>) -> Result<ArchiveInfo> {
    probe_info_with(path, key)?.ok_or_else(|| Error::Corrupt {
        path: path.to_path_buf(),
        detail: format!("{INFO_PATH} is missing (not a nuwax-cli archive?)"),
    })
}

/// [`read_info`], or `None` when the archive's first entry is content: an archive without
/// metadata, such as the original nuwax-cli made. A damaged head is an error as for
/// [`read_info`].
pub fn probe_info(path: &Path) -> Result<Option<ArchiveInfo>> {
    probe_info_with(path, None)
}

/// [`probe_info`] of an archive that may be encrypted, with its key.
pub fn probe_info_with(path: &Path, key: Option<&DecryptKey>) -> Result<Option<ArchiveInfo>> {
    let file = File::open(path).ctx("cannot open archive", path)?;
    // The verifying reader: a member's CRC is checked before any of its bytes are used, and a
    // truncated file says so; one thread is plenty for the first entry or two.
    let gz = super::crypt::open_plain(path, file, key, 1, |e| {
        Error::io("cannot read archive", path, e)
    })?;
    let mut archive = tar::Archive::new(gz);
    let entries = archive
        .entries()
        .map_err(|e| stream_error(e, "reading the tar stream").into_error(path))?;
    let mut meta = Meta::new();
    for entry in entries.take(2) {
        let mut entry =
            entry.map_err(|e| stream_error(e, "reading the tar stream").into_error(path))?;
        let parsed = parse_entry(&entry).map_err(|r| r.into_error(path))?;
        if top_level(&parsed.path) != META_DIR.as_bytes() {
            return Ok(None);
        }
        meta.accept(&parsed, &mut entry)
            .map_err(|r| r.into_error(path))?;
        if let Some(info) = meta.info.take() {
            return Ok(Some(info));
        }
    }
    Err(Error::Corrupt {
        path: path.to_path_buf(),
        detail: format!("{INFO_PATH} is missing (not a nuwax-cli archive?)"),
    })
}

/// Copies the dump of `service` out of the archive into `out` (a new file), checking it
/// against the size and checksum in `info.json`; reads no further than the dump (dumps come
/// right after `info.json`). `Ok(None)` when the archive holds no dump of that service.
pub fn read_dump(
    path: &Path,
    service: &crate::dumps::ServiceName,
    out: &Path,
) -> Result<Option<super::DumpRecord>> {
    let file = File::open(path).ctx("cannot open archive", path)?;
    let gz = super::pgzip::open_reader(file, 1).ctx("cannot read archive", path)?;
    let mut archive = tar::Archive::new(gz);
    let entries = archive
        .entries()
        .map_err(|e| stream_error(e, "reading the tar stream").into_error(path))?;
    let mut meta = Meta::new();
    let wanted = crate::dumps::archive_path(service);
    for entry in entries {
        let mut entry =
            entry.map_err(|e| stream_error(e, "reading the tar stream").into_error(path))?;
        let parsed = parse_entry(&entry).map_err(|r| r.into_error(path))?;
        if top_level(&parsed.path) != META_DIR.as_bytes() {
            break;
        }
        if parsed.path == wanted.as_bytes() {
            let mut sink = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(out)
                .ctx("cannot create dump file", out)?;
            let record =
                super::check::check_dump(meta.info.as_ref(), &parsed, &mut entry, &mut sink)
                    .map_err(|r| r.into_error(path))?;
            sink.sync_all().ctx("cannot sync dump file", out)?;
            return Ok(Some(record));
        }
        meta.accept(&parsed, &mut entry)
            .map_err(|r| r.into_error(path))?;
        if meta
            .info
            .as_ref()
            .is_some_and(|i| i.dumps.iter().all(|d| d.service != *service))
        {
            return Ok(None);
        }
    }
    Ok(None)
}

/// Fails reads once cancelled, so a Ctrl-C in the middle of a large entry ends the scan at
/// once (the caller then reports [`Error::Interrupted`], not the cut-short read).
struct CancelRead<R> {
    inner: R,
    cancel: CancelFlag,
}

impl<R: Read> Read for CancelRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(io::Error::other("interrupted"));
        }
        self.inner.read(buf)
    }
}
