//! `rollback` / `rollback-data-only`: checksum while extracting into a staging dir, stop, the
//! swap (`restore.rs`), start with health (DESIGN.md section 5), and only then the removal
//! of the replaced files (journaled as `cleaning`: recovery finishes it), so the services
//! are down for the swap, not for the removal of a large tree.

use nuwax_store::{BackupRecord, BackupStatus, OperationKind, OperationState};
use serde::{Deserialize, Serialize};

use super::{BackupEntry, services};
use crate::archive::{ExtractOptions, Manifest, TopLevelFilter};
use crate::docker::ContainerInfo;
use crate::restore::{self, SwapPlan};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use super::Ctx;
use crate::actors::archive_actor::ArchiveMsg;
use crate::actors::docker_actor::DockerMsg;
use crate::actors::store_actor::StoreMsg;
use crate::error::{Error, IoContext, Result};
use crate::progress::Progress;

/// What a rollback restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RollbackScope {
    /// Everything in the archive except the data scope: the app version.
    App,
    /// Everything in the archive.
    All,
    /// The data scope only.
    DataOnly,
}

impl RollbackScope {
    pub fn describe(self) -> &'static str {
        match self {
            RollbackScope::App => "the app version (everything except the data scope)",
            RollbackScope::All => "everything: app version and data",
            RollbackScope::DataOnly => "the data scope only",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RollbackRequest {
    pub id: i64,
    pub scope: RollbackScope,
    /// Start the services after the restore and wait for health (default). `false` leaves
    /// them stopped.
    pub start: bool,
}

#[derive(Debug, Clone)]
pub struct RollbackReport {
    pub backup: BackupEntry,
    pub scope: RollbackScope,
    /// Top-level items replaced by the archive's version.
    pub restored: Vec<String>,
    /// Top-level items in scope that the archive does not have (removed).
    pub removed: Vec<String>,
    /// Containers this rollback stopped.
    pub stopped: Vec<ContainerInfo>,
    pub files: u64,
    pub bytes: u64,
    /// The services were started and are healthy.
    pub services_started: bool,
    /// The restore succeeded but starting the services failed: why.
    pub start_error: Option<String>,
    /// The backup was made by the original nuwax-cli: only `data/` and `app/` were in scope.
    pub legacy: bool,
    /// `config.toml`'s `[versions] docker_service` after an app restore: what was written.
    pub version: Option<VersionUpdate>,
    /// From the start of the rollback until the swap was committed: the restored files are
    /// live and the services can start.
    pub committed_after: std::time::Duration,
    /// From the start of the rollback until the services were started again and healthy
    /// (before the replaced files are removed); `None` when they were not started.
    pub started_after: Option<std::time::Duration>,
    /// From the stop of the services until they were started again: the downtime; `None`
    /// when nothing was stopped or nothing started.
    pub downtime: Option<std::time::Duration>,
    /// Removing the replaced files after the start.
    pub cleanup: std::time::Duration,
}

/// What a rollback that restored the app did to `[versions] docker_service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionUpdate {
    /// Set to the backup's version; the previous value, if the key was there.
    Written {
        version: String,
        previous: Option<String>,
    },
    /// Already the backup's version.
    Unchanged(String),
    /// Writing it failed (the restore itself is complete).
    Failed { version: String, error: String },
}

/// Journal details of a rollback operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RollbackJournal {
    pub backup_id: i64,
    pub work_dir: PathBuf,
    pub scope: RollbackScope,
    #[serde(default)]
    pub plan: Option<SwapPlan>,
    #[serde(default)]
    pub stopped: Vec<ContainerInfo>,
    /// SHA-256 of the compose file before the swap (to know whether containers must be
    /// recreated from the restored definitions).
    #[serde(default)]
    pub compose_before: Option<String>,
    /// The backup's service version, when the scope restores the app: written to
    /// `config.toml` once the swap is committed (by recovery too, if the process died).
    #[serde(default)]
    pub service_version: Option<String>,
}

