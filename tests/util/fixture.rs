//! The fixture a `TestEnv` starts with: a realistic compose project dir.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::env::Fixture;
use super::is_root;
use super::tree::walk;

/// Writes `bytes` to `path` (creating parents) with `mode`.
pub fn write(path: &Path, bytes: &[u8], mode: u32) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Deterministic pseudo-random bytes (xorshift64*): incompressible, reproducible.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Something that looks like an InnoDB tablespace: 16 KiB pages, a header, mostly zeros and
/// some noise (compressible, like the real thing).
fn innodb_like(seed: u64, pages: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(pages * 16384);
    for p in 0..pages {
        let mut page = vec![0u8; 16384];
        page[0..4].copy_from_slice(&(p as u32).to_be_bytes());
        page[24..26].copy_from_slice(&0x45bfu16.to_be_bytes());
        if p % 3 == 0 {
            let n = noise(seed + p as u64, 4096);
            page[38..38 + 4096].copy_from_slice(&n);
        }
        out.extend_from_slice(&page);
    }
    out
}

/// The compose project dir: what a backup archives.
pub(super) fn build_compose_dir(d: &Path, project: &str, fixture: Fixture) {
    fs::create_dir_all(d).unwrap();
    // `network_mode: none`: CI's dockerd runs with `--bridge=none`, and a rollback that starts
    // the services must not need a network. The command exits promptly on SIGTERM.
    let compose = format!(
        "# {project}: test stack, release 1.2.3\n\
         # release 1.2.3\n\
         x-serve: &serve [\"sh\", \"-c\", \"trap 'exit 0' TERM; while :; do sleep 1; done\"]\n\
         services:\n\
         \x20 app:\n\
         \x20   image: nuwax-test-busybox:latest\n\
         \x20   command: *serve\n\
         \x20   network_mode: none\n\
         \x20   restart: unless-stopped\n\
         \x20   stop_grace_period: 5s\n\
         \x20   env_file: .env\n\
         \x20   volumes:\n\
         \x20     - ./app:/app\n\
         \x20     - ./config/app.yml:/etc/app.yml:ro\n\
         \x20     - ./data:/data\n\
         \x20     - ./logs:/logs\n\
         \x20 worker:\n\
         \x20   image: nuwax-test-busybox:latest\n\
         \x20   command: *serve\n\
         \x20   network_mode: none\n\
         \x20   depends_on:\n\
         \x20     - app\n\
         \x20 migrate:\n\
         \x20   image: nuwax-test-busybox:latest\n\
         \x20   command: [\"true\"]\n\
         \x20   network_mode: none\n\
         \x20   restart: \"no\"\n"
    );
    write(&d.join("docker-compose.yml"), compose.as_bytes(), 0o644);
    write(
        &d.join(".env"),
        b"APP_PORT=8080\nMYSQL_ROOT_PASSWORD=s3cret\nTZ=UTC\n",
        0o600,
    );
    write(
        &d.join("config/app.yml"),
        b"server:\n  port: 8080\ndatabase:\n  host: mysql\n  name: nuwax\n",
        0o644,
    );
    write(
        &d.join("config/nginx/default.conf"),
        b"server {\n  listen 80;\n  location / { proxy_pass http://app:8080; }\n}\n",
        0o644,
    );

    // app/: executable script, secret, symlinks, hard link, nested and empty dirs, long and
    // non-ASCII names, a sticky dir.
    write(&d.join("app/VERSION"), b"1.2.3\n", 0o644);
    write(
        &d.join("app/bin/start.sh"),
        b"#!/bin/sh\nset -e\nexec /app/bin/server --config /etc/app.yml\n",
        0o755,
    );
    fs::hard_link(d.join("app/bin/start.sh"), d.join("app/bin/entrypoint.sh")).unwrap();
    write(&d.join("app/secret.key"), &noise(1, 64), 0o600);
    write(
        &d.join("app/releases/v1/server.jar"),
        &noise(2, 64 * 1024),
        0o644,
    );
    write(&d.join("app/releases/v1/README"), b"release v1\n", 0o444);
    std::os::unix::fs::symlink("releases/v1", d.join("app/current")).unwrap();
    write(&d.join("app/lib/libnuwax.so.1"), &noise(3, 9000), 0o755);
    std::os::unix::fs::symlink("libnuwax.so.1", d.join("app/lib/libnuwax.so")).unwrap();
    std::os::unix::fs::symlink("does-not-exist", d.join("app/lib/dangling")).unwrap();
    let mut html = b"<!doctype html>\n<html><body>nuwax 1.2.3</body></html>\n".repeat(40);
    html.extend_from_slice(b"<!-- end -->\n");
    write(&d.join("app/static/index.html"), &html, 0o644);
    write(
        &d.join("app/static/ünïcødé-名前.css"),
        b"body { margin: 0 }\n",
        0o644,
    );
    write(&d.join("app/static/empty.txt"), b"", 0o644);
    write(
        &d.join("app/static/file with spaces.txt"),
        b"spaces\n",
        0o644,
    );
    // Special bits: a restore that chowns after chmod loses setuid (chown clears it).
    write(&d.join("app/bin/suid-helper"), &noise(4, 300), 0o4755);
    fs::create_dir_all(d.join("app/shared")).unwrap();
    write(&d.join("app/shared/team.txt"), b"shared\n", 0o664);
    fs::set_permissions(d.join("app/shared"), fs::Permissions::from_mode(0o2775)).unwrap();
    fs::create_dir_all(d.join("app/cache")).unwrap();
    fs::create_dir_all(d.join("app/tmp")).unwrap();
    fs::set_permissions(d.join("app/tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    // A private directory: a restore makes it with its final mode, never wider.
    write(&d.join("app/private/key.pem"), b"not a key\n", 0o600);
    fs::set_permissions(d.join("app/private"), fs::Permissions::from_mode(0o750)).unwrap();
    // A path longer than 100 bytes and a name longer than 100 bytes: GNU long-name records.
    let long_dir = d.join(
        "app/deep/a-rather-long-directory-name-number-one/another-fairly-long-directory-name-two",
    );
    let long_name = format!("{}.txt", "very-long-file-name-".repeat(6));
    write(&long_dir.join(long_name), b"long path\n", 0o644);

    // data/ and upload/: the data scope.
    write(&d.join("data/mysql/ibdata1"), &innodb_like(10, 24), 0o640);
    write(
        &d.join("data/mysql/ib_logfile0"),
        &vec![0u8; 96 * 1024],
        0o640,
    );
    write(
        &d.join("data/mysql/nuwax/users.ibd"),
        &innodb_like(11, 6),
        0o640,
    );
    write(
        &d.join("data/mysql/nuwax/agents.ibd"),
        &innodb_like(12, 4),
        0o640,
    );
    write(
        &d.join("data/mysql/auto.cnf"),
        b"[auto]\nserver-uuid=3f1c2f0e-0000-4000-8000-000000000001\n",
        0o640,
    );
    let mut rdb = b"REDIS0009\xfa\x09redis-ver\x057.2.4".to_vec();
    rdb.extend_from_slice(&noise(13, 8192));
    rdb.push(0xff);
    write(&d.join("data/redis/dump.rdb"), &rdb, 0o644);
    write(
        &d.join("data/minio/.minio.sys/format.json"),
        br#"{"version":"1","format":"xl-single","id":"test"}"#,
        0o600,
    );
    write(
        &d.join("data/minio/nuwax/avatars/a.png/xl.meta"),
        &noise(14, 2048),
        0o644,
    );
    // Non-UTF-8 file name (Latin-1 "café.bin").
    write(
        &d.join("data").join(OsStr::from_bytes(b"caf\xe9.bin")),
        &noise(15, 100),
        0o644,
    );
    fs::create_dir_all(d.join("data/mysql/#innodb_temp")).unwrap();
    write(&d.join("upload/avatars/1.png"), &noise(16, 1500), 0o644);
    if fixture.large_file {
        write(
            &d.join("data/mysql/big.ibd"),
            &noise(17, 9 * 1024 * 1024 + 12345),
            0o640,
        );
    }
    if is_root() {
        // Like a real MySQL data dir: owned by the container's mysql user.
        for entry in walk(&d.join("data/mysql")) {
            std::os::unix::fs::lchown(&entry, Some(999), Some(999)).unwrap();
        }
        std::os::unix::fs::lchown(d.join("data/mysql"), Some(999), Some(999)).unwrap();
        std::os::unix::fs::lchown(d.join("data/redis/dump.rdb"), Some(999), Some(1000)).unwrap();
        std::os::unix::fs::lchown(d.join("app/current"), Some(1000), Some(1000)).unwrap();
        std::os::unix::fs::lchown(d.join("app/bin/suid-helper"), Some(1000), Some(1000)).unwrap();
        // chown cleared the setuid bit: set it again.
        fs::set_permissions(
            d.join("app/bin/suid-helper"),
            fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        // A read-only dir with content: its mode must be set after its files are written.
        // (Root only: a normal user could not clean it up.)
        fs::set_permissions(d.join("app/releases/v1"), fs::Permissions::from_mode(0o555)).unwrap();
    }

    // logs/: excluded by the default config.
    write(
        &d.join("logs/app.log"),
        b"2024-01-01 00:00:00 INFO started\n",
        0o644,
    );
    write(
        &d.join("logs/witness.log"),
        b"never archived, never restored\n",
        0o644,
    );
    write(&d.join("logs/nested/old.log"), b"old\n", 0o644);
}

/// Cuts the sub-second part of every mtime under `dir` that has one (tar keeps seconds),
/// leaving the others, and so their ctimes, alone.
pub fn whole_seconds(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    for p in walk(dir) {
        let m = fs::symlink_metadata(&p).unwrap();
        if m.mtime_nsec() != 0 {
            let t = filetime::FileTime::from_unix_time(m.mtime(), 0);
            filetime::set_symlink_file_times(&p, t, t).unwrap();
        }
    }
}
