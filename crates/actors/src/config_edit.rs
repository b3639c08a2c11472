//! Edits of `config.toml` that keep the operator's comments and layout.
//!
//! Design note: the upgrade runner records the new service version with
//! [`set_service_version`] after an upgrade. The file is edited with `toml_edit`, so every
//! comment, key order and unrelated key survives, and replaced atomically
//! ([`crate::fsutil::write_atomically`]): the new text goes to `<file>.tmp-<pid>` in the same
//! directory, is fsynced, renamed over the file, and the directory is fsynced. A crash leaves
//! either the old or the new file, never half of one. The file's permission bits are kept; a
//! symlinked `config.toml` is edited at its target so the link survives.

use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, Table, Value};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::write_atomically;

/// Sets `[versions] docker_service = "<version>"` in `config_file`, adding the key or the
/// section if needed and creating the file (with only that section) if it does not exist.
/// Returns the previous value.
pub fn set_service_version(config_file: &Path, version: &str) -> Result<Option<String>> {
    let target = resolve_symlink(config_file)?;
    let existing = match std::fs::read_to_string(&target) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io("cannot read config file", &target, e)),
    };
    let config_error = |message: String| Error::Config {
        path: config_file.to_path_buf(),
        message,
    };
    let mut doc: DocumentMut = existing
        .as_deref()
        .unwrap_or_default()
        .parse()
        .map_err(|e: toml_edit::TomlError| config_error(e.to_string()))?;

    let versions = doc
        .entry("versions")
        .or_insert_with(|| Item::Table(Table::new()))
        .as_table_like_mut()
        .ok_or_else(|| config_error("`versions` must be a table".into()))?;
    let previous =
        match versions.get("docker_service") {
            None => None,
            Some(item) => Some(item.as_str().map(str::to_string).ok_or_else(|| {
                config_error("`versions.docker_service` must be a string".into())
            })?),
        };
    if existing.is_some() && previous.as_deref() == Some(version) {
        return Ok(previous);
    }
    match versions
        .get_mut("docker_service")
        .and_then(Item::as_value_mut)
    {
        Some(value) => {
            // Replace the value but keep the whitespace and any trailing comment around it.
            let decor = value.decor().clone();
            *value = Value::from(version);
            *value.decor_mut() = decor;
        }
        None => {
            versions.insert("docker_service", toml_edit::value(version));
        }
    }

    write_atomically(&target, doc.to_string().as_bytes())?;
    Ok(previous)
}

/// The file to write: `path` itself, or the final target when `path` is a symlink.
fn resolve_symlink(path: &Path) -> Result<PathBuf> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            std::fs::canonicalize(path).ctx("cannot resolve config file symlink", path)
        }
        _ => Ok(path.to_path_buf()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const ORIGINAL: &str = "\
# nuwax deployment config
[versions]
# the running release
docker_service = \"0.0.13\" # set by the upgrade runner
other = \"keep\"

[docker]
compose_file = \"./docker/docker-compose.yml\"  # relative to the work dir

[backup]
storage_dir = \"./backups\"
";

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn updates_existing_value_keeping_everything_else() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.toml");
        std::fs::write(&f, ORIGINAL).unwrap();
        let prev = set_service_version(&f, "0.0.14").unwrap();
        assert_eq!(prev.as_deref(), Some("0.0.13"));
        let text = std::fs::read_to_string(&f).unwrap();
        assert_eq!(
            text,
            ORIGINAL.replace("\"0.0.13\"", "\"0.0.14\""),
            "only the value changed"
        );
        assert_eq!(entries(dir.path()), ["config.toml"], "no temp file left");

        let prev = set_service_version(&f, "0.0.15").unwrap();
        assert_eq!(prev.as_deref(), Some("0.0.14"));
    }

    #[test]
    fn same_version_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.toml");
        std::fs::write(&f, ORIGINAL).unwrap();
        assert_eq!(
            set_service_version(&f, "0.0.13").unwrap().as_deref(),
            Some("0.0.13")
        );
        assert_eq!(std::fs::read_to_string(&f).unwrap(), ORIGINAL);
    }

    #[test]
    fn adds_key_and_section_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.toml");
        let without = "# mine\n[docker]\ncompose_file = \"docker/docker-compose.yml\" # here\n";
        std::fs::write(&f, without).unwrap();
        assert_eq!(set_service_version(&f, "1.2.3").unwrap(), None);
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(text.starts_with(without), "{text}");
        let parsed: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(parsed["versions"]["docker_service"].as_str(), Some("1.2.3"));

        let f2 = dir.path().join("other.toml");
        std::fs::write(&f2, "[versions]\n# none yet\n\n[backup]\nexclude = []\n").unwrap();
        assert_eq!(set_service_version(&f2, "2.0.0").unwrap(), None);
        let text = std::fs::read_to_string(&f2).unwrap();
        assert!(text.contains("# none yet"), "{text}");
        let parsed: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(parsed["versions"]["docker_service"].as_str(), Some("2.0.0"));
        assert!(parsed["backup"]["exclude"].as_array().unwrap().is_empty());
    }

    #[test]
    fn dotted_and_inline_forms_are_edited_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.toml");
        std::fs::write(&f, "versions = { docker_service = \"1\" }\n").unwrap();
        assert_eq!(set_service_version(&f, "2").unwrap().as_deref(), Some("1"));
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            "versions = { docker_service = \"2\" }\n"
        );
    }

    #[test]
    fn creates_the_file_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.toml");
        assert_eq!(set_service_version(&f, "0.1.0").unwrap(), None);
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            "[versions]\ndocker_service = \"0.1.0\"\n"
        );
        assert_eq!(entries(dir.path()), ["config.toml"]);
    }

    #[test]
    fn keeps_permissions_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.toml");
        std::fs::write(&real, ORIGINAL).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("config.toml");
        std::os::unix::fs::symlink("real.toml", &link).unwrap();

        set_service_version(&link, "9").unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let meta = std::fs::metadata(&real).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        assert!(
            std::fs::read_to_string(&real)
                .unwrap()
                .contains("docker_service = \"9\" # set by the upgrade runner")
        );
        assert_eq!(entries(dir.path()), ["config.toml", "real.toml"]);
    }

    #[test]
    fn invalid_toml_is_a_config_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.toml");
        std::fs::write(&f, "[versions\ndocker_service = 1.0.0\n").unwrap();
        let err = set_service_version(&f, "1").unwrap_err();
        match &err {
            Error::Config { path, .. } => assert_eq!(path, &f),
            other => panic!("expected config error, got {other:?}"),
        }
        assert!(err.to_string().contains("config.toml"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            "[versions\ndocker_service = 1.0.0\n",
            "left untouched"
        );
        assert_eq!(entries(dir.path()), ["config.toml"]);
    }

    #[test]
    fn wrong_types_are_config_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.toml");
        std::fs::write(&f, "versions = 3\n").unwrap();
        assert!(matches!(
            set_service_version(&f, "1"),
            Err(Error::Config { .. })
        ));
        std::fs::write(&f, "[versions]\ndocker_service = 13\n").unwrap();
        assert!(matches!(
            set_service_version(&f, "1"),
            Err(Error::Config { .. })
        ));
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            "[versions]\ndocker_service = 13\n"
        );
    }

    #[test]
    fn missing_directory_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("nope/config.toml");
        let err = set_service_version(&f, "1").unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
