#![allow(clippy::print_stderr)] // the skip notice of a test without the `age` tools
//! Encryption at rest (README "Encryption"): `*.tar.gz.age` archives, restores with
//! `--identity` / `--passphrase-file`, exit codes for a missing key (2), a wrong key and a
//! damaged ciphertext (4, nothing live touched), interop with the `age` command both ways, and
//! `encryption check`. The `age`/`age-keygen` tools come from Debian's `age` package: missing,
//! these tests are skipped locally and fail under CI=true.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{TestEnv, Tree, assert_same_tree, exit, write};

/// Whether the `age` tools are here; under CI=true their absence fails the test.
pub(crate) fn age_tools() -> bool {
    let ok = Command::new("age-keygen")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("age-keygen is missing: .ci/run must install Debian's `age` package");
        }
        eprintln!("skipped: the `age` command is not installed (apt-get install age)");
    }
    ok
}

/// A fresh age identity in `dir`; returns (identity file, public key).
pub(crate) fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&path)
        .output()
        .expect("run age-keygen");
    assert!(out.status.success(), "{out:?}");
    let text = fs::read_to_string(&path).unwrap();
    let public = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("age-keygen writes the public key")
        .to_string();
    (path, public)
}

/// Appends `[encryption]` to the working dir's config.
pub(crate) fn configure(env: &TestEnv, section: &str) {
    let path = env.work.join("config.toml");
    let mut text = fs::read_to_string(&path).unwrap();
    text.push_str("\n[encryption]\n");
    text.push_str(section);
    fs::write(path, text).unwrap();
}

/// The keys live outside the working dir (as an operator keeps the identity off the host).
pub(crate) fn keys_dir(env: &TestEnv) -> PathBuf {
    let dir = env.root.join("keys");
    fs::create_dir_all(&dir).unwrap();
    dir
}

struct Encrypted {
    env: TestEnv,
    id: String,
    archive: PathBuf,
    identity: PathBuf,
    original: Tree,
}

/// A backup encrypted to a fresh age identity (scope "all"), then the live tree changed.
fn encrypted_backup() -> Option<Encrypted> {
    if !age_tools() {
        return None;
    }
    let env = TestEnv::new();
    let keys = keys_dir(&env);
    let (identity, public) = keygen(&keys, "key.txt");
    configure(
        &env,
        &format!("recipients = [\"{public}\"]\nscope = \"all\"\n"),
    );
    let original = env.snapshot_compose();
    let row = env.backup();
    assert!(row.encrypted, "{row:?}");
    assert!(row.file_path.ends_with(".tar.gz.age"), "{row:?}");
    let archive = PathBuf::from(&row.file_path);
    env.mutate();
    Some(Encrypted {
        id: row.id.to_string(),
        archive,
        identity,
        original,
        env,
    })
}

#[test]
fn an_encrypted_backup_is_unreadable_without_its_key_and_restores_with_it() {
    let Some(s) = encrypted_backup() else { return };
    let env = &s.env;
    // Ciphertext: no gzip magic, age's header instead.
    let bytes = fs::read(&s.archive).unwrap();
    assert!(bytes.starts_with(b"age-encryption.org/v1\n"));
    // The catalog's checksum is the ciphertext's.
    let row = env.list().into_iter().next().unwrap();
    assert_eq!(
        row.sha256.as_deref(),
        Some(crate::util::sha256_file(&s.archive).as_str())
    );
    let table = env.run(&["list-backups"]);
    table.assert_ok();
    assert!(table.stdout.contains("(encrypted)"), "{}", table.stdout);

    // No key: exit 2 saying what to pass; nothing touched.
    let mutated = env.snapshot_compose();
    let out = env.rollback_data(&s.id);
    out.assert_code(exit::USAGE).assert_stderr_has("--identity");
    assert_same_tree("compose dir", &mutated, &env.snapshot_compose());

    // Wrong key: exit 4, nothing touched.
    let (other, _) = keygen(&keys_dir(env), "other.txt");
    let out = env.run(&[
        "rollback".as_ref(),
        s.id.as_ref(),
        "--force".as_ref(),
        "--no-start".as_ref(),
        "--rollback-data".as_ref(),
        "--identity".as_ref(),
        other.as_os_str(),
    ]);
    out.assert_code(exit::INTEGRITY)
        .assert_stderr_has("cannot decrypt");
    assert_same_tree("compose dir", &mutated, &env.snapshot_compose());

    // `verify` without the key checks the checksum only; with it, everything.
    let out = env.run(&["verify", &s.id]);
    out.assert_ok().assert_stderr_has("content not checked");
    let out = env.run(&[
        "verify".as_ref(),
        s.id.as_ref(),
        "--identity".as_ref(),
        s.identity.as_os_str(),
    ]);
    out.assert_ok().assert_stderr_has("files checked");

    // The right key restores the backup byte for byte.
    let out = env.run(&[
        "rollback".as_ref(),
        s.id.as_ref(),
        "--force".as_ref(),
        "--no-start".as_ref(),
        "--rollback-data".as_ref(),
        "--identity".as_ref(),
        s.identity.as_os_str(),
    ]);
    out.assert_ok();
    let restored = env.snapshot_compose();
    assert_same_tree(
        "compose dir after the restore",
        &crate::util::except(&s.original, crate::util::EXCLUDED),
        &crate::util::except(&restored, crate::util::EXCLUDED),
    );

    // `encryption check` with the right key passes, with another fails (exit 4).
    let out = env.run(&[
        "encryption".as_ref(),
        "check".as_ref(),
        "--identity".as_ref(),
        s.identity.as_os_str(),
    ]);
    out.assert_ok().assert_stderr_has("decrypted");
    let out = env.run(&[
        "encryption".as_ref(),
        "check".as_ref(),
        "--identity".as_ref(),
        other.as_os_str(),
    ]);
    out.assert_code(exit::INTEGRITY);
    let out = env.run(&["encryption", "check"]);
    out.assert_code(exit::USAGE);
}

