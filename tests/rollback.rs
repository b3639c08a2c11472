//! `rollback` and `rollback-data-only`: each scope restores exactly its part of the archive,
//! byte for byte with metadata, and touches nothing else; argument and confirmation rules.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;

use crate::util::{
    BackupRow, DATA_SCOPE, EXCLUDED, Fixture, TestEnv, Tree, assert_same_tree, except, exit,
    is_root, only, tree_diff, write,
};

/// A working dir that was backed up, then changed everywhere.
struct Scenario {
    env: TestEnv,
    row: BackupRow,
    /// The compose dir at backup time.
    original: Tree,
    /// The compose dir after [`TestEnv::mutate`].
    mutated: Tree,
    /// Everything outside the compose dir.
    outside: Tree,
}

impl Scenario {
    fn new() -> Scenario {
        let env = TestEnv::new();
        let original = env.snapshot_compose();
        let row = env.backup();
        env.mutate();
        let mutated = env.snapshot_compose();
        // The mutation must reach every scope, or the assertions below prove nothing.
        for (what, names) in [("data scope", DATA_SCOPE), ("logs", EXCLUDED)] {
            assert!(
                !tree_diff(&only(&original, names), &only(&mutated, names)).is_empty(),
                "test setup: mutate() left the {what} unchanged"
            );
        }
        assert!(!tree_diff(&app_scope(&original), &app_scope(&mutated)).is_empty());
        let outside = env.snapshot_outside();
        Scenario {
            env,
            row,
            original,
            mutated,
            outside,
        }
    }

    fn id(&self) -> String {
        self.row.id.to_string()
    }

    #[track_caller]
    fn assert_outside_untouched(&self) {
        assert_same_tree(
            "outside the compose dir (witnesses, config)",
            &self.outside,
            &self.env.snapshot_outside(),
        );
    }

    #[track_caller]
    fn assert_nothing_changed(&self) {
        assert_same_tree("compose dir", &self.mutated, &self.env.snapshot_compose());
        self.assert_outside_untouched();
    }
}

/// Everything but the data scope and the excluded items.
fn app_scope(tree: &Tree) -> Tree {
    let skip: Vec<&str> = DATA_SCOPE.iter().chain(EXCLUDED).copied().collect();
    except(tree, &skip)
}

#[test]
fn rollback_default_scope_restores_the_app_and_keeps_the_data() {
    let s = Scenario::new();
    let out = s.env.run(&["rollback", &s.id(), "--force", "--no-start"]);
    out.assert_ok().assert_stderr_has("stopped");
    let after = s.env.snapshot_compose();
    assert_same_tree(
        "app scope == archive",
        &app_scope(&s.original),
        &app_scope(&after),
    );
    assert_same_tree(
        "data scope untouched",
        &only(&s.mutated, DATA_SCOPE),
        &only(&after, DATA_SCOPE),
    );
    assert_same_tree(
        "excluded logs untouched",
        &only(&s.mutated, EXCLUDED),
        &only(&after, EXCLUDED),
    );
    s.assert_outside_untouched();
}

#[test]
fn rollback_with_data_restores_everything() {
    let s = Scenario::new();
    let out = s.env.rollback_data(s.id());
    out.assert_ok().assert_stderr_has("stopped");
    let after = s.env.snapshot_compose();
    assert_same_tree(
        "compose dir == archive",
        &except(&s.original, EXCLUDED),
        &except(&after, EXCLUDED),
    );
    assert_same_tree(
        "excluded logs untouched",
        &only(&s.mutated, EXCLUDED),
        &only(&after, EXCLUDED),
    );
    s.assert_outside_untouched();
}

#[test]
fn rollback_data_only_restores_only_the_data() {
    let s = Scenario::new();
    let out = s
        .env
        .run(&["rollback-data-only", &s.id(), "--force", "--no-start"]);
    out.assert_ok().assert_stderr_has("stopped");
    let after = s.env.snapshot_compose();
    assert_same_tree(
        "data scope == archive",
        &only(&s.original, DATA_SCOPE),
        &only(&after, DATA_SCOPE),
    );
    assert_same_tree(
        "app scope untouched",
        &app_scope(&s.mutated),
        &app_scope(&after),
    );
    assert_same_tree(
        "excluded logs untouched",
        &only(&s.mutated, EXCLUDED),
        &only(&after, EXCLUDED),
    );
    s.assert_outside_untouched();
}

/// An archive of several gzip members (a ~9 MiB incompressible file): a reader that stops
/// after the first member would silently restore a truncated tree.
#[test]
fn rollback_of_a_multi_member_archive_restores_everything() {
    let env = TestEnv::with(Fixture { large_file: true });
    let original = env.snapshot_compose();
    let row = env.backup();
    let big = env.path("data/mysql/big.ibd");
    let mut bytes = fs::read(&big).unwrap();
    let n = bytes.len();
    bytes[n - 100..].copy_from_slice(&[0xAB; 100]);
    fs::write(&big, bytes).unwrap();
    env.mutate();
    env.rollback_data(row.id).assert_ok();
    assert_same_tree(
        "compose dir == archive",
        &except(&original, EXCLUDED),
        &except(&env.snapshot_compose(), EXCLUDED),
    );
}

