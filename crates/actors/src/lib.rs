//! Actors, archive format, restore and Docker policy behind `nuwax-cli`.
//!
//! The CLI talks to [`Runtime`] only. Behind it a supervisor owns three actors: the
//! StoreActor (sole owner of the SQLite connection), the DockerActor (bollard client) and the
//! ArchiveActor (build / verify / restore, blocking work on `spawn_blocking`). The modules
//! `archive`, `restore`, `docker::policy` and `docker::compose` are plain synchronous code
//! that knows nothing about actors or terminals.

mod actors;
// What this crate's own integration tests reach into (the `test-support` feature, on only for
// them through a dev-dependency); crate-private otherwise.
#[cfg(feature = "test-support")]
pub mod archive;
#[cfg(not(feature = "test-support"))]
pub(crate) mod archive;
pub(crate) mod config;
pub(crate) mod config_edit;
#[cfg(feature = "test-support")]
pub mod docker;
#[cfg(not(feature = "test-support"))]
pub(crate) mod docker;
pub(crate) mod dumps;
pub(crate) mod encryption;
pub(crate) mod error;
pub(crate) mod exclude;
pub(crate) mod faults;
pub(crate) mod fsutil;
pub(crate) mod hook;
pub(crate) mod lock;
pub(crate) mod notify;
mod ops;
pub(crate) mod package;
pub(crate) mod progress;
pub(crate) mod relpath;
pub(crate) mod remote;
pub(crate) mod restore;
pub(crate) mod retention;
mod runtime;
pub(crate) mod space;
pub(crate) mod treediff;

pub use archive::{CancelFlag, VerifyReport};
pub use config::Settings;
pub use docker::ContainerInfo;
pub use docker::GateEntry;
pub use encryption::KeySource;
pub use error::{Error, ErrorKind, Result};
pub use nuwax_store::{BackupRecord, BackupStatus, BackupType, DrillOutcome, DrillRecord};
pub use ops::BackupEntry;
pub use ops::auto_backup::{AutoBackupReport, AutoBackupStatus};
pub use ops::backup::BackupRequest;
pub use ops::drill::{CheckResult, DrillReport, DrillRequest, KeptDrill};
pub use ops::dumps::RestoreDumpReport;
pub use ops::inspect::{
    ArchiveEntry, DiffReport, DiffRequest, LsReport, LsRequest, RestoreReport, RestoreRequest,
    RollbackPlan,
};
pub use ops::maintenance::{DeleteReport, ReindexReport};
pub use ops::recovery::{BlockedInfo, Keep};
pub use ops::remote::{
    CopyState, PushReport, PushedCopy, RemoteList, RemoteListEntry, RemotePruneReport,
    RemoteReindexReport, RemoteTarget, RemoteVerifyResult,
};
pub use ops::rollback::{RollbackReport, RollbackRequest, RollbackScope, VersionUpdate};
pub use ops::services::{ServiceState, ServiceStatus, StartReport};
pub use ops::upgrade::{UpgradeReport, UpgradeRequest};
pub use progress::{Phase, Progress, ProgressEvent};
pub use remote::{PushMode, Sidecar};
pub use retention::{Decision, KeepRules};
pub use runtime::{Runtime, RuntimeOptions};
pub use treediff::{DiffEntry, Side, TreeDiff};
