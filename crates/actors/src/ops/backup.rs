//! `backup`: the cold-backup gate, the free-space preflight, and the archive build with its
//! catalog row and journal (DESIGN.md section 4).

use chrono::{DateTime, Utc};
use nuwax_store::{BackupCompletion, BackupType, NewBackup};
use serde::{Deserialize, Serialize};

use super::BackupEntry;
use crate::archive::{ArchiveInfo, BuildOptions, ImageRecord};
use crate::docker::{ComposeProject, ContainerInfo, GateReport};
use std::path::{Path, PathBuf};

use super::Ctx;
use crate::actors::archive_actor::ArchiveMsg;
use crate::actors::docker_actor::DockerMsg;
use crate::actors::store_actor::StoreMsg;
use crate::error::{Error, Result};
use crate::fsutil::partial_path;
use crate::progress::Progress;

/// Settings key: archive size / source bytes of the last backup (for the space preflight).
const RATIO_KEY: &str = "backup.last_ratio";
/// Settings key: how many backups in a row copied unchanged files from their predecessor
/// (`[backup] full_every`).
const STREAK_KEY: &str = "backup.incremental_streak";

#[derive(Debug, Clone)]
pub struct BackupRequest {
    pub backup_type: BackupType,
    /// Skip the cold-backup gate (explicit operator override).
    pub skip_docker_check: bool,
    /// gzip level 1..=9 for this backup; `None` = config `backup.compression_level`.
    pub compression_level: Option<u32>,
    /// Keep the services running: dumps plus the files minus `hot_exclude` (`ops/dumps.rs`).
    pub hot: bool,
    /// Read every file, copy nothing from the previous archive (`backup --full`).
    pub full: bool,
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

/// The cold-backup gate: refuses while a persistent container of the project runs.
pub(crate) async fn gate(
    ctx: &Ctx,
    compose: &ComposeProject,
    progress: &Progress,
) -> Result<GateReport> {
    let report = ctx.docker(|r| DockerMsg::Gate(compose.clone(), r)).await?;
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
pub(crate) async fn backup(
    ctx: &Ctx,
    req: BackupRequest,
    progress: Progress,
) -> Result<BackupEntry> {
    if req.hot {
        return super::dumps::hot_backup(
            ctx,
            req.backup_type,
            req.compression_level,
            req.full,
            &progress,
        )
        .await;
    }
    let compose = ctx.compose_project()?;
    let images = if req.skip_docker_check {
        progress.notice("warning: --skip-docker-check: not checking that the services are stopped");
        Vec::new()
    } else {
        images_after_gate(ctx, &compose, true, &progress).await?
    };
    // The gate passed, so the databases are stopped: their dumps are skipped with a notice
    // (unless --skip-docker-check left them running).
    let dumps = if ctx.settings.config.backup.dumps.is_empty() {
        Default::default()
    } else {
        let containers = ctx.containers(&compose).await?;
        let (t, c) = (req.backup_type, containers.as_deref());
        super::dumps::take_for_backup(ctx, t, &compose, c, false, &progress).await?
    };
    backup_at_level(
        ctx,
        req.backup_type,
        compose,
        images,
        Making {
            level: req.compression_level,
            dumps: Some(&dumps),
            full: req.full,
            restart: None,
        },
        &progress,
    )
    .await
}

/// The backup itself, after the gate (also used by auto-backup and upgrade), at the
/// configured compression level.
pub(crate) async fn backup_locked(
    ctx: &Ctx,
    backup_type: BackupType,
    compose: ComposeProject,
    images: Vec<ImageRecord>,
    progress: &Progress,
) -> Result<BackupEntry> {
    backup_at_level(
        ctx,
        backup_type,
        compose,
        images,
        Making::default(),
        progress,
    )
    .await
}

/// A backup that failed before its archive was started (a dump failed): its catalog row,
/// `failed` with the reason, and its finished journal entry, in one use case.
pub(crate) async fn record_failed(
    ctx: &Ctx,
    backup_type: BackupType,
    compose: &ComposeProject,
    message: &str,
) -> Result<()> {
    let created_at = Utc::now();
    let version = ctx.settings.service_version();
    let dest = unique_archive_path(
        &ctx.settings.paths.storage_dir,
        backup_type,
        &version,
        created_at,
    );
    let (op, id) = begin(ctx, backup_type, compose, version, created_at, &dest).await?;
    let msg = message.to_owned();
    ctx.store(|r| StoreMsg::FailBackupOperation(op, id, msg, r))
        .await
}

/// One use case, one transaction: the journal row and the catalog row (`running`) of a
/// backup to `dest`. Returns (operation id, backup id).
async fn begin(
    ctx: &Ctx,
    backup_type: BackupType,
    compose: &ComposeProject,
    version: String,
    created_at: DateTime<Utc>,
    dest: &Path,
) -> Result<(i64, i64)> {
    let journal = BackupJournal {
        backup_id: None,
        partial: partial_path(dest),
        dest: dest.to_path_buf(),
        stopped: Vec::new(),
    };
    let new = NewBackup {
        file_path: dest.to_path_buf(),
        backup_type,
        service_version: version,
        created_at,
        owner_pid: std::process::id(),
        compose_project: Some(compose.name.clone()),
    };
    let details = serde_json::to_value(&journal)
        .map_err(|e| Error::Internal(format!("cannot encode journal: {e}")))?;
    ctx.store(|r| StoreMsg::BeginBackup(new, details, r)).await
}

/// The storage dir can be created and written to (refused with exit 3 otherwise).
fn storage_usable(ctx: &Ctx) -> Result<()> {
    let storage = &ctx.settings.paths.storage_dir;
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
    Ok(())
}

/// Expected archive size / source bytes: the last backup's ratio with a margin, else 1.
async fn expected_ratio(ctx: &Ctx) -> Result<f64> {
    Ok(ctx
        .store(|r| StoreMsg::GetSetting(RATIO_KEY.into(), r))
        .await?
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|r| r.is_finite() && *r > 0.0)
        .map_or(1.0, |r| r.min(1.0) * 1.1))
}

/// The preflight of `auto-backup run`, `upgrade` and `backup --hot`, before the services are
/// stopped or the dumps taken: the storage dir is usable and the compose dir's bytes times
/// the expected ratio fit. An estimate from a walk of its own; the backup itself checks
/// again against its build's scan ([`backup_at_level`]).
pub(crate) async fn backup_preflight(ctx: &Ctx) -> Result<()> {
    storage_usable(ctx)?;
    let (dir, exclude) = (
        ctx.settings.paths.compose_dir.clone(),
        ctx.settings.config.backup.exclude.rules.clone(),
    );
    let sizes = super::blocking(move || crate::space::tree_bytes(&dir, &exclude)).await?;
    let source = sizes.values().fold(0u64, |a, b| a.saturating_add(*b));
    ensure_fits(ctx, source).await
}

/// Refuses ([`Error::NoSpace`], exit 3) unless `source` bytes times the expected ratio fit
/// in the storage dir.
async fn ensure_fits(ctx: &Ctx, source: u64) -> Result<()> {
    let ratio = expected_ratio(ctx).await?;
    crate::space::ensure(
        &ctx.settings.paths.storage_dir,
        (source as f64 * ratio) as u64,
    )
}

/// The previous archive an incremental build may copy unchanged files from: the newest
/// completed backup of this project with a recorded SHA-256 whose file is here (`None`, with
/// a notice saying why, when `full` or `[backup] full_every` asks for a full read).
async fn previous_archive(
    ctx: &Ctx,
    project: &str,
    full: bool,
    progress: &Progress,
) -> Result<Option<PathBuf>> {
    if full {
        progress.notice("--full: reading every file");
        return Ok(None);
    }
    let every = ctx.settings.config.backup.full_every;
    if every > 0 {
        let streak = ctx
            .store(|r| StoreMsg::GetSetting(STREAK_KEY.into(), r))
            .await?
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(0);
        if streak.saturating_add(1) >= every {
            progress.notice(format!(
                "[backup] full_every = {every}: this backup reads every file"
            ));
            return Ok(None);
        }
    }
    let backups = ctx.store(StoreMsg::ListBackups).await?;
    Ok(backups
        .into_iter()
        .filter(|b| {
            b.status == nuwax_store::BackupStatus::Completed
                && !b.legacy
                && b.sha256.is_some()
                && b.compose_project.as_deref() == Some(project)
                && b.file_path.is_file()
        })
        .max_by_key(|b| (b.created_at, b.id))
        .map(|b| b.file_path))
}

/// How one backup's archive is made, beyond the config.
#[derive(Clone, Copy, Default)]
pub(crate) struct Making<'a> {
    /// gzip level overriding `backup.compression_level`.
    pub level: Option<u32>,
    /// The dumps taken for it (none by default).
    pub dumps: Option<&'a super::dumps::Dumps>,
    /// Read every file (`backup --full`).
    pub full: bool,
    /// Services stopped for this backup, started again as soon as the live tree was read
    /// (`auto-backup run`): the copies from the previous archive are made after that.
    pub restart: Option<&'a EarlyRestart>,
}

