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

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use sha2::{Digest, Sha256};

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

/// How long one invocation of the binary may take before the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

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

// ---------------------------------------------------------------------------------------------
// Running the binary

/// What one run of the binary produced.
#[derive(Debug, Clone)]
pub struct Output {
    pub args: Vec<OsString>,
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Panics with the whole run (args, code, stdout, stderr) unless the exit code is `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit {code}, got {:?}\n{self}",
            self.code
        );
        self
    }

    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        self.assert_code(exit::OK)
    }

    /// Case-insensitive check that stderr mentions `needle`.
    #[track_caller]
    pub fn assert_stderr_has(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.to_lowercase().contains(&needle.to_lowercase()),
            "stderr should mention {needle:?}\n{self}"
        );
        self
    }

    #[track_caller]
    pub fn assert_stdout_empty(&self) -> &Self {
        assert!(
            self.stdout.is_empty(),
            "stdout must carry data only, and this command has none\n{self}"
        );
        self
    }

    /// Parses stdout as exactly one JSON document (nothing else may be on stdout).
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        match serde_json::from_str(&self.stdout) {
            Ok(v) => v,
            Err(e) => panic!("stdout is not one JSON document: {e}\n{self}"),
        }
    }

    /// Parses stdout into `T` (strict structs: `deny_unknown_fields`).
    #[track_caller]
    pub fn json_as<T: for<'de> Deserialize<'de>>(&self) -> T {
        match serde_json::from_str(&self.stdout) {
            Ok(v) => v,
            Err(e) => panic!(
                "stdout does not match the JSON contract ({}): {e}\n{self}",
                std::any::type_name::<T>()
            ),
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let args: Vec<_> = self.args.iter().map(|a| a.to_string_lossy()).collect();
        writeln!(f, "--- nuwax-cli {}", args.join(" "))?;
        writeln!(f, "--- exit: {:?}", self.code)?;
        writeln!(f, "--- stdout:\n{}", self.stdout)?;
        write!(f, "--- stderr:\n{}", self.stderr)
    }
}

/// Runs the binary with `args` in `cwd`, stdin null, an isolated environment plus `envs`.
pub fn run_bin<I, S>(cwd: &Path, args: I, envs: &[(&str, &OsStr)]) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let mut cmd = Command::new(BIN);
    cmd.args(&args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env_remove("CLICOLOR_FORCE");
    // Test hooks and settings from the caller's shell must not leak into a run.
    for (key, _) in std::env::vars_os() {
        if key.as_bytes().starts_with(b"NUWAX_") {
            cmd.env_remove(key);
        }
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for nuwax-cli") {
            break Some(s);
        }
        if start.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let output = Output {
        args,
        code: status.and_then(|s| s.code()),
        stdout: String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned(),
    };
    assert!(
        status.is_some(),
        "nuwax-cli did not finish within {RUN_TIMEOUT:?}\n{output}"
    );
    output
}

// ---------------------------------------------------------------------------------------------
// JSON contract (DESIGN.md section 6). Strict: an unknown field is a contract change.

/// One catalog row as `list-backups --json`, `rollback --list-json` and `backup --json` print it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackupRow {
    pub id: i64,
    pub backup_type: String,
    pub created_at: String,
    pub service_version: String,
    pub file_path: String,
    pub file_size: Option<u64>,
    pub file_exists: bool,
    pub status: String,
    pub sha256: Option<String>,
    pub entry_count: Option<u64>,
    pub error: Option<String>,
    /// When `verify` last passed (`YYYY-MM-DD HH:MM:SS`), if ever. Not in the brief's list;
    /// the CLI prints it.
    pub verified_at: Option<String>,
}

/// Every key of a row; `Option` fields must be present (as `null`), not left out.
pub const ROW_KEYS: &[&str] = &[
    "id",
    "backup_type",
    "created_at",
    "service_version",
    "file_path",
    "file_size",
    "file_exists",
    "status",
    "sha256",
    "entry_count",
    "error",
    "verified_at",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListDoc {
    pub success: bool,
    pub backups: Vec<BackupRow>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupDoc {
    pub success: bool,
    pub backup: Option<BackupRow>,
    pub error: Option<String>,
}

/// Asserts `value` is an object with exactly `keys`.
#[track_caller]
pub fn assert_keys(value: &serde_json::Value, keys: &[&str]) {
    let obj = value
        .as_object()
        .unwrap_or_else(|| panic!("expected a JSON object, got {value}"));
    let mut have: Vec<&str> = obj.keys().map(String::as_str).collect();
    let mut want: Vec<&str> = keys.to_vec();
    have.sort_unstable();
    want.sort_unstable();
    assert_eq!(have, want, "keys of {value}");
}

/// `YYYY-MM-DD HH:MM:SS`.
pub fn is_sql_datetime(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b' ',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        })
}

pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// Seconds since the epoch of a UTC civil date-time (days-from-civil, proleptic Gregorian).
pub fn utc_epoch(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> i64 {
    let y = if mo <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + h * 3600 + mi * 60 + s
}

/// Parses `YYYY-MM-DD HH:MM:SS` or `YYYY-MM-DD_HH-MM-SS` (UTC) into epoch seconds.
pub fn parse_utc(s: &str) -> Option<i64> {
    let nums: Vec<i64> = s
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    match nums.as_slice() {
        [y, mo, d, h, mi, s] => Some(utc_epoch(*y, *mo, *d, *h, *mi, *s)),
        _ => None,
    }
}

pub fn now_epoch() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

// ---------------------------------------------------------------------------------------------
// The test environment

pub struct TestEnv {
    _tmp: tempfile::TempDir,
    /// The temp dir holding everything.
    pub root: PathBuf,
    /// The working dir (`-C`).
    pub work: PathBuf,
    /// The process cwd of every run: must stay empty.
    pub cwd: PathBuf,
    /// Compose project name in `config.toml`.
    pub project: String,
}

/// Options for [`TestEnv::with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Fixture {
    /// Adds `data/mysql/big.ibd`, large enough (~9 MiB, incompressible) to span several gzip
    /// members of the archive.
    pub large_file: bool,
}

impl TestEnv {
    /// A working dir with the standard fixture.
    pub fn new() -> TestEnv {
        TestEnv::with(Fixture::default())
    }