#[test]
fn a_truncated_or_bit_flipped_ciphertext_is_exit_4_before_anything_live_is_touched() {
    let Some(s) = encrypted_backup() else { return };
    let env = &s.env;
    let good = fs::read(&s.archive).unwrap();
    let mutated = env.snapshot_compose();
    let damaged: [(&str, Vec<u8>); 3] = [
        ("truncated", good[..good.len() * 2 / 3].to_vec()),
        ("bit flipped in the payload", {
            let mut b = good.clone();
            let at = b.len() / 2;
            b[at] ^= 0x01;
            b
        }),
        ("last chunk cut", good[..good.len() - 1].to_vec()),
    ];
    for (what, bytes) in damaged {
        fs::write(&s.archive, &bytes).unwrap();
        // The catalog's checksum is made to match, so only the decryption can notice.
        let sum = crate::util::sha256_file(&s.archive);
        let conn = rusqlite::Connection::open(env.db_file()).unwrap();
        conn.execute(
            "UPDATE backups SET sha256 = ?1, size = ?2 WHERE id = ?3",
            rusqlite::params![sum, bytes.len() as i64, s.id.parse::<i64>().unwrap()],
        )
        .unwrap();
        drop(conn);
        let out = env.run(&[
            "rollback".as_ref(),
            s.id.as_ref(),
            "--force".as_ref(),
            "--no-start".as_ref(),
            "--rollback-data".as_ref(),
            "--identity".as_ref(),
            s.identity.as_os_str(),
        ]);
        out.assert_code(exit::INTEGRITY);
        assert_same_tree(what, &mutated, &env.snapshot_compose());
    }
}

#[test]
fn the_age_command_decrypts_our_archives_and_we_restore_what_it_encrypts() {
    let Some(s) = encrypted_backup() else { return };
    let env = &s.env;
    // `age -d -i key.txt FILE | tar -xz` extracts the backed-up tree.
    let out_dir = env.root.join("by-age");
    fs::create_dir_all(&out_dir).unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg("age -d -i \"$1\" \"$2\" | tar -xz -C \"$3\"")
        .arg("sh")
        .arg(&s.identity)
        .arg(&s.archive)
        .arg(&out_dir)
        .status()
        .unwrap();
    assert!(status.success());
    let by_age = crate::util::snapshot(&out_dir);
    let by_age = crate::util::except(&by_age, &[".nuwax-backup"]);
    assert_same_tree(
        "tree extracted by age | tar",
        &crate::util::except(&s.original, crate::util::EXCLUDED),
        &by_age,
    );

    // The other way: decrypt with age, re-encrypt with age to a passphrase-less recipient,
    // put it in place; our restore opens it.
    let plain = env.root.join("plain.tar.gz");
    let (identity2, public2) = keygen(&keys_dir(env), "second.txt");
    let ok = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&s.identity)
        .arg("-o")
        .arg(&plain)
        .arg(&s.archive)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let reencrypted = env.root.join("re.age");
    let ok = Command::new("age")
        .arg("-r")
        .arg(&public2)
        .arg("-o")
        .arg(&reencrypted)
        .arg(&plain)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    fs::copy(&reencrypted, &s.archive).unwrap();
    let sum = crate::util::sha256_file(&s.archive);
    let conn = rusqlite::Connection::open(env.db_file()).unwrap();
    conn.execute(
        "UPDATE backups SET sha256 = ?1 WHERE id = ?2",
        rusqlite::params![sum, s.id.parse::<i64>().unwrap()],
    )
    .unwrap();
    drop(conn);
    let out = env.run(&[
        "rollback".as_ref(),
        s.id.as_ref(),
        "--force".as_ref(),
        "--no-start".as_ref(),
        "--rollback-data".as_ref(),
        "--identity".as_ref(),
        identity2.as_os_str(),
    ]);
    out.assert_ok();
    assert_same_tree(
        "compose dir restored from age's ciphertext",
        &crate::util::except(&s.original, crate::util::EXCLUDED),
        &crate::util::except(&env.snapshot_compose(), crate::util::EXCLUDED),
    );
}

