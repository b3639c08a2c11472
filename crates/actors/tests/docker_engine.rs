//! `docker::engine` against the real Docker Engine of this machine.
//!
//! These tests are never skipped: when `docker info` fails they fail, loudly. Each test uses
//! its own compose project name, and a guard removes that project's containers and networks
//! when the test ends, passed or not. The test image is the one the CLI tests use
//! (`nuwax-test-busybox:latest`, made with `docker import` from `/bin/busybox`), built only
//! when the engine does not have it yet.

use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nuwax_actors::docker::engine::{self, Engine};
use nuwax_actors::docker::{
    ComposeProject, ComposeService, ContainerInfo, ContainerState, ProjectIdentity, compose, policy,
};
use nuwax_actors::{Error, Progress, ProgressEvent};

const IMAGE: &str = "nuwax-test-busybox:latest";
/// Same applets as the CLI tests' image, so whichever test builds it first suits both.
const APPLETS: &[&str] = &["sh", "sleep", "true", "touch", "cat", "echo", "test", "ls"];
/// Exits promptly on SIGTERM (a bare `sleep` as PID 1 ignores it).
const SERVE: &str = "trap 'exit 0' TERM; while :; do sleep 1; done";

// ------------------------------------------------------------------------------ helpers

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the docker CLI: {e}"))
}

#[track_caller]
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Fails loudly unless an engine answers, and makes sure the test image exists.
fn setup() {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        let info = docker(&["info", "--format", "{{.ServerVersion}}"]);
        if !info.status.success() {
            return Err(format!(
                "`docker info` failed: {}",
                String::from_utf8_lossy(&info.stderr)
            ));
        }
        if !docker(&["image", "inspect", IMAGE]).status.success() {
            build_image();
        }
        Ok(())
    });
    if let Err(e) = ready {
        panic!("these tests need the Docker Engine on this machine: {e}");
    }
}

fn build_image() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("/bin/busybox (install busybox-static)");
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let tar = dir.path().join("rootfs.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success(), "tar failed");
    docker_ok(&[
        "import",
        "--change",
        "CMD [\"sleep\", \"3600\"]",
        tar.to_str().unwrap(),
        IMAGE,
    ]);
}

/// A unique compose project whose containers and networks are removed on drop.
struct Project {
    name: String,
}

impl Project {
    fn new(tag: &str) -> Project {
        setup();
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        Project {
            name: format!(
                "nuwaxeng{tag}{}x{}x{nanos}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }

    fn label(&self) -> String {
        format!("com.docker.compose.project={}", self.name)
    }

    /// `docker run -d` a container of `service` with compose labels; returns its name.
    fn run(&self, service: &str, extra: &[&str], script: &str) -> String {
        let name = format!("{}-{service}-1", self.name);
        let service_label = format!("com.docker.compose.service={service}");
        let label = self.label();
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "none",
            "--label",
            "nuwax-test=1",
            "--label",
            &label,
            "--label",
            &service_label,
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, "sh", "-c", script]);
        docker_ok(&args);
        name
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let filter = format!("label={}", self.label());
        let owned = format!("label=nuwax-test-owner={}", self.name);
        for (list, remove) in [
            (vec!["ps", "-aq", "--filter", &filter], vec!["rm", "-f"]),
            (vec!["ps", "-aq", "--filter", &owned], vec!["rm", "-f"]),
            (
                vec!["network", "ls", "-q", "--filter", &filter],
                vec!["network", "rm"],
            ),
        ] {
            let Ok(out) = Command::new("docker").args(&list).output() else {
                continue;
            };
            let ids = String::from_utf8_lossy(&out.stdout).into_owned();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = Command::new("docker").args(&remove).args(&ids).output();
            }
        }
    }
}