#[test]
fn rollback_json_prints_one_result_document() {
    let s = Scenario::new();
    let out = s
        .env
        .run(&["rollback", &s.id(), "--force", "--no-start", "--json"]);
    out.assert_ok();
    let doc = out.json();
    assert_eq!(doc["success"], serde_json::json!(true), "{out}");
    assert!(doc["error"].is_null(), "{out}");
    assert_same_tree(
        "app scope == archive",
        &app_scope(&s.original),
        &app_scope(&s.env.snapshot_compose()),
    );
}

#[test]
fn rollback_twice_gives_the_same_result() {
    let s = Scenario::new();
    s.env
        .run(&[
            "rollback",
            &s.id(),
            "--force",
            "--no-start",
            "--rollback-data",
        ])
        .assert_ok();
    let once = s.env.snapshot_compose();
    s.env
        .run(&[
            "rollback",
            &s.id(),
            "--force",
            "--no-start",
            "--rollback-data",
        ])
        .assert_ok();
    assert_same_tree("second rollback", &once, &s.env.snapshot_compose());
    s.assert_outside_untouched();
}

/// New top-level items of the app scope are stale after a rollback; new top-level items of
/// the data scope are not the default rollback's business.
#[test]
fn rollback_removes_new_top_level_items_of_its_scope_only() {
    let env = TestEnv::new();
    let original = env.snapshot_compose();
    let row = env.backup();
    write(&env.path("extra.yml"), b"added by an upgrade\n", 0o644);
    write(
        &env.path("plugins/p1/plugin.toml"),
        b"name = \"p1\"\n",
        0o644,
    );
    write(
        &env.path("project_workspace/u1/main.py"),
        b"print(1)\n",
        0o644,
    );
    let workspace = only(&env.snapshot_compose(), &["project_workspace"]);
    env.run(&["rollback", &row.id.to_string(), "--force", "--no-start"])
        .assert_ok();
    let after = env.snapshot_compose();
    assert_same_tree(
        "app scope == archive (new top-level items gone)",
        &app_scope(&original),
        &except(&app_scope(&after), &["project_workspace"]),
    );
    assert_same_tree(
        "new data-scope item untouched",
        &workspace,
        &only(&after, &["project_workspace"]),
    );
}

#[test]
fn rollback_brings_back_deleted_top_level_items() {
    let env = TestEnv::new();
    let original = env.snapshot_compose();
    let row = env.backup();
    fs::remove_dir_all(env.path("app")).unwrap();
    fs::remove_dir_all(env.path("config")).unwrap();
    fs::remove_file(env.path(".env")).unwrap();
    fs::remove_dir_all(env.path("data")).unwrap();
    env.rollback_data(row.id).assert_ok();
    assert_same_tree(
        "compose dir == archive",
        &except(&original, EXCLUDED),
        &except(&env.snapshot_compose(), EXCLUDED),
    );
}

