//! Archives made by the original nuwax-cli ("legacy" backups).
//!
//! Design note: the original tool wrote `backup_{manual|pre-upgrade}_v{VERSION}_{YYYY-MM-DD_HH-MM-SS}.tar.gz`
//! (UTC time; the version inserted as given), one ordinary gzip stream of a tar whose entries
//! are `data/...` and `app/...` relative to the compose dir, and no `.nuwax-backup/` metadata.
//! So everything this tool keeps inside its own archives comes from elsewhere: type, version
//! and time from the file name ([`LegacyName`]), the manifest from reading the archive when it
//! is adopted ([`adopt_legacy`]), kept in the catalog. That read is the only one: the raw bytes
//! are hashed (the file's SHA-256) on their way into the decompressor while every entry goes
//! through the same rules as any archive's (`verify`'s scan: clean paths, no duplicates, no
//! links escaping, only directories, files, symlinks and hard links) and has its content
//! hashed. An archive with any finding is not adopted.
//!
//! Later, `verify` and a restore check the archive against that manifest instead of one of
//! its own, with the same code. A restore takes only [`LEGACY_ITEMS`] (what the original tool
//! archived and restored); the compose file, `.env` and `config/` are never in such an
//! archive and are never touched.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, NaiveDateTime, Utc};
use sha2::{Digest, Sha256};

use super::verify::{Expect, scan_stream};
use super::{ArchiveInfo, CancelFlag, EntryKind, Manifest, VerifyReport};
use crate::error::{IoContext, Result};
use crate::progress::{Phase, Progress};
use crate::relpath::TopName;

/// The top-level items a restore of a legacy backup may replace (those it holds): the
/// original tool archived `data/` and `app/` and restored exactly those.
pub const LEGACY_ITEMS: [&str; 2] = ["app", "data"];

/// The data scope of a legacy backup, as the original tool's `rollback-data-only` meant it.
const LEGACY_DATA: &str = "data";

/// What the name of an archive made by the original nuwax-cli says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyName {
    /// `Manual` or `PreUpgrade`.
    pub backup_type: &'static str,
    pub service_version: String,
    /// UTC, to the second.
    pub created_at: DateTime<Utc>,
}

impl LegacyName {
    /// Parses `backup_{manual|pre-upgrade}_v{VERSION}_{YYYY-MM-DD_HH-MM-SS}.tar.gz`; `None`
    /// for any other name.
    pub fn parse(name: &OsStr) -> Option<LegacyName> {
        let name = std::str::from_utf8(name.as_bytes()).ok()?;
        let rest = name.strip_prefix("backup_")?.strip_suffix(".tar.gz")?;
        let (backup_type, rest) = if let Some(r) = rest.strip_prefix("manual_v") {
            ("Manual", r)
        } else if let Some(r) = rest.strip_prefix("pre-upgrade_v") {
            ("PreUpgrade", r)
        } else {
            return None;
        };
        // The time is the last 19 characters, after a `_`; the version may hold `_` itself.
        const STAMP: usize = "YYYY-MM-DD_HH-MM-SS".len();
        let split = rest.len().checked_sub(STAMP + 1)?;
        if !rest.is_char_boundary(split) {
            return None;
        }
        let (version, stamp) = rest.split_at(split);
        let stamp = stamp.strip_prefix('_')?;
        if version.is_empty() || version.chars().any(char::is_control) {
            return None;
        }
        let created_at = NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d_%H-%M-%S")
            .ok()?
            .and_utc();
        Some(LegacyName {
            backup_type,
            service_version: version.to_owned(),
            created_at,
        })
    }

    /// The metadata this tool would have written: the data scope is `data`, nothing was
    /// excluded, no images are known. `format` 0 marks it as made up at adoption.
    pub fn info(&self) -> ArchiveInfo {
        ArchiveInfo {
            format: 0,
            tool: "nuwax-cli (original)".into(),
            backup_type: self.backup_type.into(),
            service_version: self.service_version.clone(),
            created_at: self
                .created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            compose_project: String::new(),
            data_paths: vec![TopName::parse(LEGACY_DATA).expect("a clean name")],
            excluded: Vec::new(),
            images: Vec::new(),
            top_level_bytes: Default::default(),
            dumps: Vec::new(),
            hot: false,
        }
    }
}

/// The result of reading a legacy archive once ([`adopt_legacy`]).
#[derive(Debug, Clone)]
pub struct LegacyAdoption {
    /// Archive size in bytes.
    pub size: u64,
    /// SHA-256 of the archive file, lowercase hex.
    pub sha256: String,
    /// The info from the name (with the bytes per top-level item) and every entry read.
    pub manifest: Manifest,
    /// Why the archive cannot be adopted (unsafe or damaged entries...); empty when it can.
    pub problems: Vec<String>,
}

