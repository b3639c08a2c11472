//! StoreActor: the only owner of the SQLite connection.
//!
//! Each request runs on `spawn_blocking` (SQLite calls block; `busy_timeout` can wait), with
//! the `Store` moved into the blocking task and back, so the async runtime never blocks and
//! no other code can reach the connection.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use nuwax_store::{
    BackupCompletion, BackupRecord, DrillFinish, DrillRecord, NewBackup, Operation, OperationKind,
    OperationState, RemoteCopyRecord, RemoteUpload, Store, UpgradeOutcome, UpgradeRecord,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::reply;
use crate::error::{Error, Result};

pub(crate) struct StoreActor;

pub(crate) struct StoreState {
    store: Option<Store>,
    db_file: PathBuf,
    /// Why the catalog could not be opened: every request answers with it (exit 1 and advice
    /// on rebuilding), instead of the actor failing to start ("actor panicked").
    open_error: Option<OpenFailure>,
    /// Where `reindex --move-broken-catalog` moved an unusable catalog.
    moved_aside: Option<PathBuf>,
}

/// What the store actor is started with.
pub(crate) struct StoreArgs {
    pub db_file: PathBuf,
    /// Move an unusable catalog aside and start a fresh one (only `reindex` asks).
    pub move_broken: bool,
    /// A read-only command: a catalog file that does not exist is not created; an empty
    /// catalog in memory answers instead (a directory that is not a working dir stays as
    /// it is).
    pub read_only: bool,
}

/// A failed open, kept so that every request can report it (store errors are not `Clone`).
enum OpenFailure {
    Unusable { reason: String },
    Other { message: String },
}

impl OpenFailure {
    fn of(e: nuwax_store::Error) -> OpenFailure {
        match e {
            nuwax_store::Error::Unusable { reason, .. } => OpenFailure::Unusable { reason },
            other => OpenFailure::Other {
                message: other.to_string(),
            },
        }
    }

    fn error(&self, db_file: &std::path::Path) -> Error {
        match self {
            OpenFailure::Unusable { reason } => Error::Store(nuwax_store::Error::Unusable {
                path: db_file.to_path_buf(),
                reason: reason.clone(),
            }),
            OpenFailure::Other { message } => Error::Io {
                context: "cannot open the catalog",
                path: db_file.to_path_buf(),
                source: std::io::Error::other(message.clone()),
            },
        }
    }
}

/// Opens the catalog; with `move_broken`, an unusable one is moved aside first; with
/// `read_only`, a missing one is an empty one in memory.
fn open_store(
    db_file: &std::path::Path,
    move_broken: bool,
    read_only: bool,
) -> (Result<Store, OpenFailure>, Option<PathBuf>) {
    let absent = matches!(std::fs::symlink_metadata(db_file), Err(e) if e.kind() == std::io::ErrorKind::NotFound);
    if read_only && absent {
        return (Store::open_in_memory().map_err(OpenFailure::of), None);
    }
    match Store::open(db_file) {
        Ok(store) => (Ok(store), None),
        Err(nuwax_store::Error::Unusable { reason, .. }) if move_broken => {
            match Store::move_aside(db_file) {
                Ok(moved) => (Store::open(db_file).map_err(OpenFailure::of), Some(moved)),
                Err(e) => (
                    Err(OpenFailure::Other {
                        message: format!(
                            "the catalog is unusable ({reason}) and cannot be moved aside: {e}"
                        ),
                    }),
                    None,
                ),
            }
        }
        Err(e) => (Err(OpenFailure::of(e)), None),
    }
}

type Reply<T> = RpcReplyPort<Result<T>>;

