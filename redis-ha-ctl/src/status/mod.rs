//! The controller's picture of the world, as operators see it: `redis-ha-ctl status`, the
//! Sentinel-compatible API, `/metrics` and the status page all render this one snapshot, which
//! the daemon republishes after every step (through a `tokio::sync::watch` channel).
//!
//! It is also a contract: its JSON (`REDIS-HA STATUS`, `/status.json`, `status --json`) is read
//! by scripts and by the end-to-end tests. Inside the program the fields are typed (addresses
//! are `SocketAddrV4`/`SocketAddr`, roles and phases are enums), so a comparison with a
//! misspelt `"master"` does not compile; serde writes them as the same strings as ever, and the
//! tests at the bottom pin that JSON.

use std::{
    collections::BTreeMap,
    fmt,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
};

use serde::{Deserialize, Serialize};

/// Stands in for an address in a `Default` value (tests fill structs with
/// `..Default::default()`); the daemon always sets the real one.
const UNSET: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Status {
    /// This controller's id.
    pub controller: String,
    /// Where it listens (RESP over TCP, peer protocol over UDP). `None` (an empty string in
    /// JSON) only in the placeholder published before the executor's first snapshot.
    #[serde(with = "empty_is_none")]
    pub listen: Option<SocketAddr>,
    /// Unix time (ms) of this snapshot.
    pub at_unix_ms: u64,
    pub services: Vec<ServiceStatus>,
    /// Present on a node that owns an XDP data plane.
    pub dataplane: Option<DataplaneStatus>,
    /// Who holds the floating addresses (the VIP), as this controller sees it; present once
    /// any controller of the cluster is configured with `[ha]`.
    pub ha: Option<HaStatus>,
    /// The last reload of the config (`SIGHUP`) since the start, if any. Left out of the
    /// JSON until there is one, so a status without is written as it always was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadStatus>,
}

/// How the last reload of the config went: an operator who ran `systemctl reload` sees here
/// whether the running config is the file's.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ReloadStatus {
    pub at_unix_ms: u64,
    /// Whether the file was applied; when not, the running config is the one before it.
    pub applied: bool,
    /// What changed, or why the file was refused (file, line, key).
    pub message: String,
}

