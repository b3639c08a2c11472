//! The supervisor: spawns the four actors linked to itself and restarts one that fails
//! (a panic inside a handler), so a bug in one request does not take the process down and
//! the next request finds a fresh actor. Callers fetch current refs through it.

use std::path::PathBuf;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use super::archive_actor::{ArchiveActor, ArchiveMsg};
use super::docker_actor::{DockerActor, DockerMsg};
use super::remote_actor::{RemoteActor, RemoteMsg};
use super::store_actor::{StoreActor, StoreArgs, StoreMsg};

pub(crate) struct Supervisor;

pub(crate) struct SupervisorArgs {
    pub db_file: PathBuf,
    /// Move an unusable catalog aside at start-up (`reindex --move-broken-catalog`); a
    /// restarted store actor never does.
    pub move_broken_catalog: bool,
    /// `[remote]`, for the remote actor (`None`: offsite copies not configured).
    pub remote: Option<crate::remote::RemoteSettings>,
    /// A read-only command: a catalog file that does not exist is not created (an empty
    /// catalog in memory stands for it).
    pub read_only: bool,
}

pub(crate) struct SupervisorState {
    db_file: PathBuf,
    remote: Option<crate::remote::RemoteSettings>,
    read_only: bool,
    refs: Refs,
}

#[derive(Clone)]
pub(crate) struct Refs {
    pub store: ActorRef<StoreMsg>,
    pub docker: ActorRef<DockerMsg>,
    pub archive: ActorRef<ArchiveMsg>,
    pub remote: ActorRef<RemoteMsg>,
}

pub(crate) enum SupervisorMsg {
    Refs(RpcReplyPort<Refs>),
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let cell = myself.get_cell();
        let store_args = StoreArgs {
            db_file: args.db_file.clone(),
            move_broken: args.move_broken_catalog,
            read_only: args.read_only,
        };
        let (store, _) = Actor::spawn_linked(None, StoreActor, store_args, cell.clone()).await?;
        let (docker, _) = Actor::spawn_linked(None, DockerActor, (), cell.clone()).await?;
        let (archive, _) = Actor::spawn_linked(None, ArchiveActor, (), cell.clone()).await?;
        let (remote, _) = Actor::spawn_linked(None, RemoteActor, args.remote.clone(), cell).await?;
        Ok(SupervisorState {
            db_file: args.db_file,
            remote: args.remote,
            read_only: args.read_only,
            refs: Refs {
                store,
                docker,
                archive,
                remote,
            },
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Refs(r) => {
                let _ = r.send(state.refs.clone());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let failed: Option<ActorCell> = match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                tracing::error!("actor {:?} failed: {err}; restarting it", cell.get_id());
                Some(cell)
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                tracing::debug!("actor {:?} stopped: {reason:?}", cell.get_id());
                None
            }
            _ => None,
        };
        if let Some(cell) = failed {
            let parent = myself.get_cell();
            let id = cell.get_id();
            if id == state.refs.store.get_id() {
                let args = StoreArgs {
                    db_file: state.db_file.clone(),
                    move_broken: false,
                    read_only: state.read_only,
                };
                let (r, _) = Actor::spawn_linked(None, StoreActor, args, parent).await?;
                state.refs.store = r;
            } else if id == state.refs.docker.get_id() {
                let (r, _) = Actor::spawn_linked(None, DockerActor, (), parent).await?;
                state.refs.docker = r;
            } else if id == state.refs.archive.get_id() {
                let (r, _) = Actor::spawn_linked(None, ArchiveActor, (), parent).await?;
                state.refs.archive = r;
            } else if id == state.refs.remote.get_id() {
                let (r, _) =
                    Actor::spawn_linked(None, RemoteActor, state.remote.clone(), parent).await?;
                state.refs.remote = r;
            }
        }
        Ok(())
    }
}
