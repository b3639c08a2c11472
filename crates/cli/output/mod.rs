//! JSON documents and text tables. These are contracts (DESIGN.md section 6): the GUI reads
//! the first seven fields of [`BackupJson`]. Catalog rows are never serialized directly.

mod document;
pub(crate) mod inspect;

pub(crate) use document::{Document, EmptyList, NoBody};
use nuwax_actors::BackupEntry;
use serde::Serialize;

/// One backup as the GUI and scripts see it.
#[derive(Debug, Serialize)]
pub(crate) struct BackupJson {
    /// Catalog ID, the argument of `rollback`, `verify`, `delete-backup`.
    pub id: i64,
    /// `Manual`, `PreUpgrade` or `Auto`.
    pub backup_type: &'static str,
    /// `YYYY-MM-DD HH:MM:SS`, UTC.
    pub created_at: String,
    pub service_version: String,
    /// Absolute path of the archive.
    pub file_path: String,
    /// Size on disk; null when the file is missing.
    pub file_size: Option<u64>,
    pub file_exists: bool,
    /// `Running`, `Completed` or `Failed`.
    pub status: &'static str,
    /// SHA-256 of the archive recorded at backup time.
    pub sha256: Option<String>,
    /// Number of entries archived.
    pub entry_count: Option<u64>,
    /// Why a Failed backup failed.
    pub error: Option<String>,
    /// When `verify` last passed, `YYYY-MM-DD HH:MM:SS` UTC.
    pub verified_at: Option<String>,
    /// Made by the original nuwax-cli (adopted by `import` or `reindex`): it holds only
    /// `data/` and `app/`, and a rollback restores only those.
    pub legacy: bool,
    /// When the newest restore drill of this backup ended (`drill`), `YYYY-MM-DD HH:MM:SS`
    /// UTC; null when it was never drilled (or the drill is still running).
    pub drilled_at: Option<String>,
    /// How that drill ended: `passed`, `failed`, `interrupted` (`running` while one runs);
    /// null when never drilled.
    pub drill_status: Option<&'static str>,
    /// The archive is encrypted with age (`*.tar.gz.age`): a restore needs `--identity`.
    pub encrypted: bool,
    /// Taken hot (`backup --hot`): the dumps' `hot_exclude` paths (live datadirs) are not in
    /// the archive, its database dumps stand in for them (`restore-dump`).
    pub hot: bool,
}

impl From<&BackupEntry> for BackupJson {
    fn from(e: &BackupEntry) -> Self {
        let r = &e.record;
        BackupJson {
            id: r.id,
            backup_type: r.backup_type.as_str(),
            created_at: r.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            service_version: r.service_version.clone(),
            file_path: r.file_path.display().to_string(),
            file_size: e.file_size,
            file_exists: e.file_exists,
            status: r.status.as_str(),
            sha256: r.sha256.clone(),
            entry_count: r.entry_count,
            error: r.error.clone(),
            verified_at: r
                .verified_at
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()),
            legacy: r.legacy,
            encrypted: e.encrypted,
            drilled_at: e
                .last_drill
                .as_ref()
                .and_then(|d| d.finished_at)
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()),
            drill_status: e.last_drill.as_ref().map(|d| d.outcome.as_str()),
            hot: e.hot,
        }
    }
}

/// Result of `drill --json`.
#[derive(Debug, Serialize)]
pub(crate) struct DrillDocument {
    pub drill: DrillJson,
}

/// One restore drill.
#[derive(Debug, Serialize)]
pub(crate) struct DrillJson {
    /// The drill's id in the catalog.
    pub id: i64,
    pub backup_id: i64,
    /// The compose project the drill ran as (`<project>-drill-<backup id>`).
    pub project: String,
    /// `passed` or `failed`.
    pub outcome: &'static str,
    pub duration_ms: u64,
    /// The persistent services that came up.
    pub services: Vec<String>,
    pub checks: Vec<DrillCheckJson>,
    /// The service that did not come up, or whose check failed.
    pub failed_service: Option<String>,
    /// Its last log lines (or the failed check's output).
    pub log_tail: Option<String>,
    pub error: Option<String>,
    /// What the compose file rewrite dropped or re-pointed.
    pub notes: Vec<String>,
    /// `--keep`: the drill is still up; how to remove it. Null otherwise.
    pub kept: Option<KeptJson>,
}

