//! Round trips (ours and GNU tar), determinism, filters, damaged and hostile archives.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use filetime::FileTime;
use sha2::{Digest, Sha256};

use super::format::{INFO_PATH, MANIFEST_PATH};
use super::*;
use crate::error::Error;
use crate::{Progress, ProgressEvent};

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn info() -> ArchiveInfo {
    ArchiveInfo {
        format: 1,
        tool: "nuwax-cli test".into(),
        backup_type: "Manual".into(),
        service_version: "1.2.3".into(),
        created_at: "2024-05-06T07:08:09Z".into(),
        compose_project: "demo".into(),
        data_paths: vec!["data".parse().unwrap()],
        excluded: vec!["logs".parse().unwrap(), "app/cache".parse().unwrap()],
        images: vec![],
        top_level_bytes: Default::default(),
        dumps: Vec::new(),
        hot: false,
    }
}

/// The template [`info`] with the top-level sizes the build filled in from its scan
/// (which must be there).
fn info_as_built(got: &ArchiveInfo) -> ArchiveInfo {
    assert!(
        !got.top_level_bytes.is_empty(),
        "the build records the top-level sizes"
    );
    ArchiveInfo {
        top_level_bytes: got.top_level_bytes.clone(),
        dumps: got.dumps.clone(),
        hot: got.hot,
        ..info()
    }
}

const LONG_DIR: usize = 150;

fn long_rel() -> Vec<u8> {
    let mut p = b"data/".to_vec();
    p.extend(std::iter::repeat_n(b'd', LONG_DIR));
    p.push(b'/');
    p.extend(std::iter::repeat_n(b'f', 150));
    p
}

/// A non-UTF-8 top-level dir holding a path longer than a tar name field.
fn latin1_long_rel() -> Vec<u8> {
    let mut p = b"\xe9t\xe9/".to_vec();
    p.extend(std::iter::repeat_n(b'n', 120));
    p
}