/// The services a backup stopped, to start again as soon as nothing more is read from the
/// live tree (before the members of unchanged files are copied from the previous archive,
/// and before the archive is synced): the downtime of an incremental backup is what it
/// reads, not what it copies.
pub(crate) struct EarlyRestart {
    running: Vec<ContainerInfo>,
    /// The restart's result, once it was made.
    result: std::sync::Mutex<Option<Result<()>>>,
}

impl EarlyRestart {
    pub(crate) fn new(running: Vec<ContainerInfo>) -> Self {
        EarlyRestart {
            running,
            result: std::sync::Mutex::new(None),
        }
    }

    /// Starts the services, then runs `work` while their health is waited for (both are
    /// done when this returns; the restart's result is kept for [`Self::take`]).
    async fn restart_while<T>(
        &self,
        ctx: &Ctx,
        progress: &Progress,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        crate::faults::point("auto_backup.before_restart");
        let (result, done) =
            match super::services::start_exactly(ctx, &self.running, progress).await {
                Ok(started) => {
                    let (waited, done) = started.wait_while(ctx, progress, work).await;
                    (waited.map(|_| ()), done)
                }
                Err(e) => (Err(e), work.await),
            };
        *self.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
        done
    }

    /// Whether the services were started again (then the live tree may have changed).
    pub(crate) fn restarted(&self) -> bool {
        !self.running.is_empty()
            && self
                .result
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some()
    }

