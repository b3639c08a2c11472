//! Renders progress events from the runtime (`--progress`): indicatif bars on a terminal, a
//! line every few seconds otherwise (cron, CI), JSON lines for a GUI (`--progress json`),
//! nothing under `--quiet` (errors still print).
//!
//! Rates and ETAs come from [`rate::Estimator`] (recent throughput, nothing until a second of
//! data), never from indicatif's own estimate. Containers being stopped, started or waited
//! for get a line each as their state changes (name, state, time since the phase began). Each phase ends with a summary line: what it did, its elapsed time and throughput.
#![allow(clippy::print_stderr)]

mod json;
mod rate;

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use nuwax_actors::{Phase, Progress, ProgressEvent};
use tokio::sync::mpsc;

pub(crate) use json::{ProgressLine, emit_json, start_clock};
use rate::{Estimator, human_duration, human_eta};

use crate::output::{escape_message, escape_name, human_bytes};
use crate::printer::Printer;

/// `--progress`: how progress is shown on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum ProgressMode {
    /// Bars on a terminal, a line every 5 seconds otherwise.
    #[default]
    Auto,
    /// A line every 5 seconds, also on a terminal.
    Plain,
    /// One JSON object per line (phase, bytes and items done and total, current item): for
    /// a GUI's progress bar. Messages become JSON lines too.
    Json,
    /// No progress (messages and summaries still print).
    None,
}

/// What a renderer writes, resolved from the mode, `--quiet` and the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Quiet,
    Summaries,
    Bar,
    Plain,
    Json,
}

/// What an operation's progress added up to, for its final summary line.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Totals {
    /// From the renderer's start to its end.
    pub elapsed: Duration,
    /// Bytes of the phases that count bytes (archived, extracted, verified).
    pub bytes: u64,
    /// Time spent in those phases.
    pub busy: Duration,
}

impl Totals {
    /// `in 4.1 s, 1.0 GiB at 250 MiB/s` (or `in 4.1 s` when no bytes were counted): the end
    /// of every command's summary line.
    pub(crate) fn suffix(&self) -> String {
        let mut s = format!("in {}", human_duration(self.elapsed));
        if self.bytes > 0 {
            s.push_str(&format!(
                ", {} at {}",
                human_bytes(self.bytes),
                per_second(self.bytes as f64 / self.busy.as_secs_f64().max(0.001), true)
            ));
        }
        s
    }
}

pub(crate) struct Renderer {
    task: tokio::task::JoinHandle<Totals>,
}

