//! The project's containers on the engine: listing and inspecting them, and stopping and
//! starting them in dependency waves ([`policy::stop_waves`], [`policy::start_waves`]).
//!
//! Stop and start act on a list the caller owns (what was running before), so a failure part
//! way can be undone by starting that same list again: [`Engine::start_containers`] skips
//! containers that already run.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerInspectResponse, HealthStatusEnum};
use bollard::query_parameters::{ListContainersOptionsBuilder, StopContainerOptionsBuilder};
use futures_util::future::join_all;

use super::health::Probe;
use super::{API_TIMEOUT, Engine, POLL, describe, truncate};
use crate::archive::CancelFlag;
use crate::docker::discovery::{self, Membership};
use crate::docker::{ContainerInfo, ContainerState, ProjectIdentity, policy};
use crate::error::{Error, Result};
use crate::progress::Progress;

const PROJECT_LABEL: &str = discovery::PROJECT_LABEL;
const SERVICE_LABEL: &str = "com.docker.compose.service";
const DEPENDS_ON_LABEL: &str = "com.docker.compose.depends_on";

/// Docker's own default when a container sets no `StopTimeout`.
const DEFAULT_STOP_TIMEOUT: i64 = 10;
/// Time allowed beyond a container's stop timeout for the engine to report it stopped.
const STOP_GRACE: Duration = Duration::from_secs(30);

impl Engine {
    /// Every container (any state) of the project, sorted by name: the one listing behind the
    /// gate, stop/start/status, the health wait and the rollback ([`discovery`]: every
    /// spelling of the project's name, and compose's working-dir and config-file labels).
    /// Refuses ([`Error::Refused`]) when a running container may or may not be the project's.
    pub async fn project_containers(
        &self,
        project: &ProjectIdentity,
    ) -> Result<Vec<ContainerInfo>> {
        Ok(self
            .project_probes(project)
            .await?
            .into_iter()
            .map(|p| p.info)
            .collect())
    }

    /// Same as [`Engine::project_containers`]: the current state of the project.
    #[cfg(any(test, feature = "test-support"))]
    pub async fn project_status(&self, project: &ProjectIdentity) -> Result<Vec<ContainerInfo>> {
        self.project_containers(project).await
    }

    /// Stops the active (running, restarting, paused) containers among `containers` in reverse
    /// dependency order, each with its own stop timeout (default 10 s), and waits until the
    /// engine reports each one stopped. Returns the names actually stopped, in stop order.
    /// Stops at the first wave with a failure so a dependency never stops before a dependent
    /// that would not.
    #[cfg(any(test, feature = "test-support"))]
    pub async fn stop_containers(&self, containers: &[ContainerInfo]) -> Result<Vec<String>> {
        self.stop_containers_reporting(containers, &Progress::none())
            .await
    }

