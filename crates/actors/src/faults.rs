//! Test-only fault injection.
//!
//! `NUWAX_TEST_CRASH_AT=<point>` makes the process kill itself with SIGKILL when execution
//! reaches the named point, so tests can prove crash recovery at each phase. Unset (always,
//! in production), [`point`] is one cached env lookup.

use std::sync::OnceLock;

static CRASH_AT: OnceLock<Option<String>> = OnceLock::new();

/// A named point where a crash may be injected.
pub fn point(name: &str) {
    let target = CRASH_AT.get_or_init(|| std::env::var("NUWAX_TEST_CRASH_AT").ok());
    if target.as_deref() == Some(name) {
        tracing::warn!("test hook: crashing at {name}");
        // SIGKILL: no destructors, no unwinding, exactly like `kill -9`.
        kill_self();
    }
}

#[allow(unsafe_code)]
fn kill_self() -> ! {
    // SAFETY: kill(2) on our own pid with a valid signal has no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}
