//! The manifest stream: the metadata entries (`.nuwax-backup/` and `info.json` first,
//! `manifest.json` last) and the comparison of the manifest with the entries actually read,
//! entry by entry while it is parsed, so a large manifest is never held in memory twice.

use std::collections::HashMap;
use std::io::{self, Read};

use super::digest::EntryDigest;
use super::entry::{Parsed, kind_name, top_level};
use super::{Refusal, display_bytes, stream_error};
use crate::archive::format::{INFO_PATH, MANIFEST_PATH};
use crate::archive::{ArchiveInfo, EntryKind, META_DIR, Manifest, ManifestEntry};
use crate::dumps::DUMPS_DIR;

/// Largest `info.json` we read into memory.
const MAX_INFO_BYTES: u64 = 1 << 20;
/// Largest `manifest.json` we read into memory (about 3 million entries).
const MAX_MANIFEST_BYTES: u64 = 1 << 30;
/// Findings beyond this many are summarised in one line.
const MAX_PROBLEMS: usize = 50;

/// Where the metadata entries are in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MetaPhase {
    Start,
    DirSeen,
    InfoSeen,
    /// Content came before any `info.json` (reported once).
    NoInfo,
    ManifestSeen,
}

/// How `manifest.json` is read.
#[derive(Clone, Copy)]
enum Mode {
    /// Parsed whole into [`Meta::manifest`].
    Whole,
    /// Only its fingerprint is kept.
    Digest,
}

/// Follows the metadata entries: `.nuwax-backup/` and `info.json` first, `manifest.json` last.
pub(in crate::archive) struct Meta {
    phase: MetaPhase,
    pub info: Option<ArchiveInfo>,
    pub manifest: Option<Manifest>,
    /// Set by [`Meta::accept_digest`]: the fingerprint of the manifest's entries (which are
    /// not kept; `manifest.entries` is empty).
    pub digest: Option<EntryDigest>,
}

impl Meta {
    pub(in crate::archive) fn new() -> Self {
        Self {
            phase: MetaPhase::Start,
            info: None,
            manifest: None,
            digest: None,
        }
    }

    /// Handles `e` if it is a metadata entry (reading its data from `data`) and returns
    /// `Ok(true)`; returns `Ok(false)` for a content entry, which is only allowed between
    /// `info.json` and `manifest.json`.
    pub(in crate::archive) fn accept(
        &mut self,
        e: &Parsed,
        data: &mut dyn Read,
    ) -> Result<bool, Refusal> {
        self.accept_inner(e, data, Mode::Whole)
    }

    /// [`Meta::accept`] that keeps only the fingerprint of the manifest's entries (in
    /// `digest`), for a comparison with the [`EntryDigest`] of the entries read.
    pub(in crate::archive) fn accept_digest(
        &mut self,
        e: &Parsed,
        data: &mut dyn Read,
    ) -> Result<bool, Refusal> {
        self.accept_inner(e, data, Mode::Digest)
    }

