//! Reading what an archive holds without extracting it (`ls`, `diff`, `rollback --dry-run`).
//!
//! Design note: the manifest is the last entry, so the listing is one pass over the archive
//! (decompressed in parallel; file contents are skipped, not hashed). Every header passes the
//! same entry rules as an extraction (`check/`): an archive with an unsafe entry is refused
//! here too. When the catalog recorded the archive's SHA-256 it is checked on a thread of its
//! own during the pass, so what is listed is the archive that was written. The entries come
//! from `manifest.json` (with content checksums) when the archive has one; an archive without
//! metadata (one written by another tool) is listed from its tar headers.

use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::check::{Meta, Parsed, ProgressMap, Tracker, parse_entry, stream_error, top_level};
use super::threads::resolve_threads;
use super::{ArchiveInfo, CancelFlag, META_DIR, ManifestEntry};
use crate::error::{Error, IoContext, Result};
use crate::progress::{Phase, Progress};

/// What an archive holds.
#[derive(Debug, Clone)]
pub struct Listing {
    /// `info.json`, when the archive has one.
    pub info: Option<ArchiveInfo>,
    /// Every content entry, in archive order (sorted by path bytes for our archives).
    pub entries: Vec<ManifestEntry>,
    /// The entries (and their checksums) come from `manifest.json`; `false`: from the tar
    /// headers, without content checksums.
    pub from_manifest: bool,
}

/// Lists `path` (see the module note); `expected_sha256`: the catalog's checksum, checked.
pub fn list(
    path: &Path,
    expected_sha256: Option<&str>,
    key: Option<&crate::encryption::DecryptKey>,
    progress: &Progress,
    cancel: &CancelFlag,
) -> Result<Listing> {
    let hasher = match expected_sha256 {
        Some(_) => {
            let (path, cancel) = (path.to_path_buf(), cancel.clone());
            Some(
                std::thread::Builder::new()
                    .name("listing-sha256".into())
                    .spawn(move || super::sha256_file(&path, &Progress::none(), &cancel))
                    .map_err(|e| Error::Internal(format!("cannot start a thread: {e}")))?,
            )
        }
        None => None,
    };
    let result = list_entries(path, key, progress, cancel);
    if let (Some(h), Some(expected)) = (hasher, expected_sha256) {
        let actual = h
            .join()
            .unwrap_or_else(|_| Err(Error::Internal("the checksum thread panicked".into())))?;
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(Error::ChecksumMismatch {
                path: path.to_path_buf(),
                expected: expected.to_owned(),
                actual,
            });
        }
    }
    result
}

fn list_entries(
    path: &Path,
    key: Option<&crate::encryption::DecryptKey>,
    progress: &Progress,
    cancel: &CancelFlag,
) -> Result<Listing> {
    let refuse = |r: super::check::Refusal| r.into_error(path);
    let file = File::open(path).ctx("cannot open archive", path)?;
    let total = file.metadata().ctx("cannot stat archive", path)?.len();
    let index = file.try_clone().ctx("cannot open archive", path)?;
    let reader = super::crypt::open_plain(path, file, key, resolve_threads(0), |e| {
        refuse(stream_error(e, "not a valid gzip file"))
    })?;
    let (position, reader) = ProgressMap::new(&index, total, reader);
    drop(index);
    progress.phase(Phase::Checking, position.total(), None);
    let mut archive = tar::Archive::new(reader);
    // `None` once content came before any info.json: an archive of another tool.
    let mut meta = Some(Meta::new());
    let mut tracker = Tracker::default();
    let mut headers: Vec<ManifestEntry> = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| refuse(stream_error(e, "reading the tar stream")))?;
    for entry in entries {
        cancel.check()?;
        let mut entry = entry.map_err(|e| refuse(stream_error(e, "reading the tar stream")))?;
        let parsed: Parsed = parse_entry(&entry).map_err(refuse)?;
        let is_meta = top_level(&parsed.path) == META_DIR.as_bytes();
        if let Some(m) = &mut meta {
            if m.info.is_none() && !is_meta {
                meta = None;
            } else if m.accept(&parsed, &mut entry).map_err(refuse)? {
                continue;
            }
        }
        tracker.admit(&parsed).map_err(refuse)?;
        headers.push(parsed.to_manifest_entry(None));
        if headers.len().is_multiple_of(256) {
            progress.advance(
                position.position(),
                headers.len() as u64,
                Some(Path::new(std::ffi::OsStr::from_bytes(&parsed.path))),
            );
        }
    }
    progress.finish_phase(position.end(), headers.len() as u64);
    match meta {
        Some(m) => {
            let (_, manifest) = m.finish().map_err(refuse)?;
            if manifest.entries.len() != headers.len() {
                return Err(Error::Corrupt {
                    path: path.to_path_buf(),
                    detail: format!(
                        "its manifest lists {} entries, the archive holds {}; run `nuwax-cli verify`",
                        manifest.entries.len(),
                        headers.len()
                    ),
                });
            }
            Ok(Listing {
                info: Some(manifest.info.clone()),
                entries: manifest.entries.clone(),
                from_manifest: true,
            })
        }
        None => Ok(Listing {
            info: None,
            entries: headers,
            from_manifest: false,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ordinary `tar czf` archive (no `.nuwax-backup/`) is listed from its headers.
    #[test]
    fn an_archive_without_metadata_is_listed_from_its_headers() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("plain.tar.gz");
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        let mut b = tar::Builder::new(gz);
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o755);
        dir.set_size(0);
        dir.set_uid(0);
        dir.set_gid(0);
        dir.set_mtime(1);
        b.append_data(&mut dir, "data/", std::io::empty()).unwrap();
        let mut file = tar::Header::new_gnu();
        file.set_mode(0o644);
        file.set_size(5);
        file.set_uid(0);
        file.set_gid(0);
        file.set_mtime(1);
        b.append_data(&mut file, "data/x.txt", &b"hello"[..])
            .unwrap();
        b.into_inner().unwrap().finish().unwrap();
        let l = list(&path, None, None, &Progress::none(), &CancelFlag::default()).unwrap();
        assert!(!l.from_manifest);
        assert!(l.info.is_none());
        let paths: Vec<_> = l.entries.iter().map(|e| e.path.clone().unwrap()).collect();
        assert_eq!(paths, ["data", "data/x.txt"]);
        assert_eq!(l.entries[1].size, 5);
        // The catalog's checksum is checked.
        let err = list(
            &path,
            Some("00"),
            None,
            &Progress::none(),
            &CancelFlag::default(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
    }
}