    pub fn with(fixture: Fixture) -> TestEnv {
        let tmp = tempfile::Builder::new()
            .prefix("nuwax-test-")
            .tempdir()
            .expect("create temp dir");
        // Canonical: the binary reports absolute paths, and /tmp may be a symlink.
        let root = tmp.path().canonicalize().expect("canonical temp dir");
        let work = root.join("work");
        let cwd = root.join("cwd");
        fs::create_dir_all(&work).unwrap();
        fs::create_dir_all(&cwd).unwrap();
        let project = unique_project();
        let env = TestEnv {
            _tmp: tmp,
            root,
            work,
            cwd,
            project,
        };
        env.write_config(VERSION);
        write(
            &env.work.join("witness.txt"),
            b"outside the compose dir\n",
            0o644,
        );
        write(
            &env.root.join("outside-witness.txt"),
            b"outside the working dir\n",
            0o600,
        );
        build_compose_dir(&env.compose_dir(), &env.project, fixture);
        pin_mtimes(&env.root, 1_600_000_000);
        env
    }

    /// The same environment with its working dir moved to `work` (inside `root`, e.g. on a
    /// small filesystem mounted there).
    pub fn adopt(&mut self, work: PathBuf) {
        assert!(
            work.starts_with(&self.root),
            "{} not under the test root",
            work.display()
        );
        self.work = work;
    }

    /// (Re)writes `config.toml` with the given service version.
    pub fn write_config(&self, version: &str) {
        let text = format!(
            "[versions]\ndocker_service = \"{version}\"\n\n[docker]\nproject = \"{}\"\n",
            self.project
        );
        fs::write(self.work.join("config.toml"), text).unwrap();
    }

    /// The compose project dir (`work/docker`).
    pub fn compose_dir(&self) -> PathBuf {
        self.work.join("docker")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.compose_dir().join(rel)
    }

