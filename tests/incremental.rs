//! Backups at the cost of what changed (issue 16): the second backup copies the compressed
//! members of unchanged big files from the first, and is still a complete `.tar.gz` that
//! GNU tar, `verify` and every rollback read alone.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::archutil;
use crate::util::{
    BackupRow, EXCLUDED, Fixture, TestEnv, Tree, assert_same_tree, except, noise, whole_seconds,
    write,
};

/// The notice of a backup that copied the members of unchanged files or file parts.
const COPIED: &str = "of unchanged data from";

/// A fixture with several big files (each starts its own gzip members), aged past the
/// racy window: a file changed within two seconds of a backup is always read again.
fn env() -> TestEnv {
    let env = TestEnv::with(Fixture { large_file: true });
    write(&env.path("data/db/main.ibd"), &noise(11, 3 << 20), 0o640);
    write(&env.path("data/db/log.ibd"), &noise(12, 2 << 20), 0o640);
    write(
        &env.path("upload/video.mp4"),
        &noise(13, (3 << 20) / 2),
        0o644,
    );
    write(
        &env.path("upload/same-mtime.bin"),
        &noise(14, 2 << 20),
        0o644,
    );
    whole_seconds(&env.compose_dir());
    std::thread::sleep(Duration::from_millis(2200));
    env
}

/// Damage for a rollback to repair (`TestEnv::mutate` runs once per tree).
fn damage(env: &TestEnv) {
    write(&env.path("data/db/main.ibd"), b"damaged by the test", 0o640);
    write(&env.path("upload/stray.txt"), b"not in the backup", 0o644);
    fs::remove_file(env.path("upload/new.bin")).unwrap();
}

/// `backup --json`, returning the row and stderr.
fn backup(env: &TestEnv, extra: &[&str]) -> (BackupRow, String) {
    let mut args = vec!["backup", "--json"];
    args.extend_from_slice(extra);
    let out = env.run(&args);
    out.assert_ok();
    let doc: crate::util::BackupDoc = out.json_as();
    (doc.backup.expect("backup object"), out.stderr.clone())
}

/// Rewrites `rel` with other bytes of the same size and puts its mtime back: only ctime
/// (and the inode's content) tell.
fn rewrite_keeping_mtime(env: &TestEnv, rel: &str) {
    let p = env.path(rel);
    let meta = fs::metadata(&p).unwrap();
    let mut bytes = fs::read(&p).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x5a;
    fs::write(&p, &bytes).unwrap();
    filetime::set_file_mtime(&p, filetime::FileTime::from_last_modification_time(&meta)).unwrap();
}

/// `rollback --rollback-data` of `row` (services not started) gives back `live`.
fn rolls_back_to(env: &TestEnv, row: &BackupRow, live: &Tree, what: &str) {
    env.rollback_data(row.id).assert_ok();
    assert_same_tree(what, live, &except(&env.snapshot_compose(), EXCLUDED));
}

/// About the change the benchmark makes: a database file appended to and one rewritten in
/// place with its mtime kept, a new upload, small files touched, a big file deleted.
fn change(env: &TestEnv) {
    let log = env.path("data/db/log.ibd");
    let mtime = filetime::FileTime::from_last_modification_time(&fs::metadata(&log).unwrap());
    let mut f = fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, &noise(15, 70_000)).unwrap();
    drop(f);
    // Other size, same mtime.
    filetime::set_file_mtime(&log, mtime).unwrap();
    rewrite_keeping_mtime(env, "upload/same-mtime.bin");
    write(
        &env.path("upload/new.bin"),
        &noise(16, (5 << 20) / 4),
        0o644,
    );
    fs::remove_file(env.path("upload/video.mp4")).unwrap();
    env.mutate();
    whole_seconds(&env.compose_dir());
}

/// The tree GNU tar extracts from `archive` into `<root>/<name>`, minus our metadata dir.
fn gnu_tar_tree(env: &TestEnv, archive: &str, name: &str) -> Tree {
    archutil::gnu_tar_tree(archive, &env.root.join(name))
}

/// The manifest without what depends on the backup itself: its info, and the spans'
/// offsets (they follow `info.json`, whose length differs with the type and time).
fn manifest_without_info(archive: &str) -> serde_json::Value {
    let bytes = archutil::read_entry(Path::new(archive), ".nuwax-backup/manifest.json")
        .expect("manifest entry");
    let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v.as_object_mut().unwrap().remove("info");
    for span in v["spans"].as_array_mut().expect("spans") {
        span.as_object_mut().unwrap().remove("offset");
        for chunk in span["chunks"].as_array_mut().into_iter().flatten() {
            chunk.as_object_mut().unwrap().remove("offset");
        }
    }
    v
}