pub(crate) enum StoreMsg {
    ListBackups(Reply<Vec<BackupRecord>>),
    /// Offsite copies (`ops/remote.rs`): uploads in progress with their parts, remote copies.
    BeginRemoteUpload(Box<RemoteUpload>, Reply<()>),
    RecordRemotePart(String, u64, String, u64, Reply<()>),
    DeleteRemoteUpload(String, Reply<()>),
    ListRemoteUploads(Reply<Vec<RemoteUpload>>),
    GetRemoteUpload(String, Reply<Option<RemoteUpload>>),
    /// A plain archive encrypted on its way out: its upload, the facts, in one transaction.
    BeginEncryptedUpload(Box<RemoteUpload>, nuwax_store::PushEncryption, Reply<()>),
    UploadEncryption(String, Reply<Option<nuwax_store::PushEncryption>>),
    SetEncryptedRemoteCopy(
        Box<RemoteCopyRecord>,
        Option<nuwax_store::PushEncryption>,
        Reply<()>,
    ),
    DeleteRemoteCopy(i64, Reply<()>),
    GetRemoteCopy(i64, Reply<Option<RemoteCopyRecord>>),
    ListRemoteCopies(Reply<Vec<RemoteCopyRecord>>),
    MarkRemoteVerified(i64, DateTime<Utc>, Reply<()>),
    GetBackup(i64, Reply<Option<BackupRecord>>),
    /// Use case: a backup's operation row (journal `details`, phase `archiving`) and catalog
    /// row, in one transaction; replies (operation id, backup id).
    BeginBackup(NewBackup, serde_json::Value, Reply<(i64, i64)>),
    /// Use case: backup and operation completed, and the last compression ratio recorded.
    CompleteBackupOperation {
        op: i64,
        id: i64,
        completion: BackupCompletion,
        setting: Option<(String, String)>,
        reply: Reply<()>,
    },
    /// Use case: an upgrade's history row and operation row; replies (operation id, upgrade id).
    BeginUpgradeOperation(String, String, serde_json::Value, Reply<(i64, i64)>),
    /// Use case: the upgrade ends with an outcome, and its operation with it.
    FinishUpgradeOperation(i64, i64, UpgradeOutcome, Option<String>, Reply<()>),
    /// Use case: backup and operation failed with the reason.
    FailBackupOperation(i64, i64, String, Reply<()>),
    CompleteBackup(i64, BackupCompletion, Reply<()>),
    FailBackup(i64, String, Reply<()>),
    DeleteBackup(i64, Reply<bool>),
    MarkVerified(i64, DateTime<Utc>, Reply<()>),
    /// The backup was taken hot (issue 15).
    MarkHot(i64, Reply<()>),
    /// Whether the backup was taken hot (`false` for an unknown id).
    IsHot(i64, Reply<bool>),
    /// How an encrypted backup was encrypted (ciphertext SHA-256, recipients' fingerprints).
    RecordEncryption(i64, nuwax_store::EncryptionFacts, Reply<()>),
    BeginOperation(OperationKind, serde_json::Value, Reply<i64>),
    SetOperationPhase(i64, String, Option<serde_json::Value>, Reply<()>),
    FinishOperation(i64, OperationState, Option<String>, Reply<()>),
    UnfinishedOperations(Reply<Vec<Operation>>),
    GetSetting(String, Reply<Option<String>>),
    FindBackupByPath(std::path::PathBuf, Reply<Option<BackupRecord>>),
    InsertCompletedBackup(Box<BackupRecord>, Reply<i64>),
    /// An adopted archive's row, marked hot when its `info.json` says so, at once.
    InsertAdoptedBackup(Box<BackupRecord>, bool, Reply<i64>),
    /// The ids of the backups taken hot.
    HotBackups(Reply<Vec<i64>>),
    /// A legacy backup's row and the manifest computed when it was adopted (JSON), at once.
    InsertLegacyBackup(Box<BackupRecord>, String, Reply<i64>),
    /// The manifest of legacy backup `id` (JSON), if recorded.
    LegacyManifest(i64, Reply<Option<String>>),
    SetUpgradeBackup(i64, i64, Reply<()>),
    FinishUpgrade(i64, UpgradeOutcome, Option<String>, Reply<()>),
    ListUpgrades(Reply<Vec<UpgradeRecord>>),
    SetSetting(String, String, Reply<()>),
    /// Where an unusable catalog was moved aside at start-up, if it was.
    MovedAside(Reply<Option<PathBuf>>),
    /// Use case: a drill's row and its journal row; replies (operation id, drill id).
    BeginDrillOperation(i64, serde_json::Value, Reply<(i64, i64)>),
    /// Use case: the drill ends, and its operation with it (in that state).
    FinishDrillOperation(i64, i64, Box<DrillFinish>, OperationState, Reply<()>),
    /// The drill row alone (its operation stays for recovery).
    FinishDrill(i64, Box<DrillFinish>, Reply<()>),
    GetDrill(i64, Reply<Option<DrillRecord>>),
    /// The newest drill of each backup.
    LatestDrills(Reply<Vec<DrillRecord>>),
}

