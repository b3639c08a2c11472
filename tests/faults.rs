//! Faults: kill -9 at named points and at random moments, a full disk, and a crash during
//! recovery itself. After every fault the next invocation (any command) must leave:
//! - no archive under a final name that fails verification, and no `.partial`;
//! - a consistent catalog (no `Running` row, every `Completed` row's archive present);
//! - every top-level item of the compose dir wholly old or wholly new;
//! - witness files outside the compose dir untouched, and no staging dir left behind.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{BIN, Fixture, TestEnv, Tree, exit, is_root, noise, only, write};

/// Runs with `NUWAX_TEST_CRASH_AT=point` and asserts the process really died there.
#[track_caller]
fn crash_at<S: AsRef<OsStr>>(env: &TestEnv, args: &[S], point: &str) {
    let out = env.run_env(args, &[("NUWAX_TEST_CRASH_AT", OsStr::new(point))]);
    assert_eq!(
        out.code, None,
        "the run should have been killed at {point}; did it reach the point?\n{out}"
    );
}

fn top_level_names(trees: &[&Tree]) -> Vec<String> {
    let mut names: Vec<String> = trees
        .iter()
        .flat_map(|t| t.keys())
        .filter_map(|p| p.components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Each top-level item of `after` equals that item in `old` or in `new`, in full.
#[track_caller]
fn assert_items_old_or_new(old: &Tree, new: &Tree, after: &Tree, what: &str) {
    for name in top_level_names(&[old, new, after]) {
        let a = only(after, &[&name]);
        let o = only(old, &[&name]);
        let n = only(new, &[&name]);
        assert!(
            a == o || a == n,
            "{what}: top-level item {name:?} is neither wholly old nor wholly new\ndiff vs old: {:#?}\ndiff vs new: {:#?}",
            crate::util::tree_diff(&o, &a),
            crate::util::tree_diff(&n, &a),
        );
    }
}

/// The invariants that must hold after the next invocation recovered.
#[track_caller]
fn assert_recovered(env: &TestEnv, outside: &Tree, what: &str) {
    let rows = env.list(); // any command runs recovery first
    for r in &rows {
        assert_ne!(
            r.status, "Running",
            "{what}: a dead run's row is left Running: {r:?}"
        );
        if r.status == "Completed" {
            assert!(
                r.file_exists,
                "{what}: Completed row without its archive: {r:?}"
            );
        }
    }
    for name in env.backup_files() {
        assert!(!name.ends_with(".partial"), "{what}: left {name}");
        let row = rows
            .iter()
            .find(|r| r.file_path.ends_with(&name))
            .unwrap_or_else(|| panic!("{what}: archive {name} has no catalog row: {rows:#?}"));
        assert_eq!(
            row.status, "Completed",
            "{what}: {name} under a final name: {row:?}"
        );
        env.run(&["verify", &row.id.to_string()]).assert_ok();
    }
    let strays: Vec<_> = std::fs::read_dir(env.compose_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".nuwax-"))
        .collect();
    assert!(strays.is_empty(), "{what}: staging left behind: {strays:?}");
    assert_eq!(
        &env.snapshot_outside(),
        outside,
        "{what}: files outside the compose dir changed"
    );
}

// --------------------------------------------------------------------------- backup crashes

const BACKUP_POINTS: &[&str] = &[
    "backup.after_journal",
    "backup.after_catalog_insert",
    "backup.after_partial_created",
    "backup.mid_archive",
    "backup.before_rename",
    "backup.after_rename",
    "backup.before_catalog_complete",
];

#[test]
fn killed_backups_leave_no_bad_archive_and_a_consistent_catalog() {
    for point in BACKUP_POINTS {
        let env = TestEnv::with(Fixture { large_file: true });
        let live = env.snapshot_compose();
        let outside = env.snapshot_outside();
        crash_at(&env, &["backup"], point);
        assert_recovered(&env, &outside, point);
        assert_eq!(
            env.snapshot_compose(),
            live,
            "{point}: a backup changed live data"
        );
        // The tool still works: the lock died with the process.
        let row = env.backup();
        env.run(&["verify", &row.id.to_string()]).assert_ok();
    }
}

// --------------------------------------------------------------------------- rollback crashes

/// Points a default (app-scope) rollback of the fixture passes through. The fixture's app
/// scope has at least three top-level items that exist both live and in the archive.
const ROLLBACK_POINTS: &[&str] = &[
    // The work dir is journaled before it exists: a kill here leaves no dir recovery does
    // not know about (it used to be created first, then journaled).
    "rollback.journaled_work_dir",
    "rollback.after_work_dir",
    "extract.mid",
    "rollback.after_extract",
    "rollback.before_swap",
    "rollback.swap.0.parked",
    "rollback.swap.0.placed",
    "rollback.swap.1.parked",
    "rollback.swap.1.placed",
    "rollback.swap.2.parked",
    "rollback.swap.2.placed",
    "rollback.mid_swap",
    "rollback.after_swap",
    "rollback.after_commit",
    // Started (here: left stopped, as asked), the replaced files not yet removed.
    "rollback.after_start",
];

fn rollback_crash_case(point: &str, scope: &[&str]) {
    let env = TestEnv::new();
    let original = env.snapshot_compose();
    let row = env.backup();
    env.mutate();
    let before = env.snapshot_compose();
    let outside = env.snapshot_outside();
    let id = row.id.to_string();
    let mut args = vec!["rollback", id.as_str(), "--force", "--no-start"];
    args.extend_from_slice(scope);
    crash_at(&env, &args, point);
    assert_recovered(&env, &outside, point);
    let after = env.snapshot_compose();
    assert_items_old_or_new(&before, &original, &after, point);
    // Outside the scope nothing ever changes, even mid-crash.
    let untouched: &[&str] = if scope.is_empty() {
        &["data", "upload", "logs"]
    } else {
        &["logs"]
    };
    assert_eq!(only(&after, untouched), only(&before, untouched), "{point}");
    // And a rollback afterwards completes normally.
    env.run(&args).assert_ok();
}

#[test]
fn killed_rollbacks_leave_each_item_wholly_old_or_new() {
    for point in ROLLBACK_POINTS {
        rollback_crash_case(point, &[]);
    }
}

#[test]
fn killed_full_rollback_mid_swap_is_reverted() {
    for point in ["rollback.swap.1.placed", "rollback.swap.3.parked"] {
        rollback_crash_case(point, &["--rollback-data"]);
    }
}

/// A crash while recovery itself reverts a swap is recovered by the run after.
#[test]
fn a_crash_during_recovery_is_recovered_next_time() {
    let env = TestEnv::new();
    let original = env.snapshot_compose();
    let row = env.backup();
    env.mutate();
    let before = env.snapshot_compose();
    let outside = env.snapshot_outside();
    let id = row.id.to_string();
    crash_at(
        &env,
        &["rollback", &id, "--force", "--no-start"],
        "rollback.swap.2.placed",
    );
    crash_at(&env, &["list-backups"], "recovery.revert.1");
    assert_recovered(&env, &outside, "crash in recovery");
    let after = env.snapshot_compose();
    assert_items_old_or_new(&before, &original, &after, "crash in recovery");
    assert_eq!(after, before, "an interrupted swap is reverted completely");
}

// --------------------------------------------------------------------------- random kills

/// SIGKILL after a pseudo-random delay, repeatedly, during backups and full rollbacks. The
/// delays are fractions (5-95 %) of how long an uninterrupted run takes on this machine, so the
/// kills land mid-way however fast the build is.
#[test]
fn random_kills_during_backup_and_rollback() {
    let env = TestEnv::with(Fixture { large_file: true });
    write(
        &env.path("data/mysql/extra.ibd"),
        &noise(5, 24 << 20),
        0o640,
    );
    crate::util::pin_mtimes(&env.compose_dir(), 1_600_000_000);
    let original = env.snapshot_compose();
    let started = Instant::now();
    let good = env.backup();
    let backup_time = started.elapsed();
    let id = good.id.to_string();
    let backup_args = vec!["-q", "backup"];
    let rollback_args = vec![
        "-q",
        "rollback",
        &id,
        "--force",
        "--no-start",
        "--rollback-data",
    ];
    // Time a full rollback too (of the unchanged tree: a no-op in content).
    let started = Instant::now();
    env.run(&rollback_args).assert_ok();
    let rollback_time = started.elapsed();
    env.mutate();
    let mut seed: u64 = 0x5eed;
    let mut landed = 0;
    for round in 0..10 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let full = if round % 2 == 0 {
            backup_time
        } else {
            rollback_time
        };
        let fraction = 0.05 + 0.9 * ((seed >> 33) % 1000) as f64 / 1000.0;
        let delay = full.mul_f64(fraction);
        let before = env.snapshot_compose();
        let outside = env.snapshot_outside();
        let args = if round % 2 == 0 {
            &backup_args
        } else {
            &rollback_args
        };
        let mut child = Command::new(BIN)
            .arg("-C")
            .arg(&env.work)
            .args(args)
            .current_dir(&env.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while start.elapsed() < delay && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(2));
        }
        if child.try_wait().unwrap().is_none() {
            landed += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        let what = format!("round {round} ({:?} after {delay:?})", args[1]);
        assert_recovered(&env, &outside, &what);
        let after = env.snapshot_compose();
        if round % 2 == 0 {
            assert_eq!(after, before, "{what}: a backup changed live data");
        } else {
            assert_items_old_or_new(&before, &original, &after, &what);
        }
    }
    assert!(
        landed >= 3,
        "only {landed} kills landed mid-operation; the corpus is too small"
    );
}

