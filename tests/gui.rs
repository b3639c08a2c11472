//! What a GUI and packagers rely on: every `--json` document's envelope (also on failure),
//! `--progress json` lines, shell completions and the man page.

use std::collections::BTreeMap;
use std::fs;

use serde::Deserialize;

use crate::util::{Fixture, Output, TestEnv, error_message, exit};

/// Asserts stdout is exactly one document with the envelope, `success` agreeing with the exit
/// code, `exit_code` the process's code, and `error` (the message, a string as the original
/// GUI reads it) and `error_kind` set exactly when it failed.
#[track_caller]
fn assert_envelope(out: &Output) -> serde_json::Value {
    let doc = out.json();
    assert_eq!(doc["schema_version"], 1, "{out}");
    let code = out.code.expect("exited");
    assert_eq!(doc["success"], code == 0, "{out}");
    assert_eq!(doc["exit_code"], code, "{out}");
    if code == 0 {
        assert!(doc["error"].is_null(), "{out}");
        assert!(doc["error_kind"].is_null(), "{out}");
    } else {
        let message = doc["error"]
            .as_str()
            .unwrap_or_else(|| panic!("error is a string: {out}"));
        assert!(!message.is_empty(), "{out}");
        let kind = doc["error_kind"]
            .as_str()
            .unwrap_or_else(|| panic!("error_kind: {out}"));
        assert!(
            !kind.is_empty() && kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "error_kind is a snake_case name: {out}"
        );
    }
    doc
}

#[test]
fn every_json_document_has_schema_version_success_and_error() {
    let env = TestEnv::new();
    let first = env.backup();
    let second = env.backup();
    let (a, b) = (first.id.to_string(), second.id.to_string());
    let commands: Vec<Vec<&str>> = vec![
        vec!["backup", "--json"],
        vec!["list-backups", "--json"],
        vec!["rollback", "--list-json"],
        vec!["verify", &a, "--json"],
        vec!["verify", "--all", "--json"],
        vec!["prune", "--keep-last", "5", "--dry-run", "--json"],
        vec!["reindex", "--json"],
        vec!["recover", "--json"],
        vec!["auto-backup", "status", "--json"],
        vec!["rollback", &b, "--force", "--no-start", "--json"],
        vec!["delete-backup", &a, "--force", "--json"],
    ];
    for args in commands {
        let out = env.run(&args);
        out.assert_ok();
        assert_envelope(&out);
    }
}

#[test]
fn a_failing_command_still_prints_one_document_with_kind_and_exit_code() {
    let env = TestEnv::new();
    let row = env.backup();
    let id = row.id.to_string();
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["rollback", "999", "--force", "--json"],
            exit::USAGE,
            "backup_not_found",
        ),
        (
            vec!["verify", "999", "--json"],
            exit::USAGE,
            "backup_not_found",
        ),
        // No terminal and no --force: the missing confirmation is a usage error.
        (vec!["rollback", &id, "--json"], exit::USAGE, "usage"),
        // clap refuses the argument before anything runs: still one document.
        (vec!["rollback", "abc", "--json"], exit::USAGE, "usage"),
        (
            vec!["list-backups", "--json", "--bogus"],
            exit::USAGE,
            "usage",
        ),
    ];
    for (args, code, kind) in cases {
        let out = env.run(&args);
        out.assert_code(code);
        let doc = assert_envelope(&out);
        assert_eq!(doc["error_kind"], kind, "{out}");
        assert!(
            out.stderr.contains(error_message(&doc)),
            "stderr says the same as the document\n{out}"
        );
    }

    // A damaged archive: verify's own document, with its results, and exit 4.
    let mut bytes = fs::read(&row.file_path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&row.file_path, bytes).unwrap();
    let out = env.run(&["verify", &id, "--json"]);
    out.assert_code(exit::INTEGRITY);
    let doc = assert_envelope(&out);
    assert_eq!(doc["error_kind"], "verification_failed", "{out}");
    assert_eq!(doc["results"][0]["ok"], false, "{out}");
}

