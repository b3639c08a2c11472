//! The actor layer itself: supervision, progress ordering, cancellation.

use std::path::Path;
use std::time::Duration;

use ractor::Actor;

use super::archive_actor::ArchiveMsg;
use super::supervisor::{Supervisor, SupervisorArgs};
use crate::archive::{ArchiveInfo, BuildOptions, CancelFlag};
use crate::config::Settings;
use crate::ops::Ctx;
use crate::progress::{Progress, ProgressEvent};

fn info() -> ArchiveInfo {
    ArchiveInfo {
        format: 1,
        tool: "nuwax-cli test".into(),
        backup_type: "Manual".into(),
        service_version: "1".into(),
        created_at: "2026-01-01T00:00:00Z".into(),
        compose_project: "p".into(),
        data_paths: vec![],
        excluded: vec![],
        images: vec![],
        top_level_bytes: Default::default(),
        dumps: Vec::new(),
        hot: false,
    }
}

/// A supervisor over a fresh catalog, and a context like the one operations use.
async fn start(dir: &Path) -> (Ctx, ractor::ActorRef<super::supervisor::SupervisorMsg>) {
    let (sup, _task) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            db_file: dir.join("nuwax.db"),
            move_broken_catalog: false,
            remote: None,
            read_only: false,
        },
    )
    .await
    .unwrap();
    let settings = Settings::load(dir, None).unwrap();
    (
        Ctx::new(settings, CancelFlag::default(), false, sup.clone()),
        sup,
    )
}

fn tree(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("src");
    for i in 0..50 {
        let p = src.join(format!("d{}/f{i}", i % 5));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, vec![i as u8; 10_000]).unwrap();
    }
    src
}

fn build_opts(src: &Path, dest: &Path) -> BuildOptions {
    BuildOptions {
        source_dir: src.to_path_buf(),
        dest: dest.to_path_buf(),
        exclude: vec![],
        level: 1,
        threads: 2,
        info: info(),
        dump_files: Vec::new(),
        encryption: None,
        previous: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_panics_is_restarted_and_the_next_request_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, sup) = start(dir.path()).await;
    let before = ctx.refs().await.unwrap().archive;
    let missing = dir.path().join("missing.tar.gz");
    // Answered (with a domain error) before the panic.
    let m = missing.clone();
    assert!(
        ctx.archive(|r| ArchiveMsg::ReadInfo(m, None, r))
            .await
            .is_err()
    );
    before.cast(ArchiveMsg::Panic).unwrap();
    // The supervisor restarts it; the cached ref is noticed dead and fetched again.
    let mut after = None;
    for _ in 0..100 {
        let refs = ctx.refs().await.unwrap();
        if refs.archive.get_id() != before.get_id() {
            after = Some(refs.archive);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = after.expect("the archive actor was not restarted");
    assert!(matches!(after.get_status(), ractor::ActorStatus::Running));
    let err = ctx
        .archive(|r| ArchiveMsg::ReadInfo(missing, None, r))
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("not running"), "{err}");
    sup.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_arrives_before_the_reply() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, sup) = start(dir.path()).await;
    let src = tree(dir.path());
    let dest = dir.path().join("b.tar.gz");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let progress = Progress::new(tx);
    let opts = build_opts(&src, &dest);
    let report = ctx
        .archive(|r| ArchiveMsg::Build(Box::new(opts), None, progress, CancelFlag::default(), r))
        .await
        .unwrap();
    assert!(report.size > 0);
    // Everything was sent before the reply: it is all in the channel already.
    let mut phases = 0;
    let mut advances = 0;
    while let Ok(ev) = rx.try_recv() {
        match ev {
            ProgressEvent::Phase { .. } => phases += 1,
            ProgressEvent::Advance { .. } => advances += 1,
            ProgressEvent::Notice(_) | ProgressEvent::Container { .. } => {}
        }
    }
    assert!(phases >= 1, "no phase event before the reply");
    assert!(advances >= 1, "no advance event before the reply");
    sup.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_request_stops_its_work_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, sup) = start(dir.path()).await;
    let src = tree(dir.path());
    let dest = dir.path().join("b.tar.gz");
    let cancel = CancelFlag::default();
    cancel.cancel();
    let opts = build_opts(&src, &dest);
    let err = ctx
        .archive(|r| ArchiveMsg::Build(Box::new(opts), None, Progress::none(), cancel, r))
        .await
        .unwrap_err();
    assert!(matches!(err, crate::Error::Interrupted), "{err}");
    assert!(!dest.exists());
    assert!(!dir.path().join("b.tar.gz.partial").exists());
    sup.stop(None);
}