    pub fn backups_dir(&self) -> PathBuf {
        self.work.join("backups")
    }

    pub fn db_file(&self) -> PathBuf {
        self.work.join("data").join("nuwax.db")
    }

    /// Runs `nuwax-cli -C <work> <args>`.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        self.run_env(args, &[])
    }

    /// Like [`TestEnv::run`] with extra environment variables.
    pub fn run_env<S: AsRef<OsStr>>(&self, args: &[S], envs: &[(&str, &OsStr)]) -> Output {
        let mut full: Vec<OsString> = vec!["-C".into(), self.work.clone().into()];
        full.extend(args.iter().map(|a| a.as_ref().to_owned()));
        let out = run_bin(&self.cwd, &full, envs);
        self.assert_cwd_untouched(&out);
        out
    }

    /// Runs and parses stdout as one JSON document; the exit code must be 0.
    #[track_caller]
    pub fn run_json<S: AsRef<OsStr>>(&self, args: &[S]) -> serde_json::Value {
        let out = self.run(args);
        out.assert_ok();
        out.json()
    }

    /// `backup --json`, asserting success; returns the new row.
    #[track_caller]
    pub fn backup(&self) -> BackupRow {
        let out = self.run(&["backup", "--json"]);
        out.assert_ok();
        let doc: BackupDoc = out.json_as();
        assert!(doc.success, "backup --json says success=false\n{out}");
        assert_eq!(doc.error, None, "{out}");
        let row = doc
            .backup
            .unwrap_or_else(|| panic!("backup --json without a backup object\n{out}"));
        assert_eq!(row.status, "Completed", "{out}");
        row
    }

    /// `list-backups --json`, asserting success; newest first.
    #[track_caller]
    pub fn list(&self) -> Vec<BackupRow> {
        let out = self.run(&["list-backups", "--json"]);
        out.assert_ok();
        let doc: ListDoc = out.json_as();
        assert!(doc.success, "{out}");
        assert_eq!(doc.error, None, "{out}");
        doc.backups
    }

    /// The row with `id`, panicking if it is not listed.
    #[track_caller]
    pub fn row(&self, id: i64) -> BackupRow {
        let rows = self.list();
        rows.iter()
            .find(|r| r.id == id)
            .cloned()
            .unwrap_or_else(|| panic!("backup {id} not listed: {rows:#?}"))
    }

    /// Snapshot of the compose project dir.
    pub fn snapshot_compose(&self) -> Tree {
        snapshot(&self.compose_dir())
    }

    /// Snapshot of everything that is neither the compose dir nor the tool's own state
    /// (`work/backups`, `work/data`): config, witnesses, the cwd. No run may change it.
    pub fn snapshot_outside(&self) -> Tree {
        let mut tree = snapshot(&self.root);
        // `work` itself is left out too: creating `backups/` and `data/` in it changes its mtime.
        let work = self
            .work
            .strip_prefix(&self.root)
            .expect("work dir inside the test root")
            .to_path_buf();
        let own = [work.join("docker"), work.join("backups"), work.join("data")];
        tree.retain(|p, _| *p != work && !own.iter().any(|x| p.starts_with(x)));
        tree
    }

    /// Files in the storage dir (names only, sorted).
    pub fn backup_files(&self) -> Vec<String> {
        let mut names: Vec<String> = match fs::read_dir(self.backups_dir()) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }

    #[track_caller]
    fn assert_cwd_untouched(&self, out: &Output) {
        let left: Vec<_> = fs::read_dir(&self.cwd)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            left.is_empty(),
            "the run created {left:?} in its cwd: paths must resolve against -C\n{out}"
        );
    }

    /// Makes a rich set of changes in every top-level item of the compose dir (app scope,
    /// data scope and the excluded logs), the kind an upgrade or a bad day makes.
    pub fn mutate(&self) {
        let d = self.compose_dir();
        // App scope.
        write(&d.join("app/VERSION"), b"2.0.0-rc1\n", 0o644);
        // Same size, same mtime, other content: only a content comparison notices.
        let index = d.join("app/static/index.html");
        let meta = fs::symlink_metadata(&index).unwrap();
        let mut bytes = fs::read(&index).unwrap();
        bytes[10] ^= 0x20;
        fs::write(&index, &bytes).unwrap();
        filetime::set_file_mtime(
            &index,
            filetime::FileTime::from_last_modification_time(&meta),
        )
        .unwrap();
        fs::set_permissions(
            d.join("app/bin/start.sh"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        fs::remove_file(d.join("app/secret.key")).unwrap();
        write(
            &d.join("app/new-file.txt"),
            b"added after the backup\n",
            0o644,
        );
        write(&d.join("app/newdir/deeper/x.bin"), &noise(7, 3000), 0o644);
        fs::remove_file(d.join("app/current")).unwrap();
        fs::create_dir_all(d.join("app/releases/v2")).unwrap();
        std::os::unix::fs::symlink("releases/v2", d.join("app/current")).unwrap();
        fs::remove_dir(d.join("app/cache")).unwrap();
        fs::remove_dir_all(d.join("app/deep")).unwrap();
        write(&d.join("config/app.yml"), b"server:\n  port: 9999\n", 0o644);
        write(&d.join("config/extra.yml"), b"new: true\n", 0o644);
        write(&d.join(".env"), b"APP_PORT=9999\n", 0o600);
        let compose = fs::read_to_string(d.join("docker-compose.yml")).unwrap();
        fs::write(
            d.join("docker-compose.yml"),
            compose.replace("# release 1.2.3", "# release 2.0.0"),
        )
        .unwrap();
        // Data scope.
        let ibdata = d.join("data/mysql/ibdata1");
        let mut bytes = fs::read(&ibdata).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid..mid + 16].copy_from_slice(b"after the backup");
        fs::write(&ibdata, &bytes).unwrap();
        fs::remove_file(d.join("data/redis/dump.rdb")).unwrap();
        write(&d.join("data/new.db"), &noise(8, 5000), 0o640);
        write(&d.join("upload/avatars/2.png"), &noise(9, 700), 0o644);
        if is_root() {
            std::os::unix::fs::lchown(d.join("data/mysql/nuwax"), Some(0), Some(0)).unwrap();
        }
        // Excluded: must survive every rollback exactly as it is now.
        let mut log = fs::read(d.join("logs/app.log")).unwrap();
        log.extend_from_slice(b"2024-01-02 12:00:00 INFO after the backup\n");
        fs::write(d.join("logs/app.log"), log).unwrap();
        write(&d.join("logs/new.log"), b"new log\n", 0o644);
    }
}