fn write(path: &Path, data: &[u8], mode: u32) {
    fs::write(path, data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Deterministic pseudo-random bytes (incompressible).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&seed.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// The source tree of the round-trip tests (see the brief in each line).
fn make_tree(root: &Path) {
    let p = |r: &[u8]| root.join(os(r));
    fs::create_dir_all(p(b"app/bin")).unwrap();
    fs::create_dir_all(p(b"app/empty")).unwrap();
    fs::create_dir_all(p(b"app/cache")).unwrap();
    fs::create_dir_all(p(b"app/cached")).unwrap();
    fs::create_dir_all(p(b"app/ro")).unwrap();
    fs::create_dir_all(p(b"config")).unwrap();
    fs::create_dir_all(p(b"logs")).unwrap();
    fs::create_dir_all(p(b".nuwax-rollback-1")).unwrap();
    write(&p(b"docker-compose.yml"), b"services: {}\n", 0o644);
    write(&p(b".env"), b"SECRET=1\n", 0o600);
    write(&p(b"app/bin/run.sh"), b"#!/bin/sh\necho hi\n", 0o755);
    write(&p(b"app/cache/junk"), b"excluded nested", 0o644);
    write(
        &p(b"app/cached/kept"),
        b"not excluded: only a name prefix",
        0o644,
    );
    write(&p(b"app/ro/inside"), b"in a read-only dir", 0o444);
    write(&p(b"app/empty-file"), b"", 0o640);
    write(&p(b"app/big.bin"), &noise(9 << 20, 7), 0o644);
    write(&p(b"logs/x.log"), b"excluded top-level", 0o644);
    write(&p(b".nuwax-rollback-1/junk"), b"internal", 0o644);
    symlink("bin", p(b"app/link-to-dir")).unwrap();
    symlink("/nonexistent/abs/target", p(b"app/dangling")).unwrap();
    symlink("x//y/./z/", p(b"app/odd-link")).unwrap();
    symlink(format!("/{}", "t".repeat(150)), p(b"app/long-link")).unwrap();
    fs::create_dir_all(p(b"data")).unwrap();
    write(&p(b"data/a"), b"hard linked content", 0o644);
    fs::hard_link(p(b"data/a"), p(b"data/b")).unwrap();
    fs::hard_link(p(b"data/a"), p(b"config/c")).unwrap();
    write(&p(b"data/\xff\xfe-bin"), b"non-utf8 name", 0o644);
    let long = long_rel();
    fs::create_dir_all(p(&long[..5 + LONG_DIR])).unwrap();
    write(&p(&long), b"long path", 0o600);
    fs::create_dir_all(p(b"\xe9t\xe9")).unwrap();
    write(&p(&latin1_long_rel()), b"latin-1 dir", 0o644);
    assert!(
        Command::new("mkfifo")
            .arg(p(b"app/fifo"))
            .status()
            .unwrap()
            .success()
    );

    // Fixed mtimes everywhere, directories last and deepest first.
    let mut all = Vec::new();
    collect(root, root, &mut all);
    all.sort_by_key(|(rel, _)| std::cmp::Reverse(rel.iter().filter(|&&b| b == b'/').count()));
    for (i, (rel, m)) in all.iter().enumerate() {
        let t = FileTime::from_unix_time(1_600_000_000 + i as i64 * 1000, 0);
        // filetime::set_file_times opens the path (and would block on the fifo).
        if !m.is_dir() {
            filetime::set_symlink_file_times(root.join(os(rel)), t, t).unwrap();
        }
    }
    for (i, (rel, m)) in all.iter().enumerate() {
        if m.is_dir() {
            let t = FileTime::from_unix_time(1_500_000_000 + i as i64 * 1000, 0);
            filetime::set_symlink_file_times(root.join(os(rel)), t, t).unwrap();
        }
    }
    if is_root() {
        // Foreign owners and a setuid bit: kept by a restore as root.
        write(&p(b"app/bin/suid"), b"#!/bin/sh\n", 0o755);
        std::os::unix::fs::lchown(p(b"app/bin/suid"), Some(1234), Some(5678)).unwrap();
        fs::set_permissions(p(b"app/bin/suid"), fs::Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::lchown(p(b"app/dangling"), Some(4321), Some(8765)).unwrap();
        std::os::unix::fs::lchown(p(b"app/empty"), Some(1234), Some(5678)).unwrap();
        let t = FileTime::from_unix_time(1_400_000_000, 0);
        filetime::set_symlink_file_times(p(b"app/bin/suid"), t, t).unwrap();
        filetime::set_symlink_file_times(p(b"app/bin"), t, t).unwrap();
    }
    // Read-only directory: mode set after its content exists.
    fs::set_permissions(p(b"app/ro"), fs::Permissions::from_mode(0o555)).unwrap();
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(Vec<u8>, fs::Metadata)>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let path = e.path();
        let m = fs::symlink_metadata(&path).unwrap();
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        if m.is_dir() {
            collect(root, &path, out);
        }
        out.push((rel, m));
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Node {
    kind: &'static str,
    mode: u32,
    mtime: i64,
    uid: u32,
    gid: u32,
    sha: Option<String>,
    target: Option<Vec<u8>>,
}

/// Everything a round trip must keep, by raw relative path; plus inode numbers.
fn snapshot(root: &Path) -> (BTreeMap<Vec<u8>, Node>, BTreeMap<Vec<u8>, u64>) {
    let mut all = Vec::new();
    collect(root, root, &mut all);
    let mut nodes = BTreeMap::new();
    let mut inodes = BTreeMap::new();
    for (rel, m) in all {
        let path = root.join(os(&rel));
        let ft = m.file_type();
        let (kind, sha, target) = if ft.is_dir() {
            ("dir", None, None)
        } else if ft.is_symlink() {
            let t = fs::read_link(&path).unwrap();
            ("symlink", None, Some(t.into_os_string().into_vec()))
        } else if ft.is_file() {
            let data = fs::read(&path).unwrap();
            ("file", Some(hex::encode(Sha256::digest(&data))), None)
        } else {
            ("special", None, None)
        };
        let mode = if ft.is_symlink() {
            0
        } else {
            m.mode() & 0o7777
        };
        inodes.insert(rel.clone(), m.ino());
        nodes.insert(
            rel,
            Node {
                kind,
                mode,
                mtime: m.mtime(),
                uid: m.uid(),
                gid: m.gid(),
                sha,
                target,
            },
        );
    }
    (nodes, inodes)
}

/// The source snapshot minus what the backup leaves out.
fn expected(src: &Path) -> BTreeMap<Vec<u8>, Node> {
    let (mut nodes, _) = snapshot(src);
    nodes.retain(|rel, n| {
        let excluded = [&b"logs"[..], b"app/cache", b".nuwax-rollback-1"]
            .iter()
            .any(|x| rel == x || (rel.starts_with(x) && rel[x.len()] == b'/'));
        !excluded && n.kind != "special"
    });
    nodes
}

fn opts(src: &Path, dest: &Path) -> BuildOptions {
    BuildOptions {
        source_dir: src.to_path_buf(),
        dest: dest.to_path_buf(),
        exclude: vec!["logs".parse().unwrap(), "./app/cache/".parse().unwrap()],
        level: 6,
        threads: 3,
        info: info(),
        dump_files: Vec::new(),
        encryption: None,
        previous: None,
    }
}

fn extract_opts(archive: &Path, staging: &Path, filter: TopLevelFilter) -> ExtractOptions {
    ExtractOptions {
        select: Vec::new(),
        archive: archive.to_path_buf(),
        staging: staging.to_path_buf(),
        filter,
        restore_owner: is_root(),
        threads: 2,
        expected_sha256: None,
        manifest: None,
        key: None,
        durable: false,
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    src: PathBuf,
    archive: PathBuf,
    report: BuildReport,
    notices: Vec<String>,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let src = dir.join("src");
    fs::create_dir(&src).unwrap();
    make_tree(&src);
    let archive = dir.join("backup.tar.gz");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let report = build(
        &opts(&src, &archive),
        &Progress::new(tx),
        &CancelFlag::default(),
    )
    .unwrap();
    let mut notices = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if let ProgressEvent::Notice(n) = ev {
            notices.push(n);
        }
    }
    Fixture {
        _tmp: tmp,
        dir,
        src,
        archive,
        report,
        notices,
    }
}

fn assert_same_tree(expected: &BTreeMap<Vec<u8>, Node>, got: &BTreeMap<Vec<u8>, Node>) {
    let missing: Vec<_> = expected.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !expected.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    for (k, want) in expected {
        assert_eq!(&got[k], want, "{}", String::from_utf8_lossy(k));
    }
}

/// Builds `src` into `dest` with the test options.
fn build_plain(src: &Path, dest: &Path) -> BuildReport {
    build(&opts(src, dest), &Progress::none(), &CancelFlag::default()).unwrap()
}

/// Builds `src` into `dest` with the test options and verifies the archive against the
/// checksum the build reported; panics unless both succeed.
fn build_verified(src: &Path, dest: &Path) -> (BuildReport, VerifyReport) {
    let report = build_plain(src, dest);
    let v = verify(
        dest,
        Some(&report.sha256),
        None,
        2,
        &Progress::none(),
        &CancelFlag::default(),
    )
    .unwrap();
    assert!(v.is_ok(), "{:?}", v.problems);
    (report, v)
}

/// Extracts `archive` into the new directory `out` with GNU tar.
fn gnu_extract(archive: &Path, out: &Path) {
    fs::create_dir(out).unwrap();
    let x = Command::new("tar")
        .arg("-xzf")
        .arg(archive)
        .arg("-C")
        .arg(out)
        .output()
        .unwrap();
    assert!(x.status.success(), "{}", String::from_utf8_lossy(&x.stderr));
}

#[test]
fn round_trip_through_our_extract() {
    let f = fixture();
    let want = expected(&f.src);
    assert!(!f.archive.with_extension("gz.partial").exists());
    assert_eq!(f.report.skipped_special, 1);
    assert!(
        f.notices.iter().any(|n| n.contains("app/fifo")),
        "{:?}",
        f.notices
    );
    assert_eq!(f.report.entries, want.len() as u64);
    assert_eq!(f.report.size, fs::metadata(&f.archive).unwrap().len());
    assert_eq!(
        f.report.sha256,
        hex::encode(Sha256::digest(fs::read(&f.archive).unwrap()))
    );
    assert_eq!(fs::metadata(&f.archive).unwrap().mode() & 0o777, 0o600);

    let staging = f.dir.join("stage");
    fs::create_dir(&staging).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let r = extract(
        &extract_opts(&f.archive, &staging, TopLevelFilter::All),
        &Progress::new(tx),
        &CancelFlag::default(),
    )
    .unwrap();
    let mut events = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        events.push(ev);
    }
    assert_eq!(
        events.first(),
        Some(&ProgressEvent::Phase {
            phase: crate::Phase::Extracting,
            total_bytes: Some(f.report.size),
            total_entries: None,
        })
    );
    assert_eq!(
        events.last(),
        Some(&ProgressEvent::Advance {
            bytes: f.report.size,
            entries: want.len() as u64,
            current: None,
        })
    );
    let (got, inodes) = snapshot(&staging);
    assert_same_tree(&want, &got);
    assert_eq!(inodes[&b"data/a"[..]], inodes[&b"data/b"[..]]);
    assert_ne!(inodes[&b"data/a"[..]], inodes[&b"config/c"[..]]);
    let mut tops: Vec<OsString> = [
        &b".env"[..],
        b"app",
        b"config",
        b"data",
        b"docker-compose.yml",
        b"\xe9t\xe9",
    ]
    .iter()
    .map(|b| os(b).to_owned())
    .collect();
    tops.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    assert_eq!(r.top_level, tops);
    assert_eq!(r.info, info_as_built(&r.info));
    assert_eq!(r.entries, want.len() as u64);
    assert_eq!(read_info(&f.archive).unwrap(), r.info);
}

#[test]
fn gnu_tar_lists_and_extracts_it() {
    let f = fixture();
    let list = Command::new("tar")
        .arg("-tzf")
        .arg(&f.archive)
        .output()
        .unwrap();
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let lines = list
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    assert_eq!(lines as u64, f.report.entries + 3);
    assert!(
        list.stdout
            .split(|&b| b == b'\n')
            .any(|l| l == long_rel().as_slice())
    );

    let out = f.dir.join("gnu");
    gnu_extract(&f.archive, &out);
    let meta: Manifest =
        serde_json::from_slice(&fs::read(out.join(MANIFEST_PATH)).unwrap()).unwrap();
    assert_eq!(meta.entries.len() as u64, f.report.entries);
    let info_json: ArchiveInfo =
        serde_json::from_slice(&fs::read(out.join(INFO_PATH)).unwrap()).unwrap();
    assert_eq!(info_json, info_as_built(&info_json));
    fs::remove_dir_all(out.join(META_DIR)).unwrap();
    let (got, inodes) = snapshot(&out);
    assert_same_tree(&expected(&f.src), &got);
    assert_eq!(inodes[&b"data/a"[..]], inodes[&b"data/b"[..]]);
}

#[test]
fn same_input_gives_identical_archives() {
    let f = fixture();
    let second = f.dir.join("again.tar.gz");
    let mut o = opts(&f.src, &second);
    o.threads = 1;
    let r = build(&o, &Progress::none(), &CancelFlag::default()).unwrap();
    assert_eq!(r.sha256, f.report.sha256);
    assert_eq!(fs::read(&second).unwrap(), fs::read(&f.archive).unwrap());
}

#[test]
fn filters_take_only_their_top_level_items() {
    let f = fixture();
    let want = expected(&f.src);
    let only = f.dir.join("only");
    fs::create_dir(&only).unwrap();
    let r = extract(
        &extract_opts(
            &f.archive,
            &only,
            TopLevelFilter::Only(vec!["data".into(), "nope".into()]),
        ),
        &Progress::none(),
        &CancelFlag::default(),
    )
    .unwrap();
    assert_eq!(r.top_level, vec![OsString::from("data")]);
    let (got, _) = snapshot(&only);
    let mut w = want.clone();
    w.retain(|k, _| k.starts_with(b"data"));
    assert_same_tree(&w, &got);

    let except = f.dir.join("except");
    fs::create_dir(&except).unwrap();
    let r = extract(
        &extract_opts(
            &f.archive,
            &except,
            TopLevelFilter::AllExcept(vec!["data".into(), "app".into()]),
        ),
        &Progress::none(),
        &CancelFlag::default(),
    )
    .unwrap();
    assert!(!r.top_level.contains(&OsString::from("data")));
    let (got, _) = snapshot(&except);
    let mut w = want;
    w.retain(|k, _| !k.starts_with(b"data") && !k.starts_with(b"app"));
    assert_same_tree(&w, &got);
}

#[test]
fn extract_needs_an_empty_staging_dir() {
    let f = fixture();
    let staging = f.dir.join("stage");
    fs::create_dir(&staging).unwrap();
    fs::write(staging.join("x"), b"").unwrap();
    let e = extract(
        &extract_opts(&f.archive, &staging, TopLevelFilter::All),
        &Progress::none(),
        &CancelFlag::default(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Usage(_)), "{e}");
}

#[test]
fn verify_accepts_a_good_archive() {
    let f = fixture();
    let r = verify(
        &f.archive,
        Some(&f.report.sha256.to_uppercase()),
        None,
        2,
        &Progress::none(),
        &CancelFlag::default(),
    )
    .unwrap();
    assert!(r.is_ok(), "{:?}", r.problems);
    assert_eq!(r.checksum_matches, Some(true));
    assert_eq!(r.sha256, f.report.sha256);
    assert_eq!(r.entries, f.report.entries);
    assert_eq!(r.info, r.info.as_ref().map(info_as_built));
    assert!(r.files_checked > 5);
    let r = verify(
        &f.archive,
        Some("00"),
        None,
        0,
        &Progress::none(),
        &CancelFlag::default(),
    )
    .unwrap();
    assert_eq!(r.checksum_matches, Some(false));
    assert!(!r.is_ok());
}

fn verify_bytes(dir: &Path, name: &str, bytes: &[u8]) -> VerifyReport {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    verify(&p, None, None, 2, &Progress::none(), &CancelFlag::default()).unwrap()
}

fn extract_bytes(dir: &Path, name: &str, bytes: &[u8]) -> crate::Result<ExtractReport> {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    let staging = dir.join(format!("{name}.stage"));
    fs::create_dir(&staging).unwrap();
    extract(
        &extract_opts(&p, &staging, TopLevelFilter::All),
        &Progress::none(),
        &CancelFlag::default(),
    )
}

#[test]
fn damaged_archives_are_reported() {
    let f = fixture();
    let good = fs::read(&f.archive).unwrap();
    let n = good.len();
    let members = pgzip::member_offsets(&fs::File::open(&f.archive).unwrap())
        .unwrap()
        .expect("indexed members");
    assert!(members.len() >= 3, "{members:?}");
    let (last_member, _) = *members.last().unwrap();

    // Byte 12 is the first byte of the `NX` subfield id: a reader then takes the member for an
    // ordinary one and the content is still intact, so only the archive checksum changes.
    let mut bad = good.clone();
    bad[12] ^= 0x40;
    let p = f.dir.join("flip12");
    fs::write(&p, &bad).unwrap();
    let r = verify(
        &p,
        Some(&f.report.sha256),
        None,
        2,
        &Progress::none(),
        &CancelFlag::default(),
    )
    .unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.checksum_matches, Some(false));

    let mut flips = vec![3, 16, 30, n / 3, n / 2, n - 12, n - 5, n - 1];
    flips.push(last_member as usize + 40);
    for at in flips {
        let mut bad = good.clone();
        bad[at] ^= 0x40;
        let r = verify_bytes(&f.dir, &format!("flip{at}"), &bad);
        assert!(!r.problems.is_empty(), "flip at {at} not detected");
        let e = extract_bytes(&f.dir, &format!("xflip{at}"), &bad).unwrap_err();
        assert!(
            matches!(e.kind(), crate::ErrorKind::Integrity),
            "flip {at}: {e}"
        );
    }
    for len in [
        0,
        5,
        100,
        n / 4,
        n / 2,
        n - 9,
        n - 1,
        last_member as usize,
        members[1].0 as usize,
    ] {
        let r = verify_bytes(&f.dir, &format!("cut{len}"), &good[..len]);
        assert!(!r.problems.is_empty(), "truncation at {len} not detected");
        let e = extract_bytes(&f.dir, &format!("xcut{len}"), &good[..len]).unwrap_err();
        assert!(
            matches!(e.kind(), crate::ErrorKind::Integrity),
            "cut {len}: {e}"
        );
    }
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"garbage");
    assert!(
        !verify_bytes(&f.dir, "trailing", &trailing)
            .problems
            .is_empty()
    );
}

// ---- crafted archives -------------------------------------------------------------------

// One crafting module for every archive test (also included by package.rs's tests,
// tests/fuzz_archive.rs and the root tests' archutil).
#[path = "../../tests/support/craft.rs"]
#[allow(clippy::duplicate_mod)]
mod craft;

use craft::RawEntry as Raw;

fn raw(path: &[u8], kind: tar::EntryType, data: &[u8], link: Option<&[u8]>) -> Raw {
    Raw::new(path, kind, data, link)
}

fn file(path: &[u8], data: &[u8]) -> Raw {
    Raw::file(path, data)
}

fn head() -> Vec<Raw> {
    vec![
        raw(b".nuwax-backup/", tar::EntryType::Directory, b"", None),
        file(INFO_PATH.as_bytes(), &serde_json::to_vec(&info()).unwrap()),
    ]
}

/// The manifest a correct builder would write for `entries` (metadata entries skipped).
fn manifest_for(entries: &[Raw]) -> Raw {
    let mut m = Manifest {
        info: info(),
        entries: vec![],
        layout: None,
        spans: Vec::new(),
    };
    for e in entries
        .iter()
        .filter(|e| !e.path.starts_with(b".nuwax-backup"))
    {
        let kind = match e.kind() {
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink,
            tar::EntryType::Link => EntryKind::Hardlink,
            _ => EntryKind::File,
        };
        let path = e.path.strip_suffix(b"/").unwrap_or(&e.path);
        let (p, ph) = encode_bytes(path);
        let (t, th) = e.link.as_deref().map_or((None, None), encode_bytes);
        m.entries.push(ManifestEntry {
            path: p,
            path_hex: ph,
            kind,
            size: e.data.len() as u64,
            mode: e.mode,
            uid: 0,
            gid: 0,
            mtime: 0,
            sha256: (kind == EntryKind::File).then(|| hex::encode(Sha256::digest(&e.data))),
            target: t,
            target_hex: th,
            stat: None,
        });
    }
    file(MANIFEST_PATH.as_bytes(), &serde_json::to_vec(&m).unwrap())
}

fn with_manifest(mut entries: Vec<Raw>) -> Vec<u8> {
    let m = manifest_for(&entries);
    entries.push(m);
    craft::pack(&entries)
}

#[test]
fn a_foreign_gzip_of_a_valid_archive_is_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut e = head();
    e.push(raw(b"d/", tar::EntryType::Directory, b"", None));
    e.push(file(b"d/f", b"hello"));
    e.push(raw(b"d/h", tar::EntryType::Link, b"", Some(b"d/f")));
    e.push(raw(
        b"d/s",
        tar::EntryType::Symlink,
        b"",
        Some(b"../../anywhere"),
    ));
    let bytes = with_manifest(e);
    let r = verify_bytes(tmp.path(), "ok.tar.gz", &bytes);
    assert!(r.is_ok(), "{:?}", r.problems);
    assert_eq!(r.files_checked, 1);
    let x = extract_bytes(tmp.path(), "ok2.tar.gz", &bytes).unwrap();
    assert_eq!(x.entries, 4);
    let s = tmp.path().join("ok2.tar.gz.stage");
    assert_eq!(fs::read(s.join("d/h")).unwrap(), b"hello");
    assert_eq!(
        fs::read_link(s.join("d/s")).unwrap(),
        Path::new("../../anywhere")
    );
}

