//! Restore drills (issue 17): one row per drill of a backup, deleted with the backup.

use chrono::{DateTime, Utc};
use rusqlite::{Row, params};

use crate::codec::{RowReader, encode_time, encode_u64};
use crate::{
    DrillOutcome, DrillRecord, Error, OperationKind, OperationState, Result, Store, backup_fk,
    expect_one,
};

const COLUMNS: &str = "id, backup_id, started_at, finished_at, duration_ms, outcome, \
                       failed_service, log_tail, error";

fn decode(row: &Row<'_>) -> Result<DrillRecord> {
    let r = RowReader::new(row, "drills")?;
    Ok(DrillRecord {
        id: r.id(),
        backup_id: r.opt_i64(1, "backup_id")?.unwrap_or_default(),
        started_at: r.time(2, "started_at")?,
        finished_at: r.opt_time(3, "finished_at")?,
        duration_ms: r.opt_u64(4, "duration_ms")?,
        outcome: r.enumeration(5, "outcome", DrillOutcome::parse)?,
        failed_service: r.opt_string(6, "failed_service")?,
        log_tail: r.opt_string(7, "log_tail")?,
        error: r.opt_string(8, "error")?,
    })
}

/// How a drill ended, as [`Store::finish_drill`] records it.
#[derive(Debug, Clone, PartialEq)]
pub struct DrillFinish {
    pub outcome: DrillOutcome,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: u64,
    pub failed_service: Option<String>,
    pub log_tail: Option<String>,
    pub error: Option<String>,
}

impl Store {
    /// Records a drill of `backup_id` as [`DrillOutcome::Running`]; returns its id.
    pub fn begin_drill(&self, backup_id: i64, started_at: DateTime<Utc>) -> Result<i64> {
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO drills (backup_id, started_at, outcome) VALUES (?1, ?2, ?3)",
        )?;
        stmt.execute(params![
            backup_id,
            encode_time(started_at),
            DrillOutcome::Running.as_str()
        ])
        .map_err(|e| backup_fk(e, backup_id))?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn finish_drill(&self, id: i64, finish: &DrillFinish) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(
            "UPDATE drills SET outcome = ?2, finished_at = ?3, duration_ms = ?4, \
                               failed_service = ?5, log_tail = ?6, error = ?7 WHERE id = ?1",
        )?;
        let changed = stmt.execute(params![
            id,
            finish.outcome.as_str(),
            encode_time(finish.finished_at),
            encode_u64(finish.duration_ms, "drill duration")?,
            finish.failed_service,
            finish.log_tail,
            finish.error,
        ])?;
        expect_one(changed, Error::DrillNotFound(id))
    }

    /// Use case: a drill's row and its operation-journal row (`details` gets `drill_id`), in
    /// one transaction. Returns (operation id, drill id).
    pub fn begin_drill_operation(
        &self,
        backup_id: i64,
        pid: u32,
        boot_id: &str,
        mut details: serde_json::Value,
    ) -> Result<(i64, i64)> {
        let tx = self.conn.unchecked_transaction()?;
        let drill = self.begin_drill(backup_id, Utc::now())?;
        if let Some(map) = details.as_object_mut() {
            map.insert("drill_id".into(), drill.into());
        }
        let op = self.begin_operation(OperationKind::Drill, pid, boot_id, &details)?;
        self.set_operation_backup(op, backup_id)?;
        tx.commit()?;
        Ok((op, drill))
    }

    /// Use case: the drill ends and its operation with it (`state`), in one transaction.
    pub fn finish_drill_operation(
        &self,
        op: i64,
        drill: i64,
        finish: &DrillFinish,
        state: OperationState,
    ) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        self.finish_drill(drill, finish)?;
        self.finish_operation(op, state, finish.error.as_deref())?;
        tx.commit()?;
        Ok(())
    }

    pub fn get_drill(&self, id: i64) -> Result<Option<DrillRecord>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM drills WHERE id = ?1"))?;
        let mut rows = stmt.query([id])?;
        rows.next()?.map(decode).transpose()
    }

    /// The most recent drill of each backup that has one (highest id per backup).
    pub fn latest_drills(&self) -> Result<Vec<DrillRecord>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM drills WHERE id IN \
             (SELECT MAX(id) FROM drills GROUP BY backup_id) ORDER BY backup_id"
        ))?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(decode(row)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BackupType, NewBackup};

    #[test]
    fn a_drill_is_recorded_finished_listed_and_goes_with_its_backup() {
        let s = Store::open_in_memory().unwrap();
        let id = s
            .insert_backup(&NewBackup {
                file_path: "/b/backup_manual_v1_x.tar.gz".into(),
                backup_type: BackupType::Manual,
                service_version: "1".into(),
                created_at: Utc::now(),
                owner_pid: 1,
                compose_project: None,
            })
            .unwrap();
        assert!(matches!(
            s.begin_drill(id + 100, Utc::now()),
            Err(Error::BackupNotFound(_))
        ));
        let first = s.begin_drill(id, Utc::now()).unwrap();
        let (op, second) = s
            .begin_drill_operation(id, 42, "boot", serde_json::json!({}))
            .unwrap();
        let o = s.get_operation(op).unwrap().unwrap();
        assert_eq!(o.kind, OperationKind::Drill);
        assert_eq!(o.details["drill_id"], second);
        assert_eq!(o.backup_id, Some(id));
        let finish = DrillFinish {
            outcome: DrillOutcome::Failed,
            finished_at: Utc::now(),
            duration_ms: 1234,
            failed_service: Some("db".into()),
            log_tail: Some("boom".into()),
            error: Some("container db exited".into()),
        };
        s.finish_drill_operation(op, second, &finish, OperationState::Failed)
            .unwrap();
        assert_eq!(
            s.get_operation(op).unwrap().unwrap().state,
            OperationState::Failed
        );
        assert_eq!(
            s.get_drill(first).unwrap().unwrap().outcome,
            DrillOutcome::Running
        );
        let latest = s.latest_drills().unwrap();
        assert_eq!(latest.len(), 1);
        assert_eq!(latest[0].id, second);
        assert_eq!(latest[0].outcome, DrillOutcome::Failed);
        assert_eq!(latest[0].failed_service.as_deref(), Some("db"));
        assert_eq!(latest[0].duration_ms, Some(1234));
        assert!(matches!(
            s.finish_drill(999, &finish),
            Err(Error::DrillNotFound(999))
        ));
        s.delete_backup(id).unwrap();
        assert!(s.latest_drills().unwrap().is_empty());
    }
}