    /// [`Engine::stop_containers`], reporting each container as it is stopped (an `Advance`
    /// event per container: the count so far and its name).
    pub async fn stop_containers_reporting(
        &self,
        containers: &[ContainerInfo],
        progress: &Progress,
    ) -> Result<Vec<String>> {
        let mut stopped = Vec::new();
        let mut done = 0u64;
        for wave in policy::stop_waves(containers) {
            for c in &wave {
                progress.container(&c.name, "stopping");
            }
            let results = join_all(wave.iter().map(|c| self.stop_one(c))).await;
            let mut first_error = None;
            for (container, result) in wave.iter().zip(results) {
                done += 1;
                progress.advance(0, done, Some(std::path::Path::new(&container.name)));
                match result {
                    Ok(true) => {
                        progress.container(&container.name, "stopped");
                        stopped.push(container.name.clone());
                    }
                    Ok(false) => progress.container(&container.name, "not running"),
                    Err(e) => {
                        progress.container(&container.name, "stop failed");
                        first_error.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_error {
                if !stopped.is_empty() {
                    tracing::warn!(stopped = ?stopped, "stop failed part way");
                }
                return Err(e);
            }
        }
        Ok(stopped)
    }

    /// Starts `containers` in dependency order, skipping those already running. Before a
    /// container starts, those of its dependencies that are in `containers` must run and, when
    /// they have a healthcheck, be healthy (bounded by [`super::health::DEPENDENCY_TIMEOUT`]).
    #[cfg(any(test, feature = "test-support"))]
    pub async fn start_containers(&self, containers: &[ContainerInfo]) -> Result<()> {
        self.start_containers_cancellable(containers, &CancelFlag::default())
            .await
    }

    /// [`Engine::start_containers`] whose waits for dependencies end at once with
    /// [`Error::Interrupted`] when `cancel` is set. Starting again what this process stopped
    /// uses the plain one: that start must happen, above all after Ctrl-C.
    #[cfg(any(test, feature = "test-support"))]
    pub async fn start_containers_cancellable(
        &self,
        containers: &[ContainerInfo],
        cancel: &CancelFlag,
    ) -> Result<()> {
        self.start_containers_reporting(containers, cancel, &Progress::none())
            .await
    }

    /// [`Engine::start_containers_cancellable`], reporting each container as it is started.
    pub async fn start_containers_reporting(
        &self,
        containers: &[ContainerInfo],
        cancel: &CancelFlag,
        progress: &Progress,
    ) -> Result<()> {
        let mut started: Vec<&ContainerInfo> = Vec::new();
        let mut done = 0u64;
        for wave in policy::start_waves(containers) {
            let needed: BTreeSet<&str> = wave
                .iter()
                .flat_map(|c| c.depends_on.iter().map(String::as_str))
                .collect();
            let dependencies: Vec<&ContainerInfo> = started
                .iter()
                .copied()
                .filter(|d| d.service.as_deref().is_some_and(|s| needed.contains(s)))
                .collect();
            if !dependencies.is_empty() {
                self.wait_dependencies(&dependencies, cancel).await?;
            }
            for c in &wave {
                progress.container(&c.name, "starting");
            }
            let results = join_all(wave.iter().map(|c| self.start_one(c))).await;
            let mut first_error = None;
            for (c, result) in wave.iter().zip(results) {
                match result {
                    Ok(()) => progress.container(&c.name, "started"),
                    Err(e) => {
                        progress.container(&c.name, "start failed");
                        first_error.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_error {
                return Err(e);
            }
            for c in &wave {
                done += 1;
                progress.advance(0, done, Some(std::path::Path::new(&c.name)));
            }
            started.extend(wave);
        }
        Ok(())
    }

    /// Lists every compose-made container once (one engine call: merged and de-duplicated
    /// by construction) and keeps those [`discovery::classify`] says are the project's.
    pub(super) async fn project_probes(&self, project: &ProjectIdentity) -> Result<Vec<Probe>> {
        let primary = project.primary();
        // Every container compose made, whatever its project: the name alone is not enough.
        let filters = HashMap::from([("label", vec![PROJECT_LABEL.to_string()])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .call(
                || format!("cannot list the containers of project {primary}"),
                API_TIMEOUT,
                self.docker.list_containers(Some(options)),
            )
            .await?;
        let mut ambiguous = Vec::new();
        let mut ids = BTreeSet::new();
        for summary in summaries {
            let labels = summary.labels.unwrap_or_default();
            let Some(id) = summary.id else { continue };
            match discovery::classify(project, &labels) {
                Membership::Ours => {
                    ids.insert(id);
                }
                Membership::Foreign => {}
                Membership::Ambiguous(why) => {
                    let state = summary
                        .state
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "unknown".into());
                    let name = summary
                        .names
                        .and_then(|n| n.into_iter().next())
                        .map(|n| n.trim_start_matches('/').to_string())
                        .unwrap_or_else(|| id.clone());
                    // Stopped, it hides nothing a cold backup must know about.
                    if ContainerState::parse(&state).is_active() {
                        ambiguous.push(format!("  {name} ({state}): {why}"));
                    } else {
                        tracing::debug!(container = %name, %why, "ambiguous stopped container left out");
                    }
                }
            }
        }
        if !ambiguous.is_empty() {
            return Err(Error::Refused(format!(
                "cannot tell whether these running containers belong to project {primary}:\n{}\n\
                 they could be this deployment's services running hot. Set [docker] project in \
                 config.toml to this deployment's compose project name (its containers' \
                 com.docker.compose.project label), or stop those containers, then retry",
                ambiguous.join("\n")
            )));
        }
        let mut probes = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(probe) = self.inspect(&id).await? {
                probes.push(probe);
            }
        }
        probes.sort_by(|a, b| (&a.info.name, &a.info.id).cmp(&(&b.info.name, &b.info.id)));
        Ok(probes)
    }

    /// `Ok(None)` when the container no longer exists.
    pub(super) async fn inspect(&self, id: &str) -> Result<Option<Probe>> {
        let result =
            tokio::time::timeout(API_TIMEOUT, self.docker.inspect_container(id, None)).await;
        match result {
            Ok(Ok(response)) => Ok(Some(probe_from(response))),
            Ok(Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            })) => Ok(None),
            Ok(Err(e)) => Err(Error::Docker(format!(
                "cannot inspect container {id}: {}",
                describe(&e)
            ))),
            Err(_) => Err(self.timed_out(&format!("inspect container {id}"), API_TIMEOUT)),
        }
    }

    /// Stops one container if it is active; `Ok(true)` when it was stopped by us.
    async fn stop_one(&self, container: &ContainerInfo) -> Result<bool> {
        let Some(current) = self.inspect(&container.id).await? else {
            return Ok(false);
        };
        if !policy::is_active(&current.info.state) {
            return Ok(false);
        }
        let name = &container.name;
        if current.info.state == ContainerState::Paused {
            // A frozen process cannot handle SIGTERM: thaw it so it can shut down cleanly.
            self.call(
                || format!("cannot unpause container {name}"),
                API_TIMEOUT,
                self.docker.unpause_container(&container.id),
            )
            .await?;
        }
        let seconds = current
            .info
            .stop_timeout
            .or(container.stop_timeout)
            .filter(|t| *t >= 0)
            .unwrap_or(DEFAULT_STOP_TIMEOUT);
        tracing::info!(container = %name, timeout_s = seconds, "stopping container");
        let options = StopContainerOptionsBuilder::default()
            .t(i32::try_from(seconds).unwrap_or(i32::MAX))
            .build();
        let limit = Duration::from_secs(seconds.unsigned_abs()) + STOP_GRACE;
        match tokio::time::timeout(
            limit,
            self.docker.stop_container(&container.id, Some(options)),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            })) => return Ok(true),
            Ok(Err(e)) => {
                return Err(Error::Docker(format!(
                    "cannot stop container {name}: {}",
                    describe(&e)
                )));
            }
            Err(_) => return Err(self.timed_out(&format!("stop container {name}"), limit)),
        }
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            match self.inspect(&container.id).await? {
                None => return Ok(true),
                Some(p) if !policy::is_active(&p.info.state) => return Ok(true),
                Some(p) if Instant::now() >= deadline => {
                    return Err(Error::Docker(format!(
                        "container {name} is still {} {}s after it was told to stop",
                        p.info.state,
                        STOP_GRACE.as_secs()
                    )));
                }
                Some(_) => tokio::time::sleep(POLL).await,
            }
        }
    }

