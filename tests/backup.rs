//! `backup`: the JSON document, archive naming, atomicity, what goes in, and failures.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::archutil;
use crate::util::{
    BackupDoc, Fixture, ROW_KEYS, TestEnv, VERSION, assert_keys, assert_same_tree, doc_keys,
    error_message, except, exit, file_name, is_root, is_sha256_hex, is_sql_datetime, now_epoch,
    parse_archive_name, parse_utc, sha256_file,
};

#[test]
fn backup_json_document_matches_the_contract() {
    let env = TestEnv::new();
    let source = env.snapshot_compose();
    let before = now_epoch();
    let out = env.run(&["backup", "--json"]);
    let after = now_epoch();
    out.assert_ok();

    let value = out.json();
    assert_keys(&value, &doc_keys(&["backup"]));
    assert_keys(&value["backup"], ROW_KEYS);
    let doc: BackupDoc = out.json_as();
    assert!(doc.success);
    assert_eq!(doc.schema_version, 1);
    assert_eq!(doc.error, None);
    let row = doc.backup.expect("backup object");

    assert!(row.id > 0, "{row:?}");
    assert_eq!(row.backup_type, "Manual");
    assert_eq!(row.service_version, VERSION);
    assert_eq!(row.status, "Completed");
    assert_eq!(row.error, None);
    assert!(row.file_exists);
    assert!(
        is_sql_datetime(&row.created_at),
        "created_at {:?}",
        row.created_at
    );
    let created = parse_utc(&row.created_at).unwrap();
    assert!(
        (before - 1..=after + 1).contains(&created),
        "created_at {} is not UTC now ({before}..{after})",
        row.created_at
    );

    let path = Path::new(&row.file_path);
    assert!(
        path.is_absolute(),
        "file_path must be absolute: {}",
        row.file_path
    );
    assert_eq!(path.parent(), Some(env.backups_dir().as_path()));
    let stamp = parse_archive_name(&file_name(&row.file_path), "manual", VERSION);
    assert!(
        (before - 1..=after + 1).contains(&stamp),
        "archive name time is not UTC now: {}",
        row.file_path
    );
    assert_eq!(row.file_size, Some(fs::metadata(path).unwrap().len()));
    let sha = row.sha256.clone().expect("sha256");
    assert!(is_sha256_hex(&sha), "sha256 {sha:?}");
    assert_eq!(
        sha,
        sha256_file(path),
        "catalog SHA-256 is the archive file's"
    );
    // Entry count: every entry of the compose dir except the excluded logs/.
    let expected_entries = except(&source, &["logs"]).len() as u64;
    assert_eq!(row.entry_count, Some(expected_entries), "entry_count");

    assert_eq!(env.backup_files(), vec![file_name(&row.file_path)]);
    assert_eq!(env.row(row.id), row, "list-backups shows the same row");
}

#[test]
fn backup_text_mode_prints_nothing_on_stdout() {
    let env = TestEnv::new();
    env.run(&["backup"]).assert_ok().assert_stdout_empty();
    let rows = env.list();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "Completed");
}

#[test]
fn backup_quiet_prints_nothing_at_all() {
    let env = TestEnv::new();
    let out = env.run(&["-q", "backup"]);
    out.assert_ok().assert_stdout_empty();
    assert!(out.stderr.is_empty(), "-q on success prints nothing\n{out}");
}

#[test]
fn backup_reads_but_never_modifies_the_source() {
    let env = TestEnv::new();
    let before = env.snapshot_compose();
    let outside = env.snapshot_outside();
    env.backup();
    assert_same_tree("compose dir after backup", &before, &env.snapshot_compose());
    assert_same_tree("outside after backup", &outside, &env.snapshot_outside());
}

#[test]
fn backup_leaves_only_the_final_archive() {
    let env = TestEnv::new();
    let row = env.backup();
    let files = env.backup_files();
    assert_eq!(
        files,
        vec![file_name(&row.file_path)],
        "no .partial or temp files"
    );
    assert!(files.iter().all(|f| !f.ends_with(".partial")));
}