impl Drop for TestEnv {
    /// Removes whatever the binary may have created on the engine for this test's project
    /// (containers and networks carry the compose project label), passed or failed.
    fn drop(&mut self) {
        let label = format!("label=com.docker.compose.project={}", self.project);
        let list = |what: &[&str]| -> Vec<String> {
            Command::new("docker")
                .args(what)
                .args(["-q", "--filter", &label])
                .stderr(Stdio::null())
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let containers = list(&["ps", "-a"]);
        if !containers.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&containers)
                .output();
        }
        let networks = list(&["network", "ls"]);
        if !networks.is_empty() {
            let _ = Command::new("docker")
                .args(["network", "rm"])
                .args(&networks)
                .output();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fixture

/// Writes `bytes` to `path` (creating parents) with `mode`.
pub fn write(path: &Path, bytes: &[u8], mode: u32) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Deterministic pseudo-random bytes (xorshift64*): incompressible, reproducible.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Something that looks like an InnoDB tablespace: 16 KiB pages, a header, mostly zeros and
/// some noise (compressible, like the real thing).
fn innodb_like(seed: u64, pages: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(pages * 16384);
    for p in 0..pages {
        let mut page = vec![0u8; 16384];
        page[0..4].copy_from_slice(&(p as u32).to_be_bytes());
        page[24..26].copy_from_slice(&0x45bfu16.to_be_bytes());
        if p % 3 == 0 {
            let n = noise(seed + p as u64, 4096);
            page[38..38 + 4096].copy_from_slice(&n);
        }
        out.extend_from_slice(&page);
    }
    out
}

/// The compose project dir: what a backup archives.
fn build_compose_dir(d: &Path, project: &str, fixture: Fixture) {
    fs::create_dir_all(d).unwrap();
    // `network_mode: none`: CI's dockerd runs with `--bridge=none`, and a rollback that starts
    // the services must not need a network. The command exits promptly on SIGTERM.
    let compose = format!(
        "# {project}: test stack, release 1.2.3\n\
         # release 1.2.3\n\
         x-serve: &serve [\"sh\", \"-c\", \"trap 'exit 0' TERM; while :; do sleep 1; done\"]\n\
         services:\n\
         \x20 app:\n\
         \x20   image: nuwax-test-busybox:latest\n\
         \x20   command: *serve\n\
         \x20   network_mode: none\n\
         \x20   restart: unless-stopped\n\
         \x20   stop_grace_period: 5s\n\
         \x20   env_file: .env\n\
         \x20   volumes:\n\
         \x20     - ./app:/app\n\
         \x20     - ./config/app.yml:/etc/app.yml:ro\n\
         \x20     - ./data:/data\n\
         \x20     - ./logs:/logs\n\
         \x20 worker:\n\
         \x20   image: nuwax-test-busybox:latest\n\
         \x20   command: *serve\n\
         \x20   network_mode: none\n\
         \x20   depends_on:\n\
         \x20     - app\n\
         \x20 migrate:\n\
         \x20   image: nuwax-test-busybox:latest\n\
         \x20   command: [\"true\"]\n\
         \x20   network_mode: none\n\
         \x20   restart: \"no\"\n"
    );
    write(&d.join("docker-compose.yml"), compose.as_bytes(), 0o644);
    write(
        &d.join(".env"),
        b"APP_PORT=8080\nMYSQL_ROOT_PASSWORD=s3cret\nTZ=UTC\n",
        0o600,
    );
    write(
        &d.join("config/app.yml"),
        b"server:\n  port: 8080\ndatabase:\n  host: mysql\n  name: nuwax\n",
        0o644,
    );
    write(
        &d.join("config/nginx/default.conf"),
        b"server {\n  listen 80;\n  location / { proxy_pass http://app:8080; }\n}\n",
        0o644,
    );

    // app/: executable script, secret, symlinks, hard link, nested and empty dirs, long and
    // non-ASCII names, a sticky dir.
    write(&d.join("app/VERSION"), b"1.2.3\n", 0o644);
    write(
        &d.join("app/bin/start.sh"),
        b"#!/bin/sh\nset -e\nexec /app/bin/server --config /etc/app.yml\n",
        0o755,
    );
    fs::hard_link(d.join("app/bin/start.sh"), d.join("app/bin/entrypoint.sh")).unwrap();
    write(&d.join("app/secret.key"), &noise(1, 64), 0o600);
    write(
        &d.join("app/releases/v1/server.jar"),
        &noise(2, 64 * 1024),
        0o644,
    );
    write(&d.join("app/releases/v1/README"), b"release v1\n", 0o444);
    std::os::unix::fs::symlink("releases/v1", d.join("app/current")).unwrap();
    write(&d.join("app/lib/libnuwax.so.1"), &noise(3, 9000), 0o755);
    std::os::unix::fs::symlink("libnuwax.so.1", d.join("app/lib/libnuwax.so")).unwrap();
    std::os::unix::fs::symlink("does-not-exist", d.join("app/lib/dangling")).unwrap();
    let mut html = b"<!doctype html>\n<html><body>nuwax 1.2.3</body></html>\n".repeat(40);
    html.extend_from_slice(b"<!-- end -->\n");
    write(&d.join("app/static/index.html"), &html, 0o644);
    write(
        &d.join("app/static/ünïcødé-名前.css"),
        b"body { margin: 0 }\n",
        0o644,
    );
    write(&d.join("app/static/empty.txt"), b"", 0o644);
    write(
        &d.join("app/static/file with spaces.txt"),
        b"spaces\n",
        0o644,
    );
    // Special bits: a restore that chowns after chmod loses setuid (chown clears it).
    write(&d.join("app/bin/suid-helper"), &noise(4, 300), 0o4755);
    fs::create_dir_all(d.join("app/shared")).unwrap();
    write(&d.join("app/shared/team.txt"), b"shared\n", 0o664);
    fs::set_permissions(d.join("app/shared"), fs::Permissions::from_mode(0o2775)).unwrap();
    fs::create_dir_all(d.join("app/cache")).unwrap();
    fs::create_dir_all(d.join("app/tmp")).unwrap();
    fs::set_permissions(d.join("app/tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    // A path longer than 100 bytes and a name longer than 100 bytes: GNU long-name records.
    let long_dir = d.join(
        "app/deep/a-rather-long-directory-name-number-one/another-fairly-long-directory-name-two",
    );
    let long_name = format!("{}.txt", "very-long-file-name-".repeat(6));
    write(&long_dir.join(long_name), b"long path\n", 0o644);

    // data/ and upload/: the data scope.
    write(&d.join("data/mysql/ibdata1"), &innodb_like(10, 24), 0o640);
    write(
        &d.join("data/mysql/ib_logfile0"),
        &vec![0u8; 96 * 1024],
        0o640,
    );
    write(
        &d.join("data/mysql/nuwax/users.ibd"),
        &innodb_like(11, 6),
        0o640,
    );
    write(
        &d.join("data/mysql/nuwax/agents.ibd"),
        &innodb_like(12, 4),
        0o640,
    );
    write(
        &d.join("data/mysql/auto.cnf"),
        b"[auto]\nserver-uuid=3f1c2f0e-0000-4000-8000-000000000001\n",
        0o640,
    );
    let mut rdb = b"REDIS0009\xfa\x09redis-ver\x057.2.4".to_vec();
    rdb.extend_from_slice(&noise(13, 8192));
    rdb.push(0xff);
    write(&d.join("data/redis/dump.rdb"), &rdb, 0o644);
    write(
        &d.join("data/minio/.minio.sys/format.json"),
        br#"{"version":"1","format":"xl-single","id":"test"}"#,
        0o600,
    );
    write(
        &d.join("data/minio/nuwax/avatars/a.png/xl.meta"),
        &noise(14, 2048),
        0o644,
    );
    // Non-UTF-8 file name (Latin-1 "café.bin").
    write(
        &d.join("data").join(OsStr::from_bytes(b"caf\xe9.bin")),
        &noise(15, 100),
        0o644,
    );
    fs::create_dir_all(d.join("data/mysql/#innodb_temp")).unwrap();
    write(&d.join("upload/avatars/1.png"), &noise(16, 1500), 0o644);
    if fixture.large_file {
        write(
            &d.join("data/mysql/big.ibd"),
            &noise(17, 9 * 1024 * 1024 + 12345),
            0o640,
        );
    }
    if is_root() {
        // Like a real MySQL data dir: owned by the container's mysql user.
        for entry in walk(&d.join("data/mysql")) {
            std::os::unix::fs::lchown(&entry, Some(999), Some(999)).unwrap();
        }
        std::os::unix::fs::lchown(d.join("data/mysql"), Some(999), Some(999)).unwrap();
        std::os::unix::fs::lchown(d.join("data/redis/dump.rdb"), Some(999), Some(1000)).unwrap();
        std::os::unix::fs::lchown(d.join("app/current"), Some(1000), Some(1000)).unwrap();
        std::os::unix::fs::lchown(d.join("app/bin/suid-helper"), Some(1000), Some(1000)).unwrap();
        // chown cleared the setuid bit: set it again.
        fs::set_permissions(
            d.join("app/bin/suid-helper"),
            fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        // A read-only dir with content: its mode must be set after its files are written.
        // (Root only: a normal user could not clean it up.)
        fs::set_permissions(d.join("app/releases/v1"), fs::Permissions::from_mode(0o555)).unwrap();
    }

    // logs/: excluded by the default config.
    write(
        &d.join("logs/app.log"),
        b"2024-01-01 00:00:00 INFO started\n",
        0o644,
    );
    write(
        &d.join("logs/witness.log"),
        b"never archived, never restored\n",
        0o644,
    );
    write(&d.join("logs/nested/old.log"), b"old\n", 0o644);
}

/// Every path under `dir` (not `dir` itself), parents before children, sorted.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in names {
        out.push(p.clone());
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}

/// Gives every entry under `root` a distinct whole-second mtime (children before parents, so
/// setting a child does not disturb its directory afterwards). Symlinks get theirs too.
pub fn pin_mtimes(root: &Path, base: i64) {
    let mut paths = walk(root);
    paths.reverse();
    for (i, p) in paths.iter().enumerate() {
        let t = filetime::FileTime::from_unix_time(base + 3_607 * i as i64, 0);
        filetime::set_symlink_file_times(p, t, t)
            .unwrap_or_else(|e| panic!("set mtime {}: {e}", p.display()));
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshots

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    Socket,
    Other,
}

/// What one entry looks like, taken with lstat (links are never followed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntrySnap {
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// File size; symlinks: target length; directories: 0 (their size is filesystem noise).
    pub size: u64,
    /// SHA-256 of a regular file's content.
    pub sha256: Option<String>,
    /// A symlink's target, as stored.
    pub target: Option<PathBuf>,
    pub mtime: i64,
    pub mtime_nsec: i64,
    pub uid: u32,
    pub gid: u32,
    /// Hard-link count of a regular file (restores must keep hard links).
    pub nlink: Option<u64>,
}

impl fmt::Display for EntrySnap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} mode={:o} size={} mtime={}.{:09} owner={}:{}",
            self.kind, self.mode, self.size, self.mtime, self.mtime_nsec, self.uid, self.gid
        )?;
        if let Some(s) = &self.sha256 {
            write!(f, " sha256={}", &s[..12])?;
        }
        if let Some(t) = &self.target {
            write!(f, " -> {}", t.display())?;
        }
        if let Some(n) = self.nlink {
            write!(f, " nlink={n}")?;
        }
        Ok(())
    }
}

