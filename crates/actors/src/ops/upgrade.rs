//! The upgrade runner: an upgrade that goes wrong leaves the operator exactly where they were.
//!
//! Design note: lock -> open the release package once and validate it (safe paths, a
//! parseable compose file, nothing in the data scope; its SHA-256 taken while reading) -> stop
//! the services -> PreUpgrade backup of everything (no backup, no upgrade) -> unpack the same
//! open file into a staging dir, re-hashing it: bytes that differ from the validated ones, or
//! a Ctrl-C, end the upgrade here with nothing live changed -> swap it in like a
//! rollback (everything outside the data scope replaced; the data scope kept) -> write the new
//! version to `config.toml` atomically -> `compose up -d` -> wait for health. If anything after
//! the backup fails, or health does not come within the timeout, the pre-upgrade backup is
//! restored (code and data), the old version written back, and the old release started
//! (exit 5); if that fails too, exit 6 with the exact state. Each step is journaled, so a crash
//! mid-upgrade is rolled back by the next invocation.
//!
//! `.env` holds operator secrets: when the package ships no `.env`, the live one is kept;
//! when it ships one, it replaces the live one (the old one is in the pre-upgrade backup and
//! comes back on rollback).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use nuwax_store::{BackupType, UpgradeOutcome};
use serde::{Deserialize, Serialize};

use super::rollback::{RollbackRequest, RollbackScope};
use super::{BackupEntry, Ctx, auto_backup, backup, rollback, services};
use crate::actors::archive_actor::ArchiveMsg;
use crate::actors::docker_actor::DockerMsg;
use crate::actors::store_actor::StoreMsg;
use crate::docker::ContainerInfo;
use crate::error::{Error, Result};
use crate::exclude::ExcludeRule;
use crate::package::{OpenedPackage, PackageInfo};
use crate::progress::{Phase, Progress};
use crate::relpath::RelPath;
use crate::restore::{self, SwapPlan};

/// Prefix of an upgrade's work dir inside the compose dir.
pub const UPGRADE_PREFIX: &str = ".nuwax-upgrade-";

#[derive(Debug, Clone)]
pub struct UpgradeRequest {
    /// The release package: a `.tar.gz` of the new compose project dir without the data scope.
    pub package: PathBuf,
    /// The new version; default: the package's file name without `.tar.gz`.
    pub version: Option<String>,
    /// How long to wait for health; default `[upgrade] health_timeout`.
    pub health_timeout: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct UpgradeReport {
    pub upgrade_id: i64,
    pub from_version: String,
    pub to_version: String,
    pub backup: BackupEntry,
    pub package: PackageInfo,
}

/// Journal details of an upgrade.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct UpgradeJournal {
    pub upgrade_id: i64,
    pub from_version: String,
    pub to_version: String,
    #[serde(default)]
    pub backup_id: Option<i64>,
    #[serde(default)]
    pub work_dir: PathBuf,
    #[serde(default)]
    pub plan: Option<SwapPlan>,
    #[serde(default)]
    pub stopped: Vec<ContainerInfo>,
}

fn version_from_name(package: &Path) -> String {
    let name = package
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name
        .strip_suffix(".tar.gz")
        .or_else(|| name.strip_suffix(".tgz"))
        .unwrap_or(&name);
    if stem.is_empty() {
        format!("upgrade-{}", Utc::now().format("%Y%m%d%H%M%S"))
    } else {
        stem.to_owned()
    }
}

/// A PreUpgrade backup for another program (an external upgrade runner): stops what runs,
/// backs up everything, starts exactly what ran again.
pub(crate) async fn pre_upgrade_backup(ctx: &Ctx, progress: Progress) -> Result<BackupEntry> {
    let report = auto_backup::stopped_backup(ctx, BackupType::PreUpgrade, progress).await?;
    match (report.backup, report.backup_error, report.restart_error) {
        (Some(b), None, None) => Ok(b),
        (_, Some(e), _) => Err(e),
        (_, None, Some(e)) => Err(Error::Docker(format!(
            "the backup succeeded but restarting the services failed: {e}"
        ))),
        (None, None, None) => Err(Error::Internal("no backup was taken".into())),
    }
}

