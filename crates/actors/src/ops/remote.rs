//! Offsite copies: `remote push|list|pull|verify|prune`, `reindex --remote`, and the pull a
//! rollback does when only the remote has the archive (issue 12).
//!
//! Design note: the archive goes up as one multipart object and its sidecar (`remote.rs`) is
//! written last, so a copy exists on the remote exactly when its sidecar does. Every part is
//! recorded in the catalog (upload id, index, ETag) as soon as the server has it: a push
//! killed with `kill -9` resumes on the next `remote push` with the parts it still needs, and
//! the whole file is hashed while it is read again, so a changed archive is never completed
//! under the catalog's checksum. Uploads that nobody will finish (backup deleted, archive
//! changed, settings changed) are aborted by the next push. A pull downloads to a `.partial`
//! file while hashing, checks size and SHA-256 against the sidecar (and the catalog), verifies
//! the archive like `import`, and only then renames it into the storage dir.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use nuwax_store::{
    BackupRecord, BackupStatus, BackupType, PushEncryption, RemoteCopyRecord, RemoteUpload,
};
use sha2::{Digest, Sha256};

use super::{BackupEntry, Ctx};
use crate::actors::archive_actor::ArchiveMsg;
use crate::actors::remote_actor::{Deleted, PendingUpload, RemoteListing, RemoteMsg};
use crate::actors::store_actor::StoreMsg;
use crate::encryption::Encryption;
use crate::error::{Error, IoContext, Result};
use crate::progress::{Phase, Progress};
use crate::remote::{MAX_PARTS, RemoteSettings, Sidecar};
use crate::retention::{Decision, KeepRules};

/// Which backups a command is about.
#[derive(Debug, Clone)]
pub enum RemoteTarget {
    One(i64),
    All,
}

/// One backup pushed (or found already there).
#[derive(Debug, Clone)]
pub struct PushedCopy {
    pub backup_id: i64,
    pub archive: String,
    pub size: u64,
    pub sha256: String,
    /// Parts sent by this run.
    pub parts_sent: u64,
    /// Parts a previous, interrupted push had sent already (not sent again).
    pub parts_resumed: u64,
    /// The remote had this copy already; nothing was sent.
    pub already_there: bool,
}

#[derive(Debug, Clone, Default)]
pub struct PushReport {
    pub pushed: Vec<PushedCopy>,
    /// Backups not pushed (id, why): not completed, archive missing, or a different copy
    /// under the same name on the remote.
    pub skipped: Vec<(i64, String)>,
    /// Stale multipart uploads aborted (object keys).
    pub aborted: Vec<String>,
}

/// Where a backup has copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyState {
    LocalOnly,
    RemoteOnly,
    Both,
    /// Both sides have the name but not the same bytes (checksum or size differ, or the
    /// sidecar's archive object is missing).
    Mismatch,
}