#[test]
fn missing_or_wrong_manifest_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let mut e = head();
    e.push(file(b"f", b"content"));
    let no_manifest = craft::pack(&e);
    let r = verify_bytes(tmp.path(), "nm.tar.gz", &no_manifest);
    assert!(
        r.problems
            .iter()
            .any(|p| p.contains("manifest.json is missing")),
        "{:?}",
        r.problems
    );
    let err = extract_bytes(tmp.path(), "nm2.tar.gz", &no_manifest).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");

    // Manifest with a wrong content hash.
    let mut m = manifest_for(&e);
    let mut man: Manifest = serde_json::from_slice(&m.data).unwrap();
    man.entries[0].sha256 = Some(hex::encode(Sha256::digest(b"other")));
    m.data = serde_json::to_vec(&man).unwrap();
    let mut bad = e;
    bad.push(m);
    let bytes = craft::pack(&bad);
    let r = verify_bytes(tmp.path(), "mm.tar.gz", &bytes);
    assert!(
        r.problems
            .iter()
            .any(|p| p.contains("\"f\"") && p.contains("SHA-256")),
        "{:?}",
        r.problems
    );
    let err = extract_bytes(tmp.path(), "mm2.tar.gz", &bytes).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("\"f\""), "{err}");

    // An entry the manifest does not list, and one it lists that is missing.
    let mut e = head();
    e.push(file(b"f", b"content"));
    let m = manifest_for(&e);
    e[2] = file(b"g", b"content");
    e.push(m);
    let r = verify_bytes(tmp.path(), "mx.tar.gz", &craft::pack(&e));
    assert_eq!(r.problems.len(), 2, "{:?}", r.problems);

    // No info.json first.
    let e = vec![file(b"f", b"x")];
    let r = verify_bytes(tmp.path(), "ni.tar.gz", &with_manifest(e));
    assert!(!r.problems.is_empty());
    let p = tmp.path().join("ni.tar.gz");
    assert!(matches!(read_info(&p), Err(Error::Corrupt { .. })));
}