/// Free bytes on the filesystem holding `path` (`df`).
pub fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .expect("run df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("cannot parse df output for {}", path.display()))
}

/// Relative path -> entry, for every entry under a dir.
pub type Tree = BTreeMap<PathBuf, EntrySnap>;

/// Snapshot of one entry (lstat).
pub fn snap_entry(path: &Path) -> EntrySnap {
    use std::os::unix::fs::FileTypeExt;
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_socket() {
        Kind::Socket
    } else {
        Kind::Other
    };
    EntrySnap {
        kind,
        mode: m.mode() & 0o7777,
        size: if kind == Kind::Dir { 0 } else { m.size() },
        sha256: (kind == Kind::File).then(|| sha256_file(path)),
        target: (kind == Kind::Symlink).then(|| fs::read_link(path).unwrap()),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
        uid: m.uid(),
        gid: m.gid(),
        nlink: (kind == Kind::File).then(|| m.nlink()),
    }
}

/// Snapshot of every entry under `dir` (not `dir` itself), keyed by path relative to `dir`.
pub fn snapshot(dir: &Path) -> Tree {
    walk(dir)
        .into_iter()
        .map(|p| {
            let snap = snap_entry(&p);
            (p.strip_prefix(dir).unwrap().to_path_buf(), snap)
        })
        .collect()
}

