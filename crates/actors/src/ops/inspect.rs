//! Looking before leaping: `ls`, `diff`, `rollback --dry-run` and `restore --to`. None of
//! them changes live data, the catalog or the services, and none takes the operation lock.
//!
//! Design note: all four read the archive through the same checks as a rollback (the
//! catalog's SHA-256, the entry rules; `restore` also every file against the manifest), and
//! compare or restrict with the same scope filter and exclude rules (`exclude.rs`), so a dry
//! run's counts are the rollback's. `restore --to` extracts the chosen paths into a fresh
//! `.nuwax-restore-*` dir inside the destination (same filesystem), checks that nothing there
//! would be overwritten, and only then renames the results into place: an existing file in
//! the destination is never replaced, and a failure leaves the destination as it was.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nuwax_store::BackupStatus;

use super::rollback::{RollbackScope, space_needed};
use super::{BackupEntry, Ctx};
use crate::actors::archive_actor::ArchiveMsg;
use crate::archive::{EntryKind, ExtractOptions, Listing, TopLevelFilter};
use crate::docker::ContainerInfo;
use crate::error::{Error, IoContext, Result};
use crate::exclude::{ExcludeRule, Excludes};
use crate::progress::Progress;
use crate::relpath::RelPath;
use crate::treediff::TreeDiff;

/// Prefix of `restore --to`'s staging dir inside the destination.
const RESTORE_PREFIX: &str = ".nuwax-restore-";

/// One entry of a backup, as `ls` shows it.
#[derive(Debug, Clone)]
pub struct ArchiveEntry {
    /// Relative to the compose dir.
    pub path: PathBuf,
    /// `dir`, `file`, `symlink` or `hardlink`.
    pub kind: &'static str,
    pub size: u64,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// A symlink's target, or the path a hard link shares its content with.
    pub target: Option<PathBuf>,
    pub sha256: Option<String>,
    /// Not an entry of the archive: a directory implied by deeper paths.
    pub implied: bool,
}

#[derive(Debug, Clone)]
pub struct LsRequest {
    pub id: i64,
    /// A path inside the backup (relative to the compose dir); `None`: the top level.
    pub path: Option<PathBuf>,
    /// Everything below the path, not only its direct children.
    pub recursive: bool,
}

#[derive(Debug, Clone)]
pub struct LsReport {
    pub backup: BackupEntry,
    pub path: Option<PathBuf>,
    /// Entries come from the manifest (with checksums), not from the tar headers.
    pub from_manifest: bool,
    pub entries: Vec<ArchiveEntry>,
}

#[derive(Debug, Clone)]
pub struct DiffRequest {
    pub id: i64,
    /// Hash live files whose size matches and compare with the manifest's SHA-256.
    pub content: bool,
}

#[derive(Debug, Clone)]
pub struct DiffReport {
    pub backup: BackupEntry,
    pub from_manifest: bool,
    /// The exclude rules applied (config and archive).
    pub excluded: Vec<String>,
    pub diff: TreeDiff,
}

/// What `rollback ID [--rollback-data] --dry-run` would do.
#[derive(Debug, Clone)]
pub struct RollbackPlan {
    pub backup: BackupEntry,
    pub scope: RollbackScope,
    /// The live tree against the backup within the scope: `modified` would be replaced,
    /// `removed` (absent live) would be put back, `added` (absent from the backup) would be
    /// removed.
    pub diff: TreeDiff,
    pub excluded: Vec<String>,
    /// Bytes the staging needs on the compose dir's filesystem (before the margin).
    pub needed_bytes: u64,
    /// With the margin the rollback keeps.
    pub needed_with_margin: u64,
    pub available_bytes: u64,
    /// Running containers of the project the rollback would stop (and start again).
    pub would_stop: Vec<ContainerInfo>,
    /// A Docker engine was found.
    pub engine_found: bool,
}

#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub id: i64,
    /// Paths inside the backup (relative to the compose dir), each with its subtree.
    pub paths: Vec<PathBuf>,
    /// Destination directory (absolute); created when missing.
    pub dest: PathBuf,
    /// Allow a non-empty destination (nothing in it is overwritten even then).
    pub force: bool,
}

