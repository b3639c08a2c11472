//! The JSON contract's rows (DESIGN.md section 6; strict: an unknown field is a contract
//! change), catalog archive names and time helpers.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;

/// One catalog row as `list-backups --json`, `rollback --list-json` and `backup --json` print it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackupRow {
    pub id: i64,
    pub backup_type: String,
    pub created_at: String,
    pub service_version: String,
    pub file_path: String,
    pub file_size: Option<u64>,
    pub file_exists: bool,
    pub status: String,
    pub sha256: Option<String>,
    pub entry_count: Option<u64>,
    pub error: Option<String>,
    /// When `verify` last passed (`YYYY-MM-DD HH:MM:SS`), if ever. Not in the brief's list;
    /// the CLI prints it.
    pub verified_at: Option<String>,
    /// Made by the original nuwax-cli (adopted by `import`/`reindex`).
    pub legacy: bool,
    /// When the newest restore drill ended, if ever.
    pub drilled_at: Option<String>,
    /// `passed`, `failed`, `interrupted`, `running`, or null.
    pub drill_status: Option<String>,
    /// The archive is encrypted with age (`*.tar.gz.age`).
    pub encrypted: bool,
    /// Taken hot (`backup --hot`).
    pub hot: bool,
}

/// Every key of a row; `Option` fields must be present (as `null`), not left out.
pub const ROW_KEYS: &[&str] = &[
    "id",
    "backup_type",
    "created_at",
    "service_version",
    "file_path",
    "file_size",
    "file_exists",
    "status",
    "sha256",
    "entry_count",
    "error",
    "verified_at",
    "legacy",
    "drilled_at",
    "drill_status",
    "encrypted",
    "hot",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListDoc {
    pub schema_version: u32,
    pub success: bool,
    pub backups: Vec<BackupRow>,
    pub error: Option<String>,
    // Parsed so that the document keeps exactly this shape (deny_unknown_fields).
    #[allow(dead_code)]
    pub error_kind: Option<String>,
    #[allow(dead_code)]
    pub exit_code: i32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupDoc {
    pub schema_version: u32,
    pub success: bool,
    pub backup: Option<BackupRow>,
    pub error: Option<String>,
    // Parsed so that the document keeps exactly this shape (deny_unknown_fields).
    #[allow(dead_code)]
    pub error_kind: Option<String>,
    #[allow(dead_code)]
    pub exit_code: i32,
}

/// The envelope's keys around a document's own (`keys`).
pub fn doc_keys<'a>(keys: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec![
        "schema_version",
        "success",
        "error",
        "error_kind",
        "exit_code",
    ];
    all.extend_from_slice(keys);
    all
}

/// `error` (the message) of a failed document ("" when absent).
pub fn error_message(doc: &serde_json::Value) -> &str {
    doc["error"].as_str().unwrap_or("")
}

/// Asserts `value` is an object with exactly `keys`.
#[track_caller]
pub fn assert_keys(value: &serde_json::Value, keys: &[&str]) {
    let obj = value
        .as_object()
        .unwrap_or_else(|| panic!("expected a JSON object, got {value}"));
    let mut have: Vec<&str> = obj.keys().map(String::as_str).collect();
    let mut want: Vec<&str> = keys.to_vec();
    have.sort_unstable();
    want.sort_unstable();
    assert_eq!(have, want, "keys of {value}");
}

/// `YYYY-MM-DD HH:MM:SS`.
pub fn is_sql_datetime(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b' ',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        })
}

pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// Seconds since the epoch of a UTC civil date-time (days-from-civil, proleptic Gregorian).
pub fn utc_epoch(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> i64 {
    let y = if mo <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + h * 3600 + mi * 60 + s
}

/// Parses `YYYY-MM-DD HH:MM:SS` or `YYYY-MM-DD_HH-MM-SS` (UTC) into epoch seconds.
pub fn parse_utc(s: &str) -> Option<i64> {
    let nums: Vec<i64> = s
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    match nums.as_slice() {
        [y, mo, d, h, mi, s] => Some(utc_epoch(*y, *mo, *d, *h, *mi, *s)),
        _ => None,
    }
}

pub fn now_epoch() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// File name of a path as a `String`.
pub fn file_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// Checks `name` is `backup_<kind>_v<version>_<YYYY-MM-DD_HH-MM-SS>[_N].tar.gz` and returns
/// the timestamp's epoch seconds.
#[track_caller]
pub fn parse_archive_name(name: &str, kind: &str, version: &str) -> i64 {
    let prefix = format!("backup_{kind}_v{version}_");
    let rest = name
        .strip_prefix(&prefix)
        .and_then(|r| r.strip_suffix(".tar.gz"))
        .unwrap_or_else(|| panic!("archive name {name:?} is not {prefix}<time>.tar.gz"));
    let (stamp, suffix) = rest.split_at(rest.len().min(19));
    let b = stamp.as_bytes();
    let stamp_ok = b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 | 13 | 16 => *c == b'-',
            10 => *c == b'_',
            _ => c.is_ascii_digit(),
        });
    let suffix_ok = suffix.is_empty()
        || suffix
            .strip_prefix('_')
            .is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n >= 2));
    assert!(
        stamp_ok && suffix_ok,
        "archive name {name:?}: time must be UTC YYYY-MM-DD_HH-MM-SS, optionally _2, _3..."
    );
    parse_utc(stamp).unwrap()
}
