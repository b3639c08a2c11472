//! The only place that writes to stdout and stderr.
//!
//! stdout carries data only (tables, JSON); messages, warnings, progress and prompts go to
//! stderr. `--quiet` silences everything on stderr except errors. A closed stdout (`| head`)
//! ends the process with exit 0, as ripgrep does.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{IsTerminal, Write};

use serde::Serialize;

use crate::output::escape_message;

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
}

impl Printer {
    pub fn new(quiet: bool) -> Self {
        Self {
            quiet,
            stderr_tty: std::io::stderr().is_terminal(),
        }
    }

    pub fn quiet(&self) -> bool {
        self.quiet
    }

    pub fn stderr_is_terminal(&self) -> bool {
        self.stderr_tty
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

    /// One JSON document on stdout.
    pub fn json<T: Serialize>(&self, value: &T) {
        match serde_json::to_string_pretty(value) {
            Ok(s) => self.data(&format!("{s}\n")),
            Err(e) => self.error(&format!("cannot encode JSON: {e}")),
        }
    }

    /// The `{"success": false, "error": ...}` document for a failed `--json` command.
    pub fn json_error(&self, err: &anyhow::Error) {
        self.json(&crate::output::ErrorDocument::new(&crate::exit::render(
            err,
        )));
    }

    /// A status line on stderr.
    pub fn info(&self, msg: &str) {
        if !self.quiet {
            eprintln_safe!("{}", escape_message(msg));
        }
    }

    pub fn warn(&self, msg: &str) {
        if !self.quiet {
            eprintln_safe!("warning: {}", escape_message(msg));
        }
    }

    pub fn error(&self, msg: &str) {
        eprintln_safe!("error: {}", escape_message(msg));
    }

    /// A prompt on stderr (no newline).
    pub fn prompt(&self, msg: &str) {
        eprint_safe!("{msg}");
        let _ = std::io::stderr().flush();
    }
}
