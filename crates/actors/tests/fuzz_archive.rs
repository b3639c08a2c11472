//! Property-based fuzzing of the archive reader (`verify`, `extract`, `read_info`) and of the
//! metadata parsers (`manifest.json`, `info.json`).
//!
//! Properties, each over random inputs:
//! - (a) an archive built by `archive::build`, then mutated (bit flips, truncation, spliced,
//!   overwritten, duplicated or removed ranges; positions biased towards the gzip headers, the
//!   member boundaries and the trailer): `verify` never panics and returns a report; `extract`
//!   never panics, never writes outside its staging dir, fails only with an integrity error,
//!   and succeeds exactly when `verify` finds no problem, in which case the staged tree is the
//!   source tree (content, kinds, modes, mtimes, link targets, hard links). Bytes that carry
//!   no content (gzip header MTIME/XFL/OS) are checked separately: changing them changes
//!   nothing.
//! - (b) tar streams made from random entry lists (paths with `..`, `.`, empty components,
//!   absolute prefixes, long and non-UTF-8 names, reserved names; every entry type byte incl.
//!   devices, fifos, pax headers with their own `path=`; random link targets), with or without
//!   the metadata entries and a manifest that lists them, gzipped as one or two members: the
//!   same safety properties, and on success every entry is staged as it was described.
//! - (c) arbitrary and JSON-shaped bytes as `manifest.json` and as `info.json` of an otherwise
//!   valid archive: refused (never a panic) unless the bytes are a valid document that agrees
//!   with the archive.
//!
//! Bounded for CI (64 cases per property by default); `PROPTEST_CASES=N` runs longer:
//! `PROPTEST_CASES=10000 cargo test -p nuwax-actors --test fuzz_archive --release`.
//! "Outside the staging dir" is checked on the whole sandbox around it (a deep chain of
//! parent dirs so that every `..` a generated path can hold stays inside the sandbox), with
//! lstat metadata incl. ctime and link counts, so a write, link or unlink that was undone
//! again still shows.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nuwax_actors::archive::{
    self, ArchiveInfo, BuildOptions, CancelFlag, EntryKind, ExtractOptions, Manifest,
    ManifestEntry, TopLevelFilter, encode_bytes,
};
use nuwax_actors::{ErrorKind, Progress};
use proptest::prelude::*;
use proptest::sample::Index;
use sha2::{Digest, Sha256};

// The one archive-crafting module of the crate's tests (also included by src/archive/tests.rs).
#[path = "support/craft.rs"]
mod craft;
use craft::gzip;

// ---------------------------------------------------------------------------------------------
// Configuration

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    ProptestConfig {
        cases,
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Trees and sandboxes

/// One entry of a directory tree, as lstat and the content see it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: char,
    mode: u32,
    mtime: i64,
    size: u64,
    sha256: Option<String>,
    target: Option<Vec<u8>>,
    nlink: Option<u64>,
}

type Tree = BTreeMap<Vec<u8>, Node>;

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut names: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in names {
        let is_dir = fs::symlink_metadata(&p).unwrap().is_dir();
        out.push(p.clone());
        if is_dir {
            walk(&p, out);
        }
    }
}

/// Relative path -> node for everything under `root` (not `root` itself).
fn tree(root: &Path) -> Tree {
    let mut paths = Vec::new();
    walk(root, &mut paths);
    paths
        .into_iter()
        .map(|p| {
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                'd'
            } else if ft.is_file() {
                'f'
            } else if ft.is_symlink() {
                'l'
            } else {
                '?'
            };
            let node = Node {
                kind,
                mode: if kind == 'l' { 0 } else { m.mode() & 0o7777 },
                mtime: m.mtime(),
                size: if kind == 'd' { 0 } else { m.size() },
                sha256: (kind == 'f').then(|| hex::encode(Sha256::digest(fs::read(&p).unwrap()))),
                target: (kind == 'l')
                    .then(|| fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec()),
                nlink: (kind == 'f').then(|| m.nlink()),
            };
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            (rel, node)
        })
        .collect()
}

/// Everything under the sandbox except the staging dir, with every lstat field a write,
/// link, unlink, chmod or rename changes.
type Outside = BTreeMap<PathBuf, (u32, u64, u64, u64, (i64, i64), (i64, i64))>;