#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub backup: BackupEntry,
    pub dest: PathBuf,
    /// The chosen paths, as restored under `dest`.
    pub paths: Vec<PathBuf>,
    pub files: u64,
    pub bytes: u64,
}

/// A Completed backup whose archive exists (the rollback's own conditions).
async fn usable_backup(ctx: &Ctx, id: i64) -> Result<BackupEntry> {
    let entry = ctx.get_backup(id).await?;
    let record = &entry.record;
    if record.status != BackupStatus::Completed {
        return Err(Error::Usage(format!(
            "backup {id} is {:?}; only a Completed backup has content to show",
            record.status
        )));
    }
    if !entry.file_exists {
        return Err(Error::Corrupt {
            path: record.file_path.clone(),
            detail: format!("backup {id}'s archive file is missing"),
        });
    }
    Ok(entry)
}

async fn listing(ctx: &Ctx, entry: &BackupEntry, progress: &Progress) -> Result<Listing> {
    let key = ctx.key_for(&entry.record.file_path)?;
    ctx.archive(|reply| ArchiveMsg::List {
        path: entry.record.file_path.clone(),
        expected_sha256: entry.record.sha256.clone(),
        key,
        progress: progress.clone(),
        cancel: ctx.cancel.clone(),
        reply,
    })
    .await
}

fn parse_inside(p: &Path) -> Result<RelPath> {
    RelPath::parse(p).map_err(|e| {
        Error::Usage(format!(
            "{e}; name a path inside the backup as `nuwax-cli ls` shows it (relative to the compose dir)"
        ))
    })
}

fn entry_of(e: &crate::archive::ManifestEntry) -> Option<ArchiveEntry> {
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(&e.path_bytes()?));
    Some(ArchiveEntry {
        path,
        kind: match e.kind {
            EntryKind::Dir => "dir",
            EntryKind::File => "file",
            EntryKind::Symlink => "symlink",
            EntryKind::Hardlink => "hardlink",
        },
        size: e.size,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        mtime: e.mtime,
        target: e
            .target_bytes()
            .map(|t| PathBuf::from(std::ffi::OsStr::from_bytes(&t))),
        sha256: e.sha256.clone(),
        implied: false,
    })
}

// ----------------------------------------------------------------------------------- ls
pub(crate) async fn ls(ctx: &Ctx, req: LsRequest, progress: Progress) -> Result<LsReport> {
    // `.` (or nothing) is the top level.
    let base = req
        .path
        .as_deref()
        .filter(|p| !p.components().all(|c| c == std::path::Component::CurDir))
        .map(parse_inside)
        .transpose()?;
    let entry = usable_backup(ctx, req.id).await?;
    let listing = listing(ctx, &entry, &progress).await?;
    let all: Vec<ArchiveEntry> = listing.entries.iter().filter_map(entry_of).collect();
    let depth = base.as_ref().map_or(0, RelPath::depth);
    let under = |p: &Path| match &base {
        None => true,
        Some(b) => p.starts_with(b.as_path()) && p != b.as_path(),
    };
    let mut out: Vec<ArchiveEntry> = Vec::new();
    if let Some(b) = &base
        && let Some(e) = all.iter().find(|e| e.path == b.as_path())
        && e.kind != "dir"
    {
        out.push(e.clone());
    } else {
        let mut implied: std::collections::BTreeSet<PathBuf> = Default::default();
        for e in all.iter().filter(|e| under(&e.path)) {
            let d = e.path.iter().count();
            if req.recursive || d == depth + 1 {
                out.push(e.clone());
            }
            // Directories only implied by deeper paths (archives without directory entries).
            let comps: Vec<_> = e.path.iter().collect();
            let upto = if req.recursive {
                d - 1
            } else {
                (depth + 1).min(d - 1)
            };
            for k in (depth + 1)..=upto {
                implied.insert(comps[..k].iter().collect());
            }
        }
        for p in implied {
            if !all.iter().any(|e| e.path == p) {
                out.push(ArchiveEntry {
                    path: p,
                    kind: "dir",
                    size: 0,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    mtime: 0,
                    target: None,
                    sha256: None,
                    implied: true,
                });
            }
        }
        if out.is_empty()
            && let Some(b) = &base
            && !all.iter().any(|e| e.path == b.as_path())
        {
            return Err(Error::Usage(format!(
                "backup {} has no {b}; `nuwax-cli ls {}` shows what it holds",
                req.id, req.id
            )));
        }
        out.sort_by(|a, b| {
            a.path
                .as_os_str()
                .as_bytes()
                .cmp(b.path.as_os_str().as_bytes())
        });
    }
    Ok(LsReport {
        backup: entry,
        path: base.map(|b| b.as_path().to_path_buf()),
        from_manifest: listing.from_manifest,
        entries: out,
    })
}

