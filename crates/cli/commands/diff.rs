//! `diff ID`: the live compose dir against a backup's manifest.

use nuwax_actors::{DiffEntry, DiffRequest, Runtime};

use crate::exit::ExitStatus;
use crate::output::escape_name;
use crate::output::inspect::{DiffDocument, DiffEntryJson, DiffSummary};
use crate::printer::Printer;
use crate::progress::Renderer;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Catalog ID of the backup (see `list-backups`).
    pub id: i64,
    /// Also compare the content of files whose size matches (SHA-256 against the manifest;
    /// reads every such live file).
    #[arg(long)]
    pub content: bool,
    /// Print the differences as one JSON document.
    #[arg(long)]
    pub json: bool,
    /// The key of an encrypted backup.
    #[command(flatten)]
    pub key: super::encryption::KeyArgs,
}

pub(crate) async fn run(args: Args, rt: &Runtime, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let (result, _) = Renderer::run(printer, |progress| {
        rt.diff(
            DiffRequest {
                id: args.id,
                content: args.content,
            },
            progress,
        )
    })
    .await;
    let r = result?;
    let d = &r.diff;
    if args.json {
        let list =
            |v: &[DiffEntry]| -> Vec<DiffEntryJson> { v.iter().map(DiffEntryJson::from).collect() };
        printer.document(
            &DiffDocument {
                backup_id: args.id,
                from_manifest: r.from_manifest,
                content_compared: args.content,
                excluded: r.excluded.clone(),
                summary: DiffSummary {
                    added: d.added.len(),
                    removed: d.removed.len(),
                    modified: d.modified.len(),
                    unchanged: d.unchanged,
                },
                added: list(&d.added),
                removed: list(&d.removed),
                modified: list(&d.modified),
            },
            None,
        );
        return Ok(ExitStatus::Success);
    }
    // One line per path, in path order: `+` added since the backup, `-` removed since,
    // `M` modified (with what differs).
    let mut lines: Vec<(std::path::PathBuf, String)> = Vec::new();
    for e in &d.added {
        lines.push((e.path.clone(), format!("+ {}", shown(e))));
    }
    for e in &d.removed {
        lines.push((e.path.clone(), format!("- {}", shown(e))));
    }
    for e in &d.modified {
        let (b, l) = (e.backup.as_ref(), e.live.as_ref());
        let mut what: Vec<String> = Vec::new();
        for c in &e.changes {
            what.push(match (*c, b, l) {
                ("size", Some(b), Some(l)) => format!("size {} -> {}", b.size, l.size),
                ("kind", Some(b), Some(l)) => format!("{} -> {}", b.kind, l.kind),
                ("mode", Some(b), Some(l)) => format!("mode {:04o} -> {:04o}", b.mode, l.mode),
                _ => (*c).to_string(),
            });
        }
        lines.push((
            e.path.clone(),
            format!("M {} ({})", shown(e), what.join(", ")),
        ));
    }
    lines.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::new();
    for (_, l) in lines {
        out.push_str(&l);
        out.push('\n');
    }
    printer.data(&out);
    printer.info(&format!(
        "backup {} against the live tree: {} added, {} removed, {} modified, {} unchanged{}",
        args.id,
        d.added.len(),
        d.removed.len(),
        d.modified.len(),
        d.unchanged,
        if args.content {
            ""
        } else {
            " (sizes and times compared; --content compares file contents)"
        }
    ));
    Ok(ExitStatus::Success)
}

fn shown(e: &DiffEntry) -> String {
    let dir = e
        .live
        .as_ref()
        .or(e.backup.as_ref())
        .is_some_and(|s| s.kind == "dir");
    let mut s = escape_name(&e.path.to_string_lossy());
    if dir {
        s.push('/');
    }
    s
}
