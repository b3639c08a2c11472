//! `drill`: a restore drill (issue 17). Proves that a backup boots, without touching the
//! live service.
//!
//! Design note: the backup is extracted with the same checks as a rollback (the archive's
//! SHA-256 against the catalog, every file against the manifest, safe entries) into a scratch
//! dir on the storage dir's filesystem (`<storage>/.nuwax-drill-<op>/staged`), never into the
//! live compose dir. Its compose file is rewritten (`docker/drill.rs`: no published ports, no
//! `container_name`, internal networks, bind mounts re-pointed into the scratch copy) and the
//! stack is brought up as its own compose project `<project>-drill-<backup id>`; the live
//! containers are never stopped, started or changed (nothing here sends a lifecycle message
//! about them). The drill waits with the upgrade runner's health rules, runs the
//! `[[drill.checks]]` through the exec API, then removes its project (by its exact compose
//! project label) and the scratch dir.
//!
//! The journal row is written before anything exists, with the project name and the scratch
//! dir, so a drill killed at any point is cleaned up by the next command (`recover_drill`);
//! Ctrl-C and SIGTERM clean up on the way out. `--keep` leaves a drill up for inspection: its
//! journal row is finished then, and recovery does not touch it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;
use nuwax_store::{
    BackupStatus, DrillFinish, DrillOutcome, DrillRecord, Operation, OperationState,
};
use serde::{Deserialize, Serialize};

use super::{BackupEntry, Ctx, services};
use crate::actors::archive_actor::ArchiveMsg;
use crate::actors::docker_actor::DockerMsg;
use crate::actors::store_actor::StoreMsg;
use crate::archive::{ExtractOptions, TopLevelFilter};
use crate::config::DrillCheck;
use crate::docker::drill::{DrillCompose, DrillPlaces};
use crate::docker::{ComposeProject, ContainerState, ProjectIdentity, compose, policy};
use crate::error::{Error, IoContext, Result};
use crate::progress::Progress;
use crate::restore;

/// Prefix of a drill's scratch dir in the storage dir.
const WORK_PREFIX: &str = ".nuwax-drill-";
/// The rewritten compose file, next to the backup's own in the scratch copy (so relative
/// paths resolve the same way).
const DRILL_COMPOSE: &str = ".nuwax-drill-compose.yml";
/// Log lines kept of the service that failed.
const LOG_LINES: usize = 20;

#[derive(Debug, Clone)]
pub struct DrillRequest {
    /// `None`: the newest completed backup.
    pub id: Option<i64>,
    /// Leave the drill project and the scratch copy for inspection.
    pub keep: bool,
    /// How long to wait for the services; default `[drill] timeout`, else
    /// `[upgrade] health_timeout`.
    pub timeout: Option<Duration>,
}

/// The journal of a drill: what the next command removes if this process dies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DrillJournal {
    pub backup_id: i64,
    #[serde(default)]
    pub drill_id: Option<i64>,
    /// The drill's compose project (never the live one).
    pub project: String,
    /// `<storage>/.nuwax-drill-<op>`; empty until named.
    pub work_dir: PathBuf,
}

/// One `[[drill.checks]]` and how it went.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub service: String,
    pub command: Vec<String>,
    pub passed: bool,
    pub exit_code: Option<i64>,
    /// The end of what the command printed.
    pub output: String,
    /// Why it failed.
    pub error: Option<String>,
}

/// A drill left up by `--keep`.
#[derive(Debug, Clone)]
pub struct KeptDrill {
    pub work_dir: PathBuf,
    pub compose_file: PathBuf,
    /// The commands that remove it.
    pub remove_with: String,
}

#[derive(Debug, Clone)]
pub struct DrillReport {
    pub drill_id: i64,
    pub backup: BackupEntry,
    /// The drill's compose project.
    pub project: String,
    /// `Passed` or `Failed`.
    pub outcome: DrillOutcome,
    pub duration: Duration,
    /// The persistent services that came up.
    pub services: Vec<String>,
    pub checks: Vec<CheckResult>,
    pub failed_service: Option<String>,
    pub log_tail: Option<String>,
    pub error: Option<String>,
    /// What the compose file rewrite dropped or re-pointed.
    pub notes: Vec<String>,
    pub kept: Option<KeptDrill>,
}

