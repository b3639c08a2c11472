use std::os::unix::fs::MetadataExt;

use super::*;

fn write(p: &Path, s: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, s).unwrap();
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

fn ino(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).unwrap().ino()
}

fn rels(v: &[&str]) -> Vec<ExcludeRule> {
    v.iter().map(|s| ExcludeRule::parse(s).unwrap()).collect()
}

/// A compose dir with app/, data/, logs/, stale.txt and a work dir whose staging holds a new
/// app/ and compose.yml.
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let compose = t.path().join("docker");
    write(&compose.join("app/a.txt"), "old app");
    write(&compose.join("app/cache/c"), "live cache");
    write(&compose.join("stale.txt"), "stale");
    write(&compose.join("data/db"), "live data");
    write(&compose.join("logs/l"), "log");
    let work = create_work_dir(&compose, WORK_PREFIX, 7).unwrap();
    let staged = work.join("staged");
    write(&staged.join("app/a.txt"), "new app");
    write(&staged.join("compose.yml"), "services: {}");
    (t, compose, work)
}

fn names(p: &SwapPlan) -> Vec<String> {
    p.items.iter().map(SwapItem::display_name).collect()
}

#[test]
fn swap_replaces_scope_exactly_and_never_moves_a_nested_exclude() {
    let (_t, compose, work) = setup();
    let cache_ino = ino(&compose.join("app/cache"));
    let filter = TopLevelFilter::AllExcept(vec!["data".into()]);
    // Any spelling of the excludes.
    let excludes = rels(&["logs/", "./app/cache"]);
    let p = prepare(&compose, &work, &filter, &excludes).unwrap();
    assert_eq!(names(&p), vec!["app/a.txt", "compose.yml", "stale.txt"]);
    assert_eq!(p.kept_dirs.len(), 1);
    p.apply().unwrap();
    p.commit().unwrap();
    assert_eq!(read(&compose.join("app/a.txt")), "new app");
    assert_eq!(read(&compose.join("app/cache/c")), "live cache");
    assert_eq!(ino(&compose.join("app/cache")), cache_ino, "never moved");
    assert_eq!(read(&compose.join("compose.yml")), "services: {}");
    assert!(!compose.join("stale.txt").exists());
    assert_eq!(read(&compose.join("data/db")), "live data");
    assert_eq!(read(&compose.join("logs/l")), "log");
    assert!(!work.exists());
}

#[test]
fn prepare_touches_nothing_live() {
    let (_t, compose, work) = setup();
    let before: Vec<(PathBuf, u64)> = ["app", "app/cache", "app/a.txt", "stale.txt", "logs"]
        .iter()
        .map(|n| (compose.join(n), ino(&compose.join(n))))
        .collect();
    let _ = prepare(&compose, &work, &TopLevelFilter::All, &rels(&["app/cache"])).unwrap();
    for (p, i) in before {
        assert_eq!(ino(&p), i, "{} moved by prepare", p.display());
    }
}

#[test]
fn deep_exclude_survives_apply_failure_and_revert() {
    let t = tempfile::tempdir().unwrap();
    let compose = t.path().join("docker");
    write(&compose.join("a/b/c/keep"), "precious");
    write(&compose.join("a/b/other"), "old");
    write(&compose.join("a/top"), "old top");
    let work = create_work_dir(&compose, WORK_PREFIX, 1).unwrap();
    write(&work.join("staged/a/b/other"), "new");
    write(&work.join("staged/a/top"), "new top");
    let keep_ino = ino(&compose.join("a/b/c"));
    let p = prepare(&compose, &work, &TopLevelFilter::All, &rels(&["a/b/c/"])).unwrap();
    assert_eq!(names(&p), vec!["a/b/other", "a/top"]);
    // Make the second placement fail: its staged source disappears.
    std::fs::remove_file(work.join("staged/a/top")).unwrap();
    let err = p.apply().unwrap_err();
    assert!(
        err.to_string().contains("cannot move restored item"),
        "{err}"
    );
    assert_eq!(read(&compose.join("a/b/other")), "old", "reverted");
    assert_eq!(read(&compose.join("a/top")), "old top", "reverted");
    assert_eq!(read(&compose.join("a/b/c/keep")), "precious");
    assert_eq!(ino(&compose.join("a/b/c")), keep_ino);
    assert!(!work.exists());
}

