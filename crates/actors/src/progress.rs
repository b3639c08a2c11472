//! Typed progress events and the handle that emits them.
//!
//! Sync code (archive build, restore) calls [`Progress`] methods from any thread; events go
//! to a per-request channel that the CLI renders. Byte/entry updates are throttled at the
//! source so a 100k-file archive does not flood the channel; phase changes and notices are
//! always delivered.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Recovering,
    Checking,
    Stopping,
    Scanning,
    Archiving,
    Verifying,
    Extracting,
    Swapping,
    Starting,
    Waiting,
    Uploading,
    Downloading,
    /// A plain archive encrypted into a staged file before it is uploaded.
    Encrypting,
    /// An encrypted copy decrypted into the plain archive after it was downloaded.
    Decrypting,
    /// A rollback removes the replaced files, after the services were started.
    Removing,
    /// A backup copies the members of unchanged files from the previous archive, after the
    /// live tree was read (the services may run again).
    Copying,
}

impl Phase {
    pub fn label(self) -> &'static str {
        match self {
            Phase::Recovering => "recovering",
            Phase::Checking => "checking",
            Phase::Stopping => "stopping services",
            Phase::Scanning => "scanning",
            Phase::Archiving => "archiving",
            Phase::Verifying => "verifying",
            Phase::Extracting => "extracting",
            Phase::Swapping => "swapping",
            Phase::Starting => "starting services",
            Phase::Waiting => "waiting for health",
            Phase::Uploading => "uploading",
            Phase::Downloading => "downloading",
            Phase::Encrypting => "encrypting",
            Phase::Decrypting => "decrypting",
            Phase::Removing => "removing replaced files",
            Phase::Copying => "copying unchanged data",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProgressEvent {
    /// A new phase starts; totals are known when `Some`.
    Phase {
        phase: Phase,
        total_bytes: Option<u64>,
        total_entries: Option<u64>,
    },
    /// Cumulative counters within the current phase.
    Advance {
        bytes: u64,
        entries: u64,
        current: Option<PathBuf>,
    },
    /// Something the operator should read (a warning or a step that happened).
    Notice(String),
    /// One container changed state while services are stopped, started or waited for:
    /// `stopping`, `stopped`, `starting`, `started`, `healthy`, `running`, or why it is not
    /// ready yet (`health: starting`, ...). Always delivered (never throttled).
    Container { name: String, state: String },
}

/// Cheap, cloneable, thread-safe progress handle. `Progress::none()` discards everything.
#[derive(Clone, Default)]
pub struct Progress {
    inner: Option<Arc<Inner>>,
    /// Phases and counters are dropped ([`Progress::states_only`]).
    states_only: bool,
}

struct Inner {
    tx: UnboundedSender<ProgressEvent>,
    start: Instant,
    last_ms: AtomicU64,
}

const THROTTLE_MS: u64 = 100;

impl Progress {
    pub fn none() -> Self {
        Self::default()
    }

    /// A handle that delivers notices and container states but no phases or counters: for
    /// work that runs beside another (a health wait while a backup copies), whose phase is
    /// the one shown.
    pub fn states_only(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            states_only: true,
        }
    }

    pub fn new(tx: UnboundedSender<ProgressEvent>) -> Self {
        Self {
            inner: Some(Arc::new(Inner {
                tx,
                start: Instant::now(),
                last_ms: AtomicU64::new(0),
            })),
            states_only: false,
        }
    }

    pub fn phase(&self, phase: Phase, total_bytes: Option<u64>, total_entries: Option<u64>) {
        if self.states_only {
            return;
        }
        self.send(ProgressEvent::Phase {
            phase,
            total_bytes,
            total_entries,
        });
    }

    /// Cumulative counters; dropped when the previous update was less than 100 ms ago.
    pub fn advance(&self, bytes: u64, entries: u64, current: Option<&std::path::Path>) {
        let Some(inner) = self.inner.as_ref().filter(|_| !self.states_only) else {
            return;
        };
        let now = inner.start.elapsed().as_millis() as u64;
        let last = inner.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < THROTTLE_MS && last != 0 {
            return;
        }
        if inner
            .last_ms
            .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let _ = inner.tx.send(ProgressEvent::Advance {
            bytes,
            entries,
            current: current.map(|p| p.to_path_buf()),
        });
    }

    /// Final counters of a phase: always delivered.
    pub fn finish_phase(&self, bytes: u64, entries: u64) {
        if self.states_only {
            return;
        }
        self.send(ProgressEvent::Advance {
            bytes,
            entries,
            current: None,
        });
    }

    pub fn notice(&self, message: impl Into<String>) {
        let message = message.into();
        tracing::info!("{message}");
        self.send(ProgressEvent::Notice(message));
    }

    /// A container's new state (see [`ProgressEvent::Container`]).
    pub fn container(&self, name: &str, state: impl Into<String>) {
        self.send(ProgressEvent::Container {
            name: name.to_owned(),
            state: state.into(),
        });
    }

    fn send(&self, event: ProgressEvent) {
        if let Some(inner) = &self.inner {
            let _ = inner.tx.send(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_states_only_handle_keeps_the_shown_phase_and_its_counters() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let shown = Progress::new(tx);
        let beside = shown.states_only();
        shown.phase(Phase::Copying, Some(10), None);
        beside.phase(Phase::Waiting, None, Some(1));
        beside.advance(0, 1, None);
        beside.finish_phase(0, 1);
        beside.container("app", "healthy");
        beside.notice("a notice");
        shown.finish_phase(10, 0);
        let mut got = Vec::new();
        while let Ok(e) = rx.try_recv() {
            got.push(e);
        }
        assert_eq!(
            got,
            vec![
                ProgressEvent::Phase {
                    phase: Phase::Copying,
                    total_bytes: Some(10),
                    total_entries: None,
                },
                ProgressEvent::Container {
                    name: "app".into(),
                    state: "healthy".into(),
                },
                ProgressEvent::Notice("a notice".into()),
                ProgressEvent::Advance {
                    bytes: 10,
                    entries: 0,
                    current: None,
                },
            ]
        );
    }
}
