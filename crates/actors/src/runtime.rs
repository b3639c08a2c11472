//! The facade the CLI talks to. Each method orchestrates one user-level operation by sending
//! typed messages to the actors and streaming their progress to the caller's channel.
//!
//! Mutating operations run under the operation lock and write an operation-journal row
//! before they touch anything, so a crash at any point is finished or reverted by the next
//! invocation (see `recovery.rs`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use nuwax_store::{
    BackupCompletion, BackupRecord, BackupStatus, BackupType, NewBackup, OperationKind,
    OperationState,
};
use ractor::{Actor, ActorRef};
use serde::{Deserialize, Serialize};

use crate::actors::archive_actor::ArchiveMsg;
use crate::actors::ask;
use crate::actors::docker_actor::DockerMsg;
use crate::actors::store_actor::StoreMsg;
use crate::actors::supervisor::{Refs, Supervisor, SupervisorArgs, SupervisorMsg};
use crate::archive::{
    ArchiveInfo, BuildOptions, CancelFlag, ExtractOptions, ImageRecord, TopLevelFilter,
    VerifyReport,
};
use crate::config::Settings;
use crate::docker::{ComposeProject, ContainerInfo, GateReport, compose};
use crate::error::{Error, IoContext, Result};
use crate::lock::OperationLock;
use crate::progress::Progress;
use crate::restore::{self, SwapPlan};

/// Settings key: archive size / source bytes of the last backup (for the space preflight).
const RATIO_KEY: &str = "backup.last_ratio";

pub(crate) const STORE_TIMEOUT: Duration = Duration::from_secs(60);
pub(crate) const DOCKER_TIMEOUT: Duration = Duration::from_secs(15 * 60);
pub(crate) const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(48 * 3600);

/// How the CLI starts the runtime.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// The command line being run (recorded in the lock file).
    pub command: String,
    /// Takes the operation lock for the whole process (backup, rollback, delete...).
    pub mutating: bool,
    /// The `recover` command: starts even when an interrupted operation is blocked.
    pub resolving: bool,
    /// Move an unusable catalog aside to `<db>.broken-<time>` and start a fresh one (only
    /// `reindex --move-broken-catalog`; never done silently).
    pub move_broken_catalog: bool,
    /// The flag the CLI's signal handlers set (installed before the runtime starts, so a
    /// signal during start-up recovery is not lost either).
    pub cancel: CancelFlag,
}

/// A catalog row plus what the file system says about its archive.
#[derive(Debug, Clone)]
pub struct BackupEntry {
    pub record: BackupRecord,
    pub file_exists: bool,
    /// Actual size on disk; `None` when missing.
    pub file_size: Option<u64>,
}

