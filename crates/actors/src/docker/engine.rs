//! The Docker Engine client: find the project's containers, stop and start them in dependency
//! order, wait until they are running and healthy, and fall back to `docker compose up -d`.
//!
//! Every call to the engine is bounded by a timeout and every wait has a deadline.
//! Connecting fails closed: an engine that is configured (`DOCKER_HOST`, a docker context) or
//! whose socket exists but does not answer is an error ([`Error::DockerUnreachable`]); only a
//! host with nothing configured and no engine socket at all yields `Ok(None)`, which the
//! caller reports and continues without a gate.
//!
//! Stop and start act on a list the caller owns (what was running before), so a failure part
//! way can be undone by starting that same list again: [`Engine::start_containers`] skips
//! containers that already run.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerInspectResponse, HealthStatusEnum};
use bollard::query_parameters::{
    ListContainersOptionsBuilder, LogsOptionsBuilder, StopContainerOptionsBuilder,
};
use futures_util::StreamExt;
use futures_util::future::join_all;
use sha2::Digest;

use super::discovery::{self, Membership};
use super::{ComposeProject, ContainerInfo, ProjectIdentity, policy};
use crate::archive::CancelFlag;
use crate::error::{Error, Result};
use crate::progress::{Phase, Progress};

/// Where the engine listens when `DOCKER_HOST` is not set.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// How long [`Engine::start_containers`] waits for a dependency to become healthy before it
/// starts the containers that depend on it.
pub const DEPENDENCY_TIMEOUT: Duration = Duration::from_secs(180);
/// Bound on `docker compose up -d` (image pulls included).
pub const COMPOSE_UP_TIMEOUT: Duration = Duration::from_secs(15 * 60);

const PROJECT_LABEL: &str = discovery::PROJECT_LABEL;
const SERVICE_LABEL: &str = "com.docker.compose.service";
const DEPENDS_ON_LABEL: &str = "com.docker.compose.depends_on";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const API_TIMEOUT: Duration = Duration::from_secs(30);
/// Docker's own default when a container sets no `StopTimeout`.
const DEFAULT_STOP_TIMEOUT: i64 = 10;
/// Time allowed beyond a container's stop timeout for the engine to report it stopped.
const STOP_GRACE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(500);
/// How long a container without a healthcheck must have been running to count as ready.
const SETTLE: Duration = Duration::from_secs(1);
/// Restarts, while waited for, that make a container crash-looping: a failure, not a wait.
const CRASH_LOOP_RESTARTS: i64 = 3;
/// Bollard's per-request timeout; ours (tokio) are tighter and apply first.
const TRANSPORT_TIMEOUT_SECS: u64 = 3600;

/// A connected, version-negotiated engine client.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    endpoint: String,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// Where `DOCKER_HOST` (or its absence) says the engine is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Unix(PathBuf),
    /// `http://host:port` to connect to, and `DOCKER_HOST` as the operator wrote it.
    Http {
        url: String,
        configured: String,
    },
    /// Configured, but not something we can talk to: fail closed.
    Unsupported {
        endpoint: String,
        reason: String,
    },
    /// No `DOCKER_HOST` and nothing at the default socket path.
    Absent,
}

fn resolve_endpoint(
    docker_host: Option<&str>,
    tls_verify: bool,
    default_socket: &Path,
) -> Endpoint {
    let Some(host) = docker_host.map(str::trim).filter(|h| !h.is_empty()) else {
        // `symlink_metadata`: a dangling symlink still means "an engine is expected here".
        return match std::fs::symlink_metadata(default_socket) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Endpoint::Absent,
            _ => Endpoint::Unix(default_socket.to_path_buf()),
        };
    };
    let unsupported = |reason: &str| Endpoint::Unsupported {
        endpoint: host.to_string(),
        reason: format!(
            "{reason}; use a unix:// or plain tcp:// DOCKER_HOST, or --skip-docker-check"
        ),
    };
    if let Some(path) = host.strip_prefix("unix://") {
        Endpoint::Unix(PathBuf::from(path))
    } else if host.starts_with('/') {
        Endpoint::Unix(PathBuf::from(host))
    } else if let Some(addr) = host
        .strip_prefix("tcp://")
        .or_else(|| host.strip_prefix("http://"))
    {
        if tls_verify {
            unsupported("TLS (DOCKER_TLS_VERIFY) is not supported")
        } else {
            Endpoint::Http {
                url: format!("http://{addr}"),
                configured: host.to_string(),
            }
        }
    } else if host.starts_with("https://") {
        unsupported("TLS endpoints are not supported")
    } else {
        unsupported("unsupported DOCKER_HOST scheme")
    }
}

