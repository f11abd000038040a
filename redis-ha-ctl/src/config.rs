//! The TOML config: parsed into span-carrying raw structs, then validated into typed values.
//! Every error names the file, the line and the key, so an operator can fix it at once.

use std::{
    collections::HashSet,
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
};

use redis_ha_common::{MAX_BACKENDS, MAX_SERVICES};
use serde::Deserialize;
use toml::Spanned;

/// Backend slots are assigned in fixed blocks per service (see [`backend_slot`]), which is
/// what bounds the number of backends a service may have.
pub const MAX_BACKENDS_PER_SERVICE: usize = (MAX_BACKENDS / MAX_SERVICES) as usize - 1;

/// The default pin directory (bpffs); a per-deployment one lets several data planes coexist.
pub const DEFAULT_PIN_DIR: &str = redis_ha_common::PIN_DIR;

/// A validated config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Present on nodes that own an XDP data plane.
    pub dataplane: Option<DataplaneConfig>,
    /// Present on nodes that run `redis-ha-ctl run`.
    pub controller: Option<ControllerConfig>,
    /// Present on data-plane nodes that may hold the floating addresses (the VIP, the
    /// backends' gateway) when the current holder fails.
    pub ha: Option<HaConfig>,
    pub services: Vec<ServiceConfig>,
}

/// Load-balancer high availability: which floating addresses this node takes over, and how
/// eagerly. The controllers agree by majority which node holds them (see [`crate::ha`]).
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// The controller daemon: who it is, where it listens, whom it agrees with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerConfig {
    /// Stable id, unique among the controllers (Sentinel's `myid`).
    pub id: String,
    /// TCP: the Sentinel-compatible RESP port; UDP on the same port: the peer protocol.
    pub listen: std::net::SocketAddr,
    pub peers: Vec<PeerConfig>,
    /// Shared secret authenticating peer messages (HMAC-SHA256).
    pub secret: String,
    /// Where the current epoch, votes and known masters are persisted.
    pub state_file: PathBuf,
    /// How often every backend is probed and the view sent to peers.
    pub probe_interval_ms: u64,
    /// Prometheus `/metrics` and the status page (HTTP), if wanted.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    pub id: String,
    pub addr: std::net::SocketAddr,
}

/// When the master also serves the read port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadFromMaster {
    /// Never: with no healthy replica, new read connections are refused (reset).
    Never,
    /// Only when no replica qualifies.
    #[default]
    Fallback,
    /// Always, alongside the replicas.
    Always,
}

/// Redis credentials for probes and commands (`AUTH [username] password`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisAuth {
    pub username: Option<String>,
    pub password: String,
}

/// Per-service failure detection and failover settings, Sentinel's names and defaults
/// except where noted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailoverConfig {
    /// Controllers that must see the master down before it is objectively down.
    pub quorum: usize,
    pub down_after_ms: u64,
    pub failover_timeout_ms: u64,
    pub parallel_syncs: usize,
    /// A replica further behind than this leaves the read pool.
    pub max_replica_lag_ms: u64,
    pub read_from_master: ReadFromMaster,
    pub auth: Option<RedisAuth>,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        Self {
            quorum: *default_quorum().get_ref(),
            down_after_ms: *default_down_after().get_ref(),
            failover_timeout_ms: *default_failover_timeout().get_ref(),
            parallel_syncs: *default_parallel_syncs().get_ref(),
            max_replica_lag_ms: *default_max_lag().get_ref(),
            read_from_master: ReadFromMaster::default(),
            auth: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
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
    pub client_networks: Vec<(Ipv4Addr, u8)>,
    /// Entries of the connection table (one per connection), and of the LRU table that takes
    /// new connections while it is full. Orderly closes remove their entry at once; the
    /// daemon sweeps the rest (`dataplane::sweep`).
    pub flow_table_size: u32,
    /// At the TC hook, hand a packet leaving through a veth whose peer is in another network
    /// namespace straight to the peer (`bpf_redirect_peer`). Off: every packet is transmitted
    /// by the egress veth, so `tcpdump` on it sees them (at some cost per packet).
    pub veth_peer_redirect: bool,
}

