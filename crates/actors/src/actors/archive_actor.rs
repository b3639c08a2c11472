//! ArchiveActor: builds, verifies and extracts archives. All the work is blocking file I/O
//! and CPU, so each request runs on `spawn_blocking`; the actor itself only dispatches.

use std::path::PathBuf;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::{blocking, reply};
use crate::archive::TopLevelFilter;
use crate::archive::{
    self, ArchiveInfo, BuildOptions, BuildReport, CancelFlag, ExtractOptions, ExtractReport,
    LegacyAdoption, LegacyName, Manifest, Scanned, Unfinished, VerifyReport,
};
use crate::encryption::DecryptKey;
use crate::error::Result;
use crate::progress::Progress;
use crate::restore::{self, SwapPlan};
use std::sync::Arc;

pub(crate) struct ArchiveActor;

type Reply<T> = RpcReplyPort<Result<T>>;

pub(crate) enum ArchiveMsg {
    /// The scan pass of a build (`archive::scan_source`), before the catalog row.
    Scan(Box<BuildOptions>, Progress, CancelFlag, Reply<Scanned>),
    /// Writes the archive, from a scan made with the same options or scanning first.
    Build(
        Box<BuildOptions>,
        Option<Box<Scanned>>,
        Progress,
        CancelFlag,
        Reply<BuildReport>,
    ),
    /// The part of a build that reads the live tree (`archive::build_until_live_read`):
    /// after it, the services may start while [`ArchiveMsg::Finish`] copies the rest.
    BuildLive(
        Box<BuildOptions>,
        Box<Scanned>,
        Progress,
        CancelFlag,
        Reply<Box<Unfinished>>,
    ),
    /// Completes a [`ArchiveMsg::BuildLive`] (`Unfinished::finish`); the flag says whether
    /// the live tree may still be read (the services are still stopped).
    Finish(
        Box<Unfinished>,
        bool,
        Progress,
        CancelFlag,
        Reply<BuildReport>,
    ),
    Verify {
        path: PathBuf,
        expected_sha256: Option<String>,
        /// A legacy backup's manifest (from the catalog); `None`: the archive's own.
        manifest: Option<Arc<Manifest>>,
        /// The key of an encrypted archive; without it only the checksum is checked.
        key: Option<DecryptKey>,
        progress: Progress,
        cancel: CancelFlag,
        reply: Reply<VerifyReport>,
    },
    /// SHA-256 of the whole file, for the check before a restore.
    Checksum(PathBuf, Progress, CancelFlag, Reply<String>),
    Extract(ExtractOptions, Progress, CancelFlag, Reply<ExtractReport>),
    ReadInfo(PathBuf, Option<DecryptKey>, Reply<ArchiveInfo>),
    /// What the archive holds (`ls`, `diff`, dry run), its checksum checked when given.
    List {
        path: PathBuf,
        expected_sha256: Option<String>,
        key: Option<DecryptKey>,
        progress: Progress,
        cancel: CancelFlag,
        reply: Reply<archive::Listing>,
    },
    /// The archive's `info.json`, or `None` when it has no metadata (a legacy archive).
    ProbeInfo(PathBuf, Reply<Option<ArchiveInfo>>),
    /// [`ArchiveMsg::ProbeInfo`] of an archive that may be encrypted, with its key.
    ProbeInfoWith(
        PathBuf,
        Option<crate::encryption::DecryptKey>,
        Reply<Option<ArchiveInfo>>,
    ),
    /// Reads a legacy archive once: its SHA-256 and manifest (`archive::adopt_legacy`).
    AdoptLegacy {
        path: PathBuf,
        name: LegacyName,
        progress: Progress,
        cancel: CancelFlag,
        reply: Reply<LegacyAdoption>,
    },
    /// Checks a release package (safe paths, compose file, no data scope); the info carries
    /// the SHA-256 of the bytes checked.
    ValidatePackage(
        crate::package::OpenedPackage,
        String,
        Vec<String>,
        Reply<crate::package::PackageInfo>,
    ),
    /// Unpacks a validated release package (the same open file) into a staging dir, failing
    /// when its bytes differ from the validated SHA-256; returns its top-level names.
    UnpackPackage(
        crate::package::OpenedPackage,
        PathBuf,
        String,
        Reply<Vec<std::ffi::OsString>>,
    ),
    /// The swap engine's steps (`restore.rs`): tree walks and renames, on a blocking thread.
    PrepareSwap {
        compose_dir: PathBuf,
        work_dir: PathBuf,
        filter: TopLevelFilter,
        excludes: Vec<crate::exclude::ExcludeRule>,
        reply: Reply<SwapPlan>,
    },
    ApplySwap(SwapPlan, Reply<()>),
    RevertSwap(SwapPlan, Reply<()>),
    CommitSwap(SwapPlan, Reply<()>),
    /// Sets aside one side of each conflicting unit, then reverts (`recover`).
    ResolveSwap(SwapPlan, bool, PathBuf, Reply<Vec<PathBuf>>),
    /// `syncfs(2)` of the filesystem holding the path.
    SyncFilesystem(PathBuf, Reply<()>),
    /// Removes a file or tree (never through a mount point).
    RemoveTree(PathBuf, Reply<()>),
    /// A handler that panics: proves the supervisor restarts a failed child.
    #[cfg(test)]
    Panic,
}

