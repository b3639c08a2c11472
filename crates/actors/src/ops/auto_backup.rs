//! `auto-backup run|status`: the cron-safe backup. Checks the storage dir and free space, stops
//! the project, backs up, and starts exactly what was running (also when the backup fails, and
//! after a kill, through recovery), then applies `[backup.retention]`.

use chrono::Utc;
use nuwax_store::{BackupType, OperationKind, OperationState};
use serde::{Deserialize, Serialize};

use super::services::running_persistent;
use super::{BackupEntry, backup, maintenance, services};
use crate::docker::ContainerInfo;

use super::Ctx;
use crate::actors::docker_actor::DockerMsg;
use crate::actors::store_actor::StoreMsg;
use crate::error::{Error, Result};
use crate::progress::{Phase, Progress};

/// Journal details of an auto-backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AutoBackupJournal {
    pub stopped: Vec<ContainerInfo>,
}

#[derive(Debug)]
pub struct AutoBackupReport {
    pub backup: Option<BackupEntry>,
    /// Why the backup failed (the services were restarted anyway). Typed, so the CLI keeps
    /// `backup`'s exit codes (3 for no space, 130 for Ctrl-C...).
    pub backup_error: Option<Error>,
    pub stopped: Vec<String>,
    /// Why restarting failed, if it did.
    pub restart_error: Option<Error>,
    /// Backups deleted by `[backup.retention]` afterwards.
    pub pruned: usize,
    /// `auto-backup run --drill`: the drill of the backup just made.
    pub drill: Option<super::drill::DrillReport>,
    /// Why the drill failed (a red drill is [`Error::DrillFailed`]): the run fails (exit 1).
    pub drill_error: Option<Error>,
}

impl AutoBackupReport {
    /// A hot backup: nothing was stopped.
    fn hot(entry: BackupEntry) -> Self {
        AutoBackupReport {
            backup: Some(entry),
            backup_error: None,
            stopped: Vec::new(),
            restart_error: None,
            pruned: 0,
            drill: None,
            drill_error: None,
        }
    }

    /// The backup was taken and everything that ran runs again.
    pub fn ok(&self) -> bool {
        self.backup_error.is_none() && self.restart_error.is_none() && self.drill_error.is_none()
    }

    /// The error that decides the exit code: an interruption first (the operator asked to
    /// stop), then the backup's own error, then the restart's.
    pub fn error(&self) -> Option<&Error> {
        let interrupted = |e: &&Error| matches!(e, Error::Interrupted);
        self.backup_error
            .iter()
            .chain(&self.restart_error)
            .chain(&self.drill_error)
            .find(interrupted)
            .or(self.backup_error.as_ref())
            .or(self.restart_error.as_ref())
            .or(self.drill_error.as_ref())
    }

