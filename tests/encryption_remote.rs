//! Encryption of offsite copies (README "Encryption", `scope = "remote"`, the default): local
//! archives stay plain, `remote push` sends `<name>.tar.gz.age` (a ciphertext staged in the
//! storage dir, resumable), `remote verify` checks it without a key, and a pull on a host that
//! lost everything decrypts and verifies it with `--identity` before it becomes a catalog row.
//! Against the real S3 servers (moto, SeaweedFS) and the real `age` command.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::encryption::{age_tools, configure, keygen, keys_dir};
use crate::remote::{
    Remote, Server, archive_name, big_env, http, kill_push_after_first_part, list_states, moto,
    recorded_parts, seaweed,
};
use crate::util::{EXCLUDED, TestEnv, except, sha256_file};

const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";

/// A working dir with `[remote]` on `r` and `[encryption]` recipients (scope left at its
/// default, "remote"); returns the identity file.
fn setup(r: &Remote, env: &TestEnv) -> PathBuf {
    let (identity, public) = keygen(&keys_dir(env), "key.txt");
    configure(env, &format!("recipients = [\"{public}\"]\n"));
    r.configure(env, &r.endpoint.clone(), "");
    identity
}

/// The start of a test here: the remote on `server` and a working dir from `env` with
/// [`setup`], and the identity file; `None` (the test is skipped) without the server or the
/// `age` tools.
fn start(server: Option<Server>, env: fn() -> TestEnv) -> Option<(Remote, TestEnv, PathBuf)> {
    let s = server?;
    if !age_tools() {
        return None;
    }
    let r = Remote::new(s);
    let env = env();
    let identity = setup(&r, &env);
    Some((r, env, identity))
}

/// The object's bytes, read through moto's S3 API (moto does not check signatures).
fn get_object(r: &Remote, name: &str) -> Vec<u8> {
    let (st, body) = http(
        &r.endpoint,
        "GET",
        &format!("/{}/site-a/{name}", r.bucket),
        b"",
    );
    assert_eq!(st, 200, "GET {name}: {}", String::from_utf8_lossy(&body));
    body
}

/// Every object key in the bucket (moto's ListObjects).
fn object_keys(r: &Remote) -> Vec<String> {
    let (st, body) = http(&r.endpoint, "GET", &format!("/{}", r.bucket), b"");
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    String::from_utf8_lossy(&body)
        .split("<Key>")
        .skip(1)
        .filter_map(|t| t.split("</Key>").next())
        .map(str::to_string)
        .collect()
}