pub(crate) async fn upgrade(
    ctx: &Ctx,
    req: UpgradeRequest,
    progress: Progress,
) -> Result<UpgradeReport> {
    let paths = ctx.settings.paths.clone();
    let cfg = ctx.settings.config.clone();
    let compose_name = paths
        .compose_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "docker-compose.yml".into());
    progress.phase(Phase::Checking, None, None);
    // Opened once: validation and unpacking read this same file (see package.rs).
    let package = OpenedPackage::open(&req.package)?;
    let data_paths: Vec<String> = cfg
        .backup
        .data_paths
        .iter()
        .map(|d| d.to_string())
        .collect();
    let pkg = package.clone();
    let info = ctx
        .archive(|r| ArchiveMsg::ValidatePackage(pkg, compose_name, data_paths, r))
        .await?;
    let from = ctx.settings.service_version();
    let to = req
        .version
        .clone()
        .unwrap_or_else(|| version_from_name(&req.package));
    let health_timeout = req
        .health_timeout
        .unwrap_or(Duration::from_secs(cfg.upgrade.health_timeout));
    let compose = ctx.compose_or_bare();
    let containers = ctx.containers(&compose).await?;
    let running = services::running_persistent(&compose, containers.as_deref());
    let mut journal = UpgradeJournal {
        upgrade_id: 0,
        from_version: from.clone(),
        to_version: to.clone(),
        stopped: running.clone(),
        ..Default::default()
    };
    // One use case, one transaction: the upgrade's history row and its journal row.
    let details = serde_json::to_value(&journal)
        .map_err(|e| Error::Internal(format!("cannot encode journal: {e}")))?;
    let (op, upgrade_id) = {
        let (f, t) = (from.clone(), to.clone());
        ctx.store(|r| StoreMsg::BeginUpgradeOperation(f, t, details, r))
            .await?
    };
    journal.upgrade_id = upgrade_id;

    // Stop and back up: no backup, no upgrade.
    let backup = async {
        if !running.is_empty() {
            progress.phase(Phase::Stopping, None, Some(running.len() as u64));
            let list = running.clone();
            ctx.docker(|r| DockerMsg::Stop(list, progress.clone(), r))
                .await?;
        }
        let images =
            backup::images_after_gate(ctx, &compose, containers.is_some(), &progress).await?;
        backup::backup_locked(
            ctx,
            BackupType::PreUpgrade,
            compose.clone(),
            images,
            &progress,
        )
        .await
    }
    .await;
    let backup = match backup {
        Ok(b) => b,
        Err(e) => {
            progress.notice(format!("the pre-upgrade backup failed; not upgrading: {e}"));
            let restart = services::restart_exactly(ctx, &running, &progress).await;
            let msg = format!("pre-upgrade backup failed, nothing was changed: {e}");
            finish_upgrade(ctx, op, upgrade_id, UpgradeOutcome::Failed, Some(msg)).await?;
            if let Err(re) = restart {
                return Err(Error::Docker(format!(
                    "{e}; and restarting the services that were running failed: {re}"
                )));
            }
            return Err(e);
        }
    };
    journal.backup_id = Some(backup.record.id);
    ctx.store(|r| StoreMsg::SetUpgradeBackup(upgrade_id, backup.record.id, r))
        .await?;
    ctx.set_phase(op, "backed-up", &journal).await?;
    crate::faults::point("upgrade.after_backup");

    // Unpacked (and re-hashed) before anything live is touched: a package that is not
    // byte for byte the one validated is refused here, and the upgrade ends as if it had
    // not started (services started again, the pre-upgrade backup kept).
    let staged = async {
        let items = stage_package(ctx, op, &mut journal, &package, &info).await?;
        // Ctrl-C during unpacking: stop here, before the swap, with nothing changed.
        ctx.cancel.clone().check()?;
        Ok(items)
    }
    .await;
    match staged {
        Ok(_items) => {}
        Err(e) => {
            if !journal.work_dir.as_os_str().is_empty() {
                let _ = ctx.remove_tree(&journal.work_dir).await;
            }
            progress.notice(format!(
                "the release package could not be staged; nothing was changed, pre-upgrade backup {} is kept",
                backup.record.id
            ));
            let restart = services::restart_exactly(ctx, &running, &progress).await;
            let msg = format!("release package refused, nothing was changed: {e}");
            finish_upgrade(ctx, op, upgrade_id, UpgradeOutcome::Failed, Some(msg)).await?;
            if let Err(re) = restart {
                return Err(Error::Docker(format!(
                    "{e}; and restarting the services that were running failed: {re}"
                )));
            }
            return Err(e);
        }
    }

    let applied = apply_release(ctx, op, &mut journal, &info, &to, health_timeout, &progress).await;
    match applied {
        Ok(()) => {
            finish_upgrade(ctx, op, upgrade_id, UpgradeOutcome::Succeeded, None).await?;
            Ok(UpgradeReport {
                upgrade_id,
                from_version: from,
                to_version: to,
                backup,
                package: info,
            })
        }
        Err(cause) => {
            progress.notice(format!(
                "the upgrade to {to} failed: {cause}; rolling back to {from} from backup {}",
                backup.record.id
            ));
            roll_back_upgrade(ctx, op, &journal, &backup, &cause, &progress).await
        }
    }
}

