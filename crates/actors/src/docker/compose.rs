//! Reading just enough of a compose file: the project name and, per service, its `restart:`
//! policy, its dependencies and whether it defines a healthcheck.
//!
//! The file is read loosely (`serde_yaml::Value`, unknown keys ignored, `<<` merge keys applied)
//! because compose grows keys faster than we could track them, and anything we fail to
//! understand only makes the gate more conservative: a service we cannot read is persistent.
//! Interpolation covers `$VAR`, `${VAR}` and the `${VAR:-default}` family, looked up in the env
//! file first and then in the process environment (cron runs with an unrelated environment; the
//! env file is the deployment's own truth). It is applied only to the values we read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use super::{ComposeProject, ComposeService, ProjectIdentity, discovery};
use crate::error::{Error, IoContext, Result};

/// Loads `compose_file`. `env_file` defaults to `.env` next to the compose file; a missing env
/// file is not an error (compose does not require one). `project_override` is the config's
/// `[docker] project`.
pub fn load(
    compose_file: &Path,
    env_file: Option<&Path>,
    project_override: Option<&str>,
) -> Result<ComposeProject> {
    if !compose_file.exists() {
        return Err(Error::Refused(format!(
            "compose file {} not found; run nuwax-cli from the deployment's working directory \
             (-C/--work-dir) or set [docker] compose_file in config.toml",
            compose_file.display()
        )));
    }
    let text =
        std::fs::read_to_string(compose_file).ctx("cannot read compose file", compose_file)?;
    let compose_dir = compose_dir(compose_file);
    let env_path = env_file
        .map(Path::to_path_buf)
        .unwrap_or_else(|| compose_dir.join(".env"));
    let env = read_env_file(&env_path)?;

    let mut doc: Value = serde_yaml::from_str(&text).map_err(|e| config_error(compose_file, e))?;
    doc.apply_merge()
        .map_err(|e| config_error(compose_file, e))?;
    let vars = Vars { env: &env };

    let (name, raw_names) = project_name(
        compose_file,
        &compose_dir,
        &doc,
        &env,
        &vars,
        project_override,
    )?;
    let raw_refs: Vec<&str> = raw_names.iter().map(String::as_str).collect();
    let identity = identity(
        &raw_refs,
        project_override.is_some_and(|p| !p.trim().is_empty()),
        compose_file,
    );
    debug_assert_eq!(identity.primary(), name);

    let mut services = BTreeMap::new();
    match doc.get("services") {
        None | Some(Value::Null) => {}
        Some(Value::Mapping(map)) => {
            for (key, body) in map {
                let Some(service) = key.as_str() else {
                    tracing::warn!(file = %compose_file.display(), "ignoring a service with a non-string name");
                    continue;
                };
                let parsed = match body {
                    Value::Null => ComposeService::default(),
                    Value::Mapping(body) => read_service(body, &vars),
                    _ => {
                        // Unreadable: leave it out; a container of a service we do not know is
                        // treated as persistent anyway.
                        tracing::warn!(service, file = %compose_file.display(), "ignoring a service that is not a mapping");
                        continue;
                    }
                };
                services.insert(service.to_string(), parsed);
            }
        }
        Some(_) => {
            return Err(Error::Config {
                path: compose_file.to_path_buf(),
                message: "`services` must be a mapping of service names".into(),
            });
        }
    }
    Ok(ComposeProject {
        name,
        services,
        identity,
    })
}

/// The [`ProjectIdentity`] of a project whose name comes from `raw_names` (the first is the
/// one in use, the others what other compose implementations would use instead) and whose
/// compose file is `compose_file`. Works when the compose file does not exist (yet).
pub fn identity(raw_names: &[&str], explicit: bool, compose_file: &Path) -> ProjectIdentity {
    let absolute = std::path::absolute(compose_file).unwrap_or_else(|_| compose_file.to_path_buf());
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    ProjectIdentity {
        names: discovery::name_variants(raw_names),
        explicit,
        compose_file: Some(canonical(&absolute)),
        compose_dir: absolute.parent().map(canonical),
    }
}