impl Project {
    /// `docker run -d` a serving container named `name` with exactly these labels (no project
    /// label unless given); removed with the project.
    fn run_labelled(&self, name: &str, labels: &[(&str, &str)]) -> String {
        let owner = format!("nuwax-test-owner={}", self.name);
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args = vec!["run", "-d", "--name", name, "--network", "none"];
        args.extend(["--label", "nuwax-test=1", "--label", &owner]);
        for l in &labels {
            args.extend(["--label", l.as_str()]);
        }
        args.extend([IMAGE, "sh", "-c", SERVE]);
        docker_ok(&args);
        name.to_string()
    }
}

fn inspect(name: &str, format: &str) -> String {
    docker_ok(&["inspect", "-f", format, name])
}

fn time_of(name: &str, field: &str) -> chrono::DateTime<chrono::FixedOffset> {
    let raw = inspect(name, &format!("{{{{.State.{field}}}}}"));
    chrono::DateTime::parse_from_rfc3339(&raw)
        .unwrap_or_else(|e| panic!("{name} {field} {raw:?}: {e}"))
}

#[track_caller]
fn wait_for_state(name: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = inspect(name, "{{.State.Status}}");
        if now == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} is {now}, expected {state}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn engine() -> Engine {
    Engine::connect()
        .await
        .expect("the engine answers")
        .expect("an engine socket exists")
}

fn compose_of(project: &Project, services: &[(&str, Option<&str>)]) -> ComposeProject {
    ComposeProject {
        name: project.name.clone(),
        services: services
            .iter()
            .map(|(name, restart)| {
                (
                    name.to_string(),
                    ComposeService {
                        restart: restart.map(String::from),
                        ..ComposeService::default()
                    },
                )
            })
            .collect(),
        identity: ProjectIdentity::named(&project.name),
    }
}

fn names(entries: &[nuwax_actors::docker::GateEntry]) -> Vec<String> {
    entries.iter().map(|e| e.container.name.clone()).collect()
}

fn by_name<'a>(containers: &'a [ContainerInfo], name: &str) -> &'a ContainerInfo {
    containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("{name} not in {containers:?}"))
}

// -------------------------------------------------------------------------------- tests

#[tokio::test]
async fn connect_fails_closed_unless_there_is_no_socket_at_all() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("docker.sock");
    let regular = dir.path().join("regular-file.sock");
    std::fs::write(&regular, b"not a socket").unwrap();

    // The real engine, through the environment and explicitly.
    let real = engine().await;
    assert!(real.endpoint().starts_with("unix://") || real.endpoint().starts_with("http://"));
    let explicit = Engine::connect_with(Some("unix:///var/run/docker.sock"), false, &missing)
        .await
        .unwrap()
        .expect("engine");
    assert_eq!(explicit.endpoint(), "unix:///var/run/docker.sock");
    assert!(
        explicit
            .project_containers(&ProjectIdentity::named("nuwax-no-such-project"))
            .await
            .unwrap()
            .is_empty()
    );

    // No DOCKER_HOST and no socket file: no engine, not an error.
    assert!(
        Engine::connect_with(None, false, &missing)
            .await
            .unwrap()
            .is_none()
    );

    // Anything configured or present that does not answer: unreachable.
    let cases = [
        (
            Some(format!("unix://{}", missing.display())),
            missing.clone(),
        ),
        (
            Some(format!("unix://{}", regular.display())),
            missing.clone(),
        ),
        (None, regular.clone()),
        (Some("tcp://127.0.0.1:1".to_string()), missing.clone()),
        (Some("ssh://nobody@127.0.0.1".to_string()), missing.clone()),
    ];
    for (host, socket) in cases {
        let started = Instant::now();
        let err = Engine::connect_with(host.as_deref(), false, &socket)
            .await
            .expect_err(&format!("{host:?} / {}", socket.display()));
        assert!(started.elapsed() < Duration::from_secs(15), "bounded");
        match &err {
            Error::DockerUnreachable { endpoint, .. } => {
                // The endpoint as configured, whatever scheme we use to reach it.
                let configured = host.clone().unwrap_or_else(|| socket.display().to_string());
                let expected = configured.rsplit("://").next().unwrap().to_string();
                assert!(endpoint.contains(&expected), "{endpoint} vs {expected}");
            }
            other => panic!("{host:?}: expected DockerUnreachable, got {other:?}"),
        }
        assert_eq!(err.kind(), nuwax_actors::ErrorKind::Refused);
    }
}