impl CopyState {
    pub fn as_str(self) -> &'static str {
        match self {
            CopyState::LocalOnly => "local-only",
            CopyState::RemoteOnly => "remote-only",
            CopyState::Both => "both",
            CopyState::Mismatch => "mismatch",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RemoteListEntry {
    pub archive: String,
    pub state: CopyState,
    /// The catalog row, when there is one.
    pub local: Option<BackupEntry>,
    pub remote: Option<Sidecar>,
    /// Size of the archive object on the remote (`None`: missing).
    pub remote_object_size: Option<u64>,
    /// Why the state is `Mismatch`.
    pub problem: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RemoteList {
    pub url: String,
    pub entries: Vec<RemoteListEntry>,
    /// Sidecars that do not parse (key, why).
    pub invalid: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct RemoteVerifyResult {
    pub archive: String,
    pub backup_id: Option<i64>,
    pub size: u64,
    /// SHA-256 of the downloaded bytes (`--download` only).
    pub downloaded_sha256: Option<String>,
    pub problems: Vec<String>,
}

#[derive(Debug, Default)]
pub struct RemotePruneReport {
    /// Every remote copy with the decision (ids: catalog ids, or negative for copies the
    /// catalog does not know).
    pub decisions: Vec<(String, Decision)>,
    pub deleted: Vec<String>,
    /// Copies that should go but the server refused to delete (403: object lock, write-only
    /// credentials), with its answer. Expected with such a bucket: not a failure.
    pub not_deleted: Vec<(String, String)>,
    /// Copies whose delete failed otherwise (server error, network): the prune went on with
    /// the others; the command fails with the first one's exit code.
    pub failed: Vec<(String, Error)>,
}

#[derive(Debug, Clone, Default)]
pub struct RemoteReindexReport {
    pub added: Vec<BackupEntry>,
    pub known: usize,
    pub invalid: Vec<(String, String)>,
}

fn settings(ctx: &Ctx) -> Result<&RemoteSettings> {
    ctx.settings.remote.as_ref().ok_or_else(|| {
        Error::Usage(
            "no [remote] section in config.toml: offsite copies are not configured (see the README, \"Offsite copies\")".into(),
        )
    })
}

fn archive_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            Error::Usage(format!(
                "{} has no UTF-8 file name; it cannot be named on the remote",
                path.display()
            ))
        })
}

// ----------------------------------------------------------------------------- push
pub(crate) async fn push(
    ctx: &Ctx,
    target: RemoteTarget,
    progress: Progress,
) -> Result<PushReport> {
    let rs = settings(ctx)?.clone();
    let mut report = PushReport {
        aborted: abort_stale(ctx, &rs).await?,
        ..PushReport::default()
    };
    let entries = match target {
        RemoteTarget::One(id) => vec![ctx.get_backup(id).await?],
        RemoteTarget::All => {
            let mut all = ctx.list_backups().await?;
            all.reverse(); // oldest first
            all.retain(|e| e.record.status == BackupStatus::Completed && e.file_exists);
            all
        }
    };
    let single = matches!(target, RemoteTarget::One(_));
    for entry in entries {
        let id = entry.record.id;
        match push_one(ctx, &rs, &entry, &progress).await {
            Ok(p) => report.pushed.push(p),
            Err(e) if single || !matches!(e, Error::Usage(_)) => return Err(e),
            Err(e) => report.skipped.push((id, e.to_string())),
        }
    }
    Ok(report)
}

/// Aborts uploads recorded in the catalog that no push will finish: their backup is gone, or
/// its archive changed, or they belong to another remote URL or part size.
async fn abort_stale(ctx: &Ctx, rs: &RemoteSettings) -> Result<Vec<String>> {
    let mut aborted = Vec::new();
    let base = format!("s3://{}/", rs.bucket);
    // The recipients a staged ciphertext must have been encrypted to, to be resumed.
    let paths = &ctx.settings.paths;
    let recipients = ctx
        .settings
        .config
        .encryption
        .encryptor(&paths.config_file, &paths.work_dir)
        .ok()
        .flatten()
        .map(|e| e.fingerprints);
    let mut kept = Vec::new();
    for u in ctx.store(StoreMsg::ListRemoteUploads).await? {
        let backup = match u.backup_id {
            Some(id) => ctx.store(move |r| StoreMsg::GetBackup(id, r)).await?,
            None => None,
        };
        let k = u.object_key.clone();
        let encrypted = ctx.store(|r| StoreMsg::UploadEncryption(k, r)).await?;
        let live = backup.as_ref().is_some_and(|b| match &encrypted {
            None => {
                b.sha256.as_deref() == Some(u.archive_sha256.as_str())
                    && archive_name(&b.file_path).is_ok_and(|n| rs.object_key(&n) == u.object_key)
            }
            // A staged ciphertext of this archive, to the keys configured now.
            Some(f) => {
                b.sha256.as_deref() == Some(f.plain_sha256.as_str())
                    && recipients.as_ref() == Some(&f.recipients)
                    && archive_name(&b.file_path).is_ok_and(|n| {
                        rs.object_key(&format!("{n}{}", crate::encryption::AGE_SUFFIX))
                            == u.object_key
                    })
            }
        }) && u.part_size == rs.part_size;
        if live {
            kept.push(u.object_key);
            continue;
        }
        if let Some(path) = u.object_key.strip_prefix(&base) {
            // Already gone (completed, expired by a lifecycle rule): forget it all the same.
            abort_recorded(ctx, path, &u).await;
        }
        let key = u.object_key.clone();
        ctx.store(|r| StoreMsg::DeleteRemoteUpload(key, r)).await?;
        aborted.push(u.object_key);
    }
    remove_stale_staged(ctx, rs, &kept);
    aborted.extend(abort_orphans(ctx, rs).await?);
    Ok(aborted)
}

/// Removes staged ciphertexts no live upload sends (an upload aborted above, a crash while
/// encrypting, a changed remote).
fn remove_stale_staged(ctx: &Ctx, rs: &RemoteSettings, live: &[String]) {
    let Ok(rd) = std::fs::read_dir(staging_dir(ctx)) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let keep = name
            .to_str()
            .is_some_and(|n| live.contains(&rs.object_key(n)));
        if !keep && e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    // Only when empty.
    let _ = std::fs::remove_dir(staging_dir(ctx));
}

/// A day: a younger upload may be another host's push in progress.
const STALE_UPLOAD_AGE: chrono::TimeDelta = chrono::TimeDelta::days(1);

/// The uploads `abort_orphans` aborts: archive objects directly under our prefix, not
/// recorded in the catalog (those resume), started more than a day ago.
fn stale_orphans(
    pending: Vec<PendingUpload>,
    rs: &RemoteSettings,
    recorded: &[String],
    now: DateTime<Utc>,
) -> Vec<PendingUpload> {
    pending
        .into_iter()
        .filter(|p| {
            let name = match rs.prefix.as_str() {
                "" => Some(p.path.as_str()),
                prefix => p
                    .path
                    .strip_prefix(prefix)
                    .and_then(|r| r.strip_prefix('/')),
            };
            name.is_some_and(|n| !n.contains('/') && crate::encryption::is_archive_name(n))
                && !recorded.contains(&p.upload_id)
                && now - p.initiated >= STALE_UPLOAD_AGE
        })
        .collect()
}

/// Aborts the bucket's incomplete multipart uploads of our archives under the prefix that
/// the catalog does not record (a host that lost its catalog, another host's crashed push)
/// once they are older than a day: no push of ours will finish them, and their parts cost
/// storage. A younger one may be another host's push in progress. A server that cannot list
/// uploads (or credentials that may not) only costs a warning: the lifecycle rule is the
/// backstop.
async fn abort_orphans(ctx: &Ctx, rs: &RemoteSettings) -> Result<Vec<String>> {
    let pending = match ctx.remote(RemoteMsg::ListUploads).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("cannot list the remote's incomplete uploads: {e}");
            return Ok(Vec::new());
        }
    };
    let recorded: Vec<String> = ctx
        .store(StoreMsg::ListRemoteUploads)
        .await?
        .into_iter()
        .map(|u| u.upload_id)
        .collect();
    let mut aborted = Vec::new();
    for p in stale_orphans(pending, rs, &recorded, Utc::now()) {
        let key = format!("s3://{}/{}", rs.bucket, p.path);
        let (path, upload_id) = (p.path.clone(), p.upload_id.clone());
        match ctx
            .remote(|reply| RemoteMsg::Abort {
                path,
                upload_id,
                reply,
            })
            .await
        {
            Ok(()) => aborted.push(key),
            Err(e) => tracing::warn!("abort of stale upload {key} failed: {e}"),
        }
    }
    Ok(aborted)
}

/// The dir of the storage dir where a plain archive's ciphertext is staged while it is
/// pushed (`scope = "remote"`); never scanned as archives (`reindex` reads only the storage
/// dir's own files).
pub(crate) const PUSH_STAGING_DIR: &str = ".nuwax-push";

fn staging_dir(ctx: &Ctx) -> PathBuf {
    ctx.settings.paths.storage_dir.join(PUSH_STAGING_DIR)
}

/// Where the ciphertext of the remote object `name` is staged.
fn staged_path(ctx: &Ctx, name: &str) -> PathBuf {
    staging_dir(ctx).join(name)
}

/// The keys a plain archive is encrypted to on its way out: `None` without `[encryption]`,
/// or for an archive encrypted here already (`scope = "all"`), which goes up as it is.
fn push_encryption(ctx: &Ctx, entry: &BackupEntry) -> Result<Option<Encryption>> {
    if entry.encrypted {
        return Ok(None);
    }
    let paths = &ctx.settings.paths;
    ctx.settings
        .config
        .encryption
        .encryptor(&paths.config_file, &paths.work_dir)
}

