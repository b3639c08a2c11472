//! Backups made by the original nuwax-cli: `backup_{manual|pre-upgrade}_v{VERSION}_{time}.tar.gz`
//! holding `data/` and `app/` and no `.nuwax-backup/` metadata. Built here with GNU tar, as
//! an operator's existing archives are plain tar.gz files of those two directories.
//! `import` and `reindex` adopt them (type, version and time from the name), `list-backups`
//! marks them, `verify` checks them against the manifest computed at adoption, a rollback
//! restores only their `data/` and `app/`, and an unsafe one is refused like any archive.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{
    TestEnv, Tree, assert_no_staging_left, assert_same_tree, except, exit, only, sha256_file, write,
};

const NAME: &str = "backup_manual_v0.0.9_2025-11-26_03-20-04.tar.gz";
const ITEMS: &[&str] = &["data", "app"];

/// Runs GNU tar with `args`, panicking on failure.
fn tar(args: &[&OsStr]) {
    let out = Command::new("tar").args(args).output().expect("run tar");
    assert!(
        out.status.success(),
        "tar {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `tar -czf <dir>/<name> -C <compose dir> data app`, as the original tool archived.
fn legacy_archive(env: &TestEnv, dir: &Path, name: &str) -> PathBuf {
    legacy_archive_of(env, dir, name, ITEMS)
}

/// `tar -czf <dir>/<name> -C <compose dir> <items>`.
fn legacy_archive_of(env: &TestEnv, dir: &Path, name: &str, items: &[&str]) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let dest = dir.join(name);
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("--format=gnu"),
        OsStr::new("-czf"),
        dest.as_os_str(),
        OsStr::new("-C"),
    ];
    let compose = env.compose_dir();
    args.push(compose.as_os_str());
    args.extend(items.iter().map(OsStr::new));
    tar(&args);
    dest
}

/// Number of entries `tar -tzf` lists.
fn tar_entries(archive: &Path) -> u64 {
    let out = Command::new("tar")
        .arg("-tzf")
        .arg(archive)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).lines().count() as u64
}

/// Imports `archive`, asserting success; returns the new id.
#[track_caller]
fn import(env: &TestEnv, archive: &Path) -> i64 {
    let out = env.run(&[OsStr::new("import"), archive.as_os_str()]);
    out.assert_ok();
    let rows = env.list();
    rows.iter()
        .find(|r| {
            r.file_path
                .ends_with(archive.file_name().unwrap().to_str().unwrap())
        })
        .unwrap_or_else(|| panic!("{} not adopted: {rows:#?}\n{out}", archive.display()))
        .id
}

/// A config with comments, so that rewriting the version shows whether they survive.
fn commented_config(env: &TestEnv, version: &str) -> String {
    let text = format!(
        "# deployment notes: keep me\n[versions]\ndocker_service = \"{version}\"  # running release\n\n[docker]\nproject = \"{}\"\n",
        env.project
    );
    fs::write(env.work.join("config.toml"), &text).unwrap();
    text
}

#[test]
fn import_adopts_a_legacy_archive_by_its_name_and_lists_and_verifies_it() {
    let env = TestEnv::new();
    let src = legacy_archive(&env, &env.root.join("old"), NAME);
    let id = import(&env, &src);
    let row = env.row(id);
    assert!(row.legacy, "{row:#?}");
    assert_eq!(row.backup_type, "Manual");
    assert_eq!(row.service_version, "0.0.9");
    assert_eq!(row.created_at, "2025-11-26 03:20:04");
    assert_eq!(row.status, "Completed");
    assert_eq!(
        PathBuf::from(&row.file_path),
        env.backups_dir().join(NAME),
        "copied into the storage dir"
    );
    assert_eq!(row.sha256.as_deref(), Some(sha256_file(&src).as_str()));
    assert_eq!(row.entry_count, Some(tar_entries(&src)));
    assert!(src.exists(), "the original is left alone");

    let table = env.run(&["list-backups"]);
    table.assert_ok();
    assert!(table.stdout.contains("Manual (legacy)"), "{table}");
    let doc = env.run_json(&["rollback", "--list-json"]);
    assert_eq!(doc["backups"][0]["legacy"], true, "{doc}");

    env.run(&["verify", &id.to_string()])
        .assert_ok()
        .assert_stderr_has("OK");
    env.run(&["verify", "--all", "--json"]).assert_ok();
}

