//! Damaged and hostile archives that reach the restore path itself.
//!
//! Every archive here gets a catalog SHA-256 (and size) that matches the damaged file, so the
//! checksum step of `rollback` passes and the restore's own defences (gzip CRC/ISIZE, tar
//! structure, entry rules, the per-file manifest check) must refuse it. Each case runs
//! `rollback ID --force --no-start --rollback-data` (the widest scope) and asserts: exit 4, a
//! stderr naming the problem, the compose dir byte-for-byte unchanged, nothing changed
//! outside it, the catalog unchanged, no `.nuwax-*` work dir left, nothing written where a
//! hostile entry points; then `verify ID` exits 4 and `verify ID --json` lists a problem
//! naming it.
//!
//! What `tests/verify.rs` already has is not repeated: a flipped middle byte with a matching
//! checksum, content changed under an intact manifest (repacked), and `..` / absolute /
//! symlink-escape entries spliced in without being listed in the manifest. Here the hostile
//! entries are listed in the manifest (only the hostile property is wrong), the damage is
//! aimed (headers, trailers, member boundaries, stored blocks) and the cases within one test
//! share one backup: a failing case is reported by name and the others still run.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::archutil::{
    Member, RawEntry, fix_member_trailer, fix_tar_cksum, flipped, gunzip_all, gzip, hostile_file,
    hostile_hardlink, hostile_node, hostile_symlink, index_of, insert_listed, manifest_of,
    nx_members, pack_raw, raw_header, read_raw, register_bytes, set_data, tar_records,
};
use crate::util::{BackupRow, Fixture, TestEnv, assert_no_staging_left, assert_same_tree, exit};

/// One backup of a fixture, then changes to the live tree (a rollback would change things).
struct Bench {
    env: TestEnv,
    row: BackupRow,
    /// The archive as the tool wrote it.
    original: Vec<u8>,
}

impl Bench {
    fn new(fixture: Fixture) -> Bench {
        let env = TestEnv::with(fixture);
        let row = env.backup();
        env.mutate();
        let original = fs::read(&row.file_path).unwrap();
        Bench { env, row, original }
    }

    fn id(&self) -> String {
        self.row.id.to_string()
    }
}

/// One input that must be refused.
struct Case {
    name: String,
    /// The archive file's bytes (registered in the catalog with a matching SHA-256).
    bytes: Vec<u8>,
    /// Each must appear (case-insensitive) in the rollback's stderr.
    stderr: Vec<String>,
    /// All must appear (case-insensitive) in one problem of `verify --json`.
    problem: Vec<String>,
    /// Paths a hostile entry aims at: must not exist afterwards.
    absent: Vec<PathBuf>,
    /// Paths outside the staging dir a hostile entry aims at: lstat (incl. ctime, nlink) and
    /// for directories the listing must be unchanged. A hard link made and later removed
    /// still changes the target's ctime, so this also catches a transient write.
    unchanged: Vec<PathBuf>,
}

impl Case {
    fn new(name: impl Into<String>, bytes: Vec<u8>) -> Case {
        Case {
            name: name.into(),
            bytes,
            stderr: vec!["corrupt".into()],
            problem: Vec::new(),
            absent: Vec::new(),
            unchanged: Vec::new(),
        }
    }

    /// Replaces the stderr needles.
    fn stderr(mut self, needles: &[&str]) -> Case {
        self.stderr = needles.iter().map(|s| s.to_string()).collect();
        self
    }

    fn problem(mut self, needles: &[&str]) -> Case {
        self.problem = needles.iter().map(|s| s.to_string()).collect();
        self
    }

    fn absent(mut self, paths: impl IntoIterator<Item = PathBuf>) -> Case {
        self.absent.extend(paths);
        self
    }

    fn unchanged(mut self, paths: impl IntoIterator<Item = PathBuf>) -> Case {
        self.unchanged.extend(paths);
        self
    }

