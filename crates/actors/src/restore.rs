//! The swap engine: how a rollback, an upgrade and crash recovery replace part of the live
//! compose dir with a staged tree (DESIGN.md section 5, steps 4-6).
//!
//! Design note: the new content is first written and verified in
//! `<compose dir>/.nuwax-<kind>-<op>/staged/` (same filesystem, so renames are atomic), and
//! synced. [`prepare`] then decides the *units* of the swap and checks them before anything
//! live is touched; the caller journals the returned [`SwapPlan`]; [`SwapPlan::apply`] moves
//! each unit with two renames (`live -> undo/<n>`, `staged/<unit> -> live`), so at every
//! instant a unit is wholly old, wholly new, or parked in `undo/`, and the journaled plan says
//! which. Recovery reverts an unfinished swap ([`SwapPlan::revert`]) and finishes a committed
//! one ([`SwapPlan::commit`]); both are idempotent, so a crash during recovery is recovered
//! by the next run.
//!
//! Units are top-level items of the scope, except where an excluded path lies below one: then
//! that directory is *kept* (never moved) and its children become the units, recursively, so
//! an excluded path (`logs`, `app/cache`, at any depth) is never moved, copied or deleted,
//! whatever happens. A unit that exists live but not in the archive is moved to `undo/` too:
//! the result is exactly the archive's content. Items outside the scope and our own
//! `.nuwax-*` dirs are never units. Paths are [`RelPath`]s resolved without following
//! symlinks: an excluded path behind a symlinked parent is not inside the compose dir, and
//! moving the symlink never touches what it points to.
//!
//! Refused before anything is touched: a mount point at or below a unit or a kept dir (exit
//! 3), a unit on another filesystem, and an excluded path whose parent the archive holds as a
//! file or symlink (the two cannot be merged without touching it).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::archive::TopLevelFilter;
use crate::error::{Error, IoContext, Result};
use crate::exclude::{ExcludeRule, Excludes};
use crate::fsutil::{canonical, mount_points, name_starts_with};
pub use crate::fsutil::{remove_path, sync_dir, sync_filesystem};
use crate::relpath::INTERNAL_PREFIX;
use crate::relpath::RelPath;

/// Prefix of a rollback's work dir inside the compose dir.
pub const WORK_PREFIX: &str = ".nuwax-rollback-";

/// One unit of the swap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwapItem {
    /// Path relative to the compose dir (UTF-8), or `name_hex` for other bytes. Journals
    /// written before nested units existed hold top-level names here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_hex: Option<String>,
    /// The unit existed live before the swap (it goes to `undo/`).
    pub had_live: bool,
    /// The archive has the unit (it comes from `staged/`).
    pub has_staged: bool,
    /// Its name inside `undo/` (default: the unit's name, as older journals did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked: Option<String>,
}

impl SwapItem {
    /// The unit's path; an undecodable or unclean journal entry is an error, never a path.
    pub fn rel(&self) -> Result<RelPath> {
        let raw = decode_name(&self.name, &self.name_hex);
        RelPath::parse(&raw).map_err(|e| journal_error(format!("swap unit: {e}")))
    }

    fn parked_name(&self) -> Result<OsString> {
        match &self.parked {
            Some(p) => Ok(RelPath::from_name(OsStr::new(p))
                .map_err(|e| journal_error(format!("parked name: {e}")))?
                .into_os_string()),
            None => {
                let rel = self.rel()?;
                if !rel.is_top_level() {
                    return Err(journal_error(format!("unit {rel} has no parked name")));
                }
                Ok(rel.into_os_string())
            }
        }
    }

    /// Lossy text of the unit's path, for reports.
    pub fn display_name(&self) -> String {
        decode_name(&self.name, &self.name_hex)
            .to_string_lossy()
            .into_owned()
    }
}

/// Mode, owner and mtime of a directory.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DirMeta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: i64,
}

impl DirMeta {
    fn of(m: &std::fs::Metadata) -> DirMeta {
        use std::os::unix::fs::MetadataExt;
        DirMeta {
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        }
    }

    fn apply_to(&self, path: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if crate::fsutil::is_root() {
            std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
                .ctx("cannot set owner of", path)?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(self.mode))
            .ctx("cannot set mode of", path)?;
        let t = filetime::FileTime::from_unix_time(self.mtime, self.mtime_nsec as u32);
        filetime::set_symlink_file_times(path, t, t).ctx("cannot set mtime of", path)
    }
}

