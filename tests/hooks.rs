//! Host hooks (`[hooks]`), notifications (`[notify]`) and monitoring (`auto-backup status
//! --max-age`), issue 15 items 3-5: real `sh` hooks writing what they see into files, a real
//! HTTP server on 127.0.0.1 (a std `TcpListener` thread) receiving the webhook's POST, a
//! closed port for a webhook that is down, and a real container for "nothing was stopped".

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use crate::dockerutil::{SERVE, inspect, require_docker, run_container};
use crate::util::{TestEnv, exit};

/// Appends `text` to the env's `config.toml`.
fn configure(env: &TestEnv, text: &str) {
    let path = env.work.join("config.toml");
    let mut config = fs::read_to_string(&path).unwrap();
    config.push('\n');
    config.push_str(text);
    fs::write(path, config).unwrap();
}

/// A dir outside the working dir where hooks write what they saw.
fn out_dir(env: &TestEnv) -> PathBuf {
    let dir = env.root.join("hook-out");
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A hook (for `sh -c`) that records its `NUWAX_*` environment in `dir/name.env`.
fn record_env(dir: &Path, name: &str) -> String {
    format!(
        "env | grep '^NUWAX_' | sort > '{}'",
        dir.join(format!("{name}.env")).display()
    )
}

/// The `NUWAX_*` variables a hook recorded with [`record_env`].
#[track_caller]
fn recorded(dir: &Path, name: &str) -> BTreeMap<String, String> {
    let path = dir.join(format!("{name}.env"));
    let text = fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("the {name} hook did not run ({}: {e})", path.display()));
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

// --------------------------------------------------------------------------------- hooks

#[test]
fn hooks_run_around_a_backup_with_their_environment_and_output() {
    let env = TestEnv::new();
    let dir = out_dir(&env);
    configure(
        &env,
        &format!(
            "[hooks]\npre_backup = \"echo pre says hi; {}\"\npost_backup = [\"sh\", \"-c\", \"echo post says bye >&2; {}\"]\n",
            record_env(&dir, "pre").replace('"', "\\\""),
            record_env(&dir, "post").replace('"', "\\\""),
        ),
    );
    let row = env.backup();
    let out = env.run(&["list-backups"]);
    out.assert_ok();
    let pre = recorded(&dir, "pre");
    assert_eq!(pre["NUWAX_OPERATION"], "backup");
    assert_eq!(pre["NUWAX_HOOK"], "pre_backup");
    assert_eq!(pre["NUWAX_STATUS"], "running");
    assert_eq!(pre["NUWAX_BACKUP_ID"], "");
    assert_eq!(pre["NUWAX_WORK_DIR"], env.work.display().to_string());
    let post = recorded(&dir, "post");
    assert_eq!(post["NUWAX_STATUS"], "success");
    assert_eq!(post["NUWAX_BACKUP_ID"], row.id.to_string());
    assert_eq!(post["NUWAX_ARCHIVE"], row.file_path);
    assert_eq!(post["NUWAX_ERROR"], "");

    // The hooks' output goes to stderr, line by line, named; stdout keeps data only.
    let out = env.run(&["backup"]);
    out.assert_ok().assert_stdout_empty();
    assert!(out.stderr.contains("pre_backup: pre says hi"), "{out}");
    assert!(out.stderr.contains("post_backup: post says bye"), "{out}");
}

#[test]
fn a_failing_pre_backup_hook_aborts_before_anything_and_runs_on_failure() {
    let env = TestEnv::new();
    let dir = out_dir(&env);
    configure(
        &env,
        &format!(
            "[hooks]\npre_backup = \"echo cannot flush the cache >&2; exit 3\"\non_failure = \"{}\"\npost_backup = \"{}\"\n",
            record_env(&dir, "failure"),
            record_env(&dir, "post"),
        ),
    );
    let live = env.snapshot_compose();
    let out = env.run(&["backup", "--json"]);
    out.assert_code(exit::FAILED);
    let doc = out.json();
    assert_eq!(doc["success"], false, "{out}");
    assert_eq!(doc["error_kind"], "hook_failed", "{out}");
    let error = doc["error"].as_str().unwrap();
    for needle in [
        "pre_backup hook",
        "exited with status 3",
        "cannot flush the cache",
        "nothing was stopped or changed",
    ] {
        assert!(error.contains(needle), "{needle:?} missing: {error}");
    }
    assert!(env.list().is_empty(), "a backup row was written");
    assert!(env.backup_files().is_empty(), "an archive was written");
    assert_eq!(env.snapshot_compose(), live);
    let failure = recorded(&dir, "failure");
    assert_eq!(failure["NUWAX_OPERATION"], "backup");
    assert_eq!(failure["NUWAX_STATUS"], "failed");
    assert!(
        failure["NUWAX_ERROR"].contains("exited with status 3"),
        "{failure:?}"
    );
    assert!(
        !dir.join("post.env").exists(),
        "post_backup ran after a failure"
    );
}

#[test]
fn auto_backup_status_records_a_run_its_pre_hook_stopped() {
    let env = TestEnv::new();
    configure(&env, "[hooks]\npre_backup = \"exit 6\"\n");
    let out = env.run(&["auto-backup", "run"]);
    out.assert_code(exit::FAILED);
    out.assert_stderr_has("pre_backup hook `exit 6` exited with status 6");
    let doc = env.run_json(&["auto-backup", "status", "--json"]);
    assert_eq!(doc["last_result"], "failed", "{doc}");
    assert!(
        doc["last_error"]
            .as_str()
            .unwrap()
            .contains("exited with status 6"),
        "{doc}"
    );
    assert!(doc["last_backup_id"].is_null(), "{doc}");
}

#[test]
fn a_failing_post_hook_is_reported_and_changes_nothing() {
    let env = TestEnv::new();
    configure(&env, "[hooks]\npost_backup = \"echo oops; exit 5\"\n");
    // Reported also under --quiet (cron mails it), yet the backup succeeded: exit 0.
    let out = env.run(&["-q", "backup"]);
    out.assert_ok();
    out.assert_stderr_has("error: post_backup hook `echo oops; exit 5` exited with status 5");
    out.assert_stderr_has("result is unchanged");
    let rows = env.list();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "Completed");
}

