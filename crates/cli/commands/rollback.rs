//! `rollback` and `rollback-data-only`.

use nuwax_actors::{RollbackReport, RollbackRequest, RollbackScope, Runtime, VersionUpdate};

use crate::exit::{ExitStatus, Failure};
use crate::output::{RollbackDocument, escape_names};
use crate::printer::Printer;
use crate::progress::{Renderer, Totals};
use crate::prompt;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Catalog ID of the backup (see `list-backups`); asked for on a terminal when omitted.
    pub id: Option<i64>,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub force: bool,
    /// Also restore the data scope (data/, upload/, ...): MySQL, Redis and MinIO data go back
    /// to the backup's state.
    #[arg(long)]
    pub rollback_data: bool,
    /// Print the backup list as JSON (for the GUI) and exit; nothing is restored.
    #[arg(long)]
    pub list_json: bool,
    /// Leave the services stopped after the restore.
    #[arg(long)]
    pub no_start: bool,
    /// Accepted for compatibility with older callers (starting is the default).
    #[arg(long, hide = true)]
    pub auto_start_service: bool,
    /// Print the result as one JSON document.
    #[arg(long)]
    pub json: bool,
    /// Show what would be replaced, restored and removed, the space needed and the
    /// containers that would stop; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The key of an encrypted backup.
    #[command(flatten)]
    pub key: super::encryption::KeyArgs,
}

#[derive(clap::Args, Debug)]
pub(crate) struct DataOnlyArgs {
    /// Catalog ID of the backup; asked for on a terminal when omitted.
    pub id: Option<i64>,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub force: bool,
    /// Leave the services stopped after the restore.
    #[arg(long)]
    pub no_start: bool,
    /// Accepted for compatibility with older callers (starting is the default).
    #[arg(long, hide = true)]
    pub auto_start_service: bool,
    /// Print the result as one JSON document.
    #[arg(long)]
    pub json: bool,
    /// Show what would be replaced, restored and removed, the space needed and the
    /// containers that would stop; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The key of an encrypted backup.
    #[command(flatten)]
    pub key: super::encryption::KeyArgs,
}

pub(crate) async fn run(args: Args, rt: &Runtime, printer: &Printer) -> anyhow::Result<ExitStatus> {
    if args.list_json {
        return super::list::print_list(true, rt, printer).await;
    }
    let scope = if args.rollback_data {
        RollbackScope::All
    } else {
        RollbackScope::App
    };
    if args.dry_run {
        let id = pick(rt, printer, args.id, "rollback").await?;
        return super::dry_run::run(rt, printer, id, scope, args.json).await;
    }
    restore(
        rt,
        printer,
        args.id,
        scope,
        Flags {
            force: args.force,
            json: args.json,
            start: !args.no_start,
        },
        "rollback",
    )
    .await
}

pub(crate) async fn run_data_only(
    args: DataOnlyArgs,
    rt: &Runtime,
    printer: &Printer,
) -> anyhow::Result<ExitStatus> {
    if args.dry_run {
        let id = pick(rt, printer, args.id, "rollback-data-only").await?;
        return super::dry_run::run(rt, printer, id, RollbackScope::DataOnly, args.json).await;
    }
    restore(
        rt,
        printer,
        args.id,
        RollbackScope::DataOnly,
        Flags {
            force: args.force,
            json: args.json,
            start: !args.no_start,
        },
        "rollback-data-only",
    )
    .await
}

struct Flags {
    force: bool,
    json: bool,
    start: bool,
}

