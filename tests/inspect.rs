//! Looking before leaping (issue 14, item 8): `diff`, `ls`, `restore --to` and
//! `rollback --dry-run`. None of them may change the compose dir, the catalog or the services.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde_json::Value;

use crate::archutil::flip_middle_byte;
use crate::dockerutil::{SERVE, run_container};
use crate::util::{TestEnv, assert_no_staging_left, assert_same_tree, exit, sha256_file, snapshot};

fn paths(doc: &Value, key: &str) -> Vec<String> {
    doc[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is not an array: {doc}"))
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_owned())
        .collect()
}

fn changes(doc: &Value, path: &str) -> Vec<String> {
    doc["modified"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == path)
        .unwrap_or_else(|| panic!("{path} not modified: {doc:#}"))["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn diff_shows_what_changed_since_the_backup_and_touches_nothing() {
    let env = TestEnv::new();
    let row = env.backup();
    let id = row.id.to_string();
    let clean = env.run_json(&["diff", &id, "--json"]);
    assert_eq!(clean["summary"]["added"], 0, "{clean:#}");
    assert_eq!(clean["summary"]["removed"], 0, "{clean:#}");
    assert_eq!(clean["summary"]["modified"], 0, "{clean:#}");
    assert!(
        clean["summary"]["unchanged"].as_u64().unwrap() > 20,
        "{clean:#}"
    );

    env.mutate();
    let before = env.snapshot_compose();
    let doc = env.run_json(&["diff", &id, "--json"]);
    let added = paths(&doc, "added");
    for p in [
        "app/new-file.txt",
        "app/newdir/deeper/x.bin",
        "data/new.db",
        "config/extra.yml",
    ] {
        assert!(added.contains(&p.to_string()), "{p} not added: {added:?}");
    }
    let removed = paths(&doc, "removed");
    for p in [
        "app/secret.key",
        "data/redis/dump.rdb",
        "app/cache",
        "app/deep",
    ] {
        assert!(
            removed.contains(&p.to_string()),
            "{p} not removed: {removed:?}"
        );
    }
    assert!(changes(&doc, "app/VERSION").contains(&"size".to_string()));
    assert_eq!(changes(&doc, "app/bin/start.sh"), ["mode"]);
    assert!(changes(&doc, "app/current").contains(&"target".to_string()));
    // Same size and mtime, other bytes: only a content comparison notices.
    let modified = paths(&doc, "modified");
    assert!(
        !modified.contains(&"app/static/index.html".to_string()),
        "{modified:?}"
    );
    // Excluded paths (the default `logs`) are never part of the comparison.
    let all: Vec<String> = [added, removed, modified].concat();
    assert!(!all.iter().any(|p| p.starts_with("logs")), "{all:?}");

    let content = env.run_json(&["diff", &id, "--content", "--json"]);
    assert_eq!(changes(&content, "app/static/index.html"), ["content"]);
    assert_eq!(content["content_compared"], true);

    let text = env.run(&["diff", &id]);
    text.assert_ok();
    assert!(text.stdout.contains("+ app/new-file.txt\n"), "{text}");
    assert!(text.stdout.contains("- app/secret.key\n"), "{text}");
    assert!(
        text.stdout
            .contains("M app/bin/start.sh (mode 0755 -> 0644)\n"),
        "{text}"
    );
    assert_same_tree("compose dir after diff", &before, &env.snapshot_compose());
    env.run(&["diff", "999"]).assert_code(exit::USAGE);
}

#[test]
fn ls_browses_a_backup() {
    let env = TestEnv::new();
    let row = env.backup();
    let id = row.id.to_string();
    let top = env.run(&["ls", &id]);
    top.assert_ok();
    for name in [
        "app/\n",
        "config/\n",
        "data/\n",
        "docker-compose.yml\n",
        ".env\n",
    ] {
        assert!(top.stdout.contains(name), "{name:?} missing\n{top}");
    }
    assert!(
        !top.stdout.contains("logs"),
        "excluded at backup time\n{top}"
    );
    assert!(
        !top.stdout.contains("app/VERSION"),
        "only direct entries\n{top}"
    );
    let dot = env.run(&["ls", &id, "."]);
    dot.assert_ok();
    assert_eq!(dot.stdout, top.stdout);

    let app = env.run(&["ls", &id, "app"]);
    app.assert_ok();
    assert!(app.stdout.contains("VERSION\n"), "{app}");
    assert!(app.stdout.contains("bin/\n"), "{app}");
    assert!(!app.stdout.contains("start.sh"), "{app}");

    let long = env.run(&["ls", &id, "app/bin", "-l"]);
    long.assert_ok();
    // The second path of a hard-linked file is shown as tar does.
    assert!(
        long.stdout
            .lines()
            .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with("  entrypoint.sh")),
        "{long}"
    );
    assert!(
        long.stdout.lines().any(|l| l.starts_with("-rwxr-xr-x")
            && l.ends_with("start.sh link to app/bin/entrypoint.sh")),
        "{long}"
    );
    let rec = env.run(&["ls", &id, "app", "-R"]);
    rec.assert_ok();
    assert!(rec.stdout.contains("bin/start.sh\n"), "{rec}");

    let one = env.run_json(&["ls", &id, "app/VERSION", "--json"]);
    let entries = one["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{one:#}");
    assert_eq!(entries[0]["kind"], "file");
    assert_eq!(entries[0]["size"], 6);
    assert_eq!(
        entries[0]["sha256"].as_str().unwrap(),
        sha256_file(&env.path("app/VERSION"))
    );
    assert_eq!(one["from_manifest"], true);

    env.run(&["ls", &id, "app/nope"])
        .assert_code(exit::USAGE)
        .assert_stderr_has("has no app/nope");
    env.run(&["ls", &id, "../etc"]).assert_code(exit::USAGE);
    env.run(&["ls", "999"]).assert_code(exit::USAGE);
}