#[tokio::test]
async fn gate_blocks_on_persistent_containers_of_its_own_project_only() {
    let a = Project::new("gate");
    let b = Project::new("other");
    let engine = engine().await;

    let db = a.run("db", &["--restart", "unless-stopped"], SERVE);
    let job = a.run("job", &[], SERVE);
    let done = a.run("done", &[], "exit 0");
    // A container whose service is no longer in the compose file, policy `no`: persistent.
    let ghost = a.run("ghost", &[], SERVE);
    let foreign = b.run("db", &["--restart", "always"], SERVE);
    wait_for_state(&done, "exited");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docker-compose.yml");
    std::fs::write(
        &file,
        format!(
            "services:\n  db:\n    image: {IMAGE}\n    restart: unless-stopped\n  job:\n    image: {IMAGE}\n    restart: \"no\"\n  done:\n    image: {IMAGE}\n    restart: false\n"
        ),
    )
    .unwrap();
    let compose = compose::load(&file, None, Some(&a.name)).unwrap();
    assert_eq!(compose.name, a.name);

    let containers = engine
        .project_containers(&ProjectIdentity::named(&a.name))
        .await
        .unwrap();
    let listed: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
    let mut expected = vec![db.as_str(), done.as_str(), ghost.as_str(), job.as_str()];
    expected.sort();
    assert_eq!(listed, expected, "only project {}", a.name);
    assert!(!listed.contains(&foreign.as_str()));

    let db_info = by_name(&containers, &db);
    assert_eq!(db_info.service.as_deref(), Some("db"));
    assert_eq!(db_info.state, ContainerState::Running);
    assert_eq!(db_info.restart_policy, "unless-stopped");
    assert_eq!(db_info.image, IMAGE);
    assert!(
        db_info.image_id.starts_with("sha256:"),
        "{}",
        db_info.image_id
    );
    assert_eq!(db_info.health, None);
    assert_eq!(by_name(&containers, &job).restart_policy, "no");
    assert_eq!(by_name(&containers, &done).state, ContainerState::Exited);

    let report = policy::gate(&a.name, &compose, &containers);
    assert_eq!(names(&report.blocking), [db.clone(), ghost.clone()]);
    assert_eq!(names(&report.warnings), [job.as_str()]);
    assert_eq!(names(&report.stopped), [done.as_str()]);
    assert!(!report.passes());

    // Paused still blocks.
    docker_ok(&["pause", &db]);
    let containers = engine
        .project_containers(&ProjectIdentity::named(&a.name))
        .await
        .unwrap();
    assert_eq!(by_name(&containers, &db).state, ContainerState::Paused);
    let report = policy::gate(&a.name, &compose, &containers);
    assert_eq!(names(&report.blocking), [db.clone(), ghost.clone()]);

    // Stopping the persistent ones (the paused one included) lets the gate pass; the running
    // one-shot only warns. The other project is untouched.
    let blocking: Vec<ContainerInfo> = report
        .blocking
        .iter()
        .map(|e| e.container.clone())
        .collect();
    let stopped = engine.stop_containers(&blocking).await.unwrap();
    assert_eq!(stopped, [db.clone(), ghost.clone()]);
    let containers = engine
        .project_status(&ProjectIdentity::named(&a.name))
        .await
        .unwrap();
    let report = policy::gate(&a.name, &compose, &containers);
    assert!(report.passes(), "{report:?}");
    assert_eq!(names(&report.warnings), [job]);
    assert_eq!(inspect(&foreign, "{{.State.Status}}"), "running");
}