impl DrillReport {
    pub fn passed(&self) -> bool {
        self.outcome == DrillOutcome::Passed
    }

    /// The failure of a red drill (exit 1), naming the service.
    pub fn failure(&self) -> Option<Error> {
        (!self.passed()).then(|| {
            Error::DrillFailed(format!(
                "drill of backup {} failed{}: {}",
                self.backup.record.id,
                self.failed_service
                    .as_deref()
                    .map(|s| format!(" (service {s})"))
                    .unwrap_or_default(),
                self.error.as_deref().unwrap_or("unknown reason")
            ))
        })
    }
}

/// The one place a failed drill is reported from here (notifications attach here): the log.
/// Not on the progress channel: the caller shows the report itself (the CLI prints it once,
/// with the service's log lines, and `--json` carries it), so a notice would say it twice.
pub(crate) fn report_failed_drill(report: &DrillReport) {
    if let Some(e) = report.failure() {
        tracing::warn!(backup = report.backup.record.id, "{e}");
    }
}

/// `drill [ID]`.
pub(crate) async fn drill(ctx: &Ctx, req: DrillRequest, progress: Progress) -> Result<DrillReport> {
    let entry = match req.id {
        Some(id) => ctx.get_backup(id).await?,
        None => newest_completed(ctx).await?,
    };
    let entry = if entry.record.status == BackupStatus::Completed {
        super::remote::ensure_local(ctx, entry, &progress).await?
    } else {
        entry
    };
    let id = entry.record.id;
    if entry.record.status != BackupStatus::Completed {
        return Err(Error::Usage(format!(
            "backup {id} is {:?}; only a Completed backup can be drilled",
            entry.record.status
        )));
    }
    if !entry.file_exists {
        return Err(Error::ArchiveMissing {
            id,
            path: entry.record.file_path.clone(),
        });
    }
    if entry.record.legacy {
        return Err(Error::Usage(format!(
            "backup {id} was made by the original nuwax-cli and holds no compose file; it cannot be drilled (drill a backup made by this tool)"
        )));
    }
    let live = ctx.project_name();
    let project = drill_project_name(&live, id);
    // An engine is needed; its live containers are only listed, never touched.
    let leftovers = services::require_engine(
        ctx.docker(|r| DockerMsg::Containers(project.clone(), r))
            .await?,
    )?;
    if let Some(c) = leftovers
        .iter()
        .find(|c| c.project.as_deref() == Some(project.as_str()))
    {
        return Err(Error::Refused(format!(
            "drill project {project} already exists (container {}; left by `drill --keep`?); remove it with `docker compose -p {project} down --volumes` and the scratch dir {}/{WORK_PREFIX}*, then run the drill again",
            c.name,
            ctx.settings.paths.storage_dir.display()
        )));
    }
    // An encrypted backup needs its key ([encryption] identity_file): exit 2 before anything.
    let key = ctx.key_for(&entry.record.file_path)?;
    let info = ctx
        .archive(|r| ArchiveMsg::ReadInfo(entry.record.file_path.clone(), key, r))
        .await?;
    let storage = ctx.settings.paths.storage_dir.clone();
    crate::space::ensure(
        &storage,
        super::rollback::space_needed(&info, &TopLevelFilter::All, &entry)?,
    )?;

    let mut journal = DrillJournal {
        backup_id: id,
        drill_id: None,
        project: project.clone(),
        work_dir: PathBuf::new(),
    };
    let details = serde_json::to_value(&journal).unwrap_or_default();
    let (op, drill_id) = ctx
        .store(|r| StoreMsg::BeginDrillOperation(id, details, r))
        .await?;
    journal.drill_id = Some(drill_id);
    let started = Instant::now();
    progress.notice(format!(
        "drilling backup {id} as compose project {project} (the live stack {live} is not touched)"
    ));
    let mut run = DrillRun {
        ctx,
        op,
        journal,
        progress: &progress,
        up: false,
    };
    let result = run.run(&entry, &req).await;
    run.finish(entry, result, req.keep, drill_id, started).await
}

