//! The controller's picture of the world, as operators see it: `redis-ha-ctl status`, the
//! Sentinel-compatible API, `/metrics` and the status page all render this one snapshot, which
//! the daemon republishes after every step (through a `tokio::sync::watch` channel).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Status {
    /// This controller's id.
    pub controller: String,
    /// Where it listens (RESP over TCP, peer protocol over UDP).
    pub listen: String,
    /// Unix time (ms) of this snapshot.
    pub at_unix_ms: u64,
    pub services: Vec<ServiceStatus>,
    /// Present on a node that owns an XDP data plane.
    pub dataplane: Option<DataplaneStatus>,
    /// Who holds the floating addresses (the VIP), as this controller sees it; present once
    /// any controller of the cluster is configured with `[ha]`.
    pub ha: Option<HaStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct HaStatus {
    /// "owner", "candidate" (standing for election), "backup" or "voter" (no `[ha]` here).
    pub role: String,
    /// The controller believed to hold the addresses (None: nobody, for now).
    pub owner: Option<String>,
    /// Ownership epoch.
    pub epoch: u64,
    /// This node's floating addresses (`198.18.0.100/24 dev eth0`), empty on a voter.
    pub addresses: Vec<String>,
    pub priority: Option<u8>,
    pub preempt: bool,
    /// Whether this node holds them now, and since when (Unix ms).
    pub holding: bool,
    pub holding_since_unix_ms: Option<u64>,
    /// Times this node took the addresses, since it started.
    pub acquired: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ServiceStatus {
    pub name: String,
    pub vip: String,
    pub write_port: u16,
    pub read_port: u16,
    /// `ip:port` of the master this controller believes in: the promoted replica as soon as
    /// the write port moved to it, as Sentinel reports it during a failover's reconfiguration.
    pub master: String,
    /// Epoch in which that master was promoted.
    pub config_epoch: u64,
    /// Highest epoch seen.
    pub current_epoch: u64,
    pub quorum: usize,
    pub down_after_ms: u64,
    /// "idle", "election", "sync" (a planned switchover waits for its target to catch up),
    /// "promotion" or "reconfiguration".
    pub failover_phase: String,
    pub odown: bool,
    pub nodes: Vec<NodeStatus>,
    /// The read port's backends (`ip:port`), as last applied.
    pub read_pool: Vec<String>,
    /// The other controllers, as heard from.
    pub peers: Vec<PeerStatus>,
    /// Failovers this controller saw complete (`+switch-master`), since it started.
    pub failovers: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct NodeStatus {
    pub addr: String,
    /// "master", "replica" or "unknown" (never answered yet).
    pub role: String,
    /// Subjectively down from this controller's point of view.
    pub sdown: bool,
    /// For a replica: whom it follows and whether the link is up.
    pub master: Option<String>,
    pub link_up: Option<bool>,
    pub lag_ms: Option<u64>,
    pub repl_offset: Option<u64>,
    pub priority: Option<u32>,
    pub in_read_pool: bool,
    /// Milliseconds since the last valid reply (None: never).
    pub last_ok_ms_ago: Option<u64>,
    /// Latency of the last successful probe.
    pub probe_latency_ms: Option<f64>,
    /// Its `run_id` (`INFO server`), once it answered: Sentinel's `runid` field.
    pub run_id: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PeerStatus {
    pub id: String,
    pub addr: String,
    /// Milliseconds since a valid (authenticated) message arrived (None: never).
    pub last_heard_ms_ago: Option<u64>,
    /// The master and config epoch it announced last.
    pub master: Option<String>,
    pub config_epoch: Option<u64>,
    /// Whether it believes in the same master at the same config epoch as we do.
    pub agrees: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DataplaneStatus {
    pub pin_dir: String,
    /// (interface, attach mode) as attached by this run or found pinned.
    pub interfaces: Vec<(String, String)>,
    pub backends: Vec<BackendTraffic>,
    /// Packet counters by name (`redis_ha_common::counter::NAMES`).
    pub counters: BTreeMap<String, u64>,
    /// Entries in the connection table (one per connection).
    pub flow_entries: usize,
    /// `FLOWS` was full at some point since the data plane was loaded, and new connections
    /// went to `FLOWS_SPILL`.
    pub flows_spilled: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct BackendTraffic {
    pub service: String,
    pub addr: String,
    pub slot: u32,
    pub is_master: bool,
    pub readable: bool,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub new_flows: u64,
    pub flows_reset: u64,
    /// Connections that closed in order and left the connection table.
    #[serde(default)]
    pub flows_closed: u64,
}

/// One operator event, as Sentinel publishes it on its pub/sub channel named after the event.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventRecord {
    pub at_unix_ms: u64,
    pub service: String,
    /// Sentinel's event name, e.g. `+switch-master`: also the pub/sub channel.
    pub name: String,
    /// Sentinel's message payload, e.g. `mymaster 198.18.1.11 6379 198.18.1.12 6379`.
    pub payload: String,
}

/// `2026-11-25 21:04:00 UTC` (with `.123` before ` UTC` when `millis`) of a Unix time in
/// milliseconds, by Howard Hinnant's days-to-civil algorithm: no date crate for a timestamp.
pub fn format_utc(unix_ms: u64, millis: bool) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let fraction = if millis {
        format!(".{:03}", unix_ms % 1000)
    } else {
        String::new()
    };
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}{fraction} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