#[test]
fn a_failed_list_keeps_the_original_tools_shape() {
    let env = TestEnv::new();
    env.backup();
    fs::write(
        env.db_file(),
        b"this is not an SQLite database, not at all......",
    )
    .unwrap();
    for args in [["list-backups", "--json"], ["rollback", "--list-json"]] {
        let out = env.run(&args);
        out.assert_code(exit::FAILED);
        let doc = assert_envelope(&out);
        assert_eq!(doc["backups"], serde_json::json!([]), "{out}");
        assert_eq!(doc["error_kind"], "catalog", "{out}");
    }
}

/// One `--progress json` line: every key, always (strict).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Line {
    event: String,
    phase: Option<String>,
    bytes_done: Option<u64>,
    bytes_total: Option<u64>,
    items_done: Option<u64>,
    items_total: Option<u64>,
    item: Option<String>,
    elapsed_ms: u64,
    rate: Option<f64>,
    eta_ms: Option<u64>,
    state: Option<String>,
    level: Option<String>,
    message: Option<String>,
}

/// Parses every stderr line and checks what a progress bar needs: time never goes back,
/// phases open and close in pairs, counters only grow within a phase and stay within their
/// totals. Returns the lines.
#[track_caller]
fn progress_lines(out: &Output) -> Vec<Line> {
    let lines: Vec<Line> = out
        .stderr
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("stderr line is not a progress object: {e}: {l}\n{out}"))
        })
        .collect();
    assert!(!lines.is_empty(), "{out}");
    let mut open: Option<String> = None;
    let mut last = (0u64, 0u64);
    let mut elapsed = 0;
    for l in &lines {
        assert!(
            l.elapsed_ms >= elapsed,
            "elapsed_ms went back at {l:?}\n{out}"
        );
        elapsed = l.elapsed_ms;
        match l.event.as_str() {
            "phase_start" => {
                assert!(open.is_none(), "phase started inside another: {l:?}\n{out}");
                open = l.phase.clone();
                assert!(open.is_some(), "{l:?}");
                last = (0, 0);
            }
            "progress" | "phase_end" => {
                assert_eq!(l.phase, open, "{l:?}\n{out}");
                let now = (l.bytes_done.unwrap(), l.items_done.unwrap());
                assert!(
                    now.0 >= last.0 && now.1 >= last.1,
                    "counters went back: {last:?} -> {l:?}\n{out}"
                );
                if let Some(t) = l.bytes_total {
                    assert!(now.0 <= t, "{l:?}");
                }
                last = now;
                if l.event == "phase_end" {
                    open = None;
                }
            }
            "container" => assert!(l.item.is_some() && l.state.is_some(), "{l:?}"),
            "message" => assert!(l.level.is_some() && l.message.is_some(), "{l:?}"),
            other => panic!("unknown event {other}: {l:?}\n{out}"),
        }
    }
    assert!(open.is_none(), "every phase ends: {open:?}\n{out}");
    lines
}

/// The final counters of each phase, by phase name.
fn phase_ends(lines: &[Line]) -> BTreeMap<String, (u64, Option<u64>)> {
    lines
        .iter()
        .filter(|l| l.event == "phase_end")
        .map(|l| {
            (
                l.phase.clone().unwrap(),
                (l.bytes_done.unwrap(), l.bytes_total),
            )
        })
        .collect()
}

