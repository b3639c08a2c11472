//! ArchiveActor: builds, verifies and extracts archives. All the work is blocking file I/O
//! and CPU, so each request runs on `spawn_blocking`; the actor itself only dispatches.

use std::io::Read;
use std::path::{Path, PathBuf};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sha2::{Digest, Sha256};

use super::reply;
use crate::archive::{
    self, ArchiveInfo, BuildOptions, BuildReport, CancelFlag, ExtractOptions, ExtractReport,
    VerifyReport,
};
use crate::error::{Error, IoContext, Result};
use crate::progress::{Phase, Progress};

pub(crate) struct ArchiveActor;

type Reply<T> = RpcReplyPort<Result<T>>;

pub(crate) enum ArchiveMsg {
    Build(Box<BuildOptions>, Progress, CancelFlag, Reply<BuildReport>),
    Verify {
        path: PathBuf,
        expected_sha256: Option<String>,
        progress: Progress,
        cancel: CancelFlag,
        reply: Reply<VerifyReport>,
    },
    /// SHA-256 of the whole file, for the check before a restore.
    Checksum(PathBuf, Progress, CancelFlag, Reply<String>),
    Extract(ExtractOptions, Progress, CancelFlag, Reply<ExtractReport>),
    ReadInfo(PathBuf, Reply<ArchiveInfo>),
    /// Checks a release package (safe paths, compose file, no data scope).
    ValidatePackage(
        PathBuf,
        String,
        Vec<String>,
        Reply<crate::package::PackageInfo>,
    ),
    /// Unpacks a validated release package into a staging dir; returns its top-level names.
    UnpackPackage(PathBuf, PathBuf, Reply<Vec<std::ffi::OsString>>),
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("archive task panicked: {e}")))?
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
            ArchiveMsg::Build(opts, progress, cancel, r) => reply(
                r,
                blocking(move || archive::build(&opts, &progress, &cancel)).await,
            ),
            ArchiveMsg::Verify {
                path,
                expected_sha256,
                progress,
                cancel,
                reply: r,
            } => reply(
                r,
                blocking(move || {
                    archive::verify(&path, expected_sha256.as_deref(), 0, &progress, &cancel)
                })
                .await,
            ),
            ArchiveMsg::Checksum(path, progress, cancel, r) => reply(
                r,
                blocking(move || sha256_file(&path, &progress, &cancel)).await,
            ),
            ArchiveMsg::Extract(opts, progress, cancel, r) => reply(
                r,
                blocking(move || archive::extract(&opts, &progress, &cancel)).await,
            ),
            ArchiveMsg::ReadInfo(path, r) => {
                reply(r, blocking(move || archive::read_info(&path)).await)
            }
            ArchiveMsg::ValidatePackage(path, compose, data, r) => reply(
                r,
                blocking(move || crate::package::validate(&path, &compose, &data)).await,
            ),
            ArchiveMsg::UnpackPackage(path, staging, r) => reply(
                r,
                blocking(move || crate::upgrade::unpack_package(&path, &staging)).await,
            ),
        }
        Ok(())
    }
}

fn sha256_file(path: &Path, progress: &Progress, cancel: &CancelFlag) -> Result<String> {
    let mut file = std::fs::File::open(path).ctx("cannot open archive", path)?;
    let total = file.metadata().ctx("cannot stat archive", path)?.len();
    progress.phase(Phase::Verifying, Some(total), None);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        cancel.check()?;
        let n = file.read(&mut buf).ctx("cannot read archive", path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        progress.advance(done, 0, None);
    }
    progress.finish_phase(done, 0);
    Ok(hex::encode(hasher.finalize()))
}