// ----------------------------------------------------------------------------- rollback
/// Restores a scope of a backup: checksum, staged extraction with per-file verification,
/// stop, swap with undo (the swap engine in `restore.rs`).
pub(crate) async fn rollback(
    ctx: &Ctx,
    req: RollbackRequest,
    progress: Progress,
) -> Result<RollbackReport> {
    let began = Instant::now();
    let entry = ctx.get_backup(req.id).await?;
    // An encrypted backup needs its key: without one, exit 2 before anything is downloaded,
    // stopped or extracted.
    let key = ctx.key_for(&entry.record.file_path)?;
    // Only the remote has the archive (a new host after `reindex --remote`): pull it first.
    let entry = if entry.record.status == BackupStatus::Completed {
        super::remote::ensure_local(ctx, entry, &progress).await?
    } else {
        entry
    };
    let record = &entry.record;
    if record.status != BackupStatus::Completed {
        return Err(Error::Usage(format!(
            "backup {} is {:?}{}; only a Completed backup can be restored",
            req.id,
            record.status,
            record
                .error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        )));
    }
    if !entry.file_exists {
        return Err(Error::ArchiveMissing {
            id: req.id,
            path: record.file_path.clone(),
        });
    }
    if let Some(key) = &key {
        // A wrong key is exit 4 here, before the services are asked about or stopped.
        let (path, key) = (record.file_path.clone(), key.clone());
        super::blocking(move || crate::archive::crypt::check_key(&path, &key)).await?;
    }
    let paths = ctx.settings.paths.clone();
    if !paths.compose_dir.is_dir() {
        std::fs::create_dir_all(&paths.compose_dir)
            .ctx("cannot create compose dir", &paths.compose_dir)?;
    }
    // Ask the engine first: an unreachable engine refuses before any work.
    let project = ctx.project_name();
    let containers = ctx
        .docker(|r| DockerMsg::Containers(project.clone(), r))
        .await?;
    if containers.is_none() {
        progress.notice("warning: no Docker engine socket found; not stopping any containers");
    }

    // 1. The archive's SHA-256 is checked against the catalog while it is extracted into
    //    the staging dir (one read of the archive, not two), and before anything live is
    //    touched: `extract` fails on a mismatch, and nothing is swapped in then.
    //    A legacy backup (made by the original nuwax-cli) has no metadata of its own: its
    //    manifest comes from the catalog, and only its `data/` and `app/` are in scope.
    let legacy = ctx.legacy_manifest(record).await?;
    let filter = match &legacy {
        Some(manifest) => {
            let filter = Ctx::legacy_scope_filter(req.scope, manifest);
            let others: Vec<String> = manifest
                .info
                .top_level_bytes
                .keys()
                .map(|k| k.to_string())
                .filter(|k| !crate::archive::LEGACY_ITEMS.contains(&k.as_str()))
                .collect();
            if !others.is_empty() {
                progress.notice(format!(
                    "backup {} also holds {}: a restore of a backup made by the original nuwax-cli takes only data/ and app/, the rest stays as it is",
                    req.id,
                    others.join(", ")
                ));
            }
            if matches!(&filter, TopLevelFilter::Only(items) if items.is_empty()) {
                return Err(Error::Usage(format!(
                    "backup {} was made by the original nuwax-cli and holds nothing that a restore of {} takes (it can only restore data/ and app/); nothing was changed",
                    req.id,
                    req.scope.describe()
                )));
            }
            filter
        }
        None => ctx.scope_filter(req.scope),
    };
    // Staging needs the scope's size on the compose dir's filesystem (the old content
    // stays until the swap is done, so nothing is freed before).
    let info = match &legacy {
        Some(manifest) => manifest.info.clone(),
        None => match ctx
            .archive(|r| ArchiveMsg::ReadInfo(record.file_path.clone(), key.clone(), r))
            .await
        {
            Ok(info) => info,
            // An unreadable head: if the file is not the one the catalog recorded, say that.
            Err(e) => return Err(checksum_error(ctx, record, &progress).await?.unwrap_or(e)),
        },
    };
    crate::space::ensure(&paths.compose_dir, space_needed(&info, &filter, &entry)?)?;
    let mut journal = RollbackJournal {
        backup_id: req.id,
        work_dir: PathBuf::new(),
        scope: req.scope,
        plan: None,
        stopped: Vec::new(),
        compose_before: None,
        service_version: (req.scope != RollbackScope::DataOnly)
            .then(|| record.service_version.clone()),
    };
    let op = ctx
        .store(|r| {
            StoreMsg::BeginOperation(
                OperationKind::Rollback,
                serde_json::to_value(&journal).unwrap_or_default(),
                r,
            )
        })
        .await?;
    let result = rollback_inner(
        ctx,
        op,
        &mut journal,
        &entry,
        (filter, legacy.clone()),
        containers,
        &progress,
    )
    .await;
    match result {
        Ok(Committed {
            mut report,
            plan,
            stopped_at,
        }) => {
            report.committed_after = began.elapsed();
            report.scope = req.scope;
            report.legacy = legacy.is_some();
            report.version = record_version(ctx, &journal);
            // The services first, the replaced files after: they are not needed any more,
            // and removing a large tree takes longer than extracting it. The removal runs
            // while the services' health is waited for.
            let started = if req.start {
                match start_after_rollback_unwaited(ctx, &journal, &progress).await {
                    Ok(started) => Some(started),
                    Err(e) => {
                        report.start_error = Some(e.to_string());
                        None
                    }
                }
            } else {
                None
            };
            // Journaled: a crash from here on only removes what is left (the services are
            // not started again by recovery).
            journal.plan = Some(plan.clone());
            if let Err(e) = ctx.set_phase(op, "cleaning", &journal).await {
                progress.notice(format!(
                    "warning: cannot record the rollback's progress: {e}"
                ));
            }
            crate::faults::point("rollback.after_start");
            let remove = async {
                let removing = Instant::now();
                progress.phase(crate::progress::Phase::Removing, None, None);
                if let Err(e) = ctx.swap_commit(&plan).await {
                    progress.notice(format!(
                        "warning: the rollback is complete but the replaced files could not be removed: {e}"
                    ));
                }
                removing.elapsed()
            };
            report.cleanup = match started {
                Some(started) => {
                    let (waited, cleanup) = started.wait_while(ctx, &progress, remove).await;
                    match waited {
                        Ok(ready) => {
                            report.services_started = true;
                            report.started_after = Some(ready.duration_since(began));
                            report.downtime = stopped_at.map(|t| ready.duration_since(t));
                        }
                        Err(e) => report.start_error = Some(e.to_string()),
                    }
                    cleanup
                }
                None => remove.await,
            };
            ctx.store(|r| StoreMsg::FinishOperation(op, OperationState::Succeeded, None, r))
                .await?;
            Ok(report)
        }
        Err(e) => {
            // Undo whatever was done; the live tree is as before.
            let mut cleanup_err = None;
            if let Some(plan) = &journal.plan {
                if let Err(re) = ctx.swap_revert(plan).await {
                    cleanup_err = Some(re);
                }
            } else if !journal.work_dir.as_os_str().is_empty()
                && let Err(re) = ctx.remove_tree(&journal.work_dir).await
            {
                cleanup_err = Some(re);
            }
            if !journal.stopped.is_empty() {
                progress.notice("restarting the containers this rollback stopped");
                if let Err(se) = ctx
                    .docker_for(ctx.start_timeout(), |r| {
                        DockerMsg::Start(journal.stopped.clone(), progress.clone(), r)
                    })
                    .await
                {
                    progress.notice(format!("warning: could not restart them: {se}"));
                }
            }
            let msg = match &cleanup_err {
                Some(ce) => format!("{e}; cleanup also failed: {ce}"),
                None => e.to_string(),
            };
            let state = if cleanup_err.is_some() {
                OperationState::Running // leave it for recovery on the next run
            } else {
                OperationState::Failed
            };
            ctx.store(|r| StoreMsg::FinishOperation(op, state, Some(msg), r))
                .await?;
            match cleanup_err {
                Some(ce @ Error::SwapConflict { .. }) => Err(ce),
                Some(ce) => Err(Error::Internal(format!(
                    "{e}; undoing the rollback failed too: {ce}. The next nuwax-cli command will retry the undo"
                ))),
                None => Err(e),
            }
        }
    }
}

