//! Restore drills (issue 17), against the real Docker engine: a backup is brought up as its own
//! compose project beside the live stack, which keeps running untouched.
//!
//! The stack: `db`, which refuses to start unless its data (`data/ok`, bind-mounted from the
//! compose dir) is there, with a fixed `container_name` (a drill that kept it would clash
//! with the live container); `web` depends on it. Both `network_mode: none` (CI's dockerd runs
//! with `--bridge=none`).

use std::fs;
use std::path::Path;

use crate::dockerutil::{engine_time_nanos, ensure_test_image, inspect, project_containers};
use crate::util::{TestEnv, Tree, assert_same_tree, exit, snapshot, write};

fn compose_yaml(project: &str) -> String {
    format!(
        "services:\n\
         \x20 db:\n\
         \x20   image: nuwax-test-busybox:latest\n\
         \x20   container_name: {project}-the-db\n\
         \x20   command: [\"sh\", \"-c\", \"test -f /data/ok || {{ echo 'db: /data/ok is missing, data damaged' >&2; exit 3; }}; trap 'exit 0' TERM; while :; do sleep 1; done\"]\n\
         \x20   restart: unless-stopped\n\
         \x20   network_mode: none\n\
         \x20   stop_grace_period: 5s\n\
         \x20   labels:\n\
         \x20     nuwax-test: \"1\"\n\
         \x20   volumes:\n\
         \x20     - ./data:/data\n\
         \x20 web:\n\
         \x20   image: nuwax-test-busybox:latest\n\
         \x20   command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while :; do sleep 1; done\"]\n\
         \x20   restart: unless-stopped\n\
         \x20   network_mode: none\n\
         \x20   stop_grace_period: 5s\n\
         \x20   labels:\n\
         \x20     nuwax-test: \"1\"\n\
         \x20   depends_on: [db]\n"
    )
}

/// Removes the containers of every drill project of this env (`<project>-drill-*`) whatever
/// the test did.
struct DrillSweep(String);

impl Drop for DrillSweep {
    fn drop(&mut self) {
        let out = crate::dockerutil::docker(&[
            "ps",
            "-a",
            "--format",
            "{{.ID}} {{.Label \"com.docker.compose.project\"}}",
        ]);
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, p)| p.starts_with(&self.0))
            .map(|(id, _)| id.to_string())
            .collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids.iter().map(String::as_str));
            let _ = crate::dockerutil::docker(&args);
        }
    }
}

/// A working dir with the stack, `data/ok` in place, nothing running yet.
fn stack_env() -> (TestEnv, DrillSweep) {
    ensure_test_image();
    let env = TestEnv::new();
    fs::write(env.path("docker-compose.yml"), compose_yaml(&env.project)).unwrap();
    write(&env.path("data/ok"), b"ok\n", 0o644);
    // Every drill of this env runs as `<project>-drill-<id>`; ids here stay small.
    let sweep = DrillSweep(format!("{}-drill-", env.project));
    (env, sweep)
}

fn start_live(env: &TestEnv) {
    env.run(&["docker-service", "start"]).assert_ok();
}

/// (container id, StartedAt) of each live service: a drill must change neither.
fn live_state(env: &TestEnv) -> Vec<(String, String, i128)> {
    ["db", "web"]
        .iter()
        .map(|s| {
            let id = crate::dockerutil::service_container(&env.project, s);
            let state = inspect(&id, "{{.State.Status}}");
            let started = engine_time_nanos(&inspect(&id, "{{.State.StartedAt}}"));
            (id, state, started)
        })
        .collect()
}

/// Nothing of the drill is left: no container of the drill project, no scratch dir.
#[track_caller]
fn assert_drill_gone(env: &TestEnv, project: &str) {
    assert!(
        project_containers(project, None).is_empty(),
        "drill project {project} still has containers"
    );
    let left: Vec<String> = fs::read_dir(env.backups_dir())
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".nuwax-drill-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "scratch dirs left: {left:?}");
}

fn drill_json(env: &TestEnv, args: &[&str], code: i32) -> serde_json::Value {
    let mut full = vec!["drill", "--json", "--timeout", "60s"];
    full.extend(args);
    let out = env.run(&full);
    out.assert_code(code);
    let doc = out.json();
    assert_eq!(doc["success"], code == exit::OK, "{out}");
    doc
}

