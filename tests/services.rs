//! The service lifecycle on the machine's real Docker engine (issue 3): `docker-service
//! start|stop|status` in dependency order with health, rollback starting the services again,
//! `auto-backup run|status` restarting exactly what ran (also after a kill -9), and other
//! projects never touched.
//!
//! Every test writes its own three-service stack (db with a healthcheck, cache, app depending
//! on both) into its TestEnv's compose dir and lets the tool create it (`compose up`: this host
//! has `docker-compose` v1 only, which the tool falls back to). The containers carry the
//! TestEnv's unique project label, so its Drop removes them, passed or failed.

use std::ffi::OsStr;
use std::fs;

use serde::Deserialize;

use crate::archutil;
use crate::dockerutil::{
    SERVE, docker_ok, engine_time_nanos, ensure_test_image, inspect, project_containers,
    run_container, service_container,
};
use crate::util::{
    DATA_SCOPE, EXCLUDED, ListDoc, Output, TestEnv, Tree, assert_keys, assert_same_tree, except,
    exit, noise, only, tree_diff, unique_project, whole_seconds, write,
};

const SERVICES: [&str; 3] = ["db", "cache", "app"];

/// The stack: `db` (healthcheck), `cache`, and `app` depending on db (healthy) and cache.
/// `sleep` as PID 1 ignores SIGTERM, hence SIGKILL as the stop signal. The `# release 1.2.3`
/// line is what [`TestEnv::mutate`] edits.
fn compose_yaml(app_image: &str) -> String {
    let common = "    command: [\"sleep\", \"3600\"]\n\
                  \x20   restart: unless-stopped\n\
                  \x20   network_mode: none\n\
                  \x20   stop_signal: SIGKILL\n\
                  \x20   labels:\n\
                  \x20     nuwax-test: \"1\"\n";
    format!(
        "# three-service test stack\n\
         # release 1.2.3\n\
         services:\n\
         \x20 db:\n\
         \x20   image: nuwax-test-busybox:latest\n\
         {common}\
         \x20   healthcheck:\n\
         \x20     test: [\"CMD\", \"true\"]\n\
         \x20     interval: 1s\n\
         \x20     start_period: 1s\n\
         \x20 cache:\n\
         \x20   image: nuwax-test-busybox:latest\n\
         {common}\
         \x20 app:\n\
         \x20   image: {app_image}\n\
         {common}\
         \x20   depends_on:\n\
         \x20     db:\n\
         \x20       condition: service_healthy\n\
         \x20     cache:\n\
         \x20       condition: service_started\n"
    )
}

/// A TestEnv whose compose file is the three-service stack (no containers yet).
fn stack_env() -> TestEnv {
    ensure_test_image();
    let env = TestEnv::new();
    write_compose(&env, &compose_yaml("nuwax-test-busybox:latest"));
    env
}

/// Writes the compose file with a whole-second mtime (tar keeps seconds).
fn write_compose(env: &TestEnv, text: &str) {
    let path = env.path("docker-compose.yml");
    fs::write(&path, text).unwrap();
    let t = filetime::FileTime::from_unix_time(1_650_000_000, 0);
    filetime::set_file_mtime(&path, t).unwrap();
}

/// A TestEnv with the stack created and running (`docker-service start` on a project without
/// containers: the compose-up fallback).
fn running_stack() -> TestEnv {
    let env = stack_env();
    let out = env.run(&["docker-service", "start", "--json"]);
    out.assert_ok();
    let doc = out.json();
    assert_eq!(doc["success"], true, "{out}");
    assert_eq!(
        doc["compose_up"], true,
        "no containers yet: the tool must create them with compose\n{out}"
    );
    assert_all_running(&env, &out);
    env
}

/// The container id of `service` in this env's project.
#[track_caller]
fn id(env: &TestEnv, service: &str) -> String {
    service_container(&env.project, service)
}

fn state(env: &TestEnv, service: &str) -> String {
    inspect(&id(env, service), "{{.State.Status}}")
}

fn health(env: &TestEnv, service: &str) -> String {
    inspect(
        &id(env, service),
        "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}",
    )
}

fn started_at(env: &TestEnv, service: &str) -> i128 {
    engine_time_nanos(&inspect(&id(env, service), "{{.State.StartedAt}}"))
}

fn finished_at(env: &TestEnv, service: &str) -> i128 {
    engine_time_nanos(&inspect(&id(env, service), "{{.State.FinishedAt}}"))
}

/// Every service runs and db is healthy (the tool waited for it before returning).
#[track_caller]
fn assert_all_running(env: &TestEnv, out: &Output) {
    for s in SERVICES {
        assert_eq!(state(env, s), "running", "service {s} after the run\n{out}");
    }
    assert_eq!(
        health(env, "db"),
        "healthy",
        "the tool returned before db was healthy\n{out}"
    );
}

#[track_caller]
fn assert_states(env: &TestEnv, expected: &[(&str, &str)], what: &str) {
    for (service, want) in expected {
        assert_eq!(
            state(env, service),
            *want,
            "{what}: state of service {service}"
        );
    }
}

/// Stopped by the tool (or by docker): `exited` (SIGKILL), never running.
#[track_caller]
fn assert_all_stopped(env: &TestEnv, what: &str) {
    for s in SERVICES {
        assert_eq!(state(env, s), "exited", "{what}: service {s}");
    }
}

