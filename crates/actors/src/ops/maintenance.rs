//! Catalog maintenance: `prune` (retention), `reindex` (rebuild the catalog from the
//! archives' own metadata) and `import` (adopt an archive after verifying it).
//!
//! Design note: the archive is the source of truth (duplicati#2203 shows what happens when a
//! local database is the only record): every archive carries `info.json` and a manifest, so a
//! lost or damaged catalog is rebuilt from the storage dir alone, and an archive copied from
//! another host is adopted only after a full verification.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use nuwax_store::{BackupRecord, BackupStatus, BackupType};

use super::{BackupEntry, Ctx};
use crate::actors::archive_actor::ArchiveMsg;
use crate::actors::remote_actor::Deleted;
use crate::actors::store_actor::StoreMsg;
use crate::archive::{ArchiveInfo, VerifyReport};
use crate::archive::{CancelFlag, LegacyAdoption, LegacyName};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, copy_atomically};
use crate::progress::Progress;
use crate::retention::{Decision, KeepRules, Presence, REASON_MISSING};
use std::collections::HashSet;

/// What `reindex` did.
#[derive(Debug, Clone, Default)]
pub struct ReindexReport {
    /// Archives added to the catalog.
    pub added: Vec<BackupEntry>,
    /// Archives already in the catalog.
    pub known: usize,
    /// Files in the storage dir that are not valid archives (path, why).
    pub invalid: Vec<(PathBuf, String)>,
    /// Catalog rows whose archive file is gone.
    pub missing: Vec<BackupEntry>,
    /// Where an unusable catalog was moved before this rebuild (`--move-broken-catalog`).
    pub moved_aside: Option<PathBuf>,
}

/// A `*.partial` file is an archive still being written (or left by a crash): never a backup,
/// whatever its content. `import` refuses it (exit 2), `reindex` skips it, and nothing adopts
/// it into the catalog.
pub(crate) fn refuse_partial(path: &Path) -> Result<()> {
    if fsutil::is_partial(path) {
        return Err(Error::Usage(format!(
            "{} is a .partial file: an archive that was never finished (a backup still running, or one interrupted), not a backup; import only complete .tar.gz archives",
            path.display()
        )));
    }
    Ok(())
}

