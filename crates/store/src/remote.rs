//! Offsite copies: the multipart upload in progress per remote object (its upload id and the
//! parts already stored, with their ETags) and the completed remote copy per backup.
//!
//! The remote itself (its JSON sidecars) is the source of truth for what exists there; these
//! rows let a killed `remote push` resume without resending finished parts, let the next push
//! abort uploads nobody will finish, and remember the size and SHA-256 recorded at upload.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use crate::codec::{encode_time, encode_u64};
use crate::{Result, Store};

/// A multipart upload started and not yet completed or aborted.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteUpload {
    /// Full remote name of the archive object (`s3://bucket/prefix/name.tar.gz`).
    pub object_key: String,
    pub backup_id: Option<i64>,
    /// The server's multipart upload id.
    pub upload_id: String,
    /// SHA-256 of the archive being uploaded: a changed archive never resumes an upload.
    pub archive_sha256: String,
    pub size: u64,
    pub part_size: u64,
    pub started_at: DateTime<Utc>,
    /// Finished parts (0-based index, ETag), in index order.
    pub parts: Vec<(u64, String)>,
}

/// A completed remote copy of a backup, as recorded when it was uploaded or found.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteCopyRecord {
    pub backup_id: i64,
    pub object_key: String,
    pub size: u64,
    pub sha256: String,
    pub uploaded_at: DateTime<Utc>,
    pub verified_at: Option<DateTime<Utc>>,
}

/// How a remote copy (or the upload in progress of one) was encrypted on its way out: a plain
/// local archive sealed with age to the configured recipients (`[encryption] scope =
/// "remote"`). The object's own size and SHA-256 are the ciphertext's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushEncryption {
    /// SHA-256 of the plain archive that was encrypted (the backup's catalog checksum).
    pub plain_sha256: String,
    /// A fingerprint per recipient (`sha256:…`), or `scrypt` for a passphrase.
    pub recipients: Vec<String>,
}

fn encode_recipients(list: &[String]) -> Result<String> {
    serde_json::to_string(list)
        .map_err(|e| crate::Error::Corrupt(format!("cannot encode recipients: {e}")))
}

fn decode_push_encryption(plain_sha256: String, recipients: &str) -> Result<PushEncryption> {
    let recipients = serde_json::from_str(recipients).map_err(|e| {
        crate::Error::Corrupt(format!(
            "remote encryption: bad recipients {recipients:?}: {e}"
        ))
    })?;
    Ok(PushEncryption {
        plain_sha256,
        recipients,
    })
}

/// object_key, backup_id, upload_id, archive_sha256, size, part_size, started_at.
type UploadRow = (String, Option<i64>, String, String, i64, i64, String);

/// backup_id, object_key, size, sha256, uploaded_at, verified_at.
type CopyRow = (i64, String, i64, String, String, Option<String>);

fn copy_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CopyRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn copy_record(
    (backup_id, object_key, size, sha256, up, ver): CopyRow,
) -> Result<RemoteCopyRecord> {
    Ok(RemoteCopyRecord {
        backup_id,
        object_key,
        size: size.max(0) as u64,
        sha256,
        uploaded_at: time(up)?,
        verified_at: ver.map(time).transpose()?,
    })
}

fn time(s: String) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(&s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| crate::Error::Corrupt(format!("remote table: bad time {s:?}: {e}")))
}

impl Store {
    /// Records a new multipart upload (replacing any earlier record for the same object).
    pub fn begin_remote_upload(&self, u: &RemoteUpload) -> Result<()> {
        self.begin_upload_with(u, None)
    }

    /// Records a new multipart upload of a ciphertext staged from a plain archive, with how
    /// it was encrypted, in one transaction (replacing any earlier record for the object).
    pub fn begin_encrypted_upload(&self, u: &RemoteUpload, enc: &PushEncryption) -> Result<()> {
        self.begin_upload_with(u, Some(enc))
    }

