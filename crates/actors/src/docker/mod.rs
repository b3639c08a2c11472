//! Docker: compose-file reading, the cold-backup gate policy, and the engine client.
//!
//! `compose`, `discovery` (which containers are the project's) and `policy` are synchronous
//! and unit-tested; `engine` wraps bollard and is only called from the DockerActor.

pub mod compose;
pub mod discovery;
pub mod drill;
pub mod engine;
pub mod policy;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What a compose file says about one service (only what we need).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ComposeService {
    /// `restart:` as written (`"no"`, `"always"`, `"on-failure:3"`...); `None` when absent.
    /// YAML `false` and `no` both read as `"no"`.
    pub restart: Option<String>,
    /// Services this one depends on (`depends_on` list or map form, plus
    /// `network_mode: service:X`, `volumes_from: [X]` and `links: [X]`), in file order.
    pub depends_on: Vec<String>,
    /// The service defines a healthcheck that is not disabled.
    pub has_healthcheck: bool,
    /// `env_file:` entries as written (relative to the compose dir unless absolute).
    pub env_files: Vec<String>,
}

/// The parsed compose project.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ComposeProject {
    /// Project name: config `[docker] project`, else `COMPOSE_PROJECT_NAME` from the env file,
    /// else top-level `name:`, else the compose dir's name, normalised as compose does
    /// (lowercase, only `[a-z0-9_-]`).
    pub name: String,
    pub services: BTreeMap<String, ComposeService>,
    /// How the project's containers are recognised on the engine ([`discovery`]).
    pub identity: ProjectIdentity,
}

impl ComposeProject {
    /// [`ComposeProject::identity`], or only the spellings of `name` when it was left empty.
    pub fn discovery(&self) -> ProjectIdentity {
        if self.identity.names.is_empty() {
            ProjectIdentity::named(&self.name)
        } else {
            self.identity.clone()
        }
    }
}

/// Everything that identifies the project's containers on the engine: every name a compose
/// implementation in use would give the project, and the compose file and dir that compose
/// records in its labels. See [`discovery`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProjectIdentity {
    /// Project names, the one we pass to `compose -p` (compose v2's) first, then the other
    /// spellings (docker-compose v1 keeps a leading `_`, old v1 drops `_` and `-`, v1 ignores
    /// a top-level `name:`). No duplicates.
    pub names: Vec<String>,
    /// The name comes from `[docker] project`: a container under another spelling of it whose
    /// labels point at another directory is another project, not an ambiguity.
    pub explicit: bool,
    /// The compose file, canonicalised when it exists.
    pub compose_file: Option<PathBuf>,
    /// The compose dir, canonicalised when it exists.
    pub compose_dir: Option<PathBuf>,
}

impl ProjectIdentity {
    /// Only the spellings of `name` (no paths): for callers that know nothing else.
    pub fn named(name: &str) -> ProjectIdentity {
        ProjectIdentity {
            names: discovery::name_variants(&[name]),
            ..ProjectIdentity::default()
        }
    }

    /// The name given to `compose -p`.
    pub fn primary(&self) -> &str {
        self.names.first().map(String::as_str).unwrap_or_default()
    }
}

/// A container's engine state (`State.Status`), as the engine spells it in JSON and journals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
    /// Newer engines, while the stop signal is being handled: the process still runs.
    Stopping,
    /// A state this build does not know; kept as the engine wrote it.
    Other(String),
}

impl ContainerState {
    pub fn parse(s: &str) -> ContainerState {
        match s {
            "created" => ContainerState::Created,
            "running" => ContainerState::Running,
            "paused" => ContainerState::Paused,
            "restarting" => ContainerState::Restarting,
            "removing" => ContainerState::Removing,
            "exited" => ContainerState::Exited,
            "dead" => ContainerState::Dead,
            "stopping" => ContainerState::Stopping,
            other => ContainerState::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Paused => "paused",
            ContainerState::Restarting => "restarting",
            ContainerState::Removing => "removing",
            ContainerState::Exited => "exited",
            ContainerState::Dead => "dead",
            ContainerState::Stopping => "stopping",
            ContainerState::Other(s) => s,
        }
    }

    /// The one definition of *active*: the container is (or is about to be) using its data,
    /// so a cold backup must not run and a rollback must stop it first.
    pub fn is_active(&self) -> bool {
        matches!(
            self,
            ContainerState::Running
                | ContainerState::Restarting
                | ContainerState::Paused
                | ContainerState::Stopping
        )
    }
}

impl From<&str> for ContainerState {
    fn from(s: &str) -> Self {
        ContainerState::parse(s)
    }
}

impl std::fmt::Display for ContainerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ContainerState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ContainerState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(ContainerState::parse(&String::deserialize(d)?))
    }
}

/// One container of the project as the engine reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    /// `com.docker.compose.service` label.
    pub service: Option<String>,
    /// Engine state (`State.Status`).
    pub state: ContainerState,
    /// `healthy`, `unhealthy`, `starting`, or `None` without a healthcheck.
    pub health: Option<String>,
    /// `HostConfig.RestartPolicy.Name` (`no` when empty).
    pub restart_policy: String,
    pub image: String,
    pub image_id: String,
    /// Services named in the `com.docker.compose.depends_on` label.
    pub depends_on: Vec<String>,
    /// `Config.StopTimeout` when set.
    pub stop_timeout: Option<i64>,
    /// `com.docker.compose.project` label: the name the compose implementation that made the
    /// container gave the project. Absent in journals written before it was recorded.
    #[serde(default)]
    pub project: Option<String>,
}

/// Why a container blocks (or does not block) a cold backup.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateEntry {
    pub container: ContainerInfo,
    pub one_shot: bool,
}

/// Outcome of the cold-backup gate (DESIGN.md 4.2).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GateReport {
    pub project: String,
    /// Persistent containers that are running, restarting or paused: the backup must refuse.
    pub blocking: Vec<GateEntry>,
    /// Running one-shot containers: reported, not blocking.
    pub warnings: Vec<GateEntry>,
    /// Everything else of the project (stopped).
    pub stopped: Vec<GateEntry>,
    /// `true` when no engine socket exists at all (gate skipped with a warning).
    pub engine_absent: bool,
}

impl GateReport {
    pub fn passes(&self) -> bool {
        self.blocking.is_empty()
    }
}
