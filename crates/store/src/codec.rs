//! How Rust values are stored in SQL values and read back.
//!
//! Decoding never panics: anything unexpected in a row (unknown enum text, a malformed
//! timestamp, a negative size, a wrong SQL type) becomes [`Error::Corrupt`] naming the table,
//! the row id and the column.

use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime, Utc};
use rusqlite::Row;
use rusqlite::types::{ToSqlOutput, ValueRef};

use crate::error::{Error, Result};

/// Fixed width, UTC, microseconds: text order is time order.
const TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

/// Encodes a timestamp; sub-microsecond precision is dropped.
pub(crate) fn encode_time(t: DateTime<Utc>) -> String {
    t.format(TIME_FORMAT).to_string()
}

fn decode_time(s: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(s, TIME_FORMAT)
        .map(|n| n.and_utc())
        .ok()
        // Tolerate a hand-edited row in any RFC 3339 form.
        .or_else(|| {
            DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        })
}

/// SQLite integers are signed; sizes and counts are not.
pub(crate) fn encode_u64(value: u64, what: &'static str) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::OutOfRange { what, value })
}

/// UTF-8 paths as TEXT (readable with the sqlite3 shell, comparable as text), anything else
/// as a BLOB of the raw OS bytes so nothing is lost.
#[cfg(unix)]
pub(crate) fn encode_path(path: &Path) -> Result<ToSqlOutput<'_>> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    Ok(ToSqlOutput::Borrowed(match std::str::from_utf8(bytes) {
        Ok(_) => ValueRef::Text(bytes),
        Err(_) => ValueRef::Blob(bytes),
    }))
}

/// Outside unix there is no lossless byte form we commit to; refuse rather than mangle.
#[cfg(not(unix))]
pub(crate) fn encode_path(path: &Path) -> Result<ToSqlOutput<'_>> {
    match path.to_str() {
        Some(s) => Ok(ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes()))),
        None => Err(Error::UnrepresentablePath(path.to_path_buf())),
    }
}

/// Reads the columns of one row of `table`, attributing failures to that row.
pub(crate) struct RowReader<'r, 's> {
    row: &'r Row<'s>,
    table: &'static str,
    id: i64,
}

impl<'r, 's> RowReader<'r, 's> {
    /// `id` must be column 0.
    pub(crate) fn new(row: &'r Row<'s>, table: &'static str) -> Result<Self> {
        let id = row
            .get::<_, i64>(0)
            .map_err(|e| Error::Corrupt(format!("{table} row without a usable id: {e}")))?;
        Ok(Self { row, table, id })
    }

    pub(crate) fn id(&self) -> i64 {
        self.id
    }

    fn corrupt(&self, col: &str, what: impl std::fmt::Display) -> Error {
        Error::Corrupt(format!(
            "{} row {}, column {col}: {what}",
            self.table, self.id
        ))
    }

    fn get<T: rusqlite::types::FromSql>(&self, idx: usize, col: &str) -> Result<T> {
        self.row.get(idx).map_err(|e| self.corrupt(col, e))
    }

    pub(crate) fn string(&self, idx: usize, col: &str) -> Result<String> {
        self.get(idx, col)
    }

    pub(crate) fn opt_string(&self, idx: usize, col: &str) -> Result<Option<String>> {
        self.get(idx, col)
    }

    pub(crate) fn opt_i64(&self, idx: usize, col: &str) -> Result<Option<i64>> {
        self.get(idx, col)
    }

    pub(crate) fn opt_u64(&self, idx: usize, col: &str) -> Result<Option<u64>> {
        self.opt_i64(idx, col)?
            .map(|v| u64::try_from(v).map_err(|_| self.corrupt(col, format!("negative value {v}"))))
            .transpose()
    }

    /// A 0/1 column.
    pub(crate) fn flag(&self, idx: usize, col: &str) -> Result<bool> {
        match self.get::<i64>(idx, col)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.corrupt(col, format!("value {v} is not 0 or 1"))),
        }
    }

    pub(crate) fn u32(&self, idx: usize, col: &str) -> Result<u32> {
        let v: i64 = self.get(idx, col)?;
        u32::try_from(v).map_err(|_| self.corrupt(col, format!("value {v} out of range")))
    }

    pub(crate) fn opt_u32(&self, idx: usize, col: &str) -> Result<Option<u32>> {
        self.opt_i64(idx, col)?
            .map(|v| {
                u32::try_from(v).map_err(|_| self.corrupt(col, format!("value {v} out of range")))
            })
            .transpose()
    }

    pub(crate) fn time(&self, idx: usize, col: &str) -> Result<DateTime<Utc>> {
        let s = self.string(idx, col)?;
        decode_time(&s).ok_or_else(|| self.corrupt(col, format!("malformed timestamp {s:?}")))
    }

    pub(crate) fn opt_time(&self, idx: usize, col: &str) -> Result<Option<DateTime<Utc>>> {
        match self.opt_string(idx, col)? {
            None => Ok(None),
            Some(s) => decode_time(&s)
                .map(Some)
                .ok_or_else(|| self.corrupt(col, format!("malformed timestamp {s:?}"))),
        }
    }

    /// An enum column: `parse` is the type's own `parse`.
    pub(crate) fn enumeration<T>(
        &self,
        idx: usize,
        col: &str,
        parse: fn(&str) -> Option<T>,
    ) -> Result<T> {
        let s = self.string(idx, col)?;
        parse(&s).ok_or_else(|| self.corrupt(col, format!("unknown value {s:?}")))
    }

    pub(crate) fn json(&self, idx: usize, col: &str) -> Result<serde_json::Value> {
        let s = self.string(idx, col)?;
        serde_json::from_str(&s).map_err(|e| self.corrupt(col, format!("invalid JSON: {e}")))
    }

    pub(crate) fn path(&self, idx: usize, col: &str) -> Result<PathBuf> {
        let value = self.row.get_ref(idx).map_err(|e| self.corrupt(col, e))?;
        match value {
            ValueRef::Text(bytes) | ValueRef::Blob(bytes) => self.path_from_bytes(bytes, col),
            other => Err(self.corrupt(
                col,
                format!("expected a path, found {:?}", other.data_type()),
            )),
        }
    }

    #[cfg(unix)]
    fn path_from_bytes(&self, bytes: &[u8], _col: &str) -> Result<PathBuf> {
        use std::os::unix::ffi::OsStrExt;
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(bytes)))
    }

    #[cfg(not(unix))]
    fn path_from_bytes(&self, bytes: &[u8], col: &str) -> Result<PathBuf> {
        std::str::from_utf8(bytes)
            .map(PathBuf::from)
            .map_err(|_| self.corrupt(col, "path is not valid UTF-8"))
    }
}
