//! The backup catalog.

use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::{Row, params};

use crate::codec::{RowReader, encode_path, encode_time, encode_u64};
use crate::{
    BackupCompletion, BackupRecord, BackupStatus, BackupType, Error, NewBackup, Result, Store,
    expect_one,
};

const COLUMNS: &str = "id, file_path, backup_type, service_version, status, size, sha256, \
                       entry_count, error, created_at, finished_at, owner_pid, verified_at, \
                       compose_project, legacy";

fn decode(row: &Row<'_>) -> Result<BackupRecord> {
    let r = RowReader::new(row, "backups")?;
    Ok(BackupRecord {
        id: r.id(),
        file_path: r.path(1, "file_path")?,
        backup_type: r.enumeration(2, "backup_type", BackupType::parse)?,
        service_version: r.string(3, "service_version")?,
        status: r.enumeration(4, "status", BackupStatus::parse)?,
        size: r.opt_u64(5, "size")?,
        sha256: r.opt_string(6, "sha256")?,
        entry_count: r.opt_u64(7, "entry_count")?,
        error: r.opt_string(8, "error")?,
        created_at: r.time(9, "created_at")?,
        finished_at: r.opt_time(10, "finished_at")?,
        owner_pid: r.opt_u32(11, "owner_pid")?,
        verified_at: r.opt_time(12, "verified_at")?,
        compose_project: r.opt_string(13, "compose_project")?,
        legacy: r.flag(14, "legacy")?,
    })
}

impl Store {
    /// Records a backup about to be written, as [`BackupStatus::Running`]; returns its id.
    pub fn insert_backup(&self, new: &NewBackup) -> Result<i64> {
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO backups (file_path, backup_type, service_version, status, created_at, \
                                  owner_pid, compose_project) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        stmt.execute(params![
            encode_path(&new.file_path)?,
            new.backup_type.as_str(),
            new.service_version,
            BackupStatus::Running.as_str(),
            encode_time(new.created_at),
            new.owner_pid,
            new.compose_project,
        ])?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Marks backup `id` [`BackupStatus::Completed`] with the archive's facts; clears `error`.
    pub fn complete_backup(&self, id: i64, c: &BackupCompletion) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(
            "UPDATE backups SET status = ?2, size = ?3, sha256 = ?4, entry_count = ?5, \
                                finished_at = ?6, error = NULL \
             WHERE id = ?1",
        )?;
        let changed = stmt.execute(params![
            id,
            BackupStatus::Completed.as_str(),
            encode_u64(c.size, "archive size")?,
            c.sha256,
            encode_u64(c.entry_count, "entry count")?,
            encode_time(c.finished_at),
        ])?;
        expect_one(changed, Error::BackupNotFound(id))
    }