/// What one push sends: the archive file itself, or a ciphertext staged from it.
struct Source {
    /// The file whose bytes become the object.
    file: PathBuf,
    size: u64,
    /// The object's SHA-256.
    sha256: String,
    /// How a staged ciphertext was encrypted (`None`: the archive file is sent as it is).
    encryption: Option<PushEncryption>,
}

async fn push_one(
    ctx: &Ctx,
    rs: &RemoteSettings,
    entry: &BackupEntry,
    progress: &Progress,
) -> Result<PushedCopy> {
    let rec = &entry.record;
    let id = rec.id;
    if rec.status != BackupStatus::Completed {
        return Err(Error::Usage(format!(
            "backup {id} is {:?}; only a Completed backup is pushed",
            rec.status
        )));
    }
    if rec.legacy {
        // Its manifest lives in this catalog only (the archive holds none): a copy restored on
        // another host could not be checked, so it is not sent.
        return Err(Error::Usage(format!(
            "backup {id} was made by the original nuwax-cli and is not pushed: its manifest lives only in this catalog, so a copy could not be verified on another host; take a new backup (nuwax-cli backup) and push that"
        )));
    }
    // With [encryption], a plain archive (scope = "remote", a PreUpgrade backup, one made
    // before encryption was set up) is encrypted on its way out: nothing plain reaches the
    // bucket. A key that does not parse refuses the push (exit 2) before anything is sent.
    let seal = push_encryption(ctx, entry)?;
    if !entry.file_exists {
        return Err(Error::Usage(format!(
            "backup {id}'s archive {} is not here; nothing to push",
            rec.file_path.display()
        )));
    }
    let sha = rec
        .sha256
        .clone()
        .ok_or_else(|| Error::Usage(format!("backup {id} has no recorded checksum")))?;
    let local_name = archive_name(&rec.file_path)?;
    let local_size = entry.file_size.unwrap_or(0);
    let name = match seal {
        Some(_) => format!("{local_name}{}", crate::encryption::AGE_SUFFIX),
        None => local_name,
    };
    let key = rs.object_key(&name);
    let n = name.clone();
    if let Some(existing) = ctx.remote(|r| RemoteMsg::GetSidecar(n, r)).await? {
        if existing.local_sha256() == sha
            && existing.local_size() == local_size
            && existing.plain_sha256.is_some() == seal.is_some()
        {
            record_copy(ctx, id, &key, &existing).await?;
            return Ok(PushedCopy {
                backup_id: id,
                archive: name,
                size: existing.size,
                sha256: existing.sha256,
                parts_sent: 0,
                parts_resumed: 0,
                already_there: true,
            });
        }
        return Err(Error::Refused(format!(
            "the remote has a different {name} (SHA-256 {}, this backup's is {sha}); nothing was overwritten. Check the remote with `nuwax-cli remote verify`",
            existing.local_sha256()
        )));
    }
    let source = match &seal {
        None => Source {
            file: rec.file_path.clone(),
            size: local_size,
            sha256: sha.clone(),
            encryption: None,
        },
        Some(e) => stage_ciphertext(ctx, &key, &name, rec, &sha, local_size, e, progress).await?,
    };
    let size = source.size;
    let part_size = rs.part_size.max(size.div_ceil(MAX_PARTS));
    let nparts = size.div_ceil(part_size).max(1);
    let path = rs.object_path(&name);

    // Resume an upload of exactly these bytes, or start one.
    let k = key.clone();
    let mut upload = match ctx.store(|r| StoreMsg::GetRemoteUpload(k, r)).await? {
        Some(u)
            if u.archive_sha256 == source.sha256 && u.size == size && u.part_size == part_size =>
        {
            u
        }
        other => {
            if let Some(old) = other {
                abort_recorded(ctx, &path, &old).await;
            }
            start_upload(ctx, &path, &key, id, &source, part_size).await?
        }
    };
    let resumed = upload.parts.len() as u64;
    if resumed > 0 {
        progress.notice(format!(
            "resuming the upload of {name}: {resumed} of {nparts} parts are on the remote already"
        ));
    }
    progress.phase(Phase::Uploading, Some(size), None);
    let mut hasher = Sha256::new();
    let mut sent = 0u64;
    let mut sent_bytes = 0u64;
    let started = Instant::now();
    let mut restarted = false;
    let mut index = 0u64;
    while index < nparts {
        if ctx.cancel.is_cancelled() {
            return Err(Error::Interrupted);
        }
        let offset = index * part_size;
        let len = part_size.min(size - offset);
        let data = read_part(&source.file, offset, len).await?;
        hasher.update(&data);
        if upload.parts.iter().any(|(i, _)| *i == index) {
            progress.advance(offset + len, index + 1, None);
            index += 1;
            continue;
        }
        let (p, u) = (path.clone(), upload.upload_id.clone());
        let result = ctx
            .remote(|reply| RemoteMsg::PutPart {
                path: p,
                upload_id: u,
                index,
                data,
                reply,
            })
            .await;
        let etag = match result {
            Ok(etag) => etag,
            // The recorded upload no longer exists on the server (aborted by a lifecycle
            // rule, or by hand): start over once.
            Err(Error::Remote(m)) if !restarted && resumed > 0 && m.contains("NoSuchUpload") => {
                restarted = true;
                progress.notice(format!(
                    "the interrupted upload of {name} is gone from the remote; starting it again"
                ));
                upload = start_upload(ctx, &path, &key, id, &source, part_size).await?;
                hasher = Sha256::new();
                index = 0;
                continue;
            }
            Err(e) => return Err(e),
        };
        let (k, e) = (key.clone(), etag.clone());
        ctx.store(move |r| StoreMsg::RecordRemotePart(k, index, e, len, r))
            .await?;
        crate::faults::point("remote-part-recorded");
        upload.parts.push((index, etag));
        sent += 1;
        sent_bytes += len;
        progress.advance(offset + len, index + 1, None);
        pace(ctx, rs, started, sent_bytes).await?;
        index += 1;
    }
    // Every byte of the object was read again just now: the parts a killed push sent came
    // from the same bytes only if the whole still hashes to what the upload recorded. Never
    // a mixed object: otherwise the upload is aborted (a staged ciphertext removed too).
    let actual = hex::encode(hasher.finalize());
    if actual != source.sha256 {
        abort_recorded(ctx, &path, &upload).await;
        let k = key.clone();
        ctx.store(|r| StoreMsg::DeleteRemoteUpload(k, r)).await?;
        if source.encryption.is_some() {
            let _ = std::fs::remove_file(&source.file);
        }
        return Err(Error::ChecksumMismatch {
            path: source.file.clone(),
            expected: source.sha256,
            actual,
        });
    }
    upload.parts.sort_by_key(|(i, _)| *i);
    let etags: Vec<String> = upload.parts.iter().map(|(_, e)| e.clone()).collect();
    let (p, u) = (path.clone(), upload.upload_id.clone());
    ctx.remote(|reply| RemoteMsg::Complete {
        path: p,
        upload_id: u,
        etags,
        reply,
    })
    .await?;
    // The commit marker, last.
    let sidecar = Sidecar {
        format: 1,
        archive: name.clone(),
        size,
        sha256: source.sha256.clone(),
        backup_type: rec.backup_type.as_str().to_string(),
        service_version: rec.service_version.clone(),
        created_at: rec
            .created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        entry_count: rec.entry_count,
        compose_project: rec.compose_project.clone(),
        uploaded_at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        tool: format!("nuwax-cli {}", env!("CARGO_PKG_VERSION")),
        plain_sha256: source.encryption.as_ref().map(|e| e.plain_sha256.clone()),
        plain_size: source.encryption.as_ref().map(|_| local_size),
        recipients: source
            .encryption
            .as_ref()
            .map(|e| e.recipients.clone())
            .unwrap_or_default(),
    };
    let body = serde_json::to_vec_pretty(&sidecar)
        .map_err(|e| Error::Internal(format!("cannot encode sidecar: {e}")))?;
    let sp = rs.sidecar_path(&name);
    ctx.remote(|r| RemoteMsg::PutObject(sp, Bytes::from(body), r))
        .await?;
    record_copy(ctx, id, &key, &sidecar).await?;
    if source.encryption.is_some() {
        // The staged ciphertext has done its job.
        let _ = std::fs::remove_file(&source.file);
        let _ = std::fs::remove_dir(staging_dir(ctx));
    }
    Ok(PushedCopy {
        backup_id: id,
        archive: name,
        size,
        sha256: source.sha256,
        parts_sent: sent,
        parts_resumed: if restarted { 0 } else { resumed },
        already_there: false,
    })
}