/// Reads the legacy archive at `path` once: its SHA-256, and its manifest built from the
/// entries as they pass the entry rules. Findings are values in `problems`; `Err` is for
/// I/O errors and interruption.
pub fn adopt_legacy(
    path: &Path,
    name: &LegacyName,
    progress: &Progress,
    cancel: &CancelFlag,
) -> Result<LegacyAdoption> {
    let (file, meta) = super::verify::open_archive_file(path)?;
    let size = meta.len();
    progress.phase(Phase::Verifying, Some(size), None);
    let count = Arc::new(AtomicU64::new(0));
    let raw = HashRead {
        inner: file,
        hasher: Sha256::new(),
        count: Arc::clone(&count),
    };
    let mut gz = flate2::bufread::MultiGzDecoder::new(BufReader::with_capacity(1 << 20, raw));
    let mut report = VerifyReport::started(size);
    let position = || count.load(Ordering::Relaxed);
    let observed = scan_stream(
        &mut gz,
        &position,
        path,
        Expect::Nothing,
        progress,
        cancel,
        &mut report,
    )?
    .entries;
    cancel.check()?;
    // Whatever the decompressor left unread is part of the file: hash it too.
    let mut raw = gz.into_inner().into_inner();
    io::copy(&mut raw, &mut io::sink()).ctx("cannot read archive", path)?;
    let read = raw.count.load(Ordering::Relaxed);
    if read != size {
        report.problems.push(format!(
            "the file changed size while it was read ({size} -> {read} bytes)"
        ));
    }
    let mut info = name.info();
    for e in &observed {
        let Some(p) = e.path_bytes() else { continue };
        let top = p.split(|&b| b == b'/').next().unwrap_or_default();
        let Ok(top) = TopName::parse(String::from_utf8_lossy(top).as_ref()) else {
            continue;
        };
        let bytes = if e.kind == EntryKind::File { e.size } else { 0 };
        let total = info.top_level_bytes.entry(top).or_default();
        *total = total.saturating_add(bytes);
    }
    if observed.is_empty() && report.problems.is_empty() {
        report.problems.push("the archive holds no entries".into());
    }
    progress.finish_phase(size, report.entries);
    Ok(LegacyAdoption {
        size,
        sha256: hex::encode(raw.hasher.finalize()),
        manifest: Manifest {
            info,
            entries: observed,
            layout: None,
            spans: Vec::new(),
        },
        problems: report.problems,
    })
}

/// Hashes and counts the raw bytes read through it.
struct HashRead {
    inner: File,
    hasher: Sha256,
    count: Arc<AtomicU64>,
}