#[test]
fn archive_without_the_excludes_parent_keeps_only_the_exclude() {
    let (_t, compose, work) = setup();
    std::fs::remove_dir_all(work.join("staged/app")).unwrap();
    let p = prepare(&compose, &work, &TopLevelFilter::All, &rels(&["app/cache"])).unwrap();
    assert!(p.kept_dirs[0].after.is_none());
    p.apply().unwrap();
    p.commit().unwrap();
    assert!(
        !compose.join("app/a.txt").exists(),
        "not in the archive: removed"
    );
    assert_eq!(read(&compose.join("app/cache/c")), "live cache");
}

#[test]
fn exclude_behind_a_symlinked_parent_is_never_touched() {
    let (t, compose, work) = setup();
    let outside = t.path().join("outside");
    write(&outside.join("cache/c"), "outside cache");
    std::fs::remove_dir_all(compose.join("app")).unwrap();
    std::os::unix::fs::symlink(&outside, compose.join("app")).unwrap();
    let p = prepare(&compose, &work, &TopLevelFilter::All, &rels(&["app/cache"])).unwrap();
    assert!(p.kept_dirs.is_empty(), "a symlink is never descended");
    p.apply().unwrap();
    p.commit().unwrap();
    assert_eq!(read(&compose.join("app/a.txt")), "new app");
    assert_eq!(read(&outside.join("cache/c")), "outside cache");
}

#[test]
fn exclude_under_a_parent_the_archive_holds_as_a_file_is_refused() {
    let (_t, compose, work) = setup();
    std::fs::remove_dir_all(work.join("staged/app")).unwrap();
    write(&work.join("staged/app"), "a file now");
    let err = prepare(&compose, &work, &TopLevelFilter::All, &rels(&["app/cache"])).unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err}");
    assert!(err.to_string().contains("app/cache"), "{err}");
    assert_eq!(read(&compose.join("app/cache/c")), "live cache");
}

#[test]
fn excluded_paths_in_the_archive_are_not_restored() {
    let (_t, compose, work) = setup();
    write(&work.join("staged/logs/old"), "archived log");
    write(&work.join("staged/app/cache/c"), "archived cache");
    let p = prepare(
        &compose,
        &work,
        &TopLevelFilter::All,
        &rels(&["logs", "app/cache"]),
    )
    .unwrap();
    p.apply().unwrap();
    p.commit().unwrap();
    assert_eq!(read(&compose.join("logs/l")), "log");
    assert!(!compose.join("logs/old").exists());
    assert_eq!(read(&compose.join("app/cache/c")), "live cache");
}

#[test]
fn revert_after_partial_swap_restores_everything() {
    let (_t, compose, work) = setup();
    let filter = TopLevelFilter::AllExcept(vec!["data".into()]);
    let p = prepare(&compose, &work, &filter, &[]).unwrap();
    assert_eq!(names(&p), vec!["app", "compose.yml", "logs", "stale.txt"]);
    // Simulate a crash after the first item was fully swapped and the last parked.
    std::fs::create_dir_all(p.undo_dir()).unwrap();
    std::fs::rename(compose.join("app"), p.undo_dir().join("0")).unwrap();
    std::fs::rename(p.staged_dir().join("app"), compose.join("app")).unwrap();
    std::fs::rename(compose.join("stale.txt"), p.undo_dir().join("3")).unwrap();
    p.revert().unwrap();
    assert_eq!(read(&compose.join("app/a.txt")), "old app");
    assert_eq!(read(&compose.join("stale.txt")), "stale");
    assert!(!compose.join("compose.yml").exists());
    assert!(!work.exists());
    // Idempotent.
    p.revert().unwrap();
    assert_eq!(read(&compose.join("app/a.txt")), "old app");
}

