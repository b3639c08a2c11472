//! The operations, one module per user-level operation (rustic_core's `commands/`): each is
//! a set of `async fn`s over a small [`Ctx`] (the cached actor refs, the settings and the
//! cancellation flag) that send typed messages to the actors and stream their progress.
//! `Runtime` (the facade the CLI talks to) only starts, stops and delegates to them.
//!
//! Mutating operations run under the operation lock (held by `Runtime`) and write an
//! operation-journal row before they touch anything, so a crash at any point is finished or
//! reverted by the next invocation (see `recovery.rs`).

pub(crate) mod auto_backup;
pub(crate) mod backup;
pub(crate) mod drill;
pub(crate) mod dumps;
pub(crate) mod encryption;
pub(crate) mod hooks;
pub(crate) mod inspect;
pub(crate) mod maintenance;
pub(crate) mod recovery;
pub(crate) mod remote;
pub(crate) mod rollback;
pub(crate) mod services;
pub(crate) mod upgrade;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use ractor::ActorRef;
use serde::Serialize;

use crate::actors::archive_actor::ArchiveMsg;
use crate::actors::ask;
use crate::actors::docker_actor::DockerMsg;
use crate::actors::remote_actor::RemoteMsg;
use crate::actors::store_actor::StoreMsg;
use crate::actors::supervisor::{Refs, SupervisorMsg};
use crate::archive::{CancelFlag, TopLevelFilter};
use crate::config::Settings;
use crate::docker::{ComposeProject, ContainerInfo, compose, policy};
use crate::error::{Error, Result};
use nuwax_store::BackupRecord;
use rollback::RollbackScope;

pub(crate) use crate::actors::blocking;

pub(crate) const STORE_TIMEOUT: Duration = Duration::from_secs(60);
pub(crate) const DOCKER_TIMEOUT: Duration = Duration::from_secs(15 * 60);
pub(crate) const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(48 * 3600);

/// A catalog row plus what the file system says about its archive.
#[derive(Debug, Clone)]
pub struct BackupEntry {
    pub record: BackupRecord,
    pub file_exists: bool,
    /// Actual size on disk; `None` when missing.
    pub file_size: Option<u64>,
    /// The catalog records a remote copy (offsite copies). With `!file_exists` the backup is
    /// remote-only: restorable, its archive downloaded when needed.
    pub remote_copy: bool,
    /// The newest restore drill of this backup (`ops/drill.rs`), if it had one.
    pub last_drill: Option<nuwax_store::DrillRecord>,
    /// The archive is encrypted (`*.tar.gz.age`, README "Encryption").
    pub encrypted: bool,
    /// Taken hot (`backup --hot`): the dumps' `hot_exclude` paths are not in the archive, its
    /// dumps stand in for them (catalog column `backups.hot`).
    pub hot: bool,
}

impl BackupEntry {
    pub(crate) fn from_record(record: BackupRecord) -> Self {
        let meta = std::fs::metadata(&record.file_path)
            .ok()
            .filter(|m| m.is_file());
        BackupEntry {
            file_exists: meta.is_some(),
            file_size: meta.map(|m| m.len()),
            encrypted: crate::encryption::is_encrypted_name(&record.file_path),
            record,
            remote_copy: false,
            last_drill: None,
            hot: false,
        }
    }
}

/// What every operation works with.
pub(crate) struct Ctx {
    pub settings: Settings,
    /// Interrupts the running operation (signals).
    pub cancel: CancelFlag,
    /// This process holds the operation lock (start-up recovery may act on dead operations).
    pub holds_lock: bool,
    supervisor: ActorRef<SupervisorMsg>,
    /// The children's refs, fetched once and again only after a child was restarted.
    cached: Mutex<Option<Refs>>,
}

impl Ctx {
    pub(crate) fn new(
        settings: Settings,
        cancel: CancelFlag,
        holds_lock: bool,
        supervisor: ActorRef<SupervisorMsg>,
    ) -> Ctx {
        Ctx {
            settings,
            cancel,
            holds_lock,
            supervisor,
            cached: Mutex::new(None),
        }
    }

