use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;

use crate::codec::encode_time;
use crate::*;

/// A microsecond-precise instant (what the catalog round-trips exactly).
fn t(secs: i64, micros: u32) -> DateTime<Utc> {
    Utc.timestamp_opt(1_750_000_000 + secs, micros * 1_000)
        .unwrap()
}

fn new_backup(path: &str, created_at: DateTime<Utc>) -> NewBackup {
    NewBackup {
        file_path: PathBuf::from(path),
        backup_type: BackupType::Manual,
        service_version: "1.2.3".into(),
        created_at,
        owner_pid: 4242,
        compose_project: Some("docker".into()),
    }
}

fn completion(finished_at: DateTime<Utc>) -> BackupCompletion {
    BackupCompletion {
        size: 123_456_789_012,
        sha256: "ab".repeat(32),
        entry_count: 987,
        finished_at,
    }
}

fn pragma<T: rusqlite::types::FromSql>(store: &Store, name: &str) -> T {
    store
        .conn
        .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
        .unwrap()
}

#[test]
fn migrations_validate() {
    migrations::MIGRATIONS.validate().unwrap();
}

#[test]
fn open_twice_is_idempotent_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nuwax.db");
    let id = {
        let store = Store::open(&path).unwrap();
        assert_eq!(store.path(), Some(path.as_path()));
        store.set_setting("k", "v").unwrap();
        store
            .insert_backup(&new_backup("/b/1.tar.gz", t(0, 1)))
            .unwrap()
    };
    let store = Store::open(&path).unwrap();
    let again = Store::open(&path).unwrap();
    assert_eq!(
        migrations::MIGRATIONS
            .pending_migrations(&store.conn)
            .unwrap(),
        0
    );
    assert_eq!(store.get_setting("k").unwrap().as_deref(), Some("v"));
    assert_eq!(
        again.get_backup(id).unwrap().unwrap().file_path,
        Path::new("/b/1.tar.gz")
    );
    assert_eq!(store.list_backups().unwrap().len(), 1);
}

#[test]
fn open_sets_pragmas() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("nuwax.db")).unwrap();
    assert_eq!(pragma::<String>(&store, "journal_mode"), "wal");
    assert_eq!(pragma::<i64>(&store, "foreign_keys"), 1);
    assert_eq!(pragma::<i64>(&store, "synchronous"), 2, "FULL");
    assert_eq!(pragma::<i64>(&store, "busy_timeout"), 10_000);

    let mem = Store::open_in_memory().unwrap();
    assert_eq!(mem.path(), None);
    assert_eq!(pragma::<i64>(&mem, "foreign_keys"), 1);
}

#[test]
fn open_does_not_create_parent_dir() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing").join("nuwax.db");
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, Error::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("missing/nuwax.db"), "{err}");
    assert!(!dir.path().join("missing").exists());
}

#[test]
fn open_rejects_a_newer_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nuwax.db");
    drop(Store::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, Error::Unusable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "written by a newer version of nuwax-cli (schema version 99, this build knows {}",
            migrations::LATEST
        )),
        "{msg}"
    );
    assert!(msg.contains("reindex --move-broken-catalog"), "{msg}");
    // Nothing was changed in the file.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, 99);
}

#[test]
fn open_rejects_random_bytes_and_move_aside_lets_a_fresh_catalog_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nuwax.db");
    let junk: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &junk).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, Error::Unusable { .. }), "{err:?}");
    assert!(err.to_string().contains("is unusable"), "{err}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        junk,
        "open must not touch a broken file"
    );

    let moved = Store::move_aside(&path).unwrap();
    assert!(!path.exists());
    assert!(
        moved
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("nuwax.db.broken-"),
        "{moved:?}"
    );
    assert_eq!(std::fs::read(&moved).unwrap(), junk);
    let store = Store::open(&path).unwrap();
    assert!(store.list_backups().unwrap().is_empty());
    // A second move on the same second does not overwrite the first.
    drop(store);
    std::fs::write(&path, &junk).unwrap();
    let again = Store::move_aside(&path).unwrap();
    assert_ne!(again, moved);
    assert!(moved.exists() && again.exists());
}

