//! The operation lock (`data/nuwax.lock`).
//!
//! Design note: the lock is an OS file lock (`File::try_lock`, flock(2)), so the kernel
//! releases it when its holder dies, however it dies: a crashed holder can never leave a
//! lock that blocks every later run (restic#1450, helm#4558). The file's *content* names the
//! holder (pid, boot id, start time) so a refused caller can say who holds it, and so a new
//! holder can tell that the previous one died without releasing (content left behind) and
//! say so. A clean release truncates the content.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockOwner {
    pub pid: u32,
    pub boot_id: String,
    /// RFC 3339 UTC.
    pub started: String,
    pub command: String,
}

/// A held operation lock; released on drop.
#[derive(Debug)]
pub struct OperationLock {
    file: File,
    /// The previous holder, if it died without releasing.
    pub taken_over_from: Option<LockOwner>,
}

impl OperationLock {
    /// Takes the lock without waiting. Held by a live process -> [`Error::Locked`].
    pub fn acquire(path: &Path, command: &str) -> Result<OperationLock> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).ctx("cannot create directory", parent)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .ctx("cannot open lock file", path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let owner = read_owner(&mut file);
                return Err(Error::Locked {
                    path: path.to_path_buf(),
                    pid: owner.as_ref().map_or(0, |o| o.pid),
                    started: owner
                        .map(|o| format!("{} running `{}`", o.started, o.command))
                        .unwrap_or_else(|| "at an unknown time".into()),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io("cannot lock", path, e));
            }
        }
        let taken_over_from = read_owner(&mut file);
        let me = LockOwner {
            pid: std::process::id(),
            boot_id: boot_id(),
            started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            command: command.to_owned(),
        };
        let text = serde_json::to_string(&me).map_err(|e| Error::Internal(e.to_string()))?;
        file.set_len(0).ctx("cannot write lock file", path)?;
        file.seek(SeekFrom::Start(0))
            .ctx("cannot write lock file", path)?;
        file.write_all(text.as_bytes())
            .ctx("cannot write lock file", path)?;
        if let Some(prev) = &taken_over_from {
            tracing::warn!(
                "previous operation (pid {}, `{}`, started {}) ended without releasing the lock; taking it over",
                prev.pid,
                prev.command,
                prev.started
            );
        }
        Ok(OperationLock {
            file,
            taken_over_from,
        })
    }
}

impl Drop for OperationLock {
    fn drop(&mut self) {
        // Clean release: empty content, then the kernel lock goes with the descriptor.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

fn read_owner(file: &mut File) -> Option<LockOwner> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.trim()).ok()
}

/// The kernel's boot id: a pid from another boot is never "alive".
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Whether `pid` from boot `boot` is a live process now.
pub fn pid_alive(pid: u32, boot: &str) -> bool {
    if !boot.is_empty() && boot != boot_id() {
        return false;
    }
    if pid == std::process::id() {
        return true;
    }
    Path::new("/proc").join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/nuwax.lock");
        let held = OperationLock::acquire(&path, "backup").unwrap();
        assert!(held.taken_over_from.is_none());
        let err = OperationLock::acquire(&path, "rollback").unwrap_err();
        match err {
            Error::Locked { pid, started, .. } => {
                assert_eq!(pid, std::process::id());
                assert!(started.contains("backup"), "{started}");
            }
            other => panic!("unexpected {other}"),
        }
        drop(held);
        let again = OperationLock::acquire(&path, "rollback").unwrap();
        assert!(
            again.taken_over_from.is_none(),
            "clean release leaves no owner"
        );
    }

    #[test]
    fn dead_owner_content_is_reported_as_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nuwax.lock");
        std::fs::write(
            &path,
            r#"{"pid":999999,"boot_id":"x","started":"2026-01-01T00:00:00Z","command":"backup"}"#,
        )
        .unwrap();
        let lock = OperationLock::acquire(&path, "list").unwrap();
        assert_eq!(lock.taken_over_from.as_ref().unwrap().pid, 999999);
    }

    #[test]
    fn pid_liveness() {
        assert!(pid_alive(std::process::id(), &boot_id()));
        assert!(!pid_alive(std::process::id(), "another-boot"));
    }
}