/// A rollback whose swap is committed: its report, the plan whose replaced files are still
/// to be removed, and when the services were stopped.
pub(crate) struct Committed {
    pub report: RollbackReport,
    pub plan: SwapPlan,
    pub stopped_at: Option<Instant>,
}

pub(crate) async fn rollback_inner(
    ctx: &Ctx,
    op: i64,
    journal: &mut RollbackJournal,
    entry: &BackupEntry,
    (filter, manifest): (TopLevelFilter, Option<Arc<Manifest>>),
    containers: Option<Vec<ContainerInfo>>,
    progress: &Progress,
) -> Result<Committed> {
    let paths = &ctx.settings.paths;
    // Journaled before it exists: a kill right after creating it leaves nothing unknown.
    journal.work_dir = restore::new_work_dir_path(&paths.compose_dir, restore::WORK_PREFIX, op)?;
    ctx.set_phase(op, "extracting", journal).await?;
    crate::faults::point("rollback.journaled_work_dir");
    restore::create_recorded_work_dir(&journal.work_dir)?;
    let staged = journal.work_dir.join("staged");
    crate::faults::point("rollback.after_work_dir");
    let key = ctx.key_for(&entry.record.file_path)?;
    let extracted = ctx
        .archive(|r| {
            ArchiveMsg::Extract(
                ExtractOptions {
                    archive: entry.record.file_path.clone(),
                    staging: staged.clone(),
                    filter: filter.clone(),
                    select: Vec::new(),
                    restore_owner: crate::fsutil::is_root(),
                    threads: 0,
                    expected_sha256: entry.record.sha256.clone(),
                    manifest: manifest.clone(),
                    key: key.clone(),
                    durable: true,
                },
                progress.clone(),
                ctx.cancel.clone(),
                r,
            )
        })
        .await?;
    // Durable (`durable: true`): the swap may make it live.
    crate::faults::point("rollback.after_extract");
    ctx.cancel.check()?;

    // 3. Stop what runs now (extraction may have taken minutes: ask the engine again).
    let containers = match containers {
        Some(_) => ctx.containers(&ctx.compose_or_bare()).await?,
        None => None,
    };
    let running: Vec<ContainerInfo> = containers
        .unwrap_or_default()
        .into_iter()
        .filter(|c| crate::docker::policy::is_active(&c.state))
        .collect();
    let mut stopped_at = None;
    if !running.is_empty() {
        stopped_at = Some(Instant::now());
        progress.phase(
            crate::progress::Phase::Stopping,
            None,
            Some(running.len() as u64),
        );
        journal.stopped = running.clone();
        ctx.set_phase(op, "stopping", journal).await?;
        ctx.docker(|r| DockerMsg::Stop(running.clone(), progress.clone(), r))
            .await?;
        crate::faults::point("rollback.after_stop");
    }

    // 4. Swap: the configured excludes and the archive's own are never touched.
    let mut excludes = ctx.settings.config.backup.exclude.rules.clone();
    excludes.extend(extracted.info.excluded.iter().cloned());
    journal.compose_before = ctx.definitions_fingerprint();
    let plan = ctx
        .swap_prepare(&journal.work_dir, &filter, &excludes)
        .await?;
    progress.phase(
        crate::progress::Phase::Swapping,
        None,
        Some(plan.items.len() as u64),
    );
    journal.plan = Some(plan.clone());
    ctx.set_phase(op, "swapping", journal).await?;
    crate::faults::point("rollback.before_swap");
    // The last moment an interrupt can abort without changing live data.
    ctx.cancel.check()?;
    ctx.swap_apply(&plan).await?;
    crate::faults::point("rollback.after_swap");
    ctx.set_phase(op, "committed", journal).await?;
    crate::faults::point("rollback.after_commit");
    journal.plan = None; // committed: failures from here on must not revert
    // A hot backup's datadirs were never in it: kept live; say how to load its dumps.
    super::dumps::rollback_notice(&extracted.info, entry.record.id, progress);
    let report = RollbackReport {
        backup: entry.clone(),
        scope: RollbackScope::All,
        restored: plan
            .items
            .iter()
            .filter(|i| i.has_staged)
            .map(restore::SwapItem::display_name)
            .collect(),
        removed: plan
            .items
            .iter()
            .filter(|i| !i.has_staged)
            .map(restore::SwapItem::display_name)
            .collect(),
        stopped: journal.stopped.clone(),
        files: extracted.files,
        bytes: extracted.bytes,
        services_started: false,
        start_error: None,
        legacy: false,
        version: None,
        committed_after: std::time::Duration::ZERO,
        started_after: None,
        downtime: None,
        cleanup: std::time::Duration::ZERO,
    };
    Ok(Committed {
        report,
        plan,
        stopped_at,
    })
}