/// Each hostile archive must be refused, with nothing written outside the staging dir.
#[test]
fn hostile_archives_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path();
    let witness = parent.join("witness");
    fs::write(&witness, b"untouched").unwrap();
    let outside = parent.join("outside");
    fs::write(&outside, b"outside").unwrap();
    let abs = format!("/tmp/nuwax-test-abs-{}", std::process::id());

    type Case = (&'static str, Vec<Raw>);
    let cases: Vec<Case> = vec![
        ("dotdot", vec![file(b"../witness", b"pwned")]),
        ("dotdot-nested", vec![file(b"a/../../witness", b"pwned")]),
        ("absolute", vec![file(abs.as_bytes(), b"pwned")]),
        (
            "through-symlink",
            vec![
                raw(b"link", tar::EntryType::Symlink, b"", Some(b"..")),
                file(b"link/witness", b"pwned"),
            ],
        ),
        (
            "through-abs-symlink",
            vec![
                raw(
                    b"link",
                    tar::EntryType::Symlink,
                    b"",
                    Some(parent.as_os_str().as_bytes()),
                ),
                file(b"link/witness", b"pwned"),
            ],
        ),
        (
            "hardlink-etc-passwd",
            vec![raw(b"h", tar::EntryType::Link, b"", Some(b"/etc/passwd"))],
        ),
        (
            "hardlink-outside",
            vec![raw(b"h", tar::EntryType::Link, b"", Some(b"../outside"))],
        ),
        (
            "hardlink-to-symlink",
            vec![
                raw(b"s", tar::EntryType::Symlink, b"", Some(b"../outside")),
                raw(b"h", tar::EntryType::Link, b"", Some(b"s")),
            ],
        ),
        (
            "char-device",
            vec![raw(b"null", tar::EntryType::Char, b"", None)],
        ),
        ("fifo", vec![raw(b"p", tar::EntryType::Fifo, b"", None)]),
        (
            "duplicate",
            vec![file(b"a", b"first"), file(b"a", b"second")],
        ),
        (
            "file-then-dir-child",
            vec![file(b"a", b"x"), file(b"a/b", b"y")],
        ),
        ("reserved-name", vec![file(b".nuwax-rollback-1/undo", b"x")]),
        ("empty-component", vec![file(b"a//b", b"x")]),
    ];
    for (name, entries) in cases {
        let mut all = head();
        all.extend(entries);
        let bytes = with_manifest(all);
        let err = extract_bytes(parent, &format!("{name}.tar.gz"), &bytes).unwrap_err();
        assert!(
            matches!(err, Error::UnsafeEntry { .. }),
            "{name}: expected UnsafeEntry, got {err}"
        );
        let r = verify_bytes(parent, &format!("{name}.v.tar.gz"), &bytes);
        assert!(
            r.problems.iter().any(|p| p.contains("unsafe entry")),
            "{name}: {:?}",
            r.problems
        );
        assert_eq!(fs::read(&witness).unwrap(), b"untouched", "{name}");
        assert_eq!(fs::metadata(&outside).unwrap().nlink(), 1, "{name}");
        assert!(!Path::new(&abs).exists(), "{name}");
        assert!(!parent.join("null").exists() && !parent.join("h").exists());
    }
    // Nothing but our own files, archives and staging dirs appeared next to staging.
    for e in fs::read_dir(parent).unwrap() {
        let n = e.unwrap().file_name().into_string().unwrap();
        assert!(
            n == "witness" || n == "outside" || n.ends_with(".tar.gz") || n.ends_with(".stage"),
            "{n}"
        );
    }
}