/// An error with its sources: bollard's own message is often just "client error (Connect)".
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `$DOCKER_CONFIG`, else `~/.docker`.
fn docker_config_dir() -> Option<PathBuf> {
    std::env::var_os("DOCKER_CONFIG")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
}

/// The endpoint of the docker context in use (`DOCKER_CONTEXT`, else `currentContext` in
/// `config.json`), as the docker CLI would pick it; `None` for the default context. Rootless
/// docker is usually reached this way: ignoring it would look like "no engine here" and skip
/// the gate, so a context we cannot resolve is an error.
fn context_host(config_dir: Option<&Path>, env_context: Option<&str>) -> Result<Option<String>> {
    let name = match env_context.map(str::trim).filter(|c| !c.is_empty()) {
        Some(name) => name.to_string(),
        None => {
            let Some(dir) = config_dir else {
                return Ok(None);
            };
            let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else {
                return Ok(None);
            };
            let current = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("currentContext")?.as_str().map(str::to_string));
            match current {
                Some(name) if !name.trim().is_empty() => name,
                _ => return Ok(None),
            }
        }
    };
    if name == "default" {
        return Ok(None);
    }
    let fail = |message: String| {
        unreachable(
            &format!("docker context {name}"),
            format!("{message}; set DOCKER_HOST to the engine's address"),
        )
    };
    let Some(dir) = config_dir else {
        return Err(fail("no docker config directory to read it from".into()));
    };
    let meta = dir
        .join("contexts/meta")
        .join(hex::encode(sha2::Sha256::digest(name.as_bytes())))
        .join("meta.json");
    let text = std::fs::read_to_string(&meta)
        .map_err(|e| fail(format!("cannot read {}: {e}", meta.display())))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| fail(format!("cannot parse {}: {e}", meta.display())))?;
    match value
        .pointer("/Endpoints/docker/Host")
        .and_then(|h| h.as_str())
    {
        Some(host) if !host.trim().is_empty() => Ok(Some(host.to_string())),
        _ => Err(fail(format!("{} names no docker endpoint", meta.display()))),
    }
}

fn unreachable(endpoint: &str, message: impl fmt::Display) -> Error {
    let mut message = message.to_string();
    if message.contains("Permission denied") || message.contains("permission denied") {
        message.push_str(" (run as root or as a member of the docker group)");
    }
    Error::DockerUnreachable {
        endpoint: endpoint.to_string(),
        message,
    }
}

/// What the engine says about a container, beyond [`ContainerInfo`], for readiness checks.
#[derive(Debug, Clone)]
struct Probe {
    info: ContainerInfo,
    exit_code: Option<i64>,
    started_at: Option<String>,
    /// `Config.Healthcheck.StartPeriod`.
    start_period: Option<Duration>,
    /// Last non-empty line of the most recent healthcheck output.
    last_health_output: Option<String>,
    /// How many times the engine restarted it (`RestartCount`).
    restart_count: i64,
}

/// Where a container stands while we wait for it.
#[derive(Debug, Clone, PartialEq)]
enum Readiness {
    Ready,
    Pending(String),
    Failed { reason: String, exited: bool },
}

