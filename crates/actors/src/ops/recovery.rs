//! Start-up recovery of operations whose process died (kill -9, power loss, OOM).
//!
//! Design note: runs only while holding the operation lock, so every journal row still in
//! state `running` belongs to a dead process. Each kind is finished or reverted so that live
//! data and the catalog are either as before or as intended:
//! - backup: the `.partial` is removed; an archive already renamed to its final name is
//!   verified and its row completed, or removed and the row marked failed;
//! - rollback: an unfinished swap is reverted item by item (each item wholly old), a committed
//!   one is cleaned up and its services started (a `cleaning` one, whose services were
//!   already started, is only cleaned up); the work dir is removed;
//! - any kind: containers the operation stopped are started again;
//! - database dump work files in the storage dir (`.nuwax-dumps-*`, `.nuwax-restore-dump-*`)
//!   are removed: a process killed while it dumped or loaded leaves them.
//!
//! Every step is idempotent, so a crash during recovery is recovered by the next run.
//!
//! A recovery that cannot finish *blocks*: when an operation's files cannot be reverted or
//! finished (a unit's live item and its saved copy both exist, a journal that names paths
//! outside the compose dir, an I/O error), the operation stays `running` in the journal and
//! [`Blocked`] is returned; `Runtime::start` then refuses every mutating command (exit 3)
//! until `nuwax-cli recover` resolves it, and read-only commands warn. Only a failure to
//! restart containers (Docker) is soft: noted, and retried by the next run.
//!
//! Every path a journal holds is checked before use (`SwapPlan::checked`,
//! `restore::checked_work_dir`, `storage_archive_path`): the catalog is input like any other.

use chrono::Utc;
use nuwax_store::{BackupCompletion, BackupStatus, Operation, OperationKind, OperationState};

use super::backup::BackupJournal;
use super::rollback::RollbackJournal;
use super::{Ctx, rollback, services, upgrade};
use crate::actors::archive_actor::ArchiveMsg;
use crate::actors::store_actor::StoreMsg;
use crate::archive::CancelFlag;
use crate::error::Error;
use crate::error::Result;
use crate::fsutil;
use crate::lock::pid_alive;
use crate::progress::Progress;
use crate::restore;

/// An interrupted operation that recovery could not finish or revert.
#[derive(Debug)]
pub struct Blocked {
    pub op_id: i64,
    pub kind: OperationKind,
    pub pid: u32,
    pub phase: String,
    pub error: Error,
}

impl Blocked {
    /// The refusal every mutating command gets while this operation is blocked (exit 3).
    pub(crate) fn refusal(&self) -> Error {
        match &self.error {
            Error::SwapConflict {
                work_dir,
                conflicts,
            } => Error::SwapConflict {
                work_dir: work_dir.clone(),
                conflicts: conflicts.clone(),
            },
            e => Error::Refused(format!(
                "an interrupted {} operation ({}, pid {}, phase '{}') could not be finished or undone: {e}. Nothing else is done until it is: fix the cause and run any nuwax-cli command again, or run `nuwax-cli recover` to see the state",
                self.kind.as_str(),
                self.op_id,
                self.pid,
                self.phase
            )),
        }
    }
}

/// What start-up recovery did.
#[derive(Debug, Default)]
pub struct RecoveryOutcome {
    pub notes: Vec<String>,
    pub blocked: Vec<Blocked>,
}

/// Docker failures (restarting containers) are retried by the next run without blocking.
fn is_soft(e: &Error) -> bool {
    matches!(e, Error::Docker(_) | Error::DockerUnreachable { .. })
}

/// A blocked operation as the `recover` command shows it.
#[derive(Debug, Clone)]
pub struct BlockedInfo {
    pub operation_id: i64,
    pub kind: String,
    pub pid: u32,
    pub phase: String,
    /// Why recovery could not finish it, and what to do.
    pub message: String,
    /// (live item, saved copy) pairs that a revert cannot choose between.
    pub conflicts: Vec<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Which copy `recover` keeps where a unit's live item and its saved copy both exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Keep what is live now; the saved copy is set aside.
    Live,
    /// Put the saved copy back; the live item is set aside.
    Saved,
}

