//! Issue 10, items 7, 8 and 11 (auto-backup): signals, the upgrade package pinned between
//! validation and unpacking, and `auto-backup run`'s preflight and exit codes.
//!
//! Signal tests start the built binary, wait until it is in the phase of interest (a pause
//! point, or a real container whose health never comes), send SIGINT / SIGTERM / SIGHUP with
//! `libc::kill`, and check what the operator sees right after the exit: the code (128 + the
//! signal), no `*.partial`, the catalog row `Failed` (read from SQLite directly, before any
//! other command could run recovery), and containers this process stopped running again.

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::dockerutil::{ensure_test_image, inspect, project_containers};
use crate::util::{
    BIN, Fixture, Output, TestEnv, assert_same_tree, exit, is_root, pin_mtimes, write,
};

const SIGNALS: [(i32, i32, &str); 3] = [
    (libc::SIGINT, 130, "SIGINT"),
    (libc::SIGTERM, 143, "SIGTERM"),
    (libc::SIGHUP, 129, "SIGHUP"),
];

/// Starts `nuwax-cli -C <work> <args>` in the background with `envs`.
pub(crate) fn spawn(env: &TestEnv, args: &[&str], envs: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.arg("-C")
        .arg(&env.work)
        .args(args)
        .current_dir(&env.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG");
    for (key, _) in std::env::vars_os() {
        if key.as_bytes().starts_with(b"NUWAX_") {
            cmd.env_remove(key);
        }
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().expect("start nuwax-cli")
}

#[allow(unsafe_code)]
pub(crate) fn send(child: &Child, signal: i32) {
    // SAFETY: kill(2) on a child's pid with a valid signal number.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill({}, {signal})", child.id());
}

/// Waits for the child (at most `limit`) and collects its output.
pub(crate) fn finish(mut child: Child, args: &[&str], limit: Duration) -> Output {
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let output = Output {
        args: args.iter().map(Into::into).collect(),
        code: status.and_then(|s| s.code()),
        stdout: String::from_utf8_lossy(&out_t.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err_t.join().unwrap()).into_owned(),
    };
    assert!(
        status.is_some(),
        "did not exit within {limit:?} of the signal\n{output}"
    );
    output
}

#[track_caller]
pub(crate) fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `(status, error)` of every catalog row, read directly (no recovery runs).
fn catalog_rows(env: &TestEnv) -> Vec<(String, Option<String>)> {
    if !env.db_file().exists() {
        return Vec::new();
    }
    let Ok(db) = rusqlite::Connection::open_with_flags(
        env.db_file(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    ) else {
        return Vec::new();
    };
    // While the catalog is being created there is no table yet: no rows.
    let Ok(mut stmt) = db.prepare("SELECT status, error FROM backups ORDER BY id") else {
        return Vec::new();
    };
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn partials(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".partial"))
                .collect()
        })
        .unwrap_or_default()
}

#[track_caller]
fn assert_interrupted(out: &Output, code: i32, name: &str) {
    assert_eq!(
        out.code,
        Some(code),
        "{name}: exit code 128 + signal\n{out}"
    );
    assert!(
        out.stderr.contains("interrupted"),
        "{name}: says it was interrupted\n{out}"
    );
}

/// A backup interrupted by each signal (the signal lands while it is paused right before
/// archiving, so the archive step sees it): exit 128 + signal, no `.partial`, row Failed,
/// live data unchanged.
#[test]
fn backup_interrupted_by_each_signal_exits_128_plus_signal_and_leaves_no_partial() {
    let env = TestEnv::with(Fixture { large_file: true });
    let before = env.snapshot_compose();
    for (signal, code, name) in SIGNALS {
        let args = ["backup"];
        let child = spawn(
            &env,
            &args,
            &[
                ("NUWAX_TEST_PAUSE_AT", "backup.after_journal"),
                ("NUWAX_TEST_PAUSE_SECS", "2"),
            ],
        );
        let rows_before = catalog_rows(&env).len();
        wait_until("the backup's catalog row", Duration::from_secs(60), || {
            catalog_rows(&env).len() > rows_before
        });
        send(&child, signal);
        let out = finish(child, &args, Duration::from_secs(60));
        assert_interrupted(&out, code, name);
        assert!(
            partials(&env.backups_dir()).is_empty(),
            "{name}: {:?}",
            env.backup_files()
        );
        let rows = catalog_rows(&env);
        let (status, error) = rows.last().unwrap();
        assert_eq!(status, "Failed", "{name}: {rows:?}");
        assert!(
            error.as_deref().unwrap_or("").contains("interrupted"),
            "{rows:?}"
        );
        assert!(
            env.backup_files().is_empty(),
            "{name}: no archive may be left: {:?}",
            env.backup_files()
        );
    }
    assert_same_tree("compose dir", &before, &env.snapshot_compose());
}

