//! `TestEnv`: a temp working dir, its config, and running the binary on it.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::fixture::{build_compose_dir, noise, write};
use super::rows::{BackupDoc, BackupRow, ListDoc};
use super::run::{Output, run_bin};
use super::tree::{Tree, pin_mtimes, snapshot};
use super::{VERSION, is_root, unique_project};

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

    /// Copies the working dir to `work` (`cp -a`: modes, owners and times kept; inside
    /// `root`, e.g. on a filesystem mounted there) and goes on there ([`Self::adopt`]).
    pub fn move_work(&mut self, work: PathBuf) {
        let st = Command::new("cp")
            .arg("-a")
            .arg(&self.work)
            .arg(&work)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "cp -a {} {}",
            self.work.display(),
            work.display()
        );
        self.adopt(work);
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

    /// `rollback ID --force --no-start --rollback-data`: the whole working dir (services
    /// not started), the rollback most tests check the tree of.
    pub fn rollback_data(&self, id: impl std::fmt::Display) -> Output {
        self.run(&[
            "rollback",
            &id.to_string(),
            "--force",
            "--no-start",
            "--rollback-data",
        ])
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
