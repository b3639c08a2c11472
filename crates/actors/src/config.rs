//! `config.toml` and the working-directory layout (DESIGN.md section 2).
//!
//! Every path resolves against the working directory, never against the process's cwd. A
//! missing `config.toml` means defaults and is never created silently.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::exclude::ExcludeList;
use crate::relpath::{RelPath, TopName};
use crate::retention::RetentionConfig;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub versions: VersionsConfig,
    pub docker: DockerConfig,
    pub backup: BackupConfig,
    pub upgrade: UpgradeConfig,
    /// Restore drills (`[drill]`, see `ops/drill.rs`).
    pub drill: DrillConfig,
    /// Offsite copies (`[remote]`, see `remote.rs`).
    pub remote: Option<crate::remote::RemoteConfig>,
    /// Host commands around backups and rollbacks (`[hooks]`, see `hook.rs`).
    pub hooks: crate::hook::HooksConfig,
    /// Notifications (`[notify]`, see `notify.rs`).
    pub notify: crate::notify::NotifyConfig,
    /// Encryption at rest (`[encryption]`, see `encryption.rs`).
    pub encryption: crate::encryption::EncryptionConfig,
    /// Sections the original nuwax-cli writes that this tool does not use.
    #[serde(rename = "cache")]
    pub _cache: Option<toml::Value>,
    #[serde(rename = "updates")]
    pub _updates: Option<toml::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct VersionsConfig {
    pub docker_service: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    pub compose_file: PathBuf,
    pub env_file: Option<PathBuf>,
    pub project: Option<String>,
    /// Seconds to wait for services to become running/healthy after a start.
    pub start_timeout: u64,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            compose_file: PathBuf::from("docker/docker-compose.yml"),
            env_file: None,
            project: None,
            start_timeout: 180,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupConfig {
    pub storage_dir: PathBuf,
    /// Paths and glob patterns never archived and never touched by a rollback (see
    /// `exclude.rs`). Setting it replaces the default list.
    pub exclude: ExcludeList,
    /// Top-level names of the data scope.
    pub data_paths: Vec<TopName>,
    pub compression_level: u32,
    pub retention: RetentionConfig,
    /// `[[backup.dumps]]`: database dumps taken through the engine (see `dumps.rs`).
    pub dumps: Vec<crate::dumps::DumpConfig>,
    /// Services whose files are safe to copy while they run (`backup --hot`).
    pub hot_safe: Vec<crate::dumps::ServiceName>,
    /// Every N-th backup reads every file instead of copying the unchanged ones from the
    /// previous archive (`archive/incremental.rs`); 0 (the default): only `backup --full`.
    pub full_every: u32,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            storage_dir: PathBuf::from("backups"),
            exclude: ExcludeList::default(),
            data_paths: [
                "data",
                "upload",
                "project_workspace",
                "project_zips",
                "project_nginx",
                "project_init",
            ]
            .into_iter()
            .map(|s| TopName::parse(s).expect("default data paths are clean"))
            .collect(),
            compression_level: 3,
            retention: RetentionConfig::default(),
            dumps: Vec::new(),
            hot_safe: Vec::new(),
            full_every: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpgradeConfig {
    pub health_timeout: u64,
}

impl Default for UpgradeConfig {
    fn default() -> Self {
        Self {
            health_timeout: 300,
        }
    }
}

/// `[drill]`: how long a drill waits for the services, and the checks it runs in them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrillConfig {
    /// Seconds to wait for the drilled services to be running and healthy; default
    /// `[upgrade] health_timeout`.
    pub timeout: Option<u64>,
    /// `[[drill.checks]]`, run in order once every service is up.
    pub checks: Vec<DrillCheck>,
}

/// One `[[drill.checks]]`: a command run through the engine's exec API in the drilled
/// container of `service`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillCheck {
    pub service: String,
    /// The argv, not a shell line (`["sh", "-c", "..."]` for one).
    pub command: Vec<String>,
    /// Exit status that passes (default 0).
    #[serde(default)]
    pub expect_status: i64,
    /// Text the output (stdout and stderr) must contain.
    #[serde(default)]
    pub expect_output: Option<String>,
    /// Seconds the command may run (default 60).
    #[serde(default = "default_check_timeout")]
    pub timeout: u64,
}

fn default_check_timeout() -> u64 {
    60
}

/// Absolute paths derived from the working dir and the config.
#[derive(Debug, Clone)]
pub struct Paths {
    pub work_dir: PathBuf,
    pub config_file: PathBuf,
    pub compose_file: PathBuf,
    /// The compose project dir: what a backup archives.
    pub compose_dir: PathBuf,
    pub env_file: PathBuf,
    pub storage_dir: PathBuf,
    pub db_file: PathBuf,
    pub lock_file: PathBuf,
}