/// A directory that holds an excluded path: kept in place, its children swapped one by one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptDir {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_hex: Option<String>,
    /// Its metadata before the swap (put back by a revert).
    pub before: DirMeta,
    /// The archive's metadata for it, applied after the swap; `None` when the archive does
    /// not have the directory (it then keeps only the excluded paths).
    pub after: Option<DirMeta>,
}

impl KeptDir {
    pub fn rel(&self) -> Result<RelPath> {
        let raw = decode_name(&self.name, &self.name_hex);
        RelPath::parse(&raw).map_err(|e| journal_error(format!("kept dir: {e}")))
    }
}

/// Everything recovery needs; stored in the operation journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwapPlan {
    pub compose_dir: PathBuf,
    pub work_dir: PathBuf,
    pub items: Vec<SwapItem>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept_dirs: Vec<KeptDir>,
}

fn journal_error(detail: String) -> Error {
    Error::Refused(format!(
        "the operation journal in the catalog is not usable ({detail}); nothing was changed. If the catalog was edited or damaged, rebuild it with `nuwax-cli reindex`"
    ))
}

/// A unit whose live and saved copies both exist: a revert cannot choose for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub live: PathBuf,
    pub saved: PathBuf,
}

impl SwapPlan {
    pub fn staged_dir(&self) -> PathBuf {
        self.work_dir.join("staged")
    }
    pub fn undo_dir(&self) -> PathBuf {
        self.work_dir.join("undo")
    }

    /// A plan read back from a journal, checked against the compose dir it must be about:
    /// the work dir is one of ours directly inside it, and every unit is a clean path.
    pub fn checked(self, compose_dir: &Path) -> Result<SwapPlan> {
        if canonical(&self.compose_dir) != canonical(compose_dir) {
            return Err(journal_error(format!(
                "its compose dir {} is not the configured {}",
                self.compose_dir.display(),
                compose_dir.display()
            )));
        }
        checked_work_dir(compose_dir, &self.work_dir)?;
        for item in &self.items {
            item.rel()?;
            item.parked_name()?;
        }
        for k in &self.kept_dirs {
            k.rel()?;
        }
        Ok(SwapPlan {
            compose_dir: compose_dir.to_path_buf(),
            ..self
        })
    }

    /// Performs the swap. On error, reverts what was done and returns the error.
    pub fn apply(&self) -> Result<()> {
        let undo = self.undo_dir();
        std::fs::create_dir_all(&undo).ctx("cannot create undo dir", &undo)?;
        let result = (|| {
            for (i, item) in self.items.iter().enumerate() {
                let rel = item.rel()?;
                let live = rel.under(&self.compose_dir);
                if item.had_live {
                    std::fs::rename(&live, undo.join(item.parked_name()?))
                        .ctx("cannot move aside", &live)?;
                    crate::faults::point(&format!("rollback.swap.{i}.parked"));
                    crate::faults::point(&format!("rollback.swap.parked.{rel}"));
                }
                if i == self.items.len() / 2 {
                    crate::faults::point("rollback.mid_swap");
                }
                if item.has_staged {
                    std::fs::rename(rel.under(&self.staged_dir()), &live)
                        .ctx("cannot move restored item into place", &live)?;
                    crate::faults::point(&format!("rollback.swap.{i}.placed"));
                }
            }
            for k in self.kept_dirs.iter().rev() {
                let path = k.rel()?.under(&self.compose_dir);
                if let Some(after) = &k.after {
                    after.apply_to(&path)?;
                }
                sync_dir(&path)?;
            }
            sync_dir(&self.compose_dir)
        })();
        if let Err(e) = result {
            tracing::error!("swap failed, reverting: {e}");
            if let Err(re) = self.revert() {
                return Err(Error::Internal(format!(
                    "{e}; and reverting failed too: {re}. The previous content is in {}",
                    undo.display()
                )));
            }
            return Err(e);
        }
        Ok(())
    }

