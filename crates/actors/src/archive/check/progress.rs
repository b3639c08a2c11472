//! Progress for reading an archive: the parallel reader uses `pread`, so the file offset says
//! nothing; [`ProgressMap`] maps the decompressed bytes consumed to a position in the file.

use std::io::{self, Read};

/// Counts the decompressed bytes handed to the tar reader.
pub(in crate::archive) struct Counting<R> {
    inner: R,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// Maps "decompressed bytes consumed" to "position in the archive file" for progress.
///
/// The parallel reader uses `pread`, so the file offset says nothing; instead the member
/// index (one small read per member header) and the builder's fixed chunk size give the
/// member a decompressed offset falls into. For a gzip without the index the position is
/// unknown and progress counts decompressed bytes against no total.
pub(in crate::archive) struct ProgressMap {
    members: Option<Vec<(u64, u32)>>,
    /// Uncompressed bytes per member (all but the last have the same size).
    chunk: u64,
    total: u64,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl ProgressMap {
    /// Wraps `reader`; `file` is the archive (only its member headers are read).
    pub(in crate::archive) fn new<R: Read>(
        file: &std::fs::File,
        total: u64,
        reader: R,
    ) -> (Self, Counting<R>) {
        let members = crate::archive::pgzip::member_offsets(file).ok().flatten();
        // The chunk size is the writer's choice: read it from the first member's ISIZE.
        let chunk = members
            .as_ref()
            .and_then(|m| m.first())
            .and_then(|&(offset, len)| {
                let mut isize = [0u8; 4];
                use std::os::unix::fs::FileExt;
                let at = offset.checked_add(u64::from(len).checked_sub(4)?)?;
                file.read_exact_at(&mut isize, at).ok()?;
                Some(u64::from(u32::from_le_bytes(isize)))
            })
            .filter(|&c| c > 0)
            .unwrap_or(crate::archive::pgzip::CHUNK_SIZE as u64);
        let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counting = Counting {
            inner: reader,
            count: std::sync::Arc::clone(&count),
        };
        (
            Self {
                members,
                chunk,
                total,
                count,
            },
            counting,
        )
    }

    /// The phase total: the archive size when positions can be mapped.
    pub(in crate::archive) fn total(&self) -> Option<u64> {
        self.members.as_ref().map(|_| self.total)
    }

    /// The final position: the whole archive when mapped.
    pub(in crate::archive) fn end(&self) -> u64 {
        match self.members {
            Some(_) => self.total,
            None => self.count.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Current position (archive bytes when mapped, else decompressed bytes).
    pub(in crate::archive) fn position(&self) -> u64 {
        let done = self.count.load(std::sync::atomic::Ordering::Relaxed);
        let Some(members) = &self.members else {
            return done;
        };
        let chunk = self.chunk;
        let i = (done / chunk) as usize;
        match members.get(i) {
            Some(&(offset, len)) => {
                let within = (done % chunk) as u128 * u128::from(len) / u128::from(chunk);
                offset.saturating_add(within as u64).min(self.total)
            }
            None => self.total,
        }
    }
}