/// Everything but the data scope and the excluded items.
fn app_scope(tree: &Tree) -> Tree {
    let skip: Vec<&str> = DATA_SCOPE.iter().chain(EXCLUDED).copied().collect();
    except(tree, &skip)
}

fn data_and_excluded(tree: &Tree) -> Tree {
    let keep: Vec<&str> = DATA_SCOPE.iter().chain(EXCLUDED).copied().collect();
    only(tree, &keep)
}

/// `docker-service status --json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusDoc {
    schema_version: u32,
    success: bool,
    error: Option<String>,
    // Parsed so that the document keeps exactly this shape (deny_unknown_fields).
    #[allow(dead_code)]
    error_kind: Option<String>,
    #[allow(dead_code)]
    exit_code: i32,
    project: String,
    engine_absent: bool,
    services: Vec<ServiceRow>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceRow {
    service: Option<String>,
    container: String,
    state: String,
    health: Option<String>,
    restart_policy: String,
    image: String,
    one_shot: bool,
}

// ---------------------------------------------------------------------------------------------
// 1. docker-service: compose-up fallback, status, ordered stop and start

#[test]
fn docker_service_creates_stops_and_starts_the_stack_in_dependency_order() {
    let env = running_stack();

    // status --json: every service with state, health, restart policy and image.
    let out = env.run(&["docker-service", "status", "--json"]);
    out.assert_ok();
    let raw = out.json();
    assert_keys(
        &raw,
        &crate::util::doc_keys(&["project", "engine_absent", "services"]),
    );
    for row in raw["services"].as_array().expect("services array") {
        assert_keys(
            row,
            &[
                "service",
                "container",
                "state",
                "health",
                "restart_policy",
                "image",
                "one_shot",
            ],
        );
    }
    let doc: StatusDoc = out.json_as();
    assert_eq!(doc.schema_version, 1);
    assert!(doc.error.is_none(), "{out}");
    assert!(doc.success);
    assert_eq!(doc.project, env.project);
    assert!(!doc.engine_absent);
    let mut names: Vec<&str> = doc
        .services
        .iter()
        .map(|s| {
            s.service
                .as_deref()
                .expect("compose sets the service label")
        })
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["app", "cache", "db"], "{out}");
    for row in &doc.services {
        let service = row.service.as_deref().unwrap();
        assert_eq!(row.state, "running", "{row:?}");
        assert_eq!(row.restart_policy, "unless-stopped", "{row:?}");
        assert_eq!(row.image, "nuwax-test-busybox:latest", "{row:?}");
        assert!(
            !row.one_shot,
            "restart: unless-stopped is persistent: {row:?}"
        );
        let container_name = inspect(&id(&env, service), "{{.Name}}");
        assert_eq!(format!("/{}", row.container), container_name, "{row:?}");
        let want_health = (service == "db").then_some("healthy");
        assert_eq!(row.health.as_deref(), want_health, "{row:?}");
    }
    // The table names the services too.
    let out = env.run(&["docker-service", "status"]);
    out.assert_ok();
    for s in SERVICES {
        assert!(out.stdout.contains(s), "status table lacks {s}\n{out}");
    }
    assert!(out.stdout.contains("healthy"), "{out}");

    // stop: app (the dependent) strictly before db and cache.
    let out = env.run(&["docker-service", "stop", "--json"]);
    out.assert_ok();
    let doc = out.json();
    assert_eq!(doc["success"], true, "{out}");
    let mut stopped: Vec<String> = doc["stopped"]
        .as_array()
        .expect("stopped array")
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    stopped.sort();
    let mut all_names: Vec<String> = SERVICES
        .iter()
        .map(|s| {
            inspect(&id(&env, s), "{{.Name}}")
                .trim_start_matches('/')
                .to_owned()
        })
        .collect();
    all_names.sort();
    assert_eq!(stopped, all_names, "{out}");
    assert_all_stopped(&env, "after docker-service stop");
    let app_stop = finished_at(&env, "app");
    for dep in ["db", "cache"] {
        let dep_stop = finished_at(&env, dep);
        assert!(
            app_stop < dep_stop,
            "app must stop before its dependency {dep}: app finished at {app_stop}, {dep} at {dep_stop}\n{out}"
        );
    }

    // stop again: nothing running, still success.
    env.run(&["docker-service", "stop"])
        .assert_ok()
        .assert_stdout_empty();

    // start: db and cache strictly before app; app only after db was healthy.
    let out = env.run(&["docker-service", "start", "--json"]);
    out.assert_ok();
    let doc = out.json();
    assert_eq!(doc["success"], true, "{out}");
    assert_eq!(
        doc["compose_up"], false,
        "the containers exist: started through the engine\n{out}"
    );
    assert_all_running(&env, &out);
    let app_start = started_at(&env, "app");
    let db_start = started_at(&env, "db");
    for dep in ["db", "cache"] {
        let dep_start = started_at(&env, dep);
        assert!(
            dep_start < app_start,
            "{dep} must start before app: {dep} at {dep_start}, app at {app_start}\n{out}"
        );
        assert!(
            dep_start > app_stop,
            "{dep} was not started again by the tool\n{out}"
        );
    }
    // db's first passing healthcheck of this run ended before app started (the health log
    // keeps the last five checks; with a 1 s interval the first one of the run is still there
    // unless the log wrapped, which it cannot have before app started).
    let log = inspect(
        &id(&env, "db"),
        "{{range .State.Health.Log}}{{.Start}}|{{.End}}|{{.ExitCode}}\n{{end}}",
    );
    let first_pass = log
        .lines()
        .filter_map(|l| {
            let parts: Vec<&str> = l.split('|').collect();
            (parts.len() == 3 && parts[2] == "0")
                .then(|| (go_time_nanos(parts[0]), go_time_nanos(parts[1])))
        })
        .filter(|(start, _)| *start > db_start)
        .map(|(_, end)| end)
        .min();
    if let Some(end) = first_pass {
        let checks = log.lines().count();
        assert!(
            end < app_start || checks >= 5,
            "app started before db was healthy: db healthy at {end}, app started at {app_start}\nhealth log:\n{log}"
        );
    } else {
        panic!("db is healthy but its health log has no passing check since it started:\n{log}");
    }
}