#[test]
fn the_second_backup_copies_unchanged_files_and_restores_exactly_the_changed_tree() {
    let env = env();
    let (first, err1) = backup(&env, &[]);
    assert!(!err1.contains(COPIED), "nothing to copy from yet:\n{err1}");
    change(&env);
    let live = except(&env.snapshot_compose(), EXCLUDED);
    let (second, err2) = backup(&env, &[]);
    assert!(err2.contains(COPIED), "{err2}");
    assert!(err2.contains(&first.file_path), "{err2}");
    env.run(&["verify", &second.id.to_string()]).assert_ok();

    // GNU tar alone gives the changed tree (the same size, same mtime file included).
    assert_same_tree(
        "tar -xzf of the incremental archive",
        &live,
        &gnu_tar_tree(&env, &second.file_path, "gnu"),
    );
    // The manifest is the one a full backup of the same tree records.
    let (full, err3) = backup(&env, &["--full"]);
    assert!(!err3.contains(COPIED), "{err3}");
    assert!(err3.contains("--full: reading every file"), "{err3}");
    assert_eq!(
        manifest_without_info(&second.file_path),
        manifest_without_info(&full.file_path)
    );

    // A rollback restores it.
    damage(&env);
    rolls_back_to(
        &env,
        &second,
        &live,
        "rollback --rollback-data of the incremental backup",
    );
}

#[test]
fn a_damaged_member_of_the_older_archive_is_never_copied() {
    let env = env();
    let (first, _) = backup(&env, &[]);
    env.run(&["verify", &first.id.to_string()]).assert_ok();
    // Flip a byte inside the members of data/db/main.ibd after the verification.
    archutil::flip_byte_in_span_of(Path::new(&first.file_path), "data/db/main.ibd");
    change(&env);
    let live = except(&env.snapshot_compose(), EXCLUDED);
    let (second, err) = backup(&env, &[]);
    assert!(
        err.contains("do not match their recorded checksum"),
        "{err}"
    );
    assert!(err.contains("every file read from the live tree"), "{err}");
    env.run(&["verify", &second.id.to_string()]).assert_ok();
    assert_same_tree(
        "tar -xzf after the fallback",
        &live,
        &gnu_tar_tree(&env, &second.file_path, "gnu"),
    );
}

#[test]
fn deleting_the_older_backup_leaves_the_newer_one_whole() {
    let env = env();
    let (first, _) = backup(&env, &[]);
    change(&env);
    let live = except(&env.snapshot_compose(), EXCLUDED);
    let (second, err) = backup(&env, &[]);
    assert!(err.contains(COPIED), "{err}");
    env.run(&["delete-backup", &first.id.to_string(), "--force"])
        .assert_ok();
    assert!(!Path::new(&first.file_path).exists());
    env.run(&["verify", &second.id.to_string()]).assert_ok();
    // The next backup copies from the newer one.
    let (third, err) = backup(&env, &[]);
    assert!(err.contains(COPIED), "{err}");
    assert!(err.contains(&second.file_path), "{err}");
    env.run(&["verify", &third.id.to_string()]).assert_ok();
    damage(&env);
    env.run(&[
        "rollback-data-only",
        &second.id.to_string(),
        "--force",
        "--no-start",
    ])
    .assert_ok();
    assert_same_tree(
        "data scope restored from the newer backup alone",
        &crate::util::only(&live, crate::util::DATA_SCOPE),
        &crate::util::only(&env.snapshot_compose(), crate::util::DATA_SCOPE),
    );
}

#[test]
fn full_every_forces_a_full_read() {
    let env = env();
    let config = env.work.join("config.toml");
    let mut text = fs::read_to_string(&config).unwrap();
    text = text.replace("[docker]", "[backup]\nfull_every = 2\n\n[docker]");
    fs::write(&config, text).unwrap();
    let (_, err) = backup(&env, &[]);
    assert!(!err.contains(COPIED), "{err}");
    let (_, err) = backup(&env, &[]);
    assert!(err.contains(COPIED), "the second copies: {err}");
    let (_, err) = backup(&env, &[]);
    assert!(!err.contains(COPIED), "{err}");
    assert!(err.contains("full_every = 2"), "{err}");
    let (_, err) = backup(&env, &[]);
    assert!(err.contains(COPIED), "the streak starts again: {err}");
}