    /// Marks backup `id` [`BackupStatus::Failed`] with the reason.
    pub fn fail_backup(&self, id: i64, error: &str, finished_at: DateTime<Utc>) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(
            "UPDATE backups SET status = ?2, error = ?3, finished_at = ?4 WHERE id = ?1",
        )?;
        let changed = stmt.execute(params![
            id,
            BackupStatus::Failed.as_str(),
            error,
            encode_time(finished_at),
        ])?;
        expect_one(changed, Error::BackupNotFound(id))
    }

    pub fn get_backup(&self, id: i64) -> Result<Option<BackupRecord>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM backups WHERE id = ?1"))?;
        let mut rows = stmt.query([id])?;
        rows.next()?.map(decode).transpose()
    }

    /// The backup recorded for exactly this path (byte for byte); the newest if several rows
    /// share it (e.g. a failed attempt and a later one within the same second).
    pub fn find_backup_by_path(&self, path: &Path) -> Result<Option<BackupRecord>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM backups WHERE file_path = ?1 ORDER BY id DESC LIMIT 1"
        ))?;
        let mut rows = stmt.query([encode_path(path)?])?;
        rows.next()?.map(decode).transpose()
    }

    /// Every backup, newest first (`created_at`, then id, both descending).
    pub fn list_backups(&self) -> Result<Vec<BackupRecord>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM backups ORDER BY created_at DESC, id DESC"
        ))?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(decode(row)?);
        }
        Ok(out)
    }

    /// Removes the row (not the archive). Operations and upgrades that referred to it keep
    /// their history with `backup_id` set to NULL. Returns `false` if there was no such row.
    pub fn delete_backup(&self, id: i64) -> Result<bool> {
        let mut stmt = self
            .conn
            .prepare_cached("DELETE FROM backups WHERE id = ?1")?;
        Ok(stmt.execute([id])? > 0)
    }

    /// Records a successful full verification of backup `id`.
    pub fn mark_verified(&self, id: i64, at: DateTime<Utc>) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare_cached("UPDATE backups SET verified_at = ?2 WHERE id = ?1")?;
        let changed = stmt.execute(params![id, encode_time(at)])?;
        expect_one(changed, Error::BackupNotFound(id))
    }

    /// Records that backup `id` was taken hot (the services running).
    pub fn mark_hot(&self, id: i64) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare_cached("UPDATE backups SET hot = 1 WHERE id = ?1")?;
        let changed = stmt.execute(params![id])?;
        expect_one(changed, Error::BackupNotFound(id))
    }

    /// Whether backup `id` was taken hot; `false` for an unknown id.
    pub fn is_hot(&self, id: i64) -> Result<bool> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT hot FROM backups WHERE id = ?1")?;
        let mut rows = stmt.query(params![id])?;
        Ok(match rows.next()? {
            Some(row) => row.get::<_, i64>(0)? != 0,
            None => false,
        })
    }

    /// The ids of the backups taken hot.
    pub fn hot_backups(&self) -> Result<Vec<i64>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id FROM backups WHERE hot != 0 ORDER BY id")?;
        let ids = stmt
            .query_map([], |row| row.get::<_, i64>(0))?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(ids)
    }

    /// Adopts an archive of this tool (import, reindex): its whole record and whether its
    /// `info.json` says it was taken hot, together or not at all. Returns the new id.
    pub fn insert_adopted_backup(&self, rec: &BackupRecord, hot: bool) -> Result<i64> {
        let tx = self.conn.unchecked_transaction()?;
        let id = self.insert_completed_backup(rec)?;
        if hot {
            self.mark_hot(id)?;
        }
        tx.commit()?;
        Ok(id)
    }

    /// Inserts a whole record (import, reindex from archives); `rec.id` is ignored and the
    /// new id returned.
    pub fn insert_completed_backup(&self, rec: &BackupRecord) -> Result<i64> {
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO backups (file_path, backup_type, service_version, status, size, sha256, \
                                  entry_count, error, created_at, finished_at, owner_pid, \
                                  verified_at, compose_project, legacy) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )?;
        stmt.execute(params![
            encode_path(&rec.file_path)?,
            rec.backup_type.as_str(),
            rec.service_version,
            rec.status.as_str(),
            rec.size
                .map(|v| encode_u64(v, "archive size"))
                .transpose()?,
            rec.sha256,
            rec.entry_count
                .map(|v| encode_u64(v, "entry count"))
                .transpose()?,
            rec.error,
            encode_time(rec.created_at),
            rec.finished_at.map(encode_time),
            rec.owner_pid,
            rec.verified_at.map(encode_time),
            rec.compose_project,
            rec.legacy,
        ])?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Adopts a backup made by the original nuwax-cli: its row (`rec.legacy` must be set)
    /// and the manifest computed while adopting it (JSON, opaque here), together or not at
    /// all. Returns the new id.
    pub fn insert_legacy_backup(&self, rec: &BackupRecord, manifest: &str) -> Result<i64> {
        if !rec.legacy {
            return Err(Error::Corrupt(
                "insert_legacy_backup needs a record marked legacy".into(),
            ));
        }
        let tx = self.conn.unchecked_transaction()?;
        let id = self.insert_completed_backup(rec)?;
        let mut stmt = self
            .conn
            .prepare_cached("INSERT INTO legacy_manifests (backup_id, manifest) VALUES (?1, ?2)")?;
        stmt.execute(params![id, manifest])?;
        tx.commit()?;
        Ok(id)
    }

    /// The manifest recorded when legacy backup `id` was adopted; `None` when there is none
    /// (not a legacy backup, or no such row).
    pub fn legacy_manifest(&self, id: i64) -> Result<Option<String>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT manifest FROM legacy_manifests WHERE backup_id = ?1")?;
        let mut rows = stmt.query([id])?;
        match rows.next()? {
            Some(row) => Ok(Some(row.get(0).map_err(|e| {
                Error::Corrupt(format!("legacy_manifests row {id}, column manifest: {e}"))
            })?)),
            None => Ok(None),
        }
    }

    /// Points backup `id` at a moved archive.
    pub fn update_backup_path(&self, id: i64, path: &Path) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare_cached("UPDATE backups SET file_path = ?2 WHERE id = ?1")?;
        let changed = stmt.execute(params![id, encode_path(path)?])?;
        expect_one(changed, Error::BackupNotFound(id))
    }

    /// Records how backup `id`'s archive was encrypted (replaces an earlier record).
    pub fn record_encryption(&self, id: i64, facts: &crate::EncryptionFacts) -> Result<()> {
        let recipients = serde_json::to_string(&facts.recipients)
            .map_err(|e| Error::Corrupt(format!("cannot encode recipients: {e}")))?;
        let mut stmt = self.conn.prepare_cached(
            "INSERT OR REPLACE INTO backup_encryption (backup_id, ciphertext_sha256, recipients) \
             VALUES (?1, ?2, ?3)",
        )?;
        stmt.execute(params![id, facts.ciphertext_sha256, recipients])?;
        Ok(())
    }

    /// The encryption facts of every encrypted backup, by backup id.
    pub fn encryption_facts(&self) -> Result<Vec<(i64, crate::EncryptionFacts)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT backup_id, ciphertext_sha256, recipients FROM backup_encryption ORDER BY backup_id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, sha, recipients) = row?;
            let recipients = serde_json::from_str(&recipients).map_err(|e| {
                Error::Corrupt(format!(
                    "backup_encryption row {id}, column recipients: {e}"
                ))
            })?;
            out.push((
                id,
                crate::EncryptionFacts {
                    ciphertext_sha256: sha,
                    recipients,
                },
            ));
        }
        Ok(out)
    }
}