#[test]
fn a_passphrase_round_trip_and_bad_recipients_refuse_the_backup() {
    if !age_tools() {
        return;
    }
    let env = TestEnv::new();
    let keys = keys_dir(&env);
    let pass = keys.join("pass.txt");
    write(&pass, b"correct horse battery staple\n", 0o600);
    let wrong = keys.join("wrong.txt");
    write(&wrong, b"not it\n", 0o600);
    configure(
        &env,
        &format!(
            "passphrase_file = \"{}\"\nscope = \"all\"\n",
            pass.display()
        ),
    );
    let original = env.snapshot_compose();
    // The scrypt work factor is lowered for tests (fault-injection builds only).
    let low = [("NUWAX_TEST_SCRYPT_LOG_N", std::ffi::OsStr::new("10"))];
    let out = env.run_env(&["backup", "--json"], &low);
    out.assert_ok();
    let id = env.list()[0].id.to_string();
    env.mutate();
    let mutated = env.snapshot_compose();
    let run = |file: &Path| {
        env.run(&[
            "rollback".as_ref(),
            id.as_ref(),
            "--force".as_ref(),
            "--no-start".as_ref(),
            "--rollback-data".as_ref(),
            "--passphrase-file".as_ref(),
            file.as_os_str(),
        ])
    };
    run(&wrong).assert_code(exit::INTEGRITY);
    assert_same_tree("compose dir", &mutated, &env.snapshot_compose());
    run(&pass).assert_ok();
    assert_same_tree(
        "compose dir",
        &crate::util::except(&original, crate::util::EXCLUDED),
        &crate::util::except(&env.snapshot_compose(), crate::util::EXCLUDED),
    );

    // Recipients that do not parse: the backup refuses to start (exit 2), writes nothing.
    let env = TestEnv::new();
    configure(&env, "recipients = [\"age1notakey\"]\n");
    let before = env.backup_files();
    let out = env.run(&["backup"]);
    out.assert_code(exit::USAGE)
        .assert_stderr_has("encryption.recipients");
    assert_eq!(before, env.backup_files());
    assert!(env.list().is_empty());
}

/// `age -d -i IDENTITY -o OUT IN` / `age -r RECIPIENT -o OUT IN`, asserting success.
fn age(args: &[&std::ffi::OsStr]) {
    let out = Command::new("age").args(args).output().expect("run age");
    assert!(out.status.success(), "age {args:?}: {out:?}");
}

#[test]
fn verify_with_the_identity_decrypts_and_finds_a_file_altered_inside_the_ciphertext() {
    let Some(s) = encrypted_backup() else { return };
    let env = &s.env;
    // Decrypt, change one file's content (same size, a valid archive otherwise), encrypt
    // again to the same key, and make the catalog agree with the new ciphertext: only a
    // decrypt-and-verify can tell.
    let plain = env.root.join("plain.tar.gz");
    age(&[
        "-d".as_ref(),
        "-i".as_ref(),
        s.identity.as_os_str(),
        "-o".as_ref(),
        plain.as_os_str(),
        s.archive.as_os_str(),
    ]);
    let mut entries = crate::archutil::read_raw(&plain);
    let i = crate::archutil::index_of(&entries, "app/VERSION");
    entries[i].data[0] ^= 0x01;
    let altered = env.root.join("altered.tar.gz");
    crate::archutil::write_raw(&altered, &entries);
    let public = fs::read_to_string(&s.identity)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# public key: ").map(str::to_owned))
        .unwrap();
    age(&[
        "-r".as_ref(),
        public.as_ref(),
        "-o".as_ref(),
        s.archive.as_os_str(),
        altered.as_os_str(),
    ]);
    let id: i64 = s.id.parse().unwrap();
    crate::archutil::catalog_set_checksum(
        &env.db_file(),
        id,
        &crate::util::sha256_file(&s.archive),
        fs::metadata(&s.archive).unwrap().len(),
    );
    // Without the key only the checksum is checked, and it matches.
    env.run(&["verify", &s.id])
        .assert_ok()
        .assert_stderr_has("content not checked");
    // With it, every file: exit 4 naming the file.
    let out = env.run(&[
        "verify".as_ref(),
        s.id.as_ref(),
        "--identity".as_ref(),
        s.identity.as_os_str(),
    ]);
    out.assert_code(exit::INTEGRITY)
        .assert_stderr_has("app/VERSION");
    // A wrong key: exit 4 too, saying it cannot decrypt.
    let (other, _) = keygen(&keys_dir(env), "other.txt");
    env.run(&[
        "verify".as_ref(),
        s.id.as_ref(),
        "--identity".as_ref(),
        other.as_os_str(),
    ])
    .assert_code(exit::INTEGRITY);
}

