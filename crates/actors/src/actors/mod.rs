//! The actors behind [`crate::Runtime`]. Message enums are crate-private: the CLI only sees
//! the facade.

pub(crate) mod archive_actor;
pub(crate) mod docker_actor;
pub(crate) mod remote_actor;
pub(crate) mod store_actor;
pub(crate) mod supervisor;

use ractor::rpc::CallResult;
use ractor::{ActorRef, Message, RpcReplyPort};
use std::time::Duration;

use crate::error::{Error, Result};

/// Sends a request and waits for its reply; the reply carries domain errors, transport
/// failures (actor gone, timeout) become [`Error::Internal`] naming the actor.
pub(crate) async fn ask<M, T>(
    actor: &ActorRef<M>,
    name: &str,
    timeout: Duration,
    msg: impl FnOnce(RpcReplyPort<Result<T>>) -> M,
) -> Result<T>
where
    M: Message,
    T: Send + 'static,
{
    match actor.call(msg, Some(timeout)).await {
        Ok(CallResult::Success(result)) => result,
        Ok(CallResult::Timeout) => Err(Error::Internal(format!(
            "the {name} actor did not answer within {}s",
            timeout.as_secs()
        ))),
        Ok(CallResult::SenderError) => Err(Error::Internal(format!(
            "the {name} actor stopped before answering"
        ))),
        Err(e) => Err(Error::Internal(format!(
            "the {name} actor is not running: {e}"
        ))),
    }
}

/// Runs blocking work (file I/O, tree walks, compression) on tokio's blocking pool, off the
/// async worker threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
}

/// Replies, ignoring a caller that went away (it timed out or was interrupted).
pub(crate) fn reply<T: Send + 'static>(port: RpcReplyPort<T>, value: T) {
    let _ = port.send(value);
}

#[cfg(test)]
mod tests;