#[test]
fn open_rejects_tables_missing_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nuwax.db");
    drop(Store::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("ALTER TABLE upgrades DROP COLUMN error;")
        .unwrap();
    drop(conn);
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, Error::Unusable { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("table upgrades lacks column(s) error"),
        "{err}"
    );

    let path2 = dir.path().join("other.db");
    let conn = rusqlite::Connection::open(&path2).unwrap();
    conn.execute_batch(&format!(
        "DROP TABLE IF EXISTS x; PRAGMA user_version = {};",
        migrations::LATEST
    ))
    .unwrap();
    drop(conn);
    let err = Store::open(&path2).unwrap_err();
    assert!(
        err.to_string().contains("table backups is missing"),
        "{err}"
    );
}

#[test]
fn concurrent_first_open_succeeds() {
    // Without the retries in `enable_wal` and `Store::migrated`, some of these fail with
    // "database is locked" or "table backups already exists".
    for _ in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nuwax.db");
        let start = std::sync::Arc::new(std::sync::Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                let start = start.clone();
                std::thread::spawn(move || {
                    start.wait();
                    Store::open(&path).map(|_| ())
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
    }
}

#[test]
fn store_is_send_and_error_is_anyhow_compatible() {
    fn assert_send<T: Send>() {}
    fn assert_error<T: std::error::Error + Send + Sync + 'static>() {}
    assert_send::<Store>();
    assert_error::<Error>();
}

#[test]
fn open_rejects_a_file_that_is_not_a_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nuwax.db");
    std::fs::write(&path, vec![0x5a; 4096]).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, Error::Unusable { .. }), "{err:?}");
    assert!(err.to_string().starts_with("catalog /"), "{err}");
}

#[test]
fn backup_round_trip_every_field() {
    let store = Store::open_in_memory().unwrap();
    let new = NewBackup {
        file_path: PathBuf::from("/srv/nuwax/backups/backup_pre-upgrade_v1.2.3_x.tar.gz"),
        backup_type: BackupType::PreUpgrade,
        service_version: "1.2.3".into(),
        created_at: t(10, 123_456),
        owner_pid: 4242,
        compose_project: Some("docker".into()),
    };
    let id = store.insert_backup(&new).unwrap();

    let running = store.get_backup(id).unwrap().unwrap();
    assert_eq!(
        running,
        BackupRecord {
            id,
            file_path: new.file_path.clone(),
            backup_type: BackupType::PreUpgrade,
            service_version: "1.2.3".into(),
            status: BackupStatus::Running,
            size: None,
            sha256: None,
            entry_count: None,
            error: None,
            created_at: new.created_at,
            finished_at: None,
            owner_pid: Some(4242),
            verified_at: None,
            compose_project: Some("docker".into()),
            legacy: false,
        }
    );

    store
        .complete_backup(id, &completion(t(20, 999_999)))
        .unwrap();
    store.mark_verified(id, t(30, 7)).unwrap();
    let done = store.get_backup(id).unwrap().unwrap();
    assert_eq!(
        done,
        BackupRecord {
            status: BackupStatus::Completed,
            size: Some(123_456_789_012),
            sha256: Some("ab".repeat(32)),
            entry_count: Some(987),
            finished_at: Some(t(20, 999_999)),
            verified_at: Some(t(30, 7)),
            ..running
        }
    );

    // Import path: every field but the id survives.
    let copy_id = store.insert_completed_backup(&done).unwrap();
    assert_ne!(copy_id, id);
    let copy = store.get_backup(copy_id).unwrap().unwrap();
    assert_eq!(
        copy,
        BackupRecord {
            id: copy_id,
            ..done.clone()
        }
    );

    assert_eq!(store.get_backup(9999).unwrap(), None);

    // Adopted (reindex, import) with its hot flag, in the same insert.
    assert_eq!(store.hot_backups().unwrap(), Vec::<i64>::new());
    let hot_id = store.insert_adopted_backup(&done, true).unwrap();
    let cold_id = store.insert_adopted_backup(&done, false).unwrap();
    assert!(store.is_hot(hot_id).unwrap());
    assert!(!store.is_hot(cold_id).unwrap());
    assert_eq!(store.hot_backups().unwrap(), vec![hot_id]);
    assert_eq!(
        store.get_backup(hot_id).unwrap().unwrap(),
        BackupRecord { id: hot_id, ..done }
    );
}

