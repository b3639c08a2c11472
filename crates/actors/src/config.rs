//! `config.toml` and the working-directory layout (DESIGN.md section 2).
//!
//! Every path resolves against the working directory, never against the process's cwd. A
//! missing `config.toml` means defaults and is never created silently.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// Top-level items of the compose dir that are always excluded: our own staging dirs.
pub const INTERNAL_PREFIX: &str = ".nuwax-";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub versions: VersionsConfig,
    pub docker: DockerConfig,
    pub backup: BackupConfig,
    pub upgrade: UpgradeConfig,
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
    pub exclude: Vec<String>,
    pub data_paths: Vec<String>,
    pub compression_level: u32,
    pub retention: RetentionConfig,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            storage_dir: PathBuf::from("backups"),
            exclude: vec!["logs".into(), "uv_cache".into()],
            data_paths: [
                "data",
                "upload",
                "project_workspace",
                "project_zips",
                "project_nginx",
                "project_init",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            compression_level: 3,
            retention: RetentionConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    pub keep_last: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
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
}

impl Settings {
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
            Err(e) => return Err(Error::io("cannot read config file", &config_file, e)),
        };
        config.validate(&config_file)?;
        let compose_file = absolute(&config.docker.compose_file, &work_dir);
        let compose_dir = compose_file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| work_dir.clone());
        let env_file = match &config.docker.env_file {
            Some(p) => absolute(p, &work_dir),
            None => compose_dir.join(".env"),
        };
        let paths = Paths {
            storage_dir: absolute(&config.backup.storage_dir, &work_dir),
            db_file: work_dir.join("data").join("nuwax.db"),
            lock_file: work_dir.join("data").join("nuwax.lock"),
            config_file,
            compose_file,
            compose_dir,
            env_file,
            work_dir,
        };
        Ok(Settings {
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
        for (key, list) in [
            ("backup.exclude", &self.backup.exclude),
            ("backup.data_paths", &self.backup.data_paths),
        ] {
            for item in list {
                if !is_clean_relative(item) {
                    return Err(bad(format!(
                        "{key} entry {item:?} must be a relative path inside the compose dir without '..'"
                    )));
                }
            }
        }
        for item in &self.backup.data_paths {
            if item.contains('/') {
                return Err(bad(format!(
                    "backup.data_paths entry {item:?} must be a top-level name of the compose dir"
                )));
            }
        }
        if !(1..=9).contains(&self.backup.compression_level) {
            return Err(bad(format!(
                "backup.compression_level must be 1..=9, got {}",
                self.backup.compression_level
            )));
        }
        Ok(())
    }
}

/// `true` for a non-empty relative path made only of normal components.
pub fn is_clean_relative(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

fn absolute(p: &Path, base: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        let joined = base.join(p);
        // Normalise `./x` and `a/../b` lexically so stored paths are clean.
        let mut out = PathBuf::new();
        for c in joined.components() {
            match c {
                std::path::Component::CurDir => {}
                std::path::Component::ParentDir => {
                    out.pop();
                }
                other => out.push(other),
            }
        }
        out
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