// ---- build failures ---------------------------------------------------------------------

fn small_tree(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    fs::create_dir_all(src.join("data")).unwrap();
    fs::write(src.join("data/a"), b"aaaa").unwrap();
    fs::write(src.join("data/b"), b"bbbb").unwrap();
    src
}

/// The error of a build of `src` into `dest` when `hook` runs between the scan and the write.
fn fails_after_scan(src: &Path, dest: &Path, hook: &mut dyn FnMut()) -> Error {
    build::build_inner(
        &opts(src, dest),
        None,
        &Progress::none(),
        &CancelFlag::default(),
        hook,
    )
    .unwrap_err()
}

fn append_to(path: &Path) {
    fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(b"more")
        .unwrap();
}

fn no_leftovers(dest: &Path) {
    let partial = PathBuf::from(format!("{}.partial", dest.display()));
    assert!(!partial.exists(), "partial left behind");
    assert!(!dest.exists(), "archive created despite the error");
}

#[test]
fn a_file_removed_after_the_scan_fails_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let src = small_tree(tmp.path());
    let dest = tmp.path().join("b.tar.gz");
    let victim = src.join("data/b");
    let err = fails_after_scan(&src, &dest, &mut || fs::remove_file(&victim).unwrap());
    assert!(matches!(err, Error::SourceChanged { .. }), "{err}");
    assert!(err.to_string().contains("data/b"), "{err}");
    no_leftovers(&dest);
}

