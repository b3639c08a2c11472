//! Tree snapshots (lstat metadata, content hashes) and byte-for-byte comparisons.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::env::TestEnv;

/// Every path under `dir` (not `dir` itself), parents before children, sorted.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in names {
        out.push(p.clone());
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}

/// Gives every entry under `root` a distinct whole-second mtime (children before parents, so
/// setting a child does not disturb its directory afterwards). Symlinks get theirs too.
pub fn pin_mtimes(root: &Path, base: i64) {
    let mut paths = walk(root);
    paths.reverse();
    for (i, p) in paths.iter().enumerate() {
        let t = filetime::FileTime::from_unix_time(base + 3_607 * i as i64, 0);
        filetime::set_symlink_file_times(p, t, t)
            .unwrap_or_else(|e| panic!("set mtime {}: {e}", p.display()));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    Socket,
    Other,
}

/// What one entry looks like, taken with lstat (links are never followed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntrySnap {
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// File size; symlinks: target length; directories: 0 (their size is filesystem noise).
    pub size: u64,
    /// SHA-256 of a regular file's content.
    pub sha256: Option<String>,
    /// A symlink's target, as stored.
    pub target: Option<PathBuf>,
    pub mtime: i64,
    pub mtime_nsec: i64,
    pub uid: u32,
    pub gid: u32,
    /// Hard-link count of a regular file (restores must keep hard links).
    pub nlink: Option<u64>,
}

impl fmt::Display for EntrySnap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} mode={:o} size={} mtime={}.{:09} owner={}:{}",
            self.kind, self.mode, self.size, self.mtime, self.mtime_nsec, self.uid, self.gid
        )?;
        if let Some(s) = &self.sha256 {
            write!(f, " sha256={}", &s[..12])?;
        }
        if let Some(t) = &self.target {
            write!(f, " -> {}", t.display())?;
        }
        if let Some(n) = self.nlink {
            write!(f, " nlink={n}")?;
        }
        Ok(())
    }
}

/// Free bytes on the filesystem holding `path` (`df`).
pub fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .expect("run df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("cannot parse df output for {}", path.display()))
}

/// Relative path -> entry, for every entry under a dir.
pub type Tree = BTreeMap<PathBuf, EntrySnap>;

/// Snapshot of one entry (lstat).
pub fn snap_entry(path: &Path) -> EntrySnap {
    use std::os::unix::fs::FileTypeExt;
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_socket() {
        Kind::Socket
    } else {
        Kind::Other
    };
    EntrySnap {
        kind,
        mode: m.mode() & 0o7777,
        size: if kind == Kind::Dir { 0 } else { m.size() },
        sha256: (kind == Kind::File).then(|| sha256_file(path)),
        target: (kind == Kind::Symlink).then(|| fs::read_link(path).unwrap()),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
        uid: m.uid(),
        gid: m.gid(),
        nlink: (kind == Kind::File).then(|| m.nlink()),
    }
}

/// Snapshot of every entry under `dir` (not `dir` itself), keyed by path relative to `dir`.
pub fn snapshot(dir: &Path) -> Tree {
    walk(dir)
        .into_iter()
        .map(|p| {
            let snap = snap_entry(&p);
            (p.strip_prefix(dir).unwrap().to_path_buf(), snap)
        })
        .collect()
}

fn top_level(p: &Path) -> &OsStr {
    match p.components().next() {
        Some(Component::Normal(n)) => n,
        _ => OsStr::new(""),
    }
}

/// The entries whose top-level item is one of `names`.
pub fn only(tree: &Tree, names: &[&str]) -> Tree {
    tree.iter()
        .filter(|(p, _)| names.iter().any(|n| top_level(p) == OsStr::new(n)))
        .map(|(p, e)| (p.clone(), e.clone()))
        .collect()
}

/// The entries whose top-level item is none of `names`.
pub fn except(tree: &Tree, names: &[&str]) -> Tree {
    tree.iter()
        .filter(|(p, _)| !names.iter().any(|n| top_level(p) == OsStr::new(n)))
        .map(|(p, e)| (p.clone(), e.clone()))
        .collect()
}

/// No `.nuwax-*` work or staging dir anywhere under the working dir.
#[track_caller]
pub fn assert_no_staging_left(env: &TestEnv) {
    let left: Vec<PathBuf> = walk(&env.work)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".nuwax-"))
        })
        .collect();
    assert!(left.is_empty(), "staging/work dirs left behind: {left:?}");
}

/// Panics with a readable diff unless both trees are identical (content and metadata).
#[track_caller]
pub fn assert_same_tree(what: &str, expected: &Tree, actual: &Tree) {
    let diff = tree_diff(expected, actual);
    if !diff.is_empty() {
        const MAX: usize = 60;
        let shown: Vec<&str> = diff.iter().take(MAX).map(String::as_str).collect();
        panic!(
            "{what}: trees differ in {} entries (expected vs actual):\n{}{}",
            diff.len(),
            shown.join("\n"),
            if diff.len() > MAX { "\n  ..." } else { "" }
        );
    }
}

/// One line per difference.
pub fn tree_diff(expected: &Tree, actual: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for (p, e) in expected {
        match actual.get(p) {
            None => out.push(format!("  missing  {}  ({e})", p.display())),
            Some(a) if a != e => {
                let mut fields = Vec::new();
                let mut field = |name: &str, x: String, y: String| {
                    if x != y {
                        fields.push(format!("{name}: {x} -> {y}"));
                    }
                };
                field("kind", format!("{:?}", e.kind), format!("{:?}", a.kind));
                field("mode", format!("{:o}", e.mode), format!("{:o}", a.mode));
                field("size", e.size.to_string(), a.size.to_string());
                field(
                    "content",
                    format!("{:?}", e.sha256),
                    format!("{:?}", a.sha256),
                );
                field(
                    "target",
                    format!("{:?}", e.target),
                    format!("{:?}", a.target),
                );
                field(
                    "mtime",
                    format!("{}.{:09}", e.mtime, e.mtime_nsec),
                    format!("{}.{:09}", a.mtime, a.mtime_nsec),
                );
                field(
                    "owner",
                    format!("{}:{}", e.uid, e.gid),
                    format!("{}:{}", a.uid, a.gid),
                );
                field("nlink", format!("{:?}", e.nlink), format!("{:?}", a.nlink));
                out.push(format!("  changed  {}  {}", p.display(), fields.join(", ")));
            }
            Some(_) => {}
        }
    }
    for (p, a) in actual {
        if !expected.contains_key(p) {
            out.push(format!("  extra    {}  ({a})", p.display()));
        }
    }
    out
}

/// SHA-256 of bytes (lowercase hex).
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn sha256_file(path: &Path) -> String {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}
