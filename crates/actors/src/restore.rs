//! The live swap of a rollback (DESIGN.md section 5, steps 4-6).
//!
//! Design note: the archive's scope is first extracted and verified in
//! `<compose dir>/.nuwax-rollback-<op>/staged/` (same filesystem, so renames are atomic).
//! The swap then works per top-level item of the compose dir: `live -> undo/<item>`, then
//! `staged/<item> -> live`. Each step is one rename, so at every instant each item is wholly
//! old, wholly new, or (between the two renames) parked in `undo/`, and the [`SwapPlan`]
//! stored in the operation journal says which. Recovery after a crash reverts an unfinished
//! swap ([`revert`]) and finishes a committed one ([`cleanup`]); both are idempotent, so a
//! crash during recovery is recovered by the next run.
//!
//! Items in scope that exist live but not in the archive are moved to `undo/` too: the
//! result is exactly the archive's content (no stale files). Items outside the scope, the
//! configured excludes, and our own `.nuwax-*` dirs are never touched. A nested exclude such
//! as `app/cache` is carried from the live tree into the staged tree before the swap.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::archive::TopLevelFilter;
use crate::config::INTERNAL_PREFIX;
use crate::error::{Error, IoContext, Result};

/// Prefix of a rollback's work dir inside the compose dir.
pub const WORK_PREFIX: &str = ".nuwax-rollback-";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwapItem {
    /// Top-level name (UTF-8) or `name_hex` for other bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_hex: Option<String>,
    /// The item existed live before the swap (it goes to `undo/`).
    pub had_live: bool,
    /// The archive has the item (it comes from `staged/`).
    pub has_staged: bool,
}

impl SwapItem {
    pub fn os_name(&self) -> OsString {
        decode_name(&self.name, &self.name_hex)
    }
}

/// Everything recovery needs; stored in the operation journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwapPlan {
    pub compose_dir: PathBuf,
    pub work_dir: PathBuf,
    pub items: Vec<SwapItem>,
}

impl SwapPlan {
    pub fn staged_dir(&self) -> PathBuf {
        self.work_dir.join("staged")
    }
    pub fn undo_dir(&self) -> PathBuf {
        self.work_dir.join("undo")
    }
}

/// The work dir for operation `op_id`.
pub fn work_dir(compose_dir: &Path, op_id: i64) -> PathBuf {
    compose_dir.join(format!("{WORK_PREFIX}{op_id}"))
}

/// Creates `work/staged` (fresh). Fails if `work` exists.
pub fn prepare_work_dir(work: &Path) -> Result<PathBuf> {
    std::fs::create_dir(work).ctx("cannot create rollback work dir", work)?;
    let staged = work.join("staged");
    std::fs::create_dir(&staged).ctx("cannot create staging dir", &staged)?;
    Ok(staged)
}

/// Decides which top-level items the swap touches.
///
/// `staged_items`: what extraction wrote. `filter`: the scope. `excludes`: config excludes plus
/// the archive's own excluded list; a top-level exclude is never in the plan.
pub fn plan(
    compose_dir: &Path,
    work: &Path,
    staged_items: &[OsString],
    filter: &TopLevelFilter,
    excludes: &[String],
) -> Result<SwapPlan> {
    let top_excluded = |name: &OsStr| {
        excludes.iter().any(|e| Path::new(e).as_os_str() == name)
            || name.as_bytes().starts_with(INTERNAL_PREFIX.as_bytes())
    };
    let mut names: Vec<OsString> = Vec::new();
    for entry in std::fs::read_dir(compose_dir).ctx("cannot list", compose_dir)? {
        let entry = entry.ctx("cannot list", compose_dir)?;
        let name = entry.file_name();
        if filter.includes(&name) && !top_excluded(&name) {
            names.push(name);
        }
    }
    for s in staged_items {
        if top_excluded(s) {
            // The archive has an item we must not touch (excluded now): leave live alone.
            continue;
        }
        if !names.contains(s) {
            names.push(s.clone());
        }
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let items = names
        .into_iter()
        .map(|n| {
            let had_live = std::fs::symlink_metadata(compose_dir.join(&n)).is_ok();
            let has_staged = staged_items.contains(&n);
            let (name, name_hex) = encode_name(&n);
            SwapItem {
                name,
                name_hex,
                had_live,
                has_staged,
            }
        })
        .collect();
    Ok(SwapPlan {
        compose_dir: compose_dir.to_path_buf(),
        work_dir: work.to_path_buf(),
        items,
    })
}

/// Refuses a plan whose renames would cross filesystems (a bind-mounted `data/`, say)
/// before anything is moved.
pub fn check_same_filesystem(plan: &SwapPlan) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let work_dev = std::fs::metadata(&plan.work_dir)
        .ctx("cannot stat", &plan.work_dir)?
        .dev();
    for item in &plan.items {
        let live = plan.compose_dir.join(item.os_name());
        if let Ok(m) = std::fs::symlink_metadata(&live)
            && m.dev() != work_dev
        {
            return Err(Error::Refused(format!(
                "{} is on another filesystem than {}; a mount point cannot be swapped atomically. Unmount it or restore it by hand",
                live.display(),
                plan.compose_dir.display()
            )));
        }
    }
    Ok(())
}

