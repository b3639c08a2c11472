//! `restore ID PATH... --to DIR`: copy chosen files and directories out of a backup into a
//! separate directory; never into live data.

use std::path::PathBuf;

use nuwax_actors::{RestoreRequest, Runtime};

use crate::exit::ExitStatus;
use crate::output::inspect::RestoreDocument;
use crate::output::{escape_names, human_bytes};
use crate::printer::Printer;
use crate::progress::Renderer;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Catalog ID of the backup (see `list-backups`).
    pub id: i64,
    /// Paths inside the backup, relative to the compose dir (as `ls` shows them); a
    /// directory comes with everything below it.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Destination directory (created when missing). Must not be inside the compose dir, the
    /// storage dir or data/. The paths keep their place: `app/x.yml` lands in DIR/app/x.yml.
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// Allow a non-empty destination; an existing file there is never overwritten (the
    /// restore refuses before writing anything).
    #[arg(long)]
    pub force: bool,
    /// Print the result as one JSON document.
    #[arg(long)]
    pub json: bool,
    /// The key of an encrypted backup.
    #[command(flatten)]
    pub key: super::encryption::KeyArgs,
}

pub(crate) async fn run(args: Args, rt: &Runtime, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let (result, _) = Renderer::run(printer, |progress| {
        rt.restore_to(
            RestoreRequest {
                id: args.id,
                paths: args.paths.clone(),
                dest: args.to.clone(),
                force: args.force,
            },
            progress,
        )
    })
    .await;
    let r = result?;
    let paths: Vec<String> = r
        .paths
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    printer.info(&format!(
        "restored {} from backup {} into {}: {} files ({}); checksum and manifest verified",
        escape_names(&paths),
        r.backup.record.id,
        r.dest.display(),
        r.files,
        human_bytes(r.bytes)
    ));
    if args.json {
        printer.document(
            &RestoreDocument {
                backup_id: r.backup.record.id,
                dest: r.dest.display().to_string(),
                paths,
                files: r.files,
                bytes: r.bytes,
            },
            None,
        );
    }
    Ok(ExitStatus::Success)
}