fn config_with_checks(env: &TestEnv, checks: &str) {
    let path = env.work.join("config.toml");
    let mut text = fs::read_to_string(&path).unwrap();
    text.push_str(checks);
    fs::write(path, text).unwrap();
}

fn live_tree(env: &TestEnv) -> Tree {
    snapshot(&env.compose_dir())
}

#[test]
fn a_good_backup_drills_green_beside_the_running_live_stack_and_a_failing_check_turns_it_red() {
    let (env, _sweep) = stack_env();
    config_with_checks(
        &env,
        "\n[[drill.checks]]\nservice = \"db\"\ncommand = [\"cat\", \"/data/ok\"]\nexpect_output = \"ok\"\n",
    );
    let backup = env.backup();
    start_live(&env);
    let before = live_state(&env);
    let tree = live_tree(&env);

    let doc = drill_json(&env, &[], exit::OK);
    let drill = &doc["drill"];
    let project = format!("{}-drill-{}", env.project, backup.id);
    assert_eq!(drill["backup_id"], backup.id, "{doc}");
    assert_eq!(drill["outcome"], "passed", "{doc}");
    assert_eq!(drill["project"], project.as_str(), "{doc}");
    assert_eq!(drill["services"], serde_json::json!(["db", "web"]), "{doc}");
    assert_eq!(drill["checks"][0]["passed"], true, "{doc}");
    assert_eq!(drill["checks"][0]["exit_code"], 0, "{doc}");
    assert!(
        drill["notes"]
            .to_string()
            .contains("container_name dropped"),
        "{doc}"
    );
    assert_drill_gone(&env, &project);
    // The live stack: the same containers, still running, never restarted; its files as
    // they were.
    assert_eq!(
        live_state(&env),
        before,
        "the drill touched the live containers"
    );
    assert_same_tree("live compose dir after the drill", &tree, &live_tree(&env));

    let row = env.row(backup.id);
    assert_eq!(row.drill_status.as_deref(), Some("passed"));
    assert!(row.drilled_at.is_some(), "{row:?}");
    let table = env.run(&["list-backups"]);
    table.assert_ok();
    assert!(table.stdout.contains("DRILL"), "{table}");
    assert!(table.stdout.contains("passed"), "{table}");

    // A check that fails: red, exit 1, the service named, live untouched.
    config_with_checks(
        &env,
        "\n[[drill.checks]]\nservice = \"db\"\ncommand = [\"sh\", \"-c\", \"echo rows: 0; exit 7\"]\n",
    );
    let doc = drill_json(&env, &[&backup.id.to_string()], exit::FAILED);
    let drill = &doc["drill"];
    assert_eq!(drill["outcome"], "failed", "{doc}");
    assert_eq!(drill["failed_service"], "db", "{doc}");
    assert_eq!(doc["error_kind"], "drill_failed", "{doc}");
    assert_eq!(drill["checks"][0]["passed"], true, "{doc}");
    assert_eq!(drill["checks"][1]["passed"], false, "{doc}");
    assert_eq!(drill["checks"][1]["exit_code"], 7, "{doc}");
    assert!(
        drill["log_tail"].as_str().unwrap_or("").contains("rows: 0"),
        "{doc}"
    );
    assert_drill_gone(&env, &project);
    assert_eq!(
        live_state(&env),
        before,
        "the red drill touched the live containers"
    );
    assert_eq!(env.row(backup.id).drill_status.as_deref(), Some("failed"));
}

/// An encrypted backup (`scope = "all"`, no identity on the host): the drill takes the key
/// like `rollback` does (`--identity`), and without one refuses before anything starts.
#[test]
fn an_encrypted_backup_drills_with_identity_and_refuses_without_it() {
    if !crate::encryption::age_tools() {
        return;
    }
    let (env, _sweep) = stack_env();
    let (identity, public) =
        crate::encryption::keygen(&crate::encryption::keys_dir(&env), "key.txt");
    crate::encryption::configure(
        &env,
        &format!("recipients = [\"{public}\"]\nscope = \"all\"\n"),
    );
    let backup = env.backup();
    assert!(backup.encrypted, "{backup:?}");
    let project = format!("{}-drill-{}", env.project, backup.id);
    let id = backup.id.to_string();
    let doc = drill_json(&env, &[&id], exit::USAGE);
    assert_eq!(doc["error_kind"], "key_required", "{doc}");
    assert!(
        doc["error"].as_str().unwrap().contains("--identity"),
        "{doc}"
    );
    assert_drill_gone(&env, &project);
    let (other, _) = crate::encryption::keygen(&crate::encryption::keys_dir(&env), "other.txt");
    let other = other.to_string_lossy().into_owned();
    let doc = drill_json(&env, &[&id, "--identity", &other], exit::INTEGRITY);
    assert_eq!(doc["error_kind"], "decryption_failed", "{doc}");
    assert_drill_gone(&env, &project);
    let key = identity.to_string_lossy().into_owned();
    let doc = drill_json(&env, &[&id, "--identity", &key], exit::OK);
    assert_eq!(doc["drill"]["outcome"], "passed", "{doc}");
    assert_drill_gone(&env, &project);
}