#[test]
fn restore_copies_chosen_paths_out_and_never_into_live_data() {
    let env = TestEnv::new();
    let backed_up = snapshot(&env.compose_dir());
    let row = env.backup();
    let id = row.id.to_string();
    env.mutate();
    let live = env.snapshot_compose();
    let out = env.root.join("restored");
    let to = out.to_str().unwrap();

    let doc = env.run_json(&[
        "restore",
        &id,
        "app/VERSION",
        "config",
        "--to",
        to,
        "--json",
    ]);
    assert_eq!(
        doc["paths"],
        serde_json::json!(["app/VERSION", "config"]),
        "{doc:#}"
    );
    assert_eq!(fs::read(out.join("app/VERSION")).unwrap(), b"1.2.3\n");
    let config = snapshot(&out.join("config"));
    let expected: crate::util::Tree = backed_up
        .iter()
        .filter_map(|(p, e)| {
            p.strip_prefix("config")
                .ok()
                .map(|r| (r.to_path_buf(), e.clone()))
        })
        .filter(|(r, _)| !r.as_os_str().is_empty())
        .collect();
    assert_same_tree("restored config/", &expected, &config);
    let names: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "only app/ and config/, no staging left: {names:?}"
    );
    assert_same_tree("live compose dir", &live, &env.snapshot_compose());

    // A non-empty destination: refused without --force; with --force nothing is overwritten.
    env.run(&["restore", &id, "app/bin", "--to", to])
        .assert_code(exit::USAGE)
        .assert_stderr_has("not empty");
    fs::write(out.join("app/VERSION"), b"mine\n").unwrap();
    env.run(&["restore", &id, "app", "--to", to, "--force"])
        .assert_code(exit::USAGE)
        .assert_stderr_has("would be overwritten");
    assert_eq!(fs::read(out.join("app/VERSION")).unwrap(), b"mine\n");
    assert!(
        !out.join("app/bin").exists(),
        "nothing restored after a conflict"
    );
    env.run(&["restore", &id, "app/bin", "--to", to, "--force"])
        .assert_ok();
    assert_eq!(
        fs::read(out.join("app/bin/start.sh")).unwrap(),
        fs::read(env.path("app/bin/start.sh")).unwrap()
    );
    // Hard links come out as hard links.
    assert_eq!(
        fs::metadata(out.join("app/bin/start.sh")).unwrap().ino(),
        fs::metadata(out.join("app/bin/entrypoint.sh"))
            .unwrap()
            .ino()
    );

    // Never into the compose dir, the storage dir, data/, or a dir holding the compose dir.
    let outside = env.snapshot_outside();
    for bad in [
        env.path("restored"),
        env.path("app"),
        env.backups_dir().join("x"),
        env.work.join("data/x"),
        env.work.clone(),
        env.root.join("x/../work/docker/y"),
    ] {
        env.run(&[
            "restore",
            &id,
            "app/VERSION",
            "--to",
            bad.to_str().unwrap(),
            "--force",
        ])
        .assert_code(exit::USAGE);
    }
    // A path the backup does not have: nothing is left behind, not even the new dir.
    let fresh = env.root.join("fresh");
    env.run(&["restore", &id, "app/nope", "--to", fresh.to_str().unwrap()])
        .assert_code(exit::USAGE)
        .assert_stderr_has("has no app/nope");
    assert!(!fresh.exists());
    env.run(&["restore", &id, "../x", "--to", fresh.to_str().unwrap()])
        .assert_code(exit::USAGE);
    assert_same_tree("live compose dir", &live, &env.snapshot_compose());
    assert_same_tree("outside", &outside, &env.snapshot_outside());
}

