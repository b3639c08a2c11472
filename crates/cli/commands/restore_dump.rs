//! `restore-dump ID --service NAME`: feeds a backup's database dump (checked against its
//! checksum first) into the running service through the engine's exec stdin. What a hot
//! backup's rollback tells the operator to run next.

use nuwax_actors::Runtime;
use serde::Serialize;

use crate::exit::ExitStatus;
use crate::output::human_bytes;
use crate::printer::Printer;
use crate::progress::Renderer;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The backup's ID (`nuwax-cli list-backups`).
    pub id: i64,
    /// The compose service whose dump to load (it must be running, with a
    /// `[[backup.dumps]]` entry saying how to load it).
    #[arg(long, value_name = "NAME")]
    pub service: String,
    /// Print the result as one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `restore-dump --json`.
#[derive(Serialize)]
struct RestoreDumpDocument {
    backup_id: i64,
    service: String,
    /// The container the dump was loaded into.
    container: String,
    /// Bytes of the dump fed to the database.
    bytes: u64,
}

pub(crate) async fn run(args: Args, rt: &Runtime, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let (renderer, progress) = Renderer::start(printer);
    let result = rt
        .restore_dump(args.id, &args.service, progress.clone())
        .await;
    renderer.finish(progress).await;
    let report = result?;
    printer.info(&format!(
        "loaded the dump of service {} from backup {} ({}) into {}",
        report.service,
        report.backup_id,
        human_bytes(report.bytes),
        report.container
    ));
    if args.json {
        printer.document(
            &RestoreDumpDocument {
                backup_id: report.backup_id,
                service: report.service,
                container: report.container,
                bytes: report.bytes,
            },
            None,
        );
    }
    Ok(ExitStatus::Success)
}