#[test]
fn legacy_backup_keeps_its_flag_and_manifest_and_loses_the_manifest_with_its_row() {
    let store = Store::open_in_memory().unwrap();
    let plain_id = store
        .insert_backup(&new_backup("/b/new.tar.gz", t(0, 0)))
        .unwrap();
    let rec = BackupRecord {
        id: 0,
        file_path: "/b/backup_manual_v0.0.9_2025-01-02_03-04-05.tar.gz".into(),
        backup_type: BackupType::Manual,
        service_version: "0.0.9".into(),
        status: BackupStatus::Completed,
        size: Some(10),
        sha256: Some("cd".repeat(32)),
        entry_count: Some(3),
        error: None,
        created_at: t(1, 0),
        finished_at: Some(t(1, 0)),
        owner_pid: None,
        verified_at: Some(t(2, 0)),
        compose_project: None,
        legacy: true,
    };
    let id = store
        .insert_legacy_backup(&rec, "{\"entries\":[]}")
        .unwrap();
    assert_eq!(
        store.get_backup(id).unwrap().unwrap(),
        BackupRecord { id, ..rec.clone() }
    );
    assert!(!store.get_backup(plain_id).unwrap().unwrap().legacy);
    assert_eq!(
        store.legacy_manifest(id).unwrap().as_deref(),
        Some("{\"entries\":[]}")
    );
    assert_eq!(store.legacy_manifest(plain_id).unwrap(), None);
    // A record not marked legacy is refused, and nothing is inserted.
    let before = store.list_backups().unwrap().len();
    assert!(
        store
            .insert_legacy_backup(
                &BackupRecord {
                    legacy: false,
                    ..rec
                },
                "{}"
            )
            .is_err()
    );
    assert_eq!(store.list_backups().unwrap().len(), before);
    assert!(store.delete_backup(id).unwrap());
    assert_eq!(store.legacy_manifest(id).unwrap(), None);
}

#[test]
fn a_catalog_of_schema_1_migrates_and_its_backups_are_not_legacy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nuwax.db");
    let mut conn = rusqlite::Connection::open(&path).unwrap();
    rusqlite_migration::Migrations::from_slice(&migrations::HISTORY[..1])
        .to_latest(&mut conn)
        .unwrap();
    conn.execute_batch(
        "INSERT INTO backups (file_path, backup_type, service_version, status, created_at) \
         VALUES ('/b/a.tar.gz', 'Manual', '1', 'Completed', '2026-01-01T00:00:00.000000Z')",
    )
    .unwrap();
    drop(conn);
    let store = Store::open(&path).unwrap();
    let rows = store.list_backups().unwrap();
    assert_eq!(rows.len(), 1);
    assert!(!rows[0].legacy);
    assert_eq!(store.legacy_manifest(rows[0].id).unwrap(), None);
}

#[test]
fn fail_backup_keeps_error_and_complete_clears_it() {
    let store = Store::open_in_memory().unwrap();
    let id = store
        .insert_backup(&new_backup("/b/f.tar.gz", t(0, 0)))
        .unwrap();
    store.fail_backup(id, "disk full", t(5, 0)).unwrap();
    let rec = store.get_backup(id).unwrap().unwrap();
    assert_eq!(rec.status, BackupStatus::Failed);
    assert_eq!(rec.error.as_deref(), Some("disk full"));
    assert_eq!(rec.finished_at, Some(t(5, 0)));
    assert_eq!(rec.size, None);

    store.complete_backup(id, &completion(t(6, 0))).unwrap();
    let rec = store.get_backup(id).unwrap().unwrap();
    assert_eq!(rec.status, BackupStatus::Completed);
    assert_eq!(rec.error, None);
}