/// Unpacks the validated package into the upgrade's work dir (journaled first), from the
/// same open file, refusing bytes that differ from the validated ones.
pub(crate) async fn stage_package(
    ctx: &Ctx,
    op: i64,
    journal: &mut UpgradeJournal,
    package: &OpenedPackage,
    info: &PackageInfo,
) -> Result<Vec<OsString>> {
    // Journaled before it exists: a kill right after creating it leaves nothing unknown.
    let work = restore::new_work_dir_path(&ctx.settings.paths.compose_dir, UPGRADE_PREFIX, op)?;
    journal.work_dir = work.clone();
    ctx.set_phase(op, "unpacking", journal).await?;
    crate::faults::point("upgrade.journaled_work_dir");
    restore::create_recorded_work_dir(&work)?;
    let staged = work.join("staged");
    crate::faults::point("upgrade.before_unpack");
    let (pkg, st, sha) = (package.clone(), staged.clone(), info.sha256.clone());
    let items = ctx
        .archive(|r| ArchiveMsg::UnpackPackage(pkg, st, sha, r))
        .await?;
    ctx.sync_filesystem(&staged).await?;
    Ok(items)
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn apply_release(
    ctx: &Ctx,
    op: i64,
    journal: &mut UpgradeJournal,
    info: &PackageInfo,
    to: &str,
    health_timeout: Duration,
    progress: &Progress,
) -> Result<()> {
    let paths = &ctx.settings.paths;
    let cfg = &ctx.settings.config;
    let work = journal.work_dir.clone();
    let filter = ctx.scope_filter(RollbackScope::App);
    let mut excludes = cfg.backup.exclude.rules.clone();
    if !info.top_level.iter().any(|t| t == ".env") {
        excludes.push(ExcludeRule::Path(
            RelPath::parse(".env").expect("a clean name"),
        ));
    }
    let plan = ctx.swap_prepare(&work, &filter, &excludes).await?;
    progress.phase(Phase::Swapping, None, Some(plan.items.len() as u64));
    journal.plan = Some(plan.clone());
    ctx.set_phase(op, "swapping", journal).await?;
    ctx.swap_apply(&plan).await?;
    ctx.set_phase(op, "applied", journal).await?;
    crate::faults::point("upgrade.after_swap");
    // From here on the work dir holds only the replaced release: whatever happens next
    // (the health wait failing, a crash: recovery of `starting`), it is removed, never
    // swapped back (the way back is the pre-upgrade backup).
    journal.plan = None;
    crate::config_edit::set_service_version(&paths.config_file, to)?;
    ctx.set_phase(op, "starting", journal).await?;
    crate::faults::point("upgrade.before_start");
    let compose = ctx.compose_project()?;
    services::compose_up(ctx, &compose, progress).await?;
    // The replaced release is removed while the new one's health is waited for: removing
    // a large app tree is not downtime.
    let remove = async {
        progress.phase(Phase::Removing, None, None);
        if let Err(e) = ctx.swap_commit(&plan).await {
            progress.notice(format!("warning: could not remove {}: {e}", work.display()));
        }
    };
    let (healthy, ()) = services::Started::project_within(compose, health_timeout)
        .wait_while(ctx, progress, remove)
        .await;
    healthy.map(|_| ())
}

/// Restores the pre-upgrade backup (code and data), the old version, and starts the old
/// release. Always returns an error: exit 5 when everything is back, 6 otherwise.
pub(crate) async fn roll_back_upgrade(
    ctx: &Ctx,
    op: i64,
    journal: &UpgradeJournal,
    backup: &BackupEntry,
    cause: &Error,
    progress: &Progress,
) -> Result<UpgradeReport> {
    let paths = &ctx.settings.paths;
    // An unfinished swap is reverted first so the rollback starts from a whole tree. If it
    // cannot be (a conflict), its work dir is left as it is: the restore below brings
    // back everything from the pre-upgrade backup either way, and nothing is deleted.
    match &journal.plan {
        Some(plan) => {
            if let Err(e) = ctx.swap_revert(plan).await {
                progress.notice(format!("warning: could not undo the swap first: {e}"));
            }
        }
        None if !journal.work_dir.as_os_str().is_empty() => {
            let _ = ctx.remove_tree(&journal.work_dir).await;
        }
        None => {}
    }
    // The way back runs to the end even when a signal interrupted the way forward.
    let way_back = ctx.uninterruptible();
    let restored = rollback::rollback(
        &way_back,
        RollbackRequest {
            id: backup.record.id,
            scope: RollbackScope::All,
            start: true,
        },
        progress.clone(),
    )
    .await;
    let version =
        crate::config_edit::set_service_version(&paths.config_file, &journal.from_version);
    let (outcome, err) = match (&restored, &version) {
        (Ok(r), Ok(_)) if r.start_error.is_none() => (
            UpgradeOutcome::RolledBack,
            Error::UpgradeRolledBack(format!(
                "the upgrade from {} to {} failed: {cause}. It was rolled back automatically: compose file, .env, config, app and data were restored from pre-upgrade backup {}, config.toml says {} again, and the services are running",
                journal.from_version, journal.to_version, backup.record.id, journal.from_version
            )),
        ),
        (Ok(r), Ok(_)) => (
            UpgradeOutcome::RollbackFailed,
            Error::UpgradeRollbackFailed(format!(
                "the upgrade from {} to {} failed: {cause}. The files and data of {} were restored from backup {} and config.toml says {} again, but starting the old release failed: {}. Fix that, then run `nuwax-cli docker-service start`",
                journal.from_version,
                journal.to_version,
                journal.from_version,
                backup.record.id,
                journal.from_version,
                r.start_error.as_deref().unwrap_or("")
            )),
        ),
        (Err(re), _) => (
            UpgradeOutcome::RollbackFailed,
            Error::UpgradeRollbackFailed(format!(
                "the upgrade from {} to {} failed: {cause}. The automatic rollback failed too: {re}. The compose dir holds the NEW release (with the data as the new release left it); config.toml {}. The pre-upgrade backup {} ({}) is intact: restore it with `nuwax-cli rollback {} --force --rollback-data`",
                journal.from_version,
                journal.to_version,
                match &version {
                    Ok(_) => format!("says {} again", journal.from_version),
                    Err(e) => format!("could not be reset ({e})"),
                },
                backup.record.id,
                backup.record.file_path.display(),
                backup.record.id
            )),
        ),
        (Ok(_), Err(ve)) => (
            UpgradeOutcome::RollbackFailed,
            Error::UpgradeRollbackFailed(format!(
                "the upgrade from {} to {} failed: {cause}. The old release and data were restored from backup {}, but writing version {} back to config.toml failed: {ve}; set [versions] docker_service = \"{}\" by hand",
                journal.from_version,
                journal.to_version,
                backup.record.id,
                journal.from_version,
                journal.from_version
            )),
        ),
    };
    let upgrade_id = journal.upgrade_id;
    finish_upgrade(ctx, op, upgrade_id, outcome, Some(err.to_string())).await?;
    if outcome == UpgradeOutcome::RolledBack && cause.kind() == crate::error::ErrorKind::Interrupted
    {
        // Interrupted and fully rolled back: the exit code says interrupted (128 + signal).
        return Err(Error::Interrupted);
    }
    Err(err)
}

pub(crate) async fn finish_upgrade(
    ctx: &Ctx,
    op: i64,
    upgrade_id: i64,
    outcome: UpgradeOutcome,
    error: Option<String>,
) -> Result<()> {
    ctx.store(|r| StoreMsg::FinishUpgradeOperation(op, upgrade_id, outcome, error, r))
        .await
}

/// Recovery of an upgrade whose process died: revert an unfinished swap; once the new
/// release was (partly) applied, restore the pre-upgrade backup and the old version.
pub(crate) async fn recover_upgrade(ctx: &Ctx, op: &nuwax_store::Operation) -> Result<String> {
    let j: UpgradeJournal = serde_json::from_value(op.details.clone())
        .map_err(|e| Error::Internal(format!("unreadable journal of operation {}: {e}", op.id)))?;
    let mut what = format!(
        "upgrade from {} to {} was interrupted (pid {} died in phase '{}')",
        j.from_version, j.to_version, op.pid, op.phase
    );
    let outcome;
    match op.phase.as_str() {
        "swapping" | "applied" | "starting" => {
            if let (Some(plan), "swapping") = (&j.plan, op.phase.as_str()) {
                let plan = plan.clone().checked(&ctx.settings.paths.compose_dir)?;
                ctx.swap_revert(&plan).await?;
            } else if !j.work_dir.as_os_str().is_empty() {
                let work = restore::checked_work_dir(&ctx.settings.paths.compose_dir, &j.work_dir)?;
                let _ = ctx.remove_tree(&work).await;
            }
            let Some(backup_id) = j.backup_id else {
                return Err(Error::Internal("upgrade journal without its backup".into()));
            };
            rollback::rollback(
                ctx,
                RollbackRequest {
                    id: backup_id,
                    scope: RollbackScope::All,
                    start: !j.stopped.is_empty(),
                },
                Progress::none(),
            )
            .await?;
            crate::config_edit::set_service_version(
                &ctx.settings.paths.config_file,
                &j.from_version,
            )?;
            what.push_str(&format!(
                "; rolled back to {} from pre-upgrade backup {backup_id}",
                j.from_version
            ));
            outcome = UpgradeOutcome::RolledBack;
        }
        _ => {
            if !j.work_dir.as_os_str().is_empty() {
                let work = restore::checked_work_dir(&ctx.settings.paths.compose_dir, &j.work_dir)?;
                ctx.remove_tree(&work).await?;
            }
            what.push_str(&services::restart_stopped(ctx, &j.stopped).await?);
            outcome = UpgradeOutcome::Failed;
        }
    }
    let note = what.clone();
    ctx.store(|r| StoreMsg::FinishUpgrade(j.upgrade_id, outcome, Some(note), r))
        .await?;
    Ok(what)
}
