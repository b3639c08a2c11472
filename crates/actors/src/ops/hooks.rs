//! `[hooks]` and `[notify]` around `backup`, `auto-backup run`, `rollback` and
//! `rollback-data-only`: the operations themselves know nothing of them.
//!
//! Design note: the pre hook (`pre_backup`, `pre_rollback`) runs first, before anything is
//! checked, stopped or written; if it fails the operation does not run (exit 1, the message
//! names the hook and its exit status). After the operation: `post_backup` /
//! `post_rollback` on success, `on_failure` on failure (not after an interruption: the
//! operator asked to stop now), then the notification. What runs after the operation never
//! changes its result: a failing post hook, `on_failure` or notification is reported as an
//! error line on stderr (also under `--quiet`) and the operation's exit code stays.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use super::Ctx;
use super::auto_backup::AutoBackupReport;
use super::backup::BackupRequest;
use super::rollback::{RollbackReport, RollbackRequest, RollbackScope};
use super::{BackupEntry, auto_backup, backup, rollback};
use crate::archive::CancelFlag;
use crate::error::{Error, Result};
use crate::hook::{HookCommand, HookRun};
use crate::notify::{Notification, Status};
use crate::progress::Progress;

/// What the hooks and the notification are told about an operation.
#[derive(Debug, Clone)]
struct Outcome {
    status: Status,
    backup_id: Option<i64>,
    archive: Option<PathBuf>,
    error: Option<String>,
}

impl Outcome {
    fn failed(e: &Error, backup_id: Option<i64>, archive: Option<PathBuf>) -> Outcome {
        Outcome {
            status: if matches!(e, Error::Interrupted) {
                Status::Interrupted
            } else {
                Status::Failed
            },
            backup_id,
            archive,
            error: Some(e.to_string()),
        }
    }

    fn succeeded(backup_id: Option<i64>, archive: Option<PathBuf>) -> Outcome {
        Outcome {
            status: Status::Success,
            backup_id,
            archive,
            error: None,
        }
    }

    fn of_entry(entry: &BackupEntry) -> (Option<i64>, Option<PathBuf>) {
        (Some(entry.record.id), Some(entry.record.file_path.clone()))
    }
}

/// One operation under hooks: its name and which hooks it has.
struct Hooked<'a> {
    /// `backup`, `auto-backup`, `rollback`, `rollback-data-only`.
    operation: &'static str,
    pre: (&'static str, Option<&'a HookCommand>),
    post: (&'static str, Option<&'a HookCommand>),
    /// What is known before it runs (a rollback's backup).
    before: (Option<i64>, Option<PathBuf>),
    /// `NUWAX_SCOPE` of a rollback.
    scope: Option<RollbackScope>,
}

impl<'a> Hooked<'a> {
    /// A backup (`backup` or `auto-backup`) under `pre_backup` / `post_backup`.
    fn backup(operation: &'static str, ctx: &'a Ctx) -> Self {
        let hooks = &ctx.settings.config.hooks;
        Hooked {
            operation,
            pre: ("pre_backup", hooks.pre_backup.as_ref()),
            post: ("post_backup", hooks.post_backup.as_ref()),
            before: (None, None),
            scope: None,
        }
    }
}

/// `backup` under `pre_backup` / `post_backup` / `on_failure` and `[notify]`.
pub(crate) async fn backup(
    ctx: &Ctx,
    req: BackupRequest,
    progress: Progress,
) -> Result<BackupEntry> {
    around(
        ctx,
        Hooked::backup("backup", ctx),
        &progress,
        backup::backup(ctx, req, progress.clone()),
        |r| match r {
            Ok(entry) => {
                let (id, archive) = Outcome::of_entry(entry);
                Outcome::succeeded(id, archive)
            }
            Err(e) => Outcome::failed(e, None, None),
        },
    )
    .await
}

/// `auto-backup run` under the backup hooks: `pre_backup` before anything is stopped,
/// `post_backup` once the services run again.
pub(crate) async fn auto_backup(
    ctx: &Ctx,
    hot: bool,
    drill: bool,
    progress: Progress,
) -> Result<AutoBackupReport> {
    around(
        ctx,
        Hooked::backup("auto-backup", ctx),
        &progress,
        auto_backup::auto_backup(ctx, hot, drill, progress.clone()),
        |r| match r {
            Ok(report) => {
                let (id, archive) = report
                    .backup
                    .as_ref()
                    .map_or((None, None), Outcome::of_entry);
                match report.error() {
                    None => Outcome::succeeded(id, archive),
                    Some(e) => Outcome {
                        error: Some(report.error_text()),
                        ..Outcome::failed(e, id, archive)
                    },
                }
            }
            Err(e) => Outcome::failed(e, None, None),
        },
    )
    .await
}