/// Ctrl-C (and SIGTERM) during `verify` of a good archive is an interruption, never a
/// "FAILED verification" verdict or exit 4, with and without `--json` / `--all`.
#[test]
fn verify_interrupted_is_exit_130_never_a_corrupt_verdict() {
    let env = TestEnv::with(Fixture { large_file: true });
    env.run(&["backup"]).assert_ok();
    let id = env.list()[0].id.to_string();
    for (signal, code, name) in [SIGNALS[0], SIGNALS[1]] {
        for args in [
            vec!["verify", id.as_str()],
            vec!["verify", "--all", "--json"],
            vec!["verify", id.as_str(), "--json"],
        ] {
            let child = spawn(
                &env,
                &args,
                &[
                    ("NUWAX_TEST_PAUSE_AT", "verify.before_scan"),
                    ("NUWAX_TEST_PAUSE_SECS", "2"),
                ],
            );
            // Verify is read-only: no lock, no row change; give it time to reach the pause.
            std::thread::sleep(Duration::from_millis(700));
            let sent = Instant::now();
            send(&child, signal);
            let out = finish(child, &args, Duration::from_secs(30));
            assert_interrupted(&out, code, name);
            assert!(
                sent.elapsed() < Duration::from_secs(10),
                "{name} {args:?}: took {:?}",
                sent.elapsed()
            );
            assert!(
                !out.stderr.contains("FAILED"),
                "{name} {args:?}: a verdict\n{out}"
            );
            assert!(
                !out.stdout.contains("\"ok\""),
                "{name} {args:?}: a verdict\n{out}"
            );
            if args.contains(&"--json") {
                let doc: serde_json::Value = out.json();
                assert_eq!(doc["success"], false, "{out}");
                assert!(
                    crate::util::error_message(&doc).contains("interrupted"),
                    "{out}"
                );
            }
        }
    }
    // The archive is still fine, and says so.
    env.run(&["verify", &id]).assert_ok();
}

// --------------------------------------------------------------------------- real containers

/// One service (`db`, restart unless-stopped) that `docker-service start` creates.
fn one_service_env(healthcheck: &str, fixture: Fixture) -> TestEnv {
    ensure_test_image();
    let env = TestEnv::with(fixture);
    let yaml = format!(
        "services:\n\
         \x20 db:\n\
         \x20   image: nuwax-test-busybox:latest\n\
         \x20   command: [\"sleep\", \"3600\"]\n\
         \x20   restart: unless-stopped\n\
         \x20   network_mode: none\n\
         \x20   stop_signal: SIGKILL\n\
         \x20   labels:\n\
         \x20     nuwax-test: \"1\"\n\
         {healthcheck}"
    );
    let path = env.path("docker-compose.yml");
    fs::write(&path, yaml).unwrap();
    pin_mtimes(&env.compose_dir(), 1_650_000_000);
    env
}

fn db_container(env: &TestEnv) -> String {
    let ids = project_containers(&env.project, Some("db"));
    assert_eq!(ids.len(), 1, "one db container: {ids:?}");
    ids[0].clone()
}

fn state(id: &str) -> String {
    inspect(id, "{{.State.Status}}")
}

