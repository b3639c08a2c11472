//! `auto-backup run|status`: the cron-safe backup.
//!
//! `run` checks the storage dir and free space, stops what runs, backs up (type Auto), and
//! starts exactly what ran, also when the backup fails, when it is interrupted (Ctrl-C,
//! SIGTERM, SIGHUP: started again by this process before it exits) or when the tool was
//! killed (the next invocation restarts them). It exits with the code `backup` would (3 for
//! no space, 1 for a failed backup, 128 + the signal when interrupted); `--json` failures
//! carry `error`. With `--quiet` it prints nothing on success, so cron mails only failures.

use nuwax_actors::{BackupStatus, Runtime};
use serde::Serialize;

use crate::exit::{ExitStatus, Failure};
use crate::output::BackupJson;
use crate::printer::Printer;
use crate::progress::Renderer;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum Action {
    /// Stop the services, back up, start exactly what was running (--hot: stop nothing; take
    /// the database dumps and archive everything else, see `backup --hot`; --drill: then drill
    /// the new backup).
    Run(RunFlags),
    /// Last run, result, backup id, archive, and a cron line to paste.
    Status(StatusFlags),
}

#[derive(clap::Args, Debug)]
pub(crate) struct Flags {
    /// Print one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct StatusFlags {
    /// Print one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
    /// Exit 1 when the last successful backup (of any type, its archive here or on the
    /// remote) is older than this, or there is none: for cron, Nagios or a healthcheck.
    /// `26h`, `90m`, `2d`, `1h30m`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub max_age: Option<std::time::Duration>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct RunFlags {
    #[command(flatten)]
    pub flags: Flags,
    /// Keep the services running: the `[[backup.dumps]]` are the databases' copy and their
    /// `hot_exclude` datadirs are left out (refused while a running service has neither a
    /// dump nor a place in `[backup] hot_safe`).
    #[arg(long)]
    pub hot: bool,
    /// Then drill the new backup (after the services run again): bring it up beside the live
    /// stack, wait for health, run the [[drill.checks]]. A failed drill fails the run (exit 1).
    #[arg(long)]
    pub drill: bool,
}

impl Action {
    pub fn json(&self) -> bool {
        match self {
            Action::Run(f) => f.flags.json,
            Action::Status(f) => f.json,
        }
    }
}

/// `auto-backup run --json`.
#[derive(Serialize)]
struct RunDocument {
    backup: Option<BackupJson>,
    /// Containers stopped for the backup and started again.
    stopped: Vec<String>,
    backup_error: Option<String>,
    restart_error: Option<String>,
    /// With `--drill`: the drill of the new backup (as `drill --json` prints it); null
    /// without `--drill` or when no backup was made.
    drill: Option<crate::output::DrillJson>,
}

/// `auto-backup status --json`.
#[derive(Serialize)]
struct StatusDocument {
    /// RFC 3339 UTC start of the last run; null if it never ran.
    last_run: Option<String>,
    /// `success` or `failed`.
    last_result: Option<String>,
    last_backup_id: Option<i64>,
    last_archive: Option<String>,
    last_error: Option<String>,
    /// A crontab line that runs it nightly at 02:00.
    cron_line: String,
    /// The newest Completed backup of any type whose archive is here or on the remote.
    last_success_id: Option<i64>,
    /// Its creation time, UTC `YYYY-MM-DD HH:MM:SS`.
    last_success_at: Option<String>,
    /// Its age in seconds.
    last_success_age_seconds: Option<u64>,
    /// `--max-age` in seconds; null without it.
    max_age_seconds: Option<u64>,
    /// With `--max-age`: the last success is older, or there is none (exit 1). Null without.
    stale: Option<bool>,
}

pub(crate) async fn run(args: Args, rt: &Runtime, printer: &Printer) -> anyhow::Result<ExitStatus> {
    match args.action {
        Action::Run(f) => run_backup(rt, printer, f.flags.json, f.hot, f.drill).await,
        Action::Status(f) => status(rt, printer, f).await,
    }
}

async fn run_backup(
    rt: &Runtime,
    printer: &Printer,
    json: bool,
    hot: bool,
    drill: bool,
) -> anyhow::Result<ExitStatus> {
    let (renderer, progress) = Renderer::start(printer);
    let result = if hot {
        rt.auto_backup_hot(progress.clone(), drill).await
    } else {
        rt.auto_backup(progress.clone(), drill).await
    };
    let totals = renderer.finish(progress).await;
    let report = result?;
    if let Some(b) = &report.backup {
        printer.info(&format!(
            "auto backup {} created: {} {}",
            b.record.id,
            b.record.file_path.display(),
            totals.suffix()
        ));
    }
    if !report.stopped.is_empty() && report.restart_error.is_none() {
        printer.info(&format!("restarted: {}", report.stopped.join(", ")));
    }
    if let Some(e) = &report.backup_error {
        printer.error(&format!(
            "auto backup failed: {e}{}",
            if report.stopped.is_empty() || report.restart_error.is_some() {
                String::new()
            } else {
                "\nthe services that were running have been started again".into()
            }
        ));
    }
    if let Some(e) = &report.restart_error {
        printer.error(&format!(
            "starting the services again failed: {e}\nthey were running before the backup; start them with: nuwax-cli -C {} docker-service start",
            rt.settings().paths.work_dir.display()
        ));
    }
    if let Some(d) = &report.drill {
        super::drill::print_outcome(printer, d);
    } else if let Some(e) = &report.drill_error {
        printer.error(&format!("drill of the new backup could not run: {e}"));
    }
    let push_error = match (&report.backup, report.ok()) {
        (Some(b), true) => super::remote::after_backup(rt, printer, b.record.id).await,
        _ => None,
    };
    if json {
        // Everything that went wrong in one message; the kind and exit code of the error
        // that decides the exit code.
        let failure = push_error.clone().or_else(|| {
            report.error().map(|e| Failure {
                message: report.error_text(),
                ..Failure::of_error(e)
            })
        });
        printer.document(
            &RunDocument {
                backup: report.backup.as_ref().map(BackupJson::from),
                stopped: report.stopped.clone(),
                backup_error: report.backup_error.as_ref().map(ToString::to_string),
                restart_error: report.restart_error.as_ref().map(ToString::to_string),
                drill: report.drill.as_ref().map(crate::output::DrillJson::from),
            },
            failure.as_ref(),
        );
    }
    if let Some(f) = push_error {
        return Ok(f.status);
    }
    // The exit code of the error itself: 3 for no space, 130/143/129 when interrupted, as
    // `backup` would exit.
    Ok(report
        .error()
        .map_or(ExitStatus::Success, crate::exit::status_of_error))
}