#[test]
fn rollback_restores_owners_modes_and_mtimes_of_unchanged_content() {
    let env = TestEnv::new();
    let original = env.snapshot_compose();
    let row = env.backup();
    // Metadata only: same bytes everywhere.
    let secret = env.path("app/secret.key");
    fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    filetime::set_file_mtime(
        &secret,
        filetime::FileTime::from_unix_time(1_234_567_890, 5),
    )
    .unwrap();
    filetime::set_symlink_file_times(
        env.path("app/lib/libnuwax.so"),
        filetime::FileTime::from_unix_time(1_000_000_000, 0),
        filetime::FileTime::from_unix_time(1_000_000_000, 0),
    )
    .unwrap();
    fs::set_permissions(
        env.path("app/tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    if is_root() {
        std::os::unix::fs::lchown(env.path("data/redis/dump.rdb"), Some(0), Some(0)).unwrap();
        std::os::unix::fs::lchown(env.path("app/current"), Some(0), Some(0)).unwrap();
    }
    env.rollback_data(row.id).assert_ok();
    assert_same_tree(
        "compose dir == archive",
        &except(&original, EXCLUDED),
        &except(&env.snapshot_compose(), EXCLUDED),
    );
}

#[test]
fn rollback_without_id_and_without_terminal_exits_2() {
    let s = Scenario::new();
    for cmd in [
        vec!["rollback", "--force", "--no-start"],
        vec!["rollback-data-only", "--force", "--no-start"],
    ] {
        let out = s.env.run(&cmd);
        out.assert_code(exit::USAGE);
        assert!(
            out.stderr.contains("ID"),
            "stderr names the ID argument\n{out}"
        );
        assert!(
            out.stderr.contains("--list-json") || out.stderr.contains("list-backups"),
            "stderr says how to find an ID\n{out}"
        );
        out.assert_stdout_empty();
    }
    s.assert_nothing_changed();
}

#[test]
fn rollback_without_force_and_without_terminal_exits_2() {
    let s = Scenario::new();
    for cmd in [
        vec!["rollback".to_string(), s.id()],
        vec!["rollback-data-only".to_string(), s.id()],
        vec![
            "rollback".to_string(),
            s.id(),
            "--rollback-data".to_string(),
        ],
    ] {
        s.env
            .run(&cmd)
            .assert_code(exit::USAGE)
            .assert_stderr_has("--force");
    }
    s.assert_nothing_changed();
}

#[test]
fn rollback_unknown_id_exits_2() {
    let s = Scenario::new();
    s.env
        .run(&["rollback", "999999", "--force", "--no-start"])
        .assert_code(exit::USAGE)
        .assert_stderr_has("not found");
    s.env
        .run(&["rollback-data-only", "999999", "--force", "--no-start"])
        .assert_code(exit::USAGE)
        .assert_stderr_has("not found");
    s.env
        .run(&["rollback", "not-a-number", "--force", "--no-start"])
        .assert_code(exit::USAGE);
    s.assert_nothing_changed();
}

#[test]
fn rollback_of_a_missing_archive_is_refused() {
    let s = Scenario::new();
    fs::remove_file(&s.row.file_path).unwrap();
    let out = s.env.rollback_data(s.id());
    assert_ne!(out.code, Some(0), "{out}");
    out.assert_stderr_has(&crate::util::file_name(&s.row.file_path));
    s.assert_nothing_changed();
}

#[test]
fn rollback_of_a_failed_backup_is_refused() {
    let env = TestEnv::new();
    let good = env.backup();
    let victim = "app/VERSION";
    if !is_root() {
        fs::set_permissions(
            env.path(victim),
            std::os::unix::fs::PermissionsExt::from_mode(0o000),
        )
        .unwrap();
    }
    env.run_env(&["backup"], &[("NUWAX_TEST_FAIL_READ", OsStr::new(victim))])
        .assert_code(exit::FAILED);
    if !is_root() {
        fs::set_permissions(
            env.path(victim),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
    }
    let failed = env
        .list()
        .into_iter()
        .find(|r| r.status == "Failed")
        .expect("failed row");
    assert_ne!(failed.id, good.id);
    env.mutate();
    let before = env.snapshot_compose();
    let out = env.run(&["rollback", &failed.id.to_string(), "--force", "--no-start"]);
    assert_ne!(
        out.code,
        Some(0),
        "a failed backup cannot be restored\n{out}"
    );
    assert_same_tree("compose dir", &before, &env.snapshot_compose());
}

#[test]
fn held_lock_refuses_rollback_with_exit_3() {
    let s = Scenario::new();
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(s.env.work.join("data/nuwax.lock"))
        .unwrap();
    lock.try_lock().expect("take the lock in the test process");
    s.env
        .run(&[
            "rollback",
            &s.id(),
            "--force",
            "--no-start",
            "--rollback-data",
        ])
        .assert_code(exit::REFUSED)
        .assert_stderr_has("lock");
    s.assert_nothing_changed();
    drop(lock);
}

/// Nothing of the rollback's machinery (staging, undo dirs) is left in the compose dir or
/// next to it.
#[test]
fn rollback_leaves_no_staging_or_undo_dirs() {
    let s = Scenario::new();
    s.env
        .run(&[
            "rollback",
            &s.id(),
            "--force",
            "--no-start",
            "--rollback-data",
        ])
        .assert_ok();
    let leftovers: Vec<_> = fs::read_dir(s.env.compose_dir())
        .unwrap()
        .chain(fs::read_dir(&s.env.work).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".nuwax"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(Path::new(&s.row.file_path).exists(), "the archive stays");
}

/// Version bookkeeping: restoring the app puts the backup's `service_version` back into
/// `config.toml` (comments and layout kept); restoring only the data leaves it.
#[test]
fn an_app_rollback_writes_the_backups_version_and_a_data_only_one_leaves_it() {
    let env = TestEnv::new();
    let row = env.backup();
    assert_eq!(row.service_version, crate::util::VERSION);
    let config = env.work.join("config.toml");
    let text = format!(
        "# ops notes: keep me\n[versions]\ndocker_service = \"2.0.0\"  # running release\n\n[docker]\nproject = \"{}\"\n",
        env.project
    );
    fs::write(&config, &text).unwrap();
    let id = row.id.to_string();
    let out = env.run(&["rollback-data-only", &id, "--force", "--no-start"]);
    out.assert_ok();
    assert_eq!(fs::read_to_string(&config).unwrap(), text, "{out}");
    assert!(!out.stderr.contains("docker_service"), "{out}");

    let out = env.run(&["rollback", &id, "--force", "--no-start"]);
    out.assert_ok().assert_stderr_has(&format!(
        "docker_service set to \"{}\" (was \"2.0.0\")",
        crate::util::VERSION
    ));
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        text.replace("\"2.0.0\"", &format!("\"{}\"", crate::util::VERSION)),
        "only the value changes\n{out}"
    );
    env.rollback_data(&id)
        .assert_ok()
        .assert_stderr_has("is already");
}
