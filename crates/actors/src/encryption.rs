//! Encryption at rest (`[encryption]`, README "Encryption"): which keys a backup is encrypted
//! to, and the key a restore decrypts with.
//!
//! Design note: only public keys (age `age1…` recipients, `ssh-ed25519`/`ssh-rsa` keys) or a
//! passphrase file are needed to write a backup; the identity (private key) stays off the
//! host and is named only for a restore (`--identity`, `--passphrase-file`, or
//! `[encryption] identity_file`). Keys are parsed when they are used, not when the config is
//! loaded, so a broken key file blocks the backup that needs it (exit 2) but never a restore
//! or a listing. The catalog keeps a fingerprint of each recipient (the first 16 hex digits of
//! the SHA-256 of its canonical text), never a key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use age::secrecy::SecretString;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The suffix of an encrypted archive: `<name>.tar.gz.age`.
pub const AGE_SUFFIX: &str = ".age";

/// `[encryption]` as written in `config.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncryptionConfig {
    /// Public keys: `age1…`, `ssh-ed25519 …`, `ssh-rsa …`.
    pub recipients: Vec<String>,
    /// A file of public keys, one a line (`#` comments and blank lines ignored), as
    /// `age -R` reads it.
    pub recipients_file: Option<PathBuf>,
    /// A file whose first line is the passphrase (scrypt); never the passphrase itself.
    pub passphrase_file: Option<PathBuf>,
    pub scope: Scope,
    /// The identity a restore uses when none is given on the command line.
    pub identity_file: Option<PathBuf>,
}

/// Which archives are encrypted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Only what is pushed to the remote (local archives stay plain).
    #[default]
    Remote,
    /// Local archives too (`*.tar.gz.age` in the storage dir).
    All,
}

/// How a restore decrypts: an identity file or a passphrase file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Identity(PathBuf),
    Passphrase(PathBuf),
}

impl KeySource {
    /// Reads and parses the key. A missing or unparsable file is exit 2 naming it.
    pub fn load(&self) -> Result<DecryptKey> {
        let bad = |path: &Path, what: String| {
            Error::KeyRequired(format!(
                "cannot use {} as a decryption key: {what}",
                path.display()
            ))
        };
        match self {
            KeySource::Passphrase(path) => {
                let pass = read_passphrase(path).map_err(|e| bad(path, e))?;
                Ok(DecryptKey(Arc::new(KeyInner::Passphrase(pass))))
            }
            KeySource::Identity(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| bad(path, e.to_string()))?;
                let mut ids: Vec<Box<dyn age::Identity + Send + Sync>> = Vec::new();
                if let Ok(file) = age::IdentityFile::from_buffer(text.as_bytes())
                    && let Ok(found) = file.into_identities()
                {
                    ids = found;
                }
                if ids.is_empty() {
                    match age::ssh::Identity::from_buffer(
                        text.as_bytes(),
                        Some(path.display().to_string()),
                    ) {
                        Ok(age::ssh::Identity::Unencrypted(key)) => {
                            ids.push(Box::new(age::ssh::Identity::Unencrypted(key)));
                        }
                        Ok(_) => {
                            return Err(bad(
                                path,
                                "a passphrase-protected or unsupported ssh key; use an unencrypted copy or an age identity (`age-keygen`)".into(),
                            ));
                        }
                        Err(_) => {}
                    }
                }
                if ids.is_empty() {
                    return Err(bad(
                        path,
                        "it holds no age identity (AGE-SECRET-KEY-1…) and no ssh private key"
                            .into(),
                    ));
                }
                Ok(DecryptKey(Arc::new(KeyInner::Identities(ids))))
            }
        }
    }
}

/// A loaded decryption key (secret; never printed).
#[derive(Clone)]
pub struct DecryptKey(Arc<KeyInner>);

enum KeyInner {
    Identities(Vec<Box<dyn age::Identity + Send + Sync>>),
    Passphrase(SecretString),
}

impl std::fmt::Debug for DecryptKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DecryptKey(..)")
    }
}