    fn accept_inner(
        &mut self,
        e: &Parsed,
        data: &mut dyn Read,
        mode: Mode,
    ) -> Result<bool, Refusal> {
        let shown = display_bytes(&e.path);
        if self.phase == MetaPhase::ManifestSeen {
            return Err(Refusal::Corrupt(format!(
                "entry {shown:?} after {MANIFEST_PATH}, which must be the last entry"
            )));
        }
        if top_level(&e.path) != META_DIR.as_bytes() {
            if matches!(self.phase, MetaPhase::Start | MetaPhase::DirSeen) {
                self.phase = MetaPhase::NoInfo;
                return Err(Refusal::Corrupt(format!(
                    "entry {shown:?} before {INFO_PATH}, which must come first \
                     (not a nuwax-cli archive?)"
                )));
            }
            return Ok(false);
        }
        let path = e.path.as_slice();
        match (path, e.kind, self.phase) {
            (p, EntryKind::Dir, MetaPhase::Start) if p == META_DIR.as_bytes() => {
                self.phase = MetaPhase::DirSeen;
            }
            (p, EntryKind::File, MetaPhase::Start | MetaPhase::DirSeen)
                if p == INFO_PATH.as_bytes() =>
            {
                let bytes = read_capped(data, e.size, MAX_INFO_BYTES, INFO_PATH)?;
                let info: ArchiveInfo = serde_json::from_slice(&bytes)
                    .map_err(|err| Refusal::Corrupt(format!("{INFO_PATH} is invalid: {err}")))?;
                check_info_numbers(&info)?;
                self.info = Some(info);
                self.phase = MetaPhase::InfoSeen;
            }
            (p, EntryKind::Dir, MetaPhase::InfoSeen) if p == DUMPS_DIR.as_bytes() => {}
            (p, EntryKind::File, MetaPhase::InfoSeen) if is_dump_path(p) => {
                check_dump(self.info.as_ref(), e, data, &mut io::sink())?;
            }
            (p, EntryKind::File, MetaPhase::InfoSeen | MetaPhase::NoInfo)
                if p == MANIFEST_PATH.as_bytes() =>
            {
                if let Mode::Digest = mode {
                    let (info, digest) = stream_manifest_digest(data, e.size)?;
                    self.manifest = Some(Manifest {
                        info,
                        entries: Vec::new(),
                        layout: None,
                        spans: Vec::new(),
                    });
                    self.digest = Some(digest);
                    self.phase = MetaPhase::ManifestSeen;
                    return Ok(true);
                }
                let bytes = read_capped(data, e.size, MAX_MANIFEST_BYTES, MANIFEST_PATH)?;
                let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|err| {
                    Refusal::Corrupt(format!("{MANIFEST_PATH} is invalid: {err}"))
                })?;
                self.manifest = Some(manifest);
                self.phase = MetaPhase::ManifestSeen;
            }
            _ => {
                return Err(Refusal::Corrupt(format!(
                    "unexpected metadata entry {shown:?} ({})",
                    kind_name(e.kind)
                )));
            }
        }
        Ok(true)
    }

    /// At the end of the tar stream: both metadata entries must have been there and agree.
    pub(in crate::archive) fn finish(&self) -> Result<(&ArchiveInfo, &Manifest), Refusal> {
        let info = self.info.as_ref().ok_or_else(|| {
            Refusal::Corrupt(format!("{INFO_PATH} is missing (not a nuwax-cli archive?)"))
        })?;
        let manifest = self.manifest.as_ref().ok_or_else(|| {
            Refusal::Corrupt(format!(
                "{MANIFEST_PATH} is missing (the archive is incomplete)"
            ))
        })?;
        if &manifest.info != info {
            return Err(Refusal::Corrupt(format!(
                "{INFO_PATH} and the info in {MANIFEST_PATH} differ"
            )));
        }
        Ok((info, manifest))
    }
}

/// `.nuwax-backup/dumps/<something>`.
fn is_dump_path(p: &[u8]) -> bool {
    p.len() > DUMPS_DIR.len() + 1
        && p.starts_with(DUMPS_DIR.as_bytes())
        && p[DUMPS_DIR.len()] == b'/'
}

/// Reads a dump entry into `out` while hashing it, and checks it is one `info.json` lists,
/// with the size and checksum recorded there.
pub(in crate::archive) fn check_dump(
    info: Option<&ArchiveInfo>,
    e: &Parsed,
    data: &mut dyn Read,
    out: &mut dyn io::Write,
) -> Result<crate::archive::DumpRecord, Refusal> {
    let shown = display_bytes(&e.path);
    let record = info
        .and_then(|i| {
            i.dumps
                .iter()
                .find(|d| d.archive_path().as_bytes() == e.path.as_slice())
        })
        .ok_or_else(|| Refusal::Corrupt(format!("dump {shown:?} is not listed in {INFO_PATH}")))?;
    if e.size != record.size {
        return Err(Refusal::Corrupt(format!(
            "dump {shown:?} has {} bytes, {INFO_PATH} says {}",
            e.size, record.size
        )));
    }
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match data.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(stream_error(err, "reading a dump")),
        };
        sha2::Digest::update(&mut hasher, &buf[..n]);
        out.write_all(&buf[..n]).map_err(Refusal::Io)?;
    }
    let sha = hex::encode(sha2::Digest::finalize(hasher));
    if sha != record.sha256 {
        return Err(Refusal::Corrupt(format!(
            "dump {shown:?} does not match its checksum in {INFO_PATH}"
        )));
    }
    Ok(record.clone())
}

