//! Validation of a release package before an upgrade touches anything.
//!
//! A release package is a `.tar.gz` of a new compose project dir without the data scope, e.g.
//! made with `tar czf release.tar.gz -C new-docker-dir .`. [`validate`] reads it once as a
//! stream (no extraction, bounded memory) and refuses anything an upgrade must not apply:
//!
//! - unsafe entries ([`Error::UnsafeEntry`]): absolute paths, `..` or other non-canonical
//!   components, entry types other than directory / regular file / symlink / hard link, hard
//!   links whose target is not an earlier file entry, duplicate paths, and paths that go
//!   through an earlier symlink entry (`link -> /etc` then `link/passwd`);
//! - packages that do not make sense ([`Error::Usage`]): entries inside the data scope (an
//!   upgrade must never ship data), no compose file at the top level, a compose file that is
//!   not YAML with a non-empty `services` mapping;
//! - damaged files ([`Error::Corrupt`]): bad gzip or tar structure, truncation. The gzip stream
//!   is read to its end so its trailer checksum is verified too.
//!
//! A single leading `./` is tolerated (what `tar -C dir .` writes), as is the `./` entry for
//! the root itself and a pax global header (what `git archive` writes first).
//!
//! # What is validated is what is applied
//! The package path is opened once ([`OpenedPackage::open`]); validation and unpacking both
//! read that one open file (positioned reads from offset 0, never the path again) and hash
//! every byte they read. Replacing the path after validation changes nothing (the open file
//! is still the old inode); rewriting the file in place changes its SHA-256, which unpacking
//! compares with the one validation saw before it returns, so the caller refuses before the
//! swap ([`Error::Corrupt`], exit 4).

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flate2::read::MultiGzDecoder;
use sha2::{Digest, Sha256};
use tar::EntryType;

use crate::error::{Error, IoContext, Result};

/// A compose file larger than this is refused rather than read into memory.
const MAX_COMPOSE_BYTES: u64 = 16 * 1024 * 1024;

/// What a valid package holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageInfo {
    /// The compose file found at the top level (the name that was asked for).
    pub compose_file_name: String,
    /// Top-level names, sorted.
    pub top_level: Vec<String>,
    /// Directory, file and link entries (the root `./` entry included, pax headers not).
    pub entries: u64,
    /// Total size of the regular files' contents.
    pub bytes: u64,
    /// Service names of the compose file, in file order.
    pub services: Vec<String>,
    /// SHA-256 (lowercase hex) of the package file's bytes as validated.
    pub sha256: String,
}

/// A release package opened once: everything that reads it reads this open file.
#[derive(Debug, Clone)]
pub struct OpenedPackage {
    path: PathBuf,
    file: Arc<File>,
}

