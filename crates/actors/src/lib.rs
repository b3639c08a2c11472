//! Actors, archive format, restore and Docker policy behind `nuwax-cli`.
//!
//! The CLI talks to [`Runtime`] only. Behind it a supervisor owns three actors: the
//! StoreActor (sole owner of the SQLite connection), the DockerActor (bollard client) and the
//! ArchiveActor (build / verify / restore, blocking work on `spawn_blocking`). The modules
//! `archive`, `restore`, `docker::policy` and `docker::compose` are plain synchronous code
//! that knows nothing about actors or terminals.

pub mod archive;
pub mod config;
pub mod docker;
pub mod error;
pub mod faults;
pub mod lock;
pub mod progress;
pub mod restore;
pub mod space;
pub mod retention;
pub mod package;
pub mod config_edit;
mod actors;
mod recovery;
mod runtime;
mod services;

pub use config::Settings;
pub use error::{Error, ErrorKind, Result};
pub use nuwax_store::{BackupRecord, BackupStatus, BackupType};
pub use progress::{Phase, Progress, ProgressEvent};
pub use runtime::{
    BackupEntry, BackupRequest, RollbackReport, RollbackRequest, RollbackScope, Runtime,
    RuntimeOptions,
};
pub use services::{AutoBackupReport, AutoBackupStatus, ServiceState, ServiceStatus, StartReport};
pub use docker::ContainerInfo;
