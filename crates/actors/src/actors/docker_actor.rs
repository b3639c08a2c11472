//! DockerActor: owns the bollard client. Connects lazily on first use and keeps the
//! connection; "no engine socket at all" is remembered as `None` (callers warn), while an
//! engine that exists but does not answer is an error every time (fail closed).

use std::path::PathBuf;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::reply;
use crate::archive::CancelFlag;
use crate::docker::engine::{self, Engine};
use crate::docker::{ComposeProject, ContainerInfo, GateReport, ProjectIdentity, policy};
use crate::error::Result;
use crate::progress::Progress;

pub(crate) struct DockerActor;

#[derive(Default)]
pub(crate) struct DockerState {
    engine: Option<Option<Engine>>,
}

type Reply<T> = RpcReplyPort<Result<T>>;

pub(crate) enum DockerMsg {
    /// The containers under the spellings of a project name only; `None` when there is no
    /// engine on this machine. Prefer [`DockerMsg::Find`], which also matches compose's
    /// working-dir and config-file labels.
    Containers(String, Reply<Option<Vec<ContainerInfo>>>),
    /// The project's containers (every spelling of its name, and compose's working-dir and
    /// config-file labels); `None` when there is no engine on this machine.
    Find(ProjectIdentity, Reply<Option<Vec<ContainerInfo>>>),
    /// The cold-backup gate.
    Gate(ComposeProject, Reply<GateReport>),
    /// Stops the given containers (reverse dependency order); returns the names stopped.
    Stop(Vec<ContainerInfo>, Progress, Reply<Vec<String>>),
    /// Starts the given containers (dependency order). Not cancellable: this is how what was
    /// stopped is put back, also after Ctrl-C.
    Start(Vec<ContainerInfo>, Progress, Reply<()>),
    /// Starts the given containers on request (`docker-service start`): waits for
    /// dependencies end at once when the flag is set.
    StartInterruptible(Vec<ContainerInfo>, Progress, CancelFlag, Reply<()>),
    /// Waits until the project's persistent containers (or those named in the list) run and
    /// are healthy; ends at once with `Error::Interrupted` when the flag is set.
    WaitHealthy(
        ComposeProject,
        Vec<String>,
        Duration,
        Progress,
        CancelFlag,
        Reply<()>,
    ),
    /// The environment (`KEY=value`) of a container: where a dump finds its credentials.
    ContainerEnv(String, Reply<Vec<String>>),
    /// Runs a command in a running container (a dump, or `restore-dump`), streaming its
    /// stdout to a file or a file to its stdin. Runs on its own task, so a long dump does not
    /// hold up other requests; ends at once with `Error::Interrupted` when the flag is set.
    Exec(
        Box<engine::ExecRequest>,
        engine::ExecIo,
        CancelFlag,
        Reply<engine::ExecOutcome>,
    ),
    /// The last lines a container printed; `None` when there is nothing (or no engine).
    LogTail(String, usize, Reply<Option<String>>),
    /// Removes the containers, networks and volumes labelled with exactly this compose
    /// project (a drill's own project, never the live one); returns what was removed.
    RemoveProject(String, Reply<Vec<String>>),
    /// `docker compose up -d` for the project (creates containers that do not exist yet).
    ComposeUp {
        compose_file: PathBuf,
        env_file: Option<PathBuf>,
        project: String,
        reply: Reply<()>,
    },
}

impl DockerState {
    async fn engine(&mut self) -> Result<Option<&Engine>> {
        if self.engine.is_none() {
            // Only a definite answer is cached; an unreachable engine is retried next time.
            self.engine = Some(Engine::connect().await?);
        }
        Ok(self.engine.as_ref().and_then(|e| e.as_ref()))
    }
}