    /// For a hostile entry: the refusal names the entry and the rule in stderr and in
    /// `verify --json`.
    fn unsafe_entry(self, entry: &str, reason: &str) -> Case {
        let quoted = format!("{entry:?}");
        self.stderr(&["unsafe entry", &quoted, reason])
            .problem(&["unsafe entry", &quoted, reason])
    }
}

/// lstat fields that any write, link or unlink at `path` changes, plus a directory's listing.
#[derive(Debug, PartialEq)]
struct Probe {
    exists: bool,
    ino: u64,
    mode: u32,
    nlink: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    listing: Vec<String>,
}

fn probe(path: &Path) -> Probe {
    match fs::symlink_metadata(path) {
        Err(_) => Probe {
            exists: false,
            ino: 0,
            mode: 0,
            nlink: 0,
            size: 0,
            mtime: (0, 0),
            ctime: (0, 0),
            listing: Vec::new(),
        },
        Ok(m) => Probe {
            exists: true,
            ino: m.ino(),
            mode: m.mode(),
            nlink: m.nlink(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            listing: if m.is_dir() {
                let mut v: Vec<String> = fs::read_dir(path)
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                v.sort();
                v
            } else {
                Vec::new()
            },
        },
    }
}

/// Names in the working dir (top level) and in the storage dir.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn has_all(haystack: &str, needles: &[String]) -> bool {
    let h = haystack.to_lowercase();
    needles.iter().all(|n| h.contains(&n.to_lowercase()))
}

/// Runs one case on `b`; panics (with the case's name) on the first unmet requirement.
fn refuse(b: &Bench, c: &Case) {
    let env = &b.env;
    let id = b.id();
    let archive = Path::new(&b.row.file_path);
    register_bytes(env, &b.row, &c.bytes);

    let compose = env.snapshot_compose();
    let outside = env.snapshot_outside();
    let work = listing(&env.work);
    let stored = env.backup_files();
    let rows = env.list();
    let watched: Vec<Probe> = c.unchanged.iter().map(|p| probe(p)).collect();
    for p in &c.absent {
        assert!(
            fs::symlink_metadata(p).is_err(),
            "test setup: {} exists already",
            p.display()
        );
    }

    let out = env.rollback_data(&id);
    out.assert_code(exit::INTEGRITY);
    for n in &c.stderr {
        out.assert_stderr_has(n);
    }
    assert_same_tree(
        "compose dir after the refused rollback",
        &compose,
        &env.snapshot_compose(),
    );
    assert_same_tree("outside the compose dir", &outside, &env.snapshot_outside());
    assert_eq!(
        listing(&env.work),
        work,
        "the working dir's top level changed"
    );
    assert_eq!(env.backup_files(), stored, "the storage dir changed");
    assert_no_staging_left(env);
    assert_eq!(env.list(), rows, "the refused rollback changed the catalog");
    for p in &c.absent {
        assert!(
            fs::symlink_metadata(p).is_err(),
            "a hostile entry was written outside the staging dir: {}",
            p.display()
        );
    }
    for (p, before) in c.unchanged.iter().zip(&watched) {
        assert_eq!(
            &probe(p),
            before,
            "{} was touched (written, linked or unlinked)",
            p.display()
        );
    }
    assert_eq!(
        fs::read(archive).unwrap(),
        c.bytes,
        "the refused archive is kept as it is"
    );

    env.run(&["verify", &id]).assert_code(exit::INTEGRITY);
    let out = env.run(&["verify", &id, "--json"]);
    out.assert_code(exit::INTEGRITY);
    let doc = out.json();
    assert_eq!(doc["success"], false, "{out}");
    let result = &doc["results"][0];
    assert_eq!(result["id"], b.row.id, "{out}");
    assert_eq!(result["ok"], false, "{out}");
    let problems: Vec<String> = result["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no problems array\n{out}"))
        .iter()
        .map(|p| p.as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        !problems.is_empty(),
        "verify --json lists no problem\n{out}"
    );
    assert!(
        problems.iter().any(|p| has_all(p, &c.problem)),
        "no problem mentions all of {:?}\n{out}",
        c.problem
    );
    assert_eq!(env.list(), rows, "verify changed the catalog");
    assert_same_tree(
        "compose dir after verify",
        &compose,
        &env.snapshot_compose(),
    );
}

