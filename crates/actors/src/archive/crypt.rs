//! The age layer around an archive's bytes (README "Encryption").
//!
//! Design note: an encrypted archive is the ordinary `.tar.gz` byte stream encrypted with age
//! (`age -d -i key.txt FILE | tar -xz` reads it). Writing, [`Sealed`] sits between the
//! parallel gzip writer and the hashing file sink, so the checksum the catalog records is the
//! ciphertext's (what `remote verify` and the pre-restore check compare without a key).
//! Reading, [`open_plain`] tells an age file by its first line; the decryption runs on a
//! thread of its own (the STREAM chunks of age are authenticated one by one, a truncated or
//! altered ciphertext fails there) and hands plaintext blocks to the gzip reader on the
//! caller's thread, so decryption and decompression overlap. Everything past the decryption
//! (tar parsing, the entry checks, the manifest comparison, the parallel file writers) is the
//! same code as for a plain archive.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;

use crossbeam_channel::{Receiver, bounded};

use super::pgzip;
use crate::encryption::{DecryptKey, Encryption};
use crate::error::{Error, Result};

/// The first line of every binary age file.
const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";
/// Plaintext handed from the decryption thread per message, and how many may wait.
const BLOCK: usize = 1 << 20;
const QUEUE: usize = 4;

/// The archive file's sink: plain, or through an age encrypting writer.
pub(super) enum Sealed<W: Write> {
    Plain(W),
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> Sealed<W> {
    pub(super) fn new(inner: W, encryption: Option<&Encryption>) -> io::Result<Self> {
        Ok(match encryption {
            None => Sealed::Plain(inner),
            Some(e) => Sealed::Age(e.writer(inner)?),
        })
    }

    /// The file sink when nothing is encrypted: where an incremental build copies members
    /// and records their spans (an encrypted archive has neither).
    pub(super) fn plain_mut(&mut self) -> Option<&mut W> {
        match self {
            Sealed::Plain(w) => Some(w),
            Sealed::Age(_) => None,
        }
    }

    /// Writes age's last chunk; returns the file sink.
    pub(super) fn finish(self) -> io::Result<W> {
        match self {
            Sealed::Plain(w) => Ok(w),
            Sealed::Age(w) => w.finish(),
        }
    }
}

impl<W: Write> Write for Sealed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sealed::Plain(w) => w.write(buf),
            Sealed::Age(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sealed::Plain(w) => w.flush(),
            Sealed::Age(w) => w.flush(),
        }
    }
}

/// Whether the open archive is an age file (by its first line, whatever its name).
pub fn is_age_file(file: &File) -> io::Result<bool> {
    let mut head = [0u8; AGE_MAGIC.len()];
    let mut got = 0;
    while got < head.len() {
        match file.read_at(&mut head[got..], got as u64)? {
            0 => return Ok(false),
            n => got += n,
        }
    }
    Ok(head == AGE_MAGIC)
}

/// The plaintext `.tar.gz` stream's decompressed bytes (the tar stream) of `file`: a plain
/// archive through the parallel gzip reader, an age file decrypted with `key` first.
/// `gzip_error` maps the gzip reader's I/O error as each caller reports it.
pub(super) fn open_plain(
    path: &std::path::Path,
    file: File,
    key: Option<&DecryptKey>,
    threads: usize,
    gzip_error: impl FnOnce(io::Error) -> Error,
) -> Result<Box<dyn Read + Send>> {
    let encrypted = is_age_file(&file).map_err(|e| Error::io("cannot read archive", path, e))?;
    if !encrypted {
        return pgzip::open_reader(file, threads).map_err(gzip_error);
    }
    let Some(key) = key else {
        return Err(Error::KeyRequired(format!(
            "{} is encrypted; pass the identity whose public key it was encrypted to with --identity FILE (or --passphrase-file FILE, or set [encryption] identity_file)",
            path.display()
        )));
    };
    let plain = key
        .decryptor(BufReader::with_capacity(BLOCK, file))
        .map_err(|detail| Error::Decrypt {
            path: path.to_path_buf(),
            detail,
        })?;
    // Decrypted in order on a thread of its own, then the gzip members split off as they
    // come and decompressed in parallel, as for a plain archive.
    let stream = Decrypted::spawn(plain).map_err(|e| Error::io("cannot decrypt", path, e))?;
    pgzip::open_stream_reader(Box::new(stream), threads).map_err(gzip_error)
}

