//! [`RelPath`]: the one type for a path that came from outside (an archive's `info.json`, the
//! catalog, `config.toml`, a journal) and names something inside a root directory.
//!
//! Design note: such a path is parsed once, at the edge, and code past the edge cannot hold
//! anything else. A `RelPath` is relative, non-empty, made only of normal components (no `..`,
//! no root, no `.` and no empty components, no NUL byte) and has one spelling: `logs/`,
//! `./logs` and `logs//` all parse to `logs`. Filesystem work resolves it under its root with
//! [`RelPath::resolve_nofollow`], which never goes through a symlink: a parent component that
//! is a symlink (or a file) means the path does not exist *inside* the root.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Top-level items of the compose dir that are always excluded: our own staging dirs.
pub const INTERNAL_PREFIX: &str = ".nuwax-";

/// A clean relative path (see the module note).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(PathBuf);

/// Why a path is not a clean relative path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path:?} is not a clean relative path: {reason}")]
pub struct RelPathError {
    pub path: String,
    pub reason: &'static str,
}

impl RelPath {
    /// Parses `raw`; `./x`, `x/` and `x//y` are accepted and normalised.
    pub fn parse(raw: impl AsRef<OsStr>) -> Result<RelPath, RelPathError> {
        let raw = raw.as_ref();
        let bad = |reason| RelPathError {
            path: raw.to_string_lossy().into_owned(),
            reason,
        };
        if raw.as_bytes().contains(&0) {
            return Err(bad("contains a NUL byte"));
        }
        let mut out = PathBuf::new();
        for c in Path::new(raw).components() {
            match c {
                Component::Normal(n) => out.push(n),
                Component::CurDir => {}
                Component::ParentDir => return Err(bad("contains '..'")),
                Component::RootDir | Component::Prefix(_) => return Err(bad("is absolute")),
            }
        }
        if out.as_os_str().is_empty() {
            return Err(bad("is empty"));
        }
        Ok(RelPath(out))
    }

    /// A one-component path from a directory entry's name.
    pub fn from_name(name: &OsStr) -> Result<RelPath, RelPathError> {
        let p = RelPath::parse(name)?;
        if p.is_top_level() {
            Ok(p)
        } else {
            Err(RelPathError {
                path: name.to_string_lossy().into_owned(),
                reason: "is not a single name",
            })
        }
    }

    pub fn as_path(&self) -> &Path {
        &self.0
    }

    pub fn as_os_str(&self) -> &OsStr {
        self.0.as_os_str()
    }

    /// The components, in order (all normal names).
    pub fn names(&self) -> impl Iterator<Item = &OsStr> {
        self.0.components().map(|c| c.as_os_str())
    }

    /// The first component: the top-level item of the root this path lies in.
    pub fn first(&self) -> &OsStr {
        self.names().next().unwrap_or_default()
    }

    /// The last component.
    pub fn file_name(&self) -> &OsStr {
        self.0.file_name().unwrap_or_default()
    }

    pub fn depth(&self) -> usize {
        self.names().count()
    }

    pub fn is_top_level(&self) -> bool {
        self.depth() == 1
    }

    /// `true` when `self` is `other` or lies under it (component-wise: `app2` is not under
    /// `app`).
    pub fn starts_with(&self, other: &RelPath) -> bool {
        self.0.starts_with(&other.0)
    }

    /// `true` when `other` lies strictly under `self`.
    pub fn is_strict_ancestor_of(&self, other: &RelPath) -> bool {
        other.starts_with(self) && other.depth() > self.depth()
    }

    /// `self/name`; `name` must be one normal component.
    pub fn join_name(&self, name: &OsStr) -> Result<RelPath, RelPathError> {
        let n = RelPath::from_name(name)?;
        Ok(RelPath(self.0.join(n.0)))
    }

    /// `root/self`, lexically. Use [`RelPath::resolve_nofollow`] before touching it.
    pub fn under(&self, root: &Path) -> PathBuf {
        root.join(&self.0)
    }

    /// Resolves `root/self` without following symlinks: `Ok(Some(path))` when every parent
    /// component is a real directory inside `root` (the last component itself may be
    /// anything, or missing); `Ok(None)` when a parent is missing, a symlink or not a
    /// directory, so the path does not exist inside `root`.
    pub fn resolve_nofollow(&self, root: &Path) -> std::io::Result<Option<PathBuf>> {
        let mut cur = root.to_path_buf();
        let names: Vec<&OsStr> = self.names().collect();
        for (i, name) in names.iter().enumerate() {
            cur.push(name);
            if i + 1 == names.len() {
                break;
            }
            match std::fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(Some(cur))
    }

    /// `true` when something (a file, dir or symlink, not followed) exists at `root/self`
    /// reached through real directories only.
    pub fn exists_nofollow(&self, root: &Path) -> std::io::Result<bool> {
        match self.resolve_nofollow(root)? {
            None => Ok(false),
            Some(p) => match std::fs::symlink_metadata(&p) {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            },
        }
    }

    /// The path as text (lossy for non-UTF-8 bytes; for messages).
    pub fn display(&self) -> std::path::Display<'_> {
        self.0.display()
    }