    fn begin_upload_with(&self, u: &RemoteUpload, enc: Option<&PushEncryption>) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "DELETE FROM remote_uploads WHERE object_key = ?1",
            [&u.object_key],
        )?;
        tx.execute(
            "INSERT INTO remote_uploads (object_key, backup_id, upload_id, archive_sha256, size, \
                                         part_size, started_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                u.object_key,
                u.backup_id,
                u.upload_id,
                u.archive_sha256,
                encode_u64(u.size, "upload size")?,
                encode_u64(u.part_size, "part size")?,
                encode_time(u.started_at),
            ],
        )?;
        if let Some(enc) = enc {
            tx.execute(
                "INSERT INTO remote_upload_encryption (object_key, plain_sha256, recipients) \
                 VALUES (?1, ?2, ?3)",
                params![
                    u.object_key,
                    enc.plain_sha256,
                    encode_recipients(&enc.recipients)?
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// How the upload in progress of `object_key` was encrypted (`None`: it sends the archive
    /// file as it is, or there is no such upload).
    pub fn upload_encryption(&self, object_key: &str) -> Result<Option<PushEncryption>> {
        let row: Option<(String, String)> = self
            .conn
            .prepare_cached(
                "SELECT plain_sha256, recipients FROM remote_upload_encryption \
                 WHERE object_key = ?1",
            )?
            .query_row([object_key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        row.map(|(sha, rec)| decode_push_encryption(sha, &rec))
            .transpose()
    }

    /// Records (or replaces) the completed remote copy of a backup with how it was encrypted
    /// on its way out (`None`: the object is the archive file itself), and forgets its
    /// upload, in one transaction.
    pub fn set_remote_copy_encrypted(
        &self,
        c: &RemoteCopyRecord,
        enc: Option<&PushEncryption>,
    ) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO remote_copies (backup_id, object_key, size, sha256, uploaded_at, \
                                        verified_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT(backup_id) DO UPDATE SET object_key = excluded.object_key, \
                 size = excluded.size, sha256 = excluded.sha256, \
                 uploaded_at = excluded.uploaded_at, verified_at = excluded.verified_at",
            params![
                c.backup_id,
                c.object_key,
                encode_u64(c.size, "remote size")?,
                c.sha256,
                encode_time(c.uploaded_at),
                c.verified_at.map(encode_time),
            ],
        )
        .map_err(|e| crate::backup_fk(e, c.backup_id))?;
        tx.execute(
            "DELETE FROM remote_uploads WHERE object_key = ?1",
            [&c.object_key],
        )?;
        tx.execute(
            "DELETE FROM remote_copy_encryption WHERE backup_id = ?1",
            [c.backup_id],
        )?;
        if let Some(enc) = enc {
            tx.execute(
                "INSERT INTO remote_copy_encryption (backup_id, plain_sha256, recipients) \
                 VALUES (?1, ?2, ?3)",
                params![
                    c.backup_id,
                    enc.plain_sha256,
                    encode_recipients(&enc.recipients)?
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// How each remote copy encrypted on its way out was encrypted, by backup id.
    pub fn remote_copy_encryption(&self) -> Result<Vec<(i64, PushEncryption)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT backup_id, plain_sha256, recipients FROM remote_copy_encryption \
             ORDER BY backup_id",
        )?;
        let rows: Vec<(i64, String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        rows.into_iter()
            .map(|(id, sha, rec)| Ok((id, decode_push_encryption(sha, &rec)?)))
            .collect()
    }

    /// Records one finished part of an upload (idempotent: a resent part replaces its ETag).
    pub fn record_remote_part(
        &self,
        object_key: &str,
        part_index: u64,
        etag: &str,
        size: u64,
    ) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO remote_upload_parts (object_key, part_index, etag, size) \
             VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT(object_key, part_index) DO UPDATE SET etag = excluded.etag, \
                                                              size = excluded.size",
        )?;
        stmt.execute(params![
            object_key,
            encode_u64(part_index, "part index")?,
            etag,
            encode_u64(size, "part size")?
        ])?;
        Ok(())
    }

    /// Forgets an upload (completed or aborted) and its parts.
    pub fn delete_remote_upload(&self, object_key: &str) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM remote_uploads WHERE object_key = ?1")?
            .execute([object_key])?;
        Ok(())
    }

    /// Every upload in progress, oldest first, with its finished parts.
    pub fn list_remote_uploads(&self) -> Result<Vec<RemoteUpload>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT object_key, backup_id, upload_id, archive_sha256, size, part_size, started_at \
             FROM remote_uploads ORDER BY started_at, object_key",
        )?;
        let rows: Vec<UploadRow> = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut parts_stmt = self.conn.prepare_cached(
            "SELECT part_index, etag FROM remote_upload_parts WHERE object_key = ?1 \
             ORDER BY part_index",
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for (object_key, backup_id, upload_id, archive_sha256, size, part_size, started) in rows {
            let parts = parts_stmt
                .query_map([&object_key], |r| {
                    Ok((r.get::<_, i64>(0)?.max(0) as u64, r.get::<_, String>(1)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            out.push(RemoteUpload {
                object_key,
                backup_id,
                upload_id,
                archive_sha256,
                size: size.max(0) as u64,
                part_size: part_size.max(0) as u64,
                started_at: time(started)?,
                parts,
            });
        }
        Ok(out)
    }

    /// The upload in progress for this remote object, if any.
    pub fn get_remote_upload(&self, object_key: &str) -> Result<Option<RemoteUpload>> {
        Ok(self
            .list_remote_uploads()?
            .into_iter()
            .find(|u| u.object_key == object_key))
    }

    /// Records (or replaces) the completed remote copy of a backup and forgets its upload,
    /// in one transaction.
    pub fn set_remote_copy(&self, c: &RemoteCopyRecord) -> Result<()> {
        self.set_remote_copy_encrypted(c, None)
    }

    pub fn get_remote_copy(&self, backup_id: i64) -> Result<Option<RemoteCopyRecord>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT backup_id, object_key, size, sha256, uploaded_at, verified_at \
             FROM remote_copies WHERE backup_id = ?1",
        )?;
        let row: Option<CopyRow> = stmt.query_row([backup_id], copy_row).optional()?;
        row.map(copy_record).transpose()
    }

    /// Every recorded remote copy, by backup id.
    pub fn list_remote_copies(&self) -> Result<Vec<RemoteCopyRecord>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT backup_id, object_key, size, sha256, uploaded_at, verified_at \
             FROM remote_copies ORDER BY backup_id",
        )?;
        let rows: Vec<CopyRow> = stmt
            .query_map([], copy_row)?
            .collect::<rusqlite::Result<_>>()?;
        rows.into_iter().map(copy_record).collect()
    }

    /// Forgets the remote copy of a backup (deleted from the remote).
    pub fn delete_remote_copy(&self, backup_id: i64) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM remote_copies WHERE backup_id = ?1")?
            .execute([backup_id])?;
        Ok(())
    }

    pub fn mark_remote_verified(&self, backup_id: i64, at: DateTime<Utc>) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE remote_copies SET verified_at = ?2 WHERE backup_id = ?1")?
            .execute(params![backup_id, encode_time(at)])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(key: &str) -> RemoteUpload {
        RemoteUpload {
            object_key: key.into(),
            backup_id: None,
            upload_id: "u1".into(),
            archive_sha256: "ab".into(),
            size: 12,
            part_size: 5,
            started_at: Utc::now(),
            parts: vec![],
        }
    }

    #[test]
    fn parts_survive_reopen_and_upload_is_forgotten_on_completion() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("c.db");
        {
            let s = Store::open(&db).unwrap();
            s.begin_remote_upload(&upload("s3://b/x")).unwrap();
            s.record_remote_part("s3://b/x", 1, "e1", 5).unwrap();
            s.record_remote_part("s3://b/x", 0, "e0", 5).unwrap();
        }
        let s = Store::open(&db).unwrap();
        let u = s.get_remote_upload("s3://b/x").unwrap().unwrap();
        assert_eq!(u.parts, vec![(0, "e0".into()), (1, "e1".into())]);
        let id = s
            .insert_backup(&crate::NewBackup {
                file_path: "/b/x".into(),
                backup_type: crate::BackupType::Manual,
                service_version: "1".into(),
                created_at: Utc::now(),
                owner_pid: 1,
                compose_project: None,
            })
            .unwrap();
        s.set_remote_copy(&RemoteCopyRecord {
            backup_id: id,
            object_key: "s3://b/x".into(),
            size: 12,
            sha256: "ab".into(),
            uploaded_at: Utc::now(),
            verified_at: None,
        })
        .unwrap();
        assert!(s.get_remote_upload("s3://b/x").unwrap().is_none());
        assert_eq!(s.get_remote_copy(id).unwrap().unwrap().size, 12);
        assert_eq!(s.list_remote_copies().unwrap().len(), 1);
        // A new upload of the same object starts with no parts.
        s.begin_remote_upload(&upload("s3://b/x")).unwrap();
        s.record_remote_part("s3://b/x", 0, "e0", 5).unwrap();
        s.begin_remote_upload(&upload("s3://b/x")).unwrap();
        assert!(
            s.get_remote_upload("s3://b/x")
                .unwrap()
                .unwrap()
                .parts
                .is_empty()
        );
    }

    #[test]
    fn push_encryption_goes_with_its_upload_and_its_copy() {
        let s = Store::open_in_memory().unwrap();
        let enc = PushEncryption {
            plain_sha256: "cd".into(),
            recipients: vec!["sha256:0123456789abcdef".into()],
        };
        s.begin_encrypted_upload(&upload("s3://b/x.age"), &enc)
            .unwrap();
        assert_eq!(
            s.upload_encryption("s3://b/x.age").unwrap(),
            Some(enc.clone())
        );
        // A new plain upload of the object forgets how the old one was encrypted.
        s.begin_remote_upload(&upload("s3://b/x.age")).unwrap();
        assert_eq!(s.upload_encryption("s3://b/x.age").unwrap(), None);
        s.begin_encrypted_upload(&upload("s3://b/x.age"), &enc)
            .unwrap();
        let id = s
            .insert_backup(&crate::NewBackup {
                file_path: "/b/x".into(),
                backup_type: crate::BackupType::Manual,
                service_version: "1".into(),
                created_at: Utc::now(),
                owner_pid: 1,
                compose_project: None,
            })
            .unwrap();
        let copy = RemoteCopyRecord {
            backup_id: id,
            object_key: "s3://b/x.age".into(),
            size: 12,
            sha256: "ab".into(),
            uploaded_at: Utc::now(),
            verified_at: None,
        };
        s.set_remote_copy_encrypted(&copy, Some(&enc)).unwrap();
        // The completed upload and its encryption record are gone; the copy keeps the facts.
        assert_eq!(s.upload_encryption("s3://b/x.age").unwrap(), None);
        assert_eq!(s.remote_copy_encryption().unwrap(), vec![(id, enc)]);
        // Replaced by a copy sent as it is: no encryption facts left.
        s.set_remote_copy(&copy).unwrap();
        assert!(s.remote_copy_encryption().unwrap().is_empty());
        s.set_remote_copy_encrypted(
            &copy,
            Some(&PushEncryption {
                plain_sha256: "ef".into(),
                recipients: vec!["scrypt".into()],
            }),
        )
        .unwrap();
        s.delete_remote_copy(id).unwrap();
        assert!(s.remote_copy_encryption().unwrap().is_empty());
    }
}
