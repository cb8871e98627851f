//! Where a resolved job goes: the local generation thread's bounded queue (`--queue N`), or a
//! NATS JetStream work queue shared by any number of `hoa worker`s (`--queue nats://...`).

use super::api::ApiError;
use super::nats::Front;
use super::worker::Job;
use super::RETRY_AFTER_S;
use std::sync::Arc;
use tokio::sync::mpsc;

/// `--queue N` (a number: this process generates) or `--queue nats://HOST:PORT` (workers do).
#[derive(Clone, Debug, PartialEq)]
pub enum QueueArg {
    Local(usize),
    Nats(String),
}

pub fn queue_arg(s: &str) -> Result<QueueArg, String> {
    if s.starts_with("nats://") || s.starts_with("tls://") {
        return Ok(QueueArg::Nats(s.to_string()));
    }
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(QueueArg::Local(n)),
        _ => Err(format!(
            "expected a queue length of at least 1 or a nats://HOST:PORT address, got {s:?}"
        )),
    }
}

pub enum Jobs {
    Local(mpsc::Sender<Job>),
    Nats(Arc<Front>),
}

impl Jobs {
    /// Whether jobs can no longer be run (the generation thread stopped, NATS is unreachable).
    pub fn is_closed(&self) -> bool {
        match self {
            Jobs::Local(tx) => tx.is_closed(),
            Jobs::Nats(front) => !front.connected(),
        }
    }
}

/// The answer to a job that finds the queue full.
pub fn queue_full() -> ApiError {
    ApiError {
        status: axum::http::StatusCode::TOO_MANY_REQUESTS,
        code: Some("queue_full"),
        retry_after: Some(RETRY_AFTER_S),
        ..ApiError::bad(None, "the generation queue is full; retry later")
    }
}