    /// The same context with a fresh cancellation flag: for the way back (the automatic
    /// rollback of a failed or interrupted upgrade), which must not be cut short by the
    /// signal that interrupted the way forward.
    pub(crate) fn uninterruptible(&self) -> Ctx {
        Ctx {
            settings: self.settings.clone(),
            cancel: CancelFlag::default(),
            holds_lock: self.holds_lock,
            supervisor: self.supervisor.clone(),
            cached: Mutex::new(self.cached.lock().ok().and_then(|c| c.clone())),
        }
    }

    /// Decides and checks the units of a swap (`restore::prepare`) on a blocking thread.
    pub(crate) async fn swap_prepare(
        &self,
        work_dir: &Path,
        filter: &TopLevelFilter,
        excludes: &[crate::exclude::ExcludeRule],
    ) -> Result<crate::restore::SwapPlan> {
        let (compose_dir, work_dir) = (self.settings.paths.compose_dir.clone(), work_dir.into());
        let (filter, excludes) = (filter.clone(), excludes.to_vec());
        self.archive(|reply| ArchiveMsg::PrepareSwap {
            compose_dir,
            work_dir,
            filter,
            excludes,
            reply,
        })
        .await
    }

    pub(crate) async fn swap_apply(&self, plan: &crate::restore::SwapPlan) -> Result<()> {
        self.archive(|r| ArchiveMsg::ApplySwap(plan.clone(), r))
            .await
    }

    pub(crate) async fn swap_revert(&self, plan: &crate::restore::SwapPlan) -> Result<()> {
        self.archive(|r| ArchiveMsg::RevertSwap(plan.clone(), r))
            .await
    }

    pub(crate) async fn swap_commit(&self, plan: &crate::restore::SwapPlan) -> Result<()> {
        self.archive(|r| ArchiveMsg::CommitSwap(plan.clone(), r))
            .await
    }

    pub(crate) async fn swap_resolve(
        &self,
        plan: &crate::restore::SwapPlan,
        keep_live: bool,
        keep: &Path,
    ) -> Result<Vec<PathBuf>> {
        let keep = keep.to_path_buf();
        self.archive(|r| ArchiveMsg::ResolveSwap(plan.clone(), keep_live, keep, r))
            .await
    }

    pub(crate) async fn sync_filesystem(&self, path: &Path) -> Result<()> {
        let path = path.to_path_buf();
        self.archive(|r| ArchiveMsg::SyncFilesystem(path, r)).await
    }

    /// Removes a file or tree on a blocking thread (never through a mount point).
    pub(crate) async fn remove_tree(&self, path: &Path) -> Result<()> {
        let path = path.to_path_buf();
        self.archive(|r| ArchiveMsg::RemoveTree(path, r)).await
    }