#[test]
fn updates_of_missing_rows_name_the_id() {
    let store = Store::open_in_memory().unwrap();
    let err = store.complete_backup(77, &completion(t(0, 0))).unwrap_err();
    assert!(matches!(err, Error::BackupNotFound(77)), "{err:?}");
    assert_eq!(err.to_string(), "backup 77 not found in the catalog");
    assert!(matches!(
        store.fail_backup(78, "x", t(0, 0)),
        Err(Error::BackupNotFound(78))
    ));
    assert!(matches!(
        store.mark_verified(79, t(0, 0)),
        Err(Error::BackupNotFound(79))
    ));
    assert!(matches!(
        store.update_backup_path(80, Path::new("/x")),
        Err(Error::BackupNotFound(80))
    ));
    assert!(matches!(
        store.set_operation_phase(81, "p", None),
        Err(Error::OperationNotFound(81))
    ));
    assert!(matches!(
        store.finish_operation(82, OperationState::Failed, None),
        Err(Error::OperationNotFound(82))
    ));
    assert!(matches!(
        store.finish_upgrade(83, UpgradeOutcome::Failed, None, t(0, 0)),
        Err(Error::UpgradeNotFound(83))
    ));
    assert!(matches!(
        store.set_upgrade_backup(84, 1),
        Err(Error::UpgradeNotFound(84))
    ));
}

#[test]
fn list_is_newest_first_with_ties_broken_by_id() {
    let store = Store::open_in_memory().unwrap();
    let a = store.insert_backup(&new_backup("/b/a", t(100, 0))).unwrap();
    let b = store.insert_backup(&new_backup("/b/b", t(100, 0))).unwrap();
    let c = store.insert_backup(&new_backup("/b/c", t(200, 0))).unwrap();
    let d = store.insert_backup(&new_backup("/b/d", t(50, 0))).unwrap();
    // Same second, later microsecond, inserted last: still sorts by time.
    let e = store.insert_backup(&new_backup("/b/e", t(100, 1))).unwrap();
    let ids: Vec<i64> = store.list_backups().unwrap().iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![c, e, b, a, d]);
}

#[test]
fn delete_and_find_by_path() {
    let store = Store::open_in_memory().unwrap();
    assert!(!store.delete_backup(12345).unwrap());
    let id = store
        .insert_backup(&new_backup("/b/x.tar.gz", t(0, 0)))
        .unwrap();
    assert_eq!(
        store
            .find_backup_by_path(Path::new("/b/x.tar.gz"))
            .unwrap()
            .map(|r| r.id),
        Some(id)
    );
    assert_eq!(
        store.find_backup_by_path(Path::new("/b/y.tar.gz")).unwrap(),
        None
    );

    store
        .update_backup_path(id, Path::new("/moved/x.tar.gz"))
        .unwrap();
    assert_eq!(
        store.find_backup_by_path(Path::new("/b/x.tar.gz")).unwrap(),
        None
    );
    assert_eq!(
        store
            .get_backup(id)
            .unwrap()
            .unwrap()
            .file_path
            .to_str()
            .unwrap(),
        "/moved/x.tar.gz"
    );

    assert!(store.delete_backup(id).unwrap());
    assert_eq!(store.get_backup(id).unwrap(), None);
    assert!(!store.delete_backup(id).unwrap());

    // AUTOINCREMENT: a deleted id is never reused.
    let next = store.insert_backup(&new_backup("/b/z", t(0, 0))).unwrap();
    assert!(next > id);
}

