//! `backup`: a cold backup of the compose project dir.

use nuwax_actors::{BackupRequest, BackupType, Runtime};

use crate::exit::ExitStatus;
use crate::output::{BackupDocument, BackupJson, human_bytes};
use crate::printer::Printer;
use crate::progress::Renderer;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Print the result as one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
    /// Do not check that the project's persistent containers are stopped (unsafe: a running
    /// database gives an inconsistent copy).
    #[arg(long)]
    pub skip_docker_check: bool,
    /// gzip level 1-9 for this backup, overriding `[backup] compression_level`: lower is
    /// faster, higher is smaller (see "Speed" in the README).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=9))]
    pub compression_level: Option<u32>,
    /// Keep the services running: take the `[[backup.dumps]]` first and archive everything
    /// except their `hot_exclude` datadirs. Refused (exit 3) while a running persistent
    /// service has neither a dump nor a place in `[backup] hot_safe`.
    #[arg(long, conflicts_with = "skip_docker_check")]
    pub hot: bool,
    /// Read and compress every file, copying nothing from the previous backup (by default
    /// the compressed data of unchanged large files is copied from it).
    #[arg(long)]
    pub full: bool,
}

pub(crate) async fn run(args: Args, rt: &Runtime, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let (renderer, progress) = Renderer::start(printer);
    let result = rt
        .backup(
            BackupRequest {
                backup_type: BackupType::Manual,
                skip_docker_check: args.skip_docker_check,
                compression_level: args.compression_level,
                hot: args.hot,
                full: args.full,
            },
            progress.clone(),
        )
        .await;
    let totals = renderer.finish(progress).await;
    let entry = result?;
    let r = &entry.record;
    printer.info(&format!(
        "backup {} created: {} ({}, {} entries, sha256 {}) {}",
        r.id,
        r.file_path.display(),
        human_bytes(entry.file_size.unwrap_or(0)),
        r.entry_count.unwrap_or(0),
        r.sha256.as_deref().unwrap_or("-"),
        totals.suffix()
    ));
    let push_error = super::remote::after_backup(rt, printer, r.id).await;
    if args.json {
        printer.document(
            &BackupDocument {
                backup: Some(BackupJson::from(&entry)),
            },
            push_error.as_ref(),
        );
    }
    Ok(push_error.map_or(ExitStatus::Success, |f| f.status))
}