/// `auto-backup run` interrupted while archiving: the containers it stopped run again when
/// the process has exited (checked before any other nuwax-cli command could recover them),
/// exit 128 + signal, no `.partial`, the row Failed.
#[test]
fn auto_backup_interrupted_restarts_what_it_stopped_before_exiting() {
    let env = one_service_env("", Fixture { large_file: true });
    env.run(&["docker-service", "start"]).assert_ok();
    let db = db_container(&env);
    assert_eq!(state(&db), "running");
    for (signal, code, name) in [SIGNALS[1], SIGNALS[2], SIGNALS[0]] {
        let args = ["auto-backup", "run", "--json"];
        let rows_before = catalog_rows(&env).len();
        let child = spawn(
            &env,
            &args,
            &[
                ("NUWAX_TEST_PAUSE_AT", "backup.after_journal"),
                ("NUWAX_TEST_PAUSE_SECS", "2"),
            ],
        );
        wait_until(
            "the auto backup's catalog row",
            Duration::from_secs(90),
            || catalog_rows(&env).len() > rows_before,
        );
        assert_ne!(state(&db), "running", "{name}: stopped for the backup");
        send(&child, signal);
        let out = finish(child, &args, Duration::from_secs(90));
        // Right after the exit, before anything else runs.
        assert_eq!(
            state(&db),
            "running",
            "{name}: restarted by the interrupted run\n{out}"
        );
        assert_interrupted(&out, code, name);
        let doc: serde_json::Value = out.json();
        assert_eq!(doc["success"], false, "{out}");
        assert!(
            crate::util::error_message(&doc).contains("interrupted"),
            "{out}"
        );
        assert!(
            partials(&env.backups_dir()).is_empty(),
            "{:?}",
            env.backup_files()
        );
        let rows = catalog_rows(&env);
        assert_eq!(rows.last().unwrap().0, "Failed", "{name}: {rows:?}");
        assert!(
            rows.iter().all(|(s, _)| s != "Running" && s != "Completed"),
            "{rows:?}"
        );
    }
}

/// Ctrl-C while `docker-service start` waits for a health that never comes ends the wait at
/// once with 130 (not after the timeout, not exit 1).
#[test]
fn interrupted_health_wait_ends_at_once_with_130() {
    let env = one_service_env(
        "\x20   healthcheck:\n\
         \x20     test: [\"CMD\", \"false\"]\n\
         \x20     interval: 1s\n\
         \x20     retries: 1000\n\
         \x20     start_period: 600s\n",
        Fixture::default(),
    );
    for (signal, code, name) in [SIGNALS[0], SIGNALS[1]] {
        let args = ["docker-service", "start"];
        let child = spawn(&env, &args, &[]);
        wait_until("the db container running", Duration::from_secs(120), || {
            let ids = project_containers(&env.project, Some("db"));
            ids.len() == 1 && state(&ids[0]) == "running"
        });
        // Now in the health wait (start_timeout is minutes).
        std::thread::sleep(Duration::from_millis(1500));
        let sent = Instant::now();
        send(&child, signal);
        let out = finish(child, &args, Duration::from_secs(30));
        assert_interrupted(&out, code, name);
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "{name}: the wait went on for {:?}",
            sent.elapsed()
        );
        // Stop it for the next round's start.
        env.run(&["docker-service", "stop"]).assert_ok();
    }
}

// --------------------------------------------------------------------------- auto-backup preflight

fn set_storage_dir(env: &TestEnv, dir: &Path) {
    let cfg = env.work.join("config.toml");
    let mut text = fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "\n[backup]\nstorage_dir = \"{}\"\n",
        dir.display()
    ));
    fs::write(cfg, text).unwrap();
}

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        assert!(is_root(), "mounting a tmpfs needs root (CI runs as root)");
        fs::create_dir_all(path).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", path.display());
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A storage dir without room, or one that cannot be created: `auto-backup run` refuses with
/// `backup`'s exit code 3 before it stops anything (the container keeps running, never
/// restarted), writes no row, and its `--json` says `success:false` with `error`.
#[test]
fn auto_backup_checks_storage_and_space_before_stopping_anything() {
    let env = one_service_env("", Fixture { large_file: true });
    env.run(&["docker-service", "start"]).assert_ok();
    let db = db_container(&env);
    let started = inspect(&db, "{{.State.StartedAt}}");
    let small = Tmpfs::mount(&env.root.join("small"), "1m");
    let blocker = env.root.join("a-file");
    write(&blocker, b"not a directory\n", 0o644);
    let cases = [
        ("no space", small.0.join("backups"), "not enough free space"),
        (
            "not creatable",
            blocker.join("backups"),
            "cannot be created",
        ),
    ];
    let config = fs::read_to_string(env.work.join("config.toml")).unwrap();
    for (what, dir, needle) in cases {
        fs::write(env.work.join("config.toml"), &config).unwrap();
        set_storage_dir(&env, &dir);
        // `backup` itself: the same code.
        env.run(&["backup"]).assert_code(exit::REFUSED);
        let out = env.run(&["auto-backup", "run", "--json"]);
        out.assert_code(exit::REFUSED).assert_stderr_has(needle);
        let doc = out.json();
        assert_eq!(doc["success"], false, "{what}\n{out}");
        assert!(
            crate::util::error_message(&doc).contains(needle),
            "{what}: error set\n{out}"
        );
        assert_eq!(state(&db), "running", "{what}");
        assert_eq!(
            inspect(&db, "{{.State.StartedAt}}"),
            started,
            "{what}: the container was stopped and started again"
        );
        assert!(
            catalog_rows(&env).is_empty(),
            "{what}: {:?}",
            catalog_rows(&env)
        );
        // Quiet (cron) keeps the code too.
        env.run(&["-q", "auto-backup", "run"])
            .assert_code(exit::REFUSED);
        let status = env.run(&["auto-backup", "status", "--json"]).json();
        assert_eq!(status["last_result"], "failed", "{what}: {status}");
        assert!(
            status["last_error"].as_str().unwrap_or("").contains(needle),
            "{what}: {status}"
        );
    }
}

