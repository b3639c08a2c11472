//! `auto-backup run|status`: the cron-safe backup.
//!
//! `run` checks the storage dir and free space, stops what runs, backs up (type Auto), and
//! starts exactly what ran, also when the backup fails, when it is interrupted (Ctrl-C,
//! SIGTERM, SIGHUP: started again by this process before it exits) or when the tool was
//! killed (the next invocation restarts them). It exits with the code `backup` would (3 for
//! no space, 1 for a failed backup, 128 + the signal when interrupted); `--json` failures
//! carry `error`. With `--quiet` it prints nothing on success, so cron mails only failures.

use nuwax_actors::Runtime;
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
    /// Stop the services, back up, start exactly what was running.
    Run(RunFlags),
    /// Last run, result, backup id, archive, and a cron line to paste.
    Status(Flags),
}

#[derive(clap::Args, Debug)]
pub(crate) struct Flags {
    /// Print one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct RunFlags {
    /// Print one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
    /// Then drill the new backup (after the services run again): bring it up beside the live
    /// stack, wait for health, run the [[drill.checks]]. A failed drill fails the run (exit 1).
    #[arg(long)]
    pub drill: bool,
}

impl Action {
    pub fn json(&self) -> bool {
        match self {
            Action::Run(f) => f.json,
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
}

pub(crate) async fn run(args: Args, rt: &Runtime, printer: &Printer) -> anyhow::Result<ExitStatus> {
    match args.action {
        Action::Run(f) => run_backup(rt, printer, f.json, f.drill).await,
        Action::Status(f) => status(rt, printer, f.json).await,
    }
}

async fn run_backup(
    rt: &Runtime,
    printer: &Printer,
    json: bool,
    drill: bool,
) -> anyhow::Result<ExitStatus> {
    let (renderer, progress) = Renderer::start(printer);
    let result = rt.auto_backup(progress.clone(), drill).await;
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

async fn status(rt: &Runtime, printer: &Printer, json: bool) -> anyhow::Result<ExitStatus> {
    let st = rt.auto_backup_status().await?;
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "nuwax-cli".into());
    let cron_line = format!(
        "0 2 * * * {exe} -C {} auto-backup run --quiet",
        shell_quote(&rt.settings().paths.work_dir.display().to_string())
    );
    if json {
        printer.document(
            &StatusDocument {
                last_run: st.last_run,
                last_result: st.last_result,
                last_backup_id: st.last_backup_id,
                last_archive: st.last_archive,
                last_error: st.last_error,
                cron_line,
            },
            None,
        );
        return Ok(ExitStatus::Success);
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
    out.push_str(&format!("cron line:   {cron_line}\n"));
    printer.data(&out);
    Ok(ExitStatus::Success)
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
