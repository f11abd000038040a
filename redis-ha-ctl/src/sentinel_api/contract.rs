//! What the executor and the API exchange: the operator events ([`EventHub`]), the requests
//! only the executor can answer ([`ControlRequest`]), the errors it answers with ([`ApiError`])
//! and the outcome of a switchover ([`SwitchoverReport`]).
//!
//! These four belong to the executor more than to the RESP edge (it creates, answers and
//! publishes them; the API only carries them), so they are kept together, apart from the
//! protocol code, and can move with the executor as one piece.

use std::{collections::VecDeque, sync::Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot};

use crate::{failover::NodeAddr, resp::Reply, status::EventRecord};

/// Events kept for `REDIS-HA EVENTS`.
const RECENT_EVENTS: usize = 256;

/// The operator events: published by the executor, fanned out to subscribers, and the most
/// recent kept for `redis-ha-ctl events`.
pub struct EventHub {
    tx: broadcast::Sender<EventRecord>,
    recent: Mutex<VecDeque<EventRecord>>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new()
    }
}

impl EventHub {
    pub fn new() -> Self {
        Self {
            // A subscriber slower than this many events loses the oldest ones (and is told so
            // in the log) rather than slowing the executor down.
            tx: broadcast::channel(1024).0,
            recent: Mutex::new(VecDeque::with_capacity(RECENT_EVENTS)),
        }
    }

    pub fn publish(&self, record: EventRecord) {
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() == RECENT_EVENTS {
                recent.pop_front();
            }
            recent.push_back(record.clone());
        }
        // No subscriber is not an error.
        let _ = self.tx.send(record);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.tx.subscribe()
    }

    pub fn recent(&self) -> Vec<EventRecord> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.iter().cloned().collect()
    }
}

/// A request only the executor can answer (it owns the machines).
#[derive(Debug)]
pub enum ControlRequest {
    /// `SENTINEL FAILOVER` / `REDIS-HA FAILOVER`: a forced failover, a planned switchover while
    /// the master answers.
    Failover {
        service: String,
        to: Option<NodeAddr>,
        /// Bound of the catch-up (and of the promotion) while writes are paused; the executor's
        /// default when `None`.
        timeout_ms: Option<u64>,
        /// Answer once it switched or aborted ([`SwitchoverReport`] as JSON), rather than as
        /// soon as it started (`OK`, as Sentinel answers).
        wait: bool,
        reply: oneshot::Sender<Result<String, ApiError>>,
    },
}

/// An error reply: `-<code> <message>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// Redis's error code: `ERR`, or Sentinel's `INPROG`, `NOGOODSLAVE`, ...
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn reply(&self) -> Reply {
        Reply::Error(format!("{} {}", self.code, self.message))
    }
}

/// The answer to `REDIS-HA FAILOVER` once the switch happened.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SwitchoverReport {
    pub service: String,
    pub epoch: u64,
    pub from: String,
    pub to: String,
    /// How long writes were paused on the old master (`CLIENT PAUSE` to `CLIENT UNPAUSE`);
    /// `None` for a forced failover of a master that was down (nothing to pause).
    pub write_pause_ms: Option<f64>,
    /// From the request to the answer.
    pub total_ms: f64,
}
