//! Waiting until containers are ready: a [`Probe`] of each container says whether it is
//! running, healthy, still in its start period, or failed; [`Engine::wait_healthy`] waits for
//! the project's persistent containers, fails at once on an exit, an unhealthy check after the
//! start period or a crash loop, and names what is not ready at the deadline.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bollard::query_parameters::LogsOptionsBuilder;
use futures_util::StreamExt;

use super::{Engine, POLL, label, truncate};
use crate::archive::CancelFlag;
use crate::docker::{ComposeProject, ContainerInfo, ContainerState, policy};
use crate::error::{Error, Result};
use crate::progress::{Phase, Progress};

/// How long [`Engine::start_containers`] waits for a dependency to become healthy before it
/// starts the containers that depend on it.
pub const DEPENDENCY_TIMEOUT: Duration = Duration::from_secs(180);

/// How long a container without a healthcheck must have been running to count as ready.
const SETTLE: Duration = Duration::from_secs(1);
/// Restarts, while waited for, that make a container crash-looping: a failure, not a wait.
const CRASH_LOOP_RESTARTS: i64 = 3;

/// What the engine says about a container, beyond [`ContainerInfo`], for readiness checks.
#[derive(Debug, Clone)]
pub(super) struct Probe {
    pub(super) info: ContainerInfo,
    pub(super) exit_code: Option<i64>,
    pub(super) started_at: Option<String>,
    /// `Config.Healthcheck.StartPeriod`.
    pub(super) start_period: Option<Duration>,
    /// Last non-empty line of the most recent healthcheck output.
    pub(super) last_health_output: Option<String>,
    /// How many times the engine restarted it (`RestartCount`).
    pub(super) restart_count: i64,
}

/// Where a container stands while we wait for it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Readiness {
    Ready,
    Pending(String),
    Failed { reason: String, exited: bool },
}

impl Probe {
    pub(super) fn readiness(&self, now: chrono::DateTime<chrono::Utc>) -> Readiness {
        match &self.info.state {
            ContainerState::Running => match self.info.health.as_deref() {
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
            ContainerState::Exited | ContainerState::Dead => Readiness::Failed {
                reason: format!(
                    "{} with code {}",
                    self.info.state,
                    self.exit_code
                        .map_or_else(|| "?".to_string(), |c| c.to_string())
                ),
                exited: true,
            },
            ContainerState::Restarting => Readiness::Pending(format!(
                "restarting, last exit code {}",
                self.exit_code
                    .map_or_else(|| "?".to_string(), |c| c.to_string())
            )),
            other => Readiness::Pending(other.as_str().to_string()),
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
    /// Waits until every persistent container of the project (or, when `only` is not empty,
    /// those matching a container name, id or service in `only`) is running, and healthy
    /// where it has a healthcheck. A container that exits, or is unhealthy after its start
    /// period, fails at once, named with its last output; so does one that the engine
    /// restarted [`CRASH_LOOP_RESTARTS`] times while waited for (a crash loop under a restart
    /// policy, which would otherwise look "restarting" or briefly "running" until the
    /// timeout). The timeout fails listing what is not ready. One-shot containers are not
    /// waited for.
    #[cfg(any(test, feature = "test-support"))]
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
        // The last state reported for each target, so a container's line is sent on change.
        let mut reported: HashMap<String, String> = HashMap::new();
        let mut report = |name: &str, state: String| {
            if reported.get(name) != Some(&state) {
                progress.container(name, state.clone());
                reported.insert(name.to_owned(), state);
            }
        };
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
                    report(name, "no container".into());
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
                            report(name, ready_word(&probe.info).to_string());
                        }
                    }
                    Readiness::Pending(why) => {
                        report(name, why.to_string());
                        pending.push(format!("{name} ({why})"));
                    }
                    Readiness::Failed { reason, exited } => {
                        report(name, "failed".into());
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

    /// The exit code of a crash-looping container's last run. While it is running again the
    /// engine reports 0 (the code is reset at start), so look for a moment between runs.
    async fn exit_code_between_runs(&self, probe: &Probe) -> Option<i64> {
        if probe.info.state != ContainerState::Running {
            return probe.exit_code;
        }
        for _ in 0..30 {
            match self.inspect(&probe.info.id).await {
                Ok(Some(p)) if p.info.state != ContainerState::Running => return p.exit_code,
                Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
                _ => return None,
            }
        }
        None
    }

    /// Waits until `dependencies` run and are healthy where they have a healthcheck, or have
    /// exited with code 0 (a completed job).
    pub(super) async fn wait_dependencies(
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
        let lines = self.log_lines(id, 5).await?;
        let lines: Vec<&str> = lines.iter().map(|l| l.trim()).collect();
        Some(truncate(&lines.join(" | "), 400))
    }

    /// The non-blank lines among the last `tail` a container printed (stdout and stderr);
    /// `None` when there are none or the engine does not answer within 5 s. Best effort.
    pub(super) async fn log_lines(&self, id: &str, tail: usize) -> Option<Vec<String>> {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&tail.to_string())
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
        let kept: Vec<String> = out
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect();
        (!kept.is_empty()).then_some(kept)
    }
}

fn matches_selector(info: &ContainerInfo, selector: &str) -> bool {
    let selector = selector.trim_start_matches('/');
    info.name == selector
        || info.service.as_deref() == Some(selector)
        || (selector.len() >= 12 && info.id.starts_with(selector))
}

fn ready_word(info: &ContainerInfo) -> &'static str {
    if info.health.is_some() {
        "healthy"
    } else {
        "running"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
