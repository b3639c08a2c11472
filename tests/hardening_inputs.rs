//! Issue 10, item 11: the smaller holes, each tested as a class through the built binary.
//!
//! - non-UTF-8 arguments: a path may be any bytes (`-C`, `import FILE`), text must be text
//!   (exit 2), never a panic;
//! - `*.partial` files are never backups (`import` refuses, `reindex` skips);
//! - sparse files: restored sparse, and the rollback's space preflight counts what a restore
//!   really writes (a tmpfs smaller than the file's length);
//! - `verify` exits with the same code with and without `--json`;
//! - an unusable catalog (random bytes, a newer schema, missing columns) is a clear exit 1
//!   that says how to rebuild it, and `reindex --move-broken-catalog` does;
//! - no ANSI colour when the output is not a terminal, even with `-vv` and errors;
//! - control characters in names are escaped in tables and messages, JSON stays exact;
//! - size fields of an archive near `u64::MAX` are an integrity error (exit 4), not a panic.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::archutil::{
    RawEntry, flip_middle_byte, manifest_of, pack_raw, raw_header, read_raw, register_bytes,
    set_data,
};
use crate::util::{BackupRow, Output, TestEnv, exit, is_root, run_bin, sha256_file, snapshot};

fn assert_no_panic(out: &Output) {
    assert!(
        !out.stderr.contains("panicked") && !out.stderr.contains("internal error"),
        "a panic or internal error instead of a clear message\n{out}"
    );
}