#[tokio::test]
async fn stop_and_start_follow_dependencies_and_own_stop_timeouts() {
    let p = Project::new("order");
    let engine = engine().await;
    let restart = ["--restart", "unless-stopped"];
    let db = p.run("db", &restart, SERVE);
    let app = p.run(
        "app",
        &[
            "--restart",
            "unless-stopped",
            "--label",
            "com.docker.compose.depends_on=db:service_started:false",
        ],
        SERVE,
    );
    let web = p.run(
        "web",
        &[
            "--restart",
            "unless-stopped",
            "--label",
            "com.docker.compose.depends_on=app:service_healthy:true",
        ],
        SERVE,
    );
    // Ignores SIGTERM: only its own 2 s stop timeout (not Docker's default 10 s) ends it.
    let stubborn = p.run(
        "stubborn",
        &["--restart", "unless-stopped", "--stop-timeout", "2"],
        "sleep 3600",
    );

    let containers = engine
        .project_containers(&ProjectIdentity::named(&p.name))
        .await
        .unwrap();
    assert_eq!(by_name(&containers, &web).depends_on, ["app"]);
    assert_eq!(by_name(&containers, &app).depends_on, ["db"]);
    assert_eq!(by_name(&containers, &stubborn).stop_timeout, Some(2));

    let started = Instant::now();
    let stopped = engine.stop_containers(&containers).await.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(9), "stop took {took:?}");
    assert!(
        took >= Duration::from_secs(2),
        "stubborn had to be killed after 2 s: {took:?}"
    );
    let pos = |n: &str| {
        stopped
            .iter()
            .position(|s| s == n)
            .unwrap_or_else(|| panic!("{n} in {stopped:?}"))
    };
    assert!(pos(&web) < pos(&app) && pos(&app) < pos(&db), "{stopped:?}");
    assert_eq!(stopped.len(), 4);
    for name in [&db, &app, &web, &stubborn] {
        assert_eq!(inspect(name, "{{.State.Status}}"), "exited", "{name}");
    }
    assert!(time_of(&web, "FinishedAt") < time_of(&app, "FinishedAt"));
    assert!(time_of(&app, "FinishedAt") < time_of(&db, "FinishedAt"));

    // Stopping again is a no-op.
    assert!(
        engine
            .stop_containers(&containers)
            .await
            .unwrap()
            .is_empty()
    );

    engine.start_containers(&containers).await.unwrap();
    for name in [&db, &app, &web, &stubborn] {
        assert_eq!(inspect(name, "{{.State.Status}}"), "running", "{name}");
    }
    assert!(time_of(&db, "StartedAt") < time_of(&app, "StartedAt"));
    assert!(time_of(&app, "StartedAt") < time_of(&web, "StartedAt"));
    // Starting what already runs is a no-op too.
    let before = time_of(&db, "StartedAt");
    engine.start_containers(&containers).await.unwrap();
    assert_eq!(time_of(&db, "StartedAt"), before);
}