/// Runs every case (each on the same backup, the archive rewritten per case) and fails with
/// the list of cases that were not refused as required.
fn run_cases(b: &Bench, cases: &[Case]) {
    let mut failed = Vec::new();
    for c in cases {
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| refuse(b, c))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(format!("=== case {:?}:\n{msg}", c.name));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} cases were not refused as required:\n{}",
        failed.len(),
        cases.len(),
        failed.join("\n")
    );
}

fn member_at(members: &[Member], at: usize) -> Member {
    *members
        .iter()
        .find(|m| m.offset <= at && at < m.offset + m.len)
        .unwrap_or_else(|| panic!("no member holds offset {at}"))
}

// ---------------------------------------------------------------------------------------------
// Damaged archives

/// Cut at several offsets of a multi-member archive: nothing of it may be restored.
#[test]
fn truncated_archives_with_a_matching_checksum_are_refused() {
    let b = Bench::new(Fixture { large_file: true });
    let good = &b.original;
    let n = good.len();
    let members = nx_members(good);
    assert!(
        members.len() >= 3,
        "fixture spans several members: {members:?}"
    );
    let (first, last) = (members[0], *members.last().unwrap());
    let cuts = [
        ("inside the first gzip header", 10),
        ("inside the first member's deflate data", first.len / 2),
        (
            "inside the first member's trailer",
            first.offset + first.len - 3,
        ),
        ("exactly at the second member's start", members[1].offset),
        ("mid-archive", n / 2),
        ("exactly at the last member's start", last.offset),
        ("inside the last member", last.offset + last.len / 2),
        ("just before the last trailer", n - 9),
        ("inside the last trailer's CRC32", n - 6),
        ("inside the last trailer's ISIZE", n - 2),
        ("the last byte missing", n - 1),
    ];
    let cases: Vec<Case> = cuts
        .iter()
        .map(|(what, len)| {
            Case::new(
                format!("truncated {what} ({len} of {n} bytes)"),
                good[..*len].to_vec(),
            )
            .stderr(&["corrupt", "truncat"])
            .problem(&["truncat"])
        })
        .collect();
    run_cases(&b, &cases);
}

