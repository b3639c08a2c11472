//! The real Docker engine, through the `docker` CLI.
//!
//! The gate tests need real containers with compose labels. No registry is reachable, so the
//! test image is made locally with `docker import` from a tiny rootfs: `/bin/busybox` plus
//! applet symlinks when busybox-static is installed (`.ci/run` installs it), otherwise the
//! host's own `sh`, `sleep`, ... with the shared libraries `ldd` lists (and the dynamic
//! loader), so a fresh machine works too. `NUWAX_TEST_IMAGE_FROM_HOST=1` forces the second way
//! (into its own tag, so it never replaces the shared busybox image other tests use).
//!
//! Containers run with `--network none` (CI starts dockerd with `--bridge=none`) and a short
//! stop timeout. They belong to compose projects named `nuwaxt-<pid>-<n>` (and carry the label
//! `nuwax-test=1`), so `.ci/run` can sweep what a killed test process left behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// Tag of the test image; the fixture's compose file names it too.
pub const TEST_IMAGE: &str = "nuwax-test-busybox:latest";

/// Tag used when `NUWAX_TEST_IMAGE_FROM_HOST` forces the host-binaries rootfs.
const HOST_IMAGE: &str = "nuwax-test-hostbin:latest";

fn from_host() -> bool {
    std::env::var_os("NUWAX_TEST_IMAGE_FROM_HOST").is_some()
}

/// The image containers are started from.
pub fn test_image() -> &'static str {
    if from_host() { HOST_IMAGE } else { TEST_IMAGE }
}

/// A command that exits promptly on SIGTERM (PID 1 ignores signals it has no handler for, so a
/// bare `sleep` would make every `docker stop` wait for its timeout).
pub const SERVE: &[&str] = &["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"];

const APPLETS: &[&str] = &["sh", "sleep", "true", "touch", "cat", "echo", "test", "ls"];

/// Runs `docker <args>`.
pub fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run the docker CLI ({e}); run .ci/run or install docker")
        })
}

/// Runs `docker <args>`, panicking on failure; returns trimmed stdout.
#[track_caller]
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Fails the test loudly unless an engine answers: these tests are never skipped.
#[track_caller]
pub fn require_docker() {
    static OK: OnceLock<Result<(), String>> = OnceLock::new();
    let state = OK.get_or_init(|| {
        let out = Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output();
        match out {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).into_owned()),
            Err(e) => Err(e.to_string()),
        }
    });
    if let Err(e) = state {
        panic!(
            "these tests need a running Docker engine (`docker info` failed: {e}); \
             .ci/run installs and starts one"
        );
    }
}

/// Builds [`TEST_IMAGE`] once per test process (unless the engine already has it).
pub fn ensure_test_image() {
    static DONE: OnceLock<()> = OnceLock::new();
    require_docker();
    DONE.get_or_init(|| {
        let forced = from_host();
        if !forced && docker(&["image", "inspect", TEST_IMAGE]).status.success() {
            return;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let tar_path = dir.path().join("rootfs.tar");
        let busybox = Path::new("/bin/busybox");
        if busybox.is_file() && !forced {
            busybox_rootfs(&tar_path, busybox);
        } else {
            host_rootfs(&tar_path);
        }
        docker_ok(&[
            "import",
            "--change",
            "CMD [\"sleep\", \"3600\"]",
            tar_path.to_str().unwrap(),
            test_image(),
        ]);
    });
}

fn tar_builder(path: &Path) -> tar::Builder<fs::File> {
    let mut b = tar::Builder::new(fs::File::create(path).expect("create rootfs tar"));
    b.mode(tar::HeaderMode::Deterministic);
    for (dir, mode) in [("bin", 0o755), ("tmp", 0o1777), ("etc", 0o755)] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        b.append_data(&mut h, dir, std::io::empty()).unwrap();
    }
    b
}

fn add_file(b: &mut tar::Builder<fs::File>, dest: &str, src: &Path, mode: u32) {
    let bytes = fs::read(src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(mode);
    h.set_size(bytes.len() as u64);
    b.append_data(&mut h, dest, bytes.as_slice()).unwrap();
}

fn add_symlink(b: &mut tar::Builder<fs::File>, dest: &str, target: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    b.append_link(&mut h, dest, target).unwrap();
}

fn busybox_rootfs(tar_path: &Path, busybox: &Path) {
    let mut b = tar_builder(tar_path);
    add_file(&mut b, "bin/busybox", busybox, 0o755);
    for applet in APPLETS {
        add_symlink(&mut b, &format!("bin/{applet}"), "busybox");
    }
    // busybox-static needs nothing else; the dynamic `busybox` package needs its libraries.
    add_libs(&mut b, &ldd(busybox).into_iter().collect());
    b.finish().unwrap();
}

/// Rootfs from the host's dynamically linked tools plus every library `ldd` names.
fn host_rootfs(tar_path: &Path) {
    let mut b = tar_builder(tar_path);
    let mut libs = std::collections::BTreeSet::new();
    for applet in APPLETS {
        let src = ["/bin", "/usr/bin", "/sbin", "/usr/sbin"]
            .iter()
            .map(|d| Path::new(d).join(applet))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("no host binary for {applet}: install busybox-static"));
        add_file(&mut b, &format!("bin/{applet}"), &src, 0o755);
        libs.extend(ldd(&src));
    }
    add_libs(&mut b, &libs);
    b.finish().unwrap();
}

