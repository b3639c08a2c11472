//! `verify`: read archives completely and check them. Findings are values; this decides the
//! exit code (4 when any archive has a problem).

use nuwax_actors::{BackupStatus, ErrorKind, Runtime};

use crate::exit::{ExitStatus, usage};
use crate::output::{VerifyDocument, VerifyJson};
use crate::printer::Printer;
use crate::progress::Renderer;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Catalog ID to verify.
    #[arg(conflicts_with = "all")]
    pub id: Option<i64>,
    /// Verify every Completed backup.
    #[arg(long)]
    pub all: bool,
    /// Print the results as one JSON document.
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn run(args: Args, rt: &Runtime, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let ids: Vec<i64> = match (args.id, args.all) {
        (Some(id), _) => vec![id],
        (None, true) => rt
            .list_backups()
            .await?
            .into_iter()
            .filter(|b| b.record.status == BackupStatus::Completed)
            .map(|b| b.record.id)
            .collect(),
        (None, false) => return Err(usage("give a backup ID to verify, or --all")),
    };
    let mut results = Vec::new();
    let mut all_ok = true;
    for id in ids {
        let (renderer, progress) = Renderer::start(printer.quiet(), printer.stderr_is_terminal());
        let outcome = rt.verify(id, progress.clone()).await;
        renderer.finish(progress).await;
        let json = match outcome {
            Ok((entry, report)) => {
                let ok = report.is_ok();
                let mut problems = report.problems.clone();
                if report.checksum_matches == Some(false) {
                    problems.insert(
                        0,
                        format!(
                            "archive SHA-256 {} differs from the catalog's {}",
                            report.sha256,
                            entry.record.sha256.as_deref().unwrap_or("-")
                        ),
                    );
                }
                if ok {
                    printer.info(&format!(
                        "backup {id}: OK ({} entries, {} files checked)",
                        report.entries, report.files_checked
                    ));
                } else {
                    printer.error(&format!(
                        "backup {id}: FAILED verification ({}):\n  {}",
                        entry.record.file_path.display(),
                        problems.join("\n  ")
                    ));
                }
                VerifyJson {
                    id,
                    file_path: entry.record.file_path.display().to_string(),
                    ok,
                    checksum_matches: report.checksum_matches,
                    entries: report.entries,
                    files_checked: report.files_checked,
                    problems,
                }
            }
            // An interruption is no verdict: never "FAILED", never exit 4 (whatever --json).
            Err(e) if e.kind() == ErrorKind::Interrupted => return Err(e.into()),
            Err(e) if args.all || args.json => {
                printer.error(&format!("backup {id}: {e}"));
                VerifyJson {
                    id,
                    file_path: String::new(),
                    ok: false,
                    checksum_matches: None,
                    entries: 0,
                    files_checked: 0,
                    problems: vec![e.to_string()],
                }
            }
            Err(e) => return Err(e.into()),
        };
        all_ok &= json.ok;
        results.push(json);
    }
    if args.json {
        printer.json(&VerifyDocument {
            success: all_ok,
            results,
            error: (!all_ok).then(|| "verification failed".to_string()),
        });
    }
    Ok(if all_ok {
        ExitStatus::Success
    } else {
        ExitStatus::Integrity
    })
}