fn outside(root: &Path, staging: &Path) -> Outside {
    let mut paths = Vec::new();
    walk(root, &mut paths);
    paths
        .into_iter()
        .filter(|p| !p.starts_with(staging))
        .map(|p| {
            let m = fs::symlink_metadata(&p).unwrap();
            let v = (
                m.mode(),
                m.ino(),
                m.nlink(),
                m.size(),
                (m.mtime(), m.mtime_nsec()),
                (m.ctime(), m.ctime_nsec()),
            );
            (p, v)
        })
        .collect()
}

/// A temp dir with the staging dir deep inside, witnesses on the way, and `abs/` (where
/// generated absolute paths point).
struct Sandbox {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    staging: PathBuf,
    archive: PathBuf,
    abs: PathBuf,
}

/// Levels between the sandbox root and the staging dir's parent: more than the `..`
/// components a generated path or link target can hold.
const DEPTH: usize = 7;

impl Sandbox {
    fn new() -> Sandbox {
        let tmp = tempfile::Builder::new()
            .prefix("nuwax-fuzz-")
            .tempdir()
            .unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let mut work = root.clone();
        for i in 1..=DEPTH {
            work.push(format!("l{i}"));
        }
        fs::create_dir_all(&work).unwrap();
        fs::write(work.join("witness"), b"next to the staging dir\n").unwrap();
        fs::write(root.join("witness"), b"at the sandbox root\n").unwrap();
        let abs = root.join("abs");
        fs::create_dir(&abs).unwrap();
        fs::write(abs.join("victim"), b"an absolute target\n").unwrap();
        let staging = work.join("stage");
        fs::create_dir(&staging).unwrap();
        let archive = work.join("archive.tar.gz");
        Sandbox {
            _tmp: tmp,
            root,
            staging,
            archive,
            abs,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The checks every property shares

/// What reading `bytes` gave.
struct Outcome {
    verify_ok: bool,
    problems: Vec<String>,
    extracted: Result<Tree, String>,
}

/// [`read_back_in`] a fresh sandbox.
fn read_back(bytes: &[u8]) -> Result<Outcome, TestCaseError> {
    read_back_in(&Sandbox::new(), bytes)
}

/// Writes `bytes` as the archive of `sb`, verifies and extracts it, and checks the
/// properties that hold for every input: no panic (a panic fails the case), `verify` returns
/// a report, `extract` fails only with an integrity error, the two agree, and nothing outside
/// the staging dir changed.
fn read_back_in(sb: &Sandbox, bytes: &[u8]) -> Result<Outcome, TestCaseError> {
    fs::write(&sb.archive, bytes).unwrap();
    let before = outside(&sb.root, &sb.staging);

    let report = archive::verify(
        &sb.archive,
        None,
        None,
        2,
        &Progress::none(),
        &CancelFlag::default(),
    )
    .map_err(|e| TestCaseError::fail(format!("verify returned Err (not a report): {e}")))?;
    let verify_ok = report.is_ok();

    let extracted = archive::extract(
        &ExtractOptions {
            select: Vec::new(),
            archive: sb.archive.clone(),
            staging: sb.staging.clone(),
            filter: TopLevelFilter::All,
            restore_owner: false,
            threads: 2,
            expected_sha256: None,
            manifest: None,
            key: None,
            durable: false,
        },
        &Progress::none(),
        &CancelFlag::default(),
    );
    let after = outside(&sb.root, &sb.staging);
    prop_assert_eq!(
        &before,
        &after,
        "something outside the staging dir changed (sandbox {})",
        sb.root.display()
    );
    prop_assert_eq!(fs::read(&sb.archive).unwrap(), bytes, "the archive changed");
    let extracted = match extracted {
        Ok(_) => Ok(tree(&sb.staging)),
        Err(e) => {
            prop_assert!(
                matches!(e.kind(), ErrorKind::Integrity),
                "extract failed with a non-integrity error ({:?}): {e}",
                e.kind()
            );
            Err(e.to_string())
        }
    };
    prop_assert_eq!(
        verify_ok,
        extracted.is_ok(),
        "verify and extract disagree: verify problems {:?}, extract {:?}",
        &report.problems,
        extracted.as_ref().err()
    );
    Ok(Outcome {
        verify_ok,
        problems: report.problems,
        extracted,
    })
}

// ---------------------------------------------------------------------------------------------
// (a) Mutations of a built archive

fn info() -> ArchiveInfo {
    ArchiveInfo {
        format: 1,
        tool: "nuwax-cli fuzz".into(),
        backup_type: "Manual".into(),
        service_version: "1.2.3".into(),
        created_at: "2024-05-06T07:08:09Z".into(),
        compose_project: "fuzz".into(),
        data_paths: vec!["data".parse().unwrap()],
        excluded: vec![],
        images: vec![],
        top_level_bytes: Default::default(),
        dumps: Vec::new(),
        hot: false,
    }
}

fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&seed.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A built archive and the tree it was built from.
struct Built {
    bytes: Vec<u8>,
    tree: Tree,
    /// (offset, length) of each gzip member.
    members: Vec<(u64, u32)>,
}

fn build_fixture(big: bool) -> Built {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let put = |rel: &str, data: &[u8], mode: u32| {
        let p = src.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    put("docker-compose.yml", b"services: {}\n", 0o644);
    put(".env", b"SECRET=1\n", 0o600);
    put("app/VERSION", b"1.2.3\n", 0o644);
    put("app/bin/run.sh", b"#!/bin/sh\necho hi\n", 0o755);
    put("app/empty.txt", b"", 0o640);
    put(
        "app/static/index.html",
        &b"<p>nuwax</p>\n".repeat(200),
        0o644,
    );
    put("data/db.bin", &noise(20_000, 3), 0o600);
    put("data/nested/deeper/x.txt", b"deep\n", 0o644);
    if big {
        // Incompressible and larger than one 4 MiB chunk: several members, stored blocks.
        put("data/big.bin", &noise((4 << 20) + 300_000, 5), 0o640);
    }
    fs::create_dir_all(src.join("app/empty-dir")).unwrap();
    std::os::unix::fs::symlink("bin/run.sh", src.join("app/run")).unwrap();
    std::os::unix::fs::symlink("../nowhere", src.join("app/dangling")).unwrap();
    fs::hard_link(src.join("app/VERSION"), src.join("app/VERSION.hard")).unwrap();
    fs::set_permissions(src.join("app/bin"), fs::Permissions::from_mode(0o750)).unwrap();
    // Whole-second, distinct mtimes, children before parents.
    let mut paths = Vec::new();
    walk(&src, &mut paths);
    paths.reverse();
    for (i, p) in paths.iter().enumerate() {
        let t = filetime::FileTime::from_unix_time(1_600_000_000 + 3_607 * i as i64, 0);
        filetime::set_symlink_file_times(p, t, t).unwrap();
    }
    let dest = tmp.path().join("built.tar.gz");
    archive::build(
        &BuildOptions {
            source_dir: src.clone(),
            dest: dest.clone(),
            exclude: vec![],
            level: 6,
            threads: 2,
            info: info(),
            dump_files: Vec::new(),
            encryption: None,
            previous: None,
        },
        &Progress::none(),
        &CancelFlag::default(),
    )
    .expect("build the fixture archive");
    let bytes = fs::read(&dest).unwrap();
    let members = archive::pgzip::member_offsets(&fs::File::open(&dest).unwrap())
        .unwrap()
        .expect("the builder indexes its members");
    if big {
        assert!(members.len() >= 2, "{members:?}");
    }
    Built {
        bytes,
        tree: tree(&src),
        members,
    }
}

fn small() -> &'static Built {
    static B: OnceLock<Built> = OnceLock::new();
    B.get_or_init(|| build_fixture(false))
}

fn big() -> &'static Built {
    static B: OnceLock<Built> = OnceLock::new();
    B.get_or_init(|| build_fixture(true))
}

/// Where a mutation lands.
#[derive(Debug, Clone)]
enum Pos {
    Anywhere(Index),
    /// Offset into the first 64 bytes (gzip header, NX field, start of deflate data).
    Head(u8),
    /// This many bytes before the end (trailer, end of the last member).
    Tail(u8),
    /// Near the start of a member (its header, or the previous member's trailer).
    Boundary(Index, i8),
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Pos, u8),
    Truncate(Pos),
    Insert(Pos, Vec<u8>),
    Overwrite(Pos, Vec<u8>),
    Duplicate(Pos, u16),
    Remove(Pos, u16),
}

fn pos() -> impl Strategy<Value = Pos> {
    prop_oneof![
        4 => any::<Index>().prop_map(Pos::Anywhere),
        2 => (0u8..64).prop_map(Pos::Head),
        2 => (1u8..=64).prop_map(Pos::Tail),
        2 => (any::<Index>(), -24i8..24).prop_map(|(i, d)| Pos::Boundary(i, d)),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (pos(), 1u8..=255).prop_map(|(p, m)| Mutation::Flip(p, m)),
        2 => pos().prop_map(Mutation::Truncate),
        1 => (pos(), prop::collection::vec(any::<u8>(), 1..64)).prop_map(|(p, b)| Mutation::Insert(p, b)),
        2 => (pos(), prop::collection::vec(any::<u8>(), 1..64)).prop_map(|(p, b)| Mutation::Overwrite(p, b)),
        1 => (pos(), 1u16..2048).prop_map(|(p, n)| Mutation::Duplicate(p, n)),
        1 => (pos(), 1u16..2048).prop_map(|(p, n)| Mutation::Remove(p, n)),
    ]
}

fn resolve(p: &Pos, len: usize, members: &[(u64, u32)]) -> usize {
    if len == 0 {
        return 0;
    }
    let at = match p {
        Pos::Anywhere(i) => i.index(len),
        Pos::Head(o) => *o as usize,
        Pos::Tail(o) => len.saturating_sub(*o as usize),
        Pos::Boundary(i, d) => {
            let start = members[i.index(members.len())].0 as i64;
            (start + i64::from(*d)).max(0) as usize
        }
    };
    at.min(len - 1)
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation, members: &[(u64, u32)]) {
    let len = bytes.len();
    match m {
        Mutation::Flip(p, mask) => {
            if len > 0 {
                let at = resolve(p, len, members);
                bytes[at] ^= mask;
            }
        }
        Mutation::Truncate(p) => bytes.truncate(resolve(p, len, members)),
        Mutation::Insert(p, b) => {
            let at = resolve(p, len, members);
            bytes.splice(at..at, b.iter().copied());
        }
        Mutation::Overwrite(p, b) => {
            let at = resolve(p, len, members);
            let end = (at + b.len()).min(len);
            bytes[at..end].copy_from_slice(&b[..end - at]);
        }
        Mutation::Duplicate(p, n) => {
            let at = resolve(p, len, members);
            let end = (at + *n as usize).min(len);
            let copy = bytes[at..end].to_vec();
            bytes.splice(end..end, copy);
        }
        Mutation::Remove(p, n) => {
            let at = resolve(p, len, members);
            let end = (at + *n as usize).min(len);
            bytes.drain(at..end);
        }
    }
}

fn check_mutated(built: &Built, mutations: &[Mutation]) -> Result<(), TestCaseError> {
    let mut bytes = built.bytes.clone();
    for m in mutations {
        apply(&mut bytes, m, &built.members);
    }
    let out = read_back(&bytes)?;
    if let Ok(staged) = &out.extracted {
        // Accepted: only possible when the mutation carried no content; the result must be
        // exactly the source tree.
        prop_assert!(
            staged == &built.tree,
            "a mutated archive was accepted and staged a different tree"
        );
    }
    if bytes == built.bytes {
        prop_assert!(
            out.verify_ok,
            "the unmutated archive was refused: {:?}",
            out.problems
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Random damage to a single-member archive.
    #[test]
    fn mutated_small_archive_is_refused_or_intact(
        mutations in prop::collection::vec(mutation(), 1..4)
    ) {
        check_mutated(small(), &mutations)?;
    }

    /// Random damage to a multi-member archive (member boundaries, stored blocks).
    #[test]
    fn mutated_multi_member_archive_is_refused_or_intact(
        mutations in prop::collection::vec(mutation(), 1..4)
    ) {
        check_mutated(big(), &mutations)?;
    }

    /// MTIME, XFL and OS of any member's gzip header carry no content: any values restore
    /// the exact source tree.
    #[test]
    fn gzip_header_mtime_xfl_os_do_not_matter(
        member in any::<Index>(),
        values in prop::collection::vec(any::<u8>(), 6),
    ) {
        let built = big();
        let mut bytes = built.bytes.clone();
        let start = built.members[member.index(built.members.len())].0 as usize;
        bytes[start + 4..start + 10].copy_from_slice(&values);
        let out = read_back(&bytes)?;
        prop_assert!(out.verify_ok, "refused: {:?}", out.problems);
        prop_assert!(out.extracted.as_ref().is_ok_and(|t| t == &built.tree));
    }
}

// ---------------------------------------------------------------------------------------------
// (b) Random tar streams

/// Replaced by the sandbox's `abs/` dir when the archive is written.
const ABS: &[u8] = b"@ABS@";

fn component() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        12 => prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(|s| s.as_bytes().to_vec()),
        2 => Just(b"..".to_vec()),
        1 => Just(b".".to_vec()),
        1 => Just(Vec::new()),
        1 => Just(vec![b'x'; 120]),
        1 => Just(b"\xff\xfe".to_vec()),
        1 => Just(b".nuwax-backup".to_vec()),
        1 => Just(b".nuwax-rollback-1".to_vec()),
        1 => Just(b"witness".to_vec()),
    ]
}

/// A path of 1..=5 components (so at most 5 `..`), sometimes absolute (into `abs/`),
/// sometimes with a trailing slash.
fn gen_path() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::bool::weighted(0.08),
        prop::collection::vec(component(), 1..=5),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(abs, comps, slash)| {
            let mut p = if abs {
                let mut v = ABS.to_vec();
                v.push(b'/');
                v
            } else {
                Vec::new()
            };
            p.extend(comps.join(&b'/'));
            if slash {
                p.push(b'/');
            }
            p
        })
}