/// The archive file exists (as a regular file), as `BackupEntry::file_exists` says it.
fn archive_present(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// Added to a dropped backup that has a remote copy: only its local archive goes.
pub const REASON_REMOTE_STAYS: &str =
    "only the local archive goes: the remote copy and the catalog entry stay (remote-only)";

/// Applies retention rules to the local archives. With `dry_run`, only says what it would do.
///
/// A backup with a recorded remote copy keeps its catalog row: when its archive is not here
/// it is remote-only and kept (restorable: a rollback pulls it); when it is dropped, only
/// its local archive is deleted. Only a row with neither a local archive nor a remote copy
/// is removed as "archive file missing".
///
/// A backup planned as "archive missing" loses only its catalog row, and only while its
/// file is still missing: an archive that reappeared (storage remounted) is never deleted
/// on the strength of a plan that did not count it.
pub(crate) async fn prune(ctx: &Ctx, rules: &KeepRules, dry_run: bool) -> Result<Vec<Decision>> {
    let backups = ctx.store(StoreMsg::ListBackups).await?;
    let upgrades = ctx.store(StoreMsg::ListUpgrades).await?;
    let remote: HashSet<i64> = ctx
        .store(StoreMsg::ListRemoteCopies)
        .await?
        .into_iter()
        .map(|c| c.backup_id)
        .collect();
    let present = |b: &BackupRecord| {
        if archive_present(&b.file_path) {
            Presence::Here
        } else if remote.contains(&b.id) {
            Presence::RemoteOnly
        } else {
            Presence::Missing
        }
    };
    let mut decisions = crate::retention::plan(&backups, present, rules, &upgrades, Utc::now())?;
    for d in decisions
        .iter_mut()
        .filter(|d| !d.keep && remote.contains(&d.id))
    {
        d.reasons.push(REASON_REMOTE_STAYS.into());
    }
    if dry_run {
        return Ok(decisions);
    }
    for d in decisions.iter().filter(|d| !d.keep) {
        // What the plan saw, not what the disk says now.
        let planned_missing = d.reasons.iter().any(|r| r == REASON_MISSING);
        if planned_missing {
            let path = backups
                .iter()
                .find(|b| b.id == d.id)
                .map(|b| b.file_path.clone());
            if path.is_some_and(|p| archive_present(&p)) {
                tracing::warn!(id = d.id, "archive reappeared during prune: kept");
                continue;
            }
            let id = d.id;
            ctx.store(|r| StoreMsg::DeleteBackup(id, r)).await?;
            continue;
        }
        delete_backup(ctx, d.id, false).await?;
    }
    Ok(decisions)
}

/// Rebuilds catalog rows from the archives in the storage dir (oldest first, so a fresh
/// catalog gets the same ids in the same order) and flags rows whose file is gone.
pub(crate) async fn reindex(ctx: &Ctx, progress: Progress) -> Result<ReindexReport> {
    let dir = ctx.settings.paths.storage_dir.clone();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                crate::encryption::is_archive_name(&p.to_string_lossy())
                    && refuse_partial(p).is_ok()
                    && p.is_file()
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io("cannot list storage dir", &dir, e)),
    };
    let mut report = ReindexReport {
        moved_aside: ctx.store(StoreMsg::MovedAside).await?,
        ..ReindexReport::default()
    };
    // An encrypted archive's metadata is inside its ciphertext: read with the key given
    // (`--identity`, `[encryption] identity_file`), else reported, never a hard failure.
    let key = ctx.given_key()?;
    let mut candidates = Vec::new();
    for f in files.drain(..) {
        let p = f.clone();
        if ctx
            .store(|r| StoreMsg::FindBackupByPath(p, r))
            .await?
            .is_some()
        {
            report.known += 1;
            continue;
        }
        if crate::encryption::is_encrypted_name(&f) && key.is_none() {
            report.invalid.push((
                f,
                "it is encrypted (age) and its metadata is inside the ciphertext: run `nuwax-cli reindex --identity FILE` (or --passphrase-file FILE, or set [encryption] identity_file) to add it".into(),
            ));
            continue;
        }
        let (p, k) = (f.clone(), key.clone());
        let created_at = match ctx.archive(|r| ArchiveMsg::ProbeInfoWith(p, k, r)).await {
            Ok(Some(info)) => parse_created_at(&info),
            // No metadata: an archive of the original nuwax-cli, dated by its name.
            Ok(None) => legacy_name(&f).map(|n| n.created_at),
            Err(e) => Err(e.to_string()),
        };
        match created_at {
            Ok(t) => candidates.push((t, f)),
            Err(e) => report.invalid.push((f, e)),
        }
    }
    candidates.sort();
    for (_, f) in candidates {
        match adopt(ctx, &f, progress.clone()).await {
            Ok(entry) => report.added.push(entry),
            Err(e) => report.invalid.push((f, e.to_string())),
        }
    }
    for b in ctx.list_backups().await? {
        // A remote-only backup is not missing: its archive is on the remote.
        if b.record.status == BackupStatus::Completed && !b.file_exists && !b.remote_copy {
            report.missing.push(b);
        }
    }
    Ok(report)
}