/// Normalises a project name as compose does: lowercase, only `[a-z0-9_-]`, starting with a
/// letter or digit. `None` when nothing usable is left.
pub fn normalize_project_name(raw: &str) -> Option<String> {
    let lowered: String = raw
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect();
    let trimmed = lowered.trim_start_matches(['_', '-']);
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

fn config_error(path: &Path, e: serde_yaml::Error) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn compose_dir(compose_file: &Path) -> PathBuf {
    let absolute =
        std::fs::canonicalize(compose_file).unwrap_or_else(|_| compose_file.to_path_buf());
    absolute
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Config `[docker] project`, else `COMPOSE_PROJECT_NAME` from the env file, else top-level
/// `name:`, else the compose dir's name. Returns the normalised name and the raw names other
/// compose implementations may have used (the chosen one first; docker-compose v1 ignores a
/// top-level `name:` and uses the directory's name).
fn project_name(
    compose_file: &Path,
    compose_dir: &Path,
    doc: &Value,
    env: &BTreeMap<String, String>,
    vars: &Vars<'_>,
    project_override: Option<&str>,
) -> Result<(String, Vec<String>)> {
    let non_empty = |s: &str| -> Option<String> {
        let s = s.trim();
        (!s.is_empty()).then(|| s.to_string())
    };
    let dir = compose_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (raw, source) = if let Some(p) = project_override.and_then(non_empty) {
        (p, "[docker] project in config.toml")
    } else if let Some(p) = env.get("COMPOSE_PROJECT_NAME").and_then(|s| non_empty(s)) {
        (p, "COMPOSE_PROJECT_NAME in the env file")
    } else if let Some(p) = doc
        .get("name")
        .and_then(scalar_string)
        .and_then(|s| non_empty(&vars.interpolate(&s)))
    {
        (p, "the compose file's top-level name")
    } else {
        (dir.clone(), "the compose directory's name")
    };
    let mut raws = vec![raw.clone()];
    if source == "the compose file's top-level name" {
        raws.push(dir);
    }
    let name = normalize_project_name(&raw).ok_or_else(|| Error::Config {
        path: compose_file.to_path_buf(),
        message: format!(
            "project name {raw:?} (from {source}) has no usable characters [a-z0-9_-]; \
             set [docker] project in config.toml"
        ),
    })?;
    Ok((name, raws))
}

fn read_service(body: &Mapping, vars: &Vars<'_>) -> ComposeService {
    let get_str = |key: &str| {
        body.get(key)
            .and_then(scalar_string)
            .map(|s| vars.interpolate(&s))
    };

    let restart = match body.get("restart") {
        Some(Value::Bool(false)) => Some("no".to_string()),
        Some(_) => get_str("restart").map(|s| {
            let s = s.trim().to_string();
            // An interpolated `false` reads like the YAML boolean.
            if s == "false" { "no".to_string() } else { s }
        }),
        None => None,
    };

    let mut deps: Vec<String> = Vec::new();
    let mut add = |name: &str| {
        let name = name.trim();
        if !name.is_empty() && !deps.iter().any(|d| d == name) {
            deps.push(name.to_string());
        }
    };
    match body.get("depends_on") {
        Some(Value::Sequence(list)) => {
            for item in list.iter().filter_map(scalar_string) {
                add(&vars.interpolate(&item));
            }
        }
        Some(Value::Mapping(map)) => {
            for key in map.keys().filter_map(scalar_string) {
                add(&vars.interpolate(&key));
            }
        }
        _ => {}
    }
    if let Some(mode) = get_str("network_mode")
        && let Some(service) = mode.trim().strip_prefix("service:")
    {
        add(service);
    }
    if let Some(Value::Sequence(list)) = body.get("volumes_from") {
        for item in list.iter().filter_map(scalar_string) {
            let item = vars.interpolate(&item);
            if item.starts_with("container:") {
                continue;
            }
            let item = item.strip_prefix("service:").unwrap_or(&item);
            add(item.split(':').next().unwrap_or_default());
        }
    }
    if let Some(Value::Sequence(list)) = body.get("links") {
        for item in list.iter().filter_map(scalar_string) {
            let item = vars.interpolate(&item);
            add(item.split(':').next().unwrap_or_default());
        }
    }

    // `env_file:` as a string, a list of strings, or a list of `{path: ...}` maps.
    let mut env_files = Vec::new();
    let mut add_env = |v: &Value| {
        let path = match v {
            Value::Mapping(m) => m.get("path").and_then(scalar_string),
            other => scalar_string(other),
        };
        if let Some(p) = path {
            env_files.push(vars.interpolate(&p));
        }
    };
    match body.get("env_file") {
        Some(Value::Sequence(list)) => list.iter().for_each(&mut add_env),
        Some(v) => add_env(v),
        None => {}
    }

    ComposeService {
        restart,
        depends_on: deps,
        env_files,
        has_healthcheck: body
            .get("healthcheck")
            .is_some_and(|h| healthcheck_enabled(h, vars)),
    }
}

fn healthcheck_enabled(healthcheck: &Value, vars: &Vars<'_>) -> bool {
    let Some(map) = healthcheck.as_mapping() else {
        return false;
    };
    let disabled = match map.get("disable") {
        Some(Value::Bool(b)) => *b,
        Some(v) => scalar_string(v).is_some_and(|s| vars.interpolate(&s).trim() == "true"),
        None => false,
    };
    let test_none = match map.get("test") {
        Some(Value::Sequence(test)) => test
            .first()
            .and_then(scalar_string)
            .is_some_and(|first| vars.interpolate(&first).trim() == "NONE"),
        _ => false,
    };
    !disabled && !test_none
}

/// A YAML scalar as compose would see it as a string.
pub(super) fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads a dotenv file: `KEY=VALUE` lines, optional `export `, `#` comments, single quotes
/// literal, double quotes with `\n`/`\"`/`\\` escapes, ` #` starting an inline comment in an
/// unquoted value. A missing file is an empty environment.
pub(super) fn read_env_file(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::debug!(path = %path.display(), "no env file");
            return Ok(BTreeMap::new());
        }
        Err(e) => return Err(Error::io("cannot read env file", path, e)),
    };
    Ok(parse_env(&text))
}