#[derive(Debug, Serialize)]
pub(crate) struct DrillCheckJson {
    pub service: String,
    pub command: Vec<String>,
    pub passed: bool,
    /// null when the command could not run.
    pub exit_code: Option<i64>,
    /// The end of its output.
    pub output: String,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct KeptJson {
    /// The scratch copy the drill runs from.
    pub work_dir: String,
    pub compose_file: String,
    /// The commands that remove the drill.
    pub remove_with: String,
}

impl From<&nuwax_actors::DrillReport> for DrillJson {
    fn from(r: &nuwax_actors::DrillReport) -> Self {
        DrillJson {
            id: r.drill_id,
            backup_id: r.backup.record.id,
            project: r.project.clone(),
            outcome: r.outcome.as_str(),
            duration_ms: u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX),
            services: r.services.clone(),
            checks: r
                .checks
                .iter()
                .map(|c| DrillCheckJson {
                    service: c.service.clone(),
                    command: c.command.clone(),
                    passed: c.passed,
                    exit_code: c.exit_code,
                    output: c.output.clone(),
                    error: c.error.clone(),
                })
                .collect(),
            failed_service: r.failed_service.clone(),
            log_tail: r.log_tail.clone(),
            error: r.error.clone(),
            notes: r.notes.clone(),
            kept: r.kept.as_ref().map(|k| KeptJson {
                work_dir: k.work_dir.display().to_string(),
                compose_file: k.compose_file.display().to_string(),
                remove_with: k.remove_with.clone(),
            }),
        }
    }
}

/// `list-backups --json` and `rollback --list-json`.
#[derive(Debug, Serialize)]
pub(crate) struct ListDocument {
    /// Newest first.
    pub backups: Vec<BackupJson>,
}

/// Result of `backup --json`.
#[derive(Debug, Serialize)]
pub(crate) struct BackupDocument {
    pub backup: Option<BackupJson>,
}

/// Result of `rollback --json` / `rollback-data-only --json`.
#[derive(Debug, Serialize)]
pub(crate) struct RollbackDocument {
    pub backup_id: i64,
    /// `app`, `all` or `data-only`.
    pub scope: &'static str,
    /// Top-level items replaced by the archive's version.
    pub restored: Vec<String>,
    /// Top-level items in scope that the archive did not have.
    pub removed: Vec<String>,
    /// Containers stopped for the rollback.
    pub stopped: Vec<String>,
    /// Whether the services were started again.
    pub services_started: bool,
    pub files: u64,
    pub bytes: u64,
    /// Milliseconds from the start of the rollback until the swap was committed (the
    /// restored files live; the services start from here).
    pub committed_after_ms: u64,
    /// Milliseconds from the start of the rollback until the services were started again
    /// and healthy (before the replaced files were removed); null when not started.
    pub started_after_ms: Option<u64>,
    /// Milliseconds from the stop of the services until they were started again (the
    /// downtime); null when nothing was stopped or started.
    pub downtime_ms: Option<u64>,
    /// Milliseconds spent removing the replaced files, after the start.
    pub cleanup_ms: u64,
}

/// Result of `verify --json`.
#[derive(Debug, Serialize)]
pub(crate) struct VerifyDocument {
    pub results: Vec<VerifyJson>,
}

#[derive(Debug, Serialize)]
pub(crate) struct VerifyJson {
    pub id: i64,
    pub file_path: String,
    pub ok: bool,
    /// Whether the file's SHA-256 equals the catalog's; null when the catalog has none.
    pub checksum_matches: Option<bool>,
    pub entries: u64,
    pub files_checked: u64,
    /// Each problem found, naming the entry.
    pub problems: Vec<String>,
    /// `false` for an encrypted backup verified without its key (`--identity`): only the
    /// archive's checksum was checked, not its content.
    pub content_checked: bool,
}

/// Result of `delete-backup --json`.
#[derive(Debug, Serialize)]
pub(crate) struct DeleteDocument {
    pub deleted: Option<BackupJson>,
    /// The local archive file was deleted.
    pub local_deleted: bool,
    /// The remote copy deleted with `--remote` (`s3://bucket/prefix/name`), else null.
    pub remote_deleted: Option<String>,
    /// The catalog entry stays because the backup's remote copy does (it is remote-only
    /// now, still restorable).
    pub catalog_entry_kept: bool,
}

/// `1.5 KiB`, `12.3 MiB`...
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A name or path as a table or message shows it: every control character is escaped (`\n`,
/// `\r`, `\t`, `\x1b`, other C0/C1 controls as `\xNN` / `\u{NN}`), a backslash is doubled
/// (names that are not UTF-8 arrive here with U+FFFD in place of the bad bytes), so a hostile file name can neither forge a
/// table row nor send a terminal escape. JSON never uses this: it carries the exact name.
pub(crate) fn escape_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    push_escaped(&mut out, name, true);
    out
}

