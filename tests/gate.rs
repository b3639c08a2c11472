//! The cold-backup gate (DESIGN.md 4.2) on the machine's real Docker engine, and rollback's
//! stopping of the project's containers.

use std::ffi::OsStr;

use crate::dockerutil::{
    Container, SERVE, docker_ok, ensure_test_image, run_container, test_image,
};
use crate::util::{
    BackupDoc, DATA_SCOPE, EXCLUDED, TestEnv, VERSION, assert_same_tree, except, exit,
    unique_project,
};

/// The locally imported image has what the fixture's services and these tests run.
#[test]
fn test_image_runs_the_applets() {
    ensure_test_image();
    let out = docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--label",
        "nuwax-test=1",
        test_image(),
        "sh",
        "-c",
        "touch /tmp/x && echo ok > /tmp/x && cat /tmp/x && test -e /tmp/x && ls /bin > /dev/null && sleep 0 && true",
    ]);
    assert_eq!(out, "ok");
}

#[test]
fn running_persistent_container_blocks_backup_until_stopped() {
    let env = TestEnv::new();
    let app = run_container(&env.project, "app", "unless-stopped", SERVE);
    let before = env.snapshot_compose();

    let out = env.run(&["backup"]);
    out.assert_code(exit::REFUSED)
        .assert_stderr_has(&app.name)
        .assert_stdout_empty();
    assert!(
        env.backup_files().is_empty(),
        "a refused backup writes nothing"
    );
    assert!(
        env.list().is_empty(),
        "the gate runs before the catalog row"
    );
    assert!(app.is_running(), "the gate never stops anything itself");

    // --json: one error document, same exit code.
    let out = env.run(&["backup", "--json"]);
    out.assert_code(exit::REFUSED);
    let doc: BackupDoc = out.json_as();
    assert!(!doc.success);
    assert!(doc.backup.is_none());
    assert!(
        doc.error.as_ref().is_some_and(|e| e.contains(&app.name)) && doc.exit_code == exit::REFUSED,
        "the JSON error names the container\n{out}"
    );

    app.stop();
    let row = env.backup();
    assert_eq!(row.status, "Completed");
    assert_same_tree("compose dir", &before, &env.snapshot_compose());
}

#[test]
fn containers_of_other_projects_never_block() {
    let env = TestEnv::new();
    // A name that shares the prefix: the label must match exactly.
    let _other = run_container(&format!("{}x", env.project), "app", "always", SERVE);
    let _unrelated = run_container(&unique_project(), "app", "unless-stopped", SERVE);
    env.backup();
}

/// No `restart:` key in the compose file: persistent, whatever the engine's policy says.
#[test]
fn service_without_restart_key_blocks() {
    let env = TestEnv::new();
    let worker = run_container(&env.project, "worker", "no", SERVE);
    env.run(&["backup"])
        .assert_code(exit::REFUSED)
        .assert_stderr_has(&worker.name);
}

/// A project container whose service is no longer in the compose file is persistent.
#[test]
fn container_of_an_unknown_service_blocks() {
    let env = TestEnv::new();
    let ghost = run_container(&env.project, "ghost", "no", SERVE);
    env.run(&["backup"])
        .assert_code(exit::REFUSED)
        .assert_stderr_has(&ghost.name);
}

/// `restart: "no"` in compose and policy `no` on the engine: a one-shot job, reported but not
/// blocking.
#[test]
fn running_one_shot_container_warns_but_passes() {
    let env = TestEnv::new();
    let migrate = run_container(&env.project, "migrate", "no", SERVE);
    let out = env.run(&["backup", "--json"]);
    out.assert_ok().assert_stderr_has(&migrate.name);
    assert!(out.json_as::<BackupDoc>().success);
}

/// Compose says `"no"` but the container's actual policy restarts it: persistent.
#[test]
fn one_shot_service_with_a_restarting_policy_blocks() {
    let env = TestEnv::new();
    let migrate = run_container(&env.project, "migrate", "always", SERVE);
    env.run(&["backup"])
        .assert_code(exit::REFUSED)
        .assert_stderr_has(&migrate.name);
}

#[test]
fn paused_container_blocks() {
    let env = TestEnv::new();
    let app = run_container(&env.project, "app", "unless-stopped", SERVE);
    app.pause();
    assert_eq!(app.state(), "paused");
    env.run(&["backup"])
        .assert_code(exit::REFUSED)
        .assert_stderr_has(&app.name);
}

#[test]
fn skip_docker_check_overrides_the_gate() {
    let env = TestEnv::new();
    let app = run_container(&env.project, "app", "unless-stopped", SERVE);
    let out = env.run(&["backup", "--skip-docker-check", "--json"]);
    out.assert_ok();
    assert!(out.json_as::<BackupDoc>().success);
    assert!(app.is_running());
}

