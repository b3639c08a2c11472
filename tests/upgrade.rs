//! Upgrades on the machine's real Docker engine, retention, catalog rebuild and import (issue 6).
//!
//! The upgrade tests write their own one-service stack (`db`: `sleep` with a healthcheck, bind
//! mounting `./data`) over the fixture's compose file, start it with `docker-service start`
//! (the compose-up fallback; this host has `docker-compose` v1 only) and upgrade it to release
//! packages made the way an operator makes them: `tar czf rel.tar.gz -C reldir .`. A bad
//! release damages the data scope before it fails, so "rolled back, code and data" is checked
//! against a byte-for-byte snapshot of the whole compose dir taken before the upgrade.
//!
//! `prune`, `reindex` and `import` need no containers: their backups are taken with nothing
//! running. Every TestEnv has its own compose project, removed by its Drop.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::archutil::{flip_middle_byte, hostile_file, read_entry, write_raw};
use crate::dockerutil::{ensure_test_image, inspect, project_containers, service_container};
use crate::util::{
    BackupRow, DATA_SCOPE, EXCLUDED, Kind, ListDoc, Output, TestEnv, Tree, VERSION, assert_keys,
    assert_same_tree, except, exit, file_name, only, parse_archive_name, pin_mtimes, sha256_file,
    snapshot, write,
};

/// Exit code of an upgrade that failed and was rolled back automatically.
const ROLLED_BACK: i32 = 5;

/// `prune` reasons (crates/actors/src/retention.rs).
const REASON_NEWEST: &str = "newest completed backup";
const REASON_PRE_UPGRADE: &str = "latest pre-upgrade backup (no newer successful upgrade)";
const REASON_UNMATCHED: &str = "not kept by any rule";

// ---------------------------------------------------------------------------------------------
// The stack and its releases

/// One `db` service. `sleep` as PID 1 ignores SIGTERM, hence SIGKILL as the stop signal.
/// `release` goes into a label (which release a container was made from) and the comment.
fn db_yaml(release: &str, command: &str, health: &str, extra_services: &str) -> String {
    db_yaml_with(release, command, health, "1s", extra_services)
}

/// [`db_yaml`] with the healthcheck's `start_period` (failed checks during it do not count:
/// the container stays `starting`).
fn db_yaml_with(
    release: &str,
    command: &str,
    health: &str,
    start_period: &str,
    extra_services: &str,
) -> String {
    format!(
        "# upgrade test stack\n\
         # release {release}\n\
         services:\n\
         \x20 db:\n\
         \x20   image: nuwax-test-busybox:latest\n\
         \x20   command: {command}\n\
         \x20   restart: unless-stopped\n\
         \x20   network_mode: none\n\
         \x20   stop_signal: SIGKILL\n\
         \x20   volumes:\n\
         \x20     - ./data:/data\n\
         \x20   labels:\n\
         \x20     nuwax-test: \"1\"\n\
         \x20     nuwax-release: \"{release}\"\n\
         \x20   healthcheck:\n\
         \x20     test: {health}\n\
         \x20     interval: 1s\n\
         \x20     start_period: {start_period}\n\
         {extra_services}"
    )
}

const SLEEP: &str = r#"["sleep", "3600"]"#;
const HEALTHY: &str = r#"["CMD", "true"]"#;
/// Fails every time (the test image has no `false` applet; `test` exits 1).
const NEVER_HEALTHY: &str = r#"["CMD", "test", "-e", "/nonexistent"]"#;

/// What a migration of a bad release does to the data before it fails: overwrite a file, add
/// one. The rollback must bring the old data back byte for byte.
const DAMAGE: &str = "echo half-migrated > /data/mysql/ibdata1; echo new > /data/new-table.ibd";

/// A second service a good release adds.
const WEB: &str = "\x20 web:\n\
                   \x20   image: nuwax-test-busybox:latest\n\
                   \x20   command: [\"sleep\", \"3600\"]\n\
                   \x20   restart: unless-stopped\n\
                   \x20   network_mode: none\n\
                   \x20   stop_signal: SIGKILL\n\
                   \x20   labels:\n\
                   \x20     nuwax-test: \"1\"\n";

/// `config.toml` with the timeouts of these tests and a comment the version edit must keep.
fn write_config(env: &TestEnv) {
    let text = format!(
        "# operator's note: this comment must survive upgrades\n\
         [versions]\n\
         docker_service = \"{VERSION}\"\n\
         \n\
         [docker]\n\
         project = \"{}\"\n\
         start_timeout = 30\n\
         \n\
         [upgrade]\n\
         health_timeout = 20\n",
        env.project
    );
    fs::write(env.work.join("config.toml"), text).unwrap();
}

fn config_text(env: &TestEnv) -> String {
    fs::read_to_string(env.work.join("config.toml")).unwrap()
}

/// A TestEnv (full fixture) whose compose file is the one-service stack of release 1.2.3,
/// created and running, db healthy.
fn running_stack() -> TestEnv {
    ensure_test_image();
    let env = TestEnv::new();
    write_config(&env);
    let path = env.path("docker-compose.yml");
    fs::write(&path, db_yaml(VERSION, SLEEP, HEALTHY, "")).unwrap();
    let t = filetime::FileTime::from_unix_time(1_650_000_000, 0);
    filetime::set_file_mtime(&path, t).unwrap();
    let out = env.run(&["docker-service", "start", "--json"]);
    out.assert_ok();
    assert_eq!(out.json()["success"], true, "{out}");
    assert_db_up(&env, VERSION, &out);
    env
}

fn db_id(env: &TestEnv) -> String {
    service_container(&env.project, "db")
}

