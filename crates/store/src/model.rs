//! Catalog types: what a row means, independent of how it is stored.
//!
//! Every enum has one text form used in the database (`as_str`) and `parse` for the way back.
//! `parse` returns `None` for text it does not know, which the row decoder turns into
//! [`Error::Corrupt`](crate::Error::Corrupt): a catalog written by a newer tool must not panic
//! an older one.

use std::fmt;
use std::path::PathBuf;

use chrono::{DateTime, Utc};

/// Why a backup was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum BackupType {
    Manual,
    PreUpgrade,
    Auto,
}

impl BackupType {
    /// The catalog and JSON form: `"Manual"`, `"PreUpgrade"`, `"Auto"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "Manual",
            Self::PreUpgrade => "PreUpgrade",
            Self::Auto => "Auto",
        }
    }

    /// The form used in archive file names: `"manual"`, `"pre-upgrade"`, `"auto"`.
    pub fn file_tag(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::PreUpgrade => "pre-upgrade",
            Self::Auto => "auto",
        }
    }

    /// Accepts both the [`as_str`](Self::as_str) and the [`file_tag`](Self::file_tag) form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Manual" | "manual" => Some(Self::Manual),
            "PreUpgrade" | "pre-upgrade" => Some(Self::PreUpgrade),
            "Auto" | "auto" => Some(Self::Auto),
            _ => None,
        }
    }
}

/// Where a backup is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BackupStatus {
    Running,
    Completed,
    Failed,
}

impl BackupStatus {
    /// `"Running"`, `"Completed"`, `"Failed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "Running",
            Self::Completed => "Completed",
            Self::Failed => "Failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Running" => Some(Self::Running),
            "Completed" => Some(Self::Completed),
            "Failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// One archive in the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupRecord {
    pub id: i64,
    pub file_path: PathBuf,
    pub backup_type: BackupType,
    pub service_version: String,
    pub status: BackupStatus,
    /// Archive size in bytes, once completed.
    pub size: Option<u64>,
    /// Lowercase hex SHA-256 of the archive file, once completed.
    pub sha256: Option<String>,
    /// Number of archive entries, once completed.
    pub entry_count: Option<u64>,
    /// Why the backup failed.
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The process that is (or was) writing the archive; `None` for imported rows.
    pub owner_pid: Option<u32>,
    /// Last successful full verification.
    pub verified_at: Option<DateTime<Utc>>,
    pub compose_project: Option<String>,
    /// Made by the original nuwax-cli: the archive holds no metadata of its own; type,
    /// version and time come from its file name and its manifest from the catalog
    /// ([`Store::legacy_manifest`](crate::Store::legacy_manifest)).
    pub legacy: bool,
}

/// A backup about to be written; inserted as [`BackupStatus::Running`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewBackup {
    pub file_path: PathBuf,
    pub backup_type: BackupType,
    pub service_version: String,
    pub created_at: DateTime<Utc>,
    pub owner_pid: u32,
    pub compose_project: Option<String>,
}

/// What a finished archive looks like; turns a row [`BackupStatus::Completed`].
#[derive(Debug, Clone, PartialEq)]
pub struct BackupCompletion {
    pub size: u64,
    pub sha256: String,
    pub entry_count: u64,
    pub finished_at: DateTime<Utc>,
}

/// What an operation-journal entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OperationKind {
    Backup,
    Rollback,
    AutoBackup,
    Upgrade,
    Drill,
}

impl OperationKind {
    /// `"backup"`, `"rollback"`, `"auto-backup"`, `"upgrade"`, `"drill"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backup => "backup",
            Self::Rollback => "rollback",
            Self::AutoBackup => "auto-backup",
            Self::Upgrade => "upgrade",
            Self::Drill => "drill",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "backup" => Some(Self::Backup),
            "rollback" => Some(Self::Rollback),
            "auto-backup" => Some(Self::AutoBackup),
            "upgrade" => Some(Self::Upgrade),
            "drill" => Some(Self::Drill),
            _ => None,
        }
    }
}

/// Where an operation is; `Running` rows found at startup are crash-recovery candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperationState {
    Running,
    Succeeded,
    Failed,
    /// A crashed run that a later run finished or reverted.
    Recovered,
}

impl OperationState {
    /// `"running"`, `"succeeded"`, `"failed"`, `"recovered"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Recovered => "recovered",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(Self::Running),
            "succeeded" => Some(Self::Succeeded),
            "failed" => Some(Self::Failed),
            "recovered" => Some(Self::Recovered),
            _ => None,
        }
    }
}

/// One entry of the operation journal.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub id: i64,
    pub kind: OperationKind,
    pub state: OperationState,
    /// Free-form step name chosen by the caller (`"started"` on creation).
    pub phase: String,
    pub pid: u32,
    /// The kernel boot id at start, so a pid from an earlier boot is never taken as alive.
    pub boot_id: String,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub backup_id: Option<i64>,
    /// Whatever the caller needs to recover (paths of staging and undo dirs, ...).
    pub details: serde_json::Value,
    pub error: Option<String>,
}

/// How an upgrade ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpgradeOutcome {
    Running,
    Succeeded,
    /// Failed and rolled back automatically.
    RolledBack,
    /// Failed, and the automatic rollback failed too.
    RollbackFailed,
    /// Failed before anything live was changed.
    Failed,
}

impl UpgradeOutcome {
    /// `"running"`, `"succeeded"`, `"rolled-back"`, `"rollback-failed"`, `"failed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::RolledBack => "rolled-back",
            Self::RollbackFailed => "rollback-failed",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(Self::Running),
            "succeeded" => Some(Self::Succeeded),
            "rolled-back" => Some(Self::RolledBack),
            "rollback-failed" => Some(Self::RollbackFailed),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// One upgrade attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct UpgradeRecord {
    pub id: i64,
    pub from_version: String,
    pub to_version: String,
    /// The pre-upgrade backup; `None` until taken, or after it was deleted.
    pub backup_id: Option<i64>,
    pub outcome: UpgradeOutcome,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

/// How a restore drill ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrillOutcome {
    Running,
    /// Every persistent service came up healthy and every check passed.
    Passed,
    /// A service did not come up, or a check failed.
    Failed,
    /// Stopped by a signal, or by a crash (cleaned up by the next command).
    Interrupted,
}

impl DrillOutcome {
    /// `"running"`, `"passed"`, `"failed"`, `"interrupted"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(Self::Running),
            "passed" => Some(Self::Passed),
            "failed" => Some(Self::Failed),
            "interrupted" => Some(Self::Interrupted),
            _ => None,
        }
    }
}

/// One restore drill of a backup.
#[derive(Debug, Clone, PartialEq)]
pub struct DrillRecord {
    pub id: i64,
    pub backup_id: i64,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<u64>,
    pub outcome: DrillOutcome,
    /// The service that did not come up (or whose check failed).
    pub failed_service: Option<String>,
    /// Its last log lines.
    pub log_tail: Option<String>,
    pub error: Option<String>,
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}

display_as_str!(
    BackupType,
    BackupStatus,
    OperationKind,
    OperationState,
    UpgradeOutcome,
    DrillOutcome
);
