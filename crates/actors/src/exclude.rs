//! `[backup] exclude`: what a backup leaves out and a restore never touches.
//!
//! Design note: an exclude is one [`ExcludeRule`], parsed once at the edge (config, an
//! archive's `info.json`):
//! - a **plain path** (no glob metacharacter `*?[{`) keeps its old meaning: a path relative
//!   to the compose dir (`logs`, `app/cache`), excluding that item and its subtree;
//! - a **glob** (`*.log`, `**/cache`, `data/tmp/**`, matched with `globset`; `*` and `?` never
//!   match `/`, `**` matches any number of directories). A glob **without** a `/` matches a
//!   name at any depth, as `.gitignore` does (`*.log` is `**/*.log`); a glob with a `/` is
//!   anchored at the compose dir (`data/*.log` matches `data/x.log`, not `data/a/x.log`).
//!
//! A path matched by a rule is excluded with its whole subtree: a walk never descends into
//! it. [`Excludes`] is the compiled list every tree walk asks (the backup's scan, the space
//! estimate, `diff`), and [`Excludes::expand`] turns it into the concrete excluded paths that
//! exist in a tree, which is what the swap engine (`restore.rs`) works with: those paths are
//! never units, their parent directories are kept and only siblings are swapped. So a live
//! `app/x.log` matched by `*.log` survives a rollback exactly like a plain `logs` does.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use globset::{GlobBuilder, GlobMatcher};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{IoContext, Result};
use crate::relpath::INTERNAL_PREFIX;
use crate::relpath::{RelPath, RelPathError};

/// One `exclude` entry (see the module note).
#[derive(Clone)]
pub enum ExcludeRule {
    Path(RelPath),
    Glob {
        /// The pattern as written (one spelling: `./*.log` is `*.log`).
        pattern: String,
        matcher: GlobMatcher,
    },
}

impl ExcludeRule {
    pub fn parse(raw: &str) -> std::result::Result<ExcludeRule, RelPathError> {
        let clean = RelPath::parse(raw)?;
        if !raw.contains(['*', '?', '[', '{']) {
            return Ok(ExcludeRule::Path(clean));
        }
        let bad = |reason| RelPathError {
            path: raw.to_owned(),
            reason,
        };
        let pattern = clean
            .as_path()
            .to_str()
            .ok_or_else(|| bad("is not UTF-8"))?
            .to_owned();
        let full = if pattern.contains('/') {
            pattern.clone()
        } else {
            format!("**/{pattern}")
        };
        let glob = GlobBuilder::new(&full)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|_| bad("is not a valid glob pattern (see [backup] exclude in README)"))?;
        Ok(ExcludeRule::Glob {
            pattern,
            matcher: glob.compile_matcher(),
        })
    }

    /// `true` when `rel` (relative to the compose dir) is this rule's item itself.
    pub fn matches(&self, rel: &Path) -> bool {
        match self {
            ExcludeRule::Path(p) => p.as_path() == rel,
            ExcludeRule::Glob { matcher, .. } => matcher.is_match(rel),
        }
    }

    pub fn is_glob(&self) -> bool {
        matches!(self, ExcludeRule::Glob { .. })
    }

    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        match self {
            ExcludeRule::Path(p) => p.as_path().to_string_lossy(),
            ExcludeRule::Glob { pattern, .. } => pattern.as_str().into(),
        }
    }
}

impl PartialEq for ExcludeRule {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (ExcludeRule::Path(a), ExcludeRule::Path(b)) => a == b,
            (ExcludeRule::Glob { pattern: a, .. }, ExcludeRule::Glob { pattern: b, .. }) => a == b,
            _ => false,
        }
    }
}

impl fmt::Debug for ExcludeRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl fmt::Display for ExcludeRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

impl std::str::FromStr for ExcludeRule {
    type Err = RelPathError;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        ExcludeRule::parse(s)
    }
}

