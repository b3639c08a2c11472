//! Test-only fault injection, compiled in only with the `fault-injection` cargo feature.
//!
//! With the feature, environment variables name a point where the process kills itself with
//! SIGKILL, pauses, fails a read or skips the space preflight, so tests can prove crash
//! recovery at each phase (see the functions below). Without it (every `cargo build`, every
//! release build) each function is an empty `#[inline(always)]` body: call sites stay the
//! same, the variables are not read, and their names are not in the binary.
//!
//! The feature reaches the tests the way tokio's `test-util` does: the root package lists
//! `nuwax-actors` with `features = ["fault-injection"]` under `[dev-dependencies]`, so (with
//! resolver 3) `cargo test` builds the binary under test with the hooks and `cargo build` does
//! not. `.ci/run` checks the built binary for the variable names.

#[cfg(feature = "fault-injection")]
mod hooks {
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;

    static CRASH_AT: OnceLock<Option<String>> = OnceLock::new();
    static PAUSE_AT: OnceLock<Option<String>> = OnceLock::new();
    static FAIL_READ: OnceLock<Option<PathBuf>> = OnceLock::new();

    pub(super) fn point(name: &str) {
        let target = CRASH_AT.get_or_init(|| std::env::var("NUWAX_TEST_CRASH_AT").ok());
        if target.as_deref() == Some(name) {
            tracing::warn!("test hook: crashing at {name}");
            // SIGKILL: no destructors, no unwinding, exactly like `kill -9`.
            kill_self();
        }
        let pause = PAUSE_AT.get_or_init(|| std::env::var("NUWAX_TEST_PAUSE_AT").ok());
        if pause.as_deref() == Some(name) {
            let secs = std::env::var("NUWAX_TEST_PAUSE_SECS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(5);
            std::thread::sleep(std::time::Duration::from_secs(secs));
        }
    }

    pub(super) fn fail_read(rel: &Path) -> Option<std::io::Error> {
        let target =
            FAIL_READ.get_or_init(|| std::env::var_os("NUWAX_TEST_FAIL_READ").map(Into::into));
        (target.as_deref() == Some(rel)).then(|| std::io::Error::from_raw_os_error(libc::EIO))
    }

    pub(super) fn skip_space_check() -> bool {
        std::env::var_os("NUWAX_TEST_SKIP_SPACE_CHECK").is_some()
    }

    #[allow(unsafe_code)]
    fn kill_self() -> ! {
        // SAFETY: kill(2) on our own pid with a valid signal has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        std::process::abort()
    }
}

/// A named point where a crash or a pause may be injected.
///
/// `NUWAX_TEST_CRASH_AT=<point>` kills the process with SIGKILL there;
/// `NUWAX_TEST_PAUSE_AT=<point>` sleeps `NUWAX_TEST_PAUSE_SECS` (default 5) there instead, so
/// a test can observe the operation mid-way (the lock held, say). Both are read once.
#[cfg(feature = "fault-injection")]
pub fn point(name: &str) {
    hooks::point(name)
}

/// Without `fault-injection`: nothing.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &str) {}

/// `NUWAX_TEST_FAIL_READ=<path relative to the compose dir>`: reading that source file (or
/// listing that directory) fails with EIO, so tests can prove an unreadable file fails the
/// backup cleanly (as root, no permission bit makes a file unreadable).
#[cfg(feature = "fault-injection")]
pub fn fail_read(rel: &std::path::Path) -> Option<std::io::Error> {
    hooks::fail_read(rel)
}

/// Without `fault-injection`: never fails.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn fail_read(_rel: &std::path::Path) -> Option<std::io::Error> {
    None
}

/// `NUWAX_TEST_SKIP_SPACE_CHECK=1` turns the free-space preflight off, so tests can reach a
/// real ENOSPC mid-write.
#[cfg(feature = "fault-injection")]
pub fn skip_space_check() -> bool {
    hooks::skip_space_check()
}

/// Without `fault-injection`: the preflight always runs.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn skip_space_check() -> bool {
    false
}

/// `NUWAX_TEST_SCRYPT_LOG_N=N` lowers the scrypt work factor of passphrase encryption to
/// 2^N, so tests do not spend a second per backup (decryption accepts any lower factor).
#[cfg(feature = "fault-injection")]
pub fn scrypt_work_factor() -> Option<u8> {
    std::env::var("NUWAX_TEST_SCRYPT_LOG_N")
        .ok()
        .and_then(|v| v.parse::<u8>().ok())
        .filter(|n| (1..64).contains(n))
}

/// Without `fault-injection`: age's own work factor (about a second on this machine).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn scrypt_work_factor() -> Option<u8> {
    None
}
