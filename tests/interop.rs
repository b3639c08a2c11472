//! Archives are ordinary `.tar.gz`: GNU tar, gzip and pigz read them, and what they extract is
//! the compose dir (minus the excluded logs) byte for byte with metadata. The embedded
//! metadata and the gzip member layout follow the documented format.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::archutil::{entry_paths, gunzip_all, gunzip_member, nx_members, read_entry};
use crate::util::{
    EXCLUDED, Fixture, TestEnv, Tree, VERSION, assert_same_tree, except, is_root, sha256_file,
    snapshot,
};

const META: &str = ".nuwax-backup";

fn tool(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Ownership survives extraction only as root; otherwise compare the rest.
fn comparable(tree: &Tree) -> Tree {
    let mut t = tree.clone();
    if !is_root() {
        for e in t.values_mut() {
            e.uid = 0;
            e.gid = 0;
        }
    }
    t
}

#[test]
fn gnu_tar_extracts_the_compose_dir_exactly() {
    let env = TestEnv::with(Fixture { large_file: true });
    let source = env.snapshot_compose();
    let row = env.backup();
    let archive = Path::new(&row.file_path);

    // tar -tzf lists every entry, metadata included.
    let listing = tool(Command::new("tar").arg("-tzf").arg(archive));
    let listed = String::from_utf8_lossy(&listing.stdout);
    assert!(listed.lines().any(|l| l == "app/bin/start.sh"), "{listed}");
    assert!(listed.lines().any(|l| l.starts_with(META)), "{listed}");

    let out = tempfile::tempdir().unwrap();
    tool(
        Command::new("tar")
            .arg("-xzf")
            .arg(archive)
            .arg("-C")
            .arg(out.path()),
    );
    let extracted = except(&snapshot(out.path()), &[META]);
    assert_same_tree(
        "tar -xzf of the archive vs the compose dir minus logs",
        &comparable(&except(&source, EXCLUDED)),
        &comparable(&extracted),
    );
}

#[test]
fn gzip_and_pigz_read_the_whole_stream() {
    let env = TestEnv::with(Fixture { large_file: true });
    let row = env.backup();
    let archive = Path::new(&row.file_path);
    tool(Command::new("gzip").arg("-t").arg(archive));
    let ours = gunzip_all(archive);
    let pigz = tool(Command::new("pigz").arg("-dc").arg(archive));
    assert_eq!(pigz.stdout.len(), ours.len());
    assert!(
        pigz.stdout == ours,
        "pigz and flate2 decompress to the same bytes"
    );
}

#[test]
fn gzip_members_carry_their_lengths() {
    let env = TestEnv::with(Fixture { large_file: true });
    let row = env.backup();
    let bytes = fs::read(&row.file_path).unwrap();
    let members = nx_members(&bytes);
    assert!(
        members.len() >= 2,
        "a ~9 MiB source spans several members: {members:?}"
    );
    let mut joined = Vec::new();
    for m in &members {
        joined.extend(gunzip_member(&bytes[m.offset..m.offset + m.len]));
    }
    assert!(
        joined == gunzip_all(Path::new(&row.file_path)),
        "members decompressed one by one == the whole stream"
    );
}

#[test]
fn archive_carries_info_and_manifest() {
    let env = TestEnv::new();
    let source = env.snapshot_compose();
    let row = env.backup();
    let archive = Path::new(&row.file_path);

    let paths = entry_paths(archive);
    let names: Vec<String> = paths
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let content: Vec<&String> = names.iter().filter(|n| !n.starts_with(META)).collect();
    let first = names.iter().position(|n| n == ".nuwax-backup/info.json");
    let last = names
        .iter()
        .rposition(|n| n == ".nuwax-backup/manifest.json");
    assert!(first.is_some() && last.is_some(), "{names:#?}");
    assert!(
        names[..first.unwrap()].iter().all(|n| n.starts_with(META)),
        "info.json comes first: {names:#?}"
    );
    assert_eq!(last, Some(names.len() - 1), "manifest.json comes last");
    // Deterministic order: sorted by path bytes.
    let mut sorted: Vec<&[u8]> = paths
        .iter()
        .filter(|p| !p.starts_with(META.as_bytes()))
        .map(|p| p.strip_suffix(b"/").unwrap_or(p))
        .collect();
    let original = sorted.clone();
    sorted.sort();
    assert_eq!(original, sorted, "entries are sorted");
    assert_eq!(content.len() as u64, row.entry_count.unwrap());

    let info: serde_json::Value =
        serde_json::from_slice(&read_entry(archive, ".nuwax-backup/info.json").unwrap()).unwrap();
    assert_eq!(info["backup_type"], "Manual", "{info}");
    assert_eq!(info["service_version"], VERSION, "{info}");
    assert_eq!(info["compose_project"], env.project.as_str(), "{info}");
    assert!(
        info["excluded"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "logs")),
        "{info}"
    );

    let manifest: serde_json::Value =
        serde_json::from_slice(&read_entry(archive, ".nuwax-backup/manifest.json").unwrap())
            .unwrap();
    let entries = manifest["entries"].as_array().expect("manifest entries");
    assert_eq!(
        entries.len(),
        content.len(),
        "one manifest entry per tar entry"
    );
    let expected = except(&source, EXCLUDED);
    let mut checked = 0;
    for e in entries {
        let Some(path) = e["path"].as_str() else {
            continue; // non-UTF-8 names are hex-encoded
        };
        let snap = expected
            .get(Path::new(path.trim_end_matches('/')))
            .unwrap_or_else(|| panic!("manifest names {path}, not in the source"));
        if e["kind"] == "file" {
            assert_eq!(e["sha256"].as_str(), snap.sha256.as_deref(), "{path}");
            assert_eq!(e["size"].as_u64(), Some(snap.size), "{path}");
            checked += 1;
        }
        assert_eq!(
            e["mode"].as_u64().map(|m| m as u32 & 0o7777),
            Some(snap.mode),
            "{path}"
        );
        assert_eq!(e["mtime"].as_i64(), Some(snap.mtime), "{path}");
    }
    assert!(checked > 10, "manifest lists file checksums ({checked})");
    // The catalog's checksum is the file's.
    assert_eq!(row.sha256.as_deref(), Some(sha256_file(archive).as_str()));
}