impl Probe {
    fn readiness(&self, now: chrono::DateTime<chrono::Utc>) -> Readiness {
        match self.info.state.as_str() {
            "running" => match self.info.health.as_deref() {
                // Without a healthcheck, "running" is all there is to know; a process that
                // dies at once (the usual crash loop: bad config, missing file) is caught
                // by not trusting the first second.
                None if self.running_for(now).is_some_and(|d| d < SETTLE) => {
                    Readiness::Pending("just started".into())
                }
                None | Some("healthy") => Readiness::Ready,
                Some("unhealthy") if !self.in_start_period(now) => Readiness::Failed {
                    reason: format!("is unhealthy{}", self.health_suffix()),
                    exited: false,
                },
                Some(other) => {
                    Readiness::Pending(format!("health: {other}{}", self.health_suffix()))
                }
            },
            "exited" | "dead" => Readiness::Failed {
                reason: format!(
                    "{} with code {}",
                    self.info.state,
                    self.exit_code
                        .map_or_else(|| "?".to_string(), |c| c.to_string())
                ),
                exited: true,
            },
            "restarting" => Readiness::Pending(format!(
                "restarting, last exit code {}",
                self.exit_code
                    .map_or_else(|| "?".to_string(), |c| c.to_string())
            )),
            other => Readiness::Pending(other.to_string()),
        }
    }

    fn in_start_period(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        let Some(period) = self.start_period else {
            return false;
        };
        self.running_for(now).is_some_and(|e| e < period)
    }

    /// Time since the container (last) started: `None` if unknown, zero if the engine's clock
    /// is ahead of ours.
    fn running_for(&self, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
        let started = chrono::DateTime::parse_from_rfc3339(self.started_at.as_deref()?).ok()?;
        let elapsed = now.signed_duration_since(started.with_timezone(&chrono::Utc));
        Some(elapsed.to_std().unwrap_or(Duration::ZERO))
    }

    fn health_suffix(&self) -> String {
        self.last_health_output
            .as_deref()
            .map(|line| format!("; last check: {line}"))
            .unwrap_or_default()
    }
}