fn gen_target() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => gen_path(),
        1 => Just(b"../witness".to_vec()),
        1 => Just([ABS, b"/victim"].concat()),
        1 => Just(ABS.to_vec()),
        1 => Just(Vec::new()),
    ]
}

/// A generated entry: the shared crafting module's raw entry (written verbatim).
type GenEntry = craft::RawEntry;

fn gen_entry() -> impl Strategy<Value = GenEntry> {
    let typeflag = prop_oneof![
        10 => Just(b'0'),
        6 => Just(b'5'),
        3 => Just(b'2'),
        3 => Just(b'1'),
        1 => Just(0u8),
        1 => Just(b'3'),
        1 => Just(b'4'),
        1 => Just(b'6'),
        1 => Just(b'7'),
        1 => Just(b'S'),
        1 => Just(b'x'),
        1 => Just(b'g'),
        1 => Just(b'V'),
        1 => any::<u8>(),
    ];
    (
        gen_path(),
        typeflag,
        prop::collection::vec(any::<u8>(), 0..48),
        gen_target(),
        prop::sample::select(vec![0o644u32, 0o600, 0o755, 0o700, 0o444, 0o1777, 0o4755]),
        prop_oneof![
            Just(0u64),
            Just(1_600_000_000u64),
            any::<u32>().prop_map(u64::from)
        ],
        prop::bool::weighted(0.1),
        gen_path(),
    )
        .prop_map(
            |(path, typeflag, data, target, mode, mtime, keep_data, pax_path)| {
                let data = match typeflag {
                    b'0' | 0 | b'7' => data,
                    // A pax header that renames the next entry, or garbage.
                    b'x' | b'g' if !keep_data => pax_record("path", &pax_path),
                    _ if keep_data => data,
                    _ => Vec::new(),
                };
                let link = matches!(typeflag, b'1' | b'2').then_some(target);
                GenEntry {
                    path,
                    typeflag,
                    data,
                    link,
                    mode,
                    mtime,
                }
            },
        )
}