/// Interrupted operations that start-up recovery could not finish or revert.
pub(crate) fn blocked_operations(blocked: &[Blocked]) -> Vec<BlockedInfo> {
    blocked
        .iter()
        .map(|b| BlockedInfo {
            operation_id: b.op_id,
            kind: b.kind.as_str().to_owned(),
            pid: b.pid,
            phase: b.phase.clone(),
            message: b.refusal().to_string(),
            conflicts: match &b.error {
                Error::SwapConflict { conflicts, .. } => conflicts.clone(),
                _ => Vec::new(),
            },
        })
        .collect()
}

/// Resolves blocked operations: where a live item and its saved copy both exist, the one
/// not kept is moved (never deleted) into `<compose dir>/.nuwax-kept-<op>/`, then recovery
/// runs again. Returns what was done; an operation still blocked is an error.
pub(crate) async fn resolve_blocked(
    ctx: &Ctx,
    blocked: &[Blocked],
    keep: Keep,
) -> Result<Vec<String>> {
    let compose_dir = ctx.settings.paths.compose_dir.clone();
    let mut notes = Vec::new();
    let unfinished = ctx.store(StoreMsg::UnfinishedOperations).await?;
    for b in blocked {
        if !matches!(b.error, Error::SwapConflict { .. }) {
            continue;
        }
        let Some(op) = unfinished.iter().find(|o| o.id == b.op_id) else {
            continue;
        };
        let plan: restore::SwapPlan = op
            .details
            .get("plan")
            .cloned()
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or_else(|| {
                Error::Refused(format!(
                    "operation {} has no readable swap plan in its journal; rebuild the catalog with `nuwax-cli reindex` after checking {}",
                    op.id,
                    compose_dir.display()
                ))
            })?;
        let plan = plan.checked(&compose_dir)?;
        let mut keep_dir = compose_dir.join(format!(".nuwax-kept-{}", op.id));
        let mut n = 1;
        while std::fs::symlink_metadata(&keep_dir).is_ok() {
            n += 1;
            keep_dir = compose_dir.join(format!(".nuwax-kept-{}-{n}", op.id));
        }
        let set_aside = ctx
            .swap_resolve(&plan, keep == Keep::Live, &keep_dir)
            .await?;
        for p in set_aside {
            notes.push(format!(
                "operation {}: {} copy set aside as {} (not deleted: look at it, then remove it yourself)",
                op.id,
                if keep == Keep::Live { "the saved" } else { "the live" },
                p.display()
            ));
        }
    }
    let outcome = recover(ctx).await?;
    notes.extend(outcome.notes);
    if let Some(b) = outcome.blocked.first() {
        return Err(b.refusal());
    }
    Ok(notes)
}

