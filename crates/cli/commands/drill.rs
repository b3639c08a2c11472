//! `drill [ID]`: a restore drill. Brings a backup up as its own compose project beside the
//! live stack (which is never touched), waits for every persistent service to be running and
//! healthy, runs the `[[drill.checks]]`, and removes it again. Exit 0 when it came up, 1 when
//! it did not (the service is named, with its last log lines), 3 when refused (no engine, no
//! space, a bind mount outside the compose dir), 4 when the archive is damaged.

use std::time::Duration;

use nuwax_actors::{DrillReport, DrillRequest, Runtime};

use crate::exit::{ExitStatus, Failure};
use crate::output::{DrillDocument, DrillJson};
use crate::printer::Printer;
use crate::progress::Renderer;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Catalog ID of the backup (default: the newest completed backup).
    pub id: Option<i64>,
    /// Leave the drill project running and its scratch copy in place for inspection; prints
    /// how to remove them.
    #[arg(long)]
    pub keep: bool,
    /// How long to wait for the services: `300`, `90s`, `5m` (default: [drill] timeout, else
    /// [upgrade] health_timeout).
    #[arg(long, value_name = "D", value_parser = super::upgrade::parse_duration)]
    pub timeout: Option<Duration>,
    /// The key of an encrypted backup (as for `rollback`).
    #[command(flatten)]
    pub key: super::encryption::KeyArgs,
    /// Print the result as one JSON document.
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn run(args: Args, rt: &Runtime, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let (renderer, progress) = Renderer::start(printer);
    let result = rt
        .drill(
            DrillRequest {
                id: args.id,
                keep: args.keep,
                timeout: args.timeout,
            },
            progress.clone(),
        )
        .await;
    renderer.finish(progress).await;
    let report = result?;
    print_outcome(printer, &report);
    let failure = report.failure().map(|e| Failure::of_error(&e));
    if args.json {
        printer.document(
            &DrillDocument {
                drill: DrillJson::from(&report),
            },
            failure.as_ref(),
        );
    }
    Ok(failure.map_or(ExitStatus::Success, |f| f.status))
}

/// The human account of a drill on stderr (also after `auto-backup run --drill`).
pub(crate) fn print_outcome(printer: &Printer, report: &DrillReport) {
    let id = report.backup.record.id;
    let secs = report.duration.as_secs_f64();
    if report.passed() {
        printer.info(&format!(
            "drill of backup {id} passed in {secs:.1}s: {} up{}",
            if report.services.is_empty() {
                "no persistent services".to_string()
            } else {
                report.services.join(", ")
            },
            if report.checks.is_empty() {
                String::new()
            } else {
                format!(", {} check(s) passed", report.checks.len())
            }
        ));
    } else {
        let mut text = format!(
            "drill of backup {id} FAILED after {secs:.1}s{}: {}",
            report
                .failed_service
                .as_deref()
                .map(|s| format!(" (service {s})"))
                .unwrap_or_default(),
            report.error.as_deref().unwrap_or("unknown reason")
        );
        if let Some(logs) = &report.log_tail {
            text.push_str("\nlast log lines:\n  ");
            text.push_str(&logs.lines().collect::<Vec<_>>().join("\n  "));
        }
        printer.error(&text);
    }
    if let Some(kept) = &report.kept {
        printer.info(&format!(
            "the drill project {} is left running (--keep) from {}; remove it with:\n  {}",
            report.project,
            kept.work_dir.display(),
            kept.remove_with
        ));
    }
}