impl OpenedPackage {
    /// Opens `path` (a regular file) for validation and unpacking.
    pub fn open(path: &Path) -> Result<OpenedPackage> {
        let file = File::open(path).ctx("cannot open release package", path)?;
        let meta = file.metadata().ctx("cannot stat release package", path)?;
        if !meta.is_file() {
            return Err(Error::Usage(format!(
                "release package {} is not a regular file",
                path.display()
            )));
        }
        Ok(OpenedPackage {
            path: path.to_path_buf(),
            file: Arc::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A reader over the whole file from offset 0 that hashes what it reads.
    fn reader(&self) -> HashingReader {
        HashingReader {
            file: Arc::clone(&self.file),
            offset: 0,
            hasher: Sha256::new(),
        }
    }
}

/// Positioned reads (`pread`) of the shared open file, hashed.
struct HashingReader {
    file: Arc<File>,
    offset: u64,
    hasher: Sha256,
}

impl Read for HashingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.hasher.update(&buf[..n]);
        self.offset += n as u64;
        Ok(n)
    }
}

/// Reads what is left of the package to its end and returns the SHA-256 of the whole file
/// (bytes already in the buffer were hashed when they were read).
fn hash_to_end(mut buffered: BufReader<HashingReader>) -> std::io::Result<String> {
    std::io::copy(&mut buffered, &mut std::io::sink())?;
    Ok(hex::encode(buffered.into_inner().hasher.finalize()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
}

#[cfg(test)]
/// Checks `package` without extracting it; see the module docs for what is refused.
///
/// `compose_file_name` is the compose file's name relative to the package root (usually
/// `docker-compose.yml`); `data_paths` are the top-level names of the data scope.
pub fn validate(
    package: &Path,
    compose_file_name: &str,
    data_paths: &[String],
) -> Result<PackageInfo> {
    validate_opened(
        &OpenedPackage::open(package)?,
        compose_file_name,
        data_paths,
    )
}

/// [`validate`] of an opened package; the returned info carries the SHA-256 of the bytes
/// validated, for [`unpack`] to compare.
pub fn validate_opened(
    opened: &OpenedPackage,
    compose_file_name: &str,
    data_paths: &[String],
) -> Result<PackageInfo> {
    let package = opened.path();
    let corrupt = |detail: String| Error::Corrupt {
        path: package.to_path_buf(),
        detail,
    };
    let unsafe_entry = |entry: &[u8], reason: String| Error::UnsafeEntry {
        path: package.to_path_buf(),
        entry: String::from_utf8_lossy(entry).into_owned(),
        reason,
    };

    let mut archive = tar::Archive::new(MultiGzDecoder::new(BufReader::new(opened.reader())));
    let mut seen: HashMap<Vec<u8>, Kind> = HashMap::new();
    let mut top_level: BTreeSet<String> = BTreeSet::new();
    let mut entries = 0u64;
    let mut bytes = 0u64;
    let mut compose: Option<Vec<u8>> = None;
    let mut nested_compose: Vec<String> = Vec::new();
    let wanted = compose_file_name.trim_start_matches("./").as_bytes();

    let iter = archive
        .entries()
        .map_err(|e| corrupt(format!("cannot read tar stream: {e}")))?;
    for entry in iter {
        let mut entry = entry.map_err(|e| corrupt(format!("cannot read tar stream: {e}")))?;
        let entry_type = entry.header().entry_type();
        if entry_type == EntryType::XGlobalHeader {
            continue;
        }
        entries += 1;
        let raw = entry.path_bytes().into_owned();
        let kind = match entry_type {
            EntryType::Directory => Kind::Dir,
            EntryType::Regular | EntryType::Link => Kind::File,
            EntryType::Symlink => Kind::Symlink,
            other => {
                return Err(unsafe_entry(
                    &raw,
                    format!("entry type {other:?} is not a directory, file or link"),
                ));
            }
        };
        let Some(path) = normalize(&raw, kind == Kind::Dir).map_err(|r| unsafe_entry(&raw, r))?
        else {
            continue; // the root directory itself
        };
        if let Some(prefix) = symlink_prefix(&path, &seen) {
            return Err(unsafe_entry(
                &raw,
                format!(
                    "goes through the symlink {}",
                    String::from_utf8_lossy(prefix)
                ),
            ));
        }
        if seen.contains_key(&path) {
            return Err(unsafe_entry(&raw, "duplicate path".into()));
        }
        if entry_type == EntryType::Link {
            let target = entry
                .link_name_bytes()
                .map(|t| t.into_owned())
                .unwrap_or_default();
            let target_ok = normalize(&target, false)
                .ok()
                .flatten()
                .and_then(|t| seen.get(&t).copied())
                == Some(Kind::File);
            if !target_ok {
                return Err(unsafe_entry(
                    &raw,
                    format!(
                        "hard link target {:?} is not an earlier file entry",
                        String::from_utf8_lossy(&target)
                    ),
                ));
            }
        }

        let top = path.split(|&b| b == b'/').next().unwrap_or_default();
        let top_name = String::from_utf8_lossy(top).into_owned();
        if data_paths.iter().any(|d| d.as_bytes() == top) {
            return Err(Error::Usage(format!(
                "release package {} contains {:?}, which is in the data scope ({top_name}); \
                 an upgrade must never ship data: rebuild the package without it",
                package.display(),
                String::from_utf8_lossy(&path)
            )));
        }
        top_level.insert(top_name);

        if entry_type == EntryType::Regular {
            bytes += entry.size();
        }
        if path == wanted {
            if entry_type != EntryType::Regular {
                return Err(Error::Usage(format!(
                    "release package {}: {compose_file_name} must be a regular file",
                    package.display()
                )));
            }
            if entry.size() > MAX_COMPOSE_BYTES {
                return Err(Error::Usage(format!(
                    "release package {}: {compose_file_name} is {} bytes, larger than the {} \
                     bytes a compose file may have",
                    package.display(),
                    entry.size(),
                    MAX_COMPOSE_BYTES
                )));
            }
            let mut text = Vec::with_capacity(entry.size() as usize);
            entry
                .read_to_end(&mut text)
                .map_err(|e| corrupt(format!("cannot read {compose_file_name}: {e}")))?;
            compose = Some(text);
        } else if kind == Kind::File && is_nested(&path, wanted) {
            nested_compose.push(String::from_utf8_lossy(&path).into_owned());
        }
        seen.insert(path, kind);
    }

    // Read the gzip stream to its end: tar stops at its end-of-archive blocks, and a damaged
    // or truncated gzip trailer would otherwise go unnoticed.
    let mut rest = archive.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink())
        .map_err(|e| corrupt(format!("cannot read gzip stream: {e}")))?;
    let sha256 = hash_to_end(rest.into_inner()).ctx("cannot read release package", package)?;

    let Some(compose) = compose else {
        let hint = match nested_compose.as_slice() {
            [one] => format!(
                " (found {one}: pack the contents of that directory, e.g. `tar czf package.tar.gz -C <dir> .`)"
            ),
            _ => String::new(),
        };
        return Err(Error::Usage(format!(
            "release package {} has no {compose_file_name} at its top level{hint}",
            package.display()
        )));
    };
    let services = compose_services(&compose).map_err(|message| {
        Error::Usage(format!(
            "release package {}: {compose_file_name} {message}",
            package.display()
        ))
    })?;

    Ok(PackageInfo {
        compose_file_name: compose_file_name.to_string(),
        top_level: top_level.into_iter().collect(),
        entries,
        bytes,
        services,
        sha256,
    })
}

/// Unpacks a validated release package into `staging` (tar's `unpack_in`, which refuses
/// `..` and writes nothing outside), reading the same open file validation read and hashing
/// it to its end. Bytes that differ from what validation saw (`validated_sha256`) fail with
/// [`Error::Corrupt`] before this returns, so nothing unvalidated reaches the swap. Returns the
/// top-level names.
pub fn unpack(
    opened: &OpenedPackage,
    staging: &Path,
    validated_sha256: &str,
) -> Result<Vec<OsString>> {
    let package = opened.path();
    let mut archive = tar::Archive::new(MultiGzDecoder::new(BufReader::new(opened.reader())));
    let unpacked = unpack_entries(&mut archive, package, staging);
    // Read the gzip stream and the file to their end, hashing all of it, whatever happened:
    // a failure caused by changed bytes is reported as the change it is.
    let mut gz = archive.into_inner();
    let drained = std::io::copy(&mut gz, &mut std::io::sink());
    let sha = hash_to_end(gz.into_inner()).ctx("cannot read release package", package)?;
    if !sha.eq_ignore_ascii_case(validated_sha256) {
        return Err(Error::Corrupt {
            path: package.to_path_buf(),
            detail: format!(
                "the release package changed after it was validated (SHA-256 {validated_sha256} when validated, {sha} when unpacked); nothing was applied: put the original package back, or run the upgrade again so the new one is validated"
            ),
        });
    }
    let items = unpacked?;
    drained.map_err(|e| Error::Corrupt {
        path: package.to_path_buf(),
        detail: format!("cannot read gzip stream: {e}"),
    })?;
    Ok(items)
}

fn unpack_entries<R: Read>(
    archive: &mut tar::Archive<R>,
    package: &Path,
    staging: &Path,
) -> Result<Vec<OsString>> {
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(false);
    let mut top = BTreeSet::new();
    for entry in archive
        .entries()
        .ctx("cannot read release package", package)?
    {
        let mut entry = entry.ctx("cannot read release package", package)?;
        let path = entry
            .path()
            .ctx("cannot read release package", package)?
            .into_owned();
        let rel: PathBuf = path
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect();
        let Some(first) = rel.components().next() else {
            continue;
        };
        top.insert(first.as_os_str().to_owned());
        let unpacked = entry
            .unpack_in(staging)
            .ctx("cannot unpack release package entry", staging.join(&rel))?;
        if !unpacked {
            return Err(Error::UnsafeEntry {
                path: package.to_path_buf(),
                entry: rel.display().to_string(),
                reason: "would land outside the staging dir".into(),
            });
        }
    }
    Ok(top.into_iter().collect())
}

/// The canonical form of an entry path: no leading `./`, no trailing `/` on a directory.
/// `Ok(None)` for the root directory entry (`./` or `.`); `Err(reason)` for anything unsafe.
fn normalize(raw: &[u8], is_dir: bool) -> Result<Option<Vec<u8>>, String> {
    if raw.is_empty() {
        return Err("empty path".into());
    }
    if raw.starts_with(b"/") {
        return Err("absolute path".into());
    }
    if raw.contains(&0) {
        return Err("path contains a NUL byte".into());
    }
    let mut p = raw.strip_prefix(b"./").unwrap_or(raw);
    if is_dir {
        if p.is_empty() || p == b"." {
            return Ok(None);
        }
        p = p.strip_suffix(b"/").unwrap_or(p);
    }
    for component in p.split(|&b| b == b'/') {
        match component {
            b".." => return Err("path contains '..'".into()),
            b"." | b"" => return Err("non-canonical path (empty or '.' component)".into()),
            _ => {}
        }
    }
    Ok(Some(p.to_vec()))
}

/// `path` is `<dir>/.../<wanted>`: a compose file one or more levels down.
fn is_nested(path: &[u8], wanted: &[u8]) -> bool {
    path.len() > wanted.len()
        && path.ends_with(wanted)
        && path[path.len() - wanted.len() - 1] == b'/'
}

/// The first proper prefix of `path` that is an earlier symlink entry.
fn symlink_prefix<'a>(path: &'a [u8], seen: &HashMap<Vec<u8>, Kind>) -> Option<&'a [u8]> {
    path.iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'/')
        .map(|(i, _)| &path[..i])
        .find(|prefix| seen.get(*prefix) == Some(&Kind::Symlink))
}

