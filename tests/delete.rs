//! `delete-backup`: removes the archive and its catalog row; confirmation rules as rollback's.

use std::path::Path;

use crate::util::{TestEnv, assert_same_tree, exit, file_name};

#[test]
fn delete_backup_removes_file_and_row() {
    let env = TestEnv::new();
    let keep = env.backup();
    let gone = env.backup();
    let compose = env.snapshot_compose();
    env.run(&["delete-backup", &gone.id.to_string(), "--force"])
        .assert_ok();
    assert!(!Path::new(&gone.file_path).exists(), "archive removed");
    assert!(
        Path::new(&keep.file_path).exists(),
        "the other archive stays"
    );
    let ids: Vec<i64> = env.list().iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![keep.id]);
    assert_eq!(env.backup_files(), vec![file_name(&keep.file_path)]);
    assert_same_tree("compose dir", &compose, &env.snapshot_compose());
}

#[test]
fn delete_backup_unknown_id_exits_2() {
    let env = TestEnv::new();
    let row = env.backup();
    let out = env.run(&["delete-backup", "424242", "--force"]);
    out.assert_code(exit::USAGE).assert_stderr_has("not found");
    assert!(Path::new(&row.file_path).exists());
    assert_eq!(env.list().len(), 1);
}

#[test]
fn delete_backup_without_force_and_without_terminal_exits_2() {
    let env = TestEnv::new();
    let row = env.backup();
    let out = env.run(&["delete-backup", &row.id.to_string()]);
    out.assert_code(exit::USAGE).assert_stderr_has("--force");
    assert!(Path::new(&row.file_path).exists(), "nothing deleted");
    assert_eq!(env.list().len(), 1);
}

#[test]
fn delete_backup_whose_file_is_already_gone_drops_the_row() {
    let env = TestEnv::new();
    let row = env.backup();
    std::fs::remove_file(&row.file_path).unwrap();
    env.run(&["delete-backup", &row.id.to_string(), "--force"])
        .assert_ok();
    assert!(env.list().is_empty());
}