/// Flipped bytes in the gzip layer of the tool's own multi-member format.
#[test]
fn flipped_gzip_bytes_with_a_matching_checksum_are_refused() {
    let b = Bench::new(Fixture { large_file: true });
    let good = &b.original;
    let n = good.len();
    let members = nx_members(good);
    assert!(members.len() >= 3, "{members:?}");
    let (first, last) = (members[0], *members.last().unwrap());

    // big.ibd is noise: its chunks are stored (deflate level 0), so its bytes appear verbatim
    // in the archive and a flipped archive byte is a flipped byte of the file's body.
    let big = fs::read(b.env.path("data/mysql/big.ibd")).unwrap();
    let probe = &big[4_000_000..4_000_064];
    let at = good
        .windows(probe.len())
        .position(|w| w == probe)
        .expect("big.ibd's content is stored verbatim in the archive")
        + 32;
    let body = flipped(good, at);
    let mut body_crc_fixed = body.clone();
    fix_member_trailer(&mut body_crc_fixed, member_at(&members, at));

    let mid = members[members.len() / 2];
    let cases = vec![
        Case::new(
            format!("body byte of data/mysql/big.ibd flipped (offset {at})"),
            body,
        )
        .stderr(&["corrupt", "CRC32"])
        .problem(&["CRC32"]),
        Case::new(
            "body byte of data/mysql/big.ibd flipped, member CRC32 recomputed",
            body_crc_fixed,
        )
        .stderr(&["corrupt", "data/mysql/big.ibd", "SHA-256"])
        .problem(&["data/mysql/big.ibd", "SHA-256"]),
        Case::new(
            "CRC32 of the first member flipped",
            flipped(good, first.offset + first.len - 7),
        )
        .stderr(&["corrupt", "CRC32"])
        .problem(&["CRC32"]),
        Case::new(
            "ISIZE of the first member flipped",
            flipped(good, first.offset + first.len - 3),
        )
        .stderr(&["corrupt", "size mismatch"])
        .problem(&["size mismatch"]),
        Case::new(
            "CRC32 of a middle member flipped",
            flipped(good, mid.offset + mid.len - 6),
        )
        .stderr(&["corrupt", "CRC32"])
        .problem(&["CRC32"]),
        Case::new("CRC32 of the last member flipped", flipped(good, n - 8))
            .stderr(&["corrupt", "CRC32"])
            .problem(&["CRC32"]),
        Case::new("ISIZE of the last member flipped", flipped(good, n - 1))
            .stderr(&["corrupt", "size mismatch"])
            .problem(&["size mismatch"]),
        Case::new(
            "gzip magic of a middle member flipped",
            flipped(good, mid.offset + 1),
        )
        .stderr(&["corrupt", "gzip member"])
        .problem(&["gzip member"]),
        Case::new(
            "deflate data of the last member flipped",
            flipped(good, last.offset + last.len - 12),
        )
        // What the damaged deflate data decodes to depends on the bytes (which differ per
        // run: timestamps, project name); every outcome names the gzip layer.
        .stderr(&["corrupt", "gzip"])
        .problem(&["gzip"]),
    ];
    run_cases(&b, &cases);
}

/// Damage inside the tar layer (the gzip layer recompressed, so it is clean): a header with a
/// stale checksum, and headers whose checksum was fixed after a field changed.
#[test]
fn damaged_tar_headers_with_a_matching_checksum_are_refused() {
    let b = Bench::new(Fixture::default());
    let tar = gunzip_all(Path::new(&b.row.file_path));
    let recs = tar_records(&tar);
    let first = recs
        .iter()
        .find(|r| r.typeflag == b'0' && !r.name.starts_with(b".nuwax-backup"))
        .expect("a regular file entry")
        .clone();
    let name = String::from_utf8(first.name.clone()).unwrap();
    assert!(
        first.size > 0,
        "{name:?} has content (a size change desynchronises the stream)"
    );
    let o = first.offset;
    // Offsets of the ustar fields.
    let (mode_at, size_at, mtime_at, type_at) = (o + 100, o + 124, o + 136, o + 156);
    let last_name_byte = o + first.name.len() - 1;

    let edit = |at: usize, fix: bool, set: Option<u8>| {
        let mut t = tar.clone();
        match set {
            Some(v) => t[at] = v,
            None => t[at] ^= 0x01,
        }
        if fix {
            fix_tar_cksum(&mut t, o);
        }
        gzip(&t)
    };
    let mut renamed = first.name.clone();
    *renamed.last_mut().unwrap() ^= 0x01;
    let renamed = String::from_utf8(renamed).unwrap();
    // The last octal digit of each field (mode: 7 digits + NUL; size, mtime: 11 + NUL), its
    // lowest bit flipped.
    let mode_digit = mode_at + 6;
    let size_digit = size_at + 10;
    let mtime_digit = mtime_at + 10;

    let cases = vec![
        Case::new(
            format!("header of {name:?}: name byte flipped, stale checksum"),
            edit(last_name_byte, false, None),
        )
        .stderr(&["corrupt", "header checksum mismatch"])
        .problem(&["header checksum mismatch"]),
        Case::new(
            format!("header of {name:?}: renamed to {renamed:?}, checksum fixed"),
            edit(last_name_byte, true, None),
        )
        .stderr(&["corrupt", &renamed])
        .problem(&[&renamed]),
        Case::new(
            format!("header of {name:?}: mode bit flipped, checksum fixed"),
            edit(mode_digit, true, None),
        )
        .stderr(&["corrupt", &name, "mode"])
        .problem(&[&name, "mode"]),
        Case::new(
            format!("header of {name:?}: size digit flipped, checksum fixed"),
            edit(size_digit, true, None),
        )
        .stderr(&["corrupt", &name, "size"])
        .problem(&[&name, "size"]),
        Case::new(
            format!("header of {name:?}: mtime digit flipped, checksum fixed"),
            edit(mtime_digit, true, None),
        )
        .stderr(&["corrupt", &name, "mtime"])
        .problem(&[&name, "mtime"]),
        Case::new(
            format!("header of {name:?}: type changed to a character device, checksum fixed"),
            edit(type_at, true, Some(b'3')),
        )
        .unsafe_entry(&name, "character device"),
    ];
    run_cases(&b, &cases);
}