#[tokio::test]
async fn compose_up_then_wait_healthy() {
    let p = Project::new("up");
    let engine = engine().await;
    let dir = tempfile::tempdir().unwrap();
    let docker_dir = dir.path().join("docker");
    std::fs::create_dir(&docker_dir).unwrap();
    let file = docker_dir.join("docker-compose.yml");
    let service = |extra: &str| {
        format!(
            "    image: {IMAGE}\n    network_mode: none\n    labels:\n      nuwax-test: \"1\"\n    command: [\"sh\", \"-c\", \"{SERVE}\"]\n{extra}"
        )
    };
    std::fs::write(
        &file,
        format!(
            "services:\n  db:\n{}  app:\n{}  init:\n    image: {IMAGE}\n    network_mode: none\n    labels:\n      nuwax-test: \"1\"\n    command: [\"true\"]\n    restart: \"no\"\n",
            service("    restart: unless-stopped\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n      interval: 1s\n      timeout: 5s\n      retries: 3\n"),
            service("    restart: ${APP_RESTART:-unless-stopped}\n    depends_on:\n      db:\n        condition: service_healthy\n"),
        ),
    )
    .unwrap();
    let env = docker_dir.join(".env");
    std::fs::write(&env, "APP_RESTART=always\n").unwrap();

    let compose = compose::load(&file, Some(&env), Some(&p.name)).unwrap();
    assert!(compose.services["db"].has_healthcheck);
    assert_eq!(compose.services["app"].restart.as_deref(), Some("always"));
    assert_eq!(compose.services["app"].depends_on, ["db"]);
    assert_eq!(compose.services["init"].restart.as_deref(), Some("no"));

    engine::compose_up(&file, Some(&env), &p.name)
        .await
        .unwrap();

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let progress = Progress::new(tx);
    engine
        .wait_healthy(&compose, &[], Duration::from_secs(60), &progress)
        .await
        .unwrap();
    // One line per container as its state changes: db ends healthy.
    let mut states = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let ProgressEvent::Container { name, state } = event {
            states.push((name, state));
        }
    }
    assert!(
        states
            .iter()
            .any(|(n, s)| n.contains("db") && s == "healthy"),
        "{states:?}"
    );

    let mut containers = engine
        .project_containers(&ProjectIdentity::named(&p.name))
        .await
        .unwrap();
    let db = containers
        .iter()
        .find(|c| c.service.as_deref() == Some("db"))
        .unwrap()
        .clone();
    assert_eq!(db.health.as_deref(), Some("healthy"));
    let app = containers
        .iter()
        .find(|c| c.service.as_deref() == Some("app"))
        .unwrap()
        .clone();
    assert_eq!(app.restart_policy, "always", "the env file was used");

    // Compose v1 writes no depends_on label: the compose file fills it in.
    policy::fill_missing_dependencies(&mut containers, &compose);
    let names: Vec<&str> = policy::start_order(&containers)
        .iter()
        .map(|c| c.service.as_deref().unwrap_or_default())
        .collect();
    let pos = |s: &str| names.iter().position(|n| *n == s).unwrap();
    assert!(pos("db") < pos("app"), "{names:?}");

    // A full stop/start cycle through the engine comes back healthy too.
    let running: Vec<ContainerInfo> = containers
        .iter()
        .filter(|c| c.state == ContainerState::Running)
        .cloned()
        .collect();
    let stopped = engine.stop_containers(&running).await.unwrap();
    assert_eq!(stopped.len(), 2, "{stopped:?}");
    engine.start_containers(&running).await.unwrap();
    engine
        .wait_healthy(
            &compose,
            &stopped,
            Duration::from_secs(60),
            &Progress::none(),
        )
        .await
        .unwrap();

    // A compose file compose rejects: the error carries compose's own message.
    let bad = docker_dir.join("bad-compose.yml");
    std::fs::write(
        &bad,
        format!("services:\n  app:\n    image: {IMAGE}\n    depends_on: [nuwaxmissingservice]\n"),
    )
    .unwrap();
    let err = engine::compose_up(&bad, None, &p.name).await.unwrap_err();
    assert!(matches!(err, Error::Docker(_)), "{err:?}");
    assert!(err.to_string().contains("nuwaxmissingservice"), "{err}");
}