/// Verifies an archive and adds it to the catalog; an archive outside the storage dir is
/// copied in first (atomically), the original left alone.
pub(crate) async fn import(ctx: &Ctx, file: &Path, progress: Progress) -> Result<BackupEntry> {
    let file = std::path::absolute(file).ctx("cannot resolve", file)?;
    refuse_partial(&file)?;
    if !file.is_file() {
        return Err(Error::Usage(format!("{} is not a file", file.display())));
    }
    let dir = &ctx.settings.paths.storage_dir;
    let dest = if file.parent() == Some(dir.as_path()) {
        file.clone()
    } else {
        let name = file
            .file_name()
            .ok_or_else(|| Error::Usage(format!("{} has no file name", file.display())))?;
        dir.join(name)
    };
    let p = dest.clone();
    if let Some(existing) = ctx.store(|r| StoreMsg::FindBackupByPath(p, r)).await? {
        return Err(Error::Usage(format!(
            "{} is already in the catalog as backup {}",
            dest.display(),
            existing.id
        )));
    }
    // An archive of the original nuwax-cli: read once (checksum and manifest), then copied.
    let probed = file.clone();
    if let Ok(None) = ctx.archive(|r| ArchiveMsg::ProbeInfo(probed, r)).await {
        let adoption = read_legacy(ctx, &file, progress).await?;
        if dest != file {
            copy_into_storage(&file, &dest, dir).await?;
        }
        return insert_legacy(ctx, &dest, adoption).await;
    }
    // Verify the source before copying anything.
    let key = ctx.given_key()?;
    let report = ctx
        .archive(|r| ArchiveMsg::Verify {
            path: file.clone(),
            expected_sha256: None,
            manifest: None,
            key,
            progress: progress.clone(),
            cancel: ctx.cancel.clone(),
            reply: r,
        })
        .await?;
    if !report.is_ok() {
        return Err(Error::Corrupt {
            path: file.clone(),
            detail: report.problems.join("; "),
        });
    }
    if dest != file {
        copy_into_storage(&file, &dest, dir).await?;
    }
    adopt(ctx, &dest, progress).await
}

/// Copies an archive being imported into the storage dir (atomically), never over a file.
async fn copy_into_storage(file: &Path, dest: &Path, dir: &Path) -> Result<()> {
    if dest.exists() {
        return Err(Error::Refused(format!(
            "{} already exists in the storage dir; rename the file to import",
            dest.display()
        )));
    }
    std::fs::create_dir_all(dir).ctx("cannot create storage dir", dir)?;
    let (from, to) = (file.to_path_buf(), dest.to_path_buf());
    super::blocking(move || copy_atomically(&from, &to)).await
}

/// What the name of an archive without metadata says, or why it cannot be adopted.
fn legacy_name(path: &Path) -> std::result::Result<LegacyName, String> {
    path.file_name()
        .and_then(LegacyName::parse)
        .ok_or_else(|| {
            "it has no .nuwax-backup/info.json (not made by this tool), and its name is not one the original nuwax-cli gave (backup_{manual|pre-upgrade}_v{VERSION}_{YYYY-MM-DD_HH-MM-SS}.tar.gz), so its type, version and time are unknown".to_string()
        })
}

/// Reads an archive of the original nuwax-cli once: its SHA-256 and its manifest, every
/// entry through the same rules as any archive's. Any finding refuses it (exit 4).
async fn read_legacy(ctx: &Ctx, path: &Path, progress: Progress) -> Result<LegacyAdoption> {
    let name = legacy_name(path).map_err(|detail| Error::Corrupt {
        path: path.to_path_buf(),
        detail,
    })?;
    let adoption = ctx
        .archive(|r| ArchiveMsg::AdoptLegacy {
            path: path.to_path_buf(),
            name,
            progress,
            cancel: ctx.cancel.clone(),
            reply: r,
        })
        .await?;
    if !adoption.problems.is_empty() {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            detail: format!(
                "(an archive of the original nuwax-cli) {}",
                adoption.problems.join("; ")
            ),
        });
    }
    Ok(adoption)
}

/// Inserts the catalog row of a legacy archive at `path` (in the storage dir) with the
/// manifest computed when it was read.
async fn insert_legacy(ctx: &Ctx, path: &Path, adoption: LegacyAdoption) -> Result<BackupEntry> {
    let info = &adoption.manifest.info;
    let created_at =
        parse_created_at(info).map_err(|detail| Error::Internal(format!("legacy {detail}")))?;
    let record = adopted_record(
        path,
        info,
        created_at,
        adoption.size,
        &adoption.sha256,
        adoption.manifest.entries.len() as u64,
        true,
    );
    let manifest = serde_json::to_string(&adoption.manifest)
        .map_err(|e| Error::Internal(format!("cannot encode a manifest: {e}")))?;
    let id = ctx
        .store(|r| StoreMsg::InsertLegacyBackup(Box::new(record), manifest, r))
        .await?;
    ctx.get_backup(id).await
}