/// A backup that fails once the services are stopped: they are started again, the exit code
/// is the backup's own (here 1: an unreadable file), and `--json` has `error`.
#[test]
fn auto_backup_failure_json_has_error_and_keeps_the_backup_exit_code() {
    let env = one_service_env("", Fixture::default());
    env.run(&["docker-service", "start"]).assert_ok();
    let db = db_container(&env);
    let out = env.run_env(
        &["auto-backup", "run", "--json"],
        &[("NUWAX_TEST_FAIL_READ", OsStr::new("docker-compose.yml"))],
    );
    out.assert_code(exit::FAILED);
    let doc = out.json();
    assert_eq!(doc["success"], false, "{out}");
    let error = crate::util::error_message(&doc);
    assert!(!error.is_empty(), "{out}");
    assert_eq!(doc["backup_error"].as_str(), Some(error), "{out}");
    assert_eq!(state(&db), "running", "{out}");
}

// --------------------------------------------------------------------------- upgrade package

/// A package rewritten in place after validation (while the pre-upgrade backup is taken):
/// refused with exit 4 before anything live is touched; the pre-upgrade backup is kept.
#[test]
fn upgrade_refuses_a_package_changed_after_validation() {
    let env = TestEnv::new();
    let before = env.snapshot_compose();
    let config_before = fs::read_to_string(env.work.join("config.toml")).unwrap();
    let good = env.root.join("release-good");
    write(
        &good.join("docker-compose.yml"),
        b"services:\n  web:\n    image: nuwax-test-busybox:latest\n",
        0o644,
    );
    write(&good.join("app/VERSION"), b"9.9.9\n", 0o644);
    let evil = env.root.join("release-evil");
    write(
        &evil.join("docker-compose.yml"),
        b"services:\n  web:\n    image: evil:latest\n",
        0o644,
    );
    write(
        &evil.join("data/planted"),
        b"an upgrade must never ship data\n",
        0o644,
    );
    let package = env.root.join("release-9.9.9.tar.gz");
    let evil_pkg = env.root.join("evil.tar.gz");
    for (dir, pkg) in [(&good, &package), (&evil, &evil_pkg)] {
        let st = Command::new("tar")
            .arg("czf")
            .arg(pkg)
            .arg("-C")
            .arg(dir)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());
    }
    let args = [
        "upgrade",
        "--package",
        package.to_str().unwrap(),
        "--version",
        "9.9.9",
        "--json",
    ];
    let child = spawn(
        &env,
        &args,
        &[
            ("NUWAX_TEST_PAUSE_AT", "upgrade.after_backup"),
            ("NUWAX_TEST_PAUSE_SECS", "3"),
        ],
    );
    wait_until("the pre-upgrade backup", Duration::from_secs(60), || {
        catalog_rows(&env).iter().any(|(s, _)| s == "Completed")
    });
    // In place: same inode, other bytes (a package that ships data).
    fs::write(&package, fs::read(&evil_pkg).unwrap()).unwrap();
    let out = finish(child, &args, Duration::from_secs(120));
    out.assert_code(exit::INTEGRITY)
        .assert_stderr_has("changed after it was validated");
    assert_eq!(out.json()["success"], false, "{out}");
    assert_same_tree("compose dir", &before, &env.snapshot_compose());
    assert!(!env.path("data/planted").exists());
    assert_eq!(
        fs::read_to_string(env.work.join("config.toml")).unwrap(),
        config_before
    );
    let rows = env.list();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].backup_type, "PreUpgrade");
    assert_eq!(rows[0].status, "Completed");
    assert!(rows[0].file_exists, "the pre-upgrade backup is kept");
    let leftovers: Vec<_> = fs::read_dir(env.compose_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".nuwax-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Packs `dir` as an operator would: `tar czf <package> -C <dir> .`.
fn tar_czf(package: &Path, dir: &Path) {
    let st = Command::new("tar")
        .arg("czf")
        .arg(package)
        .arg("-C")
        .arg(dir)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success(), "tar czf {}", package.display());
}