impl BackupEntry {
    fn from_record(record: BackupRecord) -> Self {
        let meta = std::fs::metadata(&record.file_path)
            .ok()
            .filter(|m| m.is_file());
        BackupEntry {
            file_exists: meta.is_some(),
            file_size: meta.map(|m| m.len()),
            record,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BackupRequest {
    pub backup_type: BackupType,
    /// Skip the cold-backup gate (explicit operator override).
    pub skip_docker_check: bool,
    /// gzip level 1..=9 for this backup; `None` = config `backup.compression_level`.
    pub compression_level: Option<u32>,
}

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
}

/// Journal details of a backup operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BackupJournal {
    pub backup_id: Option<i64>,
    pub partial: PathBuf,
    pub dest: PathBuf,
    #[serde(default)]
    pub stopped: Vec<ContainerInfo>,
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
}

pub struct Runtime {
    pub(crate) settings: Settings,
    supervisor: ActorRef<SupervisorMsg>,
    supervisor_task: tokio::task::JoinHandle<()>,
    pub(crate) lock: Option<OperationLock>,
    cancel: CancelFlag,
    notes: Vec<String>,
    /// Interrupted operations recovery could not finish (see `recovery.rs`).
    pub(crate) blocked: Vec<crate::recovery::Blocked>,
}

impl Runtime {
    /// Opens the catalog, starts the actors, and recovers operations left behind by a dead
    /// process (when no live process holds the lock).
    pub async fn start(settings: Settings, opts: RuntimeOptions) -> Result<Runtime> {
        let data_dir = settings
            .paths
            .db_file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        std::fs::create_dir_all(&data_dir).ctx("cannot create catalog directory", &data_dir)?;
        let lock = if opts.mutating {
            Some(OperationLock::acquire(
                &settings.paths.lock_file,
                &opts.command,
            )?)
        } else {
            // Read-only commands recover too, but only when nobody is mid-operation.
            OperationLock::acquire(&settings.paths.lock_file, &opts.command).ok()
        };
        let (supervisor, supervisor_task) = Actor::spawn(
            None,
            Supervisor,
            SupervisorArgs {
                db_file: settings.paths.db_file.clone(),
                move_broken_catalog: opts.mutating && opts.move_broken_catalog,
            },
        )
        .await
        .map_err(|e| Error::Internal(format!("cannot start actors: {e}")))?;
        let mut rt = Runtime {
            settings,
            supervisor,
            supervisor_task,
            lock,
            cancel: opts.cancel.clone(),
            notes: Vec::new(),
            blocked: Vec::new(),
        };
        if let Some(lock) = &rt.lock
            && let Some(prev) = &lock.taken_over_from
        {
            rt.notes.push(format!(
                "the previous operation (pid {}, `{}`, started {}) ended without releasing the lock; it was taken over",
                prev.pid, prev.command, prev.started
            ));
        }
        if rt.lock.is_some() {
            let outcome = rt.recover().await?;
            rt.notes.extend(outcome.notes);
            rt.blocked = outcome.blocked;
        }
        if let Some(b) = rt.blocked.first()
            && !opts.resolving
        {
            if opts.mutating {
                let err = b.refusal();
                rt.shutdown().await;
                return Err(err);
            }
            for b in &rt.blocked {
                rt.notes.push(format!("warning: {}", b.refusal()));
            }
        }
        if !opts.mutating {
            rt.lock = None;
        }
        Ok(rt)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Set it (from a Ctrl-C handler) to interrupt the running operation cleanly.
    pub fn cancel_flag(&self) -> CancelFlag {
        self.cancel.clone()
    }

    /// What start-up recovery did, for the operator to read.
    pub fn recovery_notes(&self) -> &[String] {
        &self.notes
    }

    pub async fn shutdown(self) {
        self.supervisor.stop(None);
        let _ = self.supervisor_task.await;
        drop(self.lock);
    }

    pub(crate) async fn refs(&self) -> Result<Refs> {
        match self
            .supervisor
            .call(SupervisorMsg::Refs, Some(STORE_TIMEOUT))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(refs)) => Ok(refs),
            _ => Err(Error::Internal(
                "the actor supervisor is not running".into(),
            )),
        }
    }

