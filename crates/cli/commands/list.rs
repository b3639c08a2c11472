//! `list-backups`: the catalog, newest first.

use nuwax_actors::Runtime;

use crate::exit::ExitStatus;
use crate::output::{BackupJson, ListDocument, table};
use crate::printer::Printer;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Print one JSON document (the GUI's format) instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn run(args: Args, rt: &Runtime, printer: &Printer) -> anyhow::Result<ExitStatus> {
    print_list(args.json, rt, printer).await
}

/// Shared with `rollback --list-json`.
pub(crate) async fn print_list(
    json: bool,
    rt: &Runtime,
    printer: &Printer,
) -> anyhow::Result<ExitStatus> {
    let backups = rt.list_backups().await?;
    if json {
        printer.document(
            &ListDocument {
                backups: backups.iter().map(BackupJson::from).collect(),
            },
            None,
        );
        return Ok(ExitStatus::Success);
    }
    if backups.is_empty() {
        printer.info("no backups yet; create one with `nuwax-cli backup`");
        return Ok(ExitStatus::Success);
    }
    let refs: Vec<_> = backups.iter().collect();
    printer.data(&table(&refs));
    let missing = backups
        .iter()
        .filter(|b| !b.file_exists && b.record.status.as_str() == "Completed")
        .count();
    if missing > 0 {
        printer.warn(&format!(
            "{missing} backup(s) have no archive file any more; remove them with `nuwax-cli delete-backup <ID>`"
        ));
    }
    Ok(ExitStatus::Success)
}
