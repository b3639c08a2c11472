//! Offsite copies on S3-compatible object storage: the `[remote]` configuration, credentials,
//! the object layout and the sidecar, and how remote failures map to our errors. Plain code;
//! the client lives in `actors/remote_actor.rs`, the operations in `ops/remote.rs`.
//!
//! Object layout under `s3://BUCKET/PREFIX/`:
//! - `<archive name>` (`backup_*.tar.gz`): the archive, uploaded as one multipart object;
//! - `<archive name>.json`: the sidecar (size, SHA-256, the backup's facts), written **last**
//!   as the commit marker. A listing reads sidecars only, so an archive object without its
//!   sidecar (a push that failed or is still running) is never taken for a copy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::retention::RetentionConfig;

/// S3 refuses parts smaller than this (except the last).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// S3 allows at most 10,000 parts per upload.
pub const MAX_PARTS: u64 = 10_000;
const DEFAULT_PART_SIZE: u64 = 16 * 1024 * 1024;
/// The slowest link a request is assumed to get when no cap is set: its timeout allows the
/// part to travel at a quarter of this.
const ASSUMED_RATE: u64 = 1024 * 1024;

/// `[remote]` as written in `config.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// `s3://BUCKET/PREFIX` (prefix optional).
    pub url: String,
    /// Any S3-compatible server (`http://` allowed when named here).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    #[serde(default)]
    pub push: PushMode,
    /// Multipart part size, e.g. `"16MiB"` (at least 5 MiB).
    pub part_size: Option<String>,
    /// Bandwidth cap, e.g. `"8MiB/s"`.
    pub upload_limit: Option<String>,
    /// An AWS shared-credentials file (`[default]` with `aws_access_key_id` and
    /// `aws_secret_access_key`); otherwise the `AWS_*` environment variables.
    pub credentials_file: Option<PathBuf>,
    /// The section of `credentials_file` to read (default `default`).
    pub profile: Option<String>,
    /// Seconds one request may take; default: scaled with the part size and the cap.
    pub timeout: Option<u64>,
    #[serde(default)]
    pub retention: RetentionConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PushMode {
    #[default]
    Manual,
    AfterBackup,
}

/// `[remote]` checked and resolved.
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    pub url: String,
    pub bucket: String,
    /// Without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub push: PushMode,
    pub part_size: u64,
    /// Bytes per second.
    pub upload_limit: Option<u64>,
    pub credentials_file: Option<PathBuf>,
    pub profile: String,
    pub request_timeout: Duration,
    pub retention: RetentionConfig,
}

impl RemoteConfig {
    /// Checks the section; `work_dir` resolves a relative `credentials_file`.
    pub fn resolve(&self, work_dir: &Path) -> Result<RemoteSettings, String> {
        let rest = self
            .url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("remote.url {:?} must start with s3://", self.url))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("remote.url {:?} names no bucket", self.url));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if prefix.split('/').any(|p| p == ".." || p == ".") {
            return Err(format!(
                "remote.url {:?}: '.' or '..' in the prefix",
                self.url
            ));
        }
        if let Some(e) = &self.endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(format!(
                "remote.endpoint {e:?} must start with http:// or https://"
            ));
        }
        let part_size = match &self.part_size {
            Some(s) => parse_size(s).map_err(|e| format!("remote.part_size: {e}"))?,
            None => DEFAULT_PART_SIZE,
        };
        if part_size < MIN_PART_SIZE {
            return Err(format!(
                "remote.part_size {part_size} bytes is below S3's minimum of 5MiB"
            ));
        }
        let upload_limit = match &self.upload_limit {
            Some(s) => {
                let s = s.trim();
                let s = s.strip_suffix("/s").unwrap_or(s);
                let v = parse_size(s).map_err(|e| format!("remote.upload_limit: {e}"))?;
                if v == 0 {
                    return Err("remote.upload_limit must be more than 0".into());
                }
                Some(v)
            }
            None => None,
        };
        let request_timeout = match self.timeout {
            Some(0) => return Err("remote.timeout must be at least 1 second".into()),
            Some(s) => Duration::from_secs(s),
            None => {
                let rate = upload_limit.unwrap_or(ASSUMED_RATE).min(ASSUMED_RATE);
                Duration::from_secs(30 + part_size.div_ceil(rate) * 4)
            }
        };
        let credentials_file = self.credentials_file.as_ref().map(|p| {
            if p.is_absolute() {
                p.clone()
            } else {
                work_dir.join(p)
            }
        });
        Ok(RemoteSettings {
            url: format!(
                "s3://{bucket}{}{prefix}",
                if prefix.is_empty() { "" } else { "/" }
            ),
            bucket: bucket.to_string(),
            prefix,
            endpoint: self.endpoint.clone(),
            region: self.region.clone().unwrap_or_else(|| "us-east-1".into()),
            push: self.push,
            part_size,
            upload_limit,
            credentials_file,
            profile: self.profile.clone().unwrap_or_else(|| "default".into()),
            request_timeout,
            retention: self.retention.clone(),
        })
    }
}