/// `bash -o pipefail -c "age -d -i KEY FILE | <then>"`: stdout, asserting success.
fn age_decrypt_into(identity: &Path, file: &Path, then: &str) -> Vec<u8> {
    let out = Command::new("bash")
        .arg("-o")
        .arg("pipefail")
        .arg("-c")
        .arg(format!("age -d -i \"$1\" \"$2\" | {then}"))
        .arg("sh")
        .arg(identity)
        .arg(file)
        .output()
        .expect("run age");
    assert!(
        out.status.success(),
        "age -d | {then}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn staged_files(env: &TestEnv) -> Vec<String> {
    match fs::read_dir(env.backups_dir().join(".nuwax-push")) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn scope_remote_pushes_only_ciphertext_that_age_opens_and_verify_needs_no_key() {
    let Some((r, env, identity)) = start(moto(), TestEnv::new) else {
        return;
    };
    let row = env.backup();
    // Local archives stay plain with scope = "remote".
    assert!(!row.encrypted, "{row:?}");
    assert!(row.file_path.ends_with(".tar.gz"), "{row:?}");
    let local = PathBuf::from(&row.file_path);
    let name = archive_name(&row.file_path);
    let sealed = format!("{name}.age");

    let doc = r.json(&env, &["remote", "push", &row.id.to_string(), "--json"]);
    assert_eq!(doc["pushed"][0]["archive"], sealed.as_str(), "{doc}");
    // Nothing plain in the bucket: the archive object is the ciphertext, its sidecar next to it.
    let mut keys = object_keys(&r);
    keys.sort();
    assert_eq!(
        keys,
        vec![format!("site-a/{sealed}"), format!("site-a/{sealed}.json")]
    );
    let object = get_object(&r, &sealed);
    assert!(object.starts_with(AGE_MAGIC), "not an age file");
    assert_eq!(
        doc["pushed"][0]["sha256"].as_str().unwrap(),
        crate::util::sha256_bytes(&object)
    );
    // The catalog records the copy's ciphertext checksum, the plain archive it came from and
    // the recipients' fingerprints.
    let conn = rusqlite::Connection::open(env.db_file()).unwrap();
    let (copy_sha, plain_sha, recipients): (String, String, String) = conn
        .query_row(
            "SELECT c.sha256, e.plain_sha256, e.recipients FROM remote_copies c \
             JOIN remote_copy_encryption e USING (backup_id) WHERE c.backup_id = ?1",
            [row.id],
            |q| Ok((q.get(0)?, q.get(1)?, q.get(2)?)),
        )
        .unwrap();
    drop(conn);
    assert_eq!(copy_sha, crate::util::sha256_bytes(&object));
    assert_eq!(Some(plain_sha), row.sha256.clone());
    let recipients: Vec<String> = serde_json::from_str(&recipients).unwrap();
    assert_eq!(recipients.len(), 1, "{recipients:?}");
    assert!(recipients[0].starts_with("sha256:"), "{recipients:?}");
    // The standard tool opens it: the same bytes as the local archive, a tar.gz.
    let downloaded = env.root.join("downloaded.tar.gz.age");
    fs::write(&downloaded, &object).unwrap();
    let plain = age_decrypt_into(&identity, &downloaded, "cat");
    assert_eq!(plain, fs::read(&local).unwrap());
    let listing = age_decrypt_into(&identity, &downloaded, "tar -tz");
    assert!(
        String::from_utf8_lossy(&listing).contains("docker-compose.yml"),
        "{}",
        String::from_utf8_lossy(&listing)
    );
    // The staged ciphertext is gone, the local archive untouched.
    assert!(staged_files(&env).is_empty(), "{:?}", staged_files(&env));
    assert_eq!(env.backup_files(), vec![name.clone()]);
    assert_eq!(sha256_file(&local), row.sha256.clone().unwrap());
    assert_eq!(list_states(&r, &env), vec![(sealed.clone(), "both".into())]);
    // A second push sends nothing.
    let doc = r.json(&env, &["remote", "push", "--all", "--json"]);
    assert_eq!(doc["pushed"][0]["already_there"], true, "{doc}");

    // `remote verify` needs no key: sizes and checksums, and with --download the ciphertext.
    r.run(&env, &["remote", "verify", &row.id.to_string()])
        .assert_ok();
    r.run(&env, &["remote", "verify", "--all", "--download"])
        .assert_ok()
        .assert_stderr_has("ok (downloaded and hashed)");
    // Damaged through the S3 API, same size: the download's checksum catches it.
    let mut bad = object.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    let (st, _) = http(
        &r.endpoint,
        "PUT",
        &format!("/{}/site-a/{sealed}", r.bucket),
        &bad,
    );
    assert_eq!(st, 200);
    r.run(&env, &["remote", "verify", "--all", "--download"])
        .assert_code(4)
        .assert_stderr_has("does not match");
    // Without --download only sizes and recorded checksums are compared: a same-size
    // damage needs the download to be seen (the README says so).
    r.run(&env, &["remote", "verify", &row.id.to_string()])
        .assert_ok();
}

#[test]
fn lost_host_pulls_an_encrypted_copy_only_with_its_identity_then_rolls_back() {
    let Some((r, env, identity)) = start(seaweed(), TestEnv::new) else {
        return;
    };
    let original = env.snapshot_compose();
    let row = env.backup();
    let sealed = format!("{}.age", archive_name(&row.file_path));
    r.json(&env, &["remote", "push", &row.id.to_string(), "--json"]);
    // The host is lost: archives and catalog gone, the service dir changed.
    fs::remove_dir_all(env.backups_dir()).unwrap();
    fs::remove_dir_all(env.work.join("data")).unwrap();
    env.mutate();
    let mutated = env.snapshot_compose();

    // No key: exit 2 saying what to pass; nothing downloaded, no catalog row.
    r.run(&env, &["remote", "pull", &sealed])
        .assert_code(2)
        .assert_stderr_has("--identity");
    assert!(env.backup_files().is_empty(), "{:?}", env.backup_files());
    // A wrong key: exit 4, nothing left in the storage dir, the catalog unchanged (empty).
    let (other, _) = keygen(&keys_dir(&env), "other.txt");
    let other = other.to_string_lossy().into_owned();
    r.run(&env, &["remote", "pull", &sealed, "--identity", &other])
        .assert_code(4)
        .assert_stderr_has("cannot decrypt");
    assert!(env.backup_files().is_empty(), "{:?}", env.backup_files());
    assert!(env.list().is_empty(), "{:?}", env.list());

    // The right key: decrypted back into the plain archive, verified, then a catalog row.
    let key = identity.to_string_lossy().into_owned();
    let doc = r.json(
        &env,
        &["remote", "pull", &sealed, "--identity", &key, "--json"],
    );
    let pulled = &doc["backup"];
    assert_eq!(pulled["file_path"], row.file_path.as_str(), "{doc}");
    assert_eq!(pulled["sha256"], row.sha256.as_deref().unwrap(), "{doc}");
    assert_eq!(pulled["encrypted"], false, "{doc}");
    assert_eq!(
        sha256_file(Path::new(&row.file_path)),
        row.sha256.clone().unwrap()
    );
    assert_eq!(list_states(&r, &env), vec![(sealed.clone(), "both".into())]);
    assert_same(&mutated, &env.snapshot_compose());
    let id = pulled["id"].as_i64().unwrap().to_string();
    r.run(
        &env,
        &["rollback", &id, "--force", "--rollback-data", "--no-start"],
    )
    .assert_ok();
    assert_same(&original, &env.snapshot_compose());
}

#[test]
fn lost_host_reindex_remote_then_rollback_with_identity_downloads_and_decrypts() {
    let Some((r, env, identity)) = start(moto(), TestEnv::new) else {
        return;
    };
    let original = env.snapshot_compose();
    let row = env.backup();
    r.json(&env, &["remote", "push", &row.id.to_string(), "--json"]);
    fs::remove_dir_all(env.backups_dir()).unwrap();
    fs::remove_dir_all(env.work.join("data")).unwrap();
    env.mutate();
    let mutated = env.snapshot_compose();
    let doc = r.json(&env, &["reindex", "--remote", "--json"]);
    let added = doc["added"].as_array().unwrap();
    assert_eq!(added.len(), 1, "{doc}");
    assert_eq!(added[0]["file_path"], row.file_path.as_str(), "{doc}");
    let id = added[0]["id"].as_i64().unwrap().to_string();
    let rows_before = env.list();
    // Without the key the rollback stops before anything is downloaded or stopped.
    r.run(
        &env,
        &["rollback", &id, "--force", "--rollback-data", "--no-start"],
    )
    .assert_code(2)
    .assert_stderr_has("--identity");
    // A wrong key: exit 4, live data and catalog untouched.
    let (other, _) = keygen(&keys_dir(&env), "other.txt");
    let other = other.to_string_lossy().into_owned();
    r.run(
        &env,
        &[
            "rollback",
            &id,
            "--force",
            "--rollback-data",
            "--no-start",
            "--identity",
            &other,
        ],
    )
    .assert_code(4);
    assert_same(&mutated, &env.snapshot_compose());
    assert_eq!(format!("{:?}", env.list()), format!("{rows_before:?}"));
    assert!(env.backup_files().is_empty(), "{:?}", env.backup_files());
    let key = identity.to_string_lossy().into_owned();
    r.run(
        &env,
        &[
            "rollback",
            &id,
            "--force",
            "--rollback-data",
            "--no-start",
            "--identity",
            &key,
        ],
    )
    .assert_ok();
    assert_same(&original, &env.snapshot_compose());
    assert_eq!(env.backup_files(), vec![archive_name(&row.file_path)]);
}

#[test]
fn a_killed_encrypted_push_resumes_from_the_same_staged_ciphertext() {
    let Some((r, env, identity)) = start(moto(), big_env) else {
        return;
    };
    // Slow enough to be killed between parts.
    r.configure(&env, &r.endpoint.clone(), "upload_limit = \"3MiB/s\"\n");
    let row = env.backup();
    let sealed = format!("{}.age", archive_name(&row.file_path));
    let done = kill_push_after_first_part(&r, &env, row.id);
    // The ciphertext stays staged for the resume; no sidecar, so no copy yet.
    assert_eq!(staged_files(&env), vec![sealed.clone()]);
    let staged = env.backups_dir().join(".nuwax-push").join(&sealed);
    let staged_sha = sha256_file(&staged);
    assert_eq!(list_states(&r, &env)[0].1, "local-only");
    r.configure(&env, &r.endpoint.clone(), "");
    let doc = r.json(&env, &["remote", "push", &row.id.to_string(), "--json"]);
    assert_eq!(doc["pushed"][0]["parts_resumed"], done, "{doc}");
    // The object is exactly the staged ciphertext: no mixed object.
    assert_eq!(doc["pushed"][0]["sha256"], staged_sha.as_str(), "{doc}");
    let object = get_object(&r, &sealed);
    assert_eq!(crate::util::sha256_bytes(&object), staged_sha);
    let downloaded = env.root.join("resumed.tar.gz.age");
    fs::write(&downloaded, &object).unwrap();
    assert_eq!(
        age_decrypt_into(&identity, &downloaded, "cat"),
        fs::read(&row.file_path).unwrap()
    );
    assert!(staged_files(&env).is_empty());
    assert_eq!(recorded_parts(&env), 0);
}

#[test]
fn changed_recipients_restage_and_the_old_upload_is_aborted() {
    let Some((r, env, _)) = start(moto(), big_env) else {
        return;
    };
    r.configure(&env, &r.endpoint.clone(), "upload_limit = \"3MiB/s\"\n");
    let row = env.backup();
    let sealed = format!("{}.age", archive_name(&row.file_path));
    kill_push_after_first_part(&r, &env, row.id);
    assert_eq!(staged_files(&env), vec![sealed.clone()]);
    // The keys change before the push is resumed: the staged ciphertext (to the old key)
    // is not sent, a new one to the new key is.
    let (identity2, public2) = keygen(&keys_dir(&env), "key2.txt");
    let cfg = env.work.join("config.toml");
    let text = fs::read_to_string(&cfg).unwrap();
    let start = text.find("recipients = [").unwrap();
    let end = start + text[start..].find('\n').unwrap();
    fs::write(
        &cfg,
        format!(
            "{}recipients = [\"{public2}\"]{}",
            &text[..start],
            &text[end..]
        ),
    )
    .unwrap();
    r.configure(&env, &r.endpoint.clone(), "");
    let doc = r.json(&env, &["remote", "push", &row.id.to_string(), "--json"]);
    assert_eq!(doc["pushed"][0]["parts_resumed"], 0, "{doc}");
    assert_eq!(doc["aborted_uploads"].as_array().unwrap().len(), 1, "{doc}");
    let downloaded = env.root.join("rekeyed.tar.gz.age");
    fs::write(&downloaded, get_object(&r, &sealed)).unwrap();
    assert_eq!(
        age_decrypt_into(&identity2, &downloaded, "cat"),
        fs::read(&row.file_path).unwrap()
    );
    assert!(staged_files(&env).is_empty());
}

fn assert_same(expected: &crate::util::Tree, actual: &crate::util::Tree) {
    crate::util::assert_same_tree(
        "compose dir",
        &except(expected, EXCLUDED),
        &except(actual, EXCLUDED),
    );
}

#[test]
fn delete_backup_remote_and_remote_prune_remove_encrypted_copies_by_their_age_names() {
    let Some((r, env, _)) = start(moto(), TestEnv::new) else {
        return;
    };
    let rows: Vec<_> = (0..3).map(|_| env.backup()).collect();
    r.json(&env, &["remote", "push", "--all", "--json"]);
    let sealed = |i: usize| format!("site-a/{}.age", archive_name(&rows[i].file_path));
    let mut keys = object_keys(&r);
    keys.sort();
    let mut want: Vec<String> = (0..3)
        .flat_map(|i| [sealed(i), format!("{}.json", sealed(i))])
        .collect();
    want.sort();
    assert_eq!(keys, want);

    // delete-backup --remote finds the copy under its .tar.gz.age name: object and sidecar go.
    let doc = r.json(
        &env,
        &[
            "delete-backup",
            &rows[0].id.to_string(),
            "--remote",
            "--force",
            "--json",
        ],
    );
    assert_eq!(
        doc["remote_deleted"],
        format!("s3://{}/{}", r.bucket, sealed(0)),
        "{doc}"
    );
    let keys = object_keys(&r);
    assert!(!keys.iter().any(|k| k.starts_with(&sealed(0))), "{keys:?}");

    // remote prune keeps the newest encrypted copy and deletes the other, sidecar included;
    // local archives stay.
    let doc = r.json(&env, &["remote", "prune", "--keep-last", "1", "--json"]);
    assert_eq!(doc["deleted"].as_array().unwrap().len(), 1, "{doc}");
    let mut keys = object_keys(&r);
    keys.sort();
    assert_eq!(keys, vec![sealed(2), format!("{}.json", sealed(2))]);
    for b in &rows[1..] {
        assert!(env.row(b.id).file_exists, "{}", b.id);
    }
}
