//! Renders progress events from the runtime: indicatif bars on a terminal, a line every few
//! seconds otherwise (cron, CI, the GUI), nothing under `--quiet` (errors still print).
#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use nuwax_actors::{Phase, Progress, ProgressEvent};
use tokio::sync::mpsc;

use crate::output::{escape_message, escape_name, human_bytes};

pub(crate) struct Renderer {
    task: tokio::task::JoinHandle<()>,
}

impl Renderer {
    /// Starts a renderer; returns it and the handle to pass to the runtime.
    pub fn start(quiet: bool, terminal: bool) -> (Renderer, Progress) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(render(rx, quiet, terminal));
        (Renderer { task }, Progress::new(tx))
    }

    /// Waits until every event sent so far is rendered (call after dropping the handle).
    pub async fn finish(self, progress: Progress) {
        drop(progress);
        let _ = self.task.await;
    }
}

struct PhaseState {
    phase: Phase,
    total_bytes: Option<u64>,
    total_entries: Option<u64>,
    started: Instant,
    bytes: u64,
    entries: u64,
}

async fn render(mut rx: mpsc::UnboundedReceiver<ProgressEvent>, quiet: bool, terminal: bool) {
    let mut bar: Option<ProgressBar> = None;
    let mut state: Option<PhaseState> = None;
    let mut last_line = Instant::now();
    while let Some(ev) = rx.recv().await {
        if quiet {
            continue;
        }
        match ev {
            ProgressEvent::Phase {
                phase,
                total_bytes,
                total_entries,
            } => {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
                if let Some(s) = state.take()
                    && !terminal
                {
                    eprintln_safe!("{}", summary(&s));
                }
                state = Some(PhaseState {
                    phase,
                    total_bytes,
                    total_entries,
                    started: Instant::now(),
                    bytes: 0,
                    entries: 0,
                });
                if terminal {
                    bar = Some(make_bar(phase, total_bytes));
                } else {
                    eprintln_safe!(
                        "{}...{}",
                        phase.label(),
                        total_bytes
                            .map(|t| format!(" ({})", human_bytes(t)))
                            .unwrap_or_default()
                    );
                    last_line = Instant::now();
                }
            }
            ProgressEvent::Advance {
                bytes,
                entries,
                current,
            } => {
                if let Some(s) = &mut state {
                    s.bytes = bytes;
                    s.entries = entries;
                }
                if let Some(b) = &bar {
                    if b.length().is_some() {
                        b.set_position(bytes);
                    } else {
                        b.set_position(entries);
                    }
                    if let Some(p) = current {
                        b.set_message(escape_name(&p.to_string_lossy()));
                    }
                } else if let Some(s) = &state
                    && last_line.elapsed() >= Duration::from_secs(5)
                {
                    eprintln_safe!("  {}", line(s));
                    last_line = Instant::now();
                }
            }
            ProgressEvent::Notice(msg) => {
                let msg = escape_message(&msg);
                if let Some(b) = &bar {
                    b.suspend(|| eprintln_safe!("{msg}"));
                } else {
                    eprintln_safe!("{msg}");
                }
            }
        }
    }
    if let Some(b) = bar.take() {
        b.finish_and_clear();
    }
    if let Some(s) = state
        && !terminal
        && !quiet
    {
        eprintln_safe!("{}", summary(&s));
    }
}

fn make_bar(phase: Phase, total: Option<u64>) -> ProgressBar {
    let bar = match total {
        Some(t) => ProgressBar::new(t).with_style(
            ProgressStyle::with_template(
                "{prefix:>18} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{prefix:>18} {spinner} {pos} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar.set_prefix(phase.label());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn line(s: &PhaseState) -> String {
    let rate = s.bytes as f64 / s.started.elapsed().as_secs_f64().max(0.001);
    match s.total_bytes {
        Some(t) if t > 0 => format!(
            "{}: {:.0}% {}/{} at {}/s, {} entries",
            s.phase.label(),
            s.bytes as f64 * 100.0 / t as f64,
            human_bytes(s.bytes),
            human_bytes(t),
            human_bytes(rate as u64),
            s.entries
        ),
        _ => format!(
            "{}: {} entries{}",
            s.phase.label(),
            s.entries,
            s.total_entries
                .map(|t| format!(" of {t}"))
                .unwrap_or_default()
        ),
    }
}

fn summary(s: &PhaseState) -> String {
    format!(
        "  {} done in {:.1}s{}",
        s.phase.label(),
        s.started.elapsed().as_secs_f64(),
        if s.bytes > 0 {
            format!(" ({})", human_bytes(s.bytes))
        } else {
            String::new()
        }
    )
}