#[test]
fn a_database_file_changed_in_its_middle_copies_the_members_of_its_unchanged_data() {
    let env = env();
    let (first, _) = backup(&env, &[]);
    // main.ibd (3 MiB, a 512-byte tar header): its data-only members hold the MiB from 1 and
    // 2 MiB less 512 bytes. Rewrite 4 KiB in the first of them, append 100 000 bytes.
    let main = env.path("data/db/main.ibd");
    let mut bytes = fs::read(&main).unwrap();
    let at = (3 << 20) / 2;
    bytes[at..at + 4096].copy_from_slice(&noise(21, 4096));
    bytes.extend_from_slice(&noise(22, 100_000));
    fs::write(&main, &bytes).unwrap();
    whole_seconds(&env.compose_dir());
    let live = except(&env.snapshot_compose(), EXCLUDED);
    // Copied: every other big file whole, and main.ibd's second data-only member.
    let manifest: serde_json::Value = serde_json::from_slice(
        &archutil::read_entry(Path::new(&first.file_path), ".nuwax-backup/manifest.json").unwrap(),
    )
    .unwrap();
    let others: u64 = manifest["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "file" && e["path"] != "data/db/main.ibd")
        .map(|e| e["size"].as_u64().unwrap())
        .filter(|&size| size >= 64 << 10)
        .sum();
    let want = format!("copied {:.1} MiB", (others + (1 << 20)) as f64 / 1048576.0);
    let (second, err) = backup(&env, &[]);
    assert!(err.contains(&want), "{want}: {err}");
    env.run(&["verify", &second.id.to_string()]).assert_ok();
    assert_same_tree(
        "tar -xzf of the archive with copied members of a changed file",
        &live,
        &gnu_tar_tree(&env, &second.file_path, "gnu"),
    );
    let (full, _) = backup(&env, &["--full"]);
    assert_eq!(
        manifest_without_info(&second.file_path),
        manifest_without_info(&full.file_path)
    );
    write(&main, b"damaged by the test", 0o640);
    rolls_back_to(&env, &second, &live, "rollback --rollback-data");
}

/// An XFS filesystem with reflink (block sharing) in a sparse loop file under `root`,
/// unmounted on drop.
struct Xfs {
    mnt: std::path::PathBuf,
}

impl Xfs {
    /// `Err` says why there is none here (not root, no mkfs.xfs, no loop device).
    fn mount(root: &Path) -> Result<Xfs, String> {
        if !crate::util::is_root() {
            return Err("mounting a loop filesystem needs root".into());
        }
        let img = root.join("xfs.img");
        let mnt = root.join("xfs");
        fs::File::create(&img)
            .and_then(|f| f.set_len(1 << 30))
            .map_err(|e| format!("cannot create {}: {e}", img.display()))?;
        fs::create_dir(&mnt).unwrap();
        let run = |cmd: &mut Command| -> Result<(), String> {
            let what = format!("{cmd:?}");
            let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{what}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        run(Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&img))?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt))?;
        Ok(Xfs { mnt })
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

#[test]
#[allow(clippy::print_stderr)] // the skip notice where no XFS loop filesystem can be made
fn on_xfs_the_second_backup_shares_the_blocks_of_unchanged_files() {
    let mut env = env();
    let xfs = match Xfs::mount(&env.root) {
        Ok(x) => x,
        Err(why) => {
            eprintln!("SKIPPED: no XFS loop filesystem here: {why}");
            return;
        }
    };
    // The whole working dir (tree, catalog, archives) on XFS, aged past the racy window again
    // (the copy has new ctimes).
    let work = xfs.mnt.join("work");
    env.move_work(work);
    std::thread::sleep(Duration::from_millis(2200));
    let (first, _) = backup(&env, &[]);
    // Only a small file changes: every big file is copied.
    write(&env.path("app/changed.txt"), b"a small change", 0o644);
    whole_seconds(&env.compose_dir());
    let live = except(&env.snapshot_compose(), EXCLUDED);
    let free = crate::util::free_bytes(&xfs.mnt);
    let (second, err) = backup(&env, &[]);
    assert!(err.contains(COPIED), "{err}");
    assert!(err.contains(&first.file_path), "{err}");
    let used = free.saturating_sub(crate::util::free_bytes(&xfs.mnt));
    let size = fs::metadata(&second.file_path).unwrap().len();
    // The big files are most of the archive; their blocks are shared with the first one.
    assert!(size > 10 << 20, "{size}");
    assert!(
        used < size / 4,
        "the second archive of {size} bytes took {used} bytes of new space"
    );
    let frag = Command::new("filefrag")
        .arg("-v")
        .arg(&second.file_path)
        .output();
    if let Ok(out) = frag {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("shared"), "filefrag -v:\n{text}");
    }
    env.run(&["verify", &second.id.to_string()]).assert_ok();
    assert_same_tree(
        "tar -xzf of the block-sharing archive",
        &live,
        &gnu_tar_tree(&env, &second.file_path, "gnu"),
    );
    // Deleting the first archive leaves the shared blocks to the second.
    env.run(&["delete-backup", &first.id.to_string(), "--force"])
        .assert_ok();
    write(&env.path("data/db/main.ibd"), b"damaged by the test", 0o640);
    write(&env.path("upload/stray.txt"), b"not in the backup", 0o644);
    rolls_back_to(
        &env,
        &second,
        &live,
        "rollback --rollback-data of the block-sharing backup",
    );
}