#[test]
fn progress_json_lines_parse_and_are_monotonic_for_a_backup_and_a_rollback() {
    let env = TestEnv::with(Fixture { large_file: true });
    let out = env.run(&["backup", "--json", "--progress", "json"]);
    out.assert_ok();
    let doc = assert_envelope(&out);
    let lines = progress_lines(&out);
    let ends = phase_ends(&lines);
    let (bytes, total) = ends["archiving"];
    assert!(
        bytes > 8 << 20,
        "the archiving phase counts the bytes: {ends:?}"
    );
    assert_eq!(Some(bytes), total, "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.event == "message" && l.message.as_deref().unwrap().contains("created")),
        "the summary is a message line too\n{out}"
    );

    // A usage error keeps stderr JSON lines too.
    let bad = env.run(&["rollback", "abc", "--json", "--progress", "json"]);
    bad.assert_code(exit::USAGE);
    let lines = progress_lines(&bad);
    assert_eq!(lines[0].level.as_deref(), Some("error"), "{bad}");
    assert_envelope(&bad);

    let id = doc["backup"]["id"].to_string();
    let out = env.run(&[
        "rollback",
        &id,
        "--force",
        "--rollback-data",
        "--no-start",
        "--progress",
        "json",
    ]);
    out.assert_ok();
    let ends = phase_ends(&progress_lines(&out));
    let (bytes, total) = ends["extracting"];
    assert!(bytes > 0 && Some(bytes) == total, "{ends:?}\n{out}");
}

#[test]
fn summary_lines_end_with_elapsed_time_and_throughput() {
    let env = TestEnv::new();
    let out = env.run(&["backup", "--progress", "plain"]);
    out.assert_ok();
    let created = out
        .stderr
        .lines()
        .find(|l| l.starts_with("backup ") && l.contains(" created: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        created.contains(" in ") && created.ends_with("/s"),
        "{created}"
    );
    let archived = out
        .stderr
        .lines()
        .find(|l| l.trim_start().starts_with("archiving done"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(archived.ends_with("/s)"), "{archived}");
    // No bars, no progress, no escape sequences when asked for none; summaries remain.
    let out = env.run(&["backup", "--progress", "none"]);
    out.assert_ok();
    assert!(!out.stderr.contains("archiving..."), "{out}");
    assert!(out.stderr.contains("archiving done"), "{out}");
}

/// Every visible subcommand, as `--help` lists them.
const SUBCOMMANDS: &[&str] = &[
    "backup",
    "list-backups",
    "rollback",
    "rollback-data-only",
    "delete-backup",
    "verify",
    "docker-service",
    "auto-backup",
    "upgrade",
    "prune",
    "reindex",
    "import",
    "recover",
    "completions",
];

#[test]
fn completions_name_every_subcommand_for_each_shell() {
    let env = TestEnv::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = env.run(&["completions", shell]);
        out.assert_ok();
        assert!(out.stdout.len() > 1000, "{shell}: {out}");
        for sub in SUBCOMMANDS {
            assert!(out.stdout.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    env.run(&["completions", "tcsh"]).assert_code(exit::USAGE);
    assert!(!env.path("data/nuwax.db").exists(), "nothing was created");
}

#[test]
fn the_man_page_documents_every_subcommand_and_the_exit_codes() {
    let env = TestEnv::new();
    let out = env.run(&["man"]);
    out.assert_ok();
    let page = out.stdout.replace("\\-", "-");
    assert!(
        page.starts_with(".ie") || page.contains(".TH nuwax-cli 1"),
        "{out}"
    );
    for sub in SUBCOMMANDS {
        assert!(
            page.contains(&format!(".SS \"nuwax-cli {sub}\""))
                || page.contains(&format!(".SS nuwax-cli {sub}")),
            "man page lacks a section for {sub}"
        );
    }
    for nested in ["docker-service status", "auto-backup run"] {
        assert!(page.contains(&format!("nuwax-cli {nested}")), "{nested}");
    }
    assert!(page.contains(".SH \"EXIT STATUS\"") || page.contains(".SH EXIT STATUS"));
    assert!(page.contains("130  interrupted"), "{page}");

    let help = env.run(&["--help"]);
    help.assert_ok();
    for needle in [
        "Examples:",
        "Exit codes:",
        "rollback 12 --force",
        "4    integrity",
    ] {
        assert!(
            help.stdout.contains(needle),
            "--help lacks {needle:?}\n{help}"
        );
    }
}