/// Adds shared objects (and their parent dirs) at the exact absolute paths the binaries ask
/// for, the loader's PT_INTERP path included; content is read through host symlinks.
fn add_libs(b: &mut tar::Builder<fs::File>, libs: &std::collections::BTreeSet<PathBuf>) {
    let mut dirs = std::collections::BTreeSet::new();
    for lib in libs {
        let mut parent = lib.parent();
        while let Some(p) = parent.filter(|p| *p != Path::new("/")) {
            dirs.insert(p.to_path_buf());
            parent = p.parent();
        }
    }
    for dir in dirs {
        let rel = dir.strip_prefix("/").unwrap().to_str().unwrap().to_owned();
        if rel == "bin" || rel == "tmp" || rel == "etc" {
            continue;
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, rel, std::io::empty()).unwrap();
    }
    for lib in libs {
        let rel = lib.strip_prefix("/").unwrap().to_str().unwrap().to_owned();
        add_file(b, &rel, lib, 0o755);
    }
}

/// Absolute paths of the shared objects `ldd` lists for `bin` (empty for a static binary).
pub(crate) fn ldd(bin: &Path) -> Vec<PathBuf> {
    let Ok(out) = Command::new("ldd").arg(bin).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"; "linux-vdso.so.1 (0x...)" has no file.
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// A container removed (with `docker rm -f`) when dropped.
pub struct Container {
    pub id: String,
    pub name: String,
}

impl Container {
    pub fn is_running(&self) -> bool {
        self.state() == "running"
    }

    /// `State.Status`: running, exited, paused...
    pub fn state(&self) -> String {
        docker_ok(&["inspect", "--format", "{{.State.Status}}", &self.id])
    }

    pub fn stop(&self) {
        docker_ok(&["stop", "--time", "5", &self.id]);
    }

    pub fn pause(&self) {
        docker_ok(&["pause", &self.id]);
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "-v", &self.id]);
    }
}

/// Starts a detached container of the test image that looks like compose made it: labels
/// `com.docker.compose.project=<project>` and `com.docker.compose.service=<service>`, restart
/// policy `restart` (`no`, `always`, `unless-stopped`...), running `cmd` (default
/// `sleep 3600`). Waits until it is running.
#[track_caller]
pub fn run_container(project: &str, service: &str, restart: &str, cmd: &[&str]) -> Container {
    static N: AtomicU32 = AtomicU32::new(1);
    ensure_test_image();
    let name = format!("{project}-{service}-{}", N.fetch_add(1, Ordering::SeqCst));
    let project_label = format!("com.docker.compose.project={project}");
    let service_label = format!("com.docker.compose.service={service}");
    let mut args = vec![
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "none",
        "--stop-timeout",
        "5",
        "--label",
        &project_label,
        "--label",
        &service_label,
        "--label",
        "com.docker.compose.oneoff=False",
        "--label",
        "com.docker.compose.container-number=1",
        "--label",
        "nuwax-test=1",
        "--restart",
        restart,
        test_image(),
    ];
    if cmd.is_empty() {
        args.extend(["sleep", "3600"]);
    } else {
        args.extend(cmd);
    }
    let id = docker_ok(&args);
    let container = Container { id, name };
    assert!(
        container.is_running(),
        "container {} is not running",
        container.name
    );
    container
}

// ---------------------------------------------------------------------------------------------
// Inspecting compose-made containers (the service lifecycle tests)

/// `docker inspect --format <format> <id>`, trimmed.
#[track_caller]
pub fn inspect(id: &str, format: &str) -> String {
    docker_ok(&["inspect", "--format", format, id])
}

/// Ids of every container (any state) labelled with `project` and, when given, `service`.
pub fn project_containers(project: &str, service: Option<&str>) -> Vec<String> {
    let project_label = format!("label=com.docker.compose.project={project}");
    let mut args = vec!["ps", "-aq", "--no-trunc", "--filter", &project_label];
    let service_label;
    if let Some(service) = service {
        service_label = format!("label=com.docker.compose.service={service}");
        args.extend(["--filter", &service_label]);
    }
    docker_ok(&args)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The one container of `service` in `project` (panics unless there is exactly one).
#[track_caller]
pub fn service_container(project: &str, service: &str) -> String {
    let ids = project_containers(project, Some(service));
    assert_eq!(
        ids.len(),
        1,
        "expected exactly one container of service {service} in project {project}: {ids:?}"
    );
    ids.into_iter().next().unwrap()
}

/// Nanoseconds since the epoch of an engine timestamp (`2024-01-02T03:04:05.123456789Z`; Go
/// drops trailing zeros of the fraction, so these never compare correctly as strings).
#[track_caller]
pub fn engine_time_nanos(ts: &str) -> i128 {
    let ts = ts.trim();
    let (main, rest) = ts.split_at(ts.len().min(19));
    let secs =
        crate::util::parse_utc(main).unwrap_or_else(|| panic!("not an engine timestamp: {ts:?}"));
    let frac = rest
        .strip_prefix('.')
        .map(|r| r.trim_end_matches('Z'))
        .unwrap_or("");
    assert!(
        frac.len() <= 9 && frac.bytes().all(|b| b.is_ascii_digit()) && ts.ends_with('Z'),
        "not a UTC engine timestamp: {ts:?}"
    );
    let nanos: i128 = format!("{frac:0<9}").parse().unwrap();
    i128::from(secs) * 1_000_000_000 + nanos
}
