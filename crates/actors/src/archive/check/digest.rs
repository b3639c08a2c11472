//! A fingerprint of a list of entries, so that the entries read from an archive can be
//! compared with its manifest (the last entry) without keeping either in memory.
//!
//! Design note: the fingerprint is two parts. Everything known in order on the reading thread
//! (position, path, type, size, mode, owner, mtime, link target, whether a checksum is
//! expected) goes through one running SHA-256. File checksums arrive in any order from the
//! extraction's writer threads, so each is folded in as SHA-256(position, checksum) added to
//! a 256-bit sum (four 64-bit lanes, wrapping): the order of the additions does not matter,
//! the position inside each term does. Equal fingerprints mean the manifest lists exactly the
//! entries read, in the same order, with the same fields (what `compare_manifest` would find
//! no difference in). Anything else (a difference, a reordered or hex-spelled manifest, an
//! entry refused earlier) is settled by the exact comparison, which reads the archive again:
//! that costs time and memory only for an archive that does not match its manifest.

use sha2::{Digest, Sha256};

use crate::archive::{EntryKind, Manifest, ManifestEntry};

/// Fingerprint of a sequence of entries (see the module docs).
#[derive(Clone)]
pub(in crate::archive) struct EntryDigest {
    ordered: Sha256,
    sums: ShaSum,
    count: u64,
    /// A manifest entry could not be read as bytes (bad hex, no path): never equal.
    invalid: bool,
}

/// The order-independent part: file checksums by position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(in crate::archive) struct ShaSum([u64; 4]);

impl ShaSum {
    /// Adds the checksum `sha` of the entry at `position`.
    pub(in crate::archive) fn add(&mut self, position: u64, sha: &[u8; 32]) {
        let mut h = Sha256::new();
        h.update(position.to_le_bytes());
        h.update(sha);
        let term: [u8; 32] = h.finalize().into();
        for (lane, chunk) in self.0.iter_mut().zip(term.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *lane = lane.wrapping_add(u64::from_le_bytes(b));
        }
    }

    /// Adds another sum (the workers' sums are combined this way).
    pub(in crate::archive) fn merge(&mut self, other: ShaSum) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.wrapping_add(b);
        }
    }
}

/// The fields of one entry that the comparison looks at.
pub(in crate::archive) struct EntryFields<'a> {
    pub path: &'a [u8],
    pub kind: EntryKind,
    pub size: u64,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub target: Option<&'a [u8]>,
    /// A content checksum belongs to this entry (given now or later through [`EntryDigest::sha`]).
    pub has_sha: bool,
}

impl std::fmt::Debug for EntryDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryDigest")
            .field("count", &self.count)
            .field("invalid", &self.invalid)
            .finish_non_exhaustive()
    }
}

impl Default for EntryDigest {
    fn default() -> Self {
        Self {
            ordered: Sha256::new(),
            sums: ShaSum::default(),
            count: 0,
            invalid: false,
        }
    }
}

impl EntryDigest {
    /// Adds the next entry; returns its position.
    pub(in crate::archive) fn entry(&mut self, e: &EntryFields<'_>) -> u64 {
        let h = &mut self.ordered;
        let position = self.count;
        h.update(position.to_le_bytes());
        h.update((e.path.len() as u64).to_le_bytes());
        h.update(e.path);
        h.update([kind_code(e.kind), u8::from(e.has_sha)]);
        h.update(e.size.to_le_bytes());
        h.update(e.mode.to_le_bytes());
        h.update(e.uid.to_le_bytes());
        h.update(e.gid.to_le_bytes());
        h.update(e.mtime.to_le_bytes());
        match e.target {
            Some(t) => {
                h.update([1]);
                h.update((t.len() as u64).to_le_bytes());
                h.update(t);
            }
            None => h.update([0]),
        }
        self.count += 1;
        position
    }

    /// Adds the content checksum of the entry at `position`.
    pub(in crate::archive) fn sha(&mut self, position: u64, sha: &[u8; 32]) {
        self.sums.add(position, sha);
    }

    /// Adds checksums summed elsewhere (by the extraction's writer threads).
    pub(in crate::archive) fn merge_sums(&mut self, sums: ShaSum) {
        self.sums.merge(sums);
    }

    /// Adds the next entry of a manifest.
    pub(in crate::archive) fn manifest_entry(&mut self, m: &ManifestEntry) {
        let Some(path) = m.path_bytes() else {
            self.invalid = true;
            return;
        };
        let target = match (&m.target, &m.target_hex) {
            (None, None) => None,
            _ => match m.target_bytes() {
                Some(t) => Some(t),
                None => {
                    self.invalid = true;
                    return;
                }
            },
        };
        let position = self.entry(&EntryFields {
            path: &path,
            kind: m.kind,
            size: m.size,
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
            mtime: m.mtime,
            target: target.as_deref(),
            has_sha: m.sha256.is_some(),
        });
        if let Some(s) = &m.sha256 {
            let mut sha = [0u8; 32];
            if hex::decode_to_slice(s, &mut sha).is_err() {
                self.invalid = true;
                return;
            }
            self.sha(position, &sha);
        }
    }

    /// The fingerprint of a whole manifest's entries (one given from outside the archive).
    pub(in crate::archive) fn of_manifest(manifest: &Manifest) -> EntryDigest {
        let mut d = EntryDigest::default();
        for m in &manifest.entries {
            d.manifest_entry(m);
        }
        d
    }

    /// Whether both sides saw the same entries.
    pub(in crate::archive) fn matches(&self, other: &EntryDigest) -> bool {
        !self.invalid
            && !other.invalid
            && self.count == other.count
            && self.sums == other.sums
            && self.ordered.clone().finalize() == other.ordered.clone().finalize()
    }
}

fn kind_code(kind: EntryKind) -> u8 {
    match kind {
        EntryKind::Dir => 0,
        EntryKind::File => 1,
        EntryKind::Symlink => 2,
        EntryKind::Hardlink => 3,
    }
}
