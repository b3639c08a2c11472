//! Database dumps (`[[backup.dumps]]`): what is configured, the command each kind runs inside
//! the service's container, where its credentials come from, and how its output is judged.
//! Plain code: `ops/dumps.rs` runs it through the DockerActor's exec messages.
//!
//! Credentials are read from the container's own environment (`docker inspect`) and passed
//! to the exec'd process in its environment (`MYSQL_PWD`, `PGPASSWORD`), never as arguments:
//! nothing secret shows in `ps`, in an error message or in the catalog. A password the
//! environment only names a file for (`*_PASSWORD_FILE`, a Docker secret) is read from that
//! file inside the container (`cat`, [`password_file`]) and passed the same way.

use serde::{Deserialize, Deserializer};

use crate::exclude::ExcludeRule;

/// Seconds a dump (or a restore of one) may take unless `timeout` says otherwise.
const DEFAULT_TIMEOUT_SECS: u64 = 3600;
/// Bytes of a failed command's stderr kept for the error message and the catalog.
pub(crate) const STDERR_TAIL: usize = 2048;

/// A compose service name: `[A-Za-z0-9][A-Za-z0-9._-]*`, at most 63 bytes (what compose
/// accepts), so it is also a safe file name (`SERVICE.sql`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct ServiceName(String);

impl ServiceName {
    pub fn parse(raw: &str) -> std::result::Result<Self, String> {
        let ok = !raw.is_empty()
            && raw.len() <= 63
            && raw.as_bytes()[0].is_ascii_alphanumeric()
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(ServiceName(raw.to_owned()))
        } else {
            Err(format!(
                "{raw:?} is not a compose service name (letters, digits, '.', '_', '-'; starting with a letter or digit)"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ServiceName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        ServiceName::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DumpKind {
    Mariadb,
    Mysql,
    Postgres,
    Command,
}

impl DumpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DumpKind::Mariadb => "mariadb",
            DumpKind::Mysql => "mysql",
            DumpKind::Postgres => "postgres",
            DumpKind::Command => "command",
        }
    }
}

/// One `[[backup.dumps]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DumpConfig {
    pub service: ServiceName,
    pub kind: DumpKind,
    /// `kind = "command"`: the command that writes the dump to stdout (run in the container).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// `kind = "command"`: the command `restore-dump` feeds the dump to on stdin.
    #[serde(default)]
    pub restore_command: Option<Vec<String>>,
    /// The database user; default: from the container's environment (see [`credentials`]).
    #[serde(default)]
    pub user: Option<String>,
    /// Seconds the dump may take (default 3600).
    #[serde(default = "default_timeout")]
    pub timeout: u64,
    /// Paths (relative to the compose dir) a hot backup leaves out: the live datadir, whose
    /// files are not consistent while the database runs; the dump stands in for them.
    #[serde(default)]
    pub hot_exclude: Vec<ExcludeRule>,
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_SECS
}

/// Checks what serde cannot: a `command` kind has its command, the others none; each
/// service is dumped once; timeouts are positive.
pub(crate) fn validate(dumps: &[DumpConfig]) -> std::result::Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for d in dumps {
        let name = &d.service;
        if !seen.insert(name) {
            return Err(format!(
                "backup.dumps: service {name} is listed twice; keep one entry"
            ));
        }
        match (d.kind, &d.command) {
            (DumpKind::Command, None) => {
                return Err(format!(
                    "backup.dumps: service {name}: kind \"command\" needs command = [\"program\", \"arg\", ...]"
                ));
            }
            (DumpKind::Command, Some(c)) if c.is_empty() || c[0].is_empty() => {
                return Err(format!("backup.dumps: service {name}: command is empty"));
            }
            (k, Some(_)) if k != DumpKind::Command => {
                return Err(format!(
                    "backup.dumps: service {name}: command is only for kind \"command\" (kind \"{}\" runs its own dump tool)",
                    k.as_str()
                ));
            }
            _ => {}
        }
        if d.restore_command.is_some() && d.kind != DumpKind::Command {
            return Err(format!(
                "backup.dumps: service {name}: restore_command is only for kind \"command\""
            ));
        }
        if d.timeout == 0 {
            return Err(format!(
                "backup.dumps: service {name}: timeout must be at least 1 second"
            ));
        }
    }
    Ok(())
}

/// What to run in the container: the program and its arguments, and the environment added
/// for it (credentials). `Debug` never shows the environment's values.
#[derive(Clone)]
pub struct ExecCommand {
    pub cmd: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl std::fmt::Debug for ExecCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("ExecCommand")
            .field("cmd", &self.cmd)
            .field("env", &names)
            .finish()
    }
}

