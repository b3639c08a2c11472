//! The one error type of this crate.
//!
//! Every variant belongs to a [`ErrorKind`] so the CLI can map it to an exit code in one place
//! (DESIGN.md section 7) without matching on messages.

use std::path::PathBuf;

/// Broad class of an error; the CLI maps each to an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The operation failed (exit 1). Live data is unchanged unless the message says otherwise.
    Failed,
    /// The request itself is wrong: unknown id, bad argument (exit 2).
    Usage,
    /// A precondition refused the operation: services running, lock held, no space, Docker
    /// unreachable (exit 3).
    Refused,
    /// An archive is damaged, hostile or does not match its manifest or catalog checksum (exit 4).
    Integrity,
    /// The operation was interrupted (exit 130).
    Interrupted,
    /// An upgrade failed and was rolled back automatically (exit 5).
    UpgradeRolledBack,
    /// An upgrade failed and its automatic rollback failed too (exit 6).
    UpgradeRollbackFailed,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{context}: {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("catalog error: {0}")]
    Store(#[from] nuwax_store::Error),
    #[error("backup {0} not found in the catalog; `nuwax-cli list-backups` shows the IDs")]
    BackupNotFound(i64),
    /// A catalog row whose archive file is not there (moved, deleted, storage not mounted).
    #[error(
        "backup {id}'s archive {path} is missing; nothing was changed. If the file was moved, put it back (an archive copied into the storage dir is picked up by `nuwax-cli reindex`); to forget this backup, run `nuwax-cli delete-backup {id}`"
    )]
    ArchiveMissing { id: i64, path: PathBuf },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Refused(String),
    /// An encrypted backup and no key to decrypt it (or a key file that cannot be used).
    #[error("{0}")]
    KeyRequired(String),
    /// The key does not open the archive, or its ciphertext is damaged (nothing was touched).
    #[error("cannot decrypt {path}: {detail}")]
    Decrypt { path: PathBuf, detail: String },
    #[error(
        "not enough free space at {path}: needs {needed} bytes (with margin), {available} available; free some space or move [backup] storage_dir"
    )]
    NoSpace {
        path: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error("another nuwax-cli operation holds the lock {path} (pid {pid}, started {started})")]
    Locked {
        path: PathBuf,
        pid: u32,
        started: String,
    },
    #[error("docker engine unreachable at {endpoint}: {message}")]
    DockerUnreachable { endpoint: String, message: String },
    #[error("docker: {0}")]
    Docker(String),
    #[error("archive {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("archive {path} refused: unsafe entry {entry:?}: {reason}")]
    UnsafeEntry {
        path: PathBuf,
        entry: String,
        reason: String,
    },
    #[error(
        "checksum mismatch for {path}: catalog says {expected}, file has {actual}; the archive was changed or replaced after the backup (use another backup, or put the original file back)"
    )]
    ChecksumMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path} changed while it was being read ({detail}); stop the services and retry")]
    SourceChanged { path: PathBuf, detail: String },
    /// A revert found a unit whose live item and saved copy both exist.
    #[error(
        "an interrupted operation cannot be undone by itself: {}. Nothing was changed. Look at both, then run `nuwax-cli recover --keep-live` (keep what is live now; the saved copy is set aside, not deleted) or `nuwax-cli recover --restore-saved` (put the saved copy back; the live one is set aside). `nuwax-cli recover` shows the state",
        describe_conflicts(conflicts)
    )]
    SwapConflict {
        work_dir: PathBuf,
        /// (live item, its saved copy) pairs.
        conflicts: Vec<(PathBuf, PathBuf)>,
    },
    /// A path from the catalog or a journal points where it must not.
    #[error("{what} {path} refused: {reason}")]
    UnsafePath {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("interrupted; partial work was removed and live data is as it was")]
    Interrupted,
    #[error("internal error: {0}")]
    Internal(String),
    /// A request to the remote (S3) failed; the message names the remote and what was done.
    #[error("{0}")]
    Remote(String),
    /// A host command of `[hooks]` or `[notify]` failed, timed out or could not start; the
    /// message names it and its exit status.
    #[error("{0}")]
    Hook(String),
    /// The message says what failed and that the previous release and data are back.
    #[error("{0}")]
    UpgradeRolledBack(String),
    /// The message says exactly what state things are in.
    #[error("{0}")]
    UpgradeRollbackFailed(String),
    /// A database dump (or `restore-dump`) failed inside the service's container (exit 1).
    #[error("{0}")]
    DumpFailed(String),
    /// A restore drill ran and the backup did not come up (the message names the service).
    #[error("{0}")]
    DrillFailed(String),
}