impl Actor for DockerActor {
    type Msg = DockerMsg;
    type State = DockerState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(DockerState::default())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DockerMsg::Containers(project, r) => {
                let result = async {
                    match st.engine().await? {
                        None => Ok(None),
                        Some(engine) => engine
                            .project_containers(&ProjectIdentity::named(&project))
                            .await
                            .map(Some),
                    }
                }
                .await;
                reply(r, result);
            }
            DockerMsg::Find(identity, r) => {
                let result = async {
                    match st.engine().await? {
                        None => Ok(None),
                        Some(engine) => engine.project_containers(&identity).await.map(Some),
                    }
                }
                .await;
                reply(r, result);
            }
            DockerMsg::Gate(compose, r) => {
                let result = async {
                    match st.engine().await? {
                        None => Ok(GateReport {
                            project: compose.name.clone(),
                            engine_absent: true,
                            ..GateReport::default()
                        }),
                        Some(engine) => {
                            let containers =
                                engine.project_containers(&compose.discovery()).await?;
                            Ok(policy::gate(&compose.name, &compose, &containers))
                        }
                    }
                }
                .await;
                reply(r, result);
            }
            DockerMsg::Stop(containers, progress, r) => {
                let result = async {
                    match st.engine().await? {
                        None => Ok(Vec::new()),
                        Some(engine) => {
                            engine
                                .stop_containers_reporting(&containers, &progress)
                                .await
                        }
                    }
                }
                .await;
                reply(r, result);
            }
            DockerMsg::Start(containers, progress, r) => {
                let result = async {
                    match st.engine().await? {
                        None => Ok(()),
                        Some(engine) => {
                            engine
                                .start_containers_reporting(
                                    &containers,
                                    &CancelFlag::default(),
                                    &progress,
                                )
                                .await
                        }
                    }
                }
                .await;
                reply(r, result);
            }
            DockerMsg::StartInterruptible(containers, progress, cancel, r) => {
                let result = async {
                    match st.engine().await? {
                        None => Ok(()),
                        Some(engine) => {
                            engine
                                .start_containers_reporting(&containers, &cancel, &progress)
                                .await
                        }
                    }
                }
                .await;
                reply(r, result);
            }
            DockerMsg::WaitHealthy(compose, only, timeout, progress, cancel, r) => {
                let result = async {
                    match st.engine().await? {
                        None => Ok(()),
                        Some(engine) => {
                            engine
                                .wait_healthy_cancellable(
                                    &compose, &only, timeout, &progress, &cancel,
                                )
                                .await
                        }
                    }
                }
                .await;
                reply(r, result);
            }
            DockerMsg::ContainerEnv(container, r) => {
                let result = async {
                    match st.engine().await? {
                        None => Err(no_engine()),
                        Some(engine) => engine.container_env(&container).await,
                    }
                }
                .await;
                reply(r, result);
            }
            DockerMsg::LogTail(id, lines, r) => {
                let result = async {
                    Ok(match st.engine().await? {
                        None => None,
                        Some(engine) => engine.log_tail(&id, lines).await,
                    })
                }
                .await;
                reply(r, result);
            }
            DockerMsg::RemoveProject(project, r) => {
                let result = async {
                    match st.engine().await? {
                        None => Ok(Vec::new()),
                        Some(engine) => engine.remove_project(&project).await,
                    }
                }
                .await;
                reply(r, result);
            }
            DockerMsg::Exec(request, io, cancel, r) => match st.engine().await {
                Ok(Some(engine)) => {
                    let engine = engine.clone();
                    tokio::spawn(async move {
                        reply(r, engine.exec(&request, io, &cancel).await);
                    });
                }
                Ok(None) => reply(r, Err(no_engine())),
                Err(e) => reply(r, Err(e)),
            },
            DockerMsg::ComposeUp {
                compose_file,
                env_file,
                project,
                reply: r,
            } => {
                let result = engine::compose_up(&compose_file, env_file.as_deref(), &project).await;
                reply(r, result);
            }
        }
        Ok(())
    }
}

/// A dump needs the engine: there is no other way into the container.
fn no_engine() -> crate::error::Error {
    crate::error::Error::Refused(
        "no Docker engine socket found on this machine; database dumps run inside the containers through the engine: start it (or set DOCKER_HOST)".into(),
    )
}