/// One pax extended-header record: `<len> <key>=<value>\n`, `len` counting itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = 1 + key.len() + 1 + value.len() + 1;
    let mut len = body + 1;
    while len.to_string().len() + body != len {
        len = len.to_string().len() + body;
    }
    let mut v = format!("{len} {key}=").into_bytes();
    v.extend_from_slice(value);
    v.push(b'\n');
    v
}

fn subst_abs(bytes: &[u8], abs: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Some(i) = rest.windows(ABS.len()).position(|w| w == ABS) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(abs.as_os_str().as_bytes());
        rest = &rest[i + ABS.len()..];
    }
    out.extend_from_slice(rest);
    out
}

fn file_entry(path: &[u8], data: &[u8]) -> GenEntry {
    GenEntry::file(path, data)
}

fn head() -> Vec<GenEntry> {
    vec![
        GenEntry {
            path: b".nuwax-backup/".to_vec(),
            typeflag: b'5',
            data: Vec::new(),
            link: None,
            mode: 0o755,
            mtime: 0,
        },
        file_entry(
            b".nuwax-backup/info.json",
            &serde_json::to_vec(&info()).unwrap(),
        ),
    ]
}

/// The manifest a builder would write for `entries` (pax headers are not entries).
fn manifest_for(entries: &[GenEntry]) -> Manifest {
    let mut m = Manifest {
        info: info(),
        entries: vec![],
        layout: None,
        spans: Vec::new(),
    };
    for e in entries {
        let kind = match e.typeflag {
            b'5' => EntryKind::Dir,
            b'2' => EntryKind::Symlink,
            b'1' => EntryKind::Hardlink,
            b'x' | b'g' => continue,
            _ => EntryKind::File,
        };
        let path = match kind {
            EntryKind::Dir => e.path.strip_suffix(b"/").unwrap_or(&e.path),
            _ => &e.path,
        };
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
            mtime: e.mtime as i64,
            sha256: (kind == EntryKind::File).then(|| hex::encode(Sha256::digest(&e.data))),
            target: t,
            target_hex: th,
            stat: None,
        });
    }
    m
}