/// Whether `pid` is a live process (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[track_caller]
fn assert_gone_soon(pid: u32, what: &str) {
    for _ in 0..500 {
        if !alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what}: process {pid} still runs");
}

#[test]
fn a_hook_that_times_out_is_killed_with_its_children() {
    let env = TestEnv::new();
    let dir = out_dir(&env);
    let pid_file = dir.join("child.pid");
    configure(
        &env,
        &format!(
            "[hooks]\ntimeout = 1\npre_backup = \"sleep 300 & echo $! > '{}'; wait\"\n",
            pid_file.display()
        ),
    );
    let out = env.run(&["backup"]);
    out.assert_code(exit::FAILED);
    out.assert_stderr_has("pre_backup hook");
    out.assert_stderr_has("timed out after 1 s and was killed");
    let pid: u32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_gone_soon(pid, "the hook's background child");
    assert!(env.list().is_empty());
}

#[test]
fn ctrl_c_during_a_hook_kills_it_and_exits_130() {
    let env = TestEnv::new();
    let dir = out_dir(&env);
    let pid_file = dir.join("child.pid");
    configure(
        &env,
        &format!(
            "[hooks]\npre_backup = \"sleep 300 & echo $! > '{}'; wait\"\n",
            pid_file.display()
        ),
    );
    let child = crate::signals::spawn(&env, &["backup"], &[]);
    crate::signals::wait_until("the hook to start", Duration::from_secs(60), || {
        fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n'))
    });
    crate::signals::send(&child, libc::SIGINT);
    let out = crate::signals::finish(child, &["backup"], Duration::from_secs(30));
    out.assert_code(130);
    let pid: u32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_gone_soon(pid, "the interrupted hook's child");
    assert!(env.backup_files().is_empty());
}

