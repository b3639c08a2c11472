//! Memory in the number of files: a tree of 50 000 small files is backed up, verified and
//! rolled back (`--rollback-data`, everything) while each run's peak RSS is read from the
//! kernel (`wait4`'s rusage of exactly that child). Memory that grows per entry again (paths
//! and metadata kept for the duplicate, hard-link and manifest checks: it was ~600 bytes per
//! entry, 30 MB more here) fails this; the bound leaves room for the fixed cost of the
//! pools. No timing is asserted.
//!
//! `SCALE_TEST_BIN=/path/to/nuwax-cli` runs the measured commands with another build (e.g.
//! an older one, to see this test fail on it).

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::{BIN, TestEnv};

/// Files in the generated tree (plus one directory per 100 of them).
const FILES: usize = 50_000;
/// Peak RSS allowed to each command, in KiB. The fixed cost (runtime, pools, buffers) is
/// about 25 MiB in this debug build; the per-entry state must fit in the rest (15 MiB is
/// 300 bytes per entry; it was ~600: the release build of the code before peaked at 42, 68
/// and 43 MiB here, this debug build at 27, 23 and 27).
const MAX_RSS_KIB: i64 = 40 * 1024;

/// Writes `FILES` tiny files under `root/app/node_modules`, 100 per directory, from a few
/// threads (a test must not spend its time creating files). Paths are as long as real
/// `node_modules` paths (about 90 bytes): memory kept per path shows.
fn generate(root: &Path) {
    let base = root.join("app").join("node_modules");
    let dirs = FILES / 100;
    let threads = 4;
    std::thread::scope(|s| {
        for t in 0..threads {
            let base = &base;
            s.spawn(move || {
                for d in (t..dirs).step_by(threads) {
                    let dir = base
                        .join(format!("@scope-{:03}", d / 100))
                        .join(format!("some-package-name-{d}"))
                        .join("dist")
                        .join("lib");
                    fs::create_dir_all(&dir).unwrap();
                    for f in 0..100 {
                        fs::write(
                            dir.join(format!("module-file-{f}.min.js")),
                            format!("{d}.{f}\n"),
                        )
                        .unwrap();
                    }
                }
            });
        }
    });
}

/// Runs `nuwax-cli -C <work> args` and returns (exit code, peak RSS in KiB, stderr).
// The child is reaped by the `wait4` below, which also gives its rusage.
#[allow(unsafe_code, clippy::zombie_processes)]
fn run_measured(env: &TestEnv, args: &[&str]) -> (i32, i64, String) {
    let bin = std::env::var_os("SCALE_TEST_BIN").unwrap_or_else(|| BIN.into());
    let mut cmd = Command::new(&bin);
    let mut full: Vec<OsString> = vec!["-C".into(), env.work.clone().into()];
    full.extend(args.iter().map(OsString::from));
    cmd.args(&full)
        .current_dir(&env.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG");
    for (key, _) in std::env::vars_os() {
        if key.as_bytes().starts_with(b"NUWAX_") {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.to_string_lossy()));
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut v);
        v
    });
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid; wait4 fills it for our own child, which `child`
    // is not waited for elsewhere.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    let stderr = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
    let code = std::process::ExitStatus::from_raw(status)
        .code()
        .unwrap_or(-1);
    // Linux reports ru_maxrss in KiB.
    (code, usage.ru_maxrss, stderr)
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

#[test]
// The measured peaks are this test's report (`--nocapture` shows them when it passes).
#[allow(clippy::print_stderr)]
fn peak_memory_does_not_grow_with_the_number_of_files() {
    let env = TestEnv::new();
    let compose = env.compose_dir();
    generate(&compose);
    let files_before = count_files(&compose);
    assert!(files_before > FILES);

    let mut report = Vec::new();
    let (code, rss, err) = run_measured(&env, &["backup", "--json"]);
    assert_eq!(code, 0, "backup failed: {err}");
    report.push(("backup", rss));
    let id = env.list()[0].id.to_string();

    let (code, rss, err) = run_measured(&env, &["verify", id.as_str()]);
    assert_eq!(code, 0, "verify failed: {err}");
    report.push(("verify", rss));

    // The restore writes every file again: take the live tree away first, so the result is
    // the archive's content and nothing else.
    fs::remove_dir_all(compose.join("app").join("node_modules")).unwrap();
    let (code, rss, err) = run_measured(
        &env,
        &[
            "rollback",
            id.as_str(),
            "--rollback-data",
            "--force",
            "--no-start",
        ],
    );
    assert_eq!(code, 0, "rollback failed: {err}");
    report.push(("rollback --rollback-data", rss));
    assert_eq!(count_files(&compose), files_before, "every file restored");
    assert!(
        fs::read(compose.join(
            "app/node_modules/@scope-001/some-package-name-123/dist/lib/module-file-7.min.js"
        ))
        .unwrap()
            == b"123.7\n"
    );

    let shown: Vec<String> = report
        .iter()
        .map(|(what, kib)| format!("{what}: {} MiB", kib / 1024))
        .collect();
    eprintln!("peak RSS for {FILES} files: {}", shown.join(", "));
    for (what, kib) in report {
        assert!(
            kib <= MAX_RSS_KIB,
            "{what} peaked at {} MiB for {FILES} files (at most {} MiB allowed): \
             memory grows with the number of entries again ({})",
            kib / 1024,
            MAX_RSS_KIB / 1024,
            shown.join(", ")
        );
    }
}
