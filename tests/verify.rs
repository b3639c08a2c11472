//! Integrity: `verify`, and rollbacks of damaged or hostile archives, which must fail with
//! exit 4 before anything live is touched.

use std::path::{Path, PathBuf};

use crate::archutil::{
    self, RawEntry, flip_middle_byte, hostile_file, hostile_symlink, index_of, read_raw,
    replace_archive, truncate_half,
};
use crate::util::{BackupRow, TestEnv, Tree, assert_same_tree, exit};

/// A backed-up working dir after some changes: a rollback would change things.
struct Damaged {
    env: TestEnv,
    row: BackupRow,
    compose: Tree,
    outside: Tree,
}

impl Damaged {
    fn new() -> Damaged {
        let env = TestEnv::new();
        let row = env.backup();
        env.mutate();
        let compose = env.snapshot_compose();
        let outside = env.snapshot_outside();
        Damaged {
            env,
            row,
            compose,
            outside,
        }
    }

    fn id(&self) -> String {
        self.row.id.to_string()
    }

    fn archive(&self) -> &Path {
        Path::new(&self.row.file_path)
    }

    /// Every rollback scope exits 4 and leaves everything as it was.
    #[track_caller]
    fn assert_every_rollback_refused(&self) {
        let id = self.id();
        for args in [
            vec!["rollback", &id, "--force", "--no-start"],
            vec!["rollback", &id, "--force", "--no-start", "--rollback-data"],
            vec!["rollback-data-only", &id, "--force", "--no-start"],
        ] {
            let out = self.env.run(&args);
            out.assert_code(exit::INTEGRITY);
            assert_same_tree(
                &format!("compose dir after refused `{}`", args.join(" ")),
                &self.compose,
                &self.env.snapshot_compose(),
            );
            assert_same_tree(
                "outside the compose dir",
                &self.outside,
                &self.env.snapshot_outside(),
            );
        }
        assert!(
            self.archive().exists(),
            "a refused archive is kept for inspection"
        );
    }
}

#[test]
fn verify_good_backups_exit_0() {
    let env = TestEnv::new();
    let a = env.backup();
    let b = env.backup();
    env.run(&["verify", &a.id.to_string()]).assert_ok();
    env.run(&["verify", &b.id.to_string()]).assert_ok();
    env.run(&["verify", "--all"]).assert_ok();
}

#[test]
fn verify_unknown_id_exits_2() {
    let env = TestEnv::new();
    env.backup();
    env.run(&["verify", "31337"])
        .assert_code(exit::USAGE)
        .assert_stderr_has("not found");
}

#[test]
fn flipped_byte_is_refused_with_exit_4_and_nothing_changes() {
    let d = Damaged::new();
    flip_middle_byte(d.archive());
    d.assert_every_rollback_refused();
    // The catalog's checksum names the cause, whatever the gzip or tar layer noticed too.
    d.env
        .run(&["rollback", &d.id(), "--force", "--no-start"])
        .assert_code(exit::INTEGRITY)
        .assert_stderr_has("catalog says");
    d.env.run(&["verify", &d.id()]).assert_code(exit::INTEGRITY);
}

/// Another backup's archive (valid gzip, valid tar, a manifest that matches its content) in
/// place of this one's: only the catalog's SHA-256 tells, and the rollback, which hashes the
/// archive while it extracts it, must refuse before anything is swapped in.
#[test]
fn a_valid_archive_that_is_not_the_recorded_one_is_refused() {
    let mut d = Damaged::new();
    let other = d.env.backup();
    crate::util::write(&d.env.path("app/after-the-second-backup"), b"x\n", 0o644);
    d.compose = d.env.snapshot_compose();
    std::fs::copy(&other.file_path, d.archive()).unwrap();
    let rows = d.env.list();
    d.assert_every_rollback_refused();
    for args in [
        vec![
            "rollback",
            &d.id(),
            "--force",
            "--no-start",
            "--rollback-data",
        ],
        vec!["rollback-data-only", &d.id(), "--force", "--no-start"],
    ] {
        d.env
            .run(&args)
            .assert_code(exit::INTEGRITY)
            .assert_stderr_has("catalog says");
    }
    assert_eq!(d.env.list(), rows, "a refused rollback changed the catalog");
    crate::util::assert_no_staging_left(&d.env);
    // The archive really is a good one: rolling back to the backup it belongs to works.
    d.env
        .run(&["rollback", &other.id.to_string(), "--force", "--no-start"])
        .assert_ok();
}

#[test]
fn truncated_archive_is_refused_with_exit_4() {
    let d = Damaged::new();
    truncate_half(d.archive());
    d.assert_every_rollback_refused();
    d.env.run(&["verify", &d.id()]).assert_code(exit::INTEGRITY);
}

