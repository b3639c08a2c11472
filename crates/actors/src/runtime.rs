//! The facade the CLI talks to: it starts the actors and start-up recovery, holds the
//! operation lock, and delegates each operation to its module in `ops/` in one line.

use std::path::Path;

use ractor::{Actor, ActorRef};

use crate::actors::supervisor::{Supervisor, SupervisorArgs, SupervisorMsg};
use crate::archive::{CancelFlag, VerifyReport};
use crate::config::Settings;
use crate::docker::{ComposeProject, GateReport};
use crate::error::{Error, IoContext, Result};
use crate::lock::OperationLock;
use crate::ops::auto_backup::{AutoBackupReport, AutoBackupStatus};
use crate::ops::backup::BackupRequest;
use crate::ops::drill::{DrillReport, DrillRequest};
use crate::ops::dumps::RestoreDumpReport;
use crate::ops::inspect::{
    DiffReport, DiffRequest, LsReport, LsRequest, RestoreReport, RestoreRequest, RollbackPlan,
};
use crate::ops::maintenance::{DeleteReport, ReindexReport};
use crate::ops::recovery::{Blocked, BlockedInfo, Keep};
use crate::ops::remote::{
    PushReport, RemoteList, RemotePruneReport, RemoteReindexReport, RemoteTarget,
    RemoteVerifyResult,
};
use crate::ops::rollback::{RollbackReport, RollbackRequest, RollbackScope};
use crate::ops::services::{ServiceStatus, StartReport};
use crate::ops::upgrade::{UpgradeReport, UpgradeRequest};
use crate::ops::{self, BackupEntry, Ctx};
use crate::progress::Progress;
use crate::retention::{Decision, KeepRules};

/// How the CLI starts the runtime.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// The command line being run (recorded in the lock file).
    pub command: String,
    /// Takes the operation lock for the whole process (backup, rollback, delete...).
    pub mutating: bool,
    /// The `recover` command: starts even when an interrupted operation is blocked.
    pub resolving: bool,
    /// Move an unusable catalog aside to `<db>.broken-<time>` and start a fresh one (only
    /// `reindex --move-broken-catalog`; never done silently).
    pub move_broken_catalog: bool,
    /// The flag the CLI's signal handlers set (installed before the runtime starts, so a
    /// signal during start-up recovery is not lost either).
    pub cancel: CancelFlag,
}

pub struct Runtime {
    ctx: Ctx,
    supervisor: ActorRef<SupervisorMsg>,
    supervisor_task: tokio::task::JoinHandle<()>,
    lock: Option<OperationLock>,
    notes: Vec<String>,
    /// Interrupted operations recovery could not finish (see `ops/recovery.rs`).
    blocked: Vec<Blocked>,
}

impl Runtime {
    /// Opens the catalog, starts the actors, and recovers operations left behind by a dead
    /// process (when no live process holds the lock). While an interrupted operation cannot
    /// be finished or undone, mutating commands are refused (exit 3) and read-only ones warn.
    pub async fn start(settings: Settings, opts: RuntimeOptions) -> Result<Runtime> {
        let data_dir = settings
            .paths
            .db_file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        // A read-only command where there is no catalog (not a working dir, or nothing done
        // yet) creates nothing: no `data/`, no catalog, no lock file. There is nothing to
        // recover either.
        let no_catalog = !opts.mutating
            && matches!(
                std::fs::symlink_metadata(&settings.paths.db_file),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound
            );
        if !no_catalog {
            std::fs::create_dir_all(&data_dir).ctx("cannot create catalog directory", &data_dir)?;
        }
        let lock = if opts.mutating {
            Some(OperationLock::acquire(
                &settings.paths.lock_file,
                &opts.command,
            )?)
        } else if no_catalog {
            None
        } else {
            // Read-only commands recover too, but only when nobody is mid-operation.
            OperationLock::acquire(&settings.paths.lock_file, &opts.command).ok()
        };
        let (supervisor, supervisor_task) = Actor::spawn(
            None,
            Supervisor,
            SupervisorArgs {
                db_file: settings.paths.db_file.clone(),
                move_broken_catalog: opts.mutating && opts.move_broken_catalog,
                remote: settings.remote.clone(),
                read_only: !opts.mutating,
            },
        )
        .await
        .map_err(|e| Error::Internal(format!("cannot start actors: {e}")))?;
        let ctx = Ctx::new(
            settings,
            opts.cancel.clone(),
            lock.is_some(),
            supervisor.clone(),
        );
        let mut rt = Runtime {
            ctx,
            supervisor,
            supervisor_task,
            lock,
            notes: Vec::new(),
            blocked: Vec::new(),
        };
        if let Some(lock) = &rt.lock
            && let Some(prev) = &lock.taken_over_from
        {
            rt.notes.push(format!(
                "the previous operation (pid {}, `{}`, started {}) ended without releasing the lock; it was taken over",
                prev.pid, prev.command, prev.started
            ));
        }
        if rt.lock.is_some() {
            let outcome = ops::recovery::recover(&rt.ctx).await?;
            rt.notes.extend(outcome.notes);
            rt.blocked = outcome.blocked;
        }
        if let Some(b) = rt.blocked.first()
            && !opts.resolving
        {
            if opts.mutating {
                let err = b.refusal();
                rt.shutdown().await;
                return Err(err);
            }
            for b in &rt.blocked {
                rt.notes.push(format!("warning: {}", b.refusal()));
            }
        }
        if !opts.mutating {
            rt.lock = None;
            rt.ctx.holds_lock = false;
        }
        Ok(rt)
    }