/// The manifest gone, unreadable, or disagreeing with the content (repacked, checksum fixed).
#[test]
fn missing_or_wrong_manifests_with_a_matching_checksum_are_refused() {
    let b = Bench::new(Fixture::default());
    let path = Path::new(&b.row.file_path);
    let manifest_path = ".nuwax-backup/manifest.json";

    let mut no_manifest = read_raw(path);
    let i = index_of(&no_manifest, manifest_path);
    no_manifest.remove(i);

    let with_manifest = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut e = read_raw(path);
        let mut m = manifest_of(&e);
        edit(&mut m);
        set_data(&mut e, manifest_path, serde_json::to_vec(&m).unwrap());
        pack_raw(&e)
    };
    let entry = |m: &mut serde_json::Value, p: &str| -> usize {
        m["entries"]
            .as_array()
            .unwrap()
            .iter()
            .position(|e| e["path"] == p)
            .unwrap_or_else(|| panic!("manifest has no {p}"))
    };
    let wrong_hash = with_manifest(&|m| {
        let i = entry(m, "app/VERSION");
        m["entries"][i]["sha256"] = hex::encode(Sha256::digest(b"tampered\n")).into();
    });
    let unlisted = with_manifest(&|m| {
        let i = entry(m, "app/VERSION");
        m["entries"].as_array_mut().unwrap().remove(i);
    });
    let ghost = with_manifest(&|m| {
        let i = entry(m, "app/VERSION");
        let mut g = m["entries"][i].clone();
        g["path"] = "app/ghost".into();
        m["entries"].as_array_mut().unwrap().push(g);
    });
    let other_info = with_manifest(&|m| {
        m["info"]["service_version"] = "9.9.9".into();
    });
    let mut garbage = read_raw(path);
    let text = garbage[index_of(&garbage, manifest_path)].data.clone();
    set_data(&mut garbage, manifest_path, text[..text.len() / 2].to_vec());

    let cases = vec![
        Case::new("repacked without manifest.json", pack_raw(&no_manifest))
            .stderr(&["corrupt", "manifest.json is missing"])
            .problem(&["manifest.json is missing"]),
        Case::new("manifest lists a wrong SHA-256 for app/VERSION", wrong_hash)
            .stderr(&["corrupt", "app/VERSION", "SHA-256"])
            .problem(&["app/VERSION", "SHA-256"]),
        Case::new("manifest does not list app/VERSION", unlisted)
            .stderr(&["corrupt", "app/VERSION", "not in the manifest"])
            .problem(&["app/VERSION", "not in the manifest"]),
        Case::new("manifest lists an entry the archive lacks", ghost)
            .stderr(&["corrupt", "app/ghost", "missing"])
            .problem(&["app/ghost", "missing"]),
        Case::new("manifest info differs from info.json", other_info)
            .stderr(&["corrupt", "differ"])
            .problem(&["differ"]),
        Case::new(
            "manifest.json cut in half (invalid JSON)",
            pack_raw(&garbage),
        )
        .stderr(&["corrupt", "manifest.json is invalid"])
        .problem(&["manifest.json is invalid"]),
    ];
    run_cases(&b, &cases);
}