// --------------------------------------------------------------------------- full disk

/// A small tmpfs mounted for one test, unmounted on drop.
pub(crate) struct Tmpfs {
    pub(crate) path: std::path::PathBuf,
}

impl Tmpfs {
    pub(crate) fn mount(path: &Path, size: &str) -> Tmpfs {
        assert!(
            is_root(),
            "the disk-full tests mount a tmpfs and need root (CI runs as root)"
        );
        std::fs::create_dir_all(path).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", path.display());
        Tmpfs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

pub(crate) fn set_storage_dir(env: &TestEnv, dir: &Path) {
    let cfg = env.work.join("config.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "\n[backup]\nstorage_dir = \"{}\"\n",
        dir.display()
    ));
    std::fs::write(cfg, text).unwrap();
}

#[test]
fn backup_onto_a_full_disk_is_refused_or_fails_cleanly() {
    let env = TestEnv::with(Fixture { large_file: true });
    let fs = Tmpfs::mount(&env.root.join("small"), "3m");
    set_storage_dir(&env, &fs.path.join("backups"));
    let live = env.snapshot_compose();
    let outside = env.snapshot_outside();

    // The preflight sees it will not fit: exit 3, with the numbers.
    let out = env.run(&["backup"]);
    out.assert_code(exit::REFUSED)
        .assert_stderr_has("free space");
    assert!(env.list().is_empty(), "a refused backup records nothing");

    // Past the preflight, the real ENOSPC: exit 1, Failed row, nothing left on the disk.
    let out = env.run_env(
        &["backup"],
        &[("NUWAX_TEST_SKIP_SPACE_CHECK", OsStr::new("1"))],
    );
    out.assert_code(exit::FAILED)
        .assert_stderr_has("no space left");
    let rows = env.list();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "Failed");
    let left: Vec<_> = std::fs::read_dir(fs.path.join("backups"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "the full disk keeps nothing: {left:?}");
    assert_eq!(env.snapshot_compose(), live);
    let witnesses = |t: Tree| -> Tree {
        t.into_iter()
            .filter(|(p, _)| !p.starts_with("small"))
            .collect()
    };
    assert_eq!(witnesses(env.snapshot_outside()), witnesses(outside));
}

#[test]
fn rollback_onto_a_full_disk_is_refused_or_fails_cleanly() {
    let mut env = TestEnv::with(Fixture { large_file: true });
    // Move the whole working dir onto a small tmpfs; archives go elsewhere.
    let fs = Tmpfs::mount(&env.root.join("small"), "64m");
    let work = fs.path.join("work");
    env.move_work(work);
    set_storage_dir(&env, &env.root.join("archives"));
    let row = env.backup();
    env.mutate();
    // Leave less free space than the data scope needs.
    let free = crate::util::free_bytes(&fs.path);
    write(
        &fs.path.join("filler"),
        &vec![0u8; (free - (4 << 20)) as usize],
        0o600,
    );
    let before = env.snapshot_compose();
    let outside = env.snapshot_outside();
    let id = row.id.to_string();
    let args = [
        "rollback",
        id.as_str(),
        "--force",
        "--no-start",
        "--rollback-data",
    ];

    let out = env.run(&args);
    out.assert_code(exit::REFUSED)
        .assert_stderr_has("free space");
    assert_eq!(env.snapshot_compose(), before);

    let out = env.run_env(&args, &[("NUWAX_TEST_SKIP_SPACE_CHECK", OsStr::new("1"))]);
    out.assert_code(exit::FAILED)
        .assert_stderr_has("no space left");
    assert_eq!(
        env.snapshot_compose(),
        before,
        "live data intact after ENOSPC"
    );
    assert_recovered(&env, &outside, "rollback ENOSPC");

    // Once there is room again the same rollback succeeds.
    std::fs::remove_file(fs.path.join("filler")).unwrap();
    env.run(&args).assert_ok();
}
