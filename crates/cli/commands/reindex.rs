//! `reindex` and `import`: rebuild or extend the catalog from archives.

use std::path::PathBuf;

use nuwax_actors::Runtime;
use serde::Serialize;

use crate::exit::ExitStatus;
use crate::output::BackupJson;
use crate::printer::Printer;
use crate::progress::Renderer;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
    /// When the catalog is unusable (damaged, not SQLite, a newer schema), move it aside to
    /// `nuwax.db.broken-<time>` and rebuild a fresh one from the archives.
    #[arg(long)]
    pub move_broken_catalog: bool,
    /// Rebuild from the remote (`[remote]`): a catalog entry for every complete remote copy
    /// the catalog lacks; the archives are downloaded when a rollback or `remote pull` needs
    /// them.
    #[arg(long)]
    pub remote: bool,
    /// The key to read encrypted archives (`*.tar.gz.age`) with; without it (and without
    /// [encryption] identity_file) they are reported, not added.
    #[command(flatten)]
    pub key: super::encryption::KeyArgs,
}

#[derive(clap::Args, Debug)]
pub(crate) struct ImportArgs {
    /// The archive to adopt (verified first; copied into the storage dir when outside it).
    pub file: PathBuf,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
    /// The key of an encrypted archive: it is decrypted and verified before it is adopted.
    #[command(flatten)]
    pub key: super::encryption::KeyArgs,
}

#[derive(Serialize)]
struct ReindexDocument {
    /// Archives added to the catalog.
    added: Vec<BackupJson>,
    /// Archives that were already in the catalog.
    known: usize,
    /// Files that are not valid archives, with the reason.
    invalid: Vec<InvalidJson>,
    /// Catalog entries whose archive file is gone.
    missing: Vec<BackupJson>,
    /// Where the unusable catalog was moved (only with `--move-broken-catalog`, when it was).
    #[serde(skip_serializing_if = "Option::is_none")]
    moved_aside: Option<String>,
}

#[derive(Serialize)]
struct InvalidJson {
    file_path: String,
    error: String,
}

#[derive(Serialize)]
struct ImportDocument {
    backup: BackupJson,
}

pub(crate) async fn run(args: Args, rt: &Runtime, printer: &Printer) -> anyhow::Result<ExitStatus> {
    if args.remote {
        return super::remote::reindex(args.json, rt, printer).await;
    }
    let (renderer, progress) = Renderer::start(printer);
    let result = rt.reindex(progress.clone()).await;
    let totals = renderer.finish(progress).await;
    let r = result?;
    if let Some(moved) = &r.moved_aside {
        printer.warn(&format!(
            "the catalog was unusable; it was moved to {} and a fresh one was built from the archives",
            moved.display()
        ));
    }
    for a in &r.added {
        printer.info(&format!(
            "added backup {} from {}",
            a.record.id,
            a.record.file_path.display()
        ));
    }
    for (p, e) in &r.invalid {
        printer.warn(&format!("{} is not a usable archive: {e}", p.display()));
    }
    for m in &r.missing {
        printer.warn(&format!(
            "backup {}'s archive {} is gone; remove the entry with `nuwax-cli delete-backup {}`",
            m.record.id,
            m.record.file_path.display(),
            m.record.id
        ));
    }
    printer.info(&format!(
        "{} added, {} already known, {} invalid, {} missing {}",
        r.added.len(),
        r.known,
        r.invalid.len(),
        r.missing.len(),
        totals.suffix()
    ));
    if args.json {
        printer.document(
            &ReindexDocument {
                added: r.added.iter().map(BackupJson::from).collect(),
                known: r.known,
                invalid: r
                    .invalid
                    .iter()
                    .map(|(p, e)| InvalidJson {
                        file_path: p.display().to_string(),
                        error: e.clone(),
                    })
                    .collect(),
                missing: r.missing.iter().map(BackupJson::from).collect(),
                moved_aside: r.moved_aside.as_ref().map(|p| p.display().to_string()),
            },
            None,
        );
    }
    Ok(ExitStatus::Success)
}

pub(crate) async fn run_import(
    args: ImportArgs,
    rt: &Runtime,
    printer: &Printer,
) -> anyhow::Result<ExitStatus> {
    let (renderer, progress) = Renderer::start(printer);
    let result = rt.import(&args.file, progress.clone()).await;
    let totals = renderer.finish(progress).await;
    let entry = result?;
    printer.info(&format!(
        "imported {} as backup {} {}",
        entry.record.file_path.display(),
        entry.record.id,
        totals.suffix()
    ));
    if args.json {
        printer.document(
            &ImportDocument {
                backup: BackupJson::from(&entry),
            },
            None,
        );
    }
    Ok(ExitStatus::Success)
}
