//! `TestEnv`: a realistic working dir in a temp dir, helpers to run the binary on it, and tree
//! snapshots that compare byte for byte with metadata.
//!
//! Layout of one environment (`root` is the temp dir):
//! ```text
//! root/
//!   cwd/                      the binary's process cwd: must stay empty (paths resolve
//!                             against -C, never against the cwd)
//!   outside-witness.txt       must never change
//!   work/                     passed as -C
//!     config.toml             [versions] docker_service = "1.2.3", [docker] project = <unique>
//!     witness.txt             outside the compose dir: must never change
//!     docker/                 the compose project dir: see `build_compose_dir`
//! ```
//! Every mtime in the fixture is a whole second (tar keeps seconds), distinct per entry, so a
//! restore that forgets mtimes, or sets them to "now", shows up in `assert_same_tree`.
//!
//! Split by concern; everything is re-exported here, so tests keep `use crate::util::{...}`:
//! - `run`: running the binary and what it produced (`Output`);
//! - `env`: the `TestEnv` fixture (temp dir, config, running the binary on it);
//! - `fixture`: the realistic compose dir a `TestEnv` starts with;
//! - `tree`: tree snapshots and byte-for-byte comparisons;
//! - `rows`: the JSON contract's rows, catalog names and time helpers.

mod env;
mod fixture;
mod rows;
mod run;
mod tree;

pub use env::*;
pub use fixture::*;
pub use rows::*;
pub use run::*;
pub use tree::*;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU32, Ordering};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_nuwax-cli");

/// Service version written into every test `config.toml`.
pub const VERSION: &str = "1.2.3";

/// Top-level items of the fixture that belong to the data scope (DESIGN.md section 2).
pub const DATA_SCOPE: &[&str] = &["data", "upload"];

/// Excluded by the default config: a restore never touches it.
pub const EXCLUDED: &[&str] = &["logs"];

/// Exit codes (DESIGN.md section 7).
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const REFUSED: i32 = 3;
    pub const INTEGRITY: i32 = 4;
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A compose project name no other test (or other test process) uses.
pub fn unique_project() -> String {
    format!(
        "nuwaxt-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// `true` when the tests run as root (ownership is then part of every comparison).
pub fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}