#[test]
fn restore_checks_the_archive_like_a_rollback() {
    let env = TestEnv::new();
    let row = env.backup();
    flip_middle_byte(Path::new(&row.file_path));
    let dest = env.root.join("out");
    env.run(&[
        "restore",
        &row.id.to_string(),
        "app",
        "--to",
        dest.to_str().unwrap(),
    ])
    .assert_code(exit::INTEGRITY);
    assert!(
        !dest.exists(),
        "a refused restore leaves no directory behind"
    );
    env.run(&["ls", &row.id.to_string()])
        .assert_code(exit::INTEGRITY);
}

#[test]
fn rollback_dry_run_says_what_would_change_and_changes_nothing() {
    let env = TestEnv::new();
    let row = env.backup();
    let id = row.id.to_string();
    env.mutate();
    let app = run_container(&env.project, "app", "unless-stopped", SERVE);
    let live = env.snapshot_compose();
    let outside = env.snapshot_outside();
    let catalog = env.list();

    let doc = env.run_json(&["rollback", &id, "--dry-run", "--json"]);
    assert_eq!(doc["dry_run"], true);
    assert_eq!(doc["scope"], "app");
    let first = |k: &str| -> Vec<String> {
        doc[k]["first"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    assert!(
        first("replace").contains(&"app/VERSION".to_string()),
        "{doc:#}"
    );
    assert!(
        first("add").contains(&"app/secret.key".to_string()),
        "{doc:#}"
    );
    assert!(
        first("remove").contains(&"app/new-file.txt".to_string()),
        "{doc:#}"
    );
    for k in ["replace", "add", "remove"] {
        assert!(
            !first(k)
                .iter()
                .any(|p| p.starts_with("data/") || p.starts_with("logs")),
            "the app scope never touches data/ or the excluded logs: {doc:#}"
        );
    }
    assert_eq!(doc["would_stop"], serde_json::json!([app.name]), "{doc:#}");
    assert_eq!(doc["space"]["enough"], true);
    assert!(doc["space"]["needed_bytes"].as_u64().unwrap() > 0);

    let data = env.run_json(&["rollback-data-only", &id, "--dry-run", "--json"]);
    assert_eq!(data["scope"], "data-only");
    let add: Vec<&str> = data["add"]["first"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(add, ["data/redis/dump.rdb"], "{data:#}");

    let text = env.run(&["rollback", &id, "--rollback-data", "--dry-run"]);
    text.assert_ok();
    assert!(text.stdout.contains("nothing was changed"), "{text}");
    assert!(text.stdout.contains(&app.name), "{text}");

    assert!(app.is_running(), "a dry run stops nothing");
    assert_same_tree("compose dir after dry runs", &live, &env.snapshot_compose());
    assert_same_tree("outside", &outside, &env.snapshot_outside());
    assert_no_staging_left(&env);
    let after = env.list();
    assert_eq!(after.len(), catalog.len(), "the catalog is untouched");
    assert_eq!(after[0].verified_at, catalog[0].verified_at);
}