/// Loaded configuration plus resolved paths.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    pub paths: Paths,
    /// Whether `config.toml` existed.
    pub config_found: bool,
    /// `[remote]` resolved; `None` without the section.
    pub remote: Option<crate::remote::RemoteSettings>,
    /// The key a restore of an encrypted backup uses: `--identity`/`--passphrase-file`, or
    /// `[encryption] identity_file`.
    pub decrypt_with: Option<crate::encryption::KeySource>,
}

impl Settings {
    /// The key named on the command line, which wins over `[encryption] identity_file`.
    pub fn set_key(&mut self, key: crate::encryption::KeySource) {
        let resolve = |p: &Path| absolute(p, &self.paths.work_dir);
        self.decrypt_with = Some(match key {
            crate::encryption::KeySource::Identity(p) => {
                crate::encryption::KeySource::Identity(resolve(&p))
            }
            crate::encryption::KeySource::Passphrase(p) => {
                crate::encryption::KeySource::Passphrase(resolve(&p))
            }
        });
    }

    /// Loads `config` (default `<work_dir>/config.toml`). A missing default file means
    /// defaults; a missing file named explicitly with `--config` is an error.
    pub fn load(work_dir: &Path, config: Option<&Path>) -> Result<Settings> {
        let work_dir = absolute(work_dir, &std::env::current_dir().unwrap_or_default());
        if !work_dir.is_dir() {
            return Err(Error::Usage(format!(
                "working directory {} does not exist (set it with -C/--work-dir)",
                work_dir.display()
            )));
        }
        let explicit = config.is_some();
        let config_file = match config {
            Some(c) => absolute(c, &work_dir),
            None => work_dir.join("config.toml"),
        };
        let (config, config_found) = match std::fs::read_to_string(&config_file) {
            Ok(text) => {
                let cfg: Config = toml::from_str(&text).map_err(|e| Error::Config {
                    path: config_file.clone(),
                    message: e.to_string(),
                })?;
                (cfg, true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                (Config::default(), false)
            }
            // Named with -c/--config: a typo must not silently mean defaults (exit 2).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Config {
                    path: config_file.clone(),
                    message: "the file named with -c/--config does not exist".into(),
                });
            }
            Err(e) => return Err(Error::io("cannot read config file", &config_file, e)),
        };
        config.validate(&config_file)?;
        let bad = |message: String| Error::Config {
            path: config_file.clone(),
            message,
        };
        let compose_file = config_path(&config.docker.compose_file, &work_dir)
            .map_err(|m| bad(format!("docker.compose_file {m}")))?;
        let compose_dir = compose_file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| work_dir.clone());
        let env_file = match &config.docker.env_file {
            Some(p) => {
                config_path(p, &work_dir).map_err(|m| bad(format!("docker.env_file {m}")))?
            }
            None => compose_dir.join(".env"),
        };
        let storage_dir = config_path(&config.backup.storage_dir, &work_dir)
            .map_err(|m| bad(format!("backup.storage_dir {m}")))?;
        let paths = Paths {
            storage_dir,
            db_file: work_dir.join("data").join("nuwax.db"),
            lock_file: work_dir.join("data").join("nuwax.lock"),
            config_file: config_file.clone(),
            compose_file,
            compose_dir,
            env_file,
            work_dir,
        };
        paths.check_own_state_outside_compose_dir(&config_file)?;
        let remote = match &config.remote {
            Some(r) => Some(r.resolve(&paths.work_dir).map_err(bad)?),
            None => None,
        };
        let decrypt_with = config
            .encryption
            .identity_file
            .as_ref()
            .map(|p| crate::encryption::KeySource::Identity(absolute(p, &paths.work_dir)));
        Ok(Settings {
            decrypt_with,
            remote,
            config,
            paths,
            config_found,
        })
    }

    /// The configured service version, or `"unknown"`.
    pub fn service_version(&self) -> String {
        self.config
            .versions
            .docker_service
            .clone()
            .unwrap_or_else(|| "unknown".into())
    }
}

impl Config {
    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |message: String| Error::Config {
            path: path.to_path_buf(),
            message,
        };
        if !(1..=9).contains(&self.backup.compression_level) {
            return Err(bad(format!(
                "backup.compression_level must be 1..=9, got {}",
                self.backup.compression_level
            )));
        }
        for (key, hook) in self.hooks.all() {
            if let Some(p) = hook.and_then(crate::hook::HookCommand::problem) {
                return Err(bad(format!("hooks.{key} {p}")));
            }
        }
        if self.hooks.timeout == 0 {
            return Err(bad("hooks.timeout must be at least 1 (seconds)".into()));
        }
        if let Some(p) = self.notify.problem() {
            return Err(bad(p));
        }
        crate::dumps::validate(&self.backup.dumps).map_err(bad)?;
        for (i, check) in self.drill.checks.iter().enumerate() {
            if check.service.trim().is_empty() || check.command.is_empty() {
                return Err(bad(format!(
                    "[[drill.checks]] number {} needs a `service` and a non-empty `command` list",
                    i + 1
                )));
            }
        }
        Ok(())
    }
}