/// Moves live nested excludes (e.g. `app/cache`) into the staged tree so the swap keeps them.
pub fn carry_nested_excludes(plan: &SwapPlan, excludes: &[String]) -> Result<()> {
    let staged = plan.staged_dir();
    for ex in excludes {
        let rel = Path::new(ex);
        let mut comps = rel.components();
        let Some(first) = comps.next() else { continue };
        if comps.next().is_none() {
            continue; // top-level: not in the plan at all
        }
        let Some(item) = plan
            .items
            .iter()
            .find(|i| i.has_staged && i.os_name() == first.as_os_str())
        else {
            continue;
        };
        let _ = item;
        let live = plan.compose_dir.join(rel);
        if std::fs::symlink_metadata(&live).is_err() {
            continue;
        }
        let dest = staged.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).ctx("cannot create", parent)?;
        }
        if std::fs::symlink_metadata(&dest).is_ok() {
            remove_path(&dest)?;
        }
        std::fs::rename(&live, &dest).ctx("cannot keep excluded path", &live)?;
    }
    Ok(())
}

/// Performs the swap. On error, reverts what was done and returns the error.
pub fn apply(plan: &SwapPlan) -> Result<()> {
    let undo = plan.undo_dir();
    std::fs::create_dir_all(&undo).ctx("cannot create undo dir", &undo)?;
    let result = (|| {
        for (i, item) in plan.items.iter().enumerate() {
            let name = item.os_name();
            let live = plan.compose_dir.join(&name);
            if item.had_live {
                std::fs::rename(&live, undo.join(&name)).ctx("cannot move aside", &live)?;
                crate::faults::point(&format!("rollback.swap.{i}.parked"));
            }
            if i == plan.items.len() / 2 {
                crate::faults::point("rollback.mid_swap");
            }
            if item.has_staged {
                std::fs::rename(plan.staged_dir().join(&name), &live)
                    .ctx("cannot move restored item into place", &live)?;
                crate::faults::point(&format!("rollback.swap.{i}.placed"));
            }
        }
        sync_dir(&plan.compose_dir)
    })();
    if let Err(e) = result {
        tracing::error!("swap failed, reverting: {e}");
        if let Err(re) = revert(plan) {
            return Err(Error::Internal(format!(
                "{e}; and reverting failed too: {re}. The previous content is in {}",
                undo.display()
            )));
        }
        return Err(e);
    }
    Ok(())
}

/// Undoes a partial or complete swap: every item goes back to its pre-swap state.
/// Idempotent: safe to run again after a crash during a revert.
pub fn revert(plan: &SwapPlan) -> Result<()> {
    let undo = plan.undo_dir();
    let trash = plan.work_dir.join("trash");
    for (i, item) in plan.items.iter().enumerate().rev() {
        crate::faults::point(&format!("recovery.revert.{i}"));
        let name = item.os_name();
        let live = plan.compose_dir.join(&name);
        let parked = undo.join(&name);
        let staged = plan.staged_dir().join(&name);
        let live_exists = std::fs::symlink_metadata(&live).is_ok();
        // Live holds the new item when it came from staging and staging no longer has it.
        let live_is_new = item.has_staged
            && live_exists
            && std::fs::symlink_metadata(&staged).is_err()
            && (!item.had_live || std::fs::symlink_metadata(&parked).is_ok());
        if live_is_new {
            std::fs::create_dir_all(&trash).ctx("cannot create", &trash)?;
            std::fs::rename(&live, trash.join(&name)).ctx("cannot move aside", &live)?;
        }
        if item.had_live && std::fs::symlink_metadata(&parked).is_ok() {
            if std::fs::symlink_metadata(&live).is_ok() {
                return Err(Error::Internal(format!(
                    "cannot revert {}: both the live item and its saved copy in {} exist",
                    live.display(),
                    parked.display()
                )));
            }
            std::fs::rename(&parked, &live).ctx("cannot put back", &live)?;
        }
    }
    sync_dir(&plan.compose_dir)?;
    remove_path(&plan.work_dir)
}

/// After a successful swap: drop the old content.
pub fn cleanup(plan: &SwapPlan) -> Result<()> {
    remove_path(&plan.work_dir)
}

/// Removes a file, symlink or directory tree; a missing path is fine.
pub fn remove_path(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("cannot stat", path, e)),
        Ok(m) if m.is_dir() => {
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
/// the staged tree must be on disk before the swap makes it live (a per-file fsync of 100k
/// files would cost far more than one filesystem sync).
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

pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .ctx("cannot sync directory", dir)
}