impl RemoteSettings {
    /// The object name (inside the bucket) of an archive.
    pub fn object_path(&self, archive_name: &str) -> String {
        if self.prefix.is_empty() {
            archive_name.to_string()
        } else {
            format!("{}/{archive_name}", self.prefix)
        }
    }

    /// The sidecar's object name.
    pub fn sidecar_path(&self, archive_name: &str) -> String {
        format!("{}{SIDECAR_SUFFIX}", self.object_path(archive_name))
    }

    /// The full remote name of an archive, as the catalog records it.
    pub fn object_key(&self, archive_name: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.object_path(archive_name))
    }
}

pub const SIDECAR_SUFFIX: &str = ".json";

/// `"16MiB"`, `"5 MB"`, `"1048576"`: bytes. Binary (KiB, MiB, GiB) and decimal (KB, MB, GB)
/// units; `K`/`M`/`G` alone are binary.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as \"16MiB\""))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit (use KiB, MiB, GiB, KB, MB or GB)"
            ));
        }
    };
    Ok((num * mult as f64) as u64)
}

/// Access key and secret. `Debug` never shows the secret.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Credentials from `credentials_file` when the config names one, else from
/// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`). Errors never
/// quote the file's content.
pub fn load_credentials(s: &RemoteSettings) -> Result<Credentials, Error> {
    if let Some(path) = &s.credentials_file {
        // A file named in the config that cannot be used is a configuration error (exit 2).
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Usage(format!(
                "cannot read the remote credentials_file {}: {e}",
                path.display()
            ))
        })?;
        return parse_credentials_file(&text, &s.profile).ok_or_else(|| {
            Error::Usage(format!(
                "remote credentials_file {} has no [{}] section with aws_access_key_id and aws_secret_access_key",
                path.display(),
                s.profile
            ))
        });
    }
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Credentials {
            access_key_id,
            secret_access_key,
            session_token: var("AWS_SESSION_TOKEN"),
        }),
        _ => Err(Error::Refused(
            "no credentials for the remote: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or name a credentials_file in [remote]".into(),
        )),
    }
}

/// The AWS shared-credentials format: `[profile]` sections of `key = value` lines.
fn parse_credentials_file(text: &str, profile: &str) -> Option<Credentials> {
    let mut section = String::new();
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
            continue;
        }
        if section != profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some(Credentials {
        access_key_id: id.filter(|v| !v.is_empty())?,
        secret_access_key: secret.filter(|v| !v.is_empty())?,
        session_token: token,
    })
}

/// The commit marker next to each archive object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
    /// Sidecar format version.
    pub format: u32,
    /// The archive's file name (and object name under the prefix).
    pub archive: String,
    pub size: u64,
    pub sha256: String,
    pub backup_type: String,
    pub service_version: String,
    /// RFC 3339, UTC: when the backup was taken.
    pub created_at: String,
    pub entry_count: Option<u64>,
    pub compose_project: Option<String>,
    /// RFC 3339, UTC.
    pub uploaded_at: String,
    /// `nuwax-cli <version>` that uploaded it.
    pub tool: String,
    /// Set for a plain local archive encrypted on its way out (README "Encryption",
    /// `scope = "remote"`): the plain archive's SHA-256 (the catalog's checksum of the
    /// backup). `archive`, `size` and `sha256` are then the ciphertext's
    /// (`<name>.tar.gz.age`), and a pull decrypts it back into `<name>.tar.gz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain_sha256: Option<String>,
    /// The plain archive's size, with `plain_sha256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain_size: Option<u64>,
    /// Fingerprints of the keys an encrypted copy was encrypted to (`sha256:…`, `scrypt`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
}

impl Sidecar {
    /// The name of the local archive this copy is: the plain `<name>.tar.gz` of a copy
    /// encrypted on its way out (a pull decrypts it there), else the object's own name.
    pub fn local_archive(&self) -> &str {
        match self.plain_sha256 {
            Some(_) => self
                .archive
                .strip_suffix(crate::encryption::AGE_SUFFIX)
                .unwrap_or(&self.archive),
            None => &self.archive,
        }
    }

    /// The checksum the catalog records for the backup of this copy: the plain archive's
    /// for a copy encrypted on its way out, else the object's.
    pub fn local_sha256(&self) -> &str {
        self.plain_sha256.as_deref().unwrap_or(&self.sha256)
    }

    /// The size of the local archive of this copy.
    pub fn local_size(&self) -> u64 {
        self.plain_size.unwrap_or(self.size)
    }

