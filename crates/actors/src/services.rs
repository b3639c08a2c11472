//! Service lifecycle (`docker-service`), the start after a rollback, and `auto-backup run`.
//!
//! Design note: whatever this tool stops, it starts again: the list of stopped containers is
//! written to the operation journal *before* stopping, so even when the process is killed
//! mid-way the next invocation (recovery) starts exactly those containers again. Starting
//! only what was running before means a dependency the operator had stopped on purpose stays
//! stopped (bombvault#33).

use std::time::Duration;

use chrono::Utc;
use nuwax_store::{BackupType, OperationKind, OperationState};
use serde::{Deserialize, Serialize};

use crate::actors::docker_actor::DockerMsg;
use crate::actors::store_actor::StoreMsg;
use crate::docker::{ComposeProject, ContainerInfo, policy};
use crate::error::{Error, Result};
use crate::progress::{Phase, Progress};
use crate::runtime::{BackupEntry, Runtime};

/// One container of the project as `docker-service status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceState {
    pub container: ContainerInfo,
    pub one_shot: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub project: String,
    /// No engine socket on this machine.
    pub engine_absent: bool,
    pub services: Vec<ServiceState>,
}

/// How a start went.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StartReport {
    /// Containers started (names).
    pub started: Vec<String>,
    /// `docker compose up -d` was used (the project had no containers, or the compose file
    /// changed in a rollback).
    pub compose_up: bool,
}

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
}

impl AutoBackupReport {
    /// The backup was taken and everything that ran runs again.
    pub fn ok(&self) -> bool {
        self.backup_error.is_none() && self.restart_error.is_none()
    }

    /// The error that decides the exit code: an interruption first (the operator asked to
    /// stop), then the backup's own error, then the restart's.
    pub fn error(&self) -> Option<&Error> {
        let interrupted = |e: &&Error| matches!(e, Error::Interrupted);
        self.backup_error
            .iter()
            .chain(&self.restart_error)
            .find(interrupted)
            .or(self.backup_error.as_ref())
            .or(self.restart_error.as_ref())
    }

