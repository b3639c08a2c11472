//! Which containers on the engine belong to this deployment: the one rule behind the
//! cold-backup gate, stop/start/status, the health wait and the rollback's stop.
//!
//! Design note: a container that we fail to recognise reads as "nothing running", and a hot
//! backup or a rollback under a running database follows. So recognition is generous and
//! fails closed:
//! - by name, under every name the compose implementations in use would give the project:
//!   compose v2 strips leading `_`/`-`, docker-compose v1 (1.21+) keeps them, v1 before 1.21
//!   also dropped `_` and `-` inside the name, and v1 ignores a top-level `name:` (it uses
//!   the directory's name);
//! - by the labels compose writes on every container it creates,
//!   `com.docker.compose.project.config_files` and `com.docker.compose.project.working_dir`,
//!   compared (canonicalised) with our compose file and compose dir, whatever the project
//!   label says.
//!
//! A container under another spelling of our name whose labels name a different directory
//! that exists here may be another deployment, or ours reached by another path: when it runs
//! and `[docker] project` does not settle the name, the caller refuses (exit 3) instead of
//! guessing. Under the primary name (the one we pass to `compose -p`) compose itself treats
//! the container as part of the project, and so do we.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::ProjectIdentity;

pub const PROJECT_LABEL: &str = "com.docker.compose.project";
pub const WORKING_DIR_LABEL: &str = "com.docker.compose.project.working_dir";
pub const CONFIG_FILES_LABEL: &str = "com.docker.compose.project.config_files";

/// Every name the compose implementations would derive from each raw name, in order: for each
/// raw name compose v2's, docker-compose v1's (leading `_`/`-` kept), and old v1's (only
/// `[a-z0-9]`). The first entry is compose v2's name of `raws[0]`. Empty results and
/// duplicates are left out.
pub fn name_variants(raws: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for raw in raws {
        let lowered = raw.trim().to_lowercase();
        let v1: String = lowered
            .chars()
            .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
            .collect();
        let v2 = v1.trim_start_matches(['_', '-']).to_string();
        let v1_old: String = v1.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        for name in [v2, v1, v1_old] {
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// What the labels of one container say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// One of ours.
    Ours,
    /// Another project's.
    Foreign,
    /// Cannot tell: the text says why (for the refusal when it runs).
    Ambiguous(String),
}

/// Where a container's compose labels say its project lives.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    /// Our compose file or compose dir.
    Ours,
    /// Somewhere else that exists on this machine.
    Elsewhere(String),
    /// No labels, or paths that do not exist here (a compose run in another mount namespace).
    Unknown,
}

/// Decides whether the container with `labels` belongs to the project `identity`.
pub fn classify(identity: &ProjectIdentity, labels: &HashMap<String, String>) -> Membership {
    let project = labels.get(PROJECT_LABEL).map(String::as_str).unwrap_or("");
    let place = place(identity, labels);
    if place == Place::Ours {
        return Membership::Ours;
    }
    if project.is_empty() {
        return Membership::Foreign;
    }
    if project == identity.primary() {
        return Membership::Ours;
    }
    if !identity.names.iter().skip(1).any(|n| n == project) {
        return Membership::Foreign;
    }
    match place {
        Place::Ours | Place::Unknown => Membership::Ours,
        Place::Elsewhere(_) if identity.explicit => Membership::Foreign,
        Place::Elsewhere(there) => Membership::Ambiguous(format!(
            "it is labelled compose project {project}, another spelling of this project's \
             name {}, but compose recorded it for {there}{}",
            identity.primary(),
            identity
                .compose_dir
                .as_deref()
                .map(|d| format!(", not {}", d.display()))
                .unwrap_or_default()
        )),
    }
}

fn place(identity: &ProjectIdentity, labels: &HashMap<String, String>) -> Place {
    let working_dir = labels
        .get(WORKING_DIR_LABEL)
        .map(|s| s.trim())
        .filter(|s| !s.is_empty());
    let config_files: Vec<PathBuf> = labels
        .get(CONFIG_FILES_LABEL)
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .map(|f| match working_dir {
                    // Relative entries (some v1 releases) are relative to the working dir.
                    Some(wd) if Path::new(f).is_relative() => Path::new(wd).join(f),
                    _ => PathBuf::from(f),
                })
                .collect()
        })
        .unwrap_or_default();
    let mut elsewhere: Option<String> = None;
    for file in &config_files {
        match same_path(file, identity.compose_file.as_deref()) {
            Some(true) => return Place::Ours,
            Some(false) => {
                elsewhere.get_or_insert_with(|| format!("compose file {}", file.display()));
            }
            None => {}
        }
    }
    if let Some(wd) = working_dir {
        match same_path(Path::new(wd), identity.compose_dir.as_deref()) {
            Some(true) => return Place::Ours,
            Some(false) => {
                elsewhere.get_or_insert_with(|| format!("working dir {wd}"));
            }
            None => {}
        }
    }
    elsewhere.map_or(Place::Unknown, Place::Elsewhere)
}

