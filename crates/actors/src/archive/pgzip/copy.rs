//! Copying compressed members verbatim from one archive file into another (an incremental
//! backup takes the members of unchanged files from the previous archive, see
//! `archive/incremental.rs`).
//!
//! The bytes go with `copy_file_range(2)` where the kernel offers it between the two files
//! (in-kernel copy, or a block clone on filesystems that can), with `pread`/`write`
//! otherwise. Either way the destination range is then read back and handed to the caller,
//! who hashes it: what is checked is what the new archive holds, not what was meant to go in.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// Piece size for the read/write fallback and the read-back.
const PIECE: usize = 1 << 20;

/// Appends `len` bytes found at `offset` in `src` to `dst` at its current file position.
/// A source shorter than `offset + len` is an `UnexpectedEof` error.
pub fn copy_range(src: &File, offset: u64, len: u64, dst: &mut File) -> io::Result<()> {
    let copied = kernel_copy(src, offset, len, dst)?;
    if copied < len {
        let mut buf = vec![0u8; PIECE];
        user_copy(src, offset + copied, len - copied, dst, &mut buf)?;
    }
    Ok(())
}

/// Reads `len` bytes at `at` of `file` and hands them to `seen` piece by piece, in order
/// (the read-back of a copy: what the file now holds).
pub fn read_range(file: &File, at: u64, len: u64, seen: &mut dyn FnMut(&[u8])) -> io::Result<()> {
    let mut buf = vec![0u8; PIECE.min(usize::try_from(len).unwrap_or(PIECE))];
    let mut done = 0u64;
    while done < len {
        let want = buf.len().min((len - done).try_into().unwrap_or(usize::MAX));
        file.read_exact_at(&mut buf[..want], at + done)?;
        seen(&buf[..want]);
        done += want as u64;
    }
    Ok(())
}

/// Copies with `copy_file_range` as far as the kernel goes along; returns the bytes copied
/// (0 when the call is not supported between these files: the caller copies the rest).
#[allow(unsafe_code)]
fn kernel_copy(src: &File, offset: u64, len: u64, dst: &File) -> io::Result<u64> {
    let mut done = 0u64;
    while done < len {
        let mut off_in = libc::loff_t::try_from(offset + done)
            .map_err(|_| io::Error::other("source offset out of range"))?;
        let want = usize::try_from(len - done)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        // SAFETY: both descriptors are open for the call's duration; `off_in` is a valid
        // pointer to a local; a null `off_out` means "use and advance the file position".
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                std::ptr::null_mut(),
                want,
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                // Not offered between these files: the caller falls back to read/write.
                Some(
                    libc::ENOSYS | libc::EXDEV | libc::EINVAL | libc::EOPNOTSUPP | libc::EBADF,
                ) if done == 0 => return Ok(0),
                _ => return Err(e),
            }
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the source ends before byte {} of the range to copy",
                    offset + len
                ),
            ));
        }
        done += n as u64;
    }
    Ok(done)
}

fn user_copy(src: &File, offset: u64, len: u64, dst: &mut File, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0u64;
    while done < len {
        let want = buf.len().min((len - done).try_into().unwrap_or(usize::MAX));
        src.read_exact_at(&mut buf[..want], offset + done)?;
        dst.write_all(&buf[..want])?;
        done += want as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek};

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn copies_the_range_and_hands_back_what_the_destination_holds() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let src = file_with(&data);
        let mut dst = file_with(b"head");
        copy_range(&src, 1000, 2_500_000, &mut dst).unwrap();
        let mut seen = Vec::new();
        read_range(&dst, 4, 2_500_000, &mut |b| seen.extend_from_slice(b)).unwrap();
        assert!(seen == data[1000..2_501_000]);
        // Appended at the position, which moved on: the next write follows.
        dst.write_all(b"tail").unwrap();
        let mut all = Vec::new();
        dst.rewind().unwrap();
        dst.read_to_end(&mut all).unwrap();
        assert_eq!(all.len(), 4 + 2_500_000 + 4);
        assert!(all[4..2_500_004] == data[1000..2_501_000]);
        assert_eq!(&all[..4], b"head");
        assert_eq!(&all[2_500_004..], b"tail");
    }

    #[test]
    fn a_short_source_is_an_error() {
        let src = file_with(b"0123456789");
        let mut dst = file_with(b"");
        let e = copy_range(&src, 5, 10, &mut dst).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    }

    #[test]
    fn the_fallback_copies_the_same_bytes() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let src = file_with(&data);
        let mut dst = file_with(b"");
        user_copy(&src, 7, 200_000, &mut dst, &mut [0u8; 4096]).unwrap();
        let mut all = Vec::new();
        dst.rewind().unwrap();
        dst.read_to_end(&mut all).unwrap();
        assert!(all == data[7..200_007]);
    }
}