#[test]
fn reindex_adopts_legacy_archives_of_both_types_and_refuses_a_nameless_one() {
    let env = TestEnv::new();
    let ours = env.backup();
    let pre = "backup_pre-upgrade_v0.0.8_beta_2025-10-01_01-02-03.tar.gz";
    legacy_archive(&env, &env.backups_dir(), pre);
    legacy_archive(&env, &env.backups_dir(), NAME);
    // No metadata and no name of the original tool: its type, version and time are unknown.
    legacy_archive(&env, &env.backups_dir(), "backup_something.tar.gz");
    let out = env.run(&["reindex", "--json"]);
    out.assert_ok();
    let doc = out.json();
    assert_eq!(doc["added"].as_array().map(Vec::len), Some(2), "{out}");
    let invalid = doc["invalid"].to_string();
    assert!(
        invalid.contains("backup_something.tar.gz") && invalid.contains("original nuwax-cli"),
        "{out}"
    );
    let rows = env.list();
    assert_eq!(rows.len(), 3, "{rows:#?}");
    let by_name = |n: &str| rows.iter().find(|r| r.file_path.ends_with(n)).unwrap();
    let p = by_name(pre);
    assert!(p.legacy);
    assert_eq!(p.backup_type, "PreUpgrade");
    assert_eq!(p.service_version, "0.0.8_beta");
    assert_eq!(p.created_at, "2025-10-01 01:02:03");
    assert!(by_name(NAME).legacy);
    assert!(!rows.iter().find(|r| r.id == ours.id).unwrap().legacy);
    // Newest first by the times in the names.
    assert_eq!(rows[1].file_path, by_name(NAME).file_path);
    assert_eq!(rows[2].file_path, p.file_path);
}

/// After a rollback of `items`: they are as in `archived` (the tree the backup was made
/// of) and everything else is as in `before` (the tree the rollback started from).
#[track_caller]
fn assert_restored_only(items: &[&str], archived: &Tree, before: &Tree, after: &Tree) {
    let named = format!("{}/", items.join("/ and "));
    assert_same_tree(
        &format!("{named} == the archive"),
        &only(archived, items),
        &only(after, items),
    );
    assert_same_tree(
        &format!("everything but {named} untouched"),
        &except(before, items),
        &except(after, items),
    );
}

/// The working dir after a legacy backup was imported and then everything changed.
struct Scenario {
    env: TestEnv,
    id: String,
    original: Tree,
    mutated: Tree,
}

impl Scenario {
    fn new() -> Scenario {
        let env = TestEnv::new();
        commented_config(&env, "1.2.3");
        let original = env.snapshot_compose();
        let src = legacy_archive(&env, &env.root.join("old"), NAME);
        let id = import(&env, &src).to_string();
        env.mutate();
        let mutated = env.snapshot_compose();
        Scenario {
            env,
            id,
            original,
            mutated,
        }
    }

    fn config(&self) -> String {
        fs::read_to_string(self.env.work.join("config.toml")).unwrap()
    }
}

#[test]
fn rollback_with_data_of_a_legacy_backup_restores_exactly_data_and_app() {
    let s = Scenario::new();
    let out = s.env.rollback_data(&s.id);
    out.assert_ok()
        .assert_stderr_has("made by the original nuwax-cli")
        .assert_stderr_has(
            "the compose file, .env, config/ and everything else are left as they are",
        );
    let after = s.env.snapshot_compose();
    assert_restored_only(ITEMS, &s.original, &s.mutated, &after);
    assert_no_staging_left(&s.env);
    // The app is the backup's: so is the recorded version, comments kept.
    let config = s.config();
    assert!(
        config.contains("docker_service = \"0.0.9\"  # running release")
            && config.contains("# deployment notes: keep me"),
        "{config}"
    );
    out.assert_stderr_has("docker_service set to \"0.0.9\"");
}

#[test]
fn rollback_of_a_legacy_backup_restores_app_only_and_data_only_restores_data_only() {
    let s = Scenario::new();
    s.env
        .run(&["rollback", &s.id, "--force", "--no-start"])
        .assert_ok()
        .assert_stderr_has("This restores app/");
    let after = s.env.snapshot_compose();
    assert_restored_only(&["app"], &s.original, &s.mutated, &after);
    assert!(s.config().contains("docker_service = \"0.0.9\""));

    // The data scope alone, with the original tool's flag; the version stays.
    commented_config(&s.env, "1.2.3");
    let before = s.config();
    s.env
        .run(&[
            "rollback-data-only",
            &s.id,
            "--force",
            "--no-start",
            "--auto-start-service",
        ])
        .assert_ok()
        .assert_stderr_has("This restores data/");
    let last = s.env.snapshot_compose();
    assert_restored_only(&["data"], &s.original, &after, &last);
    assert_eq!(
        s.config(),
        before,
        "a data-only rollback leaves the version"
    );
}

