//! Host commands run around an operation (`[hooks]`) or to notify (`[notify] command`): the
//! command's form, and the one runner.
//!
//! Design note: a command is either a string, run by `sh -c` (pipes, `&&`, variables work as
//! in a crontab line), or an argv list, run directly (no shell, no quoting). It runs in the
//! working dir with our environment plus `NUWAX_*` variables, in a process group of its own:
//! a timeout or an interruption (Ctrl-C, SIGTERM) kills the whole group (SIGKILL), so a hook
//! that started children leaves none behind. Its stdout and stderr are streamed line by line
//! as progress notices (`<hook>: <line>`; the library never prints), and the last lines are
//! kept for the error message.

use std::collections::VecDeque;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::archive::CancelFlag;
use crate::error::{Error, Result};
use crate::progress::Progress;

/// A command from `config.toml`: `"string"` for `sh -c`, `["argv", ...]` to run directly.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum HookCommand {
    Shell(String),
    Argv(Vec<String>),
}

impl HookCommand {
    /// What is wrong with it, if anything (checked when the config is loaded).
    pub(crate) fn problem(&self) -> Option<&'static str> {
        match self {
            HookCommand::Shell(s) if s.trim().is_empty() => Some("is an empty command"),
            HookCommand::Argv(v) if v.first().is_none_or(|p| p.is_empty()) => {
                Some("is an empty argv list (give the program first)")
            }
            _ => None,
        }
    }

    /// The command as the operator wrote it, for messages.
    pub fn display(&self) -> String {
        match self {
            HookCommand::Shell(s) => s.clone(),
            HookCommand::Argv(v) => v.join(" "),
        }
    }

    fn command(&self) -> tokio::process::Command {
        match self {
            HookCommand::Shell(s) => {
                let mut c = tokio::process::Command::new("/bin/sh");
                c.arg("-c").arg(s);
                c
            }
            HookCommand::Argv(v) => {
                let mut c = tokio::process::Command::new(&v[0]);
                c.args(&v[1..]);
                c
            }
        }
    }
}

/// `[hooks]` in `config.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HooksConfig {
    pub pre_backup: Option<HookCommand>,
    pub post_backup: Option<HookCommand>,
    pub on_failure: Option<HookCommand>,
    pub pre_rollback: Option<HookCommand>,
    pub post_rollback: Option<HookCommand>,
    /// Seconds one hook may run before its process group is killed.
    pub timeout: u64,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            pre_backup: None,
            post_backup: None,
            on_failure: None,
            pre_rollback: None,
            post_rollback: None,
            timeout: 300,
        }
    }
}

impl HooksConfig {
    /// Every configured hook with its key.
    pub(crate) fn all(&self) -> [(&'static str, Option<&HookCommand>); 5] {
        [
            ("pre_backup", self.pre_backup.as_ref()),
            ("post_backup", self.post_backup.as_ref()),
            ("on_failure", self.on_failure.as_ref()),
            ("pre_rollback", self.pre_rollback.as_ref()),
            ("post_rollback", self.post_rollback.as_ref()),
        ]
    }
}

/// One run of a command.
pub(crate) struct HookRun<'a> {
    /// `pre_backup`, `notify command`...: prefixes its output lines and names it in errors.
    pub name: &'a str,
    pub command: &'a HookCommand,
    pub env: &'a [(String, String)],
    /// Written to its stdin (then closed); `None`: stdin is /dev/null.
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
    pub cwd: &'a Path,
}

/// Lines of output kept for the error message.
const TAIL_LINES: usize = 10;

/// Runs the command to its end. `Err(Error::Hook)` when it cannot start, exits non-zero,
/// dies of a signal or times out (its process group killed); `Err(Error::Interrupted)` when
/// `cancel` is set meanwhile (its process group killed too).
pub(crate) async fn run(hook: HookRun<'_>, cancel: &CancelFlag, progress: &Progress) -> Result<()> {
    let what = format!("{} hook `{}`", hook.name, hook.command.display());
    let mut cmd = hook.command.command();
    cmd.current_dir(hook.cwd)
        .envs(hook.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(if hook.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Hook(format!("{what} could not be started: {e}")))?;
    let pgid = child.id();
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(forward(
            out,
            hook.name.to_owned(),
            tail.clone(),
            progress.clone(),
        )));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(forward(
            err,
            hook.name.to_owned(),
            tail.clone(),
            progress.clone(),
        )));
    }
    if let (Some(bytes), Some(mut stdin)) = (hook.stdin, child.stdin.take()) {
        // A command that does not read its stdin is fine: a broken pipe is not its failure.
        tokio::spawn(async move {
            let _ = stdin.write_all(&bytes).await;
        });
    }
    let ended = tokio::select! {
        status = child.wait() => Ok(status),
        slept = cancel.sleep(hook.timeout) => Err(slept.is_err()),
    };
    let status = match ended {
        Ok(status) => {
            status.map_err(|e| Error::Hook(format!("{what}: cannot wait for it: {e}")))?
        }
        Err(interrupted) => {
            kill_group(pgid);
            let _ = child.wait().await;
            finish_readers(readers).await;
            if interrupted {
                progress.notice(format!("{} was killed: interrupted", hook.name));
                return Err(Error::Interrupted);
            }
            return Err(Error::Hook(format!(
                "{what} timed out after {} s and was killed (with its process group){}",
                hook.timeout.as_secs(),
                tail_text(&tail)
            )));
        }
    };
    finish_readers(readers).await;
    if status.success() {
        return Ok(());
    }
    let how = match (
        status.code(),
        std::os::unix::process::ExitStatusExt::signal(&status),
    ) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        (None, None) => "failed".to_owned(),
    };
    Err(Error::Hook(format!("{what} {how}{}", tail_text(&tail))))
}