/// An upgrade interrupted while taking its pre-upgrade backup, or after unpacking the package
/// but before the swap: exit 128 + signal, nothing live changed (files, config.toml), the
/// container it stopped is running again when it exits, no `.partial`, no work dir left.
#[test]
fn upgrade_interrupted_before_the_swap_changes_nothing_and_restarts_what_it_stopped() {
    let env = one_service_env("", Fixture::default());
    env.run(&["docker-service", "start"]).assert_ok();
    let db = db_container(&env);
    let release = env.root.join("release");
    write(
        &release.join("docker-compose.yml"),
        b"services:\n  db:\n    image: nuwax-test-busybox:latest\n    command: [\"sleep\", \"3600\"]\n",
        0o644,
    );
    write(&release.join("app/VERSION"), b"9.9.9\n", 0o644);
    let package = env.root.join("release-9.9.9.tar.gz");
    tar_czf(&package, &release);
    let config_before = fs::read_to_string(env.work.join("config.toml")).unwrap();
    let before = env.snapshot_compose();
    for (point, (signal, code, name)) in [
        ("backup.after_journal", SIGNALS[1]),
        ("upgrade.before_unpack", SIGNALS[0]),
        ("upgrade.before_unpack", SIGNALS[2]),
    ] {
        let args = [
            "upgrade",
            "--package",
            package.to_str().unwrap(),
            "--version",
            "9.9.9",
        ];
        let rows_before = catalog_rows(&env).len();
        let child = spawn(
            &env,
            &args,
            &[
                ("NUWAX_TEST_PAUSE_AT", point),
                ("NUWAX_TEST_PAUSE_SECS", "3"),
            ],
        );
        wait_until(point, Duration::from_secs(90), || {
            let rows = catalog_rows(&env);
            match point {
                "backup.after_journal" => rows.len() > rows_before,
                _ => rows.len() > rows_before && rows.last().unwrap().0 == "Completed",
            }
        });
        if point == "upgrade.before_unpack" {
            // The backup is complete; give it the moment to reach the pause.
            std::thread::sleep(Duration::from_millis(500));
        }
        assert_ne!(
            state(&db),
            "running",
            "{name} at {point}: stopped for the upgrade"
        );
        send(&child, signal);
        let out = finish(child, &args, Duration::from_secs(90));
        assert_eq!(
            state(&db),
            "running",
            "{name} at {point}: restarted by the interrupted run\n{out}"
        );
        assert_interrupted(&out, code, &format!("{name} at {point}"));
        assert_same_tree(point, &before, &env.snapshot_compose());
        assert_eq!(
            fs::read_to_string(env.work.join("config.toml")).unwrap(),
            config_before,
            "{point}"
        );
        assert!(
            partials(&env.backups_dir()).is_empty(),
            "{:?}",
            env.backup_files()
        );
        let rows = catalog_rows(&env);
        assert!(
            rows.iter().all(|(s, _)| s != "Running"),
            "{point}: {rows:?}"
        );
        let leftovers: Vec<_> = fs::read_dir(env.compose_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".nuwax-"))
            .collect();
        assert!(leftovers.is_empty(), "{point}: {leftovers:?}");
    }
}
