//! The backup archive format: build, verify, read metadata, and safe staged extraction.
//!
//! # Format (version 1)
//! An archive is an ordinary `.tar.gz` that GNU `tar -xzf` reads:
//! - gzip: a sequence of independent gzip members (RFC 1952), each compressing one chunk of
//!   the tar stream (default 1 MiB). Every member header sets FEXTRA with one subfield
//!   `SI1='N' SI2='X' LEN=4` holding the member's total compressed length (header + deflate +
//!   trailer) as u32 LE, so a reader can find member boundaries and decompress in parallel
//!   (BGZF does the same). Header MTIME = 0, OS = 255, no name: same input -> same bytes.
//!   Random-looking 16 KiB segments of a chunk (JPEG, ZIP, video) are written as deflate
//!   stored blocks, the rest is deflated (see `pgzip/`).
//! - tar: GNU format, sorted paths relative to the compose dir, no leading `./`. Directories,
//!   regular files, symlinks (never followed) and hard links (a link entry for the second and
//!   later paths of one inode, only when both paths share the same top-level item; otherwise
//!   the content is stored again). Mode, numeric uid/gid and mtime kept. Long and non-UTF-8
//!   names kept (GNU long-name records).
//! - first entry `.nuwax-backup/info.json` ([`ArchiveInfo`]), last entry
//!   `.nuwax-backup/manifest.json` ([`Manifest`]: the info again plus every entry with type,
//!   size, mode, owner, mtime, link target and the SHA-256 of file contents).
//!
//! - member layout (`incremental.rs`): a regular file of at least 64 KiB starts its own members
//!   (its long-name records, header, data and padding only), and so does the manifest; the
//!   manifest records the layout, each big file's members (`spans`) and each file's `stat`, so
//!   the next backup copies the members of unchanged files instead of compressing them again.
//!
//! The archive is written to `<final>.partial`, fsynced, renamed, and the directory fsynced;
//! on any error the `.partial` is removed, so a final name always holds a complete archive.

mod ahead;
mod build;
mod check;
pub mod crypt;
mod extract;
mod filepool;
mod format;
mod incremental;
mod legacy;
mod listing;
pub mod pgzip;
mod sink;
#[cfg(test)]
mod tests;
mod threads;
mod verify;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

pub use build::{Scanned, Unfinished, build, build_scanned, build_until_live_read, scan_source};
pub use extract::extract;
pub use format::{
    ArchiveInfo, DumpRecord, EntryKind, FORMAT_VERSION, ImageRecord, META_DIR, Manifest,
    ManifestEntry, encode_bytes,
};
pub use legacy::{LEGACY_ITEMS, LegacyAdoption, LegacyName, adopt_legacy};
pub use listing::{Listing, list};
#[cfg(any(test, feature = "test-support"))]
pub use verify::read_info;
pub use verify::{
    probe_info, probe_info_with, read_dump, read_info_with, sha256_file, verify, verify_against,
};

/// Set from a signal handler (SIGINT, SIGTERM, SIGHUP); long-running work checks it between
/// entries, chunks and polls and returns [`crate::error::Error::Interrupted`] after cleaning up.
///
/// It records which signal arrived (the first one wins), so the CLI can exit with
/// 128 + that signal (130, 143, 129).
#[derive(Clone, Default, Debug)]
pub struct CancelFlag(Arc<CancelState>);

#[derive(Default, Debug)]
struct CancelState {
    /// The signal number; 0 while not cancelled.
    signal: AtomicI32,
    /// Wakes async waits ([`CancelFlag::sleep`]) at once.
    wake: tokio::sync::Notify,
}

impl CancelFlag {
    /// Cancels as Ctrl-C (SIGINT) does.
    pub fn cancel(&self) {
        self.cancel_with(libc::SIGINT);
    }

    /// Cancels because `signal` arrived. A later signal does not overwrite the first.
    pub fn cancel_with(&self, signal: i32) {
        let signal = if signal > 0 { signal } else { libc::SIGINT };
        let _ = self
            .0
            .signal
            .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
        self.0.wake.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.signal.load(Ordering::SeqCst) != 0
    }

