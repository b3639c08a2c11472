//! Test-only fault injection.
//!
//! `NUWAX_TEST_CRASH_AT=<point>` makes the process kill itself with SIGKILL when execution
//! reaches the named point, so tests can prove crash recovery at each phase. Unset (always,
//! in production), [`point`] is one cached env lookup.

use std::sync::OnceLock;

static CRASH_AT: OnceLock<Option<String>> = OnceLock::new();
static PAUSE_AT: OnceLock<Option<String>> = OnceLock::new();

/// A named point where a crash may be injected.
///
/// `NUWAX_TEST_PAUSE_AT=<point>` sleeps `NUWAX_TEST_PAUSE_SECS` (default 5) there instead,
/// so a test can observe the operation mid-way (the lock held, say).
pub fn point(name: &str) {
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

/// `NUWAX_TEST_FAIL_READ=<path relative to the compose dir>`: reading that source file fails
/// with EIO, so tests can prove an unreadable file fails the backup cleanly (as root, no
/// permission bit makes a file unreadable).
pub fn fail_read(rel: &std::path::Path) -> Option<std::io::Error> {
    static FAIL_READ: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    let target = FAIL_READ.get_or_init(|| std::env::var_os("NUWAX_TEST_FAIL_READ").map(Into::into));
    (target.as_deref() == Some(rel)).then(|| std::io::Error::from_raw_os_error(libc::EIO))
}

#[allow(unsafe_code)]
fn kill_self() -> ! {
    // SAFETY: kill(2) on our own pid with a valid signal has no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}
