//! Exit codes, mapped in one place (DESIGN.md section 7).

use nuwax_actors::{Error, ErrorKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExitStatus {
    Success = 0,
    /// The operation failed; live data unchanged unless the message says otherwise.
    Failed = 1,
    /// Usage error or missing confirmation.
    Usage = 2,
    /// Refused by a precondition: services running, lock held, no space, engine unreachable.
    Refused = 3,
    /// Integrity failure: archive corrupt, verification failed.
    Integrity = 4,
    /// The upgrade failed and was rolled back automatically.
    UpgradeRolledBack = 5,
    /// The upgrade failed and the automatic rollback failed too.
    UpgradeRollbackFailed = 6,
    /// Interrupted (Ctrl-C).
    Interrupted = 130,
}

impl From<ExitStatus> for std::process::ExitCode {
    fn from(s: ExitStatus) -> Self {
        std::process::ExitCode::from(s as u8)
    }
}

/// An error the CLI itself raises (bad arguments, missing confirmation).
#[derive(Debug)]
pub(crate) struct UsageError(pub String);

impl std::error::Error for UsageError {}

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

pub(crate) fn status_of(err: &anyhow::Error) -> ExitStatus {
    for cause in err.chain() {
        if cause.downcast_ref::<UsageError>().is_some() {
            return ExitStatus::Usage;
        }
        if let Some(e) = cause.downcast_ref::<Error>() {
            return match e.kind() {
                ErrorKind::Failed => ExitStatus::Failed,
                ErrorKind::Usage => ExitStatus::Usage,
                ErrorKind::Refused => ExitStatus::Refused,
                ErrorKind::Integrity => ExitStatus::Integrity,
                ErrorKind::Interrupted => ExitStatus::Interrupted,
                ErrorKind::UpgradeRolledBack => ExitStatus::UpgradeRolledBack,
                ErrorKind::UpgradeRollbackFailed => ExitStatus::UpgradeRollbackFailed,
                _ => ExitStatus::Failed,
            };
        }
    }
    ExitStatus::Failed
}

/// `error: outer: inner: root`, one line per cause when they differ.
pub(crate) fn render(err: &anyhow::Error) -> String {
    let mut out = format!("{err}");
    for cause in err.chain().skip(1) {
        let s = cause.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
    }
    out
}
