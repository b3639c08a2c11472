//! Upgrade history: one row per attempt, with the pre-upgrade backup it can roll back to.

use chrono::{DateTime, Utc};
use rusqlite::{Row, params};

use crate::codec::{RowReader, encode_time};
use crate::{Error, Result, Store, UpgradeOutcome, UpgradeRecord, backup_fk, expect_one};

const COLUMNS: &str =
    "id, from_version, to_version, backup_id, outcome, started_at, finished_at, error";

fn decode(row: &Row<'_>) -> Result<UpgradeRecord> {
    let r = RowReader::new(row, "upgrades")?;
    Ok(UpgradeRecord {
        id: r.id(),
        from_version: r.string(1, "from_version")?,
        to_version: r.string(2, "to_version")?,
        backup_id: r.opt_i64(3, "backup_id")?,
        outcome: r.enumeration(4, "outcome", UpgradeOutcome::parse)?,
        started_at: r.time(5, "started_at")?,
        finished_at: r.opt_time(6, "finished_at")?,
        error: r.opt_string(7, "error")?,
    })
}

impl Store {
    /// Records an upgrade attempt as [`UpgradeOutcome::Running`]; returns its id.
    pub fn begin_upgrade(
        &self,
        from_version: &str,
        to_version: &str,
        started_at: DateTime<Utc>,
    ) -> Result<i64> {
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO upgrades (from_version, to_version, outcome, started_at) \
             VALUES (?1, ?2, ?3, ?4)",
        )?;
        stmt.execute(params![
            from_version,
            to_version,
            UpgradeOutcome::Running.as_str(),
            encode_time(started_at),
        ])?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Links upgrade `id` to its pre-upgrade backup.
    pub fn set_upgrade_backup(&self, id: i64, backup_id: i64) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare_cached("UPDATE upgrades SET backup_id = ?2 WHERE id = ?1")?;
        let changed = stmt
            .execute(params![id, backup_id])
            .map_err(|e| backup_fk(e, backup_id))?;
        expect_one(changed, Error::UpgradeNotFound(id))
    }

    pub fn finish_upgrade(
        &self,
        id: i64,
        outcome: UpgradeOutcome,
        error: Option<&str>,
        finished_at: DateTime<Utc>,
    ) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(
            "UPDATE upgrades SET outcome = ?2, error = ?3, finished_at = ?4 WHERE id = ?1",
        )?;
        let changed = stmt.execute(params![
            id,
            outcome.as_str(),
            error,
            encode_time(finished_at)
        ])?;
        expect_one(changed, Error::UpgradeNotFound(id))
    }

    /// Every upgrade attempt, newest first (`started_at`, then id, both descending).
    pub fn list_upgrades(&self) -> Result<Vec<UpgradeRecord>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM upgrades ORDER BY started_at DESC, id DESC"
        ))?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(decode(row)?);
        }
        Ok(out)
    }
}
