//! The Docker Engine client: find the project's containers, stop and start them in dependency
//! order, wait until they are running and healthy, and fall back to `docker compose up -d`.
//!
//! Every call to the engine is bounded by a timeout and every wait has a deadline.
//! Connecting fails closed: an engine that is configured (`DOCKER_HOST`, a docker context) or
//! whose socket exists but does not answer is an error ([`Error::DockerUnreachable`]); only a
//! host with nothing configured and no engine socket at all yields `Ok(None)`, which the
//! caller reports and continues without a gate.
//!
//! One file per concern: `endpoint` finds and connects to the engine, `lifecycle` lists,
//! inspects, stops and starts the project's containers in waves, `health` waits for them to
//! be ready (probes, start periods, crash loops), and `compose_cli` runs `docker compose up -d`
//! when the containers themselves are gone. This file holds the client and what they share.

mod compose_cli;
mod drill;
mod endpoint;
mod exec;
mod health;
mod lifecycle;

#[cfg(any(test, feature = "test-support"))]
pub use compose_cli::COMPOSE_UP_TIMEOUT;
pub use compose_cli::compose_up;
#[cfg(any(test, feature = "test-support"))]
pub use endpoint::DEFAULT_SOCKET;
pub use exec::{ExecIo, ExecOutcome, ExecRequest};
#[cfg(any(test, feature = "test-support"))]
pub use health::DEPENDENCY_TIMEOUT;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;

use super::ContainerInfo;
use crate::error::{Error, Result};

const API_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(500);

/// A connected, version-negotiated engine client.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    endpoint: String,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Engine {
    async fn call<T>(
        &self,
        what: impl FnOnce() -> String,
        limit: Duration,
        fut: impl Future<Output = std::result::Result<T, BollardError>>,
    ) -> Result<T> {
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Error::Docker(format!("{}: {}", what(), describe(&e)))),
            Err(_) => Err(self.timed_out(&what(), limit)),
        }
    }

    fn timed_out(&self, what: &str, limit: Duration) -> Error {
        Error::Docker(format!(
            "{what}: no answer from the engine at {} within {}s",
            self.endpoint,
            limit.as_secs()
        ))
    }
}

/// An error with its sources: bollard's own message is often just "client error (Connect)".
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `name (service svc)` for messages; just the name when it already says the service.
fn label(info: &ContainerInfo) -> String {
    match info.service.as_deref() {
        Some(service) if !info.name.contains(service) => {
            format!("{} (service {service})", info.name)
        }
        _ => info.name.clone(),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}
