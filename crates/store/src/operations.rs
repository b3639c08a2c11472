//! The operation journal.
//!
//! Every mutating run (backup, rollback, upgrade) writes a row before it touches anything and
//! moves it through caller-defined phases, keeping in `details` whatever it would need to
//! finish or revert after a crash (staging dir, undo dir, ...). A row still `running` at the
//! next start whose `pid`/`boot_id` is no longer alive is a crashed run; the caller recovers
//! it and finishes the row as `recovered` or `failed`. The store keeps the clock for this
//! table (`started_at`, `updated_at`, `finished_at` are "now") because the journal records
//! when things actually happened.

use chrono::Utc;
use rusqlite::{Row, params};

use crate::codec::{RowReader, encode_time};
use crate::{
    Error, Operation, OperationKind, OperationState, Result, Store, backup_fk, expect_one,
};

const COLUMNS: &str = "id, kind, state, phase, pid, boot_id, started_at, updated_at, \
                       finished_at, backup_id, details, error";

fn decode(row: &Row<'_>) -> Result<Operation> {
    let r = RowReader::new(row, "operations")?;
    Ok(Operation {
        id: r.id(),
        kind: r.enumeration(1, "kind", OperationKind::parse)?,
        state: r.enumeration(2, "state", OperationState::parse)?,
        phase: r.string(3, "phase")?,
        pid: r.u32(4, "pid")?,
        boot_id: r.string(5, "boot_id")?,
        started_at: r.time(6, "started_at")?,
        updated_at: r.time(7, "updated_at")?,
        finished_at: r.opt_time(8, "finished_at")?,
        backup_id: r.opt_i64(9, "backup_id")?,
        details: r.json(10, "details")?,
        error: r.opt_string(11, "error")?,
    })
}

impl Store {
    /// Starts a journal entry: state `running`, phase `"started"`. Returns its id.
    pub fn begin_operation(
        &self,
        kind: OperationKind,
        pid: u32,
        boot_id: &str,
        details: &serde_json::Value,
    ) -> Result<i64> {
        let now = encode_time(Utc::now());
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO operations (kind, state, phase, pid, boot_id, started_at, updated_at, \
                                     details) \
             VALUES (?1, ?2, 'started', ?3, ?4, ?5, ?5, ?6)",
        )?;
        stmt.execute(params![
            kind.as_str(),
            OperationState::Running.as_str(),
            pid,
            boot_id,
            now,
            details.to_string(),
        ])?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Moves operation `id` to `phase`; replaces `details` when given.
    pub fn set_operation_phase(
        &self,
        id: i64,
        phase: &str,
        details: Option<&serde_json::Value>,
    ) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(
            "UPDATE operations SET phase = ?2, updated_at = ?3, details = COALESCE(?4, details) \
             WHERE id = ?1",
        )?;
        let changed = stmt.execute(params![
            id,
            phase,
            encode_time(Utc::now()),
            details.map(serde_json::Value::to_string),
        ])?;
        expect_one(changed, Error::OperationNotFound(id))
    }

    /// Links operation `id` to the backup it wrote or restores from.
    pub fn set_operation_backup(&self, id: i64, backup_id: i64) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(
            "UPDATE operations SET backup_id = ?2, updated_at = ?3 WHERE id = ?1",
        )?;
        let changed = stmt
            .execute(params![id, backup_id, encode_time(Utc::now())])
            .map_err(|e| backup_fk(e, backup_id))?;
        expect_one(changed, Error::OperationNotFound(id))
    }

    /// Ends operation `id` in `state` (normally not `Running`), with the error if any.
    pub fn finish_operation(
        &self,
        id: i64,
        state: OperationState,
        error: Option<&str>,
    ) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(
            "UPDATE operations SET state = ?2, error = ?3, updated_at = ?4, finished_at = ?4 \
             WHERE id = ?1",
        )?;
        let changed = stmt.execute(params![id, state.as_str(), error, encode_time(Utc::now())])?;
        expect_one(changed, Error::OperationNotFound(id))
    }

    pub fn get_operation(&self, id: i64) -> Result<Option<Operation>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM operations WHERE id = ?1"))?;
        let mut rows = stmt.query([id])?;
        rows.next()?.map(decode).transpose()
    }

    /// Operations still `running`, oldest first: the crash-recovery candidates.
    pub fn unfinished_operations(&self) -> Result<Vec<Operation>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM operations WHERE state = ?1 ORDER BY started_at, id"
        ))?;
        let mut rows = stmt.query([OperationState::Running.as_str()])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(decode(row)?);
        }
        Ok(out)
    }

    /// The most recent operation of `kind` (highest id), whatever its state.
    pub fn last_operation(&self, kind: OperationKind) -> Result<Option<Operation>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM operations WHERE kind = ?1 ORDER BY id DESC LIMIT 1"
        ))?;
        let mut rows = stmt.query([kind.as_str()])?;
        rows.next()?.map(decode).transpose()
    }
}