#[test]
fn operation_lifecycle() {
    let store = Store::open_in_memory().unwrap();
    let before = Utc::now();
    let op = store
        .begin_operation(
            OperationKind::Rollback,
            99,
            "boot-1",
            &json!({"scope": "app"}),
        )
        .unwrap();
    let rec = store.get_operation(op).unwrap().unwrap();
    assert_eq!(rec.kind, OperationKind::Rollback);
    assert_eq!(rec.state, OperationState::Running);
    assert_eq!(rec.phase, "started");
    assert_eq!(rec.pid, 99);
    assert_eq!(rec.boot_id, "boot-1");
    assert_eq!(rec.details, json!({"scope": "app"}));
    assert_eq!(rec.started_at, rec.updated_at);
    assert!(rec.started_at >= before - chrono::Duration::microseconds(1));
    assert_eq!(rec.finished_at, None);
    assert_eq!(rec.backup_id, None);
    assert_eq!(rec.error, None);

    store.set_operation_phase(op, "staged", None).unwrap();
    let rec = store.get_operation(op).unwrap().unwrap();
    assert_eq!(rec.phase, "staged");
    assert_eq!(rec.details, json!({"scope": "app"}), "kept when None");
    assert!(rec.updated_at >= rec.started_at);

    let details = json!({"scope": "app", "undo": "/x/.undo", "items": ["a", "b"]});
    store
        .set_operation_phase(op, "swapping", Some(&details))
        .unwrap();
    assert_eq!(store.get_operation(op).unwrap().unwrap().details, details);

    let err = store.set_operation_backup(op, 555).unwrap_err();
    assert!(matches!(err, Error::BackupNotFound(555)), "{err:?}");
    let b = store.insert_backup(&new_backup("/b/1", t(0, 0))).unwrap();
    store.set_operation_backup(op, b).unwrap();
    assert_eq!(store.get_operation(op).unwrap().unwrap().backup_id, Some(b));

    let op2 = store
        .begin_operation(OperationKind::Backup, 100, "boot-1", &json!({}))
        .unwrap();
    let op3 = store
        .begin_operation(OperationKind::Rollback, 101, "boot-1", &json!(null))
        .unwrap();
    let unfinished: Vec<i64> = store
        .unfinished_operations()
        .unwrap()
        .iter()
        .map(|o| o.id)
        .collect();
    assert_eq!(unfinished, vec![op, op2, op3]);

    store
        .finish_operation(op, OperationState::Failed, Some("swap failed"))
        .unwrap();
    store
        .finish_operation(op2, OperationState::Succeeded, None)
        .unwrap();
    let rec = store.get_operation(op).unwrap().unwrap();
    assert_eq!(rec.state, OperationState::Failed);
    assert_eq!(rec.error.as_deref(), Some("swap failed"));
    assert_eq!(rec.finished_at, Some(rec.updated_at));
    let unfinished: Vec<i64> = store
        .unfinished_operations()
        .unwrap()
        .iter()
        .map(|o| o.id)
        .collect();
    assert_eq!(unfinished, vec![op3]);

    assert_eq!(
        store
            .last_operation(OperationKind::Rollback)
            .unwrap()
            .map(|o| o.id),
        Some(op3)
    );
    assert_eq!(
        store
            .last_operation(OperationKind::Backup)
            .unwrap()
            .map(|o| o.id),
        Some(op2)
    );
    assert_eq!(store.last_operation(OperationKind::Upgrade).unwrap(), None);
    assert_eq!(store.get_operation(9999).unwrap(), None);

    // Deleting the backup keeps the journal, unlinked.
    assert!(store.delete_backup(b).unwrap());
    assert_eq!(store.get_operation(op).unwrap().unwrap().backup_id, None);
}

#[test]
fn settings_upsert() {
    let store = Store::open_in_memory().unwrap();
    assert_eq!(store.get_setting("auto_backup.last").unwrap(), None);
    store.set_setting("auto_backup.last", "a").unwrap();
    store.set_setting("other", "x").unwrap();
    store.set_setting("auto_backup.last", "b").unwrap();
    assert_eq!(
        store.get_setting("auto_backup.last").unwrap().as_deref(),
        Some("b")
    );
    assert_eq!(store.get_setting("other").unwrap().as_deref(), Some("x"));
}

