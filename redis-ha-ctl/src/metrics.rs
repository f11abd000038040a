//! Prometheus metrics of the controller and its data plane (being written; see issue 4).

use std::time::Duration;

use crate::status::Status;

/// Counters and histograms fed by the daemon; gauges are taken from a [`Status`] when encoding.
#[derive(Default)]
pub struct Metrics {}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// One probe of `node` (`ip:port`) of `service`.
    pub fn observe_probe(&self, _service: &str, _node: &str, _ok: bool, _latency: Duration) {}

    /// A failover this controller led or saw ended: `outcome` is "switched" or the Sentinel
    /// abort event without its leading '-' (e.g. "failover-abort-not-elected").
    pub fn failover_finished(&self, _service: &str, _outcome: &str) {}

    /// A peer datagram was refused (`reason`: "bad-mac", "unknown-peer", "replay", "malformed").
    pub fn peer_refused(&self, _reason: &str) {}

    /// The Prometheus text exposition.
    pub fn encode(&self, _status: &Status) -> String {
        String::new()
    }
}
