//! Free-space preflight (DESIGN.md 4.3, 5.2): refuse before writing rather than fail half-way.

use std::path::Path;

use crate::error::{Error, Result};

/// Extra room kept free beyond an estimate: 16 MiB or 5 %, whichever is larger.
pub fn margin(estimate: u64) -> u64 {
    (16 << 20).max(estimate / 20)
}

/// Bytes available to an unprivileged writer on the filesystem holding `path` (the nearest
/// existing ancestor is used when `path` does not exist yet).
pub fn available(path: &Path) -> Result<u64> {
    let mut p = path;
    while !p.exists() {
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    statvfs_available(p).map_err(|e| Error::io("cannot read free space of", p, e))
}

#[allow(unsafe_code)]
fn statvfs_available(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Refuses with [`Error::NoSpace`] unless `needed` plus the margin fits at `path`.
/// A test build can turn it off ([`crate::faults::skip_space_check`]), so tests can reach a
/// real ENOSPC mid-write.
pub fn ensure(path: &Path, needed: u64) -> Result<()> {
    if crate::faults::skip_space_check() {
        return Ok(());
    }
    let available = available(path)?;
    let with_margin = needed.saturating_add(margin(needed));
    if available < with_margin {
        return Err(Error::NoSpace {
            path: path.to_path_buf(),
            needed: with_margin,
            available,
        });
    }
    Ok(())
}

/// Bytes of file content under `dir`, per top-level item, leaving out what `exclude` matches
/// (paths and globs, `exclude.rs`) and our own `.nuwax-*` dirs. Symlinks are not followed.
pub fn tree_bytes(
    dir: &Path,
    exclude: &[crate::exclude::ExcludeRule],
) -> Result<std::collections::BTreeMap<String, u64>> {
    use std::os::unix::fs::MetadataExt;
    let mut sizes = std::collections::BTreeMap::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => return Err(Error::io("cannot list", dir, e)),
    };
    let excludes = std::sync::Arc::new(crate::exclude::Excludes::new(exclude));
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("cannot list", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if excludes.is_excluded(Path::new(&entry.file_name())) {
            continue;
        }
        let mut total = 0u64;
        let (excludes, root) = (excludes.clone(), dir.to_path_buf());
        for e in jwalk::WalkDir::new(&path)
            .skip_hidden(false)
            .follow_links(false)
            .process_read_dir(move |_, _, _, children| {
                children.retain(|c| {
                    c.as_ref()
                        .map(|c| {
                            let p = c.path();
                            !p.strip_prefix(&root).is_ok_and(|r| excludes.is_excluded(r))
                        })
                        .unwrap_or(true)
                });
            })
        {
            let Ok(e) = e else { continue };
            if e.file_type().is_file()
                && let Ok(m) = std::fs::symlink_metadata(e.path())
            {
                total = total.saturating_add(restore_bytes(m.len(), m.blocks()));
            }
        }
        sizes.insert(name, total);
    }
    Ok(sizes)
}

/// The bytes a restore of a file of `len` bytes with `blocks` 512-byte blocks allocated
/// really writes: its allocated size, not its length, since the restore leaves aligned zero
/// blocks as holes (`archive/filepool.rs`); a 1 GiB sparse file of a few KiB needs a few KiB.
/// At most the length (blocks are rounded up) and at least one block for a non-empty file
/// (a file whose data sits inline in its inode reports no blocks).
pub fn restore_bytes(len: u64, blocks: u64) -> u64 {
    len.min(blocks.saturating_mul(512)).max(len.min(4096))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_free_space_and_refuses_the_impossible() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available(dir.path()).unwrap() > 0);
        assert!(available(&dir.path().join("not/yet/there")).unwrap() > 0);
        let err = ensure(dir.path(), u64::MAX / 4).unwrap_err();
        assert!(matches!(err, Error::NoSpace { .. }), "{err}");
        ensure(dir.path(), 1).unwrap();
    }

    #[test]
    fn a_sparse_file_counts_its_allocated_bytes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let f = std::fs::File::create(dir.path().join("data/sparse")).unwrap();
        f.set_len(1 << 30).unwrap();
        drop(f);
        std::fs::write(dir.path().join("data/small"), b"abc").unwrap();
        let sizes = tree_bytes(dir.path(), &[]).unwrap();
        let m = std::fs::metadata(dir.path().join("data/sparse")).unwrap();
        assert!(sizes["data"] < 1 << 20, "{sizes:?} (blocks {})", m.blocks());
        assert_eq!(restore_bytes(1 << 30, 0), 4096);
        assert_eq!(restore_bytes(3, 8), 3);
        assert_eq!(restore_bytes(10_000, 24), 10_000);
        assert_eq!(restore_bytes(u64::MAX, u64::MAX), u64::MAX);
    }
}