fn assert_no_ansi(out: &Output) {
    assert!(
        !out.stdout.contains('\u{1b}') && !out.stderr.contains('\u{1b}'),
        "an escape character on a non-terminal\n{out:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Non-UTF-8 arguments

/// `b"dir-\xff\xfe"`: not UTF-8, a legal file name.
fn non_utf8(prefix: &str) -> OsString {
    let mut v = prefix.as_bytes().to_vec();
    v.extend_from_slice(&[0xff, 0xfe, b'x']);
    OsString::from_vec(v)
}

#[test]
fn non_utf8_arguments_are_paths_where_paths_are_legal_and_a_usage_error_elsewhere() {
    let env = TestEnv::new();
    let row = env.backup();

    // A work dir whose name is not UTF-8 works like any other (and records its command line).
    let odd_work = env.root.join(non_utf8("work-"));
    let st = Command::new("cp")
        .arg("-a")
        .arg(&env.work)
        .arg(&odd_work)
        .status()
        .unwrap();
    assert!(st.success());
    let mut args: Vec<OsString> = vec!["-C".into(), odd_work.clone().into()];
    args.push("list-backups".into());
    args.push("--json".into());
    let out = run_bin(&env.cwd, &args, &[]);
    assert_no_panic(&out);
    out.assert_code(exit::OK);
    // A mutating command records the command line in the lock file and the catalog.
    let args: Vec<OsString> = vec!["-C".into(), odd_work.clone().into(), "reindex".into()];
    let out = run_bin(&env.cwd, &args, &[]);
    assert_no_panic(&out);
    out.assert_code(exit::OK);

    // `import` of a non-UTF-8 path: a real archive under such a name is imported.
    let odd_archive = env.root.join({
        let mut n = non_utf8("copy-").into_vec();
        n.extend_from_slice(b".tar.gz");
        OsString::from_vec(n)
    });
    fs::copy(&row.file_path, &odd_archive).unwrap();
    let out = env.run(&[OsStr::new("import"), odd_archive.as_os_str()]);
    assert_no_panic(&out);
    out.assert_code(exit::OK);
    assert_eq!(env.list().len(), 2, "{out}");
    // ...and a missing one is a usage error naming it.
    let missing = env.root.join(non_utf8("missing-"));
    let out = env.run(&[OsStr::new("import"), missing.as_os_str()]);
    assert_no_panic(&out);
    out.assert_code(exit::USAGE);

    // Where text is required, a non-UTF-8 value is a usage error that says so.
    for args in [
        vec![
            OsString::from("upgrade"),
            "--package".into(),
            "pkg.tar.gz".into(),
            "--version".into(),
            non_utf8("v"),
        ],
        vec![OsString::from("verify"), non_utf8("1")],
        vec![OsString::from("delete-backup"), non_utf8("1")],
        vec![non_utf8("list")],
        vec![OsString::from("list-backups"), non_utf8("--json")],
    ] {
        let out = env.run(&args);
        assert_no_panic(&out);
        out.assert_code(exit::USAGE);
        assert!(
            out.stderr.to_lowercase().contains("utf-8")
                || out.stderr.to_lowercase().contains("unexpected")
                || out.stderr.to_lowercase().contains("unrecognized")
                || out.stderr.to_lowercase().contains("invalid"),
            "the usage error should say what is wrong\n{out}"
        );
    }
    assert_eq!(env.list().len(), 2);
}

// ---------------------------------------------------------------------------------------------
// 2. `*.partial` files

#[test]
fn partial_files_are_never_imported_or_reindexed() {
    let env = TestEnv::new();
    let row = env.backup();
    let rows = env.list();

    // Outside the storage dir, and inside it, with complete content: refused, exit 2. (Inside,
    // a `*.tar.gz.partial` is an orphan that start-up recovery removes; this one is named so
    // that it stays, to show that the refusal does not depend on that.)
    let outside = env.root.join("backup_manual_v9_x.tar.gz.partial");
    fs::copy(&row.file_path, &outside).unwrap();
    let inside = env.backups_dir().join("backup_manual_v9_y.partial");
    fs::copy(&row.file_path, &inside).unwrap();
    let before = env.backup_files();
    for p in [&outside, &inside] {
        for json in [false, true] {
            let mut args = vec![OsString::from("import"), p.clone().into()];
            if json {
                args.push("--json".into());
            }
            let out = env.run(&args);
            out.assert_code(exit::USAGE)
                .assert_stderr_has(".partial")
                .assert_stderr_has("never finished");
            assert_eq!(env.list(), rows, "a refused import changed the catalog");
            assert_eq!(
                env.backup_files(),
                before,
                "a refused import changed the storage dir"
            );
        }
    }

    // `reindex` of a lost catalog adopts the real archive and skips the partial one silently
    // (it is not "invalid" either: a backup may be writing it right now).
    fs::remove_file(env.db_file()).unwrap();
    let out = env.run(&["reindex", "--json"]);
    out.assert_ok();
    let doc = out.json();
    assert_eq!(doc["added"].as_array().map(Vec::len), Some(1), "{out}");
    assert_eq!(doc["invalid"], serde_json::json!([]), "{out}");
    let list = env.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].file_path, row.file_path);
    assert!(inside.exists(), "reindex must leave the partial file alone");
}

// ---------------------------------------------------------------------------------------------
// 3. Sparse files

/// A small tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
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

#[test]
fn a_sparse_file_is_restored_sparse_and_does_not_fail_the_space_preflight() {
    const APPARENT: u64 = 256 << 20;
    let mut env = TestEnv::new();
    // As root (CI), the compose dir lives on a tmpfs far smaller than the sparse file's
    // length: a preflight demanding the length, or a restore writing zeros, fails there.
    let _fs = is_root().then(|| {
        let fs = Tmpfs::mount(&env.root.join("small"), "48m");
        let work = fs.0.join("work");
        env.move_work(work);
        let cfg = env.work.join("config.toml");
        let mut text = fs::read_to_string(&cfg).unwrap();
        text.push_str(&format!(
            "\n[backup]\nstorage_dir = \"{}\"\n",
            env.root.join("archives").display()
        ));
        fs::write(cfg, text).unwrap();
        fs
    });
    let sparse = env.path("data/sparse.img");
    {
        use std::os::unix::fs::FileExt;
        let f = fs::File::create(&sparse).unwrap();
        f.set_len(APPARENT).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"middle", APPARENT / 3 + 4099).unwrap();
        f.write_all_at(b"tail", APPARENT - 4).unwrap();
    }
    let want = sha256_file(&sparse);
    let row = env.backup();
    fs::remove_file(&sparse).unwrap();
    fs::write(&sparse, b"changed").unwrap();

    let out = env.rollback_data(row.id);
    out.assert_ok();
    let m = fs::metadata(&sparse).unwrap();
    assert_eq!(m.len(), APPARENT, "{out}");
    assert!(
        m.blocks() * 512 <= 1 << 20,
        "the restored file takes {} bytes for {} of length: holes were written as zeros",
        m.blocks() * 512,
        m.len()
    );
    assert_eq!(sha256_file(&sparse), want, "restored content differs");
}