impl Read for HashRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gzip'd tar with `entries` (path, content; `None` for a directory), as the original
    /// tool wrote: one gzip stream, no metadata.
    fn legacy_tar(dir: &Path, entries: &[(&str, Option<&[u8]>)]) -> std::path::PathBuf {
        let path = dir.join("backup_manual_v1.0_2025-01-02_03-04-05.tar.gz");
        let gz = flate2::write::GzEncoder::new(
            File::create(&path).unwrap(),
            flate2::Compression::new(6),
        );
        let mut b = tar::Builder::new(gz);
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(1_700_000_000);
            h.set_uid(0);
            h.set_gid(0);
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    h.set_size(d.len() as u64);
                    b.append_data(&mut h, name, *d).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, name, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap().finish().unwrap();
        path
    }

    fn name() -> LegacyName {
        LegacyName::parse(OsStr::new("backup_manual_v1.0_2025-01-02_03-04-05.tar.gz")).unwrap()
    }

    #[test]
    fn one_read_gives_the_file_checksum_and_a_manifest_verify_accepts() {
        let tmp = tempfile::tempdir().unwrap();
        let path = legacy_tar(
            tmp.path(),
            &[
                ("data/", None),
                ("data/a.db", Some(b"0123456789")),
                ("app/b.jar", Some(b"jar")),
            ],
        );
        let (none, cancel) = (Progress::none(), CancelFlag::default());
        let got = adopt_legacy(&path, &name(), &none, &cancel).unwrap();
        assert!(got.problems.is_empty(), "{:?}", got.problems);
        assert_eq!(
            got.sha256,
            super::super::sha256_file(&path, &none, &cancel).unwrap()
        );
        assert_eq!(got.size, std::fs::metadata(&path).unwrap().len());
        assert_eq!(got.manifest.entries.len(), 3);
        let bytes: Vec<(String, u64)> = got
            .manifest
            .info
            .top_level_bytes
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        assert_eq!(bytes, [("app".to_string(), 3), ("data".to_string(), 10)]);
        let ok = super::super::verify_against(
            &path,
            Some(&got.sha256),
            &got.manifest,
            1,
            &none,
            &cancel,
        )
        .unwrap();
        assert!(ok.is_ok(), "{:?}", ok.problems);
        assert_eq!(ok.info.as_ref(), Some(&got.manifest.info));

        // A manifest that says otherwise about one file: verify names it.
        let mut other = got.manifest.clone();
        other.entries[1].sha256 = Some("00".repeat(32));
        let bad = super::super::verify_against(&path, None, &other, 1, &none, &cancel).unwrap();
        assert!(
            bad.problems.iter().any(|p| p.contains("data/a.db")),
            "{:?}",
            bad.problems
        );
    }

    /// A restore checks a legacy archive against the manifest given from the catalog: the
    /// adopted one restores; one that says otherwise about a file fails the extraction,
    /// naming it (the exact comparison runs when the fingerprints differ).
    #[test]
    fn extraction_checks_the_given_manifest_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        let path = legacy_tar(
            tmp.path(),
            &[
                ("data/", None),
                ("data/a.db", Some(b"0123456789")),
                ("app/b.jar", Some(b"jar")),
            ],
        );
        let (none, cancel) = (Progress::none(), CancelFlag::default());
        let got = adopt_legacy(&path, &name(), &none, &cancel).unwrap();
        let extract = |manifest: &Manifest, staging: &Path| {
            std::fs::create_dir(staging).unwrap();
            super::super::extract(
                &super::super::ExtractOptions {
                    archive: path.clone(),
                    staging: staging.to_path_buf(),
                    filter: super::super::TopLevelFilter::All,
                    select: Vec::new(),
                    restore_owner: false,
                    threads: 2,
                    expected_sha256: None,
                    manifest: Some(Arc::new(manifest.clone())),
                    key: None,
                    durable: false,
                },
                &none,
                &cancel,
            )
        };
        let ok = tmp.path().join("ok");
        extract(&got.manifest, &ok).unwrap();
        assert_eq!(std::fs::read(ok.join("data/a.db")).unwrap(), b"0123456789");

        let mut other = got.manifest.clone();
        other.entries[1].sha256 = Some("00".repeat(32));
        let err = extract(&other, &tmp.path().join("bad")).unwrap_err();
        assert!(
            matches!(err, crate::error::Error::Corrupt { .. })
                && err.to_string().contains("data/a.db"),
            "{err}"
        );
    }

    #[test]
    fn metadata_entries_and_unsafe_entries_are_findings() {
        let tmp = tempfile::tempdir().unwrap();
        for (entries, want) in [
            (
                vec![("data/x", Some(&b"1"[..])), ("data/x", Some(&b"2"[..]))],
                "duplicate entry",
            ),
            (
                vec![(".nuwax-backup/info.json", Some(&b"{}"[..]))],
                "reserved for nuwax-cli",
            ),
            (vec![], "no entries"),
        ] {
            let path = legacy_tar(tmp.path(), &entries);
            let got =
                adopt_legacy(&path, &name(), &Progress::none(), &CancelFlag::default()).unwrap();
            assert!(
                got.problems.iter().any(|p| p.contains(want)),
                "{want}: {:?}",
                got.problems
            );
        }
    }

    #[test]
    fn names_of_the_original_tool_parse_and_others_do_not() {
        let n = LegacyName::parse(OsStr::new(
            "backup_manual_v0.0.13_2025-11-26_03-20-04.tar.gz",
        ))
        .unwrap();
        assert_eq!(n.backup_type, "Manual");
        assert_eq!(n.service_version, "0.0.13");
        assert_eq!(
            n.created_at.to_rfc3339(),
            "2025-11-26T03:20:04+00:00".to_string()
        );
        let n = LegacyName::parse(OsStr::new(
            "backup_pre-upgrade_v1.2_beta_3_2024-01-02_23-59-58.tar.gz",
        ))
        .unwrap();
        assert_eq!(n.backup_type, "PreUpgrade");
        assert_eq!(n.service_version, "1.2_beta_3", "a version may hold `_`");
        assert_eq!(n.info().created_at, "2024-01-02T23:59:58Z");
        for bad in [
            "backup_auto_v1_2025-11-26_03-20-04.tar.gz",
            "backup_manual_1_2025-11-26_03-20-04.tar.gz",
            "backup_manual_v_2025-11-26_03-20-04.tar.gz",
            "backup_manual_v1_2025-13-26_03-20-04.tar.gz",
            "backup_manual_v1_2025-11-26_03-20-04.tar",
            "backup_manual_v1_2025-11-26_03-20-04.tar.gz.partial",
            "backup_manual_v1_2025-11-26_03-20.tar.gz",
            "manual_v1_2025-11-26_03-20-04.tar.gz",
            "backup_manual_v1_2025-11-26_03-20-04_2.tar.gz",
        ] {
            assert_eq!(LegacyName::parse(OsStr::new(bad)), None, "{bad}");
        }
    }
}