    pub fn settings(&self) -> &Settings {
        &self.ctx.settings
    }

    /// Set it (from a signal handler) to interrupt the running operation cleanly.
    pub fn cancel_flag(&self) -> CancelFlag {
        self.ctx.cancel.clone()
    }

    /// What start-up recovery did, for the operator to read.
    pub fn recovery_notes(&self) -> &[String] {
        &self.notes
    }

    pub async fn shutdown(self) {
        self.supervisor.stop(None);
        let _ = self.supervisor_task.await;
        drop(self.lock);
    }

    // One-line delegations, grouped by operation module.

    /// All catalog rows, newest first.
    pub async fn list_backups(&self) -> Result<Vec<BackupEntry>> {
        self.ctx.list_backups().await
    }

    pub async fn get_backup(&self, id: i64) -> Result<BackupEntry> {
        self.ctx.get_backup(id).await
    }

    pub async fn gate(&self, compose: &ComposeProject, progress: &Progress) -> Result<GateReport> {
        ops::backup::gate(&self.ctx, compose, progress).await
    }

    pub async fn backup(&self, req: BackupRequest, progress: Progress) -> Result<BackupEntry> {
        ops::hooks::backup(&self.ctx, req, progress).await
    }

    pub async fn rollback(
        &self,
        req: RollbackRequest,
        progress: Progress,
    ) -> Result<RollbackReport> {
        ops::hooks::rollback(&self.ctx, req, progress).await
    }

    /// What `rollback --dry-run` would do; touches nothing.
    pub async fn rollback_plan(
        &self,
        id: i64,
        scope: RollbackScope,
        progress: Progress,
    ) -> Result<RollbackPlan> {
        ops::inspect::rollback_plan(&self.ctx, id, scope, progress).await
    }

    pub async fn ls(&self, req: LsRequest, progress: Progress) -> Result<LsReport> {
        ops::inspect::ls(&self.ctx, req, progress).await
    }

    pub async fn diff(&self, req: DiffRequest, progress: Progress) -> Result<DiffReport> {
        ops::inspect::diff(&self.ctx, req, progress).await
    }

    /// Copies chosen paths of a backup into a separate directory; never into live data.
    pub async fn restore_to(
        &self,
        req: RestoreRequest,
        progress: Progress,
    ) -> Result<RestoreReport> {
        ops::inspect::restore_to(&self.ctx, req, progress).await
    }

    pub async fn service_status(&self) -> Result<ServiceStatus> {
        ops::services::service_status(&self.ctx).await
    }

    pub async fn stop_services(
        &self,
        progress: &Progress,
    ) -> Result<Vec<crate::docker::ContainerInfo>> {
        ops::services::stop_services(&self.ctx, progress).await
    }

    pub async fn start_services(&self, progress: &Progress) -> Result<StartReport> {
        ops::services::start_services(&self.ctx, progress).await
    }

    /// `drill`: also drill the new backup (`auto-backup run --drill`).
    pub async fn auto_backup(&self, progress: Progress, drill: bool) -> Result<AutoBackupReport> {
        ops::hooks::auto_backup(&self.ctx, false, drill, progress).await
    }