/// Verifies an archive in the storage dir and inserts its catalog row from its metadata
/// (for an archive of the original nuwax-cli: from its name and the one read of it).
pub(crate) async fn adopt(ctx: &Ctx, path: &Path, progress: Progress) -> Result<BackupEntry> {
    refuse_partial(path)?;
    let probed = path.to_path_buf();
    if let Ok(None) = ctx.archive(|r| ArchiveMsg::ProbeInfo(probed, r)).await {
        let adoption = read_legacy(ctx, path, progress).await?;
        return insert_legacy(ctx, path, adoption).await;
    }
    let key = ctx.given_key()?;
    let report = ctx
        .archive(|r| ArchiveMsg::Verify {
            path: path.to_path_buf(),
            expected_sha256: None,
            manifest: None,
            key,
            progress,
            cancel: CancelFlag::default(),
            reply: r,
        })
        .await?;
    if !report.is_ok() {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            detail: report.problems.join("; "),
        });
    }
    adopt_verified(ctx, path, &report).await
}

/// Inserts the catalog row of an archive in the storage dir that `report` verified.
pub(crate) async fn adopt_verified(
    ctx: &Ctx,
    path: &Path,
    report: &VerifyReport,
) -> Result<BackupEntry> {
    let info = report.info.clone().ok_or_else(|| Error::Corrupt {
        path: path.to_path_buf(),
        detail: "no info.json".into(),
    })?;
    let created_at = parse_created_at(&info).map_err(|detail| Error::Corrupt {
        path: path.to_path_buf(),
        detail,
    })?;
    let record = adopted_record(
        path,
        &info,
        created_at,
        report.size,
        &report.sha256,
        report.entries,
        false,
    );
    // A hot backup stays hot in the catalog: a rollback of it must say that its database
    // files were left out and the dump restores them.
    let id = ctx
        .store(|r| StoreMsg::InsertAdoptedBackup(Box::new(record), info.hot, r))
        .await?;
    ctx.get_backup(id).await
}

/// The creation time an archive's `info.json` records (RFC 3339), or why it is unreadable.
fn parse_created_at(info: &ArchiveInfo) -> std::result::Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(&info.created_at)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("created_at {:?}: {e}", info.created_at))
}

/// The catalog row of an archive at `path` (in the storage dir) that was just read whole and
/// found sound: completed and verified now, its type and version from `info`, with the
/// archive's size and SHA-256 and its number of entries. A legacy archive (of the original
/// nuwax-cli) records no compose project.
fn adopted_record(
    path: &Path,
    info: &ArchiveInfo,
    created_at: DateTime<Utc>,
    size: u64,
    sha256: &str,
    entries: u64,
    legacy: bool,
) -> BackupRecord {
    BackupRecord {
        id: 0,
        file_path: path.to_path_buf(),
        backup_type: BackupType::parse(&info.backup_type).unwrap_or(BackupType::Manual),
        service_version: info.service_version.clone(),
        status: BackupStatus::Completed,
        size: Some(size),
        sha256: Some(sha256.to_string()),
        entry_count: Some(entries),
        error: None,
        created_at,
        finished_at: Some(created_at),
        owner_pid: None,
        verified_at: Some(Utc::now()),
        compose_project: (!legacy).then(|| info.compose_project.clone()),
        legacy,
    }
}

/// What `delete-backup` did.
#[derive(Debug, Clone)]
pub struct DeleteReport {
    /// The backup as it was before the delete.
    pub entry: BackupEntry,
    /// The local archive was deleted (it may have been missing already).
    pub local_deleted: bool,
    /// The remote copy deleted (`--remote`): its object name.
    pub remote_deleted: Option<String>,
    /// The catalog entry stays because the remote copy does (the backup is now remote-only).
    pub kept_remote_only: bool,
}

