//! `remote push|list|pull|verify|prune`: offsite copies on S3-compatible storage, and
//! `reindex --remote` (rendered here, dispatched from `reindex.rs`).

use nuwax_actors::{KeepRules, RemoteTarget, Runtime};
use serde::Serialize;

use crate::exit::{ExitStatus, usage};
use crate::output::{BackupJson, escape_message, escape_name, human_bytes, render_table};
use crate::printer::Printer;
use crate::progress::Renderer;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum Action {
    /// Upload what the remote lacks: one backup, or every completed one with --all.
    Push(TargetArgs),
    /// Local and remote backups merged: local-only, remote-only, both, or mismatch.
    List(JsonArgs),
    /// Download a remote copy (catalog ID or archive name), verify it, add it to the catalog.
    Pull(PullArgs),
    /// Check remote copies: size and checksum recorded at upload; --download re-reads them.
    Verify(VerifyArgs),
    /// Apply retention on the remote ([remote.retention], or the flags).
    Prune(PruneArgs),
}

#[derive(clap::Args, Debug)]
pub(crate) struct TargetArgs {
    /// Catalog ID of the backup.
    pub id: Option<i64>,
    /// Every completed backup.
    #[arg(long, conflicts_with = "id")]
    pub all: bool,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct JsonArgs {
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct PullArgs {
    /// Catalog ID, or the archive's file name as `remote list` shows it.
    pub backup: String,
    /// The key of an encrypted copy: it is decrypted and verified before it is added.
    #[command(flatten)]
    pub key: super::encryption::KeyArgs,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Download every copy and hash it (otherwise: sizes and recorded checksums only).
    #[arg(long)]
    pub download: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct PruneArgs {
    #[arg(long)]
    pub keep_last: Option<u32>,
    #[arg(long)]
    pub keep_daily: Option<u32>,
    #[arg(long)]
    pub keep_weekly: Option<u32>,
    #[arg(long)]
    pub keep_monthly: Option<u32>,
    /// Show what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

impl Action {
    pub(crate) fn json(&self) -> bool {
        match self {
            Action::Push(a) => a.json,
            Action::List(a) => a.json,
            Action::Pull(a) => a.json,
            Action::Verify(a) => a.target.json,
            Action::Prune(a) => a.json,
        }
    }

    /// The key given for an encrypted copy (`remote pull --identity`).
    pub(crate) fn key(&self) -> Option<nuwax_actors::KeySource> {
        match self {
            Action::Pull(a) => a.key.source(),
            _ => None,
        }
    }

    /// Push, pull and prune change the catalog, the storage dir or the remote.
    pub(crate) fn mutating(&self) -> bool {
        match self {
            Action::Push(_) | Action::Pull(_) => true,
            Action::Prune(a) => !a.dry_run,
            Action::List(_) | Action::Verify(_) => false,
        }
    }
}

fn target(a: &TargetArgs, what: &str) -> anyhow::Result<RemoteTarget> {
    match (a.id, a.all) {
        (Some(id), false) => Ok(RemoteTarget::One(id)),
        (None, true) => Ok(RemoteTarget::All),
        _ => Err(usage(format!(
            "remote {what}: name a backup ID or pass --all"
        ))),
    }
}

pub(crate) async fn run(args: Args, rt: &Runtime, printer: &Printer) -> anyhow::Result<ExitStatus> {
    match args.action {
        Action::Push(a) => push(a, rt, printer).await,
        Action::List(a) => list(a, rt, printer).await,
        Action::Pull(a) => pull(a, rt, printer).await,
        Action::Verify(a) => verify(a, rt, printer).await,
        Action::Prune(a) => prune(a, rt, printer).await,
    }
}

#[derive(Serialize)]
struct PushDocument {
    /// Backups now on the remote (sent by this run, or there already).
    pushed: Vec<PushedJson>,
    /// Backups not pushed, with the reason.
    skipped: Vec<SkippedJson>,
    /// Stale multipart uploads this run aborted (remote object names).
    aborted_uploads: Vec<String>,
}

#[derive(Serialize)]
struct PushedJson {
    id: i64,
    archive: String,
    size: u64,
    sha256: String,
    /// Parts uploaded by this run.
    parts_sent: u64,
    /// Parts an interrupted earlier push had uploaded (not sent again).
    parts_resumed: u64,
    /// The remote had the copy already: nothing was sent.
    already_there: bool,
}

#[derive(Serialize)]
struct SkippedJson {
    id: i64,
    reason: String,
}

/// `remote push`; also called after `backup`/`auto-backup run` with `push = "after-backup"`.
pub(crate) async fn push_and_report(
    rt: &Runtime,
    printer: &Printer,
    target: RemoteTarget,
) -> anyhow::Result<nuwax_actors::PushReport> {
    let (renderer, progress) = Renderer::start(printer);
    let result = rt.remote_push(target, progress.clone()).await;
    renderer.finish(progress).await;
    let r = result?;
    for k in &r.aborted {
        printer.info(&format!("aborted a stale upload: {}", escape_name(k)));
    }
    for p in &r.pushed {
        if p.already_there {
            printer.info(&format!(
                "backup {} is on the remote already ({})",
                p.backup_id,
                escape_name(&p.archive)
            ));
        } else {
            printer.info(&format!(
                "pushed backup {} ({}, {}): {} parts sent{}",
                p.backup_id,
                escape_name(&p.archive),
                human_bytes(p.size),
                p.parts_sent,
                if p.parts_resumed > 0 {
                    format!(", {} resumed from an interrupted push", p.parts_resumed)
                } else {
                    String::new()
                }
            ));
        }
    }
    for (id, why) in &r.skipped {
        printer.warn(&format!("backup {id} not pushed: {}", escape_message(why)));
    }
    Ok(r)
}

async fn push(a: TargetArgs, rt: &Runtime, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let t = target(&a, "push")?;
    let r = push_and_report(rt, printer, t).await?;
    if a.json {
        printer.document(
            &PushDocument {
                pushed: r
                    .pushed
                    .iter()
                    .map(|p| PushedJson {
                        id: p.backup_id,
                        archive: p.archive.clone(),
                        size: p.size,
                        sha256: p.sha256.clone(),
                        parts_sent: p.parts_sent,
                        parts_resumed: p.parts_resumed,
                        already_there: p.already_there,
                    })
                    .collect(),
                skipped: r
                    .skipped
                    .iter()
                    .map(|(id, reason)| SkippedJson {
                        id: *id,
                        reason: reason.clone(),
                    })
                    .collect(),
                aborted_uploads: r.aborted.clone(),
            },
            None,
        );
    }
    Ok(ExitStatus::Success)
}

#[derive(Serialize)]
struct ListDocument {
    /// `s3://bucket/prefix`.
    remote: String,
    /// Newest first.
    backups: Vec<ListJson>,
    /// Sidecars on the remote that do not parse.
    invalid: Vec<InvalidJson>,
}

#[derive(Serialize)]
struct ListJson {
    /// The archive's file name (the object name under the prefix).
    archive: String,
    /// `local-only`, `remote-only`, `both` or `mismatch`.
    state: &'static str,
    /// Catalog ID; null when the catalog does not know it (run `reindex --remote`).
    id: Option<i64>,
    backup_type: Option<String>,
    /// UTC, `YYYY-MM-DD HH:MM:SS`.
    created_at: Option<String>,
    service_version: Option<String>,
    /// The local archive's size; null when it is not here.
    local_size: Option<u64>,
    /// Size recorded in the sidecar; null when not on the remote.
    remote_size: Option<u64>,
    sha256: Option<String>,
    remote_sha256: Option<String>,
    /// Why the state is `mismatch`.
    problem: Option<String>,
}

#[derive(Serialize)]
struct InvalidJson {
    key: String,
    error: String,
}

/// The sidecars on the remote that do not parse, as `remote list` and `reindex --remote`
/// report them.
fn invalid_json(invalid: &[(String, String)]) -> Vec<InvalidJson> {
    invalid
        .iter()
        .map(|(k, e)| InvalidJson {
            key: k.clone(),
            error: e.clone(),
        })
        .collect()
}

async fn list(a: JsonArgs, rt: &Runtime, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let r = rt.remote_list().await?;
    let rows: Vec<ListJson> = r
        .entries
        .iter()
        .map(|e| {
            let created = e
                .local
                .as_ref()
                .map(|b| b.record.created_at.format("%Y-%m-%d %H:%M:%S").to_string())
                .or_else(|| {
                    e.remote.as_ref().and_then(|s| {
                        chrono::DateTime::parse_from_rfc3339(&s.created_at)
                            .ok()
                            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    })
                });
            ListJson {
                archive: e.archive.clone(),
                state: e.state.as_str(),
                id: e.local.as_ref().map(|b| b.record.id),
                backup_type: e
                    .local
                    .as_ref()
                    .map(|b| b.record.backup_type.as_str().to_string())
                    .or_else(|| e.remote.as_ref().map(|s| s.backup_type.clone())),
                created_at: created,
                service_version: e
                    .local
                    .as_ref()
                    .map(|b| b.record.service_version.clone())
                    .or_else(|| e.remote.as_ref().map(|s| s.service_version.clone())),
                local_size: e.local.as_ref().and_then(|b| b.file_size),
                remote_size: e.remote.as_ref().map(|s| s.size),
                sha256: e.local.as_ref().and_then(|b| b.record.sha256.clone()),
                remote_sha256: e.remote.as_ref().map(|s| s.sha256.clone()),
                problem: e.problem.clone(),
            }
        })
        .collect();
    for (k, e) in &r.invalid {
        printer.warn(&format!(
            "remote sidecar {} is not valid: {}",
            escape_name(k),
            escape_message(e)
        ));
    }
    if a.json {
        printer.document(
            &ListDocument {
                remote: r.url.clone(),
                backups: rows,
                invalid: invalid_json(&r.invalid),
            },
            None,
        );
    } else {
        let mut table = vec![[
            "ID".to_string(),
            "STATE".into(),
            "CREATED (UTC)".into(),
            "TYPE".into(),
            "VERSION".into(),
            "SIZE".into(),
            "ARCHIVE".into(),
        ]];
        for row in &rows {
            table.push([
                row.id.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                row.state.to_string(),
                row.created_at.clone().unwrap_or_default(),
                row.backup_type.clone().unwrap_or_default(),
                row.service_version.clone().unwrap_or_default(),
                row.local_size
                    .or(row.remote_size)
                    .map(human_bytes)
                    .unwrap_or_default(),
                row.archive.clone(),
            ]);
        }
        printer.data(&render_table(&table));
        for row in rows.iter().filter(|r| r.problem.is_some()) {
            printer.warn(&format!(
                "{}: {}",
                escape_name(&row.archive),
                escape_message(row.problem.as_deref().unwrap_or_default())
            ));
        }
    }
    Ok(ExitStatus::Success)
}

#[derive(Serialize)]
struct PullDocument {
    backup: BackupJson,
}

async fn pull(a: PullArgs, rt: &Runtime, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let (renderer, progress) = Renderer::start(printer);
    let result = rt.remote_pull(&a.backup, progress.clone()).await;
    renderer.finish(progress).await;
    let entry = result?;
    printer.info(&format!(
        "backup {} is in {}",
        entry.record.id,
        entry.record.file_path.display()
    ));
    if a.json {
        printer.document(
            &PullDocument {
                backup: BackupJson::from(&entry),
            },
            None,
        );
    }
    Ok(ExitStatus::Success)
}

#[derive(Serialize)]
struct VerifyDocument {
    copies: Vec<VerifyJson>,
}

#[derive(Serialize)]
struct VerifyJson {
    archive: String,
    id: Option<i64>,
    size: u64,
    ok: bool,
    /// Whether the content was downloaded and hashed (`--download`).
    downloaded: bool,
    problems: Vec<String>,
}

async fn verify(a: VerifyArgs, rt: &Runtime, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let t = target(&a.target, "verify")?;
    let (renderer, progress) = Renderer::start(printer);
    let result = rt.remote_verify(t, a.download, progress.clone()).await;
    renderer.finish(progress).await;
    let results = result?;
    let ok = results.iter().all(|r| r.problems.is_empty());
    for r in &results {
        if r.problems.is_empty() {
            printer.info(&format!(
                "{}: ok{}",
                escape_name(&r.archive),
                if a.download {
                    " (downloaded and hashed)"
                } else {
                    ""
                }
            ));
        } else {
            printer.error(&format!(
                "{}: {}",
                escape_name(&r.archive),
                escape_message(&r.problems.join("; "))
            ));
        }
    }
    if a.target.json {
        printer.document(
            &VerifyDocument {
                copies: results
                    .iter()
                    .map(|r| VerifyJson {
                        archive: r.archive.clone(),
                        id: r.backup_id,
                        size: r.size,
                        ok: r.problems.is_empty(),
                        downloaded: r.downloaded_sha256.is_some(),
                        problems: r.problems.clone(),
                    })
                    .collect(),
            },
            (!ok)
                .then(|| {
                    crate::exit::Failure::new(
                        ExitStatus::Integrity,
                        "verification_failed",
                        "a remote copy does not match what was uploaded",
                    )
                })
                .as_ref(),
        );
    }
    Ok(if ok {
        ExitStatus::Success
    } else {
        ExitStatus::Integrity
    })
}

#[derive(Serialize)]
struct PruneDocument {
    dry_run: bool,
    decisions: Vec<DecisionJson>,
    deleted: Vec<String>,
    /// Copies that should have gone but the server refused to delete (object lock,
    /// write-only credentials), with its answer: reported, not a failure (exit 0).
    not_deleted: Vec<SkippedArchiveJson>,
    /// Copies whose delete failed otherwise (server error, network): the command fails.
    failed: Vec<SkippedArchiveJson>,
}

#[derive(Serialize)]
struct DecisionJson {
    archive: String,
    /// Catalog ID; null for copies the catalog does not know.
    id: Option<i64>,
    keep: bool,
    reasons: Vec<String>,
}

#[derive(Serialize)]
struct SkippedArchiveJson {
    archive: String,
    error: String,
}

async fn prune(a: PruneArgs, rt: &Runtime, printer: &Printer) -> anyhow::Result<ExitStatus> {
    let flags = KeepRules {
        keep_last: a.keep_last,
        keep_daily: a.keep_daily,
        keep_weekly: a.keep_weekly,
        keep_monthly: a.keep_monthly,
    };
    let rules = (!flags.is_empty()).then_some(flags);
    let r = rt.remote_prune(rules, a.dry_run).await?;
    for (name, d) in &r.decisions {
        printer.info(&format!(
            "{} {}: {}",
            if d.keep {
                "keep"
            } else if a.dry_run {
                "would delete"
            } else {
                "delete"
            },
            escape_name(name),
            escape_message(&d.reasons.join(", "))
        ));
    }
    for (name, e) in &r.not_deleted {
        printer.warn(&format!(
            "could not delete {} from the remote (kept): {}",
            escape_name(name),
            escape_message(e)
        ));
    }
    for (name, e) in &r.failed {
        printer.error(&format!(
            "deleting {} from the remote failed: {}",
            escape_name(name),
            escape_message(&e.to_string())
        ));
    }
    // Refusals are what an object-locked bucket or write-only credentials answer by design:
    // reported, exit 0. Any other failure fails the command, with its error's exit code.
    let status = r.failed.first().map_or(ExitStatus::Success, |(_, e)| {
        crate::exit::status_of_error(e)
    });
    if a.json {
        let failure = r.failed.first().map(|(name, e)| crate::exit::Failure {
            message: format!("deleting {name} from the remote failed: {e}"),
            ..crate::exit::Failure::of_error(e)
        });
        printer.document(
            &PruneDocument {
                failed: r
                    .failed
                    .iter()
                    .map(|(archive, e)| SkippedArchiveJson {
                        archive: archive.clone(),
                        error: e.to_string(),
                    })
                    .collect(),
                dry_run: a.dry_run,
                decisions: r
                    .decisions
                    .iter()
                    .map(|(name, d)| DecisionJson {
                        archive: name.clone(),
                        id: (d.id > 0).then_some(d.id),
                        keep: d.keep,
                        reasons: d.reasons.clone(),
                    })
                    .collect(),
                deleted: r.deleted.clone(),
                not_deleted: r
                    .not_deleted
                    .iter()
                    .map(|(archive, error)| SkippedArchiveJson {
                        archive: archive.clone(),
                        error: error.clone(),
                    })
                    .collect(),
            },
            failure.as_ref(),
        );
    }
    Ok(status)
}

#[derive(Serialize)]
struct ReindexRemoteDocument {
    /// Catalog entries added from remote copies (their archives stay remote until needed).
    added: Vec<BackupJson>,
    known: usize,
    invalid: Vec<InvalidJson>,
}

/// `reindex --remote`.
pub(crate) async fn reindex(
    json: bool,
    rt: &Runtime,
    printer: &Printer,
) -> anyhow::Result<ExitStatus> {
    let r = rt.reindex_remote().await?;
    for a in &r.added {
        printer.info(&format!(
            "added backup {} from the remote ({})",
            a.record.id,
            a.record.file_path.display()
        ));
    }
    for (k, e) in &r.invalid {
        printer.warn(&format!(
            "remote sidecar {} is not valid: {}",
            escape_name(k),
            escape_message(e)
        ));
    }
    printer.info(&format!(
        "{} added from the remote, {} already known, {} invalid",
        r.added.len(),
        r.known,
        r.invalid.len()
    ));
    if json {
        printer.document(
            &ReindexRemoteDocument {
                added: r.added.iter().map(BackupJson::from).collect(),
                known: r.known,
                invalid: invalid_json(&r.invalid),
            },
            None,
        );
    }
    Ok(ExitStatus::Success)
}

/// `push = "after-backup"`: pushes the backup just taken. The backup stays complete and kept
/// whatever happens; a failed push is reported (exit code of its error, message).
pub(crate) async fn after_backup(
    rt: &Runtime,
    printer: &Printer,
    id: i64,
) -> Option<crate::exit::Failure> {
    let remote = rt.settings().remote.as_ref()?;
    if remote.push != nuwax_actors::PushMode::AfterBackup {
        return None;
    }
    match push_and_report(rt, printer, RemoteTarget::One(id)).await {
        Ok(_) => None,
        Err(e) => {
            let mut failure = crate::exit::Failure::of(&e);
            failure.message = format!(
                "backup {id} is complete and kept here, but its offsite copy failed: {}",
                failure.message
            );
            printer.error(&failure.message);
            Some(failure)
        }
    }
}