impl Actor for ArchiveActor {
    type Msg = ArchiveMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ArchiveMsg::Scan(opts, progress, cancel, r) => reply(
                r,
                blocking(move || archive::scan_source(&opts, &progress, &cancel)).await,
            ),
            ArchiveMsg::Build(opts, scanned, progress, cancel, r) => reply(
                r,
                blocking(move || match scanned {
                    Some(s) => archive::build_scanned(&opts, *s, &progress, &cancel),
                    None => archive::build(&opts, &progress, &cancel),
                })
                .await,
            ),
            ArchiveMsg::BuildLive(opts, scanned, progress, cancel, r) => reply(
                r,
                blocking(move || {
                    archive::build_until_live_read(&opts, Some(*scanned), &progress, &cancel)
                        .map(Box::new)
                })
                .await,
            ),
            ArchiveMsg::Finish(unfinished, live_readable, progress, cancel, r) => reply(
                r,
                blocking(move || unfinished.finish(live_readable, &progress, &cancel)).await,
            ),
            ArchiveMsg::Verify {
                path,
                expected_sha256,
                manifest,
                key,
                progress,
                cancel,
                reply: r,
            } => reply(
                r,
                blocking(move || match &manifest {
                    Some(m) => archive::verify_against(
                        &path,
                        expected_sha256.as_deref(),
                        m,
                        0,
                        &progress,
                        &cancel,
                    ),
                    None => archive::verify(
                        &path,
                        expected_sha256.as_deref(),
                        key.as_ref(),
                        0,
                        &progress,
                        &cancel,
                    ),
                })
                .await,
            ),
            ArchiveMsg::ProbeInfo(path, r) => {
                reply(r, blocking(move || archive::probe_info(&path)).await)
            }
            ArchiveMsg::ProbeInfoWith(path, key, r) => reply(
                r,
                blocking(move || archive::probe_info_with(&path, key.as_ref())).await,
            ),
            ArchiveMsg::AdoptLegacy {
                path,
                name,
                progress,
                cancel,
                reply: r,
            } => reply(
                r,
                blocking(move || archive::adopt_legacy(&path, &name, &progress, &cancel)).await,
            ),
            ArchiveMsg::Checksum(path, progress, cancel, r) => reply(
                r,
                blocking(move || archive::sha256_file(&path, &progress, &cancel)).await,
            ),
            ArchiveMsg::Extract(opts, progress, cancel, r) => reply(
                r,
                blocking(move || archive::extract(&opts, &progress, &cancel)).await,
            ),
            ArchiveMsg::List {
                path,
                expected_sha256,
                key,
                progress,
                cancel,
                reply: r,
            } => reply(
                r,
                blocking(move || {
                    archive::list(
                        &path,
                        expected_sha256.as_deref(),
                        key.as_ref(),
                        &progress,
                        &cancel,
                    )
                })
                .await,
            ),
            ArchiveMsg::ReadInfo(path, key, r) => reply(
                r,
                blocking(move || archive::read_info_with(&path, key.as_ref())).await,
            ),
            ArchiveMsg::ValidatePackage(package, compose, data, r) => reply(
                r,
                blocking(move || crate::package::validate_opened(&package, &compose, &data)).await,
            ),
            ArchiveMsg::UnpackPackage(package, staging, sha256, r) => reply(
                r,
                blocking(move || crate::package::unpack(&package, &staging, &sha256)).await,
            ),
            ArchiveMsg::PrepareSwap {
                compose_dir,
                work_dir,
                filter,
                excludes,
                reply: r,
            } => reply(
                r,
                blocking(move || restore::prepare(&compose_dir, &work_dir, &filter, &excludes))
                    .await,
            ),
            ArchiveMsg::ApplySwap(plan, r) => reply(r, blocking(move || plan.apply()).await),
            ArchiveMsg::RevertSwap(plan, r) => reply(r, blocking(move || plan.revert()).await),
            ArchiveMsg::CommitSwap(plan, r) => reply(r, blocking(move || plan.commit()).await),
            ArchiveMsg::ResolveSwap(plan, keep_live, keep, r) => {
                reply(r, blocking(move || plan.resolve(keep_live, &keep)).await)
            }
            ArchiveMsg::SyncFilesystem(path, r) => {
                reply(r, blocking(move || restore::sync_filesystem(&path)).await)
            }
            ArchiveMsg::RemoveTree(path, r) => {
                reply(r, blocking(move || restore::remove_path(&path)).await)
            }
            #[cfg(test)]
            ArchiveMsg::Panic => panic!("test: a handler that panics"),
        }
        Ok(())
    }
}