/// Deletes a backup's local archive, and with `remote` its remote copy too.
///
/// The remote copy is never deleted unless asked. A backup with a recorded remote copy
/// keeps its catalog entry when only the local archive goes (it is remote-only now, still
/// restorable); deleting a remote-only backup without `remote` is refused (exit 2), since
/// that would drop the only record of a restorable backup. With `remote`, the remote copy is
/// deleted first (sidecar, then archive object); if the server refuses, nothing local is
/// touched.
pub(crate) async fn delete_backup(ctx: &Ctx, id: i64, remote: bool) -> Result<DeleteReport> {
    let entry = ctx.get_backup(id).await?;
    if entry.record.status == BackupStatus::Running {
        return Err(Error::Refused(format!(
            "backup {id} is still being written (pid {}); wait for it to finish",
            entry.record.owner_pid.unwrap_or(0)
        )));
    }
    // The catalog is input like any other: only a file of the storage dir is deleted.
    let path = ctx.storage_archive_path(&entry.record.file_path)?;
    let here = std::fs::symlink_metadata(&path).is_ok();
    let copy = ctx.store(move |r| StoreMsg::GetRemoteCopy(id, r)).await?;
    let mut report = DeleteReport {
        entry,
        local_deleted: false,
        remote_deleted: None,
        kept_remote_only: false,
    };
    if remote {
        let rs = ctx.settings.remote.as_ref().ok_or_else(|| {
            Error::Usage(
                "delete-backup --remote: no [remote] section in config.toml; nothing was deleted"
                    .into(),
            )
        })?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::Usage(format!("{} has no UTF-8 file name", path.display())))?
            .to_string();
        // A copy encrypted on its way out is `<name>.age` on the remote.
        let sealed = format!("{name}{}", crate::encryption::AGE_SUFFIX);
        let name = match &copy {
            Some(c) if c.object_key == rs.object_key(&sealed) => sealed,
            _ => name,
        };
        let key = rs.object_key(&name);
        if let Some(c) = &copy
            && c.object_key != key
        {
            return Err(Error::Usage(format!(
                "backup {id}'s remote copy is {}, not under the configured remote {}; nothing was deleted",
                c.object_key, rs.url
            )));
        }
        match super::remote::delete_copy(ctx, rs, &name).await? {
            Deleted::Yes => report.remote_deleted = Some(key),
            Deleted::Refused(answer) => {
                return Err(Error::Refused(format!(
                    "the remote refused to delete {key} (object lock, or credentials without delete rights): {answer}; the local archive and the catalog entry were kept"
                )));
            }
        }
    } else if let Some(c) = &copy
        && !here
    {
        return Err(Error::Usage(format!(
            "backup {id}'s only copy is on the remote ({}); it stays in the catalog because it can be restored. `delete-backup {id} --remote` deletes it there and drops the catalog entry",
            c.object_key
        )));
    }
    if here {
        std::fs::remove_file(&path).ctx("cannot delete archive", &path)?;
        fsutil::sync_dir(&ctx.settings.paths.storage_dir)?;
        report.local_deleted = true;
    }
    if copy.is_some() && !remote {
        report.kept_remote_only = true;
    } else {
        ctx.store(|r| StoreMsg::DeleteBackup(id, r)).await?;
    }
    Ok(report)
}

// ----------------------------------------------------------------------------- verify
/// Re-reads an archive completely: checksum, gzip, tar, manifest, every file's hash.
pub(crate) async fn verify(
    ctx: &Ctx,
    id: i64,
    progress: Progress,
) -> Result<(BackupEntry, VerifyReport)> {
    let entry = ctx.get_backup(id).await?;
    if !entry.file_exists {
        return Err(Error::ArchiveMissing {
            id,
            path: entry.record.file_path.clone(),
        });
    }
    let manifest = ctx.legacy_manifest(&entry.record).await?;
    let key = ctx.given_key()?;
    let report = ctx
        .archive(|r| ArchiveMsg::Verify {
            path: entry.record.file_path.clone(),
            expected_sha256: entry.record.sha256.clone(),
            manifest,
            key,
            progress,
            cancel: ctx.cancel.clone(),
            reply: r,
        })
        .await?;
    if report.is_ok() && report.content_checked && entry.record.status == BackupStatus::Completed {
        ctx.store(|r| StoreMsg::MarkVerified(id, Utc::now(), r))
            .await?;
    }
    Ok((entry, report))
}