#[test]
fn backups_in_the_same_second_get_distinct_names() {
    let env = TestEnv::new();
    let mut names = Vec::new();
    for _ in 0..3 {
        names.push(file_name(&env.backup().file_path));
    }
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3, "names must be distinct: {names:?}");
    // Within one time stamp, in creation order: no suffix, then _2, then _3.
    let mut per_stamp = std::collections::HashMap::new();
    for name in &names {
        parse_archive_name(name, "manual", VERSION);
        let prefix = format!("backup_manual_v{VERSION}_");
        let rest = &name[prefix.len()..name.len() - ".tar.gz".len()];
        let (stamp, suffix) = rest.split_at(19);
        let n = per_stamp.entry(stamp.to_owned()).or_insert(0u32);
        *n += 1;
        let expected = if *n == 1 {
            String::new()
        } else {
            format!("_{n}")
        };
        assert_eq!(suffix, expected, "suffix of {name} (all: {names:?})");
    }
    assert_eq!(env.backup_files().len(), 3);
    let rows = env.list();
    assert_eq!(rows.len(), 3);
}

#[test]
fn backup_archives_everything_but_the_excluded_logs() {
    let env = TestEnv::new();
    let row = env.backup();
    let paths: Vec<String> = archutil::entry_paths(Path::new(&row.file_path))
        .into_iter()
        .map(|p| String::from_utf8_lossy(&p).into_owned())
        .collect();
    assert!(
        !paths.iter().any(|p| p == "logs" || p.starts_with("logs/")),
        "{paths:#?}"
    );
    for must in [
        ".env",
        "docker-compose.yml",
        "config/app.yml",
        "app/bin/start.sh",
        "app/current",
        "app/cache",
        "data/mysql/ibdata1",
        "data/redis/dump.rdb",
        "data/minio/.minio.sys/format.json",
        "upload/avatars/1.png",
    ] {
        assert!(
            paths.iter().any(|p| p.trim_end_matches('/') == must),
            "archive lacks {must}: {paths:#?}"
        );
    }
    assert!(
        paths.iter().all(|p| !p.starts_with('/')
            && !p.starts_with("./")
            && !p.split('/').any(|c| c == "..")),
        "entries are clean relative paths: {paths:#?}"
    );
}

#[test]
fn backup_honours_an_explicit_config_file() {
    let env = TestEnv::new();
    let other = env.work.join("other.toml");
    fs::write(
        &other,
        format!(
            "[versions]\ndocker_service = \"9.8.7\"\n[docker]\nproject = \"{}\"\n[backup]\nstorage_dir = \"elsewhere/archives\"\n",
            env.project
        ),
    )
    .unwrap();
    let out = env.run(&["--config", "other.toml", "backup", "--json"]);
    out.assert_ok();
    let row = out.json_as::<BackupDoc>().backup.expect("backup");
    assert_eq!(row.service_version, "9.8.7");
    assert_eq!(
        Path::new(&row.file_path).parent(),
        Some(env.work.join("elsewhere/archives").as_path()),
        "--config paths resolve against the working dir"
    );
    parse_archive_name(&file_name(&row.file_path), "manual", "9.8.7");
    assert!(env.backup_files().is_empty(), "default storage dir unused");
}

#[test]
fn missing_config_means_defaults_and_is_never_created() {
    let env = TestEnv::new();
    fs::remove_file(env.work.join("config.toml")).unwrap();
    env.run(&["list-backups", "--json"]).assert_ok();
    assert!(
        !env.work.join("config.toml").exists(),
        "config.toml must never be created silently"
    );
}

