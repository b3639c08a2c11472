//! `ls ID [PATH]`: browse a backup without extracting it.

use std::path::PathBuf;

use nuwax_actors::{ArchiveEntry, LsRequest, Runtime};

use crate::exit::ExitStatus;
use crate::output::inspect::{LsDocument, LsEntryJson};
use crate::output::{escape_name, human_bytes, render_table};
use crate::printer::Printer;
use crate::progress::Renderer;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Catalog ID of the backup (see `list-backups`).
    pub id: i64,
    /// A directory or file inside the backup, relative to the compose dir (default: the top).
    pub path: Option<PathBuf>,
    /// Long format: type and mode, owner, size, modification time (UTC), name.
    #[arg(short = 'l', long = "long")]
    pub long: bool,
    /// Everything below PATH, not only its direct entries.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Print the entries as one JSON document.
    #[arg(long)]
    pub json: bool,
    /// The key of an encrypted backup.
    #[command(flatten)]
    pub key: super::encryption::KeyArgs,
}

pub(crate) async fn run(args: Args, rt: &Runtime, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let (result, _) = Renderer::run(printer, |progress| {
        rt.ls(
            LsRequest {
                id: args.id,
                path: args.path.clone(),
                recursive: args.recursive,
            },
            progress,
        )
    })
    .await;
    let report = result?;
    if args.json {
        printer.document(
            &LsDocument {
                backup_id: args.id,
                path: report
                    .path
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned()),
                from_manifest: report.from_manifest,
                entries: report.entries.iter().map(LsEntryJson::from).collect(),
            },
            None,
        );
        return Ok(ExitStatus::Success);
    }
    if !report.from_manifest {
        printer
            .warn("this archive has no manifest: listed from its tar headers, without checksums");
    }
    // Names relative to the listed directory, as `ls` shows them.
    let base = match (&report.path, report.entries.as_slice()) {
        (Some(p), [only]) if &only.path == p => p.parent().map(PathBuf::from),
        (p, _) => p.clone(),
    };
    let shown = |e: &ArchiveEntry| -> String {
        let rel = base
            .as_deref()
            .and_then(|b| e.path.strip_prefix(b).ok())
            .unwrap_or(&e.path);
        let mut s = rel.to_string_lossy().into_owned();
        if e.kind == "dir" {
            s.push('/');
        }
        s
    };
    if args.long {
        let rows: Vec<[String; 5]> = report
            .entries
            .iter()
            .map(|e| {
                let name = match (&e.target, e.kind) {
                    (Some(t), "symlink") => format!("{} -> {}", shown(e), t.to_string_lossy()),
                    (Some(t), "hardlink") => {
                        format!("{} link to {}", shown(e), t.to_string_lossy())
                    }
                    _ => shown(e),
                };
                [
                    mode_string(e),
                    format!("{}/{}", e.uid, e.gid),
                    if e.kind == "file" {
                        human_bytes(e.size)
                    } else {
                        "-".into()
                    },
                    if e.implied {
                        "-".into()
                    } else {
                        chrono::DateTime::from_timestamp(e.mtime, 0)
                            .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                            .unwrap_or_default()
                    },
                    name,
                ]
            })
            .collect();
        printer.data(&render_table(&rows));
    } else {
        let mut out = String::new();
        for e in &report.entries {
            out.push_str(&escape_name(&shown(e)));
            out.push('\n');
        }
        printer.data(&out);
    }
    Ok(ExitStatus::Success)
}

/// `drwxr-xr-x`, `-rw-r--r--` (also a hard link), `lrwxrwxrwx`.
fn mode_string(e: &ArchiveEntry) -> String {
    let t = match e.kind {
        "dir" => 'd',
        "symlink" => 'l',
        _ => '-',
    };
    let mut s = String::from(t);
    for shift in [6, 3, 0] {
        let bits = (e.mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}
