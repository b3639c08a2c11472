//! `delete-backup`: remove an archive and its catalog entry (and with `--remote` its remote
//! copy; a backup whose remote copy stays keeps its catalog entry).

use nuwax_actors::Runtime;

use crate::exit::ExitStatus;
use crate::output::{BackupJson, DeleteDocument, escape_name};
use crate::printer::Printer;
use crate::prompt;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Catalog ID (see `list-backups`).
    pub id: i64,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub force: bool,
    /// Delete the backup's remote copy too (offsite copies); without it the remote copy is
    /// never touched, and a backup whose only copy is remote is not deleted.
    #[arg(long)]
    pub remote: bool,
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
                "Delete backup {} ({}, {}) and its archive {}{}?",
                entry.record.id,
                entry.record.backup_type.as_str(),
                entry.record.created_at.format("%Y-%m-%d %H:%M:%S"),
                entry.record.file_path.display(),
                if args.remote {
                    ", and its remote copy"
                } else {
                    ""
                }
            ),
        )?;
    }
    let r = rt.delete_backup(args.id, args.remote).await?;
    let id = r.entry.record.id;
    if let Some(key) = &r.remote_deleted {
        printer.info(&format!("deleted the remote copy {}", escape_name(key)));
    }
    if r.kept_remote_only {
        printer.info(&format!(
            "deleted the local archive of backup {id} ({}); its remote copy stays, and so does its catalog entry (remote-only: `rollback {id}` downloads it; `delete-backup {id} --remote` deletes it there)",
            r.entry.record.file_path.display()
        ));
    } else {
        printer.info(&format!(
            "deleted backup {id} ({})",
            r.entry.record.file_path.display()
        ));
    }
    if args.json {
        printer.document(
            &DeleteDocument {
                deleted: Some(BackupJson::from(&r.entry)),
                local_deleted: r.local_deleted,
                remote_deleted: r.remote_deleted.clone(),
                catalog_entry_kept: r.kept_remote_only,
            },
            None,
        );
    }
    Ok(ExitStatus::Success)
}