    /// `auto-backup run --hot`: dumps and a hot backup, nothing stopped.
    pub async fn auto_backup_hot(
        &self,
        progress: Progress,
        drill: bool,
    ) -> Result<AutoBackupReport> {
        ops::hooks::auto_backup(&self.ctx, true, drill, progress).await
    }

    /// `restore-dump ID --service NAME`.
    pub async fn restore_dump(
        &self,
        id: i64,
        service: &str,
        progress: Progress,
    ) -> Result<RestoreDumpReport> {
        ops::dumps::restore_dump(&self.ctx, id, service, &progress).await
    }

    /// A restore drill: the backup brought up beside the live stack, checked, removed.
    pub async fn drill(&self, req: DrillRequest, progress: Progress) -> Result<DrillReport> {
        ops::drill::drill(&self.ctx, req, progress).await
    }

    pub async fn auto_backup_status(&self) -> Result<AutoBackupStatus> {
        ops::auto_backup::auto_backup_status(&self.ctx).await
    }

    pub async fn pre_upgrade_backup(&self, progress: Progress) -> Result<BackupEntry> {
        ops::upgrade::pre_upgrade_backup(&self.ctx, progress).await
    }

    pub async fn upgrade(&self, req: UpgradeRequest, progress: Progress) -> Result<UpgradeReport> {
        ops::upgrade::upgrade(&self.ctx, req, progress).await
    }

    pub async fn verify(&self, id: i64, progress: Progress) -> Result<(BackupEntry, VerifyReport)> {
        ops::maintenance::verify(&self.ctx, id, progress).await
    }

    /// `encryption check`: decrypts and verifies the newest encrypted backup with the key.
    pub async fn encryption_check(
        &self,
        progress: Progress,
    ) -> Result<(BackupEntry, VerifyReport)> {
        ops::encryption::check(&self.ctx, progress).await
    }

    /// Deletes a backup's local archive (and with `remote` its remote copy); the catalog
    /// entry stays while a remote copy does.
    pub async fn delete_backup(&self, id: i64, remote: bool) -> Result<DeleteReport> {
        ops::maintenance::delete_backup(&self.ctx, id, remote).await
    }

    pub async fn prune(&self, rules: &KeepRules, dry_run: bool) -> Result<Vec<Decision>> {
        ops::maintenance::prune(&self.ctx, rules, dry_run).await
    }

    pub async fn reindex(&self, progress: Progress) -> Result<ReindexReport> {
        ops::maintenance::reindex(&self.ctx, progress).await
    }

    pub async fn import(&self, file: &Path, progress: Progress) -> Result<BackupEntry> {
        ops::maintenance::import(&self.ctx, file, progress).await
    }

    // Offsite copies (`ops/remote.rs`).

    pub async fn remote_push(
        &self,
        target: RemoteTarget,
        progress: Progress,
    ) -> Result<PushReport> {
        ops::remote::push(&self.ctx, target, progress).await
    }

    pub async fn remote_list(&self) -> Result<RemoteList> {
        ops::remote::list(&self.ctx).await
    }

    pub async fn remote_pull(&self, which: &str, progress: Progress) -> Result<BackupEntry> {
        ops::remote::pull(&self.ctx, which, progress).await
    }

    pub async fn remote_verify(
        &self,
        target: RemoteTarget,
        download: bool,
        progress: Progress,
    ) -> Result<Vec<RemoteVerifyResult>> {
        ops::remote::verify(&self.ctx, target, download, progress).await
    }

    pub async fn remote_prune(
        &self,
        rules: Option<KeepRules>,
        dry_run: bool,
    ) -> Result<RemotePruneReport> {
        ops::remote::prune(&self.ctx, rules, dry_run).await
    }

    pub async fn reindex_remote(&self) -> Result<RemoteReindexReport> {
        ops::remote::reindex(&self.ctx).await
    }

    /// Interrupted operations that start-up recovery could not finish or revert.
    pub fn blocked_operations(&self) -> Vec<BlockedInfo> {
        ops::recovery::blocked_operations(&self.blocked)
    }

    pub async fn resolve_blocked(&self, keep: Keep) -> Result<Vec<String>> {
        ops::recovery::resolve_blocked(&self.ctx, &self.blocked, keep).await
    }
}