#[test]
fn backup_skips_a_fifo_with_a_warning() {
    let env = TestEnv::new();
    let fifo = env.path("app/control.fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(status.success());
    let out = env.run(&["backup", "--json"]);
    out.assert_ok().assert_stderr_has("control.fifo");
    let row = out.json_as::<BackupDoc>().backup.expect("backup");
    let paths = archutil::entry_paths(Path::new(&row.file_path));
    assert!(
        !paths.iter().any(|p| p.ends_with(b"control.fifo")),
        "a fifo is not archived"
    );
}

/// A directory that cannot be listed fails the backup in its scan, before the archive is
/// started and after the free-space check: exit 1 and a Failed row with the reason (only a
/// refusal for space records nothing), no archive and no `.partial`.
#[test]
fn unlistable_source_dir_fails_the_backup_with_a_failed_row() {
    let env = TestEnv::new();
    let victim = "data/mysql";
    let out = env.run_env(
        &["backup", "--json"],
        &[("NUWAX_TEST_FAIL_READ", OsStr::new(victim))],
    );
    out.assert_code(exit::FAILED)
        .assert_stderr_has("data/mysql");
    let rows = env.list();
    assert_eq!(rows.len(), 1, "the failed run is recorded: {rows:#?}");
    assert_eq!(rows[0].status, "Failed");
    assert!(
        rows[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("data/mysql")),
        "{:?}",
        rows[0]
    );
    assert!(env.backup_files().is_empty(), "{:?}", env.backup_files());
    env.run(&["backup"]).assert_ok();
}

/// A source file that cannot be read fails the whole backup: exit 1, row Failed with the
/// reason, no archive and no `.partial` left.
#[test]
fn unreadable_source_file_fails_the_backup_and_leaves_nothing() {
    let env = TestEnv::new();
    let victim = "data/mysql/nuwax/users.ibd";
    // As root nothing is unreadable by mode, so the test hook injects EIO on that file; as a
    // normal user mode 000 gives EACCES.
    if !is_root() {
        fs::set_permissions(
            env.path(victim),
            std::os::unix::fs::PermissionsExt::from_mode(0o000),
        )
        .unwrap();
    }
    let out = env.run_env(
        &["backup", "--json"],
        &[("NUWAX_TEST_FAIL_READ", OsStr::new(victim))],
    );
    out.assert_code(exit::FAILED).assert_stderr_has("users.ibd");
    let doc = out.json();
    assert_eq!(doc["success"], serde_json::json!(false), "{out}");
    assert!(
        error_message(&doc).contains("users.ibd"),
        "the JSON error names the file\n{out}"
    );

    let rows = env.list();
    assert_eq!(rows.len(), 1, "the failed run is recorded: {rows:#?}");
    let row = &rows[0];
    assert_eq!(row.status, "Failed");
    assert!(
        row.error.as_deref().is_some_and(|e| !e.is_empty()),
        "a failed row carries its reason: {row:?}"
    );
    assert!(!row.file_exists, "{row:?}");
    assert!(!Path::new(&row.file_path).exists());
    let left = env.backup_files();
    assert!(
        left.is_empty(),
        "no archive and no .partial after a failure: {left:?}"
    );

    // The failure is not sticky: the next backup works.
    if !is_root() {
        fs::set_permissions(
            env.path(victim),
            std::os::unix::fs::PermissionsExt::from_mode(0o640),
        )
        .unwrap();
    }
    let ok = env.backup();
    assert_eq!(env.list()[0].id, ok.id);
}

/// A backup killed with SIGKILL while writing leaves a `.partial` and a `Running` row; the next
/// start notices the dead owner, marks the row Failed and removes the `.partial`.
#[test]
fn crashed_backup_is_marked_failed_and_cleaned_on_next_start() {
    let env = TestEnv::with(Fixture { large_file: true });
    // Enough incompressible data that the writer is busy for a while.
    crate::util::write(
        &env.path("data/mysql/huge.ibd"),
        &crate::util::noise(99, 80 * 1024 * 1024),
        0o640,
    );
    let mut child = std::process::Command::new(crate::util::BIN)
        .arg("-C")
        .arg(&env.work)
        .args(["-q", "backup"])
        .current_dir(&env.cwd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .env_remove("RUST_LOG")
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut saw_partial = false;
    while start.elapsed() < Duration::from_secs(60) {
        if env.backup_files().iter().any(|f| f.ends_with(".partial")) {
            saw_partial = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(
        saw_partial,
        "never saw <archive>.partial while the backup ran (exit: {status})"
    );

    let rows = env.list();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(
        rows[0].status, "Failed",
        "a dead owner's row is failed: {rows:#?}"
    );
    assert!(rows[0].error.is_some(), "{rows:#?}");
    let left = env.backup_files();
    assert!(
        left.is_empty(),
        "the crashed run's .partial is removed: {left:?}"
    );

    // And the lock died with the process.
    env.backup();
}

/// The operation lock: another live holder refuses with exit 3.
#[test]
fn held_lock_refuses_backup_with_exit_3() {
    let env = TestEnv::new();
    let data = env.work.join("data");
    fs::create_dir_all(&data).unwrap();
    // Make sure the catalog exists first, so only the lock is in the way.
    env.run(&["list-backups", "--json"]).assert_ok();
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(data.join("nuwax.lock"))
        .unwrap();
    lock.try_lock().expect("take the lock in the test process");
    let before = env.snapshot_compose();
    let out = env.run(&["backup"]);
    out.assert_code(exit::REFUSED).assert_stderr_has("lock");
    assert!(env.backup_files().is_empty());
    drop(lock);
    env.backup();
    assert_same_tree("compose dir", &before, &env.snapshot_compose());
}
