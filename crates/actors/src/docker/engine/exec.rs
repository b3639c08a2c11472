//! Running a command inside a container through the engine's exec API: its stdout streamed
//! into a file (a database dump), or a file streamed into its stdin (`restore-dump`), or
//! only kept as a tail (a drill's check). The
//! command's stderr is kept (its tail, for the error message), its exit status comes from
//! inspecting the exec afterwards. Credentials travel in the exec's environment, never on
//! its command line.

use std::path::PathBuf;
use std::time::Duration;

use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{API_TIMEOUT, Engine, describe};
use crate::archive::CancelFlag;
use crate::dumps::{ExecCommand, STDERR_TAIL};
use crate::error::{Error, IoContext, Result};

/// One command to run in a running container.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// Container id or name.
    pub container: String,
    /// For messages: `container (service db)`.
    pub label: String,
    pub command: ExecCommand,
    /// The whole exec, streaming included, must end within this.
    pub timeout: Duration,
}

/// How an exec ended.
#[derive(Debug, Clone)]
pub struct ExecOutcome {
    /// `None` when the engine did not report one.
    pub exit_code: Option<i64>,
    /// The last bytes of stderr (up to [`STDERR_TAIL`]).
    pub stderr_tail: Vec<u8>,
    /// Bytes of stdout.
    pub stdout_bytes: u64,
    /// SHA-256 of stdout (lowercase hex).
    pub stdout_sha256: String,
    /// The last bytes of stdout (up to [`STDERR_TAIL`]), to check a trailer.
    pub stdout_tail: Vec<u8>,
    /// Why feeding stdin stopped early, if it did (the process closed it).
    pub stdin_error: Option<String>,
}

/// Where stdout goes and what stdin is.
pub enum ExecIo {
    /// stdout into this file (created new, mode 0600), no stdin.
    StdoutTo(PathBuf),
    /// This file into stdin (then closed), stdout kept only as a tail.
    StdinFrom(PathBuf),
    /// No stdin; stdout kept only as a tail (a drill's check).
    Capture,
}

/// Keeps the last `STDERR_TAIL` bytes written.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
        if self.0.len() > 2 * STDERR_TAIL {
            let cut = self.0.len() - STDERR_TAIL;
            self.0.drain(..cut);
        }
    }

    fn into_vec(mut self) -> Vec<u8> {
        let cut = self.0.len().saturating_sub(STDERR_TAIL);
        self.0.drain(..cut);
        self.0
    }
}

impl Engine {
    /// The container's environment (`KEY=value`), where the dump finds its credentials.
    pub async fn container_env(&self, container: &str) -> Result<Vec<String>> {
        let response = self
            .call(
                || format!("cannot inspect container {container}"),
                API_TIMEOUT,
                self.docker.inspect_container(container, None),
            )
            .await?;
        Ok(response.config.and_then(|c| c.env).unwrap_or_default())
    }