#[test]
fn upgrades_history() {
    let store = Store::open_in_memory().unwrap();
    let u1 = store.begin_upgrade("1.0.0", "1.1.0", t(0, 5)).unwrap();
    let b = store.insert_backup(&new_backup("/b/pre", t(1, 0))).unwrap();
    store.set_upgrade_backup(u1, b).unwrap();
    assert!(matches!(
        store.set_upgrade_backup(u1, 4040),
        Err(Error::BackupNotFound(4040))
    ));
    store
        .finish_upgrade(u1, UpgradeOutcome::RolledBack, Some("unhealthy"), t(60, 0))
        .unwrap();
    let u2 = store.begin_upgrade("1.0.0", "1.1.1", t(100, 0)).unwrap();

    let list = store.list_upgrades().unwrap();
    assert_eq!(
        list,
        vec![
            UpgradeRecord {
                id: u2,
                from_version: "1.0.0".into(),
                to_version: "1.1.1".into(),
                backup_id: None,
                outcome: UpgradeOutcome::Running,
                started_at: t(100, 0),
                finished_at: None,
                error: None,
            },
            UpgradeRecord {
                id: u1,
                from_version: "1.0.0".into(),
                to_version: "1.1.0".into(),
                backup_id: Some(b),
                outcome: UpgradeOutcome::RolledBack,
                started_at: t(0, 5),
                finished_at: Some(t(60, 0)),
                error: Some("unhealthy".into()),
            },
        ]
    );

    // ON DELETE SET NULL.
    assert!(store.delete_backup(b).unwrap());
    assert_eq!(store.list_upgrades().unwrap()[1].backup_id, None);
}

#[test]
fn undecodable_rows_are_corrupt_not_panics() {
    let store = Store::open_in_memory().unwrap();
    let now = encode_time(t(0, 0));
    let insert = |ty: &str, status: &str, created: &str, size: Option<i64>| {
        store
            .conn
            .execute(
                "INSERT INTO backups (file_path, backup_type, service_version, status, \
                 created_at, size) VALUES ('/b', ?1, '1', ?2, ?3, ?4)",
                rusqlite::params![ty, status, created, size],
            )
            .unwrap();
        store.conn.last_insert_rowid()
    };
    let cases = [
        (
            insert("Weird", "Completed", &now, None),
            "backup_type",
            "Weird",
        ),
        (
            insert("Manual", "Exploded", &now, None),
            "status",
            "Exploded",
        ),
        (
            insert("Manual", "Completed", "yesterday", None),
            "created_at",
            "yesterday",
        ),
        (insert("Manual", "Completed", &now, Some(-1)), "size", "-1"),
    ];
    for (id, column, value) in cases {
        let err = store.get_backup(id).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
        assert!(msg.contains(&format!("backups row {id}")), "{msg}");
        assert!(msg.contains(column) && msg.contains(value), "{msg}");
    }
    assert!(matches!(store.list_backups(), Err(Error::Corrupt(_))));

    let op = store
        .begin_operation(OperationKind::Backup, 1, "b", &json!({}))
        .unwrap();
    store
        .conn
        .execute("UPDATE operations SET state = 'paused' WHERE id = ?1", [op])
        .unwrap();
    assert!(matches!(store.get_operation(op), Err(Error::Corrupt(_))));
    store
        .conn
        .execute(
            "UPDATE operations SET state = 'running', details = '{' WHERE id = ?1",
            [op],
        )
        .unwrap();
    assert!(matches!(
        store.unfinished_operations(),
        Err(Error::Corrupt(_))
    ));

    let u = store.begin_upgrade("1", "2", t(0, 0)).unwrap();
    store
        .conn
        .execute("UPDATE upgrades SET outcome = 'meh' WHERE id = ?1", [u])
        .unwrap();
    assert!(matches!(store.list_upgrades(), Err(Error::Corrupt(_))));
}