/// The ciphertext of a plain archive, staged in the storage dir for its push.
///
/// Design note: age encryption is randomized (a fresh file key, ephemeral recipient shares
/// and a random nonce every time), so encrypting the archive again cannot reproduce the
/// parts an interrupted push sent already. Streaming the encryption straight into the
/// multipart upload would therefore restart every interrupted upload from its first byte.
/// Staging the ciphertext once as a file (`<storage>/.nuwax-push/<name>.tar.gz.age`,
/// fsynced, its SHA-256 and the recipients' fingerprints recorded with the upload) lets
/// the part-by-part resume above work unchanged: a resumed push reads the same bytes, and
/// the whole file must still hash to the recorded checksum before the upload is completed.
/// The cost is the disk space of one more copy of the archive while it is pushed (checked
/// first) and one extra write. The staged file is reused only when the recorded upload was
/// made from this very archive (its plain SHA-256) to the same recipients; otherwise it is
/// encrypted again and the old upload aborted. It is removed once the copy is complete, or
/// when its upload is found stale.
#[allow(clippy::too_many_arguments)]
async fn stage_ciphertext(
    ctx: &Ctx,
    key: &str,
    name: &str,
    rec: &BackupRecord,
    plain_sha256: &str,
    plain_size: u64,
    encryption: &Encryption,
    progress: &Progress,
) -> Result<Source> {
    let facts = PushEncryption {
        plain_sha256: plain_sha256.to_string(),
        recipients: encryption.fingerprints.clone(),
    };
    let staged = staged_path(ctx, name);
    let (k1, k2) = (key.to_string(), key.to_string());
    let recorded = ctx.store(|r| StoreMsg::GetRemoteUpload(k1, r)).await?;
    let recorded_enc = ctx.store(|r| StoreMsg::UploadEncryption(k2, r)).await?;
    if let (Some(u), Some(f)) = (&recorded, &recorded_enc)
        && *f == facts
        && std::fs::metadata(&staged).is_ok_and(|m| m.is_file() && m.len() == u.size)
    {
        return Ok(Source {
            file: staged,
            size: u.size,
            sha256: u.archive_sha256.clone(),
            encryption: Some(facts),
        });
    }
    let _ = std::fs::remove_file(&staged);
    let dir = staging_dir(ctx);
    // age adds 16 bytes per 64 KiB chunk and a header of a few hundred bytes.
    crate::space::ensure(
        &ctx.settings.paths.storage_dir,
        plain_size + plain_size / 4096 + 64 * 1024,
    )?;
    std::fs::create_dir_all(&dir).ctx("cannot create staging dir", &dir)?;
    let (src, dest, enc, sha) = (
        rec.file_path.clone(),
        staged.clone(),
        encryption.clone(),
        plain_sha256.to_string(),
    );
    let (p, cancel) = (progress.clone(), ctx.cancel.clone());
    let digest = super::blocking(move || {
        crate::archive::crypt::seal_file(&src, &dest, &enc, &sha, &p, &cancel)
    })
    .await?;
    Ok(Source {
        file: staged,
        size: digest.size,
        sha256: digest.sha256,
        encryption: Some(facts),
    })
}

async fn start_upload(
    ctx: &Ctx,
    path: &str,
    key: &str,
    backup_id: i64,
    source: &Source,
    part_size: u64,
) -> Result<RemoteUpload> {
    let p = path.to_string();
    let upload_id = ctx.remote(|r| RemoteMsg::CreateUpload(p, r)).await?;
    let u = RemoteUpload {
        object_key: key.to_string(),
        backup_id: Some(backup_id),
        upload_id,
        archive_sha256: source.sha256.clone(),
        size: source.size,
        part_size,
        started_at: Utc::now(),
        parts: Vec::new(),
    };
    let rec = Box::new(u.clone());
    match source.encryption.clone() {
        None => ctx.store(|r| StoreMsg::BeginRemoteUpload(rec, r)).await?,
        Some(enc) => {
            ctx.store(|r| StoreMsg::BeginEncryptedUpload(rec, enc, r))
                .await?
        }
    }
    Ok(u)
}