#[test]
fn a_file_that_grows_fails_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let src = small_tree(tmp.path());
    let dest = tmp.path().join("b.tar.gz");
    let victim = src.join("data/a");
    let err = fails_after_scan(&src, &dest, &mut || append_to(&victim));
    assert!(matches!(err, Error::SourceChanged { .. }), "{err}");
    assert!(err.to_string().contains("data/a"), "{err}");
    no_leftovers(&dest);
}

#[test]
fn cancel_and_unreadable_files_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = small_tree(tmp.path());
    let dest = tmp.path().join("b.tar.gz");
    let cancel = CancelFlag::default();
    let c2 = cancel.clone();
    let err = build::build_inner(
        &opts(&src, &dest),
        None,
        &Progress::none(),
        &cancel,
        &mut || c2.cancel(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Interrupted), "{err}");
    no_leftovers(&dest);

    if !is_root() {
        fs::set_permissions(src.join("data/b"), fs::Permissions::from_mode(0o000)).unwrap();
        let err = build(
            &opts(&src, &dest),
            &Progress::none(),
            &CancelFlag::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("data/b"), "{err}");
        no_leftovers(&dest);
        fs::set_permissions(src.join("data/b"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(src.join("data"), fs::Permissions::from_mode(0o000)).unwrap();
        let err = build(
            &opts(&src, &dest),
            &Progress::none(),
            &CancelFlag::default(),
        )
        .unwrap_err();
        fs::set_permissions(src.join("data"), fs::Permissions::from_mode(0o755)).unwrap();
        assert!(err.to_string().contains("data"), "{err}");
        no_leftovers(&dest);
    }
}

#[test]
fn refuses_existing_dest_and_bad_excludes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = small_tree(tmp.path());
    let dest = tmp.path().join("b.tar.gz");
    fs::write(&dest, b"precious").unwrap();
    let err = build(
        &opts(&src, &dest),
        &Progress::none(),
        &CancelFlag::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err}");
    assert_eq!(fs::read(&dest).unwrap(), b"precious");
    let dest2 = tmp.path().join("c.tar.gz");
    // An unclean exclude cannot even be constructed: the type is the validation.
    for bad in ["../x", "/abs", "", "."] {
        assert!(bad.parse::<crate::relpath::RelPath>().is_err(), "{bad:?}");
    }
    no_leftovers(&dest2);
}

