#![allow(clippy::print_stderr)] // the skip notice when the MariaDB image cannot be built (never under CI)
//! A real MariaDB server in a container, for the dump tests (issue 15).
//!
//! No image registry here: the image is made with `docker import` from a rootfs of
//! busybox-static (`/bin/sh` and friends), the host's own `mariadbd`, `mariadb` and
//! `mariadb-dump` (Debian's `mariadb-server`, which `.ci/run` installs, host service not
//! started) with every shared library `ldd` lists, the server's messages and charsets, and a
//! datadir made once by the host's `mariadb-install-db` (small InnoDB files) as a template.
//! Its init script copies the template into an empty datadir, sets root's password from
//! `MARIADB_ROOT_PASSWORD` or the file `MARIADB_ROOT_PASSWORD_FILE` names (as the official
//! image does) and runs `mariadbd` as PID 1 (it
//! shuts down cleanly on SIGTERM). The tag carries a hash of the binaries and the script, so
//! it is built once per content and reused by every test process.
//!
//! Under `CI=true` a machine that cannot build it fails the tests; elsewhere they are skipped
//! with a message.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::dockerutil::{docker, docker_ok, require_docker};

const BINARIES: &[&str] = &[
    "/usr/sbin/mariadbd",
    "/usr/bin/mariadb",
    "/usr/bin/mariadb-dump",
];
const APPLETS: &[&str] = &[
    "sh", "cp", "mkdir", "cat", "sleep", "ls", "rm", "test", "echo", "printf", "true", "seq",
];
/// Root's password in every test server.
pub const ROOT_PASSWORD: &str = "rootpw";

const INIT: &str = r#"#!/bin/sh
set -e
mkdir -p /run/mysqld
if [ -n "$MARIADB_ROOT_PASSWORD_FILE" ]; then
    MARIADB_ROOT_PASSWORD=$(cat "$MARIADB_ROOT_PASSWORD_FILE")
fi
if [ ! -d /var/lib/mysql/mysql ]; then
    cp -a /opt/template/. /var/lib/mysql/
fi
printf "ALTER USER 'root'@'localhost' IDENTIFIED BY '%s';\nFLUSH PRIVILEGES;\n" "$MARIADB_ROOT_PASSWORD" >/run/init.sql
exec mariadbd --no-defaults --user=root --datadir=/var/lib/mysql \
    --socket=/run/mysqld/mysqld.sock --skip-networking \
    --innodb-log-file-size=4M --innodb-data-file-path=ibdata1:4M:autoextend \
    --innodb-buffer-pool-size=32M --performance-schema=OFF \
    --lc-messages-dir=/usr/share/mysql --character-sets-dir=/usr/share/mysql/charsets \
    --init-file=/run/init.sql
"#;

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The MariaDB test image's tag, built if needed; `None` (test skipped) when this machine
/// cannot build it and this is not CI.
pub fn mariadb_image() -> Option<String> {
    static IMAGE: OnceLock<Result<String, String>> = OnceLock::new();
    require_docker();
    crate::dockerutil::ensure_test_image();
    match IMAGE.get_or_init(build) {
        Ok(tag) => Some(tag.clone()),
        Err(e) if ci() => panic!("cannot build the MariaDB test image: {e}"),
        Err(e) => {
            eprintln!("skipped: cannot build the MariaDB test image: {e}");
            None
        }
    }
}

fn build() -> Result<String, String> {
    for bin in BINARIES.iter().chain(&["/usr/bin/mariadb-install-db"]) {
        if !Path::new(bin).is_file() {
            return Err(format!(
                "{bin} is missing: install Debian's mariadb-server (.ci/run does)"
            ));
        }
    }
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        return Err("/bin/busybox is missing: install busybox-static (.ci/run does)".into());
    }
    let mut hasher = Sha256::new();
    hasher.update(INIT.as_bytes());
    for bin in BINARIES.iter().chain(&["/bin/busybox"]) {
        hasher.update(fs::read(bin).map_err(|e| format!("read {bin}: {e}"))?);
    }
    let tag = format!(
        "nuwax-test-mariadb:{}",
        &hex::encode(hasher.finalize())[..16]
    );
    if docker(&["image", "inspect", &tag]).status.success() {
        return Ok(tag);
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let root = dir.path().join("root");
    let template = root.join("opt/template");
    for d in [
        "bin",
        "tmp",
        "run/mysqld",
        "var/lib/mysql",
        "usr/share/mysql",
        "opt",
        "etc",
    ] {
        fs::create_dir_all(root.join(d)).map_err(|e| e.to_string())?;
    }
    let out = Command::new("mariadb-install-db")
        .args([
            "--no-defaults",
            "--user=root",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
            "--innodb-log-file-size=4M",
            "--innodb-data-file-path=ibdata1:4M:autoextend",
        ])
        .arg(format!("--datadir={}", template.display()))
        .output()
        .map_err(|e| format!("cannot run mariadb-install-db: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    copy(busybox, &root.join("bin/busybox"))?;
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
            .map_err(|e| e.to_string())?;
    }
    for bin in BINARIES {
        copy(Path::new(bin), &root.join(&bin[1..]))?;
        for lib in crate::dockerutil::ldd(Path::new(bin)) {
            copy(&lib, &root.join(lib.strip_prefix("/").unwrap()))?;
        }
    }
    for share in ["english", "charsets"] {
        let status = Command::new("cp")
            .arg("-r")
            .arg(Path::new("/usr/share/mysql").join(share))
            .arg(root.join("usr/share/mysql"))
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("cannot copy /usr/share/mysql/{share}"));
        }
    }
    let init = root.join("bin/mdb-init");
    let mut f = fs::File::create(&init).map_err(|e| e.to_string())?;
    f.write_all(INIT.as_bytes()).map_err(|e| e.to_string())?;
    drop(f);
    set_mode(&init, 0o755)?;
    let tar = dir.path().join("rootfs.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err("tar of the rootfs failed".into());
    }
    docker_ok(&[
        "import",
        "--change",
        "CMD [\"/bin/mdb-init\"]",
        tar.to_str().unwrap(),
        &tag,
    ]);
    Ok(tag)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())
}

/// Copies `src` (through symlinks) to `dest`, creating its parent dirs.
fn copy(src: &Path, dest: &Path) -> Result<(), String> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    fs::copy(src, dest)
        .map(drop)
        .map_err(|e| format!("copy {} -> {}: {e}", src.display(), dest.display()))
}

/// Runs SQL in `container` as root (password through the environment), returning stdout
/// (tab-separated, no headers); `Err` with stderr when the client fails.
pub fn sql(container: &str, statements: &str) -> Result<String, String> {
    let env = format!("MYSQL_PWD={ROOT_PASSWORD}");
    let out = docker(&[
        "exec",
        "-e",
        &env,
        container,
        "mariadb",
        "--user=root",
        "--batch",
        "--skip-column-names",
        "-e",
        statements,
    ]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// [`sql`] that must succeed.
#[track_caller]
pub fn sql_ok(container: &str, statements: &str) -> String {
    sql(container, statements).unwrap_or_else(|e| panic!("SQL failed: {statements}\n{e}"))
}

/// Waits (bounded) until the server in `container` answers.
#[track_caller]
pub fn wait_ready(container: &str) {
    let mut last = String::new();
    for _ in 0..120 {
        match sql(container, "SELECT 1") {
            Ok(_) => return,
            Err(e) => last = e,
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let logs = docker(&["logs", "--tail", "30", container]);
    panic!(
        "MariaDB in {container} did not become ready: {last}\n{}",
        String::from_utf8_lossy(&logs.stderr)
    );
}