impl DecryptKey {
    /// Starts decrypting `input`: reads the header and unwraps the file key. `Err` when no
    /// identity given matches (a wrong key) or the header is damaged.
    pub fn decryptor<R: std::io::Read>(
        &self,
        input: R,
    ) -> std::result::Result<age::stream::StreamReader<R>, String> {
        let d = age::Decryptor::new(input).map_err(|e| format!("not a valid age file: {e}"))?;
        let r = match &*self.0 {
            KeyInner::Identities(ids) => d.decrypt(ids.iter().map(|i| i.as_ref() as _)),
            KeyInner::Passphrase(p) => {
                let id = age::scrypt::Identity::new(p.clone());
                d.decrypt(std::iter::once(&id as &dyn age::Identity))
            }
        };
        r.map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => {
                "the given key cannot decrypt it: none of its identities is among the archive's recipients (wrong --identity?)".to_string()
            }
            age::DecryptError::DecryptionFailed | age::DecryptError::KeyDecryptionFailed
                if matches!(&*self.0, KeyInner::Passphrase(_)) =>
            {
                "the given passphrase cannot decrypt it (wrong --passphrase-file?)".to_string()
            }
            other => format!("cannot decrypt: {other}"),
        })
    }
}

/// What a backup or a push encrypts to, parsed from `[encryption]`.
#[derive(Clone)]
pub struct Encryption {
    kind: EncKind,
    /// Recorded in the catalog: a fingerprint per recipient, or `scrypt` for a passphrase.
    pub fingerprints: Vec<String>,
}

#[derive(Clone)]
enum EncKind {
    Recipients(Vec<String>),
    Passphrase(SecretString),
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryption")
            .field("fingerprints", &self.fingerprints)
            .finish_non_exhaustive()
    }
}

impl Encryption {
    /// Wraps `output` in an age encrypting writer (call `finish` on it at the end).
    pub fn writer<W: std::io::Write>(
        &self,
        output: W,
    ) -> std::io::Result<age::stream::StreamWriter<W>> {
        let encryptor = match &self.kind {
            EncKind::Recipients(list) => {
                let parsed: Vec<Box<dyn age::Recipient + Send>> = list
                    .iter()
                    .map(|r| parse_recipient(r))
                    .collect::<std::result::Result<_, _>>()
                    .map_err(std::io::Error::other)?;
                age::Encryptor::with_recipients(parsed.iter().map(|r| r.as_ref() as _))
                    .map_err(std::io::Error::other)?
            }
            EncKind::Passphrase(p) => {
                let mut r = age::scrypt::Recipient::new(p.clone());
                if let Some(log_n) = crate::faults::scrypt_work_factor() {
                    r.set_work_factor(log_n);
                }
                age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient))
                    .map_err(std::io::Error::other)?
            }
        };
        encryptor.wrap_output(output)
    }
}

impl EncryptionConfig {
    /// Whether any key to encrypt to is configured (then `encryptor` is used).
    pub fn enabled(&self) -> bool {
        !self.recipients.is_empty()
            || self.recipients_file.is_some()
            || self.passphrase_file.is_some()
    }

    /// The keys to encrypt to, parsed; `Ok(None)` without any. Anything unparsable is a
    /// configuration error (exit 2) naming the entry, so a backup refuses to start.
    pub fn encryptor(&self, config_file: &Path, work_dir: &Path) -> Result<Option<Encryption>> {
        if !self.enabled() {
            return Ok(None);
        }
        let bad = |message: String| Error::Config {
            path: config_file.to_path_buf(),
            message,
        };
        if let Some(pf) = &self.passphrase_file {
            if !self.recipients.is_empty() || self.recipients_file.is_some() {
                return Err(bad(
                    "encryption: passphrase_file cannot be combined with recipients (age encrypts to a passphrase alone); choose one".into(),
                ));
            }
            let path = work_dir.join(pf);
            let pass = read_passphrase(&path).map_err(|e| {
                bad(format!(
                    "encryption.passphrase_file {}: {e}",
                    path.display()
                ))
            })?;
            return Ok(Some(Encryption {
                kind: EncKind::Passphrase(pass),
                fingerprints: vec!["scrypt".into()],
            }));
        }
        let mut list = self.recipients.clone();
        if let Some(rf) = &self.recipients_file {
            let path = work_dir.join(rf);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                bad(format!(
                    "encryption.recipients_file {}: {e}",
                    path.display()
                ))
            })?;
            list.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        if list.is_empty() {
            return Err(bad(
                "encryption: recipients_file names no recipient; add an age1… or ssh public key"
                    .into(),
            ));
        }
        let mut fingerprints = Vec::with_capacity(list.len());
        for r in &list {
            parse_recipient(r).map_err(|e| bad(format!("encryption.recipients: {e}")))?;
            fingerprints.push(fingerprint(r));
        }
        Ok(Some(Encryption {
            kind: EncKind::Recipients(list),
            fingerprints,
        }))
    }
}