/// Aborts a recorded upload on the server, best effort (it may be gone already).
async fn abort_recorded(ctx: &Ctx, path: &str, u: &RemoteUpload) {
    let (path, upload_id) = (path.to_string(), u.upload_id.clone());
    if let Err(e) = ctx
        .remote(|reply| RemoteMsg::Abort {
            path,
            upload_id,
            reply,
        })
        .await
    {
        tracing::warn!("abort of upload {} failed: {e}", u.object_key);
    }
}

async fn record_copy(ctx: &Ctx, id: i64, key: &str, s: &Sidecar) -> Result<()> {
    let uploaded_at = DateTime::parse_from_rfc3339(&s.uploaded_at)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|_| Utc::now());
    let rec = Box::new(RemoteCopyRecord {
        backup_id: id,
        object_key: key.to_string(),
        size: s.size,
        sha256: s.sha256.clone(),
        uploaded_at,
        verified_at: None,
    });
    // A copy encrypted on its way out: the plain archive it came from and its recipients.
    let enc = s.plain_sha256.clone().map(|plain_sha256| PushEncryption {
        plain_sha256,
        recipients: s.recipients.clone(),
    });
    ctx.store(|r| StoreMsg::SetEncryptedRemoteCopy(rec, enc, r))
        .await
}

async fn read_part(path: &Path, offset: u64, len: u64) -> Result<Bytes> {
    let path = path.to_path_buf();
    super::blocking(move || {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&path).ctx("cannot open archive", &path)?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, offset)
            .ctx("cannot read archive", &path)?;
        Ok(Bytes::from(buf))
    })
    .await
}

/// Keeps the average rate of this run at or below `upload_limit` (checked after each part).
async fn pace(ctx: &Ctx, rs: &RemoteSettings, started: Instant, bytes: u64) -> Result<()> {
    let Some(limit) = rs.upload_limit else {
        return Ok(());
    };
    let due = Duration::from_secs_f64(bytes as f64 / limit as f64);
    while started.elapsed() < due {
        if ctx.cancel.is_cancelled() {
            return Err(Error::Interrupted);
        }
        let left = due - started.elapsed();
        tokio::time::sleep(left.min(Duration::from_millis(200))).await;
    }
    Ok(())
}

// ----------------------------------------------------------------------------- list
pub(crate) async fn list(ctx: &Ctx) -> Result<RemoteList> {
    let rs = settings(ctx)?.clone();
    let listing: RemoteListing = ctx.remote(RemoteMsg::List).await?;
    let local = ctx.list_backups().await?;
    let mut entries: Vec<RemoteListEntry> = Vec::new();
    for s in &listing.copies {
        let row = local.iter().find(|b| {
            b.record.status == BackupStatus::Completed
                && archive_name(&b.record.file_path).ok().as_deref() == Some(s.local_archive())
        });
        let object = listing.objects.get(&s.archive).copied();
        let mut problem = match object {
            None => Some("the sidecar's archive object is missing on the remote".to_string()),
            Some(sz) if sz != s.size => Some(format!(
                "the archive object has {sz} bytes, the sidecar says {}",
                s.size
            )),
            _ => None,
        };
        let state = match row {
            Some(b) if b.file_exists => {
                if problem.is_none() && b.record.sha256.as_deref() != Some(s.local_sha256()) {
                    problem = Some(format!(
                        "the local archive's SHA-256 is {}, the remote's {}",
                        b.record.sha256.as_deref().unwrap_or("unknown"),
                        s.local_sha256()
                    ));
                }
                if problem.is_some() {
                    CopyState::Mismatch
                } else {
                    CopyState::Both
                }
            }
            _ if problem.is_some() => CopyState::Mismatch,
            _ => CopyState::RemoteOnly,
        };
        entries.push(RemoteListEntry {
            archive: s.archive.clone(),
            state,
            local: row.cloned(),
            remote: Some(s.clone()),
            remote_object_size: object,
            problem,
        });
    }
    for b in &local {
        if b.record.status != BackupStatus::Completed || !b.file_exists {
            continue;
        }
        let Ok(name) = archive_name(&b.record.file_path) else {
            continue;
        };
        if entries.iter().any(|e| {
            e.archive == name || e.remote.as_ref().is_some_and(|s| s.local_archive() == name)
        }) {
            continue;
        }
        entries.push(RemoteListEntry {
            archive: name,
            state: CopyState::LocalOnly,
            local: Some(b.clone()),
            remote: None,
            remote_object_size: None,
            problem: None,
        });
    }
    let created = |e: &RemoteListEntry| {
        e.local
            .as_ref()
            .map(|b| b.record.created_at.to_rfc3339())
            .or_else(|| e.remote.as_ref().map(|s| s.created_at.clone()))
            .unwrap_or_default()
    };
    entries.sort_by_key(|e| std::cmp::Reverse(created(e)));
    Ok(RemoteList {
        url: rs.url.clone(),
        entries,
        invalid: listing.invalid,
    })
}

// ----------------------------------------------------------------------------- pull
/// Downloads a remote copy (by catalog id or archive name) into the storage dir and adds it
/// to the catalog when it is not there yet. The local archive and catalog are untouched on
/// any failure.
pub(crate) async fn pull(ctx: &Ctx, which: &str, progress: Progress) -> Result<BackupEntry> {
    settings(ctx)?;
    let (row, name) = match which.parse::<i64>() {
        Ok(id) => {
            let e = ctx.get_backup(id).await?;
            let n = archive_name(&e.record.file_path)?;
            (Some(e), n)
        }
        Err(_) => {
            // `remote list` names a copy encrypted on its way out `<name>.tar.gz.age`; its
            // backup here is the plain `<name>.tar.gz`.
            let mut row = None;
            let mut names = vec![which.to_string()];
            if let Some(plain) = which.strip_suffix(crate::encryption::AGE_SUFFIX) {
                names.push(plain.to_string());
            }
            for n in &names {
                let p = ctx.settings.paths.storage_dir.join(n);
                row = ctx
                    .store(|r| StoreMsg::FindBackupByPath(p, r))
                    .await?
                    .map(BackupEntry::from_record);
                if row.is_some() {
                    break;
                }
            }
            let name = match &row {
                Some(e) => archive_name(&e.record.file_path)?,
                None => which.to_string(),
            };
            (row, name)
        }
    };
    if let Some(e) = &row
        && e.file_exists
    {
        progress.notice(format!(
            "backup {} is here already ({}); nothing was downloaded",
            e.record.id,
            e.record.file_path.display()
        ));
        return Ok(e.clone());
    }
    fetch(ctx, row, &name, progress).await
}

