//! `--progress json`: one JSON object per line on stderr (README, "Progress as JSON lines").
//!
//! Every line has the same keys (null where they do not apply), so a GUI can read each line
//! into one type. `elapsed_ms` is taken under the stderr lock as the line is written, so it
//! never goes back from one line to the next.

use std::io::Write;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nuwax_actors::Phase;
use serde::Serialize;

#[derive(Debug, Default, Serialize)]
pub(crate) struct ProgressLine {
    /// `phase_start`, `progress`, `phase_end`, `container` or `message`.
    pub event: &'static str,
    /// The current phase (`scanning`, `archiving`, `extracting`, `stopping`...).
    pub phase: Option<Phase>,
    pub bytes_done: Option<u64>,
    /// Null when the phase does not know its size.
    pub bytes_total: Option<u64>,
    /// Entries (files, directories...) or containers done.
    pub items_done: Option<u64>,
    pub items_total: Option<u64>,
    /// The current path (in the archive or the compose dir) or container name.
    pub item: Option<String>,
    /// Milliseconds since the command started.
    pub elapsed_ms: u64,
    /// Recent throughput (bytes per second, or items when the phase counts no bytes); null
    /// until there is enough data.
    pub rate: Option<f64>,
    /// Estimated milliseconds left; null until there is enough data or when unknown.
    pub eta_ms: Option<u64>,
    /// `container` events: `stopping`, `stopped`, `starting`, `started`, `healthy`, `running`,
    /// `failed`, or why it is not ready yet (`health: starting`...).
    pub state: Option<String>,
    /// `message` events: `info`, `warning` or `error`.
    pub level: Option<&'static str>,
    /// `message` events: the text people would read.
    pub message: Option<String>,
}

impl ProgressLine {
    pub(crate) fn message(level: &'static str, message: &str) -> Self {
        ProgressLine {
            event: "message",
            level: Some(level),
            message: Some(message.to_owned()),
            ..ProgressLine::default()
        }
    }
}

static START: OnceLock<Instant> = OnceLock::new();

/// Starts the command's clock (main calls it first; any later call is a no-op).
pub(crate) fn start_clock() {
    START.get_or_init(Instant::now);
}

/// Time since [`start_clock`].
pub(crate) fn since_start() -> Duration {
    START.get_or_init(Instant::now).elapsed()
}

/// Writes `line` as one line on stderr, stamped with `elapsed_ms`. Errors writing stderr are
/// ignored (a GUI that went away must not turn a clean run into a failure).
pub(crate) fn emit_json(mut line: ProgressLine) {
    let mut err = std::io::stderr().lock();
    line.elapsed_ms = since_start().as_millis() as u64;
    if let Ok(mut s) = serde_json::to_string(&line) {
        s.push('\n');
        let _ = err.write_all(s.as_bytes());
        let _ = err.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_has_every_key() {
        let v = serde_json::to_value(ProgressLine::message("warning", "disk almost full")).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "bytes_done",
                "bytes_total",
                "elapsed_ms",
                "eta_ms",
                "event",
                "item",
                "items_done",
                "items_total",
                "level",
                "message",
                "phase",
                "rate",
                "state"
            ]
        );
        let phase = ProgressLine {
            event: "phase_start",
            phase: Some(Phase::Archiving),
            ..ProgressLine::default()
        };
        assert_eq!(serde_json::to_value(phase).unwrap()["phase"], "archiving");
    }
}