// --------------------------------------------------------------------------------- diff
fn exclude_rules(ctx: &Ctx, listing: &Listing) -> Vec<ExcludeRule> {
    let mut rules = ctx.settings.config.backup.exclude.rules.clone();
    if let Some(info) = &listing.info {
        rules.extend(info.excluded.iter().cloned());
    }
    rules
}

async fn tree_diff(
    ctx: &Ctx,
    listing: Listing,
    filter: TopLevelFilter,
    content: bool,
) -> Result<(TreeDiff, Vec<String>)> {
    let excludes = Excludes::new(&exclude_rules(ctx, &listing));
    let names = excludes.rules().iter().map(|r| r.to_string()).collect();
    let root = ctx.settings.paths.compose_dir.clone();
    let cancel = ctx.cancel.clone();
    let diff = super::blocking(move || {
        crate::treediff::diff(&root, &listing, &filter, &excludes, content, &cancel)
    })
    .await?;
    Ok((diff, names))
}

pub(crate) async fn diff(ctx: &Ctx, req: DiffRequest, progress: Progress) -> Result<DiffReport> {
    let entry = usable_backup(ctx, req.id).await?;
    let listing = listing(ctx, &entry, &progress).await?;
    let from_manifest = listing.from_manifest;
    let (diff, excluded) = tree_diff(ctx, listing, TopLevelFilter::All, req.content).await?;
    Ok(DiffReport {
        backup: entry,
        from_manifest,
        excluded,
        diff,
    })
}

// ------------------------------------------------------------------------------ dry run
pub(crate) async fn rollback_plan(
    ctx: &Ctx,
    id: i64,
    scope: RollbackScope,
    progress: Progress,
) -> Result<RollbackPlan> {
    let entry = usable_backup(ctx, id).await?;
    // Ask the engine first, as the rollback does: unreachable refuses (exit 3).
    let containers = ctx.containers(&ctx.compose_or_bare()).await?;
    let engine_found = containers.is_some();
    let would_stop: Vec<ContainerInfo> = containers
        .unwrap_or_default()
        .into_iter()
        .filter(|c| crate::docker::policy::is_active(&c.state))
        .collect();
    let listing = listing(ctx, &entry, &progress).await?;
    // A legacy backup restores only its data/ and app/, exactly as the rollback would.
    let filter = match ctx.legacy_manifest(&entry.record).await? {
        Some(manifest) => Ctx::legacy_scope_filter(scope, &manifest),
        None => ctx.scope_filter(scope),
    };
    let needed_bytes = match &listing.info {
        Some(info) => space_needed(info, &filter, &entry)?,
        // An archive without metadata: the file contents it would write in the scope.
        None => listing
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .filter(|e| {
                e.path_bytes().is_some_and(|p| {
                    let top = p.split(|&b| b == b'/').next().unwrap_or_default();
                    filter.includes(std::ffi::OsStr::from_bytes(top))
                })
            })
            .fold(0u64, |sum, e| sum.saturating_add(e.size)),
    };
    let compose_dir = &ctx.settings.paths.compose_dir;
    let available_bytes = crate::space::available(compose_dir)?;
    let (diff, excluded) = tree_diff(ctx, listing, filter, false).await?;
    Ok(RollbackPlan {
        backup: entry,
        scope,
        diff,
        excluded,
        needed_bytes,
        needed_with_margin: needed_bytes.saturating_add(crate::space::margin(needed_bytes)),
        available_bytes,
        would_stop,
        engine_found,
    })
}

