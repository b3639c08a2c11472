//! Service lifecycle (`docker-service`), and starting what an operation stopped.
//!
//! Design note: whatever this tool stops, it starts again: the list of stopped containers is
//! written to the operation journal *before* stopping, so even when the process is killed
//! mid-way the next invocation (recovery) starts exactly those containers again. Starting
//! only what was running before means a dependency the operator had stopped on purpose stays
//! stopped.

use std::time::Duration;

use serde::Serialize;

use crate::docker::{ComposeProject, ContainerInfo, policy};

use super::Ctx;
use crate::actors::docker_actor::DockerMsg;
use crate::error::{Error, Result};
use crate::progress::{Phase, Progress};

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
    /// The configured compose file, when it does not exist (not a working dir, or
    /// `[docker] compose_file` points elsewhere): the project is then known by name only.
    pub missing_compose_file: Option<std::path::PathBuf>,
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

pub(crate) async fn service_status(ctx: &Ctx) -> Result<ServiceStatus> {
    let compose = ctx.compose_or_bare();
    let containers = ctx.containers(&compose).await?;
    let compose_file = &ctx.settings.paths.compose_file;
    Ok(ServiceStatus {
        missing_compose_file: (!compose_file.exists()).then(|| compose_file.clone()),
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

pub(crate) fn require_engine<T>(list: Option<T>) -> Result<T> {
    list.ok_or_else(|| {
        Error::Refused(
            "no Docker engine socket found on this machine (set DOCKER_HOST if it listens elsewhere)".into(),
        )
    })
}

/// Stops the project's active persistent containers in reverse dependency order.
/// One-shot jobs still running are left alone (stopping a migration mid-way is worse).
pub(crate) async fn stop_services(ctx: &Ctx, progress: &Progress) -> Result<Vec<ContainerInfo>> {
    let compose = ctx.compose_or_bare();
    let containers = require_engine(ctx.containers(&compose).await?)?;
    let active = running_persistent(&compose, Some(&containers));
    if active.is_empty() {
        return Ok(active);
    }
    progress.phase(Phase::Stopping, None, Some(active.len() as u64));
    let list = active.clone();
    let names = ctx
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
pub(crate) async fn start_services(ctx: &Ctx, progress: &Progress) -> Result<StartReport> {
    let (report, started) = start_services_unwaited(ctx, progress).await?;
    started.wait(ctx, progress).await?;
    Ok(report)
}

/// [`start_services`] up to the health wait, which is left to the caller.
pub(crate) async fn start_services_unwaited(
    ctx: &Ctx,
    progress: &Progress,
) -> Result<(StartReport, Started)> {
    let compose = ctx.compose_or_bare();
    let containers = require_engine(ctx.containers(&compose).await?)?;
    let mut report = StartReport::default();
    if containers.is_empty() {
        compose_up(ctx, &compose, progress).await?;
        report.compose_up = true;
    } else {
        let to_start: Vec<ContainerInfo> = containers
            .into_iter()
            .filter(|c| !policy::is_active(&c.state))
            .collect();
        report.started = to_start.iter().map(|c| c.name.clone()).collect();
        if !to_start.is_empty() {
            progress.phase(Phase::Starting, None, Some(to_start.len() as u64));
            let cancel = ctx.cancel.clone();
            ctx.docker_for(ctx.start_timeout(), |r| {
                DockerMsg::StartInterruptible(to_start, progress.clone(), cancel, r)
            })
            .await?;
        }
    }
    Ok((report, Started::project(compose)))
}

/// Services that were started and whose health is still to be waited for: [`Self::wait`],
/// or [`Self::wait_while`] to do other work meanwhile (what follows a start rarely needs
/// the services healthy, and a container without a healthcheck is only trusted after it
/// ran for a while).
#[must_use = "the services' health is not known until it is waited for"]
pub(crate) struct Started {
    /// What to wait for; `None`: nothing (nothing was started, or the start was
    /// interrupted).
    wait: Option<(ComposeProject, Vec<String>)>,
    /// How long; `None`: the configured start timeout.
    timeout: Option<Duration>,
}

impl Started {
    /// Every persistent service of `compose`.
    pub(crate) fn project(compose: ComposeProject) -> Self {
        Started {
            wait: Some((compose, Vec::new())),
            timeout: None,
        }
    }

    /// Every persistent service of `compose`, waited for at most `timeout`.
    pub(crate) fn project_within(compose: ComposeProject, timeout: Duration) -> Self {
        Started {
            timeout: Some(timeout),
            ..Self::project(compose)
        }
    }

    fn nothing() -> Self {
        Started {
            wait: None,
            timeout: None,
        }
    }

    /// Waits until the started services run and are healthy.
    pub(crate) async fn wait(self, ctx: &Ctx, progress: &Progress) -> Result<()> {
        let timeout = self.timeout.unwrap_or_else(|| ctx.start_timeout());
        match self.wait {
            Some((compose, only)) => wait_healthy_for(ctx, &compose, only, timeout, progress).await,
            None => Ok(()),
        }
    }

    /// Waits for the services' health while `work` runs, and returns both results, the
    /// wait's with the moment the services were ready. `work` reports its own phases; the
    /// wait reports only its containers' states, and the phase `waiting` once `work` is
    /// done and the wait is not.
    pub(crate) async fn wait_while<T>(
        self,
        ctx: &Ctx,
        progress: &Progress,
        work: impl std::future::Future<Output = T>,
    ) -> (Result<std::time::Instant>, T) {
        let ready = std::sync::atomic::AtomicBool::new(false);
        let states_only = progress.states_only();
        let wait = async {
            let waited = self.wait(ctx, &states_only).await;
            ready.store(true, std::sync::atomic::Ordering::Relaxed);
            waited.map(|()| std::time::Instant::now())
        };
        let work = async {
            let done = work.await;
            if !ready.load(std::sync::atomic::Ordering::Relaxed) {
                progress.phase(Phase::Waiting, None, None);
            }
            done
        };
        tokio::join!(wait, work)
    }
}

pub(crate) async fn compose_up(
    ctx: &Ctx,
    compose: &ComposeProject,
    progress: &Progress,
) -> Result<()> {
    let p = &ctx.settings.paths;
    if !p.compose_file.exists() {
        return Err(Error::Refused(format!(
            "the project has no containers and the compose file {} does not exist",
            p.compose_file.display()
        )));
    }
    // The name the existing containers carry (docker-compose v1 keeps a leading `_` that
    // our name drops): `up` under another name would make a second set of containers next
    // to the first.
    let existing = ctx.containers(compose).await?.unwrap_or_default();
    let project = name_in_use(&existing).unwrap_or_else(|| compose.name.clone());
    progress.phase(Phase::Starting, None, None);
    progress.notice(format!(
        "creating the project's containers: docker compose -p {project} up -d"
    ));
    let compose_file = p.compose_file.clone();
    let env_file = p.env_file.exists().then(|| p.env_file.clone());
    ctx.docker(|r| DockerMsg::ComposeUp {
        compose_file,
        env_file,
        project,
        reply: r,
    })
    .await
}

pub(crate) async fn wait_healthy_for(
    ctx: &Ctx,
    compose: &ComposeProject,
    only: Vec<String>,
    timeout: Duration,
    progress: &Progress,
) -> Result<()> {
    let cancel = ctx.cancel.clone();
    ctx.docker_for(timeout, |r| {
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
    ctx: &Ctx,
    containers: &[ContainerInfo],
    progress: &Progress,
) -> Result<()> {
    start_exactly(ctx, containers, progress)
        .await?
        .wait(ctx, progress)
        .await
}

/// [`restart_exactly`] up to the health wait, which is left to the caller.
pub(crate) async fn start_exactly(
    ctx: &Ctx,
    containers: &[ContainerInfo],
    progress: &Progress,
) -> Result<Started> {
    if containers.is_empty() {
        return Ok(Started::nothing());
    }
    let compose = ctx.compose_or_bare();
    progress.phase(Phase::Starting, None, Some(containers.len() as u64));
    let list = containers.to_vec();
    ctx.docker_for(ctx.start_timeout(), |r| {
        DockerMsg::Start(list, progress.clone(), r)
    })
    .await?;
    if ctx.cancel.clone().is_cancelled() {
        progress.notice(
            "interrupted: the stopped services were started again; not waiting for their health",
        );
        return Ok(Started::nothing());
    }
    let names = containers.iter().map(|c| c.name.clone()).collect();
    Ok(Started {
        wait: Some((compose, names)),
        timeout: None,
    })
}

pub(crate) async fn restart_stopped(ctx: &Ctx, stopped: &[ContainerInfo]) -> Result<String> {
    if stopped.is_empty() {
        return Ok(String::new());
    }
    // Started and waited for, like after any operation: the command that recovered
    // returns with the services up (or says why not).
    restart_exactly(ctx, stopped, &Progress::none()).await?;
    let names: Vec<_> = stopped.iter().map(|c| c.name.as_str()).collect();
    Ok(format!("; restarted {}", names.join(", ")))
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