/// The numbers of `info.json` that code adds up: `top_level_bytes` is summed by the rollback's
/// space preflight (any subset of it), so its total must fit a `u64`; an archive claiming
/// sizes near `u64::MAX` is corrupt (exit 4), never an overflow (a panic, or a wrapped sum
/// that would let a too-large restore pass the preflight).
pub(in crate::archive) fn check_info_numbers(info: &ArchiveInfo) -> Result<(), Refusal> {
    info.top_level_bytes
        .values()
        .try_fold(0u64, |sum, &b| sum.checked_add(b))
        .map(|_| ())
        .ok_or_else(|| {
            Refusal::Corrupt(format!(
                "{INFO_PATH}: top_level_bytes add up to more than {} bytes",
                u64::MAX
            ))
        })
}

/// Parses `manifest.json` (`size` bytes of `data`) from the stream into its info and the
/// fingerprint of its entries, keeping none of them. The errors are those of reading it whole.
fn stream_manifest_digest(
    data: &mut dyn Read,
    size: u64,
) -> Result<(ArchiveInfo, EntryDigest), Refusal> {
    let mut digest = EntryDigest::default();
    let info = parse_streamed(data, size, &mut |m| digest.manifest_entry(&m))?;
    Ok((info, digest))
}

/// Parses `manifest.json` (`size` bytes of `data`), handing each entry to `sink`; returns the
/// info. The errors are those of reading it whole (too large, truncated, invalid JSON).
fn parse_streamed(
    data: &mut dyn Read,
    size: u64,
    sink: &mut dyn FnMut(ManifestEntry),
) -> Result<ArchiveInfo, Refusal> {
    use serde::de::DeserializeSeed;

    if size > MAX_MANIFEST_BYTES {
        return Err(Refusal::Corrupt(format!(
            "{MANIFEST_PATH} is {size} bytes, more than the {MAX_MANIFEST_BYTES} we accept"
        )));
    }
    let mut counted = CountRead {
        inner: data.take(size),
        n: 0,
    };
    let parsed = {
        let reader = io::BufReader::with_capacity(64 << 10, &mut counted);
        let mut de = serde_json::Deserializer::from_reader(reader);
        ManifestSeed(sink)
            .deserialize(&mut de)
            .and_then(|info| de.end().map(|()| info))
    };
    let truncated = |n: u64| {
        Refusal::Broken(format!(
            "{MANIFEST_PATH} is truncated ({n} of {size} bytes)"
        ))
    };
    match parsed {
        Ok(_) if counted.n != size => Err(truncated(counted.n)),
        Ok(info) => Ok(info),
        Err(err) if err.is_io() => Err(stream_error(err.into(), MANIFEST_PATH)),
        Err(_) if counted.n != size => Err(truncated(counted.n)),
        Err(err) => Err(Refusal::Corrupt(format!(
            "{MANIFEST_PATH} is invalid: {err}"
        ))),
    }
}

/// Counts the bytes read through it.
struct CountRead<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for CountRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n = self.n.saturating_add(k as u64);
        Ok(k)
    }
}

/// Deserializes a [`Manifest`] (as its derived `Deserialize` would: a map with `info` and
/// `entries` in any order, unknown keys ignored, or a two-element sequence), handing each
/// entry to a function instead of collecting them. Yields the info.
struct ManifestSeed<'a>(&'a mut dyn FnMut(ManifestEntry));

impl<'de> serde::de::DeserializeSeed<'de> for ManifestSeed<'_> {
    type Value = ArchiveInfo;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<ArchiveInfo, D::Error> {
        d.deserialize_struct("Manifest", &["info", "entries"], self)
    }
}