/// Finishes or reverts what dead processes left; returns notes for the operator.
pub(crate) async fn recover(ctx: &Ctx) -> Result<RecoveryOutcome> {
    let mut out = RecoveryOutcome::default();
    let notes = &mut out.notes;
    let ops = ctx.store(StoreMsg::UnfinishedOperations).await?;
    for op in ops {
        if op.pid != std::process::id() && pid_alive(op.pid, &op.boot_id) && !ctx.holds_lock {
            continue;
        }
        let note = match op.kind {
            OperationKind::Backup => recover_backup(ctx, &op).await,
            OperationKind::Rollback => recover_rollback(ctx, &op).await,
            OperationKind::Upgrade => upgrade::recover_upgrade(ctx, &op).await,
            OperationKind::Drill => super::drill::recover_drill(ctx, &op).await,
            _ => recover_generic(ctx, &op).await,
        };
        match note {
            Ok(n) => {
                ctx.store(|r| {
                    StoreMsg::FinishOperation(
                        op.id,
                        OperationState::Recovered,
                        Some(n.clone()),
                        r,
                    )
                })
                .await?;
                notes.push(n);
            }
            Err(e) if is_soft(&e) => notes.push(format!(
                "could not recover interrupted {} operation {} (pid {}): {e}; will retry on the next run",
                op.kind.as_str(),
                op.id,
                op.pid
            )),
            Err(error) => out.blocked.push(Blocked {
                op_id: op.id,
                kind: op.kind,
                pid: op.pid,
                phase: op.phase.clone(),
                error,
            }),
        }
    }
    // Rows still Running whose owner is dead and that no journal explains.
    for rec in ctx.store(StoreMsg::ListBackups).await? {
        if rec.status == BackupStatus::Running
            && rec.owner_pid.is_none_or(|p| p != std::process::id())
        {
            let msg = format!(
                "interrupted: process {} died during the backup",
                rec.owner_pid.unwrap_or(0)
            );
            ctx.store(|r| StoreMsg::FailBackup(rec.id, msg, r)).await?;
            if let Ok(dest) = ctx.storage_archive_path(&rec.file_path) {
                let _ = restore::remove_path(&fsutil::partial_path(&dest));
            }
            notes.push(format!(
                "backup {} was left running by a dead process; marked Failed",
                rec.id
            ));
        }
    }
    // Partial archives no journal row explains (should not exist; be thorough).
    if let Ok(rd) = std::fs::read_dir(&ctx.settings.paths.storage_dir) {
        for e in rd.flatten() {
            // `<name>.tar.gz.partial`: an unfinished archive.
            let path = e.path();
            if fsutil::is_partial(&path)
                && path
                    .with_extension("")
                    .to_str()
                    .is_some_and(crate::encryption::is_archive_name)
                && e.file_type().is_ok_and(|t| t.is_file())
            {
                let _ = std::fs::remove_file(&path);
                notes.push(format!(
                    "removed an incomplete archive left behind: {}",
                    path.display()
                ));
            } else if let Some(what) = dump_leftover(&e.file_name().to_string_lossy()) {
                // Under the lock no live process owns one: the backup or restore-dump that
                // made it died (kill -9) before its own cleanup ran.
                notes.push(match fsutil::remove_path(&path) {
                    Ok(()) => format!("removed {what} left behind: {}", path.display()),
                    Err(err) => format!(
                        "warning: cannot remove {what} left behind ({}): {err}; remove it yourself",
                        path.display()
                    ),
                });
            }
        }
    }
    Ok(out)
}

/// What a storage dir entry named `name` is, when it is a database dump work file that only a
/// dead process can have left: a backup's dump dir (`.nuwax-dumps-<pid>-<time>`, see
/// `ops/dumps.rs`) or `restore-dump`'s copy of a dump (`.nuwax-restore-dump-<pid>-<service>.sql`).
fn dump_leftover(name: &str) -> Option<&'static str> {
    if name.starts_with(super::dumps::WORK_DIR_PREFIX) {
        Some("the database dumps of an interrupted backup")
    } else if name.starts_with(super::dumps::RESTORE_FILE_PREFIX) {
        Some("the dump copy of an interrupted restore-dump")
    } else {
        None
    }
}

pub(crate) async fn recover_backup(ctx: &Ctx, op: &Operation) -> Result<String> {
    let j: BackupJournal = serde_json::from_value(op.details.clone()).map_err(|e| {
        crate::error::Error::Internal(format!("unreadable journal of operation {}: {e}", op.id))
    })?;
    let dest = ctx.storage_archive_path(&j.dest)?;
    let partial = fsutil::partial_path(&dest);
    if j.partial != partial {
        return Err(Error::UnsafePath {
            what: "journaled partial archive",
            path: j.partial.clone(),
            reason: format!("it is not {}", partial.display()),
        });
    }
    restore::remove_path(&partial)?;
    let mut what = format!(
        "backup interrupted (pid {} died in phase '{}')",
        op.pid, op.phase
    );
    if let Some(id) = j.backup_id.or(op.backup_id) {
        let rec = ctx.store(|r| StoreMsg::GetBackup(id, r)).await?;
        if let Some(rec) = rec.filter(|r| r.status == BackupStatus::Running) {
            let mut completed = false;
            if dest.exists() {
                // Renamed before the catalog was updated: keep it only if it verifies.
                let report = ctx
                    .archive(|r| ArchiveMsg::Verify {
                        path: dest.clone(),
                        expected_sha256: None,
                        manifest: None,
                        key: None,
                        progress: Progress::none(),
                        cancel: CancelFlag::default(),
                        reply: r,
                    })
                    .await;
                match report {
                    Ok(rep) if rep.is_ok() => {
                        ctx.store(|r| {
                            StoreMsg::CompleteBackup(
                                id,
                                BackupCompletion {
                                    size: rep.size,
                                    sha256: rep.sha256.clone(),
                                    entry_count: rep.entries,
                                    finished_at: Utc::now(),
                                },
                                r,
                            )
                        })
                        .await?;
                        completed = true;
                        what.push_str(&format!(
                            "; its archive was complete and verified: backup {id} kept"
                        ));
                    }
                    _ => restore::remove_path(&dest)?,
                }
            }
            if !completed {
                let msg = format!(
                    "interrupted: process {} died during the backup (phase '{}')",
                    op.pid, op.phase
                );
                ctx.store(|r| StoreMsg::FailBackup(id, msg, r)).await?;
                what.push_str(&format!(
                    "; backup {id} marked Failed and its partial archive removed (was {})",
                    rec.file_path.display()
                ));
            }
        }
    }
    what.push_str(&services::restart_stopped(ctx, &j.stopped).await?);
    Ok(what)
}