#[cfg(unix)]
#[test]
fn non_utf8_path_round_trip() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    let store = Store::open_in_memory().unwrap();
    let raw = PathBuf::from(OsStr::from_bytes(b"/backups/caf\xe9/\xff\xfe.tar.gz"));
    let mut new = new_backup("/unused", t(0, 0));
    new.file_path = raw.clone();
    let id = store.insert_backup(&new).unwrap();

    assert_eq!(store.get_backup(id).unwrap().unwrap().file_path, raw);
    assert_eq!(
        store.find_backup_by_path(&raw).unwrap().map(|r| r.id),
        Some(id)
    );
    let stored: String = store
        .conn
        .query_row(
            "SELECT typeof(file_path) FROM backups WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, "blob");

    // A UTF-8 path is plain text (what the sqlite3 shell and other tools expect).
    let utf8 = store
        .insert_backup(&new_backup("/backups/café.tar.gz", t(0, 0)))
        .unwrap();
    let stored: String = store
        .conn
        .query_row("SELECT file_path FROM backups WHERE id = ?1", [utf8], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(stored, "/backups/café.tar.gz");

    let moved = PathBuf::from(OsStr::from_bytes(b"/m/\x80"));
    store.update_backup_path(utf8, &moved).unwrap();
    assert_eq!(store.get_backup(utf8).unwrap().unwrap().file_path, moved);
}

#[test]
fn timestamps_are_fixed_width_and_sort_as_text() {
    let times = [
        Utc.with_ymd_and_hms(1999, 12, 31, 23, 59, 59).unwrap(),
        t(0, 0),
        t(0, 1),
        t(0, 999_999),
        t(1, 0),
        Utc.with_ymd_and_hms(2100, 1, 1, 0, 0, 0).unwrap(),
    ];
    let encoded: Vec<String> = times.iter().map(|&x| encode_time(x)).collect();
    assert!(encoded.iter().all(|s| s.len() == encoded[0].len()));
    assert!(encoded.windows(2).all(|w| w[0] < w[1]), "{encoded:?}");
    assert_eq!(encoded[2], "2025-06-15T15:06:40.000001Z");

    // Sub-microsecond precision is dropped, not rounded.
    let store = Store::open_in_memory().unwrap();
    let precise = Utc.timestamp_opt(1_750_000_000, 123_456_789).unwrap();
    let id = store.insert_backup(&new_backup("/b", precise)).unwrap();
    assert_eq!(
        store.get_backup(id).unwrap().unwrap().created_at,
        Utc.timestamp_opt(1_750_000_000, 123_456_000).unwrap()
    );
}

#[test]
fn enum_text_forms() {
    for ty in [BackupType::Manual, BackupType::PreUpgrade, BackupType::Auto] {
        assert_eq!(BackupType::parse(ty.as_str()), Some(ty));
        assert_eq!(BackupType::parse(ty.file_tag()), Some(ty));
        assert_eq!(serde_json::to_value(ty).unwrap(), json!(ty.as_str()));
    }
    assert_eq!(BackupType::PreUpgrade.file_tag(), "pre-upgrade");
    assert_eq!(BackupType::parse("preupgrade"), None);
    for s in [
        BackupStatus::Running,
        BackupStatus::Completed,
        BackupStatus::Failed,
    ] {
        assert_eq!(BackupStatus::parse(s.as_str()), Some(s));
        assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
    }
    for k in [
        OperationKind::Backup,
        OperationKind::Rollback,
        OperationKind::AutoBackup,
        OperationKind::Upgrade,
    ] {
        assert_eq!(OperationKind::parse(k.as_str()), Some(k));
        assert_eq!(serde_json::to_value(k).unwrap(), json!(k.as_str()));
    }
    assert_eq!(OperationKind::AutoBackup.as_str(), "auto-backup");
    for s in [
        OperationState::Running,
        OperationState::Succeeded,
        OperationState::Failed,
        OperationState::Recovered,
    ] {
        assert_eq!(OperationState::parse(s.as_str()), Some(s));
        assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
    }
    for o in [
        UpgradeOutcome::Running,
        UpgradeOutcome::Succeeded,
        UpgradeOutcome::RolledBack,
        UpgradeOutcome::RollbackFailed,
        UpgradeOutcome::Failed,
    ] {
        assert_eq!(UpgradeOutcome::parse(o.as_str()), Some(o));
        assert_eq!(serde_json::to_value(o).unwrap(), json!(o.as_str()));
        assert_eq!(o.to_string(), o.as_str());
    }
}

#[test]
fn encryption_facts_are_recorded_and_go_with_their_row() {
    let store = Store::open_in_memory().unwrap();
    let id = store
        .insert_backup(&new_backup("/b/x.tar.gz.age", t(0, 0)))
        .unwrap();
    let facts = crate::EncryptionFacts {
        ciphertext_sha256: "ab".repeat(32),
        recipients: vec!["sha256:0011223344556677".into(), "scrypt".into()],
    };
    store.record_encryption(id, &facts).unwrap();
    assert_eq!(store.encryption_facts().unwrap(), vec![(id, facts)]);
    store.delete_backup(id).unwrap();
    assert!(store.encryption_facts().unwrap().is_empty());
}
