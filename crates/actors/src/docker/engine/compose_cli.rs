//! The compose CLI fallback: `docker compose up -d` (or `docker-compose`) for the project,
//! used when the containers themselves are gone (after a rollback or an upgrade replaced the
//! compose file) and the engine API has nothing to start.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::error::{Error, Result};

/// Bound on `docker compose up -d` (image pulls included).
pub const COMPOSE_UP_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Runs `docker compose up -d` (or `docker-compose up -d` where the plugin is missing) for the
/// project, in the compose file's directory. The env file is passed only when it exists.
/// Failure carries compose's stderr.
pub async fn compose_up(compose_file: &Path, env_file: Option<&Path>, project: &str) -> Result<()> {
    if !compose_file.is_file() {
        return Err(Error::Refused(format!(
            "compose file {} not found; cannot start the services",
            compose_file.display()
        )));
    }
    let (program, mut args) = compose_command().await?;
    args.push("-f".into());
    args.push(compose_file.as_os_str().to_owned());
    if let Some(env) = env_file {
        if env.is_file() {
            args.push("--env-file".into());
            args.push(env.as_os_str().to_owned());
        } else {
            tracing::debug!(env_file = %env.display(), "env file missing: not passed to compose");
        }
    }
    // --remove-orphans: after a rollback or an upgrade, containers of services the compose
    // file no longer defines belong to the other release; leaving them would start (and wait
    // for) the wrong release's services.
    args.extend([
        "-p".into(),
        project.into(),
        "up".into(),
        "-d".into(),
        "--remove-orphans".into(),
    ]);
    let shown = format!(
        "{program} {}",
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    tracing::info!(command = %shown, "starting services with compose");
    let mut command = tokio::process::Command::new(program);
    command
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = compose_file.parent().filter(|d| !d.as_os_str().is_empty()) {
        command.current_dir(dir);
    }
    let output = match tokio::time::timeout(COMPOSE_UP_TIMEOUT, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(Error::Docker(format!("cannot run `{shown}`: {e}"))),
        Err(_) => {
            return Err(Error::Docker(format!(
                "`{shown}` did not finish within {}s",
                COMPOSE_UP_TIMEOUT.as_secs()
            )));
        }
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        tracing::debug!(output = %stderr, "compose up finished");
        return Ok(());
    }
    let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = tail[tail.len().saturating_sub(20)..].join("\n");
    Err(Error::Docker(format!(
        "`{shown}` failed ({}): {}",
        output.status,
        if tail.is_empty() {
            "no error output"
        } else {
            &tail
        }
    )))
}

/// `docker compose` when the plugin answers, else `docker-compose` when installed.
async fn compose_command() -> Result<(&'static str, Vec<std::ffi::OsString>)> {
    let probe = |program: &'static str, args: &'static [&'static str]| async move {
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        matches!(
            tokio::time::timeout(Duration::from_secs(20), command.status()).await,
            Ok(Ok(status)) if status.success()
        )
    };
    if probe("docker", &["compose", "version"]).await {
        return Ok(("docker", vec!["compose".into()]));
    }
    if probe("docker-compose", &["version"]).await {
        return Ok(("docker-compose", Vec::new()));
    }
    Err(Error::Docker(
        "neither `docker compose` nor `docker-compose` works on this host; install the docker \
         compose plugin"
            .into(),
    ))
}