/// The health log prints Go's default `time.Time` format
/// (`2024-01-02 03:04:05.123456789 +0000 UTC`): nanoseconds since the epoch.
fn go_time_nanos(s: &str) -> i128 {
    let s = s.trim();
    let (date_time, rest) = s.split_at(19.min(s.len()));
    let frac = rest
        .strip_prefix('.')
        .map(|r| r.split_whitespace().next().unwrap_or(""))
        .unwrap_or("");
    assert!(s.contains("+0000"), "health log time not in UTC: {s:?}");
    let iso = format!(
        "{}T{}{}Z",
        &date_time[..10],
        &date_time[11..],
        if frac.is_empty() {
            String::new()
        } else {
            format!(".{frac}")
        }
    );
    engine_time_nanos(&iso)
}

// ---------------------------------------------------------------------------------------------
// 2. rollback starts the services again and waits for health

#[test]
fn rollback_brings_the_stack_back_running_and_healthy() {
    let env = running_stack();
    env.run(&["docker-service", "stop"]).assert_ok();
    let original = env.snapshot_compose();
    let row = env.backup();
    env.mutate();
    let mutated = env.snapshot_compose();
    assert!(!tree_diff(&app_scope(&original), &app_scope(&mutated)).is_empty());
    // Running again, so the rollback has to stop them first.
    env.run(&["docker-service", "start"]).assert_ok();
    let before: Vec<i128> = SERVICES.iter().map(|s| started_at(&env, s)).collect();

    let out = env.run(&["rollback", &row.id.to_string(), "--force"]);
    out.assert_ok().assert_stdout_empty();
    assert_all_running(&env, &out);
    for (s, old) in SERVICES.iter().zip(&before) {
        assert!(
            started_at(&env, s) > *old,
            "service {s} was not stopped and started again by the rollback\n{out}"
        );
    }
    // App after its dependencies, again.
    let app_start = started_at(&env, "app");
    for dep in ["db", "cache"] {
        assert!(
            started_at(&env, dep) < app_start,
            "{dep} must start before app\n{out}"
        );
    }
    let after = env.snapshot_compose();
    assert_same_tree(
        "app scope == backup",
        &app_scope(&original),
        &app_scope(&after),
    );
    assert_same_tree(
        "data scope and logs kept",
        &data_and_excluded(&mutated),
        &data_and_excluded(&after),
    );
    // Finished cleanly: the next command has nothing to recover.
    let out = env.run(&["list-backups"]);
    out.assert_ok();
    assert!(
        !out.stderr.to_lowercase().contains("recovery"),
        "a finished rollback left a journal entry\n{out}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. auto-backup restarts exactly what was running

#[test]
fn auto_backup_restarts_only_what_was_running() {
    let env = running_stack();
    // The operator stopped cache on purpose: it must stay stopped.
    docker_ok(&["stop", &id(&env, "cache")]);
    assert_states(
        &env,
        &[("db", "running"), ("app", "running"), ("cache", "exited")],
        "setup",
    );
    let cache_finished = finished_at(&env, "cache");
    let db_before = started_at(&env, "db");
    let app_before = started_at(&env, "app");

    let out = env.run(&["auto-backup", "run", "--json"]);
    out.assert_ok();
    let doc = out.json();
    assert_eq!(doc["success"], true, "{out}");
    assert_eq!(doc["backup_error"], serde_json::Value::Null, "{out}");
    assert_eq!(doc["restart_error"], serde_json::Value::Null, "{out}");
    let mut stopped: Vec<String> = doc["stopped"]
        .as_array()
        .expect("stopped array")
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    stopped.sort();
    let mut want: Vec<String> = ["app", "db"]
        .iter()
        .map(|s| {
            inspect(&id(&env, s), "{{.Name}}")
                .trim_start_matches('/')
                .to_owned()
        })
        .collect();
    want.sort();
    assert_eq!(
        stopped, want,
        "only what ran is stopped and restarted\n{out}"
    );

    assert_states(
        &env,
        &[("db", "running"), ("app", "running"), ("cache", "exited")],
        "after auto-backup run",
    );
    assert_eq!(health(&env, "db"), "healthy", "{out}");
    assert!(
        started_at(&env, "db") > db_before,
        "db was not cycled\n{out}"
    );
    assert!(
        started_at(&env, "app") > app_before,
        "app was not cycled\n{out}"
    );
    assert_eq!(
        finished_at(&env, "cache"),
        cache_finished,
        "cache was touched\n{out}"
    );
    // The backup was cold: both stopped before it was taken, app before db.
    assert!(finished_at(&env, "app") < finished_at(&env, "db"), "{out}");

    let rows = env.list();
    let auto: Vec<_> = rows.iter().filter(|r| r.backup_type == "Auto").collect();
    assert_eq!(auto.len(), 1, "{rows:#?}");
    let auto = auto[0].clone();
    assert_eq!(auto.status, "Completed");
    assert!(auto.file_exists);
    assert_eq!(doc["backup"]["id"], auto.id, "{out}");

    // status --json.
    let out = env.run(&["auto-backup", "status", "--json"]);
    out.assert_ok();
    let st = out.json();
    assert_keys(
        &st,
        &crate::util::doc_keys(&[
            "last_run",
            "last_result",
            "last_backup_id",
            "last_archive",
            "last_error",
            "cron_line",
            "last_success_id",
            "last_success_at",
            "last_success_age_seconds",
            "max_age_seconds",
            "stale",
        ]),
    );
    assert_eq!(st["success"], true, "{out}");
    assert_eq!(st["last_result"], "success", "{out}");
    assert_eq!(st["last_backup_id"], auto.id, "{out}");
    assert_eq!(st["last_archive"], auto.file_path.as_str(), "{out}");
    assert_eq!(st["last_error"], serde_json::Value::Null, "{out}");
    let last_run = st["last_run"].as_str().expect("last_run string");
    let run_secs = engine_time_nanos(last_run) / 1_000_000_000;
    let now = i128::from(crate::util::now_epoch());
    assert!(
        (now - 600..=now + 5).contains(&run_secs),
        "last_run {last_run} is not recent\n{out}"
    );
    let cron = st["cron_line"].as_str().expect("cron_line string");
    assert!(cron.contains("auto-backup run"), "{cron}");
    assert!(cron.contains(env.work.to_str().unwrap()), "{cron}");
    assert!(cron.contains("--quiet") || cron.contains(" -q"), "{cron}");

    // -q: nothing at all on success, same behaviour.
    let out = env.run(&["-q", "auto-backup", "run"]);
    out.assert_ok();
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "--quiet must print nothing on success (cron mails output)\n{out}"
    );
    assert_states(
        &env,
        &[("db", "running"), ("app", "running"), ("cache", "exited")],
        "after auto-backup run -q",
    );
    let autos = env
        .list()
        .into_iter()
        .filter(|r| r.backup_type == "Auto" && r.status == "Completed")
        .count();
    assert_eq!(autos, 2);
    let st = env.run(&["auto-backup", "status", "--json"]).json();
    assert_eq!(st["last_result"], "success");
    assert_ne!(
        st["last_backup_id"], auto.id,
        "status must describe the latest run"
    );
}

/// The `.nuwax-*` work dirs in the compose dir.
fn work_dirs(env: &TestEnv) -> Vec<String> {
    fs::read_dir(env.compose_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".nuwax-"))
        .collect()
}