    async fn start_one(&self, container: &ContainerInfo) -> Result<()> {
        let name = &container.name;
        let Some(current) = self.inspect(&container.id).await? else {
            return Err(Error::Docker(format!(
                "cannot start container {name}: it no longer exists"
            )));
        };
        match current.info.state {
            ContainerState::Running | ContainerState::Restarting => return Ok(()),
            ContainerState::Paused => {
                return self
                    .call(
                        || format!("cannot unpause container {name}"),
                        API_TIMEOUT,
                        self.docker.unpause_container(&container.id),
                    )
                    .await;
            }
            _ => {}
        }
        tracing::info!(container = %name, "starting container");
        self.call(
            || format!("cannot start container {name}"),
            API_TIMEOUT,
            self.docker.start_container(&container.id, None),
        )
        .await
    }
}

/// What the engine's inspection of a container says, as a [`Probe`].
fn probe_from(response: ContainerInspectResponse) -> Probe {
    let config = response.config.unwrap_or_default();
    let state = response.state.unwrap_or_default();
    let labels = config.labels.clone().unwrap_or_default();
    let health = state.health.as_ref();
    let health_status = health.and_then(|h| h.status).and_then(|s| match s {
        HealthStatusEnum::HEALTHY => Some("healthy"),
        HealthStatusEnum::UNHEALTHY => Some("unhealthy"),
        HealthStatusEnum::STARTING => Some("starting"),
        HealthStatusEnum::NONE | HealthStatusEnum::EMPTY => None,
    });
    let last_health_output = health
        .and_then(|h| h.log.as_ref())
        .and_then(|log| log.last())
        .and_then(|entry| entry.output.as_deref())
        .and_then(|out| out.lines().map(str::trim).rfind(|l| !l.is_empty()))
        .map(|line| truncate(line, 200));
    let restart_policy = response
        .host_config
        .as_ref()
        .and_then(|h| h.restart_policy.as_ref())
        .and_then(|p| p.name)
        .map(|n| n.to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "no".to_string());
    let start_period = config
        .healthcheck
        .as_ref()
        .and_then(|h| h.start_period)
        .filter(|ns| *ns > 0)
        .map(|ns| Duration::from_nanos(ns.unsigned_abs()));
    let info = ContainerInfo {
        id: response.id.unwrap_or_default(),
        name: response
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        service: labels.get(SERVICE_LABEL).cloned(),
        state: state
            .status
            .map(|s| s.to_string())
            .filter(|s| !s.is_empty())
            .map_or_else(
                || ContainerState::Other("unknown".into()),
                |s| ContainerState::parse(&s),
            ),
        health: health_status.map(String::from),
        restart_policy,
        image: config.image.clone().unwrap_or_default(),
        image_id: response.image.unwrap_or_default(),
        depends_on: labels
            .get(DEPENDS_ON_LABEL)
            .map(|v| parse_depends_on_label(v))
            .unwrap_or_default(),
        stop_timeout: config.stop_timeout,
        project: labels.get(PROJECT_LABEL).cloned(),
    };
    Probe {
        info,
        exit_code: state.exit_code,
        started_at: state.started_at,
        start_period,
        last_health_output,
        restart_count: response.restart_count.unwrap_or(0),
    }
}

/// `db:service_healthy:false,cache:service_started:true` or plain `db,cache` -> service names.
fn parse_depends_on_label(value: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for item in value.split(',') {
        let name = item.split(':').next().unwrap_or_default().trim();
        if !name.is_empty() && !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_on_label_forms() {
        assert_eq!(
            parse_depends_on_label("db:service_healthy:false,cache:service_started:true"),
            ["db", "cache"]
        );
        assert_eq!(parse_depends_on_label("db, cache,db"), ["db", "cache"]);
        assert!(parse_depends_on_label("").is_empty());
    }
}