impl Status {
    /// `listen` as operators read it: empty in the placeholder.
    pub fn listen_text(&self) -> String {
        self.listen.map(|a| a.to_string()).unwrap_or_default()
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct HaStatus {
    pub role: HaRole,
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

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ServiceStatus {
    pub name: String,
    pub vip: Ipv4Addr,
    pub write_port: u16,
    pub read_port: u16,
    /// The master this controller believes in: the promoted replica as soon as the write port
    /// moved to it, as Sentinel reports it during a failover's reconfiguration.
    pub master: SocketAddrV4,
    /// Epoch in which that master was promoted.
    pub config_epoch: u64,
    /// Highest epoch seen.
    pub current_epoch: u64,
    pub quorum: usize,
    pub down_after_ms: u64,
    pub failover_phase: FailoverPhase,
    pub odown: bool,
    pub nodes: Vec<NodeStatus>,
    /// The read port's backends, as last applied.
    pub read_pool: Vec<SocketAddrV4>,
    /// The other controllers, as heard from.
    pub peers: Vec<PeerStatus>,
    /// Failovers this controller saw complete (`+switch-master`), since it started.
    pub failovers: u64,
    /// Since when (Unix ms) this controller is in TILT for this service (`+tilt`), if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tilt_since_unix_ms: Option<u64>,
    /// Its state file could not be read: no vote and no failover until a majority of the
    /// other controllers told it the current epoch.
    pub safe_mode: bool,
    /// Backend names that do not resolve now: each keeps the address it had.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unresolved: Vec<String>,
}

impl Default for ServiceStatus {
    fn default() -> Self {
        Self {
            name: String::new(),
            vip: *UNSET.ip(),
            write_port: 0,
            read_port: 0,
            master: UNSET,
            config_epoch: 0,
            current_epoch: 0,
            quorum: 0,
            down_after_ms: 0,
            failover_phase: FailoverPhase::default(),
            odown: false,
            nodes: Vec::new(),
            read_pool: Vec::new(),
            peers: Vec::new(),
            failovers: 0,
            tilt_since_unix_ms: None,
            safe_mode: false,
            unresolved: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct NodeStatus {
    pub addr: SocketAddrV4,
    pub role: NodeRole,
    /// Subjectively down from this controller's point of view.
    pub sdown: bool,
    /// For a replica: whom it follows and whether the link is up.
    pub master: Option<SocketAddrV4>,
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

impl Default for NodeStatus {
    fn default() -> Self {
        Self {
            addr: UNSET,
            role: NodeRole::default(),
            sdown: false,
            master: None,
            link_up: None,
            lag_ms: None,
            repl_offset: None,
            priority: None,
            in_read_pool: false,
            last_ok_ms_ago: None,
            probe_latency_ms: None,
            run_id: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PeerStatus {
    pub id: String,
    pub addr: SocketAddr,
    /// Milliseconds since a valid (authenticated) message arrived (None: never).
    pub last_heard_ms_ago: Option<u64>,
    /// The master and config epoch it announced last.
    pub master: Option<SocketAddrV4>,
    pub config_epoch: Option<u64>,
    /// Whether it believes in the same master at the same config epoch as we do.
    pub agrees: bool,
}

impl Default for PeerStatus {
    fn default() -> Self {
        Self {
            id: String::new(),
            addr: SocketAddr::V4(UNSET),
            last_heard_ms_ago: None,
            master: None,
            config_epoch: None,
            agrees: false,
        }
    }
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

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct BackendTraffic {
    pub service: String,
    pub addr: SocketAddrV4,
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

impl Default for BackendTraffic {
    fn default() -> Self {
        Self {
            service: String::new(),
            addr: UNSET,
            slot: 0,
            is_master: false,
            readable: false,
            packets_in: 0,
            bytes_in: 0,
            packets_out: 0,
            bytes_out: 0,
            new_flows: 0,
            flows_reset: 0,
            flows_closed: 0,
        }
    }
}

/// The role a node reported last (`INFO replication`'s `role:`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Master,
    Replica,
    /// It never answered yet.
    #[default]
    Unknown,
}

impl NodeRole {
    /// As JSON writes it (a test keeps the two the same).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Master => "master",
            Self::Replica => "replica",
            Self::Unknown => "unknown",
        }
    }
}

/// Where a service's failover stands: the failover machine's phase, without its data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailoverPhase {
    #[default]
    Idle,
    /// This controller stands for election.
    Election,
    /// A planned switchover waits for its target to catch up.
    Sync,
    Promotion,
    Reconfiguration,
}

impl FailoverPhase {
    /// As JSON writes it (a test keeps the two the same).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Election => "election",
            Self::Sync => "sync",
            Self::Promotion => "promotion",
            Self::Reconfiguration => "reconfiguration",
        }
    }
}

impl From<crate::failover::FailoverPhase> for FailoverPhase {
    fn from(phase: crate::failover::FailoverPhase) -> Self {
        use crate::failover::FailoverPhase as Machine;
        match phase {
            Machine::Idle => Self::Idle,
            Machine::Election { .. } => Self::Election,
            Machine::Sync { .. } => Self::Sync,
            Machine::Promotion { .. } => Self::Promotion,
            Machine::Reconfiguration { .. } => Self::Reconfiguration,
        }
    }
}

/// This controller's part in holding the floating addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HaRole {
    /// It holds them.
    Owner,
    /// It stands for election.
    Candidate,
    Backup,
    /// No `[ha]` here: it only votes.
    #[default]
    Voter,
}

impl HaRole {
    /// As JSON writes it (a test keeps the two the same).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Candidate => "candidate",
            Self::Backup => "backup",
            Self::Voter => "voter",
        }
    }
}

impl From<crate::ha::HaRole> for HaRole {
    fn from(role: crate::ha::HaRole) -> Self {
        use crate::ha::HaRole as Machine;
        match role {
            Machine::Owner => Self::Owner,
            Machine::Candidate => Self::Candidate,
            Machine::Backup => Self::Backup,
            Machine::Voter => Self::Voter,
        }
    }
}

// `pad`, not `write_str`, so that the text tables' column widths (`{:<8}`) apply.
impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl fmt::Display for FailoverPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl fmt::Display for HaRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// `Option<SocketAddr>` as a string, `None` as `""`: how the placeholder status published
/// before the first snapshot has always shown its address.
mod empty_is_none {
    use std::net::SocketAddr;

    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    pub(super) fn serialize<S: Serializer>(
        addr: &Option<SocketAddr>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match addr {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str(""),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SocketAddr>, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(D::Error::custom)
    }
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

#[cfg(test)]
mod tests;