/// A stack backed up, changed (app and data) and running again: what a rollback replaces.
fn stack_to_roll_back() -> (TestEnv, Tree, String) {
    let env = running_stack();
    env.run(&["docker-service", "stop"]).assert_ok();
    let original = env.snapshot_compose();
    let row = env.backup();
    env.mutate();
    env.run(&["docker-service", "start"]).assert_ok();
    (env, original, row.id.to_string())
}

/// Issue 16 item 7: the services start as soon as the swap is committed; the replaced files
/// are removed afterwards, and the time until the start is reported on its own.
#[test]
fn rollback_reports_the_time_until_the_services_started_apart_from_the_removal() {
    let (env, original, id) = stack_to_roll_back();
    let out = env.run(&[
        "rollback",
        &id,
        "--force",
        "--rollback-data",
        "--json",
        "--progress",
        "json",
    ]);
    out.assert_ok();
    assert_all_running(&env, &out);
    // The removal runs while the services' health is waited for, not after.
    let p = out.phases();
    let at = |name: &str| p.iter().position(|x| x == name);
    let removing = at("removing").unwrap_or_else(|| panic!("no phase removing: {p:?}\n{out}"));
    assert!(
        at("starting").is_some_and(|s| s < removing) && at("waiting").is_none_or(|w| w > removing),
        "the replaced files are removed while the services' health is waited for: {p:?}\n{out}"
    );
    let doc = out.json();
    let started = doc["started_after_ms"].as_u64().expect("started_after_ms");
    let down = doc["downtime_ms"].as_u64().expect("downtime_ms");
    assert!(down <= started, "{out}");
    assert!(doc["cleanup_ms"].is_u64(), "{out}");
    out.assert_stderr_has("after the rollback began (down for");
    out.assert_stderr_has("the replaced files were removed afterwards");
    assert!(work_dirs(&env).is_empty(), "{out}");
    assert_same_tree(
        "everything == backup",
        &except(&original, EXCLUDED),
        &except(&env.snapshot_compose(), EXCLUDED),
    );
}

