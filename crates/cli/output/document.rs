//! The envelope every `--json` document shares (README, "JSON contract").
//!
//! A command builds only its own fields (the body); [`Document`] adds `schema_version`,
//! `success` and `error` around them, so no document can lack them or contradict itself
//! (`success` is `error == null` by construction).
//!
//! `SCHEMA_VERSION` rule: additive changes (a new field, a new `kind`, a new document) keep
//! the number; removing or renaming a field, changing its type or meaning bumps it. Version 1
//! is the first versioned contract (before it, `error` was a string).

use serde::Serialize;

use crate::exit::Failure;

/// The version of the JSON contract this build prints.
pub(crate) const SCHEMA_VERSION: u32 = 1;

/// `{"schema_version", "success", <the body's fields>, "error"}`.
#[derive(Serialize)]
pub(crate) struct Document<'a, T: Serialize> {
    pub schema_version: u32,
    pub success: bool,
    #[serde(flatten)]
    pub body: &'a T,
    pub error: Option<ErrorJson>,
}

/// `error` of a failed document.
#[derive(Debug, Serialize)]
pub(crate) struct ErrorJson {
    /// Stable `snake_case` name: `backup_not_found`, `locked`, `no_space`, `corrupt`...
    pub kind: &'static str,
    /// What went wrong, for people (the same text as on stderr).
    pub message: String,
    /// The process's exit code.
    pub exit_code: u8,
}

impl<'a, T: Serialize> Document<'a, T> {
    /// `exit_code` is the code the process exits with (an interruption's is 128 + the signal).
    pub(crate) fn new(body: &'a T, failure: Option<&Failure>, exit_code: u8) -> Self {
        Document {
            schema_version: SCHEMA_VERSION,
            success: failure.is_none(),
            body,
            error: failure.map(|f| ErrorJson {
                kind: f.kind,
                message: f.message.clone(),
                exit_code,
            }),
        }
    }
}

/// The body of a failed command's document when it got no further: no fields of its own.
#[derive(Serialize)]
pub(crate) struct NoBody {}

/// The body of `list-backups --json` / `rollback --list-json` when listing failed: an empty
/// list, as the original tool printed (`{"success": false, "backups": [], "error": ...}`).
#[derive(Serialize)]
pub(crate) struct EmptyList {
    pub backups: [(); 0],
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::ExitStatus;

    #[derive(Serialize)]
    struct Body {
        answer: u32,
    }

    #[test]
    fn success_and_error_agree_and_body_fields_sit_between() {
        let ok = serde_json::to_value(Document::new(&Body { answer: 42 }, None, 0)).unwrap();
        assert_eq!(
            ok,
            serde_json::json!({"schema_version": 1, "success": true, "answer": 42, "error": null})
        );
        // The envelope's fields around the body's, in this order (the text a GUI sees).
        assert_eq!(
            serde_json::to_string(&Document::new(&Body { answer: 42 }, None, 0)).unwrap(),
            r#"{"schema_version":1,"success":true,"answer":42,"error":null}"#
        );

        let f = Failure::new(ExitStatus::Refused, "locked", "held by pid 7");
        let bad = serde_json::to_value(Document::new(&NoBody {}, Some(&f), 3)).unwrap();
        assert_eq!(
            bad,
            serde_json::json!({
                "schema_version": 1,
                "success": false,
                "error": {"kind": "locked", "message": "held by pid 7", "exit_code": 3}
            })
        );
        let list = serde_json::to_value(Document::new(&EmptyList { backups: [] }, Some(&f), 3));
        assert_eq!(list.unwrap()["backups"], serde_json::json!([]));
    }
}