/// The bytes restoring `filter`'s part of the archive writes into the staging dir (the old
/// content stays until the swap is done, so nothing is freed before): the sizes `info.json`
/// records, or the archive's compressed size (a lower bound) for an archive without them.
pub(crate) fn space_needed(
    info: &crate::archive::ArchiveInfo,
    filter: &TopLevelFilter,
    entry: &BackupEntry,
) -> Result<u64> {
    if info.top_level_bytes.is_empty() {
        return Ok(entry.file_size.unwrap_or(0));
    }
    info.top_level_bytes
        .iter()
        .filter(|(name, _)| filter.includes(name.as_os_str()))
        .try_fold(0u64, |sum, (_, b)| sum.checked_add(*b))
        .ok_or_else(|| Error::Corrupt {
            path: entry.record.file_path.clone(),
            detail: "its info.json claims more bytes than a disk can hold".into(),
        })
}

/// After a committed swap that restored the app (also from recovery): the backup's version
/// goes back into `config.toml` (atomically, comments kept), so the bookkeeping says what
/// runs. A failure to write it does not undo the restore; it is reported.
pub(crate) fn record_version(ctx: &Ctx, journal: &RollbackJournal) -> Option<VersionUpdate> {
    let version = journal.service_version.clone()?;
    let file = &ctx.settings.paths.config_file;
    Some(
        match crate::config_edit::set_service_version(file, &version) {
            Ok(previous) if previous.as_deref() == Some(version.as_str()) => {
                VersionUpdate::Unchanged(version)
            }
            Ok(previous) => VersionUpdate::Written { version, previous },
            Err(e) => VersionUpdate::Failed {
                version,
                error: e.to_string(),
            },
        },
    )
}