#[tokio::test]
async fn wait_healthy_names_what_failed_or_is_not_ready() {
    let p = Project::new("health");
    let engine = engine().await;
    let crash = p.run("crash", &[], "echo boom-from-crash >&2; exit 3");
    let sick = p.run(
        "sick",
        &[
            "--restart",
            "unless-stopped",
            "--health-cmd",
            "echo sick-probe-output; exit 1",
            "--health-interval",
            "1s",
            "--health-retries",
            "1",
        ],
        SERVE,
    );
    let slow = p.run(
        "slow",
        &[
            "--restart",
            "unless-stopped",
            "--health-cmd",
            "exit 1",
            "--health-interval",
            "1s",
            "--health-start-period",
            "300s",
        ],
        SERVE,
    );
    let job = p.run("job", &[], "exit 1");
    wait_for_state(&crash, "exited");
    wait_for_state(&job, "exited");
    // `crash` has no `restart:` key: persistent. `job` says "no": one-shot.
    let compose = compose_of(
        &p,
        &[
            ("crash", None),
            ("sick", Some("always")),
            ("slow", Some("always")),
            ("job", Some("no")),
            ("loop", Some("always")),
        ],
    );
    let wait = |only: Vec<String>, secs: u64| {
        let engine = engine.clone();
        let compose = compose.clone();
        async move {
            engine
                .wait_healthy(
                    &compose,
                    &only,
                    Duration::from_secs(secs),
                    &Progress::none(),
                )
                .await
        }
    };

    // The error of a wait that must fail, and how long it took to come.
    let fail = |only: Vec<String>, secs: u64| {
        let wait = wait(only, secs);
        async move {
            let started = Instant::now();
            let err = wait.await.unwrap_err().to_string();
            (err, started.elapsed())
        }
    };

    let (err, _) = fail(vec![crash.clone()], 20).await;
    assert!(err.contains(&crash), "{err}");
    assert!(err.contains("exited with code 3"), "{err}");
    assert!(err.contains("boom-from-crash"), "{err}");

    let (err, took) = fail(vec!["sick".to_string()], 30).await;
    assert!(
        took < Duration::from_secs(25),
        "fails fast, not at the timeout"
    );
    assert!(err.contains(&sick), "{err}");
    assert!(err.contains("unhealthy"), "{err}");
    assert!(err.contains("sick-probe-output"), "{err}");

    // A crash loop under `restart: always` fails once it is seen restarting, not at the
    // timeout (it is "restarting" or briefly "running" all along). Started now: the
    // engine's restart back-off doubles with every restart.
    let looping = p.run(
        "loop",
        &["--restart", "always"],
        "echo boom-from-loop >&2; exit 4",
    );
    let (err, took) = fail(vec!["loop".to_string()], 120).await;
    assert!(
        took < Duration::from_secs(90),
        "fails fast, not at the timeout: {err}"
    );
    assert!(err.contains(&looping), "{err}");
    assert!(err.contains("crash-looping"), "{err}");
    assert!(err.contains("last exit code 4"), "{err}");
    assert!(err.contains("boom-from-loop"), "{err}");

    // Failing probes inside the start period: not ready, so the timeout names it.
    let (err, took) = fail(vec![slow.clone(), "ghost".to_string()], 3).await;
    assert!(took < Duration::from_secs(10), "bounded by the timeout");
    assert!(err.contains("not ready after 3s"), "{err}");
    assert!(err.contains(&slow) && err.contains("starting"), "{err}");
    assert!(err.contains("ghost (no container)"), "{err}");

    // A one-shot container that exited is not waited for.
    wait(vec![job.clone()], 5).await.unwrap();
    // Without a selection every persistent container counts: the crashed one fails it.
    let (err, _) = fail(Vec::new(), 5).await;
    assert!(err.contains(&crash), "{err}");
}

#[tokio::test]
async fn start_waits_for_healthy_or_completed_dependencies() {
    let p = Project::new("deps");
    let engine = engine().await;
    let init = p.run("init", &[], "exit 0");
    // Healthy two seconds after each start (/tmp is a fresh tmpfs every time).
    let db = p.run(
        "db",
        &[
            "--restart",
            "unless-stopped",
            "--tmpfs",
            "/tmp",
            "--health-cmd",
            "test -e /tmp/ready",
            "--health-interval",
            "1s",
        ],
        &format!("sleep 2; touch /tmp/ready; {SERVE}"),
    );
    let app = p.run(
        "app",
        &[
            "--restart",
            "unless-stopped",
            "--label",
            "com.docker.compose.depends_on=init:service_completed_successfully:false,db:service_healthy:false",
        ],
        SERVE,
    );
    wait_for_state(&init, "exited");
    let containers = engine
        .project_containers(&ProjectIdentity::named(&p.name))
        .await
        .unwrap();
    let stopped = engine.stop_containers(&containers).await.unwrap();
    assert_eq!(stopped, [app.clone(), db.clone()]);

    engine.start_containers(&containers).await.unwrap();
    assert_eq!(inspect(&init, "{{.State.ExitCode}}"), "0");
    assert_eq!(inspect(&db, "{{.State.Health.Status}}"), "healthy");
    assert_eq!(inspect(&app, "{{.State.Status}}"), "running");
    let gap = time_of(&app, "StartedAt").signed_duration_since(time_of(&db, "StartedAt"));
    assert!(
        gap >= chrono::TimeDelta::seconds(2),
        "app started {gap} after db"
    );
}