async fn restore(
    rt: &Runtime,
    printer: &Printer,
    id: Option<i64>,
    scope: RollbackScope,
    flags: Flags,
    command: &str,
) -> anyhow::Result<ExitStatus> {
    let Flags { force, json, start } = flags;
    let id = match id {
        Some(id) => id,
        None => prompt::select_backup(printer, &rt.list_backups().await?, command)?,
    };
    let entry = rt.get_backup(id).await?;
    if entry.record.legacy {
        // Said before any prompt: what a backup of the original tool can and cannot restore.
        let items = match scope {
            RollbackScope::App => "app/",
            RollbackScope::All => "data/ and app/",
            RollbackScope::DataOnly => "data/",
        };
        printer.warn(&format!(
            "backup {id} was made by the original nuwax-cli: a restore of it takes only data/ and app/. This restores {items} (what of it the backup holds); the compose file, .env, config/ and everything else are left as they are."
        ));
    }
    if !force {
        let warning = match scope {
            RollbackScope::App => {
                "This replaces the compose file, .env, config and app files with the backup's; the data scope (MySQL/Redis/MinIO data) is NOT touched."
            }
            RollbackScope::All => {
                "This replaces everything in the compose dir with the backup's, INCLUDING the data (MySQL/Redis/MinIO): changes since the backup are lost."
            }
            RollbackScope::DataOnly => {
                "This replaces only the data scope (MySQL/Redis/MinIO data) with the backup's: data changes since the backup are lost; app and config stay."
            }
        };
        prompt::confirm(
            printer,
            &format!(
                "Restore {} from backup {} ({}, version {}, {} UTC)?\n{warning}",
                scope.describe(),
                id,
                entry.record.backup_type.as_str(),
                entry.record.service_version,
                entry.record.created_at.format("%Y-%m-%d %H:%M:%S"),
            ),
        )?;
    }
    let (renderer, progress) = Renderer::start(printer);
    let result = rt
        .rollback(RollbackRequest { id, scope, start }, progress.clone())
        .await;
    let totals = renderer.finish(progress).await;
    let report = result?;
    print_report(printer, &report, start, &totals);
    print_version(printer, &report);
    if json {
        let failure = report.start_error.as_ref().map(|e| {
            Failure::new(
                ExitStatus::Failed,
                "start_failed",
                format!("restore succeeded but starting the services failed: {e}"),
            )
        });
        printer.document(&document(&report), failure.as_ref());
    }
    if let Some(e) = &report.start_error {
        printer.error(&format!(
            "the restore succeeded and the restored files are in place, but starting the services failed: {e}
fix the cause, then run: nuwax-cli -C {} docker-service start",
            rt.settings().paths.work_dir.display()
        ));
        return Ok(ExitStatus::Failed);
    }
    Ok(ExitStatus::Success)
}

/// The given ID, or one chosen on a terminal.
async fn pick(
    rt: &Runtime,
    printer: &Printer,
    id: Option<i64>,
    command: &str,
) -> anyhow::Result<i64> {
    Ok(match id {
        Some(id) => id,
        None => prompt::select_backup(printer, &rt.list_backups().await?, command)?,
    })
}

/// What the restore did to `config.toml`'s version (an app restore writes the backup's).
fn print_version(printer: &Printer, r: &RollbackReport) {
    match &r.version {
        Some(VersionUpdate::Written { version, previous }) => printer.info(&format!(
            "config.toml: [versions] docker_service set to {version:?}{}",
            previous
                .as_ref()
                .map(|p| format!(" (was {p:?})"))
                .unwrap_or_default()
        )),
        Some(VersionUpdate::Unchanged(version)) => printer.info(&format!(
            "config.toml: [versions] docker_service is already {version:?}"
        )),
        Some(VersionUpdate::Failed { version, error }) => printer.warn(&format!(
            "the restore is complete, but config.toml could not be updated: {error}; set [versions] docker_service = {version:?} by hand"
        )),
        None => {}
    }
}

fn print_report(printer: &Printer, r: &RollbackReport, start: bool, totals: &Totals) {
    printer.info(&format!(
        "restored {} from backup {} ({}): {} files ({} bytes) {}",
        r.scope.describe(),
        r.backup.record.id,
        if r.restored.is_empty() {
            "-".to_string()
        } else {
            escape_names(&r.restored)
        },
        r.files,
        r.bytes,
        totals.suffix()
    ));
    if !r.removed.is_empty() {
        printer.info(&format!(
            "removed (not in the backup): {}",
            escape_names(&r.removed)
        ));
    }
    if !r.stopped.is_empty() {
        let names: Vec<_> = r.stopped.iter().map(|c| c.name.clone()).collect();
        printer.info(&format!(
            "stopped for the restore: {}",
            escape_names(&names)
        ));
    }
    if r.services_started {
        let secs = |d: std::time::Duration| format!("{:.1} s", d.as_secs_f64());
        printer.info(&format!(
            "the services are running and healthy: started {} after the rollback began{}; the replaced files were removed afterwards in {}",
            r.started_after.map(secs).unwrap_or_default(),
            r.downtime
                .map(|d| format!(" (down for {})", secs(d)))
                .unwrap_or_default(),
            secs(r.cleanup)
        ));
    } else if !start {
        printer.info(
            "the services are left stopped (--no-start); start them with `nuwax-cli docker-service start`",
        );
    }
}

fn document(r: &RollbackReport) -> RollbackDocument {
    RollbackDocument {
        backup_id: r.backup.record.id,
        scope: crate::output::scope_name(r.scope),
        restored: r.restored.clone(),
        removed: r.removed.clone(),
        stopped: r.stopped.iter().map(|c| c.name.clone()).collect(),
        services_started: r.services_started,
        files: r.files,
        bytes: r.bytes,
        committed_after_ms: r.committed_after.as_millis() as u64,
        started_after_ms: r.started_after.map(|d| d.as_millis() as u64),
        downtime_ms: r.downtime.map(|d| d.as_millis() as u64),
        cleanup_ms: r.cleanup.as_millis() as u64,
    }
}
