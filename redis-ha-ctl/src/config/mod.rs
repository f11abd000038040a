//! The TOML config: its typed values, their defaults, and what the machines derive from them.
//!
//! - `load`: reading and parsing a file into span-carrying raw sections, and the errors, which
//!   name the file, the line, the column and the key, so an operator can fix it at once;
//! - `validate`: turning the raw sections into the typed values below, or saying what is wrong;
//! - `show`: the effective config as TOML (`redis-ha-ctl check-config`);
//! - [`diff`]: what a reload (`SIGHUP`) may change in a running controller, and what it refuses.
//!
//! Every key a file may leave out takes its value from the `Default` of its section
//! ([`DataplaneConfig`], [`HaConfig`], [`FailoverConfig`]) or, for `[controller]`, whose id
//! and address have no neutral value to put in a `Default`, from
//! [`ControllerConfig::DEFAULT_PROBE_INTERVAL_MS`] and [`ControllerConfig::default_state_file`].
//! Those are the only places a default is stated: validation fills from them, and
//! check-config shows what validation filled in.

mod api_auth;
mod api_limits;
mod api_tls;
mod dataplane;
pub mod diff;
mod hosts;
mod load;
mod nat;
mod secret;
mod show;
mod tls;
mod validate;

#[cfg(test)]
mod hosts_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_tls;

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
};

use redis_ha_common::{MAX_BACKENDS, MAX_SERVICES};
use serde::{Deserialize, Serialize, Serializer};

pub use api_auth::{ApiAccess, ApiAuthConfig, ApiUser, DEFAULT_USER};
pub use api_limits::ApiLimits;
pub use api_tls::ApiTlsConfig;
#[cfg(test)]
pub use hosts::FixedHosts;
pub use hosts::{BackendSpec, Resolver, SystemResolver, first_ipv4};
pub use load::ConfigError;
pub use nat::{NatMode, NatPorts};
pub use tls::RedisTlsConfig;
pub(crate) use tls::crypto_provider;

use crate::{
    failover::{self, Millis, ReadFromMaster},
    ha::{Candidacy, HaParams},
};

/// Backend slots are assigned in fixed blocks per service (see [`backend_slot`]), which is
/// what bounds the number of backends a service may have.
pub const MAX_BACKENDS_PER_SERVICE: usize = (MAX_BACKENDS / MAX_SERVICES) as usize - 1;

/// The default pin directory (bpffs); a per-deployment one lets several data planes coexist.
pub const DEFAULT_PIN_DIR: &str = redis_ha_common::PIN_DIR;

/// Allowed `flow_table_size`: below 1024 entries the kernel's LRU (the spill table), which
/// hands out free entries to each CPU in batches of 128, evicts live connections early; above
/// 16 Mi the two tables (about 120 bytes an entry each) outgrow any sensible memory budget.
pub const FLOW_TABLE_RANGE: std::ops::RangeInclusive<u32> = 1024..=16 * 1024 * 1024;

/// How long a planned switchover may wait for its target to catch up (and, again, for the
/// promotion) while writes are paused, unless the request says otherwise. Not a key of the
/// file, but a default both the daemon and the CLI that sends the request must agree on.
pub const DEFAULT_SWITCHOVER_TIMEOUT_MS: u64 = 2_000;

/// The largest switchover timeout a request may ask for. Writes stay paused for
/// 3 × timeout + 2 s if the controller dies mid-switchover (the pause must outlive every bound
/// of a live one), so this caps that at 32 s; a replica that needs longer to catch up is
/// better resynchronised before the switchover than waited for with writes held.
pub const MAX_SWITCHOVER_TIMEOUT_MS: u64 = 10_000;