    /// Runs `req` with `io`; ends with `Error::Interrupted` as soon as `cancel` is set (the
    /// connection is dropped) and with an error when `req.timeout` passes. A non-zero exit
    /// status is not an error here: the caller judges the outcome.
    pub async fn exec(
        &self,
        req: &ExecRequest,
        io: ExecIo,
        cancel: &CancelFlag,
    ) -> Result<ExecOutcome> {
        let what = format!("`{}` in {}", req.command.cmd.join(" "), req.label);
        let env: Vec<String> = req
            .command
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let stdin = matches!(io, ExecIo::StdinFrom(_));
        let options = CreateExecOptions {
            attach_stdin: Some(stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            env: Some(env),
            cmd: Some(req.command.cmd.clone()),
            ..Default::default()
        };
        let created = self
            .call(
                || format!("cannot create exec {what}"),
                API_TIMEOUT,
                self.docker.create_exec(&req.container, options),
            )
            .await?;
        let run = self.stream(&created.id, io, &what);
        let mut outcome = tokio::select! {
            r = tokio::time::timeout(req.timeout, run) => match r {
                Ok(r) => r?,
                Err(_) => {
                    return Err(Error::Docker(format!(
                        "{what} did not finish within {}s (raise its `timeout` in config.toml)",
                        req.timeout.as_secs()
                    )));
                }
            },
            r = cancel.sleep(Duration::from_secs(365 * 24 * 3600)) => {
                r?;
                return Err(Error::Interrupted);
            }
        };
        // The stream ends when the process closes its output; the engine may take a moment
        // to record the exit code.
        for _ in 0..50 {
            let inspected = self
                .call(
                    || format!("cannot inspect exec {what}"),
                    API_TIMEOUT,
                    self.docker.inspect_exec(&created.id),
                )
                .await?;
            if inspected.running != Some(true) {
                outcome.exit_code = inspected.exit_code;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(outcome)
    }

    async fn stream(&self, exec_id: &str, io: ExecIo, what: &str) -> Result<ExecOutcome> {
        let started = self
            .docker
            .start_exec(
                exec_id,
                Some(StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: Some(1 << 20),
                }),
            )
            .await
            .map_err(|e| Error::Docker(format!("cannot start {what}: {}", describe(&e))))?;
        let StartExecResults::Attached {
            mut output,
            mut input,
        } = started
        else {
            return Err(Error::Docker(format!("{what}: the engine did not attach")));
        };
        let mut sink = match &io {
            ExecIo::StdoutTo(path) => Some((
                tokio::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .await
                    .ctx("cannot create dump file", path)?,
                path.clone(),
            )),
            ExecIo::StdinFrom(_) | ExecIo::Capture => None,
        };
        // stdin is fed concurrently with reading the output: a client that answers while it
        // reads would otherwise block on a full pipe.
        let feed = async {
            if let ExecIo::StdinFrom(path) = &io {
                let mut file = tokio::fs::File::open(path)
                    .await
                    .ctx("cannot open dump file", path)?;
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = file
                        .read(&mut buf)
                        .await
                        .ctx("cannot read dump file", path)?;
                    if n == 0 {
                        break;
                    }
                    input.write_all(&buf[..n]).await.map_err(|e| {
                        Error::Docker(format!("{what}: writing to its stdin failed: {e}"))
                    })?;
                }
                input.flush().await.ok();
            }
            // Closing our side is the end of input for the process.
            input.shutdown().await.ok();
            Ok::<(), Error>(())
        };
        let drain = async {
            let mut hasher = Sha256::new();
            let (mut bytes, mut stderr, mut stdout_tail) = (0u64, Tail::default(), Tail::default());
            while let Some(item) = output.next().await {
                let item = item.map_err(|e| {
                    Error::Docker(format!(
                        "{what}: reading its output failed: {}",
                        describe(&e)
                    ))
                })?;
                match item {
                    bollard::container::LogOutput::StdOut { message } => {
                        bytes += message.len() as u64;
                        hasher.update(&message);
                        stdout_tail.push(&message);
                        if let Some((file, path)) = &mut sink {
                            file.write_all(&message)
                                .await
                                .ctx("cannot write dump file", path.as_path())?;
                        }
                    }
                    bollard::container::LogOutput::StdErr { message } => stderr.push(&message),
                    _ => {}
                }
            }
            if let Some((file, path)) = &mut sink {
                file.flush()
                    .await
                    .ctx("cannot write dump file", path.as_path())?;
                file.sync_all()
                    .await
                    .ctx("cannot sync dump file", path.as_path())?;
            }
            Ok::<_, Error>(ExecOutcome {
                exit_code: None,
                stderr_tail: stderr.into_vec(),
                stdout_bytes: bytes,
                stdout_sha256: hex::encode(hasher.finalize()),
                stdout_tail: stdout_tail.into_vec(),
                stdin_error: None,
            })
        };
        let (fed, drained) = tokio::join!(feed, drain);
        let mut outcome = drained?;
        // A process that exits early (bad credentials) closes its stdin: its stderr says why,
        // which the caller shows next to this.
        outcome.stdin_error = fed.err().map(|e| e.to_string());
        Ok(outcome)
    }
}
