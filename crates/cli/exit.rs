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
    /// Interrupted by SIGINT (Ctrl-C): 128 + 2.
    Interrupted = 130,
    /// Interrupted by SIGHUP (the terminal went away): 128 + 1.
    HungUp = 129,
    /// Interrupted by SIGTERM (`kill`, systemd, docker stop): 128 + 15.
    Terminated = 143,
}

impl ExitStatus {
    /// The exit code of an interruption by `signal` (128 + the signal; SIGINT's when unknown).
    pub(crate) fn interrupted_by(signal: Option<i32>) -> ExitStatus {
        match signal {
            Some(libc::SIGHUP) => ExitStatus::HungUp,
            Some(libc::SIGTERM) => ExitStatus::Terminated,
            _ => ExitStatus::Interrupted,
        }
    }
}

impl ExitStatus {
    /// The `kind` of a failure known only by its exit code (see [`Failure`]).
    pub(crate) fn kind(self) -> &'static str {
        match self {
            ExitStatus::Success => "none",
            ExitStatus::Failed => "failed",
            ExitStatus::Usage => "usage",
            ExitStatus::Refused => "refused",
            ExitStatus::Integrity => "integrity",
            ExitStatus::Interrupted | ExitStatus::HungUp | ExitStatus::Terminated => "interrupted",
            ExitStatus::UpgradeRolledBack => "upgrade_rolled_back",
            ExitStatus::UpgradeRollbackFailed => "upgrade_rollback_failed",
        }
    }
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
            return status_of_error(e);
        }
    }
    ExitStatus::Failed
}

/// The exit code of a library error. An interruption maps to 130 here; `main` turns it into
/// 128 + the signal that actually arrived.
pub(crate) fn status_of_error(e: &Error) -> ExitStatus {
    match e.kind() {
        ErrorKind::Failed => ExitStatus::Failed,
        ErrorKind::Usage => ExitStatus::Usage,
        ErrorKind::Refused => ExitStatus::Refused,
        ErrorKind::Integrity => ExitStatus::Integrity,
        ErrorKind::Interrupted => ExitStatus::Interrupted,
        ErrorKind::UpgradeRolledBack => ExitStatus::UpgradeRolledBack,
        ErrorKind::UpgradeRollbackFailed => ExitStatus::UpgradeRollbackFailed,
        _ => ExitStatus::Failed,
    }
}

/// What a failed command reports: the exit code, a stable `kind` for programs and the
/// message for people. The one source of a `--json` document's `error` object.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub status: ExitStatus,
    /// Stable `snake_case` name (README, "JSON contract"): the library's [`Error::code`],
    /// `usage` for the CLI's own usage errors, else the class of the exit code.
    pub kind: &'static str,
    pub message: String,
}

impl Failure {
    pub(crate) fn new(status: ExitStatus, kind: &'static str, message: impl Into<String>) -> Self {
        Failure {
            status,
            kind,
            message: message.into(),
        }
    }

    /// The failure of a command that returned `err`.
    pub(crate) fn of(err: &anyhow::Error) -> Self {
        let kind = err
            .chain()
            .find_map(|cause| {
                if cause.downcast_ref::<UsageError>().is_some() {
                    Some("usage")
                } else {
                    cause.downcast_ref::<Error>().map(Error::code)
                }
            })
            .unwrap_or("failed");
        Failure::new(status_of(err), kind, render(err))
    }

    /// The failure of a library error a command reports inside its own document.
    pub(crate) fn of_error(e: &Error) -> Self {
        Failure::new(status_of_error(e), e.code(), e.to_string())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interruptions_exit_with_128_plus_the_signal() {
        let code = |s| ExitStatus::interrupted_by(s) as u8;
        assert_eq!(code(Some(libc::SIGINT)), 130);
        assert_eq!(code(Some(libc::SIGTERM)), 143);
        assert_eq!(code(Some(libc::SIGHUP)), 129);
        assert_eq!(code(None), 130);
        assert_eq!(
            status_of_error(&Error::Interrupted),
            ExitStatus::Interrupted
        );
        assert_eq!(
            status_of_error(&Error::NoSpace {
                path: "/x".into(),
                needed: 2,
                available: 1
            }),
            ExitStatus::Refused
        );
    }
}