fn parse_env(text: &str) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty() {
            continue;
        }
        vars.insert(key.to_string(), parse_env_value(value));
    }
    vars
}

fn parse_env_value(raw: &str) -> String {
    let trimmed = raw.trim_start();
    if let Some(rest) = trimmed.strip_prefix('\'') {
        return rest.split_once('\'').map_or(rest, |(v, _)| v).to_string();
    }
    if let Some(rest) = trimmed.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some(other) => out.push(other),
                    None => out.push('\\'),
                },
                c => out.push(c),
            }
        }
        return out;
    }
    // `#` starts a comment only after whitespace (`KEY=a#b` keeps the `#`).
    let comment = raw
        .char_indices()
        .find(|&(i, c)| c == '#' && raw[..i].ends_with(char::is_whitespace))
        .map_or(raw.len(), |(i, _)| i);
    raw[..comment].trim().to_string()
}

/// Variable lookup for interpolation: env file first, then the process environment.
pub(super) struct Vars<'a> {
    pub(super) env: &'a BTreeMap<String, String>,
}

impl Vars<'_> {
    fn get(&self, name: &str) -> Option<String> {
        self.env
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
    }

    /// Compose-style interpolation. Unknown or malformed syntax is kept literally: we only
    /// read a few keys and must not fail on a value compose itself would accept.
    pub(super) fn interpolate(&self, s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
            } else if let Some(body_and_tail) = after.strip_prefix('{') {
                match matching_brace(body_and_tail) {
                    Some(end) => {
                        out.push_str(&self.expand_braced(&body_and_tail[..end]));
                        rest = &body_and_tail[end + 1..];
                    }
                    None => {
                        out.push('$');
                        rest = after;
                    }
                }
            } else {
                let len = after
                    .char_indices()
                    .find(|&(j, c)| {
                        !(c == '_' || c.is_ascii_alphabetic() || (j > 0 && c.is_ascii_digit()))
                    })
                    .map_or(after.len(), |(j, _)| j);
                if len == 0 {
                    out.push('$');
                } else {
                    out.push_str(&self.get(&after[..len]).unwrap_or_default());
                }
                rest = &after[len..];
            }
        }
        out.push_str(rest);
        out
    }

    /// `NAME`, `NAME:-word`, `NAME-word`, `NAME:?msg`, `NAME?msg`, `NAME:+word`, `NAME+word`.
    fn expand_braced(&self, body: &str) -> String {
        let name_len = body
            .find(|c: char| !(c == '_' || c.is_ascii_alphanumeric()))
            .unwrap_or(body.len());
        let (name, op) = body.split_at(name_len);
        let value = self.get(name);
        let set_non_empty = value.as_deref().is_some_and(|v| !v.is_empty());
        let word = |w: &str| self.interpolate(w);
        match op {
            "" => value.unwrap_or_default(),
            _ if op.starts_with(":-") => {
                if set_non_empty {
                    value.unwrap_or_default()
                } else {
                    word(&op[2..])
                }
            }
            _ if op.starts_with(":+") => {
                if set_non_empty {
                    word(&op[2..])
                } else {
                    String::new()
                }
            }
            _ if op.starts_with(":?") || op.starts_with('?') => {
                // Compose fails on an unset required variable; we only read a few keys, so an
                // empty value (which then reads as "absent") is the conservative choice.
                value.unwrap_or_default()
            }
            _ if op.starts_with('-') => value.unwrap_or_else(|| word(&op[1..])),
            _ if op.starts_with('+') => {
                if value.is_some() {
                    word(&op[1..])
                } else {
                    String::new()
                }
            }
            _ => format!("${{{body}}}"),
        }
    }
}