#[test]
fn a_legacy_rollback_says_what_it_leaves_before_asking() {
    let s = Scenario::new();
    // No terminal, no --force: refused (exit 2) after saying what it would restore.
    let out = s.env.run(&["rollback", &s.id, "--rollback-data"]);
    out.assert_code(exit::USAGE)
        .assert_stderr_has("made by the original nuwax-cli")
        .assert_stderr_has("left as they are");
    let notice = out.stderr.find("original nuwax-cli").unwrap();
    let refusal = out.stderr.find("--force").unwrap();
    assert!(notice < refusal, "{out}");
    assert_same_tree("nothing changed", &s.mutated, &s.env.snapshot_compose());
}

#[test]
fn a_legacy_archive_changed_after_adoption_is_refused_by_verify_and_rollback() {
    let s = Scenario::new();
    let file = s.env.backups_dir().join(NAME);
    // Another archive of the original tool, as valid as the first, in its place.
    write(&s.env.path("app/VERSION"), b"9.9.9\n", 0o644);
    let other = legacy_archive(&s.env, &s.env.root.join("other"), NAME);
    fs::copy(&other, &file).unwrap();
    let mutated = s.env.snapshot_compose();
    s.env
        .run(&["verify", &s.id])
        .assert_code(exit::INTEGRITY)
        .assert_stderr_has("FAILED");
    s.env
        .run(&[
            "rollback",
            &s.id,
            "--rollback-data",
            "--force",
            "--no-start",
        ])
        .assert_code(exit::INTEGRITY)
        .assert_stderr_has("checksum mismatch");
    assert_same_tree("nothing changed", &mutated, &s.env.snapshot_compose());
    assert_no_staging_left(&s.env);
}

/// Builds a hostile archive with GNU tar under `name` in `dir`.
fn hostile(env: &TestEnv, dir: &Path, case: &str) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let dest = dir.join(NAME);
    let compose = env.compose_dir();
    let o = OsStr::new;
    match case {
        // `-P` keeps what GNU tar would otherwise strip.
        "dotdot" => tar(&[
            o("-czPf"),
            dest.as_os_str(),
            o("-C"),
            compose.as_os_str(),
            o("data"),
            o("../witness.txt"),
        ]),
        "absolute" => {
            let abs = env.work.join("witness.txt");
            tar(&[
                o("-czPf"),
                dest.as_os_str(),
                o("-C"),
                compose.as_os_str(),
                o("data"),
                abs.as_os_str(),
            ])
        }
        "duplicate" => tar(&[
            o("-czf"),
            dest.as_os_str(),
            o("-C"),
            compose.as_os_str(),
            o("data"),
            o("data/mysql/auto.cnf"),
        ]),
        "device" => tar(&[
            o("-czf"),
            dest.as_os_str(),
            o("-C"),
            o("/"),
            o("--transform=s,^dev/null$,data/null,"),
            o("dev/null"),
        ]),
        "through_symlink" => {
            // data/link -> the outside, then a file "inside" it.
            let a = env.root.join("stage-a");
            let b = env.root.join("stage-b");
            fs::create_dir_all(a.join("data")).unwrap();
            std::os::unix::fs::symlink(&env.root, a.join("data/link")).unwrap();
            write(&b.join("data/link/evil.txt"), b"escaped\n", 0o644);
            let plain = dir.join("x.tar");
            tar(&[
                o("-cf"),
                plain.as_os_str(),
                o("-C"),
                a.as_os_str(),
                o("data/link"),
            ]);
            tar(&[
                o("-rf"),
                plain.as_os_str(),
                o("-C"),
                b.as_os_str(),
                o("data/link/evil.txt"),
            ]);
            let gz = Command::new("gzip").arg("-n").arg(&plain).status().unwrap();
            assert!(gz.success());
            fs::rename(dir.join("x.tar.gz"), &dest).unwrap();
        }
        other => panic!("unknown case {other}"),
    }
    dest
}

#[test]
fn unsafe_legacy_archives_are_refused_and_nothing_is_adopted_or_written() {
    let env = TestEnv::new();
    let outside = env.snapshot_outside();
    for (case, why) in [
        ("dotdot", "`..` path component"),
        ("absolute", "absolute path"),
        ("duplicate", "duplicate entry"),
        ("device", "character device"),
        ("through_symlink", "lies beneath the symlink"),
    ] {
        let dir = env.root.join(format!("hostile-{case}"));
        let src = hostile(&env, &dir, case);
        let out = env.run(&[OsStr::new("import"), src.as_os_str()]);
        out.assert_code(exit::INTEGRITY)
            .assert_stderr_has("unsafe entry")
            .assert_stderr_has(why);
        assert!(env.list().is_empty(), "{case}: adopted\n{out}");
        assert!(
            !env.backups_dir().join(NAME).exists(),
            "{case}: copied into the storage dir\n{out}"
        );
        fs::remove_dir_all(&dir).unwrap();
        let _ = fs::remove_dir_all(env.root.join("stage-a"));
        let _ = fs::remove_dir_all(env.root.join("stage-b"));
    }
    // In the storage dir, reindex refuses it too and leaves it where it is.
    let src = hostile(&env, &env.backups_dir(), "dotdot");
    let out = env.run(&["reindex", "--json"]);
    out.assert_ok();
    assert!(out.stdout.contains("unsafe entry"), "{out}");
    assert!(env.list().is_empty());
    assert!(src.exists());
    assert_same_tree("outside", &outside, &env.snapshot_outside());
}