#[test]
fn reindex_reports_an_encrypted_archive_without_its_key_and_adds_it_with_the_key() {
    let Some(s) = encrypted_backup() else { return };
    let env = &s.env;
    let row = env.list().into_iter().next().unwrap();
    fs::remove_file(env.db_file()).unwrap();
    // No key anywhere: not a hard failure; the archive is reported with what to pass.
    let doc = env.run_json(&["reindex", "--json"]);
    assert_eq!(doc["added"].as_array().unwrap().len(), 0, "{doc}");
    let invalid = doc["invalid"].as_array().unwrap();
    assert_eq!(invalid.len(), 1, "{doc}");
    assert!(
        invalid[0]["error"].as_str().unwrap().contains("--identity"),
        "{doc}"
    );
    // With the identity (given, or [encryption] identity_file): its metadata is read and it
    // is verified before it becomes a row.
    let doc = env.run_json(&[
        "reindex".as_ref(),
        "--json".as_ref(),
        "--identity".as_ref(),
        s.identity.as_os_str(),
    ]);
    let added = doc["added"].as_array().unwrap();
    assert_eq!(added.len(), 1, "{doc}");
    assert_eq!(added[0]["file_path"], row.file_path.as_str());
    assert_eq!(added[0]["sha256"], row.sha256.as_deref().unwrap());
    assert_eq!(added[0]["encrypted"], true);
    assert_eq!(added[0]["service_version"], row.service_version.as_str());
    // A wrong key: reported, not added.
    fs::remove_file(env.db_file()).unwrap();
    let (other, _) = keygen(&keys_dir(env), "other.txt");
    let doc = env.run_json(&[
        "reindex".as_ref(),
        "--json".as_ref(),
        "--identity".as_ref(),
        other.as_os_str(),
    ]);
    assert_eq!(doc["added"].as_array().unwrap().len(), 0, "{doc}");
    assert_eq!(doc["invalid"].as_array().unwrap().len(), 1, "{doc}");
}

#[test]
fn an_ssh_ed25519_recipient_round_trips_and_the_age_command_opens_it_with_the_ssh_key() {
    if !age_tools() {
        return;
    }
    let env = TestEnv::new();
    let keys = keys_dir(&env);
    let key = keys.join("id_ed25519");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "nuwax@test", "-f"])
        .arg(&key)
        .output()
        .expect("run ssh-keygen");
    assert!(out.status.success(), "{out:?}");
    let public = fs::read_to_string(keys.join("id_ed25519.pub")).unwrap();
    configure(
        &env,
        &format!("recipients = [{:?}]\nscope = \"all\"\n", public.trim()),
    );
    let original = env.snapshot_compose();
    let row = env.backup();
    assert!(row.encrypted, "{row:?}");
    env.mutate();
    // The standard tool opens it with the ssh private key.
    let listing = Command::new("bash")
        .args([
            "-o",
            "pipefail",
            "-c",
            "age -d -i \"$1\" \"$2\" | tar -tz",
            "bash",
        ])
        .arg(&key)
        .arg(&row.file_path)
        .output()
        .unwrap();
    assert!(listing.status.success(), "{listing:?}");
    assert!(String::from_utf8_lossy(&listing.stdout).contains("docker-compose.yml"));
    // And so do we: a full restore with the ssh key as --identity.
    env.run(&[
        "rollback".as_ref(),
        row.id.to_string().as_ref(),
        "--force".as_ref(),
        "--no-start".as_ref(),
        "--rollback-data".as_ref(),
        "--identity".as_ref(),
        key.as_os_str(),
    ])
    .assert_ok();
    assert_same_tree(
        "compose dir restored with the ssh key",
        &crate::util::except(&original, crate::util::EXCLUDED),
        &crate::util::except(&env.snapshot_compose(), crate::util::EXCLUDED),
    );
}
