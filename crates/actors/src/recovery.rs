//! Start-up recovery of operations whose process died (kill -9, power loss, OOM).
//!
//! Design note: runs only while holding the operation lock, so every journal row still in
//! state `running` belongs to a dead process. Each kind is finished or reverted so that live
//! data and the catalog are either as before or as intended:
//! - backup: the `.partial` is removed; an archive already renamed to its final name is
//!   verified and its row completed, or removed and the row marked failed;
//! - rollback: an unfinished swap is reverted item by item (each item wholly old), a committed
//!   one is cleaned up; the work dir is removed;
//! - any kind: containers the operation stopped are started again.
//!
//! Every step is idempotent, so a crash during recovery is recovered by the next run.

use chrono::Utc;
use nuwax_store::{BackupCompletion, BackupStatus, Operation, OperationKind, OperationState};

use crate::actors::archive_actor::ArchiveMsg;
use crate::actors::store_actor::StoreMsg;
use crate::archive::CancelFlag;
use crate::error::Result;
use crate::lock::pid_alive;
use crate::progress::Progress;
use crate::restore;
use crate::runtime::{BackupJournal, RollbackJournal, Runtime};

impl Runtime {
    /// Finishes or reverts what dead processes left; returns notes for the operator.
    pub(crate) async fn recover(&self) -> Result<Vec<String>> {
        let mut notes = Vec::new();
        let ops = self.store(StoreMsg::UnfinishedOperations).await?;
        for op in ops {
            if op.pid != std::process::id() && pid_alive(op.pid, &op.boot_id) && self.lock.is_none()
            {
                continue;
            }
            let note = match op.kind {
                OperationKind::Backup => self.recover_backup(&op).await,
                OperationKind::Rollback => self.recover_rollback(&op).await,
                OperationKind::Upgrade => self.recover_upgrade(&op).await,
                _ => self.recover_generic(&op).await,
            };
            match note {
                Ok(n) => {
                    self.store(|r| {
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
                Err(e) => notes.push(format!(
                    "could not recover interrupted {} operation {} (pid {}): {e}; will retry on the next run",
                    op.kind.as_str(),
                    op.id,
                    op.pid
                )),
            }
        }
        // Rows still Running whose owner is dead and that no journal explains.
        for rec in self.store(StoreMsg::ListBackups).await? {
            if rec.status == BackupStatus::Running
                && rec.owner_pid.is_none_or(|p| p != std::process::id())
            {
                let msg = format!(
                    "interrupted: process {} died during the backup",
                    rec.owner_pid.unwrap_or(0)
                );
                self.store(|r| StoreMsg::FailBackup(rec.id, msg, r)).await?;
                let _ = restore::remove_path(&crate::runtime::partial_path(&rec.file_path));
                notes.push(format!(
                    "backup {} was left running by a dead process; marked Failed",
                    rec.id
                ));
            }
        }
        // Partial archives no journal row explains (should not exist; be thorough).
        if let Ok(rd) = std::fs::read_dir(&self.settings.paths.storage_dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().ends_with(".tar.gz.partial") {
                    let _ = std::fs::remove_file(e.path());
                    notes.push(format!(
                        "removed an incomplete archive left behind: {}",
                        e.path().display()
                    ));
                }
            }
        }
        Ok(notes)
    }

    pub(crate) async fn restart_stopped(
        &self,
        stopped: &[crate::docker::ContainerInfo],
    ) -> Result<String> {
        if stopped.is_empty() {
            return Ok(String::new());
        }
        // Started and waited for, like after any operation: the command that recovered
        // returns with the services up (or says why not).
        self.restart_exactly(stopped, &Progress::none()).await?;
        let names: Vec<_> = stopped.iter().map(|c| c.name.as_str()).collect();
        Ok(format!("; restarted {}", names.join(", ")))
    }

    async fn recover_backup(&self, op: &Operation) -> Result<String> {
        let j: BackupJournal = serde_json::from_value(op.details.clone()).map_err(|e| {
            crate::Error::Internal(format!("unreadable journal of operation {}: {e}", op.id))
        })?;
        restore::remove_path(&j.partial)?;
        let mut what = format!(
            "backup interrupted (pid {} died in phase '{}')",
            op.pid, op.phase
        );
        if let Some(id) = j.backup_id.or(op.backup_id) {
            let rec = self.store(|r| StoreMsg::GetBackup(id, r)).await?;
            if let Some(rec) = rec.filter(|r| r.status == BackupStatus::Running) {
                let mut completed = false;
                if j.dest.exists() {
                    // Renamed before the catalog was updated: keep it only if it verifies.
                    let report = self
                        .archive(|r| ArchiveMsg::Verify {
                            path: j.dest.clone(),
                            expected_sha256: None,
                            progress: Progress::none(),
                            cancel: CancelFlag::default(),
                            reply: r,
                        })
                        .await;
                    match report {
                        Ok(rep) if rep.is_ok() => {
                            self.store(|r| {
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
                        _ => restore::remove_path(&j.dest)?,
                    }
                }
                if !completed {
                    let msg = format!(
                        "interrupted: process {} died during the backup (phase '{}')",
                        op.pid, op.phase
                    );
                    self.store(|r| StoreMsg::FailBackup(id, msg, r)).await?;
                    what.push_str(&format!(
                        "; backup {id} marked Failed and its partial archive removed (was {})",
                        rec.file_path.display()
                    ));
                }
            }
        }
        what.push_str(&self.restart_stopped(&j.stopped).await?);
        Ok(what)
    }

    async fn recover_rollback(&self, op: &Operation) -> Result<String> {
        let j: RollbackJournal = serde_json::from_value(op.details.clone()).map_err(|e| {
            crate::Error::Internal(format!("unreadable journal of operation {}: {e}", op.id))
        })?;
        let mut what = match (op.phase.as_str(), &j.plan) {
            ("swapping", Some(plan)) => {
                restore::revert(plan)?;
                format!(
                    "rollback to backup {} was interrupted (pid {} died while swapping); the swap was undone, the live files are as before",
                    j.backup_id, op.pid
                )
            }
            ("committed", Some(plan)) => {
                restore::cleanup(plan)?;
                format!(
                    "rollback to backup {} had completed when pid {} died; cleaned up",
                    j.backup_id, op.pid
                )
            }
            _ => {
                if !j.work_dir.as_os_str().is_empty() {
                    restore::remove_path(&j.work_dir)?;
                }
                format!(
                    "rollback to backup {} was interrupted before changing anything (pid {} died in phase '{}'); its staging dir was removed",
                    j.backup_id, op.pid, op.phase
                )
            }
        };
        what.push_str(&self.restart_stopped(&j.stopped).await?);
        Ok(what)
    }

    async fn recover_generic(&self, op: &Operation) -> Result<String> {
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
        what.push_str(&self.restart_stopped(&stopped).await?);
        Ok(what)
    }
}