impl Engine {
    /// Connects where the docker CLI would (`DOCKER_HOST`, else the current docker context,
    /// else the default socket) and negotiates the API version. `Ok(None)`: nothing
    /// configured and no socket file at all. Anything configured or present that does not
    /// answer is [`Error::DockerUnreachable`].
    pub async fn connect() -> Result<Option<Engine>> {
        let host = match std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.trim().is_empty())
        {
            Some(host) => Some(host),
            None => context_host(
                docker_config_dir().as_deref(),
                std::env::var("DOCKER_CONTEXT").ok().as_deref(),
            )?,
        };
        let tls = std::env::var("DOCKER_TLS_VERIFY").is_ok_and(|v| !v.is_empty());
        // NUWAX_DOCKER_SOCKET moves the default socket (an engine in a non-standard place, or
        // tests simulating a machine without Docker); DOCKER_HOST still wins.
        let socket = std::env::var_os("NUWAX_DOCKER_SOCKET")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        Self::connect_with(host.as_deref(), tls, &socket).await
    }

    /// [`Engine::connect`] with its inputs explicit (tests; callers with their own settings).
    pub async fn connect_with(
        docker_host: Option<&str>,
        tls_verify: bool,
        default_socket: &Path,
    ) -> Result<Option<Engine>> {
        let (docker, endpoint) = match resolve_endpoint(docker_host, tls_verify, default_socket) {
            Endpoint::Absent => {
                tracing::debug!(socket = %default_socket.display(), "no docker engine socket");
                return Ok(None);
            }
            Endpoint::Unsupported { endpoint, reason } => {
                return Err(unreachable(&endpoint, reason));
            }
            Endpoint::Unix(path) => {
                let endpoint = format!("unix://{}", path.display());
                let path_str = path.to_string_lossy();
                let docker = Docker::connect_with_unix(
                    &path_str,
                    TRANSPORT_TIMEOUT_SECS,
                    bollard::API_DEFAULT_VERSION,
                )
                .map_err(|e| unreachable(&endpoint, describe(&e)))?;
                (docker, endpoint)
            }
            Endpoint::Http { url, configured } => {
                let docker = Docker::connect_with_http(
                    &url,
                    TRANSPORT_TIMEOUT_SECS,
                    bollard::API_DEFAULT_VERSION,
                )
                .map_err(|e| unreachable(&configured, describe(&e)))?;
                (docker, configured)
            }
        };
        let docker = match tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version()).await {
            Ok(Ok(docker)) => docker,
            Ok(Err(e)) => return Err(unreachable(&endpoint, describe(&e))),
            Err(_) => {
                return Err(unreachable(
                    &endpoint,
                    format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
                ));
            }
        };
        tracing::debug!(%endpoint, version = ?docker.client_version(), "connected to docker engine");
        Ok(Some(Engine { docker, endpoint }))
    }

    /// `unix:///var/run/docker.sock`, `http://host:2375`...
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

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
    pub async fn project_status(&self, project: &ProjectIdentity) -> Result<Vec<ContainerInfo>> {
        self.project_containers(project).await
    }

    /// Stops the active (running, restarting, paused) containers among `containers` in reverse
    /// dependency order, each with its own stop timeout (default 10 s), and waits until the
    /// engine reports each one stopped. Returns the names actually stopped, in stop order.
    /// Stops at the first wave with a failure so a dependency never stops before a dependent
    /// that would not.
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
            let results = join_all(wave.iter().map(|c| self.stop_one(c))).await;
            let mut first_error = None;
            for (container, result) in wave.iter().zip(results) {
                done += 1;
                progress.advance(0, done, Some(std::path::Path::new(&container.name)));
                match result {
                    Ok(true) => stopped.push(container.name.clone()),
                    Ok(false) => {}
                    Err(e) => {
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
    /// they have a healthcheck, be healthy (bounded by [`DEPENDENCY_TIMEOUT`]).
    pub async fn start_containers(&self, containers: &[ContainerInfo]) -> Result<()> {
        self.start_containers_cancellable(containers, &CancelFlag::default())
            .await
    }

    /// [`Engine::start_containers`] whose waits for dependencies end at once with
    /// [`Error::Interrupted`] when `cancel` is set. Starting again what this process stopped
    /// uses the plain one: that start must happen, above all after Ctrl-C.
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
            let results = join_all(wave.iter().map(|c| self.start_one(c))).await;
            if let Some(e) = results.into_iter().find_map(Result::err) {
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

    /// Waits until every persistent container of the project (or, when `only` is not empty,
    /// those matching a container name, id or service in `only`) is running, and healthy
    /// where it has a healthcheck. A container that exits, or is unhealthy after its start
    /// period, fails at once, named with its last output; so does one that the engine
    /// restarted [`CRASH_LOOP_RESTARTS`] times while waited for (a crash loop under a restart
    /// policy, which would otherwise look "restarting" or briefly "running" until the
    /// timeout). The timeout fails listing what is not ready. One-shot containers are not
    /// waited for.
    pub async fn wait_healthy(
        &self,
        compose: &ComposeProject,
        only: &[String],
        timeout: Duration,
        progress: &Progress,
    ) -> Result<()> {
        self.wait_healthy_cancellable(compose, only, timeout, progress, &CancelFlag::default())
            .await
    }

    /// [`Engine::wait_healthy`] that ends at once with [`Error::Interrupted`] when `cancel`
    /// is set (Ctrl-C, SIGTERM, SIGHUP), instead of waiting out a timeout of maybe an hour.
    pub async fn wait_healthy_cancellable(
        &self,
        compose: &ComposeProject,
        only: &[String],
        timeout: Duration,
        progress: &Progress,
        cancel: &CancelFlag,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let identity = compose.discovery();
        let mut ready_seen: BTreeSet<String> = BTreeSet::new();
        // Restart count of each container when first seen.
        let mut restarts_at_start: HashMap<String, i64> = HashMap::new();
        let mut phase_sent = false;
        loop {
            cancel.check()?;
            let probes = self.project_probes(&identity).await?;
            let mut targets: Vec<(String, Option<&Probe>)> = Vec::new();
            for probe in &probes {
                let selected =
                    only.is_empty() || only.iter().any(|s| matches_selector(&probe.info, s));
                if !selected {
                    continue;
                }
                if policy::is_persistent(compose, &probe.info) {
                    targets.push((label(&probe.info), Some(probe)));
                } else {
                    tracing::debug!(container = %probe.info.name, "one-shot container: not waited for");
                }
            }
            for selector in only {
                if !probes.iter().any(|p| matches_selector(&p.info, selector)) {
                    targets.push((selector.clone(), None));
                }
            }
            if only.is_empty() && probes.is_empty() && !compose.services.is_empty() {
                targets.push((format!("project {}", compose.name), None));
            }
            if !phase_sent {
                progress.phase(Phase::Waiting, None, Some(targets.len() as u64));
                phase_sent = true;
            }

            let now = chrono::Utc::now();
            let mut pending = Vec::new();
            let mut ready = 0u64;
            for (name, probe) in &targets {
                let Some(probe) = probe else {
                    pending.push(format!("{name} (no container)"));
                    continue;
                };
                let restarts = probe.restart_count
                    - *restarts_at_start
                        .entry(probe.info.id.clone())
                        .or_insert(probe.restart_count);
                let readiness = if restarts >= CRASH_LOOP_RESTARTS {
                    let exit_code = self.exit_code_between_runs(probe).await;
                    Readiness::Failed {
                        reason: format!(
                            "is crash-looping: restarted {restarts} times in {}s, last exit code {}",
                            (timeout - deadline.saturating_duration_since(Instant::now()))
                                .as_secs(),
                            exit_code.map_or_else(|| "?".to_string(), |c| c.to_string())
                        ),
                        exited: true,
                    }
                } else {
                    probe.readiness(now)
                };
                match readiness {
                    Readiness::Ready => {
                        ready += 1;
                        if ready_seen.insert(probe.info.id.clone()) {
                            progress.notice(format!("{name} is {}", ready_word(&probe.info)));
                        }
                    }
                    Readiness::Pending(why) => pending.push(format!("{name} ({why})")),
                    Readiness::Failed { reason, exited } => {
                        let mut message = format!("container {name} {reason}");
                        if exited && let Some(out) = self.last_output(&probe.info.id).await {
                            message.push_str(&format!("; last output: {out}"));
                        }
                        return Err(Error::Docker(message));
                    }
                }
            }
            progress.advance(0, ready, None);
            if pending.is_empty() {
                progress.finish_phase(0, ready);
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Docker(format!(
                    "services of project {} not ready after {}s: {}",
                    compose.name,
                    timeout.as_secs(),
                    pending.join(", ")
                )));
            }
            cancel
                .sleep(POLL.min(deadline.saturating_duration_since(Instant::now())))
                .await?;
        }
    }

    /// Lists every compose-made container once (one engine call: merged and de-duplicated
    /// by construction) and keeps those [`discovery::classify`] says are the project's.
    async fn project_probes(&self, project: &ProjectIdentity) -> Result<Vec<Probe>> {
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
                    if policy::is_active(&state) {
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
    /// The exit code of a crash-looping container's last run. While it is running again the
    /// engine reports 0 (the code is reset at start), so look for a moment between runs.
    async fn exit_code_between_runs(&self, probe: &Probe) -> Option<i64> {
        if probe.info.state != "running" {
            return probe.exit_code;
        }
        for _ in 0..30 {
            match self.inspect(&probe.info.id).await {
                Ok(Some(p)) if p.info.state != "running" => return p.exit_code,
                Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
                _ => return None,
            }
        }
        None
    }

    async fn inspect(&self, id: &str) -> Result<Option<Probe>> {
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
        if current.info.state == "paused" {
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
        match current.info.state.as_str() {
            "running" | "restarting" => return Ok(()),
            "paused" => {
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

    /// Waits until `dependencies` run and are healthy where they have a healthcheck, or have
    /// exited with code 0 (a completed job).
    async fn wait_dependencies(
        &self,
        dependencies: &[&ContainerInfo],
        cancel: &CancelFlag,
    ) -> Result<()> {
        let deadline = Instant::now() + DEPENDENCY_TIMEOUT;
        loop {
            cancel.check()?;
            let now = chrono::Utc::now();
            let mut pending = Vec::new();
            for dep in dependencies {
                let Some(probe) = self.inspect(&dep.id).await? else {
                    return Err(Error::Docker(format!(
                        "dependency {} disappeared while starting",
                        dep.name
                    )));
                };
                match probe.readiness(now) {
                    Readiness::Ready => {}
                    // A job that completed (`service_completed_successfully`) is done, not dead.
                    Readiness::Failed { exited: true, .. } if probe.exit_code == Some(0) => {}
                    Readiness::Pending(why) => pending.push(format!("{} ({why})", label(dep))),
                    Readiness::Failed { reason, exited } => {
                        let mut message = format!("dependency {} {reason}", label(dep));
                        if exited && let Some(out) = self.last_output(&dep.id).await {
                            message.push_str(&format!("; last output: {out}"));
                        }
                        return Err(Error::Docker(message));
                    }
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Docker(format!(
                    "dependencies not ready after {}s: {}",
                    DEPENDENCY_TIMEOUT.as_secs(),
                    pending.join(", ")
                )));
            }
            cancel.sleep(POLL).await?;
        }
    }

    /// The last few lines a container printed, for an error message. Best effort.
    async fn last_output(&self, id: &str) -> Option<String> {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail("5")
            .build();
        let collect = async {
            let mut out = String::new();
            let mut stream = self.docker.logs(id, Some(options));
            while let Some(Ok(chunk)) = stream.next().await {
                out.push_str(&chunk.to_string());
            }
            out
        };
        let out = tokio::time::timeout(Duration::from_secs(5), collect)
            .await
            .ok()?;
        let lines: Vec<&str> = out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        (!lines.is_empty()).then(|| truncate(&lines.join(" | "), 400))
    }

    async fn call<T>(
        &self,
        what: impl FnOnce() -> String,
        limit: Duration,
        fut: impl Future<Output = std::result::Result<T, BollardError>>,
    ) -> Result<T> {
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Error::Docker(format!("{}: {}", what(), describe(&e)))),
            Err(_) => Err(self.timed_out(&what(), limit)),
        }
    }

    fn timed_out(&self, what: &str, limit: Duration) -> Error {
        Error::Docker(format!(
            "{what}: no answer from the engine at {} within {}s",
            self.endpoint,
            limit.as_secs()
        ))
    }
}

/// Runs `docker compose up -d` (or `docker-compose up -d` where the plugin is missing) for the
/// project, in the compose file's directory. The env file is passed only when it exists.
/// Failure carries compose's stderr.
pub async fn compose_up(compose_file: &Path, env_file: Option<&Path>, project: &str) -> Result<()> {
    if !compose_file.is_file() {
        return Err(Error::Refused(format!(
            "compose file {} not found; cannot start the services",
            compose_file.display()
        )));
    }
    let (program, mut args) = compose_command().await?;
    args.push("-f".into());
    args.push(compose_file.as_os_str().to_owned());
    if let Some(env) = env_file {
        if env.is_file() {
            args.push("--env-file".into());
            args.push(env.as_os_str().to_owned());
        } else {
            tracing::debug!(env_file = %env.display(), "env file missing: not passed to compose");
        }
    }
    // --remove-orphans: after a rollback or an upgrade, containers of services the compose
    // file no longer defines belong to the other release; leaving them would start (and wait
    // for) the wrong release's services.
    args.extend([
        "-p".into(),
        project.into(),
        "up".into(),
        "-d".into(),
        "--remove-orphans".into(),
    ]);
    let shown = format!(
        "{program} {}",
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    tracing::info!(command = %shown, "starting services with compose");
    let mut command = tokio::process::Command::new(program);
    command
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = compose_file.parent().filter(|d| !d.as_os_str().is_empty()) {
        command.current_dir(dir);
    }
    let output = match tokio::time::timeout(COMPOSE_UP_TIMEOUT, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(Error::Docker(format!("cannot run `{shown}`: {e}"))),
        Err(_) => {
            return Err(Error::Docker(format!(
                "`{shown}` did not finish within {}s",
                COMPOSE_UP_TIMEOUT.as_secs()
            )));
        }
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        tracing::debug!(output = %stderr, "compose up finished");
        return Ok(());
    }
    let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = tail[tail.len().saturating_sub(20)..].join("\n");
    Err(Error::Docker(format!(
        "`{shown}` failed ({}): {}",
        output.status,
        if tail.is_empty() {
            "no error output"
        } else {
            &tail
        }
    )))
}

/// `docker compose` when the plugin answers, else `docker-compose` when installed.
async fn compose_command() -> Result<(&'static str, Vec<std::ffi::OsString>)> {
    let probe = |program: &'static str, args: &'static [&'static str]| async move {
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        matches!(
            tokio::time::timeout(Duration::from_secs(20), command.status()).await,
            Ok(Ok(status)) if status.success()
        )
    };
    if probe("docker", &["compose", "version"]).await {
        return Ok(("docker", vec!["compose".into()]));
    }
    if probe("docker-compose", &["version"]).await {
        return Ok(("docker-compose", Vec::new()));
    }
    Err(Error::Docker(
        "neither `docker compose` nor `docker-compose` works on this host; install the docker \
         compose plugin"
            .into(),
    ))
}

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
            .unwrap_or_else(|| "unknown".to_string()),
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

fn matches_selector(info: &ContainerInfo, selector: &str) -> bool {
    let selector = selector.trim_start_matches('/');
    info.name == selector
        || info.service.as_deref() == Some(selector)
        || (selector.len() >= 12 && info.id.starts_with(selector))
}

/// `name (service svc)` for messages; just the name when it already says the service.
fn label(info: &ContainerInfo) -> String {
    match info.service.as_deref() {
        Some(service) if !info.name.contains(service) => {
            format!("{} (service {service})", info.name)
        }
        _ => info.name.clone(),
    }
}

fn ready_word(info: &ContainerInfo) -> &'static str {
    if info.health.is_some() {
        "healthy"
    } else {
        "running"
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_resolution() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("docker.sock");
        assert_eq!(resolve_endpoint(None, false, &missing), Endpoint::Absent);
        assert_eq!(
            resolve_endpoint(Some("  "), false, &missing),
            Endpoint::Absent
        );
        std::fs::write(&missing, b"").unwrap();
        assert_eq!(
            resolve_endpoint(None, false, &missing),
            Endpoint::Unix(missing.clone())
        );
        let dangling = dir.path().join("dangling.sock");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert_eq!(
            resolve_endpoint(None, false, &dangling),
            Endpoint::Unix(dangling.clone())
        );
        assert_eq!(
            resolve_endpoint(Some("unix:///run/x.sock"), false, &missing),
            Endpoint::Unix("/run/x.sock".into())
        );
        assert_eq!(
            resolve_endpoint(Some("tcp://10.0.0.1:2375"), false, &missing),
            Endpoint::Http {
                url: "http://10.0.0.1:2375".into(),
                configured: "tcp://10.0.0.1:2375".into()
            }
        );
        assert!(matches!(
            resolve_endpoint(Some("tcp://10.0.0.1:2376"), true, &missing),
            Endpoint::Unsupported { .. }
        ));
        for host in [
            "ssh://me@box",
            "npipe:////./pipe/docker_engine",
            "https://x:2376",
            "junk",
        ] {
            assert!(
                matches!(
                    resolve_endpoint(Some(host), false, &missing),
                    Endpoint::Unsupported { .. }
                ),
                "{host}"
            );
        }
    }

    #[test]
    fn docker_context_resolution() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path();
        // No config at all, or the default context: no override.
        assert_eq!(context_host(None, None).unwrap(), None);
        assert_eq!(context_host(Some(cfg), None).unwrap(), None);
        assert_eq!(context_host(Some(cfg), Some("default")).unwrap(), None);
        std::fs::write(cfg.join("config.json"), r#"{"auths":{}}"#).unwrap();
        assert_eq!(context_host(Some(cfg), None).unwrap(), None);

        // A context named in config.json resolves through its meta file.
        std::fs::write(cfg.join("config.json"), r#"{"currentContext":"rootless"}"#).unwrap();
        let err = context_host(Some(cfg), None).unwrap_err();
        assert!(matches!(err, Error::DockerUnreachable { .. }), "{err}");
        assert!(err.to_string().contains("rootless"), "{err}");
        let meta_dir = cfg
            .join("contexts/meta")
            .join(hex::encode(sha2::Sha256::digest(b"rootless")));
        std::fs::create_dir_all(&meta_dir).unwrap();
        std::fs::write(
            meta_dir.join("meta.json"),
            r#"{"Name":"rootless","Endpoints":{"docker":{"Host":"unix:///run/user/1000/docker.sock","SkipTLSVerify":false}}}"#,
        )
        .unwrap();
        assert_eq!(
            context_host(Some(cfg), None).unwrap().as_deref(),
            Some("unix:///run/user/1000/docker.sock")
        );
        // DOCKER_CONTEXT wins over config.json.
        assert_eq!(context_host(Some(cfg), Some("default")).unwrap(), None);
        assert!(context_host(Some(cfg), Some("elsewhere")).is_err());
    }

    #[test]
    fn depends_on_label_forms() {
        assert_eq!(
            parse_depends_on_label("db:service_healthy:false,cache:service_started:true"),
            ["db", "cache"]
        );
        assert_eq!(parse_depends_on_label("db, cache,db"), ["db", "cache"]);
        assert!(parse_depends_on_label("").is_empty());
    }

    fn probe(state: &str, health: Option<&str>) -> Probe {
        Probe {
            info: ContainerInfo {
                id: "0123456789abcdef".into(),
                name: "p-db-1".into(),
                service: Some("db".into()),
                state: state.into(),
                health: health.map(String::from),
                restart_policy: "always".into(),
                image: "img".into(),
                image_id: "sha256:1".into(),
                depends_on: vec![],
                stop_timeout: None,
                project: Some("p".into()),
            },
            exit_code: Some(3),
            started_at: Some("2024-01-01T00:00:00.123456789Z".into()),
            start_period: None,
            last_health_output: Some("db not ready".into()),
            restart_count: 0,
        }
    }

    #[test]
    fn readiness_rules() {
        let now = chrono::DateTime::parse_from_rfc3339("2024-01-01T00:00:30Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(probe("running", None).readiness(now), Readiness::Ready);
        // Started half a second ago, no healthcheck: not trusted yet.
        let just = chrono::DateTime::parse_from_rfc3339("2024-01-01T00:00:00.623456789Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert!(matches!(
            probe("running", None).readiness(just),
            Readiness::Pending(_)
        ));
        // A healthcheck decides by itself.
        assert_eq!(
            probe("running", Some("healthy")).readiness(just),
            Readiness::Ready
        );
        assert_eq!(
            probe("running", Some("healthy")).readiness(now),
            Readiness::Ready
        );
        assert!(matches!(
            probe("running", Some("starting")).readiness(now),
            Readiness::Pending(_)
        ));
        assert!(matches!(
            probe("restarting", None).readiness(now),
            Readiness::Pending(_)
        ));
        assert!(matches!(
            probe("created", None).readiness(now),
            Readiness::Pending(_)
        ));
        match probe("exited", None).readiness(now) {
            Readiness::Failed { reason, exited } => {
                assert!(exited);
                assert!(reason.contains("code 3"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        match probe("running", Some("unhealthy")).readiness(now) {
            Readiness::Failed { reason, .. } => {
                assert!(reason.contains("db not ready"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // Unhealthy inside the start period is still pending.
        let mut young = probe("running", Some("unhealthy"));
        young.start_period = Some(Duration::from_secs(60));
        assert!(matches!(young.readiness(now), Readiness::Pending(_)));
        young.start_period = Some(Duration::from_secs(10));
        assert!(matches!(young.readiness(now), Readiness::Failed { .. }));
    }

    #[test]
    fn selectors() {
        let info = probe("running", None).info;
        assert!(matches_selector(&info, "p-db-1"));
        assert!(matches_selector(&info, "/p-db-1"));
        assert!(matches_selector(&info, "db"));
        assert!(matches_selector(&info, "0123456789ab"));
        assert!(!matches_selector(&info, "0123"));
        assert!(!matches_selector(&info, "web"));
    }
}
