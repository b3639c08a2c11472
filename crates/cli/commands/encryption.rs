//! `encryption check`, and the key flags every command that reads an encrypted backup takes.

use std::path::PathBuf;

use nuwax_actors::{KeySource, Runtime};

use crate::exit::{ExitStatus, Failure};
use crate::output::{VerifyDocument, VerifyJson};
use crate::printer::Printer;
use crate::progress::Renderer;

/// `--identity FILE` / `--passphrase-file FILE`: the key of an encrypted backup (README
/// "Encryption"); wins over `[encryption] identity_file`.
#[derive(clap::Args, Debug, Default, Clone)]
pub(crate) struct KeyArgs {
    /// The age identity (`age-keygen` output) or unencrypted ssh private key whose public key
    /// the backup was encrypted to (relative paths: to the working dir).
    #[arg(long, value_name = "FILE", conflicts_with = "passphrase_file")]
    pub identity: Option<PathBuf>,
    /// A file whose first line is the passphrase of a passphrase-encrypted backup.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

impl KeyArgs {
    pub(crate) fn source(&self) -> Option<KeySource> {
        match (&self.identity, &self.passphrase_file) {
            (Some(p), _) => Some(KeySource::Identity(p.clone())),
            (None, Some(p)) => Some(KeySource::Passphrase(p.clone())),
            (None, None) => None,
        }
    }
}

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum Action {
    /// Test-decrypt the newest encrypted backup with the given key (decrypt and verify every
    /// file); run it after setting up encryption and after every key change.
    Check(CheckArgs),
}

#[derive(clap::Args, Debug)]
pub(crate) struct CheckArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    /// Print the result as one JSON document.
    #[arg(long)]
    pub json: bool,
}

impl Action {
    pub(crate) fn json(&self) -> bool {
        match self {
            Action::Check(a) => a.json,
        }
    }

    pub(crate) fn key(&self) -> &KeyArgs {
        match self {
            Action::Check(a) => &a.key,
        }
    }
}

pub(crate) async fn run(args: Args, rt: &Runtime, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let Action::Check(check) = args.action;
    let (renderer, progress) = Renderer::start(printer);
    let outcome = rt.encryption_check(progress.clone()).await;
    let totals = renderer.finish(progress).await;
    let (entry, report) = outcome?;
    let id = entry.record.id;
    let ok = report.is_ok() && report.content_checked;
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
    let status = if ok {
        printer.info(&format!(
            "encryption check: backup {id} decrypted with the given key and verified ({} entries, {} files checked) {}",
            report.entries,
            report.files_checked,
            totals.suffix()
        ));
        ExitStatus::Success
    } else {
        printer.error(&format!(
            "encryption check FAILED: backup {id} ({}):\n  {}\nthis key cannot restore your backups: find the identity that matches [encryption] recipients before you need it",
            entry.record.file_path.display(),
            problems.join("\n  ")
        ));
        ExitStatus::Integrity
    };
    if check.json {
        let failure = (!ok).then(|| {
            Failure::new(
                ExitStatus::Integrity,
                "verification_failed",
                "encryption check failed",
            )
        });
        let results = vec![VerifyJson {
            id,
            file_path: entry.record.file_path.display().to_string(),
            ok,
            checksum_matches: report.checksum_matches,
            entries: report.entries,
            files_checked: report.files_checked,
            problems,
            content_checked: report.content_checked,
        }];
        printer.document(&VerifyDocument { results }, failure.as_ref());
    }
    Ok(status)
}
