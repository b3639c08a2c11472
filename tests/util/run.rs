//! Running the binary and what it produced.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{BIN, exit};

/// How long one invocation of the binary may take before the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// What one run of the binary produced.
#[derive(Debug, Clone)]
pub struct Output {
    pub args: Vec<OsString>,
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Panics with the whole run (args, code, stdout, stderr) unless the exit code is `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit {code}, got {:?}\n{self}",
            self.code
        );
        self
    }

    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        self.assert_code(exit::OK)
    }

    /// Case-insensitive check that stderr mentions `needle`.
    #[track_caller]
    pub fn assert_stderr_has(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.to_lowercase().contains(&needle.to_lowercase()),
            "stderr should mention {needle:?}\n{self}"
        );
        self
    }

    #[track_caller]
    pub fn assert_stdout_empty(&self) -> &Self {
        assert!(
            self.stdout.is_empty(),
            "stdout must carry data only, and this command has none\n{self}"
        );
        self
    }

    /// Parses stdout as exactly one JSON document (nothing else may be on stdout).
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        match serde_json::from_str(&self.stdout) {
            Ok(v) => v,
            Err(e) => panic!("stdout is not one JSON document: {e}\n{self}"),
        }
    }

    /// The phases a `--progress json` run started, in order.
    pub fn phases(&self) -> Vec<String> {
        self.stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == "phase_start")
            .filter_map(|v| v["phase"].as_str().map(str::to_owned))
            .collect()
    }

    /// Parses stdout into `T` (strict structs: `deny_unknown_fields`).
    #[track_caller]
    pub fn json_as<T: for<'de> Deserialize<'de>>(&self) -> T {
        match serde_json::from_str(&self.stdout) {
            Ok(v) => v,
            Err(e) => panic!(
                "stdout does not match the JSON contract ({}): {e}\n{self}",
                std::any::type_name::<T>()
            ),
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let args: Vec<_> = self.args.iter().map(|a| a.to_string_lossy()).collect();
        writeln!(f, "--- nuwax-cli {}", args.join(" "))?;
        writeln!(f, "--- exit: {:?}", self.code)?;
        writeln!(f, "--- stdout:\n{}", self.stdout)?;
        write!(f, "--- stderr:\n{}", self.stderr)
    }
}

/// Runs the binary with `args` in `cwd`, stdin null, an isolated environment plus `envs`.
pub fn run_bin<I, S>(cwd: &Path, args: I, envs: &[(&str, &OsStr)]) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let mut cmd = Command::new(BIN);
    cmd.args(&args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env_remove("CLICOLOR_FORCE");
    // Test hooks, settings and S3 credentials from the caller's shell must not leak into a run.
    for (key, _) in std::env::vars_os() {
        if key.as_bytes().starts_with(b"NUWAX_") || key.as_bytes().starts_with(b"AWS_") {
            cmd.env_remove(key);
        }
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for nuwax-cli") {
            break Some(s);
        }
        if start.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let output = Output {
        args,
        code: status.and_then(|s| s.code()),
        stdout: String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned(),
    };
    assert!(
        status.is_some(),
        "nuwax-cli did not finish within {RUN_TIMEOUT:?}\n{output}"
    );
    output
}