/// `KEY`'s value in the container's environment (`KEY=value` strings, as the engine reports
/// them).
fn env_value<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter().find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
    })
}

/// Whether the container's environment sets `key`, or `key_FILE` (the official images'
/// `*_FILE` convention: the value is in that file inside the container, a Docker secret).
fn env_has(env: &[String], key: &str) -> bool {
    env_value(env, key).is_some() || env_value(env, &format!("{key}_FILE")).is_some()
}

/// The user, and the environment variable that holds the password (set itself, or through
/// `VAR_FILE`), from the container's environment.
fn credentials(
    kind: DumpKind,
    user: Option<&str>,
    env: &[String],
) -> (String, Option<&'static str>) {
    let first = |keys: &[&'static str]| keys.iter().copied().find(|k| env_has(env, k));
    match kind {
        DumpKind::Postgres => {
            let default_user = env_value(env, "POSTGRES_USER").unwrap_or("postgres");
            let user = user.unwrap_or(default_user).to_owned();
            let password = (user == default_user)
                .then(|| first(&["POSTGRES_PASSWORD"]))
                .flatten();
            (user, password)
        }
        _ => {
            let root_password = first(&["MARIADB_ROOT_PASSWORD", "MYSQL_ROOT_PASSWORD"]);
            let app_user = env_value(env, "MARIADB_USER").or_else(|| env_value(env, "MYSQL_USER"));
            let app_password = first(&["MARIADB_PASSWORD", "MYSQL_PASSWORD"]);
            match user {
                Some(u) if Some(u) == app_user => (u.to_owned(), app_password),
                Some(u) if u == "root" => (u.to_owned(), root_password),
                Some(u) => (u.to_owned(), None),
                None if root_password.is_some() => ("root".into(), root_password),
                None if app_user.is_some() => {
                    (app_user.unwrap_or_default().to_owned(), app_password)
                }
                None => ("root".into(), None),
            }
        }
    }
}

/// The user and the password (when the environment sets it itself).
fn user_and_password(d: &DumpConfig, env: &[String]) -> (String, Option<String>) {
    let (user, var) = credentials(d.kind, d.user.as_deref(), env);
    let password = var.and_then(|v| env_value(env, v)).map(str::to_owned);
    (user, password)
}

/// The password the dump needs that the container's environment only names a file for
/// (`MARIADB_ROOT_PASSWORD_FILE`, `MYSQL_ROOT_PASSWORD_FILE`, `POSTGRES_PASSWORD_FILE`, ...):
/// (the variable, the file's path inside the container). The caller reads the file in the
/// container and adds `VAR=password` to the environment it passes to [`dump_command`] and
/// [`restore_command`], so the password never appears on a command line.
pub fn password_file(d: &DumpConfig, env: &[String]) -> Option<(&'static str, String)> {
    if d.kind == DumpKind::Command {
        return None;
    }
    let (_, var) = credentials(d.kind, d.user.as_deref(), env);
    let var = var?;
    if env_value(env, var).is_some() {
        return None;
    }
    env_value(env, &format!("{var}_FILE")).map(|path| (var, path.to_owned()))
}

/// The command that prints a password file inside the container (its path is not secret).
pub fn read_password_file(path: &str) -> ExecCommand {
    ExecCommand {
        cmd: vec!["cat".into(), path.into()],
        env: Vec::new(),
    }
}

/// The password in a password file's content: without the trailing newlines, as the official
/// images read it (`$(< file)`); `None` when it is not UTF-8.
pub fn password_from_file(content: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(content).ok()?;
    Some(text.trim_end_matches('\n').to_owned())
}

/// `mariadb-dump`/`mariadb` where the image has them, else the `mysql*` names.
fn mysql_tool(modern: &str, classic: &str, args: &[&str]) -> Vec<String> {
    let script = format!(
        "if command -v {modern} >/dev/null 2>&1; then exec {modern} \"$@\"; else exec {classic} \"$@\"; fi"
    );
    let mut cmd = vec!["sh".to_owned(), "-c".to_owned(), script, modern.to_owned()];
    cmd.extend(args.iter().map(|s| (*s).to_owned()));
    cmd
}

/// The command that writes the dump to stdout.
pub fn dump_command(d: &DumpConfig, container_env: &[String]) -> ExecCommand {
    let (user, password) = user_and_password(d, container_env);
    match d.kind {
        DumpKind::Mariadb | DumpKind::Mysql => ExecCommand {
            // One consistent InnoDB snapshot of every database, with routines, events and
            // triggers; `--user` is not secret.
            cmd: mysql_tool(
                "mariadb-dump",
                "mysqldump",
                &[
                    "--all-databases",
                    "--single-transaction",
                    "--routines",
                    "--events",
                    "--triggers",
                    "--hex-blob",
                    &format!("--user={user}"),
                ],
            ),
            env: password
                .map(|p| ("MYSQL_PWD".into(), p))
                .into_iter()
                .collect(),
        },
        DumpKind::Postgres => ExecCommand {
            cmd: vec![
                "pg_dumpall".into(),
                "--clean".into(),
                "--if-exists".into(),
                format!("--username={user}"),
            ],
            env: password
                .map(|p| ("PGPASSWORD".into(), p))
                .into_iter()
                .collect(),
        },
        DumpKind::Command => ExecCommand {
            cmd: d.command.clone().unwrap_or_default(),
            env: Vec::new(),
        },
    }
}

/// The command `restore-dump` feeds the dump to on stdin; `None` for a `command` dump
/// without `restore_command`.
pub fn restore_command(d: &DumpConfig, container_env: &[String]) -> Option<ExecCommand> {
    let (user, password) = user_and_password(d, container_env);
    Some(match d.kind {
        DumpKind::Mariadb | DumpKind::Mysql => ExecCommand {
            cmd: mysql_tool("mariadb", "mysql", &[&format!("--user={user}")]),
            env: password
                .map(|p| ("MYSQL_PWD".into(), p))
                .into_iter()
                .collect(),
        },
        DumpKind::Postgres => ExecCommand {
            cmd: vec![
                "psql".into(),
                "--quiet".into(),
                "--set=ON_ERROR_STOP=1".into(),
                format!("--username={user}"),
                "--dbname=postgres".into(),
            ],
            env: password
                .map(|p| ("PGPASSWORD".into(), p))
                .into_iter()
                .collect(),
        },
        DumpKind::Command => ExecCommand {
            cmd: d.restore_command.clone()?,
            env: Vec::new(),
        },
    })
}

/// The last line a complete dump of this kind ends with, if the tool writes one: a dump
/// cut short (the server went away, the tool was killed) lacks it even with exit status 0.
pub fn completion_trailer(kind: DumpKind) -> Option<&'static [u8]> {
    match kind {
        DumpKind::Mariadb | DumpKind::Mysql => Some(b"-- Dump completed"),
        DumpKind::Postgres => Some(b"-- PostgreSQL database cluster dump complete"),
        DumpKind::Command => None,
    }
}