/// A tar stream of `entries`, gzipped as one member or split in two at `split`.
fn pack(entries: &[GenEntry], split: Option<Index>) -> Vec<u8> {
    let tar = craft::tar_of(entries);
    match split {
        None => gzip(&tar),
        Some(i) => {
            let at = i.index(tar.len());
            [gzip(&tar[..at]), gzip(&tar[at..])].concat()
        }
    }
}

/// `entries` with `@ABS@` replaced by the sandbox's `abs/` dir (paths, link targets, pax
/// records).
fn place(entries: &[GenEntry], abs: &Path) -> Vec<GenEntry> {
    entries
        .iter()
        .map(|e| GenEntry {
            path: subst_abs(&e.path, abs),
            link: e.link.as_deref().map(|l| subst_abs(l, abs)),
            data: if matches!(e.typeflag, b'x' | b'g') {
                subst_abs(&e.data, abs)
            } else {
                e.data.clone()
            },
            ..e.clone()
        })
        .collect()
}

/// Packs `body` (optionally after the metadata head and before a manifest listing it) in a
/// fresh sandbox, reads it back with the shared checks, and on success checks that every
/// entry was staged as described. Returns whether it was accepted.
fn check_entries(
    body: &[GenEntry],
    with_head: bool,
    with_manifest: bool,
    split: Option<Index>,
) -> Result<bool, TestCaseError> {
    let sb = Sandbox::new();
    let body = place(body, &sb.abs);
    let mut entries = if with_head { head() } else { Vec::new() };
    entries.extend(body.iter().cloned());
    if with_manifest {
        entries.push(file_entry(
            b".nuwax-backup/manifest.json",
            &serde_json::to_vec(&manifest_for(&body)).unwrap(),
        ));
    }
    let out = read_back_in(&sb, &pack(&entries, split))?;
    let Ok(staged) = &out.extracted else {
        return Ok(false);
    };
    for e in &body {
        if e.typeflag == b'x' {
            continue;
        }
        let path = e.path.strip_suffix(b"/").unwrap_or(&e.path).to_vec();
        let shown = String::from_utf8_lossy(&path).into_owned();
        let node = staged.get(&path);
        prop_assert!(node.is_some(), "accepted entry {:?} was not staged", shown);
        let node = node.unwrap();
        match e.typeflag {
            b'0' | 0 => {
                prop_assert_eq!(node.kind, 'f', "{}", shown);
                prop_assert_eq!(
                    node.sha256.clone(),
                    Some(hex::encode(Sha256::digest(&e.data))),
                    "{}",
                    shown
                );
                prop_assert_eq!(node.mtime, e.mtime as i64, "{}", shown);
            }
            b'5' => prop_assert_eq!(node.kind, 'd', "{}", shown),
            b'2' => {
                prop_assert_eq!(node.kind, 'l', "{}", shown);
                prop_assert_eq!(node.target.clone(), e.link.clone(), "{}", shown);
            }
            b'1' => {
                prop_assert_eq!(node.kind, 'f', "{}", shown);
                prop_assert!(
                    node.nlink.unwrap_or(0) >= 2,
                    "hard link {} not linked",
                    shown
                );
            }
            other => prop_assert!(false, "entry {} of type {:#x} was accepted", shown, other),
        }
    }
    Ok(true)
}

