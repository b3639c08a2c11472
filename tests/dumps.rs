//! Database dumps, hot backups and `restore-dump` against a real MariaDB server in a
//! container (issue 15, items 1, 2 and 6). The server image is built locally (`dbutil`);
//! every test has its own compose project (`db`: MariaDB with its datadir in
//! `data/mysql`, `app`: busybox), created by the tool's `docker-service start`.

use std::ffi::OsStr;
use std::fs;

use crate::dbutil::{ROOT_PASSWORD, mariadb_image, sql, sql_ok, wait_ready};
use crate::dockerutil::{SERVE, docker_ok, inspect, service_container};
use crate::util::{TestEnv, exit, write};

/// The `[[backup.dumps]]` entry of the db service, plus `extra` lines in it.
fn dump_config(extra: &str) -> String {
    format!(
        "\n[[backup.dumps]]\nservice = \"db\"\nkind = \"mariadb\"\nhot_exclude = [\"data/mysql\"]\n{extra}\n"
    )
}

struct Db {
    env: TestEnv,
}

impl Db {
    /// A running stack with an empty server; `None` when the image cannot be built here
    /// (never under CI).
    fn start(config: &str) -> Option<Db> {
        Db::start_with(config, false)
    }

    /// [`Db::start`]; `secret`: root's password is not in the environment, only in the file
    /// `MARIADB_ROOT_PASSWORD_FILE` names (a secret bind-mounted from `secrets/db_root`).
    fn start_with(config: &str, secret: bool) -> Option<Db> {
        let image = mariadb_image()?;
        let env = TestEnv::new();
        let serve = SERVE
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let password = if secret {
            "MARIADB_ROOT_PASSWORD_FILE: /run/secrets/db_root".to_owned()
        } else {
            format!("MARIADB_ROOT_PASSWORD: {ROOT_PASSWORD}")
        };
        let compose = format!(
            "services:\n\
             \x20 db:\n\
             \x20   image: {image}\n\
             \x20   network_mode: none\n\
             \x20   restart: unless-stopped\n\
             \x20   stop_grace_period: 30s\n\
             \x20   environment:\n\
             \x20     {password}\n\
             \x20   volumes:\n\
             \x20     - ./data/mysql:/var/lib/mysql\n\
             \x20     - ./secrets:/run/secrets:ro\n\
             \x20   labels:\n\
             \x20     nuwax-test: \"1\"\n\
             \x20 app:\n\
             \x20   image: nuwax-test-busybox:latest\n\
             \x20   command: [{serve}]\n\
             \x20   network_mode: none\n\
             \x20   restart: unless-stopped\n\
             \x20   stop_grace_period: 5s\n\
             \x20   labels:\n\
             \x20     nuwax-test: \"1\"\n"
        );
        write(&env.path("docker-compose.yml"), compose.as_bytes(), 0o644);
        write(
            &env.path("secrets/db_root"),
            format!("{ROOT_PASSWORD}\n").as_bytes(),
            0o644,
        );
        // An empty datadir: the server initializes it.
        fs::remove_dir_all(env.path("data/mysql")).unwrap();
        fs::create_dir_all(env.path("data/mysql")).unwrap();
        let db = Db { env };
        db.set_config(config);
        db.env.run(&["docker-service", "start"]).assert_ok();
        wait_ready(&db.container());
        Some(db)
    }

    fn set_config(&self, extra: &str) {
        self.env.write_config(crate::util::VERSION);
        let path = self.env.work.join("config.toml");
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str(extra);
        fs::write(path, text).unwrap();
    }

    fn container(&self) -> String {
        service_container(&self.env.project, "db")
    }

    fn started_at(&self) -> String {
        inspect(&self.container(), "{{.State.StartedAt}}")
    }

    fn load(&self) {
        sql_ok(
            &self.container(),
            "CREATE DATABASE shop; \
             CREATE TABLE shop.items (id INT PRIMARY KEY AUTO_INCREMENT, name VARCHAR(64), \
                                      price DECIMAL(10,2), blob_col VARBINARY(255)); \
             SET SESSION max_recursive_iterations = 100000; \
             INSERT INTO shop.items (name, price, blob_col) \
               WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 3000) \
               SELECT CONCAT('item-', n, '-\\'quoted\\''), n * 1.25, UNHEX(SHA2(n, 256)) FROM s;",
        );
    }

    fn checksum(&self) -> String {
        sql_ok(&self.container(), "CHECKSUM TABLE shop.items")
    }