/// Killed after the services were started and before the replaced files were removed: the
/// next command only removes them (the services keep running, never restarted).
#[test]
fn a_rollback_killed_after_the_start_is_finished_without_restarting_anything() {
    let (env, original, id) = stack_to_roll_back();
    let out = env.run_env(
        &["rollback", &id, "--force", "--rollback-data"],
        &[("NUWAX_TEST_CRASH_AT", OsStr::new("rollback.after_start"))],
    );
    assert_eq!(out.code, None, "not killed at rollback.after_start\n{out}");
    // The services were started before the kill; the replaced files are still there.
    assert_all_running(&env, &out);
    assert_eq!(work_dirs(&env).len(), 1, "{out}");
    let started: Vec<i128> = SERVICES.iter().map(|s| started_at(&env, s)).collect();

    let out = env.run(&["list-backups"]);
    out.assert_ok().assert_stderr_has("recovery");
    out.assert_stderr_has("the replaced files it was removing were removed");
    assert!(work_dirs(&env).is_empty(), "left behind\n{out}");
    for (s, before) in SERVICES.iter().zip(&started) {
        assert_eq!(state(&env, s), "running", "{s}\n{out}");
        assert_eq!(
            started_at(&env, s),
            *before,
            "recovery restarted service {s}\n{out}"
        );
    }
    assert_same_tree(
        "everything == backup",
        &except(&original, EXCLUDED),
        &except(&env.snapshot_compose(), EXCLUDED),
    );
}

// ---------------------------------------------------------------------------------------------
// 4. a killed auto-backup: the next invocation starts the services again

/// Kills `auto-backup run` at `point`; the services must be down right then, and the next
/// command (a read-only one) must start exactly them again.
fn killed_auto_backup_is_recovered(point: &str) {
    let env = running_stack();
    let out = env.run_env(
        &["auto-backup", "run"],
        &[("NUWAX_TEST_CRASH_AT", OsStr::new(point))],
    );
    assert_eq!(
        out.code, None,
        "the run should have been killed at {point}; did it reach it?\n{out}"
    );
    assert_all_stopped(&env, &format!("killed at {point}"));

    let out = env.run(&["list-backups", "--json"]);
    out.assert_ok().assert_stderr_has("recovery");
    for s in SERVICES {
        assert!(
            out.stderr
                .contains(&inspect(&id(&env, s), "{{.Name}}")[1..]),
            "the recovery note should name restarted container of {s}\n{out}"
        );
    }
    for s in SERVICES {
        assert_eq!(
            state(&env, s),
            "running",
            "service {s} after recovery\n{out}"
        );
    }
    let doc: ListDoc = out.json_as();
    for r in &doc.backups {
        assert_ne!(r.status, "Running", "{r:?}");
        if r.status == "Completed" {
            assert!(r.file_exists, "{r:?}");
        }
    }
    // Recovered once: the next command is quiet about it and starts nothing twice.
    let again = env.run(&["list-backups"]);
    again.assert_ok();
    assert!(
        !again.stderr.to_lowercase().contains("recovery"),
        "recovery ran twice\n{again}"
    );
    // And the project can be backed up normally afterwards.
    env.run(&["auto-backup", "run"]).assert_ok();
    for s in SERVICES {
        assert_eq!(state(&env, s), "running");
    }
}

#[test]
fn auto_backup_killed_after_stopping_is_restarted_by_the_next_command() {
    killed_auto_backup_is_recovered("auto_backup.after_stop");
}

#[test]
fn auto_backup_killed_before_restarting_is_restarted_by_the_next_command() {
    killed_auto_backup_is_recovered("auto_backup.before_restart");
}

// ---------------------------------------------------------------------------------------------
// 5. other projects are never touched

