//! Use cases that span tables, each one transaction: what the operations ask of the catalog
//! (the StoreActor sends one message per use case, not one per table method).

use chrono::Utc;

use crate::model::{BackupCompletion, NewBackup, OperationKind, OperationState, UpgradeOutcome};
use crate::{Result, Store};

impl Store {
    /// Begins a backup: its operation row (journal `details`, with `backup_id` filled in and
    /// phase `archiving`) and its catalog row (`running`), together or not at all. Returns
    /// (operation id, backup id).
    pub fn begin_backup(
        &self,
        new: &NewBackup,
        pid: u32,
        boot_id: &str,
        mut details: serde_json::Value,
    ) -> Result<(i64, i64)> {
        let tx = self.conn.unchecked_transaction()?;
        let op = self.begin_operation(OperationKind::Backup, pid, boot_id, &details)?;
        let id = self.insert_backup(new)?;
        self.set_operation_backup(op, id)?;
        if let Some(map) = details.as_object_mut() {
            map.insert("backup_id".into(), id.into());
        }
        self.set_operation_phase(op, "archiving", Some(&details))?;
        tx.commit()?;
        Ok((op, id))
    }

    /// Completes backup `id` and its operation `op`, and records `setting` (the last
    /// compression ratio), in one transaction.
    pub fn complete_backup_operation(
        &self,
        op: i64,
        id: i64,
        completion: &BackupCompletion,
        setting: Option<(&str, &str)>,
    ) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        if let Some((key, value)) = setting {
            self.set_setting(key, value)?;
        }
        self.complete_backup(id, completion)?;
        self.finish_operation(op, OperationState::Succeeded, None)?;
        tx.commit()?;
        Ok(())
    }

    /// Marks backup `id` failed with `error`, and its operation `op` too, in one transaction.
    pub fn fail_backup_operation(&self, op: i64, id: i64, error: &str) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        self.fail_backup(id, error, Utc::now())?;
        self.finish_operation(op, OperationState::Failed, Some(error))?;
        tx.commit()?;
        Ok(())
    }
}

impl Store {
    /// Begins an upgrade: its history row and its operation row (journal `details`, with
    /// `upgrade_id` filled in), in one transaction. Returns (operation id, upgrade id).
    pub fn begin_upgrade_operation(
        &self,
        from_version: &str,
        to_version: &str,
        pid: u32,
        boot_id: &str,
        mut details: serde_json::Value,
    ) -> Result<(i64, i64)> {
        let tx = self.conn.unchecked_transaction()?;
        let upgrade = self.begin_upgrade(from_version, to_version, Utc::now())?;
        if let Some(map) = details.as_object_mut() {
            map.insert("upgrade_id".into(), upgrade.into());
        }
        let op = self.begin_operation(OperationKind::Upgrade, pid, boot_id, &details)?;
        tx.commit()?;
        Ok((op, upgrade))
    }

    /// Ends upgrade `upgrade` with `outcome` and its operation `op` (succeeded only when the
    /// upgrade did), in one transaction.
    pub fn finish_upgrade_operation(
        &self,
        op: i64,
        upgrade: i64,
        outcome: UpgradeOutcome,
        error: Option<&str>,
    ) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        self.finish_upgrade(upgrade, outcome, error, Utc::now())?;
        let state = if outcome == UpgradeOutcome::Succeeded {
            OperationState::Succeeded
        } else {
            OperationState::Failed
        };
        self.finish_operation(op, state, error)?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use crate::Store;
    use crate::model::{BackupCompletion, BackupStatus, BackupType, NewBackup, OperationState};

    fn new_backup() -> NewBackup {
        NewBackup {
            file_path: "/b/backup_manual_v1_2026-01-01_00-00-00.tar.gz".into(),
            backup_type: BackupType::Manual,
            service_version: "1".into(),
            created_at: Utc::now(),
            owner_pid: 42,
            compose_project: Some("p".into()),
        }
    }

    #[test]
    fn a_backup_begins_completes_and_fails_as_one_transaction_each() {
        let s = Store::open_in_memory().unwrap();
        let (op, id) = s
            .begin_backup(&new_backup(), 42, "boot", serde_json::json!({"dest": "x"}))
            .unwrap();
        let o = s.get_operation(op).unwrap().unwrap();
        assert_eq!(o.phase, "archiving");
        assert_eq!(o.backup_id, Some(id));
        assert_eq!(o.details["backup_id"], id);
        assert_eq!(
            s.get_backup(id).unwrap().unwrap().status,
            BackupStatus::Running
        );
        let c = BackupCompletion {
            size: 10,
            sha256: "ab".repeat(32),
            entry_count: 3,
            finished_at: Utc::now(),
        };
        s.complete_backup_operation(op, id, &c, Some(("k", "0.5")))
            .unwrap();
        assert_eq!(
            s.get_backup(id).unwrap().unwrap().status,
            BackupStatus::Completed
        );
        assert_eq!(
            s.get_operation(op).unwrap().unwrap().state,
            OperationState::Succeeded
        );
        assert_eq!(s.get_setting("k").unwrap().as_deref(), Some("0.5"));

        let (op2, id2) = s
            .begin_backup(&new_backup(), 42, "boot", serde_json::json!({}))
            .unwrap();
        s.fail_backup_operation(op2, id2, "disk full").unwrap();
        let b = s.get_backup(id2).unwrap().unwrap();
        assert_eq!(b.status, BackupStatus::Failed);
        assert_eq!(b.error.as_deref(), Some("disk full"));
        assert_eq!(
            s.get_operation(op2).unwrap().unwrap().state,
            OperationState::Failed
        );
    }

    #[test]
    fn an_upgrade_begins_and_finishes_with_its_operation() {
        let s = Store::open_in_memory().unwrap();
        let (op, up) = s
            .begin_upgrade_operation("1", "2", 42, "boot", serde_json::json!({"to_version": "2"}))
            .unwrap();
        let o = s.get_operation(op).unwrap().unwrap();
        assert_eq!(o.details["upgrade_id"], up);
        assert_eq!(o.state, OperationState::Running);
        s.finish_upgrade_operation(op, up, crate::UpgradeOutcome::RolledBack, Some("boom"))
            .unwrap();
        assert_eq!(
            s.get_operation(op).unwrap().unwrap().state,
            OperationState::Failed
        );
        let u = &s.list_upgrades().unwrap()[0];
        assert_eq!(u.outcome, crate::UpgradeOutcome::RolledBack);
    }

    #[test]
    fn a_failing_step_rolls_the_whole_use_case_back() {
        let s = Store::open_in_memory().unwrap();
        // Completing a backup that does not exist fails after the setting was written: the
        // setting must not stay.
        let c = BackupCompletion {
            size: 1,
            sha256: "00".repeat(32),
            entry_count: 1,
            finished_at: Utc::now(),
        };
        assert!(
            s.complete_backup_operation(1, 999, &c, Some(("k", "1")))
                .is_err()
        );
        assert_eq!(s.get_setting("k").unwrap(), None);
    }
}