    /// Stops the server, empties its datadir and starts it again: an empty server.
    fn wipe(&self) {
        self.env.run(&["docker-service", "stop"]).assert_ok();
        fs::remove_dir_all(self.env.path("data/mysql")).unwrap();
        fs::create_dir_all(self.env.path("data/mysql")).unwrap();
        self.env.run(&["docker-service", "start"]).assert_ok();
        wait_ready(&self.container());
        assert!(
            sql(&self.container(), "SELECT COUNT(*) FROM shop.items").is_err(),
            "the wiped server must not have the table"
        );
    }

    fn archive_entries(&self, file: &str) -> Vec<String> {
        let out = std::process::Command::new("tar")
            .args(["-tzf", file])
            .output()
            .unwrap();
        assert!(out.status.success(), "tar -tzf {file} failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn hot_flag(&self, id: i64) -> i64 {
        let conn = rusqlite::Connection::open(self.env.db_file()).unwrap();
        conn.query_row("SELECT hot FROM backups WHERE id = ?1", [id], |r| r.get(0))
            .unwrap()
    }

    /// Leftover dump work files in the storage dir.
    fn leftovers(&self) -> Vec<String> {
        fs::read_dir(self.env.backups_dir())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(".nuwax-") || n.ends_with(".partial"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A loaded table, dumped by `auto-backup run` (dump first, then stop, archive, start) and
/// restored into an empty server with `restore-dump`, has the same `CHECKSUM TABLE`.
#[test]
fn dump_restores_into_an_empty_server_with_the_same_checksum() {
    let Some(db) = Db::start(&dump_config("")) else {
        return;
    };
    db.load();
    let before = db.checksum();
    let out = db.env.run(&["auto-backup", "run", "--json"]);
    out.assert_ok()
        .assert_stderr_has("dumping mariadb database of service db");
    let doc = out.json();
    let id = doc["backup"]["id"].as_i64().unwrap();
    let file = doc["backup"]["file_path"].as_str().unwrap().to_owned();
    let entries = db.archive_entries(&file);
    assert!(
        entries.iter().any(|e| e == ".nuwax-backup/dumps/db.sql"),
        "the dump is in the archive: {entries:?}"
    );
    // A cold backup also holds the datadir (the services were stopped for it).
    assert!(entries.iter().any(|e| e.starts_with("data/mysql/")));
    assert_eq!(db.hot_flag(id), 0);
    // The archive verifies, the dump's checksum included.
    db.env.run(&["verify", &id.to_string()]).assert_ok();
    assert!(db.leftovers().is_empty(), "{:?}", db.leftovers());

    db.wipe();
    let out = db
        .env
        .run(&["restore-dump", &id.to_string(), "--service", "db", "--json"]);
    out.assert_ok();
    let doc = out.json();
    assert_eq!(doc["service"], "db", "{out}");
    assert!(doc["bytes"].as_u64().unwrap() > 100_000, "{out}");
    assert_eq!(
        db.checksum(),
        before,
        "the restored table has the same checksum"
    );
    assert!(db.leftovers().is_empty(), "{:?}", db.leftovers());

    // A dump that does not match its checksum is refused before anything is loaded.
    let out = db
        .env
        .run(&["restore-dump", &id.to_string(), "--service", "app"]);
    out.assert_code(exit::USAGE)
        .assert_stderr_has("[[backup.dumps]]");
}

/// A dump that fails (wrong credentials; a `command` dump exiting 1) fails the backup:
/// exit 1, recorded as failed with the dump's stderr, nothing stopped, no archive, no
/// leftovers.
#[test]
fn a_failing_dump_fails_the_backup_and_stops_nothing() {
    let Some(db) = Db::start(&dump_config("user = \"nobody\"")) else {
        return;
    };
    let started = db.started_at();
    let app_started = inspect(
        &service_container(&db.env.project, "app"),
        "{{.State.StartedAt}}",
    );
    let out = db.env.run(&["auto-backup", "run", "--json"]);
    out.assert_code(exit::FAILED)
        .assert_stderr_has("dump of service db failed")
        .assert_stderr_has("access denied");
    assert_eq!(out.json()["error_kind"], "dump_failed", "{out}");
    assert_eq!(db.started_at(), started, "the database was never stopped");
    assert_eq!(
        inspect(
            &service_container(&db.env.project, "app"),
            "{{.State.StartedAt}}"
        ),
        app_started,
        "the app was never stopped"
    );
    let rows = db.env.list();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].status, "Failed");
    assert!(
        rows[0]
            .error
            .as_deref()
            .unwrap_or("")
            .to_lowercase()
            .contains("access denied"),
        "{rows:?}"
    );
    assert!(!rows[0].file_exists);
    assert!(db.leftovers().is_empty(), "{:?}", db.leftovers());

    db.set_config(
        "\n[[backup.dumps]]\nservice = \"db\"\nkind = \"command\"\n\
         command = [\"sh\", \"-c\", \"echo partial; echo disk on fire >&2; exit 1\"]\n",
    );
    let out = db.env.run(&["backup", "--hot"]);
    out.assert_code(exit::REFUSED).assert_stderr_has("app");
    db.set_config(
        "\n[backup]\nhot_safe = [\"app\"]\n\n[[backup.dumps]]\nservice = \"db\"\nkind = \"command\"\n\
         command = [\"sh\", \"-c\", \"echo partial; echo disk on fire >&2; exit 1\"]\n",
    );
    let out = db.env.run(&["backup", "--hot"]);
    out.assert_code(exit::FAILED)
        .assert_stderr_has("exited with status 1")
        .assert_stderr_has("disk on fire");
    assert_eq!(db.started_at(), started);
    let rows = db.env.list();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.status == "Failed"), "{rows:?}");
    assert!(db.leftovers().is_empty(), "{:?}", db.leftovers());
}