impl<'de> serde::de::Visitor<'de> for ManifestSeed<'_> {
    type Value = ArchiveInfo;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("struct Manifest")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ArchiveInfo, A::Error> {
        use serde::de::Error;
        let mut info = None;
        let mut entries = false;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "info" if info.is_some() => return Err(A::Error::duplicate_field("info")),
                "info" => info = Some(map.next_value()?),
                "entries" if entries => return Err(A::Error::duplicate_field("entries")),
                "entries" => {
                    map.next_value_seed(EntriesSeed(&mut *self.0))?;
                    entries = true;
                }
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        let info = info.ok_or_else(|| A::Error::missing_field("info"))?;
        if !entries {
            return Err(A::Error::missing_field("entries"));
        }
        Ok(info)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<ArchiveInfo, A::Error> {
        use serde::de::Error;
        let info = seq
            .next_element()?
            .ok_or_else(|| A::Error::invalid_length(0, &"struct Manifest with 2 elements"))?;
        seq.next_element_seed(EntriesSeed(&mut *self.0))?
            .ok_or_else(|| A::Error::invalid_length(1, &"struct Manifest with 2 elements"))?;
        Ok(info)
    }
}

/// The `entries` array of a manifest, element by element into a [`StreamCheck`].
struct EntriesSeed<'a>(&'a mut dyn FnMut(ManifestEntry));

impl<'de> serde::de::DeserializeSeed<'de> for EntriesSeed<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for EntriesSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(m) = seq.next_element::<ManifestEntry>()? {
            (self.0)(m);
        }
        Ok(())
    }
}