#[test]
fn an_archive_inside_the_source_does_not_include_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let src = small_tree(tmp.path());
    fs::create_dir(src.join("backups")).unwrap();
    let dest = src.join("backups/b.tar.gz");
    let (r, _) = build_verified(&src, &dest);
    // data, data/a, data/b, backups
    assert_eq!(r.entries, 4);
}

#[test]
fn read_info_reads_only_the_head() {
    let tmp = tempfile::tempdir().unwrap();
    let mut e = head();
    e.push(file(b"f", &noise(1 << 20, 3)));
    // No manifest and a damaged tail: read_info does not care.
    let mut bytes = craft::pack(&e);
    let n = bytes.len();
    bytes.truncate(n - 100);
    let p = tmp.path().join("a.tar.gz");
    fs::write(&p, &bytes).unwrap();
    assert_eq!(read_info(&p).unwrap(), info());
    fs::write(&p, b"not gzip").unwrap();
    assert!(matches!(read_info(&p), Err(Error::Corrupt { .. })));
    assert!(matches!(
        read_info(&tmp.path().join("missing")),
        Err(Error::Io { .. })
    ));
}

#[test]
fn raw_names_survive() {
    // Sanity of the helpers above: a non-UTF-8 and a 300-byte name round-trip via craft.
    let tmp = tempfile::tempdir().unwrap();
    let mut e = head();
    e.push(raw(b"\xff/", tar::EntryType::Directory, b"", None));
    let mut long = b"\xff/".to_vec();
    long.extend(std::iter::repeat_n(b'z', 250));
    e.push(file(&long, b"x"));
    let bytes = with_manifest(e);
    let r = verify_bytes(tmp.path(), "n.tar.gz", &bytes);
    assert!(r.is_ok(), "{:?}", r.problems);
    extract_bytes(tmp.path(), "n2.tar.gz", &bytes).unwrap();
    let mut buf = Vec::new();
    fs::File::open(tmp.path().join("n2.tar.gz.stage").join(os(&long)))
        .unwrap()
        .read_to_end(&mut buf)
        .unwrap();
    assert_eq!(buf, b"x");
}