    /// A request to the Docker actor that may legitimately take `wait` (a health wait of an
    /// hour): the call's timeout comes from the request, with the usual margin on top.
    pub(crate) async fn docker_for<T: Send + 'static>(
        &self,
        wait: Duration,
        msg: impl FnOnce(ractor::RpcReplyPort<Result<T>>) -> DockerMsg,
    ) -> Result<T> {
        ask(
            &self.refs().await?.docker,
            "docker",
            wait.saturating_add(DOCKER_TIMEOUT),
            msg,
        )
        .await
    }

    /// The children's refs: cached, and fetched from the supervisor again only when a child
    /// is no longer running (the supervisor restarted it after a panic).
    pub(crate) async fn refs(&self) -> Result<Refs> {
        let alive = |r: &Refs| {
            [
                r.store.get_status(),
                r.docker.get_status(),
                r.archive.get_status(),
                r.remote.get_status(),
            ]
            .iter()
            .all(|s| matches!(s, ractor::ActorStatus::Running))
        };
        if let Some(refs) = self.cached.lock().ok().and_then(|c| c.clone())
            && alive(&refs)
        {
            return Ok(refs);
        }
        let refs = match self
            .supervisor
            .call(SupervisorMsg::Refs, Some(STORE_TIMEOUT))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(refs)) => refs,
            _ => {
                return Err(Error::Internal(
                    "the actor supervisor is not running".into(),
                ));
            }
        };
        if let Ok(mut c) = self.cached.lock() {
            *c = Some(refs.clone());
        }
        Ok(refs)
    }

    pub(crate) async fn store<T: Send + 'static>(
        &self,
        msg: impl FnOnce(ractor::RpcReplyPort<Result<T>>) -> StoreMsg,
    ) -> Result<T> {
        ask(&self.refs().await?.store, "catalog", STORE_TIMEOUT, msg).await
    }

    pub(crate) async fn docker<T: Send + 'static>(
        &self,
        msg: impl FnOnce(ractor::RpcReplyPort<Result<T>>) -> DockerMsg,
    ) -> Result<T> {
        ask(&self.refs().await?.docker, "docker", DOCKER_TIMEOUT, msg).await
    }

    pub(crate) async fn archive<T: Send + 'static>(
        &self,
        msg: impl FnOnce(ractor::RpcReplyPort<Result<T>>) -> ArchiveMsg,
    ) -> Result<T> {
        ask(&self.refs().await?.archive, "archive", ARCHIVE_TIMEOUT, msg).await
    }

    /// A request to the remote actor; one part or one object may take the request timeout
    /// times the retries, the margin covers that.
    pub(crate) async fn remote<T: Send + 'static>(
        &self,
        msg: impl FnOnce(ractor::RpcReplyPort<Result<T>>) -> RemoteMsg,
    ) -> Result<T> {
        ask(&self.refs().await?.remote, "remote", ARCHIVE_TIMEOUT, msg).await
    }

    pub(crate) async fn set_phase<T: Serialize>(
        &self,
        op: i64,
        phase: &str,
        details: &T,
    ) -> Result<()> {
        let value = serde_json::to_value(details)
            .map_err(|e| Error::Internal(format!("cannot encode journal: {e}")))?;
        self.store(|r| StoreMsg::SetOperationPhase(op, phase.to_owned(), Some(value), r))
            .await
    }

    // ----------------------------------------------------------------------------- backup
    pub(crate) fn compose_project(&self) -> Result<ComposeProject> {
        let p = &self.settings.paths;
        let env = p.env_file.exists().then_some(p.env_file.as_path());
        compose::load(
            &p.compose_file,
            env,
            self.settings.config.docker.project.as_deref(),
        )
    }

    /// Project name even when the compose file is gone (a rollback may bring it back).
    pub(crate) fn project_name(&self) -> String {
        if let Ok(c) = self.compose_project() {
            return c.name;
        }
        if let Some(p) = &self.settings.config.docker.project {
            return p.clone();
        }
        let dir = self
            .settings
            .paths
            .compose_dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        compose::normalize_project_name(&dir).unwrap_or(dir)
    }

    /// The compose project when the compose file parses, else a bare one with the name (and
    /// every spelling of it, and the compose file's place, to find its containers by).
    pub(crate) fn compose_or_bare(&self) -> ComposeProject {
        self.compose_project().unwrap_or_else(|_| {
            let name = self.project_name();
            let configured = self
                .settings
                .config
                .docker
                .project
                .as_deref()
                .map(str::trim)
                .filter(|p| !p.is_empty());
            let dir = self
                .settings
                .paths
                .compose_dir
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let raw = configured.unwrap_or(&dir);
            let mut identity = crate::docker::compose::identity(
                &[raw],
                configured.is_some(),
                &self.settings.paths.compose_file,
            );
            if identity.primary() != name {
                // `name` is what compose -p gets: it must come first.
                identity.names.retain(|n| n != &name);
                identity.names.insert(0, name.clone());
            }
            ComposeProject {
                name,
                services: Default::default(),
                identity,
            }
        })
    }

    /// The project's containers with dependencies filled from the compose file (compose v1
    /// sets no depends_on label); `None` when there is no engine.
    pub(crate) async fn containers(
        &self,
        compose: &ComposeProject,
    ) -> Result<Option<Vec<ContainerInfo>>> {
        let identity = compose.discovery();
        let mut list = self.docker(|r| DockerMsg::Find(identity, r)).await?;
        if let Some(list) = &mut list {
            policy::fill_missing_dependencies(list, compose);
        }
        Ok(list)
    }

    fn start_timeout(&self) -> Duration {
        Duration::from_secs(self.settings.config.docker.start_timeout)
    }

    /// A catalog or journal path checked to name an archive directly inside the storage
    /// dir (`backup_*.tar.gz`): the only files this tool deletes there.
    pub(crate) fn storage_archive_path(&self, path: &Path) -> Result<PathBuf> {
        let dir = &self.settings.paths.storage_dir;
        let refuse = |reason: String| Error::UnsafePath {
            what: "catalog archive path",
            path: path.to_path_buf(),
            reason,
        };
        let name = path.file_name().unwrap_or_default();
        if crate::relpath::RelPath::from_name(name).is_err()
            || !crate::encryption::is_archive_name(&name.to_string_lossy())
        {
            return Err(refuse(
                "it does not name a .tar.gz archive; nothing was deleted. Rebuild the catalog with `nuwax-cli reindex`".into(),
            ));
        }
        let parent = path.parent().unwrap_or(Path::new(""));
        if crate::fsutil::canonical(parent) != crate::fsutil::canonical(dir) {
            return Err(refuse(format!(
                "it is not in the storage dir {}; nothing was deleted. If [backup] storage_dir was changed, move the archives there and run `nuwax-cli reindex`",
                dir.display()
            )));
        }
        Ok(dir.join(name))
    }

    /// The key to read the archive at `path`: `None` for a plain archive; for an encrypted
    /// one (`*.tar.gz.age`) the configured or given key, loaded now, or exit 2 saying what to
    /// pass. Checked before anything is stopped, extracted or downloaded.
    pub(crate) fn key_for(&self, path: &Path) -> Result<Option<crate::encryption::DecryptKey>> {
        if !crate::encryption::is_encrypted_name(path) {
            return Ok(None);
        }
        match &self.settings.decrypt_with {
            Some(source) => source.load().map(Some),
            None => Err(Error::KeyRequired(format!(
                "{} is encrypted; pass the identity whose public key it was encrypted to with --identity FILE (or --passphrase-file FILE for a passphrase), or set [encryption] identity_file; nothing was changed",
                path.display()
            ))),
        }
    }

    /// The key given (`--identity`, `--passphrase-file`, `[encryption] identity_file`), if
    /// any: what `verify`, `import` and `remote pull` decrypt with; without one they check an
    /// encrypted archive's checksum only.
    pub(crate) fn given_key(&self) -> Result<Option<crate::encryption::DecryptKey>> {
        self.settings
            .decrypt_with
            .as_ref()
            .map(crate::encryption::KeySource::load)
            .transpose()
    }

    /// The top-level filter of a rollback scope.
    pub(crate) fn scope_filter(&self, scope: RollbackScope) -> TopLevelFilter {
        let data: Vec<std::ffi::OsString> = self
            .settings
            .config
            .backup
            .data_paths
            .iter()
            .map(|d| d.as_os_str().to_owned())
            .collect();
        match scope {
            RollbackScope::App => TopLevelFilter::AllExcept(data),
            RollbackScope::All => TopLevelFilter::All,
            RollbackScope::DataOnly => TopLevelFilter::Only(data),
        }
    }

    /// A digest of everything the running containers were created from: the compose file, the
    /// env file and every `env_file` a service names. `None` without a compose file.
    pub(crate) fn definitions_fingerprint(&self) -> Option<String> {
        use sha2::{Digest, Sha256};
        let paths = &self.settings.paths;
        let compose = std::fs::read(&paths.compose_file).ok()?;
        let mut h = Sha256::new();
        let mut add = |label: &str, bytes: Option<Vec<u8>>| {
            h.update(label.as_bytes());
            h.update([0]);
            match bytes {
                Some(b) => {
                    h.update((b.len() as u64).to_le_bytes());
                    h.update(&b);
                }
                None => h.update(b"-"),
            }
        };
        add("compose", Some(compose));
        add("env", std::fs::read(&paths.env_file).ok());
        if let Ok(project) = self.compose_project() {
            for (name, service) in &project.services {
                for f in &service.env_files {
                    let p = paths.compose_dir.join(f);
                    add(&format!("{name}:{f}"), std::fs::read(p).ok());
                }
            }
        }
        Some(hex::encode(h.finalize()))
    }

    /// The manifest a legacy backup is checked against (computed when it was adopted, kept
    /// in the catalog); `None` for a backup of this tool (its archive carries its own).
    pub(crate) async fn legacy_manifest(
        &self,
        record: &BackupRecord,
    ) -> Result<Option<std::sync::Arc<crate::archive::Manifest>>> {
        if !record.legacy {
            return Ok(None);
        }
        let id = record.id;
        let unusable = |why: String| Error::Corrupt {
            path: record.file_path.clone(),
            detail: format!(
                "backup {id} was made by the original nuwax-cli and {why}; nothing was changed. To adopt the archive again, move it out of the storage dir, run `nuwax-cli delete-backup {id}` (with the file gone it only forgets the entry), then `nuwax-cli import FILE`"
            ),
        };
        let json = self
            .store(|r| StoreMsg::LegacyManifest(id, r))
            .await?
            .ok_or_else(|| {
                unusable("the catalog lacks the manifest recorded when it was adopted".into())
            })?;
        let manifest: crate::archive::Manifest = serde_json::from_str(&json).map_err(|e| {
            unusable(format!(
                "the manifest recorded in the catalog is invalid ({e})"
            ))
        })?;
        Ok(Some(std::sync::Arc::new(manifest)))
    }

    /// The top-level filter of a rollback of `scope` from a legacy backup: only the items
    /// the original tool archived ([`crate::archive::LEGACY_ITEMS`]) that this archive holds,
    /// and of those what `scope` takes by the backup's own data scope (`data`).
    pub(crate) fn legacy_scope_filter(
        scope: RollbackScope,
        manifest: &crate::archive::Manifest,
    ) -> TopLevelFilter {
        let info = &manifest.info;
        let held = crate::archive::LEGACY_ITEMS
            .iter()
            .map(std::ffi::OsString::from)
            .filter(|name| info.top_level_bytes.keys().any(|k| k.as_os_str() == name));
        let is_data =
            |name: &std::ffi::OsString| info.data_paths.iter().any(|d| d.as_os_str() == name);
        TopLevelFilter::Only(
            held.filter(|name| match scope {
                RollbackScope::All => true,
                RollbackScope::App => !is_data(name),
                RollbackScope::DataOnly => is_data(name),
            })
            .collect(),
        )
    }

    pub async fn get_backup(&self, id: i64) -> Result<BackupEntry> {
        let mut entry = self
            .store(|r| StoreMsg::GetBackup(id, r))
            .await?
            .map(BackupEntry::from_record)
            .ok_or(Error::BackupNotFound(id))?;
        entry.remote_copy = self
            .store(move |r| StoreMsg::GetRemoteCopy(id, r))
            .await?
            .is_some();
        entry.last_drill = self
            .store(StoreMsg::LatestDrills)
            .await?
            .into_iter()
            .find(|d| d.backup_id == id);
        entry.hot = self.store(|r| StoreMsg::IsHot(id, r)).await?;
        Ok(entry)
    }

    // ----------------------------------------------------------------------------- catalog
    /// All catalog rows, newest first.
    pub async fn list_backups(&self) -> Result<Vec<BackupEntry>> {
        let records = self.store(StoreMsg::ListBackups).await?;
        let remote: std::collections::HashSet<i64> = self
            .store(StoreMsg::ListRemoteCopies)
            .await?
            .into_iter()
            .map(|c| c.backup_id)
            .collect();
        let mut drills: std::collections::HashMap<i64, nuwax_store::DrillRecord> = self
            .store(StoreMsg::LatestDrills)
            .await?
            .into_iter()
            .map(|d| (d.backup_id, d))
            .collect();
        let hot: std::collections::HashSet<i64> = self
            .store(StoreMsg::HotBackups)
            .await?
            .into_iter()
            .collect();
        Ok(records
            .into_iter()
            .map(|r| {
                let mut e = BackupEntry::from_record(r);
                e.remote_copy = remote.contains(&e.record.id);
                e.last_drill = drills.remove(&e.record.id);
                e.hot = hot.contains(&e.record.id);
                e
            })
            .collect())
    }
}