impl Serialize for ExcludeRule {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            ExcludeRule::Path(p) => p.serialize(s),
            ExcludeRule::Glob { pattern, .. } => s.serialize_str(pattern),
        }
    }
}

impl<'de> Deserialize<'de> for ExcludeRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ExcludeRule::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The rules of one walk, with a note of which ones matched something.
#[derive(Debug, Default)]
pub struct Excludes {
    rules: Vec<ExcludeRule>,
    hit: Vec<AtomicBool>,
}

impl Clone for Excludes {
    fn clone(&self) -> Self {
        Excludes::new(&self.rules)
    }
}

impl Excludes {
    /// The union of `rules` (duplicates dropped).
    pub fn new(rules: &[ExcludeRule]) -> Excludes {
        let mut out: Vec<ExcludeRule> = Vec::new();
        for r in rules {
            if !out.contains(r) {
                out.push(r.clone());
            }
        }
        Excludes {
            hit: out.iter().map(|_| AtomicBool::new(false)).collect(),
            rules: out,
        }
    }

    pub fn rules(&self) -> &[ExcludeRule] {
        &self.rules
    }

    /// `true` when `rel` (relative to the compose dir) is excluded itself; a walk does not
    /// descend into it. Our own `.nuwax-*` top-level dirs are always excluded.
    pub fn is_excluded(&self, rel: &Path) -> bool {
        let mut comps = rel.iter();
        if let (Some(first), None) = (comps.next(), comps.next())
            && first.as_bytes().starts_with(INTERNAL_PREFIX.as_bytes())
        {
            return true;
        }
        let mut any = false;
        for (rule, hit) in self.rules.iter().zip(&self.hit) {
            if rule.matches(rel) {
                hit.store(true, Ordering::Relaxed);
                any = true;
            }
        }
        any
    }

    /// The rules that matched nothing in the walks asked so far.
    pub fn unmatched(&self) -> Vec<String> {
        self.rules
            .iter()
            .zip(&self.hit)
            .filter(|(_, h)| !h.load(Ordering::Relaxed))
            .map(|(r, _)| r.to_string())
            .collect()
    }