#[test]
fn a_failing_pre_rollback_hook_stops_nothing_and_post_rollback_sees_the_rollback() {
    require_docker();
    let env = TestEnv::new();
    let dir = out_dir(&env);
    let row = env.backup();
    // An app change only: the compose file stays, so the rollback restarts the container.
    fs::write(env.path("app/VERSION"), b"2.0.0\n").unwrap();
    let mutated = env.snapshot_compose();
    let db = run_container(&env.project, "db", "unless-stopped", SERVE);
    let started = inspect(&db.id, "{{.State.StartedAt}}");
    configure(
        &env,
        "[hooks]\npre_rollback = \"echo not now >&2; exit 4\"\n",
    );
    let id = row.id.to_string();
    let out = env.run(&["rollback", &id, "--force"]);
    out.assert_code(exit::FAILED);
    out.assert_stderr_has("pre_rollback hook `echo not now >&2; exit 4` exited with status 4");
    out.assert_stderr_has("not now");
    assert!(db.is_running(), "the container was stopped\n{out}");
    assert_eq!(
        inspect(&db.id, "{{.State.StartedAt}}"),
        started,
        "the container was restarted\n{out}"
    );
    assert_eq!(env.snapshot_compose(), mutated, "live data changed\n{out}");

    // With a passing pre hook the rollback runs; post_rollback sees what it restored.
    env.write_config(crate::util::VERSION);
    configure(
        &env,
        &format!(
            "[hooks]\npre_rollback = \"true\"\npost_rollback = \"{}\"\n",
            record_env(&dir, "post")
        ),
    );
    let out = env.run(&["rollback", &id, "--force"]);
    out.assert_ok();
    let post = recorded(&dir, "post");
    assert_eq!(post["NUWAX_OPERATION"], "rollback");
    assert_eq!(post["NUWAX_SCOPE"], "app");
    assert_eq!(post["NUWAX_STATUS"], "success");
    assert_eq!(post["NUWAX_BACKUP_ID"], id);
    assert_eq!(post["NUWAX_ARCHIVE"], row.file_path);
    assert!(db.is_running(), "not started again\n{out}");
    assert_ne!(fs::read(env.path("app/VERSION")).unwrap(), b"2.0.0\n");
}

#[test]
fn invalid_hooks_and_notify_settings_are_config_errors() {
    for text in [
        "[hooks]\npre_bakup = \"true\"\n",
        "[hooks]\npre_backup = \"\"\n",
        "[notify]\nwebhook = \"ftp://example.com/x\"\n",
        "[notify]\non = [\"sometimes\"]\n",
    ] {
        let env = TestEnv::new();
        configure(&env, text);
        let out = env.run(&["backup"]);
        out.assert_code(exit::USAGE);
        out.assert_stderr_has("invalid configuration");
        assert!(env.backup_files().is_empty(), "{text}");
    }
}

// ----------------------------------------------------------------------------- notifications

/// One request the test server received.
struct Request {
    method: String,
    path: String,
    content_type: String,
    body: serde_json::Value,
}

/// An HTTP server on 127.0.0.1 answering every request with `200 OK`; returns its port and
/// the requests it receives.
fn webhook_server() -> (u16, mpsc::Receiver<Request>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let mut parts = line.split_whitespace();
            let (method, path) = (
                parts.next().unwrap_or("").to_owned(),
                parts.next().unwrap_or("").to_owned(),
            );
            let (mut length, mut content_type) = (0usize, String::new());
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                let header = header.trim_end();
                if header.is_empty() {
                    break;
                }
                if let Some((k, v)) = header.split_once(':') {
                    match k.to_ascii_lowercase().as_str() {
                        "content-length" => length = v.trim().parse().unwrap(),
                        "content-type" => content_type = v.trim().to_owned(),
                        _ => {}
                    }
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = tx.send(Request {
                method,
                path,
                content_type,
                body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            });
        }
    });
    (port, rx)
}

#[test]
fn the_webhook_receives_each_result_as_json() {
    let env = TestEnv::new();
    let (port, requests) = webhook_server();
    configure(
        &env,
        &format!(
            "[notify]\nwebhook = \"http://127.0.0.1:{port}/hooks/t0ken\"\non = [\"always\"]\n"
        ),
    );
    let row = env.backup();
    let req = requests
        .recv_timeout(Duration::from_secs(30))
        .expect("no POST");
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/hooks/t0ken");
    assert_eq!(req.content_type, "application/json");
    let b = &req.body;
    assert_eq!(b["operation"], "backup", "{b}");
    assert_eq!(b["status"], "success", "{b}");
    assert_eq!(b["backup_id"], row.id, "{b}");
    assert_eq!(b["archive"], row.file_path.as_str(), "{b}");
    assert!(b["error"].is_null(), "{b}");
    assert!(!b["host"].as_str().unwrap().is_empty(), "{b}");
    assert!(b["time"].as_str().unwrap().ends_with('Z'), "{b}");

    // The default (`on = ["failure"]`): a success sends nothing, a failure is sent.
    env.write_config(crate::util::VERSION);
    configure(
        &env,
        &format!(
            "[notify]\nwebhook = \"http://127.0.0.1:{port}/hooks/t0ken\"\n[hooks]\npre_rollback = \"exit 9\"\n"
        ),
    );
    env.backup();
    let out = env.run(&["rollback", &row.id.to_string(), "--force"]);
    out.assert_code(exit::FAILED);
    let req = requests
        .recv_timeout(Duration::from_secs(30))
        .expect("no POST");
    let b = &req.body;
    assert_eq!(b["operation"], "rollback", "the success was notified: {b}");
    assert_eq!(b["status"], "failed", "{b}");
    assert_eq!(b["backup_id"], row.id, "{b}");
    assert!(
        b["error"]
            .as_str()
            .unwrap()
            .contains("exited with status 9"),
        "{b}"
    );
    assert!(
        !out.stderr.contains("t0ken"),
        "the webhook's path (a token) was shown\n{out}"
    );
}