/// A switchover timeout a request asks for (ms, not 0), or why it is refused: the controller
/// answers `REDIS-HA FAILOVER ... TIMEOUT` with it, and the CLI checks `--timeout` with it.
pub fn check_switchover_timeout(ms: u64) -> Result<u64, String> {
    if ms > MAX_SWITCHOVER_TIMEOUT_MS {
        return Err(format!(
            "TIMEOUT {ms} is above the maximum of {MAX_SWITCHOVER_TIMEOUT_MS} ms: writes stay \
             paused on the master for 3 x TIMEOUT + 2 s if the controller dies mid-switchover"
        ));
    }
    Ok(ms)
}

/// After a start, a voter waits at least this long (or the node's own `ha.down_after_ms`)
/// before voting: see [`HaParams::quiet_after_start_ms`].
const HA_QUIET_AFTER_START_MS: Millis = 1000;

/// A validated config. `Serialize` writes it back as the TOML it was read from, every key
/// present (see [`Config::effective_toml`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Config {
    /// Present on nodes that own an XDP data plane.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataplane: Option<DataplaneConfig>,
    /// Present on nodes that run `redis-ha-ctl run`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller: Option<ControllerConfig>,
    /// Present on data-plane nodes that may hold the floating addresses (the VIP, the
    /// backends' gateway) when the current holder fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ha: Option<HaConfig>,
    #[serde(rename = "service")]
    pub services: Vec<ServiceConfig>,
}

/// Load-balancer high availability: which floating addresses this node takes over, and how
/// eagerly. The controllers agree by majority which node holds them (see [`crate::ha`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HaConfig {
    /// Higher is preferred when nobody holds the addresses (keepalived's `priority`).
    pub priority: u8,
    /// Take the addresses from a healthy holder of lower priority. Off by default, so a node
    /// that comes back does not move the VIP a second time (no ping-pong).
    pub preempt: bool,
    /// How often this node tells its peers it is alive (and, when it holds them, that it holds
    /// the addresses).
    pub heartbeat_ms: u64,
    /// A holder silent for this long is presumed dead and another node may take over. The
    /// holder itself lets go after three quarters of it without a majority's acknowledgement,
    /// so two nodes never hold the addresses at once.
    pub down_after_ms: u64,
    pub addresses: Vec<HaAddress>,
}

impl Default for HaConfig {
    /// The value of every key `[ha]` may leave out. `addresses`, which it must list, is empty.
    fn default() -> Self {
        Self {
            // keepalived's default priority.
            priority: 100,
            preempt: false,
            // A new holder within half a second of the old one's death; 5 heartbeats, more
            // than the 3 validation asks, so a lost datagram or two never moves the VIP.
            heartbeat_ms: 100,
            down_after_ms: 500,
            addresses: Vec::new(),
        }
    }
}

/// One floating address, `198.18.0.100/24 dev eth0` as in `ip addr add` (and keepalived's
/// `virtual_ipaddress`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HaAddress {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub interface: String,
}

impl fmt::Display for HaAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} dev {}",
            self.address, self.prefix_len, self.interface
        )
    }
}

/// Written as the file spells it, the one string [`fmt::Display`] gives.
impl Serialize for HaAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The controller daemon: who it is, where it listens, whom it agrees with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ControllerConfig {
    /// Stable id, unique among the controllers (Sentinel's `myid`).
    pub id: String,
    /// TCP: the Sentinel-compatible RESP port; UDP on the same port: the peer protocol.
    pub listen: SocketAddr,
    pub peers: Vec<PeerConfig>,
    /// Shared secret authenticating peer messages (HMAC-SHA256). Read from `secret_file`
    /// when the file names one, so it is always written back inline.
    pub secret: String,
    /// The file the secret was read from, if any: shown by `check-config` instead of the secret.
    #[serde(skip)]
    pub secret_file: Option<PathBuf>,
    /// Where the current epoch, votes and known masters are persisted.
    pub state_file: PathBuf,
    /// How often every backend is probed and the view sent to peers.
    pub probe_interval_ms: u64,
    /// What one client of the API may take (connections, memory, time).
    #[serde(flatten)]
    pub api_limits: ApiLimits,
    /// Prometheus `/metrics` and the status page (HTTP), if wanted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Passwords and users of the API (`requirepass`, `[[controller.users]]`).
    #[serde(flatten)]
    pub api: ApiAuthConfig,
    /// `[controller.tls]`: the API also in TLS, on a port of its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ApiTlsConfig>,
}