#[test]
fn verify_all_reports_the_one_bad_archive() {
    let env = TestEnv::new();
    let good = env.backup();
    let bad = env.backup();
    flip_middle_byte(Path::new(&bad.file_path));
    let out = env.run(&["verify", "--all"]);
    out.assert_code(exit::INTEGRITY);
    assert!(
        out.stdout.contains(&bad.id.to_string()) || out.stderr.contains(&bad.id.to_string()),
        "verify --all names the bad backup\n{out}"
    );
    env.run(&["verify", &good.id.to_string()]).assert_ok();
}

/// The catalog checksum is made to match the damaged file: the gzip CRC (and the manifest)
/// must still stop the restore before the swap.
#[test]
fn flipped_byte_with_matching_catalog_checksum_is_still_refused() {
    let d = Damaged::new();
    flip_middle_byte(d.archive());
    let sha = crate::util::sha256_file(d.archive());
    let size = std::fs::metadata(d.archive()).unwrap().len();
    archutil::catalog_set_checksum(&d.env.db_file(), d.row.id, &sha, size);
    assert_eq!(d.env.row(d.row.id).sha256.as_deref(), Some(sha.as_str()));
    d.assert_every_rollback_refused();
    d.env.run(&["verify", &d.id()]).assert_code(exit::INTEGRITY);
}

/// Valid gzip, valid tar, one file's bytes changed (same size): only the per-file check
/// against the manifest can tell.
#[test]
fn content_not_matching_the_manifest_is_refused() {
    let d = Damaged::new();
    let mut entries = read_raw(d.archive());
    for name in ["app/static/index.html", "data/mysql/auto.cnf"] {
        let i = index_of(&entries, name);
        let data = &mut entries[i].data;
        data[0] ^= 0x01;
    }
    replace_archive(&d.env, &d.row, &entries);
    d.assert_every_rollback_refused();
    d.env.run(&["verify", &d.id()]).assert_code(exit::INTEGRITY);
}

/// Inserts `evil` right after the archive's info entry (so a sequential restore meets it
/// early), makes the catalog agree, and checks every rollback refuses with exit 4 without
/// creating any of `forbidden`.
fn assert_hostile_refused(evil: Vec<RawEntry>, forbidden: impl Fn(&TestEnv) -> Vec<PathBuf>) {
    let d = Damaged::new();
    let mut entries = read_raw(d.archive());
    let at = index_of(&entries, ".nuwax-backup/info.json") + 1;
    for (k, e) in evil.into_iter().enumerate() {
        entries.insert(at + k, e);
    }
    replace_archive(&d.env, &d.row, &entries);
    d.assert_every_rollback_refused();
    for path in forbidden(&d.env) {
        assert!(
            std::fs::symlink_metadata(&path).is_err(),
            "a hostile entry was written outside the staging dir: {}",
            path.display()
        );
    }
    d.env.run(&["verify", &d.id()]).assert_code(exit::INTEGRITY);
}

fn escape_targets(env: &TestEnv, name: &str) -> Vec<PathBuf> {
    vec![
        env.compose_dir().join(name),
        env.work.join(name),
        env.root.join(name),
        env.path("app").join(name),
    ]
}

#[test]
fn dot_dot_entry_is_refused() {
    assert_hostile_refused(
        vec![
            hostile_file("../escape.txt", b"pwned\n"),
            hostile_file("app/../../../escape.txt", b"pwned\n"),
        ],
        |env| escape_targets(env, "escape.txt"),
    );
}

#[test]
fn absolute_entry_is_refused() {
    let probe = std::env::temp_dir().join(format!("nuwax-abs-escape-{}.txt", std::process::id()));
    let name = probe.to_str().unwrap().to_owned();
    let _ = std::fs::remove_file(&probe);
    assert_hostile_refused(vec![hostile_file(&name, b"pwned\n")], move |env| {
        let mut v = escape_targets(env, "abs-escape.txt");
        v.push(probe.clone());
        v
    });
}

#[test]
fn write_through_an_escaping_symlink_is_refused() {
    assert_hostile_refused(
        vec![
            hostile_symlink("app/evil", "../../.."),
            hostile_file("app/evil/escape-via-link.txt", b"pwned\n"),
        ],
        |env| {
            let mut v = escape_targets(env, "escape-via-link.txt");
            v.push(env.work.join("docker/escape-via-link.txt"));
            v
        },
    );
}

#[test]
fn write_through_an_absolute_symlink_is_refused() {
    let target = std::env::temp_dir().join(format!("nuwax-abs-link-{}", std::process::id()));
    std::fs::create_dir_all(&target).unwrap();
    let probe = target.join("escape-via-abs-link.txt");
    let t = target.to_str().unwrap().to_owned();
    assert_hostile_refused(
        vec![
            hostile_symlink("app/evil2", &t),
            hostile_file("app/evil2/escape-via-abs-link.txt", b"pwned\n"),
        ],
        move |_| vec![probe.clone()],
    );
    let _ = std::fs::remove_dir_all(&target);
}
