//! What the tool says when something is off: a missing archive, an unknown ID, a missing
//! config file, a directory that is not a working dir, no compose file, no Docker engine.
//! Each message names the thing and the way out, with an honest exit code.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;

use crate::util::{TestEnv, exit, run_bin, walk};

#[test]
fn a_missing_archive_says_missing_and_how_to_fix_it() {
    let env = TestEnv::new();
    let row = env.backup();
    fs::remove_file(&row.file_path).unwrap();
    let before = env.snapshot_compose();
    let id = row.id.to_string();
    for args in [
        vec!["rollback", &id, "--force", "--no-start"],
        vec!["rollback-data-only", &id, "--force", "--no-start"],
        vec!["verify", &id],
    ] {
        let out = env.run(&args);
        out.assert_code(exit::REFUSED)
            .assert_stderr_has("is missing")
            .assert_stderr_has(&format!("nuwax-cli delete-backup {id}"))
            .assert_stderr_has("nuwax-cli reindex");
        assert!(
            !out.stderr.to_lowercase().contains("corrupt"),
            "a missing file is not a corrupt one\n{out}"
        );
    }
    let out = env.run(&["verify", &id, "--json"]);
    out.assert_code(exit::REFUSED);
    assert_eq!(out.json()["success"], false, "{out}");
    assert_eq!(before, env.snapshot_compose());
}

#[test]
fn an_unknown_id_points_at_list_backups() {
    let env = TestEnv::new();
    env.backup();
    for args in [
        &["rollback", "4242", "--force", "--no-start"][..],
        &["rollback-data-only", "4242", "--force"],
        &["verify", "4242"],
        &["delete-backup", "4242", "--force"],
    ] {
        env.run(args)
            .assert_code(exit::USAGE)
            .assert_stderr_has("backup 4242 not found")
            .assert_stderr_has("nuwax-cli list-backups");
    }
}

#[test]
fn a_config_file_named_with_c_must_exist() {
    let env = TestEnv::new();
    for args in [
        &["list-backups"][..],
        &["backup"],
        &["docker-service", "status"],
    ] {
        let mut full = vec!["-c", "nope.toml"];
        full.extend_from_slice(args);
        env.run(&full)
            .assert_code(exit::USAGE)
            .assert_stderr_has("nope.toml")
            .assert_stderr_has("does not exist");
    }
    // Without -c a missing config.toml still means the defaults.
    fs::remove_file(env.work.join("config.toml")).unwrap();
    env.run(&["list-backups"]).assert_ok();
}

/// Every entry under `dir` (relative), for "nothing was created".
fn entries(dir: &Path) -> Vec<String> {
    walk(dir)
        .iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect()
}

#[test]
fn read_only_commands_create_nothing_in_a_directory_that_is_not_a_working_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let cwd = dir.join("cwd");
    let plain = dir.join("plain");
    fs::create_dir_all(&cwd).unwrap();
    fs::create_dir_all(&plain).unwrap();
    fs::write(plain.join("notes.txt"), b"not a working dir\n").unwrap();
    let before = entries(&plain);
    for args in [
        &["list-backups"][..],
        &["list-backups", "--json"],
        &["rollback", "--list-json"],
        &["verify", "--all"],
        &["verify", "--all", "--json"],
        &["auto-backup", "status"],
        &["recover"],
        &["prune", "--keep-last", "3", "--dry-run"],
    ] {
        let mut full: Vec<&OsStr> = vec![OsStr::new("-C"), plain.as_os_str()];
        full.extend(args.iter().map(OsStr::new));
        let out = run_bin(&cwd, &full, &[]);
        out.assert_ok();
        assert_eq!(entries(&plain), before, "created files\n{out}");
        assert!(entries(&cwd).is_empty(), "{out}");
    }
    // Status in such a dir: says there is no compose file (whatever the engine says).
    let mut full: Vec<&OsStr> = vec![OsStr::new("-C"), plain.as_os_str()];
    full.extend(["docker-service", "status"].map(OsStr::new));
    let out = run_bin(&cwd, &full, &[]);
    out.assert_stderr_has("no compose file at")
        .assert_stderr_has(
            &plain
                .join("docker/docker-compose.yml")
                .display()
                .to_string(),
        );
    assert_eq!(entries(&plain), before, "created files\n{out}");
    // A read-only command in a working dir that has a catalog still reads it.
    let env = TestEnv::new();
    let row = env.backup();
    assert_eq!(env.list()[0].id, row.id);
}

#[test]
fn an_unreachable_engine_names_the_socket_and_what_to_check() {
    let env = TestEnv::new();
    let socket = env.root.join("no-such-docker.sock");
    let host = format!("unix://{}", socket.display());
    for args in [&["docker-service", "status"][..], &["backup"]] {
        env.run_env(args, &[("DOCKER_HOST", OsStr::new(&host))])
            .assert_code(exit::REFUSED)
            .assert_stderr_has(&socket.display().to_string())
            .assert_stderr_has("check that the docker daemon is running")
            .assert_stderr_has("DOCKER_HOST");
    }
}

#[test]
fn rollback_data_only_accepts_the_original_auto_start_flag_hidden() {
    let env = TestEnv::new();
    let row = env.backup();
    env.run(&[
        "rollback-data-only",
        &row.id.to_string(),
        "--force",
        "--no-start",
        "--auto-start-service",
    ])
    .assert_ok();
    for cmd in ["rollback", "rollback-data-only"] {
        let help = env.run(&[cmd, "--help"]);
        help.assert_ok();
        assert!(!help.stdout.contains("auto-start-service"), "{help}");
    }
}