#[test]
fn a_backup_whose_service_exits_on_start_drills_red_naming_it_while_live_keeps_running() {
    let (env, _sweep) = stack_env();
    // The data was damaged before this backup: db exits at once when started from it.
    fs::remove_file(env.path("data/ok")).unwrap();
    let damaged = env.backup();
    write(&env.path("data/ok"), b"ok\n", 0o644);
    start_live(&env);
    let before = live_state(&env);
    let tree = live_tree(&env);

    let out = env.run(&["drill", &damaged.id.to_string(), "--timeout", "60s"]);
    out.assert_code(exit::FAILED);
    out.assert_stderr_has("service db");
    out.assert_stderr_has("data damaged");
    // Said once (it was also a progress notice, `DRILL FAILED: ...`).
    let said = format!("drill of backup {} ", damaged.id);
    assert_eq!(
        out.stderr.to_lowercase().matches(&said).count(),
        1,
        "the failure must be reported once:\n{out}"
    );
    assert_drill_gone(&env, &format!("{}-drill-{}", env.project, damaged.id));
    assert_eq!(
        live_state(&env),
        before,
        "the drill touched the live containers"
    );
    assert_same_tree("live compose dir after the drill", &tree, &live_tree(&env));
    let row = env.row(damaged.id);
    assert_eq!(row.drill_status.as_deref(), Some("failed"), "{row:?}");

    // `auto-backup run --drill`: the new backup (good data) is drilled after the services run
    // again, and the run succeeds.
    let out = env.run(&["auto-backup", "run", "--drill", "--json"]);
    out.assert_ok();
    let doc = out.json();
    assert_eq!(doc["drill"]["outcome"], "passed", "{out}");
    let id = doc["backup"]["id"].as_i64().unwrap();
    assert_eq!(doc["drill"]["backup_id"], id, "{out}");
    for (_, state, _) in live_state(&env) {
        assert_eq!(
            state, "running",
            "auto-backup must start the live stack again"
        );
    }
    assert_eq!(env.row(id).drill_status.as_deref(), Some("passed"));
}

#[test]
fn a_killed_drill_is_cleaned_up_by_the_next_command() {
    let (env, _sweep) = stack_env();
    let backup = env.backup();
    let project = format!("{}-drill-{}", env.project, backup.id);
    let out = env.run_env(
        &["drill", "--timeout", "60s"],
        &[("NUWAX_TEST_CRASH_AT", "drill.after_up".as_ref())],
    );
    assert_eq!(out.code, None, "the drill was to be killed\n{out}");
    assert!(
        !project_containers(&project, None).is_empty(),
        "the drill was killed after its containers were created"
    );
    let out = env.run(&["list-backups", "--json"]);
    out.assert_ok();
    out.assert_stderr_has("drill of backup");
    assert_drill_gone(&env, &project);
    let row = env.row(backup.id);
    assert_eq!(row.drill_status.as_deref(), Some("interrupted"), "{row:?}");
}