fn read_capped(data: &mut dyn Read, size: u64, cap: u64, what: &str) -> Result<Vec<u8>, Refusal> {
    if size > cap {
        return Err(Refusal::Corrupt(format!(
            "{what} is {size} bytes, more than the {cap} we accept"
        )));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    data.take(size)
        .read_to_end(&mut bytes)
        .map_err(|e| stream_error(e, what))?;
    if bytes.len() as u64 != size {
        return Err(Refusal::Broken(format!(
            "{what} is truncated ({} of {size} bytes)",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Compares the entries read from the tar stream with the manifest, one to one. Returns the
/// differences, each naming the entry (at most [`MAX_PROBLEMS`] lines plus a summary).
pub(in crate::archive) fn compare_manifest(
    manifest: &Manifest,
    observed: &[ManifestEntry],
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut expected: HashMap<Vec<u8>, &ManifestEntry> = HashMap::new();
    for m in &manifest.entries {
        match m.path_bytes() {
            Some(p) => {
                if expected.insert(p.clone(), m).is_some() {
                    problems.push(format!("manifest lists {:?} twice", display_bytes(&p)));
                }
            }
            None => problems.push("manifest has an entry without a valid path".into()),
        }
    }
    for o in observed {
        let path = o.path_bytes().unwrap_or_default();
        let shown = display_bytes(&path);
        let Some(m) = expected.remove(&path) else {
            problems.push(format!("entry {shown:?} is not in the manifest"));
            continue;
        };
        let mut diff = |field: &str, want: String, got: String| {
            if want != got {
                problems.push(format!(
                    "entry {shown:?}: manifest says {field} {want}, archive has {got}"
                ));
            }
        };
        diff("type", format!("{:?}", m.kind), format!("{:?}", o.kind));
        diff("size", m.size.to_string(), o.size.to_string());
        diff("mode", format!("{:o}", m.mode), format!("{:o}", o.mode));
        diff("uid", m.uid.to_string(), o.uid.to_string());
        diff("gid", m.gid.to_string(), o.gid.to_string());
        diff("mtime", m.mtime.to_string(), o.mtime.to_string());
        diff(
            "link target",
            format!("{:?}", m.target_bytes().map(|t| display_bytes(&t))),
            format!("{:?}", o.target_bytes().map(|t| display_bytes(&t))),
        );
        let norm = |s: &Option<String>| s.as_ref().map(|s| s.to_ascii_lowercase());
        if norm(&m.sha256) != norm(&o.sha256) {
            problems.push(format!(
                "entry {shown:?}: content SHA-256 {} does not match the manifest's {}",
                o.sha256.as_deref().unwrap_or("-"),
                m.sha256.as_deref().unwrap_or("-")
            ));
        }
    }
    let mut missing: Vec<Vec<u8>> = expected.into_keys().collect();
    missing.sort();
    for p in missing {
        problems.push(format!(
            "entry {:?} is listed in the manifest but missing from the archive",
            display_bytes(&p)
        ));
    }
    if problems.len() > MAX_PROBLEMS {
        let more = problems.len() - MAX_PROBLEMS;
        problems.truncate(MAX_PROBLEMS);
        problems.push(format!("... and {more} more differences from the manifest"));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::super::entry::Observed;
    use super::*;
    use crate::archive::format::encode_bytes;

    fn sample_info() -> ArchiveInfo {
        ArchiveInfo {
            format: 1,
            tool: "t".into(),
            backup_type: "Manual".into(),
            service_version: "1".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            compose_project: "p".into(),
            data_paths: vec![],
            excluded: vec![],
            images: vec![],
            top_level_bytes: Default::default(),
            dumps: Vec::new(),
            hot: false,
        }
    }

    fn sample_entry(i: usize) -> ManifestEntry {
        let mut raw = format!("top/f{i}").into_bytes();
        if i == 5 {
            raw.push(0xff); // not UTF-8: hex-encoded
        }
        let (path, path_hex) = encode_bytes(&raw);
        if i == 4 {
            let (target, target_hex) = encode_bytes(b"f1");
            return ManifestEntry {
                path,
                path_hex,
                kind: EntryKind::Symlink,
                size: 0,
                mode: 0o777,
                uid: 0,
                gid: 0,
                mtime: 5,
                sha256: None,
                target,
                target_hex,
                stat: None,
            };
        }
        ManifestEntry {
            path,
            path_hex,
            kind: EntryKind::File,
            size: i as u64,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 5,
            sha256: Some(format!("{i:064x}")),
            target: None,
            target_hex: None,
            stat: None,
        }
    }

    /// What the readers find for `json` (as the manifest entry's data) against `observed`:
    /// nothing when the fingerprints match, else what the exact comparison says.
    fn streamed(json: &[u8], observed: &[ManifestEntry]) -> Result<Vec<String>, Refusal> {
        let mut read = EntryDigest::default();
        for o in as_observed(observed) {
            let m = o.to_manifest_entry();
            let slot = read.entry(&super::super::digest::EntryFields {
                path: &m.path_bytes().unwrap(),
                kind: m.kind,
                size: m.size,
                mode: m.mode,
                uid: m.uid,
                gid: m.gid,
                mtime: m.mtime,
                target: m.target_bytes().as_deref(),
                has_sha: m.kind == EntryKind::File,
            });
            if let Some(sha) = o.sha256 {
                read.sha(slot, &sha);
            }
        }
        let (info, digest) = stream_manifest_digest(&mut &json[..], json.len() as u64)?;
        if digest.matches(&read) {
            return Ok(Vec::new());
        }
        let manifest: Manifest = serde_json::from_slice(json).unwrap();
        assert_eq!(manifest.info, info);
        Ok(compare_manifest(&manifest, observed))
    }

    fn as_observed(entries: &[ManifestEntry]) -> Vec<Observed> {
        entries
            .iter()
            .map(|m| {
                let mut o = Observed::of(&Parsed {
                    path: m.path_bytes().unwrap(),
                    kind: m.kind,
                    size: m.size,
                    mode: m.mode,
                    uid: m.uid,
                    gid: m.gid,
                    mtime: m.mtime,
                    target: m.target_bytes(),
                });
                o.sha256 = m.sha256.as_ref().map(|s| {
                    let mut d = [0u8; 32];
                    hex::decode_to_slice(s, &mut d).unwrap();
                    d
                });
                assert!(o.same_as(m) && o.to_manifest_entry() == *m);
                o
            })
            .collect()
    }

    #[test]
    fn streamed_manifest_check_finds_what_compare_manifest_finds() {
        let observed: Vec<ManifestEntry> = (0..6).map(sample_entry).collect();
        let variants: Vec<Vec<ManifestEntry>> = vec![
            observed.clone(),
            // A field differs (late and early), upper-case checksum (equal for compare).
            {
                let mut m = observed.clone();
                m[4].size = 99;
                m
            },
            {
                let mut m = observed.clone();
                m[0].mode = 0o600;
                m
            },
            {
                let mut m = observed.clone();
                m[2].sha256 = m[2].sha256.as_ref().map(|s| s.to_ascii_uppercase());
                m
            },
            // Missing, extra, reordered, duplicated, empty, and a hex-encoded path.
            observed[..4].to_vec(),
            {
                let mut m = observed.clone();
                m.push(sample_entry(9));
                m
            },
            {
                let mut m = observed.clone();
                m.swap(1, 3);
                m
            },
            {
                let mut m = observed.clone();
                m.insert(3, observed[2].clone());
                m
            },
            vec![],
            {
                let mut m = observed.clone();
                m[1].path_hex = Some(hex::encode(m[1].path.take().unwrap()));
                m
            },
        ];
        for (i, entries) in variants.into_iter().enumerate() {
            let manifest = Manifest {
                info: sample_info(),
                entries,
                layout: None,
                spans: Vec::new(),
            };
            let json = serde_json::to_vec(&manifest).unwrap();
            let want = compare_manifest(&manifest, &observed);
            let got = streamed(&json, &observed).unwrap_or_else(|r| panic!("{i}: {r:?}"));
            assert_eq!(got, want, "variant {i}");
        }
        // Key order, unknown keys and the sequence form are accepted as by the derive.
        let entries = serde_json::to_string(&observed).unwrap();
        let info = serde_json::to_string(&sample_info()).unwrap();
        for json in [
            format!("{{\"entries\":{entries},\"x\":[1,{{}}],\"info\":{info}}}"),
            format!("[{info},{entries}]\n"),
        ] {
            assert!(serde_json::from_str::<Manifest>(&json).is_ok());
            assert_eq!(
                streamed(json.as_bytes(), &observed).unwrap(),
                Vec::<String>::new()
            );
        }
    }

    #[test]
    fn streamed_manifest_errors_match_reading_it_whole() {
        let observed: Vec<ManifestEntry> = (0..3).map(sample_entry).collect();
        let info = serde_json::to_string(&sample_info()).unwrap();
        let entries = serde_json::to_string(&observed).unwrap();
        for (json, want) in [
            (format!("{{\"info\":{info}}}"), "missing field `entries`"),
            (format!("{{\"entries\":{entries}}}"), "missing field `info`"),
            (
                format!("{{\"info\":{info},\"info\":{info},\"entries\":[]}}"),
                "duplicate field `info`",
            ),
            (format!("{{\"info\":{info},\"entries\":[]}} x"), "trailing"),
            ("[1,2]".to_string(), "invalid type"),
            ("{\"info\":".to_string(), "EOF"),
        ] {
            let whole = serde_json::from_str::<Manifest>(&json)
                .unwrap_err()
                .to_string();
            match streamed(json.as_bytes(), &observed) {
                Err(Refusal::Corrupt(m)) => {
                    assert!(m.contains(want), "{json}: {m}");
                    assert!(whole.contains(want), "{json}: {whole}");
                }
                other => panic!("{json}: {other:?}"),
            }
        }
        // Shorter data than the header says: truncated, whatever the JSON looks like.
        let json = format!("{{\"info\":{info},\"entries\":{entries}}}");
        for cut in [0, 10, json.len() - 1, json.len()] {
            match stream_manifest_digest(&mut &json.as_bytes()[..cut], json.len() as u64 + 1) {
                Err(Refusal::Broken(m)) => assert!(m.contains("truncated"), "{cut}: {m}"),
                other => panic!("{cut}: {other:?}"),
            }
        }
        // Over the cap: refused before reading.
        match stream_manifest_digest(&mut &b""[..], MAX_MANIFEST_BYTES + 1) {
            Err(Refusal::Corrupt(m)) => assert!(m.contains("more than"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