/// `rollback` / `rollback-data-only` under `pre_rollback` / `post_rollback` / `on_failure`.
/// A restore whose services did not start again is a failure here as for the exit code.
pub(crate) async fn rollback(
    ctx: &Ctx,
    req: RollbackRequest,
    progress: Progress,
) -> Result<RollbackReport> {
    let hooks = &ctx.settings.config.hooks;
    let archive = match ctx.get_backup(req.id).await {
        Ok(entry) => Some(entry.record.file_path),
        Err(_) => None,
    };
    let id = req.id;
    let hooked = Hooked {
        operation: match req.scope {
            RollbackScope::DataOnly => "rollback-data-only",
            _ => "rollback",
        },
        pre: ("pre_rollback", hooks.pre_rollback.as_ref()),
        post: ("post_rollback", hooks.post_rollback.as_ref()),
        before: (Some(id), archive.clone()),
        scope: Some(req.scope),
    };
    around(
        ctx,
        hooked,
        &progress,
        rollback::rollback(ctx, req, progress.clone()),
        |r| match r {
            Ok(report) => Outcome {
                status: if report.start_error.is_some() {
                    Status::Failed
                } else {
                    Status::Success
                },
                backup_id: Some(id),
                archive: archive.clone(),
                error: report.start_error.as_ref().map(|e| {
                    format!("the restore succeeded but starting the services failed: {e}")
                }),
            },
            Err(e) => Outcome::failed(e, Some(id), archive.clone()),
        },
    )
    .await
}

async fn around<T>(
    ctx: &Ctx,
    hooked: Hooked<'_>,
    progress: &Progress,
    run: impl Future<Output = Result<T>>,
    outcome: impl FnOnce(&Result<T>) -> Outcome,
) -> Result<T> {
    let on_failure = ctx.settings.config.hooks.on_failure.as_ref();
    if let (name, Some(command)) = hooked.pre {
        let before = Outcome {
            status: Status::Running,
            backup_id: hooked.before.0,
            archive: hooked.before.1.clone(),
            error: None,
        };
        let ran = run_hook(ctx, &hooked, name, command, &before, &ctx.cancel, progress).await;
        if let Err(e) = ran {
            let e = match e {
                Error::Hook(m) => Error::Hook(format!(
                    "{m}; the {} did not start: nothing was stopped or changed",
                    hooked.operation
                )),
                other => other,
            };
            if hooked.operation == "auto-backup" {
                // `auto-backup status` tells this run from the last one that ran.
                let status = auto_backup::AutoBackupStatus {
                    last_run: Some(
                        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    ),
                    last_result: Some("failed".into()),
                    last_error: Some(e.to_string()),
                    ..Default::default()
                };
                if let Err(se) = auto_backup::save_status(ctx, &status).await {
                    progress.notice(format!("warning: cannot record the failed run: {se}"));
                }
            }
            let after = Outcome::failed(&e, before.backup_id, before.archive);
            after_operation(ctx, &hooked, on_failure, &after, progress).await;
            return Err(e);
        }
    }
    let result = run.await;
    let after = outcome(&result);
    let next = match after.status {
        Status::Success => hooked.post.1.map(|c| (hooked.post.0, c)),
        _ => None,
    };
    if let Some((name, command)) = next
        && let Err(e) = run_hook(ctx, &hooked, name, command, &after, &ctx.cancel, progress).await
    {
        progress.notice(format!(
            "error: {e} (the {} itself succeeded; its result is unchanged)",
            hooked.operation
        ));
    }
    after_operation(ctx, &hooked, on_failure, &after, progress).await;
    result
}