// ---------------------------------------------------------------------------------------------
// Hostile archives

/// The tool's own archive with `evil` added before the manifest and listed in it.
fn hostile(b: &Bench, evil: Vec<RawEntry>) -> Vec<u8> {
    let mut e = read_raw(Path::new(&b.row.file_path));
    insert_listed(&mut e, evil);
    pack_raw(&e)
}

/// A file at `/tmp/...` with a name no other test uses.
fn tmp_path(what: &str) -> PathBuf {
    PathBuf::from(format!(
        "/tmp/nuwax-hostile-{}-{}-{what}",
        std::process::id(),
        crate::util::unique_project()
    ))
}

/// Removes its paths when the test ends.
struct TmpPaths(Vec<PathBuf>);

impl Drop for TmpPaths {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_dir_all(p).or_else(|_| fs::remove_file(p));
        }
    }
}

/// Paths that escape the staging dir: `..` entries and absolute names.
#[test]
fn path_escapes_listed_in_the_manifest_are_refused() {
    let b = Bench::new(Fixture::default());
    let env = &b.env;
    let abs = tmp_path("abs.txt");
    let _cleanup = TmpPaths(vec![abs.clone()]);
    let abs_name = abs.to_str().unwrap().to_owned();
    // The staging dir is <compose>/.nuwax-rollback-N/staged: three `..` reach the working dir.
    let escape3 = "../../../hostile-escape.txt";
    let escape_nested = "app/../../../../hostile-escape-nested.txt";
    let near = |name: &str| {
        vec![
            env.compose_dir().join(name),
            env.work.join(name),
            env.root.join(name),
        ]
    };
    let cases = vec![
        Case::new(
            "`../../../` entry",
            hostile(&b, vec![hostile_file(escape3, b"pwned\n")]),
        )
        .unsafe_entry(escape3, "`..` path component")
        .absent(near("hostile-escape.txt")),
        Case::new(
            "`..` inside a path",
            hostile(&b, vec![hostile_file(escape_nested, b"pwned\n")]),
        )
        .unsafe_entry(escape_nested, "`..` path component")
        .absent(near("hostile-escape-nested.txt")),
        Case::new(
            "absolute /tmp path",
            hostile(&b, vec![hostile_file(&abs_name, b"pwned\n")]),
        )
        .unsafe_entry(&abs_name, "absolute path")
        .absent([abs.clone()]),
    ];
    run_cases(&b, &cases);
}

/// A symlink that points outside, then something through it or over it.
#[test]
fn writes_through_or_over_a_symlink_are_refused() {
    let b = Bench::new(Fixture::default());
    let x = tmp_path("x");
    fs::create_dir(&x).unwrap();
    let victim = tmp_path("victim.txt");
    fs::write(&victim, b"must not change\n").unwrap();
    let _cleanup = TmpPaths(vec![x.clone(), victim.clone()]);
    let xs = x.to_str().unwrap();
    let vs = victim.to_str().unwrap();
    let mut subdir = raw_header(b"app/link2/sub/", tar::EntryType::Directory, 0, 0o755);
    subdir.set_cksum();
    let cases = vec![
        Case::new(
            format!("symlink app/link -> {xs}, then file app/link/evil"),
            hostile(
                &b,
                vec![
                    hostile_symlink("app/link", xs),
                    hostile_file("app/link/evil", b"pwned\n"),
                ],
            ),
        )
        .unsafe_entry("app/link/evil", "beneath the symlink")
        .absent([x.join("evil")])
        .unchanged([x.clone()]),
        Case::new(
            format!("symlink app/link2 -> {xs}, then dir app/link2/sub/"),
            hostile(
                &b,
                vec![
                    hostile_symlink("app/link2", xs),
                    RawEntry {
                        header: subdir,
                        data: Vec::new(),
                    },
                ],
            ),
        )
        .unsafe_entry("app/link2/sub", "beneath the symlink")
        .absent([x.join("sub")])
        .unchanged([x.clone()]),
        Case::new(
            format!("symlink app/over -> {vs}, then file app/over (write through the link)"),
            hostile(
                &b,
                vec![
                    hostile_symlink("app/over", vs),
                    hostile_file("app/over", b"pwned\n"),
                ],
            ),
        )
        .unsafe_entry("app/over", "duplicate entry")
        .unchanged([victim.clone()]),
    ];
    run_cases(&b, &cases);
    assert_eq!(fs::read(&victim).unwrap(), b"must not change\n");
}