impl Renderer {
    /// Starts a renderer as `--progress` and `--quiet` ask; returns it and the handle to pass
    /// to the runtime.
    pub fn start(printer: &Printer) -> (Renderer, Progress) {
        let output = if printer.quiet() {
            Output::Quiet
        } else {
            match printer.progress_mode() {
                ProgressMode::Json => Output::Json,
                ProgressMode::None => Output::Summaries,
                ProgressMode::Plain => Output::Plain,
                ProgressMode::Auto if printer.stderr_is_terminal() => Output::Bar,
                ProgressMode::Auto => Output::Plain,
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(render(rx, output));
        (Renderer { task }, Progress::new(tx))
    }

    /// Waits until every event sent so far is rendered (call after dropping the handle) and
    /// returns the totals for the summary line.
    pub async fn finish(self, progress: Progress) -> Totals {
        drop(progress);
        self.task.await.unwrap_or_default()
    }

    /// Runs `op` with a progress handle while a renderer shows its events; returns its
    /// result and, once every event is rendered, the totals for the summary line.
    pub async fn run<T, Fut>(printer: &Printer, op: impl FnOnce(Progress) -> Fut) -> (T, Totals)
    where
        Fut: std::future::Future<Output = T>,
    {
        let (renderer, progress) = Renderer::start(printer);
        let result = op(progress.clone()).await;
        let totals = renderer.finish(progress).await;
        (result, totals)
    }
}

struct PhaseState {
    phase: Phase,
    total_bytes: Option<u64>,
    total_entries: Option<u64>,
    started: Instant,
    bytes: u64,
    entries: u64,
    estimator: Estimator,
}

impl PhaseState {
    fn new(phase: Phase, total_bytes: Option<u64>, total_entries: Option<u64>) -> Self {
        let mut estimator = Estimator::new();
        estimator.update(json::since_start(), 0);
        PhaseState {
            phase,
            total_bytes,
            total_entries,
            started: Instant::now(),
            bytes: 0,
            entries: 0,
            estimator,
        }
    }

    /// Whether the rate and ETA are in bytes (else in entries).
    fn counts_bytes(&self) -> bool {
        self.total_bytes.is_some() || self.bytes > 0
    }

    /// Counters only go forward: updates from several threads may arrive out of order.
    fn advance(&mut self, bytes: u64, entries: u64) {
        self.bytes = self.bytes.max(bytes);
        self.entries = self.entries.max(entries);
        let done = if self.counts_bytes() {
            self.bytes
        } else {
            self.entries
        };
        self.estimator.update(json::since_start(), done);
    }

    fn rate(&self) -> Option<f64> {
        self.estimator.rate(json::since_start())
    }

    fn eta(&self) -> Option<Duration> {
        let total = if self.counts_bytes() {
            self.total_bytes
        } else {
            self.total_entries
        };
        self.estimator.eta(json::since_start(), total?)
    }

    fn line(&self, event: &'static str, item: Option<String>) -> ProgressLine {
        ProgressLine {
            event,
            phase: Some(self.phase),
            bytes_done: Some(self.bytes),
            bytes_total: self.total_bytes,
            items_done: Some(self.entries),
            items_total: self.total_entries,
            item,
            rate: self.rate().map(|r| (r * 10.0).round() / 10.0),
            eta_ms: self.eta().map(|d| d.as_millis() as u64),
            ..ProgressLine::default()
        }
    }
}

async fn render(mut rx: mpsc::UnboundedReceiver<ProgressEvent>, output: Output) -> Totals {
    let started = Instant::now();
    let mut totals = Totals::default();
    let mut bar: Option<ProgressBar> = None;
    let mut state: Option<PhaseState> = None;
    let mut last_line = Instant::now();
    while let Some(ev) = rx.recv().await {
        match ev {
            ProgressEvent::Phase {
                phase,
                total_bytes,
                total_entries,
            } => {
                if let Some(s) = state.take() {
                    end_phase(&s, output, &mut bar, &mut totals);
                }
                let s = PhaseState::new(phase, total_bytes, total_entries);
                match output {
                    Output::Bar => bar = Some(make_bar(phase, total_bytes, total_entries)),
                    Output::Plain => eprintln_safe!(
                        "{}...{}",
                        phase.label(),
                        total_bytes
                            .map(|t| format!(" ({})", human_bytes(t)))
                            .unwrap_or_default()
                    ),
                    Output::Json => emit_json(s.line("phase_start", None)),
                    Output::Quiet | Output::Summaries => {}
                }
                last_line = Instant::now();
                state = Some(s);
            }
            ProgressEvent::Advance {
                bytes,
                entries,
                current,
            } => {
                let Some(s) = &mut state else { continue };
                s.advance(bytes, entries);
                match output {
                    Output::Bar => {
                        if let Some(b) = &bar {
                            update_bar(b, s, current.as_deref());
                        }
                    }
                    Output::Plain if last_line.elapsed() >= Duration::from_secs(5) => {
                        eprintln_safe!("  {}", line(s));
                        last_line = Instant::now();
                    }
                    Output::Json => emit_json(s.line(
                        "progress",
                        current.map(|p| p.to_string_lossy().into_owned()),
                    )),
                    _ => {}
                }
            }
            // `error: ...` notices (a post hook or a notification that failed without
            // changing the result) are errors: shown under `--quiet` too.
            ProgressEvent::Notice(msg) => match output {
                Output::Quiet if !msg.starts_with("error: ") => {}
                Output::Json => {
                    let (level, text) = if let Some(rest) = msg.strip_prefix("warning: ") {
                        ("warning", rest)
                    } else if let Some(rest) = msg.strip_prefix("error: ") {
                        ("error", rest)
                    } else {
                        ("info", msg.as_str())
                    };
                    emit_json(ProgressLine::message(level, text));
                }
                _ => print_above(&bar, &escape_message(&msg)),
            },
            ProgressEvent::Container { name, state: what } => {
                // Time since the step (stopping, starting, waiting) began.
                let since = state.as_ref().map(|s| s.started.elapsed());
                match output {
                    Output::Quiet => {}
                    Output::Json => emit_json(ProgressLine {
                        event: "container",
                        state: Some(what),
                        ..match &state {
                            Some(s) => s.line("container", Some(name)),
                            None => ProgressLine {
                                item: Some(name),
                                ..ProgressLine::default()
                            },
                        }
                    }),
                    _ => print_above(&bar, &container_line(&name, &what, since)),
                }
            }
        }
    }
    if let Some(s) = state.take() {
        end_phase(&s, output, &mut bar, &mut totals);
    }
    totals.elapsed = started.elapsed();
    totals
}

/// Closes a phase: its bar goes, its summary line (or `phase_end` object) is written, and
/// its bytes count towards the totals.
fn end_phase(s: &PhaseState, output: Output, bar: &mut Option<ProgressBar>, totals: &mut Totals) {
    if let Some(b) = bar.take() {
        b.finish_and_clear();
    }
    let took = s.started.elapsed();
    if s.bytes > 0 {
        totals.bytes += s.bytes;
        totals.busy += took;
    }
    match output {
        Output::Quiet => {}
        Output::Json => {
            let mut line = s.line("phase_end", None);
            let done = if s.counts_bytes() { s.bytes } else { s.entries };
            line.rate = Some((done as f64 / took.as_secs_f64().max(0.001) * 10.0).round() / 10.0);
            line.eta_ms = None;
            emit_json(line);
        }
        _ => eprintln_safe!("{}", summary(s, took)),
    }
}

/// A line above the bar (or a plain line without one).
fn print_above(bar: &Option<ProgressBar>, text: &str) {
    match bar {
        Some(b) => b.suspend(|| eprintln_safe!("{text}")),
        None => eprintln_safe!("{text}"),
    }
}

/// `  nuwax-db-1: stopped (2.1 s)`: the time since the phase began.
fn container_line(name: &str, state: &str, since: Option<Duration>) -> String {
    let mut s = format!("  {}: {}", escape_name(name), escape_name(state));
    if let Some(d) = since {
        s.push_str(&format!(" ({})", human_duration(d)));
    }
    s
}

fn make_bar(phase: Phase, total_bytes: Option<u64>, total_entries: Option<u64>) -> ProgressBar {
    let bar = match (total_bytes, total_entries) {
        (Some(t), _) => ProgressBar::new(t).with_style(
            ProgressStyle::with_template(
                "{prefix:>12} [{bar:20}] {bytes}/{total_bytes} {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        ),
        (None, Some(t)) => ProgressBar::new(t).with_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:20}] {pos}/{len} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        ),
        (None, None) => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{prefix:>12} {spinner} {pos} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar.set_prefix(phase.label());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn update_bar(b: &ProgressBar, s: &PhaseState, current: Option<&std::path::Path>) {
    if s.total_bytes.is_some() {
        b.set_position(s.bytes);
    } else {
        b.set_position(s.entries);
    }
    let mut msg = String::new();
    if let Some(r) = s.rate() {
        msg.push_str(&per_second(r, s.counts_bytes()));
        if let Some(eta) = s.eta() {
            msg.push_str(&format!(" ETA {}", human_eta(eta)));
        }
    }
    if let Some(p) = current {
        if !msg.is_empty() {
            msg.push_str("  ");
        }
        msg.push_str(&escape_name(&p.to_string_lossy()));
    }
    b.set_message(msg);
}

/// `12.3 MiB/s` or `340 entries/s`.
fn per_second(rate: f64, bytes: bool) -> String {
    if bytes {
        format!("{}/s", human_bytes(rate as u64))
    } else {
        format!("{rate:.0} entries/s")
    }
}

/// The periodic line of a non-terminal run.
fn line(s: &PhaseState) -> String {
    let mut out = format!("{}: ", s.phase.label());
    match s.total_bytes {
        Some(t) if t > 0 => out.push_str(&format!(
            "{:.0}% {}/{}",
            s.bytes as f64 * 100.0 / t as f64,
            human_bytes(s.bytes),
            human_bytes(t),
        )),
        _ if s.bytes > 0 => out.push_str(&human_bytes(s.bytes)),
        _ => {}
    }
    if s.counts_bytes() {
        out.push_str(", ");
    }
    out.push_str(&format!("{} entries", s.entries));
    if let (None, Some(t)) = (s.total_bytes, s.total_entries) {
        out.push_str(&format!(" of {t}"));
    }
    if let Some(r) = s.rate() {
        out.push_str(&format!(", {}", per_second(r, s.counts_bytes())));
        if let Some(eta) = s.eta() {
            out.push_str(&format!(", ETA {}", human_eta(eta)));
        }
    }
    out
}

/// `  archiving done: 1.0 GiB, 1234 entries in 3.8 s (270 MiB/s)`: ends with the elapsed
/// time and the throughput.
fn summary(s: &PhaseState, took: Duration) -> String {
    let secs = took.as_secs_f64().max(0.001);
    let what = match (s.bytes, s.entries) {
        (0, 0) => String::new(),
        (0, n) => format!(": {n} {}", unit(s.phase, n)),
        (b, 0) => format!(": {}", human_bytes(b)),
        (b, n) => format!(": {}, {n} entries", human_bytes(b)),
    };
    let rate = if s.bytes > 0 {
        format!(" ({})", per_second(s.bytes as f64 / secs, true))
    } else if s.entries > 0 {
        format!(" ({:.1} {}/s)", s.entries as f64 / secs, unit(s.phase, 2))
    } else {
        String::new()
    };
    format!(
        "  {} done{what} in {}{rate}",
        s.phase.label(),
        human_duration(took)
    )
}

fn unit(phase: Phase, n: u64) -> &'static str {
    match (phase, n) {
        (Phase::Stopping | Phase::Starting | Phase::Waiting, 1) => "container",
        (Phase::Stopping | Phase::Starting | Phase::Waiting, _) => "containers",
        (Phase::Swapping, 1) => "item",
        (Phase::Swapping, _) => "items",
        (_, 1) => "entry",
        _ => "entries",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(p: Phase, bytes: u64, entries: u64) -> PhaseState {
        let mut s = PhaseState::new(p, None, None);
        s.bytes = bytes;
        s.entries = entries;
        s
    }

    #[test]
    fn summaries_end_with_the_elapsed_time_and_the_throughput() {
        let s = phase(Phase::Archiving, 64 << 20, 1200);
        assert_eq!(
            summary(&s, Duration::from_secs(2)),
            "  archiving done: 64.0 MiB, 1200 entries in 2.0 s (32.0 MiB/s)"
        );
        let s = phase(Phase::Stopping, 0, 3);
        assert_eq!(
            summary(&s, Duration::from_millis(1500)),
            "  stopping services done: 3 containers in 1.5 s (2.0 containers/s)"
        );
        let t = Totals {
            elapsed: Duration::from_millis(4100),
            bytes: 1 << 30,
            busy: Duration::from_secs(4),
        };
        assert_eq!(t.suffix(), "in 4.1 s, 1.0 GiB at 256.0 MiB/s");
        assert_eq!(Totals::default().suffix(), "in 0.0 s");
    }

    #[test]
    fn counters_never_go_back_within_a_phase() {
        let mut s = PhaseState::new(Phase::Extracting, Some(100), None);
        s.advance(50, 5);
        s.advance(40, 4);
        assert_eq!((s.bytes, s.entries), (50, 5));
    }

    #[test]
    fn container_lines_name_the_state_and_the_time() {
        assert_eq!(container_line("db", "stopping", None), "  db: stopping");
        assert_eq!(
            container_line("db", "stopping", Some(Duration::ZERO)),
            "  db: stopping (0.0 s)"
        );
        assert_eq!(
            container_line("db\n", "healthy", Some(Duration::from_millis(12_300))),
            "  db\\n: healthy (12 s)"
        );
    }
}