/// `<live>-drill-<id>`, normalised as compose does.
fn drill_project_name(live: &str, id: i64) -> String {
    let raw = format!("{live}-drill-{id}");
    compose::normalize_project_name(&raw).unwrap_or(raw)
}

async fn newest_completed(ctx: &Ctx) -> Result<BackupEntry> {
    ctx.list_backups()
        .await?
        .into_iter()
        .find(|e| e.record.status == BackupStatus::Completed && (e.file_exists || e.remote_copy))
        .ok_or_else(|| {
            Error::Usage(
                "there is no completed backup to drill; take one with `nuwax-cli backup`".into(),
            )
        })
}

/// What the drill found (before cleanup).
struct Found {
    outcome: DrillOutcome,
    services: Vec<String>,
    checks: Vec<CheckResult>,
    failed_service: Option<String>,
    log_tail: Option<String>,
    error: Option<String>,
    notes: Vec<String>,
    compose_file: PathBuf,
}

struct DrillRun<'a> {
    ctx: &'a Ctx,
    op: i64,
    journal: DrillJournal,
    progress: &'a Progress,
    /// The drill project may have containers.
    up: bool,
}

impl DrillRun<'_> {
    async fn run(&mut self, entry: &BackupEntry, req: &DrillRequest) -> Result<Found> {
        let ctx = self.ctx;
        let paths = &ctx.settings.paths;
        // Journaled before it exists.
        self.journal.work_dir =
            restore::new_work_dir_path(&paths.storage_dir, WORK_PREFIX, self.op)?;
        ctx.set_phase(self.op, "extracting", &self.journal).await?;
        crate::faults::point("drill.journaled_work_dir");
        restore::create_recorded_work_dir(&self.journal.work_dir)?;
        let staged = self.journal.work_dir.join("staged");
        let key = ctx.key_for(&entry.record.file_path)?;
        ctx.archive(|r| {
            ArchiveMsg::Extract(
                ExtractOptions {
                    archive: entry.record.file_path.clone(),
                    staging: staged.clone(),
                    filter: TopLevelFilter::All,
                    select: Vec::new(),
                    restore_owner: crate::fsutil::is_root(),
                    threads: 0,
                    expected_sha256: entry.record.sha256.clone(),
                    manifest: None,
                    key,
                    durable: false,
                },
                self.progress.clone(),
                ctx.cancel.clone(),
                r,
            )
        })
        .await?;
        ctx.cancel.check()?;

        // The backup's compose file, rewritten for the drill, next to the original.
        let rel = paths
            .compose_file
            .strip_prefix(&paths.compose_dir)
            .map_err(|_| {
                Error::Refused(format!(
                    "the compose file {} is not inside the compose dir {}",
                    paths.compose_file.display(),
                    paths.compose_dir.display()
                ))
            })?;
        let backup_compose = staged.join(rel);
        if !backup_compose.is_file() {
            return Err(Error::Refused(format!(
                "backup {} holds no compose file {}; there is nothing to bring up",
                entry.record.id,
                rel.display()
            )));
        }
        let scratch_dir = backup_compose.parent().unwrap_or(&staged).to_path_buf();
        let env_file = self.scratch_env_file(&staged);
        let places = DrillPlaces {
            live: vec![
                paths.compose_dir.clone(),
                crate::fsutil::canonical(&paths.compose_dir),
            ],
            scratch: scratch_dir.clone(),
        };
        let DrillCompose { yaml, notes } =
            crate::docker::drill::rewrite_file(&backup_compose, env_file.as_deref(), &places)?;
        for note in &notes {
            self.progress.notice(format!("drill: {note}"));
        }
        let compose_file = scratch_dir.join(DRILL_COMPOSE);
        std::fs::write(&compose_file, yaml).ctx("cannot write", &compose_file)?;
        let drilled = compose::load(
            &compose_file,
            env_file.as_deref(),
            Some(&self.journal.project),
        )?;

        // Up: from here the project may have containers.
        ctx.set_phase(self.op, "starting", &self.journal).await?;
        self.up = true;
        crate::faults::point("drill.before_up");
        ctx.cancel.check()?;
        self.progress.notice(format!(
            "starting the drill: docker compose -p {} up -d",
            self.journal.project
        ));
        ctx.docker(|r| DockerMsg::ComposeUp {
            compose_file: compose_file.clone(),
            env_file: env_file.clone(),
            project: self.journal.project.clone(),
            reply: r,
        })
        .await?;
        crate::faults::point("drill.after_up");
        let timeout = req.timeout.unwrap_or_else(|| {
            Duration::from_secs(
                ctx.settings
                    .config
                    .drill
                    .timeout
                    .unwrap_or(ctx.settings.config.upgrade.health_timeout),
            )
        });
        let mut found = Found {
            outcome: DrillOutcome::Passed,
            services: Vec::new(),
            checks: Vec::new(),
            failed_service: None,
            log_tail: None,
            error: None,
            notes,
            compose_file,
        };
        match services::wait_healthy_for(ctx, &drilled, Vec::new(), timeout, self.progress).await {
            Ok(()) => {}
            Err(Error::Interrupted) => return Err(Error::Interrupted),
            Err(e @ (Error::Docker(_) | Error::Refused(_))) => {
                let (service, logs) = self.failing_service(&drilled).await;
                found.outcome = DrillOutcome::Failed;
                found.failed_service = service;
                found.log_tail = logs;
                found.error = Some(e.to_string());
                return Ok(found);
            }
            Err(e) => return Err(e),
        }
        let containers = self.containers(&drilled).await?;
        found.services = containers
            .iter()
            .filter(|c| policy::is_persistent(&drilled, c))
            .filter_map(|c| c.service.clone())
            .collect();
        for check in &ctx.settings.config.drill.checks {
            ctx.cancel.check()?;
            let result = self.check(check, &containers).await?;
            if !result.passed && found.outcome == DrillOutcome::Passed {
                found.outcome = DrillOutcome::Failed;
                found.failed_service = Some(check.service.clone());
                found.log_tail = Some(result.output.clone()).filter(|o| !o.is_empty());
                found.error = result.error.clone();
            }
            found.checks.push(result);
        }
        Ok(found)
    }

    /// The env file the drill is interpolated with: the scratch copy's when the configured one
    /// is inside the compose dir, else the configured one (only read).
    fn scratch_env_file(&self, staged: &Path) -> Option<PathBuf> {
        let paths = &self.ctx.settings.paths;
        let env = match paths.env_file.strip_prefix(&paths.compose_dir) {
            Ok(rel) => staged.join(rel),
            Err(_) => paths.env_file.clone(),
        };
        env.is_file().then_some(env)
    }

    async fn containers(
        &self,
        drilled: &ComposeProject,
    ) -> Result<Vec<crate::docker::ContainerInfo>> {
        Ok(self.ctx.containers(drilled).await?.unwrap_or_default())
    }

    /// The first persistent service of the drill that is not up, and its last log lines.
    async fn failing_service(&self, drilled: &ComposeProject) -> (Option<String>, Option<String>) {
        let Ok(containers) = self.containers(drilled).await else {
            return (None, None);
        };
        let bad = containers
            .iter()
            .filter(|c| policy::is_persistent(drilled, c))
            .find(|c| {
                !matches!(c.state, ContainerState::Running)
                    || c.health.as_deref() == Some("unhealthy")
            })
            .or_else(|| {
                containers
                    .iter()
                    .find(|c| c.health.as_deref().is_some_and(|h| h != "healthy"))
            });
        let Some(bad) = bad else {
            return (None, None);
        };
        let id = bad.id.clone();
        let logs = self
            .ctx
            .docker(|r| DockerMsg::LogTail(id, LOG_LINES, r))
            .await
            .ok()
            .flatten();
        (bad.service.clone().or(Some(bad.name.clone())), logs)
    }

    async fn check(
        &self,
        check: &DrillCheck,
        containers: &[crate::docker::ContainerInfo],
    ) -> Result<CheckResult> {
        let mut result = CheckResult {
            service: check.service.clone(),
            command: check.command.clone(),
            passed: false,
            exit_code: None,
            output: String::new(),
            error: None,
        };
        let shown = check.command.join(" ");
        let Some(container) = containers.iter().find(|c| {
            c.service.as_deref() == Some(check.service.as_str())
                && c.state == ContainerState::Running
        }) else {
            result.error = Some(format!(
                "check `{shown}`: service {} has no running container in the drill",
                check.service
            ));
            return Ok(result);
        };
        self.progress
            .notice(format!("drill check in service {}: {shown}", check.service));
        let request = Box::new(crate::docker::engine::ExecRequest {
            container: container.id.clone(),
            label: format!(
                "the drill's container {} (service {})",
                container.name, check.service
            ),
            command: crate::dumps::ExecCommand {
                cmd: check.command.clone(),
                env: Vec::new(),
            },
            timeout: Duration::from_secs(check.timeout),
        });
        let timeout = request.timeout;
        let cancel = self.ctx.cancel.clone();
        match self
            .ctx
            .docker_for(timeout, |r| {
                DockerMsg::Exec(request, crate::docker::engine::ExecIo::Capture, cancel, r)
            })
            .await
            .map(CheckOutput::from)
        {
            Ok(out) => {
                result.exit_code = Some(out.exit_code);
                result.output = tail(&out.output, 2000);
                let status_ok = out.exit_code == check.expect_status;
                let output_ok = check
                    .expect_output
                    .as_deref()
                    .is_none_or(|want| out.output.contains(want));
                result.passed = status_ok && output_ok;
                if !status_ok {
                    result.error = Some(format!(
                        "check `{shown}` in service {} exited with {} (expected {})",
                        check.service, out.exit_code, check.expect_status
                    ));
                } else if !output_ok {
                    result.error = Some(format!(
                        "check `{shown}` in service {}: output does not contain {:?}",
                        check.service,
                        check.expect_output.as_deref().unwrap_or_default()
                    ));
                }
            }
            Err(Error::Interrupted) => return Err(Error::Interrupted),
            Err(e) => result.error = Some(e.to_string()),
        }
        Ok(result)
    }

    /// Removes the drill project and the scratch dir (not cancellable: this is the way out).
    async fn clean_up(&self) -> Result<()> {
        let ctx = self.ctx.uninterruptible();
        let mut first_error = None;
        if self.up {
            let project = self.journal.project.clone();
            if let Err(e) = ctx.docker(|r| DockerMsg::RemoveProject(project, r)).await {
                first_error.get_or_insert(e);
            }
        }
        if !self.journal.work_dir.as_os_str().is_empty()
            && std::fs::symlink_metadata(&self.journal.work_dir).is_ok()
            && let Err(e) = ctx.remove_tree(&self.journal.work_dir).await
        {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn finish(
        &self,
        backup: BackupEntry,
        result: Result<Found>,
        keep: bool,
        drill_id: i64,
        started: Instant,
    ) -> Result<DrillReport> {
        let ctx = self.ctx.uninterruptible();
        let keep = keep && self.up && result.is_ok();
        let cleanup = if keep { Ok(()) } else { self.clean_up().await };
        let (outcome, error, failed_service, log_tail) = match &result {
            Ok(f) => (
                f.outcome,
                f.error.clone(),
                f.failed_service.clone(),
                f.log_tail.clone(),
            ),
            Err(Error::Interrupted) => (
                DrillOutcome::Interrupted,
                Some(Error::Interrupted.to_string()),
                None,
                None,
            ),
            Err(e) => (DrillOutcome::Failed, Some(e.to_string()), None, None),
        };
        let finish = DrillFinish {
            outcome,
            finished_at: Utc::now(),
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            failed_service: failed_service.clone(),
            log_tail: log_tail.clone(),
            error: error.clone(),
        };
        let (op, project) = (self.op, self.journal.project.clone());
        match &cleanup {
            Ok(()) => {
                let state = if outcome == DrillOutcome::Passed {
                    OperationState::Succeeded
                } else {
                    OperationState::Failed
                };
                ctx.store(|r| {
                    StoreMsg::FinishDrillOperation(op, drill_id, Box::new(finish), state, r)
                })
                .await?;
            }
            Err(_) => {
                // The journal stays `running`: the next command's recovery removes the rest.
                ctx.store(|r| StoreMsg::FinishDrill(drill_id, Box::new(finish), r))
                    .await?;
            }
        }
        let found = match result {
            Ok(found) => found,
            Err(e) => {
                return Err(match cleanup {
                    Err(ce) => Error::Internal(format!(
                        "{e}; removing the drill ({project}) failed too: {ce}. The next nuwax-cli command will retry"
                    )),
                    Ok(()) => e,
                });
            }
        };
        if let Err(ce) = cleanup {
            return Err(Error::Internal(format!(
                "the drill ended ({}) but removing it ({project}) failed: {ce}. The next nuwax-cli command will retry",
                outcome.as_str()
            )));
        }
        let kept = keep.then(|| KeptDrill {
            remove_with: format!(
                "docker compose -p {project} -f {} down --volumes && rm -rf {}",
                found.compose_file.display(),
                self.journal.work_dir.display()
            ),
            work_dir: self.journal.work_dir.clone(),
            compose_file: found.compose_file.clone(),
        });
        let report = DrillReport {
            drill_id,
            backup,
            project,
            outcome,
            duration: started.elapsed(),
            services: found.services,
            checks: found.checks,
            failed_service,
            log_tail,
            error,
            notes: found.notes,
            kept,
        };
        report_failed_drill(&report);
        Ok(report)
    }
}

fn tail(s: &str, max: usize) -> String {
    let s = s.trim_end();
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

/// Start-up recovery of a drill whose process died: its project and scratch dir go, its
/// row says `interrupted`. Only a project named like a drill, not the live one, is removed.
pub(crate) async fn recover_drill(ctx: &Ctx, op: &Operation) -> Result<String> {
    let j: DrillJournal = serde_json::from_value(op.details.clone())
        .map_err(|e| Error::Internal(format!("unreadable journal of operation {}: {e}", op.id)))?;
    let live = ctx.project_name();
    if !j.project.contains("-drill-")
        || j.project == live
        || ProjectIdentity::named(&live).names.contains(&j.project)
    {
        return Err(Error::UnsafePath {
            what: "journaled drill project",
            path: PathBuf::from(&j.project),
            reason: format!("it is not a drill project of {live}; nothing was removed"),
        });
    }
    let removed = ctx
        .docker(|r| DockerMsg::RemoveProject(j.project.clone(), r))
        .await?;
    if !j.work_dir.as_os_str().is_empty() {
        let work = restore::checked_work_dir(&ctx.settings.paths.storage_dir, &j.work_dir)?;
        if std::fs::symlink_metadata(&work).is_ok() {
            ctx.remove_tree(&work).await?;
        }
    }
    if let Some(drill) = j.drill_id {
        let row: Option<DrillRecord> = ctx.store(|r| StoreMsg::GetDrill(drill, r)).await?;
        if row.is_some_and(|d| d.outcome == DrillOutcome::Running) {
            let finish = DrillFinish {
                outcome: DrillOutcome::Interrupted,
                finished_at: Utc::now(),
                duration_ms: u64::try_from((Utc::now() - op.started_at).num_milliseconds().max(0))
                    .unwrap_or(0),
                failed_service: None,
                log_tail: None,
                error: Some(format!(
                    "interrupted: process {} died in phase '{}'",
                    op.pid, op.phase
                )),
            };
            ctx.store(|r| StoreMsg::FinishDrill(drill, Box::new(finish), r))
                .await?;
        }
    }
    Ok(format!(
        "drill of backup {} was interrupted (pid {} died in phase '{}'); its project {} ({} removed) and scratch dir were removed",
        j.backup_id,
        op.pid,
        op.phase,
        j.project,
        removed.len()
    ))
}

/// What a check printed (the tails of stdout, then stderr) and its exit status (-1 when the
/// engine did not report one).
struct CheckOutput {
    exit_code: i64,
    output: String,
}

impl From<crate::docker::engine::ExecOutcome> for CheckOutput {
    fn from(o: crate::docker::engine::ExecOutcome) -> Self {
        let mut output = String::from_utf8_lossy(&o.stdout_tail).into_owned();
        output.push_str(&String::from_utf8_lossy(&o.stderr_tail));
        CheckOutput {
            exit_code: o.exit_code.unwrap_or(-1),
            output,
        }
    }
}