/// Pulls the archive of a catalog row whose file is missing, when a remote is configured and
/// has it; used by `rollback` and `rollback-data-only`. Returns the refreshed entry.
pub(crate) async fn ensure_local(
    ctx: &Ctx,
    entry: BackupEntry,
    progress: &Progress,
) -> Result<BackupEntry> {
    if entry.file_exists || ctx.settings.remote.is_none() {
        return Ok(entry);
    }
    let name = archive_name(&entry.record.file_path)?;
    progress.notice(format!(
        "backup {}'s archive is not here; downloading it from the remote",
        entry.record.id
    ));
    fetch(ctx, Some(entry), &name, progress.clone()).await
}

/// The complete remote copy of the local archive `name`: the object of that name, or the
/// ciphertext `<name>.age` it was encrypted into on its way out.
async fn find_copy(ctx: &Ctx, name: &str) -> Result<Option<Sidecar>> {
    let n = name.to_string();
    if let Some(s) = ctx.remote(|r| RemoteMsg::GetSidecar(n, r)).await? {
        return Ok(Some(s));
    }
    if crate::encryption::is_encrypted_name(Path::new(name)) {
        return Ok(None);
    }
    let n = format!("{name}{}", crate::encryption::AGE_SUFFIX);
    Ok(ctx
        .remote(|r| RemoteMsg::GetSidecar(n, r))
        .await?
        .filter(|s| s.plain_sha256.is_some()))
}

async fn fetch(
    ctx: &Ctx,
    row: Option<BackupEntry>,
    name: &str,
    progress: Progress,
) -> Result<BackupEntry> {
    let rs = settings(ctx)?.clone();
    let sidecar = find_copy(ctx, name).await?.ok_or_else(|| {
        Error::Usage(format!(
            "the remote {} has no complete copy of {name} (no sidecar {})",
            rs.url,
            rs.sidecar_path(name)
        ))
    })?;
    if let Some(e) = &row
        && let Some(sha) = &e.record.sha256
        && sha != sidecar.local_sha256()
    {
        return Err(Error::ChecksumMismatch {
            path: PathBuf::from(rs.object_key(&sidecar.archive)),
            expected: sha.clone(),
            actual: sidecar.local_sha256().to_string(),
        });
    }
    // An encrypted copy is verified (decrypted, every file checked against its manifest)
    // before it becomes a catalog row: its key first, before a byte is downloaded.
    let remote_name = sidecar.archive.clone();
    let sealed_on_push = sidecar.plain_sha256.is_some();
    let key = if crate::encryption::is_encrypted_name(Path::new(&remote_name)) {
        Some(ctx.given_key()?.ok_or_else(|| {
            Error::KeyRequired(format!(
                "the remote copy {} is encrypted; pass the identity whose public key it was encrypted to with --identity FILE (or --passphrase-file FILE for a passphrase), or set [encryption] identity_file; nothing was downloaded",
                rs.object_key(&remote_name)
            ))
        })?)
    } else {
        ctx.given_key()?
    };
    let dir = ctx.settings.paths.storage_dir.clone();
    // Room for the whole archive (and the margin) before a byte is written; a copy encrypted
    // on its way out is downloaded, then decrypted beside it.
    let needed = if sealed_on_push {
        sidecar.size + sidecar.local_size()
    } else {
        sidecar.size
    };
    crate::space::ensure(&dir, needed)?;
    std::fs::create_dir_all(&dir).ctx("cannot create storage dir", &dir)?;
    let dest = dir.join(sidecar.local_archive());
    if dest.exists() {
        return Err(Error::Refused(format!(
            "{} exists already but is not this backup's archive in the catalog; move it away or run `nuwax-cli reindex`",
            dest.display()
        )));
    }
    let partial = crate::fsutil::partial_path(&dest);
    let downloaded = crate::fsutil::partial_path(&dir.join(&remote_name));
    let _ = std::fs::remove_file(&partial);
    let _ = std::fs::remove_file(&downloaded);
    let fail = |e: Error| {
        let _ = std::fs::remove_file(&partial);
        let _ = std::fs::remove_file(&downloaded);
        e
    };
    let (path, d) = (rs.object_path(&remote_name), downloaded.clone());
    let (size, sha) = ctx
        .remote(|reply| RemoteMsg::Download {
            path,
            dest: d,
            progress: progress.clone(),
            cancel: ctx.cancel.clone(),
            reply,
        })
        .await
        .map_err(fail)?;
    if sha != sidecar.sha256 || size != sidecar.size {
        return Err(fail(Error::ChecksumMismatch {
            path: PathBuf::from(rs.object_key(&remote_name)),
            expected: format!("{} ({} bytes)", sidecar.sha256, sidecar.size),
            actual: format!("{sha} ({size} bytes)"),
        }));
    }
    if sealed_on_push {
        // Back to the plain archive this host had: decrypted while hashed, then checked
        // against the plain checksum the sidecar (and the catalog) recorded.
        let key = key
            .clone()
            .ok_or_else(|| Error::Internal("no key".into()))?;
        let (src, out, p, cancel) = (
            downloaded.clone(),
            partial.clone(),
            progress.clone(),
            ctx.cancel.clone(),
        );
        let plain = super::blocking(move || {
            crate::archive::crypt::unseal_file(&src, &out, &key, &p, &cancel)
        })
        .await
        .map_err(fail)?;
        let _ = std::fs::remove_file(&downloaded);
        if plain.sha256 != sidecar.local_sha256() || plain.size != sidecar.local_size() {
            return Err(fail(Error::ChecksumMismatch {
                path: PathBuf::from(rs.object_key(&remote_name)),
                expected: format!(
                    "{} ({} bytes) decrypted",
                    sidecar.local_sha256(),
                    sidecar.local_size()
                ),
                actual: format!("{} ({} bytes)", plain.sha256, plain.size),
            }));
        }
    } else {
        std::fs::rename(&downloaded, &partial)
            .ctx("cannot rename", &partial)
            .map_err(fail)?;
    }
    let manifest = match &row {
        Some(e) => ctx.legacy_manifest(&e.record).await.map_err(fail)?,
        None => None,
    };
    let report = ctx
        .archive(|r| ArchiveMsg::Verify {
            path: partial.clone(),
            expected_sha256: Some(sidecar.local_sha256().to_string()),
            manifest,
            key: if sealed_on_push { None } else { key },
            progress: progress.clone(),
            cancel: ctx.cancel.clone(),
            reply: r,
        })
        .await
        .map_err(fail)?;
    if !report.is_ok() || !report.content_checked {
        let detail = if report.content_checked {
            report.problems.join("; ")
        } else {
            "its content could not be checked".to_string()
        };
        return Err(fail(Error::Corrupt {
            path: PathBuf::from(rs.object_key(&remote_name)),
            detail,
        }));
    }
    std::fs::rename(&partial, &dest)
        .ctx("cannot rename into place", &dest)
        .map_err(fail)?;
    crate::fsutil::sync_dir(&dir)?;
    let key = rs.object_key(&remote_name);
    let id = match row {
        Some(e) => e.record.id,
        None => {
            super::maintenance::adopt_verified(ctx, &dest, &report)
                .await?
                .record
                .id
        }
    };
    record_copy(ctx, id, &key, &sidecar).await?;
    ctx.get_backup(id).await
}