// ---------------------------------------------------------------------------------------------
// 4. verify's exit code

#[test]
fn verify_exits_the_same_with_and_without_json() {
    let env = TestEnv::new();
    let good = env.backup();
    let bad = env.backup();
    flip_middle_byte(Path::new(&bad.file_path));
    let (g, b) = (good.id.to_string(), bad.id.to_string());
    let cases: [(&[&str], i32); 5] = [
        (&["verify", &g], exit::OK),
        (&["verify", &b], exit::INTEGRITY),
        (&["verify", "--all"], exit::INTEGRITY),
        (&["verify", "999"], exit::USAGE),
        (&["verify"], exit::USAGE),
    ];
    for (args, code) in cases {
        let plain = env.run(args);
        plain.assert_code(code);
        let mut with_json = args.to_vec();
        with_json.push("--json");
        let json = env.run(&with_json);
        json.assert_code(code);
        if code != exit::OK {
            let doc = json.json();
            assert_eq!(doc["success"], false, "{json}");
        }
    }
    // An archive removed behind the tool's back: the same code either way too.
    fs::remove_file(&good.file_path).unwrap();
    let plain = env.run(&["verify", &g]);
    let json = env.run(&["verify", &g, "--json"]);
    assert_ne!(plain.code, Some(exit::OK), "{plain}");
    assert_eq!(plain.code, json.code, "{plain}\n{json}");
}

// ---------------------------------------------------------------------------------------------
// 5. An unusable catalog