/// `on_failure` (after a failure that was not an interruption), then the notification.
async fn after_operation(
    ctx: &Ctx,
    hooked: &Hooked<'_>,
    on_failure: Option<&HookCommand>,
    after: &Outcome,
    progress: &Progress,
) {
    if after.status == Status::Failed
        && let Some(command) = on_failure
        && let Err(e) = run_hook(
            ctx,
            hooked,
            "on_failure",
            command,
            after,
            &ctx.cancel,
            progress,
        )
        .await
    {
        progress.notice(format!("error: {e}"));
    }
    notify(ctx, hooked, after, progress).await;
}

/// The `NUWAX_*` environment of a hook.
fn environment(ctx: &Ctx, hooked: &Hooked<'_>, hook: &str, o: &Outcome) -> Vec<(String, String)> {
    let text = |v: &str| v.to_owned();
    let mut env = vec![
        ("NUWAX_OPERATION".into(), text(hooked.operation)),
        ("NUWAX_HOOK".into(), text(hook)),
        ("NUWAX_STATUS".into(), text(o.status.as_str())),
        (
            "NUWAX_BACKUP_ID".into(),
            o.backup_id.map(|i| i.to_string()).unwrap_or_default(),
        ),
        (
            "NUWAX_ARCHIVE".into(),
            o.archive
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        ),
        ("NUWAX_ERROR".into(), o.error.clone().unwrap_or_default()),
        (
            "NUWAX_WORK_DIR".into(),
            ctx.settings.paths.work_dir.display().to_string(),
        ),
    ];
    if let Some(scope) = hooked.scope {
        let name = serde_json::to_value(scope)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        env.push(("NUWAX_SCOPE".into(), name));
    }
    env
}

async fn run_hook(
    ctx: &Ctx,
    hooked: &Hooked<'_>,
    name: &str,
    command: &HookCommand,
    o: &Outcome,
    cancel: &CancelFlag,
    progress: &Progress,
) -> Result<()> {
    let env = environment(ctx, hooked, name, o);
    progress.notice(format!("running the {name} hook: {}", command.display()));
    crate::hook::run(
        HookRun {
            name,
            command,
            env: &env,
            stdin: None,
            timeout: Duration::from_secs(ctx.settings.config.hooks.timeout),
            cwd: &ctx.settings.paths.work_dir,
        },
        cancel,
        progress,
    )
    .await
}

/// Sends the notification `[notify] on` asks for; a failure is an error line, never the
/// operation's result. Runs also after an interruption (with its own timeout).
async fn notify(ctx: &Ctx, hooked: &Hooked<'_>, o: &Outcome, progress: &Progress) {
    let cfg = &ctx.settings.config.notify;
    if !cfg.configured() || !cfg.wants(o.status) {
        return;
    }
    let note = Notification {
        operation: hooked.operation.to_owned(),
        status: o.status,
        backup_id: o.backup_id,
        archive: o.archive.as_ref().map(|p| p.display().to_string()),
        error: o.error.clone(),
        host: crate::notify::host_name(),
        time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        work_dir: ctx.settings.paths.work_dir.display().to_string(),
        tool: format!("nuwax-cli {}", env!("CARGO_PKG_VERSION")),
    };
    let body = serde_json::to_vec(&note).unwrap_or_default();
    let timeout = Duration::from_secs(cfg.timeout);
    if let Some(url) = &cfg.webhook {
        match crate::notify::post_webhook(url, body.clone(), timeout, cfg.attempts).await {
            Ok(()) => progress.notice(format!("notified {}", url_host(url))),
            Err(e) => progress.notice(format!(
                "error: the notification of this {} to the webhook at {} failed: {e}; the {}'s result is unchanged",
                hooked.operation,
                url_host(url),
                hooked.operation
            )),
        }
    }
    if let Some(command) = &cfg.command {
        let env = environment(ctx, hooked, "notify", o);
        let ran = crate::hook::run(
            HookRun {
                name: "notify",
                command,
                env: &env,
                stdin: Some(body),
                timeout,
                cwd: &ctx.settings.paths.work_dir,
            },
            // Its own flag: a notification of an interruption is still sent.
            &CancelFlag::default(),
            progress,
        )
        .await;
        if let Err(e) = ran {
            progress.notice(format!(
                "error: the notification command failed: {e}; the {}'s result is unchanged",
                hooked.operation
            ));
        }
    }
}

/// `scheme://host:port` of a webhook URL: its path and query may hold a token, never shown.
fn url_host(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "(invalid URL)".into(),
    }
}
