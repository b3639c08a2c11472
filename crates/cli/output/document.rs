//! The envelope every `--json` document shares (README, "JSON contract").
//!
//! A command builds only its own fields (the body); [`Document`] adds `schema_version`,
//! `success` and `error` around them, so no document can lack them or contradict itself
//! (`success` is `error == null` by construction).
//!
//! `SCHEMA_VERSION` rule: additive changes (a new field, a new `kind`, a new document) keep
//! the number; removing or renaming a field, changing its type or meaning bumps it. Version 1
//! is the first versioned contract (it added `schema_version`, `error_kind` and `exit_code`;
//! `error` is the message string it always was).

use serde::Serialize;

use crate::exit::Failure;

/// The version of the JSON contract this build prints.
pub(crate) const SCHEMA_VERSION: u32 = 1;

/// `{"schema_version", "success", <the body's fields>, "error", "error_kind", "exit_code"}`.
///
/// `error` stays what it always was, the message as a string or null (DESIGN.md section 6,
/// the existing GUI's contract: a GUI shows it as text); the machine-readable parts sit beside
/// it, so nothing a GUI already reads changes type.
#[derive(Serialize)]
pub(crate) struct Document<'a, T: Serialize> {
    pub schema_version: u32,
    pub success: bool,
    #[serde(flatten)]
    pub body: &'a T,
    /// What went wrong, for people (the same text as on stderr); null on success.
    pub error: Option<String>,
    /// Stable `snake_case` name (`backup_not_found`, `locked`, `no_space`, `corrupt`...);
    /// null on success.
    pub error_kind: Option<&'static str>,
    /// The process's exit code (0 on success; 128 + the signal when interrupted).
    pub exit_code: u8,
}

impl<'a, T: Serialize> Document<'a, T> {
    /// `exit_code` is the code the process exits with (an interruption's is 128 + the signal).
    pub(crate) fn new(body: &'a T, failure: Option<&Failure>, exit_code: u8) -> Self {
        Document {
            schema_version: SCHEMA_VERSION,
            success: failure.is_none(),
            body,
            error: failure.map(|f| f.message.clone()),
            error_kind: failure.map(|f| f.kind),
            exit_code,
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
            serde_json::json!({"schema_version": 1, "success": true, "answer": 42, "error": null,
                "error_kind": null, "exit_code": 0})
        );
        // The envelope's fields around the body's, in this order (the text a GUI sees).
        assert_eq!(
            serde_json::to_string(&Document::new(&Body { answer: 42 }, None, 0)).unwrap(),
            r#"{"schema_version":1,"success":true,"answer":42,"error":null,"error_kind":null,"exit_code":0}"#
        );

        let f = Failure::new(ExitStatus::Refused, "locked", "held by pid 7");
        let bad = serde_json::to_value(Document::new(&NoBody {}, Some(&f), 3)).unwrap();
        assert_eq!(
            bad,
            serde_json::json!({
                "schema_version": 1,
                "success": false,
                "error": "held by pid 7",
                "error_kind": "locked",
                "exit_code": 3
            })
        );
        let list = serde_json::to_value(Document::new(&EmptyList { backups: [] }, Some(&f), 3));
        assert_eq!(list.unwrap()["backups"], serde_json::json!([]));
    }
}
