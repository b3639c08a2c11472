//! Filesystem helpers shared by the swap engine, recovery and maintenance: durable syncs,
//! mount points, and the one function that deletes trees.
//!
//! Design note: [`remove_path`] is the only way this crate deletes a directory tree, and it
//! never deletes through a mount point: a tree with anything mounted at or below it is
//! refused, so a bind mount that appeared inside a parked or staged tree (a container
//! recreated a bind-mount source, an operator mounted a disk) is never emptied.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Mount points of this process's mount namespace (from `/proc/self/mountinfo`), or `None`
/// when that file cannot be read (not Linux, no /proc).
pub fn mount_points() -> Option<Vec<PathBuf>> {
    let text = std::fs::read("/proc/self/mountinfo").ok()?;
    Some(
        text.split(|b| *b == b'\n')
            .filter_map(|line| line.split(|b| *b == b' ').nth(4))
            .filter(|field| !field.is_empty())
            .map(|field| PathBuf::from(OsString::from_vec(unescape_mountinfo(field))))
            .collect(),
    )
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` (octal).
fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && i + 3 < field.len()
            && field[i + 1..i + 4]
                .iter()
                .all(|d| (b'0'..=b'7').contains(d))
        {
            let v = field[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            out.push(v as u8);
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    out
}

/// `path` with every symlink in it resolved, or `path` itself when it cannot be.
pub fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Mount points at `path` or below it (`path` canonicalised first).
pub fn mounts_at_or_under(path: &Path) -> Vec<PathBuf> {
    let root = canonical(path);
    mount_points()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.starts_with(&root))
        .collect()
}

/// Removes a file, symlink or directory tree; a missing path is fine. Refuses (exit 3) a tree
/// with a mount point at or below it: never delete through a mount.
pub fn remove_path(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("cannot stat", path, e)),
        Ok(m) if m.is_dir() => {
            if let Some(mount) = mounts_at_or_under(path).into_iter().next() {
                return Err(Error::Refused(format!(
                    "not deleting {}: {} is a mount point inside it (never delete through a mount); unmount it, then run the command again",
                    path.display(),
                    mount.display()
                )));
            }
            make_writable(path);
            std::fs::remove_dir_all(path).ctx("cannot remove", path)
        }
        Ok(_) => std::fs::remove_file(path).ctx("cannot remove", path),
    }
}

/// Read-only directories (0555) inside a tree would make remove_dir_all fail when not root.
fn make_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for entry in jwalk::WalkDir::new(path)
        .skip_hidden(false)
        .follow_links(false)
        .into_iter()
        .flatten()
    {
        if entry.file_type().is_dir()
            && let Ok(m) = std::fs::symlink_metadata(entry.path())
            && m.permissions().mode() & 0o700 != 0o700
        {
            let _ = std::fs::set_permissions(
                entry.path(),
                std::fs::Permissions::from_mode(m.permissions().mode() | 0o700),
            );
        }
    }
}

/// Makes everything written under `path` durable with one `syncfs(2)` of its filesystem:
/// a staged tree must be on disk before a swap makes it live (a per-file fsync of 100k files
/// would cost far more than one filesystem sync).
#[allow(unsafe_code)]
pub fn sync_filesystem(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(path).ctx("cannot open", path)?;
    // SAFETY: `dir` is an open descriptor for the duration of the call.
    let rc = unsafe { libc::syncfs(dir.as_raw_fd()) };
    if rc != 0 {
        return Err(Error::io(
            "cannot sync filesystem of",
            path,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// fsyncs a directory (after renames in it).
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .ctx("cannot sync directory", dir)
}

/// `true` when this process runs as root (ownership is then restored).
pub fn is_root() -> bool {
    #[allow(unsafe_code)]
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe {
        libc::geteuid() == 0
    }
}

/// `true` when `name` (a file name) starts with `prefix` (bytes, any encoding).
pub fn name_starts_with(name: &std::ffi::OsStr, prefix: &str) -> bool {
    name.as_bytes().starts_with(prefix.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_octal_escapes() {
        assert_eq!(unescape_mountinfo(br"/a\040b\134c"), b"/a b\\c".to_vec());
        assert_eq!(unescape_mountinfo(br"/plain"), b"/plain".to_vec());
        assert_eq!(unescape_mountinfo(br"/trail\04"), br"/trail\04".to_vec());
    }

    #[test]
    fn root_is_a_mount_point() {
        if let Some(m) = mount_points() {
            assert!(m.iter().any(|p| p == Path::new("/")), "{m:?}");
        }
    }

    #[test]
    fn remove_path_removes_trees_files_and_links_not_targets() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("target");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("keep"), "x").unwrap();
        let tree = t.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::os::unix::fs::symlink(&target, tree.join("a/link")).unwrap();
        remove_path(&tree).unwrap();
        assert!(!tree.exists());
        assert!(
            target.join("keep").exists(),
            "a symlink's target is never touched"
        );
        remove_path(&tree).unwrap();
    }
}
