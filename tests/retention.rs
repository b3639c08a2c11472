//! `prune` never deletes the way back (issue 10, item 10): a backup without its archive is
//! not the kept newest, a future-dated backup never makes the backup just written prunable,
//! and the pre-upgrade backup that leads back from the running release is kept. The odd
//! catalog states (a clock that was ahead, a deleted archive, upgrade history) are made by
//! editing the catalog the way they arise, with nothing running.

use crate::util::{Output, TestEnv, assert_keys};

/// `prune` reasons (crates/actors/src/retention.rs).
const REASON_NEWEST: &str = "newest completed backup";
const REASON_PRE_UPGRADE: &str = "latest pre-upgrade backup (no newer successful upgrade)";
const REASON_WAY_BACK: &str =
    "pre-upgrade backup leading back from the running release, taken by upgrade";
const REASON_MISSING: &str = "archive file missing: not a way back (only its catalog row goes)";
const REASON_FUTURE: &str = "dated in the future: ranked after backups with a past date";
const REASON_UNMATCHED: &str = "not kept by any rule";

fn sql(env: &TestEnv, statement: &str, params: &[&dyn rusqlite::ToSql]) {
    let conn = rusqlite::Connection::open(env.db_file()).unwrap();
    conn.execute(statement, params)
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

/// `(id, keep, reasons)` of a `prune --json` document, newest first.
fn decisions(out: &Output) -> Vec<(i64, bool, Vec<String>)> {
    let doc = out.json();
    assert_keys(&doc, &crate::util::doc_keys(&["dry_run", "backups"]));
    assert_eq!(doc["success"], true, "{out}");
    doc["backups"]
        .as_array()
        .unwrap_or_else(|| panic!("backups array\n{out}"))
        .iter()
        .map(|d| {
            (
                d["id"].as_i64().unwrap(),
                d["keep"].as_bool().unwrap(),
                d["reasons"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect()
}

fn decision(d: &[(i64, bool, Vec<String>)], id: i64) -> (bool, Vec<String>) {
    d.iter()
        .find(|x| x.0 == id)
        .map(|x| (x.1, x.2.clone()))
        .unwrap_or_else(|| panic!("no decision for {id}: {d:?}"))
}

#[test]
fn prune_keeps_the_newest_present_and_just_written_backup_over_future_dated_and_missing_ones() {
    let env = TestEnv::new();
    let ahead = env.backup(); // taken while the clock was years ahead
    let older = env.backup();
    let lost = env.backup(); // its archive was deleted by hand
    let latest = env.backup(); // just written
    sql(
        &env,
        "UPDATE backups SET created_at = '2099-01-01T00:00:00.000000Z', \
         finished_at = '2099-01-01T00:00:01.000000Z' WHERE id = ?1",
        &[&ahead.id],
    );
    std::fs::remove_file(&lost.file_path).unwrap();

    let out = env.run(&["prune", "--keep-last", "1", "--dry-run", "--json"]);
    out.assert_ok();
    let d = decisions(&out);
    assert_eq!(
        decision(&d, latest.id),
        (true, vec!["last 1".into(), REASON_NEWEST.into()]),
        "{out}"
    );
    assert_eq!(
        decision(&d, ahead.id),
        (false, vec![REASON_UNMATCHED.into(), REASON_FUTURE.into()]),
        "{out}"
    );
    assert_eq!(decision(&d, lost.id), (false, vec![REASON_MISSING.into()]));
    assert_eq!(
        decision(&d, older.id),
        (false, vec![REASON_UNMATCHED.into()])
    );
    // The table shows the same reasons.
    let out = env.run(&["prune", "--keep-last", "1", "--dry-run"]);
    out.assert_ok();
    for needle in [REASON_NEWEST, REASON_FUTURE, REASON_MISSING] {
        assert!(out.stdout.contains(needle), "{needle}\n{out}");
    }
    assert_eq!(env.list().len(), 4, "a dry run deletes nothing");

    // The archive of the newest backup goes missing too: it is not the kept newest, the
    // newest backup with its archive is.
    let hidden = format!("{}.moved", latest.file_path);
    std::fs::rename(&latest.file_path, &hidden).unwrap();
    let out = env.run(&["prune", "--keep-last", "1", "--dry-run", "--json"]);
    out.assert_ok();
    let d = decisions(&out);
    assert_eq!(
        decision(&d, latest.id),
        (false, vec![REASON_MISSING.into()])
    );
    assert_eq!(
        decision(&d, older.id),
        (true, vec!["last 1".into(), REASON_NEWEST.into()]),
        "{out}"
    );
    std::fs::rename(&hidden, &latest.file_path).unwrap();

    // For real: the just-written backup and its archive stay; the row of the lost one goes.
    env.run(&["prune", "--keep-last", "1", "--json"])
        .assert_ok();
    let left: Vec<i64> = env.list().iter().map(|r| r.id).collect();
    assert_eq!(left, [latest.id]);
    assert!(std::path::Path::new(&latest.file_path).is_file());
    assert_eq!(env.backup_files().len(), 1, "{:?}", env.backup_files());
}

#[test]
fn prune_keeps_the_pre_upgrade_backup_leading_back_from_the_running_release() {
    let env = TestEnv::new();
    // Upgrade 1.0 -> 1.2.3 succeeded (its backup: `way_back`); a later upgrade 1.2.3 -> 2.0
    // was rolled back (its backup: `failed_try`); then a manual backup.
    let way_back = env.backup();
    let failed_try = env.backup();
    let manual = env.backup();
    for id in [way_back.id, failed_try.id] {
        sql(
            &env,
            "UPDATE backups SET backup_type = 'PreUpgrade' WHERE id = ?1",
            &[&id],
        );
    }
    sql(
        &env,
        "INSERT INTO upgrades (from_version, to_version, backup_id, outcome, started_at) \
         VALUES ('1.0', '1.2.3', ?1, 'succeeded', '2026-01-01T00:00:00.000000Z')",
        &[&way_back.id],
    );
    sql(
        &env,
        "INSERT INTO upgrades (from_version, to_version, backup_id, outcome, started_at) \
         VALUES ('1.2.3', '2.0', ?1, 'rolled-back', '2026-01-02T00:00:00.000000Z')",
        &[&failed_try.id],
    );

    let out = env.run(&["prune", "--keep-last", "1", "--json"]);
    out.assert_ok();
    let d = decisions(&out);
    assert_eq!(
        decision(&d, manual.id),
        (true, vec!["last 1".into(), REASON_NEWEST.into()])
    );
    assert_eq!(
        decision(&d, failed_try.id),
        (true, vec![REASON_PRE_UPGRADE.into()])
    );
    let (keep, reasons) = decision(&d, way_back.id);
    assert!(keep, "the way back from the running release\n{out}");
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].starts_with(REASON_WAY_BACK) && reasons[0].ends_with("(1.0 -> 1.2.3)"),
        "{reasons:?}"
    );
    assert_eq!(env.list().len(), 3);
    assert_eq!(env.backup_files().len(), 3);
}