#[test]
fn a_webhook_that_is_down_never_changes_the_exit_code() {
    let env = TestEnv::new();
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    configure(
        &env,
        &format!(
            "[notify]\nwebhook = \"http://127.0.0.1:{port}/x\"\non = [\"always\"]\nattempts = 2\ntimeout = 2\n"
        ),
    );
    let out = env.run(&["-q", "backup", "--json"]);
    out.assert_ok();
    assert_eq!(out.json()["success"], true, "{out}");
    out.assert_stderr_has(&format!(
        "the notification of this backup to the webhook at http://127.0.0.1:{port} failed"
    ));
    out.assert_stderr_has("tried 2 times");
    assert_eq!(env.list()[0].status, "Completed");

    // A failed operation keeps its own exit code and message.
    configure(&env, "[hooks]\npre_backup = \"exit 2\"\n");
    let out = env.run(&["backup"]);
    out.assert_code(exit::FAILED);
    out.assert_stderr_has("pre_backup hook `exit 2` exited with status 2");
    out.assert_stderr_has("notification of this backup");
}

#[test]
fn the_notify_command_gets_the_result_on_stdin_and_in_its_environment() {
    let env = TestEnv::new();
    let dir = out_dir(&env);
    let note = dir.join("note.json");
    configure(
        &env,
        &format!(
            "[notify]\ncommand = \"cat > '{}'; {}\"\non = [\"success\"]\n",
            note.display(),
            record_env(&dir, "notify")
        ),
    );
    let row = env.backup();
    let body: serde_json::Value = serde_json::from_slice(&fs::read(&note).unwrap()).unwrap();
    assert_eq!(body["operation"], "backup");
    assert_eq!(body["status"], "success");
    assert_eq!(body["backup_id"], row.id);
    assert_eq!(recorded(&dir, "notify")["NUWAX_STATUS"], "success");
}

// ------------------------------------------------------------------------------- monitoring

#[test]
fn auto_backup_status_max_age_fails_when_the_last_success_is_missing_or_old() {
    let env = TestEnv::new();
    let out = env.run(&["auto-backup", "status", "--max-age", "26h", "--json"]);
    out.assert_code(exit::FAILED);
    let doc = out.json();
    assert_eq!(doc["stale"], true, "{out}");
    assert_eq!(doc["error_kind"], "stale_backup", "{out}");
    assert!(doc["last_success_id"].is_null(), "{out}");
    assert_eq!(doc["max_age_seconds"], 26 * 3600, "{out}");
    assert!(
        doc["error"]
            .as_str()
            .unwrap()
            .contains("no successful backup"),
        "{out}"
    );

    let row = env.backup();
    let out = env.run(&["auto-backup", "status", "--max-age", "26h", "--json"]);
    out.assert_ok();
    let doc = out.json();
    assert_eq!(doc["stale"], false, "{out}");
    assert_eq!(doc["last_success_id"], row.id, "{out}");
    assert!(doc["last_success_age_seconds"].as_u64().unwrap() < 26 * 3600);
    // Without --max-age it never fails, and says nothing about staleness.
    let doc = env.run_json(&["auto-backup", "status", "--json"]);
    assert!(doc["stale"].is_null());
    assert_eq!(doc["last_success_id"], row.id);

    std::thread::sleep(Duration::from_millis(2100));
    let out = env.run(&["auto-backup", "status", "--max-age", "1s"]);
    out.assert_code(exit::FAILED);
    out.assert_stderr_has(&format!("the last successful backup ({}", row.id));
    out.assert_stderr_has("old, more than --max-age 1s");
    assert!(out.stdout.contains("last success: backup"), "{out}");

    let out = env.run(&["auto-backup", "status", "--max-age", "soon"]);
    out.assert_code(exit::USAGE);
}
