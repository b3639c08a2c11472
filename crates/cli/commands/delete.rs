//! `delete-backup`: remove an archive and its catalog entry.

use nuwax_actors::Runtime;

use crate::exit::ExitStatus;
use crate::output::{BackupJson, DeleteDocument};
use crate::printer::Printer;
use crate::prompt;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Catalog ID (see `list-backups`).
    pub id: i64,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub force: bool,
    /// Print the result as one JSON document.
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn run(args: Args, rt: &Runtime, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let entry = rt.get_backup(args.id).await?;
    if !args.force {
        prompt::confirm(
            printer,
            &format!(
                "Delete backup {} ({}, {}) and its archive {}?",
                entry.record.id,
                entry.record.backup_type.as_str(),
                entry.record.created_at.format("%Y-%m-%d %H:%M:%S"),
                entry.record.file_path.display()
            ),
        )?;
    }
    let deleted = rt.delete_backup(args.id).await?;
    printer.info(&format!(
        "deleted backup {} ({})",
        deleted.record.id,
        deleted.record.file_path.display()
    ));
    if args.json {
        printer.document(
            &DeleteDocument {
                deleted: Some(BackupJson::from(&deleted)),
            },
            None,
        );
    }
    Ok(ExitStatus::Success)
}
