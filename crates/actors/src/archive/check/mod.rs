//! The rules every archive entry must pass before anything acts on it. [`super::verify()`] and
//! [`super::extract()`] share them, so "verify says ok" and "extract accepts" mean the same.
//!
//! Design note: the rules are deliberately stricter than tar's. Paths must be clean relative
//! paths (no leading `/`, no `.`/`..`/empty components); nothing may live beneath a symlink or
//! a non-directory entry of the same archive; a hard link may only name an earlier regular file
//! of the same top-level item (the builder never writes anything else); only directories,
//! regular files, symlinks and hard links exist. The metadata entries must sit where the format
//! says: `.nuwax-backup/` and `info.json` first, `manifest.json` last.
//!
//! # Files
//! - `entry.rs`: what a tar entry may be: header parsing, clean paths, the tracker that
//!   refuses escapes and clashes, copying an entry's data, and what may follow the last entry.
//! - `manifest.rs`: the metadata entries (`info.json` first, `manifest.json` last) and the
//!   streamed comparison of the manifest with the entries read.
//! - `digest.rs`: the fingerprint that compares the entries read with the manifest
//!   without keeping either (the exact comparison runs only when they differ).
//! - `progress.rs`: the map from decompressed bytes to a position in the archive file.
//!
//! Every rule answers with a [`Refusal`], defined here.

mod digest;
mod entry;
mod manifest;
mod progress;

use std::io;

pub(super) use digest::{EntryDigest, ShaSum};
pub(super) use entry::{
    CopyError, Parsed, Tracker, check_trailing, copy_entry_data, parse_entry, top_level,
};
pub(super) use manifest::{Meta, check_dump, compare_manifest};
pub(super) use progress::ProgressMap;

/// Why an entry (or the archive) is refused.
#[derive(Debug)]
pub(in crate::archive) enum Refusal {
    /// The entry could write outside the target or is of a kind we never create.
    Unsafe { entry: String, reason: String },
    /// The archive is damaged or does not follow the format.
    Corrupt(String),
    /// The stream itself is damaged (gzip error, truncation): nothing after it can be read.
    Broken(String),
    /// Reading the archive file failed at the OS level (not a content problem).
    Io(io::Error),
}

impl Refusal {
    fn unsafe_entry(path: &[u8], reason: impl Into<String>) -> Self {
        Refusal::Unsafe {
            entry: display_bytes(path),
            reason: reason.into(),
        }
    }

    /// Converts to the crate error for an archive at `archive`.
    pub(in crate::archive) fn into_error(self, archive: &std::path::Path) -> crate::error::Error {
        match self {
            Refusal::Unsafe { entry, reason } => crate::error::Error::UnsafeEntry {
                path: archive.to_path_buf(),
                entry,
                reason,
            },
            Refusal::Corrupt(detail) | Refusal::Broken(detail) => crate::error::Error::Corrupt {
                path: archive.to_path_buf(),
                detail,
            },
            Refusal::Io(e) => crate::error::Error::io("cannot read archive", archive, e),
        }
    }

    /// Whether reading can go on after this refusal (the stream is still in step).
    pub(in crate::archive) fn stream_usable(&self) -> bool {
        matches!(self, Refusal::Unsafe { .. } | Refusal::Corrupt(_))
    }

    /// One line for a verify report.
    pub(in crate::archive) fn describe(&self) -> String {
        match self {
            Refusal::Unsafe { entry, reason } => format!("unsafe entry {entry:?}: {reason}"),
            Refusal::Corrupt(detail) | Refusal::Broken(detail) => detail.clone(),
            Refusal::Io(e) => format!("read error: {e}"),
        }
    }
}

/// A read error from the decompressing stream: an errno means the OS failed us; anything else
/// (bad gzip header, CRC mismatch, truncated member, bad tar header) is damaged content.
pub(in crate::archive) fn stream_error(e: io::Error, what: &str) -> Refusal {
    if e.raw_os_error().is_some() {
        Refusal::Io(e)
    } else {
        Refusal::Broken(format!("{what}: {e}"))
    }
}

/// Path bytes for messages: UTF-8 as is, other bytes as `\xNN`.
pub(in crate::archive) fn display_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_escapes_invalid_utf8_only() {
        assert_eq!(display_bytes("数据/a".as_bytes()), "数据/a");
        assert_eq!(display_bytes(b"x\xffy"), "x\\xffy");
    }
}