/// After a committed swap (also from recovery): changed definitions (compose file, `.env`,
/// a service's `env_file`) mean containers must be recreated from the restored files
/// (`compose up -d`: the old images, not the new ones); otherwise start exactly what the
/// rollback stopped, or the whole project when nothing was running. Then wait for health.
pub(crate) async fn start_after_rollback(
    ctx: &Ctx,
    journal: &RollbackJournal,
    progress: &Progress,
) -> Result<()> {
    start_after_rollback_unwaited(ctx, journal, progress)
        .await?
        .wait(ctx, progress)
        .await
}

/// [`start_after_rollback`] up to the health wait, which is left to the caller.
pub(crate) async fn start_after_rollback_unwaited(
    ctx: &Ctx,
    journal: &RollbackJournal,
    progress: &Progress,
) -> Result<services::Started> {
    let after = ctx.definitions_fingerprint();
    let compose = ctx.compose_or_bare();
    if after.is_some() && after != journal.compose_before {
        progress.notice(
            "the compose file, .env or an env_file changed: recreating the containers from the restored definitions",
        );
        services::compose_up(ctx, &compose, progress).await?;
        return Ok(services::Started::project(compose));
    }
    if !journal.stopped.is_empty() {
        return services::start_exactly(ctx, &journal.stopped, progress).await;
    }
    services::start_services_unwaited(ctx, progress)
        .await
        .map(|(_, started)| started)
}

/// The mismatch between `record`'s archive and the SHA-256 the catalog recorded for it,
/// if there is one.
pub(crate) async fn checksum_error(
    ctx: &Ctx,
    record: &BackupRecord,
    progress: &Progress,
) -> Result<Option<Error>> {
    let Some(expected) = &record.sha256 else {
        return Ok(None);
    };
    let actual = ctx
        .archive(|r| {
            ArchiveMsg::Checksum(
                record.file_path.clone(),
                progress.clone(),
                ctx.cancel.clone(),
                r,
            )
        })
        .await?;
    Ok(
        (!expected.eq_ignore_ascii_case(&actual)).then(|| Error::ChecksumMismatch {
            path: record.file_path.clone(),
            expected: expected.clone(),
            actual,
        }),
    )
}