    /// The signal that cancelled the operation, if any.
    pub fn signal(&self) -> Option<i32> {
        match self.0.signal.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }

    /// `Err(Error::Interrupted)` once cancelled. Call it at every point after which work
    /// would change something that cannot be undone cheaply: between entries, before a swap
    /// (a rollback calls it after extraction and before the first rename, so a Ctrl-C there
    /// leaves live data as it was), before stopping services.
    pub fn check(&self) -> crate::error::Result<()> {
        if self.is_cancelled() {
            Err(crate::error::Error::Interrupted)
        } else {
            Ok(())
        }
    }

    /// Sleeps `duration`, ending early with `Err(Error::Interrupted)` the moment the flag is
    /// set, so long waits (health, dependencies) end at once on Ctrl-C. Uncancelled, it wakes
    /// exactly when a plain sleep would.
    pub async fn sleep(&self, duration: std::time::Duration) -> crate::error::Result<()> {
        let woken = self.0.wake.notified();
        tokio::pin!(woken);
        // Registered before the check: a cancel between the two still wakes us.
        woken.as_mut().enable();
        self.check()?;
        tokio::select! {
            () = tokio::time::sleep(duration) => Ok(()),
            () = woken => Err(crate::error::Error::Interrupted),
        }
    }
}

/// What [`build`] archives and where.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The compose project dir; entries are relative to it.
    pub source_dir: PathBuf,
    /// Final archive path. Must not exist; `<dest>.partial` is used while writing.
    pub dest: PathBuf,
    /// Paths (top-level names or nested like `app/cache`) and glob patterns to leave out
    /// (`exclude.rs`). Top-level names starting with `.nuwax-` are always left out.
    pub exclude: Vec<crate::exclude::ExcludeRule>,
    /// gzip level 1..=9.
    pub level: u32,
    /// Compression threads; 0 = available parallelism.
    pub threads: usize,
    /// Metadata written into the archive (the caller fixes `created_at`).
    pub info: ArchiveInfo,
    /// The file of each of `info.dumps`, in that order (finished dumps outside the source).
    pub dump_files: Vec<PathBuf>,
    /// Encrypt the archive with age (`crypt.rs`); `dest` then ends in `.tar.gz.age`.
    pub encryption: Option<crate::encryption::Encryption>,
    /// The previous archive, whose members of unchanged big files are copied instead of
    /// compressed again (`incremental.rs`); `None`, or one that cannot serve: every file is
    /// read.
    pub previous: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct BuildReport {
    #[allow(dead_code)] // part of the report; read by the archive tests
    pub path: PathBuf,
    /// Archive size in bytes.
    pub size: u64,
    /// SHA-256 of the archive file, lowercase hex.
    pub sha256: String,
    /// Number of tar entries of the source tree (excluding the two metadata entries).
    pub entries: u64,
    /// Bytes of file content archived (read from the source or copied).
    pub source_bytes: u64,
    /// Of `source_bytes`, the bytes of unchanged files whose members were copied from the
    /// previous archive.
    pub reused_bytes: u64,
    /// The exclude rules that matched nothing in the source tree (as written).
    pub unmatched_excludes: Vec<String>,
    /// Sockets, fifos and device files left out (each was named in a progress notice).
    #[allow(dead_code)] // part of the report; read by the archive tests
    pub skipped_special: u64,
}

/// Result of [`verify`]. Findings are values: an archive with problems is `Ok` with a
/// non-empty `problems`; `Err` is for I/O errors (file missing, unreadable).
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub size: u64,
    pub sha256: String,
    /// `Some(false)` when an expected checksum was given and differs.
    pub checksum_matches: Option<bool>,
    pub entries: u64,
    pub files_checked: u64,
    pub info: Option<ArchiveInfo>,
    pub problems: Vec<String>,
    /// `false` for an encrypted archive verified without its key: only the checksum (of
    /// the ciphertext) was checked.
    pub content_checked: bool,
}