/// `backup --hot` is refused while a running service has neither a dump nor a place in
/// `hot_safe`; with both, it runs under a concurrent write load without stopping anything,
/// leaves the datadir out, is recorded as hot, and its dump restores. A rollback of it keeps
/// the live datadir and says to run `restore-dump`.
#[test]
fn hot_backup_under_write_load_and_its_dump_restores() {
    let Some(db) = Db::start(&dump_config("")) else {
        return;
    };
    db.load();
    let started = db.started_at();

    // The gate: `app` runs, has no dump and is not hot_safe.
    let out = db.env.run(&["backup", "--hot", "--json"]);
    out.assert_code(exit::REFUSED)
        .assert_stderr_has("service app")
        .assert_stderr_has("hot_safe");
    assert!(db.env.list().is_empty(), "a refused backup records nothing");
    assert!(db.env.backup_files().is_empty());

    db.set_config(&format!(
        "\n[backup]\nhot_safe = [\"app\"]\n{}",
        dump_config("")
    ));
    // A writer inserting rows as fast as it can, for the whole backup.
    let env = format!("MYSQL_PWD={ROOT_PASSWORD}");
    docker_ok(&[
        "exec",
        "-d",
        "-e",
        &env,
        &db.container(),
        "sh",
        "-c",
        "mariadb --user=root -e 'CREATE TABLE shop.log (id INT PRIMARY KEY AUTO_INCREMENT, at TIMESTAMP(6) DEFAULT NOW(6))'; \
         while :; do mariadb --user=root -e 'INSERT INTO shop.log () VALUES (); UPDATE shop.items SET price = price + 1 WHERE id = 1 + FLOOR(RAND() * 3000)'; done",
    ]);
    let rows_before = wait_rows(&db, 20);
    let out = db.env.run(&["backup", "--hot", "--json"]);
    out.assert_ok();
    let doc = out.json();
    let id = doc["backup"]["id"].as_i64().unwrap();
    let file = doc["backup"]["file_path"].as_str().unwrap().to_owned();
    assert!(
        wait_rows(&db, rows_before + 20) > rows_before,
        "the writer kept writing"
    );
    assert_eq!(db.started_at(), started, "a hot backup stops nothing");
    assert_eq!(db.hot_flag(id), 1);
    let entries = db.archive_entries(&file);
    assert!(entries.iter().any(|e| e == ".nuwax-backup/dumps/db.sql"));
    assert!(
        !entries.iter().any(|e| e.starts_with("data/mysql")),
        "the live datadir is left out of a hot backup"
    );
    assert!(
        entries.iter().any(|e| e.starts_with("data/redis/")),
        "the rest is archived"
    );

    // A rollback of the hot backup keeps the live datadir and says what to run next.
    let out = db.env.rollback_data(id);
    out.assert_ok()
        .assert_stderr_has("taken hot")
        .assert_stderr_has(&format!("restore-dump {id} --service db"));
    // The live server's files were kept (the archive has none: a swap would have removed
    // them), the writer stopped with the server.
    assert!(
        db.env.path("data/mysql/ibdata1").is_file(),
        "the datadir was kept"
    );
    assert!(
        db.env.path("data/mysql/shop").is_dir(),
        "the database's dir was kept"
    );

    // Its dump restores into an empty server: the table is whole and consistent.
    db.wipe();
    db.env
        .run(&["restore-dump", &id.to_string(), "--service", "db"])
        .assert_ok()
        .assert_stderr_has("loaded the dump");
    assert_eq!(
        sql_ok(&db.container(), "SELECT COUNT(*) FROM shop.items"),
        "3000"
    );
    let logged: u64 = sql_ok(&db.container(), "SELECT COUNT(*) FROM shop.log")
        .parse()
        .unwrap();
    assert!(logged > 0, "rows written before the dump are in it");
}