/// Discovery finds the project under every spelling compose implementations give its name and
/// by compose's working-dir / config-file labels, de-duplicated; an ambiguous running
/// container refuses unless the name is explicit.
#[tokio::test]
async fn project_containers_by_every_spelling_and_by_compose_labels() {
    let p = Project::new("disc");
    let engine = engine().await;
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let compose_dir = root.join(format!("_{}", p.name));
    let elsewhere = root.join("elsewhere");
    std::fs::create_dir(&compose_dir).unwrap();
    std::fs::create_dir(&elsewhere).unwrap();
    let file = compose_dir.join("docker-compose.yml");
    std::fs::write(&file, format!("services:\n  db:\n    image: {IMAGE}\n")).unwrap();
    let compose = compose::load(&file, None, None).unwrap();
    assert_eq!(compose.name, p.name, "compose v2 strips the leading _");
    let v1 = format!("_{}", p.name);
    let wd = compose_dir.display().to_string();
    let cfg = file.display().to_string();
    let other_wd = elsewhere.display().to_string();
    let renamed = format!("{}renamed", p.name);

    let v2c = p.run_labelled(&format!("{}-v2", p.name), &[(discovery_label(), &p.name)]);
    let v1c = p.run_labelled(&format!("v1{}", p.name), &[(discovery_label(), &v1)]);
    let by_wd = p.run_labelled(
        &format!("{}-wd", p.name),
        &[
            (discovery_label(), &renamed),
            ("com.docker.compose.project.working_dir", &wd),
        ],
    );
    // Both a spelling and the labels: listed once.
    let both = p.run_labelled(
        &format!("{}-both", p.name),
        &[
            (discovery_label(), &v1),
            ("com.docker.compose.project.config_files", &cfg),
            ("com.docker.compose.project.working_dir", &wd),
        ],
    );
    let foreign = p.run_labelled(
        &format!("{}-foreign", p.name),
        &[
            (discovery_label(), &renamed),
            ("com.docker.compose.project.working_dir", &other_wd),
        ],
    );
    let containers = engine.project_containers(&compose.identity).await.unwrap();
    let listed: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
    let mut expected = vec![v2c.as_str(), v1c.as_str(), by_wd.as_str(), both.as_str()];
    expected.sort();
    assert_eq!(listed, expected);
    assert!(!listed.contains(&foreign.as_str()));
    // The gate blocks on all of them; the health wait sees them too.
    let report = policy::gate(&compose.name, &compose, &containers);
    assert_eq!(report.blocking.len(), 4, "{report:?}");

    // Another spelling recorded for another existing dir: refused while it runs...
    let odd = p.run_labelled(
        &format!("{}-odd", p.name),
        &[
            (discovery_label(), &v1),
            ("com.docker.compose.project.working_dir", &other_wd),
        ],
    );
    let err = engine
        .project_containers(&compose.identity)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), nuwax_actors::ErrorKind::Refused, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&odd) && msg.contains("[docker] project"),
        "{msg}"
    );
    // ... not when the name is explicit ...
    let explicit = compose::load(&file, None, Some(&v1)).unwrap();
    assert!(explicit.identity.explicit);
    let listed = engine.project_containers(&explicit.identity).await.unwrap();
    assert!(!listed.iter().any(|c| c.name == odd), "{listed:?}");
    assert_eq!(listed.len(), 4);
    // ... and not once it is stopped (it hides nothing running).
    docker_ok(&["stop", "-t", "1", &odd]);
    let listed = engine.project_containers(&compose.identity).await.unwrap();
    assert_eq!(listed.len(), 4);
}

fn discovery_label() -> &'static str {
    nuwax_actors::docker::discovery::PROJECT_LABEL
}