/// `Some(true)`: `label` names `ours`; `Some(false)`: it names something else that exists
/// here; `None`: it cannot be told (nothing of ours to compare with, or not resolvable here).
fn same_path(label: &Path, ours: Option<&Path>) -> Option<bool> {
    let ours = ours?;
    if label == ours {
        return Some(true);
    }
    let resolved = std::fs::canonicalize(label).ok()?;
    let ours_resolved = std::fs::canonicalize(ours).unwrap_or_else(|_| ours.to_path_buf());
    Some(resolved == ours_resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_of_each_compose_implementation() {
        // v2 strips the leading `_`, v1 keeps it, old v1 also drops inner `_`/`-`.
        assert_eq!(name_variants(&["_My.App"]), ["myapp", "_myapp"]);
        assert_eq!(
            name_variants(&["__nu-wax_Prod"]),
            ["nu-wax_prod", "__nu-wax_prod", "nuwaxprod"]
        );
        assert_eq!(name_variants(&["-x"]), ["x", "-x"]);
        // Plain names have one spelling.
        assert_eq!(name_variants(&["docker"]), ["docker"]);
        // Later raw names (v1 ignores `name:` and uses the directory) come after.
        assert_eq!(
            name_variants(&["Stack", "_docker dir"]),
            ["stack", "dockerdir", "_dockerdir"]
        );
        // Nothing usable, and duplicates.
        assert!(name_variants(&["...", "  "]).is_empty());
        assert_eq!(name_variants(&["a_b", "a_b"]), ["a_b", "ab"]);
        // The first is always compose v2's normalisation.
        for raw in ["_x", "X-y", "__a__", "Ünï_code9"] {
            assert_eq!(
                name_variants(&[raw]).first().cloned(),
                super::super::compose::normalize_project_name(raw),
                "{raw}"
            );
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    struct Fixture {
        _tmp: tempfile::TempDir,
        ours: PathBuf,
        other: PathBuf,
        identity: ProjectIdentity,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let ours = root.join("_app");
        let other = root.join("other");
        for d in [&ours, &other] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("docker-compose.yml"), "services: {}\n").unwrap();
        }
        let identity = ProjectIdentity {
            names: name_variants(&["_app"]),
            explicit: false,
            compose_file: Some(ours.join("docker-compose.yml")),
            compose_dir: Some(ours.clone()),
        };
        Fixture {
            _tmp: tmp,
            ours,
            other,
            identity,
        }
    }

    #[test]
    fn by_name_every_spelling() {
        let f = fixture();
        assert_eq!(f.identity.names, ["app", "_app"]);
        for name in ["app", "_app"] {
            assert_eq!(
                classify(&f.identity, &labels(&[(PROJECT_LABEL, name)])),
                Membership::Ours,
                "{name}"
            );
        }
        for name in ["apps", "", "APP", "other"] {
            assert_eq!(
                classify(&f.identity, &labels(&[(PROJECT_LABEL, name)])),
                Membership::Foreign,
                "{name}"
            );
        }
        assert_eq!(classify(&f.identity, &labels(&[])), Membership::Foreign);
    }

    #[test]
    fn by_working_dir_or_config_files_whatever_the_name() {
        let f = fixture();
        let dir = f.ours.display().to_string();
        let file = f.ours.join("docker-compose.yml").display().to_string();
        // Reached through a symlink: compared canonicalised.
        let link = f.other.parent().unwrap().join("link");
        std::os::unix::fs::symlink(&f.ours, &link).unwrap();
        let via_link = link.display().to_string();
        let cases = [
            vec![
                (PROJECT_LABEL, "renamed"),
                (WORKING_DIR_LABEL, dir.as_str()),
            ],
            vec![
                (PROJECT_LABEL, "renamed"),
                (WORKING_DIR_LABEL, via_link.as_str()),
            ],
            vec![(PROJECT_LABEL, "x"), (CONFIG_FILES_LABEL, file.as_str())],
            vec![
                (PROJECT_LABEL, "x"),
                (
                    CONFIG_FILES_LABEL,
                    "/elsewhere/base.yml, docker-compose.yml",
                ),
                (WORKING_DIR_LABEL, via_link.as_str()),
            ],
        ];
        for case in cases {
            assert_eq!(
                classify(&f.identity, &labels(&case)),
                Membership::Ours,
                "{case:?}"
            );
        }
        // Another directory under another name: foreign.
        let other = f.other.display().to_string();
        assert_eq!(
            classify(
                &f.identity,
                &labels(&[(PROJECT_LABEL, "other"), (WORKING_DIR_LABEL, &other)])
            ),
            Membership::Foreign
        );
    }

    #[test]
    fn another_spelling_for_another_existing_dir_is_ambiguous_unless_explicit() {
        let mut f = fixture();
        let other = f.other.display().to_string();
        let l = labels(&[(PROJECT_LABEL, "_app"), (WORKING_DIR_LABEL, &other)]);
        match classify(&f.identity, &l) {
            Membership::Ambiguous(why) => {
                assert!(why.contains("_app"), "{why}");
                assert!(why.contains(&other), "{why}");
            }
            m => panic!("{m:?}"),
        }
        // Under the primary name compose itself counts it in the project.
        let l2 = labels(&[(PROJECT_LABEL, "app"), (WORKING_DIR_LABEL, &other)]);
        assert_eq!(classify(&f.identity, &l2), Membership::Ours);
        // A path that does not exist here cannot tell: the name decides.
        let l3 = labels(&[(PROJECT_LABEL, "_app"), (WORKING_DIR_LABEL, "/no/such/dir")]);
        assert_eq!(classify(&f.identity, &l3), Membership::Ours);
        // `[docker] project` settles it.
        f.identity.explicit = true;
        assert_eq!(classify(&f.identity, &l), Membership::Foreign);
    }

    #[test]
    fn named_identity_has_no_paths() {
        let id = ProjectIdentity::named("my_app");
        assert_eq!(id.names, ["my_app", "myapp"]);
        assert_eq!(id.primary(), "my_app");
        assert_eq!(
            classify(&id, &labels(&[(PROJECT_LABEL, "myapp")])),
            Membership::Ours
        );
    }
}
