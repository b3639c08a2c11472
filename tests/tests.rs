//! Integration tests: they run the built `nuwax-cli` binary on temporary working dirs.
//!
//! One test binary (STYLE.md, Tests). `util` builds a realistic working dir and snapshots trees
//! byte for byte with metadata; `dockerutil` talks to the real Docker engine (the gate tests
//! need one: `.ci/run` installs and starts it); `archutil` reads, repacks and damages archives.
//! Every test is independent: its own temp dir and its own compose project name.

mod archutil;
mod dbutil;
mod dockerutil;
mod util;

mod backup;
mod delete;
mod demo;
mod drill;
mod dumps;
mod encryption;
mod encryption_remote;
mod excludes;
mod faults;
mod gate;
mod gui;
mod hardening;
mod hardening_inputs;
mod hooks;
mod hostile;
mod incremental;
mod inspect;
mod interactive;
mod interop;
mod legacy;
mod list;
mod messages;
mod remote;
mod retention;
mod rollback;
mod scale;
mod services;
mod signals;
mod upgrade;
mod verify;