// ----------------------------------------------------------------------------- verify
pub(crate) async fn verify(
    ctx: &Ctx,
    target: RemoteTarget,
    download: bool,
    progress: Progress,
) -> Result<Vec<RemoteVerifyResult>> {
    let rs = settings(ctx)?.clone();
    let listing: RemoteListing = ctx.remote(RemoteMsg::List).await?;
    let local = ctx.list_backups().await?;
    let row_of = |name: &str| {
        local
            .iter()
            .find(|b| archive_name(&b.record.file_path).ok().as_deref() == Some(name))
    };
    let copies: Vec<Sidecar> = match target {
        RemoteTarget::All => listing.copies.clone(),
        RemoteTarget::One(id) => {
            let e = ctx.get_backup(id).await?;
            let name = archive_name(&e.record.file_path)?;
            match listing.copies.iter().find(|s| s.local_archive() == name) {
                Some(s) => vec![s.clone()],
                None => {
                    return Err(Error::Corrupt {
                        path: PathBuf::from(rs.object_key(&name)),
                        detail: format!("backup {id} has no complete copy on the remote"),
                    });
                }
            }
        }
    };
    let recorded = ctx.store(StoreMsg::ListRemoteCopies).await?;
    let mut out = Vec::new();
    for s in copies {
        let row = row_of(s.local_archive());
        let mut problems = Vec::new();
        match listing.objects.get(&s.archive) {
            None => problems.push("the archive object is missing".to_string()),
            Some(&sz) if sz != s.size => problems.push(format!(
                "the archive object has {sz} bytes, recorded at upload: {}",
                s.size
            )),
            _ => {}
        }
        if let Some(b) = row
            && let Some(sha) = &b.record.sha256
            && sha != s.local_sha256()
        {
            problems.push(format!(
                "the sidecar's SHA-256 {} differs from the catalog's {sha}",
                s.local_sha256()
            ));
        }
        // The object's own checksum as this catalog recorded it at upload (for an encrypted
        // copy: the ciphertext's, checked without any key).
        if let Some(b) = row
            && let Some(c) = recorded.iter().find(|c| c.backup_id == b.record.id)
            && c.object_key == rs.object_key(&s.archive)
            && (c.sha256 != s.sha256 || c.size != s.size)
        {
            problems.push(format!(
                "the sidecar's checksum {} ({} bytes) differs from the one recorded at upload {} ({} bytes)",
                s.sha256, s.size, c.sha256, c.size
            ));
        }
        let mut downloaded_sha256 = None;
        if download && problems.is_empty() {
            let path = rs.object_path(&s.archive);
            let (size, sha) = ctx
                .remote(|reply| RemoteMsg::Hash {
                    path,
                    progress: progress.clone(),
                    cancel: ctx.cancel.clone(),
                    reply,
                })
                .await?;
            if sha != s.sha256 || size != s.size {
                problems.push(format!(
                    "the archive object's content does not match: SHA-256 {sha} ({size} bytes), recorded at upload {} ({} bytes)",
                    s.sha256, s.size
                ));
            }
            downloaded_sha256 = Some(sha);
        }
        if problems.is_empty()
            && download
            && let Some(b) = row
        {
            let id = b.record.id;
            ctx.store(move |r| StoreMsg::MarkRemoteVerified(id, Utc::now(), r))
                .await?;
        }
        out.push(RemoteVerifyResult {
            archive: s.archive.clone(),
            backup_id: row.map(|b| b.record.id),
            size: s.size,
            downloaded_sha256,
            problems,
        });
    }
    Ok(out)
}