    /// The restart's result, if it was made; `None`: the caller still has to start them.
    pub(crate) fn take(&self) -> Option<Result<()>> {
        self.result.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// [`Runtime::backup_locked`] with the choices of `making` (level, dumps, full read).
pub(crate) async fn backup_at_level(
    ctx: &Ctx,
    backup_type: BackupType,
    compose: ComposeProject,
    images: Vec<ImageRecord>,
    making: Making<'_>,
    progress: &Progress,
) -> Result<BackupEntry> {
    let none = super::dumps::Dumps::default();
    let (level, dumps, full) = (making.level, making.dumps.unwrap_or(&none), making.full);
    let restart = making.restart;
    let paths = &ctx.settings.paths;
    let cfg = &ctx.settings.config;
    // Recipients that cannot be parsed refuse the backup (exit 2) whatever the scope: the
    // push after it would fail, and a key mistake must show the day it is made.
    let encryption = cfg
        .encryption
        .encryptor(&paths.config_file, &paths.work_dir)?;
    // A PreUpgrade backup is never encrypted here: the upgrade's automatic rollback restores
    // it without an identity on the host (a push still encrypts its offsite copy).
    let encryption = encryption.filter(|_| {
        cfg.encryption.scope == crate::encryption::Scope::All
            && backup_type != BackupType::PreUpgrade
    });
    storage_usable(ctx)?;
    let previous = previous_archive(ctx, &compose.name, full, progress).await?;
    let created_at = Utc::now();
    let version = ctx.settings.service_version();
    let dest = unique_archive_path(&paths.storage_dir, backup_type, &version, created_at);
    let dest = match &encryption {
        Some(_) => encrypted_path(&dest),
        None => dest,
    };
    let fingerprints = encryption.as_ref().map(|e| e.fingerprints.clone());
    let partial = partial_path(&dest);
    let mut opts = BuildOptions {
        source_dir: paths.compose_dir.clone(),
        dest: dest.clone(),
        exclude: cfg.backup.exclude.rules.clone(),
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
            excluded: cfg.backup.exclude.rules.clone(),
            images,
            // Filled in by the build from its scan.
            top_level_bytes: Default::default(),
            dumps: Vec::new(),
            hot: false,
        },
        dump_files: dumps.files.clone(),
        encryption,
        previous: previous.clone(),
    };
    dumps.apply(&mut opts.info, &mut opts.exclude);
    // The free-space preflight, before anything is recorded (DESIGN.md section 4, step 3
    // before step 4), from the build's own scan: the tree is walked once per backup.
    let scan_opts = Box::new(opts.clone());
    let scanned = match ctx
        .archive(|r| ArchiveMsg::Scan(scan_opts, progress.clone(), ctx.cancel.clone(), r))
        .await
    {
        Ok(s) => s,
        Err(e) => {
            // A tree that cannot be read fails the backup as it did inside the build: a
            // `failed` row says why (only the refusal for space records nothing).
            record_failed(ctx, backup_type, &compose, &e.to_string()).await?;
            return Err(e);
        }
    };
    ensure_fits(ctx, scanned.restore_bytes()).await?;
    let (op, id) = begin(ctx, backup_type, &compose, version, created_at, &dest).await?;
    crate::faults::point("backup.after_catalog_insert");
    crate::faults::point("backup.after_journal");
    let built = match restart {
        Some(early) => build_then_restart(ctx, opts, scanned, early, progress).await,
        None => {
            ctx.archive(|r| {
                let scanned = Some(Box::new(scanned));
                ArchiveMsg::Build(
                    Box::new(opts),
                    scanned,
                    progress.clone(),
                    ctx.cancel.clone(),
                    r,
                )
            })
            .await
        }
    };
    match built {
        Ok(report) => {
            // The defaults (`logs`, `uv_cache`) are not warned about: only what the operator
            // wrote in config.toml.
            if cfg.backup.exclude.configured {
                for rule in &report.unmatched_excludes {
                    progress.notice(format!(
                        "warning: [backup] exclude `{rule}` matched nothing in {}",
                        paths.compose_dir.display()
                    ));
                }
            }
            if report.reused_bytes > 0 {
                progress.notice(format!(
                    "copied {:.1} MiB of unchanged data from {}, compressed {:.1} MiB",
                    report.reused_bytes as f64 / 1048576.0,
                    previous.as_deref().unwrap_or(Path::new("?")).display(),
                    (report.source_bytes - report.reused_bytes) as f64 / 1048576.0
                ));
            }
            crate::faults::point("backup.before_catalog_complete");
            let setting = (report.source_bytes > 0).then(|| {
                let ratio = report.size as f64 / report.source_bytes as f64;
                (RATIO_KEY.to_owned(), ratio.to_string())
            });
            let completion = BackupCompletion {
                size: report.size,
                sha256: report.sha256.clone(),
                entry_count: report.entries,
                finished_at: Utc::now(),
            };
            ctx.store(|reply| StoreMsg::CompleteBackupOperation {
                op,
                id,
                completion,
                setting,
                reply,
            })
            .await?;
            if let Some(recipients) = fingerprints {
                let facts = nuwax_store::EncryptionFacts {
                    ciphertext_sha256: report.sha256.clone(),
                    recipients,
                };
                ctx.store(|r| StoreMsg::RecordEncryption(id, facts, r))
                    .await?;
            }
            let streak = if report.reused_bytes > 0 {
                ctx.store(|r| StoreMsg::GetSetting(STREAK_KEY.into(), r))
                    .await?
                    .and_then(|s| s.parse::<u32>().ok())
                    .unwrap_or(0)
                    .saturating_add(1)
            } else {
                0
            };
            ctx.store(|r| StoreMsg::SetSetting(STREAK_KEY.into(), streak.to_string(), r))
                .await?;
            ctx.get_backup(id).await
        }
        Err(e) => {
            // build() removed its .partial; make sure, then record why.
            let _ = std::fs::remove_file(&partial);
            let msg = e.to_string();
            ctx.store(|r| StoreMsg::FailBackupOperation(op, id, msg, r))
                .await?;
            Err(e)
        }
    }
}

/// The build in two steps: the live tree is read, the services start again (`early`),
/// and the members of unchanged files are copied from the previous archive after that,
/// while the services' health is waited for.
async fn build_then_restart(
    ctx: &Ctx,
    opts: BuildOptions,
    scanned: crate::archive::Scanned,
    early: &EarlyRestart,
    progress: &Progress,
) -> Result<crate::archive::BuildReport> {
    let unfinished = ctx
        .archive(|r| {
            ArchiveMsg::BuildLive(
                Box::new(opts),
                Box::new(scanned),
                progress.clone(),
                ctx.cancel.clone(),
                r,
            )
        })
        .await?;
    crate::faults::point("backup.live_read");
    // Once they start, the live tree may change: a copy that does not match cannot be
    // redone from it.
    let live_readable = early.running.is_empty();
    let finish = ctx.archive(|r| {
        ArchiveMsg::Finish(
            unfinished,
            live_readable,
            progress.clone(),
            ctx.cancel.clone(),
            r,
        )
    });
    early.restart_while(ctx, progress, finish).await
}

/// Runs the gate (unless there is no engine) and returns the images it saw.
pub(crate) async fn images_after_gate(
    ctx: &Ctx,
    compose: &crate::docker::ComposeProject,
    engine: bool,
    progress: &Progress,
) -> Result<Vec<ImageRecord>> {
    if !engine {
        return Ok(Vec::new());
    }
    let gate = gate(ctx, compose, progress).await?;
    Ok(gate
        .stopped
        .iter()
        .chain(&gate.warnings)
        .map(|g| ImageRecord {
            service: g.container.service.clone().unwrap_or_default(),
            container: g.container.name.clone(),
            image: g.container.image.clone(),
            image_id: g.container.image_id.clone(),
        })
        .collect())
}

/// `backup_{type}_v{version}_{UTC}.tar.gz`, with `_2`, `_3`... when taken.
/// `<name>.tar.gz.age`: the name of the archive encrypted.
pub(crate) fn encrypted_path(plain: &Path) -> PathBuf {
    let mut name = plain.as_os_str().to_owned();
    name.push(crate::encryption::AGE_SUFFIX);
    PathBuf::from(name)
}

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
        let sealed = encrypted_path(&p);
        if !p.exists()
            && !partial_path(&p).exists()
            && !sealed.exists()
            && !partial_path(&sealed).exists()
        {
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