/// Killed right after the swap of a legacy app restore committed: the next command finishes
/// it, version bookkeeping included.
#[test]
fn recovery_of_a_committed_legacy_rollback_writes_the_version_too() {
    let s = Scenario::new();
    let out = s.env.run_env(
        &["rollback", &s.id, "--force", "--no-start"],
        &[("NUWAX_TEST_CRASH_AT", OsStr::new("rollback.after_commit"))],
    );
    assert_eq!(out.code, None, "killed at the point\n{out}");
    assert!(s.config().contains("docker_service = \"1.2.3\""), "not yet");
    let out = s.env.run(&["list-backups"]);
    out.assert_ok()
        .assert_stderr_has("recovery:")
        .assert_stderr_has("docker_service set to 0.0.9");
    assert!(s.config().contains("docker_service = \"0.0.9\""));
    assert_same_tree(
        "app/ == the archive",
        &only(&s.original, &["app"]),
        &only(&s.env.snapshot_compose(), &["app"]),
    );
    assert_no_staging_left(&s.env);
}

/// The catalog is input too: a legacy row whose manifest is gone (or garbled) is refused
/// (exit 4) by `verify` and `rollback`, with the way to adopt the archive again.
#[test]
fn a_legacy_row_without_its_manifest_is_refused() {
    for damage in [
        "DELETE FROM legacy_manifests",
        "UPDATE legacy_manifests SET manifest = '{\"entries\": 1}'",
    ] {
        let s = Scenario::new();
        let conn = rusqlite::Connection::open(s.env.db_file()).unwrap();
        conn.execute_batch(damage).unwrap();
        drop(conn);
        s.env
            .run(&["verify", &s.id])
            .assert_code(exit::INTEGRITY)
            .assert_stderr_has("made by the original nuwax-cli")
            .assert_stderr_has("nuwax-cli import");
        s.env
            .run(&[
                "rollback",
                &s.id,
                "--rollback-data",
                "--force",
                "--no-start",
            ])
            .assert_code(exit::INTEGRITY);
        assert_same_tree("nothing changed", &s.mutated, &s.env.snapshot_compose());
    }
}

/// A pre-upgrade archive of the original tool also held `upload/`: a restore still takes only
/// `data/` and `app/`, and says what it leaves.
#[test]
fn a_legacy_archive_holding_more_restores_only_data_and_app() {
    let env = TestEnv::new();
    let original = env.snapshot_compose();
    let name = "backup_pre-upgrade_v0.0.7_2025-09-09_09-09-09.tar.gz";
    let src = legacy_archive_of(
        &env,
        &env.root.join("old"),
        name,
        &["data", "app", "upload"],
    );
    let id = import(&env, &src).to_string();
    env.mutate();
    let mutated = env.snapshot_compose();
    let out = env.rollback_data(&id);
    out.assert_ok()
        .assert_stderr_has(&format!("backup {id} also holds upload"));
    // upload/ is in the archive but out of a legacy rollback's scope: left as it was.
    assert_restored_only(ITEMS, &original, &mutated, &env.snapshot_compose());
}

#[test]
fn the_dry_run_of_a_legacy_rollback_names_only_data_and_app() {
    let s = Scenario::new();
    let before = s.env.snapshot_compose();
    let out = s
        .env
        .run(&["rollback", &s.id, "--rollback-data", "--dry-run", "--json"]);
    out.assert_ok();
    let doc = out.json();
    // Every path the dry run would replace, add or remove lies in data/ or app/: the compose
    // file, .env, config/ and the rest are out of a legacy restore's scope, as in the rollback.
    let mut named = 0;
    for key in ["replace", "add", "remove"] {
        for p in doc[key]["first"].as_array().unwrap_or(&Vec::new()) {
            let p = p.as_str().unwrap_or_default();
            named += 1;
            assert!(
                ITEMS
                    .iter()
                    .any(|i| p == *i || p.starts_with(&format!("{i}/"))),
                "{key} names {p}, outside data/ and app/\n{out}"
            );
        }
    }
    assert!(named > 0, "the scenario changed data/ or app/: {out}");
    assert_same_tree(
        "a dry run changes nothing",
        &before,
        &s.env.snapshot_compose(),
    );
}