    pub(crate) async fn store<T: Send + 'static>(
        &self,
        msg: impl FnOnce(ractor::RpcReplyPort<Result<T>>) -> StoreMsg,
    ) -> Result<T> {
        ask(&self.refs().await?.store, "catalog", STORE_TIMEOUT, msg).await
    }

    pub(crate) async fn docker<T: Send + 'static>(
        &self,
        msg: impl FnOnce(ractor::RpcReplyPort<Result<T>>) -> DockerMsg,
    ) -> Result<T> {
        ask(&self.refs().await?.docker, "docker", DOCKER_TIMEOUT, msg).await
    }

    pub(crate) async fn archive<T: Send + 'static>(
        &self,
        msg: impl FnOnce(ractor::RpcReplyPort<Result<T>>) -> ArchiveMsg,
    ) -> Result<T> {
        ask(&self.refs().await?.archive, "archive", ARCHIVE_TIMEOUT, msg).await
    }

    // ----------------------------------------------------------------------------- catalog

    /// All catalog rows, newest first.
    pub async fn list_backups(&self) -> Result<Vec<BackupEntry>> {
        let records = self.store(StoreMsg::ListBackups).await?;
        Ok(records.into_iter().map(BackupEntry::from_record).collect())
    }

    pub async fn get_backup(&self, id: i64) -> Result<BackupEntry> {
        self.store(|r| StoreMsg::GetBackup(id, r))
            .await?
            .map(BackupEntry::from_record)
            .ok_or(Error::BackupNotFound(id))
    }

    /// Deletes the archive file and its catalog row.
    pub async fn delete_backup(&self, id: i64) -> Result<BackupEntry> {
        let entry = self.get_backup(id).await?;
        if entry.record.status == BackupStatus::Running {
            return Err(Error::Refused(format!(
                "backup {id} is still being written (pid {}); wait for it to finish",
                entry.record.owner_pid.unwrap_or(0)
            )));
        }
        // The catalog is input like any other: only a file of the storage dir is deleted.
        let path = self.storage_archive_path(&entry.record.file_path)?;
        if std::fs::symlink_metadata(&path).is_ok() {
            std::fs::remove_file(&path).ctx("cannot delete archive", &path)?;
            restore::sync_dir(&self.settings.paths.storage_dir)?;
        }
        self.store(|r| StoreMsg::DeleteBackup(id, r)).await?;
        Ok(entry)
    }

    /// A catalog or journal path checked to name an archive directly inside the storage
    /// dir (`backup_*.tar.gz`): the only files this tool deletes there.
    pub(crate) fn storage_archive_path(&self, path: &Path) -> Result<PathBuf> {
        let dir = &self.settings.paths.storage_dir;
        let refuse = |reason: String| Error::UnsafePath {
            what: "catalog archive path",
            path: path.to_path_buf(),
            reason,
        };
        let name = path.file_name().unwrap_or_default();
        if crate::relpath::RelPath::from_name(name).is_err()
            || !name.to_string_lossy().ends_with(".tar.gz")
        {
            return Err(refuse(
                "it does not name a .tar.gz archive; nothing was deleted. Rebuild the catalog with `nuwax-cli reindex`".into(),
            ));
        }
        let parent = path.parent().unwrap_or(Path::new(""));
        if crate::fsutil::canonical(parent) != crate::fsutil::canonical(dir) {
            return Err(refuse(format!(
                "it is not in the storage dir {}; nothing was deleted. If [backup] storage_dir was changed, move the archives there and run `nuwax-cli reindex`",
                dir.display()
            )));
        }
        Ok(dir.join(name))
    }

    // ----------------------------------------------------------------------------- backup

    pub(crate) fn compose_project(&self) -> Result<ComposeProject> {
        let p = &self.settings.paths;
        let env = p.env_file.exists().then_some(p.env_file.as_path());
        compose::load(
            &p.compose_file,
            env,
            self.settings.config.docker.project.as_deref(),
        )
    }

    /// Project name even when the compose file is gone (a rollback may bring it back).
    pub(crate) fn project_name(&self) -> String {
        if let Ok(c) = self.compose_project() {
            return c.name;
        }
        if let Some(p) = &self.settings.config.docker.project {
            return p.clone();
        }
        let dir = self
            .settings
            .paths
            .compose_dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        compose::normalize_project_name(&dir).unwrap_or(dir)
    }

    /// The cold-backup gate: refuses while a persistent container of the project runs.
    pub async fn gate(&self, compose: &ComposeProject, progress: &Progress) -> Result<GateReport> {
        let report = self.docker(|r| DockerMsg::Gate(compose.clone(), r)).await?;
        if report.engine_absent {
            progress.notice(
                "warning: no Docker engine socket found on this machine; cannot check that the services are stopped",
            );
        }
        for w in &report.warnings {
            progress.notice(format!(
                "warning: one-shot container {} is running (restart policy {}); it does not block the backup",
                w.container.name, w.container.restart_policy
            ));
        }
        if !report.passes() {
            let list = report
                .blocking
                .iter()
                .map(|b| {
                    format!(
                        "  {} (service {}, state {}, restart policy {})",
                        b.container.name,
                        b.container.service.as_deref().unwrap_or("?"),
                        b.container.state,
                        b.container.restart_policy
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            return Err(Error::Refused(format!(
                "a cold backup needs the services of project '{}' stopped, but these persistent containers are running:\n{list}\nstop them first: `nuwax-cli docker-service stop` (or use `nuwax-cli auto-backup run`, which stops and restarts them)",
                report.project
            )));
        }
        Ok(report)
    }

    /// Takes a cold backup of the compose dir.
    pub async fn backup(&self, req: BackupRequest, progress: Progress) -> Result<BackupEntry> {
        let compose = self.compose_project()?;
        let images = if req.skip_docker_check {
            progress
                .notice("warning: --skip-docker-check: not checking that the services are stopped");
            Vec::new()
        } else {
            self.images_after_gate(&compose, true, &progress).await?
        };
        self.backup_at_level(
            req.backup_type,
            compose,
            images,
            req.compression_level,
            &progress,
        )
        .await
    }

    /// The backup itself, after the gate (also used by auto-backup and upgrade), at the
    /// configured compression level.
    pub(crate) async fn backup_locked(
        &self,
        backup_type: BackupType,
        compose: ComposeProject,
        images: Vec<ImageRecord>,
        progress: &Progress,
    ) -> Result<BackupEntry> {
        self.backup_at_level(backup_type, compose, images, None, progress)
            .await
    }

    /// What a backup checks before it writes anything, and what `auto-backup run` checks
    /// before it stops anything: the storage dir can be created and written to, and the
    /// estimated archive (source bytes x the last compression ratio, plus a margin) fits
    /// ([`Error::NoSpace`], exit 3). Returns the top-level sizes of the source.
    pub(crate) async fn backup_preflight(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        let paths = &self.settings.paths;
        let cfg = &self.settings.config;
        let storage = &paths.storage_dir;
        let unusable = |what: &str, e: std::io::Error| {
            Error::Refused(format!(
                "the backup storage dir {} {what}: {e}; fix its permissions or set [backup] storage_dir to a writable directory",
                storage.display()
            ))
        };
        std::fs::create_dir_all(storage).map_err(|e| unusable("cannot be created", e))?;
        let probe = storage.join(format!(".nuwax-write-test-{}", std::process::id()));
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&probe)
            .map_err(|e| unusable("is not writable", e))?;
        let _ = std::fs::remove_file(&probe);
        // Free-space preflight: source bytes x the last compression ratio, plus a margin.
        let sizes = crate::space::tree_bytes(&paths.compose_dir, &cfg.backup.exclude)?;
        let source: u64 = sizes.values().sum();
        let ratio = self
            .store(|r| StoreMsg::GetSetting(RATIO_KEY.into(), r))
            .await?
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|r| r.is_finite() && *r > 0.0)
            .map_or(1.0, |r| r.min(1.0) * 1.1);
        crate::space::ensure(storage, (source as f64 * ratio) as u64)?;
        Ok(sizes)
    }

    /// [`Runtime::backup_locked`] with an optional compression level overriding the config.
    async fn backup_at_level(
        &self,
        backup_type: BackupType,
        compose: ComposeProject,
        images: Vec<ImageRecord>,
        level: Option<u32>,
        progress: &Progress,
    ) -> Result<BackupEntry> {
        let paths = &self.settings.paths;
        let cfg = &self.settings.config;
        let sizes = self.backup_preflight().await?;
        let created_at = Utc::now();
        let version = self.settings.service_version();
        let dest = unique_archive_path(&paths.storage_dir, backup_type, &version, created_at);
        let partial = partial_path(&dest);
        let op = self
            .store(|r| {
                StoreMsg::BeginOperation(
                    OperationKind::Backup,
                    serde_json::to_value(BackupJournal {
                        backup_id: None,
                        partial: partial.clone(),
                        dest: dest.clone(),
                        stopped: Vec::new(),
                    })
                    .unwrap_or_default(),
                    r,
                )
            })
            .await?;
        let id = self
            .store(|r| {
                StoreMsg::InsertBackup(
                    NewBackup {
                        file_path: dest.clone(),
                        backup_type,
                        service_version: version.clone(),
                        created_at,
                        owner_pid: std::process::id(),
                        compose_project: Some(compose.name.clone()),
                    },
                    r,
                )
            })
            .await?;
        self.store(|r| StoreMsg::SetOperationBackup(op, id, r))
            .await?;
        crate::faults::point("backup.after_catalog_insert");
        let journal = BackupJournal {
            backup_id: Some(id),
            partial: partial.clone(),
            dest: dest.clone(),
            stopped: Vec::new(),
        };
        self.store(|r| {
            StoreMsg::SetOperationPhase(
                op,
                "archiving".into(),
                Some(serde_json::to_value(&journal).unwrap_or_default()),
                r,
            )
        })
        .await?;
        crate::faults::point("backup.after_journal");
        let opts = BuildOptions {
            source_dir: paths.compose_dir.clone(),
            dest: dest.clone(),
            exclude: cfg.backup.exclude.clone(),
            level: level.unwrap_or(cfg.backup.compression_level),
            threads: 0,
            info: ArchiveInfo {
                format: crate::archive::FORMAT_VERSION,
                tool: format!("nuwax-cli {}", env!("CARGO_PKG_VERSION")),
                backup_type: backup_type.as_str().to_owned(),
                service_version: version.clone(),
                // Microseconds, as in the catalog: a rebuilt catalog keeps the exact order.
                created_at: created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                compose_project: compose.name.clone(),
                data_paths: cfg.backup.data_paths.clone(),
                excluded: cfg.backup.exclude.clone(),
                images,
                top_level_bytes: sizes
                    .into_iter()
                    .filter_map(|(k, v)| Some((crate::relpath::TopName::parse(&k).ok()?, v)))
                    .collect(),
            },
        };
        let built = self
            .archive(|r| {
                ArchiveMsg::Build(Box::new(opts), progress.clone(), self.cancel.clone(), r)
            })
            .await;
        match built {
            Ok(report) => {
                crate::faults::point("backup.before_catalog_complete");
                if report.source_bytes > 0 {
                    let ratio = report.size as f64 / report.source_bytes as f64;
                    self.store(|r| StoreMsg::SetSetting(RATIO_KEY.into(), ratio.to_string(), r))
                        .await?;
                }
                self.store(|r| {
                    StoreMsg::CompleteBackup(
                        id,
                        BackupCompletion {
                            size: report.size,
                            sha256: report.sha256.clone(),
                            entry_count: report.entries,
                            finished_at: Utc::now(),
                        },
                        r,
                    )
                })
                .await?;
                self.store(|r| StoreMsg::FinishOperation(op, OperationState::Succeeded, None, r))
                    .await?;
                self.get_backup(id).await
            }
            Err(e) => {
                // build() removed its .partial; make sure, then record why.
                let _ = std::fs::remove_file(&partial);
                let msg = e.to_string();
                self.store(|r| StoreMsg::FailBackup(id, msg.clone(), r))
                    .await?;
                self.store(|r| {
                    StoreMsg::FinishOperation(op, OperationState::Failed, Some(msg.clone()), r)
                })
                .await?;
                Err(e)
            }
        }
    }

    // ----------------------------------------------------------------------------- verify

    /// Re-reads an archive completely: checksum, gzip, tar, manifest, every file's hash.
    pub async fn verify(&self, id: i64, progress: Progress) -> Result<(BackupEntry, VerifyReport)> {
        let entry = self.get_backup(id).await?;
        if !entry.file_exists {
            return Err(Error::Corrupt {
                path: entry.record.file_path.clone(),
                detail: format!("backup {id}'s archive file is missing"),
            });
        }
        let report = self
            .archive(|r| ArchiveMsg::Verify {
                path: entry.record.file_path.clone(),
                expected_sha256: entry.record.sha256.clone(),
                progress,
                cancel: self.cancel.clone(),
                reply: r,
            })
            .await?;
        if report.is_ok() && entry.record.status == BackupStatus::Completed {
            self.store(|r| StoreMsg::MarkVerified(id, Utc::now(), r))
                .await?;
        }
        Ok((entry, report))
    }

    // ----------------------------------------------------------------------------- rollback

    /// Restores a scope of a backup: checksum, staged extraction with per-file verification,
    /// stop, swap with undo (the swap engine in `restore.rs`).
    pub async fn rollback(
        &self,
        req: RollbackRequest,
        progress: Progress,
    ) -> Result<RollbackReport> {
        let entry = self.get_backup(req.id).await?;
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
            return Err(Error::Corrupt {
                path: record.file_path.clone(),
                detail: format!(
                    "backup {}'s archive file is missing; nothing was changed",
                    req.id
                ),
            });
        }
        let paths = self.settings.paths.clone();
        if !paths.compose_dir.is_dir() {
            std::fs::create_dir_all(&paths.compose_dir)
                .ctx("cannot create compose dir", &paths.compose_dir)?;
        }
        // Ask the engine first: an unreachable engine refuses before any work.
        let project = self.project_name();
        let containers = self
            .docker(|r| DockerMsg::Containers(project.clone(), r))
            .await?;
        if containers.is_none() {
            progress.notice("warning: no Docker engine socket found; not stopping any containers");
        }

        // 1. The archive's SHA-256 is checked against the catalog while it is extracted into
        //    the staging dir (one read of the archive, not two), and before anything live is
        //    touched: `extract` fails on a mismatch, and nothing is swapped in then.
        let filter = self.scope_filter(req.scope);
        // Staging needs the scope's size on the compose dir's filesystem (the old content
        // stays until the swap is done, so nothing is freed before).
        let info = match self
            .archive(|r| ArchiveMsg::ReadInfo(record.file_path.clone(), r))
            .await
        {
            Ok(info) => info,
            // An unreadable head: if the file is not the one the catalog recorded, say that.
            Err(e) => return Err(self.checksum_error(record, &progress).await?.unwrap_or(e)),
        };
        let needed = if info.top_level_bytes.is_empty() {
            // An archive without sizes: its compressed size is a lower bound.
            entry.file_size.unwrap_or(0)
        } else {
            info.top_level_bytes
                .iter()
                .filter(|(name, _)| filter.includes(name.as_os_str()))
                .try_fold(0u64, |sum, (_, b)| sum.checked_add(*b))
                .ok_or_else(|| Error::Corrupt {
                    path: record.file_path.clone(),
                    detail: "its info.json claims more bytes than a disk can hold".into(),
                })?
        };
        crate::space::ensure(&paths.compose_dir, needed)?;
        let mut journal = RollbackJournal {
            backup_id: req.id,
            work_dir: PathBuf::new(),
            scope: req.scope,
            plan: None,
            stopped: Vec::new(),
            compose_before: None,
        };
        let op = self
            .store(|r| {
                StoreMsg::BeginOperation(
                    OperationKind::Rollback,
                    serde_json::to_value(&journal).unwrap_or_default(),
                    r,
                )
            })
            .await?;
        let result = self
            .rollback_inner(op, &mut journal, &entry, filter, containers, &progress)
            .await;
        match result {
            Ok(mut report) => {
                report.scope = req.scope;
                if req.start {
                    match self.start_after_rollback(&journal, &progress).await {
                        Ok(()) => report.services_started = true,
                        Err(e) => report.start_error = Some(e.to_string()),
                    }
                }
                self.store(|r| StoreMsg::FinishOperation(op, OperationState::Succeeded, None, r))
                    .await?;
                Ok(report)
            }
            Err(e) => {
                // Undo whatever was done; the live tree is as before.
                let mut cleanup_err = None;
                if let Some(plan) = &journal.plan {
                    if let Err(re) = plan.revert() {
                        cleanup_err = Some(re);
                    }
                } else if !journal.work_dir.as_os_str().is_empty()
                    && let Err(re) = restore::remove_path(&journal.work_dir)
                {
                    cleanup_err = Some(re);
                }
                if !journal.stopped.is_empty() {
                    progress.notice("restarting the containers this rollback stopped");
                    if let Err(se) = self
                        .docker(|r| DockerMsg::Start(journal.stopped.clone(), progress.clone(), r))
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
                self.store(|r| StoreMsg::FinishOperation(op, state, Some(msg), r))
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

    /// The top-level filter of a rollback scope.
    pub(crate) fn scope_filter(&self, scope: RollbackScope) -> TopLevelFilter {
        let data: Vec<std::ffi::OsString> = self
            .settings
            .config
            .backup
            .data_paths
            .iter()
            .map(|d| d.as_os_str().to_owned())
            .collect();
        match scope {
            RollbackScope::App => TopLevelFilter::AllExcept(data),
            RollbackScope::All => TopLevelFilter::All,
            RollbackScope::DataOnly => TopLevelFilter::Only(data),
        }
    }

    async fn rollback_inner(
        &self,
        op: i64,
        journal: &mut RollbackJournal,
        entry: &BackupEntry,
        filter: TopLevelFilter,
        containers: Option<Vec<ContainerInfo>>,
        progress: &Progress,
    ) -> Result<RollbackReport> {
        let paths = &self.settings.paths;
        journal.work_dir = restore::create_work_dir(&paths.compose_dir, restore::WORK_PREFIX, op)?;
        self.set_phase(op, "extracting", journal).await?;
        let staged = journal.work_dir.join("staged");
        crate::faults::point("rollback.after_work_dir");
        let extracted = self
            .archive(|r| {
                ArchiveMsg::Extract(
                    ExtractOptions {
                        archive: entry.record.file_path.clone(),
                        staging: staged.clone(),
                        filter: filter.clone(),
                        restore_owner: is_root(),
                        threads: 0,
                        expected_sha256: entry.record.sha256.clone(),
                    },
                    progress.clone(),
                    self.cancel.clone(),
                    r,
                )
            })
            .await?;
        restore::sync_filesystem(&staged)?;
        crate::faults::point("rollback.after_extract");
        self.cancel.check()?;

        // 3. Stop what runs now (extraction may have taken minutes: ask the engine again).
        let containers = match containers {
            Some(_) => self.containers(&self.compose_or_bare()).await?,
            None => None,
        };
        let running: Vec<ContainerInfo> = containers
            .unwrap_or_default()
            .into_iter()
            .filter(|c| matches!(c.state.as_str(), "running" | "restarting" | "paused"))
            .collect();
        if !running.is_empty() {
            progress.phase(crate::Phase::Stopping, None, Some(running.len() as u64));
            journal.stopped = running.clone();
            self.set_phase(op, "stopping", journal).await?;
            self.docker(|r| DockerMsg::Stop(running.clone(), progress.clone(), r))
                .await?;
            crate::faults::point("rollback.after_stop");
        }

        // 4. Swap: the configured excludes and the archive's own are never touched.
        let mut excludes = self.settings.config.backup.exclude.clone();
        for e in &extracted.info.excluded {
            if !excludes.contains(e) {
                excludes.push(e.clone());
            }
        }
        journal.compose_before = self.definitions_fingerprint();
        let plan = restore::prepare(&paths.compose_dir, &journal.work_dir, &filter, &excludes)?;
        progress.phase(crate::Phase::Swapping, None, Some(plan.items.len() as u64));
        journal.plan = Some(plan.clone());
        self.set_phase(op, "swapping", journal).await?;
        crate::faults::point("rollback.before_swap");
        // The last moment an interrupt can abort without changing live data.
        self.cancel.check()?;
        plan.apply()?;
        crate::faults::point("rollback.after_swap");
        self.set_phase(op, "committed", journal).await?;
        crate::faults::point("rollback.after_commit");
        journal.plan = None; // committed: failures from here on must not revert
        if let Err(e) = plan.commit() {
            progress.notice(format!(
                "warning: the rollback is complete but the old content could not be removed: {e}"
            ));
        }
        Ok(RollbackReport {
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
        })
    }

    /// A digest of everything the running containers were created from: the compose file, the
    /// env file and every `env_file` a service names. `None` without a compose file.
    pub(crate) fn definitions_fingerprint(&self) -> Option<String> {
        use sha2::{Digest, Sha256};
        let paths = &self.settings.paths;
        let compose = std::fs::read(&paths.compose_file).ok()?;
        let mut h = Sha256::new();
        let mut add = |label: &str, bytes: Option<Vec<u8>>| {
            h.update(label.as_bytes());
            h.update([0]);
            match bytes {
                Some(b) => {
                    h.update((b.len() as u64).to_le_bytes());
                    h.update(&b);
                }
                None => h.update(b"-"),
            }
        };
        add("compose", Some(compose));
        add("env", std::fs::read(&paths.env_file).ok());
        if let Ok(project) = self.compose_project() {
            for (name, service) in &project.services {
                for f in &service.env_files {
                    let p = paths.compose_dir.join(f);
                    add(&format!("{name}:{f}"), std::fs::read(p).ok());
                }
            }
        }
        Some(hex::encode(h.finalize()))
    }

    /// After a committed swap (also from recovery): changed definitions (compose file, `.env`,
    /// a service's `env_file`) mean containers must be recreated from the restored files
    /// (`compose up -d`: the old images, not the new ones); otherwise start exactly what the
    /// rollback stopped, or the whole project when nothing was running. Then wait for health.
    pub(crate) async fn start_after_rollback(
        &self,
        journal: &RollbackJournal,
        progress: &Progress,
    ) -> Result<()> {
        let after = self.definitions_fingerprint();
        let compose = self.compose_or_bare();
        if after.is_some() && after != journal.compose_before {
            progress.notice(
                "the compose file, .env or an env_file changed: recreating the containers from the restored definitions",
            );
            self.compose_up(&compose, progress).await?;
            return self.wait_healthy(&compose, Vec::new(), progress).await;
        }
        if !journal.stopped.is_empty() {
            return self.restart_exactly(&journal.stopped, progress).await;
        }
        self.start_services(progress).await.map(|_| ())
    }

    /// The mismatch between `record`'s archive and the SHA-256 the catalog recorded for it,
    /// if there is one.
    async fn checksum_error(
        &self,
        record: &BackupRecord,
        progress: &Progress,
    ) -> Result<Option<Error>> {
        let Some(expected) = &record.sha256 else {
            return Ok(None);
        };
        let actual = self
            .archive(|r| {
                ArchiveMsg::Checksum(
                    record.file_path.clone(),
                    progress.clone(),
                    self.cancel.clone(),
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

    pub(crate) async fn set_phase<T: Serialize>(
        &self,
        op: i64,
        phase: &str,
        details: &T,
    ) -> Result<()> {
        let value = serde_json::to_value(details)
            .map_err(|e| Error::Internal(format!("cannot encode journal: {e}")))?;
        self.store(|r| StoreMsg::SetOperationPhase(op, phase.to_owned(), Some(value), r))
            .await
    }
}

pub(crate) fn is_root() -> bool {
    #[allow(unsafe_code)]
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe {
        libc::geteuid() == 0
    }
}

pub(crate) fn partial_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// `backup_{type}_v{version}_{UTC}.tar.gz`, with `_2`, `_3`... when taken.
pub(crate) fn unique_archive_path(
    dir: &Path,
    backup_type: BackupType,
    version: &str,
    at: DateTime<Utc>,
) -> PathBuf {
    let safe: String = version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let stem = format!(
        "backup_{}_v{}_{}",
        backup_type.file_tag(),
        safe,
        at.format("%Y-%m-%d_%H-%M-%S")
    );
    let mut n = 1;
    loop {
        let name = if n == 1 {
            format!("{stem}.tar.gz")
        } else {
            format!("{stem}_{n}.tar.gz")
        };
        let p = dir.join(name);
        if !p.exists() && !partial_path(&p).exists() {
            return p;
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names_are_unique_and_sanitised() {
        let dir = tempfile::tempdir().unwrap();
        let at = DateTime::parse_from_rfc3339("2026-11-26T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let a = unique_archive_path(dir.path(), BackupType::Manual, "1.2/3 x", at);
        assert_eq!(
            a.file_name().unwrap(),
            "backup_manual_v1.2_3_x_2026-11-26_03-04-05.tar.gz"
        );
        std::fs::write(&a, b"x").unwrap();
        let b = unique_archive_path(dir.path(), BackupType::Manual, "1.2/3 x", at);
        assert_eq!(
            b.file_name().unwrap(),
            "backup_manual_v1.2_3_x_2026-11-26_03-04-05_2.tar.gz"
        );
        std::fs::write(partial_path(&b), b"x").unwrap();
        let c = unique_archive_path(dir.path(), BackupType::PreUpgrade, "1", at);
        assert!(c.to_string_lossy().contains("backup_pre-upgrade_v1_"));
        let d = unique_archive_path(dir.path(), BackupType::Manual, "1.2/3 x", at);
        assert!(d.to_string_lossy().ends_with("_3.tar.gz"));
    }
}