/// Allowed `flow_table_size`: below 1024 entries the kernel's LRU (the spill table), which
/// hands out free entries to each CPU in batches of 128, evicts live connections early; above
/// 16 Mi the two tables (about 120 bytes an entry each) outgrow any sensible memory budget.
pub const FLOW_TABLE_RANGE: std::ops::RangeInclusive<u32> = 1024..=16 * 1024 * 1024;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// The TC hook when every interface is a veth (and the kernel has TCX); otherwise XDP,
    /// native (driver) mode where the interface supports it, generic (skb) mode elsewhere.
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Sentinel's "master name" for this group, e.g. `mymaster`.
    pub name: String,
    pub vip: Ipv4Addr,
    /// Always reaches the current master.
    pub write_port: u16,
    /// Balanced over the read pool.
    pub read_port: u16,
    /// In config order; the first is the initial master.
    pub backends: Vec<SocketAddrV4>,
    pub failover: FailoverConfig,
}

/// Slot of a service's backend in the `BACKENDS` map: a fixed block per service, so every
/// data-plane node given the same config uses the same slots (and thus the same Maglev
/// tables), and slot 0 is never used.
pub fn backend_slot(service_id: u32, backend_index: usize) -> u32 {
    service_id * (MAX_BACKENDS / MAX_SERVICES) + backend_index as u32 + 1
}