// ------------------------------------------------------------------------------ restore
pub(crate) async fn restore_to(
    ctx: &Ctx,
    req: RestoreRequest,
    progress: Progress,
) -> Result<RestoreReport> {
    if req.paths.is_empty() {
        return Err(Error::Usage("name at least one path to restore".into()));
    }
    let select: Vec<RelPath> = req
        .paths
        .iter()
        .map(|p| parse_inside(p))
        .collect::<Result<_>>()?;
    let dest = std::path::absolute(&req.dest).ctx("cannot resolve", &req.dest)?;
    if dest
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(Error::Usage(format!(
            "{} must not contain '..'; name the destination directory plainly",
            req.dest.display()
        )));
    }
    check_destination(ctx, &dest)?;
    let entry = usable_backup(ctx, req.id).await?;
    let created = prepare_destination(&dest, req.force)?;
    let staging = match create_staging(&dest) {
        Ok(s) => s,
        Err(e) => {
            if created {
                let _ = std::fs::remove_dir(&dest);
            }
            return Err(e);
        }
    };
    let result = restore_inner(ctx, &entry, &select, &dest, &staging, &progress).await;
    // The staging dir goes in every case; a destination this run created goes on failure.
    let cleanup = super::blocking({
        let staging = staging.clone();
        move || crate::fsutil::remove_path(&staging)
    })
    .await;
    match result {
        Ok((files, bytes)) => {
            cleanup?;
            Ok(RestoreReport {
                backup: entry,
                dest,
                paths: select.iter().map(|s| s.as_path().to_path_buf()).collect(),
                files,
                bytes,
            })
        }
        Err(e) => {
            if created && cleanup.is_ok() {
                let _ = std::fs::remove_dir(&dest);
            }
            Err(e)
        }
    }
}