/// db runs, is healthy, and was made from `release`'s compose file.
#[track_caller]
fn assert_db_up(env: &TestEnv, release: &str, out: &Output) {
    let id = db_id(env);
    assert_eq!(
        inspect(&id, "{{.State.Running}}"),
        "true",
        "db is not running\n{out}"
    );
    assert_eq!(
        inspect(
            &id,
            "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}"
        ),
        "healthy",
        "db is not healthy\n{out}"
    );
    assert_eq!(
        inspect(&id, "{{index .Config.Labels \"nuwax-release\"}}"),
        release,
        "db runs another release's compose file\n{out}"
    );
}

/// Files of a release's compose project dir (everything but the data scope).
struct Release<'a> {
    version: &'a str,
    compose: String,
    /// Ship a `.env` (replaces the live one) or not (the live one is kept).
    env_file: Option<&'a str>,
}

impl Release<'_> {
    /// Writes the release dir under the test root and packs it as an operator would:
    /// `tar czf <name> -C <dir> .`. Returns the package and a snapshot of the release dir.
    fn pack(&self, env: &TestEnv, package_name: &str) -> (PathBuf, Tree) {
        let dir = env.root.join(format!("release-{package_name}"));
        let v = self.version;
        write(
            &dir.join("docker-compose.yml"),
            self.compose.as_bytes(),
            0o644,
        );
        write(&dir.join("app/VERSION"), format!("{v}\n").as_bytes(), 0o644);
        write(
            &dir.join("app/bin/start.sh"),
            format!("#!/bin/sh\n# release {v}\nexec /app/bin/server\n").as_bytes(),
            0o755,
        );
        write(
            &dir.join("app/static/index.html"),
            format!("<html><body>nuwax {v}</body></html>\n").as_bytes(),
            0o644,
        );
        std::os::unix::fs::symlink("bin/start.sh", dir.join("app/entry")).unwrap();
        write(
            &dir.join("config/app.yml"),
            format!("server:\n  port: 8080\nrelease: {v}\n").as_bytes(),
            0o644,
        );
        if let Some(e) = self.env_file {
            write(&dir.join(".env"), e.as_bytes(), 0o600);
        }
        pin_mtimes(&dir, 1_700_000_000);
        let package = env.root.join(package_name);
        tar_czf(&package, &dir);
        (package, snapshot(&dir))
    }
}

