//! Every path to data loss the hardening issue found, as a user would hit it: untrusted paths
//! from archives, the catalog and the config; excludes at any depth; the tool's own state
//! inside the compose dir; mount points inside a swapped item; a recovery that cannot finish.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::archutil::{backup_tables, index_of, read_raw, replace_archive, set_data};
use crate::util::{TestEnv, exit, is_root, snapshot, write};

fn ino(p: &Path) -> u64 {
    fs::symlink_metadata(p).unwrap().ino()
}

fn append_config(env: &TestEnv, text: &str) {
    let path = env.work.join("config.toml");
    let mut config = fs::read_to_string(&path).unwrap();
    config.push_str(text);
    fs::write(path, config).unwrap();
}

/// Sets column `col` of backup `id` in the catalog.
fn catalog_set(db: &Path, id: i64, col: &str, value: &str) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut n = 0;
    for (t, cols) in backup_tables(&conn) {
        if cols.iter().any(|c| c == col) {
            n += conn
                .execute(
                    &format!("UPDATE \"{t}\" SET \"{col}\" = ?1 WHERE id = ?2"),
                    rusqlite::params![value, id],
                )
                .unwrap();
        }
    }
    assert!(n > 0, "test setup: no catalog row {id} with column {col}");
}

// ---------------------------------------------------------------------------------------------
// 1. Paths from outside are untrusted