    /// The excluded paths that exist under `root`, reached through real directories only
    /// (never through a symlink), in the top-level items `in_scope` accepts. Plain-path rules
    /// are listed whether they exist or not (as the swap engine always had them); globs are
    /// expanded by walking the tree, not descending into what is excluded.
    pub fn expand(&self, root: &Path, in_scope: &dyn Fn(&OsStr) -> bool) -> Result<Vec<RelPath>> {
        let mut out: Vec<RelPath> = self
            .rules
            .iter()
            .filter_map(|r| match r {
                ExcludeRule::Path(p) => Some(p.clone()),
                ExcludeRule::Glob { .. } => None,
            })
            .collect();
        if !self.rules.iter().any(ExcludeRule::is_glob) {
            return Ok(out);
        }
        let mut stack: Vec<Option<RelPath>> = vec![None];
        while let Some(dir) = stack.pop() {
            let full = match &dir {
                None => root.to_path_buf(),
                Some(d) => d.under(root),
            };
            let rd = match std::fs::read_dir(&full) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir.is_some() => continue,
                Err(e) => return Err(crate::error::Error::io("cannot list", &full, e)),
            };
            for e in rd {
                let e = e.ctx("cannot list", &full)?;
                let name = e.file_name();
                if dir.is_none()
                    && (!in_scope(&name) || name.as_bytes().starts_with(INTERNAL_PREFIX.as_bytes()))
                {
                    continue;
                }
                let rel = match &dir {
                    None => RelPath::from_name(&name),
                    Some(d) => d.join_name(&name),
                };
                let Ok(rel) = rel else { continue };
                if self.is_excluded(rel.as_path()) {
                    if !out.contains(&rel) {
                        out.push(rel);
                    }
                    continue;
                }
                if e.file_type().ctx("cannot stat", &full)?.is_dir() {
                    stack.push(Some(rel));
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// The `[backup] exclude` list of `config.toml`: the rules, and whether the file set them
/// (the defaults, `logs` and `uv_cache`, are not warned about when they match nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct ExcludeList {
    pub rules: Vec<ExcludeRule>,
    pub configured: bool,
}

impl Default for ExcludeList {
    fn default() -> Self {
        ExcludeList {
            rules: ["logs", "uv_cache"]
                .into_iter()
                .map(|s| ExcludeRule::parse(s).expect("default excludes are clean"))
                .collect(),
            configured: false,
        }
    }
}

impl<'de> Deserialize<'de> for ExcludeList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(ExcludeList {
            rules: Vec::<ExcludeRule>::deserialize(d)?,
            configured: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> ExcludeRule {
        ExcludeRule::parse(s).unwrap()
    }

    fn m(r: &str, p: &str) -> bool {
        rule(r).matches(Path::new(p))
    }

    #[test]
    fn plain_paths_keep_their_meaning() {
        assert!(!rule("logs").is_glob());
        assert!(m("logs", "logs"));
        assert!(
            !m("logs", "app/logs"),
            "a plain name is anchored at the compose dir"
        );
        assert!(m("./app/cache/", "app/cache"));
        assert!(!m("app/cache", "app/cache2"));
    }

    #[test]
    fn globs_without_a_slash_match_at_any_depth() {
        assert!(m("*.log", "x.log"));
        assert!(m("*.log", "app/deep/x.log"));
        assert!(m("*.log", ".hidden.log"));
        assert!(!m("*.log", "x.log.1"));
        assert!(m("cache*", "app/cache_v2"));
    }

    #[test]
    fn globs_with_a_slash_are_anchored() {
        assert!(m("data/*.log", "data/x.log"));
        assert!(!m("data/*.log", "data/a/x.log"), "* does not cross /");
        assert!(m("**/cache", "cache"));
        assert!(m("**/cache", "app/a/cache"));
        assert!(m("data/tmp/**", "data/tmp/a/b"));
        assert!(!m("data/tmp/**", "data/tmp"), "only what is inside");
        assert!(!m("data/tmp/**", "other/data/tmp/x"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["../*.log", "/var/*.log", "a/[", "", "*/../x"] {
            assert!(ExcludeRule::parse(bad).is_err(), "{bad}");
        }
        // A literal metacharacter can be escaped.
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "axb"));
    }

    #[test]
    fn serde_keeps_the_text() {
        let v: Vec<ExcludeRule> =
            serde_json::from_str(r#"["./logs", "*.log", "data/tmp/**"]"#).unwrap();
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"["logs","*.log","data/tmp/**"]"#
        );
        let list: ExcludeList = serde_json::from_str(r#"["x"]"#).unwrap();
        assert!(list.configured);
        assert!(!ExcludeList::default().configured);
    }

    #[test]
    fn expand_lists_matches_without_following_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let outside = t.path().join("outside");
        for d in ["app/a/cache", "data/tmp/x", "logs"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("o.log"), "").unwrap();
        std::fs::write(root.join("app/a/x.log"), "").unwrap();
        std::fs::write(root.join("app/a/cache/y.log"), "").unwrap();
        std::fs::write(root.join("top.log"), "").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("app/link")).unwrap();
        std::fs::create_dir_all(root.join(".nuwax-rollback-1/z.log")).unwrap();
        let ex = Excludes::new(&[rule("*.log"), rule("**/cache"), rule("logs")]);
        let got: Vec<String> = ex
            .expand(&root, &|_| true)
            .unwrap()
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(got, ["app/a/cache", "app/a/x.log", "logs", "top.log"]);
        let only_app: Vec<String> = ex
            .expand(&root, &|n| n == "app")
            .unwrap()
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(only_app, ["app/a/cache", "app/a/x.log", "logs"]);
        let ex = Excludes::new(&[rule("*.log"), rule("nothing*")]);
        ex.expand(&root, &|_| true).unwrap();
        assert_eq!(ex.unmatched(), ["nothing*"]);
    }
}