/// Waits (bounded) until `shop.log` holds at least `n` rows; returns the count.
fn wait_rows(db: &Db, n: u64) -> u64 {
    let mut count = 0;
    for _ in 0..200 {
        count = sql(&db.container(), "SELECT COUNT(*) FROM shop.log")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if count >= n {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    count
}

/// A dump damaged inside the archive is refused by `restore-dump` (exit 4) and `verify`.
#[test]
fn a_damaged_dump_is_refused() {
    let Some(db) = Db::start(&format!(
        "\n[backup]\nhot_safe = [\"app\"]\n{}",
        dump_config("")
    )) else {
        return;
    };
    let out = db.env.run(&["backup", "--hot", "--json"]);
    out.assert_ok();
    let doc = out.json();
    let id = doc["backup"]["id"].as_i64().unwrap();
    let file = doc["backup"]["file_path"].as_str().unwrap().to_owned();
    // Repack with one byte of the dump changed (a consistent gzip stream, the archive's own
    // checksum in the catalog is the only other thing that would notice).
    let dir = tempfile::tempdir().unwrap();
    let x = |args: &[&str]| {
        let st = std::process::Command::new("tar")
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "tar {args:?}");
    };
    x(&["-xzf", &file, "-C", dir.path().to_str().unwrap()]);
    let dump = dir.path().join(".nuwax-backup/dumps/db.sql");
    let mut bytes = fs::read(&dump).unwrap();
    bytes[10] ^= 0x20;
    fs::write(&dump, bytes).unwrap();
    let list: Vec<String> = db.archive_entries(&file);
    let mut args = vec![
        "--no-recursion".to_string(),
        "-czf".into(),
        file.clone(),
        "-C".into(),
    ];
    args.push(dir.path().to_str().unwrap().into());
    args.extend(list);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    x(&args);
    let out = db
        .env
        .run(&["restore-dump", &id.to_string(), "--service", "db"]);
    out.assert_code(exit::INTEGRITY)
        .assert_stderr_has("does not match its checksum");
    let out = db.env.run(&["verify", &id.to_string()]);
    assert_ne!(out.code, Some(exit::OK), "verify must fail:\n{out}");
}

/// A working dir whose stack is one busybox service `db` (running), with a `command` dump of
/// it in `config` (no database server needed).
fn busybox_stack(config: &str) -> TestEnv {
    crate::dockerutil::ensure_test_image();
    let env = TestEnv::new();
    let serve = SERVE
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let compose = format!(
        "services:\n\
         \x20 db:\n\
         \x20   image: nuwax-test-busybox:latest\n\
         \x20   command: [{serve}]\n\
         \x20   network_mode: none\n\
         \x20   restart: unless-stopped\n\
         \x20   stop_grace_period: 5s\n\
         \x20   labels:\n\
         \x20     nuwax-test: \"1\"\n"
    );
    write(&env.path("docker-compose.yml"), compose.as_bytes(), 0o644);
    let path = env.work.join("config.toml");
    let mut text = fs::read_to_string(&path).unwrap();
    text.push_str(config);
    fs::write(path, text).unwrap();
    env.run(&["docker-service", "start"]).assert_ok();
    env
}

/// Dump work files (`.nuwax-dumps-*`, `.nuwax-restore-dump-*`) in the storage dir.
fn dump_work_files(env: &TestEnv) -> Vec<String> {
    fs::read_dir(env.backups_dir())
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".nuwax-dumps-") || n.starts_with(".nuwax-restore-dump-"))
                .collect()
        })
        .unwrap_or_default()
}