    /// The units whose live item and saved copy both exist (a revert would have to drop one).
    pub fn conflicts(&self) -> Result<Vec<Conflict>> {
        let undo = self.undo_dir();
        let mut out = Vec::new();
        for item in &self.items {
            if !item.had_live {
                continue;
            }
            let live = item.rel()?.under(&self.compose_dir);
            let saved = undo.join(item.parked_name()?);
            if exists(&saved) && exists(&live) && !self.live_is_new(item)? {
                out.push(Conflict { live, saved });
            }
        }
        Ok(out)
    }

    /// Live holds the new item when it came from staging and staging no longer has it.
    fn live_is_new(&self, item: &SwapItem) -> Result<bool> {
        let rel = item.rel()?;
        let live = rel.under(&self.compose_dir);
        let staged = rel.under(&self.staged_dir());
        let parked = self.undo_dir().join(item.parked_name()?);
        Ok(item.has_staged
            && exists(&live)
            && !exists(&staged)
            && (!item.had_live || exists(&parked)))
    }

    /// Undoes a partial or complete swap: every unit goes back to its pre-swap state.
    /// Idempotent: safe to run again after a crash during a revert. When a unit's live item
    /// and its saved copy both exist (something recreated the live item after the old one was
    /// parked), nothing is chosen: [`Error::SwapConflict`] names both (exit 3).
    pub fn revert(&self) -> Result<()> {
        if !exists(&self.work_dir) {
            return Ok(()); // removing the work dir is a revert's last step: it is done
        }
        let conflicts = self.conflicts()?;
        if !conflicts.is_empty() {
            return Err(conflict_error(&self.work_dir, &conflicts));
        }
        let undo = self.undo_dir();
        let trash = self.work_dir.join("trash");
        for (i, item) in self.items.iter().enumerate().rev() {
            crate::faults::point(&format!("recovery.revert.{i}"));
            let live = item.rel()?.under(&self.compose_dir);
            let parked = undo.join(item.parked_name()?);
            if self.live_is_new(item)? {
                std::fs::create_dir_all(&trash).ctx("cannot create", &trash)?;
                std::fs::rename(&live, trash.join(i.to_string()))
                    .ctx("cannot move aside", &live)?;
            }
            if item.had_live && exists(&parked) {
                std::fs::rename(&parked, &live).ctx("cannot put back", &live)?;
            }
        }
        for k in &self.kept_dirs {
            let path = k.rel()?.under(&self.compose_dir);
            if exists(&path) {
                k.before.apply_to(&path)?;
            }
        }
        sync_dir(&self.compose_dir)?;
        remove_path(&self.work_dir)
    }

    /// After a successful swap: drop the old content (the work dir).
    pub fn commit(&self) -> Result<()> {
        remove_path(&self.work_dir)
    }

    /// Moves the saved copies of the conflicting units out of the way into `keep` (so the
    /// live items stay), or the live items (so the saved copies go back), then reverts.
    /// Nothing is deleted: what is set aside is named in the returned list.
    pub fn resolve(&self, keep_live: bool, keep: &Path) -> Result<Vec<PathBuf>> {
        let mut set_aside = Vec::new();
        for (i, c) in self.conflicts()?.into_iter().enumerate() {
            std::fs::create_dir_all(keep).ctx("cannot create", keep)?;
            let from = if keep_live { &c.saved } else { &c.live };
            let name = c.live.file_name().unwrap_or_default();
            let mut dest_name = OsString::from(format!("{i}-"));
            dest_name.push(name);
            let dest = keep.join(dest_name);
            std::fs::rename(from, &dest).ctx("cannot set aside", from)?;
            set_aside.push(dest);
        }
        if let Some(parent) = keep.parent() {
            sync_dir(parent)?;
        }
        self.revert()?;
        Ok(set_aside)
    }
}

