//! Filesystem helpers shared by the archive writer, the swap engine, recovery and maintenance:
//! partial paths, atomic writes and copies, durable syncs, mount points, and the one function
//! that deletes trees.
//!
//! Design note: a file that must never be seen half written (an archive, a copied archive,
//! `config.toml`) is written under a temporary name in its final directory, fsynced, renamed
//! over its final name, and the directory fsynced ([`write_atomically`], [`copy_atomically`];
//! the archive writer does the same steps around its own guard). A crash leaves the old file or
//! the new one, plus at most a temporary file. Archives use [`partial_path`] (`<name>.partial`)
//! because start-up recovery, `reindex` and `import` recognise that name ([`is_partial`]);
//! small files any process may rewrite use `<name>.tmp-<pid>` so two writers never share one.
//!
//! Design note: [`remove_path`] is the only way this crate deletes a directory tree, and it
//! never deletes through a mount point: a tree with anything mounted at or below it is
//! refused, so a bind mount that appeared inside a parked or staged tree (a container
//! recreated a bind-mount source, an operator mounted a disk) is never emptied.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

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
            remove_tree_parallel(path);
            // Whatever is left (nothing, normally) is removed here, or its error reported.
            match std::fs::symlink_metadata(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                _ => std::fs::remove_dir_all(path).ctx("cannot remove", path),
            }
        }
        Ok(_) => std::fs::remove_file(path).ctx("cannot remove", path),
    }
}

/// Removes the tree at `root` (a directory, checked for mounts by the caller) on several
/// threads: they take directories from a shared queue, make each writable (a read-only 0555
/// directory would make unlinking in it fail when not root), unlink its other entries and
/// queue its subdirectories; then the directories go, deepest first. A large tree (a
/// rollback's replaced data) goes several times faster than with one thread, which matters
/// less for the downtime (the services run again before it) than for the command's end.
/// Errors are left for the caller's final `remove_dir_all` to report.
fn remove_tree_parallel(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .saturating_mul(2)
        .clamp(2, 8);
    let (tx, rx) = crossbeam_channel::unbounded::<(PathBuf, usize)>();
    let pending = AtomicUsize::new(1);
    let dirs = Mutex::new(Vec::new());
    let _ = tx.send((root.to_path_buf(), 0));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (tx, rx, pending, dirs) = (tx.clone(), rx.clone(), &pending, &dirs);
            scope.spawn(move || {
                loop {
                    let (dir, depth) = match rx.recv_timeout(std::time::Duration::from_millis(2)) {
                        Ok(job) => job,
                        Err(_) if pending.load(Ordering::SeqCst) == 0 => return,
                        Err(_) => continue,
                    };
                    if let Ok(m) = std::fs::symlink_metadata(&dir)
                        && m.permissions().mode() & 0o700 != 0o700
                    {
                        let mode = m.permissions().mode() | 0o700;
                        let _ =
                            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode));
                    }
                    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                        // The entry's own type: a symlink to a directory is unlinked, never
                        // followed.
                        if entry.file_type().is_ok_and(|t| t.is_dir()) {
                            pending.fetch_add(1, Ordering::SeqCst);
                            let _ = tx.send((entry.path(), depth + 1));
                        } else {
                            let _ = std::fs::remove_file(entry.path());
                        }
                    }
                    if let Ok(mut d) = dirs.lock() {
                        d.push((depth, dir));
                    }
                    pending.fetch_sub(1, Ordering::SeqCst);
                }
            });
        }
    });
    let mut dirs = dirs.into_inner().unwrap_or_default();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    for (_, dir) in dirs {
        let _ = std::fs::remove_dir(&dir);
    }
}

/// Makes everything written under `path` durable with one `syncfs(2)` of its filesystem:
/// a staged tree must be on disk before a swap makes it live (a per-file fsync of 100k files
/// would cost far more than one filesystem sync).
pub fn sync_filesystem(path: &Path) -> Result<()> {
    let dir = File::open(path).ctx("cannot open", path)?;
    syncfs(&dir).ctx("cannot sync filesystem of", path)
}