/// Hard links to paths outside the archive, and to a symlink.
#[test]
fn hard_links_outside_the_archive_are_refused() {
    let b = Bench::new(Fixture::default());
    let env = &b.env;
    // `../../outside` from the staging dir is <compose>/outside.
    let outside = env.compose_dir().join("outside");
    crate::util::write(&outside, b"a live file\n", 0o644);
    let witness = env.work.join("witness.txt");
    let passwd = PathBuf::from("/etc/passwd");
    let cases = vec![
        Case::new(
            "hard link app/h -> ../../outside",
            hostile(&b, vec![hostile_hardlink("app/h", "../../outside")]),
        )
        .unsafe_entry("app/h", "hard link target")
        .unchanged([outside.clone()]),
        Case::new(
            "hard link app/h -> /etc/passwd",
            hostile(&b, vec![hostile_hardlink("app/h", "/etc/passwd")]),
        )
        .unsafe_entry("app/h", "hard link target")
        .unchanged([passwd.clone()]),
        Case::new(
            "hard link app/h -> ../../../witness.txt (the working dir's witness)",
            hostile(&b, vec![hostile_hardlink("app/h", "../../../witness.txt")]),
        )
        .unsafe_entry("app/h", "hard link target")
        .unchanged([witness.clone()]),
        Case::new(
            "symlink app/s -> /etc/passwd, then hard link app/h -> app/s",
            hostile(
                &b,
                vec![
                    hostile_symlink("app/s", "/etc/passwd"),
                    hostile_hardlink("app/h", "app/s"),
                ],
            ),
        )
        .unsafe_entry("app/h", "not an earlier regular file")
        .unchanged([passwd.clone()]),
    ];
    run_cases(&b, &cases);
}

/// Device nodes, fifos, duplicates and our own reserved names.
#[test]
fn special_files_duplicates_and_reserved_names_are_refused() {
    let b = Bench::new(Fixture::default());
    let cases = vec![
        Case::new(
            "character device app/null (1,3)",
            hostile(
                &b,
                vec![hostile_node("app/null", tar::EntryType::Char, 1, 3)],
            ),
        )
        .unsafe_entry("app/null", "character device"),
        Case::new(
            "block device app/sda (8,0)",
            hostile(
                &b,
                vec![hostile_node("app/sda", tar::EntryType::Block, 8, 0)],
            ),
        )
        .unsafe_entry("app/sda", "block device"),
        Case::new(
            "fifo app/fifo",
            hostile(
                &b,
                vec![hostile_node("app/fifo", tar::EntryType::Fifo, 0, 0)],
            ),
        )
        .unsafe_entry("app/fifo", "fifo"),
        Case::new(
            "app/VERSION twice, different content",
            hostile(&b, vec![hostile_file("app/VERSION", b"6.6.6\n")]),
        )
        .unsafe_entry("app/VERSION", "duplicate entry"),
        Case::new(
            "directory app/bin again as a regular file",
            hostile(&b, vec![hostile_file("app/bin", b"not a dir\n")]),
        )
        .unsafe_entry("app/bin", "duplicate entry"),
        Case::new(
            "entry inside a reserved .nuwax-rollback-1/ dir",
            hostile(&b, vec![hostile_file(".nuwax-rollback-1/undo/app", b"x\n")]),
        )
        .unsafe_entry(".nuwax-rollback-1/undo/app", "reserved"),
    ];
    run_cases(&b, &cases);
}