impl VerifyReport {
    /// A report on an archive of `size` bytes before anything was read.
    pub(crate) fn started(size: u64) -> Self {
        VerifyReport {
            size,
            sha256: String::new(),
            checksum_matches: None,
            entries: 0,
            files_checked: 0,
            info: None,
            problems: Vec::new(),
            content_checked: true,
        }
    }

    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && self.checksum_matches != Some(false)
    }
}

/// Which top-level items of the archive an extraction takes.
#[derive(Debug, Clone)]
pub enum TopLevelFilter {
    All,
    Only(Vec<OsString>),
    AllExcept(Vec<OsString>),
}

impl TopLevelFilter {
    pub fn includes(&self, name: &std::ffi::OsStr) -> bool {
        match self {
            TopLevelFilter::All => true,
            TopLevelFilter::Only(v) => v.iter().any(|n| n == name),
            TopLevelFilter::AllExcept(v) => !v.iter().any(|n| n == name),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExtractOptions {
    pub archive: PathBuf,
    /// Existing empty directory on the same filesystem as the live compose dir.
    pub staging: PathBuf,
    pub filter: TopLevelFilter,
    /// Only these paths (each with its subtree) are written, with plain parent directories;
    /// empty: every entry the filter includes. Everything is still read, hashed and compared
    /// with the manifest. A hard link whose target is not selected is refused.
    pub select: Vec<crate::relpath::RelPath>,
    /// Restore numeric uid/gid (only meaningful as root).
    pub restore_owner: bool,
    pub threads: usize,
    /// The archive file's SHA-256 (hex) as the catalog recorded it. The file is hashed while
    /// it is extracted, and a difference fails the extraction (before the caller swaps
    /// anything in) with [`crate::error::Error::ChecksumMismatch`], whatever else went wrong.
    pub expected_sha256: Option<String>,
    /// The manifest to check the entries against when the archive carries none (a legacy
    /// backup: the one computed when it was adopted). `None`: the archive's own.
    pub manifest: Option<Arc<Manifest>>,
    /// The key of an encrypted archive (`crypt.rs`); an encrypted archive without one is
    /// [`crate::error::Error::KeyRequired`].
    pub key: Option<crate::encryption::DecryptKey>,
    /// Make the staging dir durable before returning `Ok` (written back while the
    /// extraction goes on, then one last `syncfs`: [`crate::fsutil::SyncBehind`]); a staged
    /// tree that a swap will make live needs it.
    pub durable: bool,
}

#[derive(Debug, Clone)]
pub struct ExtractReport {
    /// Top-level items written into the staging dir (sorted).
    #[allow(dead_code)] // part of the report; read by the archive tests
    pub top_level: Vec<OsString>,
    #[allow(dead_code)] // part of the report; read by the archive tests
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
    /// The archive's info (as in its manifest, which was checked entry by entry; its entries
    /// are not kept).
    pub info: ArchiveInfo,
}

#[cfg(test)]
mod cancel_flag_tests {
    use super::CancelFlag;

    #[test]
    fn records_the_first_signal_and_every_clone_sees_it() {
        let flag = CancelFlag::default();
        let other = flag.clone();
        assert_eq!(flag.signal(), None);
        assert!(flag.check().is_ok());
        other.cancel_with(libc::SIGTERM);
        flag.cancel_with(libc::SIGHUP);
        assert!(flag.is_cancelled());
        assert_eq!(flag.signal(), Some(libc::SIGTERM), "the first signal wins");
        assert!(matches!(
            flag.check(),
            Err(crate::error::Error::Interrupted)
        ));
        let ctrl_c = CancelFlag::default();
        ctrl_c.cancel();
        assert_eq!(ctrl_c.signal(), Some(libc::SIGINT));
    }

    #[tokio::test]
    async fn sleep_ends_early_when_cancelled() {
        let flag = CancelFlag::default();
        let other = flag.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            other.cancel();
        });
        let start = std::time::Instant::now();
        let r = flag.sleep(std::time::Duration::from_secs(30)).await;
        assert!(matches!(r, Err(crate::error::Error::Interrupted)), "{r:?}");
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        assert!(
            CancelFlag::default()
                .sleep(std::time::Duration::from_millis(10))
                .await
                .is_ok()
        );
    }
}