fn top_level(p: &Path) -> &OsStr {
    match p.components().next() {
        Some(Component::Normal(n)) => n,
        _ => OsStr::new(""),
    }
}

/// The entries whose top-level item is one of `names`.
pub fn only(tree: &Tree, names: &[&str]) -> Tree {
    tree.iter()
        .filter(|(p, _)| names.iter().any(|n| top_level(p) == OsStr::new(n)))
        .map(|(p, e)| (p.clone(), e.clone()))
        .collect()
}

/// The entries whose top-level item is none of `names`.
pub fn except(tree: &Tree, names: &[&str]) -> Tree {
    tree.iter()
        .filter(|(p, _)| !names.iter().any(|n| top_level(p) == OsStr::new(n)))
        .map(|(p, e)| (p.clone(), e.clone()))
        .collect()
}

/// No `.nuwax-*` work or staging dir anywhere under the working dir.
#[track_caller]
pub fn assert_no_staging_left(env: &TestEnv) {
    let left: Vec<PathBuf> = walk(&env.work)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".nuwax-"))
        })
        .collect();
    assert!(left.is_empty(), "staging/work dirs left behind: {left:?}");
}

/// Panics with a readable diff unless both trees are identical (content and metadata).
#[track_caller]
pub fn assert_same_tree(what: &str, expected: &Tree, actual: &Tree) {
    let diff = tree_diff(expected, actual);
    if !diff.is_empty() {
        const MAX: usize = 60;
        let shown: Vec<&str> = diff.iter().take(MAX).map(String::as_str).collect();
        panic!(
            "{what}: trees differ in {} entries (expected vs actual):\n{}{}",
            diff.len(),
            shown.join("\n"),
            if diff.len() > MAX { "\n  ..." } else { "" }
        );
    }
}