    /// Both errors, joined.
    pub fn error_text(&self) -> String {
        self.backup_error
            .iter()
            .chain(&self.restart_error)
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The active persistent containers among `containers`: what a cold backup must stop and
/// start again afterwards.
pub(crate) fn running_persistent(
    compose: &ComposeProject,
    containers: Option<&[ContainerInfo]>,
) -> Vec<ContainerInfo> {
    containers
        .unwrap_or_default()
        .iter()
        .filter(|c| policy::is_active(&c.state) && policy::is_persistent(compose, c))
        .cloned()
        .collect()
}

/// The one compose project label all of `containers` carry, if they agree on one.
fn name_in_use(containers: &[ContainerInfo]) -> Option<String> {
    let mut names = containers.iter().filter_map(|c| c.project.as_deref());
    let first = names.next()?;
    names.all(|n| n == first).then(|| first.to_string())
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

impl Runtime {
    fn start_timeout(&self) -> Duration {
        Duration::from_secs(self.settings.config.docker.start_timeout)
    }

    /// The compose project when the compose file parses, else a bare one with the name (and
    /// every spelling of it, and the compose file's place, to find its containers by).
    pub(crate) fn compose_or_bare(&self) -> ComposeProject {
        self.compose_project().unwrap_or_else(|_| {
            let name = self.project_name();
            let configured = self
                .settings
                .config
                .docker
                .project
                .as_deref()
                .map(str::trim)
                .filter(|p| !p.is_empty());
            let dir = self
                .settings
                .paths
                .compose_dir
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let raw = configured.unwrap_or(&dir);
            let mut identity = crate::docker::compose::identity(
                &[raw],
                configured.is_some(),
                &self.settings.paths.compose_file,
            );
            if identity.primary() != name {
                // `name` is what compose -p gets: it must come first.
                identity.names.retain(|n| n != &name);
                identity.names.insert(0, name.clone());
            }
            ComposeProject {
                name,
                services: Default::default(),
                identity,
            }
        })
    }

    /// The project's containers with dependencies filled from the compose file (compose v1
    /// sets no depends_on label); `None` when there is no engine.
    pub(crate) async fn containers(
        &self,
        compose: &ComposeProject,
    ) -> Result<Option<Vec<ContainerInfo>>> {
        let identity = compose.discovery();
        let mut list = self.docker(|r| DockerMsg::Find(identity, r)).await?;
        if let Some(list) = &mut list {
            policy::fill_missing_dependencies(list, compose);
        }
        Ok(list)
    }

    pub async fn service_status(&self) -> Result<ServiceStatus> {
        let compose = self.compose_or_bare();
        let containers = self.containers(&compose).await?;
        Ok(ServiceStatus {
            project: compose.name.clone(),
            engine_absent: containers.is_none(),
            services: containers
                .unwrap_or_default()
                .into_iter()
                .map(|c| ServiceState {
                    one_shot: !policy::is_persistent(&compose, &c),
                    container: c,
                })
                .collect(),
        })
    }

    fn require_engine<T>(list: Option<T>) -> Result<T> {
        list.ok_or_else(|| {
            Error::Refused(
                "no Docker engine socket found on this machine (set DOCKER_HOST if it listens elsewhere)".into(),
            )
        })
    }

    /// Stops the project's active persistent containers in reverse dependency order.
    /// One-shot jobs still running are left alone (stopping a migration mid-way is worse).
    pub async fn stop_services(&self, progress: &Progress) -> Result<Vec<ContainerInfo>> {
        let compose = self.compose_or_bare();
        let containers = Self::require_engine(self.containers(&compose).await?)?;
        let active = running_persistent(&compose, Some(&containers));
        if active.is_empty() {
            return Ok(active);
        }
        progress.phase(Phase::Stopping, None, Some(active.len() as u64));
        let list = active.clone();
        let names = self
            .docker(|r| DockerMsg::Stop(list, progress.clone(), r))
            .await?;
        // In the order they actually stopped (reverse dependency order).
        Ok(names
            .iter()
            .filter_map(|n| active.iter().find(|c| &c.name == n).cloned())
            .collect())
    }

    /// Starts the project: existing containers in dependency order (compose's `start`), or
    /// `docker compose up -d` when the project has no containers yet; then waits until every
    /// persistent service runs and is healthy.
    pub async fn start_services(&self, progress: &Progress) -> Result<StartReport> {
        let compose = self.compose_or_bare();
        let containers = Self::require_engine(self.containers(&compose).await?)?;
        let mut report = StartReport::default();
        if containers.is_empty() {
            self.compose_up(&compose, progress).await?;
            report.compose_up = true;
        } else {
            let to_start: Vec<ContainerInfo> = containers
                .into_iter()
                .filter(|c| !policy::is_active(&c.state))
                .collect();
            report.started = to_start.iter().map(|c| c.name.clone()).collect();
            if !to_start.is_empty() {
                progress.phase(Phase::Starting, None, Some(to_start.len() as u64));
                let cancel = self.cancel_flag();
                self.docker(|r| {
                    DockerMsg::StartInterruptible(to_start, progress.clone(), cancel, r)
                })
                .await?;
            }
        }
        self.wait_healthy(&compose, Vec::new(), progress).await?;
        Ok(report)
    }

    pub(crate) async fn compose_up(
        &self,
        compose: &ComposeProject,
        progress: &Progress,
    ) -> Result<()> {
        let p = &self.settings.paths;
        if !p.compose_file.exists() {
            return Err(Error::Refused(format!(
                "the project has no containers and the compose file {} does not exist",
                p.compose_file.display()
            )));
        }
        // The name the existing containers carry (docker-compose v1 keeps a leading `_` that
        // our name drops): `up` under another name would make a second set of containers next
        // to the first.
        let existing = self.containers(compose).await?.unwrap_or_default();
        let project = name_in_use(&existing).unwrap_or_else(|| compose.name.clone());
        progress.phase(Phase::Starting, None, None);
        progress.notice(format!(
            "creating the project's containers: docker compose -p {project} up -d"
        ));
        let compose_file = p.compose_file.clone();
        let env_file = p.env_file.exists().then(|| p.env_file.clone());
        self.docker(|r| DockerMsg::ComposeUp {
            compose_file,
            env_file,
            project,
            reply: r,
        })
        .await
    }

    pub(crate) async fn wait_healthy(
        &self,
        compose: &ComposeProject,
        only: Vec<String>,
        progress: &Progress,
    ) -> Result<()> {
        self.wait_healthy_for(compose, only, self.start_timeout(), progress)
            .await
    }

    pub(crate) async fn wait_healthy_for(
        &self,
        compose: &ComposeProject,
        only: Vec<String>,
        timeout: Duration,
        progress: &Progress,
    ) -> Result<()> {
        let cancel = self.cancel_flag();
        self.docker(|r| {
            DockerMsg::WaitHealthy(compose.clone(), only, timeout, progress.clone(), cancel, r)
        })
        .await
    }

    /// Starts exactly `containers` again (dependency order) and waits for them.
    ///
    /// The start itself is not cancellable: this is what puts back what this process stopped,
    /// also (above all) after Ctrl-C, SIGTERM or SIGHUP. Once cancelled, it starts them and
    /// returns without the health wait.
    pub(crate) async fn restart_exactly(
        &self,
        containers: &[ContainerInfo],
        progress: &Progress,
    ) -> Result<()> {
        if containers.is_empty() {
            return Ok(());
        }
        let compose = self.compose_or_bare();
        progress.phase(Phase::Starting, None, Some(containers.len() as u64));
        let list = containers.to_vec();
        self.docker(|r| DockerMsg::Start(list, progress.clone(), r))
            .await?;
        if self.cancel_flag().is_cancelled() {
            progress.notice("interrupted: the stopped services were started again; not waiting for their health");
            return Ok(());
        }
        let names = containers.iter().map(|c| c.name.clone()).collect();
        self.wait_healthy(&compose, names, progress).await
    }

    /// `auto-backup run`: stop what runs, back up (type Auto), start exactly what ran, also
    /// when the backup fails; then record the result and apply `[backup.retention]`.
    pub async fn auto_backup(&self, progress: Progress) -> Result<AutoBackupReport> {
        let started_at = Utc::now();
        let run = self
            .stopped_backup(BackupType::Auto, progress.clone())
            .await;
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
        let text = serde_json::to_string(&status).unwrap_or_default();
        self.store(|r| StoreMsg::SetSetting(AUTO_STATUS_KEY.into(), text, r))
            .await?;
        let mut report = run?;
        let rules = crate::retention::KeepRules::from(&self.settings.config.backup.retention);
        if ok && !rules.is_empty() {
            match self.prune(&rules, false).await {
                Ok(decisions) => report.pruned = decisions.iter().filter(|d| !d.keep).count(),
                Err(e) => progress.notice(format!("warning: retention was not applied: {e}")),
            }
        }
        Ok(report)
    }

    /// Stops what runs, takes a backup of `kind`, and starts exactly what ran, also when the
    /// backup fails.
    pub(crate) async fn stopped_backup(
        &self,
        kind: BackupType,
        progress: Progress,
    ) -> Result<AutoBackupReport> {
        let compose = self.compose_project()?;
        let containers = self.containers(&compose).await?;
        if containers.is_none() {
            progress.notice(
                "warning: no Docker engine socket found on this machine; backing up without stopping anything",
            );
        }
        let running = running_persistent(&compose, containers.as_deref());
        // Whatever would make the backup fail for sure is checked before anything is stopped.
        self.backup_preflight().await?;
        self.cancel_flag().check()?;
        // Journal first: if we die after stopping, the next run starts them again.
        let op = self
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
        };
        let backup_result = async {
            if !running.is_empty() {
                progress.phase(Phase::Stopping, None, Some(running.len() as u64));
                let list = running.clone();
                self.docker(|r| DockerMsg::Stop(list, progress.clone(), r))
                    .await?;
            }
            crate::faults::point("auto_backup.after_stop");
            self.cancel_flag().check()?;
            // The gate must pass now; it also records the images.
            let images = self
                .images_after_gate(&compose, containers.is_some(), &progress)
                .await?;
            self.backup_locked(kind, compose.clone(), images, &progress)
                .await
        }
        .await;
        match backup_result {
            Ok(entry) => report.backup = Some(entry),
            Err(e) => report.backup_error = Some(e),
        }
        crate::faults::point("auto_backup.before_restart");
        if let Err(e) = self.restart_exactly(&running, &progress).await {
            report.restart_error = Some(e);
        }
        let (ok, err) = (report.ok(), report.error_text());
        self.store(|r| {
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

    pub async fn auto_backup_status(&self) -> Result<AutoBackupStatus> {
        let text = self
            .store(|r| StoreMsg::GetSetting(AUTO_STATUS_KEY.into(), r))
            .await?;
        Ok(text
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labelled(project: Option<&str>) -> ContainerInfo {
        ContainerInfo {
            id: "id".into(),
            name: "n".into(),
            service: None,
            state: "exited".into(),
            health: None,
            restart_policy: "no".into(),
            image: "i".into(),
            image_id: "sha256:0".into(),
            depends_on: Vec::new(),
            stop_timeout: None,
            project: project.map(String::from),
        }
    }

    #[test]
    fn compose_up_reuses_the_name_the_containers_carry() {
        assert_eq!(name_in_use(&[]), None);
        let v1 = [
            labelled(Some("_app")),
            labelled(Some("_app")),
            labelled(None),
        ];
        assert_eq!(name_in_use(&v1).as_deref(), Some("_app"));
        // Two sets under two names: no single name in use, ours is used.
        assert_eq!(
            name_in_use(&[labelled(Some("_app")), labelled(Some("app"))]),
            None
        );
    }
}