/// `tar czf <package> -C <dir> .`
fn tar_czf(package: &Path, dir: &Path) {
    let out = Command::new("tar")
        .arg("czf")
        .arg(package)
        .arg("-C")
        .arg(dir)
        .arg(".")
        .output()
        .expect("run tar");
    assert!(
        out.status.success(),
        "tar failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn good_release(version: &str) -> Release<'_> {
    Release {
        version,
        compose: db_yaml(version, SLEEP, HEALTHY, WEB),
        env_file: None,
    }
}

/// Runs `upgrade --package <package> <args...>`.
fn upgrade(env: &TestEnv, package: &Path, args: &[&str]) -> Output {
    let mut full: Vec<&OsStr> = vec![OsStr::new("upgrade"), OsStr::new("--package")];
    full.push(package.as_os_str());
    full.extend(args.iter().map(OsStr::new));
    env.run(&full)
}

/// The compose dir without what an upgrade keeps (the data scope, the excluded logs, `.env`
/// when the release ships none).
fn release_scope(tree: &Tree) -> Tree {
    let skip: Vec<&str> = DATA_SCOPE
        .iter()
        .chain(EXCLUDED)
        .copied()
        .chain([".env"])
        .collect();
    except(tree, &skip)
}

/// What an upgrade keeps.
fn kept_scope(tree: &Tree) -> Tree {
    let keep: Vec<&str> = DATA_SCOPE
        .iter()
        .chain(EXCLUDED)
        .copied()
        .chain([".env"])
        .collect();
    only(tree, &keep)
}

/// Directories with their mtime zeroed. The package is unpacked entry by entry, so a
/// directory's mtime is that of its last file written, not the package's; files, symlinks
/// and every other attribute must match exactly.
fn without_dir_mtimes(tree: &Tree) -> Tree {
    tree.iter()
        .map(|(p, e)| {
            let mut e = e.clone();
            if e.kind == Kind::Dir {
                e.mtime = 0;
                e.mtime_nsec = 0;
            }
            (p.clone(), e)
        })
        .collect()
}

/// One row of the `upgrades` table of the catalog (read directly: no command lists it).
#[derive(Debug)]
struct UpgradeRecord {
    from_version: String,
    to_version: String,
    backup_id: Option<i64>,
    outcome: String,
    started_at: String,
    finished_at: Option<String>,
    error: Option<String>,
}

fn upgrade_history(env: &TestEnv) -> Vec<UpgradeRecord> {
    if !env.db_file().exists() {
        return Vec::new();
    }
    let db = rusqlite::Connection::open_with_flags(
        env.db_file(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = db
        .prepare(
            "SELECT from_version, to_version, backup_id, outcome, started_at, finished_at, error \
             FROM upgrades ORDER BY id",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok(UpgradeRecord {
            from_version: r.get(0)?,
            to_version: r.get(1)?,
            backup_id: r.get(2)?,
            outcome: r.get(3)?,
            started_at: r.get(4)?,
            finished_at: r.get(5)?,
            error: r.get(6)?,
        })
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// The `backup` object of an upgrade document as a catalog row (strict).
#[track_caller]
fn backup_of(doc: &serde_json::Value, out: &Output) -> BackupRow {
    serde_json::from_value(doc["backup"].clone())
        .unwrap_or_else(|e| panic!("upgrade --json: backup is not a catalog row: {e}\n{out}"))
}

// ---------------------------------------------------------------------------------------------
// 1. A good release

#[test]
fn upgrade_to_a_good_release_goes_live_keeps_data_and_records_a_pre_upgrade_backup() {
    let env = running_stack();
    let before = env.snapshot_compose();
    let config_before = config_text(&env);
    let old_db = db_id(&env);
    let (package, release_tree) = good_release("2.0.0").pack(&env, "rel-good.tar.gz");

    let out = upgrade(
        &env,
        &package,
        &["--version", "2.0.0", "--json", "--progress", "json"],
    );
    out.assert_ok();
    // The replaced release is removed after the start, while health is waited for.
    let p = out.phases();
    let at = |name: &str| p.iter().position(|x| x == name);
    let removing = at("removing").unwrap_or_else(|| panic!("no phase removing: {p:?}\n{out}"));
    assert!(
        at("starting").is_some_and(|s| s < removing) && at("waiting").is_none_or(|w| w > removing),
        "the replaced release is removed after the start, while health is waited for: {p:?}\n{out}"
    );
    let left: Vec<_> = std::fs::read_dir(env.compose_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".nuwax-"))
        .collect();
    assert!(
        left.is_empty(),
        "the replaced release is left: {left:?}\n{out}"
    );
    let doc = out.json();
    assert_keys(
        &doc,
        &crate::util::doc_keys(&[
            "upgrade_id",
            "from_version",
            "to_version",
            "backup",
            "services",
        ]),
    );
    assert_eq!(doc["success"], true, "{out}");
    assert_eq!(doc["from_version"], VERSION, "{out}");
    assert_eq!(doc["to_version"], "2.0.0", "{out}");
    assert_eq!(doc["services"], serde_json::json!(["db", "web"]), "{out}");
    let backup = backup_of(&doc, &out);
    assert_eq!(backup.backup_type, "PreUpgrade", "{out}");
    assert_eq!(backup.status, "Completed", "{out}");
    assert_eq!(
        backup.service_version, VERSION,
        "the backup is of the old release"
    );
    assert!(backup.file_exists, "{out}");
    parse_archive_name(&file_name(&backup.file_path), "pre-upgrade", VERSION);

    // The PreUpgrade backup is listed, holds the old release and the data, and verifies.
    let rows = env.list();
    assert_eq!(rows.len(), 1, "exactly the pre-upgrade backup: {rows:#?}");
    assert_eq!(rows[0].id, backup.id);
    assert_eq!(rows[0].backup_type, "PreUpgrade");
    let archive = Path::new(&backup.file_path);
    assert_eq!(
        read_entry(archive, "docker-compose.yml").as_deref(),
        Some(db_yaml(VERSION, SLEEP, HEALTHY, "").as_bytes()),
        "the pre-upgrade backup holds the old compose file"
    );
    assert!(
        read_entry(archive, "data/mysql/ibdata1").is_some(),
        "the pre-upgrade backup includes the data"
    );
    env.run(&["verify", &backup.id.to_string()]).assert_ok();

    // The release is live: everything outside the data scope is exactly the package (the
    // live items the package lacks are gone), and nothing of the upgrade's work dir is left.
    let after = env.snapshot_compose();
    assert_eq!(
        sha256_file(&env.path("docker-compose.yml")),
        sha256_file(&env.root.join("release-rel-good.tar.gz/docker-compose.yml")),
        "the package's compose file is live"
    );
    assert_same_tree(
        "compose dir outside the data scope == the release package",
        &without_dir_mtimes(&release_tree),
        &without_dir_mtimes(&release_scope(&after)),
    );
    // Data scope, excluded logs and the operator's .env (the package ships none): untouched.
    assert_same_tree(
        "data, logs and .env kept",
        &kept_scope(&before),
        &kept_scope(&after),
    );
    assert_eq!(
        fs::read(env.path(".env")).unwrap(),
        b"APP_PORT=8080\nMYSQL_ROOT_PASSWORD=s3cret\nTZ=UTC\n",
        ".env kept"
    );

    // config.toml: the new version, written by an edit that keeps everything else.
    assert_eq!(
        config_text(&env),
        config_before.replace(
            &format!("docker_service = \"{VERSION}\""),
            "docker_service = \"2.0.0\""
        ),
        "config.toml after the upgrade"
    );

    // The new release runs: db recreated from the new compose file and healthy, web added.
    assert_ne!(
        db_id(&env),
        old_db,
        "db was not recreated for the new release"
    );
    assert_db_up(&env, "2.0.0", &out);
    let web = service_container(&env.project, "web");
    assert_eq!(inspect(&web, "{{.State.Running}}"), "true", "{out}");

    // The history.
    let history = upgrade_history(&env);
    assert_eq!(history.len(), 1, "{history:#?}");
    let h = &history[0];
    assert_eq!(
        (h.from_version.as_str(), h.to_version.as_str()),
        (VERSION, "2.0.0")
    );
    assert_eq!(h.outcome, "succeeded", "{h:?}");
    assert_eq!(h.backup_id, Some(backup.id), "{h:?}");
    assert!(!h.started_at.is_empty() && h.finished_at.is_some(), "{h:?}");
    assert_eq!(h.error, None, "{h:?}");

    // A second upgrade starts from the version the first one recorded; without --version the
    // version is the package's file name.
    let (package2, release2) = good_release("2.1.0").pack(&env, "2.1.0.tar.gz");
    let out = upgrade(&env, &package2, &["--json"]);
    out.assert_ok();
    let doc = out.json();
    assert_eq!(doc["from_version"], "2.0.0", "{out}");
    assert_eq!(doc["to_version"], "2.1.0", "{out}");
    let backup2 = backup_of(&doc, &out);
    assert_eq!(backup2.backup_type, "PreUpgrade");
    assert_eq!(backup2.service_version, "2.0.0");
    assert!(config_text(&env).contains("docker_service = \"2.1.0\""));
    assert_same_tree(
        "second release live",
        &without_dir_mtimes(&release2),
        &without_dir_mtimes(&release_scope(&env.snapshot_compose())),
    );
    assert_same_tree(
        "data kept through two upgrades",
        &kept_scope(&before),
        &kept_scope(&env.snapshot_compose()),
    );
    assert_db_up(&env, "2.1.0", &out);
    let history = upgrade_history(&env);
    assert_eq!(history.len(), 2, "{history:#?}");
    assert_eq!(history[1].from_version, "2.0.0");
    assert_eq!(history[1].backup_id, Some(backup2.id));
    assert_eq!(history[1].outcome, "succeeded");
}

// ---------------------------------------------------------------------------------------------
// 2, 3. Bad releases are rolled back automatically

/// Everything a rolled-back upgrade must leave as it was.
#[track_caller]
fn assert_rolled_back(env: &TestEnv, before: &Tree, config_before: &str, out: &Output) {
    out.assert_code(ROLLED_BACK)
        .assert_stderr_has("rolled back");
    assert_same_tree(
        "compose dir (compose file, .env, config, app, data, logs) after the rollback",
        before,
        &env.snapshot_compose(),
    );
    assert_eq!(
        config_text(env),
        config_before,
        "config.toml after the rollback\n{out}"
    );
    assert_db_up(env, VERSION, out);
    let containers = project_containers(&env.project, None);
    assert_eq!(
        containers.len(),
        1,
        "only the old release's db is left: {containers:?}\n{out}"
    );
    // The pre-upgrade backup is the only backup, and the history says rolled back.
    let rows = env.list();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0].backup_type, "PreUpgrade");
    let history = upgrade_history(env);
    assert_eq!(history.len(), 1, "{history:#?}");
    let h = &history[0];
    assert_eq!(h.outcome, "rolled-back", "{h:?}");
    assert_eq!(h.backup_id, Some(rows[0].id), "{h:?}");
    assert_eq!(h.from_version, VERSION);
    assert!(h.finished_at.is_some() && h.error.is_some(), "{h:?}");
}

/// Packs `release` as `package_name`, runs `upgrade ARGS` with it on a running stack, and
/// asserts that the upgrade failed and was rolled back ([`assert_rolled_back`]). Returns the
/// output and how long the upgrade took.
#[track_caller]
fn failed_upgrade(release: Release<'_>, package_name: &str, args: &[&str]) -> (Output, Duration) {
    let env = running_stack();
    let before = env.snapshot_compose();
    let config_before = config_text(&env);
    let (package, _) = release.pack(&env, package_name);
    let start = Instant::now();
    let out = upgrade(&env, &package, args);
    let took = start.elapsed();
    assert_rolled_back(&env, &before, &config_before, &out);
    (out, took)
}

#[test]
fn upgrade_whose_service_exits_is_rolled_back_code_and_data() {
    // The release ships its own .env (it replaces the live one until the rollback).
    let command = format!(r#"["sh", "-c", "{DAMAGE}; exit 3"]"#);
    let release = Release {
        version: "3.0.0",
        compose: db_yaml("3.0.0", &command, HEALTHY, ""),
        env_file: Some("APP_PORT=1\n"),
    };
    // `restart: unless-stopped` makes the exit a crash loop: it is recognised as a failure
    // after a few restarts, without waiting for the health timeout.
    let (out, took) = failed_upgrade(
        release,
        "rel-bad.tar.gz",
        &["--version", "3.0.0", "--health-timeout", "120s"],
    );
    out.assert_stderr_has("crash-looping");
    assert!(
        took.as_secs() < 100,
        "took {took:?}: waited for the health timeout instead of failing fast\n{out}"
    );
    assert!(out.stdout.is_empty(), "no document without --json\n{out}");
}

/// The healthcheck fails: docker marks db unhealthy after its retries, and the tool rolls back
/// without waiting for the rest of the timeout.
#[test]
fn upgrade_whose_service_turns_unhealthy_is_rolled_back() {
    let command = format!(r#"["sh", "-c", "{DAMAGE}; exec sleep 3600"]"#);
    let release = Release {
        version: "3.0.0",
        compose: db_yaml("3.0.0", &command, NEVER_HEALTHY, ""),
        env_file: None,
    };
    let (out, _) = failed_upgrade(
        release,
        "rel-unhealthy.tar.gz",
        &["--version", "3.0.0", "--health-timeout", "20s", "--json"],
    );
    out.assert_stderr_has("unhealthy");
    let doc = out.json();
    assert_keys(&doc, &crate::util::doc_keys(&[]));
    assert_eq!(doc["success"], false, "{out}");
    assert_eq!(doc["error_kind"], "upgrade_rolled_back", "{out}");
    assert_eq!(doc["exit_code"], 5, "{out}");
    assert!(
        crate::util::error_message(&doc).contains("rolled back"),
        "the JSON error says it was rolled back\n{out}"
    );
}

/// The healthcheck never passes and, inside its long start period, never fails either: db
/// stays `starting`. The tool waits exactly the health timeout, then rolls back.
#[test]
fn upgrade_that_never_becomes_healthy_is_rolled_back_after_the_timeout() {
    let command = format!(r#"["sh", "-c", "{DAMAGE}; exec sleep 3600"]"#);
    let release = Release {
        version: "3.0.0",
        compose: db_yaml_with("3.0.0", &command, NEVER_HEALTHY, "300s", ""),
        env_file: None,
    };
    let (out, took) = failed_upgrade(
        release,
        "rel-starting.tar.gz",
        &["--version", "3.0.0", "--health-timeout", "8s"],
    );
    assert!(
        took.as_secs() >= 8,
        "gave up after {took:?}, before the 8 s health timeout\n{out}"
    );
    assert!(
        took.as_secs() < 8 + 60,
        "took {took:?}: the --health-timeout of 8 s was not honoured\n{out}"
    );
}

/// A failed release that adds a service: the rollback must leave only the old release's
/// services, and the new service's (stopped) container must not make the old release's
/// start count as failed.
#[test]
fn failed_upgrade_that_adds_a_service_is_rolled_back_without_it() {
    let command = format!(r#"["sh", "-c", "{DAMAGE}; exec sleep 3600"]"#);
    let release = Release {
        version: "3.0.0",
        compose: db_yaml("3.0.0", &command, NEVER_HEALTHY, WEB),
        env_file: None,
    };
    failed_upgrade(
        release,
        "rel-unhealthy-with-web.tar.gz",
        &["--version", "3.0.0", "--health-timeout", "20s"],
    );
}

/// Encryption on (`scope = "all"`: every local archive encrypted, recipients only, no identity
/// anywhere on the host): the upgrade's pre-upgrade backup stays plain, so the automatic
/// rollback restores it without a key (README "Encryption", Upgrades).
#[test]
fn failed_upgrade_with_encryption_on_rolls_back_from_its_plain_pre_upgrade_backup() {
    if !crate::encryption::age_tools() {
        return;
    }
    let env = running_stack();
    let (_identity, public) =
        crate::encryption::keygen(&crate::encryption::keys_dir(&env), "key.txt");
    crate::encryption::configure(
        &env,
        &format!("recipients = [\"{public}\"]\nscope = \"all\"\n"),
    );
    let before = env.snapshot_compose();
    let config_before = config_text(&env);
    let command = format!(r#"["sh", "-c", "{DAMAGE}; exec sleep 3600"]"#);
    let release = Release {
        version: "3.0.0",
        compose: db_yaml("3.0.0", &command, NEVER_HEALTHY, ""),
        env_file: None,
    };
    let (package, _) = release.pack(&env, "rel-encrypted-host.tar.gz");
    let out = upgrade(
        &env,
        &package,
        &["--version", "3.0.0", "--health-timeout", "20s"],
    );
    assert_rolled_back(&env, &before, &config_before, &out);
    let rows = env.list();
    assert!(!rows[0].encrypted, "{rows:#?}");
    assert!(rows[0].file_path.ends_with(".tar.gz"), "{rows:#?}");
}

// ---------------------------------------------------------------------------------------------
// 4. Packages refused before anything happens

#[test]
fn bad_packages_are_refused_before_anything_is_stopped_or_backed_up() {
    let env = running_stack();
    let before = env.snapshot_compose();
    let config_before = config_text(&env);
    let db = db_id(&env);
    let db_started = inspect(&db, "{{.State.StartedAt}}");

    // Ships data: a usage error.
    let dir = env.root.join("rel-with-data");
    write(
        &dir.join("docker-compose.yml"),
        db_yaml("4.0.0", SLEEP, HEALTHY, "").as_bytes(),
        0o644,
    );
    write(&dir.join("app/VERSION"), b"4.0.0\n", 0o644);
    write(&dir.join("data/x"), b"data must never ship\n", 0o644);
    let with_data = env.root.join("rel-with-data.tar.gz");
    tar_czf(&with_data, &dir);
    upgrade(&env, &with_data, &["--version", "4.0.0"])
        .assert_code(exit::USAGE)
        .assert_stderr_has("data scope");

    // No compose file: a usage error.
    let dir = env.root.join("rel-no-compose");
    write(&dir.join("app/VERSION"), b"4.0.0\n", 0o644);
    let no_compose = env.root.join("rel-no-compose.tar.gz");
    tar_czf(&no_compose, &dir);
    upgrade(&env, &no_compose, &["--version", "4.0.0"])
        .assert_code(exit::USAGE)
        .assert_stderr_has("docker-compose.yml");

    // A `..` entry: an integrity failure, and nothing written outside.
    let evil = env.root.join("rel-evil.tar.gz");
    write_raw(
        &evil,
        &[
            hostile_file(
                "docker-compose.yml",
                db_yaml("4.0.0", SLEEP, HEALTHY, "").as_bytes(),
            ),
            hostile_file("../evil", b"escaped\n"),
        ],
    );
    let out = upgrade(&env, &evil, &["--version", "4.0.0", "--json"]);
    out.assert_code(exit::INTEGRITY);
    assert_eq!(out.json()["success"], false, "{out}");
    for p in [env.work.join("evil"), env.root.join("evil")] {
        assert!(!p.exists(), "{} was written", p.display());
    }

    // A package that does not exist.
    upgrade(&env, &env.root.join("nope.tar.gz"), &[]).assert_code(exit::USAGE);

    assert_same_tree("compose dir", &before, &env.snapshot_compose());
    assert_eq!(config_text(&env), config_before);
    assert!(env.backup_files().is_empty(), "{:?}", env.backup_files());
    assert!(env.list().is_empty(), "no backup taken");
    let history = upgrade_history(&env);
    assert!(history.is_empty(), "{history:#?}");
    // Nothing was stopped: the same container, never restarted.
    assert_eq!(db_id(&env), db);
    assert_eq!(inspect(&db, "{{.State.StartedAt}}"), db_started);
    assert_db_up(&env, VERSION, &out);
}

// ---------------------------------------------------------------------------------------------
// 5. prune

fn prune_doc(out: &Output) -> Vec<(i64, bool, Vec<String>)> {
    let doc = out.json();
    assert_keys(&doc, &crate::util::doc_keys(&["dry_run", "backups"]));
    assert_eq!(doc["success"], true, "{out}");
    doc["backups"]
        .as_array()
        .unwrap_or_else(|| panic!("backups array\n{out}"))
        .iter()
        .map(|d| {
            assert_keys(d, &["id", "keep", "reasons"]);
            (
                d["id"].as_i64().unwrap(),
                d["keep"].as_bool().unwrap(),
                d["reasons"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn prune_dry_run_lists_decisions_and_prune_deletes_all_but_the_kept() {
    let env = TestEnv::new();
    let mut ids: Vec<i64> = (0..4).map(|_| env.backup().id).collect();
    ids.reverse(); // newest first
    let files_before = env.backup_files();
    assert_eq!(files_before.len(), 4);

    let out = env.run(&["prune", "--keep-last", "2", "--dry-run", "--json"]);
    out.assert_ok();
    assert_eq!(out.json()["dry_run"], true);
    let decisions = prune_doc(&out);
    assert_eq!(
        decisions.iter().map(|d| d.0).collect::<Vec<_>>(),
        ids,
        "every backup, newest first\n{out}"
    );
    for (i, (id, keep, reasons)) in decisions.iter().enumerate() {
        if i < 2 {
            assert!(*keep, "backup {id} is one of the last 2\n{out}");
            assert!(
                reasons.iter().any(|r| r.contains("last")),
                "backup {id}: {reasons:?}"
            );
        } else {
            assert!(!*keep, "backup {id} is not one of the last 2\n{out}");
            assert_eq!(reasons, &[REASON_UNMATCHED], "backup {id}");
        }
    }
    assert!(
        decisions[0].2.iter().any(|r| r == REASON_NEWEST),
        "{decisions:?}"
    );
    assert_eq!(env.list().len(), 4, "a dry run deletes nothing");
    assert_eq!(env.backup_files(), files_before);

    // The table: one line per backup with its verb.
    let out = env.run(&["prune", "--keep-last", "2", "--dry-run"]);
    out.assert_ok().assert_stderr_has("dry run");
    // `keep <id> <reasons>` / `would drop <id> <reasons>`, newest first.
    let table: Vec<(String, i64, String)> = out
        .stdout
        .lines()
        .map(|l| {
            let (verb, rest) = match l.strip_prefix("would drop") {
                Some(rest) => ("would drop", rest),
                None => l.split_once(' ').unwrap_or((l, "")),
            };
            let rest = rest.trim_start();
            let (id, reasons) = rest.split_once(' ').unwrap_or((rest, ""));
            let id = id
                .parse()
                .unwrap_or_else(|_| panic!("no backup id in line {l:?}\n{out}"));
            (verb.to_owned(), id, reasons.trim().to_owned())
        })
        .collect();
    let expected: Vec<(String, i64, String)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| match i {
            0 => ("keep".into(), *id, format!("last 2, {REASON_NEWEST}")),
            1 => ("keep".into(), *id, "last 2".into()),
            _ => ("would drop".into(), *id, REASON_UNMATCHED.into()),
        })
        .collect();
    assert_eq!(table, expected, "{out}");

    // No rule, or only zeros: refused, naming the flags.
    for args in [
        &["prune"][..],
        &["prune", "--dry-run"],
        &["prune", "--keep-last", "0"],
    ] {
        env.run(args)
            .assert_code(exit::USAGE)
            .assert_stderr_has("--keep-last");
    }
    let out = env.run(&["prune", "--json"]);
    out.assert_code(exit::USAGE);
    assert_eq!(out.json()["success"], false, "{out}");
    assert_eq!(env.list().len(), 4);

    // For real: only the newest is left, the other archives are gone.
    let out = env.run(&["prune", "--keep-last", "1", "--json"]);
    out.assert_ok();
    assert_eq!(out.json()["dry_run"], false);
    let decisions = prune_doc(&out);
    assert_eq!(
        decisions
            .iter()
            .filter(|d| d.1)
            .map(|d| d.0)
            .collect::<Vec<_>>(),
        [ids[0]]
    );
    let rows = env.list();
    assert_eq!(
        rows.iter().map(|r| r.id).collect::<Vec<_>>(),
        [ids[0]],
        "{rows:#?}"
    );
    assert_eq!(env.backup_files(), [file_name(&rows[0].file_path)]);
}

/// `[backup.retention]` is applied after `auto-backup run`.
#[test]
fn auto_backup_run_applies_the_configured_retention() {
    let env = TestEnv::new();
    let config = config_text(&env);
    fs::write(
        env.work.join("config.toml"),
        format!("{config}\n[backup.retention]\nkeep_last = 2\n"),
    )
    .unwrap();
    for _ in 0..3 {
        env.run(&["auto-backup", "run"]).assert_ok();
    }
    let rows = env.list();
    assert_eq!(rows.len(), 2, "{rows:#?}");
    assert!(rows.iter().all(|r| r.backup_type == "Auto"), "{rows:#?}");
    assert_eq!(env.backup_files().len(), 2, "{:?}", env.backup_files());
    // prune without flags uses the configured rule.
    let out = env.run(&["prune", "--dry-run", "--json"]);
    out.assert_ok();
    assert!(prune_doc(&out).iter().all(|d| d.1), "{out}");
}

/// The latest PreUpgrade backup survives any keep rule until a newer upgrade has succeeded.
#[test]
fn prune_keeps_the_latest_pre_upgrade_backup_until_a_newer_upgrade_succeeds() {
    let env = running_stack();
    let (package, _) = good_release("2.0.0").pack(&env, "2.0.0.tar.gz");
    let out = upgrade(&env, &package, &["--json"]);
    out.assert_ok();
    let pre1 = backup_of(&out.json(), &out).id;
    // A newer manual backup (the services run; the tool is told it is fine).
    let out = env.run(&["backup", "--skip-docker-check", "--json"]);
    out.assert_ok();
    let manual1 = out.json()["backup"]["id"].as_i64().unwrap();

    let out = env.run(&["prune", "--keep-last", "1", "--dry-run", "--json"]);
    out.assert_ok();
    let d = prune_doc(&out);
    let find = |d: &[(i64, bool, Vec<String>)], id: i64| {
        d.iter()
            .find(|x| x.0 == id)
            .cloned()
            .unwrap_or_else(|| panic!("no decision for {id}: {d:?}"))
    };
    assert!(find(&d, manual1).1, "{out}");
    let (_, keep, reasons) = find(&d, pre1);
    assert!(keep, "the latest pre-upgrade backup must be kept\n{out}");
    assert_eq!(reasons, [REASON_PRE_UPGRADE], "{out}");

    // A newer successful upgrade releases it; its own backup is now the protected one.
    let (package, _) = good_release("2.1.0").pack(&env, "2.1.0.tar.gz");
    let out = upgrade(&env, &package, &["--json"]);
    out.assert_ok();
    let pre2 = backup_of(&out.json(), &out).id;
    let out = env.run(&["backup", "--skip-docker-check", "--json"]);
    out.assert_ok();
    let manual2 = out.json()["backup"]["id"].as_i64().unwrap();

    let out = env.run(&["prune", "--keep-last", "1", "--json"]);
    out.assert_ok();
    let d = prune_doc(&out);
    assert_eq!(find(&d, pre1), (pre1, false, vec![REASON_UNMATCHED.into()]));
    assert!(!find(&d, manual1).1, "{out}");
    assert_eq!(
        find(&d, pre2),
        (pre2, true, vec![REASON_PRE_UPGRADE.into()])
    );
    assert!(find(&d, manual2).1, "{out}");
    let mut left: Vec<i64> = env.list().iter().map(|r| r.id).collect();
    left.sort_unstable();
    assert_eq!(left, [pre2, manual2]);
    assert_eq!(env.backup_files().len(), 2, "{:?}", env.backup_files());
}

// ---------------------------------------------------------------------------------------------
// 6. reindex

/// A row without `verified_at` (reindex verifies every archive it adopts).
fn without_verified(rows: &[BackupRow]) -> Vec<BackupRow> {
    rows.iter()
        .cloned()
        .map(|mut r| {
            r.verified_at = None;
            r
        })
        .collect()
}

fn remove_catalog(env: &TestEnv) {
    let dir = env.db_file().parent().unwrap().to_path_buf();
    let mut removed = 0;
    for e in fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if file_name(p.to_str().unwrap()).starts_with("nuwax.db") {
            fs::remove_file(&p).unwrap();
            removed += 1;
        }
    }
    assert!(removed >= 1, "no catalog file in {}", dir.display());
}

/// Sleeps until the wall clock enters the next second: the next backup's time is then later
/// than every earlier one's (the archives record whole seconds).
fn next_second() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_nanos(
        1_000_000_000 - u64::from(now.subsec_nanos()) + 20_000_000,
    ));
}

#[test]
fn reindex_rebuilds_a_deleted_catalog_and_flags_missing_archives() {
    let env = TestEnv::new();
    env.backup();
    env.mutate();
    next_second();
    env.run(&["auto-backup", "run"]).assert_ok();
    env.write_config("1.3.0");
    next_second();
    env.backup();
    next_second();
    env.backup();
    let rows = env.list();
    assert_eq!(rows.len(), 4);
    let types: Vec<&str> = rows.iter().map(|r| r.backup_type.as_str()).collect();
    assert_eq!(types, ["Manual", "Manual", "Auto", "Manual"], "{rows:#?}");

    remove_catalog(&env);
    assert!(env.list().is_empty(), "a fresh catalog is empty");

    let out = env.run(&["reindex", "--json"]);
    out.assert_ok();
    let doc = out.json();
    assert_keys(
        &doc,
        &crate::util::doc_keys(&["added", "known", "invalid", "missing"]),
    );
    assert_eq!(doc["success"], true, "{out}");
    assert_eq!(doc["added"].as_array().map(Vec::len), Some(4), "{out}");
    assert_eq!(doc["known"], 0, "{out}");
    assert_eq!(doc["invalid"], serde_json::json!([]), "{out}");
    assert_eq!(doc["missing"], serde_json::json!([]), "{out}");

    let rebuilt = env.list();
    assert_eq!(
        without_verified(&rebuilt),
        without_verified(&rows),
        "reindex must give back the same list"
    );

    // Again: nothing new.
    let doc = env.run_json(&["reindex", "--json"]);
    assert_eq!(doc["added"], serde_json::json!([]));
    assert_eq!(doc["known"], 4);

    // An archive deleted behind the tool's back is flagged; junk in the storage dir is named.
    let gone = &rows[1];
    fs::remove_file(&gone.file_path).unwrap();
    let junk = env.backups_dir().join("junk.tar.gz");
    fs::write(&junk, b"not an archive").unwrap();
    let out = env.run(&["reindex", "--json"]);
    out.assert_ok()
        .assert_stderr_has(&format!("delete-backup {}", gone.id));
    let doc = out.json();
    assert_eq!(doc["known"], 3, "{out}");
    let missing = doc["missing"].as_array().unwrap();
    assert_eq!(missing.len(), 1, "{out}");
    assert_eq!(missing[0]["id"], gone.id, "{out}");
    assert_eq!(missing[0]["file_exists"], false, "{out}");
    let invalid = doc["invalid"].as_array().unwrap();
    assert_eq!(invalid.len(), 1, "{out}");
    assert_eq!(invalid[0]["file_path"], junk.to_str().unwrap(), "{out}");
    assert!(!env.row(gone.id).file_exists);
    assert_eq!(env.list().len(), 4, "reindex deletes no rows");
}

/// Backups taken within the same second (their archives record whole seconds) must come back
/// in the order they were taken too: reindex promises the same ids in the same order.
#[test]
fn reindex_keeps_the_order_of_backups_taken_within_one_second() {
    let env = TestEnv::new();
    // A Manual backup and then an Auto one in the same second: their file names sort the
    // other way round (`backup_auto_...` < `backup_manual_...`).
    let mut same_second = false;
    for _ in 0..10 {
        next_second();
        env.backup();
        env.run(&["auto-backup", "run"]).assert_ok();
        let rows = env.list();
        if rows[0].created_at == rows[1].created_at {
            same_second = true;
            break;
        }
    }
    assert!(
        same_second,
        "test setup: could not take two backups within one second"
    );
    let rows = env.list();
    remove_catalog(&env);
    env.run(&["reindex", "--json"]).assert_ok();
    assert_eq!(
        without_verified(&env.list()),
        without_verified(&rows),
        "reindex must give back the same ids in the same order"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. import

#[test]
fn import_adopts_a_verified_archive_and_refuses_a_corrupt_one() {
    let source = TestEnv::new();
    let row = source.backup();
    let name = file_name(&row.file_path);

    let env = TestEnv::new();
    let incoming = env.root.join("incoming");
    fs::create_dir_all(&incoming).unwrap();

    // A corrupted copy first: refused, nothing added, nothing copied.
    let bad = incoming.join(format!("corrupt-{name}"));
    fs::copy(&row.file_path, &bad).unwrap();
    flip_middle_byte(&bad);
    let out = env.run(&[OsStr::new("import"), bad.as_os_str(), OsStr::new("--json")]);
    out.assert_code(exit::INTEGRITY);
    assert_eq!(out.json()["success"], false, "{out}");
    assert!(env.list().is_empty());
    assert!(env.backup_files().is_empty(), "{:?}", env.backup_files());

    // A good copy: verified, copied into the storage dir, listed with its own metadata.
    let good = incoming.join(&name);
    fs::copy(&row.file_path, &good).unwrap();
    let out = env.run(&[OsStr::new("import"), good.as_os_str(), OsStr::new("--json")]);
    out.assert_ok();
    let doc = out.json();
    assert_keys(&doc, &crate::util::doc_keys(&["backup"]));
    assert_eq!(doc["success"], true);
    let imported = backup_of(&doc, &out);
    let dest = env.backups_dir().join(&name);
    assert_eq!(imported.file_path, dest.to_str().unwrap());
    assert_eq!(env.backup_files(), vec![name.clone()]);
    assert_eq!(sha256_file(&dest), row.sha256.clone().unwrap());
    assert!(good.exists(), "the original is left alone");
    for (what, a, b) in [
        ("backup_type", &imported.backup_type, &row.backup_type),
        ("created_at", &imported.created_at, &row.created_at),
        (
            "service_version",
            &imported.service_version,
            &row.service_version,
        ),
        ("status", &imported.status, &row.status),
    ] {
        assert_eq!(a, b, "{what}\n{out}");
    }
    assert_eq!(imported.sha256, row.sha256);
    assert_eq!(imported.file_size, row.file_size);
    assert_eq!(imported.entry_count, row.entry_count);
    let listed: ListDoc = env.run(&["list-backups", "--json"]).json_as();
    assert_eq!(listed.backups.len(), 1);
    assert_eq!(listed.backups[0].id, imported.id);
    env.run(&["verify", &imported.id.to_string()]).assert_ok();

    // The same archive again: already there.
    env.run(&[OsStr::new("import"), good.as_os_str()])
        .assert_code(exit::USAGE);
    assert_eq!(env.list().len(), 1);
}

/// An upgrade killed mid-way (kill -9) is finished by the next invocation of any command:
/// before the release was applied, the services simply run again; once it was (partly)
/// applied, the pre-upgrade backup is restored, code and data, with the old version.
#[test]
fn a_killed_upgrade_is_rolled_back_by_the_next_command() {
    for point in [
        "upgrade.after_backup",
        // Journaled, not yet created: recovery must not trip over the missing work dir.
        "upgrade.journaled_work_dir",
        "rollback.swap.1.placed",
        "upgrade.after_swap",
        "upgrade.before_start",
    ] {
        let env = running_stack();
        let before = env.snapshot_compose();
        let config_before = config_text(&env);
        let (package, _) = good_release("2.0.0").pack(&env, "rel.tar.gz");
        let mut args: Vec<&OsStr> = vec![OsStr::new("upgrade"), OsStr::new("--package")];
        args.push(package.as_os_str());
        let out = env.run_env(&args, &[("NUWAX_TEST_CRASH_AT", OsStr::new(point))]);
        assert_eq!(
            out.code, None,
            "{point}: should have been killed there\n{out}"
        );

        let next = env.run(&["list-backups"]);
        next.assert_ok().assert_stderr_has("recovery");
        assert_same_tree(
            &format!("{point}: compose dir after recovery"),
            &before,
            &env.snapshot_compose(),
        );
        assert_eq!(
            config_text(&env),
            config_before,
            "{point}: config.toml\n{next}"
        );
        assert_db_up(&env, VERSION, &next);
        let history = upgrade_history(&env);
        assert_eq!(history.len(), 1, "{point}: {history:#?}");
        assert_ne!(history[0].outcome, "running", "{point}: {history:#?}");
        assert_ne!(history[0].outcome, "succeeded", "{point}: {history:#?}");
    }
}