#[test]
fn containers_of_other_projects_are_never_touched() {
    let env = stack_env();
    let unrelated = run_container(&unique_project(), "db", "unless-stopped", SERVE);
    // A project name sharing this one's prefix, same service names: the label must match
    // exactly.
    let lookalike = run_container(&format!("{}x", env.project), "app", "always", SERVE);
    let others = [&unrelated, &lookalike];
    let stamp = |c: &crate::dockerutil::Container| {
        inspect(
            &c.id,
            "{{.State.StartedAt}} {{.RestartCount}} {{.State.FinishedAt}}",
        )
    };
    let before: Vec<String> = others.iter().map(|c| stamp(c)).collect();
    let check = |what: &str, out: &dyn std::fmt::Display| {
        for (c, b) in others.iter().zip(&before) {
            assert!(c.is_running(), "{what}: {} is {}\n{out}", c.name, c.state());
            assert_eq!(&stamp(c), b, "{what}: {} was restarted\n{out}", c.name);
        }
    };

    let out = env.run(&["docker-service", "start"]);
    out.assert_ok();
    assert_all_running(&env, &out);
    check("docker-service start", &out);
    // status lists only this project.
    let out = env.run(&["docker-service", "status", "--json"]);
    out.assert_ok();
    let doc: StatusDoc = out.json_as();
    assert_eq!(doc.services.len(), 3, "{out}");
    for c in others {
        assert!(
            !out.stdout.contains(&c.name),
            "status lists {}\n{out}",
            c.name
        );
    }
    check("docker-service status", &out);

    let out = env.run(&["docker-service", "stop"]);
    out.assert_ok();
    assert_all_stopped(&env, "docker-service stop");
    check("docker-service stop", &out);

    // A cold backup of this project is not blocked by the others.
    let original = env.snapshot_compose();
    let row = env.backup();
    check("backup", &format!("backup {row:?}"));

    let out = env.run(&["docker-service", "start"]);
    out.assert_ok();
    check("docker-service start (existing containers)", &out);

    let out = env.run(&["auto-backup", "run"]);
    out.assert_ok();
    assert_all_running(&env, &out);
    check("auto-backup run", &out);

    env.mutate();
    let out = env.run(&["rollback", &row.id.to_string(), "--force"]);
    out.assert_ok();
    assert_all_running(&env, &out);
    check("rollback", &out);
    assert_same_tree(
        "app scope == backup",
        &app_scope(&original),
        &app_scope(&env.snapshot_compose()),
    );

    let out = env.run(&["docker-service", "restart"]);
    out.assert_ok();
    assert_all_running(&env, &out);
    check("docker-service restart", &out);
    assert_eq!(
        project_containers(&env.project, None).len(),
        3,
        "the tool created containers outside its stack"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. the restore succeeds but the start fails

/// The backed-up compose file names an image that does not exist; the project has no
/// containers, so the start after the restore must `compose up` and fails.
fn restore_succeeds_but_start_fails(compose_changes: bool) {
    ensure_test_image();
    let env = TestEnv::new();
    let bad = compose_yaml("nuwax-missing:never");
    let bad = if compose_changes {
        bad
    } else {
        // Without the marker mutate() leaves the compose file alone.
        bad.replace("# release 1.2.3\n", "")
    };
    write_compose(&env, &bad);
    let original = env.snapshot_compose();
    let row = env.backup();
    env.mutate();
    let mutated = env.snapshot_compose();
    assert_eq!(
        fs::read_to_string(env.path("docker-compose.yml")).unwrap() != bad,
        compose_changes,
        "test setup"
    );
    assert!(project_containers(&env.project, None).is_empty());

    let out = env.run(&["rollback", &row.id.to_string(), "--force"]);
    out.assert_code(exit::FAILED)
        .assert_stdout_empty()
        .assert_stderr_has("restore succeeded")
        .assert_stderr_has("docker-service start");
    assert!(
        out.stderr.contains("nuwax-missing:never") || out.stderr.contains("nuwax-missing"),
        "the error should say why the start failed (compose's message)\n{out}"
    );
    let after = env.snapshot_compose();
    assert_same_tree(
        "the restored files stay in place",
        &app_scope(&original),
        &app_scope(&after),
    );
    assert_same_tree(
        "data scope and logs kept",
        &data_and_excluded(&mutated),
        &data_and_excluded(&after),
    );
    assert_eq!(
        fs::read_to_string(env.path("docker-compose.yml")).unwrap(),
        bad,
        "the restored compose file"
    );
    // The restore is final: nothing is reverted or recovered by the next command.
    let out = env.run(&["list-backups"]);
    out.assert_ok();
    assert!(
        !out.stderr.to_lowercase().contains("recovery"),
        "the committed restore was treated as unfinished\n{out}"
    );
    assert_same_tree("still restored", &after, &env.snapshot_compose());
    // The app container was never created.
    assert!(
        project_containers(&env.project, Some("app")).is_empty(),
        "an app container exists although its image does not"
    );
}

#[test]
fn rollback_with_a_changed_unstartable_compose_file_keeps_the_restore_and_exits_1() {
    restore_succeeds_but_start_fails(true);
}

#[test]
fn rollback_of_a_project_without_containers_that_cannot_start_exits_1() {
    restore_succeeds_but_start_fails(false);
}

// ---------------------------------------------------------------------------------------------
// Running containers match the files on disk after a rollback (issue 10, item 6)

/// The stack, with `app` taking `MODE` from `.env` (interpolation) and `FLAVOUR` from its
/// `env_file: app.env`; both files hold `old`.
fn env_stack() -> TestEnv {
    let env = stack_env();
    let yaml = compose_yaml("nuwax-test-busybox:latest").replace(
        "    depends_on:\n",
        "    environment:\n      MODE: ${MODE:-unset}\n    env_file: app.env\n    depends_on:\n",
    );
    write_compose(&env, &yaml);
    fs::write(env.path(".env"), "MODE=old\n").unwrap();
    fs::write(env.path("app.env"), "FLAVOUR=old\n").unwrap();
    env
}

fn app_env(env: &TestEnv) -> String {
    inspect(&id(env, "app"), "{{json .Config.Env}}")
}

/// Backs up with `old`, then changes only `file` to `new` and creates the running stack from
/// it, so the containers run with settings the rollback must take back.
fn env_changed_after_backup(file: &str) -> (TestEnv, i64, String) {
    let env = env_stack();
    let row = env.backup();
    let (var, _) = if file == ".env" {
        ("MODE", fs::write(env.path(".env"), "MODE=new\n"))
    } else {
        ("FLAVOUR", fs::write(env.path("app.env"), "FLAVOUR=new\n"))
    };
    env.run(&["docker-service", "start"]).assert_ok();
    assert!(
        app_env(&env).contains(&format!("{var}=new")),
        "setup: {}",
        app_env(&env)
    );
    (env, row.id, var.to_owned())
}

#[test]
fn a_rollback_that_changes_only_env_files_recreates_the_containers() {
    for file in [".env", "app.env"] {
        let (env, id, var) = env_changed_after_backup(file);
        let out = env.run(&["rollback", &id.to_string(), "--force"]);
        out.assert_ok();
        assert!(out.stderr.contains("recreating"), "{file}\n{out}");
        assert!(
            app_env(&env).contains(&format!("{var}=old")),
            "{file}: the running app still has the new settings: {}\n{out}",
            app_env(&env)
        );
        assert_eq!(state(&env, "app"), "running", "{out}");
    }
}

#[test]
fn a_crash_after_a_committed_rollback_converges_to_recreated_containers() {
    let (env, id, var) = env_changed_after_backup(".env");
    let out = env.run_env(
        &["rollback", &id.to_string(), "--force"],
        &[("NUWAX_TEST_CRASH_AT", OsStr::new("rollback.after_commit"))],
    );
    assert_eq!(out.code, None, "not killed\n{out}");
    // Any next command recovers: the restored files are live, so the containers must be
    // recreated from them, not merely restarted.
    let out = env.run(&["docker-service", "status"]);
    out.assert_ok();
    assert!(
        app_env(&env).contains(&format!("{var}=old")),
        "recovery restarted the containers with stale settings: {}\n{out}",
        app_env(&env)
    );
    assert_eq!(state(&env, "app"), "running", "{out}");
}

// ---------------------------------------------------------------------------------------------
// Per-container progress (issue 14, item 5)

/// While services stop, start and are waited for, each container gets its own line as its
/// state changes (name, state, elapsed), not a bare counter: as text, and as `container`
/// JSON lines with `--progress json`.
#[test]
fn restart_reports_each_container_by_name_and_state() {
    let env = running_stack();
    let out = env.run(&["docker-service", "restart", "--progress", "plain"]);
    out.assert_ok();
    let db_lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("  ") && l.contains("db"))
        .collect();
    for state in [": stopping (", ": stopped (", ": started (", ": healthy ("] {
        assert!(
            db_lines.iter().any(|l| l.contains(state)),
            "no line for db{state}: {db_lines:?}\n{out}"
        );
    }
    assert!(
        db_lines
            .iter()
            .any(|l| l.contains(": healthy (") && l.ends_with(" s)")),
        "each line says how long the step has taken: {db_lines:?}"
    );
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains("waiting for health done")),
        "{out}"
    );

    let out = env.run(&["docker-service", "restart", "--progress", "json"]);
    out.assert_ok();
    let mut db_states = Vec::new();
    for line in out.stderr.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}\n{out}"));
        if v["event"] == "container" && v["item"].as_str().is_some_and(|n| n.contains("db")) {
            assert!(v["phase"].is_string(), "{line}");
            db_states.push(v["state"].as_str().unwrap().to_string());
        }
    }
    for state in ["stopping", "stopped", "starting", "started", "healthy"] {
        assert!(
            db_states.iter().any(|s| s == state),
            "no {state} event for db: {db_states:?}\n{out}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 6. an incremental auto-backup starts the services before it copies unchanged data

/// Big files (members of their own, which the next backup copies) with whole-second mtimes
/// (tar keeps seconds), aged past the two seconds in which a change could share the clock
/// tick of a backup's read.
fn add_big_files(env: &TestEnv) {
    for (i, rel) in ["data/db/main.ibd", "data/uploads/video.mp4"]
        .iter()
        .enumerate()
    {
        let p = env.path(rel);
        write(&p, &noise(30 + i as u64, 3 << 20), 0o644);
    }
    whole_seconds(&env.compose_dir());
    std::thread::sleep(std::time::Duration::from_millis(2200));
}

/// The backup row of `auto-backup run --json`: its id and archive.
fn backup_of(out: &Output) -> (String, String) {
    let doc = out.json();
    let row = &doc["backup"];
    let id = row["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no backup\n{out}"));
    (
        id.to_string(),
        row["file_path"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn an_incremental_auto_backup_starts_the_services_before_it_copies_unchanged_data() {
    let env = running_stack();
    add_big_files(&env);
    env.run(&["auto-backup", "run"]).assert_ok();
    let live = except(&env.snapshot_compose(), EXCLUDED);

    let out = env.run(&["auto-backup", "run", "--json", "--progress", "json"]);
    out.assert_ok().assert_stderr_has("of unchanged data from");
    let p = out.phases();
    let at = |name: &str| {
        p.iter()
            .position(|x| x == name)
            .unwrap_or_else(|| panic!("no phase {name}: {p:?}\n{out}"))
    };
    assert!(
        at("archiving") < at("starting") && at("starting") < at("copying"),
        "the services start after the live tree was read, before the copies: {p:?}\n{out}"
    );
    assert!(
        p.iter()
            .position(|x| x == "waiting")
            .is_none_or(|w| w > at("copying")),
        "the copies are made while the services' health is waited for: {p:?}\n{out}"
    );
    assert_all_running(&env, &out);
    let (id, path) = backup_of(&out);
    env.run(&["verify", &id]).assert_ok();
    assert_same_tree(
        "tar -xzf of the incremental auto-backup",
        &live,
        &archutil::gnu_tar_tree(&path, &env.root.join("gnu")),
    );
}

/// The stack with an app whose health fails once it was started again after
/// `docker exec app touch /tmp/armed` (its start command then marks it sick).
fn stack_sick_after_a_restart() -> TestEnv {
    ensure_test_image();
    let env = TestEnv::new();
    let yaml = compose_yaml("nuwax-test-busybox:latest");
    let app = yaml.find("  app:").unwrap();
    let (head, tail) = yaml.split_at(app);
    let tail = tail.replacen(
        "command: [\"sleep\", \"3600\"]",
        "command: [\"sh\", \"-c\", \"if [ -f /tmp/armed ]; then touch /tmp/sick; fi; exec sleep 3600\"]\n\
         \x20   healthcheck:\n\
         \x20     test: [\"CMD\", \"sh\", \"-c\", \"test ! -f /tmp/sick\"]\n\
         \x20     interval: 1s\n\
         \x20     retries: 1",
        1,
    );
    write_compose(&env, &format!("{head}{tail}"));
    env.run(&["docker-service", "start"]).assert_ok();
    env
}

/// The health wait runs beside the copies: a service that comes back unhealthy still fails
/// the run (exit 1, `restart_error` naming it), and the backup it took is complete.
#[test]
fn a_service_unhealthy_after_the_early_restart_fails_the_run_and_keeps_its_backup() {
    let env = stack_sick_after_a_restart();
    add_big_files(&env);
    env.run(&["auto-backup", "run"]).assert_ok();
    let live = except(&env.snapshot_compose(), EXCLUDED);
    docker_ok(&["exec", &id(&env, "app"), "touch", "/tmp/armed"]);

    let out = env.run(&["auto-backup", "run", "--json", "--progress", "json"]);
    out.assert_code(exit::FAILED)
        .assert_stderr_has("of unchanged data from");
    let doc = out.json();
    let why = doc["restart_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("unhealthy") && why.contains("app"),
        "the restart error names the unhealthy service: {why}\n{out}"
    );
    let (id, path) = backup_of(&out);
    env.run(&["verify", &id]).assert_ok();
    assert_same_tree(
        "tar -xzf of the backup taken",
        &live,
        &archutil::gnu_tar_tree(&path, &env.root.join("gnu")),
    );
    assert_eq!(health(&env, "app"), "unhealthy", "{out}");
}

#[test]
fn damage_found_after_the_restart_stops_the_services_again_and_reads_every_file() {
    let env = running_stack();
    add_big_files(&env);
    let out = env.run(&["auto-backup", "run", "--json"]);
    out.assert_ok();
    let (_, first) = backup_of(&out);
    archutil::flip_byte_in_span_of(std::path::Path::new(&first), "data/db/main.ibd");
    let live = except(&env.snapshot_compose(), EXCLUDED);

    let out = env.run(&["auto-backup", "run", "--json", "--progress", "json"]);
    out.assert_ok()
        .assert_stderr_has("do not match their recorded checksum")
        .assert_stderr_has("stopping the services again");
    let p = out.phases();
    assert_eq!(
        p.iter().filter(|x| *x == "stopping").count(),
        2,
        "stopped once for the incremental backup, once for the full read: {p:?}\n{out}"
    );
    assert_all_running(&env, &out);
    let (id, path) = backup_of(&out);
    env.run(&["verify", &id]).assert_ok();
    assert_same_tree(
        "tar -xzf of the backup read again",
        &live,
        &archutil::gnu_tar_tree(&path, &env.root.join("gnu")),
    );
    let doc: ListDoc = env.run(&["list-backups", "--json"]).json_as();
    let statuses: Vec<&str> = doc.backups.iter().map(|r| r.status.as_str()).collect();
    assert!(!statuses.contains(&"Running"), "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == "Completed").count(),
        2,
        "the first backup and the one read again: {statuses:?}"
    );
}

#[test]
fn killed_while_copying_after_the_restart_is_cleaned_up_without_restarting_anything() {
    let env = running_stack();
    add_big_files(&env);
    env.run(&["auto-backup", "run"]).assert_ok();
    let out = env.run_env(
        &["auto-backup", "run"],
        &[("NUWAX_TEST_CRASH_AT", OsStr::new("backup.after_copies"))],
    );
    assert_eq!(out.code, None, "not killed at backup.after_copies\n{out}");
    // The services were started before the copies.
    assert_all_running(&env, &out);
    let started: Vec<i128> = SERVICES.iter().map(|s| started_at(&env, s)).collect();

    let out = env.run(&["list-backups", "--json"]);
    out.assert_ok().assert_stderr_has("recovery");
    let doc: ListDoc = out.json_as();
    let statuses: Vec<&str> = doc.backups.iter().map(|r| r.status.as_str()).collect();
    assert!(!statuses.contains(&"Running"), "{statuses:?}\n{out}");
    assert_eq!(
        statuses.iter().filter(|s| **s == "Completed").count(),
        1,
        "{statuses:?}"
    );
    let left: Vec<String> = fs::read_dir(env.backups_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert!(left.is_empty(), "partial archives left: {left:?}");
    for (s, before) in SERVICES.iter().zip(&started) {
        assert_eq!(state(&env, s), "running", "{s}\n{out}");
        assert_eq!(
            started_at(&env, s),
            *before,
            "recovery restarted {s}\n{out}"
        );
    }
}