/// Checks that `key` opens the age file at `path` (header only: cheap).
pub fn check_key(path: &std::path::Path, key: &DecryptKey) -> Result<()> {
    let file = File::open(path).map_err(|e| Error::io("cannot open archive", path, e))?;
    key.decryptor(BufReader::new(file))
        .map(drop)
        .map_err(|detail| Error::Decrypt {
            path: path.to_path_buf(),
            detail,
        })
}

/// A file written through a hasher: the SHA-256 and length of what reached the file.
struct HashingFile {
    file: File,
    hasher: sha2::Sha256,
    len: u64,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        use sha2::Digest;
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A file's size and SHA-256 (lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    pub size: u64,
    pub sha256: String,
}

/// Copies `input` to `out` in blocks while hashing it and reporting progress; `Ok(None)`
/// when cancelled.
fn pump(
    mut input: impl Read,
    out: &mut impl Write,
    progress: &crate::progress::Progress,
    cancel: &super::CancelFlag,
) -> io::Result<Option<(u64, String)>> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    let mut len = 0u64;
    loop {
        if cancel.is_cancelled() {
            return Ok(None);
        }
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        len += n as u64;
        progress.advance(len, 0, None);
    }
    Ok(Some((len, hex::encode(hasher.finalize()))))
}

/// Encrypts the plain archive `src` to `encryption`'s recipients into `dest`: written as
/// `dest.partial`, fsynced, renamed, its directory synced. The plain bytes must hash to
/// `plain_sha256` (the catalog's checksum), else nothing is left and the error is a checksum
/// mismatch (exit 4). Returns the ciphertext's size and SHA-256.
pub fn seal_file(
    src: &std::path::Path,
    dest: &std::path::Path,
    encryption: &Encryption,
    plain_sha256: &str,
    progress: &crate::progress::Progress,
    cancel: &super::CancelFlag,
) -> Result<FileDigest> {
    use crate::error::IoContext;
    use sha2::Digest;
    let input = File::open(src).ctx("cannot open archive", src)?;
    let total = input.metadata().ctx("cannot stat archive", src)?.len();
    let partial = crate::fsutil::partial_path(dest);
    let out = File::create(&partial).ctx("cannot create", &partial)?;
    let result = (|| {
        let sink = HashingFile {
            file: out,
            hasher: sha2::Sha256::new(),
            len: 0,
        };
        let mut w = encryption
            .writer(io::BufWriter::with_capacity(BLOCK, sink))
            .ctx("cannot encrypt into", &partial)?;
        progress.phase(crate::progress::Phase::Encrypting, Some(total), None);
        let (_, actual) = pump(
            BufReader::with_capacity(BLOCK, input),
            &mut w,
            progress,
            cancel,
        )
        .ctx("cannot encrypt", src)?
        .ok_or(Error::Interrupted)?;
        let sink = w
            .finish()
            .and_then(|b| b.into_inner().map_err(|e| e.into_error()))
            .ctx("cannot write", &partial)?;
        if actual != plain_sha256 {
            return Err(Error::ChecksumMismatch {
                path: src.to_path_buf(),
                expected: plain_sha256.to_string(),
                actual,
            });
        }
        sink.file.sync_all().ctx("cannot sync", &partial)?;
        progress.finish_phase(total, 0);
        Ok(FileDigest {
            size: sink.len,
            sha256: hex::encode(sink.hasher.finalize()),
        })
    })();
    let sealed = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, dest).ctx("cannot rename into place", dest)?;
    crate::fsutil::sync_parent(dest)?;
    Ok(sealed)
}