proptest! {
    #![proptest_config(config())]

    /// Random entry lists, mostly with the metadata entries and a manifest that lists them
    /// (so only the entries themselves decide), gzipped as one or two members.
    #[test]
    fn random_tar_streams_never_escape_the_staging_dir(
        body in prop::collection::vec(gen_entry(), 0..8),
        with_head in prop::bool::weighted(0.9),
        with_manifest in prop::bool::weighted(0.85),
        split in prop::option::weighted(0.3, any::<Index>()),
    ) {
        check_entries(&body, with_head, with_manifest, split)?;
    }

    /// Only safe entries (plain names): such archives must be accepted and staged exactly.
    #[test]
    fn random_clean_tar_streams_are_accepted(
        names in prop::collection::btree_set(
            prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..=3)
                .prop_map(|c| c.join("/")),
            1..10,
        ),
        contents in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 10),
        split in prop::option::weighted(0.3, any::<Index>()),
    ) {
        // Keep only names no other name lies beneath (files can have no children), and
        // give the rest file content.
        let names: Vec<String> = names.iter()
            .filter(|n| !names.iter().any(|m| m.starts_with(&format!("{n}/"))))
            .cloned()
            .collect();
        let body: Vec<GenEntry> = names
            .iter()
            .zip(contents.iter().cycle())
            .map(|(n, c)| file_entry(n.as_bytes(), c))
            .collect();
        prop_assert!(check_entries(&body, true, true, split)?, "a clean archive was refused");
    }
}