pub(crate) async fn recover_rollback(ctx: &Ctx, op: &Operation) -> Result<String> {
    let j: RollbackJournal = serde_json::from_value(op.details.clone()).map_err(|e| {
        crate::error::Error::Internal(format!("unreadable journal of operation {}: {e}", op.id))
    })?;
    let compose_dir = &ctx.settings.paths.compose_dir;
    let plan = j.plan.clone().map(|p| p.checked(compose_dir)).transpose()?;
    let committed = op.phase == "committed";
    // The services were started (or left stopped, as asked): only the removal is left.
    let cleaning = op.phase == "cleaning";
    let mut what = match (op.phase.as_str(), &plan) {
        ("swapping", Some(plan)) => {
            ctx.swap_revert(plan).await?;
            format!(
                "rollback to backup {} was interrupted (pid {} died while swapping); the swap was undone, the live files are as before",
                j.backup_id, op.pid
            )
        }
        ("committed" | "cleaning", Some(plan)) => {
            ctx.swap_commit(plan).await?;
            let mut what = format!(
                "rollback to backup {} had completed when pid {} died; {}",
                j.backup_id,
                op.pid,
                if cleaning {
                    "the replaced files it was removing were removed"
                } else {
                    "cleaned up"
                }
            );
            match rollback::record_version(ctx, &j) {
                Some(rollback::VersionUpdate::Written { version, .. }) => what.push_str(&format!(
                    "; config.toml [versions] docker_service set to {version}"
                )),
                Some(rollback::VersionUpdate::Failed { version, error }) => what.push_str(
                    &format!("; config.toml could not be set to version {version}: {error}"),
                ),
                _ => {}
            }
            what
        }
        _ => {
            if !j.work_dir.as_os_str().is_empty() {
                ctx.remove_tree(&restore::checked_work_dir(compose_dir, &j.work_dir)?)
                    .await?;
            }
            format!(
                "rollback to backup {} was interrupted before changing anything (pid {} died in phase '{}'); its staging dir was removed",
                j.backup_id, op.pid, op.phase
            )
        }
    };
    if committed {
        // The restored files are live: the containers must match them (recreated when the
        // compose file, .env or an env_file changed), exactly as the rollback would have.
        if !j.stopped.is_empty() {
            rollback::start_after_rollback(ctx, &j, &Progress::none()).await?;
            let names: Vec<_> = j.stopped.iter().map(|c| c.name.as_str()).collect();
            what.push_str(&format!("; started {} again", names.join(", ")));
        }
    } else if !cleaning {
        what.push_str(&services::restart_stopped(ctx, &j.stopped).await?);
    }
    Ok(what)
}

pub(crate) async fn recover_generic(ctx: &Ctx, op: &Operation) -> Result<String> {
    let stopped: Vec<crate::docker::ContainerInfo> = op
        .details
        .get("stopped")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let mut what = format!(
        "{} operation {} was interrupted (pid {} died in phase '{}')",
        op.kind.as_str(),
        op.id,
        op.pid,
        op.phase
    );
    what.push_str(&services::restart_stopped(ctx, &stopped).await?);
    Ok(what)
}