#[test]
fn revert_after_complete_swap() {
    let (_t, compose, work) = setup();
    let p = prepare(&compose, &work, &TopLevelFilter::All, &rels(&["logs"])).unwrap();
    p.apply().unwrap();
    assert_eq!(read(&compose.join("app/a.txt")), "new app");
    assert!(!compose.join("data").exists());
    p.revert().unwrap();
    assert_eq!(read(&compose.join("app/a.txt")), "old app");
    assert_eq!(read(&compose.join("app/cache/c")), "live cache");
    assert_eq!(read(&compose.join("data/db")), "live data");
    assert!(!compose.join("compose.yml").exists());
}

#[test]
fn a_recreated_live_item_blocks_the_revert_until_resolved() {
    for keep_live in [true, false] {
        let (_t, compose, work) = setup();
        let p = prepare(&compose, &work, &TopLevelFilter::All, &rels(&["logs"])).unwrap();
        // Crash after `data` was parked; then a container recreated its bind-mount source.
        let data = p
            .items
            .iter()
            .position(|i| i.display_name() == "data")
            .unwrap();
        std::fs::create_dir_all(p.undo_dir()).unwrap();
        std::fs::rename(compose.join("data"), p.undo_dir().join(data.to_string())).unwrap();
        write(&compose.join("data/db"), "empty new db");
        let err = p.revert().unwrap_err();
        let Error::SwapConflict { conflicts, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(conflicts[0].0, compose.join("data"));
        assert!(err.to_string().contains("--keep-live"), "{err}");
        // Nothing moved by the refused revert.
        assert_eq!(read(&compose.join("data/db")), "empty new db");
        assert_eq!(
            read(&p.undo_dir().join(data.to_string()).join("db")),
            "live data"
        );
        let keep = compose.join(".nuwax-kept-1");
        let aside = p.resolve(keep_live, &keep).unwrap();
        assert_eq!(aside.len(), 1);
        if keep_live {
            assert_eq!(read(&compose.join("data/db")), "empty new db");
            assert_eq!(
                read(&aside[0].join("db")),
                "live data",
                "set aside, not deleted"
            );
        } else {
            assert_eq!(read(&compose.join("data/db")), "live data");
            assert_eq!(read(&aside[0].join("db")), "empty new db");
        }
        assert_eq!(read(&compose.join("app/a.txt")), "old app");
        assert!(!work.exists());
    }
}

#[test]
fn plans_round_trip_and_old_journals_still_revert() {
    let (_t, compose, work) = setup();
    let p = prepare(&compose, &work, &TopLevelFilter::All, &rels(&["app/cache"])).unwrap();
    let json = serde_json::to_value(&p).unwrap();
    let back: SwapPlan = serde_json::from_value(json).unwrap();
    assert_eq!(back, p);
    // A journal written before nested units: top-level names, parked under their own name.
    let old = serde_json::json!({
        "compose_dir": compose, "work_dir": work,
        "items": [{"name": "stale.txt", "had_live": true, "has_staged": false}]
    });
    let old: SwapPlan = serde_json::from_value(old).unwrap();
    std::fs::create_dir_all(old.undo_dir()).unwrap();
    std::fs::rename(compose.join("stale.txt"), old.undo_dir().join("stale.txt")).unwrap();
    old.checked(&compose).unwrap().revert().unwrap();
    assert_eq!(read(&compose.join("stale.txt")), "stale");
}

#[test]
fn journal_paths_are_checked_before_use() {
    let (t, compose, work) = setup();
    let good = prepare(&compose, &work, &TopLevelFilter::All, &[]).unwrap();
    let mut other = good.clone();
    other.compose_dir = t.path().to_path_buf();
    assert!(other.checked(&compose).is_err(), "another compose dir");
    let mut outside = good.clone();
    outside.work_dir = t.path().join("elsewhere");
    assert!(outside.checked(&compose).is_err(), "a work dir not ours");
    let mut climbing = good.clone();
    climbing.items[0].name = Some("../../etc".into());
    assert!(climbing.checked(&compose).is_err(), "a unit climbing out");
    let mut parked = good.clone();
    parked.items[0].parked = Some("../x".into());
    assert!(
        parked.checked(&compose).is_err(),
        "a parked name climbing out"
    );
    assert!(checked_work_dir(&compose, Path::new("/tmp")).is_err());
    assert!(checked_work_dir(&compose, &compose.join("app")).is_err());
    assert_eq!(checked_work_dir(&compose, &work).unwrap(), work);
}

#[test]
fn work_dirs_never_reuse_a_leftover() {
    let t = tempfile::tempdir().unwrap();
    let a = create_work_dir(t.path(), WORK_PREFIX, 1).unwrap();
    write(
        &a.join("undo/data/db"),
        "parked by a lost catalog's operation 1",
    );
    let b = create_work_dir(t.path(), WORK_PREFIX, 1).unwrap();
    assert_ne!(a, b);
    assert_eq!(
        read(&a.join("undo/data/db")),
        "parked by a lost catalog's operation 1"
    );
}

/// Globs at several depths: what they match live is never moved, copied or deleted (also
/// files the backup never saw), what they match in the archive is not restored, and the
/// directories above a match are kept while their other children are swapped.
#[test]
fn glob_excludes_at_any_depth_are_never_touched() {
    let (_t, compose, work) = setup();
    write(&compose.join("top.log"), "live top log");
    write(&compose.join("app/deep/er/x.log"), "live deep log");
    write(&compose.join("app/deep/er/keep.txt"), "old keep");
    write(&compose.join("app/deep/tmp/a/b"), "live tmp");
    write(&compose.join("app/node/cache/c2"), "live nested cache");
    let staged = work.join("staged");
    write(&staged.join("app/deep/er/keep.txt"), "new keep");
    write(&staged.join("app/deep/er/x.log"), "archived log");
    write(&staged.join("app/deep/tmp/a/b"), "archived tmp");
    write(&staged.join("app/deep/tmp/new"), "archived tmp 2");
    let inos: Vec<(PathBuf, u64)> = [
        "top.log",
        "app/deep/er/x.log",
        "app/deep/tmp/a",
        "app/node/cache",
        "app/cache",
    ]
    .iter()
    .map(|n| (compose.join(n), ino(&compose.join(n))))
    .collect();
    let rules = rels(&["*.log", "**/cache", "app/deep/tmp/**"]);
    let p = prepare(&compose, &work, &TopLevelFilter::All, &rules).unwrap();
    for n in names(&p) {
        assert!(
            !n.ends_with(".log") && !n.contains("cache") && !n.starts_with("app/deep/tmp/"),
            "{n} is excluded and must not be a unit: {:?}",
            names(&p)
        );
    }
    p.apply().unwrap();
    p.commit().unwrap();
    for (path, i) in inos {
        assert_eq!(ino(&path), i, "{} was moved", path.display());
    }
    assert_eq!(read(&compose.join("top.log")), "live top log");
    assert_eq!(read(&compose.join("app/deep/er/x.log")), "live deep log");
    assert_eq!(read(&compose.join("app/deep/er/keep.txt")), "new keep");
    assert_eq!(read(&compose.join("app/deep/tmp/a/b")), "live tmp");
    assert!(
        !compose.join("app/deep/tmp/new").exists(),
        "excluded in the archive"
    );
    assert_eq!(
        read(&compose.join("app/node/cache/c2")),
        "live nested cache"
    );
    assert_eq!(read(&compose.join("app/cache/c")), "live cache");
    assert_eq!(read(&compose.join("app/a.txt")), "new app");
    assert!(!compose.join("stale.txt").exists());
    // A revert of the same plan shape puts everything back, also with globs.
    let work2 = create_work_dir(&compose, WORK_PREFIX, 8).unwrap();
    write(&work2.join("staged/app/a.txt"), "newer app");
    let p2 = prepare(&compose, &work2, &TopLevelFilter::All, &rules).unwrap();
    p2.apply().unwrap();
    p2.revert().unwrap();
    assert_eq!(read(&compose.join("app/a.txt")), "new app");
    assert_eq!(read(&compose.join("app/deep/er/x.log")), "live deep log");
    assert_eq!(read(&compose.join("top.log")), "live top log");
}