/// Rewrites `info.json` (and the manifest's copy of it) of backup `row` with `edit`.
fn tamper_info(env: &TestEnv, row: &crate::util::BackupRow, edit: &dyn Fn(&mut serde_json::Value)) {
    let mut entries = read_raw(Path::new(&row.file_path));
    let i = index_of(&entries, ".nuwax-backup/info.json");
    let mut info: serde_json::Value = serde_json::from_slice(&entries[i].data).unwrap();
    edit(&mut info);
    set_data(
        &mut entries,
        ".nuwax-backup/info.json",
        serde_json::to_vec(&info).unwrap(),
    );
    let m = index_of(&entries, ".nuwax-backup/manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_slice(&entries[m].data).unwrap();
    edit(&mut manifest["info"]);
    set_data(
        &mut entries,
        ".nuwax-backup/manifest.json",
        serde_json::to_vec(&manifest).unwrap(),
    );
    replace_archive(env, row, &entries);
}

#[test]
fn archive_metadata_naming_paths_outside_is_an_integrity_error_everywhere() {
    type Edit = fn(&mut serde_json::Value);
    let cases: &[(&str, Edit)] = &[
        ("excluded climbs out", |i| {
            i["excluded"] = serde_json::json!(["../../victim"])
        }),
        ("excluded absolute", |i| {
            i["excluded"] = serde_json::json!(["/etc"])
        }),
        ("excluded nested climb", |i| {
            i["excluded"] = serde_json::json!(["app/../../victim"])
        }),
        ("data_paths climbs out", |i| {
            i["data_paths"] = serde_json::json!(["../victim"])
        }),
        ("data_paths nested", |i| {
            i["data_paths"] = serde_json::json!(["data/mysql"])
        }),
        ("top_level_bytes key climbs out", |i| {
            i["top_level_bytes"] = serde_json::json!({"../victim": 1})
        }),
        ("excluded empty", |i| {
            i["excluded"] = serde_json::json!([""])
        }),
    ];
    for (what, edit) in cases {
        let env = TestEnv::new();
        let victim = env.root.join("victim");
        write(&victim.join("precious"), b"outside the compose dir", 0o644);
        let row = env.backup();
        tamper_info(&env, &row, edit);
        let before = snapshot(&env.compose_dir());

        let out = env.run(&["verify", &row.id.to_string()]);
        out.assert_code(exit::INTEGRITY);
        let out = env.run(&[
            "rollback",
            &row.id.to_string(),
            "--force",
            "--rollback-data",
        ]);
        out.assert_code(exit::INTEGRITY);
        assert!(
            out.stderr.contains("info.json") || out.stderr.contains("clean relative"),
            "{what}: the error must say what is wrong\n{out}"
        );
        crate::util::assert_same_tree(what, &before, &snapshot(&env.compose_dir()));
        assert!(victim.join("precious").exists(), "{what}: victim touched");

        // import of the same file from elsewhere.
        let copy = env.root.join("hostile.tar.gz");
        fs::copy(&row.file_path, &copy).unwrap();
        let out = env.run(&[OsStr::new("import"), copy.as_os_str()]);
        out.assert_code(exit::INTEGRITY);
        assert!(victim.join("precious").exists(), "{what}: victim touched");
    }
}

#[test]
fn delete_backup_only_deletes_archives_of_the_storage_dir() {
    let env = TestEnv::new();
    let row = env.backup();
    for target in [
        env.root.join("outside-witness.txt"),
        env.work.join("config.toml"),
        env.backups_dir().join("../config.toml"),
        env.compose_dir().join("docker-compose.yml"),
    ] {
        let before = fs::read(&target).unwrap();
        catalog_set(
            &env.db_file(),
            row.id,
            "file_path",
            &target.to_string_lossy(),
        );
        let out = env.run(&["delete-backup", &row.id.to_string(), "--force"]);
        out.assert_code(exit::INTEGRITY);
        assert!(out.stderr.contains("nothing was deleted"), "{out}");
        assert_eq!(fs::read(&target).unwrap(), before, "{}", target.display());
    }
    // The row, put right, deletes normally.
    catalog_set(&env.db_file(), row.id, "file_path", &row.file_path);
    env.run(&["delete-backup", &row.id.to_string(), "--force"])
        .assert_ok();
    assert!(!Path::new(&row.file_path).exists());
}

#[test]
fn config_paths_that_climb_out_are_refused_with_exit_2() {
    for text in [
        "[backup]\nexclude = [\"../victim\"]\n",
        "[backup]\nexclude = [\"/etc\"]\n",
        "[backup]\ndata_paths = [\"../victim\"]\n",
        "[backup]\nstorage_dir = \"../elsewhere\"\n",
    ] {
        let env = TestEnv::new();
        append_config(&env, text);
        let out = env.run(&["backup"]);
        out.assert_code(exit::USAGE);
        assert!(out.stderr.contains("config"), "{text}\n{out}");
        assert!(env.backup_files().is_empty(), "{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. An excluded path is never touched by a rollback

#[test]
fn nested_excludes_in_any_spelling_are_never_touched_by_a_rollback() {
    let env = TestEnv::new();
    append_config(
        &env,
        "\n[backup]\nexclude = [\"logs/\", \"./app/cache\", \"app/static/gen/\"]\n",
    );
    write(&env.path("app/cache/c1"), b"cache at backup time", 0o644);
    let row = env.backup();
    // Live, after the backup: new cache content the rollback must not touch.
    write(&env.path("app/cache/c2"), b"live cache", 0o644);
    write(&env.path("app/static/gen/bundle.js"), b"generated", 0o644);
    write(&env.path("logs/today.log"), b"live log", 0o644);
    write(&env.path("app/VERSION"), b"9.9.9\n", 0o644);
    let cache_ino = ino(&env.path("app/cache"));
    let gen_ino = ino(&env.path("app/static/gen"));
    let out = env.run(&["rollback", &row.id.to_string(), "--force", "--no-start"]);
    out.assert_ok();
    assert_eq!(fs::read(env.path("app/VERSION")).unwrap(), b"1.2.3\n");
    assert_eq!(
        ino(&env.path("app/cache")),
        cache_ino,
        "app/cache moved\n{out}"
    );
    assert_eq!(ino(&env.path("app/static/gen")), gen_ino);
    assert_eq!(fs::read(env.path("app/cache/c2")).unwrap(), b"live cache");
    assert_eq!(
        fs::read(env.path("app/cache/c1")).unwrap(),
        b"cache at backup time"
    );
    assert_eq!(fs::read(env.path("logs/today.log")).unwrap(), b"live log");
    assert_eq!(
        fs::read(env.path("app/static/gen/bundle.js")).unwrap(),
        b"generated"
    );
}

#[test]
fn a_crash_at_any_swap_point_never_loses_a_nested_exclude() {
    let points = [
        "rollback.after_extract",
        "rollback.before_swap",
        "rollback.swap.0.parked",
        "rollback.mid_swap",
        "rollback.after_swap",
        "rollback.after_commit",
    ];
    for point in points {
        let env = TestEnv::new();
        append_config(&env, "\n[backup]\nexclude = [\"app/cache\"]\n");
        let row = env.backup();
        write(&env.path("app/cache/precious"), b"never archived", 0o644);
        let out = env.run_env(
            &["rollback", &row.id.to_string(), "--force", "--no-start"],
            &[("NUWAX_TEST_CRASH_AT", OsStr::new(point))],
        );
        assert_eq!(out.code, None, "not killed at {point}\n{out}");
        // Whatever state it died in, the next command recovers, and the exclude is there.
        env.run(&["list-backups"]).assert_ok();
        assert_eq!(
            fs::read(env.path("app/cache/precious")).unwrap(),
            b"never archived",
            "lost after a crash at {point}"
        );
        crate::util::assert_no_staging_left(&env);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. The tool's own state is never inside what it archives or swaps

#[test]
fn own_state_inside_the_compose_dir_is_refused_at_load() {
    for (text, needle) in [
        (
            "[backup]\nstorage_dir = \"docker/backups\"\n",
            "storage_dir",
        ),
        (
            "[docker]\ncompose_file = \"docker-compose.yml\"\n",
            "compose_file",
        ),
    ] {
        let env = TestEnv::new();
        if text.contains("compose_file") {
            fs::copy(
                env.path("docker-compose.yml"),
                env.work.join("docker-compose.yml"),
            )
            .unwrap();
            let config = fs::read_to_string(env.work.join("config.toml"))
                .unwrap()
                .replace(
                    "[docker]\n",
                    &format!("[docker]\n{}", &text["[docker]\n".len()..]),
                );
            fs::write(env.work.join("config.toml"), config).unwrap();
        } else {
            append_config(&env, text);
        }
        for cmd in [
            &["backup"][..],
            &["list-backups"][..],
            &["rollback", "1", "--force"][..],
        ] {
            let out = env.run(cmd);
            out.assert_code(exit::USAGE);
            assert!(
                out.stderr.contains(needle),
                "{cmd:?}: must say what to change\n{out}"
            );
        }
        assert!(
            !env.db_file().exists(),
            "nothing written before the refusal"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Mount points anywhere inside a swapped item

#[test]
fn a_nested_mount_point_is_refused_before_anything_is_touched() {
    if !is_root() {
        return; // mounting needs root (CI runs as root)
    }
    let env = TestEnv::new();
    let row = env.backup();
    let mnt = env.path("data/mysql");
    fs::create_dir_all(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap()
        .success();
    assert!(ok, "test setup: mount tmpfs");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(&mnt);
    write(
        &mnt.join("on-the-mount"),
        b"lives on another filesystem",
        0o644,
    );
    let before = snapshot(&env.compose_dir());
    let out = env.run(&["rollback-data-only", &row.id.to_string(), "--force"]);
    out.assert_code(exit::REFUSED);
    assert!(
        out.stderr.contains("data/mysql"),
        "must name the mount\n{out}"
    );
    crate::util::assert_same_tree("refused", &before, &snapshot(&env.compose_dir()));
    assert_eq!(
        fs::read(mnt.join("on-the-mount")).unwrap(),
        b"lives on another filesystem"
    );
    crate::util::assert_no_staging_left(&env);
}

// ---------------------------------------------------------------------------------------------
// 5. A recovery that cannot finish blocks

#[test]
fn a_recovery_that_cannot_finish_blocks_every_mutating_command_until_recover() {
    for keep_live in [false, true] {
        let env = TestEnv::new();
        let row = env.backup();
        write(
            &env.path("data/mysql/ibdata1"),
            b"the real data, newer than the backup",
            0o644,
        );
        // Die with data/ parked in the undo dir...
        let out = env.run_env(
            &[
                "rollback",
                &row.id.to_string(),
                "--force",
                "--rollback-data",
                "--no-start",
            ],
            &[(
                "NUWAX_TEST_CRASH_AT",
                OsStr::new("rollback.swap.parked.data"),
            )],
        );
        assert_eq!(out.code, None, "not killed\n{out}");
        assert!(!env.path("data").exists(), "test setup: data/ parked");
        // ...then a container recreates its bind-mount source, empty.
        fs::create_dir_all(env.path("data/mysql")).unwrap();

        for cmd in [
            &["auto-backup", "run", "-q"][..],
            &["backup", "-q"][..],
            &["rollback", "1", "--force"][..],
            &["delete-backup", "1", "--force"][..],
        ] {
            let out = env.run(cmd);
            out.assert_code(exit::REFUSED);
            assert!(
                out.stderr.contains("recover --keep-live") && out.stderr.contains("saved copy"),
                "{cmd:?}: must name the saved copy and the choices\n{out}"
            );
        }
        let completed = env
            .list()
            .iter()
            .filter(|r| r.status == "Completed")
            .count();
        assert_eq!(completed, 1, "no backup of the empty data/ was recorded");
        // Read-only commands warn and work.
        let out = env.run(&["list-backups"]);
        out.assert_ok();
        assert!(out.stderr.contains("recover"), "{out}");
        // `recover` shows the state on stdout.
        let out = env.run(&["recover"]);
        out.assert_ok();
        assert!(out.stdout.contains("data"), "{out}");
        let flag = if keep_live {
            "--keep-live"
        } else {
            "--restore-saved"
        };
        let out = env.run(&["recover", flag]);
        out.assert_ok();
        assert!(out.stderr.contains(".nuwax-kept-"), "{out}");
        let real = b"the real data, newer than the backup".to_vec();
        let live = fs::read(env.path("data/mysql/ibdata1")).ok();
        let kept: Vec<_> = fs::read_dir(env.compose_dir())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".nuwax-kept-"))
            .collect();
        assert_eq!(kept.len(), 1);
        if keep_live {
            assert_eq!(live, None, "the live (empty) data/ stays");
        } else {
            assert_eq!(live, Some(real.clone()), "the saved copy is back");
        }
        // Afterwards everything works again.
        env.run(&["backup"]).assert_ok();
    }
}

// ---------------------------------------------------------------------------------------------
// 11. Leftover work dirs of a lost catalog

#[test]
fn a_rebuilt_catalog_never_reuses_or_removes_leftover_work_dirs() {
    let env = TestEnv::new();
    env.backup();
    // What a lost catalog's operation 1 and 2 may have left: a parked copy of real data.
    for n in 1..=3 {
        write(
            &env.path(&format!(".nuwax-rollback-{n}/undo/data/db")),
            b"parked by an operation of the lost catalog",
            0o644,
        );
    }
    fs::remove_file(env.db_file()).unwrap();
    env.run(&["reindex"]).assert_ok();
    let id = env.list()[0].id;
    env.rollback_data(id).assert_ok();
    for n in 1..=3 {
        assert_eq!(
            fs::read(env.path(&format!(".nuwax-rollback-{n}/undo/data/db"))).unwrap(),
            b"parked by an operation of the lost catalog"
        );
    }
}