    /// Both errors, joined.
    pub fn error_text(&self) -> String {
        self.backup_error
            .iter()
            .chain(&self.restart_error)
            .chain(&self.drill_error)
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Bookkeeping of the last `auto-backup run`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AutoBackupStatus {
    /// RFC 3339 UTC start of the last run.
    pub last_run: Option<String>,
    /// `success` or `failed`.
    pub last_result: Option<String>,
    pub last_backup_id: Option<i64>,
    pub last_archive: Option<String>,
    pub last_error: Option<String>,
}

const AUTO_STATUS_KEY: &str = "auto_backup.status";

/// `auto-backup run`: stop what runs, back up (type Auto), start exactly what ran, also
/// when the backup fails; with `drill`, drill the new backup (after the restart, so the
/// downtime does not grow); then record the result and apply `[backup.retention]`.
pub(crate) async fn auto_backup(
    ctx: &Ctx,
    hot: bool,
    drill: bool,
    progress: Progress,
) -> Result<AutoBackupReport> {
    let started_at = Utc::now();
    let mut run = if hot {
        super::dumps::hot_backup(ctx, BackupType::Auto, None, false, &progress)
            .await
            .map(AutoBackupReport::hot)
    } else {
        stopped_backup(ctx, BackupType::Auto, progress.clone()).await
    };
    if drill
        && let Ok(report) = &mut run
        && report.ok()
        && let Some(id) = report.backup.as_ref().map(|b| b.record.id)
    {
        let req = super::drill::DrillRequest {
            id: Some(id),
            keep: false,
            timeout: None,
        };
        match super::drill::drill(ctx, req, progress.clone()).await {
            Ok(d) => {
                report.drill_error = d.failure();
                report.drill = Some(d);
            }
            Err(e) => report.drill_error = Some(e),
        }
    }
    let (ok, err) = match &run {
        Ok(report) => (report.ok(), report.error_text()),
        Err(e) => (false, e.to_string()),
    };
    let backup = run.as_ref().ok().and_then(|r| r.backup.as_ref());
    let status = AutoBackupStatus {
        last_run: Some(started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        last_result: Some(if ok { "success" } else { "failed" }.into()),
        last_backup_id: backup.map(|b| b.record.id),
        last_archive: backup.map(|b| b.record.file_path.display().to_string()),
        last_error: (!ok).then_some(err),
    };
    save_status(ctx, &status).await?;
    let mut report = run?;
    let rules = crate::retention::KeepRules::from(&ctx.settings.config.backup.retention);
    if ok && !rules.is_empty() {
        match maintenance::prune(ctx, &rules, false).await {
            Ok(decisions) => report.pruned = decisions.iter().filter(|d| !d.keep).count(),
            Err(e) => progress.notice(format!("warning: retention was not applied: {e}")),
        }
    }
    Ok(report)
}

/// Stops what runs, takes a backup of `kind`, and starts exactly what ran, also when the
/// backup fails.
pub(crate) async fn stopped_backup(
    ctx: &Ctx,
    kind: BackupType,
    progress: Progress,
) -> Result<AutoBackupReport> {
    let compose = ctx.compose_project()?;
    let containers = ctx.containers(&compose).await?;
    if containers.is_none() {
        progress.notice(
            "warning: no Docker engine socket found on this machine; backing up without stopping anything",
        );
    }
    let running = running_persistent(&compose, containers.as_deref());
    // Whatever would make the backup fail for sure is checked before anything is stopped.
    backup::backup_preflight(ctx).await?;
    ctx.cancel.clone().check()?;
    // The dumps need the databases running: taken before anything is stopped (a failed one
    // ends the run here, recorded as a failed backup).
    let dumps =
        super::dumps::take_for_backup(ctx, kind, &compose, containers.as_deref(), false, &progress)
            .await?;
    // Journal first: if we die after stopping, the next run starts them again.
    let op = ctx
        .store(|r| {
            StoreMsg::BeginOperation(
                OperationKind::AutoBackup,
                serde_json::to_value(AutoBackupJournal {
                    stopped: running.clone(),
                })
                .unwrap_or_default(),
                r,
            )
        })
        .await?;
    let mut report = AutoBackupReport {
        backup: None,
        backup_error: None,
        stopped: running.iter().map(|c| c.name.clone()).collect(),
        restart_error: None,
        pruned: 0,
        drill: None,
        drill_error: None,
    };
    // The services start again as soon as the live tree was read; the members of unchanged
    // files are copied from the previous archive after that.
    let early = backup::EarlyRestart::new(running.clone());
    let mut full = false;
    let backup_result = loop {
        let attempt = async {
            if !running.is_empty() {
                progress.phase(Phase::Stopping, None, Some(running.len() as u64));
                let list = running.clone();
                ctx.docker(|r| DockerMsg::Stop(list, progress.clone(), r))
                    .await?;
            }
            crate::faults::point("auto_backup.after_stop");
            ctx.cancel.clone().check()?;
            // The gate must pass now; it also records the images.
            let images =
                backup::images_after_gate(ctx, &compose, containers.is_some(), &progress).await?;
            let making = backup::Making {
                dumps: Some(&dumps),
                restart: Some(&early),
                full,
                ..backup::Making::default()
            };
            backup::backup_at_level(ctx, kind, compose.clone(), images, making, &progress).await
        }
        .await;
        match attempt {
            // A member copied from the previous archive after the restart did not match its
            // checksum: the live tree may have changed since, so the backup is taken again,
            // stopped, every file read.
            Err(Error::Corrupt { path, detail }) if !full && early.restarted() => {
                match early.take() {
                    Some(Err(e)) => {
                        report.restart_error = Some(e);
                        break Err(Error::Corrupt { path, detail });
                    }
                    _ => {
                        progress.notice(format!(
                            "{}: {detail}; stopping the services again to take the backup reading every file",
                            path.display()
                        ));
                        full = true;
                    }
                }
            }
            other => break other,
        }
    };
    match backup_result {
        Ok(entry) => report.backup = Some(entry),
        Err(e) => report.backup_error = Some(e),
    }
    match early.take() {
        Some(Ok(())) => {}
        Some(Err(e)) => report.restart_error = Some(e),
        None => {
            crate::faults::point("auto_backup.before_restart");
            if let Err(e) = services::restart_exactly(ctx, &running, &progress).await {
                report.restart_error = Some(e);
            }
        }
    }
    let (ok, err) = (report.ok(), report.error_text());
    ctx.store(|r| {
        StoreMsg::FinishOperation(
            op,
            if ok {
                OperationState::Succeeded
            } else {
                OperationState::Failed
            },
            (!ok).then(|| err.clone()),
            r,
        )
    })
    .await?;
    Ok(report)
}

/// Records the result of a run for `auto-backup status` (also of one a failed `pre_backup`
/// hook kept from starting).
pub(crate) async fn save_status(ctx: &Ctx, status: &AutoBackupStatus) -> Result<()> {
    let text = serde_json::to_string(status).unwrap_or_default();
    ctx.store(|r| StoreMsg::SetSetting(AUTO_STATUS_KEY.into(), text, r))
        .await
}

pub(crate) async fn auto_backup_status(ctx: &Ctx) -> Result<AutoBackupStatus> {
    let text = ctx
        .store(|r| StoreMsg::GetSetting(AUTO_STATUS_KEY.into(), r))
        .await?;
    Ok(text
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default())
}