/// Finds `.nuwax-rollback-*` leftovers that no journal entry explains.
pub fn stray_work_dirs(compose_dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(compose_dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| e.file_name().as_bytes().starts_with(WORK_PREFIX.as_bytes()))
        .map(|e| e.path())
        .collect()
}

/// Splits a name into the (`text`, `hex`) pair used in journal JSON.
pub fn encode_name(name: &OsStr) -> (Option<String>, Option<String>) {
    crate::archive::encode_bytes(name.as_bytes())
}

pub fn decode_name(text: &Option<String>, hex_: &Option<String>) -> OsString {
    match (text, hex_) {
        (Some(s), _) => OsString::from(s),
        (None, Some(h)) => OsString::from_vec(hex::decode(h).unwrap_or_default()),
        (None, None) => OsString::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, s: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    }

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let compose = t.path().join("docker");
        write(&compose.join("app/a.txt"), "old app");
        write(&compose.join("app/cache/c"), "live cache");
        write(&compose.join("stale.txt"), "stale");
        write(&compose.join("data/db"), "live data");
        write(&compose.join("logs/l"), "log");
        let work = work_dir(&compose, 7);
        let staged = prepare_work_dir(&work).unwrap();
        write(&staged.join("app/a.txt"), "new app");
        write(&staged.join("compose.yml"), "services: {}");
        (t, compose, work)
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    fn staged_names() -> Vec<OsString> {
        vec!["app".into(), "compose.yml".into()]
    }

    #[test]
    fn swap_replaces_scope_exactly_and_keeps_the_rest() {
        let (_t, compose, work) = setup();
        let filter = TopLevelFilter::AllExcept(vec!["data".into()]);
        let excludes = vec!["logs".to_string(), "app/cache".to_string()];
        let p = plan(&compose, &work, &staged_names(), &filter, &excludes).unwrap();
        let names: Vec<_> = p.items.iter().map(|i| i.os_name()).collect();
        assert_eq!(
            names,
            vec![
                OsString::from("app"),
                "compose.yml".into(),
                "stale.txt".into()
            ]
        );
        carry_nested_excludes(&p, &excludes).unwrap();
        apply(&p).unwrap();
        cleanup(&p).unwrap();
        assert_eq!(read(&compose.join("app/a.txt")), "new app");
        assert_eq!(read(&compose.join("app/cache/c")), "live cache");
        assert_eq!(read(&compose.join("compose.yml")), "services: {}");
        assert!(!compose.join("stale.txt").exists());
        assert_eq!(read(&compose.join("data/db")), "live data");
        assert_eq!(read(&compose.join("logs/l")), "log");
        assert!(!work.exists());
    }

    #[test]
    fn revert_after_partial_swap_restores_everything() {
        let (_t, compose, work) = setup();
        let filter = TopLevelFilter::AllExcept(vec!["data".into()]);
        let p = plan(&compose, &work, &staged_names(), &filter, &[]).unwrap();
        // Simulate a crash after the first item was fully swapped and the second parked.
        std::fs::create_dir_all(p.undo_dir()).unwrap();
        std::fs::rename(compose.join("app"), p.undo_dir().join("app")).unwrap();
        std::fs::rename(p.staged_dir().join("app"), compose.join("app")).unwrap();
        std::fs::rename(compose.join("stale.txt"), p.undo_dir().join("stale.txt")).unwrap();
        revert(&p).unwrap();
        assert_eq!(read(&compose.join("app/a.txt")), "old app");
        assert_eq!(read(&compose.join("stale.txt")), "stale");
        assert!(!compose.join("compose.yml").exists());
        assert!(!work.exists());
        // Idempotent.
        revert(&p).unwrap();
        assert_eq!(read(&compose.join("app/a.txt")), "old app");
    }

    #[test]
    fn revert_after_complete_swap() {
        let (_t, compose, work) = setup();
        let filter = TopLevelFilter::All;
        let p = plan(&compose, &work, &staged_names(), &filter, &["logs".into()]).unwrap();
        apply(&p).unwrap();
        assert_eq!(read(&compose.join("app/a.txt")), "new app");
        assert!(!compose.join("data").exists());
        revert(&p).unwrap();
        assert_eq!(read(&compose.join("app/a.txt")), "old app");
        assert_eq!(read(&compose.join("data/db")), "live data");
        assert!(!compose.join("compose.yml").exists());
    }

    #[test]
    fn plan_round_trips_through_json() {
        let (_t, compose, work) = setup();
        let p = plan(&compose, &work, &staged_names(), &TopLevelFilter::All, &[]).unwrap();
        let json = serde_json::to_value(&p).unwrap();
        let back: SwapPlan = serde_json::from_value(json).unwrap();
        assert_eq!(back, p);
    }
}