/// Streams one pipe as notices, keeping the last lines.
async fn forward(
    pipe: impl tokio::io::AsyncRead + Unpin,
    name: String,
    tail: Arc<Mutex<VecDeque<String>>>,
    progress: Progress,
) {
    let mut lines = tokio::io::BufReader::new(pipe).split(b'\n');
    while let Ok(Some(raw)) = lines.next_segment().await {
        let line = String::from_utf8_lossy(&raw)
            .trim_end_matches('\r')
            .to_owned();
        progress.notice(format!("{name}: {line}"));
        if let Ok(mut t) = tail.lock() {
            if t.len() == TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line);
        }
    }
}

/// Waits a moment for the output still in the pipes; a child the hook left running in the
/// background may hold them open forever, so reading stops after a second.
async fn finish_readers(readers: Vec<tokio::task::JoinHandle<()>>) {
    for r in readers {
        let abort = r.abort_handle();
        if tokio::time::timeout(Duration::from_secs(1), r)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

fn tail_text(tail: &Mutex<VecDeque<String>>) -> String {
    let lines: Vec<String> = tail
        .lock()
        .map(|t| t.iter().cloned().collect())
        .unwrap_or_default();
    if lines.is_empty() {
        String::new()
    } else {
        format!("; its last output:\n  {}", lines.join("\n  "))
    }
}

/// SIGKILL to the hook's process group (its pid: it leads the group it was started in).
#[allow(unsafe_code)]
fn kill_group(pgid: Option<u32>) {
    if let Some(pgid) = pgid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 0) {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is shared.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_it(command: HookCommand, timeout: Duration) -> (Result<()>, Vec<String>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let dir = tempfile::tempdir().unwrap();
        let env = vec![("NUWAX_OPERATION".to_owned(), "backup".to_owned())];
        let result = rt.block_on(run(
            HookRun {
                name: "pre_backup",
                command: &command,
                env: &env,
                stdin: Some(b"payload".to_vec()),
                timeout,
                cwd: dir.path(),
            },
            &CancelFlag::default(),
            &Progress::new(tx),
        ));
        let mut notices = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            if let crate::progress::ProgressEvent::Notice(n) = ev {
                notices.push(n);
            }
        }
        (result, notices)
    }

    #[test]
    fn output_is_streamed_and_the_environment_given() {
        let (r, notices) = run_it(
            HookCommand::Shell("echo op=$NUWAX_OPERATION; cat; echo; echo err >&2".into()),
            Duration::from_secs(30),
        );
        r.unwrap();
        assert!(
            notices.contains(&"pre_backup: op=backup".to_owned()),
            "{notices:?}"
        );
        assert!(
            notices.contains(&"pre_backup: payload".to_owned()),
            "{notices:?}"
        );
        assert!(
            notices.contains(&"pre_backup: err".to_owned()),
            "{notices:?}"
        );
    }

    #[test]
    fn a_failure_names_the_hook_its_status_and_its_last_output() {
        let (r, _) = run_it(
            HookCommand::Argv(vec![
                "sh".into(),
                "-c".into(),
                "echo why >&2; exit 7".into(),
            ]),
            Duration::from_secs(30),
        );
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("pre_backup hook `sh -c echo why >&2; exit 7` exited with status 7"),
            "{e}"
        );
        assert!(e.contains("why"), "{e}");
        let (r, _) = run_it(
            HookCommand::Argv(vec!["/nonexistent/x".into()]),
            Duration::from_secs(5),
        );
        assert!(r.unwrap_err().to_string().contains("could not be started"));
    }

    #[test]
    fn a_timeout_kills_the_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("child-survived");
        // The background child would write the marker after 2 s unless its group is killed.
        let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let (r, _) = run_it(HookCommand::Shell(script), Duration::from_millis(300));
        let e = r.unwrap_err().to_string();
        assert!(e.contains("timed out after"), "{e}");
        std::thread::sleep(Duration::from_secs(3));
        assert!(!marker.exists(), "the hook's child was not killed");
    }
}
