//! `list-backups` and `rollback --list-json`: the catalog as the GUI and scripts read it.

use std::fs;
use std::path::Path;

use serde::Deserialize;

use crate::util::{ListDoc, ROW_KEYS, TestEnv, assert_keys, doc_keys, exit};

#[test]
fn empty_catalog_lists_nothing() {
    let env = TestEnv::new();
    let value = env.run_json(&["list-backups", "--json"]);
    assert_eq!(
        value,
        serde_json::json!({"schema_version": 1, "success": true, "backups": [], "error": null,
            "error_kind": null, "exit_code": 0})
    );
}

#[test]
fn list_json_is_newest_first_with_every_field() {
    let env = TestEnv::new();
    let first = env.backup();
    env.write_config("1.3.0");
    let second = env.backup();
    let out = env.run(&["list-backups", "--json"]);
    out.assert_ok();
    let value = out.json();
    assert_keys(&value, &doc_keys(&["backups"]));
    for row in value["backups"].as_array().expect("backups array") {
        assert_keys(row, ROW_KEYS);
    }
    let doc: ListDoc = out.json_as();
    assert!(doc.success);
    assert_eq!(doc.schema_version, 1);
    assert_eq!(doc.error, None);
    let ids: Vec<i64> = doc.backups.iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![second.id, first.id], "newest first");
    assert_eq!(doc.backups[0], second);
    assert_eq!(doc.backups[1], first);
    assert_eq!(doc.backups[0].service_version, "1.3.0");
    assert_eq!(doc.backups[1].service_version, "1.2.3");
}

#[test]
fn list_shows_a_missing_archive_as_not_existing() {
    let env = TestEnv::new();
    let row = env.backup();
    fs::remove_file(&row.file_path).unwrap();
    let listed = env.row(row.id);
    assert!(!listed.file_exists, "{listed:?}");
    assert_eq!(listed.file_path, row.file_path);
    assert_eq!(
        listed.status, "Completed",
        "status is the catalog's, existence is separate"
    );
}

#[test]
fn list_text_is_a_table_with_the_ids() {
    let env = TestEnv::new();
    let a = env.backup();
    let b = env.backup();
    let out = env.run(&["list-backups"]);
    out.assert_ok();
    for id in [a.id, b.id] {
        assert!(
            out.stdout
                .split(|c: char| !c.is_ascii_digit())
                .any(|tok| tok == id.to_string()),
            "table lacks id {id}\n{out}"
        );
    }
}

/// The existing GUI runs `rollback --list-json`, pipes stdout into a JSON parser and reads the
/// first seven fields with these types.
#[derive(Debug, Deserialize)]
struct GuiRow {
    id: i64,
    backup_type: String,
    created_at: String,
    service_version: String,
    file_path: String,
    file_size: Option<u64>,
    file_exists: bool,
}

#[derive(Debug, Deserialize)]
struct GuiDoc {
    success: bool,
    backups: Vec<GuiRow>,
    error: Option<String>,
}

#[test]
fn rollback_list_json_feeds_the_gui() {
    let env = TestEnv::new();
    let row = env.backup();
    // No ID, no terminal, but --list-json: this is not an interactive selection.
    let out = env.run(&["rollback", "--list-json"]);
    out.assert_ok();
    let gui: GuiDoc = out.json_as();
    assert!(gui.success);
    assert_eq!(gui.error, None);
    assert_eq!(gui.backups.len(), 1);
    let g = &gui.backups[0];
    assert_eq!(g.id, row.id);
    assert_eq!(g.backup_type, "Manual");
    assert_eq!(g.created_at, row.created_at);
    assert_eq!(g.service_version, "1.2.3");
    assert_eq!(g.file_path, row.file_path);
    assert!(Path::new(&g.file_path).is_absolute());
    assert_eq!(g.file_size, row.file_size);
    assert!(g.file_size.is_some());
    assert!(g.file_exists);

    // The same document as list-backups --json.
    let list = env.run_json(&["list-backups", "--json"]);
    assert_eq!(
        out.json(),
        list,
        "rollback --list-json == list-backups --json"
    );
}

#[test]
fn global_flags_go_before_or_after_the_subcommand() {
    let env = TestEnv::new();
    env.backup();
    let work = env.work.to_str().unwrap();
    let before = crate::util::run_bin(&env.cwd, ["-C", work, "list-backups", "--json"], &[]);
    let after = crate::util::run_bin(&env.cwd, ["list-backups", "--json", "-C", work], &[]);
    let long = crate::util::run_bin(
        &env.cwd,
        ["list-backups", "--work-dir", work, "--json", "--quiet"],
        &[],
    );
    for out in [&before, &after, &long] {
        out.assert_ok();
    }
    assert_eq!(before.json(), after.json());
    assert_eq!(before.json(), long.json());
    // -v adds logs on stderr, never on stdout.
    let verbose = crate::util::run_bin(&env.cwd, ["list-backups", "--json", "-v", "-C", work], &[]);
    verbose.assert_ok();
    assert_eq!(before.json(), verbose.json());
}

#[test]
fn relative_work_dir_resolves_against_the_cwd_once() {
    let env = TestEnv::new();
    let row = env.backup();
    // From the temp root, `-C work` is the same working dir.
    let out = crate::util::run_bin(&env.root, ["-C", "work", "list-backups", "--json"], &[]);
    out.assert_ok();
    let doc: ListDoc = out.json_as();
    assert_eq!(doc.backups.len(), 1);
    assert_eq!(
        doc.backups[0].file_path, row.file_path,
        "paths are absolute"
    );
}

#[test]
fn missing_work_dir_is_a_usage_error() {
    let env = TestEnv::new();
    let out = crate::util::run_bin(
        &env.cwd,
        ["-C", "/nonexistent/nuwax-work", "list-backups", "--json"],
        &[],
    );
    out.assert_code(exit::USAGE)
        .assert_stderr_has("/nonexistent/nuwax-work");
}