impl ControllerConfig {
    /// `probe_interval_ms` when the file leaves it out: SDOWN within a second needs several
    /// probes per second.
    pub const DEFAULT_PROBE_INTERVAL_MS: u64 = 100;

    /// `state_file` when the file leaves it out: one per id, so that controllers sharing a
    /// host (a testbed) never share their votes; the directory is the systemd unit's
    /// StateDirectory.
    pub fn default_state_file(id: &str) -> PathBuf {
        PathBuf::from(format!("/var/lib/redis-ha/{id}.state"))
    }

    /// The HA machine's parameters on this controller; `ha` is the node's `[ha]` section,
    /// absent on nodes that only vote.
    pub fn ha_params(&self, ha: Option<&HaConfig>) -> HaParams {
        HaParams {
            candidacy: ha.map(|h| Candidacy {
                priority: h.priority,
                preempt: h.preempt,
            }),
            heartbeat_ms: ha.map_or(self.probe_interval_ms, |h| h.heartbeat_ms),
            down_after_ms: ha.map_or(0, |h| h.down_after_ms),
            quiet_after_start_ms: ha
                .map_or(0, |h| h.down_after_ms)
                .max(HA_QUIET_AFTER_START_MS),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerConfig {
    pub id: String,
    pub addr: SocketAddr,
}

/// Redis credentials for probes and commands (`AUTH [username] password`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisAuth {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    pub password: String,
}

/// Per-service failure detection and failover settings, Sentinel's names and defaults
/// except where noted. In the file they are keys of the `[[service]]` table itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailoverConfig {
    /// Controllers that must see the master down before it is objectively down.
    pub quorum: usize,
    pub down_after_ms: u64,
    pub failover_timeout_ms: u64,
    pub parallel_syncs: usize,
    /// A replica further behind than this leaves the read pool.
    pub max_replica_lag_ms: u64,
    pub read_from_master: ReadFromMaster,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<RedisAuth>,
}

impl Default for FailoverConfig {
    /// The value of every failover key a `[[service]]` may leave out.
    fn default() -> Self {
        Self {
            // A majority of the usual three controllers.
            quorum: 2,
            // Sentinel's default is 30 s; the seed tutorial (and most operators) lower it to 1 s.
            down_after_ms: 1000,
            // Sentinel's default (3 minutes).
            failover_timeout_ms: 180_000,
            parallel_syncs: 1,
            max_replica_lag_ms: 5000,
            read_from_master: ReadFromMaster::default(),
            auth: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DataplaneConfig {
    /// Interfaces where client packets and backend replies arrive; the program is attached to
    /// each.
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    /// bpffs directory holding the pinned program, links and maps.
    pub pin_dir: PathBuf,
    /// Networks of the clients (address, prefix length). A backend's reply to one of them that
    /// has no connection-table entry is rewritten from the live state, which is what lets a
    /// connection survive moving to another LB node. Empty (the default): never. Clients in
    /// these networks must then reach the backends only through the VIP.
    #[serde(serialize_with = "networks")]
    pub client_networks: Vec<(Ipv4Addr, u8)>,
    /// Those of `interfaces` that face the backends: a segment from a backend's address is
    /// taken as its reply only there, so that nobody on the client side can close, reset or
    /// rewrite a connection by forging the backend's address. Empty (the default): every
    /// interface, as where clients and backends share one.
    pub backend_interfaces: Vec<String>,
    /// Entries of the connection table (one per connection), and of the LRU table that takes
    /// new connections while it is full. Orderly closes remove their entry at once; the
    /// daemon sweeps the rest (`dataplane::sweep`).
    pub flow_table_size: u32,
    /// At the TC hook, hand a packet leaving through a veth whose peer is in another network
    /// namespace straight to the peer (`bpf_redirect_peer`). Off: every packet is transmitted
    /// by the egress veth, so `tcpdump` on it sees them (at some cost per packet).
    pub veth_peer_redirect: bool,
    /// Which addresses a forwarded connection gets rewritten (see [`NatMode`]).
    pub nat: NatMode,
    /// Full NAT: the source address toward backends. Unset: the first IPv4 address of the
    /// first interface, found at load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat_address: Option<Ipv4Addr>,
    /// Full NAT: the source ports toward backends, one connection per port and backend.
    pub nat_ports: NatPorts,
    /// The secret key of the replica choice (`FLOW_HASH_KEY`), derived from
    /// `[controller] secret` so that every LB node of the cluster has the same one and no
    /// client knows it. Not a key of the file. All zero on a node without `[controller]`.
    #[serde(skip)]
    pub flow_hash_key: redis_ha_common::FlowHashKey,
}

impl Default for DataplaneConfig {
    /// The value of every key `[dataplane]` may leave out. `interfaces`, which it must list,
    /// is empty.
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            xdp_mode: XdpMode::default(),
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            client_networks: Vec::new(),
            backend_interfaces: Vec::new(),
            // The size the program's maps are compiled with, so that a config without the key
            // loads the maps exactly as built.
            flow_table_size: redis_ha_common::FLOW_TABLE_SIZE,
            // Faster, and only a packet capture on the LB's own veth end notices it.
            veth_peer_redirect: true,
            nat: NatMode::Destination,
            nat_address: None,
            nat_ports: NatPorts::DEFAULT,
            flow_hash_key: redis_ha_common::FlowHashKey::default(),
        }
    }
}

/// `client_networks` as the file spells them: `"198.18.0.0/24"`.
fn networks<S: Serializer>(nets: &[(Ipv4Addr, u8)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(nets.iter().map(|(addr, len)| format!("{addr}/{len}")))
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// The TC hook when every interface is a veth (and the kernel has TCX), or when XDP
    /// cannot transmit through one of them (a bridge, a driver without `ndo_xdp_xmit`);
    /// otherwise XDP, native (driver) mode where the interface supports it, generic (skb) mode
    /// elsewhere.
    #[default]
    Auto,
    Native,
    Skb,
    /// The same program at the TC ingress hook (TCX, kernel 6.6+). It works on the socket
    /// buffer the kernel already has, where XDP on a veth or in generic mode first copies
    /// every packet: the better choice there, and on drivers without native XDP.
    Tc,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Skb => "skb",
            Self::Tc => "tc",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceConfig {
    /// Sentinel's "master name" for this group, e.g. `mymaster`.
    pub name: String,
    pub vip: Ipv4Addr,
    /// Always reaches the current master.
    pub write_port: u16,
    /// Balanced over the read pool.
    pub read_port: u16,
    /// In config order; the first is the initial master. A backend given by name holds the
    /// address the name had when the config was loaded.
    #[serde(skip)]
    pub backends: Vec<SocketAddrV4>,
    /// `backends` as the file spells them, so check-config writes a name back as a name.
    #[serde(rename = "backends")]
    pub backend_specs: Vec<BackendSpec>,
    /// Sentinel's `resolve-hostnames`: a backend may be given as `host:port`. Off, a name is
    /// refused, so a typo of an address is not looked up in DNS.
    pub resolve_hostnames: bool,
    /// Sentinel's `announce-hostnames`: the API and the events name a backend given by name
    /// by its name, and replicas are told to follow the master by name.
    pub announce_hostnames: bool,
    #[serde(flatten)]
    pub failover: FailoverConfig,
    /// `[service.tls]`: the backends are reached over TLS only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<RedisTlsConfig>,
}

/// Written as the file spells it (`198.18.1.11:6379`, `redis1.internal:6379`).
impl Serialize for BackendSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl ServiceConfig {
    /// The host name backend `addr` was given by, if it was.
    pub fn backend_name(&self, addr: SocketAddrV4) -> Option<&str> {
        let j = self.backends.iter().position(|b| *b == addr)?;
        match self.backend_specs.get(j)? {
            BackendSpec::Host { name, .. } => Some(name),
            BackendSpec::Addr(_) => None,
        }
    }

    /// An event's payload as Sentinel with `announce-hostnames` writes it: every `<ip> <port>`
    /// and `<ip>:<port>` of a backend given by name, with the name for the address.
    pub fn announce_in(&self, payload: &str) -> String {
        if !self.announce_hostnames {
            return payload.to_owned();
        }
        let words: Vec<&str> = payload.split(' ').collect();
        let mut out: Vec<String> = Vec::with_capacity(words.len());
        for (k, word) in words.iter().enumerate() {
            let pair = words
                .get(k + 1)
                .and_then(|port| format!("{word}:{port}").parse::<SocketAddrV4>().ok());
            let joined = word.parse::<SocketAddrV4>().ok();
            out.push(match (pair, joined) {
                (Some(addr), _) => self.announced_host(addr),
                (None, Some(addr)) => format!("{}:{}", self.announced_host(addr), addr.port()),
                (None, None) => (*word).to_owned(),
            });
        }
        out.join(" ")
    }

    /// How the API, the events and REPLICAOF name `addr`'s host: its name with
    /// `announce_hostnames` (for a backend given by name), else its address.
    pub fn announced_host(&self, addr: SocketAddrV4) -> String {
        match self.backend_name(addr) {
            Some(name) if self.announce_hostnames => name.to_owned(),
            _ => addr.ip().to_string(),
        }
    }

    /// The failover machine's parameters for this service on controller `ctl`. Sentinel's
    /// periods are tuned for `down-after` of tens of seconds; ours scale with the probe
    /// interval so that a failover at `down_after_ms` = 1 s completes well under 1.2 s.
    pub fn failover_params(&self, ctl: &ControllerConfig) -> failover::Params {
        let f = &self.failover;
        let interval = ctl.probe_interval_ms;
        failover::Params {
            quorum: f.quorum,
            down_after_ms: f.down_after_ms,
            failover_timeout_ms: f.failover_timeout_ms,
            parallel_syncs: f.parallel_syncs,
            max_replica_lag_ms: f.max_replica_lag_ms,
            read_from_master: f.read_from_master,
            probe_interval_ms: interval,
            hello_interval_ms: interval,
            peer_report_validity_ms: (5 * interval).max(f.down_after_ms),
            election_timeout_ms: f.failover_timeout_ms.min(10_000),
            max_desync_ms: (f.down_after_ms / 2).clamp(1, 1000),
            convert_delay_ms: (4 * interval).max(1000),
            ..failover::Params::default()
        }
    }
}

/// Slot of a service's backend in the `BACKENDS` map: a fixed block per service, so every
/// data-plane node given the same config uses the same slots (and thus the same Maglev
/// tables), and slot 0 is never used.
pub fn backend_slot(service_id: u32, backend_index: usize) -> u32 {
    service_id * (MAX_BACKENDS / MAX_SERVICES) + backend_index as u32 + 1
}

impl Config {
    /// Whether a backend of some service is one of `host_addresses` (this node's own).
    pub fn has_local_backend(&self, host_addresses: &std::collections::BTreeSet<Ipv4Addr>) -> bool {
        self.services
            .iter()
            .flat_map(|s| &s.backends)
            .any(|b| host_addresses.contains(b.ip()))
    }

    pub fn service(&self, name: &str) -> Option<(u32, &ServiceConfig)> {
        self.services
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == name)
            .map(|(i, s)| (i as u32, s))
    }
}