    pub fn into_os_string(self) -> OsString {
        self.0.into_os_string()
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.display(), f)
    }
}

impl std::str::FromStr for RelPath {
    type Err = RelPathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RelPath::parse(s)
    }
}

impl Serialize for RelPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.to_str() {
            Some(t) => s.serialize_str(t),
            None => Err(serde::ser::Error::custom(format!(
                "path {:?} is not UTF-8",
                self.0
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RelPath::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A one-component [`RelPath`]: a top-level name of a root (a `data_paths` entry, a key of
/// an archive's `top_level_bytes`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct TopName(RelPath);

impl TopName {
    pub fn parse(raw: impl AsRef<OsStr>) -> Result<TopName, RelPathError> {
        let raw = raw.as_ref();
        let p = RelPath::parse(raw)?;
        if !p.is_top_level() {
            return Err(RelPathError {
                path: raw.to_string_lossy().into_owned(),
                reason: "must be a top-level name (no '/')",
            });
        }
        Ok(TopName(p))
    }

    pub fn as_os_str(&self) -> &OsStr {
        self.0.as_os_str()
    }

    pub fn rel(&self) -> &RelPath {
        &self.0
    }
}

impl fmt::Display for TopName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::str::FromStr for TopName {
    type Err = RelPathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TopName::parse(s)
    }
}

impl<'de> Deserialize<'de> for TopName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TopName::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_spelling() {
        for raw in ["logs", "logs/", "./logs", "logs//", "./logs/.", ".//logs"] {
            assert_eq!(RelPath::parse(raw).unwrap().as_os_str(), "logs", "{raw}");
        }
        assert_eq!(
            RelPath::parse("app/./cache/").unwrap().as_os_str(),
            "app/cache"
        );
        assert_eq!(RelPath::parse("a//b").unwrap().as_os_str(), "a/b");
    }

    #[test]
    fn refuses_everything_else() {
        for raw in [
            "", ".", "./", "/", "/etc", "..", "../x", "a/../b", "a/..", "a\0b",
        ] {
            assert!(RelPath::parse(raw).is_err(), "{raw:?} must be refused");
        }
    }

    #[test]
    fn component_wise_prefixes() {
        let app = RelPath::parse("app").unwrap();
        let cache = RelPath::parse("app/cache").unwrap();
        let app2 = RelPath::parse("app2/x").unwrap();
        assert!(cache.starts_with(&app));
        assert!(app.is_strict_ancestor_of(&cache));
        assert!(!app.is_strict_ancestor_of(&app));
        assert!(!app2.starts_with(&app));
    }

    #[test]
    fn top_names() {
        assert!(TopName::parse("data").is_ok());
        assert!(TopName::parse("./data/").is_ok());
        assert!(TopName::parse("data/x").is_err());
        assert!(TopName::parse("..").is_err());
    }

    #[test]
    fn serde_parses_at_the_edge() {
        let v: Vec<RelPath> = serde_json::from_str(r#"["./logs", "app/cache/"]"#).unwrap();
        assert_eq!(v[0].as_os_str(), "logs");
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"["logs","app/cache"]"#
        );
        assert!(serde_json::from_str::<Vec<RelPath>>(r#"["../../etc"]"#).is_err());
        assert!(serde_json::from_str::<Vec<RelPath>>(r#"["/etc"]"#).is_err());
    }

    #[test]
    fn resolve_never_goes_through_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(root.join("real/sub")).unwrap();
        std::fs::create_dir_all(outside.join("cache")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let through_link = RelPath::parse("link/cache").unwrap();
        assert_eq!(through_link.resolve_nofollow(&root).unwrap(), None);
        assert!(!through_link.exists_nofollow(&root).unwrap());
        let real = RelPath::parse("real/sub").unwrap();
        assert_eq!(
            real.resolve_nofollow(&root).unwrap(),
            Some(root.join("real/sub"))
        );
        assert!(real.exists_nofollow(&root).unwrap());
        // The last component itself may be a symlink: it is not followed.
        assert!(
            RelPath::parse("link")
                .unwrap()
                .exists_nofollow(&root)
                .unwrap()
        );
    }
}
