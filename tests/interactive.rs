//! The interactive paths on a real terminal: `script(1)` gives the binary a pty, so stdin and
//! stderr are terminals, as for an operator at a shell.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::util::{BIN, TestEnv, exit};

/// Runs `nuwax-cli -C <work> <args>` on a pty, typing `input`; returns (exit code, screen).
fn on_terminal(env: &TestEnv, args: &str, input: &str) -> (Option<i32>, String) {
    let cmd = format!("{BIN} -C {} {args}", env.work.display());
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .current_dir(&env.cwd)
        .env("TERM", "dumb")
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run script(1)");
    {
        let mut stdin = child.stdin.take().unwrap();
        // Give the prompts time to appear before each answer, as a person would.
        for line in input.lines() {
            std::thread::sleep(std::time::Duration::from_millis(700));
            stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(700));
    }
    let out = child.wait_with_output().unwrap();
    let screen =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), screen)
}

#[test]
fn interactive_selection_shows_catalog_ids_and_confirms() {
    let env = TestEnv::new();
    let first = env.backup();
    let second = env.backup();
    env.mutate();
    // An id that is not listed is refused and asked again; then a real id and `yes`.
    let (code, screen) = on_terminal(
        &env,
        "rollback --no-start",
        &format!("999\n{}\nyes", first.id),
    );
    assert_eq!(code, Some(exit::OK), "{screen}");
    assert!(
        screen.contains(&format!("\n{}  ", second.id)),
        "catalog IDs listed:\n{screen}"
    );
    assert!(screen.contains("\"999\" is not one of the IDs"), "{screen}");
    assert!(screen.contains("[y/N]"), "{screen}");
    assert!(
        screen.contains(&format!("from backup {}", first.id)),
        "{screen}"
    );
}

#[test]
fn answering_no_changes_nothing() {
    let env = TestEnv::new();
    let row = env.backup();
    env.mutate();
    let before = env.snapshot_compose();
    let (code, screen) = on_terminal(&env, &format!("rollback {} --no-start", row.id), "n");
    assert_eq!(code, Some(exit::USAGE), "{screen}");
    assert!(screen.contains("cancelled"), "{screen}");
    assert_eq!(env.snapshot_compose(), before);
}