/// Index of the `}` closing a `${` whose body starts at `s`, allowing nested `${...}`.
fn matching_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn project_in(
        dir_name: &str,
        compose: &str,
        env: Option<&str>,
    ) -> (tempfile::TempDir, Result<ComposeProject>) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(dir_name);
        std::fs::create_dir(&dir).unwrap();
        let file = write(&dir, "docker-compose.yml", compose);
        if let Some(env) = env {
            write(&dir, ".env", env);
        }
        let result = load(&file, None, None);
        (tmp, result)
    }

    fn load_str(compose: &str) -> ComposeProject {
        project_in("docker", compose, None).1.unwrap()
    }

    #[test]
    fn depends_on_list_and_map_forms() {
        let p = load_str(
            "services:\n  db: {}\n  cache:\n  app:\n    depends_on: [db, cache]\n  web:\n    depends_on:\n      app:\n        condition: service_healthy\n      db:\n        condition: service_started\n",
        );
        assert_eq!(p.services["app"].depends_on, ["db", "cache"]);
        assert_eq!(p.services["web"].depends_on, ["app", "db"]);
        assert_eq!(p.services["cache"], ComposeService::default());
    }

    #[test]
    fn network_mode_volumes_from_and_links_are_dependencies() {
        let p = load_str(
            "services:\n  vpn: {}\n  data: {}\n  app:\n    network_mode: \"service:vpn\"\n    volumes_from: [\"data:ro\", \"container:foreign\", \"service:vpn\"]\n    links: [\"db:database\"]\n  host:\n    network_mode: host\n",
        );
        assert_eq!(p.services["app"].depends_on, ["vpn", "data", "db"]);
        assert!(p.services["host"].depends_on.is_empty());
    }

    #[test]
    fn restart_values() {
        let p = load_str(
            "services:\n  a:\n    restart: \"no\"\n  b:\n    restart: false\n  c:\n    restart: no\n  d:\n    restart: unless-stopped\n  e:\n    image: x\n  f:\n    restart: on-failure:3\n",
        );
        assert_eq!(p.services["a"].restart.as_deref(), Some("no"));
        assert_eq!(p.services["b"].restart.as_deref(), Some("no"));
        assert_eq!(p.services["c"].restart.as_deref(), Some("no"));
        assert_eq!(p.services["d"].restart.as_deref(), Some("unless-stopped"));
        assert_eq!(p.services["e"].restart, None);
        assert_eq!(p.services["f"].restart.as_deref(), Some("on-failure:3"));
    }

    #[test]
    fn healthcheck_presence_and_disable() {
        let p = load_str(
            "services:\n  a:\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n  b:\n    healthcheck:\n      disable: true\n  c:\n    healthcheck:\n      test: [\"NONE\"]\n  d:\n    image: x\n  e:\n    healthcheck:\n      test: curl -f http://localhost\n      interval: 5s\n",
        );
        assert!(p.services["a"].has_healthcheck);
        assert!(!p.services["b"].has_healthcheck);
        assert!(!p.services["c"].has_healthcheck);
        assert!(!p.services["d"].has_healthcheck);
        assert!(p.services["e"].has_healthcheck);
    }

    #[test]
    fn merge_keys_are_applied() {
        let p = load_str(
            "x-common: &common\n  restart: \"no\"\n  depends_on: [db]\nservices:\n  db: {}\n  job:\n    <<: *common\n    image: x\n",
        );
        assert_eq!(p.services["job"].restart.as_deref(), Some("no"));
        assert_eq!(p.services["job"].depends_on, ["db"]);
    }

    #[test]
    fn env_interpolation_from_env_file() {
        let (_tmp, p) = project_in(
            "docker",
            "name: ${STACK:-fallback}\nservices:\n  app:\n    restart: ${APP_RESTART}\n    depends_on: [\"${DB_SERVICE:-db}\"]\n  job:\n    restart: ${JOB_RESTART:-no}\n  cost:\n    restart: $$5\n",
            Some(
                "# comment\nexport STACK=MyStack\nAPP_RESTART='always'\nDB_SERVICE=\nJOB_RESTART= # empty\n",
            ),
        );
        let p = p.unwrap();
        assert_eq!(p.name, "mystack");
        assert_eq!(p.services["app"].restart.as_deref(), Some("always"));
        assert_eq!(p.services["app"].depends_on, ["db"]);
        assert_eq!(p.services["job"].restart.as_deref(), Some("no"));
        assert_eq!(p.services["cost"].restart.as_deref(), Some("$5"));
    }

    #[test]
    fn interpolation_forms() {
        let env: BTreeMap<String, String> = [("SET", "v"), ("EMPTY", "")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let vars = Vars { env: &env };
        let cases = [
            ("${SET}", "v"),
            ("$SET-x", "v-x"),
            ("${NUWAX_SURELY_UNSET_1:-d}", "d"),
            ("${EMPTY:-d}", "d"),
            ("${EMPTY-d}", ""),
            ("${NUWAX_SURELY_UNSET_1-d}", "d"),
            ("${SET:+alt}", "alt"),
            ("${EMPTY:+alt}", ""),
            ("${NUWAX_SURELY_UNSET_1:-${SET}}", "v"),
            ("a$$b", "a$b"),
            ("${unterminated", "${unterminated"),
            ("cost $5", "cost $5"),
            ("${SET:?required}", "v"),
        ];
        for (input, want) in cases {
            assert_eq!(vars.interpolate(input), want, "{input}");
        }
    }

    #[test]
    fn service_env_files_in_every_form() {
        let p = load_str(
            "services:\n  a:\n    image: x\n    env_file: a.env\n  b:\n    image: x\n    env_file: [b1.env, b2.env]\n  c:\n    image: x\n    env_file:\n      - path: c.env\n        required: false\n",
        );
        assert_eq!(p.services["a"].env_files, vec!["a.env".to_string()]);
        assert_eq!(
            p.services["b"].env_files,
            vec!["b1.env".to_string(), "b2.env".into()]
        );
        assert_eq!(p.services["c"].env_files, vec!["c.env".to_string()]);
    }

    #[test]
    fn env_file_values() {
        let env = parse_env(
            "A=1\n  B = two words  \nC=\"quoted # not comment\\n\"\nD='single $X'\nE=x #comment\nF\n=nokey\n",
        );
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "two words");
        assert_eq!(env["C"], "quoted # not comment\n");
        assert_eq!(env["D"], "single $X");
        assert_eq!(env["E"], "x");
        assert_eq!(env.len(), 5);
    }

    #[test]
    fn project_name_rules() {
        // Directory name, normalised.
        let (_t, p) = project_in("My.Docker Dir", "services: {}\n", None);
        assert_eq!(p.unwrap().name, "mydockerdir");
        // Top-level name beats the directory.
        let (_t, p) = project_in("docker", "name: Nuwax_Prod\nservices: {}\n", None);
        assert_eq!(p.unwrap().name, "nuwax_prod");
        // COMPOSE_PROJECT_NAME in the env file beats `name:`.
        let (_t, p) = project_in(
            "docker",
            "name: fromfile\nservices: {}\n",
            Some("COMPOSE_PROJECT_NAME=FromEnv\n"),
        );
        assert_eq!(p.unwrap().name, "fromenv");
        // The config override beats everything.
        let (tmp, _) = project_in(
            "docker",
            "name: fromfile\n",
            Some("COMPOSE_PROJECT_NAME=x\n"),
        );
        let file = tmp.path().join("docker/docker-compose.yml");
        assert_eq!(
            load(&file, None, Some("Over_Ride")).unwrap().name,
            "over_ride"
        );
        // An explicit env file path is honoured.
        let env = write(tmp.path(), "other.env", "COMPOSE_PROJECT_NAME=other\n");
        assert_eq!(load(&file, Some(&env), None).unwrap().name, "other");
        // Leading separators are dropped; nothing usable is a config error.
        assert_eq!(normalize_project_name("__-a.B"), Some("ab".into()));
        assert_eq!(normalize_project_name("..."), None);
        let err = load(&file, None, Some("!!!")).unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{err}");
    }

    #[test]
    fn identity_has_every_spelling_and_the_compose_place() {
        // The directory name: v2 strips the leading `_`, v1 keeps it.
        let (tmp, p) = project_in("_My.App", "services: {}\n", None);
        let p = p.unwrap();
        assert_eq!(p.name, "myapp");
        assert_eq!(p.identity.names, ["myapp", "_myapp"]);
        assert!(!p.identity.explicit);
        let dir = std::fs::canonicalize(tmp.path().join("_My.App")).unwrap();
        assert_eq!(p.identity.compose_dir.as_deref(), Some(dir.as_path()));
        assert_eq!(
            p.identity.compose_file,
            Some(dir.join("docker-compose.yml"))
        );
        // docker-compose v1 ignores a top-level `name:`: the directory's names come too.
        let (_t, p) = project_in("_docker", "name: Stack_1\nservices: {}\n", None);
        assert_eq!(
            p.unwrap().identity.names,
            ["stack_1", "stack1", "docker", "_docker"]
        );
        // COMPOSE_PROJECT_NAME is read by both: only its spellings.
        let (tmp, p) = project_in("dir", "services: {}\n", Some("COMPOSE_PROJECT_NAME=_env\n"));
        assert_eq!(p.unwrap().identity.names, ["env", "_env"]);
        // `[docker] project` is explicit.
        let file = tmp.path().join("dir/docker-compose.yml");
        let p = load(&file, None, Some("_Over")).unwrap();
        assert_eq!(p.identity.names, ["over", "_over"]);
        assert!(p.identity.explicit);
        assert_eq!(p.discovery(), p.identity);
        // Without a filled identity (a hand-made project), the name's spellings.
        let bare = ComposeProject {
            name: "a_b".into(),
            ..ComposeProject::default()
        };
        assert_eq!(bare.discovery().names, ["a_b", "ab"]);
    }

    #[test]
    fn missing_file_is_refused_with_a_hint() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("docker/docker-compose.yml");
        let err = load(&file, None, None).unwrap_err();
        assert!(matches!(err, Error::Refused(_)), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&file.display().to_string()), "{msg}");
        assert!(msg.contains("compose_file"), "{msg}");
    }

    #[test]
    fn parse_errors_are_config_errors() {
        let (_t, p) = project_in("docker", "services: [\n", None);
        assert!(matches!(p.unwrap_err(), Error::Config { .. }));
        let (_t, p) = project_in("docker", "services: [a, b]\n", None);
        assert!(matches!(p.unwrap_err(), Error::Config { .. }));
        // Unknown keys and odd service bodies are fine.
        let (_t, p) = project_in(
            "docker",
            "version: '3.8'\nx-foo: 1\nservices:\n  odd: 5\n  ok:\n    weird_key: [1]\n",
            None,
        );
        let p = p.unwrap();
        assert!(p.services.contains_key("ok"));
        assert!(!p.services.contains_key("odd"));
    }
}