/// The service names of a compose file, or why it is not one.
fn compose_services(text: &[u8]) -> Result<Vec<String>, String> {
    let doc: serde_yaml::Value =
        serde_yaml::from_slice(text).map_err(|e| format!("is not valid YAML: {e}"))?;
    let services = doc
        .as_mapping()
        .and_then(|m| m.get("services"))
        .ok_or("has no top-level `services` mapping")?
        .as_mapping()
        .ok_or("has a `services` key that is not a mapping")?;
    if services.is_empty() {
        return Err("defines no services".into());
    }
    services
        .keys()
        .map(|k| {
            k.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("has a service name that is not a string: {k:?}"))
        })
        .collect()
}

// The one archive-crafting module of the crate's tests (verbatim names, gzip members). Also
// included by archive/tests.rs: a second copy of the module in the test build, one source.
#[cfg(test)]
#[path = "../tests/support/craft.rs"]
#[allow(clippy::duplicate_mod)]
mod craft;

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::package::craft::{self, gzip};

    const COMPOSE: &str =
        "name: nuwax\nservices:\n  mysql:\n    image: mysql:8\n  app:\n    image: app:2\n";

    /// One entry to write; names are raw bytes so hostile paths can be produced.
    struct E {
        name: &'static str,
        kind: EntryType,
        data: &'static [u8],
        link: &'static str,
    }

    fn file(name: &'static str, data: &'static str) -> E {
        E {
            name,
            kind: EntryType::Regular,
            data: data.as_bytes(),
            link: "",
        }
    }
    fn dir(name: &'static str) -> E {
        E {
            name,
            kind: EntryType::Directory,
            data: b"",
            link: "",
        }
    }
    fn link(name: &'static str, kind: EntryType, target: &'static str) -> E {
        E {
            name,
            kind,
            data: b"",
            link: target,
        }
    }

    /// The entries, names and link targets written verbatim, as a tar stream.
    fn tar_bytes(entries: &[E]) -> Vec<u8> {
        let raw: Vec<craft::RawEntry> = entries
            .iter()
            .map(|e| craft::RawEntry {
                mtime: 1_700_000_000,
                ..craft::RawEntry::new(
                    e.name.as_bytes(),
                    e.kind,
                    e.data,
                    (!e.link.is_empty()).then_some(e.link.as_bytes()),
                )
            })
            .collect();
        craft::tar_of(&raw)
    }

    fn write_pkg(dir: &tempfile::TempDir, bytes: &[u8]) -> PathBuf {
        let p = dir.path().join("release.tar.gz");
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn check(entries: &[E]) -> Result<PackageInfo> {
        let dir = tempfile::tempdir().unwrap();
        let p = write_pkg(&dir, &gzip(&tar_bytes(entries)));
        validate(&p, "docker-compose.yml", &data_paths())
    }

    fn data_paths() -> Vec<String> {
        vec!["data".into(), "upload".into()]
    }

    fn good() -> Vec<E> {
        vec![
            dir("./"),
            file("./docker-compose.yml", COMPOSE),
            file("./.env", "A=1\n"),
            dir("./config/"),
            file("./config/app.conf", "x=1\n"),
            link("./config/current", EntryType::Symlink, "app.conf"),
            link("./config/again", EntryType::Link, "./config/app.conf"),
            link("./localtime", EntryType::Symlink, "/etc/localtime"),
        ]
    }

    fn assert_unsafe(r: Result<PackageInfo>, entry: &str, reason: &str) {
        match r {
            Err(Error::UnsafeEntry {
                entry: e,
                reason: why,
                ..
            }) => {
                assert_eq!(e, entry);
                assert!(why.contains(reason), "{why}");
            }
            other => panic!("expected unsafe entry {entry}, got {other:?}"),
        }
    }

    fn assert_usage(r: Result<PackageInfo>, needle: &str) {
        match r {
            Err(Error::Usage(m)) => {
                assert!(m.contains(needle), "{m}");
                assert!(m.contains("release.tar.gz"), "names the package: {m}");
            }
            other => panic!("expected usage error with {needle:?}, got {other:?}"),
        }
    }

    #[test]
    fn good_package() {
        let mut info = check(&good()).unwrap();
        let expected_sha = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(gzip(&tar_bytes(&good()))))
        };
        assert_eq!(info.sha256, expected_sha, "the SHA-256 of the whole file");
        info.sha256.clear();
        assert_eq!(
            info,
            PackageInfo {
                compose_file_name: "docker-compose.yml".into(),
                top_level: vec![
                    ".env".into(),
                    "config".into(),
                    "docker-compose.yml".into(),
                    "localtime".into()
                ],
                entries: 8,
                bytes: (COMPOSE.len() + 4 + 4) as u64,
                services: vec!["mysql".into(), "app".into()],
                sha256: String::new(),
            }
        );
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = walk(dir)
            .into_iter()
            .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
            .collect();
        out.sort();
        out
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() && !p.is_symlink() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
        out
    }

    /// Validated, then the path is replaced (a new file renamed over it, another one shipping
    /// data): what is unpacked is the validated package, never the replacement.
    #[test]
    fn unpack_reads_the_validated_file_not_the_path_replaced_after_validation() {
        let tmp = tempfile::tempdir().unwrap();
        let p = write_pkg(&tmp, &gzip(&tar_bytes(&good())));
        let opened = OpenedPackage::open(&p).unwrap();
        let info = validate_opened(&opened, "docker-compose.yml", &data_paths()).unwrap();

        let mut evil = good();
        evil.push(dir("./data/"));
        evil.push(file("./data/evil", "replaced\n"));
        let replacement = tmp.path().join("replacement.tar.gz");
        std::fs::write(&replacement, gzip(&tar_bytes(&evil))).unwrap();
        std::fs::rename(&replacement, &p).unwrap();

        let staging = tmp.path().join("staging");
        std::fs::create_dir(&staging).unwrap();
        let items = unpack(&opened, &staging, &info.sha256).unwrap();
        assert!(!items.iter().any(|i| i == "data"), "{items:?}");
        assert!(!staging.join("data").exists(), "{:?}", listing(&staging));
        assert_eq!(
            std::fs::read_to_string(staging.join("docker-compose.yml")).unwrap(),
            COMPOSE
        );
    }

    /// Validated, then rewritten in place (same inode) with other bytes: refused as an
    /// integrity failure, whatever the new bytes are (valid, shorter, longer, garbage).
    #[test]
    fn unpack_refuses_a_package_rewritten_in_place_after_validation() {
        let mut evil = good();
        evil.push(dir("./data/"));
        evil.push(file("./data/evil", "replaced\n"));
        let good_bytes = gzip(&tar_bytes(&good()));
        let mut flipped = good_bytes.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x55;
        let mut longer = good_bytes.clone();
        longer.extend_from_slice(&gzip(b"trailing member"));
        for (what, bytes) in [
            ("a valid package shipping data", gzip(&tar_bytes(&evil))),
            ("one byte flipped", flipped),
            ("truncated", good_bytes[..good_bytes.len() / 3].to_vec()),
            ("a member appended", longer),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let p = write_pkg(&tmp, &good_bytes);
            let opened = OpenedPackage::open(&p).unwrap();
            let info = validate_opened(&opened, "docker-compose.yml", &data_paths()).unwrap();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&p)
                .unwrap();
            std::io::Write::write_all(&mut f, &bytes).unwrap();
            drop(f);
            let staging = tmp.path().join("staging");
            std::fs::create_dir(&staging).unwrap();
            match unpack(&opened, &staging, &info.sha256) {
                Err(e @ Error::Corrupt { .. }) => {
                    assert!(
                        e.to_string().contains("changed after it was validated"),
                        "{what}: {e}"
                    );
                    assert_eq!(e.kind(), crate::error::ErrorKind::Integrity);
                }
                other => panic!("{what}: expected a refusal, got {other:?}"),
            }
        }
    }

    #[test]
    fn good_package_without_dot_prefix_multi_member_and_pax_global_header() {
        let mut global = tar::Header::new_ustar();
        global.set_entry_type(EntryType::XGlobalHeader);
        let comment = b"52 comment=0123456789012345678901234567890123456789\n";
        global.set_size(comment.len() as u64);
        global.set_path("pax_global_header").unwrap();
        global.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&global, &comment[..]).unwrap();
        let mut first = b.into_inner().unwrap();
        first.truncate(first.len() - 1024); // drop the end-of-archive blocks
        let rest = tar_bytes(&[
            file("docker-compose.yml", COMPOSE),
            dir("app/"),
            file("app/main.py", ""),
        ]);
        first.extend_from_slice(&rest);
        // Two gzip members, as the parallel archiver writes them.
        let (a, b) = first.split_at(700);
        let mut gz = gzip(a);
        gz.extend(gzip(b));
        let dir = tempfile::tempdir().unwrap();
        let p = write_pkg(&dir, &gz);
        let info = validate(&p, "docker-compose.yml", &data_paths()).unwrap();
        assert_eq!(info.top_level, ["app", "docker-compose.yml"]);
        assert_eq!(info.entries, 3);
        assert_eq!(info.services, ["mysql", "app"]);
    }

    #[test]
    fn missing_compose() {
        let r = check(&[file("./.env", "A=1\n"), dir("./config/")]);
        assert_usage(r, "no docker-compose.yml at its top level");
        let r = check(&[
            dir("nuwax-2.0/"),
            file("nuwax-2.0/docker-compose.yml", COMPOSE),
        ]);
        assert_usage(r, "found nuwax-2.0/docker-compose.yml");
    }

    #[test]
    fn compose_must_be_a_regular_file() {
        let r = check(&[
            file("other.yml", COMPOSE),
            link("docker-compose.yml", EntryType::Symlink, "other.yml"),
        ]);
        assert_usage(r, "must be a regular file");
    }

    #[test]
    fn bad_yaml() {
        assert_usage(
            check(&[file("docker-compose.yml", "services: [\n  : :\n")]),
            "not valid YAML",
        );
        assert_usage(
            check(&[file("docker-compose.yml", "version: '3'\n")]),
            "no top-level `services`",
        );
        assert_usage(
            check(&[file("docker-compose.yml", "services: [a, b]\n")]),
            "not a mapping",
        );
        assert_usage(
            check(&[file("docker-compose.yml", "services: {}\n")]),
            "defines no services",
        );
    }

    #[test]
    fn parent_components_are_refused() {
        let mut e = good();
        e.push(file("../x", "evil"));
        assert_unsafe(check(&e), "../x", "'..'");
        assert_unsafe(
            check(&[file("config/../../x", "evil")]),
            "config/../../x",
            "'..'",
        );
    }

    #[test]
    fn absolute_paths_are_refused() {
        assert_unsafe(check(&[file("/abs", "evil")]), "/abs", "absolute");
        assert_unsafe(check(&[file(".//abs", "evil")]), ".//abs", "non-canonical");
        assert_unsafe(check(&[file("././x", "")]), "././x", "non-canonical");
    }

    #[test]
    fn data_scope_entries_are_refused() {
        let mut e = good();
        e.push(dir("./data/"));
        assert_usage(check(&e), "data scope (data)");
        let mut e = good();
        e.push(file("upload/a.png", "png"));
        assert_usage(check(&e), "\"upload/a.png\"");
        // A name that merely starts like a data path is fine.
        let mut e = good();
        e.push(file("database.md", "notes"));
        check(&e).unwrap();
    }

    #[test]
    fn device_and_fifo_entries_are_refused() {
        let mut e = good();
        e.push(E {
            name: "./null",
            kind: EntryType::Char,
            data: b"",
            link: "",
        });
        assert_unsafe(check(&e), "./null", "entry type Char");
        assert_unsafe(
            check(&[E {
                name: "fifo",
                kind: EntryType::Fifo,
                data: b"",
                link: "",
            }]),
            "fifo",
            "entry type Fifo",
        );
    }

    #[test]
    fn duplicate_paths_are_refused() {
        let mut e = good();
        e.push(file(".env", "B=2\n"));
        assert_unsafe(check(&e), ".env", "duplicate");
        assert_unsafe(
            check(&[dir("config/"), dir("./config")]),
            "./config",
            "duplicate",
        );
    }

    #[test]
    fn hard_links_must_point_to_earlier_files() {
        let r = check(&[link("a", EntryType::Link, "b"), file("b", "")]);
        assert_unsafe(r, "a", "not an earlier file entry");
        let r = check(&[dir("d/"), link("a", EntryType::Link, "d")]);
        assert_unsafe(r, "a", "not an earlier file entry");
        let r = check(&[link("a", EntryType::Link, "/etc/passwd")]);
        assert_unsafe(r, "a", "not an earlier file entry");
    }

    #[test]
    fn paths_through_symlinks_are_refused() {
        let r = check(&[
            link("etc", EntryType::Symlink, "/etc"),
            file("etc/cron.d/x", "evil"),
        ]);
        assert_unsafe(r, "etc/cron.d/x", "goes through the symlink etc");
    }

    #[test]
    fn truncated_package_is_corrupt() {
        let full = gzip(&tar_bytes(&good()));
        let dir = tempfile::tempdir().unwrap();
        for cut in [full.len() / 2, full.len() - 4, 5] {
            let p = write_pkg(&dir, &full[..cut]);
            match validate(&p, "docker-compose.yml", &data_paths()) {
                Err(Error::Corrupt { path, .. }) => assert_eq!(path, p),
                other => panic!("cut at {cut}: expected corrupt, got {other:?}"),
            }
        }
    }

    #[test]
    fn damaged_gzip_trailer_is_corrupt() {
        let mut bytes = gzip(&tar_bytes(&good()));
        let n = bytes.len();
        bytes[n - 6] ^= 0xff; // inside the CRC32 of the trailer
        let dir = tempfile::tempdir().unwrap();
        let p = write_pkg(&dir, &bytes);
        let err = validate(&p, "docker-compose.yml", &data_paths()).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    #[test]
    fn not_gzip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_pkg(&dir, &tar_bytes(&good()));
        let err = validate(&p, "docker-compose.yml", &data_paths()).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("release.tar.gz"), "{err}");

        let empty = write_pkg(&dir, b"");
        let err = validate(&empty, "docker-compose.yml", &data_paths()).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");

        let missing = dir.path().join("nope.tar.gz");
        let err = validate(&missing, "docker-compose.yml", &data_paths()).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.to_string().contains("nope.tar.gz"), "{err}");
    }
}