/// A backup killed (SIGKILL) while its dumps wait to be archived, and a `restore-dump` killed
/// after copying the dump out, leave their work files in the storage dir; the next command's
/// start-up recovery removes them and says so.
#[test]
fn work_files_of_killed_dumps_are_removed_by_the_next_command() {
    let env = busybox_stack(
        "\n[[backup.dumps]]\nservice = \"db\"\nkind = \"command\"\n\
         command = [\"sh\", \"-c\", \"echo 'the dump'\"]\n\
         restore_command = [\"sh\", \"-c\", \"cat >/dev/null\"]\n",
    );
    let crash = |args: &[&str], point: &str| {
        let out = env.run_env(args, &[("NUWAX_TEST_CRASH_AT", OsStr::new(point))]);
        assert_eq!(out.code, None, "not killed at {point}:\n{out}");
    };
    crash(&["backup", "--hot"], "backup.after_partial_created");
    let left = dump_work_files(&env);
    assert!(
        left.iter().any(|n| n.starts_with(".nuwax-dumps-")),
        "the killed backup left its dump dir: {left:?}"
    );
    env.run(&["list-backups"])
        .assert_ok()
        .assert_stderr_has("removed the database dumps of an interrupted backup");
    assert!(
        dump_work_files(&env).is_empty(),
        "{:?}",
        dump_work_files(&env)
    );

    let out = env.run(&["backup", "--hot", "--json"]);
    out.assert_ok();
    let id = out.json()["backup"]["id"].as_i64().unwrap().to_string();
    crash(
        &["restore-dump", &id, "--service", "db"],
        "restore_dump.copied",
    );
    let left = dump_work_files(&env);
    assert!(
        left.iter().any(|n| n.starts_with(".nuwax-restore-dump-")),
        "the killed restore-dump left its copy: {left:?}"
    );
    env.run(&["list-backups"])
        .assert_ok()
        .assert_stderr_has("removed the dump copy of an interrupted restore-dump");
    assert!(
        dump_work_files(&env).is_empty(),
        "{:?}",
        dump_work_files(&env)
    );
    // The tool still works: the dump loads.
    env.run(&["restore-dump", &id, "--service", "db"])
        .assert_ok();
}

/// `list-backups --json` says which backups were taken hot, and `reindex` (a lost catalog)
/// and `import` keep it: they read it from the archive's `info.json`.
#[test]
fn hot_backups_stay_hot_through_reindex_and_import() {
    let env = busybox_stack(
        "\n[[backup.dumps]]\nservice = \"db\"\nkind = \"command\"\n\
         command = [\"sh\", \"-c\", \"echo 'the dump'\"]\n",
    );
    let out = env.run(&["backup", "--hot", "--json"]);
    out.assert_ok();
    let doc = out.json();
    assert_eq!(doc["backup"]["hot"], true, "{out}");
    let hot_file = doc["backup"]["file_path"].as_str().unwrap().to_owned();
    env.run(&["docker-service", "stop"]).assert_ok();
    let cold = env.backup();
    assert!(!cold.hot, "{cold:?}");
    let hot_of = |rows: &[crate::util::BackupRow]| -> Vec<(String, bool)> {
        let mut v: Vec<(String, bool)> =
            rows.iter().map(|r| (r.file_path.clone(), r.hot)).collect();
        v.sort();
        v
    };
    let before = hot_of(&env.list());
    assert!(before.contains(&(hot_file.clone(), true)), "{before:?}");

    // A lost catalog: reindex adopts both archives, the hot one hot.
    fs::remove_file(env.db_file()).unwrap();
    let doc = env.run_json(&["reindex", "--json"]);
    assert_eq!(doc["added"].as_array().map(Vec::len), Some(2), "{doc}");
    assert_eq!(hot_of(&env.list()), before);

    // import: the hot archive's row forgotten, adopted again from the file.
    let conn = rusqlite::Connection::open(env.db_file()).unwrap();
    conn.execute("DELETE FROM backups WHERE hot != 0", [])
        .unwrap();
    drop(conn);
    let doc = env.run_json(&["import", &hot_file, "--json"]);
    assert_eq!(doc["backup"]["hot"], true, "{doc}");
    assert_eq!(hot_of(&env.list()), before);
}

/// Root's password only in a file (`MARIADB_ROOT_PASSWORD_FILE`, a Docker secret): the dump
/// and `restore-dump` read it from that file inside the container and work as with the plain
/// variable; the password shows in no output.
#[test]
fn a_password_file_secret_is_read_inside_the_container() {
    let Some(db) = Db::start_with(&dump_config(""), true) else {
        return;
    };
    db.load();
    let before = db.checksum();
    let out = db.env.run(&["auto-backup", "run", "--json"]);
    out.assert_ok()
        .assert_stderr_has("dumping mariadb database of service db");
    let text = format!("{out}");
    assert!(!text.contains(ROOT_PASSWORD), "the password leaked:\n{out}");
    let id = out.json()["backup"]["id"].as_i64().unwrap().to_string();

    sql_ok(&db.container(), "DROP DATABASE shop");
    let out = db.env.run(&["restore-dump", &id, "--service", "db"]);
    out.assert_ok();
    assert!(
        !format!("{out}").contains(ROOT_PASSWORD),
        "the password leaked:\n{out}"
    );
    assert_eq!(db.checksum(), before, "the dump restored the table");
    assert!(db.leftovers().is_empty(), "{:?}", db.leftovers());
}
