//! `[backup] exclude` with glob patterns (issue 14, item 7): what they match is never archived
//! and never moved, copied or deleted by a rollback, at any depth.

use std::fs;
use std::os::unix::fs::MetadataExt;

use crate::util::{TestEnv, VERSION, write};

fn config(env: &TestEnv, exclude: &str) {
    let text = format!(
        "[versions]\ndocker_service = \"{VERSION}\"\n\n[docker]\nproject = \"{}\"\n\n[backup]\nexclude = {exclude}\n",
        env.project
    );
    fs::write(env.work.join("config.toml"), text).unwrap();
}

fn ino(p: &std::path::Path) -> u64 {
    fs::symlink_metadata(p).unwrap().ino()
}

#[test]
fn glob_excludes_are_not_archived_and_survive_a_full_rollback() {
    let env = TestEnv::new();
    config(
        &env,
        r#"["logs", "*.log", "**/cache", "data/tmp/**", "nothing-matches-*.xyz"]"#,
    );
    write(&env.path("app/run.log"), b"app log v1\n", 0o644);
    write(&env.path("app/deep/er/x.log"), b"deep log v1\n", 0o644);
    write(&env.path("app/node/cache/blob"), b"cache v1\n", 0o644);
    write(&env.path("data/tmp/sess/a"), b"session v1\n", 0o644);
    write(&env.path("data/keep.txt"), b"data v1\n", 0o644);
    let out = env.run(&["backup", "--json"]);
    out.assert_ok();
    out.assert_stderr_has("exclude `nothing-matches-*.xyz` matched nothing");
    assert!(!out.stderr.contains("`*.log` matched nothing"), "{out}");
    let id = out.json()["backup"]["id"].as_i64().unwrap().to_string();

    let listed = env.run(&["ls", &id, "-R"]);
    listed.assert_ok();
    for gone in ["run.log", "x.log", "node/cache", "data/tmp/sess"] {
        assert!(!listed.stdout.contains(gone), "{gone} archived\n{listed}");
    }
    assert!(listed.stdout.contains("data/keep.txt\n"), "{listed}");
    assert!(
        listed.stdout.contains("data/tmp/\n"),
        "only what is inside data/tmp: {listed}"
    );

    // After the backup: the matched files change, new matching files appear at other
    // depths, and the rest changes too.
    write(&env.path("app/run.log"), b"app log v2, longer\n", 0o644);
    write(&env.path("app/deep/er/x.log"), b"deep log v2\n", 0o644);
    write(&env.path("app/deep/er/new.log"), b"new deep log\n", 0o644);
    write(&env.path("top.log"), b"top log\n", 0o644);
    write(&env.path("config/nginx/access.log"), b"access\n", 0o644);
    write(&env.path("app/node/cache/blob2"), b"cache v2\n", 0o644);
    write(&env.path("data/tmp/sess/b"), b"session v2\n", 0o644);
    write(&env.path("data/keep.txt"), b"data v2, changed\n", 0o644);
    write(&env.path("app/VERSION"), b"9.9.9\n", 0o644);
    let kept = [
        "app/run.log",
        "app/deep/er/x.log",
        "app/deep/er/new.log",
        "top.log",
        "config/nginx/access.log",
        "app/node/cache",
        "data/tmp/sess",
    ];
    let before: Vec<(String, u64, Vec<u8>)> = kept
        .iter()
        .map(|k| {
            let p = env.path(k);
            let bytes = if p.is_file() {
                fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            (k.to_string(), ino(&p), bytes)
        })
        .collect();

    // The dry run leaves the matched paths out, too.
    let plan = env.run_json(&["rollback", &id, "--rollback-data", "--dry-run", "--json"]);
    for k in ["replace", "add", "remove"] {
        for p in plan[k]["first"].as_array().unwrap() {
            let p = p.as_str().unwrap();
            assert!(
                !p.ends_with(".log") && !p.contains("cache") && !p.starts_with("data/tmp/"),
                "{p} is excluded: {plan:#}"
            );
        }
    }

    env.rollback_data(&id).assert_ok();
    for (k, i, bytes) in before {
        let p = env.path(&k);
        assert_eq!(ino(&p), i, "{k} was moved by the rollback");
        if !bytes.is_empty() {
            assert_eq!(fs::read(&p).unwrap(), bytes, "{k} changed");
        }
    }
    assert_eq!(
        fs::read(env.path("app/node/cache/blob2")).unwrap(),
        b"cache v2\n"
    );
    assert_eq!(
        fs::read(env.path("data/tmp/sess/b")).unwrap(),
        b"session v2\n"
    );
    // What no pattern matches is exactly the backup's again.
    assert_eq!(fs::read(env.path("data/keep.txt")).unwrap(), b"data v1\n");
    assert_eq!(fs::read(env.path("app/VERSION")).unwrap(), b"1.2.3\n");
}

#[test]
fn default_excludes_do_not_warn_and_bad_patterns_are_config_errors() {
    let env = TestEnv::new();
    fs::remove_dir_all(env.path("logs")).unwrap();
    let out = env.run(&["backup"]);
    out.assert_ok();
    assert!(!out.stderr.contains("matched nothing"), "{out}");
    config(&env, r#"["data/[x"]"#);
    env.run(&["backup"])
        .assert_code(crate::util::exit::USAGE)
        .assert_stderr_has("not a valid glob pattern");
    config(&env, r#"["../*.log"]"#);
    env.run(&["backup"]).assert_code(crate::util::exit::USAGE);
}