/// Never into (or next to) what a rollback swaps or the tool's own state: the destination
/// must not be inside the compose dir, the storage dir or the catalog's dir, nor contain the
/// compose dir.
fn check_destination(ctx: &Ctx, dest: &Path) -> Result<()> {
    let p = &ctx.settings.paths;
    let d = crate::config::canonical_prefix(dest);
    let catalog_dir = p.db_file.parent().unwrap_or(&p.work_dir);
    for (what, dir) in [
        ("the compose dir (live data)", &p.compose_dir),
        ("the backup storage dir", &p.storage_dir),
        ("the catalog's dir", &catalog_dir.to_path_buf()),
    ] {
        let c = crate::config::canonical_prefix(dir);
        if d.starts_with(&c) {
            return Err(Error::Usage(format!(
                "{} is inside {what} {}; restore into a separate directory (and copy what you need from there)",
                dest.display(),
                dir.display()
            )));
        }
        if what.starts_with("the compose dir") && c.starts_with(&d) {
            return Err(Error::Usage(format!(
                "{} contains {what} {}; restore into a separate directory",
                dest.display(),
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Creates `dest` when missing (returns `true` then); refuses a non-empty one without
/// `force`, and anything that is not a directory.
fn prepare_destination(dest: &Path, force: bool) -> Result<bool> {
    match std::fs::metadata(dest) {
        Ok(m) if m.is_dir() => {
            let non_empty = std::fs::read_dir(dest)
                .ctx("cannot list", dest)?
                .next()
                .is_some();
            if non_empty && !force {
                return Err(Error::Usage(format!(
                    "{} is not empty; choose a new or empty directory, or pass --force to add to it (nothing in it is ever overwritten)",
                    dest.display()
                )));
            }
            Ok(false)
        }
        Ok(_) => Err(Error::Usage(format!(
            "{} exists and is not a directory",
            dest.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dest).ctx("cannot create", dest)?;
            Ok(true)
        }
        Err(e) => Err(Error::io("cannot stat", dest, e)),
    }
}

fn create_staging(dest: &Path) -> Result<PathBuf> {
    for n in 0..1000 {
        let staging = dest.join(format!("{RESTORE_PREFIX}{}-{n}", std::process::id()));
        match std::fs::create_dir(&staging) {
            Ok(()) => return Ok(staging),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io("cannot create staging dir", &staging, e)),
        }
    }
    Err(Error::Refused(format!(
        "too many leftover {RESTORE_PREFIX}* dirs in {}",
        dest.display()
    )))
}

async fn restore_inner(
    ctx: &Ctx,
    entry: &BackupEntry,
    select: &[RelPath],
    dest: &Path,
    staging: &Path,
    progress: &Progress,
) -> Result<(u64, u64)> {
    // A legacy backup's manifest is the one computed at adoption (the archive holds none).
    let manifest = ctx.legacy_manifest(&entry.record).await?;
    let key = ctx.key_for(&entry.record.file_path)?;
    let extracted = ctx
        .archive(|r| {
            ArchiveMsg::Extract(
                ExtractOptions {
                    archive: entry.record.file_path.clone(),
                    staging: staging.to_path_buf(),
                    filter: TopLevelFilter::All,
                    select: select.to_vec(),
                    restore_owner: crate::fsutil::is_root(),
                    threads: 0,
                    expected_sha256: entry.record.sha256.clone(),
                    manifest,
                    key,
                    durable: true,
                },
                progress.clone(),
                ctx.cancel.clone(),
                r,
            )
        })
        .await?;
    ctx.cancel.check()?;
    let (select, dest, staging) = (select.to_vec(), dest.to_path_buf(), staging.to_path_buf());
    let id = entry.record.id;
    super::blocking(move || {
        let missing: Vec<String> = select
            .iter()
            .filter(|s| !s.exists_nofollow(&staging).unwrap_or(false))
            .map(|s| s.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(Error::Usage(format!(
                "backup {id} has no {}; `nuwax-cli ls {id} [PATH]` shows what it holds",
                missing.join(", ")
            )));
        }
        let mut conflicts = Vec::new();
        merge(&staging, &dest, &mut conflicts, false)?;
        if !conflicts.is_empty() {
            let shown: Vec<String> = conflicts
                .iter()
                .take(5)
                .map(|c| c.display().to_string())
                .collect();
            return Err(Error::Usage(format!(
                "{} already exist{} in {} and would be overwritten ({}{}); nothing was restored. Choose a new or empty directory",
                conflicts.len(),
                if conflicts.len() == 1 { "s" } else { "" },
                dest.display(),
                shown.join(", "),
                if conflicts.len() > 5 { ", ..." } else { "" }
            )));
        }
        merge(&staging, &dest, &mut conflicts, true)?;
        crate::fsutil::sync_dir(&dest)
    })
    .await?;
    Ok((extracted.files, extracted.bytes))
}

/// Moves the content of `from` into `to`: an item missing in `to` is renamed there whole; a
/// directory present on both sides (a real one, not a symlink) is merged; anything else is a
/// conflict (recorded when `apply` is false, where nothing is moved).
fn merge(from: &Path, to: &Path, conflicts: &mut Vec<PathBuf>, apply: bool) -> Result<()> {
    let mut names: Vec<OsString> = Vec::new();
    for e in std::fs::read_dir(from).ctx("cannot list", from)? {
        names.push(e.ctx("cannot list", from)?.file_name());
    }
    names.sort();
    for name in names {
        let (src, dst) = (from.join(&name), to.join(&name));
        let src_dir = std::fs::symlink_metadata(&src)
            .ctx("cannot stat", &src)?
            .is_dir();
        match std::fs::symlink_metadata(&dst) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if apply {
                    std::fs::rename(&src, &dst).ctx("cannot move into place", &dst)?;
                }
            }
            Err(e) => return Err(Error::io("cannot stat", &dst, e)),
            Ok(m) if m.is_dir() && src_dir => merge(&src, &dst, conflicts, apply)?,
            Ok(_) => conflicts.push(dst),
        }
    }
    Ok(())
}