// ---------------------------------------------------------------------------------------------
// (c) The metadata parsers

const FIELDS: &[&str] = &[
    "info",
    "entries",
    "path",
    "path_hex",
    "kind",
    "size",
    "mode",
    "uid",
    "gid",
    "mtime",
    "sha256",
    "target",
    "target_hex",
    "format",
    "tool",
    "backup_type",
    "service_version",
    "created_at",
    "compose_project",
    "data_paths",
    "excluded",
    "images",
    "top_level_bytes",
    "file",
    "dir",
    "symlink",
    "hardlink",
];

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
        prop::sample::select(FIELDS).prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(FIELDS), inner), 0..8).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

/// JSON pointers into a manifest document whose value a mutation replaces or removes.
const POINTERS: &[&str] = &[
    "",
    "/info",
    "/entries",
    "/entries/0",
    "/entries/0/path",
    "/entries/0/kind",
    "/entries/0/size",
    "/entries/1/sha256",
    "/entries/1/size",
    "/entries/1/path",
    "/entries/1/path_hex",
    "/entries/2/target",
    "/entries/2/target_hex",
    "/entries/2/kind",
    "/info/format",
    "/info/data_paths",
    "/info/top_level_bytes",
    "/entries/0/mtime",
    "/entries/1/mode",
    "/entries/1/uid",
];