/// Decrypts the age file `src` with `key` into `dest` (the plain `.tar.gz`; written as is,
/// the caller renames it). A key that does not open it, or a damaged ciphertext, is
/// [`Error::Decrypt`] (exit 4). Returns the plaintext's size and SHA-256.
pub fn unseal_file(
    src: &std::path::Path,
    dest: &std::path::Path,
    key: &DecryptKey,
    progress: &crate::progress::Progress,
    cancel: &super::CancelFlag,
) -> Result<FileDigest> {
    use crate::error::IoContext;
    let input = File::open(src).ctx("cannot open archive", src)?;
    let total = input.metadata().ctx("cannot stat archive", src)?.len();
    let plain = key
        .decryptor(BufReader::with_capacity(BLOCK, input))
        .map_err(|detail| Error::Decrypt {
            path: src.to_path_buf(),
            detail,
        })?;
    let out = File::create(dest).ctx("cannot create", dest)?;
    let mut w = io::BufWriter::with_capacity(BLOCK, out);
    progress.phase(crate::progress::Phase::Decrypting, Some(total), None);
    let mut reader = ReadFailed {
        inner: plain,
        failed: false,
    };
    let (size, sha256) = match pump(&mut reader, &mut w, progress, cancel) {
        Ok(Some(r)) => r,
        Ok(None) => return Err(Error::Interrupted),
        // age authenticates each chunk: a damaged or truncated ciphertext fails here.
        Err(e) if reader.failed => {
            return Err(Error::Decrypt {
                path: src.to_path_buf(),
                detail: format!("the ciphertext is damaged or truncated: {e}"),
            });
        }
        Err(e) => return Err(Error::io("cannot write", dest, e)),
    };
    let out = w
        .into_inner()
        .map_err(|e| e.into_error())
        .ctx("cannot write", dest)?;
    out.sync_all().ctx("cannot sync", dest)?;
    progress.finish_phase(size, 0);
    Ok(FileDigest { size, sha256 })
}

/// A reader that remembers whether it failed (to tell a read error from a write error).
struct ReadFailed<R> {
    inner: R,
    failed: bool,
}

impl<R: Read> Read for ReadFailed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = self.inner.read(buf);
        if matches!(&r, Err(e) if e.kind() != io::ErrorKind::Interrupted) {
            self.failed = true;
        }
        r
    }
}

/// Plaintext decrypted on a thread of its own, in blocks.
struct Decrypted {
    blocks: Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Decrypted {
    fn spawn<R: Read + Send + 'static>(mut plain: R) -> io::Result<Self> {
        let (tx, rx) = bounded::<io::Result<Vec<u8>>>(QUEUE);
        std::thread::Builder::new()
            .name("age-decrypt".into())
            .spawn(move || {
                loop {
                    let mut block = vec![0u8; BLOCK];
                    let mut filled = 0;
                    let r = loop {
                        match plain.read(&mut block[filled..]) {
                            Ok(0) => break Ok(()),
                            Ok(n) => {
                                filled += n;
                                if filled == block.len() {
                                    break Ok(());
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => break Err(e),
                        }
                    };
                    block.truncate(filled);
                    let end = filled == 0;
                    let msg = match r {
                        Ok(()) => Ok(block),
                        Err(e) => Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("age ciphertext is damaged or truncated: {e}"),
                        )),
                    };
                    let failed = msg.is_err();
                    if tx.send(msg).is_err() || end || failed {
                        return;
                    }
                }
            })?;
        Ok(Decrypted {
            blocks: rx,
            cur: Vec::new(),
            pos: 0,
            done: false,
        })
    }
}

impl Read for Decrypted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.done {
                return Ok(0);
            }
            match self.blocks.recv() {
                Ok(Ok(block)) if block.is_empty() => self.done = true,
                Ok(Ok(block)) => {
                    self.cur = block;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(io::Error::other("the decryption thread ended early"));
                }
            }
        }
        let n = (self.cur.len() - self.pos).min(buf.len());
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