// ----------------------------------------------------------------------------- prune
/// Retention on the remote (`[remote.retention]`, or the rules given). Never deletes the
/// newest completed backup's copy (the retention plan keeps it); a copy the server refuses
/// to delete (object lock, write-only credentials) is reported, not an error.
pub(crate) async fn prune(
    ctx: &Ctx,
    rules: Option<KeepRules>,
    dry_run: bool,
) -> Result<RemotePruneReport> {
    let rs = settings(ctx)?.clone();
    let rules = rules.unwrap_or_else(|| KeepRules::from(&rs.retention));
    let listing: RemoteListing = ctx.remote(RemoteMsg::List).await?;
    let local = ctx.list_backups().await?;
    let upgrades = ctx.store(StoreMsg::ListUpgrades).await?;
    let mut records = Vec::new();
    // Catalog id (or the stand-in) -> the remote object's name.
    let mut objects = std::collections::HashMap::new();
    for (i, s) in listing.copies.iter().enumerate() {
        let row = local
            .iter()
            .find(|b| archive_name(&b.record.file_path).ok().as_deref() == Some(s.local_archive()));
        let mut rec = sidecar_record(&ctx.settings.paths.storage_dir, s)?;
        rec.id = row.map(|b| b.record.id).unwrap_or(-(i as i64) - 1);
        objects.insert(rec.id, s.archive.clone());
        records.push(rec);
    }
    records.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    let decisions = crate::retention::plan(&records, |_| true, &rules, &upgrades, Utc::now())?;
    let mut report = RemotePruneReport::default();
    for d in decisions {
        let name = objects.get(&d.id).cloned().unwrap_or_default();
        if !d.keep && !dry_run {
            if ctx.cancel.is_cancelled() {
                return Err(Error::Interrupted);
            }
            match delete_copy(ctx, &rs, &name).await {
                Ok(Deleted::Yes) => {
                    if d.id > 0 {
                        forget_copy(ctx, d.id).await?;
                    }
                    report.deleted.push(name.clone());
                }
                Ok(Deleted::Refused(answer)) => {
                    report.not_deleted.push((name.clone(), answer));
                }
                Err(e) => report.failed.push((name.clone(), e)),
            }
        }
        report.decisions.push((name, d));
    }
    Ok(report)
}

/// Deletes the remote copy of `name`: the sidecar first (from then on no listing shows the
/// copy as complete), then the archive object. A refusal of either is the answer (the copy,
/// or at least its archive object, stays on the remote).
pub(crate) async fn delete_copy(ctx: &Ctx, rs: &RemoteSettings, name: &str) -> Result<Deleted> {
    let sp = rs.sidecar_path(name);
    if let refused @ Deleted::Refused(_) = ctx.remote(|r| RemoteMsg::Delete(sp, r)).await? {
        return Ok(refused);
    }
    let op = rs.object_path(name);
    ctx.remote(|r| RemoteMsg::Delete(op, r)).await
}

/// The remote copy of backup `id` is gone: forget it, and drop the catalog row too when the
/// archive is not here either (neither copy is left: nothing to restore).
async fn forget_copy(ctx: &Ctx, id: i64) -> Result<()> {
    ctx.store(move |r| StoreMsg::DeleteRemoteCopy(id, r))
        .await?;
    if let Some(b) = ctx.store(move |r| StoreMsg::GetBackup(id, r)).await?
        && b.status == BackupStatus::Completed
        && !std::fs::metadata(&b.file_path).is_ok_and(|m| m.is_file())
    {
        ctx.store(move |r| StoreMsg::DeleteBackup(id, r)).await?;
    }
    Ok(())
}

/// A catalog row as the sidecar describes it (file in the storage dir, possibly missing).
fn sidecar_record(storage_dir: &Path, s: &Sidecar) -> Result<BackupRecord> {
    let created_at = DateTime::parse_from_rfc3339(&s.created_at)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| Error::Corrupt {
            path: PathBuf::from(&s.archive),
            detail: format!("remote sidecar created_at {:?}: {e}", s.created_at),
        })?;
    Ok(BackupRecord {
        id: 0,
        file_path: storage_dir.join(s.local_archive()),
        backup_type: BackupType::parse(&s.backup_type).unwrap_or(BackupType::Manual),
        service_version: s.service_version.clone(),
        status: BackupStatus::Completed,
        size: Some(s.local_size()),
        sha256: Some(s.local_sha256().to_string()),
        entry_count: s.entry_count,
        error: None,
        created_at,
        finished_at: Some(created_at),
        owner_pid: None,
        verified_at: None,
        compose_project: s.compose_project.clone(),
        // Legacy backups are never pushed (push_one).
        legacy: false,
    })
}

// ----------------------------------------------------------------------------- reindex
/// `reindex --remote`: a catalog row for every complete remote copy the catalog lacks (its
/// archive stays on the remote until a pull or a rollback needs it), oldest first.
pub(crate) async fn reindex(ctx: &Ctx) -> Result<RemoteReindexReport> {
    let rs = settings(ctx)?.clone();
    let listing: RemoteListing = ctx.remote(RemoteMsg::List).await?;
    let mut report = RemoteReindexReport {
        invalid: listing.invalid.clone(),
        ..Default::default()
    };
    for s in &listing.copies {
        let rec = match sidecar_record(&ctx.settings.paths.storage_dir, s) {
            Ok(r) => r,
            Err(e) => {
                report
                    .invalid
                    .push((rs.sidecar_path(&s.archive), e.to_string()));
                continue;
            }
        };
        let p = rec.file_path.clone();
        if ctx
            .store(|r| StoreMsg::FindBackupByPath(p, r))
            .await?
            .is_some()
        {
            report.known += 1;
            continue;
        }
        let id = ctx
            .store(|r| StoreMsg::InsertCompletedBackup(Box::new(rec), r))
            .await?;
        record_copy(ctx, id, &rs.object_key(&s.archive), s).await?;
        report.added.push(ctx.get_backup(id).await?);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_unrecorded_uploads_of_our_archives_are_stale() {
        let rs = crate::remote::RemoteConfig {
            url: "s3://b/site-a".into(),
            endpoint: None,
            region: None,
            push: crate::remote::PushMode::Manual,
            part_size: None,
            upload_limit: None,
            credentials_file: None,
            profile: None,
            timeout: None,
            retention: Default::default(),
        }
        .resolve(Path::new("/w"))
        .unwrap();
        let now = Utc::now();
        let up = |path: &str, id: &str, hours: i64| PendingUpload {
            path: path.into(),
            upload_id: id.into(),
            initiated: now - chrono::TimeDelta::hours(hours),
        };
        let pending = vec![
            up("site-a/old.tar.gz", "1", 25),
            up("site-a/young.tar.gz", "2", 23),
            up("site-a/recorded.tar.gz", "3", 99),
            up("elsewhere/old.tar.gz", "4", 99),
            up("site-a/deeper/old.tar.gz", "5", 99),
            up("site-a/old.txt", "6", 99),
            up("site-ab/old.tar.gz", "7", 99),
        ];
        let stale = stale_orphans(pending, &rs, &["3".to_string()], now);
        let ids: Vec<&str> = stale.iter().map(|p| p.upload_id.as_str()).collect();
        assert_eq!(ids, ["1"]);
    }
}