/// One line per difference.
pub fn tree_diff(expected: &Tree, actual: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for (p, e) in expected {
        match actual.get(p) {
            None => out.push(format!("  missing  {}  ({e})", p.display())),
            Some(a) if a != e => {
                let mut fields = Vec::new();
                let mut field = |name: &str, x: String, y: String| {
                    if x != y {
                        fields.push(format!("{name}: {x} -> {y}"));
                    }
                };
                field("kind", format!("{:?}", e.kind), format!("{:?}", a.kind));
                field("mode", format!("{:o}", e.mode), format!("{:o}", a.mode));
                field("size", e.size.to_string(), a.size.to_string());
                field(
                    "content",
                    format!("{:?}", e.sha256),
                    format!("{:?}", a.sha256),
                );
                field(
                    "target",
                    format!("{:?}", e.target),
                    format!("{:?}", a.target),
                );
                field(
                    "mtime",
                    format!("{}.{:09}", e.mtime, e.mtime_nsec),
                    format!("{}.{:09}", a.mtime, a.mtime_nsec),
                );
                field(
                    "owner",
                    format!("{}:{}", e.uid, e.gid),
                    format!("{}:{}", a.uid, a.gid),
                );
                field("nlink", format!("{:?}", e.nlink), format!("{:?}", a.nlink));
                out.push(format!("  changed  {}  {}", p.display(), fields.join(", ")));
            }
            Some(_) => {}
        }
    }
    for (p, a) in actual {
        if !expected.contains_key(p) {
            out.push(format!("  extra    {}  ({a})", p.display()));
        }
    }
    out
}

pub fn sha256_file(path: &Path) -> String {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// File name of a path as a `String`.
pub fn file_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// Checks `name` is `backup_<kind>_v<version>_<YYYY-MM-DD_HH-MM-SS>[_N].tar.gz` and returns
/// the timestamp's epoch seconds.
#[track_caller]
pub fn parse_archive_name(name: &str, kind: &str, version: &str) -> i64 {
    let prefix = format!("backup_{kind}_v{version}_");
    let rest = name
        .strip_prefix(&prefix)
        .and_then(|r| r.strip_suffix(".tar.gz"))
        .unwrap_or_else(|| panic!("archive name {name:?} is not {prefix}<time>.tar.gz"));
    let (stamp, suffix) = rest.split_at(rest.len().min(19));
    let b = stamp.as_bytes();
    let stamp_ok = b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 | 13 | 16 => *c == b'-',
            10 => *c == b'_',
            _ => c.is_ascii_digit(),
        });
    let suffix_ok = suffix.is_empty()
        || suffix
            .strip_prefix('_')
            .is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n >= 2));
    assert!(
        stamp_ok && suffix_ok,
        "archive name {name:?}: time must be UTC YYYY-MM-DD_HH-MM-SS, optionally _2, _3..."
    );
    parse_utc(stamp).unwrap()
}