fn break_catalog(env: &TestEnv, how: &str) {
    let db = env.db_file();
    match how {
        "random bytes" => {
            let junk: Vec<u8> = (0..16384u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
                .collect();
            fs::write(&db, junk).unwrap();
            for ext in ["-wal", "-shm"] {
                let mut p = db.clone().into_os_string();
                p.push(ext);
                let _ = fs::remove_file(p);
            }
        }
        "newer schema" => {
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.pragma_update(None, "user_version", 42).unwrap();
        }
        "missing columns" => {
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.execute_batch("ALTER TABLE backups DROP COLUMN verified_at;")
                .unwrap();
        }
        _ => unreachable!(),
    }
}

#[test]
fn an_unusable_catalog_is_a_clear_failure_and_reindex_can_rebuild_it() {
    for how in ["random bytes", "newer schema", "missing columns"] {
        let env = TestEnv::new();
        let rows = [env.backup(), env.backup()];
        break_catalog(&env, how);
        let broken = fs::read(env.db_file()).unwrap();
        let compose = env.snapshot_compose();

        for args in [
            &["list-backups"][..],
            &["list-backups", "--json"],
            &["backup"],
            &["verify", "--all"],
            &["reindex"],
        ] {
            let out = env.run(args);
            assert_no_panic(&out);
            out.assert_code(exit::FAILED)
                .assert_stderr_has("is unusable")
                .assert_stderr_has("reindex --move-broken-catalog");
            if how == "newer schema" {
                out.assert_stderr_has("newer version");
            }
            assert_eq!(
                fs::read(env.db_file()).unwrap(),
                broken,
                "{how}: `{}` changed the broken catalog",
                args.join(" ")
            );
        }
        crate::util::assert_same_tree("compose dir", &compose, &env.snapshot_compose());
        assert_eq!(
            env.backup_files().len(),
            2,
            "{how}: no archive may be written"
        );

        let out = env.run(&["reindex", "--move-broken-catalog", "--json"]);
        out.assert_ok().assert_stderr_has("was moved to");
        let doc = out.json();
        let moved = PathBuf::from(
            doc["moved_aside"]
                .as_str()
                .unwrap_or_else(|| panic!("{out}")),
        );
        assert!(
            moved
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("nuwax.db.broken-"),
            "{out}"
        );
        assert_eq!(
            fs::read(&moved).unwrap(),
            broken,
            "{how}: the broken file is kept as it was"
        );
        let listed: Vec<String> = env.list().into_iter().map(|r| r.file_path).collect();
        let want: Vec<String> = rows.iter().rev().map(|r| r.file_path.clone()).collect();
        assert_eq!(
            listed, want,
            "{how}: reindex rebuilt the catalog from the archives"
        );
        // A healthy catalog is never moved, flag or not.
        let out = env.run(&["reindex", "--move-broken-catalog", "--json"]);
        out.assert_ok();
        assert!(out.json().get("moved_aside").is_none(), "{out}");
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Colour

#[test]
fn nothing_is_coloured_when_the_output_is_not_a_terminal() {
    let env = TestEnv::new();
    // The variables that would turn colour on if the terminal check were missing.
    let empty = OsString::new();
    let one = OsString::from("1");
    let term = OsString::from("xterm-256color");
    let envs: [(&str, &OsStr); 4] = [
        ("NO_COLOR", &empty),
        ("CLICOLOR_FORCE", &one),
        ("FORCE_COLOR", &one),
        ("TERM", &term),
    ];
    let row = env.backup();
    let id = row.id.to_string();
    let runs: [&[&str]; 10] = [
        &["-vv", "backup"],
        &["-vv", "list-backups"],
        &["list-backups", "--json"],
        &["-v", "verify", &id],
        &["verify", "999"],
        &["rollback", "--list-json"],
        &["no-such-command"],
        &["backup", "--no-such-flag"],
        &["--help"],
        &["-vv", "prune", "--dry-run", "--keep-last", "1"],
    ];
    for args in runs {
        let out = env.run_env(args, &envs);
        assert_no_ansi(&out);
    }
    // -vv really logs (so the check above saw log lines).
    let out = env.run_env(&["-vv", "list-backups"], &envs);
    assert!(
        out.stderr.contains("DEBUG") || out.stderr.contains("debug"),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Control characters in names

const EVIL: &str = "evil\n99  Manual  2020-01-01 00:00:00  1.0  Completed\t\u{1b}[31mred\u{7}";

#[test]
fn control_characters_in_names_are_escaped_in_tables_and_exact_in_json() {
    let env = TestEnv::new();
    let row = env.backup();
    // An archive whose file name forges a table row and a colour escape.
    let name = format!("{EVIL}.tar.gz");
    let hostile_copy = env.root.join(&name);
    fs::copy(&row.file_path, &hostile_copy).unwrap();
    env.run(&[OsStr::new("import"), hostile_copy.as_os_str()])
        .assert_ok();

    let out = env.run(&["list-backups"]);
    out.assert_ok();
    assert_no_ansi(&out);
    assert_eq!(
        out.stdout.lines().count(),
        3,
        "a header and two rows, no forged one\n{out}"
    );
    assert!(
        out.stdout.contains("evil\\n99  Manual") && out.stdout.contains("\\t\\x1b[31mred\\x07"),
        "the name is shown escaped\n{out}"
    );
    let listed = env.list();
    assert!(
        listed.iter().any(|r| r.file_path.ends_with(&name)),
        "JSON keeps the exact name: {listed:#?}"
    );

    // A top-level item with such a name: the rollback's messages escape it, JSON does not.
    let item = env.compose_dir().join(EVIL);
    fs::write(&item, b"v1").unwrap();
    let row = env.backup();
    fs::write(&item, b"v2").unwrap();
    let out = env.run(&[
        "rollback",
        &row.id.to_string(),
        "--force",
        "--no-start",
        "--json",
    ]);
    out.assert_ok();
    assert_no_ansi(&out);
    assert!(
        out.stderr.contains("evil\\n99"),
        "the restored item is named escaped\n{out}"
    );
    assert!(!out.stderr.contains("evil\n"), "{out}");
    let doc = out.json();
    let restored: Vec<&str> = doc["restored"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(restored.contains(&EVIL), "{out}");
    assert_eq!(fs::read(&item).unwrap(), b"v1");
}

// ---------------------------------------------------------------------------------------------
// 8. Sizes near u64::MAX

/// The backup's archive with `info.json` and the manifest's copy edited alike.
fn with_info(row: &BackupRow, edit: &dyn Fn(&mut serde_json::Value)) -> Vec<u8> {
    let path = Path::new(&row.file_path);
    let mut e = read_raw(path);
    let info_path = ".nuwax-backup/info.json";
    let i = e
        .iter()
        .position(|r| r.path() == info_path.as_bytes())
        .unwrap();
    let mut info: serde_json::Value = serde_json::from_slice(&e[i].data).unwrap();
    edit(&mut info);
    let mut m = manifest_of(&e);
    m["info"] = info.clone();
    set_data(&mut e, info_path, serde_json::to_vec(&info).unwrap());
    set_data(
        &mut e,
        ".nuwax-backup/manifest.json",
        serde_json::to_vec(&m).unwrap(),
    );
    pack_raw(&e)
}

#[test]
fn archive_sizes_near_u64_max_are_an_integrity_error() {
    let env = TestEnv::new();
    let row = env.backup();
    let original = fs::read(&row.file_path).unwrap();
    let id = row.id.to_string();

    let overflowing = with_info(&row, &|info| {
        info["top_level_bytes"] = serde_json::json!({
            "app": u64::MAX,
            "config": u64::MAX,
            "data": 1u64,
        });
    });
    // A file entry whose tar header claims u64::MAX bytes (GNU base-256 size field).
    let mut huge = read_raw(Path::new(&row.file_path));
    let at = huge
        .iter()
        .position(|r| r.path() == b".nuwax-backup/manifest.json")
        .unwrap();
    let mut h = raw_header(b"app/huge.bin", tar::EntryType::Regular, 0, 0o644);
    h.as_gnu_mut().unwrap().size = [0xff; 12];
    h.set_cksum();
    huge.insert(
        at,
        RawEntry {
            header: h,
            data: vec![1; 1024],
        },
    );
    let huge = {
        // pack_raw writes each header's data as given; the header's size is what lies.
        pack_raw(&huge)
    };

    for (what, bytes) in [("top_level_bytes", overflowing), ("entry size", huge)] {
        register_bytes(&env, &row, &bytes);
        let compose = snapshot(&env.compose_dir());
        for args in [
            vec!["verify", &id],
            vec!["verify", &id, "--json"],
            vec!["rollback", &id, "--force", "--no-start", "--rollback-data"],
        ] {
            let out = env.run(&args);
            assert_no_panic(&out);
            assert_eq!(out.code, Some(exit::INTEGRITY), "{what}\n{out}");
        }
        crate::util::assert_same_tree(what, &compose, &snapshot(&env.compose_dir()));
        // import of such a file elsewhere: refused as corrupt, nothing added.
        let copy = env
            .root
            .join(format!("hostile-{}.tar.gz", what.replace(' ', "-")));
        fs::write(&copy, &bytes).unwrap();
        let before = env.list();
        let out = env.run(&[OsStr::new("import"), copy.as_os_str()]);
        assert_no_panic(&out);
        assert_eq!(out.code, Some(exit::INTEGRITY), "{what}\n{out}");
        assert_eq!(env.list(), before);
    }
    register_bytes(&env, &row, &original);
    env.run(&["verify", &id]).assert_ok();
}