/// A path named in `config.toml`: relative to the working dir and clean (see [`RelPath`]), or
/// absolute without `.` or `..` components. Returns the absolute path, or what is wrong.
fn config_path(p: &Path, work_dir: &Path) -> std::result::Result<PathBuf, String> {
    if p.is_absolute() {
        let clean = p
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !clean {
            return Err(format!(
                "{} must not contain '.' or '..' components",
                p.display()
            ));
        }
        return Ok(p.to_path_buf());
    }
    match RelPath::parse(p) {
        Ok(rel) => Ok(rel.under(work_dir)),
        Err(e) => Err(format!(
            "{e}; name a path inside the working dir, or an absolute path"
        )),
    }
}

/// Makes `p` absolute against `base` without touching the filesystem.
fn absolute(p: &Path, base: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        let mut out = base.to_path_buf();
        for c in p.components() {
            match c {
                Component::CurDir => {}
                Component::ParentDir => {
                    out.pop();
                }
                other => out.push(other),
            }
        }
        out
    }
}

/// `path` with symlinks of its longest existing ancestor resolved (the rest appended as is):
/// what the path will be once created.
pub(crate) fn canonical_prefix(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut cur = path.to_path_buf();
    loop {
        if let Ok(c) = std::fs::canonicalize(&cur) {
            let mut out = c;
            for r in rest.iter().rev() {
                out.push(r);
            }
            return out;
        }
        match (cur.file_name().map(|n| n.to_os_string()), cur.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                cur = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

impl Paths {
    /// The tool's own state (archives, catalog, lock, config) must never be inside what a
    /// backup archives and a rollback swaps: the compose dir.
    fn check_own_state_outside_compose_dir(&self, config_file: &Path) -> Result<()> {
        let compose = canonical_prefix(&self.compose_dir);
        let inside = |p: &Path| canonical_prefix(p).starts_with(&compose);
        let work = canonical_prefix(&self.work_dir);
        let bad = |message: String| Error::Config {
            path: config_file.to_path_buf(),
            message,
        };
        if work.starts_with(&compose) {
            return Err(bad(format!(
                "the compose dir {} is the working dir {} or contains it; the catalog and the backups would be archived and swapped with the service. Put the compose file in a subdirectory (default: docker/docker-compose.yml) and set [docker] compose_file",
                self.compose_dir.display(),
                self.work_dir.display()
            )));
        }
        for (what, key, p) in [
            (
                "the backup storage dir",
                "set [backup] storage_dir to a path outside it (default: backups)",
                &self.storage_dir,
            ),
            (
                "the catalog",
                "move the working dir's data/ out of it",
                &self.db_file,
            ),
            (
                "the operation lock",
                "move the working dir's data/ out of it",
                &self.lock_file,
            ),
            (
                "the config file",
                "keep config.toml outside the compose dir",
                &self.config_file,
            ),
        ] {
            if inside(p) {
                return Err(bad(format!(
                    "{what} {} is inside the compose dir {}; backups would archive it and a rollback would swap it: {key}",
                    p.display(),
                    self.compose_dir.display()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_resolve_against_work_dir() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings::load(dir.path(), None).unwrap();
        assert!(!s.config_found);
        assert_eq!(s.paths.compose_dir, dir.path().join("docker"));
        assert_eq!(s.paths.storage_dir, dir.path().join("backups"));
        assert_eq!(s.paths.db_file, dir.path().join("data/nuwax.db"));
        assert!(
            !dir.path().join("config.toml").exists(),
            "never created silently"
        );
    }

    #[test]
    fn explicit_missing_config_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Settings::load(dir.path(), Some(Path::new("nope.toml"))).unwrap_err();
        assert!(err.to_string().contains("nope.toml"), "{err}");
    }

    #[test]
    fn rejects_escaping_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.toml"),
            "[backup]\ndata_paths = [\"../etc\"]\n",
        )
        .unwrap();
        let err = Settings::load(dir.path(), None).unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{err}");
    }

    fn load_with(text: &str) -> Result<Settings> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), text).unwrap();
        Settings::load(dir.path(), None)
    }

    #[test]
    fn config_paths_are_parsed_once_into_one_spelling() {
        let s = load_with("[backup]\nexclude = [\"logs/\", \"./app/cache\", \"a//b/.\"]\ndata_paths = [\"./data/\"]\n").unwrap();
        let ex: Vec<String> = s
            .config
            .backup
            .exclude
            .rules
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(ex, ["logs", "app/cache", "a/b"]);
        assert_eq!(s.config.backup.data_paths[0].to_string(), "data");
        for bad in [
            "[backup]\nexclude = [\"../x\"]",
            "[backup]\nexclude = [\"/etc\"]",
            "[backup]\nexclude = [\"\"]",
            "[backup]\nexclude = [\".\"]",
            "[backup]\ndata_paths = [\"data/mysql\"]",
            "[backup]\nstorage_dir = \"../backups\"",
            "[backup]\nstorage_dir = \"/srv/../etc\"",
            "[docker]\ncompose_file = \"../docker-compose.yml\"",
            "[docker]\nenv_file = \"docker/../../.env\"",
        ] {
            let err = load_with(bad).unwrap_err();
            assert!(matches!(err, Error::Config { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn own_state_inside_the_compose_dir_is_refused() {
        for (text, needle) in [
            ("[backup]\nstorage_dir = \"docker/backups\"", "storage dir"),
            (
                "[docker]\ncompose_file = \"docker-compose.yml\"",
                "working dir",
            ),
            (
                "[docker]\ncompose_file = \"./docker-compose.yml\"",
                "working dir",
            ),
            (
                "[docker]\ncompose_file = \"data/docker-compose.yml\"",
                "catalog",
            ),
        ] {
            let err = load_with(text).unwrap_err();
            assert!(matches!(err, Error::Config { .. }), "{text}: {err}");
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
        // Through a symlink too.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("docker")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("docker"), dir.path().join("alias")).unwrap();
        std::fs::write(
            dir.path().join("config.toml"),
            "[backup]\nstorage_dir = \"alias/backups\"",
        )
        .unwrap();
        let err = Settings::load(dir.path(), None).unwrap_err();
        assert!(err.to_string().contains("storage dir"), "{err}");
        // An absolute storage dir elsewhere is fine.
        let other = tempfile::tempdir().unwrap();
        let text = format!("[backup]\nstorage_dir = \"{}\"", other.path().display());
        assert_eq!(load_with(&text).unwrap().paths.storage_dir, other.path());
    }

    #[test]
    fn hooks_and_notify_are_parsed_and_checked() {
        let s = load_with(
            "[hooks]\npre_backup = \"echo hi && true\"\npost_rollback = [\"/bin/true\", \"x\"]\ntimeout = 20\n[notify]\nwebhook = \"http://127.0.0.1:9/x\"\non = [\"always\"]\n",
        )
        .unwrap();
        let h = &s.config.hooks;
        assert_eq!(
            h.pre_backup,
            Some(crate::hook::HookCommand::Shell("echo hi && true".into()))
        );
        assert!(
            matches!(&h.post_rollback, Some(crate::hook::HookCommand::Argv(v)) if v.len() == 2)
        );
        assert_eq!(h.timeout, 20);
        assert_eq!(s.config.notify.on, [crate::notify::NotifyOn::Always]);
        let d = load_with("").unwrap();
        assert_eq!(d.config.hooks.timeout, 300);
        assert_eq!(d.config.notify.on, [crate::notify::NotifyOn::Failure]);
        for bad in [
            "[hooks]\npre_bakup = \"x\"",
            "[hooks]\npre_backup = \"\"",
            "[hooks]\npre_backup = []",
            "[hooks]\npre_backup = 3",
            "[hooks]\ntimeout = 0",
            "[notify]\nwebhook = \"file:///etc/passwd\"",
            "[notify]\non = [\"sometimes\"]",
            "[notify]\nurl = \"http://x\"",
        ] {
            let err = load_with(bad).unwrap_err();
            assert!(matches!(err, Error::Config { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn reads_original_nuwax_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.toml"),
            "[versions]\ndocker_service = \"0.0.13\"\n[docker]\ncompose_file = \"./docker/docker-compose.yml\"\n[backup]\nstorage_dir = \"./backups\"\n[cache]\ncache_dir = \"./cacheDuckData\"\n[updates]\ncheck_frequency = \"daily\"\n",
        )
        .unwrap();
        let s = Settings::load(dir.path(), None).unwrap();
        assert_eq!(s.service_version(), "0.0.13");
        assert_eq!(
            s.paths.compose_file,
            dir.path().join("docker/docker-compose.yml")
        );
        assert_eq!(s.paths.storage_dir, dir.path().join("backups"));
    }
}
