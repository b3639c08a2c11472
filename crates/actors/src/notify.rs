//! Notifications (`[notify]`): what is sent when a backup, an auto-backup or a rollback ends,
//! and the webhook POST.
//!
//! Design note: a notification never changes an operation's result. The webhook gets one
//! JSON object ([`Notification`]) per operation, POSTed with a short timeout and retried
//! with a growing pause; a webhook that stays down is reported (the caller turns it into an
//! error line on stderr) and the operation exits as it would have. The HTTP client is the
//! `reqwest` (rustls, ring) that `object_store` already brings, not a second stack.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::hook::HookCommand;

/// When to notify (`[notify] on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyOn {
    /// A failed or interrupted operation (the default).
    Failure,
    /// A successful one.
    Success,
    /// Every operation.
    Always,
}

/// `[notify]` in `config.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// `http://` or `https://` URL the JSON result is POSTed to.
    pub webhook: Option<String>,
    /// Run with the `NUWAX_*` variables and the JSON on its stdin.
    pub command: Option<HookCommand>,
    pub on: Vec<NotifyOn>,
    /// Seconds per webhook attempt (and for the command).
    pub timeout: u64,
    /// Webhook attempts in all (the pause between them doubles from 1 s).
    pub attempts: u32,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            webhook: None,
            command: None,
            on: vec![NotifyOn::Failure],
            timeout: 10,
            attempts: 3,
        }
    }
}

impl NotifyConfig {
    /// What is wrong with it, if anything (checked when the config is loaded).
    pub(crate) fn problem(&self) -> Option<String> {
        if let Some(url) = &self.webhook {
            match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                Ok(u) => {
                    return Some(format!(
                        "notify.webhook {url:?} must be an http:// or https:// URL, not {}:",
                        u.scheme()
                    ));
                }
                Err(e) => return Some(format!("notify.webhook {url:?} is not a URL: {e}")),
            }
        }
        if let Some(p) = self.command.as_ref().and_then(HookCommand::problem) {
            return Some(format!("notify.command {p}"));
        }
        if self.attempts == 0 || self.timeout == 0 {
            return Some("notify.attempts and notify.timeout must be at least 1".into());
        }
        None
    }

    /// Whether an operation that ended with `status` is to be notified.
    pub(crate) fn wants(&self, status: Status) -> bool {
        self.on.iter().any(|on| match on {
            NotifyOn::Always => true,
            NotifyOn::Success => status == Status::Success,
            NotifyOn::Failure => status != Status::Success,
        })
    }

    pub(crate) fn configured(&self) -> bool {
        self.webhook.is_some() || self.command.is_some()
    }
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Before it runs (what a pre hook sees).
    Running,
    Success,
    Failed,
    /// Ended by Ctrl-C, SIGTERM or SIGHUP.
    Interrupted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Success => "success",
            Status::Failed => "failed",
            Status::Interrupted => "interrupted",
        }
    }
}

/// The JSON object a webhook receives (and a notify command reads on stdin).
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    /// `backup`, `auto-backup`, `rollback` or `rollback-data-only`.
    pub operation: String,
    /// `success`, `failed` or `interrupted`.
    pub status: Status,
    /// The backup taken, or the one restored; null when there is none.
    pub backup_id: Option<i64>,
    /// Its archive (absolute path); null when there is none.
    pub archive: Option<String>,
    /// Why it failed; null on success.
    pub error: Option<String>,
    /// This machine's host name.
    pub host: String,
    /// When the operation ended, RFC 3339 UTC.
    pub time: String,
    /// The working dir (one host may run several deployments).
    pub work_dir: String,
    /// `nuwax-cli <version>`.
    pub tool: String,
}

/// POSTs `body` (JSON) to `url`: `attempts` tries of `timeout` each, pausing 1 s, 2 s, 4 s...
/// between them. Any answer but 2xx is a failed try. Returns what the last try got.
pub(crate) async fn post_webhook(
    url: &str,
    body: Vec<u8>,
    timeout: Duration,
    attempts: u32,
) -> std::result::Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("nuwax-cli/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
    let mut last = String::new();
    let mut pause = Duration::from_secs(1);
    for attempt in 1..=attempts.max(1) {
        if attempt > 1 {
            tokio::time::sleep(pause).await;
            pause = pause.saturating_mul(2);
        }
        let sent = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) => last = format!("the server answered {}", resp.status()),
            Err(e) => last = describe(&e),
        }
        tracing::debug!("webhook attempt {attempt} failed: {last}");
    }
    Err(format!("{last} (tried {} times)", attempts.max(1)))
}

/// A request error with its cause (reqwest's own text is only "error sending request").
fn describe(e: &reqwest::Error) -> String {
    let mut out = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// This machine's host name (`/proc/sys/kernel/hostname`, else `HOSTNAME`, else "unknown").
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_decides_what_is_notified() {
        let mut c = NotifyConfig::default();
        assert!(c.wants(Status::Failed) && c.wants(Status::Interrupted));
        assert!(!c.wants(Status::Success));
        c.on = vec![NotifyOn::Always];
        assert!(c.wants(Status::Success) && c.wants(Status::Failed));
        c.on = vec![NotifyOn::Success];
        assert!(c.wants(Status::Success) && !c.wants(Status::Failed));
    }

    #[test]
    fn webhook_urls_are_checked() {
        let mut c = NotifyConfig {
            webhook: Some("ftp://x".into()),
            ..NotifyConfig::default()
        };
        assert!(c.problem().unwrap().contains("http"));
        c.webhook = Some("not a url".into());
        assert!(c.problem().is_some());
        c.webhook = Some("https://hooks.example/x?y=1".into());
        assert!(c.problem().is_none());
    }
}
