//! Memory in the number of files: trees of 5 000 and of 50 000 small files are backed up,
//! verified and rolled back (`--rollback-data`, everything) while each run's peak RSS is read
//! from the kernel (`wait4`'s rusage of exactly that child). What is asserted is the growth
//! from the small tree to the large one, per entry: memory that grows per entry again (paths
//! and metadata kept for the duplicate, hard-link and manifest checks: it was ~600 bytes per
//! entry, 30 MB more at 50 000 files) fails this, whatever the fixed cost of the runtime and
//! the pools on the machine (it moved from 25 to 38 MiB in the debug build between two VMs
//! of the same kind, which an absolute bound took for growth). No timing is asserted.
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

/// Files in the small and the large generated tree (plus one directory per 100 of them).
const FEW_FILES: usize = 5_000;
const FILES: usize = 50_000;
/// Peak RSS a command may gain per entry from the small tree to the large one, in bytes
/// (it was ~600 when paths were kept per entry).
const MAX_BYTES_PER_ENTRY: i64 = 200;
/// A backstop on any peak, in KiB, far above the fixed cost (25-40 MiB in the debug build).
const MAX_RSS_KIB: i64 = 96 * 1024;

/// Writes `FILES` tiny files under `root/app/node_modules`, 100 per directory, from a few
/// threads (a test must not spend its time creating files). Paths are as long as real
/// `node_modules` paths (about 90 bytes): memory kept per path shows.
fn generate(root: &Path, files: usize) {
    let base = root.join("app").join("node_modules");
    let dirs = files / 100;
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

/// Environment of the [`measurer`] run: the command (`\x1f`-separated), its working dir
/// and the file that receives `<exit code> <peak RSS KiB>\n<stderr>`.
const MEASURE_CMD: &str = "SCALE_MEASURE_CMD";
const MEASURE_CWD: &str = "SCALE_MEASURE_CWD";
const MEASURE_OUT: &str = "SCALE_MEASURE_OUT";

/// Runs `nuwax-cli -C <work> args` and returns (exit code, peak RSS in KiB, stderr).
///
/// Not spawned from this process: a child's `ru_maxrss` starts at its parent's resident
/// size when it was spawned (Linux records the replaced memory's peak at `exec`), and this
/// test binary runs many tests at once (135 MiB in the full suite). A fresh, small copy of
/// this binary ([`measurer`]) spawns the command and reports its rusage.
fn run_measured(env: &TestEnv, args: &[&str]) -> (i32, i64, String) {
    let bin = std::env::var_os("SCALE_TEST_BIN").unwrap_or_else(|| BIN.into());
    let mut full: Vec<OsString> = vec![bin, "-C".into(), env.work.clone().into()];
    full.extend(args.iter().map(OsString::from));
    let joined = full.join(std::ffi::OsStr::new("\x1f"));
    let out = env.work.join("measure.out");
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "scale::measurer",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(MEASURE_CMD, joined)
        .env(MEASURE_CWD, &env.cwd)
        .env(MEASURE_OUT, &out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "the measuring process failed: {status}");
    let text = fs::read_to_string(&out).unwrap();
    fs::remove_file(&out).unwrap();
    let (first, stderr) = text.split_once('\n').unwrap();
    let (code, rss) = first.split_once(' ').unwrap();
    (
        code.parse().unwrap(),
        rss.parse().unwrap(),
        stderr.to_owned(),
    )
}

/// Not a test of its own: the process [`run_measured`] starts (a no-op otherwise).
#[test]
fn measurer() {
    let Some(cmd) = std::env::var_os(MEASURE_CMD) else {
        return;
    };
    let mut parts = cmd
        .as_bytes()
        .split(|&b| b == 0x1f)
        .map(std::ffi::OsStr::from_bytes);
    let mut command = Command::new(parts.next().unwrap());
    command
        .args(parts)
        .current_dir(std::env::var_os(MEASURE_CWD).unwrap());
    let (code, rss, stderr) = spawn_measured(command);
    fs::write(
        std::env::var_os(MEASURE_OUT).unwrap(),
        format!("{code} {rss}\n{stderr}"),
    )
    .unwrap();
}

/// Runs `cmd` and returns (exit code, peak RSS in KiB, stderr).
// The child is reaped by the `wait4` below, which also gives its rusage.
#[allow(unsafe_code, clippy::zombie_processes)]
fn spawn_measured(mut cmd: Command) -> (i32, i64, String) {
    let bin = cmd.get_program().to_owned();
    cmd.stdin(Stdio::null())
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

/// The peak RSS (KiB) of backup, verify and a full rollback of a tree of `files` files,
/// each checked to have done its job.
fn peaks(files: usize) -> Vec<(&'static str, i64)> {
    let env = TestEnv::new();
    let compose = env.compose_dir();
    generate(&compose, files);
    let files_before = count_files(&compose);
    assert!(files_before > files);

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
            "app/node_modules/@scope-000/some-package-name-12/dist/lib/module-file-7.min.js"
        ))
        .unwrap()
            == b"12.7\n"
    );
    report
}

#[test]
// The measured peaks are this test's report (`--nocapture` shows them when it passes).
#[allow(clippy::print_stderr)]
fn peak_memory_does_not_grow_with_the_number_of_files() {
    let few = peaks(FEW_FILES);
    let many = peaks(FILES);
    let shown: Vec<String> = few
        .iter()
        .zip(&many)
        .map(|((what, a), (_, b))| format!("{what}: {} -> {} MiB", a / 1024, b / 1024))
        .collect();
    let shown = shown.join(", ");
    eprintln!("peak RSS for {FEW_FILES} -> {FILES} files: {shown}");
    let entries = (FILES - FEW_FILES) as i64;
    for ((what, a), (_, b)) in few.iter().zip(&many) {
        let per_entry = (b - a) * 1024 / entries;
        assert!(
            per_entry <= MAX_BYTES_PER_ENTRY,
            "{what} grew by {per_entry} bytes per entry from {FEW_FILES} to {FILES} files (at \
             most {MAX_BYTES_PER_ENTRY} allowed): memory grows with the number of entries again \
             ({shown})"
        );
        assert!(
            *b <= MAX_RSS_KIB,
            "{what} peaked at {} MiB (at most {} MiB allowed; {shown})",
            b / 1024,
            MAX_RSS_KIB / 1024
        );
    }
}
