//! `verify`: read archives completely and check them. Findings are values; this decides the
//! exit code (4 when any archive has a problem).

use nuwax_actors::{BackupStatus, ErrorKind, Runtime};

use crate::exit::{ExitStatus, Failure, usage};
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
    /// The key of an encrypted backup.
    #[command(flatten)]
    pub key: super::encryption::KeyArgs,
}

pub(crate) async fn run(args: Args, rt: &Runtime, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let ids: Vec<i64> = match (args.id, args.all) {
        (Some(id), _) => vec![id],
        (None, true) => {
            let all = rt.list_backups().await?;
            // A remote-only backup has no archive here to verify: not a failure.
            for b in all.iter().filter(|b| b.remote_copy && !b.file_exists) {
                printer.info(&format!(
                    "backup {}: remote-only (no archive here); check it with `nuwax-cli remote verify {} --download`",
                    b.record.id, b.record.id
                ));
            }
            all.into_iter()
                .filter(|b| b.record.status == BackupStatus::Completed)
                .filter(|b| b.file_exists || !b.remote_copy)
                .map(|b| b.record.id)
                .collect()
        }
        (None, false) => return Err(usage("give a backup ID to verify, or --all")),
    };
    let mut results = Vec::new();
    // One verdict for both output forms: the exit code is decided here from the outcomes, never
    // from `--json` (which only chooses how the same outcomes are shown).
    let mut verdict = Verdict::default();
    // The first error that kept a backup from being checked: its kind names the document's.
    let mut first_error: Option<Failure> = None;
    for id in ids {
        let (renderer, progress) = Renderer::start(printer);
        let outcome = rt.verify(id, progress.clone()).await;
        let totals = renderer.finish(progress).await;
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
                if ok && !report.content_checked {
                    printer.info(&format!(
                        "backup {id}: checksum OK; encrypted, content not checked (pass --identity FILE for a full decrypt-and-verify) {}",
                        totals.suffix()
                    ));
                } else if ok {
                    printer.info(&format!(
                        "backup {id}: OK ({} entries, {} files checked) {}",
                        report.entries,
                        report.files_checked,
                        totals.suffix()
                    ));
                } else {
                    verdict.record(ExitStatus::Integrity);
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
                    content_checked: report.content_checked,
                }
            }
            // An interruption is no verdict: never "FAILED", never exit 4 (whatever --json).
            Err(e) if e.kind() == ErrorKind::Interrupted => return Err(e.into()),
            Err(e) => {
                let err = anyhow::Error::new(e);
                let failure = Failure::of(&err);
                let status = failure.status;
                verdict.record(status);
                let msg = failure.message.clone();
                if !matches!(status, ExitStatus::Integrity | ExitStatus::Interrupted) {
                    first_error.get_or_insert(Failure {
                        message: format!("backup {id}: {msg}"),
                        ..failure
                    });
                }
                printer.error(&format!("backup {id}: {msg}"));
                let json = VerifyJson {
                    id,
                    file_path: String::new(),
                    ok: false,
                    checksum_matches: None,
                    entries: 0,
                    files_checked: 0,
                    problems: vec![msg],
                    content_checked: false,
                };
                if status == ExitStatus::Interrupted {
                    results.push(json);
                    break;
                }
                json
            }
        };
        results.push(json);
    }
    let status = verdict.status();
    if args.json {
        let failure = match status {
            ExitStatus::Success => None,
            ExitStatus::Integrity => Some(Failure::new(
                status,
                "verification_failed",
                "verification failed",
            )),
            ExitStatus::Interrupted => Some(Failure::new(
                status,
                "interrupted",
                "verification interrupted",
            )),
            // The error that kept a backup from being checked, as stderr said it.
            _ => Some(Failure {
                status,
                ..first_error
                    .unwrap_or_else(|| Failure::new(status, "failed", "verification could not run"))
            }),
        };
        printer.document(&VerifyDocument { results }, failure.as_ref());
    }
    Ok(status)
}

/// The exit code of a `verify` run over one or more backups, the same with and without
/// `--json`: an interruption wins (130), then an error that kept a backup from being checked
/// (its own code: 2 for an unknown ID, 1 for an I/O failure...), then a failed check (4).
#[derive(Default)]
struct Verdict {
    interrupted: bool,
    error: Option<ExitStatus>,
    corrupt: bool,
}

impl Verdict {
    fn record(&mut self, status: ExitStatus) {
        match status {
            ExitStatus::Success => {}
            ExitStatus::Interrupted => self.interrupted = true,
            ExitStatus::Integrity => self.corrupt = true,
            other => {
                self.error.get_or_insert(other);
            }
        }
    }

    fn status(&self) -> ExitStatus {
        if self.interrupted {
            ExitStatus::Interrupted
        } else if let Some(s) = self.error {
            s
        } else if self.corrupt {
            ExitStatus::Integrity
        } else {
            ExitStatus::Success
        }
    }
}