impl Error {
    pub fn io(context: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            // Keep the context: a full disk is the most common cause operators hit.
            return Error::Io {
                context: "no space left on device while writing",
                path: path.into(),
                source,
            };
        }
        Error::Io {
            context,
            path: path.into(),
            source,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Usage(_)
            | Error::BackupNotFound(_)
            | Error::Config { .. }
            | Error::KeyRequired(_)
            | Error::Store(nuwax_store::Error::BackupNotFound(_)) => ErrorKind::Usage,
            Error::Refused(_)
            | Error::SwapConflict { .. }
            | Error::NoSpace { .. }
            | Error::ArchiveMissing { .. }
            | Error::Locked { .. }
            | Error::DockerUnreachable { .. } => ErrorKind::Refused,
            Error::Corrupt { .. }
            | Error::UnsafeEntry { .. }
            | Error::ChecksumMismatch { .. }
            | Error::Decrypt { .. }
            | Error::UnsafePath { .. } => ErrorKind::Integrity,
            Error::Interrupted => ErrorKind::Interrupted,
            Error::UpgradeRolledBack(_) => ErrorKind::UpgradeRolledBack,
            Error::UpgradeRollbackFailed(_) => ErrorKind::UpgradeRollbackFailed,
            _ => ErrorKind::Failed,
        }
    }
}

impl Error {
    /// A stable `snake_case` name for what went wrong, for programs (the GUI reads it as the
    /// `kind` of a `--json` document's `error`). Errors without a name of their own give their
    /// class: `failed`, `usage`, `refused`, `integrity`, `interrupted`, `upgrade_rolled_back`,
    /// `upgrade_rollback_failed`. Names are never changed or reused once shipped.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Config { .. } => "config",
            Error::BackupNotFound(_) | Error::Store(nuwax_store::Error::BackupNotFound(_)) => {
                "backup_not_found"
            }
            Error::Store(_) => "catalog",
            Error::NoSpace { .. } => "no_space",
            Error::Locked { .. } => "locked",
            Error::DockerUnreachable { .. } => "docker_unreachable",
            Error::Docker(_) => "docker",
            Error::Corrupt { .. } => "corrupt",
            Error::KeyRequired(_) => "key_required",
            Error::Decrypt { .. } => "decryption_failed",
            Error::UnsafeEntry { .. } => "unsafe_entry",
            Error::ChecksumMismatch { .. } => "checksum_mismatch",
            Error::SourceChanged { .. } => "source_changed",
            Error::SwapConflict { .. } => "swap_conflict",
            Error::UnsafePath { .. } => "unsafe_path",
            Error::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => "disk_full",
            Error::Io { .. } => "io",
            Error::Internal(_) => "internal",
            Error::Hook(_) => "hook_failed",
            Error::DumpFailed(_) => "dump_failed",
            Error::DrillFailed(_) => "drill_failed",
            _ => self.kind().code(),
        }
    }
}

impl ErrorKind {
    /// The stable name of the class (see [`Error::code`]).
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::Failed => "failed",
            ErrorKind::Usage => "usage",
            ErrorKind::Refused => "refused",
            ErrorKind::Integrity => "integrity",
            ErrorKind::Interrupted => "interrupted",
            ErrorKind::UpgradeRolledBack => "upgrade_rolled_back",
            ErrorKind::UpgradeRollbackFailed => "upgrade_rollback_failed",
        }
    }
}

fn describe_conflicts(conflicts: &[(PathBuf, PathBuf)]) -> String {
    conflicts
        .iter()
        .map(|(live, saved)| {
            format!(
                "{} exists again and its saved copy is {}",
                live.display(),
                saved.display()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds path context to `std::io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(context, path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names programs switch on (README, "JSON contract"): a typed name where one exists,
    /// the class otherwise, and a full disk told apart from other I/O errors.
    #[test]
    fn codes_are_stable_names() {
        let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let cases = [
            (Error::BackupNotFound(7), "backup_not_found"),
            (
                Error::Store(nuwax_store::Error::BackupNotFound(7)),
                "backup_not_found",
            ),
            (
                Error::NoSpace {
                    path: "/x".into(),
                    needed: 2,
                    available: 1,
                },
                "no_space",
            ),
            (Error::io("write", "/x", enospc), "disk_full"),
            (Error::io("read", "/x", std::io::Error::other("boom")), "io"),
            (Error::Refused("services running".into()), "refused"),
            (Error::Usage("bad".into()), "usage"),
            (Error::Interrupted, "interrupted"),
            (Error::UpgradeRolledBack("x".into()), "upgrade_rolled_back"),
            (Error::KeyRequired("x".into()), "key_required"),
            (
                Error::Decrypt {
                    path: "/x".into(),
                    detail: "wrong key".into(),
                },
                "decryption_failed",
            ),
        ];
        for (error, code) in cases {
            assert_eq!(error.code(), code, "{error}");
        }
    }
}