async fn status(rt: &Runtime, printer: &Printer, flags: StatusFlags) -> anyhow::Result<ExitStatus> {
    let json = flags.json;
    let st = rt.auto_backup_status().await?;
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "nuwax-cli".into());
    let cron_line = format!(
        "0 2 * * * {exe} -C {} auto-backup run --quiet",
        shell_quote(&rt.settings().paths.work_dir.display().to_string())
    );
    // The newest backup that is a way back: Completed, its archive here or remote.
    let last_success = rt
        .list_backups()
        .await?
        .into_iter()
        .filter(|b| b.record.status == BackupStatus::Completed && (b.file_exists || b.remote_copy))
        .max_by_key(|b| (b.record.created_at, b.record.id));
    let age = last_success.as_ref().map(|b| {
        (chrono::Utc::now() - b.record.created_at)
            .to_std()
            .unwrap_or_default()
    });
    let stale = flags.max_age.map(|max| age.is_none_or(|a| a > max));
    let failure = match (stale, flags.max_age) {
        (Some(true), Some(max)) => Some(Failure::new(
            ExitStatus::Failed,
            "stale_backup",
            match (&last_success, age) {
                (Some(b), Some(age)) => format!(
                    "the last successful backup ({}, {} UTC) is {} old, more than --max-age {}",
                    b.record.id,
                    b.record.created_at.format("%Y-%m-%d %H:%M:%S"),
                    human_age(age),
                    human_age(max)
                ),
                _ => format!(
                    "there is no successful backup (--max-age {}): take one with `nuwax-cli backup` or `nuwax-cli auto-backup run`",
                    human_age(max)
                ),
            },
        )),
        _ => None,
    };
    let status = failure.as_ref().map_or(ExitStatus::Success, |f| f.status);
    if json {
        printer.document(
            &StatusDocument {
                last_run: st.last_run,
                last_result: st.last_result,
                last_backup_id: st.last_backup_id,
                last_archive: st.last_archive,
                last_error: st.last_error,
                cron_line,
                last_success_id: last_success.as_ref().map(|b| b.record.id),
                last_success_at: last_success
                    .as_ref()
                    .map(|b| b.record.created_at.format("%Y-%m-%d %H:%M:%S").to_string()),
                last_success_age_seconds: age.map(|a| a.as_secs()),
                max_age_seconds: flags.max_age.map(|m| m.as_secs()),
                stale,
            },
            failure.as_ref(),
        );
        return Ok(status);
    }
    let mut out = String::new();
    match &st.last_run {
        None => out.push_str("last run:    never\n"),
        Some(t) => {
            out.push_str(&format!("last run:    {t}\n"));
            out.push_str(&format!(
                "result:      {}\n",
                st.last_result.as_deref().unwrap_or("-")
            ));
            if let Some(id) = st.last_backup_id {
                out.push_str(&format!("backup id:   {id}\n"));
            }
            if let Some(a) = &st.last_archive {
                out.push_str(&format!("archive:     {a}\n"));
            }
            if let Some(e) = &st.last_error {
                out.push_str(&format!("error:       {e}\n"));
            }
        }
    }
    match (&last_success, age) {
        (Some(b), Some(age)) => out.push_str(&format!(
            "last success: backup {} at {} UTC ({} ago)\n",
            b.record.id,
            b.record.created_at.format("%Y-%m-%d %H:%M:%S"),
            human_age(age)
        )),
        _ => out.push_str("last success: none\n"),
    }
    out.push_str(&format!("cron line:   {cron_line}\n"));
    printer.data(&out);
    if let Some(f) = &failure {
        printer.error(&f.message);
    }
    Ok(status)
}

/// `27h 5m`, `2d 3h`, `45m`, `30s`: an age at the precision an operator reads.
fn human_age(d: std::time::Duration) -> String {
    let s = d.as_secs();
    let (days, hours, minutes) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    match () {
        _ if s < 60 => format!("{s}s"),
        _ if s < 3600 => format!("{minutes}m"),
        _ if s < 2 * 86_400 => format!("{}h {minutes}m", s / 3600),
        _ => format!("{days}d {hours}h"),
    }
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