/// The engine socket exists but does not answer: fail closed.
#[test]
fn unreachable_engine_refuses_with_exit_3() {
    let env = TestEnv::new();
    let fake = env.root.join("fake-docker.sock");
    std::fs::write(&fake, b"not a socket").unwrap();
    let host = format!("unix://{}", fake.display());
    let out = env.run_env(&["backup"], &[("DOCKER_HOST", OsStr::new(&host))]);
    out.assert_code(exit::REFUSED).assert_stderr_has("docker");
    assert!(env.backup_files().is_empty());
}

/// No engine socket at all: nothing can be running; warn and back up.
#[test]
fn absent_engine_warns_and_backs_up() {
    let env = TestEnv::new();
    // A machine with no Docker at all: no DOCKER_HOST and no socket file.
    assert!(
        std::env::var_os("DOCKER_HOST").is_none(),
        "test assumes no DOCKER_HOST"
    );
    let out = env.run_env(
        &["backup", "--json"],
        &[(
            "NUWAX_DOCKER_SOCKET",
            OsStr::new("/nonexistent/docker.sock"),
        )],
    );
    out.assert_ok().assert_stderr_has("docker");
    assert!(out.json_as::<BackupDoc>().success);
}

/// An explicitly configured engine that is not there is not "no engine": fail closed.
#[test]
fn configured_but_missing_engine_refuses() {
    let env = TestEnv::new();
    let out = env.run_env(
        &["backup"],
        &[("DOCKER_HOST", OsStr::new("unix:///nonexistent/docker.sock"))],
    );
    out.assert_code(exit::REFUSED)
        .assert_stderr_has("unreachable");
    assert!(env.backup_files().is_empty());
}

/// Rollback stops the project's running containers first, leaves them stopped (and says so),
/// and never touches other projects.
#[test]
fn rollback_stops_the_projects_containers_and_leaves_them_stopped() {
    let env = TestEnv::new();
    let original = env.snapshot_compose();
    let row = env.backup();
    env.mutate();
    let app = run_container(&env.project, "app", "unless-stopped", SERVE);
    let worker = run_container(&env.project, "worker", "always", SERVE);
    let other = run_container(&unique_project(), "app", "unless-stopped", SERVE);

    let out = env.run(&["rollback", &row.id.to_string(), "--force", "--no-start"]);
    out.assert_ok().assert_stderr_has("stopped");
    assert!(!app.is_running(), "state {}", app.state());
    assert!(!worker.is_running(), "state {}", worker.state());
    assert!(
        other.is_running(),
        "another project's container was touched"
    );

    let skip: Vec<&str> = DATA_SCOPE.iter().chain(EXCLUDED).copied().collect();
    assert_same_tree(
        "app scope == archive",
        &except(&original, &skip),
        &except(&env.snapshot_compose(), &skip),
    );
}

/// A damaged archive is refused before anything is stopped: the running service stays up.
#[test]
fn refused_rollback_leaves_running_services_alone() {
    let env = TestEnv::new();
    let row = env.backup();
    env.mutate();
    let before = env.snapshot_compose();
    crate::archutil::flip_middle_byte(std::path::Path::new(&row.file_path));
    let app = run_container(&env.project, "app", "unless-stopped", SERVE);
    env.rollback_data(row.id).assert_code(exit::INTEGRITY);
    assert!(app.is_running(), "state {}", app.state());
    assert_same_tree("compose dir", &before, &env.snapshot_compose());
}

/// DESIGN.md 5.5: without `--no-start` the rollback starts the services again and waits until
/// they run; the one-shot service runs to completion and does not count as down.
#[test]
fn rollback_starts_the_services_again_by_default() {
    let env = TestEnv::new();
    crate::dockerutil::ensure_test_image();
    let row = env.backup();
    env.mutate();
    let out = env.run(&["rollback", &row.id.to_string(), "--force"]);
    out.assert_ok();
    let running = docker_ok(&[
        "ps",
        "--filter",
        &format!("label=com.docker.compose.project={}", env.project),
        "--format",
        "{{.Label \"com.docker.compose.service\"}}",
    ]);
    let mut services: Vec<&str> = running.lines().collect();
    services.sort_unstable();
    assert_eq!(
        services,
        vec!["app", "worker"],
        "running after rollback\n{out}"
    );
}

// ---------------------------------------------------------------------------------------------
// Project naming cannot blind the gate (issue 10, item 9)

/// A running container of the test image carrying exactly these compose labels (plus service
/// `app`, restart `unless-stopped`); removed on drop.
#[track_caller]
fn run_labelled(name: &str, labels: &[(&str, String)]) -> Container {
    ensure_test_image();
    let labels: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .chain([
            "com.docker.compose.service=app".to_string(),
            "nuwax-test=1".to_string(),
        ])
        .collect();
    let mut args = vec!["run", "-d", "--name", name, "--network", "none"];
    args.extend(["--stop-timeout", "5", "--restart", "unless-stopped"]);
    for l in &labels {
        args.extend(["--label", l.as_str()]);
    }
    args.push(test_image());
    args.extend(SERVE);
    let id = docker_ok(&args);
    let container = Container {
        id,
        name: name.to_string(),
    };
    assert!(container.is_running(), "{name} is {}", container.state());
    container
}