/// Whether `tail` (the dump's last bytes) holds the trailer of `kind` on one of its last
/// lines.
pub fn has_trailer(kind: DumpKind, tail: &[u8]) -> bool {
    let Some(trailer) = completion_trailer(kind) else {
        return true;
    };
    tail.split(|&b| b == b'\n')
        .rev()
        .take(4)
        .any(|line| line.starts_with(trailer))
}

/// The last [`STDERR_TAIL`] bytes of `stderr` as text, trimmed.
pub fn tail_text(stderr: &[u8]) -> String {
    let start = stderr.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&stderr[start..]).trim().to_owned()
}

/// The archive path of a service's dump.
pub fn archive_path(service: &ServiceName) -> String {
    format!("{}/{}.sql", DUMPS_DIR, service.as_str())
}

/// Directory of the dumps inside the archive.
pub const DUMPS_DIR: &str = ".nuwax-backup/dumps";

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[&str]) -> Vec<String> {
        vars.iter().map(|s| (*s).to_owned()).collect()
    }

    fn dump(kind: DumpKind, user: Option<&str>) -> DumpConfig {
        DumpConfig {
            service: ServiceName::parse("db").unwrap(),
            kind,
            command: None,
            restore_command: None,
            user: user.map(str::to_owned),
            timeout: 10,
            hot_exclude: Vec::new(),
        }
    }

    #[test]
    fn service_names_are_file_names() {
        for ok in ["db", "my-db_1", "a.b", "9x"] {
            assert!(ServiceName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../x", "a/b", ".hidden", "-x", "a b", &"x".repeat(64)] {
            assert!(ServiceName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mariadb_credentials_come_from_the_environment_and_never_the_command_line() {
        let e = env(&[
            "MARIADB_ROOT_PASSWORD=s3cret",
            "MARIADB_USER=app",
            "MARIADB_PASSWORD=apppw",
        ]);
        let c = dump_command(&dump(DumpKind::Mariadb, None), &e);
        assert!(c.cmd.iter().any(|a| a == "--user=root"));
        assert!(!c.cmd.iter().any(|a| a.contains("s3cret")));
        assert_eq!(c.env, vec![("MYSQL_PWD".to_owned(), "s3cret".to_owned())]);
        assert!(!format!("{c:?}").contains("s3cret"));
        let c = dump_command(&dump(DumpKind::Mysql, Some("app")), &e);
        assert!(c.cmd.iter().any(|a| a == "--user=app"));
        assert_eq!(c.env, vec![("MYSQL_PWD".to_owned(), "apppw".to_owned())]);
        let c = dump_command(
            &dump(DumpKind::Mysql, None),
            &env(&["MYSQL_USER=u", "MYSQL_PASSWORD=p"]),
        );
        assert!(c.cmd.iter().any(|a| a == "--user=u"));
        assert_eq!(c.env, vec![("MYSQL_PWD".to_owned(), "p".to_owned())]);
        let c = restore_command(
            &dump(DumpKind::Postgres, None),
            &env(&["POSTGRES_PASSWORD=pg"]),
        )
        .unwrap();
        assert!(c.cmd.iter().any(|a| a == "--username=postgres"));
        assert_eq!(c.env, vec![("PGPASSWORD".to_owned(), "pg".to_owned())]);
    }

    #[test]
    fn a_password_only_in_a_file_is_read_from_that_file_and_passed_in_the_environment() {
        let e = env(&[
            "MARIADB_ROOT_PASSWORD_FILE=/run/secrets/root",
            "MARIADB_USER=app",
            "MARIADB_PASSWORD=apppw",
        ]);
        // Root's password file outranks the app user's plain password, as the variable would.
        let d = dump(DumpKind::Mariadb, None);
        assert_eq!(
            password_file(&d, &e),
            Some(("MARIADB_ROOT_PASSWORD", "/run/secrets/root".to_owned()))
        );
        let c = read_password_file("/run/secrets/root");
        assert_eq!(c.cmd, vec!["cat", "/run/secrets/root"]);
        assert!(c.env.is_empty());
        let mut with = e.clone();
        with.push("MARIADB_ROOT_PASSWORD=s3cret".into());
        assert_eq!(password_file(&d, &with), None, "read once, then plain");
        let c = dump_command(&d, &with);
        assert!(c.cmd.iter().any(|a| a == "--user=root"));
        assert!(!c.cmd.iter().any(|a| a.contains("s3cret")));
        assert_eq!(c.env, vec![("MYSQL_PWD".to_owned(), "s3cret".to_owned())]);
        // The app user's password from its file; the classic MySQL names too.
        let e = env(&["MYSQL_USER=app", "MYSQL_PASSWORD_FILE=/s/app"]);
        assert_eq!(
            password_file(&d, &e),
            Some(("MYSQL_PASSWORD", "/s/app".to_owned()))
        );
        assert_eq!(
            password_file(
                &dump(DumpKind::Mysql, None),
                &env(&["MYSQL_ROOT_PASSWORD_FILE=/s/root"])
            ),
            Some(("MYSQL_ROOT_PASSWORD", "/s/root".to_owned()))
        );
        let pg = dump(DumpKind::Postgres, None);
        assert_eq!(
            password_file(&pg, &env(&["POSTGRES_PASSWORD_FILE=/s/pg"])),
            Some(("POSTGRES_PASSWORD", "/s/pg".to_owned()))
        );
        // Another postgres user than the image's gets no password of the image's.
        assert_eq!(
            password_file(
                &dump(DumpKind::Postgres, Some("other")),
                &env(&["POSTGRES_PASSWORD_FILE=/s/pg"])
            ),
            None
        );
        assert_eq!(password_file(&dump(DumpKind::Command, None), &e), None);
        assert_eq!(password_from_file(b"pw\n\n").as_deref(), Some("pw"));
        assert_eq!(password_from_file(b" p w \n").as_deref(), Some(" p w "));
        assert_eq!(password_from_file(b"\xff"), None);
    }

    #[test]
    fn validation_names_the_service_and_the_fix() {
        let mut c = dump(DumpKind::Command, None);
        assert!(
            validate(std::slice::from_ref(&c))
                .unwrap_err()
                .contains("needs command")
        );
        c.command = Some(vec!["sh".into()]);
        validate(std::slice::from_ref(&c)).unwrap();
        assert!(validate(&[c.clone(), c]).unwrap_err().contains("twice"));
        let mut m = dump(DumpKind::Mariadb, None);
        m.command = Some(vec!["x".into()]);
        assert!(validate(&[m]).unwrap_err().contains("only for kind"));
    }

    #[test]
    fn trailers() {
        assert!(has_trailer(
            DumpKind::Mariadb,
            b"...\n-- Dump completed on 2026-11-30 01:02:03\n"
        ));
        assert!(!has_trailer(
            DumpKind::Mariadb,
            b"INSERT INTO t VALUES (1);\n"
        ));
        assert!(has_trailer(DumpKind::Command, b""));
        assert!(has_trailer(
            DumpKind::Postgres,
            b"--\n-- PostgreSQL database cluster dump complete\n--\n\n"
        ));
    }
}