#[test]
fn a_kept_drill_stays_up_says_how_to_remove_it_and_blocks_a_second_drill_of_that_backup() {
    let (env, _sweep) = stack_env();
    let backup = env.backup();
    let project = format!("{}-drill-{}", env.project, backup.id);
    let doc = drill_json(&env, &["--keep"], exit::OK);
    let kept = &doc["drill"]["kept"];
    assert!(
        kept["remove_with"]
            .as_str()
            .unwrap_or("")
            .contains(&project),
        "{doc}"
    );
    let work_dir = kept["work_dir"].as_str().unwrap().to_string();
    assert!(Path::new(&work_dir).is_dir(), "{doc}");
    let ids = project_containers(&project, None);
    assert_eq!(ids.len(), 2, "both services stay up: {ids:?}");
    for id in &ids {
        assert_eq!(inspect(id, "{{.State.Status}}"), "running");
    }
    // Not an interrupted operation: the next command leaves it alone.
    env.run(&["list-backups"]).assert_ok();
    assert_eq!(project_containers(&project, None).len(), 2);
    // A second drill of the same backup would collide with it: refused, naming it.
    let out = env.run(&["drill", &backup.id.to_string()]);
    out.assert_code(exit::REFUSED);
    out.assert_stderr_has(&project);
    fs::remove_dir_all(&work_dir).unwrap();
}

#[test]
fn sigterm_during_a_drill_removes_it_before_the_exit() {
    use crate::signals::{finish, send, spawn, wait_until};
    use std::time::Duration;
    let (env, _sweep) = stack_env();
    let backup = env.backup();
    let project = format!("{}-drill-{}", env.project, backup.id);
    let args = ["drill", "--timeout", "60s"];
    let child = spawn(
        &env,
        &args,
        &[
            ("NUWAX_TEST_PAUSE_AT", "drill.after_up"),
            ("NUWAX_TEST_PAUSE_SECS", "10"),
        ],
    );
    wait_until(
        "the drill's containers exist",
        Duration::from_secs(120),
        || !project_containers(&project, None).is_empty(),
    );
    send(&child, libc::SIGTERM);
    let out = finish(child, &args, Duration::from_secs(120));
    out.assert_code(143);
    assert_drill_gone(&env, &project);
    let row = env.row(backup.id);
    assert_eq!(row.drill_status.as_deref(), Some("interrupted"), "{row:?}");
}

#[test]
fn a_writable_bind_mount_outside_the_compose_dir_is_refused_and_nothing_is_left() {
    let (env, _sweep) = stack_env();
    let outside = env.root.join("host-data");
    fs::create_dir_all(&outside).unwrap();
    let yaml = compose_yaml(&env.project).replace(
        "      - ./data:/data\n",
        &format!(
            "      - ./data:/data\n      - {}:/host\n",
            outside.display()
        ),
    );
    fs::write(env.path("docker-compose.yml"), yaml).unwrap();
    let backup = env.backup();
    let out = env.run(&["drill", "--json"]);
    out.assert_code(exit::REFUSED);
    out.assert_stderr_has(&outside.display().to_string());
    assert_eq!(out.json()["error_kind"], "refused", "{out}");
    assert_drill_gone(&env, &format!("{}-drill-{}", env.project, backup.id));
    assert!(
        fs::read_dir(&outside).unwrap().next().is_none(),
        "the drill wrote into the host dir"
    );
    assert!(Path::new(&outside).is_dir());
}

/// A drill whose scratch copy would not fit in the storage dir's free space is refused
/// (exit 3, kind `no_space`, with the numbers) before anything exists: no drill row, no
/// project, no scratch dir. With the space back, the same drill runs.
#[test]
fn a_drill_without_free_space_for_its_copy_is_refused_before_anything() {
    let (env, _sweep) = stack_env();
    let small = crate::faults::Tmpfs::mount(&env.root.join("small"), "24m");
    crate::faults::set_storage_dir(&env, &small.path.join("backups"));
    let backup = env.backup();
    let id = backup.id.to_string();
    // Leave 1 MiB: less than the copy plus the 16 MiB margin.
    let filler = small.path.join("filler");
    let free = crate::util::free_bytes(&small.path);
    write(&filler, &vec![0u8; (free - (1 << 20)) as usize], 0o600);

    let project = format!("{}-drill-{}", env.project, backup.id);
    let doc = drill_json(&env, &[&id], exit::REFUSED);
    assert_eq!(doc["error_kind"], "no_space", "{doc}");
    assert!(
        crate::util::error_message(&doc).contains("free space"),
        "{doc}"
    );
    assert_drill_gone(&env, &project);
    assert_eq!(
        env.row(backup.id).drill_status,
        None,
        "no drill was recorded"
    );

    fs::remove_file(&filler).unwrap();
    let doc = drill_json(&env, &[&id], exit::OK);
    assert_eq!(doc["drill"]["outcome"], "passed", "{doc}");
    assert_drill_gone(&env, &project);
}