impl StoreState {
    /// Runs `f` against the store on the blocking pool.
    async fn run<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&Store) -> nuwax_store::Result<T> + Send + 'static,
    ) -> Result<T> {
        if let Some(failure) = &self.open_error {
            return Err(failure.error(&self.db_file));
        }
        let store = self
            .store
            .take()
            .ok_or_else(|| Error::Internal("catalog connection lost".into()))?;
        let (store, result) = tokio::task::spawn_blocking(move || {
            let r = f(&store);
            (store, r)
        })
        .await
        .map_err(|e| Error::Internal(format!("catalog task failed: {e}")))?;
        self.store = Some(store);
        result.map_err(|e| match e {
            // A file damaged under a running catalog: same advice as at open.
            nuwax_store::Error::Sqlite(err) if nuwax_store::is_damage(&err) => {
                Error::Store(nuwax_store::Error::Unusable {
                    path: self.db_file.clone(),
                    reason: format!("not a usable SQLite database ({err})"),
                })
            }
            other => Error::from(other),
        })
    }
}

impl Actor for StoreActor {
    type Msg = StoreMsg;
    type State = StoreState;
    type Arguments = StoreArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: StoreArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let db_file = args.db_file.clone();
        let (store, moved_aside) = tokio::task::spawn_blocking(move || {
            open_store(&args.db_file, args.move_broken, args.read_only)
        })
        .await?;
        let (store, open_error) = match store {
            Ok(s) => (Some(s), None),
            Err(f) => (None, Some(f)),
        };
        Ok(StoreState {
            store,
            db_file,
            open_error,
            moved_aside,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let pid = std::process::id();
        match msg {
            StoreMsg::ListBackups(r) => reply(r, st.run(|s| s.list_backups()).await),
            StoreMsg::BeginRemoteUpload(u, r) => {
                reply(r, st.run(move |s| s.begin_remote_upload(&u)).await)
            }
            StoreMsg::RecordRemotePart(key, i, etag, size, r) => reply(
                r,
                st.run(move |s| s.record_remote_part(&key, i, &etag, size))
                    .await,
            ),
            StoreMsg::DeleteRemoteUpload(key, r) => {
                reply(r, st.run(move |s| s.delete_remote_upload(&key)).await)
            }
            StoreMsg::ListRemoteUploads(r) => reply(r, st.run(|s| s.list_remote_uploads()).await),
            StoreMsg::GetRemoteUpload(key, r) => {
                reply(r, st.run(move |s| s.get_remote_upload(&key)).await)
            }
            StoreMsg::BeginEncryptedUpload(u, enc, r) => {
                reply(r, st.run(move |s| s.begin_encrypted_upload(&u, &enc)).await)
            }
            StoreMsg::UploadEncryption(key, r) => {
                reply(r, st.run(move |s| s.upload_encryption(&key)).await)
            }
            StoreMsg::SetEncryptedRemoteCopy(c, enc, r) => reply(
                r,
                st.run(move |s| s.set_remote_copy_encrypted(&c, enc.as_ref()))
                    .await,
            ),
            StoreMsg::DeleteRemoteCopy(id, r) => {
                reply(r, st.run(move |s| s.delete_remote_copy(id)).await)
            }
            StoreMsg::GetRemoteCopy(id, r) => {
                reply(r, st.run(move |s| s.get_remote_copy(id)).await)
            }
            StoreMsg::ListRemoteCopies(r) => reply(r, st.run(|s| s.list_remote_copies()).await),
            StoreMsg::MarkRemoteVerified(id, at, r) => {
                reply(r, st.run(move |s| s.mark_remote_verified(id, at)).await)
            }
            StoreMsg::GetBackup(id, r) => reply(r, st.run(move |s| s.get_backup(id)).await),
            StoreMsg::BeginBackup(new, details, r) => {
                let boot = crate::lock::boot_id();
                reply(
                    r,
                    st.run(move |s| s.begin_backup(&new, pid, &boot, details))
                        .await,
                )
            }
            StoreMsg::CompleteBackupOperation {
                op,
                id,
                completion,
                setting,
                reply: r,
            } => reply(
                r,
                st.run(move |s| {
                    let setting = setting.as_ref().map(|(k, v)| (k.as_str(), v.as_str()));
                    s.complete_backup_operation(op, id, &completion, setting)
                })
                .await,
            ),
            StoreMsg::BeginUpgradeOperation(from, to, details, r) => {
                let boot = crate::lock::boot_id();
                reply(
                    r,
                    st.run(move |s| s.begin_upgrade_operation(&from, &to, pid, &boot, details))
                        .await,
                )
            }
            StoreMsg::BeginDrillOperation(backup, details, r) => {
                let boot = crate::lock::boot_id();
                reply(
                    r,
                    st.run(move |s| s.begin_drill_operation(backup, pid, &boot, details))
                        .await,
                )
            }
            StoreMsg::FinishDrillOperation(op, drill, finish, state, r) => reply(
                r,
                st.run(move |s| s.finish_drill_operation(op, drill, &finish, state))
                    .await,
            ),
            StoreMsg::FinishDrill(drill, finish, r) => {
                reply(r, st.run(move |s| s.finish_drill(drill, &finish)).await)
            }
            StoreMsg::GetDrill(id, r) => reply(r, st.run(move |s| s.get_drill(id)).await),
            StoreMsg::LatestDrills(r) => reply(r, st.run(|s| s.latest_drills()).await),
            StoreMsg::FinishUpgradeOperation(op, up, outcome, error, r) => reply(
                r,
                st.run(move |s| s.finish_upgrade_operation(op, up, outcome, error.as_deref()))
                    .await,
            ),
            StoreMsg::SetUpgradeBackup(id, b, r) => {
                reply(r, st.run(move |s| s.set_upgrade_backup(id, b)).await)
            }
            StoreMsg::FailBackupOperation(op, id, e, r) => reply(
                r,
                st.run(move |s| s.fail_backup_operation(op, id, &e)).await,
            ),
            StoreMsg::CompleteBackup(id, c, r) => {
                reply(r, st.run(move |s| s.complete_backup(id, &c)).await)
            }
            StoreMsg::FailBackup(id, e, r) => {
                reply(r, st.run(move |s| s.fail_backup(id, &e, Utc::now())).await)
            }
            StoreMsg::DeleteBackup(id, r) => reply(r, st.run(move |s| s.delete_backup(id)).await),
            StoreMsg::MarkVerified(id, at, r) => {
                reply(r, st.run(move |s| s.mark_verified(id, at)).await)
            }
            StoreMsg::MarkHot(id, r) => reply(r, st.run(move |s| s.mark_hot(id)).await),
            StoreMsg::IsHot(id, r) => reply(r, st.run(move |s| s.is_hot(id)).await),
            StoreMsg::RecordEncryption(id, facts, r) => {
                reply(r, st.run(move |s| s.record_encryption(id, &facts)).await)
            }
            StoreMsg::BeginOperation(kind, details, r) => {
                let boot = crate::lock::boot_id();
                reply(
                    r,
                    st.run(move |s| s.begin_operation(kind, pid, &boot, &details))
                        .await,
                )
            }
            StoreMsg::SetOperationPhase(id, phase, details, r) => reply(
                r,
                st.run(move |s| s.set_operation_phase(id, &phase, details.as_ref()))
                    .await,
            ),
            StoreMsg::FinishOperation(id, state, e, r) => reply(
                r,
                st.run(move |s| s.finish_operation(id, state, e.as_deref()))
                    .await,
            ),
            StoreMsg::UnfinishedOperations(r) => {
                reply(r, st.run(|s| s.unfinished_operations()).await)
            }
            StoreMsg::GetSetting(k, r) => reply(r, st.run(move |s| s.get_setting(&k)).await),
            StoreMsg::FindBackupByPath(p, r) => {
                reply(r, st.run(move |s| s.find_backup_by_path(&p)).await)
            }
            StoreMsg::InsertCompletedBackup(rec, r) => {
                reply(r, st.run(move |s| s.insert_completed_backup(&rec)).await)
            }
            StoreMsg::InsertAdoptedBackup(rec, hot, r) => {
                reply(r, st.run(move |s| s.insert_adopted_backup(&rec, hot)).await)
            }
            StoreMsg::HotBackups(r) => reply(r, st.run(|s| s.hot_backups()).await),
            StoreMsg::InsertLegacyBackup(rec, manifest, r) => reply(
                r,
                st.run(move |s| s.insert_legacy_backup(&rec, &manifest))
                    .await,
            ),
            StoreMsg::LegacyManifest(id, r) => {
                reply(r, st.run(move |s| s.legacy_manifest(id)).await)
            }
            StoreMsg::FinishUpgrade(id, outcome, e, r) => reply(
                r,
                st.run(move |s| s.finish_upgrade(id, outcome, e.as_deref(), Utc::now()))
                    .await,
            ),
            StoreMsg::ListUpgrades(r) => reply(r, st.run(|s| s.list_upgrades()).await),
            StoreMsg::SetSetting(k, v, r) => reply(r, st.run(move |s| s.set_setting(&k, &v)).await),
            StoreMsg::MovedAside(r) => reply(r, Ok(st.moved_aside.clone())),
        }
        if st.store.is_none() && st.open_error.is_none() {
            // The connection was lost with a panicking task: fail so the supervisor reopens it.
            return Err("catalog connection lost".into());
        }
        Ok(())
    }
}