/// A valid document with one value replaced (or removed when `value` is `None`).
fn edit_json(doc: &serde_json::Value, pointer: &str, value: Option<serde_json::Value>) -> Vec<u8> {
    let mut d = doc.clone();
    match value {
        Some(v) => match d.pointer_mut(pointer) {
            Some(slot) => *slot = v,
            None => d = v,
        },
        None => {
            if let Some((parent, key)) = pointer.rsplit_once('/')
                && let Some(p) = d.pointer_mut(parent)
            {
                match p {
                    serde_json::Value::Object(o) => {
                        o.remove(key);
                    }
                    serde_json::Value::Array(a) => {
                        if let Ok(i) = key.parse::<usize>()
                            && i < a.len()
                        {
                            a.remove(i);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    serde_json::to_vec(&d).unwrap()
}

/// Metadata bytes: arbitrary, any JSON, the valid document with one value changed or
/// removed, the valid text with byte damage, or deep nesting.
fn metadata_bytes(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let doc: serde_json::Value = serde_json::from_slice(&valid).unwrap();
    let doc2 = doc.clone();
    let valid2 = valid.clone();
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..512),
        2 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        4 => (prop::sample::select(POINTERS), prop::option::weighted(0.8, json_value()))
            .prop_map(move |(p, v)| edit_json(&doc, p, v)),
        3 => prop::collection::vec(mutation(), 1..4).prop_map(move |ms| {
            let mut b = valid.clone();
            for m in &ms {
                apply(&mut b, m, &[(0, 0)]);
            }
            b
        }),
        1 => (1usize..200_000, prop::bool::ANY).prop_map(|(depth, obj)| {
            let (open, close) = if obj { ("{\"a\":", "}") } else { ("[", "]") };
            let mut s = open.repeat(depth);
            s.push('0');
            s.push_str(&close.repeat(depth));
            s.into_bytes()
        }),
        1 => Just(valid2),
        1 => Just(serde_json::to_vec(&doc2).unwrap()),
    ]
}

/// The body of the archives in (c): a dir, a file, a symlink and a hard link.
fn parser_body() -> Vec<GenEntry> {
    vec![
        GenEntry {
            path: b"d/".to_vec(),
            typeflag: b'5',
            data: Vec::new(),
            link: None,
            mode: 0o755,
            mtime: 7,
        },
        file_entry(b"d/f", b"hello"),
        GenEntry {
            path: b"d/s".to_vec(),
            typeflag: b'2',
            data: Vec::new(),
            link: Some(b"f".to_vec()),
            mode: 0o777,
            mtime: 9,
        },
        GenEntry {
            path: b"d/h".to_vec(),
            typeflag: b'1',
            data: Vec::new(),
            link: Some(b"d/f".to_vec()),
            mode: 0o644,
            mtime: 0,
        },
    ]
}

fn valid_manifest() -> Vec<u8> {
    serde_json::to_vec(&manifest_for(&parser_body())).unwrap()
}

fn valid_info() -> Vec<u8> {
    serde_json::to_vec(&info()).unwrap()
}

proptest! {
    #![proptest_config(config())]

    /// `manifest.json` content: refused unless it is a valid manifest of exactly this
    /// archive; never a panic.
    #[test]
    fn manifest_parser_refuses_bad_documents(bytes in metadata_bytes(valid_manifest())) {
        let mut entries = head();
        entries.extend(parser_body());
        entries.push(file_entry(b".nuwax-backup/manifest.json", &bytes));
        let out = read_back(&pack(&entries, None))?;
        let parsed: Result<Manifest, _> = serde_json::from_slice(&bytes);
        if out.verify_ok {
            let expected = manifest_for(&parser_body());
            prop_assert!(parsed.is_ok(), "accepted a manifest serde cannot parse");
            let m = parsed.unwrap();
            prop_assert_eq!(&m.info, &expected.info);
            prop_assert_eq!(m.entries.len(), expected.entries.len());
        } else {
            prop_assert!(!out.problems.is_empty());
        }
    }

    /// `info.json` content: refused unless it equals the manifest's info; `read_info` gives
    /// an error, never a panic.
    #[test]
    fn info_parser_refuses_bad_documents(bytes in metadata_bytes(valid_info())) {
        let mut entries = vec![
            head().remove(0),
            file_entry(b".nuwax-backup/info.json", &bytes),
        ];
        entries.extend(parser_body());
        entries.push(file_entry(b".nuwax-backup/manifest.json", &valid_manifest()));
        let archive_bytes = pack(&entries, None);
        let out = read_back(&archive_bytes)?;
        let parsed: Result<ArchiveInfo, _> = serde_json::from_slice(&bytes);
        if out.verify_ok {
            prop_assert_eq!(parsed.ok(), Some(info()));
        }
        let sb = Sandbox::new();
        fs::write(&sb.archive, &archive_bytes).unwrap();
        match archive::read_info(&sb.archive) {
            Ok(i) => prop_assert_eq!(Some(i), serde_json::from_slice::<ArchiveInfo>(&bytes).ok()),
            Err(e) => prop_assert!(
                matches!(e.kind(), ErrorKind::Integrity),
                "read_info: non-integrity error {e}"
            ),
        }
    }
}

/// `read_info` on damaged built archives: never a panic, and an error is an integrity error.
/// By design it decompresses nothing beyond `info.json`, so it never reaches the member's
/// CRC32: damage inside the compressed `info.json` can come back as different info without
/// an error (`rollback` and `reindex` use it only for the space estimate and the sort order;
/// the full read that follows refuses such an archive).
#[test]
fn read_info_survives_damage_at_every_head_offset() {
    let built = small();
    let sb = Sandbox::new();
    // The info as built (the build fills in the top-level sizes from its scan).
    fs::write(&sb.archive, &built.bytes).unwrap();
    let expected = archive::read_info(&sb.archive).unwrap();
    for at in 0..built.bytes.len().min(600) {
        for bytes in [
            {
                let mut b = built.bytes.clone();
                b[at] ^= 0x5a;
                b
            },
            built.bytes[..at].to_vec(),
        ] {
            fs::write(&sb.archive, &bytes).unwrap();
            match archive::read_info(&sb.archive) {
                Ok(i) => {
                    // MTIME, XFL and OS of the gzip header carry no content.
                    if bytes.len() == built.bytes.len() && (4..10).contains(&at) {
                        assert_eq!(
                            i, expected,
                            "offset {at}: gzip header damage changed the info"
                        );
                    }
                }
                Err(e) => assert!(matches!(e.kind(), ErrorKind::Integrity), "offset {at}: {e}"),
            }
        }
    }
}