/// A config that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the config: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        /// e.g. `service[1].vip` (empty when the problem is not one key's).
        key: String,
        message: String,
    },
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates config text; `path` is only used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let at = |span: Option<std::ops::Range<usize>>, key: String, message: String| {
            let (line, column) = line_col(text, span.map_or(0, |s| s.start));
            ConfigError::Invalid {
                path: path.to_owned(),
                line,
                column,
                key,
                message,
            }
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            at(
                e.span(),
                String::new(),
                e.message().trim_end().replace('\n', " "),
            )
        })?;
        raw.validate()
            .map_err(|Problem { span, key, message }| at(Some(span), key, message))
    }

    pub fn service(&self, name: &str) -> Option<(u32, &ServiceConfig)> {
        self.services
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == name)
            .map(|(i, s)| (i as u32, s))
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    dataplane: Option<Spanned<RawDataplane>>,
    controller: Option<Spanned<RawController>>,
    ha: Option<Spanned<RawHa>>,
    #[serde(default, rename = "service")]
    services: Vec<Spanned<RawService>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataplane {
    interfaces: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    xdp_mode: XdpMode,
    pin_dir: Option<Spanned<String>>,
    #[serde(default)]
    client_networks: Vec<Spanned<String>>,
    flow_table_size: Option<Spanned<i64>>,
    #[serde(default = "yes")]
    veth_peer_redirect: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawController {
    id: Spanned<String>,
    listen: Spanned<String>,
    #[serde(default)]
    peers: Vec<Spanned<RawPeer>>,
    secret: Option<Spanned<String>>,
    secret_file: Option<Spanned<String>>,
    state_file: Option<Spanned<String>>,
    #[serde(default = "default_probe_interval")]
    probe_interval_ms: Spanned<u64>,
    metrics_listen: Option<Spanned<String>>,
}

fn default_probe_interval() -> Spanned<u64> {
    Spanned::new(0..0, 100)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHa {
    #[serde(default = "default_priority")]
    priority: Spanned<u32>,
    #[serde(default)]
    preempt: bool,
    #[serde(default = "default_ha_heartbeat")]
    heartbeat_ms: Spanned<u64>,
    #[serde(default = "default_ha_down_after")]
    down_after_ms: Spanned<u64>,
    addresses: Spanned<Vec<Spanned<String>>>,
}

fn default_priority() -> Spanned<u32> {
    Spanned::new(0..0, 100)
}
fn default_ha_heartbeat() -> Spanned<u64> {
    Spanned::new(0..0, 100)
}
fn default_ha_down_after() -> Spanned<u64> {
    Spanned::new(0..0, 500)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    id: Spanned<String>,
    addr: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    vip: Spanned<String>,
    write_port: Spanned<u16>,
    read_port: Spanned<u16>,
    backends: Spanned<Vec<Spanned<String>>>,
    #[serde(default = "default_quorum")]
    quorum: Spanned<usize>,
    #[serde(default = "default_down_after")]
    down_after_ms: Spanned<u64>,
    #[serde(default = "default_failover_timeout")]
    failover_timeout_ms: Spanned<u64>,
    #[serde(default = "default_parallel_syncs")]
    parallel_syncs: Spanned<usize>,
    #[serde(default = "default_max_lag")]
    max_replica_lag_ms: Spanned<u64>,
    #[serde(default)]
    read_from_master: ReadFromMaster,
    auth: Option<RedisAuth>,
}

fn default_quorum() -> Spanned<usize> {
    Spanned::new(0..0, 2)
}
/// Sentinel's default is 30 s; the seed tutorial (and most operators) lower it to 1 s.
fn default_down_after() -> Spanned<u64> {
    Spanned::new(0..0, 1000)
}
/// Sentinel's default (3 minutes).
fn default_failover_timeout() -> Spanned<u64> {
    Spanned::new(0..0, 180_000)
}
fn default_parallel_syncs() -> Spanned<usize> {
    Spanned::new(0..0, 1)
}
fn default_max_lag() -> Spanned<u64> {
    Spanned::new(0..0, 5000)
}

/// A validation failure before it is given a file and line.
struct Problem {
    span: std::ops::Range<usize>,
    key: String,
    message: String,
}

fn problem<T>(spanned: &Spanned<T>, key: impl Into<String>, message: impl Into<String>) -> Problem {
    let key = key.into();
    Problem {
        span: spanned.span(),
        message: format!("{key}: {}", message.into()),
        key,
    }
}

impl RawConfig {
    fn validate(self) -> Result<Config, Problem> {
        let dataplane = self
            .dataplane
            .as_ref()
            .map(validate_dataplane)
            .transpose()?;
        let controller = self
            .controller
            .as_ref()
            .map(validate_controller)
            .transpose()?;
        let ha = self
            .ha
            .as_ref()
            .map(|ha| validate_ha(ha, dataplane.as_ref(), controller.as_ref()))
            .transpose()?;
        if self.services.is_empty() {
            return Err(Problem {
                span: 0..0,
                key: "service".into(),
                message: "service: no [[service]] section: at least one service is required".into(),
            });
        }
        if self.services.len() > MAX_SERVICES as usize {
            return Err(problem(
                &self.services[MAX_SERVICES as usize],
                "service",
                format!("at most {MAX_SERVICES} services are supported"),
            ));
        }
        let mut names = HashSet::new();
        let mut ports = HashSet::new();
        let mut backends = HashSet::new();
        let mut services = Vec::new();
        for (i, s) in self.services.iter().enumerate() {
            let s = s.get_ref();
            let key = |field: &str| format!("service[{i}].{field}");
            let name = s.name.get_ref();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(problem(
                    &s.name,
                    key("name"),
                    format!("{name:?} is not a valid name (letters, digits, '-', '_', '.')"),
                ));
            }
            if !names.insert(name.clone()) {
                return Err(problem(
                    &s.name,
                    key("name"),
                    format!("{name:?} is used twice"),
                ));
            }
            let vip: Ipv4Addr = s.vip.get_ref().parse().map_err(|_| {
                problem(
                    &s.vip,
                    key("vip"),
                    format!("{:?} is not an IPv4 address", s.vip.get_ref()),
                )
            })?;
            if vip.is_unspecified() || vip.is_broadcast() || vip.is_multicast() {
                return Err(problem(
                    &s.vip,
                    key("vip"),
                    format!("{vip} cannot be a VIP"),
                ));
            }
            for (field, port) in [("write_port", &s.write_port), ("read_port", &s.read_port)] {
                if *port.get_ref() == 0 {
                    return Err(problem(port, key(field), "port 0 is not a valid port"));
                }
                if !ports.insert((vip, *port.get_ref())) {
                    return Err(problem(
                        port,
                        key(field),
                        format!("{vip}:{} is already used by another port", port.get_ref()),
                    ));
                }
            }
            let list = s.backends.get_ref();
            if list.is_empty() {
                return Err(problem(
                    &s.backends,
                    key("backends"),
                    "needs at least one backend",
                ));
            }
            if list.len() > MAX_BACKENDS_PER_SERVICE {
                return Err(problem(
                    &s.backends,
                    key("backends"),
                    format!("at most {MAX_BACKENDS_PER_SERVICE} backends per service"),
                ));
            }
            let mut addrs = Vec::new();
            for (j, b) in list.iter().enumerate() {
                let bkey = format!("service[{i}].backends[{j}]");
                let addr: SocketAddrV4 = b.get_ref().parse().map_err(|_| {
                    problem(
                        b,
                        bkey.clone(),
                        format!("{:?} is not an IPv4 address:port", b.get_ref()),
                    )
                })?;
                if addr.port() == 0 || addr.ip().is_unspecified() {
                    return Err(problem(b, bkey, format!("{addr} is not a usable backend")));
                }
                if !backends.insert(addr) {
                    return Err(problem(
                        b,
                        bkey,
                        format!("{addr} is listed twice (a backend serves one service)"),
                    ));
                }
                addrs.push(addr);
            }
            // Without a [controller] section (a data-plane-only node) the quorum is not used.
            let controllers = self
                .controller
                .as_ref()
                .map_or(usize::MAX, |c| c.get_ref().peers.len() + 1);
            let quorum = *s.quorum.get_ref();
            if quorum == 0 || quorum > controllers {
                return Err(problem(
                    &s.quorum,
                    key("quorum"),
                    format!(
                        "{quorum} must be between 1 and the number of controllers ({controllers})"
                    ),
                ));
            }
            let down_after = *s.down_after_ms.get_ref();
            if down_after < 50 {
                return Err(problem(
                    &s.down_after_ms,
                    key("down_after_ms"),
                    format!(
                        "{down_after} ms is too short to tell a slow reply from a failure (minimum 50)"
                    ),
                ));
            }
            if *s.failover_timeout_ms.get_ref() < down_after {
                return Err(problem(
                    &s.failover_timeout_ms,
                    key("failover_timeout_ms"),
                    "must be at least down_after_ms",
                ));
            }
            if *s.parallel_syncs.get_ref() == 0 {
                return Err(problem(
                    &s.parallel_syncs,
                    key("parallel_syncs"),
                    "must be at least 1",
                ));
            }
            services.push(ServiceConfig {
                name: name.clone(),
                vip,
                write_port: *s.write_port.get_ref(),
                read_port: *s.read_port.get_ref(),
                backends: addrs,
                failover: FailoverConfig {
                    quorum,
                    down_after_ms: down_after,
                    failover_timeout_ms: *s.failover_timeout_ms.get_ref(),
                    parallel_syncs: *s.parallel_syncs.get_ref(),
                    max_replica_lag_ms: *s.max_replica_lag_ms.get_ref(),
                    read_from_master: s.read_from_master,
                    auth: s.auth.clone(),
                },
            });
        }
        Ok(Config {
            dataplane,
            controller,
            ha,
            services,
        })
    }
}

fn validate_controller(c: &Spanned<RawController>) -> Result<ControllerConfig, Problem> {
    let raw = c.get_ref();
    let valid_id = |id: &str| {
        !id.is_empty()
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if !valid_id(raw.id.get_ref()) {
        return Err(problem(
            &raw.id,
            "controller.id",
            format!(
                "{:?} is not a valid id (letters, digits, '-', '_', '.')",
                raw.id.get_ref()
            ),
        ));
    }
    let addr = |v: &Spanned<String>, key: String| {
        v.get_ref()
            .parse::<std::net::SocketAddr>()
            .map_err(|_| problem(v, key, format!("{:?} is not an address:port", v.get_ref())))
    };
    let listen = addr(&raw.listen, "controller.listen".into())?;
    let mut ids = HashSet::from([raw.id.get_ref().clone()]);
    let mut peers = Vec::new();
    for (i, p) in raw.peers.iter().enumerate() {
        let p = p.get_ref();
        if !valid_id(p.id.get_ref()) || !ids.insert(p.id.get_ref().clone()) {
            return Err(problem(
                &p.id,
                format!("controller.peers[{i}].id"),
                format!(
                    "{:?} is invalid or not unique among the controllers",
                    p.id.get_ref()
                ),
            ));
        }
        peers.push(PeerConfig {
            id: p.id.get_ref().clone(),
            addr: addr(&p.addr, format!("controller.peers[{i}].addr"))?,
        });
    }
    let secret = match (&raw.secret, &raw.secret_file) {
        (Some(s), None) => s.get_ref().clone(),
        (None, Some(f)) => std::fs::read_to_string(f.get_ref())
            .map_err(|e| {
                problem(
                    f,
                    "controller.secret_file",
                    format!("cannot read {:?}: {e}", f.get_ref()),
                )
            })?
            .trim()
            .to_owned(),
        _ => {
            return Err(Problem {
                span: c.span(),
                key: "controller.secret".into(),
                message: "controller.secret: set exactly one of `secret` and `secret_file`".into(),
            });
        }
    };
    if secret.len() < 16 {
        let at = raw
            .secret
            .as_ref()
            .or(raw.secret_file.as_ref())
            .map_or(c.span(), |s| s.span());
        return Err(Problem {
            span: at,
            key: "controller.secret".into(),
            message: "controller.secret: use at least 16 characters".into(),
        });
    }
    let interval = *raw.probe_interval_ms.get_ref();
    if !(10..=10_000).contains(&interval) {
        return Err(problem(
            &raw.probe_interval_ms,
            "controller.probe_interval_ms",
            "must be between 10 and 10000",
        ));
    }
    Ok(ControllerConfig {
        id: raw.id.get_ref().clone(),
        listen,
        peers,
        secret,
        state_file: raw.state_file.as_ref().map_or_else(
            || PathBuf::from(format!("/var/lib/redis-ha/{}.state", raw.id.get_ref())),
            |p| PathBuf::from(p.get_ref()),
        ),
        probe_interval_ms: interval,
        metrics_listen: raw
            .metrics_listen
            .as_ref()
            .map(|m| addr(m, "controller.metrics_listen".into()))
            .transpose()?,
    })
}

fn validate_ha(
    ha: &Spanned<RawHa>,
    dataplane: Option<&DataplaneConfig>,
    controller: Option<&ControllerConfig>,
) -> Result<HaConfig, Problem> {
    let raw = ha.get_ref();
    let whole = |message: &str| Problem {
        span: ha.span(),
        key: "ha".into(),
        message: format!("ha: {message}"),
    };
    let Some(dataplane) = dataplane else {
        return Err(whole(
            "needs a [dataplane] section: only a data-plane node can hold the floating addresses",
        ));
    };
    let Some(controller) = controller else {
        return Err(whole(
            "needs a [controller] section: the controllers agree which node holds the addresses",
        ));
    };
    if controller.peers.len() == 1 {
        return Err(whole(
            "two controllers cannot take over from each other (the holder needs a majority of \
             all controllers): add a third, vote-only controller to controller.peers",
        ));
    }
    let priority = *raw.priority.get_ref();
    if !(1..=255).contains(&priority) {
        return Err(problem(
            &raw.priority,
            "ha.priority",
            format!("{priority} must be between 1 and 255"),
        ));
    }
    let heartbeat = *raw.heartbeat_ms.get_ref();
    if !(10..=10_000).contains(&heartbeat) {
        return Err(problem(
            &raw.heartbeat_ms,
            "ha.heartbeat_ms",
            format!("{heartbeat} must be between 10 and 10000"),
        ));
    }
    let down_after = *raw.down_after_ms.get_ref();
    if down_after < 3 * heartbeat {
        return Err(problem(
            &raw.down_after_ms,
            "ha.down_after_ms",
            format!(
                "{down_after} ms must be at least 3 heartbeats ({} ms): one lost datagram must not move the VIP",
                3 * heartbeat
            ),
        ));
    }
    if raw.addresses.get_ref().is_empty() {
        return Err(problem(
            &raw.addresses,
            "ha.addresses",
            "lists no address: name the VIP (and the backends' gateway) as \"198.18.0.100/24 dev eth0\"",
        ));
    }
    let mut addresses: Vec<HaAddress> = Vec::new();
    for (i, entry) in raw.addresses.get_ref().iter().enumerate() {
        let key = format!("ha.addresses[{i}]");
        let text = entry.get_ref();
        let bad = || {
            problem(
                entry,
                key.clone(),
                format!("{text:?} is not like \"198.18.0.100/24 dev eth0\""),
            )
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        let [net, "dev", interface] = words[..] else {
            return Err(bad());
        };
        let (address, len) = net.split_once('/').ok_or_else(bad)?;
        let address: Ipv4Addr = address.parse().map_err(|_| bad())?;
        let prefix_len: u8 = len.parse().map_err(|_| bad())?;
        if prefix_len > 32 || address.is_unspecified() || address.is_multicast() {
            return Err(bad());
        }
        if !dataplane.interfaces.iter().any(|i| i == interface) {
            return Err(problem(
                entry,
                key,
                format!(
                    "{interface:?} is not in dataplane.interfaces: traffic to a floating address must arrive where the XDP program runs"
                ),
            ));
        }
        if addresses.iter().any(|a| a.address == address) {
            return Err(problem(entry, key, format!("{address} is listed twice")));
        }
        addresses.push(HaAddress {
            address,
            prefix_len,
            interface: interface.to_owned(),
        });
    }
    Ok(HaConfig {
        priority: priority as u8,
        preempt: raw.preempt,
        heartbeat_ms: heartbeat,
        down_after_ms: down_after,
        addresses,
    })
}

fn validate_dataplane(dp: &Spanned<RawDataplane>) -> Result<DataplaneConfig, Problem> {
    let raw = dp.get_ref();
    if raw.interfaces.get_ref().is_empty() {
        return Err(problem(
            &raw.interfaces,
            "dataplane.interfaces",
            "lists no interface: name those where client packets and backend replies arrive",
        ));
    }
    let mut seen = HashSet::new();
    for (i, ifname) in raw.interfaces.get_ref().iter().enumerate() {
        let name = ifname.get_ref();
        // IFNAMSIZ is 16 including the terminating NUL.
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
            return Err(problem(
                ifname,
                format!("dataplane.interfaces[{i}]"),
                format!("{name:?} is not a valid interface name"),
            ));
        }
        if !seen.insert(name.clone()) {
            return Err(problem(
                ifname,
                format!("dataplane.interfaces[{i}]"),
                format!("{name:?} is listed twice"),
            ));
        }
    }
    let pin_dir = match &raw.pin_dir {
        None => PathBuf::from(DEFAULT_PIN_DIR),
        Some(p) => {
            let path = PathBuf::from(p.get_ref());
            if !path.is_absolute() || p.get_ref().contains('.') {
                return Err(problem(
                    p,
                    "dataplane.pin_dir",
                    format!(
                        "{:?} must be an absolute path on bpffs without '.' (bpffs refuses it)",
                        p.get_ref()
                    ),
                ));
            }
            path
        }
    };
    let mut client_networks = Vec::new();
    for (i, net) in raw.client_networks.iter().enumerate() {
        let bad = || {
            problem(
                net,
                format!("dataplane.client_networks[{i}]"),
                format!(
                    "{:?} is not an IPv4 network like \"198.18.0.0/24\"",
                    net.get_ref()
                ),
            )
        };
        let (addr, len) = net.get_ref().split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        if len > 32 {
            return Err(bad());
        }
        client_networks.push((addr, len));
    }
    let flow_table_size = match &raw.flow_table_size {
        None => redis_ha_common::FLOW_TABLE_SIZE,
        Some(n) => u32::try_from(*n.get_ref())
            .ok()
            .filter(|v| FLOW_TABLE_RANGE.contains(v))
            .ok_or_else(|| {
                problem(
                    n,
                    "dataplane.flow_table_size",
                    format!(
                        "{} entries is out of range: {}..={} (one entry per connection)",
                        n.get_ref(),
                        FLOW_TABLE_RANGE.start(),
                        FLOW_TABLE_RANGE.end()
                    ),
                )
            })?,
    };
    Ok(DataplaneConfig {
        client_networks,
        flow_table_size,
        veth_peer_redirect: raw.veth_peer_redirect,
        interfaces: raw
            .interfaces
            .get_ref()
            .iter()
            .map(|s| s.get_ref().clone())
            .collect(),
        xdp_mode: raw.xdp_mode,
        pin_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[dataplane]
interfaces = ["eth0", "eth1"]
xdp_mode = "native"

[[service]]
name = "mymaster"
vip = "198.18.0.100"
write_port = 6380
read_port = 6381
backends = ["198.18.1.11:6379", "198.18.1.12:6379", "198.18.1.13:6379"]
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text)
    }

    fn err(text: &str) -> (usize, String, String) {
        match parse(text) {
            Err(ConfigError::Invalid {
                line, key, message, ..
            }) => (line, key, message),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn good_config_parses_to_typed_values() {
        let c = parse(GOOD).unwrap();
        let dp = c.dataplane.unwrap();
        assert_eq!(dp.interfaces, ["eth0", "eth1"]);
        assert_eq!(dp.xdp_mode, XdpMode::Native);
        assert_eq!(dp.pin_dir, PathBuf::from("/sys/fs/bpf/redis-ha"));
        let s = &c.services[0];
        assert_eq!(s.vip, Ipv4Addr::new(198, 18, 0, 100));
        assert_eq!((s.write_port, s.read_port), (6380, 6381));
        assert_eq!(s.backends[2], "198.18.1.13:6379".parse().unwrap());
    }

    #[test]
    fn errors_name_line_and_key() {
        let (line, key, msg) = err(&GOOD.replace("\"198.18.0.100\"", "\"198.18.0.300\""));
        assert_eq!((line, key.as_str()), (8, "service[0].vip"));
        assert!(
            msg.contains("198.18.0.300") && msg.contains("not an IPv4"),
            "{msg}"
        );

        let (line, key, _) = err(&GOOD.replace("\"198.18.1.12:6379\"", "\"198.18.1.12\""));
        assert_eq!((line, key.as_str()), (11, "service[0].backends[1]"));

        let (line, key, msg) = err(&GOOD.replace("read_port = 6381", "read_port = 6380"));
        assert_eq!((line, key.as_str()), (10, "service[0].read_port"));
        assert!(msg.contains("already used"), "{msg}");
    }

    #[test]
    fn unknown_keys_and_bad_types_are_reported_with_their_line() {
        let (line, _, msg) = err(&GOOD.replace("write_port = 6380", "write_prot = 6380"));
        assert_eq!(line, 9);
        assert!(msg.contains("write_prot"), "{msg}");
        let (line, _, msg) = err(&GOOD.replace("write_port = 6380", "write_port = 70000"));
        assert_eq!(line, 9, "{msg}");
        let (_, _, msg) = err(&GOOD.replace("\"native\"", "\"turbo\""));
        assert!(msg.contains("turbo"), "{msg}");
    }

    #[test]
    fn duplicates_and_limits_are_refused() {
        let twice = format!(
            "{GOOD}\n[[service]]\nname = \"mymaster\"\nvip = \"198.18.0.101\"\nwrite_port = 1\nread_port = 2\nbackends = [\"198.18.1.21:6379\"]\n"
        );
        assert_eq!(err(&twice).1, "service[1].name");
        let shared = format!(
            "{GOOD}\n[[service]]\nname = \"other\"\nvip = \"198.18.0.101\"\nwrite_port = 1\nread_port = 2\nbackends = [\"198.18.1.11:6379\"]\n"
        );
        assert_eq!(err(&shared).1, "service[1].backends[0]");
        assert_eq!(err("").1, "service");
        let no_if = GOOD.replace("[\"eth0\", \"eth1\"]", "[]");
        assert_eq!(err(&no_if).1, "dataplane.interfaces");
        let long_if = GOOD.replace("\"eth1\"", "\"a-very-long-interface\"");
        assert_eq!(err(&long_if).1, "dataplane.interfaces[1]");
        let rel = GOOD.replace("xdp_mode = \"native\"", "pin_dir = \"relative/dir\"");
        assert_eq!(err(&rel).1, "dataplane.pin_dir");
        let net = GOOD.replace(
            "xdp_mode = \"native\"",
            "client_networks = [\"198.18.0.0/33\"]",
        );
        assert_eq!(err(&net).1, "dataplane.client_networks[0]");
        let ok = GOOD.replace(
            "xdp_mode = \"native\"",
            "client_networks = [\"198.18.0.0/24\"]",
        );
        let nets = parse(&ok).unwrap().dataplane.unwrap().client_networks;
        assert_eq!(nets, [(Ipv4Addr::new(198, 18, 0, 0), 24)]);
        let tc = GOOD.replace("xdp_mode = \"native\"", "xdp_mode = \"tc\"");
        assert_eq!(parse(&tc).unwrap().dataplane.unwrap().xdp_mode, XdpMode::Tc);
        let bad = GOOD.replace("xdp_mode = \"native\"", "xdp_mode = \"tcx\"");
        let line = GOOD.lines().position(|l| l.contains("xdp_mode")).unwrap() + 1;
        let (at, _, msg) = err(&bad);
        assert_eq!(at, line);
        assert!(msg.contains("`tcx`") && msg.contains("`tc`"), "{msg}");
    }

    #[test]
    fn flow_table_size_defaults_and_is_bounded() {
        let dp = parse(GOOD).unwrap().dataplane.unwrap();
        assert_eq!(dp.flow_table_size, redis_ha_common::FLOW_TABLE_SIZE);
        let set =
            |v: &str| GOOD.replace("xdp_mode = \"native\"", &format!("flow_table_size = {v}"));
        let dp = parse(&set("200000")).unwrap().dataplane.unwrap();
        assert_eq!(dp.flow_table_size, 200_000);
        assert!(dp.veth_peer_redirect, "on unless turned off");
        let off = GOOD.replace("xdp_mode = \"native\"", "veth_peer_redirect = false");
        assert!(!parse(&off).unwrap().dataplane.unwrap().veth_peer_redirect);
        let (line, _, msg) = err(&GOOD.replace("xdp_mode = \"native\"", "veth_peer_redirect = 1"));
        let want = GOOD.lines().position(|l| l.contains("xdp_mode")).unwrap() + 1;
        assert_eq!(line, want, "{msg}");
        assert!(msg.contains("boolean"), "{msg}");
        for bad in ["1023", "-1", "16777217", "5000000000"] {
            let (_, key, msg) = err(&set(bad));
            assert_eq!(key, "dataplane.flow_table_size", "{bad}");
            assert!(msg.contains("out of range") && msg.contains(bad), "{msg}");
        }
    }

    const CONTROLLER: &str = r#"
[controller]
id = "lb1"
listen = "198.18.1.2:26379"
secret = "0123456789abcdef"
peers = [{ id = "lb2", addr = "198.18.1.3:26379" }, { id = "c3", addr = "198.18.1.4:26379" }]
"#;

    #[test]
    fn ha_section_is_validated() {
        let ha = "\n[ha]\npriority = 150\nheartbeat_ms = 50\ndown_after_ms = 200\naddresses = [\"198.18.0.100/24 dev eth0\", \"198.18.1.1/24 dev eth1\"]\n";
        let text = format!("{CONTROLLER}{ha}{GOOD}");
        let c = parse(&text).unwrap().ha.unwrap();
        assert_eq!(
            (c.priority, c.preempt, c.heartbeat_ms, c.down_after_ms),
            (150, false, 50, 200)
        );
        assert_eq!(c.addresses[1].to_string(), "198.18.1.1/24 dev eth1");

        let bad = |from: &str, to: &str| err(&text.replace(from, to));
        let (line, key, msg) = bad("dev eth1", "dev eth9");
        assert_eq!((line, key.as_str()), (12, "ha.addresses[1]"));
        assert!(
            msg.contains("eth9") && msg.contains("dataplane.interfaces"),
            "{msg}"
        );
        assert_eq!(bad("/24 dev eth0", " dev eth0").1, "ha.addresses[0]");
        assert_eq!(bad("198.18.1.1/24", "198.18.0.100/24").1, "ha.addresses[1]");
        assert_eq!(bad("priority = 150", "priority = 0").1, "ha.priority");
        let (_, key, msg) = bad("down_after_ms = 200", "down_after_ms = 100");
        assert_eq!(key, "ha.down_after_ms");
        assert!(msg.contains("3 heartbeats"), "{msg}");
        // Holding addresses means a data plane and peers to agree with.
        assert_eq!(err(&format!("{ha}{GOOD}")).1, "ha");
        let no_dp = format!(
            "{CONTROLLER}{ha}{}",
            &GOOD[GOOD.find("[[service]]").unwrap()..]
        );
        assert_eq!(err(&no_dp).1, "ha");
        let pair = text.replace(", { id = \"c3\", addr = \"198.18.1.4:26379\" }", "");
        let (_, key, msg) = err(&pair);
        assert_eq!(key, "ha");
        assert!(msg.contains("third"), "{msg}");
    }

    #[test]
    fn display_names_the_file() {
        let e = parse(&GOOD.replace("6381", "0")).unwrap_err().to_string();
        assert!(e.starts_with("test.toml:10:"), "{e}");
        assert!(e.contains("service[0].read_port"), "{e}");
    }

    #[test]
    fn slots_are_distinct_nonzero_and_in_range() {
        let mut seen = HashSet::new();
        for sid in 0..MAX_SERVICES {
            for b in 0..MAX_BACKENDS_PER_SERVICE {
                let slot = backend_slot(sid, b);
                assert!(slot != 0 && slot < MAX_BACKENDS);
                assert!(seen.insert(slot));
            }
        }
    }
}
