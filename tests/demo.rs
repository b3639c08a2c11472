//! The demo stack in `examples/demo` stays usable: a copy of it backs up, lists and rolls back.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::util::{EXCLUDED, assert_same_tree, except, file_name, parse_archive_name, run_bin};

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let meta = fs::symlink_metadata(&src).unwrap();
        if meta.is_dir() {
            copy_tree(&src, &dst);
        } else if meta.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src).unwrap(), &dst).unwrap();
        } else {
            fs::copy(&src, &dst).unwrap();
            fs::set_permissions(&dst, fs::Permissions::from_mode(meta.permissions().mode()))
                .unwrap();
        }
    }
}

#[test]
fn demo_stack_backs_up_lists_and_rolls_back() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo");
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().canonicalize().unwrap().join("demo");
    let cwd = tmp.path().join("cwd");
    fs::create_dir_all(&cwd).unwrap();
    // The demo's own config and compose dir; not a developer's local backups or catalog.
    fs::create_dir_all(&work).unwrap();
    fs::copy(demo.join("config.toml"), work.join("config.toml")).unwrap();
    copy_tree(&demo.join("docker"), &work.join("docker"));
    // A unique project name, so a demo stack someone runs for real does not block this.
    let config = fs::read_to_string(work.join("config.toml")).unwrap();
    assert!(config.contains("project = \"nuwax-demo\""), "{config}");
    let project = crate::util::unique_project();
    fs::write(
        work.join("config.toml"),
        config.replace(
            "project = \"nuwax-demo\"",
            &format!("project = \"{project}\""),
        ),
    )
    .unwrap();

    // Whole-second mtimes: the archive format keeps seconds (like GNU tar), and a fresh copy
    // has nanoseconds.
    crate::util::pin_mtimes(&work.join("docker"), 1_700_000_000);
    let original = crate::util::snapshot(&work.join("docker"));
    let w = work.to_str().unwrap();
    let out = run_bin(&cwd, ["-C", w, "backup", "--json"], &[]);
    out.assert_ok();
    let doc: crate::util::BackupDoc = out.json_as();
    let row = doc.backup.expect("backup");
    assert_eq!(row.service_version, "0.0.13");
    parse_archive_name(&file_name(&row.file_path), "manual", "0.0.13");
    assert!(Path::new(&row.file_path).starts_with(work.join("backups")));

    let list = run_bin(&cwd, ["-C", w, "list-backups"], &[]);
    list.assert_ok();
    assert!(list.stdout.contains(&row.id.to_string()), "{list}");

    fs::write(work.join("docker/app/VERSION"), "0.0.14\n").unwrap();
    fs::remove_file(work.join("docker/data/redis/dump.rdb")).unwrap();
    let id = row.id.to_string();
    run_bin(
        &cwd,
        [
            "-C",
            w,
            "rollback",
            &id,
            "--force",
            "--no-start",
            "--rollback-data",
        ],
        &[],
    )
    .assert_ok();
    assert_same_tree(
        "demo compose dir after rollback",
        &except(&original, EXCLUDED),
        &except(&crate::util::snapshot(&work.join("docker")), EXCLUDED),
    );
}