#[allow(unsafe_code)]
fn syncfs(dir: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `dir` is an open descriptor for the duration of the call.
    let rc = unsafe { libc::syncfs(dir.as_raw_fd()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// How often [`SyncBehind`] writes back what was written meanwhile.
const SYNC_BEHIND_EVERY: Duration = Duration::from_millis(500);

/// Makes a tree durable while it is being written, not only after: a thread calls `syncfs(2)`
/// on its filesystem every [`SYNC_BEHIND_EVERY`] while the writer goes on, and
/// [`SyncBehind::finish`] does the last one.
///
/// Design note: a restore of many small files leaves the kernel tens of thousands of dirty
/// inodes and blocks; one `syncfs` at the end then waited for all of them (1.7 s of a 7 s
/// restore of 100k files), on a disk that sat idle while the CPU extracted. Writing back as
/// the restore goes overlaps the two. Every call goes through the one descriptor opened
/// before the first byte is written: `syncfs` reports a writeback error to each descriptor
/// once, so an error seen by the background thread is kept and returned by `finish`, and
/// no error of the tree's writeback can fall between two descriptors.
pub struct SyncBehind {
    path: PathBuf,
    dir: Arc<File>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
    /// Background syncs done.
    rounds: Arc<std::sync::atomic::AtomicU64>,
}

impl SyncBehind {
    /// Starts writing back the filesystem of `path` (an existing directory) in the background.
    pub fn start(path: &Path) -> Result<SyncBehind> {
        let dir = Arc::new(File::open(path).ctx("cannot open", path)?);
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let rounds = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (bg_dir, bg_stop, bg_rounds) =
            (Arc::clone(&dir), Arc::clone(&stop), Arc::clone(&rounds));
        let thread = std::thread::Builder::new()
            .name("sync-behind".into())
            .spawn(move || {
                let (lock, wake) = &*bg_stop;
                let mut stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    // Checked before waiting too: a stop sent before this thread first took
                    // the lock woke nobody.
                    if !*stopped {
                        stopped = wake
                            .wait_timeout(stopped, SYNC_BEHIND_EVERY)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                    if *stopped {
                        return Ok(());
                    }
                    drop(stopped);
                    syncfs(&bg_dir)?;
                    bg_rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start the sync thread: {e}")))?;
        Ok(SyncBehind {
            path: path.to_path_buf(),
            dir,
            stop,
            thread: Some(thread),
            rounds,
        })
    }

    /// Background syncs done so far.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the background thread and syncs what is left: `Ok` once everything written
    /// under the path is durable, else the first writeback error.
    pub fn finish(mut self) -> Result<()> {
        let background = self.stop_thread();
        let last = syncfs(&self.dir);
        tracing::debug!(path = %self.path.display(), background = self.rounds(), "synced");
        background
            .and(last)
            .ctx("cannot sync filesystem of", &self.path)
    }

    fn stop_thread(&mut self) -> std::io::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        wake.notify_all();
        thread
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the sync thread panicked")))
    }
}

impl Drop for SyncBehind {
    /// Abandoned (the writer failed): stops the thread, syncs nothing more.
    fn drop(&mut self) {
        let _ = self.stop_thread();
    }
}

/// fsyncs a directory (after renames in it).
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .ctx("cannot sync directory", dir)
}

/// fsyncs the directory holding `path` (`.` for a bare file name): makes a rename to `path`
/// durable.
pub fn sync_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => sync_dir(Path::new(".")),
    }
}

/// The suffix of a file still being written (or left by a crash) under its final name.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// `<dest>.partial`: where `dest` is written before it is renamed into place.
pub fn partial_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(PARTIAL_SUFFIX);
    PathBuf::from(s)
}

/// `true` when `path`'s file name ends in `.partial`: never a finished file, whatever its
/// content.
pub fn is_partial(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.as_bytes().ends_with(PARTIAL_SUFFIX.as_bytes()))
}

/// `<path>.tmp-<pid>` in the same directory: the temporary file of [`write_atomically`].
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join(name),
        _ => PathBuf::from(name),
    }
}

/// The one commit sequence of an atomic replacement: `fill` writes `temp` and returns it
/// open; it is fsynced and renamed over `target`, then `target`'s directory is fsynced. On
/// any failure before the rename `temp` is removed; `target` is never seen half written.
fn replace_with(
    temp: &Path,
    target: &Path,
    fill: impl FnOnce(&Path) -> Result<std::fs::File>,
) -> Result<()> {
    let result = (|| {
        let file = fill(temp)?;
        file.sync_all().ctx("cannot sync", temp)?;
        drop(file);
        std::fs::rename(temp, target).ctx("cannot rename into place", target)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(temp);
        return Err(e);
    }
    sync_parent(target)
}

/// Replaces (or creates) `path` with `contents` atomically, through `<path>.tmp-<pid>`. The
/// permission bits of an existing `path` are kept.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    let permissions = match std::fs::metadata(path) {
        Ok(m) => Some(m.permissions()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io("cannot stat", path, e)),
    };
    replace_with(&temp_path(path), path, |tmp| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(tmp)
            .ctx("cannot create temporary file", tmp)?;
        file.write_all(contents)
            .ctx("cannot write temporary file", tmp)?;
        if let Some(p) = permissions {
            file.set_permissions(p)
                .ctx("cannot set permissions of temporary file", tmp)?;
        }
        Ok(file)
    })
}