fn conflict_error(work_dir: &Path, conflicts: &[Conflict]) -> Error {
    Error::SwapConflict {
        work_dir: work_dir.to_path_buf(),
        conflicts: conflicts
            .iter()
            .map(|c| (c.live.clone(), c.saved.clone()))
            .collect(),
    }
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// Creates a new work dir for operation `op_id` (with its empty `staged` dir) and returns it.
/// Operations that journal their work dir use [`new_work_dir_path`], journal it, then
/// [`create_recorded_work_dir`]: a kill between the two never leaves a dir recovery does not
/// know about.
#[cfg(test)]
pub fn create_work_dir(compose_dir: &Path, prefix: &str, op_id: i64) -> Result<PathBuf> {
    let work = new_work_dir_path(compose_dir, prefix, op_id)?;
    create_recorded_work_dir(&work)?;
    Ok(work)
}

/// The path of a new work dir for operation `op_id`: `<prefix><op>`, or `<prefix><op>-<n>`
/// when a leftover (of a catalog recreated since, whose operation ids started again) holds
/// the name. Nothing is created: journal the path first.
pub fn new_work_dir_path(compose_dir: &Path, prefix: &str, op_id: i64) -> Result<PathBuf> {
    for n in 0..1000 {
        let name = if n == 0 {
            format!("{prefix}{op_id}")
        } else {
            format!("{prefix}{op_id}-{n}")
        };
        let work = compose_dir.join(name);
        match std::fs::symlink_metadata(&work) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(work),
            Err(e) => return Err(Error::io("cannot stat", &work, e)),
            Ok(_) => continue,
        }
    }
    Err(Error::Refused(format!(
        "too many leftover {prefix}* dirs in {}; look inside them and remove what is not needed",
        compose_dir.display()
    )))
}

/// Creates the work dir [`new_work_dir_path`] named (after it was journaled) and its empty
/// `staged` dir. A dir that appeared at that name meanwhile is never reused.
pub fn create_recorded_work_dir(work: &Path) -> Result<()> {
    std::fs::create_dir(work).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::Refused(format!(
                "{} appeared while this operation started; look inside it, remove it if it is not needed, and run the command again",
                work.display()
            ))
        } else {
            Error::io("cannot create work dir", work, e)
        }
    })?;
    let staged = work.join("staged");
    std::fs::create_dir(&staged).ctx("cannot create staging dir", &staged)
}

/// A work dir read back from a journal: must be one of ours, directly inside `compose_dir`.
pub fn checked_work_dir(compose_dir: &Path, work: &Path) -> Result<PathBuf> {
    let name = work.file_name().unwrap_or_default();
    let ok = work.parent().map(canonical) == Some(canonical(compose_dir))
        && RelPath::from_name(name).is_ok()
        && name_starts_with(name, INTERNAL_PREFIX);
    if !ok {
        return Err(journal_error(format!(
            "work dir {} is not a .nuwax-* dir of {}",
            work.display(),
            compose_dir.display()
        )));
    }
    Ok(compose_dir.join(name))
}

/// Decides the units of a swap of `work_dir/staged` into `compose_dir` and checks them.
///
/// `filter`: the scope (top-level names). `rules`: never touched, at any depth (config
/// excludes plus the archive's own excluded list, paths and globs). Globs are expanded here
/// into the concrete paths they match in the live tree (and in the staged tree): those are
/// never units, and their parents are kept dirs. Excluded paths present in the staged tree
/// are dropped from it first.
pub fn prepare(
    compose_dir: &Path,
    work_dir: &Path,
    filter: &TopLevelFilter,
    rules: &[ExcludeRule],
) -> Result<SwapPlan> {
    let staged = work_dir.join("staged");
    let rules = Excludes::new(rules);
    let in_scope = |n: &OsStr| filter.includes(n) && !name_starts_with(n, INTERNAL_PREFIX);
    for ex in rules.expand(&staged, &in_scope)? {
        if let Some(p) = ex.resolve_nofollow(&staged).ctx("cannot stat", &staged)?
            && exists(&p)
        {
            remove_path(&p)?;
        }
    }
    let excludes = &rules.expand(compose_dir, &in_scope)?;
    let mut plan = SwapPlan {
        compose_dir: compose_dir.to_path_buf(),
        work_dir: work_dir.to_path_buf(),
        items: Vec::new(),
        kept_dirs: Vec::new(),
    };
    collect(&mut plan, None, filter, excludes)?;
    check_mounts(&plan)?;
    Ok(plan)
}

/// Names in `dir` when it is a real directory (not through a symlink).
fn dir_names(dir: &Path) -> Result<Vec<OsString>> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        _ => return Ok(Vec::new()),
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).ctx("cannot list", dir)? {
        out.push(e.ctx("cannot list", dir)?.file_name());
    }
    Ok(out)
}