    /// Parses a sidecar fetched from the remote; its archive name must be a plain
    /// `backup_*.tar.gz`-like file name (it becomes a path in the storage dir).
    pub fn parse(bytes: &[u8], key: &str) -> Result<Sidecar, Error> {
        let s: Sidecar = serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
            path: PathBuf::from(key),
            detail: format!("remote sidecar is not valid: {e}"),
        })?;
        let name_ok = crate::relpath::RelPath::from_name(std::ffi::OsStr::new(&s.archive)).is_ok()
            && crate::encryption::is_archive_name(&s.archive)
            && !s.archive.contains('/');
        let is_sha = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
        let plain_ok = match &s.plain_sha256 {
            None => true,
            Some(h) => is_sha(h) && crate::encryption::is_encrypted_name(Path::new(&s.archive)),
        };
        if !name_ok || !plain_ok || !is_sha(&s.sha256) {
            return Err(Error::Corrupt {
                path: PathBuf::from(key),
                detail: format!(
                    "remote sidecar names archive {:?} with checksum {:?}: not a plain .tar.gz name and a SHA-256",
                    s.archive, s.sha256
                ),
            });
        }
        Ok(s)
    }
}

/// Maps a client error: wrong credentials, an unreachable server or a request that timed
/// out are refusals of the environment (exit 3); anything else failed the operation (exit 1).
pub(crate) fn classify(url: &str, what: &str, e: &object_store::Error) -> Error {
    use object_store::client::{HttpError, HttpErrorKind};
    let text = e.to_string();
    let credentials = matches!(
        e,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    );
    let mut transport = None;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<HttpError>() {
            transport = Some(h.kind());
        }
        cur = err.source();
    }
    if credentials {
        return Error::Refused(format!(
            "remote {url}: {what}: access denied (check the credentials and their permissions): {text}"
        ));
    }
    match transport {
        Some(
            HttpErrorKind::Connect
            | HttpErrorKind::Timeout
            | HttpErrorKind::Interrupted
            | HttpErrorKind::Request,
        ) => Error::Refused(format!(
            "remote {url}: {what}: the server is unreachable or did not answer in time: {text}"
        )),
        _ => Error::Remote(format!("remote {url}: {what}: {text}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> RemoteConfig {
        RemoteConfig {
            url: url.into(),
            endpoint: None,
            region: None,
            push: PushMode::Manual,
            part_size: None,
            upload_limit: None,
            credentials_file: None,
            profile: None,
            timeout: None,
            retention: RetentionConfig::default(),
        }
    }

    #[test]
    fn sizes_and_urls() {
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size("5 MB").unwrap(), 5_000_000);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert!(parse_size("3 parsecs").is_err());
        let s = cfg("s3://bkt/a/b/").resolve(Path::new("/w")).unwrap();
        assert_eq!((s.bucket.as_str(), s.prefix.as_str()), ("bkt", "a/b"));
        assert_eq!(s.object_path("x.tar.gz"), "a/b/x.tar.gz");
        assert_eq!(s.sidecar_path("x.tar.gz"), "a/b/x.tar.gz.json");
        let s = cfg("s3://bkt").resolve(Path::new("/w")).unwrap();
        assert_eq!(s.object_key("x.tar.gz"), "s3://bkt/x.tar.gz");
        assert!(cfg("http://x").resolve(Path::new("/w")).is_err());
        let mut c = cfg("s3://b");
        c.part_size = Some("1MiB".into());
        assert!(c.resolve(Path::new("/w")).is_err());
        c.part_size = Some("8MiB".into());
        c.upload_limit = Some("1MiB/s".into());
        let s = c.resolve(Path::new("/w")).unwrap();
        assert_eq!(s.upload_limit, Some(1 << 20));
        assert_eq!(s.request_timeout, Duration::from_secs(30 + 8 * 4));
    }

    #[test]
    fn credentials_file_profiles() {
        let text = "[other]\naws_access_key_id = A\naws_secret_access_key = B\n\n[default]\naws_access_key_id=K\naws_secret_access_key = S\n";
        let c = parse_credentials_file(text, "default").unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.secret_access_key.as_str()),
            ("K", "S")
        );
        assert!(!format!("{c:?}").contains("\"S\""));
        assert!(parse_credentials_file(text, "nope").is_none());
    }

    #[test]
    fn sidecar_refuses_unsafe_names() {
        let good = Sidecar {
            format: 1,
            archive: "backup_manual_v1_2026-01-01_00-00-00.tar.gz".into(),
            size: 1,
            sha256: "a".repeat(64),
            backup_type: "Manual".into(),
            service_version: "1".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            entry_count: None,
            compose_project: None,
            uploaded_at: "2026-01-01T00:00:00Z".into(),
            tool: "t".into(),
            plain_sha256: None,
            plain_size: None,
            recipients: Vec::new(),
        };
        let bytes = serde_json::to_vec(&good).unwrap();
        assert_eq!(Sidecar::parse(&bytes, "k").unwrap(), good);
        for bad in ["../x.tar.gz", "a/b.tar.gz", "x.zip", ""] {
            let mut s = good.clone();
            s.archive = bad.into();
            let bytes = serde_json::to_vec(&s).unwrap();
            assert!(Sidecar::parse(&bytes, "k").is_err(), "{bad}");
        }
    }
}