/// Copies `from` to `to` atomically, through `<to>.partial` (so an interrupted copy into the
/// storage dir is recognised and cleaned up like an interrupted backup).
pub fn copy_atomically(from: &Path, to: &Path) -> Result<()> {
    replace_with(&partial_path(to), to, |partial| {
        std::fs::copy(from, partial).ctx("cannot copy archive", partial)?;
        std::fs::File::open(partial).ctx("cannot open", partial)
    })
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

    /// The background thread writes back while the writer goes on, `finish` syncs the rest
    /// and stops it; an abandoned one stops on drop; a missing directory is an error.
    #[test]
    fn sync_behind_syncs_in_the_background_and_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let sync = SyncBehind::start(dir.path()).unwrap();
        std::fs::write(dir.path().join("a"), vec![7u8; 1 << 20]).unwrap();
        let deadline = std::time::Instant::now() + 10 * SYNC_BEHIND_EVERY;
        while sync.rounds() == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(SYNC_BEHIND_EVERY / 5);
        }
        assert!(
            sync.rounds() > 0,
            "no background sync in {:?}",
            10 * SYNC_BEHIND_EVERY
        );
        sync.finish().unwrap();

        let started = std::time::Instant::now();
        drop(SyncBehind::start(dir.path()).unwrap());
        assert!(
            started.elapsed() < SYNC_BEHIND_EVERY,
            "drop waited for the interval"
        );

        let e = SyncBehind::start(&dir.path().join("missing"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("missing"), "{e}");
    }

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

    #[test]
    fn remove_path_removes_wide_deep_and_read_only_trees() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let tree = t.path().join("tree");
        for d in 0..20 {
            let dir = tree.join(format!("d{d}/a/b"));
            std::fs::create_dir_all(&dir).unwrap();
            for f in 0..30 {
                std::fs::write(dir.join(format!("f{f}")), b"x").unwrap();
            }
        }
        let ro = tree.join("d3/a");
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        std::os::unix::fs::symlink(t.path(), tree.join("d4/up")).unwrap();
        std::fs::write(t.path().join("keep"), b"k").unwrap();
        remove_path(&tree).unwrap();
        assert!(!tree.exists());
        assert!(
            t.path().join("keep").exists(),
            "a symlink is never followed"
        );
    }

    #[test]
    fn partial_paths() {
        let p = partial_path(Path::new("/s/backup_v1.tar.gz"));
        assert_eq!(p, Path::new("/s/backup_v1.tar.gz.partial"));
        assert!(is_partial(&p));
        assert!(is_partial(Path::new("x.partial")));
        assert!(!is_partial(Path::new("/s/backup_v1.tar.gz")));
        assert!(!is_partial(Path::new("/s/x.partial/y")));
    }

    /// Names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_atomically_replaces_keeps_mode_and_leaves_no_temp() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("config.toml");
        write_atomically(&f, b"a = 1\n").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"a = 1\n");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomically(&f, b"a = 2\n").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"a = 2\n");
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(names(t.path()), ["config.toml"]);
    }

    #[test]
    fn write_atomically_failure_leaves_the_old_file_and_no_temp() {
        let t = tempfile::tempdir().unwrap();
        // The target is a directory: the rename fails after the temp file was written.
        let f = t.path().join("taken");
        std::fs::create_dir(&f).unwrap();
        std::fs::write(f.join("inside"), b"x").unwrap();
        assert!(write_atomically(&f, b"new").is_err());
        assert!(f.join("inside").exists());
        assert_eq!(names(t.path()), ["taken"]);
    }

    #[test]
    fn copy_atomically_copies_and_cleans_up_its_partial() {
        let t = tempfile::tempdir().unwrap();
        let from = t.path().join("a.tar.gz");
        std::fs::write(&from, b"archive").unwrap();
        let dir = t.path().join("store");
        std::fs::create_dir(&dir).unwrap();
        let to = dir.join("a.tar.gz");
        copy_atomically(&from, &to).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), b"archive");
        assert_eq!(names(&dir), ["a.tar.gz"]);

        // A failed copy leaves neither the file nor its `.partial`.
        let err = copy_atomically(&t.path().join("missing"), &dir.join("b.tar.gz")).unwrap_err();
        assert!(err.to_string().contains("b.tar.gz.partial"), "{err}");
        assert_eq!(names(&dir), ["a.tar.gz"]);
        // Nor does one whose rename fails.
        std::fs::create_dir(dir.join("c.tar.gz")).unwrap();
        std::fs::write(dir.join("c.tar.gz/x"), b"x").unwrap();
        assert!(copy_atomically(&from, &dir.join("c.tar.gz")).is_err());
        assert_eq!(names(&dir), ["a.tar.gz", "c.tar.gz"]);
    }
}
