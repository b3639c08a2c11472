//! Actors, archive format, restore and Docker policy behind `nuwax-cli`.
//!
//! The CLI talks to [`Runtime`] only. Behind it a supervisor owns three actors: the
//! StoreActor (sole owner of the SQLite connection), the DockerActor (bollard client) and the
//! ArchiveActor (build / verify / restore, blocking work on `spawn_blocking`). The modules
//! `archive`, `restore`, `docker::policy` and `docker::compose` are plain synchronous code
//! that knows nothing about actors or terminals.

mod actors;
pub mod archive;
pub mod config;
pub mod config_edit;
pub mod docker;
pub mod error;
pub mod faults;
pub mod fsutil;
pub mod lock;
mod ops;
pub mod package;
pub mod progress;
pub mod relpath;
pub mod restore;
pub mod retention;
mod runtime;
pub mod space;

pub use config::Settings;
pub use docker::ContainerInfo;
pub use error::{Error, ErrorKind, Result};
pub use nuwax_store::{BackupRecord, BackupStatus, BackupType};
pub use ops::BackupEntry;
pub use ops::auto_backup::{AutoBackupReport, AutoBackupStatus};
pub use ops::backup::BackupRequest;
pub use ops::maintenance::ReindexReport;
pub use ops::recovery::{BlockedInfo, Keep};
pub use ops::rollback::{RollbackReport, RollbackRequest, RollbackScope};
pub use ops::services::{ServiceState, ServiceStatus, StartReport};
pub use ops::upgrade::{UpgradeReport, UpgradeRequest};
pub use progress::{Phase, Progress, ProgressEvent};
pub use runtime::{Runtime, RuntimeOptions};
