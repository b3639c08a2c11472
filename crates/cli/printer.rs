//! The only place that writes to stdout and stderr.
//!
//! stdout carries data only (tables, JSON); messages, warnings, progress and prompts go to
//! stderr. `--quiet` silences everything on stderr except errors. A closed stdout (`| head`)
//! ends the process with exit 0, as ripgrep does.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use nuwax_actors::CancelFlag;
use serde::Serialize;

use crate::exit::{ExitStatus, Failure};
use crate::output::{Document, escape_message};
use crate::progress::{ProgressLine, ProgressMode};

/// Whether text written to a stream may carry ANSI colour: only when that stream is a terminal
/// and `NO_COLOR` is unset or empty (<https://no-color.org>). Everything that could colour its
/// output (clap's messages, the `-v` log lines, progress bars) asks this one function.
pub(crate) fn color_allowed(stream_is_terminal: bool) -> bool {
    stream_is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// [`color_allowed`] for stderr.
pub(crate) fn stderr_color() -> bool {
    color_allowed(std::io::stderr().is_terminal())
}

/// [`color_allowed`] for stdout.
pub(crate) fn stdout_color() -> bool {
    color_allowed(std::io::stdout().is_terminal())
}

pub(crate) struct Printer {
    quiet: bool,
    stderr_tty: bool,
    progress: ProgressMode,
    /// Which signal interrupted the run: an interruption's exit code is 128 + that signal.
    cancel: CancelFlag,
    /// Whether a `--json` document was printed: a command prints exactly one.
    document_printed: AtomicBool,
}

impl Printer {
    pub fn new(quiet: bool, progress: ProgressMode, cancel: CancelFlag) -> Self {
        Self {
            quiet,
            stderr_tty: std::io::stderr().is_terminal(),
            progress,
            cancel,
            document_printed: AtomicBool::new(false),
        }
    }

    pub fn quiet(&self) -> bool {
        self.quiet
    }

    pub fn stderr_is_terminal(&self) -> bool {
        self.stderr_tty
    }

    /// How progress is shown (`--progress`).
    pub fn progress_mode(&self) -> ProgressMode {
        self.progress
    }

    /// The exit code `status` ends the process with: an interruption's is 128 + the signal
    /// that arrived (SIGINT's when none is known).
    pub fn exit_status(&self, status: ExitStatus) -> ExitStatus {
        if status == ExitStatus::Interrupted {
            ExitStatus::interrupted_by(self.cancel.signal())
        } else {
            status
        }
    }

    /// Data on stdout.
    pub fn data(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        let r = out.write_all(text.as_bytes()).and_then(|_| out.flush());
        if let Err(e) = r {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln_safe!("error: cannot write to stdout: {e}");
            std::process::exit(1);
        }
    }

    /// The command's one `--json` document on stdout: `body`'s fields inside the envelope
    /// (`schema_version`, `success`, `error`); `failure` is `None` on success.
    pub fn document<T: Serialize>(&self, body: &T, failure: Option<&Failure>) {
        let code = failure.map_or(0, |f| self.exit_status(f.status) as u8);
        self.document_printed.store(true, Ordering::SeqCst);
        match serde_json::to_string_pretty(&Document::new(body, failure, code)) {
            Ok(s) => self.data(&format!("{s}\n")),
            Err(e) => self.error(&format!("cannot encode JSON: {e}")),
        }
    }

    /// Whether [`Printer::document`] was called.
    pub fn document_printed(&self) -> bool {
        self.document_printed.load(Ordering::SeqCst)
    }

    /// A status line on stderr.
    pub fn info(&self, msg: &str) {
        if !self.quiet {
            self.message("info", "", msg);
        }
    }

    pub fn warn(&self, msg: &str) {
        if !self.quiet {
            self.message("warning", "warning: ", msg);
        }
    }

    pub fn error(&self, msg: &str) {
        self.message("error", "error: ", msg);
    }

    /// A message on stderr: a line of text, or with `--progress json` one JSON line
    /// (`"event": "message"`) carrying the exact text.
    fn message(&self, level: &'static str, prefix: &str, msg: &str) {
        if self.progress == ProgressMode::Json {
            crate::progress::emit_json(ProgressLine::message(level, msg));
        } else {
            eprintln_safe!("{prefix}{}", escape_message(msg));
        }
    }

    /// A prompt on stderr (no newline).
    pub fn prompt(&self, msg: &str) {
        eprint_safe!("{msg}");
        let _ = std::io::stderr().flush();
    }
}
