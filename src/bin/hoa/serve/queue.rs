//! Where a resolved job goes: the local generation thread's bounded queue (`--queue N`), or a
//! NATS JetStream work queue shared by any number of `hoa worker`s (`--queue nats://...`).

use super::nats::Front;
use super::worker::Job;
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
    // The length's range is checked where the local queue is made.
    s.parse::<usize>()
        .map(QueueArg::Local)
        .map_err(|_| format!("expected a queue length or a nats://HOST:PORT address, got {s:?}"))
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

    /// Jobs queued or running here; with NATS, those this front waits for.
    pub fn depth(&self) -> usize {
        match self {
            Jobs::Local(tx) => tx.max_capacity() - tx.capacity(),
            Jobs::Nats(front) => front.pending(),
        }
    }
}