fn parse_recipient(s: &str) -> std::result::Result<Box<dyn age::Recipient + Send>, String> {
    let s = s.trim();
    if s.starts_with("age1") {
        s.parse::<age::x25519::Recipient>()
            .map(|r| Box::new(r) as _)
            .map_err(|e| format!("{:?} is not a valid age recipient: {e}", short(s)))
    } else if s.starts_with("ssh-") {
        s.parse::<age::ssh::Recipient>()
            .map(|r| Box::new(r) as _)
            .map_err(|e| format!("{:?} is not a valid ssh public key: {e:?}", short(s)))
    } else {
        Err(format!(
            "{:?} is neither an age recipient (age1…) nor an ssh public key (ssh-ed25519 …, ssh-rsa …); a private key never goes here",
            short(s)
        ))
    }
}

/// The first 24 characters: enough to find the entry, never a whole (possibly secret) line.
fn short(s: &str) -> String {
    s.chars().take(24).collect::<String>() + if s.chars().count() > 24 { "…" } else { "" }
}

/// A recipient's fingerprint: `sha256:` and the first 16 hex digits of the SHA-256 of its
/// text (for ssh keys, without the trailing comment).
pub fn fingerprint(recipient: &str) -> String {
    let mut parts = recipient.split_whitespace();
    let canonical = match (parts.next(), parts.next()) {
        (Some(kind), Some(key)) if kind.starts_with("ssh-") => format!("{kind} {key}"),
        (Some(one), _) => one.to_owned(),
        _ => String::new(),
    };
    let digest = Sha256::digest(canonical.as_bytes());
    format!("sha256:{}", &hex::encode(digest)[..16])
}

fn read_passphrase(path: &Path) -> std::result::Result<SecretString, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err("the file is empty (its first line is the passphrase)".into());
    }
    Ok(SecretString::from(line.to_owned()))
}

/// Whether a file name is one of this tool's archives: `*.tar.gz`, or `*.tar.gz.age`
/// encrypted.
pub fn is_archive_name(name: &str) -> bool {
    name.strip_suffix(AGE_SUFFIX)
        .unwrap_or(name)
        .ends_with(".tar.gz")
}

/// Whether `path` names an encrypted archive (`*.tar.gz.age`).
pub fn is_encrypted_name(path: &Path) -> bool {
    path.to_string_lossy().ends_with(AGE_SUFFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_parse_and_private_keys_are_refused() {
        let id = age::x25519::Identity::generate();
        let public = id.to_public().to_string();
        let cfg = EncryptionConfig {
            recipients: vec![public.clone()],
            ..Default::default()
        };
        let enc = cfg
            .encryptor(Path::new("/c.toml"), Path::new("/"))
            .unwrap()
            .unwrap();
        assert_eq!(enc.fingerprints, vec![fingerprint(&public)]);
        for bad in ["age1xyz", "AGE-SECRET-KEY-1QQQ", "ssh-ed25519 AAAAnope"] {
            let cfg = EncryptionConfig {
                recipients: vec![bad.into()],
                ..Default::default()
            };
            let err = cfg
                .encryptor(Path::new("/c.toml"), Path::new("/"))
                .unwrap_err();
            assert!(matches!(err, Error::Config { .. }), "{bad}: {err}");
            assert!(!err.to_string().contains("QQQ") || bad.len() < 24, "{err}");
        }
    }

    #[test]
    fn fingerprints_ignore_ssh_comments() {
        assert_eq!(
            fingerprint("ssh-ed25519 AAAAC3 alice@host"),
            fingerprint("ssh-ed25519 AAAAC3 bob")
        );
        assert_ne!(fingerprint("age1a"), fingerprint("age1b"));
    }
}