/// The project name comes from the env file (`COMPOSE_PROJECT_NAME=_<project>`), as compose
/// derives it; config.toml does not set `[docker] project`.
fn name_from_env_file(env: &TestEnv) -> String {
    let v1 = format!("_{}", env.project);
    std::fs::write(
        env.work.join("config.toml"),
        format!("[versions]\ndocker_service = \"{VERSION}\"\n"),
    )
    .unwrap();
    let dotenv = env.compose_dir().join(".env");
    let mut text = std::fs::read_to_string(&dotenv).unwrap();
    text.push_str(&format!("COMPOSE_PROJECT_NAME={v1}\n"));
    std::fs::write(&dotenv, text).unwrap();
    v1
}

/// docker-compose v1 keeps the leading `_` that compose v2 (and our project name) strips: its
/// running container blocks the backup, and `docker-service stop` (the same listing) stops it.
#[test]
fn container_under_the_v1_spelling_of_the_project_blocks() {
    let env = TestEnv::new();
    let v1 = name_from_env_file(&env);
    let app = run_labelled(
        &format!("v1{v1}_app_1"),
        &[("com.docker.compose.project", v1.clone())],
    );
    let out = env.run(&["backup"]);
    out.assert_code(exit::REFUSED).assert_stderr_has(&app.name);
    assert!(env.list().is_empty() && env.backup_files().is_empty());

    // The status lists it, and stop finds it the same way.
    let out = env.run(&["docker-service", "status", "--json"]);
    out.assert_ok();
    assert!(out.stdout.contains(&app.name), "{out}");
    env.run(&["docker-service", "stop"]).assert_ok();
    assert!(!app.is_running(), "state {}", app.state());
    let row = env.backup();

    // A rollback stops it before it swaps anything.
    docker_ok(&["start", &app.id]);
    env.run(&["rollback", &row.id.to_string(), "--force", "--no-start"])
        .assert_ok();
    assert!(!app.is_running(), "state {}", app.state());
}

/// A container whose compose labels name our compose dir or compose file blocks whatever its
/// project label says (a project renamed since, or `-p` given by hand), also when the label
/// spells the path through a symlink.
#[test]
fn container_labelled_with_our_working_dir_or_compose_file_blocks() {
    let env = TestEnv::new();
    let link = env.root.join("link-to-compose-dir");
    std::os::unix::fs::symlink(env.compose_dir(), &link).unwrap();
    let cases = [
        (
            "com.docker.compose.project.working_dir",
            env.compose_dir().display().to_string(),
        ),
        (
            "com.docker.compose.project.config_files",
            format!(
                "/nonexistent/base.yml,{}",
                link.join("docker-compose.yml").display()
            ),
        ),
    ];
    for (i, (label, value)) in cases.into_iter().enumerate() {
        let other_name = unique_project();
        let app = run_labelled(
            &format!("{other_name}-app-{i}"),
            &[
                ("com.docker.compose.project", other_name.clone()),
                (label, value),
            ],
        );
        env.run(&["backup"])
            .assert_code(exit::REFUSED)
            .assert_stderr_has(&app.name);
        assert!(env.list().is_empty(), "{label}");
    }
    // Gone: the backup passes.
    env.backup();
}

/// Another spelling of our name, recorded by compose for another directory that exists here:
/// ours reached another way, or another deployment? Refused (fail closed) until
/// `[docker] project` says which name is ours.
#[test]
fn ambiguous_spelling_refuses_until_the_project_is_set() {
    let env = TestEnv::new();
    let v1 = name_from_env_file(&env);
    let elsewhere = env.root.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let app = run_labelled(
        &format!("v1{v1}_app_7"),
        &[
            ("com.docker.compose.project", v1.clone()),
            (
                "com.docker.compose.project.working_dir",
                elsewhere.display().to_string(),
            ),
        ],
    );
    let out = env.run(&["backup"]);
    out.assert_code(exit::REFUSED)
        .assert_stderr_has(&app.name)
        .assert_stderr_has("[docker] project")
        .assert_stderr_has(&elsewhere.display().to_string());
    assert!(env.list().is_empty());
    // Stopping services must not guess either.
    env.run(&["docker-service", "stop"])
        .assert_code(exit::REFUSED);
    assert!(app.is_running());

    // The operator names the project: the other spelling elsewhere is another project.
    std::fs::write(
        env.work.join("config.toml"),
        format!(
            "[versions]\ndocker_service = \"{VERSION}\"\n\n[docker]\nproject = \"{}\"\n",
            env.project
        ),
    )
    .unwrap();
    env.backup();
    assert!(app.is_running(), "never touched");
}