/// Names joined with `, ` for a status line, each escaped with [`escape_name`].
pub(crate) fn escape_names<S: AsRef<str>>(names: &[S]) -> String {
    names
        .iter()
        .map(|n| escape_name(n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A message for stderr: control characters other than the line breaks and tabs the message
/// itself is made of are escaped, so a name quoted in it cannot reach the terminal as an
/// escape sequence.
pub(crate) fn escape_message(msg: &str) -> String {
    if !msg
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return msg.to_owned();
    }
    let mut out = String::with_capacity(msg.len());
    push_escaped(&mut out, msg, false);
    out
}

fn push_escaped(out: &mut String, s: &str, all: bool) {
    for c in s.chars() {
        match c {
            '\n' if all => out.push_str("\\n"),
            '\t' if all => out.push_str("\\t"),
            '\n' | '\t' => out.push(c),
            '\r' => out.push_str("\\r"),
            '\\' if all => out.push_str("\\\\"),
            c if c.is_control() && c.is_ascii() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
}

/// Lays out a text table: every cell is escaped with [`escape_name`], columns are padded to
/// their widest cell, except the last one (a file name that may be long).
pub(crate) fn render_table<const N: usize>(rows: &[[String; N]]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| escape_name(c)).collect())
        .collect();
    let widths: Vec<usize> = (0..N)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == N {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The text table of `list-backups` (and the interactive picker).
pub(crate) fn table(entries: &[&BackupEntry]) -> String {
    let mut rows = vec![[
        "ID".to_string(),
        "TYPE".into(),
        "CREATED (UTC)".into(),
        "VERSION".into(),
        "STATUS".into(),
        "SIZE".into(),
        "DRILL".into(),
        "FILE".into(),
    ]];
    for e in entries {
        let r = &e.record;
        let status = if r.status.as_str() == "Completed" && !e.file_exists {
            "missing".to_string()
        } else {
            r.status.as_str().to_string()
        };
        rows.push([
            r.id.to_string(),
            match (r.legacy, e.encrypted) {
                (true, _) => format!("{} (legacy)", r.backup_type.as_str()),
                (false, true) => format!("{} (encrypted)", r.backup_type.as_str()),
                (false, false) => r.backup_type.as_str().to_string(),
            },
            r.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            r.service_version.clone(),
            status,
            e.file_size.map(human_bytes).unwrap_or_else(|| "-".into()),
            e.last_drill
                .as_ref()
                .map(|d| d.outcome.as_str().to_string())
                .unwrap_or_else(|| "-".into()),
            r.file_path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ]);
    }
    render_table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_so_they_cannot_forge_rows_or_escapes() {
        assert_eq!(escape_name("plain name.tar.gz"), "plain name.tar.gz");
        assert_eq!(
            escape_name("a\nb\tc\r\u{1b}[31m\u{7}\u{7f}\u{9b}é\\"),
            "a\\nb\\tc\\r\\x1b[31m\\x07\\x7f\\u{9b}é\\\\"
        );
        assert_eq!(escape_names(&["x\ny", "z"]), "x\\ny, z");
        // Messages keep their own line breaks and tabs, but no escape reaches the terminal.
        assert_eq!(escape_message("one\n\ttwo"), "one\n\ttwo");
        assert_eq!(escape_message("a \u{1b}[2J b\\c"), "a \\x1b[2J b\\c");
    }

    #[test]
    fn a_table_escapes_every_cell_and_keeps_one_line_per_row() {
        let rows = [
            ["ID".to_string(), "NAME".to_string()],
            ["1".to_string(), "evil\n2  forged".to_string()],
            ["\u{1b}[31m".to_string(), "x".to_string()],
        ];
        let t = render_table(&rows);
        assert_eq!(t.lines().count(), 3, "{t}");
        assert!(!t.contains('\u{1b}'), "{t}");
        assert!(t.contains("evil\\n2  forged"), "{t}");
        assert_eq!(t.lines().next(), Some("ID        NAME"), "{t}");
    }
}

/// Result of `recover --json`.
#[derive(Debug, Serialize)]
pub(crate) struct RecoverDocument {
    /// Interrupted operations that could not be finished or undone by themselves (after a
    /// `--keep-live`/`--restore-saved` run: those still blocked, normally none).
    pub blocked: Vec<BlockedJson>,
    /// What this run did, one sentence each.
    pub resolved: Vec<String>,
}

/// One blocked operation.
#[derive(Debug, Serialize)]
pub(crate) struct BlockedJson {
    pub operation_id: i64,
    /// `backup`, `rollback`, `upgrade`...
    pub kind: String,
    /// The process that died.
    pub pid: u32,
    /// The journal phase it died in.
    pub phase: String,
    /// Why it is blocked and what to do.
    pub message: String,
    /// Units whose live item and saved copy both exist.
    pub conflicts: Vec<ConflictJson>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ConflictJson {
    /// The live path (absolute).
    pub live: String,
    /// Its saved copy (absolute).
    pub saved: String,
}

impl From<&nuwax_actors::BlockedInfo> for BlockedJson {
    fn from(b: &nuwax_actors::BlockedInfo) -> Self {
        BlockedJson {
            operation_id: b.operation_id,
            kind: b.kind.clone(),
            pid: b.pid,
            phase: b.phase.clone(),
            message: b.message.clone(),
            conflicts: b
                .conflicts
                .iter()
                .map(|(live, saved)| ConflictJson {
                    live: live.display().to_string(),
                    saved: saved.display().to_string(),
                })
                .collect(),
        }
    }
}

/// The `scope` of the rollback and dry-run documents: `app`, `all` or `data-only`.
pub(crate) fn scope_name(scope: nuwax_actors::RollbackScope) -> &'static str {
    match scope {
        nuwax_actors::RollbackScope::App => "app",
        nuwax_actors::RollbackScope::All => "all",
        nuwax_actors::RollbackScope::DataOnly => "data-only",
    }
}