fn collect(
    plan: &mut SwapPlan,
    parent: Option<&RelPath>,
    filter: &TopLevelFilter,
    excludes: &[RelPath],
) -> Result<()> {
    let (live_dir, staged_dir) = match parent {
        None => (plan.compose_dir.clone(), plan.staged_dir()),
        Some(p) => (p.under(&plan.compose_dir), p.under(&plan.staged_dir())),
    };
    let mut names = dir_names(&live_dir)?;
    for n in dir_names(&staged_dir)? {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        if parent.is_none() && (!filter.includes(&name) || name_starts_with(&name, INTERNAL_PREFIX))
        {
            continue;
        }
        let rel = match parent {
            None => RelPath::from_name(&name),
            Some(p) => p.join_name(&name),
        }
        .map_err(|e| Error::Internal(format!("directory entry {name:?}: {e}")))?;
        if excludes.contains(&rel) {
            continue; // excluded itself: never a unit
        }
        let live = rel.under(&plan.compose_dir);
        let staged = rel.under(&plan.staged_dir());
        let live_meta = std::fs::symlink_metadata(&live).ok();
        let staged_meta = std::fs::symlink_metadata(&staged).ok();
        let mut guards = Vec::new();
        for ex in excludes.iter().filter(|e| rel.is_strict_ancestor_of(e)) {
            if ex
                .exists_nofollow(&plan.compose_dir)
                .ctx("cannot stat", &live)?
            {
                guards.push(ex);
            }
        }
        if let (Some(live_meta), false) = (&live_meta, guards.is_empty()) {
            // An excluded path lies below this live directory: keep it, swap its children.
            if let Some(m) = &staged_meta
                && !m.is_dir()
            {
                return Err(Error::Refused(format!(
                    "the excluded path {} lies inside {}, which the backup holds as a {}; the two cannot be merged without touching it. Move {} out of the way (or remove it from [backup] exclude), then roll back again",
                    guards[0],
                    live.display(),
                    if m.file_type().is_symlink() {
                        "symlink"
                    } else {
                        "file"
                    },
                    guards[0].under(&plan.compose_dir).display()
                )));
            }
            let (name, name_hex) = encode_name(rel.as_os_str());
            plan.kept_dirs.push(KeptDir {
                name,
                name_hex,
                before: DirMeta::of(live_meta),
                after: staged_meta.as_ref().map(DirMeta::of),
            });
            collect(plan, Some(&rel), filter, excludes)?;
            continue;
        }
        let (name, name_hex) = encode_name(rel.as_os_str());
        let parked = Some(plan.items.len().to_string());
        plan.items.push(SwapItem {
            name,
            name_hex,
            had_live: live_meta.is_some(),
            has_staged: staged_meta.is_some(),
            parked,
        });
    }
    Ok(())
}

/// Refuses a plan that would move a mount point, or rename across filesystems, before
/// anything is moved.
fn check_mounts(plan: &SwapPlan) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let work_dev = std::fs::metadata(&plan.work_dir)
        .ctx("cannot stat", &plan.work_dir)?
        .dev();
    let root = canonical(&plan.compose_dir);
    let mounts: Vec<PathBuf> = mount_points()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.starts_with(&root) && m != &root)
        .collect();
    let refuse = |what: &Path, mount: &Path| {
        Error::Refused(format!(
            "{} is a mount point inside {} that this restore would have to move or write under; a mount cannot be swapped atomically and is never deleted through. Unmount it (or restore that path by hand), then roll back again",
            mount.display(),
            what.display()
        ))
    };
    for item in plan.items.iter().filter(|i| i.had_live) {
        let rel = item.rel()?;
        let live = rel.under(&plan.compose_dir);
        if let Some(m) = mounts.iter().find(|m| m.starts_with(rel.under(&root))) {
            return Err(refuse(&live, m));
        }
        if let Ok(m) = std::fs::symlink_metadata(&live)
            && m.dev() != work_dev
        {
            return Err(refuse(&live, &live));
        }
    }
    for k in &plan.kept_dirs {
        let rel = k.rel()?;
        let live = rel.under(&plan.compose_dir);
        if let Some(m) = mounts.iter().find(|m| **m == rel.under(&root)) {
            return Err(refuse(&live, m));
        }
        if let Ok(m) = std::fs::symlink_metadata(&live)
            && m.dev() != work_dev
        {
            return Err(refuse(&live, &live));
        }
    }
    Ok(())
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
mod tests;