#[test]
fn the_build_records_top_level_sizes_from_its_own_scan() {
    let tmp = tempfile::tempdir().unwrap();
    let src = small_tree(tmp.path());
    // A sparse file: 64 MiB long, a few KiB allocated; a restore keeps its holes.
    let sparse = fs::File::create(src.join("data/sparse.img")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    drop(sparse);
    let dest = tmp.path().join("s.tar.gz");
    let r = build_plain(&src, &dest);
    let info = read_info(&dest).unwrap();
    let total: u64 = info.top_level_bytes.values().sum();
    assert!(!info.top_level_bytes.is_empty());
    assert!(
        total < r.source_bytes,
        "the sparse file counts its allocated bytes, not its length: {total} vs {}",
        r.source_bytes
    );
    assert!(info.top_level_bytes.keys().any(|k| k.to_string() == "data"));
}

// ---- small files read ahead of the write pass ----------------------------------------------

/// `n` small files (0 to 70 KiB, so some have spans of their own) spread over directories,
/// with a symlink, an empty directory and a 3 MiB file among them: more files than the read
/// window holds, so the window is refilled many times.
fn wide_tree(dir: &Path, n: usize) -> (PathBuf, Vec<PathBuf>) {
    let src = dir.join("src");
    let mut files = Vec::new();
    for i in 0..n {
        let d = src.join(format!("data/pkg{:03}/lib{}", i / 40, i % 3));
        fs::create_dir_all(&d).unwrap();
        let p = d.join(format!("f{i:05}.js"));
        let len = if i % 97 == 0 {
            70_000
        } else {
            (i * 131) % 3000
        };
        let body: Vec<u8> = (0..len).map(|k| (k * 7 + i) as u8).collect();
        fs::write(&p, body).unwrap();
        files.push(p);
        if i == n / 2 {
            fs::write(src.join("data/big.bin"), noise(3 << 20, 7)).unwrap();
            symlink("pkg000", src.join("data/link")).unwrap();
            fs::create_dir_all(src.join("data/empty")).unwrap();
        }
    }
    (src, files)
}

#[test]
fn a_tree_wider_than_the_read_window_is_archived_whole_and_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, _) = wide_tree(tmp.path(), 5000);
    let dest = tmp.path().join("wide.tar.gz");
    let (report, r) = build_verified(&src, &dest);
    assert!(r.files_checked >= 5001, "{}", r.files_checked);

    // GNU tar gives back the same tree, and lists the entries in byte order of their paths.
    let out = tmp.path().join("gnu");
    gnu_extract(&dest, &out);
    fs::remove_dir_all(out.join(META_DIR)).unwrap();
    assert_same_tree(&expected(&src), &snapshot(&out).0);
    let list = Command::new("tar").arg("-tzf").arg(&dest).output().unwrap();
    let names: Vec<&[u8]> = list
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty() && !l.starts_with(META_DIR.as_bytes()))
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);

    // The same tree gives the same bytes, whatever the threads did.
    let again = tmp.path().join("again.tar.gz");
    let report2 = build_plain(&src, &again);
    assert_eq!(report2.sha256, report.sha256);
}

#[test]
fn the_first_file_changed_after_the_scan_is_the_one_reported_however_far_ahead_it_was_read() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, files) = wide_tree(tmp.path(), 3000);
    let dest = tmp.path().join("b.tar.gz");
    // Both are past the first window; the later one may well be read before the earlier.
    let (grows, vanishes) = (files[2100].clone(), files[2900].clone());
    let err = fails_after_scan(&src, &dest, &mut || {
        fs::remove_file(&vanishes).unwrap();
        append_to(&grows);
    });
    assert!(matches!(err, Error::SourceChanged { .. }), "{err}");
    let name = grows.file_name().unwrap().to_string_lossy().into_owned();
    assert!(err.to_string().contains(&name), "{err}");
    no_leftovers(&dest);
}
